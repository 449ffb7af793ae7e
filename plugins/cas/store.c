/* The store: opening it (a directory or a RADOS pool: meta.h), volume
 * names and roots, the registry of open volumes, stats and record checks.
 * See store.h for the contract.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "cleanup.h"
#include "extent.h"
#include "meta.h"
#include "storeint.h"

uint32_t cas_store_blocksize (const struct cas_store *st) { return st->sb.blocksize; }
struct cas_compression
cas_store_compression (const struct cas_store *st)
{
  return st->sb.compression;
}
uint32_t
cas_store_format_version (const struct cas_store *st)
{
  /* cas_store_upgrade may change it while the store is served. */
  return __atomic_load_n (&st->sb.version, __ATOMIC_RELAXED);
}
const char *cas_store_dir (const struct cas_store *st) { return st->dir; }
bool cas_store_is_local (const struct cas_store *st)
{
  return strcmp (st->meta->ops->kind, "local") == 0;
}
bool cas_store_readonly (const struct cas_store *st) { return st->readonly; }
struct chunkstore *cas_store_chunks (struct cas_store *st) { return st->cs; }

/* A name for messages: a printable prefix of what may be hostile. */
static const char *
safe_name (const char *name, char safe[64])
{
  size_t j;

  for (j = 0; j < 60 && name[j]; j++)
    safe[j] = ((unsigned char) name[j] < 0x20 || name[j] == 0x7f) ? '?'
      : name[j];
  if (name[j])
    memcpy (safe + j, "...", 3), j += 3;
  safe[j] = '\0';
  return safe;
}

/* The rule for one component, a volume's or a snapshot's name. */
static int
component_check (const char *what, const char *name)
{
  size_t len = strlen (name), i;
  const char *why = NULL;
  char safe[64];

  if (len == 0)
    why = "it is empty";
  else if (len > CAS_VOLUME_NAME_MAX)
    why = "it is longer than 255 bytes";
  else if (name[0] == '.')
    why = "it starts with '.'";
  else if (strchr (name, '/'))
    why = "it contains '/'";
  else if (strchr (name, '@'))
    why = "it contains '@' (which separates a volume from its snapshot: "
      "VOLUME@SNAPSHOT)";
  else
    for (i = 0; i < len; i++)
      if ((unsigned char) name[i] < 0x20 || name[i] == 0x7f) {
        why = "it contains a control character";
        break;
      }
  if (why) {
    backend_error ("cas: invalid %s name '%s': %s", what,
                   safe_name (name, safe), why);
    errno = EINVAL;
    return -1;
  }
  return 0;
}

int
cas_volume_name_check (const char *name)
{
  return component_check ("volume", name);
}

int
cas_snapshot_name_check (const char *name)
{
  return component_check ("snapshot", name);
}

int
cas_new_name_check (const char *what, const char *name)
{
  size_t len = strlen (name);
  char safe[64];

  if (len <= CAS_NEW_NAME_MAX)
    return 0;
  backend_error ("cas: %s name '%s' is %zu bytes: a new name has at most "
                 "%d (its root is written through the temp file .NAME.tmp, "
                 "which must fit the file system's %d-byte limit)", what,
                 safe_name (name, safe), len, CAS_NEW_NAME_MAX,
                 CAS_VOLUME_NAME_MAX);
  errno = ENAMETOOLONG;
  return -1;
}

/* A volume named before snapshots existed may contain '@' (it was
 * allowed then): such a root file is still found by its whole name.
 */
static bool
legacy_at_volume (struct cas_store *st, const char *name)
{
  if (strchr (name, '@') == NULL || strchr (name, '/') || name[0] == '.' ||
      strlen (name) > CAS_VOLUME_NAME_MAX)
    return false;
  return st->meta->ops->legacy_volume (st->meta, name);
}

int
cas_name_parse (struct cas_store *st, const char *name, struct cas_name *n)
{
  const char *at = strchr (name, '@');
  char safe[64];

  memset (n, 0, sizeof *n);
  if (at == NULL || legacy_at_volume (st, name)) {
    if (at == NULL && cas_volume_name_check (name) == -1)
      return -1;
    strcpy (n->volume, name);
    return 0;
  }
  if (at == name || at[1] == '\0' || strchr (at + 1, '@') ||
      (size_t) (at - name) > CAS_VOLUME_NAME_MAX) {
    backend_error ("cas: invalid name '%s': a snapshot is named "
                   "VOLUME@SNAPSHOT, with one '@' and both parts non-empty",
                   safe_name (name, safe));
    errno = EINVAL;
    return -1;
  }
  memcpy (n->volume, name, at - name);
  n->volume[at - name] = '\0';
  if (cas_volume_name_check (n->volume) == -1 ||
      cas_snapshot_name_check (at + 1) == -1)
    return -1;
  strcpy (n->snap, at + 1);
  n->is_snapshot = true;
  return 0;
}

