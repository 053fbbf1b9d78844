import Dispatch
import NIOConcurrencyHelpers
import NIOPosix

/// The task executor of one ``MemcachedClient`` (``MemcachedClient/taskExecutor``): threads on
/// which blocking is expected, so that a command issued there runs on the calling thread.
///
/// A command issued from Swift's cooperative pool must not block its thread, so it hands its work
/// to one of the pool's threads and is resumed on a cooperative thread: two thread hand-offs,
/// each a futex wake and a context switch, which cost more client CPU than the libmemcached call
/// itself. A task that prefers this executor runs on one of its threads; when it issues a command
/// and a connection is free, the pool runs the command right there and returns without
/// suspending. A task that waits for a connection suspends as anywhere else and is resumed on
/// one of these threads.
///
/// The threads are started at the first job, one per pooled connection, and stop when the
/// client closes (or is dropped). Jobs that arrive after that run on Dispatch's threads, where
/// the task then finds the client closed.
final class ClientTaskExecutor: TaskExecutor {
    private enum Phase {
        case notStarted
        /// One job's enqueue is starting the threads (which waits for them to run); jobs that
        /// arrive meanwhile wait here rather than for the lock.
        case starting(queued: [UnownedJob])
        /// ``stop()`` came while the threads were starting: the starter stops them.
        case stopWhenStarted(queued: [UnownedJob])
        case running
        case stopped
    }

    private enum Step {
        case submit
        case runOnDispatch
        case start
        case queued
    }

    /// The executor whose thread the current thread is, if any.
    private static let current = ThreadSpecificVariable<ClientTaskExecutor>()

    /// Created with the executor; its threads start at the first job.
    private let threadPool: NIOThreadPool
    private let phase = NIOLockedValueBox(Phase.notStarted)

    init(numberOfThreads: Int) {
        threadPool = NIOThreadPool(numberOfThreads: numberOfThreads)
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let step = phase.withLockedValue { phase -> Step in
            switch phase {
            case .running:
                return .submit
            case .stopped:
                return .runOnDispatch
            case .notStarted:
                phase = .starting(queued: [])
                return .start
            case .starting(var queued):
                queued.append(job)
                phase = .starting(queued: queued)
                return .queued
            case .stopWhenStarted:
                return .runOnDispatch
            }
        }
        switch step {
        case .submit:
            submit(job)
        case .runOnDispatch:
            runOnDispatch(job)
        case .queued:
            break
        case .start:
            // Outside the lock: starting waits until every thread runs.
            threadPool.start()
            let (queued, stopNow) = phase.withLockedValue { phase -> ([UnownedJob], Bool) in
                switch phase {
                case .starting(let queued):
                    phase = .running
                    return (queued, false)
                case .stopWhenStarted(let queued):
                    phase = .stopped
                    return (queued, true)
                case .notStarted, .running, .stopped:
                    return ([], false)  // Unreachable: only this call leaves `.starting`.
                }
            }
            if stopNow {
                threadPool.shutdownGracefully { _ in }
            }
            // A job submitted to stopped threads runs on Dispatch (see `submit`).
            for waiting in [job] + queued {
                submit(waiting)
            }
        }
    }

    /// Whether the calling thread is one of this executor's. Only meaningful until the caller's
    /// next suspension point, so callers act on it synchronously.
    var isCurrentThread: Bool {
        Self.currentExecutor() === self
    }

    /// Stops the threads once the jobs running on them return; jobs still queued, and later
    /// ones, run on Dispatch's threads instead.
    func stop() {
        let stopNow = phase.withLockedValue { phase -> Bool in
            switch phase {
            case .running:
                phase = .stopped
                return true
            case .notStarted:
                phase = .stopped
                return false
            case .starting(let queued):
                phase = .stopWhenStarted(queued: queued)
                return false
            case .stopWhenStarted, .stopped:
                return false
            }
        }
        if stopNow {
            threadPool.shutdownGracefully { _ in }
        }
    }

    private func submit(_ job: UnownedJob) {
        threadPool.submit { state in
            guard state == .active else {
                // Stopped with the job queued, or submitted once stopped: it still runs.
                self.runOnDispatch(job)
                return
            }
            self.markCurrentThread()
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }

    private func runOnDispatch(_ job: UnownedJob) {
        let executor = asUnownedTaskExecutor()
        DispatchQueue.global().async { job.runSynchronously(on: executor) }
    }

    private func markCurrentThread() {
        if Self.currentExecutor() !== self {
            Self.current.currentValue = self
        }
    }

    private static func currentExecutor() -> ClientTaskExecutor? {
        current.currentValue
    }
}
