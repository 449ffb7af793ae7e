/* The in-memory hash index: chunk hash -> record location.
 *
 * Contract: a multimap from the first 8 bytes of a SHA-256 (the "key") to
 * 64-bit record locations (CAS_LOC).  It is a cache of what the packs
 * hold: lookups return CANDIDATES, and the caller confirms each against
 * the full hash in the record header it reads anyway (FORMAT.md argues
 * why 8 bytes + confirmation is both compact and exact).  Entries are
 * removed only when their record turns out to be damaged (garbage
 * collection will rebuild the index).
 *
 * Layout: 64 shards, each an open-addressing table (linear probing) of
 * 16-byte entries {key, loc}, loc 0 = empty slot, grown x2 past 80% load:
 * 20..40 bytes of RAM per stored chunk.
 *
 * Thread safety: every function is thread-safe.  Each shard has its own
 * rwlock: lookups share it, inserts take it briefly (a shard's resize
 * holds it while rehashing that 1/64th of the index).  No I/O under the
 * lock except in save/load, which run single-threaded at open/close.
 */
#ifndef NBDCAS_INDEX_H
#define NBDCAS_INDEX_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "hash.h"

/* Record location: pack number (24 bits) and byte offset (40 bits).
 * Record offsets are multiples of 8, so bit 0 is free: in the index it
 * says the record's payload was read and checked (CRC32C) by this
 * process (CAS_LOC_VERIFIED), which lets deduplication trust a record
 * without reading it again.  It is never saved: a new process checks
 * again.
 */
#define CAS_LOC(pack, off) (((uint64_t) (pack) << 40) | (uint64_t) (off))
#define CAS_LOC_PACK(loc) ((uint32_t) ((loc) >> 40))
#define CAS_LOC_OFFSET(loc) ((loc) & ((UINT64_C (1) << 40) - 2))
#define CAS_LOC_VERIFIED UINT64_C (1)
#define CAS_LOC_PLAIN(loc) ((loc) & ~CAS_LOC_VERIFIED)
#define CAS_MAX_PACK_OFFSET (UINT64_C (1) << 40)

struct cas_index;

struct cas_index *cas_index_new (void);
void cas_index_free (struct cas_index *idx);

/* Up to max candidate locations for hash (same 8-byte key); returns how
 * many were found (0: certainly absent).  A location may carry
 * CAS_LOC_VERIFIED.
 */
int cas_index_lookup (struct cas_index *idx, const struct cas_hash *hash,
                      uint64_t *locs, int max);
/* Add hash -> loc (loc != 0).  -1/ENOMEM if a resize fails. */
int cas_index_insert (struct cas_index *idx, const struct cas_hash *hash,
                      uint64_t loc);

/* Mark the entry hash -> loc as checked (CAS_LOC_VERIFIED). */
void cas_index_set_verified (struct cas_index *idx,
                             const struct cas_hash *hash, uint64_t loc);

/* Remove the entry hash -> loc if present (a damaged record: a later
 * put of the same chunk then stores a good copy).  Returns 1 if removed.
 */
int cas_index_remove (struct cas_index *idx, const struct cas_hash *hash,
                      uint64_t loc);

/* For each pack p in 1..npacks, last[p] receives the largest offset of
 * an entry in that pack (0: none).  A walk of the whole index.
 */
void cas_index_last_offsets (struct cas_index *idx, uint64_t *last,
                             uint32_t npacks);

uint64_t cas_index_count (struct cas_index *idx);
uint64_t cas_index_slots (struct cas_index *idx);
uint64_t cas_index_memory (struct cas_index *idx);   /* bytes of RAM */

/* What the on-disk cache says of each pack it covers (FORMAT.md): the
 * cache is only a claim about the packs, which the opener checks against
 * them before it skips a byte (chunkstore-pack.c).
 */
struct cas_index_pack {
  uint64_t covered;     /* the entries cover [header, covered): the end of
                           the last indexed record (or the pack header) */
  uint64_t size;        /* the pack's size when the cache was saved (it
                           was synced first: all of it was durable) */
  uint64_t last;        /* offset of the last indexed record, 0: none */
  uint32_t last_crc;    /* that record header's own CRC32C (its bytes
                           60..63): names the record */
};

/* The on-disk cache (DIR/index): the store's UUID, a table of the packs
 * it covers (packs[1..npacks]; packs[0] unused) and every entry into
 * them (entries into packs past npacks are not saved: the opener scans
 * those packs from their header).  save
 * writes path.tmp, fsyncs, renames, fsyncs the directory.  load returns
 * -1 if the file is absent (ENOENT), damaged (EIO), of another version
 * (EPROTO) or of another store (ESTALE); the index is then left empty
 * and the caller rescans the packs.  On success *packs is malloc'ed.
 */
int cas_index_save (struct cas_index *idx, const char *path,
                    const uint8_t uuid[16],
                    const struct cas_index_pack *packs, uint32_t npacks);
int cas_index_load (struct cas_index *idx, const char *path,
                    const uint8_t uuid[16],
                    struct cas_index_pack **packs, uint32_t *npacks);
/* Version 4 of the file, a format-4 store's cache: the same header,
 * pack table and entries, then a section of the caller's (the extent
 * table and the hooks: extent.h) written and read through these, which
 * carries its own checks.  save writes it at the end of the file (-1 on
 * a write error); load gets exactly the len bytes after the entries and
 * returns -1 if they are not a good section (the whole cache is then
 * refused, EIO; the caller forgets what the section had loaded).  A
 * cache of one version is never taken for the other (EPROTO).
 */
struct cas_index_section {
  int (*save) (void *opaque, FILE *fp, uint32_t npacks);
  int (*load) (void *opaque, FILE *fp, uint64_t len,
               const struct cas_index_pack *packs, uint32_t npacks);
  void *opaque;
};
int cas_index_save_section (struct cas_index *idx, const char *path,
                            const uint8_t uuid[16],
                            const struct cas_index_pack *packs,
                            uint32_t npacks,
                            const struct cas_index_section *sec);
int cas_index_load_section (struct cas_index *idx, const char *path,
                            const uint8_t uuid[16],
                            struct cas_index_pack **packs, uint32_t *npacks,
                            const struct cas_index_section *sec);

/* Forget every entry (after a failed load). */
void cas_index_clear (struct cas_index *idx);

#endif /* NBDCAS_INDEX_H */
