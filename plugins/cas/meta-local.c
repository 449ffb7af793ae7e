/* The store's metadata as files in the store directory (meta.h): the
 * superblock, the store lock, root files of volumes and snapshots, and
 * the intent that makes a multi-step delete or rename atomic.  The layout
 * is FORMAT.md's ("Volumes", "History").
 *
 * Crash safety.  A snapshot, a clone, a new volume and the delete of one
 * snapshot are each one atomic file operation (an exclusive create by
 * link(), or an unlink), made durable by an fsync of the directory.  A
 * published root replaces the old one by rename().  Deleting a volume
 * with its snapshots and renaming a volume (whose snapshot directory
 * follows it) take several steps: they first write DIR/intent (durably),
 * then do the steps, then remove it.  Every step can be done again
 * without harm, so a read-write open that finds an intent finishes it
 * (recover): after a crash the operation is done, or, if the intent
 * never reached the disk, not started.
 *
 * One process writes a store at a time (flock of DIR/lock): no other
 * process can have a volume open, so volume_sync and volume_users have
 * nothing to do.
 *
 * Thread safety: the paths are constant after open; every operation is
 * a few system calls on its own files.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "cleanup.h"
#include "crc32c.h"
#include "meta.h"
#include "pack.h"               /* cas_fsync_dir */
#include "testpoint.h"
#include "vector.h"

#define INTENT_MAGIC "nbdcas-intent 2"
#define INTENT_MAGIC_V1 "nbdcas-intent 1"   /* read only: earlier releases */
#define INTENT_MAX 1024

struct local_meta {
  struct cas_meta m;
  char *dir;                    /* const */
  char *voldir;                 /* const: DIR/volumes */
  char *snapdir;                /* const: DIR/snapshots */
  int lockfd;                   /* const: flock()ed */
  bool readonly;                /* const */
};

struct local_vol {
  struct cas_meta_vol h;
  char *volume;                 /* const: the root file's name */
};

#define LM(m) ((struct local_meta *) (m))

/* ---- files ---- */

/* Write buf to dir/name atomically and durably (temp file, fsync,
 * rename or, exclusive, link, then fsync of dir).  exclusive: fail with
 * EEXIST (no message) if name exists.
 */
static int
write_file (const char *dir, const char *name, const void *buf, size_t len,
            bool exclusive)
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
  return write_file (dir, name, buf, len, false);
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

/* fn(name) for each entry of dir not starting with '.', in name order
 * (an absent dir has none); stops at fn's first non-zero value.
 */
static int
list_dir (const char *dir, int (*fn) (const char *, void *), void *opaque)
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

/* Where the root of n lives: DIR/volumes/NAME or
 * DIR/snapshots/VOLUME/SNAP (malloc'ed; NULL: ENOMEM).
 */
static char *
root_path (struct local_meta *lm, const struct cas_name *n)
{
  char *path;

  if (n->is_snapshot
      ? asprintf (&path, "%s/%s/%s", lm->snapdir, n->volume, n->snap) == -1
      : asprintf (&path, "%s/%s", lm->voldir, n->volume) == -1)
    return NULL;
  return path;
}

/* ---- the store: exists, create, open ---- */

/* Is dir/name something cas_meta_local_create makes before the
 * superblock: an empty packs/, volumes/ or snapshots/, or the
 * superblock's temp file?
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
cas_meta_local_exists (const char *dir)
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
  /* Empty, or what an interrupted creation leaves (it makes these
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
cas_meta_local_create (const char *dir, const struct cas_super *s)
{
  CLEANUP_FREE char *packs = NULL, *vols = NULL, *snaps = NULL;
  uint8_t buf[CAS_SUPER_SIZE];

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
  cas_super_encode (s, buf);
  /* The superblock goes last: a store exists once it is there. */
  if (cas_fsync_dir (packs) == -1 || cas_fsync_dir (vols) == -1 ||
      cas_fsync_dir (snaps) == -1 || cas_fsync_dir (dir) == -1)
    return -1;
  return write_atomic (dir, "superblock", buf, sizeof buf);
}

