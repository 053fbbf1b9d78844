import CLibMemcached
import Testing

@testable import Memcached

/// The C enumerators of `memcached_return_t`, in the order of
/// /usr/include/libmemcached-1.0/types/return.h (libmemcached 1.1.4), so index == raw value.
private let headerOrderCNames: [String] = [
    "MEMCACHED_SUCCESS",
    "MEMCACHED_FAILURE",
    "MEMCACHED_HOST_LOOKUP_FAILURE",
    "MEMCACHED_CONNECTION_FAILURE",
    "MEMCACHED_CONNECTION_BIND_FAILURE",
    "MEMCACHED_WRITE_FAILURE",
    "MEMCACHED_READ_FAILURE",
    "MEMCACHED_UNKNOWN_READ_FAILURE",
    "MEMCACHED_PROTOCOL_ERROR",
    "MEMCACHED_CLIENT_ERROR",
    "MEMCACHED_SERVER_ERROR",
    "MEMCACHED_ERROR",
    "MEMCACHED_DATA_EXISTS",
    "MEMCACHED_DATA_DOES_NOT_EXIST",
    "MEMCACHED_NOTSTORED",
    "MEMCACHED_STORED",
    "MEMCACHED_NOTFOUND",
    "MEMCACHED_MEMORY_ALLOCATION_FAILURE",
    "MEMCACHED_PARTIAL_READ",
    "MEMCACHED_SOME_ERRORS",
    "MEMCACHED_NO_SERVERS",
    "MEMCACHED_END",
    "MEMCACHED_DELETED",
    "MEMCACHED_VALUE",
    "MEMCACHED_STAT",
    "MEMCACHED_ITEM",
    "MEMCACHED_ERRNO",
    "MEMCACHED_FAIL_UNIX_SOCKET",
    "MEMCACHED_NOT_SUPPORTED",
    "MEMCACHED_NO_KEY_PROVIDED",
    "MEMCACHED_FETCH_NOTFINISHED",
    "MEMCACHED_TIMEOUT",
    "MEMCACHED_BUFFERED",
    "MEMCACHED_BAD_KEY_PROVIDED",
    "MEMCACHED_INVALID_HOST_PROTOCOL",
    "MEMCACHED_SERVER_MARKED_DEAD",
    "MEMCACHED_UNKNOWN_STAT_KEY",
    "MEMCACHED_E2BIG",
    "MEMCACHED_INVALID_ARGUMENTS",
    "MEMCACHED_KEY_TOO_BIG",
    "MEMCACHED_AUTH_PROBLEM",
    "MEMCACHED_AUTH_FAILURE",
    "MEMCACHED_AUTH_CONTINUE",
    "MEMCACHED_PARSE_ERROR",
    "MEMCACHED_PARSE_USER_ERROR",
    "MEMCACHED_DEPRECATED",
    "MEMCACHED_IN_PROGRESS",
    "MEMCACHED_SERVER_TEMPORARILY_DISABLED",
    "MEMCACHED_SERVER_MEMORY_ALLOCATION_FAILURE",
]

/// Every libmemcached code: the C constant (from the imported header), its C spelling, the Swift
/// constant and the Swift name that constant should print.
private struct LibmemcachedCase: Sendable, CustomTestStringConvertible {
    var c: memcached_return_t
    var cName: String
    var swift: MemcachedError.Code
    var swiftName: String

    init(_ c: memcached_return_t, _ cName: String, _ swift: MemcachedError.Code, _ swiftName: String) {
        self.c = c
        self.cName = cName
        self.swift = swift
        self.swiftName = swiftName
    }

    var testDescription: String { cName }
}

