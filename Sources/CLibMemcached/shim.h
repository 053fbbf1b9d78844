#ifndef CLIBMEMCACHED_SHIM_H
#define CLIBMEMCACHED_SHIM_H

#include <libmemcached-1.0/memcached.h>
#include <libhashkit-1.0/hashkit.h>

/// `memcached_continue` is a function-like macro, which Swift cannot import.
static inline bool clm_continue(memcached_return_t rc) {
    return memcached_continue(rc);
}

#endif
