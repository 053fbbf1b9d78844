internal import CLibMemcached
import Logging

/// The one owner of a libmemcached `memcached_st` and its reusable `memcached_result_st`.
///
/// A `memcached_st` is not thread-safe (libmemcached's documentation: one handle per thread), so a
/// `Handle` is used by one caller at a time: a ``MemcachedConnection`` owns exactly one. It is
/// freed in `deinit`, or earlier by ``close()``; every use after `close()` throws
/// `connectionClosed` instead of touching freed memory.
final class Handle {
    /// The C handle, in memory this object allocated (see ``ReplyMemory``); `nil` once freed.
    private(set) var pointer: UnsafeMutablePointer<memcached_st>?
    /// Reused by every multi-key fetch, so reading N values allocates no result structs.
    private var result: UnsafeMutablePointer<memcached_result_st>?
    /// Where a single-key read reads the rest of its reply (`END`, or a flood of extra items), so
    /// that the value in ``result`` stays intact until the reply is known to be whole.
    private var scratch: UnsafeMutablePointer<memcached_result_st>?

    let configuration: MemcachedConfiguration
    let logger: Logger
    /// Cached once: checking the log level on every command would cost an existential call.
    let traceEnabled: Bool
    /// An object the C handle points into without owning it (the box of a custom hash function,
    /// whose pointer libhashkit copies into every clone and never releases). Every handle that
    /// carries the pointer holds the object, so it lives exactly as long as the last such handle.
    private(set) var keepAlive: AnyObject?
    /// Whether fire-and-forget writes are on: ``MemcachedConfiguration/noReply`` over the ASCII
    /// protocol. The binary protocol's quiet commands still answer errors, which would then be read
    /// as the reply to a later command, so it always waits for replies.
    let noReply: Bool
    /// Whether the handle speaks the binary protocol, where a single-key read goes through
    /// `memcached_get` (see ``fetchOne(key:command:_:)``).
    let binary: Bool
    /// The total deadline of the call in flight, which the watchdog enforces (see
    /// ``withDeadline(inheriting:ignoringCancellation:_:)``).
    let deadline: CallDeadline
    /// Whether a call's deadline is running: a command inside another (a store in `setMulti`)
    /// shares its deadline. Owner thread only.
    private var inCall = false
    /// Whether each call checks the servers' sockets before it starts and libmemcached's read
    /// buffers after it ends (``ServerConnectionState``). Not for the short-lived handles of
    /// `stats` and `versions`, which connect for one command.
    private let checksConnectionState: Bool
    /// The coarse-clock reading of the last call start whose sockets were polled.
    private var lastCheckedTick: UInt64 = 0
    /// Which servers are failing, shared with every clone (``ServerHealth``); `nil` for the
    /// short-lived handles of `stats` and `versions`.
    let health: ServerHealth?
    /// The server the call in flight talks to, when the call has one key and some server is
    /// failing: the call's outcome counts for it.
    private var callServer: String?
    /// The ``ServerHealth/generation`` this handle's server list was built for, with
    /// ``MemcachedConfiguration/removeFailedServers``.
    private var serverListGeneration = 0
    /// When the first server this handle's list leaves out is due for a probe: the list is
    /// rebuilt with it then.
    private var leftOutUntil: ContinuousClock.Instant?

    /// - Parameter parentDeadline: The deadline of the call this handle works for, when it is a
    ///   short-lived handle of `stats` or `versions`: its cancellation is this one's.
    init(configuration: MemcachedConfiguration, parentDeadline: CallDeadline? = nil) throws {
        // Checked here as well as with the other behaviours: the deadline needs it first.
        let timeoutMilliseconds = try Self.milliseconds(configuration.timeout, "timeout")
        self.configuration = configuration
        self.logger = configuration.logger
        self.traceEnabled = configuration.logger.logLevel <= .trace
        self.noReply = configuration.noReply && configuration.wireProtocol == .ascii
        self.binary = configuration.wireProtocol == .binary
        self.checksConnectionState = parentDeadline == nil && ServerConnectionState.isAvailable
        self.health =
            parentDeadline == nil
            ? ServerHealth(
                failureLimit: configuration.serverFailureLimit,
                downTime: configuration.retryTimeout,
                callTimeout: configuration.timeout
            ) : nil
        let storage = UnsafeMutablePointer<memcached_st>.allocate(capacity: 1)
        storage.initialize(to: memcached_st())
        guard memcached_create(storage) != nil else {
            storage.deallocate()
            throw MemcachedError(code: .memoryAllocationFailure, message: "memcached_create failed")
        }
        self.deadline = CallDeadline(handle: storage, timeout: timeoutMilliseconds * 1_000_000, parent: parentDeadline)
        self.pointer = storage
        // From here on, deinit frees whatever was created if a later step throws.
        guard configuration.maximumReceivedValueLength >= 0 else {
            throw MemcachedError(
                code: .invalidConfiguration,
                message: "maximumReceivedValueLength must not be negative"
            )
        }
        // First, before anything is allocated through the handle.
        guard
            ReplyMemory.install(
                on: storage,
                maximumValueLength: configuration.maximumReceivedValueLength,
                setupBytes: Self.setupAllocationBytes(configuration)
            )
        else {
            throw MemcachedError(code: .memoryAllocationFailure, message: "libmemcached refused the allocators")
        }
        try createResults()
        try applyBehaviors(configuration)
        try addServers(configuration.servers)
        try applyCredentials(configuration)
        try applyDeadServerRetry(configuration)
    }