private let libmemcachedCases: [LibmemcachedCase] = [
    .init(MEMCACHED_SUCCESS, "MEMCACHED_SUCCESS", .success, "success"),
    .init(MEMCACHED_FAILURE, "MEMCACHED_FAILURE", .failure, "failure"),
    .init(MEMCACHED_HOST_LOOKUP_FAILURE, "MEMCACHED_HOST_LOOKUP_FAILURE", .hostLookupFailure, "hostLookupFailure"),
    .init(MEMCACHED_CONNECTION_FAILURE, "MEMCACHED_CONNECTION_FAILURE", .connectionFailure, "connectionFailure"),
    .init(
        MEMCACHED_CONNECTION_BIND_FAILURE,
        "MEMCACHED_CONNECTION_BIND_FAILURE",
        .connectionBindFailure,
        "connectionBindFailure"
    ),
    .init(MEMCACHED_WRITE_FAILURE, "MEMCACHED_WRITE_FAILURE", .writeFailure, "writeFailure"),
    .init(MEMCACHED_READ_FAILURE, "MEMCACHED_READ_FAILURE", .readFailure, "readFailure"),
    .init(MEMCACHED_UNKNOWN_READ_FAILURE, "MEMCACHED_UNKNOWN_READ_FAILURE", .unknownReadFailure, "unknownReadFailure"),
    .init(MEMCACHED_PROTOCOL_ERROR, "MEMCACHED_PROTOCOL_ERROR", .protocolError, "protocolError"),
    .init(MEMCACHED_CLIENT_ERROR, "MEMCACHED_CLIENT_ERROR", .clientError, "clientError"),
    .init(MEMCACHED_SERVER_ERROR, "MEMCACHED_SERVER_ERROR", .serverError, "serverError"),
    .init(MEMCACHED_ERROR, "MEMCACHED_ERROR", .errorReply, "errorReply"),
    .init(MEMCACHED_DATA_EXISTS, "MEMCACHED_DATA_EXISTS", .dataExists, "dataExists"),
    .init(MEMCACHED_DATA_DOES_NOT_EXIST, "MEMCACHED_DATA_DOES_NOT_EXIST", .dataDoesNotExist, "dataDoesNotExist"),
    .init(MEMCACHED_NOTSTORED, "MEMCACHED_NOTSTORED", .notStored, "notStored"),
    .init(MEMCACHED_STORED, "MEMCACHED_STORED", .stored, "stored"),
    .init(MEMCACHED_NOTFOUND, "MEMCACHED_NOTFOUND", .notFound, "notFound"),
    .init(
        MEMCACHED_MEMORY_ALLOCATION_FAILURE,
        "MEMCACHED_MEMORY_ALLOCATION_FAILURE",
        .memoryAllocationFailure,
        "memoryAllocationFailure"
    ),
    .init(MEMCACHED_PARTIAL_READ, "MEMCACHED_PARTIAL_READ", .partialRead, "partialRead"),
    .init(MEMCACHED_SOME_ERRORS, "MEMCACHED_SOME_ERRORS", .someErrors, "someErrors"),
    .init(MEMCACHED_NO_SERVERS, "MEMCACHED_NO_SERVERS", .noServers, "noServers"),
    .init(MEMCACHED_END, "MEMCACHED_END", .end, "end"),
    .init(MEMCACHED_DELETED, "MEMCACHED_DELETED", .deleted, "deleted"),
    .init(MEMCACHED_VALUE, "MEMCACHED_VALUE", .value, "value"),
    .init(MEMCACHED_STAT, "MEMCACHED_STAT", .stat, "stat"),
    .init(MEMCACHED_ITEM, "MEMCACHED_ITEM", .item, "item"),
    .init(MEMCACHED_ERRNO, "MEMCACHED_ERRNO", .systemError, "systemError"),
    .init(MEMCACHED_FAIL_UNIX_SOCKET, "MEMCACHED_FAIL_UNIX_SOCKET", .failUnixSocket, "failUnixSocket"),
    .init(MEMCACHED_NOT_SUPPORTED, "MEMCACHED_NOT_SUPPORTED", .notSupported, "notSupported"),
    .init(MEMCACHED_NO_KEY_PROVIDED, "MEMCACHED_NO_KEY_PROVIDED", .noKeyProvided, "noKeyProvided"),
    .init(MEMCACHED_FETCH_NOTFINISHED, "MEMCACHED_FETCH_NOTFINISHED", .fetchNotFinished, "fetchNotFinished"),
    .init(MEMCACHED_TIMEOUT, "MEMCACHED_TIMEOUT", .timeout, "timeout"),
    .init(MEMCACHED_BUFFERED, "MEMCACHED_BUFFERED", .buffered, "buffered"),
    .init(MEMCACHED_BAD_KEY_PROVIDED, "MEMCACHED_BAD_KEY_PROVIDED", .badKeyProvided, "badKeyProvided"),
    .init(
        MEMCACHED_INVALID_HOST_PROTOCOL,
        "MEMCACHED_INVALID_HOST_PROTOCOL",
        .invalidHostProtocol,
        "invalidHostProtocol"
    ),
    .init(MEMCACHED_SERVER_MARKED_DEAD, "MEMCACHED_SERVER_MARKED_DEAD", .serverMarkedDead, "serverMarkedDead"),
    .init(MEMCACHED_UNKNOWN_STAT_KEY, "MEMCACHED_UNKNOWN_STAT_KEY", .unknownStatKey, "unknownStatKey"),
    .init(MEMCACHED_E2BIG, "MEMCACHED_E2BIG", .itemTooBig, "itemTooBig"),
    .init(MEMCACHED_INVALID_ARGUMENTS, "MEMCACHED_INVALID_ARGUMENTS", .invalidArguments, "invalidArguments"),
    .init(MEMCACHED_KEY_TOO_BIG, "MEMCACHED_KEY_TOO_BIG", .keyTooBig, "keyTooBig"),
    .init(MEMCACHED_AUTH_PROBLEM, "MEMCACHED_AUTH_PROBLEM", .authProblem, "authProblem"),
    .init(MEMCACHED_AUTH_FAILURE, "MEMCACHED_AUTH_FAILURE", .authFailure, "authFailure"),
    .init(MEMCACHED_AUTH_CONTINUE, "MEMCACHED_AUTH_CONTINUE", .authContinue, "authContinue"),
    .init(MEMCACHED_PARSE_ERROR, "MEMCACHED_PARSE_ERROR", .parseError, "parseError"),
    .init(MEMCACHED_PARSE_USER_ERROR, "MEMCACHED_PARSE_USER_ERROR", .parseUserError, "parseUserError"),
    .init(MEMCACHED_DEPRECATED, "MEMCACHED_DEPRECATED", .deprecated, "deprecated"),
    .init(MEMCACHED_IN_PROGRESS, "MEMCACHED_IN_PROGRESS", .inProgress, "inProgress"),
    .init(
        MEMCACHED_SERVER_TEMPORARILY_DISABLED,
        "MEMCACHED_SERVER_TEMPORARILY_DISABLED",
        .serverTemporarilyDisabled,
        "serverTemporarilyDisabled"
    ),
    .init(
        MEMCACHED_SERVER_MEMORY_ALLOCATION_FAILURE,
        "MEMCACHED_SERVER_MEMORY_ALLOCATION_FAILURE",
        .serverMemoryAllocationFailure,
        "serverMemoryAllocationFailure"
    ),
]

