/* The store: directory layout, superblock, lock, volume names and root
 * files, the registry of open volumes, stats and record checks.  See
 * store.h for the contract.
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
#include "pack.h"
#include "storeint.h"
#include "vector.h"

uint32_t cas_store_blocksize (const struct cas_store *st) { return st->sb.blocksize; }
uint32_t
cas_store_format_version (const struct cas_store *st)
{
  /* cas_store_upgrade may change it while the store is served. */
  return __atomic_load_n (&st->sb.version, __ATOMIC_RELAXED);
}
const char *cas_store_dir (const struct cas_store *st) { return st->dir; }
bool cas_store_readonly (const struct cas_store *st) { return st->readonly; }
struct chunkstore *cas_store_chunks (struct cas_store *st) { return st->cs; }

int
cas_write_file (const char *dir, const char *name, const void *buf,
                size_t len, bool exclusive)
{
  CLEANUP_FREE char *tmp = NULL, *path = NULL;
  int fd;

  /* An exclusive create has a temp file of its own: .NAME.tmp belongs
   * to the writes that replace NAME (a volume's flush), and a clone onto
   * an existing volume's name must not touch what its flush writes and
   * renames.  Exclusive creates are serialised by admin_lock.
   */
  if (asprintf (&tmp, exclusive ? "%s/.%s.new" : "%s/.%s.tmp", dir,
                name) == -1 ||
      asprintf (&path, "%s/%s", dir, name) == -1)
    return -1;
  fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd == -1)
    goto err;
  if (write (fd, buf, len) != (ssize_t) len) {
    if (errno == 0)
      errno = ENOSPC;
    close (fd);
    goto err;
  }
  if (fsync (fd) == -1) {
    close (fd);
    goto err;
  }
  if (close (fd) == -1)
    goto err;
  /* link() fails with EEXIST instead of replacing: an exclusive create
   * that is still all-or-nothing (the file appears complete or not).
   */
  if (exclusive) {
    if (link (tmp, path) == -1) {
      if (errno == EEXIST) {
        unlink (tmp);
        return -1;              /* the caller says what exists */
      }
      goto err;
    }
    unlink (tmp);
  }
  else if (rename (tmp, path) == -1)
    goto err;
  if (cas_fsync_dir (dir) == -1)
    goto err;
  return 0;
 err:
  backend_error ("cas: writing %s: %m", path);
  unlink (tmp);
  return -1;
}

static int
write_atomic (const char *dir, const char *name, const void *buf, size_t len)
{
  return cas_write_file (dir, name, buf, len, false);
}

/* Read the len-byte file path (what: "superblock", "volume root") into
 * buf.  A missing file is ENOENT without a message (the caller knows what
 * that means); anything else is reported: a short file is damage (EIO)
 * and says so, a symbolic link is refused (ELOOP: a store never makes
 * one, and following it could read or clobber anything).
 */
