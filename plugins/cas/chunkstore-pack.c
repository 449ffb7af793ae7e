/* The local chunk store: pack files (pack.c) + in-memory index (index.c)
 * + the on-disk index cache.  See chunkstore.h for the contract.
 *
 * put: look up the candidates for the hash; confirm a candidate by
 * reading its 64-byte record header (the index keeps only 8 bytes of
 * hash); otherwise append a record and only then insert it into the index,
 * so that no other thread can reference a chunk whose bytes are not yet
 * in the file (a sync could otherwise miss it).  Two threads putting the
 * same new chunk at once may both append it: harmless, both copies are
 * valid.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "chunkstore.h"
#include "cleanup.h"
#include "crc32c.h"
#include "index.h"
#include "le.h"
#include "pack.h"

#define MAX_CANDIDATES 8

struct packstore {
  struct chunkstore cs;          /* first: cast target */
  char *index_path;
  bool readonly;
  uint8_t uuid[16];
  struct cas_packs *packs;
  struct cas_index *index;
  _Atomic uint64_t appended;     /* records written by put */
};

static inline struct packstore *
PS (struct chunkstore *cs)
{
  return (struct packstore *) cs;
}

/* A record found damaged is dropped from the index, so that writing the
 * same content again stores a good copy instead of deduplicating against
 * the damaged one (reads of the old reference then fail with EIO).  The
 * index cache saved at close no longer lists it either.
 */
static void
forget (struct packstore *ps, const struct cas_hash *hash, uint64_t loc)
{
  if (!ps->readonly)
    cas_index_remove (ps->index, hash, loc);
}

/* Is the payload of the record at loc intact?  Read it and check its
 * CRC32C, once per process: the index remembers the answer
 * (CAS_LOC_VERIFIED).  1 intact, 0 damaged (reported), -1 error.
 */
static int
payload_intact (struct packstore *ps, const struct cas_hash *hash,
                uint64_t loc, uint32_t length)
{
  CLEANUP_FREE void *buf = NULL;
  struct cas_record_header h;
  char hex[2 * CAS_HASH_SIZE + 1];

  if (loc & CAS_LOC_VERIFIED)
    return 1;
  buf = malloc (length ? length : 1);
  if (buf == NULL)
    return -1;
  if (cas_packs_read (ps->packs, loc, &h, buf, length) == 0 &&
      cas_hash_equal (&h.hash, hash) && h.length == length &&
      crc32c (0, buf, length) == h.payload_crc) {
    cas_index_set_verified (ps->index, hash, loc);
    return 1;
  }
  backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": chunk %s is "
                 "damaged; storing a good copy", CAS_LOC_PACK (loc),
                 CAS_LOC_OFFSET (loc), cas_hash_hex (hash, hex));
  return 0;
}

/* Find an intact record of hash: 1 found (*loc), 0 absent, -1 error.
 * The index keeps 8 bytes of each hash, so a candidate is confirmed by
 * its record header; and a record is only trusted for deduplication
 * once its payload was checked (payload_intact): deduplicating against a
 * damaged record would lose the new write too.  A damaged candidate is
 * dropped from the index, so the caller stores a good copy, which heals
 * every volume that references the chunk.
 */
static int
locate (struct packstore *ps, const struct cas_hash *hash, uint64_t *loc)
{
  uint64_t locs[MAX_CANDIDATES];
  struct cas_record_header h;
  int n, i, r;

  n = cas_index_lookup (ps->index, hash, locs, MAX_CANDIDATES);
  for (i = 0; i < n; i++) {
    if (cas_packs_read_header (ps->packs, locs[i], &h) == -1) {
      forget (ps, hash, locs[i]);
      continue;                 /* damaged: maybe another copy is good */
    }
    if (!cas_hash_equal (&h.hash, hash))
      continue;                 /* another chunk with the same 8-byte key */
    r = payload_intact (ps, hash, locs[i], h.length);
    if (r == -1)
      return -1;
    if (r == 0) {
      forget (ps, hash, locs[i]);
      continue;
    }
    *loc = CAS_LOC_PLAIN (locs[i]);
    return 1;
  }
  return 0;
}

