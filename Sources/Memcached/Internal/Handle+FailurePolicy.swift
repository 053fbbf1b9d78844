internal import CLibMemcached
import Logging

/// Which servers a call may use and what its outcome says about them: commands for a server that is
/// down fail before anything is sent, a server whose down time has passed is probed, and a
/// failure counts against the server that caused it (``ServerHealth``).
extension Handle {
    /// The live handle for a command about to be sent. Bytes still waiting in libmemcached's read
    /// buffer here are not a reply to this command (a server sent more than the last reply, within
    /// a call of several commands such as `setMulti`): the connections are dropped first, since
    /// libmemcached would read them as this command's reply.
    ///
    /// With `key`, a command for that key's server: when that server is down
    /// (``ServerHealth``), the command fails here, before anything is sent.
    ///
    /// `expectsReply` is `false` for a fire-and-forget write, whose success says nothing of the
    /// server: it does not clear the server's failure count.
    @inline(__always)
    func commandHandle(
        for key: PreparedKey? = nil,
        expectsReply: Bool = true
    ) throws
        -> UnsafeMutablePointer<memcached_st>
    {
        let pointer = try live()
        if checksConnectionState, ServerConnectionState.anyUnreadBytes(pointer) {
            dropConnections(because: "a server sent more than the reply that was read")
        }
        if let key, let health, _slowPath(!health.allHealthy) {
            try admit(key, health)
            if !expectsReply {
                callServer = nil
            }
        }
        return pointer
    }

    /// Fails a command for a server that is down; otherwise notes the server, whose health the
    /// command's outcome then updates.
    @inline(never)
    private func admit(_ key: PreparedKey, _ health: ServerHealth) throws {
        guard let server = serverDescription(forKey: key.bytes) else { return }
        callServer = server
        var admission = health.admit(server)
        if admission == .probe {
            admission = probe(server, health) ? .proceed : .refuse
        }
        if admission == .refuse {
            callServer = nil
            throw serverDownError(server, key: key.key, health)
        }
    }

    /// The error of a command, or of a multi-key read's key, for a server that is down.
    func serverDownError(_ server: String, key: String, _ health: ServerHealth) -> MemcachedError {
        MemcachedError(
            code: .serverMarkedDead,
            message: "the server failed \(health.failureLimit) calls in a row and is left alone until its "
                + "retry timeout (\(configuration.retryTimeout)) has passed",
            key: key,
            server: server
        )
    }

    /// Asks a server that was down for a key nobody stores, through a short-lived handle of its
    /// own in the configured protocol (a server started with `-B binary` answers nothing else), and
    /// reports the outcome: a hit or a miss both mean it answers. It runs inside the call that
    /// needed the server, within that call's deadline (a probe that takes it all fails the call
    /// with `timeout`), so only that one call waits, and no command of the caller's reaches a
    /// server that may still hang.
    ///
    /// - Parameter forOwnKey: Whether the call needs this server for its own key. Otherwise (a
    ///   list that leaves servers out, ``MemcachedConfiguration/removeFailedServers``) the probe
    ///   gets half the timeout, so that the call's own command still fits in its deadline.
    func probe(_ server: String, _ health: ServerHealth, forOwnKey: Bool = true) -> Bool {
        guard let configured = configuration.servers.first(where: { $0.address.description == server }) else {
            return false
        }
        var single = configuration(onlyFor: configured)
        if !forOwnKey {
            single.timeout = configuration.timeout / 2
            single.connectTimeout = min(configuration.connectTimeout, single.timeout)
        }
        let inherited = inCall ? deadline.current : nil
        let answered: Bool
        var quick = false
        do {
            let handle = try Handle(configuration: single, parentDeadline: deadline)
            defer { handle.close() }
            answered = try Self.probeKey.withUnsafeBufferPointer { bytes in
                try handle.withDeadline(inheriting: inherited) {
                    _ = try handle.fetchOne(key: PreparedKey(bytes: bytes, key: "probe"), command: "probe") { _ in () }
                    return true
                }
            }
        } catch {
            answered = false
            quick = (error as? MemcachedError)?.code != .timeout
        }
        logger.debug("memcached server probed", metadata: ["server": "\(server)", "answered": "\(answered)"])
        if answered {
            health.recordSuccess(server)
        } else {
            health.recordFailure(server, quick: quick)
        }
        return answered
    }

