import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
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
    }

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
                    return .exited(describeWaitStatus(status))
                }
                if errno == EINTR { continue }
                // ECHILD: something else in this process reaped it. Forget the pid
                // so that it is never signalled again.
                children[pid] = nil
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
