import Logging
import NIOConcurrencyHelpers
import NIOPosix

/// A ``MemcachedConnection`` on its way between the pool and one lease holder.
///
/// A connection is not thread-safe, so it is not `Sendable`. The box is `@unchecked Sendable`
/// because the pool lends it to one holder at a time: it leaves the pool's lock into exactly one
/// task, that task uses it only inside one work item on one of the client's threads, and it comes
/// back through the same lock or is freed. Each hand-over takes a lock (the pool's, or
/// `NIOThreadPool`'s queue lock), which orders every use by one holder before any use by the next.
final class PooledConnection: @unchecked Sendable {
    let connection: MemcachedConnection

    init(handle: Handle) {
        connection = MemcachedConnection(handle: handle)
    }

    /// Runs `body` on the connection and says whether the connection may be lent again.
    ///
    /// It may not when the handle was closed, when a thrown error's code may leave a reply half
    /// read (a timeout, a read or write failure, a protocol error, a reply for another key), or
    /// when the handle reset its sockets during the call for that reason: an error `body` caught,
    /// or a per-server failure that `setMulti`, `deleteMulti` or `versions` report as a value.
    func run<R>(_ body: (MemcachedConnection) throws -> R) -> (result: Result<R, any Error>, reusable: Bool) {
        let handle = connection.handle
        let resetsBefore = handle.connectionResets
        let result = Result { try body(connection) }
        var reusable = handle.pointer != nil && handle.connectionResets == resetsBefore
        if case .failure(let error as MemcachedError) = result, Handle.mayLeaveReplyUnread(error.code) {
            reusable = false
        }
        return (result, reusable)
    }

    /// Frees the libmemcached handle. It says `quit` to every connected server and reads until
    /// the server hangs up, so it takes a round trip: call it on one of the client's threads.
    func free() {
        connection.close()
    }
}

/// The bounded pool behind ``MemcachedClient``: connections cloned lazily from one template
/// handle, the threads their blocking calls run on, and the tasks waiting for a connection.
///
/// Every state change happens under one lock; continuations are resumed and handles freed after
/// it is released. The pool owns a `NIOThreadPool` with one thread per connection, so a leased
/// connection always finds a free thread at once and a server that hangs holds up only the
/// commands sent to it.
///
/// The lock is NIO's `NIOLockedValueBox`, a `pthread_mutex_t`, rather than `Synchronization.Mutex`:
/// on Linux `Mutex` waits on futexes that ThreadSanitizer cannot see, so every access it guards
/// would be reported as a race and the sanitizer could not check the pool.
final class ConnectionPool: Sendable {
    private enum Phase {
        case running
        /// ``close()`` has started: no new leases; it waits for the leased connections.
        case closing
        /// Every handle is freed and the threads are stopped.
        case closed
    }

    private struct Waiter {
        var id: Int
        var continuation: CheckedContinuation<PooledConnection, any Error>
    }

    /// The handle every connection is cloned from. It never runs a command, so it never opens a
    /// socket. `@unchecked Sendable` because it is only used under the pool's lock.
    private final class Template: @unchecked Sendable {
        let handle: Handle

        init(_ handle: Handle) {
            self.handle = handle
        }
    }

    private struct State: Sendable {
        /// `nil` once closing.
        var template: Template?
        /// Connections ready to lend, the most recently returned last.
        var idle: [PooledConnection] = []
        /// Connections that exist: idle, leased, or waiting to be freed. Never above the maximum.
        var open = 0
        /// libmemcached handles created and not yet freed, the template included.
        var liveHandles = 1
        /// Tasks waiting for a connection, longest-waiting first.
        var waiters: [Waiter] = []
        var nextWaiterID = 0
        var phase = Phase.running
        /// The ``close()`` call waiting for `open` to reach zero.
        var drainWaiter: CheckedContinuation<Void, Never>?
        /// Later ``close()`` calls, waiting for the first one to finish.
        var closeFollowers: [CheckedContinuation<Void, Never>] = []
    }

