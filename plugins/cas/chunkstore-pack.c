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
#include "compress.h"
#include "crc32c.h"
#include "extent.h"
#include "index.h"
#include "le.h"
#include "pack.h"
#include "testpoint.h"
#include "vector.h"

#define MAX_CANDIDATES 8

struct packstore {
  struct chunkstore cs;          /* first: cast target */
  char *index_path;
  bool readonly;
  uint8_t uuid[16];
  struct cas_packs *packs;
  struct cas_index *index;
  _Atomic uint64_t appended;     /* records written by put */
  /* While garbage collection runs: packs below this number are sealed
   * and may be removed, so put never deduplicates against a record in
   * one of them (it stores a new copy).  0: no collection.
   */
  _Atomic uint32_t gc_below;
  /* How new data records are stored (the superblock's; set once, before
   * the store serves: cas_packstore_set_compression), and the codecs'
   * contexts for compressing and decompressing.
   */
  struct cas_compression comp;
  struct cas_codec_pool *pool;
  /* A format-4 store's units (extent.h); NULL in the others.  Its data
   * is in extent records only: no data chunk is put, and the hash index
   * holds map nodes.
   */
  struct cas_extents *extents;
};

/* A read raced with garbage collection retiring a pack: the index points
 * at the copy by now, so the lookup is done again (a bounded number of
 * times: one collection retires each pack once).
 */
#define MAX_STALE_RETRIES 16

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

/* A compressed record's stored bytes (their CRC checked) decode to
 * exactly its raw length: a stream that does not is never trusted to
 * stand in for new data (its reads would all fail).  Raw records: true.
 * errno ENOMEM if it could not tell.
 */
