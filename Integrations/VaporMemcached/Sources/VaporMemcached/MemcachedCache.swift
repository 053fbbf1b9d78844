public import Memcached
public import NIOCore
public import Vapor

/// Vapor's `Cache` on memcached, through a ``MemcachedClient``: `req.cache` and `app.cache` read
/// and write the cache the rest of the fleet shares.
///
/// ```swift
/// let memcached = try MemcachedClient(servers: ["127.0.0.1:11211"])
/// app.caches.use(.memcached(memcached))
///
/// app.get("films") { req async throws -> [Film] in
///     if let films = try await req.cache.get("top5films", as: [Film].self) { return films }
///     let films = try await loadTopFilms(req.db)
///     try await req.cache.set("top5films", to: films, expiresIn: .seconds(60))
///     return films
/// }
/// ```
///
/// Values are stored as JSON by the client's ``MemcachedConfiguration/objectCoder`` with
/// python-memcached's serialized flag, as the client stores any `Codable` value, so services in
/// other languages read them. Setting `nil` deletes the key. An expiration of zero or less
/// stores the value already expired; `nil`, or ten years or more, stores it without one
/// (memcached may still evict it). A request's cache (`req.cache`) logs through the request's
/// logger. Use a client without ``MemcachedConfiguration/noReply``: a write is reported done
/// once memcached has answered.
///
/// Errors are thrown as ``MemcachedError``: a key memcached cannot take (empty, over 250 bytes, or
/// with spaces or control characters), a value too large for
/// the servers, a server down or a timeout, and a stored value that does not decode as the type
/// asked for (``MemcachedError/Code/undecodableValue``).
public struct MemcachedCache: Cache, Sendable {
    /// The client the values go through.
    public let client: MemcachedClient

    /// A prefix for every key on the servers.
    public let keyPrefix: String

    /// The event loop the cache's futures complete on.
    public let eventLoop: any EventLoop

    /// The logger of the request the cache is for, if any.
    let logger: Logger?

    /// Creates a cache.
    ///
    /// - Parameters:
    ///   - client: The memcached client.
    ///   - keyPrefix: A prefix for every key on the servers. The default is none.
    ///   - eventLoop: The event loop the cache's futures complete on.
    public init(client: MemcachedClient, keyPrefix: String = "", on eventLoop: any EventLoop) {
        self.init(client: client, keyPrefix: keyPrefix, eventLoop: eventLoop, logger: nil)
    }

    init(client: MemcachedClient, keyPrefix: String, eventLoop: any EventLoop, logger: Logger?) {
        self.client = client
        self.keyPrefix = keyPrefix
        self.eventLoop = eventLoop
        self.logger = logger
    }

    /// Reads a key's value.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - type: The type the value was stored as.
    /// - Returns: A future of the value, or of `nil` when the key holds none.
    public func get<T>(_ key: String, as type: T.Type) -> EventLoopFuture<T?> where T: Decodable & Sendable {
        eventLoop.makeFutureWithTask { try await get(key, as: type) }
    }

    /// Stores a value, or deletes the key when `value` is `nil`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The value, stored as JSON; `nil` deletes the key.
    /// - Returns: A future that completes once the server has the value.
    public func set<T>(_ key: String, to value: T?) -> EventLoopFuture<Void> where T: Encodable & Sendable {
        set(key, to: value, expiresIn: nil)
    }

    /// Stores a value that expires, or deletes the key when `value` is `nil`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The value, stored as JSON; `nil` deletes the key.
    ///   - expirationTime: How long the value lives; `nil` for no expiration.
    /// - Returns: A future that completes once the server has the value.
    public func set<T>(
        _ key: String,
        to value: T?,
        expiresIn expirationTime: CacheExpirationTime?
    ) -> EventLoopFuture<Void> where T: Encodable & Sendable {
        eventLoop.makeFutureWithTask { try await set(key, to: value, expiresIn: expirationTime) }
    }

    /// The cache for a request: its futures complete on the request's event loop, and what it
    /// logs goes to the request's logger.
    ///
    /// - Parameter request: The request.
    /// - Returns: A cache on the same client.
    public func `for`(_ request: Request) -> MemcachedCache {
        MemcachedCache(client: client, keyPrefix: keyPrefix, eventLoop: request.eventLoop, logger: request.logger)
    }

    // The async forms do the work, without a future in between.

