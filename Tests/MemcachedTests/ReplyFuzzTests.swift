import Foundation
import Memcached
import MemcachedTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Every read and write path against a proxy that corrupts real memcached replies: whatever a
/// corrupted reply makes a command return or throw, the library must not crash, must not return a
/// value nobody stored, must come back within its timeout, and the next command on the same
/// connection (a known-good check) must get exactly its own reply.
///
/// The short run (the default) fuzzes a few thousand replies per protocol; `MEMCACHED_FUZZ=1`
/// runs at least 100,000 per protocol. Other knobs, for reproducing a failure:
/// `MEMCACHED_FUZZ_SEED` (a number), `MEMCACHED_FUZZ_KINDS` (comma-separated kinds, the only ones
/// used, crashing ones included), `MEMCACHED_FUZZ_INCLUDE_CRASHING=1`, `MEMCACHED_FUZZ_REPLIES`
/// (replies per test) and `MEMCACHED_FUZZ_ONLY` (see ``selected(api:_:)``), `MEMCACHED_FUZZ_TRACE` (a file that gets every step and mutation before
/// it happens, so a crash leaves its cause behind).
@Suite("Reply fuzzer", .offCooperativePool)
struct ReplyFuzzTests {
    /// Mutations the default run leaves out, with a printed note, because libmemcached 1.1.4
    /// cannot be defended against them from outside (SECURITY.md, "What a server can still do").
    /// Remove a kind once the library survives it; `MEMCACHED_FUZZ_INCLUDE_CRASHING=1` runs them.
    ///
    /// Bytes a server sends beyond a complete reply are no longer among them: the handle drops
    /// its connections when libmemcached's read buffer or a socket holds anything between
    /// commands (``ServerConnectionState``), so trailing bytes, forged values after an error
    /// line and extra or inconsistent binary packets fail one call and reach no other.
    ///
    /// - ascii, crashing: a storage command answered directly with a `VALUE`, `END` or `OK` line
    ///   (another key's value, a flood of values) aborts in a libmemcached assertion
    ///   (storage.cc:257).
    /// - binary, crashing: an incr/decr answered with an error status libmemcached does not map
    ///   aborts in an assertion (auto.cc:32); error replies and statuses reach incr/decr too.
    /// - binary, wrong values: a flood of value packets for a key asked for twice hands the
    ///   server's made-up value for that key over before the flood shows (a server's word on a
    ///   key it owns, the trust model's limit).
    /// - ascii, wrong values: libmemcached reads the flags and CAS fields with `strtoul` and
    ///   `strtoull` and keeps what they return: `4294967296` as flags 0, `-5` as 2⁶⁴ − 5, `0x10`
    ///   as 0, with nothing left for a check.
    static let knownResidualMutations: [MemcachedConfiguration.WireProtocol: [ReplyMutationKind]] = [
        .ascii: [.foreignValue, .flood, .flagsCorrupt, .casCorrupt],
        .binary: [.errorReply, .errorReplyThenOriginal, .errorReplyThenForeignValue, .binaryStatus, .flood],
    ]

    /// The command timeout of every fuzzed connection.
    static let timeout: Duration = .milliseconds(200)

    /// A call slower than this fails the run: a hang, not a late call. Eight workers and their
    /// proxies share two cores with the rest of the suite, and on a loaded machine even an
    /// unmutated first call was seen to take 9 s, so only a hang counts here; the call-deadline
    /// tests hold calls to the timeout on their own, and this run prints its max and p99.
    static let slowCallLimit: Duration = .seconds(30)

    /// Connections fuzzed in parallel, each through a proxy of its own: most fuzzed commands wait
    /// for a timeout, so parallel workers keep the wall time down without loading the CPU.
    static let workers = 8

