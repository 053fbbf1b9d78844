import Foundation

#if canImport(Glibc)
public import Glibc
#elseif canImport(Darwin)
public import Darwin
#endif

/// A real `memcached` server running as a child process on a free loopback port.
///
/// Each instance owns one process: ``start(arguments:environment:)`` spawns it
/// and waits until it answers, ``stop()`` (or `deinit`) ends it. Servers still
/// running when the test process exits are killed by an exit handler, so test
/// runs do not leak servers.
///
/// ```swift
/// let server = try MemcachedServerProcess.start()
/// defer { server.stop() }
/// let reply = try server.rawCommand("version\r\n", until: "\r\n")
/// ```
public final class MemcachedServerProcess: Sendable {
    /// The process id of the spawned `memcached`.
    public let pid: pid_t

    /// The TCP port the server listens on, on 127.0.0.1; 0 for a server on a Unix-domain socket.
    public let port: Int

    /// The socket path of a server started by ``startOnUnixSocket()``, `nil` for a TCP server.
    public let unixSocketPath: String?

    /// The server's address as `host:port`, the form memcached clients accept.
    public var address: String { "127.0.0.1:\(port)" }

    /// How long ``start(arguments:environment:)`` waits for the server to become ready.
    static let startupTimeout: Duration = .seconds(10)

    /// How long ``stop()`` lets the server shut down on `SIGTERM` before killing it.
    static let gracefulStopTimeout: Duration = .seconds(2)

    /// How long to wait for a `SIGKILL`ed process to be reaped before giving up on it.
    static let killTimeout: Duration = .seconds(10)

    private let scratchDirectory: String
    private let outputPath: String
    private let state = Locked(State())

    private struct State {
        /// How the process ended, once it has been reaped.
        var exitDescription: String?
        /// The server output, captured when the scratch directory is deleted.
        var finalOutput: String?
    }

    private init(pid: pid_t, port: Int, unixSocketPath: String? = nil, scratchDirectory: String, outputPath: String) {
        self.pid = pid
        self.port = port
        self.unixSocketPath = unixSocketPath
        self.scratchDirectory = scratchDirectory
        self.outputPath = outputPath
    }

    deinit {
        stop()
    }

    /// Spawns `memcached` on a free port of 127.0.0.1 and waits until it answers.
    ///
    /// The server is started as `memcached -l 127.0.0.1 -p -1 -U 0` (plus `-u root`
    /// when running as root, which memcached otherwise refuses), followed by
    /// `arguments`. Port `-1` makes memcached pick a free port itself and report
    /// it in the file named by `MEMCACHED_PORT_FILENAME`, which avoids the race of
    /// choosing a port first and binding it later. The server counts as ready once
    /// a `stats` request on that port reports the spawned pid, which proves the
    /// fixture talks to its own process rather than a stranger. A server started with `-S`
    /// (SASL only) answers no text command, so for it the announced port is enough.
    ///
    /// - Parameters:
    ///   - arguments: Extra command-line arguments, for example `["-I", "2m"]`.
    ///   - environment: Extra environment variables, added to the inherited environment.
    /// - Returns: The running server.
    /// - Throws: ``MemcachedFixtureError/memcachedNotInstalled(searchedDirectories:)`` if
    ///   `memcached` cannot be found, or another ``MemcachedFixtureError`` (including the
    ///   server's output) if it cannot be spawned, exits, or is not ready within 10 seconds.
    ///   The process is killed on every failure.
    public static func start(
        arguments: [String] = [],
        environment: [String: String] = [:]
    ) throws -> MemcachedServerProcess {
        let scratchDirectory = try makeScratchDirectory(prefix: "memcached-fixture")
        let portFilePath = scratchDirectory + "/port"
        var fullEnvironment = ProcessInfo.processInfo.environment
        fullEnvironment.merge(environment) { _, callers in callers }
        fullEnvironment["MEMCACHED_PORT_FILENAME"] = portFilePath
        return try launch(
            ["-l", "127.0.0.1", "-p", "-1", "-U", "0"] + arguments,
            environment: fullEnvironment,
            in: scratchDirectory
        ) { pid, outputPath, deadline in
            let port = try waitForAnnouncedPort(
                pid: pid,
                portFilePath: portFilePath,
                outputPath: outputPath,
                deadline: deadline
            )
            if arguments.contains("-S") || arguments.contains("binary") {
                // A SASL-only or binary-only (`-B binary`) server answers no text command; memcached
                // writes the port file only after binding, so a live process is ready.
                try failIfExited(pid: pid, outputPath: outputPath)
            } else {
                try waitUntilServing(pid: pid, port: port, outputPath: outputPath, deadline: deadline)
            }
            return (port, nil)
        }
    }

