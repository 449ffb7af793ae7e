/* Volumes: the block map (a tree of content-addressed map nodes) and the
 * data path.  See store.h for the contract.
 *
 * In memory, a volume keeps:
 *  - levels[k] entry 0 <= i < nleaves: the committed hash of leaf node i,
 *    levels[k] entry j: the committed hash of node j at height k+1, up
 *    to the root (levels[depth-1] entry 0).  Only flush writes them
 *    (under flush_lock); readers of levels[0] take levels_lock for 32
 *    bytes.
 *  - leaves entry i: leaf node i (1024 block hashes), loaded on first use
 *    and then kept; each has its own mutex (held only to copy 32 bytes)
 *    and a dirty flag.
 * All three are sparse arrays (sparse.h): a volume costs memory for what
 * is mapped or loaded, not for its size, and walks over them (load,
 * flush, stat) skip the unallocated parts.  A node's F children are one
 * run in the level below (SPARSE_RUN == F), so they are read and written
 * in place.
 *
 * Concurrency of partial-block writes: read-modify-write is optimistic.
 * Read the slot's hash H0 and its data, modify, hash and store the new
 * chunk -- all outside locks -- then set the slot under the leaf mutex
 * only if it still holds H0 (compare-and-set), else start again from the
 * new content.  Two clients writing the two halves of one block therefore
 * both land: one of them retries on top of the other.  (ABA is harmless:
 * equal hashes are equal contents.)  Full-block writes just set the slot.
 *
 * Flush: snapshot each dirty leaf (clear its dirty flag under its mutex),
 * store it as a map node, recompute the dirty interior nodes bottom-up,
 * sync the chunk store (data + nodes durable), then publish the root file
 * atomically.  A write that completes while a flush runs is either in
 * that flush or in the next; one completed before the flush began is
 * always in it.  Flushes of one volume are serialised (flush_lock).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "cleanup.h"
#include "sparse.h"
#include "storeint.h"

#define F CAS_MAP_FANOUT
_Static_assert (F == SPARSE_RUN, "a map node's children are one sparse run");
#define MAX_RMW_RETRIES 1000

struct leaf {
  pthread_mutex_t lock;
  bool dirty;
  struct cas_hash h[F];
};

struct cas_volume {
  struct cas_volume *next;      /* store's list, under st->vol_lock */
  unsigned refs;                /* under st->vol_lock */
  struct cas_store *st;
  char *name;
  uint32_t bs;
  uint64_t size, nblocks, nleaves;
  uint32_t depth;
  uint64_t *count;              /* count[k]: entries of levels[k] */

  pthread_mutex_t flush_lock;   /* one flush at a time; levels[k>0] */
  pthread_mutex_t levels_lock;  /* levels[0] element reads/writes */
  struct sparse *levels;        /* [depth] of struct cas_hash */
  struct sparse *stale;         /* [depth] of bool (k >= 1): recompute */
  struct sparse leaves;         /* of struct leaf *_Atomic */
  atomic_bool dirty;            /* some leaf changed since last flush */
  bool unpublished;             /* levels changed, root not written */
  uint64_t generation;          /* under flush_lock */
};

struct cas_volume **
cas_volume_next (struct cas_volume *vol)
{
  return &vol->next;
}

unsigned *
cas_volume_refs (struct cas_volume *vol)
{
  return &vol->refs;
}

struct cas_store *
cas_volume_store (struct cas_volume *vol)
{
  return vol->st;
}

const char *cas_volume_name (const struct cas_volume *v) { return v->name; }
uint64_t cas_volume_size (const struct cas_volume *v) { return v->size; }
uint32_t cas_volume_blocksize (const struct cas_volume *v) { return v->bs; }
uint64_t cas_volume_nblocks (const struct cas_volume *v) { return v->nblocks; }

uint64_t
cas_volume_generation (const struct cas_volume *v)
{
  struct cas_volume *vol = (struct cas_volume *) v;
  uint64_t g;

  pthread_mutex_lock (&vol->flush_lock);
  g = vol->generation;
  pthread_mutex_unlock (&vol->flush_lock);
  return g;
}

