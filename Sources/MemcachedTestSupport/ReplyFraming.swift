/// The wire protocol a proxied connection speaks, recognised from the client's first byte.
public enum ProxiedWireProtocol: String, Sendable, Hashable {
    /// The text protocol: lines ending in `\r\n`, values as `VALUE` blocks.
    case text
    /// The binary protocol: 24-byte headers, requests starting with the magic byte `0x80`.
    case binary
}

/// A request the proxy has forwarded and whose reply it still expects, in order.
struct ProxiedRequest {
    /// A short, printable summary for the mutation log: the command line or the opcode.
    var summary: String
    /// The keys the request names (for a binary quiet multi-get, every key of the batch).
    var keys: [String]
}

/// The opcodes of the binary protocol's quiet commands: the server answers them only on a hit or
/// an error, so their responses belong to the reply of the next non-quiet command (a multi-get's
/// `NOOP`).
let quietBinaryOpcodes: Set<UInt8> = [
    0x09, 0x0D, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1E, 0x24,
]

/// The binary `STAT` opcode, whose reply is many packets ending with one that has no key.
let binaryStatOpcode: UInt8 = 0x10

/// A growable byte buffer read from the front without moving bytes on every read: the proxy
/// parses a stream in small steps, and `removeFirst` on an array would copy the rest every time.
struct ByteQueue {
    private(set) var storage: [UInt8] = []
    private(set) var start = 0

    var count: Int { storage.count - start }

    mutating func append(_ bytes: some Sequence<UInt8>) {
        storage.append(contentsOf: bytes)
    }

    subscript(offset: Int) -> UInt8 { storage[start + offset] }

    /// The offset of the first `\r\n`, if a whole line is buffered.
    func lineEnd() -> Int? {
        var index = start
        while index + 1 < storage.count {
            if storage[index] == 13 && storage[index + 1] == 10 {
                return index - start
            }
            index += 1
        }
        return nil
    }

    func peek(_ length: Int) -> ArraySlice<UInt8> {
        storage[start..<(start + length)]
    }

    mutating func take(_ length: Int) -> [UInt8] {
        let bytes = Array(storage[start..<(start + length)])
        start += length
        // Compact once the consumed prefix dominates, so the buffer does not grow without end.
        if start > 65_536 && start * 2 > storage.count {
            storage.removeFirst(start)
            start = 0
        }
        return bytes
    }
}

/// Splits the client's text-protocol requests and notes which ones the server will answer.
///
/// Storage commands carry a data block whose length is in the command line; it is skipped, not
/// parsed, so a value containing `\r\n` does not look like a command. Commands sent with
/// `noreply`, and `quit`, get no reply and are not queued.
struct TextRequestParser {
    private var buffer = ByteQueue()
    private var dataToSkip = 0

    mutating func feed(_ bytes: some Sequence<UInt8>) -> [ProxiedRequest] {
        buffer.append(bytes)
        var requests: [ProxiedRequest] = []
        while true {
            if dataToSkip > 0 {
                let skipped = min(dataToSkip, buffer.count)
                _ = buffer.take(skipped)
                dataToSkip -= skipped
                if dataToSkip > 0 { return requests }
            }
            guard let end = buffer.lineEnd() else { return requests }
            let line = String(decoding: buffer.take(end), as: UTF8.self)
            _ = buffer.take(2)
            let tokens = line.split(separator: " ").map(String.init)
            guard let command = tokens.first else { continue }
            let expectsReply = tokens.last != "noreply" && command != "quit"
            var keys: [String] = []
            switch command {
            case "get", "gets":
                keys = Array(tokens.dropFirst())
            case "gat", "gats":
                keys = Array(tokens.dropFirst(2))
            case "set", "add", "replace", "append", "prepend", "cas":
                if tokens.count > 4, let length = Int(tokens[4]), length >= 0 {
                    dataToSkip = length + 2
                }
                keys = tokens.count > 1 ? [tokens[1]] : []
            case "delete", "incr", "decr", "touch":
                keys = tokens.count > 1 ? [tokens[1]] : []
            default:
                break
            }
            if expectsReply {
                requests.append(ProxiedRequest(summary: String(line.prefix(200)), keys: keys))
            }
        }
    }
}

