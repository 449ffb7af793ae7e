/* A volume's write-back cache of blocks, and its housekeeping thread.
 * See volumeint.h for the state and the lock order.
 *
 * Why: a 4 KiB write into a 64 KiB block used to read, patch, hash and
 * append the whole block each time.  Now a partial write copies its
 * bytes into the block's cache entry and returns; the block is hashed
 * and stored once, when a flush or a FUA write needs it durable or when
 * eviction needs the room.  Whole-block writes still go straight to the
 * store (hashed in the writer's thread), except into a block that has a
 * dirty entry, which they overwrite.
 *
 * An entry need not hold the whole block: a partial write into a block
 * without an entry records only the sectors it wrote (a bitmap), and the
 * rest is the block's slot -- read, merged and checked only when the
 * entry is written back or read there ("fill").  That is sound because
 * while block b has an entry, only the entry's own write-back changes
 * slot b: a writer of the whole block finds the entry and writes into
 * it, or, if b has none, puts a placeholder in its place for the time of
 * its direct write (hash, store, set the slot), and partial writers of b
 * wait for the placeholder to go before they make an entry.
 *
 * Memory is bounded: at most wc.max entries of one block each (the
 * dirtycache= parameter, counted with the entries' own overhead), plus
 * one or two blocks of scratch per thread writing back or filling.  A
 * writer that needs a new entry when the cache is full evicts one itself
 * (the clock's next unpinned entry: a clean one is dropped, a dirty one
 * written back first), and if every entry is busy or pinned it waits for
 * room.  The housekeeping thread evicts from 15/16 full down to 7/8, so
 * that writers seldom have to (not at all if the volume fits).
 *
 * A write-back hashes and stores the entry's data in place: it marks the
 * entry busy, fills it from the slot if it is partial, and writers of
 * that block wait until it is done (readers need not).  So a write-back
 * costs no copy of the block, and nothing is written to an entry that is
 * being hashed.  In a format-4 store a write-back does not fill: the unit
 * writer (unitwriter.h) is given the entry's bitmap of written sectors
 * and the slot, and stores only the units written since the entry was
 * made (reading only those written in part); a read of sectors nobody
 * wrote merges them from the slot without touching the entry.
 *
 * Durability: an entry is dirty from the first write after its last
 * write-back.  cas_volume_flush writes back every entry dirty when it
 * starts (waiting for a write-back already running on one, then writing
 * it back again if it is still dirty) before it commits the map, so
 * every write completed before the flush is in it.
 * A FUA write is a flush (it writes back every dirty entry and commits:
 * volume.c).  A crash loses only what was in no flush or FUA write, as
 * before: each block reads its old or its new content, never a mixture
 * of a write-back.
 *
 * The housekeeping thread: one per volume, started at load and joined
 * at free (after the final flush).  It sleeps on bg_cond until kicked:
 * by a new entry above 15/16 of the cache, by a leaf load above the
 * leaf cache's limit, or by a flush with dirty blocks to write back (it
 * helps, from the other end of the table).  bg_kicked saves the lock on
 * every cache kick but the first.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cleanup.h"
#include "volumeint.h"

/* ---- sizing ---- */

static size_t
entry_bytes (uint32_t words)
{
  return sizeof (struct dblock) + (size_t) words * sizeof (uint64_t);
}

/* What one entry costs: the block, the struct, the bitmap. */
static uint64_t
entry_cost (uint32_t bs)
{
  uint32_t words = (bs / SECTOR + 63) / 64;
  return bs + entry_bytes (words);
}

int
cas_dirty_cache_check (const char *what, uint64_t bytes, uint32_t blocksize)
{
  uint64_t need = CAS_MIN_DIRTY_BLOCKS * entry_cost (blocksize);

  if (bytes == 0 || bytes >= need)
    return 0;
  backend_error ("%s: %" PRIu64 " bytes hold fewer than %d blocks of this "
                 "store's block size (%" PRIu32 "): give 0 (no write-back "
                 "cache) or at least %" PRIu64 " bytes (%" PRIu64 "K)", what,
                 bytes, CAS_MIN_DIRTY_BLOCKS, blocksize, need,
                 (need + 1023) / 1024);
  errno = EINVAL;
  return -1;
}

