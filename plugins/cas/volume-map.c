/* A volume's block map: loading it from the root, the leaf cache, and
 * flush.  See volumeint.h for the in-memory state and its locking.
 *
 * Flush: snapshot each dirty leaf (clear its dirty flag under its mutex),
 * store it as a map node, recompute the dirty interior nodes bottom-up,
 * sync the chunk store (data + nodes durable), then publish the root
 * atomically (meta.h: a root file renamed into place, or a RADOS write
 * that also asserts this writer's lease).  A write that completes while a flush runs is either in
 * that flush or in the next; one completed before the flush began is
 * always in it.  Flushes of one volume are serialised (flush_lock).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "cleanup.h"
#include "volumeint.h"

/* Fewer leaves than this and threads would evict each other's. */
#define MIN_CACHED_LEAVES 16

static void
destroy_leaf (struct leaf *l)
{
  ranked_mutex_destroy (&l->lock);
  free (l);
}

/* For sparse_free: a slot of vol->leaves. */
static void
free_leaf (void *elem)
{
  struct leaf *l = atomic_load ((struct leaf *_Atomic *) elem);

  if (l)
    destroy_leaf (l);
}

/* Free the map and the locks (the volume struct and its name stay). */
static void
free_map (struct cas_volume *vol)
{
  uint32_t k;
  unsigned s;

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
  ranked_mutex_destroy (&vol->flush_lock);
  ranked_mutex_destroy (&vol->map_lock);
  ranked_mutex_destroy (&vol->levels_lock);
  ranked_mutex_destroy (&vol->evict_lock);
  for (s = 0; s < LEAF_STRIPES; s++)
    ranked_mutex_destroy (&vol->stripe[s]);
}

struct cas_hash
volume_level_hash (const struct cas_volume *vol, uint32_t k, uint64_t j)
{
  static const struct cas_hash zero;
  const struct cas_hash *h = sparse_peek (&vol->levels[k], j);

  return h ? *h : zero;
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

/* The interior levels, top-down from the root.  Interior nodes are small
 * (1/1024 of the mapped leaves): load them all now; leaves are loaded on
 * first use.  Zero subtrees stay unallocated.
 */
static int
load_interior (struct cas_volume *vol, const struct cas_hash *root)
{
  uint32_t k;
  uint64_t j;

  if (!cas_hash_is_zero (root)) {
    struct cas_hash *top = sparse_get (&vol->levels[vol->depth - 1], 0);
    if (top == NULL)
      return -1;
    *top = *root;
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
        return -1;
      if (read_node (vol, h, kids, n) == -1) {
        backend_error ("cas: volume %s: cannot load its block map",
                       vol->name);
        return -1;
      }
    }
  return 0;
}

static int
remote_flush (void *arg)
{
  return cas_volume_flush (arg);
}

struct cas_volume *
cas_volume_load (struct cas_store *st, const char *name)
{
  struct cas_volume *vol;
  struct cas_root r;
  uint32_t k;
  unsigned s;

  struct cas_meta_vol *mh;

  /* A writable volume's writer: this process (a RADOS store: its lease). */
  mh = cas_store_volume_open (st, name, !st->readonly, &r);
  if (mh == NULL)
    return NULL;
  if (r.blocksize != st->sb.blocksize || r.fanout != F || r.size == 0 ||
      r.size > CAS_MAX_VOLUME_SIZE) {
    backend_error ("cas: volume %s: root file does not match the store "
                   "(block size %" PRIu32 ", fanout %" PRIu32 ", size %"
                   PRIu64 ")", name, r.blocksize, r.fanout, r.size);
    cas_meta_volume_close (mh);
    errno = EIO;
    return NULL;
  }
  vol = calloc (1, sizeof *vol);
  if (vol == NULL) {
    cas_meta_volume_close (mh);
    return NULL;
  }
  vol->mh = mh;
  vol->refs = 1;
  vol->st = st;
  vol->readonly = st->readonly || r.snapshot;
  vol->bs = r.blocksize;
  vol->size = r.size;
  vol->nblocks = (r.size + vol->bs - 1) / vol->bs;
  vol->nleaves = (vol->nblocks + F - 1) / F;
  vol->depth = cas_map_depth (vol->nblocks, F);
  vol->generation = r.generation;
  vol->max_leaves = st->map_cache / sizeof (struct leaf);
  if (vol->max_leaves < MIN_CACHED_LEAVES)
    vol->max_leaves = MIN_CACHED_LEAVES;
  ranked_mutex_init (&vol->flush_lock, LOCK_FLUSH);
  ranked_mutex_init (&vol->map_lock, LOCK_MAP);
  ranked_mutex_init (&vol->levels_lock, LOCK_LEVELS);
  ranked_mutex_init (&vol->evict_lock, LOCK_MAP_EVICT);
  for (s = 0; s < LEAF_STRIPES; s++)
    ranked_mutex_init (&vol->stripe[s], LOCK_LEAF_STRIPE);
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
        (k > 0 &&               /* leaves have no stale flag */
         sparse_init (&vol->stale[k], vol->count[k], sizeof (bool)) == -1))
      goto err;
  }
  if (load_interior (vol, &r.root) == -1)
    goto err;
  /* Format 4: slots are block descriptors over the store's extents. */
  vol->ext = cas_packstore_extents (st->cs);
  if (vol->ext && !vol->readonly &&
      (vol->uw = cas_unit_writer_new (vol->ext, vol->bs, st->verify,
                                      name)) == NULL)
    goto err;
  if (wcache_init (vol) == -1)
    goto err;
  if (volume_bg_start (vol) == -1) {
    wcache_free (vol);
    goto err;
  }
  /* Another host taking a snapshot asks for a flush through here. */
  if (!vol->readonly)
    cas_meta_volume_set_flush (vol->mh, remote_flush, vol);
  return vol;

 err:
  {
    int saved = errno ? errno : ENOMEM;
    cas_unit_writer_free (vol->uw);   /* nothing stored yet */
    cas_meta_volume_close (vol->mh);
    free_map (vol);
    free (vol->name);
    free (vol);
    errno = saved;
    return NULL;
  }
}

