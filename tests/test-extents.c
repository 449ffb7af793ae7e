/* test-extents: the unit store of a format-4 store (plugins/cas/extent.c)
 * driven directly, for each compression (off, lz4, zstd): units added
 * through an appender read back while pending and once appended (whole,
 * partial, across units, through block descriptors, with verify=full),
 * slot tables and hooks; the store reopened (the table and hooks rebuilt
 * from the packs; new ids above the old); a unit's byte damaged on disk
 * (EIO for that unit, its neighbours still read, the extent never offered
 * for dedup); no data chunk accepted.  The index cache
 * (version 4: extent table and hooks): a reopen reads no slot table; after
 * a saved cache, appends and a crash (a child that _exits without
 * closing) the next open reads only the new extents' tables and finds
 * every unit; a damaged, truncated or another store's cache is refused
 * and the packs rescanned; rebuild_index ignores it.  The extent id
 * reservation: ids handed out before a crash are not handed out again
 * though the newest record is lost; a damaged extent-ids file refuses a
 * writable open.
 *
 * Exit 0: all good.  1: a check failed (each is printed).  99: the test
 * itself could not run.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "ccheck.h"
#include "extent.h"
#include "format.h"
#include "hash.h"
#include "index.h"
#include "store.h"

static bool quiet;              /* expected errors: not printed */
static char last_error[256];    /* the last error message, printed or not */

void
backend_error (const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (last_error, sizeof last_error, fmt, ap);
  va_end (ap);
  if (quiet)
    return;
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
}


#define NUNITS 200              /* > 12 extents; about 12 hooks */
#define U CAS_UNIT_SIZE

static const char *codec_name;
static uint8_t data[NUNITS][U];
static struct cas_hash hash[NUNITS];
static uint64_t eid_of[NUNITS];
static unsigned slot_of[NUNITS];

static void
die (const char *what)
{
  fprintf (stderr, "test-extents: %s: %m\n", what);
  exit (99);
}

/* Deterministic contents: odd units are random (incompressible), even
 * ones a short pattern (compressible), none all zero.
 */
static void
make_units (void)
{
  uint64_t x = 0x9e3779b97f4a7c15;
  unsigned i, j;

  for (i = 0; i < NUNITS; i++) {
    for (j = 0; j < U; j++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      data[i][j] = i % 2 ? (uint8_t) x : (uint8_t) (i + j % 13);
    }
    if (cas_hash_compute (data[i], U, &hash[i]) == -1)
      die ("sha256");
  }
}

static struct cas_store *
open_store (const char *dir, enum cas_verify verify)
{
  struct cas_open_options o = { .verify = verify };
  struct cas_store *st = cas_store_open (dir, &o);

  if (st == NULL)
    die ("cas_store_open");
  return st;
}

/* Every unit reads back: whole, partial, and across consecutive units of
 * one extent.
 */
static void
check_reads (struct cas_extents *ext, unsigned n, enum cas_verify verify)
{
  static uint8_t buf[3 * U];
  unsigned i;

  for (i = 0; i < n; i++) {
    CHECK (cas_extents_read (ext, eid_of[i], slot_of[i], 1, 0, U, buf,
                             verify) == 0 && memcmp (buf, data[i], U) == 0);
    CHECK (cas_extents_read (ext, eid_of[i], slot_of[i], 1, 100, 1000, buf,
                             verify) == 0 &&
           memcmp (buf, data[i] + 100, 1000) == 0);
    if (i + 1 < n && eid_of[i + 1] == eid_of[i]) {
      /* Straddling two units, from within the first. */
      CHECK (cas_extents_read (ext, eid_of[i], slot_of[i], 2, U - 10, 30,
                               buf, verify) == 0 &&
             memcmp (buf, data[i] + U - 10, 10) == 0 &&
             memcmp (buf + 10, data[i + 1], 20) == 0);
      CHECK (cas_extents_read (ext, eid_of[i], slot_of[i], 2, 0, 2 * U,
                               buf, verify) == 0 &&
             memcmp (buf, data[i], U) == 0 &&
             memcmp (buf + U, data[i + 1], U) == 0);
    }
  }
}

static void
check_slot_tables (struct cas_extents *ext, unsigned n)
{
  unsigned i;

  for (i = 0; i < n; i++) {
    struct cas_hash hs[CAS_UNITS_MAX];
    unsigned nslots = 0;
    uint16_t present = 0;

    CHECK (cas_extents_slot_hashes (ext, eid_of[i], hs, &nslots,
                                    &present) == 1);
    CHECK (slot_of[i] < nslots && (present & (1u << slot_of[i])) &&
           cas_hash_equal (&hs[slot_of[i]], &hash[i]));
  }
}

static unsigned
check_hooks (struct cas_extents *ext, unsigned n)
{
  unsigned i, hooks = 0;

  for (i = 0; i < n; i++) {
    uint64_t eid = 0;

    if (!cas_unit_is_hook (&hash[i]))
      continue;
    hooks++;
    CHECK (cas_extents_hook_lookup (ext, &hash[i], &eid) == 1 &&
           eid == eid_of[i]);
  }
  return hooks;
}