    static let environment = ProcessInfo.processInfo.environment
    static let longRun = environment["MEMCACHED_FUZZ"] == "1"
    static let seed = environment["MEMCACHED_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x5EED_F022
    static let trace = environment["MEMCACHED_FUZZ_TRACE"].flatMap(TraceFile.init(path:))

    /// The kinds this run uses, and a note of the ones it leaves out.
    static func enabledMutations(
        _ wireProtocol: MemcachedConfiguration.WireProtocol
    ) -> (Set<ReplyMutationKind>, String?) {
        if let names = environment["MEMCACHED_FUZZ_KINDS"] {
            let kinds = Set(names.split(separator: ",").compactMap { ReplyMutationKind(rawValue: String($0)) })
            return (kinds, "only \(kinds.sorted().map(\.rawValue)) (MEMCACHED_FUZZ_KINDS)")
        }
        if environment["MEMCACHED_FUZZ_INCLUDE_CRASHING"] == "1" {
            return (Set(ReplyMutationKind.allCases), nil)
        }
        let skipped = knownResidualMutations[wireProtocol] ?? []
        return (
            Set(ReplyMutationKind.allCases).subtracting(skipped),
            "skipping mutations libmemcached cannot be defended against \(skipped.map(\.rawValue)) (MEMCACHED_FUZZ_INCLUDE_CRASHING=1 runs them)"
        )
    }

    /// Replies per test: connection tests cover every command, client tests three.
    static func replyTarget(client: Bool) -> Int {
        if let count = environment["MEMCACHED_FUZZ_REPLIES"].flatMap({ Int($0) }) {
            return count
        }
        switch (longRun, client) {
        case (false, false): return 2_500
        case (false, true): return 800
        case (true, false): return 100_000
        case (true, true): return 20_000
        }
    }

    /// The wall-time bound of one test, after which it stops early and says so.
    static var timeBudget: Duration { longRun ? .seconds(1_800) : .seconds(60) }

    static func proxyConfiguration(
        worker: Int,
        wireProtocol: MemcachedConfiguration.WireProtocol
    ) -> MutatingProxy.Configuration {
        var configuration = MutatingProxy.Configuration(
            seed: seed &+ (wireProtocol == .ascii ? 0 : 1_000_003) &+ UInt64(worker) &* 7_919
        )
        configuration.enabledMutations = enabledMutations(wireProtocol).0
        configuration.mutationProbability = 0.3
        configuration.controlKeyPrefix = "fuzzcheck-"
        configuration.maximumDripDuration = .milliseconds(1_500)
        configuration.maximumFloodDuration = .milliseconds(1_500)
        if let trace {
            configuration.onMutation = { trace.write("mutation \($0)") }
        }
        return configuration
    }

    static func fuzzedConfiguration(
        proxy: MutatingProxy,
        wireProtocol: MemcachedConfiguration.WireProtocol
    ) throws -> MemcachedConfiguration {
        var configuration = try MemcachedConfiguration(servers: [proxy.address])
        configuration.wireProtocol = wireProtocol
        configuration.timeout = timeout
        configuration.connectTimeout = .seconds(1)
        // A fault must not take the proxy out of rotation: the next command is the check.
        configuration.serverFailureLimit = 1_000
        configuration.retryTimeout = .zero
        return configuration
    }

    static func directConnection(to backend: MemcachedServerProcess) throws -> MemcachedConnection {
        var configuration = try MemcachedConfiguration(servers: [backend.address])
        configuration.timeout = .seconds(5)
        return try MemcachedConnection(configuration: configuration)
    }

    /// Whether `MEMCACHED_FUZZ_ONLY` (`connection`, `client`, `ascii`, `binary` or one of each,
    /// such as `client-binary`) lets this test case run; unset, every case runs.
    static func selected(api: String, _ wireProtocol: MemcachedConfiguration.WireProtocol) -> Bool {
        guard let only = environment["MEMCACHED_FUZZ_ONLY"] else { return true }
        return only.split(separator: "-").allSatisfy { $0 == api || $0 == "\(wireProtocol)" }
    }

    // MARK: - Tests

    @Test(
        "MemcachedConnection: every command over corrupted replies, a known-good check after each",
        arguments: [MemcachedConfiguration.WireProtocol.ascii, .binary]
    )
    func connection(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        guard Self.selected(api: "connection", wireProtocol) else { return }
        try withMemcached { cluster in
            let backend = cluster.servers[0]
            let target = Self.replyTarget(client: false)
            let started = ContinuousClock.now
            let reports = Mutex<[FuzzReport]>([])
            let group = DispatchGroup()
            for worker in 0..<Self.workers {
                group.enter()
                // Threads of their own: each worker blocks in libmemcached for most of its life.
                let thread = Thread {
                    defer { group.leave() }
                    var report = FuzzReport()
                    do {
                        report = try ConnectionWorker(
                            worker: worker,
                            wireProtocol: wireProtocol,
                            backend: backend,
                            replies: target / Self.workers,
                            deadline: started + Self.timeBudget
                        ).run()
                    } catch {
                        report.failures.append("worker \(worker) could not run: \(error)")
                    }
                    reports.withLock { $0.append(report) }
                }
                thread.start()
            }
            group.wait()
            Self.conclude(
                "MemcachedConnection \(wireProtocol)",
                wireProtocol,
                reports: reports.withLock { $0 },
                elapsed: .now - started,
                target: target
            )
        }
    }

    @Test(
        "MemcachedClient: get, set and getMulti over corrupted replies, a known-good check after each",
        arguments: [MemcachedConfiguration.WireProtocol.ascii, .binary]
    )
    func client(wireProtocol: MemcachedConfiguration.WireProtocol) async throws {
        guard Self.selected(api: "client", wireProtocol) else { return }
        try await withMemcached { cluster in
            let backend = cluster.servers[0]
            let target = Self.replyTarget(client: true)
            let started = ContinuousClock.now
            let reports = try await withThrowingTaskGroup(of: FuzzReport.self) { group in
                for worker in 0..<Self.workers {
                    group.addTask {
                        try await ClientWorker(
                            worker: worker,
                            wireProtocol: wireProtocol,
                            backend: backend,
                            replies: target / Self.workers,
                            deadline: started + Self.timeBudget
                        ).run()
                    }
                }
                var reports: [FuzzReport] = []
                for try await report in group {
                    reports.append(report)
                }
                return reports
            }
            Self.conclude(
                "MemcachedClient \(wireProtocol)",
                wireProtocol,
                reports: reports,
                elapsed: .now - started,
                target: target
            )
        }
    }

    /// Prints the summary line and records an issue for every failure the workers found.
    static func conclude(
        _ name: String,
        _ wireProtocol: MemcachedConfiguration.WireProtocol,
        reports: [FuzzReport],
        elapsed: Duration,
        target: Int
    ) {
        var total = FuzzReport()
        for report in reports {
            total.merge(report)
        }
        if let note = enabledMutations(wireProtocol).1 {
            print("Reply fuzzer [\(name)]: note: \(note)")
        }
        let kinds = total.mutationsByKind.sorted { $0.key < $1.key }.map { "\($0.key.rawValue)=\($0.value)" }
        let durations = total.durations.sorted()
        let p99 = durations.isEmpty ? .zero : durations[min(durations.count - 1, durations.count * 99 / 100)]
        let maximum = durations.last ?? .zero
        print(
            "Reply fuzzer [\(name)]: replies fuzzed \(total.fuzzableReplies), mutated \(total.mutationCount) "
                + "(\(kinds.joined(separator: " "))), steps \(total.steps), checks \(total.checks) "
                + "(errors right after a fault \(total.checkErrorsAfterFault), "
                + "timeouts without a fault \(total.checkTimeoutsWithoutFault)), wrong values \(total.wrongValues.count), "
                + "slow calls \(total.slowCalls.count), huge allocations \(total.memoryEvents.count), "
                + "max call \(milliseconds(maximum)) ms, p99 \(milliseconds(p99)) ms, "
                + "seed \(seed), \(milliseconds(elapsed) / 1_000) s"
        )
        for line in total.slowCalls.prefix(10) {
            print("Reply fuzzer [\(name)]: slow: \(line)")
        }
        for line in total.memoryEvents.prefix(10) {
            print("Reply fuzzer [\(name)]: memory: \(line)")
        }
        for wrong in total.wrongValues.prefix(20) {
            Issue.record("wrong value: \(wrong)")
        }
        if total.wrongValues.count > 20 {
            Issue.record("\(total.wrongValues.count - 20) more wrong values")
        }
        for failure in total.failures.prefix(20) {
            Issue.record("\(failure)")
        }
        for slow in total.slowCalls.prefix(20) {
            Issue.record("call over \(slowCallLimit): \(slow)")
        }
        // Huge allocations are printed above, not failed: VmPeak is process-wide, and thread and
        // malloc-arena reservations of the parallel workers move it too, so it cannot name a step.
        #expect(total.fuzzableReplies >= target * 9 / 10 || elapsed >= timeBudget, "too few replies fuzzed")
        #expect(total.mutationCount > 0)
    }
}

func milliseconds(_ duration: Duration) -> Int {
    let (seconds, attoseconds) = duration.components
    return Int(seconds) * 1_000 + Int(attoseconds / 1_000_000_000_000_000)
}

/// What one worker saw.
struct FuzzReport: Sendable {
    var steps = 0
    var checks = 0
    var checkErrorsAfterFault = 0
    var checkTimeoutsWithoutFault = 0
    var fuzzableReplies = 0
    var mutationsByKind: [ReplyMutationKind: Int] = [:]
    var wrongValues: [String] = []
    var failures: [String] = []
    var slowCalls: [String] = []
    var memoryEvents: [String] = []
    var durations: [Duration] = []

