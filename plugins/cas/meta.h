/* The store's metadata behind one interface: the superblock, the roots of
 * volumes and snapshots, their names (list, create, delete, rename), the
 * writer lease of a volume and the other processes that have it open.
 * The store (store.c, history.c, volume-map.c) keeps the policy: name
 * rules, what may be deleted, messages about names; an implementation
 * keeps where and how:
 *
 *   meta-local.c  files in the store directory (FORMAT.md, "Volumes",
 *                 "History"): one writing process per store (flock of
 *                 DIR/lock), multi-step operations made atomic by an
 *                 intent file.
 *   meta-rados.c  objects in a RADOS pool (FORMAT.md, "RADOS"): any
 *                 number of processes on any number of hosts; one writer
 *                 per volume by a lease asserted in the same operation
 *                 that publishes its root; every multi-object operation
 *                 one atomic object operation.
 *
 * Contract of every operation: 0 (or what is said) on success, -1 with
 * errno set on failure.  Names given here are already checked (store.h's
 * rules).  "Not there" is ENOENT and "already there" EEXIST, without a
 * message (the caller names things in the user's words); every other
 * failure is reported through backend_error() first.
 *
 * Durability: every change is durable when it returns (local: fsync of
 * the file and its directory; RADOS: committed on every replica).
 *
 * Thread safety: every operation may be called from any thread; the
 * store serialises admin operations itself (st->admin_lock) and keeps
 * open volumes apart (st->vol_lock).  A volume handle's publish is
 * called by one thread at a time (the volume's flush_lock).
 */
#ifndef NBDCAS_META_H
#define NBDCAS_META_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chunkstore.h"
#include "format.h"
#include "store.h"

struct cas_meta;
struct cas_meta_vol;

/* Where a root is, for messages: a path, or an object (and key). */
#define CAS_META_WHERE_MAX 1024

/* Called for a remote request to flush an open writable volume (RADOS:
 * a snapshot taken on another host): 0 once every write acknowledged so
 * far is published, -1 after a message.
 */
typedef int (*cas_meta_flush_fn) (void *arg);

struct cas_meta_ops {
  /* The store's kind, for messages and for the front ends: "local" or
   * "rados".
   */
  const char *kind;

  /* Release everything.  Every volume handle is closed before. */
  void (*close) (struct cas_meta *m);

  /* The chunk store of this store, opened once, right after the meta
   * (flags: CAS_PACKSTORE_* for the local one).
   */
  struct chunkstore *(*open_chunks) (struct cas_meta *m, bool readonly,
                                     const uint8_t uuid[16],
                                     unsigned flags);

  /* Replace the superblock with sb, atomically and durably (an upgrade
   * of the format version).
   */
  int (*super_write) (struct cas_meta *m, const struct cas_super *sb);

  /* ---- names ---- */

  /* Whether the root of n exists: 1, 0, or -1 (an error). */
  int (*exists) (struct cas_meta *m, const struct cas_name *n);
  /* A volume whose whole name contains '@' (made before snapshots
   * existed) is found by that name: only a local store can hold one.
   */
  bool (*legacy_volume) (struct cas_meta *m, const char *name);
  /* fn(name) for each volume / each snapshot of volume (its SNAP part),
   * in name order (bytewise); stops at fn's first non-zero value and
   * returns it.
   */
  int (*list_volumes) (struct cas_meta *m,
                       int (*fn) (const char *name, void *opaque),
                       void *opaque);
  int (*list_snapshots) (struct cas_meta *m, const char *volume,
                         int (*fn) (const char *snap, void *opaque),
                         void *opaque);

  /* ---- roots ---- */

  /* The CAS_ROOT_SIZE bytes of n's root (undecoded) and where they are
   * (for messages).  ENOENT without a message if absent.
   */
  int (*root_load) (struct cas_meta *m, const struct cas_name *n,
                    uint8_t buf[CAS_ROOT_SIZE],
                    char where[CAS_META_WHERE_MAX]);

