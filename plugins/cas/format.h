/* On-disk formats (FORMAT.md is the reference; keep the two in step).
 *
 * Every integer is little-endian (le.h).  Each fixed-size structure is
 * encoded to / decoded from a byte array of the size given here, never by
 * casting a packed struct, and ends with a CRC32C of the bytes before it.
 * Decoders check magic, version and CRC and return -1/errno (EIO for a
 * damaged structure, EPROTO for an unsupported version) after a message.
 *
 * Thread safety: pure functions.
 */
#ifndef NBDCAS_FORMAT_H
#define NBDCAS_FORMAT_H

#include <stdbool.h>
#include <stdint.h>

#include "chunkstore.h"
#include "hash.h"

/* The store format version (FORMAT.md), in the superblock: new stores
 * are created at CAS_FORMAT_VERSION; every version from
 * CAS_MIN_FORMAT_VERSION is read.  Version 2 adds piece tables (records
 * of type CAS_RECORD_TABLE before data records); a version-1 store is
 * written in version 1 (no piece tables) so that older programs keep
 * reading it.  Pack headers and root files did not change: their own
 * version fields stay at 1.
 */
#define CAS_FORMAT_VERSION 2
#define CAS_MIN_FORMAT_VERSION 1
/* Version 3 is version 2 with incompatible feature flags in use
 * (superblock bytes 20..23: compression).  Releases before the flags read
 * bytes 20..23 as reserved and would serve, and worse, garbage-collect
 * (copying records without the codec fields) a compressed store: a
 * version they refuse by number is what keeps them away.  A store without
 * such features stays at version 2, readable by them.
 */
#define CAS_FORMAT_VERSION_FEATURES 3
/* Version 4 (experimental, only when asked for): volume data is stored
 * as 4 KiB units in extent records (CAS_RECORD_EXTENT, extent.h) and a
 * map slot holds a block descriptor (struct cas_desc) instead of the
 * SHA-256 of a data record.  Superblock byte 50 holds log2 of the unit
 * size (CAS_UNIT_SHIFT); block sizes are 4 to 64 KiB.
 */
#define CAS_FORMAT_VERSION_UNITS 4
#define CAS_MAX_FORMAT_VERSION CAS_FORMAT_VERSION_UNITS
#define CAS_PACK_VERSION 1
#define CAS_ROOT_VERSION 1

#define CAS_MIN_BLOCKSIZE (4u * 1024)
#define CAS_MAX_BLOCKSIZE (1024u * 1024)
#define CAS_DEFAULT_BLOCKSIZE (64u * 1024)   /* see FORMAT.md */
#define CAS_VOLUME_NAME_MAX 255
/* A name given now (create, clone, snapshot, rename): its root is written
 * through a temp file .NAME.tmp (or .NAME.new), 5 bytes longer, which
 * must fit the file system's NAME_MAX (255).  Longer names made by
 * earlier releases (rename allowed them) are still found.
 */
#define CAS_NEW_NAME_MAX (CAS_VOLUME_NAME_MAX - 5)
/* Largest volume: 2^50 bytes (1 PiB); keeps block numbers and map sizes
 * well inside 64-bit arithmetic everywhere.
 */
#define CAS_MAX_VOLUME_SIZE (UINT64_C (1) << 50)

/* The one rule for block sizes: a power of two from CAS_MIN_BLOCKSIZE
 * to CAS_MAX_BLOCKSIZE.  check: 0, or -1/EINVAL after a message naming
 * what (the parameter or option) and what is allowed.
 */
bool cas_blocksize_valid (uint64_t bs);
int cas_blocksize_check (const char *what, uint64_t bs);

/* Pack numbers are 1 .. CAS_MAX_PACKS - 1; a pack rolls over at
 * CAS_DEFAULT_PACK_SIZE bytes (NBDCAS_PACK_SIZE overrides it, for tests).
 */
#define CAS_MAX_PACKS 65536
#define CAS_DEFAULT_PACK_SIZE (UINT64_C (1) << 30)

