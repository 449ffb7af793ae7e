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

#include "hash.h"

/* Record location: pack number (24 bits) and byte offset (40 bits). */
#define CAS_LOC(pack, off) (((uint64_t) (pack) << 40) | (uint64_t) (off))
#define CAS_LOC_PACK(loc) ((uint32_t) ((loc) >> 40))
#define CAS_LOC_OFFSET(loc) ((loc) & ((UINT64_C (1) << 40) - 1))
#define CAS_MAX_PACK_OFFSET (UINT64_C (1) << 40)

struct cas_index;

struct cas_index *cas_index_new (void);
void cas_index_free (struct cas_index *idx);

/* Up to max candidate locations for hash (same 8-byte key); returns how
 * many were found (0: certainly absent).
 */
int cas_index_lookup (struct cas_index *idx, const struct cas_hash *hash,
                      uint64_t *locs, int max);
/* Add hash -> loc (loc != 0).  -1/ENOMEM if a resize fails. */
int cas_index_insert (struct cas_index *idx, const struct cas_hash *hash,
                      uint64_t loc);

/* Remove the entry hash -> loc if present (a damaged record: a later
 * put of the same chunk then stores a good copy).  Returns 1 if removed.
 */
int cas_index_remove (struct cas_index *idx, const struct cas_hash *hash,
                      uint64_t loc);

/* Does any entry's location fall in [lo, hi)?  A walk of the whole
 * index, for fsck: a damaged span no entry points into cannot be read by
 * any volume (a failed or torn append the store never indexed).
 */
bool cas_index_has_loc_in (struct cas_index *idx, uint64_t lo, uint64_t hi);

uint64_t cas_index_count (struct cas_index *idx);
uint64_t cas_index_slots (struct cas_index *idx);
uint64_t cas_index_memory (struct cas_index *idx);   /* bytes of RAM */

/* The on-disk cache (DIR/index): every entry plus the high-water mark
 * (pack, offset) of pack data it covers.  save writes path.tmp, fsyncs,
 * renames.  load returns -1 (no message, errno) if the file is absent or
 * damaged; the index is then left empty and the caller rescans the packs.
 */
int cas_index_save (struct cas_index *idx, const char *path,
                    uint32_t hw_pack, uint64_t hw_off);
int cas_index_load (struct cas_index *idx, const char *path,
                    uint32_t *hw_pack, uint64_t *hw_off);
/* Forget every entry (after a failed load). */
void cas_index_clear (struct cas_index *idx);

#endif /* NBDCAS_INDEX_H */
