import Dispatch
import Foundation
import MemcachedTestSupport
import Testing

@testable import Memcached

/// ``MemcachedClient/taskExecutor``: tasks on the client's own threads run their commands where
/// they are, and everything else about a command (waiting, cancellation, closing, correctness
/// under load) is as on any other executor.
@Suite("MemcachedClient task executor", .offCooperativePool, .timeLimit(.minutes(5)))
struct TaskExecutorTests {
    @Test("a command issued on the client's executor runs on the calling thread; from elsewhere, on one of the pool's")
    func commandsRunOnTheCallingThread() async throws {
        try await withMemcached { cluster in
            let client = try makeClient(cluster, maximumConnections: 2, coalescesReads: true)
            try await client.set("probe", ThreadProbe())

            let onExecutor = try await withTaskExecutorPreference(client.taskExecutor) {
                // No suspension between reading the thread and issuing the command.
                let caller = currentThreadID()
                let leased = try await client.withConnection { _ in currentThreadID() }
                let decoded = try #require(try await client.get("probe", as: ThreadProbe.self))
                let afterwards = currentThreadID()
                return (caller, leased, decoded.decodedOn, afterwards)
            }
            #expect(onExecutor.0 == onExecutor.1, "withConnection ran on another thread")
            #expect(onExecutor.0 == onExecutor.2, "get decoded on another thread")
            #expect(onExecutor.0 == onExecutor.3, "the task moved to another thread")

            // From the test's own executor, the blocking call goes to one of the pool's threads.
            let elsewhere = try await Task(executorPreference: ThreadPerJobExecutor()) {
                let caller = currentThreadID()
                let leased = try await client.withConnection { _ in currentThreadID() }
                return (caller, leased)
            }.value
            #expect(elsewhere.0 != elsewhere.1)
            #expect(client.pool.liveHandleCount == client.pool.openConnectionCount + 1)
            await client.close()
            #expect(client.pool.liveHandleCount == 0)
        }
    }

    @Test(
        "64 tasks x 500 mixed operations on the client's executor: every read and count is exact",
        arguments: [false, true]
    )
    func mixedOperationsOnTheExecutor(coalescesReads: Bool) async throws {
        try await withMemcached(servers: 2) { cluster in
            let client = try makeClient(
                cluster,
                maximumConnections: 8,
                waitTimeout: .seconds(120),
                coalescesReads: coalescesReads
            )
            let models = try await runMixedTasks(client, operations: 500, on: client.taskExecutor)
            let text = try await client.getMulti(models.flatMap(\.textKeys), as: String.self).hits
            #expect(text == models.expectedText)
            let counters = try await client.getMulti(models.map(\.counterKey), as: Int.self).hits
            #expect(counters == models.expectedCounters)
            #expect(client.pool.openConnectionCount <= 8)
            await client.close()
            #expect(client.pool.liveHandleCount == 0)
        }
    }

    @Test("a task on the executor that finds every connection busy waits, gets its value and resumes on the executor")
    func waitingOnTheExecutor() async throws {
        try await withMemcached { cluster in
            let client = try makeClient(cluster, maximumConnections: 2, coalescesReads: false)
            try await client.set("waited", "value")
            let first = try await ConnectionHolder(client)
            let second = try await ConnectionHolder(client)
            let waiting = Task(executorPreference: client.taskExecutor) {
                let value = try await client.get("waited", as: String.self)
                return (value, client.pool.taskExecutor.isCurrentThread)
            }
            try await waitUntil { client.pool.waiterCount == 1 }
            try await first.release()
            let (value, resumedOnExecutor) = try await waiting.value
            #expect(value == "value")
            #expect(resumedOnExecutor)
            try await second.release()
            await client.close()
        }
    }

    @Test("cancelling a task whose command runs on the executor's thread interrupts the command")
    func cancellationOnTheExecutor() async throws {
        let silent = try SilentServer()
        defer { silent.stop() }
        // A timeout no run reaches: the call can only end early by being cancelled.
        let client = try makeClient(servers: [silent.address], maximumConnections: 1) {
            $0.timeout = .seconds(60)
            $0.connectTimeout = .seconds(60)
        }
        let clock = ContinuousClock()
        let ranOn = Locked<UInt?>(nil)
        let call = Task(executorPreference: client.taskExecutor) {
            let caller = currentThreadID()
            let start = clock.now
            let outcome = await result {
                try await client.withConnection { connection in
                    ranOn.withLock { $0 = currentThreadID() }
                    return try connection.get("never-answered", as: String.self)
                }
            }
            return (outcome, start.duration(to: clock.now), caller)
        }
        try await waitUntil { silent.acceptedConnectionCount == 1 }
        call.cancel()
        let (outcome, elapsed, caller) = await call.value
        #expect(ranOn.value == caller, "the command ran on the task's own thread")
        #expect(throws: CancellationError.self) { try outcome.get() }
        #expect(elapsed < .seconds(30), "the call ran for \(elapsed)")
        await client.close()
        #expect(client.pool.liveHandleCount == 0)
    }

