import Foundation
import Memcached
import MemcachedTestSupport
import Testing

/// Dead and hung servers: the rest of the cluster keeps answering, failures are typed and quick,
/// and a server that comes back is used again.
///
/// The tests that measure recovery times are synchronous and sleep their own thread: under a full
/// parallel run, blocking tests occupy the cooperative pool and an awaited sleep can resume seconds
/// late.
@Suite("Fault tolerance", .offCooperativePool)
struct FaultToleranceTests {
    /// Starts a memcached on a given port (for restarting a killed server at the same address).
    static func restart(onPort port: Int) throws -> MemcachedServerProcess {
        // memcached reads options in order, so this -p overrides the fixture's -p -1.
        try MemcachedServerProcess.start(arguments: ["-p", String(port)])
    }

    @Test("modula: a killed server's keys fail fast with typed errors, the others keep working, and it comes back")
    func modulaDeadServer() throws {
        let cluster = try MemcachedCluster.start(count: 3)
        defer { cluster.stop() }
        let memc = try connect(cluster) {
            $0.retryTimeout = .seconds(1)
            $0.serverFailureLimit = 2
        }
        let keys = (0..<300).map { "key-\($0)" }
        #expect(
            try memc.setMulti(Dictionary(uniqueKeysWithValues: keys.map { ($0, "v-\($0)") })).keysNotApplied.isEmpty
        )
        let victim = cluster.servers[1]
        let deadKeys = Set(try keys.filter { try memc.server(forKey: $0) == victim.address })
        victim.kill()

