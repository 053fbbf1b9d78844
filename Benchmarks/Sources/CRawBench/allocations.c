// Counts heap allocations of the whole process, for the "allocations per operation" column.
//
// The executable defines malloc, calloc and realloc; the dynamic linker resolves every library's
// calls (libswiftCore, Foundation, libmemcached) to the executable's definitions first, and these
// forward to glibc's own entry points (__libc_malloc and friends), which glibc exports for exactly
// this kind of wrapper. free is not wrapped: glibc's free releases what __libc_malloc returned.
// Aligned allocations (posix_memalign, aligned_alloc) are not counted; Swift uses them only for
// alignments above 16 bytes, which nothing in the measured paths asks for.
//
// Counting is off unless a run turns it on, so the interposers cost one relaxed load outside runs.

#include "CRawBench.h"

#if defined(__linux__) && defined(__GLIBC__)

#include <stdatomic.h>
#include <malloc.h>
#include <stddef.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *pointer, size_t size);

static atomic_int counting;
static atomic_uint_fast64_t allocations;

static inline void count_one(void) {
    if (atomic_load_explicit(&counting, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    }
}

void *malloc(size_t size) {
    count_one();
    return __libc_malloc(size);
}

void *calloc(size_t count, size_t size) {
    count_one();
    return __libc_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    count_one();
    return __libc_realloc(pointer, size);
}

void rawbench_count_allocations(int enabled) {
    atomic_store_explicit(&counting, enabled ? 1 : 0, memory_order_relaxed);
}

uint64_t rawbench_allocations(void) {
    return atomic_load_explicit(&allocations, memory_order_relaxed);
}

#else

// Elsewhere nothing is counted; the report prints "n/a".
void rawbench_count_allocations(int enabled) {
    (void) enabled;
}

uint64_t rawbench_allocations(void) {
    return UINT64_MAX;
}

#endif

#if defined(__linux__) && defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
size_t rawbench_heap_in_use(void) {
    // Chunks in use plus the ones glibc mmapped (a large array can be either).
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}
#else
size_t rawbench_heap_in_use(void) {
    return (size_t)-1;
}
#endif
