/* NBD commands: validation (before any backend call), execution against
 * the backend, and the replies.
 *
 * Validation gives the spec's errors: EINVAL for unknown commands and
 * flags, flags not valid for the command or not advertised, commands not
 * advertised, zero lengths, misaligned or oversized requests and reads
 * past the end; ENOSPC for writes and zeroing past the end; EPERM for
 * write-type commands on a read-only export; EOVERFLOW for a DF read too
 * large to send in one chunk.  The backend therefore only ever sees
 * valid requests (backend.h promises that).
 *
 * Emulation: FUA becomes a flush after the write when the backend says
 * BACKEND_FUA_EMULATE; CACHE becomes a read into scratch memory for
 * BACKEND_CACHE_EMULATE; WRITE_ZEROES becomes writes of zeroes when the
 * backend cannot zero (and FAST_ZERO then fails at once with ENOTSUP).
 * Backend calls for data are split at the backend's maximum block size.
 *
 * Replies are built in the request's own scratch memory and written
 * with one writev; read data goes to a buffer of the executing thread.
 * No allocation happens per request once the pools are warm.  With
 * structured replies a large read sends the 64 KiB pieces that read as
 * zeroes as NBD_REPLY_TYPE_OFFSET_HOLE chunks instead of data.
 *
 * Thread safety: called from worker threads (and the reader) with the
 * request owned by the caller; the backend is PARALLEL.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "backend.h"
#include "capabilities.h"
#include "minmax.h"
#include "nbd-protocol.h"
#include "server.h"
#define CHECK CONN_CHECK_CALL

/* Structured reads at least this big send zero runs as holes. */
#define SPARSE_READ_MIN  (64u * 1024)
#define ZERO_GRAIN       (64u * 1024)
/* At most this many chunks in one sparse read reply. */
#define MAX_READ_CHUNKS  64
#define ZERO_BUF_SIZE    (1u * 1024 * 1024)

static char zero_buf[ZERO_BUF_SIZE];    /* never written */

/* Read data lives in a buffer of the executing thread, not of the
 * request: memory (and first-touch page faults) then scale with the
 * number of threads, not with how many reads a client queues.  Buffers
 * above THREAD_BUF_KEEP are given back after each request.
 */
#define THREAD_BUF_KEEP  (4u * 1024 * 1024)
static __thread char *tbuf;
static __thread size_t tbuf_cap;

static char *
thread_buf (size_t n)
{
  if (n > tbuf_cap) {
    char *p = malloc (n);

    if (p == NULL)
      return NULL;
    free (tbuf);
    tbuf = p;
    tbuf_cap = n;
  }
  return tbuf;
}

void
request_thread_exit (void)
{
  free (tbuf);
  tbuf = NULL;
  tbuf_cap = 0;
}

/* After a request: a buffer over THREAD_BUF_KEEP is not kept. */
static void
thread_buf_trim (void)
{
  if (tbuf_cap > THREAD_BUF_KEEP)
    request_thread_exit ();
}

uint32_t
nbd_errno (int err)
{
  switch (err) {
  case 0: return NBD_SUCCESS;
  case EPERM: case EROFS: return NBD_EPERM;
  case EIO: return NBD_EIO;
  case ENOMEM: return NBD_ENOMEM;
  case EINVAL: return NBD_EINVAL;
  case ENOSPC: case EDQUOT: case EFBIG: return NBD_ENOSPC;
  case EOVERFLOW: return NBD_EOVERFLOW;
  case ESHUTDOWN: return NBD_ESHUTDOWN;
  /* ENOTSUP is only for FAST_ZERO, handled by the caller. */
  case ENOTSUP:
#if EOPNOTSUPP != ENOTSUP
  case EOPNOTSUPP:
#endif
    return NBD_EINVAL;
  default: return NBD_EIO;
  }
}

static void
fail (struct request *r, uint32_t err, const char *msg)
{
  r->error = err;
  r->errmsg = msg;
}

