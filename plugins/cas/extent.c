/* Extents: the unit store of a format-4 store.  See extent.h for the
 * contract, FORMAT.md "Format version 4" for the record.
 *
 * The extent table maps an id to the location of its record: a
 * three-level array (12 + 12 + 16 bits of the 40-bit id) whose leaves
 * are 2^16 atomic u64 and whose inner levels are allocated on first use
 * and published with a compare-and-swap, so that readers take no lock.
 * An entry is a CAS_LOC with flag bits in its low bits (record offsets
 * are multiples of 8): EXT_VERIFIED, EXT_DAMAGED; pack 0 (never a real
 * pack) marks an extent still being filled (pending, in RAM).
 *
 * A pending extent lives on the list ext->pending (pending_lock) from
 * before its entry says pending until after the entry holds the
 * appended record's location: a reader that finds the pending mark and
 * then no list entry reads the entry again and finds the location.  Its
 * owner (the appender) writes a unit into slot n outside the lock and
 * then publishes n + 1 under it; readers copy slots below n under it.
 *
 * Hooks: open addressing with linear probing, 8-byte entries (24 bits of
 * the unit's hash, 40-bit extent id), under a rwlock; grown x2 past 3/4.
 */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "cleanup.h"
#include "compress.h"
#include "crc32c.h"
#include "extent.h"
#include "index.h"
#include "le.h"
#include "pack.h"

/* Table entry flags and the pending mark. */
#define EXT_VERIFIED UINT64_C (1)  /* every unit's CRC checked (= CAS_LOC_VERIFIED) */
#define EXT_DAMAGED UINT64_C (2)   /* a check failed: never offered for dedup */
#define EXT_FLAGS UINT64_C (7)
#define EXT_PENDING CAS_LOC (0, 8)
#define EXT_LOC(v) ((v) & ~EXT_FLAGS)
#define EXT_IS_PENDING(v) ((v) != 0 && CAS_LOC_PACK (v) == 0)

#define LEAF_BITS 16
#define MID_BITS 12
#define TOP_BITS 12
_Static_assert (LEAF_BITS + MID_BITS + TOP_BITS == 40, "40-bit ids");
#define LEAF_ENTRIES (1u << LEAF_BITS)

struct table_mid {
  _Atomic uint64_t *_Atomic leaf[1u << MID_BITS];
};

#define MAX_STALE_RETRIES 16
#define SLOT_TABLE_MAX (CAS_UNITS_MAX * CAS_SLOT_ENTRY_SIZE)
#define EXTENT_PAYLOAD_MAX (SLOT_TABLE_MAX + CAS_UNITS_MAX * CAS_UNIT_SIZE)

struct pending {
  struct pending *next;
  uint64_t eid;
  unsigned n;                    /* slots filled: pending_lock */
  uint8_t codec;                 /* of the compressed slots, if any */
  struct cas_slot_entry slot[CAS_UNITS_MAX];
  uint8_t raw[CAS_UNITS_MAX][CAS_UNIT_SIZE];
  uint8_t packed[CAS_UNITS_MAX][CAS_UNIT_SIZE];  /* compressed slots */
};

struct cas_extents {
  struct cas_packs *packs;
  bool readonly;
  _Atomic uint32_t *gc_below;    /* the pack store's (may be NULL) */
  struct cas_compression comp;
  struct cas_codec_pool *pool;

  struct table_mid *_Atomic top[1u << TOP_BITS];
  _Atomic uint64_t leaves, mids; /* allocated, for stats */

  _Atomic uint64_t extents, units, stored_bytes, raw_bytes;
  _Atomic uint64_t max_eid;      /* highest id seen or handed out */
  _Atomic uint64_t open_tables_read, cache_extents;   /* stats of the open */
  _Atomic uint64_t next_group;

  /* The durable reservation (DIR/extent-ids): every group handed out is
   * below reserved_group, raised under reserve_lock and written before
   * a group at or beyond it is handed out.  dir NULL: no file (a
   * read-only extent store that is not the store's).
   */
  char *dir;
  pthread_mutex_t reserve_lock;
  _Atomic uint64_t reserved_group;
  int ids_file;                  /* CAS_EXTENT_IDS_* of the open */

  pthread_mutex_t pending_lock;
  struct pending *pending;

  pthread_rwlock_t hooks_lock;
  uint64_t *hooks;
  size_t hooks_cap, hooks_n;     /* cap: a power of two */

  struct tcache_set *tcache;     /* checked slot tables (NULL: none) */
  pthread_mutex_t *tcache_lock;
};

struct cas_extent_appender {
  struct cas_extents *ext;
  uint64_t next_eid, group_end;  /* ids left in the writer's group */
  struct pending *open;
  uint8_t *payload;              /* EXTENT_PAYLOAD_MAX: record assembly */
};

/* ---- the table ---- */

/* The entry of eid; with create, allocating the levels on the way;
 * NULL if absent (or ENOMEM with create).
 */
static _Atomic uint64_t *
entry (struct cas_extents *ext, uint64_t eid, bool create)
{
  uint32_t t = eid >> (LEAF_BITS + MID_BITS);
  uint32_t m = (eid >> LEAF_BITS) & ((1u << MID_BITS) - 1);
  struct table_mid *mid;
  _Atomic uint64_t *leaf;

  if (eid == 0 || eid > CAS_EXTENT_ID_MAX)
    return NULL;
  mid = atomic_load_explicit (&ext->top[t], memory_order_acquire);
  if (mid == NULL) {
    struct table_mid *fresh, *expected = NULL;

    if (!create || (fresh = calloc (1, sizeof *fresh)) == NULL)
      return NULL;
    if (atomic_compare_exchange_strong (&ext->top[t], &expected, fresh)) {
      mid = fresh;
      atomic_fetch_add (&ext->mids, 1);
    }
    else {
      free (fresh);
      mid = expected;
    }
  }
  leaf = atomic_load_explicit (&mid->leaf[m], memory_order_acquire);
  if (leaf == NULL) {
    _Atomic uint64_t *fresh, *expected = NULL;

    /* calloc: the pages of a sparse leaf stay untouched. */
    if (!create || (fresh = calloc (LEAF_ENTRIES, sizeof *fresh)) == NULL)
      return NULL;
    if (atomic_compare_exchange_strong (&mid->leaf[m], &expected, fresh)) {
      leaf = fresh;
      atomic_fetch_add (&ext->leaves, 1);
    }
    else {
      free (fresh);
      leaf = expected;
    }
  }
  return &leaf[eid & (LEAF_ENTRIES - 1)];
}

static uint64_t
load_entry (struct cas_extents *ext, uint64_t eid)
{
  _Atomic uint64_t *e = entry (ext, eid, false);

  return e ? atomic_load_explicit (e, memory_order_acquire) : 0;
}

static void
note_max (struct cas_extents *ext, uint64_t eid)
{
  uint64_t m = atomic_load (&ext->max_eid);

  while (eid > m && !atomic_compare_exchange_weak (&ext->max_eid, &m, eid))
    ;
}

/* Set flags on eid's entry if it still holds the record at loc; returns
 * true if this call set them (so a damaged extent is reported once).
 */
static bool
set_flags (struct cas_extents *ext, uint64_t eid, uint64_t loc,
           uint64_t set, uint64_t clear)
{
  _Atomic uint64_t *e = entry (ext, eid, false);
  uint64_t v;

  if (e == NULL)
    return false;
  v = atomic_load (e);
  for (;;) {
    uint64_t nv = (v & ~clear) | set;
    if (EXT_IS_PENDING (v) || EXT_LOC (v) != EXT_LOC (loc) || nv == v)
      return false;
    if (atomic_compare_exchange_weak (e, &v, nv))
      return true;
  }
}

/* ---- hooks ----
 * An entry keeps 24 bits of the unit's hash (the fragment) and the id;
 * its home slot is derived from the fragment alone, so the table can be
 * grown without the hashes.  A lookup's answer is a hint the caller
 * checks against the slot table: a fragment shared by two units costs a
 * wasted look, never wrong data.  (Past 2^24 hooks, about 1 TiB of
 * unique data, fragments repeat often and hooks find less.)
 */

static uint64_t
hook_frag (const struct cas_hash *h)
{
  return (uint64_t) h->b[0] | (uint64_t) h->b[1] << 8 |
    (uint64_t) h->b[2] << 16;
}

static size_t
hook_home (uint64_t frag, size_t cap)
{
  return (size_t) ((frag * UINT64_C (0x9e3779b97f4a7c15)) >> 20) & (cap - 1);
}

/* Insert into a table of cap entries (hooks_lock held for writing):
 * newest wins for one fragment.  Returns true if an entry was added.
 */
static bool
hooks_put (uint64_t *t, size_t cap, uint64_t frag, uint64_t eid)
{
  size_t i = hook_home (frag, cap);

  for (;; i = (i + 1) & (cap - 1)) {
    if (t[i] == 0 || t[i] >> 40 == frag) {
      bool added = t[i] == 0;
      t[i] = frag << 40 | eid;
      return added;
    }
  }
}

static int
hooks_grow (struct cas_extents *ext)
{
  size_t cap = ext->hooks_cap ? ext->hooks_cap * 2 : 1024, i;
  uint64_t *t = calloc (cap, sizeof *t);

  if (t == NULL)
    return -1;
  for (i = 0; i < ext->hooks_cap; i++)
    if (ext->hooks[i])
      hooks_put (t, cap, ext->hooks[i] >> 40,
                 ext->hooks[i] & CAS_EXTENT_ID_MAX);
  free (ext->hooks);
  ext->hooks = t;
  ext->hooks_cap = cap;
  return 0;
}