    var mutationCount: Int { mutationsByKind.values.reduce(0, +) }

    mutating func merge(_ other: FuzzReport) {
        steps += other.steps
        checks += other.checks
        checkErrorsAfterFault += other.checkErrorsAfterFault
        checkTimeoutsWithoutFault += other.checkTimeoutsWithoutFault
        fuzzableReplies += other.fuzzableReplies
        mutationsByKind.merge(other.mutationsByKind, uniquingKeysWith: +)
        wrongValues += other.wrongValues
        failures += other.failures
        slowCalls += other.slowCalls
        memoryEvents += other.memoryEvents
        durations += other.durations
    }

    mutating func include(_ statistics: MutatingProxy.Statistics) {
        fuzzableReplies = statistics.fuzzableReplies
        mutationsByKind = statistics.mutationsByKind
    }
}

/// The process's peak virtual size in KiB (`VmPeak`): an allocation of gigabytes shows here even
/// when its pages are never touched.
func peakVirtualKiB() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmPeak:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }
    return 0
}

/// A file that gets one line per write, written at once with `write(2)`, so that it survives a
/// crash of the test process.
final class TraceFile: Sendable {
    private let descriptor: Int32

    init?(path: String) {
        descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        if descriptor < 0 { return nil }
    }

    func write(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
    }
}