/* ---- compression (FORMAT.md, "Compression") ---- */
/* Codecs, as numbered in the superblock and in a compressed record's
 * header.  A store's compression is chosen when it is created and never
 * changes; only data records are compressed.
 */
enum cas_codec {
  CAS_CODEC_NONE = 0,
  CAS_CODEC_LZ4 = 1,
  CAS_CODEC_ZSTD = 2,
};
#define CAS_ZSTD_MIN_LEVEL 1
#define CAS_ZSTD_MAX_LEVEL 19        /* zstd's own without --ultra */
#define CAS_ZSTD_DEFAULT_LEVEL 3     /* "zstd" alone: zstd's default */
/* A new store's compression when none is asked for (the plugin's
 * compression=, nbdcas create --compression): see BENCHMARKS.md.
 */
#define CAS_DEFAULT_COMPRESSION \
  ((struct cas_compression) { .codec = CAS_CODEC_NONE, .level = 0 })
struct cas_compression {
  uint8_t codec;              /* enum cas_codec */
  uint8_t level;              /* zstd: CAS_ZSTD_MIN..MAX_LEVEL; else 0 */
};
/* The one rule for a compression setting: "off", "lz4", "zstd" (level
 * CAS_ZSTD_DEFAULT_LEVEL) or "zstd:LEVEL".  parse: 0, or -1/EINVAL after
 * a message naming what (the parameter or option) and what is allowed.
 * valid: a decoded setting is one of those.  name: "off", "lz4",
 * "zstd:3"; returns buf.
 */
int cas_compression_parse (const char *what, const char *value,
                           struct cas_compression *c);
bool cas_compression_valid (const struct cas_compression *c);
#define CAS_COMPRESSION_NAME_LEN 16
const char *cas_compression_name (const struct cas_compression *c,
                                  char buf[CAS_COMPRESSION_NAME_LEN]);
static inline bool
cas_compression_equal (const struct cas_compression *a,
                       const struct cas_compression *b)
{
  return a->codec == b->codec && a->level == b->level;
}

/* A data block is stored compressed only if that saves at least 1/8 of
 * it: the most compressed bytes worth keeping for a block of len bytes.
 */
static inline uint32_t
cas_compress_limit (uint32_t len)
{
  return len - len / 8;
}

/* ---- format version 4: units, extents, block descriptors ---- */
#define CAS_UNIT_SHIFT 12
#define CAS_UNIT_SIZE 4096u          /* 1 << CAS_UNIT_SHIFT */
#define CAS_UNITS_MAX 16             /* units per block and per extent */
#define CAS_V4_MAX_BLOCKSIZE (CAS_UNITS_MAX * CAS_UNIT_SIZE)
/* The block sizes of a version-4 store: 4 KiB to 64 KiB (a block is at
 * most CAS_UNITS_MAX units).  check: 0, or -1/EINVAL after a message
 * naming what.
 */
bool cas_blocksize_valid_v4 (uint64_t bs);
int cas_blocksize_check_v4 (const char *what, uint64_t bs);

/* Block descriptor: the 32-byte map slot value of a version-4 store
 * (FORMAT.md, "Format version 4").  All zero: unmapped (nruns 0).  Else
 * byte 0 is the run count (1..CAS_DESC_MAX_RUNS) and run k sits at bytes
 * 1 + 6k .. 6 + 6k: extent id (40 bits LE; 0 = a run of zero units),
 * then first slot << 4 | (count - 1).  The runs cover the block's units
 * in order; the bytes after the last run are zero.
 */
#define CAS_DESC_MAX_RUNS 5
#define CAS_EXTENT_ID_MAX ((UINT64_C (1) << 40) - 1)
struct cas_run {
  uint64_t eid;               /* extent id; 0: count zero units */
  uint8_t slot;               /* first slot (0 for a zero run) */
  uint8_t count;              /* units, 1..CAS_UNITS_MAX */
};
struct cas_desc {
  uint8_t nruns;              /* 0: unmapped (reads zeros) */
  struct cas_run run[CAS_DESC_MAX_RUNS];
};
/* d must be valid (the caller built it: asserted).  A descriptor of one
 * zero run, or of none, is encoded as all zero.
 */
