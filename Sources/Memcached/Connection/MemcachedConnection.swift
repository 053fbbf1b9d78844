import Logging

/// A synchronous memcached client: one libmemcached handle with a connection to each server.
///
/// `MemcachedConnection` plays python-memcached's `memcache.Client`: the whole command set, many
/// servers at once, automatic value coding. Every call blocks its thread until the servers answer
/// or ``MemcachedConfiguration/timeout`` passes. It is the fastest way to talk to memcached and the
/// right type for scripts, command-line tools and single-threaded code.
///
/// A connection is not thread-safe (libmemcached's handle is not) and therefore not `Sendable`:
/// use it from one thread or task at a time.
///
/// ```swift
/// let connection = try MemcachedConnection(servers: ["127.0.0.1:11211"])
/// try connection.set("greeting", "hello", expiration: .seconds(60))
/// let greeting = try connection.get("greeting", as: String.self)   // "hello"
/// ```
///
/// The libmemcached handle is freed when the connection is deinitialized, or at once by
/// ``close()``.
///
/// ## Topics
///
/// ### Creating a connection
/// - ``init(configuration:)``
/// - ``init(servers:)``
/// - ``close()``
/// - ``disconnect()``
///
/// ### Reading
/// - ``get(_:as:)``
/// - ``getMulti(_:keyPrefix:as:)``
/// - ``getMulti(_:keyPrefix:forEachHit:)``
/// - ``gets(_:as:)``
///
/// ### Writing
/// - ``set(_:_:expiration:compression:noReply:)``
/// - ``setMulti(_:expiration:keyPrefix:compression:noReply:)``
/// - ``add(_:_:expiration:compression:)``
/// - ``replace(_:_:expiration:compression:)``
/// - ``append(_:_:)``
/// - ``prepend(_:_:)``
/// - ``cas(_:_:token:expiration:compression:)``
/// - ``touch(_:expiration:)``
///
/// ### Deleting and counting
/// - ``delete(_:noReply:)``
/// - ``deleteMulti(_:keyPrefix:noReply:)``
/// - ``increment(_:by:)``
/// - ``decrement(_:by:)``
///
/// ### Servers
/// - ``flush(delay:)``
/// - ``stats(_:)``
/// - ``versions()``
/// - ``server(forKey:)``
public final class MemcachedConnection {
    let handle: Handle

    /// The configuration the connection was created with.
    public let configuration: MemcachedConfiguration

    /// The configuration's coding choices, built once for every value this connection codes.
    @usableFromInline
    let codingContext: MemcachedCodingContext

    /// Creates a connection; sockets open lazily, on each server's first command.
    ///
    /// - Parameter configuration: Servers, protocol, timeouts and coding choices.
    /// - Throws: ``MemcachedError`` with code ``MemcachedError/Code/invalidConfiguration`` or
    ///   ``MemcachedError/Code/invalidServerSpecification`` when libmemcached refuses a setting.
    public init(configuration: MemcachedConfiguration) throws {
        self.configuration = configuration
        self.codingContext = MemcachedCodingContext(
            objectCoder: configuration.objectCoder,
            flagProfile: configuration.flagProfile
        )
        self.handle = try Handle(configuration: configuration)
    }

    /// Wraps a handle, such as a clone made for a pool.
    init(handle: Handle) {
        self.configuration = handle.configuration
        self.codingContext = MemcachedCodingContext(
            objectCoder: handle.configuration.objectCoder,
            flagProfile: handle.configuration.flagProfile
        )
        self.handle = handle
    }

    /// Creates a connection to servers written as strings, with every other setting at its default.
    ///
    /// - Parameter servers: Server strings such as `"127.0.0.1:11211"`; see ``MemcachedServer``.
    /// - Throws: ``MemcachedError`` when a server string cannot be parsed.
    public convenience init(servers: [String]) throws {
        try self.init(configuration: MemcachedConfiguration(servers: servers))
    }

    /// Closes every socket and frees the libmemcached handle now, instead of at deinitialization.
    ///
    /// Every later command throws ``MemcachedError/Code/connectionClosed``. Calling `close()`
    /// again does nothing.
    public func close() {
        handle.close()
    }