    /// Reads a key's value.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - type: The type the value was stored as.
    /// - Returns: The value, or `nil` when the key holds none.
    /// - Throws: ``MemcachedError``.
    public func get<T>(_ key: String, as type: T.Type) async throws -> T? where T: Decodable & Sendable {
        guard let stored = try await client.get(keyPrefix + key, as: EncodedObject.self, logger: logger) else {
            return nil
        }
        do {
            return try stored.bytes.withUnsafeBytes { try client.configuration.objectCoder.decode(type, from: $0) }
        } catch {
            throw MemcachedError(code: .undecodableValue, message: "cannot decode the value: \(error)", key: key)
        }
    }

    /// Stores a value that expires, or deletes the key when `value` is `nil`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The value, stored as JSON; `nil` deletes the key.
    ///   - expirationTime: How long the value lives; `nil` for no expiration.
    /// - Throws: ``MemcachedError``.
    public func set<T>(
        _ key: String,
        to value: T?,
        expiresIn expirationTime: CacheExpirationTime?
    ) async throws where T: Encodable & Sendable {
        guard let value else {
            try await client.delete(keyPrefix + key, logger: logger)
            return
        }
        let bytes: [UInt8]
        do {
            bytes = try client.configuration.objectCoder.encode(value)
        } catch {
            throw MemcachedError(code: .unencodableValue, message: "cannot encode the value: \(error)", key: key)
        }
        let expiration = expirationTime.map(Self.expiration) ?? .never
        guard try await client.set(keyPrefix + key, EncodedObject(bytes: bytes), expiration: expiration, logger: logger)
        else {
            throw MemcachedError(code: .notStored, message: "the server did not store the value", key: key)
        }
    }

    /// memcached's expiration for Vapor's: the same seconds, without the overflow of
    /// `CacheExpirationTime.seconds` for huge counts; ten years or more do not expire (memcached
    /// keeps 32-bit times).
    static func expiration(_ time: CacheExpirationTime) -> MemcachedExpiration {
        let (count, unit): (Int, Int) =
            switch time {
            case .seconds(let count): (count, 1)
            case .minutes(let count): (count, 60)
            case .hours(let count): (count, 3_600)
            case .days(let count): (count, 86_400)
            }
        let (seconds, overflow) = count.multipliedReportingOverflow(by: unit)
        guard !overflow else { return count < 0 ? .seconds(0) : .never }
        return seconds >= 10 * 365 * 86_400 ? .never : .seconds(seconds)
    }
}

/// A value the object coder encoded, stored as the client stores any `Codable` value.
struct EncodedObject: MemcachedValue, Sendable {
    var bytes: [UInt8]

    init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    func memcachedPayload(context: MemcachedCodingContext) throws -> MemcachedPayload {
        MemcachedPayload(bytes: bytes, flags: .serialized)
    }

    init(memcachedBytes bytes: UnsafeRawBufferPointer, flags: MemcachedFlags, context: MemcachedCodingContext) throws {
        guard flags.isDisjoint(with: [.integer, .long]) else {
            throw MemcachedError(code: .undecodableValue, message: "the stored value is a number, not an object")
        }
        self.bytes = Array(bytes)
    }
}

extension Application.Caches.Provider {
    /// Vapor's cache on memcached (``MemcachedCache``).
    ///
    /// - Parameters:
    ///   - client: The memcached client.
    ///   - keyPrefix: A prefix for every key on the servers. The default is none.
    ///   - closesOnShutdown: Whether the application closes the client when it shuts down. The
    ///     default is `false`: Vapor runs its shutdown handlers before its HTTP server has
    ///     stopped, so requests still in flight would find the client closed. Close it yourself
    ///     after `app.asyncShutdown()`, or pass `true` when nothing can still use it by then.
    /// - Returns: The provider, for `app.caches.use(_:)`.
    public static func memcached(
        _ client: MemcachedClient,
        keyPrefix: String = "",
        closesOnShutdown: Bool = false
    ) -> Self {
        .init { application in
            if closesOnShutdown {
                application.lifecycle.use(MemcachedClientCloser(client: client))
            }
            application.caches.use { application in
                MemcachedCache(client: client, keyPrefix: keyPrefix, on: application.eventLoopGroup.next())
            }
        }
    }
}

/// Closes a client when the application shuts down.
struct MemcachedClientCloser: LifecycleHandler {
    let client: MemcachedClient

    func shutdownAsync(_ application: Application) async {
        await client.close()
    }
}
