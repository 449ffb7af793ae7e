/* test-format-v4: the format-4 encoders and decoders of format.c (block
 * descriptor, extent record fields, slot table entries, superblock
 * version 4, record headers of type CAS_RECORD_EXTENT): round trips, and
 * every rule of FORMAT.md "Format version 4" refused when broken.
 *
 * Exit 0: all good.  Exit 1: a check failed (each is printed).
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "ccheck.h"
#include "crc32c.h"
#include "format.h"
#include "le.h"

void
backend_error (const char *fmt, ...)
{
  (void) fmt;                   /* decoders' messages are expected here */
}


static void
desc_roundtrip (const struct cas_desc *d, uint32_t units)
{
  struct cas_hash h;
  struct cas_desc back;
  unsigned k;

  cas_desc_encode (d, &h);
  CHECK (cas_desc_decode (&h, units, &back) == 0);
  CHECK (back.nruns == d->nruns);
  for (k = 0; k < d->nruns && k < back.nruns; k++) {
    CHECK (back.run[k].eid == d->run[k].eid);
    CHECK (back.run[k].slot == d->run[k].slot);
    CHECK (back.run[k].count == d->run[k].count);
  }
  /* Every other block size is refused: the counts add up to units. */
  CHECK (cas_desc_decode (&h, units + 1, &back) == -1 && errno == EIO);
  CHECK (cas_desc_decode (&h, units - 1, &back) == -1);
}

static void
test_desc (void)
{
  struct cas_desc d = { 0 }, back;
  struct cas_hash h;

  /* Unmapped. */
  cas_desc_encode (&d, &h);
  CHECK (cas_hash_is_zero (&h));
  CHECK (cas_desc_decode (&h, 16, &back) == 0 && back.nruns == 0);

  /* One zero run is written as all zero. */
  d.nruns = 1;
  d.run[0] = (struct cas_run) { .eid = 0, .slot = 0, .count = 16 };
  cas_desc_encode (&d, &h);
  CHECK (cas_hash_is_zero (&h));

  /* One run of a whole extent; the layout byte by byte. */
  d.nruns = 1;
  d.run[0] = (struct cas_run) { .eid = 0x0102030405, .slot = 0, .count = 16 };
  cas_desc_encode (&d, &h);
  CHECK (h.b[0] == 1);
  CHECK (h.b[1] == 0x05 && h.b[2] == 0x04 && h.b[3] == 0x03 &&
         h.b[4] == 0x02 && h.b[5] == 0x01);
  CHECK (h.b[6] == 0x0f);
  desc_roundtrip (&d, 16);

  /* Five runs, the largest id, a zero run in the middle. */
  d.nruns = 5;
  d.run[0] = (struct cas_run) { .eid = CAS_EXTENT_ID_MAX, .slot = 15, .count = 1 };
  d.run[1] = (struct cas_run) { .eid = 7, .slot = 3, .count = 4 };
  d.run[2] = (struct cas_run) { .eid = 0, .slot = 0, .count = 2 };
  d.run[3] = (struct cas_run) { .eid = 1, .slot = 0, .count = 8 };
  d.run[4] = (struct cas_run) { .eid = 64, .slot = 14, .count = 1 };
  desc_roundtrip (&d, 16);
  cas_desc_encode (&d, &h);
  CHECK (h.b[13] == 0 && h.b[17] == 0 && h.b[18] == 0x01 && h.b[31] == 0);
  CHECK (h.b[6] == 0xf0);

  /* A 4 KiB block: one unit. */
  d.nruns = 1;
  d.run[0] = (struct cas_run) { .eid = 9, .slot = 5, .count = 1 };
  desc_roundtrip (&d, 1);

  /* Damage: each rule broken on its own. */
  d.nruns = 2;
  d.run[0] = (struct cas_run) { .eid = 3, .slot = 2, .count = 4 };
  d.run[1] = (struct cas_run) { .eid = 0, .slot = 0, .count = 4 };
  cas_desc_encode (&d, &h);
  CHECK (cas_desc_decode (&h, 8, &back) == 0);
  {
    struct cas_hash bad;

    bad = h; bad.b[0] = 0;              /* no runs, bytes after */
    CHECK (cas_desc_decode (&bad, 8, &back) == -1 && errno == EIO);
    bad = h; bad.b[0] = 6;              /* too many runs */
    CHECK (cas_desc_decode (&bad, 8, &back) == -1);
    bad = h; bad.b[0] = 3;              /* a third run of extent 0, count 1 */
    CHECK (cas_desc_decode (&bad, 8, &back) == -1);
    CHECK (cas_desc_decode (&bad, 9, &back) == 0);  /* ... adds up to 9 */
    bad = h; bad.b[31] = 1;             /* trailing byte */
    CHECK (cas_desc_decode (&bad, 8, &back) == -1);
    bad = h; bad.b[13 + 1] = 1;         /* byte after the last run */
    CHECK (cas_desc_decode (&bad, 8, &back) == -1);
    bad = h; bad.b[12] = 0x13;          /* zero run with a first slot */
    CHECK (cas_desc_decode (&bad, 8, &back) == -1);
    bad = h; bad.b[6] = 0xd3;           /* slot 13 + 4 units > 16 */
    CHECK (cas_desc_decode (&bad, 8, &back) == -1);
    bad = h; bad.b[6] = 0xc3;           /* slot 12 + 4 units: fine */
    CHECK (cas_desc_decode (&bad, 8, &back) == 0 && back.run[0].slot == 12);
  }
}

