internal import CLibMemcached

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads what libmemcached keeps private about each server's connection: the socket descriptor
/// and how many received bytes wait unread in its read buffer.
///
/// libmemcached 1.1.4's API exposes neither, and both are needed to keep two promises: a
/// connection the server closed while it sat idle (a restart, `-o idle_timeout`) is noticed
/// before a command is written to it, and bytes a server sends beyond a complete reply are never
/// read as the reply to a later command. The fields are read at their offsets in
/// `memcached_instance_st` (`src/libmemcached/instance.hpp`), which is stable across the 1.1
/// releases; ``isAvailable`` checks the loaded library once per process against what the public
/// API reports of the same structure (the port, the host name's address, the reply count, the
/// read pointer's place inside the structure), and everything here does nothing when it does
/// not match.
enum ServerConnectionState {
    // Offsets in libmemcached 1.1.x's memcached_instance_st on LP64 platforms.
    private static let responseCountOffset = 12
    private static let portOffset = 16
    private static let descriptorOffset = 20
    private static let readPointerOffset = 112
    private static let unreadByteCountOffset = 120
    private static let readBufferOffset = 184
    private static let hostNameOffset = 16_576

    /// Whether the loaded libmemcached has the layout these offsets describe.
    static let isAvailable: Bool = verifyLayout()

    /// The connected socket of a server, or `nil` when it has none.
    @inline(__always)
    static func descriptor(of instance: OpaquePointer) -> Int32? {
        let descriptor = UnsafeRawPointer(instance).load(fromByteOffset: descriptorOffset, as: Int32.self)
        return descriptor >= 0 ? descriptor : nil
    }

    /// How many bytes libmemcached received from a server and has not read yet.
    @inline(__always)
    static func unreadByteCount(of instance: OpaquePointer) -> Int {
        UnsafeRawPointer(instance).load(fromByteOffset: unreadByteCountOffset, as: Int.self)
    }

    /// Checks the offsets on a handle with one unconnected server, whose fields have known values.
    private static func verifyLayout() -> Bool {
        #if arch(x86_64) || arch(arm64)
        guard let version = memcached_lib_version().map({ String(cString: $0) }), version.hasPrefix("1.1.") else {
            return false
        }
        let handle = UnsafeMutablePointer<memcached_st>.allocate(capacity: 1)
        handle.initialize(to: memcached_st())
        defer { handle.deallocate() }
        guard memcached_create(handle) != nil else { return false }
        defer { memcached_free(handle) }
        let port: in_port_t = 47_011
        guard memcached_success(memcached_server_add(handle, "127.0.0.1", port)),
            let instance = memcached_server_instance_by_position(handle, 0)
        else { return false }
        let base = UnsafeRawPointer(instance)
        let readPointer = base.load(fromByteOffset: readPointerOffset, as: UnsafeRawPointer?.self)
        return base.load(fromByteOffset: portOffset, as: in_port_t.self) == memcached_server_port(instance)
            && memcached_server_port(instance) == port
            && UnsafeRawPointer(memcached_server_name(instance)) == base + hostNameOffset
            && base.load(fromByteOffset: responseCountOffset, as: UInt32.self)
                == memcached_server_response_count(instance)
            && base.load(fromByteOffset: descriptorOffset, as: Int32.self) == -1
            && readPointer == base + readBufferOffset
            && unreadByteCount(of: instance) == 0
        #else
        return false
        #endif
    }

    /// Whether any connected server of `handle` has something to say before a command was sent:
    /// it closed the connection (end of file, reset), or sent bytes nobody asked for.
    ///
    /// One `poll` with a zero timeout over every connected socket. ``Handle`` calls it at the
    /// start of a call when the coarse clock (a tick of a few milliseconds) moved since the last
    /// check, so a loop of calls pays it once per tick, not once per call. An idle connection to an
    /// honest server never has anything to read, so `true` means the connection must not be
    /// used: a command written to it would be lost (closed) or read the wrong reply (bytes).
    static func anyConnectionHasNews(_ handle: UnsafeMutablePointer<memcached_st>) -> Bool {
        let count = Int(memcached_server_count(handle))
        guard count > 0 else { return false }
        return withUnsafeTemporaryAllocation(of: pollfd.self, capacity: count) { descriptors in
            var watched = 0
            for position in 0..<count {
                guard let instance = memcached_server_instance_by_position(handle, UInt32(position)) else { continue }
                if unreadByteCount(of: instance) != 0 {
                    return true
                }
                guard let descriptor = descriptor(of: instance) else { continue }
                // POLLIN also reports end of file; resets and errors are reported without asking.
                descriptors[watched] = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
                watched += 1
            }
            guard watched > 0 else { return false }
            return poll(descriptors.baseAddress, nfds_t(watched), 0) > 0
        }
    }

    /// Whether a server sent more than the reply that was read: bytes wait in libmemcached's
    /// read buffer after a call that read every reply it expected.
    static func anyUnreadBytes(_ handle: UnsafeMutablePointer<memcached_st>) -> Bool {
        let count = memcached_server_count(handle)
        for position in 0..<count {
            if let instance = memcached_server_instance_by_position(handle, position),
                unreadByteCount(of: instance) != 0
            {
                return true
            }
        }
        return false
    }
}
