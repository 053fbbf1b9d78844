import Foundation

/// A value guarded by an `NSLock`.
///
/// The fixture uses this rather than `Synchronization.Mutex` because ThreadSanitizer on Linux does
/// not see `Mutex`'s futex waits and reports false races in code that locks correctly, and the pool
/// tests run under ThreadSanitizer with this fixture; `NSLock` is a pthread mutex, which it sees.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) {
        self.value = value
    }

    /// Runs `body` with exclusive access to the value.
    func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