static void
free_leaf (void *elem)
{
  struct leaf *l = atomic_load ((struct leaf *_Atomic *) elem);

  if (l) {
    pthread_mutex_destroy (&l->lock);
    free (l);
  }
}

static void
free_levels (struct cas_volume *vol)
{
  uint32_t k;

  if (vol->levels)
    for (k = 0; k < vol->depth; k++)
      sparse_free (&vol->levels[k], NULL);
  if (vol->stale)
    for (k = 0; k < vol->depth; k++)
      sparse_free (&vol->stale[k], NULL);
  sparse_free (&vol->leaves, free_leaf);
  free (vol->levels);
  free (vol->stale);
  free (vol->count);
}

/* The committed hash of node j at level k (zero if never set). */
static struct cas_hash
level_hash (const struct cas_volume *vol, uint32_t k, uint64_t j)
{
  static const struct cas_hash zero;
  const struct cas_hash *h = sparse_peek (&vol->levels[k], j);

  return h ? *h : zero;
}

/* The loaded leaf i, or NULL. */
static struct leaf *
loaded_leaf (const struct cas_volume *vol, uint64_t i)
{
  struct leaf *_Atomic *slot = sparse_peek (&vol->leaves, i);

  return slot ? atomic_load_explicit (slot, memory_order_acquire) : NULL;
}

/* Read map node *h into out[0..n) (zero-padded).  Zero hash: all zero.
 * The chunk store may fill the whole buffer it is given (it reads ahead
 * in one syscall), so a short destination goes through a bounce buffer.
 */
static int
read_node (struct cas_volume *vol, const struct cas_hash *h,
           struct cas_hash *out, uint64_t n)
{
  CLEANUP_FREE struct cas_hash *bounce = NULL;
  struct cas_hash *dst = out;
  uint32_t len = 0;

  if (n > F)
    n = F;
  if (cas_hash_is_zero (h)) {
    memset (out, 0, n * sizeof *out);
    return 0;
  }
  if (n < F) {
    bounce = malloc (F * sizeof *bounce);
    if (bounce == NULL)
      return -1;
    dst = bounce;
  }
  if (cs_get (vol->st->cs, h, dst, F * CAS_HASH_SIZE, &len,
              vol->st->verify) == -1) {
    if (errno == ENOENT)
      errno = EIO;
    return -1;
  }
  if (len % CAS_HASH_SIZE != 0 || len / CAS_HASH_SIZE > n) {
    backend_error ("cas: volume %s: map node has a bad length %" PRIu32,
                   vol->name, len);
    errno = EIO;
    return -1;
  }
  if (bounce)
    memcpy (out, bounce, len);
  memset ((uint8_t *) out + len, 0, n * CAS_HASH_SIZE - len);
  return 0;
}

