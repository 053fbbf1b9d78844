public import Logging

/// Everything a ``MemcachedConnection`` needs to know, applied once when the connection is made.
///
/// A configuration is a plain value: build one, adjust its fields, and hand it to
/// ``MemcachedConnection/init(configuration:)``. libmemcached resets its sockets whenever a
/// behaviour changes, so this library applies every field once, at creation, and never later.
///
/// ```swift
/// var configuration = try MemcachedConfiguration(servers: ["127.0.0.1:11211", "127.0.0.1:11212"])
/// configuration.timeout = .milliseconds(500)
/// configuration.compressionThreshold = 4_096
/// let connection = try MemcachedConnection(configuration: configuration)
/// ```
public struct MemcachedConfiguration: Sendable {
    /// The wire protocol spoken to every server.
    public enum WireProtocol: Sendable, Hashable {
        /// memcached's text protocol, which python-memcached speaks.
        case ascii
        /// memcached's binary protocol, needed for SASL authentication. memcached 1.6 deprecates it.
        case binary
    }

    /// The servers, in order. The order matters for modula distribution: keep it the same in
    /// every client that shares the cluster.
    public var servers: [MemcachedServer]

    /// The wire protocol. The default is ``WireProtocol/ascii``.
    public var wireProtocol: WireProtocol = .ascii

    /// How long to wait for a TCP connection to a server to be established.
    ///
    /// The default is 3 seconds, python-memcached's `socket_timeout`.
    /// The corresponding C behaviour is `MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT`.
    public var connectTimeout: Duration = .seconds(3)

    /// How long one command may take before it fails with ``MemcachedError/Code/timeout``.
    ///
    /// The default is 3 seconds, python-memcached's `socket_timeout`. It is two limits:
    ///
    /// - **Per wait.** libmemcached applies it, with millisecond resolution, to each wait for a
    ///   socket (it always uses non-blocking sockets and `poll`). The corresponding C behaviour is
    ///   `MEMCACHED_BEHAVIOR_POLL_TIMEOUT`.
    /// - **Per command, in total.** Every command, single-key or multi-key, on a
    ///   ``MemcachedConnection`` or through a ``MemcachedClient``, ends within this time of the
    ///   moment it starts talking to the servers (after its keys and values are checked and
    ///   encoded), plus a few milliseconds, even when a server sends a byte now and then or never
    ///   stops sending. A process-wide watchdog thread shuts the command's sockets down at the
    ///   deadline; the command throws ``MemcachedError/Code/timeout`` with a message saying it
    ///   exceeded its deadline, and its connections are reset, so no half-read reply is ever read
    ///   by a later command. `setMulti` and `deleteMulti` share one deadline across their keys:
    ///   once it has passed, the remaining keys fail at once (not stored, or
    ///   ``MemcachedError/Code/timeout``) without being sent.
    ///
    /// The total limit covers TCP servers. A TCP connection still being established is bounded by
    /// ``connectTimeout`` instead, and a Unix-domain socket only per wait: the watchdog finds a
    /// connection by its local port, which neither has.
    public var timeout: Duration = .seconds(3)

    /// Whether to send requests at once instead of letting the kernel coalesce small writes.
    ///
    /// The default is `true`: with Nagle's algorithm and delayed acknowledgements a 512 KiB
    /// set and get measured about 46 MB/s on loopback, and about 2,700 MB/s without them.
    /// The corresponding C behaviour is `MEMCACHED_BEHAVIOR_TCP_NODELAY`.
    public var tcpNoDelay = true

    /// How long a server that was marked down (see ``serverFailureLimit``), or that refused a
    /// connection, is skipped before it is tried again.
    ///
    /// After it, one call probes the server (a `get` of a key nobody stores, within that call's
    /// ``timeout``) before its keys are sent there again. A server whose failures came back at once
    /// (refused or reset connections) is probed after 100 ms instead, so a restarted server is
    /// used again as soon as it listens. The default is 2 seconds, libmemcached's default
    /// (python-memcached's `dead_retry` is 30 s). The corresponding C behaviour is
    /// `MEMCACHED_BEHAVIOR_RETRY_TIMEOUT`.
    public var retryTimeout: Duration = .seconds(2)

