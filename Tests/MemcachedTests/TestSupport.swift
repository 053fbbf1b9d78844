import Foundation
import Logging
import Memcached
import MemcachedTestSupport
import Synchronization
import Testing

/// Opens a connection to a cluster's servers with a short timeout, adjusted by the test.
func connect(
    _ cluster: MemcachedCluster,
    wireProtocol: MemcachedConfiguration.WireProtocol = .ascii,
    _ adjust: (inout MemcachedConfiguration) -> Void = { _ in }
) throws -> MemcachedConnection {
    var configuration = try MemcachedConfiguration(servers: cluster.addresses)
    configuration.wireProtocol = wireProtocol
    configuration.timeout = .seconds(2)
    configuration.connectTimeout = .seconds(2)
    adjust(&configuration)
    return try MemcachedConnection(configuration: configuration)
}

/// The bytes a server has read so far, from its own `stats` (read on a separate socket).
///
/// Each call itself adds the 7 bytes of `stats\r\n`, so two consecutive readings differ by exactly
/// 7 when nothing else reached the server.
func bytesRead(_ server: MemcachedServerProcess) throws -> Int {
    let reply = try server.rawCommand("stats\r\n")
    return Int(MemcachedServerProcess.parseStatistic("bytes_read", from: reply) ?? "") ?? -1
}

/// A statistic of a server, read on a separate socket.
func statistic(_ name: String, of server: MemcachedServerProcess) throws -> Int {
    let reply = try server.rawCommand("stats\r\n")
    return Int(MemcachedServerProcess.parseStatistic(name, from: reply) ?? "") ?? -1
}

/// The flags a server stores for a key, read with a raw `get` on a separate socket.
func storedFlags(_ key: String, on server: MemcachedServerProcess) throws -> UInt32? {
    let reply = try server.rawCommand("get \(key)\r\n")
    guard let line = reply.split(separator: "\r\n").first, line.hasPrefix("VALUE ") else { return nil }
    let fields = line.split(separator: " ")
    return UInt32(fields[2])
}

/// Measures how long a throwing call takes, returning the error it threw, if any.
func timed(_ body: () throws -> Void) -> (Duration, (any Error)?) {
    let clock = ContinuousClock()
    var thrown: (any Error)?
    let elapsed = clock.measure {
        do { try body() } catch { thrown = error }
    }
    return (elapsed, thrown)
}

/// A log handler that keeps every message and its metadata, to check what the library logs.
final class RecordingLogHandler: LogHandler, @unchecked Sendable {
    struct Entry: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }

    let entries = Mutex<[Entry]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let entry = Entry(
            level: event.level,
            message: "\(event.message)",
            metadata: (event.metadata ?? [:]).mapValues { "\($0)" }
        )
        entries.withLock { $0.append(entry) }
    }
}

/// Runs every test of a suite, and the tasks it starts, on Dispatch threads of its own instead of
/// Swift's shared cooperative pool.
///
/// Tests make blocking libmemcached calls and start and stop servers. On the cooperative pool
/// (two threads on a two-core machine) each such call holds a thread that the pool's timers,
/// `Task.sleep` and every other test's continuations need, so timing checks elsewhere failed
/// when the machine was busy. A concurrent queue per test is served by Dispatch's threads, which
/// grow when a job blocks, if slowly: ``threadPerJob`` is for suites whose tests wait for a task
/// to start while others block. Every suite carries one of the two.
struct OffCooperativePoolTrait: SuiteTrait, TestTrait, TestScoping {
    /// Whether each job gets a new thread (``ThreadPerJobExecutor``) rather than a Dispatch one.
    var threadPerJob = false

    var isRecursive: Bool { true }

    func provideScope(
        for test: Test,
        testCase: Test.Case?,
        performing function: @Sendable () async throws -> Void
    ) async throws {
        guard testCase != nil else {
            // The suite's own scope: each test case gets an executor of its own below.
            try await function()
            return
        }
        let executor: any TaskExecutor =
            threadPerJob ? ThreadPerJobExecutor() : ConcurrentTestExecutor(label: test.name)
        try await withTaskExecutorPreference(executor) {
            try await function()
        }
    }
}

extension Trait where Self == OffCooperativePoolTrait {
    /// Runs the suite's tests on Dispatch threads of their own: see ``OffCooperativePoolTrait``.
    static var offCooperativePool: Self { Self() }