static int
read_exact (const char *path, const char *what, void *buf, size_t len)
{
  int fd = open (path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  ssize_t n;

  if (fd == -1) {
    if (errno == ELOOP)
      backend_error ("cas: %s %s is a symbolic link: refused", what, path);
    else if (errno != ENOENT)
      backend_error ("cas: reading %s %s: %m", what, path);
    return -1;
  }
  n = read (fd, buf, len);
  if (n == -1) {
    backend_error ("cas: reading %s %s: %m", what, path);
    close (fd);
    return -1;
  }
  close (fd);
  if (n != (ssize_t) len) {
    backend_error ("cas: %s %s is truncated: %zd of %zu bytes (damaged)",
                   what, path, n, len);
    errno = EIO;
    return -1;
  }
  return 0;
}

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
  CLEANUP_FREE char *path = NULL;
  struct stat sb;

  if (strchr (name, '@') == NULL || strchr (name, '/') || name[0] == '.' ||
      strlen (name) > CAS_VOLUME_NAME_MAX ||
      asprintf (&path, "%s/%s", st->voldir, name) == -1)
    return false;
  return lstat (path, &sb) == 0 && S_ISREG (sb.st_mode);
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

char *
cas_root_path (struct cas_store *st, const struct cas_name *n)
{
  char *path;

  if (n->is_snapshot
      ? asprintf (&path, "%s/%s/%s", st->snapdir, n->volume, n->snap) == -1
      : asprintf (&path, "%s/%s", st->voldir, n->volume) == -1)
    return NULL;
  return path;
}

/* Is dir/name something cas_store_create makes before the superblock:
 * an empty packs/, volumes/ or snapshots/, or the superblock's temp file?
 */
static bool
creation_leftover (const char *dir, const char *name)
{
  CLEANUP_FREE char *path = NULL;
  struct dirent *de;
  bool empty = true;
  DIR *d;

  if (strcmp (name, ".superblock.tmp") == 0)
    return true;
  if (strcmp (name, "packs") != 0 && strcmp (name, "volumes") != 0 &&
      strcmp (name, "snapshots") != 0)
    return false;
  if (asprintf (&path, "%s/%s", dir, name) == -1 ||
      (d = opendir (path)) == NULL)
    return false;
  while ((de = readdir (d)) != NULL)
    if (strcmp (de->d_name, ".") != 0 && strcmp (de->d_name, "..") != 0)
      empty = false;
  closedir (d);
  return empty;
}

int
cas_store_exists (const char *dir)
{
  CLEANUP_FREE char *sbpath = NULL;
  struct stat sb;
  DIR *d;
  struct dirent *de;
  bool empty = true;

  if (stat (dir, &sb) == -1) {
    if (errno == ENOENT)
      return 0;
    backend_error ("cas: store %s: %m", dir);
    return -1;
  }
  if (!S_ISDIR (sb.st_mode)) {
    backend_error ("cas: store %s is not a directory", dir);
    errno = ENOTDIR;
    return -1;
  }
  if (asprintf (&sbpath, "%s/superblock", dir) == -1)
    return -1;
  if (access (sbpath, F_OK) == 0)
    return 1;
  d = opendir (dir);
  if (d == NULL) {
    backend_error ("cas: store %s: %m", dir);
    return -1;
  }
  /* Empty, or what an interrupted cas_store_create leaves (it makes these
   * first and the superblock last): either way a store can be made here.
   */
  while ((de = readdir (d)) != NULL)
    if (strcmp (de->d_name, ".") != 0 && strcmp (de->d_name, "..") != 0 &&
        !creation_leftover (dir, de->d_name)) {
      empty = false;
      break;
    }
  closedir (d);
  if (!empty) {
    backend_error ("cas: %s is not a cas store (no superblock) and is not "
                   "empty", dir);
    errno = ENOTEMPTY;
    return -1;
  }
  return 0;
}

int
cas_store_create (const char *dir, uint32_t blocksize)
{
  CLEANUP_FREE char *packs = NULL, *vols = NULL, *snaps = NULL;
  struct cas_super s;
  uint8_t buf[CAS_SUPER_SIZE];
  int r;

  if (blocksize == 0)
    blocksize = CAS_DEFAULT_BLOCKSIZE;
  if (cas_blocksize_check ("cas: block size", blocksize) == -1)
    return -1;
  r = cas_store_exists (dir);
  if (r == -1)
    return -1;
  if (r == 1) {
    backend_error ("cas: %s already holds a cas store", dir);
    errno = EEXIST;
    return -1;
  }
  if (mkdir (dir, 0755) == 0) {
    /* The store directory itself must survive a power cut. */
    CLEANUP_FREE char *parent = strdup (dir);
    char *slash = parent ? strrchr (parent, '/') : NULL;
    if (parent == NULL)
      return -1;
    if (slash == parent)
      slash[1] = '\0';
    else if (slash)
      *slash = '\0';
    if (cas_fsync_dir (slash ? parent : ".") == -1) {
      backend_error ("cas: syncing the directory holding %s: %m", dir);
      return -1;
    }
  }
  else if (errno != EEXIST) {
    backend_error ("cas: cannot create store directory %s: %m", dir);
    return -1;
  }
  if (asprintf (&packs, "%s/packs", dir) == -1 ||
      asprintf (&vols, "%s/volumes", dir) == -1 ||
      asprintf (&snaps, "%s/snapshots", dir) == -1)
    return -1;
  if ((mkdir (packs, 0755) == -1 && errno != EEXIST) ||
      (mkdir (vols, 0755) == -1 && errno != EEXIST) ||
      (mkdir (snaps, 0755) == -1 && errno != EEXIST)) {
    backend_error ("cas: creating %s: %m", dir);
    return -1;
  }
  memset (&s, 0, sizeof s);
  s.version = CAS_FORMAT_VERSION;
  s.blocksize = blocksize;
  s.fanout = CAS_MAP_FANOUT;
  s.created = time (NULL);
  if (getrandom (s.uuid, sizeof s.uuid, 0) != sizeof s.uuid) {
    backend_error ("cas: getrandom: %m");
    return -1;
  }
  cas_super_encode (&s, buf);
  /* The superblock goes last: a store exists once it is there. */
  if (cas_fsync_dir (packs) == -1 || cas_fsync_dir (vols) == -1 ||
      cas_fsync_dir (snaps) == -1 || cas_fsync_dir (dir) == -1)
    return -1;
  return write_atomic (dir, "superblock", buf, sizeof buf);
}

int
cas_store_upgrade (struct cas_store *st, uint32_t *from)
{
  struct cas_super s;
  uint8_t buf[CAS_SUPER_SIZE];
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
    cas_super_encode (&s, buf);
    r = write_atomic (st->dir, "superblock", buf, sizeof buf);
    if (r == 0) {
      __atomic_store_n (&st->sb.version, s.version, __ATOMIC_RELAXED);
      cas_packstore_set_tables (st->cs);
    }
  }
  pthread_mutex_unlock (&st->admin_lock);
  return r;
}