/// Splits the client's binary-protocol requests and groups quiet ones with the non-quiet request
/// whose reply will carry their responses.
struct BinaryRequestParser {
    private var buffer = ByteQueue()
    private var quietKeys: [String] = []
    private var quietCount = 0

    mutating func feed(_ bytes: some Sequence<UInt8>) -> [ProxiedRequest] {
        buffer.append(bytes)
        var requests: [ProxiedRequest] = []
        while buffer.count >= 24 {
            let bodyLength =
                Int(buffer[8]) << 24 | Int(buffer[9]) << 16 | Int(buffer[10]) << 8 | Int(buffer[11])
            guard buffer.count >= 24 + bodyLength else { break }
            let packet = buffer.take(24 + bodyLength)
            let opcode = packet[1]
            let keyLength = Int(packet[2]) << 8 | Int(packet[3])
            let extrasLength = Int(packet[4])
            var key = ""
            if keyLength > 0, 24 + extrasLength + keyLength <= packet.count {
                key = String(decoding: packet[(24 + extrasLength)..<(24 + extrasLength + keyLength)], as: UTF8.self)
            }
            if quietBinaryOpcodes.contains(opcode) {
                if !key.isEmpty { quietKeys.append(key) }
                quietCount += 1
                continue
            }
            var keys = quietKeys
            if !key.isEmpty { keys.append(key) }
            let summary =
                quietCount > 0
                ? "\(quietCount) quiet + opcode 0x\(hex(opcode)) \(key)"
                : "opcode 0x\(hex(opcode)) \(key)"
            requests.append(ProxiedRequest(summary: summary, keys: keys))
            quietKeys = []
            quietCount = 0
        }
        return requests
    }
}

/// One part of a text-protocol reply.
enum TextReplyBlock {
    /// A `VALUE <key> <flags> <bytes> [<cas>]` header, split at spaces, and its data block.
    case value(header: [String], data: [UInt8])
    /// Any other line, without its `\r\n`: `END`, `STORED`, `STAT …`, a number, an error.
    case line([UInt8])

    var bytes: [UInt8] {
        switch self {
        case .value(let header, let data):
            Array(header.joined(separator: " ").utf8) + [13, 10] + data + [13, 10]
        case .line(let line):
            line + [13, 10]
        }
    }
}

/// A binary-protocol packet: its 24-byte header and its body.
struct BinaryPacket {
    var header: [UInt8]
    var body: [UInt8]

    var magic: UInt8 {
        get { header[0] }
        set { header[0] = newValue }
    }
    var opcode: UInt8 {
        get { header[1] }
        set { header[1] = newValue }
    }
    var keyLength: Int {
        get { Int(header[2]) << 8 | Int(header[3]) }
        set {
            header[2] = UInt8(truncatingIfNeeded: newValue >> 8)
            header[3] = UInt8(truncatingIfNeeded: newValue)
        }
    }
    var extrasLength: Int {
        get { Int(header[4]) }
        set { header[4] = UInt8(truncatingIfNeeded: newValue) }
    }
    var status: UInt16 {
        get { UInt16(header[6]) << 8 | UInt16(header[7]) }
        set {
            header[6] = UInt8(truncatingIfNeeded: newValue >> 8)
            header[7] = UInt8(truncatingIfNeeded: newValue)
        }
    }
    var bodyLength: UInt32 {
        get { UInt32(header[8]) << 24 | UInt32(header[9]) << 16 | UInt32(header[10]) << 8 | UInt32(header[11]) }
        set {
            for index in 0..<4 {
                header[8 + index] = UInt8(truncatingIfNeeded: newValue >> (24 - 8 * UInt32(index)))
            }
        }
    }
    var opaque: UInt32 {
        get { UInt32(header[12]) << 24 | UInt32(header[13]) << 16 | UInt32(header[14]) << 8 | UInt32(header[15]) }
        set {
            for index in 0..<4 {
                header[12 + index] = UInt8(truncatingIfNeeded: newValue >> (24 - 8 * UInt32(index)))
            }
        }
    }

    var bytes: [UInt8] { header + body }

