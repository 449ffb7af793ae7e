/* The chunk store on Ceph RADOS: one object per chunk (FORMAT.md, "RADOS"
 * says why this layout and not packs).  See chunkstore.h and rados.h for
 * the contract.
 *
 * Object "chunk.<hex of the hash>" holds the 64-byte record header of the
 * pack format and the payload: self-describing, so enumerate() (fsck) can
 * check an object without any index, and a read is checked exactly as a
 * pack record is.
 *
 * put: a chunk this client knows to be stored (the known-names cache)
 * costs nothing.  Otherwise one asynchronous write op {create exclusive,
 * write_full}: the OSD answers -EEXIST when another writer (any host)
 * stored it first, in the same round trip -- the dedup check costs no
 * extra one.  An object found that way is then touched (a small write
 * that gives it a new version) before it is checked and trusted: a
 * garbage collector removes a chunk only at the version it listed, so
 * the touch keeps it (FORMAT.md, "Garbage collection on RADOS").  Up to max_inflight writes are in flight; put() waits for a
 * slot.  Each write keeps its own copy of the record until it completed,
 * so that (1) get() of a chunk still in flight is served from memory, not
 * from an object that may not exist yet, and (2) a write that failed
 * (a timeout while an OSD restarts) is sent again by the next sync()
 * instead of being lost.  While a failed write waits for that retry, put()
 * refuses new chunks (the caller's write fails, nothing is acknowledged
 * that is not stored), so memory stays bounded.
 *
 * sync: waits until every write submitted before it completed, retries
 * the failed ones once, and fails (-1, the first error) if any is still
 * failed.  A completed write is committed on every replica (librados'
 * "complete" is the commit), so nothing more is needed for durability.
 *
 * The known-names cache is emptied when a collector asks (the notify
 * "gc": cas_radosstore_forget_known) and whenever this process takes a
 * writer lease; a name enters it only from a write or touch submitted
 * since the last emptying.  A chunk read is never entered: reading an
 * object does not keep a collector from removing it.
 *
 * Healing: a get() that finds a damaged object forgets the name from the
 * cache and remembers it as damaged; the next put() of that chunk then
 * overwrites the object (write_full without the exclusive create) instead
 * of deduplicating against the damage.  Overwriting an object with the
 * same bytes is harmless if another host heals it too.
 *
 * Locks: rs->lock guards the write lists and counters; it is never held
 * across a synchronous librados call (submitting an aio op does not wait
 * for the cluster).  The known-names cache has its own sharded locks,
 * taken after rs->lock, never before.  librados runs the completion
 * callbacks in its own thread; they only move a write between lists
 * (completions and ops are released by the caller threads: reap()).
 */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "chunkstore.h"
#include "cleanup.h"
#include "crc32c.h"
#include "format.h"
#include "le.h"
#include "rados.h"

#define HDR CAS_RECORD_HEADER_SIZE

/* ---- names known to be stored: a set-associative cache of full hashes.
 * A hit skips the write entirely, so it must never be wrong: full 32-byte
 * names, no partial keys.  A miss only costs the EEXIST round trip.
 */
#define KNOWN_WAYS 4
#define KNOWN_LOCKS 64

struct known {
  size_t nsets;                         /* power of two */
  struct cas_hash (*sets)[KNOWN_WAYS];  /* all-zero hash: empty way */
  pthread_mutex_t locks[KNOWN_LOCKS];
  unsigned victim[KNOWN_LOCKS];         /* round-robin replacement */
  /* Changed (under every lock) each time the cache is emptied: a write
   * submitted before adds nothing when it completes.
   */
  _Atomic uint64_t epoch;
};

static size_t
known_set (const struct known *k, const struct cas_hash *h)
{
  return get_le64 (h->b) & (k->nsets - 1);
}

static struct known *
known_new (size_t entries)
{
  struct known *k = calloc (1, sizeof *k);
  size_t i;

  if (k == NULL)
    return NULL;
  k->nsets = 1;
  while (k->nsets * KNOWN_WAYS < entries)
    k->nsets *= 2;
  k->sets = calloc (k->nsets, sizeof *k->sets);
  if (k->sets == NULL) {
    free (k);
    return NULL;
  }
  for (i = 0; i < KNOWN_LOCKS; i++)
    pthread_mutex_init (&k->locks[i], NULL);
  return k;
}

static void
known_free (struct known *k)
{
  size_t i;

  if (k == NULL)
    return;
  for (i = 0; i < KNOWN_LOCKS; i++)
    pthread_mutex_destroy (&k->locks[i]);
  free (k->sets);
  free (k);
}

static bool
known_has (struct known *k, const struct cas_hash *h)
{
  size_t s = known_set (k, h);
  int i;
  SCOPED_LOCK (&k->locks[s % KNOWN_LOCKS]);

  for (i = 0; i < KNOWN_WAYS; i++)
    if (cas_hash_equal (&k->sets[s][i], h))
      return true;
  return false;
}

/* Add h, learnt from an operation submitted in epoch: nothing if the
 * cache was emptied since.
 */