    /// How many calls in a row a server may fail to answer (time out, lose or refuse the
    /// connection) before it is marked down for ``retryTimeout``, for this connection and every
    /// connection cloned from it: calls for its keys then fail at once with
    /// ``MemcachedError/Code/serverMarkedDead`` instead of waiting for a timeout each.
    ///
    /// The default is 5, libmemcached's default. Must be at least 1. Counted by this library for
    /// every kind of failure (libmemcached counts failed connects only, per connection); it is
    /// also passed on as `MEMCACHED_BEHAVIOR_SERVER_FAILURE_LIMIT`. See "Servers that stop
    /// answering are marked down" in <doc:ErrorHandling>.
    public var serverFailureLimit = 5

    /// Whether the keys of a server marked down (see ``serverFailureLimit``) go to the other
    /// servers until it is back, instead of failing.
    ///
    /// Only the down server's keys move with a consistent distribution; with modula most keys
    /// move. The default is `false`. The corresponding C behaviour is
    /// `MEMCACHED_BEHAVIOR_REMOVE_FAILED_SERVERS`.
    public var removeFailedServers = false

    /// Whether commands whose outcome the caller does not need are sent without waiting for a
    /// reply: `set`, `setMulti`, `delete`, `deleteMulti` and `flush`.
    ///
    /// With it on, those calls return as soon as the request is written, a failed store goes
    /// unnoticed, and `delete` always reports `true`. Commands whose result is the point
    /// (`get`, `add`, `replace`, `append`, `prepend`, `cas`, `increment`, `decrement`, `touch`)
    /// always wait for their reply. Fire-and-forget writes are also batched
    /// (`MEMCACHED_BEHAVIOR_BUFFER_REQUESTS`): `setMulti` and `deleteMulti` send one write per
    /// server and the batch is flushed before they return. The binary protocol ignores this
    /// setting, because its quiet commands still answer errors, which a later command would read.
    /// The default is `false`; with it off, `set`, `setMulti`, `delete` and `deleteMulti` can skip
    /// their replies one call at a time with their `noReply:` parameter (without the batching,
    /// which is set up per connection). The corresponding C behaviour is
    /// `MEMCACHED_BEHAVIOR_NOREPLY`.
    public var noReply = false

    /// The largest encoded (and compressed) value this client sends, in bytes.
    ///
    /// Larger values are refused with ``MemcachedError/Code/valueTooLarge`` before anything is
    /// sent. The default is 1,048,576, python-memcached's `server_max_value_length` and
    /// memcached's default item size. memcached counts the key and about 50 bytes of item
    /// header toward its own limit, so a value just under 1 MiB can still be refused by the
    /// server with ``MemcachedError/Code/itemTooBig``.
    public var maximumValueLength = 1_048_576

    /// The longest value this client accepts from a server, in bytes, before and after
    /// decompression: the cap on what one reply can make the client allocate.
    ///
    /// It is applied before allocation: a server that claims a longer value (honestly, or with a
    /// forged length such as `VALUE k 0 4294967295`) makes the read fail without the memory being
    /// reserved, and the connection is reset. A compressed value that would inflate past it is
    /// refused while inflating, and a write refuses to
    /// compress a value longer than this, which no read could return. The default, 64 MiB, is
    /// far above memcached's default item size (1 MiB); raise it if your servers run with
    /// `-I` above `64m`. Failures throw ``MemcachedError/Code/memoryAllocationFailure`` or, after
    /// decompression, ``MemcachedError/Code/decompressionFailed``.
    public var maximumReceivedValueLength = 64 << 20

    /// Values whose encoded form is longer than this many bytes are zlib-compressed (flag 8),
    /// as python-memcached's `min_compress_len`; `nil` turns compression off.
    ///
    /// The compressed form is kept only when it is smaller. Integers are never compressed, so
    /// that `increment` keeps working. Compressed values are always decompressed on reads,
    /// whatever this setting. The default is `nil`.
    ///
    /// Each write can choose otherwise with its `compression:` parameter (``MemcachedCompression``).
    /// A compressed value cannot be extended: `append` and `prepend` throw
    /// ``MemcachedError/Code/compressedValue`` for one.
    public var compressionThreshold: Int? = nil