    /// A well-formed response packet.
    static func response(
        opcode: UInt8,
        status: UInt16 = 0,
        opaque: UInt32,
        extras: [UInt8] = [],
        key: [UInt8] = [],
        value: [UInt8] = [],
        cas: UInt64 = 0
    ) -> BinaryPacket {
        var packet = BinaryPacket(header: [UInt8](repeating: 0, count: 24), body: extras + key + value)
        packet.magic = 0x81
        packet.opcode = opcode
        packet.keyLength = key.count
        packet.extrasLength = extras.count
        packet.status = status
        packet.bodyLength = UInt32(packet.body.count)
        packet.opaque = opaque
        for index in 0..<8 {
            packet.header[16 + index] = UInt8(truncatingIfNeeded: cas >> (56 - 8 * UInt64(index)))
        }
        return packet
    }
}

/// One complete reply from the backend, split into the parts the mutations change.
enum ProxiedReply {
    case text([TextReplyBlock])
    case binary([BinaryPacket])

    var bytes: [UInt8] {
        switch self {
        case .text(let blocks): blocks.flatMap(\.bytes)
        case .binary(let packets): packets.flatMap(\.bytes)
        }
    }
}

/// Cuts the backend's text-protocol byte stream into complete replies.
///
/// A reply is a run of `VALUE` blocks or `STAT` lines ended by any other line (`END`), or a single
/// line. This needs no knowledge of the request, so the framing cannot drift from the requests.
struct TextReplyFramer {
    private var buffer = ByteQueue()
    private var blocks: [TextReplyBlock] = []
    /// The `VALUE` header whose data block has not fully arrived, and the data block's length.
    private var pendingValue: (header: [String], length: Int)?

    mutating func feed(_ bytes: some Sequence<UInt8>) -> [ProxiedReply] {
        buffer.append(bytes)
        var replies: [ProxiedReply] = []
        while true {
            if let pending = pendingValue {
                guard buffer.count >= pending.length + 2 else { return replies }
                let data = buffer.take(pending.length)
                _ = buffer.take(2)
                blocks.append(.value(header: pending.header, data: data))
                pendingValue = nil
                continue
            }
            guard let end = buffer.lineEnd() else { return replies }
            let line = buffer.take(end)
            _ = buffer.take(2)
            if line.starts(with: Array("VALUE ".utf8)) {
                let header = String(decoding: line, as: UTF8.self).split(separator: " ").map(String.init)
                // memcached itself never sends a malformed header; treat one as a plain line.
                if header.count >= 4, let length = Int(header[3]), length >= 0 {
                    pendingValue = (header, length)
                    continue
                }
            }
            blocks.append(.line(line))
            if line.starts(with: Array("STAT ".utf8)) {
                continue
            }
            replies.append(.text(blocks))
            blocks = []
        }
    }
}

/// Cuts the backend's binary-protocol byte stream into complete replies: the responses to quiet
/// requests are held until the response to the next non-quiet one, and `STAT` responses until the
/// one without a key.
struct BinaryReplyFramer {
    private var buffer = ByteQueue()
    private var packets: [BinaryPacket] = []

    mutating func feed(_ bytes: some Sequence<UInt8>) -> [ProxiedReply] {
        buffer.append(bytes)
        var replies: [ProxiedReply] = []
        while buffer.count >= 24 {
            let bodyLength =
                Int(buffer[8]) << 24 | Int(buffer[9]) << 16 | Int(buffer[10]) << 8 | Int(buffer[11])
            guard buffer.count >= 24 + bodyLength else { break }
            let header = buffer.take(24)
            let packet = BinaryPacket(header: header, body: buffer.take(bodyLength))
            packets.append(packet)
            if quietBinaryOpcodes.contains(packet.opcode) {
                continue
            }
            if packet.opcode == binaryStatOpcode && packet.keyLength > 0 {
                continue
            }
            replies.append(.binary(packets))
            packets = []
        }
        return replies
    }
}

func hex(_ byte: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
}

/// Bytes as printable text: ASCII as is, `\r`, `\n` and `\\` escaped, everything else as `\xNN`.
/// Used for the mutation log, so a reply can be pasted into a reproduction.
public func escapedReplyBytes(_ bytes: some Sequence<UInt8>) -> String {
    var text = ""
    for byte in bytes {
        switch byte {
        case 13: text += "\\r"
        case 10: text += "\\n"
        case 92: text += "\\\\"
        case 32...126: text.unicodeScalars.append(Unicode.Scalar(byte))
        default: text += "\\x" + hex(byte)
        }
    }
    return text
}
