/* Reference sets: which chunks the trees of some roots reference, and for
 * each chunk whether one root references it alone or several do.  Space
 * accounting (nbdcas stat: what deleting a volume or snapshot would free,
 * what nobody references, how much compression saves) and garbage
 * collection's mark are built on it.  See store.h for the contract.
 *
 * An open-addressing table (linear probing) of 16-byte entries: the first
 * 8 bytes of the chunk's hash (as the index keys chunks), its owner (the
 * last root that marked it; the SHARED bit says another did before) and
 * its payload length as stored (and whether that is compressed).  Roots
 * are walked one after the other, so "the last root that marked it"
 * tells whether the root being walked has counted the chunk yet.  Two
 * chunks whose hashes share 8 bytes count as one here: at 10^9 chunks the
 * chance of any such pair is 3%, and the effect is a few KiB counted
 * once instead of twice -- never a chunk wrongly deleted, since garbage
 * collection keeps everything whose key is marked.
 *
 * Each root's tree is walked whole (its mapped blocks are counted on the
 * way): the cost is the mapped part of every root, in map node reads.
 *
 * Format 4: a leaf's slots are block descriptors (format.h cas_desc),
 * runs of unit references (extent id, slot).  Map nodes are marked by
 * hash as above; units in a dense array indexed by extent id (ids are
 * handed out in order from 1), a 16-bit mask of the slots referenced
 * per extent: 2 bytes per extent for garbage collection.  Space
 * accounting (cas_refs_add_root) also keeps, per unit, the last root
 * that referenced it and whether another did before (4 bytes), and per
 * extent what its slot table says (40 bytes, read once per extent):
 * about 104 bytes per 64 KiB of referenced unique data.
 *
 * Thread safety: none; one user at a time.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cleanup.h"
#include "extent.h"
#include "le.h"
#include "storeint.h"

#define F CAS_MAP_FANOUT
/* In length, above the payload bytes (at most CAS_MAX_PAYLOAD, 21 bits): */
#define NODE (UINT32_C (1) << 31)        /* a map node */
#define SHARED (UINT32_C (1) << 30)      /* marked by more than one root */
#define COMPRESSED (UINT32_C (1) << 29)  /* a data chunk stored compressed */
#define LENGTH_MASK (COMPRESSED - 1)

struct ref {
  uint64_t key;                 /* 0: empty (a zero key is made 1) */
  uint32_t owner;               /* the last root that marked it */
  uint32_t length;              /* payload bytes as stored, and the flags */
};

/* Format 4: an extent's slot table as far as accounting needs it. */
struct ext_entry {
  uint32_t record_bytes;        /* its record, header included; 0: not
                                   read yet; EXT_UNREADABLE: missing or
                                   damaged (fsck says which) */
  uint16_t present, compressed; /* slot masks */
  uint16_t stored[CAS_UNITS_MAX];  /* bytes a present slot takes */
  uint8_t nslots;
};
#define EXT_UNREADABLE UINT32_MAX
#define UNIT_SHARED (UINT32_C (1) << 31)  /* in unit_owner */

struct cas_refs {
  struct ref *tab;
  uint64_t mask, count;
  uint32_t blocksize;           /* a data chunk's raw length */
  /* Marking skips the subtree of a map node walked before.  A key is not
   * a name (a data chunk or another node may share a node's 8 bytes), so
   * the walked nodes are remembered apart, by full hash: there are about
   * 1/1024 as many nodes as data chunks, so this costs little.
   */
  struct cas_hash *nodes;       /* all zero: empty */
  uint64_t node_mask, node_count;
  /* Format 4 (set by the first root walked): */
  struct cas_extents *ext;      /* NULL: not a format-4 store */
  struct chunkstore *cs;
  uint32_t units;               /* per block */
  uint16_t *live;               /* [eid]: the slots referenced */
  uint64_t nlive;               /* entries of live (and of the two below) */
  uint64_t live_extents;        /* ids whose mask is not 0 */
  bool per_unit;                /* accounting: the arrays below are kept */
  uint32_t *unit_owner;         /* [eid * CAS_UNITS_MAX + slot]: the last
                                   root that referenced it, UNIT_SHARED */
  struct ext_entry *ext_info;   /* [eid] */
};

