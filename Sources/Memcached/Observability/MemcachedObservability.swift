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
/// | `memcached_command_duration_seconds` | timer | `command` | Each call's time on its connection (a coalesced command: its batch's multi-get or flush) |
/// | `memcached_keys_per_call` | recorder | `command` | Keys of each `get_multi`, `set_multi` and `delete_multi` run on a connection |
/// | `memcached_pool_connections` | gauge | `state`: `open` (idle, leased or being freed), `leased` | A client's connections |
/// | `memcached_pool_waiting` | gauge | `of`: `leases` (calls, and batches of coalesced commands, waiting for a connection), `coalesced_commands` | What waits for a connection |
/// | `memcached_pool_batch_commands` | recorder | `batch`: `coalesced` | Commands served by each coalesced batch |
///
/// `command` is the memcached command: `get`, `gets`, `get_multi`, `set`, `add`, `replace`, `cas`,
/// `append`, `prepend`, `set_multi`, `touch`, `delete`, `delete_multi`, `incr`, `decr`,
/// `flush_all`, `stats` or `version`. `outcome` is one of:
/// - `hit` and `miss`: for reads, `incr` and `decr`, whether the key held a value; for `touch`,
///   `delete` and `delete_multi`, whether the key existed.
/// - `stored` and `not_stored`: for writes.
/// - `ok`: `flush_all`, `stats` and `version`, once per call; a server that failed a `stats` or
///   `version` call is also counted, as an `error`.
/// - `error`: the call, or the key, failed; `error` holds the ``MemcachedError/Code`` name
///   (such as `timeout` or `poolTimeout`), `cancelled` for a client call whose task was
///   cancelled, or `other` for errors that are not ``MemcachedError``s.
///
/// A fire-and-forget write or delete (``MemcachedConfiguration/noReply``) has no answer to count:
/// once its bytes are written it counts as `stored` (a `delete` as `hit`); one whose bytes may
/// not have arrived counts as an error.
///
/// A `get` that joined a coalesced batch (``MemcachedClient/Options/coalescesReads``) counts as
/// the `get` its caller made, not as part of the batch's multi-get, and a coalesced
/// fire-and-forget write once its batch is flushed. Calls that never reached a connection count
/// too: `poolTimeout`, `poolClosed`, cancellation while waiting, and keys that fail the checks.
/// ``MemcachedClient/cacheAside(_:as:expiration:loadTimeout:logger:load:)`` counts as its first
/// `get` and, when it loads, its `set`; its lock and its second read are not counted.
///
/// Timers record nanoseconds; memcached answers in well under a millisecond, so give a
/// histogram backend buckets that small for `memcached_command_duration_seconds`
/// (swift-prometheus starts at 5 ms by default: see its `durationHistogramBuckets`).
public struct MemcachedMetrics: Sendable {
    /// The backend; `nil` for the one bootstrapped in `MetricsSystem`, read when a connection or
    /// client is created.
    public var factory: (any MetricsFactory)?

    /// Whether outcome counters also carry a `server` dimension (`host:port`): for single-key
    /// commands, the key's server, and for an error of any command, the server it names.
    ///
    /// Off by default: each server multiplies the outcome series, and finding a key's server
    /// costs a hash per command. The outcomes of multi-key commands that succeeded carry no
    /// `server` dimension.
    public var labelsServers: Bool

    /// Dimensions added to every metric, such as `[("cluster", "sessions")]`, to tell apart the
    /// metrics of several clients in one process: clients with the same dimensions share their
    /// series, the pool gauges included (the last change of either pool is what they show).
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
