extension MemcachedConnection {
    // MARK: - set / add / replace / cas

    /// Stores a value whatever the key holds, as python-memcached's `set`.
    ///
    /// - Parameters:
    ///   - key: The key: 1 to 250 bytes of UTF-8 without spaces or control characters.
    ///   - value: The value, stored with python-memcached's flags for its type.
    ///   - expiration: When the item expires. The default is ``MemcachedExpiration/never``.
    ///   - compression: Whether to compress the value, python-memcached's `min_compress_len`. The
    ///     default follows ``MemcachedConfiguration/compressionThreshold``.
    ///   - noReply: Whether to send the command without waiting for its reply, python-memcached's
    ///     `noreply`. With ``MemcachedConfiguration/noReply`` on, every such call skips its reply
    ///     whatever this says. The binary protocol always waits.
    /// - Returns: `true` when stored; `false` when the server declined (rare for `set`).
    ///   Without waiting for the reply, always `true`.
    /// - Throws: ``MemcachedError``: an invalid key or a value over
    ///   ``MemcachedConfiguration/maximumValueLength`` (both before anything is sent), or a server
    ///   failure. The corresponding C function is `memcached_set`.
    @discardableResult
    public func set<Value: MemcachedValue>(
        _ key: String,
        _ value: Value,
        expiration: MemcachedExpiration = .never,
        compression: MemcachedCompression = .configured,
        noReply: Bool = false
    ) throws -> Bool {
        try store(.set, key, value, expiration, compression: compression, noReply: skipsReply(noReply))
    }

    /// Stores a value only if the key is missing, as python-memcached's `add`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The value.
    ///   - expiration: When the item expires. The default is ``MemcachedExpiration/never``.
    ///   - compression: Whether to compress the value, python-memcached's `min_compress_len`. The
    ///     default follows ``MemcachedConfiguration/compressionThreshold``.
    /// - Returns: `true` when stored, `false` when the key already held a value.
    /// - Throws: ``MemcachedError`` as ``set(_:_:expiration:compression:noReply:)`` does.
    ///   The corresponding C function is `memcached_add`.
    @discardableResult
    public func add<Value: MemcachedValue>(
        _ key: String,
        _ value: Value,
        expiration: MemcachedExpiration = .never,
        compression: MemcachedCompression = .configured
    ) throws -> Bool {
        try store(.add, key, value, expiration, compression: compression)
    }

    /// Stores a value only if the key already holds one, as python-memcached's `replace`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The value.
    ///   - expiration: When the item expires. The default is ``MemcachedExpiration/never``.
    ///   - compression: Whether to compress the value, python-memcached's `min_compress_len`. The
    ///     default follows ``MemcachedConfiguration/compressionThreshold``.
    /// - Returns: `true` when stored, `false` when the key was missing.
    /// - Throws: ``MemcachedError`` as ``set(_:_:expiration:compression:noReply:)`` does.
    ///   The corresponding C function is `memcached_replace`.
    @discardableResult
    public func replace<Value: MemcachedValue>(
        _ key: String,
        _ value: Value,
        expiration: MemcachedExpiration = .never,
        compression: MemcachedCompression = .configured
    ) throws -> Bool {
        try store(.replace, key, value, expiration, compression: compression)
    }

    /// Stores a value only if nobody changed the item since ``gets(_:as:)`` returned `token`.
    ///
    /// Unlike python-memcached's `cas` without `cache_cas`, this never degrades to a plain set:
    /// the token is explicit.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The new value.
    ///   - token: The token ``gets(_:as:)`` returned with the value being replaced.
    ///   - expiration: When the item expires. The default is ``MemcachedExpiration/never``.
    ///   - compression: Whether to compress the value, python-memcached's `min_compress_len`. The
    ///     default follows ``MemcachedConfiguration/compressionThreshold``.
    /// - Returns: `true` when stored; `false` when the item changed or disappeared since.
    /// - Throws: ``MemcachedError`` as ``set(_:_:expiration:compression:noReply:)`` does.
    ///   The corresponding C function is `memcached_cas`.
    @discardableResult
    public func cas<Value: MemcachedValue>(
        _ key: String,
        _ value: Value,
        token: MemcachedCASToken,
        expiration: MemcachedExpiration = .never,
        compression: MemcachedCompression = .configured
    ) throws -> Bool {
        try store(.cas(token.rawValue), key, value, expiration, compression: compression)
    }

