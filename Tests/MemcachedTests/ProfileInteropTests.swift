import Foundation
import Memcached
import MemcachedTestSupport
import Testing

/// pylibmc's key mapping and ours: its behaviors and ``MemcachedConfiguration/pylibmcCompatible(servers:distribution:hash:)``.
struct PylibmcMapping: Sendable, CustomTestStringConvertible {
    var behaviors: String
    var pylibmc: MemcachedConfiguration.PylibmcDistribution
    var pylibmcHash: MemcachedHash = .default
    var weights: [Int]

    var testDescription: String { "pylibmc \(behaviors), weights \(weights)" }

    /// What ``MemcachedConfiguration/pylibmcCompatible(servers:distribution:hash:)`` makes of it.
    func configuration(_ addresses: [String]) throws -> MemcachedConfiguration {
        try MemcachedConfiguration.pylibmcCompatible(
            servers: zip(addresses, weights).map { "\($0):\($1)" },
            distribution: pylibmc,
            hash: pylibmcHash
        )
    }

    var hash: MemcachedHash { (try? configuration(["127.0.0.1:1"]).hash) ?? pylibmcHash }
    var distribution: MemcachedDistribution { (try? configuration(["127.0.0.1:1"]).distribution) ?? .modula }

    /// libmemcached's defaults, which pylibmc keeps (it neither sorts the servers nor sets a
    /// behavior unasked); and `ketama_weighted`, which sets the MD5 key hash and the weighted
    /// continuum.
    static let all = [
        PylibmcMapping(behaviors: "{}", pylibmc: .modula, weights: [1, 1, 1]),
        PylibmcMapping(behaviors: #"{"ketama_weighted": true}"#, pylibmc: .ketamaWeighted, weights: [1, 1, 1]),
    ]
}

/// Values shared with the real pylibmc 1.6.3 and pymemcache 4.0.0 from PyPI, each with its own
/// ``MemcachedFlagProfile``.
@Suite("Value flag profiles shared with pylibmc 1.6.3 and pymemcache 4.0.0", .offCooperativePool, .serialized)
struct ProfileInteropTests {
    static let count = 2_000
    static let kinds = ["str", "int", "bigint", "bool", "float", "bytes", "compressed", "json", "list", "empty"]

    static func connection(
        _ cluster: MemcachedCluster,
        profile: MemcachedFlagProfile,
        hash: MemcachedHash = .default,
        distribution: MemcachedDistribution = .modula,
        weights: [Int] = [1, 1, 1]
    ) throws -> MemcachedConnection {
        var servers = try cluster.addresses.map(MemcachedServer.init(parsing:))
        for (index, weight) in weights.enumerated() {
            servers[index].weight = weight
        }
        var configuration = MemcachedConfiguration(servers: servers)
        configuration.hash = hash
        configuration.distribution = distribution
        configuration.flagProfile = profile
        configuration.timeout = .seconds(2)
        configuration.compressionThreshold = 100
        return try MemcachedConnection(configuration: configuration)
    }

    /// A connection configured by ``MemcachedConfiguration/pylibmcCompatible(servers:distribution:hash:)``
    /// for the mapping, with the tests' timeout and compression threshold.
    static func pylibmcConnection(_ cluster: MemcachedCluster, _ mapping: PylibmcMapping) throws -> MemcachedConnection
    {
        var configuration = try mapping.configuration(cluster.addresses)
        configuration.timeout = .seconds(2)
        configuration.compressionThreshold = 100
        return try MemcachedConnection(configuration: configuration)
    }

    // MARK: - Checks shared by both clients

    /// Reads what Python wrote: with each value's Swift type, with a connection of every profile
    /// (reads do not depend on it), and as stored values in one multi-get; checks the flags Python
    /// stored against the profile's table. Returns how many keys each read found equal.
    static func checkPythonWrites(
        _ written: [ProfileWrite],
        profile: MemcachedFlagProfile,
        cluster: MemcachedCluster,
        with memc: MemcachedConnection
    ) throws {
        #expect(written.count == count)
        #expect(
            Dictionary(grouping: written, by: \.kind).mapValues(\.count)
                == Dictionary(uniqueKeysWithValues: kinds.map { ($0, count / kinds.count) })
        )

        var different: [String] = []
        let equal = try written.filter { entry in
            let same = try entry.value.read(entry.key, with: memc) == entry.value
            if !same {
                different.append("\(entry.key): \(String(describing: try? entry.value.read(entry.key, with: memc)))")
            }
            return same
        }.count
        print("\(profile) wrote \(written.count) keys; swift (\(profile) profile) read \(equal) equal")
        #expect(equal == count, "not read back equal: \(different.prefix(5))")

