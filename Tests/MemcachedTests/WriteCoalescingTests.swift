import Foundation
import MemcachedTestSupport
import Testing

@testable import Memcached

/// Coalesced fire-and-forget writes (`MemcachedClient.Options.coalescesWrites`): `set` and
/// `delete` calls of a `noReply` client that find every connection busy are sent by one batch,
/// each caller answered only once its bytes are written, and never told "written" when that is
/// not known. Against real memcached servers and loopback fault servers.
@Suite("Coalesced writes", .offCooperativePool, .timeLimit(.minutes(5)))
struct WriteCoalescingTests {
    static func client(
        _ servers: [String],
        noReply: Bool = true,
        coalescesWrites: Bool = true,
        timeout: Duration = .seconds(5),
        maximumValueLength: Int = 1_048_576
    ) throws -> MemcachedClient {
        var configuration = try MemcachedConfiguration(servers: servers)
        configuration.noReply = noReply
        configuration.maximumValueLength = maximumValueLength
        configuration.timeout = timeout
        configuration.connectTimeout = timeout
        var options = MemcachedClient.Options()
        options.maximumConnections = 1
        // The tests are about batches, not waiting: a loaded machine must not end a wait early.
        options.connectionWaitTimeout = .seconds(120)
        options.coalescesWrites = coalescesWrites
        return try MemcachedClient(configuration: configuration, options: options)
    }

    /// Starts `count` commands while the client's one connection is held, in order (each waits
    /// in the batch before the next starts), and returns them with the holder.
    static func queued<Value: Sendable>(
        _ client: MemcachedClient,
        count: Int,
        _ command: @escaping @Sendable (Int) async throws -> Value
    ) async throws -> ([Task<Value, any Error>], ConnectionHolder) {
        let holder = try await ConnectionHolder(client)
        var tasks: [Task<Value, any Error>] = []
        for index in 0..<count {
            tasks.append(Task(executorPreference: ThreadPerJobExecutor()) { try await command(index) })
            try await waitUntil { client.pool.queuedCommandCount == index + 1 }
        }
        return (tasks, holder)
    }

    @Test("sets, deletes and reads that find the connection busy are served by one batch, each with its own outcome")
    func writesAndReadsShareABatch() async throws {
        try await withMemcached(servers: 2) { cluster in
            let client = try Self.client(cluster.addresses)
            #expect(client.batchesWrites)
            let direct = try MemcachedConnection(configuration: MemcachedConfiguration(servers: cluster.addresses))
            defer { direct.close() }
            for index in 0..<10 {
                try direct.set("doomed:\(index)", "old")
                try direct.set("kept:\(index)", "kept \(index)")
            }
            // 20 sets, 10 deletes, 10 reads, interleaved.
            let (tasks, holder) = try await Self.queued(client, count: 40) { index -> String? in
                switch index % 4 {
                case 0, 1:
                    let key = "written:\(index)"
                    return try await client.set(key, "value \(index)") ? key : "declined \(key)"
                case 2:
                    return try await client.delete("doomed:\(index / 4)") ? "deleted" : "not deleted"
                default:
                    return try await client.get("kept:\(index / 4)", as: String.self)
                }
            }
            #expect(client.pool.waiterCount == 1, "one batch waits")
            try await holder.release()
            for (index, task) in tasks.enumerated() {
                let answer = try await task.value
                switch index % 4 {
                case 0, 1: #expect(answer == "written:\(index)")
                case 2: #expect(answer == "deleted")
                default: #expect(answer == "kept \(index / 4)")
                }
            }
            #expect(client.pool.coalescedCommands == (batches: 1, commands: 40))
            for index in 0..<40 where index % 4 < 2 {
                #expect(eventually(direct, "written:\(index)", holds: "value \(index)"))
            }
            for index in 0..<10 {
                #expect(eventually(direct, "doomed:\(index)", holds: nil), "deleted")
            }
            await client.close()
        }
    }

    @Test("a server that refuses connections fails only the writes of its keys; the others are written")
    func refusedServerFailsOnlyItsWrites() async throws {
        try await withMemcached { cluster in
            let refusing = try RefusingLoopbackPort()
            defer { refusing.release() }
            let client = try Self.client([cluster.addresses[0], refusing.address])
            let direct = try MemcachedConnection(configuration: MemcachedConfiguration(servers: [cluster.addresses[0]]))
            defer { direct.close() }
            let keys = (0..<16).map { "spread:\($0)" }
            var owners: [String: String] = [:]
            for key in keys {
                owners[key] = try await client.withConnection { try $0.server(forKey: key) }
            }
            #expect(Set(owners.values).count == 2, "keys on both servers")
            let (tasks, holder) = try await Self.queued(client, count: keys.count) { index in
                try await client.set(keys[index], "value of \(keys[index])")
            }
            try await holder.release()
            for (key, task) in zip(keys, tasks) {
                let result = await task.result
                if owners[key] == refusing.address {
                    #expect(throws: MemcachedError.self, "\(key) is on the refusing server") { try result.get() }
                } else {
                    #expect(try result.get() == true, "\(key) is on the live server")
                    #expect(eventually(direct, key, holds: "value of \(key)"))
                }
            }
            await client.close()
        }
    }