static void
local_close (struct cas_meta *m)
{
  struct local_meta *lm = LM (m);

  if (lm == NULL)
    return;
  if (lm->lockfd >= 0)
    close (lm->lockfd);         /* releases the flock */
  free (lm->dir);
  free (lm->voldir);
  free (lm->snapdir);
  free (lm);
}

static struct chunkstore *
local_open_chunks (struct cas_meta *m, bool readonly, const uint8_t uuid[16],
                   unsigned flags)
{
  return cas_packstore_open (LM (m)->dir, readonly, uuid, flags);
}

static int recover (struct local_meta *lm);
static const struct cas_meta_ops local_ops;

struct cas_meta *
cas_meta_local_open (const char *dir, bool readonly, struct cas_super *sb)
{
  CLEANUP_FREE char *sbpath = NULL, *lockpath = NULL;
  uint8_t buf[CAS_SUPER_SIZE];
  struct local_meta *lm;

  lm = calloc (1, sizeof *lm);
  if (lm == NULL)
    return NULL;
  lm->m.ops = &local_ops;
  lm->lockfd = -1;
  lm->readonly = readonly;
  lm->dir = strdup (dir);
  if (lm->dir == NULL || asprintf (&lm->voldir, "%s/volumes", dir) == -1 ||
      asprintf (&lm->snapdir, "%s/snapshots", dir) == -1 ||
      asprintf (&sbpath, "%s/superblock", dir) == -1 ||
      asprintf (&lockpath, "%s/lock", dir) == -1)
    goto err;
  if (read_exact (sbpath, "superblock", buf, sizeof buf) == -1) {
    if (errno == ENOENT)
      backend_error ("cas: %s is not a cas store (no superblock)", dir);
    goto err;
  }
  if (cas_super_decode (buf, sb) == -1)
    goto err;
  /* One writer, or any number of readers, per store. */
  lm->lockfd = open (lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lm->lockfd == -1 && readonly)
    lm->lockfd = open (lockpath, O_RDONLY | O_CLOEXEC);
  if (lm->lockfd == -1) {
    backend_error ("cas: %s: %m", lockpath);
    goto err;
  }
  if (flock (lm->lockfd, (readonly ? LOCK_SH : LOCK_EX) | LOCK_NB) == -1) {
    if (errno == EWOULDBLOCK) {
      backend_error ("cas: store %s is in use by another process", dir);
      errno = EBUSY;
    }
    else
      backend_error ("cas: locking %s: %m", lockpath);
    goto err;
  }
  /* A delete or rename that a crash interrupted is finished first. */
  if (!readonly && recover (lm) == -1)
    goto err;
  return &lm->m;

 err:
  {
    int saved = errno ? errno : EIO;
    local_close (&lm->m);
    errno = saved;
    return NULL;
  }
}

/* ---- names and roots ---- */

static int
local_exists (struct cas_meta *m, const struct cas_name *n)
{
  CLEANUP_FREE char *path = root_path (LM (m), n);
  struct stat sb;

  if (path == NULL)
    return -1;
  /* lstat: a symbolic link is there (and refused when read), so nothing
   * is ever created through it.
   */
  return lstat (path, &sb) == 0;
}

static bool
local_legacy_volume (struct cas_meta *m, const char *name)
{
  CLEANUP_FREE char *path = NULL;
  struct stat sb;

  if (asprintf (&path, "%s/%s", LM (m)->voldir, name) == -1)
    return false;
  return lstat (path, &sb) == 0 && S_ISREG (sb.st_mode);
}

static int
local_list_volumes (struct cas_meta *m, int (*fn) (const char *, void *),
                    void *opaque)
{
  return list_dir (LM (m)->voldir, fn, opaque);
}

static int
local_list_snapshots (struct cas_meta *m, const char *volume,
                      int (*fn) (const char *, void *), void *opaque)
{
  CLEANUP_FREE char *dir = NULL;

  if (asprintf (&dir, "%s/%s", LM (m)->snapdir, volume) == -1)
    return -1;
  return list_dir (dir, fn, opaque);
}

