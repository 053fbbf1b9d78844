import Foundation
import Memcached
import MemcachedTestSupport
import Testing

/// The one rule for multi-key commands when some of their servers fail, each case against real
/// servers: a server that is down (refuses connections) or hangs up mid-reply is skipped, and its
/// keys are failures of `getMulti`, `setMulti` and `deleteMulti`; a server that does not answer in
/// time ends `getMulti`'s read, failing its keys with `timeout` (every time, never
/// an empty success), and the keys `setMulti` and `deleteMulti` could not finish in time are
/// reported per key. ErrorHandling.md states the rule.
@Suite("Multi-key commands when some servers fail", .offCooperativePool)
struct MultiServerFailureTests {
    static let timeout = Duration.milliseconds(300)

    /// Keys spread over the servers, grouped by the server each maps to.
    static func keysByServer(_ memc: MemcachedConnection) throws -> (keys: [String], owners: [String: String]) {
        let keys = (0..<60).map { "multi-\($0)" }
        var owners: [String: String] = [:]
        for key in keys {
            owners[key] = try memc.server(forKey: key)
        }
        return (keys, owners)
    }

    /// `timeout` bounds a whole call, so a test whose point is not timing uses a long one: on a
    /// loaded machine 60 round trips to a healthy server can take longer than 300 ms.
    /// A connection to `servers`. Its failure limit is out of reach: these tests are about each
    /// call's outcome while a server fails, before it would be marked down (ServerEjectionTests).
    static func connect(_ servers: [String], timeout: Duration = timeout) throws -> MemcachedConnection {
        var configuration = try MemcachedConfiguration(servers: servers)
        configuration.timeout = timeout
        configuration.connectTimeout = timeout
        configuration.serverFailureLimit = 1_000
        return try MemcachedConnection(configuration: configuration)
    }

