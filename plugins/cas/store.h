/* The cas store: the API shared by the backend (cas.c) and the admin tool
 * (tool/nbdcas).
 *
 * A store is a directory (layout in FORMAT.md):
 *   DIR/superblock   magic, format version, block size
 *   DIR/lock         flock()ed by the one process that has the store open
 *   DIR/packs/       append-only pack files of records (the chunk store)
 *   DIR/index        cache of the hash index (rebuilt from packs if bad)
 *   DIR/extent-ids   format 4: extent ids reserved (never reused; a
 *                    damaged file refuses a writable open)
 *   DIR/volumes/NAME one root file per volume: size, root hash of its map
 * or a pool (and namespace) of a Ceph cluster, named "rados:POOL[/NS]"
 * (FORMAT.md, "RADOS"; built with configure --with-rados), which many
 * processes on many hosts open at once, one writer per volume.  What
 * differs between the two lives behind meta.h and chunkstore.h.
 *
 * A volume is a virtual disk of fixed-size blocks; block b's content is
 * the chunk named by a hash in the volume's block map (a tree of map-node
 * chunks), or zeros if that hash is all zero (unmapped).
 *
 * Errors: functions returning int return 0 on success, -1 with errno set;
 * functions returning a pointer return NULL with errno set.  Every failure
 * first reports a human-readable message through backend_error() (common/
 * backend.h): the program linking this library provides backend_error and
 * backend_debug (nbdkit-glue.c, minnbd, or the admin tool).
 *
 * Thread safety: after cas_store_open(), every function may be called
 * from any number of threads concurrently, except cas_store_close() (call
 * it once, after every volume is closed).  Volume data calls
 * (read/write/zero/flush/extents) on one volume from many threads are
 * safe and run in parallel; hashing happens in the calling thread,
 * outside locks.
 *
 * Durability: cas_volume_write/zero change the volume immediately for
 * every reader of this store, but survive a crash only after
 * cas_volume_flush() returns (which commits every write made to that
 * volume before it was called, by any thread or connection), or, for
 * one write, after a FUA write returns.  After a crash, each block reads
 * back its content as of some flush or later, never a mixture within a
 * block and never garbage.  Partial-block writes may wait in the
 * volume's write-back cache (bounded: dirty_cache) until a flush, a FUA
 * write or eviction hashes and stores each block once.
 */
#ifndef NBDCAS_STORE_H
#define NBDCAS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "chunkstore.h"
#include "format.h"
#include "hash.h"


struct cas_store;
struct cas_volume;

/* ---- Store ---- */

/* A RADOS store's connection and lease (ignored for a directory). */
enum cas_takeover {
  CAS_TAKEOVER_NO = 0,       /* a volume held by another writer: refused */
  CAS_TAKEOVER_WAIT,         /* ... wait (one lease at most) for it */
  CAS_TAKEOVER_FORCE,        /* ... fence that writer (blocklist), take it */
};
struct cas_ceph_options {
  const char *conf;          /* ceph.conf; NULL: librados's own search
                                (which honours $CEPH_CONF) */
  const char *user;          /* cephx user; NULL: "admin" */
  unsigned timeout;          /* seconds for connecting and for each
                                operation; 0: CAS_CEPH_DEFAULT_TIMEOUT */
  unsigned lease;            /* a writer's lease on its volume, seconds;
                                0: CAS_CEPH_DEFAULT_LEASE */
  enum cas_takeover takeover;
};
#define CAS_CEPH_DEFAULT_TIMEOUT 30
#define CAS_CEPH_DEFAULT_LEASE 30
#define CAS_CEPH_MIN_LEASE 3

struct cas_open_options {
  bool readonly;             /* open read-only: no writes, no tail cut */
  enum cas_verify verify;    /* applied to every chunk read */
  uint64_t map_cache;        /* bytes of map leaves each open volume keeps
                                in memory; 0: CAS_DEFAULT_MAP_CACHE */
  bool rebuild_index;        /* do not use the index cache: index every
                                pack (fsck: trust nothing but the packs) */
  uint64_t dirty_cache;      /* bytes of written blocks each open volume
                                may keep in memory before storing them
                                (the write-back cache); 0:
                                CAS_DEFAULT_DIRTY_CACHE */
  bool write_through;        /* no write-back cache: every write is hashed
                                and stored before it returns */
  const struct cas_ceph_options *ceph;  /* a RADOS store; NULL: defaults */
  /* cas_store_create_opts: how the new store compresses its data blocks
   * (all zero: off).  Fixed for the store's life, in its superblock;
   * not used by cas_store_open (compare cas_store_compression).  A RADOS
   * store refuses anything but off (EINVAL).
   */
  struct cas_compression compression;
  /* cas_store_create_opts: the new store's format version: 0 (the
   * default, CAS_FORMAT_VERSION, or 3 with compression) or
   * CAS_FORMAT_VERSION_UNITS (4, experimental: 4 KiB dedup units, block
   * sizes 4 to 64 KiB, local stores only).  Check it first with
   * cas_store_format_check.  Not used by cas_store_open (a store keeps
   * its version).
   */
  uint32_t format;
};

