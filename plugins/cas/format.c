/* Encoders/decoders for the on-disk structures; see format.h, FORMAT.md. */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "crc32c.h"
#include "format.h"
#include "ispowerof2.h"
#include "le.h"

/* Common tail: CRC32C of bytes [0, size-4) stored in the last 4 bytes. */
static void
seal (uint8_t *buf, size_t size)
{
  put_le32 (buf + size - 4, crc32c (0, buf, size - 4));
}

static bool
sealed (const uint8_t *buf, size_t size)
{
  return get_le32 (buf + size - 4) == crc32c (0, buf, size - 4);
}

bool
cas_blocksize_valid (uint64_t bs)
{
  return bs >= CAS_MIN_BLOCKSIZE && bs <= CAS_MAX_BLOCKSIZE &&
    is_power_of_2 (bs);
}

int
cas_blocksize_check (const char *what, uint64_t bs)
{
  if (cas_blocksize_valid (bs))
    return 0;
  backend_error ("%s: %" PRIu64 " is not a valid block size: it must be a "
                 "power of two from 4K (4096) to 1M (1048576)", what, bs);
  errno = EINVAL;
  return -1;
}

bool
cas_blocksize_valid_v4 (uint64_t bs)
{
  return bs >= CAS_MIN_BLOCKSIZE && bs <= CAS_V4_MAX_BLOCKSIZE &&
    is_power_of_2 (bs);
}

int
cas_blocksize_check_v4 (const char *what, uint64_t bs)
{
  if (cas_blocksize_valid_v4 (bs))
    return 0;
  backend_error ("%s: %" PRIu64 " is not a valid block size for a format-4 "
                 "store: it must be a power of two from 4K (4096) to 64K "
                 "(65536)", what, bs);
  errno = EINVAL;
  return -1;
}

/* descriptor: 0 nruns, run k at 1 + 6k: eid[5] LE, slot << 4 | (count-1) */
void
cas_desc_encode (const struct cas_desc *d, struct cas_hash *out)
{
  unsigned k;
  uint8_t *p;

  memset (out->b, 0, CAS_HASH_SIZE);
  assert (d->nruns <= CAS_DESC_MAX_RUNS);
  if (d->nruns == 0 || (d->nruns == 1 && d->run[0].eid == 0))
    return;
  out->b[0] = d->nruns;
  for (k = 0, p = out->b + 1; k < d->nruns; k++, p += 6) {
    const struct cas_run *r = &d->run[k];

    assert (r->eid <= CAS_EXTENT_ID_MAX);
    assert (r->count >= 1 && r->count <= CAS_UNITS_MAX);
    assert (r->eid == 0 ? r->slot == 0 : r->slot + r->count <= CAS_UNITS_MAX);
    p[0] = r->eid;
    p[1] = r->eid >> 8;
    p[2] = r->eid >> 16;
    p[3] = r->eid >> 24;
    p[4] = r->eid >> 32;
    p[5] = (uint8_t) (r->slot << 4 | (r->count - 1));
  }
}

int
cas_desc_decode (const struct cas_hash *in, uint32_t units,
                 struct cas_desc *d)
{
  const uint8_t *p;
  uint32_t covered = 0;
  unsigned k, i;

  memset (d, 0, sizeof *d);
  if (cas_hash_is_zero (in))
    return 0;
  d->nruns = in->b[0];
  if (d->nruns < 1 || d->nruns > CAS_DESC_MAX_RUNS)
    goto bad;
  for (k = 0, p = in->b + 1; k < d->nruns; k++, p += 6) {
    struct cas_run *r = &d->run[k];

    r->eid = (uint64_t) p[0] | (uint64_t) p[1] << 8 | (uint64_t) p[2] << 16 |
      (uint64_t) p[3] << 24 | (uint64_t) p[4] << 32;
    r->slot = p[5] >> 4;
    r->count = (p[5] & 0xf) + 1;
    if (r->eid == 0 ? r->slot != 0 : r->slot + r->count > CAS_UNITS_MAX)
      goto bad;
    covered += r->count;
  }
  if (covered != units)
    goto bad;
  for (i = 1 + 6 * d->nruns; i < CAS_HASH_SIZE; i++)
    if (in->b[i] != 0)
      goto bad;
  return 0;
 bad:
  memset (d, 0, sizeof *d);
  errno = EIO;
  return -1;
}

