/* Changed blocks between two roots, by comparing their hash trees: a
 * subtree whose hash is equal on both sides is equal and is never read,
 * so the cost is the changed leaves (and the nodes above them), not the
 * size.  See store.h for the contract.
 *
 * Two trees of different depth (a volume grown since the older one) line
 * up at block 0: growing adds levels on top whose child 0 is the old
 * root, so the deeper tree's child 0 is compared with the shallower tree
 * and its other children with nothing (unmapped blocks).
 *
 * Thread safety: reads immutable map nodes through the chunk store only.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cleanup.h"
#include "storeint.h"
#include "volumeint.h"


struct diff {
  struct cas_store *st;
  uint64_t nblocks;             /* the larger of the two */
  uint32_t bs;
  int (*fn) (uint64_t off, uint64_t len, void *opaque);
  void *opaque;
  uint64_t run_start, run_end;  /* pending run of changed blocks */
  bool have_run;
  uint64_t nodes_read;
};

static const struct cas_hash zero_hash;

/* The F children of node h (a zero hash: an all-zero subtree). */
static int
read_children (struct diff *d, const struct cas_hash *h, struct cas_hash *out)
{
  uint32_t len = 0;

  memset (out, 0, F * sizeof *out);
  if (cas_hash_is_zero (h))
    return 0;
  d->nodes_read++;
  if (cs_get (d->st->cs, h, out, F * CAS_HASH_SIZE, &len,
              d->st->verify) == -1) {
    if (errno == ENOENT)
      errno = EIO;
    return -1;
  }
  if (len % CAS_HASH_SIZE != 0) {
    backend_error ("cas: diff: map node of bad length %" PRIu32, len);
    errno = EIO;
    return -1;
  }
  memset ((uint8_t *) out + len, 0, F * CAS_HASH_SIZE - len);
  return 0;
}

static int
flush_run (struct diff *d)
{
  uint64_t off, end;

  if (!d->have_run)
    return 0;
  d->have_run = false;
  off = d->run_start * d->bs;
  end = d->run_end * d->bs;
  return d->fn (off, end - off, d->opaque);
}

/* Blocks [first, first + n) changed. */
static int
changed (struct diff *d, uint64_t first, uint64_t n)
{
  if (first >= d->nblocks)
    return 0;
  if (first + n > d->nblocks)
    n = d->nblocks - first;
  if (d->have_run && d->run_end == first) {
    d->run_end += n;
    return 0;
  }
  if (flush_run (d) == -1)
    return -1;
  d->have_run = true;
  d->run_start = first;
  d->run_end = first + n;
  return 0;
}

static uint64_t
span_of (uint32_t height)
{
  uint64_t s = 1;

  while (height-- > 0)
    s *= F;
  return s;
}

/* Compare subtree a (height ha) with subtree b (height hb), both starting
 * at block first.  Heights count from 1 (a leaf); 0 is one block.
 */
static int
compare (struct diff *d, const struct cas_hash *a, uint32_t ha,
         const struct cas_hash *b, uint32_t hb, uint64_t first)
{
  CLEANUP_FREE struct cas_hash *ka = NULL, *kb = NULL;
  uint32_t h = ha > hb ? ha : hb;
  uint64_t span, i;

  if (first >= d->nblocks)
    return 0;
  if (ha == hb && cas_hash_equal (a, b))
    return 0;
  if (h == 0)                   /* two different blocks */
    return changed (d, first, 1);
  ka = malloc (F * sizeof *ka);
  kb = malloc (F * sizeof *kb);
  if (ka == NULL || kb == NULL)
    return -1;
  span = span_of (h - 1);
  /* The taller side is read; the shorter one is its child 0. */
  if (ha == h) {
    if (read_children (d, a, ka) == -1)
      return -1;
  }
  else {
    memset (ka, 0, F * sizeof *ka);
    ka[0] = *a;
  }
  if (hb == h) {
    if (read_children (d, b, kb) == -1)
      return -1;
  }
  else {
    memset (kb, 0, F * sizeof *kb);
    kb[0] = *b;
  }
  for (i = 0; i < F && first + i * span < d->nblocks; i++) {
    /* Child 0 of the shorter side keeps its own height. */
    uint32_t ca = ha == h ? h - 1 : (i == 0 ? ha : h - 1);
    uint32_t cb = hb == h ? h - 1 : (i == 0 ? hb : h - 1);
    const struct cas_hash *x = &ka[i], *y = &kb[i];

    if (cas_hash_is_zero (x) && cas_hash_is_zero (y))
      continue;
    if (ca == cb && cas_hash_equal (x, y))
      continue;
    if (cas_hash_is_zero (x) || cas_hash_is_zero (y)) {
      /* One side is unmapped there: what the other maps is changed.
       * Walk that side alone against zeros.
       */
      if (compare (d, cas_hash_is_zero (x) ? &zero_hash : x,
                   cas_hash_is_zero (x) ? cb : ca,
                   cas_hash_is_zero (y) ? &zero_hash : y,
                   cas_hash_is_zero (x) ? cb : ca,
                   first + i * span) == -1)
        return -1;
      continue;
    }
    if (compare (d, x, ca, y, cb, first + i * span) == -1)
      return -1;
  }
  return 0;
}

