public import Logging

// Every command leases a connection, runs the synchronous command of the same name on one of the
// client's threads and hands the connection back: the semantics, and the docs, are the
// connection's. Values cross threads, hence the `Sendable` requirements. The reads are inlinable,
// as the connection's are, so that their values are built in code specialized for the caller's type.

extension MemcachedClient {
    // MARK: - Reading

    /// Reads a key, as python-memcached's `get`.
    ///
    /// - Parameters:
    ///   - key: The key: 1 to 250 bytes of UTF-8 without spaces or control characters.
    ///   - type: The type to decode; inferred from context when omitted.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: The value, or `nil` when the key is missing. A stored empty value is not a miss.
    /// - Throws: ``MemcachedError`` as ``MemcachedConnection/get(_:as:)`` does, with code
    ///   ``MemcachedError/Code/poolTimeout`` or ``MemcachedError/Code/poolClosed`` when no
    ///   connection could be leased; `CancellationError` when the task was cancelled before or
    ///   during the command.
    ///
    /// When every connection is busy, the read joins the others waiting for the next free one,
    /// which serves them all with one multi-get (``Options/coalescesReads``).
    @inlinable
    public func get<Value: MemcachedValue & Sendable>(
        _ key: String,
        as type: Value.Type = Value.self,
        logger: Logger? = nil
    ) async throws -> Value? {
        try await call(.get, key: key, logger: logger) { context in
            try await get(key, as: type, context: context)
        }
    }

    /// ``get(_:as:logger:)`` in its call.
    @inlinable
    func get<Value: MemcachedValue & Sendable>(
        _ key: String,
        as type: Value.Type,
        context: CallContext
    ) async throws -> Value? {
        guard options.coalescesReads else {
            return try await withConnection(context) { try $0.get(key, as: type) }
        }
        let value = try await pool.read(key, context: context) { bytes, flags, _, context in
            try Value(memcachedBytes: bytes, flags: flags, context: context)
        }
        return value.map { $0 as! Value }
    }

    /// Reads many keys in one round trip per server, as python-memcached's `get_multi`.
    ///
    /// - Parameters:
    ///   - keys: The keys. Each is checked, with the prefix, before anything is sent.
    ///   - keyPrefix: A prefix for every key on the server, as python-memcached's `key_prefix`.
    ///   - type: The type to decode; inferred from context when omitted.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: The hits and the keys that could not be read, as
    ///   ``MemcachedConnection/getMulti(_:keyPrefix:as:)`` describes.
    /// - Throws: ``MemcachedError`` as ``MemcachedConnection/getMulti(_:keyPrefix:as:)`` does, or
    ///   as ``get(_:as:logger:)`` does when no connection could be leased.
    ///
    /// A call of at most ``coalescedMultiGetLimit`` keys (repeats counted) that finds every
    /// connection busy joins the coalesced reads (``Options/coalescesReads``): its keys are read
    /// together in one batch, each as a `get` would be, and reported as the call reports them on
    /// a connection of its own (hits, misses, each key's own failure keyed without the prefix;
    /// cancellation, ``MemcachedError/Code/poolTimeout`` and ``MemcachedError/Code/poolClosed``
    /// thrown). Like a coalesced `get`, it waits at least ``Options/connectionWaitTimeout`` and at
    /// most twice that before ``MemcachedError/Code/poolTimeout``.
    @inlinable
    public func getMulti<Value: MemcachedValue & Sendable>(
        _ keys: some Collection<String>,
        keyPrefix: String = "",
        as type: Value.Type = Value.self,
        logger: Logger? = nil
    ) async throws -> MemcachedGetMultiResult<Value> {
        let keys = Array(keys)
        return try await call(.getMulti, keyCount: keys.count, keys: keys, logger: logger) { context in
            try await getMulti(keys, keyPrefix: keyPrefix, as: type, context: context)
        }
    }

    /// ``getMulti(_:keyPrefix:as:logger:)`` in its call.
    @inlinable
    func getMulti<Value: MemcachedValue & Sendable>(
        _ keys: [String],
        keyPrefix: String,
        as type: Value.Type,
        context: CallContext
    ) async throws -> MemcachedGetMultiResult<Value> {
        let alone = context.applied { try $0.getMulti(keys, keyPrefix: keyPrefix, as: type) }
        guard options.coalescesReads, !keys.isEmpty, keys.count <= Self.coalescedMultiGetLimit else {
            return try await withConnection(alone)
        }
        let outcome = try await pool.readMany(
            keyCount: keys.count,
            { try Self.coalescedKeys(keys, keyPrefix: keyPrefix) },
            decode: { bytes, flags, _, context in
                try Value(memcachedBytes: bytes, flags: flags, context: context)
            },
            alone: alone
        )
        switch outcome {
        case .alone(let result):
            return result
        case .coalesced(let distinct, let answers):
            var result = MemcachedGetMultiResult<Value>()
            for (key, answer) in zip(distinct, answers) {
                switch answer {
                case .success(let value?):
                    result.hits[key] = (value as! Value)
                case .success(nil):
                    break
                case .failure(let error):
                    result.failures[key] = try Self.keyFailure(error, key: key)
                }
            }
            return result
        }
    }

