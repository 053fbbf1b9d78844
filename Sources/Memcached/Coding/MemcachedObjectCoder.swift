#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Turns `Codable` values into stored bytes and back: the "serialization module" of
/// python-memcached, chosen once in ``MemcachedConfiguration/objectCoder``.
///
/// Values written by an object coder carry ``MemcachedFlags/serialized``. The default,
/// ``JSONObjectCoder``, writes JSON, which other languages read; supply your own coder for
/// another format.
public protocol MemcachedObjectCoder: Sendable {
    /// Encodes a value.
    ///
    /// - Parameter value: The value to store.
    /// - Returns: The bytes to store.
    /// - Throws: Any error, reported as ``MemcachedError/Code/unencodableValue``.
    func encode<Value: Encodable>(_ value: Value) throws -> [UInt8]

    /// Decodes a value.
    ///
    /// - Parameters:
    ///   - type: The type to decode.
    ///   - bytes: The stored bytes, valid only during the call.
    /// - Returns: The decoded value.
    /// - Throws: Any error, reported as ``MemcachedError/Code/undecodableValue``.
    func decode<Value: Decodable>(_ type: Value.Type, from bytes: UnsafeRawBufferPointer) throws -> Value
}

/// The default object coder: JSON through Foundation's `JSONEncoder` and `JSONDecoder`.
///
/// A python-memcached client reads and writes the same values when it is built with a JSON
/// pickler and unpickler (see the README), because both sides use flag 1 for serialized objects.
public struct JSONObjectCoder: MemcachedObjectCoder {
    private let makeEncoder: @Sendable () -> JSONEncoder
    private let makeDecoder: @Sendable () -> JSONDecoder

    /// Creates a JSON coder.
    ///
    /// - Parameters:
    ///   - makeEncoder: Builds the encoder for each value; adjust date or key strategies here.
    ///     The default sorts keys, so equal values give equal bytes.
    ///   - makeDecoder: Builds the decoder for each value.
    public init(
        makeEncoder: @escaping @Sendable () -> JSONEncoder = {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            return encoder
        },
        makeDecoder: @escaping @Sendable () -> JSONDecoder = { JSONDecoder() }
    ) {
        self.makeEncoder = makeEncoder
        self.makeDecoder = makeDecoder
    }

    public func encode<Value: Encodable>(_ value: Value) throws -> [UInt8] {
        Array(try makeEncoder().encode(value))
    }

    public func decode<Value: Decodable>(_ type: Value.Type, from bytes: UnsafeRawBufferPointer) throws -> Value {
        try makeDecoder().decode(type, from: Data(bytes))
    }
}

extension MemcachedObjectCoder {
    @usableFromInline
    func payload<Value: Encodable>(for value: Value, flags: MemcachedFlags = .serialized) throws -> MemcachedPayload {
        do {
            return MemcachedPayload(bytes: try encode(value), flags: flags)
        } catch {
            throw MemcachedError(code: .unencodableValue, message: "cannot encode \(Value.self): \(error)")
        }
    }

    @usableFromInline
    func value<Value: Decodable>(
        _ type: Value.Type,
        bytes: UnsafeRawBufferPointer,
        flags: MemcachedFlags
    ) throws -> Value {
        guard flags.isDisjoint(with: [.integer, .long]) else {
            throw MemcachedError.undecodable(Value.self, flags: flags, "it holds an integer, not a serialized object")
        }
        do {
            return try decode(type, from: bytes)
        } catch {
            // python-memcached pickles objects under the same flag; say so rather than just "bad JSON".
            let looksPickled = bytes.first == 0x80 || bytes.first == UInt8(ascii: "(")
            let hint =
                looksPickled
                ? " (the bytes look like a Python pickle; configure the Python client with a JSON pickler)" : ""
            throw MemcachedError.undecodable(Value.self, flags: flags, "\(error)\(hint)")
        }
    }
}
