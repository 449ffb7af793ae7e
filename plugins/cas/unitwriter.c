/* The unit writer of a format-4 store: see unitwriter.h for the contract,
 * and the lead's plan ("Writing a block") and FORMAT.md ("Writing a
 * block") for the algorithm.
 *
 * A block is stored in these steps:
 *  1. classify (outside the lock): a unit no sector of which was written
 *     keeps its old reference; a unit written in part is completed from
 *     the old content; an all-zero unit is a zero unit; every other unit
 *     is hashed.
 *  2. the old content first, by position: a hashed unit equal to the old
 *     unit at its position keeps that reference (and a zero unit whose
 *     old unit is a stored zero unit keeps it), so a block rewritten
 *     mostly unchanged keeps its runs -- unless the extent was found
 *     damaged: the same bytes written again heal the block.  What the
 *     old units are comes from
 *     the slot tables of the old descriptor's extents: read (into the
 *     cache) when the whole block was written; when some units are kept
 *     (a small write), only while such reads pay (small_write_reads):
 *     random 4 KiB writes of new data soon read nothing.
 *  3. the other hashed units are looked up in the cache (the slot tables
 *     of the groups this writer loaded, filled or read lately; the old
 *     descriptor's extents are among them): of every place a unit is
 *     known, the one whose run goes on longest in the block wins (ties:
 *     the one that continues the previous unit's run), so a block stored
 *     as 16 copies of one unit is found again as one run.  Units still
 *     missing that are hooks vote for the groups holding them, the two
 *     groups with the most votes are loaded whole, and the lookup is
 *     tried again.  Units still missing then: the data likely goes on
 *     where the last reference found left off (a hookless block at the
 *     start of a group of the earlier stream): the group of the extent
 *     after it (or the next group, if that one is loaded whole) is
 *     loaded, once, and the lookup tried again.
 *  4. check every reference found in step 3 (a new reference) against
 *     the extent store without a read: the extent's dedup stamp
 *     (cas_extents_dedup_stamp: checked in this process, not damaged, not
 *     in a pack a collection sealed, and the record not moved since its
 *     table was cached); a stamp that changed costs a read of the table.
 *     References kept at their position (step 2) are not new: no check.
 *  5. the missing units are added one after the other (a unit that
 *     occurs twice added twice, so that they stay one run); if they do
 *     not fit the open extent's room, a new extent is started first, so
 *     that they are one run (align).  Done if the block fits a
 *     descriptor.
 *  6. else the partial fallback: of the block's runs, the ones to keep
 *     are chosen (a small dynamic programme over at most 16 runs: keep
 *     the most units within 5 runs, the others stored fresh and
 *     consecutively, in one extent); units kept from the old content that
 *     must be stored again are read and hashed outside the lock.
 * Steps 2 to 6 (but the fallback's reading) run under the writer's lock.
 *
 * The cache: CACHE_GROUPS groups (64 extents, up to 1024 units each),
 * least recently used first out.  A group enters the cache when it is
 * loaded (every extent of it that the extent store offers for dedup),
 * when an extent of it is an old descriptor's (that extent only), or
 * when this writer adds a unit to one of its extents.  A group keeps its
 * extents' slot tables, the dedup stamp each was cached under, and an
 * open-addressing index from a unit's hash to its first slot: 38 KiB a
 * group, at most 304 KiB a writer (a writable volume), allocated as
 * groups are first used.
 *
 * Another writer's extent still being filled is never referenced: only
 * its own flush makes it durable, and a volume's flush flushes its own
 * writer only.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cleanup.h"
#include "lockrank.h"
#include "unitwriter.h"

/* Sectors per unit (the write-back cache tracks 512-byte sectors). */
#define UW_SECTOR 512u
#define SECTORS_PER_UNIT (CAS_UNIT_SIZE / UW_SECTOR)
#define GROUP_UNITS (CAS_GROUP_EXTENTS * CAS_UNITS_MAX)
#define GROUP_BUCKETS (2 * GROUP_UNITS)           /* a power of two */
#define CACHE_GROUPS 8
/* Groups loaded through hooks per block (the plan: the top two). */
#define LOAD_PER_BLOCK 2
/* Groups after the last reference found tried by lookup_next_group. */
#define SEQ_AHEAD 4
/* Groups lookup_next_group remembers having tried (not tried again). */
#define SEQ_TRIED 64
/* Copies of one unit in a group weighed per lookup (a unit stored
 * thousands of times costs a bounded look).
 */
#define MAX_CANDIDATES 64

struct uw_group {
  bool valid;
  bool whole;                   /* loaded whole (through a hook) */
  bool useful;                  /* a lookup found a unit in it */
  uint64_t g;                   /* group number (cas_extent_group) */
  uint64_t used;                /* LRU stamp */
  uint16_t present[CAS_GROUP_EXTENTS];  /* slots known, per extent */
  /* The dedup stamp the extent's slots were known under; 0: none. */
  uint64_t stamp[CAS_GROUP_EXTENTS];
  struct cas_hash *h;           /* [GROUP_UNITS]: extent x, slot s at
                                   x * CAS_UNITS_MAX + s */
  uint16_t *idx;                /* [GROUP_BUCKETS]: position + 1, 0 empty */
  uint16_t *next;               /* [GROUP_UNITS]: the next position of the
                                   same unit + 1, 0 none */
};

struct cas_unit_writer {
  struct cas_extents *ext;      /* const */
  uint32_t bs, units;           /* const */
  enum cas_verify verify;       /* const */
  char *name;                   /* const: the volume's, for messages */
  struct cas_hash zero_hash;    /* const: of an all-zero unit */
  struct ranked_mutex lock;     /* everything below */
  struct cas_extent_appender *app;
  uint64_t open_eid;            /* the appender's open extent, 0 none */
  uint64_t clock;               /* LRU stamps */
  struct uw_group group[CACHE_GROUPS];
  /* Counters, for the debug line at free. */
  uint64_t stored_blocks, kept_units, zero_units, hashed_units;
  /* Small writes that read the old tables, and of them those that kept
   * a unit by position (see small_write_reads).
   */
  uint32_t small_reads, small_hits, small_skips;
  uint64_t same_pos, cache_hits, hook_hits, added_units, fallbacks,
    restored_units, stale_refs, group_loads, tables_read, seq_hits;
  /* Sequential locality (lookup_next_group): the last new reference
   * found (0 none), and the groups tried lately (0 none).
   */
  uint64_t seq_eid, seq_tried[SEQ_TRIED];
  unsigned seq_next;                    /* seq_tried's next place */
};