    /// Spawns `memcached` listening on a Unix-domain socket only (`-s`, which turns TCP off) in a
    /// scratch directory of its own, and waits until the socket accepts a connection.
    ///
    /// - Returns: The running server; ``unixSocketPath`` is its socket, ``port`` is 0.
    /// - Throws: What ``start(arguments:environment:)`` throws.
    public static func startOnUnixSocket() throws -> MemcachedServerProcess {
        let scratchDirectory = try makeScratchDirectory(prefix: "memcached-unix")
        let socketPath = scratchDirectory + "/memcached.sock"
        return try launch(
            ["-s", socketPath, "-a", "0700"],
            environment: ProcessInfo.processInfo.environment,
            in: scratchDirectory
        ) { pid, outputPath, deadline in
            while !unixSocketAccepts(socketPath) {
                try failIfExited(pid: pid, outputPath: outputPath)
                guard ContinuousClock.now < deadline else {
                    throw MemcachedFixtureError.startupTimedOut(
                        pid: pid,
                        waitingFor: "a connection to \(socketPath)",
                        output: readOutput(outputPath)
                    )
                }
                usleep(10_000)
            }
            return (0, socketPath)
        }
    }

    /// Spawns `memcached` with `arguments` (plus `-u root` when running as root, which memcached
    /// otherwise refuses), registers it with the ``ChildProcessRegistry`` and waits with `ready`,
    /// which returns the server's port and socket path. Kills the process and removes
    /// `scratchDirectory` on every failure.
    private static func launch(
        _ arguments: [String],
        environment: [String: String],
        in scratchDirectory: String,
        ready: (pid_t, _ outputPath: String, _ deadline: ContinuousClock.Instant) throws -> (Int, String?)
    ) throws -> MemcachedServerProcess {
        let outputPath = scratchDirectory + "/output.log"
        var commandLine = arguments
        if getuid() == 0 {
            commandLine += ["-u", "root"]
        }
        let pid: pid_t
        do {
            pid = try spawnProcess(
                executable: try locateMemcachedExecutable(),
                arguments: commandLine,
                environment: environment,
                outputPath: outputPath
            )
        } catch {
            try? FileManager.default.removeItem(atPath: scratchDirectory)
            throw error
        }
        ChildProcessRegistry.register(pid: pid, scratchDirectory: scratchDirectory)
        do {
            let (port, socketPath) = try ready(pid, outputPath, ContinuousClock.now + startupTimeout)
            return MemcachedServerProcess(
                pid: pid,
                port: port,
                unixSocketPath: socketPath,
                scratchDirectory: scratchDirectory,
                outputPath: outputPath
            )
        } catch {
            ChildProcessRegistry.send(SIGKILL, to: pid)
            _ = ChildProcessRegistry.waitForExit(of: pid, timeout: killTimeout)
            try? FileManager.default.removeItem(atPath: scratchDirectory)
            throw error
        }
    }

