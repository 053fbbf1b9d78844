internal import CLibMemcached
import Foundation
import MemcachedTestSupport
import Testing

@testable import Memcached

/// The consistent continuums this library builds: the same as libmemcached's for up to 100
/// servers, libketama's with weights, and any size beyond.
@Suite("Consistent continuums of any size", .offCooperativePool)
struct ContinuumTests {
    /// A connection that is never connected: ``MemcachedConnection/server(forKey:)`` is its mapping.
    static func connection(
        _ servers: [MemcachedServer],
        _ distribution: MemcachedDistribution,
        hash: MemcachedHash
    ) throws -> MemcachedConnection {
        var configuration = MemcachedConfiguration(servers: servers)
        configuration.distribution = distribution
        configuration.hash = hash
        return try MemcachedConnection(configuration: configuration)
    }

    struct MappingFailure: Error, CustomStringConvertible {
        var description: String
    }

    /// The position of each key's server through the library's public mapping, computed at low
    /// priority (see ``atLowCPUPriority(_:)``).
    static func positions(
        _ keys: [String],
        _ servers: [MemcachedServer],
        _ distribution: MemcachedDistribution,
        hash: MemcachedHash = .md5
    ) throws -> [Int] {
        let connection = try connection(servers, distribution, hash: hash)
        let position = Dictionary(uniqueKeysWithValues: servers.enumerated().map { ($1.address.description, $0) })
        return try atLowCPUPriority {
            try keys.map { key in
                let server = try connection.server(forKey: key)
                guard let index = position[server] else {
                    throw MappingFailure(description: "unknown server \(server)")
                }
                return index
            }
        }
    }

    /// The position libmemcached's own continuum gives each key, from a handle of its own.
    static func libmemcachedPositions(
        _ keys: [String],
        _ servers: [MemcachedServer],
        _ distribution: memcached_server_distribution_t,
        hash: MemcachedHash
    ) throws -> [Int] {
        guard case .builtIn(_, let hashValue) = hash.kind else {
            throw MappingFailure(description: "a built-in hash is needed here")
        }
        return try atLowCPUPriority {
            guard let raw = memcached_create(nil) else { throw MappingFailure(description: "memcached_create failed") }
            defer { memcached_free(raw) }
            guard memcached_success(memcached_behavior_set(raw, MEMCACHED_BEHAVIOR_HASH, UInt64(hashValue))),
                memcached_success(
                    memcached_behavior_set(raw, MEMCACHED_BEHAVIOR_DISTRIBUTION, UInt64(distribution.rawValue))
                )
            else {
                throw MappingFailure(description: "libmemcached refused the hash or the distribution")
            }
            for server in servers {
                let rc: memcached_return_t
                switch server.address {
                case .tcp(let host, let port):
                    rc = memcached_server_add_with_weight(raw, host, in_port_t(port), UInt32(server.weight))
                case .unixSocket(let path):
                    rc = memcached_server_add_unix_socket_with_weight(raw, path, UInt32(server.weight))
                }
                guard memcached_success(rc) else { throw MappingFailure(description: "libmemcached refused \(server)") }
            }
            return keys.map { Int(memcached_generate_hash(raw, $0, $0.utf8.count)) }
        }
    }

    /// `count` servers on distinct loopback addresses and ports (never connected to).
    static func servers(_ count: Int, weight: (Int) -> Int = { _ in 1 }) -> [MemcachedServer] {
        (0..<count).map {
            MemcachedServer(host: "127.0.\($0 / 200).\($0 % 200 + 1)", port: 41_000 + $0, weight: weight($0))
        }
    }

    static func keys(_ count: Int, _ tag: String = "k") -> [String] {
        (0..<count).map { "\(tag):\($0):\($0 % 13 == 0 ? "é" : "x")" }
    }

    struct ParityCase: Sendable, CustomTestStringConvertible {
        var name: String
        var servers: [MemcachedServer]
        var distribution: MemcachedDistribution
        var hash: MemcachedHash
        /// libmemcached's own distribution for the same mapping.
        var libmemcached: UInt32
        var keys: Int

