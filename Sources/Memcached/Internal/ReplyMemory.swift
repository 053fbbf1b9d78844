internal import CLibMemcached

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// libmemcached's memory allocation hooks, installed on every handle, for two defences against a
/// hostile server that libmemcached's own reply parser does not have.
///
/// **A cap applied before allocation.** libmemcached sizes a value's buffer from the length the
/// server claims (`VALUE k 0 4294967295` asks for 4 GiB) before a byte of it arrives. Every
/// allocation above the handle's limit (``MemcachedConfiguration/maximumReceivedValueLength`` plus
/// ``slack``) is refused, so libmemcached fails the read with
/// `MEMCACHED_MEMORY_ALLOCATION_FAILURE` instead of reserving the memory.
///
/// **A guard in front of every block.** libmemcached 1.1.4's text parser reads a length of `-1`
/// or `-2` as 2^64 − 1 or − 2, adds the two bytes of `\r\n` (wrapping to 1 or 0) and then writes
/// two zero bytes at `value[length]` and `value[length + 1]`: one or two bytes *before* its buffer,
/// into the allocator's own bookkeeping. Each block handed out here starts ``guardSize`` bytes
/// after the block `malloc` returned, so those writes land in memory this allocator owns and
/// never reads. The length libmemcached then reports is rejected by ``Handle`` before any byte
/// is read from the value. (Every result buffer is grown once at creation, see
/// ``Handle/preallocate(_:)``, so the writes never go through a null buffer.)
///
/// **A tag on every block.** libmemcached 1.1.4 copies a reply's key into a result's 251-byte
/// `item_key` without checking its length (a text `VALUE` line's key, up to the 350-byte line; a
/// binary header's key length, up to 65,535), overwriting the result's flags and whatever follows
/// it. The results this library reads into are followed by padding of ours (``Handle``), but the
/// overwritten "allocated" flag can make libmemcached free the result itself, memory it never
/// allocated. Each block handed out here carries a tag in its guard, and a block without it is
/// never passed to `free`: libmemcached's confusion costs a leak, not the process.
///
/// The limit travels in the hooks' context pointer as an integer: libmemcached copies the
/// context into every clone and never dereferences it, so no object has to outlive the handles.
enum ReplyMemory {
    /// Bytes in front of every block: more than the two bytes libmemcached may write there, and
    /// a multiple of 16 so blocks keep `malloc`'s alignment.
    static let guardSize = 16

    /// What an allocation may exceed the value limit by: libmemcached rounds value buffers up to
    /// its 1 KiB block size and adds the two bytes of `\r\n`; its other allocations are small.
    static let slack = 64 << 10

    /// Installs the hooks on a handle freshly created with `memcached_create` on storage of ours
    /// (libmemcached frees a `memcached_st` it allocated itself with these hooks, which did not
    /// allocate it), before anything else is allocated through it.
    ///
    /// The limit is the value cap plus ``slack``, or `setupBytes` when libmemcached's own setup
    /// (its server list and continuum) needs more: a value can then claim up to that much before
    /// the cap refuses it, and ``Handle`` still refuses any value over the cap once read.
    static func install(
        on pointer: UnsafeMutablePointer<memcached_st>,
        maximumValueLength: Int,
        setupBytes: Int
    ) -> Bool {
        let limit = max(maximumValueLength, setupBytes).addingReportingOverflow(slack)
        let context = UnsafeMutableRawPointer(bitPattern: limit.overflow ? Int.max : limit.partialValue)
        return memcached_success(
            memcached_set_memory_allocators(pointer, allocate, release, reallocate, allocateZeroed, context)
        )
    }

    /// Bytes after a result this library reads into, which absorb libmemcached's copy of an
    /// overlong key: a binary key length is 16 bits, so 64 KiB covers any.
    static let resultPadding = 64 << 10