static int
local_root_load (struct cas_meta *m, const struct cas_name *n,
                 uint8_t buf[CAS_ROOT_SIZE], char where[CAS_META_WHERE_MAX])
{
  CLEANUP_FREE char *path = root_path (LM (m), n);

  if (path == NULL)
    return -1;
  snprintf (where, CAS_META_WHERE_MAX, "%s", path);
  return read_exact (path, n->is_snapshot ? "snapshot root" : "volume root",
                     buf, CAS_ROOT_SIZE);
}

/* source: unused (one process holds a local store: admin_lock keeps the
 * collector out).
 */
static int
local_volume_create (struct cas_meta *m, const char *volume,
                     const struct cas_root *r, const char *source)
{
  uint8_t buf[CAS_ROOT_SIZE];

  cas_root_encode (r, buf);
  return write_file (LM (m)->voldir, volume, buf, sizeof buf, true);
}

/* mkdir DIR/snapshots and DIR/snapshots/VOLUME, durably. */
static int
make_snapdir (struct local_meta *lm, const char *volume, char **dir)
{
  if (asprintf (dir, "%s/%s", lm->snapdir, volume) == -1) {
    *dir = NULL;
    return -1;
  }
  if (mkdir (lm->snapdir, 0755) == 0) {
    if (cas_fsync_dir (lm->dir) == -1)
      goto err;
  }
  else if (errno != EEXIST)
    goto err;
  if (mkdir (*dir, 0755) == 0) {
    if (cas_fsync_dir (lm->snapdir) == -1)
      goto err;
  }
  else if (errno != EEXIST)
    goto err;
  return 0;
 err:
  backend_error ("cas: creating %s: %m", *dir);
  return -1;
}

static int
local_snapshot_create (struct cas_meta *m, const char *volume,
                       const char *snap, const struct cas_root *r)
{
  CLEANUP_FREE char *dir = NULL;
  uint8_t buf[CAS_ROOT_SIZE];

  cas_root_encode (r, buf);
  if (make_snapdir (LM (m), volume, &dir) == -1)
    return -1;
  cas_test_point ("snapshot");
  return write_file (dir, snap, buf, sizeof buf, true);
}

static int
local_snapshot_delete (struct cas_meta *m, const char *volume,
                       const char *snap)
{
  struct local_meta *lm = LM (m);
  CLEANUP_FREE char *sdir = NULL, *path = NULL;

  if (asprintf (&sdir, "%s/%s", lm->snapdir, volume) == -1 ||
      asprintf (&path, "%s/%s", sdir, snap) == -1)
    return -1;
  if (unlink (path) == -1 || cas_fsync_dir (sdir) == -1) {
    if (errno != ENOENT)
      backend_error ("cas: removing %s: %m", path);
    return -1;
  }
  rmdir (sdir);                 /* the last one: tidy, not needed */
  return 0;
}

static int
local_snapshot_rename (struct cas_meta *m, const char *volume,
                       const char *old, const char *new)
{
  struct local_meta *lm = LM (m);
  CLEANUP_FREE char *sdir = NULL, *a = NULL, *b = NULL;

  if (asprintf (&sdir, "%s/%s", lm->snapdir, volume) == -1 ||
      asprintf (&a, "%s/%s", sdir, old) == -1 ||
      asprintf (&b, "%s/%s", sdir, new) == -1)
    return -1;
  if (renameat2 (AT_FDCWD, a, AT_FDCWD, b, RENAME_NOREPLACE) == -1 ||
      cas_fsync_dir (sdir) == -1) {
    if (errno != ENOENT && errno != EEXIST)
      backend_error ("cas: renaming %s to %s: %m", a, b);
    return -1;
  }
  return 0;
}

/* ---- intents: the multi-step operations ---- */

static char *
intent_path (struct local_meta *lm)
{
  char *p;

  if (asprintf (&p, "%s/intent", lm->dir) == -1)
    return NULL;
  return p;
}

/* "nbdcas-intent 2\nOP\nA\n[B\n]CRC\n": one name a line (a name may
 * contain spaces, never a control character).
 */
