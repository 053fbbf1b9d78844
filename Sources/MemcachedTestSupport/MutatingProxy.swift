import NIOCore
import NIOPosix

/// A TCP proxy on 127.0.0.1 in front of a real memcached that corrupts some of its replies: the
/// reply fuzzer's fixture.
///
/// Each client connection gets a backend connection of its own, so replies stay in the order of
/// the client's requests. The proxy forwards requests unchanged, cuts the backend's byte stream
/// into complete replies (text: single lines, `VALUE` blocks up to `END`, `STAT` lines up to
/// `END`; binary: packets by their body length, a quiet multi-get up to its `NOOP` response) and,
/// for each reply, lets a seeded generator decide whether and how to corrupt it
/// (``ReplyMutationKind``). Replies to requests whose key starts with
/// ``Configuration/controlKeyPrefix`` pass unchanged: they are the known-good checks a fuzz test
/// runs between fuzzed commands.
///
/// Every decision depends only on ``Configuration/seed``, the connection's number and the reply's
/// index on it, and every applied mutation is recorded (``mutations``), so a failure can be named
/// and replayed. Floods and drips are bounded in bytes and time. The protocol is recognised from
/// the client's first byte (`0x80` is binary).
///
/// ```swift
/// let backend = try MemcachedServerProcess.start()
/// let proxy = try MutatingProxy(backendPort: backend.port, configuration: .init(seed: 42))
/// defer { proxy.stop() }
/// // point a client at proxy.address
/// ```
///
/// The proxy runs on a SwiftNIO event loop thread of its own, so it keeps working while test code
/// blocks in a client call.
public final class MutatingProxy: Sendable {
    /// What to corrupt, how often, and the limits of the slow kinds.
    public struct Configuration: Sendable {
        /// The seed of every decision the proxy makes.
        public var seed: UInt64
        /// The chance, from 0 to 1, that a reply to a non-control request is corrupted.
        public var mutationProbability: Double = 0.3
        /// The kinds the proxy may choose from; a reply a kind cannot change is not offered it.
        public var enabledMutations: Set<ReplyMutationKind> = Set(ReplyMutationKind.allCases)
        /// The relative weight of each kind when choosing; a kind not listed weighs 4. The slow
        /// kinds weigh 1 by default, because each holds a call for up to its time limit.
        public var weights: [ReplyMutationKind: Int] = [.flood: 1, .slowDrip: 1]
        /// Requests naming a key with this prefix are answered unchanged.
        public var controlKeyPrefix = "fuzzcheck-"
        /// The pause after each byte of a slow drip, in milliseconds; chosen per drip.
        public var dripIntervalMilliseconds: ClosedRange<Int> = 20...80
        /// How long a drip lasts at most before the rest of the reply is sent at once.
        public var maximumDripDuration: Duration = .seconds(1)
        /// How many bytes a flood sends at most before hanging up.
        public var maximumFloodBytes = 4 * 1_048_576
        /// How long a flood lasts at most before hanging up.
        public var maximumFloodDuration: Duration = .seconds(1)
        /// Called on the proxy's thread with each mutation, before its first byte is sent, so a
        /// test can log it where a crash of the test process does not lose it.
        public var onMutation: (@Sendable (AppliedMutation) -> Void)? = nil

        /// Replaces a reply with exact bytes instead of a random mutation, to reproduce a failure:
        /// called with each non-control request (its command line, or its opcode and key, as in
        /// ``AppliedMutation/request``) and the backend's reply; bytes it returns are sent in place of
        /// the reply (recorded as ``Statistics/scriptedReplies``), `nil` leaves the reply to the
        /// generator.
        public var scriptedReply: (@Sendable (_ request: String, _ reply: [UInt8]) -> [UInt8]?)? = nil

        /// Creates a configuration with every kind enabled.
        ///
        /// - Parameter seed: The seed of every decision the proxy makes.
        public init(seed: UInt64) {
            self.seed = seed
        }
    }

    /// Counts of what the proxy has seen and done.
    public struct Statistics: Sendable {
        /// Replies to non-control requests, each of which the generator considered corrupting.
        public var fuzzableReplies = 0
        /// Replies to control requests, passed unchanged.
        public var controlReplies = 0
        /// Replies for which no request was pending (should stay 0), passed unchanged.
        public var unmatchedReplies = 0
        /// Client connections accepted.
        public var connections = 0
        /// Replies replaced by ``Configuration/scriptedReply``.
        public var scriptedReplies = 0
        /// Applied mutations by kind.
        public var mutationsByKind: [ReplyMutationKind: Int] = [:]

