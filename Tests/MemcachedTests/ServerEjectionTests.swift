import Foundation
import MemcachedTestSupport
import Testing

@testable import Memcached

/// One of three servers hung (SIGSTOP) or restarted under a 16-task load through a
/// ``MemcachedClient``: the hung server is marked down after `serverFailureLimit` failed calls, its
/// keys then fail at once (or move, with `removeFailedServers`), the other servers keep their
/// latency, and it is back within `retryTimeout` + 1 s of recovering. Every figure is printed as a
/// `fault report:` line; the limits asserted are relative and generous, the printed numbers are
/// what the note reports.
@Suite("Server ejection under load", .threadPerJob, .timeLimit(.minutes(3)))
struct ServerEjectionTests {
    static let timeout = Duration.milliseconds(500)
    static let retryTimeout = Duration.seconds(2)
    static let failureLimit = 3

    /// One call of the load: when it started and ended, whether its key lives on the victim,
    /// and how it failed.
    struct Sample {
        var start: ContinuousClock.Instant
        var end: ContinuousClock.Instant
        var onVictim: Bool
        var write: Bool
        var failure: MemcachedError.Code?
        var key = ""
        var message = ""
        var elapsed: Duration { end - start }
    }

    /// Runs 16 tasks of gets and sets over `keys` until `stop` is set.
    static func runLoad(
        _ client: MemcachedClient,
        keys: [String],
        victimKeys: Set<String>,
        stop: Locked<Bool>
    ) async -> [Sample] {
        await withTaskGroup(of: [Sample].self) { group in
            for task in 0..<16 {
                group.addTask {
                    var samples: [Sample] = []
                    var generator = SplitMix64(state: UInt64(task + 1))
                    let clock = ContinuousClock()
                    while !stop.withLock({ $0 }) {
                        let key = keys[Int(generator.next() % UInt64(keys.count))]
                        let write = generator.next() % 2 == 0
                        let start = clock.now
                        var failure: MemcachedError.Code?
                        var message = ""
                        do {
                            if write {
                                _ = try await client.set(key, "value-\(key)")
                            } else {
                                _ = try await client.get(key, as: String.self)
                            }
                        } catch let error as MemcachedError {
                            failure = error.code
                            message = "\(error)"
                        } catch {
                            failure = .failure
                        }
                        samples.append(
                            Sample(
                                start: start,
                                end: clock.now,
                                onVictim: victimKeys.contains(key),
                                write: write,
                                failure: failure,
                                key: key,
                                message: message
                            )
                        )
                    }
                    return samples
                }
            }
            return await group.reduce(into: []) { $0 += $1 }
        }
    }

