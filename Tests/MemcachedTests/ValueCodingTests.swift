import Foundation
import MemcachedTestSupport
import Testing

@testable import Memcached

// MARK: - Helpers

/// The coding context of a connection with the default configuration.
private let defaultCoding = MemcachedCodingContext()

/// Decodes a value from bytes and flags through `init(memcachedBytes:flags:context:)`.
private func decode<Value: MemcachedValue>(
    _ type: Value.Type,
    _ bytes: [UInt8],
    _ flags: MemcachedFlags
) throws -> Value {
    try bytes.withUnsafeBytes { try Value(memcachedBytes: $0, flags: flags, context: defaultCoding) }
}

/// The error code a decode throws, or nil when it succeeds.
private func decodeFailure<Value: MemcachedValue>(
    _ type: Value.Type,
    _ bytes: [UInt8],
    _ flags: MemcachedFlags
) -> MemcachedError? {
    do {
        _ = try decode(type, bytes, flags)
        return nil
    } catch let error as MemcachedError {
        return error
    } catch {
        return MemcachedError(code: .failure, message: "unexpected error type: \(error)")
    }
}

/// ASCII decimal written digit by digit, independently of `String(_:)`.
private func decimalDigits<T: BinaryInteger>(_ value: T) -> [UInt8] {
    var magnitude = value.magnitude
    guard magnitude != 0 else { return [UInt8(ascii: "0")] }
    var digits: [UInt8] = []
    while magnitude != 0 {
        digits.append(UInt8(ascii: "0") + UInt8(magnitude % 10))
        magnitude /= 10
    }
    if value < 0 { digits.append(UInt8(ascii: "-")) }
    return digits.reversed()
}

/// Adds one to the magnitude of a decimal number written as ASCII digits (sign kept).
private func incrementMagnitude(_ digits: [UInt8]) -> [UInt8] {
    var result = digits
    let negative = result.first == UInt8(ascii: "-")
    let start = negative ? 1 : 0
    var index = result.count - 1
    while index >= start {
        if result[index] == UInt8(ascii: "9") {
            result[index] = UInt8(ascii: "0")
            index -= 1
        } else {
            result[index] += 1
            return result
        }
    }
    result.insert(UInt8(ascii: "1"), at: start)
    return result
}

private struct PythonFailure: Error, CustomStringConvertible {
    var status: Int32
    var stderr: String
    var description: String { "python3 exited with \(status): \(stderr)" }
}

/// Runs a Python 3 script with `input` on its standard input and returns its standard output.
/// A missing python3 makes the test fail, not skip.
private func runPython(_ script: String, input: [UInt8] = []) throws -> [UInt8] {
    let directory = FileManager.default.temporaryDirectory
    let inputURL = directory.appendingPathComponent("value-coding-\(UUID().uuidString).in")
    let errorURL = directory.appendingPathComponent("value-coding-\(UUID().uuidString).err")
    try Data(input).write(to: inputURL)
    _ = FileManager.default.createFile(atPath: errorURL.path, contents: nil)
    defer {
        try? FileManager.default.removeItem(at: inputURL)
        try? FileManager.default.removeItem(at: errorURL)
    }
    let stdinHandle = try FileHandle(forReadingFrom: inputURL)
    let stderrHandle = try FileHandle(forWritingTo: errorURL)
    defer {
        try? stdinHandle.close()
        try? stderrHandle.close()
    }
    let output = Pipe()
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", "-c", script]
    process.standardInput = stdinHandle
    process.standardOutput = output
    process.standardError = stderrHandle
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        let stderr = (try? String(contentsOf: errorURL, encoding: .utf8)) ?? ""
        throw PythonFailure(status: process.terminationStatus, stderr: stderr)
    }
    return Array(data)
}

// MARK: - Integer cases

/// One fixed-width integer type, checked by the generic body below.
private enum IntegerKind: String, CaseIterable, Sendable {
    case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64

