#if canImport(Glibc)
public import Glibc
#elseif canImport(Darwin)
public import Darwin
#endif

/// A failure of the test fixtures: a server that could not be started, a socket
/// that could not be opened, or a reply that did not arrive in time.
///
/// Every case carries enough context (most importantly the server's own output)
/// to diagnose the failure from a test log alone, because fixture failures are
/// meant to fail tests loudly rather than to be recovered from.
public enum MemcachedFixtureError: Error, CustomStringConvertible, Sendable {
    /// No `memcached` executable was found on `PATH` or in the usual system directories.
    case memcachedNotInstalled(searchedDirectories: [String])
    /// An argument given to a fixture function was out of range.
    case invalidArgument(String)
    /// A scratch directory for the server's port file and log could not be created.
    case temporaryDirectoryUnavailable(path: String, errno: Int32)
    /// `posix_spawn` refused to start the executable.
    case spawnFailed(executable: String, errno: Int32)
    /// The server process ended before it became ready.
    case serverExitedDuringStartup(pid: pid_t, exit: String, output: String)
    /// The server did not become ready within the startup time limit.
    case startupTimedOut(pid: pid_t, waitingFor: String, output: String)
    /// The server listening on the announced port reported a different process id,
    /// so the fixture would have been talking to a stranger.
    case unexpectedServerIdentity(port: Int, expectedPID: pid_t, reportedPID: String?, output: String)
    /// A socket system call failed.
    case socketFailure(operation: String, errno: Int32)
    /// A network exchange did not finish within its time limit.
    case timedOut(operation: String, receivedSoFar: String)
    /// The peer closed the connection before the expected reply was complete.
    case connectionClosed(operation: String, receivedSoFar: String)
    /// No `nutcracker` (twemproxy) executable was found on `PATH` or in the usual system directories.
    case nutcrackerNotInstalled(searchedDirectories: [String])
    /// `nutcracker` exited during startup or did not become ready in time; `log` is its log file.
    case nutcrackerFailedToStart(pid: pid_t, reason: String, log: String)

    /// The failure, with the process's output or log and, where there is one, what to do about it.
    public var description: String {
        switch self {
        case .memcachedNotInstalled(let directories):
            return "memcached is not installed: apt-get install memcached "
                + "(searched PATH and \(directories.joined(separator: ", ")))"
        case .invalidArgument(let message):
            return "invalid fixture argument: \(message)"
        case .temporaryDirectoryUnavailable(let path, let code):
            return "could not create temporary directory \(path): \(errnoDescription(code))"
        case .spawnFailed(let executable, let code):
            return "could not spawn \(executable): \(errnoDescription(code))"
        case .serverExitedDuringStartup(let pid, let exit, let output):
            return "memcached (pid \(pid)) \(exit) during startup.\(formatOutput(output))"
        case .startupTimedOut(let pid, let stage, let output):
            return "memcached (pid \(pid)) did not become ready: timed out waiting for \(stage).\(formatOutput(output))"
        case .unexpectedServerIdentity(let port, let expected, let reported, let output):
            return "the server on 127.0.0.1:\(port) reported pid \(reported ?? "<none>") "
                + "but the spawned memcached has pid \(expected).\(formatOutput(output))"
        case .socketFailure(let operation, let code):
            return "\(operation) failed: \(errnoDescription(code))"
        case .timedOut(let operation, let received):
            return "\(operation) timed out; received so far: \(quoted(received))"
        case .connectionClosed(let operation, let received):
            return "connection closed during \(operation); received so far: \(quoted(received))"
        case .nutcrackerNotInstalled(let directories):
            return
                "nutcracker (twemproxy) is not installed: apt-get install nutcracker, or run scripts/install-deps.sh "
                + "(searched PATH and \(directories.joined(separator: ", ")))"
        case .nutcrackerFailedToStart(let pid, let reason, let log):
            return "nutcracker (pid \(pid)) did not start: \(reason)."
                + (log.isEmpty ? " It wrote no log." : "\nnutcracker log:\n\(log)")
        }
    }
}

func errnoDescription(_ code: Int32) -> String {
    "\(String(cString: strerror(code))) (errno \(code))"
}

private func formatOutput(_ output: String) -> String {
    output.isEmpty ? " The server wrote no output." : "\nServer output:\n\(output)"
}

/// Shows protocol text with its control characters visible, so `\r\n` framing
/// problems are readable in a failure message.
private func quoted(_ text: String) -> String {
    var result = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\r": result += "\\r"
        case "\n": result += "\\n"
        case "\t": result += "\\t"
        case "\"": result += "\\\""
        default:
            if scalar.value < 0x20 || scalar.value == 0x7F {
                result += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                result.unicodeScalars.append(scalar)
            }
        }
    }
    return result + "\""
}
