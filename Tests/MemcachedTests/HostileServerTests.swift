import Foundation
import MemcachedTestSupport
import Synchronization
import Testing

@testable import Memcached

/// Replies a broken or hostile server sends, each answered by a typed error, within the timeout,
/// with nothing left on the connection: the next command on the same connection reads its own
/// key's value. Each reply is sent by a real loopback server (``ScriptedServer``).
@Suite("Hostile servers", .offCooperativePool)
struct HostileServerTests {
    /// The value the server holds for ``goodKey``: the check after every fault.
    static let goodKey = "good"
    static let goodReply = Array("VALUE good 16 5 77\r\nright\r\nEND\r\n".utf8)

    /// A server that answers any read that asks for `bad` with `hostileReply`, once per
    /// connection, and a read for `good` correctly.
    static func server(answering hostileReply: [UInt8]) throws -> ScriptedServer {
        try ScriptedServer { line in
            let fields = line.split(separator: " ")
            switch fields.first {
            case "get", "gets":
                if fields.contains("bad") { return hostileReply }
                return fields.contains(Substring(goodKey)) ? goodReply : Array("END\r\n".utf8)
            case "version":
                return Array("VERSION 1.6.18\r\n".utf8)
            case "quit":
                return nil
            default:
                return Array("ERROR\r\n".utf8)
            }
        }
    }

    static func connect(
        to server: ScriptedServer,
        _ adjust: (inout MemcachedConfiguration) -> Void = { _ in }
    )
        throws -> MemcachedConnection
    {
        var configuration = try MemcachedConfiguration(servers: [server.address])
        configuration.timeout = .milliseconds(500)
        configuration.connectTimeout = .milliseconds(500)
        adjust(&configuration)
        return try MemcachedConnection(configuration: configuration)
    }

    /// The three read paths: single get, getMulti, getMulti(forEachHit:).
    enum ReadPath: String, CaseIterable, CustomStringConvertible {
        case get, getMulti, forEachHit
        var description: String { rawValue }

        /// Reads the key `bad`, throwing its error: the multi-key reads report it among their
        /// failures, and must not hand it over as well.
        func read(_ memc: MemcachedConnection) throws {
            switch self {
            case .get:
                _ = try memc.get("bad", as: String.self)
            case .getMulti:
                let result = try memc.getMulti(["bad", "other"], as: String.self)
                if let failure = result.failures["bad"] {
                    #expect(result.hits["bad"] == nil, "a failed key is not a hit too")
                    throw failure
                }
            case .forEachHit:
                var handed: Set<String> = []
                let failures = try memc.getMulti(["bad", "other"]) { key, _, _ in handed.insert(key) }
                if let failure = failures["bad"] {
                    #expect(!handed.contains("bad"), "a failed key is not handed over too")
                    throw failure
                }
            }
        }
    }