static void
hooks_add (struct cas_extents *ext, const struct cas_hash *h, uint64_t eid)
{
  pthread_rwlock_wrlock (&ext->hooks_lock);
  if ((ext->hooks_n + 1) * 4 > ext->hooks_cap * 3 && hooks_grow (ext) == -1) {
    /* A hook is a hint: without it dedup finds less, nothing is lost. */
    pthread_rwlock_unlock (&ext->hooks_lock);
    return;
  }
  if (hooks_put (ext->hooks, ext->hooks_cap, hook_frag (h), eid))
    ext->hooks_n++;
  pthread_rwlock_unlock (&ext->hooks_lock);
}

int
cas_extents_hook_lookup (struct cas_extents *ext, const struct cas_hash *h,
                         uint64_t *eid)
{
  uint64_t frag = hook_frag (h);
  int found = 0;

  pthread_rwlock_rdlock (&ext->hooks_lock);
  if (ext->hooks_cap) {
    size_t i = hook_home (frag, ext->hooks_cap);

    for (; ext->hooks[i] != 0; i = (i + 1) & (ext->hooks_cap - 1))
      if (ext->hooks[i] >> 40 == frag) {
        *eid = ext->hooks[i] & CAS_EXTENT_ID_MAX;
        found = 1;
        break;
      }
  }
  pthread_rwlock_unlock (&ext->hooks_lock);
  return found;
}

/* ---- records ---- */

int
cas_extent_parse_table (const struct cas_record_header *h,
                        const uint8_t *table, uint32_t got,
                        struct cas_extent_fields *f,
                        struct cas_slot_entry slot[CAS_UNITS_MAX],
                        uint32_t start[CAS_UNITS_MAX], const char **problem)
{
  uint32_t n, at, i;

  *problem = "not an extent record";
  if (h->type != CAS_RECORD_EXTENT ||
      cas_extent_fields_decode (&h->hash, f) == -1)
    goto bad;
  n = f->nslots * CAS_SLOT_ENTRY_SIZE;
  *problem = "slot table is truncated";
  if (got < n)
    goto bad;
  *problem = "slot table checksum (CRC32C) mismatch";
  if (crc32c (0, table, n) != h->payload_crc)
    goto bad;
  for (i = 0, at = n; i < f->nslots; i++) {
    bool present = f->present & (1u << i);

    *problem = "damaged slot table entry";
    if (cas_slot_entry_decode (table + i * CAS_SLOT_ENTRY_SIZE, present,
                               f->codec, &slot[i]) == -1)
      goto bad;
    start[i] = at;
    at += slot[i].stored_len;
  }
  *problem = "the slot table does not add up to the record's length";
  if (at != h->length)
    goto bad;
  return 0;
 bad:
  errno = EIO;
  return -1;
}

int
cas_extent_check_units (const struct cas_extent_fields *f,
                        const struct cas_slot_entry slot[CAS_UNITS_MAX],
                        const uint32_t start[CAS_UNITS_MAX],
                        const uint8_t *payload, bool decode, bool rehash,
                        struct cas_codec_pool *pool, const char **problem,
                        unsigned *bad_slot)
{
  uint8_t raw[CAS_UNIT_SIZE];
  unsigned i;

  for (i = 0; i < f->nslots; i++) {
    const uint8_t *data = payload + start[i];

    if (!(f->present & (1u << i)))
      continue;
    *bad_slot = i;
    *problem = "unit checksum (CRC32C) mismatch";
    if (crc32c (0, data, slot[i].stored_len) != slot[i].crc)
      goto bad;
    if ((slot[i].flags & CAS_SLOT_F_COMPRESSED) && (decode || rehash)) {
      *problem = "compressed unit does not decompress to 4096 bytes";
      if (cas_decompress (pool, f->codec, data, slot[i].stored_len, raw,
                          CAS_UNIT_SIZE) == -1) {
        if (errno == ENOMEM)
          return -1;
        goto bad;
      }
      data = raw;
    }
    if (rehash) {
      struct cas_hash got;

      *problem = "unit does not match its SHA-256";
      if (cas_hash_compute (data, CAS_UNIT_SIZE, &got) == -1)
        return -1;
      if (!cas_hash_equal (&got, &slot[i].hash))
        goto bad;
    }
  }
  return 0;
 bad:
  errno = EIO;
  return 1;
}

/* ---- reading ---- */

static void
report (uint64_t eid, uint64_t loc, const char *what)
{
  backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": extent %" PRIu64
                 ": %s (damaged data)", CAS_LOC_PACK (loc),
                 CAS_LOC_OFFSET (loc), eid, what);
}

/* Copy bytes of a pending extent: 1 done, 0 it is no longer pending
 * (look at the table again), -1/ENOENT slots not there.
 */
static int
read_pending (struct cas_extents *ext, uint64_t eid, unsigned slot,
              unsigned count, uint32_t off, uint32_t len, void *buf,
              struct cas_hash *hashes, unsigned *nslots)
{
  struct pending *p;
  int r = 0;

  pthread_mutex_lock (&ext->pending_lock);
  for (p = ext->pending; p; p = p->next)
    if (p->eid == eid)
      break;
  if (p) {
    if (hashes) {
      unsigned i;
      for (i = 0; i < p->n; i++)
        hashes[i] = p->slot[i].hash;
      *nslots = p->n;
      r = 1;
    }
    else if (slot + count > p->n) {
      errno = ENOENT;
      r = -1;
    }
    else {
      memcpy (buf, &p->raw[slot][0] + off, len);
      r = 1;
    }
  }
  pthread_mutex_unlock (&ext->pending_lock);
  if (r == -1)
    backend_error ("cas: extent %" PRIu64 " has no slots %u..%u", eid,
                   slot, slot + count - 1);
  return r;
}

/* ---- the slot-table cache ----
 * Of a record's slot table a read needs each slot's stored length,
 * compression flag and CRC32C.  A table whose header and CRC were checked
 * is kept here, keyed by extent id and tagged with the location it was
 * read from: an entry serves only while the extent table still points at
 * that location (gc's copy is another record, read and checked again;
 * pack numbers are never reused in a process), and relocate and drop
 * forget it.  So a read of a cached extent is one pread of just its
 * units, each checked against the CRC kept here.  verify=full, which
 * needs the units' SHA-256, reads the table every time.
 *
 * Bounded: TCACHE_SETS sets of TCACHE_WAYS entries; id / TCACHE_WAYS
 * picks the set (ids written together share one), CLOCK within a set.
 * The sets are calloc'd, so only those used take memory; a mutex of
 * TCACHE_LOCKS guards each set.
 */
#define TCACHE_WAYS 8
#define TCACHE_SETS 16384       /* 131072 extents (8 GiB of units), 17 MiB */
#define TCACHE_LOCKS 256

struct table_info {
  uint64_t eid, loc;            /* eid 0: an empty way */
  uint32_t crc[CAS_UNITS_MAX];
  uint16_t len[CAS_UNITS_MAX];  /* stored length, 0 if not present */
  uint16_t packed;              /* slots stored compressed */
  uint16_t present;
  uint8_t nslots, codec;
};

struct tcache_set {
  uint64_t tag[TCACHE_WAYS];    /* way[w].eid: a lookup scans one line */
  uint8_t hand, ref;            /* CLOCK: the next victim, a bit per way */
  struct table_info way[TCACHE_WAYS];
};
_Static_assert (TCACHE_WAYS <= 8, "ref is 8 bits");

static size_t
tcache_index (uint64_t eid)
{
  return (eid / TCACHE_WAYS) & (TCACHE_SETS - 1);
}

/* The set of eid, locked: NULL if there is no cache. */
static struct tcache_set *
tcache_lock (struct cas_extents *ext, uint64_t eid)
{
  size_t i = tcache_index (eid);

  if (ext->tcache == NULL)
    return NULL;
  pthread_mutex_lock (&ext->tcache_lock[i % TCACHE_LOCKS]);
  return &ext->tcache[i];
}

static void
tcache_unlock (struct cas_extents *ext, uint64_t eid)
{
  pthread_mutex_unlock (&ext->tcache_lock[tcache_index (eid) % TCACHE_LOCKS]);
}

/* The cached table of eid read from loc: true and *out, or false. */
static bool
tcache_get (struct cas_extents *ext, uint64_t eid, uint64_t loc,
            struct table_info *out)
{
  struct tcache_set *set = tcache_lock (ext, eid);
  bool hit = false;
  unsigned w;

  if (set == NULL)
    return false;
  for (w = 0; w < TCACHE_WAYS; w++)
    if (set->tag[w] == eid && set->way[w].loc == loc) {
      *out = set->way[w];
      set->ref |= 1u << w;
      hit = true;
      break;
    }
  tcache_unlock (ext, eid);
  return hit;
}

static void
tcache_put (struct cas_extents *ext, const struct table_info *ti)
{
  struct tcache_set *set = tcache_lock (ext, ti->eid);
  unsigned w;

  if (set == NULL)
    return;
  /* Its own way (an older location), else an empty one, else CLOCK. */
  for (w = 0; w < TCACHE_WAYS; w++)
    if (set->tag[w] == ti->eid)
      break;
  if (w == TCACHE_WAYS)
    for (w = 0; w < TCACHE_WAYS; w++)
      if (set->tag[w] == 0)
        break;
  if (w == TCACHE_WAYS) {
    while (set->ref & (1u << set->hand)) {
      set->ref &= ~(1u << set->hand);
      set->hand = (set->hand + 1) % TCACHE_WAYS;
    }
    w = set->hand;
    set->hand = (set->hand + 1) % TCACHE_WAYS;
  }
  set->way[w] = *ti;
  set->tag[w] = ti->eid;
  set->ref &= ~(1u << w);
  tcache_unlock (ext, ti->eid);
}

static void
tcache_forget (struct cas_extents *ext, uint64_t eid)
{
  struct tcache_set *set = tcache_lock (ext, eid);
  unsigned w;

  if (set == NULL)
    return;
  for (w = 0; w < TCACHE_WAYS; w++)
    if (set->tag[w] == eid) {
      set->tag[w] = 0;
      memset (&set->way[w], 0, sizeof set->way[w]);
    }
  tcache_unlock (ext, eid);
}