    /// Lets an ejected server back in: with `MEMCACHED_BEHAVIOR_REMOVE_FAILED_SERVERS`, libmemcached
    /// retries an ejected server only when a dead timeout is set (`backoff_handling` in connect.cc);
    /// without one, a server that reached the failure limit stays out for good.
    private func applyDeadServerRetry(_ configuration: MemcachedConfiguration) throws {
        guard configuration.removeFailedServers else { return }
        let seconds = try Self.seconds(configuration.retryTimeout, "retryTimeout")
        let rc = memcached_behavior_set(try live(), MEMCACHED_BEHAVIOR_DEAD_TIMEOUT, max(seconds, 1))
        guard memcached_success(rc) else {
            throw MemcachedError(code: .invalidConfiguration, message: "libmemcached refused the dead timeout")
        }
    }

    private func applyCredentials(_ configuration: MemcachedConfiguration) throws {
        guard let credentials = configuration.credentials else { return }
        guard configuration.wireProtocol == .binary else {
            throw MemcachedError(
                code: .invalidConfiguration,
                message: "SASL authentication needs the binary protocol: set wireProtocol to .binary"
            )
        }
        // libmemcached runs sasl_client_init once per process itself, on first authentication.
        let rc = memcached_set_sasl_auth_data(try live(), credentials.username, credentials.password)
        guard memcached_success(rc) else {
            throw MemcachedError(
                code: .invalidConfiguration,
                message: "libmemcached refused the SASL credentials: \(lastErrorMessage(for: rc))"
            )
        }
    }

    /// Creates a handle with the same behaviours, servers and hash as `source`, with sockets of its
    /// own. The corresponding C function is `memcached_clone`.
    init(cloning source: Handle) throws {
        self.configuration = source.configuration
        self.logger = source.logger
        self.traceEnabled = source.traceEnabled
        self.keepAlive = source.keepAlive
        self.noReply = source.noReply
        self.binary = source.binary
        self.checksConnectionState = source.checksConnectionState
        self.health = source.health
        let sourcePointer = try source.live()
        let storage = UnsafeMutablePointer<memcached_st>.allocate(capacity: 1)
        // Zeroed: memcached_clone refuses storage whose "allocated" flag reads as set.
        storage.initialize(to: memcached_st())
        // The clone takes the source's allocators (and their limit) before it allocates anything.
        guard memcached_clone(storage, sourcePointer) != nil else {
            storage.deallocate()
            throw MemcachedError(code: .memoryAllocationFailure, message: "memcached_clone failed")
        }
        self.deadline = CallDeadline(handle: storage, timeout: source.deadline.timeout, parent: nil)
        self.pointer = storage
        try createResults()
        // memcached_clone copies the distribution but not libmemcached's weighted-ketama flag,
        // so a clone of a consistent handle built another continuum and mapped keys to other
        // servers than its source: setting the distribution again sets the flag and rebuilds it.
        if let map = source.bucketMap {
            bucketMap = map
            try setBuckets(map)
        } else if configuration.distribution.kind != .modula {
            let rc = memcached_behavior_set(
                storage,
                MEMCACHED_BEHAVIOR_DISTRIBUTION,
                UInt64(Self.distributionValue(configuration.distribution).rawValue)
            )
            guard memcached_success(rc) else {
                throw MemcachedError(code: .invalidConfiguration, message: "libmemcached refused the distribution")
            }
        }
    }

    /// A bound on libmemcached's largest allocation while it sets a handle up, which the receive
    /// cap must not refuse: the server list is one array of server entries (two 8 KiB I/O
    /// buffers and a host name each, about 17.6 KB; 24 KiB counted), and the consistent
    /// continuum holds 160 points of 16 bytes per server, plus 10 servers' worth of room.
    static func setupAllocationBytes(_ configuration: MemcachedConfiguration) -> Int {
        configuration.servers.count * (24 << 10) + (configuration.servers.count + 10) * 160 * 16
    }

    /// Creates the reusable fetch results in memory this handle owns: libmemcached frees a result
    /// it allocated itself at the end of every fetch loop (`memcached_fetch_result` checks
    /// `memcached_is_allocated`), which would leave the handle holding a dangling pointer.
    private func createResults() throws {
        result = try createResult()
        scratch = try createResult()
        try preallocate(builtInResult(try live()))
    }

    /// A result in padded memory of ours (``ReplyMemory/allocateResult()``): libmemcached copies
    /// a reply's key into it without checking the key's length.
    private func createResult() throws -> UnsafeMutablePointer<memcached_result_st> {
        let storage = ReplyMemory.allocateResult()
        do {
            try initializeResult(storage)
        } catch {
            ReplyMemory.deallocateResult(storage)
            throw error
        }
        return storage
    }

    private func initializeResult(_ storage: UnsafeMutablePointer<memcached_result_st>) throws {
        guard memcached_result_create(try live(), storage) != nil else {
            throw MemcachedError(code: .memoryAllocationFailure, message: "memcached_result_create failed")
        }
        do {
            try preallocate(storage)
        } catch {
            memcached_result_free(storage)
            throw error
        }
    }

    /// Makes a result whose key overran its buffer usable again, after the read is abandoned.
    ///
    /// The overrun runs forward from the key buffer, so it can reach the result's own flags (its
    /// last field) but not its value buffer, which comes before. If it set the "allocated" flag,
    /// libmemcached may already have freed the value buffer (its string then reads as not
    /// initialized) and tried to free the result, which ``ReplyMemory`` ignored. Otherwise the
    /// value buffer is freed here. Then the result is created anew in the same memory.
    func rebuildResult(_ result: UnsafeMutablePointer<memcached_result_st>) throws {
        result.pointee.options.is_allocated = false
        if result.pointee.value.options.is_initialized {
            memcached_result_free(result)
        }
        UnsafeMutableRawPointer(result).initializeMemory(
            as: UInt8.self,
            repeating: 0,
            count: MemoryLayout<memcached_result_st>.size
        )
        do {
            try initializeResult(result)
        } catch {
            // A zeroed result would make the next fetch dereference null inside libmemcached:
            // the handle is closed instead, and every later command throws connectionClosed.
            free()
            throw error
        }
    }

