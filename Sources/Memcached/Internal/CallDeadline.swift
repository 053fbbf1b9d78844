internal import CLibMemcached
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The monotonic clocks the call deadlines are measured with, in nanoseconds.
enum DeadlineClock {
    /// The clock read at the start of every call. On Linux the coarse clock (one tick, a few
    /// milliseconds, of resolution) costs a few nanoseconds, a third of the precise one; it runs
    /// behind the precise clock by less than a tick, so a deadline taken from it is at most that
    /// much early, never late.
    @inline(__always)
    static func coarse() -> UInt64 {
        var time = timespec()
        #if os(Linux)
        clock_gettime(CLOCK_MONOTONIC_COARSE, &time)
        #else
        clock_gettime(CLOCK_MONOTONIC, &time)
        #endif
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }

    /// The clock the watchdog decides and sleeps by: the coarse clock would make it wake at a
    /// deadline and still read a time before it.
    static func precise() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }
}

/// The total deadline of the call running on one ``Handle``, shared with the ``CallWatchdog``.
///
/// libmemcached's own timeout bounds each wait for a socket, so a server that sends a byte now
/// and then, or never stops sending, holds a call for as long as it likes, and nothing can
/// interrupt a call from outside. The owning thread therefore publishes each call's deadline in
/// ``state``, one clock read and one atomic store at the start and one compare-and-swap at the
/// end, with no lock and no allocation. The watchdog thread reads the deadlines, and when one
/// passes (or the lease's task is cancelled) it takes the call over with a compare-and-swap and
/// shuts the handle's sockets down (see ``SocketInterrupter``): the blocked `poll` or `recv`
/// returns, libmemcached fails the call, and the handle reports ``MemcachedError/Code/timeout``.
///
/// ``state`` is the whole protocol: ``idle`` between calls, the deadline while a call runs,
/// ``interrupting`` while the watchdog works on the handle's sockets, ``interrupted`` after it,
/// ``closed`` once the handle is freed. Only the owner moves it away from a deadline to ``idle``,
/// and only the watchdog into ``interrupting``; the owner ending a call waits while the state is
/// ``interrupting``. So the watchdog touches the C handle only while a call is in flight, and a
/// handle is freed only between calls: the watchdog never reads freed memory.
final class CallDeadline: Sendable {
    static let idle: UInt64 = 0
    static let interrupting: UInt64 = 1
    static let interrupted: UInt64 = 2
    static let closed: UInt64 = 3
    /// Deadlines are above every marker, even on a clock that started a moment ago.
    static let earliestDeadline: UInt64 = 16

    let state = Atomic<UInt64>(CallDeadline.idle)
    /// Set while the task that leased the handle is cancelled (``ConnectionPool``): the watchdog
    /// interrupts the call in flight, and no later call of the lease starts.
    let cancelRequested = Atomic<Bool>(false)
    /// ``MemcachedConfiguration/timeout``, in nanoseconds.
    let timeout: UInt64
    /// The deadline whose cancellation this one follows: a short-lived handle that `stats` or
    /// `versions` opens per server runs inside its parent's call.
    let parent: CallDeadline?
    /// The C handle the watchdog looks for sockets in. Only read while it holds ``interrupting``.
    nonisolated(unsafe) let handle: UnsafeMutablePointer<memcached_st>

    /// The deadline of the call in flight. Owner thread only.
    nonisolated(unsafe) private(set) var current: UInt64 = 0
    /// When the watchdog looks again at a call it interrupted that has not ended yet (libmemcached
    /// may have connected a socket since), and how long it waits after that. Watchdog thread only.
    nonisolated(unsafe) var rescanAt: UInt64 = 0
    nonisolated(unsafe) var rescanDelay: UInt64 = 0

    init(handle: UnsafeMutablePointer<memcached_st>, timeout: UInt64, parent: CallDeadline?) {
        self.handle = handle
        self.timeout = timeout
        self.parent = parent
        CallWatchdog.shared.register(self)
    }

