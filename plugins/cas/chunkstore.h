/* The chunk store: content-addressed records, put / get / has by SHA-256,
 * plus enumeration (for fsck and, later, garbage collection).
 *
 * Contract: a chunk is an immutable byte string (<= CAS_MAX_PAYLOAD bytes)
 * named by the SHA-256 of its bytes.  put() stores it at most once (a
 * chunk already present costs a lookup, not a write); get() returns exactly
 * the bytes that were put, or fails with EIO -- never wrong data; has()
 * says whether get() can succeed without reading the payload.  A chunk is
 * durable only after sync() returns: the caller publishes nothing that
 * references a chunk before syncing.
 *
 * This is a small vtable so that the local pack-file implementation
 * (chunkstore-pack.c) can later be replaced by a remote object store (Ceph
 * RADOS, S3): nothing above this interface knows about packs, offsets or
 * the in-memory index.
 *
 * Errors: -1 with errno set (EIO for a damaged record, ENOENT for a chunk
 * that is not there) after a message through backend_error().
 *
 * Thread safety: every operation may be called from many threads at once.
 * Implementations never hold a lock across I/O on the data path.
 */
#ifndef NBDCAS_CHUNKSTORE_H
#define NBDCAS_CHUNKSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hash.h"

/* Record types (FORMAT.md: record header "type"). */
enum cas_chunk_type {
  CAS_CHUNK_DATA = 1,     /* one block of volume data */
  CAS_CHUNK_MAPNODE = 2,  /* a node of a volume's block map (child hashes) */
};

/* Verification on get(). */
enum cas_verify {
  CAS_VERIFY_OFF = 0,       /* no checks beyond the record header */
  CAS_VERIFY_CHECKSUM = 1,  /* CRC32C of header and payload (default) */
  CAS_VERIFY_FULL = 2,      /* ... and re-hash the payload with SHA-256 */
};

/* What enumerate() reports for each record it finds. */
struct cas_record_info {
  struct cas_hash hash;     /* from the record header */
  enum cas_chunk_type type;
  uint32_t length;          /* payload bytes */
  uint32_t pack;            /* where (for messages): pack number ... */
  uint64_t offset;          /* ... and byte offset of the record header */
  int status;               /* 0 ok; else an errno (EIO: bad CRC/hash) */
  const char *problem;      /* NULL if ok, else what is wrong */
};

/* Summary numbers for stat. */
struct cas_chunkstore_stats {
  uint64_t chunks;          /* records in the index */
  uint64_t stored_bytes;    /* bytes of all pack files on disk */
  uint64_t packs;           /* number of pack files */
  uint64_t index_bytes;     /* RAM used by the in-memory index */
  uint64_t index_slots;     /* slots (capacity) of the in-memory index */
  uint64_t appended;        /* records written since the store was opened */
};

/* Garbage collection (gc.c drives it through the ops below). */
struct cas_gc_options {
  bool dry_run;               /* measure and report, change nothing */
  unsigned max_unused_pct;    /* collect packs, emptiest first, until the
                                 unreferenced bytes left are at most this
                                 share of the live ones (0..100); a pack
                                 holding nothing referenced always goes */
  void (*progress) (uint64_t bytes, void *opaque);  /* may be NULL */
  /* May be NULL: called between packs; it may wait (to leave the disk to
   * the clients), and returns -1 to stop the collection (ECANCELED).
   */
  int (*pace) (void *opaque);
  void *opaque;
  /* RADOS: only chunks (and orphaned volume objects) whose last write is
   * older than this many seconds are removed (FORMAT.md, "Garbage
   * collection on RADOS": a margin beside the protocol, not its basis).
   */
  unsigned grace_seconds;
};
struct cas_gc_stats {
  uint64_t roots;             /* volumes and snapshots marked from */
  uint64_t marked_chunks;     /* chunks they reference */
  uint64_t mark_bytes;        /* memory of the mark set */
  uint64_t packs_scanned, bytes_scanned;
  uint64_t live_chunks, live_bytes;       /* in the packs scanned */
  uint64_t dead_chunks;       /* in the packs removed or rewritten */
  uint64_t packs_rewritten, packs_deleted;
  uint64_t bytes_copied, bytes_freed;     /* bytes_freed: packs removed */
  /* RADOS: chunk objects listed; unreferenced ones kept because they are
   * younger than the grace, or were written or touched since they were
   * listed; volume objects no name refers to (orphans) removed.
   * dead_chunks and bytes_freed count the chunk objects removed.
   */
  uint64_t chunks_listed;
  uint64_t young_chunks, touched_chunks;
  uint64_t orphans_removed;
};