/* 64 MiB: 2000 leaves, the map of 128 GiB of a volume at the default
 * block size (8 GiB at 4 KiB blocks).
 */
#define CAS_DEFAULT_MAP_CACHE (UINT64_C (64) * 1024 * 1024)

/* 64 MiB: 1000 blocks at the default block size.  Partial-block writes
 * land in this cache and are hashed and stored once per block, at a
 * flush, a FUA write or eviction (FORMAT.md, "The write-back cache").
 */
#define CAS_DEFAULT_DIRTY_CACHE (UINT64_C (64) * 1024 * 1024)
/* The cache must hold at least this many blocks (a smaller one would
 * only thrash): cas_dirty_cache_check.
 */
#define CAS_MIN_DIRTY_BLOCKS 8

/* The one rule for a write-back cache size against a block size: 0 if
 * bytes can hold CAS_MIN_DIRTY_BLOCKS blocks of blocksize, else
 * -1/EINVAL after a message naming what (the parameter).
 */
int cas_dirty_cache_check (const char *what, uint64_t bytes,
                           uint32_t blocksize);
/* Create a new, empty store in dir (created if absent; must be empty if
 * present).  blocksize: power of two in [CAS_MIN_BLOCKSIZE,
 * CAS_MAX_BLOCKSIZE], or 0 for CAS_DEFAULT_BLOCKSIZE.  EEXIST if dir
 * already holds a store, ENOTEMPTY if it holds anything else.
 */
int cas_store_create (const char *dir, uint32_t blocksize);

/* 1 if dir holds a superblock, 0 if dir is absent or empty (a store could
 * be created there), -1 otherwise (e.g. a non-empty non-store directory:
 * ENOTEMPTY, or a file: ENOTDIR).
 */
int cas_store_exists (const char *dir);

/* A store name "rados:POOL[/NAMESPACE]" (FORMAT.md, "RADOS"): a store in
 * a Ceph pool, not a directory (a directory of that name is "./rados:X").
 */
#define CAS_RADOS_STORE_PREFIX "rados:"
static inline bool
cas_store_name_is_rados (const char *name)
{
  return name && strncmp (name, CAS_RADOS_STORE_PREFIX,
                          sizeof CAS_RADOS_STORE_PREFIX - 1) == 0;
}

/* The same for any store name: a directory, or "rados:POOL[/NAMESPACE]"
 * reached with opts->ceph (a RADOS store exists once its superblock
 * object does).  opts may be NULL.
 */
int cas_store_create_opts (const char *name, uint32_t blocksize,
                           const struct cas_open_options *opts);
int cas_store_exists_opts (const char *name,
                           const struct cas_open_options *opts);

/* Open an existing store.  Checks the superblock (magic, version: a
 * different version fails with EPROTO and a message naming both), takes
 * the store lock (EBUSY if another process has it), loads the index cache
 * and scans pack data beyond it, cutting a torn tail.  A RADOS store
 * (dir "rados:POOL[/NAMESPACE]") has no store lock: any number of
 * processes open it; a volume has one writer at a time (its lease,
 * taken when it is opened writable).
 */
struct cas_store *cas_store_open (const char *dir,
                                  const struct cas_open_options *opts);

/* Flush and close every volume still open (a leak by the caller, logged),
 * sync, save the index cache, unlock.  -1 if anything failed to persist.
 */
int cas_store_close (struct cas_store *st);

uint32_t cas_store_blocksize (const struct cas_store *st);
/* The store's compression of new data blocks (its superblock's). */
/* The one rule for creating store name with compression c: 0, or
 * -1/EINVAL after a message (a RADOS store cannot compress).  Checked by
 * cas_store_create_opts; callers check it first to refuse before they
 * connect anywhere.
 */
int cas_store_compression_check (const char *name,
                                 const struct cas_compression *c);