/* extent fields (a record header's hash field): 0 eid 8 nslots 9 codec
 * 10 present 12 zero[20]
 */
void
cas_extent_fields_encode (const struct cas_extent_fields *f,
                          struct cas_hash *out)
{
  assert (f->eid >= 1 && f->eid <= CAS_EXTENT_ID_MAX);
  assert (f->nslots >= 1 && f->nslots <= CAS_UNITS_MAX);
  memset (out->b, 0, CAS_HASH_SIZE);
  put_le64 (out->b, f->eid);
  out->b[8] = f->nslots;
  out->b[9] = f->codec;
  put_le16 (out->b + 10, f->present);
}

int
cas_extent_fields_decode (const struct cas_hash *in,
                          struct cas_extent_fields *f)
{
  unsigned i;

  f->eid = get_le64 (in->b);
  f->nslots = in->b[8];
  f->codec = in->b[9];
  f->present = get_le16 (in->b + 10);
  if (f->eid < 1 || f->eid > CAS_EXTENT_ID_MAX ||
      f->nslots < 1 || f->nslots > CAS_UNITS_MAX ||
      (f->codec != CAS_CODEC_NONE && f->codec != CAS_CODEC_LZ4 &&
       f->codec != CAS_CODEC_ZSTD) ||
      (f->present & ~(uint16_t) ((1u << f->nslots) - 1)) != 0)
    goto bad;
  for (i = 12; i < CAS_HASH_SIZE; i++)
    if (in->b[i] != 0)
      goto bad;
  return 0;
 bad:
  errno = EIO;
  return -1;
}

/* slot entry: 0 hash[32] 32 stored_len u16 34 flags 35 reserved 36 crc */
void
cas_slot_entry_encode (const struct cas_slot_entry *e,
                       uint8_t out[CAS_SLOT_ENTRY_SIZE])
{
  memcpy (out, e->hash.b, CAS_HASH_SIZE);
  put_le16 (out + 32, e->stored_len);
  out[34] = e->flags;
  out[35] = 0;
  put_le32 (out + 36, e->crc);
}

int
cas_slot_entry_decode (const uint8_t in[CAS_SLOT_ENTRY_SIZE], bool present,
                       uint8_t codec, struct cas_slot_entry *e)
{
  memcpy (e->hash.b, in, CAS_HASH_SIZE);
  e->stored_len = get_le16 (in + 32);
  e->flags = in[34];
  e->crc = get_le32 (in + 36);
  if (in[35] != 0 || (e->flags & ~CAS_SLOT_F_COMPRESSED) != 0)
    goto bad;
  if (!present) {
    /* gc may drop a slot's bytes; its entry keeps the hash. */
    if (e->stored_len != 0 || e->flags != 0)
      goto bad;
    return 0;
  }
  if (e->stored_len < 1 || e->stored_len > CAS_UNIT_SIZE)
    goto bad;
  if (e->flags & CAS_SLOT_F_COMPRESSED) {
    if (codec == CAS_CODEC_NONE ||
        e->stored_len > cas_compress_limit (CAS_UNIT_SIZE))
      goto bad;
  }
  else if (e->stored_len != CAS_UNIT_SIZE)
    goto bad;
  return 0;
 bad:
  errno = EIO;
  return -1;
}

