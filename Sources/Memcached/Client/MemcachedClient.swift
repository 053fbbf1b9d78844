/// A memcached client to share across tasks: a bounded pool of connections with an async API.
///
/// `MemcachedClient` is the type server code keeps, one per cluster, and calls from any number of
/// concurrent tasks (request handlers in Vapor, Hummingbird or a gRPC service). Each command
/// borrows one of up to ``Options/maximumConnections`` synchronous ``MemcachedConnection``s,
/// cloned from one configured template, and runs it on a thread the client owns, so the blocking
/// libmemcached call never occupies one of Swift's cooperative threads. A task that finds every
/// connection busy suspends (it blocks no thread) until one comes back, its task is cancelled, or
/// ``Options/connectionWaitTimeout`` passes.
///
/// ```swift
/// let client = try MemcachedClient(servers: ["127.0.0.1:11211"])
/// try await client.set("greeting", "hello", expiration: .seconds(60))
/// let greeting = try await client.get("greeting", as: String.self)   // "hello"
/// await client.close()
/// ```
///
/// Commands behave exactly as the ``MemcachedConnection`` method of the same name; values cross
/// to the client's threads, so they must be `Sendable`. Use ``withConnection(_:)`` to run several
/// commands on one connection without a thread hop between them.
///
/// A connection is lent to one task at a time. When a command fails in a way that may leave a
/// reply half read (a timeout, a read or write failure, a protocol error, a reply for another
/// key), the connection is freed instead of being lent again, and a fresh clone takes its place.
/// Failures that leave nothing unread keep it: a refused connection or a server marked dead (with
/// libmemcached's memory of the failing server), an invalid key, a value that does not decode.
///
/// Close the client with ``close()``, or add it to a `ServiceGroup`: it is a swift-service-lifecycle
/// `Service` whose ``run()`` closes it at graceful shutdown. A client that is deinitialized
/// without being closed frees its connections and stops its threads too.
///
/// See <doc:Concurrency> for which type to use when, and why the client owns its threads.
///
/// ## Topics
///
/// ### Essentials
/// - <doc:Concurrency>
///
/// ### Creating a client
/// - ``init(configuration:options:)``
/// - ``init(servers:options:)``
/// - ``Options``
/// - ``configuration``
/// - ``options``
///
/// ### Leasing a connection
/// - ``withConnection(_:)``
/// - ``taskExecutor``
///
/// ### Closing
/// - ``close()``
/// - ``run()``
///
/// ### Reading
/// - ``get(_:as:logger:)``
/// - ``get(_:as:orSet:loadTimeout:logger:load:)``
/// - ``getMulti(_:keyPrefix:as:logger:)``
/// - ``coalescedMultiGetLimit``
/// - ``gets(_:as:logger:)``
///
/// ### Writing
/// - ``set(_:_:expiration:compression:noReply:logger:)``
/// - ``setMulti(_:expiration:keyPrefix:compression:noReply:logger:)``
/// - ``add(_:_:expiration:compression:logger:)``
/// - ``replace(_:_:expiration:compression:logger:)``
/// - ``append(_:_:logger:)``
/// - ``prepend(_:_:logger:)``
/// - ``cas(_:_:token:expiration:compression:logger:)``
/// - ``touch(_:expiration:logger:)``
///
/// ### Deleting and counting
/// - ``delete(_:noReply:logger:)``
/// - ``deleteMulti(_:keyPrefix:noReply:logger:)``
/// - ``increment(_:by:logger:)``
/// - ``decrement(_:by:logger:)``
///
/// ### Servers
/// - ``flush(delay:logger:)``
/// - ``stats(_:logger:)``
/// - ``versions(logger:)``
/// - ``server(forKey:)``
public final class MemcachedClient: Sendable {
    /// How many connections the client keeps and how long a task waits for one.
    public struct Options: Sendable, Hashable {
        /// The most connections the client opens; also the number of threads it runs them on.
        ///
        /// Connections are created when needed, up to this many, and each holds one socket per
        /// server. memcached answers in microseconds, so a few connections carry many requests
        /// a second; raise it when commands wait on a slow network or when
        /// ``withConnection(_:)`` holds connections for long. Must be at least 1.
        /// The default is 8.
        public var maximumConnections = 8

        /// How long a command waits for a free connection before it fails with
        /// ``MemcachedError/Code/poolTimeout``.
        ///
        /// The wait covers only finding a connection, not the command itself, which
        /// ``MemcachedConfiguration/timeout`` bounds. `.zero` fails at once when every
        /// connection is busy. The default is 5 seconds: longer than one command's default
        /// timeout (3 seconds), so a burst behind a slow server is not failed early. Must not be
        /// negative.
        public var connectionWaitTimeout: Duration = .seconds(5)

