import Logging
import NIOConcurrencyHelpers

/// Decodes a pooled read's hit as its caller's type, in code specialized for it: the value's
/// bytes (valid during the call), its flags, its CAS token and the connection's coding context.
@usableFromInline
typealias ReadDecoder =
    @Sendable (UnsafeRawBufferPointer, MemcachedFlags, MemcachedCASToken, MemcachedCodingContext) throws ->
    any Sendable

/// Where a queued command's caller waits for its answer: resumed exactly once, with the answer
/// or with `CancellationError` when its task is cancelled first, even before it has handed over
/// its continuation. A struct around one lock-guarded box, so it costs no allocation of its own;
/// copies share the box.
struct AwaitingCaller<Value: Sendable>: Sendable {
    private enum State {
        /// Made, not yet given its continuation.
        case pending
        /// Its task was cancelled before it had a continuation.
        case cancelledEarly
        case waiting(CheckedContinuation<Value, any Error>)
        case answered
    }

    private let state = NIOLockedValueBox(State.pending)

    /// Takes the caller's continuation; `false`, with the continuation resumed with
    /// `CancellationError`, when its task was cancelled before.
    func wait(with continuation: CheckedContinuation<Value, any Error>) -> Bool {
        let cancelled = state.withLockedValue { state -> Bool in
            guard case .pending = state else { return true }
            state = .waiting(continuation)
            return false
        }
        if cancelled {
            continuation.resume(throwing: CancellationError())
        }
        return !cancelled
    }

    /// Resumes the caller, unless it was answered or cancelled already.
    func answer(_ result: Result<Value, any Error>) {
        take(cancelling: false)?.resume(with: result)
    }

    /// The task was cancelled: answers with `CancellationError` now, or, before the caller has
    /// handed over its continuation, makes ``wait(with:)`` do it.
    func cancel() {
        take(cancelling: true)?.resume(throwing: CancellationError())
    }

    /// Whether the caller still waits for its answer.
    var isWaiting: Bool {
        state.withLockedValue { state in
            if case .waiting = state { true } else { false }
        }
    }

    private func take(cancelling: Bool) -> CheckedContinuation<Value, any Error>? {
        state.withLockedValue { state in
            switch state {
            case .pending:
                if cancelling { state = .cancelledEarly }
                return nil
            case .waiting(let continuation):
                state = .answered
                return continuation
            case .cancelledEarly, .answered:
                return nil
            }
        }
    }
}

/// One caller's single-key read waiting in a ``CommandBatch``: its key, how its value decodes, and
/// how it is answered. Answered exactly once: with its value, a miss, an error, or
/// `CancellationError` when its task is cancelled first (then the batch's answer is dropped).
///
/// `@unchecked Sendable` for ``batch``, which only the pool's lock guards, and for the decoded
/// hit, which only the thread running the batch touches.
final class CoalescedRead: BatchedCommand, @unchecked Sendable {
    private enum Delivery {
        /// A caller of its own.
        case caller(AwaitingCaller<(any Sendable)?>)
        /// One key of a small multi-get (``MultiKeyRead``), which its caller waits for as a whole;
        /// whether this part was answered (or cancelled).
        case part(of: MultiKeyRead, index: Int, answered: NIOLockedValueBox<Bool>)
    }

    let key: String
    /// Whether the caller needs the hit's CAS token (``MemcachedClient/gets(_:as:logger:)``): a hit
    /// without one is then a malformed reply, as it is for the connection's `gets`.
    let requiresCAS: Bool
    /// When the read has waited ``ConnectionPool/waitTimeout`` for a connection.
    let deadline: ContinuousClock.Instant
    /// The batch the read waits in. Under the pool's lock.
    weak var batch: CommandBatch?
    private let decode: ReadDecoder
    private let delivery: Delivery
    /// The hit, decoded while its bytes were valid, kept until the whole reply has been checked.
    private var decoded: Result<(any Sendable)?, any Error>?

    /// Whether the read counts in the metrics: not the second read of a cache-aside lookup.
    let measured: Bool

    /// The value decoded from the batch's reply, if it had one for this key.
    var decodedValue: Result<(any Sendable)?, any Error>? { decoded }

    /// The multi-get this read is a key of, if any.
    var group: MultiKeyRead? {
        if case .part(let group, _, _) = delivery { group } else { nil }
    }

