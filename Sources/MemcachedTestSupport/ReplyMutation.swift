/// A way ``MutatingProxy`` can corrupt one reply.
///
/// Kinds are selectable (``MutatingProxy/Configuration/enabledMutations``) so a test can leave out
/// the ones that crash a library before it is fixed. Each kind applies only to replies it makes
/// sense for: the `VALUE`-field kinds to text replies with a value, the `binary…` kinds to binary
/// replies; the rest to both protocols.
public enum ReplyMutationKind: String, CaseIterable, Sendable, Hashable, Comparable {
    /// A text `VALUE` length of `-1`, `-2` or a negative 32-bit-looking number.
    case lengthNegative
    /// A text `VALUE` length of 2³² − 1, 2³², 2⁶⁴ − 1, 2⁶⁴ or more digits than any integer holds.
    case lengthHuge
    /// A text `VALUE` length one or two more or less than the data block.
    case lengthOffByOne
    /// A text `VALUE` length that is not a decimal number: letters, empty, hex, a sign.
    case lengthNonNumeric
    /// A text `VALUE` flags field that is negative, overflows 32 bits, is empty or not a number.
    case flagsCorrupt
    /// A text `VALUE` CAS field that is negative, overflows 64 bits, is empty or not a number
    /// (added to `get` replies, which have none).
    case casCorrupt
    /// The reply replaced by an error: `SERVER_ERROR …`, `CLIENT_ERROR …`, `ERROR`, or a binary
    /// status such as ENOMEM (0x82). The stream stays in step: a server may really answer this.
    case errorReply
    /// An error reply followed by the original reply, which is then left over on the connection.
    case errorReplyThenOriginal
    /// An error reply followed by a complete `VALUE` for a control key with a stale value: a
    /// client that reads it as the next command's reply returns a wrong value.
    case errorReplyThenForeignValue
    /// The value answered under another key (a control key or another key the client used).
    case foreignValue
    /// The first value block (or packet) sent twice.
    case duplicateValue
    /// Part of the reply, then the connection closes.
    case truncateThenHangUp
    /// Part of the reply, then nothing more for this reply; later replies are forwarded as usual.
    case truncateThenSilence
    /// The reply followed by bytes nobody asked for: a line, a value block, a packet or noise.
    case trailingBytes
    /// A text data block ended by something other than `\r\n`.
    case wrongDataTerminator
    /// The start of the reply, then bytes without end until a byte or time limit, then a hang-up.
    case flood
    /// The reply sent one byte at a time with a pause after each, up to a time limit, then the
    /// rest at once.
    case slowDrip
    /// The connection closes before any byte of the reply.
    case hangUpBeforeReply
    /// A binary packet whose magic byte is not the response magic `0x81`.
    case binaryMagic
    /// A binary packet with another command's opcode.
    case binaryOpcode
    /// A binary key length that disagrees with the body length or the key.
    case binaryKeyLength
    /// A binary extras length that disagrees with the body length.
    case binaryExtrasLength
    /// A binary body length one more or less, zero, or huge (up to 2³² − 1).
    case binaryBodyLength
    /// A binary packet whose opaque does not match its request.
    case binaryOpaque
    /// A binary packet with another status: ENOMEM, unknown command, not found, busy, `0xffff`.
    case binaryStatus

    /// Orders kinds as declared, for stable summaries.
    public static func < (lhs: Self, rhs: Self) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }

    /// Kinds that corrupt a field of a text `VALUE` header or data block.
    static let textValueKinds: Set<Self> = [
        .lengthNegative, .lengthHuge, .lengthOffByOne, .lengthNonNumeric, .flagsCorrupt, .casCorrupt,
        .wrongDataTerminator,
    ]

    /// Kinds that corrupt a binary header.
    static let binaryHeaderKinds: Set<Self> = [
        .binaryMagic, .binaryOpcode, .binaryKeyLength, .binaryExtrasLength, .binaryBodyLength, .binaryOpaque,
        .binaryStatus,
    ]
}

