/* The unit writer of a format-4 store: see unitwriter.h for the contract,
 * and the lead's plan ("Writing a block") for the algorithm.
 *
 * A block is stored in five steps:
 *  1. classify (outside the lock): a unit no sector of which was written
 *     keeps its old reference; a unit written in part is completed from
 *     the old content; an all-zero unit is a zero unit; every other unit
 *     is hashed.
 *  2. look the hashed units up: the unit cache (the slot tables of the
 *     groups this writer loaded or filled lately), then the slot tables
 *     of the old descriptor's extents (a block rewritten with mostly the
 *     same units), then the hooks: the units still missing that are
 *     hooks vote for the groups holding them, and the two groups with the
 *     most votes that are not cached are loaded, and the lookup is tried
 *     again.
 *  3. check every reference the cache gave against its extent's slot
 *     table now (the cache may be older than a collection that dropped or
 *     sealed the extent): a reference that fails is a miss.
 *  4. add the units still missing to the appender's open extent (a unit
 *     that occurs twice in the block is added once).
 *  5. build the runs; if they are more than a descriptor holds, store
 *     the block's units again, fresh and consecutive (the fallback).
 * Steps 2 to 5 run under the writer's lock; so does the fallback's
 * adding, not its reading and hashing.
 *
 * The cache: CACHE_GROUPS groups (64 extents, up to 1024 units each),
 * least recently used first out.  A group enters the cache when it is
 * loaded (every extent of it that the extent store offers for dedup) or
 * when this writer adds a unit to one of its extents (the writer's own
 * group: every unit of it is one this writer added).  Each group has a
 * small open-addressing index on the units' hashes.
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

struct uw_entry {
  struct cas_hash h;
  uint64_t eid;
  uint8_t slot;
};

struct uw_group {
  bool valid;
  uint64_t g;                   /* group number (cas_extent_group) */
  uint64_t used;                /* LRU stamp */
  unsigned n;                   /* entries */
  struct uw_entry *e;           /* [GROUP_UNITS] */
  uint16_t *idx;                /* [GROUP_BUCKETS]: entry + 1, 0 empty */
};

struct cas_unit_writer {
  struct cas_extents *ext;      /* const */
  uint32_t bs, units;           /* const */
  enum cas_verify verify;       /* const */
  char *name;                   /* const: the volume's, for messages */
  struct ranked_mutex lock;     /* everything below */
  struct cas_extent_appender *app;
  uint64_t clock;               /* LRU stamps */
  struct uw_group group[CACHE_GROUPS];
  /* Counters, for the debug line at free. */
  uint64_t stored_blocks, kept_units, zero_units, hashed_units;
  uint64_t cache_hits, old_hits, hook_hits, added_units, fallbacks,
    stale_refs, group_loads;
};

/* What step 1 made of a unit of the block. */
enum unit_kind { UNIT_KEEP, UNIT_ZERO, UNIT_DATA };

struct unit {
  enum unit_kind kind;
  bool found;                   /* UNIT_DATA: eid/slot hold a reference */
  bool from_cache;              /* found in the cache: check it (step 3) */
  struct cas_hash h;            /* UNIT_DATA */
  const uint8_t *bytes;         /* UNIT_DATA: the raw unit */
  uint64_t eid;                 /* the reference; 0 for a zero unit */
  uint8_t slot;
};

/* ---- the cache ---- */

static uint32_t
bucket_of (const struct cas_hash *h)
{
  uint32_t v;

  memcpy (&v, h->b, sizeof v);
  return v & (GROUP_BUCKETS - 1);
}

static struct uw_entry *
group_find (struct uw_group *grp, const struct cas_hash *h)
{
  uint32_t i;

  for (i = bucket_of (h);; i = (i + 1) & (GROUP_BUCKETS - 1)) {
    uint16_t k = grp->idx[i];
    if (k == 0)
      return NULL;
    if (cas_hash_equal (&grp->e[k - 1].h, h))
      return &grp->e[k - 1];
  }
}

static void
group_insert (struct uw_group *grp, const struct cas_hash *h, uint64_t eid,
              uint8_t slot)
{
  uint32_t i;

  /* A group holds at most GROUP_UNITS distinct slots; a unit stored in
   * two slots of a group needs only the first.
   */
  if (grp->n == GROUP_UNITS)
    return;
  for (i = bucket_of (h);; i = (i + 1) & (GROUP_BUCKETS - 1)) {
    uint16_t k = grp->idx[i];
    if (k == 0)
      break;
    if (cas_hash_equal (&grp->e[k - 1].h, h))
      return;
  }
  grp->e[grp->n] = (struct uw_entry) { .h = *h, .eid = eid, .slot = slot };
  grp->idx[i] = ++grp->n;
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
  if (grp->e == NULL) {
    grp->e = malloc (GROUP_UNITS * sizeof *grp->e);
    grp->idx = malloc (GROUP_BUCKETS * sizeof *grp->idx);
    if (grp->e == NULL || grp->idx == NULL) {
      free (grp->e);
      free (grp->idx);
      grp->e = NULL;
      grp->idx = NULL;
      return NULL;
    }
  }
  memset (grp->idx, 0, GROUP_BUCKETS * sizeof *grp->idx);
  grp->n = 0;
  grp->g = g;
  grp->valid = true;
  grp->used = ++w->clock;
  return grp;
}

