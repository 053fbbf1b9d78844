// Runs every command of python-memcached's table (the MySQL manual's "Using MySQL and memcached
// with Python") against the servers in MEMCACHED_SERVERS, printing what each call returned.
//
//     MEMCACHED_SERVERS=127.0.0.1:11211 swift run QuickStart
//     MEMCACHED_SERVERS=127.0.0.1:11211 swift run QuickStart --flush   # flush_all too: empties every server
//
// Without --flush it leaves every other key alone (FilmCache's cached rows among them).

import Foundation
import Memcached

struct Film: Codable, Equatable, MemcachedValue {
    var filmID: Int
    var title: String
}

let servers = (ProcessInfo.processInfo.environment["MEMCACHED_SERVERS"] ?? "127.0.0.1:11211")
    .split(separator: ",")
    .map { String($0) }

func show(_ call: String, _ result: @autoclosure () throws -> Any?) {
    do {
        let value = try result()
        print("\(call) -> \(value.map { String(describing: $0) } ?? "nil")")
    } catch {
        print("\(call) -> error: \(error)")
    }
}

do {
    let memc = try MemcachedConnection(servers: servers)
    defer { memc.close() }
    print("servers: \(servers.joined(separator: ", "))")

    show(
        "set(\"greeting\", \"hello\", expiration: .seconds(60))",
        try memc.set("greeting", "hello", expiration: .seconds(60))
    )
    show("get(\"greeting\")", try memc.get("greeting", as: String.self))
    show("get(\"no-such-key\")", try memc.get("no-such-key", as: String.self))

    show(
        "setMulti([\"a\": \"1\", \"b\": \"2\"], keyPrefix: \"users:\")",
        try memc.setMulti(["a": "1", "b": "2"], keyPrefix: "users:").sorted { $0.key < $1.key }
    )
    show(
        "getMulti([\"a\", \"b\", \"c\"], keyPrefix: \"users:\")",
        try memc.getMulti(["a", "b", "c"], keyPrefix: "users:", as: String.self).hits.sorted { $0.key < $1.key }
    )

    show("add(\"greeting\", \"again\")", try memc.add("greeting", "again"))
    show("add(\"fresh\", \"new\")", try memc.add("fresh", "new"))
    show("replace(\"greeting\", \"hi\")", try memc.replace("greeting", "hi"))
    show("replace(\"no-such-key\", \"x\")", try memc.replace("no-such-key", "x"))
    show("append(\"greeting\", \" there\")", try memc.append("greeting", " there"))
    show("prepend(\"greeting\", \"oh, \")", try memc.prepend("greeting", "oh, "))
    show("get(\"greeting\")", try memc.get("greeting", as: String.self))

    show("set(\"counter\", 10)", try memc.set("counter", 10))
    show("increment(\"counter\", by: 5)", try memc.increment("counter", by: 5))
    show("decrement(\"counter\", by: 20)", try memc.decrement("counter", by: 20))
    show("increment(\"no-such-key\")", try memc.increment("no-such-key"))

    if let (value, token) = try memc.gets("greeting", as: String.self) {
        print("gets(\"greeting\") -> (\(value), token \(token))")
        show("cas(\"greeting\", \"swapped\", token: \(token))", try memc.cas("greeting", "swapped", token: token))
        show("cas(\"greeting\", \"stale\", token: \(token))", try memc.cas("greeting", "stale", token: token))
    }
    show("touch(\"greeting\", expiration: .seconds(300))", try memc.touch("greeting", expiration: .seconds(300)))

    let films = [Film(filmID: 2, title: "ACE GOLDFINGER"), Film(filmID: 7, title: "AIRPLANE SIERRA")]
    show("set(\"films\", [Film]) as JSON", try memc.set("films", films, expiration: .seconds(60)))
    show("get(\"films\", as: [Film].self)", try memc.get("films", as: [Film].self))

    show("delete(\"greeting\")", try memc.delete("greeting"))
    show("delete(\"greeting\") again", try memc.delete("greeting"))
    show(
        "deleteMulti([\"a\", \"b\", \"c\"], keyPrefix: \"users:\")",
        try memc.deleteMulti(["a", "b", "c"], keyPrefix: "users:").sorted { $0.key < $1.key }.map {
            "\($0.key): \($0.value)"
        }
    )

    show("set(\"bad key\", \"x\")", try memc.set("bad key", "x"))
    show("versions()", try memc.versions().map { "\($0.server): \($0.result)" })
    show("stats() curr_items", try memc.stats().map { "\($0.server): \((try? $0.result.get())?["curr_items"] ?? "-")" })
    show("server(forKey: \"films\")", try memc.server(forKey: "films"))
    if CommandLine.arguments.contains("--flush") {
        show("flush()", try memc.flush())
        show("get(\"films\") after flush", try memc.get("films", as: [Film].self))
    } else {
        print("flush() skipped: it empties every server, other programs' keys too; run with --flush to include it")
    }
} catch {
    print("error: \(error)")
    exit(1)
}