/// The bookkeeping every worker shares: timing, the check after each command, failures named
/// with the mutations of their step.
struct StepRecorder {
    let name: String
    let proxy: MutatingProxy
    let direct: MemcachedConnection
    let controlKey: String
    var report = FuzzReport()
    var mutationsBefore = 0
    var peakBefore = 0
    /// When the current check began: timeouts are retried for a while after it.
    var checkBegan = ContinuousClock.now

    init(name: String, proxy: MutatingProxy, direct: MemcachedConnection) {
        self.name = name
        self.proxy = proxy
        self.direct = direct
        self.controlKey = "fuzzcheck-\(name)"
    }

    mutating func beginStep(_ description: String) {
        report.steps += 1
        mutationsBefore = proxy.statistics.mutationCount
        peakBefore = peakVirtualKiB()
        ReplyFuzzTests.trace?.write("\(name) step \(report.steps): \(description)")
    }

    /// The mutations applied since the step began, for failure messages.
    func stepMutations() -> String {
        let mutations = proxy.mutations(since: mutationsBefore)
        return mutations.isEmpty ? "no mutation" : mutations.map(\.description).joined(separator: " | ")
    }

    var faultInStep: Bool { proxy.statistics.mutationCount != mutationsBefore }

    mutating func timedCall(_ what: String, _ body: () throws -> Void) -> (any Error)? {
        let clock = ContinuousClock()
        var thrown: (any Error)?
        let elapsed = clock.measure {
            do { try body() } catch { thrown = error }
        }
        note(what, elapsed: elapsed)
        return thrown
    }

