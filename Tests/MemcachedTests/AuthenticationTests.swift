import Memcached
import MemcachedTestSupport
import Testing

/// SASL authentication against a memcached started with `-S` and a real Cyrus password database.
@Suite("SASL authentication", .offCooperativePool)
struct AuthenticationTests {
    @Test("right credentials work, wrong ones give a typed authentication error")
    func credentials() throws {
        let setup = try SASLServerSetup(username: "swift", password: "s3cret")
        defer { setup.remove() }
        try withMemcached(arguments: setup.arguments, environment: setup.environment) { cluster in
            let good = try connect(cluster, wireProtocol: .binary) {
                $0.credentials = MemcachedCredentials(username: "swift", password: "s3cret")
            }
            #expect(try good.set("k", "v"))
            #expect(try good.get("k", as: String.self) == "v")

            let wrong = try connect(cluster, wireProtocol: .binary) {
                $0.credentials = MemcachedCredentials(username: "swift", password: "wrong")
            }
            do {
                _ = try wrong.get("k", as: String.self)
                Issue.record("a wrong password must be refused")
            } catch let error as MemcachedError {
                #expect(error.code == .authFailure, "got \(error.code): \(error.message)")
            }

            // Without credentials, writes are refused. (libmemcached reports the server's auth
            // error on a quiet multi-get as a miss, with no error recorded; see SECURITY.md.)
            let anonymous = try connect(cluster, wireProtocol: .binary)
            do {
                try anonymous.set("k", "stolen")
                Issue.record("an unauthenticated write must be refused")
            } catch let error as MemcachedError {
                #expect(error.code == .authFailure, "got \(error.code)")
            }
            #expect(try good.get("k", as: String.self) == "v")
        }
    }

    @Test("credentials need the binary protocol and never show their password")
    func configuration() throws {
        var configuration = try MemcachedConfiguration(servers: ["127.0.0.1:1"])
        configuration.credentials = MemcachedCredentials(username: "u", password: "hunter2")
        do {
            _ = try MemcachedConnection(configuration: configuration)
            Issue.record("SASL over ASCII must be refused")
        } catch let error as MemcachedError {
            #expect(error.code == .invalidConfiguration)
        }
        #expect(!String(describing: configuration.credentials!).contains("hunter2"))
        configuration.wireProtocol = .binary
        _ = try MemcachedConnection(configuration: configuration)
    }
}
