#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

// MARK: - Bytes

extension Array: MemcachedValue where Element: Codable {
    /// Stores `[UInt8]` unchanged with ``MemcachedFlags/bytes``, as the Python clients store
    /// `bytes`; any other array with the context's object coder, as they pickle a list.
    @inlinable
    public func memcachedPayload(context: MemcachedCodingContext) throws -> MemcachedPayload {
        // A type comparison and a bit cast, not `as?`: a dynamic array cast copies the array.
        if Element.self == UInt8.self {
            return MemcachedPayload(
                bytes: unsafeBitCast(self, to: [UInt8].self),
                flags: context.flagProfile.flags(for: .bytes)
            )
        }
        return try context.objectPayload(for: self)
    }

    /// Reads any stored value as its raw bytes for `[UInt8]`, whatever its flags; any other array
    /// with the context's object coder.
    @inlinable
    public init(
        memcachedBytes bytes: UnsafeRawBufferPointer,
        flags: MemcachedFlags,
        context: MemcachedCodingContext
    ) throws {
        if Element.self == UInt8.self {
            self = unsafeBitCast([UInt8](bytes), to: [Element].self)
        } else {
            self = try context.objectCoder.value(Self.self, bytes: bytes, flags: flags)
        }
    }
}

extension Dictionary: MemcachedValue where Key: Codable, Value: Codable {}
extension Set: MemcachedValue where Element: Codable {}
extension Date: MemcachedValue {}
extension UUID: MemcachedValue {}
extension URL: MemcachedValue {}
extension Decimal: MemcachedValue {}
extension Float: MemcachedValue {}

extension Data: MemcachedValue {
    /// Stores the bytes unchanged with ``MemcachedFlags/bytes``, as the Python clients store `bytes`.
    public func memcachedPayload(context: MemcachedCodingContext) -> MemcachedPayload {
        MemcachedPayload(bytes: Array(self), flags: context.flagProfile.flags(for: .bytes))
    }

    /// Reads any stored value as its raw bytes, whatever its flags.
    public init(memcachedBytes bytes: UnsafeRawBufferPointer, flags: MemcachedFlags, context: MemcachedCodingContext) {
        self.init(bytes)
    }
}

// MARK: - Text

extension String: MemcachedValue {
    /// Stores the UTF-8 bytes with ``MemcachedFlags/text``, as the Python clients store `str`.
    public func memcachedPayload(context: MemcachedCodingContext) -> MemcachedPayload {
        MemcachedPayload(bytes: Array(utf8), flags: context.flagProfile.flags(for: .text))
    }

    /// Reads text, raw bytes or a decimal integer as a string; the bytes must be valid UTF-8.
    ///
    /// - Throws: ``MemcachedError/Code/undecodableValue`` for a serialized object or bytes that
    ///   are not UTF-8.
    public init(
        memcachedBytes bytes: UnsafeRawBufferPointer,
        flags: MemcachedFlags,
        context: MemcachedCodingContext
    ) throws {
        guard !flags.contains(.serialized) else {
            throw MemcachedError.undecodable(String.self, flags: flags, "it holds a serialized object")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw MemcachedError.undecodable(String.self, flags: flags, "the bytes are not valid UTF-8")
        }
        self = text
    }
}

// MARK: - Numbers

/// Parses ASCII decimal as memcached writes it: `incr`/`decr` may leave trailing spaces when the
/// number gets shorter, and python-memcached's `int()` accepts surrounding whitespace.
private func decimalText(_ bytes: UnsafeRawBufferPointer) -> Substring? {
    // Trim bytes, not Characters: "\r\n" is one Character and would not match "\r" or "\n".
    func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0D || byte == 0x0A }
    var start = bytes.startIndex
    var end = bytes.endIndex
    while start < end, isSpace(bytes[start]) { start += 1 }
    while end > start, isSpace(bytes[end - 1]) { end -= 1 }
    guard let text = String(validating: UnsafeRawBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self) else {
        return nil
    }
    return Substring(text)
}

// `Codable` as well as `FixedWidthInteger`, so that these are more specific than the object-coder
// defaults every `Codable` value gets.
extension MemcachedValue where Self: FixedWidthInteger & Codable {
    /// Stores the number as ASCII decimal with the profile's integer flag
    /// (``MemcachedFlags/integer``, or ``MemcachedFlags/long`` for pylibmc), so `increment` works
    /// on it and Python reads an `int`.
    public func memcachedPayload(context: MemcachedCodingContext) -> MemcachedPayload {
        MemcachedPayload(bytes: Array(String(self).utf8), flags: context.flagProfile.flags(for: .integer))
    }