    func check() throws {
        switch self {
        case .int: try checkInteger(Int.self)
        case .int8: try checkInteger(Int8.self)
        case .int16: try checkInteger(Int16.self)
        case .int32: try checkInteger(Int32.self)
        case .int64: try checkInteger(Int64.self)
        case .uint: try checkInteger(UInt.self)
        case .uint8: try checkInteger(UInt8.self)
        case .uint16: try checkInteger(UInt16.self)
        case .uint32: try checkInteger(UInt32.self)
        case .uint64: try checkInteger(UInt64.self)
        }
    }
}

private func checkInteger<T: FixedWidthInteger & MemcachedValue>(_ type: T.Type) throws {
    var values: [T] = [T.min, T.max, 0, 1, 42]
    if T.isSigned {
        values.append(T.zero &- 1)
    }
    for value in values {
        let payload = try value.memcachedPayload(context: defaultCoding)
        #expect(payload.flags == .integer, "\(T.self) \(value)")
        #expect(payload.flags.rawValue == 2)
        #expect(payload.bytes == decimalDigits(value), "\(T.self) \(value)")
        #expect(try decode(T.self, payload.bytes, payload.flags) == value)
        // python-memcached's long flag, text, raw bytes, and memcached's trailing padding after decr.
        #expect(try decode(T.self, payload.bytes, .long) == value)
        #expect(try decode(T.self, payload.bytes, .text) == value)
        #expect(try decode(T.self, payload.bytes, .bytes) == value)
        #expect(try decode(T.self, payload.bytes + Array("   ".utf8), .integer) == value)
        // A serialized object is never read as an integer.
        #expect(decodeFailure(T.self, payload.bytes, .serialized)?.code == .undecodableValue)
    }
    // One past each end overflows.
    let aboveMax = incrementMagnitude(decimalDigits(T.max))
    #expect(decodeFailure(T.self, aboveMax, .integer)?.code == .undecodableValue, "\(T.self) \(aboveMax)")
    let belowMin = T.isSigned ? incrementMagnitude(decimalDigits(T.min)) : Array("-1".utf8)
    #expect(decodeFailure(T.self, belowMin, .integer)?.code == .undecodableValue, "\(T.self) \(belowMin)")
    #expect(decodeFailure(T.self, Array("abc".utf8), .integer)?.code == .undecodableValue)
    #expect(decodeFailure(T.self, [], .integer)?.code == .undecodableValue)
    #expect(decodeFailure(T.self, Array("1 2".utf8), .integer)?.code == .undecodableValue)
}

// MARK: - Object coder fixtures

private struct Profile: Codable, Equatable, MemcachedValue {
    struct Address: Codable, Equatable {
        var city: String
        var zip: String?
    }

    var name: String
    var age: Int
    var tags: [[String]]
    var nickname: String?
    var missing: Int?
    var created: Date
    var history: [Date?]
    var addresses: [Address]
    var scores: [String: Double]
}

private let sampleProfile = Profile(
    name: "Zoë 会",
    age: 41,
    tags: [["a", "b"], [], ["ключ"]],
    nickname: nil,
    missing: 7,
    created: Date(timeIntervalSinceReferenceDate: 123_456_789.25),
    history: [Date(timeIntervalSince1970: 0), nil, Date(timeIntervalSinceReferenceDate: -0.5)],
    addresses: [.init(city: "Lyon", zip: nil), .init(city: "Oslo", zip: "0150")],
    scores: ["x": 1.5, "y": -0.25]
)

/// A custom coder: JSON with its bytes reversed, so only a coder that undoes it reads it back.
private struct ReversedJSONCoder: MemcachedObjectCoder {
    func encode<Value: Encodable>(_ value: Value) throws -> [UInt8] {
        Array(try JSONEncoder().encode(value).reversed())
    }

    func decode<Value: Decodable>(_ type: Value.Type, from bytes: UnsafeRawBufferPointer) throws -> Value {
        try JSONDecoder().decode(type, from: Data(bytes.reversed()))
    }
}

