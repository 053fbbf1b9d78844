import Foundation
import Memcached
import Testing

/// Runs the real python-memcached 1.62, pylibmc 1.6.3 and pymemcache 4.0.0 from `.venv-python`
/// (made by `scripts/install-deps.sh`).
enum PythonMemcached {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// The package root, found from this file's path.
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()
        .deletingLastPathComponent()
        .deletingLastPathComponent()

    static let python = packageRoot.appendingPathComponent(".venv-python/bin/python")
    static let scripts = packageRoot.appendingPathComponent("Tests/Python")

    /// Runs a script of `Tests/Python` with arguments, plus `--keys FILE` holding `keys` when given,
    /// and decodes the JSON it prints.
    static func run<Output: Decodable>(
        _ arguments: [String],
        script: String = "memcache_interop.py",
        keys: [String]? = nil,
        as output: Output.Type
    ) throws -> Output {
        guard FileManager.default.isExecutableFile(atPath: python.path) else {
            throw Failure(
                description:
                    "\(python.path) is missing: run scripts/install-deps.sh to create it with python-memcached 1.62, "
                    + "pylibmc 1.6.3 and pymemcache 4.0.0"
            )
        }
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("swift-libmemcached-python-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }

        var arguments = [scripts.appendingPathComponent(script).path] + arguments
        if let keys {
            let keysFile = directory.appendingPathComponent("keys.json")
            try JSONEncoder().encode(keys).write(to: keysFile)
            arguments += ["--keys", keysFile.path]
        }
        // Files, not pipes: a pipe that nobody reads while the child writes more than its buffer
        // would block the child forever.
        let stdoutFile = directory.appendingPathComponent("stdout")
        let stderrFile = directory.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: stdoutFile.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrFile.path, contents: nil)
        let stdout = try FileHandle(forWritingTo: stdoutFile)
        let stderr = try FileHandle(forWritingTo: stderrFile)
        defer {
            try? stdout.close()
            try? stderr.close()
        }

        let process = Process()
        // At nice 19, as CPU-bound work in this process runs (see atLowCPUPriority): the timing
        // tests running beside a script keep the CPU they measure.
        process.executableURL = URL(fileURLWithPath: "/usr/bin/nice")
        process.arguments = ["-n", "19", python.path] + arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        // Bounded: a script that hangs (a stalled server, a lock) fails its test instead of
        // holding the whole run. Generous, since a script runs for a few seconds at most.
        let deadline = ContinuousClock.now + .seconds(300 * testTimeScale)
        while process.isRunning {
            guard ContinuousClock.now < deadline else {
                process.terminate()
                process.waitUntilExit()
                throw Failure(description: "python \(arguments.joined(separator: " ")) ran past its 300 s deadline")
            }
            usleep(10_000)
        }
        process.waitUntilExit()

        let printed = try Data(contentsOf: stdoutFile)
        guard process.terminationStatus == 0 else {
            let errors = String(decoding: try Data(contentsOf: stderrFile), as: UTF8.self)
            throw Failure(description: "python \(arguments.joined(separator: " ")) failed: \(errors)")
        }
        return try JSONDecoder().decode(Output.self, from: printed)
    }

    /// The `--servers` argument: `host:port[@weight],...`.
    static func serverList(_ addresses: [String], weights: [Int]? = nil) -> String {
        zip(addresses, weights ?? addresses.map { _ in 1 })
            .map { $1 == 1 ? $0 : "\($0)@\($1)" }
            .joined(separator: ",")
    }
}

/// The dictionary both sides store as JSON under flag 1.
struct InteropRecord: Codable, Equatable, MemcachedValue {
    struct Nested: Codable, Equatable {
        var ok: Bool
    }

    var id: Int
    var name: String
    var tags: [String]
    var score: Double
    var nested: Nested
}

/// A value one side wrote and the other must read back equal.
enum InteropValue: Equatable, Decodable {
    case text(String)
    case integer(Int)
    case bytes([UInt8])
    case record(InteropRecord)

    private enum CodingKeys: String, CodingKey {
        case type, value
    }

    /// Decodes `{"type": <python type name>, "value": ...}`, bytes as hex.
    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        switch try container.decode(String.self, forKey: .type) {
        case "str":
            self = .text(try container.decode(String.self, forKey: .value))
        case "int":
            self = .integer(try container.decode(Int.self, forKey: .value))
        case "bytes":
            let hex = Array(try container.decode(String.self, forKey: .value).utf8)
            self = .bytes(
                stride(from: 0, to: hex.count, by: 2).map {
                    UInt8(String(decoding: hex[$0..<$0 + 2], as: UTF8.self), radix: 16)!
                }
            )
        case "dict":
            self = .record(try container.decode(InteropRecord.self, forKey: .value))
        case let other:
            throw DecodingError.dataCorruptedError(forKey: .type, in: container, debugDescription: "type \(other)")
        }
    }

    /// Reads `key` with the Swift type this value has.
    /// The value a stored value of unknown type holds; an object is a record.
    init(stored: MemcachedStoredValue) throws {
        switch stored {
        case .text(let text): self = .text(text)
        case .integer(let integer): self = .integer(integer)
        case .bytes(let bytes): self = .bytes(bytes)
        case .object(let object): self = .record(try object.decode(InteropRecord.self))
        }
    }

    func read(_ key: String, with connection: MemcachedConnection) throws -> InteropValue? {
        switch self {
        case .text: try connection.get(key, as: String.self).map(InteropValue.text)
        case .integer: try connection.get(key, as: Int.self).map(InteropValue.integer)
        case .bytes: try connection.get(key, as: [UInt8].self).map(InteropValue.bytes)
        case .record: try connection.get(key, as: InteropRecord.self).map(InteropValue.record)
        }
    }

    /// Writes the value with its Swift type.
    func write(_ key: String, with connection: MemcachedConnection) throws -> Bool {
        switch self {
        case .text(let text): try connection.set(key, text)
        case .integer(let integer): try connection.set(key, integer)
        case .bytes(let bytes): try connection.set(key, bytes)
        case .record(let record): try connection.set(key, record)
        }
    }
}

/// One key python-memcached wrote.
typealias PythonWrite = ScriptWrite<InteropValue>

/// One key a Python script of `Tests/Python` wrote: `{"key", "kind", "type", "value"}`, the
/// value decoded from the same object.
struct ScriptWrite<Value: Decodable>: Decodable {
    var key: String
    var kind: String
    var value: Value

    private enum CodingKeys: String, CodingKey {
        case key, kind
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        key = try container.decode(String.self, forKey: .key)
        kind = try container.decode(String.self, forKey: .kind)
        value = try Value(from: decoder)
    }
}
