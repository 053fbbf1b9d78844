import Foundation
import MemcachedTestSupport
import Testing

@testable import Memcached

/// Coalesced reads (`MemcachedClient.Options.coalescesReads`): single-key reads that find every
/// connection busy are served by one multi-get, each caller answered with exactly its own value,
/// miss or error. Against real memcached servers.
// Dispatch threads, not a thread per job: the 64-task test resumes its tasks a few hundred
// thousand times, and a thread for each starved the rest of the suite for over 30 s.
@Suite("Coalesced reads", .offCooperativePool, .timeLimit(.minutes(5)))
struct CoalescingTests {
    static func client(
        _ servers: [String],
        connections: Int,
        timeout: Duration = .seconds(5),
        waitTimeout: Duration = .seconds(120)
    ) throws -> MemcachedClient {
        var configuration = try MemcachedConfiguration(servers: servers)
        configuration.timeout = timeout
        configuration.connectTimeout = timeout
        var options = MemcachedClient.Options()
        options.maximumConnections = connections
        options.connectionWaitTimeout = waitTimeout
        #expect(options.coalescesReads, "on by default")
        return try MemcachedClient(configuration: configuration, options: options)
    }

    /// What a key holds, by its name: text keys hold text, number keys a number, missing keys
    /// nothing; each value is a function of its key.
    static func expected(_ key: String) -> (any Sendable)? {
        if key.hasPrefix("text:") { return "value of \(key)" }
        if key.hasPrefix("number:") { return Int(key.dropFirst(7))! * 7 }
        return nil
    }