        var failures = 0
        var slowest = Duration.zero
        for key in keys {
            var value: String?
            let (elapsed, error) = timed { value = try memc.get(key, as: String.self) }
            if error == nil {
                #expect(value == "v-\(key)")
            }
            slowest = max(slowest, elapsed)
            if let error {
                failures += 1
                #expect(deadKeys.contains(key), "a live server's key failed: \(error)")
                let code = (error as? MemcachedError)?.code
                #expect(
                    [.connectionFailure, .serverTemporarilyDisabled, .serverMarkedDead].contains(code),
                    "\(String(describing: code))"
                )
            }
        }
        print("fault report: modula dead server: \(failures) of \(keys.count) gets failed, slowest call \(slowest)")
        #expect(failures == deadKeys.count)
        #expect(slowest < .milliseconds(500), "no call waits for a timeout: slowest \(slowest)")

        let revived = try Self.restart(onPort: victim.port)
        defer { revived.stop() }
        // libmemcached retries a failed server once its retry timeout has passed, counted in
        // whole seconds, so traffic resumes within about retryTimeout + 1 s.
        let key = try #require(deadKeys.first)
        let clock = ContinuousClock()
        let restartedAt = clock.now
        var resumedAfter: Duration?
        while clock.now - restartedAt < .seconds(4) {
            if (try? memc.set(key, "back")) == true {
                resumedAfter = clock.now - restartedAt
                break
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let resumeTime = try #require(resumedAfter, "traffic to the restarted server never resumed")
        print("fault report: modula dead server: traffic resumed \(resumeTime) after the restart")
        #expect(resumeTime < .milliseconds(2_500))
        #expect(try memc.get(key, as: String.self) == "back")
        #expect(try revived.rawCommand("get \(key)\r\n").contains("back"), "the key lives on the revived server")
    }

    @Test("consistent hashing with removeFailedServers: a dead server's keys move, and come back after a restart")
    func consistentAutoEject() throws {
        let cluster = try MemcachedCluster.start(count: 3)
        defer { cluster.stop() }
        let memc = try connect(cluster) {
            $0.distribution = .consistent
            $0.removeFailedServers = true
            $0.serverFailureLimit = 2
            $0.retryTimeout = .seconds(1)
            $0.connectTimeout = .milliseconds(300)
        }
        let keys = (0..<300).map { "key-\($0)" }
        let victim = cluster.servers[2]
        let victimKeys = try keys.filter { try memc.server(forKey: $0) == victim.address }
        let otherKeys = keys.filter { !victimKeys.contains($0) }
        #expect(!victimKeys.isEmpty)
        victim.kill()

        // libmemcached counts one failed connect per retry timeout; after `serverFailureLimit`
        // of them it rebuilds the continuum without the server.
        let clock = ContinuousClock()
        let start = clock.now
        var errors = 0
        var remappedAfter: Duration?
        while clock.now - start < .seconds(10) {
            do {
                try memc.set(victimKeys[0], "moved")
                remappedAfter = clock.now - start
                break
            } catch {
                errors += 1
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
        let remapTime = try #require(remappedAfter, "the dead server's keys never moved")
        // Each failed connect is one retry timeout apart, rounded to libmemcached's whole seconds.
        #expect(remapTime < .seconds(6), "remapped after \(remapTime) with \(errors) errors")
        for key in victimKeys {
            #expect(try memc.server(forKey: key) != victim.address, "the continuum no longer holds the dead server")
            try memc.set(key, "moved")
            #expect(try memc.get(key, as: String.self) == "moved")
        }
        for key in otherKeys.prefix(50) {
            try memc.set(key, "stays")
            #expect(try memc.get(key, as: String.self) == "stays")
        }

        let revived = try Self.restart(onPort: victim.port)
        defer { revived.stop() }
        let restartedAt = clock.now
        var backAfter: Duration?
        while clock.now - restartedAt < .seconds(6) {
            _ = try? memc.set(victimKeys[0], "home")
            if (try? revived.rawCommand("get \(victimKeys[0])\r\n"))?.contains("home") == true {
                backAfter = clock.now - restartedAt
                break
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let backTime = try #require(backAfter, "the restarted server never got its keys back")
        print(
            "fault report: consistent+eject: remapped after \(remapTime) and \(errors) errors; back after \(backTime)"
        )
        #expect(backTime < .seconds(3), "traffic returned after \(backTime)")
    }

    @Test(
        "a hung (SIGSTOPped) server: calls time out within timeout + 50%, and recover after SIGCONT",
        arguments: [MemcachedConfiguration.WireProtocol.ascii, .binary]
    )
    func hungServer(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        try withMemcached(servers: 2) { cluster in
            let timeout = Duration.milliseconds(400)
            // Each call's own bound: a failure limit out of reach keeps the server from being
            // marked down, which ServerEjectionTests covers.
            let memc = try connect(cluster, wireProtocol: wireProtocol) {
                $0.timeout = timeout
                $0.serverFailureLimit = 1_000
            }
            let keys = (0..<100).map { "key-\($0)" }
            try memc.setMulti(Dictionary(uniqueKeysWithValues: keys.map { ($0, "v-\($0)") }))
            let hung = cluster.servers[0]
            let hungKeys = try keys.filter { try memc.server(forKey: $0) == hung.address }
            let liveKeys = keys.filter { !hungKeys.contains($0) }
            hung.pause()
            for key in hungKeys.prefix(4) {
                for (name, call) in [
                    ("get", { _ = try memc.get(key, as: String.self) }),
                    ("set", { try memc.set(key, "x") }),
                    ("delete", { try memc.delete(key) }),
                ] as [(String, () throws -> Void)] {
                    let (elapsed, error) = timed(call)
                    #expect(
                        (error as? MemcachedError)?.code == .timeout,
                        "\(name) \(key): \(String(describing: error)) after \(elapsed)"
                    )
                    #expect(elapsed < timeout * 1.5, "took \(elapsed)")
                }
            }
            for key in liveKeys.prefix(10) {
                #expect(try memc.get(key, as: String.self) == "v-\(key)", "the other server keeps answering")
            }
            hung.resume()
            // A request that timed out may still run once the server reads it: the writes sent
            // during the hang (set "x", then delete) can land after SIGCONT.
            let touched = Set(hungKeys.prefix(4))
            for key in hungKeys {
                let value = try memc.get(key, as: String.self)
                if touched.contains(key) {
                    #expect([nil, "x", "v-\(key)"].contains(value), "\(key): \(String(describing: value))")
                } else {
                    #expect(value == "v-\(key)", "after SIGCONT the right values come back")
                }
            }
            let untouched = keys.filter { !touched.contains($0) }
            #expect(
                try memc.getMulti(untouched, as: String.self).hits
                    == Dictionary(uniqueKeysWithValues: untouched.map { ($0, "v-\($0)") })
            )
        }
    }

    @Test("value limits: 0 and 1 byte, the server's limit minus overhead, and above it")
    func valueLimits() throws {
        for (arguments, itemSize) in [([String](), 1_048_576), (["-I", "2m"], 2_097_152)] {
            try withMemcached(arguments: arguments) { cluster in
                let memc = try connect(cluster) { $0.maximumValueLength = itemSize }
                try memc.set("zero", [UInt8]())
                #expect(try memc.get("zero", as: [UInt8].self) == [])
                try memc.set("one", [UInt8(0xFF)])
                #expect(try memc.get("one", as: [UInt8].self) == [0xFF])
                // memcached stores key, header and value in one item of at most -I bytes.
                let fits = [UInt8](repeating: 7, count: itemSize - 512)
                try memc.set("fits", fits)
                #expect(try memc.get("fits", as: [UInt8].self) == fits)
                let serverRefuses = [UInt8](repeating: 8, count: itemSize)
                do {
                    try memc.set("too-big", serverRefuses)
                    Issue.record("the server must refuse an item over -I")
                } catch let error as MemcachedError {
                    #expect([.itemTooBig, .serverError].contains(error.code), "\(error.code)")
                }
                let clientRefuses = [UInt8](repeating: 9, count: itemSize + 1)
                #expect(throws: MemcachedError.self) { try memc.set("too-big", clientRefuses) }
                #expect(try memc.get("fits", as: [UInt8].self) == fits, "the connection stays usable")
            }
        }
    }
}