int
wcache_init (struct cas_volume *vol)
{
  struct wcache *wc = &vol->wc;
  unsigned s;

  memset (wc, 0, sizeof *wc);
  ranked_mutex_init (&wc->evict_lock, LOCK_CACHE_EVICT);
  ranked_mutex_init (&wc->room_lock, LOCK_ROOM);
  ranked_mutex_init (&wc->pool_lock, LOCK_POOL);
  pthread_cond_init (&wc->room, NULL);
  for (s = 0; s < CACHE_STRIPES; s++) {
    ranked_mutex_init (&wc->stripe[s], LOCK_CACHE_STRIPE);
    pthread_cond_init (&wc->gone[s], NULL);
  }
  if (vol->readonly || vol->st->dirty_cache == 0)
    return 0;
  wc->words = (vol->bs / SECTOR + 63) / 64;
  wc->max = vol->st->dirty_cache / entry_cost (vol->bs);
  if (wc->max < CAS_MIN_DIRTY_BLOCKS)
    wc->max = CAS_MIN_DIRTY_BLOCKS;
  /* The thread evicts from 15/16 down to 7/8: room for writers without
   * giving up much of the cache (evicting more would not make eviction
   * cheaper: each evicted dirty block is one write-back either way).
   */
  wc->high = wc->max - wc->max / 16;
  wc->low = wc->max - wc->max / 8;
  /* A volume that fits whole never needs eviction at all. */
  if (wc->max >= vol->nblocks) {
    wc->max = vol->nblocks > CAS_MIN_DIRTY_BLOCKS ? vol->nblocks
      : CAS_MIN_DIRTY_BLOCKS;
    wc->high = wc->low = wc->max;
  }
  for (wc->nbuckets = CACHE_STRIPES; wc->nbuckets < wc->max;
       wc->nbuckets <<= 1)
    ;
  wc->buckets = calloc (wc->nbuckets, sizeof *wc->buckets);
  if (wc->buckets == NULL) {
    wcache_free (vol);
    return -1;
  }
  return 0;
}

static void
free_entry (struct dblock *e)
{
  ranked_mutex_destroy (&e->lock);
  pthread_cond_destroy (&e->idle);
  free (e->data);
  free (e);
}

/* An entry no longer in the cache goes to the pool (count drops: room
 * for another).
 */
static void
release_entry (struct wcache *wc, struct dblock *e)
{
  ranked_mutex_destroy (&e->lock);
  pthread_cond_destroy (&e->idle);
  ranked_lock (&wc->pool_lock);
  e->next = wc->pool;
  wc->pool = e;
  ranked_unlock (&wc->pool_lock);
  atomic_fetch_sub (&wc->count, 1);
}

/* An entry for block b, pinned, from the pool or new.  The caller has
 * counted it.
 */
static struct dblock *
new_entry (struct cas_volume *vol, uint64_t b)
{
  struct wcache *wc = &vol->wc;
  struct dblock *e;

  ranked_lock (&wc->pool_lock);
  e = wc->pool;
  if (e)
    wc->pool = e->next;
  ranked_unlock (&wc->pool_lock);
  if (e) {
    uint8_t *data = e->data;
    memset (e, 0, entry_bytes (wc->words));
    e->data = data;
  }
  else {
    e = calloc (1, entry_bytes (wc->words));
    if (e == NULL)
      return NULL;
    if ((e->data = malloc (vol->bs)) == NULL) {
      free (e);
      return NULL;
    }
  }
  e->b = b;
  atomic_init (&e->pins, 1);
  atomic_init (&e->recent, true);
  ranked_mutex_init (&e->lock, LOCK_CACHE_ENTRY);
  pthread_cond_init (&e->idle, NULL);
  return e;
}

void
wcache_free (struct cas_volume *vol)
{
  struct wcache *wc = &vol->wc;
  uint64_t i;
  unsigned s;

  for (i = 0; wc->buckets && i < wc->nbuckets; i++)
    while (wc->buckets[i]) {
      struct dblock *e = wc->buckets[i];
      wc->buckets[i] = e->next;
      free_entry (e);
    }
  while (wc->pool) {
    struct dblock *e = wc->pool;
    wc->pool = e->next;
    free (e->data);
    free (e);
  }
  free (wc->buckets);
  wc->buckets = NULL;
  ranked_mutex_destroy (&wc->pool_lock);
  ranked_mutex_destroy (&wc->evict_lock);
  pthread_cond_destroy (&wc->room);
  ranked_mutex_destroy (&wc->room_lock);
  for (s = 0; s < CACHE_STRIPES; s++) {
    ranked_mutex_destroy (&wc->stripe[s]);
    pthread_cond_destroy (&wc->gone[s]);
  }
}

