public import Logging
import Synchronization

extension MemcachedClient {
    /// Reads a key, or, on a miss, loads its value, stores it and returns it: the seed's whole
    /// cache-aside example in one call, with protection against stampedes.
    ///
    /// ```swift
    /// let films = try await client.get("top5films", as: [Film].self, orSet: .seconds(60)) {
    ///     try await loadTopFilmsFromDatabase()
    /// }
    /// ```
    ///
    /// When many callers miss the same key at once, one of them loads and the others wait for its
    /// value, instead of all of them querying the database:
    /// - Tasks of this client that miss the key while it is being loaded wait for that load and
    ///   get its value, or its error. A load that was cancelled is not shared: one of them loads.
    /// - Other processes (and other clients) are held off with a lock in memcached itself: the
    ///   caller that loads first adds a lock key (`add`, so only one can), with an expiration of
    ///   `loadTimeout`; the others poll the key until the value appears or the lock goes away.
    ///   The loader deletes the lock once it has stored the value, or when its load failed.
    /// - Nobody waits for ever: after `loadTimeout` a waiting caller loads for itself.
    ///
    /// The cache never makes the call fail: a read that fails is a miss, a store that fails is
    /// logged (to `logger`, warning level) and the loaded value still returned; a stored value
    /// that does not decode as `type` is replaced.
    ///
    /// In the metrics (``MemcachedMetrics``) the call is its first `get`, and, when it loads, its
    /// `set`: the lock's commands and the read taken again under the lock are the library's own
    /// and are not counted.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - type: The type to read and store; inferred from context when omitted.
    ///   - expiration: When a loaded value expires.
    ///   - loadTimeout: How long a caller waits for another's load before loading itself, and the
    ///     lifetime of the lock key (rounded up to whole seconds). The default is 10 seconds.
    ///   - logger: The logger for what the call logs, such as a request's logger with its
    ///     metadata; `nil` for ``MemcachedConfiguration/logger``.
    ///   - load: Loads the value on a miss. It runs on the calling task, at most once per call.
    /// - Returns: The cached or loaded value.
    /// - Throws: What `load` throws (here or in the task of this client that loaded for this
    ///   caller), `CancellationError`, or ``MemcachedError/Code/poolClosed`` once the client is
    ///   closed.
    public func get<Value: MemcachedValue & Sendable>(
        _ key: String,
        as type: Value.Type = Value.self,
        orSet expiration: MemcachedExpiration,
        loadTimeout: Duration = .seconds(10),
        logger: Logger? = nil,
        load: () async throws -> Value
    ) async throws -> Value {
        try await cacheAside(
            key,
            as: type,
            expiration: expiration,
            loadTimeout: loadTimeout,
            logger: logger,
            load: load
        ).value
    }

