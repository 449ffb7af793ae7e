/* Internals shared by store.c (store, names, roots), history.c, the meta
 * implementations (meta.h) and volume*.c (volume maps and data path).
 * Not for the admin tool: use store.h.
 *
 * Thread safety: fields marked "const" are set at open and never change;
 * vol_lock protects the list of open volumes and their refcounts.
 */
#ifndef NBDCAS_STOREINT_H
#define NBDCAS_STOREINT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "chunkstore.h"
#include "format.h"
#include "meta.h"
#include "store.h"
#include "testpoint.h"

struct cas_store {
  char *dir;                    /* const: the store's name */
  bool readonly;                /* const */
  enum cas_verify verify;       /* const */
  uint64_t map_cache;           /* const: leaf cache bytes per volume */
  uint64_t dirty_cache;         /* const: write-back cache bytes per volume,
                                   0: none (write through) */
  struct cas_super sb;          /* const */
  struct cas_meta *meta;        /* const: roots, names, leases (meta.h) */
  struct chunkstore *cs;        /* const */
  pthread_mutex_t vol_lock;
  struct cas_volume *vols;      /* open volumes (list), under vol_lock */
  pthread_mutex_t admin_lock;   /* one snapshot/clone/delete/rename at a
                                   time (history.c) */
  /* Garbage collection (gc.c): every write holds gc_gate shared while it
   * stores chunks and sets its map; a collection takes it exclusively for
   * a moment, to start with no write in progress.  Writer-preferring, so
   * a stream of writes cannot keep a collection out.
   */
  pthread_rwlock_t gc_gate;
  pthread_mutex_t gc_lock;      /* one collection at a time */
  _Atomic uint64_t garbage_hint; /* bytes overwritten since the last
                                    collection (cas_store_garbage_hint) */
};

/* Read a root (a volume's, or a snapshot's: NAME is VOLUME@SNAP), or
 * open one for the data path (writable: this process becomes the
 * volume's writer, meta.h volume_open), decoded and checked.  ENOENT
 * (with a message) if absent.
 */
int cas_root_read (struct cas_store *st, const char *name,
                   struct cas_root *r);
struct cas_meta_vol *cas_store_volume_open (struct cas_store *st,
                                            const char *name, bool writable,
                                            struct cas_root *r);

/* A volume handle's operations (meta.h). */
static inline int
cas_meta_publish (struct cas_meta_vol *h, const struct cas_root *r)
{
  return h->m->ops->volume_publish (h, r);
}
static inline int
cas_meta_volume_check (struct cas_meta_vol *h)
{
  return h->m->ops->volume_check (h);
}
static inline void
cas_meta_volume_set_flush (struct cas_meta_vol *h, cas_meta_flush_fn fn,
                           void *arg)
{
  h->m->ops->volume_set_flush (h, fn, arg);
}
static inline void
cas_meta_volume_close (struct cas_meta_vol *h)
{
  if (h)
    h->m->ops->volume_close (h);
}


/* gc-rados.c: the collection of a RADOS store (cas_store_gc calls it,
 * holding gc_lock).
 */
int cas_store_gc_rados (struct cas_store *st,
                        const struct cas_gc_options *opts,
                        struct cas_gc_stats *stats);

/* volume.c: load a volume object from its root file (refs = 1), flush
 * and free one.  Called by store.c under vol_lock.
 */
struct cas_volume *cas_volume_load (struct cas_store *st, const char *name);
int cas_volume_free (struct cas_volume *vol);
/* List linkage and refcount, under st->vol_lock. */
struct cas_volume **cas_volume_next (struct cas_volume *vol);
unsigned *cas_volume_refs (struct cas_volume *vol);
struct cas_store *cas_volume_store (struct cas_volume *vol);

/* A map node's payload: the child hashes with trailing zero hashes cut
 * (an all-zero node is never stored).  Returns the payload length.
 */
static inline uint32_t
cas_node_length (const struct cas_hash *h, uint32_t n)
{
  while (n > 0 && cas_hash_is_zero (&h[n - 1]))
    n--;
  return n * CAS_HASH_SIZE;
}

#endif /* NBDCAS_STOREINT_H */
