import MemcachedTestSupport
import Testing

@testable import Memcached

/// Runs `validateKey` on a string's UTF-8 bytes; returns the error code, or nil when accepted.
private func verdict(of key: String) -> MemcachedError.Code? {
    var copy = key
    do {
        _ = try copy.withUTF8 { try validateKey($0, key: key) }
        return nil
    } catch let error as MemcachedError {
        #expect(error.code.isInvalidKey, "every code of the key checks says so")
        return error.code
    } catch {
        Issue.record("unexpected error type: \(error)")
        return .failure
    }
}

/// Builds a `KeyBatch`; returns the error code, or nil when accepted.
private func batchVerdict(_ keys: [String], prefix: String? = nil) -> MemcachedError.Code? {
    do {
        _ = try KeyBatch(keys: keys, prefix: try prefix.map { try KeyPrefix($0) })
        return nil
    } catch let error as MemcachedError {
        return error.code
    } catch {
        Issue.record("unexpected error type: \(error)")
        return .failure
    }
}

/// The key rule written out independently: 1...250 UTF-8 bytes, each in 0x21...0x7E or 0x80...0xFF.
/// Checks run in the documented order: empty, then length, then characters.
private func oracle(_ bytes: [UInt8]) -> MemcachedError.Code? {
    if bytes.count == 0 { return .emptyKey }
    if bytes.count > 250 { return .keyTooLong }
    for byte in bytes where !((0x21...0x7E).contains(byte) || (0x80...0xFF).contains(byte)) {
        return .invalidKeyCharacters
    }
    return nil
}

@Suite("Key validation", .offCooperativePool)
struct KeyValidationTests {
    @Test("An empty key is refused")
    func emptyKey() {
        #expect(verdict(of: "") == .emptyKey)
        #expect(!MemcachedError.Code.timeout.isInvalidKey && !MemcachedError.Code.badKeyProvided.isInvalidKey)
        #expect(batchVerdict([""]) == .emptyKey)
        #expect(batchVerdict(["ok", ""]) == .emptyKey)
    }

    @Test("250 ASCII bytes pass, 251 do not")
    func asciiLengthLimit() {
        #expect(verdict(of: String(repeating: "a", count: 250)) == nil)
        #expect(verdict(of: String(repeating: "a", count: 251)) == .keyTooLong)
        #expect(verdict(of: String(repeating: "a", count: 10_000)) == .keyTooLong)
        #expect(verdict(of: "a") == nil)
        #expect(batchVerdict([String(repeating: "z", count: 250)]) == nil)
        #expect(batchVerdict([String(repeating: "z", count: 251)]) == .keyTooLong)
    }

    @Test("The limit counts UTF-8 bytes, not characters")
    func utf8LengthLimit() {
        let ok = String(repeating: "é", count: 125)
        let tooLong = String(repeating: "é", count: 126)
        #expect(ok.utf8.count == 250)
        #expect(ok.count == 125)
        #expect(verdict(of: ok) == nil)
        #expect(verdict(of: tooLong) == .keyTooLong)
        #expect(batchVerdict([tooLong]) == .keyTooLong)
    }

    @Test(
        "Spaces, control characters and DEL are refused",
        arguments: [UInt8(0x20), 0x09, 0x0D, 0x0A, 0x00, 0x7F, 0x01, 0x1F]
    )
    func forbiddenBytes(byte: UInt8) {
        let scalar = Character(Unicode.Scalar(byte))
        for key in ["\(scalar)", "ab\(scalar)cd", "abcd\(scalar)", "\(scalar)abcd"] {
            #expect(Array(key.utf8).contains(byte))
            #expect(verdict(of: key) == .invalidKeyCharacters, "byte \(byte) in \(Array(key.utf8))")
            #expect(batchVerdict(["fine", key]) == .invalidKeyCharacters)
        }
    }

    @Test(
        "Printable ASCII edges and UTF-8 keys are accepted",
        arguments: ["!", "~", "!~", "会", "ключ", "user:42/profile", "emoji-🔑", "a\u{80}b"]
    )
    func acceptedKeys(key: String) {
        #expect(verdict(of: key) == nil)
        #expect(batchVerdict([key]) == nil)
        #expect(batchVerdict([key], prefix: "app:") == nil)
    }

