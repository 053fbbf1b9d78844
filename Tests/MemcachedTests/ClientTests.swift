import Foundation
import Logging
import MemcachedTestSupport
import ServiceLifecycle
import Testing

@testable import Memcached

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A `Codable` value that is not a ``MemcachedValue``, stored as JSON.
private struct Poster: Codable, Equatable, Sendable, MemcachedValue {
    var title: String
    var year: Int
}

/// The async commands of ``MemcachedClient`` against real servers, and its lifecycle.
@Suite("MemcachedClient commands and lifecycle", .offCooperativePool, .timeLimit(.minutes(5)))
struct ClientTests {
    @Test("every async command gives the synchronous connection's answer")
    func everyCommand() async throws {
        try await withMemcached(servers: 2) { cluster in
            try await withClient(cluster, maximumConnections: 2) { client in
                #expect(try await client.set("text", "hello", expiration: .seconds(60)))
                #expect(try await client.get("text", as: String.self) == "hello")
                #expect(try await client.get("missing", as: String.self) == nil)
                #expect(try await client.set("bytes", [UInt8]([0, 1, 2, 255])))
                #expect(try await client.get("bytes", as: [UInt8].self) == [0, 1, 2, 255])

                let poster = Poster(title: "Stalker", year: 1979)
                #expect(try await client.set("poster", poster))
                #expect(try await client.get("poster", as: Poster.self) == poster)

                #expect(try await client.add("text", "other") == false)
                #expect(try await client.add("fresh", "new"))
                #expect(try await client.add("fresh-poster", poster))
                #expect(try await client.add("fresh-poster", poster) == false)
                #expect(try await client.replace("absent", "x") == false)
                #expect(try await client.replace("fresh", "renewed"))
                #expect(try await client.replace("poster", Poster(title: "Solaris", year: 1972)))
                #expect(try await client.get("poster", as: Poster.self)?.title == "Solaris")
                #expect(try await client.append("text", " world"))
                #expect(try await client.prepend("text", ">> "))
                #expect(try await client.get("text", as: String.self) == ">> hello world")
                #expect(try await client.append("absent", "x") == false)

                let (value, token) = try #require(await client.gets("text", as: String.self))
                #expect(value == ">> hello world")
                #expect(try await client.cas("text", "swapped", token: token))
                #expect(try await client.cas("text", "again", token: token) == false)
                #expect(try await client.get("text", as: String.self) == "swapped")
                let (stored, posterToken) = try #require(await client.gets("poster", as: Poster.self))
                #expect(stored.year == 1972)
                #expect(try await client.cas("poster", poster, token: posterToken))
                #expect(try await client.get("poster", as: Poster.self) == poster)

                let items = Dictionary(uniqueKeysWithValues: (0..<40).map { ("multi-\($0)", "value-\($0)") })
                #expect(try await client.setMulti(items, keyPrefix: "p:").keysNotApplied.isEmpty)
                #expect(
                    try await client.getMulti(Array(items.keys) + ["multi-none"], keyPrefix: "p:", as: String.self).hits
                        == items
                )
                let posters = ["a": poster, "b": Poster(title: "Mirror", year: 1975)]
                #expect(try await client.setMulti(posters).keysNotApplied.isEmpty)
                #expect(try await client.getMulti(["a", "b", "c"], as: Poster.self).hits == posters)

                #expect(try await client.set("counter", 10))
                #expect(try await client.increment("counter", by: 5) == 15)
                #expect(try await client.decrement("counter") == 14)
                #expect(try await client.increment("no-counter") == nil)
                #expect(try await client.get("counter", as: Int.self) == 14)

                #expect(try await client.touch("counter", expiration: .seconds(100)))
                #expect(try await client.touch("absent", expiration: .seconds(100)) == false)
                #expect(try await client.delete("counter"))
                #expect(try await client.delete("counter") == false)
                let deletions = try await client.deleteMulti(["multi-1", "multi-2", "nothing"], keyPrefix: "p:")
                #expect(deletions["multi-1"] == .applied)
                #expect(deletions["nothing"] == .declined)
                #expect(try await client.get("multi-1", as: String.self) == nil)

                let owner = try await client.server(forKey: "text")
                #expect(cluster.addresses.contains(owner))
                #expect(
                    try cluster.servers[cluster.addresses.firstIndex(of: owner)!].rawCommand("get text\r\n").contains(
                        "swapped"
                    )
                )

                let versions = try await client.versions()
                #expect(versions.map(\.server) == cluster.addresses)
                #expect(try versions.allSatisfy { try !$0.result.get().isEmpty })
                let stats = try await client.stats()
                #expect(stats.count == 2)
                #expect(try stats.allSatisfy { try $0.result.get()["pid"] != nil })

                try await client.flush()
                #expect(try await client.get("fresh", as: String.self) == nil)
            }
        }
    }

    @Test("typed errors of the connection come through unchanged")
    func errorsPassThrough() async throws {
        try await withMemcached { cluster in
            try await withClient(cluster, maximumConnections: 1) { client in
                let empty = await #expect(throws: MemcachedError.self) { try await client.get("", as: String.self) }
                #expect(empty?.code == .emptyKey)
                let spaced = await #expect(throws: MemcachedError.self) { try await client.set("a b", "v") }
                #expect(spaced?.code == .invalidKeyCharacters)
                let stored = try await client.set("text", "not a number")
                #expect(stored)
                let mistyped = await #expect(throws: MemcachedError.self) {
                    try await client.get("text", as: Poster.self)
                }
                #expect(mistyped?.code == .undecodableValue)
                // None of these may cost the connection: nothing was left unread.
                #expect(client.pool.openConnectionCount == 1)
                let text = try await client.get("text", as: String.self)
                #expect(text == "not a number")
            }
        }
    }

    @Test("withConnection runs its commands on one connection, on one of the client's own threads")
    func withConnectionRunsOnClientThreads() async throws {
        try await withMemcached { cluster in
            try await withClient(cluster, maximumConnections: 3) { client in
                let names = Locked<Set<String>>([])
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for task in 0..<12 {
                        group.addTask {
                            let stored = try await client.withConnection { connection in
                                names.withLock { _ = $0.insert(currentThreadName()) }
                                try connection.set("w\(task)", task)
                                return try connection.increment("w\(task)", by: 1)
                            }
                            #expect(stored == UInt64(task + 1))
                        }
                    }
                    try await group.waitForAll()
                }
                // NIOThreadPool names its threads "TP-#<n>"; Swift's cooperative threads are not among them.
                let seen = names.withLock { $0 }
                #expect(!seen.isEmpty)
                #expect(seen.allSatisfy { $0.hasPrefix("TP-#") }, "\(seen)")
                #expect(seen.count <= 3)
                #expect(client.pool.openConnectionCount <= 3)
            }
        }
    }

    @Test("options: defaults are documented values, and out-of-range values are refused")
    func options() throws {
        let defaults = MemcachedClient.Options()
        #expect(defaults.maximumConnections == 8)
        #expect(defaults.connectionWaitTimeout == .seconds(5))

        var none = MemcachedClient.Options()
        none.maximumConnections = 0
        let noConnections = #expect(throws: MemcachedError.self) {
            try MemcachedClient(servers: ["127.0.0.1:11211"], options: none)
        }
        #expect(noConnections?.code == .invalidConfiguration)

        var negative = MemcachedClient.Options()
        negative.connectionWaitTimeout = .milliseconds(-1)
        let negativeWait = #expect(throws: MemcachedError.self) {
            try MemcachedClient(servers: ["127.0.0.1:11211"], options: negative)
        }
        #expect(negativeWait?.code == .invalidConfiguration)

        let badServer = #expect(throws: MemcachedError.self) { try MemcachedClient(servers: ["127.0.0.1:0"]) }
        #expect(badServer?.code == .invalidServerSpecification)
    }

    @Test("connections are created lazily: none at creation, one per concurrent need")
    func lazyCreation() async throws {
        try await withMemcached { cluster in
            let server = cluster.servers[0]
            let connectionsBefore = try statistic("total_connections", of: server)
            let client = try makeClient(cluster, maximumConnections: 4)
            #expect(client.pool.openConnectionCount == 0)
            #expect(client.pool.liveHandleCount == 1, "only the template")
            // One stats read adds its own connection, and nothing else connected.
            #expect(try statistic("total_connections", of: server) == connectionsBefore + 1)

            for index in 0..<20 {
                #expect(try await client.set("k\(index)", index))
            }
            #expect(client.pool.openConnectionCount == 1, "sequential commands reuse one connection")
            #expect(try statistic("total_connections", of: server) == connectionsBefore + 3)
            await client.close()
        }
    }

    @Test("as a Service, run() keeps the client until graceful shutdown, then closes it")
    func serviceGracefulShutdown() async throws {
        try await withMemcached { cluster in
            let client = try makeClient(cluster, maximumConnections: 2)
            let group = ServiceGroup(services: [client], logger: Logger(label: "test"))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                #expect(try await client.set("k", "v"))
                // run() is running: the client stays open however long the group runs.
                try await Task.sleep(for: .milliseconds(100))
                #expect(try await client.get("k", as: String.self) == "v")
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
            let closed = await #expect(throws: MemcachedError.self) { try await client.get("k", as: String.self) }
            #expect(closed?.code == .poolClosed)
            #expect(client.pool.liveHandleCount == 0)
        }
    }

    @Test("run() closes the client when its task is cancelled")
    func serviceCancellation() async throws {
        try await withMemcached { cluster in
            let client = try makeClient(cluster, maximumConnections: 2)
            let running = Task(executorPreference: ThreadPerJobExecutor()) { try await client.run() }
            #expect(try await client.set("k", "v"))
            running.cancel()
            try await running.value
            let closed = await #expect(throws: MemcachedError.self) { try await client.set("k", "v") }
            #expect(closed?.code == .poolClosed)
            #expect(client.pool.liveHandleCount == 0)
        }
    }
}