/* ---- lookup ---- */

static uint64_t
bucket_of (const struct wcache *wc, uint64_t b)
{
  return (b * UINT64_C (0x9E3779B97F4A7C15)) >> 32 & (wc->nbuckets - 1);
}

static struct ranked_mutex *
stripe_of (struct wcache *wc, uint64_t bucket)
{
  return &wc->stripe[bucket % CACHE_STRIPES];
}

/* Under the bucket's stripe lock. */
static struct dblock *
find (struct wcache *wc, uint64_t bucket, uint64_t b)
{
  struct dblock *e;

  for (e = wc->buckets[bucket]; e; e = e->next)
    if (e->b == b)
      return e;
  return NULL;
}

/* Under the stripe lock: take e out of its chain. */
static void
unlink_entry (struct wcache *wc, uint64_t bucket, struct dblock *e)
{
  struct dblock **pp;

  for (pp = &wc->buckets[bucket]; *pp != e; pp = &(*pp)->next)
    ;
  *pp = e->next;
}

static void
room_changed (struct wcache *wc)
{
  ranked_lock (&wc->room_lock);
  wc->room_gen++;
  pthread_cond_broadcast (&wc->room);
  ranked_unlock (&wc->room_lock);
}

static void
unpin (struct wcache *wc, struct dblock *e)
{
  atomic_fetch_sub (&e->pins, 1);
  /* A writer waiting for room may be waiting for this one. */
  if (atomic_load (&wc->room_waiters))
    room_changed (wc);
}

static bool
is_dirty (const struct dblock *e)
{
  return e->gen != e->clean_gen;
}

/* ---- sectors ---- */

static bool
sector_written (const struct dblock *e, uint32_t s)
{
  return e->written[s / 64] >> (s % 64) & 1;
}

/* Are all the sectors of [o, o+n) written? */
static bool
range_written (const struct dblock *e, uint32_t o, uint32_t n)
{
  uint32_t s;

  for (s = o / SECTOR; s <= (o + n - 1) / SECTOR; s++)
    if (!sector_written (e, s))
      return false;
  return true;
}

static void
mark_written (struct cas_volume *vol, struct dblock *e, uint32_t o,
              uint32_t n)
{
  uint32_t s, i, sectors = vol->bs / SECTOR;

  for (s = o / SECTOR; s <= (o + n - 1) / SECTOR; s++)
    e->written[s / 64] |= UINT64_C (1) << (s % 64);
  if (e->full)
    return;
  for (i = 0; i < sectors; i++)
    if (!sector_written (e, i))
      return;
  e->full = true;
}

/* Copy the runs of sectors of e that are written (want true) or not
 * (false) from src to dst; returns the bytes copied.  dst_packed: dst
 * holds the runs back to back (a save area), not at their offsets.
 */
static size_t
copy_runs (struct cas_volume *vol, const struct dblock *e, bool want,
           uint8_t *dst, bool dst_packed, const uint8_t *src,
           bool src_packed)
{
  uint32_t s, run, sectors = vol->bs / SECTOR;
  size_t done = 0;

  for (s = 0; s < sectors; s = run) {
    for (run = s; run < sectors && sector_written (e, run) == want; run++)
      ;
    if (run > s) {
      size_t at = (size_t) s * SECTOR, n = (size_t) (run - s) * SECTOR;
      memcpy (dst + (dst_packed ? done : at), src + (src_packed ? done : at),
              n);
      done += n;
    }
    else
      run++;
  }
  return done;
}

/* Under e->lock, !e->full: make e whole by reading the slot's content
 * (checked like any read) into the sectors nobody wrote.  When less than
 * half is written (the usual case: a 4 KiB write), the written sectors
 * are put aside and the block is read straight into the entry, then
 * they go back: the least copying.
 */
