/// A hash function that maps keys to servers.
///
/// Every libmemcached built-in is here, plus any Swift function through ``custom(name:_:)``.
/// python-memcached's default mapping is ``crc`` with ``MemcachedDistribution/modula`` and the
/// servers in the same order; ``MemcachedConfiguration/pythonMemcachedCompatible(servers:hash:)-([String],_)``
/// sets that up. Its other two choices are ``crc32`` (`useOldServerHashFunction()`) and ``adler32``
/// (`memcache.serverHashFunction = zlib.adler32`).
///
/// libhashkit reads key bytes through C's `char`. Where `char` is signed (x86-64 and Apple
/// platforms, but not Linux on ARM64), ``default``, ``fnv1_32``, ``fnv1a_32``, ``fnv1_64`` and
/// ``fnv1a_64`` sign-extend bytes 0x80-0xFF, so a key with non-ASCII bytes hashes differently from
/// the published definitions and from a client on ARM64 Linux. ASCII keys are not affected, and
/// neither are ``crc``, ``md5``, ``crc32`` and ``adler32``, which read plain bytes everywhere.
///
/// Two hashes are equal when they are the same built-in, or when they are copies of the value one
/// call to ``custom(name:_:)`` returned: Swift cannot compare closures, so two calls with the same
/// name and the same code give two different hashes. ``crc32`` and ``adler32`` are single values,
/// equal to themselves everywhere.
public struct MemcachedHash: Sendable, Hashable, CustomStringConvertible {
    enum Kind: Sendable, Hashable {
        case builtIn(name: String, libmemcachedValue: UInt32)
        case custom(CustomHashFunction)
    }

    let kind: Kind

    private init(_ name: String, _ value: UInt32) {
        kind = .builtIn(name: name, libmemcachedValue: value)
    }

    private init(custom function: CustomHashFunction) {
        kind = .custom(function)
    }

    /// libmemcached's default, Bob Jenkins' one-at-a-time hash. C: `MEMCACHED_HASH_DEFAULT`.
    public static let `default` = MemcachedHash("default", 0)
    /// MD5 (the first 4 bytes of the digest, little-endian), as libketama hashes keys.
    /// C: `MEMCACHED_HASH_MD5`.
    public static let md5 = MemcachedHash("md5", 1)
    /// The CRC used by python-memcached's default `cmemcache_hash`: CRC-32 shifted right by 16,
    /// masked to 15 bits. C: `MEMCACHED_HASH_CRC`.
    public static let crc = MemcachedHash("crc", 2)
    /// FNV-1, 64 bit. C: `MEMCACHED_HASH_FNV1_64`.
    public static let fnv1_64 = MemcachedHash("fnv1_64", 3)
    /// FNV-1a, 64 bit. C: `MEMCACHED_HASH_FNV1A_64`.
    public static let fnv1a_64 = MemcachedHash("fnv1a_64", 4)
    /// FNV-1, 32 bit. C: `MEMCACHED_HASH_FNV1_32`.
    public static let fnv1_32 = MemcachedHash("fnv1_32", 5)
    /// FNV-1a, 32 bit. C: `MEMCACHED_HASH_FNV1A_32`.
    public static let fnv1a_32 = MemcachedHash("fnv1a_32", 6)
    /// Hsieh's hash, where libmemcached was built with it (Debian's build is not: check
    /// ``isAvailable``). C: `MEMCACHED_HASH_HSIEH`.
    public static let hsieh = MemcachedHash("hsieh", 7)
    /// MurmurHash, where libmemcached was built with it. C: `MEMCACHED_HASH_MURMUR`.
    public static let murmur = MemcachedHash("murmur", 8)
    /// Bob Jenkins' lookup3. C: `MEMCACHED_HASH_JENKINS`.
    public static let jenkins = MemcachedHash("jenkins", 9)
    /// MurmurHash3, where libmemcached was built with it. C: `MEMCACHED_HASH_MURMUR3`.
    public static let murmur3 = MemcachedHash("murmur3", 10)

    /// Every libmemcached built-in, available in this build or not.
    public static let builtIns: [MemcachedHash] = [
        .default, .md5, .crc, .fnv1_64, .fnv1a_64, .fnv1_32, .fnv1a_32, .hsieh, .murmur, .jenkins, .murmur3,
    ]

    /// The full CRC-32 (IEEE 802.3, zlib's `crc32`), as python's `binascii.crc32` and
    /// `zlib.crc32` compute it; python-memcached's `useOldServerHashFunction()` selects it.
    ///
    /// It is a ``custom(name:_:)`` hash, computed by zlib. `crc32` of `"foo"` is 2356372769.
    public static let crc32 = MemcachedHash.custom(name: "crc32") { bytes in
        CustomHashFunction.crc32(bytes)
    }

    /// zlib's Adler-32 checksum, as python's `zlib.adler32` computes it; select it in
    /// python-memcached with `memcache.serverHashFunction = zlib.adler32`.
    ///
    /// It is a ``custom(name:_:)`` hash, computed by zlib. Adler-32 of short keys spans a small
    /// range of values, which is harmless with ``MemcachedDistribution/modula`` but unbalances a
    /// consistent distribution. `adler32` of `"foo"` is 42074437.
    public static let adler32 = MemcachedHash.custom(name: "adler32") { bytes in
        CustomHashFunction.adler32(bytes)
    }

