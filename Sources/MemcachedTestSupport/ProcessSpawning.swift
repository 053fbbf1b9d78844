import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Directories searched for `memcached` after `PATH`, because `sbin` and
/// `/usr/local/bin` are often missing from a test runner's `PATH`.
let fallbackMemcachedDirectories = ["/usr/bin", "/usr/sbin", "/usr/local/bin"]

/// Finds an executable `memcached`.
///
/// - Throws: ``MemcachedFixtureError/memcachedNotInstalled(searchedDirectories:)``.
func locateMemcachedExecutable() throws -> String {
    guard let path = locateExecutable(named: "memcached") else {
        throw MemcachedFixtureError.memcachedNotInstalled(searchedDirectories: fallbackMemcachedDirectories)
    }
    return path
}

/// Finds an executable called `name` on `PATH` or in ``fallbackMemcachedDirectories``.
///
/// - Returns: Its path, or `nil` when there is none.
func locateExecutable(named name: String) -> String? {
    let pathDirectories = (ProcessInfo.processInfo.environment["PATH"] ?? "")
        .split(separator: ":", omittingEmptySubsequences: true)
        .map(String.init)
    for directory in pathDirectories + fallbackMemcachedDirectories {
        let candidate = directory + "/" + name
        if access(candidate, X_OK) == 0 {
            return candidate
        }
    }
    return nil
}

/// Creates a private scratch directory under the system temporary directory.
func makeScratchDirectory(prefix: String) throws -> String {
    var temporaryDirectory = NSTemporaryDirectory()
    while temporaryDirectory.count > 1 && temporaryDirectory.hasSuffix("/") {
        temporaryDirectory.removeLast()
    }
    var template = Array("\(temporaryDirectory)/\(prefix).XXXXXX".utf8CString)
    let createdPath = template.withUnsafeMutableBufferPointer { buffer in
        mkdtemp(buffer.baseAddress!).map { String(cString: $0) }
    }
    guard let createdPath else {
        throw MemcachedFixtureError.temporaryDirectoryUnavailable(path: temporaryDirectory, errno: errno)
    }
    return createdPath
}

/// Starts `executable` with `posix_spawn`.
///
/// The child gets `standardInput` (by default `/dev/null`) as stdin, both stdout and stderr appended to
/// `outputPath`, none of our other descriptors (where the C library supports
/// closing them), an empty signal mask and default signal dispositions — the
/// test runner may block or ignore signals, and a server that cannot receive
/// `SIGTERM` could not be stopped gracefully.
///
/// - Returns: The child's pid.
func spawnProcess(
    executable: String,
    arguments: [String],
    environment: [String: String],
    outputPath: String,
    standardInput: Int32? = nil
) throws -> pid_t {
    #if canImport(Glibc)
    var fileActions = posix_spawn_file_actions_t()
    var attributes = posix_spawnattr_t()
    #else
    var fileActions: posix_spawn_file_actions_t?
    var attributes: posix_spawnattr_t?
    #endif
    posix_spawn_file_actions_init(&fileActions)
    defer { posix_spawn_file_actions_destroy(&fileActions) }
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }

    if let standardInput {
        posix_spawn_file_actions_adddup2(&fileActions, standardInput, STDIN_FILENO)
    } else {
        posix_spawn_file_actions_addopen(&fileActions, STDIN_FILENO, "/dev/null", O_RDONLY, 0)
    }
    posix_spawn_file_actions_addopen(
        &fileActions,
        STDOUT_FILENO,
        outputPath,
        O_WRONLY | O_CREAT | O_APPEND,
        0o600
    )
    posix_spawn_file_actions_adddup2(&fileActions, STDOUT_FILENO, STDERR_FILENO)
    addCloseFromAction(&fileActions, lowestDescriptor: STDERR_FILENO + 1)

    var emptyMask = sigset_t()
    sigemptyset(&emptyMask)
    posix_spawnattr_setsigmask(&attributes, &emptyMask)
    var defaultSignals = sigset_t()
    sigemptyset(&defaultSignals)
    for signal in [SIGHUP, SIGINT, SIGQUIT, SIGPIPE, SIGTERM, SIGUSR1, SIGUSR2, SIGCHLD] {
        sigaddset(&defaultSignals, signal)
    }
    posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

    let argumentVector = CStringArray([executable] + arguments)
    let environmentVector = CStringArray(environment.map { "\($0.key)=\($0.value)" })
    var pid: pid_t = 0
    let result = withExtendedLifetime((argumentVector, environmentVector)) {
        posix_spawn(
            &pid,
            executable,
            &fileActions,
            &attributes,
            argumentVector.pointers,
            environmentVector.pointers
        )
    }
    guard result == 0 else {
        throw MemcachedFixtureError.spawnFailed(executable: executable, errno: result)
    }
    return pid
}

#if canImport(Glibc)
private typealias AddCloseFromFunction =
    @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32

/// Asks the child to close every descriptor from `lowestDescriptor` up.
///
/// Test processes open sockets without close-on-exec (client libraries,
/// other fixtures); a server inheriting a client socket keeps that connection
/// alive after the test closed it. glibc 2.34 and later have
/// `posix_spawn_file_actions_addclosefrom_np`, which Swift's Glibc module does
/// not expose, so it is looked up at run time.
private func addCloseFromAction(_ fileActions: inout posix_spawn_file_actions_t, lowestDescriptor: Int32) {
    guard let handle = dlopen(nil, RTLD_NOW),
        let symbol = dlsym(handle, "posix_spawn_file_actions_addclosefrom_np")
    else { return }
    let addCloseFrom = unsafeBitCast(symbol, to: AddCloseFromFunction.self)
    _ = addCloseFrom(&fileActions, lowestDescriptor)
}
#else
/// Darwin has no `closefrom` file action; the descriptors the fixtures open
/// themselves are close-on-exec already.
private func addCloseFromAction(_ fileActions: inout posix_spawn_file_actions_t?, lowestDescriptor: Int32) {}
#endif

/// A NULL-terminated `char *[]` that owns its strings, for `posix_spawn`.
private final class CStringArray {
    let pointers: [UnsafeMutablePointer<CChar>?]

    init(_ strings: [String]) {
        pointers = strings.map { strdup($0) } + [nil]
    }

    deinit {
        for pointer in pointers {
            free(pointer)
        }
    }
}