static int
intent_write (struct local_meta *lm, const char *op, const char *a,
              const char *b)
{
  char body[INTENT_MAX], text[INTENT_MAX + 32];
  int n;

  n = snprintf (body, sizeof body, "%s\n%s\n%s\n%s%s", INTENT_MAGIC, op, a,
                b ? b : "", b ? "\n" : "");
  if (n < 0 || (size_t) n >= sizeof body) {
    errno = ENAMETOOLONG;
    return -1;
  }
  n = snprintf (text, sizeof text, "%s%08x\n", body,
                crc32c (0, body, strlen (body)));
  return write_file (lm->dir, "intent", text, n, false);
}

static int
intent_clear (struct local_meta *lm)
{
  CLEANUP_FREE char *p = intent_path (lm);

  if (p == NULL || (unlink (p) == -1 && errno != ENOENT) ||
      cas_fsync_dir (lm->dir) == -1) {
    backend_error ("cas: removing %s: %m", p ? p : "intent");
    return -1;
  }
  return 0;
}

/* Remove DIR/snapshots/VOLUME and what is in it.  Each snapshot is a
 * file; nothing else belongs there but temp files.
 */
static int
remove_snapshots (struct local_meta *lm, const char *volume)
{
  CLEANUP_FREE char *dir = NULL;
  DIR *d;
  struct dirent *de;
  int r = 0;

  if (asprintf (&dir, "%s/%s", lm->snapdir, volume) == -1)
    return -1;
  d = opendir (dir);
  if (d == NULL)
    return errno == ENOENT ? 0 : -1;
  while ((de = readdir (d)) != NULL) {
    if (strcmp (de->d_name, ".") == 0 || strcmp (de->d_name, "..") == 0)
      continue;
    if (unlinkat (dirfd (d), de->d_name, 0) == -1 && errno != ENOENT)
      r = -1;
  }
  closedir (d);
  if (r == 0 && rmdir (dir) == -1 && errno != ENOENT)
    r = -1;
  if (r == 0 && cas_fsync_dir (lm->snapdir) == -1 && errno != ENOENT)
    r = -1;
  if (r == -1)
    backend_error ("cas: removing the snapshots in %s: %m", dir);
  return r;
}

/* The steps of "delete VOLUME with its snapshots"; each may run again. */
static int
do_delete_volume (struct local_meta *lm, const char *volume)
{
  CLEANUP_FREE char *path = NULL;

  if (asprintf (&path, "%s/%s", lm->voldir, volume) == -1)
    return -1;
  /* The root first: from here on the volume is gone for everyone. */
  cas_test_point ("delete-root");
  if ((unlink (path) == -1 && errno != ENOENT) ||
      cas_fsync_dir (lm->voldir) == -1) {
    backend_error ("cas: removing %s: %m", path);
    return -1;
  }
  cas_test_point ("delete-snapshots");
  return remove_snapshots (lm, volume);
}

/* The steps of "rename volume OLD to NEW": the root, then the snapshot
 * directory.  Run again, each step sees that it is done.
 */
static int
do_rename_volume (struct local_meta *lm, const char *old, const char *new)
{
  CLEANUP_FREE char *a = NULL, *b = NULL, *sa = NULL, *sb = NULL;
  struct stat s;

  if (asprintf (&a, "%s/%s", lm->voldir, old) == -1 ||
      asprintf (&b, "%s/%s", lm->voldir, new) == -1 ||
      asprintf (&sa, "%s/%s", lm->snapdir, old) == -1 ||
      asprintf (&sb, "%s/%s", lm->snapdir, new) == -1)
    return -1;
  if (lstat (a, &s) == 0) {
    if (renameat2 (AT_FDCWD, a, AT_FDCWD, b, RENAME_NOREPLACE) == -1 ||
        cas_fsync_dir (lm->voldir) == -1) {
      backend_error ("cas: renaming %s to %s: %m", a, b);
      return -1;
    }
  }
  cas_test_point ("rename-snapshots");
  if (lstat (sa, &s) == 0) {
    if (renameat2 (AT_FDCWD, sa, AT_FDCWD, sb, RENAME_NOREPLACE) == -1 ||
        cas_fsync_dir (lm->snapdir) == -1) {
      backend_error ("cas: renaming %s to %s: %m", sa, sb);
      return -1;
    }
  }
  return 0;
}

/* Finish a delete or rename that a crash interrupted (called by a
 * read-write open, with the store lock held).
 */