/* Where each slot's stored bytes start in the payload. */
static void
table_starts (const struct table_info *ti, uint32_t start[CAS_UNITS_MAX])
{
  uint32_t at = ti->nslots * CAS_SLOT_ENTRY_SIZE;
  unsigned i;

  for (i = 0; i < ti->nslots; i++) {
    start[i] = at;
    at += ti->len[i];
  }
}

/* The read of the slot table may bring units too, straight into the
 * caller's buffer, if they are where a full extent of raw units keeps
 * them (slot u at payload offset 640 + 4096 u): guessed only for whole
 * units from slot SPEC_SKIP_MAX on at most (the units before go to a
 * scratch buffer), in a store that does not compress.  A whole-block
 * read of an extent not cached is then one pread.
 */
#define SPEC_SKIP_MAX 1

/* Read and check eid's record header and slot table at loc into *ti
 * (and se, with the units' hashes), and cache it.  With units != NULL
 * (units_len bytes) the same read brings the payload from the guessed
 * place of slot first on into it: *units_ok says if the guess held and
 * all of it came.  0; -1/ESTALE (no message); -1/EIO (*problem: the
 * caller reports); other -1 reported.
 */
static int
load_table (struct cas_extents *ext, uint64_t eid, uint64_t loc,
            struct table_info *ti, struct cas_slot_entry se[CAS_UNITS_MAX],
            unsigned first, uint8_t *units, uint32_t units_len,
            bool *units_ok, const char **problem)
{
  uint8_t hdr[CAS_RECORD_HEADER_SIZE], table[SLOT_TABLE_MAX];
  uint8_t skip[SPEC_SKIP_MAX * CAS_UNIT_SIZE + 1];
  struct iovec iov[4];
  struct cas_record_header h;
  struct cas_extent_fields f;
  uint32_t start[CAS_UNITS_MAX], got_table;
  size_t got;
  int n = 0;
  unsigned i;

  *units_ok = false;
  iov[n++] = (struct iovec) { hdr, sizeof hdr };
  iov[n++] = (struct iovec) { table, sizeof table };
  if (units) {
    assert (first <= SPEC_SKIP_MAX);
    if (first)
      iov[n++] = (struct iovec) { skip, first * CAS_UNIT_SIZE };
    iov[n++] = (struct iovec) { units, units_len };
  }
  if (cas_packs_readv (ext->packs, loc, 0, iov, n, &got) == -1)
    return -1;
  *problem = "damaged record header";
  if (got < sizeof hdr || cas_record_header_decode (hdr, &h) == -1)
    goto damaged;
  got -= sizeof hdr;
  got_table = got < sizeof table ? got : sizeof table;
  if (h.length < got_table)
    got_table = h.length;
  if (cas_extent_parse_table (&h, table, got_table, &f, se, start,
                              problem) == -1)
    goto damaged;
  if (f.eid != eid) {
    *problem = "the record there is another extent";
    goto damaged;
  }
  memset (ti, 0, sizeof *ti);
  ti->eid = eid;
  ti->loc = loc;
  ti->nslots = f.nslots;
  ti->codec = f.codec;
  ti->present = f.present;
  for (i = 0; i < f.nslots; i++) {
    ti->crc[i] = se[i].crc;
    ti->len[i] = se[i].stored_len;
    if (se[i].flags & CAS_SLOT_F_COMPRESSED)
      ti->packed |= 1u << i;
  }
  tcache_put (ext, ti);
  if (units) {
    uint32_t want = SLOT_TABLE_MAX + first * CAS_UNIT_SIZE + units_len;
    unsigned last = first + units_len / CAS_UNIT_SIZE - 1;

    *units_ok = f.nslots == CAS_UNITS_MAX && got >= want &&
      start[first] == SLOT_TABLE_MAX + first * CAS_UNIT_SIZE &&
      h.length >= want;
    for (i = first; *units_ok && i <= last; i++)
      if (!(f.present & (1u << i)) || se[i].stored_len != CAS_UNIT_SIZE ||
          (se[i].flags & CAS_SLOT_F_COMPRESSED))
        *units_ok = false;
  }
  return 0;
 damaged:
  errno = EIO;
  return -1;
}

/* One run's read (bytes [off, off + len) of units slot.. of extent eid)
 * from its record at loc, whose slot table ti is known: the stored bytes
 * of slots first..last are read to src (the caller's buffer for whole
 * raw units, else tmp), then checked and copied out.
 */
struct run_read {
  uint64_t eid, loc;
  unsigned slot, count, first, last;
  uint32_t off, len;
  uint8_t *buf;                 /* the caller's: len bytes */
  struct table_info ti;
  uint32_t start[CAS_UNITS_MAX];
  uint32_t span;                /* stored bytes of slots first..last */
  uint8_t *src, *tmp;           /* tmp: malloc'd, or NULL */
  bool alone;                   /* (descriptor reads) read by itself */
};

static void
run_init (struct run_read *r, uint64_t eid, uint64_t loc, unsigned slot,
          unsigned count, uint32_t off, uint32_t len, uint8_t *buf)
{
  r->eid = eid;
  r->loc = loc;
  r->slot = slot;
  r->count = count;
  r->off = off;
  r->len = len;
  r->buf = buf;
  r->first = slot + off / CAS_UNIT_SIZE;
  r->last = slot + (off + len - 1) / CAS_UNIT_SIZE;
  r->src = r->tmp = NULL;
  r->alone = false;
}

/* A damaged run: nothing unchecked stays in the caller's buffer, the
 * damage is reported and the extent never offered for dedup again
 * (reads of its intact units go on).
 */
static int
run_damaged (struct cas_extents *ext, struct run_read *r, const char *problem)
{
  memset (r->buf, 0, r->len);
  report (r->eid, r->loc, problem);
  set_flags (ext, r->eid, r->loc, EXT_DAMAGED, EXT_VERIFIED);
  errno = EIO;
  return -1;
}

/* Where the run's stored bytes are and where they go (r->ti known).
 * 0; -1/EIO (*problem) if the table says they are not there; other -1
 * reported (ENOENT: no such slot; ENOMEM).
 */
