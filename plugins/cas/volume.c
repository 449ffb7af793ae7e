/* Volumes: the data path (read, write, zero, extents), stat and the
 * map check (fsck).  The block map itself, its leaf cache and flush are
 * in volume-map.c, the write-back cache of blocks in volume-cache.c; the
 * in-memory state is described in volumeint.h.  See store.h for the
 * contract.
 *
 * With the write-back cache (the default), every write goes through it
 * (wcache_write: partial blocks land in memory, whole blocks go straight
 * to the store) and reads look there first.  Without it
 * (write_through), partial-block writes are read-modify-write here.
 *
 * Concurrency of write-through partial-block writes: read-modify-write
 * is optimistic.
 * Read the slot's hash H0 and its data, modify, hash and store the new
 * chunk -- all outside locks -- then set the slot under the leaf mutex
 * only if it still holds H0 (compare-and-set), else start again from the
 * new content.  Two clients writing the two halves of one block therefore
 * both land: one of them retries on top of the other.  (ABA is harmless:
 * equal hashes are equal contents.)  Full-block writes just set the slot.
 *
 * Format 4 (a slot holds a block descriptor, unitwriter.h): the same, but
 * only the units the write touches are read (those it cuts), hashed and
 * stored; the others keep their references.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cleanup.h"
#include "testpoint.h"
#include "volumeint.h"

/* The lock order checks' per-thread state (lockrank.h). */
LOCKRANK_DEFINE;

#define MAX_RMW_RETRIES 1000

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
bool cas_volume_readonly (const struct cas_volume *v) { return v->readonly; }
uint64_t cas_volume_size (const struct cas_volume *v) { return v->size; }
uint32_t cas_volume_blocksize (const struct cas_volume *v) { return v->bs; }
uint64_t cas_volume_nblocks (const struct cas_volume *v) { return v->nblocks; }

int
volume_get_slot (struct cas_volume *vol, uint64_t b, struct cas_hash *out)
{
  struct leaf *l = get_leaf (vol, b / F, false);

  if (l == NULL) {
    if (errno)
      return -1;
    memset (out, 0, sizeof *out);
    return 0;
  }
  ranked_lock (&l->lock);
  *out = l->h[b % F];
  ranked_unlock (&l->lock);
  put_leaf (l);
  return 0;
}

/* The bytes slot value old referenced that new does not: a block's
 * size, or in format 4 the units of old's descriptor that new's lacks
 * (a 4 KiB write into a 64 KiB block leaves 4 KiB of garbage).
 */
static uint64_t
overwritten_bytes (const struct cas_volume *vol, const struct cas_hash *old,
                   const struct cas_hash *new)
{
  struct cas_desc od, nd;
  unsigned units = vol->bs / CAS_UNIT_SIZE, i, k, gone = 0;

  if (vol->ext == NULL || cas_desc_decode (old, units, &od) == -1 ||
      cas_desc_decode (new, units, &nd) == -1)
    return vol->bs;
  for (i = 0; i < od.nruns; i++)
    for (k = 0; k < od.run[i].count && od.run[i].eid; k++) {
      unsigned j;
      for (j = 0; j < nd.nruns; j++)
        if (nd.run[j].eid == od.run[i].eid &&
            od.run[i].slot + k >= nd.run[j].slot &&
            od.run[i].slot + k < nd.run[j].slot + nd.run[j].count)
          break;
      gone += j == nd.nruns;
    }
  return (uint64_t) gone * CAS_UNIT_SIZE;
}

int
volume_set_slot (struct cas_volume *vol, uint64_t b, const struct cas_hash *h,
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
  ranked_lock (&l->lock);
  if (expect && !cas_hash_equal (&l->h[b % F], expect))
    r = 1;
  else if (!cas_hash_equal (&l->h[b % F], h)) {
    /* The block's old chunk may be garbage now (automatic collection
     * counts what may be reclaimed: see cas_store_garbage_hint).
     */
    if (!cas_hash_is_zero (&l->h[b % F]))
      atomic_fetch_add (&vol->st->garbage_hint,
                        overwritten_bytes (vol, &l->h[b % F], h));
    l->h[b % F] = *h;
    l->dirty = true;
    atomic_store (&vol->dirty, true);
  }
  ranked_unlock (&l->lock);
  put_leaf (l);
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
  return volume_get_slot (vol, block, out);
}