    /// ``get(_:as:orSet:loadTimeout:logger:load:)``, reporting where the value came from and what the
    /// cache said on the way: for a program that tells its users whether memcached answered
    /// (the FilmCache example prints "Loaded data from memcached" or "memcached was not updated").
    ///
    /// ```swift
    /// let result = try await client.cacheAside("top5films", as: [Film].self, expiration: .seconds(60)) {
    ///     try await loadTopFilmsFromDatabase()
    /// }
    /// if case .failed(let error) = result.store {
    ///     logger.warning("films not cached", metadata: ["error": "\(error)"])
    /// }
    /// ```
    ///
    /// - Parameters: As ``get(_:as:orSet:loadTimeout:logger:load:)``; `expiration` is its `orSet`.
    /// - Returns: The value, its source, the error of a read taken for a miss, and the outcome of
    ///   the store when this call loaded.
    /// - Throws: As ``get(_:as:orSet:loadTimeout:logger:load:)``.
    public func cacheAside<Value: MemcachedValue & Sendable>(
        _ key: String,
        as type: Value.Type = Value.self,
        expiration: MemcachedExpiration,
        loadTimeout: Duration = .seconds(10),
        logger: Logger? = nil,
        load: () async throws -> Value
    ) async throws -> MemcachedCacheAsideResult<Value> {
        var readError: MemcachedError?
        func result(
            _ value: Value,
            _ source: MemcachedCacheAsideResult<Value>.Source
        ) -> MemcachedCacheAsideResult<Value> {
            MemcachedCacheAsideResult(value: value, source: source, readError: readError, store: nil)
        }
        if let cached = try await cachedValue(key, as: type, logger: logger, measured: true, readError: &readError) {
            return result(cached, .cache)
        }
        var role = loadFlights.join(key)
        while true {
            switch role {
            case .follower(let flight):
                switch await flight.outcome(waitingAtMost: loadTimeout) {
                case .value(let value as Value):
                    return result(value, .loadedByAnotherTask)
                case .failure(let error):
                    throw error
                case .value, .abandoned:
                    // Another type under the same key, or a load given up by its cancelled task.
                    try Task.checkCancellation()
                    if let cached = try await cachedValue(
                        key,
                        as: type,
                        logger: logger,
                        measured: false,
                        readError: &readError
                    ) {
                        return result(cached, .cache)
                    }
                    role = loadFlights.join(key)
                case .timedOut:
                    // The load outlived loadTimeout: one of its waiters loads instead, for all.
                    try Task.checkCancellation()
                    if let cached = try await cachedValue(
                        key,
                        as: type,
                        logger: logger,
                        measured: false,
                        readError: &readError
                    ) {
                        return result(cached, .cache)
                    }
                    switch loadFlights.takeOver(key, from: flight) {
                    case .leader(let replacement):
                        var loaded = try await lead(replacement, key) {
                            try await loadAndStore(key, expiration: expiration, logger: logger, load: load, loaded: $0)
                        }
                        loaded.readError = readError
                        return loaded
                    case let other:
                        role = other
                    }
                }
            case .leader(let flight):
                var loaded = try await lead(flight, key) { loaded in
                    try await loadHoldingTheLock(
                        key,
                        as: type,
                        expiration,
                        loadTimeout,
                        logger,
                        load,
                        readError: &readError,
                        loaded: loaded
                    )
                }
                loaded.readError = readError
                return loaded
            }
        }
    }

    /// Runs a leader's load and ends its flight: with the value as soon as it is loaded (its
    /// store and the lock's release come after), with the error, or abandoned when the leader's
    /// task was cancelled, so that a waiter loads instead.
    private func lead<Value: MemcachedValue & Sendable>(
        _ flight: LoadFlights.Flight,
        _ key: String,
        _ run: (_ loaded: (Value) -> Void) async throws -> MemcachedCacheAsideResult<Value>
    ) async throws -> MemcachedCacheAsideResult<Value> {
        do {
            let result = try await run { loadFlights.finish(key, flight, with: .value($0)) }
            loadFlights.finish(key, flight, with: .value(result.value))
            return result
        } catch {
            loadFlights.finish(key, flight, with: Task.isCancelled ? .abandoned : .failure(error))
            throw error
        }
    }

    /// A hit, or `nil` for a miss, an undecodable value, or a read that failed (its error kept in
    /// `readError` and logged).
    ///
    /// The first read of a lookup is the caller's `get` (`measured`); later ones are the
    /// library's own.
    private func cachedValue<Value: MemcachedValue & Sendable>(
        _ key: String,
        as type: Value.Type,
        logger: Logger?,
        measured: Bool,
        readError: inout MemcachedError?
    ) async throws -> Value? {
        do {
            if measured {
                return try await get(key, as: type, logger: logger)
            }
            return try await get(key, as: type, context: .unmeasured(logger: logger))
        } catch let error as MemcachedError where error.code != .poolClosed && !error.code.failsTheWholeCall {
            (logger ?? configuration.logger).debug(
                "memcached cache-aside read failed; loading instead",
                metadata: ["code": "\(error.code)"]
            )
            readError = error
            return nil
        }
    }

