internal import CLibMemcached

/// A consistent-hashing continuum, built here rather than by libmemcached, which asserts (and so
/// aborts the process) beyond 100 servers. The handle routes with libmemcached's modula
/// distribution and a key hash that returns the chosen server's position (see
/// ``Handle/installRouter(for:)``), so `position % count` is that position.
///
/// The points are the ones libmemcached 1.1's `update_continuum` (hosts.cc) makes, or, for
/// ``Scheme/libketama``, the ones libketama's `ketama_create_continuum` makes; the lookup is the
/// lower bound both use, wrapping to the first point.
final class Continuum: Sendable {
    /// How many points a server gets and how they are computed.
    enum Scheme: Sendable {
        /// libmemcached's weighted continuum (`MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED`, also
        /// twemproxy's `ketama`): `floor(share × 160 / 4 × servers)` MD5 digests of
        /// `name-i`, in single precision, 4 points per digest.
        case libmemcachedWeighted
        /// libketama itself: `floorf(share × 40.0 × servers)` digests, the product taken in double
        /// precision and rounded to single before the floor. For 92 of the server counts from 1 to
        /// 1,000 with equal weights this gives a server 40 digests where libmemcached gives 39.
        case libketama
        /// libmemcached's unweighted continuum (`MEMCACHED_DISTRIBUTION_CONSISTENT`, pylibmc's
        /// `ketama`): 100 points per server, each the key hash of `name-i`.
        case libmemcachedUnweighted
    }

    /// Each point is its value in the high 32 bits and its server's position in the low 32 bits,
    /// sorted: libmemcached's order (value, then position), so equal values resolve to the lower
    /// position as in libmemcached.
    private let points: [UInt64]

    /// Builds the continuum of `servers`, in their order.
    ///
    /// - Parameters:
    ///   - servers: Each server's name on the continuum (see ``name(of:scheme:)``) and weight.
    ///   - scheme: How points are made.
    ///   - keyHash: The hash of ``Scheme/libmemcachedUnweighted``'s points (the configuration's
    ///     key hash, as libmemcached uses); the other schemes use MD5.
    init(servers: [(name: String, weight: Int)], scheme: Scheme, keyHash: MemcachedHash.Kind) {
        let total = servers.reduce(0) { $0 + $1.weight }
        var points: [UInt64] = []
        points.reserveCapacity(servers.count * 160)
        // "name-" once per server; each point's text appends the index's digits to it.
        var text: [UInt8] = []
        var digest = [UInt8](repeating: 0, count: 16)
        for (position, server) in servers.enumerated() {
            let tag = UInt64(position)
            let prefix = Array(server.name.utf8) + [UInt8(ascii: "-")]
            switch scheme {
            case .libmemcachedUnweighted:
                for index in 0..<100 {
                    Self.pointText(&text, prefix, index)
                    let value = text.withUnsafeBytes { CustomHashFunction.value(keyHash, $0) }
                    points.append(UInt64(value) << 32 | tag)
                }
            case .libmemcachedWeighted, .libketama:
                let digests = Self.digestCount(
                    weight: server.weight,
                    total: total,
                    servers: servers.count,
                    scheme: scheme
                )
                for index in 0..<digests {
                    Self.pointText(&text, prefix, index)
                    text.withUnsafeBufferPointer { bytes in
                        digest.withUnsafeMutableBufferPointer { result in
                            libhashkit_md5_signature(bytes.baseAddress, bytes.count, result.baseAddress)
                        }
                    }
                    for word in 0..<4 {
                        let value =
                            UInt32(digest[word * 4]) | UInt32(digest[word * 4 + 1]) << 8
                            | UInt32(digest[word * 4 + 2]) << 16 | UInt32(digest[word * 4 + 3]) << 24
                        points.append(UInt64(value) << 32 | tag)
                    }
                }
            }
        }
        self.points = Self.sorted(points)
    }

    /// `points` in ascending order, by a least-significant-digit radix sort on 16-bit digits:
    /// four linear passes (fewer when a digit is the same everywhere, such as the high half of
    /// a server position), about a tenth of the comparison sort's time at 160,000 points.
    private static func sorted(_ points: [UInt64]) -> [UInt64] {
        var source = points
        var target = [UInt64](repeating: 0, count: points.count)
        var counts = [Int](repeating: 0, count: 1 << 16)
        for shift in stride(from: 0, to: 64, by: 16) {
            counts.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
            for point in source {
                counts[Int(truncatingIfNeeded: point >> UInt64(shift)) & 0xFFFF] += 1
            }
            // A digit every point shares leaves the order as it is.
            if counts.contains(source.count) { continue }
            var offset = 0
            for digit in counts.indices {
                let count = counts[digit]
                counts[digit] = offset
                offset += count
            }
            for point in source {
                let digit = Int(truncatingIfNeeded: point >> UInt64(shift)) & 0xFFFF
                target[counts[digit]] = point
                counts[digit] += 1
            }
            swap(&source, &target)
        }
        return source
    }

    /// Makes `text` the point text `name-index` (`prefix` is `name-`), as C's `%s-%u` writes it.
    private static func pointText(_ text: inout [UInt8], _ prefix: [UInt8], _ index: Int) {
        text.removeAll(keepingCapacity: true)
        text.append(contentsOf: prefix)
        var divisor = 1
        while divisor * 10 <= index { divisor *= 10 }
        var rest = index
        while divisor > 0 {
            text.append(UInt8(ascii: "0") + UInt8(rest / divisor))
            rest %= divisor
            divisor /= 10
        }
    }

    /// How many MD5 digests (of 4 points each) a server gets, computed with the precision and
    /// rounding of the implementation the scheme follows, since a different rounding changes
    /// the count for some numbers of servers.
    static func digestCount(weight: Int, total: Int, servers: Int, scheme: Scheme) -> Int {
        guard total > 0 else { return 0 }
        let share = Float(weight) / Float(total)
        switch scheme {
        case .libketama:
            return Int(Float(Double(share) * 40.0 * Double(Float(servers))).rounded(.down))
        case .libmemcachedWeighted, .libmemcachedUnweighted:
            // (float)(pct * 160 / 4 * (float)live + 0.0000000001F), every step in single precision.
            let scaled: Float = share * 160 / 4 * Float(servers) + 0.000_000_000_1
            return Int(scaled.rounded(.down))
        }
    }

    /// A server's name on the continuum.
    ///
    /// libmemcached names a TCP server `host` on port 11211 and `host:port` otherwise, with the
    /// host as given (an IPv6 address without brackets), and a Unix-domain socket `path:0`.
    /// ``Scheme/libketama`` uses `host:port` always, as libketama's server files list servers.
    static func name(of server: MemcachedServer, scheme: Scheme) -> String {
        switch server.address {
        case .tcp(let host, let port):
            port == MemcachedServer.defaultPort && scheme != .libketama ? host : "\(host):\(port)"
        case .unixSocket(let path):
            "\(path):0"
        }
    }

    /// The position of the server whose point is the first at or after `hash`, wrapping to the
    /// first point; 0 for a continuum without points.
    @inline(__always)
    func serverPosition(forHash hash: UInt32) -> UInt32 {
        points.withUnsafeBufferPointer { points in
            let target = UInt64(hash) << 32
            var low = 0
            var high = points.count
            while low < high {
                let middle = (low + high) >> 1
                if points[middle] < target {
                    low = middle + 1
                } else {
                    high = middle
                }
            }
            guard !points.isEmpty else { return 0 }
            return UInt32(truncatingIfNeeded: points[low == points.count ? 0 : low])
        }
    }
}
