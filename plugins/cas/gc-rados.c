/* Garbage collection of a store in a RADOS pool.  FORMAT.md ("Garbage
 * collection on RADOS") has the protocol and the argument that no chunk a
 * root references, or a writer on any host will publish, is removed.  In
 * short, from any one host, beside any number of servers:
 *
 *  1. List the namespace: each chunk object's version, last write (mtime)
 *     and size; each volume object's version and mtime.
 *  2. The barrier (meta-rados.c): every volume's writer empties its
 *     known-names cache (with no put between storing a chunk and setting a
 *     map to it) and flushes.  From then on a writer references only what
 *     it published by then, or a chunk it wrote or touched after being
 *     asked: a new version, which step 4 does not remove.
 *  3. Mark from every root of every named volume, read in rounds that a
 *     clone or snapshot made meanwhile cannot slip through (meta-rados.c),
 *     then from the root every reader on any host serves (each is asked;
 *     one that does not answer stops the collection).
 *  4. Sweep: each listed chunk that is not marked and whose last write is
 *     older than the grace period is removed at the version listed -- one
 *     op {assert_version, remove}: a chunk written or touched since is
 *     kept.
 *  5. Each listed volume object that the last directory read of step 3
 *     did not name (an orphan of an interrupted create, clone or delete),
 *     older than the grace period, is removed at its listed version: it
 *     can never be named any more (its creator's directory update
 *     compares the epoch that step 3 moved on).
 *
 * Thread safety: called by cas_store_gc under st->gc_lock; uses the
 * store's connection from this thread only (its own completions).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rados/librados.h>

#include "backend.h"
#include "rados.h"
#include "storeint.h"
#include "vector.h"

/* Operations in flight while listing and sweeping. */
#define WINDOW 32

struct listed_chunk {
  struct cas_hash hash;
  uint64_t version;
  uint64_t size;                /* bytes of the object: record + payload */
  time_t mtime;
};
DEFINE_VECTOR_TYPE (chunk_vector, struct listed_chunk);

struct listed_volume {
  struct cas_meta_rados_oid oid;
  uint64_t version;
  time_t mtime;
};
DEFINE_VECTOR_TYPE (volume_vector, struct listed_volume);

/* One operation in flight: a stat while listing, a removal while
 * sweeping.
 */
struct slot {
  rados_completion_t c;
  rados_read_op_t rop;
  rados_write_op_t wop;
  char oid[CAS_RADOS_CHUNK_OID_MAX];
  bool chunk;
  struct cas_hash hash;
  size_t index;                 /* sweeping: into the listed chunks */
  uint64_t size;
  time_t mtime;
  int rv;
};

struct gc {
  struct cas_store *st;
  rados_ioctx_t io;
  const char *name;             /* the store, for messages */
  const struct cas_gc_options *opts;
  struct cas_gc_stats *stats;
  chunk_vector chunks;
  volume_vector volumes;
  struct slot win[WINDOW];
  unsigned head, n;
  int first_error;
  char first_error_oid[CAS_RADOS_CHUNK_OID_MAX];
  struct cas_refs *refs;
};

static void
release_slot (struct slot *s)
{
  if (s->c)
    rados_aio_release (s->c);
  if (s->rop)
    rados_release_read_op (s->rop);
  if (s->wop)
    rados_release_write_op (s->wop);
  s->c = NULL;
  s->rop = NULL;
  s->wop = NULL;
}

static void
note_error (struct gc *g, const char *oid, int r)
{
  if (g->first_error == 0) {
    g->first_error = r;
    snprintf (g->first_error_oid, sizeof g->first_error_oid, "%s", oid);
  }
}

/* ---- 1. listing ---- */

static int
stat_submit (struct gc *g, struct slot *s)
{
  int r = rados_aio_create_completion2 (NULL, NULL, &s->c);

  if (r < 0)
    return r;
  s->rop = rados_create_read_op ();
  if (s->rop == NULL)
    return -ENOMEM;
  s->rv = 0;
  rados_read_op_stat (s->rop, &s->size, &s->mtime, &s->rv);
  return rados_aio_read_op_operate (s->rop, g->io, s->c, s->oid, 0);
}

/* Wait for the oldest stat and record what it found. */
static int
stat_finish (struct gc *g)
{
  struct slot *s = &g->win[g->head];
  uint64_t version;
  int r;

  rados_aio_wait_for_complete (s->c);
  r = rados_aio_get_return_value (s->c);
  version = rados_aio_get_version (s->c);
  if (r == 0)
    r = s->rv;
  release_slot (s);
  g->head = (g->head + 1) % WINDOW;
  g->n--;
  if (r == -ENOENT)
    return 0;                   /* removed since it was listed */
  if (r < 0) {
    backend_error ("cas: %s: garbage collection: reading %s: %s", g->name,
                   s->oid, strerror (-r));
    errno = -r;
    return -1;
  }
  if (s->chunk) {
    struct listed_chunk c = { s->hash, version, s->size, s->mtime };
    if (chunk_vector_append (&g->chunks, c) == -1)
      goto nomem;
    g->stats->bytes_scanned += s->size;
    if (g->opts->progress)
      g->opts->progress (s->size, g->opts->opaque);
  }
  else {
    struct listed_volume v = { .version = version, .mtime = s->mtime };
    snprintf (v.oid.s, sizeof v.oid.s, "%s", s->oid);
    if (volume_vector_append (&g->volumes, v) == -1)
      goto nomem;
  }
  return 0;
 nomem:
  backend_error ("cas: %s: garbage collection: out of memory after %zu "
                 "objects listed", g->name, g->chunks.len + g->volumes.len);
  errno = ENOMEM;
  return -1;
}