static uint64_t
key_of (const struct cas_hash *h)
{
  uint64_t k = get_le64 (h->b);
  return k ? k : 1;
}

static uint64_t
slot_of (uint64_t key, uint64_t mask)
{
  /* The low bits of a SHA-256 prefix are uniform already. */
  return key & mask;
}

struct cas_refs *
cas_refs_new (uint64_t expect)
{
  struct cas_refs *r = calloc (1, sizeof *r);
  uint64_t slots = 1024;

  if (r == NULL)
    return NULL;
  while (slots < expect + expect / 4 + 16)
    slots *= 2;
  r->tab = calloc (slots, sizeof *r->tab);
  if (r->tab == NULL) {
    free (r);
    errno = ENOMEM;
    return NULL;
  }
  r->mask = slots - 1;
  return r;
}

void
cas_refs_free (struct cas_refs *r)
{
  if (r) {
    free (r->tab);
    free (r->nodes);
    free (r->live);
    free (r->unit_owner);
    free (r->ext_info);
    free (r);
  }
}

uint64_t
cas_refs_memory (const struct cas_refs *r)
{
  return sizeof *r + (r->mask + 1) * sizeof *r->tab +
    (r->nodes ? (r->node_mask + 1) * sizeof *r->nodes : 0) +
    r->nlive * (sizeof *r->live +
                (r->per_unit ? CAS_UNITS_MAX * sizeof *r->unit_owner +
                 sizeof *r->ext_info : 0));
}

/* Make room for extent id eid: 0 done, 1 no such extent can exist (an id
 * above every id handed out: a reference to it resolves to nothing, so
 * there is nothing to keep), -1 out of memory.
 */
static int
ext_reserve (struct cas_refs *r, uint64_t eid)
{
  uint64_t max, n, old = r->nlive;

  if (eid < r->nlive)
    return 0;
  max = cas_extents_max_eid (r->ext);
  if (eid > max)
    return 1;
  /* Up to the highest id in use, and an eighth more for what writers
   * add while the walk goes on.
   */
  n = max + 1 + (max + 1) / 8;
  if (n < 2 * old)
    n = 2 * old;
  {
    uint16_t *live = realloc (r->live, n * sizeof *live);
    if (live == NULL)
      goto nomem;
    r->live = live;
    memset (live + old, 0, (n - old) * sizeof *live);
  }
  if (r->per_unit) {
    uint32_t *owner = realloc (r->unit_owner,
                               n * CAS_UNITS_MAX * sizeof *owner);
    struct ext_entry *info;

    if (owner == NULL)
      goto nomem;
    r->unit_owner = owner;
    memset (owner + old * CAS_UNITS_MAX, 0,
            (n - old) * CAS_UNITS_MAX * sizeof *owner);
    info = realloc (r->ext_info, n * sizeof *info);
    if (info == NULL)
      goto nomem;
    r->ext_info = info;
    memset (info + old, 0, (n - old) * sizeof *info);
  }
  /* Every array is at least n long now (a failure above leaves nlive as
   * it was, which all of them still cover).
   */
  r->nlive = n;
  return 0;
 nomem:
  backend_error ("cas: marking extents up to id %" PRIu64 ": out of memory",
                 eid);
  errno = ENOMEM;
  return -1;
}

/* What accounting needs of extent eid's slot table: read once. */
static int
ext_read_info (struct cas_refs *r, uint64_t eid)
{
  struct ext_entry *e = &r->ext_info[eid];
  struct cas_extent_facts f;
  unsigned s;

  if (e->record_bytes != 0)
    return 0;
  switch (cas_packstore_extent_facts (r->cs, eid, &f)) {
  case 1:
    e->record_bytes = f.record_bytes;
    e->present = f.present;
    e->compressed = f.compressed;
    e->nslots = f.nslots;
    for (s = 0; s < CAS_UNITS_MAX; s++)
      e->stored[s] = f.stored[s];
    return 0;
  case 0:
    e->record_bytes = EXT_UNREADABLE;
    return 0;
  default:
    /* A damaged record counts as unreadable here: fsck is the place to
     * report it.
     */
    if (errno != EIO)
      return -1;
    e->record_bytes = EXT_UNREADABLE;
    return 0;
  }
}