private struct AlwaysFailingCoder: MemcachedObjectCoder {
    struct Refused: Error {}

    func encode<Value: Encodable>(_ value: Value) throws -> [UInt8] {
        throw Refused()
    }

    func decode<Value: Decodable>(_ type: Value.Type, from bytes: UnsafeRawBufferPointer) throws -> Value {
        throw Refused()
    }
}

private func objectValue<Value: Decodable>(
    _ coder: any MemcachedObjectCoder,
    _ type: Value.Type,
    _ bytes: [UInt8],
    _ flags: MemcachedFlags
) throws -> Value {
    try bytes.withUnsafeBytes { try coder.value(type, bytes: $0, flags: flags) }
}

// MARK: - Tests

@Suite("Value coding", .offCooperativePool)
struct ValueCodingTests {
    // MARK: Flags

    @Test("Flags are python-memcached's")
    func flagValues() {
        #expect(MemcachedFlags.bytes.rawValue == 0)
        #expect(MemcachedFlags.serialized.rawValue == 1)
        #expect(MemcachedFlags.integer.rawValue == 2)
        #expect(MemcachedFlags.long.rawValue == 4)
        #expect(MemcachedFlags.compressed.rawValue == 8)
        #expect(MemcachedFlags.text.rawValue == 16)
    }

    // MARK: Strings and bytes

    @Test(
        "String round-trips as UTF-8 with flag 16",
        arguments: ["", "hello", "héllo wörld 会 🔑", "a\u{0}b", "\r\n", String(repeating: "x", count: 100_000)]
    )
    func stringRoundTrip(text: String) throws {
        let payload = text.memcachedPayload(context: defaultCoding)
        #expect(payload.flags.rawValue == 16)
        #expect(payload.bytes.count == text.utf8.count)
        #expect(try decode(String.self, payload.bytes, payload.flags) == text)
        // Raw bytes and integers read as text too.
        #expect(try decode(String.self, payload.bytes, .bytes) == text)
    }

    @Test("String encodes the exact UTF-8 bytes")
    func stringBytes() throws {
        #expect("é会".memcachedPayload(context: defaultCoding).bytes == [0xC3, 0xA9, 0xE4, 0xBC, 0x9A])
        #expect(try decode(String.self, [0x34, 0x32], .integer) == "42")
    }

    @Test("String refuses serialized data and invalid UTF-8")
    func stringRefusals() throws {
        let serialized = decodeFailure(String.self, Array("\"json\"".utf8), .serialized)
        #expect(serialized?.code == .undecodableValue)
        let invalid = decodeFailure(String.self, [0xFF, 0xFE], .text)
        #expect(invalid?.code == .undecodableValue)
        #expect(invalid?.message.contains("UTF-8") == true)
        // A truncated multi-byte sequence is invalid too.
        #expect(decodeFailure(String.self, [0x61, 0xE4, 0xBC], .text)?.code == .undecodableValue)
    }

    @Test("[UInt8] round-trips every byte value with flag 0 and reads anything")
    func byteArrayRoundTrip() throws {
        let all = (0...255).map { UInt8($0) }
        let payload = try all.memcachedPayload(context: defaultCoding)
        #expect(payload.flags.rawValue == 0)
        #expect(payload.bytes == all)
        #expect(try decode([UInt8].self, payload.bytes, payload.flags) == all)
        #expect(try decode([UInt8].self, [0xFF, 0xFE], .text) == [0xFF, 0xFE])
        #expect(try decode([UInt8].self, [0xFF, 0xFE], .serialized) == [0xFF, 0xFE])
        #expect(try decode([UInt8].self, [], .bytes) == [])
    }

    @Test("Data round-trips with flag 0")
    func dataRoundTrip() throws {
        var rng = SplitMix64(state: 7)
        let bytes = (0..<4_096).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        for data in [Data(), Data(bytes), Data([0xFF, 0xFE])] {
            let payload = data.memcachedPayload(context: defaultCoding)
            #expect(payload.flags.rawValue == 0)
            #expect(payload.bytes == Array(data))
            #expect(try decode(Data.self, payload.bytes, payload.flags) == data)
        }
        #expect(try decode(Data.self, [0xFF, 0xFE], .text) == Data([0xFF, 0xFE]))
    }

