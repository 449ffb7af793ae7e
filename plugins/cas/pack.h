/* Pack files: DIR/packs/pack-NNNNNNNN.cas, append-only logs of records.
 *
 * Contract: records are appended, never modified; a record's location
 * (index.h CAS_LOC) is stable forever.  Appending reserves space under a
 * short lock and writes outside it, so appends from many threads overlap;
 * a pack rolls over to a new file at the size cap (1 GiB; the environment
 * variable NBDCAS_PACK_SIZE overrides it, for tests).  A record is durable
 * after cas_packs_sync() returns.
 *
 * Opening scans nothing by itself: the owner (chunkstore-pack.c) calls
 * cas_packs_scan() for the part of the packs its index cache does not
 * cover.  That scan cuts a torn tail (no valid record up to EOF) and steps
 * over a damaged region in the middle by searching for the next valid,
 * SHA-256-verified record.
 *
 * Thread safety: append, read, sync, seal and retire may run
 * concurrently from any thread (a read pins its pack, so a retired pack's
 * file stays open until the reads in progress end).  open/close/scan are
 * single-threaded (open and close time), except that garbage collection
 * scans sealed packs while the store serves.
 */
#ifndef NBDCAS_PACK_H
#define NBDCAS_PACK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "chunkstore.h"
#include "format.h"


struct cas_packs;

/* dir is the store directory.  uuid goes into new pack headers.
 * tables: a format-version-2 store; data records longer than one piece
 * are appended with their piece table (format.h CAS_RECORD_TABLE).
 */
struct cas_packs *cas_packs_open (const char *dir, bool readonly,
                                  const uint8_t uuid[16], bool tables);
void cas_packs_close (struct cas_packs *p);
/* From now on, append piece tables (the store was upgraded to format 2):
 * appends already running may still go without one, which is allowed.
 */
void cas_packs_set_tables (struct cas_packs *p);

/* Append one record: h gives type, length and hash; payload_crc (and,
 * with tables, the piece table in front of a data record) is computed
 * here, in the caller's thread.  *loc receives the location of the
 * record (of its header, never of its table).  EROFS on a read-only
 * store, ENOSPC past CAS_MAX_PACKS packs.
 */
int cas_packs_append (struct cas_packs *p, struct cas_record_header *h,
                      const void *payload, uint64_t *loc);

/* Read the record header at loc (-1/EIO with a message if damaged). */
int cas_packs_read_header (struct cas_packs *p, uint64_t loc,
                           struct cas_record_header *h);
/* Read header and payload at loc in one syscall; the payload goes to
 * buf (bufsize bytes).  Checks the header; returns -1/EIO (message
 * naming pack and offset) if it is damaged or the payload does not fit.
 * Payload checks (CRC, hash) are the caller's.
 */
int cas_packs_read (struct cas_packs *p, uint64_t loc,
                    struct cas_record_header *h, void *buf, uint32_t bufsize);

/* Read the header at loc and the first want bytes of its payload (all
 * of it if shorter: *got says how many) in one syscall.  -1/EIO with a
 * message if the header is damaged or the bytes are not there, -1/ESTALE
 * (no message) if garbage collection retired the pack.  Payload checks
 * are the caller's.  (Extents: header and slot table at once.)
 */
int cas_packs_read_prefix (struct cas_packs *p, uint64_t loc,
                           struct cas_record_header *h, void *buf,
                           uint32_t want, uint32_t *got);

/* The piece table of the data record at loc, whose payload should be
 * length bytes (the caller knows: a data block): one read of the table
 * record and the record header behind it.  Returns 0 with *h (the data
 * record's header, checked) and crcs[0 .. cas_pieces (length)) filled;
 * 1 if the record is there (*h filled and checked) but has no usable
 * table (none, another length, or the table is damaged: a debug message
 * says which), so the caller reads the whole payload instead; -1/EIO
 * (message naming pack and offset) if the record header is damaged, or
 * -1/ESTALE (no message) if garbage collection retired the pack: the
 * index points at a copy now, look again.
 */
int cas_packs_read_table (struct cas_packs *p, uint64_t loc, uint32_t length,
                          struct cas_record_header *h, uint32_t *crcs);
