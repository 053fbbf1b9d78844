import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A loopback TCP port that refuses every connection for as long as this value is open: the
/// fixture for "server is down".
///
/// The port stays bound (to a socket that never listens) until ``release()``, so the kernel
/// answers each connection attempt with a reset, and no other socket can take the port in the
/// meantime: not a memcached or scripted server another test starts on a kernel-chosen port
/// (which would turn the "down" server into a live one answering misses), and not the client's
/// own outgoing socket (which would connect to itself). The socket does not set
/// `SO_REUSEADDR`, so even a server that does cannot bind beside it.
///
/// Tests keep it open across the code under test with `defer { refusing.release() }`: Swift may
/// end an object's life right after its last use, and this one must outlive the address.
public final class RefusingLoopbackPort: Sendable {
    private let descriptor: Locked<Int32?>

    /// The refusing port.
    public let port: Int

    /// The port's address as `host:port`.
    public var address: String { "127.0.0.1:\(port)" }

    /// Binds a socket to a kernel-chosen port of 127.0.0.1 and holds it without listening.
    ///
    /// - Throws: ``MemcachedFixtureError/socketFailure(operation:errno:)`` if no socket can be bound.
    public init() throws {
        let (descriptor, port) = try bindLoopbackSocket(listening: false)
        self.descriptor = Locked(descriptor)
        self.port = port
    }

    deinit {
        release()
    }

    /// Releases the port; another socket may take it from then on. Calling it again does nothing.
    public func release() {
        let open = descriptor.withLock { descriptor in
            defer { descriptor = nil }
            return descriptor
        }
        if let open {
            close(open)
        }
    }
}

/// A TCP server on 127.0.0.1 that accepts connections and never answers — the
/// fixture for a hung server or a black-holed network path.
///
/// Accepted connections stay open, unread, until ``stop()``, so clients see their
/// requests vanish rather than a reset.
public final class SilentServer: Sendable {
    private let server: BackgroundLoopbackServer

    /// The port the server listens on.
    public var port: Int { server.port }

    /// The server's address as `host:port`.
    public var address: String { "127.0.0.1:\(port)" }

    /// How many connections the server has accepted so far.
    public var acceptedConnectionCount: Int { server.acceptedConnectionCount }

    /// Starts listening on a free loopback port.
    ///
    /// - Throws: ``MemcachedFixtureError/socketFailure(operation:errno:)`` if the socket
    ///   or the background thread cannot be created.
    public init() throws {
        server = try BackgroundLoopbackServer.start(behaviour: .silent)
    }

    deinit {
        server.stop()
    }

    /// Stops listening and closes every accepted connection. Calling it again does nothing.
    public func stop() {
        server.stop()
    }
}

/// A TCP server on 127.0.0.1 that answers each request line with bytes chosen by
/// a closure — the fixture for servers that misbehave, such as answering garbage
/// or hanging up mid-request.
///
/// Requests are split into lines at `\r\n`, so for storage commands the data block
/// arrives as a line of its own. Each line goes to the responder without its `\r\n`;
/// the responder's bytes are sent back as they are (an empty array sends nothing),
/// and `nil` closes that connection.
///
/// ```swift
/// let server = try ScriptedServer { line in
///     line.hasPrefix("get ") ? Array("VALUE garbage\r\n".utf8) : nil
/// }
/// ```
public final class ScriptedServer: Sendable {
    private let server: BackgroundLoopbackServer

    /// The port the server listens on.
    public var port: Int { server.port }

    /// The server's address as `host:port`.
    public var address: String { "127.0.0.1:\(port)" }

    /// How many connections the server has accepted so far.
    public var acceptedConnectionCount: Int { server.acceptedConnectionCount }

    /// Starts listening on a free loopback port.
    ///
    /// - Parameter responder: Called on the server's thread with each request line
    ///   (without `\r\n`); returns the bytes to send back, or `nil` to close the connection.
    /// - Throws: ``MemcachedFixtureError/socketFailure(operation:errno:)`` if the socket
    ///   or the background thread cannot be created.
    public init(responder: @escaping @Sendable (String) -> [UInt8]?) throws {
        server = try BackgroundLoopbackServer.start(behaviour: .scripted(responder))
    }

    deinit {
        server.stop()
    }

    /// Stops listening and closes every connection. Calling it again does nothing.
    public func stop() {
        server.stop()
    }
}

/// A TCP server on 127.0.0.1 that starts answering a connection's first request and never
/// finishes — the fixture for a server that drips its reply, or one that keeps sending.
///
/// Once a connection has sent anything, the server sends `prefix`, then `unit` every `interval`,
/// for as long as the connection is open, and ignores everything else the client sends. Each
/// send arrives well within a client's per-wait timeout, so only a deadline for the whole call
/// ends the client's read.
///
/// ```swift
/// // A value announced as 100 bytes, delivered one byte every 100 ms:
/// let drip = try DripServer(prefix: Array("VALUE k 0 100 1\r\n".utf8), unit: Array("x".utf8))
/// // Values for ever:
/// let stream = try DripServer(unit: Array("VALUE k 0 1\r\nx\r\n".utf8), interval: .milliseconds(1))
/// ```
public final class DripServer: Sendable {
    private let server: BackgroundLoopbackServer

