import Foundation
import Memcached
import MemcachedTestSupport

/// One line of the server-side table: a get-only load as memcached itself counted it.
struct ServerViewRow {
    var name: String
    var getsPerSecond: Double
    /// Server CPU (user + system) per key it served, in microseconds.
    var serverMicrosecondsPerKey: Double
}

/// Get-only load over W6's 10,000 keys measured from the server's side (issue 14): memcached's
/// own `cmd_get` count and its process's CPU time before and after each load, so that memcaslap, the
/// server's load generator, which reports its own figures differently (its TPS includes the sets
/// of its warm-up), is compared on the same terms as raw C and our pool. A coalesced batch is one
/// request for many keys, so server CPU per key also shows what coalescing saves the server.
enum ServerView {
    /// How long memcaslap is sampled, after its warm-up.
    static let window: Duration = .seconds(6)

    static func measure(suite: Suite, server: MemcachedServerProcess) async throws -> [ServerViewRow] {
        var rows: [ServerViewRow] = []
        if let memcaslap = ["/usr/bin/memcaslap", "/usr/bin/memaslap"].first(where: {
            FileManager.default.isExecutableFile(atPath: $0)
        }) {
            rows.append(try await memcaslapRow(memcaslap, server: server))
        } else {
            print("memcaslap skipped: not installed (Debian's libmemcached-tools)\n")
        }
        let keys = suite.mixedKeys
        try suite.storeMixedKeys(try suite.rawConnection("raw-thread-0"))
        let operations = MixedOperations.make(count: suite.scaled(400_000), keyCount: keys.count)
            .map { $0 & ~MixedOperations.setBit }
        let value = Suite.smallValue
        let raw = [try suite.rawConnection("raw-thread-0"), try suite.rawConnection("raw-thread-1")]
        rows.append(
            try await sample(named: "raw C, 2 threads", server: server) {
                try suite.rawMixed(raw, keys, operations, count: operations.count, expectedHits: operations.count)
            }
        )
        let pools = [
            ConcurrentPool("ours, pool, 64 tasks, coalescing", try suite.client("pool"), tasks: 64),
            ConcurrentPool(
                "ours, pool, 64 tasks, not coalescing",
                try suite.client("pool, not coalescing", coalescesReads: false),
                tasks: 64
            ),
        ]
        for pool in pools {
            rows.append(
                try await sample(named: pool.name, server: server) {
                    let hits = try await Suite.runConcurrently(pool, keys.strings, operations, value)
                    try expect(hits == operations.count, "\(pool.name): \(hits) hits of \(operations.count)")
                }
            )
        }
        return rows
    }

    /// memcaslap with 64 connections on two threads, gets only of 100-byte values; its warm-up
    /// (storing every key of its window) ends before the window opens, which is checked.
    private static func memcaslapRow(_ path: String, server: MemcachedServerProcess) async throws -> ServerViewRow {
        let configuration = FileManager.default.temporaryDirectory
            .appendingPathComponent("memcaslap-\(getpid()).cfg")
        // Keys of 16 to 16 bytes, values of 100 bytes, gets only.
        try "key\n16 16 1\nvalue\n100 100 1\ncmd\n0 0.0\n1 1.0\n".write(
            to: configuration,
            atomically: true,
            encoding: .utf8
        )
        defer { try? FileManager.default.removeItem(at: configuration) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        let seconds = Int(window.components.seconds) + 8
        process.arguments = [
            "-s", "127.0.0.1:\(server.port)", "-T", "2", "-c", "64", "--win_size=1k", "-F", configuration.path,
            "-t", "\(seconds)s",
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
        }
        // Past the warm-up: it stores its whole key window first (64 connections × 1k, the
        // smallest window it takes), 65,536 sets at tens of thousands a second.
        try await Task.sleep(for: .seconds(4))
        let setsBefore = try count("cmd_set", server)
        let row = try await sample(named: "memcaslap, 64 connections, 2 threads", server: server) {
            try await Task.sleep(for: window)
        }
        // Sets in the window would be warm-up work charged to the gets.
        let sets = try count("cmd_set", server) - setsBefore
        guard sets == 0 else {
            throw BenchmarkError("memcaslap was still warming up in the window: \(sets) sets")
        }
        guard process.isRunning else {
            throw BenchmarkError("memcaslap ended before the window closed (exit \(process.terminationStatus))")
        }
        return row
    }

    /// Runs `load` and reads memcached's `cmd_get` and CPU time before and after it.
    private static func sample(
        named name: String,
        server: MemcachedServerProcess,
        _ load: () async throws -> Void
    ) async throws -> ServerViewRow {
        let clock = ContinuousClock()
        let (getsBefore, cpuBefore, start) = (try getCount(server), try cpuSeconds(server), clock.now)
        try await load()
        let (getsAfter, cpuAfter, finish) = (try getCount(server), try cpuSeconds(server), clock.now)
        let elapsed = start.duration(to: finish)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        // Each `stats` read is one get-less command; the counts are of gets only.
        let gets = Double(getsAfter - getsBefore)
        let row = ServerViewRow(
            name: name,
            getsPerSecond: gets / seconds,
            serverMicrosecondsPerKey: (cpuAfter - cpuBefore) * 1e6 / max(gets, 1)
        )
        print(
            "server view: \(name): \(Int(row.getsPerSecond)) gets/s, "
                + "\(format(row.serverMicrosecondsPerKey, decimals: 2)) µs server CPU per key"
        )
        return row
    }

    private static func getCount(_ server: MemcachedServerProcess) throws -> Int {
        try count("cmd_get", server)
    }

    /// One counter of the server's `stats`.
    private static func count(_ name: String, _ server: MemcachedServerProcess) throws -> Int {
        let stats = try server.rawCommand("stats\r\n")
        guard let line = stats.split(separator: "\r\n").first(where: { $0.hasPrefix("STAT \(name) ") }),
            let count = Int(line.split(separator: " ")[2])
        else {
            throw BenchmarkError("no \(name) in the server's stats")
        }
        return count
    }

    /// The server process's user + system CPU time, from /proc.
    private static func cpuSeconds(_ server: MemcachedServerProcess) throws -> Double {
        let stat = try String(contentsOfFile: "/proc/\(server.pid)/stat", encoding: .utf8)
        // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
        guard let close = stat.lastIndex(of: ")") else { throw BenchmarkError("unreadable /proc stat") }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else {
            throw BenchmarkError("unreadable /proc stat")
        }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}

extension Summary {
    func serverViewSection() -> String {
        guard !serverView.isEmpty else { return "" }
        var lines = [
            "## Gets only, as the server counts them (cmd_get and memcached's CPU time)",
            "",
            "| load | gets/s | ratio to memcaslap | server CPU per key (µs) |",
            "|---|---:|---:|---:|",
        ]
        let memcaslap = serverView.first { $0.name.hasPrefix("memcaslap") }
        for row in serverView {
            let ratio = memcaslap.map { format(row.getsPerSecond / $0.getsPerSecond, decimals: 2) } ?? "-"
            lines.append(
                "| \(row.name) | \(formatRate(row.getsPerSecond)) | \(ratio) | \(format(row.serverMicrosecondsPerKey, decimals: 2)) |"
            )
        }
        return lines.joined(separator: "\n")
    }
}
