public import CoreMetrics
public import Tracing

/// Where a connection or client reports its commands as swift-metrics metrics, and how.
///
/// By default the metrics go to the process's bootstrapped backend (`MetricsSystem.factory` when
/// the connection or client is created). When none is bootstrapped, nothing is created or
/// recorded, so instrumentation then costs one branch per command.
///
/// The metrics, every one also carrying ``dimensions``:
///
/// | Metric | Kind | Dimensions | What it counts |
/// | --- | --- | --- | --- |
/// | `memcached_command_outcomes_total` | counter | `command`, `outcome`, `error` for errors, `server` when ``labelsServers`` | Outcomes: once per call of a single-key command, once per key of a multi-key one |
/// | `memcached_command_duration_seconds` | timer | `command` | Each call's time on its connection (a coalesced read: its batch's multi-get) |
/// | `memcached_keys_per_call` | recorder | `command` | Keys of each `get_multi`, `set_multi` and `delete_multi` |
/// | `memcached_pool_connections_open` | gauge | | A client's connections: idle, leased or being freed |
/// | `memcached_pool_connections_leased` | gauge | | Connections running a command or lent to ``MemcachedClient/withConnection(_:)`` |
/// | `memcached_pool_waiting_leases` | gauge | | Calls (and batches of coalesced commands) waiting for a connection |
/// | `memcached_pool_queued_commands` | gauge | | Coalesced commands waiting in batches |
/// | `memcached_pool_batch_commands` | recorder | | Commands served by each coalesced batch |
///
/// `command` is the memcached command: `get`, `gets`, `get_multi`, `set`, `add`, `replace`, `cas`,
/// `append`, `prepend`, `set_multi`, `touch`, `delete`, `delete_multi`, `incr`, `decr`,
/// `flush_all`, `stats` or `version`. `outcome` is one of:
/// - `hit` and `miss`: for reads, `incr` and `decr`, whether the key held a value; for `touch`,
///   `delete` and `delete_multi`, whether the key existed.
/// - `stored` and `not_stored`: for writes. A fire-and-forget write
///   (``MemcachedConfiguration/noReply``) counts as stored once sent.
/// - `ok`: `flush_all`, `stats` and `version`.
/// - `error`: the call, or the key, failed; `error` holds the ``MemcachedError/Code`` name
///   (such as `timeout`), or `cancelled` or `other` for errors that are not ``MemcachedError``s.
///
/// A `get` that joined a coalesced batch (``MemcachedClient/Options/coalescesReads``) counts as
/// the `get` its caller made, not as part of the batch's multi-get.
public struct MemcachedMetrics: Sendable {
    /// The backend; `nil` for the one bootstrapped in `MetricsSystem`, read when a connection or
    /// client is created.
    public var factory: (any MetricsFactory)?

    /// Whether outcome counters also carry a `server` dimension (`host:port`) for single-key
    /// commands and for errors that name their server.
    ///
    /// Off by default: each server multiplies the outcome series, and finding a key's server
    /// costs a hash per command. Multi-key commands carry no `server` dimension.
    public var labelsServers: Bool

    /// Dimensions added to every metric, such as `[("cluster", "sessions")]`, to tell apart the
    /// metrics of several clients in one process.
    public var dimensions: [(String, String)]

    /// Creates metrics settings.
    ///
    /// - Parameters:
    ///   - factory: The backend; `nil` for the bootstrapped one.
    ///   - labelsServers: Whether outcomes carry a `server` dimension.
    ///   - dimensions: Dimensions added to every metric.
    public init(
        factory: (any MetricsFactory)? = nil,
        labelsServers: Bool = false,
        dimensions: [(String, String)] = []
    ) {
        self.factory = factory
        self.labelsServers = labelsServers
        self.dimensions = dimensions
    }
}

/// How a ``MemcachedClient`` traces its commands with swift-distributed-tracing.
///
/// Each command of a ``MemcachedClient`` is a span of kind `client` named after its memcached
/// command (`get`, `set_multi`, ...), started in the caller's task, so that it is a child of the
/// span the caller is in, and covering the whole call (waiting for a connection included). Its
/// attributes follow OpenTelemetry's database conventions:
///
/// | Attribute | Value |
/// | --- | --- |
/// | `db.system.name` | `memcached` |
/// | `db.operation.name` | the command, as the span's name |
/// | `db.operation.batch.size` | keys of a multi-key call, when 2 or more |
/// | `server.address`, `server.port` | the key's server, for a single-key command run on a connection of its own, or the only server |
/// | `error.type` | the ``MemcachedError/Code`` name of a failed call |
/// | `memcached.key`, `memcached.keys` | the key or keys, only with ``recordsKeys`` |
///
/// A failed call records its error on the span and sets the span's status to error. A
/// ``MemcachedConnection`` makes no spans: it has no task of its own to take a parent from.
/// When no tracer is set or bootstrapped (`NoOpTracer`), commands make no spans at all.
public struct MemcachedTracing: Sendable {
    /// The tracer; `nil` for the one bootstrapped in `InstrumentationSystem`, read when the
    /// client is created.
    public var tracer: (any Tracer)?

    /// Whether spans carry the keys (`memcached.key`, `memcached.keys`).
    ///
    /// Off by default: keys may hold user data (an e-mail address in a session key), and traces
    /// often leave the trust boundary of the cache.
    public var recordsKeys: Bool

    /// Creates tracing settings.
    ///
    /// - Parameters:
    ///   - tracer: The tracer; `nil` for the bootstrapped one.
    ///   - recordsKeys: Whether spans carry the keys.
    public init(tracer: (any Tracer)? = nil, recordsKeys: Bool = false) {
        self.tracer = tracer
        self.recordsKeys = recordsKeys
    }
}
