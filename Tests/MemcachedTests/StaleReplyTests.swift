import Memcached
import MemcachedTestSupport
import Synchronization
import Testing

/// A connection that may be mid-reply is never reused: after garbage, a hang-up, a wrong key or a
/// timeout, the next command gets its own correct result.
@Suite("No stale replies", .offCooperativePool)
struct StaleReplyTests {
    /// How the fake server answers one `get`/`gets` request.
    enum Fault: CaseIterable {
        case none
        case garbage
        case anotherKeysValue
        case hangUp
        case partialValueThenSilence
    }

    /// A small memcached speaking the text protocol's `set`, `get` and `gets`, which misbehaves on
    /// the reads a test schedules. Its state is shared by every connection, as a server's is.
    final class FaultyMemcached: Sendable {
        struct State {
            var items: [String: [UInt8]] = [:]
            var pendingSet: (key: String, flags: String)?
            var nextFault: Fault = .none
        }

        final class SharedState: Sendable {
            let mutex = Mutex(State())
        }

        let state = SharedState()
        let server: ScriptedServer

        init() throws {
            let state = self.state
            server = try ScriptedServer { line in
                state.mutex.withLock { Self.respond(to: line, state: &$0) }
            }
        }

        func scheduleFault(_ fault: Fault) {
            state.mutex.withLock { $0.nextFault = fault }
        }

        private static func respond(to line: String, state: inout State) -> [UInt8]? {
            if let pending = state.pendingSet {
                state.pendingSet = nil
                state.items[pending.key] = Array(line.utf8)
                return Array("STORED\r\n".utf8)
            }
            let fields = line.split(separator: " ").map(String.init)
            switch fields.first {
            case "set":
                guard fields.count >= 5 else { return Array("ERROR\r\n".utf8) }
                state.pendingSet = (fields[1], fields[2])
                return []
            case "get", "gets":
                let fault = state.nextFault
                state.nextFault = .none
                switch fault {
                case .none:
                    var reply = ""
                    for key in fields.dropFirst() {
                        if let value = state.items[key] {
                            reply += "VALUE \(key) 16 \(value.count) 1\r\n\(String(decoding: value, as: UTF8.self))\r\n"
                        }
                    }
                    return Array((reply + "END\r\n").utf8)
                case .garbage:
                    return Array("HTTP/1.1 400 Bad Request\r\n\r\n".utf8)
                case .anotherKeysValue:
                    return Array("VALUE intruder 16 8 1\r\nintruder\r\nEND\r\n".utf8)
                case .hangUp:
                    return nil
                case .partialValueThenSilence:
                    return Array("VALUE \(fields.count > 1 ? fields[1] : "x") 16 100 1\r\nonly part".utf8)
                }
            case "quit":
                return nil
            default:
                return Array("ERROR\r\n".utf8)
            }
        }
    }

    @Test("getMulti(forEachHit:): a connection failure after the closure threw is the error reported")
    func forEachHitReportsTheConnectionFailure() throws {
        struct Stop: Error {}
        // Two values, then silence where END should be. (A value is handed over once the reply
        // after it has been read, so the first one reaches the closure when the second arrives.)
        let server = try ScriptedServer { line in
            line.hasPrefix("get")
                ? Array("VALUE a 0 1 1\r\nx\r\nVALUE b 0 1 1\r\ny\r\n".utf8) : (line == "quit" ? nil : [])
        }
        defer { server.stop() }
        var configuration = try MemcachedConfiguration(servers: [server.address])
        configuration.timeout = .milliseconds(150)
        let memc = try MemcachedConnection(configuration: configuration)
        var calls = 0
        do {
            try memc.getMulti(["a", "b"]) { _, _, _ in
                calls += 1
                throw Stop()
            }
            Issue.record("getMulti returned")
        } catch let error as MemcachedError {
            #expect(error.code == .timeout, "\(error)")
        }
        #expect(calls == 1)
    }