        // Reads do not depend on the profile: a client of another profile reads the same.
        for other in [MemcachedFlagProfile.pythonMemcached, .pylibmc, .pymemcache] where other != profile {
            var configuration = memc.configuration
            configuration.flagProfile = other
            let otherConnection = try MemcachedConnection(configuration: configuration)
            let otherEqual = try written.filter { try $0.value.read($0.key, with: otherConnection) == $0.value }.count
            #expect(otherEqual == count, "read with the \(other) profile: \(otherEqual) equal")
        }

        // Every kind at once, by its flags, as Python's get_multi reads mixed types.
        let mixed = try memc.getMulti(written.map(\.key), as: MemcachedStoredValue.self)
        let mixedEqual = try written.filter { entry in
            guard let stored = mixed[entry.key] else { return false }
            return try entry.value.fromStored(stored) == entry.value
        }.count
        #expect(mixedEqual == count, "read as stored values in one multi-get: \(mixedEqual) equal")

        // Python stored each value with the flags the profile's table says (compression aside),
        // and compressed every long text (flag 8, read raw from the server).
        let flags = try memc.getMulti(written.map(\.key), as: StoredTypeFlags.self)
        let flagsAsTable = written.filter { flags[$0.key]?.rawValue == $0.value.typeFlags(profile) }
        #expect(flagsAsTable.count == count, "\(count - flagsAsTable.count) keys have other flags")
        for entry in written where entry.kind == "compressed" {
            let owner = try #require(cluster.servers.first { $0.address == (try? memc.server(forKey: entry.key)) })
            #expect(try storedFlags(entry.key, on: owner) == 24, "\(entry.key)")
        }
        #expect(try cluster.servers.map { try statistic("curr_items", of: $0) }.allSatisfy { $0 > 400 })
    }

    /// Writes 2,000 values of every kind; checks they went out with the profile's flags (so what
    /// the Python client itself writes), the long text compressed. Returns them by key.
    static func writeSwiftValues(
        profile: MemcachedFlagProfile,
        cluster: MemcachedCluster,
        with memc: MemcachedConnection
    ) throws -> [String: ProfileValue] {
        var expected: [String: ProfileValue] = [:]
        for index in 0..<count {
            let (key, value) = ProfileValue.swiftValue(index)
            #expect(try value.write(key, with: memc))
            expected[key] = value
        }
        #expect(expected.count == count)
        let flags = try memc.getMulti(Array(expected.keys), as: StoredTypeFlags.self)
        let flagsAsTable = expected.filter { flags[$0.key]?.rawValue == $0.value.typeFlags(profile) }
        #expect(flagsAsTable.count == count, "\(count - flagsAsTable.count) keys have other flags")
        for index in stride(from: 6, to: count, by: kinds.count) {
            let key = ProfileValue.swiftValue(index).key
            let owner = try #require(cluster.servers.first { $0.address == (try? memc.server(forKey: key)) })
            #expect(try storedFlags(key, on: owner) == 24, "\(key)")
        }
        return expected
    }