    /// The command its caller made, as metrics count it.
    var command: MemcachedCommand {
        group != nil ? .getMulti : requiresCAS ? .gets : .get
    }

    init(
        key: String,
        requiresCAS: Bool,
        measured: Bool = true,
        deadline: ContinuousClock.Instant,
        decode: @escaping ReadDecoder
    ) {
        self.key = key
        self.requiresCAS = requiresCAS
        self.measured = measured
        self.deadline = deadline
        self.decode = decode
        self.delivery = .caller(AwaitingCaller())
    }

    /// A read answered into `group`'s place `index` rather than a continuation of its own.
    init(
        key: String,
        deadline: ContinuousClock.Instant,
        decode: @escaping ReadDecoder,
        partOf group: MultiKeyRead,
        index: Int
    ) {
        self.key = key
        self.requiresCAS = false
        self.measured = true
        self.deadline = deadline
        self.decode = decode
        self.delivery = .part(of: group, index: index, answered: NIOLockedValueBox(false))
    }

    /// Gives the read its continuation; `false`, with the continuation resumed with
    /// `CancellationError`, when its task was cancelled before. Only for a read of its own.
    func wait(with continuation: CheckedContinuation<(any Sendable)?, any Error>) -> Bool {
        guard case .caller(let caller) = delivery else { preconditionFailure("a multi-get's part has no caller") }
        return caller.wait(with: continuation)
    }

    /// Decodes a hit while its bytes are valid. The caller hears of it only in ``settle(_:)``,
    /// once the whole reply has been checked: bytes after its end fail every key, hits included.
    func decodeHit(
        _ bytes: UnsafeRawBufferPointer,
        _ flags: MemcachedFlags,
        _ cas: UInt64,
        _ context: MemcachedCodingContext
    ) {
        guard isWaiting else { return }
        do {
            // memcached never issues a token of 0, which would make a binary `cas` a plain `set`.
            guard !requiresCAS || cas != 0 else {
                throw MemcachedError(
                    code: .protocolError,
                    message: "a server sent a malformed reply (a value without a CAS token)",
                    key: key
                )
            }
            decoded = .success(try decode(bytes, flags, MemcachedCASToken(rawValue: cas), context))
        } catch {
            decoded = .failure(MemcachedConnection.decodingFailure(error, key: key))
        }
    }

    /// Answers once the batch's read is over: the key's failure, else its decoded hit, else a miss.
    func settle(_ failure: MemcachedError?) {
        if let failure {
            answer(.failure(failure), ofKey: true)
        } else {
            answer(decoded ?? .success(nil), ofKey: true)
        }
    }

    /// Answers with an error that is not the key's own (the batch's read failed as a whole, the
    /// wait for a connection ended, the pool closed), unless the read was answered already.
    func fail(_ error: any Error) { answer(.failure(error), ofKey: false) }

    /// The task was cancelled: answers with `CancellationError` now, or, before the read has its
    /// continuation, makes ``wait(with:)`` do it.
    ///
    /// A part of a ``MultiKeyRead`` is only marked answered: its group answers its caller.
    func cancel() {
        switch delivery {
        case .caller(let caller):
            caller.cancel()
        case .part(_, _, let answered):
            answered.withLockedValue { $0 = true }
        }
    }

    /// Whether the read still waits for its answer.
    var isWaiting: Bool {
        switch delivery {
        case .caller(let caller): caller.isWaiting
        case .part(_, _, let answered): !answered.withLockedValue { $0 }
        }
    }

    /// - Parameter ofKey: Whether a failure is the key's own (its server's, its value's), which
    ///   a multi-get reports per key; any other fails a multi-get as a whole.
    private func answer(_ result: Result<(any Sendable)?, any Error>, ofKey: Bool) {
        switch delivery {
        case .caller(let caller):
            caller.answer(result)
        case .part(let group, let index, let answered):
            let first = answered.withLockedValue { answered in
                defer { answered = true }
                return !answered
            }
            guard first else { return }
            if ofKey, case .failure(let error as MemcachedError) = result {
                group.deliver(.failure(CoalescedKeyFailure(error: error)), at: index)
            } else {
                group.deliver(result, at: index)
            }
        }
    }
}

/// A key's own failure in a ``MultiKeyRead``, which its multi-get reports in
/// ``MemcachedGetMultiResult/failures``; every other error fails the call.
@usableFromInline
struct CoalescedKeyFailure: Error {
    @usableFromInline let error: MemcachedError
}

