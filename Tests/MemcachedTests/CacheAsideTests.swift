import Foundation
import MemcachedTestSupport
import Synchronization
import Testing

@testable import Memcached

/// `get(_:as:orSet:loadTimeout:logger:load:)`: the seed's cache-aside example in one call, and its
/// stampede protection, against real memcached servers.
@Suite("Cache-aside", .offCooperativePool, .timeLimit(.minutes(3)))
struct CacheAsideTests {
    static func client(_ cluster: MemcachedCluster, connections: Int = 8) throws -> MemcachedClient {
        var configuration = try MemcachedConfiguration(servers: cluster.addresses)
        configuration.timeout = .seconds(2)
        var options = MemcachedClient.Options()
        options.maximumConnections = connections
        return try MemcachedClient(configuration: configuration, options: options)
    }

    @Test("a miss loads, stores with the expiration and returns; a hit does not load")
    func missThenHit() async throws {
        try await withMemcached { cluster in
            let client = try Self.client(cluster)
            let loads = LoadCounter()
            let top = [
                Film(filmID: 1, title: "ACADEMY DINOSAUR", rentalRate: 0.99, tags: ["Deleted Scenes"], sequel: nil)
            ]
            for _ in 0..<3 {
                let films = try await client.get("top5films", as: [Film].self, orSet: .seconds(60)) {
                    _ = loads.next()
                    return top
                }
                #expect(films == top)
            }
            #expect(loads.count == 1)
            #expect(try await client.get("top5films", as: [Film].self) == top)
            // A value of another type under the key is replaced, not an error.
            try await client.set("changed", "not films")
            let replaced = try await client.get("changed", as: [Film].self, orSet: .seconds(60)) { [] }
            #expect(replaced == [])
            #expect(try await client.get("changed", as: [Film].self) == [])
            await client.close()
        }
    }

