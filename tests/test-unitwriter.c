/* test-unitwriter: the format-4 unit writer (plugins/cas/unitwriter.c)
 * over an extent store in memory (this file's fake of extent.h):
 * descriptors of whole blocks, zero units, partial blocks (untouched
 * units kept without a read, units written in part completed from the
 * old content), dedup through the cache, the old descriptor and the
 * hooks, a reference the extent store no longer offers (stored again),
 * the fallback when a block needs more than 5 runs, a damaged old
 * descriptor.  Every descriptor is read back and compared.
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
#include "extent.h"
#include "format.h"
#include "hash.h"
#include "lockrank.h"
#include "unitwriter.h"

/* The lock checks' state (volume.c has it in the library: defined here,
 * so that nothing of the volume layer is linked).
 */
LOCKRANK_DEFINE;

void
backend_error (const char *fmt, ...)
{
  va_list ap;

  if (getenv ("TEST_VERBOSE") == NULL)
    return;
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  fputc ('\n', stderr);
  va_end (ap);
}


/* ---- the fake extent store ---- */

#define MAX_EXTENTS 4096
#define U CAS_UNIT_SIZE

struct fake_extent {
  unsigned nslots;
  uint16_t present;
  bool usable;                  /* offered for dedup */
  bool pending;                 /* still being filled */
  bool damaged;                 /* found damaged */
  unsigned moves;               /* times a collection moved it */
  struct cas_hash h[CAS_UNITS_MAX];
  uint8_t data[CAS_UNITS_MAX][U];
};

struct cas_extents {
  struct fake_extent *e[MAX_EXTENTS];
  uint64_t max_eid;
  uint64_t next_group;
  /* Hooks: hash -> newest extent. */
  struct { struct cas_hash h; uint64_t eid; } hook[MAX_EXTENTS * 4];
  unsigned nhooks;
  /* What the writer asked. */
  unsigned adds, slot_table_reads, unit_reads, appends, stamps;
};

struct cas_extent_appender {
  struct cas_extents *ext;
  uint64_t group, next;         /* next id of the group to open */
  uint64_t open;                /* open extent, 0 none */
};

static struct cas_extents fake;

struct cas_extents *
cas_packstore_extents (struct chunkstore *cs)
{
  (void) cs;
  return &fake;
}

int
cas_extents_read (struct cas_extents *ext, uint64_t eid, unsigned slot,
                  unsigned count, uint32_t off, uint32_t len, void *buf,
                  enum cas_verify verify)
{
  uint32_t i;

  (void) verify;
  (void) count;
  if (len)
    ext->unit_reads += (off + len - 1) / U - off / U + 1;
  for (i = 0; i < len; i++) {
    uint32_t pos = off + i, s = slot + pos / U;
    struct fake_extent *x = eid < MAX_EXTENTS ? ext->e[eid] : NULL;

    if (x == NULL || s >= x->nslots || !(x->present >> s & 1) ||
        s >= slot + count) {
      errno = x ? EIO : ENOENT;
      return -1;
    }
    ((uint8_t *) buf)[i] = x->data[s][pos % U];
  }
  return 0;
}

int
cas_desc_read (struct cas_extents *ext, const struct cas_hash *desc,
               uint32_t bs, uint32_t off, uint32_t len, void *buf,
               enum cas_verify verify)
{
  struct cas_desc d;
  uint32_t unit = 0, r;
  uint8_t *out = buf;

  if (cas_desc_decode (desc, bs / U, &d) == -1)
    return -1;
  if (d.nruns == 0) {
    memset (buf, 0, len);
    return 0;
  }
  for (r = 0; r < d.nruns; r++) {
    uint32_t start = unit * U, end = (unit + d.run[r].count) * U;
    uint32_t a = off > start ? off : start;
    uint32_t b = off + len < end ? off + len : end;

    if (a < b) {
      if (d.run[r].eid == 0)
        memset (out + (a - off), 0, b - a);
      else if (cas_extents_read (ext, d.run[r].eid, d.run[r].slot,
                                 d.run[r].count, a - start, b - a,
                                 out + (a - off), verify) == -1)
        return -1;
    }
    unit += d.run[r].count;
  }
  return 0;
}

