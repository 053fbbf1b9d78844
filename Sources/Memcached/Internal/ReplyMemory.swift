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
    static func install(on pointer: UnsafeMutablePointer<memcached_st>, maximumValueLength: Int) -> Bool {
        let limit = maximumValueLength.addingReportingOverflow(slack)
        let context = UnsafeMutableRawPointer(bitPattern: limit.overflow ? Int.max : limit.partialValue)
        return memcached_success(
            memcached_set_memory_allocators(pointer, allocate, release, reallocate, allocateZeroed, context)
        )
    }

    /// Frees a block libmemcached handed to the caller (the value `memcached_get` returns).
    static func free(_ block: UnsafeMutableRawPointer?) {
        guard let block else { return }
        Glibc.free(block - guardSize)
    }

    private static func limit(_ context: UnsafeMutableRawPointer?) -> Int {
        Int(bitPattern: context)
    }

    private static let allocate: memcached_malloc_fn = { _, size, context in
        guard size <= limit(context), let base = malloc(size + guardSize) else { return nil }
        return base + guardSize
    }

    private static let release: memcached_free_fn = { _, block, _ in
        ReplyMemory.free(block)
    }

    private static let reallocate: memcached_realloc_fn = { _, block, size, context in
        guard size <= limit(context), let base = realloc(block.map { $0 - guardSize }, size + guardSize) else {
            return nil
        }
        return base + guardSize
    }

    private static let allocateZeroed: memcached_calloc_fn = { _, count, size, context in
        let total = count.multipliedReportingOverflow(by: size)
        guard !total.overflow, total.partialValue <= limit(context),
            let base = calloc(1, total.partialValue + guardSize)
        else { return nil }
        return base + guardSize
    }
}
