#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The IPv4 loopback address, 127.0.0.1, in host byte order.
let loopbackIPv4: UInt32 = 0x7F00_0001

/// The socket type for TCP sockets the fixtures open. Close-on-exec keeps them
/// from leaking into spawned memcached processes, which would otherwise hold
/// connections open after the test closed its end.
private var streamSocketType: Int32 {
    #if canImport(Glibc)
    Int32(bitPattern: UInt32(SOCK_STREAM.rawValue) | UInt32(SOCK_CLOEXEC.rawValue))
    #else
    SOCK_STREAM
    #endif
}

/// Creates a TCP socket with close-on-exec set.
func makeStreamSocket(operation: String) throws -> Int32 {
    let descriptor = socket(AF_INET, streamSocketType, 0)
    guard descriptor >= 0 else {
        throw MemcachedFixtureError.socketFailure(operation: operation, errno: errno)
    }
    #if !canImport(Glibc)
    _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
    #endif
    return descriptor
}

/// Builds `127.0.0.1:port` as a `sockaddr_in`.
func loopbackSocketAddress(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    #if canImport(Darwin)
    address.sin_len = UInt8(MemoryLayout<sockaddr_in>.size)
    #endif
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(truncatingIfNeeded: port)).bigEndian
    address.sin_addr.s_addr = in_addr_t(loopbackIPv4).bigEndian
    return address
}

/// Returns the local port a bound socket ended up with.
func boundPort(of descriptor: Int32) throws -> Int {
    var address = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let result = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
    }
    guard result == 0 else {
        throw MemcachedFixtureError.socketFailure(operation: "getsockname", errno: errno)
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Binds a new TCP socket to 127.0.0.1 on a kernel-chosen port.
///
/// - Parameter listening: Whether to also put the socket into listening state.
/// - Returns: The socket and the port it is bound to.
public func bindLoopbackSocket(listening: Bool) throws -> (descriptor: Int32, port: Int) {
    let descriptor = try makeStreamSocket(operation: "socket")
    do {
        var address = loopbackSocketAddress(port: 0)
        let bindResult = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bindResult == 0 else {
            throw MemcachedFixtureError.socketFailure(operation: "bind 127.0.0.1:0", errno: errno)
        }
        if listening, listen(descriptor, 128) != 0 {
            throw MemcachedFixtureError.socketFailure(operation: "listen", errno: errno)
        }
        return (descriptor, try boundPort(of: descriptor))
    } catch {
        close(descriptor)
        throw error
    }
}

/// Makes a descriptor non-blocking, so that every wait goes through `poll` with a deadline.
func setNonBlocking(_ descriptor: Int32) {
    let flags = fcntl(descriptor, F_GETFL, 0)
    if flags >= 0 {
        _ = fcntl(descriptor, F_SETFL, flags | O_NONBLOCK)
    }
}

/// Milliseconds left until `deadline`, rounded up and clamped for `poll`.
func pollTimeout(until deadline: ContinuousClock.Instant) -> Int32 {
    let remaining = deadline - .now
    guard remaining > .zero else { return 0 }
    let (seconds, attoseconds) = remaining.components
    let milliseconds = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
    return Int32(clamping: milliseconds)
}

/// Waits for `events` on one descriptor, retrying on `EINTR`.
///
/// - Returns: The returned events, or `nil` when the deadline passed first.
func pollDescriptor(_ descriptor: Int32, events: Int16, deadline: ContinuousClock.Instant) throws -> Int16? {
    while true {
        var entry = pollfd(fd: descriptor, events: events, revents: 0)
        let result = poll(&entry, 1, pollTimeout(until: deadline))
        if result > 0 { return entry.revents }
        if result == 0 { return nil }
        if errno != EINTR {
            throw MemcachedFixtureError.socketFailure(operation: "poll", errno: errno)
        }
    }
}

/// Flags for `send` that turn a closed peer into `EPIPE` instead of a
/// process-killing `SIGPIPE`.
var sendFlags: Int32 {
    #if canImport(Glibc)
    Int32(MSG_NOSIGNAL)
    #else
    0
    #endif
}

/// Writes all of `bytes` to a non-blocking socket before `deadline`.
///
/// - Returns: `false` if the deadline passed or the peer went away.
func sendAll(_ bytes: [UInt8], to descriptor: Int32, deadline: ContinuousClock.Instant) -> Bool {
    var offset = 0
    while offset < bytes.count {
        let written = bytes[offset...].withUnsafeBytes { buffer in
            send(descriptor, buffer.baseAddress, buffer.count, sendFlags)
        }
        if written > 0 {
            offset += written
            continue
        }
        guard written < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR else { return false }
        guard let events = try? pollDescriptor(descriptor, events: Int16(POLLOUT), deadline: deadline),
            events & Int16(POLLOUT) != 0
        else { return false }
    }
    return true
}

/// A client connection to a loopback TCP port, used to talk to servers in raw protocol text.
///
/// All operations are bounded by a deadline so that a paused or silent server
/// makes a test fail with a timeout instead of hanging it.
final class LoopbackConnection {
    private let descriptor: Int32

    /// Connects to 127.0.0.1:`port`.
    ///
    /// - Throws: ``MemcachedFixtureError/socketFailure(operation:errno:)`` if the connection is
    ///   refused, or ``MemcachedFixtureError/timedOut(operation:receivedSoFar:)``.
    init(port: Int, deadline: ContinuousClock.Instant) throws {
        descriptor = try makeStreamSocket(operation: "socket")
        setNonBlocking(descriptor)
        let operation = "connect to 127.0.0.1:\(port)"
        do {
            var address = loopbackSocketAddress(port: port)
            let result = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            if result != 0 {
                guard errno == EINPROGRESS || errno == EINTR else {
                    throw MemcachedFixtureError.socketFailure(operation: operation, errno: errno)
                }
                guard try pollDescriptor(descriptor, events: Int16(POLLOUT), deadline: deadline) != nil else {
                    throw MemcachedFixtureError.timedOut(operation: operation, receivedSoFar: "")
                }
                var pendingError: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &pendingError, &length)
                if pendingError != 0 {
                    throw MemcachedFixtureError.socketFailure(operation: operation, errno: pendingError)
                }
            }
        } catch {
            close(descriptor)
            throw error
        }
    }

    deinit {
        close(descriptor)
    }

    /// Sends `text` as UTF-8.
    func send(_ text: String, deadline: ContinuousClock.Instant) throws {
        guard sendAll(Array(text.utf8), to: descriptor, deadline: deadline) else {
            if ContinuousClock.now >= deadline {
                throw MemcachedFixtureError.timedOut(operation: "send", receivedSoFar: "")
            }
            throw MemcachedFixtureError.socketFailure(operation: "send", errno: errno)
        }
    }

    /// Reads until `isComplete` accepts the bytes received so far.
    ///
    /// - Throws: ``MemcachedFixtureError/timedOut(operation:receivedSoFar:)`` at the deadline,
    ///   ``MemcachedFixtureError/connectionClosed(operation:receivedSoFar:)`` if the peer closes first.
    func receive(
        operation: String,
        deadline: ContinuousClock.Instant,
        until isComplete: ([UInt8]) -> Bool
    ) throws -> [UInt8] {
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while !isComplete(received) {
            guard try pollDescriptor(descriptor, events: Int16(POLLIN), deadline: deadline) != nil else {
                throw MemcachedFixtureError.timedOut(
                    operation: operation,
                    receivedSoFar: String(decoding: received, as: UTF8.self)
                )
            }
            let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                received.append(contentsOf: chunk[..<count])
            } else if count == 0 {
                throw MemcachedFixtureError.connectionClosed(
                    operation: operation,
                    receivedSoFar: String(decoding: received, as: UTF8.self)
                )
            } else if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                throw MemcachedFixtureError.socketFailure(operation: operation, errno: errno)
            }
        }
        return received
    }
}