static int
recover (struct local_meta *lm)
{
  CLEANUP_FREE char *p = intent_path (lm);
  char text[INTENT_MAX + 32], *nl, *q, *fld[4];
  unsigned crc;
  ssize_t n;
  int fd, nf = 0;
  bool v1;

  if (p == NULL)
    return -1;
  fd = open (p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd == -1)
    return errno == ENOENT ? 0 : -1;
  n = read (fd, text, sizeof text - 1);
  close (fd);
  if (n <= 0)
    goto bad;
  text[n] = '\0';
  /* The CRC line is the last one; it covers everything before it. */
  nl = strrchr (text, '\n');
  if (nl == NULL || nl != text + n - 1)
    goto bad;
  *nl = '\0';
  nl = strrchr (text, '\n');
  if (nl == NULL || sscanf (nl + 1, "%8x", &crc) != 1 ||
      crc != crc32c (0, text, nl + 1 - text))
    goto bad;
  nl[1] = '\0';
  if (strncmp (text, INTENT_MAGIC "\n", strlen (INTENT_MAGIC) + 1) == 0)
    v1 = false;
  else if (strncmp (text, INTENT_MAGIC_V1 "\n",
                    strlen (INTENT_MAGIC_V1) + 1) == 0)
    v1 = true;
  else
    goto bad;
  /* The lines after the magic, each ending in '\n' (text does). */
  for (q = strchr (text, '\n') + 1; *q && nf < 4; nf++) {
    fld[nf] = q;
    q = strchr (q, '\n');
    *q++ = '\0';
  }
  if (*q)
    goto bad;
  /* Version 1 (earlier releases) has "OP A [B]" on one line, separated by
   * spaces, which a name may contain: the name of a delete is the rest of
   * the line; a rename is taken only if one space can separate the names.
   */
  if (v1) {
    if (nf != 1 || (q = strchr (fld[0], ' ')) == NULL)
      goto bad;
    *q++ = '\0';
    fld[nf++] = q;
    if (strcmp (fld[0], "rename") == 0) {
      if ((q = strchr (q, ' ')) == NULL)
        goto bad;
      *q++ = '\0';
      fld[nf++] = q;
      if (strchr (q, ' ')) {
        backend_error ("cas: %s (of an earlier release) names a rename "
                       "whose names contain spaces: which space separates "
                       "them is not guessed at (finish the rename of "
                       "volumes/OLD and snapshots/OLD by hand, then remove "
                       "it)", p);
        errno = EIO;
        return -1;
      }
    }
  }
  /* Checked like any name: the CRC only tells damage apart. */
  if (nf == 2 && strcmp (fld[0], "delete") == 0 &&
      cas_volume_name_check (fld[1]) == 0) {
    backend_error ("cas: finishing the deletion of volume '%s' that was "
                   "interrupted", fld[1]);
    if (do_delete_volume (lm, fld[1]) == -1)
      return -1;
  }
  else if (nf == 3 && strcmp (fld[0], "rename") == 0 &&
           cas_volume_name_check (fld[1]) == 0 &&
           cas_volume_name_check (fld[2]) == 0) {
    backend_error ("cas: finishing the rename of volume '%s' to '%s' that "
                   "was interrupted", fld[1], fld[2]);
    if (do_rename_volume (lm, fld[1], fld[2]) == -1)
      return -1;
  }
  else
    goto bad;
  return intent_clear (lm);

 bad:
  /* Not ours to guess: an intent we cannot read is left alone. */
  backend_error ("cas: %s is damaged or of a newer version: an interrupted "
                 "delete or rename may be unfinished (look at it, then "
                 "remove it)", p);
  errno = EIO;
  return -1;
}

static int
has_one (const char *name, void *opaque)
{
  (void) name;
  *(bool *) opaque = true;
  return 1;
}

static int
local_volume_delete (struct cas_meta *m, const char *volume)
{
  struct local_meta *lm = LM (m);
  CLEANUP_FREE char *sdir = NULL;
  bool snaps = false;

  if (asprintf (&sdir, "%s/%s", lm->snapdir, volume) == -1)
    return -1;
  if (list_dir (sdir, has_one, &snaps) == -1)
    return -1;
  /* One unlink is atomic; with snapshots, the intent makes the steps so. */
  if (!snaps)
    return do_delete_volume (lm, volume);
  if (intent_write (lm, "delete", volume, NULL) == -1 ||
      do_delete_volume (lm, volume) == -1 || intent_clear (lm) == -1)
    return -1;
  return 0;
}