/// A small multi-get that found every connection busy: one ``CoalescedRead`` per key, answered
/// into one place each, and one continuation resumed when the last key is answered
/// (``MemcachedClient/getMulti(_:keyPrefix:as:logger:)``). Its parts join batches as single reads do.
final class MultiKeyRead: Sendable {
    private enum State {
        case pending(answered: [Result<(any Sendable)?, any Error>?], left: Int)
        case cancelledEarly
        case waiting(
            CheckedContinuation<[Result<(any Sendable)?, any Error>], any Error>,
            answered: [Result<(any Sendable)?, any Error>?],
            left: Int
        )
        case answered
    }

    private let state: NIOLockedValueBox<State>

    /// The keys of the multi-get.
    let count: Int

    init(count: Int) {
        self.count = count
        state = NIOLockedValueBox(.pending(answered: Array(repeating: nil, count: count), left: count))
    }

    /// Gives the group its continuation; `false`, with the continuation resumed with
    /// `CancellationError`, when its task was cancelled before.
    func wait(with continuation: CheckedContinuation<[Result<(any Sendable)?, any Error>], any Error>) -> Bool {
        let cancelled = state.withLockedValue { state -> Bool in
            guard case .pending(let answered, let left) = state else { return true }
            state = .waiting(continuation, answered: answered, left: left)
            return false
        }
        if cancelled {
            continuation.resume(throwing: CancellationError())
        }
        return !cancelled
    }

    /// One part's answer; the last one resumes the caller with every part's.
    func deliver(_ result: Result<(any Sendable)?, any Error>, at index: Int) {
        let finished = state.withLockedValue {
            state -> (
                CheckedContinuation<[Result<(any Sendable)?, any Error>], any Error>,
                [Result<(any Sendable)?, any Error>]
            )? in
            switch state {
            case .pending(var answered, let left):
                // Parts are answered only once they joined a batch, which needs the continuation.
                answered[index] = result
                state = .pending(answered: answered, left: left - 1)
                return nil
            case .waiting(let continuation, var answered, let left):
                answered[index] = result
                guard left > 1 else {
                    state = .answered
                    return (continuation, answered.map { $0! })
                }
                state = .waiting(continuation, answered: answered, left: left - 1)
                return nil
            case .cancelledEarly, .answered:
                return nil
            }
        }
        if let (continuation, results) = finished {
            continuation.resume(returning: results)
        }
    }

    /// The caller's task was cancelled: answers it with `CancellationError`, or makes
    /// ``wait(with:)`` do so. The parts are cancelled by the pool.
    func cancel() {
        let continuation = state.withLockedValue {
            state -> CheckedContinuation<[Result<(any Sendable)?, any Error>], any Error>? in
            switch state {
            case .pending:
                state = .cancelledEarly
                return nil
            case .waiting(let continuation, _, _):
                state = .answered
                return continuation
            case .cancelledEarly, .answered:
                return nil
            }
        }
        continuation?.resume(throwing: CancellationError())
    }
}

/// A command waiting in a ``CommandBatch``: a coalesced read (``CoalescedRead``) or a
/// fire-and-forget write (``QueuedWrite``). Answered exactly once.
protocol BatchedCommand: AnyObject, Sendable {
    /// When it has waited ``ConnectionPool/waitTimeout`` for a connection.
    var deadline: ContinuousClock.Instant { get }
    /// The batch it waits in. Under the pool's lock.
    var batch: CommandBatch? { get set }
    /// Whether it still waits for its answer (it was not cancelled or answered).
    var isWaiting: Bool { get }
    /// Answers with an error that is not the command's own: the batch failed as a whole, the
    /// wait for a connection ended, the pool closed. Does nothing once answered.
    func fail(_ error: any Error)
}

/// One caller's fire-and-forget write (``MemcachedClient/set(_:_:expiration:compression:noReply:logger:)``
/// or ``MemcachedClient/delete(_:noReply:logger:)`` of a client whose configuration has
/// ``MemcachedConfiguration/noReply``) waiting in a ``CommandBatch``.
///
/// Its command runs with the flush held back, so that the batch's writes leave in one write per
/// server; the caller hears its outcome only once that flush is done. Answered exactly once:
/// with its outcome, an error, or `CancellationError` when its task is cancelled first (a
/// write cancelled while its batch runs may still be applied, as one cancelled on a connection
/// of its own may).
///
/// `@unchecked Sendable` for ``batch``, which only the pool's lock guards.
final class QueuedWrite: BatchedCommand, @unchecked Sendable {
    /// The key it writes, named in the errors it is answered with.
    let key: String
    /// The command, as the batch counts it once flushed.
    let name: MemcachedCommand
    let deadline: ContinuousClock.Instant
    weak var batch: CommandBatch?
    /// The write, run by the batch with its flush held back.
    let command: @Sendable (MemcachedConnection) throws -> Bool
    private let caller = AwaitingCaller<Bool>()