    /// Sends `reply` to a read on `path`, expects a typed error within the timeout, then the good
    /// key's own value on the same connection.
    func expectRejected(
        _ reply: String,
        on path: ReadPath,
        code expected: Set<MemcachedError.Code>? = nil,
        _ adjust: (inout MemcachedConfiguration) -> Void = { _ in },
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let server = try Self.server(answering: Array(reply.utf8))
        defer { server.stop() }
        let memc = try Self.connect(to: server, adjust)
        let (elapsed, error) = timed { try path.read(memc) }
        let code = (error as? MemcachedError)?.code
        #expect(code != nil, "\(path): \(reply.debugDescription) was accepted", sourceLocation: sourceLocation)
        if let expected {
            #expect(
                code.map(expected.contains) == true,
                "\(path): \(String(describing: error))",
                sourceLocation: sourceLocation
            )
        }
        #expect(
            elapsed < Duration.milliseconds(1_750).scaledForTests,
            "\(path) took \(elapsed)",
            sourceLocation: sourceLocation
        )
        #expect(
            try memc.get(Self.goodKey, as: String.self) == "right",
            "\(path): the next read on the connection got its own value",
            sourceLocation: sourceLocation
        )
    }

    @Test(
        "a value length of -1, -2 or near 2^64 is a protocol error, never a crash",
        arguments: ReadPath.allCases,
        ["-1", "-2", "-3", "18446744073709551615", "18446744073709551614", "18446744073709551613"]
    )
    func negativeOrHugeLength(path: ReadPath, length: String) throws {
        // -1 and -2 wrap to a buffer of 1 or 0 bytes inside libmemcached, which then writes before
        // it; longer ones ask for about 2^64 bytes, which the allocation cap refuses.
        try expectRejected("VALUE bad 16 \(length) 1\r\nabc\r\nEND\r\n", on: path)
    }

    @Test(
        "a length past 2^64 is a connection failure, not a miss (libmemcached closes the connection and says miss)",
        arguments: ReadPath.allCases
    )
    func lengthPastTwoToTheSixtyFour(path: ReadPath) throws {
        // libmemcached's parser fails on strtoull's ERANGE, closes the connection and reports a
        // miss, keeping the real code to itself; the closed socket gives it away.
        try expectRejected(
            "VALUE bad 16 99999999999999999999 1\r\nabc\r\nEND\r\n",
            on: path,
            code: [.connectionFailure]
        )
    }

    @Test(
        "an error line in place of the values fails the read, and what follows it is never read as a value",
        arguments: ReadPath.allCases,
        [
            "CLIENT_ERROR bad command line format\r\n",
            "NOT_FOUND\r\n",
            "HTTP/1.1 400 Bad Request\r\n",
            "VALUE\r\n",
            "SERVER_ERROR\r\n",
        ]
    )
    func errorLineThenLeftovers(path: ReadPath, line: String) throws {
        // The leftover is the good key's value with another value: read by the next command as
        // its own, it would be "intruder".
        try expectRejected(line + "VALUE good 16 8 1\r\nintruder\r\nEND\r\n", on: path)
    }

    @Test(
        "ERROR or SERVER_ERROR followed by forged bytes fails the read, and the bytes reach no other read",
        arguments: ReadPath.allCases,
        [
            "SERVER_ERROR out of memory storing object\r\n",
            "SERVER_ERROR object too large for cache\r\n",
            "ERROR\r\n",
        ]
    )
    func hiddenErrorLines(path: ReadPath, line: String) throws {
        // libmemcached's fetch loop turns these into "not found" without recording them anywhere
        // its API can read, and stops reading there; the forged value stays in its read buffer,
        // which the handle checks after every call (ServerConnectionState).
        try expectRejected(line + "VALUE good 16 8 1\r\nintruder\r\nEND\r\n", on: path, code: [.protocolError])
    }

    @Test("binary: a counter really at 2^64 - 1 is returned (libmemcached's 'no value read' is confirmed with a get)")
    func binaryCounterAtMaximum() throws {
        try withMemcached { cluster in
            let memc = try MemcachedTests.connect(cluster, wireProtocol: .binary)
            #expect(try memc.set("counter", String(UInt64.max - 1)))
            #expect(try memc.increment("counter") == .max)
            #expect(try memc.decrement("counter", by: 0) == .max)
            #expect(try memc.increment("counter") == 0, "memcached wraps")
        }
    }

    @Test("an honest server's error line after some values fails the multi-get with its code")
    func honestServerErrorMidReply() throws {
        // What memcached sends when it runs out of memory while writing a multi-get reply.
        let server = try Self.server(
            answering: Array("VALUE bad 16 1 1\r\nx\r\nSERVER_ERROR out of memory writing get response\r\n".utf8)
        )
        defer { server.stop() }
        let memc = try Self.connect(to: server)
        let result = try memc.getMulti(["bad", "other"], as: String.self)
        #expect(result.hits.isEmpty, "the value read before the error line is not handed over")
        #expect(result.failures["bad"]?.code == .serverMemoryAllocationFailure)
        #expect(result.failures["other"]?.code == .serverMemoryAllocationFailure)
        #expect(try memc.get(Self.goodKey, as: String.self) == "right")
    }

    @Test(
        "a length claim over the receive cap fails at once, before the memory is reserved",
        arguments: ReadPath.allCases
    )
    func lengthOverTheCap(path: ReadPath) throws {
        // 4 GiB claimed and 3 bytes sent: without the cap libmemcached reserves 4 GiB and waits
        // for the rest until the timeout.
        try expectRejected("VALUE bad 0 4294967295 1\r\nabc", on: path, code: [.memoryAllocationFailure])
        // A real value just over a small cap.
        let value = String(repeating: "v", count: 4_096)
        try expectRejected("VALUE bad 0 4096 1\r\n\(value)\r\nEND\r\n", on: path) {
            $0.maximumReceivedValueLength = 1_000
        }
    }

    @Test("a value up to the receive cap is read in full")
    func lengthAtTheCap() throws {
        let value = String(repeating: "v", count: 1_000)
        let server = try Self.server(answering: Array("VALUE bad 16 1000 1\r\n\(value)\r\nEND\r\n".utf8))
        defer { server.stop() }
        let memc = try Self.connect(to: server) { $0.maximumReceivedValueLength = 1_000 }
        #expect(try memc.get("bad", as: String.self) == value)
        #expect(try memc.getMulti(["bad"], as: String.self).hits == ["bad": value])
    }

    @Test(
        "a data block that does not match its length, or a malformed VALUE line, is rejected",
        arguments: ReadPath.allCases,
        [
            "VALUE bad 16 2 1\r\nabcdef\r\nEND\r\n",  // longer than claimed
            "VALUE bad abc 1 1\r\nx\r\nEND\r\n",  // flags not a number
            "VALUE bad 16 5 1\r\nab\r\nEND\r\n",  // shorter than claimed
            "VALUE bad 16 1 1\r\nx\r\nVALUE bad 16 1 1\r\ny\r\nEND\r\n",  // the key twice
        ]
    )
    func malformedValue(path: ReadPath, reply: String) throws {
        try expectRejected(reply, on: path)
    }

    @Test("an overlong key, then silence, in a multi-get over two entries leaves the results whole (ASan checks in CI)")
    func overlongKeyThenAnotherServer() throws {
        // One server at weight 2 under modula is two libmemcached entries, two connections: the
        // first request gets a VALUE line with an overlong key (whose bytes reach the result's
        // flags) and then silence; the second gets a normal value, read into the same result,
        // which sets the key length back to normal.
        let requests = Mutex(0)
        let overlong = String(repeating: "k", count: 300)
        let server = try ScriptedServer { line in
            guard line.hasPrefix("gets ") else { return line == "quit" ? nil : Array("ERROR\r\n".utf8) }
            let index = requests.withLock { count in
                defer { count += 1 }
                return count
            }
            let key = line.split(separator: " ")[1]
            return index == 0
                ? Array("VALUE \(overlong) 0 5 1\r\nab".utf8)
                : Array("VALUE \(key) 16 1 1\r\nx\r\nEND\r\n".utf8)
        }
        defer { server.stop() }
        var configuration = try MemcachedConfiguration(servers: [server.address])
        configuration.servers = [MemcachedServer(host: "127.0.0.1", port: server.port, weight: 2)]
        configuration.timeout = .milliseconds(300)
        let memc = try MemcachedConnection(configuration: configuration)
        let keys = (0..<8).map { "spread-\($0)" }
        #expect(Set(try keys.map { try memc.server(forKey: $0) }).count == 1, "one server, two entries")
        let result = try memc.getMulti(keys, as: String.self)
        #expect(result.hits.isEmpty)
        #expect(Set(result.failures.keys) == Set(keys))
        #expect(
            result.failures.values.allSatisfy { [.protocolError, .timeout].contains($0.code) },
            "\(result.failures)"
        )
        // The results are whole again: reads work and nothing freed is reused.
        requests.withLock { $0 = 1 }
        for _ in 0..<3 {
            #expect(try memc.get("spread-0", as: String.self) == "x")
        }
    }

    @Test("versions() asks over the text protocol even when the client speaks binary")
    func versionsOverText() throws {
        // A text-only server: a binary request has no line end and is never answered.
        let server = try ScriptedServer { line in
            line == "version" ? Array("VERSION 1.6.18\r\n".utf8) : (line == "quit" ? nil : Array("ERROR\r\n".utf8))
        }
        defer { server.stop() }
        var configuration = try MemcachedConfiguration(servers: [server.address])
        configuration.wireProtocol = .binary
        configuration.timeout = .milliseconds(500)
        let memc = try MemcachedConnection(configuration: configuration)
        #expect(try memc.versions().first?.result.get() == "1.6.18")
    }

    @Test(
        "a key longer than 250 bytes in a reply is a protocol error, never a memory overwrite",
        arguments: ReadPath.allCases
    )
    func overlongKey(path: ReadPath) throws {
        // libmemcached copies the key into a 251-byte buffer without a check; the results this
        // library reads into are followed by padding, and the length is refused.
        let key = String(repeating: "k", count: 320)
        try expectRejected("VALUE \(key) 16 1 1\r\nx\r\nEND\r\n", on: path, code: [.protocolError])
    }

    @Test("a flood of values for one key ends the read at the first extra value", arguments: ReadPath.allCases)
    func flood(path: ReadPath) throws {
        let block = "VALUE bad 16 1 1\r\nx\r\n"
        // A single get finds a second value; a multi-get, a second answer for one key.
        try expectRejected(
            String(repeating: block, count: 5_000) + "END\r\n",
            on: path,
            code: [.protocolError, .unexpectedKey]
        )
    }

    @Test("gets refuses a value without a CAS token; cas refuses the token 0")
    func casTokenZero() throws {
        let server = try Self.server(answering: Array("VALUE bad 16 1\r\nx\r\nEND\r\n".utf8))
        defer { server.stop() }
        let memc = try Self.connect(to: server)
        #expect(try memc.get("bad", as: String.self) == "x", "get needs no token")
        let error = try #require(throws: MemcachedError.self) { try memc.gets("bad", as: String.self) }
        #expect(error.code == .protocolError)
        #expect(try memc.get(Self.goodKey, as: String.self) == "right")

        try withMemcached { cluster in
            for wireProtocol in [MemcachedConfiguration.WireProtocol.ascii, .binary] {
                let real = try MemcachedTests.connect(cluster, wireProtocol: wireProtocol)
                try real.set("k", "v")
                let zero = try #require(throws: MemcachedError.self) {
                    try real.cas("k", "w", token: MemcachedCASToken(rawValue: 0))
                }
                #expect(zero.code == .invalidArguments)
                #expect(try real.get("k", as: String.self) == "v", "\(wireProtocol): nothing was stored")
            }
        }
    }

    @Test("versions() is healthy after an error reply, and its errors carry no pointer")
    func versionsAfterAnError() throws {
        try withMemcached { cluster in
            for wireProtocol in [MemcachedConfiguration.WireProtocol.ascii, .binary] {
                let memc = try MemcachedTests.connect(cluster, wireProtocol: wireProtocol)
                try memc.set("word", "abc")
                #expect(throws: MemcachedError.self) { try memc.increment("word") }
                let versions = try memc.versions()
                #expect(versions.count == 1)
                #expect((try? versions[0].result.get())?.isEmpty == false, "\(wireProtocol): \(versions)")
            }
        }
        let dead = try RefusingLoopbackPort()
        defer { dead.release() }
        let memc = try MemcachedConnection(configuration: try MemcachedConfiguration(servers: [dead.address]))
        let versions = try memc.versions()
        let error = try #require(
            versions.first.flatMap { result -> MemcachedError? in
                if case .failure(let error) = result.result { return error }
                return nil
            }
        )
        #expect(!error.message.contains("0x"), "\(error.message)")
        #expect(!error.message.contains("  "), "\(error.message)")
        #expect(!error.message.contains(" -> "), "\(error.message)")
    }

    @Test(
        "a compressed value inflates into at most maximumReceivedValueLength bytes; a write refuses what no read could return"
    )
    func compressionWithinTheCap() throws {
        let zeros = [UInt8](repeating: 0, count: 300 << 10)
        let compressed = try #require(Compression.compress(zeros))
        #expect(compressed.count < 2_000, "a thousandfold")
        let refused = try #require(throws: MemcachedError.self) {
            try compressed.withUnsafeBytes { try Compression.decompress($0, limit: 100 << 10) }
        }
        #expect(refused.code == .decompressionFailed)
        #expect(try compressed.withUnsafeBytes { try Compression.decompress($0, limit: 300 << 10) } == zeros)

        try withMemcached { cluster in
            // Stored by a client whose cap is larger, read by one whose cap is smaller.
            let writer = try MemcachedTests.connect(cluster) { $0.compressionThreshold = 100 }
            try writer.set("big", zeros)
            let reader = try MemcachedTests.connect(cluster) { $0.maximumReceivedValueLength = 100 << 10 }
            let error = try #require(throws: MemcachedError.self) { try reader.get("big", as: [UInt8].self) }
            #expect(error.code == .decompressionFailed)
            try writer.set("small", "fine")
            #expect(try reader.get("small", as: String.self) == "fine")

            let capped = try MemcachedTests.connect(cluster) {
                $0.compressionThreshold = 100
                $0.maximumReceivedValueLength = 100 << 10
            }
            let tooLarge = try #require(throws: MemcachedError.self) { try capped.set("never", zeros) }
            #expect(tooLarge.code == .valueTooLarge, "refused before compressing: no read could return it")
            #expect(try writer.get("never", as: [UInt8].self) == nil)
        }
    }

    @Test("a 4 GiB length claim followed by 512 MiB of data leaves peak memory within the cap")
    func peakMemoryUnderAHugeClaim() throws {
        // The server is a process of its own, so that the 512 MiB it sends are not counted here.
        let flood = try FloodServerProcess(escapedHeader: #"VALUE big 0 4294967295 1\r\n"#, megabytes: 512)
        defer { flood.stop() }
        let memc = try MemcachedConnection(
            configuration: {
                var configuration = try MemcachedConfiguration(servers: ["127.0.0.1:\(flood.port)"])
                configuration.timeout = .seconds(2)
                configuration.maximumReceivedValueLength = 16 << 20
                return configuration
            }()
        )
        let before = peakResidentBytes()
        let (elapsed, error) = timed { _ = try memc.get("big", as: [UInt8].self) }
        let growth = peakResidentBytes() - before
        print(
            "a 4 GiB claim: peak RSS grew \(growth >> 20) MiB (cap 16 MiB), \(String(describing: error)) after \(elapsed)"
        )
        #expect((error as? MemcachedError)?.code == .memoryAllocationFailure, "\(String(describing: error))")
        // Without the cap libmemcached reserves 4 GiB and fills it with what arrives: 512 MiB here.
        #expect(growth < 64 << 20, "peak RSS grew by \(growth >> 20) MiB")
    }
}

