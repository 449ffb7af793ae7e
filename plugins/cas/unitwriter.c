/* The unit writer of a format-4 store: see unitwriter.h for the contract,
 * and the lead's plan ("Writing a block") for the algorithm.
 *
 * A block is stored in five steps:
 *  1. classify (outside the lock): a unit no sector of which was written
 *     keeps its old reference; a unit written in part is completed from
 *     the old content; an all-zero unit is a zero unit; every other unit
 *     is hashed.
 *  2. look the hashed units up, in block order: the unit cache (the slot
 *     tables of the groups this writer loaded or filled lately), then the
 *     slot tables of the old descriptor's extents (a block rewritten with
 *     mostly the same units), then the hooks: the units still missing
 *     that are hooks vote for the groups holding them, the two groups
 *     with the most votes that are not cached are loaded, and the lookup
 *     is tried again.  Each lookup first tries the slot after the
 *     previous unit's (a continuation): where a unit is stored twice,
 *     the copy that extends the run wins, so a block stored as 16 copies
 *     of one unit is found again as one run.
 *  3. check every reference the cache gave against its extent's slot
 *     table now (the cache may be older than a collection that dropped or
 *     sealed the extent): a reference that fails is a miss.
 *  4. count the runs the block would take with its missing units added
 *     (one after the other, a unit that occurs twice added twice, so
 *     that they stay one run); if they fit a descriptor, add them.
 *  5. else the fallback: store the block's non-zero units again, fresh
 *     and consecutive, or all of its units, zeros too, if even that
 *     takes more runs than a descriptor holds.
 * Steps 2 to 5 run under the writer's lock; the fallback's reading and
 * hashing of units kept from the old content runs outside it.
 *
 * The cache: CACHE_GROUPS groups (64 extents, up to 1024 units each),
 * least recently used first out.  A group enters the cache when it is
 * loaded (every extent of it that the extent store offers for dedup) or
 * when this writer adds a unit to one of its extents (the writer's own
 * group: every unit of it is one this writer added).  A group keeps its
 * extents' slot tables (for continuations) and an open-addressing index
 * from a unit's hash to its first slot: 38 KiB a group, at most 304 KiB
 * a writer (a writable volume), allocated as groups are first used.
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

struct uw_group {
  bool valid;
  uint64_t g;                   /* group number (cas_extent_group) */
  uint64_t used;                /* LRU stamp */
  uint16_t present[CAS_GROUP_EXTENTS];  /* slots known, per extent */
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
  grp->g = g;
  grp->valid = true;
  grp->used = ++w->clock;
  return grp;
}

/* Unit h in the cache: the continuation (ceid, cslot) if it holds h
 * (cont: there is one), else h's position in a cached group -- of a unit
 * stored more than once, the first copy followed by the block's next
 * unit (next, if not NULL), or else the first.
 */
static bool
cache_lookup (struct cas_unit_writer *w, bool cont, uint64_t ceid,
              unsigned cslot, const struct cas_hash *h,
              const struct cas_hash *next, uint64_t *eid, uint8_t *slot)
{
  struct uw_group *grp;
  unsigned i;

  if (cont && (grp = cache_group (w, cas_extent_group (ceid))) != NULL) {
    unsigned x = ceid - grp->g * CAS_GROUP_EXTENTS;

    if (grp->present[x] >> cslot & 1 &&
        cas_hash_equal (&grp->h[x * CAS_UNITS_MAX + cslot], h)) {
      grp->used = ++w->clock;
      *eid = ceid;
      *slot = cslot;
      return true;
    }
  }
  for (i = 0; i < CACHE_GROUPS; i++) {
    int pos;

    grp = &w->group[i];
    if (!grp->valid || (pos = group_find (grp, h)) == -1)
      continue;
    if (next && grp->next[pos]) {
      int p;

      for (p = pos; p >= 0; p = (int) grp->next[p] - 1) {
        unsigned x = p / CAS_UNITS_MAX, s = p % CAS_UNITS_MAX + 1;

        if (s < CAS_UNITS_MAX && grp->present[x] >> s & 1 &&
            cas_hash_equal (&grp->h[p + 1], next)) {
          pos = p;
          break;
        }
      }
    }
    grp->used = ++w->clock;
    *eid = grp->g * CAS_GROUP_EXTENTS + pos / CAS_UNITS_MAX;
    *slot = pos % CAS_UNITS_MAX;
    return true;
  }
  return false;
}

