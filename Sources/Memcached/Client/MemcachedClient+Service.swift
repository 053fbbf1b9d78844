public import ServiceLifecycle

extension MemcachedClient: Service {
    /// Keeps the client open until graceful shutdown or cancellation, then closes it.
    ///
    /// The client works without `run()`; running it in a `ServiceGroup` (Hummingbird's
    /// `addServices`, or a group of your own) ties its lifetime to the application's. When the
    /// group shuts down gracefully or is cancelled, `run()` calls ``close()`` and returns once
    /// every connection is freed and the client's threads have stopped.
    ///
    /// A service group shuts its services down in reverse order, so list the client before the
    /// services that use it (an HTTP server, say): it then closes after they have drained their
    /// requests.
    ///
    /// ```swift
    /// let memcached = try MemcachedClient(servers: ["127.0.0.1:11211"])
    /// let group = ServiceGroup(services: [memcached, httpServer], logger: logger)
    /// try await group.run()
    /// ```
    public func run() async throws {
        // Graceful shutdown returns and cancellation throws; either way the client closes.
        try? await gracefulShutdown()
        await close()
    }
}