static int
fill (struct cas_volume *vol, struct dblock *e)
{
  uint32_t s, written = 0, sectors = vol->bs / SECTOR;
  struct cas_hash h;
  int r;

  if (volume_get_slot (vol, e->b, &h) == -1)
    return -1;
  for (s = 0; s < sectors; s++)
    written += sector_written (e, s);
  if (written * 2 <= sectors) {
    CLEANUP_FREE uint8_t *save = malloc ((size_t) written * SECTOR + 1);

    if (save == NULL)
      return -1;
    copy_runs (vol, e, true, save, true, e->data, false);
    r = volume_read_block (vol, &h, e->data);
    /* Back in place whatever happened: on failure the entry stays
     * partial, its written sectors intact.
     */
    copy_runs (vol, e, true, e->data, false, save, true);
  }
  else {
    CLEANUP_FREE uint8_t *base = malloc (vol->bs);

    if (base == NULL)
      return -1;
    r = volume_read_block (vol, &h, base);
    if (r == 0)
      copy_runs (vol, e, false, e->data, false, base, false);
  }
  if (r == -1)
    return -1;
  e->full = true;
  return 0;
}

/* Under e->lock, format 4, !e->full: read [o, o+n) of block b, the
 * sectors written from e, the others from the slot.  Not a fill: e may be
 * busy, its written sectors being hashed by a write-back, so nothing of
 * e's data is moved (and the slot, read once, is the old or the new
 * value: the same bytes where e is not written).
 */
static int
read_merged (struct cas_volume *vol, const struct dblock *e, uint32_t o,
             uint32_t n, uint8_t *out)
{
  struct cas_hash h;
  uint32_t s;

  if (volume_get_slot (vol, e->b, &h) == -1 ||
      volume_read_range (vol, &h, o, n, out) == -1)
    return -1;
  for (s = o / SECTOR; s <= (o + n - 1) / SECTOR; s++)
    if (sector_written (e, s)) {
      uint32_t from = s * SECTOR > o ? s * SECTOR : o;
      uint32_t to = (s + 1) * SECTOR < o + n ? (s + 1) * SECTOR : o + n;
      memcpy (out + (from - o), e->data + from, to - from);
    }
  return 0;
}

/* ---- write-back ---- */

/* Write back e, which the caller has claimed (busy) and pinned: fill it
 * if it is partial, hash and store its data in place (writers wait while
 * it is busy; readers need not), point slot b at it, mark it clean.
 */
static int
write_back (struct cas_volume *vol, struct dblock *e)
{
  struct cas_hash old, h;
  int r = -1;

  ranked_lock (&e->lock);
  /* Slot b is stable while b has an entry: only this changes it.  A
   * format-4 store needs no fill: the unit writer keeps the units nobody
   * wrote as the slot has them, and reads only units written in part.
   */
  if (volume_get_slot (vol, e->b, &old) == 0 &&
      (e->full || vol->uw || fill (vol, e) == 0))
    r = 0;
  ranked_unlock (&e->lock);
  if (r == -1)
    goto out;
  /* Garbage collection starts with no store-and-set-slot in progress
   * (gc.c): a chunk stored before its gate is in the map before it
   * marks.
   */
  ranked_rdlock (&vol->st->gc_gate, LOCK_GC_GATE);
  r = volume_store_block (vol, e->data, &old, vol->uw ? e->written : NULL,
                          &h);
  if (r == 0)
    r = volume_set_slot (vol, e->b, &h, &old);
  ranked_rwunlock (&vol->st->gc_gate);
  if (r == 1) {
    /* Cannot happen (see the top): refuse rather than lose a write. */
    backend_error ("cas: volume %s: block %" PRIu64 " changed under its "
                   "cache entry", vol->name, e->b);
    errno = EIO;
    r = -1;
  }
 out:
  ranked_lock (&e->lock);
  if (r == 0) {
    e->clean_gen = e->gen;      /* writers waited: nothing newer */
    atomic_fetch_sub (&vol->wc.ndirty, 1);
  }
  e->busy = false;
  pthread_cond_broadcast (&e->idle);
  ranked_unlock (&e->lock);
  room_changed (&vol->wc);
  return r;
}

/* Claim pinned e for a write-back if it is dirty: 1 claimed, 0 clean.
 * wait: wait for a write-back already running (and claim it after if it
 * is still dirty); else a busy e counts as not claimable (0).
 */
