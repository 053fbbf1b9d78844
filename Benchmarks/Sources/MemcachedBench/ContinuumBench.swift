import CRawBench
import Foundation
import Memcached

/// `--continuum`: what a consistent continuum costs to build and to hold, at 100 and 1,000
/// servers, as the difference between a connection with a consistent distribution and one with
/// modula over the same servers (which builds no continuum). Nothing is connected: a connection
/// reaches its servers at its first command.
enum ContinuumBench {
    static func servers(_ count: Int) -> [MemcachedServer] {
        (0..<count).map { MemcachedServer(host: "127.0.\($0 / 200).\($0 % 200 + 1)", port: 41_000 + $0) }
    }

    static func connection(_ count: Int, _ distribution: MemcachedDistribution) throws -> MemcachedConnection {
        var configuration = MemcachedConfiguration(servers: servers(count))
        configuration.distribution = distribution
        configuration.hash = .md5
        return try MemcachedConnection(configuration: configuration)
    }

    /// The median time to create a connection, of `repetitions` creations.
    static func medianCreation(_ count: Int, _ distribution: MemcachedDistribution, repetitions: Int) throws -> Duration
    {
        var times: [Duration] = []
        for _ in 0..<repetitions {
            let clock = ContinuousClock()
            let start = clock.now
            let connection = try connection(count, distribution)
            times.append(clock.now - start)
            connection.close()
        }
        return times.sorted()[times.count / 2]
    }

    /// Heap bytes in use after creating the connection, less before (glibc's `mallinfo2`, through
    /// CRawBench, whose SIZE_MAX where there is none reads as -1 here).
    static func heapGrowth(_ count: Int, _ distribution: MemcachedDistribution) throws -> (Int, MemcachedConnection) {
        let before = rawbench_heap_in_use()
        let connection = try connection(count, distribution)
        return (Int(rawbench_heap_in_use()) - Int(before), connection)
    }

    /// The median time of `server(forKey:)` per key over 100,000 keys.
    static func lookupNanoseconds(_ connection: MemcachedConnection, keys: [String]) throws -> Double {
        var samples: [Double] = []
        for _ in 0..<5 {
            let clock = ContinuousClock()
            let start = clock.now
            var sink = 0
            for key in keys {
                sink &+= try connection.server(forKey: key).utf8.count
            }
            let elapsed = clock.now - start
            precondition(sink > 0)
            samples.append(Double(elapsed.components.attoseconds) / 1e9 + Double(elapsed.components.seconds) * 1e9)
        }
        return samples.sorted()[samples.count / 2] / Double(keys.count)
    }

    static func run(repetitions: Int) throws {
        let pinned = Pinning.cpuCount >= 2 && Pinning.pin(process: getpid(), to: 1)
        print("continuum: \(pinned ? "pinned to CPU 1" : "not pinned"), median of \(repetitions) creations")
        let keys = (0..<100_000).map { "continuum:\($0)" }
        print(
            "| servers | distribution | create | continuum build (less modula) | heap held (less modula) | server(forKey:) |"
        )
        print("| ---: | --- | ---: | ---: | ---: | ---: |")
        for count in [100, 1_000] {
            let modula = try medianCreation(count, .modula, repetitions: repetitions)
            let (modulaHeap, modulaConnection) = try heapGrowth(count, .modula)
            let modulaLookup = try lookupNanoseconds(modulaConnection, keys: keys)
            modulaConnection.close()
            print("| \(count) | modula | \(modula) | | | \(String(format: "%.0f", modulaLookup)) ns |")
            for distribution in [MemcachedDistribution.consistent, .libketama, .libmemcachedConsistent] {
                let created = try medianCreation(count, distribution, repetitions: repetitions)
                let (heap, connection) = try heapGrowth(count, distribution)
                let lookup = try lookupNanoseconds(connection, keys: keys)
                connection.close()
                let held =
                    rawbench_heap_in_use() < 0
                    ? "n/a" : "\(String(format: "%.2f", Double(heap - modulaHeap) / 1_048_576)) MiB"
                print(
                    "| \(count) | \(distribution) | \(created) | \(created - modula) | \(held) | "
                        + "\(String(format: "%.0f", lookup)) ns |"
                )
            }
        }
    }
}
