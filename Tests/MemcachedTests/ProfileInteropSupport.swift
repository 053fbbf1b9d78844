import Foundation
import Memcached
import MemcachedTestSupport
import Testing

/// A value of every kind the pylibmc and pymemcache scripts write (`Tests/Python/interop_values.py`),
/// as they print it: `{"type": <Python type name>, "value": ...}`, bytes as hex.
enum ProfileValue: Equatable, Decodable, CustomStringConvertible {
    case text(String)
    case integer(Int)
    /// A Python `int` past `Int.max`, within `UInt64`.
    case unsigned(UInt64)
    case boolean(Bool)
    case double(Double)
    case bytes([UInt8])
    case record(InteropRecord)
    case list([String])

    private enum CodingKeys: String, CodingKey {
        case type, value
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        switch try container.decode(String.self, forKey: .type) {
        case "str": self = .text(try container.decode(String.self, forKey: .value))
        case "int":
            if let integer = try? container.decode(Int.self, forKey: .value) {
                self = .integer(integer)
            } else {
                self = .unsigned(try container.decode(UInt64.self, forKey: .value))
            }
        case "bool": self = .boolean(try container.decode(Bool.self, forKey: .value))
        case "float": self = .double(try container.decode(Double.self, forKey: .value))
        case "bytes":
            let hex = Array(try container.decode(String.self, forKey: .value).utf8)
            self = .bytes(
                stride(from: 0, to: hex.count, by: 2).map {
                    UInt8(String(decoding: hex[$0..<$0 + 2], as: UTF8.self), radix: 16)!
                }
            )
        case "dict": self = .record(try container.decode(InteropRecord.self, forKey: .value))
        case "list": self = .list(try container.decode([String].self, forKey: .value))
        case let other:
            throw DecodingError.dataCorruptedError(forKey: .type, in: container, debugDescription: "type \(other)")
        }
    }

    var description: String {
        switch self {
        case .text(let text): "text(\(text.prefix(40)))"
        case .integer(let integer): "integer(\(integer))"
        case .unsigned(let unsigned): "unsigned(\(unsigned))"
        case .boolean(let boolean): "boolean(\(boolean))"
        case .double(let double): "double(\(double))"
        case .bytes(let bytes): "bytes(\(bytes.count))"
        case .record(let record): "record(\(record.id))"
        case .list(let list): "list(\(list))"
        }
    }

    /// The flags (compression aside) the Python client of `profile` stores this value with, as
    /// read in its source: pylibmc writes every `int` as a long (4); pymemcache pickles `bool` (1).
    func typeFlags(_ profile: MemcachedFlagProfile) -> UInt32 {
        switch self {
        case .text: 16
        case .integer, .unsigned: profile == .pylibmc ? 4 : 2
        case .boolean: profile == .pymemcache ? 1 : 2
        case .double, .record, .list: 1
        case .bytes: 0
        }
    }

    /// What the Python client of `profile` reads back when this value is stored as that client
    /// stores it: pylibmc reads its own booleans (`1`/`0` under 2) as the `int`s 1 and 0.
    func readByPython(_ profile: MemcachedFlagProfile) -> ProfileValue {
        if case .boolean(let boolean) = self, profile == .pylibmc {
            return .integer(boolean ? 1 : 0)
        }
        return self
    }

    /// Reads `key` with this value's Swift type.
    func read(_ key: String, with connection: MemcachedConnection) throws -> ProfileValue? {
        switch self {
        case .text: try connection.get(key, as: String.self).map(Self.text)
        case .integer: try connection.get(key, as: Int.self).map(Self.integer)
        case .unsigned: try connection.get(key, as: UInt64.self).map(Self.unsigned)
        case .boolean: try connection.get(key, as: Bool.self).map(Self.boolean)
        case .double: try connection.get(key, as: Double.self).map(Self.double)
        case .bytes: try connection.get(key, as: [UInt8].self).map(Self.bytes)
        case .record: try connection.get(key, as: InteropRecord.self).map(Self.record)
        case .list: try connection.get(key, as: [String].self).map(Self.list)
        }
    }