    /// Gives a result's value buffer its first block now, through ``ReplyMemory``'s guarded
    /// allocator: libmemcached's text parser writes just before that buffer when a server claims
    /// a length of -1 or -2, which the guard absorbs, but only if the buffer exists.
    private func preallocate(_ result: UnsafeMutablePointer<memcached_result_st>) throws {
        guard memcached_success(memcached_result_set_value(result, " ", 1)) else {
            throw MemcachedError(code: .memoryAllocationFailure, message: "cannot allocate a reply buffer")
        }
        memcached_result_reset(result)
    }

    /// The result `memcached_get` and libmemcached's own purges read into (`memcached_st.result`).
    func builtInResult(_ pointer: UnsafeMutablePointer<memcached_st>) -> UnsafeMutablePointer<memcached_result_st> {
        UnsafeMutableRawPointer(pointer).advanced(by: Self.builtInResultOffset)
            .assumingMemoryBound(to: memcached_result_st.self)
    }

    private static let builtInResultOffset = MemoryLayout<memcached_st>.offset(of: \.result)!

    deinit {
        free()
    }

    /// Frees the C handle now. Idempotent. Called from caller code in the middle of a read (see
    /// ``whileReading(_:)``), it waits until the read has finished.
    func close() {
        guard !readingReply else {
            pendingOnRead = .close
            return
        }
        free()
    }

    // MARK: - Caller code in the middle of a read

    /// What the caller asked for from inside ``whileReading(_:)``, done once the read is over.
    private enum PendingOnRead {
        case none, disconnect, close
    }

    /// Whether caller code (a decoder, a `forEachHit` closure) is running in the middle of reading
    /// a reply. It holds bytes in the handle's result buffer, and the rest of the reply is still on
    /// the sockets, so another command now would overwrite the one and throw away the other.
    private var readingReply = false
    private var pendingOnRead = PendingOnRead.none

    /// Runs caller code in the middle of a read: a command it starts on this handle throws
    /// ``MemcachedError/Code/connectionInUse``; a ``close()`` or ``disconnect()`` it asks for
    /// waits for ``finishRead()``.
    @inline(__always)
    func whileReading<R>(_ body: () throws -> R) rethrows -> R {
        readingReply = true
        defer { readingReply = false }
        return try body()
    }

    /// Does what caller code asked for during the read that just ended.
    @inline(__always)
    func finishRead() {
        guard pendingOnRead != .none else { return }
        let pending = pendingOnRead
        pendingOnRead = .none
        switch pending {
        case .close: free()
        case .disconnect: resetConnections()
        case .none: break
        }
    }

    /// Closes every socket (the connection's `disconnect()`); from caller code in the middle of a
    /// read, once the read has finished.
    func disconnect() {
        guard !readingReply else {
            if pendingOnRead == .none { pendingOnRead = .disconnect }
            return
        }
        try? withDeadline(ignoringCancellation: true) { resetConnections() }
    }

    private func free() {
        for result in [result, scratch] {
            if let result {
                memcached_result_free(result)
                ReplyMemory.deallocateResult(result)
            }
        }
        result = nil
        scratch = nil
        if let pointer {
            // memcached_free says `quit` to every connected server first: under a deadline,
            // so that a hung server cannot hold it, and before the watchdog forgets the handle.
            try? withDeadline(ignoringCancellation: true) { memcached_quit(pointer) }
            deadline.close()
            // The memory is ours (memcached_create was given it), so memcached_free leaves it.
            memcached_free(pointer)
            pointer.deallocate()
            self.pointer = nil
        }
    }

    /// The live handle, or the error every command throws after ``close()``.
    @inline(__always)
    func live() throws -> UnsafeMutablePointer<memcached_st> {
        guard let pointer else {
            throw MemcachedError(code: .connectionClosed, message: "the connection is closed")
        }
        guard !readingReply else {
            throw MemcachedError(
                code: .connectionInUse,
                message: "a command was started on this connection from code running in the middle of its read"
            )
        }
        return pointer
    }

    /// The live handle for a command about to be sent. Bytes still waiting in libmemcached's read
    /// buffer here are not a reply to this command (a server sent more than the last reply, within
    /// a call of several commands such as `setMulti`): the connections are dropped first, since
    /// libmemcached would read them as this command's reply.
    ///
    /// With `key`, a command for that key's server: when that server is down
    /// (``ServerHealth``), the command fails here, before anything is sent.
    ///
    /// `expectsReply` is `false` for a fire-and-forget write, whose success says nothing of the
    /// server: it does not clear the server's failure count.
    @inline(__always)
    func commandHandle(
        for key: PreparedKey? = nil,
        expectsReply: Bool = true
    ) throws
        -> UnsafeMutablePointer<memcached_st>
    {
        let pointer = try live()
        if checksConnectionState, ServerConnectionState.anyUnreadBytes(pointer) {
            dropConnections(because: "a server sent more than the reply that was read")
        }
        if let key, let health, _slowPath(!health.allHealthy) {
            try admit(key, health)
            if !expectsReply {
                callServer = nil
            }
        }
        return pointer
    }

    /// Fails a command for a server that is down; otherwise notes the server, whose health the
    /// command's outcome then updates.
    @inline(never)
    private func admit(_ key: PreparedKey, _ health: ServerHealth) throws {
        guard let server = serverDescription(forKey: key.bytes) else { return }
        callServer = server
        var admission = health.admit(server)
        if admission == .probe {
            admission = probe(server, health) ? .proceed : .refuse
        }
        if admission == .refuse {
            callServer = nil
            throw serverDownError(server, key: key.key, health)
        }
    }