        /// The total number of applied mutations.
        public var mutationCount: Int { mutationsByKind.values.reduce(0, +) }
    }

    /// The port the proxy listens on, on 127.0.0.1.
    public let port: Int

    /// The proxy's address as `host:port`.
    public var address: String { "127.0.0.1:\(port)" }

    /// The configuration the proxy runs with.
    public let configuration: Configuration

    private let group: MultiThreadedEventLoopGroup
    private let serverChannel: any Channel
    let recorder: Recorder

    /// Starts the proxy on a free loopback port in front of `backendPort`.
    ///
    /// - Parameters:
    ///   - backendPort: The port of the memcached on 127.0.0.1 that requests are forwarded to.
    ///   - configuration: What to corrupt and how often.
    /// - Throws: A SwiftNIO error if the listening socket cannot be bound.
    public init(backendPort: Int, configuration: Configuration) throws {
        self.configuration = configuration
        let recorder = Recorder()
        self.recorder = recorder
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.group = group
        let shared = SessionShared(
            backendPort: backendPort,
            configuration: configuration,
            recorder: recorder
        )
        do {
            serverChannel = try ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let session = ProxySession(client: channel, shared: shared)
                        try channel.pipeline.syncOperations.addHandler(FrontendHandler(session: session))
                        session.connectBackend()
                    }
                }
                .bind(host: "127.0.0.1", port: 0)
                .wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
        port = serverChannel.localAddress?.port ?? 0
    }

    deinit {
        stop()
    }

    /// Closes the listening socket and every proxied connection, and joins the proxy's thread.
    /// Calling it again does nothing. It blocks, so do not call it from the proxy's own thread
    /// (an ``Configuration/onMutation`` callback).
    public func stop() {
        guard recorder.markStopped() else { return }
        _ = try? serverChannel.close().wait()
        // Shutting the group down closes every channel still registered on it.
        try? group.syncShutdownGracefully()
    }

    /// Every mutation applied so far, in the order they were applied.
    public var mutations: [AppliedMutation] {
        recorder.state.withLock { $0.mutations }
    }

    /// What the proxy has seen and done so far.
    public var statistics: Statistics {
        recorder.state.withLock { $0.statistics }
    }

    /// The mutations applied since `count` mutations had been recorded: pass the
    /// ``Statistics/mutationCount`` read before a command to get that command's mutations.
    public func mutations(since count: Int) -> [AppliedMutation] {
        recorder.state.withLock { Array($0.mutations.dropFirst(count)) }
    }

    /// The shared, locked record of everything the proxy did.
    final class Recorder: Sendable {
        struct State {
            var statistics = Statistics()
            var mutations: [AppliedMutation] = []
            var stopped = false
        }

        let state = Locked(State())

        /// Marks the proxy stopped; `false` if it already was.
        func markStopped() -> Bool {
            state.withLock { state in
                defer { state.stopped = true }
                return !state.stopped
            }
        }

        func nextConnectionNumber() -> Int {
            state.withLock { state in
                state.statistics.connections += 1
                return state.statistics.connections
            }
        }
    }
}

/// What every session of one proxy shares.
final class SessionShared: Sendable {
    let backendPort: Int
    let configuration: MutatingProxy.Configuration
    let recorder: MutatingProxy.Recorder

    init(backendPort: Int, configuration: MutatingProxy.Configuration, recorder: MutatingProxy.Recorder) {
        self.backendPort = backendPort
        self.configuration = configuration
        self.recorder = recorder
    }
}

/// One client connection and its backend connection. Lives on the proxy's event loop only.
final class ProxySession {
    private let client: any Channel
    private let shared: SessionShared
    private var backend: (any Channel)?
    private var closed = false
    private var toBackend: [ByteBuffer] = []

    let connectionNumber: Int
    let connectionSeed: UInt64
    private var wireProtocol: ProxiedWireProtocol?
    private var textRequests = TextRequestParser()
    private var binaryRequests = BinaryRequestParser()
    private var textReplies = TextReplyFramer()
    private var binaryReplies = BinaryReplyFramer()
    private var pendingRequests: [ProxiedRequest] = []
    private var pendingRequestStart = 0
    private var replyIndex = 0
    private var controlKey: String?
    private var recentKeys: [String] = []

    /// Replies waiting for the one being emitted (a drip, a flood) to finish.
    private var outgoing: [(ProxiedReply, ProxiedRequest?)] = []
    private var emitting = false

    private var configuration: MutatingProxy.Configuration { shared.configuration }

