internal import CLibMemcached
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// libmemcached's return codes turned into ``MemcachedError``s that name the key and its server,
/// with libmemcached's messages cleaned of its own addresses and source locations.
extension Handle {
    /// libmemcached's message for the handle's last error when it is this code, else the code's
    /// generic text.
    func lastErrorMessage(for rc: memcached_return_t) -> String {
        if let pointer, memcached_last_error(pointer) == rc, let message = memcached_last_error_message(pointer) {
            return Self.readable(String(cString: message))
        }
        return String(cString: memcached_strerror(nil, rc))
    }

    /// libmemcached's messages carry its handle's address and its own source location
    /// ("(0x55de…) CONNECTION FAILURE,  host: h:p -> ./src/libmemcached/get.cc:233"), which mean
    /// nothing to a caller and vary from run to run; keep the text between them.
    static func readable(_ message: String) -> String {
        var text = Substring(message)
        if text.hasPrefix("(0x"), let close = text.firstIndex(of: ")") {
            text = text[text.index(after: close)...]
        }
        if let location = text.firstRange(of: " -> ") {
            text = text[..<location.lowerBound]
        }
        return text.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
    }

    /// The server a key maps to, as `host:port` or a socket path.
    func serverDescription(forKey keyBytes: UnsafeBufferPointer<UInt8>) -> String? {
        guard let pointer, let base = keyBytes.baseAddress else { return nil }
        var rc = MEMCACHED_SUCCESS
        let instance = base.withMemoryRebound(to: CChar.self, capacity: keyBytes.count) {
            memcached_server_by_key(pointer, $0, keyBytes.count, &rc)
        }
        return instance.map(Self.describe)
    }

    static func describe(_ instance: OpaquePointer) -> String {
        let name = String(cString: memcached_server_name(instance))
        let port = memcached_server_port(instance)
        if port == 0 || name.hasPrefix("/") {
            return "unix:\(name)"
        }
        return name.contains(":") ? "[\(name)]:\(port)" : "\(name):\(port)"
    }

    /// Builds the error for a failed C call and resets the connections when the failure may have
    /// left a reply half-read.
    ///
    /// A connection that may be mid-response is never reused: peers shipped "get returned another
    /// key's value" bugs from exactly that. `memcached_quit` closes every server's socket (there is
    /// no public per-server reset in libmemcached 1.1.4); the next command reconnects.
    func failure(
        _ rc: memcached_return_t,
        command: StaticString,
        key: String? = nil,
        keyBytes: UnsafeBufferPointer<UInt8>? = nil,
        reset: Bool = false
    ) -> MemcachedError {
        let server = keyBytes.flatMap(serverDescription(forKey:))
        var error = MemcachedError(
            code: MemcachedError.Code(rawValue: Int(rc.rawValue)),
            message: lastErrorMessage(for: rc),
            key: key,
            server: server
        )
        // A failure after the deadline is most likely the watchdog's doing (the shut-down socket
        // reads as a lost connection): report what happened.
        let pastDeadline = isPastDeadline
        if pastDeadline {
            error.code = .timeout
            error.message = deadlineError().message
        }
        // A cancelled call says nothing of the server: it was stopped from this side.
        if let health, !deadline.isCancelled, ServerHealth.countsAgainstServer(error.code) {
            recordFailure(server: server, health, quick: error.code != .timeout)
        }
        if reset || pastDeadline || Self.mayLeaveReplyUnread(rc) {
            resetConnections()
        }
        logger.debug(
            "memcached command failed",
            metadata: [
                "command": "\(command)", "code": "\(error.code)", "server": "\(server ?? "-")",
                "message": "\(error.message)",
            ]
        )
        return error
    }

    /// Whether the failure just reported broke a socket that was connected (the server reset or
    /// closed it while a request was being written): libmemcached then closes that socket and
    /// drops what was buffered for it. A refused connection is not one: nothing was buffered.
    var lastFailureBrokeASocket: Bool {
        guard let pointer else { return false }
        switch memcached_last_error_errno(pointer) {
        case ECONNRESET, EPIPE, ENOTCONN, ECONNABORTED: return true
        default: return false
        }
    }
}
