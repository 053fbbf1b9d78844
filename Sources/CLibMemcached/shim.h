#ifndef CLIBMEMCACHED_SHIM_H
#define CLIBMEMCACHED_SHIM_H

#include <libmemcached-1.0/memcached.h>
#include <libhashkit-1.0/hashkit.h>

/// `memcached_continue` is a function-like macro, which Swift cannot import.
static inline bool clm_continue(memcached_return_t rc) {
    return memcached_continue(rc);
}

/// The result a `memcached_st` holds for its own reads (`memcached_get`, and every reply read
/// with no result of the caller's: a storage command's reply that turns out to be an item).
/// libmemcached has no accessor for it; the C compiler takes its address from the header the
/// library was built with, so no field offset is computed anywhere else.
static inline memcached_result_st *clm_handle_result(memcached_st *handle) {
    return &handle->result;
}

#endif