    @Test(
        "64 tasks x 2,000 reads (10,000 with MEMCACHED_SOAK=1) of random keys over 3 servers, two types and misses: no wrong answer"
    )
    func manyTasksGetTheirOwnValues() async throws {
        try await withMemcached(servers: 3) { cluster in
            let client = try Self.client(cluster.addresses, connections: 8)
            let keyCount = 1_000
            let setup = try MemcachedConnection(configuration: MemcachedConfiguration(servers: cluster.addresses))
            for index in 0..<keyCount {
                try setup.set("text:\(index)", "value of text:\(index)")
                try setup.set("number:\(index)", index * 7)
            }
            setup.close()

            // 640,000 reads take 45 s in a debug build: the soak run has them, the suite a fifth.
            let readsPerTask = ProcessInfo.processInfo.environment["MEMCACHED_SOAK"] == "1" ? 10_000 : 2_000
            let wrong = try await withThrowingTaskGroup(of: [String].self) { group in
                for task in 0..<64 {
                    group.addTask {
                        var random = SplitMix64(state: UInt64(task) &* 0x9E37_79B9_7F4A_7C15 | 1)
                        var wrong: [String] = []
                        for _ in 0..<readsPerTask {
                            let index = Int(random.next() % UInt64(keyCount))
                            switch random.next() % 3 {
                            case 0:
                                let key = "text:\(index)"
                                let value = try await client.get(key, as: String.self)
                                if value != Self.expected(key) as? String {
                                    wrong.append("\(key) -> \(String(describing: value))")
                                }
                            case 1:
                                let key = "number:\(index)"
                                let value = try await client.get(key, as: Int.self)
                                if value != Self.expected(key) as? Int {
                                    wrong.append("\(key) -> \(String(describing: value))")
                                }
                            default:
                                let key = "missing:\(index)"
                                if let value = try await client.get(key, as: String.self) {
                                    wrong.append("\(key) -> \(value)")
                                }
                            }
                        }
                        return wrong
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            let (batches, reads) = client.pool.coalescedCommands
            print(
                "coalescing: \(64 * readsPerTask) reads, \(reads) of them in \(batches) batches, \(wrong.count) wrong"
            )
            #expect(wrong.isEmpty, "\(wrong.count) wrong answers, first: \(wrong.prefix(5))")
            #expect(batches > 0 && reads > batches, "reads were coalesced: \(reads) in \(batches) batches")
            await client.close()
        }
    }

    /// Holds every connection of a one-connection client while `queue` starts reads, and waits
    /// until `count` of them wait in batches.
    static func withQueuedReads<Result: Sendable>(
        _ client: MemcachedClient,
        count: Int,
        _ queue: () -> Result
    ) async throws -> (Result, ConnectionHolder) {
        let holder = try await ConnectionHolder(client)
        let result = queue()
        try await waitUntil { client.pool.queuedCommandCount == count }
        return (result, holder)
    }

    @Test("one server paused while its batch reads: only the reads of its keys fail, within the timeout")
    func pausedServerFailsOnlyItsKeys() async throws {
        try await withMemcached(servers: 3) { cluster in
            // Scaled: the servers that answer must answer within it on a loaded machine too.
            let timeout = Duration.milliseconds(800).scaledForTests
            let client = try Self.client(cluster.addresses, connections: 1, timeout: timeout)
            let keys = (0..<30).map { "paused:\($0)" }
            var owners: [String: String] = [:]
            try await client.withConnection { connection in
                for key in keys {
                    try connection.set(key, "value of \(key)")
                }
            }
            for key in keys {
                owners[key] = try await client.withConnection { try $0.server(forKey: key) }
            }
            let paused = cluster.servers[1]
            let pausedAddress = cluster.addresses[1]
            #expect(owners.values.contains(pausedAddress) && Set(owners.values).count == 3)

            let (reads, holder) = try await Self.withQueuedReads(client, count: keys.count) {
                keys.map { key in
                    Task(executorPreference: ThreadPerJobExecutor()) { () -> (Duration, Result<String?, any Error>) in
                        let start = ContinuousClock.now
                        let outcome = await result { try await client.get(key, as: String.self) }
                        return (start.duration(to: .now), outcome)
                    }
                }
            }
            paused.pause()
            defer { paused.resume() }
            let released = ContinuousClock.now
            try await holder.release()
            for (key, read) in zip(keys, reads) {
                let (_, result) = await read.value
                let elapsedSinceRelease = released.duration(to: .now)
                if owners[key] == pausedAddress {
                    #expect(throws: MemcachedError.self, "\(key) is on the paused server") { try result.get() }
                    if case .failure(let error as MemcachedError) = result {
                        #expect(error.code == .timeout, "\(key): \(error)")
                    }
                } else {
                    #expect(try result.get() == "value of \(key)", "\(key) is on a server that answers")
                }
                #expect(
                    elapsedSinceRelease < (timeout * 1.5).scaledForTests + .seconds(1),
                    "\(key) took \(elapsedSinceRelease)"
                )
            }
            await client.close()
        }
    }

    @Test("cancelling half the callers of a waiting batch answers them at once; the rest get their values")
    func cancellingHalfABatch() async throws {
        try await withMemcached { cluster in
            let client = try Self.client(cluster.addresses, connections: 1)
            let keys = (0..<20).map { "cancel:\($0)" }
            for key in keys {
                try await client.set(key, "value of \(key)")
            }
            let (reads, holder) = try await Self.withQueuedReads(client, count: keys.count) {
                keys.map { key in
                    Task(executorPreference: ThreadPerJobExecutor()) { try await client.get(key, as: String.self) }
                }
            }
            for read in reads.enumerated() where read.offset.isMultiple(of: 2) {
                read.element.cancel()
                let result = await read.element.result
                #expect(throws: CancellationError.self) { try result.get() }
            }
            #expect(client.pool.waiterCount == 1, "the batch still waits for the others")
            try await holder.release()
            for (index, read) in reads.enumerated() where !index.isMultiple(of: 2) {
                #expect(try await read.value == "value of \(keys[index])")
            }

            // Every caller of a batch cancelled: the batch leaves the queue.
            let (second, secondHolder) = try await Self.withQueuedReads(client, count: 3) {
                (0..<3).map { index in
                    Task(executorPreference: ThreadPerJobExecutor()) {
                        try await client.get(keys[index], as: String.self)
                    }
                }
            }
            #expect(client.pool.waiterCount == 1)
            for read in second {
                read.cancel()
                _ = await read.result
            }
            #expect(client.pool.waiterCount == 0 && client.pool.queuedCommandCount == 0)
            try await secondHolder.release()
            await client.close()
        }
    }

    @Test("one batch of several types: each caller decodes its own; one that cannot decode fails alone")
    func mixedTypesInOneBatch() async throws {
        try await withMemcached { cluster in
            let client = try Self.client(cluster.addresses, connections: 1)
            try await client.set("shared", "text")
            try await client.set("count", 42)
            let (reads, holder) = try await Self.withQueuedReads(client, count: 5) {
                let executor = ThreadPerJobExecutor()
                return (
                    Task(executorPreference: executor) { try await client.get("shared", as: String.self) },
                    Task(executorPreference: executor) { try await client.get("shared", as: [UInt8].self) },
                    Task(executorPreference: executor) { try await client.get("shared", as: Int.self) },
                    Task(executorPreference: executor) { try await client.get("count", as: Int.self) },
                    Task(executorPreference: executor) { try await client.get("absent", as: Int.self) }
                )
            }
            try await holder.release()
            #expect(try await reads.0.value == "text")
            #expect(try await reads.1.value == Array("text".utf8))
            let error = await #expect(throws: MemcachedError.self) { try await reads.2.value }
            #expect(error?.code == .undecodableValue && error?.key == "shared")
            #expect(try await reads.3.value == 42)
            #expect(try await reads.4.value == nil)
            #expect(client.pool.coalescedCommands.batches == 1)
            await client.close()
        }
    }

    @Test("gets calls join the batch with gets: each gets its own value and a token that works; a miss is nil")
    func getsInABatch() async throws {
        try await withMemcached(servers: 2) { cluster in
            let client = try Self.client(cluster.addresses, connections: 1)
            let keys = (0..<6).map { "versioned:\($0)" }
            for key in keys {
                try await client.set(key, "v1 of \(key)")
            }
            let (reads, holder) = try await Self.withQueuedReads(client, count: keys.count + 2) {
                let executor = ThreadPerJobExecutor()
                let getsReads = keys.map { key in
                    Task(executorPreference: executor) { () -> (String, MemcachedCASToken)? in
                        try await client.gets(key, as: String.self).map { ($0.value, $0.token) }
                    }
                }
                let plain = Task(executorPreference: executor) { () -> (String, MemcachedCASToken)? in
                    try await client.get(keys[0], as: String.self).map { ($0, MemcachedCASToken(rawValue: 0)) }
                }
                let missing = Task(executorPreference: executor) { () -> (String, MemcachedCASToken)? in
                    try await client.gets("versioned:absent", as: String.self).map { ($0.value, $0.token) }
                }
                return getsReads + [plain, missing]
            }
            try await holder.release()
            #expect(client.pool.coalescedCommands.batches == 1)
            var tokens: [String: MemcachedCASToken] = [:]
            for (key, read) in zip(keys, reads) {
                let hit = try #require(try await read.value)
                #expect(hit.0 == "v1 of \(key)")
                tokens[key] = hit.1
            }
            #expect(try await reads[keys.count].value?.0 == "v1 of \(keys[0])")
            #expect(try await reads[keys.count + 1].value == nil)
            // The tokens are the items' own: a cas with each succeeds once, and a stale one fails.
            for key in keys {
                #expect(try await client.cas(key, "v2 of \(key)", token: tokens[key]!))
                #expect(try await client.cas(key, "v3 of \(key)", token: tokens[key]!) == false)
                #expect(try await client.get(key, as: String.self) == "v2 of \(key)")
            }
            await client.close()
        }
    }

    @Test("in a batch, a hit without a CAS token fails the gets caller with protocolError and serves the get caller")
    func batchHitWithoutToken() async throws {
        // Answers every read with the one value, without a CAS token.
        let server = try ScriptedServer { line in
            line.hasPrefix("get") ? Array("VALUE bad 16 1\r\nx\r\nEND\r\n".utf8) : nil
        }
        defer { server.stop() }
        let client = try Self.client([server.address], connections: 1)
        let (reads, holder) = try await Self.withQueuedReads(client, count: 2) {
            let executor = ThreadPerJobExecutor()
            return (
                Task(executorPreference: executor) { try await client.gets("bad", as: String.self)?.value },
                Task(executorPreference: executor) { try await client.get("bad", as: String.self) }
            )
        }
        try await holder.release()
        let error = await #expect(throws: MemcachedError.self) { try await reads.0.value }
        #expect(error?.code == .protocolError && error?.key == "bad", "\(String(describing: error))")
        #expect(try await reads.1.value == "x")
        #expect(client.pool.coalescedCommands.batches == 1)
        await client.close()
    }

    @Test(
        "a small getMulti that finds every connection busy joins the batch: hits, misses, prefix and repeats as alone"
    )
    func smallGetMultiJoinsTheBatch() async throws {
        try await withMemcached(servers: 2) { cluster in
            let client = try Self.client(cluster.addresses, connections: 1)
            for key in ["a", "b", "c"] {
                try await client.set("pre:\(key)", "value of \(key)")
            }
            let keys = ["a", "b", "missing", "a", "c"]
            let (reads, holder) = try await Self.withQueuedReads(client, count: 4 + 1) {
                let executor = ThreadPerJobExecutor()
                return (
                    Task(executorPreference: executor) {
                        try await client.getMulti(keys, keyPrefix: "pre:", as: String.self)
                    },
                    Task(executorPreference: executor) { try await client.get("pre:b", as: String.self) }
                )
            }
            #expect(client.pool.waiterCount == 1, "one batch waits")
            try await holder.release()
            let coalesced = try await reads.0.value
            #expect(try await reads.1.value == "value of b")
            #expect(client.pool.coalescedCommands == (batches: 1, commands: 5))
            let alone = try await client.withConnection { try $0.getMulti(keys, keyPrefix: "pre:", as: String.self) }
            #expect(coalesced.hits == ["a": "value of a", "b": "value of b", "c": "value of c"])
            #expect(coalesced.hits == alone.hits)
            #expect(coalesced.failures.isEmpty && alone.failures.isEmpty)
            await client.close()
        }
    }

    @Test("in a coalesced getMulti, a value that does not decode fails only its key, named without the prefix")
    func coalescedGetMultiKeyFailure() async throws {
        try await withMemcached { cluster in
            let client = try Self.client(cluster.addresses, connections: 1)
            try await client.set("pre:number", 5)
            try await client.set("pre:word", "five")
            let (read, holder) = try await Self.withQueuedReads(client, count: 2) {
                Task(executorPreference: ThreadPerJobExecutor()) {
                    try await client.getMulti(["number", "word"], keyPrefix: "pre:", as: Int.self)
                }
            }
            try await holder.release()
            let result = try await read.value
            #expect(result.hits == ["number": 5])
            #expect(result.failures["word"]?.code == .undecodableValue)
            #expect(result.failures["word"]?.key == "word")
            #expect(client.pool.coalescedCommands.batches == 1)
            await client.close()
        }
    }

    @Test("cancelling a coalesced getMulti answers it at once; the batch still serves the others")
    func cancellingACoalescedGetMulti() async throws {
        try await withMemcached { cluster in
            let client = try Self.client(cluster.addresses, connections: 1)
            try await client.set("kept", "value")
            let (reads, holder) = try await Self.withQueuedReads(client, count: 3 + 1) {
                let executor = ThreadPerJobExecutor()
                return (
                    Task(executorPreference: executor) { try await client.getMulti(["x", "y", "z"], as: String.self) },
                    Task(executorPreference: executor) { try await client.get("kept", as: String.self) }
                )
            }
            reads.0.cancel()
            let cancelled = await reads.0.result
            #expect(throws: CancellationError.self) { try cancelled.get() }
            #expect(client.pool.waiterCount == 1, "the batch still waits for the get")
            try await holder.release()
            #expect(try await reads.1.value == "value")
            await client.close()
        }
    }

    @Test(
        "a coalesced getMulti's keys share one batch: a new one when the forming batch lacks room, none when they exceed a batch"
    )
    func coalescedGetMultiStaysInOneBatch() async throws {
        try await withMemcached { cluster in
            var configuration = try MemcachedConfiguration(servers: cluster.addresses)
            configuration.timeout = .seconds(5)
            var options = MemcachedClient.Options()
            options.maximumConnections = 1
            options.maximumCoalescedCommands = 4
            // A loaded machine took over 5 s to start the reads (1 of 20 loaded suite runs).
            options.connectionWaitTimeout = .seconds(120)
            let client = try MemcachedClient(configuration: configuration, options: options)
            let keys = (0..<5).map { "together:\($0)" }
            for key in keys {
                try await client.set(key, "value of \(key)")
            }
            // The three single reads first, then the pair: the forming batch has room for one.
            let (singles, holder) = try await Self.withQueuedReads(client, count: 3) {
                keys[0..<3].map { key in
                    Task(executorPreference: ThreadPerJobExecutor()) { try await client.get(key, as: String.self) }
                }
            }
            let pair = Task(executorPreference: ThreadPerJobExecutor()) {
                try await client.getMulti(Array(keys[3..<5]), as: String.self).hits
            }
            try await waitUntil { client.pool.queuedCommandCount == 5 }
            let reads = (singles, pair)
            #expect(client.pool.waiterCount == 2, "3 reads in one batch, the pair in a second")
            #expect(client.pool.formingBatchCount == 2, "the pair was not split")
            // Five keys cannot share a batch of four: the call waits alone.
            let five = Task(executorPreference: ThreadPerJobExecutor()) {
                try await client.getMulti(keys, as: String.self).hits
            }
            try await waitUntil { client.pool.waiterCount == 3 }
            #expect(client.pool.queuedCommandCount == 5)
            try await holder.release()
            for (key, read) in zip(keys, reads.0) {
                #expect(try await read.value == "value of \(key)")
            }
            #expect(
                try await reads.1.value == ["together:3": "value of together:3", "together:4": "value of together:4"]
            )
            #expect(try await five.value.count == 5)
            #expect(client.pool.coalescedCommands == (batches: 2, commands: 5))
            await client.close()
        }
    }

    @Test("a coalesced getMulti throws poolTimeout after its wait; one cancelled alone in its batch leaves the queue")
    func coalescedGetMultiTimeoutAndCancellation() async throws {
        try await withMemcached { cluster in
            let wait = Duration.milliseconds(300)
            let client = try Self.client(cluster.addresses, connections: 1, waitTimeout: wait)
            let holder = try await ConnectionHolder(client)
            let clock = ContinuousClock()
            let start = clock.now
            let error = await #expect(throws: MemcachedError.self) {
                try await client.getMulti(["slow:1", "slow:2"], as: String.self)
            }
            #expect(error?.code == .poolTimeout)
            #expect(start.duration(to: clock.now) >= wait * 0.9)
            #expect(client.pool.waiterCount == 0 && client.pool.queuedCommandCount == 0)
            try await holder.release()
            await client.close()

            // A wait no run reaches, so that the call can only end by being cancelled.
            let patient = try Self.client(cluster.addresses, connections: 1)
            let patientHolder = try await ConnectionHolder(patient)
            let cancelled = Task(executorPreference: ThreadPerJobExecutor()) {
                try await patient.getMulti(["gone:1", "gone:2", "gone:3"], as: String.self)
            }
            try await waitUntil { patient.pool.queuedCommandCount == 3 }
            cancelled.cancel()
            let outcome = await cancelled.result
            #expect(throws: CancellationError.self) { try outcome.get() }
            #expect(patient.pool.waiterCount == 0 && patient.pool.queuedCommandCount == 0, "its batch left the queue")
            try await patientHolder.release()
            await patient.close()
        }
    }