static int
local_volume_rename (struct cas_meta *m, const char *old, const char *new)
{
  struct local_meta *lm = LM (m);
  CLEANUP_FREE char *sdir = NULL;

  /* A snapshot directory left under the new name (nothing should leave
   * one) would be adopted by the renamed volume: refuse instead.
   */
  if (asprintf (&sdir, "%s/%s", lm->snapdir, new) == -1)
    return -1;
  if (access (sdir, F_OK) == 0) {
    backend_error ("cas: %s exists although there is no volume '%s': "
                   "remove it first", sdir, new);
    errno = EEXIST;
    return -1;
  }
  if (intent_write (lm, "rename", old, new) == -1)
    return -1;
  cas_test_point ("rename-root");
  if (do_rename_volume (lm, old, new) == -1 || intent_clear (lm) == -1)
    return -1;
  return 0;
}

/* ---- open volumes: the store lock makes this process the only one ---- */

static struct cas_meta_vol *
local_volume_open (struct cas_meta *m, const struct cas_name *n,
                   bool writable, uint8_t buf[CAS_ROOT_SIZE],
                   char where[CAS_META_WHERE_MAX])
{
  struct local_vol *h;

  if (local_root_load (m, n, buf, where) == -1)
    return NULL;
  h = calloc (1, sizeof *h);
  if (h == NULL || (h->volume = strdup (n->volume)) == NULL) {
    free (h);
    errno = ENOMEM;
    return NULL;
  }
  h->h.m = m;
  return &h->h;
}

static void
local_volume_set_flush (struct cas_meta_vol *h, cas_meta_flush_fn fn,
                        void *arg)
{
  /* Nobody else can ask: no other process has the store open. */
}

static int
local_volume_publish (struct cas_meta_vol *hv, const struct cas_root *r)
{
  struct local_vol *h = (struct local_vol *) hv;
  uint8_t buf[CAS_ROOT_SIZE];

  cas_root_encode (r, buf);
  return write_atomic (LM (hv->m)->voldir, h->volume, buf, sizeof buf);
}

static int
local_volume_check (struct cas_meta_vol *h)
{
  return 0;
}

static void
local_volume_close (struct cas_meta_vol *hv)
{
  struct local_vol *h = (struct local_vol *) hv;

  if (h == NULL)
    return;
  free (h->volume);
  free (h);
}

static int
local_volume_sync (struct cas_meta *m, const char *volume)
{
  return 0;
}

static int
local_volume_users (struct cas_meta *m, const char *volume,
                    int (*fn) (const char *, const char *, void *),
                    void *opaque)
{
  return 0;
}

static int
local_super_write (struct cas_meta *m, const struct cas_super *sb)
{
  uint8_t buf[CAS_SUPER_SIZE];

  cas_super_encode (sb, buf);
  return write_atomic (LM (m)->dir, "superblock", buf, sizeof buf);
}

static const struct cas_meta_ops local_ops = {
  .kind = "local",
  .close = local_close,
  .open_chunks = local_open_chunks,
  .super_write = local_super_write,
  .exists = local_exists,
  .legacy_volume = local_legacy_volume,
  .list_volumes = local_list_volumes,
  .list_snapshots = local_list_snapshots,
  .root_load = local_root_load,
  .volume_create = local_volume_create,
  .snapshot_create = local_snapshot_create,
  .snapshot_delete = local_snapshot_delete,
  .snapshot_rename = local_snapshot_rename,
  .volume_delete = local_volume_delete,
  .volume_rename = local_volume_rename,
  .volume_open = local_volume_open,
  .volume_set_flush = local_volume_set_flush,
  .volume_publish = local_volume_publish,
  .volume_check = local_volume_check,
  .volume_close = local_volume_close,
  .volume_sync = local_volume_sync,
  .volume_users = local_volume_users,
};