/* The bytes unit (eid, slot) takes as stored: a unit that cannot be
 * read counts as raw, a slot not stored as nothing.
 */
static uint32_t
unit_stored (const struct cas_refs *r, uint64_t eid, unsigned slot)
{
  const struct ext_entry *e = &r->ext_info[eid];

  if (e->record_bytes == EXT_UNREADABLE)
    return CAS_UNIT_SIZE;
  return e->present & (1u << slot) ? e->stored[slot] : 0;
}

uint16_t
cas_refs_extent_live (const struct cas_refs *r, uint64_t eid)
{
  return eid < r->nlive ? r->live[eid] : 0;
}

uint64_t
cas_refs_live_extents (const struct cas_refs *r)
{
  return r->live_extents;
}

/* Was map node h walked before (by full hash)? */
static bool
node_walked (const struct cas_refs *r, const struct cas_hash *h)
{
  uint64_t i;

  if (r->nodes == NULL)
    return false;
  for (i = slot_of (key_of (h), r->node_mask);
       !cas_hash_is_zero (&r->nodes[i]); i = (i + 1) & r->node_mask)
    if (cas_hash_equal (&r->nodes[i], h))
      return true;
  return false;
}

/* Remember that map node h (not all zero) is walked: 0, -1 no memory. */
static int
node_add (struct cas_refs *r, const struct cas_hash *h)
{
  uint64_t i;

  if ((r->node_count + 1) * 5 > (r->node_mask + 1) * 4) {
    uint64_t slots = r->nodes ? 2 * (r->node_mask + 1) : 64, j;
    struct cas_hash *t = calloc (slots, sizeof *t);

    if (t == NULL) {
      errno = ENOMEM;
      return -1;
    }
    for (j = 0; r->nodes && j <= r->node_mask; j++)
      if (!cas_hash_is_zero (&r->nodes[j])) {
        i = slot_of (key_of (&r->nodes[j]), slots - 1);
        while (!cas_hash_is_zero (&t[i]))
          i = (i + 1) & (slots - 1);
        t[i] = r->nodes[j];
      }
    free (r->nodes);
    r->nodes = t;
    r->node_mask = slots - 1;
  }
  for (i = slot_of (key_of (h), r->node_mask);
       !cas_hash_is_zero (&r->nodes[i]); i = (i + 1) & r->node_mask)
    if (cas_hash_equal (&r->nodes[i], h))
      return 0;
  r->nodes[i] = *h;
  r->node_count++;
  return 0;
}

static int
grow (struct cas_refs *r)
{
  uint64_t slots = 2 * (r->mask + 1), i;
  struct ref *tab = calloc (slots, sizeof *tab);

  if (tab == NULL) {
    errno = ENOMEM;
    return -1;
  }
  for (i = 0; i <= r->mask; i++)
    if (r->tab[i].key) {
      uint64_t j = slot_of (r->tab[i].key, slots - 1);
      while (tab[j].key)
        j = (j + 1) & (slots - 1);
      tab[j] = r->tab[i];
    }
  free (r->tab);
  r->tab = tab;
  r->mask = slots - 1;
  return 0;
}

/* The entry of h, added (owner 0) if absent; NULL: out of memory. */
static struct ref *
lookup_add (struct cas_refs *r, const struct cas_hash *h, bool *added)
{
  uint64_t key = key_of (h), i;

  if ((r->count + 1) * 5 > (r->mask + 1) * 4 && grow (r) == -1)
    return NULL;
  for (i = slot_of (key, r->mask); r->tab[i].key; i = (i + 1) & r->mask)
    if (r->tab[i].key == key) {
      *added = false;
      return &r->tab[i];
    }
  r->tab[i].key = key;
  r->tab[i].owner = 0;
  r->tab[i].length = 0;
  r->count++;
  *added = true;
  return &r->tab[i];
}