static bool
cache_lookup (struct cas_unit_writer *w, const struct cas_hash *h,
              uint64_t *eid, uint8_t *slot)
{
  unsigned i;

  for (i = 0; i < CACHE_GROUPS; i++) {
    struct uw_group *grp = &w->group[i];
    struct uw_entry *e;

    if (!grp->valid)
      continue;
    e = group_find (grp, h);
    if (e) {
      grp->used = ++w->clock;
      *eid = e->eid;
      *slot = e->slot;
      return true;
    }
  }
  return false;
}

/* Load group g's slot tables into the cache: every extent of it the
 * extent store offers for dedup.  Failures only lose dedup.
 */
static void
cache_load (struct cas_unit_writer *w, uint64_t g)
{
  uint64_t max = cas_extents_max_eid (w->ext), eid;
  struct uw_group *grp = cache_take (w, g);

  if (grp == NULL)
    return;
  w->group_loads++;
  for (eid = g * CAS_GROUP_EXTENTS;
       eid < (g + 1) * CAS_GROUP_EXTENTS && eid <= max; eid++) {
    struct cas_hash hashes[CAS_UNITS_MAX];
    unsigned nslots = 0, s;
    uint16_t present = 0;

    if (eid == 0 ||
        cas_extents_slot_hashes (w->ext, eid, hashes, &nslots, &present) != 1)
      continue;
    for (s = 0; s < nslots && s < CAS_UNITS_MAX; s++)
      if (present >> s & 1)
        group_insert (grp, &hashes[s], eid, s);
  }
}

/* Unit (eid, slot), named h, was just added by this writer. */
static void
cache_add_own (struct cas_unit_writer *w, const struct cas_hash *h,
               uint64_t eid, uint8_t slot)
{
  uint64_t g = cas_extent_group (eid);
  struct uw_group *grp = cache_group (w, g);

  /* Not cached (a new group, or one evicted since): only what is added
   * from now on is known of it, which is all of it for a new group.
   */
  if (grp == NULL && (grp = cache_take (w, g)) == NULL)
    return;
  grp->used = ++w->clock;
  group_insert (grp, h, eid, slot);
}

/* ---- new, free, flush ---- */