static bool
decompresses (struct packstore *ps, const struct cas_record_header *h,
              const void *stored)
{
  CLEANUP_FREE void *raw = NULL;

  if (!(h->flags & CAS_RECORD_F_COMPRESSED))
    return true;
  raw = malloc (h->raw_length);
  if (raw == NULL)
    return false;
  return cas_decompress (ps->pool, h->codec, stored, h->length, raw,
                         h->raw_length) == 0;
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
  errno = 0;
  if (cas_packs_read (ps->packs, loc, &h, buf, length) == 0 &&
      cas_hash_equal (&h.hash, hash) && h.length == length &&
      crc32c (0, buf, length) == h.payload_crc &&
      decompresses (ps, &h, buf)) {
    cas_index_set_verified (ps->index, hash, loc);
    return 1;
  }
  if (errno == ESTALE)
    return 2;                   /* retired meanwhile: not damaged */
  if (errno == ENOMEM) {
    backend_error ("cas: checking chunk %s: out of memory",
                   cas_hash_hex (hash, hex));
    return -1;
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
  uint32_t gc_below = atomic_load (&ps->gc_below);
  int n, i, r;

  n = cas_index_lookup (ps->index, hash, locs, MAX_CANDIDATES);
  for (i = 0; i < n; i++) {
    /* Garbage collection's rule (FORMAT.md): no new reference to a
     * record it may remove.
     */
    if (CAS_LOC_PACK (locs[i]) < gc_below)
      continue;
    if (cas_packs_read_header (ps->packs, locs[i], &h) == -1) {
      if (errno != ESTALE)
        forget (ps, hash, locs[i]);
      continue;                 /* damaged: maybe another copy is good */
    }
    if (!cas_hash_equal (&h.hash, hash) || h.type == CAS_RECORD_TABLE)
      continue;                 /* another chunk with the same 8-byte key */
    r = payload_intact (ps, hash, locs[i], h.length);
    if (r == -1)
      return -1;
    if (r == 2)
      continue;
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
  CLEANUP_FREE uint8_t *packed = NULL;
  uint64_t loc;

  if (stored)
    *stored = false;
  if (len == 0 || len > CAS_MAX_PAYLOAD) {
    backend_error ("cas: chunk of %" PRIu32 " bytes is out of range", len);
    errno = EINVAL;
    return -1;
  }
  if (ps->extents && type == CAS_CHUNK_DATA) {
    /* A caller's bug: data goes to extents (extent.h) in this store. */
    backend_error ("cas: internal error: a data chunk put into a format-4 "
                   "store");
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
  /* Hashed raw above (dedup is on the raw bytes); stored compressed only
   * if that saves at least 1/8, else raw.
   */
  if (type == CAS_CHUNK_DATA && ps->comp.codec != CAS_CODEC_NONE) {
    uint32_t room = cas_compress_limit (len), out;

    packed = malloc (room ? room : 1);
    if (packed == NULL) {
      backend_error ("cas: compressing a chunk: out of memory");
      return -1;
    }
    if (cas_compress (ps->pool, &ps->comp, data, len, packed, room,
                      &out) == -1)
      return -1;
    if (out > 0 && out <= room) {
      h.flags = CAS_RECORD_F_COMPRESSED;
      h.codec = ps->comp.codec;
      h.raw_length = len;
      h.length = out;
      data = packed;
    }
  }
  if (cas_packs_append (ps->packs, &h, data, &loc) == -1)
    return -1;
  atomic_fetch_add (&ps->appended, 1);
  if (cas_index_insert (ps->index, hash, loc) == -1) {
    backend_error ("cas: index insert: %m");
    return -1;
  }
  /* This process wrote the payload from the caller's buffer, whose CRC
   * it computed: as good as a check once per process, which is all the
   * bit says.  So a duplicate of a chunk written since the store was
   * opened costs its hash, the lookup and one header read, no payload
   * read.
   */
  cas_index_set_verified (ps->index, hash, loc);
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
  int n, i, err = ENOENT, stale = 0;

 again:
  n = cas_index_lookup (ps->index, hash, locs, MAX_CANDIDATES);
  for (i = 0; i < n; i++) {
    uint32_t pack = CAS_LOC_PACK (locs[i]);
    uint64_t off = CAS_LOC_OFFSET (locs[i]);

    /* One syscall for header + payload, straight into the caller's
     * buffer: on a full-block read that is the client's own buffer.
     */
    if (cas_packs_read (ps->packs, locs[i], &h, buf, bufsize) == -1) {
      if (errno == ESTALE && stale++ < MAX_STALE_RETRIES)
        goto again;             /* retired meanwhile: the copy is indexed */
      forget (ps, hash, locs[i]);
      err = EIO;
      continue;
    }
    if (!cas_hash_equal (&h.hash, hash) || h.type == CAS_RECORD_TABLE)
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
    /* Checked (the CRC is of the stored bytes), now decompressed: the
     * stored bytes are copied out of the way, the block goes to buf.
     */
    if (h.flags & CAS_RECORD_F_COMPRESSED) {
      CLEANUP_FREE uint8_t *packed = NULL;

      if (h.raw_length > bufsize) {
        backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": chunk %s "
                       "of %" PRIu32 " bytes is too long", pack, off,
                       cas_hash_hex (hash, hex), h.raw_length);
        err = EIO;
        continue;
      }
      packed = malloc (h.length);
      if (packed == NULL) {
        backend_error ("cas: reading chunk %s: out of memory",
                       cas_hash_hex (hash, hex));
        return -1;
      }
      memcpy (packed, buf, h.length);
      if (cas_decompress (ps->pool, h.codec, packed, h.length, buf,
                          h.raw_length) == -1) {
        if (errno == ENOMEM) {
          backend_error ("cas: decompressing chunk %s: out of memory",
                         cas_hash_hex (hash, hex));
          return -1;
        }
        /* Scribble over what came out: nothing unchecked stays in buf. */
        memset (buf, 0, h.raw_length);
        backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": chunk %s: "
                       "compressed payload does not decompress (damaged "
                       "data)", pack, off, cas_hash_hex (hash, hex));
        forget (ps, hash, locs[i]);
        err = EIO;
        continue;
      }
    }
    if (verify >= CAS_VERIFY_FULL) {
      struct cas_hash got;
      if (cas_hash_compute (buf, h.raw_length, &got) == -1 ||
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
      *len = h.raw_length;
    return 0;
  }
  if (err == ENOENT)
    backend_error ("cas: chunk %s is missing from the store",
                   cas_hash_hex (hash, hex));
  errno = err;
  return -1;
}

int
cas_chunk_get_range_whole (struct chunkstore *cs, const struct cas_hash *hash,
                           uint32_t length, void *buf, uint32_t off,
                           uint32_t count, enum cas_verify verify)
{
  CLEANUP_FREE uint8_t *tmp = malloc (length);
  uint32_t len;

  if (tmp == NULL)
    return -1;
  if (cs->ops->get (cs, hash, tmp, length, &len, verify) == -1)
    return -1;
  if (len != length) {
    char hex[2 * CAS_HASH_SIZE + 1];
    backend_error ("cas: chunk %s is %" PRIu32 " bytes, expected %" PRIu32,
                   cas_hash_hex (hash, hex), len, length);
    errno = EIO;
    return -1;
  }
  memcpy (buf, tmp + off, count);
  return 0;
}

/* Bytes [off, off + count) of the compressed record at loc (header h,
 * checked by the caller): all the stored bytes are read and their CRC32C
 * checked (verify=checksum), then only the first off + count bytes of
 * the block are decompressed.  0, or -1 with errno: EIO (damaged: the
 * record is dropped from the index, a message says why), ESTALE (the
 * pack was retired: look again), ENOMEM.
 */
static int
read_compressed_range (struct packstore *ps, const struct cas_hash *hash,
                       uint64_t loc, const struct cas_record_header *h,
                       void *buf, uint32_t off, uint32_t count,
                       enum cas_verify verify)
{
  CLEANUP_FREE uint8_t *packed = malloc (h->length);
  CLEANUP_FREE uint8_t *raw = NULL;
  char hex[2 * CAS_HASH_SIZE + 1];
  uint8_t *dst = buf;

  if (packed == NULL || (off && (dst = raw = malloc (off + count)) == NULL)) {
    backend_error ("cas: reading chunk %s: out of memory",
                   cas_hash_hex (hash, hex));
    errno = ENOMEM;
    return -1;
  }
  if (cas_packs_read_payload (ps->packs, loc, 0, packed, h->length) == -1) {
    if (errno != ESTALE) {
      forget (ps, hash, loc);
      errno = EIO;
    }
    return -1;
  }
  if (verify >= CAS_VERIFY_CHECKSUM &&
      crc32c (0, packed, h->length) != h->payload_crc) {
    backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": chunk %s: "
                   "payload checksum mismatch (damaged data)",
                   CAS_LOC_PACK (loc), CAS_LOC_OFFSET (loc),
                   cas_hash_hex (hash, hex));
    forget (ps, hash, loc);
    errno = EIO;
    return -1;
  }
  if (cas_decompress_prefix (ps->pool, h->codec, packed, h->length, dst,
                             off + count) == -1) {
    if (errno == ENOMEM) {
      backend_error ("cas: decompressing chunk %s: out of memory",
                     cas_hash_hex (hash, hex));
      return -1;
    }
    /* Nothing unchecked reaches the client's buffer. */
    if (dst == buf)
      memset (buf, 0, count);
    backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": chunk %s: "
                   "compressed payload does not decompress (damaged data)",
                   CAS_LOC_PACK (loc), CAS_LOC_OFFSET (loc),
                   cas_hash_hex (hash, hex));
    forget (ps, hash, loc);
    errno = EIO;
    return -1;
  }
  if (raw)
    memcpy (buf, raw + off, count);
  return 0;
}

/* A partial read checks only the pieces it reads, against the piece
 * table in front of the record (format 2): a 4 KiB read of a 64 KiB block
 * reads and checksums 4 KiB, not 64.  Records without a usable table,
 * and verify=full, take the whole-chunk path.
 */
static int
ps_get_range (struct chunkstore *cs, const struct cas_hash *hash,
              uint32_t length, void *buf, uint32_t off, uint32_t count,
              enum cas_verify verify)
{
  struct packstore *ps = PS (cs);
  uint32_t crcs[CAS_MAX_PAYLOAD / CAS_PIECE_SIZE];
  uint64_t locs[MAX_CANDIDATES];
  struct cas_record_header h;
  char hex[2 * CAS_HASH_SIZE + 1];
  int n, i, stale = 0;
  bool damaged = false;

  if (count == 0 || off > length || count > length - off) {
    errno = EINVAL;
    return -1;
  }
  if (verify >= CAS_VERIFY_FULL || !cas_wants_table (length) ||
      (off == 0 && count == length))
    return cas_chunk_get_range_whole (cs, hash, length, buf, off, count,
                                      verify);
 again:
  n = cas_index_lookup (ps->index, hash, locs, MAX_CANDIDATES);
  for (i = 0; i < n; i++) {
    uint32_t first = off / CAS_PIECE_SIZE;
    uint32_t last = (off + count - 1) / CAS_PIECE_SIZE;
    uint32_t span = (last - first + 1) * CAS_PIECE_SIZE;
    CLEANUP_FREE uint8_t *tmp = NULL;
    uint8_t *dst;
    uint32_t p;
    int r;

    r = cas_packs_read_table (ps->packs, locs[i], length, &h, crcs);
    if (r == -1 && errno == ESTALE && stale++ < MAX_STALE_RETRIES)
      goto again;               /* retired meanwhile: the copy is indexed */
    if (r == -1) {
      forget (ps, hash, locs[i]);
      damaged = true;
      continue;
    }
    if (!cas_hash_equal (&h.hash, hash) || h.type == CAS_RECORD_TABLE)
      continue;                 /* another chunk with the same 8-byte key */
    /* Compressed: decompress only up to the end of the range. */
    if ((h.flags & CAS_RECORD_F_COMPRESSED) && h.raw_length == length) {
      if (read_compressed_range (ps, hash, locs[i], &h, buf, off, count,
                                 verify) == 0)
        return 0;
      if (errno == ESTALE && stale++ < MAX_STALE_RETRIES)
        goto again;
      if (errno == ENOMEM)
        return -1;
      damaged = true;
      continue;
    }
    if (r == 1 || h.length != length)
      /* No usable table: the whole record, checked as get does. */
      return cas_chunk_get_range_whole (cs, hash, length, buf, off, count,
                                        verify);
    /* Whole pieces straight into buf when the range is piece-aligned. */
    if (off % CAS_PIECE_SIZE == 0 && count == span)
      dst = buf;
    else if ((dst = tmp = malloc (span)) == NULL)
      return -1;
    if (cas_packs_read_payload (ps->packs, locs[i], first * CAS_PIECE_SIZE,
                                dst, span) == -1) {
      if (errno == ESTALE && stale++ < MAX_STALE_RETRIES)
        goto again;
      forget (ps, hash, locs[i]);
      damaged = true;
      continue;
    }
    for (p = first; p <= last && verify >= CAS_VERIFY_CHECKSUM; p++)
      if (crc32c (0, dst + (size_t) (p - first) * CAS_PIECE_SIZE,
                  CAS_PIECE_SIZE) != crcs[p])
        break;
    if (p <= last && verify >= CAS_VERIFY_CHECKSUM) {
      /* Scribble over what was read: nothing unchecked reaches buf. */
      if (dst == buf)
        memset (buf, 0, count);
      /* The piece or the table: the whole payload's CRC tells which
       * (and a damaged record is dropped from the index there).  A
       * table that does not match intact data costs this read its speed,
       * not its data (FORMAT.md, "Piece tables").
       */
      r = cas_chunk_get_range_whole (cs, hash, length, buf, off, count,
                                     verify);
      if (r == 0)
        backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": chunk %s: "
                       "its piece table does not match its intact data in "
                       "bytes %" PRIu32 "-%" PRIu32 " (the whole record was "
                       "read instead; run nbdcas fsck)",
                       CAS_LOC_PACK (locs[i]), CAS_LOC_OFFSET (locs[i]),
                       cas_hash_hex (hash, hex), p * CAS_PIECE_SIZE,
                       (p + 1) * CAS_PIECE_SIZE - 1);
      else {
        int saved = errno;
        backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": chunk %s: "
                       "checksum mismatch in bytes %" PRIu32 "-%" PRIu32
                       " (damaged data)", CAS_LOC_PACK (locs[i]),
                       CAS_LOC_OFFSET (locs[i]), cas_hash_hex (hash, hex),
                       p * CAS_PIECE_SIZE, (p + 1) * CAS_PIECE_SIZE - 1);
        errno = saved;
      }
      return r;
    }
    if (dst != buf)
      memcpy (buf, dst + off % CAS_PIECE_SIZE, count);
    return 0;
  }
  if (damaged) {                /* each said why */
    errno = EIO;
    return -1;
  }
  /* No candidate at all: the whole-chunk path says it is missing. */
  return cas_chunk_get_range_whole (cs, hash, length, buf, off, count,
                                    verify);
}