    // MARK: - append / prepend

    /// Adds bytes after an existing value, as python-memcached's `append`.
    ///
    /// The server keeps the item's flags and expiration, so append text to text and bytes to bytes;
    /// appending `"5"` to the integer `10` reads back as `105`. The appended bytes are never
    /// compressed.
    ///
    /// A compressed value (stored past ``MemcachedConfiguration/compressionThreshold``, here or by
    /// python-memcached) cannot take more bytes: they would land outside its compressed data. So
    /// the value's flags are read first, in the same deadline, and a compressed value throws
    /// ``MemcachedError/Code/compressedValue`` with nothing written. That read costs a round trip
    /// and returns the whole value. A writer that compresses the key between the read and the
    /// append is not caught here; the next read of the key then throws
    /// ``MemcachedError/Code/decompressionFailed`` rather than return a truncated value.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The bytes to add, encoded as their type's stored form.
    /// - Returns: `true` when appended, `false` when the key was missing.
    /// - Throws: ``MemcachedError`` as ``set(_:_:expiration:compression:noReply:)`` does, and
    ///   ``MemcachedError/Code/compressedValue`` for a compressed value.
    ///   The corresponding C functions are `memcached_mget` (the flags) and `memcached_append`.
    @discardableResult
    public func append<Value: MemcachedValue>(_ key: String, _ value: Value) throws -> Bool {
        try store(.append, key, value, .never, compression: .never)
    }

    /// Adds bytes before an existing value, as python-memcached's `prepend`.
    ///
    /// The same rules as ``append(_:_:)`` apply.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The bytes to add.
    /// - Returns: `true` when prepended, `false` when the key was missing.
    /// - Throws: ``MemcachedError`` as ``append(_:_:)`` does.
    ///   The corresponding C functions are `memcached_mget` (the flags) and `memcached_prepend`.
    @discardableResult
    public func prepend<Value: MemcachedValue>(_ key: String, _ value: Value) throws -> Bool {
        try store(.prepend, key, value, .never, compression: .never)
    }

    /// Whether a write skips its reply: when the call or the configuration asks, and never over
    /// the binary protocol, whose quiet commands still answer errors that a later command would
    /// read. A call cannot opt out of the configuration's choice: that connection buffers its
    /// writes (`MEMCACHED_BEHAVIOR_BUFFER_REQUESTS`, which libmemcached cannot turn off without
    /// closing every socket), and a buffered write whose reply was asked for would leave that
    /// reply for the next command to read.
    func skipsReply(_ choice: Bool) -> Bool {
        handle.noReply || (choice && configuration.wireProtocol == .ascii)
    }

    private func store<Value: MemcachedValue>(
        _ operation: StoreOperation,
        _ key: String,
        _ value: Value,
        _ expiration: MemcachedExpiration,
        compression: MemcachedCompression,
        noReply: Bool = false
    ) throws -> Bool {
        try instrumented(operation.command, key: key) {
            try withKey(key) { prepared in
                let payload = try payload(key: key, compression: compression) {
                    try value.memcachedPayload(context: codingContext)
                }
                return try handle.withDeadline {
                    if operation.extendsStoredValue {
                        guard try storedValueCanBeExtended(prepared, key: key, operation: operation) else {
                            return false
                        }
                    }
                    let stored = try payload.bytes.withUnsafeBytes { bytes in
                        try handle.store(
                            operation,
                            key: prepared,
                            value: bytes,
                            flags: payload.flags.rawValue,
                            expiration: try expiration.wireValue(),
                            noReply: noReply
                        )
                    }
                    if noReply {
                        try handle.flushWrites()
                    }
                    return stored
                }
            }
        }
    }

    /// Whether `append`/`prepend` may add bytes to the key's value: `false` for a miss (nothing to
    /// extend), a throw for a compressed value.
    private func storedValueCanBeExtended(
        _ prepared: PreparedKey,
        key: String,
        operation: StoreOperation
    ) throws -> Bool {
        let flags = try handle.fetchOne(key: prepared, command: "get") { MemcachedFlags(rawValue: $0.flags) }
        guard let flags else { return false }
        guard !flags.contains(.compressed) else {
            throw MemcachedError(
                code: .compressedValue,
                message:
                    "the stored value is compressed; \(operation.name) would put bytes outside its compressed data",
                key: key
            )
        }
        return true
    }