static int
ps_put (struct chunkstore *cs, const struct cas_hash *hash,
        enum cas_chunk_type type, const void *data, uint32_t len,
        bool *stored)
{
  struct packstore *ps = PS (cs);
  struct cas_record_header h;
  uint64_t loc;

  if (stored)
    *stored = false;
  if (len == 0 || len > CAS_MAX_PAYLOAD) {
    backend_error ("cas: chunk of %" PRIu32 " bytes is out of range", len);
    errno = EINVAL;
    return -1;
  }
  switch (locate (ps, hash, &loc)) {
  case 1: return 0;
  case -1: return -1;
  }
  memset (&h, 0, sizeof h);
  h.type = type;
  h.length = len;
  h.hash = *hash;
  if (cas_packs_append (ps->packs, &h, data, &loc) == -1)
    return -1;
  atomic_fetch_add (&ps->appended, 1);
  if (cas_index_insert (ps->index, hash, loc) == -1) {
    backend_error ("cas: index insert: %m");
    return -1;
  }
  if (stored)
    *stored = true;
  return 0;
}

static int
ps_get (struct chunkstore *cs, const struct cas_hash *hash, void *buf,
        uint32_t bufsize, uint32_t *len, enum cas_verify verify)
{
  struct packstore *ps = PS (cs);
  uint64_t locs[MAX_CANDIDATES];
  struct cas_record_header h;
  char hex[2 * CAS_HASH_SIZE + 1];
  int n, i, err = ENOENT;

  n = cas_index_lookup (ps->index, hash, locs, MAX_CANDIDATES);
  for (i = 0; i < n; i++) {
    uint32_t pack = CAS_LOC_PACK (locs[i]);
    uint64_t off = CAS_LOC_OFFSET (locs[i]);

    /* One syscall for header + payload, straight into the caller's
     * buffer: on a full-block read that is the client's own buffer.
     */
    if (cas_packs_read (ps->packs, locs[i], &h, buf, bufsize) == -1) {
      forget (ps, hash, locs[i]);
      err = EIO;
      continue;
    }
    if (!cas_hash_equal (&h.hash, hash))
      continue;                 /* another chunk with the same 8-byte key */
    if (verify >= CAS_VERIFY_CHECKSUM &&
        crc32c (0, buf, h.length) != h.payload_crc) {
      backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": chunk %s: "
                     "payload checksum mismatch (damaged data)",
                     pack, off, cas_hash_hex (hash, hex));
      forget (ps, hash, locs[i]);
      err = EIO;
      continue;
    }
    if (verify >= CAS_VERIFY_FULL) {
      struct cas_hash got;
      if (cas_hash_compute (buf, h.length, &got) == -1 ||
          !cas_hash_equal (&got, hash)) {
        backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": chunk %s: "
                       "payload does not match its SHA-256 (damaged data)",
                       pack, off, cas_hash_hex (hash, hex));
        forget (ps, hash, locs[i]);
        err = EIO;
        continue;
      }
    }
    if (verify >= CAS_VERIFY_CHECKSUM && !(locs[i] & CAS_LOC_VERIFIED))
      cas_index_set_verified (ps->index, hash, locs[i]);
    if (len)
      *len = h.length;
    return 0;
  }
  if (err == ENOENT)
    backend_error ("cas: chunk %s is missing from the store",
                   cas_hash_hex (hash, hex));
  errno = err;
  return -1;
}

static int
ps_has (struct chunkstore *cs, const struct cas_hash *hash)
{
  uint64_t loc;
  return locate (PS (cs), hash, &loc);
}

static int
ps_sync (struct chunkstore *cs)
{
  return cas_packs_sync (PS (cs)->packs);
}

static int
ps_enumerate (struct chunkstore *cs, unsigned flags,
              int (*fn) (const struct cas_record_info *, void *),
              void *opaque)
{
  return cas_packs_scan (PS (cs)->packs, NULL, 0,
                         flags & (CAS_ENUM_CHECK_CRC | CAS_ENUM_REHASH),
                         fn, opaque);
}

static void
ps_stats (struct chunkstore *cs, struct cas_chunkstore_stats *st)
{
  struct packstore *ps = PS (cs);

  st->chunks = cas_index_count (ps->index);
  st->index_slots = cas_index_slots (ps->index);
  st->index_bytes = cas_index_memory (ps->index);
  st->packs = cas_packs_count (ps->packs);
  st->stored_bytes = cas_packs_bytes (ps->packs);
  st->appended = atomic_load (&ps->appended);
}

static void
free_ps (struct packstore *ps)
{
  cas_index_free (ps->index);
  cas_packs_close (ps->packs);
  free (ps->index_path);
  free (ps);
}

/* The index cache's claim about each pack (index.h): how far its
 * entries reach, proven by the header of the last indexed record.  NULL
 * if some last record cannot be read back (then no cache is saved: the
 * one on disk, if any, is older but still checked like any other).
 */