    /// Closes every server's socket, as python-memcached's `disconnect_all()`; the next command
    /// reconnects.
    ///
    /// The corresponding C function is `memcached_quit`.
    public func disconnect() {
        handle.disconnect()
    }

    // MARK: - State, for the pool

    /// What ``isInStep(since:after:)`` compares: how often the connection has reset its sockets.
    var stepMark: Int { handle.connectionResets }

    /// The deadline of the connection's calls, which a lease's cancellation interrupts.
    var callDeadline: CallDeadline { handle.deadline }

    /// Whether the connection can carry another caller's commands after some ran on it: it is
    /// open, reset no socket since `mark` (an error a caller caught, a per-server failure
    /// reported as a value, a call its deadline or cancellation stopped), and `failure`, when
    /// there is one, cannot have left a reply half read (a timeout, a read or write failure, a
    /// protocol error, a reply for another key can).
    func isInStep(since mark: Int, after failure: (any Error)?) -> Bool {
        guard handle.pointer != nil, handle.connectionResets == mark else { return false }
        if let error = failure as? MemcachedError, Handle.mayLeaveReplyUnread(error.code) {
            return false
        }
        return true
    }

    // MARK: - Keys

    /// Validates a key and calls `body` with its bytes, without copying a native string.
    @inline(__always)
    func withKey<R>(_ key: String, _ body: (PreparedKey) throws -> R) throws -> R {
        var contiguous = key
        return try contiguous.withUTF8 { bytes in
            try validateKey(bytes, key: key)
            return try body(PreparedKey(bytes: bytes, key: key))
        }
    }

    // MARK: - Values

    /// Encodes a value, compresses it as `compression` says, and checks the size limits.
    @inline(__always)
    func payload(
        key: String,
        compression: MemcachedCompression,
        _ encode: () throws -> MemcachedPayload
    ) throws -> MemcachedPayload {
        let threshold = try compression.threshold(configuration, key: key)
        var payload: MemcachedPayload
        do {
            payload = try encode()
        } catch let error as MemcachedError {
            throw error.with(key: key)
        } catch {
            throw MemcachedError(code: .unencodableValue, message: "cannot encode the value: \(error)", key: key)
        }
        // Checked before compressing: a value that inflates past the read cap could be stored but
        // never read back, by this client or by one configured like it.
        guard payload.bytes.count <= configuration.maximumReceivedValueLength else {
            throw MemcachedError(
                code: .valueTooLarge,
                message: "the encoded value is \(payload.bytes.count) bytes; no read could return more than "
                    + "maximumReceivedValueLength, \(configuration.maximumReceivedValueLength)",
                key: key
            )
        }
        if let threshold, payload.bytes.count > threshold,
            payload.flags.isDisjoint(with: [.integer, .long, .compressed]),
            let compressed = Compression.compress(payload.bytes)
        {
            payload.bytes = compressed
            payload.flags.insert(.compressed)
        }
        guard payload.bytes.count <= configuration.maximumValueLength else {
            throw MemcachedError(
                code: .valueTooLarge,
                message:
                    "the encoded value is \(payload.bytes.count) bytes; the limit is \(configuration.maximumValueLength)",
                key: key
            )
        }
        return payload
    }

    /// Decompresses a fetched value when flagged, then decodes it; errors carry the key.
    @inline(__always)
    func decode<Value>(
        _ item: FetchedItem,
        key: String,
        _ decode: (UnsafeRawBufferPointer, MemcachedFlags) throws -> Value
    ) throws -> Value {
        var flags = MemcachedFlags(rawValue: item.flags)
        do {
            if flags.contains(.compressed) {
                flags.remove(.compressed)
                let bytes = try Compression.decompress(item.value, limit: configuration.maximumReceivedValueLength)
                return try bytes.withUnsafeBytes { try decode($0, flags) }
            }
            return try decode(item.value, flags)
        } catch {
            throw Self.decodingFailure(error, key: key)
        }
    }