/* Look the missing data units of the block up in the cache, in order;
 * from_cache: whether the references must be checked in step 3.
 */
static unsigned
cache_pass (struct cas_unit_writer *w, struct unit *u, unsigned n,
            bool from_cache)
{
  unsigned i, hits = 0;

  for (i = 0; i < n; i++) {
    uint64_t ceid = 0;
    unsigned cslot = 0;
    bool cont;

    if (u[i].kind != UNIT_DATA || u[i].found)
      continue;
    cont = prev_ref (u, i, &ceid, &cslot);
    if (cache_lookup (w, cont, ceid, cslot, &u[i].h,
                      i + 1 < n && u[i + 1].kind == UNIT_DATA
                      ? &u[i + 1].h : NULL, &u[i].eid, &u[i].slot)) {
      u[i].found = true;
      u[i].from_cache = from_cache;
      hits++;
    }
  }
  return hits;
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

/* The slot tables of the old descriptor's extents (step 2). */
struct old_tables {
  unsigned n;
  uint64_t eid[CAS_DESC_MAX_RUNS];
  unsigned nslots[CAS_DESC_MAX_RUNS];
  uint16_t present[CAS_DESC_MAX_RUNS];
  struct cas_hash h[CAS_DESC_MAX_RUNS][CAS_UNITS_MAX];
};

static bool
old_holds (const struct old_tables *t, unsigned k, unsigned s,
           const struct cas_hash *h)
{
  return s < t->nslots[k] && s < CAS_UNITS_MAX && t->present[k] >> s & 1 &&
    cas_hash_equal (&t->h[k][s], h);
}

/* Look the missing units up in the old descriptor's extents, in order,
 * a continuation first.  Their tables come from the extent store now:
 * no check needed in step 3.
 */
static void
lookup_old (struct cas_unit_writer *w, const struct cas_desc *old,
            struct unit *u, unsigned n)
{
  struct old_tables t;
  unsigned i, r, k, s;

  t.n = 0;
  for (r = 0; r < old->nruns; r++) {
    if (old->run[r].eid == 0)
      continue;
    for (k = 0; k < t.n && t.eid[k] != old->run[r].eid; k++)
      ;
    if (k < t.n)
      continue;
    t.eid[t.n] = old->run[r].eid;
    if (cas_extents_slot_hashes (w->ext, t.eid[t.n], t.h[t.n],
                                 &t.nslots[t.n], &t.present[t.n]) == 1)
      t.n++;
  }
  for (i = 0; i < n && t.n > 0; i++) {
    uint64_t ceid = 0;
    unsigned cslot = 0;
    bool cont, done = false;

    if (u[i].kind != UNIT_DATA || u[i].found)
      continue;
    cont = prev_ref (u, i, &ceid, &cslot);
    for (k = 0; k < t.n && cont && !done; k++)
      if (t.eid[k] == ceid && old_holds (&t, k, cslot, &u[i].h)) {
        u[i].eid = ceid;
        u[i].slot = cslot;
        done = true;
      }
    for (k = 0; k < t.n && !done; k++)
      for (s = 0; s < t.nslots[k] && s < CAS_UNITS_MAX && !done; s++)
        if (old_holds (&t, k, s, &u[i].h)) {
          u[i].eid = t.eid[k];
          u[i].slot = s;
          done = true;
        }
    if (done) {
      u[i].found = true;
      u[i].from_cache = false;
      w->old_hits++;
    }
  }
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
  /* The groups just loaded need no check in step 3; nothing else in the
   * cache holds a missing unit (the first pass looked).
   */
  if (loaded > 0)
    w->hook_hits += cache_pass (w, u, n, false);
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

/* Would the block fit a descriptor if the units chosen by add (the
 * missing data units; or all non-zero units; or all units) were added
 * one after the other?
 */
enum add_what { ADD_MISSING, ADD_NONZERO, ADD_ALL };

static bool
adds (const struct unit *u, enum add_what what)
{
  switch (what) {
  case ADD_MISSING: return u->kind == UNIT_DATA && !u->found;
  case ADD_NONZERO: return u->kind != UNIT_ZERO;
  default: return true;
  }
}

static bool
would_fit (const struct cas_unit_writer *w, const struct unit *u, unsigned n,
           enum add_what what, bool fresh_extent)
{
  struct unit v[CAS_UNITS_MAX];
  struct cas_desc d;
  unsigned room = fresh_extent ? CAS_UNITS_MAX
    : cas_extent_appender_room (w->app), i, k = 0;

  memcpy (v, u, n * sizeof *u);
  for (i = 0; i < n; i++)
    if (adds (&u[i], what)) {
      v[i].eid = k < room ? VIRTUAL_OPEN : VIRTUAL_NEXT;
      v[i].slot = k < room ? CAS_UNITS_MAX - room + k : k - room;
      k++;
    }
  return build_runs (v, n, &d);
}

/* Add the units chosen by what, one after the other (a unit twice in
 * the block is added twice: they stay one run); each unit's bytes at
 * bytes[i] (NULL: u[i].bytes) and its hash at hashes[i] (NULL: u[i].h).
 * fresh_extent: start a new extent first if the open one lacks the room.
 */
static int
add_units (struct cas_unit_writer *w, struct unit *u, unsigned n,
           enum add_what what, const uint8_t *bytes,
           const struct cas_hash *hashes, bool fresh_extent)
{
  unsigned i, need = 0;

  for (i = 0; i < n; i++)
    need += adds (&u[i], what);
  if (fresh_extent && cas_extent_appender_room (w->app) < need &&
      cas_extent_appender_flush (w->app) == -1)
    return -1;
  for (i = 0; i < n; i++) {
    const struct cas_hash *h = hashes ? &hashes[i] : &u[i].h;
    unsigned slot;
    uint64_t eid;

    if (!adds (&u[i], what))
      continue;
    if (cas_extent_appender_add (w->app, h,
                                 bytes ? bytes + (size_t) i * CAS_UNIT_SIZE
                                 : u[i].bytes, &eid, &slot) == -1)
      return -1;
    u[i].kind = UNIT_DATA;
    u[i].found = true;
    u[i].from_cache = false;
    u[i].h = *h;
    u[i].eid = eid;
    u[i].slot = slot;
    w->added_units++;
    cache_add_own (w, h, eid, slot);
  }
  return 0;
}

/* Read unit i of the block described by old into out. */
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
  bool need_old = false;
  unsigned n = w->units, i, kept = 0, zeros = 0, hashed = 0;
  enum add_what what;

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
    w->cache_hits += cache_pass (w, u, n, true);
    if (old.nruns && missing (u, n))
      lookup_old (w, &old, u, n);
    if (missing (u, n))
      lookup_hooks (w, u, n);
    /* 3. The cache's references, checked now. */
    check_cached (w, u, n);
    /* 4. What is left is new, if the block then fits a descriptor. */
    if (would_fit (w, u, n, ADD_MISSING, false)) {
      if (add_units (w, u, n, ADD_MISSING, NULL, NULL, false) == -1)
        return -1;
      if (build_runs (u, n, &d)) {
        cas_desc_encode (&d, new_desc);
        return 0;
      }
    }
    /* 5. The fallback, below. */
    w->fallbacks++;
  }

  /* The fallback: the block's units stored again, consecutively.  Units
   * kept from the old content are read and hashed now (no lock held);
   * zero units are hashed in case they must be stored too.
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
    }
    else if (u[i].kind == UNIT_DATA) {
      memcpy (p, u[i].bytes, CAS_UNIT_SIZE);
      fh[i] = u[i].h;
    }
    else {
      memset (p, 0, CAS_UNIT_SIZE);
      if (cas_hash_compute (p, CAS_UNIT_SIZE, &fh[i]) == -1)
        return -1;
    }
  }
  {
    RANKED_SCOPED_LOCK (&w->lock);

    /* Non-zero units fresh (zeros stay zero runs), unless data and zeros
     * alternate too often for that: then zeros are stored too.
     */
    what = would_fit (w, u, n, ADD_NONZERO, true) ? ADD_NONZERO : ADD_ALL;
    if (add_units (w, u, n, what, full, fh, true) == -1)
      return -1;
    if (!build_runs (u, n, &d)) {
      backend_error ("cas: volume %s: a block does not fit a descriptor "
                     "even stored whole", w->name);
      errno = EIO;
      return -1;
    }
  }
  cas_desc_encode (&d, new_desc);
  return 0;
}
