import Foundation
import Memcached
import MemcachedTestSupport
import Testing

/// A property test over generated hostile keys, through every command family, with and without a
/// key prefix, in both protocols.
///
/// The CI run uses 20,000 keys per protocol; `MEMCACHED_SOAK=1` runs 100,000.
@Suite("Hostile keys", .offCooperativePool)
struct HostileKeyTests {
    static let keyCount = ProcessInfo.processInfo.environment["MEMCACHED_SOAK"] == "1" ? 100_000 : 20_000

    /// The verdict an independent reading of python-memcached's rule gives.
    static func expectedCode(for key: String, prefix: String = "") -> MemcachedError.Code? {
        let bytes = Array(prefix.utf8) + Array(key.utf8)
        if bytes.isEmpty { return .emptyKey }
        if bytes.count > 250 { return .keyTooLong }
        if bytes.contains(where: { !((0x21...0x7E).contains($0) || $0 >= 0x80) }) { return .invalidKeyCharacters }
        return nil
    }

    static let fragments = [
        "x 0 0 1\r\nZ\r\nset y", "get sentinel-3", "\r\nflush_all\r\n", "delete sentinel-1\r\n", "flush_all",
        "gets a b c", "VALUE x 0 1", "END", "\u{0}", "\u{7F}", " ", "\t", "\r", "\n", "会", "🎬", "ключ",
        "\u{FFFD}", "%00", "\\r\\n",
    ]

    /// Generates a key of one of several hostile shapes.
    static func makeKey(_ generator: inout SplitMix64) -> String {
        switch generator.next() % 6 {
        case 0:  // random bytes, decoded leniently (invalid sequences become U+FFFD)
            let count = Int(generator.next() % 300)
            let bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            return String(decoding: bytes, as: UTF8.self)
        case 1:  // mostly printable ASCII with an occasional control byte
            let count = 1 + Int(generator.next() % 60)
            return String(
                (0..<count).map { _ in
                    let roll = generator.next() % 40
                    return roll == 0
                        ? Character(UnicodeScalar(UInt8(generator.next() % 33)))
                        : Character(UnicodeScalar(UInt8(0x21 + generator.next() % 94)))
                }
            )
        case 2:  // protocol fragments glued together
            return (0..<(1 + generator.next() % 4)).map { _ in
                fragments[Int(generator.next() % UInt64(fragments.count))]
            }
            .joined(separator: generator.next() % 2 == 0 ? "" : "-")
        case 3:  // long UTF-8 around the 250-byte limit
            let scalars = ["é", "会", "🎬", "k"]
            let scalar = scalars[Int(generator.next() % 4)]
            let target = 240 + Int(generator.next() % 20)
            var key = ""
            while key.utf8.count + scalar.utf8.count <= target { key += scalar }
            return key
        case 4:  // a valid key
            return
                "valid-\(generator.next() % 1_000_000)-\(Character(UnicodeScalar(UInt8(0x21 + generator.next() % 94))))"
        default:  // empty or whitespace only
            return ["", " ", "\r\n", "\u{0}"][Int(generator.next() % 4)]
        }
    }

