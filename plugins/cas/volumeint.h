/* A volume's in-memory state, shared by volume-map.c (the block map:
 * load, the leaf cache, flush), volume.c (the data path, stat, fsck) and
 * volume-cache.c (the write-back cache of blocks, and the housekeeping
 * thread).  Not for the admin tool: use store.h.
 *
 * In memory, a volume keeps:
 *  - levels[0] entry i (0 <= i < nleaves): the committed hash of leaf
 *    node i; levels[k] entry j: the committed hash of node j at height
 *    k+1, up to the root (levels[depth-1] entry 0).  Only flush and the
 *    leaf cache's write-back change them, both under map_lock; readers
 *    of levels[0] take levels_lock for 32 bytes (writers take both).
 *  - leaves entry i: leaf node i (1024 block hashes) while it is cached.
 *    Each leaf has a mutex (held only to copy 32 bytes), a dirty flag and
 *    a pin count: get_leaf returns it pinned, put_leaf unpins it, and
 *    only an unpinned leaf can be evicted.
 *  - the write-back cache (struct wcache, volume-cache.c): blocks whose
 *    newest content is in memory, not yet (or already) stored.  A block's
 *    slot in its leaf ("the slot") only changes through its cache entry
 *    while it has one (see volume-cache.c), so an entry's unwritten parts
 *    are always the slot's content.
 * levels and leaves are sparse arrays (sparse.h): a volume costs memory
 * for what is mapped or cached, not for its size, and walks over them
 * (load, flush, stat, eviction) skip the unallocated parts.  A node's F
 * children are one run in the level below (SPARSE_RUN == F), so they are
 * read and written in place.
 *
 * The leaf cache holds about max_leaves leaves (more only while the
 * leaves over the limit are pinned).  Eviction is a clock sweep, run by
 * the housekeeping thread (a request only sweeps itself when loads
 * outrun the thread by 2x); a dirty leaf is first written back (stored
 * as a map node, its hash put in levels[0]), which makes the next flush
 * publish it: what a flush publishes is the same either way.  Write-back
 * and flush's own commits take map_lock one leaf at a time, so sweeps go
 * on during a flush.
 *
 * Lock order, outermost first (lockrank.h ranks these classes and checks
 * the order at run time in checking builds):
 *  1. the write-back cache's evict_lock (the clock hand), a cache stripe,
 *     an entry's lock;
 *  2. the store's gc_gate, shared, around a store-and-set-slot (never
 *     taken twice: a collection waiting for it exclusively would block
 *     the second);
 *  3. flush_lock, the map's evict_lock, then map_lock or a leaf stripe
 *     (never both: commit_leaf, under map_lock, is called with the
 *     stripe released), then a leaf's mutex or levels_lock (never both);
 *  4. room_lock, pool_lock, bg_lock and the unit writer's lock
 *     (format 4: unitwriter.h) are innermost: nothing is taken under
 *     them, nor one under another.
 * Pins are taken under the leaf's stripe lock.  Nothing calls get_leaf
 * holding a map lock or flush_lock; get_leaf (so the map's locks) may be
 * called holding an entry's lock or gc_gate, and the chunk store may be
 * called holding either.  Nothing takes a cache lock holding gc_gate, a
 * map lock or flush_lock (flush writes the cache back before it takes
 * flush_lock).
 */
#ifndef NBDCAS_VOLUMEINT_H
#define NBDCAS_VOLUMEINT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "lockrank.h"
#include "extent.h"
#include "sparse.h"
#include "storeint.h"
#include "unitwriter.h"

#define F CAS_MAP_FANOUT
_Static_assert (F == SPARSE_RUN, "a map node's children are one sparse run");

#define LEAF_STRIPES 64
#define CACHE_STRIPES 64
/* The write-back cache tracks what clients wrote in 512-byte sectors. */
#define SECTOR 512u

struct leaf {
  struct ranked_mutex lock;
  bool dirty;                   /* under lock */
  atomic_uint pins;             /* raised under the stripe lock */
  atomic_bool recent;           /* used since the clock hand passed */
  struct cas_hash h[F];
};

/* An entry of the write-back cache: block b's newest content, or a
 * placeholder (on the stack of a thread writing block b whole, straight
 * to the store: other writers of b wait until it is gone).
 */
