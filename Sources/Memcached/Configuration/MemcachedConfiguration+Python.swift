extension MemcachedConfiguration {
    /// A configuration that maps keys to servers exactly as python-memcached 1.62 does, so a Swift
    /// service and a Python service can share one cluster.
    ///
    /// It selects ``MemcachedDistribution/modula`` and `hash`; list the servers in the same order
    /// as the Python client, with the same weights (python's `("host:port", 3)` is
    /// `"host:port:3"` or `"host:port 3"` here). Values already use python-memcached's flags, and
    /// objects are JSON, which Python reads and writes with a JSON pickler and unpickler; see
    /// <doc:SharingAClusterWithPython>.
    ///
    /// ```swift
    /// let configuration = try MemcachedConfiguration.pythonMemcachedCompatible(
    ///     servers: ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"]
    /// )
    /// ```
    ///
    /// - Parameters:
    ///   - servers: Server strings in any form ``MemcachedServer/init(parsing:)`` accepts, in the
    ///     Python client's order.
    ///   - hash: The Python side's `memcache.serverHashFunction`. The default is
    ///     ``MemcachedHash/crc``, python-memcached's default `cmemcache_hash`; use
    ///     ``MemcachedHash/crc32`` after `useOldServerHashFunction()` and ``MemcachedHash/adler32``
    ///     for `zlib.adler32`.
    /// - Returns: The configuration, every other field at its default.
    /// - Throws: ``MemcachedError`` with code ``MemcachedError/Code/invalidServerSpecification``
    ///   for a string that cannot be parsed.
    public static func pythonMemcachedCompatible(
        servers: [String],
        hash: MemcachedHash = .crc
    ) throws -> MemcachedConfiguration {
        pythonMemcachedCompatible(servers: try servers.map(MemcachedServer.init(parsing:)), hash: hash)
    }

    /// A configuration that maps keys to servers exactly as python-memcached 1.62 does.
    ///
    /// See ``pythonMemcachedCompatible(servers:hash:)-([String],_)``.
    ///
    /// - Parameters:
    ///   - servers: The servers in the Python client's order, with its weights.
    ///   - hash: The Python side's `memcache.serverHashFunction`. The default is
    ///     ``MemcachedHash/crc``, python-memcached's default `cmemcache_hash`.
    /// - Returns: The configuration, every other field at its default.
    public static func pythonMemcachedCompatible(
        servers: [MemcachedServer],
        hash: MemcachedHash = .crc
    ) -> MemcachedConfiguration {
        var configuration = MemcachedConfiguration(servers: servers)
        configuration.hash = hash
        configuration.distribution = .modula
        return configuration
    }
}