/* The pack file offset of unit i's stored bytes (read from its record). */
static void
unit_place (const char *dir, struct cas_extents *ext, unsigned i,
            char **path, off_t *at)
{
  uint64_t loc = cas_extents_loc (ext, eid_of[i]);
  uint8_t raw[CAS_RECORD_HEADER_SIZE + CAS_UNITS_MAX * CAS_SLOT_ENTRY_SIZE];
  struct cas_record_header h;
  struct cas_extent_fields f;
  struct cas_slot_entry se[CAS_UNITS_MAX];
  uint32_t start[CAS_UNITS_MAX];
  const char *problem;
  int fd;

  if (asprintf (path, "%s/packs/pack-%08" PRIu32 ".cas", dir,
                CAS_LOC_PACK (loc)) == -1)
    die ("asprintf");
  fd = open (*path, O_RDONLY);
  if (fd == -1 ||
      pread (fd, raw, sizeof raw, CAS_LOC_OFFSET (loc)) != sizeof raw ||
      cas_record_header_decode (raw, &h) == -1 ||
      cas_extent_parse_table (&h, raw + CAS_RECORD_HEADER_SIZE,
                              sizeof raw - CAS_RECORD_HEADER_SIZE, &f, se,
                              start, &problem) == -1)
    die ("reading an extent record");
  close (fd);
  *at = CAS_LOC_OFFSET (loc) + CAS_RECORD_HEADER_SIZE + start[slot_of[i]] + 7;
}

/* fsck's record check: each damaged record must be an extent. */
static int damaged_extents, damaged_others;

static int
count_damaged (const struct cas_record_info *ri, void *opaque)
{
  (void) opaque;
  if ((int) ri->type == CAS_RECORD_EXTENT)
    damaged_extents++;
  else
    damaged_others++;
  return 0;
}

static void
check_records (struct cas_store *st, bool full, int want)
{
  damaged_extents = damaged_others = 0;
  CHECK (cas_store_check_records (st, full, count_damaged, NULL) == want);
  CHECK (damaged_extents == want && damaged_others == 0);
}

static void
remove_cache (const char *dir)
{
  char *p;

  if (asprintf (&p, "%s/index", dir) == -1)
    die ("asprintf");
  if (unlink (p) == -1)
    die ("removing the index cache");
  free (p);
}

static void
flip_byte (const char *path, off_t at)
{
  int fd = open (path, O_RDWR);
  uint8_t b;

  if (fd == -1 || pread (fd, &b, 1, at) != 1)
    die (path);
  b ^= 0x40;
  if (pwrite (fd, &b, 1, at) != 1)
    die (path);
  close (fd);
}

/* Readers while a writer adds: every unit added so far reads back,
 * across its extent's move from pending to appended.
 */
#define RACE_UNITS 3000
static struct {
  struct cas_extents *ext;
  uint64_t eid[RACE_UNITS];
  unsigned slot[RACE_UNITS];
  atomic_uint added;
  atomic_bool done;
  atomic_uint bad, reads;
} race;

static void *
race_reader (void *arg)
{
  static __thread uint8_t buf[U];
  uint64_t x = (uintptr_t) arg * 7919 + 1;

  while (!atomic_load (&race.done)) {
    unsigned n = atomic_load (&race.added), i;

    if (n == 0)
      continue;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    /* The newest units most often: they are the ones changing state. */
    i = x % 2 ? n - 1 - (unsigned) (x >> 8) % (n < 20 ? n : 20)
      : (unsigned) (x >> 8) % n;
    if (cas_extents_read (race.ext, race.eid[i], race.slot[i], 1, 0, U, buf,
                          CAS_VERIFY_CHECKSUM) == -1 ||
        memcmp (buf, data[i % NUNITS], U) != 0)
      atomic_fetch_add (&race.bad, 1);
    atomic_fetch_add (&race.reads, 1);
  }
  return NULL;
}

static void
check_race (struct cas_extents *ext)
{
  struct cas_extent_appender *a = cas_extent_appender_new (ext);
  pthread_t t[2];
  unsigned i;

  race.ext = ext;
  atomic_store (&race.added, 0);
  atomic_store (&race.done, false);
  atomic_store (&race.bad, 0);
  atomic_store (&race.reads, 0);
  for (i = 0; i < 2; i++)
    if (pthread_create (&t[i], NULL, race_reader, (void *) (uintptr_t) i))
      die ("pthread_create");
  for (i = 0; i < RACE_UNITS && a; i++) {
    if (cas_extent_appender_add (a, &hash[i % NUNITS], data[i % NUNITS],
                                 &race.eid[i], &race.slot[i]) == -1)
      break;
    atomic_store (&race.added, i + 1);
    if (i % 37 == 0)
      CHECK (cas_extent_appender_flush (a) == 0);
  }
  CHECK (i == RACE_UNITS);
  CHECK (cas_extent_appender_free (a) == 0);
  /* On a loaded machine the writer can finish before a reader ran once:
   * the readers read at least once (then only appended units) before
   * they stop.
   */
  while (atomic_load (&race.reads) == 0)
    sched_yield ();
  atomic_store (&race.done, true);
  for (i = 0; i < 2; i++)
    pthread_join (t[i], NULL);
  CHECK (atomic_load (&race.bad) == 0);
  CHECK (atomic_load (&race.reads) > 0);
  printf ("[%s] %u reads beside %u adds\n", codec_name,
          atomic_load (&race.reads), RACE_UNITS);
}

