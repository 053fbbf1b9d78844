import Dispatch
import Foundation
import MemcachedTestSupport
import Synchronization
import Testing

@testable import Memcached

/// Every command ends within ``MemcachedConfiguration/timeout`` of its start, whatever the server
/// does: drip its reply, stream without end, accept and never answer, or freeze. A cancelled
/// client call ends at once, and `close()` does not wait past the deadline.
///
/// Each limit is the timeout plus half of it: the watchdog acts within a millisecond or two of a
/// deadline, and the rest is room for a busy two-core machine. The measured time includes what a
/// command does before its deadline starts (checking keys, encoding values: tens of milliseconds
/// for 1,000 keys in a debug build on a loaded machine), hence a one-second timeout for the
/// commands of every kind.
@Suite("Call deadlines", .offCooperativePool, .timeLimit(.minutes(5)))
struct CallDeadlineTests {
    static let timeout = Duration.milliseconds(500)
    static let limit = (timeout * 1.5).scaledForTests
    static let commandTimeout = Duration.seconds(1)
    static let commandLimit = (commandTimeout * 1.5).scaledForTests

    /// How the faulty server misbehaves.
    enum Fault: String, CaseIterable, CustomTestStringConvertible, Sendable {
        /// Starts a reply at once and adds one byte every 100 ms: each wait ends well within the
        /// timeout, so only a deadline for the whole call stops it.
        case drip
        /// Sends values without end, whatever was asked.
        case stream
        /// Accepts and never answers.
        case silent
        /// A real memcached frozen with SIGSTOP.
        case paused

        var testDescription: String { rawValue }

        /// The commands run against the fault. A stream meets only the reads: libmemcached 1.1.4
        /// asserts (and, built with assertions as Debian's is, aborts the process) when a storage
        /// command is answered with a whole value (`memcached_send_ascii`, storage.cc:257).
        var operations: [Operation] {
            self == .stream ? [.get, .gets, .getMulti] : Operation.allCases
        }
    }

    enum Operation: String, CaseIterable, Sendable {
        case get, gets, getMulti, set, setMulti, deleteMulti, increment, touch
    }

    /// A faulty server and what stops it.
    struct FaultyServer {
        var address: String
        var stop: () -> Void
    }

    static func start(_ fault: Fault, _ wireProtocol: MemcachedConfiguration.WireProtocol) throws -> FaultyServer {
        switch fault {
        case .drip:
            // Over the text protocol a value announced as 100 bytes (libmemcached reads such a
            // line as the reply to any command); over the binary protocol the 24-byte header
            // itself arrives one byte at a time.
            let prefix = wireProtocol == .ascii ? Array("VALUE k 0 100 1\r\n".utf8) : []
            let server = try DripServer(prefix: prefix, unit: [UInt8(ascii: "x")], interval: .milliseconds(100))
            return FaultyServer(address: server.address, stop: server.stop)
        case .stream:
            let server = try DripServer(unit: Array("VALUE k 0 1\r\nx\r\n".utf8), interval: .milliseconds(1))
            return FaultyServer(address: server.address, stop: server.stop)
        case .silent:
            let server = try SilentServer()
            return FaultyServer(address: server.address, stop: server.stop)
        case .paused:
            let server = try MemcachedServerProcess.start()
            server.pause()
            return FaultyServer(
                address: server.address,
                stop: {
                    server.resume()
                    server.stop()
                }
            )
        }
    }

    static func configuration(
        _ servers: [String],
        _ wireProtocol: MemcachedConfiguration.WireProtocol,
        timeout: Duration = timeout
    ) throws -> MemcachedConfiguration {
        var configuration = try MemcachedConfiguration(servers: servers)
        configuration.wireProtocol = wireProtocol
        configuration.timeout = timeout
        configuration.connectTimeout = timeout
        return configuration
    }

    /// `count` keys that map to `server` in `connection`'s configuration.
    static func keys(_ count: Int, on server: String, of connection: MemcachedConnection) throws -> [String] {
        var keys: [String] = []
        var candidate = 0
        while keys.count < count {
            let key = "deadline-\(candidate)"
            if try connection.server(forKey: key) == server {
                keys.append(key)
            }
            candidate += 1
        }
        return keys
    }