    /// The error of a command, or of a multi-key read's key, for a server that is down.
    func serverDownError(_ server: String, key: String, _ health: ServerHealth) -> MemcachedError {
        MemcachedError(
            code: .serverMarkedDead,
            message: "the server failed \(health.failureLimit) calls in a row and is left alone until its "
                + "retry timeout (\(configuration.retryTimeout)) has passed",
            key: key,
            server: server
        )
    }

    /// Asks a server that was down for a key nobody stores, through a short-lived handle of its
    /// own in the configured protocol (a server started with `-B binary` answers nothing else), and
    /// reports the outcome: a hit or a miss both mean it answers. It runs inside the call that
    /// needed the server, within that call's deadline (a probe that takes it all fails the call
    /// with `timeout`), so only that one call waits, and no command of the caller's reaches a
    /// server that may still hang.
    ///
    /// - Parameter forOwnKey: Whether the call needs this server for its own key. Otherwise (a
    ///   list that leaves servers out, ``MemcachedConfiguration/removeFailedServers``) the probe
    ///   gets half the timeout, so that the call's own command still fits in its deadline.
    func probe(_ server: String, _ health: ServerHealth, forOwnKey: Bool = true) -> Bool {
        guard let configured = configuration.servers.first(where: { $0.address.description == server }) else {
            return false
        }
        var single = configuration(onlyFor: configured)
        if !forOwnKey {
            single.timeout = configuration.timeout / 2
            single.connectTimeout = min(configuration.connectTimeout, single.timeout)
        }
        let inherited = inCall ? deadline.current : nil
        let answered: Bool
        var quick = false
        do {
            let handle = try Handle(configuration: single, parentDeadline: deadline)
            defer { handle.close() }
            answered = try Self.probeKey.withUnsafeBufferPointer { bytes in
                try handle.withDeadline(inheriting: inherited) {
                    _ = try handle.fetchOne(key: PreparedKey(bytes: bytes, key: "probe"), command: "probe") { _ in () }
                    return true
                }
            }
        } catch {
            answered = false
            quick = (error as? MemcachedError)?.code != .timeout
        }
        logger.debug("memcached server probed", metadata: ["server": "\(server)", "answered": "\(answered)"])
        if answered {
            health.recordSuccess(server)
        } else {
            health.recordFailure(server, quick: quick)
        }
        return answered
    }

    /// The key a probe reads (libmemcached takes keys with their length).
    private static let probeKey: [UInt8] = Array("swift-libmemcached:probe".utf8)

    /// Probes one of the servers this handle's list leaves out whose down time has passed,
    /// unless another call is probing it (see ``probe(_:_:)``); a server that answers comes back
    /// into every handle's list at its next call.
    private func probeOneLeftOutServer(_ health: ServerHealth) {
        let now = ContinuousClock.now
        for server in configuration.servers {
            let name = server.address.description
            if health.admit(name, now: now) == .probe {
                _ = probe(name, health, forOwnKey: false)
                return
            }
        }
    }

    /// The servers a multi-key read leaves out: those that are down, less one whose down time has
    /// passed and which a probe just found answering (see ``probe(_:_:)``).
    func serversToLeaveOut(_ health: ServerHealth) -> Set<String> {
        var down = health.downServers().servers
        for name in down where health.admit(name) == .probe {
            if probe(name, health, forOwnKey: false) {
                down.remove(name)
            }
            break
        }
        return down
    }

    /// The key's server when it is one of `servers`: a multi-key read leaves the keys of servers
    /// that are down out, and reports them.
    func server(ofKey keyBytes: UnsafeBufferPointer<UInt8>, amongst servers: Set<String>) -> String? {
        guard let server = serverDescription(forKey: keyBytes), servers.contains(server) else { return nil }
        return server
    }

    /// Rebuilds the server list without the servers that are down, so their keys map to the
    /// others (``MemcachedConfiguration/removeFailedServers``); with every server down, keeps them
    /// all, and calls fail fast instead. Closes every connection of the handle.
    @inline(never)
    private func leaveOutDownServers(_ health: ServerHealth) throws {
        let pointer = try live()
        serverListGeneration = health.generation
        // Every server that is down stays out, due for a probe or not: it comes back when a
        // probe finds it answering (``ServerHealth`` changes its generation then).
        let (down, firstDue) = health.downServers()
        leftOutUntil = down.isEmpty ? nil : firstDue
        var servers = configuration.servers.filter { !down.contains($0.address.description) }
        if servers.isEmpty {
            servers = configuration.servers
        }
        logger.debug(
            "memcached server list rebuilt",
            metadata: ["left out": "\(down.sorted())", "servers": "\(servers.count)"]
        )
        memcached_quit(pointer)
        memcached_servers_reset(pointer)
        try addServers(servers)
    }

    @inline(__always)
    func liveResult() throws -> UnsafeMutablePointer<memcached_result_st> {
        guard let result else {
            throw MemcachedError(code: .connectionClosed, message: "the connection is closed")
        }
        return result
    }

    @inline(__always)
    func liveScratch() throws -> UnsafeMutablePointer<memcached_result_st> {
        guard let scratch else {
            throw MemcachedError(code: .connectionClosed, message: "the connection is closed")
        }
        return scratch
    }

    // MARK: - Call deadlines