    /// The leader's part: takes the lock in memcached, or waits for the process that holds it;
    /// then loads and stores, and releases the lock.
    private func loadHoldingTheLock<Value: MemcachedValue & Sendable>(
        _ key: String,
        as type: Value.Type,
        _ expiration: MemcachedExpiration,
        _ loadTimeout: Duration,
        _ logger: Logger?,
        _ load: () async throws -> Value,
        readError: inout MemcachedError?,
        loaded: (Value) -> Void
    ) async throws -> MemcachedCacheAsideResult<Value> {
        let lock = CacheAsideLock(key: key, lifetime: loadTimeout, logger: logger)
        let clock = ContinuousClock()
        let deadline = clock.now + loadTimeout
        var pause = Duration.milliseconds(5)
        while !(try await lock.acquire(with: self)) {
            // Another process loads: its value, or the end of its lock, is what to wait for.
            guard clock.now < deadline else {
                return try await loadAndStore(key, expiration: expiration, logger: logger, load: load, loaded: loaded)
            }
            try await Task.sleep(for: pause)
            pause = min(pause * 2, .milliseconds(100))
            if let cached = try await cachedValue(key, as: type, logger: logger, measured: false, readError: &readError)
            {
                return MemcachedCacheAsideResult(value: cached, source: .loadedByAnotherProcess)
            }
        }
        do {
            // The value may have been stored between the miss and the lock.
            let result: MemcachedCacheAsideResult<Value>
            if let cached = try await cachedValue(key, as: type, logger: logger, measured: false, readError: &readError)
            {
                result = MemcachedCacheAsideResult(value: cached, source: .loadedByAnotherProcess)
            } else {
                result = try await loadAndStore(key, expiration: expiration, logger: logger, load: load, loaded: loaded)
            }
            await lock.release(with: self)
            return result
        } catch {
            await lock.release(with: self)
            throw error
        }
    }

    /// Loads, hands the value to `loaded`, and stores it: a store that fails (any error,
    /// cancellation included, since the value is already loaded) is reported and logged, not
    /// thrown.
    private func loadAndStore<Value: MemcachedValue & Sendable>(
        _ key: String,
        expiration: MemcachedExpiration,
        logger: Logger?,
        load: () async throws -> Value,
        loaded: (Value) -> Void
    ) async throws -> MemcachedCacheAsideResult<Value> {
        let value = try await load()
        loaded(value)
        let store: MemcachedKeyOutcome
        do {
            store = try await set(key, value, expiration: expiration, logger: logger) ? .applied : .declined
        } catch {
            // Only cancellation throws something else here (encoders' errors arrive as
            // `unencodableValue`); it is reported as the library's own calls report a call
            // stopped by cancellation, with `timeout`.
            store = .failed(
                error as? MemcachedError
                    ?? MemcachedError(code: .timeout, message: "the call was cancelled before the store", key: key)
            )
        }
        if store != .applied {
            (logger ?? configuration.logger).warning(
                "memcached cache-aside: the loaded value was not stored",
                metadata: ["outcome": "\(store)"]
            )
        }
        return MemcachedCacheAsideResult(value: value, source: .loaded, store: store)
    }
}

/// What a cache-aside call did (``MemcachedClient/cacheAside(_:as:expiration:loadTimeout:logger:load:)``):
/// where its value came from, and what memcached said on the way.
public struct MemcachedCacheAsideResult<Value: Sendable>: Sendable {
    /// Where a cache-aside value came from.
    public enum Source: Sendable, Hashable {
        /// memcached held it.
        case cache
        /// This call ran the load.
        case loaded
        /// Another task of the same client got it while this call waited for that task: loaded
        /// it, or found it stored by another process.
        case loadedByAnotherTask
        /// Somebody else (another process or client, most likely holding the lock in memcached)
        /// stored it after this call's first read missed: found while waiting for the lock, or
        /// right after taking it.
        case loadedByAnotherProcess
    }

