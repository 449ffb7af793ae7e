/* lz4 and zstd for data records; see compress.h for the contract. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include <lz4.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "backend.h"
#include "compress.h"

/* One thread's tools: each made when first needed. */
struct codec_ctx {
  ZSTD_CCtx *zc;
  ZSTD_DCtx *zd;
  void *lz4state;               /* LZ4_sizeofState () bytes */
};

/* Idle contexts beyond this many are freed (more threads than that at
 * once only make some of them allocate per call).
 */
#define POOL_MAX 64

struct cas_codec_pool {
  pthread_mutex_t lock;
  unsigned n;
  struct codec_ctx *idle[POOL_MAX];
};

static void
ctx_free (struct codec_ctx *x)
{
  if (x) {
    ZSTD_freeCCtx (x->zc);
    ZSTD_freeDCtx (x->zd);
    free (x->lz4state);
    free (x);
  }
}

struct cas_codec_pool *
cas_codec_pool_new (void)
{
  struct cas_codec_pool *pool = calloc (1, sizeof *pool);

  if (pool)
    pthread_mutex_init (&pool->lock, NULL);
  return pool;
}

void
cas_codec_pool_free (struct cas_codec_pool *pool)
{
  unsigned i;

  if (!pool)
    return;
  for (i = 0; i < pool->n; i++)
    ctx_free (pool->idle[i]);
  pthread_mutex_destroy (&pool->lock);
  free (pool);
}

static struct codec_ctx *
ctx_get (struct cas_codec_pool *pool)
{
  struct codec_ctx *x = NULL;

  if (pool) {
    pthread_mutex_lock (&pool->lock);
    if (pool->n)
      x = pool->idle[--pool->n];
    pthread_mutex_unlock (&pool->lock);
  }
  if (x == NULL)
    x = calloc (1, sizeof *x);
  return x;
}

static void
ctx_put (struct cas_codec_pool *pool, struct codec_ctx *x)
{
  if (pool) {
    pthread_mutex_lock (&pool->lock);
    if (pool->n < POOL_MAX) {
      pool->idle[pool->n++] = x;
      x = NULL;
    }
    pthread_mutex_unlock (&pool->lock);
  }
  ctx_free (x);
}

/* A context with its zstd decoder made: NULL with errno ENOMEM. */
static struct codec_ctx *
zstd_decoder_get (struct cas_codec_pool *pool)
{
  struct codec_ctx *x = ctx_get (pool);

  if (x && x->zd == NULL && (x->zd = ZSTD_createDCtx ()) == NULL) {
    ctx_put (pool, x);
    x = NULL;
  }
  if (x == NULL)
    errno = ENOMEM;
  return x;
}

int
cas_compress (struct cas_codec_pool *pool, const struct cas_compression *c,
              const void *src, uint32_t len, void *dst, uint32_t room,
              uint32_t *out)
{
  struct codec_ctx *x;
  int ret = -1;

  *out = 0;
  if (len > (uint32_t) LZ4_MAX_INPUT_SIZE) {
    errno = EINVAL;
    return -1;
  }
  x = ctx_get (pool);
  if (x == NULL)
    goto nomem;
  switch (c->codec) {
  case CAS_CODEC_LZ4: {
    int n;

    if (x->lz4state == NULL &&
        (x->lz4state = malloc (LZ4_sizeofState ())) == NULL)
      goto nomem;
    /* 0: it does not fit in room (lz4 stops as soon as it knows). */
    n = LZ4_compress_fast_extState (x->lz4state, src, dst, len, room, 1);
    *out = n > 0 ? (uint32_t) n : 0;
    ret = 0;
    break;
  }
  case CAS_CODEC_ZSTD: {
    size_t n;

    if (x->zc == NULL && (x->zc = ZSTD_createCCtx ()) == NULL)
      goto nomem;
    n = ZSTD_compressCCtx (x->zc, dst, room, src, len, c->level);
    if (!ZSTD_isError (n))
      *out = n;
    else if (ZSTD_getErrorCode (n) != ZSTD_error_dstSize_tooSmall) {
      backend_error ("cas: zstd compression failed: %s",
                     ZSTD_getErrorName (n));
      errno = EIO;
      goto out;
    }
    ret = 0;
    break;
  }
  default:
    backend_error ("cas: unknown compression codec %u", c->codec);
    errno = EINVAL;
    goto out;
  }
 out:
  if (x)
    ctx_put (pool, x);
  return ret;
 nomem:
  backend_error ("cas: compression: out of memory");
  errno = ENOMEM;
  goto out;
}

int
cas_decompress_prefix (struct cas_codec_pool *pool, uint8_t codec,
                       const void *src, uint32_t len, void *dst,
                       uint32_t want)
{
  struct codec_ctx *x = NULL;
  int ret = -1;

  switch (codec) {
  case CAS_CODEC_LZ4: {
    /* Stops once want bytes are out; never writes past dst + want. */
    int n = LZ4_decompress_safe_partial (src, dst, len, want, want);
    if (n < 0 || (uint32_t) n != want) {
      errno = EIO;
      return -1;
    }
    return 0;
  }
  case CAS_CODEC_ZSTD: {
    ZSTD_inBuffer in = { src, len, 0 };
    ZSTD_outBuffer out = { dst, want, 0 };

    x = zstd_decoder_get (pool);
    if (x == NULL)
      goto out;
    ZSTD_DCtx_reset (x->zd, ZSTD_reset_session_only);
    /* Until the output is full; a frame that ends first, an error or a
     * call that makes no progress is damage.
     */
    while (out.pos < want) {
      size_t before_in = in.pos, before_out = out.pos;
      size_t r = ZSTD_decompressStream (x->zd, &out, &in);

      if (ZSTD_isError (r) || (r == 0 && out.pos < want) ||
          (in.pos == before_in && out.pos == before_out)) {
        errno = EIO;
        goto out;
      }
    }
    ret = 0;
    break;
  }
  default:
    errno = EIO;
    return -1;
  }
 out:
  if (x) {
    /* A session cut short leaves state behind: the next user resets. */
    ctx_put (pool, x);
  }
  return ret;
}

int
cas_decompress (struct cas_codec_pool *pool, uint8_t codec, const void *src,
                uint32_t len, void *dst, uint32_t raw_length)
{
  struct codec_ctx *x = NULL;
  int ret = -1;

  switch (codec) {
  case CAS_CODEC_LZ4: {
    /* The safe decoder: never reads past src + len nor writes past
     * dst + raw_length, whatever the bytes.
     */
    int n = LZ4_decompress_safe (src, dst, len, raw_length);
    if (n < 0 || (uint32_t) n != raw_length) {
      errno = EIO;
      return -1;
    }
    return 0;
  }
  case CAS_CODEC_ZSTD: {
    size_t n;

    x = zstd_decoder_get (pool);
    if (x == NULL)
      goto out;
    n = ZSTD_decompressDCtx (x->zd, dst, raw_length, src, len);
    if (ZSTD_isError (n) || n != raw_length) {
      errno = EIO;
      goto out;
    }
    ret = 0;
    break;
  }
  default:
    errno = EIO;
    return -1;
  }
 out:
  if (x)
    ctx_put (pool, x);
  return ret;
}
