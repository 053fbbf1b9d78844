import NIOCore

/// The logic of ``ConnectionPool`` as a value: it takes events (a lease requested, a connection
/// returned or discarded, a deadline passed, a waiter cancelled, close) and returns what to do,
/// and does nothing itself. No threads, sockets, clocks or continuations: the time of each event
/// is a parameter, so every transition can be tested on its own (`PoolStateMachineTests`).
///
/// `Connection` is what the pool lends; `Waiter` names a task waiting for one. The pool runs each
/// returned action after releasing its lock: it lends, creates, frees, resumes and schedules.
///
/// **Accounting.** ``openConnections`` counts every connection that exists (idle, leased, being
/// freed) and every place reserved for one being created. It never exceeds the maximum.
///
/// **The wait queue.** Every waiter waits at most the same ``waitTimeout``, so arrival order is
/// deadline order: a FIFO queue holds them, and the earliest deadline is always at its front.
/// Cancellation only forgets the waiter (a dictionary removal); its entry is skipped when it
/// reaches the front. Every operation is O(1) amortized, whatever the number of waiters.
///
/// **Timeouts.** One timer per pool, set for the front waiter's deadline: the machine says when
/// to schedule it (``LeaseAction/wait(scheduleTimerAt:)``) and ``deadlinePassed(scheduledFor:now:)`` says which
/// waiters to fail and when the next timer is due. A connection that comes back fails the waiters
/// whose deadline has passed before the timer came round, rather than serving them late.
struct PoolStateMachine<Connection, Waiter: Hashable> {
    enum Phase: Equatable {
        case running
        /// ``close()`` has started: no new leases; it waits for the open connections.
        case closing
        /// Every connection is freed.
        case closed
    }

    let maximumConnections: Int
    let waitTimeout: Duration
    private(set) var phase = Phase.running
    /// Connections ready to lend, the most recently returned last. Empty while tasks wait.
    private var idle: [Connection] = []
    /// Connections that exist, and places reserved for connections being created.
    private(set) var openConnections = 0
    /// The waiters still waiting, with their deadlines.
    private var deadlines: [Waiter: ContinuousClock.Instant] = [:]
    /// Every waiter in arrival order, including cancelled ones not yet skipped.
    private var queue = CircularBuffer<Waiter>()
    /// The deadline the pool's timer is set for, if one is set.
    private(set) var timer: ContinuousClock.Instant?
    /// Whether ``close()`` waits for the last connection to be freed.
    private var closeWaits = false

    init(maximumConnections: Int, waitTimeout: Duration) {
        self.maximumConnections = maximumConnections
        self.waitTimeout = waitTimeout
    }

    /// Tasks waiting for a connection.
    var waiterCount: Int { deadlines.count }

    /// Connections ready to lend.
    var idleCount: Int { idle.count }

    // MARK: - Leasing

    /// Why the pool refuses a lease.
    enum Refusal: Equatable {
        /// ``MemcachedError/Code/poolClosed``.
        case closed
        /// ``MemcachedError/Code/poolTimeout``.
        case timedOut
    }

    /// What to do with a lease request.
    enum LeaseAction {
        /// Lend this idle connection.
        case lend(Connection)
        /// Create a connection and lend it; its place is reserved (see ``creationFailed()``).
        case create
        /// The waiter is queued; set the pool's timer for the instant given, if any.
        case wait(scheduleTimerAt: ContinuousClock.Instant?)
        /// Fail the request.
        case fail(Refusal)
    }

    /// A task asks for a connection at `now`. When none is free, `waiter` is queued until
    /// `now + waitTimeout`.
    ///
    /// Each request's `waiter` is new: a waiter that was cancelled or served is never queued again.
    mutating func leaseRequested(_ waiter: Waiter, now: ContinuousClock.Instant) -> LeaseAction {
        if let action = immediateLease() {
            return action
        }
        guard waitTimeout > .zero else { return .fail(.timedOut) }
        precondition(deadlines[waiter] == nil, "a waiter is queued twice")
        let deadline = now.advanced(by: waitTimeout)
        deadlines[waiter] = deadline
        queue.append(waiter)
        guard timer == nil else { return .wait(scheduleTimerAt: nil) }
        timer = deadline
        return .wait(scheduleTimerAt: deadline)
    }

    /// A lease request answered without queueing: an idle connection, a new one, or a refusal;
    /// `nil` when the request would wait. The pool asks this first, so that a command that finds a
    /// connection allocates no waiter.
    mutating func immediateLease() -> LeaseAction? {
        guard phase == .running else { return .fail(.closed) }
        if let connection = idle.popLast() {
            return .lend(connection)
        }
        if openConnections < maximumConnections {
            openConnections += 1
            return .create
        }
        return nil
    }

    /// A connection the machine asked for (``LeaseAction/create``,
    /// ``Handing/create(for:)``) could not be created: its place is free again.
    ///
    /// - Returns: What to do with the place: nothing, or, when a waiter was handed the place,
    ///   the same as for a discarded connection.
    mutating func creationFailed(now: ContinuousClock.Instant) -> ReturnOutcome {
        placeFreed(now: now)
    }

    // MARK: - Returning

    /// What to do with what a lease gave back.
    enum Handing {
        /// Nothing more: the connection is idle, or its place is free.
        case none
        /// Run this waiter's work on the connection.
        case lend(Connection, to: Waiter)
        /// Create a connection for this waiter, in the place of a discarded one.
        case create(for: Waiter)
        /// Free the connection: the pool is closing. Report ``connectionFreed()`` afterwards.
        case free(Connection)
    }