/// A mutation the proxy applied, with what is needed to name and replay it.
public struct AppliedMutation: Sendable, CustomStringConvertible {
    /// What was done.
    public var kind: ReplyMutationKind
    /// The proxied connection, numbered from 1 in the order the proxy accepted them.
    public var connection: Int
    /// The seed of that connection's generator, derived from the proxy's seed and ``connection``.
    public var connectionSeed: UInt64
    /// The reply's index on its connection, from 0: with ``connectionSeed`` the step of the
    /// generator that decided this mutation.
    public var replyIndex: Int
    /// The wire protocol of the connection.
    public var wireProtocol: ProxiedWireProtocol
    /// The request the reply answered: its command line, or its opcode and key.
    public var request: String
    /// The variant chosen within the kind, such as `length=-1`.
    public var detail: String
    /// The backend's reply, at most the first 512 bytes.
    public var original: [UInt8]
    /// The bytes the mutation sends first (before a drip, flood or hang-up), at most 512.
    public var sent: [UInt8]

    /// One line: kind, connection and step, request, detail, and both replies escaped.
    public var description: String {
        "\(kind.rawValue) [conn \(connection) seed \(connectionSeed) reply \(replyIndex) \(wireProtocol)] "
            + "request '\(request)' \(detail): '\(escapedReplyBytes(original))' -> '\(escapedReplyBytes(sent))'"
    }
}

/// SplitMix64: a small, seeded, deterministic generator, so a fuzz run or a failing sequence of a
/// property test can be replayed from its seed.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    /// The generator's state; the seed to start from.
    public var state: UInt64

    /// Creates a generator that starts from `state`.
    public init(state: UInt64) {
        self.state = state
    }

    /// The next value of the sequence.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A generator for one step of a stream: every reply gets its own, so a reply's mutation
    /// depends only on the connection's seed and the reply's index, not on earlier choices.
    init(seed: UInt64, step: Int) {
        var mixer = SplitMix64(state: seed ^ (UInt64(truncatingIfNeeded: step) &* 0xD6E8_FEB8_6659_FD93))
        state = mixer.next()
    }

    mutating func pick<T>(_ choices: [T]) -> T {
        choices[Int(next() % UInt64(choices.count))]
    }

    mutating func below(_ bound: Int) -> Int {
        bound <= 0 ? 0 : Int(next() % UInt64(bound))
    }
}

/// What the proxy does with a reply, step by step.
enum EmitStep {
    /// Send these bytes.
    case send([UInt8])
    /// Send these bytes one at a time, pausing after each, up to the drip time limit, then the rest.
    case drip([UInt8], interval: Duration)
    /// Send this pattern over and over up to the flood limits, then hang up.
    case flood([UInt8])
    /// Close the client's connection (and the backend connection behind it).
    case hangUp
}

/// A chosen mutation: the steps to emit and a note of the variant.
struct MutationPlan {
    var steps: [EmitStep]
    var detail: String
}

/// What the mutations may use besides the reply itself.
struct MutationContext {
    var request: ProxiedRequest
    /// Keys seen on this connection that start with the control prefix, newest last.
    var controlKey: String?
    /// A key the client used on this connection that the current request does not name.
    var otherKey: String?
    var replyIndex: Int
    var dripIntervals: ClosedRange<Int>
}

enum ReplyMutator {
    static let errorLines = [
        "SERVER_ERROR out of memory storing object",
        "SERVER_ERROR object too large for cache",
        "SERVER_ERROR",
        "CLIENT_ERROR bad data chunk",
        "CLIENT_ERROR line too long",
        "ERROR",
        "SERVER_ERROR " + String(repeating: "x", count: 300),
    ]

    static let binaryErrorStatuses: [UInt16] = [
        0x82, 0x81, 0x84, 0x85, 0x86, 0x04, 0x05, 0x01, 0x02, 0x03, 0x20, 0xFFFF,
    ]