/// The codes this library raises itself, with the names they should print.
private let clientSideCodes: [(code: MemcachedError.Code, name: String)] = [
    (.emptyKey, "emptyKey"),
    (.keyTooLong, "keyTooLong"),
    (.invalidKeyCharacters, "invalidKeyCharacters"),
    (.valueTooLarge, "valueTooLarge"),
    (.undecodableValue, "undecodableValue"),
    (.unencodableValue, "unencodableValue"),
    (.invalidServerSpecification, "invalidServerSpecification"),
    (.invalidConfiguration, "invalidConfiguration"),
    (.connectionClosed, "connectionClosed"),
    (.unexpectedKey, "unexpectedKey"),
    (.decompressionFailed, "decompressionFailed"),
    (.poolTimeout, "poolTimeout"),
    (.poolClosed, "poolClosed"),
    (.connectionInUse, "connectionInUse"),
    (.compressedValue, "compressedValue"),
]

private let maximumReturn = Int(MEMCACHED_MAXIMUM_RETURN.rawValue)

private struct NotAMemcachedError: Error {}

@Suite("Error codes", .offCooperativePool)
struct ErrorCodeTests {
    @Test("The header list and the case table cover every memcached_return_t")
    func tablesCoverTheHeader() {
        // If libmemcached grows a code, both the header list and the Swift table must grow with it.
        #expect(maximumReturn == 49)
        #expect(headerOrderCNames.count == maximumReturn)
        #expect(libmemcachedCases.count == maximumReturn)
        #expect(Set(libmemcachedCases.map { Int($0.c.rawValue) }) == Set(0..<maximumReturn))
        // The alias in the header points at MEMCACHED_ERROR.
        #expect(MEMCACHED_CONNECTION_SOCKET_CREATE_FAILURE.rawValue == MEMCACHED_ERROR.rawValue)
    }