static int
claim (struct dblock *e, bool wait)
{
  int r = 0;

  ranked_lock (&e->lock);
  while (e->busy && wait)
    ranked_cond_wait (&e->idle, &e->lock);
  if (!e->busy && is_dirty (e)) {
    e->busy = true;
    r = 1;
  }
  ranked_unlock (&e->lock);
  return r;
}

/* Write back every dirty entry, walking the buckets in order.  Returns -1 (errno of the first failure) after
 * trying them all.  helper: the housekeeping thread helping a flush:
 * walk from the other end, skip entries being written back by anyone,
 * stop when nothing is dirty, never fail (the flush's own walk sees to
 * every entry and reports what failed).
 */
static int
drain_buckets (struct cas_volume *vol, bool helper)
{
  struct wcache *wc = &vol->wc;
  uint64_t k;
  int err = 0;

  for (k = 0; k < wc->nbuckets; k++) {
    uint64_t i = helper ? wc->nbuckets - 1 - k : k;
    struct ranked_mutex *m = stripe_of (wc, i);
    struct dblock *e;

    if (helper && atomic_load (&wc->ndirty) == 0)
      break;

    ranked_lock (m);
    for (e = wc->buckets[i]; e; e = e->next) {
      if (e->placeholder)
        continue;
      /* Pinned, e stays in the chain: its next is valid again once the
       * stripe is locked.
       */
      atomic_fetch_add (&e->pins, 1);
      ranked_unlock (m);
      if (claim (e, !helper) && write_back (vol, e) == -1 && err == 0)
        err = errno;
      ranked_lock (m);
      atomic_fetch_sub (&e->pins, 1);
    }
    ranked_unlock (m);
  }
  if (err) {
    errno = err;
    return -1;
  }
  return 0;
}

/* Enough dirty entries to be worth a second thread's help. */
#define DRAIN_HELP_MIN 4

int
wcache_drain (struct cas_volume *vol)
{
  if (!wcache_on (vol) || atomic_load (&vol->wc.ndirty) == 0)
    return 0;
  /* Hashing is the cost: the housekeeping thread writes back from the
   * other end meanwhile, so a flush uses two cores.
   */
  if (vol->bg_started && atomic_load (&vol->wc.ndirty) >= DRAIN_HELP_MIN) {
    ranked_lock (&vol->bg_lock);
    vol->bg_drain = true;
    pthread_cond_signal (&vol->bg_cond);
    ranked_unlock (&vol->bg_lock);
  }
  return drain_buckets (vol, false);
}

/* ---- eviction ---- */

/* Evict entries until at most target remain: a clock over the buckets;
 * an entry used since the hand passed gets another round, a clean one is
 * dropped, a dirty one is written back (outside evict_lock, so that
 * other evictors go on meanwhile) and dropped if it is still clean and
 * unused.  Returns 1 if it freed something, 0 if everything it saw was
 * busy or pinned, -1 if a write-back failed.
 */
static int
evict (struct cas_volume *vol, uint64_t target)
{
  struct wcache *wc = &vol->wc;
  uint64_t seen = 0;
  bool freed = false;
  int err = 0;

  ranked_lock (&wc->evict_lock);
  while (atomic_load (&wc->count) > target && seen < 2 * wc->nbuckets) {
    uint64_t i = wc->hand++ & (wc->nbuckets - 1);
    struct ranked_mutex *m = stripe_of (wc, i);
    struct dblock *e, *next, *gone = NULL, *victim = NULL;

    seen++;
    ranked_lock (m);
    for (e = wc->buckets[i]; e; e = next) {
      next = e->next;
      if (e->placeholder || atomic_load (&e->pins) > 0)
        continue;
      if (atomic_exchange (&e->recent, false))
        continue;
      ranked_lock (&e->lock);
      if (e->busy) {
        ranked_unlock (&e->lock);
        continue;
      }
      if (!is_dirty (e)) {
        ranked_unlock (&e->lock);
        unlink_entry (wc, i, e);
        e->next = gone;
        gone = e;
        continue;
      }
      if (victim == NULL) {
        e->busy = true;
        atomic_fetch_add (&e->pins, 1);
        victim = e;
      }
      ranked_unlock (&e->lock);
    }
    ranked_unlock (m);
    while (gone) {
      e = gone;
      gone = e->next;
      release_entry (wc, e);
      freed = true;
      room_changed (wc);
    }
    if (victim) {
      int r;

      ranked_unlock (&wc->evict_lock);
      r = write_back (vol, victim);
      ranked_lock (m);
      atomic_fetch_sub (&victim->pins, 1);
      if (r == 0 && atomic_load (&victim->pins) == 0) {
        ranked_lock (&victim->lock);
        if (!victim->busy && !is_dirty (victim)) {
          ranked_unlock (&victim->lock);
          unlink_entry (wc, i, victim);
          ranked_unlock (m);
          release_entry (wc, victim);
          freed = true;
          victim = NULL;
        }
        else
          ranked_unlock (&victim->lock);
      }
      if (victim)
        ranked_unlock (m);
      else
        room_changed (wc);
      ranked_lock (&wc->evict_lock);
      if (r == -1) {
        err = errno;
        break;
      }
    }
  }
  ranked_unlock (&wc->evict_lock);
  if (err) {
    errno = err;
    return -1;
  }
  return freed;
}