struct cas_store *
cas_store_open (const char *dir, const struct cas_open_options *opts)
{
  CLEANUP_FREE char *sbpath = NULL, *lockpath = NULL;
  uint8_t buf[CAS_SUPER_SIZE];
  struct cas_store *st;

  st = calloc (1, sizeof *st);
  if (st == NULL)
    return NULL;
  st->lockfd = -1;
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
  if (st->dir == NULL || asprintf (&st->voldir, "%s/volumes", dir) == -1 ||
      asprintf (&st->snapdir, "%s/snapshots", dir) == -1 ||
      asprintf (&sbpath, "%s/superblock", dir) == -1 ||
      asprintf (&lockpath, "%s/lock", dir) == -1)
    goto err;
  if (read_exact (sbpath, "superblock", buf, sizeof buf) == -1) {
    if (errno == ENOENT)
      backend_error ("cas: %s is not a cas store (no superblock)", dir);
    goto err;
  }
  if (cas_super_decode (buf, &st->sb) == -1)
    goto err;
  /* One writer, or any number of readers, per store. */
  st->lockfd = open (lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (st->lockfd == -1 && st->readonly)
    st->lockfd = open (lockpath, O_RDONLY | O_CLOEXEC);
  if (st->lockfd == -1) {
    backend_error ("cas: %s: %m", lockpath);
    goto err;
  }
  if (flock (st->lockfd, (st->readonly ? LOCK_SH : LOCK_EX) | LOCK_NB) == -1) {
    if (errno == EWOULDBLOCK) {
      backend_error ("cas: store %s is in use by another process", dir);
      errno = EBUSY;
    }
    else
      backend_error ("cas: locking %s: %m", lockpath);
    goto err;
  }
  /* A delete or rename that a crash interrupted is finished first. */
  if (!st->readonly && cas_history_recover (st) == -1)
    goto err;
  st->cs = cas_packstore_open (dir, st->readonly, st->sb.uuid,
                               (opts && opts->rebuild_index
                                ? CAS_PACKSTORE_NO_CACHE : 0) |
                               (st->sb.version >= 2
                                ? CAS_PACKSTORE_TABLES : 0));
  if (st->cs == NULL)
    goto err;
  return st;

 err:
  {
    int saved = errno ? errno : EIO;
    if (st->lockfd >= 0)
      close (st->lockfd);
    free (st->dir);
    free (st->voldir);
    free (st->snapdir);
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
  close (st->lockfd);           /* releases the flock */
  pthread_mutex_destroy (&st->vol_lock);
  pthread_mutex_destroy (&st->admin_lock);
  pthread_mutex_destroy (&st->gc_lock);
  pthread_rwlock_destroy (&st->gc_gate);
  free (st->dir);
  free (st->voldir);
  free (st->snapdir);
  free (st);
  return r;
}

/* ---- root files ---- */

int
cas_root_read (struct cas_store *st, const char *name, struct cas_root *r)
{
  CLEANUP_FREE char *path = NULL;
  uint8_t buf[CAS_ROOT_SIZE];
  struct cas_name n;

  if (cas_name_parse (st, name, &n) == -1 ||
      (path = cas_root_path (st, &n)) == NULL)
    return -1;
  if (read_exact (path, n.is_snapshot ? "snapshot root" : "volume root",
                  buf, sizeof buf) == -1) {
    if (errno == ENOENT && n.is_snapshot)
      backend_error ("cas: volume '%s' has no snapshot named '%s' in store "
                     "%s", n.volume, n.snap, st->dir);
    else if (errno == ENOENT)
      backend_error ("cas: no volume named '%s' in store %s", name, st->dir);
    return -1;
  }
  if (cas_root_decode (buf, r) == -1) {
    backend_error ("cas: %s root %s is unusable",
                   n.is_snapshot ? "snapshot" : "volume", path);
    errno = EIO;
    return -1;
  }
  if (r->snapshot != n.is_snapshot) {
    backend_error ("cas: %s holds a %s root where a %s root belongs", path,
                   r->snapshot ? "snapshot" : "volume",
                   n.is_snapshot ? "snapshot" : "volume");
    errno = EIO;
    return -1;
  }
  return 0;
}

int
cas_root_write (struct cas_store *st, const char *name,
                const struct cas_root *r)
{
  uint8_t buf[CAS_ROOT_SIZE];

  cas_root_encode (r, buf);
  return write_atomic (st->voldir, name, buf, sizeof buf);
}

/* ---- volume registry ---- */

static int
cmp_str (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

DEFINE_VECTOR_TYPE (string_vector, char *);

static void
free_string (char **s)
{
  free (*s);
}

int
cas_list_dir (const char *dir, int (*fn) (const char *, void *),
              void *opaque)
{
  string_vector names = empty_vector;
  DIR *d;
  struct dirent *de;
  size_t i;
  int r = 0;

  d = opendir (dir);
  if (d == NULL) {
    if (errno == ENOENT)
      return 0;
    backend_error ("cas: %s: %m", dir);
    return -1;
  }
  while ((de = readdir (d)) != NULL) {
    char *name;
    if (de->d_name[0] == '.')
      continue;                 /* ., .., temp files */
    if ((name = strdup (de->d_name)) == NULL ||
        string_vector_append (&names, name) == -1) {
      free (name);
      r = -1;
      goto out;
    }
  }
  if (names.len > 0)
    qsort (names.ptr, names.len, sizeof *names.ptr, cmp_str);
  for (i = 0; i < names.len && r == 0; i++)
    r = fn (names.ptr[i], opaque);
 out:
  closedir (d);
  string_vector_free_all (&names, free_string);
  return r;
}

int
cas_store_list_volumes (struct cas_store *st,
                        int (*fn) (const char *, void *), void *opaque)
{
  return cas_list_dir (st->voldir, fn, opaque);
}

int
cas_volume_exists (struct cas_store *st, const char *name)
{
  CLEANUP_FREE char *path = NULL;
  struct cas_name n;
  struct stat sb;

  if (cas_name_parse (st, name, &n) == -1 ||
      (path = cas_root_path (st, &n)) == NULL)
    return -1;
  /* lstat: a symbolic link is there (and refused when read), so nothing
   * is ever created through it.
   */
  return lstat (path, &sb) == 0;
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
  return cas_root_write (st, name, &r);
}

int
cas_volume_resize (struct cas_store *st, const char *name, uint64_t new_size)
{
  struct cas_root r;
  struct cas_volume *v;
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
  /* Held until the root is rewritten, so nobody opens it meanwhile. */
  if (cas_root_read (st, name, &r) == -1)
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
  if (cas_root_write (st, name, &r) == -1)
    goto err;
  pthread_mutex_unlock (&st->vol_lock);
  return 0;
 err:
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
