import Histogram
import Memcached

/// One line of the latency table: how long each `get` took, end to end as its caller saw it.
struct LatencyRow {
    var name: String
    var tasks: Int
    var histogram: Histogram<UInt64>

    /// A percentile in microseconds.
    func microseconds(_ percentile: Double) -> Double {
        Double(histogram.valueAtPercentile(percentile)) / 1_000
    }
}

extension Suite {
    /// Per-command latency of `get` over W6's 10,000 stored keys at 1, 16 and 64 tasks: the pool
    /// with and without coalesced reads, its tasks on the default executor or on the client's,
    /// and the synchronous connection as the floor (issue 14). Every call is timed on its own and
    /// recorded in an HdrHistogram per task; the configurations run in turn, `repetitions` times,
    /// each over the same keys, and a configuration's histograms are merged.
    func latencyTable(repetitions: Int) async throws -> [LatencyRow] {
        try storeMixedKeys(try rawConnection("raw-thread-0"))
        let keys = mixedKeys.strings
        let operations = MixedOperations.make(count: scaled(100_000), keyCount: keys.count)
            .map { Int($0 & ~MixedOperations.setBit) }
        let sync = try connection("sync")
        let coalescing = try client("pool")
        let plain = try client("pool, not coalescing", coalescesReads: false)
        var configurations: [(name: String, tasks: Int, run: () async throws -> Histogram<UInt64>)] = [
            ("ours sync", 1, { try Self.timedGets(sync, keys, operations[...]) })
        ]
        for tasks in [1, 16, 64] {
            configurations += [
                ("pool, coalescing", tasks, { try await Self.timedGets(coalescing, keys, operations, tasks: tasks) }),
                ("pool, not coalescing", tasks, { try await Self.timedGets(plain, keys, operations, tasks: tasks) }),
                (
                    "pool, coalescing, client's executor", tasks,
                    {
                        try await Self.timedGets(
                            coalescing,
                            keys,
                            operations,
                            tasks: tasks,
                            executor: coalescing.taskExecutor
                        )
                    }
                ),
            ]
        }
        var merged = configurations.map { _ in Self.emptyHistogram() }
        for _ in 0..<repetitions {
            for (index, configuration) in configurations.enumerated() {
                merged[index].add(try await configuration.run())
            }
        }
        return zip(configurations, merged).map { LatencyRow(name: $0.name, tasks: $0.tasks, histogram: $1) }
    }

    /// Nanoseconds from one microsecond-resolution bucket up to a minute.
    static func emptyHistogram() -> Histogram<UInt64> {
        Histogram(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    }

    static func timedGets(
        _ connection: MemcachedConnection,
        _ keys: [String],
        _ operations: ArraySlice<Int>
    ) throws -> Histogram<UInt64> {
        var histogram = emptyHistogram()
        let clock = ContinuousClock()
        for operation in operations {
            let start = clock.now
            let value = try connection.get(keys[operation], as: [UInt8].self)
            histogram.record(nanoseconds(start.duration(to: clock.now)))
            try expect(value != nil, "latency: a miss for \(keys[operation])")
        }
        return histogram
    }

    /// Splits `operations` over `tasks` child tasks, on `executor` when given; each times its gets.
    static func timedGets(
        _ client: MemcachedClient,
        _ keys: [String],
        _ operations: [Int],
        tasks: Int,
        executor: (any TaskExecutor)? = nil
    ) async throws -> Histogram<UInt64> {
        try await Task.detached {
            try await withTaskExecutorPreference(executor) {
                try await withThrowingTaskGroup(of: Histogram<UInt64>.self) { group in
                    let perTask = operations.count / tasks
                    for task in 0..<tasks {
                        let end = task + 1 == tasks ? operations.count : (task + 1) * perTask
                        let slice = operations[(task * perTask)..<end]
                        group.addTask {
                            var histogram = emptyHistogram()
                            let clock = ContinuousClock()
                            for operation in slice {
                                let start = clock.now
                                let value = try await client.get(keys[operation], as: [UInt8].self)
                                histogram.record(nanoseconds(start.duration(to: clock.now)))
                                try expect(value != nil, "latency: a miss for \(keys[operation])")
                            }
                            return histogram
                        }
                    }
                    return try await group.reduce(into: emptyHistogram()) { $0.add($1) }
                }
            }
        }.value
    }

    static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(0, seconds * 1_000_000_000 + attoseconds / 1_000_000_000))
    }
}

extension Summary {
    func latencySection() -> String {
        guard !latency.isEmpty else { return "" }
        var lines = [
            "## Latency per get (µs, HdrHistogram, every call timed; repetitions merged)",
            "",
            "| variant | tasks | p50 | p99 | p99.9 | max |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in latency {
            let cells = [50.0, 99.0, 99.9].map { format(row.microseconds($0), decimals: 1) }
            let max = format(Double(row.histogram.max) / 1_000, decimals: 1)
            lines.append("| \(row.name) | \(row.tasks) | \(cells.joined(separator: " | ")) | \(max) |")
        }
        if let with = latency.first(where: { $0.name == "pool, coalescing" && $0.tasks == 1 }),
            let without = latency.first(where: { $0.name == "pool, not coalescing" && $0.tasks == 1 })
        {
            let raised = with.microseconds(99) > without.microseconds(99) * 1.05
            lines += [
                "",
                "- coalescing at 1 task: p99 \(format(with.microseconds(99), decimals: 1)) µs vs \(format(without.microseconds(99), decimals: 1)) µs without (not raised by more than 5 %: \(verdict(!raised)))",
            ]
        }
        return lines.joined(separator: "\n")
    }
}
