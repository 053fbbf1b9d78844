internal import CLibMemcached
import Foundation
import MemcachedTestSupport
import Testing

@testable import Memcached

/// How keys spread over servers: modula, the libketama continuum, and weights.
@Suite("Distributions and weights", .offCooperativePool)
struct DistributionTests {
    static func connection(
        _ servers: [MemcachedServer],
        _ distribution: MemcachedDistribution,
        hash: MemcachedHash = .default
    ) throws -> MemcachedConnection {
        var configuration = MemcachedConfiguration(servers: servers)
        configuration.distribution = distribution
        configuration.hash = hash
        configuration.timeout = .seconds(2)
        configuration.connectTimeout = .seconds(2)
        return try MemcachedConnection(configuration: configuration)
    }

    static func servers(_ addresses: [String], weights: [Int]? = nil) throws -> [MemcachedServer] {
        try zip(addresses, weights ?? addresses.map { _ in 1 }).map {
            var server = try MemcachedServer(parsing: $0)
            server.weight = $1
            return server
        }
    }

    @Test(
        "adding a 4th server to 3 moves about a quarter of 10,000 keys with ketama, most with modula",
        arguments: [MemcachedHash.default, .md5]
    )
    func addingAServer(hash: MemcachedHash) throws {
        try withMemcached(servers: 4) { cluster in
            let keys = (0..<10_000).map { "user:\($0):profile" }
            for distribution in [MemcachedDistribution.consistent, .modula] {
                let three = try Self.connection(
                    try Self.servers(Array(cluster.addresses.prefix(3))),
                    distribution,
                    hash: hash
                )
                let four = try Self.connection(try Self.servers(cluster.addresses), distribution, hash: hash)
                let before = try keys.map { try three.server(forKey: $0) }
                let after = try keys.map { try four.server(forKey: $0) }
                let moved = zip(before, after).filter { $0 != $1 }
                let share = Double(moved.count) / Double(keys.count)
                print("\(distribution) with \(hash): \(moved.count) of \(keys.count) keys moved")
                #expect(Set(before).count == 3 && Set(after).count == 4, "every server gets keys")
                switch distribution {
                case .consistent:
                    #expect((0.15...0.35).contains(share), "ketama moved \(share)")
                    // Consistent hashing only hands keys to the new server; none move between old ones.
                    #expect(moved.allSatisfy { $0.1 == cluster.addresses[3] })
                default:
                    #expect(share > 0.6, "modula moved \(share)")
                }
                // The keys really are where server(forKey:) says, on the 4-server layout.
                for key in keys.prefix(40) {
                    #expect(try four.set(key, key))
                    let owner = cluster.servers[
                        try #require(cluster.addresses.firstIndex(of: try four.server(forKey: key)))
                    ]
                    #expect(try owner.rawCommand("get \(key)\r\n").contains("VALUE \(key) "))
                }
                try four.flush()
            }
        }
    }

    @Test(
        "a client's pooled connections (clones) map every key to the server a connection does",
        arguments: [MemcachedDistribution.modula, .consistent, .consistentWeighted]
    )
    func clonesMapAsTheirSource(distribution: MemcachedDistribution) async throws {
        // Addresses only: nothing is sent, server(forKey:) reads the continuum.
        let servers = (1...5).map { MemcachedServer(host: "127.0.0.1", port: 20_000 + $0, weight: $0) }
        let connection = try Self.connection(servers, distribution)
        var configuration = MemcachedConfiguration(servers: servers)
        configuration.distribution = distribution
        let client = try MemcachedClient(configuration: configuration)
        var differing: [String] = []
        for index in 0..<500 {
            let key = "clone-\(index)"
            let expected = try connection.server(forKey: key)
            if try await client.server(forKey: key) != expected {
                differing.append(key)
            }
        }
        await client.close()
        #expect(differing.isEmpty, "\(differing.count) of 500 keys map elsewhere through the client")
    }