    // MARK: - setMulti

    /// Stores many values, as python-memcached's `set_multi`, and reports each key's outcome.
    ///
    /// Every key and value is checked and encoded before anything is sent, so an invalid key or an
    /// oversized value throws and stores nothing. After that, each item is stored on its server
    /// under one deadline; a server failure for one key does not stop the others.
    ///
    /// - Parameters:
    ///   - items: The keys and values.
    ///   - expiration: When the items expire. The default is ``MemcachedExpiration/never``.
    ///   - keyPrefix: A prefix for every key on the server, as python-memcached's `key_prefix`; it
    ///     counts toward the 250-byte limit.
    ///   - compression: Whether to compress each value, python-memcached's `min_compress_len`. The
    ///     default follows ``MemcachedConfiguration/compressionThreshold``.
    ///   - noReply: Whether to send the commands without waiting for their replies. With
    ///     ``MemcachedConfiguration/noReply`` on, they always skip them. The binary protocol always waits.
    /// - Returns: For each caller's key (without the prefix): ``MemcachedKeyOutcome/applied`` when
    ///   stored, ``MemcachedKeyOutcome/declined`` when the server did not store it, and
    ///   ``MemcachedKeyOutcome/failed(_:)`` when its server failed or was down, or the deadline
    ///   passed before its turn. Without waiting for replies, sent keys are applied.
    /// - Throws: ``MemcachedError`` for an invalid key or value, before anything is sent.
    @discardableResult
    public func setMulti<Value: MemcachedValue>(
        _ items: [String: Value],
        expiration: MemcachedExpiration = .never,
        keyPrefix: String = "",
        compression: MemcachedCompression = .configured,
        noReply: Bool = false
    ) throws -> [String: MemcachedKeyOutcome] {
        try instrumented(.setMulti, keys: items.count) {
            try storeEach(
                items,
                expiration: expiration,
                keyPrefix: keyPrefix,
                compression: compression,
                noReply: noReply
            )
        }
    }

    /// ``setMulti(_:expiration:keyPrefix:compression:noReply:)``, unmeasured.
    private func storeEach<Value: MemcachedValue>(
        _ items: [String: Value],
        expiration: MemcachedExpiration,
        keyPrefix: String,
        compression: MemcachedCompression,
        noReply: Bool
    ) throws -> [String: MemcachedKeyOutcome] {
        guard !items.isEmpty else { return [:] }
        let prefix = try KeyPrefix(keyPrefix)
        var keys: [String] = []
        var payloads: [MemcachedPayload] = []
        keys.reserveCapacity(items.count)
        payloads.reserveCapacity(items.count)
        for (key, value) in items {
            keys.append(key)
            payloads.append(
                try payload(key: key, compression: compression) { try value.memcachedPayload(context: codingContext) }
            )
        }
        let batch = try KeyBatch(keys: keys, prefix: prefix)
        let wireExpiration = try expiration.wireValue()
        let noReply = skipsReply(noReply)
        return try handle.withDeadline {
            try eachKey(keys, batch) { key in
                try payloads[key.index].bytes.withUnsafeBytes { bytes in
                    try handle.store(
                        .set,
                        key: key.prepared,
                        value: bytes,
                        flags: payloads[key.index].flags.rawValue,
                        expiration: wireExpiration,
                        noReply: noReply
                    )
                }
            }
        }
    }