/// Runs `body` with a client for a cluster, and closes the client on every path.
func withClient<R>(
    _ cluster: MemcachedCluster,
    maximumConnections: Int,
    waitTimeout: Duration = .seconds(5),
    isolation: isolated (any Actor)? = #isolation,
    _ body: (MemcachedClient) async throws -> R
) async throws -> R {
    let client = try makeClient(cluster, maximumConnections: maximumConnections, waitTimeout: waitTimeout)
    do {
        let result = try await body(client)
        await client.close()
        return result
    } catch {
        await client.close()
        throw error
    }
}

/// Creates a client for a cluster with short timeouts.
///
/// Reads are not coalesced unless asked: the pool tests count one waiter per waiting command.
func makeClient(
    _ cluster: MemcachedCluster,
    maximumConnections: Int,
    waitTimeout: Duration = .seconds(5),
    coalescesReads: Bool = false,
    _ adjust: (inout MemcachedConfiguration) -> Void = { _ in }
) throws -> MemcachedClient {
    try makeClient(
        servers: cluster.addresses,
        maximumConnections: maximumConnections,
        waitTimeout: waitTimeout,
        coalescesReads: coalescesReads,
        adjust
    )
}

/// Creates a client for servers with short timeouts.
func makeClient(
    servers: [String],
    maximumConnections: Int,
    waitTimeout: Duration = .seconds(5),
    coalescesReads: Bool = false,
    _ adjust: (inout MemcachedConfiguration) -> Void = { _ in }
) throws -> MemcachedClient {
    var configuration = try MemcachedConfiguration(servers: servers)
    configuration.timeout = .seconds(2)
    configuration.connectTimeout = .seconds(2)
    adjust(&configuration)
    var options = MemcachedClient.Options()
    options.maximumConnections = maximumConnections
    options.connectionWaitTimeout = waitTimeout
    options.coalescesReads = coalescesReads
    return try MemcachedClient(configuration: configuration, options: options)
}

/// A value shared between tasks and the client's threads in tests.
///
/// Locked with `NSLock` (a `pthread_mutex_t`), which ThreadSanitizer sees, where
/// `Synchronization.Mutex` on Linux waits on futexes it does not.
final class Locked<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value

    init(_ value: Value) {
        stored = value
    }

    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&stored)
    }

    var value: Value { withLock { $0 } }
}

/// The name of the calling thread, as the kernel knows it.
func currentThreadName() -> String {
    #if os(Linux)
    let name = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? ""
    return name.trimmingCharacters(in: .newlines)
    #else
    var buffer = [CChar](repeating: 0, count: 64)
    _ = pthread_getname_np(pthread_self(), &buffer, buffer.count)
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    #endif
}
