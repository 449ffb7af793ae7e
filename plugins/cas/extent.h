/* Extents: the unit store of a format-4 store (FORMAT.md, "Format version
 * 4"; the lead's plan in /work/notes/v4/PLAN.md).
 *
 * Contract: a unit (4096 raw bytes, named by its SHA-256) lives in slot s
 * of extent e, a pack record of up to 16 units with a slot table.  A
 * reference (e, s) is stable for the store's life: garbage collection may
 * move an extent's record, never renumber it.  Reads return exactly the
 * bytes added, or fail with EIO -- never wrong data: every unit read is
 * checked against its slot's CRC32C (verify=full: also its SHA-256).
 * Units are added through an appender (one per writer: a volume); they
 * are readable at once, by any thread, and durable once
 * cas_extent_appender_flush and then the chunk store's sync return.
 *
 * The extent store belongs to the pack chunk store of a format-4 store
 * (cas_packstore_extents); at open it is loaded from the index cache and
 * the packs past what the cache covers (or all of them) are scanned.  Every
 * appender is freed before the store is closed.
 *
 * Errors: -1 with errno (EIO damaged, ENOENT no such extent or slot,
 * ENOMEM) after a message through backend_error().
 *
 * Thread safety: every function may be called from any thread at once,
 * except that one appender is used by one thread at a time (its owner
 * serialises).  Readers never block on appends in progress beyond a
 * short lock.
 */
#ifndef NBDCAS_EXTENT_H
#define NBDCAS_EXTENT_H

#include <stdbool.h>
#include <stdint.h>

#include "chunkstore.h"
#include "format.h"
#include "hash.h"
#include "index.h"

struct cas_extents;
struct cas_extent_appender;

/* The extent store of a format-4 pack store; NULL for any other store. */
struct cas_extents *cas_packstore_extents (struct chunkstore *cs);

/* ---- reading ---- */

/* Read bytes [off, off + len) of the units (eid, slot) .. (eid, slot +
 * count - 1), taken as one byte string of count * 4096 bytes, into buf.
 * Checks the CRC32C of every unit it reads from (a partial unit too);
 * verify=full also re-hashes those units whole.  Slot tables once read
 * and checked are kept (a bounded cache, in memory, tagged with the
 * record's location): then one pread of just the units; else one for
 * the table and one for the units, or one for both for whole units from
 * slot 0 or 1 of a full raw extent.  verify=full reads the table always.
 */
int cas_extents_read (struct cas_extents *ext, uint64_t eid, unsigned slot,
                      unsigned count, uint32_t off, uint32_t len, void *buf,
                      enum cas_verify verify);

/* Read bytes [off, off + len) of a block (bs bytes) described by desc
 * (a format-4 slot value: format.h cas_desc), into buf: zero runs give
 * zeros, the others as cas_extents_read; runs whose slot tables are
 * kept and whose units lie close in one pack are read by one preadv.  A
 * damaged descriptor is EIO; on any error the whole of buf is zeroed.
 */
int cas_desc_read (struct cas_extents *ext, const struct cas_hash *desc,
                   uint32_t bs, uint32_t off, uint32_t len, void *buf,
                   enum cas_verify verify);

/* The slot table of extent eid, for deduplication: hashes[i] for slot i
 * (i < *nslots), *present the mask of slots stored.  The first call for
 * an extent in this process reads it whole and checks every unit's CRC
 * (as the index's CAS_LOC_VERIFIED does for chunks): a damaged extent is
 * never offered for dedup.  Returns 1 if it can be referenced, 0 if not
 * (no such extent, damaged -- reported once --, or in a pack sealed by a
 * collection in progress: gc's new-copy rule), -1 on other errors.
 */
int cas_extents_slot_hashes (struct cas_extents *ext, uint64_t eid,
                             struct cas_hash hashes[CAS_UNITS_MAX],
                             unsigned *nslots, uint16_t *present);

/* Whether extent eid may be referenced for dedup now, without a read:
 * 0 if not (no such extent, damaged, not yet checked in this process --
 * cas_extents_slot_hashes checks it --, or in a pack sealed by a
 * collection in progress); CAS_EXTENT_STAMP_PENDING if it is still being
 * filled (in RAM: only the writer appending it may reference it, since
 * only its own flush makes it durable); else a stamp of its record that
 * changes whenever the record moves (gc may drop unreferenced slots when
 * it copies a record), so a slot table read while the stamp was S is
 * still the table while the stamp is S.  A table lookup: no I/O, no lock.
 */