/* What step 1 made of a unit of the block. */
enum unit_kind { UNIT_KEEP, UNIT_ZERO, UNIT_DATA };

struct unit {
  enum unit_kind kind;
  bool found;                   /* UNIT_DATA: eid/slot hold a reference */
  bool check;                   /* a new reference: check it (step 4) */
  bool add;                     /* to be added (steps 5 and 6) */
  struct cas_hash h;            /* UNIT_DATA */
  const uint8_t *bytes;         /* UNIT_DATA: the raw unit */
  uint64_t eid;                 /* the reference; 0 for a zero unit */
  uint8_t slot;
};

/* The reference of the unit before u[i], if it has one: the slot after
 * it is where a continuation of its run would be.
 */
static bool
prev_ref (const struct unit *u, unsigned i, uint64_t *eid, unsigned *slot)
{
  if (i == 0 || u[i - 1].eid == 0 ||
      (u[i - 1].kind == UNIT_DATA && !u[i - 1].found))
    return false;
  *eid = u[i - 1].eid;
  *slot = u[i - 1].slot + 1;
  return *slot < CAS_UNITS_MAX;
}

/* ---- the cache ---- */

static uint32_t
bucket_of (const struct cas_hash *h)
{
  uint32_t v;

  memcpy (&v, h->b, sizeof v);
  return v & (GROUP_BUCKETS - 1);
}

/* Hash h's first position in grp, or -1. */
static int
group_find (const struct uw_group *grp, const struct cas_hash *h)
{
  uint32_t i;

  for (i = bucket_of (h);; i = (i + 1) & (GROUP_BUCKETS - 1)) {
    uint16_t k = grp->idx[i];
    if (k == 0)
      return -1;
    if (cas_hash_equal (&grp->h[k - 1], h))
      return k - 1;
  }
}

static void
group_insert (struct uw_group *grp, const struct cas_hash *h, uint64_t eid,
              unsigned slot)
{
  unsigned x = eid - grp->g * CAS_GROUP_EXTENTS, pos = x * CAS_UNITS_MAX + slot;
  uint32_t i;

  if (grp->present[x] >> slot & 1)
    return;                     /* known already (slots never change) */
  grp->present[x] |= 1u << slot;
  grp->h[pos] = *h;
  grp->next[pos] = 0;
  /* The index names a unit's first position, the others are chained. */
  for (i = bucket_of (h);; i = (i + 1) & (GROUP_BUCKETS - 1)) {
    uint16_t k = grp->idx[i];
    if (k == 0)
      break;
    if (cas_hash_equal (&grp->h[k - 1], h)) {
      while (grp->next[k - 1])
        k = grp->next[k - 1];
      grp->next[k - 1] = pos + 1;
      return;
    }
  }
  grp->idx[i] = pos + 1;
}

/* Does grp know slot s of its extent x to hold h? */
static bool
group_holds (const struct uw_group *grp, unsigned x, unsigned s,
             const struct cas_hash *h)
{
  return s < CAS_UNITS_MAX && grp->present[x] >> s & 1 &&
    cas_hash_equal (&grp->h[x * CAS_UNITS_MAX + s], h);
}

static struct uw_group *
cache_group (struct cas_unit_writer *w, uint64_t g)
{
  unsigned i;

  for (i = 0; i < CACHE_GROUPS; i++)
    if (w->group[i].valid && w->group[i].g == g)
      return &w->group[i];
  return NULL;
}

/* A cleared cache place for group g (the least recently used one goes);
 * NULL with errno if memory for it cannot be had.
 */
static struct uw_group *
cache_take (struct cas_unit_writer *w, uint64_t g)
{
  struct uw_group *grp = &w->group[0];
  unsigned i;

  for (i = 0; i < CACHE_GROUPS; i++) {
    struct uw_group *c = &w->group[i];
    if (!c->valid) {
      grp = c;
      break;
    }
    if (c->used < grp->used)
      grp = c;
  }
  if (grp->h == NULL) {
    grp->h = malloc (GROUP_UNITS * sizeof *grp->h);
    grp->idx = malloc (GROUP_BUCKETS * sizeof *grp->idx);
    grp->next = malloc (GROUP_UNITS * sizeof *grp->next);
    if (grp->h == NULL || grp->idx == NULL || grp->next == NULL) {
      free (grp->h);
      free (grp->idx);
      free (grp->next);
      grp->h = NULL;
      grp->idx = NULL;
      grp->next = NULL;
      grp->valid = false;
      return NULL;
    }
  }
  memset (grp->idx, 0, GROUP_BUCKETS * sizeof *grp->idx);
  memset (grp->present, 0, sizeof grp->present);
  memset (grp->stamp, 0, sizeof grp->stamp);
  grp->g = g;
  grp->valid = true;
  grp->whole = false;
  grp->useful = false;
  grp->used = ++w->clock;
  return grp;
}

/* The dedup stamp of eid as this writer may use it: another writer's
 * extent still being filled is not usable (see the top).
 */
static uint64_t
usable_stamp (struct cas_unit_writer *w, uint64_t eid)
{
  uint64_t st = cas_extents_dedup_stamp (w->ext, eid);

  if (st == CAS_EXTENT_STAMP_PENDING && eid != w->open_eid)
    return 0;
  return st;
}

/* Read extent x of grp's slot table into grp (step 3's tables; step 4
 * when a stamp changed): 1 cached (under its current stamp), 0 not
 * usable (or it moved during the read: looked at again next time).  If
 * the record lost slots the cache knew (a collection copied it without
 * them), the whole group leaves the cache: 0.  Errors only lose dedup.
 */
