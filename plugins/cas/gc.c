/* Garbage collection: mark from every root, then let the chunk store give
 * back what nothing references.  See store.h for the contract and
 * FORMAT.md ("Garbage collection") for the protocol and the argument that
 * no reachable chunk is ever removed.  In short:
 *
 *  1. The gate: wait for every write in progress (each holds st->gc_gate
 *     shared while it stores chunks and sets its map), then start the
 *     chunk store's collection: from here on a write never references a
 *     chunk that existed before (it stores a new copy, in a pack that is
 *     not collected).
 *  2. Flush every open volume: every write acknowledged before the gate
 *     is now in a committed root.
 *  3. Take every root at once (under admin_lock: no snapshot, clone,
 *     delete or rename meanwhile), then mark what their trees reference.
 *     A root that cannot be read stops the collection.
 *  4. Sweep: every chunk stored before the gate that is not marked is
 *     garbage: nothing committed references it (3), nothing acknowledged
 *     and unflushed does (2), and nothing written after the gate can (1).
 *
 * Format 4: the mark records, per extent, which slots the roots'
 * block descriptors reference (refs.c); an extent none of whose stored
 * slots is referenced is garbage by the same argument (a write after the
 * gate never references an extent in a sealed pack: extent.c refuses
 * such units for dedup).  A block descriptor that does not decode stops
 * the collection, as a map node that cannot be read does.
 *
 * Thread safety: one collection at a time (gc_lock); it runs beside
 * every other operation of the store.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cleanup.h"
#include "storeint.h"
#include "testpoint.h"
#include "vector.h"

struct named_root {
  char *name;
  struct cas_root root;
};
DEFINE_VECTOR_TYPE (root_vector, struct named_root);

struct root_list {
  struct cas_store *st;
  root_vector v;
};

static int
add_root (const char *name, void *opaque)
{
  struct root_list *l = opaque;
  struct named_root r;

  if (cas_root_read (l->st, name, &r.root) == -1) {
    backend_error ("cas: garbage collection stopped: '%s' cannot be read, "
                   "so what it references is unknown (run nbdcas fsck)",
                   name);
    return -1;
  }
  if ((r.name = strdup (name)) == NULL ||
      root_vector_append (&l->v, r) == -1) {
    free (r.name);
    return -1;
  }
  /* A volume's snapshots are roots too. */
  if (strchr (name, '@') == NULL)
    return cas_store_list_snapshots (l->st, name, add_root, l);
  return 0;
}

static void
free_root (struct named_root *r)
{
  free (r->name);
}

/* Flush every volume open in this process. */
static int
flush_open_volumes (struct cas_store *st)
{
  CLEANUP_FREE struct cas_volume **vols = NULL;
  struct cas_volume *v;
  size_t n = 0, i;
  int r = 0;

  pthread_mutex_lock (&st->vol_lock);
  for (v = st->vols; v; v = *cas_volume_next (v))
    n++;
  vols = calloc (n + 1, sizeof *vols);
  if (vols == NULL) {
    pthread_mutex_unlock (&st->vol_lock);
    return -1;
  }
  n = 0;
  for (v = st->vols; v; v = *cas_volume_next (v)) {
    (*cas_volume_refs (v))++;
    vols[n++] = v;
  }
  pthread_mutex_unlock (&st->vol_lock);
  for (i = 0; i < n; i++) {
    if (r == 0 && cas_volume_flush (vols[i]) == -1) {
      backend_error ("cas: garbage collection: flushing volume '%s' failed",
                     cas_volume_name (vols[i]));
      r = -1;
    }
    cas_volume_close (vols[i]);
  }
  return r;
}

uint64_t
cas_store_garbage_hint (struct cas_store *st)
{
  return atomic_load (&st->garbage_hint);
}

static bool
marked (const struct cas_hash *h, void *opaque)
{
  return cas_refs_has (opaque, h);
}

static uint16_t
extent_marked (uint64_t eid, void *opaque)
{
  return cas_refs_extent_live (opaque, eid);
}

int
cas_store_gc (struct cas_store *st, const struct cas_gc_options *opts,
              struct cas_gc_stats *stats)
{
  struct chunkstore *cs = st->cs;
  struct root_list roots = { .st = st, .v = empty_vector };
  struct cas_chunkstore_stats cst;
  struct cas_refs *refs = NULL;
  struct cas_gc_mark mark = { .is_live = marked };
  size_t i;
  int ret = -1, r;

  memset (stats, 0, sizeof *stats);
  if (st->readonly) {
    backend_error ("cas: the store is open read-only: no garbage "
                   "collection");
    errno = EROFS;
    return -1;
  }
  if (pthread_mutex_trylock (&st->gc_lock) != 0) {
    backend_error ("cas: a garbage collection is already running");
    errno = EBUSY;
    return -1;
  }
  /* A store in a RADOS pool: writers on other hosts, another protocol. */
  if (!cas_store_is_local (st)) {
#ifdef HAVE_RADOS
    ret = cas_store_gc_rados (st, opts, stats);
#else
    backend_error ("cas: this chunk store has no garbage collection");
    errno = ENOTSUP;
#endif
    pthread_mutex_unlock (&st->gc_lock);
    return ret;
  }
  if (cs->ops->gc_begin == NULL) {
    backend_error ("cas: this chunk store has no garbage collection");
    errno = ENOTSUP;
    pthread_mutex_unlock (&st->gc_lock);
    return -1;
  }

  /* 1. The gate. */
  pthread_rwlock_wrlock (&st->gc_gate);
  r = cs->ops->gc_begin (cs);
  pthread_rwlock_unlock (&st->gc_gate);
  if (r == -1)
    goto out_unlock;
  cas_test_point ("gc-begun");

  /* 2. Everything acknowledged into a committed root. */
  if (flush_open_volumes (st) == -1)
    goto out;

  /* 3. The roots, all at once; then their trees. */
  pthread_mutex_lock (&st->admin_lock);
  r = cas_store_list_volumes (st, add_root, &roots);
  pthread_mutex_unlock (&st->admin_lock);
  if (r != 0)
    goto out;
  cs->ops->stats (cs, &cst);
  refs = cas_refs_new (cst.chunks);
  if (refs == NULL)
    goto out;
  for (i = 0; i < roots.v.len; i++)
    if (cas_refs_mark_root (st, refs, &roots.v.ptr[i].root) == -1) {
      backend_error ("cas: garbage collection stopped: the map of '%s' "
                     "cannot be read, so what it references is unknown "
                     "(run nbdcas fsck)", roots.v.ptr[i].name);
      goto out;
    }
  stats->roots = roots.v.len;
  /* What was overwritten before the mark is this collection's to take. */
  atomic_store (&st->garbage_hint, 0);
  /* Map nodes and data chunks; and extents, which stand for chunks in
   * the statistics.
   */
  stats->marked_chunks = cas_refs_count (refs) +
    cas_refs_live_extents (refs);
  stats->mark_bytes = cas_refs_memory (refs);
  cas_test_point ("gc-marked");

  /* 4. Sweep. */
  mark.opaque = refs;
  if (st->sb.version >= CAS_FORMAT_VERSION_UNITS)
    mark.extent_live = extent_marked;
  if (cs->ops->gc_sweep (cs, &mark, opts, stats) == -1)
    goto out;
  ret = 0;
 out:
  cs->ops->gc_end (cs);
 out_unlock:
  pthread_mutex_unlock (&st->gc_lock);
  cas_refs_free (refs);
  root_vector_free_all (&roots.v, free_root);
  return ret;
}