    /// Runs one public call under its total deadline: ``MemcachedConfiguration/timeout`` from
    /// now, or `inherited` (a short-lived handle working for another call).
    ///
    /// A call inside another (a store in `setMulti`) shares the outer deadline. When the watchdog
    /// interrupted the call, its sockets are shut down and a reply may be half read, so the
    /// connections are reset, and a ``MemcachedError`` the call threw becomes
    /// ``deadlineError()``; a result the call completed before it was interrupted is returned.
    ///
    /// - Throws: `CancellationError` when the lease's task is cancelled, before anything is sent.
    @inline(__always)
    func withDeadline<R>(
        inheriting inherited: UInt64? = nil,
        ignoringCancellation: Bool = false,
        _ body: () throws -> R
    ) throws -> R {
        if inCall {
            return try body()
        }
        callServer = nil
        // Before the deadline starts, since the watchdog reads the server list during a call; not
        // when closing (`ignoringCancellation`), which must not rebuild anything.
        if let health, configuration.removeFailedServers, !ignoringCancellation,
            _slowPath(health.generation != serverListGeneration)
        {
            try leaveOutDownServers(health)
        }
        try deadline.begin(inheriting: inherited, ignoringCancellation: ignoringCancellation)
        inCall = true
        if let health, let due = leftOutUntil, !ignoringCancellation, _slowPath(ContinuousClock.now >= due) {
            // Inside the call's deadline: at most one server left out of the list, one probe.
            probeOneLeftOutServer(health)
        }
        if checksConnectionState, let pointer {
            // Once per tick of the coarse clock (4 ms here) that saw a call start: a connection used
            // within the tick is not idle, and back-to-back calls skip the system call.
            let tick = deadline.current &- deadline.timeout
            if tick != lastCheckedTick {
                lastCheckedTick = tick
                if ServerConnectionState.anyConnectionHasNews(pointer) {
                    dropConnections(because: "a server closed its connection or sent bytes while it was idle")
                }
            }
        }
        let result: R
        do {
            result = try body()
        } catch {
            throw endCall(throwing: error)
        }
        if checksConnectionState, let pointer, ServerConnectionState.anyUnreadBytes(pointer) {
            // libmemcached accepted a reply that was followed by more bytes: most likely the reply
            // was not the one asked for (a binary value packet read as an `incr` reply leaves
            // the real one behind), so the result is not trusted either.
            throw endCall(throwing: malformedReply("more bytes than the reply", command: "reply"))
        }
        if let server = callServer {
            health?.recordSuccess(server)
        }
        if _slowPath(deadline.wasInterrupted) {
            _ = endCall(throwing: nil)
        } else {
            inCall = false
            if _slowPath(deadline.end()) {
                // Interrupted after the call was complete: only its sockets are gone.
                resetConnections()
            }
        }
        return result
    }

    /// Ends a call that failed or was interrupted; returns the error to throw.
    @inline(never)
    private func endCall(throwing error: (any Error)?) -> any Error {
        let interrupted = deadline.wasInterrupted
        if interrupted {
            // Still inside the call, so the watchdog bounds the `quit`; the sockets it shut down
            // fail at once.
            resetConnections()
        }
        inCall = false
        let interruptedLate = deadline.end() && !interrupted
        if interruptedLate {
            resetConnections()
        }
        guard let error else { return CancellationError() }
        if interrupted || interruptedLate, error is MemcachedError {
            return deadlineError()
        }
        return error
    }

    /// Whether the call in flight has passed its deadline, was interrupted or cancelled: checked
    /// by the handle's own loops between steps, so that what remains fails at once.
    var isPastDeadline: Bool {
        inCall && deadline.isOver
    }

    /// The error of a call stopped at its deadline, or by the cancellation of its lease.
    func deadlineError() -> MemcachedError {
        if deadline.isCancelled {
            return MemcachedError(
                code: .timeout,
                message: "the call was cancelled and stopped; the connection was reset"
            )
        }
        return MemcachedError(
            code: .timeout,
            message: "the call did not finish within its deadline (the configured timeout, \(configuration.timeout)) "
                + "and was stopped; the connection was reset"
        )
    }

    // MARK: - Setup

    private func applyBehaviors(_ configuration: MemcachedConfiguration) throws {
        guard configuration.serverFailureLimit >= 1 else {
            throw MemcachedError(code: .invalidConfiguration, message: "serverFailureLimit must be at least 1")
        }
        guard configuration.maximumValueLength >= 0 else {
            throw MemcachedError(code: .invalidConfiguration, message: "maximumValueLength must not be negative")
        }
        let behaviors: [(memcached_behavior_t, UInt64, String)] = [
            (MEMCACHED_BEHAVIOR_SUPPORT_CAS, 1, "support CAS"),
            // Fire-and-forget writes are also batched: written when a batch ends or another
            // command needs the socket (see `flushWrites()`), so `setMulti` is one write per server.
            (MEMCACHED_BEHAVIOR_BUFFER_REQUESTS, noReply ? 1 : 0, "noReply"),
            (MEMCACHED_BEHAVIOR_TCP_NODELAY, configuration.tcpNoDelay ? 1 : 0, "tcpNoDelay"),
            (MEMCACHED_BEHAVIOR_BINARY_PROTOCOL, configuration.wireProtocol == .binary ? 1 : 0, "wireProtocol"),
            (
                MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT,
                try Self.milliseconds(configuration.connectTimeout, "connectTimeout"), "connectTimeout"
            ),
            (MEMCACHED_BEHAVIOR_POLL_TIMEOUT, try Self.milliseconds(configuration.timeout, "timeout"), "timeout"),
            (
                MEMCACHED_BEHAVIOR_RETRY_TIMEOUT, try Self.seconds(configuration.retryTimeout, "retryTimeout"),
                "retryTimeout"
            ),
            (MEMCACHED_BEHAVIOR_SERVER_FAILURE_LIMIT, UInt64(configuration.serverFailureLimit), "serverFailureLimit"),
            // libmemcached's own backoff (a server that failed a connect is skipped for the retry
            // timeout, per connection) never: ServerHealth decides for all connections at once,
            // and retries a server that refused connections after 100 ms.
            (MEMCACHED_BEHAVIOR_SERVER_TIMEOUT_LIMIT, UInt64(UInt32.max), "server timeout limit"),
            (
                MEMCACHED_BEHAVIOR_REMOVE_FAILED_SERVERS, configuration.removeFailedServers ? 1 : 0,
                "removeFailedServers"
            ),
            (
                MEMCACHED_BEHAVIOR_DISTRIBUTION, UInt64(Self.distributionValue(configuration.distribution).rawValue),
                "distribution"
            ),
        ]
        let pointer = try live()
        for (behavior, value, name) in behaviors {
            let rc = memcached_behavior_set(pointer, behavior, value)
            guard memcached_success(rc) else {
                throw MemcachedError(
                    code: .invalidConfiguration,
                    message: "libmemcached refused \(name) = \(value): \(lastErrorMessage(for: rc))"
                )
            }
        }
        // The hash goes last: setting MEMCACHED_BEHAVIOR_HASH after a custom function replaces it.
        try applyConfiguredHash()
    }

