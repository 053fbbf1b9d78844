import Foundation

#if canImport(Glibc)
public import Glibc
#elseif canImport(Darwin)
public import Darwin
#endif

/// A real twemproxy (`nutcracker`) running as a child process on a free loopback port, in front
/// of memcached servers.
///
/// ``start(backends:hash:distribution:serverTimeout:)`` writes a one-pool configuration in a
/// scratch directory, spawns `nutcracker` in the foreground with its log there, and waits until
/// it forwards a request; ``stop()`` (or `deinit`) ends it. Like ``MemcachedServerProcess`` it is
/// registered with the fixtures' child-process bookkeeping, so a test run never leaks one.
///
/// ```swift
/// try withMemcached(servers: 3) { cluster in
///     let proxy = try NutcrackerProcess.start(backends: cluster.addresses)
///     defer { proxy.stop() }
///     let memc = try MemcachedConnection(configuration: .init(servers: [proxy.address]))
///     …
/// }
/// ```
public final class NutcrackerProcess: Sendable {
    /// The process id of the spawned `nutcracker`.
    public let pid: pid_t

    /// The TCP port the proxy's pool listens on, on 127.0.0.1.
    public let port: Int

    /// The TCP port of the proxy's statistics (JSON) listener, on 127.0.0.1.
    public let statsPort: Int

    /// The YAML configuration the proxy was started with.
    public let configuration: String

    /// The proxy's address as `host:port`, the form memcached clients accept.
    public var address: String { "127.0.0.1:\(port)" }

    /// How long ``start(backends:hash:distribution:serverTimeout:)`` waits for the proxy to be ready.
    static let startupTimeout: Duration = .seconds(10)

    /// How many times a start is tried with fresh ports when another process took a port first.
    static let portAttempts = 5

    private let scratchDirectory: String
    private let logPath: String
    private let state = Locked(State())

    private struct State {
        /// How the process ended, once it has been reaped.
        var exitDescription: String?
        /// The log, captured when the scratch directory is deleted.
        var finalLog: String?
    }

    private init(
        pid: pid_t,
        port: Int,
        statsPort: Int,
        configuration: String,
        scratchDirectory: String,
        logPath: String
    ) {
        self.pid = pid
        self.port = port
        self.statsPort = statsPort
        self.configuration = configuration
        self.scratchDirectory = scratchDirectory
        self.logPath = logPath
    }

    deinit {
        stop()
    }

