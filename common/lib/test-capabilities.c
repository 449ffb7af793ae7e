/* Unit test of capabilities.c: the backend API's defaults for missing
 * callbacks, and the contract check both front ends assert.
 */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "capabilities.h"

static int yes (void *h) { return 1; }
static int fails (void *h) { errno = EIO; return -1; }
static int fua_emulate (void *h) { return BACKEND_FUA_EMULATE; }
static int fua_native (void *h) { return BACKEND_FUA_NATIVE; }
static int cache_native (void *h) { return BACKEND_CACHE_NATIVE; }
static int bogus (void *h) { return 42; }
static const char *no_name (bool ro) { return NULL; }
static const char *named (bool ro) { return ro ? "ro" : "rw"; }
static int pread_ (void *h, void *b, uint32_t n, uint64_t o, uint32_t f)
{ return 0; }
static int pwrite_ (void *h, const void *b, uint32_t n, uint64_t o,
                    uint32_t f) { return 0; }
static int flush_ (void *h, uint32_t f) { return 0; }
static int range_ (void *h, uint32_t n, uint64_t o, uint32_t f) { return 0; }
static int extents_ (void *h, uint32_t n, uint64_t o, uint32_t f,
                     struct backend_extents *e) { return 0; }
static int bs (void *h, uint32_t *a, uint32_t *b, uint32_t *c)
{ *a = 512; *b = 4096; *c = 65536; return 0; }

static struct backend_caps
caps_of (const struct backend *b)
{
  struct backend_caps c;

  memset (&c, 0xff, sizeof c);
  assert (backend_get_caps (b, NULL, &c) == 0);
  return c;
}