static int
table_read (struct cas_unit_writer *w, struct uw_group *grp, unsigned x)
{
  uint64_t eid = grp->g * CAS_GROUP_EXTENTS + x;
  uint64_t before = cas_extents_loc (w->ext, eid), after;
  struct cas_hash hashes[CAS_UNITS_MAX];
  unsigned nslots = 0, s;
  uint16_t present = 0;

  if (eid == 0 ||
      cas_extents_slot_hashes (w->ext, eid, hashes, &nslots, &present) != 1)
    return 0;
  w->tables_read++;
  /* The stamp the table belongs to: the record's location before the
   * read (0 while it was pending), unchanged after it.
   */
  after = usable_stamp (w, eid);
  if (after == 0 ||
      (after == CAS_EXTENT_STAMP_PENDING ? before != 0
       : (after & ~UINT64_C (1)) != before))
    return 0;
  if (nslots > CAS_UNITS_MAX)
    nslots = CAS_UNITS_MAX;
  present &= (uint16_t) ((1u << nslots) - 1);
  if (grp->present[x] & ~present) {
    grp->valid = false;
    return 0;
  }
  for (s = 0; s < CAS_UNITS_MAX; s++)
    if (grp->present[x] >> s & 1 && !cas_hash_equal (&grp->h[x * CAS_UNITS_MAX + s], &hashes[s])) {
      grp->valid = false;
      return 0;
    }
  for (s = 0; s < nslots; s++)
    if (present >> s & 1)
      group_insert (grp, &hashes[s], eid, s);
  grp->stamp[x] = after;
  return 1;
}

/* The cached table of extent eid, if usable now: with read, read (and
 * cached) if it is not; without, only what the cache holds.  The group,
 * or NULL.
 */
static struct uw_group *
cache_table (struct cas_unit_writer *w, uint64_t eid, bool read)
{
  uint64_t g = cas_extent_group (eid);
  unsigned x = eid - g * CAS_GROUP_EXTENTS;
  struct uw_group *grp = cache_group (w, g);

  if (grp && grp->stamp[x] != 0) {
    grp->used = ++w->clock;
    if (!read || grp->stamp[x] == usable_stamp (w, eid))
      return grp;
  }
  if (!read)
    return NULL;
  if (grp == NULL && (grp = cache_take (w, g)) == NULL)
    return NULL;
  return table_read (w, grp, x) == 1 ? grp : NULL;
}

/* Load group g's slot tables into the cache: every extent of it the
 * extent store offers for dedup.  Failures only lose dedup.
 */
static void
cache_load (struct cas_unit_writer *w, uint64_t g)
{
  uint64_t max = cas_extents_max_eid (w->ext), eid;
  struct uw_group *grp = cache_group (w, g);

  if (grp == NULL && (grp = cache_take (w, g)) == NULL)
    return;
  w->group_loads++;
  grp->whole = true;
  for (eid = g * CAS_GROUP_EXTENTS;
       eid < (g + 1) * CAS_GROUP_EXTENTS && eid <= max && grp->valid; eid++) {
    unsigned x = eid - g * CAS_GROUP_EXTENTS;

    if (eid == 0 || (grp->stamp[x] && grp->stamp[x] == usable_stamp (w, eid)))
      continue;
    table_read (w, grp, x);
  }
}

/* Unit (eid, slot), named h, was just added by this writer (under the
 * caller's share of the gc gate: the record cannot have moved since).
 */
static void
cache_add_own (struct cas_unit_writer *w, const struct cas_hash *h,
               uint64_t eid, uint8_t slot)
{
  uint64_t g = cas_extent_group (eid);
  unsigned x = eid - g * CAS_GROUP_EXTENTS;
  struct uw_group *grp = cache_group (w, g);

  /* Not cached (a new group, or one evicted since): only what is added
   * from now on is known of it, which is all of it for a new group.
   */
  if (grp == NULL && (grp = cache_take (w, g)) == NULL)
    return;
  grp->used = ++w->clock;
  group_insert (grp, h, eid, slot);
  grp->stamp[x] = usable_stamp (w, eid);
}

/* ---- new, free, flush ---- */

struct cas_unit_writer *
cas_unit_writer_new (struct cas_extents *ext, uint32_t bs,
                     enum cas_verify verify, const char *name)
{
  static const uint8_t zeros[CAS_UNIT_SIZE];
  struct cas_unit_writer *w;

  if (bs == 0 || bs % CAS_UNIT_SIZE || bs / CAS_UNIT_SIZE > CAS_UNITS_MAX) {
    backend_error ("cas: volume %s: block size %" PRIu32 " is not 1 to %d "
                   "units of %u bytes", name, bs, CAS_UNITS_MAX,
                   CAS_UNIT_SIZE);
    errno = EINVAL;
    return NULL;
  }
  w = calloc (1, sizeof *w);
  if (w == NULL)
    return NULL;
  w->ext = ext;
  w->bs = bs;
  w->units = bs / CAS_UNIT_SIZE;
  w->verify = verify;
  w->name = strdup (name);
  w->app = cas_extent_appender_new (ext);
  if (w->name == NULL || w->app == NULL ||
      cas_hash_compute (zeros, sizeof zeros, &w->zero_hash) == -1) {
    int saved = errno;
    if (w->app)
      cas_extent_appender_free (w->app);
    free (w->name);
    free (w);
    errno = saved;
    return NULL;
  }
  ranked_mutex_init (&w->lock, LOCK_UNIT_WRITER);
  return w;
}

int
cas_unit_writer_flush (struct cas_unit_writer *w)
{
  RANKED_SCOPED_LOCK (&w->lock);

  if (cas_extent_appender_flush (w->app) == -1)
    return -1;
  w->open_eid = 0;
  return 0;
}