#define CAS_EXTENT_STAMP_PENDING UINT64_C (1)
uint64_t cas_extents_dedup_stamp (struct cas_extents *ext, uint64_t eid);
/* Whether extent eid was found damaged in this process (a table lookup):
 * a writer keeping a block's old reference checks it, so that writing
 * the same bytes again stores a good copy.
 */
bool cas_extents_is_damaged (struct cas_extents *ext, uint64_t eid);

/* Hooks: a sample of stored units (last byte of the SHA-256 % 16 == 0). */
static inline bool
cas_unit_is_hook (const struct cas_hash *h)
{
  return h->b[31] % 16 == 0;
}
/* The newest extent holding hook unit h: 1 found (*eid; it may be
 * stale: check its slot table), 0 none.
 */
int cas_extents_hook_lookup (struct cas_extents *ext,
                             const struct cas_hash *h, uint64_t *eid);

/* Extents per group (ids 64g .. 64g + 63 belong to one writer). */
#define CAS_GROUP_EXTENTS 64
/* Groups reserved at a time in DIR/extent-ids (1024 extents: one fsync
 * per ~64 MiB of new data); an open after a crash skips at most these.
 */
#define CAS_EXTENT_RESERVE_GROUPS 16
static inline uint64_t cas_extent_group (uint64_t eid) { return eid / CAS_GROUP_EXTENTS; }

/* ---- writing ---- */

struct cas_extent_appender *cas_extent_appender_new (struct cas_extents *ext);
/* Add one raw unit (4096 bytes, not all zero) named *h to the open
 * extent (compressed per the store's setting); *eid, *slot receive its
 * reference.  When the open extent is full it is appended to the packs
 * (in this thread).  The unit is readable at once.
 */
int cas_extent_appender_add (struct cas_extent_appender *a,
                             const struct cas_hash *h, const void *unit,
                             uint64_t *eid, unsigned *slot);
/* Free slots left in the open extent (16 when none is open). */
unsigned cas_extent_appender_room (const struct cas_extent_appender *a);
/* Close the open extent now (append it, if it holds any unit): the next
 * add starts a new extent.  The appended records become durable with the
 * next chunk store sync.
 */
int cas_extent_appender_flush (struct cas_extent_appender *a);
/* Flush (errors reported) and free. */
int cas_extent_appender_free (struct cas_extent_appender *a);

/* ---- for stat, fsck, gc ---- */
struct cas_extents_stats {
  uint64_t extents, units, unit_bytes_stored, unit_bytes_raw;
  uint64_t hooks, table_bytes, hook_bytes;   /* RAM */
  uint64_t max_eid;
  /* Extent records whose slot table the open read (its scan); with a
   * usable index cache, only those appended after the cache was saved.
   */
  uint64_t open_tables_read;
  uint64_t cache_extents;        /* extents the index cache gave at open */
  /* DIR/extent-ids as the open found it (or as last written), and the
   * first group not reserved: every id found must be below it.
   */
  int ids_file;                  /* CAS_EXTENT_IDS_* */
  uint64_t reserved_group;
};
#define CAS_EXTENT_IDS_ABSENT 0
#define CAS_EXTENT_IDS_OK 1
#define CAS_EXTENT_IDS_DAMAGED 2
void cas_extents_stats (struct cas_extents *ext, struct cas_extents_stats *s);
/* Location of extent eid (index.h CAS_LOC layout), 0 if none. */
uint64_t cas_extents_loc (struct cas_extents *ext, uint64_t eid);

/* ---- garbage collection (the pack store's sweep calls these) ----
 * A sweep meets extent records in sealed packs.  A record is the current
 * copy of its id if the table points at its location (an older copy left
 * by an earlier collection or a crash is garbage whatever its slots).
 */
bool cas_extents_is_current (struct cas_extents *ext, uint64_t eid,
                             uint64_t loc);
/* The record of eid at oldloc was copied to newloc, durably: point the
 * table at the copy (only if it still points at oldloc).  The copy is
 * VERIFIED if the original was.  The kept slot table of the old record
 * is forgotten (a read checks the copy's table).
 */
void cas_extents_relocate (struct cas_extents *ext, uint64_t eid,
                           uint64_t oldloc, uint64_t newloc);
/* Extent eid (record at loc) has no live slot and its pack goes: forget
 * it (only if the table still points at loc), and its kept slot table.
 * Hooks naming it go stale (harmless: a hook is checked against the slot
 * table).
 */