static void
known_add (struct known *k, const struct cas_hash *h, uint64_t epoch)
{
  size_t s = known_set (k, h);
  unsigned l = s % KNOWN_LOCKS;
  int i;
  SCOPED_LOCK (&k->locks[l]);

  if (epoch != atomic_load (&k->epoch))
    return;
  for (i = 0; i < KNOWN_WAYS; i++)
    if (cas_hash_equal (&k->sets[s][i], h))
      return;
  for (i = 0; i < KNOWN_WAYS; i++)
    if (cas_hash_is_zero (&k->sets[s][i])) {
      k->sets[s][i] = *h;
      return;
    }
  k->sets[s][k->victim[l]++ % KNOWN_WAYS] = *h;
}

/* Empty the cache; every operation in flight adds nothing either. */
static void
known_forget_all (struct known *k)
{
  unsigned i;

  for (i = 0; i < KNOWN_LOCKS; i++)
    pthread_mutex_lock (&k->locks[i]);
  atomic_fetch_add (&k->epoch, 1);
  memset (k->sets, 0, k->nsets * sizeof *k->sets);
  for (i = KNOWN_LOCKS; i > 0; i--)
    pthread_mutex_unlock (&k->locks[i - 1]);
}

static void
known_remove (struct known *k, const struct cas_hash *h)
{
  size_t s = known_set (k, h);
  int i;
  SCOPED_LOCK (&k->locks[s % KNOWN_LOCKS]);

  for (i = 0; i < KNOWN_WAYS; i++)
    if (cas_hash_equal (&k->sets[s][i], h))
      memset (&k->sets[s][i], 0, sizeof k->sets[s][i]);
}

/* ---- writes ---- */

struct radosstore;

/* A put's stages: WRITE {create exclusive, write_full}.  On EEXIST,
 * TOUCH the object there {assert_exists, setxattr}: a new version, which
 * a collector that listed the object before will not remove (one that
 * removed it already makes the touch fail with ENOENT: WRITE again,
 * without the exclusive create).  Then VERIFY it before trusting it for
 * dedup: a read op {stat, the 64-byte header, the OSD's CRC32C of the
 * payload}, so no payload crosses the network.  A damaged object is
 * overwritten (WRITE again, without the exclusive create): healing.  A
 * retry by sync starts again at WRITE.
 */
enum write_stage { STAGE_WRITE, STAGE_TOUCH, STAGE_VERIFY };
#define TOUCH_XATTR "nbdcas.touch"

struct write {
  struct write *prev, *next;   /* on one of rs->inflight, done, failed */
  struct radosstore *rs;
  struct cas_hash hash;
  uint64_t seq;                /* order of first submission */
  enum write_stage stage;
  bool overwrite;              /* heal a damaged object, or store one a
                                  collector removed: no exclusive create */
  uint64_t known_epoch;        /* the cache's epoch when it was submitted */
  int result;                  /* librados result, once complete */
  /* librados objects of the stages sent in this attempt (at most WRITE,
   * TOUCH, VERIFY, WRITE), released by a caller thread, never in a
   * callback.
   */
  rados_completion_t comps[4];
  unsigned ncomps;
  rados_write_op_t wops[3];
  unsigned nwops;
  rados_read_op_t vop;
  /* VERIFY's results */
  uint64_t vsize;
  size_t vhdr_got;
  int vstat_rv, vhdr_rv, vsum_rv;
  uint8_t vhdr[HDR];
  uint8_t vsum[8];             /* le32 count, le32 raw CRC32C */
  uint32_t crc;                /* CRC32C of the payload */
  uint32_t len;                /* payload bytes */
  uint8_t rec[];               /* record header + payload */
};

struct wlist {
  struct write *head, *tail;
  unsigned n;
};

static void
wlist_append (struct wlist *l, struct write *w)
{
  w->next = NULL;
  w->prev = l->tail;
  if (l->tail)
    l->tail->next = w;
  else
    l->head = w;
  l->tail = w;
  l->n++;
}

static void
wlist_remove (struct wlist *l, struct write *w)
{
  if (w->prev)
    w->prev->next = w->next;
  else
    l->head = w->next;
  if (w->next)
    w->next->prev = w->prev;
  else
    l->tail = w->prev;
  w->prev = w->next = NULL;
  l->n--;
}

static struct wlist
wlist_take (struct wlist *l)
{
  struct wlist all = *l;
  memset (l, 0, sizeof *l);
  return all;
}

#define DAMAGED_MAX 64

struct radosstore {
  struct chunkstore cs;        /* first: cast target */
  struct cas_rados *conn;      /* not owned */
  rados_ioctx_t io;
  bool readonly;
  unsigned max_inflight;
  struct known *known;

  pthread_mutex_t lock;        /* guards everything below */
  pthread_cond_t completed;    /* a write completed */
  struct wlist inflight;       /* submitted, not yet complete */
  struct wlist done;           /* complete and good: to be freed */
  struct wlist failed;         /* complete with an error: sync retries */
  uint64_t next_seq;
  struct cas_hash damaged[DAMAGED_MAX];  /* ring; zero: empty */
  unsigned damaged_next;
  struct cas_radosstore_counters counters;
};

static inline struct radosstore *
RS (struct chunkstore *cs)
{
  return (struct radosstore *) cs;
}