    mutating func note(_ what: String, elapsed: Duration) {
        report.durations.append(elapsed)
        if elapsed > ReplyFuzzTests.slowCallLimit {
            report.slowCalls.append(
                "\(name) step \(report.steps) \(what) took \(milliseconds(elapsed)) ms; \(stepMutations())"
            )
        }
        let peak = peakVirtualKiB()
        if peak - peakBefore > 1_048_576 {
            report.memoryEvents.append(
                "\(name) step \(report.steps) \(what): peak virtual size grew by \((peak - peakBefore) / 1_024) MiB; "
                    + stepMutations()
            )
            peakBefore = peak
        }
    }

    mutating func wrong(_ what: String) {
        report.wrongValues.append("\(name) step \(report.steps) \(what); \(stepMutations())")
    }

    /// How long a check keeps retrying calls that time out (see ``judge(attempt:expected:outcome:)``):
    /// long next to any load spike, short next to the suite, and a connection left broken fails
    /// every attempt in it.
    static let checkTimeoutBudget: Duration = .seconds(10)

    /// Whether a check that began at `start` may retry a call that timed out.
    static func mayRetryTimeout(_ error: any Error, checkBegan start: ContinuousClock.Instant) -> Bool {
        (error as? MemcachedError)?.code == .timeout && .now - start < checkTimeoutBudget
    }

    /// Stores a fresh control value on the backend directly, then reads it through the proxy on
    /// the fuzzed connection or client: it must come back exactly. An error is allowed once, and
    /// only right after a fault; a timeout is allowed until the last attempt; the retry must then
    /// succeed.
    mutating func check(_ read: (String) throws -> String?) {
        checkBegan = .now
        for attempt in 1... {
            guard let expected = storeControlValue(attempt: attempt) else { return }
            var value: String?
            let key = controlKey
            let error = timedCall("check") { value = try read(key) }
            let outcome: Result<String?, any Error> = error.map { .failure($0) } ?? .success(value)
            guard judge(attempt: attempt, expected: expected, outcome: outcome) else { return }
        }
    }

    /// Sets the control key on the backend to a fresh value for this attempt, so that a stale
    /// reply to an earlier attempt, read by a later one, is a wrong value rather than a lucky match.
    mutating func storeControlValue(attempt: Int) -> String? {
        let expected = "check-\(name)-\(report.steps)-\(attempt)"
        do {
            try direct.set(controlKey, expected)
        } catch {
            report.failures.append("\(name) step \(report.steps): the direct set of the control key failed: \(error)")
            return nil
        }
        report.checks += 1
        return expected
    }

    /// Records what one check attempt's outcome means and answers whether to try again.
    ///
    /// A value must be exactly the one stored. An error right after a fault is the fault's, once.
    /// A timeout is the machine's: the fuzzed connections run a 200 ms timeout, and on a loaded
    /// two-core CI machine under ASan checks were seen to miss it, with and without a fault in the
    /// step, several times in a row. It is counted and retried for ``checkTimeoutBudget``, so what
    /// the check guards still holds: a connection left broken fails every attempt, and a stale
    /// reply is a wrong value whenever it is read. Any other error fails the run.
    mutating func judge(attempt: Int, expected: String, outcome: Result<String?, any Error>) -> Bool {
        switch outcome {
        case .success(let value):
            if value != expected {
                wrong("check \(attempt) read \(value.map { "'\($0)'" } ?? "a miss") instead of '\(expected)'")
            }
            return false
        case .failure(let error):
            if attempt == 1 && faultInStep {
                report.checkErrorsAfterFault += 1
                return true
            }
            if Self.mayRetryTimeout(error, checkBegan: checkBegan) {
                report.checkTimeoutsWithoutFault += 1
                return true
            }
            report.failures.append(
                "\(name) step \(report.steps): check \(attempt) threw \(error) "
                    + "(\(faultInStep ? "error after a fault" : "no fault in this step")); \(stepMutations())"
            )
            return false
        }
    }
}