void
request_validate (struct conn *c, struct request *r)
{
  const uint16_t known = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE |
    NBD_CMD_FLAG_DF | NBD_CMD_FLAG_REQ_ONE | NBD_CMD_FLAG_FAST_ZERO;
  uint16_t f = r->flags;
  bool is_write = false;

  switch (r->type) {
  case NBD_CMD_WRITE: case NBD_CMD_TRIM: case NBD_CMD_WRITE_ZEROES:
    is_write = true;
    break;
  case NBD_CMD_READ: case NBD_CMD_FLUSH: case NBD_CMD_CACHE:
  case NBD_CMD_BLOCK_STATUS:
    break;
  default:
    return fail (r, NBD_EINVAL, "unknown command");
  }
  if (f & ~known)
    return fail (r, NBD_EINVAL, "unknown command flags");
  if (is_write && c->readonly)
    return fail (r, NBD_EPERM, "the export is read-only");

  /* Commands the client was not told it may use. */
  if (r->type == NBD_CMD_FLUSH && !(c->eflags & NBD_FLAG_SEND_FLUSH))
    return fail (r, NBD_EINVAL, "flush is not supported");
  if (r->type == NBD_CMD_TRIM && !(c->eflags & NBD_FLAG_SEND_TRIM))
    return fail (r, NBD_EINVAL, "trim is not supported");
  if (r->type == NBD_CMD_CACHE && !(c->eflags & NBD_FLAG_SEND_CACHE))
    return fail (r, NBD_EINVAL, "cache is not supported");
  if (r->type == NBD_CMD_BLOCK_STATUS && !c->meta_alloc &&
      c->n_meta_names == 0)
    return fail (r, NBD_EINVAL, "no metadata context was negotiated");

  /* Flags: each valid only where the spec says, and only if advertised. */
  if ((f & NBD_CMD_FLAG_FUA) && !(c->eflags & NBD_FLAG_SEND_FUA))
    return fail (r, NBD_EINVAL, "FUA was not negotiated");
  if ((f & NBD_CMD_FLAG_NO_HOLE) && r->type != NBD_CMD_WRITE_ZEROES)
    return fail (r, NBD_EINVAL, "NO_HOLE is only valid for WRITE_ZEROES");
  if ((f & NBD_CMD_FLAG_FAST_ZERO) &&
      (r->type != NBD_CMD_WRITE_ZEROES ||
       !(c->eflags & NBD_FLAG_SEND_FAST_ZERO)))
    return fail (r, NBD_EINVAL, "FAST_ZERO is only valid for WRITE_ZEROES");
  if ((f & NBD_CMD_FLAG_DF) &&
      (r->type != NBD_CMD_READ || !(c->eflags & NBD_FLAG_SEND_DF)))
    return fail (r, NBD_EINVAL, "DF is only valid for READ with "
                 "structured replies");
  if ((f & NBD_CMD_FLAG_REQ_ONE) && r->type != NBD_CMD_BLOCK_STATUS)
    return fail (r, NBD_EINVAL, "REQ_ONE is only valid for BLOCK_STATUS");

  if (r->type == NBD_CMD_FLUSH) {
    if (r->offset != 0 || r->count != 0)
      return fail (r, NBD_EINVAL, "flush offset and length must be zero");
    return;
  }

  if (r->count == 0)
    return fail (r, NBD_EINVAL, "zero-length request");
  if (r->offset > c->size || r->count > c->size - r->offset) {
    if (r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES)
      return fail (r, NBD_ENOSPC, "request beyond the end of the export");
    return fail (r, NBD_EINVAL, "request beyond the end of the export");
  }
  if (c->min_block > 1 &&
      (r->offset % c->min_block || r->count % c->min_block))
    return fail (r, NBD_EINVAL, "request not aligned to the minimum "
                 "block size");
  if ((r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE) &&
      r->count > c->max_block) {
    if (f & NBD_CMD_FLAG_DF)
      return fail (r, NBD_EOVERFLOW, "read too large for one chunk");
    return fail (r, NBD_EINVAL, "request larger than the maximum "
                 "block size");
  }
}

