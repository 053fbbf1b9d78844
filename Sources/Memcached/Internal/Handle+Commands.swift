internal import CLibMemcached
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The storage commands, each one libmemcached call.
enum StoreOperation {
    case set, add, replace, append, prepend
    case cas(UInt64)

    var name: StaticString {
        switch self {
        case .set: "set"
        case .add: "add"
        case .replace: "replace"
        case .append: "append"
        case .prepend: "prepend"
        case .cas: "cas"
        }
    }

    /// The command as metrics and spans name it.
    var command: MemcachedCommand {
        switch self {
        case .set: .set
        case .add: .add
        case .replace: .replace
        case .append: .append
        case .prepend: .prepend
        case .cas: .cas
        }
    }

    /// Whether the command adds bytes to the stored value, keeping its flags.
    var extendsStoredValue: Bool {
        switch self {
        case .append, .prepend: true
        case .set, .add, .replace, .cas: false
        }
    }
}

/// A key checked and laid out for C: its bytes (prefix included) and the caller's key for errors.
struct PreparedKey {
    var bytes: UnsafeBufferPointer<UInt8>
    var key: String

    @inline(__always)
    var cString: UnsafePointer<CChar> {
        UnsafeRawPointer(bytes.baseAddress!).assumingMemoryBound(to: CChar.self)
    }
}

/// One value read from a server, valid until the next fetch on the same handle.
struct FetchedItem {
    var keyBytes: UnsafeRawBufferPointer
    var value: UnsafeRawBufferPointer
    var flags: UInt32
    var cas: UInt64
}

/// A batch of keys for a multi-key command: one buffer holding every (prefixed) key, and the
/// pointer and length arrays libmemcached's `memcached_mget` takes.
struct KeyBatch {
    private(set) var storage: [UInt8] = []
    private(set) var ranges: [Range<Int>] = []
    /// How many keys the batch holds.
    var count: Int { ranges.count }
    /// An open-addressing table from a key's bytes to its index, built by ``match(_:)`` only when
    /// a reply comes out of request order, so a reply's key is matched without making a `String`.
    private var slots: [Int32] = []
    /// The key after the last one ``match(_:)`` found.
    private var cursor = 0
    /// Which keys a reply has answered: memcached answers each key once, so a second value for
    /// one is a reply that does not belong to this request.
    private var answered: [Bool] = []

    init(keys: [String], prefix: KeyPrefix?) throws {
        let prefixBytes = prefix?.bytes ?? []
        // A native string knows its UTF-8 length, so the buffer is sized once and each key is
        // copied with one `memcpy` and checked in place.
        var byteCount = 0
        for key in keys {
            byteCount += prefixBytes.count + key.utf8.count
        }
        var ranges: [Range<Int>] = []
        ranges.reserveCapacity(keys.count)
        var nonASCII = false
        storage = try [UInt8](unsafeUninitializedCapacity: byteCount) { buffer, initialized in
            var end = 0
            for key in keys {
                let start = end
                end += prefixBytes.copyBytes(to: buffer, at: end)
                end += Array.copyUTF8(of: key, to: buffer, at: end)
                initialized = end
                nonASCII = try validateKey(UnsafeBufferPointer(rebasing: buffer[start..<end]), key: key) || nonASCII
                ranges.append(start..<end)
            }
        }
        if nonASCII {
            try rejectCanonicallyEqualKeys(keys)
        }
        self.ranges = ranges
        answered = [Bool](repeating: false, count: ranges.count)
    }

    /// The index of the key with these bytes (prefix included), or `nil` when it was not asked for.
    ///
    /// memcached answers one server's keys in the order they were asked, skipping misses, so the
    /// reply is first compared with the few keys after the last match; only a reply out of that
    /// order (another server's, or after a run of misses) builds and consults the hash index.
    ///
    /// A key answered a second time matches only when it was asked for twice (the next request
    /// of the same bytes); otherwise the reply is not this request's, and the result is `nil`.
    mutating func match(_ key: UnsafeRawBufferPointer) -> Int? {
        let found = storage.withUnsafeBytes { all -> Int? in
            for candidate in cursor..<min(cursor + Self.lookahead, ranges.count)
            where !answered[candidate] && Self.equal(all, ranges[candidate], key) {
                return candidate
            }
            return nil
        }
        if let found {
            cursor = found + 1
            answered[found] = true
            return found
        }
        if slots.isEmpty {
            buildIndex()
        }
        guard var indexed = lookUp(key) else { return nil }
        if answered[indexed] {
            // The index holds a repeated key's first request; look for an unanswered repeat.
            guard let repeated = nextUnanswered(after: indexed, sameAs: key) else { return nil }
            indexed = repeated
        }
        cursor = indexed + 1
        answered[indexed] = true
        return indexed
    }

    private func nextUnanswered(after index: Int, sameAs key: UnsafeRawBufferPointer) -> Int? {
        storage.withUnsafeBytes { all in
            (index + 1..<ranges.count).first { !answered[$0] && Self.equal(all, ranges[$0], key) }
        }
    }

    /// How many keys after the last match ``match(_:)`` compares before it hashes: enough to skip
    /// a few misses in a row.
    private static let lookahead = 4

    @inline(__always)
    private static func equal(_ all: UnsafeRawBufferPointer, _ range: Range<Int>, _ key: UnsafeRawBufferPointer) -> Bool
    {
        sameBytes(UnsafeRawBufferPointer(rebasing: all[range]), key)
    }