    // MARK: Integers

    @Test("Fixed-width integers round-trip as ASCII decimal with flag 2", arguments: IntegerKind.allCases)
    fileprivate func integerRoundTrip(_ kind: IntegerKind) throws {
        try kind.check()
    }

    @Test("Integers read long-flagged and padded text")
    func integerReadForms() throws {
        #expect(try decode(Int.self, Array("9   ".utf8), .integer) == 9)
        #expect(try decode(Int.self, Array("9   ".utf8), .text) == 9)
        #expect(try decode(Int.self, Array("12345678901".utf8), .long) == 12_345_678_901)
        #expect(try decode(UInt64.self, Array("18446744073709551615".utf8), .long) == UInt64.max)
        // Surrounding whitespace is accepted, as Python's int() accepts it.
        #expect((try? decode(Int.self, Array(" -3 ".utf8), .integer)) == -3)
        #expect((try? decode(Int.self, Array("7\n".utf8), .integer)) == 7)
        #expect((try? decode(Int.self, Array("\t8\r".utf8), .integer)) == 8)
        #expect((try? decode(Int.self, Array("-3\r\n".utf8), .integer)) == -3)
        #expect((try? decode(Int.self, Array("\r\n5".utf8), .integer)) == 5)
    }

    @Test("Integers refuse non-numbers and overflow")
    func integerRefusals() {
        #expect(decodeFailure(Int.self, Array("abc".utf8), .integer)?.code == .undecodableValue)
        #expect(decodeFailure(Int.self, Array("99999999999999999999999".utf8), .integer)?.code == .undecodableValue)
        #expect(decodeFailure(Int8.self, Array("128".utf8), .integer)?.code == .undecodableValue)
        #expect(decodeFailure(UInt8.self, Array("256".utf8), .integer)?.code == .undecodableValue)
        #expect(decodeFailure(UInt.self, Array("-1".utf8), .integer)?.code == .undecodableValue)
        #expect(decodeFailure(Int.self, Array("1.5".utf8), .integer)?.code == .undecodableValue)
        #expect(decodeFailure(Int.self, [0xFF], .integer)?.code == .undecodableValue)
        let error = decodeFailure(Int.self, Array("5".utf8), .serialized)
        #expect(error?.code == .undecodableValue)
        #expect(error?.message.contains("flags 1") == true)
    }

    // MARK: Bool