/* ---- the leaf cache ---- */

static struct ranked_mutex *
stripe_of (struct cas_volume *vol, uint64_t i)
{
  return &vol->stripe[i % LEAF_STRIPES];
}

/* Leaf i pinned if it is cached, else NULL.  touch: count it as a use
 * for the clock (flush's walk does not).  An empty slot is seen without
 * the lock: walks over big volumes skip empty slots cheaply, and whoever
 * fills a slot re-checks it under the lock.
 */
static struct leaf *
pin_cached (struct cas_volume *vol, uint64_t i, bool touch)
{
  struct leaf *_Atomic *slot = sparse_peek (&vol->leaves, i);
  struct ranked_mutex *m = stripe_of (vol, i);
  struct leaf *l;

  if (slot == NULL || atomic_load_explicit (slot, memory_order_acquire) == NULL)
    return NULL;
  ranked_lock (m);
  l = atomic_load (slot);
  if (l) {
    atomic_fetch_add (&l->pins, 1);
    /* Read first: a hot leaf's line is not written on every access. */
    if (touch && !atomic_load_explicit (&l->recent, memory_order_relaxed))
      atomic_store (&l->recent, true);
  }
  ranked_unlock (m);
  return l;
}

void
put_leaf (struct leaf *l)
{
  if (l)
    atomic_fetch_sub (&l->pins, 1);
}

static struct cas_hash
committed_leaf_hash (struct cas_volume *vol, uint64_t i)
{
  RANKED_SCOPED_LOCK (&vol->levels_lock);
  return volume_level_hash (vol, 0, i);
}


/* Leaf i's node *h into out[0..F), zero-padded (the last leaf may cover
 * fewer than F blocks).
 */
static int
read_leaf (struct cas_volume *vol, uint64_t i, const struct cas_hash *h,
           struct cas_hash *out)
{
  uint64_t n = vol->nblocks - i * F;

  if (n > F)
    n = F;
  memset (out, 0, F * sizeof *out);
  return read_node (vol, h, out, n);
}

int
peek_leaf (struct cas_volume *vol, uint64_t i, struct cas_hash *out)
{
  struct leaf *l = pin_cached (vol, i, false);
  struct cas_hash h;

  if (l) {
    ranked_lock (&l->lock);
    memcpy (out, l->h, sizeof l->h);
    ranked_unlock (&l->lock);
    put_leaf (l);
    return 0;
  }
  h = committed_leaf_hash (vol, i);
  return read_leaf (vol, i, &h, out);
}

