/* A volume's in-memory state, shared by volume-map.c (the block map:
 * load, the leaf cache, flush) and volume.c (the data path, stat, fsck).
 * Not for the admin tool: use store.h.
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
 * All three are sparse arrays (sparse.h): a volume costs memory for what
 * is mapped or cached, not for its size, and walks over them (load,
 * flush, stat, eviction) skip the unallocated parts.  A node's F children
 * are one run in the level below (SPARSE_RUN == F), so they are read and
 * written in place.
 *
 * The leaf cache holds about max_leaves leaves (more only while the
 * leaves over the limit are pinned).  Eviction is a clock sweep; a dirty
 * leaf is first written back (stored as a map node, its hash put in
 * levels[0]), which makes the next flush publish it: what a flush
 * publishes is the same either way.  Write-back and flush's own commits
 * take map_lock one leaf at a time, so sweeps go on during a flush.
 *
 * Lock order: flush_lock, evict_lock, map_lock, then a leaf's mutex or
 * levels_lock.  A leaf stripe is only ever held alone or before a leaf's
 * mutex or levels_lock (never with map_lock).  Pins are taken under the
 * leaf's stripe lock.  Nothing calls get_leaf holding any of these.
 */
#ifndef NBDCAS_VOLUMEINT_H
#define NBDCAS_VOLUMEINT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "sparse.h"
#include "storeint.h"

#define F CAS_MAP_FANOUT
_Static_assert (F == SPARSE_RUN, "a map node's children are one sparse run");

#define LEAF_STRIPES 64

struct leaf {
  pthread_mutex_t lock;
  bool dirty;                   /* under lock */
  atomic_uint pins;             /* raised under the stripe lock */
  atomic_bool recent;           /* used since the clock hand passed */
  struct cas_hash h[F];
};

struct cas_volume {
  struct cas_volume *next;      /* store's list, under st->vol_lock */
  unsigned refs;                /* under st->vol_lock */
  struct cas_store *st;
  char *name;
  bool readonly;                /* const: a snapshot (or a read-only store) */
  uint32_t bs;
  uint64_t size, nblocks, nleaves;
  uint32_t depth;
  uint64_t *count;              /* count[k]: entries of levels[k] */

  pthread_mutex_t flush_lock;   /* one flush at a time; generation */
  pthread_mutex_t map_lock;     /* levels, stale, unpublished */
  pthread_mutex_t levels_lock;  /* levels[0] element reads/writes */
  struct sparse *levels;        /* [depth] of struct cas_hash */
  struct sparse *stale;         /* [depth] of bool (k >= 1): recompute */
  atomic_bool dirty;            /* some leaf changed since last flush */
  bool unpublished;             /* levels changed since the root computed
                                   for the last publish */
  uint64_t generation;          /* under flush_lock */

  /* The leaf cache. */
  struct sparse leaves;         /* of struct leaf *_Atomic */
  pthread_mutex_t stripe[LEAF_STRIPES]; /* slot changes and pins */
  atomic_uint_fast64_t cached;  /* leaves in the cache */
  uint64_t max_leaves;          /* const */
  pthread_mutex_t evict_lock;   /* one sweep at a time; hand */
  uint64_t hand;                /* the clock hand: a leaf index */
};

/* The committed hash of node j at level k (zero if never set). */
struct cas_hash volume_level_hash (const struct cas_volume *vol, uint32_t k,
                                   uint64_t j);

/* Leaf i, pinned; NULL with errno 0 if it is all zero and !create; NULL
 * with errno set on error.  Every leaf returned goes back by put_leaf.
 */
struct leaf *get_leaf (struct cas_volume *vol, uint64_t i, bool create);
void put_leaf (struct leaf *l);

/* Leaf i's F hashes into out, from the cache if it is there, else from
 * its committed node without caching it (for walks over every leaf that
 * should not churn the cache).  -1 with errno on error.
 */
int peek_leaf (struct cas_volume *vol, uint64_t i, struct cas_hash *out);

#endif /* NBDCAS_VOLUMEINT_H */