/* What a collection's mark says is live (gc.c builds it, gc_sweep asks). */
struct cas_gc_mark {
  /* A record named by a hash: a data chunk, a map node. */
  bool (*is_live) (const struct cas_hash *h, void *opaque);
  /* Format 4: the mask of the slots of extent eid that some root
   * references (0: none).  NULL in a store without extents.
   */
  uint16_t (*extent_live) (uint64_t eid, void *opaque);
  void *opaque;
};

/* enumerate() flags. */
#define CAS_ENUM_CHECK_CRC  (1u << 0)  /* read payloads and check CRC32C */
#define CAS_ENUM_REHASH     (1u << 1)  /* ... and re-hash with SHA-256 */

struct chunkstore;

struct chunkstore_ops {
  /* Store data[0..len) named *hash (which the caller computed: hashing
   * happens in the caller's thread, outside any lock).  *stored is set to
   * true if new bytes were written, false if it was a duplicate.
   */
  int (*put) (struct chunkstore *cs, const struct cas_hash *hash,
              enum cas_chunk_type type, const void *data, uint32_t len,
              bool *stored);
  /* Read the chunk named *hash into buf (size bufsize).  *len (may be
   * NULL) receives its length; a chunk longer than bufsize is EIO.
   */
  int (*get) (struct chunkstore *cs, const struct cas_hash *hash,
              void *buf, uint32_t bufsize, uint32_t *len,
              enum cas_verify verify);
  /* Read bytes [off, off + count) of the chunk named *hash, which must be
   * length bytes long (EIO otherwise), into buf.  May be NULL: the whole
   * chunk is read with get (cas_chunk_get_range_whole).  With verify=checksum
   * only the pieces read are checked where the store keeps per-piece
   * checksums (else the whole chunk is read and checked); verify=full
   * reads and re-hashes the whole chunk.  Never returns bytes that
   * failed a check: EIO instead.
   */
  int (*get_range) (struct chunkstore *cs, const struct cas_hash *hash,
                    uint32_t length, void *buf, uint32_t off, uint32_t count,
                    enum cas_verify verify);
  /* 1 present, 0 absent, -1 error. */
  int (*has) (struct chunkstore *cs, const struct cas_hash *hash);
  /* The sizes of the chunk named *hash, from its record header (the
   * payload is not read): *raw its length, *stored the payload bytes it
   * takes (less than *raw if it is stored compressed).  1 found, 0 absent
   * or unreadable, -1 error.  May be NULL: chunks are stored as they are.
   */
  int (*sizes) (struct chunkstore *cs, const struct cas_hash *hash,
                uint32_t *raw, uint32_t *stored);
  /* Make every chunk put so far durable (fdatasync of what was written). */
  int (*sync) (struct chunkstore *cs);
  /* Call fn for every record stored (in storage order), stopping if fn
   * returns non-zero (that value is returned).  flags: CAS_ENUM_*.  A
   * damaged record is reported with status != 0, not skipped silently.
   */
  int (*enumerate) (struct chunkstore *cs, unsigned flags,
                    int (*fn) (const struct cas_record_info *, void *),
                    void *opaque);
  void (*stats) (struct chunkstore *cs, struct cas_chunkstore_stats *st);
  /* Sync, save caches, release everything.  Returns -1 if the final sync
   * failed (the store is still freed).
   */
  int (*close) (struct chunkstore *cs);

  /* Garbage collection, in this order (FORMAT.md, "Garbage collection").
   * gc_begin: from now until gc_end, put never references a chunk stored
   * before (it stores a new copy), nor does a format-4 write reference
   * an extent stored before: those may be removed.  gc_sweep: give back
   * the space of every chunk stored before gc_begin that the mark says
   * is not live, and of every extent none of whose stored slots is live
   * -- live ones are copied first, durably, and reads are never broken.
   * May be NULL (no collection).
   */
  int (*gc_begin) (struct chunkstore *cs);
  int (*gc_sweep) (struct chunkstore *cs, const struct cas_gc_mark *mark,
                   const struct cas_gc_options *opts,
                   struct cas_gc_stats *stats);
  void (*gc_end) (struct chunkstore *cs);
};

