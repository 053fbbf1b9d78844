import Foundation
import Memcached
import MemcachedTestSupport
import Testing

/// twemproxy (`nutcracker` 0.5.0) on loopback in front of three memcached servers in a ketama pool:
/// what it forwards works through both APIs, what it does not forward fails with a typed error at
/// once and leaves the connection usable, and a client going straight to the servers places every
/// key where the proxy does.
@Suite("Behind twemproxy", .offCooperativePool)
struct TwemproxyTests {
    // MARK: - What twemproxy forwards

    @Test("MemcachedConnection: every command twemproxy forwards works through it")
    func connectionForwardsEveryCommand() throws {
        try withTwemproxy { cluster, proxy in
            let memc = try proxyConnection(proxy)
            let direct = try directConnection(cluster)

            #expect(try memc.get("missing", as: String.self) == nil)
            #expect(try memc.set("k", "v1"))
            #expect(try memc.get("k", as: String.self) == "v1")
            #expect(try memc.add("k", "other") == false)
            #expect(try memc.add("added", "a"))
            #expect(try memc.replace("k", "v2"))
            #expect(try memc.replace("never-set", "x") == false)
            #expect(try memc.append("k", "-end"))
            #expect(try memc.prepend("k", "start-"))
            #expect(try memc.get("k", as: String.self) == "start-v2-end")

            let (value, token) = try #require(try memc.gets("k", as: String.self))
            #expect(value == "start-v2-end")
            #expect(try memc.cas("k", "v3", token: token))
            #expect(try memc.cas("k", "v4", token: token) == false, "a used token is refused (EXISTS)")
            #expect(try memc.get("k", as: String.self) == "v3")

            #expect(try memc.touch("k", expiration: .seconds(600)))
            #expect(try memc.touch("never-set", expiration: .seconds(600)) == false)

            #expect(try memc.set("counter", 10))
            #expect(try memc.increment("counter", by: 5) == 15)
            #expect(try memc.decrement("counter", by: 20) == 0, "memcached's decrement stops at 0")
            #expect(try memc.increment("no-counter") == nil)

            #expect(try memc.delete("k"))
            #expect(try memc.delete("k") == false)
            #expect(try memc.get("k", as: String.self) == nil)

            // The noReply variants: the proxy passes `noreply` on, so nothing answers.
            #expect(try memc.set("quiet", "q", noReply: true))
            #expect(eventually(memc, "quiet", holds: "q"))
            _ = try memc.delete("quiet", noReply: true)
            #expect(eventually(memc, "quiet", holds: nil))
            _ = try memc.setMulti(["quiet-1": "1", "quiet-2": "2"], noReply: true)
            #expect(eventually(memc, "quiet-2", holds: "2"))
            _ = try memc.deleteMulti(["quiet-1", "quiet-2"], noReply: true)
            #expect(eventually(memc, "quiet-2", holds: nil))

            // Multi-key calls over keys of all three servers, with and without a key prefix.
            let keys = try keysCoveringEveryServer(direct, cluster: cluster, perServer: 4)
            let items = Dictionary(uniqueKeysWithValues: keys.map { ($0, "value of \($0)") })
            #expect(try memc.setMulti(items).keysNotApplied.isEmpty)
            #expect(try memc.getMulti(keys + ["missing"], as: String.self).hits == items)
            try expectEveryServerHolds(cluster, keys: keys)
            #expect(try memc.setMulti(items, keyPrefix: "app:").keysNotApplied.isEmpty)
            #expect(try memc.getMulti(keys, keyPrefix: "app:", as: String.self).hits == items)
            #expect(try memc.get("app:" + keys[0], as: String.self) == items[keys[0]])
            #expect(try memc.deleteMulti(keys, keyPrefix: "app:").values.allSatisfy { $0 == .applied })
            #expect(try memc.getMulti(keys, keyPrefix: "app:", as: String.self).hits.isEmpty)
            let deleted = try memc.deleteMulti(keys + ["missing"])
            #expect(deleted["missing"] == .declined)
            #expect(deleted.filter { $0.value == .applied }.count == keys.count)

            // A value larger than the proxy's 16 KiB buffers and libmemcached's read buffer.
            let large = Data((0..<(700 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
            #expect(try memc.set("large", large))
            #expect(try memc.get("large", as: Data.self) == large)
            #expect(try memc.getMulti(["large", keys[0]], as: Data.self)["large"] == large)

            // `version` is forwarded too (to one server), and answered for the proxy's address.
            let versions = try memc.versions()
            #expect(versions.count == 1)
            #expect(versions.first?.server == proxy.address)
            #expect(try versions.first?.result.get().isEmpty == false)
        }
    }

    @Test("MemcachedClient: every command twemproxy forwards works through it")
    func clientForwardsEveryCommand() async throws {
        try await withTwemproxy { cluster, proxy in
            let client = try MemcachedClient(configuration: proxyConfiguration(proxy))
            let direct = try directConnection(cluster)

            #expect(try await client.get("missing", as: String.self) == nil)
            #expect(try await client.set("k", "v1"))
            #expect(try await client.get("k", as: String.self) == "v1")
            #expect(try await client.add("k", "other") == false)
            #expect(try await client.add("added", "a"))
            #expect(try await client.replace("k", "v2"))
            #expect(try await client.replace("never-set", "x") == false)
            #expect(try await client.append("k", "-end"))
            #expect(try await client.prepend("k", "start-"))
            #expect(try await client.get("k", as: String.self) == "start-v2-end")

            let (value, token) = try #require(try await client.gets("k", as: String.self))
            #expect(value == "start-v2-end")
            #expect(try await client.cas("k", "v3", token: token))
            #expect(try await client.cas("k", "v4", token: token) == false)
            #expect(try await client.get("k", as: String.self) == "v3")

            #expect(try await client.touch("k", expiration: .seconds(600)))
            #expect(try await client.touch("never-set", expiration: .seconds(600)) == false)

            #expect(try await client.set("counter", 10))
            #expect(try await client.increment("counter", by: 5) == 15)
            #expect(try await client.decrement("counter", by: 20) == 0)
            #expect(try await client.increment("no-counter") == nil)

            #expect(try await client.delete("k"))
            #expect(try await client.delete("k") == false)

            #expect(try await client.set("quiet", "q", noReply: true))
            #expect(eventually(direct, "quiet", holds: "q"))
            _ = try await client.delete("quiet", noReply: true)
            #expect(eventually(direct, "quiet", holds: nil))
            _ = try await client.setMulti(["quiet-1": "1", "quiet-2": "2"], noReply: true)
            #expect(eventually(direct, "quiet-2", holds: "2"))
            _ = try await client.deleteMulti(["quiet-1", "quiet-2"], noReply: true)
            #expect(eventually(direct, "quiet-2", holds: nil))

            let keys = try keysCoveringEveryServer(direct, cluster: cluster, perServer: 4)
            let items = Dictionary(uniqueKeysWithValues: keys.map { ($0, "value of \($0)") })
            #expect(try await client.setMulti(items).keysNotApplied.isEmpty)
            #expect(try await client.getMulti(keys + ["missing"], as: String.self).hits == items)
            try expectEveryServerHolds(cluster, keys: keys)
            #expect(try await client.setMulti(items, keyPrefix: "app:").keysNotApplied.isEmpty)
            #expect(try await client.getMulti(keys, keyPrefix: "app:", as: String.self).hits == items)
            #expect(try await client.deleteMulti(keys, keyPrefix: "app:").values.allSatisfy { $0 == .applied })
            #expect(try await client.getMulti(keys, keyPrefix: "app:", as: String.self).hits.isEmpty)

            let large = Data((0..<(700 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
            #expect(try await client.set("large", large))
            #expect(try await client.get("large", as: Data.self) == large)

            let versions = try await client.versions()
            #expect(versions.map(\.server) == [proxy.address])
            await client.close()
        }
    }

    // MARK: - What twemproxy does not forward

    // twemproxy 0.5.0 parses only the ASCII commands get, gets, set, add, replace, append, prepend,
    // cas, delete, incr, decr, touch, version and quit (src/proto/nc_memcache.c, memcache_parse_req);
    // any other request is a parse error, on which it closes the client's connection without a
    // reply. Each test below checks what our API reports then, that it reports it at once (no
    // timeout is involved: the proxy closes the socket), and that the next command works.

    @Test(
        "twemproxy closes the connection without a reply on every request it does not parse",
        arguments: [
            "flush_all\r\n", "flush_all 0\r\n", "stats\r\n", "stats items\r\n", "verbosity 1\r\n",
            "gat 0 k\r\n", "gats 0 k\r\n", "mg k v\r\n", "ms k 1\r\nv\r\n", "md k\r\n", "mn\r\n",
            // A binary GET of key "k" (magic 0x80), the first request of any binary-protocol client.
            "\u{80}\u{00}\u{00}\u{01}\u{00}\u{00}\u{00}\u{00}\u{00}\u{00}\u{00}\u{01}"
                + "\u{00}\u{00}\u{00}\u{00}\u{00}\u{00}\u{00}\u{00}\u{00}\u{00}\u{00}\u{00}k",
        ]
    )
    func unparsedRequestsCloseTheConnection(request: String) throws {
        try withTwemproxy { _, proxy in
            #expect {
                try rawLoopbackCommand(request, port: proxy.port, until: "\r\n", timeout: .seconds(10))
            } throws: { error in
                guard case MemcachedFixtureError.connectionClosed(_, let received) = error else { return false }
                return received.isEmpty
            }
            let version = try rawLoopbackCommand("version\r\n", port: proxy.port, until: "\r\n")
            #expect(version.hasPrefix("VERSION "), "version is forwarded")
        }
    }

    @Test("flush_all is not forwarded: flush fails with a typed error at once, the next command works")
    func flushIsNotForwarded() async throws {
        try await withTwemproxy { _, proxy in
            let memc = try proxyConnection(proxy)
            #expect(try memc.set("k", "v"))
            // libmemcached's memcached_flush reports a failure of any server as MEMCACHED_SOME_ERRORS.
            try expectRefused(expected: .someErrors, memc) { try memc.flush() }
            #expect(try memc.get("k", as: String.self) == "v", "flush_all reached no server")

            let client = try MemcachedClient(configuration: proxyConfiguration(proxy))
            let (elapsed, failure) = await timedAsync { try await client.flush() }
            #expect((failure as? MemcachedError)?.code == .someErrors, "\(String(describing: failure))")
            #expect(elapsed < refusalLimit, "took \(elapsed)")
            #expect(try await client.get("k", as: String.self) == "v")
            await client.close()
        }
    }

    @Test("stats is not forwarded: its one result is a typed error, the next command works")
    func statsIsNotForwarded() async throws {
        try await withTwemproxy { _, proxy in
            let memc = try proxyConnection(proxy)
            #expect(try memc.set("k", "v"))
            for group in [nil, "items", "slabs"] as [String?] {
                let clock = ContinuousClock()
                var results: [MemcachedServerResult<[String: String]>] = []
                let elapsed = try clock.measure { results = try memc.stats(group) }
                #expect(elapsed < refusalLimit, "stats \(group ?? "") took \(elapsed)")
                #expect(results.map(\.server) == [proxy.address])
                #expect(results.first.map(resultCode) == notForwardedCode, "stats \(group ?? ""): \(results)")
                #expect(try memc.get("k", as: String.self) == "v")
            }

            let client = try MemcachedClient(configuration: proxyConfiguration(proxy))
            let results = try await client.stats()
            #expect(results.first.map(resultCode) == notForwardedCode, "\(results)")
            #expect(try await client.get("k", as: String.self) == "v")
            await client.close()
        }
    }

    @Test("the binary protocol is not forwarded: every command fails with a typed error at once")
    func binaryProtocolIsNotForwarded() throws {
        try withTwemproxy { _, proxy in
            let binary = try proxyConnection(proxy) { $0.wireProtocol = .binary }
            // Each command reconnects, and the proxy closes the connection again: every binary
            // command fails, until the server failure limit (5 in a row) marks the proxy dead.
            try expectRefused(expected: notForwardedCode, binary) { _ = try binary.get("k", as: String.self) }
            try expectRefused(expected: notForwardedCode, binary) { _ = try binary.set("k", "v") }
            // An ASCII connection to the same proxy is unaffected.
            let ascii = try proxyConnection(proxy)
            #expect(try ascii.set("k", "v"))
            #expect(try ascii.get("k", as: String.self) == "v")
        }
    }

    @Test("SASL (binary only) is not forwarded: authentication fails with a typed error at once")
    func saslIsNotForwarded() throws {
        try withTwemproxy { _, proxy in
            let authenticated = try proxyConnection(proxy) {
                $0.wireProtocol = .binary
                $0.credentials = MemcachedCredentials(username: "user", password: "secret")
            }
            try expectRefused(expected: saslCode, authenticated) { _ = try authenticated.get("k", as: String.self) }
            try expectRefused(expected: saslCode, authenticated) { _ = try authenticated.set("k", "v") }
            let plain = try proxyConnection(proxy)
            #expect(try plain.set("k", "v"))
            #expect(try plain.get("k", as: String.self) == "v")
        }
    }

    // MARK: - Agreement with a client that goes straight to the servers

    // twemproxy 0.5.0 hashes "<name>-<i>" for i in 0..<40, 4 points per MD5 digest, 160 points per
    // server of weight 1 (src/hashkit/nc_ketama.c, ketama_update), where <name> is the server's
    // optional name, else "host:port" without the weight, else just "host" for port 11211
    // (src/nc_conf.c, conf_add_server); it looks a key up with the pool's `hash` and takes the
    // first point at or after it (ketama_dispatch). That is libmemcached's weighted ketama, which
    // `.consistent` selects: listing the servers by the same `host:port`, unnamed, with
    // `hash: md5` on both sides makes them agree.
    @Test("10,000 keys written through the proxy are where the direct client looks, and the reverse")
    func directClientAgreesWithTheProxy() throws {
        try withTwemproxy { cluster, proxy in
            // 10,000 keys in one call share one deadline (`timeout` is per command, in total):
            // generous, for a loaded machine.
            let memc = try proxyConnection(proxy) { $0.timeout = bulkTimeout }
            let direct = try directConnection(cluster) { $0.timeout = bulkTimeout }
            let keys = (0..<10_000).map { "agreement:\($0):\(($0 &* 2_654_435_761) % 1_000_003)" }

            // Through the proxy: where did each key land?
            let items = Dictionary(uniqueKeysWithValues: keys.map { ($0, "p") })
            #expect(try memc.setMulti(items).keysNotApplied.isEmpty)
            let holders = try holdersOf(keys, in: cluster)
            #expect(holders.count == keys.count, "every key is on exactly one server")
            var agreeing = 0
            var placed = [String: Int]()
            for key in keys {
                let predicted = try direct.server(forKey: key)
                placed[predicted, default: 0] += 1
                if holders[key] == predicted { agreeing += 1 }
            }
            #expect(agreeing == keys.count, "\(agreeing) / \(keys.count) keys where the direct client looks")
            #expect(placed.count == 3 && placed.values.allSatisfy { $0 > 2_000 }, "\(placed)")
            #expect(try direct.getMulti(keys, as: String.self).hits.count == keys.count)

            // Through the direct client (overwriting every key): every key reads through the proxy.
            let directItems = Dictionary(uniqueKeysWithValues: keys.map { ($0, "d") })
            #expect(try direct.setMulti(directItems).keysNotApplied.isEmpty)
            let throughProxy = try memc.getMulti(keys, as: String.self)
            #expect(throughProxy.failures.isEmpty)
            #expect(throughProxy.hits == directItems, "\(throughProxy.hits.count) / \(keys.count) readable")
        }
    }
}

// MARK: - Helpers

/// The code our API reports for a command twemproxy does not forward: it closes the connection
/// without a reply.
private let notForwardedCode = MemcachedError.Code.connectionFailure

/// The code our API reports when SASL authentication meets twemproxy.
private let saslCode = MemcachedError.Code.connectionFailure

/// How long a refused command may take: the proxy closes the socket at once, far below the
/// 2-second timeout; generous for a loaded machine.
private let refusalLimit = Duration.seconds(1).scaledForTests

/// Starts three memcached servers and twemproxy (md5, ketama) in front of them for `body`.
private func withTwemproxy<R>(_ body: (MemcachedCluster, NutcrackerProcess) throws -> R) throws -> R {
    try withMemcached(servers: 3) { cluster in
        let proxy = try NutcrackerProcess.start(backends: cluster.addresses)
        defer { proxy.stop() }
        return try body(cluster, proxy)
    }
}

/// The async form of `withTwemproxy(_:)`.
private func withTwemproxy<R>(
    isolation: isolated (any Actor)? = #isolation,
    _ body: (MemcachedCluster, NutcrackerProcess) async throws -> R
) async throws -> R {
    try await withMemcached(servers: 3) { cluster in
        let proxy = try NutcrackerProcess.start(backends: cluster.addresses)
        defer { proxy.stop() }
        return try await body(cluster, proxy)
    }
}

/// A configuration with the proxy as the only server and 2-second timeouts.
private func proxyConfiguration(
    _ proxy: NutcrackerProcess,
    _ adjust: (inout MemcachedConfiguration) -> Void = { _ in }
) throws -> MemcachedConfiguration {
    var configuration = try MemcachedConfiguration(servers: [proxy.address])
    configuration.timeout = .seconds(2)
    configuration.connectTimeout = .seconds(2)
    adjust(&configuration)
    return configuration
}

private func proxyConnection(
    _ proxy: NutcrackerProcess,
    _ adjust: (inout MemcachedConfiguration) -> Void = { _ in }
) throws -> MemcachedConnection {
    try MemcachedConnection(configuration: proxyConfiguration(proxy, adjust))
}

/// A connection straight to the three servers, configured to place keys as twemproxy's ketama
/// pool with `hash: md5` does.
private func directConnection(
    _ cluster: MemcachedCluster,
    _ adjust: (inout MemcachedConfiguration) -> Void = { _ in }
) throws -> MemcachedConnection {
    try connect(cluster) { configuration in
        configuration.distribution = .consistent
        configuration.hash = .md5
        adjust(&configuration)
    }
}

/// The timeout of the calls on 10,000 keys.
private let bulkTimeout = Duration.seconds(30)

/// `perServer` keys for each of the cluster's servers, by the direct client's placement.
private func keysCoveringEveryServer(
    _ direct: MemcachedConnection,
    cluster: MemcachedCluster,
    perServer: Int
) throws -> [String] {
    var chosen = [String: [String]]()
    var index = 0
    while chosen.count < cluster.servers.count || chosen.values.contains(where: { $0.count < perServer }) {
        let key = "multi-\(index)"
        index += 1
        let server = try direct.server(forKey: key)
        if chosen[server, default: []].count < perServer {
            chosen[server, default: []].append(key)
        }
        guard index < 10_000 else { throw MemcachedFixtureError.invalidArgument("no keys for every server") }
    }
    return chosen.values.flatMap { $0 }.sorted()
}

/// Checks that the keys are spread over every one of the cluster's servers.
private func expectEveryServerHolds(
    _ cluster: MemcachedCluster,
    keys: [String],
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let holders = try holdersOf(keys, in: cluster)
    #expect(holders.count == keys.count, sourceLocation: sourceLocation)
    #expect(Set(holders.values).count == cluster.servers.count, "\(holders)", sourceLocation: sourceLocation)
}

/// Which server holds each key, asked of each server alone; a key held by no server or by more
/// than one is left out.
private func holdersOf(_ keys: [String], in cluster: MemcachedCluster) throws -> [String: String] {
    var holders = [String: String]()
    var duplicates = Set<String>()
    for server in cluster.servers {
        var configuration = try MemcachedConfiguration(servers: [server.address])
        configuration.timeout = bulkTimeout
        let alone = try MemcachedConnection(configuration: configuration)
        defer { alone.close() }
        let result = try alone.getMulti(keys, as: String.self)
        #expect(result.failures.isEmpty, "\(server.address): \(result.failures.prefix(3))")
        for key in result.hits.keys {
            if holders.updateValue(server.address, forKey: key) != nil {
                duplicates.insert(key)
            }
        }
    }
    for key in duplicates {
        holders[key] = nil
    }
    return holders
}

/// Checks that `body` fails with a ``MemcachedError`` of code `expected` within `refusalLimit`.
private func expectRefused(
    expected: MemcachedError.Code,
    _ memc: MemcachedConnection,
    _ comment: Comment? = nil,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) throws {
    let (elapsed, failure) = timed(body)
    let error = try #require(
        failure as? MemcachedError,
        "\(comment?.rawValue ?? ""): \(String(describing: failure))",
        sourceLocation: sourceLocation
    )
    #expect(error.code == expected, "\(comment?.rawValue ?? ""): \(error)", sourceLocation: sourceLocation)
    #expect(elapsed < refusalLimit, "\(comment?.rawValue ?? ""): took \(elapsed)", sourceLocation: sourceLocation)
}

/// The error code of a per-server result, `.success` for a value.
private func resultCode<Value>(_ result: MemcachedServerResult<Value>) -> MemcachedError.Code {
    switch result.result {
    case .success: .success
    case .failure(let error): error.code
    }
}

/// Measures how long an async throwing call takes, returning the error it threw, if any.
private func timedAsync(_ body: () async throws -> Void) async -> (Duration, (any Error)?) {
    let clock = ContinuousClock()
    let start = clock.now
    var thrown: (any Error)?
    do { try await body() } catch { thrown = error }
    return (clock.now - start, thrown)
}