    init(client: any Channel, shared: SessionShared) {
        self.client = client
        self.shared = shared
        connectionNumber = shared.recorder.nextConnectionNumber()
        var mixer = SplitMix64(
            state: shared.configuration.seed ^ UInt64(connectionNumber) &* 0xA24B_AED4_963E_E407
        )
        connectionSeed = mixer.next()
    }

    private var eventLoop: any EventLoop { client.eventLoop }

    // MARK: - Connections

    func connectBackend() {
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(BackendHandler(session: bound.value))
                }
            }
            .connect(host: "127.0.0.1", port: shared.backendPort)
            .whenComplete { result in
                let session = bound.value
                switch result {
                case .success(let channel):
                    session.backendConnected(channel)
                case .failure:
                    session.close()
                }
            }
    }

    private func backendConnected(_ channel: any Channel) {
        guard !closed else {
            channel.close(promise: nil)
            return
        }
        backend = channel
        for buffer in toBackend {
            channel.write(buffer, promise: nil)
        }
        toBackend = []
        channel.flush()
    }

    /// Closes both connections. Idempotent.
    func close() {
        guard !closed else { return }
        closed = true
        client.close(promise: nil)
        backend?.close(promise: nil)
        outgoing = []
    }

    // MARK: - Requests

    func clientSent(_ buffer: ByteBuffer) {
        guard !closed else { return }
        let bytes = buffer.readableBytesView
        if wireProtocol == nil, let first = bytes.first {
            wireProtocol = first == 0x80 ? .binary : .text
        }
        let requests =
            wireProtocol == .binary ? binaryRequests.feed(bytes) : textRequests.feed(bytes)
        for request in requests {
            pendingRequests.append(request)
            for key in request.keys {
                if key.hasPrefix(configuration.controlKeyPrefix) {
                    controlKey = key
                } else if !recentKeys.contains(key) {
                    recentKeys.append(key)
                    if recentKeys.count > 16 { recentKeys.removeFirst() }
                }
            }
        }
        if let backend {
            backend.writeAndFlush(buffer, promise: nil)
        } else {
            toBackend.append(buffer)
        }
    }

    // MARK: - Replies

    func backendSent(_ buffer: ByteBuffer) {
        guard !closed else { return }
        let bytes = buffer.readableBytesView
        let replies =
            wireProtocol == .binary ? binaryReplies.feed(bytes) : textReplies.feed(bytes)
        for reply in replies {
            var request: ProxiedRequest?
            if pendingRequestStart < pendingRequests.count {
                request = pendingRequests[pendingRequestStart]
                pendingRequestStart += 1
                if pendingRequestStart > 1024 {
                    pendingRequests.removeFirst(pendingRequestStart)
                    pendingRequestStart = 0
                }
            }
            outgoing.append((reply, request))
        }
        pump()
    }

    /// Emits queued replies in order, one at a time: a drip or flood delays the replies behind it.
    private func pump() {
        while !emitting, !closed, !outgoing.isEmpty {
            let (reply, request) = outgoing.removeFirst()
            let steps = decide(reply: reply, request: request)
            emitting = true
            run(steps[...])
        }
    }

    private func finishedEmitting() {
        emitting = false
        pump()
    }

    /// Chooses what to send for one reply and records the mutation, if any.
    private func decide(reply: ProxiedReply, request: ProxiedRequest?) -> [EmitStep] {
        let index = replyIndex
        replyIndex += 1
        guard let request else {
            shared.recorder.state.withLock { $0.statistics.unmatchedReplies += 1 }
            return [.send(reply.bytes)]
        }
        if request.keys.contains(where: { $0.hasPrefix(configuration.controlKeyPrefix) }) {
            shared.recorder.state.withLock { $0.statistics.controlReplies += 1 }
            return [.send(reply.bytes)]
        }
        shared.recorder.state.withLock { $0.statistics.fuzzableReplies += 1 }
        if let script = configuration.scriptedReply, let bytes = script(request.summary, reply.bytes) {
            shared.recorder.state.withLock { $0.statistics.scriptedReplies += 1 }
            return [.send(bytes)]
        }
        var generator = SplitMix64(seed: connectionSeed, step: index)
        let roll = Double(generator.next() >> 11) / Double(1 << 53)
        guard roll < configuration.mutationProbability else {
            return [.send(reply.bytes)]
        }
        let candidates = ReplyMutationKind.allCases.filter {
            configuration.enabledMutations.contains($0) && ReplyMutator.applies($0, to: reply)
        }
        let weights = candidates.map { max(configuration.weights[$0] ?? 4, 0) }
        let total = weights.reduce(0, +)
        guard total > 0 else { return [.send(reply.bytes)] }
        var ticket = generator.below(total)
        var kind = candidates[0]
        for (candidate, weight) in zip(candidates, weights) {
            if ticket < weight {
                kind = candidate
                break
            }
            ticket -= weight
        }
        let otherKeys = recentKeys.filter { !request.keys.contains($0) }
        let context = MutationContext(
            request: request,
            controlKey: controlKey,
            otherKey: otherKeys.isEmpty ? nil : generator.pick(otherKeys),
            replyIndex: index,
            dripIntervals: configuration.dripIntervalMilliseconds
        )
        let plan = ReplyMutator.plan(kind, reply: reply, context: context, generator: &generator)
        var firstBytes: [UInt8] = []
        if case .send(let bytes) = plan.steps.first {
            firstBytes = bytes
        } else if case .flood(let pattern) = plan.steps.first {
            firstBytes = pattern
        }
        let mutation = AppliedMutation(
            kind: kind,
            connection: connectionNumber,
            connectionSeed: connectionSeed,
            replyIndex: index,
            wireProtocol: wireProtocol ?? .text,
            request: request.summary,
            detail: plan.detail,
            original: Array(reply.bytes.prefix(512)),
            sent: Array(firstBytes.prefix(512))
        )
        configuration.onMutation?(mutation)
        shared.recorder.state.withLock { state in
            state.statistics.mutationsByKind[kind, default: 0] += 1
            state.mutations.append(mutation)
        }
        return plan.steps
    }

    private func run(_ steps: ArraySlice<EmitStep>) {
        guard !closed else { return }
        guard let step = steps.first else { return finishedEmitting() }
        let rest = steps.dropFirst()
        switch step {
        case .send(let bytes):
            if !bytes.isEmpty {
                client.writeAndFlush(client.allocator.buffer(bytes: bytes), promise: nil)
            }
            run(rest)
        case .hangUp:
            close()
        case .drip(let bytes, let interval):
            drip(bytes[...], interval: interval, deadline: .now() + TimeAmount(configuration.maximumDripDuration)) {
                $0.run(rest)
            }
        case .flood(let pattern):
            flood(
                pattern: pattern,
                sent: 0,
                deadline: .now() + TimeAmount(configuration.maximumFloodDuration)
            )
        }
    }

    private func drip(
        _ bytes: ArraySlice<UInt8>,
        interval: Duration,
        deadline: NIODeadline,
        then next: @escaping (ProxySession) -> Void
    ) {
        guard !closed else { return }
        guard let byte = bytes.first else { return next(self) }
        if NIODeadline.now() >= deadline {
            client.writeAndFlush(client.allocator.buffer(bytes: bytes), promise: nil)
            return next(self)
        }
        client.writeAndFlush(client.allocator.buffer(bytes: [byte]), promise: nil)
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let nextBound = NIOLoopBound(next, eventLoop: eventLoop)
        eventLoop.scheduleTask(in: TimeAmount(interval)) {
            bound.value.drip(bytes.dropFirst(), interval: interval, deadline: deadline, then: nextBound.value)
        }
    }

    /// Sends `pattern` repeatedly, in chunks of at most 16 KiB, each after the previous one was
    /// written, so the proxy never buffers more than a chunk; hangs up at either limit or when
    /// a write fails.
    private func flood(pattern: [UInt8], sent: Int, deadline: NIODeadline) {
        guard !closed else { return }
        guard sent < configuration.maximumFloodBytes, NIODeadline.now() < deadline, !pattern.isEmpty else {
            return close()
        }
        let repeats = max(1, 16_384 / pattern.count)
        var chunk: [UInt8] = []
        chunk.reserveCapacity(repeats * pattern.count)
        for _ in 0..<repeats { chunk += pattern }
        let chunkSize = chunk.count
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        client.writeAndFlush(client.allocator.buffer(bytes: chunk)).whenComplete { result in
            switch result {
            case .success:
                bound.value.flood(pattern: pattern, sent: sent + chunkSize, deadline: deadline)
            case .failure:
                bound.value.close()
            }
        }
        // A client that stops reading holds the write pending: end the flood at its deadline anyway.
        if sent == 0 {
            eventLoop.scheduleTask(deadline: deadline + .milliseconds(100)) {
                bound.value.close()
            }
        }
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

/// Receives the client's bytes.
final class FrontendHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let session: ProxySession

    init(session: ProxySession) {
        self.session = session
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        session.clientSent(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        session.close()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        session.close()
    }
}

/// Receives the backend's bytes.
final class BackendHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let session: ProxySession

    init(session: ProxySession) {
        self.session = session
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        session.backendSent(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        session.close()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        session.close()
    }
}