struct cas_volume *
cas_volume_load (struct cas_store *st, const char *name)
{
  struct cas_volume *vol;
  struct cas_root r;
  uint32_t k;
  uint64_t j;

  if (cas_root_read (st, name, &r) == -1)
    return NULL;
  if (r.blocksize != st->sb.blocksize || r.fanout != F || r.size == 0 ||
      r.size > CAS_MAX_VOLUME_SIZE) {
    backend_error ("cas: volume %s: root file does not match the store "
                   "(block size %" PRIu32 ", fanout %" PRIu32 ", size %"
                   PRIu64 ")", name, r.blocksize, r.fanout, r.size);
    errno = EIO;
    return NULL;
  }
  vol = calloc (1, sizeof *vol);
  if (vol == NULL)
    return NULL;
  vol->refs = 1;
  vol->st = st;
  vol->bs = r.blocksize;
  vol->size = r.size;
  vol->nblocks = (r.size + vol->bs - 1) / vol->bs;
  vol->nleaves = (vol->nblocks + F - 1) / F;
  vol->depth = cas_map_depth (vol->nblocks, F);
  vol->generation = r.generation;
  pthread_mutex_init (&vol->flush_lock, NULL);
  pthread_mutex_init (&vol->levels_lock, NULL);
  if (r.depth != vol->depth) {
    backend_error ("cas: volume %s: map depth %" PRIu32 " should be %" PRIu32,
                   name, r.depth, vol->depth);
    errno = EIO;
    goto err;
  }
  vol->name = strdup (name);
  vol->count = calloc (vol->depth, sizeof *vol->count);
  vol->levels = calloc (vol->depth, sizeof *vol->levels);
  vol->stale = calloc (vol->depth, sizeof *vol->stale);
  if (!vol->name || !vol->count || !vol->levels || !vol->stale ||
      sparse_init (&vol->leaves, vol->nleaves, sizeof (struct leaf *)) == -1)
    goto err;
  for (k = 0; k < vol->depth; k++) {
    vol->count[k] = k == 0 ? vol->nleaves : (vol->count[k - 1] + F - 1) / F;
    if (sparse_init (&vol->levels[k], vol->count[k],
                     sizeof (struct cas_hash)) == -1 ||
        sparse_init (&vol->stale[k], vol->count[k], sizeof (bool)) == -1)
      goto err;
  }
  /* Interior nodes are small (1/1024 of the mapped leaves): load them all
   * now, top-down; leaves are loaded on first use.  Zero subtrees stay
   * unallocated.
   */
  if (!cas_hash_is_zero (&r.root)) {
    struct cas_hash *top = sparse_get (&vol->levels[vol->depth - 1], 0);
    if (top == NULL)
      goto err;
    *top = r.root;
  }
  for (k = vol->depth - 1; k >= 1; k--)
    for (j = sparse_next (&vol->levels[k], 0); j < vol->count[k];
         j = sparse_next (&vol->levels[k], j + 1)) {
      const struct cas_hash *h = sparse_peek (&vol->levels[k], j);
      uint64_t first = j * F, n = vol->count[k - 1] - first;
      struct cas_hash *kids;

      if (cas_hash_is_zero (h))
        continue;
      if (n > F)
        n = F;
      kids = sparse_get (&vol->levels[k - 1], first);
      if (kids == NULL)
        goto err;
      if (read_node (vol, h, kids, n) == -1) {
        backend_error ("cas: volume %s: cannot load its block map", name);
        goto err;
      }
    }
  return vol;

 err:
  {
    int saved = errno ? errno : ENOMEM;
    free_levels (vol);
    pthread_mutex_destroy (&vol->flush_lock);
    pthread_mutex_destroy (&vol->levels_lock);
    free (vol->name);
    free (vol);
    errno = saved;
    return NULL;
  }
}

/* Leaf i; NULL with errno 0 if it is all zero and !create; NULL with
 * errno set on error.
 */
static struct leaf *
get_leaf (struct cas_volume *vol, uint64_t i, bool create)
{
  struct leaf *l = loaded_leaf (vol, i);
  struct leaf *expected = NULL;
  struct leaf *_Atomic *slot;
  struct cas_hash h;
  uint64_t n;

  if (l)
    return l;
  pthread_mutex_lock (&vol->levels_lock);
  h = level_hash (vol, 0, i);
  pthread_mutex_unlock (&vol->levels_lock);
  if (cas_hash_is_zero (&h) && !create) {
    errno = 0;
    return NULL;
  }
  /* Load outside any lock; if another thread wins the race, use its. */
  l = malloc (sizeof *l);
  if (l == NULL)
    return NULL;
  pthread_mutex_init (&l->lock, NULL);
  l->dirty = false;
  n = vol->nblocks - i * F;
  if (n > F)
    n = F;
  memset (l->h, 0, sizeof l->h);
  if (read_node (vol, &h, l->h, n) == -1) {
    int saved = errno;
    char hex[2 * CAS_HASH_SIZE + 1];
    backend_error ("cas: volume %s: map leaf %" PRIu64 " (%s) is unreadable",
                   vol->name, i, cas_hash_hex (&h, hex));
    pthread_mutex_destroy (&l->lock);
    free (l);
    errno = saved;
    return NULL;
  }
  slot = sparse_get (&vol->leaves, i);
  if (slot == NULL || !atomic_compare_exchange_strong (slot, &expected, l)) {
    pthread_mutex_destroy (&l->lock);
    free (l);
    if (slot == NULL)
      return NULL;              /* errno = ENOMEM */
    l = expected;
  }
  return l;
}