static int
ps_has (struct chunkstore *cs, const struct cas_hash *hash)
{
  uint64_t loc;
  return locate (PS (cs), hash, &loc);
}

static int
ps_sizes (struct chunkstore *cs, const struct cas_hash *hash, uint32_t *raw,
          uint32_t *stored)
{
  struct packstore *ps = PS (cs);
  uint64_t locs[MAX_CANDIDATES];
  struct cas_record_header h;
  int n, i, stale = 0;

 again:
  n = cas_index_lookup (ps->index, hash, locs, MAX_CANDIDATES);
  for (i = 0; i < n; i++) {
    if (cas_packs_read_header (ps->packs, locs[i], &h) == -1) {
      if (errno == ESTALE && stale++ < MAX_STALE_RETRIES)
        goto again;
      continue;                 /* damaged: maybe another copy is good */
    }
    if (!cas_hash_equal (&h.hash, hash) || h.type == CAS_RECORD_TABLE)
      continue;
    *raw = h.raw_length;
    *stored = h.length;
    return 1;
  }
  return 0;
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
  cas_extents_free (ps->extents);
  cas_codec_pool_free (ps->pool);
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
  if (ps->extents)
    cas_extents_last_offsets (ps->extents, last, npacks);
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
extents_cache_save (void *ext, FILE *fp, uint32_t npacks)
{
  return cas_extents_cache_save (ext, fp, npacks);
}

static int
extents_cache_load (void *ext, FILE *fp, uint64_t len,
                    const struct cas_index_pack *packs, uint32_t npacks)
{
  return cas_extents_cache_load (ext, fp, len, packs, npacks);
}

/* The cache's section of a format-4 store (index.h): its extent table
 * and hooks; NULL in the other formats (a version-2 cache).
 */
static const struct cas_index_section *
cache_section (struct cas_extents *ext, struct cas_index_section *sec)
{
  if (ext == NULL)
    return NULL;
  *sec = (struct cas_index_section) { .save = extents_cache_save,
                                      .load = extents_cache_load,
                                      .opaque = ext };
  return sec;
}

/* Save the index cache covering packs 1..npacks, which must be synced
 * and no longer appended to.  -1 if it could not be written.
 */
static int
save_cache (struct packstore *ps, uint32_t npacks)
{
  CLEANUP_FREE struct cas_index_pack *t = cover_table (ps, npacks);
  struct cas_index_section sec;

  if (t == NULL) {
    backend_error ("cas: not saving the index cache: a record it "
                   "lists cannot be read back");
    return 0;
  }
  return cas_index_save_section (ps->index, ps->index_path, ps->uuid, t,
                                 npacks, cache_section (ps->extents, &sec));
}

static int
ps_close (struct chunkstore *cs)
{
  struct packstore *ps = PS (cs);
  int r = 0;

  if (!ps->readonly) {
    /* The cache may only cover records that are durable.  Every
     * appender of a format-4 store is gone by now (extent.h), so no
     * extent is pending and the extent table covers every pack.
     */
    if (cas_packs_sync (ps->packs) == -1)
      r = -1;
    else if (save_cache (ps, cas_packs_last (ps->packs)) == -1)
      r = -1;
  }
  free_ps (ps);
  return r;
}


/* ---- garbage collection (gc.c drives it; FORMAT.md has the protocol) ---- */

static int
ps_gc_begin (struct chunkstore *cs)
{
  struct packstore *ps = PS (cs);

  if (ps->readonly) {
    backend_error ("cas: the store is read-only: no garbage collection");
    errno = EROFS;
    return -1;
  }
  atomic_store (&ps->gc_below, cas_packs_seal (ps->packs));
  return 0;
}

static void
ps_gc_end (struct chunkstore *cs)
{
  atomic_store (&PS (cs)->gc_below, 0);
}

/* Is the record at loc the copy of its chunk that garbage collection
 * keeps?  It must be in the index, and of the indexed copies of the same
 * chunk it must be the last (the highest pack and offset): copies made
 * by an earlier collection that was interrupted, or by two writers at
 * once, are garbage, and copies above the seal (never collected now)
 * always win.  Other chunks that share the 8-byte key are told apart by
 * their headers.  A later copy wins only if its payload checks out (a
 * torn append indexed from its header alone must not outlive the good
 * copy); *winner (if not NULL) receives the location of the copy that
 * wins instead of this one, 0 if none: the caller makes it durable
 * before this one's pack goes (it may be an unsynced append of a writer).
 */
static bool
kept_copy (struct packstore *ps, const struct cas_hash *h, uint64_t loc,
           uint64_t *winner)
{
  uint64_t locs[MAX_CANDIDATES];
  bool here = false;
  int n, i;

  if (winner)
    *winner = 0;
  n = cas_index_lookup (ps->index, h, locs, MAX_CANDIDATES);
  for (i = 0; i < n; i++)
    if (CAS_LOC_PLAIN (locs[i]) == loc)
      here = true;
  if (!here)
    return false;
  for (i = 0; i < n; i++) {
    struct cas_record_header other;
    uint64_t l = CAS_LOC_PLAIN (locs[i]);

    if (l <= loc)
      continue;
    /* A later record with this key: the same chunk, intact? */
    if (cas_packs_read_header (ps->packs, l, &other) == 0 &&
        cas_hash_equal (&other.hash, h)) {
      int r = payload_intact (ps, h, locs[i], other.length);
      if (r == 0)
        forget (ps, h, locs[i]);
      if (r != 1)
        continue;
      if (winner)
        *winner = l;
      return false;
    }
  }
  return true;
}

/* ---- format 4: extent records (FORMAT.md, "Format version 4") ----
 *
 * An extent record is live if the extent table points at it (it is the
 * current copy of its id) and some root references one of its stored
 * slots; every other extent record is garbage: an extent nothing
 * references (dropped from the table when its pack goes), or an older
 * copy of an extent, left by an interrupted collection.  A live extent
 * is copied whole, dead slots included (no compaction yet), under the
 * same id; the table then points at the copy (cas_extents_relocate).
 */

_Static_assert (CAS_EXTENT_FACTS_SLOTS == CAS_UNITS_MAX, "facts slots");

/* The id (0 if the fields are not valid) and present mask in an extent
 * record's header hash field.
 */
static uint64_t
extent_id (const struct cas_hash *h, uint16_t *present)
{
  struct cas_extent_fields f;

  if (cas_extent_fields_decode (h, &f) == -1)
    return 0;
  *present = f.present;
  return f.eid;
}

/* Does an extent record read whole (header h, payload buf) check out:
 * its slot table against the header's CRC, each stored slot against its
 * own, the lengths adding up?  Garbage collection copies only such
 * records: a copy of damaged bytes must not look as good as the
 * original.  1 yes, 0 no, -1 error (ENOMEM).
 */
static int
extent_intact (struct packstore *ps, const struct cas_record_header *h,
               const uint8_t *buf)
{
  struct cas_extent_fields f;
  struct cas_slot_entry slot[CAS_UNITS_MAX];
  uint32_t start[CAS_UNITS_MAX];
  const char *problem;
  unsigned bad_slot;

  if (cas_extent_parse_table (h, buf, h->length, &f, slot, start,
                              &problem) == -1)
    return 0;
  switch (cas_extent_check_units (&f, slot, start, buf, true, false,
                                  ps->pool, &problem, &bad_slot)) {
  case 0:
    return 1;
  case 1:
    return 0;
  default:
    return -1;
  }
}

int
cas_packstore_extent_facts (struct chunkstore *cs, uint64_t eid,
                            struct cas_extent_facts *f)
{
  struct packstore *ps = PS (cs);
  uint8_t table[CAS_UNITS_MAX * CAS_SLOT_ENTRY_SIZE];
  struct cas_record_header h;
  struct cas_extent_fields ef;
  struct cas_slot_entry slot[CAS_UNITS_MAX];
  uint32_t start[CAS_UNITS_MAX], got;
  const char *problem;
  uint64_t loc;
  unsigned s;
  int stale = 0;

  /* (Any chunk store may be asked: only a format-4 pack store has.) */
  if (cas_packstore_extents (cs) == NULL)
    return 0;
 again:
  loc = CAS_LOC_PLAIN (cas_extents_loc (ps->extents, eid));
  if (loc == 0)
    return 0;
  if (cas_packs_read_prefix (ps->packs, loc, &h, table, sizeof table,
                             &got) == -1) {
    if (errno == ESTALE && stale++ < MAX_STALE_RETRIES)
      goto again;               /* moved by a collection meanwhile */
    errno = EIO;
    return -1;
  }
  /* The table alone: parse_table's length check needs the whole
   * payload's length only, not its bytes.
   */
  if (cas_extent_parse_table (&h, table, got, &ef, slot, start,
                              &problem) == -1 || ef.eid != eid) {
    backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": extent %"
                   PRIu64 ": %s", CAS_LOC_PACK (loc), CAS_LOC_OFFSET (loc),
                   eid, ef.eid != eid ? "another extent's record is there"
                   : problem);
    errno = EIO;
    return -1;
  }
  memset (f, 0, sizeof *f);
  f->loc = loc;
  f->record_bytes = cas_record_size (h.length);
  f->nslots = ef.nslots;
  f->present = ef.present;
  for (s = 0; s < ef.nslots; s++) {
    f->stored[s] = slot[s].stored_len;
    if (slot[s].flags & CAS_SLOT_F_COMPRESSED)
      f->compressed |= 1u << s;
  }
  return 1;
}