bool
cas_refs_has (const struct cas_refs *r, const struct cas_hash *h)
{
  uint64_t key = key_of (h), i;

  for (i = slot_of (key, r->mask); r->tab[i].key; i = (i + 1) & r->mask)
    if (r->tab[i].key == key)
      return true;
  return false;
}

/* Note that owner references chunk h: its entry, or NULL (out of
 * memory).  *first: owner had not marked it before; *added: nobody had
 * (the caller sets its length).
 */
static struct ref *
mark (struct cas_refs *r, const struct cas_hash *h, uint32_t owner,
      bool *first, bool *added)
{
  struct ref *e = lookup_add (r, h, added);

  if (e == NULL)
    return NULL;
  *first = *added || e->owner != owner;
  if (!*added && e->owner != owner)
    e->length |= SHARED;
  e->owner = owner;
  return e;
}

struct walk {
  struct cas_store *st;
  struct cas_refs *refs;
  uint32_t owner;
  bool skip_seen;               /* a node already marked: its subtree is */
  bool sizes;                   /* read each new data chunk's stored size
                                   (a store that compresses) */
  uint64_t nblocks;
  uint64_t block;               /* the block being marked */
  struct cas_refs_root_stats rs;
  struct cas_hash *bufs[8];     /* one node per level */
};

/* A data chunk h the walk meets, first in the whole set (added) or first
 * for this root (first).
 */
static int
mark_data (struct walk *w, const struct cas_hash *h)
{
  uint32_t bs = w->st->sb.blocksize;
  bool first, added;
  struct ref *e = mark (w->refs, h, w->owner, &first, &added);

  if (e == NULL)
    return -1;
  if (added) {
    uint32_t raw = bs, stored = bs;

    /* Its record header says how it is stored (one small read per
     * distinct chunk, only in a store that compresses).  A chunk that
     * cannot be found counts as raw: fsck is the place to report it.
     */
    if (w->sizes &&
        w->st->cs->ops->sizes (w->st->cs, h, &raw, &stored) == -1)
      return -1;
    e->length = stored < raw ? (stored | COMPRESSED) : bs;
  }
  if (first) {
    w->rs.data_chunks++;
    w->rs.raw_bytes += bs;
    w->rs.stored_bytes += e->length & LENGTH_MASK;
  }
  return 0;
}

/* Format 4: the unit references of a block's descriptor d. */
static int
mark_desc (struct walk *w, const struct cas_hash *d)
{
  struct cas_refs *r = w->refs;
  struct cas_desc desc;
  unsigned k, s;

  if (cas_desc_decode (d, r->units, &desc) == -1) {
    char hex[2 * CAS_HASH_SIZE + 1];

    backend_error ("cas: block %" PRIu64 ": its descriptor %s is damaged",
                   w->block, cas_hash_hex (d, hex));
    errno = EIO;
    return -1;
  }
  for (k = 0; k < desc.nruns; k++) {
    const struct cas_run *run = &desc.run[k];
    uint64_t eid = run->eid;

    if (eid == 0)
      continue;                 /* zero units */
    w->rs.nonzero_bytes += (uint64_t) run->count * CAS_UNIT_SIZE;
    switch (ext_reserve (r, eid)) {
    case -1:
      return -1;
    case 1:
      /* No such extent: those units are lost (fsck says so); counted
       * as raw here, as a chunk that cannot be found is.
       */
      w->rs.data_chunks += run->count;
      w->rs.raw_bytes += (uint64_t) run->count * CAS_UNIT_SIZE;
      w->rs.stored_bytes += (uint64_t) run->count * CAS_UNIT_SIZE;
      continue;
    }
    if (r->live[eid] == 0)
      r->live_extents++;
    for (s = run->slot; s < (unsigned) run->slot + run->count &&
           s < CAS_UNITS_MAX; s++) {
      uint32_t *o;
      bool first;

      r->live[eid] |= 1u << s;
      if (!r->per_unit)
        continue;
      if (ext_read_info (r, eid) == -1)
        return -1;
      /* As mark() does for chunks: owner, and SHARED once another root
       * marked it before.
       */
      o = &r->unit_owner[eid * CAS_UNITS_MAX + s];
      first = (*o & ~UNIT_SHARED) != w->owner;
      if (*o != 0 && first)
        *o |= UNIT_SHARED;
      *o = (*o & UNIT_SHARED) | w->owner;
      if (first) {
        w->rs.data_chunks++;
        w->rs.raw_bytes += CAS_UNIT_SIZE;
        w->rs.stored_bytes += unit_stored (r, eid, s);
      }
    }
  }
  return 0;
}