    @Test("The error carries the key and its description does not")
    func errorCarriesKey() throws {
        let key = "secret token"
        var copy = key
        let error = try #require(throws: MemcachedError.self) {
            _ = try copy.withUTF8 { try validateKey($0, key: key) }
        }
        #expect(error.code == .invalidKeyCharacters)
        #expect(error.key == key)
        #expect(error.message.contains("6"))  // the space is byte 6
        #expect(!error.description.contains(key))
    }

    @Test("A command injection through CR LF is refused")
    func crlfInjection() {
        #expect(verdict(of: "k\r\nflush_all\r\n") == .invalidKeyCharacters)
        #expect(batchVerdict(["k\r\nflush_all\r\n"]) == .invalidKeyCharacters)
        #expect(batchVerdict(["k"], prefix: "p\r\nflush_all\r\n") == .invalidKeyCharacters)
    }

    @Test("A prefix counts toward the length limit")
    func prefixCountsTowardLength() {
        let prefix = String(repeating: "p", count: 200)
        #expect(batchVerdict([String(repeating: "k", count: 50)], prefix: prefix) == nil)
        #expect(batchVerdict([String(repeating: "k", count: 51)], prefix: prefix) == .keyTooLong)
        // Alone, the 51-byte key is fine: only the prefix pushes it over.
        #expect(batchVerdict([String(repeating: "k", count: 51)]) == nil)
        // A multi-byte key: 200 + 2 * 26 = 252 bytes.
        #expect(batchVerdict([String(repeating: "é", count: 26)], prefix: prefix) == .keyTooLong)
        #expect(batchVerdict([String(repeating: "é", count: 25)], prefix: prefix) == nil)
    }

    @Test("A prefix is checked on its own")
    func prefixChecks() throws {
        #expect(throws: MemcachedError.self) { try KeyPrefix("my app:") }
        let spaced = try #require(throws: MemcachedError.self) { try KeyPrefix("my app:") }
        #expect(spaced.code == .invalidKeyCharacters)
        let tab = try #require(throws: MemcachedError.self) { try KeyPrefix("app\t") }
        #expect(tab.code == .invalidKeyCharacters)
        let long = try #require(throws: MemcachedError.self) { try KeyPrefix(String(repeating: "p", count: 251)) }
        #expect(long.code == .keyTooLong)
        #expect(try KeyPrefix("app:").bytes == Array("app:".utf8))
        #expect(try KeyPrefix("").bytes.isEmpty)
        // An empty key after a non-empty prefix is a non-empty key.
        #expect(batchVerdict([""], prefix: "app:") == nil)
        // An empty prefix does not rescue an empty key.
        #expect(batchVerdict([""], prefix: "") == .emptyKey)
    }

    @Test("A batch lays out every prefixed key in order")
    func batchLayout() throws {
        let keys = ["a", "ключ", "zz"]
        let batch = try KeyBatch(keys: keys, prefix: try KeyPrefix("p:"))
        #expect(batch.ranges.count == keys.count)
        for (index, key) in keys.enumerated() {
            let bytes = batch.withKey(at: index) { Array($0) }
            #expect(bytes == Array("p:\(key)".utf8))
        }
        let total = keys.reduce(0) { $0 + 2 + $1.utf8.count }
        #expect(batch.storage.count == total)
        let lengths = batch.withCArrays { _, lengths, count in Array(UnsafeBufferPointer(start: lengths, count: count))
        }
        #expect(lengths == keys.map { 2 + $0.utf8.count })
    }

    @Test("20,000 random keys get the oracle's verdict")
    func randomKeysMatchOracle() {
        var rng = SplitMix64(state: 0x5EED_CAFE_F00D_0001)
        var counts: [MemcachedError.Code?: Int] = [:]
        var mismatches = 0
        for _ in 0..<20_000 {
            let length = Int(rng.next() % 262)
            let mode = rng.next() % 4
            var raw = [UInt8]()
            raw.reserveCapacity(length)
            for _ in 0..<length {
                let r = rng.next()
                let byte: UInt8
                switch mode {
                case 0:
                    // Any byte at all.
                    byte = UInt8(truncatingIfNeeded: r)
                case 1:
                    // Printable ASCII with a rare forbidden byte.
                    byte = r % 97 == 0 ? UInt8(truncatingIfNeeded: r >> 8) % 0x21 : 0x21 + UInt8((r >> 8) % 94)
                default:
                    // Mostly allowed bytes (ASCII or high), sometimes a control or DEL.
                    if r % 300 == 0 {
                        byte = (r >> 8) % 2 == 0 ? 0x7F : UInt8(truncatingIfNeeded: r >> 16) % 0x21
                    } else if (r >> 8) % 2 == 0 {
                        byte = 0x21 + UInt8((r >> 16) % 94)
                    } else {
                        byte = 0x80 | UInt8(truncatingIfNeeded: r >> 24)
                    }
                }
                raw.append(byte)
            }
            let key = String(decoding: raw, as: UTF8.self)
            let expected = oracle(Array(key.utf8))
            let actual = verdict(of: key)
            counts[expected, default: 0] += 1
            if actual != expected {
                mismatches += 1
                if mismatches <= 5 {
                    Issue.record(
                        "key \(Array(key.utf8)): expected \(String(describing: expected)), got \(String(describing: actual))"
                    )
                }
            }
        }
        #expect(mismatches == 0)
        // The generator must exercise every verdict, or the property says little.
        #expect(counts[nil, default: 0] > 1_000)
        #expect(counts[.keyTooLong, default: 0] > 500)
        #expect(counts[.invalidKeyCharacters, default: 0] > 1_000)
        #expect(counts[.emptyKey, default: 0] > 10)
    }
}