/* gc's primitives on the table: only the current location moves or
 * goes.  Extents a and b are intact and appended.
 */
static void
check_gc_primitives (struct cas_extents *ext, uint64_t a, uint64_t b,
                     unsigned a_unit)
{
  static uint8_t buf[U];
  uint64_t la = cas_extents_loc (ext, a), lb = cas_extents_loc (ext, b);
  struct cas_extents_stats s0, s1;

  CHECK (la != 0 && lb != 0 && la != lb);
  CHECK (cas_extents_is_current (ext, a, la));
  CHECK (!cas_extents_is_current (ext, a, lb));
  CHECK (cas_extents_max_eid (ext) >= a && cas_extents_max_eid (ext) >= b);
  /* Not from where it is not. */
  cas_extents_relocate (ext, a, lb, lb + 8);
  CHECK (cas_extents_loc (ext, a) == la);
  cas_extents_drop (ext, a, lb);
  CHECK (cas_extents_loc (ext, a) == la);
  /* Moved onto b's record: a read finds another extent there.  a's
   * slot table is cached first (by a read): after the move the read uses
   * the table at the new place (which names b), not the cached one (whose
   * CRCs would fail on b's units: EIO too, for the wrong reason).
   */
  CHECK (cas_extents_read (ext, a, slot_of[a_unit], 1, 0, U, buf,
                           CAS_VERIFY_CHECKSUM) == 0);
  cas_extents_relocate (ext, a, la, lb);
  CHECK (cas_extents_loc (ext, a) == lb && cas_extents_is_current (ext, a, lb));
  quiet = true;
  CHECK (cas_extents_read (ext, a, 0, 1, 0, U, buf, CAS_VERIFY_CHECKSUM) == -1
         && errno == EIO && strstr (last_error, "another extent") != NULL);
  quiet = false;
  cas_extents_relocate (ext, a, lb, la);
  CHECK (cas_extents_read (ext, a, slot_of[a_unit], 1, 0, U, buf,
                           CAS_VERIFY_CHECKSUM) == 0 &&
         memcmp (buf, data[a_unit], U) == 0);
  /* Dropped: missing, one extent fewer. */
  cas_extents_stats (ext, &s0);
  cas_extents_drop (ext, a, la);
  cas_extents_stats (ext, &s1);
  CHECK (cas_extents_loc (ext, a) == 0 && !cas_extents_is_current (ext, a, la));
  CHECK (s1.extents == s0.extents - 1 && s1.units < s0.units);
  quiet = true;
  CHECK (cas_extents_read (ext, a, 0, 1, 0, U, buf, CAS_VERIFY_CHECKSUM) == -1
         && errno == ENOENT);
  quiet = false;
}

/* Descriptors whose runs are read together (their slot tables cached by
 * the reads before): an extent's units around a unit of another extent
 * (one pread over a gap), the end of one extent and the start of the
 * next (consecutive records), whole, partial, unaligned.  With bad >= 0,
 * unit bad is damaged: a read touching it is EIO and leaves the buffer
 * zero, the others read right.
 */
static void
check_desc_groups (struct cas_extents *ext, int bad)
{
  static const struct { unsigned nruns, run[3][3]; } shapes[] = {
    /* (extent index, slot, count) */
    { 3, { { 0, 0, 5 }, { 1, 4, 1 }, { 0, 6, 10 } } },
    { 2, { { 0, 14, 2 }, { 1, 0, 14 } } },
    { 2, { { 1, 10, 6 }, { 2, 0, 10 } } },
  };
  static const uint32_t reads[][2] = {
    { 0, 16 * U }, { 3 * U + 5, 9 * U }, { U - 1, 2 }, { 5 * U, U },
    { 6 * U - 7, 2 * U }, { 13 * U, 3 * U },
  };
  static uint8_t want[16 * U], buf[16 * U];
  unsigned k, i, j;

  for (k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
    struct cas_desc d = { .nruns = shapes[k].nruns };
    struct cas_hash dh;
    int at[16];                 /* the unit at each position */
    unsigned pos = 0;

    for (i = 0; i < d.nruns; i++) {
      unsigned e = shapes[k].run[i][0], slot = shapes[k].run[i][1];
      unsigned count = shapes[k].run[i][2];

      d.run[i] = (struct cas_run) { eid_of[16 * e], slot, count };
      for (j = 0; j < count; j++, pos++) {
        at[pos] = 16 * e + slot + j;
        memcpy (want + pos * U, data[at[pos]], U);
      }
    }
    cas_desc_encode (&d, &dh);
    for (i = 0; i < sizeof reads / sizeof reads[0]; i++) {
      uint32_t off = reads[i][0], len = reads[i][1];
      bool hit = false;
      int r;

      for (j = off / U; j <= (off + len - 1) / U; j++)
        hit |= at[j] == bad;
      memset (buf, 0xff, len);
      quiet = hit;
      r = cas_desc_read (ext, &dh, 16 * U, off, len, buf,
                         CAS_VERIFY_CHECKSUM);
      quiet = false;
      if (hit) {
        static const uint8_t zero[16 * U];
        CHECK (r == -1 && errno == EIO && memcmp (buf, zero, len) == 0);
      }
      else
        CHECK (r == 0 && memcmp (buf, want + off, len) == 0);
      if (hit ? r != -1 : r != 0 || memcmp (buf, want + off, len) != 0)
        fprintf (stderr, "  shape %u, bytes %" PRIu32 "+%" PRIu32 "\n", k,
                 off, len);
    }
  }
}