    init(
        key: String,
        name: MemcachedCommand,
        deadline: ContinuousClock.Instant,
        command: @escaping @Sendable (MemcachedConnection) throws -> Bool
    ) {
        self.key = key
        self.name = name
        self.deadline = deadline
        self.command = command
    }

    /// Gives the write its continuation; `false`, with the continuation resumed with
    /// `CancellationError`, when its task was cancelled before.
    func wait(with continuation: CheckedContinuation<Bool, any Error>) -> Bool {
        caller.wait(with: continuation)
    }

    /// Answers with the outcome of sending it, its key named in a failure of the library's.
    func answer(_ result: Result<Bool, any Error>) {
        if case .failure(var error as MemcachedError) = result {
            error.key = key
            caller.answer(.failure(error))
        } else {
            caller.answer(result)
        }
    }

    func fail(_ error: any Error) { caller.answer(.failure(error)) }

    /// The task was cancelled: answers with `CancellationError` now, or, before the write has its
    /// continuation, makes ``wait(with:)`` do it.
    func cancel() { caller.cancel() }

    var isWaiting: Bool { caller.isWaiting }
}

/// Commands that found every connection leased, served together by the next connection that
/// comes free, with one hand-off to its thread: single-key reads (`get`, `gets`, the keys of a
/// small `getMulti`) by one multi-get, one round trip per server
/// (``MemcachedClient/Options/coalescesReads``), and fire-and-forget writes by one write per
/// server (``MemcachedClient/Options/coalescesWrites``).
///
/// To the pool it is one waiter. While it waits, more commands join it, up to the pool's batch
/// size; once a connection is handed to it, it takes no more (the pool forgets it under the same
/// lock). Reads of one key share one fetch, each decoding as its own type. Keys Swift calls equal
/// but whose bytes differ (Unicode equivalents) are different memcached keys: the second such
/// read starts another batch rather than share the first one's fetch. The writes go first and
/// are flushed before the reads are sent, so that a failed flush is known before the reads'
/// multi-get could send what it left behind.
final class CommandBatch: ConnectionPool.Waiter, @unchecked Sendable {
    /// The reads by key and the writes in the order they came. Guarded by the pool's lock while
    /// the batch can be joined; from then on read only by the one thread that runs it. Hence
    /// `@unchecked Sendable`.
    private(set) var reads: [String: [CoalescedRead]] = [:]
    private(set) var writes: [QueuedWrite] = []
    /// How many commands joined.
    private(set) var count = 0
    /// How many of them were not cancelled. Under the pool's lock.
    var waitingCommands = 0

    init(_ first: any BatchedCommand) {
        add(first)
    }

    /// Whether `command` can share this batch: a write, or a read of a new key or of the very
    /// same bytes as a key here.
    func canTake(_ command: any BatchedCommand) -> Bool {
        guard let read = command as? CoalescedRead, let index = reads.index(forKey: read.key) else { return true }
        return reads.keys[index].utf8.elementsEqual(read.key.utf8)
    }

    /// Adds a command. Under the pool's lock, while the batch waits.
    func add(_ command: any BatchedCommand) {
        if let read = command as? CoalescedRead {
            reads[read.key, default: []].append(read)
        } else if let write = command as? QueuedWrite {
            writes.append(write)
        }
        command.batch = self
        count += 1
        waitingCommands += 1
    }

    /// Every command of the batch.
    var commands: [any BatchedCommand] {
        writes.map { $0 as any BatchedCommand } + reads.values.joined().map { $0 as any BatchedCommand }
    }

    func run(_ connection: PooledConnection, in pool: ConnectionPool) -> ConnectionPool.Plan {
        pool.runBatch(self, on: connection)
    }

    func timeOut(in pool: ConnectionPool) {
        pool.batchTimedOut(self)
    }

    func fail(_ error: any Error) {
        for command in commands {
            command.fail(error)
        }
    }