  /* New names, each created exclusively: EEXIST (no message) if the name
   * exists.  A volume's root r (a snapshot root has r->snapshot set).
   * source (volume_create; NULL for a new empty volume): the name
   * ("VOLUME" or "VOLUME@SNAP") whose root r's tree was read from, a
   * clone.  A snapshot's r is the volume's root of generation
   * r->generation.  Both fail with EAGAIN (no message) if that root is
   * not the source's any more (RADOS: a writer published since it was
   * read, or a garbage collection began marking): the caller reads it
   * again and retries.
   */
  int (*volume_create) (struct cas_meta *m, const char *volume,
                        const struct cas_root *r, const char *source);
  int (*snapshot_create) (struct cas_meta *m, const char *volume,
                          const char *snap, const struct cas_root *r);

  /* Removal and renaming.  Each is atomic as seen after a crash: done,
   * or not started.  volume_delete removes the volume's snapshots with
   * it; volume_rename moves them with it (OLD@S becomes NEW@S).  ENOENT
   * (no message) if the source is absent; EEXIST if the destination
   * exists (snapshot_rename: no message; volume_rename: with one, naming
   * what is in the way).
   */
  int (*snapshot_delete) (struct cas_meta *m, const char *volume,
                          const char *snap);
  int (*snapshot_rename) (struct cas_meta *m, const char *volume,
                          const char *old, const char *new);
  int (*volume_delete) (struct cas_meta *m, const char *volume);
  int (*volume_rename) (struct cas_meta *m, const char *old,
                        const char *new);

  /* ---- open volumes ---- */

  /* Open n for the data path: buf and where receive its root as
   * root_load's do (ENOENT without a message if absent).  writable (a
   * volume, never a snapshot): this process becomes its one writer
   * (RADOS: takes the volume's lease; EBUSY, naming the holder, if
   * another has it).  Every opener is reachable by other processes
   * (volume_sync, volume_users) until volume_close.
   */
  struct cas_meta_vol *(*volume_open) (struct cas_meta *m,
                                       const struct cas_name *n,
                                       bool writable,
                                       uint8_t buf[CAS_ROOT_SIZE],
                                       char where[CAS_META_WHERE_MAX]);
  /* What a remote flush request calls (NULL until set: such a request
   * then finds nothing to flush).  Set once the volume is ready; cleared
   * before it goes.
   */
  void (*volume_set_flush) (struct cas_meta_vol *h, cas_meta_flush_fn fn,
                            void *arg);
  /* Publish the writable volume's new root (r->generation is one more
   * than the last one published through h, or read at open).  RADOS:
   * only while h's lease is held, and only over the root h last saw.
   * A handle that lost its lease (or whose volume was deleted) fails
   * this for good: EIO after a message saying why.
   */
  int (*volume_publish) (struct cas_meta_vol *h, const struct cas_root *r);
  /* Whether h may still be used for I/O: 0, or -1/EIO after a message
   * (the lease was lost: another writer may have changed the volume).
   * Cheap: called for every request.
   */
  int (*volume_check) (struct cas_meta_vol *h);
  /* Release h (and its lease). */
  void (*volume_close) (struct cas_meta_vol *h);

  /* ---- other processes ---- */

  /* Ask the process that holds volume for writing elsewhere (another
   * host) to publish every write it acknowledged: 0 when it did, or
   * when nobody holds the volume; -1 after a message naming the holder
   * if it did not answer in time.  Local stores: 0 (no other process can
   * hold a volume of a store this process has open).
   */
  int (*volume_sync) (struct cas_meta *m, const char *volume);
  /* fn(name, who) for each volume or snapshot of volume (name "VOLUME" or
   * "VOLUME@SNAP") that another process has open, who says which
   * process; stops at fn's first non-zero value.  Local stores: none.
   */
  int (*volume_users) (struct cas_meta *m, const char *volume,
                       int (*fn) (const char *name, const char *who,
                                  void *opaque),
                       void *opaque);
};