int
cas_unit_writer_free (struct cas_unit_writer *w)
{
  unsigned i;
  int r;

  if (w == NULL)
    return 0;
  r = cas_extent_appender_free (w->app);
  backend_debug ("cas: volume %s: unit writer: %" PRIu64 " blocks stored; "
                 "units: %" PRIu64 " kept, %" PRIu64 " zero, %" PRIu64
                 " hashed, %" PRIu64 " added; dedup: %" PRIu64 " same "
                 "position, %" PRIu64 " cache, %" PRIu64 " hooks, %" PRIu64
                 " next group; %" PRIu64
                 " groups loaded, %" PRIu64 " slot tables read, %" PRIu64
                 " stale references, %" PRIu64 " fallbacks (%" PRIu64
                 " units stored again)", w->name, w->stored_blocks,
                 w->kept_units, w->zero_units, w->hashed_units,
                 w->added_units, w->same_pos, w->cache_hits, w->hook_hits,
                 w->seq_hits, w->group_loads, w->tables_read, w->stale_refs, w->fallbacks,
                 w->restored_units);
  for (i = 0; i < CACHE_GROUPS; i++) {
    free (w->group[i].h);
    free (w->group[i].idx);
    free (w->group[i].next);
  }
  ranked_mutex_destroy (&w->lock);
  free (w->name);
  free (w);
  return r;
}

/* ---- storing a block ---- */

static bool
sector_written (const uint64_t *bits, uint32_t s)
{
  return bits[s / 64] >> (s % 64) & 1;
}

/* Step 1 for unit i: how many of its sectors were written (all when the
 * whole block is given).
 */
static unsigned
unit_written (const uint64_t *written, unsigned i)
{
  unsigned s, n = 0;

  if (written == NULL)
    return SECTORS_PER_UNIT;
  for (s = 0; s < SECTORS_PER_UNIT; s++)
    n += sector_written (written, i * SECTORS_PER_UNIT + s);
  return n;
}

/* The old descriptor as one reference per unit (eid 0: zero). */
static void
expand (const struct cas_desc *d, uint64_t eid[CAS_UNITS_MAX],
        uint8_t slot[CAS_UNITS_MAX])
{
  unsigned r, k, u = 0;

  for (r = 0; r < d->nruns; r++)
    for (k = 0; k < d->run[r].count && u < CAS_UNITS_MAX; k++, u++) {
      eid[u] = d->run[r].eid;
      slot[u] = d->run[r].eid ? d->run[r].slot + k : 0;
    }
}

/* Classify, and hash, unit u whose bytes are at p (no lock held). */
static int
classify (struct unit *u, const uint8_t *p)
{
  if (cas_is_zero (p, CAS_UNIT_SIZE)) {
    u->kind = UNIT_ZERO;
    u->eid = 0;
    u->slot = 0;
    return 0;
  }
  u->kind = UNIT_DATA;
  u->bytes = p;
  return cas_hash_compute (p, CAS_UNIT_SIZE, &u->h);
}

/* Step 2: units equal to the old unit at their position keep its
 * reference.  read: the old extents' tables may be read (the whole
 * block was written); else only the cache is asked.
 */
static void
keep_same_position (struct cas_unit_writer *w, struct unit *u, unsigned n,
                    const uint64_t *old_eid, const uint8_t *old_slot,
                    bool read)
{
  uint64_t asked[CAS_UNITS_MAX];
  unsigned i, j, nasked = 0;

  for (i = 0; i < n; i++) {
    const struct cas_hash *h = u[i].kind == UNIT_DATA ? &u[i].h
      : &w->zero_hash;
    struct uw_group *grp;
    bool first;

    if (u[i].kind == UNIT_KEEP || old_eid[i] == 0)
      continue;
    /* One table per extent, read at most once per block. */
    for (j = 0; j < nasked && asked[j] != old_eid[i]; j++)
      ;
    first = j == nasked;
    if (first)
      asked[nasked++] = old_eid[i];
    grp = cache_table (w, old_eid[i], read && first);
    if (grp == NULL ||
        !group_holds (grp, old_eid[i] - grp->g * CAS_GROUP_EXTENTS,
                      old_slot[i], h) ||
        cas_extents_is_damaged (w->ext, old_eid[i]))
      continue;
    /* Not a new reference: the slot held it and still does (no check,
     * but for damage: writing the same bytes again heals a block).
     */
    if (u[i].kind == UNIT_ZERO) {
      u[i].kind = UNIT_KEEP;
      w->kept_units++;
    }
    else {
      u[i].found = true;
      w->same_pos++;
    }
    u[i].check = false;
    u[i].eid = old_eid[i];
    u[i].slot = old_slot[i];
  }
}

/* Whether a small write (some units kept) may read the old extents'
 * tables for step 2.  A write that rewrites a unit with the bytes it had
 * (a re-import's partial last block) keeps its reference that way, but
 * random small writes of new data would pay a read each for nothing: so
 * the tables are read while at least 1 in 8 of the small writes that
 * read them found a unit equal at its position (the first 16 always),
 * else for 1 small write in 64, to notice a change of workload.
 */
static bool
small_write_reads (struct cas_unit_writer *w)
{
  if (w->small_reads < 16 || w->small_hits * 8 >= w->small_reads)
    return true;
  return ++w->small_skips % 64 == 0;
}

static void
small_write_read (struct cas_unit_writer *w, bool hit)
{
  w->small_reads++;
  w->small_hits += hit;
  if (w->small_reads == 256) {  /* the recent past weighs most */
    w->small_reads /= 2;
    w->small_hits /= 2;
  }
}

/* How far a run starting at unit i of the block at grp's extent x, slot
 * s goes on (units not found yet, equal slot by slot).
 */
static unsigned
run_length (const struct uw_group *grp, unsigned x, unsigned s,
            const struct unit *u, unsigned i, unsigned n)
{
  unsigned k = 0;

  while (i + k < n && u[i + k].kind == UNIT_DATA && !u[i + k].found &&
         group_holds (grp, x, s + k, &u[i + k].h))
    k++;
  return k;
}

/* Step 3: look the missing data units of the block up in the cache, in
 * order: of every place a unit is known the one whose run goes on
 * longest wins (ties: the continuation of the previous unit's run, then
 * the first found); the run's units take it at once.
 */