    /// Runs one single-key command per key under the call's deadline and collects the outcomes:
    /// the one loop of every multi-key write and delete (``sendEach(_:stopsOn:_:)``), with each key's
    /// failure reported as its outcome and a failure about the call as a whole thrown.
    func eachKey(
        _ keys: [String],
        _ batch: KeyBatch,
        _ command: (_ key: (index: Int, prepared: PreparedKey)) throws -> Bool
    ) throws -> [String: MemcachedKeyOutcome] {
        // A failure about the call as a whole ends it, as it would before anything was sent.
        let endsTheCall: (any Error) -> Bool = { error in
            (error as? MemcachedError).map(\.code.failsTheWholeCall) ?? true
        }
        let results = try sendEach(keys.count, stopsOn: endsTheCall) { index in
            try batch.withKey(at: index) { keyBytes in
                try command((index, PreparedKey(bytes: keyBytes, key: keys[index])))
            }
        }
        var outcomes: [String: MemcachedKeyOutcome] = [:]
        outcomes.reserveCapacity(keys.count)
        for (key, result) in zip(keys, results) {
            switch result {
            case .success(let applied):
                outcomes[key] = applied ? .applied : .declined
            case .failure(let error as MemcachedError) where !error.code.failsTheWholeCall:
                outcomes[key] = .failed(error.with(key: key))
            case .failure(let error):
                throw error
            }
        }
        return outcomes
    }

    /// Runs `count` writes in a row under the current call's deadline, with the flush of
    /// fire-and-forget ones held back, then flushes them once: one flush for all.
    ///
    /// A write whose command returned is not yet known to have arrived when it skipped its reply
    /// under ``MemcachedConfiguration/noReply``: its bytes wait in a buffer. They are lost when the
    /// flush fails, when a later write breaks its server's socket (libmemcached closes it and
    /// drops its buffer), and may be when a later command resets the connections (a timeout or a
    /// protocol failure resets them all; the reset sends what is buffered only as far as each
    /// socket still works, and the watchdog shuts them all down at the deadline). Such writes
    /// fail, so a write is never reported done when that is not known.
    ///
    /// - Parameters:
    ///   - write: Sends the write at an index; returns its outcome (`true` applied).
    ///   - stopsOn: Whether a write's error ends the call: nothing more is sent or flushed, and
    ///     the results end with that write's.
    /// - Returns: By index: what the write returned; its own error; the deadline's, when it
    ///   passed before the write was sent (nothing more is sent then); or the failure that leaves
    ///   it unknown whether the write arrived.
    /// - Throws: `CancellationError` when the call's task was cancelled (through a client).
    func sendEach(
        _ count: Int,
        stopsOn: (any Error) -> Bool = { _ in false },
        _ write: (Int) throws -> Bool
    ) throws -> [Result<Bool, any Error>] {
        var results: [Result<Bool, any Error>] = []
        results.reserveCapacity(count)
        // Writes before this index were buffered when a command reset every connection.
        var bufferedBeforeReset = 0
        var reset: MemcachedError?
        handle.holdsWriteFlush = true
        defer { handle.holdsWriteFlush = false }
        for index in 0..<count {
            if handle.isPastDeadline {
                if handle.deadline.isCancelled {
                    throw CancellationError()
                }
                results.append(.failure(handle.deadlineError()))
                continue
            }
            let mark = stepMark
            let result = Result { try write(index) }
            results.append(result)
            guard case .failure(let error) = result else { continue }
            if stopsOn(error) {
                return results
            }
            // Only a failure libmemcached reported can have broken a socket; the library's own
            // checks (a key, a value) fail before libmemcached runs, with its last error stale.
            let fromLibmemcached = (error as? MemcachedError)?.code.isLibmemcachedCode == true
            if stepMark != mark || (fromLibmemcached && handle.lastFailureBrokeASocket) {
                bufferedBeforeReset = index
                reset = error as? MemcachedError
            }
        }
        handle.holdsWriteFlush = false
        var lost: MemcachedError?
        do {
            try handle.flushWrites()
        } catch let error as MemcachedError {
            lost = error
        }
        // Stopped by the cancellation of its task (through a client): not a result to return.
        if handle.deadline.isCancelled {
            throw CancellationError()
        }
        for index in results.indices {
            guard case .success = results[index] else { continue }
            if let lost {
                results[index] = .failure(lost)
            } else if handle.noReply, index < bufferedBeforeReset {
                // Which server it went to is not looked up: the failure is named, with its server.
                results[index] = .failure(
                    MemcachedError(
                        code: reset?.code ?? .writeFailure,
                        message:
                            "not known to have reached the server: a later write in the same call broke a connection while it waited to be flushed"
                            + (reset.map { " (\($0.message)\($0.server.map { ", server \($0)" } ?? ""))" } ?? "")
                    )
                )
            }
        }
        return results
    }
}
