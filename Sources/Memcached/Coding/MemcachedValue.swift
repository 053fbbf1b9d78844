/// The 32-bit flags memcached stores beside every value, read as python-memcached's type tags.
///
/// Using python-memcached's tags lets a Swift service and a Python service read each other's
/// values: bytes 0, serialized object 1, integer 2, long 4, zlib-compressed 8 (combined with the
/// others), UTF-8 text 16.
public struct MemcachedFlags: OptionSet, Sendable, Hashable {
    /// The flags as stored on the server.
    public var rawValue: UInt32

    /// Creates flags from their stored value.
    ///
    /// - Parameter rawValue: The 32-bit flags word.
    public init(rawValue: UInt32) {
        self.rawValue = rawValue
    }

    /// Raw bytes: no bit set. python-memcached writes `bytes` this way.
    public static let bytes: MemcachedFlags = []
    /// A serialized object (python-memcached's `_FLAG_PICKLE`, 1). This library stores
    /// `Codable` values and `Double` this way, as JSON.
    public static let serialized = MemcachedFlags(rawValue: 1)
    /// An integer as ASCII decimal (python-memcached's `_FLAG_INTEGER`, 2).
    public static let integer = MemcachedFlags(rawValue: 2)
    /// A long integer as ASCII decimal (python-memcached's `_FLAG_LONG`, 4); read like ``integer``.
    /// pylibmc writes every `int` this way (``MemcachedFlagProfile/pylibmc``).
    public static let long = MemcachedFlags(rawValue: 4)
    /// The stored bytes are zlib-compressed (python-memcached's `_FLAG_COMPRESSED`, 8).
    public static let compressed = MemcachedFlags(rawValue: 8)
    /// UTF-8 text (python-memcached's `_FLAG_TEXT`, 16).
    public static let text = MemcachedFlags(rawValue: 16)
}

/// A value in the form memcached stores it: bytes and flags.
public struct MemcachedPayload: Sendable, Hashable {
    /// The stored bytes.
    public var bytes: [UInt8]
    /// The stored flags.
    public var flags: MemcachedFlags

    /// Creates a payload.
    ///
    /// - Parameters:
    ///   - bytes: The bytes to store.
    ///   - flags: The flags that say how to read them back.
    public init(bytes: [UInt8], flags: MemcachedFlags) {
        self.bytes = bytes
        self.flags = flags
    }
}

/// A type that stores itself in memcached as bytes plus flags, and reads itself back: the one
/// value protocol every command takes.
///
/// `String`, `[UInt8]`, `Data`, every fixed-width integer, `Bool` and `Double` conform, using
/// python-memcached's flags, or those of the configured ``MemcachedFlagProfile``. A `Codable`
/// type conforms with one empty extension, and is then stored by the client's
/// ``MemcachedConfiguration/objectCoder`` (JSON by default) with ``MemcachedFlags/serialized``,
/// as python-memcached pickles objects:
///
/// ```swift
/// struct Film: Codable { var title: String; var rentals: Int }
/// extension Film: MemcachedValue {}
///
/// try await client.set("film:1", Film(title: "ACADEMY DINOSAUR", rentals: 23))
/// let films = try await client.get("top5films", as: [Film].self)
/// ```
///
/// Arrays, dictionaries and sets of `Codable` elements, and `Date`, `UUID`, `URL`, `Decimal` and
/// `Float`, conform the same way; `[UInt8]` stays raw bytes. Implement the two requirements
/// yourself when you want full control over a type's stored form; ``MemcachedCodingContext`` then
/// carries the configured coder, should a part of the value need it.
///
/// Compression is not the conforming type's business: the connection compresses and decompresses
/// around these two requirements, so ``init(memcachedBytes:flags:context:)`` never sees
/// ``MemcachedFlags/compressed``.
public protocol MemcachedValue {
    /// Encodes the value for storage.
    ///
    /// - Parameter context: The client's coding choices, such as its object coder.
    /// - Returns: The bytes and flags to store.
    /// - Throws: Any error; the connection reports it as ``MemcachedError/Code/unencodableValue``.
    func memcachedPayload(context: MemcachedCodingContext) throws -> MemcachedPayload

    /// Decodes a stored value.
    ///
    /// - Parameters:
    ///   - bytes: The stored bytes, valid only during the call.
    ///   - flags: The stored flags, without ``MemcachedFlags/compressed``.
    ///   - context: The client's coding choices, such as its object coder.
    /// - Throws: ``MemcachedError`` with code ``MemcachedError/Code/undecodableValue`` when the
    ///   bytes or flags do not hold this type.
    init(memcachedBytes bytes: UnsafeRawBufferPointer, flags: MemcachedFlags, context: MemcachedCodingContext) throws
}

/// What a value's coding may depend on besides the value: the client's configured choices.
///
/// Commands build it from the connection's ``MemcachedConfiguration``; build one yourself to
/// encode or decode a ``MemcachedValue`` outside a command, as a test might.
public struct MemcachedCodingContext: Sendable {
    /// The coder for `Codable` values, from ``MemcachedConfiguration/objectCoder``.
    public var objectCoder: any MemcachedObjectCoder

    /// Which Python client's flags values are written with, from
    /// ``MemcachedConfiguration/flagProfile``.
    public var flagProfile: MemcachedFlagProfile

    /// Creates a context.
    ///
    /// - Parameters:
    ///   - objectCoder: The coder for `Codable` values. The default writes JSON.
    ///   - flagProfile: The flags values are written with. The default is python-memcached's.
    public init(
        objectCoder: any MemcachedObjectCoder = JSONObjectCoder(),
        flagProfile: MemcachedFlagProfile = .pythonMemcached
    ) {
        self.objectCoder = objectCoder
        self.flagProfile = flagProfile
    }

    /// Encodes a value with the object coder, flagged as the profile flags objects.
    @usableFromInline
    func objectPayload<Value: Encodable>(for value: Value) throws -> MemcachedPayload {
        try objectCoder.payload(for: value, flags: flagProfile.flags(for: .object))
    }
}

extension MemcachedValue where Self: Encodable {
    /// Encodes the value with the context's object coder, flagged as the context's
    /// ``MemcachedFlagProfile`` flags objects (``MemcachedFlags/serialized`` in every profile).
    public func memcachedPayload(context: MemcachedCodingContext) throws -> MemcachedPayload {
        try context.objectPayload(for: self)
    }
}

extension MemcachedValue where Self: Decodable {
    /// Decodes a value written by an object coder (``MemcachedFlags/serialized``, or unflagged
    /// bytes from another client); an integer-flagged value is not an object and throws.
    public init(
        memcachedBytes bytes: UnsafeRawBufferPointer,
        flags: MemcachedFlags,
        context: MemcachedCodingContext
    ) throws {
        self = try context.objectCoder.value(Self.self, bytes: bytes, flags: flags)
    }
}

extension MemcachedError {
    static func undecodable(_ type: Any.Type, flags: MemcachedFlags, _ reason: String) -> MemcachedError {
        MemcachedError(
            code: .undecodableValue,
            message: "cannot decode \(type) from a value with flags \(flags.rawValue): \(reason)"
        )
    }
}
