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
/// `PersistDriver` contract where memcached alone cannot: ``set(key:value:expires:)`` with `nil`
/// keeps an existing value's expiration (memcached's `set` would make it permanent; the driver
/// reads the old one and replaces the value with `cas`, or, when another writer changed it in
/// between, with `set` and the same expiration), and ``getWithTTL(key:as:)`` returns the time
/// left (memcached's text protocol never reports it). memcached keeps an expiring value
/// ``expiredValueGrace`` past its time, hidden from reads, so that a `set` without an expiration
/// that comes just after it still finds, and keeps, the time it ended: a session cannot come back
/// without an end. Expirations of up to 30 days go to memcached as durations, so that this host's
/// clock does not matter (memcached reads longer ones as Unix times).
///
/// What memcached cannot offer:
/// - **Durability.** memcached may evict any value when it needs memory, and forgets everything
///   when it restarts: a session then ends early. Size servers for the working set.
/// - **Sub-second expiry.** memcached counts whole seconds, so a value may be kept up to a second
///   longer than asked, though reads never return it after its time. Zero or a negative duration
///   stores nothing (the value is already expired).
/// - **Any key.** A key, with the prefix, must be a valid memcached key: 1 to 250 bytes of UTF-8
///   without spaces or control characters (session IDs qualify). Storing under another key
///   throws ``MemcachedError`` (``MemcachedError/Code/invalidKeyCharacters``,
///   ``MemcachedError/Code/keyTooLong``, ``MemcachedError/Code/emptyKey``) before anything is
///   sent; reading or removing one finds nothing, as for any key that holds nothing.
/// - **Large values.** A value over the servers' item size limit (1 MiB by default) throws
///   ``MemcachedError/Code/valueTooLarge``.
/// - **Fire-and-forget writes.** Use a client without ``MemcachedConfiguration/noReply``: the
///   driver reports a write done only once memcached answered.
///
/// Errors of memcached itself (a server down, a timeout) are thrown as ``MemcachedError``.
/// `get` throws `PersistError.invalidConversion` for a value that is not of the type asked for,
/// and `create` throws `PersistError.duplicate` when the key holds a value that has not expired.
public struct MemcachedPersistDriver: PersistDriver {
    /// The client the values go through; run it as a service of the application too.
    public let client: MemcachedClient

    /// A prefix for every key on the servers, to keep the driver's keys apart from others.
    public let keyPrefix: String

    /// How long memcached keeps an expiring value past its time, hidden from reads: one minute.
    public static let expiredValueGrace = Duration.seconds(60)

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

    /// Stores a value for a key that holds none (or only an expired one), with memcached's `add`.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The value, stored as JSON.
    ///   - expires: How long the value lives; `nil` for as long as memcached keeps it.
    /// - Throws: `PersistError.duplicate` when the key holds a value, or ``MemcachedError``.
    public func create<Object: Codable & Sendable>(key: String, value: Object, expires: Duration?) async throws {
        let key = keyPrefix + key
        let stored = StoredValue(value, expires: expires)
        if try await client.add(key, stored, expiration: stored.expiration) {
            return
        }
        // The key holds a value: a duplicate, unless it is one kept past its time.
        guard let (old, token) = try await storedExpiry(key), old.hasExpired,
            try await client.cas(key, stored, token: token, expiration: stored.expiration)
        else {
            throw PersistError.duplicate
        }
    }

    /// Stores a value whatever the key holds.
    ///
    /// - Parameters:
    ///   - key: The key.
    ///   - value: The value, stored as JSON.
    ///   - expires: How long the value lives. `nil` keeps the expiration of the value it replaces
    ///     (none for a new value, or over a value that is not the driver's).
    /// - Throws: ``MemcachedError``.
    public func set<Object: Codable & Sendable>(key: String, value: Object, expires: Duration?) async throws {
        let key = keyPrefix + key
        if let expires {
            try await store(key, StoredValue(value, expires: expires))
            return
        }
        // Twice at most: a value created by another writer between the read and the `add` is
        // read again, for its expiration.
        for _ in 0..<2 {
            guard let (old, token) = try await storedExpiry(key) else {
                // Nothing there (or not the driver's): a new value, which does not expire.
                let stored = StoredValue(value, expiresAt: nil)
                if try await client.add(key, stored, expiration: stored.expiration) {
                    return
                }
                continue
            }
            let stored = StoredValue(value, expiresAt: old.expiresAt)
            if try await client.cas(key, stored, token: token, expiration: stored.expiration) {
                return
            }
            // Another writer changed the value since it was read; every writer without an
            // expiration keeps the same one, so the last write wins with it, as it would have
            // without the race.
            try await store(key, stored)
            return
        }
        try await store(key, StoredValue(value, expiresAt: nil))
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
        } catch let error as MemcachedError where error.code.isInvalidKey {
            return nil
        }
        guard let stored else { return nil }
        guard let left = stored.secondsLeft else { return (stored.value, nil) }
        // memcached keeps the value a while past its time (``expiredValueGrace``); the value's own
        // time is the one promised.
        guard left > 0 else { return nil }
        return (stored.value, .milliseconds(Int64((left * 1000).rounded(.up))))
    }

    /// Removes a key's value; a key without one is not an error.
    ///
    /// - Parameter key: The key.
    /// - Throws: ``MemcachedError``.
    public func remove(key: String) async throws {
        do {
            try await client.delete(keyPrefix + key)
        } catch let error as MemcachedError where error.code.isInvalidKey {
            return
        }
    }

    /// Stores `stored` with memcached's `set`; a value the server declined is an error.
    private func store<Object>(_ key: String, _ stored: StoredValue<Object>) async throws {
        guard try await client.set(key, stored, expiration: stored.expiration) else {
            throw MemcachedError(code: .notStored, message: "the server did not store the value", key: key)
        }
    }

    /// The expiry of the driver's value under `key` and its CAS token; `nil` when the key holds
    /// nothing, or a value that is not the driver's.
    private func storedExpiry(_ key: String) async throws -> (StoredExpiry, MemcachedCASToken)? {
        do {
            return try await client.gets(key, as: StoredExpiry.self)
        } catch let error as MemcachedError where error.code == .undecodableValue {
            return nil
        }
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

    /// Seconds from now to the value's time; `nil` when it does not expire.
    var secondsLeft: Double? {
        // Clamped: a value from another writer may hold any number.
        expiresAt.map { min($0 - Date().timeIntervalSince1970, 1e12) }
    }

    /// memcached's expiration for the value: the time it has left plus the grace, as a
    /// duration, so that another host's clock does not matter; a value already expired is
    /// stored expired, and one beyond memcached's 32-bit times does not expire there.
    var expiration: MemcachedExpiration {
        StoredExpiry(expiresAt: expiresAt).expiration
    }
}

/// The expiry of a stored value, read without decoding the value itself.
struct StoredExpiry: Codable, Sendable, MemcachedValue {
    var expiresAt: Double?

    var hasExpired: Bool {
        expiresAt.map { $0 <= Date().timeIntervalSince1970 } ?? false
    }

    var expiration: MemcachedExpiration {
        guard let expiresAt else { return .never }
        let left = expiresAt - Date().timeIntervalSince1970
        guard left > 0 else { return .seconds(0) }
        // Ten years: far past any session, and well inside memcached's 32-bit clock.
        guard left < 10 * 365 * 86_400 else { return .never }
        let grace = Double(MemcachedPersistDriver.expiredValueGrace.components.seconds)
        return .seconds(Int((left + grace).rounded(.up)))
    }
}
