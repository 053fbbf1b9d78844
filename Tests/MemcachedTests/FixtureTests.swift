import MemcachedTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Tests of the test fixtures themselves: real `memcached` processes and the
/// loopback fault servers. Every test starts its own servers, so they may run
/// in parallel.
@Suite("Test fixtures", .offCooperativePool)
struct FixtureTests {
    @Test("Two servers get different ports, answer, and report their own pid")
    func twoServersAnswerOnDistinctPorts() throws {
        try withMemcached(servers: 2) { cluster in
            #expect(cluster.servers.count == 2)
            #expect(cluster.addresses.count == 2)
            let ports = cluster.servers.map(\.port)
            #expect(ports[0] != ports[1])
            for server in cluster.servers {
                #expect(server.address == "127.0.0.1:\(server.port)")
                let version = try server.rawCommand("version\r\n", until: "\r\n")
                #expect(version.hasPrefix("VERSION "))
                #expect(version.hasSuffix("\r\n"))

                let stats = try server.rawCommand("stats\r\n")
                #expect(MemcachedServerProcess.parseStatistic("pid", from: stats) == String(server.pid))
            }
        }
    }

    @Test("stop() ends the process and can be called twice")
    func stopEndsTheProcess() throws {
        let server = try MemcachedServerProcess.start()
        let pid = server.pid
        #expect(processExists(pid))
        #expect(server.isRunning)

        server.stop()

        #expect(!server.isRunning)
        let signalResult = kill(pid, 0)
        let signalError = errno
        #expect(signalResult == -1)
        #expect(signalError == ESRCH)
        server.stop()
        #expect(!server.isRunning)
    }

    @Test("pause() makes requests time out and resume() makes them answer again")
    func pauseAndResume() throws {
        let server = try MemcachedServerProcess.start()
        defer { server.stop() }

        server.pause()
        let error = #expect(throws: MemcachedFixtureError.self) {
            try server.rawCommand("version\r\n", until: "\r\n", timeout: .milliseconds(300))
        }
        guard case .timedOut? = error else {
            Issue.record("expected a timeout while paused, got \(String(describing: error))")
            return
        }
        #expect(server.isRunning)