    /// The key a probe reads (libmemcached takes keys with their length).
    private static let probeKey: [UInt8] = Array("swift-libmemcached:probe".utf8)

    /// Probes one of the servers this handle's list leaves out whose down time has passed,
    /// unless another call is probing it (see ``probe(_:_:)``); a server that answers comes back
    /// into every handle's list at its next call.
    func probeOneLeftOutServer(_ health: ServerHealth) {
        let now = ContinuousClock.now
        for server in configuration.servers {
            let name = server.address.description
            if health.admit(name, now: now) == .probe {
                _ = probe(name, health, forOwnKey: false)
                return
            }
        }
    }

    /// The servers a multi-key read leaves out: those that are down, less one whose down time has
    /// passed and which a probe just found answering (see ``probe(_:_:)``).
    func serversToLeaveOut(_ health: ServerHealth) -> Set<String> {
        var down = health.downServers().servers
        for name in down where health.admit(name) == .probe {
            if probe(name, health, forOwnKey: false) {
                down.remove(name)
            }
            break
        }
        return down
    }

    /// The key's server when it is one of `servers`: a multi-key read leaves the keys of servers
    /// that are down out, and reports them.
    func server(ofKey keyBytes: UnsafeBufferPointer<UInt8>, amongst servers: Set<String>) -> String? {
        guard let server = serverDescription(forKey: keyBytes), servers.contains(server) else { return nil }
        return server
    }

    /// Rebuilds the server list without the servers that are down, so their keys map to the
    /// others (``MemcachedConfiguration/removeFailedServers``); with every server down, keeps them
    /// all, and calls fail fast instead. Closes every connection of the handle.
    @inline(never)
    func leaveOutDownServers(_ health: ServerHealth) throws {
        let pointer = try live()
        let generation = health.generation
        // Every server that is down stays out, due for a probe or not: it comes back when a
        // probe finds it answering (``ServerHealth`` changes its generation then).
        let (down, firstDue) = health.downServers()
        leftOutUntil = down.isEmpty ? nil : firstDue
        var servers = configuration.servers.filter { !down.contains($0.address.description) }
        if servers.isEmpty {
            servers = configuration.servers
        }
        logger.debug(
            "memcached server list rebuilt",
            metadata: ["left out": "\(down.sorted())", "servers": "\(servers.count)"]
        )
        memcached_quit(pointer)
        memcached_servers_reset(pointer)
        try addServers(servers)
        // Only once the list is whole: a rebuild that failed is tried again by the next call.
        serverListGeneration = generation
    }

    /// Counts a failure against the server of the command's key, or, for a command of several
    /// keys, against every server that still owed a reply.
    ///
    /// `quick` says the server failed without keeping the call waiting (a refused, reset or
    /// closed connection, not a timeout): such a server costs nothing to try again soon (see
    /// ``ServerHealth``). It is the kind of failure, not the time it took, because on a loaded
    /// machine a refused connection can take as long as a quarter of the timeout to come back,
    /// which kept a restarted server out for the whole retry timeout.
    func recordFailure(server: String?, _ health: ServerHealth, quick: Bool) {
        callServer = nil
        if let server {
            health.recordFailure(server, quick: quick)
        } else {
            chargeServersThatOweReplies(health, quick: quick)
        }
    }

    /// Notes which servers a multi-key read just sent requests to: those with replies pending.
    func noteAskedServers() {
        guard let pointer else { return }
        let count = Int(memcached_server_count(pointer))
        if askedServers.count != count {
            askedServers = Array(repeating: false, count: count)
        }
        for position in 0..<count {
            let instance = memcached_server_instance_by_position(pointer, UInt32(position))
            askedServers[position] = instance.map { memcached_server_response_count($0) > 0 } ?? false
        }
    }

    /// Counts a failed multi-key read against each server it asked that has not answered in
    /// full: one still owing replies (a timeout leaves the count) or whose socket libmemcached
    /// closed on an error (which zeroes it). Servers that finished keep their sockets.
    func chargeServersThatOweReplies(_ health: ServerHealth, quick: Bool = false) {
        guard !deadline.isCancelled else { return }
        for server in serversOwingReplies() {
            health.recordFailure(server, quick: quick)
        }
        forgetAskedServers()
    }