/* ---- the housekeeping thread ---- */

static void
kick (struct cas_volume *vol)
{
  if (!vol->bg_started || atomic_exchange (&vol->bg_kicked, true))
    return;
  ranked_lock (&vol->bg_lock);
  pthread_cond_signal (&vol->bg_cond);
  ranked_unlock (&vol->bg_lock);
}

void
volume_bg_kick_leaves (struct cas_volume *vol)
{
  if (!vol->bg_started) {
    evict_leaves (vol, false);
    return;
  }
  ranked_lock (&vol->bg_lock);
  vol->bg_leaves = true;
  pthread_cond_signal (&vol->bg_cond);
  ranked_unlock (&vol->bg_lock);
}

static void *
bg_main (void *arg)
{
  struct cas_volume *vol = arg;

  /* Named like the store's other background threads (bg:cas-gc): what
   * is not serving a request.
   */
  pthread_setname_np (pthread_self (), "bg:cas-volume");
  ranked_lock (&vol->bg_lock);
  while (!vol->bg_stop) {
    bool leaves = vol->bg_leaves, drain = vol->bg_drain;
    bool cache = atomic_exchange (&vol->bg_kicked, false);

    if (!leaves && !cache && !drain) {
      ranked_cond_wait (&vol->bg_cond, &vol->bg_lock);
      continue;
    }
    vol->bg_leaves = vol->bg_drain = false;
    ranked_unlock (&vol->bg_lock);
    if (drain)
      drain_buckets (vol, true);
    if (leaves)
      evict_leaves (vol, true);
    /* A failed write-back leaves the entry dirty: the next flush
     * reports the error to a client.
     */
    if (cache && wcache_on (vol) &&
        atomic_load (&vol->wc.count) > vol->wc.high &&
        evict (vol, vol->wc.low) == -1)
      backend_debug ("cas: volume %s: write-back cache eviction: %m",
                     vol->name);
    ranked_lock (&vol->bg_lock);
  }
  ranked_unlock (&vol->bg_lock);
  return NULL;
}

int
volume_bg_start (struct cas_volume *vol)
{
  int err;

  ranked_mutex_init (&vol->bg_lock, LOCK_BG);
  pthread_cond_init (&vol->bg_cond, NULL);
  err = pthread_create (&vol->bg, NULL, bg_main, vol);
  if (err) {
    backend_error ("cas: volume %s: cannot start its housekeeping thread: %s",
                   vol->name, strerror (err));
    errno = err;
    return -1;
  }
  vol->bg_started = true;
  return 0;
}

void
volume_bg_stop (struct cas_volume *vol)
{
  if (vol->bg_started) {
    ranked_lock (&vol->bg_lock);
    vol->bg_stop = true;
    pthread_cond_signal (&vol->bg_cond);
    ranked_unlock (&vol->bg_lock);
    pthread_join (vol->bg, NULL);
    vol->bg_started = false;
  }
  ranked_mutex_destroy (&vol->bg_lock);
  pthread_cond_destroy (&vol->bg_cond);
}

/* ---- the data path ---- */

/* Block b's entry, pinned, made if it has none (waiting for a direct
 * writer's placeholder to go, and for room).  NULL with errno on error.
 */