int
cas_extents_slot_hashes (struct cas_extents *ext, uint64_t eid,
                         struct cas_hash hashes[CAS_UNITS_MAX],
                         unsigned *nslots, uint16_t *present)
{
  struct fake_extent *x = eid < MAX_EXTENTS ? ext->e[eid] : NULL;

  ext->slot_table_reads++;
  if (x == NULL || !x->usable || x->damaged)
    return 0;
  memcpy (hashes, x->h, sizeof x->h);
  *nslots = x->nslots;
  *present = x->present;
  return 1;
}

uint64_t
cas_extents_loc (struct cas_extents *ext, uint64_t eid)
{
  struct fake_extent *x = eid < MAX_EXTENTS ? ext->e[eid] : NULL;

  if (x == NULL || x->pending)
    return 0;
  return (eid << 20) | (x->moves << 1);
}

uint64_t
cas_extents_dedup_stamp (struct cas_extents *ext, uint64_t eid)
{
  struct fake_extent *x = eid < MAX_EXTENTS ? ext->e[eid] : NULL;

  ext->stamps++;
  if (x == NULL || !x->usable || x->damaged)
    return 0;
  if (x->pending)
    return CAS_EXTENT_STAMP_PENDING;
  return cas_extents_loc (ext, eid) | 1;
}

bool
cas_extents_is_damaged (struct cas_extents *ext, uint64_t eid)
{
  struct fake_extent *x = eid < MAX_EXTENTS ? ext->e[eid] : NULL;

  return x && x->damaged;
}

int
cas_extents_hook_lookup (struct cas_extents *ext, const struct cas_hash *h,
                         uint64_t *eid)
{
  unsigned i;

  for (i = ext->nhooks; i-- > 0;)
    if (cas_hash_equal (&ext->hook[i].h, h)) {
      *eid = ext->hook[i].eid;
      return 1;
    }
  return 0;
}

uint64_t
cas_extents_max_eid (struct cas_extents *ext)
{
  return ext->max_eid;
}

struct cas_extent_appender *
cas_extent_appender_new (struct cas_extents *ext)
{
  struct cas_extent_appender *a = calloc (1, sizeof *a);

  if (a) {
    a->ext = ext;
    a->group = ++ext->next_group;
    a->next = a->group * CAS_GROUP_EXTENTS;
  }
  return a;
}

int
cas_extent_appender_add (struct cas_extent_appender *a,
                         const struct cas_hash *h, const void *unit,
                         uint64_t *eid, unsigned *slot)
{
  struct cas_extents *ext = a->ext;
  struct fake_extent *x;
  struct cas_hash check;

  cas_hash_compute (unit, U, &check);
  if (!cas_hash_equal (&check, h)) {
    fprintf (stderr, "appender: a unit added under a wrong hash\n");
    failures++;
  }
  if (a->open == 0) {
    if (a->next == (a->group + 1) * CAS_GROUP_EXTENTS) {
      a->group = ++ext->next_group;
      a->next = a->group * CAS_GROUP_EXTENTS;
    }
    a->open = a->next++;
    if (a->open >= MAX_EXTENTS)
      abort ();
    ext->e[a->open] = calloc (1, sizeof *x);
    ext->e[a->open]->usable = true;
    ext->e[a->open]->pending = true;
    if (a->open > ext->max_eid)
      ext->max_eid = a->open;
  }
  x = ext->e[a->open];
  *eid = a->open;
  *slot = x->nslots;
  x->h[x->nslots] = *h;
  memcpy (x->data[x->nslots], unit, U);
  x->present |= 1u << x->nslots;
  x->nslots++;
  ext->adds++;
  if (cas_unit_is_hook (h)) {
    ext->hook[ext->nhooks].h = *h;
    ext->hook[ext->nhooks++].eid = *eid;
  }
  if (x->nslots == CAS_UNITS_MAX) {
    x->pending = false;
    a->open = 0;
    ext->appends++;
  }
  return 0;
}