int
main (void)
{
  struct backend_caps c;
  uint32_t a, p, m;

  /* Only pread: nothing else, whatever the defaults. */
  {
    struct backend b = { .name = "min", .pread = pread_ };

    c = caps_of (&b);
    assert (!c.can_write && !c.can_flush && !c.can_trim && !c.can_zero &&
            !c.can_fast_zero && !c.can_multi_conn && !c.can_extents &&
            !c.is_rotational);
    assert (c.can_fua == BACKEND_FUA_NONE && c.can_cache == BACKEND_CACHE_NONE);
    assert (backend_get_block_size (&b, NULL, &a, &p, &m) == 0 &&
            a == 0 && p == 0 && m == 0);
    assert (strcmp (backend_get_default_export (&b, false), "") == 0);
    assert (backend_call_ok (&b, &c, false, BACKEND_CALL_PREAD, 0));
    assert (!backend_call_ok (&b, &c, false, BACKEND_CALL_PWRITE, 0));
    assert (!backend_call_ok (&b, &c, false, BACKEND_CALL_FLUSH, 0));
    assert (!backend_call_ok (&b, &c, false, BACKEND_CALL_CACHE, 0));
  }

  /* can_write NULL means "pwrite exists". */
  {
    struct backend b = { .pread = pread_, .pwrite = pwrite_ };

    assert (caps_of (&b).can_write);
  }

  /* A capability whose data callback is missing is no; so is fast zero
   * without zero, FUA emulation without flush; native cache without a
   * cache callback is emulated; out-of-range answers are NONE.
   */
  {
    struct backend b = {
      .pread = pread_, .can_write = yes, .can_flush = yes, .can_trim = yes,
      .can_zero = yes, .can_fast_zero = yes, .can_extents = yes,
      .can_fua = fua_emulate, .can_cache = cache_native,
      .can_multi_conn = yes, .is_rotational = yes,
      .default_export = no_name,
    };

    c = caps_of (&b);
    assert (!c.can_write && !c.can_flush && !c.can_trim && !c.can_zero &&
            !c.can_fast_zero && !c.can_extents);
    assert (c.can_multi_conn && c.is_rotational);
    assert (c.can_fua == BACKEND_FUA_NONE);
    assert (c.can_cache == BACKEND_CACHE_EMULATE);
    assert (strcmp (backend_get_default_export (&b, true), "") == 0);
    b.can_fua = bogus;
    b.can_cache = bogus;
    c = caps_of (&b);
    assert (c.can_fua == BACKEND_FUA_NONE && c.can_cache == BACKEND_CACHE_NONE);
  }

  /* Everything there. */
  {
    struct backend b = {
      .pread = pread_, .pwrite = pwrite_, .flush = flush_, .trim = range_,
      .zero = range_, .extents = extents_, .cache = range_,
      .can_write = yes, .can_flush = yes, .can_trim = yes, .can_zero = yes,
      .can_fast_zero = yes, .can_extents = yes, .can_fua = fua_emulate,
      .can_cache = cache_native, .default_export = named, .block_size = bs,
    };

    c = caps_of (&b);
    assert (c.can_write && c.can_flush && c.can_trim && c.can_zero &&
            c.can_fast_zero && c.can_extents);
    assert (c.can_fua == BACKEND_FUA_EMULATE);
    assert (c.can_cache == BACKEND_CACHE_NATIVE);
    assert (strcmp (backend_get_default_export (&b, true), "ro") == 0);
    assert (backend_get_block_size (&b, NULL, &a, &p, &m) == 0 &&
            a == 512 && p == 4096 && m == 65536);

    /* FUA reaches the backend only when it does FUA natively. */
    assert (!backend_call_ok (&b, &c, false, BACKEND_CALL_PWRITE,
                              BACKEND_FLAG_FUA));
    b.can_fua = fua_native;
    c = caps_of (&b);
    assert (backend_call_ok (&b, &c, false, BACKEND_CALL_PWRITE,
                             BACKEND_FLAG_FUA));
    assert (backend_call_ok (&b, &c, false, BACKEND_CALL_TRIM,
                             BACKEND_FLAG_FUA));
    assert (backend_call_ok (&b, &c, false, BACKEND_CALL_ZERO,
                             BACKEND_FLAG_FUA | BACKEND_FLAG_MAY_TRIM |
                             BACKEND_FLAG_FAST_ZERO));
    /* Flags that do not belong to the call. */
    assert (!backend_call_ok (&b, &c, false, BACKEND_CALL_PREAD,
                              BACKEND_FLAG_FUA));
    assert (!backend_call_ok (&b, &c, false, BACKEND_CALL_PWRITE,
                              BACKEND_FLAG_MAY_TRIM));
    assert (!backend_call_ok (&b, &c, false, BACKEND_CALL_FLUSH,
                              BACKEND_FLAG_FUA));
    assert (!backend_call_ok (&b, &c, false, BACKEND_CALL_TRIM,
                              BACKEND_FLAG_REQ_ONE));
    assert (backend_call_ok (&b, &c, false, BACKEND_CALL_EXTENTS,
                             BACKEND_FLAG_REQ_ONE));
    assert (!backend_call_ok (&b, &c, false, BACKEND_CALL_EXTENTS,
                              BACKEND_FLAG_FUA));
    assert (!backend_call_ok (&b, &c, false, BACKEND_CALL_CACHE,
                              BACKEND_FLAG_FUA));
    assert (!backend_call_ok (&b, &c, false, BACKEND_CALL_PWRITE, 1u << 7));
    /* FAST_ZERO only when fast zero was advertised. */
    b.can_fast_zero = NULL;
    c = caps_of (&b);
    assert (!backend_call_ok (&b, &c, false, BACKEND_CALL_ZERO,
                              BACKEND_FLAG_FAST_ZERO));
    assert (backend_call_ok (&b, &c, false, BACKEND_CALL_ZERO,
                             BACKEND_FLAG_MAY_TRIM));
    /* No write-type call on a read-only handle. */
    assert (!backend_call_ok (&b, &c, true, BACKEND_CALL_PWRITE, 0));
    assert (!backend_call_ok (&b, &c, true, BACKEND_CALL_TRIM, 0));
    assert (!backend_call_ok (&b, &c, true, BACKEND_CALL_ZERO, 0));
    assert (backend_call_ok (&b, &c, true, BACKEND_CALL_FLUSH, 0));
    assert (backend_call_ok (&b, &c, true, BACKEND_CALL_PREAD, 0));
    /* Cache goes to the backend only when native. */
    assert (backend_call_ok (&b, &c, false, BACKEND_CALL_CACHE, 0));
  }

  /* A failing capability fails the whole question, errno kept. */
  {
    struct backend b = { .pread = pread_, .can_trim = fails };
    struct backend_caps cc;

    errno = 0;
    assert (backend_get_caps (&b, NULL, &cc) == -1 && errno == EIO);
  }

  printf ("capabilities: ok\n");
  return 0;
}
