import Foundation
import Memcached
import MemcachedTestSupport
import Testing

private let profiles: [MemcachedFlagProfile] = [.pythonMemcached, .pylibmc, .pymemcache]

private func context(_ profile: MemcachedFlagProfile) -> MemcachedCodingContext {
    MemcachedCodingContext(flagProfile: profile)
}

private func decode<Value: MemcachedValue>(
    _ type: Value.Type,
    _ bytes: [UInt8],
    _ flags: UInt32,
    profile: MemcachedFlagProfile = .pythonMemcached
) throws -> Value {
    try bytes.withUnsafeBytes {
        try Value(memcachedBytes: $0, flags: MemcachedFlags(rawValue: flags), context: context(profile))
    }
}

private struct Point: Codable, Equatable, MemcachedValue {
    var x: Int
}

@Suite("Value flag profiles: each Python client's flags, one table", .offCooperativePool)
struct FlagProfileTests {
    /// The flags each profile writes for each kind of value, as read in the clients' sources:
    /// python-memcached 1.62 `_val_to_store_info`, pylibmc 1.6.3 `_PylibMC_serialize_native`,
    /// pymemcache 4.0.0 `_python_memcache_serializer`.
    @Test("every Swift type is written with its profile's flags", arguments: profiles)
    func encodesWithTheProfile(profile: MemcachedFlagProfile) throws {
        let coding = context(profile)
        let integer: UInt32 = profile == .pylibmc ? 4 : 2
        #expect(try [UInt8]([1, 2]).memcachedPayload(context: coding).flags.rawValue == 0)
        #expect(Data([1, 2]).memcachedPayload(context: coding).flags.rawValue == 0)
        #expect("text".memcachedPayload(context: coding).flags.rawValue == 16)
        #expect("".memcachedPayload(context: coding) == MemcachedPayload(bytes: [], flags: .text))
        #expect(
            Int(-5).memcachedPayload(context: coding)
                == MemcachedPayload(bytes: Array("-5".utf8), flags: MemcachedFlags(rawValue: integer))
        )
        #expect(UInt64.max.memcachedPayload(context: coding).flags.rawValue == integer)
        #expect(Int8(3).memcachedPayload(context: coding).flags.rawValue == integer)
        #expect(MemcachedStoredValue.integer(7).memcachedPayload(context: coding).flags.rawValue == integer)
        #expect(MemcachedStoredValue.text("t").memcachedPayload(context: coding).flags.rawValue == 16)
        #expect(MemcachedStoredValue.bytes([1]).memcachedPayload(context: coding).flags.rawValue == 0)
        #expect(1.5.memcachedPayload(context: coding) == MemcachedPayload(bytes: Array("1.5".utf8), flags: .serialized))
        #expect(
            try Point(x: 1).memcachedPayload(context: coding)
                == MemcachedPayload(bytes: Array(#"{"x":1}"#.utf8), flags: .serialized)
        )
        #expect(try ["a"].memcachedPayload(context: coding).flags.rawValue == 1)
        if profile == .pymemcache {
            #expect(
                true.memcachedPayload(context: coding)
                    == MemcachedPayload(bytes: Array("true".utf8), flags: .serialized)
            )
            #expect(
                false.memcachedPayload(context: coding)
                    == MemcachedPayload(bytes: Array("false".utf8), flags: .serialized)
            )
        } else {
            #expect(true.memcachedPayload(context: coding) == MemcachedPayload(bytes: [0x31], flags: .integer))
            #expect(false.memcachedPayload(context: coding) == MemcachedPayload(bytes: [0x30], flags: .integer))
        }
        for kind in MemcachedFlagProfile.ValueKind.allCases {
            #expect(!profile.flags(for: kind).contains(.compressed))
        }
    }

    @Test("the default is python-memcached's, today's flags bit for bit")
    func defaultIsPythonMemcached() throws {
        #expect(MemcachedCodingContext().flagProfile == .pythonMemcached)
        #expect(try MemcachedConfiguration(servers: ["127.0.0.1:1"]).flagProfile == .pythonMemcached)
        let python = MemcachedConfiguration.pythonMemcachedCompatible(servers: [MemcachedServer]())
        #expect(python.flagProfile == .pythonMemcached)
        #expect(profiles.map(\.description) == ["pythonMemcached", "pylibmc", "pymemcache"])
    }

    @Test("reads do not depend on the profile: each reads what every Python client writes", arguments: profiles)
    func readsEveryClient(profile: MemcachedFlagProfile) throws {
        // pylibmc's int (long, 4), python-memcached's and pymemcache's (2).
        #expect(try decode(Int.self, Array("-42".utf8), 4, profile: profile) == -42)
        #expect(try decode(Int.self, Array("-42".utf8), 2, profile: profile) == -42)
        // Booleans: 1/0 under 2 (python-memcached, pylibmc), JSON under 1 (pymemcache).
        #expect(try decode(Bool.self, [0x31], 2, profile: profile) == true)
        #expect(try decode(Bool.self, Array("false".utf8), 1, profile: profile) == false)
        #expect(try decode(MemcachedStoredValue.self, Array("true".utf8), 1, profile: profile).isObject)
        #expect(try decode(MemcachedStoredValue.self, Array("12".utf8), 4, profile: profile) == .integer(12))
        #expect(try decode(Double.self, Array("0.1".utf8), 1, profile: profile) == 0.1)
    }

    @Test("pylibmc before 1.6 wrote bool under 16, which every client now reads as text")
    func legacyPylibmcBoolean() throws {
        #expect(try decode(Bool.self, [0x31], 16) == true)
        #expect(try decode(Bool.self, [0x30], 16) == false)
        #expect(try decode(String.self, [0x31], 16) == "1")
        #expect(try decode(MemcachedStoredValue.self, [0x31], 16) == .text("1"))
    }

    @Test("a Python int past UInt64 reads as its decimal text, not as a Swift integer", arguments: [2, 4] as [UInt32])
    func hugeInteger(flags: UInt32) throws {
        let huge = Array("1180591620717411303424".utf8)  // 2**70, as pylibmc writes it under 4
        #expect(throws: MemcachedError.self) { try decode(Int.self, huge, flags) }
        #expect(throws: MemcachedError.self) { try decode(UInt64.self, huge, flags) }
        #expect(try decode(String.self, huge, flags) == "1180591620717411303424")
        #expect(try decode(MemcachedStoredValue.self, huge, flags) == .bytes(huge))
        #expect(try decode(UInt64.self, Array("18446744073709551615".utf8), flags) == .max)
    }

    @Test("empty values, and bytes under the text flag that are not UTF-8")
    func emptyAndInvalidText() throws {
        #expect(try decode(String.self, [], 16) == "")
        #expect(try decode([UInt8].self, [], 0) == [])
        #expect(try decode(MemcachedStoredValue.self, [], 16) == .text(""))
        #expect(try decode(MemcachedStoredValue.self, [], 0) == .bytes([]))
        let invalid: [UInt8] = [0xFF, 0xFE, 0x41]
        let error = try #require(throws: MemcachedError.self) { try decode(String.self, invalid, 16) }
        #expect(error.code == .undecodableValue)
        #expect(try decode([UInt8].self, invalid, 16) == invalid)
        #expect(try decode(MemcachedStoredValue.self, invalid, 16) == .bytes(invalid))
    }

    @Test(
        "with each profile, integers are never compressed and long text is, flag 8 beside the type's",
        arguments: profiles
    )
    func compressionWithEachProfile(profile: MemcachedFlagProfile) throws {
        try withMemcached { cluster in
            let memc = try connect(cluster) {
                $0.flagProfile = profile
                $0.compressionThreshold = 0
            }
            let server = cluster.servers[0]
            // 19 equal digits, which zlib shrinks (19 to 11 bytes), and below 2^63, which some
            // memcached versions refuse to increment at random.
            let repetitive = 1_111_111_111_111_111_111
            #expect(try memc.set("n", repetitive, compression: .above(0)))
            #expect(try storedFlags("n", on: server) == (profile == .pylibmc ? 4 : 2))
            #expect(try memc.increment("n", by: 0) == UInt64(repetitive))
            #expect(try memc.set("t", String(repeating: "abc", count: 100)))
            #expect(try storedFlags("t", on: server) == 24)
            #expect(try memc.get("t", as: String.self) == String(repeating: "abc", count: 100))
            #expect(try memc.set("b", true))
            #expect(try storedFlags("b", on: server) == (profile == .pymemcache ? 1 : 2))
            #expect(try memc.get("b", as: Bool.self) == true)
        }
    }
}

extension MemcachedStoredValue {
    fileprivate var isObject: Bool {
        if case .object = self { true } else { false }
    }
}