    /// Whether `kind` can change `reply` at all.
    static func applies(_ kind: ReplyMutationKind, to reply: ProxiedReply) -> Bool {
        switch reply {
        case .text(let blocks):
            if ReplyMutationKind.binaryHeaderKinds.contains(kind) { return false }
            if ReplyMutationKind.textValueKinds.contains(kind) || kind == .duplicateValue {
                return blocks.contains { if case .value = $0 { true } else { false } }
            }
            return true
        case .binary:
            return !ReplyMutationKind.textValueKinds.contains(kind)
        }
    }

    /// The steps that apply `kind` to `reply`.
    static func plan(
        _ kind: ReplyMutationKind,
        reply: ProxiedReply,
        context: MutationContext,
        generator: inout SplitMix64
    ) -> MutationPlan {
        let original = reply.bytes
        switch kind {
        case .truncateThenHangUp, .truncateThenSilence:
            let length = original.isEmpty ? 0 : generator.below(original.count)
            let steps: [EmitStep] = [.send(Array(original.prefix(length)))]
            return MutationPlan(
                steps: kind == .truncateThenHangUp ? steps + [.hangUp] : steps,
                detail: "first \(length) of \(original.count) bytes"
            )
        case .hangUpBeforeReply:
            return MutationPlan(steps: [.hangUp], detail: "no byte")
        case .slowDrip:
            let interval = Int.random(in: context.dripIntervals, using: &generator)
            return MutationPlan(
                steps: [.drip(original, interval: .milliseconds(interval))],
                detail: "1 byte / \(interval) ms"
            )
        case .flood:
            return flood(reply: reply, context: context, generator: &generator)
        case .errorReply, .errorReplyThenOriginal, .errorReplyThenForeignValue:
            let (error, name) = errorReply(for: reply, generator: &generator)
            var bytes = error
            var detail = name
            if kind == .errorReplyThenOriginal {
                bytes += original
                detail += " + original"
            } else if kind == .errorReplyThenForeignValue {
                let key = context.controlKey ?? context.otherKey ?? "intruder"
                bytes += foreignValue(reply: reply, key: key, value: "stale-\(context.replyIndex)", complete: true)
                detail += " + value of \(key)"
            }
            return MutationPlan(steps: [.send(bytes)], detail: detail)
        case .foreignValue:
            let key =
                generator.below(2) == 0
                ? (context.controlKey ?? context.otherKey) : (context.otherKey ?? context.controlKey)
            let chosen = key ?? "intruder"
            return MutationPlan(
                steps: [
                    .send(replacingValue(reply, key: chosen, value: "intruder-\(context.replyIndex)"))
                ],
                detail: "key \(chosen)"
            )
        case .duplicateValue:
            return MutationPlan(steps: [.send(duplicated(reply))], detail: "first value twice")
        case .trailingBytes:
            let (extra, name) = trailing(reply: reply, context: context, generator: &generator)
            return MutationPlan(steps: [.send(original + extra)], detail: name)
        case .lengthNegative, .lengthHuge, .lengthOffByOne, .lengthNonNumeric, .flagsCorrupt, .casCorrupt,
            .wrongDataTerminator:
            guard case .text(let blocks) = reply else { return MutationPlan(steps: [.send(original)], detail: "n/a") }
            let (mutated, detail) = mutateValueField(kind, blocks: blocks, generator: &generator)
            return MutationPlan(steps: [.send(mutated)], detail: detail)
        case .binaryMagic, .binaryOpcode, .binaryKeyLength, .binaryExtrasLength, .binaryBodyLength, .binaryOpaque,
            .binaryStatus:
            guard case .binary(let packets) = reply else {
                return MutationPlan(steps: [.send(original)], detail: "n/a")
            }
            let (mutated, detail) = mutateBinaryHeader(kind, packets: packets, generator: &generator)
            return MutationPlan(steps: [.send(mutated)], detail: detail)
        }
    }

    // MARK: - Text value fields