        var testDescription: String { name }
    }

    static let weighted = servers(100) { $0 % 7 + 1 }
    static let mixedNames: [MemcachedServer] = [
        MemcachedServer(host: "127.0.0.1"),
        MemcachedServer(host: "::1"),
        MemcachedServer(host: "::1", port: 22_122),
        MemcachedServer(unixSocketPath: "/tmp/continuum-test.sock"),
        MemcachedServer(host: "cache-a.example"),
        MemcachedServer(host: "cache-b.example", port: 40_001),
    ]

    static let parityCases: [ParityCase] =
        [
            ParityCase(
                name: "100 servers, consistent, md5",
                servers: servers(100),
                distribution: .consistent,
                hash: .md5,
                libmemcached: MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED.rawValue,
                keys: 100_000
            ),
            ParityCase(
                name: "100 servers, consistent, one-at-a-time",
                servers: servers(100),
                distribution: .consistent,
                hash: .default,
                libmemcached: MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED.rawValue,
                keys: 100_000
            ),
            ParityCase(
                name: "100 servers of weights 1 to 7, consistentWeighted, md5",
                servers: weighted,
                distribution: .consistentWeighted,
                hash: .md5,
                libmemcached: MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED.rawValue,
                keys: 100_000
            ),
            ParityCase(
                name: "100 servers, libmemcachedConsistent, one-at-a-time",
                servers: servers(100),
                distribution: .libmemcachedConsistent,
                hash: .default,
                libmemcached: MEMCACHED_DISTRIBUTION_CONSISTENT.rawValue,
                keys: 100_000
            ),
            ParityCase(
                name: "100 servers of weights 1 to 7, libmemcachedConsistent, fnv1a_32",
                servers: weighted,
                distribution: .libmemcachedConsistent,
                hash: .fnv1a_32,
                libmemcached: MEMCACHED_DISTRIBUTION_CONSISTENT.rawValue,
                keys: 20_000
            ),
            ParityCase(
                name: "IPv6, port 11211, a Unix socket and host names, consistent, jenkins",
                servers: mixedNames,
                distribution: .consistent,
                hash: .jenkins,
                libmemcached: MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED.rawValue,
                keys: 20_000
            ),
            ParityCase(
                name: "IPv6, port 11211, a Unix socket and host names, libmemcachedConsistent, md5",
                servers: mixedNames,
                distribution: .libmemcachedConsistent,
                hash: .md5,
                libmemcached: MEMCACHED_DISTRIBUTION_CONSISTENT.rawValue,
                keys: 20_000
            ),
        ]
        // The sizes where libmemcached's single-precision share gives 39 digests (25, 50) or 40.
        + [2, 3, 25, 29, 50, 64, 99].map { count in
            ParityCase(
                name: "\(count) servers, consistent, md5",
                servers: servers(count),
                distribution: .consistent,
                hash: .md5,
                libmemcached: MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED.rawValue,
                keys: 10_000
            )
        }

    @Test(
        "up to 100 servers, every consistent distribution maps keys as libmemcached's own continuum",
        arguments: parityCases
    )
    func libmemcachedParity(_ parity: ParityCase) throws {
        let keys = Self.keys(parity.keys, "parity")
        let ours = try Self.positions(keys, parity.servers, parity.distribution, hash: parity.hash)
        let libmemcached = try Self.libmemcachedPositions(
            keys,
            parity.distribution == .consistent
                ? parity.servers.map { MemcachedServer(address: $0.address) } : parity.servers,
            memcached_server_distribution_t(rawValue: parity.libmemcached),
            hash: parity.hash
        )
        let mismatches = zip(ours, libmemcached).filter { $0 != $1 }.count
        #expect(mismatches == 0, "\(parity.name): \(mismatches) of \(keys.count) keys differ from libmemcached")
        #expect(Set(ours).count == parity.servers.count, "every server gets keys")
    }