/* Is the extent record at loc (of extent eid) intact?  Read whole. */
static bool
extent_record_intact (struct packstore *ps, uint64_t eid, uint64_t loc)
{
  CLEANUP_FREE uint8_t *buf = malloc (CAS_MAX_PAYLOAD);
  struct cas_record_header h;
  uint16_t present;

  return buf && cas_packs_read (ps->packs, loc, &h, buf,
                                CAS_MAX_PAYLOAD) == 0 &&
    (int) h.type == CAS_RECORD_EXTENT &&
    extent_id (&h.hash, &present) == eid && extent_intact (ps, &h, buf) == 1;
}

/* Extent eid has a record at loc that roots reference (slots: the
 * referenced slots it stores), but the table points elsewhere: it goes
 * only if the current copy reads back intact in those slots (a copy an
 * interrupted collection appended, or a writer's, may be torn), and
 * collect_pack makes that copy durable before this pack goes.  If the
 * current copy does not read back and this one is intact, the table is
 * pointed back at this one (reads of the extent work again), which is
 * then live.  1 it may go, 2 it is the current copy now, 0 it stays
 * (reported: the pack is kept), -1 error.
 */
static int
superseded_ok (struct packstore *ps, struct cas_extents *ext, uint64_t eid,
               uint16_t slots, uint64_t loc)
{
  uint64_t cur = CAS_LOC_PLAIN (cas_extents_loc (ext, eid));
  CLEANUP_FREE uint8_t *unit = NULL;
  unsigned s;

  if (cur == 0) {
    backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": extent %"
                   PRIu64 ", which volumes reference, is not in the extent "
                   "table: keeping the pack (run nbdcas fsck)",
                   CAS_LOC_PACK (loc), CAS_LOC_OFFSET (loc), eid);
    return 0;
  }
  unit = malloc (CAS_UNIT_SIZE);
  if (unit == NULL)
    return -1;
  for (s = 0; s < CAS_UNITS_MAX; s++)
    if ((slots & (1u << s)) &&
        cas_extents_read (ext, eid, s, 1, 0, CAS_UNIT_SIZE, unit,
                          CAS_VERIFY_CHECKSUM) == -1) {
      if (errno == ENOMEM)
        return -1;
      if (extent_record_intact (ps, eid, loc)) {
        backend_error ("cas: extent %" PRIu64 ": its current copy (pack %"
                       PRIu32 " offset %" PRIu64 ") does not read back; "
                       "using the intact copy at pack %" PRIu32 " offset %"
                       PRIu64 " again", eid, CAS_LOC_PACK (cur),
                       CAS_LOC_OFFSET (cur), CAS_LOC_PACK (loc),
                       CAS_LOC_OFFSET (loc));
        cas_extents_relocate (ext, eid, cur, loc);
        if (cas_extents_is_current (ext, eid, loc))
          return 2;
      }
      backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": extent %"
                     PRIu64 ": its current copy (pack %" PRIu32 " offset %"
                     PRIu64 ") does not read back: keeping the pack of this "
                     "older copy (run nbdcas fsck)", CAS_LOC_PACK (loc),
                     CAS_LOC_OFFSET (loc), eid, CAS_LOC_PACK (cur),
                     CAS_LOC_OFFSET (cur));
      return 0;
    }
  return 1;
}