    static func percentile(_ durations: [Duration], _ fraction: Double) -> Duration {
        guard !durations.isEmpty else { return .zero }
        let sorted = durations.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]
    }

    static func milliseconds(_ duration: Duration) -> String {
        String(
            format: "%.2f ms",
            Double(duration.components.attoseconds) / 1e15 + Double(duration.components.seconds) * 1e3
        )
    }

    func makeLoadClient(
        _ cluster: MemcachedCluster,
        _ adjust: (inout MemcachedConfiguration) -> Void = { _ in }
    ) throws -> MemcachedClient {
        try makeClient(cluster, maximumConnections: 16, waitTimeout: .seconds(30)) {
            $0.timeout = Self.timeout
            $0.connectTimeout = Self.timeout
            $0.retryTimeout = Self.retryTimeout
            $0.serverFailureLimit = Self.failureLimit
            adjust(&$0)
        }
    }

    @Test(
        "SIGSTOP of 1 of 3 servers: ejected after the failure limit, its keys then fail at once or move, the others keep their latency, back after SIGCONT",
        arguments: [false, true]
    )
    func hungServer(removeFailedServers: Bool) async throws {
        let cluster = try MemcachedCluster.start(count: 3)
        defer { cluster.stop() }
        let client = try makeLoadClient(cluster) {
            $0.distribution = .consistent
            $0.removeFailedServers = removeFailedServers
        }
        let mapping = try connect(cluster) { $0.distribution = .consistent }
        let keys = (0..<300).map { "eject-\($0)" }
        let victim = cluster.servers[1]
        let victimKeys = Set(try keys.filter { try mapping.server(forKey: $0) == victim.address })
        #expect(!victimKeys.isEmpty)

        let stop = Locked(false)
        let clock = ContinuousClock()
        let controller = Task(executorPreference: ThreadPerJobExecutor()) {
            () -> (ContinuousClock.Instant, ContinuousClock.Instant, Duration?) in
            try? await Task.sleep(for: .seconds(1))
            let stoppedAt = clock.now
            victim.pause()
            try? await Task.sleep(for: .seconds(4))
            let continuedAt = clock.now
            victim.resume()
            // Back, as the server sees it: its first get or set after SIGCONT, counted once it has
            // worked off the requests of calls that timed out while it was stopped.
            func commands() -> Int {
                ((try? statistic("cmd_get", of: victim)) ?? 0) + ((try? statistic("cmd_set", of: victim)) ?? 0)
            }
            try? await Task.sleep(for: .milliseconds(200))
            let countAtContinue = commands()
            var servingAfter: Duration?
            while clock.now - continuedAt < Self.retryTimeout + .seconds(2) {
                if servingAfter == nil, commands() > countAtContinue {
                    servingAfter = clock.now - continuedAt
                }
                try? await Task.sleep(for: .milliseconds(20))
            }
            stop.withLock { $0 = true }
            return (stoppedAt, continuedAt, servingAfter)
        }
        let samples = await Self.runLoad(client, keys: keys, victimKeys: victimKeys, stop: stop)
        let (stoppedAt, continuedAt, servingAfter) = await controller.value
        let serving = try #require(servingAfter, "the server got no get or set after SIGCONT")
        #expect(serving < Self.retryTimeout + .seconds(2))
        await client.close()

        let report = HungServerReport(
            samples: samples,
            stoppedAt: stoppedAt,
            continuedAt: continuedAt,
            removeFailedServers: removeFailedServers
        )
        let ejectedAt = try #require(report.ejectedAt, "the hung server was never marked down")
        let ejected = report.victimCalls(from: ejectedAt, to: continuedAt)
        #expect(!ejected.isEmpty)
        // Once per retryTimeout one call probes the server, and waits for the timeout while it is
        // still stopped; every other call for its keys fails as marked down (or, with
        // removeFailedServers, is served by another server, except while a probe runs).
        let probes = ejected.filter { (sample: Sample) in sample.failure == .timeout }
        let probeWindows = Int(((continuedAt - ejectedAt) / Self.retryTimeout).rounded(.up))
        #expect(probes.count <= probeWindows + 1, "\(probes.count) timeouts after ejection")
        let unexpected = ejected.filter { (sample: Sample) in
            sample.failure != nil && sample.failure != .timeout && sample.failure != .serverMarkedDead
        }
        #expect(
            unexpected.isEmpty,
            "after ejection at \(ejectedAt - stoppedAt): \(unexpected.count) calls failed otherwise: \(unexpected.prefix(3).map { "\($0.start - stoppedAt) to \($0.end - stoppedAt): \($0.message)" })"
        )
        let served = ejected.filter { (sample: Sample) in sample.failure == nil }.count
        if removeFailedServers {
            #expect(
                served * 10 >= ejected.count * 9,
                "only \(served) of \(ejected.count) calls for its keys served elsewhere"
            )
        } else {
            #expect(served == 0, "\(served) calls for a stopped server's keys succeeded")
        }
        // "At once": the median far below the timeout the hung server would cost, and even the
        // slowest percent (pool waits and scheduling of 16 tasks on a loaded machine) below it.
        let ejectedLatency = ejected.map { (sample: Sample) in sample.elapsed }
        let ejected99 = Self.percentile(ejectedLatency, 0.99)
        #expect(Self.percentile(ejectedLatency, 0.5) < Self.timeout / 5)
        #expect(ejected99 < Self.timeout)

        // The other servers' keys: no failure, and p99 before the stop vs while it is out.
        let healthyFailures = samples.filter { (sample: Sample) in !sample.onVictim && sample.failure != nil }
        #expect(
            healthyFailures.isEmpty,
            "the other servers' keys failed: \(healthyFailures.count), first: \(healthyFailures.prefix(3).map { "\($0.key) \($0.message) at \($0.start - stoppedAt)" })"
        )
        let before99 = Self.percentile(report.healthyLatency(before: stoppedAt), 0.99)
        let during99 = Self.percentile(report.healthyLatency(from: ejectedAt, to: continuedAt), 0.99)
        #expect(during99 < max(before99 * 10, .milliseconds(100)), "p99 \(during99) during vs \(before99) before")

        // Back: the first call for its keys that succeeded after SIGCONT (with removeFailedServers
        // they succeed elsewhere all along: no figure then).
        let backAfter = report.firstVictimSuccess(after: continuedAt).map { $0 - continuedAt }
        if !removeFailedServers {
            let back = try #require(backAfter, "the server's keys never succeeded after SIGCONT")
            #expect(back < Self.retryTimeout + .seconds(2))
        }
        let settled = continuedAt + Self.retryTimeout + .seconds(1)
        let lateFailures = samples.filter { (sample: Sample) in sample.start > settled && sample.failure != nil }
        #expect(lateFailures.isEmpty, "failures after retryTimeout + 1 s: \(lateFailures.count)")
        let detection = Self.milliseconds(ejectedAt - stoppedAt)
        let ejected50 = Self.milliseconds(Self.percentile(ejectedLatency, 0.5))
        let back = Self.milliseconds(serving)
        print(
            "fault report: SIGSTOP 1 of 3, removeFailedServers \(removeFailedServers): \(samples.count) calls; "
                + "marked down \(detection) after the stop (after \(report.timeoutsBefore(ejectedAt)) timeouts); "
                + "then its keys: \(ejected.count) calls, p50 \(ejected50), p99 \(Self.milliseconds(ejected99)); "
                + "other keys p99 \(Self.milliseconds(before99)) before, \(Self.milliseconds(during99)) while it is out; "
                + "serving its keys again \(back) after SIGCONT; failures after retryTimeout + 1 s: \(lateFailures.count)"
        )
    }

    /// The phases of the hung-server run, read off its samples.
    struct HungServerReport {
        var samples: [Sample]
        var stoppedAt: ContinuousClock.Instant
        var continuedAt: ContinuousClock.Instant
        var removeFailedServers: Bool

        /// When the hung server was taken out: the first call for its keys that failed as
        /// marked down, or, with removeFailedServers, that started after the first timeout and
        /// succeeded elsewhere.
        var ejectedAt: ContinuousClock.Instant? {
            let afterStop = victimCalls(from: stoppedAt, to: continuedAt)
            if !removeFailedServers {
                let markers = afterStop.filter { (sample: Sample) in sample.failure == .serverMarkedDead }
                return markers.map { (sample: Sample) in sample.end }.min()
            }
            let firstTimeout = afterStop.filter { (sample: Sample) in sample.failure == .timeout }
                .map { (sample: Sample) in sample.end }.min()
            guard let firstTimeout else { return nil }
            return afterStop.filter { (sample: Sample) in sample.start > firstTimeout && sample.failure == nil }
                .map { (sample: Sample) in sample.end }.min()
        }

        func victimCalls(from start: ContinuousClock.Instant, to end: ContinuousClock.Instant) -> [Sample] {
            samples.filter { (sample: Sample) in sample.onVictim && sample.start > start && sample.end < end }
        }

        func timeoutsBefore(_ instant: ContinuousClock.Instant) -> Int {
            victimCalls(from: stoppedAt, to: instant).filter { (sample: Sample) in sample.failure == .timeout }.count
        }

        func healthyLatency(before instant: ContinuousClock.Instant) -> [Duration] {
            samples.filter { (sample: Sample) in !sample.onVictim && sample.end < instant }
                .map { (sample: Sample) in sample.elapsed }
        }

        func healthyLatency(from start: ContinuousClock.Instant, to end: ContinuousClock.Instant) -> [Duration] {
            samples.filter { (sample: Sample) in !sample.onVictim && sample.start > start && sample.end < end }
                .map { (sample: Sample) in sample.elapsed }
        }

        func firstVictimSuccess(after instant: ContinuousClock.Instant) -> ContinuousClock.Instant? {
            samples.filter { (sample: Sample) in sample.onVictim && sample.start > instant && sample.failure == nil }
                .map { (sample: Sample) in sample.end }.min()
        }
    }

    @Test(
        "after serverFailureLimit timeouts a silent server's keys fail at once, in every command; a probe keeps it out"
    )
    func silentServerMarkedDown() throws {
        try withMemcached { cluster in
            let silent = try SilentServer()
            defer { silent.stop() }
            let memc = try connect(cluster) {
                $0.servers.append(MemcachedServer(host: "127.0.0.1", port: silent.port))
                $0.timeout = .milliseconds(400)
                $0.retryTimeout = .seconds(1)
                $0.serverFailureLimit = 2
            }
            let keys = (0..<40).map { "silent-\($0)" }
            let silentKeys = try keys.filter { try memc.server(forKey: $0) == silent.address }
            let liveKeys = keys.filter { !silentKeys.contains($0) }
            let victim = try #require(silentKeys.first)
            for _ in 0..<2 {
                #expect(throws: MemcachedError.self) { try memc.get(victim, as: String.self) }
            }
            // Marked down: every command for its keys fails without waiting.
            var durations: [Duration] = []
            for _ in 0..<200 {
                let (elapsed, error) = timed { _ = try memc.get(victim, as: String.self) }
                #expect((error as? MemcachedError)?.code == .serverMarkedDead)
                durations.append(elapsed)
            }
            let (setTime, setError) = timed { _ = try memc.set(victim, "x") }
            #expect((setError as? MemcachedError)?.code == .serverMarkedDead)
            #expect(
                try memc.setMulti(Dictionary(uniqueKeysWithValues: keys.map { ($0, "v") })).keysNotApplied.sorted()
                    == silentKeys.sorted()
            )
            let (multiTime, read) = try {
                var read = MemcachedGetMultiResult<String>()
                let elapsed = try ContinuousClock().measure { read = try memc.getMulti(keys, as: String.self) }
                return (elapsed, read)
            }()
            #expect(Set(read.hits.keys) == Set(liveKeys), "the others' keys are hits")
            #expect(Set(read.failures.keys) == Set(silentKeys), "the down server's keys are failures")
            #expect(read.failures.values.allSatisfy { $0.code == .serverMarkedDead })
            let median = Self.percentile(durations, 0.5)
            #expect(median < .milliseconds(10) && setTime < .milliseconds(100) && multiTime < .milliseconds(100))
            // After retryTimeout one call probes it, within its own deadline: the probe's wait or
            // the call's deadline ends first (timeout, or serverMarkedDead once the probe failed);
            // still silent, the server stays down.
            Thread.sleep(forTimeInterval: 1.1)
            let (probeTime, probeError) = timed { _ = try memc.get(victim, as: String.self) }
            let probeCode = (probeError as? MemcachedError)?.code
            #expect(probeCode == .timeout || probeCode == .serverMarkedDead, "\(String(describing: probeError))")
            // Within the call's own deadline (one timeout plus the watchdog's margin, generous for
            // a loaded machine), not a probe's timeout on top of the call's.
            #expect(probeTime < .milliseconds(700), "the probe stays within the call's timeout")
            let (afterProbe, _) = timed { _ = try memc.get(victim, as: String.self) }
            #expect(afterProbe < .milliseconds(100))
            print(
                "fault report: silent server marked down after 2 timeouts: get fails in \(Self.milliseconds(median)) "
                    + "(median of 200, max \(Self.milliseconds(durations.max() ?? .zero))), set \(Self.milliseconds(setTime)), "
                    + "getMulti of 40 keys \(Self.milliseconds(multiTime)); the probe after retryTimeout took "
                    + "\(Self.milliseconds(probeTime)), the call after it \(Self.milliseconds(afterProbe))"
            )
        }
    }

    // MARK: - What counts against a server (regressions found in review)

    @Test("cancelled calls do not count against a healthy server")
    func cancellationDoesNotCount() async throws {
        let cluster = try MemcachedCluster.start(count: 1)
        defer { cluster.stop() }
        let client = try makeClient(cluster, maximumConnections: 2) {
            $0.timeout = .seconds(5)
            $0.serverFailureLimit = 2
            $0.retryTimeout = .seconds(60)
        }
        // A value that takes a while to read, so cancellations land in the middle of calls.
        _ = try await client.set("big", [UInt8](repeating: 7, count: 900_000))
        var generator = SplitMix64(state: 7)
        for _ in 0..<60 {
            let task = Task(executorPreference: ThreadPerJobExecutor()) {
                for _ in 0..<50 { _ = try await client.get("big", as: [UInt8].self) }
            }
            try await Task.sleep(for: .microseconds(200 + Int(generator.next() % 2_800)))
            task.cancel()
            _ = await task.result
        }
        for _ in 0..<20 {
            #expect(try await client.get("big", as: [UInt8].self)?.count == 900_000)
        }
        await client.close()
    }

    @Test("getMulti alone marks a hung server down: after the failure limit its keys fail, at once")
    func getMultiMarksDown() throws {
        let cluster = try MemcachedCluster.start(count: 3)
        defer { cluster.stop() }
        let memc = try connect(cluster) {
            $0.distribution = .consistent
            $0.timeout = .milliseconds(300)
            $0.connectTimeout = .milliseconds(300)
            $0.serverFailureLimit = 2
            $0.retryTimeout = .seconds(60)
        }
        let keys = (0..<30).map { "gm-\($0)" }
        #expect(try memc.setMulti(Dictionary(uniqueKeysWithValues: keys.map { ($0, "v") })).keysNotApplied.isEmpty)
        let victim = cluster.servers[1]
        let others = Set(try keys.filter { try memc.server(forKey: $0) != victim.address })
        victim.pause()
        defer { victim.resume() }
        for round in 0..<2 {
            let read = try memc.getMulti(keys, as: String.self)
            #expect(
                Set(read.failures.keys).isSuperset(of: Set(keys).subtracting(others))
                    && read.failures.values.allSatisfy { $0.code == .timeout },
                "round \(round) waits for the hung server"
            )
        }
        for _ in 0..<3 {
            var read = MemcachedGetMultiResult<String>()
            let elapsed = try ContinuousClock().measure { read = try memc.getMulti(keys, as: String.self) }
            #expect(Set(read.hits.keys) == others)
            #expect(Set(read.failures.keys) == Set(keys).subtracting(others))
            #expect(read.failures.values.allSatisfy { $0.code == .serverMarkedDead })
            #expect(elapsed < .milliseconds(150), "no wait for the hung server: \(elapsed)")
        }
    }

    @Test("fire-and-forget writes to a hung server do not clear its failure count")
    func noReplyWritesDoNotClear() throws {
        let cluster = try MemcachedCluster.start(count: 2)
        defer { cluster.stop() }
        let memc = try connect(cluster) {
            $0.distribution = .consistent
            $0.noReply = true
            $0.timeout = .milliseconds(300)
            $0.connectTimeout = .milliseconds(300)
            $0.serverFailureLimit = 2
            $0.retryTimeout = .seconds(60)
        }
        let victim = cluster.servers[1]
        let key = try #require((0..<100).map { "nr-\($0)" }.first { (try? memc.server(forKey: $0)) == victim.address })
        try memc.set(key, "v")
        victim.pause()
        defer { victim.resume() }
        var codes: [MemcachedError.Code?] = []
        for round in 0..<4 {
            _ = try? memc.set(key, "v\(round)")
            let (_, error) = timed { _ = try memc.get(key, as: String.self) }
            codes.append((error as? MemcachedError)?.code)
        }
        #expect(codes == [.timeout, .timeout, .serverMarkedDead, .serverMarkedDead])
    }

    @Test("removeFailedServers with modula weights: with the weighted server out, keys spread over the rest")
    func weightedModulaServerLeftOut() throws {
        let cluster = try MemcachedCluster.start(count: 2)
        defer { cluster.stop() }
        let silent = try SilentServer()
        defer { silent.stop() }
        var configuration = try MemcachedConfiguration(servers: [
            "\(cluster.addresses[0]) 1", "\(silent.address) 3", "\(cluster.addresses[1]) 1",
        ])
        configuration.removeFailedServers = true
        configuration.serverFailureLimit = 1
        configuration.retryTimeout = .seconds(60)
        configuration.timeout = .milliseconds(200)
        configuration.connectTimeout = .milliseconds(200)
        let memc = try MemcachedConnection(configuration: configuration)
        let keys = (0..<40).map { "wm-\($0)" }
        let silentKey = try #require(try keys.first { try memc.server(forKey: $0) == silent.address })
        #expect(throws: MemcachedError.self) { _ = try memc.get(silentKey, as: String.self) }
        for key in keys {
            #expect(try memc.set(key, "v-\(key)"))
        }
        #expect(try memc.getMulti(keys, as: String.self).hits.count == keys.count)
        let used = Set(try keys.map { try memc.server(forKey: $0) })
        #expect(used == Set(cluster.addresses), "keys on \(used)")
    }

    @Test("a binary-only server (-B binary) comes back after a pause: the probe speaks its protocol")
    func binaryOnlyServerComesBack() throws {
        let server = try MemcachedServerProcess.start(arguments: ["-B", "binary"])
        defer { server.stop() }
        var configuration = try MemcachedConfiguration(servers: [server.address])
        configuration.wireProtocol = .binary
        configuration.timeout = .milliseconds(300)
        configuration.connectTimeout = .milliseconds(300)
        configuration.serverFailureLimit = 1
        configuration.retryTimeout = .seconds(1)
        let memc = try MemcachedConnection(configuration: configuration)
        #expect(try memc.set("k", "v"))
        server.pause()
        #expect(throws: MemcachedError.self) { _ = try memc.get("k", as: String.self) }
        server.resume()
        let clock = ContinuousClock()
        let resumed = clock.now
        var back: Duration?
        while clock.now - resumed < .seconds(5), back == nil {
            if (try? memc.get("k", as: String.self)) == "v" {
                back = clock.now - resumed
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let after = try #require(back, "never answered again")
        #expect(after < configuration.retryTimeout + .seconds(2))
    }

    @Test("restart of 1 of 3 servers: no failed get or set from 0.5 s after it is back, failures counted per phase")
    func restartedServer() async throws {
        let cluster = try MemcachedCluster.start(count: 3)
        defer { cluster.stop() }
        let client = try makeLoadClient(cluster)
        let mapping = try connect(cluster)
        let keys = (0..<300).map { "restart-\($0)" }
        let victim = cluster.servers[1]
        let victimKeys = Set(try keys.filter { try mapping.server(forKey: $0) == victim.address })

        let stop = Locked(false)
        let clock = ContinuousClock()
        let revived = Locked<MemcachedServerProcess?>(nil)
        let controller = Task(executorPreference: ThreadPerJobExecutor()) {
            () -> (ContinuousClock.Instant, ContinuousClock.Instant) in
            try? await Task.sleep(for: .seconds(1))
            let killedAt = clock.now
            victim.stop()
            try? await Task.sleep(for: .seconds(1))
            // memcached reads options in order, so this -p overrides the fixture's -p -1.
            let server = try? MemcachedServerProcess.start(arguments: ["-p", String(victim.port)])
            let backAt = clock.now
            revived.withLock { $0 = server }
            try? await Task.sleep(for: Self.retryTimeout + .seconds(3))
            stop.withLock { $0 = true }
            return (killedAt, backAt)
        }
        let samples = await Self.runLoad(client, keys: keys, victimKeys: victimKeys, stop: stop)
        let (killedAt, backAt) = await controller.value
        await client.close()
        defer { revived.withLock { $0?.stop() } }
        #expect(revived.withLock { $0 != nil }, "the server did not restart")

        // A server that refused connections is probed every 100 ms (ServerHealth.quickRetry), so
        // half a second after it is back (ready, as the fixture saw it) nothing may fail.
        let recoveredAt = backAt + .milliseconds(500)
        let outage = samples.filter { (sample: Sample) in
            sample.end > killedAt && sample.start < backAt && sample.failure != nil
        }
        let recovery = samples.filter { (sample: Sample) in
            sample.start >= backAt && sample.start < recoveredAt && sample.failure != nil
        }
        let after = samples.filter { (sample: Sample) in sample.start >= recoveredAt }
        let afterFailures = after.filter { (sample: Sample) in sample.failure != nil }
        let healthyFailures = samples.filter { (sample: Sample) in !sample.onVictim && sample.failure != nil }
        #expect(afterFailures.isEmpty, "\(afterFailures.count) failed after recovery: \(afterFailures.prefix(3))")
        #expect(healthyFailures.isEmpty, "the other servers' keys failed: \(healthyFailures.count)")
        #expect(after.contains { (sample: Sample) in sample.onVictim && sample.failure == nil }, "its keys are served")
        let firstBack = samples.filter { (sample: Sample) in
            sample.start >= backAt && sample.onVictim && sample.failure == nil
        }.map { (sample: Sample) in sample.end }.min()
        let outageCodes = Set(outage.compactMap { (sample: Sample) in sample.failure.map { "\($0)" } }).sorted()
        let servedAgain = firstBack.map { Self.milliseconds($0 - backAt) } ?? "never"
        print(
            "fault report: restart 1 of 3 under 16 tasks: \(samples.count) calls; failed during the outage "
                + "\(outage.count) \(outageCodes); within 0.5 s after it was back \(recovery.count); "
                + "after that \(afterFailures.count) of \(after.count); its keys served again \(servedAgain) after it was back"
        )
    }
}