void cas_desc_encode (const struct cas_desc *d, struct cas_hash *out);
/* Quiet: -1/EIO without a message if in is not a valid descriptor of a
 * block of units units (runs adding up to exactly that, slots inside an
 * extent, trailing bytes zero).  All zero gives nruns 0.
 */
int cas_desc_decode (const struct cas_hash *in, uint32_t units,
                     struct cas_desc *d);

/* Extent record (type CAS_RECORD_EXTENT): what its header's 32-byte hash
 * field holds: bytes 0..7 extent id (1..CAS_EXTENT_ID_MAX), byte 8 slot
 * count (1..CAS_UNITS_MAX), byte 9 codec of the compressed slots, bytes
 * 10..11 present mask (bit i: slot i stored), bytes 12..31 zero.
 */
struct cas_extent_fields {
  uint64_t eid;
  uint8_t nslots;
  uint8_t codec;              /* enum cas_codec; NONE if no slot is
                                 compressed */
  uint16_t present;
};
void cas_extent_fields_encode (const struct cas_extent_fields *f,
                               struct cas_hash *out);
/* Quiet: -1/EIO if out of range. */
int cas_extent_fields_decode (const struct cas_hash *in,
                              struct cas_extent_fields *f);

/* Slot table entry, 40 bytes: SHA-256 of the raw unit (32), stored
 * length u16 (1..CAS_UNIT_SIZE; 0 if not present; CAS_UNIT_SIZE: raw),
 * flags u8 (CAS_SLOT_F_COMPRESSED), reserved u8 0, CRC32C of the stored
 * bytes u32.  A compressed slot's stored length is at most
 * cas_compress_limit (CAS_UNIT_SIZE).
 */
#define CAS_SLOT_ENTRY_SIZE 40
#define CAS_SLOT_F_COMPRESSED 0x01
struct cas_slot_entry {
  struct cas_hash hash;
  uint16_t stored_len;
  uint8_t flags;
  uint32_t crc;
};
void cas_slot_entry_encode (const struct cas_slot_entry *e,
                            uint8_t out[CAS_SLOT_ENTRY_SIZE]);
/* Quiet: -1/EIO if inconsistent with present (the slot's bit of the
 * record's present mask) and codec (the record's).
 */
int cas_slot_entry_decode (const uint8_t in[CAS_SLOT_ENTRY_SIZE],
                           bool present, uint8_t codec,
                           struct cas_slot_entry *e);

/* ---- superblock: DIR/superblock ---- */
#define CAS_SUPER_MAGIC "NBDCASSB"
#define CAS_SUPER_SIZE 64
/* Incompatible features (superblock bytes 20..23), read before the CRC
 * like the version: a program that finds a bit it does not know refuses
 * the store, naming the bits, instead of misreading it.  Bit 0: data
 * records may be compressed (the codec is in bytes 48..49).
 */
#define CAS_INCOMPAT_COMPRESSION 0x1u
#define CAS_INCOMPAT_KNOWN CAS_INCOMPAT_COMPRESSION
struct cas_super {
  uint32_t version;           /* CAS_FORMAT_VERSION */
  uint32_t blocksize;         /* power of two, 4 KiB .. 1 MiB */
  uint32_t fanout;            /* hashes per map node: CAS_MAP_FANOUT */
  uint32_t incompat;          /* CAS_INCOMPAT_*: set by the encoder from
                                 compression, checked by the decoder */
  uint64_t created;           /* seconds since the epoch */
  uint8_t uuid[16];           /* random: tells stores apart */
  struct cas_compression compression;  /* of new data records */
  /* Version 4: log2 of the unit size (byte 50), CAS_UNIT_SHIFT; the
   * encoder writes it for version 4 whatever this holds, the decoder
   * sets it (0 before version 4).
   */
  uint8_t unit_shift;
};
void cas_super_encode (const struct cas_super *s, uint8_t out[CAS_SUPER_SIZE]);
/* version is decoded even when it is wrong, so callers can name it. */
int cas_super_decode (const uint8_t in[CAS_SUPER_SIZE], struct cas_super *s);