/* What a sealed pack holds, by the first pass. */
struct pack_use {
  uint32_t id;
  uint64_t size, live, dead;    /* bytes */
  uint64_t dead_records;
  uint64_t met;                 /* format 4: current, referenced extents */
  bool keep;                    /* a damaged record is still referenced */
};

struct count_ctx {
  struct packstore *ps;
  const struct cas_gc_mark *mark;
  struct cas_extents *ext;      /* format 4, else NULL */
  uint64_t missing;             /* extents roots reference that the table
                                   does not have */
  struct pack_use *u;
};

/* A damaged record that does not say what it is may be the record of
 * an extent volumes reference and the table lost: its pack is kept
 * while there is such an extent.
 */
static void
keep_if_extents_missing (struct count_ctx *c,
                         const struct cas_record_info *ri)
{
  if (c->missing == 0)
    return;
  backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": a damaged "
                 "record, while %" PRIu64 " extent%s that volumes "
                 "reference %s missing: keeping the pack (run nbdcas "
                 "fsck)", ri->pack, ri->offset, c->missing,
                 c->missing == 1 ? "" : "s", c->missing == 1 ? "is" : "are");
  c->u->keep = true;
}

static int
count_extent (struct count_ctx *c, const struct cas_record_info *ri)
{
  uint64_t size = cas_record_size (ri->length);
  uint64_t loc = CAS_LOC (ri->pack, ri->offset), eid;
  uint16_t present = 0, live = 0;
  bool current = false;

  eid = extent_id (&ri->hash, &present);
  if (eid) {
    live = c->mark->extent_live (eid, c->mark->opaque);
    current = cas_extents_is_current (c->ext, eid, loc);
  }
  if (current && live)
    c->u->met++;
  if (ri->status != 0) {
    /* Damaged: nothing can be copied.  Still the one the table names
     * (or the only one) of an extent volumes reference: the pack is
     * kept, for fsck to show.
     */
    if (live && (current || cas_extents_loc (c->ext, eid) == 0)) {
      backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": a damaged "
                     "extent record (id %" PRIu64 ") that volumes still "
                     "reference: keeping the pack (run nbdcas fsck)",
                     ri->pack, ri->offset, eid);
      c->u->keep = true;
    }
    if (eid == 0)
      keep_if_extents_missing (c, ri);
    c->u->dead += size;
    c->u->dead_records++;
    return 0;
  }
  if (live & present) {
    if (current) {
      c->u->live += size;
      return 0;
    }
    switch (superseded_ok (c->ps, c->ext, eid, live & present, loc)) {
    case -1:
      return -1;
    case 0:
      c->u->keep = true;
      c->u->live += size;
      return 0;
    case 2:
      /* Not counted in met: expected[] did not place it here. */
      c->u->live += size;
      return 0;
    }
  }
  c->u->dead += size;
  c->u->dead_records++;
  return 0;
}

