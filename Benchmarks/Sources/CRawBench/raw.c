#include "CRawBench.h"

#include <libmemcached-1.0/memcached.h>
#include <pthread.h>
#include <stdlib.h>

struct rawbench_conn {
    memcached_st *memc;
};

rawbench_conn *rawbench_connect(const char *host, unsigned port, rawbench_options options) {
    memcached_st *memc = memcached_create(NULL);
    if (memc == NULL) {
        return NULL;
    }
    // The behaviours our Handle applies at creation (Handle.applyBehaviors), with the library's
    // defaults: 3 s timeouts, retry 2 s, failure limit 5, modula, default hash. The ones that change
    // the hot path are SUPPORT_CAS (ASCII reads say "gets"), TCP_NODELAY and BINARY_PROTOCOL.
    const struct {
        memcached_behavior_t behavior;
        uint64_t value;
    } behaviors[] = {
        {MEMCACHED_BEHAVIOR_SUPPORT_CAS, 1},
        {MEMCACHED_BEHAVIOR_TCP_NODELAY, options.tcp_nodelay ? 1 : 0},
        {MEMCACHED_BEHAVIOR_BINARY_PROTOCOL, options.binary ? 1 : 0},
        {MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, 3000},
        {MEMCACHED_BEHAVIOR_POLL_TIMEOUT, 3000},
        {MEMCACHED_BEHAVIOR_RETRY_TIMEOUT, 2},
        {MEMCACHED_BEHAVIOR_SERVER_FAILURE_LIMIT, 5},
        {MEMCACHED_BEHAVIOR_REMOVE_FAILED_SERVERS, 0},
        {MEMCACHED_BEHAVIOR_DISTRIBUTION, MEMCACHED_DISTRIBUTION_MODULA},
        {MEMCACHED_BEHAVIOR_NOREPLY, options.noreply ? 1 : 0},
        {MEMCACHED_BEHAVIOR_BUFFER_REQUESTS, options.buffer_requests ? 1 : 0},
    };
    for (size_t i = 0; i < sizeof(behaviors) / sizeof(behaviors[0]); i++) {
        if (memcached_failed(memcached_behavior_set(memc, behaviors[i].behavior, behaviors[i].value))) {
            memcached_free(memc);
            return NULL;
        }
    }
    if (memcached_failed(memcached_server_add(memc, host, (in_port_t) port))) {
        memcached_free(memc);
        return NULL;
    }
    rawbench_conn *conn = malloc(sizeof(rawbench_conn));
    if (conn == NULL) {
        memcached_free(memc);
        return NULL;
    }
    conn->memc = memc;
    return conn;
}

void rawbench_free(rawbench_conn *conn) {
    if (conn != NULL) {
        memcached_free(conn->memc);
        free(conn);
    }
}

const char *rawbench_last_error(rawbench_conn *conn) {
    return memcached_last_error_message(conn->memc);
}

int rawbench_store(rawbench_conn *conn, const char *key, size_t key_length, const void *value, size_t length) {
    memcached_return_t rc = memcached_set(conn->memc, key, key_length, value, length, 0, 0);
    return memcached_success(rc) ? 0 : -1;
}

int rawbench_get_loop(rawbench_conn *conn, const char *const *keys, const size_t *lengths, size_t key_count,
                      size_t count, uint64_t *hits) {
    memcached_st *memc = conn->memc;
    uint64_t found = 0;
    for (size_t i = 0; i < count; i++) {
        size_t k = i % key_count;
        size_t length = 0;
        uint32_t flags = 0;
        memcached_return_t rc;
        char *value = memcached_get(memc, keys[k], lengths[k], &length, &flags, &rc);
        if (value != NULL) {
            found++;
            free(value);
        } else if (rc != MEMCACHED_NOTFOUND) {
            return -1;
        }
    }
    *hits = found;
    return 0;
}

int rawbench_set_loop(rawbench_conn *conn, const char *const *keys, const size_t *lengths, size_t key_count,
                      size_t count, const void *value, size_t value_length) {
    memcached_st *memc = conn->memc;
    for (size_t i = 0; i < count; i++) {
        size_t k = i % key_count;
        memcached_return_t rc = memcached_set(memc, keys[k], lengths[k], value, value_length, 0, 0);
        if (memcached_failed(rc)) {
            return -1;
        }
    }
    return 0;
}

int rawbench_mget_loop(rawbench_conn *conn, const char *const *keys, const size_t *lengths, size_t key_count,
                       size_t batch, size_t count, uint64_t *hits) {
    memcached_st *memc = conn->memc;
    size_t batches = key_count / batch;
    memcached_result_st result;
    if (memcached_result_create(memc, &result) == NULL) {
        return -1;
    }
    uint64_t found = 0;
    int status = 0;
    for (size_t i = 0; i < count && status == 0; i++) {
        size_t first = (i % batches) * batch;
        memcached_return_t rc = memcached_mget(memc, keys + first, lengths + first, batch);
        if (memcached_failed(rc)) {
            status = -1;
            break;
        }
        while (memcached_fetch_result(memc, &result, &rc) != NULL) {
            found++;
        }
        if (rc != MEMCACHED_END && rc != MEMCACHED_NOTFOUND && rc != MEMCACHED_SUCCESS) {
            status = -1;
        }
    }
    memcached_result_free(&result);
    *hits = found;
    return status;
}