static void
run (const char *codec)
{
  char dir[] = "/tmp/test-extents-XXXXXX";
  struct cas_open_options co = { .format = CAS_FORMAT_VERSION_UNITS };
  struct cas_extents_stats s1, s2;
  struct cas_extent_appender *a;
  struct cas_extents *ext;
  struct cas_store *st;
  static uint8_t buf[CAS_V4_MAX_BLOCKSIZE];
  char *path, cmd[64];
  off_t at;
  unsigned i, hooks, damaged;
  uint64_t old_max;
  bool stored;

  codec_name = codec;
  if (mkdtemp (dir) == NULL)
    die ("mkdtemp");
  quiet = false;
  if (cas_compression_parse ("test", codec, &co.compression) == -1 ||
      cas_store_create_opts (dir, 0, &co) == -1)
    die ("create");
  st = open_store (dir, CAS_VERIFY_CHECKSUM);
  CHECK (cas_store_format_version (st) == CAS_FORMAT_VERSION_UNITS);
  ext = cas_packstore_extents (cas_store_chunks (st));
  CHECK (ext != NULL);
  if (ext == NULL)
    exit (1);

  /* Added units read back at once (pending), then appended. */
  a = cas_extent_appender_new (ext);
  CHECK (a != NULL && cas_extent_appender_room (a) == CAS_UNITS_MAX);
  for (i = 0; i < NUNITS; i++) {
    CHECK (cas_extent_appender_add (a, &hash[i], data[i], &eid_of[i],
                                    &slot_of[i]) == 0);
    CHECK (slot_of[i] == i % CAS_UNITS_MAX);
    CHECK (i % CAS_UNITS_MAX == 0 || eid_of[i] == eid_of[i - 1]);
    CHECK (i % CAS_UNITS_MAX != 0 || i == 0 || eid_of[i] == eid_of[i - 1] + 1);
    if (i == 5) {
      /* Pending: readable, and in the unit table for dedup. */
      CHECK (cas_extent_appender_room (a) == CAS_UNITS_MAX - 6);
      check_reads (ext, 6, CAS_VERIFY_FULL);
      check_slot_tables (ext, 6);
    }
  }
  CHECK (eid_of[0] >= CAS_GROUP_EXTENTS);   /* group 0 is never used */
  check_reads (ext, NUNITS, CAS_VERIFY_CHECKSUM);
  CHECK (cas_extent_appender_flush (a) == 0);
  CHECK (cas_extent_appender_room (a) == CAS_UNITS_MAX);
  check_reads (ext, NUNITS, CAS_VERIFY_FULL);
  check_slot_tables (ext, NUNITS);
  hooks = check_hooks (ext, NUNITS);
  CHECK (hooks > 0);
  cas_extents_stats (ext, &s1);
  CHECK (s1.extents == (NUNITS + CAS_UNITS_MAX - 1) / CAS_UNITS_MAX);
  CHECK (s1.units == NUNITS && s1.unit_bytes_raw == (uint64_t) NUNITS * U);
  CHECK (strcmp (codec, "off") == 0 ?
         s1.unit_bytes_stored == s1.unit_bytes_raw :
         s1.unit_bytes_stored < s1.unit_bytes_raw * 3 / 4);
  CHECK (s1.hooks == hooks && s1.max_eid == eid_of[NUNITS - 1]);

  /* A block descriptor: slots 2..5 of the first extent, two zero units,
   * 10 units of the second extent from slot 3.
   */
  {
    struct cas_desc d = { .nruns = 3 };
    struct cas_hash dh;
    static uint8_t want[CAS_V4_MAX_BLOCKSIZE];

    d.run[0] = (struct cas_run) { eid_of[0], 2, 4 };
    d.run[1] = (struct cas_run) { 0, 0, 2 };
    d.run[2] = (struct cas_run) { eid_of[16], 3, 10 };
    cas_desc_encode (&d, &dh);
    memcpy (want, data[2], 4 * U);
    memset (want + 4 * U, 0, 2 * U);
    memcpy (want + 6 * U, data[19], 10 * U);
    CHECK (cas_desc_read (ext, &dh, 16 * U, 0, 16 * U, buf,
                          CAS_VERIFY_CHECKSUM) == 0 &&
           memcmp (buf, want, 16 * U) == 0);
    memset (buf, 0xff, sizeof buf);
    CHECK (cas_desc_read (ext, &dh, 16 * U, 3 * U + 5, 4 * U, buf,
                          CAS_VERIFY_FULL) == 0 &&
           memcmp (buf, want + 3 * U + 5, 4 * U) == 0);
    check_desc_groups (ext, -1);
    memset (&dh, 0, sizeof dh);         /* unmapped */
    CHECK (cas_desc_read (ext, &dh, 16 * U, 0, 100, buf,
                          CAS_VERIFY_CHECKSUM) == 0 &&
           buf[0] == 0 && buf[99] == 0);
    dh.b[0] = 7;                        /* damaged */
    quiet = true;
    CHECK (cas_desc_read (ext, &dh, 16 * U, 0, 100, buf,
                          CAS_VERIFY_CHECKSUM) == -1 && errno == EIO);
    /* No such extent. */
    CHECK (cas_extents_read (ext, s1.max_eid + 1000, 0, 1, 0, U, buf,
                             CAS_VERIFY_CHECKSUM) == -1 && errno == ENOENT);
    quiet = false;
  }

  /* A format-4 store takes no data chunk (gc: test-cas-v4-gc.py). */
  quiet = true;
  CHECK (cas_store_chunks (st)->ops->put (cas_store_chunks (st), &hash[0],
                                          CAS_CHUNK_DATA, data[0], U,
                                          &stored) == -1 && errno == EINVAL);
  quiet = false;

  CHECK (cas_extent_appender_free (a) == 0);
  CHECK (cas_store_close (st) == 0);

  /* Reopened: the table and the hooks come from the index cache. */
  st = open_store (dir, CAS_VERIFY_CHECKSUM);
  ext = cas_packstore_extents (cas_store_chunks (st));
  cas_extents_stats (ext, &s2);
  CHECK (s2.open_tables_read == 0 && s2.cache_extents == s1.extents);
  CHECK (s2.extents == s1.extents && s2.units == s1.units &&
         s2.unit_bytes_stored == s1.unit_bytes_stored &&
         s2.hooks == s1.hooks && s2.max_eid == s1.max_eid);
  /* The last extent holds 8 units: a first read of 10 whole units from
   * its slot 0 brings the bytes past its table with the table (where 16
   * raw units would be), finds 8 slots: ENOENT, and none of those bytes
   * is left in the buffer.
   */
  {
    static const uint8_t zero[10 * U];

    memset (buf, 0xff, 10 * U);
    quiet = true;
    CHECK (cas_extents_read (ext, eid_of[NUNITS - 1], 0, 10, 0, 10 * U, buf,
                             CAS_VERIFY_CHECKSUM) == -1 && errno == ENOENT &&
           memcmp (buf, zero, 10 * U) == 0);
    quiet = false;
  }
  check_reads (ext, NUNITS, CAS_VERIFY_FULL);
  check_slot_tables (ext, NUNITS);      /* first use: whole-record check */
  check_records (st, false, 0);
  check_records (st, true, 0);
  CHECK (check_hooks (ext, NUNITS) == hooks);
  /* New ids come from a new group. */
  old_max = s2.max_eid;
  a = cas_extent_appender_new (ext);
  {
    uint64_t eid;
    unsigned slot;

    CHECK (cas_extent_appender_add (a, &hash[0], data[0], &eid, &slot) == 0);
    CHECK (eid > old_max && eid % CAS_GROUP_EXTENTS == 0 && slot == 0);
  }
  CHECK (cas_extent_appender_free (a) == 0);

  /* Damage: one byte of unit 20's stored bytes, under a running store
   * (its extent was verified above) ...
   */
  damaged = 20;
  unit_place (dir, ext, damaged, &path, &at);
  flip_byte (path, at);
  quiet = true;
  CHECK (cas_extents_read (ext, eid_of[damaged], slot_of[damaged], 1, 0, U,
                           buf, CAS_VERIFY_CHECKSUM) == -1 && errno == EIO);
  quiet = false;
  check_desc_groups (ext, damaged);
  /* ... its neighbours still read; the extent is not offered for dedup. */
  CHECK (cas_extents_read (ext, eid_of[damaged + 1], slot_of[damaged + 1], 1,
                           0, U, buf, CAS_VERIFY_CHECKSUM) == 0 &&
         memcmp (buf, data[damaged + 1], U) == 0);
  {
    struct cas_hash hs[CAS_UNITS_MAX];
    unsigned nslots;
    uint16_t present;

    CHECK (cas_extents_slot_hashes (ext, eid_of[damaged], hs, &nslots,
                                    &present) == 0);
    CHECK (cas_extents_slot_hashes (ext, eid_of[damaged + 16], hs, &nslots,
                                    &present) == 1);
  }
  CHECK (cas_store_close (st) == 0);

  /* ... and after a reopen: found by the first use's whole check. */
  st = open_store (dir, CAS_VERIFY_CHECKSUM);
  ext = cas_packstore_extents (cas_store_chunks (st));
  {
    struct cas_hash hs[CAS_UNITS_MAX];
    unsigned nslots;
    uint16_t present;

    quiet = true;
    CHECK (cas_extents_slot_hashes (ext, eid_of[damaged], hs, &nslots,
                                    &present) == 0);
    quiet = false;
    CHECK (cas_extents_read (ext, eid_of[damaged - 1], slot_of[damaged - 1],
                             1, 0, U, buf, CAS_VERIFY_CHECKSUM) == 0 &&
           memcmp (buf, data[damaged - 1], U) == 0);
    quiet = true;
    CHECK (cas_extents_read (ext, eid_of[damaged], slot_of[damaged], 1, 5,
                             10, buf, CAS_VERIFY_OFF) == 0 ||
           strcmp (codec, "off") != 0);  /* raw: unchecked bytes come back */
    CHECK (cas_extents_read (ext, eid_of[damaged], slot_of[damaged], 1, 5,
                             10, buf, CAS_VERIFY_CHECKSUM) == -1 &&
           errno == EIO);
    quiet = false;
  }
  /* fsck's check finds it, with CRCs and with SHA-256. */
  check_records (st, false, 1);
  check_records (st, true, 1);

  /* A damaged record header in the middle of the pack: that extent is
   * lost, the scan finds the next extent record (resync) and every one
   * after it.  (The index cache would vouch for the record's place
   * without reading it, as for any record: this is the rebuild.)
   */
  free (path);
  unit_place (dir, ext, 40, &path, &at);
  at = CAS_LOC_OFFSET (cas_extents_loc (ext, eid_of[40])) + 20;
  CHECK (cas_store_close (st) == 0);
  flip_byte (path, at);
  remove_cache (dir);
  st = open_store (dir, CAS_VERIFY_CHECKSUM);
  ext = cas_packstore_extents (cas_store_chunks (st));
  quiet = true;
  CHECK (cas_extents_read (ext, eid_of[40], 0, 1, 0, U, buf,
                           CAS_VERIFY_CHECKSUM) == -1 && errno == ENOENT);
  quiet = false;
  for (i = 0; i < NUNITS; i++)
    if (i != damaged && eid_of[i] != eid_of[40])
    CHECK (cas_extents_read (ext, eid_of[i], slot_of[i], 1, 0, U, buf,
                             CAS_VERIFY_CHECKSUM) == 0 &&
           memcmp (buf, data[i], U) == 0);
  check_race (ext);
  check_gc_primitives (ext, eid_of[0], eid_of[NUNITS - 1], 0);
  CHECK (cas_store_close (st) == 0);
  free (path);

  /* nbdcas stat shows the units (make check sets NBDCAS). */
  if (getenv ("NBDCAS") && *getenv ("NBDCAS")) {
    char *stat_cmd, line[256];
    bool seen = false;
    FILE *fp;

    if (asprintf (&stat_cmd, "'%s' stat %s", getenv ("NBDCAS"), dir) == -1 ||
        (fp = popen (stat_cmd, "r")) == NULL)
      die ("nbdcas stat");
    while (fgets (line, sizeof line, fp))
      if (strncmp (line, "units:", 6) == 0 && strstr (line, " extents: "))
        seen = true;
    CHECK (pclose (fp) == 0 && seen);
    free (stat_cmd);
  }

  snprintf (cmd, sizeof cmd, "rm -rf %s", dir);
  if (system (cmd) != 0)
    die ("rm");
}

