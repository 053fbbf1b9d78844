import Foundation
import Memcached
import MemcachedTestSupport
import Testing

struct Film: Codable, Equatable, MemcachedValue {
    var filmID: Int
    var title: String
    var rentalRate: Double
    var tags: [String]
    var sequel: String?
}

/// Every command, in both wire protocols, against a real memcached.
@Suite("Commands", .offCooperativePool)
struct CommandTests {
    static let protocols: [MemcachedConfiguration.WireProtocol] = [.ascii, .binary]

    @Test("get, set, miss and stored-empty", arguments: protocols)
    func getSet(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        try withMemcached { cluster in
            let memc = try connect(cluster, wireProtocol: wireProtocol)
            #expect(try memc.get("missing", as: String.self) == nil)
            #expect(try memc.set("greeting", "hello"))
            #expect(try memc.get("greeting", as: String.self) == "hello")
            #expect(try memc.set("greeting", "replaced"))
            #expect(try memc.get("greeting", as: String.self) == "replaced")
            #expect(try memc.set("empty", ""))
            #expect(try memc.get("empty", as: String.self) == "")
            #expect(try memc.get("empty", as: [UInt8].self) == [])
        }
    }

    @Test(
        "getMulti matches every reply to its key: runs of misses, repeated keys, 3 servers, a prefix",
        arguments: protocols
    )
    func getMultiMatching(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        try withMemcached(servers: 3) { cluster in
            let memc = try connect(cluster, wireProtocol: wireProtocol)
            let keys = (0..<300).map { "m\($0)" }
            // Misses alone, in pairs and in runs longer than the matcher's look-ahead.
            let stored = keys.enumerated().filter { index, _ in
                !(index % 7 == 0 || (index / 10) % 5 == 3 || index % 13 == 1)
            }.map(\.element)
            #expect(
                try memc.setMulti(Dictionary(uniqueKeysWithValues: stored.map { ($0, "v:\($0)") }), keyPrefix: "x:")
                    .keysNotApplied.isEmpty
            )
            let expected = Dictionary(uniqueKeysWithValues: stored.map { ($0, "v:\($0)") })
            #expect(try memc.getMulti(keys, keyPrefix: "x:", as: String.self).hits == expected)
            #expect(try memc.getMulti(keys.reversed(), keyPrefix: "x:", as: String.self).hits == expected)
            let repeated = ["m2", "m3", "m2", "m0", "m3", "m3"]
            #expect(try memc.getMulti(repeated, keyPrefix: "x:", as: String.self).hits == ["m2": "v:m2", "m3": "v:m3"])
            #expect(
                try memc.getMulti(keys, as: String.self) == MemcachedGetMultiResult(),
                "without the prefix nothing matches"
            )
        }
    }

    @Test(
        "append or prepend to a compressed value throws compressedValue and writes nothing; a plain value and a miss are as before"
    )
    func appendToCompressedValue() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster) { $0.compressionThreshold = 64 }
            let long = String(repeating: "compressible ", count: 40)
            #expect(try memc.set("c", long))
            for (name, change) in [
                ("append", { try memc.append("c", "tail") }),
                ("prepend", { try memc.prepend("c", "head") }),
            ] as [(String, () throws -> Bool)] {
                let error = try #require(throws: MemcachedError.self, "\(name)") { _ = try change() }
                #expect(error.code == .compressedValue, "\(name): \(error)")
                #expect(error.key == "c")
                #expect(try memc.get("c", as: String.self) == long, "\(name) wrote nothing")
            }
            // Below the threshold nothing is compressed, and both still work; a miss is `false`.
            #expect(try memc.set("p", "mid"))
            #expect(try memc.append("p", "-tail"))
            #expect(try memc.prepend("p", "head-"))
            #expect(try memc.get("p", as: String.self) == "head-mid-tail")
            #expect(try memc.append("missing", "x") == false)
            #expect(try memc.prepend("missing", "x") == false)
            // A writer that does not check (another client, here a raw socket) still cannot make a
            // read return a truncated value: the read throws.
            _ = try cluster.servers[0].rawCommand("append c 0 0 4\r\ntail\r\n", until: "\r\n")
            let read = try #require(throws: MemcachedError.self) { _ = try memc.get("c", as: String.self) }
            #expect(read.code == .decompressionFailed, "\(read)")
            let multi = try memc.getMulti(["c"], as: String.self)
            #expect(multi.hits.isEmpty)
            #expect(multi.failures["c"]?.code == .decompressionFailed)
        }
    }

    @Test("getMulti(forEachHit:) hands over each hit in place, decompressed, and rethrows the caller's error")
    func getMultiForEachHit() throws {
        struct Stop: Error {}
        try withMemcached { cluster in
            let memc = try connect(cluster) { $0.compressionThreshold = 64 }
            let long = String(repeating: "compressible ", count: 40)
            #expect(try memc.setMulti(["a": "1", "b": long], keyPrefix: "f:").keysNotApplied.isEmpty)
            #expect(try memc.set("f:n", 42))
            var seen: [String: (String, MemcachedFlags)] = [:]
            try memc.getMulti(["a", "missing", "b", "n"], keyPrefix: "f:") { key, bytes, flags in
                seen[key] = (String(decoding: bytes, as: UTF8.self), flags)
            }
            #expect(seen.mapValues(\.0) == ["a": "1", "b": long, "n": "42"])
            #expect(seen["b"]?.1 == .text, "compressed on the server, handed over decompressed without the flag")
            #expect(seen["n"]?.1 == .integer)
            var calls = 0
            #expect(throws: Stop.self) {
                try memc.getMulti(["a", "b", "n"], keyPrefix: "f:") { _, _, _ in
                    calls += 1
                    throw Stop()
                }
            }
            #expect(calls == 1, "not called again after it threw")
            #expect(try memc.get("f:a", as: String.self) == "1", "the rest of the reply was read")
        }
    }

    @Test(
        "code running in the middle of a read cannot use its connection; close and disconnect wait for the read",
        .serialized,
        arguments: protocols
    )
    func reentrantUse(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        try withMemcached { cluster in
            let memc = try connect(cluster, wireProtocol: wireProtocol)
            let items = ["a": "AAAA", "b": "BBBB", "c": "CCCC", "other": String(repeating: "Z", count: 100_000)]
            #expect(try memc.setMulti(items).keysNotApplied.isEmpty)
            var seen: [String: String] = [:]
            var nestedErrors: [MemcachedError.Code] = []
            try memc.getMulti(["a", "b", "c"]) { key, bytes, _ in
                let before = String(decoding: bytes, as: UTF8.self)
                do {
                    _ = try memc.get("other", as: String.self)
                } catch let error as MemcachedError {
                    nestedErrors.append(error.code)
                }
                #expect(String(decoding: bytes, as: UTF8.self) == before, "the bytes are untouched")
                seen[key] = before
            }
            #expect(seen == ["a": "AAAA", "b": "BBBB", "c": "CCCC"], "no hit lost")
            #expect(nestedErrors == [.connectionInUse, .connectionInUse, .connectionInUse])
            #expect(try memc.get("other", as: String.self) == items["other"], "usable after the read")

            // A value type whose decoder reaches for the same connection.
            ReentrantValue.connection = memc
            defer { ReentrantValue.connection = nil }
            #expect(throws: MemcachedError.self) { try memc.get("a", as: ReentrantValue.self) }
            #expect(ReentrantValue.nestedError == .connectionInUse)
            #expect(try memc.get("b", as: String.self) == "BBBB")

            var afterDisconnect = 0
            try memc.getMulti(["a", "b", "c"]) { _, _, _ in
                memc.disconnect()
                afterDisconnect += 1
            }
            #expect(afterDisconnect == 3)
            #expect(try memc.get("c", as: String.self) == "CCCC", "reconnects after the deferred disconnect")

            var afterClose = 0
            try memc.getMulti(["a", "b", "c"]) { _, bytes, _ in
                memc.close()
                #expect(bytes.count == 4, "still readable: the close waits for the read")
                afterClose += 1
            }
            #expect(afterClose == 3)
            #expect(throws: MemcachedError.self) { try memc.get("a", as: String.self) }
        }
    }

    @Test("add, replace, append and prepend with their expected negatives", arguments: protocols)
    func conditionalStores(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        try withMemcached { cluster in
            let memc = try connect(cluster, wireProtocol: wireProtocol)
            #expect(try memc.add("k", "first"))
            #expect(try memc.add("k", "second") == false)
            #expect(try memc.get("k", as: String.self) == "first")
            #expect(try memc.replace("k", "third"))
            #expect(try memc.replace("absent", "x") == false)
            #expect(try memc.get("absent", as: String.self) == nil)
            #expect(try memc.append("k", "++"))
            #expect(try memc.prepend("k", "--"))
            #expect(try memc.get("k", as: String.self) == "--third++")
            #expect(try memc.append("absent", "x") == false)
            #expect(try memc.prepend("absent", "x") == false)
            // The server keeps the item's flags: appending digits to an integer gives an integer.
            try memc.set("n", 10)
            #expect(try memc.append("n", "5"))
            #expect(try memc.get("n", as: Int.self) == 105)
        }
    }

    @Test("gets and cas with an explicit token", arguments: protocols)
    func compareAndSwap(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        try withMemcached { cluster in
            let memc = try connect(cluster, wireProtocol: wireProtocol)
            #expect(try memc.gets("k", as: String.self) == nil)
            try memc.set("k", "v1")
            let (value, token) = try #require(try memc.gets("k", as: String.self))
            #expect(value == "v1")
            #expect(try memc.cas("k", "v2", token: token))
            #expect(try memc.cas("k", "v3", token: token) == false, "a stale token must not store")
            #expect(try memc.get("k", as: String.self) == "v2")
            let (_, fresh) = try #require(try memc.gets("k", as: String.self))
            #expect(fresh != token)
            try memc.delete("k")
            #expect(try memc.cas("k", "v4", token: fresh) == false, "cas on a missing key must not store")
            #expect(try memc.get("k", as: String.self) == nil)
        }
    }

    @Test("delete and deleteMulti report per-key outcomes", arguments: protocols)
    func deletes(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        try withMemcached { cluster in
            let memc = try connect(cluster, wireProtocol: wireProtocol)
            try memc.set("k", "v")
            #expect(try memc.delete("k"))
            #expect(try memc.delete("k") == false)
            try memc.setMulti(["a": 1, "b": 2], keyPrefix: "p:")
            let outcomes = try memc.deleteMulti(["a", "b", "c"], keyPrefix: "p:")
            #expect(outcomes.count == 3)
            #expect(outcomes["a"] == .applied)
            #expect(outcomes["b"] == .applied)
            #expect(outcomes["c"] == .declined)
            #expect(try memc.getMulti(["a", "b"], keyPrefix: "p:", as: Int.self) == MemcachedGetMultiResult())
        }
    }

    @Test("increment and decrement with 64-bit deltas", arguments: protocols)
    func counters(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        try withMemcached { cluster in
            let memc = try connect(cluster, wireProtocol: wireProtocol)
            #expect(try memc.increment("missing") == nil)
            #expect(try memc.decrement("missing") == nil)
            try memc.set("n", 0)
            #expect(try memc.increment("n") == 1)
            let big: UInt64 = 1 << 40 + 7  // beyond memcached_increment's 32-bit delta
            #expect(try memc.increment("n", by: big) == 1 + big)
            #expect(try memc.decrement("n", by: 2) == big - 1)
            #expect(try memc.decrement("n", by: UInt64.max) == 0, "memcached stops decrements at 0")
            #expect(try memc.increment("n", by: UInt64.max) == UInt64.max)
            #expect(try memc.increment("n", by: 2) == 1, "memcached wraps increments at 2^64")
            #expect(try memc.get("n", as: UInt64.self) == 1)
            try memc.set("n", 100)
            _ = try memc.decrement("n", by: 95)  // memcached may pad the shorter number with spaces
            #expect(try memc.get("n", as: Int.self) == 5)
            try memc.set("word", "abc")
            #expect(throws: MemcachedError.self) { try memc.increment("word") }
            #expect(try memc.get("word", as: String.self) == "abc", "the connection stays usable")
        }
    }

    @Test("touch changes the expiration and reports missing keys", arguments: protocols)
    func touch(wireProtocol: MemcachedConfiguration.WireProtocol) async throws {
        try await withMemcached { cluster in
            let memc = try connect(cluster, wireProtocol: wireProtocol)
            #expect(try memc.touch("missing", expiration: .seconds(10)) == false)
            try memc.set("short", "v", expiration: .seconds(1))
            try memc.set("kept", "v", expiration: .seconds(1))
            #expect(try memc.touch("kept", expiration: .seconds(60)))
            try await Task.sleep(for: .milliseconds(2_200))
            #expect(try memc.get("short", as: String.self) == nil, "a 1 s item is gone after 2.2 s")
            #expect(try memc.get("kept", as: String.self) == "v", "touch extended the item's life")
        }
    }

    @Test("expirations: relative, past, absolute and over 30 days")
    func expirations() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster)
            try memc.set("expired", "v", expiration: .seconds(-1))
            #expect(try memc.get("expired", as: String.self) == nil)
            try memc.set("zero", "v", expiration: .seconds(0))
            #expect(try memc.get("zero", as: String.self) == nil, "zero seconds means already expired, not never")
            try memc.set("past", "v", expiration: .at(Date(timeIntervalSinceNow: -3_600)))
            #expect(try memc.get("past", as: String.self) == nil)
            try memc.set("future", "v", expiration: .at(Date(timeIntervalSinceNow: 3_600)))
            #expect(try memc.get("future", as: String.self) == "v")
            // Sent as a relative number, 31 days would be read as a Unix time in 1970: gone at once.
            try memc.set("long", "v", expiration: .seconds(31 * 24 * 3_600))
            #expect(try memc.get("long", as: String.self) == "v")
            try memc.set("longer", "v", expiration: .after(.seconds(365 * 24 * 3_600)))
            #expect(try memc.get("longer", as: String.self) == "v")
            try memc.set("forever", "v", expiration: .never)
            #expect(try memc.get("forever", as: String.self) == "v")
        }
    }

    @Test("flush now and with a delay")
    func flush() async throws {
        try await withMemcached(servers: 2) { cluster in
            let memc = try connect(cluster)
            try memc.setMulti(Dictionary(uniqueKeysWithValues: (0..<20).map { ("k\($0)", $0) }))
            try memc.flush()
            #expect(try memc.getMulti((0..<20).map { "k\($0)" }, as: Int.self).hits.isEmpty)
            try memc.set("delayed", "v")
            try memc.flush(delay: .seconds(2))
            #expect(try memc.get("delayed", as: String.self) == "v", "a delayed flush leaves items until it runs")
            try await Task.sleep(for: .milliseconds(3_200))
            #expect(try memc.get("delayed", as: String.self) == nil)
        }
    }

    @Test("stats and versions per server")
    func statsAndVersions() throws {
        try withMemcached(servers: 2) { cluster in
            let memc = try connect(cluster)
            let versions = try memc.versions()
            #expect(versions.map(\.server) == cluster.addresses)
            for entry in versions {
                let version = try entry.result.get()
                #expect(version.split(separator: ".").count == 3)
                #expect(try cluster.servers[0].rawCommand("version\r\n", until: "\r\n") == "VERSION \(version)\r\n")
            }
            let stats = try memc.stats()
            #expect(stats.map(\.server) == cluster.addresses)
            for (entry, server) in zip(stats, cluster.servers) {
                #expect(try entry.result.get()["pid"] == String(server.pid))
            }
            let settings = try memc.stats("settings")
            #expect(try settings[0].result.get()["item_size_max"] == "1048576")
            #expect(throws: MemcachedError.self) { try memc.stats("items\r\nflush_all") }
        }
    }

    @Test("close frees the handle and later calls fail with connectionClosed")
    func close() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster)
            try memc.set("k", "v")
            memc.close()
            memc.close()
            #expect(throws: MemcachedError.self) { try memc.get("k", as: String.self) }
            do {
                try memc.set("k", "v")
                Issue.record("set after close must throw")
            } catch MemcachedError.Code.connectionClosed {
            }
            let other = try connect(cluster)
            #expect(try other.get("k", as: String.self) == "v")
        }
    }

    @Test("disconnect closes sockets and the next command reconnects")
    func disconnect() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster)
            try memc.set("k", "v")
            let before = try statistic("total_connections", of: cluster.servers[0])
            memc.disconnect()
            #expect(try memc.get("k", as: String.self) == "v")
            let after = try statistic("total_connections", of: cluster.servers[0])
            // One new connection from the client, one from the second stats reading.
            #expect(after - before == 2)
        }
    }

    @Test("noReply stores without waiting and still stores")
    func noReply() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster) { $0.noReply = true }
            #expect(try memc.set("k", "v"))
            #expect(try memc.setMulti(["a": "1", "b": "2"]).keysNotApplied.isEmpty)
            // Commands whose result is the point still wait for their reply.
            #expect(try memc.add("k", "other") == false)
            #expect(try memc.get("k", as: String.self) == "v")
            #expect(try memc.getMulti(["a", "b"], as: String.self).hits == ["a": "1", "b": "2"])
            #expect(try memc.delete("a"))
            #expect(try memc.increment("missing") == nil)
            #expect(try memc.get("a", as: String.self) == nil)
        }
    }

    @Test("noReply batches setMulti and deleteMulti into one write per server, and nothing is lost")
    func noReplyBatches() throws {
        try withMemcached(servers: 2) { cluster in
            let memc = try connect(cluster) { $0.noReply = true }
            let items = Dictionary(uniqueKeysWithValues: (0..<500).map { ("batch-\($0)", "value-\($0)") })
            let setsBefore = try cluster.servers.map { try statistic("cmd_set", of: $0) }
            #expect(try memc.setMulti(items, keyPrefix: "nr:").keysNotApplied.isEmpty)
            // The read follows the writes on the same sockets, so the servers have run them all.
            #expect(try memc.getMulti(Array(items.keys), keyPrefix: "nr:", as: String.self).hits == items)
            let setsAfter = try cluster.servers.map { try statistic("cmd_set", of: $0) }
            #expect(
                zip(setsBefore, setsAfter).map { $1 - $0 }.reduce(0, +) == items.count,
                "every set reached a server"
            )
            // A single fire-and-forget write is visible to the next command at once.
            try memc.set("single", "now")
            #expect(try memc.get("single", as: String.self) == "now")
            let outcomes = try memc.deleteMulti(Array(items.keys), keyPrefix: "nr:")
            #expect(outcomes.values.allSatisfy { $0 == .applied })
            #expect(
                try memc.getMulti(Array(items.keys), keyPrefix: "nr:", as: String.self) == MemcachedGetMultiResult()
            )
            #expect(try memc.add("single", "other") == false, "commands with results still read their reply")
        }
    }

    @Test("noReply is ignored over the binary protocol, whose quiet commands still answer errors")
    func noReplyBinary() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster, wireProtocol: .binary) { $0.noReply = true }
            try memc.set("k", "v")
            #expect(try memc.delete("k"))
            #expect(try memc.delete("k") == false, "delete reports a missing key: replies are read")
            #expect(throws: MemcachedError.self) { try memc.set("big", [UInt8](repeating: 1, count: 1_048_576)) }
            #expect(try memc.setMulti(["a": "1"]).keysNotApplied.isEmpty)
            #expect(try memc.get("a", as: String.self) == "1")
        }
    }

    @Test("a fire-and-forget write to a server that is down still fails with a typed error")
    func noReplyDeadServer() throws {
        let refusing = try RefusingLoopbackPort()
        defer { refusing.release() }
        var configuration = try MemcachedConfiguration(servers: [refusing.address])
        configuration.noReply = true
        configuration.connectTimeout = .milliseconds(300)
        let memc = try MemcachedConnection(configuration: configuration)
        #expect(throws: MemcachedError.self) { try memc.set("k", "v") }
        #expect(try memc.setMulti(["a": "1", "b": "2"]).keysNotApplied.sorted() == ["a", "b"])
    }
}

/// A value whose decoder runs a command on the connection that is reading it.
struct ReentrantValue: MemcachedValue {
    nonisolated(unsafe) static var connection: MemcachedConnection?
    nonisolated(unsafe) static var nestedError: MemcachedError.Code?

    func memcachedPayload(context: MemcachedCodingContext) throws -> MemcachedPayload {
        MemcachedPayload(bytes: [], flags: .bytes)
    }

    init(memcachedBytes bytes: UnsafeRawBufferPointer, flags: MemcachedFlags, context: MemcachedCodingContext) throws {
        do {
            _ = try Self.connection?.get("other", as: String.self)
        } catch let error as MemcachedError {
            Self.nestedError = error.code
            throw error
        }
    }
}
