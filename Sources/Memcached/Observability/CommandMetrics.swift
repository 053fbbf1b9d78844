import CoreMetrics
import NIOConcurrencyHelpers

/// A command as metrics, spans and logs name it: the memcached command, or our multi-key call.
@usableFromInline
enum MemcachedCommand: Int, CaseIterable, Sendable {
    case get, gets, getMulti
    case set, add, replace, cas, append, prepend, setMulti
    case touch, delete, deleteMulti, increment, decrement
    case flush, stats, version

    /// The name in metrics, spans and logs.
    var name: String {
        switch self {
        case .get: "get"
        case .gets: "gets"
        case .getMulti: "get_multi"
        case .set: "set"
        case .add: "add"
        case .replace: "replace"
        case .cas: "cas"
        case .append: "append"
        case .prepend: "prepend"
        case .setMulti: "set_multi"
        case .touch: "touch"
        case .delete: "delete"
        case .deleteMulti: "delete_multi"
        case .increment: "incr"
        case .decrement: "decr"
        case .flush: "flush_all"
        case .stats: "stats"
        case .version: "version"
        }
    }

    /// Whether a call carries many keys, counted per key.
    var isMultiKey: Bool {
        self == .getMulti || self == .setMulti || self == .deleteMulti
    }

    /// The outcomes a call that did not fail can have: found or not, stored or not, or just done.
    var answers: [CommandOutcome] {
        switch self {
        case .set, .add, .replace, .cas, .append, .prepend, .setMulti: [.stored, .notStored]
        case .flush, .stats, .version: [.ok]
        default: [.hit, .miss]
        }
    }
}

/// What a command that did not fail came to, as the `outcome` dimension says it.
enum CommandOutcome: Int, CaseIterable {
    case hit, miss, stored, notStored, ok

    var label: String {
        switch self {
        case .hit: "hit"
        case .miss: "miss"
        case .stored: "stored"
        case .notStored: "not_stored"
        case .ok: "ok"
        }
    }
}

/// A command's result, which knows its outcomes: the one place that reads a result as metrics.
protocol CommandResult {
    /// Counts the outcomes of this result of `command` with `keys` keys.
    func record(_ command: MemcachedCommand, keys: Int, in metrics: CommandMetrics, server: String?)
}

extension Bool: CommandResult {
    /// `true`: stored, or the key was there (touch, delete); `false`: not stored, or missing.
    func record(_ command: MemcachedCommand, keys: Int, in metrics: CommandMetrics, server: String?) {
        metrics.count(command, self ? command.answers[0] : command.answers[1], server: server)
    }
}

extension Optional: CommandResult {
    /// A value is a hit, `nil` a miss.
    func record(_ command: MemcachedCommand, keys: Int, in metrics: CommandMetrics, server: String?) {
        metrics.count(command, self == nil ? .miss : .hit, server: server)
    }
}

/// The result of a command that only succeeds or fails (`flush_all`).
struct CommandDone: CommandResult {
    func record(_ command: MemcachedCommand, keys: Int, in metrics: CommandMetrics, server: String?) {
        metrics.count(command, .ok, server: server)
    }
}

extension Array: CommandResult where Element: ServerResultProtocol {
    /// Per call: `ok`, and each server's failure as an error.
    func record(_ command: MemcachedCommand, keys: Int, in metrics: CommandMetrics, server: String?) {
        metrics.count(command, .ok, server: nil)
        for result in self {
            if let error = result.failure {
                metrics.countError(command, error)
            }
        }
    }
}

extension Dictionary: CommandResult where Key == String, Value == MemcachedKeyOutcome {
    /// Per key: applied, declined or failed.
    func record(_ command: MemcachedCommand, keys: Int, in metrics: CommandMetrics, server: String?) {
        var applied = 0
        var declined = 0
        for outcome in values {
            switch outcome {
            case .applied: applied += 1
            case .declined: declined += 1
            case .failed(let error): metrics.countError(command, error)
            }
        }
        metrics.count(command, command.answers[0], by: applied)
        metrics.count(command, command.answers[1], by: declined)
    }
}