    /// The error of a value that did not decode: a ``MemcachedError`` the decoder threw, with the
    /// key, or ``MemcachedError/Code/undecodableValue`` around any other error.
    static func decodingFailure(_ error: any Error, key: String) -> MemcachedError {
        if let error = error as? MemcachedError {
            return error.with(key: key)
        }
        return MemcachedError(code: .undecodableValue, message: "cannot decode the value: \(error)", key: key)
    }

    // MARK: - Instrumentation

    /// Runs one call of `command`, the one place every command is logged and measured: logs it at
    /// trace level (its name and key count, never keys or values), and, with metrics on, counts
    /// its outcomes (``CommandResult``) or its error and records its time. For a single-key
    /// command (`key`), the key's server is named in the metrics (when they label servers) and on
    /// the caller's span (``Handle/callSpan``), once the command is done.
    @inline(__always)
    func instrumented<Result: CommandResult>(
        _ command: MemcachedCommand,
        key: String? = nil,
        keys: Int = 1,
        _ body: () throws -> Result
    ) throws -> Result {
        if handle.traceEnabled {
            handle.logger.trace("memcached command", metadata: ["command": "\(command.name)", "keys": "\(keys)"])
        }
        guard let metrics = handle.metrics, !handle.metricsSuspended else {
            guard handle.callSpan != nil else { return try body() }
            return try withServerOnSpan(key: key, body)
        }
        return try measured(command, key: key, keys: keys, metrics: metrics, body)
    }

    /// The rest of ``instrumented(_:key:keys:_:)`` with metrics on: out of line, so that the
    /// commands' code stays small when they are off.
    @inline(never)
    private func measured<Result: CommandResult>(
        _ command: MemcachedCommand,
        key: String?,
        keys: Int,
        metrics: CommandMetrics,
        _ body: () throws -> Result
    ) throws -> Result {
        let start = DeadlineClock.precise()
        let result: Swift.Result<Result, any Error>
        do {
            result = .success(try withServerOnSpan(key: key, body))
        } catch {
            result = .failure(error)
        }
        let elapsed = DeadlineClock.precise() &- start
        metrics.recordCall(command, keys: keys, nanoseconds: Int64(clamping: elapsed))
        switch result {
        case .success(let value):
            let server = metrics.labelsServers ? key.flatMap { serverName(ofKey: $0, after: nil) } : nil
            value.record(command, keys: keys, in: metrics, server: server)
        case .failure(let error):
            // A client call whose task was cancelled counts its cancellation itself, once
            // (``MemcachedClient/call(_:key:keyCount:keys:logger:_:)``).
            guard !handle.deadline.isCancelled else { break }
            let server = metrics.labelsServers ? key.flatMap { serverName(ofKey: $0, after: error) } : nil
            metrics.countError(command, error, by: command.isMultiKey ? keys : 1, server: server)
        }
        return try result.get()
    }

    /// Runs `body`, then, when the caller has a span and the command has one key, names the
    /// key's server on it (`server.address`, `server.port`), whether the command succeeded or not.
    private func withServerOnSpan<Result>(key: String?, _ body: () throws -> Result) throws -> Result {
        guard let span = handle.callSpan, let key else { return try body() }
        do {
            let result = try body()
            serverName(ofKey: key, after: nil).map { ServerAddress($0).annotate(span) }
            return result
        } catch {
            serverName(ofKey: key, after: error).map { ServerAddress($0).annotate(span) }
            throw error
        }
    }

    /// The server a command's key maps to, as `host:port`: the one its error names, or the key's
    /// by the hash; `nil` for a key that failed the checks, which names no server.
    private func serverName(ofKey key: String, after error: (any Error)?) -> String? {
        if let error = error as? MemcachedError {
            if let server = error.server { return server }
            if error.code.isInvalidKey { return nil }
        }
        var key = key
        return key.withUTF8 { handle.serverDescription(forKey: $0) }
    }
}

@available(*, unavailable, message: "A MemcachedConnection is used by one thread at a time; share a pool instead.")
extension MemcachedConnection: Sendable {}

extension MemcachedError {
    func with(key: String) -> MemcachedError {
        var error = self
        if error.key == nil {
            error.key = key
        }
        return error
    }
}