/* A new store's compression when none is asked for: format.h
 * CAS_DEFAULT_COMPRESSION, off for a RADOS store.
 */
struct cas_compression cas_store_default_compression (const char *name);
struct cas_compression cas_store_compression (const struct cas_store *st);
/* The one rule for asking for a format version when creating store
 * name (what names the parameter or option): 2 or 4, and 4 only for a
 * local store with a block size of 4 to 64 KiB (blocksize 0: the
 * default).  0, or -1/EINVAL after a message naming what.
 */
int cas_store_format_check (const char *what, const char *name,
                            uint32_t format, uint32_t blocksize);
/* The store's format version (its superblock's: FORMAT.md). */
uint32_t cas_store_format_version (const struct cas_store *st);
/* Upgrade the store to CAS_FORMAT_VERSION (FORMAT.md, "Versions"): the
 * superblock is rewritten atomically and durably first, then new data
 * records get piece tables.  Records already stored stay as they are
 * (read as before; a garbage collection copies live ones with tables).
 * *from: the version it had (CAS_FORMAT_VERSION: nothing to do).  Safe
 * while volumes are served.  -1 with errno and a message on error (EROFS
 * on a read-only store); the store is then still of its old version.
 */
int cas_store_upgrade (struct cas_store *st, uint32_t *from);
/* The store's name: its directory, or "rados:POOL[/NAMESPACE]". */
const char *cas_store_dir (const struct cas_store *st);
/* A store in a directory (with packs, an index cache, a control socket),
 * not in RADOS.
 */
bool cas_store_is_local (const struct cas_store *st);
bool cas_store_readonly (const struct cas_store *st);
/* The chunk store underneath (for the tool: fsck, enumeration). */
struct chunkstore *cas_store_chunks (struct cas_store *st);

/* ---- Names ---- */

/* 0 if name is usable as a volume's or snapshot's name (1..255 bytes,
 * no '/', no '@', no NUL or control characters (< 0x20, 0x7f), not
 * starting with '.', which covers ".."), else -1/EINVAL with a message
 * saying why.  A name given now must also pass cas_new_name_check.
 */
int cas_volume_name_check (const char *name);
int cas_snapshot_name_check (const char *name);
/* 0 if name (checked by the above) is short enough to be given now to a
 * volume or snapshot (at most CAS_NEW_NAME_MAX bytes: its temp file must
 * fit NAME_MAX), else -1/ENAMETOOLONG with a message naming the limit.
 * what: "volume" or "snapshot".
 */
int cas_new_name_check (const char *what, const char *name);

/* What a name given by a client or an admin refers to: a volume "NAME",
 * or a snapshot "VOLUME@SNAP".  A volume whose name contains '@' (made
 * before snapshots existed, when that was allowed) is still found by its
 * whole name.  -1/EINVAL (with a message) for anything else.
 */
struct cas_name {
  char volume[CAS_VOLUME_NAME_MAX + 1];
  char snap[CAS_VOLUME_NAME_MAX + 1];
  bool is_snapshot;
};
int cas_name_parse (struct cas_store *st, const char *name,
                    struct cas_name *n);

/* Calls fn(name) for each volume in name order; stops and returns fn's
 * value if non-zero.
 */
int cas_store_list_volumes (struct cas_store *st,
                            int (*fn) (const char *name, void *opaque),
                            void *opaque);

/* Whether a volume, or a snapshot (VOLUME@SNAP), exists: 1 exists, 0
 * not, -1 error (bad name).
 */
int cas_volume_exists (struct cas_store *st, const char *name);

/* Create an empty (all-zero) volume of size bytes (1 .. CAS_MAX_VOLUME_
 * SIZE, any byte count: the last block is partly past the end).  The
 * root file is durable when this returns.  EEXIST if it exists.
 */
int cas_volume_create (struct cas_store *st, const char *name,
                       uint64_t size);

/* Grow a volume (closed, or open by nobody) to new_size; shrinking is
 * refused (EINVAL).  Durable when it returns.
 */
int cas_volume_resize (struct cas_store *st, const char *name,
                       uint64_t new_size);

/* The one rule for "this volume must hold size bytes", used by the
 * backend's size= and nbdcas import: create the volume if it does not
 * exist (only if create; else ENOENT with a message), grow it if it is
 * smaller, never shrink it (a larger volume is left alone).  *old_size
 * receives its size before (0 if it was created).  Durable when it
 * returns.
 */
