import Foundation
import MemcachedTestSupport
import Testing

@testable import Memcached

/// A server string and the server it should parse to, written out by hand.
private struct ParseCase: Sendable, CustomTestStringConvertible {
    var text: String
    var expected: MemcachedServer
    var testDescription: String { "\"\(text)\"" }

    init(_ text: String, _ expected: MemcachedServer) {
        self.text = text
        self.expected = expected
    }
}

private let validSpecifications: [ParseCase] = [
    ParseCase("cache1", MemcachedServer(host: "cache1", port: 11211, weight: 1)),
    ParseCase("127.0.0.1:11212", MemcachedServer(host: "127.0.0.1", port: 11212, weight: 1)),
    ParseCase("[::1]:11211", MemcachedServer(host: "::1", port: 11211, weight: 1)),
    ParseCase("[::1]", MemcachedServer(host: "::1", port: 11211, weight: 1)),
    ParseCase("::1", MemcachedServer(host: "::1", port: 11211, weight: 1)),
    ParseCase("inet:host:1", MemcachedServer(host: "host", port: 1, weight: 1)),
    ParseCase("inet6:[::1]:2", MemcachedServer(host: "::1", port: 2, weight: 1)),
    ParseCase("unix:/tmp/x.sock", MemcachedServer(unixSocketPath: "/tmp/x.sock", weight: 1)),
    ParseCase("/tmp/y.sock", MemcachedServer(unixSocketPath: "/tmp/y.sock", weight: 1)),
    ParseCase("host:11211:3", MemcachedServer(host: "host", port: 11211, weight: 3)),
    ParseCase("host:11211 2", MemcachedServer(host: "host", port: 11211, weight: 2)),
    ParseCase("  cache2:65535  ", MemcachedServer(host: "cache2", port: 65535, weight: 1)),
    ParseCase("[2001:db8::7]:11300", MemcachedServer(host: "2001:db8::7", port: 11300, weight: 1)),
    ParseCase("fe80::1", MemcachedServer(host: "fe80::1", port: 11211, weight: 1)),
    ParseCase("2001:db8::7", MemcachedServer(host: "2001:db8::7", port: 11211, weight: 1)),
    ParseCase("unix:/run/memcached.sock 4", MemcachedServer(unixSocketPath: "/run/memcached.sock", weight: 4)),
]

private let invalidSpecifications = [
    "", "   ", "host:0", "host:70000", "host:abc", "[::1", "host:1:0", "host:1:1001",
    "host:11211 0", "host:11211 x", "unix:", ":11211", "[::1]x",
    // Issue 12 item 7: two weights, colons that are no IPv6 address, bytes no host name holds.
    "host:11211:2 3", "a:b:c:d", "::1:x", "[]:11211", "[ho st]:1", "ho\u{0}st:11211", "[a:b]:1",
]

/// The error code a throwing call ends with, or nil when it returns.
private func failureCode(_ body: () throws -> Void) -> MemcachedError.Code? {
    do {
        try body()
        return nil
    } catch let error as MemcachedError {
        return error.code
    } catch {
        Issue.record("unexpected error type: \(error)")
        return .failure
    }
}

@Suite("Configuration", .offCooperativePool)
struct ConfigurationTests {
    // MARK: Servers

    @Test("Server strings parse", arguments: validSpecifications)
    fileprivate func parsesServer(_ parseCase: ParseCase) throws {
        let server = try MemcachedServer(parsing: parseCase.text)
        #expect(server == parseCase.expected)
    }

    @Test("description parses back to the same server", arguments: validSpecifications)
    fileprivate func descriptionRoundTrips(_ parseCase: ParseCase) throws {
        let server = parseCase.expected
        let reparsed = try MemcachedServer(parsing: server.description)
        #expect(reparsed == server, "\(server.description)")
    }

    @Test("description writes the documented forms")
    func descriptionForms() {
        #expect(MemcachedServer(host: "cache1").description == "cache1:11211")
        #expect(MemcachedServer(host: "::1", port: 11212).description == "[::1]:11212")
        #expect(MemcachedServer(unixSocketPath: "/tmp/x.sock").description == "unix:/tmp/x.sock")
        #expect(MemcachedServer(host: "h", port: 1, weight: 3).description == "h:1 3")
    }

