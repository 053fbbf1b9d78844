#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One memcached server: where it listens and how much of the key space it gets.
///
/// Write servers the way python-memcached and libmemcached users do, and parse them with
/// ``init(parsing:)``:
///
/// | Form | Meaning |
/// | --- | --- |
/// | `cache1` | host `cache1`, port 11211 |
/// | `127.0.0.1:11212` | host and port |
/// | `[::1]:11211`, `[::1]`, `::1` | an IPv6 address, with or without a port |
/// | `inet:host[:port]`, `inet6:[addr][:port]` | python-memcached's explicit forms |
/// | `unix:/run/memcached.sock`, `/run/memcached.sock` | a Unix domain socket |
/// | any of the above followed by ` weight` or `:weight` after a port | a weight, as in `host:11211:2` |
public struct MemcachedServer: Sendable, Hashable, CustomStringConvertible {
    /// Where a server listens.
    public enum Address: Sendable, Hashable, CustomStringConvertible {
        /// A TCP host name or IP address and a port.
        case tcp(host: String, port: Int)
        /// A Unix domain socket at a file system path.
        case unixSocket(path: String)

        /// The address as `host:port`, `[v6]:port` or `unix:/path`.
        public var description: String {
            switch self {
            case .tcp(let host, let port):
                host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unixSocket(let path):
                "unix:\(path)"
            }
        }
    }

    /// The default memcached port, 11211.
    public static let defaultPort = 11211

    /// Where the server listens.
    public var address: Address

    /// The server's weight: how many shares of the key space it gets relative to the others.
    ///
    /// How a weight is used depends on the distribution. The default is 1.
    public var weight: Int

    /// Creates a TCP server.
    ///
    /// - Parameters:
    ///   - host: A host name or an IPv4 or IPv6 address (without brackets).
    ///   - port: The TCP port. The default is 11211.
    ///   - weight: The server's weight. The default is 1.
    public init(host: String, port: Int = MemcachedServer.defaultPort, weight: Int = 1) {
        self.address = .tcp(host: host, port: port)
        self.weight = weight
    }

    /// Creates a server from its address.
    ///
    /// - Parameters:
    ///   - address: Where the server listens.
    ///   - weight: The server's weight. The default is 1.
    public init(address: Address, weight: Int = 1) {
        self.address = address
        self.weight = weight
    }

    /// Creates a server reached through a Unix domain socket.
    ///
    /// - Parameters:
    ///   - path: The socket's file system path.
    ///   - weight: The server's weight. The default is 1.
    public init(unixSocketPath path: String, weight: Int = 1) {
        self.address = .unixSocket(path: path)
        self.weight = weight
    }

    /// Parses a server the way python-memcached and libmemcached users write it.
    ///
    /// - Parameter specification: A server string such as `127.0.0.1:11211`, `[::1]:11211`,
    ///   `unix:/path/to/socket` or `cache1:11211:2` (weight 2). See ``MemcachedServer`` for every form.
    /// - Throws: ``MemcachedError`` with code ``MemcachedError/Code/invalidServerSpecification``
    ///   when the string is empty or its port or weight is not a number in range.
    public init(parsing specification: String) throws {
        var text = specification.trimmingWhitespace()
        func invalid(_ reason: String) -> MemcachedError {
            MemcachedError(
                code: .invalidServerSpecification,
                message: "cannot parse server \"\(specification)\": \(reason)"
            )
        }
        var weight = 1
        var spaceWeight = false
        if let space = text.lastIndex(of: " ") {
            guard let parsed = Int(text[text.index(after: space)...]) else { throw invalid("bad weight") }
            weight = parsed
            spaceWeight = true
            text = String(text[..<space]).trimmingWhitespace()
        }
        guard weight >= 1, weight <= 1_000 else { throw invalid("weight must be between 1 and 1000") }
        guard !text.isEmpty else { throw invalid("empty") }

        if text.hasPrefix("unix:") || text.hasPrefix("/") {
            let path = text.hasPrefix("unix:") ? String(text.dropFirst(5)) : text
            guard !path.isEmpty else { throw invalid("empty socket path") }
            self.init(unixSocketPath: path, weight: weight)
            return
        }
        for scheme in ["inet6:", "inet:"] where text.hasPrefix(scheme) {
            text.removeFirst(scheme.count)
        }

        let host: String
        var rest: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw invalid("missing ]") }
            host = String(text[text.index(after: text.startIndex)..<close])
            rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.first == ":" else { throw invalid("expected : after ]") }
                rest = rest.dropFirst()
            }
        } else if text.contains("::") || text.filter({ $0 == ":" }).count > 2 {
            // "::" or more colons than host:port:weight has can only be a bare IPv6 address; a
            // port after one needs brackets, since `::1:11211` is itself an address.
            guard Self.isIPv6Address(text) else { throw invalid("not an IPv6 address (put one with a port in [])") }
            host = text
            rest = ""
        } else {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            host = String(parts[0])
            rest = parts.count > 1 ? text[text.index(after: text.firstIndex(of: ":")!)...] : ""
        }
        guard !host.isEmpty else { throw invalid("empty host") }
        if let problem = Self.problem(withHost: host) {
            throw invalid(problem)
        }

        var port = Self.defaultPort
        if !rest.isEmpty {
            let fields = rest.split(separator: ":", omittingEmptySubsequences: false)
            guard fields.count <= 2, let parsedPort = Int(fields[0]), (1...65_535).contains(parsedPort) else {
                throw invalid("bad port")
            }
            port = parsedPort
            if fields.count == 2 {
                guard !spaceWeight else { throw invalid("two weights") }
                guard let parsedWeight = Int(fields[1]), parsedWeight >= 1, parsedWeight <= 1_000 else {
                    throw invalid("weight must be between 1 and 1000")
                }
                weight = parsedWeight
            }
        }
        self.init(host: host, port: port, weight: weight)
    }

    /// What libmemcached would not connect to as given: an empty host (it would connect to
    /// `localhost`), a byte it would cut the name at or that no host name holds, or a name with a
    /// colon that is not an IPv6 address.
    static func problem(withHost host: String) -> String? {
        if host.isEmpty {
            return "empty host"
        }
        if host.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) {
            return "a space or control character in the host"
        }
        if host.contains(":"), !isIPv6Address(host) {
            return "a host with a colon that is not an IPv6 address"
        }
        return nil
    }

    /// What is wrong with the server, or `nil`: checked when a connection is created, since the
    /// initializers take any string.
    var problem: String? {
        switch address {
        case .tcp(let host, let port):
            if let problem = Self.problem(withHost: host) {
                return problem
            }
            return (1...65_535).contains(port) ? nil : "a port outside 1...65535"
        case .unixSocket(let path):
            // sun_path holds 108 bytes, the terminating NUL included.
            if path.isEmpty || path.utf8.contains(0) || path.utf8.count > 107 {
                return "a socket path that is empty, holds a NUL or is over 107 bytes"
            }
            return nil
        }
    }

    static func isIPv6Address(_ text: String) -> Bool {
        var address = in6_addr()
        return inet_pton(AF_INET6, text, &address) == 1
    }

    /// The server as `host:port`, `[v6]:port` or `unix:/path`, with ` weight` when it is not 1.
    public var description: String {
        weight == 1 ? address.description : "\(address) \(weight)"
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var view = Substring(self)
        while let first = view.first, first.isWhitespace { view.removeFirst() }
        while let last = view.last, last.isWhitespace { view.removeLast() }
        return String(view)
    }
}
