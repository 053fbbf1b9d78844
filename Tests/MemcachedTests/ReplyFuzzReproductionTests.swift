import Foundation
import Memcached
import MemcachedTestSupport
import Synchronization
import Testing

/// The minimal replies behind each failure class the reply fuzzer found, one command each, for
/// whoever fixes them: a real memcached behind a ``MutatingProxy`` whose first reply to the
/// command is replaced by exact bytes, then a known-good check on the same connection.
///
/// Every case that does not abort the process runs by default, as a named regression test; the
/// ones libmemcached cannot be defended against (SECURITY.md) run as known issues, so a fix shows
/// up as "known issue not recorded". The cases that abort the process in a libmemcached
/// assertion run only when named: `MEMCACHED_FUZZ_REPRO=<name>` (or a comma-separated list).
/// Each prints what happened; a case fails when the library misbehaves as described.
@Suite("Reply fuzzer reproductions", .offCooperativePool)
struct ReplyFuzzReproductionTests {
    /// One failure class: which command meets which reply.
    struct Case: Sendable, CustomTestStringConvertible {
        enum Command: Sendable {
            case get, gets, getMultiForEachHit, set, append, increment, decrement
        }

        var name: String
        var wireProtocol: MemcachedConfiguration.WireProtocol
        var command: Command
        /// The start of the request summary whose reply is replaced (see `AppliedMutation.request`).
        var requestPrefix: String
        var reply: [UInt8]
        /// What happens with today's library, printed with the outcome.
        var today: String
        var crashes = false
        /// A libmemcached limitation SECURITY.md states: runs as a known issue.
        var residual = false

        var testDescription: String { name }
    }

    static let valueKey = "k"
    static let storedValue = "initial-k3"

    static func text(_ string: String) -> [UInt8] { Array(string.utf8) }

    /// A binary response header (and body) with the given fields.
    static func binary(opcode: UInt8, status: UInt16, opaque: UInt32, body: [UInt8] = []) -> [UInt8] {
        var header: [UInt8] = [0x81, opcode, 0, 0, 0, 0, UInt8(status >> 8), UInt8(status & 0xFF)]
        header += withUnsafeBytes(of: UInt32(body.count).bigEndian, Array.init)
        header += withUnsafeBytes(of: opaque.bigEndian, Array.init)
        header += [UInt8](repeating: 0, count: 8)
        return header + body
    }

    /// A binary response with a key, extras and a value, its header lengths consistent.
    static func binaryKeyed(opcode: UInt8, key: [UInt8], extras: [UInt8], value: [UInt8]) -> [UInt8] {
        let keyLength = UInt16(truncatingIfNeeded: key.count)
        var header: [UInt8] = [
            0x81, opcode, UInt8(keyLength >> 8), UInt8(keyLength & 0xFF), UInt8(extras.count), 0, 0, 0,
        ]
        header += withUnsafeBytes(of: UInt32(extras.count + key.count + value.count).bigEndian, Array.init)
        header += [UInt8](repeating: 0, count: 12)
        return header + extras + key + value
    }