/* Node h of height `height` (1: a leaf) covering blocks from first. */
static int
walk_node (struct walk *w, const struct cas_hash *h, uint32_t height,
           uint64_t first)
{
  struct cas_hash *kids = w->bufs[height];
  uint64_t span = 1, i;
  uint32_t len = 0, k;

  if (cas_hash_is_zero (h) || first >= w->nblocks)
    return 0;
  /* Marking only: a node walked before was walked whole (depth first),
   * so everything under it is marked already.  By full hash: a key
   * marked before may be another chunk's.
   */
  if (w->skip_seen && node_walked (w->refs, h))
    return 0;
  if (cs_get (w->st->cs, h, kids, F * CAS_HASH_SIZE, &len,
              w->st->verify) == -1) {
    if (errno == ENOENT)
      errno = EIO;
    return -1;
  }
  if (len % CAS_HASH_SIZE != 0) {
    backend_error ("cas: map node of bad length %" PRIu32, len);
    errno = EIO;
    return -1;
  }
  memset ((uint8_t *) kids + len, 0, F * CAS_HASH_SIZE - len);
  {
    bool seen_first, added;
    struct ref *e = mark (w->refs, h, w->owner, &seen_first, &added);

    if (e == NULL || (w->skip_seen && node_add (w->refs, h) == -1))
      return -1;
    if (added)
      e->length = len | NODE;
  }
  for (k = 1; k < height; k++)
    span *= F;
  for (i = 0; i < F && first + i * span < w->nblocks; i++) {
    const struct cas_hash *c = &kids[i];
    if (cas_hash_is_zero (c))
      continue;
    if (height == 1) {
      w->rs.mapped_blocks++;
      w->block = first + i;
      if (w->refs->ext) {
        if (mark_desc (w, c) == -1)
          return -1;
        continue;
      }
      w->rs.nonzero_bytes += w->st->sb.blocksize;
      if (mark_data (w, c) == -1)
        return -1;
      continue;
    }
    /* Each level has its own buffer: kids stays valid meanwhile. */
    if (walk_node (w, c, height - 1, first + i * span) == -1)
      return -1;
  }
  return 0;
}

static int
walk_root (struct cas_store *st, struct cas_refs *refs, uint32_t owner,
           bool skip_seen, bool sizes, const struct cas_root *root,
           struct cas_refs_root_stats *rs)
{
  struct walk w = { .st = st, .refs = refs, .owner = owner,
                    .skip_seen = skip_seen, .sizes = sizes };
  uint32_t k;
  int ret = -1;

  if (owner == 0 || root->depth >= 8) {
    errno = EINVAL;
    return -1;
  }
  refs->blocksize = st->sb.blocksize;
  if (st->sb.version >= CAS_FORMAT_VERSION_UNITS && refs->ext == NULL) {
    refs->ext = cas_packstore_extents (st->cs);
    if (refs->ext == NULL) {
      backend_error ("cas: a format-%" PRIu32 " store without extents",
                     st->sb.version);
      errno = EIO;
      return -1;
    }
    refs->cs = st->cs;
    refs->units = st->sb.blocksize / CAS_UNIT_SIZE;
    /* Accounting keeps who references each unit; the first root walked
     * decides (one reference set serves one purpose).
     */
    refs->per_unit = !skip_seen;
  }
  w.nblocks = (root->size + st->sb.blocksize - 1) / st->sb.blocksize;
  for (k = 1; k <= root->depth; k++)
    if ((w.bufs[k] = malloc (F * sizeof (struct cas_hash))) == NULL)
      goto out;
  if (walk_node (&w, &root->root, root->depth, 0) == -1)
    goto out;
  if (rs)
    *rs = w.rs;
  ret = 0;
 out:
  for (k = 1; k <= root->depth; k++)
    free (w.bufs[k]);
  return ret;
}