/// A multi-get's outcome as metrics see it: the keys read, the hits, and the failed keys.
struct MultiGetTally: CommandResult {
    var keys: Int
    var hits: Int
    var failures: [String: MemcachedError]

    /// Per key: a hit, a miss or its failure. A key that was handed over and then failed with the
    /// whole read (bytes after its end) is counted as a failure only.
    func record(_ command: MemcachedCommand, keys: Int, in metrics: CommandMetrics, server: String?) {
        let hits = min(hits, self.keys - failures.count)
        metrics.count(command, .hit, by: hits)
        metrics.count(command, .miss, by: self.keys - failures.count - hits)
        for error in failures.values {
            metrics.countError(command, error)
        }
    }
}

/// The per-server results of `stats` and `versions`, whatever their value type.
protocol ServerResultProtocol {
    var failure: MemcachedError? { get }
}

extension MemcachedServerResult: ServerResultProtocol {
    var failure: MemcachedError? {
        if case .failure(let error) = result { error } else { nil }
    }
}

/// The swift-metrics handles of one client or standalone connection, made once and shared by
/// every connection cloned for it, so that a command looks its handles up by index.
///
/// `nil` where no backend is bootstrapped and none is configured (``make(_:)``): then nothing is
/// recorded and a command pays one `nil` check.
final class CommandMetrics: Sendable {
    private let factory: any MetricsFactory
    private let dimensions: [(String, String)]
    let labelsServers: Bool

    /// Outcome counters by `command.rawValue * CommandOutcome.allCases.count + outcome.rawValue`;
    /// `nil` for outcomes a command cannot have.
    private let outcomes: [Counter?]
    private let timers: [CoreMetrics.Timer]
    private let keysPerCall: [Recorder?]
    /// Counters made on first use: errors by code, and outcomes by server.
    private let lazyCounters = NIOLockedValueBox<[[String]: Counter]>([:])

    static let outcomesLabel = "memcached_command_outcomes_total"

    /// The handles for `settings`, or `nil` when they would go nowhere: no factory configured and
    /// none bootstrapped.
    static func make(_ settings: MemcachedMetrics) -> CommandMetrics? {
        let factory = settings.factory ?? MetricsSystem.factory
        if factory is NOOPMetricsHandler {
            return nil
        }
        return CommandMetrics(factory: factory, settings: settings)
    }

    private init(factory: any MetricsFactory, settings: MemcachedMetrics) {
        self.factory = factory
        self.dimensions = settings.dimensions
        self.labelsServers = settings.labelsServers
        let dimensions = settings.dimensions
        var outcomes: [Counter?] = []
        for command in MemcachedCommand.allCases {
            for outcome in CommandOutcome.allCases {
                outcomes.append(
                    command.answers.contains(outcome)
                        ? Counter(
                            label: Self.outcomesLabel,
                            dimensions: [("command", command.name), ("outcome", outcome.label)] + dimensions,
                            factory: factory
                        ) : nil
                )
            }
        }
        self.outcomes = outcomes
        timers = MemcachedCommand.allCases.map { command in
            CoreMetrics.Timer(
                label: "memcached_command_duration_seconds",
                dimensions: [("command", command.name)] + dimensions,
                preferredDisplayUnit: .seconds,
                factory: factory
            )
        }
        keysPerCall = MemcachedCommand.allCases.map { command in
            command.isMultiKey
                ? Recorder(
                    label: "memcached_keys_per_call",
                    dimensions: [("command", command.name)] + dimensions,
                    factory: factory
                ) : nil
        }
    }

    /// Counts `count` outcomes of `command`; by server too when ``labelsServers`` and `server`
    /// is known.
    func count(_ command: MemcachedCommand, _ outcome: CommandOutcome, by count: Int = 1, server: String? = nil) {
        guard count > 0 else { return }
        if labelsServers, let server {
            lazyCounter([command.name, outcome.label, "", server]).increment(by: Int64(count))
            return
        }
        outcomes[command.rawValue * CommandOutcome.allCases.count + outcome.rawValue]?.increment(by: Int64(count))
    }