static int
run_plan (struct cas_extents *ext, struct run_read *r, bool in_buf,
          char *msg, size_t msglen, const char **problem)
{
  bool packed = false;
  unsigned u;

  if (r->last >= r->ti.nslots) {
    backend_error ("cas: extent %" PRIu64 " has %u slots, not %u",
                   r->eid, r->ti.nslots, r->last + 1);
    errno = ENOENT;
    return -1;
  }
  for (u = r->first; u <= r->last; u++) {
    if (!(r->ti.present & (1u << u))) {
      snprintf (msg, msglen, "slot %u is referenced but not stored", u);
      *problem = msg;
      errno = EIO;
      return -1;
    }
    if (r->ti.packed & (1u << u))
      packed = true;
  }
  table_starts (&r->ti, r->start);
  r->span = r->start[r->last] + r->ti.len[r->last] - r->start[r->first];
  /* Whole raw units go straight into the caller's buffer. */
  if (in_buf || (!packed && r->off % CAS_UNIT_SIZE == 0 &&
                 r->len % CAS_UNIT_SIZE == 0))
    r->src = r->buf;
  else if ((r->src = r->tmp = malloc (r->span)) == NULL) {
    backend_error ("cas: reading extent %" PRIu64 ": out of memory", r->eid);
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

/* Check the run's units, read to src, and copy them out: every unit
 * against its CRC32C (verify=full: its SHA-256 too, from se).  0;
 * -1/EIO (*problem); other -1 reported.
 */
static int
run_check (struct cas_extents *ext, struct run_read *r,
           const struct cas_slot_entry *se, enum cas_verify verify,
           char *msg, size_t msglen, const char **problem)
{
  unsigned u;

  for (u = r->first; u <= r->last; u++) {
    const uint8_t *data = r->src + (r->start[u] - r->start[r->first]);
    uint8_t raw[CAS_UNIT_SIZE];
    uint32_t ustart = (u - r->slot) * CAS_UNIT_SIZE;   /* in the run */
    uint32_t from = r->off > ustart ? r->off - ustart : 0;
    uint32_t to = r->off + r->len < ustart + CAS_UNIT_SIZE
      ? r->off + r->len - ustart : CAS_UNIT_SIZE;

    if (verify >= CAS_VERIFY_CHECKSUM &&
        crc32c (0, data, r->ti.len[u]) != r->ti.crc[u]) {
      snprintf (msg, msglen, "slot %u: unit checksum (CRC32C) mismatch", u);
      goto bad;
    }
    if (r->ti.packed & (1u << u)) {
      if (cas_decompress (ext->pool, r->ti.codec, data, r->ti.len[u], raw,
                          CAS_UNIT_SIZE) == -1) {
        if (errno == ENOMEM) {
          backend_error ("cas: decompressing extent %" PRIu64 ": out of "
                         "memory", r->eid);
          memset (r->buf, 0, r->len);
          return -1;
        }
        snprintf (msg, msglen, "slot %u: compressed unit does not "
                  "decompress", u);
        goto bad;
      }
      data = raw;
    }
    if (verify >= CAS_VERIFY_FULL) {
      struct cas_hash hh;

      if (cas_hash_compute (data, CAS_UNIT_SIZE, &hh) == -1) {
        memset (r->buf, 0, r->len);
        return -1;
      }
      if (!cas_hash_equal (&hh, &se[u].hash)) {
        snprintf (msg, msglen, "slot %u: unit does not match its SHA-256",
                  u);
        goto bad;
      }
    }
    if (r->src != r->buf)
      memcpy (r->buf + (ustart + from - r->off), data + from, to - from);
  }
  return 0;
 bad:
  *problem = msg;
  errno = EIO;
  return -1;
}

/* Read from the record at loc (entry value v).  0, or -1 with errno
 * (ESTALE: the pack was retired, look again; no message then).
 */
static int
read_record (struct cas_extents *ext, uint64_t eid, uint64_t v,
             unsigned slot, unsigned count, uint32_t off, uint32_t len,
             uint8_t *buf, enum cas_verify verify)
{
  struct run_read r;
  struct cas_slot_entry se[CAS_UNITS_MAX];
  const char *problem;
  bool in_buf = false;
  char msg[128];
  int ret = -1;

  run_init (&r, eid, EXT_LOC (v), slot, count, off, len, buf);
  /* verify=full needs the hashes: the table is read every time. */
  if (verify >= CAS_VERIFY_FULL || !tcache_get (ext, eid, r.loc, &r.ti)) {
    bool guess = off % CAS_UNIT_SIZE == 0 && len % CAS_UNIT_SIZE == 0 &&
      r.first <= SPEC_SKIP_MAX && ext->comp.codec == CAS_CODEC_NONE;

    if (load_table (ext, eid, r.loc, &r.ti, se, r.first, guess ? buf : NULL,
                    len, &in_buf, &problem) == -1) {
      if (errno == EIO)
        run_damaged (ext, &r, problem);
      goto out;
    }
  }
  if (run_plan (ext, &r, in_buf, msg, sizeof msg, &problem) == -1) {
    if (errno == EIO)
      run_damaged (ext, &r, problem);
    goto out;
  }
  if (!in_buf &&
      cas_packs_read_payload (ext->packs, r.loc, r.start[r.first], r.src,
                              r.span) == -1) {
    if (errno != ESTALE)
      run_damaged (ext, &r, "units are truncated");
    goto out;
  }
  if (run_check (ext, &r, se, verify, msg, sizeof msg, &problem) == -1) {
    if (errno == EIO)
      run_damaged (ext, &r, problem);
    goto out;
  }
  ret = 0;
 out:
  free (r.tmp);
  /* Nothing unchecked stays in the caller's buffer (a guessed read may
   * have put another record's bytes there).
   */
  if (ret == -1) {
    int saved = errno;
    memset (buf, 0, len);
    errno = saved;
  }
  return ret;
}

int
cas_extents_read (struct cas_extents *ext, uint64_t eid, unsigned slot,
                  unsigned count, uint32_t off, uint32_t len, void *buf,
                  enum cas_verify verify)
{
  int tries = 0;

  if (count < 1 || slot + count > CAS_UNITS_MAX ||
      off > count * CAS_UNIT_SIZE || len > count * CAS_UNIT_SIZE - off) {
    backend_error ("cas: extent %" PRIu64 ": bad range (slot %u count %u "
                   "bytes %" PRIu32 "+%" PRIu32 ")", eid, slot, count, off,
                   len);
    errno = EINVAL;
    return -1;
  }
  if (len == 0)
    return 0;
  for (;;) {
    uint64_t v = load_entry (ext, eid);
    int r;

    if (v == 0) {
      backend_error ("cas: extent %" PRIu64 " is missing from the store",
                     eid);
      errno = ENOENT;
      return -1;
    }
    if (EXT_IS_PENDING (v)) {
      r = read_pending (ext, eid, slot, count, off, len, buf, NULL, NULL);
      if (r != 0)
        return r == 1 ? 0 : -1;
      continue;                 /* appended meanwhile */
    }
    r = read_record (ext, eid, v, slot, count, off, len, buf, verify);
    if (r == 0 || errno != ESTALE || tries++ >= MAX_STALE_RETRIES)
      return r;
    /* Retired by gc meanwhile: the table points at the copy now. */
  }
}

/* A descriptor read's runs whose tables are cached are read with as few
 * preads as their places allow: runs in one pack, in file order and at
 * most GAP_MAX bytes apart, are one preadv (the bytes between go to a
 * scratch buffer): e.g. an extent's units around one rewritten unit, or
 * consecutive records of a writer's stream.
 */
#define GAP_MAX (2 * CAS_UNIT_SIZE)

static uint64_t
run_file_start (const struct run_read *r)
{
  return CAS_LOC_OFFSET (r->loc) + CAS_RECORD_HEADER_SIZE +
    r->start[r->first];
}

/* Read the runs (cached tables, planned) in groups; a run whose group
 * read fails is marked alone (read again by itself, which retries a
 * retired pack and reports).
 */
static void
read_grouped (struct cas_extents *ext, struct run_read **order, unsigned n)
{
  uint8_t gap_sink[GAP_MAX];    /* written, never read */
  unsigned i = 0;

  while (i < n) {
    struct iovec iov[2 * CAS_DESC_MAX_RUNS];
    uint64_t at = run_file_start (order[i]), end = at + order[i]->span;
    size_t want = order[i]->span, got;
    unsigned j = i + 1, k, niov = 0;

    iov[niov++] = (struct iovec) { order[i]->src, order[i]->span };
    while (j < n &&
           CAS_LOC_PACK (order[j]->loc) == CAS_LOC_PACK (order[i]->loc) &&
           run_file_start (order[j]) >= end &&
           run_file_start (order[j]) - end <= GAP_MAX) {
      uint64_t gap = run_file_start (order[j]) - end;

      if (gap)
        iov[niov++] = (struct iovec) { gap_sink, gap };
      iov[niov++] = (struct iovec) { order[j]->src, order[j]->span };
      want += gap + order[j]->span;
      end = run_file_start (order[j]) + order[j]->span;
      j++;
    }
    if (cas_packs_readv (ext->packs, CAS_LOC (CAS_LOC_PACK (order[i]->loc), 0),
                         at, iov, niov, &got) == -1 || got != want)
      for (k = i; k < j; k++)
        order[k]->alone = true;
    i = j;
  }
}

int
cas_desc_read (struct cas_extents *ext, const struct cas_hash *desc,
               uint32_t bs, uint32_t off, uint32_t len, void *buf,
               enum cas_verify verify)
{
  struct cas_desc d;
  struct run_read runs[CAS_DESC_MAX_RUNS], *order[CAS_DESC_MAX_RUNS];
  uint32_t unit = 0;            /* first unit of the run */
  uint32_t total = len;
  uint8_t *out = buf;
  unsigned k, n = 0, nplanned = 0, i;
  const char *problem;
  char msg[128];
  int ret = -1;

  if (bs % CAS_UNIT_SIZE || bs / CAS_UNIT_SIZE > CAS_UNITS_MAX ||
      off > bs || len > bs - off) {
    errno = EINVAL;
    return -1;
  }
  if (cas_desc_decode (desc, bs / CAS_UNIT_SIZE, &d) == -1) {
    char hex[2 * CAS_HASH_SIZE + 1];
    backend_error ("cas: damaged block descriptor %s",
                   cas_hash_hex (desc, hex));
    errno = EIO;
    return -1;
  }
  if (d.nruns == 0) {
    memset (buf, 0, len);
    return 0;
  }
  for (k = 0; k < d.nruns && len > 0; k++) {
    const struct cas_run *r = &d.run[k];
    uint32_t rstart = unit * CAS_UNIT_SIZE;
    uint32_t rend = rstart + r->count * CAS_UNIT_SIZE;

    unit += r->count;
    if (off >= rend)
      continue;
    {
      uint32_t from = off - rstart;
      uint32_t c = rend - off < len ? rend - off : len;

      if (r->eid == 0)
        memset (out, 0, c);
      else {
        run_init (&runs[n], r->eid, 0, r->slot, r->count, from, c, out);
        runs[n].alone = true;
        n++;
      }
      out += c, off += c, len -= c;
    }
  }
  /* The runs of extents whose tables are cached: planned, read in
   * groups, checked.  A run that cannot (pending, not cached,
   * verify=full, or anything unusual) is read alone, as
   * cas_extents_read reads it.
   */
  if (n > 1 && verify < CAS_VERIFY_FULL) {
    for (i = 0; i < n; i++) {
      struct run_read *r = &runs[i];
      uint64_t v = load_entry (ext, r->eid);

      if (v == 0 || EXT_IS_PENDING (v))
        continue;
      r->loc = EXT_LOC (v);
      if (!tcache_get (ext, r->eid, r->loc, &r->ti) ||
          run_plan (ext, r, false, msg, sizeof msg, &problem) == -1) {
        free (r->tmp);
        r->tmp = NULL;
        continue;
      }
      r->alone = false;
      /* In file order (insertion: at most 5). */
      {
        unsigned j = nplanned++;
        while (j > 0 && (CAS_LOC_PACK (order[j - 1]->loc) >
                         CAS_LOC_PACK (r->loc) ||
                         (CAS_LOC_PACK (order[j - 1]->loc) ==
                          CAS_LOC_PACK (r->loc) &&
                          run_file_start (order[j - 1]) >
                          run_file_start (r)))) {
          order[j] = order[j - 1];
          j--;
        }
        order[j] = r;
      }
    }
    read_grouped (ext, order, nplanned);
  }
  for (i = 0; i < n; i++) {
    struct run_read *r = &runs[i];

    if (r->alone) {
      free (r->tmp);
      r->tmp = NULL;
      if (cas_extents_read (ext, r->eid, r->slot, r->count, r->off, r->len,
                            r->buf, verify) == -1)
        goto out;
    }
    else if (run_check (ext, r, NULL, verify, msg, sizeof msg,
                        &problem) == -1) {
      if (errno == EIO)
        run_damaged (ext, r, problem);
      goto out;
    }
  }
  ret = 0;
 out:
  for (i = 0; i < n; i++)
    free (runs[i].tmp);
  /* Nothing unchecked stays in the caller's buffer: a run read with
   * others may not be checked yet.
   */
  if (ret == -1) {
    int saved = errno;
    memset (buf, 0, total);
    errno = saved;
  }
  return ret;
}

/* ---- for deduplication ---- */

int
cas_extents_slot_hashes (struct cas_extents *ext, uint64_t eid,
                         struct cas_hash hashes[CAS_UNITS_MAX],
                         unsigned *nslots, uint16_t *present)
{
  CLEANUP_FREE uint8_t *payload = NULL;
  int tries = 0;

  for (;;) {
    uint64_t v = load_entry (ext, eid), loc = EXT_LOC (v);
    uint32_t gc_below = ext->gc_below ? atomic_load (ext->gc_below) : 0;
    struct cas_record_header h;
    struct cas_extent_fields f;
    struct cas_slot_entry se[CAS_UNITS_MAX];
    uint32_t start[CAS_UNITS_MAX], got, want;
    const char *problem;
    unsigned i, bad_slot = 0;
    int r;

    if (v == 0 || (v & EXT_DAMAGED))
      return 0;
    if (EXT_IS_PENDING (v)) {
      r = read_pending (ext, eid, 0, 0, 0, 0, NULL, hashes, nslots);
      if (r == 1) {
        *present = (uint16_t) ((1u << *nslots) - 1);
        return 1;
      }
      continue;
    }
    /* gc's new-copy rule: no new reference into a sealed pack. */
    if (gc_below && CAS_LOC_PACK (loc) < gc_below)
      return 0;
    /* Verified: the slot table is enough; else the whole record. */
    want = v & EXT_VERIFIED ? SLOT_TABLE_MAX : EXTENT_PAYLOAD_MAX;
    if (payload == NULL && (payload = malloc (EXTENT_PAYLOAD_MAX)) == NULL)
      return -1;
    if (cas_packs_read_prefix (ext->packs, loc, &h, payload, want,
                               &got) == -1) {
      if (errno == ESTALE && tries++ < MAX_STALE_RETRIES)
        continue;
      if (errno == ENOMEM)
        return -1;
      problem = "record unreadable";
      goto damaged;
    }
    if (cas_extent_parse_table (&h, payload, got, &f, se, start,
                                &problem) == -1)
      goto damaged;
    if (f.eid != eid) {
      problem = "the record there is another extent";
      goto damaged;
    }
    if (!(v & EXT_VERIFIED)) {
      r = cas_extent_check_units (&f, se, start, payload, true, false,
                                  ext->pool, &problem, &bad_slot);
      if (r == -1)
        return -1;
      if (r == 1)
        goto damaged;
      set_flags (ext, eid, loc, EXT_VERIFIED, 0);
    }
    for (i = 0; i < f.nslots; i++)
      hashes[i] = se[i].hash;
    *nslots = f.nslots;
    *present = f.present;
    return 1;
  damaged:
    /* Reported once: the flag is set by one caller. */
    if (set_flags (ext, eid, loc, EXT_DAMAGED, EXT_VERIFIED))
      report (eid, loc, problem);
    return 0;
  }
}

uint64_t
cas_extents_dedup_stamp (struct cas_extents *ext, uint64_t eid)
{
  uint64_t v = load_entry (ext, eid);
  uint32_t gc_below = ext->gc_below ? atomic_load (ext->gc_below) : 0;

  if (v == 0 || (v & EXT_DAMAGED))
    return 0;
  if (EXT_IS_PENDING (v))
    return CAS_EXTENT_STAMP_PENDING;
  if (!(v & EXT_VERIFIED) || (gc_below && CAS_LOC_PACK (v) < gc_below))
    return 0;
  /* A record's location is never 0 (pack 0 is no pack): never 1 either. */
  return EXT_LOC (v) | EXT_VERIFIED;
}

bool
cas_extents_is_damaged (struct cas_extents *ext, uint64_t eid)
{
  return (load_entry (ext, eid) & EXT_DAMAGED) != 0;
}

/* ---- writing ---- */

struct cas_extent_appender *
cas_extent_appender_new (struct cas_extents *ext)
{
  struct cas_extent_appender *a;

  if (ext->readonly) {
    backend_error ("cas: the store is read-only");
    errno = EROFS;
    return NULL;
  }
  a = calloc (1, sizeof *a);
  if (a == NULL || (a->payload = malloc (EXTENT_PAYLOAD_MAX)) == NULL) {
    free (a);
    backend_error ("cas: extent appender: out of memory");
    errno = ENOMEM;
    return NULL;
  }
  a->ext = ext;
  return a;
}

/* Write DIR/extent-ids saying next_group, atomically and durably. */
static int
write_extent_ids (const char *dir, uint64_t next_group)
{
  CLEANUP_FREE char *path = NULL, *tmp = NULL;
  struct cas_extent_ids x = { .next_group = next_group };
  uint8_t buf[CAS_EXTENT_IDS_SIZE];
  int fd;

  if (asprintf (&path, "%s/extent-ids", dir) == -1) {
    path = NULL;
    return -1;
  }
  if (asprintf (&tmp, "%s/.extent-ids.tmp", dir) == -1) {
    tmp = NULL;
    return -1;
  }
  cas_extent_ids_encode (&x, buf);
  fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd == -1)
    return -1;
  if (write (fd, buf, sizeof buf) != (ssize_t) sizeof buf) {
    int saved = errno ? errno : EIO;
    close (fd);
    unlink (tmp);
    errno = saved;
    return -1;
  }
  if (fsync (fd) == -1 || close (fd) == -1) {
    int saved = errno;
    unlink (tmp);
    errno = saved;
    return -1;
  }
  if (rename (tmp, path) == -1) {
    int saved = errno;
    unlink (tmp);
    errno = saved;
    return -1;
  }
  return cas_fsync_dir (dir);
}

/* Make group g (>= the reservation when called) reserved durably: one
 * thread writes the raised reservation, the others wait on the lock
 * and find it raised.
 */
static int
reserve_group (struct cas_extents *ext, uint64_t g)
{
  int r = 0;

  pthread_mutex_lock (&ext->reserve_lock);
  if (g >= atomic_load (&ext->reserved_group)) {
    uint64_t limit = g + CAS_EXTENT_RESERVE_GROUPS;

    if (ext->dir == NULL) {
      /* No store directory: nothing to make durable (tests). */
      atomic_store (&ext->reserved_group, limit);
    }
    else if (write_extent_ids (ext->dir, limit) == -1) {
      backend_error ("cas: %s/extent-ids: reserving extent ids: %m",
                     ext->dir);
      errno = EIO;
      r = -1;
    }
    else {
      atomic_store (&ext->reserved_group, limit);
      ext->ids_file = CAS_EXTENT_IDS_OK;
    }
  }
  pthread_mutex_unlock (&ext->reserve_lock);
  return r;
}

/* A new pending extent with the writer's next id (a fresh group when
 * its group is used up, reserved durably first).
 */
static int
open_extent (struct cas_extent_appender *a)
{
  struct cas_extents *ext = a->ext;
  _Atomic uint64_t *e;
  struct pending *p;
  uint64_t eid;

  if (a->next_eid == a->group_end) {
    uint64_t g = atomic_fetch_add (&ext->next_group, 1);

    if ((g + 1) * CAS_GROUP_EXTENTS - 1 > CAS_EXTENT_ID_MAX) {
      backend_error ("cas: the store has used up its extent ids");
      errno = ENOSPC;
      return -1;
    }
    if (g >= atomic_load (&ext->reserved_group) &&
        reserve_group (ext, g) == -1)
      return -1;
    a->next_eid = g * CAS_GROUP_EXTENTS;
    a->group_end = a->next_eid + CAS_GROUP_EXTENTS;
  }
  eid = a->next_eid;
  p = calloc (1, sizeof *p);
  e = entry (ext, eid, true);
  if (p == NULL || e == NULL) {
    free (p);
    backend_error ("cas: extent %" PRIu64 ": out of memory", eid);
    errno = ENOMEM;
    return -1;
  }
  a->next_eid++;
  p->eid = eid;
  p->codec = CAS_CODEC_NONE;
  note_max (ext, eid);
  /* On the list before the table says pending (see the top). */
  pthread_mutex_lock (&ext->pending_lock);
  p->next = ext->pending;
  ext->pending = p;
  pthread_mutex_unlock (&ext->pending_lock);
  atomic_store_explicit (e, EXT_PENDING, memory_order_release);
  a->open = p;
  return 0;
}

static void
unlink_pending (struct cas_extents *ext, struct pending *p)
{
  struct pending **pp;

  pthread_mutex_lock (&ext->pending_lock);
  for (pp = &ext->pending; *pp; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  pthread_mutex_unlock (&ext->pending_lock);
}

/* Append the open extent to the packs: the record, then the table entry
 * (verified: this process wrote the bytes it checksummed), hooks, and
 * only then off the pending list.  On failure it stays open (and
 * readable); the next add or flush tries again.
 */
static int
append_open (struct cas_extent_appender *a)
{
  struct cas_extents *ext = a->ext;
  struct pending *p = a->open;
  struct cas_extent_fields f = { .eid = p->eid, .nslots = p->n,
                                 .codec = p->codec };
  struct cas_record_header h = { .type = CAS_RECORD_EXTENT };
  uint32_t at = p->n * CAS_SLOT_ENTRY_SIZE, stored = 0;
  uint64_t loc;
  unsigned i;

  f.present = (uint16_t) ((1u << p->n) - 1);
  for (i = 0; i < p->n; i++) {
    const struct cas_slot_entry *se = &p->slot[i];

    cas_slot_entry_encode (se, a->payload + i * CAS_SLOT_ENTRY_SIZE);
    memcpy (a->payload + at,
            se->flags & CAS_SLOT_F_COMPRESSED ? p->packed[i] : p->raw[i],
            se->stored_len);
    at += se->stored_len;
    stored += se->stored_len;
  }
  cas_extent_fields_encode (&f, &h.hash);
  h.length = at;
  if (cas_packs_append (ext->packs, &h, a->payload, &loc) == -1)
    return -1;
  atomic_store_explicit (entry (ext, p->eid, false), loc | EXT_VERIFIED,
                         memory_order_release);
  atomic_fetch_add (&ext->extents, 1);
  atomic_fetch_add (&ext->units, p->n);
  atomic_fetch_add (&ext->stored_bytes, stored);
  atomic_fetch_add (&ext->raw_bytes, (uint64_t) p->n * CAS_UNIT_SIZE);
  for (i = 0; i < p->n; i++)
    if (cas_unit_is_hook (&p->slot[i].hash))
      hooks_add (ext, &p->slot[i].hash, p->eid);
  unlink_pending (ext, p);
  free (p);
  a->open = NULL;
  return 0;
}

int
cas_extent_appender_add (struct cas_extent_appender *a,
                         const struct cas_hash *h, const void *unit,
                         uint64_t *eid, unsigned *slot)
{
  struct cas_extents *ext = a->ext;
  struct cas_slot_entry *se;
  struct pending *p;
  unsigned s;

  if (a->open && a->open->n == CAS_UNITS_MAX && append_open (a) == -1)
    return -1;
  if (a->open == NULL && open_extent (a) == -1)
    return -1;
  p = a->open;
  s = p->n;
  se = &p->slot[s];
  /* Slot s is not visible to readers until n says so. */
  memcpy (p->raw[s], unit, CAS_UNIT_SIZE);
  se->hash = *h;
  se->flags = 0;
  se->stored_len = CAS_UNIT_SIZE;
  if (ext->comp.codec != CAS_CODEC_NONE) {
    uint32_t out;

    /* Kept compressed only if that saves 1/8 (FORMAT.md). */
    if (cas_compress (ext->pool, &ext->comp, unit, CAS_UNIT_SIZE,
                      p->packed[s], cas_compress_limit (CAS_UNIT_SIZE),
                      &out) == -1)
      return -1;
    if (out > 0 && out <= cas_compress_limit (CAS_UNIT_SIZE)) {
      se->flags = CAS_SLOT_F_COMPRESSED;
      se->stored_len = out;
      p->codec = ext->comp.codec;
    }
  }
  se->crc = crc32c (0, se->flags ? p->packed[s] : p->raw[s], se->stored_len);
  pthread_mutex_lock (&ext->pending_lock);
  p->n = s + 1;
  pthread_mutex_unlock (&ext->pending_lock);
  *eid = p->eid;
  *slot = s;
  /* Full: appended now.  If that fails the unit is still added (and
   * readable); the next add or flush tries again and reports.
   */
  if (p->n == CAS_UNITS_MAX && append_open (a) == -1)
    backend_debug ("cas: extent %" PRIu64 ": append failed, retried at the "
                   "next add or flush", p->eid);
  return 0;
}

unsigned
cas_extent_appender_room (const struct cas_extent_appender *a)
{
  return a->open ? CAS_UNITS_MAX - a->open->n : CAS_UNITS_MAX;
}

int
cas_extent_appender_flush (struct cas_extent_appender *a)
{
  if (a->open == NULL || a->open->n == 0)
    return 0;
  return append_open (a);
}

int
cas_extent_appender_free (struct cas_extent_appender *a)
{
  int r = 0;

  if (a == NULL)
    return 0;
  if (cas_extent_appender_flush (a) == -1) {
    struct pending *p = a->open;

    /* Its units are lost (the caller was told): the id reads as
     * missing from now on, never as other data.
     */
    backend_error ("cas: extent %" PRIu64 ": %u units could not be "
                   "written", p->eid, p->n);
    atomic_store (entry (a->ext, p->eid, false), 0);
    unlink_pending (a->ext, p);
    free (p);
    r = -1;
  }
  else if (a->open) {
    atomic_store (entry (a->ext, a->open->eid, false), 0);
    unlink_pending (a->ext, a->open);
    free (a->open);
  }
  free (a->payload);
  free (a);
  return r;
}

/* ---- the pack store's part ---- */

struct cas_extents *
cas_extents_new (struct cas_packs *packs, const char *dir, bool readonly,
                 _Atomic uint32_t *gc_below)
{
  struct cas_extents *ext = calloc (1, sizeof *ext);
  unsigned i;

  if (ext == NULL)
    return NULL;
  ext->pool = cas_codec_pool_new ();
  if (ext->pool == NULL) {
    free (ext);
    return NULL;
  }
  if (dir && (ext->dir = strdup (dir)) == NULL) {
    cas_codec_pool_free (ext->pool);
    free (ext);
    return NULL;
  }
  ext->packs = packs;
  ext->readonly = readonly;
  ext->gc_below = gc_below;
  atomic_init (&ext->next_group, 1);
  atomic_init (&ext->reserved_group, 0);
  ext->ids_file = CAS_EXTENT_IDS_ABSENT;
  pthread_mutex_init (&ext->reserve_lock, NULL);
  pthread_mutex_init (&ext->pending_lock, NULL);
  pthread_rwlock_init (&ext->hooks_lock, NULL);
  /* Without the cache (no memory for it) every read reads its table. */
  ext->tcache = calloc (TCACHE_SETS, sizeof *ext->tcache);
  ext->tcache_lock = malloc (TCACHE_LOCKS * sizeof *ext->tcache_lock);
  if (ext->tcache == NULL || ext->tcache_lock == NULL) {
    free (ext->tcache);
    free (ext->tcache_lock);
    ext->tcache = NULL;
    ext->tcache_lock = NULL;
  }
  else
    for (i = 0; i < TCACHE_LOCKS; i++)
      pthread_mutex_init (&ext->tcache_lock[i], NULL);
  return ext;
}

/* Free every level of the table (no reader may be left). */
static void
free_table (struct cas_extents *ext)
{
  uint32_t t, m;

  for (t = 0; t < (1u << TOP_BITS); t++) {
    struct table_mid *mid = ext->top[t];
    if (mid == NULL)
      continue;
    for (m = 0; m < (1u << MID_BITS); m++)
      free ((void *) mid->leaf[m]);
    free (mid);
    ext->top[t] = NULL;
  }
  atomic_store (&ext->leaves, 0);
  atomic_store (&ext->mids, 0);
}

void
cas_extents_free (struct cas_extents *ext)
{
  if (ext == NULL)
    return;
  while (ext->pending) {
    struct pending *p = ext->pending;
    ext->pending = p->next;
    free (p);
  }
  free_table (ext);
  free (ext->hooks);
  cas_codec_pool_free (ext->pool);
  pthread_mutex_destroy (&ext->pending_lock);
  pthread_rwlock_destroy (&ext->hooks_lock);
  pthread_mutex_destroy (&ext->reserve_lock);
  free (ext->dir);
  if (ext->tcache_lock) {
    unsigned i;
    for (i = 0; i < TCACHE_LOCKS; i++)
      pthread_mutex_destroy (&ext->tcache_lock[i]);
  }
  free (ext->tcache_lock);
  free (ext->tcache);
  free (ext);
}

void
cas_extents_set_compression (struct cas_extents *ext,
                             const struct cas_compression *c)
{
  ext->comp = *c;
}

/* Units and bytes of the record at loc, from its header (0 if
 * unreadable: stats only).
 */
static void
record_sums (struct cas_extents *ext, uint64_t loc, uint64_t *units,
             uint64_t *stored)
{
  struct cas_record_header h;
  struct cas_extent_fields f;

  *units = *stored = 0;
  if (cas_packs_read_header (ext->packs, loc, &h) == 0 &&
      cas_extent_fields_decode (&h.hash, &f) == 0) {
    *units = __builtin_popcount (f.present);
    *stored = h.length - f.nslots * CAS_SLOT_ENTRY_SIZE;
  }
}

static void
sums_add (struct cas_extents *ext, uint64_t loc, int sign)
{
  uint64_t units, stored;

  record_sums (ext, loc, &units, &stored);
  if (sign > 0) {
    atomic_fetch_add (&ext->units, units);
    atomic_fetch_add (&ext->stored_bytes, stored);
    atomic_fetch_add (&ext->raw_bytes, units * CAS_UNIT_SIZE);
  }
  else {
    atomic_fetch_sub (&ext->units, units);
    atomic_fetch_sub (&ext->stored_bytes, stored);
    atomic_fetch_sub (&ext->raw_bytes, units * CAS_UNIT_SIZE);
  }
}

/* A second record of one id (a collection's copy, or the original of a
 * copy) wins only if its units check out: a copy torn by a power cut
 * before the collection's sync, its header and slot table intact, must
 * not hide the intact original (the chunk index keeps every copy of a
 * chunk and a read tries the next; this table keeps one).
 */
static bool
newer_copy_intact (struct cas_extents *ext, uint64_t loc)
{
  CLEANUP_FREE uint8_t *payload = malloc (EXTENT_PAYLOAD_MAX);
  struct cas_record_header h;
  struct cas_extent_fields f;
  struct cas_slot_entry se[CAS_UNITS_MAX];
  uint32_t start[CAS_UNITS_MAX], got;
  const char *problem;
  unsigned bad_slot;

  return payload &&
    cas_packs_read_prefix (ext->packs, loc, &h, payload, EXTENT_PAYLOAD_MAX,
                           &got) == 0 && got == h.length &&
    cas_extent_parse_table (&h, payload, got, &f, se, start,
                            &problem) == 0 &&
    cas_extent_check_units (&f, se, start, payload, false, false, NULL,
                            &problem, &bad_slot) == 0;
}

int
cas_extents_add_record (struct cas_extents *ext, uint32_t pack,
                        uint64_t offset)
{
  uint64_t loc = CAS_LOC (pack, offset), old, units;
  uint8_t table[SLOT_TABLE_MAX];
  struct cas_record_header h;
  struct cas_extent_fields f;
  struct cas_slot_entry se[CAS_UNITS_MAX];
  uint32_t start[CAS_UNITS_MAX], got;
  const char *problem;
  _Atomic uint64_t *e;
  unsigned i;

  atomic_fetch_add (&ext->open_tables_read, 1);
  if (cas_packs_read_prefix (ext->packs, loc, &h, table, sizeof table,
                             &got) == -1)
    return 0;                   /* reported; the scan goes on */
  if (cas_extent_parse_table (&h, table, got, &f, se, start,
                              &problem) == -1) {
    backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": extent "
                   "record: %s: not used", pack, offset, problem);
    return 0;
  }
  e = entry (ext, f.eid, true);
  if (e == NULL) {
    backend_error ("cas: extent table: out of memory");
    errno = ENOMEM;
    return -1;
  }
  /* Two records of one id: gc's copy, or an older copy a crash left;
   * the newer pack, the higher offset wins.
   */
  old = atomic_load (e);
  if (old != 0 && EXT_LOC (old) > loc)
    return 0;
  if (old != 0 && !newer_copy_intact (ext, loc)) {
    backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": extent %"
                   PRIu64 ": a newer copy whose units do not check out (a "
                   "torn append): the older copy is used", pack, offset,
                   f.eid);
    return 0;
  }
  atomic_store (e, loc);
  if (old != 0)
    sums_add (ext, EXT_LOC (old), -1);
  else
    atomic_fetch_add (&ext->extents, 1);
  units = __builtin_popcount (f.present);
  atomic_fetch_add (&ext->units, units);
  atomic_fetch_add (&ext->stored_bytes,
                    h.length - f.nslots * CAS_SLOT_ENTRY_SIZE);
  atomic_fetch_add (&ext->raw_bytes, units * CAS_UNIT_SIZE);
  note_max (ext, f.eid);
  for (i = 0; i < f.nslots; i++)
    if ((f.present & (1u << i)) && cas_unit_is_hook (&se[i].hash))
      hooks_add (ext, &se[i].hash, f.eid);
  return 0;
}