int
cas_refs_add_root (struct cas_store *st, struct cas_refs *refs,
                   uint32_t owner, const struct cas_root *root,
                   struct cas_refs_root_stats *rs)
{
  bool sizes = st->sb.compression.codec != CAS_CODEC_NONE &&
    st->cs->ops->sizes != NULL;

  return walk_root (st, refs, owner, false, sizes, root, rs);
}

int
cas_refs_mark_root (struct cas_store *st, struct cas_refs *refs,
                    const struct cas_root *root)
{
  return walk_root (st, refs, 1, true, false, root, NULL);
}

uint64_t
cas_refs_count (const struct cas_refs *r)
{
  return r->count;
}

/* Format 4: the referenced extents.  One of them is freed by deleting
 * a root only if that root alone references every referenced unit of it
 * (a collection keeps or drops an extent whole: no compaction yet).
 */
static void
extent_totals (const struct cas_refs *r, uint64_t *alone, uint32_t nowners,
               struct cas_refs_totals *t)
{
  uint64_t eid;

  for (eid = 1; eid < r->nlive; eid++) {
    uint16_t live = r->live[eid];
    const struct ext_entry *e;
    uint64_t record;
    uint32_t only = 0;
    bool by_one = true;
    unsigned s, nlive = 0, npresent = 0;

    if (live == 0)
      continue;
    t->extents++;
    for (s = 0; s < CAS_UNITS_MAX; s++)
      nlive += (live >> s) & 1;
    t->units += nlive;
    t->data_raw += (uint64_t) nlive * CAS_UNIT_SIZE;
    if (!r->per_unit)
      continue;
    e = &r->ext_info[eid];
    for (s = 0; s < CAS_UNITS_MAX; s++) {
      uint16_t bit = 1u << s;
      uint32_t stored = unit_stored (r, eid, s), o;

      if (e->record_bytes != EXT_UNREADABLE && (e->present & bit)) {
        npresent++;
        if (!(live & bit))
          t->dead_unit_bytes += stored;
      }
      if (!(live & bit))
        continue;
      t->data_stored += stored;
      if (e->compressed & bit)
        t->compressed_chunks++;
      o = r->unit_owner[eid * CAS_UNITS_MAX + s];
      if (o & UNIT_SHARED || (only && o != only))
        by_one = false;
      only = o & ~UNIT_SHARED;
    }
    if (e->record_bytes == EXT_UNREADABLE)
      continue;                 /* nothing a collection could give back */
    record = e->record_bytes;
    t->referenced += record;
    t->referenced_raw +=
      cas_record_size (e->nslots * CAS_SLOT_ENTRY_SIZE +
                       npresent * CAS_UNIT_SIZE);
    if (by_one && only >= 1 && only <= nowners)
      alone[only] += record;
  }
  t->chunks += t->extents;
  t->data_chunks += t->units;
}

void
cas_refs_totals (const struct cas_refs *r, uint64_t *alone,
                 uint32_t nowners, struct cas_refs_totals *t)
{
  uint64_t i;

  memset (alone, 0, ((size_t) nowners + 1) * sizeof *alone);
  memset (t, 0, sizeof *t);
  t->chunks = r->count;
  if (r->ext)
    extent_totals (r, alone, nowners, t);
  for (i = 0; i <= r->mask; i++) {
    const struct ref *e = &r->tab[i];
    uint32_t stored = e->length & LENGTH_MASK;
    uint32_t raw = e->length & COMPRESSED ? r->blocksize : stored;
    uint64_t bytes;

    if (!e->key)
      continue;
    if (e->length & NODE)
      t->nodes++;
    else {
      t->data_chunks++;
      t->data_raw += raw;
      t->data_stored += stored;
      if (e->length & COMPRESSED)
        t->compressed_chunks++;
    }
    bytes = cas_record_size (stored);
    t->referenced += bytes;
    t->referenced_raw += cas_record_size (raw);
    if (!(e->length & SHARED) && e->owner <= nowners)
      alone[e->owner] += bytes;
  }
}