    /// Indexes every key by its bytes; a repeated key keeps its first index.
    private mutating func buildIndex() {
        var capacity = 16
        while capacity < ranges.count * 2 { capacity <<= 1 }
        var slots = [Int32](repeating: -1, count: capacity)
        storage.withUnsafeBytes { all in
            for (index, range) in ranges.enumerated() {
                let key = UnsafeRawBufferPointer(rebasing: all[range])
                var slot = Self.hash(key) & (capacity - 1)
                while slots[slot] >= 0 {
                    if Self.equal(all, ranges[Int(slots[slot])], key) { break }
                    slot = (slot + 1) & (capacity - 1)
                }
                if slots[slot] < 0 { slots[slot] = Int32(index) }
            }
        }
        self.slots = slots
    }

    private func lookUp(_ key: UnsafeRawBufferPointer) -> Int? {
        guard !key.isEmpty else { return nil }
        let mask = slots.count - 1
        return storage.withUnsafeBytes { all in
            var slot = Self.hash(key) & mask
            while slots[slot] >= 0 {
                let candidate = Int(slots[slot])
                if Self.equal(all, ranges[candidate], key) { return candidate }
                slot = (slot + 1) & mask
            }
            return nil
        }
    }

    /// FNV-1a: short keys, no need for more.
    private static func hash(_ bytes: UnsafeRawBufferPointer) -> Int {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in bytes {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3
        }
        return Int(truncatingIfNeeded: hash ^ (hash >> 32))
    }

    /// Calls `body` with C pointers to every key and their lengths.
    func withCArrays<R>(
        _ body: (UnsafePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>, Int) throws -> R
    ) rethrows -> R {
        try storage.withUnsafeBufferPointer { all in
            let base = UnsafeRawPointer(all.baseAddress!).assumingMemoryBound(to: CChar.self)
            let pointers: [UnsafePointer<CChar>?] = ranges.map { base + $0.lowerBound }
            let lengths: [Int] = ranges.map { $0.count }
            return try pointers.withUnsafeBufferPointer { p in
                try lengths.withUnsafeBufferPointer { l in
                    try body(p.baseAddress!, l.baseAddress!, ranges.count)
                }
            }
        }
    }

    /// Calls `body` with the bytes of the key at `index`.
    func withKey<R>(at index: Int, _ body: (UnsafeBufferPointer<UInt8>) throws -> R) rethrows -> R {
        try storage.withUnsafeBufferPointer { all in
            try body(UnsafeBufferPointer(rebasing: all[ranges[index]]))
        }
    }
}

/// Whether two buffers hold the same bytes: how a reply's key is checked against the request.
@inline(__always)
func sameBytes(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer) -> Bool {
    first.count == second.count && (first.isEmpty || memcmp(first.baseAddress!, second.baseAddress!, first.count) == 0)
}

extension [UInt8] {
    /// Copies these bytes into `buffer` at `offset`, which has room for them; returns the count.
    @inline(__always)
    fileprivate func copyBytes(to buffer: UnsafeMutableBufferPointer<UInt8>, at offset: Int) -> Int {
        withUnsafeBufferPointer { source in
            guard let base = source.baseAddress, let target = buffer.baseAddress else { return 0 }
            (target + offset).initialize(from: base, count: source.count)
            return source.count
        }
    }

    /// Copies a string's UTF-8 into `buffer` at `offset`, which has room for it; returns the count.
    @inline(__always)
    fileprivate static func copyUTF8(
        of string: String,
        to buffer: UnsafeMutableBufferPointer<UInt8>,
        at offset: Int
    ) -> Int {
        let copied = string.utf8.withContiguousStorageIfAvailable { source -> Int in
            guard let base = source.baseAddress, let target = buffer.baseAddress else { return 0 }
            (target + offset).initialize(from: base, count: source.count)
            return source.count
        }
        if let copied {
            return copied
        }
        // A bridged or lazily decoded string has no contiguous UTF-8: copy byte by byte.
        var position = offset
        for byte in string.utf8 {
            buffer[position] = byte
            position += 1
        }
        return position - offset
    }
}

extension Handle {
    // MARK: - Storage