    /// MurmurHash3 (x86, 32 bits, seed 0) the way pymemcache's pure-Python `murmur3_32` computes
    /// it, the hash of its `HashClient`'s ``MemcachedDistribution/rendezvous`` hashing.
    ///
    /// pymemcache hashes a Python string one code point at a time and keeps each code point's low
    /// 8 bits, so for ASCII keys this is MurmurHash3_x86_32 of the bytes, and for other keys it
    /// follows pymemcache, not the published function. libmemcached's ``murmur3`` seeds the
    /// function with the key's length, so it differs. It is a ``custom(name:_:)`` hash.
    public static let pymemcacheMurmur3 = MemcachedHash.custom(name: "pymemcacheMurmur3") { bytes in
        CustomHashFunction.pymemcacheMurmur3(bytes)
    }

    /// A hash computed by a Swift function, installed in libmemcached through libhashkit's
    /// custom-function hook.
    ///
    /// The function gets the key's bytes (with the key prefix of a multi-key call, when one is
    /// given) and is called on whatever thread runs a command, so it must be pure: the same bytes
    /// always give the same value. It lives as long as the last connection made with it, including
    /// connections cloned from one.
    ///
    /// ```swift
    /// configuration.hash = .custom(name: "fnv1a") { bytes in
    ///     bytes.reduce(2_166_136_261) { ($0 ^ UInt32($1)) &* 16_777_619 }
    /// }
    /// ```
    ///
    /// The corresponding C functions are `hashkit_set_custom_function` and `memcached_set_hashkit`.
    ///
    /// - Parameters:
    ///   - name: A name for logs and ``description``; it does not make two hashes equal.
    ///   - function: The hash of a key's bytes.
    /// - Returns: A hash equal only to copies of itself.
    public static func custom(
        name: String,
        _ function: @escaping @Sendable (UnsafeRawBufferPointer) -> UInt32
    ) -> MemcachedHash {
        MemcachedHash(custom: CustomHashFunction(name: name, function: function))
    }

    /// The hash's name, such as `crc` or the name given to ``custom(name:_:)``.
    public var name: String {
        switch kind {
        case .builtIn(let name, _): name
        case .custom(let function): function.name
        }
    }

    /// Whether this libmemcached build has the function. Custom hashes are always available.
    ///
    /// A configuration with an unavailable hash fails with
    /// ``MemcachedError/Code/invalidConfiguration`` when the connection is made.
    /// The corresponding C function is `libhashkit_has_algorithm`.
    public var isAvailable: Bool {
        CustomHashFunction.isAvailable(kind)
    }

    /// The hash of a key's UTF-8 bytes, as this library routes it.
    ///
    /// With ``MemcachedDistribution/modula`` the key goes to server number `value % count` (in
    /// the weight-expanded list); with one server libmemcached does not hash at all.
    /// The corresponding C function is `memcached_generate_hash_value` (built-ins).
    ///
    /// - Parameter key: The key, with its prefix if it has one.
    /// - Returns: The 32-bit hash; an unavailable built-in gives 1, as libhashkit does.
    public func value(forKey key: String) -> UInt32 {
        value(forBytes: Array(key.utf8))
    }

    /// The hash of raw key bytes, as this library routes them.
    ///
    /// The corresponding C function is `memcached_generate_hash_value` (built-ins).
    ///
    /// - Parameter bytes: The key's bytes.
    /// - Returns: The 32-bit hash; an unavailable built-in gives 1, as libhashkit does.
    public func value(forBytes bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { CustomHashFunction.value(kind, $0) }
    }

    /// The hash's name, as ``name``.
    public var description: String { name }
}

