/// Whether one write compresses its value: python-memcached's per-call `min_compress_len`.
///
/// Every write that can compress takes it, and ``configured`` (the default) follows
/// ``MemcachedConfiguration/compressionThreshold``:
///
/// ```swift
/// try connection.set("page:/", html, compression: .above(1_024))
/// try connection.set("token", token, compression: .never)
/// ```
///
/// Whatever the choice, integers are never compressed (so that `increment` keeps working), the
/// compressed form is kept only when it is smaller, and reads decompress whatever is flagged.
public enum MemcachedCompression: Sendable, Hashable {
    /// The connection's ``MemcachedConfiguration/compressionThreshold``.
    case configured
    /// No compression for this value.
    case never
    /// Compression when the encoded value is longer than this many bytes (zero or more).
    case above(Int)
}

extension MemcachedCompression {
    /// The threshold this choice stands for under `configuration`; `nil` for none.
    func threshold(_ configuration: MemcachedConfiguration, key: String) throws(MemcachedError) -> Int? {
        switch self {
        case .configured:
            return configuration.compressionThreshold
        case .never:
            return nil
        case .above(let bytes):
            guard bytes >= 0 else {
                throw MemcachedError(
                    code: .invalidArguments,
                    message: "a compression threshold of \(bytes) bytes; it must be zero or more",
                    key: key
                )
            }
            return bytes
        }
    }
}
