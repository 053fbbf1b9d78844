extension MemcachedConnection {
    // MARK: - delete

    /// Deletes a key, as python-memcached's `delete`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - noReply: Whether to send the command without waiting for its reply, python-memcached's
    ///     `noreply`. With ``MemcachedConfiguration/noReply`` on, every such call skips its reply
    ///     whatever this says. The binary protocol always waits.
    /// - Returns: `true` when the key was deleted, `false` when it was missing. Without waiting for
    ///   the reply, always `true`.
    /// - Throws: ``MemcachedError`` for an invalid key or a server failure.
    ///   The corresponding C function is `memcached_delete`.
    @discardableResult
    public func delete(_ key: String, noReply: Bool = false) throws -> Bool {
        let noReply = skipsReply(noReply)
        return try instrumented(.delete, key: key) {
            try withKey(key) { prepared in
                try handle.withDeadline {
                    let deleted = try handle.delete(key: prepared, noReply: noReply)
                    try handle.flushWrites()
                    return deleted
                }
            }
        }
    }

    /// Deletes many keys, as python-memcached's `delete_multi`, and reports each key's outcome.
    ///
    /// Every key is checked before anything is sent. A server failure for one key does not stop
    /// the others.
    ///
    /// - Parameters:
    ///   - keys: The keys.
    ///   - keyPrefix: A prefix for every key on the server, as python-memcached's `key_prefix`.
    ///   - noReply: Whether to send the commands without waiting for their replies. With
    ///     ``MemcachedConfiguration/noReply`` on, they always skip them. The binary protocol always waits.
    /// - Returns: For each caller's key (without the prefix): ``MemcachedKeyOutcome/applied`` when
    ///   deleted, ``MemcachedKeyOutcome/declined`` when missing, ``MemcachedKeyOutcome/failed(_:)``
    ///   as ``setMulti(_:expiration:keyPrefix:compression:noReply:)`` describes.
    /// - Throws: ``MemcachedError`` for an invalid key, or two keys that are equal as Swift strings
    ///   but differ in bytes (``MemcachedError/Code/invalidArguments``), before anything is sent.
    @discardableResult
    public func deleteMulti(
        _ keys: some Collection<String>,
        keyPrefix: String = "",
        noReply: Bool = false
    ) throws -> [String: MemcachedKeyOutcome] {
        let keys = Array(keys)
        return try instrumented(.deleteMulti, keys: keys.count) {
            let batch = try KeyBatch(keys: keys, prefix: try KeyPrefix(keyPrefix))
            let noReply = skipsReply(noReply)
            return try handle.withDeadline {
                try eachKey(keys, batch) { key in try handle.delete(key: key.prepared, noReply: noReply) }
            }
        }
    }

    // MARK: - increment / decrement

    /// Adds to a counter, as python-memcached's `incr`.
    ///
    /// The stored value must be ASCII decimal, as integers are stored; memcached wraps at 2⁶⁴.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - delta: The amount to add, up to 2⁶⁴ − 1. The default is 1.
    /// - Returns: The new value, or `nil` when the key is missing.
    /// - Throws: ``MemcachedError`` with code ``MemcachedError/Code/clientError`` when the stored
    ///   value is not a number, or another code for an invalid key or a server failure.
    ///   The corresponding C function is `memcached_increment_by_key`.
    @discardableResult
    public func increment(_ key: String, by delta: UInt64 = 1) throws -> UInt64? {
        try instrumented(.increment, key: key) {
            try withKey(key) { prepared in
                try handle.withDeadline { try handle.arithmetic(key: prepared, delta: delta, increment: true) }
            }
        }
    }

    /// Subtracts from a counter, as python-memcached's `decr`; memcached stops at 0.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - delta: The amount to subtract. The default is 1.
    /// - Returns: The new value, or `nil` when the key is missing.
    /// - Throws: ``MemcachedError`` as ``increment(_:by:)`` does.
    ///   The corresponding C function is `memcached_decrement_by_key`.
    @discardableResult
    public func decrement(_ key: String, by delta: UInt64 = 1) throws -> UInt64? {
        try instrumented(.decrement, key: key) {
            try withKey(key) { prepared in
                try handle.withDeadline { try handle.arithmetic(key: prepared, delta: delta, increment: false) }
            }
        }
    }

    // MARK: - touch

    /// Changes when an item expires without reading it, as python-memcached's `touch`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - expiration: The new expiration. The default, ``MemcachedExpiration/never``, is
    ///     python-memcached's `time=0`: the item no longer expires.
    /// - Returns: `true` when the item exists, `false` when it is missing.
    /// - Throws: ``MemcachedError`` for an invalid key or a server failure.
    ///   The corresponding C function is `memcached_touch`.
    @discardableResult
    public func touch(_ key: String, expiration: MemcachedExpiration = .never) throws -> Bool {
        try instrumented(.touch, key: key) {
            try withKey(key) { prepared in
                try handle.withDeadline { try handle.touch(key: prepared, expiration: try expiration.wireValue()) }
            }
        }
    }

    // MARK: - Servers

    /// Invalidates every item on every server, as python-memcached's `flush_all`.
    ///
    /// - Parameter delay: How long the servers wait before flushing, in whole seconds (rounded
    ///   up). The default is to flush at once.
    /// - Throws: ``MemcachedError`` when a server fails; the others are still flushed.
    ///   The corresponding C function is `memcached_flush`.
    public func flush(delay: Duration = .zero) throws {
        _ = try instrumented(.flush, keys: 0) {
            let delaySeconds = Int64(try Handle.seconds(delay, "delay"))
            try handle.withDeadline {
                try handle.flush(delaySeconds: delaySeconds, noReply: handle.noReply)
                try handle.flushWrites()
            }
            return CommandDone()
        }
    }

    /// Reads every server's statistics, as python-memcached's `get_stats`.
    ///
    /// - Parameter group: A statistics group such as `"settings"`, `"slabs"` or `"items"`;
    ///   `nil` for the general statistics.
    /// - Returns: One result per server, in configuration order: its statistics, or why it gave none.
    /// - Throws: ``MemcachedError`` with code ``MemcachedError/Code/invalidArguments`` for a group
    ///   holding control characters, or ``MemcachedError/Code/connectionClosed``.
    ///   The corresponding C function is `memcached_stat_execute`.
    public func stats(_ group: String? = nil) throws -> [MemcachedServerResult<[String: String]>] {
        try instrumented(.stats, keys: 0) {
            if let group {
                // The group goes into the text protocol verbatim: refuse anything that could end the line.
                guard !group.isEmpty, group.utf8.allSatisfy({ $0 >= 0x20 && $0 != 0x7F }) else {
                    throw MemcachedError(
                        code: .invalidArguments,
                        message: "the statistics group holds control characters or is empty"
                    )
                }
            }
            return try handle.withDeadline { try handle.stats(group: group) }
        }
    }

    /// Reads every server's version string, such as `"1.6.18"`.
    ///
    /// - Returns: One result per server, in configuration order.
    /// - Throws: ``MemcachedError/Code/connectionClosed`` after ``close()``.
    ///   The corresponding C function is `memcached_version`.
    public func versions() throws -> [MemcachedServerResult<String>] {
        try instrumented(.version, keys: 0) {
            try handle.withDeadline { try handle.versions() }
        }
    }
}