    private static func mutateValueField(
        _ kind: ReplyMutationKind,
        blocks: [TextReplyBlock],
        generator: inout SplitMix64
    ) -> ([UInt8], String) {
        let valueIndices = blocks.indices.filter { if case .value = blocks[$0] { true } else { false } }
        let target = generator.pick(valueIndices)
        guard case .value(var header, let data) = blocks[target] else { return (blocks.flatMap(\.bytes), "n/a") }
        var bytes: [UInt8] = []
        var detail = ""
        var terminator: [UInt8] = [13, 10]
        switch kind {
        case .lengthNegative:
            header[3] = generator.pick(["-1", "-2", "-\(data.count)", "-4294967296", "-9223372036854775808"])
            detail = "length=\(header[3])"
        case .lengthHuge:
            header[3] = generator.pick([
                "4294967295", "4294967296", "2147483648", "18446744073709551615", "18446744073709551614",
                "18446744073709551616", "99999999999999999999999",
            ])
            detail = "length=\(header[3])"
        case .lengthOffByOne:
            let deltas = data.isEmpty ? [1, 2] : (data.count == 1 ? [1, 2, -1] : [1, 2, -1, -2])
            let delta = generator.pick(deltas)
            header[3] = String(data.count + delta)
            detail = "length=\(header[3]) for \(data.count) bytes"
        case .lengthNonNumeric:
            header[3] = generator.pick([
                "abc", "", "12abc", "0x10", "1e3", "+\(data.count)", " \(data.count)", "\u{7F}",
            ])
            detail = "length='\(header[3])'"
        case .flagsCorrupt:
            header[2] = generator.pick([
                "-1", "-2", "4294967296", "18446744073709551616", "abc", "", "0x10", "99999999999999999999999",
            ])
            detail = "flags='\(header[2])'"
        case .casCorrupt:
            let value = generator.pick([
                "-1", "18446744073709551616", "99999999999999999999999", "abc", "", "0x10", "-18446744073709551615",
            ])
            if header.count >= 5 {
                header[4] = value
            } else {
                header.append(value)
            }
            detail = "cas='\(value)'"
        case .wrongDataTerminator:
            terminator = generator.pick([[10, 13], [13], [10], [], [88, 88], [13, 13, 10], [0, 0]])
            detail = "terminator='\(escapedReplyBytes(terminator))'"
        default:
            break
        }
        for (index, block) in blocks.enumerated() {
            if index == target {
                bytes += Array(header.joined(separator: " ").utf8) + [13, 10] + data + terminator
            } else {
                bytes += block.bytes
            }
        }
        return (bytes, detail)
    }

    // MARK: - Binary headers

    private static func mutateBinaryHeader(
        _ kind: ReplyMutationKind,
        packets: [BinaryPacket],
        generator: inout SplitMix64
    ) -> ([UInt8], String) {
        var packets = packets
        let target = generator.below(packets.count)
        var packet = packets[target]
        let detail: String
        switch kind {
        case .binaryMagic:
            packet.magic = generator.pick([0x80, 0x00, 0xFF, 0x82, 0x18])
            detail = "magic=0x\(hex(packet.magic))"
        case .binaryOpcode:
            var opcode = generator.pick([0x00, 0x01, 0x0A, 0x0C, 0x0D, 0x10, 0x1C, 0x20, 0x7F, 0xFF] as [UInt8])
            if opcode == packet.opcode { opcode &+= 1 }
            packet.opcode = opcode
            detail = "opcode=0x\(hex(opcode))"
        case .binaryKeyLength:
            let choices = [
                packet.keyLength + 1, max(packet.keyLength - 1, 0) == packet.keyLength ? 1 : packet.keyLength - 1,
                0xFFFF, Int(packet.bodyLength) + 1, 0,
            ]
            var value = generator.pick(choices)
            if value == packet.keyLength { value = packet.keyLength + 3 }
            packet.keyLength = value
            detail = "keyLength=\(value)"
        case .binaryExtrasLength:
            var value = generator.pick([packet.extrasLength + 1, 0xFF, Int(packet.bodyLength) + 1, 0, 8, 3])
            if value == packet.extrasLength { value = packet.extrasLength + 4 }
            packet.extrasLength = value
            detail = "extrasLength=\(value)"
        case .binaryBodyLength:
            let length = packet.bodyLength
            var value = generator.pick([
                length &+ 1, length == 0 ? 1 : length - 1, 0, 0xFFFF_FFFF, 0x8000_0000, 0x7FFF_FFFF, 0x0100_0000,
            ])
            if value == length { value = length &+ 2 }
            packet.bodyLength = value
            detail = "bodyLength=\(value) for \(length) bytes"
        case .binaryOpaque:
            packet.opaque = generator.pick([
                packet.opaque &+ 1, packet.opaque &- 1, 0, 0xFFFF_FFFF, packet.opaque ^ 0x8000_0000,
            ])
            detail = "opaque=\(packet.opaque)"
        case .binaryStatus:
            var status = generator.pick(binaryErrorStatuses)
            if status == packet.status { status = 0 }
            packet.status = status
            detail = "status=0x\(String(status, radix: 16)) on packet \(target)"
        default:
            detail = "n/a"
        }
        packets[target] = packet
        return (packets.flatMap(\.bytes), detail + " on packet \(target) of \(packets.count)")
    }