static void
chunk_oid (const struct cas_hash *h, char oid[CAS_RADOS_CHUNK_OID_MAX])
{
  char hex[2 * CAS_HASH_SIZE + 1];

  snprintf (oid, CAS_RADOS_CHUNK_OID_MAX, "%s%s", CAS_RADOS_CHUNK_PREFIX,
            cas_hash_hex (h, hex));
}

/* Called with rs->lock held. */
static bool
damaged_has (struct radosstore *rs, const struct cas_hash *h)
{
  unsigned i;

  for (i = 0; i < DAMAGED_MAX; i++)
    if (cas_hash_equal (&rs->damaged[i], h))
      return true;
  return false;
}

static void
damaged_set (struct radosstore *rs, const struct cas_hash *h, bool damaged)
{
  unsigned i;
  SCOPED_LOCK (&rs->lock);

  for (i = 0; i < DAMAGED_MAX; i++)
    if (cas_hash_equal (&rs->damaged[i], h)) {
      if (!damaged)
        memset (&rs->damaged[i], 0, sizeof rs->damaged[i]);
      return;
    }
  if (damaged)
    rs->damaged[rs->damaged_next++ % DAMAGED_MAX] = *h;
}

enum outcome { WRITTEN, DUPLICATE, FAILED };

/* The end of a write attempt (any thread; rs->lock not held). */
static void
finish (struct radosstore *rs, struct write *w, int r, enum outcome how)
{
  if (how != FAILED)
    known_add (rs->known, &w->hash, w->known_epoch);
  pthread_mutex_lock (&rs->lock);
  wlist_remove (&rs->inflight, w);
  w->result = r;
  switch (how) {
  case WRITTEN:
    rs->counters.written++;
    if (w->overwrite) {
      unsigned i;
      for (i = 0; i < DAMAGED_MAX; i++)
        if (cas_hash_equal (&rs->damaged[i], &w->hash))
          memset (&rs->damaged[i], 0, sizeof rs->damaged[i]);
    }
    wlist_append (&rs->done, w);
    break;
  case DUPLICATE:
    rs->counters.duplicates++;
    wlist_append (&rs->done, w);
    break;
  case FAILED:
    rs->counters.failed++;
    wlist_append (&rs->failed, w);
    break;
  }
  pthread_cond_broadcast (&rs->completed);
  pthread_mutex_unlock (&rs->lock);
}

static void stage_complete (rados_completion_t c, void *arg);

/* A completion and a write op for w's next stage (released with w's
 * other librados objects, by reap()).  0 or -errno.
 */
static int
new_write_stage (struct write *w, enum write_stage stage,
                 rados_completion_t *c, rados_write_op_t *op)
{
  int r;

  assert (w->ncomps < 4 && w->nwops < 3);
  r = rados_aio_create_completion2 (w, stage_complete, c);
  if (r < 0)
    return r;
  w->comps[w->ncomps++] = *c;
  *op = rados_create_write_op ();
  if (*op == NULL)
    return -ENOMEM;
  w->wops[w->nwops++] = *op;
  w->stage = stage;
  return 0;
}

