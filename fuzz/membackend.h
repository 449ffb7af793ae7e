/* A small memory-backed test backend for the server fuzz targets.
 *
 * Contract: mem_backend implements every callback of struct backend
 * (common/backend.h), so the fuzzers reach every server code path.  It
 * lists four exports whose capabilities differ, so that the export a
 * fuzz input opens decides which server paths are live:
 *   ""       1 MiB, everything native (FUA, cache, fast zero, extents)
 *   "ro"     1 MiB, read-only
 *   "small"  1000 bytes + odd size, minimum block 512, maximum 64 KiB
 *            (the server splits requests)
 *   "emul"   1 MiB, FUA and cache emulated by the server, no zero, no
 *            trim, no extents (the server's fallbacks)
 * and, unlisted, "error-ENAME" (ENOENT, EINVAL, EPERM, EACCES, EROFS,
 * EIO, ENOMEM, ESHUTDOWN, ENOTSUP, EBUSY): open fails with that errno
 * and a message (for tests of how a front end reports it).
 * The data is one static 1 MiB array plus a per-4 KiB "allocated" map
 * (for extents); mem_backend_reset() zeroes both so that every fuzz input
 * starts from the same state.
 *
 * Thread safety: PARALLEL, as the API requires: the data is guarded by
 * one mutex (held only for memcpy/memset), so concurrent workers of one
 * connection see consistent blocks.
 */
#ifndef NBDCAS_FUZZ_MEMBACKEND_H
#define NBDCAS_FUZZ_MEMBACKEND_H

#include "backend.h"

extern const struct backend mem_backend;

/* Zero the disk.  Call only while no connection is being served. */
void mem_backend_reset (void);

#endif /* NBDCAS_FUZZ_MEMBACKEND_H */
