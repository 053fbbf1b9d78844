// One process of the cross-process stampede test (CacheAsideTests): it waits until the test says
// go, then misses one key from many tasks at once through `get(_:as:orSet:loadTimeout:logger:load:)`,
// counting its loads in memcached, and prints what it read as JSON.
//
//     CacheAsideProbe SERVER KEY TASKS
import Foundation
import Memcached

@main
struct CacheAsideProbe {
    static func main() async throws {
        let arguments = CommandLine.arguments
        guard arguments.count == 4, let tasks = Int(arguments[3]) else {
            FileHandle.standardError.write(Data("usage: CacheAsideProbe SERVER KEY TASKS\n".utf8))
            exit(2)
        }
        let key = arguments[2]
        var configuration = try MemcachedConfiguration(servers: [arguments[1]])
        configuration.timeout = .seconds(5)
        let client = try MemcachedClient(configuration: configuration)

        // Ready, then wait for the test's go: every process misses the key at the same moment.
        _ = try await client.add("\(key).ready", 0)
        _ = try await client.increment("\(key).ready")
        let waitStarted = ContinuousClock.now
        while try await client.get("\(key).go", as: Int.self) == nil {
            guard ContinuousClock.now - waitStarted < .seconds(30) else {
                FileHandle.standardError.write(Data("no go within 30 s\n".utf8))
                exit(1)
            }
            try await Task.sleep(for: .milliseconds(2))
        }

        let values = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    try await client.get(key, as: Int.self, orSet: .seconds(60), loadTimeout: .seconds(10)) {
                        // The loader: counted in memcached, where every process sees the total.
                        _ = try await client.increment("\(key).loads")
                        try await Task.sleep(for: .milliseconds(300))  // a slow query
                        return 42
                    }
                }
            }
            var values: [Int] = []
            for try await value in group {
                values.append(value)
            }
            return values
        }
        await client.close()
        print(String(decoding: try JSONEncoder().encode(values), as: UTF8.self))
    }
}