    /// The configuration of one pool named `memcached` listening on 127.0.0.1:`port`.
    ///
    /// Every backend gets weight 1 and no server name, so twemproxy hashes `host:port` (just
    /// `host` for port 11211) into its ketama continuum, as libmemcached does. Failed servers
    /// are not ejected: keys never move to another server during a test.
    ///
    /// - Parameters:
    ///   - port: The port the pool listens on.
    ///   - backends: The memcached servers as `host:port`.
    ///   - hash: twemproxy's key hash, for example `md5` or `fnv1a_64`.
    ///   - distribution: `ketama`, `modula` or `random`.
    ///   - serverTimeout: How long the proxy waits for a server's reply.
    /// - Returns: The YAML text.
    public static func configuration(
        port: Int,
        backends: [String],
        hash: String,
        distribution: String,
        serverTimeout: Duration
    ) -> String {
        let milliseconds =
            serverTimeout.components.seconds * 1000
            + serverTimeout.components.attoseconds / 1_000_000_000_000_000
        var lines = [
            "memcached:",
            "  listen: 127.0.0.1:\(port)",
            "  hash: \(hash)",
            "  distribution: \(distribution)",
            "  timeout: \(milliseconds)",
            "  auto_eject_hosts: false",
            "  servers:",
        ]
        lines += backends.map { "    - \($0):1" }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Spawns `nutcracker` on free ports of 127.0.0.1 in front of `backends` and waits until it
    /// forwards a `version` request.
    ///
    /// The proxy runs as `nutcracker -c <conf> -s <stats port> -a 127.0.0.1 -o <log> -p <pid file>`,
    /// not daemonized, with the configuration of
    /// ``configuration(port:backends:hash:distribution:serverTimeout:)``. nutcracker cannot pick
    /// a free port itself, so the fixture picks two (bound by the kernel, then released), and tries
    /// again with new ones should another process take one first. The proxy counts as ready once
    /// its statistics port reports the `nutcracker` service and its pool answers `version`, which
    /// it forwards to a backend.
    ///
    /// - Parameters:
    ///   - backends: The memcached servers as `host:port`, in order; at least one.
    ///   - hash: twemproxy's key hash; `md5` by default.
    ///   - distribution: twemproxy's distribution; `ketama` by default.
    ///   - serverTimeout: How long the proxy waits for a server's reply; 5 seconds by default.
    /// - Returns: The running proxy.
    /// - Throws: ``MemcachedFixtureError/nutcrackerNotInstalled(searchedDirectories:)`` if
    ///   `nutcracker` cannot be found, or ``MemcachedFixtureError/nutcrackerFailedToStart(pid:reason:log:)``
    ///   (with the proxy's log) if it exits or is not ready within 10 seconds. The process is
    ///   killed on every failure.
    public static func start(
        backends: [String],
        hash: String = "md5",
        distribution: String = "ketama",
        serverTimeout: Duration = .seconds(5)
    ) throws -> NutcrackerProcess {
        guard !backends.isEmpty else {
            throw MemcachedFixtureError.invalidArgument("nutcracker needs at least one backend")
        }
        guard let executable = locateExecutable(named: "nutcracker") else {
            throw MemcachedFixtureError.nutcrackerNotInstalled(searchedDirectories: fallbackMemcachedDirectories)
        }
        var attempt = 1
        while true {
            do {
                return try launch(
                    executable: executable,
                    backends: backends,
                    hash: hash,
                    distribution: distribution,
                    serverTimeout: serverTimeout
                )
            } catch MemcachedFixtureError.nutcrackerFailedToStart(_, let reason, let log)
                where attempt < portAttempts && (reason + log).contains("Address already in use")
            {
                attempt += 1
            }
        }
    }

    /// One attempt of ``start(backends:hash:distribution:serverTimeout:)`` on two fresh ports.
    private static func launch(
        executable: String,
        backends: [String],
        hash: String,
        distribution: String,
        serverTimeout: Duration
    ) throws -> NutcrackerProcess {
        let (port, statsPort) = try twoFreePorts()
        let scratchDirectory = try makeScratchDirectory(prefix: "nutcracker-fixture")
        let configurationPath = scratchDirectory + "/nutcracker.yml"
        let logPath = scratchDirectory + "/nutcracker.log"
        let configuration = configuration(
            port: port,
            backends: backends,
            hash: hash,
            distribution: distribution,
            serverTimeout: serverTimeout
        )
        let pid: pid_t
        do {
            try Data(configuration.utf8).write(to: URL(fileURLWithPath: configurationPath))
            pid = try spawnProcess(
                executable: executable,
                arguments: [
                    "-c", configurationPath,
                    "-s", String(statsPort),
                    "-a", "127.0.0.1",
                    "-o", logPath,
                    "-p", scratchDirectory + "/nutcracker.pid",
                ],
                environment: ProcessInfo.processInfo.environment,
                outputPath: scratchDirectory + "/output.log"
            )
        } catch {
            try? FileManager.default.removeItem(atPath: scratchDirectory)
            throw error
        }
        ChildProcessRegistry.register(pid: pid, scratchDirectory: scratchDirectory)
        do {
            try waitUntilReady(
                pid: pid,
                port: port,
                statsPort: statsPort,
                scratchDirectory: scratchDirectory,
                deadline: ContinuousClock.now + startupTimeout
            )
        } catch {
            ChildProcessRegistry.send(SIGKILL, to: pid)
            _ = ChildProcessRegistry.waitForExit(of: pid, timeout: MemcachedServerProcess.killTimeout)
            try? FileManager.default.removeItem(atPath: scratchDirectory)
            throw error
        }
        return NutcrackerProcess(
            pid: pid,
            port: port,
            statsPort: statsPort,
            configuration: configuration,
            scratchDirectory: scratchDirectory,
            logPath: logPath
        )
    }

    /// Two distinct ports of 127.0.0.1 that the kernel just handed out, released again.
    private static func twoFreePorts() throws -> (Int, Int) {
        let first = try bindLoopbackSocket(listening: false)
        defer { close(first.descriptor) }
        let second = try bindLoopbackSocket(listening: false)
        defer { close(second.descriptor) }
        return (first.port, second.port)
    }

    /// Waits until the statistics port names the `nutcracker` service and the pool answers
    /// `version`, failing at once when the process exits.
    private static func waitUntilReady(
        pid: pid_t,
        port: Int,
        statsPort: Int,
        scratchDirectory: String,
        deadline: ContinuousClock.Instant
    ) throws {
        func failure(_ reason: String) -> MemcachedFixtureError {
            .nutcrackerFailedToStart(pid: pid, reason: reason, log: readLog(in: scratchDirectory))
        }
        var lastError: (any Error)?
        var statsReady = false
        while ContinuousClock.now < deadline {
            if case .exited(let description) = ChildProcessRegistry.reapIfExited(pid) {
                throw failure("it \(description) during startup")
            }
            let attemptTimeout = min(deadline - .now, .seconds(2))
            do {
                if !statsReady {
                    let statistics = try exchangeRawText(
                        port: statsPort,
                        request: "",
                        terminator: "}\n",
                        timeout: attemptTimeout
                    )
                    guard statistics.contains("\"service\":\"nutcracker\"") else {
                        throw failure("127.0.0.1:\(statsPort) answered as something else than nutcracker")
                    }
                    statsReady = true
                }
                let version = try exchangeRawText(
                    port: port,
                    request: "version\r\n",
                    terminator: "\r\n",
                    timeout: attemptTimeout
                )
                guard version.hasPrefix("VERSION ") else {
                    throw failure("`version` through 127.0.0.1:\(port) answered \(version.debugDescription)")
                }
                // nutcracker binds its statistics port before its pool's: another process that took
                // the pool port between its choice and nutcracker's bind answered that `version`,
                // and nutcracker is exiting. nutcracker itself closes the connection on `stats`; a
                // process that answers it is not this proxy.
                if let reply = try? exchangeRawText(
                    port: port,
                    request: "stats\r\n",
                    terminator: "END\r\n",
                    timeout: attemptTimeout
                ), reply.hasPrefix("STAT") {
                    throw failure("another process answers on 127.0.0.1:\(port): Address already in use")
                }
                return
            } catch let error as MemcachedFixtureError {
                if case .nutcrackerFailedToStart = error { throw error }
                lastError = error
                usleep(10_000)
            }
        }
        throw failure(
            "timed out waiting for it to forward `version` (last error: \(lastError.map { "\($0)" } ?? "none"))"
        )
    }

    /// The log and anything written to stdout or stderr, for failure messages.
    private static func readLog(in scratchDirectory: String) -> String {
        ["nutcracker.log", "output.log"].compactMap { name in
            FileManager.default.contents(atPath: scratchDirectory + "/" + name)
                .map { String(decoding: $0, as: UTF8.self) }
        }.joined()
    }

    /// Everything the proxy logged so far, for failure messages; still available after ``stop()``.
    public var log: String {
        state.withLock { $0.finalLog } ?? Self.readLog(in: scratchDirectory)
    }

    /// The statistics nutcracker reports on ``statsPort``, as its JSON text.
    ///
    /// - Throws: A ``MemcachedFixtureError`` if the statistics do not arrive within 5 seconds.
    public func statistics() throws -> String {
        try exchangeRawText(port: statsPort, request: "", terminator: "}\n", timeout: .seconds(5))
    }

    /// Stops the proxy: `SIGTERM`, up to 2 seconds to exit, then `SIGKILL`; reaps it and deletes
    /// its scratch directory, keeping the log for ``log``. Calling it again does nothing.
    public func stop() {
        state.withLock { state in
            if state.exitDescription == nil {
                switch ChildProcessRegistry.reapIfExited(pid) {
                case .running: break
                case .exited(let description): state.exitDescription = description
                case .alreadyReaped: state.exitDescription = "exited"
                }
            }
            if state.exitDescription == nil {
                ChildProcessRegistry.send(SIGTERM, to: pid)
                state.exitDescription = ChildProcessRegistry.waitForExit(
                    of: pid,
                    timeout: MemcachedServerProcess.gracefulStopTimeout
                )
            }
            if state.exitDescription == nil {
                ChildProcessRegistry.send(SIGKILL, to: pid)
                state.exitDescription = ChildProcessRegistry.waitForExit(
                    of: pid,
                    timeout: MemcachedServerProcess.killTimeout
                )
            }
            if state.finalLog == nil {
                state.finalLog = Self.readLog(in: scratchDirectory)
                try? FileManager.default.removeItem(atPath: scratchDirectory)
            }
        }
    }
}