int cas_volume_grow_to (struct cas_store *st, const char *name,
                        uint64_t size, bool create, uint64_t *old_size);

/* ---- History: snapshots, clones, delete, rename (history.c) ---- */

/* The committed root of a volume or a snapshot.  flush: if the volume is
 * open in this process, flush it first, so that the root holds every
 * write made to it before the call.
 */
int cas_root_get (struct cas_store *st, const char *name, bool flush,
                  struct cas_root *r);

/* Record a read-only point in time of volume, named VOLUME@SNAP: a copy
 * of its root (O(1) in the volume's size), taken after flushing it if it
 * is open here, so that it holds every write acknowledged before the
 * call.  EEXIST if that snapshot exists.  Durable when it returns.
 */
int cas_snapshot_create (struct cas_store *st, const char *volume,
                         const char *snap);

/* A new writable volume newvol that starts as source (a volume, flushed
 * first if it is open, or VOLUME@SNAP) and shares every block with it.
 * O(1).  Writes to either never show in the other.  EEXIST if newvol
 * exists.  Durable when it returns.
 */
int cas_volume_clone (struct cas_store *st, const char *source,
                      const char *newvol);

/* Delete a snapshot (VOLUME@SNAP), or a volume: one with snapshots only
 * if recursive (they go with it; else ENOTEMPTY, naming them).  Anything
 * open (a client is connected to it) is refused: EBUSY, naming it.
 * Atomic as seen after a crash: done, or not started.
 */
int cas_store_delete (struct cas_store *st, const char *name,
                      bool recursive);

/* Rename a volume (its snapshots follow it: OLD@S becomes NEW@S) or a
 * snapshot within its volume (VOLUME@A to VOLUME@B).  Refused while
 * either is open (EBUSY), if new exists (EEXIST).  Atomic as seen after
 * a crash.
 */
int cas_store_rename (struct cas_store *st, const char *old,
                      const char *new);

/* Calls fn(name) with "VOLUME@SNAP" for each snapshot of volume, in name
 * order; stops and returns fn's value if non-zero.
 */
int cas_store_list_snapshots (struct cas_store *st, const char *volume,
                              int (*fn) (const char *name, void *opaque),
                              void *opaque);

/* The blocks whose content differs between two committed roots of this
 * store (cas_root_get), by comparing their hash trees: the cost is the
 * changed part, not the size.  fn(offset, length) is called for maximal
 * runs of changed blocks, in order, in bytes (up to the larger size; a
 * block past the end of the smaller volume counts as unmapped there).
 * fn returning non-zero stops (-1 is returned).  *nodes_read (may be
 * NULL): how many map nodes were read.
 */
int cas_diff (struct cas_store *st, const struct cas_root *a,
              const struct cas_root *b,
              int (*fn) (uint64_t offset, uint64_t length, void *opaque),
              void *opaque, uint64_t *nodes_read);

/* ---- Volumes ---- */

/* Open a volume, or a snapshot (VOLUME@SNAP: read-only, writes fail
 * with EROFS): ENOENT if it does not exist.  All opens of one name in
 * one store share one in-memory volume (refcounted); each open needs one
 * close.  The volume's map is loaded lazily.
 */
struct cas_volume *cas_volume_open (struct cas_store *st, const char *name);
/* Drop a reference; the last one flushes (errors are logged) and frees. */
void cas_volume_close (struct cas_volume *vol);

const char *cas_volume_name (const struct cas_volume *vol);
/* A snapshot, or a volume of a read-only store: writes fail (EROFS). */
bool cas_volume_readonly (const struct cas_volume *vol);
uint64_t cas_volume_size (const struct cas_volume *vol);
uint32_t cas_volume_blocksize (const struct cas_volume *vol);
uint64_t cas_volume_nblocks (const struct cas_volume *vol);
/* Generation of the last published root (bumped by each flush that
 * changed something).
 */
uint64_t cas_volume_generation (const struct cas_volume *vol);

/* Data path.  [offset, offset+count) must lie inside the volume (EINVAL
 * otherwise; the front ends already check).  count may be any size.
 * Partial blocks are read-modify-write and correct under concurrency.
 * fua: flush before returning.  Writes on a read-only store: EROFS.
 */
int cas_volume_read (struct cas_volume *vol, void *buf, uint64_t count,
                     uint64_t offset);
int cas_volume_write (struct cas_volume *vol, const void *buf,
                      uint64_t count, uint64_t offset, bool fua);