static int
get_slot (struct cas_volume *vol, uint64_t b, struct cas_hash *out)
{
  struct leaf *l = get_leaf (vol, b / F, false);

  if (l == NULL) {
    if (errno)
      return -1;
    memset (out, 0, sizeof *out);
    return 0;
  }
  pthread_mutex_lock (&l->lock);
  *out = l->h[b % F];
  pthread_mutex_unlock (&l->lock);
  return 0;
}

/* Set slot b to *h; if expect is not NULL, only if it still holds
 * *expect.  Returns 0 set, 1 conflict, -1 error.
 */
static int
set_slot (struct cas_volume *vol, uint64_t b, const struct cas_hash *h,
          const struct cas_hash *expect)
{
  struct leaf *l;
  int r = 0;

  /* Unmapping a block of an all-zero leaf changes nothing. */
  l = get_leaf (vol, b / F, !cas_hash_is_zero (h));
  if (l == NULL) {
    if (errno)
      return -1;
    return expect && !cas_hash_is_zero (expect) ? 1 : 0;
  }
  pthread_mutex_lock (&l->lock);
  if (expect && !cas_hash_equal (&l->h[b % F], expect))
    r = 1;
  else if (!cas_hash_equal (&l->h[b % F], h)) {
    l->h[b % F] = *h;
    l->dirty = true;
    atomic_store (&vol->dirty, true);
  }
  pthread_mutex_unlock (&l->lock);
  return r;
}

int
cas_volume_block_hash (struct cas_volume *vol, uint64_t block,
                       struct cas_hash *out)
{
  if (block >= vol->nblocks) {
    errno = EINVAL;
    return -1;
  }
  return get_slot (vol, block, out);
}

/* Hash and store one block's content; *h = zero hash for zeros. */
static int
store_block (struct cas_volume *vol, const void *data, struct cas_hash *h)
{
  if (cas_is_zero (data, vol->bs)) {
    memset (h, 0, sizeof *h);
    return 0;
  }
  if (cas_hash_compute (data, vol->bs, h) == -1)
    return -1;
  return cs_put (vol->st->cs, h, CAS_CHUNK_DATA, data, vol->bs, NULL);
}

/* Read block b's content (bs bytes) into buf. */
static int
read_block (struct cas_volume *vol, const struct cas_hash *h, void *buf)
{
  uint32_t len;

  if (cas_hash_is_zero (h)) {
    memset (buf, 0, vol->bs);
    return 0;
  }
  if (cs_get (vol->st->cs, h, buf, vol->bs, &len, vol->st->verify) == -1) {
    /* A block whose chunk is gone is lost data, for the client an I/O
     * error (ENOENT means nothing in NBD).
     */
    if (errno == ENOENT)
      errno = EIO;
    return -1;
  }
  if (len != vol->bs) {
    backend_error ("cas: volume %s: data chunk of %" PRIu32 " bytes, "
                   "expected %" PRIu32, vol->name, len, vol->bs);
    errno = EIO;
    return -1;
  }
  return 0;
}

static int
check_range (struct cas_volume *vol, uint64_t count, uint64_t offset,
             bool write)
{
  if (write && vol->st->readonly) {
    backend_error ("cas: volume %s is read-only", vol->name);
    errno = EROFS;
    return -1;
  }
  if (offset > vol->size || count > vol->size - offset) {
    backend_error ("cas: volume %s: range %" PRIu64 "+%" PRIu64
                   " is past the end (%" PRIu64 ")", vol->name, offset, count,
                   vol->size);
    errno = write ? ENOSPC : EINVAL;
    return -1;
  }
  return 0;
}

/* The data path's walk over [offset, offset+count), cut at block
 * boundaries: each piece is bytes [o, o+n) of block b, and starts done
 * bytes into the range.  Start from { .offset = offset, .count = count }.
 */
struct piece {
  uint64_t offset, count;       /* the rest of the range, from this piece */
  uint64_t b, done;
  uint32_t o, n;
};