    /// Whether the lease's task, or the parent call's, is cancelled.
    @inline(__always)
    var isCancelled: Bool {
        cancelRequested.load(ordering: .relaxed) || (parent?.cancelRequested.load(ordering: .relaxed) ?? false)
    }

    /// Starts a call whose deadline is `inherited`, or `timeout` from now.
    ///
    /// - Throws: `CancellationError` when the lease is cancelled, before anything is sent.
    @inline(__always)
    func begin(inheriting inherited: UInt64? = nil, ignoringCancellation: Bool = false) throws {
        let deadline = max(inherited ?? DeadlineClock.coarse() &+ timeout, Self.earliestDeadline)
        current = deadline
        state.store(deadline, ordering: .releasing)
        // After the store: a cancellation the watchdog did not see in flight is seen here. The
        // reverse order of the two threads (store seen late, flag set late) is why the watchdog
        // keeps looking at a cancelled lease between its calls.
        if !ignoringCancellation, isCancelled {
            _ = end()
            throw CancellationError()
        }
    }

    /// Ends the call. Returns whether the watchdog interrupted it, after waiting for the
    /// watchdog to finish with the sockets.
    @inline(__always)
    func end() -> Bool {
        if state.compareExchange(expected: current, desired: Self.idle, ordering: .acquiringAndReleasing).exchanged {
            return false
        }
        return endInterrupted()
    }

    @inline(never)
    private func endInterrupted() -> Bool {
        while true {
            switch state.load(ordering: .acquiring) {
            case Self.interrupting:
                // The watchdog is shutting sockets down, for a millisecond or so.
                sched_yield()
            case Self.interrupted:
                if state.compareExchange(
                    expected: Self.interrupted,
                    desired: Self.idle,
                    ordering: .acquiringAndReleasing
                ).exchanged {
                    return true
                }
            default:
                return false
            }
        }
    }

    /// Whether the call in flight has passed its deadline, was interrupted, or is cancelled:
    /// what the handle's own loops check between steps. Owner thread only, inside a call.
    var isOver: Bool {
        wasInterrupted || DeadlineClock.coarse() >= current || isCancelled
    }

    /// Whether the watchdog interrupted the call in flight. Owner thread only, inside a call.
    var wasInterrupted: Bool {
        let observed = state.load(ordering: .relaxed)
        return observed == Self.interrupted || observed == Self.interrupting
    }

    /// Asks the watchdog to interrupt the lease's call in flight, and stops later calls.
    func requestCancel() {
        cancelRequested.store(true, ordering: .releasing)
        CallWatchdog.shared.wake()
    }

    func clearCancel() {
        cancelRequested.store(false, ordering: .releasing)
    }

    /// Stops watching the handle, which is about to be freed; waits while the watchdog is at
    /// its sockets (a handle closed by caller code in the middle of a read is in a call).
    func close() {
        CallWatchdog.shared.unregister(self)
        while true {
            let observed = state.load(ordering: .acquiring)
            if observed == Self.interrupting {
                sched_yield()
            } else if state.compareExchange(
                expected: observed,
                desired: Self.closed,
                ordering: .acquiringAndReleasing
            ).exchanged {
                return
            }
        }
    }
}

/// The one thread per process that ends calls past their deadline (see ``CallDeadline``).
///
/// A plain POSIX thread, not a task or an event loop timer: it must act on time while callers
/// block every cooperative thread and while event loops are busy, and it makes blocking system
/// calls of its own. It sleeps until the earliest deadline of a call in flight, or, when none is
/// in flight, for the shortest timeout of any registered handle: a call that starts after a
/// sweep cannot end its deadline sooner than that. With the default 3-second timeout an idle
/// process wakes it every 3 seconds. A cancellation wakes it at once.
///
/// `@unchecked Sendable`: the registry is guarded by the pthread mutex (ThreadSanitizer sees
/// pthread primitives, not `Synchronization.Mutex` futexes, on Linux).
final class CallWatchdog: @unchecked Sendable {
    static let shared = CallWatchdog()

    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    // Guarded by `mutex`.
    private var deadlines: [ObjectIdentifier: CallDeadline] = [:]
    private var wakeRequested = false
    private var started = false