    /// Runs a storage command.
    ///
    /// - Returns: `true` when stored, `false` for the expected negatives: not stored (add on an
    ///   existing key, replace, append or prepend on a missing one), and for `cas` a changed or
    ///   missing item.
    func store(
        _ operation: StoreOperation,
        key: PreparedKey,
        value: UnsafeRawBufferPointer,
        flags: UInt32,
        expiration: Int64,
        noReply: Bool = false
    ) throws -> Bool {
        let pointer = try commandHandle(for: key, expectsReply: !noReply)
        let valuePointer = value.baseAddress.map { $0.assumingMemoryBound(to: CChar.self) }
        let keyPointer = key.cString
        let keyLength = key.bytes.count
        let expiry = time_t(expiration)
        if noReply { memcached_behavior_set(pointer, MEMCACHED_BEHAVIOR_NOREPLY, 1) }
        defer { if noReply { memcached_behavior_set(pointer, MEMCACHED_BEHAVIOR_NOREPLY, 0) } }
        let rc: memcached_return_t
        switch operation {
        case .set:
            rc = memcached_set(pointer, keyPointer, keyLength, valuePointer, value.count, expiry, flags)
        case .add:
            rc = memcached_add(pointer, keyPointer, keyLength, valuePointer, value.count, expiry, flags)
        case .replace:
            rc = memcached_replace(pointer, keyPointer, keyLength, valuePointer, value.count, expiry, flags)
        case .append:
            rc = memcached_append(pointer, keyPointer, keyLength, valuePointer, value.count, expiry, flags)
        case .prepend:
            rc = memcached_prepend(pointer, keyPointer, keyLength, valuePointer, value.count, expiry, flags)
        case .cas(let token):
            guard token != 0 else {
                throw MemcachedError(
                    code: .invalidArguments,
                    message: "a CAS token of 0 is not a token (the binary protocol reads it as no check at all)",
                    key: key.key
                )
            }
            rc = memcached_cas(pointer, keyPointer, keyLength, valuePointer, value.count, expiry, flags, token)
        }
        if memcached_success(rc) {
            return true
        }
        switch rc {
        case MEMCACHED_NOTSTORED, MEMCACHED_DATA_EXISTS:
            return false
        case MEMCACHED_NOTFOUND:
            // Only cas and the binary protocol's replace/append/prepend report a missing key this way.
            return false
        default:
            throw failure(rc, command: operation.name, key: key.key, keyBytes: key.bytes)
        }
    }

    // MARK: - Retrieval

    /// Reads one key: one `memcached_mget` and one fetch, as `memcached_get` does, but into the
    /// handle's reusable result so no value is copied or allocated by libmemcached.
    ///
    /// - Returns: What `decode` returned for a hit, `nil` for a miss.
    ///
    /// - Parameter requiresCAS: Whether the caller needs the item's CAS token (`gets`): a reply
    ///   without one (token 0, which memcached never issues) is then malformed, since a token of 0
    ///   would make a later binary `cas` an unconditional `set`.
    func fetchOne<R>(
        key: PreparedKey,
        command: StaticString,
        requiresCAS: Bool = false,
        _ decode: (FetchedItem) throws -> R
    ) throws -> R? {
        let pointer = try commandHandle(for: key)
        defer { finishRead() }
        // Both protocols read into this handle's own results, never through `memcached_get`:
        // that reads into the result inside `memcached_st`, where libmemcached's unchecked copy
        // of an overlong binary key would overwrite the handle's function pointers that follow
        // it. The binary protocol pays a second write per read (GETKQ, then NOOP).
        let result = try liveResult()
        var keyPointer: UnsafePointer<CChar>? = key.cString
        var keyLength = key.bytes.count
        let rc = Self.sendFailure(memcached_mget(pointer, &keyPointer, &keyLength, 1))
        guard memcached_success(rc) else {
            throw failure(rc, command: command, key: key.key, keyBytes: key.bytes)
        }
        var fetchRC = MEMCACHED_SUCCESS
        guard try fetch(pointer, into: result, itemsSoFar: 0, command: command, &fetchRC) else {
            try checkReplyEnded(pointer, fetchRC, command: command, key: key)
            // libmemcached reports some replies it cannot parse (a length past 2⁶⁴) as a miss,
            // after closing the socket the request went out on: that is not an answer.
            if serverHungUp(pointer, key: key) {
                throw failure(
                    MEMCACHED_CONNECTION_FAILURE,
                    command: command,
                    key: key.key,
                    keyBytes: key.bytes,
                    reset: true
                )
            }
            return nil
        }
        let item = try fetchedItem(result, command: command, key: key)
        try checkKey(of: item, key)
        // The rest of the reply must be exactly `END`: read into the scratch result, so that the
        // value stays intact, before any caller code runs. A second value (a flood of them, or
        // garbage after the data block) fails the read rather than be left for the next command.
        var restRC = MEMCACHED_SUCCESS
        if try fetch(pointer, into: try liveScratch(), itemsSoFar: 1, command: command, &restRC) {
            throw malformedReply("more than one value for one key", command: command, key: key)
        }
        try checkReplyEnded(pointer, restRC, command: command, key: key)
        guard !requiresCAS || item.cas != 0 else {
            throw malformedReply("a value without a CAS token", command: command, key: key)
        }
        return try whileReading { try decode(item) }
    }

    /// `memcached_mget`'s code, with its bare `MEMCACHED_FAILURE` ("complete failure": every
    /// request write failed, as on a connection whose server just died) as the connection failure
    /// it is; libmemcached records no error for it.
    @inline(__always)
    static func sendFailure(_ rc: memcached_return_t) -> memcached_return_t {
        rc == MEMCACHED_FAILURE ? MEMCACHED_CONNECTION_FAILURE : rc
    }

    /// Throws when a single-key read was answered for another key.
    @inline(__always)
    private func checkKey(of item: FetchedItem, _ key: PreparedKey) throws {
        guard sameBytes(item.keyBytes, UnsafeRawBufferPointer(key.bytes)) else {
            throw unexpectedKey(key.key)
        }
    }

    /// Resets the connection after a reply for a key that was not asked for, and says so.
    func unexpectedKey(_ key: String? = nil) -> MemcachedError {
        resetConnections()
        return MemcachedError(
            code: .unexpectedKey,
            message: "a server answered with a key that was not asked for; the connection was reset",
            key: key
        )
    }

