import CRawBench
import Foundation
import MemcachedTestSupport

/// The command line. Full counts unless `--quick` or `--scale`; the numbers we report use full counts.
struct Options {
    var scale = 1.0
    var repetitions = 3
    var only: Set<String>? = nil
    var server: (host: String, port: Int)? = nil
    var sameCore = true
    var syscalls = true
    var peers = true
    var python: String? = nil
    var markdown: String? = nil
    /// `--continuum`: only the continuum's build time, memory and lookup (no server needed).
    var continuum = false
    /// `--child ID VARIANT COUNT`: run one variant once, for strace or valgrind, and exit.
    var child: (workload: String, variant: String, count: Int)? = nil

    static let usage = """
        usage: MemcachedBench [--quick | --scale X] [--reps N] [--only W1,W4,...,L,S] [--server HOST:PORT]
                              [--no-same-core] [--no-syscalls] [--no-peers] [--python PATH] [--markdown PATH]
               MemcachedBench --child ID VARIANT COUNT [--server HOST:PORT]
               MemcachedBench --continuum [--reps N]
        --only takes workload IDs and L (the latency table) and S (gets as the server counts them, with memcaslap)
        """

    init(_ arguments: [String]) throws {
        var remaining = arguments[...]
        func value(_ flag: String) throws -> String {
            guard let next = remaining.popFirst() else { throw BenchmarkError("\(flag) needs a value\n\(Self.usage)") }
            return next
        }
        while let argument = remaining.popFirst() {
            switch argument {
            case "--quick": scale = 0.1
            case "--scale":
                guard let parsed = Double(try value(argument)), parsed > 0 else { throw BenchmarkError("bad --scale") }
                scale = parsed
            case "--reps":
                guard let parsed = Int(try value(argument)), parsed >= 1 else { throw BenchmarkError("bad --reps") }
                repetitions = parsed
            case "--only": only = Set(try value(argument).split(separator: ",").map(String.init))
            case "--server":
                let text = try value(argument)
                guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else {
                    throw BenchmarkError("bad --server \(text): expected HOST:PORT")
                }
                server = (String(text[..<colon]), port)
            case "--continuum": continuum = true
            case "--no-same-core": sameCore = false
            case "--no-syscalls": syscalls = false
            case "--no-peers": peers = false
            case "--python": python = try value(argument)
            case "--markdown": markdown = try value(argument)
            case "--child":
                let workload = try value(argument)
                let variant = try value(argument)
                guard let count = Int(try value(argument)) else { throw BenchmarkError("bad --child count") }
                child = (workload, variant, count)
            case "--help", "-h":
                print(Self.usage)
                exit(0)
            default:
                throw BenchmarkError("unknown argument \(argument)\n\(Self.usage)")
            }
        }
    }
}

/// Where this package lives, for the Python script and the results folder.
let benchmarksDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

@main
enum MemcachedBench {
    /// A synchronous entry point that blocks on a semaphore: an `async` main parks the main thread
    /// in `dispatch_main`'s `sigsuspend`, which makes valgrind 3.19 crash, and callgrind is how
    /// the instruction counts in BENCHMARKS.md are taken.
    static func main() {
        // Line-buffered even into a file or pipe, so a long run shows its progress.
        rawbench_line_buffer_stdout()
        let finished = DispatchSemaphore(value: 0)
        Task.detached {
            do {
                let options = try Options(Array(CommandLine.arguments.dropFirst()))
                if options.continuum {
                    try ContinuumBench.run(repetitions: max(options.repetitions, 21))
                } else if let child = options.child {
                    try await runChild(child, options: options)
                } else {
                    try await run(options)
                }
            } catch {
                FileHandle.standardError.write(Data("MemcachedBench: \(error)\n".utf8))
                exit(1)
            }
            finished.signal()
        }
        finished.wait()
    }

    /// One variant once, nothing printed: the process strace counts and valgrind profiles.
    static func runChild(_ child: (workload: String, variant: String, count: Int), options: Options) async throws {
        // The process is kept until the variant ran: dropping it stops the server.
        let started = try options.server == nil ? startServer() : nil
        let server = options.server ?? started!.address
        defer { started?.process.stop() }
        let suite = Suite(host: server.host, port: server.port, scale: 1)
        guard let workload = try suite.workloads(only: [child.workload]).first,
            let variant = workload.variants.first(where: { $0.name == child.variant })
        else {
            throw BenchmarkError("no variant \(child.variant) of \(child.workload)")
        }
        try await variant.run(child.count)
        await suite.close()
    }

    static func startServer() throws -> (process: MemcachedServerProcess, address: (host: String, port: Int)) {
        let process = try MemcachedServerProcess.start()
        return (process, ("127.0.0.1", process.port))
    }

