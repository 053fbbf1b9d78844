import Foundation

#if canImport(Glibc)
public import Glibc
#elseif canImport(Darwin)
public import Darwin
#endif

/// Process-wide bookkeeping of the server processes the fixtures spawned and
/// have not reaped yet.
///
/// Signalling and reaping both happen under this one lock. That is what makes
/// it safe to signal by pid at all: once a child is reaped its pid may be
/// reused by an unrelated process, and the registry guarantees no signal is
/// sent after that point — neither by a fixture nor by the exit handler.
enum ChildProcessRegistry {
    /// Live (not yet reaped) children, mapped to the scratch directory to delete at exit.
    private static let liveChildren = Locked<[pid_t: String]>([:])

    /// What a non-blocking reap attempt found.
    enum ReapResult: Equatable {
        /// The process has not exited yet (a stopped process counts as running).
        case running
        /// The process exited just now and was reaped; describes how it ended.
        case exited(String)
        /// The process had already been reaped earlier.
        case alreadyReaped
    }

    /// Starts tracking a freshly spawned child and makes sure the exit handler is installed.
    static func register(pid: pid_t, scratchDirectory: String) {
        _ = exitHandlerInstallation
        liveChildren.withLock { $0[pid] = scratchDirectory }
        sharedWatchdog?.watch(pid)
    }

    /// The watchdog that kills the children should this process die without running its exit
    /// handler (a signal, a crash, a test runner's time limit). `nil` when it could not start:
    /// the exit handler still covers an orderly exit.
    private static let sharedWatchdog = try? OrphanWatchdog()

    /// Whether `pid` is a child that has not been reaped yet.
    static func isLive(_ pid: pid_t) -> Bool {
        liveChildren.withLock { $0[pid] != nil }
    }

    /// Sends `signal` to `pid` if, and only if, it is one of our unreaped children.
    ///
    /// - Returns: Whether the signal was sent.
    @discardableResult
    static func send(_ signal: Int32, to pid: pid_t) -> Bool {
        liveChildren.withLock { children in
            guard children[pid] != nil else { return false }
            return kill(pid, signal) == 0
        }
    }

    /// Reaps `pid` if it has exited, without blocking.
    static func reapIfExited(_ pid: pid_t) -> ReapResult {
        liveChildren.withLock { children in
            guard children[pid] != nil else { return .alreadyReaped }
            var status: Int32 = 0
            while true {
                let result = waitpid(pid, &status, WNOHANG)
                if result == 0 { return .running }
                if result == pid {
                    children[pid] = nil
                    sharedWatchdog?.forget(pid)
                    return .exited(describeWaitStatus(status))
                }
                if errno == EINTR { continue }
                // ECHILD: something else in this process reaped it. Forget the pid
                // so that it is never signalled again.
                children[pid] = nil
                sharedWatchdog?.forget(pid)
                return .exited("exited (reaped elsewhere)")
            }
        }
    }

    /// Polls until `pid` has been reaped or `timeout` passes.
    ///
    /// - Returns: How the process ended, or `nil` if it is still running.
    static func waitForExit(of pid: pid_t, timeout: Duration) -> String? {
        let deadline = ContinuousClock.now + timeout
        while true {
            switch reapIfExited(pid) {
            case .exited(let description): return description
            case .alreadyReaped: return "already reaped"
            case .running:
                if ContinuousClock.now >= deadline { return nil }
                usleep(5_000)
            }
        }
    }

    /// Kills and reaps every child still alive when the test process exits, so
    /// that finished test runs do not leave servers behind.
    fileprivate static func killLeftoversAtExit() {
        let leftovers = liveChildren.withLock { children in
            let leftovers = children
            for pid in children.keys {
                kill(pid, SIGKILL)
            }
            for pid in children.keys {
                var status: Int32 = 0
                while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
                sharedWatchdog?.forget(pid)
            }
            children.removeAll()
            return leftovers
        }
        for directory in leftovers.values {
            try? FileManager.default.removeItem(atPath: directory)
        }
    }
}