int
volume_store_block (struct cas_volume *vol, const void *data,
                    const struct cas_hash *old, const uint64_t *written,
                    struct cas_hash *h)
{
  if (vol->uw)
    return cas_unit_writer_store (vol->uw, data, vol->bs, old, written, h);
  /* Other formats store whole blocks (the write-back cache fills an
   * entry before it stores it).
   */
  if (written != NULL) {
    backend_error ("cas: volume %s: a partial block given to a store of "
                   "format %" PRIu32, vol->name, vol->st->sb.version);
    errno = EINVAL;
    return -1;
  }
  if (cas_is_zero (data, vol->bs)) {
    memset (h, 0, sizeof *h);
    return 0;
  }
  if (cas_hash_compute (data, vol->bs, h) == -1)
    return -1;
  return cs_put (vol->st->cs, h, CAS_CHUNK_DATA, data, vol->bs, NULL);
}

int
volume_read_range (struct cas_volume *vol, const struct cas_hash *h,
                   uint32_t o, uint32_t n, void *buf)
{
  int r;

  if (cas_hash_is_zero (h)) {
    memset (buf, 0, n);
    return 0;
  }
  if (vol->ext)
    r = cas_desc_read (vol->ext, h, vol->bs, o, n, buf, vol->st->verify);
  else if (o == 0 && n == vol->bs)
    return volume_read_block (vol, h, buf);
  else
    r = cs_get_range (vol->st->cs, h, vol->bs, buf, o, n, vol->st->verify);
  /* A block whose data is gone is lost data, for the client an I/O error
   * (ENOENT means nothing in NBD).
   */
  if (r == -1 && errno == ENOENT)
    errno = EIO;
  return r;
}

