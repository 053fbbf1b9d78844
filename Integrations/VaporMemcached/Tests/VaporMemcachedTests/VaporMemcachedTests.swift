import Foundation
import Memcached
import MemcachedTestSupport
import Testing
import Vapor
import VaporMemcached
import VaporTesting

/// Vapor's cache and sessions on memcached, through VaporTesting against a real memcached server:
/// what Vapor's own memory drivers do, on the shared cache.
@Suite("Vapor cache and sessions on memcached", .timeLimit(.minutes(5)))
struct VaporMemcachedTests {
    struct Film: Content, Equatable {
        var title: String
        var year: Int
    }

    /// Runs `body` with an application whose cache and sessions are on a fresh memcached server.
    func withMemcachedApp(
        routes: (Application) throws -> Void,
        _ body: (Application, MemcachedClient) async throws -> Void
    ) async throws {
        try await withMemcached { cluster in
            let client = try MemcachedClient(servers: cluster.addresses)
            try await withApp { app in
                app.caches.use(.memcached(client, keyPrefix: "cache:", closesOnShutdown: true))
                app.sessions.use(.memcached(client))
                app.middleware.use(app.sessions.middleware)
                try routes(app)
                try await body(app, client)
            }
            // The application closed the client when it shut down.
            await #expect(throws: MemcachedError.self) { try await client.get("k", as: String.self) }
        }
    }

    @Test("the cache: get and set through req.cache, JSON on the server, nil deletes, expiry in seconds")
    func cache() async throws {
        try await withMemcachedApp { app in
            app.get("films", ":id") { req async throws -> Film in
                guard let film = try await req.cache.get("film:\(req.parameters.get("id")!)", as: Film.self) else {
                    throw Abort(.notFound)
                }
                return film
            }
            app.put("films", ":id") { req async throws -> HTTPStatus in
                try await req.cache.set("film:\(req.parameters.get("id")!)", to: try req.content.decode(Film.self))
                return .ok
            }
            app.delete("films", ":id") { req async throws -> HTTPStatus in
                try await req.cache.delete("film:\(req.parameters.get("id")!)")
                return .noContent
            }
        } _: { app, client in
            let film = Film(title: "Academy Dinosaur", year: 2006)
            try await app.testing().test(.GET, "films/1") { #expect($0.status == .notFound) }
            try await app.testing().test(.PUT, "films/1", beforeRequest: { try $0.content.encode(film) }) {
                #expect($0.status == .ok)
            }
            try await app.testing().test(.GET, "films/1") { response in
                #expect(response.status == .ok)
                let decoded = try response.content.decode(Film.self)
                #expect(decoded == film)
            }
            // Stored as the library stores any Codable value: JSON, python-memcached's serialized flag.
            let stored = try await client.get("cache:film:1", as: [String: AnyJSON].self)
            #expect(stored?["title"] == .string("Academy Dinosaur"))
            try await app.testing().test(.DELETE, "films/1") { #expect($0.status == .noContent) }
            try await app.testing().test(.GET, "films/1") { #expect($0.status == .notFound) }

            // The application's cache, with expiry: zero seconds stores it already expired.
            try await app.cache.set("short", to: "v", expiresIn: .seconds(0))
            try await app.cache.set("long", to: "v", expiresIn: .minutes(5))
            #expect(try await app.cache.get("short", as: String.self) == nil)
            #expect(try await app.cache.get("long", as: String.self) == "v")
            try await app.cache.set("long", to: String?.none)
            #expect(try await app.cache.get("long", as: String.self) == nil)
            // Expirations Vapor itself cannot compute without overflowing do not expire.
            try await app.cache.set("forever", to: "v", expiresIn: .days(Int.max))
            try await app.cache.set("gone", to: "v", expiresIn: .days(Int.min))
            #expect(try await app.cache.get("forever", as: String.self) == "v")
            #expect(try await app.cache.get("gone", as: String.self) == nil)
        }
    }

    @Test("the cache's errors: a value of another type, a key memcached cannot take, a server that is down")
    func cacheErrors() async throws {
        try await withMemcachedApp { _ in
        } _: { app, _ in
            try await app.cache.set("film", to: Film(title: "Academy Dinosaur", year: 2006))
            let wrongType = await #expect(throws: MemcachedError.self) { try await app.cache.get("film", as: Int.self) }
            #expect(wrongType?.code == .undecodableValue)
            let badKey = await #expect(throws: MemcachedError.self) { try await app.cache.set("has space", to: 1) }
            #expect(badKey?.code == .invalidKeyCharacters)
        }
        let down = try RefusingLoopbackPort()
        defer { down.release() }
        let client = try MemcachedClient(servers: ["127.0.0.1:\(down.port)"])
        try await withApp { app in
            app.caches.use(.memcached(client))
            await #expect(throws: MemcachedError.self) { try await app.cache.get("k", as: String.self) }
        }
    }

    @Test("sessions: created with a cookie, read back, updated, deleted; a forged cookie names no session")
    func sessions() async throws {
        try await withMemcachedApp { app in
            app.get("visit") { req -> String in
                let count = Int(req.session.data["visits"] ?? "0")! + 1
                req.session.data["visits"] = "\(count)"
                return "\(count)"
            }
            app.get("logout") { req -> HTTPStatus in
                req.session.destroy()
                return .ok
            }
        } _: { app, client in
            var cookie = ""
            try await app.testing().test(.GET, "visit") { response in
                #expect(response.body.string == "1")
                cookie = try #require(response.headers.setCookie?["vapor-session"]?.string)
            }
            #expect(try await client.get("vapor-session:\(cookie)", as: [String: AnyJSON].self) != nil)
            let headers: HTTPHeaders = ["Cookie": "vapor-session=\(cookie)"]
            for expected in ["2", "3"] {
                try await app.testing().test(.GET, "visit", headers: headers) { #expect($0.body.string == expected) }
            }
            try await app.testing().test(.GET, "logout", headers: headers) { #expect($0.status == .ok) }
            #expect(try await client.get("vapor-session:\(cookie)", as: [String: AnyJSON].self) == nil)
            // A forged cookie too long for a memcached key: a new session, not an error, and a
            // logout with it clears it, without an error.
            let forged: HTTPHeaders = ["Cookie": "vapor-session=\(String(repeating: "x", count: 300))"]
            try await app.testing().test(.GET, "visit", headers: forged) {
                #expect($0.status == .ok && $0.body.string == "1")
            }
            try await app.testing().test(.GET, "logout", headers: forged) { #expect($0.status == .ok) }
        }
    }
}

/// Any JSON value, to read what the drivers stored without their types.
enum AnyJSON: Codable, Sendable, Equatable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case object([String: AnyJSON])
    case array([AnyJSON])
    case null

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([AnyJSON].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: AnyJSON].self))
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .null: try container.encodeNil()
        }
    }
}
