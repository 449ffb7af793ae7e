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
    free (r);
  }
}

uint64_t
cas_refs_memory (const struct cas_refs *r)
{
  return sizeof *r + (r->mask + 1) * sizeof *r->tab +
    (r->nodes ? (r->node_mask + 1) * sizeof *r->nodes : 0);
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

void
cas_refs_totals (const struct cas_refs *r, uint64_t *alone,
                 uint32_t nowners, struct cas_refs_totals *t)
{
  uint64_t i;

  memset (alone, 0, ((size_t) nowners + 1) * sizeof *alone);
  memset (t, 0, sizeof *t);
  t->chunks = r->count;
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