    /// The servers the multi-key read in flight asked that have not answered in full: still
    /// owing replies, or with the socket closed. Read before the connections are reset.
    func serversOwingReplies() -> Set<String> {
        guard let pointer else { return [] }
        var servers: Set<String> = []
        for position in askedServers.indices where askedServers[position] {
            guard let instance = memcached_server_instance_by_position(pointer, UInt32(position)) else { continue }
            let closed = ServerConnectionState.isAvailable && ServerConnectionState.descriptor(of: instance) == nil
            if memcached_server_response_count(instance) > 0 || closed {
                servers.insert(Self.describe(instance))
            }
        }
        return servers
    }

    /// Notes, for a multi-key read stopped by its deadline, the servers it asked that had
    /// answered in full (``answeredServers``): their reply count is back to zero and their socket
    /// still open. Only that positive evidence counts: a server never reached, or whose socket
    /// libmemcached closed, is not one of them. `nil` when the sockets cannot be checked.
    func noteAnsweredServers() {
        guard let pointer, ServerConnectionState.isAvailable else {
            answeredServers = nil
            return
        }
        var servers: Set<String> = []
        for position in askedServers.indices where askedServers[position] {
            guard let instance = memcached_server_instance_by_position(pointer, UInt32(position)) else { continue }
            if memcached_server_response_count(instance) == 0, ServerConnectionState.descriptor(of: instance) != nil {
                servers.insert(Self.describe(instance))
            }
        }
        answeredServers = servers
    }

    /// The servers ``noteAnsweredServers()`` noted for the read that just failed, once.
    func takeAnsweredServers() -> Set<String>? {
        defer { answeredServers = nil }
        return answeredServers
    }

    func forgetAskedServers() {
        askedServers.withUnsafeMutableBufferPointer { $0.update(repeating: false) }
    }

    /// Clears the failure counts of the servers a multi-key read asked, once it read every reply,
    /// and counts a failure against those of `lost`, which hung up before their reply was whole.
    func creditAskedServers(_ health: ServerHealth, except lost: Set<String> = []) {
        guard let pointer else { return }
        for position in askedServers.indices where askedServers[position] {
            if let instance = memcached_server_instance_by_position(pointer, UInt32(position)) {
                let server = Self.describe(instance)
                if lost.contains(server) {
                    health.recordFailure(server, quick: true)
                } else {
                    health.recordSuccess(server)
                }
            }
        }
    }

    /// Whether a failure may leave bytes of a reply unread on some socket.
    ///
    /// Only failures that happen before any byte is exchanged (no connection, server disabled,
    /// a key refused) and the replies libmemcached reads to their end as expected negatives (not
    /// found, not stored, exists) leave the connection in step. Every other failure, error
    /// replies from the server included, counts: `SERVER_ERROR out of memory` or `CLIENT_ERROR`
    /// may be followed by bytes libmemcached never reads (a real memcached under `-M` sends such
    /// lines mid-stream, a hostile one anything), and a reconnect is cheap next to reading another
    /// command's reply.
    static func mayLeaveReplyUnread(_ rc: memcached_return_t) -> Bool {
        switch rc {
        case MEMCACHED_SUCCESS, MEMCACHED_END, MEMCACHED_NOTFOUND, MEMCACHED_NOTSTORED, MEMCACHED_DATA_EXISTS,
            MEMCACHED_STORED, MEMCACHED_DELETED, MEMCACHED_BUFFERED,
            MEMCACHED_HOST_LOOKUP_FAILURE, MEMCACHED_CONNECTION_FAILURE, MEMCACHED_SERVER_MARKED_DEAD,
            MEMCACHED_SERVER_TEMPORARILY_DISABLED, MEMCACHED_NO_SERVERS, MEMCACHED_INVALID_ARGUMENTS,
            MEMCACHED_BAD_KEY_PROVIDED, MEMCACHED_KEY_TOO_BIG, MEMCACHED_NOT_SUPPORTED:
            return false
        default:
            return true
        }
    }

    /// Whether an error a command threw means the handle may be out of step with a server: the
    /// failures ``mayLeaveReplyUnread(_:)`` names, and a reply for a key nobody asked for.
    /// ``MemcachedClient``'s pool discards such a handle instead of lending it again.
    static func mayLeaveReplyUnread(_ code: MemcachedError.Code) -> Bool {
        if code == .unexpectedKey {
            return true
        }
        return code.isLibmemcachedCode && mayLeaveReplyUnread(memcached_return_t(UInt32(code.rawValue)))
    }
}
