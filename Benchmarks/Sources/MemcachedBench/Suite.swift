import CRawBench
import Memcached

/// The workloads of issue 6, each with its raw C, synchronous and async variants, and the
/// connections they use. Everything a run needs (keys, values, stored items) is made here, before
/// anything is timed.
final class Suite {
    let host: String
    let port: Int
    /// Multiplies every count: 1 for the numbers we report, 0.1 for `--quick`.
    let scale: Double

    static let smallValue = [UInt8]((0..<100).map { UInt8(truncatingIfNeeded: 0x41 + $0 % 26) })
    static let largeValue = [UInt8]((0..<(512 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
    static let keyCount = 10_000
    static let batchSize = 100
    /// A key nobody stores: the round trip that ends a reply-less run.
    static let syncKey = "rawbench:sync"

    private var raw: [String: RawConnection] = [:]
    private var connections: [String: MemcachedConnection] = [:]
    private var clients: [String: MemcachedClient] = [:]

    init(host: String, port: Int, scale: Double) {
        self.host = host
        self.port = port
        self.scale = scale
    }

    func scaled(_ count: Int) -> Int {
        max(1, Int((Double(count) * scale).rounded()))
    }

    // MARK: - Connections, one per kind, made on first use and reused by every workload

    func rawConnection(
        _ name: String,
        binary: Bool = false,
        noReply: Bool = false,
        bufferRequests: Bool = false
    ) throws -> RawConnection {
        if let existing = raw[name] { return existing }
        let connection = try RawConnection(
            host: host,
            port: port,
            binary: binary,
            noReply: noReply,
            bufferRequests: bufferRequests
        )
        raw[name] = connection
        return connection
    }

    func configuration(binary: Bool = false, noReply: Bool = false) throws -> MemcachedConfiguration {
        var configuration = try MemcachedConfiguration(servers: ["\(host):\(port)"])
        configuration.wireProtocol = binary ? .binary : .ascii
        configuration.noReply = noReply
        return configuration
    }

    func connection(_ name: String, binary: Bool = false, noReply: Bool = false) throws -> MemcachedConnection {
        if let existing = connections[name] { return existing }
        let connection = try MemcachedConnection(configuration: configuration(binary: binary, noReply: noReply))
        connections[name] = connection
        return connection
    }

    func client(
        _ name: String,
        binary: Bool = false,
        noReply: Bool = false,
        maximumConnections: Int? = nil,
        coalescesReads: Bool = true,
        coalescesWrites: Bool = true
    ) throws -> MemcachedClient {
        if let existing = clients[name] { return existing }
        var options = MemcachedClient.Options()
        if let maximumConnections {
            options.maximumConnections = maximumConnections
        }
        options.coalescesReads = coalescesReads
        options.coalescesWrites = coalescesWrites
        let client = try MemcachedClient(
            configuration: configuration(binary: binary, noReply: noReply),
            options: options
        )
        clients[name] = client
        return client
    }

    func close() async {
        for client in clients.values {
            await client.close()
        }
        clients = [:]
        for connection in connections.values {
            connection.close()
        }
        connections = [:]
        raw = [:]
    }

    // MARK: - Workloads

    /// Every workload, in report order; `only` limits them to some IDs.
    func workloads(only: Set<String>? = nil) throws -> [Workload] {
        let all: [(String, () throws -> Workload)] = [
            ("W1", { try self.getHit(id: "W1", binary: false) }),
            ("W2", { try self.set() }),
            ("W3", { try self.getMiss() }),
            ("W4", { try self.multiGet(id: "W4", binary: false) }),
            ("W5", { try self.largeValues() }),
            ("W6", { try self.mixed() }),
            ("W7", { try self.multiSet() }),
            ("W8", { try self.concurrency() }),
            ("W8g", { try self.getOnlyConcurrency() }),
            ("W8s", { try self.setOnlyConcurrency() }),
            ("W1b", { try self.getHit(id: "W1b", binary: true) }),
            ("W4b", { try self.multiGet(id: "W4b", binary: true) }),
        ]
        return try all.filter { only?.contains($0.0) ?? true }.map { try $0.1() }
    }

    /// W1 (W1b in binary): sequential gets of one key holding 100 bytes.
    func getHit(id: String, binary: Bool) throws -> Workload {
        let suffix = binary ? "-binary" : ""
        let raw = try rawConnection("raw\(suffix)", binary: binary)
        let sync = try connection("sync\(suffix)", binary: binary)
        let client = try self.client("async\(suffix)", binary: binary)
        let key = "bench:w1"
        let keys = KeySet([key])
        try raw.store(key, Self.smallValue)
        return Workload(
            id: id,
            title: "get hit, 100 B" + (binary ? ", binary protocol" : ""),
            unit: .operations,
            count: scaled(200_000),
            unitsPerStep: 1,
            perWhat: "op",
            perWhatPerStep: 1,
            variants: [
                Variant(name: "raw C", kind: .rawC, baseline: nil) { count in
                    var hits: UInt64 = 0
                    try raw.check(rawbench_get_loop(raw.pointer, keys.pointers, keys.lengths, 1, count, &hits), id)
                    try expect(hits == count, "\(id) raw C: \(hits) hits of \(count)")
                },
                Variant(name: "ours sync", kind: .sync, baseline: "raw C") { count in
                    var hits = 0
                    for _ in 0..<count {
                        if try sync.get(key, as: [UInt8].self) != nil { hits += 1 }
                    }
                    try expect(hits == count, "\(id) sync: \(hits) hits of \(count)")
                },
                Variant(name: "ours async, 1 task", kind: .async, baseline: "raw C") { count in
                    let hits = try await Task.detached {
                        try await Self.getLoop(client, key, count: count)
                    }.value
                    try expect(hits == count, "\(id) async: \(hits) hits of \(count)")
                },
                Variant(name: Self.onClientExecutor, kind: .async, baseline: "raw C") { count in
                    let hits = try await withTaskExecutorPreference(client.taskExecutor) {
                        try await Self.getLoop(client, key, count: count)
                    }
                    try expect(hits == count, "\(id) async on the client's executor: \(hits) hits of \(count)")
                },
            ]
        )
    }

    /// W2: sequential sets of 100-byte values over 10,000 keys.
    func set() throws -> Workload {
        let raw = try rawConnection("raw")
        let rawNoReply = try rawConnection("raw-noreply", noReply: true)
        let sync = try connection("sync")
        let syncNoReply = try connection("sync-noreply", noReply: true)
        let client = try self.client("async")
        let syncKey = Self.syncKey
        let keys = KeySet(prefix: "bench:w2:", count: Self.keyCount)
        let strings = keys.strings
        let value = Self.smallValue
        return Workload(
            id: "W2",
            title: "set, 100 B over 10,000 keys",
            unit: .operations,
            count: scaled(200_000),
            unitsPerStep: 1,
            perWhat: "op",
            perWhatPerStep: 1,
            variants: [
                Variant(name: "raw C", kind: .rawC, baseline: nil) { count in
                    let status = value.withUnsafeBytes { bytes in
                        rawbench_set_loop(
                            raw.pointer,
                            keys.pointers,
                            keys.lengths,
                            keys.count,
                            count,
                            bytes.baseAddress,
                            bytes.count
                        )
                    }
                    try raw.check(status, "W2")
                },
                Variant(name: "ours sync", kind: .sync, baseline: "raw C") { count in
                    for index in 0..<count {
                        try sync.set(strings[index % strings.count], value)
                    }
                },
                Variant(name: "ours async, 1 task", kind: .async, baseline: "raw C") { count in
                    try await Task.detached {
                        for index in 0..<count {
                            try await client.set(strings[index % strings.count], value)
                        }
                    }.value
                },
                // pymemcache's sets are reply-less by default: these two rows are the fair comparison.
                Variant(name: "raw C noreply", kind: .rawC, baseline: nil) { count in
                    let status = value.withUnsafeBytes { bytes in
                        rawbench_set_loop(
                            rawNoReply.pointer,
                            keys.pointers,
                            keys.lengths,
                            keys.count,
                            count,
                            bytes.baseAddress,
                            bytes.count
                        )
                    }
                    try rawNoReply.check(status, "W2 noreply")
                    try rawNoReply.check(rawbench_sync(rawNoReply.pointer), "W2 sync")
                },
                Variant(name: "ours sync noReply", kind: .sync, baseline: "raw C noreply") { count in
                    for index in 0..<count {
                        try syncNoReply.set(strings[index % strings.count], value)
                    }
                    _ = try syncNoReply.get(syncKey, as: [UInt8].self)
                },
            ]
        )
    }

    /// W3: gets of keys that are never stored.
    func getMiss() throws -> Workload {
        let raw = try rawConnection("raw")
        let sync = try connection("sync")
        let client = try self.client("async")
        let keys = KeySet(prefix: "bench:w3:missing:", count: Self.keyCount)
        let strings = keys.strings
        return Workload(
            id: "W3",
            title: "get miss",
            unit: .operations,
            count: scaled(200_000),
            unitsPerStep: 1,
            perWhat: "op",
            perWhatPerStep: 1,
            variants: [
                Variant(name: "raw C", kind: .rawC, baseline: nil) { count in
                    var hits: UInt64 = 0
                    let status = rawbench_get_loop(raw.pointer, keys.pointers, keys.lengths, keys.count, count, &hits)
                    try raw.check(status, "W3")
                    try expect(hits == 0, "W3 raw C: \(hits) hits")
                },
                Variant(name: "ours sync", kind: .sync, baseline: "raw C") { count in
                    var hits = 0
                    for index in 0..<count {
                        if try sync.get(strings[index % strings.count], as: [UInt8].self) != nil { hits += 1 }
                    }
                    try expect(hits == 0, "W3 sync: \(hits) hits")
                },
                Variant(name: "ours async, 1 task", kind: .async, baseline: "raw C") { count in
                    let hits = try await Task.detached {
                        var hits = 0
                        for index in 0..<count {
                            if try await client.get(strings[index % strings.count], as: [UInt8].self) != nil {
                                hits += 1
                            }
                        }
                        return hits
                    }.value
                    try expect(hits == 0, "W3 async: \(hits) hits")
                },
            ]
        )
    }

    /// W4 (W4b in binary): multi-gets of 100 stored keys with 100-byte values.
    func multiGet(id: String, binary: Bool) throws -> Workload {
        let suffix = binary ? "-binary" : ""
        let raw = try rawConnection("raw\(suffix)", binary: binary)
        let sync = try connection("sync\(suffix)", binary: binary)
        let client = try self.client("async\(suffix)", binary: binary)
        let keys = KeySet(prefix: "bench:w4:", count: Self.keyCount)
        for key in keys.strings {
            try raw.store(key, Self.smallValue)
        }
        let batch = Self.batchSize
        let batches = stride(from: 0, to: keys.count, by: batch).map { Array(keys.strings[$0..<($0 + batch)]) }
        return Workload(
            id: id,
            title: "multi-get of 100 keys, 100 B" + (binary ? ", binary protocol" : ""),
            unit: .keys,
            count: scaled(5_000),
            unitsPerStep: Double(batch),
            perWhat: "key",
            perWhatPerStep: Double(batch),
            variants: [
                Variant(name: "raw C", kind: .rawC, baseline: nil) { count in
                    var hits: UInt64 = 0
                    let status = rawbench_mget_loop(
                        raw.pointer,
                        keys.pointers,
                        keys.lengths,
                        keys.count,
                        batch,
                        count,
                        &hits
                    )
                    try raw.check(status, id)
                    try expect(hits == count * batch, "\(id) raw C: \(hits) hits of \(count * batch)")
                },
                Variant(name: "ours sync", kind: .sync, baseline: "raw C") { count in
                    var hits = 0
                    for index in 0..<count {
                        hits += try sync.getMulti(batches[index % batches.count], as: [UInt8].self).hits.count
                    }
                    try expect(hits == count * batch, "\(id) sync: \(hits) hits of \(count * batch)")
                },
                // The values are read in place, as raw C reads them: no dictionary, no copy.
                Variant(name: "ours sync, forEachHit", kind: .sync, baseline: "raw C") { count in
                    var hits = 0
                    var bytes = 0
                    for index in 0..<count {
                        try sync.getMulti(batches[index % batches.count]) { _, value, _ in
                            hits += 1
                            bytes += value.count
                        }
                    }
                    try expect(hits == count * batch, "\(id) forEachHit: \(hits) hits of \(count * batch)")
                    try expect(bytes == hits * Self.smallValue.count, "\(id) forEachHit: \(bytes) bytes")
                },
                Variant(name: "ours async, 1 task", kind: .async, baseline: "raw C") { count in
                    let hits = try await Task.detached {
                        var hits = 0
                        for index in 0..<count {
                            hits += try await client.getMulti(batches[index % batches.count], as: [UInt8].self).hits
                                .count
                        }
                        return hits
                    }.value
                    try expect(hits == count * batch, "\(id) async: \(hits) hits of \(count * batch)")
                },
            ]
        )
    }

    /// W5: a set and a get of one 512 KiB value per step; the rate counts both directions.
    func largeValues() throws -> Workload {
        let raw = try rawConnection("raw")
        let sync = try connection("sync")
        let client = try self.client("async")
        let key = "bench:w5"
        let value = Self.largeValue
        return Workload(
            id: "W5",
            title: "set + get of 512 KiB (MB/s both ways, 1 MB = 10^6 B)",
            unit: .megabytes,
            count: scaled(2_000),
            unitsPerStep: Double(2 * value.count) / 1e6,
            perWhat: "set+get",
            perWhatPerStep: 1,
            variants: [
                Variant(name: "raw C", kind: .rawC, baseline: nil) { count in
                    var hits: UInt64 = 0
                    let status = value.withUnsafeBytes { bytes in
                        rawbench_set_get_loop(
                            raw.pointer,
                            key,
                            key.utf8.count,
                            bytes.baseAddress,
                            bytes.count,
                            count,
                            &hits
                        )
                    }
                    try raw.check(status, "W5")
                },
                Variant(name: "ours sync", kind: .sync, baseline: "raw C") { count in
                    for _ in 0..<count {
                        try sync.set(key, value)
                        let read = try sync.get(key, as: [UInt8].self)
                        try expect(read?.count == value.count, "W5 sync: read \(read?.count ?? -1) bytes")
                    }
                },
                Variant(name: "ours async, 1 task", kind: .async, baseline: "raw C") { count in
                    try await Task.detached {
                        for _ in 0..<count {
                            try await client.set(key, value)
                            let read = try await client.get(key, as: [UInt8].self)
                            try expect(read?.count == value.count, "W5 async: read \(read?.count ?? -1) bytes")
                        }
                    }.value
                },
            ]
        )
    }

    /// The keys W6 and W8 use, all stored, so every get hits.
    lazy var mixedKeys: KeySet = KeySet(prefix: "bench:w6:", count: Self.keyCount)

    func storeMixedKeys(_ raw: RawConnection) throws {
        for key in mixedKeys.strings {
            try raw.store(key, Self.smallValue)
        }
    }

    /// W6: 90% gets, 10% sets over 10,000 stored keys.
    func mixed() throws -> Workload {
        let raw = try rawConnection("raw")
        let sync = try connection("sync")
        let client = try self.client("async")
        let keys = mixedKeys
        try storeMixedKeys(raw)
        let strings = keys.strings
        let value = Self.smallValue
        let operations = MixedOperations.make(count: scaled(200_000), keyCount: keys.count)
        let gets = operations.filter { $0 & MixedOperations.setBit == 0 }.count
        return Workload(
            id: "W6",
            title: "mixed 90% get / 10% set, 10,000 keys",
            unit: .operations,
            count: operations.count,
            unitsPerStep: 1,
            perWhat: "op",
            perWhatPerStep: 1,
            variants: [
                Variant(name: "raw C", kind: .rawC, baseline: nil) { count in
                    try self.rawMixed([raw], keys, operations, count: count, expectedHits: gets)
                },
                Variant(name: "ours sync", kind: .sync, baseline: "raw C") { count in
                    let hits = try Self.runMixed(sync, strings, operations[0..<count], value)
                    try expect(count < operations.count || hits == gets, "W6 sync: \(hits) hits of \(gets)")
                },
                Variant(name: "ours async, 1 task", kind: .async, baseline: "raw C") { count in
                    let slice = operations[0..<count]
                    let hits = try await Task.detached {
                        try await Self.runMixed(client, strings, slice, value)
                    }.value
                    try expect(count < operations.count || hits == gets, "W6 async: \(hits) hits of \(gets)")
                },
                Variant(name: Self.onClientExecutor, kind: .async, baseline: "raw C") { count in
                    let slice = operations[0..<count]
                    let hits = try await withTaskExecutorPreference(client.taskExecutor) {
                        try await Self.runMixed(client, strings, slice, value)
                    }
                    try expect(
                        count < operations.count || hits == gets,
                        "W6 async on the client's executor: \(hits) hits of \(gets)"
                    )
                },
            ]
        )
    }

    /// W7: setMulti of 100 keys, with replies (a round trip per key in libmemcached) and without.
    func multiSet() throws -> Workload {
        let raw = try rawConnection("raw")
        let rawNoReply = try rawConnection("raw-noreply", noReply: true)
        let rawBuffered = try rawConnection("raw-noreply-buffered", noReply: true, bufferRequests: true)
        let sync = try connection("sync")
        let syncNoReply = try connection("sync-noreply", noReply: true)
        let client = try self.client("async")
        let clientNoReply = try self.client("async-noreply", noReply: true)
        let keys = KeySet(prefix: "bench:w7:", count: Self.keyCount)
        let batch = Self.batchSize
        let value = Self.smallValue
        let batches: [[String: [UInt8]]] = stride(from: 0, to: keys.count, by: batch).map { first in
            Dictionary(uniqueKeysWithValues: keys.strings[first..<(first + batch)].map { ($0, value) })
        }
        let syncKey = Self.syncKey

        func rawVariant(_ name: String, _ connection: RawConnection, flush: Bool, baseline: String?) -> Variant {
            Variant(name: name, kind: .rawC, baseline: baseline) { count in
                let status = value.withUnsafeBytes { bytes in
                    rawbench_set_multi_loop(
                        connection.pointer,
                        keys.pointers,
                        keys.lengths,
                        keys.count,
                        batch,
                        count,
                        bytes.baseAddress,
                        bytes.count,
                        flush ? 1 : 0
                    )
                }
                try connection.check(status, "W7 \(name)")
                // Reply-less sets may still be in flight: one round trip ends every variant.
                try connection.check(rawbench_sync(connection.pointer), "W7 sync")
            }
        }
        func syncVariant(_ name: String, _ connection: MemcachedConnection, baseline: String) -> Variant {
            Variant(name: name, kind: .sync, baseline: baseline) { count in
                for index in 0..<count {
                    let notStored = try connection.setMulti(batches[index % batches.count]).keysNotApplied
                    try expect(notStored.isEmpty, "W7 \(name): \(notStored.count) keys not stored")
                }
                _ = try connection.get(syncKey, as: [UInt8].self)
            }
        }
        func asyncVariant(_ name: String, _ client: MemcachedClient, baseline: String) -> Variant {
            Variant(name: name, kind: .async, baseline: baseline) { count in
                try await Task.detached {
                    for index in 0..<count {
                        let notStored = try await client.setMulti(batches[index % batches.count]).keysNotApplied
                        try expect(notStored.isEmpty, "W7 \(name): \(notStored.count) keys not stored")
                    }
                    _ = try await client.get(syncKey, as: [UInt8].self)
                }.value
            }
        }
        return Workload(
            id: "W7",
            title: "setMulti of 100 keys, 100 B",
            unit: .keys,
            count: scaled(5_000),
            unitsPerStep: Double(batch),
            perWhat: "key",
            perWhatPerStep: Double(batch),
            variants: [
                rawVariant("raw C", raw, flush: false, baseline: nil),
                syncVariant("ours sync", sync, baseline: "raw C"),
                asyncVariant("ours async, 1 task", client, baseline: "raw C"),
                rawVariant("raw C noreply", rawNoReply, flush: false, baseline: nil),
                // With noReply our handle buffers writes (BUFFER_REQUESTS) and flushes once per
                // setMulti, so its baseline is raw C doing the same.
                rawVariant("raw C noreply+buffered", rawBuffered, flush: true, baseline: nil),
                syncVariant("ours sync noReply", syncNoReply, baseline: "raw C noreply+buffered"),
                asyncVariant("ours async noReply", clientNoReply, baseline: "raw C noreply+buffered"),
            ]
        )
    }

    /// W8: W6 split over concurrent tasks on the pool, beside raw C with 1 and 2 threads.
    func concurrency() throws -> Workload {
        let operations = MixedOperations.make(count: scaled(200_000), keyCount: mixedKeys.count)
        let pool = try self.client("pool")
        let smallPool = try self.client("pool-2", maximumConnections: 2)
        return try concurrentWorkload(
            id: "W8",
            title: "W6 with concurrency (pool: default 8 connections unless noted)",
            operations: operations,
            pools: [
                ConcurrentPool("pool, 1 task", pool, tasks: 1), ConcurrentPool("pool, 4 tasks", pool, tasks: 4),
                ConcurrentPool("pool, 16 tasks", pool, tasks: 16), ConcurrentPool("pool, 64 tasks", pool, tasks: 64),
                ConcurrentPool("pool of 2, 16 tasks", smallPool, tasks: 16),
                ConcurrentPool("pool, 16 tasks, client's executor", pool, tasks: 16, onClientExecutor: true),
                ConcurrentPool("pool, 64 tasks, client's executor", pool, tasks: 64, onClientExecutor: true),
            ]
        )
    }

    /// W8g: gets only over W6's 10,000 stored keys, split over concurrent tasks, with and without
    /// coalesced reads, beside raw C with 1 and 2 threads (issue 14).
    func getOnlyConcurrency() throws -> Workload {
        let operations = MixedOperations.make(count: scaled(200_000), keyCount: mixedKeys.count)
            .map { $0 & ~MixedOperations.setBit }
        let coalescing = try self.client("pool")
        let plain = try self.client("pool, not coalescing", coalescesReads: false)
        return try concurrentWorkload(
            id: "W8g",
            title: "gets only over 10,000 keys with concurrency (pool of 8 connections)",
            operations: operations,
            pools: Self.coalescingRows(coalescing, plain)
        )
    }

    /// The pools of a workload that compares coalescing with none: 1, 16 and 64 tasks coalescing,
    /// 16 and 64 not, and 64 on the client's executor.
    private static func coalescingRows(_ coalescing: MemcachedClient, _ plain: MemcachedClient) -> [ConcurrentPool] {
        [
            ConcurrentPool("pool, 1 task", coalescing, tasks: 1),
            ConcurrentPool("pool, 16 tasks", coalescing, tasks: 16),
            ConcurrentPool("pool, 64 tasks", coalescing, tasks: 64),
            ConcurrentPool("pool, 16 tasks, not coalescing", plain, tasks: 16),
            ConcurrentPool("pool, 64 tasks, not coalescing", plain, tasks: 64),
            ConcurrentPool("pool, 64 tasks, client's executor", coalescing, tasks: 64, onClientExecutor: true),
        ]
    }

    /// W8s: fire-and-forget sets (`noReply`) over W6's 10,000 keys, split over concurrent tasks,
    /// with and without coalesced writes, beside raw C with reply-less sets on 1 and 2 threads
    /// (issue 14). Each of our sets returns once its bytes are written, as raw C's do.
    func setOnlyConcurrency() throws -> Workload {
        let operations = MixedOperations.make(count: scaled(200_000), keyCount: mixedKeys.count)
            .map { $0 | MixedOperations.setBit }
        let coalescing = try self.client("pool-noreply", noReply: true)
        let plain = try self.client("pool-noreply, not coalescing", noReply: true, coalescesWrites: false)
        return try concurrentWorkload(
            id: "W8s",
            title: "fire-and-forget sets over 10,000 keys with concurrency (pool of 8 connections)",
            operations: operations,
            pools: Self.coalescingRows(coalescing, plain),
            noReply: true
        )
    }

    /// A workload of `operations` over W6's stored keys: raw C with 1 and 2 threads, and each
    /// pool with its number of tasks; every get must hit. With `noReply`, raw C's sets skip their
    /// replies too.
    private func concurrentWorkload(
        id: String,
        title: String,
        operations: [UInt32],
        pools: [ConcurrentPool],
        noReply: Bool = false
    ) throws -> Workload {
        let keys = mixedKeys
        let suffix = noReply ? "-noreply" : ""
        let rawSingle = try rawConnection("raw-thread-0\(suffix)", noReply: noReply)
        let rawSecond = try rawConnection("raw-thread-1\(suffix)", noReply: noReply)
        try storeMixedKeys(rawSingle)
        let strings = keys.strings
        let value = Self.smallValue
        let gets = operations.filter { $0 & MixedOperations.setBit == 0 }.count
        let raw = [
            Variant(name: "raw C, 1 thread", kind: .rawC, baseline: "raw C, 2 threads", countAllocations: false) {
                count in
                try self.rawMixed([rawSingle], keys, operations, count: count, expectedHits: gets)
            },
            Variant(name: "raw C, 2 threads", kind: .rawC, baseline: nil, countAllocations: false) { count in
                try self.rawMixed([rawSingle, rawSecond], keys, operations, count: count, expectedHits: gets)
            },
        ]
        let pooled = pools.map { pool in
            Variant(name: pool.name, kind: .async, baseline: "raw C, 2 threads", countAllocations: false) { count in
                let slice = Array(operations[0..<count])
                let hits = try await Self.runConcurrently(pool, strings, slice, value)
                try expect(count < operations.count || hits == gets, "\(id) \(pool.name): \(hits) hits of \(gets)")
            }
        }
        return Workload(
            id: id,
            title: title,
            unit: .operations,
            count: operations.count,
            unitsPerStep: 1,
            perWhat: "op",
            perWhatPerStep: 1,
            variants: raw + pooled
        )
    }

    // MARK: - Shared loops

    func rawMixed(
        _ connections: [RawConnection],
        _ keys: KeySet,
        _ operations: [UInt32],
        count: Int,
        expectedHits: Int
    ) throws {
        var hits: UInt64 = 0
        let value = Self.smallValue
        let status = operations.withUnsafeBufferPointer { operations in
            value.withUnsafeBytes { bytes in
                if connections.count == 1 {
                    return rawbench_mixed_loop(
                        connections[0].pointer,
                        keys.pointers,
                        keys.lengths,
                        operations.baseAddress,
                        count,
                        bytes.baseAddress,
                        bytes.count,
                        &hits
                    )
                }
                let pointers: [OpaquePointer?] = connections.map(\.pointer)
                return pointers.withUnsafeBufferPointer { conns in
                    rawbench_mixed_threads(
                        conns.baseAddress,
                        conns.count,
                        keys.pointers,
                        keys.lengths,
                        operations.baseAddress,
                        count,
                        bytes.baseAddress,
                        bytes.count,
                        &hits
                    )
                }
            }
        }
        try connections[0].check(status, "mixed")
        try expect(count < operations.count || hits == expectedHits, "raw C mixed: \(hits) hits of \(expectedHits)")
    }

    static func runMixed(
        _ connection: MemcachedConnection,
        _ keys: [String],
        _ operations: ArraySlice<UInt32>,
        _ value: [UInt8]
    ) throws -> Int {
        var hits = 0
        for operation in operations {
            let key = keys[Int(operation & ~MixedOperations.setBit)]
            if operation & MixedOperations.setBit != 0 {
                try connection.set(key, value)
            } else if try connection.get(key, as: [UInt8].self) != nil {
                hits += 1
            }
        }
        return hits
    }

    static func runMixed(
        _ client: MemcachedClient,
        _ keys: [String],
        _ operations: ArraySlice<UInt32>,
        _ value: [UInt8]
    ) async throws -> Int {
        var hits = 0
        for operation in operations {
            let key = keys[Int(operation & ~MixedOperations.setBit)]
            if operation & MixedOperations.setBit != 0 {
                try await client.set(key, value)
            } else if try await client.get(key, as: [UInt8].self) != nil {
                hits += 1
            }
        }
        return hits
    }

    /// Splits `operations` into one slice per task of `pool`, run by concurrent child tasks of one
    /// group, on the client's executor when the pool says so.
    static func runConcurrently(
        _ pool: ConcurrentPool,
        _ keys: [String],
        _ operations: [UInt32],
        _ value: [UInt8]
    ) async throws -> Int {
        let client = pool.client
        let tasks = pool.tasks
        let executor: (any TaskExecutor)? = pool.onClientExecutor ? client.taskExecutor : nil
        return try await Task.detached {
            try await withTaskExecutorPreference(executor) {
                try await withThrowingTaskGroup(of: Int.self) { group in
                    let perTask = operations.count / tasks
                    for task in 0..<tasks {
                        let end = task + 1 == tasks ? operations.count : (task + 1) * perTask
                        let slice = operations[(task * perTask)..<end]
                        group.addTask { try await runMixed(client, keys, slice, value) }
                    }
                    return try await group.reduce(0, +)
                }
            }
        }.value
    }

    static func getLoop(_ client: MemcachedClient, _ key: String, count: Int) async throws -> Int {
        var hits = 0
        for _ in 0..<count {
            if try await client.get(key, as: [UInt8].self) != nil { hits += 1 }
        }
        return hits
    }

    /// The name of a single-task variant whose task runs on the client's own executor.
    static let onClientExecutor = "ours async, 1 task, client's executor"
}

/// A client and how many concurrent tasks share it in a concurrency workload.
struct ConcurrentPool: Sendable {
    let name: String
    let client: MemcachedClient
    let tasks: Int
    /// Whether the tasks run on ``MemcachedClient/taskExecutor``.
    let onClientExecutor: Bool

    init(_ name: String, _ client: MemcachedClient, tasks: Int, onClientExecutor: Bool = false) {
        self.name = name
        self.client = client
        self.tasks = tasks
        self.onClientExecutor = onClientExecutor
    }
}
