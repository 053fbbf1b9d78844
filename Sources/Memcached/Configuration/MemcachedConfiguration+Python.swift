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
        configuration.flagProfile = .pythonMemcached
        return configuration
    }

    /// How pylibmc maps keys to servers: libmemcached's distribution, chosen with its behaviors.
    public enum PylibmcDistribution: Sendable, Hashable {
        /// pylibmc's default (no behavior set): libmemcached's modula, which ignores weights.
        case modula
        /// `behaviors={"ketama": True}`: libmemcached's own consistent distribution,
        /// ``MemcachedDistribution/libmemcachedConsistent``, with the configured hash (weighted as
        /// soon as a server's weight is above 1).
        case ketama
        /// `behaviors={"ketama_weighted": True}`: the libketama-compatible continuum with MD5,
        /// ``MemcachedDistribution/consistentWeighted`` with ``MemcachedHash/md5``.
        case ketamaWeighted
    }

    /// A configuration that maps keys and tags values as pylibmc 1.6 does, so a Swift service and
    /// a Python service using pylibmc share one cluster.
    ///
    /// It selects ``MemcachedFlagProfile/pylibmc`` and pylibmc's key mapping; list the servers in
    /// pylibmc's order. pylibmc pickles objects and floats: give it a `Client` subclass whose
    /// `serialize`/`deserialize` use JSON for flag 1, as <doc:SharingAClusterWithPython> shows.
    /// The test suite checks each distribution against the real pylibmc 1.6.3 from PyPI.
    ///
    /// ```swift
    /// // pylibmc.Client(servers, behaviors={"ketama": True})
    /// let configuration = try MemcachedConfiguration.pylibmcCompatible(
    ///     servers: ["10.0.0.1:11211", "10.0.0.2:11211"],
    ///     distribution: .ketama
    /// )
    /// ```
    ///
    /// - Parameters:
    ///   - servers: Server strings in any form ``MemcachedServer/init(parsing:)`` accepts.
    ///   - distribution: pylibmc's behaviors for the distribution. The default is
    ///     ``PylibmcDistribution/modula``, pylibmc's default.
    ///   - hash: pylibmc's `hash` behavior. The default is ``MemcachedHash/default``
    ///     (one-at-a-time), pylibmc's default; ``PylibmcDistribution/ketamaWeighted`` always uses
    ///     ``MemcachedHash/md5``, as that behavior does.
    /// - Returns: The configuration, every other field at its default. With
    ///   ``PylibmcDistribution/modula`` every server's weight is 1, since libmemcached's modula
    ///   has none.
    /// - Throws: ``MemcachedError`` with code ``MemcachedError/Code/invalidServerSpecification``
    ///   for a string that cannot be parsed.
    public static func pylibmcCompatible(
        servers: [String],
        distribution: PylibmcDistribution = .modula,
        hash: MemcachedHash = .default
    ) throws -> MemcachedConfiguration {
        var configuration = try MemcachedConfiguration(servers: servers)
        configuration.flagProfile = .pylibmc
        switch distribution {
        case .modula:
            configuration.servers = configuration.servers.map { MemcachedServer(address: $0.address) }
            configuration.distribution = .modula
            configuration.hash = hash
        case .ketama:
            configuration.distribution = .libmemcachedConsistent
            configuration.hash = hash
        case .ketamaWeighted:
            configuration.distribution = .consistentWeighted
            configuration.hash = .md5
        }
        return configuration
    }

    /// A configuration that maps keys and tags values as pymemcache 4.0's `HashClient` with its
    /// serde does, so a Swift service and a Python service using pymemcache share one cluster.
    ///
    /// It selects ``MemcachedFlagProfile/pymemcache``, ``MemcachedDistribution/rendezvous`` and
    /// ``MemcachedHash/pymemcacheMurmur3``. Keys map alike when pymemcache gets them as `str`
    /// and without its `key_prefix` (see ``MemcachedDistribution/rendezvous``); weights are
    /// ignored, as `HashClient` has none. pymemcache needs a serde (without one it stores every
    /// value as its `str()` text under flag 0), with JSON for flag 1. The test suite checks both
    /// against the real pymemcache 4.0.0 from PyPI.
    ///
    /// - Parameter servers: Server strings in any form ``MemcachedServer/init(parsing:)``
    ///   accepts, such as pymemcache's `host:port` and `/path/to/socket`.
    /// - Returns: The configuration, every other field at its default.
    /// - Throws: ``MemcachedError`` with code ``MemcachedError/Code/invalidServerSpecification``
    ///   for a string that cannot be parsed.
    public static func pymemcacheCompatible(servers: [String]) throws -> MemcachedConfiguration {
        var configuration = try MemcachedConfiguration(servers: servers)
        configuration.flagProfile = .pymemcache
        configuration.distribution = .rendezvous
        configuration.hash = .pymemcacheMurmur3
        return configuration
    }
}