    let maximumConnections: Int
    let waitTimeout: Duration
    private let logger: Logger
    private let threadPool: NIOThreadPool
    private let state: NIOLockedValueBox<State>

    init(configuration: MemcachedConfiguration, maximumConnections: Int, waitTimeout: Duration) throws {
        guard maximumConnections >= 1 else {
            throw MemcachedError(code: .invalidConfiguration, message: "maximumConnections must be at least 1")
        }
        guard waitTimeout >= .zero else {
            throw MemcachedError(code: .invalidConfiguration, message: "connectionWaitTimeout must not be negative")
        }
        // Creating the template checks the whole configuration now, not at the first command.
        let template = try Handle(configuration: configuration)
        self.maximumConnections = maximumConnections
        self.waitTimeout = waitTimeout
        self.logger = configuration.logger
        self.state = NIOLockedValueBox(State(template: Template(template)))
        threadPool = NIOThreadPool(numberOfThreads: maximumConnections)
        threadPool.start()
    }

    deinit {
        // No lease or waiter can be left here: each keeps the pool alive. A pool that was never
        // closed still frees its handles and stops its threads.
        let idle = state.withLockedValue { state -> [PooledConnection]? in
            guard state.phase == .running else { return nil }
            state.template?.handle.close()
            state.template = nil
            defer { state.idle = [] }
            return state.idle
        }
        guard let idle else { return }
        let threadPool = self.threadPool
        for connection in idle {
            // Queued items left at shutdown run with `.cancelled` on a Dispatch thread; the
            // handle is freed either way.
            threadPool.submit { _ in connection.free() }
        }
        threadPool.shutdownGracefully { _ in }
    }

    // MARK: - Leasing

    /// Runs `body` with a leased connection on one of the pool's threads, then takes the
    /// connection back, or frees it when it may be out of step with a server.
    func withConnection<R: Sendable>(_ body: @escaping @Sendable (MemcachedConnection) throws -> R) async throws -> R {
        try Task.checkCancellation()
        let connection = try await lease()
        let outcome: (result: Result<R, any Error>, reusable: Bool)
        do {
            outcome = try await threadPool.runIfActive { [logger] in
                let outcome = connection.run(body)
                if !outcome.reusable {
                    // Freed here, on this thread: freeing talks to the servers.
                    connection.free()
                    logger.debug(
                        "memcached pool discarded a connection that may be out of step with a server",
                        metadata: ["error": "\(outcome.result.error.map { "\($0)" } ?? "caught by the caller")"]
                    )
                }
                return outcome
            }
        } catch {
            // The work never ran (the task was cancelled while it was queued): the connection
            // is untouched.
            release(connection, reusable: true)
            if error is NIOThreadPoolError.ThreadPoolInactive {
                throw MemcachedError.poolClosed()
            }
            throw error
        }
        release(connection, reusable: outcome.reusable)
        return try outcome.result.get()
    }

    /// An idle connection, a new one while there is room, or the first one to come back.
    ///
    /// - Throws: ``MemcachedError/Code/poolTimeout`` after ``waitTimeout``,
    ///   ``MemcachedError/Code/poolClosed``, or `CancellationError` when the task is cancelled
    ///   while waiting.
    func lease() async throws -> PooledConnection {
        // A century stands in for "for ever", so that a huge timeout cannot overflow the clock.
        let deadline = ContinuousClock.now.advanced(by: min(waitTimeout, .seconds(100 * 365 * 86_400)))
        if let connection = try state.withLockedValue({ try takeConnection(&$0) }) {
            return connection
        }
        return try await waitForConnection(until: deadline)
    }

    private func takeConnection(_ state: inout State) throws -> PooledConnection? {
        guard state.phase == .running else {
            throw MemcachedError.poolClosed()
        }
        if let connection = state.idle.popLast() {
            return connection
        }
        guard state.open < maximumConnections else {
            return nil
        }
        return try makeConnection(&state)
    }