/// One fuzzed `MemcachedConnection` through a proxy of its own, running every command.
struct ConnectionWorker {
    enum Command: CaseIterable {
        case get, gets, getMulti, getMultiForEachHit, set, add, replace, append, prepend, cas, setMulti
        case delete, deleteMulti, increment, decrement, touch, versions
    }

    let worker: Int
    let wireProtocol: MemcachedConfiguration.WireProtocol
    let backend: MemcachedServerProcess
    let replies: Int
    let deadline: ContinuousClock.Instant

    func run() throws -> FuzzReport {
        let proxy = try MutatingProxy(
            backendPort: backend.port,
            configuration: ReplyFuzzTests.proxyConfiguration(
                worker: worker,
                wireProtocol: wireProtocol
            )
        )
        defer { proxy.stop() }
        let direct = try ReplyFuzzTests.directConnection(to: backend)
        let fuzzed = try MemcachedConnection(
            configuration: ReplyFuzzTests.fuzzedConfiguration(proxy: proxy, wireProtocol: wireProtocol)
        )
        let prefix = "w\(worker)\(wireProtocol)-"
        let keys = (0..<10).map { "k\($0)" }
        let counter = prefix + "counter"
        let version = try direct.versions().first?.result.get()
        var recorder = StepRecorder(name: "\(wireProtocol)-conn\(worker)", proxy: proxy, direct: direct)
        var generator = SplitMix64(
            state: ReplyFuzzTests.seed &+ UInt64(worker) &* 31 &+ (wireProtocol == .ascii ? 0 : 1)
        )
        for key in keys {
            try direct.set(prefix + key, "initial-\(key)")
        }
        try direct.set(counter, 1_000_000)

        func value(_ step: Int) -> String {
            "v\(step)-" + String(repeating: "x", count: Int(generator.next() % 40))
        }
        /// The backend's value for a key, read directly after the fuzzed command.
        func truth(_ key: String) -> String? {
            try? direct.get(key, as: String.self)
        }

        while proxy.statistics.fuzzableReplies < replies && ContinuousClock.now < deadline {
            let command = Command.allCases[Int(generator.next() % UInt64(Command.allCases.count))]
            let key = keys[Int(generator.next() % UInt64(keys.count))]
            let fullKey = prefix + key
            let step = recorder.report.steps + 1
            recorder.beginStep("\(command) \(fullKey)")
            switch command {
            case .get:
                var read: String?
                if recorder.timedCall("get", { read = try fuzzed.get(fullKey, as: String.self) }) == nil,
                    let read, read != truth(fullKey)
                {
                    recorder.wrong(
                        "get \(fullKey) returned '\(read)', the server holds '\(truth(fullKey) ?? "nothing")'"
                    )
                }
            case .gets:
                var read: (value: String, token: MemcachedCASToken)?
                if recorder.timedCall("gets", { read = try fuzzed.gets(fullKey, as: String.self) }) == nil,
                    let read
                {
                    let actual = try? direct.gets(fullKey, as: String.self)
                    if read.value != actual?.value || read.token != actual?.token {
                        recorder.wrong(
                            "gets \(fullKey) returned '\(read.value)' token \(read.token), "
                                + "the server holds '\(actual?.value ?? "nothing")' token \(actual.map { "\($0.token)" } ?? "-")"
                        )
                    }
                }
            case .getMulti:
                let asked = (0..<(1 + Int(generator.next() % 4))).map { _ in
                    prefix + keys.randomElement(using: &generator)!
                }
                var hits: [String: String] = [:]
                if recorder.timedCall("getMulti", { hits = try fuzzed.getMulti(asked, as: String.self).hits }) == nil {
                    for (hitKey, read) in hits where !asked.contains(hitKey) || read != truth(hitKey) {
                        recorder.wrong(
                            "getMulti \(asked) returned \(hitKey)='\(read)', the server holds '\(truth(hitKey) ?? "nothing")'"
                        )
                    }
                }
            case .getMultiForEachHit:
                let asked = (0..<(1 + Int(generator.next() % 4))).map { _ in keys.randomElement(using: &generator)! }
                var hits: [(String, String, MemcachedFlags)] = []
                _ = recorder.timedCall("getMulti(forEachHit:)") {
                    try fuzzed.getMulti(asked, keyPrefix: prefix) { hitKey, bytes, flags in
                        hits.append((hitKey, String(decoding: bytes, as: UTF8.self), flags))
                    }
                }
                // Hits reported before a failure count too: each must be real.
                for (hitKey, read, flags) in hits {
                    if !asked.contains(hitKey) || read != truth(prefix + hitKey) || flags != .text {
                        recorder.wrong(
                            "getMulti(forEachHit:) \(asked) reported \(hitKey)='\(read)' flags \(flags.rawValue), "
                                + "the server holds '\(truth(prefix + hitKey) ?? "nothing")' flags 16"
                        )
                    }
                }
            case .set:
                let new = value(step)
                _ = recorder.timedCall("set") { try fuzzed.set(fullKey, new) }
            case .add:
                if generator.next() % 2 == 0 { _ = try? direct.delete(fullKey) }
                let new = value(step)
                _ = recorder.timedCall("add") { try fuzzed.add(fullKey, new) }
            case .replace:
                let new = value(step)
                _ = recorder.timedCall("replace") { try fuzzed.replace(fullKey, new) }
            case .append:
                _ = recorder.timedCall("append") { try fuzzed.append(fullKey, "+a\(step)") }
            case .prepend:
                _ = recorder.timedCall("prepend") { try fuzzed.prepend(fullKey, "p\(step)+") }
            case .cas:
                let token = (try? direct.gets(fullKey, as: String.self))?.token ?? MemcachedCASToken(rawValue: 1)
                let new = value(step)
                _ = recorder.timedCall("cas") { try fuzzed.cas(fullKey, new, token: token) }
            case .setMulti:
                let items = Dictionary(
                    (0..<(1 + Int(generator.next() % 3))).map { _ in
                        (keys.randomElement(using: &generator)!, value(step))
                    },
                    uniquingKeysWith: { first, _ in first }
                )
                _ = recorder.timedCall("setMulti") { try fuzzed.setMulti(items, keyPrefix: prefix) }
            case .delete:
                _ = recorder.timedCall("delete") { try fuzzed.delete(fullKey) }
                _ = try? direct.set(fullKey, "restored-\(step)")
            case .deleteMulti:
                let asked = [key, keys.randomElement(using: &generator)!]
                _ = recorder.timedCall("deleteMulti") { try fuzzed.deleteMulti(asked, keyPrefix: prefix) }
                for restored in asked { _ = try? direct.set(prefix + restored, "restored-\(step)") }
            case .increment, .decrement:
                var result: UInt64?
                let delta = 1 + generator.next() % 1_000
                let error = recorder.timedCall("\(command)") {
                    result =
                        command == .increment
                        ? try fuzzed.increment(counter, by: delta) : try fuzzed.decrement(counter, by: delta)
                }
                let actual = try? direct.get(counter, as: UInt64.self)
                if error == nil, let result, result != actual {
                    recorder.wrong(
                        "\(command) returned \(result), the server holds \(actual.map(String.init) ?? "nothing")"
                    )
                }
            case .touch:
                _ = recorder.timedCall("touch") { try fuzzed.touch(fullKey, expiration: .never) }
            case .versions:
                var results: [MemcachedServerResult<String>] = []
                _ = recorder.timedCall("versions") { results = try fuzzed.versions() }
                for result in results {
                    if case .success(let reported) = result.result, reported != version {
                        recorder.wrong("versions returned '\(reported)', the server is '\(version ?? "?")'")
                    }
                }
            }
            let failuresBefore = recorder.report.wrongValues.count + recorder.report.failures.count
            recorder.check { try fuzzed.get($0, as: String.self) }
            if recorder.report.wrongValues.count + recorder.report.failures.count != failuresBefore {
                // The failure is recorded; resynchronise by hand so that one failure does not
                // cascade into every later step (or into a libmemcached assertion on leftovers).
                fuzzed.disconnect()
            }
        }
        recorder.report.include(proxy.statistics)
        return recorder.report
    }
}

