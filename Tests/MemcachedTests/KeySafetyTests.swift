import Logging
import Memcached
import MemcachedTestSupport
import Synchronization
import Testing

/// Bad keys get typed errors and never reach the server; key prefixes count toward the limit.
@Suite("Key safety", .offCooperativePool)
struct KeySafetyTests {
    static let badKeys: [(String, MemcachedError.Code)] = [
        ("", .emptyKey),
        ("with space", .invalidKeyCharacters),
        ("with\rcr", .invalidKeyCharacters),
        ("with\nlf", .invalidKeyCharacters),
        ("with\u{0}nul", .invalidKeyCharacters),
        ("with\u{7F}del", .invalidKeyCharacters),
        ("with\ttab", .invalidKeyCharacters),
        (String(repeating: "k", count: 251), .keyTooLong),
        (String(repeating: "é", count: 126), .keyTooLong),
        ("k\r\nflush_all\r\n", .invalidKeyCharacters),
    ]

    /// Runs every key-taking command with `key` and checks each throws `code`.
    private func expectEveryCommand(_ memc: MemcachedConnection, key: String, throws code: MemcachedError.Code) {
        let commands: [(String, () throws -> Void)] = [
            ("get", { _ = try memc.get(key, as: String.self) }),
            ("gets", { _ = try memc.gets(key, as: String.self) }),
            ("getMulti", { _ = try memc.getMulti(["fine", key], as: String.self) }),
            ("set", { try memc.set(key, "v") }),
            ("setMulti", { try memc.setMulti(["fine": "v", key: "v"]) }),
            ("add", { try memc.add(key, "v") }),
            ("replace", { try memc.replace(key, "v") }),
            ("append", { try memc.append(key, "v") }),
            ("prepend", { try memc.prepend(key, "v") }),
            ("cas", { try memc.cas(key, "v", token: MemcachedCASToken(rawValue: 1)) }),
            ("delete", { try memc.delete(key) }),
            ("deleteMulti", { try memc.deleteMulti(["fine", key]) }),
            ("increment", { try memc.increment(key) }),
            ("decrement", { try memc.decrement(key) }),
            ("touch", { try memc.touch(key, expiration: .seconds(1)) }),
            ("server(forKey:)", { _ = try memc.server(forKey: key) }),
        ]
        for (name, command) in commands {
            do {
                try command()
                Issue.record("\(name) accepted a bad key")
            } catch let error as MemcachedError {
                #expect(error.code == code, "\(name): expected \(code), got \(error.code)")
            } catch {
                Issue.record("\(name) threw \(error)")
            }
        }
    }

    @Test("bad keys get typed errors in every command and no byte reaches the server")
    func badKeysNeverReachTheServer() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster)
            try memc.set("fine", "untouched")
            let before = try bytesRead(cluster.servers[0])
            for (key, code) in Self.badKeys {
                expectEveryCommand(memc, key: key, throws: code)
            }
            #expect(try bytesRead(cluster.servers[0]) - before == 7, "only the second stats command arrived")
            #expect(try memc.get("fine", as: String.self) == "untouched")
        }
    }

    @Test("an injected flush_all never runs: the sentinel key survives")
    func injectionIsImpossible() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster)
            try memc.set("sentinel", "alive")
            for key in ["x\r\nflush_all\r\n", "x 0 0 1\r\nZ\r\nset y", "x\nflush_all", "x\rflush_all"] {
                #expect(throws: MemcachedError.self) { try memc.set(key, "v") }
                #expect(throws: MemcachedError.self) { try memc.get(key, as: String.self) }
                #expect(throws: MemcachedError.self) { try memc.getMulti([key], keyPrefix: "p", as: String.self) }
            }
            #expect(throws: MemcachedError.self) {
                try memc.getMulti(["a"], keyPrefix: "p\r\nflush_all\r\n", as: String.self)
            }
            #expect(try memc.get("sentinel", as: String.self) == "alive")
            #expect(try cluster.servers[0].rawCommand("get sentinel\r\n").contains("alive"))
            #expect(try statistic("cmd_flush", of: cluster.servers[0]) == 0)
        }
    }

    @Test("valid keys round-trip: UTF-8, punctuation, exactly 250 bytes")
    func validKeys() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster)
            let keys = [
                "会", "ключ", "a:b/c?d=e&f", "!~", String(repeating: "k", count: 250),
                String(repeating: "é", count: 125),
            ]
            for key in keys {
                try memc.set(key, key)
                #expect(try memc.get(key, as: String.self) == key)
            }
            #expect(try memc.getMulti(keys, as: String.self).hits.count == keys.count)
        }
    }

    @Test("a key prefix counts toward the 250-byte limit and is stripped from results")
    func keyPrefixAccounting() throws {
        try withMemcached { cluster in
            let memc = try connect(cluster)
            let prefix = String(repeating: "p", count: 200)
            let fits = String(repeating: "k", count: 50)
            let tooLong = String(repeating: "k", count: 51)
            #expect(try memc.setMulti([fits: "v"], keyPrefix: prefix).keysNotApplied.isEmpty)
            #expect(try memc.get(prefix + fits, as: String.self) == "v", "the server holds the prefixed key")
            #expect(try memc.getMulti([fits], keyPrefix: prefix, as: String.self).hits == [fits: "v"])
            let before = try bytesRead(cluster.servers[0])
            for call in [
                { _ = try memc.setMulti([tooLong: "v"], keyPrefix: prefix) },
                { _ = try memc.getMulti([tooLong], keyPrefix: prefix, as: String.self) },
                { _ = try memc.deleteMulti([tooLong], keyPrefix: prefix) },
            ] as [() throws -> Void] {
                do {
                    try call()
                    Issue.record("a prefixed key over 250 bytes must be refused")
                } catch let error as MemcachedError {
                    #expect(error.code == .keyTooLong)
                }
            }
            #expect(try bytesRead(cluster.servers[0]) - before == 7)
            #expect(try memc.deleteMulti([fits], keyPrefix: prefix)[fits] == .applied)
            // An empty key is fine with a prefix: the server key is the prefix itself.
            #expect(try memc.setMulti(["": "whole"], keyPrefix: "prefix-only").keysNotApplied.isEmpty)
            #expect(try memc.get("prefix-only", as: String.self) == "whole")
        }
    }

    @Test("logging traces commands at trace level and never logs keys or values")
    func loggingNeverShowsKeysOrValues() throws {
        try withMemcached { cluster in
            let handler = RecordingLogHandler()
            let memc = try connect(cluster) { $0.logger = Logger(label: "test", factory: { _ in handler }) }
            try memc.set("secret-key-1", "secret-value-1")
            _ = try memc.get("secret-key-1", as: String.self)
            _ = try memc.getMulti(["secret-key-1", "secret-key-2"], as: String.self)
            try memc.set("secret-word", "secret-value-2")
            _ = try? memc.increment("secret-word")
            let entries = handler.entries.withLock { $0 }
            #expect(entries.contains { $0.level == .trace && $0.metadata["command"] == "set" })
            #expect(
                entries.contains {
                    $0.level == .trace && $0.metadata["command"] == "get_multi" && $0.metadata["keys"] == "2"
                }
            )
            #expect(entries.contains { $0.level == .debug && $0.metadata["code"] == "clientError" })
            for entry in entries {
                let text = entry.message + entry.metadata.values.joined()
                #expect(!text.contains("secret"), "logged a key or value: \(text)")
            }
        }
    }
}