/* Move p to the next piece: false when the range is done. */
static bool
next_piece (const struct cas_volume *vol, struct piece *p)
{
  p->offset += p->n;
  p->count -= p->n;
  p->done += p->n;
  if (p->count == 0)
    return false;
  p->b = p->offset / vol->bs;
  p->o = p->offset % vol->bs;
  p->n = vol->bs - p->o;
  if (p->n > p->count)
    p->n = p->count;
  return true;
}

int
cas_volume_read (struct cas_volume *vol, void *buf, uint64_t count,
                 uint64_t offset)
{
  CLEANUP_FREE uint8_t *tmp = NULL;
  struct piece p = { .offset = offset, .count = count };

  if (check_range (vol, count, offset, false) == -1)
    return -1;
  while (next_piece (vol, &p)) {
    uint8_t *out = (uint8_t *) buf + p.done;
    struct cas_hash h;

    if (get_slot (vol, p.b, &h) == -1)
      return -1;
    if (cas_hash_is_zero (&h))
      memset (out, 0, p.n);
    else if (p.n == vol->bs) {
      if (read_block (vol, &h, out) == -1)   /* straight into buf */
        return -1;
    }
    else {
      if (tmp == NULL && (tmp = malloc (vol->bs)) == NULL)
        return -1;
      if (read_block (vol, &h, tmp) == -1)
        return -1;
      memcpy (out, tmp + p.o, p.n);
    }
  }
  return 0;
}

/* Read-modify-write of part of block b: data (NULL: zeros) goes to
 * [o, o+n) of the block.  Optimistic: see the comment at the top.
 */
static int
rmw_block (struct cas_volume *vol, uint64_t b, uint32_t o, uint32_t n,
           const void *data, uint8_t *tmp)
{
  int tries, r;

  for (tries = 0; tries < MAX_RMW_RETRIES; tries++) {
    struct cas_hash old, new;

    if (get_slot (vol, b, &old) == -1 || read_block (vol, &old, tmp) == -1)
      return -1;
    if (data)
      memcpy (tmp + o, data, n);
    else
      memset (tmp + o, 0, n);
    if (store_block (vol, tmp, &new) == -1)
      return -1;
    r = set_slot (vol, b, &new, &old);
    if (r <= 0)
      return r;
  }
  backend_error ("cas: volume %s: block %" PRIu64 " kept changing under a "
                 "partial write", vol->name, b);
  errno = EAGAIN;
  return -1;
}

static int
write_or_zero (struct cas_volume *vol, const uint8_t *data, uint64_t count,
               uint64_t offset, bool fua)
{
  CLEANUP_FREE uint8_t *tmp = NULL;
  static const struct cas_hash zero;
  struct piece p = { .offset = offset, .count = count };

  if (check_range (vol, count, offset, true) == -1)
    return -1;
  while (next_piece (vol, &p)) {
    const uint8_t *src = data ? data + p.done : NULL;   /* NULL: zeros */
    struct cas_hash h;

    if (p.n == vol->bs) {
      if (src) {
        if (store_block (vol, src, &h) == -1)
          return -1;
      }
      else
        h = zero;
      if (set_slot (vol, p.b, &h, NULL) == -1)
        return -1;
    }
    else {
      if (tmp == NULL && (tmp = malloc (vol->bs)) == NULL)
        return -1;
      if (rmw_block (vol, p.b, p.o, p.n, src, tmp) == -1)
        return -1;
    }
  }
  if (fua)
    return cas_volume_flush (vol);
  return 0;
}

int
cas_volume_write (struct cas_volume *vol, const void *buf, uint64_t count,
                  uint64_t offset, bool fua)
{
  return write_or_zero (vol, buf, count, offset, fua);
}

int
cas_volume_zero (struct cas_volume *vol, uint64_t count, uint64_t offset,
                 bool fua)
{
  return write_or_zero (vol, NULL, count, offset, fua);
}

