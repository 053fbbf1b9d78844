extension MemcachedConnection {
    // MARK: - get

    // The generic reads are inlinable one-liners over non-generic cores (`fetchOne`, `fetchMulti`),
    // so values and dictionaries are built in code specialized for `Value` in the caller's module:
    // unspecialized, every `Optional<Value>` or `[String: Value]` operation looks up generic
    // metadata at run time, which cost more per key than libmemcached's whole reply parsing.
    /// Reads a key, as python-memcached's `get`.
    ///
    /// - Parameters:
    ///   - key: The key: 1 to 250 bytes of UTF-8 without spaces or control characters.
    ///   - type: The type to decode; inferred from context when omitted.
    /// - Returns: The value, or `nil` when the key is missing. A stored empty value is not a miss.
    /// - Throws: ``MemcachedError``: an invalid key (before anything is sent), a value that does not
    ///   decode as `type`, or a server failure. The corresponding C functions are `memcached_mget`
    ///   and `memcached_fetch_result`.
    @inlinable
    public func get<Value: MemcachedValue>(_ key: String, as type: Value.Type = Value.self) throws -> Value? {
        var value: Value?
        try fetchOne(key, command: "get") { bytes, flags, _ in
            value = try Value(memcachedBytes: bytes, flags: flags, context: codingContext)
        }
        return value
    }

    // MARK: - gets

    /// Reads a key together with its compare-and-swap token, for a later
    /// ``cas(_:_:token:expiration:)``.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - type: The type to decode; inferred from context when omitted.
    /// - Returns: The value and its token, or `nil` when the key is missing.
    /// - Throws: ``MemcachedError`` as ``get(_:as:)`` does.
    @inlinable
    public func gets<Value: MemcachedValue>(
        _ key: String,
        as type: Value.Type = Value.self
    ) throws -> (value: Value, token: MemcachedCASToken)? {
        var hit: (value: Value, token: MemcachedCASToken)?
        try fetchOne(key, command: "gets", requiresCAS: true) { bytes, flags, cas in
            hit = (
                try Value(memcachedBytes: bytes, flags: flags, context: codingContext), MemcachedCASToken(rawValue: cas)
            )
        }
        return hit
    }

    /// The non-generic part of every single-key read: checks and sends the key, checks the reply
    /// and decompresses it, then, for a hit, calls `hit` with the value's bytes (valid during the
    /// call), its flags and its CAS. An error `hit` throws is reported with the key, as
    /// ``MemcachedError/Code/undecodableValue`` unless it is a ``MemcachedError``.
    @usableFromInline
    func fetchOne(
        _ key: String,
        command: StaticString,
        requiresCAS: Bool = false,
        _ hit: (UnsafeRawBufferPointer, MemcachedFlags, UInt64) throws -> Void
    ) throws {
        trace(command)
        try withKey(key) { prepared in
            try handle.withDeadline {
                _ = try handle.fetchOne(key: prepared, command: command, requiresCAS: requiresCAS) { item in
                    try decode(item, key: key) { bytes, flags in try hit(bytes, flags, item.cas) }
                }
            }
        }
    }

    // MARK: - getMulti

    /// Reads many keys in one round trip per server, as python-memcached's `get_multi`.
    ///
    /// Keys are sent with libmemcached's batched `memcached_mget`, so the time grows with the
    /// number of servers, not keys. Keys whose server cannot be reached count as misses, as in
    /// python-memcached.
    ///
    /// - Parameters:
    ///   - keys: The keys. Each is checked, with the prefix, before anything is sent.
    ///   - keyPrefix: A prefix for every key on the server, as python-memcached's `key_prefix`; it
    ///     counts toward the 250-byte limit. The returned dictionary uses the keys without it.
    ///   - type: The type to decode; inferred from context when omitted.
    /// - Returns: The hits only, keyed by the caller's keys.
    /// - Throws: ``MemcachedError``: an invalid key, a value that does not decode, a failure in the
    ///   middle of a reply, or no server reachable at all.
    @inlinable
    public func getMulti<Value: MemcachedValue>(
        _ keys: some Collection<String>,
        keyPrefix: String = "",
        as type: Value.Type = Value.self
    ) throws -> [String: Value] {
        let keys = Array(keys)
        var hits: [String: Value] = [:]
        hits.reserveCapacity(keys.count)
        try fetchMulti(keys, keyPrefix: keyPrefix) { index, bytes, flags in
            hits[keys[index]] = try Value(memcachedBytes: bytes, flags: flags, context: codingContext)
        }
        return hits
    }

    /// Reads many keys in one round trip per server and hands each hit to `body` as it arrives,
    /// without building a dictionary or copying the value.
    ///
    /// The fastest way to read many keys: the bytes are libmemcached's read buffer, so nothing is
    /// allocated per key. Use it to copy values straight into a response or into storage of your
    /// own; ``getMulti(_:keyPrefix:as:)`` is this plus a decoded copy of each value in a dictionary.
    /// Through a ``MemcachedClient``, call it inside ``MemcachedClient/withConnection(_:)``.
    ///
    /// ```swift
    /// var total = 0
    /// try connection.getMulti(keys, keyPrefix: "page:") { key, bytes, flags in
    ///     total += bytes.count
    /// }
    /// ```
    ///
    /// - Parameters:
    ///   - keys: The keys. Each is checked, with the prefix, before anything is sent.
    ///   - keyPrefix: A prefix for every key on the server, as python-memcached's `key_prefix`.
    ///   - body: Called once per hit, in the order the servers answer, with the caller's key
    ///     (without the prefix), the value's bytes, valid only during the call and already
    ///     decompressed, and its flags, without ``MemcachedFlags/compressed``. After it throws it is
    ///     not called again; the rest of the reply is still read, then its error is rethrown. It
    ///     must not use this connection: a command it starts throws
    ///     ``MemcachedError/Code/connectionInUse``, and a ``close()`` or ``disconnect()`` it calls
    ///     happens once the read is over.
    /// - Throws: What `body` throws, or ``MemcachedError`` as ``getMulti(_:keyPrefix:as:)`` does.
    public func getMulti(
        _ keys: some Collection<String>,
        keyPrefix: String = "",
        forEachHit body: (_ key: String, _ bytes: UnsafeRawBufferPointer, _ flags: MemcachedFlags) throws -> Void
    ) throws {
        let keys = Array(keys)
        var bodyError: (any Error)?
        do {
            try fetchMulti(keys, keyPrefix: keyPrefix) { index, bytes, flags in
                do {
                    try body(keys[index], bytes, flags)
                } catch {
                    bodyError = error
                    throw error
                }
            }
        } catch let error as MemcachedError where Handle.mayLeaveReplyUnread(error.code) {
            // The rest of the reply failed after the caller's error: the connection's failure wins.
            throw error
        } catch {
            // `fetchMulti` reports a decoding error with the key; the caller's own error goes back
            // as it was thrown.
            throw bodyError ?? error
        }
    }

    /// The non-generic part of every multi-get: checks and sends the keys, matches each reply to
    /// its request and decompresses it, then calls `hit` with the key's index in `keys`, the
    /// value's bytes (valid during the call) and its flags.
    ///
    /// An error `hit` throws is reported with the key, as ``undecodableValue`` unless it is a
    /// ``MemcachedError``; the rest of the reply is still read so nothing lingers.
    @usableFromInline
    func fetchMulti(
        _ keys: [String],
        keyPrefix: String,
        _ hit: (Int, UnsafeRawBufferPointer, MemcachedFlags) throws -> Void
    ) throws {
        trace("get_multi", keys: keys.count)
        guard !keys.isEmpty else { return }
        let prefix = try KeyPrefix(keyPrefix)
        var batch = try KeyBatch(keys: keys, prefix: prefix)
        try handle.withDeadline {
            // Keys of servers that are down (ServerHealth) are misses, not a wait for a timeout.
            var asked = keys
            var positions: [Int]?
            if let health = handle.health, _slowPath(!health.allHealthy) {
                let down = handle.serversToLeaveOut(health)
                if !down.isEmpty {
                    let kept = keys.indices.filter { index in
                        !batch.withKey(at: index) { handle.isOnDownServer($0, down: down) }
                    }
                    if kept.count < keys.count {
                        trace("get_multi: keys of servers that are down left out", keys: keys.count - kept.count)
                        guard !kept.isEmpty else { return }
                        positions = kept
                        asked = kept.map { keys[$0] }
                        batch = try KeyBatch(keys: asked, prefix: prefix)
                    }
                }
            }
            try handle.fetchMany(&batch, command: "get_multi") { index, item in
                try decode(item, key: asked[index]) { bytes, flags in
                    try hit(positions?[index] ?? index, bytes, flags)
                }
            }
        }
    }

    // MARK: - Server mapping

    /// The server a key maps to under the configured hash and distribution.
    ///
    /// - Parameter key: The key.
    /// - Returns: The server as `host:port`, `[v6]:port` or `unix:/path`.
    /// - Throws: ``MemcachedError`` for an invalid key or when no server is configured.
    ///   The corresponding C function is `memcached_server_by_key`.
    public func server(forKey key: String) throws -> String {
        try withKey(key) { try handle.server(forKey: $0) }
    }
}