int
cas_compression_parse (const char *what, const char *value,
                       struct cas_compression *c)
{
  memset (c, 0, sizeof *c);
  if (strcmp (value, "off") == 0 || strcmp (value, "none") == 0)
    return 0;
  if (strcmp (value, "lz4") == 0) {
    c->codec = CAS_CODEC_LZ4;
    return 0;
  }
  if (strcmp (value, "zstd") == 0) {
    c->codec = CAS_CODEC_ZSTD;
    c->level = CAS_ZSTD_DEFAULT_LEVEL;
    return 0;
  }
  if (strncmp (value, "zstd:", 5) == 0) {
    const char *p = value + 5;
    unsigned level = 0;

    /* Digits only: no sign, no spaces, no "3abc". */
    while (*p >= '0' && *p <= '9' && level <= CAS_ZSTD_MAX_LEVEL)
      level = level * 10 + (*p++ - '0');
    if (p != value + 5 && *p == '\0' && level >= CAS_ZSTD_MIN_LEVEL &&
        level <= CAS_ZSTD_MAX_LEVEL) {
      c->codec = CAS_CODEC_ZSTD;
      c->level = level;
      return 0;
    }
    backend_error ("%s: '%s': the zstd level must be a number from %d to %d",
                   what, value, CAS_ZSTD_MIN_LEVEL, CAS_ZSTD_MAX_LEVEL);
    errno = EINVAL;
    return -1;
  }
  backend_error ("%s: '%s' is not a compression: use off, lz4, zstd or "
                 "zstd:LEVEL (LEVEL %d to %d; zstd alone is zstd:%d)", what,
                 value, CAS_ZSTD_MIN_LEVEL, CAS_ZSTD_MAX_LEVEL,
                 CAS_ZSTD_DEFAULT_LEVEL);
  errno = EINVAL;
  return -1;
}

bool
cas_compression_valid (const struct cas_compression *c)
{
  switch (c->codec) {
  case CAS_CODEC_NONE:
  case CAS_CODEC_LZ4:
    return c->level == 0;
  case CAS_CODEC_ZSTD:
    return c->level >= CAS_ZSTD_MIN_LEVEL && c->level <= CAS_ZSTD_MAX_LEVEL;
  }
  return false;
}

const char *
cas_compression_name (const struct cas_compression *c,
                      char buf[CAS_COMPRESSION_NAME_LEN])
{
  switch (c->codec) {
  case CAS_CODEC_NONE:
    snprintf (buf, CAS_COMPRESSION_NAME_LEN, "off");
    break;
  case CAS_CODEC_LZ4:
    snprintf (buf, CAS_COMPRESSION_NAME_LEN, "lz4");
    break;
  case CAS_CODEC_ZSTD:
    snprintf (buf, CAS_COMPRESSION_NAME_LEN, "zstd:%u", c->level);
    break;
  default:
    snprintf (buf, CAS_COMPRESSION_NAME_LEN, "codec-%u", c->codec);
    break;
  }
  return buf;
}

/* superblock: 0 magic[8] 8 version 12 blocksize 16 fanout 20 incompat
 * 24 created 32 uuid[16] 48 codec 49 level 50 unit shift (version 4;
 * else 0) 51 reserved[9] 60 crc
 */
void
cas_super_encode (const struct cas_super *s, uint8_t out[CAS_SUPER_SIZE])
{
  uint32_t incompat = s->incompat & ~CAS_INCOMPAT_COMPRESSION;

  /* The flag follows the codec: a store without compression stays
   * readable by every release that knows its version.
   */
  if (s->compression.codec != CAS_CODEC_NONE)
    incompat |= CAS_INCOMPAT_COMPRESSION;
  assert (incompat == 0 || s->version >= CAS_FORMAT_VERSION_FEATURES);
  memset (out, 0, CAS_SUPER_SIZE);
  memcpy (out, CAS_SUPER_MAGIC, 8);
  put_le32 (out + 8, s->version);
  put_le32 (out + 12, s->blocksize);
  put_le32 (out + 16, s->fanout);
  put_le32 (out + 20, incompat);
  put_le64 (out + 24, s->created);
  memcpy (out + 32, s->uuid, 16);
  out[48] = s->compression.codec;
  out[49] = s->compression.level;
  if (s->version >= CAS_FORMAT_VERSION_UNITS)
    out[50] = CAS_UNIT_SHIFT;
  seal (out, CAS_SUPER_SIZE);
}

