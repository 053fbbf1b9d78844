import Foundation

/// Credentials and configuration for a memcached that requires SASL authentication.
///
/// Debian's memcached is built with Cyrus SASL (not with a plain password file), so the fixture
/// creates a Cyrus `sasldb` with `saslpasswd2` (package `sasl2-bin`) and a `memcached.conf` that
/// offers the PLAIN mechanism, and points the server at them with `SASL_CONF_PATH`.
public struct SASLServerSetup: Sendable {
    /// The directory holding `sasldb2` and `memcached.conf`.
    public let directory: String
    /// The extra arguments for memcached: `-S` (require SASL).
    public var arguments: [String] { ["-S"] }
    /// The environment for memcached: `SASL_CONF_PATH` pointing at ``directory``.
    public var environment: [String: String] { ["SASL_CONF_PATH": directory] }

    /// Creates a password database with one user.
    ///
    /// - Parameters:
    ///   - username: The user to create.
    ///   - password: The user's password.
    /// - Throws: ``MemcachedFixtureError/invalidArgument(_:)`` when `saslpasswd2` is missing
    ///   (install `sasl2-bin`) or fails.
    public init(username: String, password: String) throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("memcached-sasl-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let database = directory + "/sasldb2"
        let candidates = ["/usr/sbin/saslpasswd2", "/usr/bin/saslpasswd2", "/usr/local/sbin/saslpasswd2"]
        guard let tool = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw MemcachedFixtureError.invalidArgument("saslpasswd2 is not installed: apt-get install sasl2-bin")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = ["-p", "-a", "memcached", "-c", "-f", database, username]
        let input = Pipe()
        process.standardInput = input
        try process.run()
        input.fileHandleForWriting.write(Data(password.utf8))
        try input.fileHandleForWriting.close()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw MemcachedFixtureError.invalidArgument("saslpasswd2 failed with status \(process.terminationStatus)")
        }
        let configuration = "mech_list: plain\nsasldb_path: \(database)\n"
        try configuration.write(toFile: directory + "/memcached.conf", atomically: true, encoding: .utf8)
        self.directory = directory
    }

    /// Removes the password database and configuration.
    public func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}