/* Load leaf i from its committed node. */
static struct leaf *
load_leaf (struct cas_volume *vol, uint64_t i, const struct cas_hash *h)
{
  struct leaf *l = malloc (sizeof *l);

  if (l == NULL)
    return NULL;
  ranked_mutex_init (&l->lock, LOCK_LEAF);
  l->dirty = false;
  atomic_init (&l->pins, 1);
  atomic_init (&l->recent, true);
  if (read_leaf (vol, i, h, l->h) == -1) {
    int saved = errno;
    char hex[2 * CAS_HASH_SIZE + 1];

    backend_error ("cas: volume %s: map leaf %" PRIu64 " (%s) is unreadable",
                   vol->name, i, cas_hash_hex (h, hex));
    destroy_leaf (l);
    errno = saved;
    return NULL;
  }
  return l;
}

struct leaf *
get_leaf (struct cas_volume *vol, uint64_t i, bool create)
{
  for (;;) {
    struct leaf *_Atomic *slot;
    struct leaf *l, *cur;
    struct cas_hash h, now;
    uint64_t n;

    l = pin_cached (vol, i, true);
    if (l)
      return l;
    h = committed_leaf_hash (vol, i);
    if (cas_hash_is_zero (&h) && !create) {
      errno = 0;
      return NULL;
    }
    /* Load outside any lock. */
    l = load_leaf (vol, i, &h);
    if (l == NULL)
      return NULL;
    slot = sparse_get (&vol->leaves, i);
    if (slot == NULL) {
      destroy_leaf (l);
      return NULL;              /* errno = ENOMEM */
    }
    ranked_lock (stripe_of (vol, i));
    cur = atomic_load (slot);
    if (cur) {                  /* another thread loaded it: use its */
      atomic_fetch_add (&cur->pins, 1);
      atomic_store (&cur->recent, true);
      ranked_unlock (stripe_of (vol, i));
      destroy_leaf (l);
      return cur;
    }
    /* Meanwhile the leaf may have been loaded, changed, written back and
     * evicted: then what was read is stale.  (Equal hashes are equal
     * contents, so an unchanged hash is enough.)
     */
    now = committed_leaf_hash (vol, i);
    if (!cas_hash_equal (&now, &h)) {
      ranked_unlock (stripe_of (vol, i));
      destroy_leaf (l);
      continue;
    }
    atomic_store (slot, l);
    ranked_unlock (stripe_of (vol, i));
    n = atomic_fetch_add (&vol->cached, 1) + 1;
    /* Over the limit: the housekeeping thread sweeps.  Far over it
     * (loads outrun the thread): wait for the running sweep, then sweep
     * here too, so memory stays bounded under any load.
     */
    if (n > 2 * vol->max_leaves)
      evict_leaves (vol, true);
    else if (n > vol->max_leaves)
      volume_bg_kick_leaves (vol);
    return l;
  }
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

/* If pinned leaf i is dirty, store it as a map node and record its hash
 * in levels[0] (its parent goes stale).  snap is room for F hashes.  On
 * error the leaf stays dirty.  The whole of it is under map_lock: two
 * commits of one leaf (flush's and a sweep's) must not overtake each
 * other, or an older snapshot could land last.
 */
static int
commit_leaf (struct cas_volume *vol, uint64_t i, struct leaf *l,
             struct cas_hash *snap)
{
  struct cas_hash nh, old, *slot;
  bool *up = NULL, dirty;
  RANKED_SCOPED_LOCK (&vol->map_lock);

  ranked_lock (&l->lock);
  dirty = l->dirty;
  if (dirty) {
    memcpy (snap, l->h, F * sizeof *snap);
    l->dirty = false;
  }
  ranked_unlock (&l->lock);
  if (!dirty)
    return 0;
  if (put_node (vol, snap, F, &nh) == -1)
    goto failed;
  old = volume_level_hash (vol, 0, i);
  if (cas_hash_equal (&nh, &old))
    return 0;
  if (!cas_hash_is_zero (&old))         /* the leaf's old node */
    atomic_fetch_add (&vol->st->garbage_hint, F * CAS_HASH_SIZE);
  /* Both slots first, so that a failed allocation changes nothing. */
  if ((vol->depth > 1 && (up = sparse_get (&vol->stale[1], i / F)) == NULL)
      || (slot = sparse_get (&vol->levels[0], i)) == NULL)
    goto failed;
  ranked_lock (&vol->levels_lock);
  *slot = nh;
  ranked_unlock (&vol->levels_lock);
  if (up)
    *up = true;
  vol->unpublished = true;
  return 0;

 failed:
  ranked_lock (&l->lock);
  l->dirty = true;
  ranked_unlock (&l->lock);
  return -1;
}

/* Evict unpinned leaves down to 7/8 of the cache (so that sweeps are not
 * one per load), clock order: a leaf used since the hand last passed
 * gets another round.  A dirty leaf is written back first.  wait: wait
 * for a sweep already running (else leave the work to it).
 */
void
evict_leaves (struct cas_volume *vol, bool wait)
{
  CLEANUP_FREE struct cas_hash *snap = NULL;
  uint64_t target = vol->max_leaves - vol->max_leaves / 8;
  uint64_t i, seen = 0;

  if (wait)
    ranked_lock (&vol->evict_lock);
  else if (ranked_trylock (&vol->evict_lock) != 0)
    return;
  if (!vol->readonly)
    snap = malloc (F * sizeof *snap);   /* none: no write-back */
  i = vol->hand;
  /* Two rounds of the clock at most: the first may only clear bits. */
  while (atomic_load (&vol->cached) > target &&
         seen < 2 * atomic_load (&vol->cached) + LEAF_STRIPES) {
    struct leaf *_Atomic *slot;
    struct ranked_mutex *m;
    struct leaf *l;
    bool dirty;

    i = sparse_next (&vol->leaves, i);
    if (i >= vol->nleaves) {
      i = sparse_next (&vol->leaves, 0);
      if (i >= vol->nleaves)
        break;
    }
    slot = sparse_peek (&vol->leaves, i);
    if (atomic_load_explicit (slot, memory_order_acquire) == NULL) {
      i++;                      /* empty: not worth the lock */
      continue;
    }
    m = stripe_of (vol, i);
    ranked_lock (m);
    l = atomic_load (slot);
    if (l == NULL)
      goto next;
    seen++;
    if (atomic_load (&l->pins) > 0 || atomic_exchange (&l->recent, false))
      goto next;
    ranked_lock (&l->lock);
    dirty = l->dirty;
    ranked_unlock (&l->lock);
    if (dirty) {
      int r;

      if (snap == NULL)
        goto next;
      atomic_fetch_add (&l->pins, 1);
      ranked_unlock (m);
      r = commit_leaf (vol, i, l, snap);  /* map_lock: stripe not held */
      ranked_lock (m);
      atomic_fetch_sub (&l->pins, 1);
      if (r == -1 || atomic_load (&l->pins) > 0)
        goto next;
      ranked_lock (&l->lock);
      dirty = l->dirty;         /* written to while it was written back */
      ranked_unlock (&l->lock);
      if (dirty)
        goto next;
    }
    atomic_store (slot, NULL);
    ranked_unlock (m);
    destroy_leaf (l);
    atomic_fetch_sub (&vol->cached, 1);
    i++;
    continue;
  next:
    ranked_unlock (m);
    i++;
  }
  vol->hand = i;
  ranked_unlock (&vol->evict_lock);
}

/* ---- flush ---- */

uint64_t
cas_volume_generation (const struct cas_volume *v)
{
  struct cas_volume *vol = (struct cas_volume *) v;
  RANKED_SCOPED_LOCK (&vol->flush_lock);

  return vol->generation;
}

/* Interior nodes whose children changed, bottom-up.  Under map_lock. */
static int
commit_interior (struct cas_volume *vol)
{
  uint32_t k;
  uint64_t j;

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
        return -1;
      if ((k + 1 < vol->depth &&
           (up = sparse_get (&vol->stale[k + 1], j / F)) == NULL) ||
          (slot = sparse_get (&vol->levels[k], j)) == NULL)
        return -1;
      *stale = false;
      if (!cas_hash_equal (&nh, slot)) {
        *slot = nh;
        if (up)
          *up = true;
      }
    }
  return 0;
}