    /// Throws unless a fetch loop that returned no item ended on a whole, clean reply: `END` (or
    /// the binary `NOOP`) from every server, nothing left unread.
    ///
    /// `memcached_fetch_result` reports many broken replies as a plain miss: it turns an error
    /// line (`SERVER_ERROR out of memory ...`, `CLIENT_ERROR`, garbage) into
    /// `MEMCACHED_NOTFOUND` when no item was read, and leaves whatever followed on the socket,
    /// where the next command would read it as its own reply. Two things give it away: the
    /// handle's last error, which libmemcached clears at the start of every command, and each
    /// server's count of replies still expected, which only a final `END` brings to zero.
    func checkReplyEnded(
        _ pointer: UnsafeMutablePointer<memcached_st>,
        _ rc: memcached_return_t,
        command: StaticString,
        key: PreparedKey? = nil,
        toleratingLostServers: Bool = false,
        serversFailed: Bool = false
    ) throws {
        guard rc == MEMCACHED_END || rc == MEMCACHED_NOTFOUND || rc == MEMCACHED_SUCCESS else {
            throw failure(rc, command: command, key: key?.key, keyBytes: key?.bytes, reset: true)
        }
        let hidden = memcached_last_error(pointer)
        // A multi-get treats a server that is down as skipped: its keys are misses. Down means a
        // failure that leaves nothing of a reply unread: it refused the connection or hung up
        // (libmemcached closed that socket itself), or libmemcached has it disabled or marked
        // dead after earlier failures; it reports each of these as the handle's last error.
        // With `serversFailed`, the caller reports the keys of servers that failed to take or
        // finish the request: the error they left (a refused or broken socket) is theirs.
        let lost =
            toleratingLostServers
            && (!Self.mayLeaveReplyUnread(hidden) || (serversFailed && Self.isBrokenConnection(hidden)))
        if !Self.isCleanEndOfReply(hidden) && !lost {
            throw failure(hidden, command: command, key: key?.key, keyBytes: key?.bytes, reset: true)
        }
        if hasUnreadReplies(pointer, key: key) {
            throw malformedReply("a reply that did not end with END", command: command, key: key)
        }
    }

    /// A failure of a server's socket, after which libmemcached closed it.
    private static func isBrokenConnection(_ rc: memcached_return_t) -> Bool {
        rc == MEMCACHED_CONNECTION_FAILURE || rc == MEMCACHED_ERRNO || rc == MEMCACHED_WRITE_FAILURE
            || rc == MEMCACHED_READ_FAILURE
    }

    private static func isCleanEndOfReply(_ rc: memcached_return_t) -> Bool {
        rc == MEMCACHED_SUCCESS || rc == MEMCACHED_END || rc == MEMCACHED_NOTFOUND
    }

    /// Whether some server still owes a reply libmemcached has not read to its end: the server
    /// of `key` for a single-key read (a weighted modula list can hold thousands of entries),
    /// every server otherwise.
    func hasUnreadReplies(_ pointer: UnsafeMutablePointer<memcached_st>, key: PreparedKey? = nil) -> Bool {
        if let key {
            var rc = MEMCACHED_SUCCESS
            guard let instance = memcached_server_by_key(pointer, key.cString, key.bytes.count, &rc) else {
                return false
            }
            return memcached_server_response_count(instance) > 0
        }
        for position in 0..<memcached_server_count(pointer) {
            if let instance = memcached_server_instance_by_position(pointer, position),
                memcached_server_response_count(instance) > 0
            {
                return true
            }
        }
        return false
    }

    /// Resets the connections after a reply that breaks the protocol, and says what was wrong.
    func malformedReply(_ what: String, command: StaticString, key: PreparedKey? = nil) -> MemcachedError {
        resetConnections()
        let server = key.flatMap { serverDescription(forKey: $0.bytes) }
        logger.debug(
            "memcached reply rejected",
            metadata: ["command": "\(command)", "server": "\(server ?? "-")", "reason": "\(what)"]
        )
        return MemcachedError(
            code: .protocolError,
            message: "a server sent a malformed reply (\(what)); the connection was reset",
            key: key?.key,
            server: server
        )
    }

    /// Reads the next item of a reply into `result`, cleared first.
    ///
    /// libmemcached's text reader takes a line that starts with a digit for an `incr` reply and
    /// returns it as an item, leaving the result as it was: without the clearing, a stray number
    /// in a get reply would hand over the key and value of the result's previous use.
    ///
    /// `itemsSoFar` is how many items this reply gave already. libmemcached keeps that count in
    /// the result it is given and, when a reply fails after no item, reports the failure as "not
    /// found"; with the fetches alternating between two results, each must carry the reply's
    /// count, or an error line after some values would read as the end of the reply.
    ///
    /// - Throws: ``MemcachedError/Code/protocolError`` when the reply's key overran the result's
    ///   251-byte key buffer (libmemcached does not check), after repairing the result.
    @inline(__always)
    func fetch(
        _ pointer: UnsafeMutablePointer<memcached_st>,
        into result: UnsafeMutablePointer<memcached_result_st>,
        itemsSoFar: Int,
        command: StaticString,
        _ rc: inout memcached_return_t
    ) throws -> Bool {
        memcached_result_reset(result)
        result.pointee.count = UInt64(itemsSoFar)
        let canary = ReplyMemory.armCanary(after: result)
        let fetched = memcached_fetch_result(pointer, result, &rc) != nil
        // An overlong key shows as its length, unless a later server's item within the same
        // fetch set the length again: then as the result's own flags (its last field, which
        // the overrun reaches first) or the canary after the struct. Caught here, before the
        // flags make libmemcached free the result's buffer at the next fetch.
        let options = result.pointee.options
        if _slowPath(
            memcached_result_key_length(result) >= Int(MEMCACHED_MAX_KEY) || options.is_allocated
                || !options.is_initialized || !ReplyMemory.canaryIntact(canary, after: result)
        ) {
            let length = memcached_result_key_length(result)
            try rebuildResult(result)
            throw malformedReply("a key of \(length) bytes", command: command)
        }
        return fetched
    }

