internal import CLibMemcached

/// Setting a new handle up from a ``MemcachedConfiguration``: behaviours, hash, servers (with
/// python-memcached's weights), credentials; and the conversions of durations libmemcached takes.
extension Handle {
    /// Lets an ejected server back in: with `MEMCACHED_BEHAVIOR_REMOVE_FAILED_SERVERS`, libmemcached
    /// retries an ejected server only when a dead timeout is set (`backoff_handling` in connect.cc);
    /// without one, a server that reached the failure limit stays out for good.
    func applyDeadServerRetry(_ configuration: MemcachedConfiguration) throws(MemcachedError) {
        guard configuration.removeFailedServers else { return }
        let seconds = try Self.seconds(configuration.retryTimeout, "retryTimeout")
        let rc = memcached_behavior_set(try live(), MEMCACHED_BEHAVIOR_DEAD_TIMEOUT, max(seconds, 1))
        guard memcached_success(rc) else {
            throw MemcachedError(code: .invalidConfiguration, message: "libmemcached refused the dead timeout")
        }
    }

    func applyCredentials(_ configuration: MemcachedConfiguration) throws(MemcachedError) {
        guard let credentials = configuration.credentials else { return }
        guard configuration.wireProtocol == .binary else {
            throw MemcachedError(
                code: .invalidConfiguration,
                message: "SASL authentication needs the binary protocol: set wireProtocol to .binary"
            )
        }
        // libmemcached runs sasl_client_init once per process itself, on first authentication.
        let rc = memcached_set_sasl_auth_data(try live(), credentials.username, credentials.password)
        guard memcached_success(rc) else {
            throw MemcachedError(
                code: .invalidConfiguration,
                message: "libmemcached refused the SASL credentials: \(lastErrorMessage(for: rc))"
            )
        }
    }

    /// A bound on libmemcached's largest allocation while it sets a handle up, which the receive
    /// cap must not refuse: the server list is one array of server entries (two 8 KiB I/O
    /// buffers and a host name each, about 17.6 KB; 24 KiB counted). Consistent continuums are
    /// built by this library (``Continuum``), not in libmemcached's memory.
    static func setupAllocationBytes(_ configuration: MemcachedConfiguration) -> Int {
        configuration.servers.count * (24 << 10)
    }

    func applyBehaviors(_ configuration: MemcachedConfiguration) throws(MemcachedError) {
        guard configuration.serverFailureLimit >= 1 else {
            throw MemcachedError(code: .invalidConfiguration, message: "serverFailureLimit must be at least 1")
        }
        guard configuration.maximumValueLength >= 0 else {
            throw MemcachedError(code: .invalidConfiguration, message: "maximumValueLength must not be negative")
        }
        let behaviors: [(memcached_behavior_t, UInt64, String)] = [
            (MEMCACHED_BEHAVIOR_SUPPORT_CAS, 1, "support CAS"),
            // Fire-and-forget writes are also batched: written when a batch ends or another
            // command needs the socket (see `flushWrites()`), so `setMulti` is one write per server.
            (MEMCACHED_BEHAVIOR_BUFFER_REQUESTS, noReply ? 1 : 0, "noReply"),
            (MEMCACHED_BEHAVIOR_TCP_NODELAY, configuration.tcpNoDelay ? 1 : 0, "tcpNoDelay"),
            (MEMCACHED_BEHAVIOR_BINARY_PROTOCOL, configuration.wireProtocol == .binary ? 1 : 0, "wireProtocol"),
            (
                MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT,
                try Self.milliseconds(configuration.connectTimeout, "connectTimeout"), "connectTimeout"
            ),
            (MEMCACHED_BEHAVIOR_POLL_TIMEOUT, try Self.milliseconds(configuration.timeout, "timeout"), "timeout"),
            (
                MEMCACHED_BEHAVIOR_RETRY_TIMEOUT, try Self.seconds(configuration.retryTimeout, "retryTimeout"),
                "retryTimeout"
            ),
            (MEMCACHED_BEHAVIOR_SERVER_FAILURE_LIMIT, UInt64(configuration.serverFailureLimit), "serverFailureLimit"),
            // libmemcached's own backoff (a server that failed a connect is skipped for the retry
            // timeout, per connection) never: ServerHealth decides for all connections at once,
            // and retries a server that refused connections after 100 ms.
            (MEMCACHED_BEHAVIOR_SERVER_TIMEOUT_LIMIT, UInt64(UInt32.max), "server timeout limit"),
            (
                MEMCACHED_BEHAVIOR_REMOVE_FAILED_SERVERS, configuration.removeFailedServers ? 1 : 0,
                "removeFailedServers"
            ),
            (
                MEMCACHED_BEHAVIOR_DISTRIBUTION, UInt64(Self.libmemcachedDistribution.rawValue),
                "distribution"
            ),
        ]
        let pointer = try live()
        for (behavior, value, name) in behaviors {
            let rc = memcached_behavior_set(pointer, behavior, value)
            guard memcached_success(rc) else {
                throw MemcachedError(
                    code: .invalidConfiguration,
                    message: "libmemcached refused \(name) = \(value): \(lastErrorMessage(for: rc))"
                )
            }
        }
        // The hash goes last: setting MEMCACHED_BEHAVIOR_HASH after a custom function replaces it.
        try applyConfiguredHash()
    }