static int
count_record (const struct cas_record_info *ri, void *opaque)
{
  struct count_ctx *c = opaque;
  uint64_t size = cas_record_size (ri->length);

  if (c->ext && (int) ri->type == CAS_RECORD_EXTENT)
    return count_extent (c, ri);
  if (ri->status != 0 &&
      (cas_hash_is_zero (&ri->hash) || (int) ri->type != CAS_CHUNK_MAPNODE))
    keep_if_extents_missing (c, ri);

  if (ri->status != 0) {
    /* Damaged: nothing can be copied.  If a root still references its
     * chunk, the pack is kept (fsck has something to show); else it is
     * a failed or torn append, garbage like any other.  A piece table
     * is not the chunk it names: a damaged one costs partial reads
     * their speed, not data, and the copy of its chunk gets a new one.
     */
    if (ri->type != CAS_RECORD_TABLE && !cas_hash_is_zero (&ri->hash) &&
        c->mark->is_live (&ri->hash, c->mark->opaque)) {
      backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": a damaged "
                     "record that volumes still reference: keeping the pack "
                     "(run nbdcas fsck)", ri->pack, ri->offset);
      c->u->keep = true;
    }
    c->u->dead += ri->length;
    c->u->dead_records++;
    return 0;
  }
  if (c->mark->is_live (&ri->hash, c->mark->opaque) &&
      kept_copy (c->ps, &ri->hash, CAS_LOC (ri->pack, ri->offset), NULL))
    c->u->live += size;
  else {
    c->u->dead += size;
    c->u->dead_records++;
  }
  return 0;
}

/* The records of one pack being collected. */
struct pack_record {
  struct cas_hash h;
  uint64_t off;
  bool live;
  uint64_t eid;                 /* format 4: an extent record's id, else 0 */
  bool drop;                    /* an extent the table points at, dead */
};
DEFINE_VECTOR_TYPE (record_vector, struct pack_record);

struct record_list {
  struct packstore *ps;
  const struct cas_gc_mark *mark;
  struct cas_extents *ext;      /* format 4, else NULL */
  record_vector v;
  bool superseded;              /* a referenced record lost to another copy */
};

/* An extent record of the pack being collected: to copy (live), to
 * drop from the table (the current copy of an extent nothing
 * references), or garbage left alone.
 */
static int
list_extent (struct record_list *l, const struct cas_record_info *ri)
{
  struct pack_record r = { .h = ri->hash, .off = ri->offset };
  uint64_t loc = CAS_LOC (ri->pack, ri->offset);
  uint16_t present = 0, live;

  r.eid = extent_id (&ri->hash, &present);
  if (r.eid == 0)
    return 0;
  live = l->mark->extent_live (r.eid, l->mark->opaque);
  if (cas_extents_is_current (l->ext, r.eid, loc)) {
    /* A damaged one that is live kept the pack (count_extent). */
    r.live = ri->status == 0 && (live & present) != 0;
    r.drop = !r.live;
  }
  else if (ri->status == 0 && (live & present)) {
    /* Another copy is current and was found intact (superseded_ok): it
     * must be durable before this one goes.
     */
    uint64_t winner = CAS_LOC_PLAIN (cas_extents_loc (l->ext, r.eid));
    if (winner) {
      cas_packs_dirty (l->ps->packs, CAS_LOC_PACK (winner));
      l->superseded = true;
    }
  }
  if (!r.live && !r.drop)
    return 0;
  return record_vector_append (&l->v, r);
}

static int
list_record (const struct cas_record_info *ri, void *opaque)
{
  struct record_list *l = opaque;
  struct pack_record r = { .h = ri->hash, .off = ri->offset };

  if (l->ext && (int) ri->type == CAS_RECORD_EXTENT)
    return list_extent (l, ri);
  if (ri->status != 0)
    return 0;                   /* never indexed, nothing to copy */
  if (l->mark->is_live (&ri->hash, l->mark->opaque)) {
    uint64_t winner;

    r.live = kept_copy (l->ps, &ri->hash, CAS_LOC (ri->pack, ri->offset),
                        &winner);
    /* This referenced record goes because another copy wins: that copy
     * must be durable first.  It may be a writer's append not synced yet
     * (or one an earlier process never synced): its pack is synced
     * before this pack is retired (collect_pack).
     */
    if (winner) {
      cas_packs_dirty (l->ps->packs, CAS_LOC_PACK (winner));
      l->superseded = true;
    }
  }
  return record_vector_append (&l->v, r);
}

/* Collect pack id: copy its live records to packs above the seal and
 * make them durable, point the index (the extent table) at the copies
 * and forget every entry into this pack, then retire it.  A live record
 * whose payload no longer checks out is not copied (the copy would carry
 * a new, valid checksum over damaged bytes): the pack is kept, 0 is
 * returned with *kept set.
 */
static int
collect_pack (struct packstore *ps, uint32_t id,
              const struct cas_gc_mark *mark, struct cas_extents *ext,
              struct cas_gc_stats *gs, bool *kept)
{
  struct record_list l = { .ps = ps, .mark = mark, .ext = ext,
                           .v = empty_vector };
  CLEANUP_FREE uint8_t *buf = malloc (CAS_MAX_PAYLOAD);
  CLEANUP_FREE uint64_t *newloc = NULL;
  uint64_t copied = 0;
  size_t i;
  int ret = -1;