    @Test(
        "50 tasks of one client and 3 other clients miss one key at once: the loader runs once, everyone gets its value"
    )
    func stampede() async throws {
        try await withMemcached { cluster in
            let clients = try (0..<4).map { _ in try Self.client(cluster) }
            let loads = LoadCounter()
            let values = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<53 {
                    // 50 tasks on the first client; one each on the others, which share only the
                    // lock in memcached, as separate processes do.
                    let client = clients[index < 50 ? 0 : index - 49]
                    group.addTask {
                        try await client.get("stampede", as: Int.self, orSet: .seconds(60)) {
                            let load = loads.next()
                            try await Task.sleep(for: .milliseconds(300))  // a slow query
                            return 1_000 + load
                        }
                    }
                }
                var values: [Int] = []
                for try await value in group {
                    values.append(value)
                }
                return values
            }
            #expect(loads.count == 1, "the loader ran \(loads.count) times")
            #expect(values.count == 53 && Set(values) == [1_001])
            let lock = try await clients[0].get("stampede.cache-aside-lock", as: String.self)
            #expect(lock == nil, "the lock was released")
            for client in clients {
                await client.close()
            }
        }
    }

    @Test("3 processes of 10 tasks each miss one key at once: the loader runs once in all, everyone gets its value")
    func stampedeAcrossProcesses() async throws {
        // The probe is built next to this test bundle (the test target depends on it).
        let probe = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("CacheAsideProbe")
        guard FileManager.default.isExecutableFile(atPath: probe.path) else {
            Issue.record("\(probe.path) is missing: build the package's targets first (swift build --build-tests)")
            return
        }
        try await withMemcached { cluster in
            let client = try Self.client(cluster)
            let key = "cross-process"
            // The loaders count themselves here (an increment of a missing key does nothing).
            try await client.set("\(key).loads", 0)
            let outputs = (0..<3).map { _ in
                let output = FileManager.default.temporaryDirectory
                    .appendingPathComponent("cache-aside-probe-\(UUID().uuidString)")
                _ = FileManager.default.createFile(atPath: output.path, contents: nil)
                return output
            }
            defer { outputs.forEach { try? FileManager.default.removeItem(at: $0) } }
            let processes = try outputs.map { output in
                let process = Process()
                process.executableURL = probe
                process.arguments = [cluster.addresses[0], key, "10"]
                process.standardOutput = try FileHandle(forWritingTo: output)
                process.standardError = FileHandle.standardError
                try process.run()
                return process
            }
            defer { processes.filter(\.isRunning).forEach { $0.terminate() } }
            // Every process ready, then go: they miss the key together.
            let waitStarted = ContinuousClock.now
            while (try await client.get("\(key).ready", as: Int.self) ?? 0) < 3 {
                #expect(ContinuousClock.now - waitStarted < .seconds(60), "the probes did not start")
                try await Task.sleep(for: .milliseconds(5))
            }
            try await client.set("\(key).go", 1)
            for process in processes {
                while process.isRunning {
                    try await Task.sleep(for: .milliseconds(10))
                }
                #expect(process.terminationStatus == 0)
            }
            let values = try outputs.flatMap { try JSONDecoder().decode([Int].self, from: Data(contentsOf: $0)) }
            let loads = try await client.get("\(key).loads", as: Int.self)
            #expect(loads == 1, "the loader ran \(loads ?? 0) times across 3 processes")
            #expect(values.count == 30 && Set(values) == [42])
            await client.close()
        }
    }

    @Test("a loader that throws: every waiter gets the error or loads itself, nobody hangs, and the lock is released")
    func loaderThrows() async throws {
        struct DatabaseDown: Error {}
        try await withMemcached { cluster in
            let client = try Self.client(cluster)
            let other = try Self.client(cluster)
            let loads = LoadCounter()
            let started = ContinuousClock.now
            let outcomes = await withTaskGroup(of: Result<Int, any Error>.self) { group in
                for index in 0..<21 {
                    let client = index < 20 ? client : other
                    group.addTask {
                        do {
                            return .success(
                                try await client.get(
                                    "failing",
                                    as: Int.self,
                                    orSet: .seconds(60),
                                    loadTimeout: .seconds(30)
                                ) {
                                    let load = loads.next()
                                    try await Task.sleep(for: .milliseconds(200))
                                    if load == 1 { throw DatabaseDown() }
                                    return 7
                                }
                            )
                        } catch {
                            return .failure(error)
                        }
                    }
                }
                var outcomes: [Result<Int, any Error>] = []
                for await outcome in group {
                    outcomes.append(outcome)
                }
                return outcomes
            }
            let elapsed = ContinuousClock.now - started
            let failures = outcomes.filter { if case .failure(let error) = $0 { error is DatabaseDown } else { false } }
            let values = outcomes.compactMap { try? $0.get() }
            #expect(failures.count + values.count == 21, "every caller got the error or a value: \(outcomes)")
            #expect(!failures.isEmpty && Set(values).isSubset(of: [7]))
            // A waiter left waiting for the load timeout would take 30 s; a loaded two-core machine
            // running the other suites took up to 6 s for the whole group, so the bound is wide.
            #expect(elapsed < .seconds(20), "nobody waited for the load timeout: \(elapsed)")
            #expect(try await client.get("failing.cache-aside-lock", as: String.self) == nil, "the lock was released")
            // What a later caller loaded after the failure was cached; with none, the next call loads.
            #expect(
                try await client.get("failing", as: Int.self, orSet: .seconds(60)) { 8 } == (values.isEmpty ? 8 : 7)
            )
            await client.close()
            await other.close()
        }
    }

    @Test("a lock whose holder died: the waiter loads itself after loadTimeout; a cache that is down is a miss")
    func deadHolderAndDeadCache() async throws {
        try await withMemcached { cluster in
            let client = try Self.client(cluster)
            // A lock left by a process that died while loading.
            #expect(try await client.add("orphan.cache-aside-lock", "someone-else", expiration: .seconds(120)))
            let started = ContinuousClock.now
            let value = try await client.get(
                "orphan",
                as: String.self,
                orSet: .seconds(60),
                loadTimeout: .milliseconds(400)
            ) {
                "loaded"
            }
            let waited = ContinuousClock.now - started
            #expect(value == "loaded")
            #expect(waited >= .milliseconds(400), "it waited for the holder first: \(waited)")
            // Waiting for the orphaned lock would take 120 s; a loaded machine took 5 s for the
            // 400 ms of polling, so the bound is wide.
            #expect(waited < .seconds(60), "then loaded itself: \(waited)")
            await client.close()
        }
        // No server at all: the call still returns the loaded value.
        let refusing = try RefusingLoopbackPort()
        defer { refusing.release() }
        var configuration = try MemcachedConfiguration(servers: [refusing.address])
        configuration.connectTimeout = .milliseconds(300)
        let client = try MemcachedClient(configuration: configuration)
        let value = try await client.get("anything", as: Int.self, orSet: .seconds(60)) { 42 }
        #expect(value == 42)
        await client.close()
    }

    @Test("cacheAside reports the source of its value, the read that failed and the store's outcome")
    func reportsWhatHappened() async throws {
        try await withMemcached { cluster in
            let client = try Self.client(cluster)
            let loaded = try await client.cacheAside("report", expiration: .seconds(60)) { "from the loader" }
            #expect(loaded.value == "from the loader" && loaded.source == .loaded)
            #expect(loaded.store == .applied && loaded.readError == nil)
            let hit = try await client.cacheAside("report", expiration: .seconds(60)) { "loaded again" }
            #expect(hit.value == "from the loader" && hit.source == .cache)
            #expect(hit.store == nil && hit.readError == nil)

            // A value over the configured 1 MiB limit (compression off): refused before anything
            // is sent, and the loaded value still returned.
            let large = String(repeating: "x", count: 2 << 20)
            let refused = try await client.cacheAside("large", expiration: .seconds(60)) {
                MemcachedStoredValue.text(large)
            }
            #expect(refused.source == .loaded && refused.value == .text(large))
            #expect(refused.store?.error?.code == .valueTooLarge, "\(String(describing: refused.store))")

            // A second task misses while the first loads: it waits for that load.
            let started = AsyncGate()
            let release = AsyncGate()
            let first = Task(executorPreference: ThreadPerJobExecutor()) {
                try await client.cacheAside("shared", as: Int.self, expiration: .seconds(60)) {
                    started.open()
                    await release.wait()
                    return 7
                }
            }
            defer { release.open() }
            await started.wait()
            let second = Task(executorPreference: ThreadPerJobExecutor()) {
                try await client.cacheAside("shared", as: Int.self, expiration: .seconds(60)) { 8 }
            }
            try await waitUntil { client.loadFlights.waitingTasks("shared") == 1 }
            release.open()
            let (leader, follower) = try await (first.value, second.value)
            #expect(leader.source == .loaded && leader.value == 7 && leader.store == .applied)
            #expect(follower.source == .loadedByAnotherTask && follower.value == 7 && follower.store == nil)

            // Another process holds the lock and stores the value once this call polls for it.
            #expect(try await client.add("other.cache-aside-lock", "another process", expiration: .seconds(60)))
            let missesBefore = try await Self.misses(client)
            let waiting = Task(executorPreference: ThreadPerJobExecutor()) {
                try await client.cacheAside("other", as: String.self, expiration: .seconds(60)) { "loaded here" }
            }
            // Its first read and its first poll after finding the lock taken.
            let deadline = ContinuousClock.now + .seconds(30)
            while try await Self.misses(client) < missesBefore + 2, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(try await client.set("other", "stored by the other process"))
            let waited = try await waiting.value
            #expect(waited.value == "stored by the other process" && waited.source == .loadedByAnotherProcess)
            #expect(waited.store == nil)
            await client.close()
        }
        // No server: every read fails and the store fails; the loaded value is still returned.
        let refusing = try RefusingLoopbackPort()
        defer { refusing.release() }
        var configuration = try MemcachedConfiguration(servers: [refusing.address])
        configuration.connectTimeout = .milliseconds(300)
        let client = try MemcachedClient(configuration: configuration)
        let unreachable: MemcachedCacheAsideResult<Int>
        do {
            unreachable = try await client.cacheAside("anything", as: Int.self, expiration: .seconds(60)) { 42 }
        } catch {
            await client.close()
            throw error
        }
        await client.close()
        #expect(unreachable.value == 42 && unreachable.source == .loaded)
        #expect(unreachable.readError != nil, "the failed read is reported")
        #expect(
            unreachable.store?.error != nil,
            "the failed store is reported: \(String(describing: unreachable.store))"
        )
    }

    /// The servers' count of reads that missed.
    static func misses(_ client: MemcachedClient) async throws -> Int {
        try await client.stats().reduce(0) { $0 + (Int((try? $1.result.get())?["get_misses"] ?? "") ?? 0) }
    }
}

/// A gate tasks wait at until it opens; waiting after it opened returns at once.
final class AsyncGate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { continuation in
            let resumeNow = state.withLock { state in
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { state in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// How many times a loader ran, shared by the tasks that may run it.
final class LoadCounter: Sendable {
    private let value = Atomic(0)

    /// Counts a run; returns its number, from 1.
    func next() -> Int { value.add(1, ordering: .relaxed).newValue }

    var count: Int { value.load(ordering: .relaxed) }
}