    @Test("digest counts follow each implementation's rounding, including the sizes where they disagree")
    func digestCounts() {
        func digests(_ servers: Int, _ scheme: Continuum.Scheme) -> Int {
            Continuum.digestCount(weight: 1, total: servers, servers: servers, scheme: scheme)
        }
        // libmemcached (and twemproxy) compute the share × 40 × servers in single precision.
        #expect(
            [3, 25, 29, 50, 100, 1_000, 1_001].map { digests($0, .libmemcachedWeighted) } == [
                40, 39, 40, 39, 39, 40, 39,
            ]
        )
        // libketama computes it in double precision, then rounds to single precision for floorf.
        #expect([3, 25, 29, 61, 100, 1_000, 1_001].map { digests($0, .libketama) } == [40, 40, 40, 39, 40, 40, 40])
        #expect(Continuum.digestCount(weight: 1, total: 0, servers: 0, scheme: .libketama) == 0)
    }

    @Test("1,000 servers: 100,000 keys spread over all of them, near equal shares")
    func spreadOverAThousand() throws {
        let servers = Self.servers(1_000)
        let keys = Self.keys(100_000, "spread")
        for distribution in [MemcachedDistribution.consistent, .libketama, .libmemcachedConsistent] {
            var counts = [Int](repeating: 0, count: servers.count)
            for position in try Self.positions(keys, servers, distribution) {
                counts[position] += 1
            }
            let mean = Double(keys.count) / Double(servers.count)
            let deviation =
                (counts.map { (Double($0) - mean) * (Double($0) - mean) }.reduce(0, +) / Double(counts.count))
                .squareRoot()
            let smallest = try #require(counts.min())
            let largest = try #require(counts.max())
            print(
                "1,000 servers, \(distribution): keys per server mean \(mean), standard deviation "
                    + "\(String(format: "%.1f", deviation)) (\(String(format: "%.1f", deviation / mean * 100)) %), "
                    + "min \(smallest), max \(largest)"
            )
            // 160 points a server give each about 8 % of spread in its share, and 100 keys a
            // server about 10 % more from sampling; 100 points (libmemcachedConsistent) a little more.
            #expect(deviation / mean < 0.2)
            #expect(smallest >= 40)
            #expect(largest <= 220)
        }
    }

    @Test(
        "1,000 servers: adding a server moves about 1/1,001 of 100,000 keys, all to it; removing one moves only its keys"
    )
    func growingAndShrinkingAThousand() throws {
        let keys = Self.keys(100_000, "move")
        // libketama gives every server 40 digests at 999, 1,000 and 1,001 servers; libmemcached
        // at 999 and 1,000 (its single precision drops one digest a server at 1,001).
        let growths: [(MemcachedDistribution, from: Int)] = [(.libketama, 1_000), (.consistent, 999)]
        for (distribution, count) in growths {
            let before = try Self.positions(keys, Self.servers(count), distribution)
            let after = try Self.positions(keys, Self.servers(count + 1), distribution)
            let moved = zip(before, after).filter { $0 != $1 }
            print("\(distribution), \(count) to \(count + 1) servers: \(moved.count) of \(keys.count) keys moved")
            #expect(moved.allSatisfy { $0.1 == count }, "every key that moved went to the new server")
            let expected = Double(keys.count) / Double(count + 1)
            #expect(Double(moved.count) > expected / 2 && Double(moved.count) < expected * 2)
        }

        // libmemcached's rounding at 1,001 servers: what moves beyond the new server's share.
        let before = try Self.positions(keys, Self.servers(1_000), .consistent)
        let after = try Self.positions(keys, Self.servers(1_001), .consistent)
        let moved = zip(before, after).filter { $0 != $1 }.count
        print("consistent, 1,000 to 1,001 servers (39 digests a server at 1,001): \(moved) of \(keys.count) keys moved")
        #expect(moved < keys.count / 20)

        // A server left out (a server that is down, with removeFailedServers): only its keys move.
        var shrunk = Self.servers(1_000)
        shrunk.remove(at: 500)
        let left = try Self.positions(keys, shrunk, .libketama)
        let full = try Self.positions(keys, Self.servers(1_000), .libketama)
        var movedOthers = 0
        var movedOwn = 0
        for (old, new) in zip(full, left) {
            let renumbered = old > 500 ? old - 1 : old
            if old == 500 {
                movedOwn += 1
            } else if renumbered != new {
                movedOthers += 1
            }
        }
        print("libketama, server 500 of 1,000 left out: its \(movedOwn) keys moved, \(movedOthers) others")
        #expect(movedOthers == 0)
        #expect(movedOwn > 0)
    }

    /// A name of 127.0.0.1 that no other of `index` is: glibc reads octets with leading zeros
    /// (octal zeros), so `127.0.00.001` is 127.0.0.1 too, and each spelling is a distinct
    /// server on the continuum.
    static func loopbackSpelling(_ index: Int) -> String {
        let second = String(repeating: "0", count: index % 10 + 1)
        let third = String(repeating: "0", count: index / 10 % 10 + 1)
        let fourth = String(repeating: "0", count: index / 100) + "1"
        return "127.\(second).\(third).\(fourth)"
    }

    @Test("1,000 server entries on 4 real servers: every key is stored where the mapping says, and read back")
    func thousandEntriesOnRealServers() throws {
        try withMemcached(servers: 4) { cluster in
            let ports = cluster.servers.map(\.port)
            let entries = (0..<1_000).map {
                MemcachedServer(host: Self.loopbackSpelling($0 / 4), port: ports[$0 % 4])
            }
            #expect(Set(entries.map(\.address)).count == 1_000)
            var configuration = MemcachedConfiguration(servers: entries)
            configuration.distribution = .consistent
            configuration.hash = .md5
            // One deadline covers a whole multi-key call, here up to 1,000 connections made and
            // 4,000 keys: generous, so that a busy machine cannot fail it.
            configuration.timeout = .seconds(60)
            configuration.connectTimeout = .seconds(10)
            let connection = try MemcachedConnection(configuration: configuration)
            let keys = Self.keys(4_000, "real")
            let stored = try connection.setMulti(Dictionary(uniqueKeysWithValues: keys.map { ($0, $0) }))
            #expect(stored.keysNotApplied.isEmpty, "\(Set(stored.values.compactMap(\.error?.code)))")

            let direct = try ports.map { try MemcachedConnection(servers: ["127.0.0.1:\($0)"]) }
            let misplaced = try atLowCPUPriority {
                var misplaced = 0
                for key in keys {
                    let server = try connection.server(forKey: key)
                    guard let port = Int(server.split(separator: ":").last ?? ""),
                        let holder = ports.firstIndex(of: port)
                    else { throw MappingFailure(description: "unknown server \(server)") }
                    for (index, single) in direct.enumerated() {
                        let value = try single.get(key, as: String.self)
                        if (value != nil) != (index == holder) { misplaced += 1 }
                    }
                }
                return misplaced
            }
            #expect(misplaced == 0, "\(misplaced) keys are not (only) on the server the mapping names")
            let read = try connection.getMulti(keys, as: String.self)
            #expect(read.failures.isEmpty)
            #expect(read.hits.count == keys.count)
            #expect(read.hits.allSatisfy { $0.key == $0.value })
        }
    }
}