static struct dblock *
get_entry (struct cas_volume *vol, uint64_t b)
{
  struct wcache *wc = &vol->wc;
  uint64_t i = bucket_of (wc, b);
  struct ranked_mutex *m = stripe_of (wc, i);
  struct dblock *e, *fresh = NULL;

  for (;;) {
    uint64_t n;

    ranked_lock (m);
    while ((e = find (wc, i, b)) != NULL && e->placeholder)
      ranked_cond_wait (&wc->gone[i % CACHE_STRIPES], m);
    if (e) {
      atomic_fetch_add (&e->pins, 1);
      if (!atomic_load_explicit (&e->recent, memory_order_relaxed))
        atomic_store (&e->recent, true);
      ranked_unlock (m);
      if (fresh) {
        release_entry (wc, fresh);
        room_changed (wc);
      }
      return e;
    }
    if (fresh) {
      fresh->next = wc->buckets[i];
      wc->buckets[i] = fresh;
      ranked_unlock (m);
      return fresh;
    }
    ranked_unlock (m);

    /* Reserve room for a new entry, outside the locks. */
    n = atomic_load (&wc->count);
    if (n >= wc->max) {
      uint64_t gen;
      int r;

      kick (vol);
      ranked_lock (&wc->room_lock);
      gen = wc->room_gen;
      ranked_unlock (&wc->room_lock);
      /* Evict one here, unless another thread is evicting (the
       * housekeeping thread, usually): then wait for the entry it frees
       * next rather than queue behind its whole round.
       */
      r = 0;
      if (ranked_trylock (&wc->evict_lock) == 0) {
        ranked_unlock (&wc->evict_lock);
        r = evict (vol, wc->max - 1);
        if (r == -1)
          return NULL;
      }
      if (r == 0) {
        /* Wait for a change: an entry freed, written back or unpinned. */
        atomic_fetch_add (&wc->room_waiters, 1);
        ranked_lock (&wc->room_lock);
        while (wc->room_gen == gen && atomic_load (&wc->count) >= wc->max)
          ranked_cond_wait (&wc->room, &wc->room_lock);
        ranked_unlock (&wc->room_lock);
        atomic_fetch_sub (&wc->room_waiters, 1);
      }
      continue;
    }
    if (!atomic_compare_exchange_weak (&wc->count, &n, n + 1))
      continue;
    if (n + 1 > wc->high)
      kick (vol);
    fresh = new_entry (vol, b);
    if (fresh == NULL) {
      atomic_fetch_sub (&wc->count, 1);
      return NULL;
    }
  }
}

/* Copy [o, o+n) of data (NULL: zeros) into pinned e. */
static int
write_entry (struct cas_volume *vol, struct dblock *e, uint32_t o,
             uint32_t n, const void *data)
{
  RANKED_SCOPED_LOCK (&e->lock);

  /* Its data is being hashed. */
  while (e->busy)
    ranked_cond_wait (&e->idle, &e->lock);
  /* A write that covers a sector only in part needs that sector's old
   * bytes: fill the entry from the slot first (rare: writes are almost
   * always sector-aligned).
   */
  if (!e->full &&
      ((o % SECTOR && !sector_written (e, o / SECTOR)) ||
       ((o + n) % SECTOR && !sector_written (e, (o + n) / SECTOR))) &&
      fill (vol, e) == -1)
    return -1;
  if (data)
    memcpy (e->data + o, data, n);
  else
    memset (e->data + o, 0, n);
  /* Marked even in a full entry: a format-4 write-back stores only the
   * units written since the entry was made (its other sectors are the
   * slot's content: see the top).
   */
  mark_written (vol, e, o, n);
  if (!is_dirty (e))
    atomic_fetch_add (&vol->wc.ndirty, 1);
  e->gen++;
  return 0;
}

/* Write all of block b straight to the store, under a placeholder (see
 * the top), unless b has an entry that must take the write: a dirty,
 * busy or pinned one.  A clean idle entry is dropped instead (it would
 * only be stale).  Returns 1 if the caller must write into the entry
 * *ep (pinned), 0 done, -1 error.
 */