struct cas_meta {
  const struct cas_meta_ops *ops;
};

/* Every implementation's volume handle starts with this. */
struct cas_meta_vol {
  struct cas_meta *m;
};

/* ---- the local implementation (meta-local.c) ---- */

/* 1 if dir holds a superblock, 0 if absent or empty, -1 otherwise
 * (store.h: cas_store_exists).
 */
int cas_meta_local_exists (const char *dir);
/* Make the directories and write the superblock, last. */
int cas_meta_local_create (const char *dir, const struct cas_super *sb);
/* Read and check the superblock into *sb, take the store lock (shared
 * if readonly), finish an interrupted delete or rename (not readonly).
 */
struct cas_meta *cas_meta_local_open (const char *dir, bool readonly,
                                      struct cas_super *sb);

/* ---- the RADOS implementation (meta-rados.c; configure --with-rados) ---- */

/* pool: "POOL[/NAMESPACE]" (the name without the prefix). */
int cas_meta_rados_exists (const char *pool,
                           const struct cas_ceph_options *ceph);
int cas_meta_rados_create (const char *pool,
                           const struct cas_ceph_options *ceph,
                           const struct cas_super *sb);
struct cas_meta *cas_meta_rados_open (const char *pool,
                                      const struct cas_ceph_options *ceph,
                                      bool readonly, struct cas_super *sb);

/* The connection of a RADOS store's meta (its pool and namespace). */
struct cas_rados;
struct cas_rados *cas_meta_rados_conn (struct cas_meta *m);

/* A volume object's name: "vol." + 32 hex digits, NUL. */
#define CAS_META_RADOS_OID_MAX 40
struct cas_meta_rados_oid {
  char s[CAS_META_RADOS_OID_MAX];
};

/* Garbage collection of a RADOS store (gc-rados.c drives it; FORMAT.md,
 * "Garbage collection on RADOS").
 *
 * The store's gc_gate: a collector's request to empty the known-names
 * cache is carried out holding it exclusively (no put is between storing
 * a chunk and setting a map to it).  Set once, before any volume opens.
 */
void cas_meta_rados_set_gate (struct cas_meta *m, pthread_rwlock_t *gate);
/* The barrier: the writer (lease holder) of every volume named now
 * empties its known-names cache and flushes the volume.  0, or -1 after
 * a message naming a writer that did not answer in time.
 */
int cas_meta_rados_gc_barrier (struct cas_meta *m);
/* Every root of every named volume (its own and its snapshots'), read so
 * that no root made from another while this runs is missed (rounds of
 * {epoch += 1, directory, objects not read yet} until a round finds no
 * new object): fn(name, the root's bytes) for each; fn's non-zero stops
 * it and is returned.  *named receives the objects named by the last
 * directory read (free with free()), sorted by strcmp; *nnamed their
 * number.
 */
int cas_meta_rados_gc_roots (struct cas_meta *m,
                             int (*fn) (const char *name,
                                        const uint8_t root[CAS_ROOT_SIZE],
                                        void *opaque),
                             void *opaque,
                             struct cas_meta_rados_oid **named,
                             size_t *nnamed);
/* The roots that readers (read-only opens of a volume or snapshot, on any
 * host) serve: each is asked (a notification on every named volume) and
 * fn(name, root) called for each answer.  Asked after the marking of
 * cas_meta_rados_gc_roots: a reader that opens later reads a root made
 * after the collector read that volume.  A watcher that does not answer
 * stops it: -1 after a message naming it.
 */
int cas_meta_rados_gc_reader_roots (struct cas_meta *m,
                                    int (*fn) (const char *name,
                                               const uint8_t root[CAS_ROOT_SIZE],
                                               void *opaque),
                                    void *opaque);
/* Whether oid is the name of a volume object ("vol." + 32 hex digits). */
bool cas_meta_rados_is_volume_object (const char *oid);

#endif /* NBDCAS_META_H */