    static let cases: [Case] = [
        Case(
            name: "negativeLength",
            wireProtocol: .ascii,
            command: .get,
            requestPrefix: "gets k",
            reply: text("VALUE k 16 -1\r\ninitial-k3\r\nEND\r\n"),
            today: "crash: Swift runtime trap 'UnsafeRawBufferPointer with negative count'",
            crashes: true
        ),
        Case(
            name: "hugeLength",
            wireProtocol: .ascii,
            command: .get,
            requestPrefix: "gets k",
            reply: text("VALUE k 16 18446744073709551615\r\ninitial-k3\r\nEND\r\n"),
            today: "crash: Swift runtime trap 'UnsafeRawBufferPointer with negative count'",
            crashes: true
        ),
        Case(
            name: "length4GiB",
            wireProtocol: .ascii,
            command: .get,
            requestPrefix: "gets k",
            reply: text("VALUE k 0 4294967295\r\ninitial-k3\r\nEND\r\n"),
            today: "libmemcached reserves a 4 GiB buffer, then times out"
        ),
        Case(
            name: "lengthOneShort",
            wireProtocol: .ascii,
            command: .get,
            requestPrefix: "gets k",
            reply: text("VALUE k 16 9\r\ninitial-k3\r\nEND\r\n"),
            today: "wrong value: get returns 'initial-k' (the byte in place of \\r\\n is not checked)"
        ),
        Case(
            name: "nonNumericLength",
            wireProtocol: .ascii,
            command: .get,
            requestPrefix: "gets k",
            reply: text("VALUE k 16 1e3\r\ninitial-k3\r\nEND\r\n"),
            today: "wrong value: get returns 'i' (strtoull stops at 'e')"
        ),
        Case(
            name: "hexFlags",
            wireProtocol: .ascii,
            command: .gets,
            requestPrefix: "gets k",
            reply: text("VALUE k 0x10 10 35\r\ninitial-k3\r\nEND\r\n"),
            today: "wrong value: gets returns a truncated value and token 10",
            residual: true
        ),
        Case(
            name: "negativeCAS",
            wireProtocol: .ascii,
            command: .gets,
            requestPrefix: "gets k",
            reply: text("VALUE k 16 10 -1\r\ninitial-k3\r\nEND\r\n"),
            today: "wrong value: gets returns token 18446744073709551615",
            residual: true
        ),
        Case(
            name: "storageAnsweredWithValue",
            wireProtocol: .ascii,
            command: .set,
            requestPrefix: "set k",
            reply: text("VALUE k 0 1\r\nx\r\nSTORED\r\n"),
            today: "crash: libmemcached storage.cc:257 assert(memcached_failed(rc)) aborts",
            crashes: true
        ),
        Case(
            name: "storageAnsweredWithEnd",
            wireProtocol: .ascii,
            command: .set,
            requestPrefix: "set k",
            reply: text("END\r\n"),
            today: "crash: libmemcached storage.cc:257 assert(memcached_failed(rc)) aborts",
            crashes: true
        ),
        Case(
            name: "serverErrorThenLeftoverValue",
            wireProtocol: .ascii,
            command: .get,
            requestPrefix: "gets k",
            reply: text("SERVER_ERROR out of memory storing object\r\nVALUE fuzzcheck-x 0 5\r\nstale\r\nEND\r\n"),
            today: "wrong value: the next get of fuzzcheck-x returned 'stale' (fixed: the leftover is seen)"
        ),
        Case(
            name: "slowDrip",
            wireProtocol: .ascii,
            command: .get,
            requestPrefix: "gets k",
            reply: [],
            today: "slow: one byte every 50 ms holds get for the whole drip, far past the 200 ms timeout"
        ),
        Case(
            // libmemcached copies the key into the result's 251-byte buffer without a check.
            name: "binaryOverlongKey",
            wireProtocol: .binary,
            command: .get,
            requestPrefix: "1 quiet + opcode 0x0a",
            reply: binaryKeyed(
                opcode: 0x0D,
                key: [UInt8](repeating: UInt8(ascii: "k"), count: 60_000),
                extras: [0, 0, 0, 0],
                value: text("x")
            ) + binary(opcode: 0x0A, status: 0, opaque: 0),
            today: "a heap overflow of 60,000 bytes past the result, into the padding that follows it"
        ),
        Case(
            name: "binaryDecrementAuthError",
            wireProtocol: .binary,
            command: .decrement,
            requestPrefix: "opcode 0x06",
            reply: binary(opcode: 0x06, status: 0x20, opaque: 0, body: text("fuzzed error")),
            today: "crash: libmemcached auto.cc:32 assert(memcached_last_error != SUCCESS) aborts",
            crashes: true
        ),
    ]

    static func selected(_ testCase: Case) -> Bool {
        guard let names = ProcessInfo.processInfo.environment["MEMCACHED_FUZZ_REPRO"]?.split(separator: ",") else {
            return !testCase.crashes
        }
        return names.contains { $0 == testCase.name } || (names.contains("all") && !testCase.crashes)
    }

    @Test("a minimal reply the fuzzer found is handled", arguments: cases)
    func reproduce(_ testCase: Case) throws {
        guard Self.selected(testCase) else {
            print(
                "Reproduction \(testCase.name): not run, it aborts the process (MEMCACHED_FUZZ_REPRO=\(testCase.name))"
            )
            return
        }
        if testCase.residual {
            withKnownIssue("a libmemcached 1.1.4 limitation (SECURITY.md)") { try run(testCase) }
        } else {
            try run(testCase)
        }
    }