    @Test(
        "a server that takes no bytes: the batch ends within the timeout, and no write is reported written unless it is on its server"
    )
    func stalledServerNeverReportsAWriteItLost() async throws {
        try await withMemcached { cluster in
            let silent = try SilentServer()
            defer { silent.stop() }
            let timeout = Duration.milliseconds(500)
            // Values larger than memcached takes are fine: the silent server never reads them.
            let client = try Self.client(
                [cluster.addresses[0], silent.address],
                timeout: timeout,
                maximumValueLength: 16 << 20
            )
            let direct = try MemcachedConnection(configuration: MemcachedConfiguration(servers: [cluster.addresses[0]]))
            defer { direct.close() }
            var live: [String] = []
            var stalled: String?
            var index = 0
            while live.count < 6 || stalled == nil {
                let key = "stalled:\(index)"
                index += 1
                if try await client.withConnection({ try $0.server(forKey: key) }) == silent.address {
                    stalled = stalled ?? key
                } else if live.count < 6 {
                    live.append(key)
                }
            }
            // Three small writes buffered for the live server, then 16 MiB for the silent one
            // (more than a socket nobody reads takes, so it blocks until the deadline), then three more.
            let keys = live.prefix(3) + [stalled!] + live.suffix(3)
            let large = String(repeating: "x", count: 16 << 20)
            let (tasks, holder) = try await Self.queued(client, count: keys.count) { index in
                try await client.set(keys[index], index == 3 ? large : "small \(index)")
            }
            let released = ContinuousClock.now
            try await holder.release()
            for (index, (key, task)) in zip(keys, tasks).enumerated() {
                let result = await task.result
                if index >= 3 {
                    // The stalled write ran out the batch's time: it, and the writes not yet sent, fail.
                    let error = #expect(throws: MemcachedError.self, "\(key) at \(index)") { try result.get() }
                    #expect(error?.code == .timeout, "\(String(describing: error))")
                } else if (try? result.get()) == true {
                    #expect(eventually(direct, key, holds: "small \(index)"), "\(key) was reported written")
                }
            }
            let elapsed = released.duration(to: .now)
            #expect(elapsed < (timeout * 2).scaledForTests + .seconds(1), "the batch took \(elapsed)")
            await client.close()
        }
    }

    @Test(
        "a server that hangs up in the middle of a write fails that write; the writes to another server around it are written or, if the connections were reset, fail"
    )
    func hangUpFailsOnlyItsWrite() async throws {
        try await withMemcached { cluster in
            // Hangs up on the first line it reads, with the rest of a large value unread: the
            // client's write then fails with a reset connection, well within the timeout.
            let hangingUp = try ScriptedServer { _ in nil }
            defer { hangingUp.stop() }
            let client = try Self.client([cluster.addresses[0], hangingUp.address], maximumValueLength: 16 << 20)
            let direct = try MemcachedConnection(configuration: MemcachedConfiguration(servers: [cluster.addresses[0]]))
            defer { direct.close() }
            func key(on server: String, _ name: String) async throws -> String {
                for index in 0... {
                    let key = "\(name):\(index)"
                    if try await client.withConnection({ try $0.server(forKey: key) }) == server { return key }
                }
                fatalError("unreachable")
            }
            let before = try await key(on: cluster.addresses[0], "before")
            let breaking = try await key(on: hangingUp.address, "breaking")
            let after = try await key(on: cluster.addresses[0], "after")
            let large = String(repeating: "x", count: 16 << 20)
            let (tasks, holder) = try await Self.queued(client, count: 3) { index in
                switch index {
                case 0: try await client.set(before, "small before")
                case 1: try await client.set(breaking, large)
                default: try await client.set(after, "small after")
                }
            }
            try await holder.release()
            let broken = await #expect(throws: MemcachedError.self) { try await tasks[1].value }
            #expect(broken?.server == hangingUp.address, "\(String(describing: broken))")
            // Usually libmemcached closes only the broken socket (a reset connection): the other
            // server's buffer stays and the batch's flush sends it. When the failure is one that
            // resets every connection (a loaded machine gave EAGAIN), the write buffered before
            // it is not known to have arrived, and says so.
            switch await tasks[0].result {
            case .success(let applied):
                #expect(applied)
                #expect(eventually(direct, before, holds: "small before"), "reported written")
            case .failure(let error):
                #expect("\(error)".contains("not known to have reached the server"), "\(error)")
                #expect((error as? MemcachedError)?.key == before)
            }
            #expect(try await tasks[2].value, "sent after the broken write")
            #expect(eventually(direct, after, holds: "small after"))
            await client.close()
        }
    }

