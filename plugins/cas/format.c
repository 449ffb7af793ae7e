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
 * 24 created 32 uuid[16] 48 codec 49 level 50 reserved[10] 60 crc
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
       h->type != CAS_RECORD_TABLE) ||
      h->length == 0 || h->length > CAS_MAX_PAYLOAD)
    goto bad;
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