    /// The most keys a ``getMulti(_:keyPrefix:as:logger:)`` may have to join the coalesced reads; larger
    /// calls wait for a connection of their own.
    public static let coalescedMultiGetLimit = 16

    /// The keys of a small `getMulti` without repeats, and as sent (prefixed). Checked as the
    /// connection's `getMulti` checks them, so that the call fails the same way either path.
    @usableFromInline
    static func coalescedKeys(_ keys: [String], keyPrefix: String) throws -> (keys: [String], sent: [String]) {
        // The checks of the connection's multi-get: every key with the prefix, and no two keys
        // that Swift calls equal but whose bytes differ (a `Set` below would merge them).
        _ = try KeyBatch(keys: keys, prefix: KeyPrefix(keyPrefix))
        var seen = Set<String>()
        let distinct = keys.filter { seen.insert($0).inserted }
        return (distinct, keyPrefix.isEmpty ? distinct : distinct.map { keyPrefix + $0 })
    }

    /// What a coalesced key's error is in a ``MemcachedGetMultiResult``: the key's own failure
    /// (its server's or its value's), named by the caller's key without the prefix; anything
    /// else (cancellation, the wait for a connection, the pool closing, the batch's read failing
    /// as a whole) fails the call, as it would have failed the call on its own connection.
    @usableFromInline
    static func keyFailure(_ error: any Error, key: String) throws -> MemcachedError {
        guard let own = error as? CoalescedKeyFailure else {
            throw error
        }
        var failure = own.error
        failure.key = key
        return failure
    }

    /// Reads a key together with its compare-and-swap token, for a later
    /// ``cas(_:_:token:expiration:compression:logger:)``.
    ///
    /// The token may be used on any connection: it is the item's version on the server.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - type: The type to decode; inferred from context when omitted.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: The value and its token, or `nil` when the key is missing.
    /// - Throws: ``MemcachedError`` as ``get(_:as:logger:)`` does.
    ///
    /// Like ``get(_:as:logger:)``, it joins a coalesced batch when every connection is busy.
    @inlinable
    public func gets<Value: MemcachedValue & Sendable>(
        _ key: String,
        as type: Value.Type = Value.self,
        logger: Logger? = nil
    ) async throws -> (value: Value, token: MemcachedCASToken)? {
        try await call(.gets, key: key, logger: logger) { context in
            guard options.coalescesReads else {
                return try await withConnection(context) { try $0.gets(key, as: type) }
            }
            let hit = try await pool.read(key, requiresCAS: true, context: context) { bytes, flags, token, context in
                Hit(value: try Value(memcachedBytes: bytes, flags: flags, context: context), token: token)
            }
            return hit.map { hit in
                let hit = hit as! Hit<Value>
                return (hit.value, hit.token)
            }
        }
    }

    /// A ``gets(_:as:logger:)`` hit on its way through the pool, which passes values as `any Sendable`.
    @usableFromInline
    struct Hit<Value: Sendable>: Sendable {
        @usableFromInline let value: Value
        @usableFromInline let token: MemcachedCASToken

        @usableFromInline
        init(value: Value, token: MemcachedCASToken) {
            self.value = value
            self.token = token
        }
    }

    // MARK: - Writing

    /// Stores a value whatever the key holds, as python-memcached's `set`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The value, stored with python-memcached's flags for its type.
    ///   - expiration: When the item expires. The default is ``MemcachedExpiration/never``.
    ///   - compression: Whether to compress the value. The default follows
    ///     ``MemcachedConfiguration/compressionThreshold``.
    ///   - noReply: Whether to send without waiting for the reply, as the connection's method says.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: `true` when stored; `false` when the server declined.
    /// - Throws: ``MemcachedError`` as ``MemcachedConnection/set(_:_:expiration:compression:noReply:)`` does, or as
    ///   ``get(_:as:logger:)`` does when no connection could be leased.
    ///
    /// With ``MemcachedConfiguration/noReply`` on, a call that finds every connection busy joins
    /// the next batch, which sends its writes with one write per server (``Options/coalescesWrites``).
    @discardableResult
    public func set<Value: MemcachedValue & Sendable>(
        _ key: String,
        _ value: Value,
        expiration: MemcachedExpiration = .never,
        compression: MemcachedCompression = .configured,
        noReply: Bool = false,
        logger: Logger? = nil
    ) async throws -> Bool {
        try await call(.set, key: key, logger: logger) { context in
            try await write(.set, key, context) {
                try $0.set(key, value, expiration: expiration, compression: compression, noReply: noReply)
            }
        }
    }