    /// The item a fetch read into `result`, once its length is known to be sane.
    ///
    /// libmemcached 1.1.4's text parser accepts a length of `-1` or `-2` (as 2^64 − 1 or − 2) and
    /// reports it as the value's length; ``ReplyMemory`` absorbed what it wrote, and this refuses
    /// the length before anything reads the value.
    @inline(__always)
    func fetchedItem(
        _ result: UnsafeMutablePointer<memcached_result_st>,
        command: StaticString,
        key: PreparedKey? = nil
    ) throws -> FetchedItem {
        let length = memcached_result_length(result)
        guard length >= 0, length <= configuration.maximumReceivedValueLength else {
            throw malformedReply("a value length of \(UInt(bitPattern: length)) bytes", command: command, key: key)
        }
        guard memcached_result_key_length(result) > 0 else {
            throw malformedReply("an item without a key", command: command, key: key)
        }
        return FetchedItem(result, length: length)
    }

    /// Reads many keys with one `memcached_mget` (one round trip per server) and calls `body`
    /// for every hit, in the order the servers answer.
    ///
    /// Each hit is handed over only once the reply after it has been read: the next value's
    /// header and data, or the final `END`. libmemcached overwrites the two bytes that should end
    /// a data block with zeros before anyone can check them, so a data block longer or shorter
    /// than its claimed length shows only in the line read after it. The fetches alternate
    /// between the handle's two result buffers, so the value waiting to be handed over stays in
    /// place, uncopied, while the next one is read.
    ///
    /// Servers that cannot be reached, or hang up before their reply is complete while others
    /// answer on, are skipped and returned, so that the caller can report their keys. When no server answered at all, or a server failed mid-reply, the call throws,
    /// and the hit read just before the failure is not handed over.
    ///
    /// Each reply's key is matched to the request (``KeyBatch/match(_:)``) as soon as it is read,
    /// before the hit read just before it is handed over: a key nobody asked for, or asked for
    /// once and answered twice, fails the call with that hit kept back.
    @discardableResult
    func fetchMany(
        _ batch: inout KeyBatch,
        command: StaticString,
        _ body: (_ index: Int, FetchedItem) throws -> Void
    ) throws -> Set<String> {
        let pointer = try commandHandle()
        defer { finishRead() }
        answeredServers = nil
        var reading = try liveResult()
        var waiting = try liveScratch()
        let rc = Self.sendFailure(
            batch.withCArrays { keys, lengths, count in
                memcached_mget(pointer, keys, lengths, count)
            }
        )
        // Which servers owe replies: a server that hangs up mid-reply while another answers on
        // ends the read without an error, and only its closed socket tells its keys apart.
        let tracksServers = health != nil || ServerConnectionState.isAvailable
        if tracksServers {
            noteAskedServers()
        }
        if !memcached_success(rc) && rc != MEMCACHED_SOME_ERRORS {
            throw failure(rc, command: command)
        }
        // A server that refused the connection leaves the call's code at success (only a failed
        // write makes it SOME_ERRORS) but its error on the handle, which every command clears first.
        var unreachable: Set<String> = []
        if _slowPath(rc == MEMCACHED_SOME_ERRORS || memcached_last_error(pointer) != MEMCACHED_SUCCESS) {
            logger.debug("memcached multi-get: some servers are unavailable", metadata: ["command": "\(command)"])
            unreachable = serversNotAsked(pointer)
        }
        var fetchRC = MEMCACHED_SUCCESS
        var bodyError: (any Error)?
        var items = 0
        // The hit read last, in `waiting`, handed over once the next read succeeds.
        var pending: (index: Int, item: FetchedItem)?
        func handOver(_ hit: (index: Int, item: FetchedItem)) {
            // Keep reading after a decoding error so the rest of the reply does not linger.
            guard bodyError == nil else { return }
            do {
                try whileReading { try body(hit.index, hit.item) }
            } catch {
                bodyError = error
            }
        }
        // For a read stopped by its deadline: notes the servers that had answered in full. The
        // hit read last waits for the next read to show its reply was whole: when its server has
        // answered in full, it was, and it is handed over; otherwise its key fails too.
        func noteAnswered() {
            guard tracksServers else { return }
            noteAnsweredServers()
            if let hit = pending, let answered = answeredServers,
                batch.withKey(at: hit.index, { server(ofKey: $0, amongst: answered) }) != nil
            {
                pending = nil
                handOver(hit)
            }
        }
        while try fetch(pointer, into: reading, itemsSoFar: items, command: command, &fetchRC) {
            items += 1
            // memcached answers each key at most once: more values than keys is a flood.
            guard items <= batch.count else {
                throw malformedReply("more values than keys asked for", command: command)
            }
            let item = try fetchedItem(reading, command: command)
            // The reply's key, prefix included, must be one that was asked for and not answered.
            guard let index = batch.match(item.keyBytes) else {
                throw unexpectedKey()
            }
            // A server that keeps sending (or a slow `body`) must not hold the call past its
            // deadline; the rest of the reply stays unread, so the connection is reset.
            if _slowPath(isPastDeadline) {
                noteAnswered()
                if let health { chargeServersThatOweReplies(health) }
                resetConnections()
                throw deadlineError()
            }
            if let pending {
                handOver(pending)
            }
            pending = (index, item)
            swap(&reading, &waiting)
        }
        // The watchdog's shut-down sockets read as servers that hung up, whose keys a multi-get
        // reports as misses: they are not misses.
        if _slowPath(deadline.wasInterrupted) {
            noteAnswered()
            if let health { chargeServersThatOweReplies(health) }
            resetConnections()
            throw deadlineError()
        }
        let lost = tracksServers ? serversThatHungUp() : []
        let failedServers = unreachable.union(lost)
        switch fetchRC {
        case MEMCACHED_END, MEMCACHED_NOTFOUND, MEMCACHED_SUCCESS:
            try checkReplyEnded(
                pointer,
                fetchRC,
                command: command,
                toleratingLostServers: true,
                serversFailed: !failedServers.isEmpty
            )
        case MEMCACHED_CONNECTION_FAILURE where rc == MEMCACHED_SOME_ERRORS || !failedServers.isEmpty:
            if hasUnreadReplies(pointer) {
                throw malformedReply("a reply that did not end with END", command: command)
            }
        default:
            if fetchRC == MEMCACHED_TIMEOUT {
                noteAnswered()
            }
            throw failure(fetchRC, command: command)
        }
        if let health {
            if _slowPath(!health.allHealthy || !lost.isEmpty) {
                creditAskedServers(health, except: lost)
            }
        }
        if tracksServers {
            forgetAskedServers()
        }
        if let pending {
            handOver(pending)
        }
        if let bodyError {
            throw HandOverFailed(error: bodyError)
        }
        return failedServers
    }

