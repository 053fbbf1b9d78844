internal import CLibMemcached
import Foundation
import MemcachedTestSupport
import Synchronization
import Testing

@testable import Memcached

/// Reference hashes written from their definitions, bit by bit, to check the library against.
enum ReferenceHash {
    /// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), one bit at a time.
    static func crc32(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 {
                crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1
            }
        }
        return ~crc
    }

    /// python-memcached's `cmemcache_hash`: bits 16 to 30 of the CRC-32.
    static func cmemcache(_ bytes: some Sequence<UInt8>) -> UInt32 {
        (crc32(bytes) >> 16) & 0x7FFF
    }

    /// Adler-32: two sums modulo 65521.
    static func adler32(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var a: UInt32 = 1
        var b: UInt32 = 0
        for byte in bytes {
            a = (a + UInt32(byte)) % 65_521
            b = (b + a) % 65_521
        }
        return b << 16 | a
    }

    /// A key byte as libhashkit's one-at-a-time and FNV hashes read it: through C's `char`, which
    /// is signed on x86-64 and Apple platforms, so bytes 0x80-0xFF are sign-extended there.
    static func cChar(_ byte: UInt8) -> UInt32 {
        #if os(Linux) && arch(arm64)
        UInt32(byte)
        #else
        UInt32(bitPattern: Int32(Int8(bitPattern: byte)))
        #endif
    }

    /// Bob Jenkins' one-at-a-time hash, over bytes read as libhashkit reads them.
    static func oneAtATime(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var hash: UInt32 = 0
        for byte in bytes {
            hash &+= cChar(byte)
            hash &+= hash << 10
            hash ^= hash >> 6
        }
        hash &+= hash << 3
        hash ^= hash >> 11
        hash &+= hash << 15
        return hash
    }

    /// FNV-1a, 32 bit, over bytes read as libhashkit reads them.
    static func fnv1a32(_ bytes: some Sequence<UInt8>) -> UInt32 {
        bytes.reduce(2_166_136_261) { ($0 ^ cChar($1)) &* 16_777_619 }
    }

    /// FNV-1, 32 bit, over bytes read as libhashkit reads them.
    static func fnv1_32(_ bytes: some Sequence<UInt8>) -> UInt32 {
        bytes.reduce(2_166_136_261) { ($0 &* 16_777_619) ^ cChar($1) }
    }
}

/// What python's own modules say a key hashes to.
struct PythonHashes: Decodable, Equatable {
    var cmemcache: UInt32
    var crc32: UInt32
    var adler32: UInt32
    var md5: UInt32
}

/// Keys hashed to servers: built-ins, custom functions, and their life across clones.
@Suite("Hash functions", .offCooperativePool)
struct HashTests {
    /// The keys of clients-reference.md §2.5, with the values its table lists for
    /// `cmemcache_hash`, `binascii.crc32`, `zlib.adler32` and `cmemcache_hash % 3`.
    static let table: [(key: String, cmemcache: UInt32, crc32: UInt32, adler32: UInt32, modulo3: Int)] = [
        ("", 0, 0, 1, 0),
        ("a", 26807, 3_904_355_907, 6_422_626, 2),
        ("ob", 0, 26083, 21_102_802, 0),
        ("foo", 3187, 2_356_372_769, 42_074_437, 1),
        ("bar", 30463, 1_996_459_178, 39_649_590, 1),
        ("hello", 13840, 907_060_870, 103_547_413, 1),
        ("会", 2304, 151_009_920, 79_757_883, 0),
    ]

