#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// When a stored item expires.
///
/// memcached reads an expiration of up to 30 days as relative seconds and anything larger as an
/// absolute Unix time. This type hides that rule: a relative expiration longer than 30 days is
/// sent as an absolute time computed from this machine's clock, so it does not expire at once.
public struct MemcachedExpiration: Sendable, Hashable, CustomStringConvertible {
    enum Storage: Hashable {
        case never
        case relative(seconds: Int64)
        case absolute(unixTime: Int64)
    }

    let storage: Storage

    /// The item never expires (it can still be evicted when the server needs memory).
    public static let never = MemcachedExpiration(storage: .never)

    /// The item expires after a number of seconds.
    ///
    /// Zero or a negative number stores the item already expired, so a later get misses.
    ///
    /// - Parameter seconds: Seconds from now.
    /// - Returns: A relative expiration.
    public static func seconds(_ seconds: Int) -> MemcachedExpiration {
        MemcachedExpiration(storage: .relative(seconds: Int64(seconds)))
    }

    /// The item expires after a duration, rounded up to whole seconds (memcached's resolution).
    ///
    /// A duration of zero or less stores the item already expired.
    ///
    /// - Parameter duration: Time from now.
    /// - Returns: A relative expiration.
    public static func after(_ duration: Duration) -> MemcachedExpiration {
        let (seconds, attoseconds) = duration.components
        let whole = attoseconds > 0 ? seconds + 1 : seconds
        return MemcachedExpiration(storage: .relative(seconds: whole))
    }

    /// The item expires at a point in time.
    ///
    /// - Parameter date: The expiry time, read as a Unix time on the server's clock.
    /// - Returns: An absolute expiration.
    public static func at(_ date: Date) -> MemcachedExpiration {
        MemcachedExpiration(storage: .absolute(unixTime: Int64(date.timeIntervalSince1970.rounded(.up))))
    }

    /// memcached's limit for relative expirations: 30 days in seconds.
    static let maximumRelativeSeconds: Int64 = 60 * 60 * 24 * 30

    /// The number to send on the wire.
    ///
    /// - Parameter now: The current Unix time, used only for relative expirations over 30 days.
    func wireValue(now: () -> Int64 = { Int64(Date().timeIntervalSince1970) }) -> Int64 {
        switch storage {
        case .never:
            return 0
        case .relative(let seconds) where seconds <= 0:
            // 0 means "never" on the wire; a negative time is memcached's "already expired".
            return -1
        case .relative(let seconds) where seconds > Self.maximumRelativeSeconds:
            return now() + seconds
        case .relative(let seconds):
            return seconds
        case .absolute(let unixTime):
            return max(unixTime, 1)
        }
    }

    public var description: String {
        switch storage {
        case .never: "never"
        case .relative(let seconds): "after \(seconds) s"
        case .absolute(let unixTime): "at Unix time \(unixTime)"
        }
    }
}