/* Open dir and check what the open took from the cache (cache_extents)
 * and how many slot tables it read, and that units 0..n-1 read back.
 */
static void
reopen_check (const char *dir, bool rebuild, uint64_t want_cached,
              uint64_t want_read, uint64_t want_extents, unsigned n)
{
  struct cas_open_options o = { .verify = CAS_VERIFY_CHECKSUM,
                                .rebuild_index = rebuild };
  struct cas_store *st;
  struct cas_extents *ext;
  struct cas_extents_stats s;

  quiet = true;                 /* a refused cache is reported */
  st = cas_store_open (dir, &o);
  quiet = false;
  if (st == NULL)
    die ("cas_store_open");
  ext = cas_packstore_extents (cas_store_chunks (st));
  cas_extents_stats (ext, &s);
  CHECK (s.cache_extents == want_cached);
  CHECK (s.open_tables_read == want_read);
  CHECK (s.extents == want_extents && s.units == n &&
         s.unit_bytes_raw == (uint64_t) n * U);
  if (s.cache_extents != want_cached || s.open_tables_read != want_read)
    fprintf (stderr, "  cached %" PRIu64 " (want %" PRIu64 "), read %"
             PRIu64 " (want %" PRIu64 ")\n", s.cache_extents, want_cached,
             s.open_tables_read, want_read);
  check_reads (ext, n, CAS_VERIFY_CHECKSUM);
  check_slot_tables (ext, n);
  check_hooks (ext, n);
  CHECK (cas_store_close (st) == 0);
}

