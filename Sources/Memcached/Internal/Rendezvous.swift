/// Rendezvous (highest random weight) hashing, as pymemcache's `HashClient` routes keys: every
/// server scores a key with the hash of `name-key`, and the highest score wins; a tie goes to the
/// greater name. Adding or removing a server moves only the keys it wins or won.
///
/// Like ``Continuum``, it is installed as the key hash and returns the winner's position, which
/// libmemcached's modula distribution then picks (see ``Handle/installRouter(for:)``).
final class Rendezvous: Sendable {
    /// Each server's name followed by `-`, as pymemcache formats `f"{node}-{key}"`.
    private let prefixes: [[UInt8]]
    /// The names, for ties, compared as pymemcache compares Python strings (by code point, which
    /// for UTF-8 is byte order).
    private let names: [[UInt8]]
    private let hash: MemcachedHash.Kind
    /// The longest prefix: where the key starts in a lookup's buffer.
    private let keyOffset: Int

    init(names: [String], hash: MemcachedHash.Kind) {
        self.names = names.map { Array($0.utf8) }
        self.prefixes = self.names.map { $0 + [UInt8(ascii: "-")] }
        self.hash = hash
        self.keyOffset = prefixes.map(\.count).max() ?? 0
    }

    /// A server's name as pymemcache's `HashClient` names its nodes: `host:port` (an IPv6 host
    /// without brackets, port 11211 included), a Unix-domain socket by its path.
    static func name(of server: MemcachedServer) -> String {
        switch server.address {
        case .tcp(let host, let port): "\(host):\(port)"
        case .unixSocket(let path): path
        }
    }

    /// The position of the server with the highest score for `key`.
    func serverPosition(forKey key: UnsafeRawBufferPointer) -> UInt32 {
        // `name-key` for each server in one buffer on the stack (no allocation per key): the key
        // once, at the end, and each server's prefix written just before it in turn.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: max(keyOffset + key.count, 1)) { text in
            let base = text.baseAddress!
            if let source = key.baseAddress {
                (base + keyOffset).initialize(from: source.assumingMemoryBound(to: UInt8.self), count: key.count)
            }
            var winner = -1
            var highScore: UInt32 = 0
            for (position, prefix) in prefixes.enumerated() {
                let start = base + (keyOffset - prefix.count)
                prefix.withUnsafeBufferPointer { start.initialize(from: $0.baseAddress!, count: $0.count) }
                let score = CustomHashFunction.value(
                    hash,
                    UnsafeRawBufferPointer(start: start, count: prefix.count + key.count)
                )
                if winner < 0 || score > highScore {
                    (winner, highScore) = (position, score)
                } else if score == highScore, !names[position].lexicographicallyPrecedes(names[winner]) {
                    winner = position
                }
            }
            return UInt32(max(winner, 0))
        }
    }
}

extension CustomHashFunction {
    /// MurmurHash3 (x86, 32 bits, seed 0) as pymemcache's pure-Python `murmur3_32` computes it
    /// over a Python string: one unit per code point, of which it keeps the low 8 bits. For ASCII
    /// that is MurmurHash3_x86_32 of the bytes; `bytes` is the string's UTF-8.
    static func pymemcacheMurmur3(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        if !bytes.contains(where: { $0 >= 0x80 }) {
            return murmur3(bytes)
        }
        let units = String(decoding: bytes, as: UTF8.self).unicodeScalars.map { UInt8(truncatingIfNeeded: $0.value) }
        return units.withUnsafeBytes { murmur3($0) }
    }

    /// MurmurHash3_x86_32 with seed 0, from Austin Appleby's public-domain description.
    static func murmur3(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        let c1: UInt32 = 0xCC9E_2D51
        let c2: UInt32 = 0x1B87_3593
        func mixed(_ block: UInt32) -> UInt32 {
            var k = block &* c1
            k = k << 15 | k >> 17
            return k &* c2
        }
        var h: UInt32 = 0
        let blocks = bytes.count / 4
        for block in 0..<blocks {
            let base = block * 4
            let k =
                UInt32(bytes[base]) | UInt32(bytes[base + 1]) << 8 | UInt32(bytes[base + 2]) << 16
                | UInt32(bytes[base + 3]) << 24
            h ^= mixed(k)
            h = h << 13 | h >> 19
            h = h &* 5 &+ 0xE654_6B64
        }
        var tail: UInt32 = 0
        let rest = bytes.count & 3
        if rest == 3 { tail |= UInt32(bytes[blocks * 4 + 2]) << 16 }
        if rest >= 2 { tail |= UInt32(bytes[blocks * 4 + 1]) << 8 }
        if rest >= 1 {
            tail |= UInt32(bytes[blocks * 4])
            h ^= mixed(tail)
        }
        h ^= UInt32(truncatingIfNeeded: bytes.count)
        h ^= h >> 16
        h = h &* 0x85EB_CA6B
        h ^= h >> 13
        h = h &* 0xC2B2_AE35
        h ^= h >> 16
        return h
    }
}