    /// Runs a single-key write: in a batch when writes are batched (``batchesWrites``), else on a
    /// connection of its own.
    func write(
        _ name: MemcachedCommand,
        _ key: String,
        _ context: CallContext,
        _ command: @escaping @Sendable (MemcachedConnection) throws -> Bool
    ) async throws -> Bool {
        guard batchesWrites else {
            return try await withConnection(context, command)
        }
        // In a batch, the write may be sent after its caller has left (cancelled): its span,
        // ended by then, is not handed over; the batch counts it in the metrics once flushed.
        var batched = context
        batched.span = nil
        return try await pool.write(key, as: name, batched.applied(to: command))
    }

    /// Stores many values, as python-memcached's `set_multi`.
    ///
    /// - Parameters:
    ///   - items: The keys and values.
    ///   - expiration: When the items expire. The default is ``MemcachedExpiration/never``.
    ///   - keyPrefix: A prefix for every key on the server.
    ///   - compression: Whether to compress the value. The default follows
    ///     ``MemcachedConfiguration/compressionThreshold``.
    ///   - noReply: Whether to send without waiting for the reply, as the connection's method says.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: Each key's outcome, as ``MemcachedConnection/setMulti(_:expiration:keyPrefix:compression:noReply:)``
    ///   describes.
    /// - Throws: ``MemcachedError`` as ``MemcachedConnection/setMulti(_:expiration:keyPrefix:compression:noReply:)``
    ///   does, or as ``get(_:as:logger:)`` does when no connection could be leased.
    @discardableResult
    public func setMulti<Value: MemcachedValue & Sendable>(
        _ items: [String: Value],
        expiration: MemcachedExpiration = .never,
        keyPrefix: String = "",
        compression: MemcachedCompression = .configured,
        noReply: Bool = false,
        logger: Logger? = nil
    ) async throws -> [String: MemcachedKeyOutcome] {
        try await call(.setMulti, keyCount: items.count, keys: Array(items.keys), logger: logger) { context in
            try await withConnection(context) {
                try $0.setMulti(
                    items,
                    expiration: expiration,
                    keyPrefix: keyPrefix,
                    compression: compression,
                    noReply: noReply
                )
            }
        }
    }

    /// Stores a value only if the key is missing, as python-memcached's `add`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The value.
    ///   - expiration: When the item expires. The default is ``MemcachedExpiration/never``.
    ///   - compression: Whether to compress the value. The default follows
    ///     ``MemcachedConfiguration/compressionThreshold``.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: `true` when stored, `false` when the key already held a value.
    /// - Throws: ``MemcachedError`` as ``set(_:_:expiration:compression:noReply:logger:)`` does.
    @discardableResult
    public func add<Value: MemcachedValue & Sendable>(
        _ key: String,
        _ value: Value,
        expiration: MemcachedExpiration = .never,
        compression: MemcachedCompression = .configured,
        logger: Logger? = nil
    ) async throws -> Bool {
        try await call(.add, key: key, logger: logger) { context in
            try await add(key, value, expiration: expiration, compression: compression, context: context)
        }
    }

    /// ``add(_:_:expiration:compression:logger:)`` in its call.
    func add<Value: MemcachedValue & Sendable>(
        _ key: String,
        _ value: Value,
        expiration: MemcachedExpiration,
        compression: MemcachedCompression,
        context: CallContext
    ) async throws -> Bool {
        try await withConnection(context) { try $0.add(key, value, expiration: expiration, compression: compression) }
    }

    /// Stores a value only if the key already holds one, as python-memcached's `replace`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The value.
    ///   - expiration: When the item expires. The default is ``MemcachedExpiration/never``.
    ///   - compression: Whether to compress the value. The default follows
    ///     ``MemcachedConfiguration/compressionThreshold``.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: `true` when stored, `false` when the key was missing.
    /// - Throws: ``MemcachedError`` as ``set(_:_:expiration:compression:noReply:logger:)`` does.
    @discardableResult
    public func replace<Value: MemcachedValue & Sendable>(
        _ key: String,
        _ value: Value,
        expiration: MemcachedExpiration = .never,
        compression: MemcachedCompression = .configured,
        logger: Logger? = nil
    ) async throws -> Bool {
        try await call(.replace, key: key, logger: logger) { context in
            try await withConnection(context) {
                try $0.replace(key, value, expiration: expiration, compression: compression)
            }
        }
    }