    /// What returning a connection, or its place, leads to.
    struct ReturnOutcome {
        /// Waiters whose deadline passed before a connection came: fail them with
        /// ``Refusal/timedOut``.
        var expired: [Waiter] = []
        /// The connection's, or the place's, next use.
        var handing = Handing.none
        /// Whether ``close()`` can now finish: the last connection is gone.
        var drained = false
    }

    /// A lease ended and its connection may be lent again.
    mutating func connectionReturned(_ connection: Connection, now: ContinuousClock.Instant) -> ReturnOutcome {
        guard phase == .running else {
            return ReturnOutcome(handing: .free(connection))
        }
        var outcome = ReturnOutcome()
        outcome.expired = removeExpiredWaiters(now: now)
        if let waiter = popWaiter() {
            outcome.handing = .lend(connection, to: waiter)
        } else {
            idle.append(connection)
        }
        return outcome
    }

    /// A lease ended and its connection was freed (it may be out of step with a server): its
    /// place goes to the longest waiter, as a new connection.
    mutating func connectionDiscarded(now: ContinuousClock.Instant) -> ReturnOutcome {
        placeFreed(now: now)
    }

    /// A connection the machine said to free (``Handing/free(_:)``, ``CloseAction``) is freed.
    ///
    /// - Returns: Whether ``close()`` can now finish.
    mutating func connectionFreed() -> Bool {
        openConnections -= 1
        return drainedIfEmpty()
    }

    private mutating func placeFreed(now: ContinuousClock.Instant) -> ReturnOutcome {
        guard phase == .running else {
            openConnections -= 1
            return ReturnOutcome(drained: drainedIfEmpty())
        }
        var outcome = ReturnOutcome()
        outcome.expired = removeExpiredWaiters(now: now)
        if let waiter = popWaiter() {
            outcome.handing = .create(for: waiter)
        } else {
            openConnections -= 1
        }
        return outcome
    }

    // MARK: - Timing out and cancelling

    /// The pool's timer, set for `scheduledFor`, fired at `now`. A timer that is no longer the
    /// one the machine set (its waiters were served, and a later waiter set another) does nothing.
    ///
    /// - Returns: The waiters to fail with ``Refusal/timedOut``, and the instant to set the
    ///   timer for next, if any waiter is left.
    mutating func deadlinePassed(
        scheduledFor: ContinuousClock.Instant,
        now: ContinuousClock.Instant
    ) -> (expired: [Waiter], scheduleTimerAt: ContinuousClock.Instant?) {
        guard timer == scheduledFor else { return ([], nil) }
        let expired = removeExpiredWaiters(now: now)
        guard phase == .running, let next = firstWaiterDeadline() else {
            timer = nil
            return (expired, nil)
        }
        timer = next
        return (expired, next)
    }

    /// The waiter's task was cancelled.
    ///
    /// - Returns: Whether it was still waiting, and so is to be failed with `CancellationError`
    ///   by the caller; `false` when a connection, a timeout or close got to it first.
    mutating func cancelled(_ waiter: Waiter) -> Bool {
        deadlines.removeValue(forKey: waiter) != nil
    }

    // MARK: - Closing

    /// What ``close()`` leads to.
    enum CloseAction {
        /// The first close: fail these waiters with ``Refusal/closed``, free these idle connections
        /// (report each with ``connectionFreed()``), cancel the timer if `cancelTimer`, then wait
        /// for the open connections unless `drained`.
        case close(waiters: [Waiter], idle: [Connection], cancelTimer: Bool, drained: Bool)
        /// Another close is under way (or done): wait for it.
        case alreadyClosing
    }

    /// Closes the pool: no new leases, every waiter failed, idle connections freed, leased ones
    /// freed as they come back.
    mutating func close() -> CloseAction {
        guard phase == .running else { return .alreadyClosing }
        phase = .closing
        var waiters: [Waiter] = []
        while let waiter = popWaiter() {
            waiters.append(waiter)
        }
        let idle = self.idle
        self.idle = []
        let cancelTimer = timer != nil
        timer = nil
        closeWaits = true
        // The idle connections stay counted until each is reported freed.
        return .close(waiters: waiters, idle: idle, cancelTimer: cancelTimer, drained: drainedIfEmpty())
    }

    /// After ``close()``: whether the last connection is gone, once, moving to ``Phase/closed``.
    private mutating func drainedIfEmpty() -> Bool {
        guard phase == .closing, closeWaits, openConnections == 0 else { return false }
        closeWaits = false
        phase = .closed
        return true
    }

    // MARK: - The queue

    /// The longest-waiting waiter still waiting, removed from the queue.
    private mutating func popWaiter() -> Waiter? {
        while let waiter = queue.popFirst() {
            if deadlines.removeValue(forKey: waiter) != nil {
                return waiter
            }
        }
        return nil
    }

    /// The deadline of the longest-waiting waiter still waiting; drops cancelled entries in front.
    private mutating func firstWaiterDeadline() -> ContinuousClock.Instant? {
        while let waiter = queue.first {
            if let deadline = deadlines[waiter] {
                return deadline
            }
            queue.removeFirst()
        }
        return nil
    }

    /// Removes the waiters whose deadline is `now` or earlier, from the front of the queue.
    private mutating func removeExpiredWaiters(now: ContinuousClock.Instant) -> [Waiter] {
        var expired: [Waiter] = []
        while let deadline = firstWaiterDeadline(), deadline <= now, let waiter = popWaiter() {
            expired.append(waiter)
        }
        return expired
    }
}

extension PoolStateMachine: Sendable where Connection: Sendable, Waiter: Sendable {}