    @Test(
        "libketama, and consistent and consistentWeighted where libmemcached rounds alike, place keys as an independent libketama"
    )
    func libketamaReference() throws {
        let keys = (0..<3_000).map { "ketama-\($0)-\($0 % 7 == 0 ? "会" : "k")" }
        let ports = (0..<61).map { 41_101 + $0 }
        let cases: [(servers: Int, weights: [Int], distribution: MemcachedDistribution, reference: [Int])] = [
            (3, [1, 1, 1], .consistent, [1, 1, 1]),
            // consistent ignores weights: the reference gets equal ones.
            (3, [5, 1, 2], .consistent, [1, 1, 1]),
            (3, [1, 2, 3], .consistentWeighted, [1, 2, 3]),
            (5, [3, 1, 1, 7, 2], .consistentWeighted, [3, 1, 1, 7, 2]),
            (3, [1, 2, 3], .libketama, [1, 2, 3]),
            (7, [3, 1, 1, 7, 2, 9, 4], .libketama, [3, 1, 1, 7, 2, 9, 4]),
            // libmemcached gives 25 equal servers 39 digests each and libketama 40; at 61, libketama 39.
            (25, Array(repeating: 1, count: 25), .libketama, Array(repeating: 1, count: 25)),
            (61, Array(repeating: 1, count: 61), .libketama, Array(repeating: 1, count: 61)),
        ]
        func mismatches(
            _ count: Int,
            weights: [Int],
            _ distribution: MemcachedDistribution,
            reference: [Int],
            defaultPort: Bool = false
        ) throws -> Int {
            let hosts = (0..<count).map { "127.0.0.\($0 + 1)" }
            let addresses = zip(hosts, ports).enumerated().map { "\($1.0):\(defaultPort && $0 == 0 ? 11211 : $1.1)" }
            let memc = try Self.connection(try Self.servers(addresses, weights: weights), distribution, hash: .md5)
            // libmemcached names a server on the default port without it ("127.0.0.1-0"), libketama
            // as its server list has it.
            let names = addresses.map {
                distribution != .libketama && $0.hasSuffix(":11211") ? String($0.dropLast(6)) : $0
            }
            let expected = try PythonMemcached.run(
                ["--servers", PythonMemcached.serverList(names, weights: reference)],
                script: "ketama_reference.py",
                keys: keys,
                as: [String: String].self
            )
            #expect(Set(expected.values).count == names.count)
            var mismatches = 0
            for key in keys {
                let name = try #require(expected[key])
                let index = try #require(names.firstIndex(of: name))
                if try memc.server(forKey: key) != addresses[index] { mismatches += 1 }
            }
            return mismatches
        }
        for (count, weights, distribution, reference) in cases {
            let differing = try mismatches(count, weights: weights, distribution, reference: reference)
            #expect(
                differing == 0,
                "\(distribution) \(weights): \(differing) of \(keys.count) keys differ from libketama"
            )
        }
        for distribution in [MemcachedDistribution.consistent, .libketama] {
            let differing = try mismatches(
                2,
                weights: [1, 1],
                distribution,
                reference: [1, 1],
                defaultPort: true
            )
            #expect(differing == 0, "\(distribution) with a server on port 11211: \(differing) keys differ")
        }
        // Where the two roundings disagree, so do the mappings: the reason libketama is a
        // distribution of its own.
        let rounding = try mismatches(
            25,
            weights: Array(repeating: 1, count: 25),
            .consistent,
            reference: Array(repeating: 1, count: 25)
        )
        #expect(rounding > 0)
    }

    @Test("consistentWeighted with md5 is libmemcached's own libketama-compatible mode (KETAMA_WEIGHTED)")
    func libmemcachedKetamaWeighted() throws {
        let addresses = ["127.0.0.1:41201", "127.0.0.1:41202", "127.0.0.1:41203", "127.0.0.1:41204"]
        let weights = [2, 1, 4, 1]
        let memc = try Self.connection(try Self.servers(addresses, weights: weights), .consistentWeighted, hash: .md5)

        let raw = try #require(memcached_create(nil))
        defer { memcached_free(raw) }
        #expect(memcached_success(memcached_behavior_set(raw, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1)))
        for (address, weight) in zip(addresses, weights) {
            let port = in_port_t(try #require(Int(address.split(separator: ":")[1])))
            #expect(memcached_success(memcached_server_add_with_weight(raw, "127.0.0.1", port, UInt32(weight))))
        }
        let keys = (0..<3_000).map { "weighted-\($0)" }
        let different = try keys.filter { key in
            var rc = MEMCACHED_SUCCESS
            let instance = try #require(memcached_server_by_key(raw, key, key.utf8.count, &rc))
            return try memc.server(forKey: key) != "127.0.0.1:\(memcached_server_port(instance))"
        }
        #expect(different.isEmpty, "\(different.count) keys differ, such as \(different.prefix(5))")
    }

    @Test("weights: consistentWeighted shares follow them, consistent ignores them")
    func weightedShares() throws {
        let addresses = ["127.0.0.1:41301", "127.0.0.1:41302", "127.0.0.1:41303"]
        let keys = (0..<10_000).map { "share-\($0)" }
        func shares(_ distribution: MemcachedDistribution) throws -> [Double] {
            let memc = try Self.connection(try Self.servers(addresses, weights: [1, 1, 4]), distribution, hash: .md5)
            let counts = try Dictionary(grouping: keys) { try memc.server(forKey: $0) }.mapValues(\.count)
            return addresses.map { Double(counts[$0] ?? 0) / Double(keys.count) }
        }
        let weighted = try shares(.consistentWeighted)
        let unweighted = try shares(.consistent)
        print("shares with weights 1, 1, 4: consistentWeighted \(weighted), consistent \(unweighted)")
        #expect((0.55...0.78).contains(weighted[2]), "weight 4 of 6: \(weighted)")
        #expect(weighted[0] < 0.3 && weighted[1] < 0.3)
        #expect(unweighted.allSatisfy { (0.2...0.47).contains($0) }, "equal shares: \(unweighted)")
    }

    @Test("modula weights repeat a server in order, as python-memcached's bucket list")
    func modulaWeights() throws {
        let addresses = ["127.0.0.1:41401", "127.0.0.1:41402", "127.0.0.1:41403"]
        let weights = [1, 3, 2]
        let buckets = zip(addresses, weights).flatMap { Array(repeating: $0, count: $1) }
        let memc = try MemcachedConnection(
            configuration: .pythonMemcachedCompatible(servers: try Self.servers(addresses, weights: weights))
        )
        let keys = (0..<3_000).map { "bucket-\($0)-é" }
        let different = try keys.filter {
            try memc.server(forKey: $0) != buckets[Int(ReferenceHash.cmemcache(Array($0.utf8))) % buckets.count]
        }
        #expect(different.isEmpty, "\(different.count) keys are not in python's bucket, such as \(different.prefix(5))")
    }

    @Test("modula weights cost one server entry each: 100 servers of weight 1,000, python's buckets, at once")
    func heavyModulaWeights() throws {
        let addresses = (0..<100).map { "127.0.0.1:\(42_000 + $0)" }
        let weights = (0..<100).map { 1_000 - $0 * 7 }
        let buckets = zip(addresses, weights).flatMap { Array(repeating: $0, count: $1) }
        let clock = ContinuousClock()
        let start = clock.now
        let memc = try MemcachedConnection(
            configuration: .pythonMemcachedCompatible(servers: try Self.servers(addresses, weights: weights))
        )
        let created = clock.now - start
        let clone = MemcachedConnection(handle: try Handle(cloning: memc.handle))
        let keys = (0..<3_000).map { "heavy-\($0)" }
        for connection in [memc, clone] {
            let different = try keys.filter {
                try connection.server(forKey: $0)
                    != buckets[Int(ReferenceHash.cmemcache(Array($0.utf8))) % buckets.count]
            }
            #expect(different.isEmpty, "\(different.count) keys are not in python's bucket")
        }
        // With an entry per weight unit this took 10 s and 1 GiB; a generous bound for a loaded machine.
        #expect(created < .seconds(2), "creating the connection took \(created)")
        print(
            "fault report: 100 servers of weights 307...1,000 (\(buckets.count) buckets): connection created in \(created)"
        )
    }

    @Test("with weights, versions and stats report each physical server once and keys are stored once")
    func weightedServersReportedOnce() throws {
        try withMemcached(servers: 3) { cluster in
            let servers = try Self.servers(cluster.addresses, weights: [1, 3, 2])
            for distribution in [MemcachedDistribution.modula, .consistent, .consistentWeighted] {
                let memc = try Self.connection(servers, distribution)
                let versions = try memc.versions()
                #expect(versions.map(\.server) == cluster.addresses, "\(distribution)")
                #expect(versions.allSatisfy { (try? $0.result.get()) != nil })
                let stats = try memc.stats()
                #expect(stats.map(\.server) == cluster.addresses)
                #expect(stats.allSatisfy { (try? $0.result.get()) != nil })

                let items = Dictionary(uniqueKeysWithValues: (0..<300).map { ("w-\($0)", "v-\($0)") })
                #expect(try memc.setMulti(items).keysNotApplied.isEmpty)
                #expect(try memc.getMulti(Array(items.keys), as: String.self).hits == items)
                let counts = try cluster.servers.map { try statistic("curr_items", of: $0) }
                #expect(counts.reduce(0, +) == items.count, "\(distribution): \(counts)")
                #expect(counts.allSatisfy { $0 > 0 })
                try memc.flush()
            }
        }
    }

    @Test("weights outside 1...1000 are refused")
    func weightRange() throws {
        for weight in [0, -1, 1_001] {
            var server = MemcachedServer(host: "127.0.0.1", port: 42_500)
            server.weight = weight
            for distribution in [MemcachedDistribution.modula, .consistentWeighted] {
                let error = #expect(throws: MemcachedError.self) { try Self.connection([server], distribution) }
                #expect(error?.code == .invalidServerSpecification)
            }
        }
    }
}