int
cas_volume_prefetch (struct cas_volume *vol, uint64_t count, uint64_t offset)
{
  CLEANUP_FREE uint8_t *tmp = NULL;
  uint64_t b, last;

  if (check_range (vol, count, offset, false) == -1)
    return -1;
  if (count == 0)
    return 0;
  tmp = malloc (vol->bs);
  if (tmp == NULL)
    return -1;
  last = (offset + count - 1) / vol->bs;
  for (b = offset / vol->bs; b <= last; b++) {
    struct cas_hash h;
    if (get_slot (vol, b, &h) == -1 || read_block (vol, &h, tmp) == -1)
      return -1;
  }
  return 0;
}

int
cas_volume_extents (struct cas_volume *vol, uint64_t count, uint64_t offset,
                    int (*fn) (uint64_t, uint64_t, bool, void *),
                    void *opaque)
{
  uint64_t end, b, run_start;
  bool run_mapped = false, have_run = false;

  if (check_range (vol, count, offset, false) == -1)
    return -1;
  end = offset + count;
  run_start = offset;
  b = offset / vol->bs;
  while (b < vol->nblocks && (uint64_t) b * vol->bs < end) {
    struct leaf *l = get_leaf (vol, b / F, false);
    uint64_t stop = (b / F + 1) * F;
    if (stop > vol->nblocks)
      stop = vol->nblocks;
    if (l == NULL && errno)
      return -1;
    for (; b < stop && b * vol->bs < end; b++) {
      bool mapped = false;
      if (l) {
        pthread_mutex_lock (&l->lock);
        mapped = !cas_hash_is_zero (&l->h[b % F]);
        pthread_mutex_unlock (&l->lock);
      }
      if (!have_run) {
        have_run = true;
        run_mapped = mapped;
      }
      else if (mapped != run_mapped) {
        uint64_t s = b * vol->bs;
        int r = fn (run_start, s - run_start, run_mapped, opaque);
        if (r != 0)
          return r == 1 ? 0 : -1;
        run_start = s;
        run_mapped = mapped;
      }
      if (!l) {                 /* whole leaf unmapped: skip it */
        b = stop;
        break;
      }
    }
  }
  {
    uint64_t s = b * vol->bs;
    if (s > vol->size)
      s = vol->size;
    if (s > run_start) {
      int r = fn (run_start, s - run_start, run_mapped, opaque);
      return r == 1 ? 0 : r;
    }
  }
  return 0;
}

/* Store node payload h[0..n) (trimmed) and return its hash in *out. */
static int
put_node (struct cas_volume *vol, const struct cas_hash *h, uint64_t n,
          struct cas_hash *out)
{
  uint32_t len = cas_node_length (h, n);

  if (len == 0) {
    memset (out, 0, sizeof *out);
    return 0;
  }
  if (cas_hash_compute (h, len, out) == -1)
    return -1;
  return cs_put (vol->st->cs, out, CAS_CHUNK_MAPNODE, h, len, NULL);
}