    private func applyConfiguredHash() throws(MemcachedError) {
        let pointer = try live()
        switch configuration.hash.kind {
        case .builtIn(let name, let value):
            let rc = memcached_behavior_set(pointer, MEMCACHED_BEHAVIOR_HASH, UInt64(value))
            guard memcached_success(rc) else {
                throw MemcachedError(
                    code: .invalidConfiguration,
                    message: "libmemcached refused hash \(name): \(lastErrorMessage(for: rc))"
                )
            }
        case .custom(let function):
            try installCustomHash(function)
        }
    }

    /// libmemcached's distribution is always modula: weighted modula routes through virtual
    /// buckets (``applyBucketList(_:)``) and every consistent distribution through a continuum of
    /// this library's (``installRouter(for:)``), both by a key hash that picks the server.
    static let libmemcachedDistribution = MEMCACHED_DISTRIBUTION_MODULA

    /// Converts a timeout for libmemcached's millisecond behaviours; rounds up so a sub-millisecond
    /// timeout does not become 0, which libmemcached reads as "fail at once".
    static func milliseconds(_ duration: Duration, _ name: String) throws(MemcachedError) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, duration > .zero else {
            throw MemcachedError(code: .invalidConfiguration, message: "\(name) must be positive")
        }
        // Checked before multiplying: `.seconds(Int64.max)` would overflow.
        guard seconds < Int64(Int32.max) / 1_000 + 1 else {
            throw MemcachedError(code: .invalidConfiguration, message: "\(name) is too long")
        }
        let millis = seconds * 1_000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        guard millis <= Int64(Int32.max) else {
            throw MemcachedError(code: .invalidConfiguration, message: "\(name) is too long")
        }
        return UInt64(millis)
    }

    /// Converts a duration for libmemcached's whole-second behaviours, rounding up.
    static func seconds(_ duration: Duration, _ name: String) throws(MemcachedError) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, duration >= .zero, seconds <= Int64(Int32.max) else {
            throw MemcachedError(
                code: .invalidConfiguration,
                message: "\(name) must be between 0 and \(Int32.max) seconds"
            )
        }
        return UInt64(seconds + (attoseconds > 0 ? 1 : 0))
    }

    /// Adds the servers and routes keys to them the way the distribution reads weights: modula
    /// ignores libmemcached's weights, so a server of weight `w` counts `w` times in a row
    /// (python-memcached's bucket list); a consistent distribution builds its continuum from the
    /// servers and their weights.
    func addServers(_ servers: [MemcachedServer]) throws(MemcachedError) {
        let pointer = try live()
        for server in servers {
            // The parser's range.
            guard (1...1_000).contains(server.weight) else {
                throw MemcachedError(
                    code: .invalidServerSpecification,
                    message: "server \(server) has a weight outside 1...1000"
                )
            }
            try addServer(server, to: pointer)
        }
        if configuration.distribution.kind != .modula {
            try installRouter(for: servers)
        } else if servers.contains(where: { $0.weight > 1 }) {
            try applyBucketList(servers)
        } else if bucketMap != nil {
            // Rebuilt without the weighted servers (removeFailedServers): plain modula again
            // (the bucket list had made it MEMCACHED_DISTRIBUTION_VIRTUAL_BUCKET).
            bucketMap = nil
            let rc = memcached_behavior_set(
                pointer,
                MEMCACHED_BEHAVIOR_DISTRIBUTION,
                UInt64(Self.libmemcachedDistribution.rawValue)
            )
            guard memcached_success(rc) else {
                throw MemcachedError(code: .invalidConfiguration, message: "libmemcached refused the distribution")
            }
            try applyConfiguredHash()
        }
    }

    /// Routes keys by rendezvous hashing (``Rendezvous``) or over a continuum of `servers`
    /// (``Continuum``): the key hash installed in libmemcached is the chosen server's position,
    /// which modula then picks. libmemcached's own continuum would abort the process beyond 100
    /// servers; this one takes any number, and is the same for up to 100.
    private func installRouter(for servers: [MemcachedServer]) throws(MemcachedError) {
        let keyHash = configuration.hash.kind
        let scheme: Continuum.Scheme
        let weighted: Bool
        switch configuration.distribution.kind {
        case .rendezvous:
            let rendezvous = Rendezvous(names: servers.map(Rendezvous.name(of:)), hash: keyHash)
            try installCustomHash(
                CustomHashFunction(name: "rendezvous with \(configuration.hash)") { bytes in
                    rendezvous.serverPosition(forKey: bytes)
                }
            )
            return
        case .consistent:
            (scheme, weighted) = (.libmemcachedWeighted, false)
        case .consistentWeighted:
            (scheme, weighted) = (.libmemcachedWeighted, true)
        case .libketama:
            (scheme, weighted) = (.libketama, true)
        case .modula:
            preconditionFailure("modula routes through libmemcached or the bucket list")
        case .libmemcachedConsistent:
            // libmemcached turns its unweighted continuum into the weighted one for good as soon
            // as a server has a weight above 1 (server_add in hosts.cc): the configured servers
            // decide, not the live ones, or leaving a weighted server out would remap every key.
            let anyWeight = configuration.servers.contains { $0.weight > 1 }
            (scheme, weighted) = anyWeight ? (.libmemcachedWeighted, true) : (.libmemcachedUnweighted, false)
        }
        let continuum = Continuum(
            servers: servers.map { (Continuum.name(of: $0, scheme: scheme), weighted ? $0.weight : 1) },
            scheme: scheme,
            keyHash: keyHash
        )
        try installCustomHash(
            CustomHashFunction(name: "\(configuration.hash) on a \(configuration.distribution) continuum") { bytes in
                continuum.serverPosition(forHash: CustomHashFunction.value(keyHash, bytes))
            }
        )
    }

    /// Maps keys to weighted servers as python-memcached does, without a server entry per unit.
    ///
    /// python-memcached lists each server `weight` times, in order, and picks
    /// `buckets[hash % buckets.count]`. libmemcached's modula has no weights (repeating entries
    /// costs a socket and 17 KB each: 100 servers of weight 1,000 took 1 GiB), but its virtual
    /// buckets map a bucket to a server: bucket `digest & (size - 1)`, a power of two. So the key
    /// hash becomes `hash % total weight` (a custom function around the configured hash), which
    /// is below the power of two, and bucket `b` maps to the server python-memcached's list holds
    /// at `b`.
    private func applyBucketList(_ servers: [MemcachedServer]) throws(MemcachedError) {
        let total = servers.reduce(0) { $0 + $1.weight }
        var map: [UInt32] = []
        map.reserveCapacity(total)
        for (index, server) in servers.enumerated() {
            map.append(contentsOf: repeatElement(UInt32(index), count: server.weight))
        }
        var size = 1
        while size < total { size <<= 1 }
        map.append(contentsOf: repeatElement(0, count: size - total))
        let kind = configuration.hash.kind
        let buckets = UInt32(total)
        let hash = CustomHashFunction(name: "\(configuration.hash) modulo \(total)") { bytes in
            CustomHashFunction.value(kind, bytes) % buckets
        }
        try installCustomHash(hash)
        bucketMap = map
        try setBuckets(map)
    }

    func setBuckets(_ map: [UInt32]) throws(MemcachedError) {
        let rc = map.withUnsafeBufferPointer {
            memcached_bucket_set(try? live(), $0.baseAddress, nil, UInt32($0.count), 0)
        }
        guard memcached_success(rc) else {
            throw MemcachedError(
                code: .invalidConfiguration,
                message: "libmemcached refused the weighted server list: \(lastErrorMessage(for: rc))"
            )
        }
    }

    /// Adds a server with weight 1: libmemcached's distribution is modula, which has no weights.
    private func addServer(
        _ server: MemcachedServer,
        to pointer: UnsafeMutablePointer<memcached_st>
    ) throws(MemcachedError) {
        if let problem = server.problem {
            throw MemcachedError(code: .invalidServerSpecification, message: "server \(server): \(problem)")
        }
        let rc: memcached_return_t
        switch server.address {
        case .tcp(let host, let port):
            rc = memcached_server_add_with_weight(pointer, host, in_port_t(port), 1)
        case .unixSocket(let path):
            rc = memcached_server_add_unix_socket_with_weight(pointer, path, 1)
        }
        guard memcached_success(rc) else {
            throw MemcachedError(
                code: .invalidServerSpecification,
                message: "libmemcached refused server \(server): \(lastErrorMessage(for: rc))",
                server: server.description
            )
        }
    }
}