    /// Stores a value only if nobody changed the item since ``gets(_:as:logger:)`` returned `token`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The new value.
    ///   - token: The token ``gets(_:as:logger:)`` returned with the value being replaced.
    ///   - expiration: When the item expires. The default is ``MemcachedExpiration/never``.
    ///   - compression: Whether to compress the value. The default follows
    ///     ``MemcachedConfiguration/compressionThreshold``.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: `true` when stored; `false` when the item changed or disappeared since.
    /// - Throws: ``MemcachedError`` as ``set(_:_:expiration:compression:noReply:logger:)`` does.
    @discardableResult
    public func cas<Value: MemcachedValue & Sendable>(
        _ key: String,
        _ value: Value,
        token: MemcachedCASToken,
        expiration: MemcachedExpiration = .never,
        compression: MemcachedCompression = .configured,
        logger: Logger? = nil
    ) async throws -> Bool {
        try await call(.cas, key: key, logger: logger) { context in
            try await withConnection(context) {
                try $0.cas(key, value, token: token, expiration: expiration, compression: compression)
            }
        }
    }

    /// Adds bytes after an existing value, as python-memcached's `append`.
    ///
    /// The rules of ``MemcachedConnection/append(_:_:)`` apply: the item keeps its flags, the
    /// appended bytes are never compressed, and a compressed value throws
    /// ``MemcachedError/Code/compressedValue`` with nothing written.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The bytes to add, encoded as their type's stored form.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: `true` when appended, `false` when the key was missing.
    /// - Throws: ``MemcachedError`` as ``set(_:_:expiration:compression:noReply:logger:)`` does.
    @discardableResult
    public func append<Value: MemcachedValue & Sendable>(
        _ key: String,
        _ value: Value,
        logger: Logger? = nil
    ) async throws -> Bool {
        try await call(.append, key: key, logger: logger) { context in
            try await withConnection(context) { try $0.append(key, value) }
        }
    }

    /// Adds bytes before an existing value, as python-memcached's `prepend`.
    ///
    /// The rules of ``append(_:_:logger:)`` apply.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The bytes to add.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: `true` when prepended, `false` when the key was missing.
    /// - Throws: ``MemcachedError`` as ``set(_:_:expiration:compression:noReply:logger:)`` does.
    @discardableResult
    public func prepend<Value: MemcachedValue & Sendable>(
        _ key: String,
        _ value: Value,
        logger: Logger? = nil
    ) async throws -> Bool {
        try await call(.prepend, key: key, logger: logger) { context in
            try await withConnection(context) { try $0.prepend(key, value) }
        }
    }

    /// Changes when an item expires without reading it, as python-memcached's `touch`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - expiration: The new expiration. The default, ``MemcachedExpiration/never``, is
    ///     python-memcached's `time=0`.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: `true` when the item exists, `false` when it is missing.
    /// - Throws: ``MemcachedError`` as ``MemcachedConnection/touch(_:expiration:)`` does, or as
    ///   ``get(_:as:logger:)`` does when no connection could be leased.
    @discardableResult
    public func touch(
        _ key: String,
        expiration: MemcachedExpiration = .never,
        logger: Logger? = nil
    ) async throws -> Bool {
        try await call(.touch, key: key, logger: logger) { context in
            try await withConnection(context) { try $0.touch(key, expiration: expiration) }
        }
    }

    // MARK: - Deleting and counting

    /// Deletes a key, as python-memcached's `delete`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - noReply: Whether to send without waiting for the reply, as the connection's method says.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: `true` when the key was deleted, `false` when it was missing.
    /// - Throws: ``MemcachedError`` as ``MemcachedConnection/delete(_:noReply:)`` does, or as
    ///   ``get(_:as:logger:)`` does when no connection could be leased.
    ///
    /// With ``MemcachedConfiguration/noReply`` on, it joins batches as ``set(_:_:expiration:compression:noReply:logger:)`` does.
    @discardableResult
    public func delete(_ key: String, noReply: Bool = false, logger: Logger? = nil) async throws -> Bool {
        try await call(.delete, key: key, logger: logger) { context in
            try await write(.delete, key, context) { try $0.delete(key, noReply: noReply) }
        }
    }