/* ---- extent id reservation: DIR/extent-ids (format 4) ----
 * The first extent group (id / 64) not yet reserved: every id handed
 * out is below it, and it is written durably before an id beyond it is
 * handed out, so an open never hands out again an id whose only record
 * was lost (FORMAT.md, "Format version 4").
 * 0 magic 8 version 12 reserved 16 next_group 24 reserved 28 CRC32C.
 */
#define CAS_EXTENT_IDS_MAGIC "NBDCASXI"
#define CAS_EXTENT_IDS_SIZE 32
#define CAS_EXTENT_IDS_VERSION 1
struct cas_extent_ids {
  uint64_t next_group;        /* first group not reserved */
};
void cas_extent_ids_encode (const struct cas_extent_ids *x,
                            uint8_t out[CAS_EXTENT_IDS_SIZE]);
/* -1 with EIO (bad magic or CRC) or EPROTO (another version). */
int cas_extent_ids_decode (const uint8_t in[CAS_EXTENT_IDS_SIZE],
                           struct cas_extent_ids *x);

/* ---- pack file header: DIR/packs/pack-NNNNNNNN.cas ---- */
#define CAS_PACK_MAGIC "NBDCASPK"
#define CAS_PACK_HEADER_SIZE 64
struct cas_pack_header {
  uint32_t version;
  uint32_t pack;              /* number, equal to the one in the name */
  uint8_t uuid[16];           /* the store's */
};
void cas_pack_header_encode (const struct cas_pack_header *h,
                             uint8_t out[CAS_PACK_HEADER_SIZE]);
int cas_pack_header_decode (const uint8_t in[CAS_PACK_HEADER_SIZE],
                            struct cas_pack_header *h);

/* ---- record header, followed by the payload, padded to 8 bytes ---- */
#define CAS_RECORD_MAGIC 0x43455243u  /* "CREC" as little-endian bytes */
#define CAS_RECORD_HEADER_SIZE 64
#define CAS_RECORD_ALIGN 8
#define CAS_MAX_PAYLOAD (1024u * 1024)
/* Compressed data records (format version 2, a store with
 * CAS_INCOMPAT_COMPRESSION): flag CAS_RECORD_F_COMPRESSED; length and
 * payload_crc are those of the stored (compressed) bytes, the hash is
 * the SHA-256 of the raw block, raw_length its length (header bytes
 * 48..51) and codec its codec (byte 52).  Such a record never has a piece
 * table: a partial read reads all the stored bytes (their CRC) and
 * decompresses the block up to the end of its range.
 */
#define CAS_RECORD_F_COMPRESSED 0x02
/* Format version 2: a data record longer than one piece is preceded by a
 * piece table, a record of its own (type CAS_RECORD_TABLE, not a chunk,
 * never indexed) whose payload is the CRC32C of each CAS_PIECE_SIZE piece
 * of the data payload and whose hash field names the data chunk; the
 * data record's header then has CAS_RECORD_F_TABLE in its flags.  Both
 * are appended together, so the table ends where the data record begins:
 * a partial read checks only the pieces it reads.
 */
#define CAS_RECORD_TABLE 3
/* Format version 4: an extent record (extent.h, FORMAT.md "Format version
 * 4").  Its flags are 0, its hash field holds struct cas_extent_fields,
 * its payload is the slot table (CAS_SLOT_ENTRY_SIZE per slot) and then
 * the stored bytes of the present slots; its payload_crc covers the slot
 * table only (each unit has its own CRC in the table).
 */