    /// The port the server listens on.
    public var port: Int { server.port }

    /// The server's address as `host:port`.
    public var address: String { "127.0.0.1:\(port)" }

    /// How many connections the server has accepted so far.
    public var acceptedConnectionCount: Int { server.acceptedConnectionCount }

    /// Starts listening on a free loopback port.
    ///
    /// - Parameters:
    ///   - prefix: Sent at once after a connection's first bytes.
    ///   - unit: Sent every `interval` after that; a unit the socket has no room for is skipped.
    ///   - interval: The time between two units.
    /// - Throws: ``MemcachedFixtureError/socketFailure(operation:errno:)`` if the socket
    ///   or the background thread cannot be created.
    public init(prefix: [UInt8] = [], unit: [UInt8], interval: Duration = .milliseconds(100)) throws {
        server = try BackgroundLoopbackServer.start(behaviour: .drip(prefix: prefix, unit: unit, interval: interval))
    }

    deinit {
        server.stop()
    }

    /// Stops listening and closes every connection. Calling it again does nothing.
    public func stop() {
        server.stop()
    }
}

/// The listening socket and accept loop behind ``SilentServer``, ``ScriptedServer`` and
/// ``DripServer``.
///
/// The loop runs on its own POSIX thread rather than in Swift concurrency, because
/// it blocks in `poll` and must keep working while tests block the cooperative pool.
/// `poll` wakes at least every 50 ms to notice ``stop()``, which also shuts the
/// listening socket down to wake it at once, then joins the thread — so when
/// ``stop()`` returns every socket is closed.
final class BackgroundLoopbackServer: Sendable {
    enum Behaviour: Sendable {
        /// Accept and hold connections, never read or write.
        case silent
        /// Answer each request line with the responder's bytes; `nil` closes the connection.
        case scripted(@Sendable (String) -> [UInt8]?)
        /// After a connection's first bytes, send `prefix`, then `unit` every `interval`.
        case drip(prefix: [UInt8], unit: [UInt8], interval: Duration)
    }

    let port: Int
    private let listeningDescriptor: Int32
    private let behaviour: Behaviour
    private let stopRequested = Atomic<Bool>(false)
    private let acceptedConnections = Atomic<Int>(0)
    private let lifecycle = Locked(Lifecycle())

    private struct Lifecycle {
        var thread: pthread_t?
        var listenerClosed = false
    }

    /// How long the loop sleeps in `poll` before re-checking for ``stop()``.
    private static let pollInterval: Int32 = 50

    /// How long one reply may take to send before the connection is dropped.
    private static let sendTimeout: Duration = .seconds(5)

    var acceptedConnectionCount: Int { acceptedConnections.load(ordering: .relaxed) }

    private init(listeningDescriptor: Int32, port: Int, behaviour: Behaviour) {
        self.listeningDescriptor = listeningDescriptor
        self.port = port
        self.behaviour = behaviour
    }

    /// Binds a listening socket on 127.0.0.1 and starts the loop thread.
    static func start(behaviour: Behaviour) throws -> BackgroundLoopbackServer {
        let (descriptor, port) = try bindLoopbackSocket(listening: true)
        setNonBlocking(descriptor)
        let server = BackgroundLoopbackServer(listeningDescriptor: descriptor, port: port, behaviour: behaviour)
        try server.startThread()
        return server
    }

    private func startThread() throws {
        let context = Unmanaged.passRetained(self).toOpaque()
        #if canImport(Glibc)
        var thread = pthread_t()
        #else
        var thread: pthread_t?
        #endif
        let result = pthread_create(
            &thread,
            nil,
            { context in
                // Optional on Linux, non-optional on Darwin; normalise before unwrapping.
                let rawContext: UnsafeMutableRawPointer? = context
                let server = Unmanaged<BackgroundLoopbackServer>.fromOpaque(rawContext!).takeRetainedValue()
                server.runLoop()
                return nil
            },
            context
        )
        guard result == 0 else {
            Unmanaged<BackgroundLoopbackServer>.fromOpaque(context).release()
            stop()
            throw MemcachedFixtureError.socketFailure(operation: "pthread_create", errno: result)
        }
        lifecycle.withLock { $0.thread = thread }
    }

    /// Stops the loop, joins its thread and closes every socket. Idempotent.
    func stop() {
        let thread = lifecycle.withLock { lifecycle -> pthread_t? in
            stopRequested.store(true, ordering: .releasing)
            if !lifecycle.listenerClosed {
                shutdown(listeningDescriptor, Int32(SHUT_RDWR))
            }
            defer { lifecycle.thread = nil }
            return lifecycle.thread
        }
        if let thread {
            if pthread_equal(thread, pthread_self()) != 0 {
                // Stopped from inside a responder: the loop ends after this
                // callback and cleans up itself; nobody is left to join it.
                pthread_detach(thread)
            } else {
                pthread_join(thread, nil)
            }
        }
        closeListener()
    }

