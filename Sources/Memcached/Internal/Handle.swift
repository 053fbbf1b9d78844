internal import CLibMemcached
import Logging
import Tracing

/// The one owner of a libmemcached `memcached_st` and its reusable `memcached_result_st`.
///
/// A `memcached_st` is not thread-safe (libmemcached's documentation: one handle per thread), so a
/// `Handle` is used by one caller at a time: a ``MemcachedConnection`` owns exactly one. It is
/// freed in `deinit`, or earlier by ``close()``; every use after `close()` throws
/// `connectionClosed` instead of touching freed memory.
///
/// Its concerns live in one file each: the handle's lifetime, its results and the guard against
/// commands from caller code in the middle of a read here; setting it up from the configuration
/// (`Handle+Setup.swift`); which servers a call may use and what failures count against them
/// (`Handle+FailurePolicy.swift`); each call's deadline (`Handle+Deadline.swift`); errors
/// (`Handle+Errors.swift`); and the commands (`Handle+Commands.swift`).
final class Handle {
    /// The C handle, in memory this object allocated (see ``ReplyMemory``); `nil` once freed.
    private(set) var pointer: UnsafeMutablePointer<memcached_st>?

    /// Reused by every multi-key fetch, so reading N values allocates no result structs.
    private var result: UnsafeMutablePointer<memcached_result_st>?

    /// Where a single-key read reads the rest of its reply (`END`, or a flood of extra items), so
    /// that the value in ``result`` stays intact until the reply is known to be whole.
    private var scratch: UnsafeMutablePointer<memcached_result_st>?

    let configuration: MemcachedConfiguration

    /// Where the handle logs: the configuration's logger, or a call's own for the length of the
    /// call (``MemcachedConnection/withCallContext(_:_:)``).
    var logger: Logger

    /// Cached with ``logger``: checking the log level on every command would cost an existential call.
    var traceEnabled: Bool

    /// The metrics every connection of one client (or one standalone connection) records to;
    /// `nil` when they would go nowhere (``CommandMetrics/make(_:)``).
    let metrics: CommandMetrics?

    /// The span of the client call running on this handle, which its command annotates with the
    /// key's server; `nil` outside a traced call.
    var callSpan: (any Span)?

    /// Whether the command running now is left out of the metrics: one the library runs for
    /// itself, or a coalesced write, whose outcome its batch records once it is flushed.
    var metricsSuspended = false

    /// An object the C handle points into without owning it (the box of a custom hash function,
    /// whose pointer libhashkit copies into every clone and never releases). Every handle that
    /// carries the pointer holds the object, so it lives exactly as long as the last such handle.
    var keepAlive: AnyObject?

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

    /// The buckets of weighted modula servers, as ``applyBucketList(_:)`` built them: kept so a
    /// clone can set them again (`memcached_clone` does not copy them).
    var bucketMap: [UInt32]?

    // MARK: - Failure policy state (Handle+FailurePolicy.swift)

    /// Which servers are failing, shared with every clone (``ServerHealth``); `nil` for the
    /// short-lived handles of `stats` and `versions`.
    let health: ServerHealth?

    /// The server the call in flight talks to, when the call has one key and some server is
    /// failing: the call's outcome counts for it.
    var callServer: String?

    /// The ``ServerHealth/generation`` this handle's server list was built for, with
    /// ``MemcachedConfiguration/removeFailedServers``.
    var serverListGeneration = 0

    /// When the first server this handle's list leaves out is due for a probe: the list is
    /// rebuilt with it then.
    var leftOutUntil: ContinuousClock.Instant?

    /// Which servers the multi-key read in flight sent requests to, by position (see
    /// ``noteAskedServers()``); empty outside one.
    var askedServers: [Bool] = []

    /// The servers that had answered in full a multi-key read stopped by its deadline, noted
    /// before its connections were reset (``noteAnsweredServers()``); `nil` otherwise.
    var answeredServers: Set<String>?

    // MARK: - Call state (Handle+Deadline.swift)

    /// Whether a call's deadline is running: a command inside another (a store in `setMulti`)
    /// shares its deadline. Owner thread only.
    var inCall = false

    /// Whether each call checks the servers' sockets before it starts and libmemcached's read
    /// buffers after it ends (``ServerConnectionState``). Not for the short-lived handles of
    /// `stats` and `versions`, which connect for one command.
    let checksConnectionState: Bool

    /// The coarse-clock reading of the last call start whose sockets were polled.
    var lastCheckedTick: UInt64 = 0

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

