import Foundation

/// System calls per operation of one variant, from `strace -c -f`.
struct SyscallCount {
    var workload: String
    var variant: String
    /// Calls per operation by system call name, and how many of them failed (EAGAIN and the like).
    var perOperation: [(name: String, calls: Double, errors: Double)]

    var total: Double { perOperation.reduce(0) { $0 + $1.calls } }

    /// The calls that move bytes: sends, and reads that returned data. The rest (reads failing with
    /// EAGAIN and the polls after them) depend on whether the reply had arrived yet.
    var transfers: Double {
        let moving: Set = ["sendto", "send", "sendmsg", "write", "writev", "recvfrom", "recv", "recvmsg", "read"]
        return perOperation.filter { moving.contains($0.name) }.reduce(0) { $0 + $1.calls - $1.errors }
    }
}

/// Counts system calls per operation by running the benchmark itself under `strace -c -f` twice,
/// with N and 2N operations, and dividing the difference by N: start-up, connecting and the
/// pool's threads cost the same in both runs and cancel out.
enum SyscallCounter {
    static let cases: [(workload: String, variant: String)] = [
        ("W1", "raw C"), ("W1", "ours sync"), ("W1", "ours async, 1 task"),
        ("W2", "raw C"), ("W2", "ours sync"), ("W2", "ours async, 1 task"),
        ("W1b", "raw C"), ("W1b", "ours sync"),
    ]
    static let operations = 5_000

    static func measure(server: (host: String, port: Int)) throws -> [SyscallCount] {
        let strace = ["/usr/bin/strace", "/bin/strace"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let strace else {
            print("syscall counts skipped: strace is not installed (apt-get install strace)")
            return []
        }
        let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        return try cases.map { workload, variant in
            let small = try count(strace, executable, workload, variant, operations, server)
            let large = try count(strace, executable, workload, variant, 2 * operations, server)
            let names = Set(small.keys).union(large.keys)
            let perOperation = names.compactMap { name -> (name: String, calls: Double, errors: Double)? in
                let calls = Double((large[name]?.calls ?? 0) - (small[name]?.calls ?? 0)) / Double(operations)
                let errors = Double((large[name]?.errors ?? 0) - (small[name]?.errors ?? 0)) / Double(operations)
                // Below 0.01 a call is start-up noise, not part of an operation.
                return calls >= 0.01 ? (name, calls, errors) : nil
            }
            return SyscallCount(
                workload: workload,
                variant: variant,
                perOperation: perOperation.sorted { $0.calls > $1.calls }
            )
        }
    }

    private static func count(
        _ strace: String,
        _ executable: String,
        _ workload: String,
        _ variant: String,
        _ operations: Int,
        _ server: (host: String, port: Int)
    ) throws -> [String: (calls: Int, errors: Int)] {
        let output = NSTemporaryDirectory() + "memcachedbench-strace-\(getpid()).txt"
        defer { try? FileManager.default.removeItem(atPath: output) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: strace)
        process.arguments = [
            "-f", "-c", "-o", output, executable, "--child", workload, variant, String(operations),
            "--server", "\(server.host):\(server.port)",
        ]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw BenchmarkError("strace of \(workload) \(variant) exited with \(process.terminationStatus)")
        }
        return parse(try String(contentsOfFile: output, encoding: .utf8))
    }

    /// Reads strace's summary table: `% time  seconds  usecs/call  calls  [errors]  syscall`.
    static func parse(_ summary: String) -> [String: (calls: Int, errors: Int)] {
        var counts: [String: (calls: Int, errors: Int)] = [:]
        for line in summary.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count == 5 || fields.count == 6, Double(fields[0]) != nil, let calls = Int(fields[3]) else {
                continue
            }
            let name = String(fields[fields.count - 1])
            guard name != "total" else { continue }
            let errors = fields.count == 6 ? Int(fields[4]) ?? 0 : 0
            counts[name] = (calls, errors)
        }
        return counts
    }

    static func text(_ counts: [SyscallCount]) -> String {
        var lines = ["system calls per operation (strace -c -f; difference of \(operations) and \(2 * operations) ops)"]
        for count in counts {
            let detail = count.perOperation.map { entry in
                let errors = entry.errors >= 0.01 ? " (\(format(entry.errors, decimals: 2)) failed)" : ""
                return "\(entry.name) \(format(entry.calls, decimals: 2))\(errors)"
            }
            lines.append(
                "  \(pad(count.workload, 4)) \(pad(count.variant, 20)) \(pad(format(count.total, decimals: 2), 6, right: true)): "
                    + detail.joined(separator: ", ")
            )
        }
        return lines.joined(separator: "\n")
    }
}