    func run(_ testCase: Case) throws {
        try withMemcached { cluster in
            let backend = cluster.servers[0]
            let replaced = Atomic<Bool>(false)
            var configuration = MutatingProxy.Configuration(seed: 1)
            configuration.enabledMutations = testCase.name == "slowDrip" ? [.slowDrip] : []
            configuration.mutationProbability = testCase.name == "slowDrip" ? 1 : 0
            configuration.dripIntervalMilliseconds = 50...50
            configuration.maximumDripDuration = .seconds(3)
            let reply = testCase.reply
            let prefix = testCase.requestPrefix
            configuration.scriptedReply = { request, _ in
                guard !reply.isEmpty, request.hasPrefix(prefix) else { return nil }
                // Only the first matching reply: the check afterwards must see the real server.
                return replaced.exchange(true, ordering: .relaxed) ? nil : reply
            }
            let proxy = try MutatingProxy(backendPort: backend.port, configuration: configuration)
            defer { proxy.stop() }
            let direct = try ReplyFuzzTests.directConnection(to: backend)
            try direct.set(Self.valueKey, Self.storedValue)
            try direct.set("counter", 100)
            let connection = try MemcachedConnection(
                configuration: ReplyFuzzTests.fuzzedConfiguration(proxy: proxy, wireProtocol: testCase.wireProtocol)
            )
            print("Reproduction \(testCase.name): today: \(testCase.today)")
            print("Reproduction \(testCase.name): reply '\(escapedReplyBytes(reply))'")
            var outcome = ""
            let (elapsed, error) = timed {
                switch testCase.command {
                case .get:
                    outcome = "\(String(describing: try connection.get(Self.valueKey, as: String.self)))"
                case .gets:
                    let hit = try connection.gets(Self.valueKey, as: String.self)
                    outcome = "\(String(describing: hit?.value)) token \(String(describing: hit?.token))"
                    #expect(hit?.token == (try direct.gets(Self.valueKey, as: String.self))?.token, "wrong token")
                case .getMultiForEachHit:
                    try connection.getMulti([Self.valueKey]) { key, bytes, _ in
                        outcome += "\(key)='\(String(decoding: bytes, as: UTF8.self))' "
                    }
                case .set:
                    outcome = "\(try connection.set(Self.valueKey, "new"))"
                case .append:
                    outcome = "\(try connection.append(Self.valueKey, "+"))"
                case .increment:
                    outcome = "\(String(describing: try connection.increment("counter")))"
                case .decrement:
                    outcome = "\(String(describing: try connection.decrement("counter")))"
                }
            }
            print(
                "Reproduction \(testCase.name): \(testCase.command) "
                    + "\(error.map { "threw \($0)" } ?? "returned \(outcome)") after \(milliseconds(elapsed)) ms"
            )
            #expect(elapsed < ReplyFuzzTests.slowCallLimit, "the call took \(elapsed)")
            if testCase.name == "slowDrip" {
                // The call deadline ends it, however the server paces its bytes: well before the
                // drip would (3 s), with room for a loaded machine; CallDeadlineTests hold the
                // deadline itself to tighter bounds.
                #expect(elapsed < configuration.maximumDripDuration / 2, "a drip held the call for \(elapsed)")
            }
            if error == nil, [.get, .getMultiForEachHit].contains(testCase.command) {
                #expect(!outcome.contains("initial-k") || outcome.contains(Self.storedValue), "wrong value \(outcome)")
            }
            // The known-good check on the same connection: one error is the fault's, and timeouts
            // are a loaded machine's (see `StepRecorder.judge`).
            try direct.set("fuzzcheck-x", "fresh")
            var check: String?
            let checkBegan = ContinuousClock.now
            let checkError = timed { check = try connection.get("fuzzcheck-x", as: String.self) }.1
            if checkError != nil {
                while true {
                    do {
                        check = try connection.get("fuzzcheck-x", as: String.self)
                        break
                    } catch  where StepRecorder.mayRetryTimeout(error, checkBegan: checkBegan) {
                        continue
                    }
                }
            }
            print(
                "Reproduction \(testCase.name): the next get of fuzzcheck-x "
                    + "\(checkError.map { "threw \($0), then " } ?? "")returned \(String(describing: check))"
            )
            #expect(check == "fresh", "the check read a wrong value")
        }
    }
}
