import Foundation
import Memcached
import MemcachedTestSupport
import Testing

/// Values of every supported type survive a trip through a real server byte for byte.
@Suite("Value round trips", .offCooperativePool)
struct ValueRoundTripTests {
    @Test("every supported type round-trips with python-memcached's flags")
    func everyType() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster)
            let server = cluster.servers[0]

            let binary: [UInt8] = [0x00, 0xFF, 0x0D, 0x0A, 0x00, 0x7F, 0x80, 0x20]
            try memc.set("bytes", binary)
            #expect(try memc.get("bytes", as: [UInt8].self) == binary)
            #expect(try storedFlags("bytes", on: server) == 0)

            let data = Data(binary.reversed())
            try memc.set("data", data)
            #expect(try memc.get("data", as: Data.self) == data)

            let text = "héllo, 会, ключ, 🎬\r\nEND\r\n"
            try memc.set("text", text)
            #expect(try memc.get("text", as: String.self) == text)
            #expect(try storedFlags("text", on: server) == 16)

            try memc.set("int", Int.min)
            #expect(try memc.get("int", as: Int.self) == Int.min)
            #expect(try storedFlags("int", on: server) == 2)
            try memc.set("uint64", UInt64.max)
            #expect(try memc.get("uint64", as: UInt64.self) == UInt64.max)
            try memc.set("int8", Int8(-128))
            #expect(try memc.get("int8", as: Int8.self) == -128)
            try memc.set("uint16", UInt16.max)
            #expect(try memc.get("uint16", as: UInt16.self) == .max)
            try memc.set("int32", Int32.min)
            #expect(try memc.get("int32", as: Int32.self) == .min)

            try memc.set("true", true)
            try memc.set("false", false)
            #expect(try memc.get("true", as: Bool.self) == true)
            #expect(try memc.get("false", as: Bool.self) == false)
            #expect(try storedFlags("true", on: server) == 2)

            for (index, double) in [0.1, -2.5e300, Double.infinity, -Double.infinity, Double.leastNonzeroMagnitude]
                .enumerated()
            {
                try memc.set("double\(index)", double)
                #expect(try memc.get("double\(index)", as: Double.self) == double)
            }
            try memc.set("nan", Double.nan)
            #expect(try memc.get("nan", as: Double.self)?.isNaN == true)
            #expect(try storedFlags("double0", on: server) == 1)

            let films = [
                Film(filmID: 2, title: "ACE GOLDFINGER", rentalRate: 4.99, tags: ["a", "b"], sequel: nil),
                Film(filmID: 7, title: "AIRPLANE SIERRA", rentalRate: 4.99, tags: [], sequel: "AIRPORT POLLOCK"),
            ]
            try memc.set("films", films)
            #expect(try memc.get("films", as: [Film].self) == films)
            #expect(try storedFlags("films", on: server) == 1)
            let stored = try server.rawCommand("get films\r\n")
            #expect(stored.contains("\"title\":\"ACE GOLDFINGER\""), "Codable values are stored as JSON")
        }
    }

    @Test("values up to 1 MiB - 1 KiB round-trip; larger ones are refused with typed errors")
    func largeValues() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster)
            var generator = SystemRandomNumberGenerator()
            let large = (0..<(1_048_576 - 1_024)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            try memc.set("large", large)
            #expect(try memc.get("large", as: [UInt8].self) == large)

            // Over the client's limit: refused before sending.
            let before = try bytesRead(cluster.servers[0])
            let tooLarge = [UInt8](repeating: 1, count: 1_048_577)
            do {
                try memc.set("too-large", tooLarge)
                Issue.record("a value over maximumValueLength must be refused")
            } catch let error as MemcachedError {
                #expect(error.code == .valueTooLarge)
                #expect(error.key == "too-large")
            }
            #expect(try bytesRead(cluster.servers[0]) - before == 7, "nothing was sent for the refused value")

            // Under the client's limit but over the server's (which counts key and header): the
            // server refuses, the error is typed, and the connection stays usable.
            let nearLimit = [UInt8](repeating: 2, count: 1_048_576)
            #expect(throws: MemcachedError.self) { try memc.set("near-limit", nearLimit) }
            do {
                try memc.set("near-limit", nearLimit)
            } catch let error as MemcachedError {
                #expect([.itemTooBig, .serverError].contains(error.code), "got \(error.code)")
            }
            #expect(try memc.get("large", as: [UInt8].self) == large)
            #expect(try memc.get("near-limit", as: [UInt8].self) == nil)
        }
    }

    @Test("a larger server item size is usable when the client limit is raised")
    func largerItemSize() throws {
        try withMemcached(arguments: ["-I", "2m"]) { cluster in
            let memc = try connect(cluster) { $0.maximumValueLength = 2 * 1_048_576 }
            let value = [UInt8](repeating: 3, count: 1_500_000)
            try memc.set("big", value)
            #expect(try memc.get("big", as: [UInt8].self) == value)
        }
    }

    @Test("values over the threshold are zlib-compressed with flag 8 and read back")
    func compression() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster) { $0.compressionThreshold = 100 }
            let text = String(repeating: "compressible text ", count: 1_000)
            try memc.set("big", text)
            try memc.set("small", "short")
            try memc.set("number", 123_456_789_012)
            #expect(try storedFlags("big", on: cluster.servers[0]) == 16 | 8)
            #expect(try storedFlags("small", on: cluster.servers[0]) == 16)
            #expect(try storedFlags("number", on: cluster.servers[0]) == 2, "integers stay uncompressed for incr")
            #expect(try memc.get("big", as: String.self) == text)
            let raw = try cluster.servers[0].rawCommand("get big\r\n")
            #expect(raw.utf8.count < text.utf8.count / 4, "the server holds the compressed form")

            // A client without compression still reads compressed values.
            let plain = try connect(cluster)
            #expect(try plain.get("big", as: String.self) == text)
            let films = (0..<50).map { Film(filmID: $0, title: "FILM \($0)", rentalRate: 0.99, tags: [], sequel: nil) }
            try memc.set("films", films)
            #expect(try storedFlags("films", on: cluster.servers[0]) == 1 | 8)
            #expect(try plain.get("films", as: [Film].self) == films)
        }
    }

    @Test("undecodable values give a typed error with the key, and the connection stays usable")
    func undecodable() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster)
            try memc.set("word", "not a number")
            do {
                _ = try memc.get("word", as: Int.self)
                Issue.record("decoding text as Int must fail")
            } catch let error as MemcachedError {
                #expect(error.code == .undecodableValue)
                #expect(error.key == "word")
            }
            // A Python pickle (protocol 0, python-memcached's default) under the serialized flag.
            _ = try cluster.servers[0].rawCommand("set pickled 1 0 5\r\n(lp0.\r\n", until: "\r\n")
            #expect(throws: MemcachedError.self) { try memc.get("pickled", as: [Film].self) }
            // A corrupt value flagged as compressed.
            _ = try cluster.servers[0].rawCommand("set corrupt 24 0 5\r\nhello\r\n", until: "\r\n")
            do {
                _ = try memc.get("corrupt", as: String.self)
                Issue.record("corrupt compressed data must fail")
            } catch let error as MemcachedError {
                #expect(error.code == .decompressionFailed)
            }
            #expect(try memc.get("word", as: String.self) == "not a number")
            try memc.setMulti(["a": "1", "b": "x"])
            // The value that does not decode fails its own key only.
            let numbers = try memc.getMulti(["a", "b"], as: Int.self)
            #expect(numbers.hits == ["a": 1])
            #expect(numbers.failures["b"]?.code == .undecodableValue)
            #expect(numbers.failures["b"]?.key == "b")
            #expect(
                try memc.getMulti(["a", "b"], as: String.self).hits == ["a": "1", "b": "x"],
                "no stale replies after a decoding error"
            )
        }
    }
}