static struct cas_index_pack *
cover_table (struct packstore *ps, uint32_t npacks)
{
  CLEANUP_FREE uint64_t *last = calloc ((size_t) npacks + 1, sizeof *last);
  struct cas_index_pack *t = calloc ((size_t) npacks + 1, sizeof *t);
  uint32_t p;

  if (last == NULL || t == NULL)
    goto err;
  cas_index_last_offsets (ps->index, last, npacks);
  for (p = 1; p <= npacks; p++) {
    int64_t size = cas_packs_size (ps->packs, p);
    struct cas_record_header h;
    uint8_t raw[CAS_RECORD_HEADER_SIZE];

    if (size < 0)
      continue;                 /* absent: size 0 */
    t[p].size = size;
    t[p].covered = CAS_PACK_HEADER_SIZE;
    if (last[p] == 0)
      continue;
    if (cas_packs_read_header (ps->packs, CAS_LOC (p, last[p]), &h) == -1)
      goto err;
    cas_record_header_encode (&h, raw);
    t[p].last = last[p];
    t[p].last_crc = get_le32 (raw + 60);
    t[p].covered = last[p] + cas_record_size (h.length);
  }
  return t;
 err:
  free (t);
  return NULL;
}

static int
ps_close (struct chunkstore *cs)
{
  struct packstore *ps = PS (cs);
  int r = 0;

  if (!ps->readonly) {
    /* The cache may only cover records that are durable. */
    if (cas_packs_sync (ps->packs) == -1)
      r = -1;
    else {
      uint32_t npacks = cas_packs_last (ps->packs);
      CLEANUP_FREE struct cas_index_pack *t = cover_table (ps, npacks);

      if (t == NULL)
        backend_error ("cas: not saving the index cache: a record it "
                       "lists cannot be read back");
      else if (cas_index_save (ps->index, ps->index_path, ps->uuid, t,
                               npacks) == -1)
        r = -1;
    }
  }
  free_ps (ps);
  return r;
}

static const struct chunkstore_ops packstore_ops = {
  .put = ps_put,
  .get = ps_get,
  .has = ps_has,
  .sync = ps_sync,
  .enumerate = ps_enumerate,
  .stats = ps_stats,
  .close = ps_close,
};

static int
index_record (const struct cas_record_info *info, void *opaque)
{
  struct packstore *ps = opaque;

  if (info->status != 0)
    return 0;                   /* damaged: never reference it */
  return cas_index_insert (ps->index, &info->hash,
                           CAS_LOC (info->pack, info->offset));
}

/* Check the cache's claims (index.h, struct cas_index_pack) against the
 * packs before trusting any of it: every pack it covers is still there,
 * no shorter than it was, and its covered part ends exactly after the
 * record the cache names (so the scan that follows starts on a record
 * boundary it can verify).  On success *from says where to scan each
 * pack and below which offset a damaged end is damage, not a torn tail.
 */
static int
check_cover (struct packstore *ps, const struct cas_index_pack *t,
             uint32_t npacks, struct cas_scan_start *from,
             char *why, size_t len)
{
  uint32_t p;

  for (p = 1; p <= npacks; p++) {
    int64_t size = cas_packs_size (ps->packs, p);
    struct cas_record_header h;
    uint8_t raw[CAS_RECORD_HEADER_SIZE];

    if (t[p].size == 0) {       /* absent when the cache was saved */
      from[p].start = from[p].keep = 0;
      continue;
    }
    if (size < 0) {
      snprintf (why, len, "pack %" PRIu32 " is missing (the index cache "
                "lists it)", p);
      return -1;
    }
    if ((uint64_t) size < t[p].size) {
      snprintf (why, len, "pack %" PRIu32 " is %" PRIi64 " bytes but was %"
                PRIu64 " when the index cache was saved: %" PRIu64 " bytes "
                "of it are lost (truncated?)", p, size, t[p].size,
                t[p].size - (uint64_t) size);
      return -1;
    }
    if (t[p].last == 0 ? t[p].covered != CAS_PACK_HEADER_SIZE
        : (cas_packs_read_header (ps->packs, CAS_LOC (p, t[p].last),
                                  &h) == -1 ||
           (cas_record_header_encode (&h, raw),
            get_le32 (raw + 60) != t[p].last_crc) ||
           t[p].last + cas_record_size (h.length) != t[p].covered ||
           t[p].covered > t[p].size)) {
      snprintf (why, len, "pack %" PRIu32 " does not hold the record the "
                "index cache names as its last", p);
      return -1;
    }
    from[p].start = t[p].covered;
    from[p].keep = t[p].size;
  }
  return 0;
}

