internal import CLibMemcached

/// What libmemcached says of its own return codes: the C calls behind ``MemcachedError/Code``,
/// kept here so that only `Internal/` imports the C module.
enum LibmemcachedReturnCodes {
    /// How many `memcached_return_t` values libmemcached defines (`MEMCACHED_MAXIMUM_RETURN`).
    static let count = Int(MEMCACHED_MAXIMUM_RETURN.rawValue)

    /// libmemcached's text for a code (`memcached_strerror`).
    static func explanation(_ rawValue: Int) -> String? {
        guard rawValue >= 0, rawValue < count, let text = memcached_strerror(nil, memcached_return_t(UInt32(rawValue)))
        else { return nil }
        return String(cString: text)
    }
}