static unsigned
cache_pass (struct cas_unit_writer *w, struct unit *u, unsigned n)
{
  unsigned i = 0, hits = 0;

  while (i < n) {
    struct uw_group *best = NULL;
    unsigned bestx = 0, bests = 0, bestlen = 0, g, k;
    bool bestcont = false;
    uint64_t ceid = 0;
    unsigned cslot = 0;
    bool cont;

    if (u[i].kind != UNIT_DATA || u[i].found) {
      i++;
      continue;
    }
    cont = prev_ref (u, i, &ceid, &cslot);
    for (g = 0; g < CACHE_GROUPS; g++) {
      struct uw_group *grp = &w->group[g];
      int pos;
      unsigned seen = 0;

      if (!grp->valid || (pos = group_find (grp, &u[i].h)) == -1)
        continue;
      for (; pos >= 0 && seen < MAX_CANDIDATES;
           pos = (int) grp->next[pos] - 1, seen++) {
        unsigned x = pos / CAS_UNITS_MAX, s = pos % CAS_UNITS_MAX;
        unsigned len = run_length (grp, x, s, u, i, n);
        bool c = cont && grp->g * CAS_GROUP_EXTENTS + x == ceid && s == cslot;

        if (len > bestlen || (len == bestlen && c && !bestcont)) {
          best = grp, bestx = x, bests = s, bestlen = len, bestcont = c;
        }
      }
    }
    if (best == NULL) {
      i++;
      continue;
    }
    best->used = ++w->clock;
    best->useful = true;
    for (k = 0; k < bestlen; k++) {
      u[i + k].found = true;
      u[i + k].check = true;
      u[i + k].eid = best->g * CAS_GROUP_EXTENTS + bestx;
      u[i + k].slot = bests + k;
    }
    hits += bestlen;
    i += bestlen;
  }
  return hits;
}

static unsigned
missing (const struct unit *u, unsigned n)
{
  unsigned i, m = 0;

  for (i = 0; i < n; i++)
    m += u[i].kind == UNIT_DATA && !u[i].found;
  return m;
}

/* Step 3's hooks: load the top groups that hooks of missing units point
 * at, and look again.
 */
static void
lookup_hooks (struct cas_unit_writer *w, struct unit *u, unsigned n)
{
  uint64_t gs[CAS_UNITS_MAX];
  unsigned votes[CAS_UNITS_MAX], ng = 0, i, j, loaded;

  for (i = 0; i < n; i++) {
    struct uw_group *grp;
    uint64_t eid, g;

    if (u[i].kind != UNIT_DATA || u[i].found || !cas_unit_is_hook (&u[i].h) ||
        cas_extents_hook_lookup (w->ext, &u[i].h, &eid) != 1)
      continue;
    g = cas_extent_group (eid);
    if ((grp = cache_group (w, g)) != NULL && grp->whole)
      continue;                 /* looked at already: a stale hook */
    for (j = 0; j < ng && gs[j] != g; j++)
      ;
    if (j == ng) {
      gs[ng] = g;
      votes[ng++] = 0;
    }
    votes[j]++;
  }
  for (loaded = 0; loaded < LOAD_PER_BLOCK && ng > 0; loaded++) {
    unsigned best = 0;

    for (j = 1; j < ng; j++)
      if (votes[j] > votes[best])
        best = j;
    cache_load (w, gs[best]);
    gs[best] = gs[--ng];
    votes[best] = votes[ng];
  }
  if (loaded > 0)
    w->hook_hits += cache_pass (w, u, n);
}

/* Step 3's sequential locality: a block without hooks (1 in 3 blocks of
 * 16 units) that starts a group of the stream written earlier is found
 * by loading the group the data goes on into.  The bases: the last new
 * reference this block (or an earlier one) found, then the groups loaded
 * whole in the cache that a lookup found units in, the most recently
 * used first (a flush writes back from both ends of the cache at once:
 * two streams interleave).  The
 * candidates: the group of the extent after the reference, and the
 * SEQ_AHEAD groups after a base's group (another writer may have taken
 * the next one).  A block loads at most one group that held a readable
 * table (one with none cost no read: the next candidate is tried); a
 * group tried lately (SEQ_TRIED of them) is not tried again, and only a
 * group units were found in is a base, so new data costs at most
 * (1 + CACHE_GROUPS) * SEQ_AHEAD loads after old data.  A group the load could not read whole
 * (extents still being filled, unusable) is not marked whole, so that
 * hooks into it are followed.  Blocks written whole only (a copy, an
 * import): small writes of new data read nothing (see step 2).
 */
static bool
seq_was_tried (const struct cas_unit_writer *w, uint64_t g)
{
  unsigned i;

  for (i = 0; i < SEQ_TRIED; i++)
    if (w->seq_tried[i] == g)
      return true;
  return false;
}

/* Try group next: true if the block is done with speculation (a table
 * was read, or units found).
 */
static bool
seq_try (struct cas_unit_writer *w, struct unit *u, unsigned n,
         uint64_t next, uint64_t max)
{
  uint64_t reads = w->tables_read, eid;
  struct uw_group *grp;
  unsigned hits;

  if (next == 0 || next * CAS_GROUP_EXTENTS > max ||
      ((grp = cache_group (w, next)) != NULL && grp->whole) ||
      seq_was_tried (w, next))
    return false;
  w->seq_tried[w->seq_next++ % SEQ_TRIED] = next;
  cache_load (w, next);
  if ((grp = cache_group (w, next)) != NULL)
    for (eid = next * CAS_GROUP_EXTENTS;
         eid < (next + 1) * CAS_GROUP_EXTENTS && eid <= max; eid++)
      if (eid != 0 && grp->stamp[eid - next * CAS_GROUP_EXTENTS] == 0)
        grp->whole = false;
  hits = cache_pass (w, u, n);
  w->seq_hits += hits;
  return hits > 0 || w->tables_read != reads;
}