/* Read DIR/extent-ids: 0 with *x, or -1 with errno (ENOENT: absent;
 * EIO: damaged or short; EPROTO: another version).
 */
static int
read_extent_ids (const char *dir, struct cas_extent_ids *x)
{
  CLEANUP_FREE char *path = NULL;
  uint8_t buf[CAS_EXTENT_IDS_SIZE + 1];
  ssize_t n;
  int fd;

  if (asprintf (&path, "%s/extent-ids", dir) == -1) {
    path = NULL;
    return -1;
  }
  fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return -1;
  n = read (fd, buf, sizeof buf);
  if (n == -1) {
    int saved = errno;
    close (fd);
    errno = saved;
    return -1;
  }
  close (fd);
  if (n != CAS_EXTENT_IDS_SIZE) {
    errno = EIO;
    return -1;
  }
  return cas_extent_ids_decode (buf, x);
}

int
cas_extents_open_done (struct cas_extents *ext)
{
  uint64_t next = atomic_load (&ext->max_eid) / CAS_GROUP_EXTENTS + 1;
  struct cas_extent_ids x;

  if (ext->dir == NULL)
    ;
  else if (read_extent_ids (ext->dir, &x) == 0) {
    ext->ids_file = CAS_EXTENT_IDS_OK;
    atomic_store (&ext->reserved_group, x.next_group);
    /* Never below the reservation: an id handed out before may have
     * lost its only record (FORMAT.md, "Format version 4").
     */
    if (x.next_group > next)
      next = x.next_group;
  }
  else if (errno == ENOENT) {
    /* A store from before the file, or the file lost: continue from
     * the ids found; the first id handed out writes the file.
     */
    ext->ids_file = CAS_EXTENT_IDS_ABSENT;
    if (atomic_load (&ext->max_eid) > 0)
      backend_debug ("cas: %s/extent-ids absent: extent ids continue "
                     "from the highest found (%" PRIu64 ")", ext->dir,
                     atomic_load (&ext->max_eid));
  }
  else {
    ext->ids_file = CAS_EXTENT_IDS_DAMAGED;
    if (!ext->readonly) {
      /* Guessing low could hand out an id a descriptor names. */
      backend_error ("cas: %s/extent-ids is not usable (%s): the store "
                     "cannot hand out extent ids safely; open it "
                     "read-only, or see FORMAT.md \"Format version 4\"",
                     ext->dir, errno == EPROTO ? "another version"
                     : errno == EIO ? "damaged" : strerror (errno));
      errno = EIO;
      return -1;
    }
    backend_debug ("cas: %s/extent-ids is not usable (ignored: "
                   "read-only)", ext->dir);
  }
  atomic_store (&ext->next_group, next);
  return 0;
}

