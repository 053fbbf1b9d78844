public import Memcached
public import Vapor

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Vapor's sessions on memcached, through a ``MemcachedClient``: every server of a service reads
/// the same sessions.
///
/// ```swift
/// app.sessions.use(.memcached(memcached))
/// app.middleware.use(app.sessions.middleware)
/// ```
///
/// A session is stored as JSON under its ID (a random 32-byte value in base64, after an optional
/// prefix) and expires ``lifetime`` after it was last written, as the session cookie does (one
/// week by default). A new session is stored with `add`, so it can never replace another.
/// memcached may evict a session early when it needs memory, and loses all of them when it
/// restarts: the user then starts a new session.
public struct MemcachedSessions: AsyncSessionDriver, Sendable {
    /// The client the sessions go through.
    public let client: MemcachedClient

    /// A prefix for every session's key on the servers.
    public let keyPrefix: String

    /// How long a session lives after it was last written.
    public let lifetime: Duration

    /// Creates a sessions driver.
    ///
    /// - Parameters:
    ///   - client: The memcached client.
    ///   - keyPrefix: A prefix for every session's key. The default is `"vapor-session:"`.
    ///   - lifetime: How long a session lives after it was last written. The default is one
    ///     week, the lifetime of Vapor's default session cookie.
    public init(client: MemcachedClient, keyPrefix: String = "vapor-session:", lifetime: Duration = .seconds(604_800)) {
        self.client = client
        self.keyPrefix = keyPrefix
        self.lifetime = lifetime
    }

    /// Stores a new session under a fresh random ID.
    ///
    /// - Parameters:
    ///   - data: The session's data.
    ///   - request: The request.
    /// - Returns: The new session's ID.
    /// - Throws: ``MemcachedError``.
    public func createSession(_ data: SessionData, for request: Request) async throws -> SessionID {
        // A random 256-bit ID collides with a stored one next to never: a server that declines
        // every `add` (a proxy, a full server) is not waited on for ever.
        for _ in 0..<Self.creationAttempts {
            var generator = SystemRandomNumberGenerator()
            let id = SessionID(
                string: Data((0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
                    .base64EncodedString()
            )
            if try await client.add(
                keyPrefix + id.string,
                StoredSession(data),
                expiration: .after(lifetime),
                logger: request.logger
            ) {
                return id
            }
        }
        throw MemcachedError(
            code: .notStored,
            message: "the server stored none of \(Self.creationAttempts) new session IDs"
        )
    }

    /// How many fresh IDs ``createSession(_:for:)`` tries.
    static let creationAttempts = 4

    /// Reads a session.
    ///
    /// - Parameters:
    ///   - sessionID: The session's ID, from its cookie.
    ///   - request: The request.
    /// - Returns: The session's data, or `nil` when there is no such session (it expired, was
    ///   deleted or evicted, or the ID is not one memcached can hold).
    /// - Throws: ``MemcachedError`` for a server failure.
    public func readSession(_ sessionID: SessionID, for request: Request) async throws -> SessionData? {
        do {
            return try await client.get(keyPrefix + sessionID.string, as: StoredSession.self, logger: request.logger)?
                .data
        } catch let error as MemcachedError where Self.namesNoSession(error) {
            // A cookie is the client's input: one that cannot name a session names none.
            return nil
        }
    }

    /// The errors of an ID that cannot name a session: one memcached cannot take as a key, or a
    /// key whose value is not a session.
    static func namesNoSession(_ error: MemcachedError) -> Bool {
        error.code.isInvalidKey || error.code == .undecodableValue
    }

    /// Writes a session, and starts its lifetime again.
    ///
    /// - Parameters:
    ///   - sessionID: The session's ID.
    ///   - data: The session's data.
    ///   - request: The request.
    /// - Returns: The session's ID, unchanged.
    /// - Throws: ``MemcachedError``.
    public func updateSession(
        _ sessionID: SessionID,
        to data: SessionData,
        for request: Request
    ) async throws -> SessionID {
        try await client.set(
            keyPrefix + sessionID.string,
            StoredSession(data),
            expiration: .after(lifetime),
            logger: request.logger
        )
        return sessionID
    }

    /// Deletes a session.
    ///
    /// - Parameters:
    ///   - sessionID: The session's ID.
    ///   - request: The request.
    /// - Throws: ``MemcachedError``.
    public func deleteSession(_ sessionID: SessionID, for request: Request) async throws {
        do {
            try await client.delete(keyPrefix + sessionID.string, logger: request.logger)
        } catch let error as MemcachedError where Self.namesNoSession(error) {
            // A cookie that cannot name a session has none to delete.
        }
    }
}

/// A session as stored: its data, as JSON.
struct StoredSession: Codable, Sendable, MemcachedValue {
    var data: SessionData

    init(_ data: SessionData) {
        self.data = data
    }
}

extension Application.Sessions.Provider {
    /// Vapor's sessions on memcached (``MemcachedSessions``).
    ///
    /// - Parameters:
    ///   - client: The memcached client.
    ///   - keyPrefix: A prefix for every session's key. The default is `"vapor-session:"`.
    ///   - lifetime: How long a session lives after it was last written. The default is one week.
    /// - Returns: The provider, for `app.sessions.use(_:)`.
    public static func memcached(
        _ client: MemcachedClient,
        keyPrefix: String = "vapor-session:",
        lifetime: Duration = .seconds(604_800)
    ) -> Self {
        .init { application in
            application.sessions.use { _ in MemcachedSessions(client: client, keyPrefix: keyPrefix, lifetime: lifetime)
            }
        }
    }
}
