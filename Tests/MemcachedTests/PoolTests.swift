import Dispatch
import Foundation
import MemcachedTestSupport
import Testing

@testable import Memcached

/// The pool behind ``MemcachedClient``: correctness under load, threads, waiting, closing and
/// discarding, against real servers and a real silent socket.
@Suite("MemcachedClient pool", .threadPerJob, .timeLimit(.minutes(5)))
struct PoolTests {
    // MARK: - Load

    @Test(
        "64 tasks x 500 mixed operations through 8 connections to 2 servers: every read and count is exact",
        arguments: [false, true]
    )
    func concurrentMixedOperations(coalescesReads: Bool) async throws {
        try await withMemcached(servers: 2) { cluster in
            let connectionsBefore = try cluster.servers.map { try statistic("total_connections", of: $0) }
            // A generous wait: this test is about correctness, and in a full parallel run other
            // suites' blocking tests can hold the cooperative threads the waiters resume on.
            let client = try makeClient(
                cluster,
                maximumConnections: 8,
                waitTimeout: .seconds(120),
                coalescesReads: coalescesReads
            )
            let models = try await runMixedTasks(client, operations: 500)

            // Read everything back in one batch, on the pool, and from the servers' own counts.
            let expectedText = models.expectedText
            let expectedCounters = models.expectedCounters
            let allTextKeys = models.flatMap(\.textKeys)
            let text = try await client.getMulti(allTextKeys, as: String.self).hits
            #expect(text == expectedText)
            let counters = try await client.getMulti(models.map(\.counterKey), as: Int.self).hits
            #expect(counters == expectedCounters)
            let items = try cluster.servers.map { try statistic("curr_items", of: $0) }
            #expect(items.reduce(0, +) == expectedText.count + expectedCounters.count, "per server: \(items)")
            #expect(items.allSatisfy { $0 > 0 }, "keys land on both servers: \(items)")

            // No connection was discarded or opened beyond the bound: each server saw at most 8
            // sockets from the pool (plus one for each of the two statistics reads).
            #expect(client.pool.openConnectionCount <= 8)
            #expect(client.pool.liveHandleCount == client.pool.openConnectionCount + 1)
            let connectionsAfter = try cluster.servers.map { try statistic("total_connections", of: $0) }
            for (before, after) in zip(connectionsBefore, connectionsAfter) {
                #expect(after - before - 2 <= 8, "opened \(after - before - 2) connections")
            }
            await client.close()
            #expect(client.pool.liveHandleCount == 0)
        }
    }

    // MARK: - Threads