  *kept = false;
  if (buf == NULL || cas_packs_scan_one (ps->packs, id, list_record, &l) != 0)
    goto out;
  newloc = calloc (l.v.len + 1, sizeof *newloc);
  if (newloc == NULL)
    goto out;
  for (i = 0; i < l.v.len; i++) {
    const struct pack_record *r = &l.v.ptr[i];
    struct cas_record_header h;
    uint64_t loc = CAS_LOC (id, r->off);

    if (!r->live)
      continue;
    if (cas_packs_read (ps->packs, loc, &h, buf, CAS_MAX_PAYLOAD) == -1 ||
        !cas_hash_equal (&h.hash, &r->h) ||
        (r->eid ? (int) h.type != CAS_RECORD_EXTENT ||
         extent_intact (ps, &h, buf) != 1
         : crc32c (0, buf, h.length) != h.payload_crc)) {
      backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": a live "
                     "record does not check out: keeping the pack (run "
                     "nbdcas fsck)", id, r->off);
      *kept = true;
      ret = 0;
      goto out;
    }
    if (cas_packs_append (ps->packs, &h, buf, &newloc[i]) == -1)
      goto out;
    copied += cas_record_size (h.length);
  }
  /* The copies are durable before anything points at them, and long
   * before the original goes; so are the other copies that won over
   * records of this pack (list_record).
   */
  if ((copied || l.superseded) && cas_packs_sync (ps->packs) == -1)
    goto out;
  cas_test_point ("gc-copied");
  for (i = 0; i < l.v.len; i++) {
    const struct pack_record *r = &l.v.ptr[i];

    if (!r->live)
      continue;
    if (r->eid)
      cas_extents_relocate (ext, r->eid, CAS_LOC (id, r->off), newloc[i]);
    else if (cas_index_insert (ps->index, &r->h, newloc[i]) == -1)
      goto out;
  }
  for (i = 0; i < l.v.len; i++) {
    const struct pack_record *r = &l.v.ptr[i];

    if (r->drop)
      cas_extents_drop (ext, r->eid, CAS_LOC (id, r->off));
    else if (r->eid == 0)
      cas_index_remove (ps->index, &r->h, CAS_LOC (id, r->off));
  }
  cas_test_point ("gc-indexed");
  if (cas_packs_retire (ps->packs, id) == -1)
    goto out;
  gs->bytes_copied += copied;
  if (copied)
    gs->packs_rewritten++;
  else
    gs->packs_deleted++;
  cas_test_point ("gc-retired");
  ret = 0;
 out:
  record_vector_reset (&l.v);
  return ret;
}

static int
cmp_live_share (const void *a, const void *b)
{
  const struct pack_use *x = a, *y = b;
  /* live/size ascending, by cross-multiplication (no division). */
  unsigned __int128 l = (unsigned __int128) x->live * (y->live + y->dead);
  unsigned __int128 r = (unsigned __int128) y->live * (x->live + x->dead);

  return l < r ? -1 : l > r;
}

static int
cmp_id (const void *a, const void *b)
{
  const struct pack_use *x = a, *y = b;

  return x->id < y->id ? -1 : x->id > y->id;
}

/* Format 4: how many extents that roots reference the table places in
 * each sealed pack (expected[id], id < below).  A pack whose scan meets
 * fewer of them holds a record whose header is too damaged to name its
 * extent: it is kept.  *missing: referenced extents the table does not
 * have at all (lost, or damaged when the store was opened).
 */
static uint64_t *
expected_extents (struct cas_extents *ext, const struct cas_gc_mark *mark,
                  uint32_t below, uint64_t *missing)
{
  uint64_t *expected = calloc (below, sizeof *expected);
  uint64_t eid, max = cas_extents_max_eid (ext);

  *missing = 0;
  if (expected == NULL)
    return NULL;
  for (eid = 1; eid <= max; eid++)
    if (mark->extent_live (eid, mark->opaque)) {
      uint64_t loc = cas_extents_loc (ext, eid);
      if (loc == 0)
        (*missing)++;
      else if (CAS_LOC_PACK (loc) < below)
        expected[CAS_LOC_PACK (loc)]++;
    }
  return expected;
}

static int
ps_gc_sweep (struct chunkstore *cs, const struct cas_gc_mark *mark,
             const struct cas_gc_options *opts, struct cas_gc_stats *gs)
{
  struct packstore *ps = PS (cs);
  struct cas_extents *ext = mark->extent_live ? ps->extents : NULL;
  uint32_t below = atomic_load (&ps->gc_below), id;
  CLEANUP_FREE struct pack_use *use = NULL;
  CLEANUP_FREE uint64_t *expected = NULL;
  size_t n = 0, i, nsel = 0;
  uint64_t total_live = 0, total_dead = 0, missing = 0;
  int ret = 0;

  if (below == 0 || (mark->extent_live && ext == NULL)) {
    errno = EINVAL;
    return -1;
  }
  /* Pass 1: what each sealed pack holds (record headers only). */
  use = calloc (below, sizeof *use);
  if (use == NULL)
    return -1;
  if (ext && (expected = expected_extents (ext, mark, below,
                                           &missing)) == NULL)
    return -1;
  for (id = 1; id < below; id++) {
    struct count_ctx c = { .ps = ps, .mark = mark, .ext = ext,
                           .missing = missing, .u = &use[n] };
    int64_t size = cas_packs_size (ps->packs, id);

    if (size < 0)
      continue;                 /* absent, or already removed */
    use[n].id = id;
    use[n].size = size;
    if (cas_packs_scan_one (ps->packs, id, count_record, &c) != 0)
      return -1;
    if (expected && use[n].met < expected[id]) {
      backend_error ("cas: pack %" PRIu32 ": %" PRIu64 " of the extents "
                     "volumes reference there were not found in it (a "
                     "damaged record header?): keeping the pack (run "
                     "nbdcas fsck)", id, expected[id] - use[n].met);
      use[n].keep = true;
    }
    gs->packs_scanned++;
    gs->bytes_scanned += size;
    gs->live_bytes += use[n].live;
    total_live += use[n].live;
    total_dead += use[n].dead;
    if (opts->progress)
      opts->progress (size, opts->opaque);
    n++;
    if (opts->pace && opts->pace (opts->opaque) == -1) {
      errno = ECANCELED;
      return -1;
    }
  }
  /* Which to collect: every pack with nothing live; then the emptiest
   * first, until what stays unreferenced is at most max_unused_pct of the
   * live bytes (so a store ends within that of its live data).
   */
  qsort (use, n, sizeof *use, cmp_live_share);
  for (i = 0; i < n; i++) {
    if (use[i].keep)
      continue;
    if (use[i].live == 0 ||
        total_dead * 100 > (uint64_t) opts->max_unused_pct * total_live) {
      total_dead -= use[i].dead;
      use[nsel++] = use[i];
    }
  }
  qsort (use, nsel, sizeof *use, cmp_id);

  /* Pass 2.  From the first removal on, the index cache on disk would
   * name a removed pack: it is dropped first (a crash then means a
   * rebuild from the packs, never an index into a missing pack); a new
   * one is saved at the end.
   */
  if (!opts->dry_run && nsel) {
    CLEANUP_FREE char *dir = strdup (ps->index_path);
    char *slash = dir ? strrchr (dir, '/') : NULL;

    /* The removal is made durable before any pack goes (packs live in
     * another directory, whose syncs do not cover this one).  A cache
     * that came back after a power cut would still be refused by its
     * pack table's check, but then only by that second line of defence.
     */
    if (unlink (ps->index_path) == -1 && errno != ENOENT) {
      backend_error ("cas: removing %s: %m", ps->index_path);
      return -1;
    }
    if (slash)
      *slash = '\0';
    if (!dir || cas_fsync_dir (slash ? dir : ".") == -1) {
      backend_error ("cas: syncing the directory of %s: %m",
                     ps->index_path);
      return -1;
    }
  }
  for (i = 0; i < nsel; i++) {
    bool kept = false;

    gs->dead_chunks += use[i].dead_records;
    if (opts->dry_run) {
      gs->bytes_freed += use[i].size;
      gs->bytes_copied += use[i].live;
      if (use[i].live)
        gs->packs_rewritten++;
      else
        gs->packs_deleted++;
      continue;
    }
    if (collect_pack (ps, use[i].id, mark, ext, gs, &kept) == -1) {
      ret = -1;
      break;
    }
    if (!kept)
      gs->bytes_freed += use[i].size;
    if (opts->pace && opts->pace (opts->opaque) == -1) {
      errno = ECANCELED;
      ret = -1;
      break;
    }
  }
  /* The new cache covers the sealed packs only.  Writes go on above the
   * seal: an append there may have its space reserved and its bytes not
   * yet written while a later one is indexed, so no claim "indexed up to
   * here" about those packs can be made now; the next open scans them
   * whole (with payload CRCs).  No append goes to a sealed pack, and the
   * flush of step 2 (gc.c) ended every one that began before the seal.
   */
  if (!opts->dry_run && nsel && ret == 0 && cas_packs_sync (ps->packs) == 0) {
    save_cache (ps, below - 1);
  }
  return ret;
}

