import MemcachedTestSupport
import Testing

@testable import Memcached

/// ``PoolStateMachine`` on its own: every event in every phase, with connections and waiters as
/// plain integers and time as a parameter. No threads, sockets or sleeps.
@Suite("Pool state machine")
struct PoolStateMachineTests {
    typealias Machine = PoolStateMachine<Int, Int>

    static let start = ContinuousClock.now
    static let timeout = Duration.seconds(5)

    /// A machine of `maximum` connections, all created and leased.
    static func exhausted(maximum: Int = 2, waitTimeout: Duration = timeout) -> Machine {
        var machine = Machine(maximumConnections: maximum, waitTimeout: waitTimeout)
        for _ in 0..<maximum {
            guard case .create = machine.immediateLease() else {
                Issue.record("expected room for a connection")
                return machine
            }
        }
        return machine
    }

    // MARK: - Leasing

    @Test("leases create connections up to the maximum, then queue with one timer for the first waiter")
    func leasesUpToTheMaximum() {
        var machine = Machine(maximumConnections: 2, waitTimeout: Self.timeout)
        guard case .create = machine.leaseRequested(1, now: Self.start) else { return #expect(Bool(false)) }
        guard case .create = machine.leaseRequested(2, now: Self.start) else { return #expect(Bool(false)) }
        #expect(machine.openConnections == 2)
        #expect(machine.immediateLease() == nil, "a full pool answers nothing without queueing")
        guard case .wait(let timer) = machine.leaseRequested(3, now: Self.start) else { return #expect(Bool(false)) }
        #expect(timer == Self.start + Self.timeout)
        guard case .wait(let second) = machine.leaseRequested(4, now: Self.start + .seconds(1)) else {
            return #expect(Bool(false))
        }
        #expect(second == nil, "one timer per pool")
        #expect(machine.waiterCount == 2 && machine.timer == Self.start + Self.timeout)
    }

    @Test("an idle connection is lent before a new one is made, the most recently returned first")
    func idleFirst() {
        var machine = Self.exhausted(maximum: 3)
        _ = machine.connectionReturned(10, now: Self.start)
        _ = machine.connectionReturned(11, now: Self.start)
        guard case .lend(let connection) = machine.leaseRequested(1, now: Self.start) else {
            return #expect(Bool(false))
        }
        #expect(connection == 11)
        #expect(machine.idleCount == 1 && machine.openConnections == 3)
    }

    @Test("with no wait timeout a full pool refuses at once")
    func zeroWaitTimeout() {
        var machine = Self.exhausted(waitTimeout: .zero)
        guard case .fail(.timedOut) = machine.leaseRequested(1, now: Self.start) else { return #expect(Bool(false)) }
        #expect(machine.waiterCount == 0 && machine.timer == nil)
    }

    // MARK: - Returning

    @Test("a returned connection goes to the longest waiter, or idle when none waits")
    func returnedConnection() {
        var machine = Self.exhausted()
        _ = machine.leaseRequested(1, now: Self.start)
        _ = machine.leaseRequested(2, now: Self.start)
        let first = machine.connectionReturned(10, now: Self.start)
        guard case .lend(10, to: 1) = first.handing else { return #expect(Bool(false), "\(first.handing)") }
        let second = machine.connectionReturned(10, now: Self.start)
        guard case .lend(10, to: 2) = second.handing else { return #expect(Bool(false), "\(second.handing)") }
        let third = machine.connectionReturned(10, now: Self.start)
        guard case .none = third.handing else { return #expect(Bool(false), "\(third.handing)") }
        #expect(machine.idleCount == 1 && machine.openConnections == 2 && machine.waiterCount == 0)
        #expect(first.expired.isEmpty && !first.drained)
    }

    @Test("a discarded connection's place becomes a new connection for the longest waiter, or is freed")
    func discardedConnection() {
        var machine = Self.exhausted()
        _ = machine.leaseRequested(1, now: Self.start)
        guard case .create(for: 1) = machine.connectionDiscarded(now: Self.start).handing else {
            return #expect(Bool(false))
        }
        #expect(machine.openConnections == 2, "the place is the waiter's")
        guard case .none = machine.connectionDiscarded(now: Self.start).handing else { return #expect(Bool(false)) }
        #expect(machine.openConnections == 1)
    }

    @Test("a failed creation gives its place to the next waiter, or back to the pool")
    func creationFailed() {
        var machine = Self.exhausted()
        _ = machine.leaseRequested(1, now: Self.start)
        _ = machine.leaseRequested(2, now: Self.start)
        guard case .create(for: 1) = machine.connectionDiscarded(now: Self.start).handing else {
            return #expect(Bool(false))
        }
        guard case .create(for: 2) = machine.creationFailed(now: Self.start).handing else {
            return #expect(Bool(false))
        }
        guard case .none = machine.creationFailed(now: Self.start).handing else { return #expect(Bool(false)) }
        #expect(machine.openConnections == 1 && machine.waiterCount == 0)
    }

    @Test("a connection that comes back after a waiter's deadline fails that waiter instead of serving it late")
    func returnAfterDeadline() {
        var machine = Self.exhausted()
        _ = machine.leaseRequested(1, now: Self.start)
        _ = machine.leaseRequested(2, now: Self.start + .seconds(2))
        // Exactly at waiter 1's deadline: expired (the deadline is inclusive).
        let outcome = machine.connectionReturned(10, now: Self.start + Self.timeout)
        #expect(outcome.expired == [1])
        guard case .lend(10, to: 2) = outcome.handing else { return #expect(Bool(false), "\(outcome.handing)") }
        // Everyone expired: the connection goes idle.
        _ = machine.leaseRequested(3, now: Self.start)
        let late = machine.connectionReturned(11, now: Self.start + .seconds(60))
        #expect(late.expired == [3])
        guard case .none = late.handing else { return #expect(Bool(false)) }
        #expect(machine.idleCount == 1)
    }

    // MARK: - Timer

    @Test("the timer fails expired waiters and is set again for the next; a stale timer does nothing")
    func timer() {
        var machine = Self.exhausted()
        _ = machine.leaseRequested(1, now: Self.start)
        _ = machine.leaseRequested(2, now: Self.start + .seconds(1))
        _ = machine.leaseRequested(3, now: Self.start + .seconds(3))
        let first = Self.start + Self.timeout
        // Early (a timer may fire before its time): nothing expires, the same deadline is kept.
        let early = machine.deadlinePassed(scheduledFor: first, now: first - .milliseconds(1))
        #expect(early.expired.isEmpty && early.scheduleTimerAt == first)
        let fired = machine.deadlinePassed(scheduledFor: first, now: first + .seconds(1))
        #expect(fired.expired == [1, 2])
        #expect(fired.scheduleTimerAt == Self.start + .seconds(3) + Self.timeout)
        // The old timer fires again (scheduled twice by a race): ignored.
        let stale = machine.deadlinePassed(scheduledFor: first, now: first + .seconds(10))
        #expect(stale.expired.isEmpty && stale.scheduleTimerAt == nil)
        #expect(machine.waiterCount == 1)
        // Waiter 3 is served; its timer then finds nobody and stops.
        _ = machine.connectionReturned(10, now: Self.start)
        let empty = machine.deadlinePassed(scheduledFor: fired.scheduleTimerAt!, now: Self.start + .seconds(60))
        #expect(empty.expired.isEmpty && empty.scheduleTimerAt == nil && machine.timer == nil)
        // The next waiter sets a new timer.
        guard case .wait(let again) = machine.leaseRequested(4, now: Self.start + .seconds(61)) else {
            return #expect(Bool(false))
        }
        #expect(again == Self.start + .seconds(61) + Self.timeout)
    }

    // MARK: - Cancelling

    @Test("a cancelled waiter leaves at once and is never served; cancel after hand-over or expiry does nothing")
    func cancellation() {
        var machine = Self.exhausted()
        _ = machine.leaseRequested(1, now: Self.start)
        _ = machine.leaseRequested(2, now: Self.start + .seconds(1))
        _ = machine.leaseRequested(3, now: Self.start + .seconds(2))
        let wasWaiting1 = machine.cancelled(1)
        #expect(wasWaiting1)
        let wasWaiting2 = machine.cancelled(1)
        #expect(!wasWaiting2, "only once")
        #expect(machine.waiterCount == 2)
        // The timer set for waiter 1 moves on to waiter 2's deadline.
        let moved = machine.deadlinePassed(scheduledFor: Self.start + Self.timeout, now: Self.start + Self.timeout)
        #expect(moved.expired.isEmpty && moved.scheduleTimerAt == Self.start + .seconds(1) + Self.timeout)
        guard case .lend(10, to: 2) = machine.connectionReturned(10, now: Self.start).handing else {
            return #expect(Bool(false))
        }
        let wasWaiting3 = machine.cancelled(2)
        #expect(!wasWaiting3, "cancelled after the hand-over: the lease runs")
        let expired = machine.deadlinePassed(scheduledFor: moved.scheduleTimerAt!, now: Self.start + .seconds(60))
        #expect(expired.expired == [3])
        let wasWaiting4 = machine.cancelled(3)
        #expect(!wasWaiting4, "cancelled after the timeout")
    }

    // MARK: - Closing

    @Test("close fails the waiters, frees idle connections now and leased ones as they come back, then drains")
    func close() {
        var machine = Self.exhausted(maximum: 3)
        _ = machine.connectionReturned(10, now: Self.start)
        _ = machine.leaseRequested(1, now: Self.start)  // takes 10
        _ = machine.connectionReturned(11, now: Self.start)  // idle
        _ = machine.leaseRequested(2, now: Self.start)  // takes 11
        _ = machine.leaseRequested(3, now: Self.start)  // waits
        _ = machine.connectionReturned(12, now: Self.start)  // to waiter 3
        _ = machine.connectionReturned(12, now: Self.start)  // idle
        _ = machine.leaseRequested(4, now: Self.start)  // takes 12
        _ = machine.leaseRequested(5, now: Self.start)  // waits
        guard case .close(let waiters, let idle, let cancelTimer, let drained) = machine.close() else {
            return #expect(Bool(false))
        }
        #expect(waiters == [5] && idle.isEmpty && cancelTimer && !drained)
        #expect(machine.phase == .closing && machine.timer == nil)
        guard case .alreadyClosing = machine.close() else { return #expect(Bool(false)) }
        guard case .fail(.closed) = machine.leaseRequested(6, now: Self.start) else { return #expect(Bool(false)) }
        let wasWaiting5 = machine.cancelled(5)
        #expect(!wasWaiting5, "failed by close")
        // The leased connections come back: freed, the last one drains.
        guard case .free(10) = machine.connectionReturned(10, now: Self.start).handing else {
            return #expect(Bool(false))
        }
        let drained6 = machine.connectionFreed()
        #expect(!drained6)
        let discarded = machine.connectionDiscarded(now: Self.start)
        #expect(!discarded.drained)
        guard case .none = discarded.handing else { return #expect(Bool(false)) }
        guard case .free(12) = machine.connectionReturned(12, now: Self.start).handing else {
            return #expect(Bool(false))
        }
        let drained7 = machine.connectionFreed()
        #expect(drained7, "the last connection")
        #expect(machine.phase == .closed && machine.openConnections == 0)
        guard case .alreadyClosing = machine.close() else { return #expect(Bool(false)) }
    }

    @Test("close of an idle pool frees its connections and drains on the last one; of an empty pool at once")
    func closeIdleAndEmpty() {
        var machine = Self.exhausted()
        _ = machine.connectionReturned(10, now: Self.start)
        _ = machine.connectionReturned(11, now: Self.start)
        guard case .close(let waiters, let idle, let cancelTimer, let drained) = machine.close() else {
            return #expect(Bool(false))
        }
        #expect(waiters.isEmpty && Set(idle) == [10, 11] && !cancelTimer && !drained)
        let drained8 = machine.connectionFreed()
        #expect(!drained8)
        let drained9 = machine.connectionFreed()
        #expect(drained9)
        #expect(machine.phase == .closed)

        var empty = Machine(maximumConnections: 2, waitTimeout: Self.timeout)
        guard case .close(_, _, _, true) = empty.close() else { return #expect(Bool(false)) }
        #expect(empty.phase == .closed)
    }

    @Test("a creation that fails while closing gives its place back and may drain")
    func creationFailsWhileClosing() {
        var machine = Machine(maximumConnections: 1, waitTimeout: Self.timeout)
        guard case .create = machine.immediateLease() else { return #expect(Bool(false)) }
        _ = machine.close()
        let drained10 = machine.creationFailed(now: Self.start).drained
        #expect(drained10)
        #expect(machine.phase == .closed)
    }

    // MARK: - Scale and invariants

    @Test("200,000 waiters on 2 connections, half of them cancelled, are served in order in linear time")
    func manyWaiters() {
        var machine = Self.exhausted()
        let count = 200_000
        for waiter in 0..<count {
            _ = machine.leaseRequested(waiter, now: Self.start)
        }
        for waiter in stride(from: 1, to: count, by: 2) {
            let wasWaiting11 = machine.cancelled(waiter)
            #expect(wasWaiting11)
        }
        var served: [Int] = []
        served.reserveCapacity(count / 2)
        while machine.waiterCount > 0 {
            guard case .lend(_, let waiter) = machine.connectionReturned(10, now: Self.start).handing else { break }
            served.append(waiter)
        }
        #expect(served == Array(stride(from: 0, to: count, by: 2)))
    }

    @Test("random events keep every invariant: bounded connections, no double lease, each waiter answered once")
    func randomEvents() {
        var random = SplitMix64(state: 0x5EED_F00D)
        for _ in 0..<200 {
            var model = MachineModel(maximum: Int(random.next() % 4) + 1)
            for _ in 0..<400 {
                model.step(&random)
                if !model.check() { return }
            }
            model.closeAndDrain()
        }
    }
}

/// A pool driven by random events, with what a correct pool must keep true.
private struct MachineModel {
    var machine: PoolStateMachine<Int, Int>
    let maximum: Int
    var now = PoolStateMachineTests.start
    /// Connections lent and not yet returned.
    var leased: Set<Int> = []
    /// Places the machine asked to fill with a new connection.
    var creating = 0
    var idle: Set<Int> = []
    var waiting: Set<Int> = []
    /// Every waiter that got an answer (a connection, a timeout, a cancellation or close).
    var answered: Set<Int> = []
    var nextWaiter = 0
    var nextConnection = 100

    init(maximum: Int) {
        self.maximum = maximum
        machine = PoolStateMachine(maximumConnections: maximum, waitTimeout: .seconds(1))
    }

    mutating func answer(_ waiter: Int) {
        #expect(waiting.remove(waiter) != nil, "waiter \(waiter) answered but not waiting")
        #expect(answered.insert(waiter).inserted, "waiter \(waiter) answered twice")
    }

    mutating func lend(_ connection: Int) {
        #expect(leased.insert(connection).inserted, "connection \(connection) lent twice")
        idle.remove(connection)
    }

    mutating func apply(_ outcome: PoolStateMachine<Int, Int>.ReturnOutcome, _ random: inout SplitMix64) {
        for waiter in outcome.expired { answer(waiter) }
        switch outcome.handing {
        case .none: break
        case .lend(let connection, let waiter):
            answer(waiter)
            lend(connection)
        case .create(let waiter):
            answer(waiter)
            create(&random)
        case .free:
            Issue.record("free while running")
        }
    }

    /// Makes a connection the machine asked for; one in five fails, and its place is given back.
    mutating func create(_ random: inout SplitMix64) {
        if random.next() % 5 == 0 {
            apply(machine.creationFailed(now: now), &random)
        } else {
            nextConnection += 1
            lend(nextConnection)
        }
    }

    mutating func step(_ random: inout SplitMix64) {
        now += .milliseconds(Int(random.next() % 300))
        switch random.next() % 7 {
        case 0, 1:
            let waiter = nextWaiter
            nextWaiter += 1
            waiting.insert(waiter)
            switch machine.leaseRequested(waiter, now: now) {
            case .lend(let connection):
                answer(waiter)
                lend(connection)
            case .create:
                answer(waiter)
                create(&random)
            case .wait:
                break
            case .fail(let refusal):
                Issue.record("refused while running: \(refusal)")
            }
        case 2, 3:
            guard let connection = leased.randomElement(using: &random) else { return }
            leased.remove(connection)
            let outcome = machine.connectionReturned(connection, now: now)
            if case .none = outcome.handing { idle.insert(connection) }
            apply(outcome, &random)
        case 4:
            guard let connection = leased.randomElement(using: &random) else { return }
            leased.remove(connection)
            apply(machine.connectionDiscarded(now: now), &random)
        case 5:
            guard let waiter = waiting.randomElement(using: &random) else { return }
            if machine.cancelled(waiter) { answer(waiter) }
        default:
            if let timer = machine.timer {
                let fired = machine.deadlinePassed(scheduledFor: timer, now: now)
                for waiter in fired.expired { answer(waiter) }
            }
        }
    }

    /// The invariants after every event.
    func check() -> Bool {
        let open = leased.count + idle.count
        let ok =
            machine.openConnections == open && open <= maximum && machine.idleCount == idle.count
            && machine.waiterCount == waiting.count
            // Nobody waits while a connection is idle or a place is free.
            && (waiting.isEmpty || (idle.isEmpty && open == maximum))
            // A timer is set whenever somebody waits.
            && (waiting.isEmpty || machine.timer != nil)
        #expect(ok, "open \(machine.openConnections) vs \(open), idle \(idle.count), waiting \(waiting.count)")
        return ok
    }

    /// Closes, returns every leased connection and frees everything: every waiter is answered,
    /// and the pool drains exactly once, at the last connection.
    mutating func closeAndDrain() {
        guard case .close(let waiters, let idleConnections, _, var drained) = machine.close() else {
            Issue.record("close refused")
            return
        }
        for waiter in waiters { answer(waiter) }
        #expect(waiting.isEmpty, "waiters left after close: \(waiting)")
        var toFree = idleConnections.count
        for connection in leased {
            guard case .free = machine.connectionReturned(connection, now: now).handing else {
                Issue.record("a connection returned while closing was not freed")
                return
            }
            toFree += 1
        }
        for _ in 0..<toFree {
            #expect(!drained, "drained before the last connection")
            drained = machine.connectionFreed()
        }
        #expect(drained && machine.phase == .closed)
    }
}