/// How key hashes are spread over the servers, and what a server's weight means.
///
/// | Distribution | Placement | Weights | Adding a 4th server to 3 moves |
/// | --- | --- | --- | --- |
/// | ``modula`` | hash modulo the number of servers, as python-memcached | `weight` buckets per server, as python-memcached's bucket list (one connection each) | about 3/4 of the keys |
/// | ``consistent`` | libketama's continuum, as libmemcached builds it | ignored | about 1/4 |
/// | ``consistentWeighted`` | libketama's continuum, as libmemcached builds it | share of the continuum | about its share |
/// | ``libketama`` | libketama's continuum, as libketama builds it | share of the continuum | about its share |
/// | ``libmemcachedConsistent`` | libmemcached's own continuum (pylibmc's `ketama`) | as ``consistentWeighted`` when any is above 1 | about 1/4 |
/// | ``rendezvous`` | the highest hash of `server-key` (pymemcache's `HashClient`) | ignored | about 1/4 |
///
/// Every consistent distribution takes any number of servers (1,000 servers build in about
/// 12 ms and hold 1.2 MiB). The continuum is built by this library, not by libmemcached, whose
/// own would abort the process beyond 100 servers; it is the same as libmemcached's for up to
/// 100, key for key. A server that is down (``MemcachedConfiguration/removeFailedServers``)
/// leaves the continuum, which is rebuilt from the others as libmemcached rebuilds it: mostly
/// its keys move, plus those of points the others gain or lose when their shares are rounded
/// again (see <doc:ScalingOut>).
///
/// The libketama continuums place 40 MD5 digests (160 points) per server, and look keys up with
/// the configuration's hash. With ``MemcachedHash/md5`` they match libketama and libmemcached's
/// libketama-compatible mode (`MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED`, which php-memcached's
/// `OPT_LIBKETAMA_COMPATIBLE` and pylibmc's `ketama_weighted` turn on), and twemproxy's `ketama`
/// with `hash: md5`. A server on port 11211 is named `host` on libmemcached's continuum and
/// `host:port` on libketama's; see <doc:ScalingOut>. A hash with a narrow range of values,
/// such as ``MemcachedHash/crc`` (15 bits) or ``MemcachedHash/adler32``, puts most keys on a few
/// points of a consistent continuum: use a full 32-bit hash there.
public struct MemcachedDistribution: Sendable, Hashable, CustomStringConvertible {
    enum Kind: Sendable, Hashable {
        case modula, consistent, consistentWeighted, libketama, libmemcachedConsistent, rendezvous
    }

    let kind: Kind

    /// The hash modulo the number of servers, as python-memcached does; a server of weight `w`
    /// counts `w` times, in order, exactly as python-memcached's bucket list.
    ///
    /// Adding or removing a server moves most keys. C: `MEMCACHED_DISTRIBUTION_MODULA`.
    public static let modula = MemcachedDistribution(kind: .modula)

    /// Consistent hashing on a libketama-compatible continuum where every server gets the same
    /// share, whatever its weight: adding or removing a server moves only about its share of the
    /// keys.
    ///
    /// It is libmemcached's `MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED` with every server at
    /// weight 1: `floor(160 / 4 × share × servers)` digests per server in single precision, which
    /// for some numbers of servers (25, 50, 100, ...) is 39 digests, not 40. twemproxy computes
    /// the same.
    public static let consistent = MemcachedDistribution(kind: .consistent)

    /// Consistent hashing on a libketama-compatible continuum where each server's share follows
    /// its ``MemcachedServer/weight``, as libmemcached builds it.
    /// C: `MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED`.
    public static let consistentWeighted = MemcachedDistribution(kind: .consistentWeighted)

    /// Consistent hashing on libketama's own continuum (`ketama_create_continuum`), each server's
    /// share following its weight, every server named `host:port`.
    ///
    /// It differs from ``consistentWeighted`` only in rounding: libketama takes
    /// `share × 40.0 × servers` in double precision, so with equal weights a server gets 40
    /// digests for some numbers of servers (25, 47, 50, 55, 71, 94, 100, ...) where libmemcached
    /// gives 39, and 39 for a few others (61, 122, 237, ...); with unequal weights either can give
    /// the larger count. Use it to share keys with a client built on libketama itself.
    public static let libketama = MemcachedDistribution(kind: .libketama)

    /// libmemcached's own consistent distribution, `MEMCACHED_DISTRIBUTION_CONSISTENT`: 100
    /// points per server, each the configured hash of `name-i`. It is what pylibmc's `ketama`
    /// behaviour and php-memcached's `DISTRIBUTION_CONSISTENT` (without
    /// `OPT_LIBKETAMA_COMPATIBLE`) use.
    ///
    /// As in libmemcached, a server of weight above 1 turns it into ``consistentWeighted``.
    public static let libmemcachedConsistent = MemcachedDistribution(kind: .libmemcachedConsistent)

    /// Rendezvous (highest random weight) hashing, as pymemcache's `HashClient` maps keys: each
    /// server scores a key with the configuration's hash of `name-key` and the highest score wins
    /// (a tie goes to the greater name). Servers are named `host:port` (IPv6 hosts without
    /// brackets, port 11211 included) and Unix-domain sockets by their path, as pymemcache names
    /// them. With ``MemcachedHash/pymemcacheMurmur3`` it is pymemcache's mapping, for keys
    /// pymemcache is given as `str` (it hashes a `bytes` key's `repr`, `b'...'`) and without
    /// pymemcache's `key_prefix` (its `HashClient` hashes the key before the prefix, where this
    /// library hashes the key it sends, prefix included).
    ///
    /// Adding or removing a server moves only its share of the keys, like a continuum, and needs
    /// no table; but each key is hashed once per server, so keep it for the few servers
    /// pymemcache fleets have (a key costs about 3 hashes with 3 servers, 1,000 with 1,000).
    /// Weights are ignored.
    public static let rendezvous = MemcachedDistribution(kind: .rendezvous)

    /// The distribution's name, such as `modula` or `consistentWeighted`.
    public var description: String {
        switch kind {
        case .modula: "modula"
        case .consistent: "consistent"
        case .consistentWeighted: "consistentWeighted"
        case .libketama: "libketama"
        case .libmemcachedConsistent: "libmemcachedConsistent"
        case .rendezvous: "rendezvous"
        }
    }
}
