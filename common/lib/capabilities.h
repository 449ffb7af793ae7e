/* One place for the backend API's defaults (backend.h: "NULL means
 * ..."), used by both front ends (common/nbdkit-glue.c and minnbd's
 * handshake.c), and the contract checks built on them.
 *
 * Rules, applied by backend_get_caps:
 *  - a capability callback that is NULL means no (can_fua: NONE,
 *    can_cache: NONE), except can_write, whose NULL means pwrite != NULL;
 *  - a capability whose data callback is missing is no: can_write
 *    without pwrite, can_flush without flush, can_trim without trim,
 *    can_zero without zero, can_extents without extents;
 *  - can_fast_zero needs can_zero; can_cache NATIVE without a cache
 *    callback is EMULATE; can_fua EMULATE without flush is NONE.
 * block_size NULL means no constraint (0, 0, 0); default_export NULL
 * (or a NULL answer) means "".
 *
 * backend_call_ok says whether a front end may make a data call with
 * some flags on a handle with these capabilities (backend.h: "flags only
 * carry bits whose capability the backend advertised", no write-type
 * call on a read-only handle); front ends assert it before every call.
 *
 * Pure functions of their arguments plus the backend's own callbacks:
 * thread-safe as far as the backend's can_* are (they are: PARALLEL).
 */
#ifndef NBDCAS_CAPABILITIES_H
#define NBDCAS_CAPABILITIES_H

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>

#include "backend.h"

struct backend_caps {
  bool can_write, can_flush, can_trim, can_zero, can_fast_zero;
  bool can_multi_conn, can_extents, is_rotational;
  int can_fua;                  /* BACKEND_FUA_* */
  int can_cache;                /* BACKEND_CACHE_* */
};

/* Ask every capability of handle h.  0, or -1 (errno set, and usually a
 * backend_error message) when a can_* callback failed.
 */
int backend_get_caps (const struct backend *b, void *h,
                      struct backend_caps *caps);

/* block_size, or 0/0/0 without the callback.  0 or -1 as the callback. */
int backend_get_block_size (const struct backend *b, void *h,
                            uint32_t *minimum, uint32_t *preferred,
                            uint32_t *maximum);

/* The default export's name (never NULL). */
const char *backend_get_default_export (const struct backend *b,
                                        bool readonly);

/* The data calls of struct backend. */
enum backend_call {
  BACKEND_CALL_PREAD, BACKEND_CALL_PWRITE, BACKEND_CALL_FLUSH,
  BACKEND_CALL_TRIM, BACKEND_CALL_ZERO, BACKEND_CALL_EXTENTS,
  BACKEND_CALL_CACHE,
};

/* Whether call, with flags, may be made on a handle with caps (opened
 * read-only or not): the callback exists and its capability is
 * advertised, no write-type call on a read-only handle, and every flag
 * is one the call takes and whose capability was advertised (FUA only
 * with can_fua NATIVE; FAST_ZERO only with can_fast_zero).
 */
bool backend_call_ok (const struct backend *b,
                      const struct backend_caps *caps, bool readonly,
                      enum backend_call call, uint32_t flags);

/* What front ends write before each data call. */
#define BACKEND_ASSERT_CALL(b, caps, readonly, call, flags) \
  assert (backend_call_ok ((b), (caps), (readonly), (call), (flags)))

#endif /* NBDCAS_CAPABILITIES_H */