    @Test(
        "Every raw value below MEMCACHED_MAXIMUM_RETURN has a Swift name and the header's C name",
        arguments: 0..<maximumReturn
    )
    func everyRawValueIsNamed(raw: Int) throws {
        let code = MemcachedError.Code(rawValue: raw)
        let entry = try #require(MemcachedError.Code.names[raw], "raw value \(raw) has no entry")
        #expect(code.description != "code(\(raw))")
        #expect(code.description == entry.swift)
        #expect(!entry.swift.isEmpty)
        #expect(entry.c == headerOrderCNames[raw])
        #expect(code.isLibmemcachedCode)
    }

    @Test("Each Swift constant equals its C enumerator", arguments: libmemcachedCases)
    fileprivate func swiftConstantMatchesC(_ entry: LibmemcachedCase) throws {
        #expect(entry.swift.rawValue == Int(entry.c.rawValue))
        #expect(entry.swift.description == entry.swiftName)
        let names = try #require(MemcachedError.Code.names[entry.swift.rawValue])
        #expect(names.swift == entry.swiftName)
        #expect(names.c == entry.cName)
        #expect(headerOrderCNames[Int(entry.c.rawValue)] == entry.cName)
    }

    @Test("Well-known codes carry libmemcached's values")
    func wellKnownCodes() {
        #expect(MemcachedError.Code.success.rawValue == Int(MEMCACHED_SUCCESS.rawValue))
        #expect(MemcachedError.Code.notFound.rawValue == Int(MEMCACHED_NOTFOUND.rawValue))
        #expect(MemcachedError.Code.timeout.rawValue == Int(MEMCACHED_TIMEOUT.rawValue))
        #expect(MemcachedError.Code.itemTooBig.rawValue == Int(MEMCACHED_E2BIG.rawValue))
        #expect(MemcachedError.Code.errorReply.rawValue == Int(MEMCACHED_ERROR.rawValue))
        #expect(MemcachedError.Code.errorReply.rawValue == Int(MEMCACHED_CONNECTION_SOCKET_CREATE_FAILURE.rawValue))
        #expect(
            MemcachedError.Code.serverTemporarilyDisabled.rawValue
                == Int(MEMCACHED_SERVER_TEMPORARILY_DISABLED.rawValue)
        )
        #expect(MemcachedError.Code.authFailure.rawValue == Int(MEMCACHED_AUTH_FAILURE.rawValue))
        #expect(MemcachedError.Code.systemError.rawValue == Int(MEMCACHED_ERRNO.rawValue))
        #expect(MemcachedError.Code.dataExists.rawValue == Int(MEMCACHED_DATA_EXISTS.rawValue))
        #expect(MemcachedError.Code.notStored.rawValue == Int(MEMCACHED_NOTSTORED.rawValue))
    }

    @Test("explanation is memcached_strerror's text", arguments: 0..<maximumReturn)
    func explanationIsStrerror(raw: Int) throws {
        let rc = memcached_return_t(UInt32(raw))
        let text = try #require(memcached_strerror(nil, rc))
        let expected = String(cString: text)
        #expect(!expected.isEmpty)
        #expect(MemcachedError.Code(rawValue: raw).explanation == expected)
    }

    @Test("Codes outside libmemcached's range are not libmemcached codes")
    func rangeBoundaries() {
        #expect(!MemcachedError.Code(rawValue: maximumReturn).isLibmemcachedCode)
        #expect(!MemcachedError.Code(rawValue: -1).isLibmemcachedCode)
        #expect(MemcachedError.Code(rawValue: maximumReturn - 1).isLibmemcachedCode)
        // An unknown code falls back to its number.
        #expect(MemcachedError.Code(rawValue: 9_999).description == "code(9999)")
        #expect(MemcachedError.Code(rawValue: -7).description == "code(-7)")
    }

    @Test("Client-side codes are distinct, named, and not libmemcached's")
    func clientSideCodesAreDistinct() throws {
        let raws = clientSideCodes.map(\.code.rawValue)
        #expect(Set(raws).count == clientSideCodes.count)
        let names = clientSideCodes.map(\.code.description)
        #expect(Set(names).count == clientSideCodes.count)
        for (code, name) in clientSideCodes {
            #expect(code.rawValue >= 10_000, "\(name)")
            #expect(!code.isLibmemcachedCode, "\(name)")
            #expect(code.description == name)
            let entry = try #require(MemcachedError.Code.names[code.rawValue])
            #expect(entry.c == nil, "\(name) must have no C name")
            #expect(code.explanation.contains(name))
        }
        // The table holds exactly these client-side entries, and no Swift name is used twice.
        let tableClientRaws = MemcachedError.Code.names.keys.filter { $0 >= 10_000 }
        #expect(Set(tableClientRaws) == Set(raws))
        let allSwiftNames = MemcachedError.Code.names.values.map(\.swift)
        #expect(Set(allSwiftNames).count == allSwiftNames.count)
        #expect(allSwiftNames.count == maximumReturn + clientSideCodes.count)
    }

    @Test("A catch clause matches a code with ~=")
    func catchMatchesCode() {
        func fail(with code: MemcachedError.Code) throws {
            throw MemcachedError(code: code, message: "boom")
        }
        var matched = ""
        do {
            try fail(with: .timeout)
        } catch MemcachedError.Code.notFound {
            matched = "notFound"
        } catch MemcachedError.Code.timeout {
            matched = "timeout"
        } catch {
            matched = "other"
        }
        #expect(matched == "timeout")

        do {
            try fail(with: .itemTooBig)
        } catch MemcachedError.Code.timeout {
            matched = "timeout"
        } catch {
            matched = "fallthrough"
        }
        #expect(matched == "fallthrough")
    }

    @Test("~= rejects other codes and other error types")
    func patternRejectsMismatch() {
        let error: any Error = MemcachedError(code: .timeout, message: "slow")
        #expect(MemcachedError.Code.timeout ~= error)
        #expect(!(MemcachedError.Code.notFound ~= error))
        #expect(!(MemcachedError.Code.timeout ~= NotAMemcachedError()))
    }

    @Test("description names the code and message but never the key")
    func descriptionOmitsKey() {
        let key = "session:8f14e45fceea167a5a36dedd4bea2543"
        let error = MemcachedError(
            code: .itemTooBig,
            message: "object too large for cache",
            key: key,
            server: "127.0.0.1:11211"
        )
        #expect(!error.description.contains(key))
        #expect(!error.description.contains("8f14e45f"))
        #expect(error.description.contains("itemTooBig"))
        #expect(error.description.contains("object too large for cache"))
        #expect(error.description.contains("127.0.0.1:11211"))
        #expect(error.key == key)
        // The key also stays out of string interpolation of the error.
        #expect(!"\(error)".contains(key))
    }
}