struct dblock {
  struct dblock *next;          /* bucket chain, under its stripe */
  uint64_t b;                   /* const */
  bool placeholder;             /* const */
  atomic_uint pins;             /* raised under the stripe lock */
  atomic_bool recent;           /* used since the clock hand passed */
  struct ranked_mutex lock;        /* the fields below */
  pthread_cond_t idle;          /* busy went false */
  bool busy;                    /* a write-back of it is running */
  bool full;                    /* data holds the whole block; else only
                                   the written sectors (the rest is the
                                   slot's content) */
  uint64_t gen, clean_gen;      /* dirty (newer than the slot) while they
                                   differ: gen counts writes, clean_gen is
                                   the gen last written back */
  uint8_t *data;                /* bs bytes */
  uint64_t written[];           /* !full: sectors written (a bitmap) */
};

struct wcache {
  uint64_t max;                 /* const: entries at most; 0: no cache */
  uint64_t high;                /* const: wake the thread above this */
  uint64_t low;                 /* const: the thread evicts down to this */
  uint64_t nbuckets;            /* const: a power of two */
  uint32_t words;               /* const: bitmap words per entry */
  struct dblock **buckets;      /* chain i under stripe[i % CACHE_STRIPES] */
  struct ranked_mutex stripe[CACHE_STRIPES];
  pthread_cond_t gone[CACHE_STRIPES];   /* a placeholder left this stripe */
  atomic_uint_fast64_t count;   /* entries in use (not placeholders) */
  atomic_uint_fast64_t ndirty;  /* entries that are dirty */
  struct ranked_mutex evict_lock;  /* the hand; one evictor walks at a time
                                    (released while it writes back) */
  uint64_t hand;                /* the clock hand: a bucket */
  struct ranked_mutex room_lock;   /* room_gen, room (innermost) */
  pthread_cond_t room;          /* room_gen changed */
  uint64_t room_gen;            /* +1 when an entry is freed, written back
                                   or unpinned with waiters */
  atomic_uint room_waiters;     /* writers waiting for room */
  struct ranked_mutex pool_lock;   /* pool */
  struct dblock *pool;          /* entries no longer used, kept for reuse:
                                   allocated entries stay <= max, and
                                   freeing none avoids heap fragmentation
                                   across threads */
};

struct cas_volume {
  struct cas_volume *next;      /* store's list, under st->vol_lock */
  unsigned refs;                /* under st->vol_lock */
  struct cas_store *st;
  struct cas_meta_vol *mh;      /* const: the root's handle (meta.h) */
  char *name;
  bool readonly;                /* const: a snapshot (or a read-only store) */
  uint32_t bs;
  uint64_t size, nblocks, nleaves;
  uint32_t depth;
  uint64_t *count;              /* count[k]: entries of levels[k] */
  /* Format 4 (FORMAT.md "Format version 4"): a slot holds a block
   * descriptor, the block's units live in the store's extents (ext,
   * NULL in other formats) and are stored through the volume's unit
   * writer (uw, NULL if read-only or not format 4).  Both const.
   */
  struct cas_extents *ext;
  struct cas_unit_writer *uw;

  struct ranked_mutex flush_lock;  /* one flush at a time; generation */
  struct ranked_mutex map_lock;    /* levels, stale, unpublished */
  struct ranked_mutex levels_lock; /* levels[0] element reads/writes */
  struct sparse *levels;        /* [depth] of struct cas_hash */
  struct sparse *stale;         /* [depth] of bool (k >= 1): recompute */
  atomic_bool dirty;            /* some leaf changed since last flush */
  bool unpublished;             /* levels changed since the root computed
                                   for the last publish */
  uint64_t generation;          /* under flush_lock */

  /* The leaf cache. */
  struct sparse leaves;         /* of struct leaf *_Atomic */
  struct ranked_mutex stripe[LEAF_STRIPES]; /* slot changes and pins */
  atomic_uint_fast64_t cached;  /* leaves in the cache */
  uint64_t max_leaves;          /* const */
  struct ranked_mutex evict_lock;  /* one sweep at a time; hand */
  uint64_t hand;                /* the clock hand: a leaf index */

  struct wcache wc;             /* the write-back cache */

