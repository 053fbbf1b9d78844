// MARK: - Codes

extension MemcachedError.Code {
    /// The command succeeded.
    ///
    /// The corresponding C value is `MEMCACHED_SUCCESS`.
    public static let success = Self(rawValue: 0)
    /// A generic failure inside libmemcached.
    ///
    /// The corresponding C value is `MEMCACHED_FAILURE`.
    public static let failure = Self(rawValue: 1)
    /// A server's host name could not be resolved.
    ///
    /// The corresponding C value is `MEMCACHED_HOST_LOOKUP_FAILURE`.
    public static let hostLookupFailure = Self(rawValue: 2)
    /// The connection to a server could not be established or was lost.
    ///
    /// The corresponding C value is `MEMCACHED_CONNECTION_FAILURE`.
    public static let connectionFailure = Self(rawValue: 3)
    /// Deprecated by libmemcached in favour of ``hostLookupFailure``.
    ///
    /// The corresponding C value is `MEMCACHED_CONNECTION_BIND_FAILURE`.
    public static let connectionBindFailure = Self(rawValue: 4)
    /// Writing to a server's socket failed.
    ///
    /// The corresponding C value is `MEMCACHED_WRITE_FAILURE`.
    public static let writeFailure = Self(rawValue: 5)
    /// Reading from a server's socket failed.
    ///
    /// The corresponding C value is `MEMCACHED_READ_FAILURE`.
    public static let readFailure = Self(rawValue: 6)
    /// A server sent a reply libmemcached did not expect.
    ///
    /// The corresponding C value is `MEMCACHED_UNKNOWN_READ_FAILURE`.
    public static let unknownReadFailure = Self(rawValue: 7)
    /// A server's reply broke the protocol.
    ///
    /// The corresponding C value is `MEMCACHED_PROTOCOL_ERROR`.
    public static let protocolError = Self(rawValue: 8)
    /// A server answered `CLIENT_ERROR`, for example when incrementing a non-numeric value.
    ///
    /// The corresponding C value is `MEMCACHED_CLIENT_ERROR`.
    public static let clientError = Self(rawValue: 9)
    /// A server answered `SERVER_ERROR`.
    ///
    /// The corresponding C value is `MEMCACHED_SERVER_ERROR`.
    public static let serverError = Self(rawValue: 10)
    /// A server answered `ERROR`: it did not understand the command. libmemcached also names this value `MEMCACHED_CONNECTION_SOCKET_CREATE_FAILURE`.
    ///
    /// The corresponding C value is `MEMCACHED_ERROR`.
    public static let errorReply = Self(rawValue: 11)
    /// A compare-and-swap found that the item changed since it was read.
    ///
    /// The corresponding C value is `MEMCACHED_DATA_EXISTS`.
    public static let dataExists = Self(rawValue: 12)
    /// The item does not exist.
    ///
    /// The corresponding C value is `MEMCACHED_DATA_DOES_NOT_EXIST`.
    public static let dataDoesNotExist = Self(rawValue: 13)
    /// The item was not stored (add on an existing key, replace or append on a missing one).
    ///
    /// The corresponding C value is `MEMCACHED_NOTSTORED`.
    public static let notStored = Self(rawValue: 14)
    /// The item was stored.
    ///
    /// The corresponding C value is `MEMCACHED_STORED`.
    public static let stored = Self(rawValue: 15)
    /// The key was not found.
    ///
    /// The corresponding C value is `MEMCACHED_NOTFOUND`.
    public static let notFound = Self(rawValue: 16)
    /// libmemcached could not allocate memory.
    ///
    /// The corresponding C value is `MEMCACHED_MEMORY_ALLOCATION_FAILURE`.
    public static let memoryAllocationFailure = Self(rawValue: 17)
    /// Only part of a reply could be read.
    ///
    /// The corresponding C value is `MEMCACHED_PARTIAL_READ`.
    public static let partialRead = Self(rawValue: 18)
    /// Some of the servers involved in a command failed.
    ///
    /// The corresponding C value is `MEMCACHED_SOME_ERRORS`.
    public static let someErrors = Self(rawValue: 19)
    /// No server is configured, or none is available for the key.
    ///
    /// The corresponding C value is `MEMCACHED_NO_SERVERS`.
    public static let noServers = Self(rawValue: 20)
    /// The end of a multi-part reply.
    ///
    /// The corresponding C value is `MEMCACHED_END`.
    public static let end = Self(rawValue: 21)
    /// The item was deleted.
    ///
    /// The corresponding C value is `MEMCACHED_DELETED`.
    public static let deleted = Self(rawValue: 22)
    /// A value line of a reply.
    ///
    /// The corresponding C value is `MEMCACHED_VALUE`.
    public static let value = Self(rawValue: 23)
    /// A statistics line of a reply.
    ///
    /// The corresponding C value is `MEMCACHED_STAT`.
    public static let stat = Self(rawValue: 24)
    /// An item line of a reply.
    ///
    /// The corresponding C value is `MEMCACHED_ITEM`.
    public static let item = Self(rawValue: 25)
    /// A system call failed; the message carries the system's error text.
    ///
    /// The corresponding C value is `MEMCACHED_ERRNO`.
    public static let systemError = Self(rawValue: 26)
    /// Deprecated by libmemcached: a Unix domain socket failure.
    ///
    /// The corresponding C value is `MEMCACHED_FAIL_UNIX_SOCKET`.
    public static let failUnixSocket = Self(rawValue: 27)
    /// The command is not supported by the server or in the configured protocol.
    ///
    /// The corresponding C value is `MEMCACHED_NOT_SUPPORTED`.
    public static let notSupported = Self(rawValue: 28)
    /// Deprecated by libmemcached in favour of ``badKeyProvided``.
    ///
    /// The corresponding C value is `MEMCACHED_NO_KEY_PROVIDED`.
    public static let noKeyProvided = Self(rawValue: 29)
    /// A previous multi-get was not fully read.
    ///
    /// The corresponding C value is `MEMCACHED_FETCH_NOTFINISHED`.
    public static let fetchNotFinished = Self(rawValue: 30)
    /// A server did not answer within the configured timeout.
    ///
    /// The corresponding C value is `MEMCACHED_TIMEOUT`.
    public static let timeout = Self(rawValue: 31)
    /// The request was buffered and not yet sent.
    ///
    /// The corresponding C value is `MEMCACHED_BUFFERED`.
    public static let buffered = Self(rawValue: 32)
    /// libmemcached refused the key.
    ///
    /// The corresponding C value is `MEMCACHED_BAD_KEY_PROVIDED`.
    public static let badKeyProvided = Self(rawValue: 33)
    /// The server's transport does not support the command.
    ///
    /// The corresponding C value is `MEMCACHED_INVALID_HOST_PROTOCOL`.
    public static let invalidHostProtocol = Self(rawValue: 34)
    /// The server failed too often and is marked dead.
    ///
    /// The corresponding C value is `MEMCACHED_SERVER_MARKED_DEAD`.
    public static let serverMarkedDead = Self(rawValue: 35)
    /// The statistics group is not known.
    ///
    /// The corresponding C value is `MEMCACHED_UNKNOWN_STAT_KEY`.
    public static let unknownStatKey = Self(rawValue: 36)
    /// The server refused the item because it exceeds its item size limit.
    ///
    /// The corresponding C value is `MEMCACHED_E2BIG`.
    public static let itemTooBig = Self(rawValue: 37)
    /// libmemcached refused the arguments of the call.
    ///
    /// The corresponding C value is `MEMCACHED_INVALID_ARGUMENTS`.
    public static let invalidArguments = Self(rawValue: 38)
    /// libmemcached refused the key because it is too long.
    ///
    /// The corresponding C value is `MEMCACHED_KEY_TOO_BIG`.
    public static let keyTooBig = Self(rawValue: 39)
    /// SASL authentication could not be performed.
    ///
    /// The corresponding C value is `MEMCACHED_AUTH_PROBLEM`.
    public static let authProblem = Self(rawValue: 40)
    /// SASL authentication failed: wrong credentials.
    ///
    /// The corresponding C value is `MEMCACHED_AUTH_FAILURE`.
    public static let authFailure = Self(rawValue: 41)
    /// SASL authentication needs another step.
    ///
    /// The corresponding C value is `MEMCACHED_AUTH_CONTINUE`.
    public static let authContinue = Self(rawValue: 42)
    /// A configuration string could not be parsed.
    ///
    /// The corresponding C value is `MEMCACHED_PARSE_ERROR`.
    public static let parseError = Self(rawValue: 43)
    /// A configuration string holds an error of the user's.
    ///
    /// The corresponding C value is `MEMCACHED_PARSE_USER_ERROR`.
    public static let parseUserError = Self(rawValue: 44)
    /// The call is deprecated.
    ///
    /// The corresponding C value is `MEMCACHED_DEPRECATED`.
    public static let deprecated = Self(rawValue: 45)
    /// A non-blocking operation is still in progress.
    ///
    /// The corresponding C value is `MEMCACHED_IN_PROGRESS`.
    public static let inProgress = Self(rawValue: 46)
    /// The server failed recently and is skipped until its retry timeout has passed.
    ///
    /// The corresponding C value is `MEMCACHED_SERVER_TEMPORARILY_DISABLED`.
    public static let serverTemporarilyDisabled = Self(rawValue: 47)
    /// The server ran out of memory for the item.
    ///
    /// The corresponding C value is `MEMCACHED_SERVER_MEMORY_ALLOCATION_FAILURE`.
    public static let serverMemoryAllocationFailure = Self(rawValue: 48)

