import Foundation
import InMemoryTracing
import Logging
import MemcachedTestSupport
import MetricsTestKit
import Synchronization
import Testing
import Tracing

@testable import Memcached

/// Metrics (swift-metrics), spans (swift-distributed-tracing) and a logger per call, each checked
/// with its test backend against real memcached servers. Each test has its own backend, handed to
/// the configuration: the suite runs in parallel in one process, where a global bootstrap would mix
/// the tests' numbers.
@Suite("Metrics, tracing and call loggers", .offCooperativePool, .timeLimit(.minutes(5)))
struct ObservabilityTests {
    static func configuration(
        _ servers: [String],
        metrics: TestMetrics? = nil,
        tracer: InMemoryTracer? = nil,
        timeout: Duration = .seconds(5)
    ) throws -> MemcachedConfiguration {
        var configuration = try MemcachedConfiguration(servers: servers)
        configuration.timeout = timeout
        configuration.connectTimeout = timeout
        configuration.metrics = MemcachedMetrics(factory: metrics)
        configuration.tracing = MemcachedTracing(tracer: tracer)
        return configuration
    }

    /// A client of `connections` connections whose waits for one end after `waitTimeout`.
    static func client(
        _ configuration: MemcachedConfiguration,
        connections: Int,
        waitTimeout: Duration = .seconds(120)
    ) throws -> MemcachedClient {
        var options = MemcachedClient.Options()
        options.maximumConnections = connections
        options.connectionWaitTimeout = waitTimeout
        return try MemcachedClient(configuration: configuration, options: options)
    }

    /// The total of the outcome counters of `command` with `outcome` (and `error`, and `server`).
    static func outcomes(
        _ metrics: TestMetrics,
        _ command: String,
        _ outcome: String,
        error: String? = nil,
        server: String? = nil
    ) -> Int64 {
        metrics.counters(label: "memcached_command_outcomes_total").filter { counter in
            let dimensions = Dictionary(counter.dimensions, uniquingKeysWith: { first, _ in first })
            return dimensions["command"] == command && dimensions["outcome"] == outcome
                && (error == nil || dimensions["error"] == error) && (server == nil || dimensions["server"] == server)
        }.reduce(0) { $0 + $1.totalValue }
    }

    /// Every outcome counted, by `command/outcome`, leaving out zeros.
    static func allOutcomes(_ metrics: TestMetrics) -> [String: Int64] {
        var all: [String: Int64] = [:]
        for counter in metrics.counters(label: "memcached_command_outcomes_total") where counter.totalValue > 0 {
            let dimensions = Dictionary(counter.dimensions, uniquingKeysWith: { first, _ in first })
            all["\(dimensions["command"]!)/\(dimensions["outcome"]!)", default: 0] += counter.totalValue
        }
        return all
    }

    static func calls(_ metrics: TestMetrics, _ command: String) throws -> Int {
        try metrics.expectTimer("memcached_command_duration_seconds", [("command", command)]).values.count
    }

    // MARK: - Metrics

