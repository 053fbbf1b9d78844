import Foundation
import Memcached
import MemcachedTestSupport
import Synchronization
import Testing

/// python-memcached's per-call `noreply` and `min_compress_len`, and `touch`'s default, against a
/// server that records what it is sent, real memcached servers and python-memcached itself.
@Suite("Per-call options", .offCooperativePool)
struct PerCallOptionsTests {
    @Test("noReply per call sends noreply and waits for nothing; without it, the call reads its reply")
    func noReplyPerCall() throws {
        // A server that answers only commands without `noreply`: a call that waited for a reply to
        // a noreply command would run into the timeout.
        let lines = Mutex<[String]>([])
        let server = try ScriptedServer { line in
            lines.withLock { $0.append(line) }
            if line.hasSuffix(" noreply") { return [] }
            if line.hasPrefix("set ") { return Array("STORED\r\n".utf8) }
            if line.hasPrefix("delete ") { return Array("DELETED\r\n".utf8) }
            return []  // a data block, sent after its `set` line
        }
        defer { server.stop() }
        var configuration = try MemcachedConfiguration(servers: [server.address])
        configuration.timeout = .seconds(2)
        let memc = try MemcachedConnection(configuration: configuration)

        var results: [Bool] = []
        let (elapsed, error) = timed {
            results.append(try memc.set("quiet", "v", noReply: true))
            results.append(try memc.delete("quiet", noReply: true))
            results.append(try memc.setMulti(["m1": "1", "m2": "2"], noReply: true).keysNotApplied.isEmpty)
            results.append(try memc.deleteMulti(["m1", "m2"], noReply: true).keysNotApplied.isEmpty)
        }
        #expect(error == nil, "\(String(describing: error))")
        #expect(results == [true, true, true, true])
        #expect(elapsed < configuration.timeout, "no call waited for a reply: \(elapsed)")
        #expect(try memc.set("loud", "v"), "the configuration's default still reads the reply")
        #expect(try memc.delete("loud"))

        let sent = lines.withLock { $0 }.filter { $0.hasPrefix("set ") || $0.hasPrefix("delete ") }
        #expect(
            sent.sorted() == [
                "delete loud", "delete m1 noreply", "delete m2 noreply", "delete quiet noreply",
                "set loud 16 0 1", "set m1 16 0 1 noreply", "set m2 16 0 1 noreply", "set quiet 16 0 1 noreply",
            ]
        )
    }

    @Test(
        "noReply per call against memcached: nothing lost, and the next command reads its own reply",
        arguments: CommandTests.protocols
    )
    func noReplyAgainstMemcached(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        try withMemcached { cluster in
            let memc = try connect(cluster, wireProtocol: wireProtocol)
            #expect(try memc.set("k", "v", noReply: true))
            #expect(try memc.get("k", as: String.self) == "v")
            #expect(try memc.add("k", "other") == false, "add reads its own reply, not a stale one")
            let items = Dictionary(uniqueKeysWithValues: (0..<50).map { ("n\($0)", "\($0)") })
            #expect(try memc.setMulti(items, noReply: true).keysNotApplied.isEmpty)
            #expect(try memc.getMulti(Array(items.keys), as: String.self).hits == items)
            #expect(try memc.deleteMulti(Array(items.keys), noReply: true).keysNotApplied.isEmpty)
            #expect(try memc.delete("k", noReply: true))
            #expect(try memc.getMulti(Array(items.keys) + ["k"], as: String.self) == MemcachedGetMultiResult())
            // With the configuration on, every call skips its reply, and nothing is left unread.
            let quiet = try connect(cluster, wireProtocol: wireProtocol) { $0.noReply = true }
            #expect(try quiet.set("r", "v", noReply: false))
            #expect(try quiet.get("r", as: String.self) == "v")
            #expect(try quiet.delete("r", noReply: false))
            #expect(try quiet.add("r", "again"), "add reads its own reply: the key was gone")
        }
    }

    @Test("compression per call: compressed on the wire past its threshold, never when told, and python reads it")
    func compressionPerCall() throws {
        try withMemcached { cluster in
            let server = cluster.servers[0]
            let memc = try connect(cluster)  // no compressionThreshold
            let long = String(repeating: "compressible text ", count: 40)
            #expect(try memc.set("plain", long))
            #expect(try storedFlags("plain", on: server) == 16)
            #expect(try memc.set("squeezed", long, compression: .above(100)))
            #expect(try storedFlags("squeezed", on: server) == 24)
            #expect(try memc.add("added", long, compression: .above(0)))
            #expect(try storedFlags("added", on: server) == 24)
            #expect(try memc.replace("plain", long, compression: .above(100)))
            #expect(try storedFlags("plain", on: server) == 24)
            let token = try #require(try memc.gets("plain", as: String.self)).token
            #expect(try memc.cas("plain", long, token: token, compression: .never))
            #expect(try storedFlags("plain", on: server) == 16)
            #expect(try memc.setMulti(["m1": long, "m2": "short"], compression: .above(100)).keysNotApplied.isEmpty)
            #expect(try storedFlags("m1", on: server) == 24)
            #expect(try storedFlags("m2", on: server) == 16, "shorter than the threshold")
            #expect(try memc.set("count", 12_345, compression: .above(0)))
            #expect(try storedFlags("count", on: server) == 2, "integers are never compressed")
            #expect(try memc.get("squeezed", as: String.self) == long)
            #expect(try memc.getMulti(["m1", "added"], as: String.self).hits == ["m1": long, "added": long])

            let refused = try #require(throws: MemcachedError.self) {
                try memc.set("bad", long, compression: .above(-1))
            }
            #expect(refused.code == .invalidArguments)

            // The configuration's threshold, overridden per call.
            let compressing = try connect(cluster) { $0.compressionThreshold = 10 }
            #expect(try compressing.set("uncompressed", long, compression: .never))
            #expect(try storedFlags("uncompressed", on: server) == 16)

            let read = try PythonMemcached.run(
                ["read", "--servers", PythonMemcached.serverList(cluster.addresses), "--hash", "default"],
                keys: ["squeezed", "m1", "added"],
                as: [String: InteropValue].self
            )
            #expect(read == ["squeezed": .text(long), "m1": .text(long), "added": .text(long)])
        }
    }

    @Test("touch without an expiration makes an item never expire, as python-memcached's time=0")
    func touchDefault() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster)
            #expect(try memc.set("t", "v", expiration: .seconds(1)))
            #expect(try memc.touch("t"))
            #expect(try memc.touch("absent") == false)
            // memcached reports the item's expiry time; 0 means it never expires (also -1 in the
            // meta protocol's view, but `mg` is not what libmemcached speaks).
            let reply = try cluster.servers[0].rawCommand("mg t t\r\n", until: "\r\n")
            #expect(reply.hasPrefix("HD t-1"), "\(reply)")
        }
    }
}