int
cas_volume_flush (struct cas_volume *vol)
{
  CLEANUP_FREE struct cas_hash *snap = NULL;
  struct cas_root r;
  uint64_t i, j;
  uint32_t k;
  int ret = -1;

  if (vol->st->readonly)
    return 0;
  pthread_mutex_lock (&vol->flush_lock);
  if (!atomic_exchange (&vol->dirty, false) && !vol->unpublished) {
    ret = 0;
    goto out;
  }
  snap = malloc (F * sizeof *snap);
  if (snap == NULL)
    goto redirty;

  /* 1. Dirty leaves -> map nodes. */
  for (i = sparse_next (&vol->leaves, 0); i < vol->nleaves;
       i = sparse_next (&vol->leaves, i + 1)) {
    struct leaf *l = loaded_leaf (vol, i);
    struct cas_hash nh, old, *slot;
    bool *up = NULL;

    if (!l)
      continue;
    pthread_mutex_lock (&l->lock);
    if (!l->dirty) {
      pthread_mutex_unlock (&l->lock);
      continue;
    }
    memcpy (snap, l->h, F * sizeof *snap);
    l->dirty = false;
    pthread_mutex_unlock (&l->lock);
    if (put_node (vol, snap, F, &nh) == -1)
      goto leaf_failed;
    old = level_hash (vol, 0, i);
    if (cas_hash_equal (&nh, &old))
      continue;
    /* Both slots first, so that a failed allocation changes nothing. */
    if ((vol->depth > 1 && (up = sparse_get (&vol->stale[1], i / F)) == NULL)
        || (slot = sparse_get (&vol->levels[0], i)) == NULL)
      goto leaf_failed;
    pthread_mutex_lock (&vol->levels_lock);
    *slot = nh;
    pthread_mutex_unlock (&vol->levels_lock);
    if (up)
      *up = true;
    vol->unpublished = true;
    continue;

  leaf_failed:
    pthread_mutex_lock (&l->lock);
    l->dirty = true;
    pthread_mutex_unlock (&l->lock);
    goto redirty;
  }

  /* 2. Interior nodes whose children changed, bottom-up. */
  for (k = 1; k < vol->depth; k++)
    for (j = sparse_next (&vol->stale[k], 0); j < vol->count[k];
         j = sparse_next (&vol->stale[k], j + 1)) {
      bool *stale = sparse_peek (&vol->stale[k], j), *up = NULL;
      uint64_t first = j * F, n = vol->count[k - 1] - first;
      const struct cas_hash *kids;
      struct cas_hash nh, *slot;

      if (!*stale)
        continue;
      if (n > F)
        n = F;
      /* A node turns stale when one of its children is set, and the
       * children are one run (one page): it is allocated.
       */
      kids = sparse_peek (&vol->levels[k - 1], first);
      if (kids == NULL)
        abort ();
      if (put_node (vol, kids, n, &nh) == -1)
        goto redirty;
      if ((k + 1 < vol->depth &&
           (up = sparse_get (&vol->stale[k + 1], j / F)) == NULL) ||
          (slot = sparse_get (&vol->levels[k], j)) == NULL)
        goto redirty;
      *stale = false;
      if (!cas_hash_equal (&nh, slot)) {
        *slot = nh;
        if (up)
          *up = true;
      }
    }

  if (!vol->unpublished) {
    ret = 0;
    goto out;
  }
  /* 3. Everything the new root references becomes durable, 4. then the
   * root is published atomically.
   */
  if (cs_sync (vol->st->cs) == -1)
    goto out;
  memset (&r, 0, sizeof r);
  r.version = CAS_FORMAT_VERSION;
  r.blocksize = vol->bs;
  r.size = vol->size;
  r.generation = vol->generation + 1;
  r.fanout = F;
  r.depth = vol->depth;
  r.root = level_hash (vol, vol->depth - 1, 0);
  r.mtime = time (NULL);
  if (cas_root_write (vol->st, vol->name, &r) == -1)
    goto out;
  vol->generation++;
  vol->unpublished = false;
  ret = 0;
  goto out;

 redirty:
  /* Leaves already cleaned are recorded in levels/unpublished. */
  atomic_store (&vol->dirty, true);
 out:
  pthread_mutex_unlock (&vol->flush_lock);
  return ret;
}

int
cas_volume_free (struct cas_volume *vol)
{
  int r = cas_volume_flush (vol);

  if (r == -1)
    backend_error ("cas: volume %s: final flush failed: %m", vol->name);
  free_levels (vol);
  pthread_mutex_destroy (&vol->flush_lock);
  pthread_mutex_destroy (&vol->levels_lock);
  free (vol->name);
  free (vol);
  return r;
}