    @Test(
        "a connection counts each command's outcome once: hits, misses, stored, not stored, per key for multi-key calls"
    )
    func connectionCountsOutcomes() throws {
        try withMemcached { cluster in
            let metrics = TestMetrics()
            let connection = try MemcachedConnection(
                configuration: Self.configuration(cluster.addresses, metrics: metrics)
            )
            #expect(try connection.set("a", "1"))
            #expect(try !connection.add("a", "2"))
            #expect(try connection.get("a", as: String.self) == "1")
            #expect(try connection.get("b", as: String.self) == nil)
            #expect(try connection.gets("a", as: String.self) != nil)
            #expect(try connection.set("c", "3"))
            let multi = try connection.getMulti(["a", "b", "c"], as: String.self)
            #expect(multi.hits.count == 2)
            #expect(try connection.delete("a"))
            #expect(try !connection.delete("a"))
            #expect(try connection.increment("counter") == nil)
            #expect(try connection.touch("c", expiration: .seconds(60)))
            #expect(try !connection.append("missing", "x"))
            let stored = try connection.setMulti(["d": "4", "e": "5"])
            #expect(stored.values.allSatisfy { $0.isApplied })
            let deleted = try connection.deleteMulti(["d", "nothing"])
            #expect(deleted["d"] == .applied)
            _ = try connection.stats()
            _ = try connection.versions()
            try connection.flush()

            #expect(
                Self.allOutcomes(metrics) == [
                    "set/stored": 2, "add/not_stored": 1, "get/hit": 1, "get/miss": 1, "gets/hit": 1,
                    "get_multi/hit": 2, "get_multi/miss": 1, "delete/hit": 1, "delete/miss": 1, "incr/miss": 1,
                    "touch/hit": 1, "append/not_stored": 1, "set_multi/stored": 2, "delete_multi/hit": 1,
                    "delete_multi/miss": 1, "stats/ok": 1, "version/ok": 1, "flush_all/ok": 1,
                ]
            )
            // The timer counts calls, the keys recorder the keys of each multi-key call.
            #expect(try Self.calls(metrics, "get") == 2)
            #expect(try Self.calls(metrics, "get_multi") == 1)
            #expect(try Self.calls(metrics, "set_multi") == 1)
            let keys = try metrics.expectRecorder("memcached_keys_per_call", [("command", "get_multi")])
            #expect(keys.values == [3])
            #expect(try metrics.expectRecorder("memcached_keys_per_call", [("command", "delete_multi")]).values == [2])
            connection.close()
        }
    }

    @Test("errors are counted by their code: an invalid key, a server that never answers (timeout), a refused server")
    func errorsCountedByCode() throws {
        let silent = try SilentServer()
        defer { silent.stop() }
        let refusing = try RefusingLoopbackPort()
        defer { refusing.release() }
        let metrics = TestMetrics()
        var configuration = try Self.configuration(
            [silent.address],
            metrics: metrics,
            timeout: .milliseconds(300)
        )
        configuration.metrics.labelsServers = true
        let connection = try MemcachedConnection(configuration: configuration)
        let invalid = #expect(throws: MemcachedError.self) { try connection.get("has space", as: String.self) }
        let timedOut = #expect(throws: MemcachedError.self) { try connection.set("key", "value") }
        #expect(timedOut?.code == .timeout)
        #expect(Self.outcomes(metrics, "get", "error", error: invalid?.code.description) == 1)
        // The error names its server, and so does the counter with `labelsServers`.
        #expect(Self.outcomes(metrics, "set", "error", error: "timeout", server: silent.address) == 1)
        #expect(Self.allOutcomes(metrics) == ["get/error": 1, "set/error": 1])
        connection.close()

        let refused = try MemcachedConnection(
            configuration: Self.configuration(["127.0.0.1:\(refusing.port)"], metrics: metrics)
        )
        let multi = try refused.getMulti(["x", "y"], as: String.self)
        let code = try #require(multi.failures["x"]?.code)
        #expect(Self.outcomes(metrics, "get_multi", "error", error: code.description) == 2)
        refused.close()
    }

    @Test("labelsServers names the server of each single-key command; without it, no server dimension")
    func serverDimension() throws {
        try withMemcached(servers: 2) { cluster in
            let metrics = TestMetrics()
            var configuration = try Self.configuration(cluster.addresses, metrics: metrics)
            configuration.metrics.labelsServers = true
            configuration.metrics.dimensions = [("cluster", "films")]
            let connection = try MemcachedConnection(configuration: configuration)
            var expected: [String: Int64] = [:]
            for index in 0..<20 {
                let key = "film:\(index)"
                try connection.set(key, index)
                expected[try connection.server(forKey: key), default: 0] += 1
            }
            #expect(expected.count == 2, "the keys spread over both servers")
            for (server, count) in expected {
                #expect(Self.outcomes(metrics, "set", "stored", server: server) == count)
            }
            let counters = metrics.counters(label: "memcached_command_outcomes_total").filter { $0.totalValue > 0 }
            #expect(counters.allSatisfy { $0.dimensions.contains { $0 == ("cluster", "films") } })
            connection.close()

            let unlabelled = TestMetrics()
            let plain = try MemcachedConnection(
                configuration: Self.configuration(cluster.addresses, metrics: unlabelled)
            )
            try plain.set("film:1", 1)
            let used = unlabelled.counters(label: "memcached_command_outcomes_total").filter { $0.totalValue > 0 }
            #expect(used.count == 1 && !used[0].dimensions.contains { $0.0 == "server" })
            plain.close()
        }
    }

    @Test("without a metrics backend or tracer nothing is made; with a backend, a client's call counts once")
    func noBackendNoHandles() async throws {
        try await withMemcached { cluster in
            let plain = try MemcachedConnection(configuration: MemcachedConfiguration(servers: cluster.addresses))
            #expect(plain.handle.metrics == nil, "no factory configured and none bootstrapped")
            plain.close()
            let untraced = try MemcachedClient(servers: cluster.addresses)
            #expect(untraced.tracing.tracer == nil, "no tracer configured, the bootstrapped one is NoOpTracer")
            #expect(untraced.pool.metrics == nil)
            await untraced.close()

            let metrics = TestMetrics()
            let client = try Self.client(Self.configuration(cluster.addresses, metrics: metrics), connections: 2)
            try await client.set("k", "v")
            let counted = Self.outcomes(metrics, "set", "stored")
            #expect(counted == 1, "the client's call counted once, on its connection")
            #expect(
                metrics.counters(label: "memcached_command_outcomes_total").count(where: { $0.totalValue > 0 }) == 1
            )
            await client.close()
        }
    }

    @Test("a client: coalesced reads count as their callers' gets; the pool's gauges follow leases, waits and batches")
    func coalescedReadsAndPoolGauges() async throws {
        try await withMemcached { cluster in
            let metrics = TestMetrics()
            let client = try Self.client(Self.configuration(cluster.addresses, metrics: metrics), connections: 1)
            try await client.set("hit:1", "one")
            try await client.set("hit:2", "two")
            let gauges = [
                "connections_open": ("memcached_pool_connections", ("state", "open")),
                "connections_leased": ("memcached_pool_connections", ("state", "leased")),
                "waiting_leases": ("memcached_pool_waiting", ("of", "leases")),
                "queued_commands": ("memcached_pool_waiting", ("of", "coalesced_commands")),
            ]
            let gauge = { (name: String) in
                try metrics.expectGauge(gauges[name]!.0, [gauges[name]!.1]).lastValue
            }
            #expect(try gauge("connections_open") == 1)
            #expect(try gauge("connections_leased") == 0)

            let holder = try await ConnectionHolder(client)
            #expect(try gauge("connections_leased") == 1)
            let reads = [
                Task { try await client.get("hit:1", as: String.self) },
                Task { try await client.get("hit:2", as: String.self) },
                Task { try await client.get("miss:1", as: String.self) },
                Task { try await client.gets("hit:1", as: String.self)?.value },
                Task { try await client.getMulti(["hit:2", "miss:2"], as: String.self).hits["hit:2"] },
            ]
            try await waitUntil { client.pool.queuedCommandCount == 6 }
            #expect(try gauge("queued_commands") == 6)
            #expect(try gauge("waiting_leases") == 1, "one batch waits for the connection")
            try await holder.release()
            var values: [String?] = []
            for read in reads {
                values.append(try await read.value)
            }
            #expect(values == ["one", "two", nil, "one", "two"])
            #expect(client.pool.coalescedCommands.batches == 1)
            #expect(
                Self.allOutcomes(metrics) == [
                    "set/stored": 2, "get/hit": 2, "get/miss": 1, "gets/hit": 1, "get_multi/hit": 1,
                    "get_multi/miss": 1,
                ]
            )
            #expect(try Self.calls(metrics, "get") == 3)
            #expect(try Self.calls(metrics, "get_multi") == 1)
            #expect(try metrics.expectRecorder("memcached_pool_batch_commands", [("batch", "coalesced")]).values == [6])
            #expect(try gauge("queued_commands") == 0)
            #expect(try gauge("waiting_leases") == 0)
            #expect(try gauge("connections_leased") == 0)
            await client.close()
            #expect(try gauge("connections_open") == 0)
        }
    }

    @Test("calls that never reach a connection count too: poolTimeout, a cancelled task (once), an invalid key")
    func failuresBeforeAConnection() async throws {
        let silent = try SilentServer()
        defer { silent.stop() }
        let metrics = TestMetrics()
        let client = try Self.client(
            Self.configuration([silent.address], metrics: metrics, timeout: .seconds(60)),
            connections: 1,
            waitTimeout: .milliseconds(200)
        )
        // The one connection hangs on the silent server until its task is cancelled.
        let hanging = Task { try await client.set("hanging", "value") }
        try await waitUntil { silent.acceptedConnectionCount == 1 }
        await #expect(throws: MemcachedError.self) { try await client.add("waiting", "value") }
        hanging.cancel()
        await #expect(throws: CancellationError.self) { try await hanging.value }
        await #expect(throws: MemcachedError.self) { try await client.get("bad key", as: String.self) }
        #expect(Self.outcomes(metrics, "add", "error", error: "poolTimeout") == 1)
        #expect(Self.outcomes(metrics, "set", "error", error: "cancelled") == 1)
        #expect(Self.outcomes(metrics, "get", "error", error: "invalidKeyCharacters") == 1)
        #expect(
            Self.allOutcomes(metrics) == ["add/error": 1, "set/error": 1, "get/error": 1],
            "the interrupted command was counted once, as cancelled, not also as a timeout"
        )
        await client.close()
    }

    @Test("coalesced fire-and-forget writes count once their batch is flushed")
    func coalescedWritesCountedAfterFlush() async throws {
        try await withMemcached { cluster in
            let metrics = TestMetrics()
            var configuration = try Self.configuration(cluster.addresses, metrics: metrics)
            configuration.noReply = true
            let client = try Self.client(configuration, connections: 1)
            let holder = try await ConnectionHolder(client)
            let writes =
                (0..<3).map { index in Task { try await client.set("w:\(index)", index) } }
                + [Task { try await client.delete("w:0") }]
            try await waitUntil { client.pool.queuedCommandCount == 4 }
            #expect(Self.allOutcomes(metrics).isEmpty, "nothing is counted before the batch runs")
            try await holder.release()
            for write in writes {
                #expect(try await write.value)
            }
            #expect(client.pool.coalescedCommands.batches == 1)
            #expect(Self.allOutcomes(metrics) == ["set/stored": 3, "delete/hit": 1])
            #expect(try Self.calls(metrics, "set") == 3)
            await client.close()
        }
    }

    @Test("cache-aside counts as the caller's get and, when it loads, its set; not its lock or second read")
    func cacheAsideCountsTheCallersCommands() async throws {
        try await withMemcached { cluster in
            let metrics = TestMetrics()
            let client = try MemcachedClient(configuration: Self.configuration(cluster.addresses, metrics: metrics))
            let first = try await client.cacheAside("top5films", as: [String].self, expiration: .seconds(60)) {
                ["ACE GOLDFINGER"]
            }
            let second = try await client.cacheAside("top5films", as: [String].self, expiration: .seconds(60)) {
                ["not loaded"]
            }
            #expect(first.source == .loaded && second.source == .cache)
            #expect(Self.allOutcomes(metrics) == ["get/miss": 1, "set/stored": 1, "get/hit": 1])
            await client.close()
        }
    }

    @Test("every metric carries the configured dimensions: outcomes, timers, key counts and the pool's")
    func dimensionsOnEveryMetric() async throws {
        try await withMemcached { cluster in
            let metrics = TestMetrics()
            var configuration = try Self.configuration(cluster.addresses, metrics: metrics)
            configuration.metrics.dimensions = [("cluster", "films")]
            let client = try MemcachedClient(configuration: configuration)
            try await client.set("k", "v")
            _ = try await client.getMulti(["k", "l"], as: String.self)
            let cluster = ("cluster", "films")
            let hasCluster = { (dimensions: [(String, String)]) in dimensions.contains { $0 == cluster } }
            #expect(metrics.counters.filter { $0.totalValue > 0 }.allSatisfy { hasCluster($0.dimensions) })
            #expect(!metrics.timers.isEmpty && metrics.timers.allSatisfy { hasCluster($0.dimensions) })
            #expect(!metrics.recorders.isEmpty && metrics.recorders.allSatisfy { hasCluster($0.dimensions) })
            #expect(try metrics.expectGauge("memcached_pool_connections", [("state", "open"), cluster]).lastValue == 1)
            await client.close()
        }
    }

    // MARK: - Tracing

    @Test("a client's command is a client span, child of the caller's, with OpenTelemetry's database attributes")
    func spansFollowConventions() async throws {
        try await withMemcached(servers: 2) { cluster in
            let tracer = InMemoryTracer()
            let client = try MemcachedClient(configuration: Self.configuration(cluster.addresses, tracer: tracer))
            let server = try await client.server(forKey: "film:1")
            tracer.clearAll()
            try await tracer.withSpan("GET /films") { _ in
                try await client.set("film:1", "Academy Dinosaur")
                _ = try await client.get("film:1", as: String.self)
                _ = try await client.getMulti(["film:1", "film:2", "film:3"], as: String.self)
            }
            // Each span ends before the next starts, and the caller's last.
            let spans = tracer.finishedSpans
            try #require(spans.map(\.operationName) == ["set", "get", "get_multi", "GET /films"])
            let request = spans[3]
            let commands = Array(spans[0..<3])
            let port = Int(server.split(separator: ":").last!)!
            for span in commands {
                #expect(span.kind == .client)
                #expect(span.parentSpanID == request.spanID)
                #expect(span.traceID == request.traceID)
                #expect(span.attributes["db.system.name"]?.toSpanAttribute() == .string("memcached"))
                #expect(span.attributes["db.operation.name"]?.toSpanAttribute() == .string(span.operationName))
                #expect(span.errors.isEmpty && span.status == nil)
                #expect(span.attributes["memcached.key"] == nil && span.attributes["memcached.keys"] == nil)
            }
            for span in commands.prefix(2) {
                #expect(span.attributes["server.address"]?.toSpanAttribute() == .string("127.0.0.1"))
                #expect(span.attributes["server.port"]?.toSpanAttribute() == .int64(Int64(port)))
            }
            let multi = commands[2]
            #expect(multi.attributes["db.operation.batch.size"]?.toSpanAttribute() == .int64(3))
            #expect(multi.attributes["server.address"] == nil, "three keys on two servers")
            await client.close()
        }
    }

    @Test("a failed command records its error on its span; keys are on spans only when asked for")
    func spanErrorsAndKeys() async throws {
        let silent = try SilentServer()
        defer { silent.stop() }
        let tracer = InMemoryTracer()
        var configuration = try Self.configuration([silent.address], tracer: tracer, timeout: .milliseconds(300))
        configuration.tracing.recordsKeys = true
        let client = try MemcachedClient(configuration: configuration)
        await #expect(throws: MemcachedError.self) { try await client.get("session:42", as: String.self) }
        let span = try #require(tracer.finishedSpans.first)
        #expect(span.operationName == "get")
        #expect(span.errors.count == 1)
        #expect((span.errors.first?.error as? MemcachedError)?.code == .timeout)
        #expect(span.status?.code == .error)
        #expect(span.attributes["error.type"]?.toSpanAttribute() == .string("timeout"))
        #expect(span.attributes["memcached.key"]?.toSpanAttribute() == .string("session:42"))
        // One server: every span names it.
        #expect(span.attributes["server.port"]?.toSpanAttribute() == .int64(Int64(silent.port)))
        await client.close()
    }

    @Test("a failed command's span names the server that failed; recordsKeys puts a multi-get's keys on its span")
    func spanNamesTheFailingServer() async throws {
        let silent = try SilentServer()
        defer { silent.stop() }
        try await withMemcached { cluster in
            let tracer = InMemoryTracer()
            var configuration = try Self.configuration(
                [cluster.addresses[0], silent.address],
                tracer: tracer,
                timeout: .milliseconds(300)
            )
            configuration.tracing.recordsKeys = true
            let client = try MemcachedClient(configuration: configuration)
            var index = 0
            while try await client.server(forKey: "k\(index)") != silent.address {
                index += 1
            }
            let key = "k\(index)"
            await #expect(throws: MemcachedError.self) { try await client.get(key, as: String.self) }
            _ = try? await client.getMulti(["a", "b", "c"], as: String.self)
            _ = try? await client.getMulti(["a"], as: String.self)
            let spans = tracer.finishedSpans
            try #require(spans.count == 3)
            #expect(spans[0].attributes["server.port"]?.toSpanAttribute() == .int64(Int64(silent.port)))
            #expect(spans[0].attributes["error.type"]?.toSpanAttribute() == .string("timeout"))
            #expect(spans[1].attributes["memcached.keys"]?.toSpanAttribute() == .stringArray(["a", "b", "c"]))
            #expect(spans[1].attributes["db.operation.batch.size"]?.toSpanAttribute() == .int64(3))
            #expect(spans[2].attributes["db.operation.batch.size"] == nil, "one key is not a batch")
            await client.close()
        }
    }

    // MARK: - A logger per call

    @Test("a call's logger gets what the call logs, with its metadata; the configuration's logger gets the rest")
    func loggerPerCall() async throws {
        try await withMemcached { cluster in
            let configured = RecordingLogHandler()
            let perCall = RecordingLogHandler()
            var configuration = try MemcachedConfiguration(servers: cluster.addresses)
            configuration.logger = Logger(label: "configured", factory: { _ in configured })
            configuration.logger.logLevel = .trace
            let client = try MemcachedClient(configuration: configuration)
            var requestLogger = Logger(label: "request", factory: { _ in perCall })
            requestLogger.logLevel = .trace
            requestLogger[metadataKey: "request-id"] = "r-1"

            try await client.set("k", "v", logger: requestLogger)
            _ = try await client.get("k", as: String.self, logger: requestLogger)
            _ = try await client.getMulti(["k", "l"], as: String.self, logger: requestLogger)
            let logged = perCall.entries.withLock { $0 }
            #expect(logged.map { $0.metadata["command"] } == ["set", "get", "get_multi"])
            #expect(perCall.metadata["request-id"] == "r-1")
            #expect(configured.entries.withLock { $0 }.isEmpty, "nothing of those calls went to the configured logger")

            _ = try await client.get("k", as: String.self)
            #expect(configured.entries.withLock { $0 }.map { $0.metadata["command"] } == ["get"])
            #expect(perCall.entries.withLock { $0 }.count == 3, "the call's logger is not kept after its call")
            await client.close()
        }
    }
}