struct cas_unit_writer *
cas_unit_writer_new (struct cas_extents *ext, uint32_t bs,
                     enum cas_verify verify, const char *name)
{
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
  if (w->name == NULL || w->app == NULL) {
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

  return cas_extent_appender_flush (w->app);
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
                 " hashed, %" PRIu64 " added; dedup: %" PRIu64 " cache, %"
                 PRIu64 " previous content, %" PRIu64 " hooks; %" PRIu64
                 " groups loaded, %" PRIu64 " stale references, %" PRIu64
                 " fallbacks", w->name, w->stored_blocks, w->kept_units,
                 w->zero_units, w->hashed_units, w->added_units,
                 w->cache_hits, w->old_hits, w->hook_hits, w->group_loads,
                 w->stale_refs, w->fallbacks);
  for (i = 0; i < CACHE_GROUPS; i++) {
    free (w->group[i].e);
    free (w->group[i].idx);
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

/* Classify, and hash with no lock held, unit i whose bytes are at p. */
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

/* Look the unfound data units up in the slot table of extent eid; true
 * if the table could be had.
 */
static bool
lookup_extent (struct cas_unit_writer *w, uint64_t eid, struct unit *u,
               unsigned n, uint64_t *hits)
{
  struct cas_hash hashes[CAS_UNITS_MAX];
  unsigned nslots = 0, i, s;
  uint16_t present = 0;

  if (cas_extents_slot_hashes (w->ext, eid, hashes, &nslots, &present) != 1)
    return false;
  for (i = 0; i < n; i++) {
    if (u[i].kind != UNIT_DATA || u[i].found)
      continue;
    for (s = 0; s < nslots && s < CAS_UNITS_MAX; s++)
      if (present >> s & 1 && cas_hash_equal (&hashes[s], &u[i].h)) {
        u[i].found = true;
        u[i].from_cache = false;
        u[i].eid = eid;
        u[i].slot = s;
        (*hits)++;
        break;
      }
  }
  return true;
}

static unsigned
missing (const struct unit *u, unsigned n)
{
  unsigned i, m = 0;

  for (i = 0; i < n; i++)
    m += u[i].kind == UNIT_DATA && !u[i].found;
  return m;
}

/* Step 2's hooks: load the top groups that hooks of missing units point
 * at, and look again.
 */
static void
lookup_hooks (struct cas_unit_writer *w, struct unit *u, unsigned n)
{
  uint64_t gs[CAS_UNITS_MAX];
  unsigned votes[CAS_UNITS_MAX], ng = 0, i, j, loaded;

  for (i = 0; i < n; i++) {
    uint64_t eid, g;

    if (u[i].kind != UNIT_DATA || u[i].found || !cas_unit_is_hook (&u[i].h) ||
        cas_extents_hook_lookup (w->ext, &u[i].h, &eid) != 1)
      continue;
    g = cas_extent_group (eid);
    if (cache_group (w, g))
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
  if (loaded == 0)
    return;
  /* Loaded just now: no need to check them again in step 3. */
  for (i = 0; i < n; i++)
    if (u[i].kind == UNIT_DATA && !u[i].found &&
        cache_lookup (w, &u[i].h, &u[i].eid, &u[i].slot)) {
      u[i].found = true;
      u[i].from_cache = false;
      w->hook_hits++;
    }
}

/* Step 3: check the references the cache gave (one slot table per
 * extent); a failed one is a miss, and its group leaves the cache.
 */
static void
check_cached (struct cas_unit_writer *w, struct unit *u, unsigned n)
{
  unsigned i, j;

  for (i = 0; i < n; i++) {
    struct cas_hash hashes[CAS_UNITS_MAX];
    unsigned nslots = 0;
    uint16_t present = 0;
    bool usable;

    if (u[i].kind != UNIT_DATA || !u[i].found || !u[i].from_cache)
      continue;
    usable = cas_extents_slot_hashes (w->ext, u[i].eid, hashes, &nslots,
                                      &present) == 1;
    for (j = i; j < n; j++) {
      if (u[j].kind != UNIT_DATA || !u[j].found || !u[j].from_cache ||
          u[j].eid != u[i].eid)
        continue;
      u[j].from_cache = false;
      if (!usable || u[j].slot >= nslots || !(present >> u[j].slot & 1) ||
          !cas_hash_equal (&hashes[u[j].slot], &u[j].h)) {
        struct uw_group *grp = cache_group (w, cas_extent_group (u[j].eid));

        u[j].found = false;
        w->stale_refs++;
        if (grp)
          grp->valid = false;
      }
    }
  }
}

/* Step 4: add the missing units; a unit twice in the block is added
 * once.
 */
static int
add_missing (struct cas_unit_writer *w, struct unit *u, unsigned n)
{
  unsigned i, j;

  for (i = 0; i < n; i++) {
    unsigned slot;

    if (u[i].kind != UNIT_DATA || u[i].found)
      continue;
    for (j = 0; j < i; j++)
      if (u[j].kind == UNIT_DATA && u[j].found &&
          cas_hash_equal (&u[j].h, &u[i].h))
        break;
    if (j < i) {
      u[i].found = true;
      u[i].eid = u[j].eid;
      u[i].slot = u[j].slot;
      continue;
    }
    if (cas_extent_appender_add (w->app, &u[i].h, u[i].bytes, &u[i].eid,
                                 &slot) == -1)
      return -1;
    u[i].slot = slot;
    u[i].found = true;
    w->added_units++;
    cache_add_own (w, &u[i].h, u[i].eid, u[i].slot);
  }
  return 0;
}

/* Step 5: the runs of the block's references; false if they are more
 * than a descriptor holds.
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

/* The fallback, under the lock: add the units of the block fresh, one
 * after the other (the non-zero ones; with zeros too if with_zeros),
 * each unit's bytes in full[] and its hash in fh[].
 */
static int
add_fresh (struct cas_unit_writer *w, struct unit *u, unsigned n,
           const uint8_t *full, const struct cas_hash *fh, bool with_zeros)
{
  unsigned i, need = 0;

  for (i = 0; i < n; i++)
    need += u[i].kind != UNIT_ZERO || with_zeros;
  /* Start a new extent if this one lacks the room: one run. */
  if (cas_extent_appender_room (w->app) < need &&
      cas_extent_appender_flush (w->app) == -1)
    return -1;
  for (i = 0; i < n; i++) {
    unsigned slot;

    if (u[i].kind == UNIT_ZERO && !with_zeros)
      continue;
    if (cas_extent_appender_add (w->app, &fh[i],
                                 full + (size_t) i * CAS_UNIT_SIZE,
                                 &u[i].eid, &slot) == -1)
      return -1;
    u[i].slot = slot;
    u[i].kind = UNIT_DATA;
    u[i].h = fh[i];
    w->added_units++;
    cache_add_own (w, &fh[i], u[i].eid, u[i].slot);
  }
  return 0;
}

/* Read units [i, i + 1) of the block described by old into out. */
static int
read_old_unit (struct cas_unit_writer *w, const struct cas_hash *old,
               unsigned i, uint8_t *out)
{
  static const struct cas_hash zero;

  if (cas_desc_read (w->ext, old ? old : &zero, w->bs, i * CAS_UNIT_SIZE,
                     CAS_UNIT_SIZE, out, w->verify) == -1) {
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
  CLEANUP_FREE uint8_t *full = NULL;        /* the fallback's block */
  CLEANUP_FREE struct cas_hash *fh = NULL;  /* the fallback's hashes */
  struct unit u[CAS_UNITS_MAX];
  uint64_t old_eid[CAS_UNITS_MAX] = { 0 };
  uint8_t old_slot[CAS_UNITS_MAX] = { 0 };
  struct cas_desc old = { 0 }, d;
  bool have_old = false, need_old = false;
  unsigned n = w->units, i, r, kept = 0, zeros = 0, hashed = 0;

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
  if (old_desc && cas_desc_decode (old_desc, n, &old) == 0) {
    have_old = true;
    expand (&old, old_eid, old_slot);
  }
  else if (old_desc && need_old) {
    backend_error ("cas: volume %s: a block's map slot is damaged (not a "
                   "block descriptor)", w->name);
    errno = EIO;
    return -1;
  }

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
      else if (read_old_unit (w, old_desc, i, m) == -1)
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

  {
    RANKED_SCOPED_LOCK (&w->lock);

    w->stored_blocks++;
    w->kept_units += kept;
    w->zero_units += zeros;
    w->hashed_units += hashed;
    /* 2. Lookups: the cache, the old extents, the hooks. */
    for (i = 0; i < n; i++)
      if (u[i].kind == UNIT_DATA &&
          cache_lookup (w, &u[i].h, &u[i].eid, &u[i].slot)) {
        u[i].found = true;
        u[i].from_cache = true;
        w->cache_hits++;
      }
    for (r = 0; have_old && r < old.nruns && missing (u, n); r++) {
      unsigned q;

      if (old.run[r].eid == 0)
        continue;
      for (q = 0; q < r && old.run[q].eid != old.run[r].eid; q++)
        ;
      if (q == r)
        lookup_extent (w, old.run[r].eid, u, n, &w->old_hits);
    }
    if (missing (u, n))
      lookup_hooks (w, u, n);
    /* 3. The cache's references, checked now. */
    check_cached (w, u, n);
    /* 4. What is left is new. */
    if (add_missing (w, u, n) == -1)
      return -1;
    /* 5. Runs. */
    if (build_runs (u, n, &d)) {
      cas_desc_encode (&d, new_desc);
      return 0;
    }
    w->fallbacks++;
  }

  /* The fallback: every unit stored again, consecutively.  Units kept
   * from the old content are read and hashed now (no lock held).
   */
  full = malloc (bs);
  fh = calloc (n, sizeof *fh);
  if (full == NULL || fh == NULL)
    return -1;
  for (i = 0; i < n; i++) {
    uint8_t *p = full + (size_t) i * CAS_UNIT_SIZE;

    if (u[i].kind == UNIT_KEEP) {
      if (read_old_unit (w, old_desc, i, p) == -1 ||
          cas_hash_compute (p, CAS_UNIT_SIZE, &fh[i]) == -1)
        return -1;
      u[i].kind = UNIT_DATA;
    }
    else if (u[i].kind == UNIT_DATA) {
      memcpy (p, u[i].bytes, CAS_UNIT_SIZE);
      fh[i] = u[i].h;
    }
    else {
      /* Needed only if the zeros must be stored too (rare). */
      memset (p, 0, CAS_UNIT_SIZE);
      if (cas_hash_compute (p, CAS_UNIT_SIZE, &fh[i]) == -1)
        return -1;
    }
  }
  {
    RANKED_SCOPED_LOCK (&w->lock);

    if (add_fresh (w, u, n, full, fh, false) == -1)
      return -1;
    if (!build_runs (u, n, &d)) {
      /* Data and zeros alternate too often: zeros are stored too. */
      if (add_fresh (w, u, n, full, fh, true) == -1)
        return -1;
      if (!build_runs (u, n, &d)) {
        backend_error ("cas: volume %s: a block does not fit a descriptor "
                       "even stored whole", w->name);
        errno = EIO;
        return -1;
      }
    }
  }
  cas_desc_encode (&d, new_desc);
  return 0;
}