    /// The cached or loaded value.
    public var value: Value
    /// Where ``value`` came from.
    public var source: Source
    /// The error of a read of the key that failed and was taken for a miss; `nil` when every
    /// read answered (a hit or a plain miss).
    public var readError: MemcachedError?
    /// When this call ran the load (``Source/loaded``): whether memcached stored the value
    /// (`.applied`), declined it (`.declined`), or the store failed. `nil` otherwise.
    public var store: MemcachedKeyOutcome?

    /// Creates a result; the library returns them, tests may build them.
    public init(value: Value, source: Source, readError: MemcachedError? = nil, store: MemcachedKeyOutcome? = nil) {
        self.value = value
        self.source = source
        self.readError = readError
        self.store = store
    }
}

/// The lock key one cache-aside load holds in memcached, so that other processes wait for it.
struct CacheAsideLock: Sendable {
    /// The lock's key: the key with a suffix, or, when that would be too long, a hash of the key.
    let key: String
    /// What this holder stores under the lock key, so that it releases only its own lock.
    let token: String
    /// The lock's expiration: a holder that dies releases it this late.
    let lifetime: MemcachedExpiration
    /// The lock's commands: the library's own, logged to the caller's logger and not counted.
    let context: CallContext

    init(key: String, lifetime: Duration, logger: Logger?) {
        context = .unmeasured(logger: logger)
        let suffixed = key + ".cache-aside-lock"
        if suffixed.utf8.count <= maximumKeyLength {
            self.key = suffixed
        } else {
            // FNV-1a over the key's bytes: another long key with the same hash only shares a lock.
            var hash: UInt64 = 0xcbf2_9ce4_8422_2325
            for byte in key.utf8 {
                hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3
            }
            self.key = "cache-aside-lock:" + String(hash, radix: 16)
        }
        token = "\(UInt64.random(in: 1...UInt64.max))"
        let seconds = max(1, Int(lifetime.components.seconds) + (lifetime.components.attoseconds > 0 ? 1 : 0))
        self.lifetime = .seconds(seconds)
    }

    /// Takes the lock; `true` also when memcached cannot be asked (loading beats waiting for a
    /// cache that does not answer).
    func acquire(with client: MemcachedClient) async throws -> Bool {
        do {
            return try await client.add(key, token, expiration: lifetime, compression: .never, context: context)
        } catch let error as MemcachedError where error.code != .poolClosed {
            return true
        }
    }

    /// Deletes the lock if it is still this holder's, before returning, so that the next caller
    /// finds it gone; for a cancelled caller (whose commands would throw at once), in a task of
    /// its own.
    func release(with client: MemcachedClient) async {
        guard !Task.isCancelled else {
            Task { await release(with: client) }
            return
        }
        guard (try? await client.get(key, as: String.self, context: context)) == token else { return }
        let key = key
        _ = try? await client.withConnection(context) { try $0.delete(key) }
    }
}

/// The cache-aside loads in progress in one client, by key: a task that misses a key while
/// another loads it waits for that load.
final class LoadFlights: Sendable {
    /// What a waiting task learns.
    enum Outcome: Sendable {
        case value(any Sendable)
        case failure(any Error)
        /// The leader's task was cancelled: nobody loaded.
        case abandoned
        /// The wait reached its limit.
        case timedOut
    }

    /// A task's part in a key's load.
    enum Role {
        case leader(Flight)
        case follower(Flight)
    }

    /// One load and the tasks waiting for it.
    final class Flight: Sendable {
        private struct Waiting {
            var continuations: [UInt64: CheckedContinuation<Outcome, Never>] = [:]
            var timers: [UInt64: Task<Void, Never>] = [:]
            /// Waiters whose task was cancelled before their continuation was stored.
            var cancelledEarly: Set<UInt64> = []
            var nextWaiter: UInt64 = 0
        }

        private enum State {
            case running(Waiting)
            case finished(Outcome)
        }

        private let state = Mutex(State.running(Waiting()))

        /// Tasks waiting for this load now.
        var waitingTasks: Int {
            state.withLock { state in
                if case .running(let waiting) = state { waiting.continuations.count } else { 0 }
            }
        }

