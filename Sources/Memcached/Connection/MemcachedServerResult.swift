/// One server's answer to a command sent to every server, such as ``MemcachedConnection/stats(_:)``.
public struct MemcachedServerResult<Value: Sendable>: Sendable {
    /// The server, as `host:port`, `[v6]:port` or `unix:/path`.
    public var server: String
    /// The server's answer, or why it gave none.
    public var result: Result<Value, MemcachedError>

    /// Creates a server result.
    ///
    /// - Parameters:
    ///   - server: The server's description.
    ///   - result: Its answer or its error.
    public init(server: String, result: Result<Value, MemcachedError>) {
        self.server = server
        self.result = result
    }
}

/// A compare-and-swap token: the version of an item as ``MemcachedConnection/gets(_:as:)`` read it.
///
/// Pass it to ``MemcachedConnection/cas(_:_:token:expiration:compression:)`` to store only if nobody changed
/// the item since.
public struct MemcachedCASToken: Sendable, Hashable, CustomStringConvertible {
    /// The server's 64-bit CAS unique value.
    public var rawValue: UInt64

    /// Creates a token from a server's CAS unique value.
    ///
    /// - Parameter rawValue: The value as the server reported it.
    public init(rawValue: UInt64) {
        self.rawValue = rawValue
    }

    public var description: String { String(rawValue) }
}