/// Sends one raw text request to 127.0.0.1:`port` on a fresh connection and returns the reply.
///
/// Works with any loopback server — a ``MemcachedServerProcess`` (see also
/// ``MemcachedServerProcess/rawCommand(_:until:timeout:)``), a ``ScriptedServer``
/// or a ``SilentServer``. The reply is complete when it ends with `terminator`, or
/// when its first line is one of memcached's error lines (`ERROR`, `CLIENT_ERROR …`,
/// `SERVER_ERROR …`), after which the server sends nothing more for that request.
///
/// - Parameters:
///   - text: The request exactly as sent, including its `\r\n` line endings.
///   - port: The loopback port to connect to.
///   - terminator: The text that ends a complete reply; `"\r\n"` for one-line replies.
///   - timeout: The limit for connecting, sending and receiving together.
/// - Returns: The reply, including the terminator.
/// - Throws: ``MemcachedFixtureError/timedOut(operation:receivedSoFar:)`` if the reply is
///   not complete in time, ``MemcachedFixtureError/connectionClosed(operation:receivedSoFar:)``
///   if the server closes the connection first, or
///   ``MemcachedFixtureError/socketFailure(operation:errno:)`` (for example when the
///   connection is refused).
public func rawLoopbackCommand(
    _ text: String,
    port: Int,
    until terminator: String = "END\r\n",
    timeout: Duration = .seconds(5)
) throws -> String {
    try exchangeRawText(port: port, request: text, terminator: terminator, timeout: timeout)
}

/// The implementation of ``rawLoopbackCommand(_:port:until:timeout:)``.
func exchangeRawText(port: Int, request: String, terminator: String, timeout: Duration) throws -> String {
    let deadline = ContinuousClock.now + timeout
    let connection = try LoopbackConnection(port: port, deadline: deadline)
    try connection.send(request, deadline: deadline)
    let terminatorBytes = Array(terminator.utf8)
    let operation = "waiting for \(terminator.debugDescription) after \(request.debugDescription) on 127.0.0.1:\(port)"
    let reply = try connection.receive(operation: operation, deadline: deadline) { received in
        received.ends(with: terminatorBytes) || startsWithErrorLine(received)
    }
    return String(decoding: reply, as: UTF8.self)
}

private let errorLinePrefixes: [[UInt8]] = ["ERROR", "CLIENT_ERROR", "SERVER_ERROR"].map { Array($0.utf8) }

private func startsWithErrorLine(_ received: [UInt8]) -> Bool {
    guard let lineEnd = received.firstRange(of: [UInt8(ascii: "\r"), UInt8(ascii: "\n")]) else { return false }
    let firstLine = received[..<lineEnd.lowerBound]
    return errorLinePrefixes.contains { prefix in
        firstLine.starts(with: prefix)
            && (firstLine.count == prefix.count || firstLine[firstLine.startIndex + prefix.count] == UInt8(ascii: " "))
    }
}

extension Array where Element == UInt8 {
    fileprivate func ends(with suffix: [UInt8]) -> Bool {
        count >= suffix.count && self[(count - suffix.count)...].elementsEqual(suffix)
    }
}