int rawbench_set_get_loop(rawbench_conn *conn, const char *key, size_t key_length, const void *value,
                          size_t value_length, size_t count, uint64_t *hits) {
    memcached_st *memc = conn->memc;
    uint64_t found = 0;
    for (size_t i = 0; i < count; i++) {
        memcached_return_t rc = memcached_set(memc, key, key_length, value, value_length, 0, 0);
        if (memcached_failed(rc)) {
            return -1;
        }
        size_t length = 0;
        uint32_t flags = 0;
        char *read = memcached_get(memc, key, key_length, &length, &flags, &rc);
        if (read == NULL || length != value_length) {
            free(read);
            return -1;
        }
        found++;
        free(read);
    }
    *hits = found;
    return 0;
}

int rawbench_mixed_loop(rawbench_conn *conn, const char *const *keys, const size_t *lengths,
                        const uint32_t *operations, size_t count, const void *value, size_t value_length,
                        uint64_t *hits) {
    memcached_st *memc = conn->memc;
    uint64_t found = 0;
    for (size_t i = 0; i < count; i++) {
        uint32_t k = operations[i] & ~RAWBENCH_SET_BIT;
        memcached_return_t rc;
        if (operations[i] & RAWBENCH_SET_BIT) {
            rc = memcached_set(memc, keys[k], lengths[k], value, value_length, 0, 0);
            if (memcached_failed(rc)) {
                return -1;
            }
        } else {
            size_t length = 0;
            uint32_t flags = 0;
            char *read = memcached_get(memc, keys[k], lengths[k], &length, &flags, &rc);
            if (read != NULL) {
                found++;
                free(read);
            } else if (rc != MEMCACHED_NOTFOUND) {
                return -1;
            }
        }
    }
    *hits = found;
    return 0;
}

typedef struct mixed_slice {
    rawbench_conn *conn;
    const char *const *keys;
    const size_t *lengths;
    const uint32_t *operations;
    size_t count;
    const void *value;
    size_t value_length;
    uint64_t hits;
    int status;
} mixed_slice;

static void *run_slice(void *argument) {
    mixed_slice *slice = argument;
    slice->status = rawbench_mixed_loop(slice->conn, slice->keys, slice->lengths, slice->operations, slice->count,
                                        slice->value, slice->value_length, &slice->hits);
    return NULL;
}

int rawbench_mixed_threads(rawbench_conn *const *conns, size_t thread_count, const char *const *keys,
                           const size_t *lengths, const uint32_t *operations, size_t count, const void *value,
                           size_t value_length, uint64_t *hits) {
    if (thread_count == 0 || thread_count > 64) {
        return -1;
    }
    mixed_slice slices[64];
    pthread_t threads[64];
    size_t per_thread = count / thread_count;
    size_t started = 0;
    int status = 0;
    for (size_t t = 0; t < thread_count; t++) {
        slices[t] = (mixed_slice){
            .conn = conns[t],
            .keys = keys,
            .lengths = lengths,
            .operations = operations + t * per_thread,
            .count = t + 1 == thread_count ? count - t * per_thread : per_thread,
            .value = value,
            .value_length = value_length,
        };
        if (pthread_create(&threads[t], NULL, run_slice, &slices[t]) != 0) {
            status = -1;
            break;
        }
        started++;
    }
    uint64_t found = 0;
    for (size_t t = 0; t < started; t++) {
        pthread_join(threads[t], NULL);
        found += slices[t].hits;
        if (slices[t].status != 0) {
            status = -1;
        }
    }
    *hits = found;
    return status;
}

int rawbench_set_multi_loop(rawbench_conn *conn, const char *const *keys, const size_t *lengths, size_t key_count,
                            size_t batch, size_t count, const void *value, size_t value_length,
                            int flush_each_batch) {
    memcached_st *memc = conn->memc;
    size_t batches = key_count / batch;
    for (size_t i = 0; i < count; i++) {
        size_t first = (i % batches) * batch;
        for (size_t k = first; k < first + batch; k++) {
            memcached_return_t rc = memcached_set(memc, keys[k], lengths[k], value, value_length, 0, 0);
            // A buffered set answers MEMCACHED_BUFFERED, which memcached_failed counts as success.
            if (memcached_failed(rc)) {
                return -1;
            }
        }
        if (flush_each_batch && memcached_failed(memcached_flush_buffers(memc))) {
            return -1;
        }
    }
    return 0;
}

int rawbench_sync(rawbench_conn *conn) {
    size_t length = 0;
    uint32_t flags = 0;
    memcached_return_t rc;
    char *value = memcached_get(conn->memc, "rawbench:sync", sizeof("rawbench:sync") - 1, &length, &flags, &rc);
    free(value);
    return value != NULL || rc == MEMCACHED_NOTFOUND ? 0 : -1;
}