    // MARK: Client-side codes

    /// The key is empty. Keys hold 1 to 250 bytes.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let emptyKey = Self(rawValue: 10_001)
    /// The key (with its prefix) is longer than 250 bytes after UTF-8 encoding.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let keyTooLong = Self(rawValue: 10_002)
    /// The key holds a byte that memcached's text protocol cannot carry: a space, a control character (CR, LF, NUL, ...) or DEL.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let invalidKeyCharacters = Self(rawValue: 10_003)
    /// The encoded value is larger than ``MemcachedConfiguration/maximumValueLength``; it was not sent.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let valueTooLarge = Self(rawValue: 10_004)
    /// The stored bytes or flags cannot be decoded as the requested type.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let undecodableValue = Self(rawValue: 10_005)
    /// The value could not be encoded.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let unencodableValue = Self(rawValue: 10_006)
    /// A server string could not be parsed.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let invalidServerSpecification = Self(rawValue: 10_007)
    /// The configuration holds a value libmemcached cannot use.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let invalidConfiguration = Self(rawValue: 10_008)
    /// The connection was closed with ``MemcachedConnection/close()`` and cannot run commands.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let connectionClosed = Self(rawValue: 10_009)
    /// A server returned a key that was not asked for; the connection was reset.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let unexpectedKey = Self(rawValue: 10_010)
    /// A value flagged as zlib-compressed could not be decompressed.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let decompressionFailed = Self(rawValue: 10_011)
    /// No pooled connection became free within ``MemcachedClient/Options/connectionWaitTimeout``:
    /// every one of ``MemcachedClient/Options/maximumConnections`` was in use the whole time.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let poolTimeout = Self(rawValue: 10_012)
    /// The ``MemcachedClient`` was closed, with ``MemcachedClient/close()`` or at the end of
    /// ``MemcachedClient/run()``, and runs no more commands.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let poolClosed = Self(rawValue: 10_013)
    /// A command was started on a connection from code that runs in the middle of one of its reads:
    /// the closure of ``MemcachedConnection/getMulti(_:keyPrefix:forEachHit:)``, or a
    /// ``MemcachedValue`` or ``MemcachedObjectCoder`` decoding a value. Nothing was sent. Use
    /// another connection, or run the command after the read returns.
    ///
    /// This code is raised by the Swift layer before any C call; it has no libmemcached counterpart.
    public static let connectionInUse = Self(rawValue: 10_014)
    /// An `append` or `prepend` found the stored value compressed: the added bytes would end up
    /// outside the compressed data, where no read can return them. Nothing was written.
    ///
    /// This code is raised by the Swift layer; it has no libmemcached counterpart.
    public static let compressedValue = Self(rawValue: 10_015)
}