    /// Whether libmemcached closed the socket of `key`'s server during the call: a request went
    /// out on it, so it was open.
    private func serverHungUp(_ pointer: UnsafeMutablePointer<memcached_st>, key: PreparedKey) -> Bool {
        guard ServerConnectionState.isAvailable else { return false }
        var rc = MEMCACHED_SUCCESS
        guard let instance = memcached_server_by_key(pointer, key.cString, key.bytes.count, &rc) else { return false }
        return ServerConnectionState.descriptor(of: instance) == nil
    }

    /// The servers asked in this multi-get whose socket libmemcached has closed since: each hung
    /// up, or failed, before its reply was complete.
    private func serversThatHungUp() -> Set<String> {
        guard ServerConnectionState.isAvailable, let pointer else { return [] }
        var servers: Set<String> = []
        for position in askedServers.indices where askedServers[position] {
            if let instance = memcached_server_instance_by_position(pointer, UInt32(position)),
                ServerConnectionState.descriptor(of: instance) == nil
            {
                servers.insert(Self.describe(instance))
            }
        }
        return servers
    }

    /// What ``fetchMany(_:command:_:)`` throws when its `body` threw and the rest of the reply
    /// was then read in full: the body's own error, told apart from a failure of the read.
    struct HandOverFailed: Error {
        var error: any Error
    }

    /// The servers a multi-get's request did not reach, right after `memcached_mget`: no reply
    /// owed. Servers none of the keys map to are among them, which is harmless to a caller that
    /// asks about the servers of its unanswered keys.
    @inline(never)
    private func serversNotAsked(_ pointer: UnsafeMutablePointer<memcached_st>) -> Set<String> {
        var servers: Set<String> = []
        for position in 0..<memcached_server_count(pointer) {
            if let instance = memcached_server_instance_by_position(pointer, position),
                memcached_server_response_count(instance) == 0
            {
                servers.insert(Self.describe(instance))
            }
        }
        return servers
    }

    // MARK: - Deletion, arithmetic, touch

    /// Deletes a key. Returns `false` when it was not there.
    func delete(key: PreparedKey, noReply: Bool = false) throws -> Bool {
        let pointer = try commandHandle(for: key, expectsReply: !noReply)
        if noReply { memcached_behavior_set(pointer, MEMCACHED_BEHAVIOR_NOREPLY, 1) }
        defer { if noReply { memcached_behavior_set(pointer, MEMCACHED_BEHAVIOR_NOREPLY, 0) } }
        let rc = memcached_delete(pointer, key.cString, key.bytes.count, 0)
        if memcached_success(rc) { return true }
        if rc == MEMCACHED_NOTFOUND { return false }
        throw failure(rc, command: "delete", key: key.key, keyBytes: key.bytes)
    }