static int
list_objects (struct gc *g)
{
  const size_t plen = strlen (CAS_RADOS_CHUNK_PREFIX);
  rados_list_ctx_t ctx;
  int r, ret = 0;

  r = rados_nobjects_list_open (g->io, &ctx);
  if (r < 0) {
    backend_error ("cas: %s: garbage collection: listing the objects: %s",
                   g->name, strerror (-r));
    errno = -r;
    return -1;
  }
  for (;;) {
    const char *entry, *key, *nspace;
    size_t elen = 0, klen = 0, nlen = 0;
    char hex[2 * CAS_HASH_SIZE + 1];
    struct slot *s;
    bool chunk;

    r = rados_nobjects_list_next2 (ctx, &entry, &key, &nspace, &elen, &klen,
                                   &nlen);
    if (r == -ENOENT)
      break;
    if (r < 0) {
      backend_error ("cas: %s: garbage collection: listing the objects: %s",
                     g->name, strerror (-r));
      errno = -r;
      ret = -1;
      break;
    }
    chunk = elen == plen + 2 * CAS_HASH_SIZE &&
      memcmp (entry, CAS_RADOS_CHUNK_PREFIX, plen) == 0;
    if (!chunk && (elen >= CAS_META_RADOS_OID_MAX ||
                   memcmp (entry, "vol.", elen < 4 ? elen : 4) != 0))
      continue;                 /* the superblock, the directory */
    if (g->n == WINDOW && (ret = stat_finish (g)) == -1)
      break;
    s = &g->win[(g->head + g->n) % WINDOW];
    memset (s, 0, sizeof *s);
    memcpy (s->oid, entry, elen);
    s->oid[elen] = '\0';
    if (chunk) {
      memcpy (hex, entry + plen, 2 * CAS_HASH_SIZE);
      hex[2 * CAS_HASH_SIZE] = '\0';
      if (cas_hash_parse (hex, &s->hash) == -1)
        continue;               /* "chunk." and not a hash: not ours */
    }
    else if (!cas_meta_rados_is_volume_object (s->oid))
      continue;
    s->chunk = chunk;
    r = stat_submit (g, s);
    if (r < 0) {
      release_slot (s);         /* never sent: nothing to wait for */
      backend_error ("cas: %s: garbage collection: reading %s: %s",
                     g->name, s->oid, strerror (-r));
      errno = -r;
      ret = -1;
      break;
    }
    g->n++;
  }
  while (g->n > 0) {
    if (ret == -1) {            /* drain, keep the first error */
      rados_aio_wait_for_complete (g->win[g->head].c);
      release_slot (&g->win[g->head]);
      g->head = (g->head + 1) % WINDOW;
      g->n--;
    }
    else
      ret = stat_finish (g);
  }
  rados_nobjects_list_close (ctx);
  g->stats->chunks_listed = g->chunks.len;
  return ret;
}

/* ---- 3. marking ---- */

static int
mark_root (const char *name, const uint8_t *buf, void *opaque)
{
  struct gc *g = opaque;
  struct cas_root r;

  if (cas_root_decode (buf, &r) == -1 ||
      r.blocksize != cas_store_blocksize (g->st)) {
    backend_error ("cas: %s: garbage collection stopped: the root of '%s' "
                   "is damaged, so what it references is unknown (run "
                   "nbdcas fsck)", g->name, name);
    errno = EIO;
    return -1;
  }
  if (cas_refs_mark_root (g->st, g->refs, &r) == -1) {
    backend_error ("cas: %s: garbage collection stopped: the map of '%s' "
                   "cannot be read, so what it references is unknown (run "
                   "nbdcas fsck)", g->name, name);
    return -1;
  }
  g->stats->roots++;
  return 0;
}

/* ---- 4, 5. removal at the listed version ---- */

static int
remove_submit (struct gc *g, struct slot *s, uint64_t version)
{
  int r = rados_aio_create_completion2 (NULL, NULL, &s->c);

  if (r < 0)
    return r;
  s->wop = rados_create_write_op ();
  if (s->wop == NULL)
    return -ENOMEM;
  rados_write_op_assert_version (s->wop, version);
  rados_write_op_remove (s->wop);
  return rados_aio_write_op_operate (s->wop, g->io, s->c, s->oid, NULL, 0);
}

