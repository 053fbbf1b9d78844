/// Whatever a key holds, read by its flags: python-memcached's `get` and `get_multi` over values
/// of mixed types, in one call.
///
/// ```swift
/// let values = try connection.getMulti(["name", "visits", "avatar", "profile"], as: MemcachedStoredValue.self)
/// for (key, value) in values.hits {
///     switch value {
///     case .text(let text): print(key, text)
///     case .integer(let number): print(key, number)
///     case .bytes(let bytes): print(key, bytes.count, "bytes")
///     case .object(let object): print(key, try object.decode(Profile.self))
///     }
/// }
/// ```
///
/// Compressed values arrive decompressed, with the type their other flags say. Storing one writes
/// it with the configured ``MemcachedFlagProfile``'s flags for its case (an object's bytes
/// unchanged), so text, integers, bytes and objects move between keys or servers without knowing
/// their type; what was read as ``bytes(_:)`` (unknown flags, a long beyond `Int`, text that is not UTF-8) is
/// written back as plain bytes, flag 0.
public enum MemcachedStoredValue: Sendable, Hashable, MemcachedValue {
    /// UTF-8 text (``MemcachedFlags/text``), python-memcached's `str`.
    case text(String)
    /// A decimal integer (``MemcachedFlags/integer`` or ``MemcachedFlags/long``), python-memcached's
    /// `int`.
    case integer(Int)
    /// Raw bytes: no type flag (python-memcached's `bytes`), flags this library does not know, or
    /// an integer or text whose bytes are not one.
    case bytes([UInt8])
    /// A serialized object (``MemcachedFlags/serialized``), decoded on demand with the client's
    /// object coder.
    case object(MemcachedSerializedObject)

    /// Stores the value with the flags the context's ``MemcachedFlagProfile`` gives its case, as
    /// that profile's Python client stores the type.
    public func memcachedPayload(context: MemcachedCodingContext) -> MemcachedPayload {
        switch self {
        case .text(let text): text.memcachedPayload(context: context)
        case .integer(let number): number.memcachedPayload(context: context)
        case .bytes(let bytes): MemcachedPayload(bytes: bytes, flags: context.flagProfile.flags(for: .bytes))
        case .object(let object): MemcachedPayload(bytes: object.bytes, flags: context.flagProfile.flags(for: .object))
        }
    }

    /// Reads any stored value by its flags; it never throws.
    public init(memcachedBytes bytes: UnsafeRawBufferPointer, flags: MemcachedFlags, context: MemcachedCodingContext) {
        if flags.contains(.serialized) {
            self = .object(MemcachedSerializedObject(bytes: Array(bytes), objectCoder: context.objectCoder))
        } else if !flags.isDisjoint(with: [.integer, .long]),
            let number = try? Int(memcachedBytes: bytes, flags: flags, context: context)
        {
            self = .integer(number)
        } else if flags.contains(.text), let text = String(validating: bytes, as: UTF8.self) {
            self = .text(text)
        } else {
            self = .bytes(Array(bytes))
        }
    }
}

/// The bytes of a serialized object (``MemcachedFlags/serialized``), with the object coder that
/// decodes them: JSON by default, as a python-memcached client with a JSON pickler writes.
public struct MemcachedSerializedObject: Sendable, Hashable {
    /// The stored bytes, decompressed.
    public let bytes: [UInt8]

    /// The coder ``decode(_:)`` uses: the configured ``MemcachedConfiguration/objectCoder`` of
    /// the connection that read the value.
    public let objectCoder: any MemcachedObjectCoder

    /// Creates an object from stored bytes.
    ///
    /// - Parameters:
    ///   - bytes: The serialized bytes.
    ///   - objectCoder: The coder that decodes them.
    public init(bytes: [UInt8], objectCoder: any MemcachedObjectCoder = JSONObjectCoder()) {
        self.bytes = bytes
        self.objectCoder = objectCoder
    }

    /// Decodes the object as a type.
    ///
    /// - Parameter type: The type to decode.
    /// - Returns: The decoded value.
    /// - Throws: ``MemcachedError`` with code ``MemcachedError/Code/undecodableValue`` when the
    ///   bytes are not that type (or are a Python pickle).
    public func decode<Value: Decodable>(_ type: Value.Type = Value.self) throws -> Value {
        try bytes.withUnsafeBytes { try objectCoder.value(type, bytes: $0, flags: .serialized) }
    }

    /// Two objects are equal when their bytes are; the coder does not count.
    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.bytes == rhs.bytes
    }

    /// Hashes the bytes.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(bytes)
    }
}