static void
lookup_next_group (struct cas_unit_writer *w, struct unit *u, unsigned n)
{
  uint64_t last = w->seq_eid, max = cas_extents_max_eid (w->ext), g;
  uint64_t base[1 + CACHE_GROUPS];
  unsigned nbase = 0, i, j, k;
  bool gap = false;

  /* The data must go on past the references found: the units missing
   * are the block's tail (a unit changed in the middle of a block is new
   * data, not a move to another group).
   */
  for (i = 0; i < n; i++) {
    if (u[i].kind != UNIT_DATA)
      continue;
    if (!u[i].found)
      gap = true;
    else if (gap)
      return;
    else if (u[i].check)
      last = u[i].eid;
  }
  if (last != 0) {
    if (seq_try (w, u, n, cas_extent_group (last + 1), max))
      return;
    base[nbase++] = cas_extent_group (last);
  }
  /* The whole groups, most recently used first. */
  for (;;) {
    struct uw_group *best = NULL;

    for (i = 0; i < CACHE_GROUPS; i++) {
      struct uw_group *c = &w->group[i];

      if (!c->valid || !c->whole || !c->useful)
        continue;
      for (j = 0; j < nbase && base[j] != c->g; j++)
        ;
      if (j == nbase && (best == NULL || c->used > best->used))
        best = c;
    }
    if (best == NULL)
      break;
    base[nbase++] = best->g;
  }
  for (j = 0; j < nbase; j++)
    for (k = 1, g = base[j]; k <= SEQ_AHEAD; k++)
      if (seq_try (w, u, n, g + k, max))
        return;
}

/* The last new reference the block found (step 3's, not checked yet:
 * only a hint): where the next block's data likely goes on.  References
 * kept by position (a volume rewritten in place) are no hint.
 */
static void
note_last_ref (struct cas_unit_writer *w, const struct unit *u, unsigned n)
{
  unsigned i;

  for (i = n; i-- > 0;)
    if (u[i].kind == UNIT_DATA && u[i].found && u[i].check) {
      w->seq_eid = u[i].eid;
      return;
    }
}

/* Step 4: check the new references against the extent store: the
 * extent's stamp as the cache has it, or else its slot table read
 * again.  A failed one is a miss.
 */
static void
check_refs (struct cas_unit_writer *w, struct unit *u, unsigned n)
{
  unsigned i;

  for (i = 0; i < n; i++) {
    uint64_t g, st;
    unsigned x;
    struct uw_group *grp;

    if (u[i].kind != UNIT_DATA || !u[i].found || !u[i].check)
      continue;
    u[i].check = false;
    g = cas_extent_group (u[i].eid);
    x = u[i].eid - g * CAS_GROUP_EXTENTS;
    st = usable_stamp (w, u[i].eid);
    grp = cache_group (w, g);
    if (st != 0 && grp && grp->stamp[x] != st)
      table_read (w, grp, x);   /* moved, or filled since: read again */
    grp = cache_group (w, g);   /* (a read may drop it) */
    if (st != 0 && grp && grp->stamp[x] == st &&
        group_holds (grp, x, u[i].slot, &u[i].h))
      continue;
    u[i].found = false;
    w->stale_refs++;
  }
}

/* The runs of the block's references: false if they are more than a
 * descriptor holds.
 */
static bool
build_runs (const struct unit *u, unsigned n, struct cas_desc *d)
{
  unsigned i;

  memset (d, 0, sizeof *d);
  for (i = 0; i < n; i++) {
    struct cas_run *last = d->nruns ? &d->run[d->nruns - 1] : NULL;

    if (last && last->eid == u[i].eid &&
        (u[i].eid == 0 || u[i].slot == last->slot + last->count) &&
        last->count < CAS_UNITS_MAX) {
      last->count++;
      continue;
    }
    if (d->nruns == CAS_DESC_MAX_RUNS)
      return false;
    d->run[d->nruns++] = (struct cas_run) {
      .eid = u[i].eid, .slot = u[i].eid ? u[i].slot : 0, .count = 1,
    };
  }
  return true;
}

/* Stand-in extent ids for units not added yet: the open extent, and the
 * next one (above any real id: ids have 40 bits).
 */
#define VIRTUAL_OPEN UINT64_C (0xFFFFFFFFFFFFFFFE)
#define VIRTUAL_NEXT UINT64_C (0xFFFFFFFFFFFFFFFF)

static unsigned
to_add (const struct unit *u, unsigned n)
{
  unsigned i, k = 0;

  for (i = 0; i < n; i++)
    k += u[i].add;
  return k;
}

/* Align (step 5): the units to add go to a new extent if they do not fit
 * the open one's room (so they are one run).
 */
static bool
needs_fresh_extent (const struct cas_unit_writer *w, const struct unit *u,
                    unsigned n)
{
  return to_add (u, n) > cas_extent_appender_room (w->app);
}

/* Would the block fit a descriptor if the units marked add were added
 * one after the other (after a new extent is started, if fresh)?
 */
static bool
would_fit (const struct cas_unit_writer *w, const struct unit *u, unsigned n,
           bool fresh)
{
  struct unit v[CAS_UNITS_MAX];
  struct cas_desc d;
  unsigned room = fresh ? CAS_UNITS_MAX : cas_extent_appender_room (w->app);
  unsigned i, k = 0;

  memcpy (v, u, n * sizeof *u);
  for (i = 0; i < n; i++)
    if (u[i].add) {
      v[i].eid = k < room ? VIRTUAL_OPEN : VIRTUAL_NEXT;
      v[i].slot = k < room ? CAS_UNITS_MAX - room + k : k - room;
      k++;
    }
  return build_runs (v, n, &d);
}

/* Add the units marked add, one after the other (a unit twice in the
 * block is added twice: they stay one run), after starting a new extent
 * if fresh; each unit's bytes at bytes[i] (NULL: u[i].bytes) and its
 * hash at hashes[i] (NULL: u[i].h).
 */