        /// Whether reads that find every connection busy are served together: ``get(_:as:logger:)``,
        /// ``gets(_:as:logger:)`` and small ``getMulti(_:keyPrefix:as:logger:)`` calls (at most
        /// ``MemcachedClient/coalescedMultiGetLimit`` keys) waiting for a connection join a batch, which the next free connection reads
        /// with one multi-get (one round trip per server) before answering each caller with its
        /// own value, miss or error, decoded as its own type.
        ///
        /// A read never waits for a batch to fill: it waits only for a connection, as any command
        /// does, and with a connection free it runs alone. Reads of one key in a batch are fetched
        /// once. A server that fails fails only the reads of its keys; a cancelled caller leaves
        /// at once and the others are not disturbed. The default is `true`.
        public var coalescesReads = true

        /// Whether fire-and-forget writes that find every connection busy are sent together:
        /// with ``MemcachedConfiguration/noReply`` on (text protocol), ``set(_:_:expiration:compression:noReply:logger:)``
        /// and ``delete(_:noReply:logger:)`` calls waiting for a connection join the batch that reads
        /// join, and the next free connection sends them all with one flush, before the batch's
        /// reads. Each call returns once the write that carried it is done, as it would on a
        /// connection of its own.
        ///
        /// A write never waits for a batch to fill. The batch's writes share one
        /// ``MemcachedConfiguration/timeout``: a server that takes no bytes runs it out, and the
        /// writes not yet sent then fail too, as the keys of a `setMulti` do (until the server is
        /// marked down, ``MemcachedConfiguration/serverFailureLimit``). A failed flush fails every
        /// write of the batch, and a write that breaks a connection (or runs out of time) fails
        /// the writes buffered before it too: their bytes may have been lost with it, and a
        /// fire-and-forget write is never reported sent when that is not known. Without ``MemcachedConfiguration/noReply`` writes wait for
        /// their replies and are never batched. The default is `true`.
        public var coalescesWrites = true

        /// The most commands (reads and fire-and-forget writes) one coalesced batch serves
        /// (``coalescesReads``, ``coalescesWrites``); later commands start the next batch. Must be
        /// at least 1. The default is 64.
        public var maximumCoalescedCommands = 64

        /// Creates options with every field at its default.
        public init() {}
    }

    /// The configuration every pooled connection is cloned from.
    public let configuration: MemcachedConfiguration

    /// The pool's size and waiting limit.
    public let options: Options

    @usableFromInline
    let pool: ConnectionPool

    /// Whether ``set(_:_:expiration:compression:noReply:logger:)`` and ``delete(_:noReply:logger:)`` join
    /// batches: ``Options/coalescesWrites``, for a configuration whose writes skip their replies.
    let batchesWrites: Bool

    /// The cache-aside loads in progress, so that tasks missing the same key share one load.
    let loadFlights = LoadFlights()

    /// The tracer the commands' spans go to, resolved once (``MemcachedTracing``).
    @usableFromInline
    let tracing: ClientTracing

    /// Creates a client; no connection or socket is opened until the first command.
    ///
    /// The client starts ``Options/maximumConnections`` threads of its own for the blocking
    /// libmemcached calls.
    ///
    /// - Parameters:
    ///   - configuration: Servers, protocol, timeouts and coding choices, applied to every connection.
    ///   - options: The pool's size and waiting limit.
    /// - Throws: ``MemcachedError`` with code ``MemcachedError/Code/invalidConfiguration`` or
    ///   ``MemcachedError/Code/invalidServerSpecification`` when libmemcached refuses a setting or
    ///   an option is out of range.
    public init(configuration: MemcachedConfiguration, options: Options = Options()) throws {
        self.configuration = configuration
        self.options = options
        self.pool = try ConnectionPool(
            configuration: configuration,
            maximumConnections: options.maximumConnections,
            waitTimeout: options.connectionWaitTimeout,
            maximumBatchSize: options.maximumCoalescedCommands
        )
        batchesWrites = options.coalescesWrites && configuration.noReply && configuration.wireProtocol == .ascii
        tracing = ClientTracing(configuration)
    }

