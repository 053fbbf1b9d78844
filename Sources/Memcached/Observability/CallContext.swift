public import Logging
public import Tracing

/// What a client call carries to the connection that runs it: the caller's logger and span.
@usableFromInline
struct CallContext: Sendable {
    /// The logger for what the call logs; `nil` for the configuration's.
    @usableFromInline var logger: Logger?
    /// The call's span, which its command annotates with the key's server.
    var span: (any Span)?
    /// Whether the call's commands count in the metrics: not for the lock and the second read of
    /// a cache-aside lookup, which are the library's own commands, not the caller's.
    @usableFromInline var measured = true

    @usableFromInline
    init(logger: Logger?) {
        self.logger = logger
    }

    init(logger: Logger?, span: (any Span)?) {
        self.logger = logger
        self.span = span
    }

    /// A context for the library's own commands on behalf of a call: logged to its logger, not
    /// counted, no span of their own.
    static func unmeasured(logger: Logger?) -> CallContext {
        var context = CallContext(logger: logger)
        context.measured = false
        return context
    }

    @usableFromInline
    var isEmpty: Bool { logger == nil && span == nil && measured }

    /// `body`, run with this call's logger and span on the connection it is given.
    @usableFromInline
    func applied<Result>(
        to body: @escaping @Sendable (MemcachedConnection) throws -> Result
    ) -> @Sendable (MemcachedConnection) throws -> Result {
        guard !isEmpty else { return body }
        return { connection in try connection.withCallContext(self) { try body(connection) } }
    }
}

extension MemcachedConnection {
    /// Runs `body` with the call's logger and span on the handle, then restores the handle's own.
    @inline(__always)
    func withCallContext<Result>(_ context: CallContext, _ body: () throws -> Result) rethrows -> Result {
        guard !context.isEmpty else { return try body() }
        let (logger, traceEnabled) = (handle.logger, handle.traceEnabled)
        if let callLogger = context.logger {
            handle.logger = callLogger
            handle.traceEnabled = callLogger.logLevel <= .trace
        }
        let suspended = handle.metricsSuspended
        handle.callSpan = context.span
        handle.metricsSuspended = suspended || !context.measured
        defer {
            handle.logger = logger
            handle.traceEnabled = traceEnabled
            handle.callSpan = nil
            handle.metricsSuspended = suspended
        }
        guard let span = context.span else { return try body() }
        // The call's span is the current context of what its command logs on this thread, so
        // that a logger's metadata provider (a trace ID) sees it here too.
        return try InstrumentationContext.withValue(span.context) { try body() }
    }
}

/// A server as OpenTelemetry names it: `server.address` and, for TCP, `server.port`.
struct ServerAddress {
    var address: String
    var port: Int?

    /// Parses a server as ``MemcachedServer`` and libmemcached describe it: `host:port`,
    /// `[v6]:port` or `unix:/path`.
    init(_ server: String) {
        if server.hasPrefix("unix:") {
            address = String(server.dropFirst(5))
            return
        }
        guard let colon = server.lastIndex(of: ":"), let port = Int(server[server.index(after: colon)...]) else {
            address = server
            return
        }
        var host = server[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") {
            host = host.dropFirst().dropLast()
        }
        address = String(host)
        self.port = port
    }

    func annotate(_ span: any Span) {
        span.attributes["server.address"] = address
        if let port {
            span.attributes["server.port"] = port
        }
    }
}

extension MemcachedClient {
    /// Runs one command of the client as its caller's call: with the caller's `logger` for what
    /// it logs and, when tracing is on, in a span of its own (``MemcachedTracing``), which
    /// records the call's error. The one place client commands are traced; it also counts the
    /// failures that never reached a connection (``countFailure(_:keys:_:)``).
    ///
    /// - Parameters:
    ///   - key: The key of a single-key command.
    ///   - keyCount: The keys of a multi-key command.
    ///   - keys: The keys of a multi-key command, built only for a span that records them.
    @inlinable
    func call<Result>(
        _ command: MemcachedCommand,
        key: String? = nil,
        keyCount: Int = 1,
        keys: @autoclosure () -> [String] = [],
        logger: Logger?,
        _ body: (CallContext) async throws -> Result
    ) async throws -> Result {
        guard let tracer = tracing.tracer else {
            do {
                return try await body(CallContext(logger: logger))
            } catch {
                countFailure(command, keys: keyCount, error)
                throw error
            }
        }
        return try await traced(command, key: key, keyCount: keyCount, keys: keys, logger: logger, tracer: tracer, body)
    }

    /// Counts a failure of a call that never ran on a connection: the wait for one timed out,
    /// the client was closed, or the task was cancelled (which a command it interrupted leaves
    /// to this count). Failures of a command on a connection were counted there.
    @usableFromInline
    func countFailure(_ command: MemcachedCommand, keys: Int, _ error: any Error) {
        guard let metrics = pool.metrics else { return }
        switch error {
        case is CancellationError:
            break
        case let error as MemcachedError where error.code == .poolTimeout || error.code == .poolClosed:
            break
        default:
            return
        }
        metrics.countError(command, error, by: command.isMultiKey ? keys : 1)
    }

    /// The rest of ``call(_:key:keyCount:keys:logger:_:)`` with a tracer.
    @usableFromInline
    func traced<Result>(
        _ command: MemcachedCommand,
        key: String?,
        keyCount: Int,
        keys: () -> [String],
        logger: Logger?,
        tracer: any Tracer,
        _ body: (CallContext) async throws -> Result
    ) async throws -> Result {
        let span = tracer.startAnySpan(command.name, ofKind: .client)
        defer { span.end() }
        span.attributes["db.system.name"] = "memcached"
        span.attributes["db.operation.name"] = command.name
        if command.isMultiKey, keyCount >= 2 {
            span.attributes["db.operation.batch.size"] = keyCount
        }
        if let onlyServer = tracing.onlyServer {
            onlyServer.annotate(span)
        }
        if tracing.recordsKeys {
            if let key {
                span.attributes["memcached.key"] = key
            } else if command.isMultiKey {
                span.attributes["memcached.keys"] = keys()
            }
        }
        do {
            // A single-key command on a connection of its own names its server on the span.
            let spanForServer = key != nil && tracing.onlyServer == nil ? span : nil
            return try await body(CallContext(logger: logger, span: spanForServer))
        } catch {
            countFailure(command, keys: keyCount, error)
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error))
            span.attributes["error.type"] = CommandMetrics.errorLabel(error)
            throw error
        }
    }
}

/// A client's tracer, resolved once: `nil` when tracing is off.
@usableFromInline
struct ClientTracing: Sendable {
    @usableFromInline let tracer: (any Tracer)?
    let recordsKeys: Bool
    /// The server of a one-server configuration, which every span names.
    let onlyServer: ServerAddress?

    init(_ configuration: MemcachedConfiguration) {
        let tracer = configuration.tracing.tracer ?? InstrumentationSystem.tracer
        self.tracer = tracer is NoOpTracer ? nil : tracer
        recordsKeys = configuration.tracing.recordsKeys
        onlyServer =
            configuration.servers.count == 1 ? ServerAddress(configuration.servers[0].address.description) : nil
    }
}