    /// A multi-key command reports failures per key: when every key failed, the call failed, with
    /// the first key's error, as a single-key command throws it.
    static func throwIfEveryKeyFailed(_ failures: [String: MemcachedError], _ keys: [String]) throws {
        if failures.count == keys.count, let error = failures.values.first {
            throw error
        }
    }

    /// Runs `operation` on keys of the faulty server; returns whether it reported a failure.
    static func run(_ operation: Operation, _ connection: MemcachedConnection, keys: [String]) throws -> Bool {
        switch operation {
        case .get:
            _ = try connection.get(keys[0], as: String.self)
        case .gets:
            _ = try connection.gets(keys[0], as: String.self)
        case .getMulti:
            try throwIfEveryKeyFailed(try connection.getMulti(keys, as: String.self).failures, keys)
        case .set:
            return try !connection.set(keys[0], "value")
        case .setMulti:
            let items = Dictionary(uniqueKeysWithValues: keys.map { ($0, "value") })
            try throwIfEveryKeyFailed(try connection.setMulti(items).failures, keys)
        case .deleteMulti:
            try throwIfEveryKeyFailed(try connection.deleteMulti(keys).failures, keys)
        case .increment:
            _ = try connection.increment(keys[0])
        case .touch:
            _ = try connection.touch(keys[0], expiration: .seconds(60))
        }
        return false
    }

    @Test(
        "every command ends within timeout × 1.5 on a dripping, streaming, silent or frozen server, and the connection then reads a healthy server",
        arguments: Fault.allCases,
        [MemcachedConfiguration.WireProtocol.ascii, .binary]
    )
    func everyCommandEndsByItsDeadline(
        fault: Fault,
        wireProtocol: MemcachedConfiguration.WireProtocol
    ) async throws {
        // Each case blocks for about ten seconds: on a thread of its own, not on one of the
        // Dispatch threads that every suite's executor and the cooperative pool share.
        let outcomes = try await onOwnThread { try Self.runEveryCommand(fault, wireProtocol) }
        for outcome in outcomes {
            let context = "\(fault) \(wireProtocol) \(outcome.operation)"
            #expect(outcome.elapsed < Self.commandLimit, "\(context): \(outcome.elapsed), \(outcome.error ?? "-")")
            // A stream is refused for what it sends (or, for some commands, read as an answer),
            // long before any deadline: only the time is checked.
            if fault != .stream {
                #expect(outcome.error != nil || outcome.failed, "\(context) reported no failure")
                if let code = outcome.code {
                    #expect(code == .timeout, "\(context): \(outcome.error ?? "-")")
                }
            }
            // The same connection, still pointing at the faulty server, read the healthy one.
            #expect(outcome.healthyRead == "healthy \(outcome.operation)", "\(context)")
        }
        let report = outcomes.map { "\($0.operation.rawValue) \($0.elapsed.milliseconds) ms" }
        print("deadline report: \(fault) \(wireProtocol): \(report.joined(separator: ", "))")
    }

    /// What one command against a fault did, and what the same connection read afterwards.
    struct Outcome: Sendable {
        var operation: Operation
        var elapsed: Duration
        var failed: Bool
        var code: MemcachedError.Code?
        var error: String?
        var healthyRead: String?
    }