/* ---- stat, fsck, gc ---- */

void
cas_extents_stats (struct cas_extents *ext, struct cas_extents_stats *s)
{
  memset (s, 0, sizeof *s);
  s->extents = atomic_load (&ext->extents);
  s->units = atomic_load (&ext->units);
  s->unit_bytes_stored = atomic_load (&ext->stored_bytes);
  s->unit_bytes_raw = atomic_load (&ext->raw_bytes);
  pthread_rwlock_rdlock (&ext->hooks_lock);
  s->hooks = ext->hooks_n;
  s->hook_bytes = ext->hooks_cap * sizeof *ext->hooks;
  pthread_rwlock_unlock (&ext->hooks_lock);
  s->table_bytes = atomic_load (&ext->leaves) * LEAF_ENTRIES * sizeof (uint64_t)
    + atomic_load (&ext->mids) * sizeof (struct table_mid);
  s->max_eid = atomic_load (&ext->max_eid);
  s->ids_file = ext->ids_file;
  s->reserved_group = atomic_load (&ext->reserved_group);
  s->open_tables_read = atomic_load (&ext->open_tables_read);
  s->cache_extents = atomic_load (&ext->cache_extents);
}

uint64_t
cas_extents_loc (struct cas_extents *ext, uint64_t eid)
{
  uint64_t v = load_entry (ext, eid);

  return EXT_IS_PENDING (v) ? 0 : EXT_LOC (v);
}

