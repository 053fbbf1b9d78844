/// memcached's key length limit, in bytes.
let maximumKeyLength = 250

/// Checks a key with python-memcached's rule: 1 to 250 bytes after UTF-8 encoding (a prefix
/// counts), every byte in 0x21–0x7E or 0x80–0xFF.
///
/// libmemcached's own `MEMCACHED_BEHAVIOR_VERIFY_KEY` stays off because it rejects UTF-8; without a
/// check here, a key holding `\r\nflush_all\r\n` runs `flush_all` on the server and a key with a
/// space desynchronises the connection until libmemcached aborts on an assertion.
///
/// - Parameters:
///   - bytes: The key's bytes, prefix included.
///   - key: The caller's key, for the error.
/// - Returns: Whether the key has a byte above 0x7F (is not ASCII).
/// - Throws: ``MemcachedError`` with code `emptyKey`, `keyTooLong` or `invalidKeyCharacters`.
@inline(__always)
@discardableResult
func validateKey(_ bytes: UnsafeBufferPointer<UInt8>, key: @autoclosure () -> String) throws(MemcachedError) -> Bool {
    guard !bytes.isEmpty else { throw MemcachedError.emptyKey() }
    guard bytes.count <= maximumKeyLength else { throw MemcachedError.keyTooLong(key(), byteCount: bytes.count) }
    // One pass without branches, which the compiler vectorizes; the offset is looked for only
    // when there is something to report.
    var forbidden: UInt8 = 0
    var high: UInt8 = 0
    for byte in bytes {
        forbidden |= (byte &- 0x21 >= 0x5E ? 1 : 0) & (byte < 0x80 ? 1 : 0)
        high |= byte
    }
    guard forbidden != 0 else { return high >= 0x80 }
    let offset = bytes.firstIndex(where: isForbiddenInKey) ?? 0
    throw MemcachedError.invalidKeyCharacters(key(), offset: offset)
}

/// Bytes up to 0x20 are controls and space, 0x7F is DEL: all of them end a text-protocol token.
@inline(__always)
private func isForbiddenInKey(_ byte: UInt8) -> Bool {
    (byte <= 0x20) || (byte == 0x7F)
}

/// A key prefix (python-memcached's `key_prefix`), checked once and prepended to every key of a
/// multi-key call.
struct KeyPrefix {
    let bytes: [UInt8]

    init(_ prefix: String) throws {
        bytes = Array(prefix.utf8)
        guard bytes.count <= maximumKeyLength else {
            throw MemcachedError.keyTooLong(prefix, byteCount: bytes.count)
        }
        for (index, byte) in bytes.enumerated() where byte <= 0x20 || byte == 0x7F {
            throw MemcachedError.invalidKeyCharacters(prefix, offset: index)
        }
    }
}

/// Throws when two of `keys` are equal as Swift strings but differ in bytes.
///
/// memcached compares keys as bytes, Swift's `String` by canonical equivalence: `"café"` with a
/// precomposed `é` and with `e` and a combining accent are two memcached keys but one dictionary
/// key, so a result keyed by `String` would lose one of them. Only keys with a byte above 0x7F
/// can be canonically equal to another key with other bytes (`"K"` and the Kelvin sign `"K"` are
/// one such pair), so a call whose keys are all ASCII skips the check.
func rejectCanonicallyEqualKeys(_ keys: [String]) throws {
    var seen: [String: String.UTF8View] = [:]
    seen.reserveCapacity(keys.count)
    for key in keys {
        if let earlier = seen.updateValue(key.utf8, forKey: key), !earlier.elementsEqual(key.utf8) {
            throw MemcachedError(
                code: .invalidArguments,
                message: "two keys are equal as Swift strings but differ in bytes (Unicode normalization): "
                    + "memcached stores them apart, and one result could not hold both; "
                    + "normalize keys (for example to NFC) before using them",
                key: key
            )
        }
    }
}
