/// What a multi-key write or delete did with one key: the one result shape of
/// ``MemcachedConnection/setMulti(_:expiration:keyPrefix:compression:noReply:)`` and
/// ``MemcachedConnection/deleteMulti(_:keyPrefix:noReply:)`` (and the client's).
///
/// ```swift
/// let outcomes = try connection.setMulti(["a": 1, "b": 2])
/// for (key, outcome) in outcomes {
///     if case .failed(let error) = outcome {
///         logger.warning("not cached", metadata: ["key": "\(key)", "error": "\(error.code)"])
///     }
/// }
/// ```
public enum MemcachedKeyOutcome: Sendable, Hashable {
    /// The command took effect: the value was stored, or the key deleted.
    case applied
    /// The server answered and declined: a value it did not store, or a key it did not hold.
    case declined
    /// The key's server failed, was down, or the call's deadline passed before the key's turn.
    /// Whether the command took effect on the server is not known.
    case failed(MemcachedError)

    /// Whether the command took effect.
    public var isApplied: Bool { self == .applied }

    /// The error of a failed key, `nil` otherwise.
    public var error: MemcachedError? {
        if case .failed(let error) = self { error } else { nil }
    }
}

/// The hits of a multi-key read, and the keys that could not be read.
///
/// A key is in exactly one of three places: ``hits`` (its value, decoded), ``failures`` (its value
/// did not decode, or its server failed or was down, so whether it is stored is not known), or
/// neither (a miss). One failing key or server never costs the others their values, as in
/// python-memcached's `get_multi`, which returns what it could read; unlike it, nothing is hidden.
///
/// ```swift
/// let result = try connection.getMulti(["a", "b", "c"], as: Int.self)
/// let a = result["a"]                      // the value, or nil for a miss or a failure
/// for (key, error) in result.failures { … }
/// ```
public struct MemcachedGetMultiResult<Value> {
    /// The values read, by the caller's key (without the prefix).
    public var hits: [String: Value]

    /// The keys whose value could not be read, by the caller's key, with the reason: a value that
    /// did not decode (``MemcachedError/Code/undecodableValue``,
    /// ``MemcachedError/Code/decompressionFailed``), a server that failed during the call, or one
    /// that was down or unreachable (``MemcachedError/Code/serverMarkedDead``,
    /// ``MemcachedError/Code/connectionFailure``).
    public var failures: [String: MemcachedError]

    /// Creates a result.
    ///
    /// - Parameters:
    ///   - hits: The values read.
    ///   - failures: The keys that could not be read.
    @inlinable
    public init(hits: [String: Value] = [:], failures: [String: MemcachedError] = [:]) {
        self.hits = hits
        self.failures = failures
    }

    /// The value read for a key, or `nil` for a miss or a failure.
    ///
    /// - Parameter key: The caller's key, without the prefix.
    @inlinable
    public subscript(key: String) -> Value? {
        hits[key]
    }
}

extension MemcachedGetMultiResult: Sendable where Value: Sendable {}
extension MemcachedGetMultiResult: Equatable where Value: Equatable {}

extension Dictionary where Key == String, Value == MemcachedKeyOutcome {
    /// The keys whose command did not take effect, declined or failed, in no particular order:
    /// what python-memcached's `set_multi` returns. Empty when every key was applied.
    public var keysNotApplied: [String] {
        compactMap { $0.value.isApplied ? nil : $0.key }
    }

    /// The keys that failed, with their errors.
    public var failures: [String: MemcachedError] {
        compactMapValues(\.error)
    }
}
