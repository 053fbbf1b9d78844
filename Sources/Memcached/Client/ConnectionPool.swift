import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A ``MemcachedConnection`` on its way between the pool and one lease holder.
///
/// A connection is not thread-safe, so it is not `Sendable`. The box is `@unchecked Sendable`
/// because the pool lends it to one holder at a time: it leaves the pool's lock into exactly one
/// task, that task uses it only inside one work item on one of the client's threads (the pool's,
/// or, run in place, one of ``ConnectionPool/taskExecutor``'s), and it comes back through the same
/// lock or is freed. Each hand-over takes a lock (the pool's, or
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
/// Its decisions are ``PoolStateMachine``'s, a value this class keeps under its lock and feeds
/// with events; the class only carries them out: it clones and frees handles, runs work on its
/// threads, resumes continuations and keeps the timer.
///
/// A command that finds a connection (idle, or a new clone while there is room) submits its work
/// to the pool's `NIOThreadPool` and suspends on one continuation, which the thread resumes with
/// the result; issued from one of ``taskExecutor``'s threads, where blocking is expected, it runs
/// right there instead (``runHere``). A command that finds every connection leased queues *its work* instead of itself:
/// the waiter holds the type-erased work, which runs the body on a connection and resumes the
/// waiter's continuation with the result. The thread that finishes a lease takes the connection
/// back under the lock and, while waiters are queued, runs their work itself, one after the
/// other, on the same connection; only when the queue is empty does the connection go idle. A
/// waiting task is therefore resumed once, with its command's result: no hop to the cooperative
/// pool to receive a connection and a second one to hand its work to a thread.
///
/// Waiters time out on one timer per pool, set for the earliest deadline. It is a timer on a
/// SwiftNIO event loop thread, not a task: a task's sleep ends on Swift's cooperative pool, whose
/// few threads any blocking caller can hold, and then the waiters would time out late by however
/// long that caller blocks. The timer holds the pool weakly and ``close()`` cancels it.
///
/// A waiter leaves the queue in exactly one event, under the lock: handed a connection, timed
/// out, cancelled, or closed. Whoever gets it from the machine resumes it, so it is resumed
/// exactly once. Continuations are resumed and handles freed after the lock is released. The
/// pool owns a `NIOThreadPool` with one thread per connection, so a leased connection always
/// finds a free thread at once and a server that hangs holds up only the commands sent to it.
///
/// The lock is NIO's `NIOLockedValueBox`, a `pthread_mutex_t`, rather than `Synchronization.Mutex`:
/// on Linux `Mutex` waits on futexes that ThreadSanitizer cannot see, so every access it guards
/// would be reported as a race and the sanitizer could not check the pool.
@usableFromInline
final class ConnectionPool: Sendable {
    /// A task queued for a connection, with the work it runs once it has one; or a batch of
    /// coalesced commands (``CommandBatch``).
    protocol Waiter: AnyObject, Sendable {
        /// Runs the waiter's work on `connection`, on one of the pool's threads, takes the
        /// connection back and resumes the waiter with the result.
        func run(_ connection: PooledConnection, in pool: ConnectionPool) -> Plan

        /// Resumes the waiter with `error`; its work never runs.
        func fail(_ error: any Error)

        /// The waiter's wait reached ``waitTimeout``.
        func timeOut(in pool: ConnectionPool)
    }

    /// A waiter as the state machine knows it: by identity.
    private struct WaiterID: Hashable, Sendable {
        let waiter: any Waiter

        static func == (lhs: Self, rhs: Self) -> Bool { lhs.waiter === rhs.waiter }