int
cas_diff (struct cas_store *st, const struct cas_root *a,
          const struct cas_root *b,
          int (*fn) (uint64_t off, uint64_t len, void *opaque), void *opaque,
          uint64_t *nodes_read)
{
  struct diff d = { .st = st, .bs = st->sb.blocksize, .fn = fn,
                    .opaque = opaque };
  uint64_t na = (a->size + d.bs - 1) / d.bs, nb = (b->size + d.bs - 1) / d.bs;

  if (a->blocksize != b->blocksize || a->blocksize != d.bs) {
    backend_error ("cas: diff: roots of different block sizes");
    errno = EINVAL;
    return -1;
  }
  d.nblocks = na > nb ? na : nb;
  if (compare (&d, &a->root, a->depth, &b->root, b->depth, 0) == -1 ||
      flush_run (&d) == -1)
    return -1;
  if (nodes_read)
    *nodes_read = d.nodes_read;
  return 0;
}

/* ---- a live volume against a root: the nbdcas:changed context ---- */

/* Leaf i of a committed tree, with the path above it kept from the last
 * call (consecutive leaves share it).
 */
struct tree_reader {
  struct cas_store *st;
  const struct cas_root *root;
  struct cas_hash node[8];      /* node[h]: hash of the cached node ... */
  struct cas_hash *kids[8];     /* ... and its children */
};

static int
tree_leaf (struct tree_reader *t, uint64_t i, struct cas_hash *out)
{
  uint32_t depth = t->root->depth, h;
  const struct cas_hash *cur = &t->root->root;
  uint64_t span = 1;

  memset (out, 0, F * sizeof *out);
  for (h = 1; h < depth; h++)
    span *= F;                  /* leaves under the root */
  if (i >= span || depth >= 8)
    return 0;
  for (h = depth; h >= 2; h--) {
    /* cur is the node of height h on the path to leaf i. */
    span /= F;
    if (cas_hash_is_zero (cur))
      return 0;
    if (!cas_hash_equal (&t->node[h], cur)) {
      uint32_t len = 0;
      if (cs_get (t->st->cs, cur, t->kids[h], F * CAS_HASH_SIZE, &len,
                  t->st->verify) == -1) {
        if (errno == ENOENT)
          errno = EIO;
        return -1;
      }
      memset ((uint8_t *) t->kids[h] + len, 0, F * CAS_HASH_SIZE - len);
      t->node[h] = *cur;
    }
    cur = &t->kids[h][(i / span) % F];
  }
  /* cur is leaf i's hash. */
  if (cas_hash_is_zero (cur))
    return 0;
  {
    uint32_t len = 0;
    if (cs_get (t->st->cs, cur, out, F * CAS_HASH_SIZE, &len,
                t->st->verify) == -1) {
      if (errno == ENOENT)
        errno = EIO;
      return -1;
    }
    memset ((uint8_t *) out + len, 0, F * CAS_HASH_SIZE - len);
  }
  return 0;
}

int
cas_volume_changed (struct cas_volume *vol, const struct cas_root *base,
                    uint64_t count, uint64_t offset,
                    int (*fn) (uint64_t off, uint64_t len, bool changed,
                               void *opaque),
                    void *opaque)
{
  struct tree_reader t = { .st = vol->st, .root = base };
  CLEANUP_FREE struct cas_hash *cur = NULL, *old = NULL;
  CLEANUP_FREE bool *dirty = NULL;
  uint64_t b, end, run_start = offset, leaf = UINT64_MAX;
  bool run_changed = false, have_run = false;
  int r = -1;
  uint32_t h;

  if (base->blocksize != vol->bs || base->depth >= 8) {
    backend_error ("cas: volume %s and the root compared with it differ in "
                   "block size", vol->name);
    errno = EINVAL;
    return -1;
  }
  if (offset > vol->size || count > vol->size - offset) {
    errno = EINVAL;
    return -1;
  }
  cur = malloc (F * sizeof *cur);
  old = malloc (F * sizeof *old);
  dirty = malloc (F * sizeof *dirty);
  if (cur == NULL || old == NULL || dirty == NULL)
    goto out;
  for (h = 2; h < 8; h++)
    if ((t.kids[h] = malloc (F * sizeof (struct cas_hash))) == NULL)
      goto out;
  end = offset + count;
  for (b = offset / vol->bs; b < vol->nblocks && b * vol->bs < end; b++) {
    bool changed;
    if (b / F != leaf) {
      uint64_t k;
      leaf = b / F;
      /* Blocks newer in the write-back cache than in their slots are
       * changed.  Asked before the leaf is read: a block whose entry is
       * clean by then has its write-back in the slot, which the leaf
       * read below sees.
       */
      memset (dirty, 0, F * sizeof *dirty);
      if (wcache_on (vol) && atomic_load (&vol->wc.ndirty) > 0)
        for (k = b; k < (leaf + 1) * F && k < vol->nblocks &&
               k * vol->bs < end; k++)
          dirty[k % F] = wcache_dirty (vol, k);
      if (peek_leaf (vol, leaf, cur) == -1 || tree_leaf (&t, leaf, old) == -1)
        goto out;
    }
    changed = dirty[b % F] || !cas_hash_equal (&cur[b % F], &old[b % F]);
    if (!have_run) {
      have_run = true;
      run_changed = changed;
    }
    else if (changed != run_changed) {
      uint64_t s = b * vol->bs;
      int k = fn (run_start, s - run_start, run_changed, opaque);
      if (k != 0) {
        r = k == 1 ? 0 : -1;
        goto out;
      }
      run_start = s;
      run_changed = changed;
    }
  }
  {
    uint64_t s = b * vol->bs;
    if (s > vol->size)
      s = vol->size;
    r = s > run_start ? fn (run_start, s - run_start, run_changed, opaque)
      : 0;
    if (r == 1)
      r = 0;
  }
 out:
  for (h = 2; h < 8; h++)
    free (t.kids[h]);
  return r;
}
