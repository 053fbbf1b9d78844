import Foundation
import Hummingbird
import HummingbirdAuth
import HummingbirdMemcached
import HummingbirdTesting
import Memcached
import MemcachedTestSupport
import Testing

/// The behaviours Hummingbird's own persist tests expect of a `PersistDriver`, and its sessions,
/// through HummingbirdTesting against a real memcached server.
@Suite("MemcachedPersistDriver", .timeLimit(.minutes(5)))
struct MemcachedPersistDriverTests {
    /// Runs `body` with a driver on a fresh memcached server, and routes in the shape of
    /// Hummingbird's persist tests around it.
    func withPersistApp(
        _ body: @escaping @Sendable (any TestClientProtocol, MemcachedPersistDriver) async throws -> Void
    ) async throws {
        try await withMemcached { cluster in
            let client = try MemcachedClient(servers: cluster.addresses)
            let persist = MemcachedPersistDriver(client: client, keyPrefix: "persist:")
            let router = Router()
            router.put("/persist/:tag") { request, context -> HTTPResponse.Status in
                let buffer = try await request.body.collect(upTo: .max)
                try await persist.set(key: try context.parameters.require("tag"), value: String(buffer: buffer))
                return .ok
            }
            router.put("/persist/:tag/:time") { request, context -> HTTPResponse.Status in
                guard let time = context.parameters.get("time", as: Int.self) else { throw HTTPError(.badRequest) }
                let buffer = try await request.body.collect(upTo: .max)
                let tag = try context.parameters.require("tag")
                try await persist.set(key: tag, value: String(buffer: buffer), expires: .seconds(time))
                return .ok
            }
            router.put("/create/:tag") { request, context -> HTTPResponse.Status in
                let buffer = try await request.body.collect(upTo: .max)
                do {
                    try await persist.create(key: try context.parameters.require("tag"), value: String(buffer: buffer))
                } catch let error as PersistError where error == .duplicate {
                    throw HTTPError(.conflict)
                }
                return .ok
            }
            router.get("/persist/:tag") { _, context -> String? in
                do {
                    return try await persist.get(key: try context.parameters.require("tag"), as: String.self)
                } catch let error as PersistError where error == .invalidConversion {
                    throw HTTPError(.badRequest)
                }
            }
            router.get("/persist/:tag/ttl") { _, context -> String in
                let ttl = try await persist.getWithTTL(key: try context.parameters.require("tag"), as: String.self)?.ttl
                return ttl.map { "\($0.components.seconds)" } ?? "none"
            }
            router.delete("/persist/:tag") { _, context -> HTTPResponse.Status in
                try await persist.remove(key: try context.parameters.require("tag"))
                return .noContent
            }
            let app = Application(router: router)
            try await app.test(.router) { testClient in
                try await body(testClient, persist)
            }
            await client.close()
        }
    }

    func put(_ client: some TestClientProtocol, _ uri: String, _ body: String) async throws -> HTTPResponse.Status {
        try await client.execute(uri: uri, method: .put, body: ByteBuffer(string: body)) { $0.status }
    }

    /// A response's status and body.
    struct Reply: Equatable {
        var status: HTTPResponse.Status
        var body: String

        init(_ status: HTTPResponse.Status, _ body: String = "") {
            self.status = status
            self.body = body
        }
    }

    func get(_ client: some TestClientProtocol, _ uri: String) async throws -> Reply {
        try await client.execute(uri: uri, method: .get) { Reply($0.status, String(buffer: $0.body)) }
    }