    static func runEveryCommand(
        _ fault: Fault,
        _ wireProtocol: MemcachedConfiguration.WireProtocol
    ) throws -> [Outcome] {
        try withMemcached { cluster in
            let healthy = cluster.servers[0]
            let faulty = try Self.start(fault, wireProtocol)
            defer { faulty.stop() }
            var outcomes: [Outcome] = []
            for operation in fault.operations {
                // A fresh connection per command: libmemcached skips a server that timed out until
                // its retry timeout has passed, and each command must meet the fault itself.
                let connection = try MemcachedConnection(
                    configuration: Self.configuration(
                        [faulty.address, healthy.address],
                        wireProtocol,
                        timeout: Self.commandTimeout
                    )
                )
                defer { connection.close() }
                let keys = try Self.keys(1_000, on: faulty.address, of: connection)
                let healthyKey = try Self.keys(1, on: healthy.address, of: connection)[0]
                try connection.set(healthyKey, "healthy \(operation)")

                var failed = false
                let (elapsed, thrown) = timed { failed = try Self.run(operation, connection, keys: keys) }
                outcomes.append(
                    Outcome(
                        operation: operation,
                        elapsed: elapsed,
                        failed: failed,
                        code: (thrown as? MemcachedError)?.code,
                        error: thrown.map { "\($0)" },
                        healthyRead: try connection.get(healthyKey, as: String.self)
                    )
                )
            }
            return outcomes
        }
    }