    private func applyConfiguredHash() throws {
        let pointer = try live()
        switch configuration.hash.kind {
        case .builtIn(let name, let value):
            let rc = memcached_behavior_set(pointer, MEMCACHED_BEHAVIOR_HASH, UInt64(value))
            guard memcached_success(rc) else {
                throw MemcachedError(
                    code: .invalidConfiguration,
                    message: "libmemcached refused hash \(name): \(lastErrorMessage(for: rc))"
                )
            }
        case .custom(let function):
            keepAlive = function
            try installCustomHash(function)
        }
    }

    /// Both consistent distributions use libmemcached's weighted continuum, which is libketama's;
    /// ``addServers(_:)`` gives every server weight 1 for ``MemcachedDistribution/consistent``.
    private static func distributionValue(_ distribution: MemcachedDistribution) -> memcached_server_distribution_t {
        switch distribution.kind {
        case .modula: MEMCACHED_DISTRIBUTION_MODULA
        case .consistent, .consistentWeighted: MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED
        }
    }

    /// libmemcached asserts (and so aborts the process) when a continuum has more servers.
    static let maximumConsistentServers = 100

    /// Converts a timeout for libmemcached's millisecond behaviours; rounds up so a sub-millisecond
    /// timeout does not become 0, which libmemcached reads as "fail at once".
    static func milliseconds(_ duration: Duration, _ name: String) throws -> UInt64 {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, duration > .zero else {
            throw MemcachedError(code: .invalidConfiguration, message: "\(name) must be positive")
        }
        // Checked before multiplying: `.seconds(Int64.max)` would overflow.
        guard seconds < Int64(Int32.max) / 1_000 + 1 else {
            throw MemcachedError(code: .invalidConfiguration, message: "\(name) is too long")
        }
        let millis = seconds * 1_000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        guard millis <= Int64(Int32.max) else {
            throw MemcachedError(code: .invalidConfiguration, message: "\(name) is too long")
        }
        return UInt64(millis)
    }

    /// Converts a duration for libmemcached's whole-second behaviours, rounding up.
    static func seconds(_ duration: Duration, _ name: String) throws -> UInt64 {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, duration >= .zero, seconds <= Int64(Int32.max) else {
            throw MemcachedError(
                code: .invalidConfiguration,
                message: "\(name) must be between 0 and \(Int32.max) seconds"
            )
        }
        return UInt64(seconds + (attoseconds > 0 ? 1 : 0))
    }

    /// Adds the servers the way the distribution reads weights: modula ignores libmemcached's
    /// weights, so a server of weight `w` is added `w` times in a row (python-memcached's bucket
    /// list); the consistent continuum takes the weight itself, or 1 for every server when the
    /// distribution is unweighted.
    private func addServers(_ servers: [MemcachedServer]) throws {
        let pointer = try live()
        let distribution = configuration.distribution.kind
        if distribution != .modula, servers.count > Self.maximumConsistentServers {
            throw MemcachedError(
                code: .invalidConfiguration,
                message:
                    "a consistent distribution takes at most \(Self.maximumConsistentServers) servers, not \(servers.count)"
            )
        }
        for server in servers {
            // The parser's range.
            guard (1...1_000).contains(server.weight) else {
                throw MemcachedError(
                    code: .invalidServerSpecification,
                    message: "server \(server) has a weight outside 1...1000"
                )
            }
            let weight = distribution == .consistentWeighted ? UInt32(clamping: server.weight) : 1
            try addServer(server, weight: weight, to: pointer)
        }
        if distribution == .modula, servers.contains(where: { $0.weight > 1 }) {
            try applyBucketList(servers)
        } else if bucketMap != nil {
            // Rebuilt without the weighted servers (removeFailedServers): plain modula again.
            bucketMap = nil
            let rc = memcached_behavior_set(
                pointer,
                MEMCACHED_BEHAVIOR_DISTRIBUTION,
                UInt64(MEMCACHED_DISTRIBUTION_MODULA.rawValue)
            )
            guard memcached_success(rc) else {
                throw MemcachedError(code: .invalidConfiguration, message: "libmemcached refused the distribution")
            }
            try applyConfiguredHash()
        }
    }

    /// The buckets of weighted modula servers, as ``applyBucketList(_:)`` built them: kept so a
    /// clone can set them again (`memcached_clone` does not copy them).
    private var bucketMap: [UInt32]?