    /// Compares what Python read with what was written, as that Python client reads its own values.
    static func checkPythonReads(
        _ read: [String: ProfileValue],
        expected: [String: ProfileValue],
        profile: MemcachedFlagProfile
    ) {
        let equal = expected.filter { read[$0.key] == $0.value.readByPython(profile) }
        print(
            "swift (\(profile) profile) wrote \(expected.count) keys; \(profile) read \(read.count), \(equal.count) equal"
        )
        #expect(read.count == count)
        #expect(
            equal.count == count,
            "differ: \(expected.filter { read[$0.key] != $0.value.readByPython(profile) }.prefix(5).map { "\($0.key): \($0.value) read as \(String(describing: read[$0.key]))" })"
        )
    }

    // MARK: - pylibmc

    @Test(
        "pylibmc writes 2,000 keys of every kind over 3 servers; we read all of them, equal",
        arguments: PylibmcMapping.all
    )
    func pylibmcWritesSwiftReads(mapping: PylibmcMapping) throws {
        try withMemcached(servers: 3) { cluster in
            let servers = PythonMemcached.serverList(cluster.addresses, weights: mapping.weights)
            let written = try PythonMemcached.run(
                ["write", "--servers", servers, "--behaviors", mapping.behaviors, "--count", "\(Self.count)"],
                script: "pylibmc_interop.py",
                as: [ProfileWrite].self
            )
            let memc = try Self.pylibmcConnection(cluster, mapping)
            // Every value equal, under every profile, with pylibmc's flags; before the increments,
            // which change the integers.
            try Self.checkPythonWrites(written, profile: .pylibmc, cluster: cluster, with: memc)

            // increment keeps pylibmc's flags (4), so pylibmc reads the new number as an int; a
            // negative number is not one memcached can increment. (Numbers of 2^63 and more are
            // left out: memcached before 1.6.22 looks for a '-' past the end of the value, in
            // whatever memory follows, and refuses some of them at random.)
            let counters = written.compactMap { entry -> (key: String, value: Int)? in
                guard case .integer(let number) = entry.value, number >= 0 else { return nil }
                return (entry.key, number)
            }
            #expect(counters.count > 50)
            for (key, old) in counters {
                #expect(try memc.increment(key, by: 1) == UInt64(old) + 1, "\(key)")
            }
            let negative = try #require(written.first { if case .integer(let n) = $0.value { n < 0 } else { false } })
            #expect(throws: MemcachedError.self) { try memc.increment(negative.key) }
            let afterIncrement = try PythonMemcached.run(
                ["read", "--servers", servers, "--behaviors", mapping.behaviors],
                script: "pylibmc_interop.py",
                keys: counters.map(\.key),
                as: [String: ProfileValue].self
            )
            let incremented = counters.filter { afterIncrement[$0.key] == .integer($0.value + 1) }
            #expect(incremented.count == counters.count)

            // The control: with the other distribution, most keys are looked for on the wrong server.
            let wrong = try Self.connection(
                cluster,
                profile: .pylibmc,
                hash: mapping.hash == .md5 ? .default : .md5,
                distribution: mapping.distribution == .modula ? .consistentWeighted : .modula
            )
            let found = try written.filter { try wrong.get($0.key, as: [UInt8].self) != nil }.count
            #expect(found < Self.count * 2 / 3, "the other mapping found \(found)")
        }
    }

    @Test(
        "we write 2,000 keys of every kind over 3 servers; pylibmc reads all of them, equal",
        arguments: PylibmcMapping.all
    )
    func swiftWritesPylibmcReads(mapping: PylibmcMapping) throws {
        try withMemcached(servers: 3) { cluster in
            let memc = try Self.pylibmcConnection(cluster, mapping)
            let expected = try Self.writeSwiftValues(profile: .pylibmc, cluster: cluster, with: memc)
            let read = try PythonMemcached.run(
                [
                    "read", "--servers", PythonMemcached.serverList(cluster.addresses, weights: mapping.weights),
                    "--behaviors", mapping.behaviors,
                ],
                script: "pylibmc_interop.py",
                keys: Array(expected.keys),
                as: [String: ProfileValue].self
            )
            Self.checkPythonReads(read, expected: expected, profile: .pylibmc)
        }
    }

    @Test(
        "pylibmc_interop.py map: pylibmc and we pick the same server for every key",
        arguments: PylibmcMapping.all + [
            PylibmcMapping(behaviors: #"{"ketama_weighted": true}"#, pylibmc: .ketamaWeighted, weights: [1, 3, 2]),
            // pylibmc's `ketama`: libmemcached's own continuum, hashed with the key hash; a
            // weight above 1 makes it the weighted one.
            PylibmcMapping(behaviors: #"{"ketama": true}"#, pylibmc: .ketama, weights: [1, 1, 1]),
            PylibmcMapping(
                behaviors: #"{"ketama": true, "hash": "md5"}"#,
                pylibmc: .ketama,
                pylibmcHash: .md5,
                weights: [1, 1, 1]
            ),
            PylibmcMapping(behaviors: #"{"ketama": true}"#, pylibmc: .ketama, weights: [1, 3, 2]),
        ]
    )
    func pylibmcMap(mapping: PylibmcMapping) throws {
        try withMemcached(servers: 3) { cluster in
            let keys = (0..<1_000).map { "route-\($0)-\(["a", "b", "é", "ob"][$0 % 4])" }
            let python = try PythonMemcached.run(
                [
                    "map", "--servers", PythonMemcached.serverList(cluster.addresses, weights: mapping.weights),
                    "--behaviors", mapping.behaviors,
                ],
                script: "pylibmc_interop.py",
                keys: keys,
                as: [String: String].self
            )
            let memc = try MemcachedConnection(configuration: try mapping.configuration(cluster.addresses))
            let different = try keys.filter { try memc.server(forKey: $0) != python[$0] }
            print(
                "pylibmc \(mapping.behaviors) weights \(mapping.weights): \(keys.count - different.count) of \(keys.count) keys agree"
            )
            #expect(python.count == keys.count)
            #expect(different.count == 0, "keys that differ, such as \(different.prefix(5))")
            #expect(Set(python.values).count == 3)
        }
    }

    // MARK: - pymemcache

    /// A connection with pymemcacheCompatible's mapping, which is HashClient's (see
    /// pymemcacheMap): the Python side sends each key to the server it names.
    static func pymemcacheConnection(_ cluster: MemcachedCluster) throws -> MemcachedConnection {
        try connection(cluster, profile: .pymemcache, hash: .pymemcacheMurmur3, distribution: .rendezvous)
    }

    /// The server our mapping picks for each key, where pymemcache's side sends it.
    static func routes(_ keys: [String], with memc: MemcachedConnection) throws -> [String: String] {
        Dictionary(uniqueKeysWithValues: try keys.map { ($0, try memc.server(forKey: $0)) })
    }

    @Test("pymemcache writes 2,000 keys of every kind over 3 servers; we read all of them, equal")
    func pymemcacheWritesSwiftReads() throws {
        try withMemcached(servers: 3) { cluster in
            let memc = try Self.pymemcacheConnection(cluster)
            let keys = try PythonMemcached.run(
                ["keys", "--count", "\(Self.count)"],
                script: "pymemcache_interop.py",
                as: [String].self
            )
            let written = try PythonMemcached.withRoutesFile(try Self.routes(keys, with: memc)) { routes in
                try PythonMemcached.run(
                    ["write", "--routes", routes, "--count", "\(Self.count)"],
                    script: "pymemcache_interop.py",
                    as: [ProfileWrite].self
                )
            }
            try Self.checkPythonWrites(written, profile: .pymemcache, cluster: cluster, with: memc)
        }
    }

    @Test("we write 2,000 keys of every kind over 3 servers; pymemcache reads all of them, equal")
    func swiftWritesPymemcacheReads() throws {
        try withMemcached(servers: 3) { cluster in
            let memc = try Self.pymemcacheConnection(cluster)
            let expected = try Self.writeSwiftValues(profile: .pymemcache, cluster: cluster, with: memc)
            let read = try PythonMemcached.withRoutesFile(try Self.routes(Array(expected.keys), with: memc)) { routes in
                try PythonMemcached.run(
                    ["read", "--routes", routes],
                    script: "pymemcache_interop.py",
                    as: [String: ProfileValue].self
                )
            }
            Self.checkPythonReads(read, expected: expected, profile: .pymemcache)
        }
    }

    @Test(
        "rendezvous with pymemcacheMurmur3 picks HashClient's server for every key: IPv4, IPv6, Unix sockets, non-ASCII keys"
    )
    func pymemcacheMap() throws {
        let keys = (0..<3_000).map { "route-\($0)-\(["a", "b", "é", "会", "ob"][$0 % 5])" }
        let serverLists: [[String]] = [
            ["127.0.0.1:21001", "127.0.0.1:21002", "127.0.0.1:21003"],
            ["127.0.0.1:11211", "[::1]:11211", "[::1]:21002", "/tmp/pymemcache-map.sock", "localhost:21004"],
        ]
        for servers in serverLists {
            let python = try PythonMemcached.run(
                ["map", "--servers", servers.joined(separator: ",")],
                script: "pymemcache_interop.py",
                keys: keys,
                as: [String: String].self
            )
            let configuration = try MemcachedConfiguration.pymemcacheCompatible(servers: servers)
            let memc = try MemcachedConnection(configuration: configuration)
            // pymemcache's node names, by our server's description.
            let nodes = Dictionary(
                uniqueKeysWithValues: configuration.servers.map { server -> (String, String) in
                    switch server.address {
                    case .tcp(let host, let port): (server.address.description, "\(host):\(port)")
                    case .unixSocket(let path): (server.address.description, path)
                    }
                }
            )
            let different = try keys.filter { nodes[try memc.server(forKey: $0)] != python[$0] }
            print("pymemcache HashClient over \(servers): \(keys.count - different.count) of \(keys.count) keys agree")
            #expect(python.count == keys.count)
            #expect(different.isEmpty, "keys that differ, such as \(different.prefix(5))")
            #expect(Set(python.values).count == servers.count)
        }
    }

    @Test("rendezvous: a tie goes to the greater server name, as pymemcache's max(str(node), str(winner))")
    func rendezvousTies() throws {
        let servers = ["127.0.0.1:21001", "127.0.0.9:21001", "127.0.0.5:21001"]
        var configuration = MemcachedConfiguration(servers: try servers.map(MemcachedServer.init(parsing:)))
        configuration.distribution = .rendezvous
        configuration.hash = .custom(name: "constant") { _ in 7 }
        let memc = try MemcachedConnection(configuration: configuration)
        for key in ["a", "b", "c"] {
            #expect(try memc.server(forKey: key) == "127.0.0.9:21001")
        }
    }
}