        server.resume()
        let version = try server.rawCommand("version\r\n", until: "\r\n")
        #expect(version.hasPrefix("VERSION "))
    }

    @Test("Extra arguments reach memcached")
    func extraArgumentsAreHonoured() throws {
        let server = try MemcachedServerProcess.start(arguments: ["-I", "2m"])
        defer { server.stop() }

        let settings = try server.rawCommand("stats settings\r\n")
        #expect(MemcachedServerProcess.parseStatistic("item_size_max", from: settings) == "2097152")
    }

    @Test("kill() ends the process but keeps its output readable")
    func killEndsTheProcess() throws {
        let server = try MemcachedServerProcess.start(arguments: ["-vv"])
        defer { server.stop() }
        let pid = server.pid

        server.kill()

        #expect(!server.isRunning)
        #expect(!processExists(pid))
        #expect(throws: MemcachedFixtureError.self) {
            try server.rawCommand("version\r\n", until: "\r\n", timeout: .seconds(1))
        }
        // -vv makes memcached log its listening socket at startup.
        #expect(!server.output.isEmpty)
    }

    @Test("Servers die with the test process: the watchdog kills what it watches when our end closes")
    func watchdogKillsServersWhenTheTestProcessDies() throws {
        let watchdog = try OrphanWatchdog()
        let orphaned = try MemcachedServerProcess.start()
        defer { orphaned.stop() }
        let reaped = try MemcachedServerProcess.start()
        defer { reaped.stop() }
        watchdog.watch(orphaned.pid)
        watchdog.watch(reaped.pid)
        // Reaped normally: its pid could be reused, so the watchdog must leave it alone.
        watchdog.forget(reaped.pid)

        // `swift test` passes SIGINT or SIGTERM on to its whole process group, the watchdog
        // included, before this process is gone: the watchdog must outlive them.
        for signal in [SIGTERM, SIGINT, SIGHUP] {
            kill(watchdog.pid, signal)
        }
        usleep(100_000)

        // What the kernel does when this process dies by any cause, SIGKILL included.
        watchdog.closeAsIfDead()

        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(10)
        while orphaned.isRunning && clock.now < deadline {
            usleep(10_000)
        }
        #expect(!orphaned.isRunning, "the watched server was killed, after the watchdog outlived those signals")
        #expect(reaped.isRunning, "a forgotten pid is never signalled")
        #expect(try reaped.rawCommand("version\r\n", until: "\r\n", timeout: .seconds(2)).hasPrefix("VERSION"))
    }

    @Test("SilentServer accepts a connection and never replies")
    func silentServerNeverReplies() throws {
        let server = try SilentServer()
        defer { server.stop() }
        #expect(server.address == "127.0.0.1:\(server.port)")

        let error = #expect(throws: MemcachedFixtureError.self) {
            try rawLoopbackCommand("version\r\n", port: server.port, until: "\r\n", timeout: .milliseconds(200))
        }
        guard case .timedOut(_, let received)? = error else {
            Issue.record("expected a timeout after connecting, got \(String(describing: error))")
            return
        }
        #expect(received.isEmpty)
        #expect(server.acceptedConnectionCount == 1)

        server.stop()
        #expect(throws: MemcachedFixtureError.self) {
            try rawLoopbackCommand("version\r\n", port: server.port, until: "\r\n", timeout: .milliseconds(200))
        }
    }

    @Test("ScriptedServer answers each line with the responder's bytes and closes on nil")
    func scriptedServerAnswersPerLine() throws {
        let receivedLines = Mutex<[String]>([])
        let server = try ScriptedServer { line in
            receivedLines.withLock { $0.append(line) }
            if line == "quit" { return nil }
            return Array("ECHO \(line)\r\n".utf8)
        }
        defer { server.stop() }

        let reply = try rawLoopbackCommand("one\r\ntwo\r\n", port: server.port, until: "ECHO two\r\n")
        #expect(reply == "ECHO one\r\nECHO two\r\n")

        let closed = #expect(throws: MemcachedFixtureError.self) {
            try rawLoopbackCommand("quit\r\n", port: server.port, until: "\r\n", timeout: .seconds(2))
        }
        guard case .connectionClosed? = closed else {
            Issue.record("expected the connection to be closed, got \(String(describing: closed))")
            return
        }
        #expect(receivedLines.withLock { $0 } == ["one", "two", "quit"])
    }

    @Test("A refusing loopback port refuses connections, and no other socket can take it until released")
    func refusingPortRefusesConnections() throws {
        let refusing = try RefusingLoopbackPort()
        defer { refusing.release() }
        #expect((1...65535).contains(refusing.port))
        let error = #expect(throws: MemcachedFixtureError.self) {
            try rawLoopbackCommand("version\r\n", port: refusing.port, until: "\r\n", timeout: .seconds(2))
        }
        guard case .socketFailure(_, let code)? = error else {
            Issue.record("expected a refused connection, got \(String(describing: error))")
            return
        }
        #expect(code == ECONNREFUSED)
        // A server binding the port as memcached does (SO_REUSEADDR) is turned away while it is
        // held, so a "down" server never comes to life in the middle of a test.
        #expect(Self.bindWithReuseAddress(port: refusing.port) == EADDRINUSE)
        // Not checked after `release()`: from then on any test running beside this one may take it.
    }

    /// Binds a fresh `SO_REUSEADDR` socket to 127.0.0.1:`port`, closes it, and returns `bind`'s
    /// errno (0 when it bound).
    private static func bindWithReuseAddress(port: Int) -> Int32 {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return errno }
        defer { close(descriptor) }
        var one: Int32 = 1
        _ = setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port)).bigEndian
        address.sin_addr.s_addr = in_addr_t(0x7F00_0001).bigEndian
        let result = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        return result == 0 ? 0 : errno
    }

    @Test("withMemcached stops its servers when the async body throws")
    func withMemcachedStopsServersOnError() async throws {
        struct ExpectedFailure: Error {}
        var started: [MemcachedServerProcess] = []
        var runningInsideBody = false

        await #expect(throws: ExpectedFailure.self) {
            try await withMemcached(servers: 2) { cluster in
                await Task.yield()  // Makes the body async, selecting the async overload.
                started = cluster.servers
                runningInsideBody = cluster.servers.allSatisfy(\.isRunning)
                throw ExpectedFailure()
            }
        }

        #expect(runningInsideBody)
        #expect(started.count == 2)
        for server in started {
            #expect(!server.isRunning)
            #expect(!processExists(server.pid))
        }
    }

    @Test("The synchronous withMemcached stops its servers when the body throws")
    func synchronousWithMemcachedStopsServersOnError() throws {
        struct ExpectedFailure: Error {}
        var started: [MemcachedServerProcess] = []

        #expect(throws: ExpectedFailure.self) {
            try withMemcached { cluster in
                started = cluster.servers
                throw ExpectedFailure()
            }
        }

        #expect(started.count == 1)
        #expect(started.allSatisfy { !$0.isRunning && !processExists($0.pid) })
    }

    @Test("withMemcached stops its servers after the async body returns")
    func withMemcachedStopsServersOnSuccess() async throws {
        let servers = try await withMemcached { cluster in
            await Task.yield()  // Makes the body async, selecting the async overload.
            let version = try cluster.servers[0].rawCommand("version\r\n", until: "\r\n")
            #expect(version.hasPrefix("VERSION "))
            return cluster.servers
        }

        #expect(servers.count == 1)
        #expect(servers.allSatisfy { !$0.isRunning && !processExists($0.pid) })
    }

    @Test("The not-installed error says how to install memcached")
    func notInstalledErrorExplainsTheFix() {
        let error = MemcachedFixtureError.memcachedNotInstalled(searchedDirectories: ["/usr/bin"])
        #expect(error.description.contains("memcached is not installed: apt-get install memcached"))
    }

    @Test("NutcrackerProcess forwards to its backend on loopback, reports statistics, and stop ends it")
    func nutcrackerStartsAndStops() throws {
        try withMemcached { cluster in
            let proxy = try NutcrackerProcess.start(backends: cluster.addresses)
            #expect(proxy.configuration.contains("listen: 127.0.0.1:\(proxy.port)\n"))
            #expect(proxy.configuration.contains("- \(cluster.addresses[0]):1\n"))
            let stored = try rawLoopbackCommand("set k 0 0 1\r\nv\r\n", port: proxy.port, until: "\r\n")
            #expect(stored == "STORED\r\n")
            #expect(try cluster.servers[0].rawCommand("get k\r\n") == "VALUE k 0 1\r\nv\r\nEND\r\n")
            let statistics = try proxy.statistics()
            #expect(statistics.contains("\"service\":\"nutcracker\""))
            #expect(statistics.contains("\"\(cluster.addresses[0])\""))
            proxy.stop()
            #expect(!processExists(proxy.pid))
            #expect(proxy.log.contains("nutcracker-0.5"), "the log outlives the process: \(proxy.log)")
            proxy.stop()
        }
    }

    @Test("A nutcracker that refuses its configuration fails the start with its log")
    func nutcrackerStartFailureShowsItsLog() throws {
        try withMemcached { cluster in
            do {
                let proxy = try NutcrackerProcess.start(backends: cluster.addresses, hash: "no-such-hash")
                proxy.stop()
                Issue.record("nutcracker started with an invalid hash")
            } catch MemcachedFixtureError.nutcrackerFailedToStart(let pid, let reason, let log) {
                #expect(!processExists(pid))
                #expect(reason.contains("during startup"), "\(reason)")
                #expect(log.contains("\"hash\" is not a valid hash"), "\(log)")
            }
        }
    }

    @Test("The nutcracker-not-installed error says how to install it")
    func nutcrackerNotInstalledErrorExplainsTheFix() {
        let error = MemcachedFixtureError.nutcrackerNotInstalled(searchedDirectories: ["/usr/sbin"])
        #expect(error.description.contains("apt-get install nutcracker"))
        #expect(error.description.contains("scripts/install-deps.sh"))
    }
}

/// Whether a process with this pid exists; `kill` with signal 0 only checks.
private func processExists(_ pid: pid_t) -> Bool {
    kill(pid, 0) == 0 || errno != ESRCH
}