    @Test(
        "generated hostile keys: invalid ones never reach the server, valid ones round-trip",
        arguments: CommandTests.protocols
    )
    func hostileKeys(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        try withMemcached { cluster in
            let memc = try connect(cluster, wireProtocol: wireProtocol)
            let server = cluster.servers[0]
            let sentinels = Dictionary(uniqueKeysWithValues: (0..<10).map { ("sentinel-\($0)", "guarded-\($0)") })
            #expect(try memc.setMulti(sentinels).keysNotApplied.isEmpty)

            var generator = SplitMix64(state: wireProtocol == .ascii ? 1 : 2)
            var invalidKeys: [(String, MemcachedError.Code)] = []
            var validKeys: [String] = []
            for _ in 0..<Self.keyCount {
                let key = Self.makeKey(&generator)
                if sentinels[key] != nil { continue }
                if let code = Self.expectedCode(for: key) {
                    invalidKeys.append((key, code))
                } else {
                    validKeys.append(key)
                }
            }
            #expect(invalidKeys.count > Self.keyCount / 4)
            #expect(validKeys.count > Self.keyCount / 10)

            // Invalid keys: every command family throws the expected code, and nothing is sent.
            let before = try bytesRead(server)
            for (index, (key, code)) in invalidKeys.enumerated() {
                let family = index % 8
                do {
                    switch family {
                    case 0: _ = try memc.get(key, as: String.self)
                    case 1: try memc.set(key, "v")
                    case 2: _ = try memc.getMulti(["ok", key], as: String.self)
                    case 3: try memc.setMulti(["ok": "v", key: "v"])
                    case 4: try memc.deleteMulti(["ok", key])
                    case 5: try memc.increment(key)
                    case 6: try memc.touch(key, expiration: .seconds(5))
                    default: try memc.cas(key, "v", token: MemcachedCASToken(rawValue: 1))
                    }
                    Issue.record("family \(family) accepted an invalid key \(key.debugDescription)")
                } catch let error as MemcachedError {
                    #expect(error.code == code, "family \(family), key \(key.debugDescription)")
                }
            }
            #expect(try bytesRead(server) - before == 7, "no invalid key reached the server")

            // Valid keys round-trip directly and through a key prefix.
            for (index, key) in validKeys.enumerated() {
                let value = "value-of-\(key)"
                if index % 2 == 0 {
                    try memc.set(key, value)
                    #expect(try memc.get(key, as: String.self) == value, "key \(key.debugDescription)")
                } else {
                    let bytes = Array(key.utf8)
                    let split = bytes.count / 2
                    let prefix = String(decoding: bytes[..<split], as: UTF8.self)
                    let rest = String(decoding: bytes[split...], as: UTF8.self)
                    // Splitting inside a multi-byte scalar changes the bytes; keep only exact splits.
                    guard Array(prefix.utf8) + Array(rest.utf8) == bytes else { continue }
                    #expect(try memc.setMulti([rest: value], keyPrefix: prefix).keysNotApplied.isEmpty)
                    #expect(try memc.getMulti([rest], keyPrefix: prefix, as: String.self).hits == [rest: value])
                    #expect(try memc.get(key, as: String.self) == value)
                    #expect(try memc.deleteMulti([rest], keyPrefix: prefix)[rest] == .applied)
                }
            }

            #expect(try memc.getMulti(Array(sentinels.keys), as: String.self).hits == sentinels, "sentinels unchanged")
            #expect(try statistic("cmd_flush", of: server) == 0)
        }
    }

    @Test("keys equal as Swift strings but different in bytes (NFC and NFD) are refused by getMulti, never collapsed")
    func canonicallyEqualKeys() throws {
        let precomposed = "caf\u{E9}"
        let decomposed = "cafe\u{301}"
        #expect(precomposed == decomposed, "Swift calls them equal")
        #expect(Array(precomposed.utf8) != Array(decomposed.utf8), "memcached does not")
        try withMemcached { cluster in
            let memc = try connect(cluster)
            try memc.set(precomposed, "precomposed")
            try memc.set(decomposed, "decomposed")
            #expect(try memc.get(precomposed, as: String.self) == "precomposed")
            #expect(try memc.get(decomposed, as: String.self) == "decomposed")
            for keys in [[precomposed, decomposed], ["K", "\u{212A}"], ["a", precomposed, "b", decomposed]] {
                let error = try #require(throws: MemcachedError.self) { try memc.getMulti(keys, as: String.self) }
                #expect(error.code == .invalidArguments)
                #expect(throws: MemcachedError.self) { try memc.getMulti(keys) { _, _, _ in } }
            }
            // The same bytes twice, and different keys, are fine.
            #expect(
                try memc.getMulti([precomposed, precomposed], as: String.self).hits == [precomposed: "precomposed"]
            )
            #expect(try memc.getMulti([precomposed, "x"], as: String.self).hits == [precomposed: "precomposed"])
        }
    }
}