static int
add_units (struct cas_unit_writer *w, struct unit *u, unsigned n,
           const uint8_t *bytes, const struct cas_hash *hashes, bool fresh)
{
  unsigned i;

  if (fresh && cas_extent_appender_room (w->app) < CAS_UNITS_MAX) {
    if (cas_extent_appender_flush (w->app) == -1)
      return -1;
    w->open_eid = 0;
  }
  for (i = 0; i < n; i++) {
    const struct cas_hash *h = hashes ? &hashes[i] : &u[i].h;
    unsigned slot;
    uint64_t eid;

    if (!u[i].add)
      continue;
    if (cas_extent_appender_add (w->app, h,
                                 bytes ? bytes + (size_t) i * CAS_UNIT_SIZE
                                 : u[i].bytes, &eid, &slot) == -1)
      return -1;
    /* The add appends the extent when it fills it. */
    w->open_eid = cas_extent_appender_room (w->app) < CAS_UNITS_MAX ? eid : 0;
    u[i].kind = UNIT_DATA;
    u[i].found = true;
    u[i].check = false;
    u[i].add = false;
    u[i].h = *h;
    u[i].eid = eid;
    u[i].slot = slot;
    w->added_units++;
    cache_add_own (w, h, eid, slot);
  }
  return 0;
}

/* Step 6: mark the units to store again so that the block fits a
 * descriptor, storing as few as it can.  The block's runs as they are
 * (found or kept references, zero runs, and the missing units, which
 * are stored whatever is chosen); a kept run costs a run, the units not
 * kept are stored fresh and consecutively (in one extent: the caller
 * starts a new one if they do not fit the open one), so that adjacent
 * ones form one run.  Dynamic programme over the runs: state (runs
 * used, whether the last unit is fresh), minimising the units stored
 * again, then the reads they take.  There is always a choice: all fresh
 * is one run.
 */
/* The cost of a choice: units stored again first, then the reads of
 * old units they take (a unit kept from the old content is read; one
 * the block brought is not).
 */
#define READ_WEIGHT 32

static void
plan_fallback (struct unit *u, unsigned n)
{
  enum { K_ZERO, K_REF, K_NEW };
  struct { unsigned first, count, kind; bool read; } run[CAS_UNITS_MAX];
  /* cost[r][used][fresh], choice bits */
  unsigned cost[CAS_UNITS_MAX + 1][CAS_DESC_MAX_RUNS + 1][2];
  uint8_t from[CAS_UNITS_MAX + 1][CAS_DESC_MAX_RUNS + 1][2];
  const unsigned INF = 1u << 30;
  unsigned nr = 0, i, r, used, f, best = INF, bu = 0, bf = 0;

  for (i = 0; i < n; i++) {
    unsigned kind = u[i].kind == UNIT_ZERO ? K_ZERO
      : u[i].kind == UNIT_DATA && !u[i].found ? K_NEW : K_REF;

    if (nr > 0 && run[nr - 1].kind == kind &&
        (kind != K_REF || (u[i].eid == u[i - 1].eid &&
                           u[i].slot == u[i - 1].slot + 1))) {
      run[nr - 1].count++;
      run[nr - 1].read |= u[i].kind == UNIT_KEEP;
      continue;
    }
    run[nr].first = i;
    run[nr].count = 1;
    run[nr].read = u[i].kind == UNIT_KEEP;
    run[nr++].kind = kind;
  }
  for (used = 0; used <= CAS_DESC_MAX_RUNS; used++)
    for (f = 0; f < 2; f++)
      cost[0][used][f] = INF;
  cost[0][0][0] = 0;
  for (r = 0; r < nr; r++) {
    for (used = 0; used <= CAS_DESC_MAX_RUNS; used++)
      for (f = 0; f < 2; f++)
        cost[r + 1][used][f] = INF;
    for (used = 0; used <= CAS_DESC_MAX_RUNS; used++)
      for (f = 0; f < 2; f++) {
        unsigned c = cost[r][used][f], u2;

        if (c == INF)
          continue;
        /* Keep it (not a missing unit's run: those have no reference). */
        if (run[r].kind != K_NEW && used + 1 <= CAS_DESC_MAX_RUNS &&
            c < cost[r + 1][used + 1][0]) {
          cost[r + 1][used + 1][0] = c;
          from[r + 1][used + 1][0] = used << 1 | f;
        }
        /* Store it fresh: joins the fresh run before it, if adjacent. */
        u2 = used + (f ? 0 : 1);
        if (u2 <= CAS_DESC_MAX_RUNS) {
          unsigned c2 = c + (run[r].kind == K_NEW ? 0
                             : run[r].count * READ_WEIGHT + run[r].read);

          if (c2 < cost[r + 1][u2][1]) {
            cost[r + 1][u2][1] = c2;
            from[r + 1][u2][1] = used << 1 | f | 0x80;
          }
        }
      }
  }
  for (used = 0; used <= CAS_DESC_MAX_RUNS; used++)
    for (f = 0; f < 2; f++)
      if (cost[nr][used][f] < best) {
        best = cost[nr][used][f];
        bu = used;
        bf = f;
      }
  for (r = nr; r > 0; r--) {
    uint8_t c = from[r][bu][bf];

    if (bf)                     /* run r - 1 stored fresh */
      for (i = run[r - 1].first; i < run[r - 1].first + run[r - 1].count; i++)
        u[i].add = true;
    bu = (c & 0x7f) >> 1;
    bf = c & 1;
  }
}

/* Read units i .. i + count - 1 of the block described by old into out
 * (one read per run of the old descriptor).
 */
static int
read_old_units (struct cas_unit_writer *w, const struct cas_hash *old,
                unsigned i, unsigned count, uint8_t *out)
{
  static const struct cas_hash zero;

  if (cas_desc_read (w->ext, old ? old : &zero, w->bs, i * CAS_UNIT_SIZE,
                     count * CAS_UNIT_SIZE, out, w->verify) == -1) {
    if (errno == ENOENT)
      errno = EIO;              /* lost data: an I/O error */
    return -1;
  }
  return 0;
}

int
cas_unit_writer_store (struct cas_unit_writer *w, const uint8_t *block,
                       uint32_t bs, const struct cas_hash *old_desc,
                       const uint64_t *written_sectors,
                       struct cas_hash *new_desc)
{
  CLEANUP_FREE uint8_t *merged = NULL;      /* units completed (step 1) */
  CLEANUP_FREE uint8_t *full = NULL;        /* the fallback's units */
  CLEANUP_FREE struct cas_hash *fh = NULL;  /* the fallback's hashes */
  struct unit u[CAS_UNITS_MAX];
  uint64_t old_eid[CAS_UNITS_MAX] = { 0 };
  uint8_t old_slot[CAS_UNITS_MAX] = { 0 };
  struct cas_desc old = { 0 }, d;
  bool need_old = false, read_old = false;
  unsigned n = w->units, i, kept = 0, zeros = 0, hashed = 0;