static int
send_write (struct radosstore *rs, struct write *w)
{
  char oid[CAS_RADOS_CHUNK_OID_MAX];
  rados_completion_t c;
  rados_write_op_t op;
  int r;

  r = new_write_stage (w, STAGE_WRITE, &c, &op);
  if (r < 0)
    return r;
  if (!w->overwrite)
    rados_write_op_create (op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
  rados_write_op_write_full (op, (const char *) w->rec, HDR + w->len);
  chunk_oid (&w->hash, oid);
  return rados_aio_write_op_operate (op, rs->io, c, oid, NULL, 0);
}

static int
send_touch (struct radosstore *rs, struct write *w)
{
  char oid[CAS_RADOS_CHUNK_OID_MAX];
  rados_completion_t c;
  rados_write_op_t op;
  int r;

  r = new_write_stage (w, STAGE_TOUCH, &c, &op);
  if (r < 0)
    return r;
  /* Any write makes a new version; this one changes no byte of the
   * record, and never creates the object.
   */
  rados_write_op_assert_exists (op);
  rados_write_op_setxattr (op, TOUCH_XATTR, "1", 1);
  chunk_oid (&w->hash, oid);
  return rados_aio_write_op_operate (op, rs->io, c, oid, NULL, 0);
}

static int
send_verify (struct radosstore *rs, struct write *w)
{
  static const uint32_t crc_init = 0xffffffff;  /* Ceph's raw CRC32C */
  char oid[CAS_RADOS_CHUNK_OID_MAX];
  rados_completion_t c;
  int r;

  assert (w->ncomps < 4 && w->vop == NULL);
  r = rados_aio_create_completion2 (w, stage_complete, &c);
  if (r < 0)
    return r;
  w->comps[w->ncomps++] = c;
  w->vop = rados_create_read_op ();
  if (w->vop == NULL)
    return -ENOMEM;
  w->stage = STAGE_VERIFY;
  w->vsize = 0;
  w->vhdr_got = 0;
  w->vstat_rv = w->vhdr_rv = w->vsum_rv = 0;
  memset (w->vsum, 0, sizeof w->vsum);
  rados_read_op_stat (w->vop, &w->vsize, NULL, &w->vstat_rv);
  rados_read_op_read (w->vop, 0, HDR, (char *) w->vhdr, &w->vhdr_got,
                      &w->vhdr_rv);
  rados_read_op_checksum (w->vop, LIBRADOS_CHECKSUM_TYPE_CRC32C,
                          (const char *) &crc_init, sizeof crc_init, HDR,
                          w->len, 0, (char *) w->vsum, sizeof w->vsum,
                          &w->vsum_rv);
  chunk_oid (&w->hash, oid);
  return rados_aio_read_op_operate (w->vop, rs->io, c, oid, 0);
}

/* Is the object found by VERIFY this chunk's intact record? */
static bool
verified (const struct write *w)
{
  struct cas_record_header h;

  return w->vhdr_got == HDR &&
    cas_record_header_decode (w->vhdr, &h) == 0 &&
    cas_hash_equal (&h.hash, &w->hash) &&
    h.length == w->len && h.payload_crc == w->crc &&
    w->vsize == HDR + (uint64_t) w->len &&
    get_le32 (w->vsum) == 1 && ~get_le32 (w->vsum + 4) == w->crc;
}

/* librados' thread: the callback of every stage.  Moves the write on to
 * its next stage or finishes it.  Never releases a completion (the
 * caller threads do, reap()), never blocks but on rs->lock.
 */
static void
stage_complete (rados_completion_t c, void *arg)
{
  struct write *w = arg;
  struct radosstore *rs = w->rs;
  int r = rados_aio_get_return_value (c);

  if (w->stage == STAGE_WRITE) {
    if (r == 0)
      finish (rs, w, 0, WRITTEN);
    else if (r == -EEXIST && !w->overwrite) {
      r = send_touch (rs, w);
      if (r < 0)
        finish (rs, w, r, FAILED);
    }
    else
      finish (rs, w, r, FAILED);
    return;
  }
  if (w->stage == STAGE_TOUCH) {
    if (r == 0)
      r = send_verify (rs, w);
    else if (r == -ENOENT) {
      /* Removed by a collector since the EEXIST: store it again. */
      w->overwrite = true;
      r = send_write (rs, w);
    }
    if (r < 0)
      finish (rs, w, r, FAILED);
    return;
  }
  if (r == 0)
    r = w->vstat_rv < 0 ? w->vstat_rv : w->vhdr_rv < 0 ? w->vhdr_rv
      : w->vsum_rv;
  if (r < 0)                    /* ENOENT too: the retry writes it anew */
    finish (rs, w, r, FAILED);
  else if (verified (w))
    finish (rs, w, 0, DUPLICATE);
  else {
    pthread_mutex_lock (&rs->lock);
    rs->counters.healed++;
    pthread_mutex_unlock (&rs->lock);
    w->overwrite = true;
    r = send_write (rs, w);
    if (r < 0)
      finish (rs, w, r, FAILED);
  }
}

/* Release the librados objects of w's last attempt (its callbacks have
 * all run: w is on done or failed, or was never sent).
 */
static void
release_aio (struct write *w)
{
  unsigned i;

  for (i = 0; i < w->ncomps; i++)
    rados_aio_release (w->comps[i]);
  for (i = 0; i < w->nwops; i++)
    rados_release_write_op (w->wops[i]);
  if (w->vop)
    rados_release_read_op (w->vop);
  w->ncomps = w->nwops = 0;
  w->vop = NULL;
}

/* Free the writes that completed well (outside the lock). */
static void
reap (struct radosstore *rs)
{
  struct wlist done;
  struct write *w, *next;

  pthread_mutex_lock (&rs->lock);
  done = wlist_take (&rs->done);
  pthread_mutex_unlock (&rs->lock);
  for (w = done.head; w; w = next) {
    next = w->next;
    release_aio (w);
    free (w);
  }
}

/* Send w (already on rs->inflight), from its first stage.  On failure to
 * submit, w is moved to rs->failed with the error and -1 is returned
 * (errno set).
 */
static int
submit (struct radosstore *rs, struct write *w)
{
  int r;

  release_aio (w);
  r = send_write (rs, w);
  if (r < 0) {
    finish (rs, w, r, FAILED);
    errno = -r;
    return -1;
  }
  return 0;
}

/* Called with rs->lock held: the first failed write's error, reported. */
static int
report_failed (struct radosstore *rs, const char *what)
{
  struct write *w = rs->failed.head;
  char hex[2 * CAS_HASH_SIZE + 1];
  int err = -w->result;

  backend_error ("cas: rados: %s: writing chunk %s to %s failed: %s%s "
                 "(%u write%s waiting to be retried)", what,
                 cas_hash_hex (&w->hash, hex), cas_rados_where (rs->conn),
                 strerror (err), err == ETIMEDOUT ?
                 " (no answer within the timeout)" : "",
                 rs->failed.n, rs->failed.n == 1 ? "" : "s");
  return err;
}

static int
rs_put (struct chunkstore *cs, const struct cas_hash *hash,
        enum cas_chunk_type type, const void *data, uint32_t len,
        bool *stored)
{
  struct radosstore *rs = RS (cs);
  struct cas_record_header h;
  struct write *w;
  int err;

  if (stored)
    *stored = false;
  if (rs->readonly) {
    backend_error ("cas: rados: %s is open read-only",
                   cas_rados_where (rs->conn));
    errno = EROFS;
    return -1;
  }
  if (len == 0 || len > CAS_MAX_PAYLOAD) {
    backend_error ("cas: chunk of %" PRIu32 " bytes is out of range", len);
    errno = EINVAL;
    return -1;
  }
  if (known_has (rs->known, hash)) {
    pthread_mutex_lock (&rs->lock);
    bool damaged = damaged_has (rs, hash);
    if (!damaged)
      rs->counters.cache_hits++;
    pthread_mutex_unlock (&rs->lock);
    if (!damaged)
      return 0;
  }
  reap (rs);

  w = malloc (sizeof *w + HDR + len);
  if (w == NULL)
    return -1;
  memset (w, 0, sizeof *w);
  w->rs = rs;
  w->hash = *hash;
  w->len = len;
  memset (&h, 0, sizeof h);
  h.type = type;
  h.length = len;
  h.payload_crc = crc32c (0, data, len);
  h.hash = *hash;
  cas_record_header_encode (&h, w->rec);
  w->crc = h.payload_crc;
  memcpy (w->rec + HDR, data, len);

  pthread_mutex_lock (&rs->lock);
  while (rs->failed.n == 0 && rs->inflight.n >= rs->max_inflight)
    pthread_cond_wait (&rs->completed, &rs->lock);
  if (rs->failed.n > 0) {
    err = report_failed (rs, "not storing more until the next flush "
                         "retries an earlier write");
    pthread_mutex_unlock (&rs->lock);
    free (w);
    errno = err;
    return -1;
  }
  w->overwrite = damaged_has (rs, hash);
  /* Before the op is sent: a write sent before the cache is emptied
   * must not enter it afterwards.
   */
  w->known_epoch = atomic_load (&rs->known->epoch);
  w->seq = rs->next_seq++;
  wlist_append (&rs->inflight, w);
  rs->counters.sent++;
  pthread_mutex_unlock (&rs->lock);

  if (submit (rs, w) == -1) {
    char hex[2 * CAS_HASH_SIZE + 1];
    backend_error ("cas: rados: cannot send chunk %s to %s: %m",
                   cas_hash_hex (hash, hex), cas_rados_where (rs->conn));
    return -1;
  }
  if (stored)
    *stored = true;
  return 0;
}

/* The write of hash that has not completed, or failed and awaits its
 * retry, or completed and is not freed yet; NULL if none.  Called with
 * rs->lock held.
 */
static struct write *
find_pending (struct radosstore *rs, const struct cas_hash *hash)
{
  struct wlist *lists[] = { &rs->inflight, &rs->failed, &rs->done };
  struct write *w;
  size_t i;

  for (i = 0; i < sizeof lists / sizeof lists[0]; i++)
    for (w = lists[i]->head; w; w = w->next)
      if (cas_hash_equal (&w->hash, hash))
        return w;
  return NULL;
}

/* A chunk still pending is read from our copy (the object may not exist
 * yet): 1 found, 0 not pending, -1 longer than bufsize.
 */
static int
get_pending (struct radosstore *rs, const struct cas_hash *hash, void *buf,
             uint32_t bufsize, uint32_t *len)
{
  struct write *w;
  SCOPED_LOCK (&rs->lock);

  w = find_pending (rs, hash);
  if (w == NULL)
    return 0;
  if (w->len > bufsize) {
    errno = EIO;
    return -1;
  }
  memcpy (buf, w->rec + HDR, w->len);
  if (len)
    *len = w->len;
  return 1;
}

/* Check a record read from its object: header, name, size, and with a
 * payload (NULL: header only) its length and, as verify says, CRC32C and
 * SHA-256.  -1 with *problem set if anything is wrong.
 */
static int
check_record (const uint8_t hdr[HDR], size_t hdr_got, uint64_t size,
              const struct cas_hash *want, const void *payload,
              uint32_t payload_cap, size_t payload_got,
              enum cas_verify verify, struct cas_record_header *h,
              const char **problem)
{
  if (hdr_got < HDR || cas_record_header_decode (hdr, h) == -1) {
    *problem = "damaged record header";
    return -1;
  }
  if (!cas_hash_equal (&h->hash, want)) {
    *problem = "the record holds another chunk than its object's name says";
    return -1;
  }
  if (size != HDR + (uint64_t) h->length) {
    *problem = "the object's size does not match its record's length";
    return -1;
  }
  if (payload == NULL)
    return 0;
  if (h->length > payload_cap) {
    *problem = "the chunk is longer than the read buffer";
    return -1;
  }
  if (payload_got != h->length) {
    *problem = "short read of the payload";
    return -1;
  }
  if (verify == CAS_VERIFY_OFF)
    return 0;
  if (crc32c (0, payload, h->length) != h->payload_crc) {
    *problem = "payload checksum mismatch (damaged data)";
    return -1;
  }
  if (verify >= CAS_VERIFY_FULL) {
    struct cas_hash got;
    if (cas_hash_compute (payload, h->length, &got) == -1 ||
        !cas_hash_equal (&got, want)) {
      *problem = "payload does not match its SHA-256 (damaged data)";
      return -1;
    }
  }
  return 0;
}

static int
rs_get (struct chunkstore *cs, const struct cas_hash *hash, void *buf,
        uint32_t bufsize, uint32_t *len, enum cas_verify verify)
{
  struct radosstore *rs = RS (cs);
  char oid[CAS_RADOS_CHUNK_OID_MAX], hex[2 * CAS_HASH_SIZE + 1];
  struct cas_record_header h;
  uint8_t hdr[HDR];
  size_t hdr_got = 0, got = 0;
  uint64_t size = 0;
  int stat_rv = 0, hdr_rv = 0, rv = 0, r;
  const char *problem;
  rados_read_op_t op;

  r = get_pending (rs, hash, buf, bufsize, len);
  if (r != 0) {
    if (r == -1)
      backend_error ("cas: chunk %s is longer than %" PRIu32 " bytes",
                     cas_hash_hex (hash, hex), bufsize);
    return r == 1 ? 0 : -1;
  }

  /* One round trip: size, header, payload straight into buf. */
  chunk_oid (hash, oid);
  op = rados_create_read_op ();
  if (op == NULL)
    return -1;
  rados_read_op_stat (op, &size, NULL, &stat_rv);
  rados_read_op_read (op, 0, HDR, (char *) hdr, &hdr_got, &hdr_rv);
  rados_read_op_read (op, HDR, bufsize, buf, &got, &rv);
  r = rados_read_op_operate (op, rs->io, oid, 0);
  rados_release_read_op (op);
  if (r == 0)
    r = stat_rv < 0 ? stat_rv : hdr_rv < 0 ? hdr_rv : rv;
  if (r == -ENOENT) {
    known_remove (rs->known, hash);
    backend_error ("cas: chunk %s is missing from the store (%s)",
                   cas_hash_hex (hash, hex), cas_rados_where (rs->conn));
    errno = ENOENT;
    return -1;
  }
  if (r < 0) {
    backend_error ("cas: rados: reading chunk %s from %s: %s%s",
                   cas_hash_hex (hash, hex), cas_rados_where (rs->conn),
                   strerror (-r), r == -ETIMEDOUT ?
                   " (no answer within the timeout)" : "");
    errno = -r;
    return -1;
  }
  if (check_record (hdr, hdr_got, size, hash, buf, bufsize, got, verify, &h,
                    &problem) == -1) {
    backend_error ("cas: rados: %s object %s: %s", cas_rados_where (rs->conn),
                   oid, problem);
    /* Dedup must not trust this object any more: the next put of the
     * chunk rewrites it.
     */
    known_remove (rs->known, hash);
    damaged_set (rs, hash, true);
    errno = EIO;
    return -1;
  }
  /* Not added to the known names: a read does not keep a collector from
   * removing the object (only a write or a touch does).
   */
  if (len)
    *len = h.length;
  return 0;
}

static int
rs_has (struct chunkstore *cs, const struct cas_hash *hash)
{
  struct radosstore *rs = RS (cs);
  char oid[CAS_RADOS_CHUNK_OID_MAX], hex[2 * CAS_HASH_SIZE + 1];
  uint64_t size;
  time_t mtime;
  struct write *w;
  int r;

  if (known_has (rs->known, hash))
    return 1;
  pthread_mutex_lock (&rs->lock);
  w = find_pending (rs, hash);
  pthread_mutex_unlock (&rs->lock);
  if (w)
    return 1;
  chunk_oid (hash, oid);
  r = rados_stat (rs->io, oid, &size, &mtime);
  if (r == -ENOENT)
    return 0;
  if (r < 0) {
    backend_error ("cas: rados: looking up chunk %s in %s: %s",
                   cas_hash_hex (hash, hex), cas_rados_where (rs->conn),
                   strerror (-r));
    errno = -r;
    return -1;
  }
  return 1;
}

/* Wait until no write submitted before seq `before` is in flight. */
static void
wait_before (struct radosstore *rs, uint64_t before)
{
  for (;;) {
    struct write *w;
    for (w = rs->inflight.head; w; w = w->next)
      if (w->seq < before)
        break;
    if (w == NULL)
      return;
    pthread_cond_wait (&rs->completed, &rs->lock);
  }
}

static int
rs_sync (struct chunkstore *cs)
{
  struct radosstore *rs = RS (cs);
  struct wlist retry;
  struct write *w, *next;
  uint64_t target;
  int err = 0;

  pthread_mutex_lock (&rs->lock);
  target = rs->next_seq;
  wait_before (rs, target);
  if (rs->failed.n > 0) {
    /* Send the failed writes again, keeping their sequence numbers so
     * that every sync that started meanwhile waits for them too.
     */
    retry = wlist_take (&rs->failed);
    for (w = retry.head; w; w = next) {
      next = w->next;
      wlist_append (&rs->inflight, w);
    }
    rs->counters.retried += retry.n;
    pthread_mutex_unlock (&rs->lock);
    for (w = retry.head; w; w = next) {
      next = w->next;
      submit (rs, w);          /* a failure lands on rs->failed */
    }
    pthread_mutex_lock (&rs->lock);
    wait_before (rs, target);
  }
  if (rs->failed.n > 0)
    err = report_failed (rs, "flush");
  pthread_mutex_unlock (&rs->lock);
  reap (rs);
  if (err) {
    errno = err;
    return -1;
  }
  return 0;
}

/* ---- enumerate: list the namespace, read each chunk object (a window
 * of asynchronous reads), check it, report it.
 */
#define ENUM_WINDOW 8

struct enum_read {
  char oid[CAS_RADOS_CHUNK_OID_MAX];
  struct cas_hash name;
  rados_completion_t c;
  rados_read_op_t op;
  uint64_t size;
  int stat_rv, rv;
  size_t got;
  uint8_t *buf;                /* header + payload */
};

static int
enum_submit (struct radosstore *rs, struct enum_read *e, size_t readlen)
{
  int r;

  e->size = 0;
  e->stat_rv = e->rv = 0;
  e->got = 0;
  r = rados_aio_create_completion2 (NULL, NULL, &e->c);
  if (r < 0) {
    e->c = NULL;
    return r;
  }
  e->op = rados_create_read_op ();
  if (e->op == NULL)
    return -ENOMEM;
  rados_read_op_stat (e->op, &e->size, NULL, &e->stat_rv);
  rados_read_op_read (e->op, 0, readlen, (char *) e->buf, &e->got, &e->rv);
  return rados_aio_read_op_operate (e->op, rs->io, e->c, e->oid, 0);
}

static void
enum_release (struct enum_read *e)
{
  if (e->c)
    rados_aio_release (e->c);
  if (e->op)
    rados_release_read_op (e->op);
  e->c = NULL;
  e->op = NULL;
}

/* Wait for e and report it: 0 go on, else stop with that value (-1 with
 * errno on a read error).
 */
static int
enum_finish (struct radosstore *rs, struct enum_read *e, unsigned flags,
             int (*fn) (const struct cas_record_info *, void *),
             void *opaque)
{
  struct cas_record_info info;
  struct cas_record_header h;
  const char *problem;
  char text[CAS_RADOS_CHUNK_OID_MAX + 128];
  enum cas_verify verify;
  int r;

  rados_aio_wait_for_complete (e->c);
  r = rados_aio_get_return_value (e->c);
  if (r == 0)
    r = e->stat_rv < 0 ? e->stat_rv : e->rv;
  enum_release (e);
  if (r == -ENOENT)
    return 0;                   /* deleted since it was listed */
  if (r < 0) {
    backend_error ("cas: rados: %s: reading object %s: %s",
                   cas_rados_where (rs->conn), e->oid, strerror (-r));
    errno = -r;
    return -1;
  }
  memset (&info, 0, sizeof info);
  info.hash = e->name;
  verify = (flags & CAS_ENUM_REHASH) ? CAS_VERIFY_FULL
    : (flags & CAS_ENUM_CHECK_CRC) ? CAS_VERIFY_CHECKSUM : CAS_VERIFY_OFF;
  if (check_record (e->buf, e->got, e->size, &e->name,
                    verify == CAS_VERIFY_OFF ? NULL : e->buf + HDR,
                    CAS_MAX_PAYLOAD, e->got > HDR ? e->got - HDR : 0,
                    verify, &h, &problem) == -1) {
    info.status = EIO;
    snprintf (text, sizeof text, "object %s: %s", e->oid, problem);
    info.problem = text;
    if (cas_record_header_decode (e->buf, &h) == 0) {
      info.type = h.type;
      info.length = h.length;
    }
    else
      info.length = e->size;
  }
  else {
    info.type = h.type;
    info.length = h.length;
  }
  return fn (&info, opaque);
}

static int
rs_enumerate (struct chunkstore *cs, unsigned flags,
              int (*fn) (const struct cas_record_info *, void *),
              void *opaque)
{
  struct radosstore *rs = RS (cs);
  const size_t plen = strlen (CAS_RADOS_CHUNK_PREFIX);
  const size_t readlen = HDR + ((flags & (CAS_ENUM_CHECK_CRC |
                                          CAS_ENUM_REHASH))
                                ? CAS_MAX_PAYLOAD : 0);
  struct enum_read win[ENUM_WINDOW];
  size_t head = 0, n = 0, i;
  rados_list_ctx_t list;
  int r, ret = 0;

  memset (win, 0, sizeof win);
  for (i = 0; i < ENUM_WINDOW; i++) {
    win[i].buf = malloc (readlen);
    if (win[i].buf == NULL) {
      ret = -1;
      goto out;
    }
  }
  r = rados_nobjects_list_open (rs->io, &list);
  if (r < 0) {
    backend_error ("cas: rados: listing %s: %s", cas_rados_where (rs->conn),
                   strerror (-r));
    errno = -r;
    ret = -1;
    goto out;
  }
  for (;;) {
    const char *entry, *key, *nspace;
    size_t elen, klen, nslen;
    struct enum_read *e;
    char hex[2 * CAS_HASH_SIZE + 1];

    r = rados_nobjects_list_next2 (list, &entry, &key, &nspace, &elen, &klen,
                                   &nslen);
    if (r == -ENOENT)
      break;
    if (r < 0) {
      backend_error ("cas: rados: listing %s: %s",
                     cas_rados_where (rs->conn), strerror (-r));
      errno = -r;
      ret = -1;
      break;
    }
    /* Only chunk objects: other objects (volume roots, later) share the
     * namespace.
     */
    if (elen != plen + 2 * CAS_HASH_SIZE ||
        memcmp (entry, CAS_RADOS_CHUNK_PREFIX, plen) != 0)
      continue;
    memcpy (hex, entry + plen, 2 * CAS_HASH_SIZE);
    hex[2 * CAS_HASH_SIZE] = '\0';
    if (n == ENUM_WINDOW) {
      ret = enum_finish (rs, &win[head], flags, fn, opaque);
      head = (head + 1) % ENUM_WINDOW;
      n--;
      if (ret != 0)
        break;
    }
    e = &win[(head + n) % ENUM_WINDOW];
    if (cas_hash_parse (hex, &e->name) == -1)
      continue;                 /* "chunk." and not a hash: not ours */
    memcpy (e->oid, entry, elen);
    e->oid[elen] = '\0';
    r = enum_submit (rs, e, readlen);
    if (r < 0) {
      enum_release (e);
      backend_error ("cas: rados: reading %s: %s", e->oid, strerror (-r));
      errno = -r;
      ret = -1;
      break;
    }
    n++;
  }
  rados_nobjects_list_close (list);
  /* Finish what is in flight; after a stop, without reporting it. */
  while (n > 0) {
    if (ret == 0)
      ret = enum_finish (rs, &win[head], flags, fn, opaque);
    else {
      rados_aio_wait_for_complete (win[head].c);
      enum_release (&win[head]);
    }
    head = (head + 1) % ENUM_WINDOW;
    n--;
  }
 out:
  for (i = 0; i < ENUM_WINDOW; i++)
    free (win[i].buf);
  return ret;
}

static void
rs_stats (struct chunkstore *cs, struct cas_chunkstore_stats *st)
{
  struct radosstore *rs = RS (cs);
  struct rados_pool_stat_t ps;

  memset (st, 0, sizeof *st);
  /* Pool-wide figures (every namespace), from the mgr's statistics: 0
   * in a cluster without one.  Counting this namespace's chunks means
   * listing it: enumerate().
   */
  if (rados_ioctx_pool_stat (rs->io, &ps) == 0) {
    st->chunks = ps.num_objects;
    st->stored_bytes = ps.num_bytes;
  }
  pthread_mutex_lock (&rs->lock);
  st->appended = rs->counters.written;
  pthread_mutex_unlock (&rs->lock);
  st->index_slots = rs->known->nsets * KNOWN_WAYS;
  st->index_bytes = rs->known->nsets * sizeof *rs->known->sets;
}

void
cas_radosstore_counters (struct chunkstore *cs,
                         struct cas_radosstore_counters *c)
{
  struct radosstore *rs = RS (cs);
  SCOPED_LOCK (&rs->lock);

  *c = rs->counters;
}

static void
free_rs (struct radosstore *rs)
{
  struct wlist *lists[] = { &rs->inflight, &rs->done, &rs->failed };
  struct write *w, *next;
  size_t i;

  for (i = 0; i < sizeof lists / sizeof lists[0]; i++)
    for (w = lists[i]->head; w; w = next) {
      next = w->next;
      release_aio (w);
      free (w);
    }
  known_free (rs->known);
  pthread_cond_destroy (&rs->completed);
  pthread_mutex_destroy (&rs->lock);
  free (rs);
}

static int
rs_close (struct chunkstore *cs)
{
  struct radosstore *rs = RS (cs);
  int r = 0;

  if (!rs->readonly)
    r = rs_sync (cs);
  /* Nothing may be left in flight: its callback would touch freed
   * memory.  (sync waited for what was submitted before it; a put
   * racing with close is the caller's bug, but wait for it anyway.)
   */
  pthread_mutex_lock (&rs->lock);
  while (rs->inflight.n > 0)
    pthread_cond_wait (&rs->completed, &rs->lock);
  pthread_mutex_unlock (&rs->lock);
  free_rs (rs);
  return r;
}

static const struct chunkstore_ops radosstore_ops = {
  .put = rs_put,
  .get = rs_get,
  .has = rs_has,
  .sync = rs_sync,
  .enumerate = rs_enumerate,
  .stats = rs_stats,
  .close = rs_close,
};

void
cas_radosstore_forget_known (struct chunkstore *cs)
{
  known_forget_all (RS (cs)->known);
}

struct chunkstore *
cas_radosstore_open (struct cas_rados *conn,
                     const struct cas_radosstore_params *p)
{
  struct radosstore *rs;

  rs = calloc (1, sizeof *rs);
  if (rs == NULL)
    return NULL;
  rs->cs.ops = &radosstore_ops;
  rs->conn = conn;
  rs->io = cas_rados_ioctx (conn);
  rs->readonly = p->readonly;
  rs->max_inflight = p->max_inflight ? p->max_inflight
    : CAS_RADOS_DEFAULT_INFLIGHT;
  pthread_mutex_init (&rs->lock, NULL);
  pthread_cond_init (&rs->completed, NULL);
  rs->known = known_new (p->cache_entries ? p->cache_entries
                         : CAS_RADOS_DEFAULT_CACHE);
  if (rs->known == NULL) {
    free_rs (rs);
    errno = ENOMEM;
    return NULL;
  }
  return &rs->cs;
}
