/// An error thrown by a memcached command or by the checks this library runs before one.
///
/// Every `memcached_return_t` that libmemcached can report has a ``Code``, and so do the failures
/// found in Swift before anything is sent (an invalid key, a value over the size limit, a value
/// that cannot be decoded). Expected negatives are not errors: a miss is `nil`, and "not stored",
/// "not found" or "changed since read" are `false` results of the command that met them.
///
/// Match a code in a `catch` clause directly:
///
/// ```swift
/// do {
///     try connection.set("greeting", "hello")
/// } catch MemcachedError.Code.timeout {
///     // the server did not answer in time
/// } catch let error as MemcachedError where error.code == .itemTooBig {
///     // the server refused the size
/// }
/// ```
///
/// The ``description`` leaves out the key, because keys may carry user data; read ``key`` when
/// you need it.
public struct MemcachedError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong, as libmemcached's return code or one of this library's own codes.
    public internal(set) var code: Code

    /// A human-readable message: libmemcached's last error message for the handle, or the
    /// reason this library refused the call.
    public internal(set) var message: String

    /// The key the failing command was about, where one is known.
    public internal(set) var key: String?

    /// The server the failing command went to, as `host:port` or a socket path, where known.
    public internal(set) var server: String?

    /// Creates an error: for a ``MemcachedValue`` or ``MemcachedObjectCoder`` of your own that
    /// reports a value it cannot decode (``Code/undecodableValue``), or for tests.
    ///
    /// - Parameters:
    ///   - code: What went wrong.
    ///   - message: A human-readable message.
    ///   - key: The key the failing command was about, if any.
    ///   - server: The server the failing command went to, if known.
    public init(code: Code, message: String, key: String? = nil, server: String? = nil) {
        self.code = code
        self.message = message
        self.key = key
        self.server = server
    }

    public var description: String {
        var text = "MemcachedError.\(code): \(message)"
        if let server {
            text += " (server \(server))"
        }
        return text
    }
}

extension MemcachedError {
    /// The kind of a ``MemcachedError``.
    ///
    /// A code is a raw-value struct, not an enum, so that codes added by later libmemcached
    /// releases never break a `switch`. Codes below 10,000 are libmemcached's
    /// `memcached_return_t` values; codes from 10,000 on are raised by this library before any C
    /// call.
    public struct Code: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
        /// The numeric value: a `memcached_return_t`, or 10,000 and above for client-side codes.
        public var rawValue: Int

        /// Creates a code from its numeric value.
        ///
        /// - Parameter rawValue: A `memcached_return_t` value or a client-side code.
        public init(rawValue: Int) {
            self.rawValue = rawValue
        }

        /// Whether an error with this code is about the call as a whole (the caller's input, the
        /// connection's state) rather than about one key or server, so that a multi-key command
        /// throws it instead of reporting it for the keys it concerns.
        var failsTheWholeCall: Bool {
            switch self {
            case .connectionInUse, .connectionClosed, .noServers, .invalidArguments, .emptyKey, .keyTooLong,
                .invalidKeyCharacters, .badKeyProvided, .keyTooBig, .valueTooLarge, .unencodableValue:
                true
            default:
                false
            }
        }

        /// Whether the code is one of the key checks' (``emptyKey``, ``keyTooLong``,
        /// ``invalidKeyCharacters``): the key cannot name an item, and nothing was sent. A reader
        /// that takes keys from outside (a cookie, a URL) can treat it as "no such item".
        public var isInvalidKey: Bool {
            self == .emptyKey || self == .keyTooLong || self == .invalidKeyCharacters
        }

        /// Whether this code comes from libmemcached (rather than from this library's own checks).
        public var isLibmemcachedCode: Bool {
            rawValue >= 0 && rawValue < LibmemcachedReturnCodes.count
        }

        /// libmemcached's own text for the code (`memcached_strerror`), or this library's
        /// explanation for a client-side code.
        public var explanation: String {
            if isLibmemcachedCode, let text = LibmemcachedReturnCodes.explanation(rawValue) {
                return text
            }
            return Self.names[rawValue].map { "client-side error: \($0.swift)" } ?? "unknown code \(rawValue)"
        }

        /// The Swift name of the code, such as `notFound`, or its number when it is unknown.
        public var description: String {
            Self.names[rawValue]?.swift ?? "code(\(rawValue))"
        }

        /// Lets a `catch` clause match a code directly: `catch MemcachedError.Code.timeout`.
        ///
        /// - Parameters:
        ///   - code: The code to look for.
        ///   - error: The error thrown.
        /// - Returns: Whether `error` is a ``MemcachedError`` with that code.
        public static func ~= (code: Code, error: any Error) -> Bool {
            (error as? MemcachedError)?.code == code
        }
    }
}

extension MemcachedError {
    static func emptyKey() -> MemcachedError {
        MemcachedError(code: .emptyKey, message: "the key is empty; keys hold 1 to 250 bytes")
    }

    static func keyTooLong(_ key: String, byteCount: Int) -> MemcachedError {
        MemcachedError(
            code: .keyTooLong,
            message: "the key is \(byteCount) bytes long with its prefix; the limit is \(maximumKeyLength)",
            key: key
        )
    }

    static func invalidKeyCharacters(_ key: String, offset: Int) -> MemcachedError {
        MemcachedError(
            code: .invalidKeyCharacters,
            message: "the key holds a space, control character or DEL at byte \(offset)",
            key: key
        )
    }
}