    @Test("test vectors: crc, crc32 and adler32 agree with bit-by-bit references, python and the table")
    func vectors() throws {
        let keys = Self.table.map(\.key)
        let python = try PythonMemcached.run(
            ["hash"],
            keys: keys.map { $0.utf8.map { String(format: "%02x", $0) }.joined() },
            as: [PythonHashes].self
        )
        #expect(python.count == keys.count)
        for (row, fromPython) in zip(Self.table, python) {
            let bytes = Array(row.key.utf8)
            // The references agree with python's own functions and with the table...
            #expect(ReferenceHash.cmemcache(bytes) == fromPython.cmemcache, "cmemcache_hash(\(row.key))")
            #expect(ReferenceHash.crc32(bytes) == fromPython.crc32, "crc32(\(row.key))")
            #expect(ReferenceHash.adler32(bytes) == fromPython.adler32, "adler32(\(row.key))")
            #expect(
                (fromPython.cmemcache, fromPython.crc32, fromPython.adler32) == (row.cmemcache, row.crc32, row.adler32),
                "table row \(row.key)"
            )
            #expect(Int(fromPython.cmemcache % 3) == row.modulo3)
            // ...and the library computes the same values.
            #expect(MemcachedHash.crc.value(forBytes: bytes) == fromPython.cmemcache, "crc(\(row.key))")
            #expect(MemcachedHash.crc32.value(forBytes: bytes) == fromPython.crc32, "crc32(\(row.key))")
            #expect(MemcachedHash.adler32.value(forBytes: bytes) == fromPython.adler32, "adler32(\(row.key))")
            #expect(MemcachedHash.md5.value(forBytes: bytes) == fromPython.md5, "md5(\(row.key))")
        }
        #expect(MemcachedHash.crc.value(forKey: "ob") == 0, "the key whose CRC hash is 0")
    }

    @Test("test vectors route: with 3 servers and modula, crc, crc32 and adler32 pick server hash % 3")
    func vectorsRoute() throws {
        let servers = ["127.0.0.1:41001", "127.0.0.1:41002", "127.0.0.1:41003"]
        for hash in [MemcachedHash.crc, .crc32, .adler32] {
            let memc = try MemcachedConnection(
                configuration: .pythonMemcachedCompatible(servers: servers, hash: hash)
            )
            for row in Self.table where !row.key.isEmpty {
                let expected =
                    hash == .crc ? row.cmemcache : hash == .crc32 ? row.crc32 : row.adler32
                #expect(try memc.server(forKey: row.key) == servers[Int(expected % 3)], "\(hash) \(row.key)")
            }
        }
    }

    @Test("random keys: crc, crc32, adler32, one-at-a-time, fnv1 and fnv1a agree with the references")
    func randomKeys() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<1_000 {
            let bytes = (0..<Int.random(in: 1...250, using: &generator)).map { _ in
                UInt8.random(in: 0...255, using: &generator)
            }
            #expect(MemcachedHash.crc.value(forBytes: bytes) == ReferenceHash.cmemcache(bytes))
            #expect(MemcachedHash.crc32.value(forBytes: bytes) == ReferenceHash.crc32(bytes))
            #expect(MemcachedHash.adler32.value(forBytes: bytes) == ReferenceHash.adler32(bytes))
            #expect(MemcachedHash.default.value(forBytes: bytes) == ReferenceHash.oneAtATime(bytes))
            #expect(MemcachedHash.fnv1a_32.value(forBytes: bytes) == ReferenceHash.fnv1a32(bytes))
            #expect(MemcachedHash.fnv1_32.value(forBytes: bytes) == ReferenceHash.fnv1_32(bytes))
        }
        // The sign extension is real: a non-ASCII key gives a different value than the textbook
        // hash of its bytes, an ASCII key the same.
        let textbook = { (bytes: [UInt8]) in bytes.reduce(UInt32(2_166_136_261)) { ($0 ^ UInt32($1)) &* 16_777_619 } }
        #expect(MemcachedHash.fnv1a_32.value(forKey: "plain") == textbook(Array("plain".utf8)))
        #if !(os(Linux) && arch(arm64))
        #expect(MemcachedHash.fnv1a_32.value(forKey: "会") != textbook(Array("会".utf8)))
        #endif
    }

    @Test("every available built-in is installed and routes keys to servers[hash % 3]; the others are refused")
    func builtIns() throws {
        let servers = ["127.0.0.1:41001", "127.0.0.1:41002", "127.0.0.1:41003"]
        let keys = (0..<300).map { "key-\($0)-会" }
        var routings: Set<[String]> = []
        for hash in MemcachedHash.builtIns {
            var configuration = try MemcachedConfiguration(servers: servers)
            configuration.hash = hash
            guard hash.isAvailable else {
                #expect(throws: MemcachedError.self, "\(hash) is not in this build") {
                    try MemcachedConnection(configuration: configuration)
                }
                continue
            }
            let memc = try MemcachedConnection(configuration: configuration)
            guard case .builtIn(_, let value) = hash.kind else {
                Issue.record("\(hash) is not a built-in")
                continue
            }
            #expect(memcached_behavior_get(try memc.handle.live(), MEMCACHED_BEHAVIOR_HASH) == UInt64(value))
            let routing = try keys.map { try memc.server(forKey: $0) }
            #expect(routing == keys.map { servers[Int(hash.value(forKey: $0) % 3)] }, "\(hash)")
            routings.insert(routing)
        }
        // Debian's libmemcached lacks only Hsieh; whatever the build, the hashes that are there
        // route differently from one another.
        let available = MemcachedHash.builtIns.filter(\.isAvailable)
        #expect(available.count >= 9)
        #expect(routings.count == available.count)
    }

    @Test("a custom Swift hash is called from C and decides where keys go, on real servers")
    func customHashRoutes() throws {
        final class Calls: Sendable {
            let count = Mutex(0)
        }
        let calls = Calls()
        let hash = MemcachedHash.custom(name: "last byte") { bytes in
            calls.count.withLock { $0 += 1 }
            return UInt32(bytes.last ?? 0)
        }
        try withMemcached(servers: 3) { cluster in
            let memc = try connect(cluster) { $0.hash = hash }
            #expect(
                memcached_behavior_get(try memc.handle.live(), MEMCACHED_BEHAVIOR_HASH)
                    == UInt64(MEMCACHED_HASH_CUSTOM.rawValue)
            )
            let keys = (0..<300).map { "custom-\($0)" }
            for key in keys {
                #expect(try memc.set(key, key))
                let owner = cluster.servers[Int(key.utf8.last!) % 3]
                #expect(try memc.server(forKey: key) == owner.address)
                #expect(
                    try owner.rawCommand("get \(key)\r\n").contains("VALUE \(key) "),
                    "\(key) is on \(owner.address)"
                )
            }
            #expect(try memc.getMulti(keys, as: String.self).hits.count == keys.count)
            #expect(calls.count.withLock { $0 } >= 2 * keys.count, "the closure ran for every set and lookup")
        }
    }

    @Test("custom hashes are equal only to copies of themselves")
    func customEquality() {
        let first = MemcachedHash.custom(name: "same") { _ in 7 }
        let second = MemcachedHash.custom(name: "same") { _ in 7 }
        let copy = first
        #expect(first == copy)
        #expect(first != second)
        #expect(MemcachedHash.crc32 == MemcachedHash.crc32)
        #expect(MemcachedHash.crc32 != MemcachedHash.crc)
        #expect(MemcachedHash.adler32 != MemcachedHash.crc32)
        #expect(Set([first, copy, second, .crc, .crc, .crc32, .adler32]).count == 5)
        #expect(first.description == "same")
        #expect(MemcachedHash.crc32.name == "crc32")
        #expect(first.isAvailable)
        #expect(!MemcachedHash.default.description.isEmpty)
    }

    @Test("a clone of a handle with a custom hash maps every key the same; the closure goes with the last handle")
    func customHashSurvivesCloning() throws {
        final class Sentinel: Sendable {}
        weak var sentinel: Sentinel?
        try withMemcached(servers: 3) { cluster in
            var original: Handle?
            do {
                let captured = Sentinel()
                sentinel = captured
                let hash = MemcachedHash.custom(name: "crc32 with a sentinel") { bytes in
                    withExtendedLifetime(captured) { ReferenceHash.crc32(bytes) }
                }
                original = try Handle(
                    configuration: .pythonMemcachedCompatible(servers: cluster.addresses, hash: hash)
                )
            }
            var clone: Handle? = try Handle(cloning: try #require(original))
            let keys = (0..<2_000).map { "clone-\($0)" }
            let expected = keys.map { cluster.addresses[Int(ReferenceHash.crc32(Array($0.utf8)) % 3)] }
            do {
                let originalConnection = MemcachedConnection(handle: try #require(original))
                let cloneConnection = MemcachedConnection(handle: try #require(clone))
                #expect(try keys.map { try originalConnection.server(forKey: $0) } == expected)
                #expect(try keys.map { try cloneConnection.server(forKey: $0) } == expected)
            }

            original = nil
            #expect(sentinel != nil, "the clone keeps the closure alive")
            do {
                // The clone still routes through the closure after the original is gone.
                let cloneConnection = MemcachedConnection(handle: try #require(clone))
                #expect(try keys.map { try cloneConnection.server(forKey: $0) } == expected)
                for key in keys.prefix(60) {
                    #expect(try cloneConnection.set(key, key))
                    let owner = cluster.servers[
                        try #require(cluster.addresses.firstIndex(of: try cloneConnection.server(forKey: key)))
                    ]
                    #expect(try owner.rawCommand("get \(key)\r\n").contains("VALUE \(key) "))
                }
            }
            clone = nil
            #expect(sentinel == nil, "the closure is released with the last handle")
        }
    }
}