/// Installs the exit handler exactly once; Swift initialises globals lazily and atomically.
private let exitHandlerInstallation: Void = {
    atexit { ChildProcessRegistry.killLeftoversAtExit() }
}()

/// Renders a `waitpid` status the way a shell would describe it.
func describeWaitStatus(_ status: Int32) -> String {
    let terminatingSignal = status & 0x7F
    if terminatingSignal == 0 {
        return "exited with status \((status >> 8) & 0xFF)"
    }
    return "was killed by signal \(terminatingSignal)"
}

/// A small shell process that kills the children it was told about once this process is gone.
///
/// An exit handler does not run when the test process is killed by a signal, and the kernel's
/// parent-death signal is tied to the *thread* that spawned a child, not the process, so it would
/// kill servers whenever a Dispatch thread retires. Instead the watchdog reads `+PID` and `-PID`
/// lines from a socket whose other end only this process holds (close-on-exec, so no other child
/// inherits it). When this process dies, by any cause, the kernel closes that end, the
/// watchdog's `read` sees end-of-file, and it sends `SIGKILL` to every pid still listed. A
/// child reaped normally is removed first, so a reused pid is never signalled. The watchdog
/// ignores the signals that end a test run (`swift test` passes a SIGINT or SIGTERM on to its
/// whole process group, which killed the watchdog before its parent and left the servers running):
/// only end-of-file, or `SIGKILL`, ends it.
public final class OrphanWatchdog: Sendable {
    /// The watchdog's pid.
    public let pid: pid_t
    private let socket: Locked<Int32>

    /// What the watchdog runs: collect pids until end-of-file, then kill the ones left.
    static let script = """
        trap '' HUP INT TERM QUIT PIPE
        live=' '
        while read -r line; do
          case "$line" in
            +*) live="$live${line#+} " ;;
            -*) live=$(printf '%s' "$live" | sed "s/ ${line#-} / /") ;;
          esac
        done
        for pid in $live; do kill -9 "$pid" 2>/dev/null; done
        """

    /// Starts a watchdog process.
    public init() throws {
        var ends: [Int32] = [-1, -1]
        #if canImport(Glibc)
        let streamType = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        #else
        let streamType = SOCK_STREAM
        #endif
        guard socketpair(AF_UNIX, streamType, 0, &ends) == 0 else {
            throw MemcachedFixtureError.spawnFailed(executable: "/bin/sh", errno: errno)
        }
        defer { close(ends[0]) }
        do {
            pid = try spawnProcess(
                executable: "/bin/sh",
                arguments: ["-c", Self.script],
                environment: ["PATH": "/usr/bin:/bin"],
                outputPath: "/dev/null",
                standardInput: ends[0]
            )
        } catch {
            close(ends[1])
            throw error
        }
        socket = Locked(ends[1])
    }

    /// Asks the watchdog to kill `pid` should this process die.
    public func watch(_ pid: pid_t) {
        send("+\(pid)\n")
    }

    /// Tells the watchdog that `pid` was reaped and must no longer be signalled.
    public func forget(_ pid: pid_t) {
        send("-\(pid)\n")
    }

    /// Closes this process's end, as its death would: the watchdog kills what it watches and exits.
    public func closeAsIfDead() {
        socket.withLock { descriptor in
            if descriptor >= 0 {
                close(descriptor)
                descriptor = -1
            }
        }
    }

    private func send(_ line: String) {
        socket.withLock { descriptor in
            guard descriptor >= 0 else { return }
            var bytes = Array(line.utf8)
            var offset = 0
            while offset < bytes.count {
                let sent = bytes.withUnsafeMutableBytes { buffer in
                    sendWithoutSignal(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                }
                if sent < 0 {
                    if errno == EINTR { continue }
                    return
                }
                offset += sent
            }
        }
    }
}

/// `send` that never raises `SIGPIPE`: a watchdog that died must not take this process with it.
private func sendWithoutSignal(_ descriptor: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int {
    #if canImport(Glibc)
    return send(descriptor, bytes, count, Int32(MSG_NOSIGNAL))
    #else
    return send(descriptor, bytes, count, 0)
    #endif
}