    /// Whether a Unix-domain socket at `path` accepts a connection (closed at once).
    private static func unixSocketAccepts(_ path: String) -> Bool {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: bytes)
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
    }

    /// Waits for memcached to write `TCP INET: <port>` into the port file.
    ///
    /// The file may be observed half-written, so only a complete line counts.
    private static func waitForAnnouncedPort(
        pid: pid_t,
        portFilePath: String,
        outputPath: String,
        deadline: ContinuousClock.Instant
    ) throws -> Int {
        while true {
            if let contents = FileManager.default.contents(atPath: portFilePath),
                let port = parseAnnouncedPort(String(decoding: contents, as: UTF8.self))
            {
                return port
            }
            try failIfExited(pid: pid, outputPath: outputPath)
            if ContinuousClock.now >= deadline {
                throw MemcachedFixtureError.startupTimedOut(
                    pid: pid,
                    waitingFor: "the port file \(portFilePath)",
                    output: readOutput(outputPath)
                )
            }
            usleep(10_000)
        }
    }

    /// Extracts the port from the first complete `TCP INET: <port>` line.
    ///
    /// Lines are split on the byte `\n` rather than on `Character`s, because
    /// Swift treats `\r\n` as one character that would not match `\n`.
    static func parseAnnouncedPort(_ contents: String) -> Int? {
        let prefix = "TCP INET: "
        let completeLines = contents.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
            .dropLast()
        for lineBytes in completeLines {
            let line = String(decoding: lineBytes, as: UTF8.self)
            guard line.hasPrefix(prefix) else { continue }
            let digits = line.dropFirst(prefix.count).trimmingCharacters(in: .whitespacesAndNewlines)
            if let port = Int(digits), (1...65535).contains(port) {
                return port
            }
        }
        return nil
    }

    /// Waits until `stats` on `port` succeeds and reports `pid`.
    private static func waitUntilServing(
        pid: pid_t,
        port: Int,
        outputPath: String,
        deadline: ContinuousClock.Instant
    ) throws {
        var lastError: (any Error)?
        while ContinuousClock.now < deadline {
            let attemptTimeout = min(deadline - .now, .seconds(2))
            let reply: String
            do {
                reply = try exchangeRawText(
                    port: port,
                    request: "stats\r\n",
                    terminator: "END\r\n",
                    timeout: attemptTimeout
                )
            } catch {
                lastError = error
                try failIfExited(pid: pid, outputPath: outputPath)
                usleep(10_000)
                continue
            }
            let reportedPID = parseStatistic("pid", from: reply)
            guard reportedPID == String(pid) else {
                throw MemcachedFixtureError.unexpectedServerIdentity(
                    port: port,
                    expectedPID: pid,
                    reportedPID: reportedPID,
                    output: readOutput(outputPath)
                )
            }
            return
        }
        var reason = "a stats reply on port \(port)"
        if let lastError {
            reason += " (last error: \(lastError))"
        }
        throw MemcachedFixtureError.startupTimedOut(pid: pid, waitingFor: reason, output: readOutput(outputPath))
    }

    private static func failIfExited(pid: pid_t, outputPath: String) throws {
        if case .exited(let description) = ChildProcessRegistry.reapIfExited(pid) {
            throw MemcachedFixtureError.serverExitedDuringStartup(
                pid: pid,
                exit: description,
                output: readOutput(outputPath)
            )
        }
    }

    private static func readOutput(_ path: String) -> String {
        FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    /// Everything the server wrote to stdout and stderr so far, for failure messages.
    ///
    /// Still available after ``stop()``, which captures it before deleting the log file.
    public var output: String {
        state.withLock { $0.finalOutput } ?? Self.readOutput(outputPath)
    }

    /// Whether the process is still running (it counts as running while paused).
    public var isRunning: Bool {
        state.withLock { state in
            refreshExitStatus(&state)
            return state.exitDescription == nil
        }
    }

    /// Stops the server: `SIGTERM`, up to 2 seconds to exit, then `SIGKILL`.
    ///
    /// Also resumes a paused server so that it can act on `SIGTERM`, reaps the
    /// process and deletes its port and log files. Calling it again does nothing.
    public func stop() {
        state.withLock { state in
            refreshExitStatus(&state)
            if state.exitDescription == nil {
                requestTermination()
                state.exitDescription = ChildProcessRegistry.waitForExit(of: pid, timeout: Self.gracefulStopTimeout)
            }
            if state.exitDescription == nil {
                ChildProcessRegistry.send(SIGKILL, to: pid)
                state.exitDescription = ChildProcessRegistry.waitForExit(of: pid, timeout: Self.killTimeout)
            }
            if state.finalOutput == nil {
                state.finalOutput = Self.readOutput(outputPath)
                try? FileManager.default.removeItem(atPath: scratchDirectory)
            }
        }
    }

    /// Asks the server to shut down (`SIGTERM`, plus `SIGCONT` in case it is paused)
    /// without waiting, so that several servers can shut down at the same time.
    func requestTermination() {
        ChildProcessRegistry.send(SIGTERM, to: pid)
        ChildProcessRegistry.send(SIGCONT, to: pid)
    }

    /// Kills the server with `SIGKILL` and reaps it, simulating a crash.
    ///
    /// Unlike ``stop()`` this keeps the log, so ``output`` stays readable;
    /// ``stop()`` or `deinit` still cleans up afterwards.
    public func kill() {
        state.withLock { state in
            refreshExitStatus(&state)
            guard state.exitDescription == nil else { return }
            ChildProcessRegistry.send(SIGKILL, to: pid)
            state.exitDescription = ChildProcessRegistry.waitForExit(of: pid, timeout: Self.killTimeout)
        }
    }

    /// Freezes the server with `SIGSTOP`: connections stay open but nothing is answered,
    /// which is how a hung server looks to a client.
    public func pause() {
        ChildProcessRegistry.send(SIGSTOP, to: pid)
        // kill() returns before every thread has stopped: a worker thread on another CPU can still
        // answer a request sent right away. Wait until the kernel reports the process stopped.
        #if os(Linux)
        let deadline = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < deadline {
            if allThreadsStopped() {
                return
            }
            usleep(1_000)
        }
        #endif
    }

    #if os(Linux)
    /// Whether every thread of the process is in the stopped state.
    private func allThreadsStopped() -> Bool {
        guard let threads = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else {
            return false
        }
        return threads.allSatisfy { thread in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(thread)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return false }
            return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("T")
        }
    }
    #endif

    /// Lets a server frozen by ``pause()`` continue with `SIGCONT`.
    public func resume() {
        ChildProcessRegistry.send(SIGCONT, to: pid)
    }

    private func refreshExitStatus(_ state: inout State) {
        guard state.exitDescription == nil else { return }
        switch ChildProcessRegistry.reapIfExited(pid) {
        case .running: break
        case .exited(let description): state.exitDescription = description
        case .alreadyReaped: state.exitDescription = "exited"
        }
    }

    /// Sends one raw text-protocol request on a fresh connection and returns the reply.
    ///
    /// The reply is complete when it ends with `terminator`, or when it starts with an
    /// error line (`ERROR`, `CLIENT_ERROR …`, `SERVER_ERROR …`), after which memcached
    /// sends nothing more.
    ///
    /// - Parameters:
    ///   - text: The request exactly as sent, including its `\r\n` line endings.
    ///   - terminator: The text that ends a complete reply; `"\r\n"` for one-line replies.
    ///   - timeout: The limit for connecting, sending and receiving together.
    /// - Returns: The reply, including the terminator.
    /// - Throws: ``MemcachedFixtureError/timedOut(operation:receivedSoFar:)`` if the reply is
    ///   not complete in time, ``MemcachedFixtureError/connectionClosed(operation:receivedSoFar:)``
    ///   if the server closes the connection first, or a socket failure.
    public func rawCommand(
        _ text: String,
        until terminator: String = "END\r\n",
        timeout: Duration = .seconds(5)
    ) throws -> String {
        try exchangeRawText(port: port, request: text, terminator: terminator, timeout: timeout)
    }

    /// Reads one `STAT <name> <value>` line of a `stats` reply.
    ///
    /// - Parameters:
    ///   - name: The statistic's name, such as `pid` or `item_size_max`.
    ///   - reply: A complete `stats` reply.
    /// - Returns: The value, or `nil` if the reply has no such line.
    public static func parseStatistic(_ name: String, from reply: String) -> String? {
        let prefix = "STAT \(name) "
        for line in reply.split(separator: "\r\n") where line.hasPrefix(prefix) {
            return String(line.dropFirst(prefix.count))
        }
        return nil
    }
}
