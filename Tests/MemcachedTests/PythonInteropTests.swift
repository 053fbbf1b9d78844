import Foundation
import Memcached
import MemcachedTestSupport
import Testing

/// A hash choice on both sides: python-memcached's `serverHashFunction` and ours.
struct PythonHashChoice: Sendable, CustomTestStringConvertible {
    var python: String
    var swift: MemcachedHash

    var testDescription: String { "python \(python), swift \(swift)" }

    static let all = [
        PythonHashChoice(python: "default", swift: .crc),
        PythonHashChoice(python: "adler32", swift: .adler32),
        PythonHashChoice(python: "crc32", swift: .crc32),
    ]
}

/// One cluster shared with the real python-memcached 1.62 from PyPI.
@Suite("Interoperability with python-memcached 1.62", .offCooperativePool, .serialized)
struct PythonInteropTests {
    static let count = 2_000

    static func connection(
        _ cluster: MemcachedCluster,
        hash: MemcachedHash,
        weights: [Int]? = nil
    ) throws -> MemcachedConnection {
        var servers = try cluster.addresses.map(MemcachedServer.init(parsing:))
        for (index, weight) in (weights ?? []).enumerated() {
            servers[index].weight = weight
        }
        var configuration = MemcachedConfiguration.pythonMemcachedCompatible(servers: servers, hash: hash)
        configuration.timeout = .seconds(2)
        configuration.compressionThreshold = 100
        return try MemcachedConnection(configuration: configuration)
    }

    /// The flags python-memcached stores for each kind of value.
    static let pythonFlags: [String: UInt32] = ["str": 16, "int": 2, "bytes": 0, "compressed": 24, "json": 1]

    /// Reads every written key in one multi-get as ``MemcachedStoredValue``; returns how many equal
    /// what python wrote (a failure counts as different).
    static func readMixed(_ written: [PythonWrite], with memc: MemcachedConnection) throws -> Int {
        let mixed = try memc.getMulti(written.map(\.key), as: MemcachedStoredValue.self)
        var equal = 0
        for entry in written {
            if let stored = mixed[entry.key], try InteropValue(stored: stored) == entry.value {
                equal += 1
            }
        }
        return equal
    }