    /// Adds to or subtracts from a counter with the 64-bit `_by_key` calls (`memcached_increment`
    /// takes a 32-bit delta). The key is its own group key, so it maps to the same server.
    ///
    /// - Returns: The new value, or `nil` when the key is missing.
    func arithmetic(key: PreparedKey, delta: UInt64, increment: Bool) throws -> UInt64? {
        let pointer = try commandHandle(for: key)
        var newValue: UInt64 = 0
        let operation = increment ? memcached_increment_by_key : memcached_decrement_by_key
        let rc = operation(pointer, key.cString, key.bytes.count, key.cString, key.bytes.count, delta, &newValue)
        if memcached_success(rc) {
            if binary && newValue == .max {
                try confirmCounterAtMaximum(key: key, increment: increment)
            }
            return newValue
        }
        if rc == MEMCACHED_NOTFOUND { return nil }
        var error = failure(rc, command: increment ? "increment" : "decrement", key: key.key, keyBytes: key.bytes)
        if binary && rc == MEMCACHED_UNKNOWN_READ_FAILURE {
            // libmemcached maps every binary status it does not know to this code and drops the
            // server's text; the usual one for a counter is memcached's "non-numeric value".
            error.message +=
                " (in the binary protocol this is how libmemcached reports a stored value that is not a number)"
        }
        throw error
    }

    /// Checks a binary counter reply of 2⁶⁴ − 1 against the stored value.
    ///
    /// libmemcached clears the handle's result to that value before it reads the reply, and only a
    /// binary increment reply overwrites it; any other packet it accepts in its place (a
    /// statistic, the server's mechanisms list) leaves it there and reads as success. A counter
    /// really at the maximum is rare, so that one value is confirmed with a `get`; another
    /// client changing the key in between makes the call throw although the counter changed.
    private func confirmCounterAtMaximum(key: PreparedKey, increment: Bool) throws {
        let stored = try fetchOne(key: key, command: increment ? "increment" : "decrement") { item in
            // memcached rewrites a counter in place when the new number is not longer, padding it
            // with spaces.
            var digits = item.value[...]
            while digits.last == UInt8(ascii: " ") { digits = digits.dropLast() }
            return digits.elementsEqual(String(UInt64.max).utf8)
        }
        guard stored == true else {
            throw malformedReply(
                "a reply of another kind to \(increment ? "incr" : "decr")",
                command: increment ? "increment" : "decrement",
                key: key
            )
        }
    }

    /// Changes a key's expiration. Returns `false` when it was not there.
    func touch(key: PreparedKey, expiration: Int64) throws -> Bool {
        let rc = memcached_touch(try commandHandle(for: key), key.cString, key.bytes.count, time_t(expiration))
        if memcached_success(rc) { return true }
        if rc == MEMCACHED_NOTFOUND { return false }
        throw failure(rc, command: "touch", key: key.key, keyBytes: key.bytes)
    }

    /// Writes what fire-and-forget commands left in the write buffers. A no-op without
    /// ``noReply``, and while ``holdsWriteFlush`` (a batch of writes flushes once, at its end).
    /// The corresponding C function is `memcached_flush_buffers`.
    func flushWrites() throws {
        guard noReply, !holdsWriteFlush else { return }
        let rc = memcached_flush_buffers(try live())
        guard memcached_success(rc) else {
            throw failure(rc, command: "flush_buffers")
        }
    }

    // MARK: - Administration

    func flush(delaySeconds: Int64, noReply: Bool = false) throws {
        let pointer = try commandHandle()
        if noReply { memcached_behavior_set(pointer, MEMCACHED_BEHAVIOR_NOREPLY, 1) }
        defer { if noReply { memcached_behavior_set(pointer, MEMCACHED_BEHAVIOR_NOREPLY, 0) } }
        let rc = memcached_flush(pointer, time_t(delaySeconds))
        guard memcached_success(rc) else {
            throw failure(rc, command: "flush")
        }
    }

    /// Every server in configuration order, described as `host:port` or `unix:/path`, each once.
    ///
    /// With modula distribution a server of weight `w` is `w` libmemcached entries in a row; the
    /// first one stands for the server.
    func serverInstances() throws -> [(instance: OpaquePointer, description: String)] {
        let pointer = try live()
        var seen: Set<String> = []
        return (0..<memcached_server_count(pointer)).compactMap { position in
            memcached_server_instance_by_position(pointer, position).map { ($0, Self.describe($0)) }
        }.filter { seen.insert($0.description).inserted }
    }

    /// The error a server recorded for the current command, if any.
    private func serverError(_ instance: OpaquePointer, server: String) -> MemcachedError? {
        let rc = memcached_server_error_return(instance)
        guard !memcached_success(rc) else { return nil }
        let message =
            memcached_server_error(instance).map { Self.readable(String(cString: $0)) }
            ?? String(cString: memcached_strerror(nil, rc))
        return MemcachedError(code: MemcachedError.Code(rawValue: Int(rc.rawValue)), message: message, server: server)
    }

    /// Runs `stats [group]` on every server.
    ///
    /// Each server is asked through a short-lived handle of its own, because
    /// `memcached_stat_execute` first runs `memcached_version` on every server and gives up on all
    /// of them when one is down.
    func stats(group: String?) throws -> [MemcachedServerResult<[String: String]>] {
        try onEachServer { try $0.statsOfOnlyServer(group: group) }
    }