unsigned
cas_extent_appender_room (const struct cas_extent_appender *a)
{
  return a->open ? CAS_UNITS_MAX - a->ext->e[a->open]->nslots
    : CAS_UNITS_MAX;
}

int
cas_extent_appender_flush (struct cas_extent_appender *a)
{
  if (a->open) {
    a->ext->e[a->open]->pending = false;
    a->open = 0;
    a->ext->appends++;
  }
  return 0;
}

int
cas_extent_appender_free (struct cas_extent_appender *a)
{
  cas_extent_appender_flush (a);
  free (a);
  return 0;
}

/* ---- helpers ---- */

#define BS (16 * U)
#define WORDS (BS / 512 / 64)

/* Unit n of a deterministic stream (never all zero); hook: one whose
 * hash is a hook (cas_unit_is_hook) or not, as asked.
 */
static void
make_unit (uint32_t n, uint8_t *out)
{
  uint32_t i, x = n * 2654435761u + 12345;

  for (i = 0; i < U; i++) {
    x = x * 1103515245u + 12345;
    out[i] = x >> 16;
  }
  memcpy (out, &n, sizeof n);
}

static bool
unit_is_hook (uint32_t n)
{
  uint8_t buf[U];
  struct cas_hash h;

  make_unit (n, buf);
  cas_hash_compute (buf, U, &h);
  return cas_unit_is_hook (&h);
}

/* The next unit number >= n that is (or is not) a hook. */
static uint32_t
find_unit (uint32_t n, bool hook)
{
  while (unit_is_hook (n) != hook)
    n++;
  return n;
}

static void
check_reads (struct cas_extents *ext, const struct cas_hash *desc,
             const uint8_t *want, const char *what)
{
  static uint8_t got[BS];

  if (cas_desc_read (ext, desc, BS, 0, BS, got, CAS_VERIFY_CHECKSUM) == -1 ||
      memcmp (got, want, BS) != 0) {
    fprintf (stderr, "%s: reads back wrong\n", what);
    failures++;
  }
}

static unsigned
nruns (const struct cas_hash *desc)
{
  struct cas_desc d;

  if (cas_desc_decode (desc, BS / U, &d) == -1)
    return 99;
  return d.nruns;
}

static void
mark (uint64_t *w, uint32_t first_sector, uint32_t nsectors)
{
  uint32_t s;

  for (s = first_sector; s < first_sector + nsectors; s++)
    w[s / 64] |= UINT64_C (1) << (s % 64);
}

