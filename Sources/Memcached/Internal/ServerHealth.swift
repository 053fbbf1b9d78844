import NIOConcurrencyHelpers
import Synchronization

/// Which servers are failing, shared by a connection and every handle cloned from it (all the
/// connections of a ``MemcachedClient``'s pool), so that what one connection learns about a
/// server holds for all of them.
///
/// libmemcached's own failure accounting cannot do this: it counts only failed connects (a
/// server that accepts and never answers never counts), every `memcached_quit` clears its
/// counters, and each handle keeps its own. Here every call that fails because a server did not
/// answer (a timeout, a lost or refused connection) counts against that server, and any call it
/// answers clears the count. At ``MemcachedConfiguration/serverFailureLimit`` failures in a row
/// the server is *down* for ``MemcachedConfiguration/retryTimeout``: calls for its keys fail at
/// once with ``MemcachedError/Code/serverMarkedDead`` (or, with
/// ``MemcachedConfiguration/removeFailedServers``, its keys go to the other servers). After that
/// one call at a time is let through to probe it: an answer brings it back, another failure
/// takes it down again for the same time.
final class ServerHealth: Sendable {
    /// What a call may do with a server.
    enum Admission: Equatable {
        /// Go ahead.
        case proceed
        /// The server is down: fail the call without sending anything.
        case refuse
        /// The server's down time has passed and this call is the one to find out whether it is
        /// back: probe it first (``Handle``'s `probe`), then report the outcome.
        case probe
    }

    private struct Server {
        var failuresInARow = 0
        /// Until when the server is down; `nil` when it is not.
        var downUntil: ContinuousClock.Instant?
        /// When the call probing a server whose down time has passed started, if one is running.
        var probeStarted: ContinuousClock.Instant?
    }

    private struct State {
        var servers: [String: Server] = [:]
        /// Bumped whenever a server goes down or comes back, so handles that leave down servers
        /// out of their server list know when to rebuild it.
        var generation = 0
    }

    /// A pthread mutex (NIO's lock), which ThreadSanitizer sees, unlike `Mutex`'s futex on Linux.
    private let state = NIOLockedValueBox(State())
    /// How many servers have a failure count or are down: when 0, no call looks any further.
    private let troubledCount = Atomic<Int>(0)
    private let generationCounter = Atomic<Int>(0)
    let failureLimit: Int
    let downTime: Duration
    /// How long a probe may run before another call may probe instead: a probe that never ended
    /// (its caller's deadline stopped it) must not keep the server out for good.
    let probeLimit: Duration

    /// How long a server whose failures came back at once stays down before the next probe.
    static let quickRetry = Duration.milliseconds(100)

    init(failureLimit: Int, downTime: Duration, callTimeout: Duration) {
        self.failureLimit = max(failureLimit, 1)
        self.downTime = downTime
        self.probeLimit = callTimeout * 2
    }

    /// Whether every server is healthy: the one check on every call's path.
    @inline(__always)
    var allHealthy: Bool {
        troubledCount.load(ordering: .relaxed) == 0
    }

    /// Changes whenever the set of down servers changes.
    var generation: Int {
        generationCounter.load(ordering: .acquiring)
    }

    /// Whether a call may go to `server` now.
    func admit(_ server: String, now: ContinuousClock.Instant = .now) -> Admission {
        state.withLockedValue { state in
            guard var entry = state.servers[server], let downUntil = entry.downUntil else { return .proceed }
            if now < downUntil {
                return .refuse
            }
            if let started = entry.probeStarted, now - started < probeLimit {
                return .refuse
            }
            entry.probeStarted = now
            state.servers[server] = entry
            return .probe
        }
    }

    /// The servers that are down, due for a probe or not, and when the first of them is due.
    func downServers(now: ContinuousClock.Instant = .now) -> (servers: Set<String>, firstDue: ContinuousClock.Instant?)
    {
        state.withLockedValue { state in
            var down: Set<String> = []
            var firstDue: ContinuousClock.Instant?
            for (name, entry) in state.servers {
                guard let downUntil = entry.downUntil else { continue }
                down.insert(name)
                firstDue = min(firstDue ?? downUntil, downUntil)
            }
            return (down, firstDue)
        }
    }

    /// A call to `server` failed because the server did not answer.
    ///
    /// - Parameter quick: Whether the failure came back at once (a refused or reset connection)
    ///   rather than after a wait: such a server costs nothing to try, so once down it is probed
    ///   again after ``quickRetry`` instead of the whole down time, and a restarted server is
    ///   back within that.
    func recordFailure(_ server: String, quick: Bool = false, now: ContinuousClock.Instant = .now) {
        state.withLockedValue { state in
            var entry = state.servers[server] ?? Server()
            if entry.failuresInARow == 0 && entry.downUntil == nil {
                troubledCount.add(1, ordering: .relaxed)
            }
            entry.failuresInARow += 1
            entry.probeStarted = nil
            if entry.failuresInARow >= failureLimit {
                // Down now, or down again after a failed probe: only the first changes which
                // servers are down, which handles rebuild their server lists for.
                if entry.downUntil == nil {
                    state.generation += 1
                    generationCounter.store(state.generation, ordering: .releasing)
                }
                entry.downUntil = now + (quick ? min(downTime, Self.quickRetry) : downTime)
                entry.failuresInARow = failureLimit
            }
            state.servers[server] = entry
        }
    }

    /// A call to `server` got its answer.
    func recordSuccess(_ server: String) {
        state.withLockedValue { state in
            guard let entry = state.servers.removeValue(forKey: server) else { return }
            troubledCount.subtract(1, ordering: .relaxed)
            if entry.downUntil != nil {
                state.generation += 1
                generationCounter.store(state.generation, ordering: .releasing)
            }
        }
    }

    /// Whether a failure with this code means the server did not answer (rather than answered
    /// with an error, or the call was refused before anything was sent).
    static func countsAgainstServer(_ code: MemcachedError.Code) -> Bool {
        switch code {
        case .timeout, .connectionFailure, .writeFailure, .readFailure:
            // Not systemError: an errno such as EMFILE or EADDRNOTAVAIL is the client's trouble.
            return true
        default:
            return false
        }
    }
}