    /// Writes the value with its Swift type.
    func write(_ key: String, with connection: MemcachedConnection) throws -> Bool {
        switch self {
        case .text(let text): try connection.set(key, text)
        case .integer(let integer): try connection.set(key, integer)
        case .unsigned(let unsigned): try connection.set(key, unsigned)
        case .boolean(let boolean): try connection.set(key, boolean)
        case .double(let double): try connection.set(key, double)
        case .bytes(let bytes): try connection.set(key, bytes)
        case .record(let record): try connection.set(key, record)
        case .list(let list): try connection.set(key, list)
        }
    }

    /// The value a ``MemcachedStoredValue`` holds, read as this value's type where the flags alone
    /// do not say it: an object is decoded as this type, the integer 1 or 0 of a boolean is one,
    /// and an integer past `Int.max` arrives as its decimal bytes.
    func fromStored(_ stored: MemcachedStoredValue) throws -> ProfileValue {
        switch (stored, self) {
        case (.text(let text), _): return .text(text)
        case (.integer(let integer), .boolean): return .boolean(integer == 1)
        case (.integer(let integer), _): return .integer(integer)
        case (.bytes(let bytes), .unsigned):
            return .unsigned(try #require(UInt64(String(decoding: bytes, as: UTF8.self))))
        case (.bytes(let bytes), _): return .bytes(bytes)
        case (.object(let object), .boolean): return .boolean(try object.decode(Bool.self))
        case (.object(let object), .double): return .double(try object.decode(Double.self))
        case (.object(let object), .list): return .list(try object.decode([String].self))
        case (.object(let object), _): return .record(try object.decode(InteropRecord.self))
        }
    }

    /// The value the Swift side writes at `index`, of the kind the Python scripts give that index
    /// (`interop_values.KINDS`), with values of its own.
    static func swiftValue(_ index: Int) -> (key: String, value: ProfileValue) {
        let kinds = ["str", "int", "bigint", "bool", "float", "bytes", "compressed", "json", "list", "empty"]
        let kind = kinds[index % kinds.count]
        let value: ProfileValue =
            switch kind {
            case "str": .text("swift-\(index)-会-ü")
            case "int": .integer(index.isMultiple(of: 4) ? -index * 1_000_003 : Int.max - index)
            case "bigint": .unsigned(UInt64(Int.max) + UInt64(index) * 104_729)
            case "bool": .boolean(index % 3 != 0)
            case "float": .double(index.isMultiple(of: 20) ? -1e-300 * Double(index) : Double(index) / 7 + 0.1)
            case "bytes": .bytes((0..<(1 + index % 41)).map { UInt8(($0 * 7 + index) % 256) })
            case "compressed": .text(String(repeating: "swift text \(index) ", count: 20))
            case "json":
                .record(
                    InteropRecord(
                        id: index,
                        name: "swift-\(index)",
                        tags: ["s\(index % 3)", "会"],
                        score: Double(index) / 8,
                        nested: .init(ok: index % 3 == 0)
                    )
                )
            case "list": .list(["s\(index)", "会", String(repeating: "x", count: index % 90)])
            default: (index / kinds.count).isMultiple(of: 2) ? .text("") : .bytes([])
            }
        return ("swift:\(kind):\(index)", value)
    }
}

/// One key pylibmc or pymemcache wrote.
typealias ProfileWrite = ScriptWrite<ProfileValue>

/// The flags a value is stored with, less ``MemcachedFlags/compressed`` (which the connection
/// removes before decoding): read with the library's own multi-get.
struct StoredTypeFlags: MemcachedValue {
    var rawValue: UInt32

    struct NotWritable: Error {}

    func memcachedPayload(context: MemcachedCodingContext) throws -> MemcachedPayload {
        throw NotWritable()
    }

    init(memcachedBytes bytes: UnsafeRawBufferPointer, flags: MemcachedFlags, context: MemcachedCodingContext) {
        rawValue = flags.rawValue
    }
}

extension PythonMemcached {
    /// Writes `routes` (`{key: "host:port"}`) to a file for the duration of `body`.
    static func withRoutesFile<R>(_ routes: [String: String], _ body: (String) throws -> R) throws -> R {
        let file = FileManager.default.temporaryDirectory
            .appendingPathComponent("swift-libmemcached-routes-\(UUID().uuidString).json")
        try JSONEncoder().encode(routes).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        return try body(file.path)
    }
}