    /// Memory for a result libmemcached reads into, zeroed, with ``resultPadding`` bytes after
    /// it and an untagged guard before it, so that ``free(_:)`` never frees it.
    static func allocateResult() -> UnsafeMutablePointer<memcached_result_st> {
        let base = calloc(1, guardSize + MemoryLayout<memcached_result_st>.size + resultPadding)!
        return (base + guardSize).bindMemory(to: memcached_result_st.self, capacity: 1)
    }

    /// Writes a value into the first padding bytes after a result and returns it, for
    /// ``canaryIntact(_:after:)`` to compare once libmemcached has read into the result. It
    /// changes with every call (the address of a local), so a reply cannot guess it.
    @inline(__always)
    static func armCanary(after result: UnsafeMutablePointer<memcached_result_st>) -> UInt64 {
        var seed: UInt8 = 0
        let value = withUnsafeMutablePointer(to: &seed) { UInt64(UInt(bitPattern: $0)) } ^ 0x9E37_79B9_7F4A_7C15
        canarySlot(after: result).storeBytes(of: value, as: UInt64.self)
        return value
    }

    /// Whether the value ``armCanary(after:)`` wrote is still there.
    @inline(__always)
    static func canaryIntact(_ value: UInt64, after result: UnsafeMutablePointer<memcached_result_st>) -> Bool {
        canarySlot(after: result).load(as: UInt64.self) == value
    }

    @inline(__always)
    private static func canarySlot(after result: UnsafeMutablePointer<memcached_result_st>) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(result) + MemoryLayout<memcached_result_st>.stride
    }

    /// Releases what ``allocateResult()`` returned.
    static func deallocateResult(_ result: UnsafeMutablePointer<memcached_result_st>) {
        Glibc.free(UnsafeMutableRawPointer(result) - guardSize)
    }

    /// What the guard of every live block starts with.
    private static let tag: UInt64 = 0x6D63_6764_626C_6B21

    /// Frees a block of this allocator; does nothing for any other pointer (see the type's
    /// documentation) or for a block freed already.
    static func free(_ block: UnsafeMutableRawPointer?) {
        guard let block else { return }
        let base = block - guardSize
        guard base.load(as: UInt64.self) == tag else { return }
        base.storeBytes(of: 0, as: UInt64.self)
        Glibc.free(base)
    }

    /// Tags a block `malloc`, `calloc` or `realloc` returned and hands out the memory after the guard.
    private static func handOut(_ base: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer {
        base.storeBytes(of: tag, as: UInt64.self)
        return base + guardSize
    }

    private static func limit(_ context: UnsafeMutableRawPointer?) -> Int {
        Int(bitPattern: context)
    }

    /// Whether libmemcached may have `size` bytes. Swift sees `size_t` as `Int`, so a size of
    /// 2^63 or more (libmemcached's `length + 2` from a forged length) arrives negative.
    @inline(__always)
    private static func allowed(_ size: Int, _ context: UnsafeMutableRawPointer?) -> Bool {
        size >= 0 && size <= limit(context)
    }

    private static let allocate: memcached_malloc_fn = { _, size, context in
        guard allowed(size, context), let base = malloc(size + guardSize) else { return nil }
        return handOut(base)
    }

    private static let release: memcached_free_fn = { _, block, _ in
        ReplyMemory.free(block)
    }

    private static let reallocate: memcached_realloc_fn = { _, block, size, context in
        // A block that is not ours cannot be resized (nor freed): refuse, as for an allocation failure.
        if let block, (block - guardSize).load(as: UInt64.self) != tag {
            return nil
        }
        guard allowed(size, context), let base = realloc(block.map { $0 - guardSize }, size + guardSize) else {
            return nil
        }
        return handOut(base)
    }

    private static let allocateZeroed: memcached_calloc_fn = { _, count, size, context in
        let total = count.multipliedReportingOverflow(by: size)
        guard count >= 0, size >= 0, !total.overflow, allowed(total.partialValue, context),
            let base = calloc(1, total.partialValue + guardSize)
        else { return nil }
        return handOut(base)
    }
}
