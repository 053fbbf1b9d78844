/// A group of independent `memcached` servers started together, for tests that
/// need several servers (distribution, failover).
public struct MemcachedCluster: Sendable {
    /// The servers, in the order they were started.
    public let servers: [MemcachedServerProcess]

    /// Each server's `host:port`, in the same order as ``servers``.
    public var addresses: [String] { servers.map(\.address) }

    /// Wraps servers that were already started.
    ///
    /// - Parameter servers: The servers; the cluster does not start them.
    public init(servers: [MemcachedServerProcess]) {
        self.servers = servers
    }

    /// Starts `count` servers with the same arguments and environment.
    ///
    /// If any server fails to start, the ones already started are stopped before
    /// the error is thrown, so a failed start leaves nothing running.
    ///
    /// - Parameters:
    ///   - count: How many servers to start; at least 0.
    ///   - arguments: Extra `memcached` arguments for every server.
    ///   - environment: Extra environment variables for every server.
    /// - Returns: The running servers.
    /// - Throws: ``MemcachedFixtureError/invalidArgument(_:)`` for a negative count, or the
    ///   error of the first server that failed to start.
    public static func start(
        count: Int,
        arguments: [String] = [],
        environment: [String: String] = [:]
    ) throws -> MemcachedCluster {
        guard count >= 0 else {
            throw MemcachedFixtureError.invalidArgument("server count must not be negative, got \(count)")
        }
        var started: [MemcachedServerProcess] = []
        do {
            for _ in 0..<count {
                started.append(try MemcachedServerProcess.start(arguments: arguments, environment: environment))
            }
        } catch {
            MemcachedCluster(servers: started).stop()
            throw error
        }
        return MemcachedCluster(servers: started)
    }

    /// Stops every server; see ``MemcachedServerProcess/stop()``. Calling it again does nothing.
    public func stop() {
        // memcached takes about half a second to exit on SIGTERM; signal every
        // server first so that they shut down in parallel rather than in turn.
        for server in servers {
            server.requestTermination()
        }
        for server in servers {
            server.stop()
        }
    }
}

/// Runs `body` with freshly started `memcached` servers and stops them afterwards.
///
/// The servers are stopped whether `body` returns or throws, and if one fails to
/// start the others are stopped before the error is thrown.
///
/// ```swift
/// try await withMemcached(servers: 2) { cluster in
///     let client = try MemcachedClient(servers: cluster.addresses)
///     …
/// }
/// ```
///
/// - Parameters:
///   - count: How many servers to start.
///   - arguments: Extra `memcached` arguments for every server, for example `["-I", "2m"]`.
///   - environment: Extra environment variables for every server.
///   - isolation: The actor `body` runs on; by default the caller's.
///   - body: The test code, given the running servers.
/// - Returns: Whatever `body` returns.
/// - Throws: A ``MemcachedFixtureError`` if the servers cannot be started (for
///   example because `memcached` is not installed), or whatever `body` throws.
public func withMemcached<R>(
    servers count: Int = 1,
    arguments: [String] = [],
    environment: [String: String] = [:],
    isolation: isolated (any Actor)? = #isolation,
    _ body: (MemcachedCluster) async throws -> R
) async throws -> R {
    let cluster = try MemcachedCluster.start(count: count, arguments: arguments, environment: environment)
    defer { cluster.stop() }
    return try await body(cluster)
}

/// Runs synchronous `body` with freshly started `memcached` servers and stops them afterwards.
///
/// The servers are stopped whether `body` returns or throws, and if one fails to
/// start the others are stopped before the error is thrown.
///
/// - Parameters:
///   - count: How many servers to start.
///   - arguments: Extra `memcached` arguments for every server, for example `["-I", "2m"]`.
///   - environment: Extra environment variables for every server.
///   - body: The test code, given the running servers.
/// - Returns: Whatever `body` returns.
/// - Throws: A ``MemcachedFixtureError`` if the servers cannot be started (for
///   example because `memcached` is not installed), or whatever `body` throws.
public func withMemcached<R>(
    servers count: Int = 1,
    arguments: [String] = [],
    environment: [String: String] = [:],
    _ body: (MemcachedCluster) throws -> R
) throws -> R {
    let cluster = try MemcachedCluster.start(count: count, arguments: arguments, environment: environment)
    defer { cluster.stop() }
    return try body(cluster)
}