bool
cas_extents_is_current (struct cas_extents *ext, uint64_t eid, uint64_t loc)
{
  uint64_t v = load_entry (ext, eid);

  return v != 0 && !EXT_IS_PENDING (v) && EXT_LOC (v) == EXT_LOC (loc);
}

void
cas_extents_relocate (struct cas_extents *ext, uint64_t eid, uint64_t oldloc,
                      uint64_t newloc)
{
  _Atomic uint64_t *e = entry (ext, eid, false);
  uint64_t v;

  if (e == NULL)
    return;
  v = atomic_load (e);
  do {
    if (EXT_IS_PENDING (v) || EXT_LOC (v) != EXT_LOC (oldloc))
      return;
  } while (!atomic_compare_exchange_weak (e, &v, EXT_LOC (newloc) |
                                          (v & EXT_VERIFIED)));
  /* The cached table is of the old record (a lookup would miss it
   * anyway: it is tagged with oldloc).
   */
  tcache_forget (ext, eid);
  /* A compacted copy may hold fewer units. */
  sums_add (ext, EXT_LOC (oldloc), -1);
  sums_add (ext, EXT_LOC (newloc), 1);
}

void
cas_extents_drop (struct cas_extents *ext, uint64_t eid, uint64_t loc)
{
  _Atomic uint64_t *e = entry (ext, eid, false);
  uint64_t v;

  if (e == NULL)
    return;
  v = atomic_load (e);
  do {
    if (EXT_IS_PENDING (v) || v == 0 || EXT_LOC (v) != EXT_LOC (loc))
      return;
  } while (!atomic_compare_exchange_weak (e, &v, 0));
  tcache_forget (ext, eid);
  sums_add (ext, EXT_LOC (loc), -1);
  atomic_fetch_sub (&ext->extents, 1);
}

uint64_t
cas_extents_max_eid (struct cas_extents *ext)
{
  return atomic_load (&ext->max_eid);
}

/* ---- the index cache's section (FORMAT.md, "The index cache") ----
 * A 64-byte header, then the extents (id, location: 16 bytes each, ids
 * increasing), then the hooks (8 bytes each, as in the hook table).
 */
#define XT_MAGIC "NBDCASXT"
#define XT_HEADER_SIZE 64
#define XT_ENTRY_SIZE 16
#define XT_HOOK_SIZE 8
#define XT_BUF_ENTRIES 4096

/* Call fn for every entry of the table that holds an appended record,
 * in id order; stops at the first non-zero return.
 */
static int
walk_table (struct cas_extents *ext,
            int (*fn) (uint64_t eid, uint64_t v, void *opaque), void *opaque)
{
  uint32_t t, m, i;
  int r;

  for (t = 0; t < (1u << TOP_BITS); t++) {
    struct table_mid *mid = atomic_load (&ext->top[t]);
    if (mid == NULL)
      continue;
    for (m = 0; m < (1u << MID_BITS); m++) {
      _Atomic uint64_t *leaf = atomic_load (&mid->leaf[m]);
      if (leaf == NULL)
        continue;
      for (i = 0; i < LEAF_ENTRIES; i++) {
        uint64_t v = atomic_load_explicit (&leaf[i], memory_order_acquire);
        if (v == 0 || EXT_IS_PENDING (v))
          continue;
        r = fn ((uint64_t) t << (LEAF_BITS + MID_BITS) |
                (uint64_t) m << LEAF_BITS | i, v, opaque);
        if (r)
          return r;
      }
    }
  }
  return 0;
}

struct last_ctx {
  uint64_t *last;
  uint32_t npacks;
};

static int
last_one (uint64_t eid, uint64_t v, void *opaque)
{
  struct last_ctx *c = opaque;
  uint32_t p = CAS_LOC_PACK (v);

  (void) eid;
  if (p >= 1 && p <= c->npacks && CAS_LOC_OFFSET (v) > c->last[p])
    c->last[p] = CAS_LOC_OFFSET (v);
  return 0;
}