  if (bs != w->bs) {
    backend_error ("cas: volume %s: block of %" PRIu32 " bytes given to a "
                   "writer of %" PRIu32, w->name, bs, w->bs);
    errno = EINVAL;
    return -1;
  }
  memset (u, 0, sizeof u);
  for (i = 0; i < n && written_sectors; i++)
    if (unit_written (written_sectors, i) < SECTORS_PER_UNIT)
      need_old = true;
  if (old_desc && cas_desc_decode (old_desc, n, &old) == 0)
    expand (&old, old_eid, old_slot);
  else if (old_desc && need_old) {
    backend_error ("cas: volume %s: a block's map slot is damaged (not a "
                   "block descriptor)", w->name);
    errno = EIO;
    return -1;
  }
  else
    old.nruns = 0;              /* only for dedup: do without */

  /* 1. Classify and hash, no lock held. */
  for (i = 0; i < n; i++) {
    const uint8_t *p = block + (size_t) i * CAS_UNIT_SIZE;
    unsigned written = unit_written (written_sectors, i);

    if (written == 0) {
      u[i].kind = old_eid[i] ? UNIT_KEEP : UNIT_ZERO;
      u[i].eid = old_eid[i];
      u[i].slot = old_slot[i];
      kept++;
      continue;
    }
    if (written < SECTORS_PER_UNIT) {
      uint8_t *m;
      unsigned s;

      if (merged == NULL && (merged = malloc (bs)) == NULL)
        return -1;
      m = merged + (size_t) i * CAS_UNIT_SIZE;
      if (old_eid[i] == 0)
        memset (m, 0, CAS_UNIT_SIZE);
      else if (read_old_units (w, old_desc, i, 1, m) == -1)
        return -1;
      for (s = 0; s < SECTORS_PER_UNIT; s++)
        if (sector_written (written_sectors, i * SECTORS_PER_UNIT + s))
          memcpy (m + s * UW_SECTOR, p + s * UW_SECTOR, UW_SECTOR);
      p = m;
    }
    if (classify (&u[i], p) == -1)
      return -1;
    if (u[i].kind == UNIT_DATA)
      hashed++;
    else
      zeros++;
  }
  /* A block written whole (a copy, an import) reads the old extents'
   * tables; a small write only as small_write_reads says.
   */
  read_old = kept == 0;

  {
    RANKED_SCOPED_LOCK (&w->lock);

    w->stored_blocks++;
    w->kept_units += kept;
    w->zero_units += zeros;
    w->hashed_units += hashed;
    /* 2. The old content, by position. */
    if (old.nruns && hashed + zeros > 0) {
      uint64_t before = w->same_pos + w->kept_units;
      bool small = !read_old && small_write_reads (w);

      keep_same_position (w, u, n, old_eid, old_slot, read_old || small);
      if (small)
        small_write_read (w, w->same_pos + w->kept_units != before);
    }
    /* 3. Lookups: the cache (the old extents' tables among it), then the
     * hooks.
     */
    if (missing (u, n))
      w->cache_hits += cache_pass (w, u, n);
    if (missing (u, n))
      lookup_hooks (w, u, n);
    if (read_old && missing (u, n))
      lookup_next_group (w, u, n);
    note_last_ref (w, u, n);
    /* 4. The new references, checked now. */
    check_refs (w, u, n);
    /* 5. What is left is new: added (in a new extent if the open one
     * lacks the room), if the block then fits a descriptor.
     */
    for (i = 0; i < n; i++)
      u[i].add = u[i].kind == UNIT_DATA && !u[i].found;
    if (would_fit (w, u, n, needs_fresh_extent (w, u, n))) {
      if (add_units (w, u, n, NULL, NULL, needs_fresh_extent (w, u, n)) == -1)
        return -1;
      if (build_runs (u, n, &d)) {
        cas_desc_encode (&d, new_desc);
        return 0;
      }
    }
    /* 6. The partial fallback: which units to store again. */
    w->fallbacks++;
    plan_fallback (u, n);
  }

  /* Units kept from the old content that are stored again are read and
   * hashed now, no lock held.
   */
  full = malloc (bs);
  fh = calloc (n, sizeof *fh);
  if (full == NULL || fh == NULL)
    return -1;
  for (i = 0; i < n; i++) {
    uint8_t *p = full + (size_t) i * CAS_UNIT_SIZE;

    if (!u[i].add)
      continue;
    if (u[i].kind == UNIT_KEEP) {
      unsigned j, k;

      /* Adjacent kept units are read at once (the fallback stores whole
       * runs again).
       */
      for (j = i + 1; j < n && u[j].add && u[j].kind == UNIT_KEEP; j++)
        ;
      if (read_old_units (w, old_desc, i, j - i, p) == -1)
        return -1;
      for (k = i; k < j; k++)
        if (cas_hash_compute (full + (size_t) k * CAS_UNIT_SIZE,
                              CAS_UNIT_SIZE, &fh[k]) == -1)
          return -1;
      i = j - 1;
    }
    else if (u[i].kind == UNIT_DATA) {
      memcpy (p, u[i].bytes, CAS_UNIT_SIZE);
      fh[i] = u[i].h;
    }
    else {
      memset (p, 0, CAS_UNIT_SIZE);
      fh[i] = w->zero_hash;
    }
  }
  {
    RANKED_SCOPED_LOCK (&w->lock);

    w->restored_units += to_add (u, n);
    if (add_units (w, u, n, full, fh, needs_fresh_extent (w, u, n)) == -1)
      return -1;
    if (!build_runs (u, n, &d)) {
      backend_error ("cas: volume %s: a block does not fit a descriptor "
                     "after the fallback", w->name);
      errno = EIO;
      return -1;
    }
  }
  cas_desc_encode (&d, new_desc);
  return 0;
}