extension ContinuumTests {
    @Test("pymemcacheMurmur3: MurmurHash3_x86_32 with seed 0 for ASCII, pymemcache's code-point units otherwise")
    func pymemcacheMurmur3Vectors() {
        // Published MurmurHash3_x86_32 values with seed 0, and pymemcache 4.0.0's murmur3_32 of a
        // string with code points above 127 (each kept to its low 8 bits, counted once).
        let vectors: [(String, UInt32)] = [
            ("", 0), ("hello", 613_153_351), ("The quick brown fox jumps over the lazy dog", 776_992_547),
            ("会é-key", 2_300_074_502),
        ]
        for (text, expected) in vectors {
            #expect(MemcachedHash.pymemcacheMurmur3.value(forKey: text) == expected, "\(text)")
        }
    }
}

extension ContinuumTests {
    @Test("a weighted server left out: its keys move, and the others' rounded shares move a few more")
    func weightedServerLeftOut() throws {
        let keys = Self.keys(100_000, "weights")
        let weights = [3, 1, 1, 7, 2]
        let all = Self.servers(5) { weights[$0] }
        var rest = all
        rest.remove(at: 3)
        let before = try Self.positions(keys, all, .consistentWeighted)
        let after = try Self.positions(keys, rest, .consistentWeighted)
        var own = 0
        var others = 0
        for (old, new) in zip(before, after) {
            if old == 3 {
                own += 1
            } else if (old > 3 ? old - 1 : old) != new {
                others += 1
            }
        }
        print("weights \(weights), the weight-7 server left out: its \(own) keys moved, and \(others) others")
        #expect(own > 40_000)
        // Each remaining server's digests are floor(share × 40 × live servers) again: some of its
        // points appear or disappear, about 8 % of the keys here.
        #expect(others > 2_000 && others < 20_000)
    }