    @Test("Bool stores 1 or 0 with flag 2 and reads them back")
    func boolRoundTrip() throws {
        #expect(
            true.memcachedPayload(context: defaultCoding)
                == MemcachedPayload(bytes: [UInt8(ascii: "1")], flags: MemcachedFlags(rawValue: 2))
        )
        #expect(
            false.memcachedPayload(context: defaultCoding)
                == MemcachedPayload(bytes: [UInt8(ascii: "0")], flags: MemcachedFlags(rawValue: 2))
        )
        for value in [true, false] {
            let payload = value.memcachedPayload(context: defaultCoding)
            #expect(try decode(Bool.self, payload.bytes, payload.flags) == value)
        }
        #expect(try decode(Bool.self, Array("true".utf8), .serialized) == true)
        #expect(try decode(Bool.self, Array("false".utf8), .serialized) == false)
        #expect(try decode(Bool.self, Array("1 ".utf8), .integer) == true)
        #expect(decodeFailure(Bool.self, Array("2".utf8), .integer)?.code == .undecodableValue)
        #expect(decodeFailure(Bool.self, Array("yes".utf8), .text)?.code == .undecodableValue)
    }

    // MARK: Double

    static let doubles: [Double] = [
        0, -0.0, 1, 0.1, -2.5e300, 1e-7, 123_456.789, .pi, .greatestFiniteMagnitude,
        .leastNonzeroMagnitude, .leastNormalMagnitude, .infinity, -.infinity, .nan,
    ]

    @Test("Double round-trips exactly with flag 1", arguments: doubles)
    func doubleRoundTrip(value: Double) throws {
        let payload = value.memcachedPayload(context: defaultCoding)
        #expect(payload.flags.rawValue == 1)
        let decoded = try decode(Double.self, payload.bytes, payload.flags)
        if value.isNaN {
            #expect(decoded.isNaN)
        } else {
            #expect(decoded.bitPattern == value.bitPattern, "\(value) came back as \(decoded)")
        }
    }

    @Test("Finite Doubles are JSON numbers")
    func doubleIsJSONNumber() throws {
        for value in Self.doubles where value.isFinite {
            let bytes = value.memcachedPayload(context: defaultCoding).bytes
            let object = try JSONSerialization.jsonObject(with: Data(bytes), options: .fragmentsAllowed)
            let number = try #require(object as? NSNumber, "\(value) did not parse as a JSON number")
            #expect(number.doubleValue == value, "\(value)")
        }
        #expect(Double.infinity.memcachedPayload(context: defaultCoding).bytes == Array("Infinity".utf8))
        #expect((-Double.infinity).memcachedPayload(context: defaultCoding).bytes == Array("-Infinity".utf8))
        #expect(Double.nan.memcachedPayload(context: defaultCoding).bytes == Array("NaN".utf8))
    }

    @Test("Python's json module reads every Double payload to the same bits")
    func doublePayloadsReadByPython() throws {
        let lines = Self.doubles.map {
            String(decoding: $0.memcachedPayload(context: defaultCoding).bytes, as: UTF8.self)
        }
        let script = """
            import json, math, struct, sys
            for line in sys.stdin.read().split("\\n"):
                x = json.loads(line)
                assert isinstance(x, float) or isinstance(x, int), line
                x = float(x)
                print("nan" if math.isnan(x) else struct.unpack("<Q", struct.pack("<d", x))[0])
            """
        let output = try runPython(script, input: Array(lines.joined(separator: "\n").utf8))
        let answers = String(decoding: output, as: UTF8.self).split(separator: "\n").map(String.init)
        try #require(answers.count == Self.doubles.count)
        for (value, answer) in zip(Self.doubles, answers) {
            if value.isNaN {
                #expect(answer == "nan")
            } else {
                #expect(answer == String(value.bitPattern), "\(value)")
            }
        }
    }

    @Test("Double reads integers and padded text, refuses garbage")
    func doubleReadForms() throws {
        #expect(try decode(Double.self, Array("42".utf8), .integer) == 42)
        #expect(try decode(Double.self, Array("2.5 ".utf8), .text) == 2.5)
        #expect((try? decode(Double.self, Array("2.5\r\n".utf8), .text)) == 2.5)
        #expect((try? decode(Bool.self, Array("1\r\n".utf8), .integer)) == true)
        #expect(decodeFailure(Double.self, Array("abc".utf8), .serialized)?.code == .undecodableValue)
        #expect(decodeFailure(Double.self, [0xFF, 0xFE], .serialized)?.code == .undecodableValue)
    }

    // MARK: Object coders

    @Test("JSONObjectCoder round-trips a nested Codable struct")
    func jsonCoderRoundTrip() throws {
        let coder: any MemcachedObjectCoder = JSONObjectCoder()
        let payload = try coder.payload(for: sampleProfile)
        #expect(payload.flags == .serialized)
        #expect(try objectValue(coder, Profile.self, payload.bytes, payload.flags) == sampleProfile)
        // Equal values give equal bytes.
        #expect(try coder.payload(for: sampleProfile).bytes == payload.bytes)
    }

    @Test("JSONObjectCoder writes standard JSON with sorted keys")
    func jsonCoderOutputIsJSON() throws {
        let bytes = try JSONObjectCoder().encode(sampleProfile)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        #expect(object["name"] as? String == "Zoë 会")
        #expect((object["age"] as? NSNumber)?.intValue == 41)
        #expect(object["nickname"] == nil)
        #expect((object["tags"] as? [[String]]) == [["a", "b"], [], ["ключ"]])
        #expect((object["history"] as? [Any])?.count == 3)
        let text = String(decoding: bytes, as: UTF8.self)
        let keys = ["addresses", "age", "created", "history", "missing", "name", "scores", "tags"]
        let offsets = try keys.map { key in
            try #require(text.range(of: "\"\(key)\"")).lowerBound
        }
        #expect(offsets == offsets.sorted(), "top-level keys are not sorted: \(text)")
    }

    @Test("A Python pickle is refused with a hint", arguments: [0, 4])
    func pickleIsRefused(protocolVersion: Int) throws {
        let pickle = try runPython(
            "import pickle, sys; sys.stdout.buffer.write(pickle.dumps({'a': [1, 2]}, protocol=\(protocolVersion)))"
        )
        if protocolVersion == 4 {
            #expect(Array(pickle.prefix(2)) == [0x80, 0x04])
        }
        let error = try #require(throws: MemcachedError.self) {
            try objectValue(JSONObjectCoder(), [String: [Int]].self, pickle, .serialized)
        }
        #expect(error.code == .undecodableValue)
        #expect(error.message.contains("pickle"))
    }

    @Test("Plain bad JSON is refused without the pickle hint")
    func badJSONHasNoPickleHint() throws {
        let error = try #require(throws: MemcachedError.self) {
            try objectValue(JSONObjectCoder(), [String: Int].self, Array("{not json".utf8), .serialized)
        }
        #expect(error.code == .undecodableValue)
        #expect(!error.message.contains("pickle"))
    }

    @Test("The object coder refuses integer-flagged values", arguments: [MemcachedFlags.integer, .long])
    func objectCoderRefusesIntegers(flags: MemcachedFlags) throws {
        // "5" is valid JSON for an Int: only the flags make it wrong.
        #expect(try objectValue(JSONObjectCoder(), Int.self, Array("5".utf8), .serialized) == 5)
        let error = try #require(throws: MemcachedError.self) {
            try objectValue(JSONObjectCoder(), Int.self, Array("5".utf8), flags)
        }
        #expect(error.code == .undecodableValue)
    }

    @Test("A custom coder is used through the protocol")
    func customCoder() throws {
        let coder: any MemcachedObjectCoder = ReversedJSONCoder()
        let payload = try coder.payload(for: sampleProfile)
        #expect(payload.flags == .serialized)
        #expect(payload.bytes.first == UInt8(ascii: "}"))
        #expect(payload.bytes.last == UInt8(ascii: "{"))
        // The reversed bytes are JSON.
        #expect(try JSONSerialization.jsonObject(with: Data(payload.bytes.reversed())) is [String: Any])
        #expect(try objectValue(coder, Profile.self, payload.bytes, payload.flags) == sampleProfile)
        // The default coder cannot read them.
        #expect(throws: MemcachedError.self) {
            try objectValue(JSONObjectCoder(), Profile.self, payload.bytes, payload.flags)
        }
        // And the configuration keeps the chosen coder.
        var configuration = MemcachedConfiguration(servers: [MemcachedServer]())
        #expect(configuration.objectCoder is JSONObjectCoder)
        configuration.objectCoder = ReversedJSONCoder()
        #expect(configuration.objectCoder is ReversedJSONCoder)
    }

    @Test("A coder's errors become unencodable and undecodable")
    func coderErrorsAreWrapped() throws {
        let coder: any MemcachedObjectCoder = AlwaysFailingCoder()
        let encodeError = try #require(throws: MemcachedError.self) { try coder.payload(for: 1) }
        #expect(encodeError.code == .unencodableValue)
        let decodeError = try #require(throws: MemcachedError.self) {
            try objectValue(coder, Int.self, Array("1".utf8), .serialized)
        }
        #expect(decodeError.code == .undecodableValue)
    }

    // MARK: Compression

    @Test("Compressing tiny input gives nil: it would not be smaller")
    func compressTiny() {
        #expect(Compression.compress([]) == nil)
        #expect(Compression.compress([0x61]) == nil)
        #expect(Compression.compress(Array("hello".utf8)) == nil)
    }

    @Test("Repetitive text compresses and round-trips")
    func compressRepetitive() throws {
        let line = Array("The quick brown fox jumps over the lazy dog. ".utf8)
        var text: [UInt8] = []
        while text.count < 100 * 1_024 { text += line }
        text = Array(text.prefix(100 * 1_024))
        let compressed = try #require(Compression.compress(text))
        #expect(compressed.count < text.count / 10)
        #expect(compressed.first == 0x78)  // zlib header, as python's zlib.compress writes
        let restored = try compressed.withUnsafeBytes { try Compression.decompress($0, limit: 64 << 20) }
        #expect(restored == text)
    }

    @Test("Random bytes do not compress")
    func compressRandom() {
        var rng = SplitMix64(state: 0xDEC0DE)
        let bytes = (0..<65_536).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        #expect(Compression.compress(bytes) == nil)
    }

    @Test("Corrupt or truncated input fails to decompress")
    func decompressGarbage() throws {
        let garbage: [UInt8] = Array("this is not zlib data at all".utf8)
        let error = try #require(throws: MemcachedError.self) {
            try garbage.withUnsafeBytes { try Compression.decompress($0, limit: 64 << 20) }
        }
        #expect(error.code == .decompressionFailed)

        let empty = try #require(throws: MemcachedError.self) {
            try [UInt8]().withUnsafeBytes { try Compression.decompress($0, limit: 64 << 20) }
        }
        #expect(empty.code == .decompressionFailed)

        let text = Array(String(repeating: "abcdefgh", count: 5_000).utf8)
        let compressed = try #require(Compression.compress(text))
        let truncated = Array(compressed.dropLast(6))
        let truncatedError = try #require(throws: MemcachedError.self) {
            try truncated.withUnsafeBytes { try Compression.decompress($0, limit: 64 << 20) }
        }
        #expect(truncatedError.code == .decompressionFailed)

        var flipped = compressed
        flipped[flipped.count - 1] ^= 0xFF  // break the Adler-32 checksum
        let checksumError = try #require(throws: MemcachedError.self) {
            try flipped.withUnsafeBytes { try Compression.decompress($0, limit: 64 << 20) }
        }
        #expect(checksumError.code == .decompressionFailed)
    }

    @Test("Swift decompresses what Python's zlib.compress wrote")
    func decompressPythonOutput() throws {
        let fixture = try runPython("import zlib,sys; sys.stdout.buffer.write(zlib.compress(b\"hello \"*1000))")
        #expect(!fixture.isEmpty)
        #expect(fixture.count < 6_000)
        let expected = Array(String(repeating: "hello ", count: 1_000).utf8)
        let restored = try fixture.withUnsafeBytes { try Compression.decompress($0, limit: 64 << 20) }
        #expect(restored == expected)
    }

    @Test("Python's zlib.decompress reads what Swift compressed")
    func pythonDecompressesSwiftOutput() throws {
        var rng = SplitMix64(state: 99)
        let words = ["memcached", "swift", "zlib", "python", "会", "ключ", "\n"]
        var text: [UInt8] = []
        while text.count < 200_000 {
            text += Array(words[Int(rng.next() % UInt64(words.count))].utf8)
            text.append(0x20)
        }
        let compressed = try #require(Compression.compress(text))
        let restored = try runPython(
            "import zlib,sys; sys.stdout.buffer.write(zlib.decompress(sys.stdin.buffer.read()))",
            input: compressed
        )
        #expect(restored.count == text.count)
        #expect(restored == text)
    }
}