/* The meta layer for a store name: a directory, or "rados:POOL[/NS]". */
static bool
is_rados (const char *name)
{
  return cas_store_name_is_rados (name);
}

#ifndef HAVE_RADOS
static int
no_rados (const char *name)
{
  backend_error ("cas: %s: this build has no RADOS support (configure "
                 "--with-rados, with librados-dev installed)", name);
  errno = ENOTSUP;
  return -1;
}
#endif

static const struct cas_ceph_options *
ceph_options (const struct cas_open_options *opts)
{
  static const struct cas_ceph_options defaults;

  return opts && opts->ceph ? opts->ceph : &defaults;
}

int
cas_store_exists_opts (const char *name, const struct cas_open_options *opts)
{
  if (is_rados (name)) {
#ifdef HAVE_RADOS
    return cas_meta_rados_exists (name + strlen (CAS_RADOS_STORE_PREFIX),
                                  ceph_options (opts));
#else
    return no_rados (name);
#endif
  }
  return cas_meta_local_exists (name);
}

int
cas_store_exists (const char *dir)
{
  return cas_store_exists_opts (dir, NULL);
}

int
cas_store_compression_check (const char *name,
                             const struct cas_compression *c)
{
  char cn[CAS_COMPRESSION_NAME_LEN];

  if (!cas_compression_valid (c)) {
    backend_error ("cas: compression: codec %u level %u is not valid",
                   c->codec, c->level);
    errno = EINVAL;
    return -1;
  }
  /* Chunk objects in RADOS are stored as they are (FORMAT.md, "RADOS"). */
  if (is_rados (name) && c->codec != CAS_CODEC_NONE) {
    backend_error ("cas: compression=%s: a RADOS store (%s) does not "
                   "support compression; use compression=off",
                   cas_compression_name (c, cn), name);
    errno = EINVAL;
    return -1;
  }
  return 0;
}

struct cas_compression
cas_store_default_compression (const char *name)
{
  if (is_rados (name))
    return (struct cas_compression) { .codec = CAS_CODEC_NONE };
  return CAS_DEFAULT_COMPRESSION;
}

int
cas_store_format_check (const char *what, const char *name, uint32_t format,
                        uint32_t blocksize)
{
  if (format != 0 && format != CAS_FORMAT_VERSION &&
      format != CAS_FORMAT_VERSION_UNITS) {
    backend_error ("%s: %" PRIu32 " is not a format a new store can be "
                   "created with: use %d (the default) or %d (experimental: "
                   "4 KiB dedup units)", what, format, CAS_FORMAT_VERSION,
                   CAS_FORMAT_VERSION_UNITS);
    errno = EINVAL;
    return -1;
  }
  if (format != CAS_FORMAT_VERSION_UNITS)
    return 0;
  if (is_rados (name)) {
    backend_error ("%s: format %d: a RADOS store (%s) does not support it; "
                   "use format %d", what, CAS_FORMAT_VERSION_UNITS, name,
                   CAS_FORMAT_VERSION);
    errno = EINVAL;
    return -1;
  }
  if (blocksize != 0 && !cas_blocksize_valid_v4 (blocksize)) {
    backend_error ("%s: format %d: the block size %" PRIu32 " is too large: "
                   "a format-%d store has blocks of 4K to 64K", what,
                   CAS_FORMAT_VERSION_UNITS, blocksize,
                   CAS_FORMAT_VERSION_UNITS);
    errno = EINVAL;
    return -1;
  }
  return 0;
}