static void
index_path (const char *dir, char *path, size_t len)
{
  snprintf (path, len, "%s/index", dir);
}

/* The index cache of a format-4 store (its extent section). */
static void
run_cache (void)
{
  char dir[] = "/tmp/test-extents-XXXXXX";
  char other[] = "/tmp/test-extents-XXXXXX";
  char ipath[64], cmd[160];
  struct cas_open_options co = { .format = CAS_FORMAT_VERSION_UNITS };
  struct cas_extent_appender *a;
  struct cas_extents *ext;
  struct cas_extents_stats s1;
  struct cas_store *st;
  struct stat sb;
  unsigned i, half = NUNITS / 2, nhooks;
  uint64_t first_extents, all_extents;
  int pipefd[2], status;
  pid_t pid;

  codec_name = "cache";
  if (mkdtemp (dir) == NULL || mkdtemp (other) == NULL)
    die ("mkdtemp");
  if (cas_store_create_opts (dir, 0, &co) == -1 ||
      cas_store_create_opts (other, 0, &co) == -1)
    die ("create");
  index_path (dir, ipath, sizeof ipath);

  /* Half the units, a clean close: the cache is saved. */
  st = open_store (dir, CAS_VERIFY_CHECKSUM);
  ext = cas_packstore_extents (cas_store_chunks (st));
  a = cas_extent_appender_new (ext);
  for (i = 0; i < half; i++)
    CHECK (cas_extent_appender_add (a, &hash[i], data[i], &eid_of[i],
                                    &slot_of[i]) == 0);
  CHECK (cas_extent_appender_free (a) == 0);
  cas_extents_stats (ext, &s1);
  first_extents = s1.extents;
  CHECK (first_extents == (half + CAS_UNITS_MAX - 1) / CAS_UNITS_MAX);
  CHECK (cas_store_close (st) == 0);
  CHECK (stat (ipath, &sb) == 0);

  /* Reopened from the cache: no slot table read. */
  reopen_check (dir, false, first_extents, 0, first_extents, half);
  /* fsck's way (rebuild_index): every record's table, no cache. */
  reopen_check (dir, true, 0, first_extents, first_extents, half);

  /* The other half appended and synced by a process that dies without
   * closing (no cache saved): the next open takes the old cache and
   * scans past what it covers.
   */
  if (pipe (pipefd) == -1)
    die ("pipe");
  pid = fork ();
  if (pid == -1)
    die ("fork");
  if (pid == 0) {
    struct chunkstore *cs;

    close (pipefd[0]);
    st = open_store (dir, CAS_VERIFY_CHECKSUM);
    cs = cas_store_chunks (st);
    ext = cas_packstore_extents (cs);
    a = cas_extent_appender_new (ext);
    for (i = half; i < NUNITS; i++)
      if (cas_extent_appender_add (a, &hash[i], data[i], &eid_of[i],
                                   &slot_of[i]) == -1)
        _exit (1);
    if (cas_extent_appender_flush (a) == -1 || cs->ops->sync (cs) == -1 ||
        write (pipefd[1], eid_of, sizeof eid_of) != sizeof eid_of ||
        write (pipefd[1], slot_of, sizeof slot_of) != sizeof slot_of)
      _exit (1);
    _exit (0);                  /* kill -9 alike: no close */
  }
  close (pipefd[1]);
  if (read (pipefd[0], eid_of, sizeof eid_of) != sizeof eid_of ||
      read (pipefd[0], slot_of, sizeof slot_of) != sizeof slot_of)
    die ("reading the child's extent ids");
  close (pipefd[0]);
  if (waitpid (pid, &status, 0) != pid)
    die ("waitpid");
  CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
  all_extents = first_extents +
    (NUNITS - half + CAS_UNITS_MAX - 1) / CAS_UNITS_MAX;
  reopen_check (dir, false, first_extents, all_extents - first_extents,
                all_extents, NUNITS);
  /* That close saved a cache of everything. */
  reopen_check (dir, false, all_extents, 0, all_extents, NUNITS);

  /* A damaged cache (a byte of its hooks, then of its extent table)
   * and a truncated one are refused: everything is rescanned.  Each
   * close saves a good one again.
   */
  CHECK (stat (ipath, &sb) == 0);
  flip_byte (ipath, sb.st_size - 4);
  reopen_check (dir, false, 0, all_extents, all_extents, NUNITS);
  reopen_check (dir, false, all_extents, 0, all_extents, NUNITS);
  for (i = 0, nhooks = 0; i < NUNITS; i++)
    nhooks += cas_unit_is_hook (&hash[i]);
  flip_byte (ipath, sb.st_size - 8 * nhooks - 16 * all_extents + 16 * 2 + 9);
  reopen_check (dir, false, 0, all_extents, all_extents, NUNITS);
  if (truncate (ipath, sb.st_size - 8) == -1)
    die ("truncate");
  reopen_check (dir, false, 0, all_extents, all_extents, NUNITS);

  /* Another store's cache (its UUID differs) is refused. */
  st = open_store (other, CAS_VERIFY_CHECKSUM);
  ext = cas_packstore_extents (cas_store_chunks (st));
  a = cas_extent_appender_new (ext);
  {
    uint64_t eid;
    unsigned slot;

    CHECK (cas_extent_appender_add (a, &hash[0], data[0], &eid,
                                    &slot) == 0);
  }
  CHECK (cas_extent_appender_free (a) == 0);
  CHECK (cas_store_close (st) == 0);
  snprintf (cmd, sizeof cmd, "cp %s/index %s", other, ipath);
  if (system (cmd) != 0)
    die ("cp");
  reopen_check (dir, false, 0, all_extents, all_extents, NUNITS);
  reopen_check (dir, false, all_extents, 0, all_extents, NUNITS);

  snprintf (cmd, sizeof cmd, "rm -rf %s %s", dir, other);
  if (system (cmd) != 0)
    die ("rm");
}