  /* The housekeeping thread: leaf sweeps and cache eviction, so that no
   * request waits for them (volume-cache.c).  Started at load, joined
   * at free.
   */
  pthread_t bg;
  bool bg_started;              /* const after load */
  struct ranked_mutex bg_lock;     /* bg_stop, bg_leaves, bg_drain, bg_cond */
  pthread_cond_t bg_cond;
  bool bg_stop;
  bool bg_leaves;               /* a leaf sweep is wanted */
  bool bg_drain;                /* a flush wants help writing back */
  atomic_bool bg_kicked;        /* a wake-up is pending (saves the lock) */
};

/* The committed hash of node j at level k (zero if never set). */
struct cas_hash volume_level_hash (const struct cas_volume *vol, uint32_t k,
                                   uint64_t j);

/* Leaf i, pinned; NULL with errno 0 if it is all zero and !create; NULL
 * with errno set on error.  Every leaf returned goes back by put_leaf.
 */
struct leaf *get_leaf (struct cas_volume *vol, uint64_t i, bool create);
void put_leaf (struct leaf *l);

/* Sweep the leaf cache down to 7/8 of max_leaves (volume-map.c).  wait:
 * wait for a sweep already running, else leave the work to it.
 */
void evict_leaves (struct cas_volume *vol, bool wait);

/* The data path's block primitives (volume.c). */
int volume_get_slot (struct cas_volume *vol, uint64_t b, struct cas_hash *out);
/* Set slot b to *h, if expect is not NULL only if it holds *expect: 0
 * set, 1 it did not, -1 error.
 */
int volume_set_slot (struct cas_volume *vol, uint64_t b,
                     const struct cas_hash *h, const struct cas_hash *expect);
/* Store one block (bs bytes); *h = its slot value (the zero hash for
 * zeros).  written: NULL, data holds the whole block; else (format 4
 * only) the bitmap of the 512-byte sectors of data that are new, the
 * others being the content of the block's current slot value *old, not
 * looked at (nor read, for units of the block not written at all).
 * old may be NULL (unmapped) when written is; in format 4 it helps
 * dedup against the block's previous content.
 */
int volume_store_block (struct cas_volume *vol, const void *data,
                        const struct cas_hash *old, const uint64_t *written,
                        struct cas_hash *h);
/* Read the block whose slot holds *h (bs bytes, zeros for the zero
 * hash); volume_read_range reads bytes [o, o + n) of it.
 */
int volume_read_block (struct cas_volume *vol, const struct cas_hash *h,
                       void *buf);
int volume_read_range (struct cas_volume *vol, const struct cas_hash *h,
                       uint32_t o, uint32_t n, void *buf);

/* The write-back cache (volume-cache.c).  wcache_init sizes it from the
 * store's dirty_cache (none on a read-only store or with write_through);
 * wcache_free frees it (every entry must be clean: after a flush).
 */
int wcache_init (struct cas_volume *vol);
void wcache_free (struct cas_volume *vol);
static inline bool
wcache_on (const struct cas_volume *vol)
{
  return vol->wc.max > 0;
}
/* Write [o, o+n) of block b (data NULL: zeros) through the cache. */
int wcache_write (struct cas_volume *vol, uint64_t b, uint32_t o, uint32_t n,
                  const void *data);
/* Read [o, o+n) of block b from the cache: 1 done, 0 not cached (read
 * the slot), -1 error.
 */
int wcache_read (struct cas_volume *vol, uint64_t b, uint32_t o, uint32_t n,
                 void *out);
/* Whether block b has a cache entry that may be newer than its slot. */
bool wcache_dirty (struct cas_volume *vol, uint64_t b);
/* Write back every entry dirty when called (flush, FUA, stat).  -1 with
 * errno if one failed.
 */
int wcache_drain (struct cas_volume *vol);

/* The housekeeping thread (volume-cache.c). */
int volume_bg_start (struct cas_volume *vol);
void volume_bg_stop (struct cas_volume *vol);
/* Ask it for a leaf sweep. */
void volume_bg_kick_leaves (struct cas_volume *vol);
/* Publish a new root of what the slots hold now: flush without draining
 * the write-back cache (volume-map.c; cas_volume_flush drains first).
 */
int volume_commit (struct cas_volume *vol);

/* Leaf i's F hashes into out, from the cache if it is there, else from
 * its committed node without caching it (for walks over every leaf that
 * should not churn the cache).  -1 with errno on error.
 */
int peek_leaf (struct cas_volume *vol, uint64_t i, struct cas_hash *out);

#endif /* NBDCAS_VOLUMEINT_H */