    /// Counts `count` failures of `command` with `error`'s code.
    func countError(_ command: MemcachedCommand, _ error: any Error, by count: Int = 1, server: String? = nil) {
        guard count > 0 else { return }
        let server = (error as? MemcachedError)?.server ?? server
        lazyCounter([command.name, "error", Self.errorLabel(error), labelsServers ? server ?? "" : ""])
            .increment(by: Int64(count))
    }

    /// How metrics and spans name an error: its ``MemcachedError/Code`` name, `cancelled`, or
    /// `other` for an error of another type.
    static func errorLabel(_ error: any Error) -> String {
        switch error {
        case let error as MemcachedError: error.code.description
        case is CancellationError: "cancelled"
        default: "other"
        }
    }

    /// Records one call's time on its connection, and its keys when it is a multi-key call.
    func recordCall(_ command: MemcachedCommand, keys: Int, nanoseconds: Int64) {
        timers[command.rawValue].recordNanoseconds(nanoseconds)
        keysPerCall[command.rawValue]?.record(keys)
    }

    /// A counter made on first use, by `[command, outcome, error code or "", server or ""]`.
    private func lazyCounter(_ key: [String]) -> Counter {
        lazyCounters.withLockedValue { counters in
            if let counter = counters[key] {
                return counter
            }
            var dimensions = [("command", key[0]), ("outcome", key[1])]
            if !key[2].isEmpty {
                dimensions.append(("error", key[2]))
            }
            if !key[3].isEmpty {
                dimensions.append(("server", key[3]))
            }
            let counter = Counter(label: Self.outcomesLabel, dimensions: dimensions + self.dimensions, factory: factory)
            counters[key] = counter
            return counter
        }
    }

    /// The gauges of a client's pool, made by the pool: a standalone connection has none.
    func poolMetrics() -> PoolMetrics {
        PoolMetrics(factory: factory, dimensions: dimensions)
    }
}

/// The gauges of one client's pool. Each metric carries a dimension of its own (`state`, `of`,
/// `batch`), so that clients with and without ``MemcachedMetrics/dimensions`` can share a backend
/// that refuses a name with and without labels (swift-prometheus).
final class PoolMetrics: Sendable {
    private let connectionsOpen: Gauge
    private let connectionsLeased: Gauge
    private let waitingLeases: Gauge
    private let queuedCommands: Gauge
    private let batchCommands: Recorder

    init(factory: any MetricsFactory, dimensions: [(String, String)]) {
        func gauge(_ label: String, _ dimension: (String, String)) -> Gauge {
            Gauge(label: label, dimensions: [dimension] + dimensions, factory: factory)
        }
        connectionsOpen = gauge("memcached_pool_connections", ("state", "open"))
        connectionsLeased = gauge("memcached_pool_connections", ("state", "leased"))
        waitingLeases = gauge("memcached_pool_waiting", ("of", "leases"))
        queuedCommands = gauge("memcached_pool_waiting", ("of", "coalesced_commands"))
        batchCommands = Recorder(
            label: "memcached_pool_batch_commands",
            dimensions: [("batch", "coalesced")] + dimensions,
            factory: factory
        )
    }

    /// One coalesced batch, served.
    func recordBatch(commands: Int) {
        batchCommands.record(commands)
    }

    /// The pool's state, as its gauges.
    func record(_ gauges: PoolGauges) {
        connectionsOpen.record(gauges.open)
        connectionsLeased.record(gauges.leased)
        waitingLeases.record(gauges.waitingLeases)
        queuedCommands.record(gauges.queuedCommands)
    }
}

/// What the pool's gauges show.
struct PoolGauges: Equatable {
    var open = 0
    var leased = 0
    var waitingLeases = 0
    var queuedCommands = 0
}