    // MARK: - Whole replies

    private static func errorReply(
        for reply: ProxiedReply,
        generator: inout SplitMix64
    ) -> ([UInt8], String) {
        switch reply {
        case .text:
            let line = generator.pick(errorLines)
            return (Array(line.utf8) + [13, 10], "'\(line.prefix(60))'")
        case .binary(let packets):
            let last = packets.last!
            let status = generator.pick(binaryErrorStatuses)
            let message = Array((status == 0x82 ? "Out of memory" : "fuzzed error").utf8)
            let packet = BinaryPacket.response(opcode: last.opcode, status: status, opaque: last.opaque, value: message)
            return (packet.bytes, "status 0x\(String(status, radix: 16))")
        }
    }

    /// A complete value for `key`: a text `VALUE` block and `END`, or a binary `GETK` response.
    private static func foreignValue(reply: ProxiedReply, key: String, value: String, complete: Bool) -> [UInt8] {
        switch reply {
        case .text:
            return Array("VALUE \(key) 0 \(value.utf8.count)\r\n\(value)\r\n\(complete ? "END\r\n" : "")".utf8)
        case .binary(let packets):
            let opaque = packets.last?.opaque ?? 0
            return BinaryPacket.response(
                opcode: 0x0C,
                opaque: opaque &+ 1,
                extras: [0, 0, 0, 0],
                key: Array(key.utf8),
                value: Array(value.utf8),
                cas: 1
            ).bytes
        }
    }

    /// The reply with its first value under another key, or with another key's value added in
    /// front when the reply holds no value (a miss, a storage reply).
    private static func replacingValue(_ reply: ProxiedReply, key: String, value: String) -> [UInt8] {
        switch reply {
        case .text(var blocks):
            if let index = blocks.firstIndex(where: { if case .value = $0 { true } else { false } }),
                case .value(var header, let data) = blocks[index]
            {
                header[1] = key
                blocks[index] = .value(header: header, data: data)
                return blocks.flatMap(\.bytes)
            }
            return foreignValue(reply: reply, key: key, value: value, complete: false) + reply.bytes
        case .binary(var packets):
            // A response that carries a key (GETK, GETKQ): same opaque and extras, another key.
            if let index = packets.firstIndex(where: { $0.keyLength > 0 && $0.status == 0 }) {
                let packet = packets[index]
                let extras = Array(packet.body.prefix(packet.extrasLength))
                let valueBytes = Array(packet.body.dropFirst(packet.extrasLength + packet.keyLength))
                var replacement = BinaryPacket.response(
                    opcode: packet.opcode,
                    opaque: packet.opaque,
                    extras: extras,
                    key: Array(key.utf8),
                    value: valueBytes
                )
                replacement.header.replaceSubrange(16..<24, with: packet.header[16..<24])
                packets[index] = replacement
                return packets.flatMap(\.bytes)
            }
            let last = packets.last!
            var intruder = BinaryPacket.response(
                opcode: last.opcode == 0x0A ? 0x0D : last.opcode,
                opaque: last.opaque,
                extras: [0, 0, 0, 0],
                key: Array(key.utf8),
                value: Array(value.utf8),
                cas: 1
            )
            if last.opcode != 0x0A {
                intruder.opcode = 0x0C
            }
            return intruder.bytes + reply.bytes
        }
    }

