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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "chunkstore.h"
#include "cleanup.h"
#include "crc32c.h"
#include "index.h"
#include "pack.h"

#define MAX_CANDIDATES 8

struct packstore {
  struct chunkstore cs;          /* first: cast target */
  char *index_path;
  bool readonly;
  struct cas_packs *packs;
  struct cas_index *index;
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

/* Find the location of hash: 1 found (*loc), 0 absent, -1 error. */
static int
locate (struct packstore *ps, const struct cas_hash *hash, uint64_t *loc)
{
  uint64_t locs[MAX_CANDIDATES];
  struct cas_record_header h;
  int n, i;

  n = cas_index_lookup (ps->index, hash, locs, MAX_CANDIDATES);
  for (i = 0; i < n; i++) {
    if (cas_packs_read_header (ps->packs, locs[i], &h) == -1) {
      forget (ps, hash, locs[i]);
      continue;                 /* damaged: maybe another copy is good */
    }
    if (cas_hash_equal (&h.hash, hash)) {
      *loc = locs[i];
      return 1;
    }
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
  if (locate (ps, hash, &loc) == 1)
    return 0;
  memset (&h, 0, sizeof h);
  h.type = type;
  h.length = len;
  h.hash = *hash;
  if (cas_packs_append (ps->packs, &h, data, &loc) == -1)
    return -1;
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

struct enumerate {
  struct packstore *ps;
  int (*fn) (const struct cas_record_info *, void *);
  void *opaque;
};

/* Tell a damaged record the index can reach from one it cannot: the
 * first is lost data, the second a failed append that was given up
 * (the span could not be punched out before a crash; see FORMAT.md).
 */
static int
enumerate_one (const struct cas_record_info *info, void *opaque)
{
  struct enumerate *e = opaque;
  struct cas_record_info i = *info;

  if (i.status != 0) {
    /* A header that checked out gives the record's size; otherwise the
     * length is the size of the skipped span.
     */
    uint64_t span = cas_hash_is_zero (&i.hash) ? i.length
      : cas_record_size (i.length);
    i.unreachable = !cas_index_has_loc_in (e->ps->index,
                                           CAS_LOC (i.pack, i.offset),
                                           CAS_LOC (i.pack, i.offset + span));
  }
  return e->fn (&i, e->opaque);
}

static int
ps_enumerate (struct chunkstore *cs, unsigned flags,
              int (*fn) (const struct cas_record_info *, void *),
              void *opaque)
{
  struct enumerate e = { .ps = PS (cs), .fn = fn, .opaque = opaque };

  return cas_packs_scan (PS (cs)->packs, 0, 0,
                         flags & (CAS_ENUM_CHECK_CRC | CAS_ENUM_REHASH),
                         enumerate_one, &e);
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
}

static void
free_ps (struct packstore *ps)
{
  cas_index_free (ps->index);
  cas_packs_close (ps->packs);
  free (ps->index_path);
  free (ps);
}

static int
ps_close (struct chunkstore *cs)
{
  struct packstore *ps = PS (cs);
  uint32_t hw_pack;
  uint64_t hw_off;
  int r = 0;

  if (!ps->readonly) {
    /* The cache may only cover records that are durable. */
    if (cas_packs_sync (ps->packs) == -1)
      r = -1;
    else {
      cas_packs_high_water (ps->packs, &hw_pack, &hw_off);
      if (cas_index_save (ps->index, ps->index_path, hw_pack, hw_off) == -1)
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

struct chunkstore *
cas_packstore_open (const char *dir, bool readonly, const uint8_t uuid[16])
{
  struct packstore *ps;
  uint32_t hw_pack = 0;
  uint64_t hw_off = 0;
  unsigned flags;

  ps = calloc (1, sizeof *ps);
  if (ps == NULL)
    return NULL;
  ps->cs.ops = &packstore_ops;
  ps->readonly = readonly;
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

  /* The index cache covers packs up to its high-water mark; scan the
   * rest, checking payload CRCs there (that is where a crash can have
   * left torn records).  Without a usable cache, rebuild from every
   * pack: headers only (their own CRC) except in the last two packs,
   * the only ones a crash can have left torn appends in.
   */
  if (cas_index_load (ps->index, ps->index_path, &hw_pack, &hw_off) == 0 &&
      cas_packs_valid_mark (ps->packs, hw_pack, hw_off)) {
    backend_debug ("cas: index cache: %" PRIu64 " chunks, up to pack %"
                   PRIu32 " offset %" PRIu64,
                   cas_index_count (ps->index), hw_pack, hw_off);
    flags = CAS_ENUM_CHECK_CRC | CAS_SCAN_CUT_TAIL;
  }
  else {
    cas_index_clear (ps->index);
    hw_pack = 0, hw_off = 0;
    flags = CAS_SCAN_CRC_LAST2 | CAS_SCAN_CUT_TAIL | CAS_SCAN_QUIET_BAD;
    backend_debug ("cas: rebuilding the index from the packs");
  }
  if (cas_packs_scan (ps->packs, hw_pack, hw_off, flags | CAS_SCAN_QUIET_BAD,
                      index_record, ps) != 0) {
    backend_error ("cas: scanning packs: %m");
    goto err;
  }
  return &ps->cs;

 err:
  {
    int saved = errno ? errno : EIO;
    free_ps (ps);
    errno = saved;
    return NULL;
  }
}
