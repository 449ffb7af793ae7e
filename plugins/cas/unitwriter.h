/* The unit writer: turns a block's bytes into a block descriptor in a
 * format-4 store (FORMAT.md "Format version 4"; the lead's plan, "Writing
 * a block").  One per writable volume of a format-4 store.
 *
 * Contract: cas_unit_writer_store stores block (bs bytes, bs a multiple
 * of 4096 of at most 16 units) and gives the descriptor to put in its map
 * slot.  Every unit of the block is referenced as a unit of an extent
 * (deduplicated against the units this writer added, the groups it
 * loaded lately, the block's previous content and the store's hooks), or
 * as a zero run; what it references is readable at once (cas_desc_read)
 * and durable once cas_unit_writer_flush and then the chunk store's sync
 * have returned.  A volume's flush calls cas_unit_writer_flush before the
 * chunk store's sync and the root's publish, so a published root only
 * references durable extents.
 *
 * Partial blocks: written_sectors (a bitmap of the block's 512-byte
 * sectors, bit s of word s / 64) says which sectors of block hold new
 * bytes; the others are the content described by *old_desc, and their
 * bytes in block are not looked at.  A unit none of whose sectors is
 * written keeps its old reference: it is neither hashed nor read.  A unit
 * written in part is completed from the old content (a read of that
 * unit, checked).  written_sectors NULL: the whole block is given.
 * old_desc NULL: the block was unmapped (the same as an all-zero value).
 *
 * Only units that the extent store offered for dedup
 * (cas_extents_slot_hashes returned 1 with the slot present) are
 * referenced: every reference is checked against the extent's slot table
 * when the block is stored, under the caller's share of the store's
 * gc_gate, so a collection in progress never loses a unit referenced
 * after its gate (its new-copy rule) nor one whose extent it dropped.
 *
 * Errors: -1 with errno (EIO: the old descriptor or content is damaged;
 * ENOMEM; what the extent store reports), after a message through
 * backend_error where it knows more than errno.  On error nothing is
 * referenced, and the slot must keep its old value.
 *
 * Thread safety: cas_unit_writer_store and cas_unit_writer_flush may be
 * called from several threads at once (a volume's request threads and its
 * housekeeping thread write back at the same time): a block is classified
 * and hashed outside the writer's lock, lookups and appends are made
 * under it (it serialises the extent appender).  The caller holds the
 * store's gc_gate shared around a store and the slot change that follows
 * (volume-cache.c, volume.c), as for chunks.  The writer's lock is an
 * innermost lock (lockrank.h LOCK_UNIT_WRITER): only the extent store's
 * and chunk store's own locks are taken under it.
 */
#ifndef NBDCAS_UNITWRITER_H
#define NBDCAS_UNITWRITER_H

#include <stdint.h>

#include "extent.h"
#include "hash.h"

struct cas_unit_writer;

/* A writer for blocks of bs bytes (4 KiB .. 64 KiB, a multiple of 4 KiB)
 * of a volume (name: for messages), reading old content with verify.
 * NULL with errno on error.
 */
struct cas_unit_writer *cas_unit_writer_new (struct cas_extents *ext,
                                             uint32_t bs,
                                             enum cas_verify verify,
                                             const char *name);

int cas_unit_writer_store (struct cas_unit_writer *w, const uint8_t *block,
                           uint32_t bs, const struct cas_hash *old_desc,
                           const uint64_t *written_sectors,
                           struct cas_hash *new_desc);

/* Append the open extent (if it holds a unit): the units stored so far
 * become durable with the chunk store's next sync.
 */
int cas_unit_writer_flush (struct cas_unit_writer *w);

/* Flush (errors reported) and free; NULL is a no-op returning 0. */
int cas_unit_writer_free (struct cas_unit_writer *w);

#endif /* NBDCAS_UNITWRITER_H */