    @Test("set, get, set again, remove")
    func setGetRemove() async throws {
        try await withPersistApp { client, _ in
            let tag = UUID().uuidString
            #expect(try await put(client, "/persist/\(tag)", "Persist") == .ok)
            #expect(try await get(client, "/persist/\(tag)") == Reply(.ok, "Persist"))
            #expect(try await put(client, "/persist/\(tag)", "again") == .ok)
            #expect(try await get(client, "/persist/\(tag)") == Reply(.ok, "again"))
            try await client.execute(uri: "/persist/\(tag)", method: .delete) { #expect($0.status == .noContent) }
            #expect(try await get(client, "/persist/\(tag)").status == .noContent)
            // Removing what is not there is not an error.
            try await client.execute(uri: "/persist/\(tag)", method: .delete) { #expect($0.status == .noContent) }
        }
    }

    @Test("create stores a new key and refuses one that holds a value (PersistError.duplicate)")
    func createOnce() async throws {
        try await withPersistApp { client, _ in
            let tag = UUID().uuidString
            let first = try await put(client, "/create/\(tag)", "first")
            let second = try await put(client, "/create/\(tag)", "second")
            #expect(first == .ok)
            #expect(second == .conflict)
            #expect(try await get(client, "/persist/\(tag)") == Reply(.ok, "first"))
        }
    }

    @Test("expiry: zero stores nothing, ten seconds lives, a lapsed key can be set again; TTL is read back")
    func expiry() async throws {
        try await withPersistApp { client, _ in
            let lapsed = UUID().uuidString
            let living = UUID().uuidString
            #expect(try await put(client, "/persist/\(lapsed)/0", "gone") == .ok)
            #expect(try await put(client, "/persist/\(living)/10", "here") == .ok)
            #expect(try await get(client, "/persist/\(lapsed)").status == .noContent)
            #expect(try await get(client, "/persist/\(living)") == Reply(.ok, "here"))
            let ttl = try #require(Int(try await get(client, "/persist/\(living)/ttl").body))
            #expect(ttl <= 10 && ttl > 1)
            #expect(try await put(client, "/persist/\(lapsed)/10", "back") == .ok)
            #expect(try await get(client, "/persist/\(lapsed)") == Reply(.ok, "back"))
        }
    }

    @Test("set without an expiry keeps the expiry of the value it replaces, as the protocol asks")
    func setKeepsExpiry() async throws {
        try await withPersistApp { client, persist in
            let tag = UUID().uuidString
            #expect(try await put(client, "/persist/\(tag)/30", "v1") == .ok)
            #expect(try await put(client, "/persist/\(tag)", "v2") == .ok)
            #expect(try await get(client, "/persist/\(tag)") == Reply(.ok, "v2"))
            let ttl = try #require(Int(try await get(client, "/persist/\(tag)/ttl").body))
            #expect(ttl <= 30 && ttl > 20, "the 30-second expiry survived the update")
            // A value updated without an expiry still ends at its time.
            try await persist.set(key: "short", value: "v1", expires: .seconds(1))
            try await persist.set(key: "short", value: "v2", expires: nil)
            let short = try await persist.getWithTTL(key: "short", as: String.self)
            #expect(short?.object == "v2")
            #expect(short?.ttl.map { $0 <= .seconds(1) } == true)
            let deadline = ContinuousClock.now + .seconds(10)
            while try await persist.get(key: "short", as: String.self) != nil, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(try await persist.get(key: "short", as: String.self) == nil, "gone after its second")
            // Just past its time, an update without an expiry keeps it ended.
            try await persist.set(key: "short", value: "v3", expires: nil)
            #expect(try await persist.get(key: "short", as: String.self) == nil)
            // A new key set without an expiry does not expire.
            #expect(try await put(client, "/persist/\(tag)-new", "v") == .ok)
            #expect(try await get(client, "/persist/\(tag)-new/ttl").body == "none")
        }
    }

    @Test(
        "create takes a key whose value expired; set overwrites a value that is not the driver's; keys memcached cannot hold hold nothing"
    )
    func edges() async throws {
        try await withPersistApp { _, persist in
            try await persist.set(key: "lapsed", value: "old", expires: .zero)
            try await persist.create(key: "lapsed", value: "new", expires: .seconds(60))
            #expect(try await persist.get(key: "lapsed", as: String.self) == "new")
            try await persist.set(key: "ended", value: "old", expires: .seconds(1))
            try await Task.sleep(for: .milliseconds(1_100))
            try await persist.create(key: "ended", value: "new", expires: nil)
            #expect(try await persist.get(key: "ended", as: String.self) == "new", "an expired value is no duplicate")

            try await persist.client.set("persist:foreign", 42)
            try await persist.set(key: "foreign", value: "mine")
            #expect(try await persist.getWithTTL(key: "foreign", as: String.self)?.object == "mine")

            let long = String(repeating: "k", count: 300)
            #expect(try await persist.get(key: long, as: String.self) == nil)
            #expect(try await persist.get(key: "a b", as: String.self) == nil)
            try await persist.remove(key: "a b")
            await #expect(throws: MemcachedError.self) { try await persist.set(key: long, value: "v") }
        }
    }

    @Test("Codable values round-trip; reading one as another type is PersistError.invalidConversion")
    func codableAndConversion() async throws {
        struct Film: Codable, Sendable, Equatable {
            var title: String
            var year: Int
        }
        try await withPersistApp { client, persist in
            try await persist.set(key: "film", value: Film(title: "Academy Dinosaur", year: 2006))
            #expect(try await persist.get(key: "film", as: Film.self) == Film(title: "Academy Dinosaur", year: 2006))
            #expect(try await get(client, "/persist/film").status == .badRequest)
            await #expect(throws: PersistError.invalidConversion) { try await persist.get(key: "film", as: Int.self) }
        }
    }

    @Test("keys memcached cannot take, and a server that is down, throw MemcachedError")
    func memcachedErrors() async throws {
        try await withPersistApp { _, persist in
            let error = await #expect(throws: MemcachedError.self) {
                try await persist.set(key: "has space", value: "v")
            }
            #expect(error?.code == .invalidKeyCharacters)
        }
        let down = try RefusingLoopbackPort()
        defer { down.release() }
        let client = try MemcachedClient(servers: ["127.0.0.1:\(down.port)"])
        let persist = MemcachedPersistDriver(client: client)
        await #expect(throws: MemcachedError.self) { try await persist.get(key: "k", as: String.self) }
        await client.close()
    }

    @Test("hummingbird-auth sessions on memcached: a session created, read back with its cookie, updated, deleted")
    func sessions() async throws {
        struct Visits: Codable, Sendable {
            var count: Int
        }
        try await withMemcached { cluster in
            let memcached = try MemcachedClient(servers: cluster.addresses)
            let persist = MemcachedPersistDriver(client: memcached)
            let router = Router(context: BasicSessionRequestContext<Visits, Visits>.self)
            router.addMiddleware { SessionMiddleware(storage: persist) }
            router.put("session") { _, context -> HTTPResponse.Status in
                context.sessions.createSession(Visits(count: 1), expiresIn: .seconds(600))
                return .ok
            }
            router.get("session") { _, context -> String in
                guard var visits = context.sessions.session else { return "none" }
                visits.count += 1
                _ = context.sessions.updateSession(visits)
                return "\(visits.count)"
            }
            router.delete("session") { _, context -> HTTPResponse.Status in
                context.sessions.clearSession()
                return .ok
            }
            let app = Application(router: router)
            try await app.test(.router) { client in
                let cookie = try await client.execute(uri: "/session", method: .put) { response in
                    #expect(response.status == .ok)
                    return response.headers[.setCookie]
                }
                let cookies = try #require(cookie)
                for expected in ["2", "3"] {
                    try await client.execute(uri: "/session", method: .get, headers: [.cookie: cookies]) {
                        #expect(String(buffer: $0.body) == expected)
                    }
                }
                try await client.execute(uri: "/session", method: .delete, headers: [.cookie: cookies]) { _ in }
                try await client.execute(uri: "/session", method: .get, headers: [.cookie: cookies]) {
                    #expect(String(buffer: $0.body) == "none")
                }
            }
            await memcached.close()
        }
    }
}
