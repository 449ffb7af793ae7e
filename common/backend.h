/* nbdcas backend API.
 *
 * Contract: a backend is a table of callbacks (struct backend) written once
 * and served by two front ends: common/nbdkit-glue.c (an nbdkit plugin,
 * API version 2) and minnbd (common/server/).  A backend knows nothing of
 * the NBD wire format; a front end knows nothing of any backend.
 *
 * Errors: every callback returning int returns 0 on success and -1 on
 * failure with errno set to the error the client should see (EIO, ENOSPC,
 * EPERM, EINVAL, ENOTSUP ...).  A backend may call backend_error() first to
 * attach a human-readable message; the front end logs it (and minnbd sends
 * it in a structured error chunk).
 *
 * Front ends validate requests before calling in: offset + count never
 * exceeds get_size(), count is never 0, write-type calls are never made on
 * a read-only handle, and flags only carry bits whose capability the
 * backend advertised.
 *
 * Thread safety: every backend is PARALLEL.  Callbacks on one handle, and
 * on different handles, may run concurrently from many threads; the
 * backend does its own locking.  config / config_complete / load / unload
 * run single-threaded before/after any connection.
 */
#ifndef NBDCAS_BACKEND_H
#define NBDCAS_BACKEND_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

/* Request flags (values equal to nbdkit's NBDKIT_FLAG_*). */
#define BACKEND_FLAG_MAY_TRIM  (1u << 0) /* zero: may punch a hole */
#define BACKEND_FLAG_FUA       (1u << 1) /* durable before returning */
#define BACKEND_FLAG_REQ_ONE   (1u << 2) /* extents: one is enough */
#define BACKEND_FLAG_FAST_ZERO (1u << 3) /* zero: fail with ENOTSUP if slow */

/* can_fua / can_cache answers (values equal to nbdkit's). */
#define BACKEND_FUA_NONE      0
#define BACKEND_FUA_EMULATE   1 /* front end calls flush after the write */
#define BACKEND_FUA_NATIVE    2 /* backend honours BACKEND_FLAG_FUA itself */
#define BACKEND_CACHE_NONE    0
#define BACKEND_CACHE_EMULATE 1
#define BACKEND_CACHE_NATIVE  2

/* Extent types (NBD base:allocation bits). */
#define BACKEND_EXTENT_HOLE (1u << 0)
#define BACKEND_EXTENT_ZERO (1u << 1)

/* Opaque collectors, implemented by each front end. */
struct backend_extents;
struct backend_exports;

struct backend {
  const char *name;          /* "flatfile", "cas": what users type */
  const char *longname;
  const char *description;
  const char *config_help;   /* key=value lines for --help */

  void (*load) (void);                                  /* optional */
  void (*unload) (void);                                /* optional */
  int (*config) (const char *key, const char *value);
  int (*config_complete) (void);                        /* optional */
  /* optional: called once the server runs in the process that will serve
   * (after it forked into the background, if it does), before the first
   * connection.  Threads a backend needs are started here: threads
   * started before a fork do not survive it.
   */
  int (*after_fork) (void);

  /* Exports.  list_exports may be NULL: only the default export "" exists.
   * default_export may be NULL: the default export is "".
   */
  int (*list_exports) (bool readonly, struct backend_exports *exports);
  const char *(*default_export) (bool readonly);

  /* Per connection.  exportname is never NULL ("" is the default export).
   * open returns NULL with errno set (and usually a backend_error message):
   * ENOENT for an unknown export.
   */
  void *(*open) (const char *exportname, bool readonly);
  void (*close) (void *handle);

  int64_t (*get_size) (void *handle);
  /* optional: 0 for min/pref/max means "no constraint". */
  int (*block_size) (void *handle,
                     uint32_t *minimum, uint32_t *preferred, uint32_t *maximum);

  /* Capabilities: 1 yes, 0 no, -1 error.  NULL means no (for can_fua and
   * can_cache: NONE) except can_write, whose NULL means "pwrite != NULL".
   * Both front ends apply these rules through common/lib/capabilities.h.
   */
  int (*can_write) (void *handle);
  int (*can_flush) (void *handle);
  int (*can_trim) (void *handle);
  int (*can_zero) (void *handle);
  int (*can_fast_zero) (void *handle);
  int (*can_fua) (void *handle);
  int (*can_multi_conn) (void *handle);
  int (*can_extents) (void *handle);
  int (*can_cache) (void *handle);
  int (*is_rotational) (void *handle);

  /* Data path.  flags: BACKEND_FLAG_*. */
  int (*pread) (void *handle, void *buf, uint32_t count, uint64_t offset,
                uint32_t flags);
  int (*pwrite) (void *handle, const void *buf, uint32_t count,
                 uint64_t offset, uint32_t flags);
  int (*flush) (void *handle, uint32_t flags);
  int (*trim) (void *handle, uint32_t count, uint64_t offset, uint32_t flags);
  int (*zero) (void *handle, uint32_t count, uint64_t offset, uint32_t flags);
  /* Must add at least one extent starting at offset; may add extents
   * beyond offset+count (the front end clips).  REQ_ONE: one is enough.
   */
  int (*extents) (void *handle, uint32_t count, uint64_t offset,
                  uint32_t flags, struct backend_extents *extents);
  int (*cache) (void *handle, uint32_t count, uint64_t offset, uint32_t flags);

  /* Optional: metadata contexts of the backend's own besides
   * base:allocation (minnbd serves them; nbdkit 1.32 cannot).
   * meta_contexts calls add(name) for each context the export serves that
   * matches query: a whole name, or for listing a "namespace:" prefix, or
   * NULL for all.  Names are at most 4096 bytes.  -1 on error.
   * meta_extents gives a context's extents for an open handle (name is
   * one that meta_contexts named for its export), as extents does: bit 0
   * of an extent's type is the context's flag.
   */
  int (*meta_contexts) (const char *exportname, const char *query,
                        int (*add) (const char *name, void *opaque),
                        void *opaque);
  int (*meta_extents) (void *handle, const char *name, uint32_t count,
                       uint64_t offset, uint32_t flags,
                       struct backend_extents *extents);
};

/* Services each front end provides to backends. */

/* Attach a message to the error being returned (also logged). */
void backend_error (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));
/* Debug message, shown only in verbose mode (nbdkit -v, minnbd -v). */
void backend_debug (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));
/* Extents must be added in ascending, contiguous order. */
int backend_add_extent (struct backend_extents *extents,
                        uint64_t offset, uint64_t length, uint32_t type);
int backend_add_export (struct backend_exports *exports,
                        const char *name, const char *description);
/* Whether the whole server is read-only (nbdkit -r, minnbd -r): then
 * every connection is read-only, and a backend should open its storage
 * without writing anything (no repair, no cache write-back, shared
 * locks).  Known from config_complete on.
 */
bool backend_server_readonly (void);

#endif /* NBDCAS_BACKEND_H */