static int
write_direct (struct cas_volume *vol, uint64_t b, const void *data,
              struct dblock **ep)
{
  struct wcache *wc = &vol->wc;
  uint64_t i = bucket_of (wc, b);
  struct ranked_mutex *m = stripe_of (wc, i);
  struct dblock ph = { .b = b, .placeholder = true }, *e, *drop = NULL;
  struct cas_hash h;
  int r;

  ranked_lock (m);
  while ((e = find (wc, i, b)) != NULL && e->placeholder)
    ranked_cond_wait (&wc->gone[i % CACHE_STRIPES], m);
  if (e) {
    bool keep;

    ranked_lock (&e->lock);
    keep = atomic_load (&e->pins) > 0 || e->busy || is_dirty (e);
    ranked_unlock (&e->lock);
    if (keep) {
      atomic_fetch_add (&e->pins, 1);
      ranked_unlock (m);
      *ep = e;
      return 1;
    }
    unlink_entry (wc, i, e);
    drop = e;
  }
  ph.next = wc->buckets[i];
  wc->buckets[i] = &ph;
  ranked_unlock (m);
  if (drop) {
    release_entry (wc, drop);
    room_changed (wc);
  }

  r = 0;
  ranked_rdlock (&vol->st->gc_gate, LOCK_GC_GATE);    /* as in write_back */
  if (data) {
    struct cas_hash old, *oldp = NULL;

    /* Format 4 dedups against the block's previous content (the slot is
     * stable under the placeholder).
     */
    if (vol->uw) {
      if (volume_get_slot (vol, b, &old) == -1)
        r = -1;
      oldp = &old;
    }
    if (r == 0 && volume_store_block (vol, data, oldp, NULL, &h) == -1)
      r = -1;
  }
  else
    memset (&h, 0, sizeof h);
  if (r == 0 && volume_set_slot (vol, b, &h, NULL) == -1)
    r = -1;
  ranked_rwunlock (&vol->st->gc_gate);

  ranked_lock (m);
  unlink_entry (wc, i, &ph);
  pthread_cond_broadcast (&wc->gone[i % CACHE_STRIPES]);
  ranked_unlock (m);
  return r;
}

int
wcache_write (struct cas_volume *vol, uint64_t b, uint32_t o, uint32_t n,
              const void *data)
{
  struct dblock *e = NULL;
  int r;

  if (n == vol->bs) {
    r = write_direct (vol, b, data, &e);
    if (r <= 0)
      return r;
  }
  else if ((e = get_entry (vol, b)) == NULL)
    return -1;
  r = write_entry (vol, e, o, n, data);
  unpin (&vol->wc, e);
  return r;
}

int
wcache_read (struct cas_volume *vol, uint64_t b, uint32_t o, uint32_t n,
             void *out)
{
  struct wcache *wc = &vol->wc;
  uint64_t i = bucket_of (wc, b);
  struct ranked_mutex *m = stripe_of (wc, i);
  struct dblock *e;
  int r = 1;

  ranked_lock (m);
  e = find (wc, i, b);
  if (e && e->placeholder)
    e = NULL;                   /* not written yet: the slot is as good */
  if (e)
    atomic_fetch_add (&e->pins, 1);
  ranked_unlock (m);
  if (e == NULL)
    return 0;
  ranked_lock (&e->lock);
  if (e->full || range_written (e, o, n))
    memcpy (out, e->data + o, n);
  else if (vol->uw) {
    if (read_merged (vol, e, o, n, out) == -1)
      r = -1;
  }
  else if (fill (vol, e) == -1)
    r = -1;
  else
    memcpy (out, e->data + o, n);
  ranked_unlock (&e->lock);
  unpin (wc, e);
  return r;
}

bool
wcache_dirty (struct cas_volume *vol, uint64_t b)
{
  struct wcache *wc = &vol->wc;
  uint64_t i;
  struct dblock *e;
  bool r = false;

  if (!wcache_on (vol) || atomic_load (&wc->ndirty) == 0)
    return false;
  i = bucket_of (wc, b);
  ranked_lock (stripe_of (wc, i));
  e = find (wc, i, b);
  if (e && !e->placeholder) {
    ranked_lock (&e->lock);
    r = is_dirty (e) || e->busy;
    ranked_unlock (&e->lock);
  }
  ranked_unlock (stripe_of (wc, i));
  return r;
}