void
cas_extents_last_offsets (struct cas_extents *ext, uint64_t *last,
                          uint32_t npacks)
{
  struct last_ctx c = { .last = last, .npacks = npacks };

  walk_table (ext, last_one, &c);
}

struct save_ctx {
  struct cas_extents *ext;
  FILE *fp;
  uint32_t npacks;
  bool partial;                  /* sum the saved records' headers */
  uint64_t count, units, stored, max_eid;
  uint32_t crc;
  size_t used;
  uint8_t buf[XT_BUF_ENTRIES * XT_ENTRY_SIZE];
};

static int
save_flush (struct save_ctx *c)
{
  c->crc = crc32c (c->crc, c->buf, c->used);
  if (c->used && fwrite (c->buf, c->used, 1, c->fp) != 1)
    return -1;
  c->used = 0;
  return 0;
}

static int
save_one (uint64_t eid, uint64_t v, void *opaque)
{
  struct save_ctx *c = opaque;
  uint64_t loc = EXT_LOC (v);

  /* A record in a pack past the table: the opener scans that pack. */
  if (CAS_LOC_PACK (loc) > c->npacks)
    return 0;
  if (c->partial) {
    uint64_t units, stored;

    record_sums (c->ext, loc, &units, &stored);
    c->units += units;
    c->stored += stored;
  }
  put_le64 (c->buf + c->used, eid);
  put_le64 (c->buf + c->used + 8, loc);
  c->used += XT_ENTRY_SIZE;
  c->count++;
  c->max_eid = eid;
  if (c->used == sizeof c->buf && save_flush (c) == -1)
    return -1;
  return 0;
}

int
cas_extents_cache_save (struct cas_extents *ext, FILE *fp, uint32_t npacks)
{
  CLEANUP_FREE struct save_ctx *c = calloc (1, sizeof *c);
  uint8_t hdr[XT_HEADER_SIZE];
  uint32_t hook_crc = 0;
  uint64_t nhooks = 0, max_eid;
  off_t at;
  size_t i;

  if (c == NULL)
    return -1;
  c->ext = ext;
  c->fp = fp;
  c->npacks = npacks;
  /* At close every record is in packs 1..npacks and the counters are
   * exact; a collection's save leaves the packs above its seal out, and
   * their records' share of the counters with them.
   */
  c->partial = npacks < cas_packs_last (ext->packs);
  at = ftello (fp);
  memset (hdr, 0, sizeof hdr);
  if (at == -1 || fwrite (hdr, sizeof hdr, 1, fp) != 1)
    return -1;
  if (walk_table (ext, save_one, c) != 0 || save_flush (c) == -1)
    return -1;
  pthread_rwlock_rdlock (&ext->hooks_lock);
  for (i = 0; i < ext->hooks_cap; i++) {
    uint8_t b[XT_HOOK_SIZE];

    if (ext->hooks[i] == 0)
      continue;
    put_le64 (b, ext->hooks[i]);
    hook_crc = crc32c (hook_crc, b, sizeof b);
    nhooks++;
    if (fwrite (b, sizeof b, 1, fp) != 1) {
      pthread_rwlock_unlock (&ext->hooks_lock);
      return -1;
    }
  }
  pthread_rwlock_unlock (&ext->hooks_lock);
  /* The highest id ever seen, not only saved: an id of an extent a
   * collection dropped is not handed out again.
   */
  max_eid = atomic_load (&ext->max_eid);
  if (c->max_eid > max_eid)
    max_eid = c->max_eid;
  memcpy (hdr, XT_MAGIC, 8);
  put_le64 (hdr + 8, c->count);
  put_le64 (hdr + 16, nhooks);
  put_le64 (hdr + 24, max_eid);
  put_le64 (hdr + 32, c->partial ? c->units : atomic_load (&ext->units));
  put_le64 (hdr + 40, c->partial ? c->stored
            : atomic_load (&ext->stored_bytes));
  put_le32 (hdr + 48, c->crc);
  put_le32 (hdr + 52, hook_crc);
  put_le32 (hdr + 60, crc32c (0, hdr, 60));
  if (fseeko (fp, at, SEEK_SET) == -1 ||
      fwrite (hdr, sizeof hdr, 1, fp) != 1 ||
      fseeko (fp, 0, SEEK_END) == -1)
    return -1;
  return 0;
}

int
cas_extents_cache_load (struct cas_extents *ext, FILE *fp, uint64_t len,
                        const struct cas_index_pack *packs, uint32_t npacks)
{
  CLEANUP_FREE uint8_t *buf = malloc (XT_BUF_ENTRIES * XT_ENTRY_SIZE);
  uint8_t hdr[XT_HEADER_SIZE];
  uint64_t count, nhooks, max_eid, units, stored, done, prev = 0;
  uint32_t crc = 0, hook_crc = 0;
  size_t cap;

  if (buf == NULL || len < XT_HEADER_SIZE ||
      fread (hdr, sizeof hdr, 1, fp) != 1 ||
      memcmp (hdr, XT_MAGIC, 8) != 0 ||
      get_le32 (hdr + 60) != crc32c (0, hdr, 60))
    goto bad;
  count = get_le64 (hdr + 8);
  nhooks = get_le64 (hdr + 16);
  max_eid = get_le64 (hdr + 24);
  units = get_le64 (hdr + 32);
  stored = get_le64 (hdr + 40);
  /* Nothing is sized from the header before it agrees with the file. */
  len -= XT_HEADER_SIZE;
  if (count > len / XT_ENTRY_SIZE ||
      nhooks != (len - count * XT_ENTRY_SIZE) / XT_HOOK_SIZE ||
      len != count * XT_ENTRY_SIZE + nhooks * XT_HOOK_SIZE ||
      max_eid > CAS_EXTENT_ID_MAX || units > count * CAS_UNITS_MAX ||
      stored > units * CAS_UNIT_SIZE)
    goto bad;
  for (done = 0; done < count; ) {
    uint64_t n = count - done, k;

    if (n > XT_BUF_ENTRIES)
      n = XT_BUF_ENTRIES;
    if (fread (buf, n * XT_ENTRY_SIZE, 1, fp) != 1)
      goto bad;
    crc = crc32c (crc, buf, n * XT_ENTRY_SIZE);
    for (k = 0; k < n; k++) {
      uint64_t eid = get_le64 (buf + k * XT_ENTRY_SIZE);
      uint64_t loc = get_le64 (buf + k * XT_ENTRY_SIZE + 8);
      uint32_t p = CAS_LOC_PACK (loc);
      _Atomic uint64_t *e;

      /* Ids increase (one entry each) up to the highest; a location is
       * a record boundary in a part of a pack the cache covers.
       */
      if (eid <= prev || eid > max_eid || (loc & EXT_FLAGS) != 0 ||
          p == 0 || p > npacks ||
          CAS_LOC_OFFSET (loc) < CAS_PACK_HEADER_SIZE ||
          CAS_LOC_OFFSET (loc) >= packs[p].covered)
        goto bad;
      if ((e = entry (ext, eid, true)) == NULL)
        goto bad;
      atomic_store (e, loc);
      prev = eid;
    }
    done += n;
  }
  if (crc != get_le32 (hdr + 48))
    goto bad;
  for (cap = 1024; nhooks * 4 > (uint64_t) cap * 3; cap *= 2)
    ;
  pthread_rwlock_wrlock (&ext->hooks_lock);
  free (ext->hooks);
  ext->hooks = calloc (cap, sizeof *ext->hooks);
  ext->hooks_cap = ext->hooks ? cap : 0;
  ext->hooks_n = 0;
  for (done = 0; ext->hooks && done < nhooks; ) {
    uint64_t n = nhooks - done, k;

    if (n > XT_BUF_ENTRIES)
      n = XT_BUF_ENTRIES;
    if (fread (buf, n * XT_HOOK_SIZE, 1, fp) != 1)
      break;
    hook_crc = crc32c (hook_crc, buf, n * XT_HOOK_SIZE);
    for (k = 0; k < n; k++) {
      uint64_t v = get_le64 (buf + k * XT_HOOK_SIZE);
      uint64_t eid = v & CAS_EXTENT_ID_MAX;

      if (eid == 0 || eid > max_eid)
        break;
      if (hooks_put (ext->hooks, cap, v >> 40, eid))
        ext->hooks_n++;
    }
    if (k < n)
      break;
    done += n;
  }
  pthread_rwlock_unlock (&ext->hooks_lock);
  if (ext->hooks == NULL || done != nhooks ||
      hook_crc != get_le32 (hdr + 52))
    goto bad;
  atomic_store (&ext->extents, count);
  atomic_store (&ext->units, units);
  atomic_store (&ext->stored_bytes, stored);
  atomic_store (&ext->raw_bytes, units * CAS_UNIT_SIZE);
  atomic_store (&ext->cache_extents, count);
  note_max (ext, max_eid);
  return 0;
 bad:
  errno = EIO;
  return -1;
}

void
cas_extents_reset (struct cas_extents *ext)
{
  free_table (ext);
  /* Nothing read yet, but the cache is emptied with the table (fresh
   * pages rather than a memset that would touch all of them).
   */
  if (ext->tcache) {
    free (ext->tcache);
    ext->tcache = calloc (TCACHE_SETS, sizeof *ext->tcache);
  }
  pthread_rwlock_wrlock (&ext->hooks_lock);
  free (ext->hooks);
  ext->hooks = NULL;
  ext->hooks_cap = ext->hooks_n = 0;
  pthread_rwlock_unlock (&ext->hooks_lock);
  atomic_store (&ext->extents, 0);
  atomic_store (&ext->units, 0);
  atomic_store (&ext->stored_bytes, 0);
  atomic_store (&ext->raw_bytes, 0);
  atomic_store (&ext->max_eid, 0);
  atomic_store (&ext->cache_extents, 0);
  atomic_store (&ext->next_group, 1);
}
