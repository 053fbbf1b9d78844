#ifndef CZLIB_SHIM_H
#define CZLIB_SHIM_H

#include <zlib.h>

/// `inflateInit` is a function-like macro (it passes the zlib version and stream size), which Swift cannot import.
static inline int czlib_inflate_init(z_streamp stream) {
    return inflateInit(stream);
}

#endif