int
cas_store_create_opts (const char *name, uint32_t blocksize,
                       const struct cas_open_options *opts)
{
  struct cas_super s;
  uint32_t format = opts ? opts->format : 0;
  int r;

  if (blocksize == 0)
    blocksize = CAS_DEFAULT_BLOCKSIZE;
  if (cas_blocksize_check ("cas: block size", blocksize) == -1)
    return -1;
  if (cas_store_format_check ("cas: format", name, format, blocksize) == -1)
    return -1;
  if (opts && cas_store_compression_check (name, &opts->compression) == -1)
    return -1;
  r = cas_store_exists_opts (name, opts);
  if (r == -1)
    return -1;
  if (r == 1) {
    backend_error ("cas: %s already holds a cas store", name);
    errno = EEXIST;
    return -1;
  }
  memset (&s, 0, sizeof s);
  s.blocksize = blocksize;
  s.fanout = CAS_MAP_FANOUT;
  s.created = time (NULL);
  if (opts)
    s.compression = opts->compression;
  s.version = format == CAS_FORMAT_VERSION_UNITS ? CAS_FORMAT_VERSION_UNITS
    : s.compression.codec != CAS_CODEC_NONE ? CAS_FORMAT_VERSION_FEATURES
    : CAS_FORMAT_VERSION;
  if (getrandom (s.uuid, sizeof s.uuid, 0) != sizeof s.uuid) {
    backend_error ("cas: getrandom: %m");
    return -1;
  }
  if (is_rados (name)) {
#ifdef HAVE_RADOS
    return cas_meta_rados_create (name + strlen (CAS_RADOS_STORE_PREFIX),
                                  ceph_options (opts), &s);
#else
    return no_rados (name);
#endif
  }
  return cas_meta_local_create (name, &s);
}

int
cas_store_create (const char *dir, uint32_t blocksize)
{
  return cas_store_create_opts (dir, blocksize, NULL);
}

int
cas_store_upgrade (struct cas_store *st, uint32_t *from)
{
  struct cas_super s;
  int r = 0;

  if (st->readonly) {
    backend_error ("cas: the store is open read-only: it cannot be "
                   "upgraded");
    errno = EROFS;
    return -1;
  }
  pthread_mutex_lock (&st->admin_lock);
  *from = st->sb.version;
  if (st->sb.version < CAS_FORMAT_VERSION) {
    /* The superblock first: a piece table in a store that still says
     * version 1 would be taken for a chunk by a version-1 program.
     */
    s = st->sb;
    s.version = CAS_FORMAT_VERSION;
    r = st->meta->ops->super_write (st->meta, &s);
    if (r == 0) {
      __atomic_store_n (&st->sb.version, s.version, __ATOMIC_RELAXED);
      if (cas_store_is_local (st))
        cas_packstore_set_tables (st->cs);
    }
  }
  pthread_mutex_unlock (&st->admin_lock);
  return r;
}

