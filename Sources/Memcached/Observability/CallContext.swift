public import Logging
public import Tracing

/// What a client call carries to the connection that runs it: the caller's logger and span.
@usableFromInline
struct CallContext: Sendable {
    /// The logger for what the call logs; `nil` for the configuration's.
    @usableFromInline var logger: Logger?
    /// The call's span, which its command annotates with the key's server.
    var span: (any Span)?

    @usableFromInline
    init(logger: Logger?) {
        self.logger = logger
    }

    init(logger: Logger?, span: (any Span)?) {
        self.logger = logger
        self.span = span
    }

    var isEmpty: Bool { logger == nil && span == nil }

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
        handle.callSpan = context.span
        defer {
            handle.logger = logger
            handle.traceEnabled = traceEnabled
            handle.callSpan = nil
        }
        return try body()
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
    /// records the call's error. The one place client commands are traced.
    @inlinable
    func call<Result>(
        _ command: MemcachedCommand,
        key: String? = nil,
        keys: [String]? = nil,
        logger: Logger?,
        _ body: (CallContext) async throws -> Result
    ) async throws -> Result {
        guard let tracer = tracing.tracer else {
            return try await body(CallContext(logger: logger))
        }
        return try await traced(command, key: key, keys: keys, logger: logger, tracer: tracer, body)
    }

    /// The rest of ``call(_:key:keys:logger:_:)`` with a tracer.
    @usableFromInline
    func traced<Result>(
        _ command: MemcachedCommand,
        key: String?,
        keys: [String]?,
        logger: Logger?,
        tracer: any Tracer,
        _ body: (CallContext) async throws -> Result
    ) async throws -> Result {
        let span = tracer.startAnySpan(command.name, ofKind: .client)
        defer { span.end() }
        span.attributes["db.system.name"] = "memcached"
        span.attributes["db.operation.name"] = command.name
        if let keys, keys.count >= 2 {
            span.attributes["db.operation.batch.size"] = keys.count
        }
        if let onlyServer = tracing.onlyServer {
            onlyServer.annotate(span)
        }
        if tracing.recordsKeys {
            if let key {
                span.attributes["memcached.key"] = key
            }
            if let keys {
                span.attributes["memcached.keys"] = keys
            }
        }
        do {
            // A single-key command on a connection of its own names its server on the span.
            let spanForServer = key != nil && tracing.onlyServer == nil ? span : nil
            return try await body(CallContext(logger: logger, span: spanForServer))
        } catch {
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error))
            span.attributes["error.type"] = (error as? MemcachedError)?.code.description ?? "\(type(of: error))"
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
