/// Which Python client's type tags a client writes: the flags each kind of Swift value is stored
/// with, chosen once in ``MemcachedConfiguration/flagProfile``.
///
/// memcached stores 32 bits of flags beside every value, and each Python client uses them to
/// remember the value's Python type. The three clients below agree on what each bit means (bytes
/// 0, pickled object 1, integer 2, long 4, zlib-compressed 8, UTF-8 text 16) but not on which
/// bit each type gets:
///
/// | Swift value                         | ``pythonMemcached`` | ``pylibmc``  | ``pymemcache``        |
/// | ----------------------------------- | ------------------- | ------------ | --------------------- |
/// | `[UInt8]`, `Data`                   | 0                   | 0            | 0                     |
/// | `String`                            | 16                  | 16           | 16                    |
/// | `Int` and every fixed-width integer | 2                   | 4            | 2                     |
/// | `Bool`                              | 2, `1` or `0`       | 2, `1` or `0` | 1, `true` or `false` |
/// | `Double`                            | 1, a JSON number    | 1            | 1                     |
/// | `Codable` values                    | 1, the object coder | 1            | 1                     |
///
/// Compression adds 8 in every profile. Where the Python client pickles (objects, floats, and
/// pymemcache's `bool`, which pymemcache does not treat as an `int`), this library writes what
/// ``MemcachedConfiguration/objectCoder`` writes, JSON by default, so the Python side needs a JSON
/// pickler for flag 1, as with python-memcached (see <doc:SharingAClusterWithPython>).
///
/// Reads do not depend on the profile: because the three clients agree on what each bit means,
/// a client with any profile reads what any of the three Python clients writes (an integer under
/// 2 or 4, a boolean as `1`/`0` or `true`/`false`), so a cluster shared by several of them works.
///
/// ```swift
/// var configuration = try MemcachedConfiguration(servers: ["10.0.0.1:11211", "10.0.0.2:11211"])
/// configuration.flagProfile = .pylibmc
/// ```
///
/// ### Matching the Python client's compression
///
/// ``MemcachedConfiguration/compressionThreshold`` compresses values longer than the threshold,
/// as python-memcached's and pymemcache's `min_compress_len` do; pylibmc compresses values of
/// `min_compress_len` bytes or more, so its `min_compress_len` of `n` is a threshold of `n - 1`
/// here. Either side reads the other's values whatever the thresholds. This library never
/// compresses an integer, so that `increment` keeps working on it; the Python clients compress
/// any value past their threshold, and such a value reads back here as usual.
public struct MemcachedFlagProfile: Sendable, Hashable, CustomStringConvertible {
    /// A kind of value, as the Python clients tell types apart.
    public enum ValueKind: Sendable, Hashable, CaseIterable {
        /// Raw bytes: `[UInt8]`, `Data`; Python's `bytes`.
        case bytes
        /// UTF-8 text: `String`; Python's `str`.
        case text
        /// An integer as ASCII decimal: the fixed-width integers; Python's `int`.
        case integer
        /// `Bool`; Python's `bool`.
        case boolean
        /// A floating-point number: `Double`; Python's `float`, which every Python client pickles.
        case floatingPoint
        /// A value encoded by the object coder; what Python pickles.
        case object
    }

    private enum Client: Sendable, Hashable {
        case pythonMemcached, pylibmc, pymemcache
    }

    private let client: Client

    private init(_ client: Client) {
        self.client = client
    }

    /// python-memcached 1.62's tags, the default: integers (and `Bool`, as `1` or `0`) under 2.
    public static let pythonMemcached = MemcachedFlagProfile(.pythonMemcached)

    /// pylibmc's tags (1.6.0 and later): integers under 4 (pylibmc writes every `int` as a long),
    /// `Bool` as `1` or `0` under 2, which pylibmc reads back as the `int` 1 or 0.
    ///
    /// pylibmc before 1.6.0 wrote `bool` under 16, which later versions and the other clients read
    /// as text; such a value reads here as the `String` `"1"` or `"0"`, or as a `Bool`.
    public static let pylibmc = MemcachedFlagProfile(.pylibmc)

    /// pymemcache's tags, of its `pickle_serde` and `CompressedSerde`: as python-memcached, except
    /// that `Bool` is an object (pymemcache checks exact types, so it pickles a `bool`), written
    /// as JSON `true` or `false` under 1.
    ///
    /// A pymemcache client without a serde stores every value with flags 0 and reads every value
    /// as bytes; give it a serde whose pickling is JSON to share typed values.
    public static let pymemcache = MemcachedFlagProfile(.pymemcache)

    /// The flags this profile writes for a kind of value, before compression.
    ///
    /// A ``MemcachedValue`` of your own can follow the configured profile with
    /// `context.flagProfile.flags(for:)`.
    ///
    /// - Parameter kind: The kind of value.
    /// - Returns: Its flags.
    public func flags(for kind: ValueKind) -> MemcachedFlags {
        switch kind {
        case .bytes: .bytes
        case .text: .text
        case .integer: client == .pylibmc ? .long : .integer
        case .boolean: client == .pymemcache ? .serialized : .integer
        case .floatingPoint, .object: .serialized
        }
    }

    /// The Python client's name: `pythonMemcached`, `pylibmc` or `pymemcache`.
    public var description: String {
        switch client {
        case .pythonMemcached: "pythonMemcached"
        case .pylibmc: "pylibmc"
        case .pymemcache: "pymemcache"
        }
    }
}