struct cas_store *
cas_store_open (const char *dir, const struct cas_open_options *opts)
{
  struct cas_store *st;

  st = calloc (1, sizeof *st);
  if (st == NULL)
    return NULL;
  pthread_mutex_init (&st->vol_lock, NULL);
  pthread_mutex_init (&st->admin_lock, NULL);
  pthread_mutex_init (&st->gc_lock, NULL);
  {
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init (&a);
    pthread_rwlockattr_setkind_np (&a,
                                   PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init (&st->gc_gate, &a);
    pthread_rwlockattr_destroy (&a);
  }
  st->readonly = opts ? opts->readonly : false;
  st->verify = opts ? opts->verify : CAS_VERIFY_CHECKSUM;
  st->map_cache = opts && opts->map_cache ? opts->map_cache
    : CAS_DEFAULT_MAP_CACHE;
  st->dirty_cache = opts && opts->write_through ? 0
    : opts && opts->dirty_cache ? opts->dirty_cache : CAS_DEFAULT_DIRTY_CACHE;
  st->dir = strdup (dir);
  if (st->dir == NULL)
    goto err;
  /* Superblock, store lock (local), an interrupted delete or rename
   * finished (local, read-write).
   */
  if (is_rados (dir)) {
#ifdef HAVE_RADOS
    st->meta = cas_meta_rados_open (dir + strlen (CAS_RADOS_STORE_PREFIX),
                                    ceph_options (opts), st->readonly,
                                    &st->sb);
    /* A collector on another host stops our writes here a moment. */
    if (st->meta)
      cas_meta_rados_set_gate (st->meta, &st->gc_gate);
#else
    no_rados (dir);
#endif
  }
  else
    st->meta = cas_meta_local_open (dir, st->readonly, &st->sb);
  if (st->meta == NULL)
    goto err;
  st->cs = st->meta->ops->open_chunks (st->meta, st->readonly, st->sb.uuid,
                                       (opts && opts->rebuild_index
                                        ? CAS_PACKSTORE_NO_CACHE : 0) |
                                       (st->sb.version >= 2
                                        ? CAS_PACKSTORE_TABLES : 0) |
                                       (st->sb.version >=
                                        CAS_FORMAT_VERSION_UNITS
                                        ? CAS_PACKSTORE_EXTENTS : 0));
  if (st->cs == NULL)
    goto err;
  if (st->sb.version >= CAS_FORMAT_VERSION_UNITS &&
      cas_packstore_extents (st->cs) == NULL) {
    backend_error ("cas: %s: format %u: a RADOS store does not support it",
                   dir, st->sb.version);
    st->cs->ops->close (st->cs);
    errno = ENOTSUP;
    goto err;
  }
  if (st->sb.compression.codec != CAS_CODEC_NONE) {
    if (!cas_store_is_local (st)) {
      char c[CAS_COMPRESSION_NAME_LEN];
      backend_error ("cas: %s: the superblock says compression %s, which a "
                     "RADOS store does not support", dir,
                     cas_compression_name (&st->sb.compression, c));
      st->cs->ops->close (st->cs);
      errno = ENOTSUP;
      goto err;
    }
    cas_packstore_set_compression (st->cs, &st->sb.compression);
  }
  return st;

 err:
  {
    int saved = errno ? errno : EIO;
    if (st->meta)
      st->meta->ops->close (st->meta);
    free (st->dir);
    pthread_mutex_destroy (&st->vol_lock);
    pthread_mutex_destroy (&st->admin_lock);
    pthread_mutex_destroy (&st->gc_lock);
    pthread_rwlock_destroy (&st->gc_gate);
    free (st);
    errno = saved;
    return NULL;
  }
}
int
cas_store_close (struct cas_store *st)
{
  int r = 0;

  if (!st)
    return 0;
  while (st->vols) {
    struct cas_volume *v = st->vols;
    st->vols = *cas_volume_next (v);
    backend_debug ("cas: volume %s still open at store close",
                   cas_volume_name (v));
    if (cas_volume_free (v) == -1)
      r = -1;
  }
  if (st->cs->ops->close (st->cs) == -1)
    r = -1;
  st->meta->ops->close (st->meta);  /* local: releases the flock */
  pthread_mutex_destroy (&st->vol_lock);
  pthread_mutex_destroy (&st->admin_lock);
  pthread_mutex_destroy (&st->gc_lock);
  pthread_rwlock_destroy (&st->gc_gate);
  free (st->dir);
  free (st);
  return r;
}

/* ---- roots ---- */

/* Decode the root of n loaded from where, and check it is the kind of
 * root that belongs there.
 */
static int
root_decode (const struct cas_name *n, const uint8_t buf[CAS_ROOT_SIZE],
             const char *where, struct cas_root *r)
{
  if (cas_root_decode (buf, r) == -1) {
    backend_error ("cas: %s root %s is unusable",
                   n->is_snapshot ? "snapshot" : "volume", where);
    errno = EIO;
    return -1;
  }
  if (r->snapshot != n->is_snapshot) {
    backend_error ("cas: %s holds a %s root where a %s root belongs", where,
                   r->snapshot ? "snapshot" : "volume",
                   n->is_snapshot ? "snapshot" : "volume");
    errno = EIO;
    return -1;
  }
  return 0;
}

static void
report_missing (struct cas_store *st, const char *name,
                const struct cas_name *n)
{
  if (n->is_snapshot)
    backend_error ("cas: volume '%s' has no snapshot named '%s' in store "
                   "%s", n->volume, n->snap, st->dir);
  else
    backend_error ("cas: no volume named '%s' in store %s", name, st->dir);
}

int
cas_root_read (struct cas_store *st, const char *name, struct cas_root *r)
{
  uint8_t buf[CAS_ROOT_SIZE];
  char where[CAS_META_WHERE_MAX];
  struct cas_name n;

  if (cas_name_parse (st, name, &n) == -1)
    return -1;
  if (st->meta->ops->root_load (st->meta, &n, buf, where) == -1) {
    if (errno == ENOENT)
      report_missing (st, name, &n);
    return -1;
  }
  return root_decode (&n, buf, where, r);
}

struct cas_meta_vol *
cas_store_volume_open (struct cas_store *st, const char *name, bool writable,
                       struct cas_root *r)
{
  uint8_t buf[CAS_ROOT_SIZE];
  char where[CAS_META_WHERE_MAX];
  struct cas_meta_vol *h;
  struct cas_name n;

  if (cas_name_parse (st, name, &n) == -1)
    return NULL;
  h = st->meta->ops->volume_open (st->meta, &n, writable && !n.is_snapshot,
                                  buf, where);
  if (h == NULL) {
    if (errno == ENOENT)
      report_missing (st, name, &n);
    return NULL;
  }
  if (root_decode (&n, buf, where, r) == -1) {
    int saved = errno;
    cas_meta_volume_close (h);
    errno = saved;
    return NULL;
  }
  return h;
}

/* ---- volume registry ---- */

int
cas_store_list_volumes (struct cas_store *st,
                        int (*fn) (const char *, void *), void *opaque)
{
  return st->meta->ops->list_volumes (st->meta, fn, opaque);
}

int
cas_volume_exists (struct cas_store *st, const char *name)
{
  struct cas_name n;

  if (cas_name_parse (st, name, &n) == -1)
    return -1;
  return st->meta->ops->exists (st->meta, &n);
}

static int
check_size (uint64_t size)
{
  if (size == 0 || size > CAS_MAX_VOLUME_SIZE) {
    backend_error ("cas: volume size %" PRIu64 " must be from 1 byte to "
                   "1 PiB", size);
    errno = EINVAL;
    return -1;
  }
  return 0;
}

int
cas_volume_create (struct cas_store *st, const char *name, uint64_t size)
{
  struct cas_root r;
  int e;

  if (st->readonly) {
    backend_error ("cas: cannot create volume '%s': the store is open "
                   "read-only", name);
    errno = EROFS;
    return -1;
  }
  if (cas_volume_name_check (name) == -1 ||
      cas_new_name_check ("volume", name) == -1 || check_size (size) == -1)
    return -1;
  e = cas_volume_exists (st, name);
  if (e == -1)
    return -1;
  if (e == 1) {
    backend_error ("cas: volume '%s' already exists", name);
    errno = EEXIST;
    return -1;
  }
  memset (&r, 0, sizeof r);
  r.version = CAS_ROOT_VERSION;
  r.blocksize = st->sb.blocksize;
  r.size = size;
  r.fanout = CAS_MAP_FANOUT;
  r.depth = cas_map_depth ((size + r.blocksize - 1) / r.blocksize,
                           CAS_MAP_FANOUT);
  r.mtime = time (NULL);
  if (st->meta->ops->volume_create (st->meta, name, &r, NULL) == -1) {
    if (errno == EEXIST)
      backend_error ("cas: volume '%s' already exists", name);
    return -1;
  }
  return 0;
}

int
cas_volume_resize (struct cas_store *st, const char *name, uint64_t new_size)
{
  struct cas_root r;
  struct cas_volume *v;
  struct cas_meta_vol *mh = NULL;
  uint32_t depth;

  if (st->readonly) {
    backend_error ("cas: cannot grow volume '%s': the store is open "
                   "read-only", name);
    errno = EROFS;
    return -1;
  }
  if (cas_volume_name_check (name) == -1 || check_size (new_size) == -1)
    return -1;
  pthread_mutex_lock (&st->vol_lock);
  for (v = st->vols; v; v = *cas_volume_next (v))
    if (strcmp (cas_volume_name (v), name) == 0) {
      pthread_mutex_unlock (&st->vol_lock);
      backend_error ("cas: volume '%s' is open: cannot resize it", name);
      errno = EBUSY;
      return -1;
    }
  /* Held until the root is rewritten, so nobody opens it meanwhile (in
   * this process; elsewhere, the handle's lease keeps other writers out).
   */
  mh = cas_store_volume_open (st, name, true, &r);
  if (mh == NULL)
    goto err;
  if (new_size < r.size) {
    backend_error ("cas: volume '%s' is %" PRIu64 " bytes: shrinking it to %"
                   PRIu64 " is not supported", name, r.size, new_size);
    errno = EINVAL;
    goto err;
  }
  depth = cas_map_depth ((new_size + r.blocksize - 1) / r.blocksize,
                         CAS_MAP_FANOUT);
  /* The old tree becomes the first child of each new top level; the
   * blocks past the old end are unmapped (their hashes are zero).
   */
  while (r.depth < depth) {
    if (!cas_hash_is_zero (&r.root)) {
      struct cas_hash h;
      if (cas_hash_compute (&r.root, CAS_HASH_SIZE, &h) == -1 ||
          cs_put (st->cs, &h, CAS_CHUNK_MAPNODE, &r.root, CAS_HASH_SIZE,
                  NULL) == -1)
        goto err;
      r.root = h;
    }
    r.depth++;
  }
  if (cs_sync (st->cs) == -1)
    goto err;
  r.size = new_size;
  r.generation++;
  r.mtime = time (NULL);
  if (cas_meta_publish (mh, &r) == -1)
    goto err;
  cas_meta_volume_close (mh);
  pthread_mutex_unlock (&st->vol_lock);
  return 0;
 err:
  cas_meta_volume_close (mh);
  pthread_mutex_unlock (&st->vol_lock);
  return -1;
}

int
cas_volume_grow_to (struct cas_store *st, const char *name, uint64_t size,
                    bool create, uint64_t *old_size)
{
  struct cas_root r;

  *old_size = 0;
  switch (cas_volume_exists (st, name)) {
  case -1:
    return -1;
  case 0:
    if (!create) {
      backend_error ("cas: no volume named '%s' in store %s", name, st->dir);
      errno = ENOENT;
      return -1;
    }
    return cas_volume_create (st, name, size);
  }
  if (cas_root_read (st, name, &r) == -1)
    return -1;
  *old_size = r.size;
  if (r.size >= size)
    return 0;
  return cas_volume_resize (st, name, size);
}

struct cas_volume *
cas_volume_open (struct cas_store *st, const char *name)
{
  struct cas_volume *v;
  struct cas_name n;

  if (cas_name_parse (st, name, &n) == -1)
    return NULL;
  pthread_mutex_lock (&st->vol_lock);
  for (v = st->vols; v; v = *cas_volume_next (v))
    if (strcmp (cas_volume_name (v), name) == 0) {
      (*cas_volume_refs (v))++;
      goto out;
    }
  v = cas_volume_load (st, name);
  if (v) {
    *cas_volume_next (v) = st->vols;
    st->vols = v;
  }
 out:
  pthread_mutex_unlock (&st->vol_lock);
  return v;
}

void
cas_volume_close (struct cas_volume *vol)
{
  struct cas_store *st;
  struct cas_volume **pp;

  if (!vol)
    return;
  st = cas_volume_store (vol);
  pthread_mutex_lock (&st->vol_lock);
  if (--*cas_volume_refs (vol) == 0) {
    for (pp = &st->vols; *pp; pp = cas_volume_next (*pp))
      if (*pp == vol) {
        *pp = *cas_volume_next (vol);
        break;
      }
    /* The final flush runs under vol_lock: an open of the same name
     * meanwhile must not load the root file before it is published.
     */
    cas_volume_free (vol);
  }
  pthread_mutex_unlock (&st->vol_lock);
}

static int
count_one (const char *name, void *opaque)
{
  (void) name;
  (*(uint64_t *) opaque)++;
  return 0;
}

int
cas_store_stat (struct cas_store *st, struct cas_store_stats *ss)
{
  memset (ss, 0, sizeof *ss);
  ss->blocksize = st->sb.blocksize;
  if (cas_store_list_volumes (st, count_one, &ss->volumes) == -1)
    return -1;
  st->cs->ops->stats (st->cs, &ss->chunks);
  return 0;
}

struct check_records {
  int (*fn) (const struct cas_record_info *, void *);
  void *opaque;
  int bad;
};

static int
check_one (const struct cas_record_info *info, void *opaque)
{
  struct check_records *c = opaque;

  if (info->status == 0)
    return 0;
  c->bad++;
  return c->fn ? c->fn (info, c->opaque) : 0;
}

int
cas_store_check_records (struct cas_store *st, bool full,
                         int (*fn) (const struct cas_record_info *, void *),
                         void *opaque)
{
  struct check_records c = { .fn = fn, .opaque = opaque, .bad = 0 };
  int r;

  r = st->cs->ops->enumerate (st->cs, CAS_ENUM_CHECK_CRC |
                              (full ? CAS_ENUM_REHASH : 0), check_one, &c);
  if (r == -1)
    return -1;
  return c.bad;
}