    @Test("calls stuck on a silent server never hold their caller's thread, and time out within the timeout + 50%")
    func stuckCallsDoNotBlockTheCaller() async throws {
        // The calls, the ticker and their continuations run on one serial executor of this test's
        // own instead of Swift's shared cooperative pool: other tests block that pool's few threads
        // while they start and stop memcached, which would stall the ticker for reasons of theirs.
        // One thread is also the strictest setting: a single call blocking the thread it was made
        // on would stop the ticker and hold up every other call behind it.
        let executor = SerialTestExecutor(label: "stuck-calls")
        try await withTaskExecutorPreference(executor) {
            let silent = try SilentServer()
            defer { silent.stop() }
            // More stuck calls than Swift has cooperative threads, as if they were on them.
            let stuckCalls = max(8, ProcessInfo.processInfo.activeProcessorCount + 2)
            // Scaled with the sanitizers' slowdown, as the stall bound below is a share of it.
            let timeout = Duration.seconds(1).scaledForTests
            let client = try makeClient(servers: [silent.address], maximumConnections: stuckCalls) {
                $0.timeout = timeout
                $0.connectTimeout = timeout
            }
            let clock = ContinuousClock()
            let ticks = Locked<[ContinuousClock.Instant]>([])
            // Woken by a Dispatch timer rather than Task.sleep, whose timer fires on the shared pool.
            let timer = DispatchQueue(label: "ticker-timer")
            let ticker = Task(executorPreference: executor) {
                while !Task.isCancelled {
                    ticks.withLock { $0.append(clock.now) }
                    await withCheckedContinuation { continuation in
                        timer.asyncAfter(deadline: .now() + .milliseconds(10)) { continuation.resume() }
                    }
                }
            }
            try await waitUntil { !ticks.value.isEmpty }

            let windowStart = clock.now
            let outcomes = await withTaskGroup(of: (Duration, (any Error)?).self) { group in
                for index in 0..<stuckCalls {
                    group.addTask {
                        let start = clock.now
                        do {
                            _ = try await client.get("stuck-\(index)", as: String.self)
                            return (start.duration(to: clock.now), nil)
                        } catch {
                            return (start.duration(to: clock.now), error)
                        }
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            let windowEnd = clock.now
            ticker.cancel()
            await ticker.value
            await client.close()

            #expect(silent.acceptedConnectionCount == stuckCalls, "every call had a connection of its own")
            for (elapsed, error) in outcomes {
                #expect((error as? MemcachedError)?.code == .timeout, "got \(String(describing: error))")
                #expect(elapsed < (timeout * 1.5).scaledForTests, "took \(elapsed)")
                #expect(elapsed >= timeout * 0.9, "failed early, after \(elapsed)")
            }
            let inWindow = ticks.value.filter { $0 >= windowStart && $0 <= windowEnd }
            let marks = [windowStart] + inWindow + [windowEnd]
            let longestGap = zip(marks, marks.dropFirst()).map { $0.duration(to: $1) }.max()!
            // A call that held the executor's thread would stall the ticker for the whole call, at
            // least 0.9 × the timeout (every call times out), and the serial executor would run the
            // calls one after the other. So the bound sits just below one call: a loaded machine
            // delayed ticks by up to 450 ms (1 of 20 loaded suite runs), never by a whole call.
            #expect(inWindow.count >= 2, "only \(inWindow.count) ticks in \(windowStart.duration(to: windowEnd))")
            #expect(longestGap < timeout * 0.9, "the ticker stalled for \(longestGap)")
        }
    }

    // MARK: - Waiting

    @Test("a task waiting for a connection gives up with poolTimeout when the pool stays exhausted")
    func waitTimesOut() async throws {
        // Timed on an executor of its own: see stuckCallsDoNotBlockTheCaller().
        let executor = SerialTestExecutor(label: "wait-timeout")
        try await withTaskExecutorPreference(executor) {
            try await withMemcached { cluster in
                let waitTimeout = Duration.milliseconds(300)
                let client = try makeClient(cluster, maximumConnections: 1, waitTimeout: waitTimeout)
                let holder = try await ConnectionHolder(client)
                let clock = ContinuousClock()
                let start = clock.now
                let error = await #expect(throws: MemcachedError.self) { try await client.get("k", as: String.self) }
                let elapsed = start.duration(to: clock.now)
                #expect(error?.code == .poolTimeout)
                #expect(elapsed >= waitTimeout, "gave up after \(elapsed)")
                // Generous: the wait's timer is a Task.sleep, which fires on Swift's shared pool, and
                // other tests block that pool for up to a second while they stop servers.
                #expect(elapsed < (waitTimeout + .seconds(2)).scaledForTests, "gave up after \(elapsed)")
                #expect(client.pool.waiterCount == 0)

                // The held connection comes back, and the pool serves again.
                try await holder.release()
                #expect(try await client.set("k", "v"))
                #expect(try await client.get("k", as: String.self) == "v")
                #expect(client.pool.openConnectionCount == 1)
                await client.close()
            }
        }
    }

    @Test("a zero wait fails at once when every connection is in use")
    func zeroWait() async throws {
        try await withMemcached { cluster in
            let client = try makeClient(cluster, maximumConnections: 1, waitTimeout: .zero)
            let holder = try await ConnectionHolder(client)
            let error = await #expect(throws: MemcachedError.self) { try await client.delete("k") }
            #expect(error?.code == .poolTimeout)
            try await holder.release()
            #expect(try await client.delete("k") == false)
            await client.close()
        }
    }

    @Test("cancelling a task that waits for a connection ends its wait promptly")
    func cancellationEndsTheWait() async throws {
        // Timed on an executor of its own: see stuckCallsDoNotBlockTheCaller().
        let executor = SerialTestExecutor(label: "cancellation")
        try await withTaskExecutorPreference(executor) {
            try await withMemcached { cluster in
                let client = try makeClient(cluster, maximumConnections: 1, waitTimeout: .seconds(30))
                let holder = try await ConnectionHolder(client)
                let waiter = Task(executorPreference: executor) { try await client.get("k", as: String.self) }
                try await waitUntil { client.pool.waiterCount == 1 }

                let clock = ContinuousClock()
                let start = clock.now
                waiter.cancel()
                let result = await waiter.result
                let elapsed = start.duration(to: clock.now)
                #expect(throws: CancellationError.self) { try result.get() }
                #expect(elapsed < Duration.milliseconds(200).scaledForTests, "the cancelled wait lasted \(elapsed)")
                #expect(client.pool.waiterCount == 0)

                // A task cancelled before it asks never leases at all.
                let early = Task(executorPreference: executor) {
                    withUnsafeCurrentTask { $0?.cancel() }
                    return try await client.set("k", "v")
                }
                await #expect(throws: CancellationError.self) { try await early.value }

                try await holder.release()
                #expect(try await client.set("k", "v"))
                #expect(client.pool.openConnectionCount == 1, "the cancelled waiters took no connection with them")
                await client.close()
            }
        }
    }

    @Test("waiting tasks get connections in the order they asked")
    func waitersAreServedInOrder() async throws {
        try await withMemcached { cluster in
            // A wait no run reaches: under ThreadSanitizer the first waiter's 5 s ran out before
            // the fourth had queued (1 CI run). The test is about order, not time.
            let client = try makeClient(cluster, maximumConnections: 1, waitTimeout: .seconds(120))
            let holder = try await ConnectionHolder(client)
            let order = Locked<[Int]>([])
            var waiters: [Task<Void, any Error>] = []
            for index in 0..<4 {
                waiters.append(
                    Task(executorPreference: ThreadPerJobExecutor()) {
                        try await client.withConnection { _ in order.withLock { $0.append(index) } }
                    }
                )
                try await waitUntil { client.pool.waiterCount == index + 1 }
            }
            try await holder.release()
            for waiter in waiters {
                try await waiter.value
            }
            #expect(order.value == [0, 1, 2, 3])
            await client.close()
        }
    }

    // MARK: - Queued work

    @Test(
        "64 tasks x 200 mixed operations through 2 connections: every waiter is served and every answer is exact",
        arguments: [false, true]
    )
    func manyWaitersOnATinyPool(coalescesReads: Bool) async throws {
        try await withMemcached { cluster in
            // A generous wait: see concurrentMixedOperations().
            let client = try makeClient(
                cluster,
                maximumConnections: 2,
                waitTimeout: .seconds(120),
                coalescesReads: coalescesReads
            )
            let done = Locked(false)
            let peakWaiters = Locked(0)
            let sampler = Task(executorPreference: ThreadPerJobExecutor()) {
                while !done.value {
                    let waiters = client.pool.waiterCount
                    peakWaiters.withLock { $0 = max($0, waiters) }
                    try? await Task.sleep(for: .milliseconds(1))
                }
            }
            let models = try await runMixedTasks(client, operations: 200)
            done.withLock { $0 = true }
            await sampler.value

            #expect(try await client.getMulti(models.flatMap(\.textKeys), as: String.self).hits == models.expectedText)
            #expect(try await client.getMulti(models.map(\.counterKey), as: Int.self).hits == models.expectedCounters)
            #expect(peakWaiters.value > 0, "tasks did queue for the two connections")
            #expect(client.pool.waiterCount == 0)
            #expect(client.pool.openConnectionCount == 2, "no connection was discarded or lost")
            #expect(client.pool.liveHandleCount == 3)
            await client.close()
            #expect(client.pool.liveHandleCount == 0)
        }
    }

    @Test("one sweeper times out consecutive waiters, each after its own full wait, and starts again for later ones")
    func sweeperTimesOutConsecutiveWaiters() async throws {
        // Timed on an executor of its own: see stuckCallsDoNotBlockTheCaller().
        let executor = SerialTestExecutor(label: "sweeper")
        try await withTaskExecutorPreference(executor) {
            try await withMemcached { cluster in
                let waitTimeout = Duration.milliseconds(400)
                let client = try makeClient(cluster, maximumConnections: 1, waitTimeout: waitTimeout)
                let holder = try await ConnectionHolder(client)
                let clock = ContinuousClock()
                @Sendable func timedWait(_ index: Int) async -> (index: Int, elapsed: Duration, error: (any Error)?) {
                    let start = clock.now
                    do {
                        _ = try await client.get("k\(index)", as: String.self)
                        return (index, start.duration(to: clock.now), nil)
                    } catch {
                        return (index, start.duration(to: clock.now), error)
                    }
                }
                // Three waiters 150 ms apart: if the sweeper failed every waiter at the first
                // deadline, the later ones would give up after 250 and 100 ms.
                let failures = Locked<[Int]>([])
                var waits: [Task<(index: Int, elapsed: Duration, error: (any Error)?), Never>] = []
                for index in 0..<3 {
                    waits.append(
                        Task(executorPreference: executor) {
                            let outcome = await timedWait(index)
                            failures.withLock { $0.append(index) }
                            return outcome
                        }
                    )
                    try await Task.sleep(for: .milliseconds(150))
                }
                for wait in waits {
                    let (index, elapsed, error) = await wait.value
                    let code = (error as? MemcachedError)?.code
                    #expect(code == .poolTimeout, "waiter \(index): \(String(describing: error))")
                    #expect(elapsed >= waitTimeout, "waiter \(index) gave up after \(elapsed)")
                    // Generous: see waitTimesOut().
                    #expect(
                        elapsed < (waitTimeout + .seconds(2)).scaledForTests,
                        "waiter \(index) gave up after \(elapsed)"
                    )
                }
                #expect(failures.value == [0, 1, 2])
                #expect(client.pool.waiterCount == 0)
                try await waitUntil { !client.pool.isSweeping }

                // The sweeper ended with the queue; the next waiter starts another one.
                let late = await Task(executorPreference: executor) { await timedWait(3) }.value
                #expect((late.error as? MemcachedError)?.code == .poolTimeout, "\(String(describing: late.error))")
                #expect(late.elapsed >= waitTimeout, "gave up after \(late.elapsed)")
                #expect(late.elapsed < (waitTimeout + .seconds(2)).scaledForTests, "gave up after \(late.elapsed)")

                try await holder.release()
                #expect(try await client.set("k", "v"))
                #expect(client.pool.openConnectionCount == 1)
                await client.close()
                #expect(!client.pool.isSweeping)
            }
        }
    }

    @Test("waiters time out with poolTimeout while every connection hangs on a silent server")
    func waitersTimeOutBehindHungConnections() async throws {
        // Timed on an executor of its own: see stuckCallsDoNotBlockTheCaller().
        let executor = SerialTestExecutor(label: "hung")
        try await withTaskExecutorPreference(executor) {
            let silent = try SilentServer()
            defer { silent.stop() }
            let waitTimeout = Duration.milliseconds(300)
            // The hung calls must outlast every waiter the bounds below allow: a waiter still
            // queued when they time out gets a fresh connection and hangs too. A fixed 3 seconds
            // did not, when the sanitizer runs' load held waiters past it (bound: 6.9 s there).
            let waiterBound = (waitTimeout + .seconds(2)).scaledForTests
            let commandTimeout = waiterBound + .seconds(1)
            let client = try makeClient(servers: [silent.address], maximumConnections: 2, waitTimeout: waitTimeout) {
                $0.timeout = commandTimeout
                $0.connectTimeout = commandTimeout
            }
            let clock = ContinuousClock()
            let stuck = (0..<2).map { index in
                Task(executorPreference: executor) { try await client.get("stuck-\(index)", as: String.self) }
            }
            try await waitUntil { silent.acceptedConnectionCount == 2 }

            let outcomes = await withTaskGroup(of: (Duration, (any Error)?).self) { group in
                for index in 0..<4 {
                    group.addTask {
                        let start = clock.now
                        do {
                            _ = try await client.get("waiter-\(index)", as: String.self)
                            return (start.duration(to: clock.now), nil)
                        } catch {
                            return (start.duration(to: clock.now), error)
                        }
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            for (elapsed, error) in outcomes {
                #expect((error as? MemcachedError)?.code == .poolTimeout, "got \(String(describing: error))")
                #expect(elapsed >= waitTimeout, "gave up after \(elapsed)")
                // Generous (see waitTimesOut()), and before the hung calls end.
                #expect(elapsed < waiterBound, "gave up after \(elapsed)")
            }
            #expect(client.pool.waiterCount == 0)

            for call in stuck {
                let error = await #expect(throws: MemcachedError.self) { try await call.value }
                #expect(error?.code == .timeout)
            }
            // Both hung connections were discarded, and nobody was waiting for their places.
            #expect(client.pool.openConnectionCount == 0)
            #expect(client.pool.liveHandleCount == 1, "only the template")
            #expect(silent.acceptedConnectionCount == 2)
            await client.close()
            #expect(client.pool.liveHandleCount == 0)
        }
    }

    @Test("cancelling one of several queued waiters removes only it, and every connection still serves")
    func cancellingAQueuedWaiterKeepsTheConnections() async throws {
        // Timed on an executor of its own: see stuckCallsDoNotBlockTheCaller().
        let executor = SerialTestExecutor(label: "cancel-queued")
        try await withTaskExecutorPreference(executor) {
            try await withMemcached { cluster in
                let client = try makeClient(cluster, maximumConnections: 2, waitTimeout: .seconds(30))
                let holders = [try await ConnectionHolder(client), try await ConnectionHolder(client)]
                let order = Locked<[Int]>([])
                var waiters: [Task<Void, any Error>] = []
                for index in 0..<3 {
                    waiters.append(
                        Task(executorPreference: executor) {
                            try await client.withConnection { _ in order.withLock { $0.append(index) } }
                        }
                    )
                    try await waitUntil { client.pool.waiterCount == index + 1 }
                }

                let clock = ContinuousClock()
                let start = clock.now
                waiters[1].cancel()
                let result = await waiters[1].result
                let elapsed = start.duration(to: clock.now)
                #expect(throws: CancellationError.self) { try result.get() }
                #expect(elapsed < Duration.milliseconds(200).scaledForTests, "the cancelled wait lasted \(elapsed)")
                #expect(client.pool.waiterCount == 2)

                // One connection back at a time: the first goes to the first waiter still queued.
                // Released together, the two waiters' commands run on two threads in either order.
                try await holders[0].release()
                try await waiters[0].value
                try await holders[1].release()
                try await waiters[2].value
                #expect(order.value == [0, 2])
                #expect(client.pool.waiterCount == 0)

                // Both connections are back: two holders get one each without waiting.
                let again = [try await ConnectionHolder(client), try await ConnectionHolder(client)]
                #expect(client.pool.openConnectionCount == 2)
                #expect(client.pool.waiterCount == 0)
                for holder in again {
                    try await holder.release()
                }
                #expect(client.pool.liveHandleCount == 3)
                await client.close()
                #expect(client.pool.liveHandleCount == 0)
            }
        }
    }

    @Test("cancelling a waiter whose work has started stops its later commands before they send anything")
    func cancellationAfterTheWorkStarted() async throws {
        try await withMemcached { cluster in
            let client = try makeClient(cluster, maximumConnections: 1, waitTimeout: .seconds(30))
            let holder = try await ConnectionHolder(client)
            let gate = DispatchSemaphore(value: 0)
            let started = Locked(false)
            let waiter = Task(executorPreference: ThreadPerJobExecutor()) {
                try await client.withConnection { connection in
                    started.withLock { $0 = true }
                    _ = gate.wait(timeout: .now() + 30)
                    try connection.set("k", "after")
                    return 42
                }
            }
            try await waitUntil { client.pool.waiterCount == 1 }
            try await holder.release()
            try await waitUntil { started.value }
            waiter.cancel()
            gate.signal()
            await #expect(throws: CancellationError.self) { try await waiter.value }
            #expect(try await client.get("k", as: String.self) == nil, "the set was never sent")
            #expect(client.pool.openConnectionCount == 1, "nothing was interrupted: the connection is kept")
            #expect(client.pool.waiterCount == 0)
            await client.close()
        }
    }

    @Test("when a leased connection is discarded, the first waiter gets a fresh clone in its place")
    func discardedConnectionsPlaceGoesToTheWaiter() async throws {
        try await withMemcached { cluster in
            let server = cluster.servers[0]
            let client = try makeClient(cluster, maximumConnections: 1, waitTimeout: .seconds(30)) {
                $0.timeout = .milliseconds(300)
            }
            #expect(try await client.set("k", "v"))
            let first = try await client.currentHandle()
            let gate = DispatchSemaphore(value: 0)
            let leased = Locked(false)
            // Unstructured tasks do not inherit the suite's executor: given one explicitly, so
            // that they never wait for a cooperative thread other tests may be holding.
            let doomed = Task(executorPreference: ThreadPerJobExecutor()) {
                try await client.withConnection { connection in
                    leased.withLock { $0 = true }
                    _ = gate.wait(timeout: .now() + 30)
                    return try connection.get("k", as: String.self)
                }
            }
            try await waitUntil { leased.value }
            let waiter = Task(executorPreference: ThreadPerJobExecutor()) { try await client.currentHandle() }
            try await waitUntil { client.pool.waiterCount == 1 }

            server.pause()
            gate.signal()
            let timedOut = await #expect(throws: MemcachedError.self) { try await doomed.value }
            server.resume()
            #expect(timedOut?.code == .timeout)
            let second = try await waiter.value
            #expect(first.isFreed, "the timed-out connection was freed")
            #expect(second.handle !== first.handle)
            #expect(!second.isFreed)
            #expect(client.pool.openConnectionCount == 1)
            #expect(client.pool.liveHandleCount == 2)
            #expect(client.pool.waiterCount == 0)
            #expect(try await client.get("k", as: String.self) == "v")
            await client.close()
        }
    }

    // MARK: - Closing

    @Test("close() fails waiters and new calls at once, and waits for the leased connection")
    func closeWithLeasedConnection() async throws {
        // Timed on an executor of its own: see stuckCallsDoNotBlockTheCaller().
        let executor = SerialTestExecutor(label: "close")
        try await withTaskExecutorPreference(executor) {
            try await withMemcached { cluster in
                let client = try makeClient(cluster, maximumConnections: 1, waitTimeout: .seconds(30))
                let handles = Locked<[WeakHandle]>([])
                let holder = try await ConnectionHolder(client) { connection in
                    handles.withLock { $0.append(WeakHandle(connection.handle)) }
                    _ = try connection.set("held", "yes")
                }
                let waiter = Task(executorPreference: executor) { try await client.get("k", as: String.self) }
                try await waitUntil { client.pool.waiterCount == 1 }

                let clock = ContinuousClock()
                let closeStart = clock.now
                let closed = Locked(0)
                let closing = (0..<2).map { _ in
                    Task(executorPreference: executor) {
                        await client.close()
                        closed.withLock { $0 += 1 }
                    }
                }
                let waiterError = await #expect(throws: MemcachedError.self) { try await waiter.value }
                #expect(waiterError?.code == .poolClosed)
                #expect(
                    closeStart.duration(to: clock.now) < Duration.milliseconds(200).scaledForTests,
                    "the waiter was failed late"
                )
                let lateCall = await #expect(throws: MemcachedError.self) { try await client.set("k", "v") }
                #expect(lateCall?.code == .poolClosed)

                // The leased connection is still in use: close() waits for it, the template is gone.
                try await Task.sleep(for: .milliseconds(100))
                #expect(closed.value == 0, "neither close() returned")
                #expect(client.pool.liveHandleCount == 1)
                #expect(handles.value.allSatisfy { !$0.isFreed })

                try await holder.release()
                for task in closing {
                    await task.value
                }
                #expect(closed.value == 2)
                #expect(client.pool.liveHandleCount == 0)
                #expect(handles.value.count == 1)
                #expect(handles.value.allSatisfy { $0.isFreed }, "the returned connection's handle was freed")
                try await waitUntil { handles.value.allSatisfy(\.isDeallocated) }
                #expect(try cluster.servers[0].rawCommand("get held\r\n").contains("VALUE held"))
            }
        }
    }

    @Test("after close(), every call fails with poolClosed and no handle is left")
    func closeFreesEveryHandle() async throws {
        try await withMemcached(servers: 2) { cluster in
            let connections = 4
            let client = try makeClient(cluster, maximumConnections: connections)
            let handles = Locked<[WeakHandle]>([])
            // Lease every connection at once, so that all of them exist and then sit idle.
            let arrived = Locked(0)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<connections {
                    group.addTask {
                        try await client.withConnection { connection in
                            handles.withLock { $0.append(WeakHandle(connection.handle)) }
                            try connection.set("k\(index)", index)
                            arrived.withLock { $0 += 1 }
                            let deadline = ContinuousClock.now + .seconds(5)
                            while arrived.value < connections, ContinuousClock.now < deadline {
                                usleep(1_000)
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(handles.value.count == connections)
            #expect(client.pool.openConnectionCount == connections)
            #expect(client.pool.liveHandleCount == connections + 1)

            await client.close()
            #expect(client.pool.liveHandleCount == 0)
            #expect(client.pool.openConnectionCount == 0)
            #expect(handles.value.allSatisfy { $0.isFreed }, "every connection's handle was freed")
            try await waitUntil { handles.value.allSatisfy(\.isDeallocated) }

            let calls: [(String, @Sendable () async throws -> Void)] = [
                ("get", { _ = try await client.get("k0", as: Int.self) }),
                ("getMulti", { _ = try await client.getMulti(["k0"], as: Int.self) }),
                ("set", { _ = try await client.set("k0", 1) }),
                ("delete", { _ = try await client.delete("k0") }),
                ("increment", { _ = try await client.increment("k0") }),
                ("versions", { _ = try await client.versions() }),
                ("server(forKey:)", { _ = try await client.server(forKey: "k0") }),
                ("withConnection", { _ = try await client.withConnection { _ in 1 } }),
            ]
            for (name, call) in calls {
                let error = await #expect(throws: MemcachedError.self, "\(name)") { try await call() }
                #expect(error?.code == .poolClosed, "\(name)")
            }
            // Closing again returns at once.
            await client.close()
            #expect(
                try statistic("curr_items", of: cluster.servers[0]) + statistic("curr_items", of: cluster.servers[1])
                    == 4
            )
        }
    }

    @Test("close() fails every queued waiter with poolClosed, frees every handle, and the sweeper keeps nothing alive")
    func closeWithQueuedWaiters() async throws {
        // Timed on an executor of its own: see stuckCallsDoNotBlockTheCaller().
        let executor = SerialTestExecutor(label: "close-queued")
        try await withTaskExecutorPreference(executor) {
            try await withMemcached { cluster in
                let pool = WeakPool()
                do {
                    // A long wait: the sweeper sleeps through the whole test unless close() ends it.
                    let client = try makeClient(cluster, maximumConnections: 2, waitTimeout: .seconds(600))
                    pool.value = client.pool
                    let holders = [try await ConnectionHolder(client), try await ConnectionHolder(client)]
                    let waiters = (0..<5).map { index in
                        Task(executorPreference: executor) { try await client.get("k\(index)", as: String.self) }
                    }
                    try await waitUntil { client.pool.waiterCount == 5 }
                    #expect(client.pool.isSweeping)

                    let clock = ContinuousClock()
                    let closeStart = clock.now
                    let closing = Task(executorPreference: executor) { await client.close() }
                    for waiter in waiters {
                        let error = await #expect(throws: MemcachedError.self) { try await waiter.value }
                        #expect(error?.code == .poolClosed)
                    }
                    #expect(
                        closeStart.duration(to: clock.now) < Duration.milliseconds(200).scaledForTests,
                        "the waiters were failed late"
                    )
                    #expect(client.pool.waiterCount == 0)
                    #expect(!client.pool.isSweeping)
                    #expect(client.pool.liveHandleCount == 2, "the two leased connections")

                    for holder in holders {
                        try await holder.release()
                    }
                    await closing.value
                    #expect(client.pool.liveHandleCount == 0)
                    #expect(client.pool.openConnectionCount == 0)
                }
                // Nothing, the cancelled sweeper included, holds on to the pool.
                try await waitUntil { pool.value == nil }
            }
        }
    }

    @Test("a sleeping sweeper does not keep a client dropped without close() alive")
    func sweeperDoesNotKeepADroppedPoolAlive() async throws {
        try await withMemcached { cluster in
            let handles = Locked<[WeakHandle]>([])
            let pool = WeakPool()
            do {
                let client = try makeClient(cluster, maximumConnections: 1, waitTimeout: .seconds(600))
                pool.value = client.pool
                let holder = try await ConnectionHolder(client) { connection in
                    handles.withLock { $0.append(WeakHandle(connection.handle)) }
                }
                let waiter = Task(executorPreference: ThreadPerJobExecutor()) { try await client.set("k", "v") }
                try await waitUntil { client.pool.waiterCount == 1 }
                try await holder.release()
                #expect(try await waiter.value)
                // Served long before its deadline: the sweeper sleeps on, until the pool goes.
                #expect(client.pool.isSweeping)
            }
            try await waitUntil { pool.value == nil }
            try await waitUntil { handles.value.allSatisfy(\.isDeallocated) }
        }
    }

    @Test("a client dropped without close() still frees its handles")
    func deinitFreesHandles() async throws {
        try await withMemcached { cluster in
            let handles = Locked<[WeakHandle]>([])
            do {
                let client = try makeClient(cluster, maximumConnections: 2)
                for index in 0..<3 {
                    try await client.withConnection { connection in
                        handles.withLock { $0.append(WeakHandle(connection.handle)) }
                        try connection.set("k\(index)", index)
                    }
                }
            }
            #expect(!handles.value.isEmpty)
            // The handles are freed on the client's threads as it goes away.
            try await waitUntil { handles.value.allSatisfy(\.isDeallocated) }
        }
    }

    // MARK: - Discarding

    @Test("a connection that timed out is discarded and the next lease gets a fresh clone")
    func timedOutConnectionIsDiscarded() async throws {
        try await withMemcached { cluster in
            let server = cluster.servers[0]
            let client = try makeClient(cluster, maximumConnections: 1) { $0.timeout = .milliseconds(300) }
            #expect(try await client.set("k", "v"))
            let first = try await client.currentHandle()

            // Expected negatives and refused keys leave the connection in step: it is kept.
            #expect(try await client.get("missing", as: String.self) == nil)
            #expect(try await client.add("k", "other") == false)
            await #expect(throws: MemcachedError.self) { try await client.get("bad key", as: String.self) }
            #expect(try await client.currentHandle().handle === first.handle)

            server.pause()
            let timedOut = await #expect(throws: MemcachedError.self) { try await client.get("k", as: String.self) }
            server.resume()
            #expect(timedOut?.code == .timeout)
            #expect(first.isFreed, "the timed-out connection's handle was freed, not returned")
            #expect(client.pool.openConnectionCount == 0)
            #expect(client.pool.liveHandleCount == 1, "only the template")

            #expect(try await client.get("k", as: String.self) == "v")
            let second = try await client.currentHandle()
            #expect(!second.isFreed)
            #expect(second.handle !== first.handle)
            #expect(client.pool.openConnectionCount == 1)

            // A timeout the caller catches inside withConnection still costs the connection.
            server.pause()
            let caught = try await client.withConnection { connection in
                do {
                    _ = try connection.get("k", as: String.self)
                    return false
                } catch {
                    return (error as? MemcachedError)?.code == .timeout
                }
            }
            server.resume()
            #expect(caught)
            #expect(second.isFreed)
            #expect(try await client.get("k", as: String.self) == "v")
            await client.close()
        }
    }

    @Test("a refused connection keeps the pooled connection, with libmemcached's memory of the failure")
    func refusedConnectionIsKept() async throws {
        let refusing = try RefusingLoopbackPort()
        defer { refusing.release() }
        let client = try makeClient(servers: [refusing.address], maximumConnections: 1) {
            $0.timeout = .milliseconds(300)
            $0.connectTimeout = .milliseconds(300)
        }
        let first = try await client.currentHandle()
        let refused = await #expect(throws: MemcachedError.self) { try await client.get("k", as: String.self) }
        let expected: [MemcachedError.Code] = [.connectionFailure, .serverTemporarilyDisabled, .serverMarkedDead]
        #expect(refused.map { expected.contains($0.code) } == true, "\(String(describing: refused))")
        #expect(!first.isFreed)
        #expect(try await client.currentHandle().handle === first.handle)
        await client.close()
        #expect(first.isFreed)
    }
}

// MARK: - Helpers

/// A task executor with a serial queue of its own, for tests that time things: Swift's shared
/// cooperative threads are blocked now and then by other tests starting and stopping servers.
final class SerialTestExecutor: TaskExecutor {
    private let queue: DispatchQueue

    init(label: String) {
        queue = DispatchQueue(label: label)
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        queue.async { job.runSynchronously(on: executor) }
    }
}

/// A weak reference to a pooled connection's handle, which tests pass between threads.
///
/// The pool frees a handle (`memcached_free`) before it hands the lease back, but the object
/// itself may outlive that by a moment on the thread that ran the work: ``isFreed`` is true
/// at once, ``isDeallocated`` soon after.
final class WeakHandle: @unchecked Sendable {
    weak var handle: Handle?

    init(_ handle: Handle) {
        self.handle = handle
    }

    /// Whether the libmemcached handle has been freed.
    var isFreed: Bool { handle?.pointer == nil }

    /// Whether nothing references the handle any more.
    var isDeallocated: Bool { handle == nil }
}

/// A weak reference to a client's pool, to see that nothing keeps it alive.
final class WeakPool: @unchecked Sendable {
    weak var value: ConnectionPool?
}

extension MemcachedClient {
    /// A weak reference to the handle of the connection the next lease gets.
    func currentHandle() async throws -> WeakHandle {
        try await withConnection { WeakHandle($0.handle) }
    }
}

/// Holds one of a client's connections, inside `withConnection`, until ``release()``.
struct ConnectionHolder {
    private let gate = DispatchSemaphore(value: 0)
    private let task: Task<Void, any Error>

    /// Leases a connection, runs `body` with it, and returns once the connection is held.
    init(
        _ client: MemcachedClient,
        _ body: @escaping @Sendable (MemcachedConnection) throws -> Void = { _ in }
    ) async throws {
        let gate = gate
        let (leased, leasedContinuation) = AsyncStream<Void>.makeStream()
        task = Task(executorPreference: ThreadPerJobExecutor()) {
            try await client.withConnection { connection in
                defer { leasedContinuation.finish() }
                try body(connection)
                leasedContinuation.yield()
                // Bounded, so that a failing test cannot hold one of the client's threads forever.
                _ = gate.wait(timeout: .now() + 30)
            }
        }
        for await _ in leased {
            break
        }
    }

    /// Lets the holder return its connection, and waits until `withConnection` has returned.
    func release() async throws {
        gate.signal()
        try await task.value
    }
}

/// Runs `tasks` concurrent tasks of `operations` mixed commands each on `client`
/// (``runMixedOperations(task:operations:client:)``) and records every wrong answer any of them saw.
///
/// - Parameter executor: Where the tasks run. By default Dispatch threads rather than the suite's
///   thread per job: 64 tasks of hundreds of operations each resume tens of thousands of times,
///   and a new thread for each starved other tests' tasks for over 30 s in loaded runs.
func runMixedTasks(
    _ client: MemcachedClient,
    tasks: Int = 64,
    operations: Int,
    on executor: any TaskExecutor = ConcurrentTestExecutor(label: "mixed-operations"),
    sourceLocation: SourceLocation = #_sourceLocation
) async throws -> [TaskModel] {
    let models = try await withTaskExecutorPreference(executor) {
        try await withThrowingTaskGroup(of: TaskModel.self) { group in
            for task in 0..<tasks {
                group.addTask { try await runMixedOperations(task: task, operations: operations, client: client) }
            }
            return try await group.reduce(into: [TaskModel]()) { $0.append($1) }
        }
    }
    let mismatches = models.flatMap(\.mismatches)
    #expect(
        mismatches.isEmpty,
        "\(mismatches.count) mismatches, first: \(mismatches.prefix(5))",
        sourceLocation: sourceLocation
    )
    return models
}

extension [TaskModel] {
    /// What every task's text keys should hold.
    var expectedText: [String: String] {
        reduce(into: [:]) { $0.merge($1.text) { a, _ in a } }
    }

    /// What every task's counter should hold.
    var expectedCounters: [String: Int] {
        reduce(into: [:]) { all, model in
            if let counter = model.counter { all[model.counterKey] = counter }
        }
    }
}

/// Polls `condition` every 5 ms until it holds, failing the test after 30 seconds: a hang
/// detector, not a timing check (a loaded machine once took over 5 s to start a task).
func waitUntil(
    _ condition: () -> Bool,
    sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    let deadline = ContinuousClock.now + .seconds(30)
    while !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("the condition did not hold within 30 seconds", sourceLocation: sourceLocation)
            return
        }
        try await Task.sleep(for: .milliseconds(5))
    }
}

/// One task's keys and what it expects them to hold, built while it runs.
struct TaskModel: Sendable {
    let task: Int
    var text: [String: String] = [:]
    var counter: Int?
    var mismatches: [String] = []

    var textKeys: [String] { (0..<8).map { "t\(task)-k\($0)" } }
    var counterKey: String { "t\(task)-counter" }
}

/// Runs a deterministic mix of every kind of command on one task's own keys, checking each
/// answer against what the task itself wrote.
func runMixedOperations(task: Int, operations: Int, client: MemcachedClient) async throws -> TaskModel {
    var model = TaskModel(task: task)
    func check(_ condition: Bool, _ what: @autoclosure () -> String) {
        if !condition { model.mismatches.append("task \(task): \(what())") }
    }
    // A small linear congruential generator: the same sequence every run, different per task.
    var seed = UInt64(task) &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
    func next(_ bound: Int) -> Int {
        seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return Int((seed >> 33) % UInt64(bound))
    }
    let keys = model.textKeys
    for step in 0..<operations {
        let key = keys[next(keys.count)]
        let value = "v\(task)-\(step)"
        switch next(10) {
        case 0:
            check(try await client.set(key, value), "set \(key)")
            model.text[key] = value
        case 1:
            let read = try await client.get(key, as: String.self)
            check(
                read == model.text[key],
                "get \(key): \(String(describing: read)) != \(String(describing: model.text[key]))"
            )
        case 2:
            let added = try await client.add(key, value)
            check(added == (model.text[key] == nil), "add \(key) returned \(added)")
            if added { model.text[key] = value }
        case 3:
            let replaced = try await client.replace(key, value)
            check(replaced == (model.text[key] != nil), "replace \(key) returned \(replaced)")
            if replaced { model.text[key] = value }
        case 4:
            let appended = try await client.append(key, "+")
            check(appended == (model.text[key] != nil), "append \(key) returned \(appended)")
            if appended { model.text[key]! += "+" }
        case 5:
            let deleted = try await client.delete(key)
            check(deleted == (model.text[key] != nil), "delete \(key) returned \(deleted)")
            model.text[key] = nil
        case 6:
            let counted = try await client.increment(model.counterKey, by: 3)
            check(
                counted.map(Int.init) == model.counter.map { $0 + 3 },
                "increment returned \(String(describing: counted))"
            )
            if let current = model.counter {
                model.counter = current + 3
            } else {
                check(try await client.set(model.counterKey, 0), "set counter")
                model.counter = 0
            }
        case 7:
            let all = try await client.getMulti(keys, as: String.self).hits
            check(all == model.text, "getMulti: \(all) != \(model.text)")
        case 8:
            let read = try await client.gets(key, as: String.self)
            check(read?.value == model.text[key], "gets \(key)")
            if let token = read?.token {
                check(try await client.cas(key, value, token: token), "cas \(key)")
                model.text[key] = value
            }
        default:
            let expected = model.text[key]
            let (before, after) = try await client.withConnection { connection in
                let before = try connection.get(key, as: String.self)
                try connection.set(key, value)
                return (before, try connection.get(key, as: String.self))
            }
            check(before == expected && after == value, "withConnection \(key)")
            model.text[key] = value
        }
    }
    return model
}