static const struct chunkstore_ops packstore_ops = {
  .put = ps_put,
  .get = ps_get,
  .get_range = ps_get_range,
  .has = ps_has,
  .sizes = ps_sizes,
  .sync = ps_sync,
  .enumerate = ps_enumerate,
  .stats = ps_stats,
  .close = ps_close,
  .gc_begin = ps_gc_begin,
  .gc_sweep = ps_gc_sweep,
  .gc_end = ps_gc_end,
};

static int
index_record (const struct cas_record_info *info, void *opaque)
{
  struct packstore *ps = opaque;

  if (info->status != 0 || info->type == CAS_RECORD_TABLE)
    return 0;                   /* damaged, or not a chunk: never index it */
  if (info->type == CAS_RECORD_EXTENT) {
    if (ps->extents)
      return cas_extents_add_record (ps->extents, info->pack, info->offset);
    backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": an extent "
                   "record in a store of format version 3 or lower: "
                   "ignored", info->pack, info->offset);
    return 0;
  }
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
            struct cas_extents *ext,
            struct cas_scan_start **from, uint32_t *npacks,
            char *why, size_t len)
{
  CLEANUP_FREE struct cas_index_pack *table = NULL;
  struct cas_index_section sec;

  *from = NULL;
  if (cas_index_load_section (idx, ps->index_path, ps->uuid, &table, npacks,
                              cache_section (ext, &sec)) == -1) {
    if (ext)
      cas_extents_reset (ext);
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
  if (ext)
    cas_extents_reset (ext);
  return -1;
}

int
cas_packstore_check_cache (struct chunkstore *cs, char *why, size_t len)
{
  struct packstore *ps = PS (cs);
  struct cas_index *idx = cas_index_new ();
  struct cas_extents *ext = NULL;
  struct cas_scan_start *from;
  uint32_t npacks;
  int r;

  /* A format-4 store's cache is checked into an extent table of its own. */
  if (ps->extents)
    ext = cas_extents_new (ps->packs, NULL, true, NULL);
  if (idx == NULL || (ps->extents && ext == NULL)) {
    cas_index_free (idx);
    snprintf (why, len, "out of memory");
    return 0;
  }
  r = load_cache (ps, idx, ext, &from, &npacks, why, len);
  free (from);
  cas_index_free (idx);
  cas_extents_free (ext);
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

void
cas_packstore_set_tables (struct chunkstore *cs)
{
  cas_packs_set_tables (PS (cs)->packs);
}

void
cas_packstore_set_compression (struct chunkstore *cs,
                               const struct cas_compression *c)
{
  PS (cs)->comp = *c;
  if (PS (cs)->extents)
    cas_extents_set_compression (PS (cs)->extents, c);
}

struct cas_extents *
cas_packstore_extents (struct chunkstore *cs)
{
  if (cs == NULL || cs->ops != &packstore_ops)
    return NULL;
  return PS (cs)->extents;
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
  ps->pool = cas_codec_pool_new ();
  if (ps->index == NULL || ps->pool == NULL)
    goto err;
  ps->packs = cas_packs_open (dir, readonly, uuid,
                              flags & CAS_PACKSTORE_TABLES);
  if (ps->packs == NULL)
    goto err;
  if (flags & CAS_PACKSTORE_EXTENTS) {
    ps->extents = cas_extents_new (ps->packs, dir, readonly,
                                   &ps->gc_below);
    if (ps->extents == NULL)
      goto err;
  }

  /* The index cache covers part of each pack; scan the rest, checking
   * payload CRCs there (that is where a crash can have left torn
   * records).  Without a usable cache, rebuild from every pack: headers
   * only (their own CRC) except in the last two packs, the only ones a
   * crash can have left torn appends in.
   */
  if (!(flags & CAS_PACKSTORE_NO_CACHE) &&
      load_cache (ps, ps->index, ps->extents, &from, &npacks, why,
                  sizeof why) == 0) {
    if (ps->extents) {
      struct cas_extents_stats es;

      cas_extents_stats (ps->extents, &es);
      backend_debug ("cas: index cache: %" PRIu64 " map nodes and %" PRIu64
                     " extents in %" PRIu32 " packs",
                     cas_index_count (ps->index), es.cache_extents, npacks);
    }
    else
      backend_debug ("cas: index cache: %" PRIu64 " chunks in %" PRIu32
                     " packs", cas_index_count (ps->index), npacks);
    scan = CAS_ENUM_CHECK_CRC | CAS_SCAN_CUT_TAIL;
  }
  else {
    if (flags & CAS_PACKSTORE_NO_CACHE)
      backend_debug ("cas: indexing the packs (the index cache is not "
                     "used)");
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
                      scan | CAS_SCAN_QUIET_BAD | CAS_SCAN_EXTENT_TABLES,
                      index_record, ps) != 0) {
    backend_error ("cas: scanning packs: %m");
    free (from);
    goto err;
  }
  free (from);
  if (ps->extents && cas_extents_open_done (ps->extents) == -1)
    goto err;
  return &ps->cs;

 err:
  {
    int saved = errno ? errno : EIO;
    free_ps (ps);
    errno = saved;
    return NULL;
  }
}