static void
test_extent_fields (void)
{
  struct cas_extent_fields f = { .eid = 65, .nslots = 16, .codec = 2,
                                 .present = 0xffff }, g;
  struct cas_hash h, bad;

  cas_extent_fields_encode (&f, &h);
  CHECK (cas_extent_fields_decode (&h, &g) == 0);
  CHECK (g.eid == 65 && g.nslots == 16 && g.codec == 2 && g.present == 0xffff);
  CHECK (h.b[0] == 65 && h.b[8] == 16 && h.b[9] == 2 && h.b[10] == 0xff);

  f.nslots = 3; f.present = 0x5; f.codec = 0;
  cas_extent_fields_encode (&f, &h);
  CHECK (cas_extent_fields_decode (&h, &g) == 0 && g.present == 5);
  bad = h; bad.b[10] = 0x9;             /* slot 3 of 3 present */
  CHECK (cas_extent_fields_decode (&bad, &g) == -1 && errno == EIO);
  bad = h; bad.b[8] = 0;                /* no slot */
  CHECK (cas_extent_fields_decode (&bad, &g) == -1);
  bad = h; bad.b[8] = 17;
  CHECK (cas_extent_fields_decode (&bad, &g) == -1);
  bad = h; bad.b[0] = 0;                /* id 0 */
  CHECK (cas_extent_fields_decode (&bad, &g) == -1);
  bad = h; bad.b[5] = 1;                /* id >= 2^40 */
  CHECK (cas_extent_fields_decode (&bad, &g) == -1);
  bad = h; bad.b[9] = 3;                /* unknown codec */
  CHECK (cas_extent_fields_decode (&bad, &g) == -1);
  bad = h; bad.b[20] = 1;               /* reserved */
  CHECK (cas_extent_fields_decode (&bad, &g) == -1);
}

static void
test_slot_entry (void)
{
  struct cas_slot_entry e = { .stored_len = 4096, .flags = 0,
                              .crc = 0xdeadbeef }, g;
  uint8_t buf[CAS_SLOT_ENTRY_SIZE];

  memset (e.hash.b, 0xab, CAS_HASH_SIZE);
  cas_slot_entry_encode (&e, buf);
  CHECK (buf[32] == 0x00 && buf[33] == 0x10 && buf[36] == 0xef);
  CHECK (cas_slot_entry_decode (buf, true, CAS_CODEC_NONE, &g) == 0);
  CHECK (g.stored_len == 4096 && g.crc == 0xdeadbeef &&
         cas_hash_equal (&g.hash, &e.hash));
  CHECK (cas_slot_entry_decode (buf, false, 0, &g) == -1);  /* not present */

  e.stored_len = 3584; e.flags = CAS_SLOT_F_COMPRESSED;
  cas_slot_entry_encode (&e, buf);
  CHECK (cas_slot_entry_decode (buf, true, CAS_CODEC_LZ4, &g) == 0);
  CHECK (cas_slot_entry_decode (buf, true, CAS_CODEC_NONE, &g) == -1);
  e.stored_len = 3585;                  /* saves less than 1/8 */
  cas_slot_entry_encode (&e, buf);
  CHECK (cas_slot_entry_decode (buf, true, CAS_CODEC_LZ4, &g) == -1);
  e.stored_len = 100; e.flags = 0;      /* raw but short */
  cas_slot_entry_encode (&e, buf);
  CHECK (cas_slot_entry_decode (buf, true, CAS_CODEC_LZ4, &g) == -1);
  e.stored_len = 0; e.flags = 0;        /* dropped by gc */
  cas_slot_entry_encode (&e, buf);
  CHECK (cas_slot_entry_decode (buf, false, CAS_CODEC_LZ4, &g) == 0);
  CHECK (cas_slot_entry_decode (buf, true, CAS_CODEC_LZ4, &g) == -1);
  buf[35] = 1;
  CHECK (cas_slot_entry_decode (buf, false, CAS_CODEC_LZ4, &g) == -1);
}