    static func run(_ options: Options) async throws {
        // Pin first, before the runtime, NIO or the pool start threads: new threads inherit the mask.
        let pinned = Pinning.cpuCount >= 2 && Pinning.pin(process: getpid(), to: 1)
        var machine = MachineNotes(pinned: pinned, scale: options.scale, repetitions: options.repetitions)

        var serverProcess: MemcachedServerProcess? = nil
        let address: (host: String, port: Int)
        if let server = options.server {
            address = server
            machine.serverPinning = "not pinned (external server)"
        } else {
            let started = try startServer()
            serverProcess = started.process
            address = started.address
            if pinned, Pinning.pin(process: started.process.pid, to: 0) {
                machine.serverPinning =
                    "every memcached thread pinned to CPU \(Pinning.cpu(of: started.process.pid) ?? -1)"
            } else {
                machine.serverPinning = "not pinned"
            }
        }
        defer { serverProcess?.stop() }
        machine.clientPinning = pinned ? "pinned to CPU \(Pinning.cpu(of: getpid()) ?? -1)" : "not pinned"
        print(machine.text())
        print("memcached at \(address.host):\(address.port)\n")

        var peers: PeerProcess? = nil
        if options.peers {
            let python = options.python ?? benchmarksDirectory + "/.venv/bin/python"
            if FileManager.default.isExecutableFile(atPath: python) {
                peers = try PeerProcess(python: python, server: address, scale: options.scale)
            } else {
                print("peers skipped: no Python at \(python); run Benchmarks/python/setup.sh first\n")
            }
        }

        let suite = Suite(host: address.host, port: address.port, scale: options.scale)
        var outcomes: [Outcome] = []
        for var workload in try suite.workloads(only: options.only) {
            if let peers {
                workload.variants += try peers.variants(for: workload)
            }
            let outcome = try await runInterleaved(workload, repetitions: options.repetitions)
            print(outcome.text() + "\n")
            outcomes.append(outcome)
        }

        var latency: [LatencyRow] = []
        if options.only?.contains("L") ?? true {
            latency = try await suite.latencyTable(repetitions: options.repetitions)
            print(
                Summary(machine: machine, outcomes: [], sameCore: [], syscalls: [], latency: latency).latencySection()
                    + "\n"
            )
        }

        var serverView: [ServerViewRow] = []
        if let process = serverProcess, options.only?.contains("S") ?? true {
            serverView = try await ServerView.measure(suite: suite, server: process)
            print(
                Summary(machine: machine, outcomes: [], sameCore: [], syscalls: [], serverView: serverView)
                    .serverViewSection() + "\n"
            )
        }

        var sameCore: [Outcome] = []
        if options.sameCore, pinned, let process = serverProcess,
            options.only.map({ !$0.isDisjoint(with: ["W1", "W2"]) }) ?? true
        {
            // Server and client share CPU 1: every microsecond of client CPU now delays the server.
            Pinning.pin(process: process.pid, to: 1)
            print("same-core run: memcached and the benchmark both on CPU \(Pinning.cpu(of: process.pid) ?? -1)\n")
            for var workload in try suite.workloads(only: ["W1", "W2"]) {
                workload.id = "SC-" + workload.id
                workload.title += ", server and client on one core"
                let outcome = try await runInterleaved(workload, repetitions: options.repetitions)
                print(outcome.text() + "\n")
                sameCore.append(outcome)
            }
            Pinning.pin(process: process.pid, to: 0)
        }
        await suite.close()

        var syscalls: [SyscallCount] = []
        if options.syscalls {
            syscalls = try SyscallCounter.measure(server: address)
            print(SyscallCounter.text(syscalls) + "\n")
        }

        let summary = Summary(
            machine: machine,
            outcomes: outcomes,
            sameCore: sameCore,
            syscalls: syscalls,
            latency: latency,
            serverView: serverView
        )
        let markdown = summary.markdown()
        print(markdown)
        let path = options.markdown ?? benchmarksDirectory + "/results/latest.md"
        try FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent,
            withIntermediateDirectories: true
        )
        try markdown.write(toFile: path, atomically: true, encoding: .utf8)
        print("written to \(path)")
    }

    /// Warms every variant up once, then runs them in turn, A B C A B C, `repetitions` times, so
    /// drift in the machine (runs here vary by up to 20%) lands on every variant alike.
    static func runInterleaved(_ workload: Workload, repetitions: Int) async throws -> Outcome {
        let warmUp = max(1, workload.count / 50)
        // Peers warm up in their own process, when they are prepared.
        for variant in workload.variants where variant.measuredElsewhere == nil {
            try await variant.run(warmUp)
        }
        var samples: [String: [Sample]] = [:]
        for _ in 0..<repetitions {
            for variant in workload.variants {
                let sample: Sample
                if let measuredElsewhere = variant.measuredElsewhere {
                    sample = try await measuredElsewhere(workload.count)
                } else {
                    sample = try await measure(countAllocations: variant.countAllocations) {
                        try await variant.run(workload.count)
                    }
                }
                samples[variant.name, default: []].append(sample)
            }
        }
        return Outcome(workload, samples: samples)
    }
}

/// What the report says about the machine and the run.
struct MachineNotes {
    var pinned: Bool
    var scale: Double
    var repetitions: Int
    var serverPinning = ""
    var clientPinning = ""

    var cpuModel: String {
        let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let line = info.split(separator: "\n").first { $0.hasPrefix("model name") }
        return line.map {
            $0.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        }
            ?? "unknown CPU"
    }

    func text() -> String {
        """
        machine: \(Pinning.cpuCount) CPUs (\(cpuModel)); taskset-style pinning: \(pinned ? "yes" : "no")
        memcached: \(serverPinning); benchmark: \(clientPinning)
        counts: \(scale == 1 ? "full" : "scaled by \(scale)"); \(repetitions) repetitions, interleaved
        """
    }
}
