public import Hummingbird
public import Memcached
import ServiceLifecycle

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Hummingbird's key-value store (`PersistDriver`) on memcached, through a ``MemcachedClient``:
/// sessions (hummingbird-auth's `SessionStorage`) and anything else that takes a `PersistDriver`
/// keep their data in the cache the rest of the fleet shares.
///
/// ```swift
/// let memcached = try MemcachedClient(servers: ["127.0.0.1:11211"])
/// let persist = MemcachedPersistDriver(client: memcached, keyPrefix: "persist:")
/// let app = Application(router: router, services: [memcached, persist])
/// ```
///
/// Each value is stored as JSON together with the time it expires, so that the driver keeps the
/// whole `PersistDriver` contract, which memcached alone cannot: ``set(key:value:expires:)`` with
/// `nil` keeps an existing value's expiration (memcached's `set` would make it permanent; the
/// driver reads the old one and replaces it with `cas`), and ``getWithTTL(key:as:)`` returns the
/// time left (memcached's text protocol never reports it).
///
/// What memcached cannot offer:
/// - **Durability.** memcached may evict any value when it needs memory, and forgets everything
///   when it restarts: a session then ends early. Size servers for the working set.
/// - **Sub-second expiry.** memcached counts whole seconds, so expirations are rounded up; zero
///   or a negative duration stores nothing (the value is already expired).
/// - **Any key.** A key, with the prefix, must be a valid memcached key: 1 to 250 bytes of UTF-8
///   without spaces or control characters. Others throw ``MemcachedError``
///   (``MemcachedError/Code/invalidKeyCharacters``, ``MemcachedError/Code/keyTooLong``,
///   ``MemcachedError/Code/emptyKey``) before anything is sent. Session IDs qualify.
/// - **Large values.** A value over the servers' item size limit (1 MiB by default) throws
///   ``MemcachedError/Code/valueTooLarge``.
///
/// Errors of memcached itself (a server down, a timeout) are thrown as ``MemcachedError``.
/// `get` throws `PersistError.invalidConversion` for a value that is not of the type asked for,
/// and `create` throws `PersistError.duplicate` when the key holds a value.
public struct MemcachedPersistDriver: PersistDriver {
    /// The client the values go through; run it as a service of the application too.
    public let client: MemcachedClient

    /// A prefix for every key on the servers, to keep the driver's keys apart from others.
    public let keyPrefix: String

    /// How often ``set(key:value:expires:)`` with `nil` retries when another writer changed the
    /// value between its read and its compare-and-swap.
    static let conservingAttempts = 8

    /// Creates a driver.
    ///
    /// - Parameters:
    ///   - client: The memcached client. The driver does not close it.
    ///   - keyPrefix: A prefix for every key on the servers. The default is none.
    public init(client: MemcachedClient, keyPrefix: String = "") {
        self.client = client
        self.keyPrefix = keyPrefix
    }

    /// Waits for the application's graceful shutdown: the driver holds nothing of its own to run
    /// or release (the client is a service of its own).
    public func run() async throws {
        try? await gracefulShutdown()
    }

    /// Stores a value for a key that holds none, with memcached's `add`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The value, stored as JSON.
    ///   - expires: How long the value lives; `nil` for as long as memcached keeps it.
    /// - Throws: `PersistError.duplicate` when the key holds a value, or ``MemcachedError``.
    public func create<Object: Codable & Sendable>(key: String, value: Object, expires: Duration?) async throws {
        let stored = StoredValue(value, expires: expires)
        guard try await client.add(keyPrefix + key, stored, expiration: stored.expiration) else {
            throw PersistError.duplicate
        }
    }

    /// Stores a value whatever the key holds.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The value, stored as JSON.
    ///   - expires: How long the value lives. `nil` keeps the expiration of the value it replaces
    ///     (none for a new value).
    /// - Throws: ``MemcachedError``; with `expires` `nil`, ``MemcachedError/Code/dataExists`` when
    ///   other writers kept changing the value through every compare-and-swap attempt.
    public func set<Object: Codable & Sendable>(key: String, value: Object, expires: Duration?) async throws {
        let key = keyPrefix + key
        if let expires {
            let stored = StoredValue(value, expires: expires)
            try await client.set(key, stored, expiration: stored.expiration)
            return
        }
        for _ in 0..<Self.conservingAttempts {
            guard let (old, token) = try await client.gets(key, as: StoredExpiry.self) else {
                if try await client.add(key, StoredValue(value, expiresAt: nil), expiration: .never) {
                    return
                }
                continue  // Another writer created it meanwhile: keep its expiration.
            }
            let stored = StoredValue(value, expiresAt: old.expiresAt)
            if try await client.cas(key, stored, token: token, expiration: stored.expiration) {
                return
            }
        }
        throw MemcachedError(
            code: .dataExists,
            message: "the value changed under every one of \(Self.conservingAttempts) attempts to replace it",
            key: key
        )
    }

    /// Reads a key's value.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - type: The type the value was stored as.
    /// - Returns: The value, or `nil` when the key holds none (or it expired).
    /// - Throws: `PersistError.invalidConversion` when the stored value is not a `type`, or
    ///   ``MemcachedError``.
    public func get<Object: Codable & Sendable>(key: String, as type: Object.Type) async throws -> Object? {
        try await getWithTTL(key: key, as: type)?.object
    }

    /// Reads a key's value and the time it has left.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - type: The type the value was stored as.
    /// - Returns: The value and its time to live (`nil` when it does not expire), or `nil` when
    ///   the key holds none.
    /// - Throws: As ``get(key:as:)`` does.
    public func getWithTTL<Object: Codable & Sendable>(
        key: String,
        as type: Object.Type
    ) async throws -> (object: Object, ttl: Duration?)? {
        let stored: StoredValue<Object>?
        do {
            stored = try await client.get(keyPrefix + key, as: StoredValue<Object>.self)
        } catch let error as MemcachedError where error.code == .undecodableValue {
            throw PersistError.invalidConversion
        }
        guard let stored else { return nil }
        guard let expiresAt = stored.expiresAt else { return (stored.value, nil) }
        let left = expiresAt - Date().timeIntervalSince1970
        // memcached expires whole seconds late; the value's own time is the one promised.
        guard left > 0 else { return nil }
        return (stored.value, .milliseconds(Int64((left * 1000).rounded(.up))))
    }

    /// Removes a key's value; a key without one is not an error.
    ///
    /// - Parameter key: The key.
    /// - Throws: ``MemcachedError``.
    public func remove(key: String) async throws {
        try await client.delete(keyPrefix + key)
    }
}

/// A value as the driver stores it: JSON of the value and the Unix time it expires.
struct StoredValue<Object: Codable & Sendable>: Codable, Sendable, MemcachedValue {
    var value: Object
    /// Seconds since 1970 at which the value expires; `nil` when it does not.
    var expiresAt: Double?

    init(_ value: Object, expiresAt: Double?) {
        self.value = value
        self.expiresAt = expiresAt
    }

    init(_ value: Object, expires: Duration?) {
        let seconds = expires.map { Double($0.components.seconds) + Double($0.components.attoseconds) * 1e-18 }
        self.init(value, expiresAt: seconds.map { Date().timeIntervalSince1970 + $0 })
    }

    /// memcached's expiration for the value: at its time, rounded up to the second.
    var expiration: MemcachedExpiration {
        expiresAt.map { .at(Date(timeIntervalSince1970: $0)) } ?? .never
    }
}

/// The expiry of a stored value, read without decoding the value itself.
struct StoredExpiry: Codable, Sendable, MemcachedValue {
    var expiresAt: Double?
}
