internal import CLibMemcached

/// Every public call runs under one total deadline (``CallDeadline``): checks of the sockets before
/// and after it, the reset of a call the watchdog stopped, and the error that reports it.
extension Handle {
    /// Runs one public call under its total deadline: ``MemcachedConfiguration/timeout`` from
    /// now, or `inherited` (a short-lived handle working for another call).
    ///
    /// A call inside another (a store in `setMulti`) shares the outer deadline. When the watchdog
    /// interrupted the call, its sockets are shut down and a reply may be half read, so the
    /// connections are reset, and a ``MemcachedError`` the call threw becomes
    /// ``deadlineError()``; a result the call completed before it was interrupted is returned.
    ///
    /// - Throws: `CancellationError` when the lease's task is cancelled, before anything is sent.
    @inline(__always)
    func withDeadline<R>(
        inheriting inherited: UInt64? = nil,
        ignoringCancellation: Bool = false,
        _ body: () throws -> R
    ) throws -> R {
        if inCall {
            return try body()
        }
        callServer = nil
        // Before the deadline starts, since the watchdog reads the server list during a call; not
        // when closing (`ignoringCancellation`), which must not rebuild anything.
        if let health, configuration.removeFailedServers, !ignoringCancellation,
            _slowPath(health.generation != serverListGeneration)
        {
            try leaveOutDownServers(health)
        }
        try deadline.begin(inheriting: inherited, ignoringCancellation: ignoringCancellation)
        inCall = true
        if let health, let due = leftOutUntil, !ignoringCancellation, _slowPath(ContinuousClock.now >= due) {
            // Inside the call's deadline: at most one server left out of the list, one probe.
            probeOneLeftOutServer(health)
        }
        if checksConnectionState, let pointer {
            // Once per tick of the coarse clock (4 ms here) that saw a call start: a connection used
            // within the tick is not idle, and back-to-back calls skip the system call.
            let tick = deadline.current &- deadline.timeout
            if tick != lastCheckedTick {
                lastCheckedTick = tick
                if ServerConnectionState.anyConnectionHasNews(pointer) {
                    dropConnections(because: "a server closed its connection or sent bytes while it was idle")
                }
            }
        }
        let result: R
        do {
            result = try body()
        } catch {
            throw endCall(throwing: error)
        }
        if checksConnectionState, let pointer, ServerConnectionState.anyUnreadBytes(pointer) {
            // libmemcached accepted a reply that was followed by more bytes: most likely the reply
            // was not the one asked for (a binary value packet read as an `incr` reply leaves
            // the real one behind), so the result is not trusted either.
            throw endCall(throwing: malformedReply("more bytes than the reply", command: "reply"))
        }
        if let server = callServer {
            health?.recordSuccess(server)
        }
        if _slowPath(deadline.wasInterrupted) {
            _ = endCall(throwing: nil)
        } else {
            inCall = false
            if _slowPath(deadline.end()) {
                // Interrupted after the call was complete: only its sockets are gone.
                resetConnections()
            }
        }
        return result
    }

    /// Ends a call that failed or was interrupted; returns the error to throw.
    @inline(never)
    private func endCall(throwing error: (any Error)?) -> any Error {
        let interrupted = deadline.wasInterrupted
        if interrupted {
            // Still inside the call, so the watchdog bounds the `quit`; the sockets it shut down
            // fail at once.
            resetConnections()
        }
        inCall = false
        let interruptedLate = deadline.end() && !interrupted
        if interruptedLate {
            resetConnections()
        }
        guard let error else { return CancellationError() }
        if interrupted || interruptedLate, error is MemcachedError {
            return deadlineError()
        }
        return error
    }

    /// Whether the call in flight has passed its deadline, was interrupted or cancelled: checked
    /// by the handle's own loops between steps, so that what remains fails at once.
    var isPastDeadline: Bool {
        inCall && deadline.isOver
    }

    /// The error of a call stopped at its deadline, or by the cancellation of its lease.
    func deadlineError() -> MemcachedError {
        if deadline.isCancelled {
            return MemcachedError(
                code: .timeout,
                message: "the call was cancelled and stopped; the connection was reset"
            )
        }
        return MemcachedError(
            code: .timeout,
            message: "the call did not finish within its deadline (the configured timeout, \(configuration.timeout)) "
                + "and was stopped; the connection was reset"
        )
    }
}
