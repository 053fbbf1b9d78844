import Logging
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
    /// logged (``MemcachedConfiguration/logger``, warning level) and the loaded value still
    /// returned; a stored value that does not decode as `type` is replaced.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - type: The type to read and store; inferred from context when omitted.
    ///   - expiration: When a loaded value expires.
    ///   - loadTimeout: How long a caller waits for another's load before loading itself, and the
    ///     lifetime of the lock key (rounded up to whole seconds). The default is 10 seconds.
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
        load: () async throws -> Value
    ) async throws -> Value {
        if let cached = try await cachedValue(key, as: type) {
            return cached
        }
        while true {
            switch loadFlights.join(key) {
            case .follower(let flight):
                switch await flight.outcome(waitingAtMost: loadTimeout) {
                case .value(let value as Value):
                    return value
                case .failure(let error) where !(error is CancellationError):
                    throw error
                case .value, .failure:
                    // Another type under the same key, or a load that was cancelled: read again.
                    try Task.checkCancellation()
                    if let cached = try await cachedValue(key, as: type) {
                        return cached
                    }
                    continue
                case .timedOut:
                    try Task.checkCancellation()
                    return try await loadAndStore(key, expiration: expiration, load: load)
                }
            case .leader(let flight):
                do {
                    let value = try await loadHoldingTheLock(key, as: type, expiration, loadTimeout, load)
                    loadFlights.finish(key, flight, with: .value(value))
                    return value
                } catch {
                    loadFlights.finish(key, flight, with: .failure(error))
                    throw error
                }
            }
        }
    }

    /// A hit, or `nil` for a miss, an undecodable value, or a read that failed (logged).
    private func cachedValue<Value: MemcachedValue & Sendable>(
        _ key: String,
        as type: Value.Type
    ) async throws -> Value? {
        do {
            return try await get(key, as: type)
        } catch let error as MemcachedError where error.code != .poolClosed && !error.code.failsTheWholeCall {
            configuration.logger.debug(
                "memcached cache-aside read failed; loading instead",
                metadata: ["code": "\(error.code)"]
            )
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
        _ load: () async throws -> Value
    ) async throws -> Value {
        let lock = CacheAsideLock(key: key, lifetime: loadTimeout)
        let clock = ContinuousClock()
        let deadline = clock.now + loadTimeout
        var pause = Duration.milliseconds(5)
        while !(try await lock.acquire(with: self)) {
            // Another process loads: its value, or the end of its lock, is what to wait for.
            guard clock.now < deadline else {
                return try await loadAndStore(key, expiration: expiration, load: load)
            }
            try await Task.sleep(for: pause)
            pause = min(pause * 2, .milliseconds(100))
            if let cached = try await cachedValue(key, as: type) {
                return cached
            }
        }
        do {
            // The value may have been stored between the miss and the lock.
            let value: Value
            if let cached = try await cachedValue(key, as: type) {
                value = cached
            } else {
                value = try await loadAndStore(key, expiration: expiration, load: load)
            }
            await lock.release(with: self)
            return value
        } catch {
            await lock.release(with: self)
            throw error
        }
    }

    /// Loads and stores; a store that fails is logged, not thrown.
    private func loadAndStore<Value: MemcachedValue & Sendable>(
        _ key: String,
        expiration: MemcachedExpiration,
        load: () async throws -> Value
    ) async throws -> Value {
        let value = try await load()
        do {
            if try await !set(key, value, expiration: expiration) {
                configuration.logger.warning("memcached cache-aside: the server did not store the loaded value")
            }
        } catch let error as MemcachedError where !error.code.failsTheWholeCall || error.code == .valueTooLarge {
            configuration.logger.warning(
                "memcached cache-aside: cannot store the loaded value",
                metadata: ["code": "\(error.code)"]
            )
        }
        return value
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

    init(key: String, lifetime: Duration) {
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
            return try await client.add(key, token, expiration: lifetime, compression: .never)
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
        guard (try? await client.get(key, as: String.self)) == token else { return }
        _ = try? await client.delete(key)
    }
}

/// The cache-aside loads in progress in one client, by key: a task that misses a key while
/// another loads it waits for that load.
final class LoadFlights: Sendable {
    /// What a waiting task learns.
    enum Outcome: Sendable {
        case value(any Sendable)
        case failure(any Error)
        case timedOut
    }

    /// A task's part in a key's load.
    enum Role {
        case leader(Flight)
        case follower(Flight)
    }

    /// One load and the tasks waiting for it.
    final class Flight: Sendable {
        private enum State {
            case running(waiters: [UInt64: CheckedContinuation<Outcome, Never>], nextWaiter: UInt64)
            case finished(Outcome)
        }

        private let state = Mutex(State.running(waiters: [:], nextWaiter: 0))

        /// Waits for the load, at most `limit`; a cancelled waiter stops waiting at once.
        func outcome(waitingAtMost limit: Duration) async -> Outcome {
            let waiter = Atomic<UInt64>(UInt64.max)
            return await withTaskCancellationHandler {
                await withCheckedContinuation { continuation in
                    let id: UInt64? = state.withLock { state in
                        switch state {
                        case .finished(let outcome):
                            continuation.resume(returning: outcome)
                            return nil
                        case .running(var waiters, let next):
                            waiters[next] = continuation
                            state = .running(waiters: waiters, nextWaiter: next + 1)
                            return next
                        }
                    }
                    guard let id else { return }
                    waiter.store(id, ordering: .releasing)
                    // Cancelled before the handler could see the waiter: stop now.
                    if Task.isCancelled {
                        stopWaiting(id, with: .failure(CancellationError()))
                        return
                    }
                    Task { [self] in
                        try? await Task.sleep(for: limit)
                        stopWaiting(id, with: .timedOut)
                    }
                }
            } onCancel: {
                let id = waiter.load(ordering: .acquiring)
                if id != UInt64.max {
                    stopWaiting(id, with: .failure(CancellationError()))
                }
            }
        }

        /// Resumes one waiter, if it still waits.
        private func stopWaiting(_ id: UInt64, with outcome: Outcome) {
            let continuation: CheckedContinuation<Outcome, Never>? = state.withLock { state in
                guard case .running(var waiters, let next) = state, let continuation = waiters.removeValue(forKey: id)
                else { return nil }
                state = .running(waiters: waiters, nextWaiter: next)
                return continuation
            }
            continuation?.resume(returning: outcome)
        }

        /// Ends the load and resumes every waiter with its outcome.
        func finish(_ outcome: Outcome) {
            let waiters: [CheckedContinuation<Outcome, Never>] = state.withLock { state in
                guard case .running(let waiters, _) = state else { return [] }
                state = .finished(outcome)
                return Array(waiters.values)
            }
            for waiter in waiters {
                waiter.resume(returning: outcome)
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

    /// Ends a leader's load: later callers start a new one.
    func finish(_ key: String, _ flight: Flight, with outcome: Outcome) {
        flights.withLock { flights in
            if flights[key] === flight {
                flights[key] = nil
            }
        }
        flight.finish(outcome)
    }
}