/* The extent id reservation (DIR/extent-ids): a process hands out ids
 * in two groups (the newest extent alone in the second) and dies without
 * closing; the newest record is then lost (the pack cut before it).  The
 * next open must hand out ids beyond every one handed out before, though
 * the highest id found is in the first group.  A damaged file refuses a
 * writable open (a read-only one works).
 */
static void
run_id_reservation (void)
{
  char dir[] = "/tmp/test-extents-ids-XXXXXX";
  struct cas_open_options co = { .format = CAS_FORMAT_VERSION_UNITS };
  struct cas_open_options ro = { .readonly = true };
  struct cas_extent_appender *a;
  struct cas_extents *ext;
  struct cas_store *st;
  uint64_t got[2], eid, newest, loc;
  unsigned slot;
  int pipefd[2], status, fd;
  char *path, cmd[64];
  uint8_t byte;
  pid_t pid;

  codec_name = "extent-ids";
  if (mkdtemp (dir) == NULL)
    die ("mkdtemp");
  if (cas_store_create_opts (dir, 0, &co) == -1)
    die ("create");
  if (pipe (pipefd) == -1)
    die ("pipe");
  pid = fork ();
  if (pid == -1)
    die ("fork");
  if (pid == 0) {
    struct cas_extent_appender *a1, *a2;
    struct chunkstore *cs;

    close (pipefd[0]);
    st = open_store (dir, CAS_VERIFY_CHECKSUM);
    cs = cas_store_chunks (st);
    ext = cas_packstore_extents (cs);
    a1 = cas_extent_appender_new (ext);
    a2 = cas_extent_appender_new (ext);
    if (a1 == NULL || a2 == NULL ||
        cas_extent_appender_add (a1, &hash[0], data[0], &eid, &slot) == -1 ||
        cas_extent_appender_flush (a1) == -1 ||
        cas_extent_appender_add (a2, &hash[1], data[1], &newest,
                                 &slot) == -1 ||
        cas_extent_appender_flush (a2) == -1 || cs->ops->sync (cs) == -1)
      _exit (1);
    got[0] = newest;
    got[1] = cas_extents_loc (ext, newest);
    if (write (pipefd[1], got, sizeof got) != sizeof got)
      _exit (1);
    _exit (0);                  /* kill -9 alike: no close */
  }
  close (pipefd[1]);
  if (read (pipefd[0], got, sizeof got) != sizeof got)
    die ("reading the child's extent id");
  close (pipefd[0]);
  if (waitpid (pid, &status, 0) != pid)
    die ("waitpid");
  CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
  newest = got[0];
  loc = CAS_LOC_PLAIN (got[1]);
  CHECK (loc != 0 && newest % CAS_GROUP_EXTENTS == 0);

  /* The newest record lost: the pack cut just before it. */
  if (asprintf (&path, "%s/packs/pack-%08" PRIu32 ".cas", dir,
                CAS_LOC_PACK (loc)) == -1)
    die ("asprintf");
  CHECK (truncate (path, CAS_LOC_OFFSET (loc)) == 0);
  free (path);

  st = open_store (dir, CAS_VERIFY_CHECKSUM);
  ext = cas_packstore_extents (cas_store_chunks (st));
  CHECK (cas_extents_max_eid (ext) < newest);
  a = cas_extent_appender_new (ext);
  CHECK (a != NULL &&
         cas_extent_appender_add (a, &hash[2], data[2], &eid, &slot) == 0);
  CHECK (eid > newest);
  CHECK (cas_extent_appender_free (a) == 0);
  CHECK (cas_store_close (st) == 0);

  /* A damaged file: no writable open, a read-only one works. */
  if (asprintf (&path, "%s/extent-ids", dir) == -1)
    die ("asprintf");
  fd = open (path, O_RDWR);
  CHECK (fd != -1);
  CHECK (pread (fd, &byte, 1, 16) == 1);
  byte ^= 0x40;
  CHECK (pwrite (fd, &byte, 1, 16) == 1);
  close (fd);
  free (path);
  quiet = true;
  st = cas_store_open (dir, &(struct cas_open_options) {
      .verify = CAS_VERIFY_CHECKSUM });
  quiet = false;
  CHECK (st == NULL && strstr (last_error, "extent-ids") != NULL);
  if (st)
    cas_store_close (st);
  st = cas_store_open (dir, &ro);
  CHECK (st != NULL);
  if (st)
    CHECK (cas_store_close (st) == 0);

  snprintf (cmd, sizeof cmd, "rm -rf %s", dir);
  if (system (cmd) != 0)
    die ("rm");
}

int
main (void)
{
  make_units ();
  run ("off");
  run ("lz4");
  run ("zstd");
  run_cache ();
  run_id_reservation ();
  if (failures) {
    fprintf (stderr, "test-extents: %d checks failed\n", failures);
    return 1;
  }
  printf ("test-extents: all checks passed\n");
  return 0;
}