    private static func duplicated(_ reply: ProxiedReply) -> [UInt8] {
        switch reply {
        case .text(var blocks):
            if let index = blocks.firstIndex(where: { if case .value = $0 { true } else { false } }) {
                blocks.insert(blocks[index], at: index)
            }
            return blocks.flatMap(\.bytes)
        case .binary(var packets):
            packets.insert(packets[0], at: 0)
            return packets.flatMap(\.bytes)
        }
    }

    private static func trailing(
        reply: ProxiedReply,
        context: MutationContext,
        generator: inout SplitMix64
    ) -> ([UInt8], String) {
        let key = context.controlKey ?? context.otherKey ?? "intruder"
        switch reply {
        case .text:
            let choices: [(String, String)] = [
                ("END\r\n", "END"),
                ("garbage\r\n", "garbage line"),
                ("STORED\r\n", "STORED"),
                ("42\r\n", "number"),
                ("VALUE \(key) 0 5\r\nstale\r\nEND\r\n", "value of \(key)"),
                ("\r\n", "empty line"),
                ("\u{0}\u{1}\u{2}xyz", "binary noise"),
            ]
            let (text, name) = generator.pick(choices)
            return (Array(text.utf8), name)
        case .binary(let packets):
            let last = packets.last!
            switch generator.below(4) {
            case 0:
                return (BinaryPacket.response(opcode: 0x0A, opaque: last.opaque).bytes, "NOOP response")
            case 1:
                return (foreignValue(reply: reply, key: key, value: "stale", complete: true), "GETK value of \(key)")
            case 2:
                return ([0x81, 0x00, 0x00], "3 header bytes")
            default:
                return (Array("garbage\r\n".utf8), "text garbage")
            }
        }
    }

    private static func flood(
        reply: ProxiedReply,
        context: MutationContext,
        generator: inout SplitMix64
    ) -> MutationPlan {
        let original = reply.bytes
        switch reply {
        case .text(let blocks):
            switch generator.below(4) {
            case 0:
                return MutationPlan(
                    steps: [
                        .send(Array("VALUE \(context.request.keys.first ?? "k") 0 1048576\r\n".utf8)), .flood([0x78]),
                    ],
                    detail: "1 MiB value of x, without end"
                )
            case 1:
                return MutationPlan(steps: [.flood(Array("STAT fuzz 1\r\n".utf8))], detail: "STAT lines")
            case 2:
                let firstLine = blocks.first.map { Array($0.bytes.prefix { $0 != 10 }) + [10] } ?? []
                return MutationPlan(steps: [.send(firstLine), .flood([0x20])], detail: "first line, then spaces")
            default:
                return MutationPlan(
                    steps: [.send(original), .flood(Array("garbage ".utf8))],
                    detail: "reply, then garbage"
                )
            }
        case .binary(let packets):
            let last = packets.last!
            switch generator.below(3) {
            case 0:
                var header = BinaryPacket.response(opcode: last.opcode, opaque: last.opaque)
                header.bodyLength = 0x00FF_FFFF
                return MutationPlan(steps: [.send(header.header), .flood([0])], detail: "16 MiB body of zeros")
            case 1:
                let quiet = BinaryPacket.response(
                    opcode: 0x0D,
                    opaque: last.opaque,
                    extras: [0, 0, 0, 0],
                    key: Array((context.request.keys.first ?? "k").utf8),
                    value: Array("x".utf8)
                )
                return MutationPlan(steps: [.flood(quiet.bytes)], detail: "GETKQ hits without end")
            default:
                return MutationPlan(steps: [.send(original), .flood([0x81])], detail: "reply, then 0x81 bytes")
            }
        }
    }
}
