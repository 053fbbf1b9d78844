import Foundation
import Memcached
import MemcachedTestSupport
import Testing

/// A long mixed run, errors and pool churn included, for the sanitizers: CI runs this suite under
/// AddressSanitizer (with LeakSanitizer), which fails the run on any memory error or leak.
///
/// The CI run makes 10,000 operations; `MEMCACHED_SOAK=1` makes 200,000.
@Suite("Memory safety", .offCooperativePool)
struct MemorySafetyTests {
    static let operations = ProcessInfo.processInfo.environment["MEMCACHED_SOAK"] == "1" ? 200_000 : 10_000

    @Test("mixed operations with errors, on one connection and through pools that come and go")
    func mixedRun() async throws {
        try await withMemcached(servers: 2) { cluster in
            let deadPort = try RefusingLoopbackPort()
            defer { deadPort.release() }
            let silent = try SilentServer()
            defer { silent.stop() }
            var configuration = try MemcachedConfiguration(servers: cluster.addresses)
            configuration.timeout = .milliseconds(200)
            configuration.connectTimeout = .milliseconds(200)
            configuration.compressionThreshold = 512
            var withDead = configuration
            withDead.servers.append(MemcachedServer(host: "127.0.0.1", port: deadPort.port))
            var hung = configuration
            hung.servers = [try MemcachedServer(parsing: silent.address)]

            let memc = try MemcachedConnection(configuration: withDead)
            var generator = SplitMix64(state: 42)
            var errors = 0
            let syncShare = Self.operations * 3 / 4
            for step in 0..<syncShare {
                let key = "key-\(generator.next() % 2_000)"
                do {
                    switch generator.next() % 48 {
                    case 0: try memc.set(key, String(repeating: "v", count: Int(generator.next() % 2_048)))
                    case 1: _ = try memc.get(key, as: String.self)
                    case 2: _ = try memc.getMulti((0..<20).map { "key-\($0 * 7 + step % 13)" }, as: String.self)
                    case 3: try memc.setMulti(["a-\(step % 50)": step, "b-\(step % 50)": step], keyPrefix: "p:")
                    case 4: try memc.delete(key)
                    case 5: try memc.increment("counter-\(step % 10)")
                    case 6: _ = try memc.get(key, as: Int.self)  // often undecodable: text as Int
                    case 7: try memc.set("bad key \(step)", "x")  // invalid key
                    case 8: try memc.set(key, [UInt8](repeating: 1, count: 1_048_577))  // too large
                    case 9: _ = try memc.gets(key, as: String.self)
                    case 10: try memc.deleteMulti(["x-\(step % 9)", key])
                    case 11: _ = try memc.stats()  // opens a short-lived handle per server
                    default: _ = try memc.get(key, as: [UInt8].self)
                    }
                } catch {
                    errors += 1
                }
            }
            #expect(errors > 0)

            // A hung server: every call times out and resets the connection.
            let stuck = try MemcachedConnection(configuration: hung)
            for _ in 0..<3 {
                #expect(throws: MemcachedError.self) { try stuck.get("k", as: String.self) }
            }
            stuck.close()

            // Pools that are created, used from many tasks, and closed, over and over.
            let rounds = max(1, (Self.operations - syncShare) / 1_000)
            for round in 0..<rounds {
                var options = MemcachedClient.Options()
                options.maximumConnections = 4
                let client = try MemcachedClient(
                    configuration: round % 5 == 0 ? withDead : configuration,
                    options: options
                )
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for task in 0..<8 {
                        group.addTask {
                            for index in 0..<125 {
                                let key = "pool-\(task)-\(index % 25)"
                                do {
                                    try await client.set(key, index)
                                    _ = try await client.get(key, as: Int.self)
                                } catch {
                                    // Keys on the dead server fail; that is part of the run.
                                }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                await client.close()
            }
            memc.close()
        }
    }
}
