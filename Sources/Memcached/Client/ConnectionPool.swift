import Logging
import NIOConcurrencyHelpers
import NIOCore
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
    /// a per-server failure that `setMulti`, `deleteMulti` or `versions` report as a value, or a
    /// call the watchdog stopped at its deadline or at the lease's cancellation.
    ///
    /// While `body` runs, the lease's cancellation reaches the handle (see ``LeaseCancellation``);
    /// when the lease was cancelled and `body` failed, the failure is `CancellationError`.
    func run<R>(
        _ body: (MemcachedConnection) throws -> R,
        cancellation: LeaseCancellation
    ) -> (result: Result<R, any Error>, reusable: Bool) {
        let mark = connection.stepMark
        cancellation.attach(connection.callDeadline)
        var result = Result { try body(connection) }
        let cancelled = cancellation.detach()
        let failure: (any Error)? = if case .failure(let error) = result { error } else { nil }
        let reusable = connection.isInStep(since: mark, after: failure)
        if cancelled, case .failure = result {
            result = .failure(CancellationError())
        }
        return (result, reusable)
    }

    /// Frees the libmemcached handle. It says `quit` to every connected server and reads until
    /// the server hangs up, so it takes a round trip: call it on one of the client's threads.
    func free() {
        connection.close()
    }
}

/// How a lease holder's task cancellation reaches the connection it leased.
///
/// Created per lease, before it has a connection: the cancellation handler may run before the
/// lease starts, while it runs, or after it ended. Under its lock, ``cancel()`` marks the lease
/// and, while a connection is attached, asks that connection's ``CallDeadline`` to stop: the
/// watchdog interrupts the call in flight (its sockets are shut down, so the pool then discards
/// the connection) and later calls of the lease throw `CancellationError` before sending anything.
/// ``detach()`` clears the request under the same lock, so a connection never goes back to the
/// pool still marked cancelled.
typealias LeaseCancellation = NIOLockedValueBox<LeaseCancellationState>

struct LeaseCancellationState: Sendable {
    var cancelled = false
    var deadline: CallDeadline?
}

extension NIOLockedValueBox where Value == LeaseCancellationState {
    init() {
        self.init(LeaseCancellationState())
    }

    func cancel() {
        withLockedValue { state in
            state.cancelled = true
            state.deadline?.requestCancel()
        }
    }

    func attach(_ deadline: CallDeadline) {
        withLockedValue { state in
            state.deadline = deadline
            if state.cancelled {
                deadline.requestCancel()
            }
        }
    }

    /// Detaches the connection; returns whether the lease was cancelled.
    func detach() -> Bool {
        withLockedValue { state in
            if state.cancelled {
                state.deadline?.clearCancel()
            }
            state.deadline = nil
            return state.cancelled
        }
    }
}