/* Load the cache into idx and check it: 0 usable (*from, *npacks set:
 * where to scan), -1 not (why says why; idx is left empty).
 */
static int
load_cache (struct packstore *ps, struct cas_index *idx,
            struct cas_scan_start **from, uint32_t *npacks,
            char *why, size_t len)
{
  CLEANUP_FREE struct cas_index_pack *table = NULL;

  *from = NULL;
  if (cas_index_load (idx, ps->index_path, ps->uuid, &table, npacks) == -1) {
    snprintf (why, len, "%s",
              errno == ENOENT ? "absent"
              : errno == EPROTO ? "of another version"
              : errno == ESTALE ? "of another store: its store UUID differs"
              : "damaged");
    return -1;
  }
  *from = calloc ((size_t) *npacks + 1, sizeof **from);
  if (*from == NULL) {
    snprintf (why, len, "out of memory");
    goto bad;
  }
  if (check_cover (ps, table, *npacks, *from, why, len) == -1)
    goto bad;
  return 0;
 bad:
  free (*from);
  *from = NULL;
  cas_index_clear (idx);
  return -1;
}

int
cas_packstore_check_cache (struct chunkstore *cs, char *why, size_t len)
{
  struct packstore *ps = PS (cs);
  struct cas_index *idx = cas_index_new ();
  struct cas_scan_start *from;
  uint32_t npacks;
  int r;

  if (idx == NULL) {
    snprintf (why, len, "out of memory");
    return 0;
  }
  r = load_cache (ps, idx, &from, &npacks, why, len);
  free (from);
  cas_index_free (idx);
  if (r == 0)
    return 1;
  return strcmp (why, "absent") == 0 ? -1 : 0;
}

void
cas_packstore_forget (struct chunkstore *cs, const struct cas_hash *hash,
                      uint32_t pack, uint64_t offset)
{
  forget (PS (cs), hash, CAS_LOC (pack, offset));
}

struct chunkstore *
cas_packstore_open (const char *dir, bool readonly, const uint8_t uuid[16],
                    unsigned flags)
{
  struct packstore *ps;
  struct cas_scan_start *from = NULL;
  uint32_t npacks = 0;
  unsigned scan;
  char why[256];

  ps = calloc (1, sizeof *ps);
  if (ps == NULL)
    return NULL;
  ps->cs.ops = &packstore_ops;
  ps->readonly = readonly;
  memcpy (ps->uuid, uuid, 16);
  if (asprintf (&ps->index_path, "%s/index", dir) == -1) {
    ps->index_path = NULL;
    goto err;
  }
  ps->index = cas_index_new ();
  if (ps->index == NULL)
    goto err;
  ps->packs = cas_packs_open (dir, readonly, uuid);
  if (ps->packs == NULL)
    goto err;

  /* The index cache covers part of each pack; scan the rest, checking
   * payload CRCs there (that is where a crash can have left torn
   * records).  Without a usable cache, rebuild from every pack: headers
   * only (their own CRC) except in the last two packs, the only ones a
   * crash can have left torn appends in.
   */
  if (!(flags & CAS_PACKSTORE_NO_CACHE) &&
      load_cache (ps, ps->index, &from, &npacks, why, sizeof why) == 0) {
    backend_debug ("cas: index cache: %" PRIu64 " chunks in %" PRIu32
                   " packs", cas_index_count (ps->index), npacks);
    scan = CAS_ENUM_CHECK_CRC | CAS_SCAN_CUT_TAIL;
  }
  else {
    if (flags & CAS_PACKSTORE_NO_CACHE)
      backend_debug ("cas: indexing the packs (the index cache is not used)");
    else if (strcmp (why, "absent") == 0 ||
             strcmp (why, "of another version") == 0)
      backend_debug ("cas: index cache %s: indexing the packs", why);
    else
      backend_error ("cas: index cache %s is not usable (%s): it is only a "
                     "cache, rebuilding the index from the packs",
                     ps->index_path, why);
    npacks = 0;
    scan = CAS_SCAN_CRC_LAST2 | CAS_SCAN_CUT_TAIL;
  }
  if (cas_packs_scan (ps->packs, from, from ? npacks + 1 : 0,
                      scan | CAS_SCAN_QUIET_BAD, index_record, ps) != 0) {
    backend_error ("cas: scanning packs: %m");
    free (from);
    goto err;
  }
  free (from);
  return &ps->cs;

 err:
  {
    int saved = errno ? errno : EIO;
    free_ps (ps);
    errno = saved;
    return NULL;
  }
}