        /// Waits for the load, at most `limit`; a cancelled waiter stops waiting at once.
        func outcome(waitingAtMost limit: Duration) async -> Outcome {
            let id: UInt64? = state.withLock { state in
                guard case .running(var waiting) = state else { return nil }
                defer { state = .running(waiting) }
                waiting.nextWaiter += 1
                return waiting.nextWaiter
            }
            guard let id else {
                return state.withLock { state in
                    if case .finished(let outcome) = state { outcome } else { .abandoned }
                }
            }
            return await withTaskCancellationHandler {
                await withCheckedContinuation { continuation in
                    let immediate: Outcome? = state.withLock { state in
                        switch state {
                        case .finished(let outcome):
                            return outcome
                        case .running(var waiting):
                            if waiting.cancelledEarly.remove(id) != nil {
                                state = .running(waiting)
                                return .failure(CancellationError())
                            }
                            waiting.continuations[id] = continuation
                            waiting.timers[id] = Task { [self] in
                                try? await Task.sleep(for: limit)
                                if !Task.isCancelled {
                                    resume(id, with: .timedOut)
                                }
                            }
                            state = .running(waiting)
                            return nil
                        }
                    }
                    if let immediate {
                        continuation.resume(returning: immediate)
                    }
                }
            } onCancel: {
                let resumed = state.withLock { state -> Bool in
                    guard case .running(var waiting) = state else { return true }
                    defer { state = .running(waiting) }
                    if waiting.continuations[id] != nil { return false }
                    waiting.cancelledEarly.insert(id)
                    return true
                }
                if !resumed {
                    resume(id, with: .failure(CancellationError()))
                }
            }
        }

        /// Resumes one waiter, if it still waits, and stops its timer.
        private func resume(_ id: UInt64, with outcome: Outcome) {
            let (continuation, timer): (CheckedContinuation<Outcome, Never>?, Task<Void, Never>?) = state.withLock {
                state in
                guard case .running(var waiting) = state else { return (nil, nil) }
                defer { state = .running(waiting) }
                return (waiting.continuations.removeValue(forKey: id), waiting.timers.removeValue(forKey: id))
            }
            timer?.cancel()
            continuation?.resume(returning: outcome)
        }

        /// Ends the load and resumes every waiter with its outcome. Only the first call counts.
        func finish(_ outcome: Outcome) {
            let waiting: Waiting? = state.withLock { state in
                guard case .running(let waiting) = state else { return nil }
                state = .finished(outcome)
                return waiting
            }
            guard let waiting else { return }
            for timer in waiting.timers.values {
                timer.cancel()
            }
            for continuation in waiting.continuations.values {
                continuation.resume(returning: outcome)
            }
        }
    }

    private let flights = Mutex<[String: Flight]>([:])

    /// The caller's role for a key: the leader of a new load, or a follower of the running one.
    func join(_ key: String) -> Role {
        flights.withLock { flights in
            if let running = flights[key] {
                return .follower(running)
            }
            let flight = Flight()
            flights[key] = flight
            return .leader(flight)
        }
    }

    /// Tasks waiting for the load of `key` now (for tests, which wait for a follower to join).
    func waitingTasks(_ key: String) -> Int {
        flights.withLock { $0[key] }?.waitingTasks ?? 0
    }

    /// A waiter of `stale`, whose load outlived its wait: leads a new flight if `stale` is still
    /// the key's, else joins whatever runs now.
    func takeOver(_ key: String, from stale: Flight) -> Role {
        flights.withLock { flights in
            if let running = flights[key], running !== stale {
                return .follower(running)
            }
            let flight = Flight()
            flights[key] = flight
            return .leader(flight)
        }
    }

    /// Ends a leader's load: later callers start a new one. A second call for the same flight
    /// does nothing.
    func finish(_ key: String, _ flight: Flight, with outcome: Outcome) {
        flights.withLock { flights in
            if flights[key] === flight {
                flights[key] = nil
            }
        }
        flight.finish(outcome)
    }
}