    @Test("a write that breaks its server's socket fails the write buffered for that server before it")
    func brokenSocketFailsTheWriteBufferedBeforeIt() async throws {
        // Hangs up on the first line it reads, with the rest of a large value unread: the client's
        // write then fails with a reset connection, and libmemcached drops that socket's buffer.
        let hangingUp = try ScriptedServer { _ in nil }
        defer { hangingUp.stop() }
        let client = try Self.client([hangingUp.address], maximumValueLength: 16 << 20)
        let large = String(repeating: "x", count: 16 << 20)
        let (tasks, holder) = try await Self.queued(client, count: 2) { index in
            try await client.set("broken:\(index)", index == 0 ? "small" : large)
        }
        try await holder.release()
        let buffered = await #expect(throws: MemcachedError.self, "its bytes went with the broken socket") {
            try await tasks[0].value
        }
        #expect(
            buffered?.message.contains("not known to have reached the server") == true,
            "\(String(describing: buffered))"
        )
        #expect(buffered?.key == "broken:0")
        await #expect(throws: MemcachedError.self, "the write the server hung up on") { try await tasks[1].value }
        await client.close()
    }

    @Test("a write the caller's input fails (a key, a value too large) fails alone; the writes around it are written")
    func invalidWriteFailsAlone() async throws {
        try await withMemcached { cluster in
            let client = try Self.client(cluster.addresses)
            let direct = try MemcachedConnection(configuration: MemcachedConfiguration(servers: cluster.addresses))
            defer { direct.close() }
            let tooLarge = String(repeating: "x", count: 2 << 20)
            let (tasks, holder) = try await Self.queued(client, count: 4) { index in
                switch index {
                case 1: try await client.set("bad key", "value")
                case 2: try await client.set("large", tooLarge)
                default: try await client.set("good:\(index)", "value \(index)")
                }
            }
            try await holder.release()
            let badKey = await #expect(throws: MemcachedError.self) { try await tasks[1].value }
            #expect(badKey?.code == .invalidKeyCharacters, "\(String(describing: badKey))")
            let large = await #expect(throws: MemcachedError.self) { try await tasks[2].value }
            #expect(large?.code == .valueTooLarge, "\(String(describing: large))")
            for index in [0, 3] {
                #expect(try await tasks[index].value, "good:\(index)")
                #expect(eventually(direct, "good:\(index)", holds: "value \(index)"))
            }
            #expect(client.pool.coalescedCommands == (batches: 1, commands: 4))
            await client.close()
        }
    }

    @Test("a write cancelled while its batch waits is answered at once and never sent; the others are written")
    func cancelledWriteIsNotSent() async throws {
        try await withMemcached { cluster in
            let client = try Self.client(cluster.addresses)
            let direct = try MemcachedConnection(configuration: MemcachedConfiguration(servers: cluster.addresses))
            defer { direct.close() }
            let (tasks, holder) = try await Self.queued(client, count: 3) { index in
                try await client.set("cancel:\(index)", "value \(index)")
            }
            tasks[1].cancel()
            await #expect(throws: CancellationError.self) { try await tasks[1].value }
            try await holder.release()
            let first = try await tasks[0].value
            let third = try await tasks[2].value
            #expect(first && third)
            // The three would share a socket in order: once the third is applied, the second would be.
            #expect(eventually(direct, "cancel:0", holds: "value 0"))
            #expect(eventually(direct, "cancel:2", holds: "value 2"))
            #expect(try direct.get("cancel:1", as: String.self) == nil, "the cancelled write was not sent")
            await client.close()
        }
    }

    @Test("writes that wait for replies, or with coalescesWrites off, or in the binary protocol, wait one by one")
    func writesWithRepliesAreNotBatched() async throws {
        try await withMemcached { cluster in
            var binary = try MemcachedConfiguration(servers: cluster.addresses)
            binary.noReply = true
            binary.wireProtocol = .binary
            #expect(try !MemcachedClient(configuration: binary).batchesWrites, "binary writes always wait")
            for client in [
                try Self.client(cluster.addresses, noReply: false),
                try Self.client(cluster.addresses, coalescesWrites: false),
            ] {
                #expect(!client.batchesWrites)
                let holder = try await ConnectionHolder(client)
                let writes = (0..<3).map { index in
                    Task(executorPreference: ThreadPerJobExecutor()) { try await client.set("alone:\(index)", "v") }
                }
                try await waitUntil { client.pool.waiterCount == 3 }
                #expect(client.pool.queuedCommandCount == 0, "each write waits for a connection of its own")
                try await holder.release()
                for write in writes {
                    #expect(try await write.value)
                }
                #expect(client.pool.coalescedCommands.batches == 0)
                await client.close()
            }
        }
    }
}
