/* Internals shared by store.c (store, names, root files) and volume.c
 * (volume maps and data path).  Not for the admin tool: use store.h.
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
#include "store.h"
#include "testpoint.h"

struct cas_store {
  char *dir;                    /* const */
  char *voldir;                 /* const: DIR/volumes */
  char *snapdir;                /* const: DIR/snapshots */
  int lockfd;                   /* const: flock()ed */
  bool readonly;                /* const */
  enum cas_verify verify;       /* const */
  uint64_t map_cache;           /* const: leaf cache bytes per volume */
  uint64_t dirty_cache;         /* const: write-back cache bytes per volume,
                                   0: none (write through) */
  struct cas_super sb;          /* const */
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

/* Where the root of n lives: DIR/volumes/NAME or
 * DIR/snapshots/VOLUME/SNAP (malloc'ed; NULL: ENOMEM).
 */
char *cas_root_path (struct cas_store *st, const struct cas_name *n);

/* Read a root (a volume's, or a snapshot's: NAME is VOLUME@SNAP) /
 * atomically replace a volume's (temp file, fsync, rename, fsync of the
 * directory).  read: ENOENT (with a message) if absent.
 */
int cas_root_read (struct cas_store *st, const char *name,
                   struct cas_root *r);
int cas_root_write (struct cas_store *st, const char *name,
                    const struct cas_root *r);

/* Write buf to dir/name atomically and durably (temp file, fsync,
 * rename or, exclusive, link, then fsync of dir).  exclusive: fail with
 * EEXIST (no message) if name exists.
 */
int cas_write_file (const char *dir, const char *name, const void *buf,
                    size_t len, bool exclusive);

/* fn(name) for each entry of dir not starting with '.', in name order
 * (an absent dir has none); stops at fn's first non-zero value.
 */
int cas_list_dir (const char *dir, int (*fn) (const char *, void *),
                  void *opaque);


/* history.c: finish a delete or rename that a crash interrupted (called
 * by a read-write open, with the store lock held).
 */
int cas_history_recover (struct cas_store *st);

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