/* Read payload bytes [off, off + len) of the record at loc (whose header
 * the caller has read and checked): no checks, -1/EIO if short, -1/ESTALE
 * as cas_packs_read_table.
 */
int cas_packs_read_payload (struct cas_packs *p, uint64_t loc, uint32_t off,
                            void *buf, uint32_t len);

/* Read the bytes of the pack of loc from CAS_LOC_OFFSET (loc) + at on,
 * scattered over iov (one preadv): *got says how many came (fewer only
 * at the end of the pack).  No checks: the caller knows the layout (it
 * read and checked the record's header and tables before) or checks
 * what came.  -1/EIO (message) if the pack is missing or the read fails,
 * -1/ESTALE (no message) as cas_packs_read_table.
 */
int cas_packs_readv (struct cas_packs *p, uint64_t loc, uint64_t at,
                     const struct iovec *iov, int iovcnt, size_t *got);

/* fdatasync every pack appended to since the last sync. */
int cas_packs_sync (struct cas_packs *p);
/* Make the next cas_packs_sync fdatasync pack id too, although this
 * process may not have appended to it (a record an earlier process
 * wrote and never synced).
 */
void cas_packs_dirty (struct cas_packs *p, uint32_t id);

/* Where a scan starts in one pack, and how much of it must never be cut
 * (bytes known to have been durable: the index cache's record of the
 * pack's size).  A pack with no entry is scanned from its header.
 */
struct cas_scan_start {
  uint64_t start;
  uint64_t keep;
};

/* Scan records through the end of every pack, pack i from from[i].start
 * (i < nfrom; from may be NULL: everything), calling fn for each record
 * (info->status != 0 for a damaged one).  flags: CAS_ENUM_CHECK_CRC /
 * CAS_ENUM_REHASH for every record, plus these:
 */
#define CAS_SCAN_CUT_TAIL   (1u << 8)  /* truncate a torn tail */
#define CAS_SCAN_CRC_LAST2  (1u << 9)  /* check CRCs in the last 2 packs */
#define CAS_SCAN_QUIET_BAD  (1u << 10) /* do not report damaged regions */
/* Extent records (format 4): the CRC checks cover their slot tables
 * only, not their units (each unit is checked when it is read, and the
 * whole record before dedup uses it: extent.h), so that one damaged unit
 * does not hide the extent's other units.  rehash still checks all.
 */
#define CAS_SCAN_EXTENT_TABLES (1u << 11)
/* A torn tail is cut only where the scan proved it: after the last valid
 * record of the pack, with no valid record up to the end of the file,
 * and never below from[i].keep (a damaged end there is reported, kept,
 * and appends go after it).
 */
int cas_packs_scan (struct cas_packs *p, const struct cas_scan_start *from,
                    uint32_t nfrom, unsigned flags,
                    int (*fn) (const struct cas_record_info *, void *),
                    void *opaque);

/* The same for one pack, headers only (each record's own CRC; damaged
 * regions reported), never cutting: garbage collection's look at a
 * sealed pack.
 */
int cas_packs_scan_one (struct cas_packs *p, uint32_t id,
                        int (*fn) (const struct cas_record_info *, void *),
                        void *opaque);

/* Highest pack number (0 if none). */
uint32_t cas_packs_last (struct cas_packs *p);
/* The size (bytes in use) of pack id, or -1 if there is no such pack. */
int64_t cas_packs_size (struct cas_packs *p, uint32_t id);
uint64_t cas_packs_count (struct cas_packs *p);
uint64_t cas_packs_bytes (struct cas_packs *p);

/* Garbage collection.  seal: no record is appended to any pack that
 * exists now (the next append starts a new one); returns the first pack
 * number appends may use.  retire: a sealed pack whose live records were
 * copied elsewhere (and made durable, and the index updated): reads stop
 * using it (a read of it fails with ESTALE: look the hash up again), the
 * file is closed once the reads in progress are done, and removed
 * (durably).
 */
uint32_t cas_packs_seal (struct cas_packs *p);
int cas_packs_retire (struct cas_packs *p, uint32_t id);

/* fsync a directory, so that a rename or a new file in it is durable.
 * -1 with errno set; no message.
 */
int cas_fsync_dir (const char *dir);

#endif /* NBDCAS_PACK_H */
