import Foundation
import Logging
import Memcached
import MemcachedTestSupport
import Synchronization

/// Opens a connection to a cluster's servers with a short timeout, adjusted by the test.
func connect(
    _ cluster: MemcachedCluster,
    wireProtocol: MemcachedConfiguration.WireProtocol = .ascii,
    _ adjust: (inout MemcachedConfiguration) -> Void = { _ in }
) throws -> MemcachedConnection {
    var configuration = try MemcachedConfiguration(servers: cluster.addresses)
    configuration.wireProtocol = wireProtocol
    configuration.timeout = .seconds(2)
    configuration.connectTimeout = .seconds(2)
    adjust(&configuration)
    return try MemcachedConnection(configuration: configuration)
}

/// The bytes a server has read so far, from its own `stats` (read on a separate socket).
///
/// Each call itself adds the 7 bytes of `stats\r\n`, so two consecutive readings differ by exactly
/// 7 when nothing else reached the server.
func bytesRead(_ server: MemcachedServerProcess) throws -> Int {
    let reply = try server.rawCommand("stats\r\n")
    return Int(MemcachedServerProcess.parseStatistic("bytes_read", from: reply) ?? "") ?? -1
}

/// A statistic of a server, read on a separate socket.
func statistic(_ name: String, of server: MemcachedServerProcess) throws -> Int {
    let reply = try server.rawCommand("stats\r\n")
    return Int(MemcachedServerProcess.parseStatistic(name, from: reply) ?? "") ?? -1
}

/// The flags a server stores for a key, read with a raw `get` on a separate socket.
func storedFlags(_ key: String, on server: MemcachedServerProcess) throws -> UInt32? {
    let reply = try server.rawCommand("get \(key)\r\n")
    guard let line = reply.split(separator: "\r\n").first, line.hasPrefix("VALUE ") else { return nil }
    let fields = line.split(separator: " ")
    return UInt32(fields[2])
}

/// Measures how long a throwing call takes, returning the error it threw, if any.
func timed(_ body: () throws -> Void) -> (Duration, (any Error)?) {
    let clock = ContinuousClock()
    var thrown: (any Error)?
    let elapsed = clock.measure {
        do { try body() } catch { thrown = error }
    }
    return (elapsed, thrown)
}

/// A log handler that keeps every message and its metadata, to check what the library logs.
final class RecordingLogHandler: LogHandler, @unchecked Sendable {
    struct Entry: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }

    let entries = Mutex<[Entry]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let entry = Entry(
            level: event.level,
            message: "\(event.message)",
            metadata: (event.metadata ?? [:]).mapValues { "\($0)" }
        )
        entries.withLock { $0.append(entry) }
    }
}

/// SplitMix64: a small, seeded, deterministic generator, so a failing sequence can be replayed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