    @Test(
        "in a coalesced getMulti, the keys of a server that refuses fail in failures, named without the prefix, as alone"
    )
    func coalescedGetMultiServerFailure() async throws {
        try await withMemcached { cluster in
            let refused = try RefusingLoopbackPort()
            defer { refused.release() }
            let client = try Self.client(cluster.addresses + [refused.address], connections: 1)
            let keys = (0..<12).map { "spread:\($0)" }
            var owners: [String: String] = [:]
            for key in keys {
                owners[key] = try await client.withConnection { try $0.server(forKey: "p:" + key) }
                if owners[key] == cluster.addresses[0] {
                    try await client.set("p:" + key, "value of \(key)")
                }
            }
            let onRefused = Set(keys.filter { owners[$0] != cluster.addresses[0] })
            #expect(!onRefused.isEmpty && onRefused.count < keys.count, "keys on both servers")
            let (read, holder) = try await Self.withQueuedReads(client, count: keys.count) {
                Task(executorPreference: ThreadPerJobExecutor()) {
                    try await client.getMulti(keys, keyPrefix: "p:", as: String.self)
                }
            }
            try await holder.release()
            let coalesced = try await read.value
            let alone = try await client.withConnection { try $0.getMulti(keys, keyPrefix: "p:", as: String.self) }
            #expect(Set(coalesced.failures.keys) == onRefused)
            #expect(coalesced.failures.allSatisfy { $0.key == $0.value.key }, "named without the prefix")
            #expect(coalesced.hits == alone.hits)
            #expect(Set(alone.failures.keys) == onRefused)
            await client.close()
        }
    }