    @Test(
        "one server refusing and another silent in one getMulti: the keys of both fail, only the answering server's keys are hits or misses"
    )
    func refusedAndSilentServers() throws {
        try withMemcached { cluster in
            let silent = try SilentServer()
            defer { silent.stop() }
            let refusingPort = try RefusingLoopbackPort()
            defer { refusingPort.release() }
            let refusing = refusingPort.address
            let memc = try Self.connect([cluster.addresses[0], refusing, silent.address])
            let direct = try Self.connect([cluster.addresses[0]], timeout: .seconds(10))
            let (keys, owners) = try Self.keysByServer(memc)
            for key in keys where owners[key] == cluster.addresses[0] {
                try direct.set(key, "value of \(key)")
            }
            #expect(Set(owners.values).count == 3)
            for round in 0..<3 {
                let read = try memc.getMulti(keys, as: String.self)
                for key in keys {
                    if owners[key] == cluster.addresses[0] {
                        #expect(read.hits[key] == "value of \(key)", "round \(round): \(key)")
                    } else {
                        let kind = owners[key] == refusing ? "the refusing server" : "the silent server"
                        #expect(
                            read.failures[key] != nil,
                            "round \(round): \(key) of \(kind) \(owners[key]!) is not a miss (hit: \(read.hits[key] != nil))"
                        )
                    }
                }
            }
        }
    }

    @Test(
        "a server that hangs up in the middle of its reply while another answers: its unread keys are failures, never misses"
    )
    func serverHangsUpMidReply() throws {
        try withMemcached(servers: 2) { cluster in
            // The second server is reached through a proxy that cuts every reply short and hangs up.
            var proxyConfiguration = MutatingProxy.Configuration(seed: 7)
            proxyConfiguration.enabledMutations = [.truncateThenHangUp]
            proxyConfiguration.mutationProbability = 1
            proxyConfiguration.controlKeyPrefix = "never-mutated-"
            let proxy = try MutatingProxy(backendPort: cluster.servers[1].port, configuration: proxyConfiguration)
            defer { proxy.stop() }
            let memc = try Self.connect([cluster.addresses[0], proxy.address], timeout: .seconds(5))
            let direct = try Self.connect([cluster.addresses[0], cluster.addresses[1]], timeout: .seconds(5))
            let (keys, owners) = try Self.keysByServer(memc)
            let proxiedKeys = Set(keys.filter { owners[$0] == proxy.address })
            #expect(!proxiedKeys.isEmpty && proxiedKeys.count < keys.count)
            // Stored straight on the servers, under the same mapping (same positions, same hash).
            #expect(
                try direct.setMulti(Dictionary(uniqueKeysWithValues: keys.map { ($0, "v-\($0)") })).keysNotApplied
                    .isEmpty
            )
            for round in 0..<5 {
                let read = try memc.getMulti(keys, as: String.self)
                #expect(read.hits.allSatisfy { $0.value == "v-\($0.key)" }, "round \(round)")
                #expect(
                    Set(read.hits.keys).union(read.failures.keys) == Set(keys),
                    "round \(round): every stored key is a hit or a failure, none a miss"
                )
                #expect(
                    Set(read.failures.keys).isSubset(of: proxiedKeys),
                    "round \(round): \(read.failures.keys.sorted())"
                )
                #expect(!read.failures.isEmpty, "round \(round): the cut reply shows")
            }
        }
    }

    @Test("a server that refuses connections: its keys fail, are not stored, not deleted; the others work")
    func serverDown() throws {
        try withMemcached { cluster in
            let downPort = try RefusingLoopbackPort()
            defer { downPort.release() }
            let down = downPort.address
            let memc = try Self.connect([cluster.addresses[0], down], timeout: .seconds(10))
            let (keys, owners) = try Self.keysByServer(memc)
            let downKeys = Set(keys.filter { owners[$0] == down })
            #expect(!downKeys.isEmpty && downKeys.count < keys.count)
            for round in 0..<3 {
                let failed = try memc.setMulti(Dictionary(uniqueKeysWithValues: keys.map { ($0, "v-\($0)") }))
                #expect(
                    Set(failed.failures.keys) == downKeys,
                    "round \(round): setMulti reports exactly the down server's keys"
                )
                #expect(Set(failed.keysNotApplied) == downKeys, "round \(round): and stores every other one")
                let read = try memc.getMulti(keys, as: String.self)
                #expect(Set(read.hits.keys) == Set(keys).subtracting(downKeys), "round \(round)")
                #expect(Set(read.failures.keys) == downKeys, "round \(round): the down server's keys are failures")
                #expect(read.hits.allSatisfy { $0.value == "v-\($0.key)" })
                var handed: Set<String> = []
                let notHanded = try memc.getMulti(keys) { key, _, _ in handed.insert(key) }
                #expect(handed == Set(keys).subtracting(downKeys))
                #expect(Set(notHanded.keys) == downKeys)
                let deleted = try memc.deleteMulti(keys)
                for key in keys {
                    let outcome = try #require(deleted[key])
                    if downKeys.contains(key) {
                        #expect(outcome.error != nil)
                    } else {
                        #expect(outcome == .applied)
                    }
                }
            }
        }
    }

    @Test(
        "a server that does not answer: getMulti fails its keys with timeout every time; setMulti and deleteMulti report what they could not finish"
    )
    func serverSilent() throws {
        try withMemcached { cluster in
            let silent = try SilentServer()
            defer { silent.stop() }
            let memc = try Self.connect([cluster.addresses[0], silent.address])
            let direct = try Self.connect([cluster.addresses[0]], timeout: .seconds(10))
            let (keys, owners) = try Self.keysByServer(memc)
            let silentKeys = Set(keys.filter { owners[$0] == silent.address })
            #expect(!silentKeys.isEmpty && silentKeys.count < keys.count)
            for round in 0..<4 {
                var read = MemcachedGetMultiResult<String>()
                let (getElapsed, getError) = timed { read = try memc.getMulti(keys, as: String.self) }
                #expect(getError == nil, "round \(round): \(String(describing: getError))")
                #expect(Set(read.failures.keys).isSuperset(of: silentKeys), "round \(round)")
                #expect(Set(read.failures.values.map(\.code)) == [.timeout], "round \(round): \(read.failures.values)")
                #expect(
                    getElapsed < Self.timeout * 1.5 + .seconds(1),
                    "round \(round): getMulti took \(getElapsed)"
                )
                var notHanded: [String: MemcachedError] = [:]
                let (forEachElapsed, forEachError) = timed { notHanded = try memc.getMulti(keys) { _, _, _ in } }
                #expect(forEachError == nil, "round \(round)")
                #expect(Set(notHanded.keys).isSuperset(of: silentKeys), "round \(round)")
                #expect(Set(notHanded.values.map(\.code)) == [.timeout], "round \(round)")
                #expect(forEachElapsed < Self.timeout * 1.5 + .seconds(1))

                let clock = ContinuousClock()
                let setStart = clock.now
                let failed = try memc.setMulti(Dictionary(uniqueKeysWithValues: keys.map { ($0, "v-\($0)") }))
                let setElapsed = setStart.duration(to: clock.now)
                #expect(
                    setElapsed < Self.timeout * 1.5 + .seconds(1),
                    "round \(round): setMulti took \(setElapsed)"
                )
                #expect(
                    Set(failed.failures.keys).isSuperset(of: silentKeys),
                    "round \(round): every key of the silent server failed"
                )
                for key in keys where failed[key] == .applied {
                    #expect(try direct.get(key, as: String.self) == "v-\(key)", "a key reported stored is stored")
                }
                let (deleteElapsed, _) = timed {
                    let deleted = try memc.deleteMulti(keys)
                    for key in silentKeys {
                        #expect(deleted[key]?.error != nil)
                    }
                }
                #expect(
                    deleteElapsed < Self.timeout * 1.5 + .seconds(1),
                    "round \(round): deleteMulti took \(deleteElapsed)"
                )
            }
        }
    }

    @Test("fire-and-forget setMulti with a server that takes no bytes: no key is reported applied unless it was")
    func noReplyWritesToAStalledServer() throws {
        try withMemcached { cluster in
            let silent = try SilentServer()
            defer { silent.stop() }
            var configuration = try MemcachedConfiguration(servers: [cluster.addresses[0], silent.address])
            configuration.noReply = true
            configuration.timeout = .milliseconds(500)
            configuration.connectTimeout = .milliseconds(500)
            // Larger than memcached takes, which the silent server never reads anyway: more than
            // a socket nobody reads holds, so that write blocks until the deadline.
            configuration.maximumValueLength = 16 << 20
            let memc = try MemcachedConnection(configuration: configuration)
            let direct = try Self.connect([cluster.addresses[0]], timeout: .seconds(10))
            // The dictionary's order decides which keys are buffered before the stalled write:
            // three rounds of different keys make it all but certain that some are.
            for round in 0..<3 {
                var items: [String: String] = [:]
                var stalled: String?
                for index in 0..<40 {
                    let key = "stalled:\(round):\(index)"
                    if try memc.server(forKey: key) == silent.address {
                        if stalled == nil {
                            stalled = key
                            items[key] = String(repeating: "x", count: 16 << 20)
                        }
                    } else {
                        items[key] = "small"
                    }
                }
                let set = try memc.setMulti(items)
                #expect(set[stalled!]?.error != nil, "round \(round): the stalled server's write")
                for (key, outcome) in set where outcome == .applied {
                    #expect(eventually(direct, key, holds: "small"), "round \(round): \(key) was reported applied")
                }
            }
        }
    }
}
