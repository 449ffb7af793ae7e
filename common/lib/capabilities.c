/* The backend API's defaults and contract checks: see capabilities.h. */
#include <config.h>

#include <errno.h>
#include <stddef.h>

#include "backend.h"
#include "capabilities.h"

/* One capability: its callback's answer, dflt without one; -1 error. */
static int
ask (int (*fn) (void *), void *h, int dflt)
{
  return fn ? fn (h) : dflt;
}

int
backend_get_caps (const struct backend *b, void *h, struct backend_caps *c)
{
  int w, fl, tr, ze, fz, mc, ex, ro, fua, ca;

  if ((w = ask (b->can_write, h, b->pwrite != NULL)) == -1 ||
      (fl = ask (b->can_flush, h, 0)) == -1 ||
      (tr = ask (b->can_trim, h, 0)) == -1 ||
      (ze = ask (b->can_zero, h, 0)) == -1 ||
      (fz = ask (b->can_fast_zero, h, 0)) == -1 ||
      (mc = ask (b->can_multi_conn, h, 0)) == -1 ||
      (ex = ask (b->can_extents, h, 0)) == -1 ||
      (ro = ask (b->is_rotational, h, 0)) == -1 ||
      (fua = ask (b->can_fua, h, BACKEND_FUA_NONE)) == -1 ||
      (ca = ask (b->can_cache, h, BACKEND_CACHE_NONE)) == -1) {
    if (errno == 0)
      errno = EIO;
    return -1;
  }
  c->can_write = w && b->pwrite;
  c->can_flush = fl && b->flush;
  c->can_trim = tr && b->trim;
  c->can_zero = ze && b->zero;
  c->can_fast_zero = fz && c->can_zero;
  c->can_multi_conn = mc;
  c->can_extents = ex && b->extents;
  c->is_rotational = ro;
  if (fua < BACKEND_FUA_NONE || fua > BACKEND_FUA_NATIVE)
    fua = BACKEND_FUA_NONE;
  if (fua == BACKEND_FUA_EMULATE && !c->can_flush)
    fua = BACKEND_FUA_NONE;
  c->can_fua = fua;
  if (ca < BACKEND_CACHE_NONE || ca > BACKEND_CACHE_NATIVE)
    ca = BACKEND_CACHE_NONE;
  if (ca == BACKEND_CACHE_NATIVE && !b->cache)
    ca = BACKEND_CACHE_EMULATE;
  c->can_cache = ca;
  return 0;
}

int
backend_get_block_size (const struct backend *b, void *h, uint32_t *minimum,
                        uint32_t *preferred, uint32_t *maximum)
{
  *minimum = *preferred = *maximum = 0;
  return b->block_size ? b->block_size (h, minimum, preferred, maximum) : 0;
}

const char *
backend_get_default_export (const struct backend *b, bool readonly)
{
  const char *d = b->default_export ? b->default_export (readonly) : NULL;

  return d ? d : "";
}

bool
backend_call_ok (const struct backend *b, const struct backend_caps *c,
                 bool readonly, enum backend_call call, uint32_t flags)
{
  uint32_t fua = c->can_fua == BACKEND_FUA_NATIVE ? BACKEND_FLAG_FUA : 0;

  switch (call) {
  case BACKEND_CALL_PREAD:
    return b->pread && flags == 0;
  case BACKEND_CALL_PWRITE:
    return c->can_write && !readonly && (flags & ~fua) == 0;
  case BACKEND_CALL_FLUSH:
    return c->can_flush && flags == 0;
  case BACKEND_CALL_TRIM:
    return c->can_trim && !readonly && (flags & ~fua) == 0;
  case BACKEND_CALL_ZERO:
    return c->can_zero && !readonly &&
      (flags & ~(fua | BACKEND_FLAG_MAY_TRIM |
                 (c->can_fast_zero ? BACKEND_FLAG_FAST_ZERO : 0))) == 0;
  case BACKEND_CALL_EXTENTS:
    return c->can_extents && (flags & ~BACKEND_FLAG_REQ_ONE) == 0;
  case BACKEND_CALL_CACHE:
    return c->can_cache == BACKEND_CACHE_NATIVE && flags == 0;
  }
  return false;
}