int
cas_volume_stat (struct cas_volume *vol, struct cas_volume_stats *vs)
{
  uint64_t i, b;
  uint32_t k;

  memset (vs, 0, sizeof *vs);
  vs->size = vol->size;
  vs->blocks = vol->nblocks;
  /* Leaves are either loaded or have a committed hash: walk the union. */
  for (i = 0; i < vol->nleaves; i++) {
    uint64_t committed = sparse_next (&vol->levels[0], i);
    uint64_t loaded = sparse_next (&vol->leaves, i);
    struct leaf *l;

    i = committed < loaded ? committed : loaded;
    if (i >= vol->nleaves)
      break;
    l = get_leaf (vol, i, false);
    if (l == NULL) {
      if (errno)
        return -1;
      continue;
    }
    pthread_mutex_lock (&l->lock);
    for (b = 0; b < F; b++)
      if (!cas_hash_is_zero (&l->h[b]))
        vs->mapped_blocks++;
    pthread_mutex_unlock (&l->lock);
  }
  vs->mapped_bytes = vs->mapped_blocks * vol->bs;
  pthread_mutex_lock (&vol->flush_lock);
  for (k = 0; k < vol->depth; k++)
    for (i = sparse_next (&vol->levels[k], 0); i < vol->count[k];
         i = sparse_next (&vol->levels[k], i + 1))
      if (!cas_hash_is_zero (sparse_peek (&vol->levels[k], i)))
        vs->map_nodes++;
  vs->generation = vol->generation;
  vs->root = level_hash (vol, vol->depth - 1, 0);
  pthread_mutex_unlock (&vol->flush_lock);
  return 0;
}

/* ---- fsck: walk the committed tree from the root ---- */

struct check {
  struct cas_volume *vol;
  bool full;
  int (*fn) (const struct cas_volume_problem *, void *);
  void *opaque;
  int problems;
  uint8_t *buf;                 /* one block */
};

static int
problem (struct check *c, int level, uint64_t index,
         const struct cas_hash *h, int err, const char *what)
{
  struct cas_volume_problem p = {
    .volume = c->vol->name, .level = level, .index = index, .hash = *h,
    .err = err, .what = what,
  };
  c->problems++;
  return c->fn ? c->fn (&p, c->opaque) : 0;
}

/* Node at height `level` (1 = leaf), index j, covering blocks from
 * first_block.
 */
static int
check_node (struct check *c, uint32_t level, uint64_t j,
            const struct cas_hash *h)
{
  struct cas_volume *vol = c->vol;
  CLEANUP_FREE struct cas_hash *kids = calloc (F, sizeof *kids);
  uint32_t len = 0;
  uint64_t i;

  if (kids == NULL)
    return -1;
  if (cs_get (vol->st->cs, h, kids, F * CAS_HASH_SIZE, &len,
              c->full ? CAS_VERIFY_FULL : CAS_VERIFY_CHECKSUM) == 0)
    /* The read may run past the node's payload: clear what follows. */
    memset ((uint8_t *) kids + len, 0, F * CAS_HASH_SIZE - len);
  else
    return problem (c, level, j, h, errno,
                    errno == ENOENT ? "map node is missing"
                    : "map node is damaged") ? -1 : 0;
  for (i = 0; i < F; i++) {
    uint64_t idx = j * F + i;   /* child index at the level below */
    if (cas_hash_is_zero (&kids[i]))
      continue;
    if (level == 1) {
      if (idx >= vol->nblocks) {
        if (problem (c, 1, j, h, EIO, "map leaf maps blocks past the end"))
          return -1;
        break;
      }
      if (cs_get (vol->st->cs, &kids[i], c->buf, vol->bs, NULL,
                  c->full ? CAS_VERIFY_FULL : CAS_VERIFY_CHECKSUM) == -1) {
        if (problem (c, 0, idx, &kids[i], errno,
                     errno == ENOENT ? "data chunk is missing"
                     : "data chunk is damaged"))
          return -1;
      }
    }
    else if (check_node (c, level - 1, idx, &kids[i]) == -1)
      return -1;
  }
  return 0;
}

int
cas_volume_check (struct cas_volume *vol, bool full,
                  int (*fn) (const struct cas_volume_problem *, void *),
                  void *opaque)
{
  struct check c = { .vol = vol, .full = full, .fn = fn, .opaque = opaque };
  struct cas_hash root;
  int r;

  pthread_mutex_lock (&vol->flush_lock);
  root = level_hash (vol, vol->depth - 1, 0);
  pthread_mutex_unlock (&vol->flush_lock);
  if (cas_hash_is_zero (&root))
    return 0;
  c.buf = malloc (vol->bs);
  if (c.buf == NULL)
    return -1;
  r = check_node (&c, vol->depth, 0, &root);
  free (c.buf);
  return r == -1 ? -1 : c.problems;
}