    /// Maps keys to weighted servers as python-memcached does, without a server entry per unit.
    ///
    /// python-memcached lists each server `weight` times, in order, and picks
    /// `buckets[hash % buckets.count]`. libmemcached's modula has no weights (repeating entries
    /// costs a socket and 17 KB each: 100 servers of weight 1,000 took 1 GiB), but its virtual
    /// buckets map a bucket to a server: bucket `digest & (size - 1)`, a power of two. So the key
    /// hash becomes `hash % total weight` (a custom function around the configured hash), which
    /// is below the power of two, and bucket `b` maps to the server python-memcached's list holds
    /// at `b`.
    private func applyBucketList(_ servers: [MemcachedServer]) throws {
        let total = servers.reduce(0) { $0 + $1.weight }
        var map: [UInt32] = []
        map.reserveCapacity(total)
        for (index, server) in servers.enumerated() {
            map.append(contentsOf: repeatElement(UInt32(index), count: server.weight))
        }
        var size = 1
        while size < total { size <<= 1 }
        map.append(contentsOf: repeatElement(0, count: size - total))
        let kind = configuration.hash.kind
        let buckets = UInt32(total)
        let hash = CustomHashFunction(name: "\(configuration.hash) modulo \(total)") { bytes in
            CustomHashFunction.value(kind, bytes) % buckets
        }
        keepAlive = hash
        try installCustomHash(hash)
        bucketMap = map
        try setBuckets(map)
    }

    private func setBuckets(_ map: [UInt32]) throws {
        let rc = map.withUnsafeBufferPointer {
            memcached_bucket_set(try? live(), $0.baseAddress, nil, UInt32($0.count), 0)
        }
        guard memcached_success(rc) else {
            throw MemcachedError(
                code: .invalidConfiguration,
                message: "libmemcached refused the weighted server list: \(lastErrorMessage(for: rc))"
            )
        }
    }

    private func addServer(
        _ server: MemcachedServer,
        weight: UInt32,
        to pointer: UnsafeMutablePointer<memcached_st>
    ) throws {
        if let problem = server.problem {
            throw MemcachedError(code: .invalidServerSpecification, message: "server \(server): \(problem)")
        }
        let rc: memcached_return_t
        switch server.address {
        case .tcp(let host, let port):
            rc = memcached_server_add_with_weight(pointer, host, in_port_t(port), weight)
        case .unixSocket(let path):
            rc = memcached_server_add_unix_socket_with_weight(pointer, path, weight)
        }
        guard memcached_success(rc) else {
            throw MemcachedError(
                code: .invalidServerSpecification,
                message: "libmemcached refused server \(server): \(lastErrorMessage(for: rc))",
                server: server.description
            )
        }
    }

    // MARK: - Errors

    /// libmemcached's message for the handle's last error when it is this code, else the code's
    /// generic text.
    func lastErrorMessage(for rc: memcached_return_t) -> String {
        if let pointer, memcached_last_error(pointer) == rc, let message = memcached_last_error_message(pointer) {
            return Self.readable(String(cString: message))
        }
        return String(cString: memcached_strerror(nil, rc))
    }

    /// libmemcached's messages carry its handle's address and its own source location
    /// ("(0x55de…) CONNECTION FAILURE,  host: h:p -> ./src/libmemcached/get.cc:233"), which mean
    /// nothing to a caller and vary from run to run; keep the text between them.
    static func readable(_ message: String) -> String {
        var text = Substring(message)
        if text.hasPrefix("(0x"), let close = text.firstIndex(of: ")") {
            text = text[text.index(after: close)...]
        }
        if let location = text.firstRange(of: " -> ") {
            text = text[..<location.lowerBound]
        }
        return text.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
    }

    /// The server a key maps to, as `host:port` or a socket path.
    func serverDescription(forKey keyBytes: UnsafeBufferPointer<UInt8>) -> String? {
        guard let pointer, let base = keyBytes.baseAddress else { return nil }
        var rc = MEMCACHED_SUCCESS
        let instance = base.withMemoryRebound(to: CChar.self, capacity: keyBytes.count) {
            memcached_server_by_key(pointer, $0, keyBytes.count, &rc)
        }
        return instance.map(Self.describe)
    }

    static func describe(_ instance: OpaquePointer) -> String {
        let name = String(cString: memcached_server_name(instance))
        let port = memcached_server_port(instance)
        if port == 0 || name.hasPrefix("/") {
            return "unix:\(name)"
        }
        return name.contains(":") ? "[\(name)]:\(port)" : "\(name):\(port)"
    }

    /// Builds the error for a failed C call and resets the connections when the failure may have
    /// left a reply half-read.
    ///
    /// A connection that may be mid-response is never reused: peers shipped "get returned another
    /// key's value" bugs from exactly that. `memcached_quit` closes every server's socket (there is
    /// no public per-server reset in libmemcached 1.1.4); the next command reconnects.
    func failure(
        _ rc: memcached_return_t,
        command: StaticString,
        key: String? = nil,
        keyBytes: UnsafeBufferPointer<UInt8>? = nil,
        reset: Bool = false
    ) -> MemcachedError {
        let server = keyBytes.flatMap(serverDescription(forKey:))
        var error = MemcachedError(
            code: MemcachedError.Code(rawValue: Int(rc.rawValue)),
            message: lastErrorMessage(for: rc),
            key: key,
            server: server
        )
        // A failure after the deadline is most likely the watchdog's doing (the shut-down socket
        // reads as a lost connection): report what happened.
        let pastDeadline = isPastDeadline
        if pastDeadline {
            error.code = .timeout
            error.message = deadlineError().message
        }
        // A cancelled call says nothing of the server: it was stopped from this side.
        if let health, !deadline.isCancelled, ServerHealth.countsAgainstServer(error.code) {
            recordFailure(server: server, health, quick: error.code != .timeout)
        }
        if reset || pastDeadline || Self.mayLeaveReplyUnread(rc) {
            resetConnections()
        }
        logger.debug(
            "memcached command failed",
            metadata: [
                "command": "\(command)", "code": "\(error.code)", "server": "\(server ?? "-")",
                "message": "\(error.message)",
            ]
        )
        return error
    }