    /// Creates a client for servers written as strings, with every other setting at its default.
    ///
    /// - Parameters:
    ///   - servers: Server strings such as `"127.0.0.1:11211"`; see ``MemcachedServer``.
    ///   - options: The pool's size and waiting limit.
    /// - Throws: ``MemcachedError`` when a server string cannot be parsed.
    public convenience init(servers: [String], options: Options = Options()) throws {
        try self.init(configuration: MemcachedConfiguration(servers: servers), options: options)
    }

    /// Runs `body` with one pooled connection, for several commands in a row.
    ///
    /// `body` runs synchronously on one of the client's threads, where blocking is expected, and
    /// the connection goes back to the pool when it returns. Nothing else uses the connection
    /// meanwhile, so commands in `body` see each other's effects in order. Do not keep the
    /// connection after `body` returns, and do not wait in `body` for other work on the same
    /// client: with every connection leased, that work could never start.
    ///
    /// ```swift
    /// let stored = try await client.withConnection { connection in
    ///     guard let (visits, token) = try connection.gets("visits", as: Int.self) else {
    ///         return try connection.add("visits", 1)
    ///     }
    ///     return try connection.cas("visits", visits + 1, token: token)
    /// }
    /// ```
    ///
    /// If `body` throws an error that may leave the connection out of step with a server (or
    /// catches one), the connection is freed instead of returned. Cancelling the task while it
    /// waits for a connection ends the wait. Cancelling it while `body` runs interrupts the
    /// command in flight (its sockets are shut down and the connection is freed) and makes every
    /// later command in `body` throw `CancellationError` before sending anything; `body` itself
    /// runs to its end, and when it throws, the call throws `CancellationError`.
    ///
    /// - Parameter body: The work to do with the connection.
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws; ``MemcachedError`` with code
    ///   ``MemcachedError/Code/poolTimeout`` when no connection became free in time, or
    ///   ``MemcachedError/Code/poolClosed`` after ``close()``; `CancellationError` when the task
    ///   was cancelled before `body` started, or while it ran and `body` threw.
    public func withConnection<Result: Sendable>(
        _ body: @escaping @Sendable (MemcachedConnection) throws -> Result
    ) async throws -> Result {
        try await pool.withConnection(body)
    }

    /// Runs one command of the client on a pooled connection, with its call's logger and span.
    @usableFromInline
    func withConnection<Result: Sendable>(
        _ context: CallContext,
        _ body: @escaping @Sendable (MemcachedConnection) throws -> Result
    ) async throws -> Result {
        try await pool.withConnection(context.applied(to: body))
    }

    /// Threads of the client's own on which tasks can run, so that their commands run on the
    /// calling thread instead of being handed to another one.
    ///
    /// A command awaited on Swift's cooperative pool hands its blocking libmemcached call to one
    /// of the client's threads and is resumed on a cooperative thread: two thread hand-offs that
    /// cost more client CPU than a loopback round trip. A task that prefers this executor runs on
    /// a thread where blocking is expected, so a command that finds a connection free runs right
    /// there and returns without suspending:
    ///
    /// ```swift
    /// try await withTaskExecutorPreference(client.taskExecutor) {
    ///     for key in keys {
    ///         let value = try await client.get(key, as: String.self)   // no hand-off
    ///         // ...
    ///     }
    /// }
    /// ```
    ///
    /// Use it for tasks that mostly talk to memcached, such as a worker draining a queue. The
    /// executor has one thread per connection (``Options/maximumConnections``), started at its
    /// first job: a command blocks the thread it runs on for its round trip, so other tasks
    /// preferring the executor wait for a thread meanwhile; keep CPU-heavy work and waits on
    /// other services off it. A command that finds every connection busy suspends as anywhere
    /// else (a read may join a coalesced batch) and resumes on one of these threads. The threads
    /// stop when the client closes; jobs after that run on Dispatch's threads, where every command
    /// fails with ``MemcachedError/Code/poolClosed``. Deadlines, cancellation and the pool's
    /// rules are the same on every executor.
    public var taskExecutor: any TaskExecutor {
        pool.taskExecutor
    }

    /// Closes the client: fails waiting and later calls, frees every connection, stops the threads.
    ///
    /// Tasks waiting for a connection, and every call made after this one starts, fail at once
    /// with ``MemcachedError/Code/poolClosed``. Idle connections are freed at once; connections in
    /// use finish their command, which ends by its deadline (``MemcachedConfiguration/timeout``
    /// from its start), and are freed as they come back. `close()` returns when every libmemcached handle is freed and the client's
    /// threads have stopped. Calling it again waits for the first call to finish.
    public func close() async {
        await pool.close()
    }
}