    @Test("Bad server strings are refused", arguments: invalidSpecifications)
    func refusesServer(text: String) {
        let code = failureCode { _ = try MemcachedServer(parsing: text) }
        #expect(code == .invalidServerSpecification)
    }

    @Test(
        "Servers built in code are checked when a connection is created",
        arguments: [
            MemcachedServer(host: ""), MemcachedServer(host: "ho\u{0}st"), MemcachedServer(host: "a b"),
            MemcachedServer(host: "a:b:c"), MemcachedServer(host: "h", port: 0), MemcachedServer(unixSocketPath: ""),
            MemcachedServer(unixSocketPath: "/tmp/" + String(repeating: "s", count: 120)),
        ]
    )
    func refusesServerBuiltInCode(server: MemcachedServer) {
        let code = failureCode { _ = try MemcachedConnection(configuration: MemcachedConfiguration(servers: [server])) }
        #expect(code == .invalidServerSpecification)
    }

    @Test("A configuration parses its server strings in order")
    func configurationFromStrings() throws {
        let configuration = try MemcachedConfiguration(servers: ["a:1", "b:2:5", "unix:/s"])
        #expect(
            configuration.servers == [
                MemcachedServer(host: "a", port: 1),
                MemcachedServer(host: "b", port: 2, weight: 5),
                MemcachedServer(unixSocketPath: "/s"),
            ]
        )
        #expect(failureCode { _ = try MemcachedConfiguration(servers: ["a:1", "b:0"]) } == .invalidServerSpecification)
    }

    // MARK: Expiration

    @Test("Relative expirations up to 30 days are sent as they are")
    func relativeExpirations() throws {
        let now: () -> Int64 = {
            Issue.record("the clock must not be read for short relative expirations")
            return 0
        }
        #expect(try MemcachedExpiration.never.wireValue(now: now) == 0)
        #expect(try MemcachedExpiration.seconds(60).wireValue(now: now) == 60)
        #expect(try MemcachedExpiration.seconds(1).wireValue(now: now) == 1)
        #expect(
            try MemcachedExpiration.seconds(0).wireValue(now: now) == MemcachedExpiration.alreadyExpired,
            "already expired in both protocols"
        )
        #expect(
            try MemcachedExpiration.seconds(-5).wireValue(now: now) == MemcachedExpiration.alreadyExpired,
            "already expired in both protocols"
        )
        #expect(try MemcachedExpiration.after(.milliseconds(1500)).wireValue(now: now) == 2)
        #expect(try MemcachedExpiration.after(.seconds(2)).wireValue(now: now) == 2)
        #expect(try MemcachedExpiration.after(.nanoseconds(1)).wireValue(now: now) == 1)
        #expect(
            try MemcachedExpiration.after(.zero).wireValue(now: now) == MemcachedExpiration.alreadyExpired,
            "already expired in both protocols"
        )
        #expect(
            try MemcachedExpiration.after(.milliseconds(-500)).wireValue(now: now)
                == MemcachedExpiration.alreadyExpired,
            "already expired in both protocols"
        )
        let thirtyDays = 30 * 24 * 60 * 60
        #expect(thirtyDays == 2_592_000)
        #expect(try MemcachedExpiration.seconds(thirtyDays).wireValue(now: now) == Int64(thirtyDays))
    }

    @Test("Relative expirations over 30 days become absolute times")
    func longRelativeExpirations() throws {
        let fixedNow: Int64 = 1_700_000_000
        #expect(try MemcachedExpiration.seconds(2_592_001).wireValue(now: { fixedNow }) == fixedNow + 2_592_001)
        #expect(
            try MemcachedExpiration.after(.seconds(2_592_000) + .milliseconds(1)).wireValue(now: { fixedNow })
                == fixedNow
                + 2_592_001
        )
        #expect(try MemcachedExpiration.seconds(365 * 86_400).wireValue(now: { fixedNow }) == fixedNow + 365 * 86_400)
        // With the real clock, the value lands near now.
        let real = try MemcachedExpiration.seconds(40 * 86_400).wireValue()
        let expected = Int64(Date().timeIntervalSince1970) + 40 * 86_400
        #expect(abs(real - expected) <= 5)
    }

    @Test("Absolute expirations are sent as Unix times")
    func absoluteExpirations() throws {
        let now: () -> Int64 = { 1 }
        #expect(
            try MemcachedExpiration.at(Date(timeIntervalSince1970: 2_000_000_000)).wireValue(now: now) == 2_000_000_000
        )
        // A past time still means "expired", never 0 ("never expires").
        #expect(try MemcachedExpiration.at(Date(timeIntervalSince1970: 0)).wireValue(now: now) != 0)
        #expect(try MemcachedExpiration.at(Date(timeIntervalSince1970: -100)).wireValue(now: now) != 0)
    }

    @Test("Expirations memcached cannot hold throw instead of trapping or storing an item that is gone at once")
    func unrepresentableExpirations() throws {
        let fixedNow: Int64 = 1_700_000_000
        let unrepresentable: [MemcachedExpiration] = [
            .seconds(Int.max), .seconds(100 * 365 * 86_400), .after(.seconds(Int64.max)),
            .after(.seconds(Int64.max) + .nanoseconds(1)), .at(.distantFuture),
            .at(Date(timeIntervalSince1970: 1e20)), .at(Date(timeIntervalSince1970: .nan)),
            .at(Date(timeIntervalSince1970: .infinity)), .at(Date(timeIntervalSince1970: 2_147_483_648)),
        ]
        for expiration in unrepresentable {
            let error = try #require(throws: MemcachedError.self, "\(expiration)") {
                try expiration.wireValue(now: { fixedNow })
            }
            #expect(error.code == .invalidArguments)
        }
        // The last second memcached can hold, and dates from the first 30 days of 1970 or before it.
        #expect(try MemcachedExpiration.at(Date(timeIntervalSince1970: 2_147_483_647)).wireValue() == 2_147_483_647)
        for past in [-1e20, -.infinity, 0, 1_000_000, 2_592_000] as [Double] {
            let expiration = MemcachedExpiration.at(Date(timeIntervalSince1970: past))
            if past.isFinite {
                #expect(try expiration.wireValue() == MemcachedExpiration.alreadyExpired, "\(past)")
            } else {
                #expect(throws: MemcachedError.self) { try expiration.wireValue() }
            }
        }
    }

    @Test(
        "Zero, negative and past expirations are expired and far ones are refused, in both protocols",
        arguments: [
            MemcachedConfiguration.WireProtocol.ascii, .binary,
        ]
    )
    func expirationsOnTheServer(wireProtocol: MemcachedConfiguration.WireProtocol) throws {
        try withMemcached { cluster in
            let memc = try connect(cluster, wireProtocol: wireProtocol)
            let expired: [MemcachedExpiration] = [
                .seconds(0), .seconds(-1), .after(.zero), .after(.seconds(-5)),
                .at(Date(timeIntervalSince1970: 1_000_000)), .at(Date(timeIntervalSinceNow: -3_600)),
            ]
            for (index, expiration) in expired.enumerated() {
                #expect(try memc.set("expired-\(index)", "v", expiration: expiration))
                #expect(try memc.get("expired-\(index)", as: String.self) == nil, "\(wireProtocol) \(expiration)")
            }
            for expiration in [MemcachedExpiration.at(.distantFuture), .seconds(100 * 365 * 86_400)] {
                let error = try #require(throws: MemcachedError.self) {
                    try memc.set("far", "v", expiration: expiration)
                }
                #expect(error.code == .invalidArguments)
                #expect(try memc.get("far", as: String.self) == nil, "nothing was sent")
            }
            #expect(try memc.set("kept", "v", expiration: .seconds(40 * 86_400)))
            #expect(try memc.get("kept", as: String.self) == "v")
            #expect(try memc.set("kept-at", "v", expiration: .at(Date(timeIntervalSinceNow: 3_600))))
            #expect(try memc.get("kept-at", as: String.self) == "v")
        }
    }

    // MARK: Duration conversions

    @Test("Millisecond behaviours round up and refuse non-positive durations")
    func millisecondConversion() throws {
        for huge in [Duration.seconds(Int64.max), .seconds(Int64(Int32.max)), .seconds(2_147_484)] {
            #expect(throws: MemcachedError.self, "\(huge)") { try Handle.milliseconds(huge, "t") }
        }
        #expect(try Handle.milliseconds(.seconds(2_147_483), "t") == 2_147_483_000)
        var configuration = try MemcachedConfiguration(servers: ["127.0.0.1:11211"])
        configuration.timeout = .seconds(Int64.max)
        let error = try #require(throws: MemcachedError.self) { try MemcachedConnection(configuration: configuration) }
        #expect(error.code == .invalidConfiguration)
        #expect(try Handle.milliseconds(.microseconds(1), "t") == 1)
        #expect(try Handle.milliseconds(.nanoseconds(1), "t") == 1)
        #expect(try Handle.milliseconds(.milliseconds(1), "t") == 1)
        #expect(try Handle.milliseconds(.microseconds(1_001), "t") == 2)
        #expect(try Handle.milliseconds(.milliseconds(1500), "t") == 1_500)
        #expect(try Handle.milliseconds(.seconds(3), "t") == 3_000)
        #expect(try Handle.milliseconds(.seconds(2) + .nanoseconds(1), "t") == 2_001)
        #expect(failureCode { _ = try Handle.milliseconds(.zero, "t") } == .invalidConfiguration)
        #expect(failureCode { _ = try Handle.milliseconds(.milliseconds(-1), "t") } == .invalidConfiguration)
        #expect(failureCode { _ = try Handle.milliseconds(.nanoseconds(-1), "t") } == .invalidConfiguration)
        #expect(failureCode { _ = try Handle.milliseconds(.seconds(Int64(Int32.max)), "t") } == .invalidConfiguration)
    }

    @Test("Second behaviours round up")
    func secondConversion() throws {
        #expect(try Handle.seconds(.zero, "t") == 0)
        #expect(try Handle.seconds(.nanoseconds(1), "t") == 1)
        #expect(try Handle.seconds(.milliseconds(1500), "t") == 2)
        #expect(try Handle.seconds(.seconds(2), "t") == 2)
        #expect(try Handle.seconds(.seconds(30), "t") == 30)
        #expect(failureCode { _ = try Handle.seconds(.seconds(-1), "t") } == .invalidConfiguration)
        #expect(failureCode { _ = try Handle.seconds(.milliseconds(-1), "t") } == .invalidConfiguration)
    }

    // MARK: Connections (no server is contacted)

    @Test("A valid configuration creates a connection without contacting a server")
    func validConfiguration() throws {
        var configuration = MemcachedConfiguration(servers: [
            MemcachedServer(host: "127.0.0.1", port: 1, weight: 2),
            MemcachedServer(unixSocketPath: "/nonexistent/memcached.sock"),
        ])
        configuration.timeout = .microseconds(10)
        configuration.retryTimeout = .zero
        let connection = try MemcachedConnection(configuration: configuration)
        #expect(connection.configuration.servers.count == 2)
        connection.close()
    }

    @Test("serverFailureLimit 0 is refused")
    func zeroFailureLimit() {
        var configuration = MemcachedConfiguration(servers: [MemcachedServer(host: "127.0.0.1")])
        configuration.serverFailureLimit = 0
        #expect(failureCode { _ = try MemcachedConnection(configuration: configuration) } == .invalidConfiguration)
    }

    @Test("Non-positive timeouts are refused")
    func badTimeouts() {
        var configuration = MemcachedConfiguration(servers: [MemcachedServer(host: "127.0.0.1")])
        configuration.timeout = .zero
        #expect(failureCode { _ = try MemcachedConnection(configuration: configuration) } == .invalidConfiguration)
        configuration.timeout = .seconds(1)
        configuration.connectTimeout = .milliseconds(-1)
        #expect(failureCode { _ = try MemcachedConnection(configuration: configuration) } == .invalidConfiguration)
        configuration.connectTimeout = .seconds(1)
        configuration.retryTimeout = .seconds(-1)
        #expect(failureCode { _ = try MemcachedConnection(configuration: configuration) } == .invalidConfiguration)
    }

    @Test(
        "Servers built with port 0 or weight 0 are refused",
        arguments: [
            MemcachedServer(host: "127.0.0.1", port: 0),
            MemcachedServer(host: "127.0.0.1", port: 65_536),
            MemcachedServer(host: "127.0.0.1", port: -1),
            MemcachedServer(host: "127.0.0.1", port: 11211, weight: 0),
            MemcachedServer(unixSocketPath: "/tmp/m.sock", weight: 0),
        ]
    )
    func badMemberwiseServers(server: MemcachedServer) {
        let configuration = MemcachedConfiguration(servers: [MemcachedServer(host: "127.0.0.1"), server])
        #expect(
            failureCode { _ = try MemcachedConnection(configuration: configuration) } == .invalidServerSpecification
        )
    }
}