/* Replies. */

/* Grow the request's reply scratch to at least len bytes. */
static char *
rep_buf (struct request *r, size_t len)
{
  if (len > r->repcap) {
    size_t ncap = len < 256 ? 256 : len;
    char *n = realloc (r->rep, ncap);

    if (n == NULL)
      return NULL;
    r->rep = n;
    r->repcap = ncap;
  }
  return r->rep;
}

static void
put_chunk_header (char *p, const struct request *r, uint16_t flags,
                  uint16_t type, uint32_t length)
{
  struct nbd_structured_reply h;

  h.magic = htobe32 (NBD_STRUCTURED_REPLY_MAGIC);
  h.flags = htobe16 (flags);
  h.type = htobe16 (type);
  h.cookie = r->cookie;
  h.length = htobe32 (length);
  memcpy (p, &h, sizeof h);
}

static void
send_simple (struct conn *c, struct request *r, uint32_t err,
             const void *data, size_t len)
{
  struct nbd_simple_reply h;
  struct iovec iov[2];

  h.magic = htobe32 (NBD_SIMPLE_REPLY_MAGIC);
  h.error = htobe32 (err);
  h.cookie = r->cookie;
  iov[0] = (struct iovec) { &h, sizeof h };
  iov[1] = (struct iovec) { (void *) data, len };
  conn_writev (c, iov, len ? 2 : 1);
}

static void
send_error (struct conn *c, struct request *r, uint32_t err, const char *msg)
{
  struct nbd_chunk_error e;
  char buf[sizeof (struct nbd_structured_reply) + sizeof e];
  struct iovec iov[2];
  size_t len;

  debug ("%s: request type %u offset %" PRIu64 " count %" PRIu32
         ": error %" PRIu32 ": %s", c->name, r->type, r->offset, r->count,
         err, msg ? msg : "");
  if (!c->structured) {
    send_simple (c, r, err, NULL, 0);
    return;
  }
  len = msg ? strlen (msg) : 0;
  if (len > NBD_MAX_STRING)
    len = NBD_MAX_STRING;
  put_chunk_header (buf, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                    sizeof e + len);
  e.error = htobe32 (err);
  e.len = htobe16 (len);
  memcpy (buf + sizeof (struct nbd_structured_reply), &e, sizeof e);
  iov[0] = (struct iovec) { buf, sizeof buf };
  iov[1] = (struct iovec) { (void *) msg, len };
  conn_writev (c, iov, len ? 2 : 1);
}

/* Report a failed backend call. */
static void
send_backend_error (struct conn *c, struct request *r, int err)
{
  const char *msg = backend_error_message ();
  uint32_t nerr = nbd_errno (err);

  if ((err == ENOTSUP || err == EOPNOTSUPP) &&
      (r->flags & NBD_CMD_FLAG_FAST_ZERO))
    nerr = NBD_ENOTSUP;
  send_error (c, r, nerr, msg ? msg : strerror (err));
}

/* Backend calls, split at the backend's maximum. */

static uint32_t
piece (struct conn *c, uint32_t count)
{
  return c->backend_max && count > c->backend_max ? c->backend_max : count;
}

static int
be_pread (struct conn *c, char *buf, uint32_t count, uint64_t off)
{
  while (count > 0) {
    uint32_t n = piece (c, count);

    CHECK (c, BACKEND_CALL_PREAD, 0);
    if (B->pread (c->handle, buf, n, off, 0) == -1)
      return -1;
    buf += n;
    off += n;
    count -= n;
  }
  return 0;
}

static int
be_pwrite (struct conn *c, const char *buf, uint32_t count, uint64_t off,
           uint32_t flags)
{
  while (count > 0) {
    uint32_t n = piece (c, count);

    CHECK (c, BACKEND_CALL_PWRITE, flags);
    if (B->pwrite (c->handle, buf, n, off, flags) == -1)
      return -1;
    buf += n;
    off += n;
    count -= n;
  }
  return 0;
}

