import Memcached
import MemcachedTestSupport
import Testing

/// Many servers at once, and servers that are not there.
@Suite("Clusters and unreachable servers", .offCooperativePool)
struct ClusterTests {
    @Test("3 servers: every key is readable, keys spread over every server, getMulti batches per server")
    func spread() throws {
        try withMemcached(servers: 3) { cluster in
            let memc = try connect(cluster)
            let items = Dictionary(uniqueKeysWithValues: (0..<600).map { ("key-\($0)", "value-\($0)") })
            #expect(try memc.setMulti(items).keysNotApplied.isEmpty)
            for (key, value) in items.prefix(50) {
                #expect(try memc.get(key, as: String.self) == value)
            }
            let getsBefore = try cluster.servers.map { try statistic("cmd_get", of: $0) }
            let all = try memc.getMulti(Array(items.keys), as: String.self).hits
            #expect(all == items)
            let getsAfter = try cluster.servers.map { try statistic("cmd_get", of: $0) }
            let counts = try cluster.servers.map { try statistic("curr_items", of: $0) }
            #expect(counts.reduce(0, +) == items.count)
            #expect(counts.allSatisfy { $0 > 100 }, "keys land on every server: \(counts)")
            // cmd_get counts keys, not requests: each server was asked only for its own keys.
            #expect(zip(getsBefore, getsAfter).map { $1 - $0 } == counts)
            // server(forKey:) agrees with where the keys really are.
            for key in items.keys.prefix(30) {
                let owner = try memc.server(forKey: key)
                let index = try #require(cluster.addresses.firstIndex(of: owner))
                #expect(try cluster.servers[index].rawCommand("get \(key)\r\n").contains("VALUE \(key) "))
            }
        }
    }

    @Test("a server that is not running gives a typed connection error quickly")
    func serverNotRunning() throws {
        let refusing = try RefusingLoopbackPort()
        defer { refusing.release() }
        var configuration = try MemcachedConfiguration(servers: [refusing.address])
        configuration.connectTimeout = .milliseconds(500)
        configuration.timeout = .milliseconds(500)
        let memc = try MemcachedConnection(configuration: configuration)
        for attempt in 0..<3 {
            let (elapsed, error) = timed { _ = try memc.get("k", as: String.self) }
            let code = try #require(error as? MemcachedError).code
            #expect(
                [.connectionFailure, .serverTemporarilyDisabled, .serverMarkedDead].contains(code),
                "attempt \(attempt): \(code)"
            )
            #expect(elapsed < .milliseconds(750), "attempt \(attempt) took \(elapsed)")
        }
        do {
            try memc.set("k", "v")
            Issue.record("a set to a server that is not running must fail")
        } catch let error as MemcachedError {
            #expect(error.server == refusing.address)
            // libmemcached's handle address and source location are stripped from the message.
            #expect(!error.message.contains("0x") && !error.message.contains("->") && !error.message.contains(".cc"))
            #expect(!error.message.isEmpty)
        }
        let versions = try memc.versions()
        #expect(versions.count == 1)
        #expect(throws: MemcachedError.self) { try versions[0].result.get() }
    }

    @Test("a server that accepts but never answers times out within the timeout + 50%")
    func silentServer() throws {
        let silent = try SilentServer()
        defer { silent.stop() }
        var configuration = try MemcachedConfiguration(servers: [silent.address])
        configuration.timeout = .milliseconds(400)
        let memc = try MemcachedConnection(configuration: configuration)
        let (elapsed, error) = timed { _ = try memc.get("k", as: String.self) }
        #expect((error as? MemcachedError)?.code == .timeout, "got \(String(describing: error))")
        #expect(elapsed < .milliseconds(600), "took \(elapsed)")
    }

    @Test("with one of 3 servers down: its keys fail or miss, the others keep working")
    func oneServerDown() throws {
        try withMemcached(servers: 3) { cluster in
            // The dead server refuses at once, so the timeouts only bound the live servers'
            // answers: generous, since a loaded machine took over 300 ms for a fresh server's
            // first write (1 of 20 loaded suite runs).
            let memc = try connect(cluster) {
                $0.connectTimeout = .seconds(10)
                $0.timeout = .seconds(10)
            }
            let keys = (0..<90).map { "key-\($0)" }
            #expect(try memc.setMulti(Dictionary(uniqueKeysWithValues: keys.map { ($0, $0) })).keysNotApplied.isEmpty)
            let owners = try Dictionary(grouping: keys) { try memc.server(forKey: $0) }
            cluster.servers[1].kill()
            let deadKeys = Set(owners[cluster.addresses[1]] ?? [])
            #expect(!deadKeys.isEmpty)

            let read = try memc.getMulti(keys, as: String.self)
            #expect(Set(read.hits.keys) == Set(keys).subtracting(deadKeys), "getMulti returns every live server's keys")
            #expect(Set(read.failures.keys) == deadKeys, "and reports exactly the dead server's keys")

            let failed = try memc.setMulti(Dictionary(uniqueKeysWithValues: keys.map { ($0, "new") }))
            #expect(Set(failed.failures.keys) == deadKeys, "setMulti reports exactly the dead server's keys")

            for key in keys.prefix(30) {
                if deadKeys.contains(key) {
                    #expect(throws: MemcachedError.self) { try memc.get(key, as: String.self) }
                } else {
                    #expect(try memc.get(key, as: String.self) == "new")
                }
            }
            let outcomes = try memc.deleteMulti(keys)
            for key in keys {
                let outcome = try #require(outcomes[key])
                if deadKeys.contains(key) {
                    #expect(outcome.error != nil)
                } else {
                    #expect(outcome == .applied)
                }
            }
            let stats = try memc.stats()
            #expect((try? stats[1].result.get()) == nil)
            #expect((try? stats[0].result.get()) != nil)
        }
    }
}