    @Test(
        "setMulti and deleteMulti of 1,000 keys to a frozen server end within one timeout, the remaining keys failing with .timeout"
    )
    func multiKeyWritesShareOneDeadline() throws {
        try withMemcached { cluster in
            let frozen = try MemcachedServerProcess.start()
            defer {
                frozen.resume()
                frozen.stop()
            }
            let connection = try MemcachedConnection(configuration: Self.configuration([frozen.address], .ascii))
            let keys = (0..<1_000).map { "frozen-\($0)" }
            // Stored first, then frozen: every command is sent and waits for its reply. The 1,000
            // keys go through a connection of their own with a long timeout: on a loaded machine
            // 1,000 round trips can take longer than this test's timeout, which bounds a whole call.
            let filler = try MemcachedConnection(
                configuration: Self.configuration([frozen.address], .ascii, timeout: .seconds(60))
            )
            #expect(
                try filler.setMulti(Dictionary(uniqueKeysWithValues: keys.map { ($0, "v") })).keysNotApplied.isEmpty
            )
            filler.close()
            #expect(try connection.set(keys[0], "v"), "the connection under test is open")
            frozen.pause()

            var notStored: [String] = []
            let (setElapsed, setError) = timed {
                notStored = try connection.setMulti(Dictionary(uniqueKeysWithValues: keys.map { ($0, "w") }))
                    .keysNotApplied
            }
            #expect(setError == nil)
            #expect(notStored.count == keys.count)
            #expect(setElapsed < Self.limit, "setMulti took \(setElapsed)")

            // A fresh connection: libmemcached may skip a server that timed out for a while.
            let second = try MemcachedConnection(configuration: Self.configuration([frozen.address], .ascii))
            var outcomes: [String: MemcachedKeyOutcome] = [:]
            let (deleteElapsed, deleteError) = timed { outcomes = try second.deleteMulti(keys) }
            #expect(deleteError == nil)
            let codes = Set(outcomes.values.compactMap { $0.error?.code })
            #expect(outcomes.count == keys.count)
            #expect(codes == [.timeout], "\(codes)")
            #expect(deleteElapsed < Self.limit, "deleteMulti took \(deleteElapsed)")
            print(
                "deadline report: 1,000-key setMulti \(setElapsed.milliseconds) ms, deleteMulti \(deleteElapsed.milliseconds) ms"
            )
            _ = cluster
        }
    }

    @Test("a dripping get fails with .timeout, saying it exceeded its deadline, and the next command reconnects")
    func dripErrorSaysDeadline() throws {
        try withMemcached { cluster in
            let drip = try DripServer(prefix: Array("VALUE k 0 100 1\r\n".utf8), unit: [UInt8(ascii: "x")])
            defer { drip.stop() }
            let connection = try MemcachedConnection(
                configuration: Self.configuration([drip.address, cluster.servers[0].address], .ascii)
            )
            let key = try Self.keys(1, on: drip.address, of: connection)[0]
            let (elapsed, error) = timed { _ = try connection.get(key, as: String.self) }
            let thrown = try #require(error as? MemcachedError)
            #expect(thrown.code == .timeout)
            #expect(thrown.message.contains("deadline"), "\(thrown.message)")
            #expect(elapsed >= Self.timeout - .milliseconds(10), "not before the deadline: \(elapsed)")
            #expect(elapsed < Self.limit)
            // The interrupted socket was closed; the next command opens a new one.
            let accepted = drip.acceptedConnectionCount
            _ = try? connection.get(key, as: String.self)
            #expect(drip.acceptedConnectionCount == accepted + 1)
        }
    }

    // MARK: - Through the client

    static func client(_ servers: [String], timeout: Duration, maximumConnections: Int = 2) throws -> MemcachedClient {
        var configuration = try MemcachedConfiguration(servers: servers)
        configuration.timeout = timeout
        configuration.connectTimeout = timeout
        var options = MemcachedClient.Options()
        options.maximumConnections = maximumConnections
        return try MemcachedClient(configuration: configuration, options: options)
    }

    @Test(
        "a client call cancelled mid-drip ends within 50 ms with CancellationError, and the pool discards its connection"
    )
    func cancellationInterruptsARunningCall() async throws {
        // Its own thread, for the reason given in `closeDoesNotWaitPastTheDeadline`.
        let testExecutor = DedicatedThreadExecutor(name: "cancellation test")
        defer { testExecutor.stop() }
        try await withTaskExecutorPreference(testExecutor) { try await cancelMidDrip() }
    }

    func cancelMidDrip() async throws {
        try await withMemcached { cluster in
            let drip = try DripServer(prefix: Array("VALUE k 0 100 1\r\n".utf8), unit: [UInt8(ascii: "x")])
            defer { drip.stop() }
            // A long timeout: only the cancellation can end the call in time.
            let client = try Self.client([drip.address, cluster.servers[0].address], timeout: .seconds(10))
            let probe = try MemcachedConnection(configuration: client.configuration)
            let key = try Self.keys(1, on: drip.address, of: probe)[0]
            let healthyKey = try Self.keys(1, on: cluster.servers[0].address, of: probe)[0]
            probe.close()
            try await client.set(healthyKey, "healthy")
            #expect(client.pool.openConnectionCount == 1)

            let executor = DedicatedThreadExecutor(name: "cancelled call")
            defer { executor.stop() }
            let ended = Mutex<ContinuousClock.Instant?>(nil)
            let task = Task(executorPreference: executor) {
                defer { ended.withLock { $0 = .now } }
                return try await client.get(key, as: String.self)
            }
            // Mid-drip: connected, the value line read, a few bytes in.
            try await waitUntil { drip.acceptedConnectionCount == 1 }
            try await Task.sleep(for: .milliseconds(250))
            let cancelledAt = ContinuousClock.now
            task.cancel()
            let result = await task.result
            let latency = try #require(ended.withLock { $0 }) - cancelledAt
            print("deadline report: cancellation latency \(latency.milliseconds) ms")
            #expect(throws: CancellationError.self) { try result.get() }
            // 50 ms is the promise; the rest is room for a loaded machine.
            #expect(latency < Duration.milliseconds(250).scaledForTests, "ended \(latency) after the cancellation")
            // Discarded, not reused: a new clone answers the next call.
            #expect(try await client.get(healthyKey, as: String.self) == "healthy")
            #expect(client.pool.liveHandleCount == 2, "the template and one connection")
            #expect(client.pool.openConnectionCount == 1)
            await client.close()
        }
    }

    @Test(
        "after a cancellation, the rest of a withConnection body fails with CancellationError before sending anything"
    )
    func cancelledLeaseSendsNothingMore() async throws {
        try await withMemcached { cluster in
            let server = cluster.servers[0]
            let client = try Self.client([server.address], timeout: .seconds(5))
            let started = Mutex(false)
            let proceed = DispatchSemaphore(value: 0)
            let task = Task(executorPreference: ThreadPerJobExecutor()) {
                try await client.withConnection { connection -> [Bool] in
                    try connection.set("lease", "first")
                    started.withLock { $0 = true }
                    // Blocks this pool thread until the test has cancelled the task.
                    _ = proceed.wait(timeout: .now() + 30)
                    var outcomes: [Bool] = []
                    for index in 0..<10 {
                        do {
                            try connection.set("lease-\(index)", "late")
                            outcomes.append(true)
                        } catch is CancellationError {
                            outcomes.append(false)
                        }
                    }
                    return outcomes
                }
            }
            try await waitUntil { started.withLock { $0 } }
            task.cancel()
            proceed.signal()
            let result = await task.result
            // Every later command threw CancellationError; the body caught them and returned.
            #expect(try result.get() == Array(repeating: false, count: 10))
            #expect(try server.rawCommand("get lease-0\r\n") == "END\r\n", "nothing was sent")
            // No command was interrupted, so the connection is lent again.
            try await client.set("after", "ok")
            #expect(client.pool.liveHandleCount == 2)
            await client.close()
        }
    }

    @Test("close() with a call stuck on a dripping server returns within the deadline")
    func closeDoesNotWaitPastTheDeadline() async throws {
        // Its own thread: a suspended test resumes on Dispatch threads that the suites' blocking
        // tests may all hold, which would measure the test harness, not the client.
        let executor = DedicatedThreadExecutor(name: "close")
        defer { executor.stop() }
        try await withTaskExecutorPreference(executor) { try await closeWithAStuckCall(executor) }
    }

    func closeWithAStuckCall(_ executor: DedicatedThreadExecutor) async throws {
        let drip = try DripServer(prefix: Array("VALUE k 0 100 1\r\n".utf8), unit: [UInt8(ascii: "x")])
        defer { drip.stop() }
        let client = try Self.client([drip.address], timeout: Self.timeout)
        let clock = ContinuousClock()
        let start = clock.now
        let ended = Mutex<ContinuousClock.Instant?>(nil)
        let task = Task(executorPreference: executor) {
            defer { ended.withLock { $0 = .now } }
            return try await client.get("stuck", as: String.self)
        }
        try await waitUntil { drip.acceptedConnectionCount == 1 }
        await client.close()
        let closedAfter = clock.now - start
        let result = await task.result
        print(
            "deadline report: the stuck call ended \((ended.withLock { $0 }! - start).milliseconds) ms after it began"
        )
        print("deadline report: close() returned \(closedAfter.milliseconds) ms after the stuck call began")
        #expect(ended.withLock { $0 }! - start < Self.limit, "the stuck call ended by its deadline")
        // close() ends by joining the client's threads, which NIOThreadPool does on Dispatch's
        // global queue: alone, it returns right after the stuck call (about 500 ms); in a full
        // parallel run, the suites' blocking tests can hold every Dispatch thread for a while
        // (2.4 s seen with a second build running). The drip never ends, so a close() that waited
        // for the call instead of its deadline would never return: any finite bound catches that.
        #expect(closedAfter < Self.limit + .seconds(5))
        #expect(throws: MemcachedError.self) { try result.get() }
        if case .failure(let error as MemcachedError) = result {
            #expect(error.code == .timeout)
        }
        #expect(client.pool.liveHandleCount == 0)
    }
}

/// Runs blocking `body` on a thread of its own and waits for it without holding a thread.
func onOwnThread<R: Sendable>(_ body: @escaping @Sendable () throws -> R) async throws -> R {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

/// A task executor with one thread of its own, which nothing else can hold: the jobs of a test
/// that measures how soon a suspended task resumes.
final class DedicatedThreadExecutor: TaskExecutor, @unchecked Sendable {
    // Guarded by `condition`.
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var stopped = false

    init(name: String) {
        let thread = Thread { [self] in run() }
        thread.name = name
        thread.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Ends the thread once the queued jobs have run.
    func stop() {
        condition.lock()
        stopped = true
        condition.signal()
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopped {
                condition.wait()
            }
            guard !jobs.isEmpty else {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}

extension Duration {
    /// Whole milliseconds, for reports.
    fileprivate var milliseconds: Int64 {
        components.seconds * 1_000 + components.attoseconds / 1_000_000_000_000_000
    }
}