    // MARK: - Lifetime

    /// - Parameter parentDeadline: The deadline of the call this handle works for, when it is a
    ///   short-lived handle of `stats` or `versions`: its cancellation is this one's.
    init(configuration: MemcachedConfiguration, parentDeadline: CallDeadline? = nil) throws(MemcachedError) {
        // Checked here as well as with the other behaviours: the deadline needs it first.
        let timeoutMilliseconds = try Self.milliseconds(configuration.timeout, "timeout")
        self.configuration = configuration
        self.logger = configuration.logger
        self.traceEnabled = configuration.logger.logLevel <= .trace
        // The short-lived handles of `stats` and `versions` work inside a call that is measured.
        self.metrics = parentDeadline == nil ? CommandMetrics.make(configuration.metrics) : nil
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

    /// Creates a handle with the same behaviours, servers and hash as `source`, with sockets of its
    /// own. The corresponding C function is `memcached_clone`.
    init(cloning source: Handle) throws(MemcachedError) {
        self.configuration = source.configuration
        self.logger = source.logger
        self.traceEnabled = source.traceEnabled
        self.metrics = source.metrics
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
        // memcached_clone copies the hashkit, and with it a continuum's or a bucket list's key
        // hash (held alive by keepAlive), but not the virtual buckets.
        if let map = source.bucketMap {
            bucketMap = map
            try setBuckets(map)
        }
    }

    /// Creates the reusable fetch results in memory this handle owns: libmemcached frees a result
    /// it allocated itself at the end of every fetch loop (`memcached_fetch_result` checks
    /// `memcached_is_allocated`), which would leave the handle holding a dangling pointer.
    private func createResults() throws(MemcachedError) {
        result = try createResult()
        scratch = try createResult()
        try preallocate(clm_handle_result(try live()))
    }

    /// A result in padded memory of ours (``ReplyMemory/allocateResult()``): libmemcached copies
    /// a reply's key into it without checking the key's length.
    private func createResult() throws(MemcachedError) -> UnsafeMutablePointer<memcached_result_st> {
        let storage = ReplyMemory.allocateResult()
        do {
            try initializeResult(storage)
        } catch {
            ReplyMemory.deallocateResult(storage)
            throw error
        }
        return storage
    }

    private func initializeResult(_ storage: UnsafeMutablePointer<memcached_result_st>) throws(MemcachedError) {
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
    func rebuildResult(_ result: UnsafeMutablePointer<memcached_result_st>) throws(MemcachedError) {
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
    private func preallocate(_ result: UnsafeMutablePointer<memcached_result_st>) throws(MemcachedError) {
        guard memcached_success(memcached_result_set_value(result, " ", 1)) else {
            throw MemcachedError(code: .memoryAllocationFailure, message: "cannot allocate a reply buffer")
        }
        memcached_result_reset(result)
    }

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
    func live() throws(MemcachedError) -> UnsafeMutablePointer<memcached_st> {
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

    @inline(__always)
    func liveResult() throws(MemcachedError) -> UnsafeMutablePointer<memcached_result_st> {
        guard let result else {
            throw MemcachedError(code: .connectionClosed, message: "the connection is closed")
        }
        return result
    }

    @inline(__always)
    func liveScratch() throws(MemcachedError) -> UnsafeMutablePointer<memcached_result_st> {
        guard let scratch else {
            throw MemcachedError(code: .connectionClosed, message: "the connection is closed")
        }
        return scratch
    }

    /// Closes every connection before or after a call, when a server said something outside a
    /// reply (``ServerConnectionState``): the next command reconnects instead of writing to a closed
    /// socket or reading bytes that were never its reply.
    @inline(never)
    func dropConnections(because reason: String) {
        logger.debug("memcached connections reset", metadata: ["reason": "\(reason)"])
        // Not counted in connectionResets: the handle is in step again, so a pool keeps it.
        if let pointer {
            memcached_quit(pointer)
        }
    }

    /// How many times ``resetConnections()`` has run: a pool compares it before and after a lease
    /// to notice trouble the lease holder caught and did not rethrow.
    private(set) var connectionResets = 0

    /// Whether ``flushWrites()`` leaves the buffered fire-and-forget writes in place, so that
    /// writes sent in a row go out together (``MemcachedConnection/sendEach(_:stopsOn:_:)``).
    var holdsWriteFlush = false

    /// Closes every server connection; the next command reconnects.
    func resetConnections() {
        connectionResets &+= 1
        if let pointer {
            memcached_quit(pointer)
        }
    }
}