    /// Runs every job of the suite's tests on a new thread, so that no task waits for a thread
    /// while other tests block Dispatch's: for the pool tests, which wait for tasks to queue.
    static var threadPerJob: Self { Self(threadPerJob: true) }
}

/// A task executor over a concurrent Dispatch queue: jobs run in parallel on Dispatch's threads,
/// and a job that blocks makes Dispatch start another thread rather than stall the rest.
final class ConcurrentTestExecutor: TaskExecutor {
    private let queue: DispatchQueue

    init(label: String) {
        queue = DispatchQueue(label: label, attributes: .concurrent)
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        queue.async { job.runSynchronously(on: executor) }
    }
}

/// A task executor that runs every job on a new thread of its own: a job that blocks holds only
/// its own thread, and every other job starts at once whatever the rest of the suite does. A
/// thread costs tens of microseconds, which tests can afford.
///
/// Tests give it to every unstructured task they start (`Task(executorPreference:)`): such a task
/// does not inherit the suite's executor, and on the cooperative pool it waited over 5 seconds to
/// start once in 20 loaded suite runs, failing three tests that waited for it to queue.
final class ThreadPerJobExecutor: TaskExecutor {
    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        let thread = Thread { job.runSynchronously(on: executor) }
        thread.start()
    }
}

/// How many times slower than a plain debug build this run executes: `MEMCACHED_TEST_TIME_SCALE`,
/// which `.ci/run` sets for its ThreadSanitizer and AddressSanitizer runs (their instrumentation
/// slows every call several times, and a 1.5 × timeout bound was missed by 30 ms there on a busy
/// machine), else 1. Only bounds on elapsed time scale, never the timeouts under test.
let testTimeScale: Double = ProcessInfo.processInfo.environment["MEMCACHED_TEST_TIME_SCALE"].flatMap(Double.init) ?? 1

extension Duration {
    /// This bound on elapsed time, stretched by ``testTimeScale``.
    var scaledForTests: Duration { self * testTimeScale }
}

/// The outcome of an async throwing call, as a value to check after the fact.
func result<Value>(_ body: () async throws -> Value) async -> Result<Value, any Error> {
    do {
        return .success(try await body())
    } catch {
        return .failure(error)
    }
}

/// Whether `key` holds `value` (`nil`: is missing) on `connection` within 30 s. A fire-and-forget
/// write returns once its bytes are written; memcached applies it a moment later, and another
/// connection may look first.
func eventually(_ connection: MemcachedConnection, _ key: String, holds value: String?) -> Bool {
    let deadline = ContinuousClock.now + .seconds(30)
    while (try? connection.get(key, as: String.self)) != value {
        guard ContinuousClock.now < deadline else { return false }
        Thread.sleep(forTimeInterval: 0.01)
    }
    return true
}

/// Runs CPU-bound work (hundreds of thousands of hashes in a debug build) on a thread of its own
/// at the lowest scheduling priority, nice 19, and waits for it.
///
/// Swift Testing runs suites side by side on a machine that may have two cores: the timing tests
/// beside such work (call deadlines, pool timeouts) measure how soon a watchdog or a waiter gets
/// the CPU, and a bound of 1.5 × the timeout was missed by 6 ms while the continuum tests hashed.
/// At nice 19 this work takes only the CPU the others leave. The thread ends with the work, so no
/// thread of the test run keeps the low priority.
func atLowCPUPriority<R>(_ body: () throws -> R) throws -> R {
    try withoutActuallyEscaping(body) { body in
        let run = LowPriorityRun(body)
        let thread = Thread { run.execute() }
        thread.start()
        run.finished.wait()
        return try run.result!.get()
    }
}

/// The work and its result, handed between the waiting thread and the low-priority one; the
/// semaphore orders every access.
private final class LowPriorityRun<R>: @unchecked Sendable {
    /// Released before the waiter wakes: the caller's closure must not outlive its call
    /// (`withoutActuallyEscaping` checks), while this object may, held by the ending thread.
    var body: (() throws -> R)?
    var result: Result<R, any Error>?
    let finished = DispatchSemaphore(value: 0)

    init(_ body: @escaping () throws -> R) {
        self.body = body
    }

    func execute() {
        #if os(Linux)
        // On Linux the nice value is per thread, and PRIO_PROCESS with 0 names the calling one.
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 19)
        #else
        _ = setpriority(PRIO_DARWIN_THREAD, 0, PRIO_DARWIN_BG)
        #endif
        if let body {
            result = Result { try body() }
        }
        body = nil
        finished.signal()
    }
}