    @Test(
        "python writes 2,000 keys of every kind over 3 servers; we read all of them, equal",
        arguments: PythonHashChoice.all
    )
    func pythonWritesSwiftReads(hash: PythonHashChoice) throws {
        try withMemcached(servers: 3) { cluster in
            let written = try PythonMemcached.run(
                [
                    "write", "--servers", PythonMemcached.serverList(cluster.addresses), "--hash", hash.python,
                    "--count", "\(Self.count)",
                ],
                as: [PythonWrite].self
            )
            #expect(written.count == Self.count)
            #expect(
                Dictionary(grouping: written, by: \.kind).mapValues(\.count) == Self.pythonFlags.mapValues { _ in 400 }
            )

            let memc = try Self.connection(cluster, hash: hash.swift)
            var equal = 0
            var different: [String] = []
            for entry in written {
                if try entry.value.read(entry.key, with: memc) == entry.value {
                    equal += 1
                } else {
                    different.append(entry.key)
                }
            }
            print("python (\(hash.python)) wrote \(written.count) keys; swift read \(equal) equal")
            #expect(equal == Self.count, "not read back equal: \(different.prefix(10))")

            // The same keys through one multi-get with a key prefix, which is hashed with the key.
            let unprefixed = written.map { String($0.key.dropFirst(3)) }
            #expect(try memc.getMulti(unprefixed, keyPrefix: "py:", as: [UInt8].self).hits.count == Self.count)

            // Every kind at once, as python's get_multi reads mixed types: each by its flags.
            let mixedEqual = try Self.readMixed(written, with: memc)
            #expect(mixedEqual == Self.count, "read as stored values in one multi-get: \(mixedEqual) equal")

            // Python really stored each kind with its own flags, compression and JSON included.
            for entry in written.prefix(100) {
                let owner = cluster.servers[
                    try #require(cluster.addresses.firstIndex(of: try memc.server(forKey: entry.key)))
                ]
                #expect(try storedFlags(entry.key, on: owner) == Self.pythonFlags[entry.kind], "\(entry.key)")
            }
            #expect(try cluster.servers.map { try statistic("curr_items", of: $0) }.allSatisfy { $0 > 500 })

            // The control: with another hash, most keys are looked for on the wrong server.
            let wrong = try Self.connection(cluster, hash: hash.swift == .crc ? .crc32 : .crc)
            let found = try written.filter { try wrong.get($0.key, as: [UInt8].self) != nil }.count
            #expect(found < Self.count * 2 / 3, "another hash found \(found)")
        }
    }

    @Test(
        "we write 2,000 keys of every kind over 3 servers; python reads all of them, equal",
        arguments: PythonHashChoice.all
    )
    func swiftWritesPythonReads(hash: PythonHashChoice) throws {
        try withMemcached(servers: 3) { cluster in
            let memc = try Self.connection(cluster, hash: hash.swift)
            var expected: [String: InteropValue] = [:]
            for index in 0..<Self.count {
                let (key, value): (String, InteropValue)
                switch index % 5 {
                case 0: (key, value) = ("swift:str:\(index)", .text("swift-\(index)-会-ü"))
                case 1:
                    (key, value) = (
                        "swift:int:\(index)", .integer(index.isMultiple(of: 2) ? -index * 1_000_003 : Int.max - index)
                    )
                case 2:
                    (key, value) = (
                        "swift:bytes:\(index)", .bytes((0..<(index % 41)).map { UInt8(($0 * 7 + index) % 256) })
                    )
                case 3:
                    (key, value) = (
                        "swift:compressed:\(index)", .text(String(repeating: "swift text \(index) ", count: 20))
                    )
                default:
                    let record = InteropRecord(
                        id: index,
                        name: "swift-\(index)",
                        tags: ["s\(index % 3)", "会"],
                        score: Double(index) / 8,
                        nested: .init(ok: index % 3 == 0)
                    )
                    (key, value) = ("swift:json:\(index)", .record(record))
                }
                #expect(try value.write(key, with: memc))
                expected[key] = value
            }
            // Long text went out compressed (flag 16 | 8), so python's decompression is exercised.
            let compressedKey = "swift:compressed:3"
            let owner = cluster.servers[
                try #require(cluster.addresses.firstIndex(of: try memc.server(forKey: compressedKey)))
            ]
            #expect(try storedFlags(compressedKey, on: owner) == 24)

            let read = try PythonMemcached.run(
                ["read", "--servers", PythonMemcached.serverList(cluster.addresses), "--hash", hash.python],
                keys: Array(expected.keys),
                as: [String: InteropValue].self
            )
            let equal = expected.filter { read[$0.key] == $0.value }.count
            print("swift (\(hash.swift)) wrote \(expected.count) keys; python read \(read.count), \(equal) equal")
            #expect(read.count == Self.count)
            #expect(equal == Self.count, "differ: \(expected.filter { read[$0.key] != $0.value }.keys.prefix(10))")
        }
    }

    @Test(
        "python-memcached and we pick the same server for every key, with weights 1, 3, 2",
        arguments: PythonHashChoice.all
    )
    func sameServerWithWeights(hash: PythonHashChoice) throws {
        try withMemcached(servers: 3) { cluster in
            let weights = [1, 3, 2]
            let keys = (0..<3_000).map { "route-\($0)-\(["a", "会", "é", "ob"][$0 % 4])" }
            let python = try PythonMemcached.run(
                [
                    "map", "--servers", PythonMemcached.serverList(cluster.addresses, weights: weights), "--hash",
                    hash.python,
                ],
                keys: keys,
                as: [String: String].self
            )
            let memc = try Self.connection(cluster, hash: hash.swift, weights: weights)
            let different = try keys.filter { try memc.server(forKey: $0) != python[$0] }
            print(
                "routing with \(hash.python) and weights \(weights): \(keys.count - different.count) of \(keys.count) keys agree"
            )
            #expect(different.isEmpty, "\(different.count) keys differ, such as \(different.prefix(5))")
            let counts = Dictionary(grouping: keys) { python[$0] ?? "" }.mapValues(\.count)
            #expect(counts.count == 3, "python spread the keys over every server: \(counts)")
        }
    }
}