static void
test_record_header (void)
{
  struct cas_record_header rh = { .type = CAS_RECORD_EXTENT }, g;
  struct cas_extent_fields f = { .eid = 1, .nslots = 2, .present = 3 };
  uint8_t buf[CAS_RECORD_HEADER_SIZE];

  cas_extent_fields_encode (&f, &rh.hash);
  rh.length = 2 * CAS_SLOT_ENTRY_SIZE + 2 * 4096;
  rh.payload_crc = 42;
  cas_record_header_encode (&rh, buf);
  CHECK (cas_record_header_decode (buf, &g) == 0);
  CHECK (g.type == CAS_RECORD_EXTENT && g.length == rh.length);
  CHECK (cas_record_crc_length (&g) == 2 * CAS_SLOT_ENTRY_SIZE);
  rh.length = 2 * CAS_SLOT_ENTRY_SIZE + 2 * 4096 + 1;   /* too long */
  cas_record_header_encode (&rh, buf);
  CHECK (cas_record_header_decode (buf, &g) == -1 && errno == EIO);
  rh.length = 2 * CAS_SLOT_ENTRY_SIZE + 1;              /* too short */
  cas_record_header_encode (&rh, buf);
  CHECK (cas_record_header_decode (buf, &g) == -1);
  rh.length = 2 * CAS_SLOT_ENTRY_SIZE + 2;              /* 2 x 1 byte */
  cas_record_header_encode (&rh, buf);
  CHECK (cas_record_header_decode (buf, &g) == 0);
  rh.flags = CAS_RECORD_F_TABLE;
  cas_record_header_encode (&rh, buf);
  CHECK (cas_record_header_decode (buf, &g) == -1);
  rh.flags = 0;
  rh.hash.b[8] = 0;                                     /* bad fields */
  cas_record_header_encode (&rh, buf);
  CHECK (cas_record_header_decode (buf, &g) == -1);
}

static void
test_super (void)
{
  struct cas_super s = { .version = CAS_FORMAT_VERSION_UNITS,
                         .blocksize = 65536, .fanout = CAS_MAP_FANOUT,
                         .created = 1 }, g;
  uint8_t buf[CAS_SUPER_SIZE];

  cas_super_encode (&s, buf);
  CHECK (buf[50] == CAS_UNIT_SHIFT);
  CHECK (cas_super_decode (buf, &g) == 0);
  CHECK (g.version == 4 && g.unit_shift == CAS_UNIT_SHIFT);

  s.compression = (struct cas_compression) { .codec = CAS_CODEC_ZSTD,
                                             .level = 3 };
  cas_super_encode (&s, buf);
  CHECK (cas_super_decode (buf, &g) == 0 && g.incompat == 1);

  s.blocksize = 131072;                 /* too big for version 4 */
  cas_super_encode (&s, buf);
  CHECK (cas_super_decode (buf, &g) == -1 && errno == EIO);

  s.blocksize = 4096;
  cas_super_encode (&s, buf);
  CHECK (cas_super_decode (buf, &g) == 0);
  buf[50] = 13;                         /* another unit size, resealed */
  put_le32 (buf + 60, crc32c (0, buf, 60));
  CHECK (cas_super_decode (buf, &g) == -1 && errno == EIO);

  s.version = CAS_FORMAT_VERSION_FEATURES;  /* byte 50 is 0 before 4 */
  s.blocksize = 1024 * 1024;
  cas_super_encode (&s, buf);
  CHECK (buf[50] == 0);
  CHECK (cas_super_decode (buf, &g) == 0 && g.unit_shift == 0);
  buf[50] = CAS_UNIT_SHIFT;
  put_le32 (buf + 60, crc32c (0, buf, 60));
  CHECK (cas_super_decode (buf, &g) == -1);

  put_le32 (buf + 8, 5);                /* a version from the future */
  CHECK (cas_super_decode (buf, &g) == -1 && errno == EPROTO);
}

int
main (void)
{
  test_desc ();
  test_extent_fields ();
  test_slot_entry ();
  test_record_header ();
  test_super ();
  if (failures) {
    fprintf (stderr, "test-format-v4: %d checks failed\n", failures);
    return 1;
  }
  printf ("test-format-v4: all checks passed\n");
  return 0;
}
