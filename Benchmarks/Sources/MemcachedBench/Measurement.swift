import CRawBench

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One timed run of one variant of a workload.
struct Sample {
    var seconds: Double
    /// User + system CPU time of the whole benchmark process (every thread) during the run.
    var cpuSeconds: Double
    /// Heap allocations in the whole process during the run; `nil` when not counted.
    var allocations: UInt64?
    /// Steps the run made, when not the workload's count (a capped peer).
    var count: Int? = nil
}

enum Clock {
    static func monotonicSeconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    /// CPU time the process has used so far: the client's cost per operation, which a
    /// round-trip-bound ops/s figure hides.
    static func processCPUSeconds() -> Double {
        var usage = rusage()
        #if canImport(Glibc)
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        #else
        getrusage(RUSAGE_SELF, &usage)
        #endif
        func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }
}

/// Whether the malloc counter in CRawBench works on this platform.
let allocationCountingAvailable = rawbench_allocations() != UInt64.max

/// Times `body`, with its CPU time and, when asked, its allocations.
///
/// Counting allocations is turned off for concurrent runs: every thread would bump one shared
/// counter, and the cache-line traffic would slow the very thing being measured.
func measure(countAllocations: Bool, _ body: () async throws -> Void) async throws -> Sample {
    let counting = countAllocations && allocationCountingAvailable
    let allocationsBefore = rawbench_allocations()
    let cpuBefore = Clock.processCPUSeconds()
    let start = Clock.monotonicSeconds()
    if counting { rawbench_count_allocations(1) }
    try await body()
    if counting { rawbench_count_allocations(0) }
    let end = Clock.monotonicSeconds()
    let cpuAfter = Clock.processCPUSeconds()
    return Sample(
        seconds: end - start,
        cpuSeconds: cpuAfter - cpuBefore,
        allocations: counting ? rawbench_allocations() - allocationsBefore : nil
    )
}

/// The median, minimum and maximum of a few repetitions.
struct Spread {
    var median: Double
    var minimum: Double
    var maximum: Double

    init(_ values: [Double]) {
        precondition(!values.isEmpty)
        let sorted = values.sorted()
        let middle = sorted.count / 2
        median = sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
        minimum = sorted[0]
        maximum = sorted[sorted.count - 1]
    }
}

/// CPU pinning: the server on one core and the client on another, so that neither steals the
/// other's CPU and the round trip is the loopback's, not the scheduler's.
enum Pinning {
    static var cpuCount: Int { Int(rawbench_online_cpus()) }

    /// Pins every thread of a process, as `taskset -a -p -c CPU PID` does. Threads the process
    /// starts later inherit the mask of the thread that starts them.
    @discardableResult
    static func pin(process pid: pid_t, to cpu: Int) -> Bool {
        let threads = threadIDs(of: pid)
        guard !threads.isEmpty else { return false }
        return threads.allSatisfy { rawbench_pin_thread($0, Int32(cpu)) == 0 }
    }

    /// The CPU every thread of a process is pinned to, or `nil` when they are not all on one.
    static func cpu(of pid: pid_t) -> Int? {
        let cpus = Set(threadIDs(of: pid).map { Int(rawbench_thread_cpu($0)) })
        guard cpus.count == 1, let cpu = cpus.first, cpu >= 0 else { return nil }
        return cpu
    }

    private static func threadIDs(of pid: pid_t) -> [Int32] {
        guard let directory = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(directory) }
        var threads: [Int32] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { bytes in
                String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
            if let tid = Int32(name) {
                threads.append(tid)
            }
        }
        return threads
    }
}