    /// Deletes many keys, as python-memcached's `delete_multi`, and reports each key's outcome.
    ///
    /// - Parameters:
    ///   - keys: The keys.
    ///   - keyPrefix: A prefix for every key on the server.
    ///   - noReply: Whether to send without waiting for the replies, as the connection's method says.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: Each key's outcome, as ``MemcachedConnection/deleteMulti(_:keyPrefix:noReply:)``
    ///   describes.
    /// - Throws: ``MemcachedError`` as ``MemcachedConnection/deleteMulti(_:keyPrefix:noReply:)``
    ///   does, or as ``get(_:as:logger:)`` does when no connection could be leased.
    @discardableResult
    public func deleteMulti(
        _ keys: some Collection<String>,
        keyPrefix: String = "",
        noReply: Bool = false,
        logger: Logger? = nil
    ) async throws -> [String: MemcachedKeyOutcome] {
        let keys = Array(keys)
        return try await call(.deleteMulti, keyCount: keys.count, keys: keys, logger: logger) { context in
            try await withConnection(context) { try $0.deleteMulti(keys, keyPrefix: keyPrefix, noReply: noReply) }
        }
    }

    /// Adds to a counter, as python-memcached's `incr`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - delta: The amount to add. The default is 1.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: The new value, or `nil` when the key is missing.
    /// - Throws: ``MemcachedError`` as ``MemcachedConnection/increment(_:by:)`` does, or as
    ///   ``get(_:as:logger:)`` does when no connection could be leased.
    @discardableResult
    public func increment(_ key: String, by delta: UInt64 = 1, logger: Logger? = nil) async throws -> UInt64? {
        try await call(.increment, key: key, logger: logger) { context in
            try await withConnection(context) { try $0.increment(key, by: delta) }
        }
    }

    /// Subtracts from a counter, as python-memcached's `decr`; memcached stops at 0.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - delta: The amount to subtract. The default is 1.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: The new value, or `nil` when the key is missing.
    /// - Throws: ``MemcachedError`` as ``increment(_:by:logger:)`` does.
    @discardableResult
    public func decrement(_ key: String, by delta: UInt64 = 1, logger: Logger? = nil) async throws -> UInt64? {
        try await call(.decrement, key: key, logger: logger) { context in
            try await withConnection(context) { try $0.decrement(key, by: delta) }
        }
    }

    // MARK: - Servers

    /// Invalidates every item on every server, as python-memcached's `flush_all`.
    ///
    /// - Parameters:
    ///   - delay: How long the servers wait before flushing, in whole seconds (rounded up). The
    ///     default is to flush at once.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Throws: ``MemcachedError`` as ``MemcachedConnection/flush(delay:)`` does, or as
    ///   ``get(_:as:logger:)`` does when no connection could be leased.
    public func flush(delay: Duration = .zero, logger: Logger? = nil) async throws {
        try await call(.flush, logger: logger) { context in
            try await withConnection(context) { try $0.flush(delay: delay) }
        }
    }

    /// Reads every server's statistics, as python-memcached's `get_stats`.
    ///
    /// - Parameters:
    ///   - group: A statistics group such as `"settings"` or `"items"`; `nil` for the general
    ///     statistics.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    /// - Returns: One result per server, in configuration order.
    /// - Throws: ``MemcachedError`` as ``MemcachedConnection/stats(_:)`` does, or as
    ///   ``get(_:as:logger:)`` does when no connection could be leased.
    public func stats(
        _ group: String? = nil,
        logger: Logger? = nil
    ) async throws -> [MemcachedServerResult<[String: String]>] {
        try await call(.stats, logger: logger) { context in
            try await withConnection(context) { try $0.stats(group) }
        }
    }

    /// Reads every server's version string, such as `"1.6.18"`.
    ///
    /// - Parameter logger: The logger for what the call logs; `nil` for
    ///   ``MemcachedConfiguration/logger``.
    /// - Returns: One result per server, in configuration order.
    /// - Throws: ``MemcachedError`` as ``get(_:as:logger:)`` does when no connection could be leased.
    public func versions(logger: Logger? = nil) async throws -> [MemcachedServerResult<String>] {
        try await call(.version, logger: logger) { context in
            try await withConnection(context) { try $0.versions() }
        }
    }

    /// The server a key maps to under the configured hash and distribution.
    ///
    /// - Parameter key: The key.
    /// - Returns: The server as `host:port`, `[v6]:port` or `unix:/path`.
    /// - Throws: ``MemcachedError`` for an invalid key or when no server is configured, or as
    ///   ``get(_:as:logger:)`` does when no connection could be leased.
    public func server(forKey key: String) async throws -> String {
        try await withConnection { try $0.server(forKey: key) }
    }
}