/* Zero a range: whole blocks are unmapped (nothing stored), partial edge
 * blocks rewritten with zeros.  Used for both trim and write-zeroes.
 */
int cas_volume_zero (struct cas_volume *vol, uint64_t count,
                     uint64_t offset, bool fua);
int cas_volume_flush (struct cas_volume *vol);
/* Prefetch: load map leaves and read chunks into the OS cache. */
int cas_volume_prefetch (struct cas_volume *vol, uint64_t count,
                         uint64_t offset);

/* The hash of block b (all zero if unmapped).  Loads the map leaf. */
int cas_volume_block_hash (struct cas_volume *vol, uint64_t block,
                           struct cas_hash *out);

/* Extents from offset: calls fn(offset, length, mapped) for maximal runs
 * of mapped / unmapped blocks covering at least [offset, offset+count)
 * (the first starts at offset; the last may extend past offset+count but
 * never past the volume size).  fn returning -1 stops with -1; returning
 * 1 stops early with 0 (e.g. when one extent is enough).
 */
int cas_volume_extents (struct cas_volume *vol, uint64_t count,
                        uint64_t offset,
                        int (*fn) (uint64_t off, uint64_t len, bool mapped,
                                   void *opaque),
                        void *opaque);

/* ---- Reference sets (refs.c): space accounting, garbage collection ----
 *
 * Which chunks the trees of some roots reference, keyed by the first 8
 * bytes of the hash (16 bytes of memory per chunk at 80% load), with for
 * each whether one root references it alone.  Not thread-safe.
 */
struct cas_refs;
struct cas_refs *cas_refs_new (uint64_t expected_chunks);
void cas_refs_free (struct cas_refs *refs);
uint64_t cas_refs_memory (const struct cas_refs *refs);
/* What one root references (cas_refs_add_root). */
struct cas_refs_root_stats {
  uint64_t mapped_blocks;       /* its blocks holding data */
  uint64_t data_chunks;         /* the distinct data chunks they name */
  uint64_t raw_bytes;           /* ... their bytes (a block each) */
  uint64_t stored_bytes;        /* ... their payload bytes as stored
                                   (fewer where compressed) */
  uint64_t nonzero_bytes;       /* bytes of its blocks that are not
                                   zero (format 4: counted per unit; else
                                   a block each) */
};
/* Walk root's tree (owner: an id >= 1 naming the root, a new one for
 * each root: roots are walked one after the other) and mark every map
 * node and data chunk it references.  *rs (may be NULL): what it
 * references.  In a store that compresses, the first time a data chunk
 * is met its record header is read (its stored size).  Format 4: data
 * chunks are units (data_chunks counts units, of CAS_UNIT_SIZE raw
 * bytes), and the first time an extent is met its slot table is read.
 * A damaged block descriptor fails the walk (EIO, with a message).
 */
int cas_refs_add_root (struct cas_store *st, struct cas_refs *refs,
                       uint32_t owner, const struct cas_root *root,
                       struct cas_refs_root_stats *rs);
/* Marking only (garbage collection): every chunk root references, not
 * who else does; a map node already walked (known by its full hash, 32
 * bytes per node at 80% load) is not walked again, so the cost is the
 * nodes not seen before.
 */
int cas_refs_mark_root (struct cas_store *st, struct cas_refs *refs,
                        const struct cas_root *root);
bool cas_refs_has (const struct cas_refs *refs, const struct cas_hash *h);
/* Format 4: the slots of extent eid some root references (0: none), and
 * how many extents have any.
 */
uint16_t cas_refs_extent_live (const struct cas_refs *refs, uint64_t eid);
uint64_t cas_refs_live_extents (const struct cas_refs *refs);
/* Hashes marked (format 4: map nodes only; see cas_refs_live_extents). */
uint64_t cas_refs_count (const struct cas_refs *refs);
/* Every chunk referenced by any root marked: */
struct cas_refs_totals {
  uint64_t referenced;          /* record bytes (headers included), as
                                   stored */
  uint64_t referenced_raw;      /* the same were nothing compressed */
  uint64_t chunks;              /* how many chunks ... */
  uint64_t nodes;               /* ... of them map nodes */
  uint64_t data_chunks;         /* ... data chunks */
  uint64_t compressed_chunks;   /* ... data chunks stored compressed */
  uint64_t data_raw;            /* payload bytes of the data chunks ... */
  uint64_t data_stored;         /* ... and as stored */
  /* Format 4: data chunks are units (data_chunks = units), kept in
   * extents; chunks counts the extents too.
   */
  uint64_t extents;             /* extents with a referenced unit */
  uint64_t units;               /* units referenced */
  uint64_t dead_unit_bytes;     /* stored bytes of the units of those
                                   extents that nothing references (kept:
                                   a collection copies an extent whole) */
};
/* alone[k] (k = 1 .. nowners): record bytes (as stored) referenced by
 * owner k and no other root; *t: the totals.
 */