    /// How soon the watchdog looks again at a cancelled lease between its calls.
    private static let cancelledLeasePoll: UInt64 = 5_000_000
    /// How soon it first looks again at an interrupted call that has not ended, doubling up to
    /// ``longestRescan``.
    private static let firstRescan: UInt64 = 5_000_000
    private static let longestRescan: UInt64 = 1_000_000_000

    private init() {
        pthread_mutex_init(mutex, nil)
        #if os(Linux)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
        #else
        pthread_cond_init(condition, nil)
        #endif
    }

    func register(_ deadline: CallDeadline) {
        pthread_mutex_lock(mutex)
        deadlines[ObjectIdentifier(deadline)] = deadline
        if !started {
            started = true
            startThread()
        }
        // A shorter timeout than any before shortens the idle sleep.
        wakeRequested = true
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    func unregister(_ deadline: CallDeadline) {
        pthread_mutex_lock(mutex)
        deadlines[ObjectIdentifier(deadline)] = nil
        pthread_mutex_unlock(mutex)
    }

    func wake() {
        pthread_mutex_lock(mutex)
        wakeRequested = true
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    private func startThread() {
        let context = Unmanaged.passRetained(self).toOpaque()
        #if canImport(Glibc)
        var thread = pthread_t()
        #else
        var thread: pthread_t?
        #endif
        let result = pthread_create(
            &thread,
            nil,
            { context in
                let rawContext: UnsafeMutableRawPointer? = context
                let watchdog = Unmanaged<CallWatchdog>.fromOpaque(rawContext!).takeRetainedValue()
                watchdog.run()
                return nil
            },
            context
        )
        // Without the thread, calls are still bounded per socket wait, as libmemcached bounds them.
        guard result == 0 else {
            Unmanaged<CallWatchdog>.fromOpaque(context).release()
            started = false
            return
        }
        #if canImport(Glibc)
        pthread_detach(thread)
        #else
        if let thread { pthread_detach(thread) }
        #endif
    }

    private func run() {
        pthread_mutex_lock(mutex)
        while true {
            while deadlines.isEmpty && !wakeRequested {
                pthread_cond_wait(condition, mutex)
            }
            wakeRequested = false
            let watched = Array(deadlines.values)
            pthread_mutex_unlock(mutex)
            let wakeAt = sweep(watched)
            pthread_mutex_lock(mutex)
            if !wakeRequested && !deadlines.isEmpty {
                sleep(until: wakeAt)
            }
        }
    }

    /// Waits on the condition until `time` on the precise clock. Called with the mutex held.
    private func sleep(until time: UInt64) {
        #if os(Linux)
        var until = timespec(tv_sec: Int(time / 1_000_000_000), tv_nsec: Int(time % 1_000_000_000))
        pthread_cond_timedwait(condition, mutex, &until)
        #else
        let now = DeadlineClock.precise()
        let delay = time > now ? time - now : 0
        var relative = timespec(tv_sec: Int(delay / 1_000_000_000), tv_nsec: Int(delay % 1_000_000_000))
        pthread_cond_timedwait_relative_np(condition, mutex, &relative)
        #endif
    }

    /// Interrupts every call past its deadline or cancelled; returns when to look again.
    private func sweep(_ watched: [CallDeadline]) -> UInt64 {
        let now = DeadlineClock.precise()
        var wakeAt = now &+ (watched.lazy.map(\.timeout).min() ?? Self.longestRescan)
        for deadline in watched {
            let state = deadline.state.load(ordering: .acquiring)
            switch state {
            case CallDeadline.idle, CallDeadline.closed, CallDeadline.interrupting:
                if deadline.isCancelled {
                    // A call may be starting this instant without this sweep seeing it.
                    wakeAt = min(wakeAt, now &+ Self.cancelledLeasePoll)
                }
            case CallDeadline.interrupted:
                if now >= deadline.rescanAt {
                    interrupt(deadline, expected: state, now: now)
                }
                wakeAt = min(wakeAt, deadline.rescanAt)
            default:
                if state <= now || deadline.isCancelled {
                    interrupt(deadline, expected: state, now: now)
                    wakeAt = min(wakeAt, deadline.rescanAt)
                } else {
                    wakeAt = min(wakeAt, state)
                }
            }
        }
        return wakeAt
    }

    private func interrupt(_ deadline: CallDeadline, expected: UInt64, now: UInt64) {
        guard
            deadline.state.compareExchange(
                expected: expected,
                desired: CallDeadline.interrupting,
                ordering: .acquiringAndReleasing
            ).exchanged
        else {
            // The call ended (or another began) since the sweep read the state.
            return
        }
        // Deadlines come from a coarse clock, so the next call on this handle can have the very
        // state the sweep read: a call that was cancelled may have ended and an innocent one,
        // not past its deadline, begun with the same value. Only a reason that still holds
        // interrupts.
        if expected != CallDeadline.interrupted, expected > now, !deadline.isCancelled {
            deadline.state.store(expected, ordering: .releasing)
            return
        }
        SocketInterrupter.shutDownSockets(of: deadline.handle)
        deadline.rescanDelay =
            expected == CallDeadline.interrupted
            ? min(deadline.rescanDelay * 2, Self.longestRescan) : Self.firstRescan
        deadline.rescanAt = now &+ deadline.rescanDelay
        deadline.state.store(CallDeadline.interrupted, ordering: .releasing)
    }
}

/// Finds the sockets of a libmemcached handle and shuts them down, from another thread.
///
/// libmemcached does not expose a connection's descriptor, but `memcached_server_srcport` gives
/// the local port of each server's connected TCP socket. The descriptor is the one in this
/// process whose local port is that and whose peer is the server (two sockets may share a local
/// port when their peers differ). `shutdown`, never `close`: the descriptor stays libmemcached's,
/// and its blocked `poll` or `recv` returns at once with end of file, which fails the call.
enum SocketInterrupter {
    private struct Target {
        var localPort: UInt16
        var remotePort: UInt16
        /// The server's address when its name is a numeric address; a host name is not resolved
        /// here, and only the ports are compared.
        var remote: sockaddr_storage?
    }

    static func shutDownSockets(of handle: UnsafeMutablePointer<memcached_st>) {
        var targets: [Target] = []
        for position in 0..<memcached_server_count(handle) {
            guard let instance = memcached_server_instance_by_position(handle, position) else { continue }
            // 0 when not connected, or not TCP: a Unix socket's peer cannot be told apart from
            // another handle's connection to the same path.
            let localPort = memcached_server_srcport(instance)
            guard localPort != 0 else { continue }
            let name = memcached_server_name(instance).map { String(cString: $0) } ?? ""
            targets.append(
                Target(
                    localPort: localPort,
                    remotePort: memcached_server_port(instance),
                    remote: numericAddress(name)
                )
            )
        }
        guard !targets.isEmpty else { return }
        var matches: [Int32] = []
        forEachDescriptor { descriptor in
            if belongs(descriptor, to: targets) {
                matches.append(descriptor)
            }
        }
        for descriptor in matches {
            // A duplicate pins the socket: the number may be closed and reused by another thread
            // at any moment, but the duplicate refers to the socket it was made from, which is
            // checked and shut down through it (shutdown acts on the socket, for every descriptor).
            let pinned = fcntl(descriptor, F_DUPFD_CLOEXEC, 0)
            guard pinned >= 0 else { continue }
            if belongs(pinned, to: targets) {
                shutdown(pinned, Int32(SHUT_RDWR))
            }
            close(pinned)
        }
    }

    private static func belongs(_ descriptor: Int32, to targets: [Target]) -> Bool {
        var local = sockaddr_storage()
        guard let localPort = port(of: descriptor, &local, { getsockname($0, $1, $2) }),
            targets.contains(where: { $0.localPort == localPort })
        else { return false }
        var peer = sockaddr_storage()
        guard let peerPort = port(of: descriptor, &peer, { getpeername($0, $1, $2) }) else { return false }
        return targets.contains { target in
            target.localPort == localPort && target.remotePort == peerPort
                && (target.remote.map { sameHost($0, peer) } ?? true)
        }
    }

    private static func port(
        of descriptor: Int32,
        _ address: inout sockaddr_storage,
        _ read: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32
    ) -> UInt16? {
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { read(descriptor, $0, &length) }
        }
        guard rc == 0 else { return nil }
        let family = Int32(address.ss_family)
        return withUnsafeBytes(of: &address) { bytes -> UInt16? in
            switch family {
            case AF_INET:
                return UInt16(bigEndian: bytes.load(fromByteOffset: 2, as: UInt16.self))
            case AF_INET6:
                return UInt16(bigEndian: bytes.load(fromByteOffset: 2, as: UInt16.self))
            default:
                return nil
            }
        }
    }

    private static func sameHost(_ expected: sockaddr_storage, _ actual: sockaddr_storage) -> Bool {
        guard expected.ss_family == actual.ss_family else { return false }
        let family = Int32(expected.ss_family)
        return withUnsafeBytes(of: expected) { left in
            withUnsafeBytes(of: actual) { right in
                switch family {
                case AF_INET:
                    // sin_addr: 4 bytes after family and port.
                    return left[4..<8].elementsEqual(right[4..<8])
                case AF_INET6:
                    // sin6_addr: 16 bytes after family, port and flow information.
                    return left[8..<24].elementsEqual(right[8..<24])
                default:
                    return false
                }
            }
        }
    }

    private static func numericAddress(_ name: String) -> sockaddr_storage? {
        var storage = sockaddr_storage()
        let host = name.hasPrefix("[") && name.hasSuffix("]") ? String(name.dropFirst().dropLast()) : name
        let parsed = withUnsafeMutableBytes(of: &storage) { bytes -> Int32? in
            if inet_pton(AF_INET, host, bytes.baseAddress! + 4) == 1 {
                return AF_INET
            }
            if inet_pton(AF_INET6, host, bytes.baseAddress! + 8) == 1 {
                return AF_INET6
            }
            return nil
        }
        guard let family = parsed else { return nil }
        storage.ss_family = sa_family_t(family)
        return storage
    }

    /// Calls `body` with every open descriptor of the process: the entries of `/proc/self/fd`
    /// on Linux, so the cost follows the number of open files, not the descriptor limit.
    private static func forEachDescriptor(_ body: (Int32) -> Void) {
        #if os(Linux)
        guard let directory = opendir("/proc/self/fd") else { return }
        defer { closedir(directory) }
        let own = dirfd(directory)
        while let entry = readdir(directory) {
            let descriptor = withUnsafeBytes(of: entry.pointee.d_name) { bytes -> Int32? in
                var value: Int32 = 0
                var digits = 0
                for byte in bytes {
                    guard byte != 0 else { break }
                    guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
                    value = value &* 10 &+ Int32(byte - UInt8(ascii: "0"))
                    digits += 1
                }
                return digits > 0 ? value : nil
            }
            if let descriptor, descriptor != own {
                body(descriptor)
            }
        }
        #else
        for descriptor in 0..<min(getdtablesize(), 65_536) {
            body(descriptor)
        }
        #endif
    }
}