/* Under flush_lock: commit the interior nodes, and take the root to
 * publish (*publish: whether it is new).
 */
static int
commit_tree (struct cas_volume *vol, bool *publish, struct cas_hash *root)
{
  RANKED_SCOPED_LOCK (&vol->map_lock);

  if (commit_interior (vol) == -1)
    return -1;
  *publish = vol->unpublished;
  vol->unpublished = false;
  *root = volume_level_hash (vol, vol->depth - 1, 0);
  return 0;
}

/* Under flush_lock: whether there is anything to flush. */
static bool
flush_needed (struct cas_volume *vol)
{
  if (atomic_exchange (&vol->dirty, false))
    return true;
  RANKED_SCOPED_LOCK (&vol->map_lock);
  return vol->unpublished;
}

int
cas_volume_flush (struct cas_volume *vol)
{
  if (vol->readonly)
    return 0;
  /* Every block written before this call is in a slot before the map is
   * committed (volume-cache.c).
   */
  if (wcache_drain (vol) == -1)
    return -1;
  return volume_commit (vol);
}

int
volume_commit (struct cas_volume *vol)
{
  CLEANUP_FREE struct cas_hash *snap = NULL;
  struct cas_root r;
  bool publish;
  uint64_t i;
  int ret = -1;

  if (vol->readonly)
    return 0;
  /* A writer that lost the volume (RADOS: its lease) cannot commit what
   * it acknowledged: the flush fails even with nothing left to publish.
   */
  if (cas_meta_volume_check (vol->mh) == -1)
    return -1;
  ranked_lock (&vol->flush_lock);
  if (!flush_needed (vol)) {
    ret = 0;
    goto out;
  }
  snap = malloc (F * sizeof *snap);
  if (snap == NULL)
    goto redirty;

  /* 1. Dirty leaves -> map nodes (leaves written back by a sweep are
   * already in levels[0]).
   */
  for (i = sparse_next (&vol->leaves, 0); i < vol->nleaves;
       i = sparse_next (&vol->leaves, i + 1)) {
    struct leaf *l = pin_cached (vol, i, false);
    int err;

    if (l == NULL)
      continue;
    err = commit_leaf (vol, i, l, snap);
    put_leaf (l);
    if (err == -1)
      goto redirty;
  }
  /* 2. Interior nodes, and the root: it holds every leaf committed so
   * far, by step 1 or by a sweep.
   */
  memset (&r, 0, sizeof r);
  if (commit_tree (vol, &publish, &r.root) == -1)
    goto redirty;
  if (!publish) {
    ret = 0;
    goto out;
  }
  /* 3. Everything the new root references becomes durable (sweeps' nodes
   * too: they were stored before step 2), 4. then the root is published
   * atomically.
   */
  r.version = CAS_ROOT_VERSION;
  r.blocksize = vol->bs;
  r.size = vol->size;
  r.generation = vol->generation + 1;
  r.fanout = F;
  r.depth = vol->depth;
  r.mtime = time (NULL);
  /* Format 4: the units the slots reference are appended first (the
   * leaves committed above were taken after their units were added), so
   * the sync makes them durable with the map.
   */
  if ((vol->uw && cas_unit_writer_flush (vol->uw) == -1) ||
      cs_sync (vol->st->cs) == -1 || cas_meta_publish (vol->mh, &r) == -1) {
    ranked_lock (&vol->map_lock);
    vol->unpublished = true;
    ranked_unlock (&vol->map_lock);
    goto out;
  }
  vol->generation++;
  ret = 0;
  goto out;

 redirty:
  /* Leaves already cleaned are recorded in levels/unpublished. */
  atomic_store (&vol->dirty, true);
 out:
  ranked_unlock (&vol->flush_lock);
  return ret;
}

int
cas_volume_free (struct cas_volume *vol)
{
  int r;

  /* No remote flush request may reach the volume once it is going. */
  if (!vol->readonly)
    cas_meta_volume_set_flush (vol->mh, NULL, NULL);
  r = cas_volume_flush (vol);
  if (r == -1)
    backend_error ("cas: volume %s: final flush failed: %m", vol->name);
  /* Nobody else uses the volume now but its thread. */
  volume_bg_stop (vol);
  wcache_free (vol);
  /* After the final flush: its open extent is empty (or holds units
   * nothing published references).
   */
  if (cas_unit_writer_free (vol->uw) == -1)
    r = -1;
  /* After the final publish: the lease goes last. */
  cas_meta_volume_close (vol->mh);
  free_map (vol);
  free (vol->name);
  free (vol);
  return r;
}