void cas_refs_totals (const struct cas_refs *refs, uint64_t *alone,
                      uint32_t nowners, struct cas_refs_totals *t);

/* Extents of [offset, offset+count) of an open volume (its state now,
 * unflushed writes included) by whether each block differs from the same
 * block of root (a snapshot, say): fn(off, len, changed), as
 * cas_volume_extents calls its fn (1 stops early with 0).
 */
int cas_volume_changed (struct cas_volume *vol, const struct cas_root *root,
                        uint64_t count, uint64_t offset,
                        int (*fn) (uint64_t off, uint64_t len, bool changed,
                                   void *opaque),
                        void *opaque);

/* ---- Garbage collection (gc.c) ---- */

/* Give back the space of every chunk that no volume, snapshot, or write
 * already acknowledged to a volume open in this process references.
 * Safe while volumes are served and written (the protocol is in
 * FORMAT.md); refused (-1, a message) if a root cannot be read, since
 * what it references would be unknown.  stats is filled in either way.
 */
int cas_store_gc (struct cas_store *st, const struct cas_gc_options *opts,
                  struct cas_gc_stats *stats);

/* Bytes this process overwrote (blocks and map nodes whose old chunk may
 * have become garbage) since the last collection began: an upper bound
 * of what one would reclaim now (less where the old chunk is shared),
 * cheap to read, for deciding when to collect.
 */
uint64_t cas_store_garbage_hint (struct cas_store *st);

/* ---- Statistics ---- */

struct cas_volume_stats {
  uint64_t size;            /* logical bytes */
  uint64_t blocks;          /* blocks in the volume */
  uint64_t mapped_blocks;   /* blocks with a stored chunk (not zero) */
  uint64_t mapped_bytes;    /* mapped_blocks * blocksize */
  uint64_t map_nodes;       /* non-empty map nodes in the committed tree */
  uint64_t generation;
  struct cas_hash root;     /* committed root hash (zero: empty volume) */
};
/* Walks the whole map (loads every leaf). */
int cas_volume_stat (struct cas_volume *vol, struct cas_volume_stats *vs);

struct cas_store_stats {
  uint32_t blocksize;
  uint64_t volumes;
  struct cas_chunkstore_stats chunks;  /* chunks, stored bytes, packs, RAM */
};
int cas_store_stat (struct cas_store *st, struct cas_store_stats *ss);

/* ---- fsck primitives ---- */

/* Check every record in the chunk store: CRC32C of header and payload,
 * and with full, SHA-256 of the payload against the header's hash.
 * fn (may be NULL) is called for each damaged record.  Returns the number
 * of damaged records (>= 0), or -1 if the check itself failed.
 */
int cas_store_check_records (struct cas_store *st, bool full,
                             int (*fn) (const struct cas_record_info *,
                                        void *),
                             void *opaque);

/* What cas_volume_check() reports for each problem. */
struct cas_volume_problem {
  const char *volume;
  int level;                /* 0: a data block; >= 1: a map node level */
  uint64_t index;           /* level 0: block number; else node index */
  struct cas_hash hash;     /* the reference that does not resolve
                               (format 4, level 0: the descriptor) */
  int err;                  /* ENOENT missing, EIO damaged */
  const char *what;         /* human-readable */
  uint64_t extent;          /* format 4: the extent that does not
                               resolve, 0 if none (a bad descriptor) */
};

/* Walk the committed map tree of vol (as of its last flush; call
 * cas_volume_flush() first to include pending writes) and check that every
 * reference resolves: each map node can be read and verified, and each
 * data hash is present (full: every data chunk is also read and
 * re-hashed).  Format 4: each block descriptor decodes and every unit it
 * references is read and checked (full: re-hashed against its slot
 * table).  fn (may be NULL) is called per problem.  Returns the number
 * of problems (>= 0) or -1 on a failure of the check itself.
 */
int cas_volume_check (struct cas_volume *vol, bool full,
                      int (*fn) (const struct cas_volume_problem *, void *),
                      void *opaque);

#endif /* NBDCAS_STORE_H */
