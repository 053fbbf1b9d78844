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
///
/// Both protocols get the same treatment, and nothing is lost silently:
/// - Zero, a negative number of seconds, a zero or negative duration and a date in the past all
///   store the item already expired (on the wire, memcached's own "expired" value: a Unix time in
///   January 1970 past the 30-day line, which the binary protocol, whose field is unsigned, reads
///   the same way as the text protocol).
/// - memcached keeps expirations as 32-bit Unix times: one after 2038-01-19 03:14:07 UTC, an
///   infinite or NaN date, and a duration too long to add to the clock throw
///   ``MemcachedError/Code/invalidArguments`` when the command is sent. Use ``never`` for an
///   item that should not expire.
public struct MemcachedExpiration: Sendable, Hashable, CustomStringConvertible {
    enum Storage: Hashable {
        case never
        /// Whole seconds from now; `nil` when the caller's duration does not fit in 64 bits.
        case relative(seconds: Int64?)
        /// Seconds since 1970, as the caller's `Date` had them (possibly NaN or infinite).
        case absolute(unixTime: Double)
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
        guard attoseconds > 0 else {
            return MemcachedExpiration(storage: .relative(seconds: seconds))
        }
        let whole = seconds.addingReportingOverflow(1)
        return MemcachedExpiration(storage: .relative(seconds: whole.overflow ? nil : whole.partialValue))
    }

    /// The item expires at a point in time.
    ///
    /// A date in the past stores the item already expired.
    ///
    /// - Parameter date: The expiry time, read as a Unix time on the server's clock.
    /// - Returns: An absolute expiration.
    public static func at(_ date: Date) -> MemcachedExpiration {
        MemcachedExpiration(storage: .absolute(unixTime: date.timeIntervalSince1970))
    }

    /// memcached's limit for relative expirations: 30 days in seconds.
    static let maximumRelativeSeconds: Int64 = 60 * 60 * 24 * 30

    /// What memcached itself stores for a negative expiration: an absolute time in January 1970,
    /// past the 30-day line, so long gone that the item is expired on arrival.
    static let alreadyExpired: Int64 = maximumRelativeSeconds + 1

    /// The last Unix time memcached can hold (2038-01-19 03:14:07 UTC).
    static let latestUnixTime = Int64(Int32.max)

    /// The number to send on the wire.
    ///
    /// - Parameter now: The current Unix time, used for relative expirations over 30 days.
    /// - Throws: ``MemcachedError/Code/invalidArguments`` for an expiration memcached cannot hold.
    func wireValue(now: () -> Int64 = { Int64(Date().timeIntervalSince1970) }) throws(MemcachedError) -> Int64 {
        switch storage {
        case .never:
            return 0
        case .relative(let seconds?) where seconds <= 0:
            return Self.alreadyExpired
        case .relative(let seconds?) where seconds <= Self.maximumRelativeSeconds:
            return seconds
        case .relative(let seconds):
            let (time, overflow) = now().addingReportingOverflow(seconds ?? Int64.max)
            guard seconds != nil, !overflow, time <= Self.latestUnixTime else {
                throw unrepresentable()
            }
            return time
        case .absolute(let unixTime):
            guard unixTime.isFinite, unixTime <= Double(Self.latestUnixTime) else {
                throw unrepresentable()
            }
            // A time in the past, or in the first 30 days of 1970, which memcached would read as
            // relative seconds, is expired either way.
            let rounded = Int64(unixTime.rounded(.up).clamped(to: -1...Double(Self.latestUnixTime)))
            return rounded <= Self.maximumRelativeSeconds ? Self.alreadyExpired : rounded
        }
    }

    private func unrepresentable() -> MemcachedError {
        MemcachedError(
            code: .invalidArguments,
            message: "the expiration \(self) is past 2038-01-19 03:14:07 UTC, the last time memcached can hold; "
                + "use .never for an item that should not expire"
        )
    }

    /// A short description for logs and errors: `never`, `after 60 s` or `at Unix time …`.
    public var description: String {
        switch storage {
        case .never: "never"
        case .relative(let seconds?): "after \(seconds) s"
        case .relative(nil): "after more than 2^63 s"
        case .absolute(let unixTime): "at Unix time \(unixTime)"
        }
    }
}

extension Double {
    fileprivate func clamped(to range: ClosedRange<Double>) -> Double {
        Swift.min(Swift.max(self, range.lowerBound), range.upperBound)
    }
}