/* FUA: native flag for the backend, or a flush afterwards. */
static uint32_t
fua_flag (struct conn *c, struct request *r)
{
  return (r->flags & NBD_CMD_FLAG_FUA) && c->caps.can_fua == BACKEND_FUA_NATIVE
    ? BACKEND_FLAG_FUA : 0;
}

static int
fua_finish (struct conn *c, struct request *r)
{
  if ((r->flags & NBD_CMD_FLAG_FUA) && c->caps.can_fua == BACKEND_FUA_EMULATE) {
    CHECK (c, BACKEND_CALL_FLUSH, 0);
    return B->flush (c->handle, 0);
  }
  return 0;
}

static int
write_zeroes_emulated (struct conn *c, uint32_t count, uint64_t off,
                       uint32_t flags)
{
  while (count > 0) {
    uint32_t n = MIN (count, ZERO_BUF_SIZE);

    if (be_pwrite (c, zero_buf, n, off, flags) == -1)
      return -1;
    off += n;
    count -= n;
  }
  return 0;
}

static int
do_zero (struct conn *c, struct request *r)
{
  bool fast = r->flags & NBD_CMD_FLAG_FAST_ZERO;
  uint32_t flags = fua_flag (c, r);

  if (fast && !(c->caps.can_zero && c->caps.can_fast_zero)) {
    errno = ENOTSUP;
    return -1;
  }
  if (!(r->flags & NBD_CMD_FLAG_NO_HOLE))
    flags |= BACKEND_FLAG_MAY_TRIM;
  if (fast)
    flags |= BACKEND_FLAG_FAST_ZERO;
  if (c->caps.can_zero) {
    CHECK (c, BACKEND_CALL_ZERO, flags);
    if (B->zero (c->handle, r->count, r->offset, flags) == 0)
      return 0;
    if ((errno != ENOTSUP && errno != EOPNOTSUPP) || fast)
      return -1;
    backend_error_clear ();
  }
  return write_zeroes_emulated (c, r->count, r->offset,
                                flags & BACKEND_FLAG_FUA);
}

static int
do_cache (struct conn *c, struct request *r)
{
  uint64_t off = r->offset;
  uint32_t count = r->count;
  uint32_t chunk = MIN (count, THREAD_BUF_KEEP);
  char *buf;

  if (c->caps.can_cache == BACKEND_CACHE_NATIVE) {
    CHECK (c, BACKEND_CALL_CACHE, 0);
    return B->cache (c->handle, count, off, 0);
  }
  if ((buf = thread_buf (chunk)) == NULL)
    return -1;
  while (count > 0) {
    uint32_t n = MIN (count, chunk);

    if (be_pread (c, buf, n, off) == -1)
      return -1;
    off += n;
    count -= n;
  }
  return 0;
}

/* One BLOCK_STATUS chunk: context id's extents in e.  done: the last. */
static int
send_status_chunk (struct conn *c, struct request *r, uint32_t context,
                   bool done)
{
  struct backend_extents *e = &r->ex;
  const size_t hl = sizeof (struct nbd_structured_reply);
  uint32_t id = htobe32 (context);
  size_t i, len;
  char *p;

  /* No information is the same as flags 0 ("allocated data" for
   * base:allocation, "not set" for any other context).
   */
  if (e->v.len == 0 &&
      backend_add_extent (e, r->offset, r->count, 0) == -1) {
    send_backend_error (c, r, errno);
    return -1;
  }
  len = hl + 4 + e->v.len * sizeof (struct nbd_block_descriptor);
  p = rep_buf (r, len);
  if (p == NULL) {
    send_error (c, r, NBD_ENOMEM, "out of memory for the reply");
    return -1;
  }
  put_chunk_header (p, r, done ? NBD_REPLY_FLAG_DONE : 0,
                    NBD_REPLY_TYPE_BLOCK_STATUS, len - hl);
  memcpy (p + hl, &id, 4);
  for (i = 0; i < e->v.len; i++) {
    struct nbd_block_descriptor d;

    d.length = htobe32 ((uint32_t) e->v.ptr[i].length);
    d.status_flags = htobe32 (e->v.ptr[i].type);
    memcpy (p + hl + 4 + i * sizeof d, &d, sizeof d);
  }
  conn_write (c, p, len);
  return 0;
}