int
cas_super_decode (const uint8_t in[CAS_SUPER_SIZE], struct cas_super *s)
{
  if (memcmp (in, CAS_SUPER_MAGIC, 8) != 0) {
    backend_error ("cas: superblock: bad magic (not a cas store)");
    errno = EIO;
    return -1;
  }
  /* The version sits at a fixed place in every version: read it before
   * the CRC, so a newer layout is reported as a version problem.
   */
  s->version = get_le32 (in + 8);
  if (s->version < CAS_MIN_FORMAT_VERSION ||
      s->version > CAS_MAX_FORMAT_VERSION) {
    backend_error ("cas: store format version %u is not supported "
                   "(this program reads versions %u to %u)",
                   s->version, CAS_MIN_FORMAT_VERSION, CAS_MAX_FORMAT_VERSION);
    errno = EPROTO;
    return -1;
  }
  /* So are the incompatible features: a store that needs one this
   * program does not know is refused by name, not called damaged.
   */
  s->incompat = get_le32 (in + 20);
  if (s->incompat & ~CAS_INCOMPAT_KNOWN) {
    backend_error ("cas: the store uses features this program does not "
                   "support (incompatible feature flags 0x%x; it knows "
                   "0x%x: compression): it was made by a newer release",
                   s->incompat & ~CAS_INCOMPAT_KNOWN, CAS_INCOMPAT_KNOWN);
    errno = EPROTO;
    return -1;
  }
  if (!sealed (in, CAS_SUPER_SIZE)) {
    backend_error ("cas: superblock: checksum mismatch (damaged)");
    errno = EIO;
    return -1;
  }
  s->blocksize = get_le32 (in + 12);
  s->fanout = get_le32 (in + 16);
  s->created = get_le64 (in + 24);
  memcpy (s->uuid, in + 32, 16);
  s->compression.codec = in[48];
  s->compression.level = in[49];
  s->unit_shift = in[50];
  if (!cas_blocksize_valid (s->blocksize) || s->fanout != CAS_MAP_FANOUT) {
    backend_error ("cas: superblock: bad block size %u or fanout %u",
                   s->blocksize, s->fanout);
    errno = EIO;
    return -1;
  }
  /* The CRC checked out, so these disagreeing is not a torn write. */
  if (s->incompat != 0 && s->version < CAS_FORMAT_VERSION_FEATURES) {
    backend_error ("cas: superblock: feature flags 0x%x in a version-%u "
                   "store (damaged)", s->incompat, s->version);
    errno = EIO;
    return -1;
  }
  if (s->version >= CAS_FORMAT_VERSION_UNITS ?
      s->unit_shift != CAS_UNIT_SHIFT ||
      !cas_blocksize_valid_v4 (s->blocksize) : s->unit_shift != 0) {
    backend_error ("cas: superblock: version %u with unit size byte %u "
                   "and block size %u (damaged)", s->version,
                   s->unit_shift, s->blocksize);
    errno = EIO;
    return -1;
  }
  if (!cas_compression_valid (&s->compression) ||
      ((s->incompat & CAS_INCOMPAT_COMPRESSION) != 0) !=
      (s->compression.codec != CAS_CODEC_NONE)) {
    backend_error ("cas: superblock: bad compression (codec %u, level %u, "
                   "feature flags 0x%x)", s->compression.codec,
                   s->compression.level, s->incompat);
    errno = EIO;
    return -1;
  }
  return 0;
}

/* pack header: 0 magic[8] 8 version 12 pack 16 uuid[16] 32 reserved[28]
 * 60 crc
 */