/// One fuzzed `MemcachedClient` (the async pooled client) through a proxy of its own.
struct ClientWorker {
    let worker: Int
    let wireProtocol: MemcachedConfiguration.WireProtocol
    let backend: MemcachedServerProcess
    let replies: Int
    let deadline: ContinuousClock.Instant

    func run() async throws -> FuzzReport {
        let proxy = try MutatingProxy(
            backendPort: backend.port,
            configuration: ReplyFuzzTests.proxyConfiguration(
                worker: worker + 100,
                wireProtocol: wireProtocol
            )
        )
        defer { proxy.stop() }
        let direct = try ReplyFuzzTests.directConnection(to: backend)
        var options = MemcachedClient.Options()
        // One connection: the check then runs on the connection the fault hit, or on the fresh
        // one the pool put in its place.
        options.maximumConnections = 1
        let client = try MemcachedClient(
            configuration: ReplyFuzzTests.fuzzedConfiguration(proxy: proxy, wireProtocol: wireProtocol),
            options: options
        )
        let prefix = "c\(worker)\(wireProtocol)-"
        let keys = (0..<10).map { prefix + "k\($0)" }
        var recorder = StepRecorder(name: "\(wireProtocol)-client\(worker)", proxy: proxy, direct: direct)
        var generator = SplitMix64(
            state: ReplyFuzzTests.seed &+ UInt64(worker) &* 37 &+ (wireProtocol == .ascii ? 5 : 6)
        )
        for key in keys {
            try direct.set(key, "initial-\(key)")
        }
        let clock = ContinuousClock()

        while proxy.statistics.fuzzableReplies < replies && ContinuousClock.now < deadline {
            let key = keys[Int(generator.next() % UInt64(keys.count))]
            let choice = generator.next() % 3
            recorder.beginStep("\(["get", "set", "getMulti"][Int(choice)]) \(key)")
            let started = clock.now
            switch choice {
            case 0:
                var read: String?
                do { read = try await client.get(key, as: String.self) } catch {}
                recorder.note("get", elapsed: clock.now - started)
                let actual = try? direct.get(key, as: String.self)
                if let read, read != actual {
                    recorder.wrong("get \(key) returned '\(read)', the server holds '\(actual ?? "nothing")'")
                }
            case 1:
                let new = "v\(recorder.report.steps)-" + String(repeating: "y", count: Int(generator.next() % 40))
                _ = try? await client.set(key, new)
                recorder.note("set", elapsed: clock.now - started)
            default:
                let asked = (0..<(1 + Int(generator.next() % 4))).map { _ in keys.randomElement(using: &generator)! }
                var hits: [String: String] = [:]
                do { hits = try await client.getMulti(asked, as: String.self).hits } catch {}
                recorder.note("getMulti", elapsed: clock.now - started)
                for (hitKey, read) in hits {
                    let actual = try? direct.get(hitKey, as: String.self)
                    if !asked.contains(hitKey) || read != actual {
                        recorder.wrong(
                            "getMulti \(asked) returned \(hitKey)='\(read)', the server holds '\(actual ?? "nothing")'"
                        )
                    }
                }
            }
            // The check is async; StepRecorder.check takes a synchronous read, so run it inline.
            let failuresBefore = recorder.report.wrongValues.count + recorder.report.failures.count
            await checkThroughClient(&recorder, client: client, clock: clock)
            if recorder.report.wrongValues.count + recorder.report.failures.count != failuresBefore {
                _ = try? await client.withConnection { $0.disconnect() }
            }
        }
        await client.close()
        recorder.report.include(proxy.statistics)
        return recorder.report
    }

    private func checkThroughClient(
        _ recorder: inout StepRecorder,
        client: MemcachedClient,
        clock: ContinuousClock
    ) async {
        recorder.checkBegan = .now
        for attempt in 1... {
            guard let expected = recorder.storeControlValue(attempt: attempt) else { return }
            let started = clock.now
            let outcome: Result<String?, any Error>
            do {
                outcome = .success(try await client.get(recorder.controlKey, as: String.self))
            } catch {
                outcome = .failure(error)
            }
            recorder.note("check", elapsed: clock.now - started)
            guard recorder.judge(attempt: attempt, expected: expected, outcome: outcome) else { return }
        }
    }
}