int
volume_read_block (struct cas_volume *vol, const struct cas_hash *h,
                   void *buf)
{
  uint32_t len;

  if (cas_hash_is_zero (h)) {
    memset (buf, 0, vol->bs);
    return 0;
  }
  if (vol->ext)
    return volume_read_range (vol, h, 0, vol->bs, buf);
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
  /* A writer that lost its volume (RADOS: its lease) serves nothing. */
  if (cas_meta_volume_check (vol->mh) == -1)
    return -1;
  if (write && vol->readonly) {
    backend_error ("cas: %s %s is read-only", strchr (vol->name, '@')
                   ? "snapshot" : "volume", vol->name);
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
  struct piece p = { .offset = offset, .count = count };

  if (check_range (vol, count, offset, false) == -1)
    return -1;
  while (next_piece (vol, &p)) {
    uint8_t *out = (uint8_t *) buf + p.done;
    struct cas_hash h;

    if (wcache_on (vol)) {
      int r = wcache_read (vol, p.b, p.o, p.n, out);
      if (r == -1)
        return -1;
      if (r == 1)
        continue;
    }
    if (volume_get_slot (vol, p.b, &h) == -1 ||
        volume_read_range (vol, &h, p.o, p.n, out) == -1)
      return -1;
  }
  return 0;
}

/* Format 4: make tmp hold the new bytes of the units of [o, o+n) (the
 * units cut by o or o+n completed from old), and *written their sectors:
 * the units outside are not read (unitwriter.h).
 */
static int
patch_units (struct cas_volume *vol, const struct cas_hash *old, uint32_t o,
             uint32_t n, const void *data, uint8_t *tmp, uint64_t *written)
{
  uint32_t first = o / CAS_UNIT_SIZE, last = (o + n - 1) / CAS_UNIT_SIZE, s;

  if (o % CAS_UNIT_SIZE &&
      volume_read_range (vol, old, first * CAS_UNIT_SIZE, CAS_UNIT_SIZE,
                         tmp + first * CAS_UNIT_SIZE) == -1)
    return -1;
  if ((o + n) % CAS_UNIT_SIZE && (last != first || o % CAS_UNIT_SIZE == 0) &&
      volume_read_range (vol, old, last * CAS_UNIT_SIZE, CAS_UNIT_SIZE,
                         tmp + last * CAS_UNIT_SIZE) == -1)
    return -1;
  if (data)
    memcpy (tmp + o, data, n);
  else
    memset (tmp + o, 0, n);
  memset (written, 0, (vol->bs / SECTOR + 63) / 64 * sizeof *written);
  for (s = first * (CAS_UNIT_SIZE / SECTOR);
       s < (last + 1) * (CAS_UNIT_SIZE / SECTOR); s++)
    written[s / 64] |= UINT64_C (1) << (s % 64);
  return 0;
}

/* Read-modify-write of part of block b: data (NULL: zeros) goes to
 * [o, o+n) of the block.  Optimistic: see the comment at the top.
 */
static int
rmw_block (struct cas_volume *vol, uint64_t b, uint32_t o, uint32_t n,
           const void *data, uint8_t *tmp)
{
  uint64_t written[CAS_UNITS_MAX * CAS_UNIT_SIZE / SECTOR / 64];
  int tries, r;

  for (tries = 0; tries < MAX_RMW_RETRIES; tries++) {
    struct cas_hash old, new;

    if (volume_get_slot (vol, b, &old) == -1)
      return -1;
    if (vol->uw) {
      if (patch_units (vol, &old, o, n, data, tmp, written) == -1 ||
          volume_store_block (vol, tmp, &old, written, &new) == -1)
        return -1;
    }
    else {
      if (volume_read_block (vol, &old, tmp) == -1)
        return -1;
      if (data)
        memcpy (tmp + o, data, n);
      else
        memset (tmp + o, 0, n);
      if (volume_store_block (vol, tmp, NULL, NULL, &new) == -1)
        return -1;
    }
    r = volume_set_slot (vol, b, &new, &old);
    if (r <= 0)
      return r;
  }
  backend_error ("cas: volume %s: block %" PRIu64 " kept changing under a "
                 "partial write", vol->name, b);
  errno = EAGAIN;
  return -1;
}

/* The pieces of a write (data) or a zeroing (data NULL). */
static int
write_pieces (struct cas_volume *vol, const uint8_t *data, uint64_t count,
              uint64_t offset)
{
  CLEANUP_FREE uint8_t *tmp = NULL;
  static const struct cas_hash zero;
  struct piece p = { .offset = offset, .count = count };

  while (next_piece (vol, &p)) {
    const uint8_t *src = data ? data + p.done : NULL;   /* NULL: zeros */
    struct cas_hash h;

    if (p.n == vol->bs) {
      struct cas_hash old, *oldp = NULL;
      int tries = 0, r;

      do {
        if (src) {
          /* Format 4 dedups against the block's previous content, and
           * may keep its references unchecked: only over that content
           * (compare-and-set), else a collection that marked the newer
           * content in between would not have marked them.
           */
          if (vol->uw) {
            if (volume_get_slot (vol, p.b, &old) == -1)
              return -1;
            oldp = &old;
          }
          if (volume_store_block (vol, src, oldp, NULL, &h) == -1)
            return -1;
          cas_test_point ("write-stored");
        }
        else
          h = zero;
        r = volume_set_slot (vol, p.b, &h, oldp);
        if (r == -1)
          return -1;
      } while (r == 1 && ++tries < MAX_RMW_RETRIES);
      if (r == 1) {
        backend_error ("cas: volume %s: block %" PRIu64 " kept changing "
                       "under a write", vol->name, p.b);
        errno = EAGAIN;
        return -1;
      }
    }
    else {
      if (tmp == NULL && (tmp = malloc (vol->bs)) == NULL)
        return -1;
      if (rmw_block (vol, p.b, p.o, p.n, src, tmp) == -1)
        return -1;
    }
  }
  return 0;
}

static int
write_or_zero (struct cas_volume *vol, const uint8_t *data, uint64_t count,
               uint64_t offset, bool fua)
{
  int r;

  if (check_range (vol, count, offset, true) == -1)
    return -1;
  if (wcache_on (vol)) {
    struct piece p = { .offset = offset, .count = count };

    /* The cache holds gc_gate itself around each store and slot change
     * (volume-cache.c): an eviction inside it must not take it twice.
     */
    while (next_piece (vol, &p))
      if (wcache_write (vol, p.b, p.o, p.n, data ? data + p.done : NULL) == -1)
        return -1;
    /* FUA is a flush (store.h): every write acknowledged before it is
     * durable with it, not only its own blocks -- a root holding this
     * write but not an earlier one still in the cache would be a volume
     * as of no flush at all.
     */
    if (fua)
      return cas_volume_flush (vol);
    return 0;
  }
  /* Garbage collection starts with no write between storing a chunk and
   * setting the map to it (gc.c).
   */
  ranked_rdlock (&vol->st->gc_gate, LOCK_GC_GATE);
  r = write_pieces (vol, data, count, offset);
  ranked_rwunlock (&vol->st->gc_gate);
  if (r == -1)
    return -1;
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
    if (volume_get_slot (vol, b, &h) == -1 ||
        volume_read_block (vol, &h, tmp) == -1)
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
    /* Blocks in the write-back cache may be newer than the map: data
     * (a dirty block of zeros is reported as data, which is allowed).
     * Looked at before the leaf: a block written back meanwhile is in
     * the leaf by the time it is read (see below).
     */
    bool cached = wcache_on (vol) && atomic_load (&vol->wc.ndirty) > 0;
    struct leaf *l = get_leaf (vol, b / F, false);
    uint64_t stop = (b / F + 1) * F;

    if (stop > vol->nblocks)
      stop = vol->nblocks;
    if (l == NULL && errno)
      return -1;
    for (; b < stop && b * vol->bs < end; b++) {
      bool mapped = false;
      if (l) {
        ranked_lock (&l->lock);
        mapped = !cas_hash_is_zero (&l->h[b % F]);
        ranked_unlock (&l->lock);
      }
      if (!mapped && cached) {
        /* Dirty: data.  Clean or gone: its write-back has set the slot
         * (before the entry turned clean), so look at the slot again --
         * the first look may have come before that.
         */
        mapped = wcache_dirty (vol, b);
        if (!mapped) {
          struct cas_hash h;
          if (volume_get_slot (vol, b, &h) == -1) {
            put_leaf (l);
            return -1;
          }
          mapped = !cas_hash_is_zero (&h);
        }
      }
      if (!have_run) {
        have_run = true;
        run_mapped = mapped;
      }
      else if (mapped != run_mapped) {
        uint64_t s = b * vol->bs;
        int r = fn (run_start, s - run_start, run_mapped, opaque);
        if (r != 0) {
          put_leaf (l);
          return r == 1 ? 0 : -1;
        }
        run_start = s;
        run_mapped = mapped;
      }
      if (!l && !cached) {      /* whole leaf unmapped: skip it */
        b = stop;
        break;
      }
    }
    put_leaf (l);
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

int
cas_volume_stat (struct cas_volume *vol, struct cas_volume_stats *vs)
{
  CLEANUP_FREE struct cas_hash *hashes = malloc (F * sizeof *hashes);
  uint64_t i, b;
  uint32_t k;

  if (hashes == NULL)
    return -1;
  /* Count what clients wrote, not what the cache still holds back. */
  if (wcache_drain (vol) == -1)
    return -1;
  memset (vs, 0, sizeof *vs);
  vs->size = vol->size;
  vs->blocks = vol->nblocks;
  /* Leaves are either cached or have a committed hash: walk the union,
   * without loading them into the cache.
   */
  for (i = 0; i < vol->nleaves; i++) {
    uint64_t committed = sparse_next (&vol->levels[0], i);
    uint64_t cached = sparse_next (&vol->leaves, i);

    i = committed < cached ? committed : cached;
    if (i >= vol->nleaves)
      break;
    if (peek_leaf (vol, i, hashes) == -1)
      return -1;
    for (b = 0; b < F; b++)
      if (!cas_hash_is_zero (&hashes[b]))
        vs->mapped_blocks++;
  }
  vs->mapped_bytes = vs->mapped_blocks * vol->bs;
  ranked_lock (&vol->flush_lock);
  ranked_lock (&vol->map_lock);
  for (k = 0; k < vol->depth; k++)
    for (i = sparse_next (&vol->levels[k], 0); i < vol->count[k];
         i = sparse_next (&vol->levels[k], i + 1))
      if (!cas_hash_is_zero (sparse_peek (&vol->levels[k], i)))
        vs->map_nodes++;
  vs->generation = vol->generation;
  vs->root = volume_level_hash (vol, vol->depth - 1, 0);
  ranked_unlock (&vol->map_lock);
  ranked_unlock (&vol->flush_lock);
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
problem_in (struct check *c, int level, uint64_t index,
            const struct cas_hash *h, int err, const char *what,
            uint64_t extent)
{
  struct cas_volume_problem p = {
    .volume = c->vol->name, .level = level, .index = index, .hash = *h,
    .err = err, .what = what, .extent = extent,
  };
  c->problems++;
  return c->fn ? c->fn (&p, c->opaque) : 0;
}

static int
problem (struct check *c, int level, uint64_t index,
         const struct cas_hash *h, int err, const char *what)
{
  return problem_in (c, level, index, h, err, what, 0);
}

/* Format 4: block `block`'s descriptor d decodes, and every unit it
 * references reads back (its CRC checked; full: re-hashed against its
 * slot table's SHA-256).  One problem per block: the first run that
 * does not resolve.
 */
static int
check_desc (struct check *c, uint64_t block, const struct cas_hash *d)
{
  struct cas_desc desc;
  unsigned k;

  if (cas_desc_decode (d, c->vol->bs / CAS_UNIT_SIZE, &desc) == -1)
    return problem (c, 0, block, d, EIO,
                    "block descriptor is damaged") ? -1 : 0;
  for (k = 0; k < desc.nruns; k++) {
    const struct cas_run *run = &desc.run[k];
    const char *what;

    if (run->eid == 0)
      continue;
    if (cas_extents_read (c->vol->ext, run->eid, run->slot, run->count, 0,
                          run->count * CAS_UNIT_SIZE, c->buf,
                          c->full ? CAS_VERIFY_FULL
                          : CAS_VERIFY_CHECKSUM) == 0)
      continue;
    if (errno == ENOMEM)
      return -1;
    if (errno != ENOENT)
      what = "extent is damaged";
    else if (cas_extents_loc (c->vol->ext, run->eid) == 0)
      what = "extent is missing";
    else
      what = "extent does not store a unit of it";
    return problem_in (c, 0, block, d, errno == ENOENT ? ENOENT : EIO,
                       what, run->eid) ? -1 : 0;
  }
  return 0;
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
      if (vol->ext) {
        if (check_desc (c, idx, &kids[i]) == -1)
          return -1;
        continue;
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

  ranked_lock (&vol->map_lock);
  root = volume_level_hash (vol, vol->depth - 1, 0);
  ranked_unlock (&vol->map_lock);
  if (cas_hash_is_zero (&root))
    return 0;
  c.buf = malloc (vol->bs);
  if (c.buf == NULL)
    return -1;
  r = check_node (&c, vol->depth, 0, &root);
  free (c.buf);
  return r == -1 ? -1 : c.problems;
}