    @Test(
        "libmemcachedConsistent with a weighted server down stays weighted, as libmemcached's flag does"
    )
    func weightedLibmemcachedConsistentFailover() throws {
        let refusing = try RefusingLoopbackPort()
        defer { refusing.release() }
        try withMemcached(servers: 2) { cluster in
            let servers = [
                MemcachedServer(host: "127.0.0.1", port: refusing.port, weight: 2),
                try MemcachedServer(parsing: cluster.addresses[0]),
                try MemcachedServer(parsing: cluster.addresses[1]),
            ]
            var configuration = MemcachedConfiguration(servers: servers)
            configuration.distribution = .libmemcachedConsistent
            configuration.removeFailedServers = true
            configuration.serverFailureLimit = 1
            configuration.retryTimeout = .seconds(600)
            configuration.connectTimeout = .seconds(2)
            let connection = try MemcachedConnection(configuration: configuration)
            let keys = Self.keys(5_000, "sticky")
            let before = try keys.map { try connection.server(forKey: $0) }
            let downKey = try #require(zip(keys, before).first { $0.1 == servers[0].address.description }?.0)
            #expect(throws: MemcachedError.self) { try connection.get(downKey, as: String.self) }
            // The next call rebuilds the list without the refusing server.
            #expect(try connection.get("after", as: String.self) == nil)
            let after = try keys.map { try connection.server(forKey: $0) }
            // libmemcached's weighted continuum of the two servers left, not its unweighted one
            // (which would move about half of their keys).
            let weighted = try Self.connection(Array(servers.dropFirst()), .consistentWeighted, hash: .default)
            let expected = try keys.map { try weighted.server(forKey: $0) }
            let differing = zip(after, expected).filter { $0 != $1 }.count
            #expect(differing == 0, "\(differing) keys differ from the weighted continuum of the servers left")
            let moved = zip(before, after).filter { $0.0 != servers[0].address.description && $0.0 != $0.1 }.count
            print("libmemcachedConsistent, weighted server down: \(moved) of the others' keys moved (rounding)")
            #expect(moved < keys.count / 10)
            #expect(!after.contains(servers[0].address.description))
        }
    }
}

extension ContinuumTests {
    @Test("the mapping loops run at nice 19, on a thread of their own")
    func mappingRunsAtLowPriority() throws {
        #if os(Linux)
        let inside = try atLowCPUPriority { getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0) }
        #expect(inside == 19)
        #expect(
            getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0) != 19,
            "the test's own thread keeps its priority"
        )
        #endif
    }
}