extension MemcachedError.Code {
    /// The Swift name and the C name of every code this library knows, by raw value.
    static let names: [Int: (swift: String, c: String?)] = [
        0: ("success", "MEMCACHED_SUCCESS"),
        1: ("failure", "MEMCACHED_FAILURE"),
        2: ("hostLookupFailure", "MEMCACHED_HOST_LOOKUP_FAILURE"),
        3: ("connectionFailure", "MEMCACHED_CONNECTION_FAILURE"),
        4: ("connectionBindFailure", "MEMCACHED_CONNECTION_BIND_FAILURE"),
        5: ("writeFailure", "MEMCACHED_WRITE_FAILURE"),
        6: ("readFailure", "MEMCACHED_READ_FAILURE"),
        7: ("unknownReadFailure", "MEMCACHED_UNKNOWN_READ_FAILURE"),
        8: ("protocolError", "MEMCACHED_PROTOCOL_ERROR"),
        9: ("clientError", "MEMCACHED_CLIENT_ERROR"),
        10: ("serverError", "MEMCACHED_SERVER_ERROR"),
        11: ("errorReply", "MEMCACHED_ERROR"),
        12: ("dataExists", "MEMCACHED_DATA_EXISTS"),
        13: ("dataDoesNotExist", "MEMCACHED_DATA_DOES_NOT_EXIST"),
        14: ("notStored", "MEMCACHED_NOTSTORED"),
        15: ("stored", "MEMCACHED_STORED"),
        16: ("notFound", "MEMCACHED_NOTFOUND"),
        17: ("memoryAllocationFailure", "MEMCACHED_MEMORY_ALLOCATION_FAILURE"),
        18: ("partialRead", "MEMCACHED_PARTIAL_READ"),
        19: ("someErrors", "MEMCACHED_SOME_ERRORS"),
        20: ("noServers", "MEMCACHED_NO_SERVERS"),
        21: ("end", "MEMCACHED_END"),
        22: ("deleted", "MEMCACHED_DELETED"),
        23: ("value", "MEMCACHED_VALUE"),
        24: ("stat", "MEMCACHED_STAT"),
        25: ("item", "MEMCACHED_ITEM"),
        26: ("systemError", "MEMCACHED_ERRNO"),
        27: ("failUnixSocket", "MEMCACHED_FAIL_UNIX_SOCKET"),
        28: ("notSupported", "MEMCACHED_NOT_SUPPORTED"),
        29: ("noKeyProvided", "MEMCACHED_NO_KEY_PROVIDED"),
        30: ("fetchNotFinished", "MEMCACHED_FETCH_NOTFINISHED"),
        31: ("timeout", "MEMCACHED_TIMEOUT"),
        32: ("buffered", "MEMCACHED_BUFFERED"),
        33: ("badKeyProvided", "MEMCACHED_BAD_KEY_PROVIDED"),
        34: ("invalidHostProtocol", "MEMCACHED_INVALID_HOST_PROTOCOL"),
        35: ("serverMarkedDead", "MEMCACHED_SERVER_MARKED_DEAD"),
        36: ("unknownStatKey", "MEMCACHED_UNKNOWN_STAT_KEY"),
        37: ("itemTooBig", "MEMCACHED_E2BIG"),
        38: ("invalidArguments", "MEMCACHED_INVALID_ARGUMENTS"),
        39: ("keyTooBig", "MEMCACHED_KEY_TOO_BIG"),
        40: ("authProblem", "MEMCACHED_AUTH_PROBLEM"),
        41: ("authFailure", "MEMCACHED_AUTH_FAILURE"),
        42: ("authContinue", "MEMCACHED_AUTH_CONTINUE"),
        43: ("parseError", "MEMCACHED_PARSE_ERROR"),
        44: ("parseUserError", "MEMCACHED_PARSE_USER_ERROR"),
        45: ("deprecated", "MEMCACHED_DEPRECATED"),
        46: ("inProgress", "MEMCACHED_IN_PROGRESS"),
        47: ("serverTemporarilyDisabled", "MEMCACHED_SERVER_TEMPORARILY_DISABLED"),
        48: ("serverMemoryAllocationFailure", "MEMCACHED_SERVER_MEMORY_ALLOCATION_FAILURE"),
        10_001: ("emptyKey", nil),
        10_002: ("keyTooLong", nil),
        10_003: ("invalidKeyCharacters", nil),
        10_004: ("valueTooLarge", nil),
        10_005: ("undecodableValue", nil),
        10_006: ("unencodableValue", nil),
        10_007: ("invalidServerSpecification", nil),
        10_008: ("invalidConfiguration", nil),
        10_009: ("connectionClosed", nil),
        10_010: ("unexpectedKey", nil),
        10_011: ("decompressionFailed", nil),
        10_012: ("poolTimeout", nil),
        10_013: ("poolClosed", nil),
        10_014: ("connectionInUse", nil),
        10_015: ("compressedValue", nil),
    ]
}
