import Logging

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

    /// ``get(_:as:)`` or ``gets(_:as:)`` with the decoding passed in: the pool's reads, whose
    /// callers' types it does not know.
    func read(_ key: String, requiresCAS: Bool, decode: ReadDecoder) throws -> (any Sendable)? {
        var value: (any Sendable)?
        try fetchOne(key, command: requiresCAS ? "gets" : "get", requiresCAS: requiresCAS) { bytes, flags, cas in
            value = try decode(bytes, flags, MemcachedCASToken(rawValue: cas), codingContext)
        }
        return value
    }

    // MARK: - gets

    /// Reads a key together with its compare-and-swap token, for a later
    /// ``cas(_:_:token:expiration:compression:)``.
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
        _ = try instrumented(requiresCAS ? .gets : .get, key: key) {
            try withKey(key) { prepared in
                try handle.withDeadline {
                    try handle.fetchOne(key: prepared, command: command, requiresCAS: requiresCAS) { item in
                        try decode(item, key: key) { bytes, flags in try hit(bytes, flags, item.cas) }
                    }
                }
            }
        }
    }

    // MARK: - getMulti

    /// Reads many keys in one round trip per server, as python-memcached's `get_multi`.
    ///
    /// Keys are sent with libmemcached's batched `memcached_mget`, so the time grows with the
    /// number of servers, not keys. One key or server failing costs only its own keys: a value that
    /// does not decode, and the keys of a server that is down, unreachable or fails mid-reply, are
    /// in the result's ``MemcachedGetMultiResult/failures``; every other key is a hit or a miss.
    ///
    /// ```swift
    /// let result = try connection.getMulti(["film:1", "film:2"], as: Film.self)
    /// let films = result.hits                  // [String: Film]
    /// ```
    ///
    /// - Parameters:
    ///   - keys: The keys. Each is checked, with the prefix, before anything is sent.
    ///   - keyPrefix: A prefix for every key on the server, as python-memcached's `key_prefix`; it
    ///     counts toward the 250-byte limit. The result uses the keys without it.
    ///   - type: The type to decode; inferred from context when omitted.
    /// - Returns: The hits and the failures, keyed by the caller's keys.
    /// - Throws: ``MemcachedError`` only for the call as a whole: an invalid key, two keys that are
    ///   equal as Swift strings but differ in bytes (``MemcachedError/Code/invalidArguments``),
    ///   or a connection that is closed or in use.
    @inlinable
    public func getMulti<Value: MemcachedValue>(
        _ keys: some Collection<String>,
        keyPrefix: String = "",
        as type: Value.Type = Value.self
    ) throws -> MemcachedGetMultiResult<Value> {
        let keys = Array(keys)
        var result = MemcachedGetMultiResult<Value>()
        result.hits.reserveCapacity(keys.count)
        result.failures = try fetchMulti(keys, keyPrefix: keyPrefix, stopOnHitError: false) { index, bytes, flags, _ in
            result.hits[keys[index]] = try Value(memcachedBytes: bytes, flags: flags, context: codingContext)
        }
        if !result.failures.isEmpty {
            for key in result.failures.keys {
                result.hits[key] = nil
            }
        }
        return result
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
    /// - Returns: The keys that could not be read, as ``MemcachedGetMultiResult/failures``
    ///   describes; a value that does not decompress is one of them.
    /// - Throws: What `body` throws, or ``MemcachedError`` as ``getMulti(_:keyPrefix:as:)`` does.
    @discardableResult
    public func getMulti(
        _ keys: some Collection<String>,
        keyPrefix: String = "",
        forEachHit body: (_ key: String, _ bytes: UnsafeRawBufferPointer, _ flags: MemcachedFlags) throws -> Void
    ) throws -> [String: MemcachedError] {
        let keys = Array(keys)
        return try fetchMulti(keys, keyPrefix: keyPrefix, stopOnHitError: true) { index, bytes, flags, _ in
            try body(keys[index], bytes, flags)
        }
    }

    /// The non-generic part of every multi-get: checks and sends the keys, matches each reply to
    /// its request and decompresses it, then calls `hit` with the key's index in `keys`, the
    /// value's bytes (valid during the call), its flags and its CAS token. Returns the keys that could not be
    /// read, with their errors; a caller that keeps hits drops those of failed keys.
    ///
    /// With `stopOnHitError`, an error `hit` throws is the call's: `hit` is not called again, the
    /// rest of the reply is still read so nothing lingers, and the error is rethrown as it was
    /// thrown, unless that read then failed, whose error is thrown instead. Without it, the error
    /// fails only that key (as ``undecodableValue`` unless it is a ``MemcachedError``). A value
    /// that does not decompress fails its key either way.
    ///
    /// A read that ends early fails every key not yet handed over with its error; a failure
    /// found after the whole reply was read (bytes after its end) fails every key, since the
    /// reply is then not trusted.
    ///
    /// Measured as one `get_multi` call unless `measured` is `false`: a coalesced batch counts
    /// each of its reads as its caller's command instead (``CommandBatch``).
    @usableFromInline
    func fetchMulti(
        _ keys: [String],
        keyPrefix: String,
        stopOnHitError: Bool,
        measured: Bool = true,
        _ hit: (_ index: Int, _ bytes: UnsafeRawBufferPointer, _ flags: MemcachedFlags, _ cas: UInt64) throws -> Void
    ) throws -> [String: MemcachedError] {
        guard measured, handle.metrics != nil || handle.traceEnabled else {
            return try fetchMultiUnmeasured(keys, keyPrefix: keyPrefix, stopOnHitError: stopOnHitError, hit)
        }
        return try instrumented(.getMulti, keys: keys.count) {
            var hits = 0
            let failures = try fetchMultiUnmeasured(keys, keyPrefix: keyPrefix, stopOnHitError: stopOnHitError) {
                try hit($0, $1, $2, $3)
                hits += 1
            }
            return MultiGetTally(keys: keys.count, hits: hits, failures: failures)
        }.failures
    }

    /// ``fetchMulti(_:keyPrefix:stopOnHitError:measured:_:)`` without measuring or logging it.
    private func fetchMultiUnmeasured(
        _ keys: [String],
        keyPrefix: String,
        stopOnHitError: Bool,
        _ hit: (_ index: Int, _ bytes: UnsafeRawBufferPointer, _ flags: MemcachedFlags, _ cas: UInt64) throws -> Void
    ) throws -> [String: MemcachedError] {
        guard !keys.isEmpty else { return [:] }
        let prefix = try KeyPrefix(keyPrefix)
        var batch = try KeyBatch(keys: keys, prefix: prefix)
        var failures: [String: MemcachedError] = [:]
        // Keys handed to `hit` or failed so far; the rest fail with a failure that ends the read.
        var settled = [Bool](repeating: false, count: keys.count)
        var readToTheEnd = false
        var hitError: (any Error)?
        // The keys' places in `batch`, when the keys of servers that are down were left out.
        var positions: [Int]?
        do {
            try handle.withDeadline {
                // The keys of servers that are down (ServerHealth) fail at once, not after a timeout.
                if let health = handle.health, _slowPath(!health.allHealthy) {
                    let down = handle.serversToLeaveOut(health)
                    if !down.isEmpty {
                        var kept: [Int] = []
                        for index in keys.indices {
                            if let server = batch.withKey(at: index, { handle.server(ofKey: $0, amongst: down) }) {
                                failures[keys[index]] = handle.serverDownError(server, key: keys[index], health)
                                settled[index] = true
                            } else {
                                kept.append(index)
                            }
                        }
                        if kept.count < keys.count {
                            if handle.traceEnabled {
                                handle.logger.trace(
                                    "memcached get_multi: keys of servers that are down left out",
                                    metadata: ["keys": "\(keys.count - kept.count)"]
                                )
                            }
                            guard !kept.isEmpty else { return }
                            positions = kept
                            batch = try KeyBatch(keys: kept.map { keys[$0] }, prefix: prefix)
                        }
                    }
                }
                let failedServers = try handle.fetchMany(&batch, command: "get_multi") { asked, item in
                    let index = positions?[asked] ?? asked
                    settled[index] = true
                    do {
                        try decode(item, key: keys[index]) { bytes, flags in
                            do {
                                try hit(index, bytes, flags, item.cas)
                            } catch  where stopOnHitError {
                                hitError = error
                                throw error
                            }
                        }
                    } catch let error as MemcachedError where hitError == nil {
                        failures[keys[index]] = error
                    }
                }
                if !failedServers.isEmpty {
                    failKeys(of: failedServers, keys, batch, positions, &settled, &failures)
                }
                readToTheEnd = true
            }
        } catch let stopped as Handle.HandOverFailed {
            throw hitError ?? stopped.error
        } catch {
            // Taken on every path, so that it never reaches the next read.
            let answered = handle.takeAnsweredServers()
            // After the caller's error, the read's own failure is the call's: what was handed over
            // may be all the caller learns, and the rest of the reply could not be read.
            guard hitError == nil, let error = error as? MemcachedError, !error.code.failsTheWholeCall else {
                throw error
            }
            // Stopped by the cancellation of its task (through a client): not a result to return.
            if handle.deadline.isCancelled {
                throw CancellationError()
            }
            // Stopped by its deadline: the keys of servers that had answered in full were
            // answered (a hit was handed over), so they are misses; every other key fails.
            let answeredInFull = readToTheEnd ? nil : answered
            let places = answeredInFull.map { _ in Self.places(of: positions, count: keys.count) }
            for index in keys.indices where readToTheEnd || !settled[index] {
                if let answeredInFull, let place = places?[index],
                    batch.withKey(at: place, { handle.server(ofKey: $0, amongst: answeredInFull) }) != nil
                {
                    continue
                }
                var failure = error
                failure.key = keys[index]
                failures[keys[index]] = failure
            }
        }
        return failures
    }

    /// Each key's place in the batch sent, by the key's index: `positions` lists the keys sent
    /// by their index, when some were left out.
    private static func places(of positions: [Int]?, count: Int) -> [Int?] {
        guard let positions else { return Array(0..<count) }
        var places = [Int?](repeating: nil, count: count)
        for (place, index) in positions.enumerated() {
            places[index] = place
        }
        return places
    }

    /// Fails the unanswered keys of servers the request never reached or that hung up mid-reply.
    private func failKeys(
        of failedServers: Set<String>,
        _ keys: [String],
        _ batch: KeyBatch,
        _ positions: [Int]?,
        _ settled: inout [Bool],
        _ failures: inout [String: MemcachedError]
    ) {
        for asked in 0..<batch.count {
            let index = positions?[asked] ?? asked
            guard !settled[index],
                let server = batch.withKey(at: asked, { handle.server(ofKey: $0, amongst: failedServers) })
            else { continue }
            settled[index] = true
            failures[keys[index]] = MemcachedError(
                code: .connectionFailure,
                message: "the server could not be reached, or hung up before its reply was complete; "
                    + "the key was not read",
                key: keys[index],
                server: server
            )
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