    /// The coder for `Codable` values that use ``MemcachedValue``'s default coding, stored with
    /// ``MemcachedFlags/serialized`` (python-memcached's pickle flag).
    ///
    /// The default is ``JSONObjectCoder``, which a python-memcached client configured with a JSON
    /// pickler and unpickler reads and writes.
    public var objectCoder: any MemcachedObjectCoder = JSONObjectCoder()

    /// Which Python client's flags values are written with, so that it reads them as the Python
    /// types they stand for: ``MemcachedFlagProfile/pythonMemcached`` (the default),
    /// ``MemcachedFlagProfile/pylibmc`` or ``MemcachedFlagProfile/pymemcache``.
    ///
    /// Reads accept what any of the three writes, whatever the profile. See
    /// ``MemcachedFlagProfile`` for the flags of each kind of value.
    public var flagProfile: MemcachedFlagProfile = .pythonMemcached

    /// The function that hashes keys to pick a server.
    ///
    /// The default is ``MemcachedHash/default``, libmemcached's one-at-a-time hash. A built-in hash
    /// is set with `MEMCACHED_BEHAVIOR_HASH`; a custom one (including ``MemcachedHash/crc32`` and
    /// ``MemcachedHash/adler32``) is installed with `memcached_set_hashkit`.
    public var hash: MemcachedHash = .default

    /// How key hashes are spread over the servers.
    ///
    /// The default is ``MemcachedDistribution/modula``. The consistent distributions build their
    /// continuum in this library, for any number of servers; see ``MemcachedDistribution``.
    public var distribution: MemcachedDistribution = .modula

    /// SASL credentials for servers started with `-S`; `nil` for none.
    ///
    /// SASL needs the binary protocol: creating a connection with credentials and
    /// ``WireProtocol/ascii`` throws ``MemcachedError/Code/invalidConfiguration``. Wrong credentials
    /// make the first command fail with ``MemcachedError/Code/authFailure``. The default is `nil`.
    /// The corresponding C function is `memcached_set_sasl_auth_data`.
    public var credentials: MemcachedCredentials? = nil

    /// The logger for command tracing, python-memcached's `debug=1`.
    ///
    /// Commands are logged at `.trace`, failures at `.debug`, with the command name, key count,
    /// byte counts, server and outcome. Keys and values are never logged. The default discards
    /// everything.
    public var logger: Logger = Logger(label: "swift-libmemcached", factory: { _ in SwiftLogNoOpLogHandler() })

    /// Where commands are counted and timed, with swift-metrics; see ``MemcachedMetrics`` for the
    /// metrics and their dimensions. The default uses the bootstrapped backend, if any.
    public var metrics = MemcachedMetrics()

    /// How a ``MemcachedClient`` traces its commands, with swift-distributed-tracing; see
    /// ``MemcachedTracing`` for the spans. The default uses the bootstrapped tracer, if any.
    public var tracing = MemcachedTracing()

    /// Creates a configuration for servers.
    ///
    /// - Parameter servers: The servers, in order.
    public init(servers: [MemcachedServer]) {
        self.servers = servers
    }

    /// Creates a configuration for servers written as strings, such as `"127.0.0.1:11211"`.
    ///
    /// - Parameter servers: Server strings in any form ``MemcachedServer/init(parsing:)`` accepts.
    /// - Throws: ``MemcachedError`` with code ``MemcachedError/Code/invalidServerSpecification``
    ///   for a string that cannot be parsed.
    public init(servers: [String]) throws {
        self.servers = try servers.map(MemcachedServer.init(parsing:))
    }
}

/// A user name and password for SASL authentication (mechanism PLAIN, as memcached offers it).
///
/// The password never appears in `description` or in logs.
public struct MemcachedCredentials: Sendable, Hashable, CustomStringConvertible {
    /// The SASL user name.
    public var username: String
    /// The SASL password.
    public var password: String

    /// Creates credentials.
    ///
    /// - Parameters:
    ///   - username: The SASL user name.
    ///   - password: The SASL password.
    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }

    /// The user name with the password redacted.
    public var description: String {
        "MemcachedCredentials(username: \(username), password: <redacted>)"
    }
}
