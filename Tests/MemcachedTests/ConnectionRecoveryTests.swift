import Foundation
import MemcachedTestSupport
import Testing

@testable import Memcached

/// Connections a server closed while they sat idle (memcached's `-o idle_timeout`, a restart on
/// the same port) are noticed before the next command is written, so no command fails for it and
/// none is applied twice; bytes a server sends outside a reply are never read as one.
@Suite("Connection recovery", .offCooperativePool)
struct ConnectionRecoveryTests {
    /// Waits until memcached has closed `count` idle connections (its `idle_kicks` statistic).
    static func waitForIdleKicks(_ count: Int, on server: MemcachedServerProcess) throws {
        let clock = ContinuousClock()
        let start = clock.now
        // memcached's idle check runs about once a second; 30 s is far beyond it.
        while try statistic("idle_kicks", of: server) < count {
            guard clock.now - start < .seconds(30) else {
                Issue.record(
                    "memcached closed only \(try statistic("idle_kicks", of: server)) of \(count) idle connections"
                )
                return
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }

    @Test(
        "8 connections memcached closed as idle: each one's next get, set and increment succeed, the increment once",
        arguments: [MemcachedConfiguration.WireProtocol.ascii, .binary]
    )
    func idleClosedConnections(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        let server = try MemcachedServerProcess.start(arguments: ["-o", "idle_timeout=1"])
        defer { server.stop() }
        let cluster = MemcachedCluster(servers: [server])
        let connections = try (0..<8).map { _ in try connect(cluster, wireProtocol: wireProtocol) }
        for (index, memc) in connections.enumerated() {
            #expect(try memc.set("idle-\(index)", "value-\(index)"))
            #expect(try memc.set("count-\(index)", "10"))
        }
        try Self.waitForIdleKicks(connections.count, on: server)

        var failures: [String] = []
        for (index, memc) in connections.enumerated() {
            do {
                // The increment first: a command that must not be sent twice.
                let count = try memc.increment("count-\(index)")
                #expect(count == 11)
                #expect(try memc.get("idle-\(index)", as: String.self) == "value-\(index)")
                #expect(try memc.set("idle-\(index)", "again-\(index)"))
            } catch {
                failures.append("connection \(index): \(error)")
            }
        }
        #expect(failures.isEmpty, "\(failures)")
        for index in connections.indices {
            #expect(try server.rawCommand("get count-\(index)\r\n").contains("\r\n11\r\n"), "incremented once")
        }
    }

    @Test(
        "a server restarted on the same port: the first command on every connection succeeds",
        arguments: [MemcachedConfiguration.WireProtocol.ascii, .binary]
    )
    func restartedServer(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        let first = try MemcachedServerProcess.start()
        let port = first.port
        let connections = try (0..<8).map { _ in
            try connect(MemcachedCluster(servers: [first]), wireProtocol: wireProtocol)
        }
        for (index, memc) in connections.enumerated() {
            #expect(try memc.set("before-\(index)", "x"))
        }
        first.stop()
        // memcached reads options in order, so this -p overrides the fixture's -p -1.
        let second = try MemcachedServerProcess.start(arguments: ["-p", String(port)])
        defer { second.stop() }

        var failures: [String] = []
        for (index, memc) in connections.enumerated() {
            do {
                #expect(try memc.get("before-\(index)", as: String.self) == nil, "a new server starts empty")
                #expect(try memc.set("after-\(index)", "value-\(index)"))
            } catch {
                failures.append("connection \(index): \(error)")
            }
        }
        #expect(failures.isEmpty, "\(failures)")
    }

    @Test(
        "a pool of 8 connections memcached closed as idle: 64 concurrent gets all succeed",
        arguments: [MemcachedConfiguration.WireProtocol.ascii, .binary]
    )
    func idleClosedPool(wireProtocol: MemcachedConfiguration.WireProtocol) async throws {
        let server = try MemcachedServerProcess.start(arguments: ["-o", "idle_timeout=1"])
        defer { server.stop() }
        let client = try makeClient(servers: [server.address], maximumConnections: 8) {
            $0.wireProtocol = wireProtocol
        }
        let keys = (0..<64).map { "pooled-\($0)" }
        for key in keys {
            #expect(try await client.set(key, "value-\(key)"))
        }
        // Open all 8: concurrent reads until the pool holds as many connections as it may.
        while client.pool.openConnectionCount < 8 {
            try await readAll(keys, through: client)
        }
        try Self.waitForIdleKicks(8, on: server)

        let failures = try await readAll(keys, through: client)
        #expect(failures.isEmpty, "\(failures.count) of \(keys.count) gets failed: \(failures.prefix(3))")
        await client.close()
    }

    /// Reads every key in a task of its own; returns the failures.
    @discardableResult
    func readAll(_ keys: [String], through client: MemcachedClient) async throws -> [String] {
        try await withThrowingTaskGroup(of: String?.self) { group in
            for key in keys {
                group.addTask {
                    do {
                        let value = try await client.get(key, as: String.self)
                        return value == "value-\(key)" ? nil : "\(key): \(String(describing: value))"
                    } catch {
                        return "\(key): \(error)"
                    }
                }
            }
            return try await group.reduce(into: []) { failures, failure in
                if let failure { failures.append(failure) }
            }
        }
    }

    @Test("a server on a Unix-domain socket that is killed: a typed connection error, quickly, not 'failure'")
    func killedUnixSocketServer() throws {
        let server = try MemcachedServerProcess.startOnUnixSocket()
        let path = try #require(server.unixSocketPath)
        var configuration = MemcachedConfiguration(servers: [MemcachedServer(unixSocketPath: path)])
        configuration.timeout = .seconds(2)
        let memc = try MemcachedConnection(configuration: configuration)
        #expect(try memc.set("unix", "value"))
        #expect(try memc.get("unix", as: String.self) == "value")
        server.kill()
        var codes: [MemcachedError.Code] = []
        for _ in 0..<3 {
            let (elapsed, error) = timed { _ = try memc.get("unix", as: String.self) }
            let code = try #require((error as? MemcachedError)?.code, "\(String(describing: error))")
            codes.append(code)
            #expect(elapsed < Duration.seconds(1).scaledForTests, "\(code) after \(elapsed)")
        }
        let expected: Set<MemcachedError.Code> = [.connectionFailure, .serverTemporarilyDisabled, .serverMarkedDead]
        #expect(codes.allSatisfy(expected.contains), "\(codes)")
        print("fault report: killed unix-socket server: \(codes)")
    }

    @Test("bytes sent after a complete reply, in the same segment, are not read as the next command's reply")
    func plantedInTheSameSegment() throws {
        let server = try HostileServerTests.server(
            answering: Array("VALUE bad 0 5\r\nright\r\nEND\r\n".utf8) + Self.planted
        )
        defer { server.stop() }
        let memc = try HostileServerTests.connect(to: server)
        // libmemcached reads on past `END` into the plant when it is in the same segment: a typed
        // error for a reply with two values (the check after the call covers the binary protocol).
        do {
            #expect(try memc.get("bad", as: String.self) == "right")
        } catch {
            #expect(error is MemcachedError)
        }
        #expect(try memc.get("other", as: String.self) == nil, "the planted value is not the reply")
    }

    static let planted = Array("VALUE other 0 6\r\nplant!\r\nEND\r\n".utf8)

    @Test("bytes sent after a complete reply, later, while the connection is idle, are not read as a reply")
    func plantedWhileIdle() throws {
        let (listener, port) = try bindLoopbackSocket(listening: true)
        let served = Thread {
            // One connection: the reply to `get first`, then the plant 100 ms later, then `END`
            // for whatever else is asked on it.
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { return }
            defer { close(connection) }
            var buffer = [UInt8](repeating: 0, count: 4096)
            var reads = 0
            while recv(connection, &buffer, buffer.count, 0) > 0 {
                reads += 1
                let reply = reads == 1 ? Array("VALUE first 0 5\r\nright\r\nEND\r\n".utf8) : Array("END\r\n".utf8)
                _ = reply.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if reads == 1 {
                    Thread.sleep(forTimeInterval: 0.1)
                    _ = Self.planted.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                }
            }
        }
        served.start()
        defer { close(listener) }
        var configuration = try MemcachedConfiguration(servers: ["127.0.0.1:\(port)"])
        configuration.timeout = .seconds(2)
        let memc = try MemcachedConnection(configuration: configuration)
        #expect(try memc.get("first", as: String.self) == "right")
        Thread.sleep(forTimeInterval: 0.3)
        // The planted bytes arrived after the reply: the connection is dropped before this get,
        // which goes to a new connection the server does not accept (it served one).
        #expect(throws: MemcachedError.self) { _ = try memc.get("other", as: String.self) }
    }
}
