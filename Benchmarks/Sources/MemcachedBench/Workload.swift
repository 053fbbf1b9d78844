import CRawBench

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What a workload's rate counts.
enum RateUnit: String {
    case operations = "ops/s"
    case keys = "keys/s"
    case megabytes = "MB/s"
}

/// One way of running a workload: raw C, our synchronous connection, our async client, or a peer.
struct Variant {
    enum Kind {
        case rawC
        case sync
        case async
        case peer
    }

    var name: String
    var kind: Kind
    /// The variant whose median this one's ratio is taken against; `nil` for a baseline.
    var baseline: String?
    var countAllocations = true
    /// For a peer in another process: runs and measures itself, and returns what it measured.
    var measuredElsewhere: ((Int) async throws -> Sample)? = nil
    /// Runs the workload `count` times (operations, batches or pairs, as the workload says).
    var run: (Int) async throws -> Void
}

/// A workload and the variants that run it, interleaved A B C A B C over the repetitions.
struct Workload {
    var id: String
    var title: String
    var unit: RateUnit
    /// How many times a run repeats the workload's step (its operation, batch or pair).
    var count: Int
    /// How many rate units one step is worth: 1 op, 100 keys, 1 MB, ...
    var unitsPerStep: Double
    /// What the CPU and allocation columns count per: "op", "key", "set+get".
    var perWhat: String
    /// How many of `perWhat` one step is.
    var perWhatPerStep: Double
    var variants: [Variant]

    func rate(_ sample: Sample) -> Double {
        Double(sample.count ?? count) * unitsPerStep / sample.seconds
    }

    /// How many of `perWhat` a run made, for the per-operation columns.
    func operations(_ sample: Sample) -> Double {
        Double(sample.count ?? count) * perWhatPerStep
    }
}

struct BenchmarkError: Error, CustomStringConvertible {
    var description: String

    init(_ description: String) {
        self.description = description
    }
}

func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition {
        throw BenchmarkError(message())
    }
}

/// A libmemcached handle owned by the raw-C side.
final class RawConnection {
    let pointer: OpaquePointer

    init(host: String, port: Int, binary: Bool = false, noReply: Bool = false, bufferRequests: Bool = false) throws {
        let options = rawbench_options(
            binary: binary ? 1 : 0,
            noreply: noReply ? 1 : 0,
            buffer_requests: bufferRequests ? 1 : 0,
            tcp_nodelay: 1
        )
        guard let pointer = rawbench_connect(host, UInt32(port), options) else {
            throw BenchmarkError("cannot create a libmemcached handle for \(host):\(port)")
        }
        self.pointer = pointer
    }

    deinit {
        rawbench_free(pointer)
    }

    /// Turns a loop's status into an error that carries libmemcached's message.
    func check(_ status: Int32, _ what: String) throws {
        guard status == 0 else {
            let message = rawbench_last_error(pointer).map { String(cString: $0) } ?? "unknown"
            throw BenchmarkError("raw C \(what) failed: \(message)")
        }
    }

    func store(_ key: String, _ value: [UInt8]) throws {
        let status = value.withUnsafeBytes { bytes in
            rawbench_store(pointer, key, key.utf8.count, bytes.baseAddress, bytes.count)
        }
        try check(status, "store")
    }
}

/// Keys as Swift strings and as the pointer and length arrays libmemcached takes, both made once,
/// before anything is timed.
final class KeySet {
    let strings: [String]
    let pointers: UnsafeMutablePointer<UnsafePointer<CChar>?>
    let lengths: UnsafeMutablePointer<Int>

    var count: Int { strings.count }

    init(_ strings: [String]) {
        self.strings = strings
        pointers = .allocate(capacity: strings.count)
        lengths = .allocate(capacity: strings.count)
        for (index, key) in strings.enumerated() {
            pointers[index] = UnsafePointer(strdup(key))
            lengths[index] = key.utf8.count
        }
    }

    convenience init(prefix: String, count: Int) {
        self.init((0..<count).map { "\(prefix)\($0)" })
    }

    deinit {
        for index in 0..<strings.count {
            free(UnsafeMutablePointer(mutating: pointers[index]))
        }
        pointers.deallocate()
        lengths.deallocate()
    }
}

/// The 90% get / 10% set sequence of W6 and W8, the same for every variant: a key index, with
/// ``setBit`` set for a set. A fixed-seed generator, so runs can be compared.
enum MixedOperations {
    static let setBit: UInt32 = 0x8000_0000

    static func make(count: Int, keyCount: Int) -> [UInt32] {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        return (0..<count).map { _ in
            // SplitMix64: good enough spread for picking keys, and trivially reproducible.
            state &+= 0x9E37_79B9_7F4A_7C15
            var mixed = state
            mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
            mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
            mixed ^= mixed >> 31
            let key = UInt32(mixed % UInt64(keyCount))
            let isSet = (mixed >> 40) % 10 == 0
            return isSet ? key | setBit : key
        }
    }
}