    private func closeListener() {
        lifecycle.withLock { lifecycle in
            guard !lifecycle.listenerClosed else { return }
            close(listeningDescriptor)
            lifecycle.listenerClosed = true
        }
    }

    private func runLoop() {
        // Accepted descriptor → received bytes that do not form a complete line yet.
        var connections: [Int32: [UInt8]] = [:]
        // Dripping connections → when their next unit is due.
        var drips: [Int32: ContinuousClock.Instant] = [:]
        defer {
            for descriptor in connections.keys {
                close(descriptor)
            }
            closeListener()
        }
        while !stopRequested.load(ordering: .acquiring) {
            var entries = [pollfd(fd: listeningDescriptor, events: Int16(POLLIN), revents: 0)]
            var timeout = Self.pollInterval
            switch behaviour {
            case .silent:
                break
            case .scripted:
                entries += connections.keys.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            case .drip(let prefix, let unit, let interval):
                entries += connections.keys.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
                drip(&drips, in: &connections, prefix: prefix, unit: unit, interval: interval)
                if let next = drips.values.min() {
                    timeout = min(timeout, pollTimeout(until: next))
                }
            }
            let ready = poll(&entries, nfds_t(entries.count), timeout)
            guard ready > 0, !stopRequested.load(ordering: .acquiring) else { continue }

            let listenerEvents = entries[0].revents
            if listenerEvents & Int16(POLLIN) != 0 {
                guard acceptPendingConnections(into: &connections) else { return }
            } else if listenerEvents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 {
                return
            }
            switch behaviour {
            case .silent:
                break
            case .scripted(let responder):
                for entry in entries.dropFirst() where entry.revents != 0 {
                    serviceConnection(entry.fd, in: &connections, responder: responder)
                }
            case .drip:
                for entry in entries.dropFirst() where entry.revents != 0 {
                    discardInput(entry.fd, in: &connections, drips: &drips)
                }
            }
        }
    }

    /// Sends the units that are due; a connection's first unit follows its prefix.
    private func drip(
        _ drips: inout [Int32: ContinuousClock.Instant],
        in connections: inout [Int32: [UInt8]],
        prefix: [UInt8],
        unit: [UInt8],
        interval: Duration
    ) {
        let now = ContinuousClock.now
        for (descriptor, due) in drips where due <= now {
            // A first send: the prefix, due as soon as the first bytes came in.
            let first = connections[descriptor]?.isEmpty == false
            if first {
                connections[descriptor] = []
            }
            let bytes = first ? prefix + unit : unit
            let sent = bytes.withUnsafeBytes {
                send(descriptor, $0.baseAddress, $0.count, sendFlags | Int32(MSG_DONTWAIT))
            }
            if sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                close(descriptor)
                connections[descriptor] = nil
                drips[descriptor] = nil
                continue
            }
            drips[descriptor] = now + interval
        }
    }

    /// Reads and drops what a dripping connection sent; its first bytes start the drip.
    private func discardInput(
        _ descriptor: Int32,
        in connections: inout [Int32: [UInt8]],
        drips: inout [Int32: ContinuousClock.Instant]
    ) {
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        if count == 0 || (count < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            close(descriptor)
            connections[descriptor] = nil
            drips[descriptor] = nil
            return
        }
        if count > 0 && drips[descriptor] == nil {
            // Marks the prefix as pending (see `drip`), and makes the first send due now.
            connections[descriptor] = [1]
            drips[descriptor] = .now
        }
    }

    /// Accepts every queued connection.
    ///
    /// - Returns: `false` when the listening socket is no longer usable (it was shut down).
    private func acceptPendingConnections(into connections: inout [Int32: [UInt8]]) -> Bool {
        while true {
            let descriptor = accept(listeningDescriptor, nil, nil)
            if descriptor >= 0 {
                _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
                setNonBlocking(descriptor)
                connections[descriptor] = []
                acceptedConnections.add(1, ordering: .relaxed)
                continue
            }
            switch errno {
            case EAGAIN, EWOULDBLOCK, EINTR, ECONNABORTED, EMFILE, ENFILE:
                return true
            default:
                return false
            }
        }
    }

    /// Reads what `descriptor` has sent and answers each complete line.
    private func serviceConnection(
        _ descriptor: Int32,
        in connections: inout [Int32: [UInt8]],
        responder: @Sendable (String) -> [UInt8]?
    ) {
        func drop() {
            close(descriptor)
            connections[descriptor] = nil
        }
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        if count == 0 {
            return drop()
        }
        if count < 0 {
            if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                drop()
            }
            return
        }
        var pending = connections[descriptor] ?? []
        pending.append(contentsOf: chunk[..<count])
        let lineEnd: [UInt8] = [UInt8(ascii: "\r"), UInt8(ascii: "\n")]
        while let range = pending.firstRange(of: lineEnd) {
            let line = String(decoding: pending[..<range.lowerBound], as: UTF8.self)
            pending.removeSubrange(..<range.upperBound)
            guard let reply = responder(line) else { return drop() }
            guard sendAll(reply, to: descriptor, deadline: .now + Self.sendTimeout) else { return drop() }
        }
        connections[descriptor] = pending
    }
}