    /// Serves every command on `connection`: the writes, then the reads. A failure that may have
    /// left the connection out of step resets it, which the pool sees (``PooledConnection``).
    func serve(on connection: MemcachedConnection) throws {
        if !writes.isEmpty {
            write(on: connection)
        }
        if !reads.isEmpty {
            try read(on: connection)
        }
    }

    /// Sends every write still waiting with one deadline and one flush
    /// (``MemcachedConnection/sendEach(_:stopsOn:_:)``), then answers each: its outcome, or its own
    /// failure, or the failure that leaves it unknown whether it arrived. A write cancelled
    /// before it is sent is not sent.
    private func write(on connection: MemcachedConnection) {
        let sending = writes.filter(\.isWaiting)
        let handle = connection.handle
        let start = handle.metrics == nil ? 0 : DeadlineClock.precise()
        // Each write's outcome is known only after the flush: counted then, below.
        handle.metricsSuspended = true
        var results: [Result<Bool, any Error>] = []
        var thrown: (any Error)?
        do {
            results = try handle.withDeadline {
                try connection.sendEach(sending.count) { index in try sending[index].command(connection) }
            }
        } catch {
            thrown = error
        }
        handle.metricsSuspended = false
        if let metrics = handle.metrics {
            let elapsed = Int64(clamping: DeadlineClock.precise() &- start)
            for (index, write) in sending.enumerated() {
                metrics.recordCall(write.name, keys: 1, nanoseconds: elapsed)
                switch thrown.map(Result.failure) ?? results[index] {
                case .success(let applied): applied.record(write.name, keys: 1, in: metrics, server: nil)
                case .failure(let error): metrics.countError(write.name, error)
                }
            }
        }
        if let thrown {
            for write in sending {
                write.fail(thrown)
            }
            return
        }
        for (write, result) in zip(sending, results) {
            write.answer(result)
        }
    }

    /// Reads every key with one multi-get on `connection` and, once the whole reply is checked,
    /// answers each read: its value (as its own type), a miss, or its key's failure; every read
    /// fails when the call as a whole does. Reads answered already (cancelled) are skipped.
    private func read(on connection: MemcachedConnection) throws {
        let keys = Array(reads.keys)
        let context = connection.codingContext
        let metrics = connection.handle.metrics
        if connection.handle.traceEnabled {
            connection.handle.logger.trace(
                "memcached coalesced reads",
                metadata: ["command": "get_multi", "keys": "\(keys.count)", "reads": "\(count - writes.count)"]
            )
        }
        let start = metrics == nil ? 0 : DeadlineClock.precise()
        let failures: [String: MemcachedError]
        do {
            failures = try connection.fetchMulti(keys, keyPrefix: "", stopOnHitError: false, measured: false) {
                index,
                bytes,
                flags,
                cas in
                for read in reads[keys[index]]! {
                    read.decodeHit(bytes, flags, cas, context)
                }
            }
        } catch {
            metrics.map { record(in: $0, failures: [:], failingAll: error, start: start) }
            throw error
        }
        metrics.map { record(in: $0, failures: failures, failingAll: nil, start: start) }
        for (key, reads) in reads {
            let failure = failures[key]
            for read in reads {
                read.settle(failure)
            }
        }
    }

    /// Counts each read still waiting as its caller's command (a `get`, a `gets`, a key of a
    /// `get_multi`) with its outcome, and the batch's multi-get as the time of each caller's call.
    private func record(
        in metrics: CommandMetrics,
        failures: [String: MemcachedError],
        failingAll error: (any Error)?,
        start: UInt64
    ) {
        let elapsed = Int64(clamping: DeadlineClock.precise() &- start)
        var groups = Set<ObjectIdentifier>()
        for (key, reads) in reads {
            for read in reads where read.isWaiting && read.measured {
                let command = read.command
                if let error = error ?? failures[key] {
                    metrics.countError(command, error)
                } else {
                    switch read.decodedValue {
                    case .success(nil), nil: metrics.count(command, .miss)
                    case .success: metrics.count(command, .hit)
                    case .failure(let error): metrics.countError(command, error)
                    }
                }
                if let group = read.group {
                    if groups.insert(ObjectIdentifier(group)).inserted {
                        metrics.recordCall(.getMulti, keys: group.count, nanoseconds: elapsed)
                    }
                } else {
                    metrics.recordCall(command, keys: 1, nanoseconds: elapsed)
                }
            }
        }
    }
}