#define CAS_RECORD_EXTENT 4
#define CAS_RECORD_F_TABLE 0x01
#define CAS_PIECE_SIZE 4096u
struct cas_record_header {
  uint8_t type;               /* enum cas_chunk_type, CAS_RECORD_TABLE
                                 or CAS_RECORD_EXTENT */
  uint8_t flags;              /* CAS_RECORD_F_* */
  uint32_t length;            /* payload bytes */
  uint32_t payload_crc;       /* CRC32C of the payload (an extent: of
                                 its slot table) */
  struct cas_hash hash;       /* SHA-256 of the payload (compressed: of
                                 the raw block) */
  uint32_t raw_length;        /* compressed: the raw block's length; the
                                 decoder sets it to length otherwise */
  uint8_t codec;              /* compressed: enum cas_codec; else 0 */
};
void cas_record_header_encode (const struct cas_record_header *h,
                               uint8_t out[CAS_RECORD_HEADER_SIZE]);
/* Quiet: returns -1 without a message (scans probe bad headers often);
 * errno EIO.  A compressed record's header must name a known codec, a
 * data record, no piece table, and a raw length above the stored one.
 * An extent record's must have flags 0, valid extent fields and a length
 * its slot table and present slots can have.
 */
int cas_record_header_decode (const uint8_t in[CAS_RECORD_HEADER_SIZE],
                              struct cas_record_header *h);
/* Bytes of a record's payload covered by its payload_crc. */
static inline uint32_t
cas_record_crc_length (const struct cas_record_header *h)
{
  return h->type == CAS_RECORD_EXTENT ?
    (uint32_t) h->hash.b[8] * CAS_SLOT_ENTRY_SIZE : h->length;
}
static inline uint64_t
cas_record_size (uint32_t length)
{
  return CAS_RECORD_HEADER_SIZE +
    (((uint64_t) length + CAS_RECORD_ALIGN - 1) & ~(uint64_t) (CAS_RECORD_ALIGN - 1));
}
/* Pieces of a payload of length bytes, and whether a data record of that
 * length gets a piece table (in a version-2 store): only if it has more
 * than one piece.
 */
static inline uint32_t
cas_pieces (uint32_t length)
{
  return (length + CAS_PIECE_SIZE - 1) / CAS_PIECE_SIZE;
}
static inline bool
cas_wants_table (uint32_t length)
{
  return length > CAS_PIECE_SIZE;
}
/* Bytes of the piece table record in front of a data record of length. */
static inline uint64_t
cas_table_record_size (uint32_t length)
{
  return cas_record_size (4 * cas_pieces (length));
}

/* ---- roots: DIR/volumes/NAME and DIR/snapshots/VOLUME/SNAP ---- */
#define CAS_ROOT_MAGIC "NBDCASVL"       /* a volume's root */
#define CAS_SNAPSHOT_MAGIC "NBDCASSN"   /* a snapshot's root */
#define CAS_ROOT_SIZE 128
#define CAS_MAP_FANOUT 1024   /* child hashes per map node (32 KiB node) */
struct cas_root {
  bool snapshot;              /* which magic: a snapshot is read-only */
  uint32_t version;
  uint32_t blocksize;
  uint64_t size;              /* logical bytes */
  uint64_t generation;        /* +1 per published root; a snapshot keeps
                                 its volume's at the time it was taken */
  uint32_t fanout;            /* CAS_MAP_FANOUT */
  uint32_t depth;             /* levels of map nodes (>= 1), see FORMAT.md */
  struct cas_hash root;       /* hash of the top map node; zero: empty */
  uint64_t mtime;             /* seconds since the epoch: a volume's last
                                 publication, a snapshot's creation */
};
void cas_root_encode (const struct cas_root *r, uint8_t out[CAS_ROOT_SIZE]);
int cas_root_decode (const uint8_t in[CAS_ROOT_SIZE], struct cas_root *r);

/* Levels of map nodes needed for nblocks blocks: 1 (one leaf node is the
 * root) for up to fanout blocks, +1 per factor of fanout.
 */
uint32_t cas_map_depth (uint64_t nblocks, uint32_t fanout);

#endif /* NBDCAS_FORMAT_H */