    @Test("after close, a task preferring the executor still runs, and its commands fail with poolClosed")
    func closedClientOnTheExecutor() async throws {
        try await withMemcached { cluster in
            let client = try makeClient(cluster, maximumConnections: 2, coalescesReads: true)
            _ = try await withTaskExecutorPreference(client.taskExecutor) {
                try await client.set("before-close", "value")
            }
            await client.close()
            let (outcome, onExecutorThread) = await withTaskExecutorPreference(client.taskExecutor) {
                (
                    await result { try await client.get("before-close", as: String.self) },
                    client.pool.taskExecutor.isCurrentThread
                )
            }
            #expect(throws: MemcachedError.self) { try outcome.get() }
            if case .failure(let error as MemcachedError) = outcome {
                #expect(error.code == .poolClosed)
            }
            #expect(!onExecutorThread, "the executor's threads stopped at close()")
        }
    }

    @Test("close() called from a task on the executor returns, and the threads stop")
    func closeFromTheExecutor() async throws {
        try await withMemcached { cluster in
            let client = try makeClient(cluster, maximumConnections: 2, coalescesReads: true)
            try await withTaskExecutorPreference(client.taskExecutor) {
                try await client.set("k", "v")
                #expect(client.pool.taskExecutor.isCurrentThread)
                await client.close()
            }
            #expect(client.pool.liveHandleCount == 0)
            let onExecutorThread = await withTaskExecutorPreference(client.taskExecutor) {
                client.pool.taskExecutor.isCurrentThread
            }
            #expect(!onExecutorThread)
        }
    }

    @Test("a client dropped without close() stops its executor's threads")
    func droppedClientStopsTheExecutor() async throws {
        try await withMemcached { cluster in
            var client: MemcachedClient? = try makeClient(cluster, maximumConnections: 2)
            let executor = client!.pool.taskExecutor
            let ranOnExecutor = try await withTaskExecutorPreference(executor) {
                try await client!.set("k", "v")
                return executor.isCurrentThread
            }
            #expect(ranOnExecutor)
            weak let dropped = client
            client = nil
            #expect(dropped == nil, "nothing else holds the client")
            let afterwards = await withTaskExecutorPreference(executor) { executor.isCurrentThread }
            #expect(!afterwards)
        }
    }

    @Test("a task on the executor that waits for a busy connection fails with poolTimeout after the wait")
    func poolTimeoutOnTheExecutor() async throws {
        try await withMemcached { cluster in
            let wait = Duration.milliseconds(300)
            let client = try makeClient(cluster, maximumConnections: 1, waitTimeout: wait)
            let holder = try await ConnectionHolder(client)
            let clock = ContinuousClock()
            let (outcome, elapsed) = await withTaskExecutorPreference(client.taskExecutor) {
                let start = clock.now
                let outcome = await result { try await client.get("k", as: String.self) }
                return (outcome, start.duration(to: clock.now))
            }
            #expect(throws: MemcachedError.self) { try outcome.get() }
            if case .failure(let error as MemcachedError) = outcome {
                #expect(error.code == .poolTimeout)
            }
            #expect(elapsed >= wait * 0.9, "failed early, after \(elapsed)")
            // A hang detector, not a timing check: a loaded machine delays the timer's thread.
            #expect(elapsed < .seconds(20), "took \(elapsed)")
            try await holder.release()
            await client.close()
        }
    }
}

/// A value that records the thread it was decoded on.
struct ThreadProbe: MemcachedValue, Sendable {
    let decodedOn: UInt

    init() {
        decodedOn = currentThreadID()
    }

    init(memcachedBytes bytes: UnsafeRawBufferPointer, flags: MemcachedFlags, context: MemcachedCodingContext) {
        decodedOn = currentThreadID()
    }

    func memcachedPayload(context: MemcachedCodingContext) -> MemcachedPayload {
        MemcachedPayload(bytes: [0], flags: [])
    }
}

/// The calling thread, as a number that compares across threads (`pthread_t` is an integer on
/// Linux and a pointer on Darwin).
func currentThreadID() -> UInt {
    #if canImport(Darwin)
    UInt(bitPattern: pthread_self())
    #else
    UInt(pthread_self())
    #endif
}