int
main (void)
{
  static uint8_t a[BS], b[BS], c[BS];
  struct cas_unit_writer *w1, *w2, *w3;
  struct cas_hash da, db, dc, bad;
  uint64_t written[WORDS];
  unsigned i, adds, reads;
  uint32_t hookunit, units8[8];

  w1 = cas_unit_writer_new (&fake, BS, CAS_VERIFY_CHECKSUM, "w1");
  w2 = cas_unit_writer_new (&fake, BS, CAS_VERIFY_CHECKSUM, "w2");
  w3 = cas_unit_writer_new (&fake, BS, CAS_VERIFY_CHECKSUM, "w3");
  CHECK (w1 && w2 && w3);
  CHECK (cas_unit_writer_new (&fake, 5000, CAS_VERIFY_CHECKSUM, "x") == NULL);

  /* A block of 16 new units: one run, 16 adds. */
  for (i = 0; i < 16; i++)
    make_unit (100 + i, a + i * U);
  CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &da) == 0);
  CHECK (nruns (&da) == 1);
  CHECK (fake.adds == 16);
  check_reads (&fake, &da, a, "new block");

  /* The same block again: all from the cache, the same descriptor. */
  CHECK (cas_unit_writer_store (w1, a, BS, &da, NULL, &db) == 0);
  CHECK (fake.adds == 16);
  CHECK (cas_hash_equal (&da, &db));

  /* Zeros: never stored; an all-zero block is the all-zero value. */
  memset (b, 0, BS);
  CHECK (cas_unit_writer_store (w1, b, BS, NULL, NULL, &db) == 0);
  CHECK (cas_hash_is_zero (&db));
  memcpy (b, a, BS);
  memset (b, 0, U);
  memset (b + 8 * U, 0, 2 * U);
  CHECK (cas_unit_writer_store (w1, b, BS, &da, NULL, &db) == 0);
  CHECK (fake.adds == 16);
  CHECK (nruns (&db) == 4);            /* Z, A1..7, ZZ, A10..15 */
  check_reads (&fake, &db, b, "zero units");

  /* 4 KiB written into unit 3: one unit hashed and added, nothing
   * read, the others kept.
   */
  memset (b, 0xee, BS);                /* not looked at */
  make_unit (900, b + 3 * U);
  memset (written, 0, sizeof written);
  mark (written, 3 * 8, 8);
  adds = fake.adds;
  reads = fake.unit_reads;
  CHECK (cas_unit_writer_store (w1, b, BS, &da, written, &db) == 0);
  CHECK (fake.adds == adds + 1);
  CHECK (fake.unit_reads == reads);
  memcpy (c, a, BS);
  make_unit (900, c + 3 * U);
  check_reads (&fake, &db, c, "a unit written");
  CHECK (nruns (&db) == 3);

  /* 512 bytes into unit 5 of that: the unit is read and completed. */
  memset (b, 0xee, BS);
  memset (b + 5 * U + 1024, 0x55, 512);
  memset (written, 0, sizeof written);
  mark (written, 5 * 8 + 2, 1);
  reads = fake.unit_reads;
  CHECK (cas_unit_writer_store (w1, b, BS, &db, written, &dc) == 0);
  CHECK (fake.unit_reads == reads + 1);
  memset (c + 5 * U + 1024, 0x55, 512);
  check_reads (&fake, &dc, c, "a sector written");

  /* A partial write over an unmapped block: the rest is zeros. */
  memset (b, 0xee, BS);
  memset (b + 7 * U, 0x77, 2048);
  memset (written, 0, sizeof written);
  mark (written, 7 * 8, 4);
  CHECK (cas_unit_writer_store (w1, b, BS, NULL, written, &dc) == 0);
  memset (c, 0, BS);
  memset (c + 7 * U, 0x77, 2048);
  check_reads (&fake, &dc, c, "partial over unmapped");
  CHECK (nruns (&dc) == 3);

  /* A damaged old descriptor with units to keep: EIO, nothing added. */
  memset (&bad, 0, sizeof bad);
  bad.b[0] = 9;
  adds = fake.adds;
  errno = 0;
  CHECK (cas_unit_writer_store (w1, b, BS, &bad, written, &dc) == -1 &&
         errno == EIO);
  CHECK (fake.adds == adds);

  /* Dedup across writers shifted by one unit: w2 has an empty cache;
   * the hooks of a's units lead it to w1's group.
   */
  hookunit = find_unit (1000, true);
  for (i = 0; i < 16; i++)
    make_unit (i == 8 ? hookunit : 200 + i, a + i * U);
  CHECK (cas_unit_writer_flush (w1) == 0);     /* a in one extent */
  CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &da) == 0);
  memcpy (b + U, a, 15 * U);
  make_unit (5000, b);
  adds = fake.adds;
  CHECK (cas_unit_writer_store (w2, b, BS, NULL, NULL, &db) == 0);
  CHECK (fake.adds == adds + 1);
  CHECK (nruns (&db) == 2);
  check_reads (&fake, &db, b, "shifted dedup");

  /* Previous content: w3 (empty cache) rewrites a with a unit changed
   * and the others moved; no hook needed: the old descriptor's extent.
   */
  for (i = 0; i < 16; i++)
    make_unit (find_unit (300 + 20 * i, false), a + i * U);
  CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &da) == 0);
  memcpy (b, a + U, 15 * U);
  make_unit (find_unit (6000, false), b + 15 * U);
  adds = fake.adds;
  CHECK (cas_unit_writer_store (w3, b, BS, &da, NULL, &db) == 0);
  CHECK (fake.adds == adds + 1);
  check_reads (&fake, &db, b, "previous content");

  /* A block of units from 8 different extents, each its own run: the
   * partial fallback keeps 4 of them and stores the other 12 fresh, as
   * one run.
   */
  for (i = 0; i < 8; i++) {
    uint8_t blk[BS];
    struct cas_hash d;
    unsigned k;

    units8[i] = 7000 + 100 * i;
    for (k = 0; k < 16; k++)
      make_unit (units8[i] + k, blk + k * U);
    CHECK (cas_unit_writer_store (w1, blk, BS, NULL, NULL, &d) == 0);
    CHECK (cas_unit_writer_flush (w1) == 0);   /* one extent each */
  }
  for (i = 0; i < 16; i++)
    make_unit (units8[i % 8] + i, a + i * U);
  adds = fake.adds;
  CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &da) == 0);
  CHECK (nruns (&da) == 5);
  CHECK (fake.adds == adds + 12);
  check_reads (&fake, &da, a, "fallback");

  /* Data and zeros alternating, the data deduplicated from 8 extents:
   * 16 runs; 4 kept, the 12 units after them stored fresh, zeros too.
   */
  memset (b, 0, BS);
  for (i = 0; i < 16; i += 2)
    make_unit (units8[i / 2] + i, b + i * U);
  CHECK (cas_unit_writer_store (w1, b, BS, NULL, NULL, &db) == 0);
  CHECK (nruns (&db) == 5);
  check_reads (&fake, &db, b, "fallback with zeros");

  /* A unit twice in one block is added twice: the block stays one run. */
  make_unit (8888, a);
  make_unit (8888, a + U);
  for (i = 2; i < 16; i++)
    make_unit (8890 + i, a + i * U);
  CHECK (cas_unit_writer_flush (w1) == 0);
  adds = fake.adds;
  CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &da) == 0);
  CHECK (fake.adds == adds + 16);
  CHECK (nruns (&da) == 1);
  check_reads (&fake, &da, a, "a unit twice");

  /* A block of one unit 16 times: stored as 16 copies (one run), and
   * found again as that run, by this writer (its cache) and by another
   * (the hooks, the unit being one), with nothing added.
   */
  hookunit = find_unit (hookunit + 1, true);
  for (i = 0; i < 16; i++)
    make_unit (hookunit, a + i * U);
  CHECK (cas_unit_writer_flush (w1) == 0);
  adds = fake.adds;
  CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &da) == 0);
  CHECK (fake.adds == adds + 16);
  CHECK (nruns (&da) == 1);
  check_reads (&fake, &da, a, "one unit 16 times");
  CHECK (cas_unit_writer_flush (w1) == 0);    /* hooks: when appended */
  CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &db) == 0);
  CHECK (cas_unit_writer_store (w3, a, BS, NULL, NULL, &dc) == 0);
  CHECK (fake.adds == adds + 16);
  CHECK (cas_hash_equal (&da, &db) && cas_hash_equal (&da, &dc));

  /* The same with a unit stored once before, alone in another block:
   * 16 runs of that copy; the fallback keeps 4 and stores 12 copies,
   * which the next store of the block finds again (the longest run).
   */
  {
    uint32_t lone = find_unit (hookunit + 1, false);

    for (i = 0; i < 16; i++)
      make_unit (i == 3 ? lone : 12000 + i, b + i * U);
    CHECK (cas_unit_writer_store (w1, b, BS, NULL, NULL, &db) == 0);
    for (i = 0; i < 16; i++)
      make_unit (lone, a + i * U);
    adds = fake.adds;
    CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &da) == 0);
    CHECK (nruns (&da) == 5);
    CHECK (fake.adds == adds + 12);
    adds = fake.adds;
    CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &dc) == 0);
    CHECK (fake.adds == adds);
    CHECK (nruns (&dc) == 2);           /* 12 copies, then 4 of them */
    check_reads (&fake, &dc, a, "a unit stored alone, then 16 times");
  }

  /* An extent the store no longer offers (a collection dropped or
   * sealed it): the cache's reference is not used, the unit is stored
   * again.
   */
  for (i = 0; i < 16; i++)
    make_unit (find_unit (9000 + 20 * i, false), a + i * U);
  CHECK (cas_unit_writer_flush (w1) == 0);
  CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &da) == 0);
  CHECK (cas_unit_writer_flush (w1) == 0);
  {
    struct cas_desc d;
    CHECK (cas_desc_decode (&da, 16, &d) == 0 && d.nruns == 1);
    fake.e[d.run[0].eid]->usable = false;
    adds = fake.adds;
    CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &db) == 0);
    CHECK (fake.adds == adds + 16);
    CHECK (!cas_hash_equal (&da, &db));
    check_reads (&fake, &db, a, "stale reference");
  }

  /* The old content by position: a unit rewritten with the same bytes
   * keeps its reference, with nothing read (the writer has the table
   * cached: it added those units) ...
   */
  for (i = 0; i < 16; i++)
    make_unit (find_unit (20000 + 20 * i, false), a + i * U);
  CHECK (cas_unit_writer_flush (w1) == 0);
  CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &da) == 0);
  CHECK (nruns (&da) == 1);
  memset (b, 0xee, BS);
  memcpy (b + 3 * U, a + 3 * U, U);
  memset (written, 0, sizeof written);
  mark (written, 3 * 8, 8);
  adds = fake.adds;
  reads = fake.unit_reads;
  {
    unsigned tables = fake.slot_table_reads;

    CHECK (cas_unit_writer_store (w1, b, BS, &da, written, &db) == 0);
    CHECK (cas_hash_equal (&da, &db));
    CHECK (fake.adds == adds && fake.unit_reads == reads &&
           fake.slot_table_reads == tables);
    /* ... and a writer that never saw them (w2) reads the table once
     * (no unit) to find it.
     */
    CHECK (cas_unit_writer_store (w2, b, BS, &da, written, &db) == 0);
    CHECK (cas_hash_equal (&da, &db));
    CHECK (fake.adds == adds && fake.unit_reads == reads &&
           fake.slot_table_reads == tables + 1);
    tables++;
    /* New data written 4 KiB at a time: the unit is added. */
    make_unit (20999, b + 3 * U);
    CHECK (cas_unit_writer_store (w2, b, BS, &da, written, &db) == 0);
    CHECK (fake.adds == adds + 1 && fake.unit_reads == reads &&
           fake.slot_table_reads == tables);
    CHECK (nruns (&db) == 3);
    /* ... while a whole-block rewrite by w3 with one unit changed reads
     * the old extent's table once and keeps the 15 others.
     */
    memcpy (b, a, BS);
    make_unit (find_unit (21000, false), b + 9 * U);
    CHECK (cas_unit_writer_store (w3, b, BS, &da, NULL, &db) == 0);
    CHECK (fake.adds == adds + 2 && fake.unit_reads == reads &&
           fake.slot_table_reads == tables + 1);
    CHECK (nruns (&db) == 3);
    check_reads (&fake, &db, b, "same position");
    /* Not when the extent was found damaged: the same bytes written
     * again are stored again (they heal the block).  w6 stored the block
     * (its table is cached) and then learnt that small writes do not pay
     * a table read, so only the damage check stands in the way.
     */
    {
      struct cas_unit_writer *w6 = cas_unit_writer_new (&fake, BS,
                                                        CAS_VERIFY_CHECKSUM,
                                                        "w6");
      struct cas_hash dd, de;
      struct cas_desc d;
      unsigned k;

      CHECK (w6 != NULL);
      for (i = 0; i < 16; i++)
        make_unit (find_unit (22000 + 20 * i, false), c + i * U);
      CHECK (cas_unit_writer_store (w6, c, BS, NULL, NULL, &dd) == 0);
      for (k = 0; k < 20; k++) {
        memset (b, 0xee, BS);
        make_unit (23000 + k, b + 7 * U);
        memset (written, 0, sizeof written);
        mark (written, 7 * 8, 8);
        CHECK (cas_unit_writer_store (w6, b, BS, &dd, written, &de) == 0);
      }
      CHECK (cas_desc_decode (&dd, 16, &d) == 0 && d.nruns == 1);
      fake.e[d.run[0].eid]->damaged = true;
      memset (b, 0xee, BS);
      memcpy (b + 3 * U, c + 3 * U, U);
      memset (written, 0, sizeof written);
      mark (written, 3 * 8, 8);
      adds = fake.adds;
      CHECK (cas_unit_writer_store (w6, b, BS, &dd, written, &de) == 0);
      CHECK (fake.adds == adds + 1 && nruns (&de) == 3);
      fake.e[d.run[0].eid]->damaged = false;
      CHECK (cas_unit_writer_free (w6) == 0);
    }
  }

  /* Random 4 KiB writes of new data into 40 blocks w3 never saw: it
   * stops reading their tables once such reads stop paying (16 tries).
   */
  {
    static struct cas_hash blk[40];
    static uint8_t e[BS];
    unsigned tables;

    for (i = 0; i < 40; i++) {
      unsigned k;

      for (k = 0; k < 16; k++)
        make_unit (60000 + 16 * i + k, e + k * U);
      CHECK (cas_unit_writer_store (w1, e, BS, NULL, NULL, &blk[i]) == 0);
    }
    CHECK (cas_unit_writer_flush (w1) == 0);
    tables = fake.slot_table_reads;
    reads = fake.unit_reads;
    adds = fake.adds;
    memset (e, 0xee, BS);
    memset (written, 0, sizeof written);
    mark (written, 5 * 8, 8);
    for (i = 0; i < 40; i++) {
      make_unit (70000 + i, e + 5 * U);
      CHECK (cas_unit_writer_store (w3, e, BS, &blk[i], written, &db) == 0);
      CHECK (nruns (&db) == 3);
    }
    if (getenv ("TEST_VERBOSE"))
      fprintf (stderr, "40 small writes: %u slot tables read\n",
               fake.slot_table_reads - tables);
    CHECK (fake.adds == adds + 40 && fake.unit_reads == reads);
    CHECK (fake.slot_table_reads - tables <= 17);
  }

  /* 4 KiB writes into one block, one unit per pass at another position,
   * 20 passes: the runs grow, and the partial fallback keeps the longest
   * ones, storing few units again (a whole-block fallback would store
   * 16 every few passes).
   */
  {
    struct cas_hash cur = da;

    memcpy (c, a, BS);
    adds = fake.adds;
    for (i = 0; i < 20; i++) {
      unsigned pos = (i * 7) % 16;

      memset (b, 0xee, BS);
      make_unit (30000 + i, b + pos * U);
      memcpy (c + pos * U, b + pos * U, U);
      memset (written, 0, sizeof written);
      mark (written, pos * 8, 8);
      CHECK (cas_unit_writer_store (w1, b, BS, &cur, written, &db) == 0);
      CHECK (nruns (&db) <= 5);
      check_reads (&fake, &db, c, "20 passes");
      cur = db;
    }
    if (getenv ("TEST_VERBOSE"))
      fprintf (stderr, "20 passes: %u units added\n", fake.adds - adds);
    CHECK (fake.adds - adds <= 75);    /* 65 now; 110 stored whole */
  }

  /* Another writer's extent still being filled is never referenced
   * (only its own flush makes it durable): w1 leaves 8 units in its
   * open extent, one a hook; w2 stores the same units again.
   */
  CHECK (cas_unit_writer_flush (w1) == 0);
  memset (a, 0, BS);
  hookunit = find_unit (40000, true);
  for (i = 0; i < 8; i++)
    make_unit (i == 0 ? hookunit : 40001 + i, a + i * U);
  CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &da) == 0);
  {
    struct cas_unit_writer *w4 = cas_unit_writer_new (&fake, BS,
                                                      CAS_VERIFY_CHECKSUM,
                                                      "w4");
    struct cas_unit_writer *w5 = cas_unit_writer_new (&fake, BS,
                                                      CAS_VERIFY_CHECKSUM,
                                                      "w5");

    CHECK (w4 && w5);
    adds = fake.adds;
    CHECK (cas_unit_writer_store (w4, a, BS, NULL, NULL, &db) == 0);
    CHECK (fake.adds == adds + 8);
    check_reads (&fake, &db, a, "another writer's open extent");
    /* Once w1 flushed it, it is found (hooks name the newest extent:
     * w4's copy, flushed too).
     */
    CHECK (cas_unit_writer_flush (w1) == 0);
    CHECK (cas_unit_writer_flush (w4) == 0);
    adds = fake.adds;
    CHECK (cas_unit_writer_store (w5, a, BS, NULL, NULL, &dc) == 0);
    CHECK (fake.adds == adds);
    check_reads (&fake, &dc, a, "flushed");
    CHECK (cas_unit_writer_free (w4) == 0);
    CHECK (cas_unit_writer_free (w5) == 0);
  }

  /* A record moved by a collection that dropped a slot the cache knew:
   * the stamp changed, the table is read again, the group leaves the
   * cache and the unit is stored again.
   */
  for (i = 0; i < 16; i++)
    make_unit (find_unit (50000 + 20 * i, false), a + i * U);
  CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &da) == 0);
  CHECK (cas_unit_writer_flush (w1) == 0);
  {
    struct cas_desc d;

    CHECK (cas_desc_decode (&da, 16, &d) == 0 && d.nruns == 1);
    fake.e[d.run[0].eid]->moves++;
    fake.e[d.run[0].eid]->present &= ~(1u << 5);
    CHECK (cas_unit_writer_store (w1, a, BS, NULL, NULL, &db) == 0);
    check_reads (&fake, &db, a, "moved without a slot");
  }

  /* Sequential locality: a stream of 130 blocks, only the first with a
   * hook unit, written again by a new writer.  The first block's hook
   * loads its group; the blocks that start the next groups (64 and 128)
   * have no hook and are found by loading the group after the last
   * reference found.  w7 was made first, so its group lies between
   * w6's first two (the fake takes a group when an appender is made): the
   * lookup tries the groups after.  Nothing is stored again.
   */
  {
    struct cas_unit_writer *w6 = cas_unit_writer_new (&fake, BS,
                                                      CAS_VERIFY_CHECKSUM,
                                                      "w6");
    struct cas_unit_writer *w7 = cas_unit_writer_new (&fake, BS,
                                                      CAS_VERIFY_CHECKSUM,
                                                      "w7");
    static uint32_t stream[130 * 16];
    uint32_t next = 900000;
    unsigned blk;

    CHECK (w6 && w7);
    for (i = 0; i < 130 * 16; i++) {
      next = find_unit (next, i == 0);
      stream[i] = next++;
    }
    for (blk = 0; blk < 130; blk++) {
      for (i = 0; i < 16; i++)
        make_unit (stream[blk * 16 + i], a + i * U);
      CHECK (cas_unit_writer_store (w6, a, BS, NULL, NULL, &da) == 0);
    }
    CHECK (cas_unit_writer_free (w6) == 0);
    adds = fake.adds;
    for (blk = 0; blk < 130; blk++) {
      for (i = 0; i < 16; i++)
        make_unit (stream[blk * 16 + i], a + i * U);
      CHECK (cas_unit_writer_store (w7, a, BS, NULL, NULL, &db) == 0);
      CHECK (nruns (&db) == 1);
      if (blk % 64 == 0)
        check_reads (&fake, &db, a, "hookless stream");
    }
    if (fake.adds != adds)
      fprintf (stderr, "hookless stream: %u units stored again\n",
               fake.adds - adds);
    CHECK (fake.adds == adds);
    CHECK (cas_unit_writer_free (w7) == 0);
  }

  CHECK (cas_unit_writer_free (w1) == 0);
  CHECK (cas_unit_writer_free (w2) == 0);
  CHECK (cas_unit_writer_free (w3) == 0);
  CHECK (cas_unit_writer_free (NULL) == 0);
  if (failures) {
    fprintf (stderr, "test-unitwriter: %d failures\n", failures);
    return 1;
  }
  printf ("test-unitwriter: ok\n");
  return 0;
}