struct chunkstore {
  const struct chunkstore_ops *ops;
};

/* The local implementation: pack files in DIR/packs, index cache in
 * DIR/index.  readonly: never write (a torn tail is ignored, not cut).
 * uuid: the store's (written into new pack headers, checked against the
 * index cache's).  Returns NULL with errno set and a message.
 */
#define CAS_PACKSTORE_NO_CACHE (1u << 0)  /* index every pack (fsck) */
#define CAS_PACKSTORE_TABLES   (1u << 1)  /* format 2: write piece tables */
#define CAS_PACKSTORE_EXTENTS  (1u << 2)  /* format 4: units in extents
                                             (extent.h) */
struct chunkstore *cas_packstore_open (const char *dir, bool readonly,
                                       const uint8_t uuid[16],
                                       unsigned flags);
/* For fsck: is DIR/index usable as it is?  1 yes; 0 no (why says why);
 * -1 there is none.
 */
int cas_packstore_check_cache (struct chunkstore *cs, char *why, size_t len);
/* For fsck --repair: stop using the record of hash at (pack, offset),
 * found damaged (another copy, if any, is used instead).
 */
void cas_packstore_forget (struct chunkstore *cs, const struct cas_hash *hash,
                           uint32_t pack, uint64_t offset);
/* Format 4, for stat and fsck: what the current record of extent eid
 * holds, from its header and slot table (the table's CRC is checked; the
 * units are not read).
 */
#define CAS_EXTENT_FACTS_SLOTS 16   /* format.h CAS_UNITS_MAX (asserted) */
struct cas_extent_facts {
  uint64_t loc;               /* where (index.h CAS_LOC) */
  uint64_t record_bytes;      /* the record's size in its pack */
  unsigned nslots;
  uint16_t present;           /* the slots stored */
  uint16_t compressed;        /* ... of them stored compressed */
  uint16_t stored[CAS_EXTENT_FACTS_SLOTS];  /* bytes a present slot takes */
};
/* 1 found (*f), 0 no such extent (or not a format-4 store), -1 damaged
 * (EIO, with a message naming pack and offset) or another error.
 */
int cas_packstore_extent_facts (struct chunkstore *cs, uint64_t eid,
                                struct cas_extent_facts *f);
/* The store became format 2 (cas_store_upgrade): write piece tables from
 * now on.
 */
void cas_packstore_set_tables (struct chunkstore *cs);
/* Compress new data records with c (the superblock's setting; format.h
 * struct cas_compression).  Called once, right after opening, before
 * any put.  Records of every codec are read whatever the setting.
 */
struct cas_compression;
void cas_packstore_set_compression (struct chunkstore *cs,
                                    const struct cas_compression *c);

/* get_range for a chunk store without one: get the whole chunk, copy
 * the range out.
 */
int cas_chunk_get_range_whole (struct chunkstore *cs,
                               const struct cas_hash *hash, uint32_t length,
                               void *buf, uint32_t off, uint32_t count,
                               enum cas_verify verify);

/* Convenience wrappers. */
static inline int
cs_put (struct chunkstore *cs, const struct cas_hash *h,
        enum cas_chunk_type t, const void *d, uint32_t len, bool *stored)
{
  return cs->ops->put (cs, h, t, d, len, stored);
}
static inline int
cs_get (struct chunkstore *cs, const struct cas_hash *h, void *buf,
        uint32_t bufsize, uint32_t *len, enum cas_verify v)
{
  return cs->ops->get (cs, h, buf, bufsize, len, v);
}
static inline int
cs_get_range (struct chunkstore *cs, const struct cas_hash *h, uint32_t length,
              void *buf, uint32_t off, uint32_t count, enum cas_verify v)
{
  if (cs->ops->get_range == NULL)
    return cas_chunk_get_range_whole (cs, h, length, buf, off, count, v);
  return cs->ops->get_range (cs, h, length, buf, off, count, v);
}
static inline int
cs_has (struct chunkstore *cs, const struct cas_hash *h)
{
  return cs->ops->has (cs, h);
}
static inline int
cs_sync (struct chunkstore *cs)
{
  return cs->ops->sync (cs);
}

#endif /* NBDCAS_CHUNKSTORE_H */