    @Test("a getMulti over the limit waits for a connection of its own; Unicode-equal keys fail at once")
    func largeOrInvalidGetMultiIsNotCoalesced() async throws {
        try await withMemcached { cluster in
            let client = try Self.client(cluster.addresses, connections: 1)
            let keys = (0...MemcachedClient.coalescedMultiGetLimit).map { "many:\($0)" }
            for key in keys {
                try await client.set(key, key)
            }
            let holder = try await ConnectionHolder(client)
            let large = Task(executorPreference: ThreadPerJobExecutor()) {
                try await client.getMulti(keys, as: String.self)
            }
            try await waitUntil { client.pool.waiterCount == 1 }
            #expect(client.pool.queuedCommandCount == 0, "not in a batch")
            // Precomposed and decomposed "café": one Swift string, two memcached keys.
            let error = await #expect(throws: MemcachedError.self) {
                try await client.getMulti(["caf\u{E9}", "cafe\u{301}"], as: String.self)
            }
            #expect(error?.code == .invalidArguments)
            try await holder.release()
            let result = try await large.value
            #expect(result.hits.count == keys.count)
            await client.close()
        }
    }

    @Test("a batch holds at most maximumCoalescedCommands reads, and reads of one key in a batch share one fetch")
    func batchCapAndSharedFetches() async throws {
        try await withMemcached { cluster in
            var configuration = try MemcachedConfiguration(servers: cluster.addresses)
            configuration.timeout = .seconds(5)
            var options = MemcachedClient.Options()
            options.maximumConnections = 1
            options.maximumCoalescedCommands = 4
            options.connectionWaitTimeout = .seconds(120)
            let client = try MemcachedClient(configuration: configuration, options: options)
            try await client.set("a", "value of a")
            let before = try await Self.requestedKeys(client)
            let keys = Array(repeating: "a", count: 10)
            let (reads, holder) = try await Self.withQueuedReads(client, count: keys.count) {
                keys.map { key in
                    Task(executorPreference: ThreadPerJobExecutor()) { try await client.get(key, as: String.self) }
                }
            }
            #expect(client.pool.waiterCount == 3, "10 reads in batches of at most 4")
            try await holder.release()
            for (key, read) in zip(keys, reads) {
                #expect(try await read.value == "value of \(key)")
            }
            #expect(client.pool.coalescedCommands == (batches: 3, commands: 10))
            // Each batch asked for "a" once: 3 keys requested, not 10.
            let requested = try await Self.requestedKeys(client) - before
            #expect(requested == 3, "\(requested) keys requested")
            await client.close()
        }
    }

    /// The keys the servers were asked for (memcached's `cmd_get`).
    static func requestedKeys(_ client: MemcachedClient) async throws -> Int {
        try await client.stats().reduce(0) { $0 + (Int((try? $1.result.get())?["cmd_get"] ?? "") ?? 0) }
    }

    @Test("keys Swift calls equal but memcached does not (NFC and NFD) read in one burst: each its own value")
    func unicodeEquivalentKeys() async throws {
        try await withMemcached { cluster in
            let client = try Self.client(cluster.addresses, connections: 1)
            let composed = "caf\u{E9}"
            let decomposed = "cafe\u{301}"
            #expect(composed == decomposed && Array(composed.utf8) != Array(decomposed.utf8))
            try await client.set(composed, "composed")
            try await client.set(decomposed, "decomposed")
            let (reads, holder) = try await Self.withQueuedReads(client, count: 2) {
                let executor = ThreadPerJobExecutor()
                return (
                    Task(executorPreference: executor) { try await client.get(composed, as: String.self) },
                    Task(executorPreference: executor) { try await client.get(decomposed, as: String.self) }
                )
            }
            #expect(client.pool.waiterCount == 2, "two batches: one fetch cannot hold both keys")
            try await holder.release()
            #expect(try await reads.0.value == "composed")
            #expect(try await reads.1.value == "decomposed")
            await client.close()
        }
    }

    @Test("a read that joined a waiting batch late still waits its own full connectionWaitTimeout")
    func lateJoinerWaitsItsOwnTime() async throws {
        try await withMemcached { cluster in
            let waitTimeout = Duration.milliseconds(600)
            let client = try Self.client(cluster.addresses, connections: 1, waitTimeout: waitTimeout)
            let holder = try await ConnectionHolder(client)
            let executor = ThreadPerJobExecutor()
            func timedRead(_ key: String) -> Task<(Duration, MemcachedError?), Never> {
                Task(executorPreference: executor) {
                    let start = ContinuousClock.now
                    do {
                        _ = try await client.get(key, as: String.self)
                        return (start.duration(to: .now), nil)
                    } catch {
                        return (start.duration(to: .now), error as? MemcachedError)
                    }
                }
            }
            // Not waited for by polling: the first read is queued only for its 600 ms, a window a
            // loaded machine's poll missed (2 of 20 loaded runs).
            let first = timedRead("first")
            try await Task.sleep(for: .milliseconds(300))
            // Joins the first read's batch, 300 ms into its wait: the batch times out before the
            // late read's own wait is over. (On a machine too loaded to start it within the
            // batch's wait, it starts a batch of its own, and the bounds still hold.)
            let late = timedRead("late")
            for read in [first, late] {
                let (elapsed, error) = await read.value
                #expect(error?.code == .poolTimeout, "\(String(describing: error))")
                #expect(elapsed >= waitTimeout, "failed after \(elapsed)")
                #expect(elapsed < (waitTimeout * 2).scaledForTests + .seconds(2), "failed after \(elapsed)")
            }
            try await holder.release()
            await client.close()
        }
    }
}