/* The oldest removal's outcome. */
static void
remove_finish (struct gc *g)
{
  struct slot *s = &g->win[g->head];
  int r;

  rados_aio_wait_for_complete (s->c);
  r = rados_aio_get_return_value (s->c);
  release_slot (s);
  g->head = (g->head + 1) % WINDOW;
  g->n--;
  if (r == -ERANGE || r == -EOVERFLOW) {
    /* Written or touched since it was listed: a writer uses it. */
    if (s->chunk)
      g->stats->touched_chunks++;
    return;
  }
  if (r == -ENOENT)
    return;                     /* removed by another collection */
  if (r < 0) {
    note_error (g, s->oid, r);
    return;
  }
  if (s->chunk) {
    g->stats->dead_chunks++;
    g->stats->bytes_freed += s->size;
  }
  else
    g->stats->orphans_removed++;
}

static int
remove_object (struct gc *g, const char *oid, bool chunk, uint64_t size,
               uint64_t version)
{
  struct slot *s;
  int r;

  if (g->opts->dry_run) {
    if (chunk) {
      g->stats->dead_chunks++;
      g->stats->bytes_freed += size;
    }
    else
      g->stats->orphans_removed++;
    return 0;
  }
  if (g->n == WINDOW)
    remove_finish (g);
  s = &g->win[(g->head + g->n) % WINDOW];
  memset (s, 0, sizeof *s);
  snprintf (s->oid, sizeof s->oid, "%s", oid);
  s->chunk = chunk;
  s->size = size;
  g->n++;
  r = remove_submit (g, s, version);
  if (r < 0) {
    /* Nothing was sent for this one: forget it. */
    g->n--;
    release_slot (s);
    note_error (g, oid, r);
    return -1;
  }
  return 0;
}

static int
compare_oid (const void *a, const void *b)
{
  const struct cas_meta_rados_oid *x = a, *y = b;

  return strcmp (x->s, y->s);
}

static int
sweep (struct gc *g, const struct cas_meta_rados_oid *named, size_t nnamed)
{
  time_t cutoff = time (NULL) - (time_t) g->opts->grace_seconds;
  char oid[CAS_RADOS_CHUNK_OID_MAX], hex[2 * CAS_HASH_SIZE + 1];
  size_t i;
  int ret = 0;

  for (i = 0; i < g->chunks.len && ret == 0; i++) {
    const struct listed_chunk *c = &g->chunks.ptr[i];

    if (cas_refs_has (g->refs, &c->hash)) {
      g->stats->live_chunks++;
      g->stats->live_bytes += c->size;
      continue;
    }
    if (c->mtime > cutoff) {
      g->stats->young_chunks++;
      continue;
    }
    snprintf (oid, sizeof oid, "%s%s", CAS_RADOS_CHUNK_PREFIX,
              cas_hash_hex (&c->hash, hex));
    ret = remove_object (g, oid, true, c->size, c->version);
    if (ret == 0 && g->opts->pace && g->opts->pace (g->opts->opaque) == -1) {
      errno = ECANCELED;
      ret = -1;
    }
  }
  cas_test_point ("gc-rados-swept");
  for (i = 0; i < g->volumes.len && ret == 0; i++) {
    const struct listed_volume *v = &g->volumes.ptr[i];

    if ((nnamed && bsearch (&v->oid, named, nnamed, sizeof *named,
                            compare_oid)) || v->mtime > cutoff)
      continue;
    ret = remove_object (g, v->oid.s, false, 0, v->version);
  }
  while (g->n > 0)
    remove_finish (g);
  if (g->first_error) {
    backend_error ("cas: %s: garbage collection: removing %s: %s (the "
                   "collection removed what it could; nothing referenced "
                   "was removed)", g->name, g->first_error_oid,
                   strerror (-g->first_error));
    errno = -g->first_error;
    ret = -1;
  }
  return ret;
}

int
cas_store_gc_rados (struct cas_store *st, const struct cas_gc_options *opts,
                    struct cas_gc_stats *stats)
{
  struct gc g = {
    .st = st, .opts = opts, .stats = stats, .name = cas_store_dir (st),
    .chunks = empty_vector, .volumes = empty_vector,
  };
  struct cas_meta_rados_oid *named = NULL;
  size_t nnamed = 0;
  int ret = -1;

  g.io = cas_rados_ioctx (cas_meta_rados_conn (st->meta));
  /* 1. */
  if (list_objects (&g) == -1)
    goto out;
  cas_test_point ("gc-rados-listed");
  /* 2. */
  if (cas_meta_rados_gc_barrier (st->meta) == -1)
    goto out;
  /* 3. */
  g.refs = cas_refs_new (g.chunks.len);
  if (g.refs == NULL)
    goto out;
  if (cas_meta_rados_gc_roots (st->meta, mark_root, &g, &named,
                               &nnamed) != 0)
    goto out;
  /* 3b. What readers serve: their roots may be older than any named. */
  if (cas_meta_rados_gc_reader_roots (st->meta, mark_root, &g) != 0)
    goto out;
  stats->marked_chunks = cas_refs_count (g.refs);
  stats->mark_bytes = cas_refs_memory (g.refs);
  cas_test_point ("gc-marked");
  /* 4, 5. */
  ret = sweep (&g, named, nnamed);
 out:
  free (named);
  cas_refs_free (g.refs);
  chunk_vector_reset (&g.chunks);
  volume_vector_reset (&g.volumes);
  return ret;
}