    /// Runs `body` on a short-lived handle of each configured server, in configuration order.
    ///
    /// A fresh handle also starts with no recorded errors: libmemcached keeps a server's last
    /// error until a later command fails on it, so on a long-lived handle an old `CLIENT_ERROR`
    /// would read as the server's state.
    ///
    /// The handles speak the text protocol unless SASL needs the binary one: libmemcached 1.1.4
    /// reads a binary `VERSION` reply (which `stats` also asks for) into a 32-byte stack buffer
    /// for as many bytes as the server's header claims. memcached answers either protocol on any
    /// connection.
    ///
    /// Each short-lived handle runs under this call's deadline, which the watchdog enforces on it
    /// too; once the deadline has passed, the remaining servers fail at once.
    private func onEachServer<R>(_ body: (Handle) throws -> R) throws -> [MemcachedServerResult<R>] {
        _ = try live()
        let inherited = deadline.current
        return try configuration.servers.map { server in
            var single = configuration(onlyFor: server)
            if configuration.credentials == nil {
                single.wireProtocol = .ascii
            }
            guard !isPastDeadline else {
                var error = deadlineError()
                error.server = server.address.description
                return MemcachedServerResult(server: server.address.description, result: .failure(error))
            }
            do {
                let handle = try Handle(configuration: single, parentDeadline: deadline)
                defer { handle.close() }
                // It logs where the call logs: to the caller's logger, when the call has one.
                handle.logger = logger
                handle.traceEnabled = traceEnabled
                let result = try handle.withDeadline(inheriting: inherited) { try body(handle) }
                return MemcachedServerResult(server: server.address.description, result: .success(result))
            } catch let error as CancellationError {
                throw error
            } catch let error as MemcachedError {
                var error = error
                error.server = error.server ?? server.address.description
                return MemcachedServerResult(server: server.address.description, result: .failure(error))
            } catch {
                return MemcachedServerResult(
                    server: server.address.description,
                    result: .failure(MemcachedError(code: .failure, message: "\(error)"))
                )
            }
        }
    }

    /// This handle's configuration with `server` as its only server (weight 1), for the
    /// short-lived handles of `stats`, `versions` and the probes of servers marked down.
    func configuration(onlyFor server: MemcachedServer) -> MemcachedConfiguration {
        var single = configuration
        single.servers = [MemcachedServer(address: server.address, weight: 1)]
        return single
    }

    private func statsOfOnlyServer(group: String?) throws -> [String: String] {
        final class Collector {
            var values: [String: String] = [:]
        }
        let pointer = try live()
        let collector = Collector()
        let callback: memcached_stat_fn = { _, key, keyLength, value, valueLength, context in
            let collector = Unmanaged<Collector>.fromOpaque(context!).takeUnretainedValue()
            let name = String(decoding: UnsafeRawBufferPointer(start: key, count: keyLength), as: UTF8.self)
            collector.values[name] = String(
                decoding: UnsafeRawBufferPointer(start: value, count: valueLength),
                as: UTF8.self
            )
            return MEMCACHED_SUCCESS
        }
        let rc = withExtendedLifetime(collector) {
            memcached_stat_execute(pointer, group, callback, Unmanaged.passUnretained(collector).toOpaque())
        }
        guard memcached_success(rc) else {
            throw failure(rc, command: "stats")
        }
        // libmemcached 1.1.4's memcached_server_execute (instance.cc), which runs `stats` on each
        // server, returns MEMCACHED_SUCCESS even when the server failed, for example when it closed
        // the connection (as twemproxy does, which does not forward `stats`). This handle is fresh
        // and serves one server, so an error recorded on that server is this call's, unless the
        // server answered anyway: a host name whose first address refused leaves that error
        // recorded after libmemcached connected to the next one, and the connection is then open.
        if let (instance, server) = try serverInstances().first, let error = serverError(instance, server: server) {
            let answered =
                ServerConnectionState.isAvailable
                ? ServerConnectionState.descriptor(of: instance) != nil : !collector.values.isEmpty
            if !answered {
                throw error
            }
        }
        return collector.values
    }

    /// Asks every server for its version, each through a short-lived handle of its own (see
    /// ``onEachServer(_:)``), so an error an earlier command met never reads as the server's state.
    func versions() throws -> [MemcachedServerResult<String>] {
        try onEachServer { try $0.versionOfOnlyServer() }
    }

    func versionOfOnlyServer() throws -> String {
        let pointer = try live()
        let rc = memcached_version(pointer)
        guard let (instance, server) = try serverInstances().first else {
            throw MemcachedError(code: .noServers, message: "no server is configured")
        }
        if !memcached_success(rc) {
            throw serverError(instance, server: server) ?? failure(rc, command: "version")
        }
        let version = [
            memcached_server_major_version(instance),
            memcached_server_minor_version(instance),
            memcached_server_micro_version(instance),
        ]
        guard !version.contains(UInt8.max) else {
            throw MemcachedError(code: .failure, message: "the server reported no version", server: server)
        }
        return version.map(String.init).joined(separator: ".")
    }

    /// The server a key maps to under this handle's hash and distribution.
    func server(forKey key: PreparedKey) throws -> String {
        var rc = MEMCACHED_SUCCESS
        guard let instance = memcached_server_by_key(try live(), key.cString, key.bytes.count, &rc) else {
            throw failure(rc, command: "server_by_key", key: key.key, keyBytes: key.bytes)
        }
        return Self.describe(instance)
    }
}

extension FetchedItem {
    /// The item in `result`, whose value `length` (its `memcached_result_length`) was checked.
    init(_ result: UnsafeMutablePointer<memcached_result_st>, length: Int) {
        let keyLength = memcached_result_key_length(result)
        keyBytes = UnsafeRawBufferPointer(start: memcached_result_key_value(result), count: keyLength)
        value = UnsafeRawBufferPointer(start: memcached_result_value(result), count: length)
        flags = memcached_result_flags(result)
        cas = memcached_result_cas(result)
    }
}