void cas_extents_drop (struct cas_extents *ext, uint64_t eid, uint64_t loc);
/* The highest extent id in use (the size of a mark's per-extent array):
 * ids handed out to extents still being filled count too.
 */
uint64_t cas_extents_max_eid (struct cas_extents *ext);

/* ---- extent records (pack.c's scans, fsck) ----
 * parse_table: the header h (type CAS_RECORD_EXTENT) and the first got
 * bytes of its payload (at least its slot table): fields, slot entries
 * and where each slot's stored bytes start in the payload, after
 * checking the table's CRC32C and that it adds up to the record's
 * length.  0, or -1/EIO with *problem saying what (no message).
 * check_units: every present unit of the whole payload against its CRC;
 * decode: compressed units decompress to 4096 bytes; rehash: each raw
 * unit matches its SHA-256.  0 good, 1 damaged (*problem, *bad_slot),
 * -1 error (ENOMEM, or the hash failed).
 */
struct cas_codec_pool;
int cas_extent_parse_table (const struct cas_record_header *h,
                            const uint8_t *table, uint32_t got,
                            struct cas_extent_fields *f,
                            struct cas_slot_entry slot[CAS_UNITS_MAX],
                            uint32_t start[CAS_UNITS_MAX],
                            const char **problem);
int cas_extent_check_units (const struct cas_extent_fields *f,
                            const struct cas_slot_entry slot[CAS_UNITS_MAX],
                            const uint32_t start[CAS_UNITS_MAX],
                            const uint8_t *payload, bool decode, bool rehash,
                            struct cas_codec_pool *pool,
                            const char **problem, unsigned *bad_slot);

/* ---- the pack store's part (chunkstore-pack.c) ----
 * new: over the store's packs (not owned); gc_below is the pack store's
 * "collection in progress" seal (may be NULL).  Opening: cache_load
 * (below) if the index cache is usable, then add_record for each intact
 * extent record the scan finds, in pack and offset order (a record
 * replaces the table's entry of its id if its location is higher: the
 * newer-wins rule, over cached entries too; -1 only for ENOMEM: a
 * damaged record is reported and skipped), then open_done.
 * dir: the store directory, whose extent-ids file (FORMAT.md "Format
 * version 4") open_done reads and the appenders write before handing
 * out an id beyond its reservation; NULL: none (no reservation kept).
 * open_done: -1 (reported, EIO) if the file is damaged and the store
 * is writable; read-only, a damaged file is ignored; absent, the ids
 * continue from the highest found.
 * set_compression: before the store serves.
 */
struct cas_packs;
struct cas_extents *cas_extents_new (struct cas_packs *packs,
                                     const char *dir, bool readonly,
                                     _Atomic uint32_t *gc_below);
void cas_extents_free (struct cas_extents *ext);
void cas_extents_set_compression (struct cas_extents *ext,
                                  const struct cas_compression *c);
int cas_extents_add_record (struct cas_extents *ext, uint32_t pack,
                            uint64_t offset);
int cas_extents_open_done (struct cas_extents *ext);

/* ---- the index cache's extent section (FORMAT.md, "The index cache",
 * version 4; index.h struct cas_index_section) ----
 * save: the table's entries whose record is in packs 1..npacks (flags
 * not saved: a new process verifies again), every hook, the totals and
 * the highest id; -1 on a write error (errno).  Not while appenders
 * write into packs 1..npacks: at close, or with npacks below every pack
 * being appended to (a collection's seal).
 * load: the section (len bytes of fp) into an extent store that holds
 * nothing yet, before the open's scan of what the cache does not cover;
 * every entry must point into the covered part of a pack (packs[p]
 * .covered, p <= npacks).  -1 (no message) if the section is not good:
 * then call reset, which forgets everything (before the store serves).
 * last_offsets: last[p] = max (last[p], the largest record offset in
 * pack p the table holds), p in 1..npacks: the cache's cover.
 */
int cas_extents_cache_save (struct cas_extents *ext, FILE *fp,
                            uint32_t npacks);
int cas_extents_cache_load (struct cas_extents *ext, FILE *fp, uint64_t len,
                            const struct cas_index_pack *packs,
                            uint32_t npacks);
void cas_extents_reset (struct cas_extents *ext);
void cas_extents_last_offsets (struct cas_extents *ext, uint64_t *last,
                               uint32_t npacks);

#endif /* NBDCAS_EXTENT_H */