void
cas_pack_header_encode (const struct cas_pack_header *h,
                        uint8_t out[CAS_PACK_HEADER_SIZE])
{
  memset (out, 0, CAS_PACK_HEADER_SIZE);
  memcpy (out, CAS_PACK_MAGIC, 8);
  put_le32 (out + 8, h->version);
  put_le32 (out + 12, h->pack);
  memcpy (out + 16, h->uuid, 16);
  seal (out, CAS_PACK_HEADER_SIZE);
}

int
cas_pack_header_decode (const uint8_t in[CAS_PACK_HEADER_SIZE],
                        struct cas_pack_header *h)
{
  if (memcmp (in, CAS_PACK_MAGIC, 8) != 0 || !sealed (in, CAS_PACK_HEADER_SIZE)) {
    errno = EIO;
    return -1;
  }
  h->version = get_le32 (in + 8);
  h->pack = get_le32 (in + 12);
  memcpy (h->uuid, in + 16, 16);
  if (h->version != CAS_PACK_VERSION) {
    errno = EPROTO;
    return -1;
  }
  return 0;
}

void
cas_extent_ids_encode (const struct cas_extent_ids *x,
                       uint8_t out[CAS_EXTENT_IDS_SIZE])
{
  memset (out, 0, CAS_EXTENT_IDS_SIZE);
  memcpy (out, CAS_EXTENT_IDS_MAGIC, 8);
  put_le32 (out + 8, CAS_EXTENT_IDS_VERSION);
  put_le64 (out + 16, x->next_group);
  seal (out, CAS_EXTENT_IDS_SIZE);
}

int
cas_extent_ids_decode (const uint8_t in[CAS_EXTENT_IDS_SIZE],
                       struct cas_extent_ids *x)
{
  static_assert (CAS_EXTENT_IDS_SIZE == 28 + 4, "extent-ids layout");

  if (memcmp (in, CAS_EXTENT_IDS_MAGIC, 8) != 0 ||
      !sealed (in, CAS_EXTENT_IDS_SIZE)) {
    errno = EIO;
    return -1;
  }
  if (get_le32 (in + 8) != CAS_EXTENT_IDS_VERSION) {
    errno = EPROTO;
    return -1;
  }
  x->next_group = get_le64 (in + 16);
  return 0;
}

/* record header: 0 magic 4 type 5 flags 6 reserved[2] 8 length
 * 12 payload_crc 16 hash[32] 48 reserved[12] 60 header crc
 */
void
cas_record_header_encode (const struct cas_record_header *h,
                          uint8_t out[CAS_RECORD_HEADER_SIZE])
{
  memset (out, 0, CAS_RECORD_HEADER_SIZE);
  put_le32 (out, CAS_RECORD_MAGIC);
  out[4] = h->type;
  out[5] = h->flags;
  put_le32 (out + 8, h->length);
  put_le32 (out + 12, h->payload_crc);
  memcpy (out + 16, h->hash.b, CAS_HASH_SIZE);
  if (h->flags & CAS_RECORD_F_COMPRESSED) {
    put_le32 (out + 48, h->raw_length);
    out[52] = h->codec;
  }
  seal (out, CAS_RECORD_HEADER_SIZE);
}