/// The process's peak resident set so far, in bytes.
func peakResidentBytes() -> Int {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return usage.ru_maxrss * 1_024
}

/// A Python process on a free loopback port that answers the first request line with a header
/// (given with Python string escapes such as `\\r\\n`) followed by `megabytes` MiB of zeros, as
/// fast as the socket takes them.
final class FloodServerProcess {
    let process = Process()
    let port: Int

    static let script = """
        import socket, sys
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        print(listener.getsockname()[1], flush=True)
        header, megabytes = sys.argv[1].encode().decode("unicode_escape").encode(), int(sys.argv[2])
        connection, _ = listener.accept()
        connection.recv(4096)
        try:
            connection.sendall(header)
            chunk = bytes(1 << 20)
            for _ in range(megabytes):
                connection.sendall(chunk)
        except OSError:
            pass
        connection.close()
        """

    init(escapedHeader: String, megabytes: Int) throws {
        let output = Pipe()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", Self.script, escapedHeader, "\(megabytes)"]
        process.standardOutput = output
        try process.run()
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = output.fileHandleForReading.availableData
            guard !chunk.isEmpty else { break }
            line.append(chunk)
        }
        guard let port = Int(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        else {
            process.terminate()
            throw MemcachedError(code: .failure, message: "the flood server did not start")
        }
        self.port = port
    }

    func stop() {
        if process.isRunning {
            process.terminate()
        }
        process.waitUntilExit()
    }
}
