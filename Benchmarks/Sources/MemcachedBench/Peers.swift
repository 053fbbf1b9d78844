import Foundation

/// The Python peers (pylibmc, pymemcache, python-memcached), served by `python/bench.py --serve`
/// against the same server. Their runs join each workload's rotation, A B C D E F, so they see the
/// same machine as ours at the same time.
final class PeerProcess {
    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private var buffered = Data()

    init(python: String, server: (host: String, port: Int), scale: Double) throws {
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [
            benchmarksDirectory + "/python/bench.py", "--serve", "--server", "\(server.host):\(server.port)",
            "--scale", String(scale),
        ]
        process.standardInput = input
        process.standardOutput = output
        try process.run()
    }

    deinit {
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
    }

    private struct Prepared: Decodable {
        struct Peer: Decodable {
            var name: String
            var count: Int
        }
        var peers: [Peer]?
        var error: String?
    }

    private struct Ran: Decodable {
        var seconds: Double?
        var cpu: Double?
        var count: Int?
        var error: String?
    }

    /// Prepares a workload's peers (clients, stored items, a warm-up) and returns them as
    /// variants; empty when Python has nothing for this workload.
    func variants(for workload: Workload) throws -> [Variant] {
        let prepared = try request(["cmd": "prepare", "workload": workload.id], as: Prepared.self)
        if let error = prepared.error {
            throw BenchmarkError("Python peers, \(workload.id): \(error)")
        }
        let baseline = workload.id.hasPrefix("W8") ? "raw C, 2 threads" : "raw C"
        return (prepared.peers ?? []).map { peer in
            let name =
                peer.count < workload.count ? "\(peer.name) (capped at \(formatRate(Double(peer.count))))" : peer.name
            return Variant(
                name: name,
                kind: .peer,
                baseline: baseline,
                measuredElsewhere: { _ in
                    let ran = try self.request(
                        ["cmd": "run", "workload": workload.id, "peer": peer.name],
                        as: Ran.self
                    )
                    guard let seconds = ran.seconds, let cpu = ran.cpu, let count = ran.count else {
                        throw BenchmarkError("Python peer \(peer.name), \(workload.id): \(ran.error ?? "no result")")
                    }
                    return Sample(seconds: seconds, cpuSeconds: cpu, allocations: nil, count: count)
                },
                run: { _ in }
            )
        }
    }

    private func request<Answer: Decodable>(_ command: [String: String], as type: Answer.Type) throws -> Answer {
        var line = try JSONSerialization.data(withJSONObject: command)
        line.append(0x0A)
        try input.fileHandleForWriting.write(contentsOf: line)
        return try JSONDecoder().decode(Answer.self, from: readLine())
    }

    private func readLine() throws -> Data {
        while true {
            if let newline = buffered.firstIndex(of: 0x0A) {
                let line = buffered[buffered.startIndex..<newline]
                buffered = Data(buffered[(newline + 1)...])
                return Data(line)
            }
            // read(2), not FileHandle.read(upToCount:), which on Linux waits for the whole count.
            var chunk = [UInt8](repeating: 0, count: 65_536)
            let received = chunk.withUnsafeMutableBytes {
                read(output.fileHandleForReading.fileDescriptor, $0.baseAddress, $0.count)
            }
            if received < 0, errno == EINTR {
                continue
            }
            guard received > 0 else {
                throw BenchmarkError(
                    "the Python peers exited (status \(process.isRunning ? 0 : process.terminationStatus))"
                )
            }
            buffered.append(contentsOf: chunk[0..<received])
        }
    }
}