/// The bounded pool behind ``MemcachedClient``: connections cloned lazily from one template
/// handle, the threads their blocking calls run on, and the tasks waiting for a connection.
///
/// A command that finds a connection (idle, or a new clone while there is room) submits its work
/// to the pool's `NIOThreadPool` and suspends on one continuation, which the thread resumes with
/// the result. A command that finds every connection leased queues *its work* instead of itself:
/// the waiter holds the type-erased work, which runs the body on a connection and resumes the
/// waiter's continuation with the result. The thread that finishes a lease takes the connection
/// back under the lock and, while waiters are queued, runs their work itself, one after the
/// other, on the same connection; only when the queue is empty does the connection go idle. A
/// waiting task is therefore resumed once, with its command's result: no hop to the cooperative
/// pool to receive a connection and a second one to hand its work to a thread.
///
/// All waiters share ``waitTimeout``, and each one's deadline is taken under the lock as it is
/// queued, so the queue is in deadline order. Instead of a timer per wait, one sweep per pool is
/// scheduled for the first waiter's deadline; it fails the waiters whose deadline has passed with
/// ``MemcachedError/Code/poolTimeout`` and schedules the next sweep until the queue is empty. A
/// waiter whose deadline passed before the sweep saw it is failed the same way when a connection
/// comes back. The sweep is a timer on a SwiftNIO event loop thread, not a task: a task's sleep
/// ends on Swift's cooperative pool, whose few threads any blocking caller can hold, and then the
/// waiters would time out late by however long that caller blocks. The sweep holds the pool
/// weakly and ``close()`` cancels it.
///
/// A waiter leaves the queue in exactly one place, under the lock: handed a connection, failed by
/// the sweep, cancelled, or failed by ``close()``. Whoever removes it resumes it, so it is
/// resumed exactly once. Every state change happens under one lock; continuations are resumed and
/// handles freed after it is released. The pool owns a `NIOThreadPool` with one thread per
/// connection, so a leased connection always finds a free thread at once and a server that hangs
/// holds up only the commands sent to it.
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

    /// A task queued for a connection, with the work it runs once it has one.
    ///
    /// Its identity is its id: cancellation removes it from the queue by `===`.
    private protocol Waiter: AnyObject, Sendable {
        /// When the waiter gives up. Set under the lock as it is queued, read only under the lock.
        var deadline: ContinuousClock.Instant { get }

        /// Runs the waiter's work on `connection`, on one of the pool's threads, takes the
        /// connection back and resumes the waiter with the result.
        func run(_ connection: PooledConnection, in pool: ConnectionPool) -> HandOver

        /// Resumes the waiter with `error`; its work never runs.
        func fail(_ error: any Error)
    }

    /// The one object a waiting command allocates: its body and its continuation.
    ///
    /// `@unchecked Sendable` because of the two `var`s, which the waiting task sets before it
    /// queues the waiter under the lock. From then on they are only read, by the one party that
    /// took the waiter out of the queue under the same lock.
    private final class PendingLease<R: Sendable>: Waiter, @unchecked Sendable {
        let body: @Sendable (MemcachedConnection) throws -> R
        let cancellation: LeaseCancellation
        var continuation: CheckedContinuation<R, any Error>?
        var deadline = ContinuousClock.Instant.now

        init(_ body: @escaping @Sendable (MemcachedConnection) throws -> R, _ cancellation: LeaseCancellation) {
            self.body = body
            self.cancellation = cancellation
        }

        func run(_ connection: PooledConnection, in pool: ConnectionPool) -> HandOver {
            pool.runLease(connection, body, continuation!, cancellation)
        }

        func fail(_ error: any Error) {
            continuation!.resume(throwing: error)
        }
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
        /// Connections ready to lend, the most recently returned last. Empty while tasks wait.
        var idle: [PooledConnection] = []
        /// Connections that exist: idle, leased, or waiting to be freed, and the places of freed
        /// connections whose fresh clone is being made for a waiter. Never above the maximum.
        var open = 0
        /// libmemcached handles created and not yet freed, the template included.
        var liveHandles = 1
        /// Tasks waiting for a connection, longest-waiting (and so earliest deadline) first.
        var waiters: [any Waiter] = []
        /// The scheduled sweep while waiters are queued, for ``close()`` and `deinit` to cancel.
        /// At most one is scheduled.
        var sweep: Scheduled<Void>?
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
    /// The event loop whose thread runs the sweeps: NIO's shared singleton group, so a pool
    /// costs no thread of its own for its timer.
    private let timerLoop: any EventLoop
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
        // A century stands in for "for ever", so that a huge timeout cannot overflow the clock.
        self.waitTimeout = min(waitTimeout, .seconds(100 * 365 * 86_400))
        self.logger = configuration.logger
        self.state = NIOLockedValueBox(State(template: Template(template)))
        threadPool = NIOThreadPool(numberOfThreads: maximumConnections)
        timerLoop = MultiThreadedEventLoopGroup.singleton.next()
        threadPool.start()
    }

    deinit {
        // No lease or waiter can be left here: each keeps the pool alive. A pool that was never
        // closed still frees its handles and stops its threads. The sweep holds the pool weakly;
        // cancelled, it never runs.
        let (idle, sweep) = state.withLockedValue { state -> ([PooledConnection]?, Scheduled<Void>?) in
            defer { state.sweep = nil }
            guard state.phase == .running else { return (nil, state.sweep) }
            state.template?.handle.close()
            state.template = nil
            defer { state.idle = [] }
            return (state.idle, state.sweep)
        }
        sweep?.cancel()
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
    ///
    /// Cancelling the task ends a wait for a connection, interrupts the command `body` is
    /// running (the watchdog shuts its sockets down, and the connection is discarded) and makes
    /// the commands after it in `body` throw `CancellationError` before sending anything.
    ///
    /// - Throws: What `body` throws; ``MemcachedError/Code/poolTimeout`` after ``waitTimeout``,
    ///   ``MemcachedError/Code/poolClosed``, or `CancellationError` when the task is cancelled
    ///   before `body` starts or `body` fails after the task was cancelled.
    func withConnection<R: Sendable>(_ body: @escaping @Sendable (MemcachedConnection) throws -> R) async throws -> R {
        try Task.checkCancellation()
        let cancellation = LeaseCancellation()
        return try await withTaskCancellationHandler {
            if let connection = try state.withLockedValue({ try takeConnection(&$0) }) {
                return try await withCheckedThrowingContinuation { continuation in
                    lend(connection, body, continuation, cancellation)
                }
            }
            return try await waitForConnection(body, cancellation)
        } onCancel: {
            cancellation.cancel()
        }
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
        let connection = try cloneTemplate(&state)
        state.open += 1
        return connection
    }

    /// Clones the template. It copies memory only (sockets open at a connection's first
    /// command), so it is done under the lock, which also keeps the template single-threaded.
    /// The caller counts the connection in `open`.
    private func cloneTemplate(_ state: inout State) throws -> PooledConnection {
        guard let template = state.template else {
            throw MemcachedError.poolClosed()
        }
        let connection = PooledConnection(handle: try Handle(cloning: template.handle))
        state.liveHandles += 1
        return connection
    }

    /// Runs a lease on one of the pool's threads: `body` first, then the waiters the connection
    /// is handed to.
    private func lend<R: Sendable>(
        _ connection: PooledConnection,
        _ body: @escaping @Sendable (MemcachedConnection) throws -> R,
        _ continuation: CheckedContinuation<R, any Error>,
        _ cancellation: LeaseCancellation
    ) {
        threadPool.submit { work in
            guard work == .active else {
                // Unreachable: the threads stop only once no connection is leased. Should it
                // happen, the caller hears that the pool is closed and the handle is freed
                // with its last reference.
                continuation.resume(throwing: MemcachedError.poolClosed())
                return
            }
            self.handOver(self.runLease(connection, body, continuation, cancellation))
        }
    }

    /// Runs `body` on `connection`, frees the connection when it may be out of step with a
    /// server, takes it back and resumes the lease holder with the result. Called on one of the
    /// pool's threads.
    ///
    /// - Returns: What to do next with the connection, which the caller does on the same thread.
    private func runLease<R: Sendable>(
        _ connection: PooledConnection,
        _ body: @Sendable (MemcachedConnection) throws -> R,
        _ continuation: CheckedContinuation<R, any Error>,
        _ cancellation: LeaseCancellation
    ) -> HandOver {
        let outcome = connection.run(body, cancellation: cancellation)
        let returned: Returned
        if outcome.reusable {
            returned = .connection(connection)
        } else {
            // Freed here, on this thread: freeing talks to the servers.
            connection.free()
            returned = .place(handleFreed: true)
            logger.debug(
                "memcached pool discarded a connection that may be out of step with a server",
                metadata: ["error": "\(outcome.result.error.map { "\($0)" } ?? "caught by the caller")"]
            )
        }
        // Taken back before the holder resumes, so that it finds the pool as its lease left it
        // (the connection idle, or the next waiter's).
        let next = takeBack(returned)
        continuation.resume(with: outcome.result)
        return next
    }

    /// Suspends until the waiter's work has run on a connection, the deadline passes, the task is
    /// cancelled or the pool closes, whichever comes first. Each of those resumes the waiter only
    /// after taking it out of the queue under the lock, so exactly one of them does.
    private func waitForConnection<R: Sendable>(
        _ body: @escaping @Sendable (MemcachedConnection) throws -> R,
        _ cancellation: LeaseCancellation
    ) async throws -> R {
        let waiter = PendingLease(body, cancellation)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                waiter.continuation = continuation
                enqueue(waiter)
            }
        } onCancel: {
            let removed = state.withLockedValue { state -> Bool in
                guard let index = state.waiters.firstIndex(where: { $0 === waiter }) else { return false }
                state.waiters.remove(at: index)
                return true
            }
            if removed {
                waiter.fail(CancellationError())
            }
        }
    }

    private enum Enqueued {
        case queued
        case lend(PooledConnection)
        case failed(any Error)
    }

    private func enqueue<R: Sendable>(_ waiter: PendingLease<R>) {
        let enqueued = state.withLockedValue { state -> Enqueued in
            do {
                // Cancellation may have come before the waiter was queued, when it found nothing
                // to remove: check here, under the same lock.
                if Task.isCancelled {
                    throw CancellationError()
                }
                // A connection may have come back since the first attempt.
                if let connection = try takeConnection(&state) {
                    return .lend(connection)
                }
                guard waitTimeout > .zero else {
                    throw timeoutError()
                }
                // Taken under the lock, so that the queue is in deadline order.
                waiter.deadline = .now.advanced(by: waitTimeout)
                state.waiters.append(waiter)
                if state.sweep == nil {
                    // Scheduled under the lock, so that `sweep` is always the one pending.
                    state.sweep = scheduleSweep(at: waiter.deadline)
                }
                return .queued
            } catch {
                return .failed(error)
            }
        }
        switch enqueued {
        case .queued:
            break
        case .lend(let connection):
            lend(connection, waiter.body, waiter.continuation!, waiter.cancellation)
        case .failed(let error):
            waiter.fail(error)
        }
    }

    // MARK: - Timing out

    /// Schedules a sweep for `deadline` on the timer loop. It holds the pool weakly, so that a
    /// pending sweep never keeps a dropped pool alive. Called under the lock.
    private func scheduleSweep(at deadline: ContinuousClock.Instant) -> Scheduled<Void> {
        let delay = ContinuousClock.now.duration(to: deadline)
        // Never more than a century (``waitTimeout`` is capped there), so it fits in nanoseconds.
        let nanoseconds = delay.components.seconds * 1_000_000_000 + delay.components.attoseconds / 1_000_000_000
        return timerLoop.scheduleTask(in: .nanoseconds(max(0, nanoseconds))) { [weak self] in
            self?.failExpiredWaiters()
        }
    }

    /// Fails every waiter whose deadline has passed with ``MemcachedError/Code/poolTimeout`` and
    /// schedules the next sweep for the first remaining waiter, if any; with the queue empty the
    /// next waiter schedules one.
    private func failExpiredWaiters() {
        let now = ContinuousClock.now
        let expired = state.withLockedValue { state -> [any Waiter] in
            let count = state.waiters.prefix { $0.deadline <= now }.count
            let expired = Array(state.waiters.prefix(count))
            state.waiters.removeFirst(count)
            // Closing cancels the sweep and empties the queue; a sweep already running finds it empty.
            if let first = state.waiters.first, state.phase == .running {
                state.sweep = scheduleSweep(at: first.deadline)
            } else {
                state.sweep = nil
            }
            return expired
        }
        for waiter in expired {
            waiter.fail(timeoutError())
        }
    }

    private func timeoutError() -> MemcachedError {
        MemcachedError(
            code: .poolTimeout,
            message: "no connection became free within \(waitTimeout); all \(maximumConnections) were in use"
        )
    }

    // MARK: - Returning

    /// What a finished lease gives back.
    private enum Returned {
        /// The connection, to lend again.
        case connection(PooledConnection)
        /// Only its place in `open`: the connection was freed. `handleFreed` when its handle is
        /// not yet subtracted from `liveHandles`.
        case place(handleFreed: Bool)
    }

    /// What the thread that took a connection back does next, after the lock is released.
    private enum HandOver {
        case done
        /// Run the waiter's work on the connection.
        case lend(any Waiter, PooledConnection)
        /// Fail the waiter with `poolTimeout`, then offer what was returned to the next one.
        case expire(any Waiter, then: Returned)
        /// Fail the waiter (a fresh clone could not be made), then offer the place to the next one.
        case fail(any Waiter, any Error)
        /// Free the connection: the pool is closing.
        case free(PooledConnection)
        /// Resume ``close()``: the last connection is freed.
        case drained(CheckedContinuation<Void, Never>)
    }

    /// Takes back what a lease returned: hands it to the first waiter, or makes the connection
    /// idle, or frees it when closing.
    private func takeBack(_ returned: Returned) -> HandOver {
        state.withLockedValue { state -> HandOver in
            if case .place(handleFreed: true) = returned {
                state.liveHandles -= 1
            }
            guard state.phase == .running else {
                if case .connection(let connection) = returned {
                    return .free(connection)
                }
                state.open -= 1
                return drainedIfEmpty(&state)
            }
            guard !state.waiters.isEmpty else {
                if case .connection(let connection) = returned {
                    state.idle.append(connection)
                } else {
                    state.open -= 1
                }
                return .done
            }
            let waiter = state.waiters.removeFirst()
            if waiter.deadline <= .now {
                // Expired before the sweep came round: it fails rather than runs late.
                // Its handle, if freed, is counted: the next waiter gets the bare place.
                let rest: Returned
                if case .connection = returned {
                    rest = returned
                } else {
                    rest = .place(handleFreed: false)
                }
                return .expire(waiter, then: rest)
            }
            switch returned {
            case .connection(let connection):
                return .lend(waiter, connection)
            case .place:
                // The discarded connection's place goes to the longest waiter, as a fresh clone.
                do {
                    return .lend(waiter, try cloneTemplate(&state))
                } catch {
                    return .fail(waiter, error)
                }
            }
        }
    }

    /// Does what ``takeBack(_:)`` decided, on the thread that took the connection back, until
    /// the connection is idle or freed: runs each waiter's work in turn on the same connection.
    private func handOver(_ first: HandOver) {
        var next = first
        while true {
            switch next {
            case .done:
                return
            case .lend(let waiter, let connection):
                next = waiter.run(connection, in: self)
            case .expire(let waiter, let returned):
                waiter.fail(timeoutError())
                next = takeBack(returned)
            case .fail(let waiter, let error):
                waiter.fail(error)
                next = takeBack(.place(handleFreed: false))
            case .free(let connection):
                connection.free()
                next = takeBack(.place(handleFreed: true))
            case .drained(let continuation):
                continuation.resume()
                return
            }
        }
    }

    private func drainedIfEmpty(_ state: inout State) -> HandOver {
        guard state.phase == .closing, state.open == 0, let continuation = state.drainWaiter else {
            return .done
        }
        state.drainWaiter = nil
        return .drained(continuation)
    }

    // MARK: - Closing

    private enum CloseStep {
        case first(idle: [PooledConnection], waiters: [any Waiter], sweep: Scheduled<Void>?)
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
                    state.sweep = nil
                }
                return .first(idle: state.idle, waiters: state.waiters, sweep: state.sweep)
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
        case .first(let idle, let waiters, let sweep):
            sweep?.cancel()
            for waiter in waiters {
                waiter.fail(MemcachedError.poolClosed())
            }
            for connection in idle {
                threadPool.submit { _ in
                    // Freed on one of the pool's threads, never on a cooperative one: freeing
                    // talks to the servers. The threads are not stopped before this has run.
                    connection.free()
                    self.handOver(self.takeBack(.place(handleFreed: true)))
                }
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

    /// Whether a sweep is scheduled: from the first queued waiter until a sweep finds the queue
    /// empty, or the pool closes.
    var isSweeping: Bool {
        state.withLockedValue { $0.sweep != nil }
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