/* One chunk per selected context: base:allocation (id 1), then the
 * backend's (ids 2, 3, ...); the last one carries the DONE flag.
 */
static void
reply_block_status (struct conn *c, struct request *r)
{
  bool req_one = r->flags & NBD_CMD_FLAG_REQ_ONE;
  uint32_t flags = req_one ? BACKEND_FLAG_REQ_ONE : 0, i;
  struct backend_extents *e = &r->ex;

  if (c->meta_alloc) {
    extents_reset (e, r->offset, r->offset + r->count, req_one);
    if (c->caps.can_extents) {
      CHECK (c, BACKEND_CALL_EXTENTS, flags);
      if (B->extents (c->handle, r->count, r->offset, flags, e) == -1) {
        send_backend_error (c, r, errno);
        return;
      }
    }
    if (send_status_chunk (c, r, 1, c->n_meta_names == 0) == -1)
      return;
  }
  for (i = 0; i < c->n_meta_names; i++) {
    extents_reset (e, r->offset, r->offset + r->count, req_one);
    if (B->meta_extents (c->handle, c->meta_names[i], r->count, r->offset,
                         flags, e) == -1) {
      send_backend_error (c, r, errno);
      return;
    }
    if (send_status_chunk (c, r, i + 2, i + 1 == c->n_meta_names) == -1)
      return;
  }
}

static bool
is_zero (const char *p, size_t len)
{
  /* The first bytes decide almost every data block at once. */
  return p[0] == 0 && memcmp (p, p + 1, len - 1) == 0;
}

/* A structured read of data already in buf: runs of ZERO_GRAIN-sized
 * pieces that are all zero go out as NBD_REPLY_TYPE_OFFSET_HOLE chunks,
 * the rest as data.  Scanning costs far less than sending the zeroes,
 * and asking the backend for extents instead would add a call (and, on
 * some file systems, a slow scan) to every read.  Returns 1 if it
 * answered, 0 if the read is one data chunk after all.
 */
static int
reply_sparse_read (struct conn *c, struct request *r, const char *buf)
{
  struct { uint32_t off; uint32_t len; bool zero; } ch[MAX_READ_CHUNKS];
  struct iovec iov[2 * MAX_READ_CHUNKS];
  const size_t hl = sizeof (struct nbd_structured_reply);
  size_t n = 0, i, k = 0;
  uint32_t pos;
  char *p;

  for (pos = 0; pos < r->count; ) {
    uint32_t len = MIN (r->count - pos, ZERO_GRAIN);
    bool zero = is_zero (buf + pos, len);

    if (n > 0 && ch[n - 1].zero == zero)
      ch[n - 1].len += len;
    else if (n == MAX_READ_CHUNKS) {
      ch[n - 1].zero = false;   /* too fragmented: send the rest as data */
      ch[n - 1].len = r->count - ch[n - 1].off;
      break;
    }
    else
      ch[n++] = (typeof (ch[0])) { pos, len, zero };
    pos += len;
  }
  if (n == 1 && !ch[0].zero)
    return 0;

  p = rep_buf (r, n * (hl + 12));
  if (p == NULL)
    return 0;
  for (i = 0; i < n; i++) {
    uint16_t flags = i == n - 1 ? NBD_REPLY_FLAG_DONE : 0;
    char *h = p + i * (hl + 12);
    uint64_t off = htobe64 (r->offset + ch[i].off);

    if (ch[i].zero) {
      uint32_t len = htobe32 (ch[i].len);

      put_chunk_header (h, r, flags, NBD_REPLY_TYPE_OFFSET_HOLE, 12);
      memcpy (h + hl, &off, 8);
      memcpy (h + hl + 8, &len, 4);
      iov[k++] = (struct iovec) { h, hl + 12 };
    }
    else {
      put_chunk_header (h, r, flags, NBD_REPLY_TYPE_OFFSET_DATA,
                        8 + ch[i].len);
      memcpy (h + hl, &off, 8);
      iov[k++] = (struct iovec) { h, hl + 8 };
      iov[k++] = (struct iovec) { (char *) buf + ch[i].off, ch[i].len };
    }
  }
  conn_writev (c, iov, k);
  return 1;
}