int
cas_record_header_decode (const uint8_t in[CAS_RECORD_HEADER_SIZE],
                          struct cas_record_header *h)
{
  if (get_le32 (in) != CAS_RECORD_MAGIC || !sealed (in, CAS_RECORD_HEADER_SIZE))
    goto bad;
  h->type = in[4];
  h->flags = in[5];
  h->length = get_le32 (in + 8);
  h->payload_crc = get_le32 (in + 12);
  memcpy (h->hash.b, in + 16, CAS_HASH_SIZE);
  if ((h->type != CAS_CHUNK_DATA && h->type != CAS_CHUNK_MAPNODE &&
       h->type != CAS_RECORD_TABLE && h->type != CAS_RECORD_EXTENT) ||
      h->length == 0 || h->length > CAS_MAX_PAYLOAD)
    goto bad;
  if (h->type == CAS_RECORD_EXTENT) {
    struct cas_extent_fields f;
    uint32_t table, stored;

    if (h->flags != 0 || cas_extent_fields_decode (&h->hash, &f) == -1)
      goto bad;
    /* Each present slot stores 1..CAS_UNIT_SIZE bytes. */
    table = f.nslots * CAS_SLOT_ENTRY_SIZE;
    stored = __builtin_popcount (f.present);
    if (h->length < table + stored ||
        h->length > table + stored * CAS_UNIT_SIZE)
      goto bad;
    h->raw_length = h->length;
    h->codec = CAS_CODEC_NONE;
    return 0;
  }
  if (h->flags & CAS_RECORD_F_COMPRESSED) {
    h->raw_length = get_le32 (in + 48);
    h->codec = in[52];
    if (h->type != CAS_CHUNK_DATA || (h->flags & CAS_RECORD_F_TABLE) ||
        (h->codec != CAS_CODEC_LZ4 && h->codec != CAS_CODEC_ZSTD) ||
        h->raw_length <= h->length || h->raw_length > CAS_MAX_PAYLOAD)
      goto bad;
  }
  else {
    h->raw_length = h->length;
    h->codec = CAS_CODEC_NONE;
  }
  return 0;
 bad:
  errno = EIO;
  return -1;
}

/* volume or snapshot root: 0 magic[8] 8 version 12 blocksize 16 size
 * 24 generation 32 fanout 36 depth 40 root[32] 72 mtime 80 reserved[44]
 * 124 crc
 */
void
cas_root_encode (const struct cas_root *r, uint8_t out[CAS_ROOT_SIZE])
{
  memset (out, 0, CAS_ROOT_SIZE);
  memcpy (out, r->snapshot ? CAS_SNAPSHOT_MAGIC : CAS_ROOT_MAGIC, 8);
  put_le32 (out + 8, r->version);
  put_le32 (out + 12, r->blocksize);
  put_le64 (out + 16, r->size);
  put_le64 (out + 24, r->generation);
  put_le32 (out + 32, r->fanout);
  put_le32 (out + 36, r->depth);
  memcpy (out + 40, r->root.b, CAS_HASH_SIZE);
  put_le64 (out + 72, r->mtime);
  seal (out, CAS_ROOT_SIZE);
}

int
cas_root_decode (const uint8_t in[CAS_ROOT_SIZE], struct cas_root *r)
{
  if (memcmp (in, CAS_ROOT_MAGIC, 8) == 0)
    r->snapshot = false;
  else if (memcmp (in, CAS_SNAPSHOT_MAGIC, 8) == 0)
    r->snapshot = true;
  else {
    backend_error ("cas: volume root: bad magic");
    errno = EIO;
    return -1;
  }
  r->version = get_le32 (in + 8);
  if (r->version != CAS_ROOT_VERSION) {
    backend_error ("cas: volume root format version %u is not supported "
                   "(this program reads version %u)",
                   r->version, CAS_ROOT_VERSION);
    errno = EPROTO;
    return -1;
  }
  if (!sealed (in, CAS_ROOT_SIZE)) {
    backend_error ("cas: volume root: checksum mismatch (damaged)");
    errno = EIO;
    return -1;
  }
  r->blocksize = get_le32 (in + 12);
  r->size = get_le64 (in + 16);
  r->generation = get_le64 (in + 24);
  r->fanout = get_le32 (in + 32);
  r->depth = get_le32 (in + 36);
  memcpy (r->root.b, in + 40, CAS_HASH_SIZE);
  r->mtime = get_le64 (in + 72);
  return 0;
}

uint32_t
cas_map_depth (uint64_t nblocks, uint32_t fanout)
{
  uint32_t depth = 1;
  uint64_t span = fanout;       /* blocks covered by one node at this depth */

  while (span < nblocks) {
    span *= fanout;
    depth++;
  }
  return depth;
}