    /// Clones the template. It copies memory only (sockets open at a connection's first
    /// command), so it is done under the lock, which also keeps the template single-threaded.
    private func makeConnection(_ state: inout State) throws -> PooledConnection {
        guard let template = state.template else {
            throw MemcachedError.poolClosed()
        }
        let connection = PooledConnection(handle: try Handle(cloning: template.handle))
        state.open += 1
        state.liveHandles += 1
        return connection
    }

    /// Suspends until a connection is handed over, the deadline passes, the task is cancelled or
    /// the pool closes, whichever comes first. Each of those resumes the waiter only after taking
    /// it out of the queue under the lock, so exactly one of them does.
    private func waitForConnection(until deadline: ContinuousClock.Instant) async throws -> PooledConnection {
        let id = state.withLockedValue { state in
            state.nextWaiterID += 1
            return state.nextWaiterID
        }
        return try await withThrowingTaskGroup(of: Void.self, returning: PooledConnection.self) { group in
            group.addTask {
                try await Task.sleep(until: deadline, clock: .continuous)
                self.removeWaiter(id, failingWith: self.timeoutError())
            }
            defer { group.cancelAll() }
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { continuation in
                    enqueueWaiter(id, until: deadline, continuation)
                }
            } onCancel: {
                removeWaiter(id, failingWith: CancellationError())
            }
        }
    }

    private func enqueueWaiter(
        _ id: Int,
        until deadline: ContinuousClock.Instant,
        _ continuation: CheckedContinuation<PooledConnection, any Error>
    ) {
        let outcome = state.withLockedValue { state -> Result<PooledConnection, any Error>? in
            do {
                // Cancellation or the timer may have fired before the waiter was queued, when
                // they found nothing to remove: check both here, under the same lock.
                if Task.isCancelled {
                    throw CancellationError()
                }
                // A connection may have come back since the first attempt.
                if let connection = try takeConnection(&state) {
                    return .success(connection)
                }
                if ContinuousClock.now >= deadline {
                    throw timeoutError()
                }
                state.waiters.append(Waiter(id: id, continuation: continuation))
                return nil
            } catch {
                return .failure(error)
            }
        }
        if let outcome {
            continuation.resume(with: outcome)
        }
    }

    private func removeWaiter(_ id: Int, failingWith error: any Error) {
        let continuation = state.withLockedValue { state -> CheckedContinuation<PooledConnection, any Error>? in
            guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return state.waiters.remove(at: index).continuation
        }
        continuation?.resume(throwing: error)
    }

    private func timeoutError() -> MemcachedError {
        MemcachedError(
            code: .poolTimeout,
            message: "no connection became free within \(waitTimeout); all \(maximumConnections) were in use"
        )
    }

    // MARK: - Returning

    private enum AfterRelease {
        case nothing
        case handOver(CheckedContinuation<PooledConnection, any Error>, Result<PooledConnection, any Error>)
        case free(PooledConnection)
        case drained(CheckedContinuation<Void, Never>)
    }

    /// Takes a connection back after a lease.
    ///
    /// - Parameter reusable: `false` when the lease holder has already freed the connection.
    func release(_ connection: PooledConnection, reusable: Bool) {
        let next = state.withLockedValue { state -> AfterRelease in
            if reusable {
                guard state.phase == .running else {
                    return .free(connection)
                }
                guard !state.waiters.isEmpty else {
                    state.idle.append(connection)
                    return .nothing
                }
                return .handOver(state.waiters.removeFirst().continuation, .success(connection))
            }
            state.liveHandles -= 1
            state.open -= 1
            if state.phase == .running, !state.waiters.isEmpty {
                // The discarded connection's place goes to the longest waiter, as a fresh clone.
                let waiter = state.waiters.removeFirst()
                return .handOver(waiter.continuation, Result { try makeConnection(&state) })
            }
            return drainedIfEmpty(&state)
        }
        switch next {
        case .nothing:
            break
        case .handOver(let continuation, let result):
            continuation.resume(with: result)
        case .free(let connection):
            freeOnPoolThread(connection)
        case .drained(let continuation):
            continuation.resume()
        }
    }

    /// Frees a connection on one of the pool's threads, never on a cooperative one: freeing
    /// talks to the servers. The pool is not closed before this has run.
    private func freeOnPoolThread(_ connection: PooledConnection) {
        threadPool.submit { _ in
            connection.free()
            let drained = self.state.withLockedValue { state -> CheckedContinuation<Void, Never>? in
                state.liveHandles -= 1
                state.open -= 1
                guard case .drained(let continuation) = self.drainedIfEmpty(&state) else { return nil }
                return continuation
            }
            drained?.resume()
        }
    }

    private func drainedIfEmpty(_ state: inout State) -> AfterRelease {
        guard state.phase == .closing, state.open == 0, let continuation = state.drainWaiter else {
            return .nothing
        }
        state.drainWaiter = nil
        return .drained(continuation)
    }

    // MARK: - Closing

    private enum CloseStep {
        case first(idle: [PooledConnection], waiters: [CheckedContinuation<PooledConnection, any Error>])
        case follow
        case done
    }

    /// Fails every waiter and every later lease with ``MemcachedError/Code/poolClosed``, frees
    /// the idle connections at once and the leased ones as they come back, then stops the
    /// threads. Returns when all of that is done; later calls wait for the first one.
    func close() async {
        let step = state.withLockedValue { state -> CloseStep in
            switch state.phase {
            case .running:
                state.phase = .closing
                // The template never opened a socket, so freeing it sends nothing.
                state.template?.handle.close()
                state.template = nil
                state.liveHandles -= 1
                defer {
                    state.idle = []
                    state.waiters = []
                }
                return .first(idle: state.idle, waiters: state.waiters.map(\.continuation))
            case .closing:
                return .follow
            case .closed:
                return .done
            }
        }
        switch step {
        case .done:
            return
        case .follow:
            await withCheckedContinuation { continuation in
                let closed = state.withLockedValue { state in
                    guard state.phase == .closed else {
                        state.closeFollowers.append(continuation)
                        return false
                    }
                    return true
                }
                if closed {
                    continuation.resume()
                }
            }
        case .first(let idle, let waiters):
            for waiter in waiters {
                waiter.resume(throwing: MemcachedError.poolClosed())
            }
            for connection in idle {
                freeOnPoolThread(connection)
            }
            await withCheckedContinuation { continuation in
                let drained = state.withLockedValue { state in
                    guard state.open == 0 else {
                        state.drainWaiter = continuation
                        return false
                    }
                    return true
                }
                if drained {
                    continuation.resume()
                }
            }
            // Nothing is queued or running any more, so this only joins the idle threads.
            try? await threadPool.shutdownGracefully()
            let followers = state.withLockedValue { state in
                state.phase = .closed
                defer { state.closeFollowers = [] }
                return state.closeFollowers
            }
            for follower in followers {
                follower.resume()
            }
            logger.debug("memcached pool closed")
        }
    }

    // MARK: - Observing

    /// Handles created and not yet freed, the template included; zero once closed.
    var liveHandleCount: Int {
        state.withLockedValue { $0.liveHandles }
    }

    /// Connections that exist now: idle, leased or being freed.
    var openConnectionCount: Int {
        state.withLockedValue { $0.open }
    }

    /// Tasks waiting for a connection now.
    var waiterCount: Int {
        state.withLockedValue { $0.waiters.count }
    }
}

extension Result {
    fileprivate var error: Failure? {
        guard case .failure(let error) = self else { return nil }
        return error
    }
}

extension MemcachedError {
    static func poolClosed() -> MemcachedError {
        MemcachedError(code: .poolClosed, message: "the client is closed")
    }
}