static void
reply_read (struct conn *c, struct request *r)
{
  const size_t hl = sizeof (struct nbd_structured_reply);
  char h[sizeof (struct nbd_structured_reply) + 8];
  struct iovec iov[2];
  uint64_t off;
  char *buf = thread_buf (r->count);

  if (buf == NULL) {
    send_error (c, r, NBD_ENOMEM, "out of memory for the read buffer");
    return;
  }
  if (be_pread (c, buf, r->count, r->offset) == -1) {
    send_backend_error (c, r, errno);
    return;
  }
  if (!c->structured) {
    send_simple (c, r, 0, buf, r->count);
    return;
  }
  if (r->count >= SPARSE_READ_MIN && !(r->flags & NBD_CMD_FLAG_DF) &&
      reply_sparse_read (c, r, buf))
    return;
  put_chunk_header (h, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
                    8 + r->count);
  off = htobe64 (r->offset);
  memcpy (h + hl, &off, 8);
  iov[0] = (struct iovec) { h, sizeof h };
  iov[1] = (struct iovec) { buf, r->count };
  conn_writev (c, iov, 2);
}

void
request_execute (struct conn *c, struct request *r)
{
  int ret;

  if (r->error) {
    send_error (c, r, r->error, r->errmsg);
    return;
  }
  backend_error_clear ();
  switch (r->type) {
  case NBD_CMD_READ:
    reply_read (c, r);
    thread_buf_trim ();
    return;
  case NBD_CMD_BLOCK_STATUS:
    reply_block_status (c, r);
    return;
  case NBD_CMD_WRITE:
    ret = be_pwrite (c, r->buf, r->count, r->offset, fua_flag (c, r));
    if (ret == 0)
      atomic_store (&c->dirty, true);
    if (ret == 0)
      ret = fua_finish (c, r);
    break;
  case NBD_CMD_FLUSH:
    atomic_store (&c->dirty, false);
    CHECK (c, BACKEND_CALL_FLUSH, 0);
    ret = B->flush (c->handle, 0);
    if (ret == -1)
      atomic_store (&c->dirty, true);
    break;
  case NBD_CMD_TRIM:
    CHECK (c, BACKEND_CALL_TRIM, fua_flag (c, r));
    ret = B->trim (c->handle, r->count, r->offset, fua_flag (c, r));
    /* Trim is advisory: a backend that cannot do it here is not an
     * error the client needs to see.
     */
    if (ret == -1 && (errno == ENOTSUP || errno == EOPNOTSUPP))
      ret = 0;
    if (ret == 0)
      atomic_store (&c->dirty, true);
    if (ret == 0)
      ret = fua_finish (c, r);
    break;
  case NBD_CMD_WRITE_ZEROES:
    ret = do_zero (c, r);
    if (ret == 0)
      atomic_store (&c->dirty, true);
    if (ret == 0)
      ret = fua_finish (c, r);
    break;
  case NBD_CMD_CACHE:
    ret = do_cache (c, r);
    thread_buf_trim ();
    break;
  default:
    abort ();                   /* request_validate let it through */
  }
  if (ret == -1)
    send_backend_error (c, r, errno);
  else
    send_simple (c, r, 0, NULL, 0);
}
