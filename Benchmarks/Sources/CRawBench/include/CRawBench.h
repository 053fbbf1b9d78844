#ifndef CRAWBENCH_H
#define CRAWBENCH_H

// The raw-C side of the benchmark: each workload's whole loop written against libmemcached the way
// a C programmer would (memcached_get, memcached_set, memcached_mget + memcached_fetch_result), so
// the Swift side times one call per run and no Swift code runs inside the C measurements.
//
// libmemcached's types stay out of this header: the library target imports them through its own
// module, and two modules owning the same C header would clash in Swift's importer.

#include <stddef.h>
#include <stdint.h>

typedef struct rawbench_conn rawbench_conn;

/// Options of a raw connection. The defaults of our MemcachedConfiguration are
/// binary = 0, noreply = 0, buffer_requests = 0, tcp_nodelay = 1.
typedef struct rawbench_options {
    int binary;
    int noreply;
    int buffer_requests;
    int tcp_nodelay;
} rawbench_options;

/// A libmemcached handle with the same behaviours our Handle applies (SUPPORT_CAS on, the poll and
/// connect timeouts, TCP_NODELAY as asked, ...), for one server. Returns NULL on failure.
rawbench_conn *rawbench_connect(const char *host, unsigned port, rawbench_options options);
void rawbench_free(rawbench_conn *conn);
/// The last libmemcached error text of the handle, for failures.
const char *rawbench_last_error(rawbench_conn *conn);

/// Stores one value with flags 0 (what our [UInt8] values use). Returns 0 on success.
int rawbench_store(rawbench_conn *conn, const char *key, size_t key_length, const void *value, size_t length);

// Every loop returns 0 on success and -1 on the first unexpected libmemcached code; `hits`
// counts values read, so the caller can check the run did what it claims.

/// `count` memcached_get calls cycling over `keys` (W1: one key; W3: missing keys); frees each value.
int rawbench_get_loop(rawbench_conn *conn, const char *const *keys, const size_t *lengths, size_t key_count,
                      size_t count, uint64_t *hits);

/// `count` memcached_set calls cycling over `keys` (W2).
int rawbench_set_loop(rawbench_conn *conn, const char *const *keys, const size_t *lengths, size_t key_count,
                      size_t count, const void *value, size_t value_length);

/// `count` memcached_mget calls of `batch` keys each, the batches taken in turn from `keys`, each
/// followed by a memcached_fetch_result loop into one result created once (W4).
int rawbench_mget_loop(rawbench_conn *conn, const char *const *keys, const size_t *lengths, size_t key_count,
                       size_t batch, size_t count, uint64_t *hits);

/// `count` pairs of memcached_set + memcached_get of one large value (W5).
int rawbench_set_get_loop(rawbench_conn *conn, const char *key, size_t key_length, const void *value,
                          size_t value_length, size_t count, uint64_t *hits);

/// The operations of a mixed workload: an index into the keys, with this bit set for a set.
#define RAWBENCH_SET_BIT 0x80000000u

/// Runs `operations` (gets with memcached_get, sets with memcached_set) over `keys` (W6).
int rawbench_mixed_loop(rawbench_conn *conn, const char *const *keys, const size_t *lengths,
                        const uint32_t *operations, size_t count, const void *value, size_t value_length,
                        uint64_t *hits);

/// Runs `operations` split in `thread_count` equal slices, one thread and one connection each
/// (W8's raw C side). `conns` holds `thread_count` connected handles.
int rawbench_mixed_threads(rawbench_conn *const *conns, size_t thread_count, const char *const *keys,
                           const size_t *lengths, const uint32_t *operations, size_t count, const void *value,
                           size_t value_length, uint64_t *hits);

/// `count` batches of `batch` memcached_set calls (W7). With `flush_each_batch`, calls
/// memcached_flush_buffers after each batch (for a handle with buffer_requests on).
int rawbench_set_multi_loop(rawbench_conn *conn, const char *const *keys, const size_t *lengths, size_t key_count,
                            size_t batch, size_t count, const void *value, size_t value_length,
                            int flush_each_batch);

/// Sends one round trip (a get) so a reply-less run has reached the server before the clock stops.
int rawbench_sync(rawbench_conn *conn);

// MARK: - CPU pinning

/// Pins one thread (a tid from /proc/PID/task; 0 for the caller) to one CPU. Returns 0 on success.
int rawbench_pin_thread(int tid, int cpu);
/// The one CPU a thread is pinned to, or -1 when it may run on several.
int rawbench_thread_cpu(int tid);
int rawbench_online_cpus(void);
/// Makes stdout line-buffered even into a file or a pipe (Swift cannot touch `stdout` safely).
void rawbench_line_buffer_stdout(void);
/// Bytes of heap in use (glibc 2.33's mallinfo2, chunks in use and mmapped), for what a structure
/// holds; SIZE_MAX where there is no mallinfo2.
size_t rawbench_heap_in_use(void);

// MARK: - Allocation counting

/// Starts or stops counting calls to malloc, calloc and realloc in every thread of the process.
void rawbench_count_allocations(int enabled);
/// The allocations counted so far.
uint64_t rawbench_allocations(void);

#endif