    /// Counts a failure against the server of the command's key, or, for a command of several
    /// keys, against every server that still owed a reply.
    ///
    /// `quick` says the server failed without keeping the call waiting (a refused, reset or
    /// closed connection, not a timeout): such a server costs nothing to try again soon (see
    /// ``ServerHealth``). It is the kind of failure, not the time it took, because on a loaded
    /// machine a refused connection can take as long as a quarter of the timeout to come back,
    /// which kept a restarted server out for the whole retry timeout.
    private func recordFailure(server: String?, _ health: ServerHealth, quick: Bool) {
        callServer = nil
        if let server {
            health.recordFailure(server, quick: quick)
        } else {
            chargeServersThatOweReplies(health, quick: quick)
        }
    }

    /// Which servers the multi-key read in flight sent requests to, by position (see
    /// ``noteAskedServers()``); empty outside one.
    private(set) var askedServers: [Bool] = []

    /// Notes which servers a multi-key read just sent requests to: those with replies pending.
    func noteAskedServers() {
        guard let pointer else { return }
        let count = Int(memcached_server_count(pointer))
        if askedServers.count != count {
            askedServers = Array(repeating: false, count: count)
        }
        for position in 0..<count {
            let instance = memcached_server_instance_by_position(pointer, UInt32(position))
            askedServers[position] = instance.map { memcached_server_response_count($0) > 0 } ?? false
        }
    }

    /// Counts a failed multi-key read against each server it asked that has not answered in
    /// full: one still owing replies (a timeout leaves the count) or whose socket libmemcached
    /// closed on an error (which zeroes it). Servers that finished keep their sockets.
    func chargeServersThatOweReplies(_ health: ServerHealth, quick: Bool = false) {
        guard let pointer, !deadline.isCancelled else { return }
        for position in askedServers.indices where askedServers[position] {
            guard let instance = memcached_server_instance_by_position(pointer, UInt32(position)) else { continue }
            let closed = ServerConnectionState.isAvailable && ServerConnectionState.descriptor(of: instance) == nil
            if memcached_server_response_count(instance) > 0 || closed {
                health.recordFailure(Self.describe(instance), quick: quick)
            }
        }
        forgetAskedServers()
    }

    func forgetAskedServers() {
        askedServers.withUnsafeMutableBufferPointer { $0.update(repeating: false) }
    }

    /// Clears the failure counts of the servers a multi-key read asked, once it read every reply,
    /// and counts a failure against those of `lost`, which hung up before their reply was whole.
    func creditAskedServers(_ health: ServerHealth, except lost: Set<String> = []) {
        guard let pointer else { return }
        for position in askedServers.indices where askedServers[position] {
            if let instance = memcached_server_instance_by_position(pointer, UInt32(position)) {
                let server = Self.describe(instance)
                if lost.contains(server) {
                    health.recordFailure(server, quick: true)
                } else {
                    health.recordSuccess(server)
                }
            }
        }
    }

    /// Whether a failure may leave bytes of a reply unread on some socket.
    ///
    /// Only failures that happen before any byte is exchanged (no connection, server disabled,
    /// a key refused) and the replies libmemcached reads to their end as expected negatives (not
    /// found, not stored, exists) leave the connection in step. Every other failure, error
    /// replies from the server included, counts: `SERVER_ERROR out of memory` or `CLIENT_ERROR`
    /// may be followed by bytes libmemcached never reads (a real memcached under `-M` sends such
    /// lines mid-stream, a hostile one anything), and a reconnect is cheap next to reading another
    /// command's reply.
    static func mayLeaveReplyUnread(_ rc: memcached_return_t) -> Bool {
        switch rc {
        case MEMCACHED_SUCCESS, MEMCACHED_END, MEMCACHED_NOTFOUND, MEMCACHED_NOTSTORED, MEMCACHED_DATA_EXISTS,
            MEMCACHED_STORED, MEMCACHED_DELETED, MEMCACHED_BUFFERED,
            MEMCACHED_HOST_LOOKUP_FAILURE, MEMCACHED_CONNECTION_FAILURE, MEMCACHED_SERVER_MARKED_DEAD,
            MEMCACHED_SERVER_TEMPORARILY_DISABLED, MEMCACHED_NO_SERVERS, MEMCACHED_INVALID_ARGUMENTS,
            MEMCACHED_BAD_KEY_PROVIDED, MEMCACHED_KEY_TOO_BIG, MEMCACHED_NOT_SUPPORTED:
            return false
        default:
            return true
        }
    }

    /// Whether an error a command threw means the handle may be out of step with a server: the
    /// failures ``mayLeaveReplyUnread(_:)`` names, and a reply for a key nobody asked for.
    /// ``MemcachedClient``'s pool discards such a handle instead of lending it again.
    static func mayLeaveReplyUnread(_ code: MemcachedError.Code) -> Bool {
        if code == .unexpectedKey {
            return true
        }
        return code.isLibmemcachedCode && mayLeaveReplyUnread(memcached_return_t(UInt32(code.rawValue)))
    }

    /// Closes every connection before or after a call, when a server said something outside a
    /// reply (``ServerConnectionState``): the next command reconnects instead of writing to a closed
    /// socket or reading bytes that were never its reply.
    @inline(never)
    private func dropConnections(because reason: String) {
        logger.debug("memcached connections reset", metadata: ["reason": "\(reason)"])
        // Not counted in connectionResets: the handle is in step again, so a pool keeps it.
        if let pointer {
            memcached_quit(pointer)
        }
    }

    /// How many times ``resetConnections()`` has run: a pool compares it before and after a lease
    /// to notice trouble the lease holder caught and did not rethrow.
    private(set) var connectionResets = 0

    /// Closes every server connection; the next command reconnects.
    func resetConnections() {
        connectionResets &+= 1
        if let pointer {
            memcached_quit(pointer)
        }
    }
}