        func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(waiter)) }
    }

    /// The one object a waiting command allocates: its body and its continuation.
    ///
    /// `@unchecked Sendable` because of the `var`, which the waiting task sets before it queues
    /// the waiter under the lock. From then on it is only read, by the one party that took the
    /// waiter out of the machine under the same lock.
    private final class PendingLease<R: Sendable>: Waiter, @unchecked Sendable {
        let body: @Sendable (MemcachedConnection) throws -> R
        let cancellation: LeaseCancellation
        var continuation: CheckedContinuation<R, any Error>?

        init(_ body: @escaping @Sendable (MemcachedConnection) throws -> R, _ cancellation: LeaseCancellation) {
            self.body = body
            self.cancellation = cancellation
        }

        func run(_ connection: PooledConnection, in pool: ConnectionPool) -> Plan {
            pool.runLease(connection, body, continuation!, cancellation)
        }

        func fail(_ error: any Error) {
            continuation!.resume(throwing: error)
        }

        func timeOut(in pool: ConnectionPool) {
            fail(pool.timeoutError())
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
        var machine: PoolStateMachine<PooledConnection, WaiterID>
        /// `nil` once closing.
        var template: Template?
        /// libmemcached handles created and not yet freed, the template included.
        var liveHandles = 1
        /// The scheduled timer, for ``close()`` and `deinit` to cancel.
        var timer: Scheduled<Void>?
        /// The ``close()`` call waiting for the last connection to be freed.
        var drainWaiter: CheckedContinuation<Void, Never>?
        /// Later ``close()`` calls, waiting for the first one to finish.
        var closeFollowers: [CheckedContinuation<Void, Never>] = []
        /// Whether ``close()`` has finished: the threads are stopped too.
        var closed = false
        /// The batch that later commands join: queued, not yet handed a connection.
        var formingBatch: CommandBatch?
        /// Commands in batches waiting for a connection.
        var queuedCommands = 0
        /// What the pool's gauges last reported (``withState(_:)``).
        var reportedGauges = PoolGauges()
        /// Batches served, and the commands they served.
        var batchesServed = 0
        var commandsServedInBatches = 0

        /// Called whenever a waiter leaves the machine's queue: a batch that left takes no more commands.
        mutating func left(_ waiter: any Waiter) {
            guard let batch = waiter as? CommandBatch else { return }
            queuedCommands -= batch.count
            if batch === formingBatch {
                formingBatch = nil
            }
        }
    }

    let maximumConnections: Int
    let waitTimeout: Duration
    /// The most commands one ``CommandBatch`` serves.
    let maximumBatchSize: Int
    private let logger: Logger
    /// The client's metrics, shared with every connection; `nil` when they go nowhere.
    let metrics: CommandMetrics?
    /// The pool's gauges, with ``metrics``.
    private let poolMetrics: PoolMetrics?
    private let threadPool: NIOThreadPool
    /// Threads for tasks that want their commands run where they are (``MemcachedClient/taskExecutor``).
    let taskExecutor: ClientTaskExecutor
    /// The event loop whose thread runs the timer: NIO's shared singleton group, so a pool
    /// costs no thread of its own for it.
    private let timerLoop: any EventLoop
    private let state: NIOLockedValueBox<State>

    init(
        configuration: MemcachedConfiguration,
        maximumConnections: Int,
        waitTimeout: Duration,
        maximumBatchSize: Int = 64
    ) throws {
        guard maximumConnections >= 1 else {
            throw MemcachedError(code: .invalidConfiguration, message: "maximumConnections must be at least 1")
        }
        guard maximumBatchSize >= 1 else {
            throw MemcachedError(code: .invalidConfiguration, message: "maximumCoalescedCommands must be at least 1")
        }
        guard waitTimeout >= .zero else {
            throw MemcachedError(code: .invalidConfiguration, message: "connectionWaitTimeout must not be negative")
        }
        // Creating the template checks the whole configuration now, not at the first command.
        let template = try Handle(configuration: configuration)
        self.maximumConnections = maximumConnections
        self.maximumBatchSize = maximumBatchSize
        // A century stands in for "for ever", so that a huge timeout cannot overflow the clock.
        self.waitTimeout = min(waitTimeout, .seconds(100 * 365 * 86_400))
        self.logger = configuration.logger
        self.metrics = template.metrics
        self.poolMetrics = template.metrics?.poolMetrics()
        let machine = PoolStateMachine<PooledConnection, WaiterID>(
            maximumConnections: maximumConnections,
            waitTimeout: self.waitTimeout
        )
        self.state = NIOLockedValueBox(State(machine: machine, template: Template(template)))
        threadPool = NIOThreadPool(numberOfThreads: maximumConnections)
        taskExecutor = ClientTaskExecutor(numberOfThreads: maximumConnections)
        timerLoop = MultiThreadedEventLoopGroup.singleton.next()
        threadPool.start()
    }

    deinit {
        // No lease or waiter can be left here: each keeps the pool alive. A pool that was never
        // closed still frees its handles and stops its threads. The timer holds the pool weakly;
        // cancelled, it never runs.
        let (idle, timer) = state.withLockedValue { state -> ([PooledConnection], Scheduled<Void>?) in
            defer { state.timer = nil }
            state.template?.handle.close()
            state.template = nil
            guard case .close(_, let idle, _, _) = state.machine.close() else { return ([], state.timer) }
            return (idle, state.timer)
        }
        timer?.cancel()
        let threadPool = self.threadPool
        for connection in idle {
            // Queued items left at shutdown run with `.cancelled` on a Dispatch thread; the
            // handle is freed either way.
            threadPool.submit { _ in connection.free() }
        }
        threadPool.shutdownGracefully { _ in }
        taskExecutor.stop()
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
        if let connection = try withState({ try immediateConnection(&$0) }) {
            return try await runImmediately(connection, body)
        }
        let cancellation = LeaseCancellation()
        return try await withTaskCancellationHandler {
            try await waitForConnection(body, cancellation)
        } onCancel: {
            cancellation.cancel()
        }
    }

    /// Runs `body` on a connection the caller was just given: here, on one of ``taskExecutor``'s
    /// threads, or else on one of the pool's.
    private func runImmediately<R: Sendable>(
        _ connection: PooledConnection,
        _ body: @escaping @Sendable (MemcachedConnection) throws -> R
    ) async throws -> R {
        let cancellation = LeaseCancellation()
        return try await withTaskCancellationHandler {
            if taskExecutor.isCurrentThread {
                return try runHere(connection, body, cancellation)
            }
            return try await withCheckedThrowingContinuation { continuation in
                lend(connection, body, continuation, cancellation)
            }
        } onCancel: {
            cancellation.cancel()
        }
    }

    /// Runs a lease on the calling thread, one of ``taskExecutor``'s, where blocking is expected:
    /// no hand-off to another thread and no suspension. Waiters the connection goes to next are
    /// served on one of the pool's threads, so that the caller returns at once.
    private func runHere<R>(
        _ connection: PooledConnection,
        _ body: (MemcachedConnection) throws -> R,
        _ cancellation: LeaseCancellation
    ) throws -> R {
        let outcome = connection.run(body, cancellation: cancellation)
        let next = takeBack(connection, reusable: outcome.reusable, failure: outcome.result.error)
        if !next.isEmpty {
            threadPool.submit { _ in self.carryOut(next) }
        }
        return try outcome.result.get()
    }

    /// A connection without waiting, or `nil` when every one is leased.
    private func immediateConnection(_ state: inout State) throws -> PooledConnection? {
        switch state.machine.immediateLease() {
        case nil, .wait:
            return nil
        case .lend(let connection):
            return connection
        case .create:
            return try createConnection(&state)
        case .fail(let refusal):
            throw error(refusal)
        }
    }

    /// Clones the template for a place the machine reserved. It copies memory only (sockets
    /// open at a connection's first command), so it is done under the lock, which also keeps the
    /// template single-threaded. When it fails, the place is given back; the caller reports the
    /// error to whoever the connection was for.
    private func createConnection(_ state: inout State) throws -> PooledConnection {
        do {
            guard let template = state.template else {
                throw MemcachedError.poolClosed()
            }
            let connection = PooledConnection(handle: try Handle(cloning: template.handle))
            state.liveHandles += 1
            return connection
        } catch {
            // Nobody waits while a place is free, so this only gives the place back; should the
            // machine still hand it on, that runs on one of the pool's threads.
            var plan = Plan()
            settle(state.machine.creationFailed(now: .now), into: &plan, &state)
            if !plan.isEmpty {
                let leftOver = plan
                threadPool.submit { _ in self.carryOut(leftOver) }
            }
            throw error
        }
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
            self.carryOut(self.runLease(connection, body, continuation, cancellation))
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
    ) -> Plan {
        let outcome = connection.run(body, cancellation: cancellation)
        // Taken back before the holder resumes, so that it finds the pool as its lease left it
        // (the connection idle, or the next waiter's).
        let next = takeBack(connection, reusable: outcome.reusable, failure: outcome.result.error)
        continuation.resume(with: outcome.result)
        return next
    }

    /// Takes a connection back after a lease: to lend again, or, when it may be out of step with
    /// a server, freed here (on the calling thread, one of the pool's or of ``taskExecutor``'s:
    /// freeing talks to the servers) and its place given on.
    private func takeBack(_ connection: PooledConnection, reusable: Bool, failure: (any Error)?) -> Plan {
        if reusable {
            return plan { $0.machine.connectionReturned(connection, now: .now) }
        }
        connection.free()
        logger.debug(
            "memcached pool discarded a connection that may be out of step with a server",
            metadata: ["error": "\(failure.map { "\($0)" } ?? "caught by the caller")"]
        )
        return plan { state in
            state.liveHandles -= 1
            return state.machine.connectionDiscarded(now: .now)
        }
    }

    /// Suspends until the waiter's work has run on a connection, the deadline passes, the task is
    /// cancelled or the pool closes, whichever comes first. Each of those resumes the waiter only
    /// after the machine gave it up under the lock, so exactly one of them does.
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
            if withState({ $0.machine.cancelled(WaiterID(waiter: waiter)) }) {
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
        let enqueued = withState { state -> Enqueued in
            // Cancellation may have come before the waiter was queued, when it found nothing to
            // remove: check here, under the same lock.
            if Task.isCancelled {
                return .failed(CancellationError())
            }
            // A connection may have come back since the first attempt.
            switch state.machine.leaseRequested(WaiterID(waiter: waiter), now: .now) {
            case .lend(let connection):
                return .lend(connection)
            case .create:
                do {
                    return .lend(try createConnection(&state))
                } catch {
                    return .failed(error)
                }
            case .wait(let timerDeadline):
                if let timerDeadline {
                    state.timer = scheduleTimer(at: timerDeadline)
                }
                return .queued
            case .fail(let refusal):
                return .failed(error(refusal))
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

    // MARK: - Coalesced reads

    /// Reads one key. With a connection free, as a lease of its own; otherwise the read joins the
    /// batch that waits for the next free connection (or starts one), and that connection serves
    /// the whole batch with one multi-get (``CommandBatch``).
    ///
    /// - Parameters:
    ///   - requiresCAS: Whether the caller needs the hit's CAS token (a `gets`).
    ///   - context: The caller's logger and span, for a read on a connection of its own; a batch
    ///     logs with the configuration's logger.
    ///   - decode: Decodes a hit as the caller's type.
    /// - Returns: The decoded value, or `nil` for a miss.
    /// - Throws: As ``withConnection(_:)`` does, and the key's own error: an invalid key (before
    ///   anything is queued), a value that does not decode, its server's failure.
    @usableFromInline
    func read(
        _ key: String,
        requiresCAS: Bool = false,
        context: CallContext,
        decode: @escaping ReadDecoder
    ) async throws -> (any Sendable)? {
        try Task.checkCancellation()
        // An invalid key fails alone, never the batch it would join; counted here, since no
        // connection sees it.
        var bytes = key
        do {
            try bytes.withUTF8 { _ = try validateKey($0, key: key) }
        } catch {
            if context.measured {
                metrics?.countError(requiresCAS ? .gets : .get, error)
            }
            throw error
        }
        if let connection = try withState({ try immediateConnection(&$0) }) {
            return try await runImmediately(
                connection,
                context.applied { try $0.read(key, requiresCAS: requiresCAS, decode: decode) }
            )
        }
        let read = CoalescedRead(
            key: key,
            requiresCAS: requiresCAS,
            measured: context.measured,
            deadline: .now.advanced(by: waitTimeout),
            decode: decode
        )
        return try await joinAndWait([read], handingOver: read.wait(with:), cancel: read.cancel)
    }

    /// Runs a fire-and-forget write (of a client configured with
    /// ``MemcachedConfiguration/noReply``). With a connection free, as a lease of its own;
    /// otherwise it joins the batch that waits for the next free connection (or starts one),
    /// which sends it with the batch's other writes in one flush
    /// (``MemcachedClient/Options/coalescesWrites``).
    ///
    /// - Parameters:
    ///   - key: The key it writes, named in the errors it may be answered with.
    ///   - name: The command, as the batch counts it in the metrics once it is flushed.
    ///   - command: The write on a connection; in a batch, its flush is held back.
    /// - Returns: What `command` returned, once its bytes are written.
    /// - Throws: As ``withConnection(_:)`` does, and the write's own failure, or the failure that
    ///   leaves it unknown whether it arrived (``MemcachedConnection/sendEach(_:stopsOn:_:)``).
    func write(
        _ key: String,
        as name: MemcachedCommand,
        _ command: @escaping @Sendable (MemcachedConnection) throws -> Bool
    ) async throws -> Bool {
        try Task.checkCancellation()
        if let connection = try withState({ try immediateConnection(&$0) }) {
            return try await runImmediately(connection, command)
        }
        let write = QueuedWrite(key: key, name: name, deadline: .now.advanced(by: waitTimeout), command: command)
        return try await joinAndWait([write], handingOver: write.wait(with:), cancel: write.cancel)
    }

    /// Hands the caller's continuation over (`handingOver`, which answers it at once when the task
    /// was cancelled first), then adds `commands` to the batch being formed, and waits for the
    /// answer. Cancellation runs `cancel`, which answers the caller, and takes the commands out
    /// of their batch.
    ///
    /// - Parameter together: Whether the commands must share one batch (``join(_:together:)``).
    private func joinAndWait<Value: Sendable>(
        _ commands: [any BatchedCommand],
        together: Bool = false,
        handingOver: (CheckedContinuation<Value, any Error>) -> Bool,
        cancel: @escaping @Sendable () -> Void
    ) async throws -> Value {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                if handingOver(continuation) {
                    join(commands, together: together)
                }
            }
        } onCancel: {
            cancel()
            for command in commands {
                commandCancelled(command)
            }
        }
    }

    /// What ``readMany(_:decode:alone:)`` did: ran the caller's own multi-get on a connection of
    /// its own, or served each key as a read in one batch.
    @usableFromInline
    enum ReadManyOutcome<Alone: Sendable>: Sendable {
        case alone(Alone)
        /// The keys as the caller knows them (without repeats), and each one's value, miss or
        /// error, in that order. A key's own failure is a ``CoalescedKeyFailure``.
        case coalesced(keys: [String], answers: [Result<(any Sendable)?, any Error>])
    }

    /// Reads a few keys (a small `getMulti`): with a connection free, runs `alone` on it;
    /// otherwise its keys join one batch together, each as a single read would, and the call
    /// resumes once all are answered. Keys that do not fit in one batch wait for a connection of
    /// their own instead: split over batches, they would cost a hand-off and a round trip each.
    ///
    /// - Parameters:
    ///   - keyCount: The caller's keys, counted as failed when they fail the checks.
    ///   - prepareKeys: Checks the keys and returns them without repeats, as the caller knows
    ///     them and as sent (prefixed); called only when no connection is free.
    ///   - decode: Decodes a hit as the caller's type.
    ///   - alone: The caller's own multi-get, for a connection of its own.
    @usableFromInline
    func readMany<Alone: Sendable>(
        keyCount: Int,
        _ prepareKeys: () throws -> (keys: [String], sent: [String]),
        decode: @escaping ReadDecoder,
        alone: @escaping @Sendable (MemcachedConnection) throws -> Alone
    ) async throws -> ReadManyOutcome<Alone> {
        try Task.checkCancellation()
        if let connection = try withState({ try immediateConnection(&$0) }) {
            return .alone(try await runImmediately(connection, alone))
        }
        let (keys, sent): ([String], [String])
        do {
            (keys, sent) = try prepareKeys()
        } catch {
            // Counted here, since no connection sees the call.
            metrics?.countError(.getMulti, error, by: keyCount)
            throw error
        }
        guard sent.count <= maximumBatchSize else {
            return .alone(try await withConnection(alone))
        }
        let group = MultiKeyRead(count: sent.count)
        let deadline = ContinuousClock.now.advanced(by: waitTimeout)
        let parts = sent.enumerated().map { index, key in
            CoalescedRead(key: key, deadline: deadline, decode: decode, partOf: group, index: index)
        }
        let answers = try await joinAndWait(parts, together: true, handingOver: group.wait(with:)) {
            group.cancel()
            for part in parts {
                part.cancel()
            }
        }
        return .coalesced(keys: keys, answers: answers)
    }

    /// A batch whose every command was cancelled leaves the queue: nobody waits for it any more.
    private func commandCancelled(_ command: any BatchedCommand) {
        withState { state in
            guard let batch = command.batch else { return }
            batch.waitingCommands -= 1
            if batch.waitingCommands == 0, state.machine.cancelled(WaiterID(waiter: batch)) {
                state.left(batch)
            }
        }
    }

    /// A batch waited ``waitTimeout``: its commands that waited that long fail with
    /// ``MemcachedError/Code/poolTimeout``; those that joined later wait on in the next batch,
    /// so that each command waits at least its own full ``waitTimeout`` (and at most twice that).
    func batchTimedOut(_ batch: CommandBatch) {
        let now = ContinuousClock.now
        for command in batch.commands where command.isWaiting {
            if command.deadline <= now {
                command.fail(timeoutError())
            } else {
                join([command])
            }
        }
    }

    /// Adds commands to the batch being formed, or starts batches for them (as many commands in
    /// each as it takes), each of which waits for a connection or gets one at once.
    ///
    /// - Parameter together: Whether the commands must share one batch (a multi-get's keys, at
    ///   most a batch's worth, distinct): they join the forming batch only when all fit in it.
    private func join(_ commands: [any BatchedCommand], together: Bool = false) {
        var run: [(CommandBatch, PooledConnection)] = []
        var failed: [(CommandBatch, any Error)] = []
        withState { state in
            // Commands cancelled on their way here are answered already, and counted in no batch.
            var pending = commands.filter(\.isWaiting)[...]
            if let batch = state.formingBatch,
                !together
                    || (batch.count + pending.count <= maximumBatchSize && pending.allSatisfy { batch.canTake($0) })
            {
                while let command = pending.first, batch.count < maximumBatchSize, batch.canTake(command) {
                    batch.add(command)
                    state.queuedCommands += 1
                    pending.removeFirst()
                }
            }
            while let first = pending.popFirst() {
                let batch = CommandBatch(first)
                while let command = pending.first, batch.count < maximumBatchSize, batch.canTake(command) {
                    batch.add(command)
                    pending.removeFirst()
                }
                switch state.machine.leaseRequested(WaiterID(waiter: batch), now: .now) {
                case .lend(let connection):
                    run.append((batch, connection))
                case .create:
                    do {
                        run.append((batch, try createConnection(&state)))
                    } catch {
                        failed.append((batch, error))
                    }
                case .wait(let timerDeadline):
                    if let timerDeadline {
                        state.timer = scheduleTimer(at: timerDeadline)
                    }
                    state.formingBatch = batch
                    state.queuedCommands += batch.count
                case .fail(let refusal):
                    failed.append((batch, error(refusal)))
                }
            }
        }
        for (batch, connection) in run {
            threadPool.submit { work in
                guard work == .active else {
                    batch.fail(MemcachedError.poolClosed())
                    return
                }
                self.carryOut(self.runBatch(batch, on: connection))
            }
        }
        for (batch, error) in failed {
            batch.fail(error)
        }
    }

    /// Serves a batch on `connection` and takes the connection back, as ``runLease`` does for one
    /// lease. Called on one of the pool's threads.
    func runBatch(_ batch: CommandBatch, on connection: PooledConnection) -> Plan {
        withState { state in
            state.batchesServed += 1
            state.commandsServedInBatches += batch.count
        }
        poolMetrics?.recordBatch(commands: batch.count)
        let outcome = connection.run({ try batch.serve(on: $0) }, cancellation: LeaseCancellation())
        if case .failure(let error) = outcome.result {
            batch.fail(error)
        }
        return takeBack(connection, reusable: outcome.reusable, failure: outcome.result.error)
    }

    // MARK: - Timing out

    /// Schedules the timer for `deadline` on the timer loop. It holds the pool weakly, so that a
    /// pending timer never keeps a dropped pool alive. Called under the lock.
    private func scheduleTimer(at deadline: ContinuousClock.Instant) -> Scheduled<Void> {
        let delay = ContinuousClock.now.duration(to: deadline)
        // Never more than a century (``waitTimeout`` is capped there), so it fits in nanoseconds.
        let nanoseconds = delay.components.seconds * 1_000_000_000 + delay.components.attoseconds / 1_000_000_000
        return timerLoop.scheduleTask(in: .nanoseconds(max(0, nanoseconds))) { [weak self] in
            self?.timerFired(scheduledFor: deadline)
        }
    }

    /// Fails the waiters whose deadline has passed with ``MemcachedError/Code/poolTimeout`` and
    /// sets the timer for the next one, as the machine says.
    private func timerFired(scheduledFor deadline: ContinuousClock.Instant) {
        let expired = withState { state -> [WaiterID] in
            let (expired, next) = state.machine.deadlinePassed(scheduledFor: deadline, now: .now)
            for waiter in expired {
                state.left(waiter.waiter)
            }
            if let next {
                state.timer = scheduleTimer(at: next)
            } else if state.machine.timer == nil {
                state.timer = nil
            }
            return expired
        }
        for waiter in expired {
            waiter.waiter.timeOut(in: self)
        }
    }

    func timeoutError() -> MemcachedError {
        MemcachedError(
            code: .poolTimeout,
            message: "no connection became free within \(waitTimeout); all \(maximumConnections) were in use"
        )
    }

    private func error(_ refusal: PoolStateMachine<PooledConnection, WaiterID>.Refusal) -> MemcachedError {
        switch refusal {
        case .closed: MemcachedError.poolClosed()
        case .timedOut: timeoutError()
        }
    }

    // MARK: - Returning

    /// What the thread that took a connection back does after the lock is released.
    struct Plan {
        /// Waiters to fail, and why.
        var failures: [(any Waiter, any Error)] = []
        /// Waiters whose wait reached ``waitTimeout`` before a connection came.
        var expired: [any Waiter] = []
        /// What to do with the connection.
        var next: Next?
        /// ``close()``, to resume: the last connection is freed.
        var drained: CheckedContinuation<Void, Never>?

        /// Whether there is nothing to do.
        var isEmpty: Bool {
            next == nil && failures.isEmpty && expired.isEmpty && drained == nil
        }

        enum Next {
            /// Run the waiter's work on the connection.
            case lend(any Waiter, PooledConnection)
            /// Free the connection: the pool is closing.
            case free(PooledConnection)
        }
    }

    /// Applies an event to the machine under the lock and turns its outcome into a plan.
    private func plan(
        _ event: (inout State) -> PoolStateMachine<PooledConnection, WaiterID>.ReturnOutcome
    ) -> Plan {
        withState { state in
            var plan = Plan()
            settle(event(&state), into: &plan, &state)
            return plan
        }
    }

    /// Adds what the machine decided to `plan`. A place handed to a waiter becomes a fresh clone;
    /// when cloning fails, that waiter fails with the error and the place goes to the next one.
    /// Called under the lock.
    private func settle(
        _ outcome: PoolStateMachine<PooledConnection, WaiterID>.ReturnOutcome,
        into plan: inout Plan,
        _ state: inout State
    ) {
        var outcome = outcome
        while true {
            for waiter in outcome.expired {
                state.left(waiter.waiter)
                plan.expired.append(waiter.waiter)
            }
            if outcome.drained, let drainWaiter = state.drainWaiter {
                state.drainWaiter = nil
                plan.drained = drainWaiter
            }
            switch outcome.handing {
            case .none:
                return
            case .lend(let connection, let waiter):
                state.left(waiter.waiter)
                plan.next = .lend(waiter.waiter, connection)
                return
            case .free(let connection):
                plan.next = .free(connection)
                return
            case .create(let waiter):
                state.left(waiter.waiter)
                guard let template = state.template else {
                    // Unreachable: the machine hands places out only while running.
                    plan.failures.append((waiter.waiter, MemcachedError.poolClosed()))
                    outcome = state.machine.creationFailed(now: .now)
                    continue
                }
                do {
                    let connection = PooledConnection(handle: try Handle(cloning: template.handle))
                    state.liveHandles += 1
                    plan.next = .lend(waiter.waiter, connection)
                    return
                } catch {
                    plan.failures.append((waiter.waiter, error))
                    outcome = state.machine.creationFailed(now: .now)
                }
            }
        }
    }

    /// Carries out a plan on the thread that took a connection back, until the connection is idle
    /// or freed: runs each waiter's work in turn on the same connection.
    private func carryOut(_ first: Plan) {
        var plan = first
        while true {
            for waiter in plan.expired {
                waiter.timeOut(in: self)
            }
            for (waiter, error) in plan.failures {
                waiter.fail(error)
            }
            plan.drained?.resume()
            switch plan.next {
            case nil:
                return
            case .lend(let waiter, let connection):
                plan = waiter.run(connection, in: self)
            case .free(let connection):
                connection.free()
                plan = connectionFreed()
            }
        }
    }

    /// Counts a freed connection; resumes ``close()`` when it was the last.
    private func connectionFreed() -> Plan {
        withState { state in
            state.liveHandles -= 1
            var plan = Plan()
            if state.machine.connectionFreed(), let drainWaiter = state.drainWaiter {
                state.drainWaiter = nil
                plan.drained = drainWaiter
            }
            return plan
        }
    }

    // MARK: - Closing

    private enum CloseStep {
        case first(idle: [PooledConnection], waiters: [WaiterID], timer: Scheduled<Void>?)
        case follow
        case done
    }

    /// Fails every waiter and every later lease with ``MemcachedError/Code/poolClosed``, frees
    /// the idle connections at once and the leased ones as they come back, then stops the
    /// threads. Returns when all of that is done; later calls wait for the first one.
    func close() async {
        let step = withState { state -> CloseStep in
            switch state.machine.close() {
            case .alreadyClosing:
                return state.closed ? .done : .follow
            case .close(let waiters, let idle, _, _):
                // The template never opened a socket, so freeing it sends nothing.
                state.template?.handle.close()
                state.template = nil
                state.liveHandles -= 1
                state.formingBatch = nil
                state.queuedCommands = 0
                defer { state.timer = nil }
                return .first(idle: idle, waiters: waiters, timer: state.timer)
            }
        }
        switch step {
        case .done:
            return
        case .follow:
            await withCheckedContinuation { continuation in
                let closed = state.withLockedValue { state in
                    guard state.closed else {
                        state.closeFollowers.append(continuation)
                        return false
                    }
                    return true
                }
                if closed {
                    continuation.resume()
                }
            }
        case .first(let idle, let waiters, let timer):
            timer?.cancel()
            for waiter in waiters {
                waiter.waiter.fail(MemcachedError.poolClosed())
            }
            for connection in idle {
                threadPool.submit { _ in
                    // Freed on one of the pool's threads, never on a cooperative one: freeing
                    // talks to the servers. The threads are not stopped before this has run.
                    connection.free()
                    self.carryOut(self.connectionFreed())
                }
            }
            await withCheckedContinuation { continuation in
                let drained = state.withLockedValue { state in
                    guard state.machine.phase == .closed else {
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
            // Tasks running on the executor's threads finish their current job there.
            taskExecutor.stop()
            let followers = state.withLockedValue { state in
                state.closed = true
                defer { state.closeFollowers = [] }
                return state.closeFollowers
            }
            for follower in followers {
                follower.resume()
            }
            logger.debug("memcached pool closed")
        }
    }

    /// Changes the pool's state under its lock, then, when its gauges changed, reports them
    /// (``MemcachedMetrics``): the one way the pool's state changes. Reported under the lock, so
    /// that two changes cannot report out of order and leave a stale value.
    @inline(__always)
    private func withState<Result>(_ body: (inout State) throws -> Result) rethrows -> Result {
        try state.withLockedValue { state in
            defer {
                if let poolMetrics {
                    let gauges = PoolGauges(
                        open: state.machine.openConnections,
                        leased: state.machine.openConnections - state.machine.idleCount,
                        waitingLeases: state.machine.waiterCount,
                        queuedCommands: state.queuedCommands
                    )
                    if gauges != state.reportedGauges {
                        state.reportedGauges = gauges
                        poolMetrics.record(gauges)
                    }
                }
            }
            return try body(&state)
        }
    }

    // MARK: - Observing

    /// Handles created and not yet freed, the template included; zero once closed.
    var liveHandleCount: Int {
        state.withLockedValue { $0.liveHandles }
    }

    /// Connections that exist now: idle, leased or being freed.
    var openConnectionCount: Int {
        state.withLockedValue { $0.machine.openConnections }
    }

    /// Tasks waiting for a connection now.
    var waiterCount: Int {
        state.withLockedValue { $0.machine.waiterCount }
    }

    /// Commands waiting in batches for a connection (``MemcachedClient/Options/coalescesReads``,
    /// ``MemcachedClient/Options/coalescesWrites``).
    var queuedCommandCount: Int {
        state.withLockedValue { $0.queuedCommands }
    }

    /// How many commands the batch that later commands join holds; 0 when there is none.
    var formingBatchCount: Int {
        state.withLockedValue { $0.formingBatch?.count ?? 0 }
    }

    /// Batches of coalesced commands served so far, and the commands they served.
    var coalescedCommands: (batches: Int, commands: Int) {
        state.withLockedValue { ($0.batchesServed, $0.commandsServedInBatches) }
    }

    /// Whether the timer is set: from the first queued waiter until it fires and finds the queue
    /// empty, or the pool closes.
    var isSweeping: Bool {
        state.withLockedValue { $0.machine.timer != nil }
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