    @Test("1,000 interleaved operations with faults: every reply belongs to its own command")
    func interleavedFaults() throws {
        let fake = try FaultyMemcached()
        defer { fake.server.stop() }
        var configuration = try MemcachedConfiguration(servers: [fake.server.address])
        configuration.timeout = .milliseconds(150)
        let memc = try MemcachedConnection(configuration: configuration)
        var generator = SplitMix64(state: 7)
        let keys = (0..<40).map { "key-\($0)" }
        for key in keys.prefix(20) {
            try memc.set(key, "value-of-\(key)")
        }
        var faultsInjected = 0
        var previousWasFault = false
        for step in 0..<1_000 {
            let key = keys[Int(generator.next() % UInt64(keys.count))]
            let roll = generator.next() % 100
            let fault: Fault = roll < 12 ? Fault.allCases[1 + Int(generator.next() % 4)] : .none
            if roll >= 12 && roll < 30 {
                #expect(try memc.set(key, "value-of-\(key)"), "step \(step): set")
                previousWasFault = false
                continue
            }
            fake.scheduleFault(fault)
            let multi = generator.next() % 3 == 0
            do {
                if multi {
                    let asked = [key, keys[Int(generator.next() % UInt64(keys.count))]]
                    let read = try memc.getMulti(asked, as: String.self)
                    for (hitKey, value) in read.hits {
                        #expect(asked.contains(hitKey))
                        #expect(value == "value-of-\(hitKey)", "step \(step): \(hitKey) read \(value)")
                    }
                    // A multi-get reports a fault per key: the call failed when a key did.
                    if let failure = read.failures.values.first {
                        throw failure
                    }
                } else if let value = try memc.get(key, as: String.self) {
                    #expect(value == "value-of-\(key)", "step \(step): \(key) read \(value)")
                }
                #expect(fault == .none, "step \(step): a \(fault) fault went unnoticed")
            } catch let error as MemcachedError {
                #expect(fault != .none, "step \(step): a clean reply failed with \(error)")
                #expect(!previousWasFault || fault != .none, "step \(step): the command after a fault failed")
            }
            if fault != .none { faultsInjected += 1 }
            previousWasFault = fault != .none
        }
        #expect(faultsInjected > 80)
    }

    @Test("a timeout in the middle of a multi-get on a paused server leaves nothing behind")
    func timeoutMidMultiGet() throws {
        try withMemcached(servers: 2) { cluster in
            let memc = try connect(cluster) { $0.timeout = .milliseconds(300) }
            let keys = (0..<200).map { "key-\($0)" }
            // Stored through a connection with a long timeout, and checked: 300 ms bounds the whole
            // setMulti, which a loaded machine missed, leaving keys that every later read missed.
            let filler = try connect(cluster) { $0.timeout = .seconds(30) }
            let stored = try filler.setMulti(Dictionary(uniqueKeysWithValues: keys.map { ($0, "value-of-\($0)") }))
            #expect(stored.keysNotApplied.isEmpty)
            filler.close()
            for round in 0..<5 {
                cluster.servers[1].pause()
                var read = MemcachedGetMultiResult<String>()
                let (elapsed, error) = timed { read = try memc.getMulti(keys, as: String.self) }
                cluster.servers[1].resume()
                #expect(error == nil, "round \(round): \(String(describing: error))")
                #expect(
                    !read.failures.isEmpty && read.failures.values.allSatisfy { $0.code == .timeout },
                    "round \(round)"
                )
                #expect(read.hits.allSatisfy { $0.value == "value-of-\($0.key)" }, "round \(round)")
                #expect(elapsed < .milliseconds(450) * 2, "round \(round) took \(elapsed)")
                let all = try memc.getMulti(keys, as: String.self).hits
                #expect(all.count == keys.count)
                #expect(all.allSatisfy { $0.value == "value-of-\($0.key)" })
                for key in keys.prefix(20) {
                    #expect(try memc.get(key, as: String.self) == "value-of-\(key)")
                }
            }
        }
    }
}