    /// Reads ASCII decimal stored as an integer, long, text or raw bytes.
    ///
    /// - Throws: ``MemcachedError/Code/undecodableValue`` when the bytes are not a decimal
    ///   number that fits this type, or hold a serialized object.
    public init(
        memcachedBytes bytes: UnsafeRawBufferPointer,
        flags: MemcachedFlags,
        context: MemcachedCodingContext
    ) throws {
        guard !flags.contains(.serialized) else {
            throw MemcachedError.undecodable(Self.self, flags: flags, "it holds a serialized object")
        }
        guard let text = decimalText(bytes), let value = Self(text, radix: 10) else {
            throw MemcachedError.undecodable(Self.self, flags: flags, "the bytes are not a decimal \(Self.self)")
        }
        self = value
    }
}

extension Int: MemcachedValue {}
extension Int8: MemcachedValue {}
extension Int16: MemcachedValue {}
extension Int32: MemcachedValue {}
extension Int64: MemcachedValue {}
extension UInt: MemcachedValue {}
extension UInt8: MemcachedValue {}
extension UInt16: MemcachedValue {}
extension UInt32: MemcachedValue {}
extension UInt64: MemcachedValue {}

extension Bool: MemcachedValue {
    /// Stores `1` or `0` with ``MemcachedFlags/integer``, as python-memcached and pylibmc do (both
    /// read it back as the `int` 1 or 0); with the ``MemcachedFlagProfile/pymemcache`` profile,
    /// JSON `true` or `false` with ``MemcachedFlags/serialized``, which pymemcache with a JSON
    /// pickler reads as a `bool`.
    public func memcachedPayload(context: MemcachedCodingContext) -> MemcachedPayload {
        let flags = context.flagProfile.flags(for: .boolean)
        if flags.contains(.serialized) {
            return MemcachedPayload(bytes: Array((self ? "true" : "false").utf8), flags: flags)
        }
        return MemcachedPayload(bytes: self ? [0x31] : [0x30], flags: flags)
    }

    /// Reads `1`/`0`, `true`/`false` or Python's `True`/`False`, with any flags (surrounding
    /// whitespace ignored): what every profile and Python client writes for a boolean, and text
    /// that spells one.
    ///
    /// - Throws: ``MemcachedError/Code/undecodableValue`` for anything else.
    public init(
        memcachedBytes bytes: UnsafeRawBufferPointer,
        flags: MemcachedFlags,
        context: MemcachedCodingContext
    ) throws {
        switch decimalText(bytes) {
        case "1", "true", "True": self = true
        case "0", "false", "False": self = false
        default: throw MemcachedError.undecodable(Bool.self, flags: flags, "the bytes are not 1, 0, true or false")
        }
    }
}

extension Double: MemcachedValue {
    /// Stores the shortest exact decimal form with ``MemcachedFlags/serialized``: a JSON number,
    /// which a python-memcached client with a JSON unpickler reads as a `float`. Infinities and
    /// NaN are written as `Infinity`, `-Infinity` and `NaN`, which Python's `json` module accepts.
    public func memcachedPayload(context: MemcachedCodingContext) -> MemcachedPayload {
        let text: String
        if isNaN {
            text = "NaN"
        } else if isInfinite {
            text = self < 0 ? "-Infinity" : "Infinity"
        } else {
            text = String(self)
        }
        return MemcachedPayload(bytes: Array(text.utf8), flags: context.flagProfile.flags(for: .floatingPoint))
    }

    /// Reads a decimal number stored with any flags.
    ///
    /// - Throws: ``MemcachedError/Code/undecodableValue`` when the bytes are not a number.
    public init(
        memcachedBytes bytes: UnsafeRawBufferPointer,
        flags: MemcachedFlags,
        context: MemcachedCodingContext
    ) throws {
        guard let text = decimalText(bytes) else {
            throw MemcachedError.undecodable(Double.self, flags: flags, "the bytes are not valid UTF-8")
        }
        switch text {
        case "NaN": self = .nan
        case "Infinity": self = .infinity
        case "-Infinity": self = -.infinity
        default:
            guard let value = Double(text) else {
                throw MemcachedError.undecodable(Double.self, flags: flags, "the bytes are not a decimal number")
            }
            self = value
        }
    }
}
