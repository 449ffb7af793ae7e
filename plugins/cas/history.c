/* History: snapshots, clones, delete and rename -- all of them operations
 * on root files (a volume's whole state is its root hash, FORMAT.md).
 * See store.h for the contract.
 *
 * Crash safety.  A snapshot, a clone and the delete of one snapshot are
 * each one atomic file operation (an exclusive create by link(), or an
 * unlink), made durable by an fsync of the directory.  Deleting a volume
 * with its snapshots and renaming a volume (whose snapshot directory
 * follows it) take several steps: they first write DIR/intent (durably),
 * then do the steps, then remove it.  Every step can be done again
 * without harm, so a read-write open that finds an intent finishes it
 * (cas_history_recover): after a crash the operation is done, or, if the
 * intent never reached the disk, not started.
 *
 * Thread safety: the operations are serialised by st->admin_lock; a
 * volume or snapshot that is open (in st->vols) is never deleted or
 * renamed: that is checked and done under st->vol_lock, so nobody opens
 * it meanwhile.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "cleanup.h"
#include "crc32c.h"
#include "pack.h"               /* cas_fsync_dir */
#include "storeint.h"

#define INTENT_MAGIC "nbdcas-intent 2"
#define INTENT_MAGIC_V1 "nbdcas-intent 1"   /* read only: earlier releases */
#define INTENT_MAX 1024

/* The open volume object of name, with a reference taken, or NULL.
 * Under vol_lock.
 */
static struct cas_volume *
find_open_locked (struct cas_store *st, const char *name)
{
  struct cas_volume *v;

  for (v = st->vols; v; v = *cas_volume_next (v))
    if (strcmp (cas_volume_name (v), name) == 0)
      return v;
  return NULL;
}

static int
refuse_open (const char *what, const char *name, const char *verb)
{
  backend_error ("cas: %s '%s' is open (a client is connected to it): "
                 "cannot %s it now", what, name, verb);
  errno = EBUSY;
  return -1;
}

int
cas_root_get (struct cas_store *st, const char *name, bool flush,
              struct cas_root *r)
{
  struct cas_volume *v = NULL;
  int ret;

  if (flush && !st->readonly) {
    pthread_mutex_lock (&st->vol_lock);
    v = find_open_locked (st, name);
    if (v)
      (*cas_volume_refs (v))++;
    pthread_mutex_unlock (&st->vol_lock);
  }
  /* Everything written to an open volume before now goes into the root
   * that is read next (or a later one, if others flush meanwhile).
   */
  if (v && cas_volume_flush (v) == -1) {
    cas_volume_close (v);
    return -1;
  }
  ret = cas_root_read (st, name, r);
  if (v)
    cas_volume_close (v);
  return ret;
}

static int
writable (struct cas_store *st)
{
  if (st->readonly) {
    backend_error ("cas: the store is open read-only");
    errno = EROFS;
    return -1;
  }
  return 0;
}

/* mkdir DIR/snapshots and DIR/snapshots/VOLUME, durably. */
static int
make_snapdir (struct cas_store *st, const char *volume, char **dir)
{
  if (asprintf (dir, "%s/%s", st->snapdir, volume) == -1) {
    *dir = NULL;
    return -1;
  }
  if (mkdir (st->snapdir, 0755) == 0) {
    if (cas_fsync_dir (st->dir) == -1)
      goto err;
  }
  else if (errno != EEXIST)
    goto err;
  if (mkdir (*dir, 0755) == 0) {
    if (cas_fsync_dir (st->snapdir) == -1)
      goto err;
  }
  else if (errno != EEXIST)
    goto err;
  return 0;
 err:
  backend_error ("cas: creating %s: %m", *dir);
  return -1;
}

int
cas_snapshot_create (struct cas_store *st, const char *volume,
                     const char *snap)
{
  CLEANUP_FREE char *dir = NULL;
  uint8_t buf[CAS_ROOT_SIZE];
  struct cas_root r;
  int ret = -1;

  if (writable (st) == -1 || cas_volume_name_check (volume) == -1 ||
      cas_snapshot_name_check (snap) == -1 ||
      cas_new_name_check ("snapshot", snap) == -1)
    return -1;
  pthread_mutex_lock (&st->admin_lock);
  if (cas_root_get (st, volume, true, &r) == -1)
    goto out;
  r.snapshot = true;
  r.mtime = time (NULL);
  cas_root_encode (&r, buf);
  if (make_snapdir (st, volume, &dir) == -1)
    goto out;
  cas_test_point ("snapshot");
  if (cas_write_file (dir, snap, buf, sizeof buf, true) == -1) {
    if (errno == EEXIST)
      backend_error ("cas: snapshot '%s@%s' already exists", volume, snap);
    goto out;
  }
  ret = 0;
 out:
  pthread_mutex_unlock (&st->admin_lock);
  return ret;
}

int
cas_volume_clone (struct cas_store *st, const char *source,
                  const char *newvol)
{
  uint8_t buf[CAS_ROOT_SIZE];
  struct cas_root r;
  int ret = -1;

  if (writable (st) == -1 || cas_volume_name_check (newvol) == -1 ||
      cas_new_name_check ("volume", newvol) == -1)
    return -1;
  pthread_mutex_lock (&st->admin_lock);
  if (cas_root_get (st, source, true, &r) == -1)
    goto out;
  /* The clone starts where the source is; its own history from here. */
  r.snapshot = false;
  r.generation = 1;
  r.mtime = time (NULL);
  cas_root_encode (&r, buf);
  cas_test_point ("clone");
  if (cas_write_file (st->voldir, newvol, buf, sizeof buf, true) == -1) {
    if (errno == EEXIST)
      backend_error ("cas: volume '%s' already exists", newvol);
    goto out;
  }
  ret = 0;
 out:
  pthread_mutex_unlock (&st->admin_lock);
  return ret;
}

/* ---- intents: the multi-step operations ---- */

static char *
intent_path (struct cas_store *st)
{
  char *p;

  if (asprintf (&p, "%s/intent", st->dir) == -1)
    return NULL;
  return p;
}

/* "nbdcas-intent 2\nOP\nA\n[B\n]CRC\n": one name a line (a name may
 * contain spaces, never a control character).
 */
static int
intent_write (struct cas_store *st, const char *op, const char *a,
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
  return cas_write_file (st->dir, "intent", text, n, false);
}

static int
intent_clear (struct cas_store *st)
{
  CLEANUP_FREE char *p = intent_path (st);

  if (p == NULL || (unlink (p) == -1 && errno != ENOENT) ||
      cas_fsync_dir (st->dir) == -1) {
    backend_error ("cas: removing %s: %m", p ? p : "intent");
    return -1;
  }
  return 0;
}

/* Remove DIR/snapshots/VOLUME and what is in it.  Each snapshot is a
 * file; nothing else belongs there but temp files.
 */
static int
remove_snapshots (struct cas_store *st, const char *volume)
{
  CLEANUP_FREE char *dir = NULL;
  DIR *d;
  struct dirent *de;
  int r = 0;

  if (asprintf (&dir, "%s/%s", st->snapdir, volume) == -1)
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
  if (r == 0 && cas_fsync_dir (st->snapdir) == -1 && errno != ENOENT)
    r = -1;
  if (r == -1)
    backend_error ("cas: removing the snapshots in %s: %m", dir);
  return r;
}

/* The steps of "delete VOLUME with its snapshots"; each may run again. */
static int
do_delete_volume (struct cas_store *st, const char *volume)
{
  CLEANUP_FREE char *path = NULL;

  if (asprintf (&path, "%s/%s", st->voldir, volume) == -1)
    return -1;
  /* The root first: from here on the volume is gone for everyone. */
  cas_test_point ("delete-root");
  if ((unlink (path) == -1 && errno != ENOENT) ||
      cas_fsync_dir (st->voldir) == -1) {
    backend_error ("cas: removing %s: %m", path);
    return -1;
  }
  cas_test_point ("delete-snapshots");
  return remove_snapshots (st, volume);
}

/* The steps of "rename volume OLD to NEW": the root, then the snapshot
 * directory.  Run again, each step sees that it is done.
 */
static int
do_rename_volume (struct cas_store *st, const char *old, const char *new)
{
  CLEANUP_FREE char *a = NULL, *b = NULL, *sa = NULL, *sb = NULL;
  struct stat s;

  if (asprintf (&a, "%s/%s", st->voldir, old) == -1 ||
      asprintf (&b, "%s/%s", st->voldir, new) == -1 ||
      asprintf (&sa, "%s/%s", st->snapdir, old) == -1 ||
      asprintf (&sb, "%s/%s", st->snapdir, new) == -1)
    return -1;
  if (lstat (a, &s) == 0) {
    if (renameat2 (AT_FDCWD, a, AT_FDCWD, b, RENAME_NOREPLACE) == -1 ||
        cas_fsync_dir (st->voldir) == -1) {
      backend_error ("cas: renaming %s to %s: %m", a, b);
      return -1;
    }
  }
  cas_test_point ("rename-snapshots");
  if (lstat (sa, &s) == 0) {
    if (renameat2 (AT_FDCWD, sa, AT_FDCWD, sb, RENAME_NOREPLACE) == -1 ||
        cas_fsync_dir (st->snapdir) == -1) {
      backend_error ("cas: renaming %s to %s: %m", sa, sb);
      return -1;
    }
  }
  return 0;
}

int
cas_history_recover (struct cas_store *st)
{
  CLEANUP_FREE char *p = intent_path (st);
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
    if (do_delete_volume (st, fld[1]) == -1)
      return -1;
  }
  else if (nf == 3 && strcmp (fld[0], "rename") == 0 &&
           cas_volume_name_check (fld[1]) == 0 &&
           cas_volume_name_check (fld[2]) == 0) {
    backend_error ("cas: finishing the rename of volume '%s' to '%s' that "
                   "was interrupted", fld[1], fld[2]);
    if (do_rename_volume (st, fld[1], fld[2]) == -1)
      return -1;
  }
  else
    goto bad;
  return intent_clear (st);

 bad:
  /* Not ours to guess: an intent we cannot read is left alone. */
  backend_error ("cas: %s is damaged or of a newer version: an interrupted "
                 "delete or rename may be unfinished (look at it, then "
                 "remove it)", p);
  errno = EIO;
  return -1;
}

/* ---- delete ---- */

struct first_names {
  char list[200];
  unsigned n;
};

static int
note_name (const char *name, void *opaque)
{
  struct first_names *f = opaque;
  size_t used = strlen (f->list);

  if (f->n++ < 5 && used < sizeof f->list - 50)
    snprintf (f->list + used, sizeof f->list - used, "%s'%.40s'",
              used ? ", " : "", name);
  return 0;
}

/* Is any snapshot of volume open?  Under vol_lock. */
static const char *
open_snapshot_locked (struct cas_store *st, const char *volume)
{
  struct cas_volume *v;
  size_t len = strlen (volume);

  for (v = st->vols; v; v = *cas_volume_next (v)) {
    const char *n = cas_volume_name (v);
    if (strncmp (n, volume, len) == 0 && n[len] == '@')
      return n;
  }
  return NULL;
}

int
cas_store_delete (struct cas_store *st, const char *name, bool recursive)
{
  CLEANUP_FREE char *path = NULL, *sdir = NULL;
  struct cas_name n;
  struct first_names snaps = { "", 0 };
  const char *busy;
  int ret = -1;

  if (writable (st) == -1 || cas_name_parse (st, name, &n) == -1)
    return -1;
  switch (cas_volume_exists (st, name)) {
  case -1: return -1;
  case 0:
    if (n.is_snapshot)
      backend_error ("cas: volume '%s' has no snapshot named '%s'",
                     n.volume, n.snap);
    else
      backend_error ("cas: no volume named '%s' in store %s", name, st->dir);
    errno = ENOENT;
    return -1;
  }
  if ((path = cas_root_path (st, &n)) == NULL ||
      asprintf (&sdir, "%s/%s", st->snapdir, n.volume) == -1)
    return -1;
  pthread_mutex_lock (&st->admin_lock);
  /* Held to the end: nobody opens what is being deleted. */
  pthread_mutex_lock (&st->vol_lock);
  if (find_open_locked (st, name)) {
    refuse_open (n.is_snapshot ? "snapshot" : "volume", name, "delete");
    goto out;
  }
  if (n.is_snapshot) {
    if (unlink (path) == -1 || cas_fsync_dir (sdir) == -1) {
      backend_error ("cas: removing %s: %m", path);
      goto out;
    }
    rmdir (sdir);               /* the last one: tidy, not needed */
    ret = 0;
    goto out;
  }
  if (cas_list_dir (sdir, note_name, &snaps) == -1)
    goto out;
  if (snaps.n && !recursive) {
    backend_error ("cas: volume '%s' has %u snapshot%s (%s%s): delete %s "
                   "first, or delete the volume with its snapshots "
                   "(--recursive)", name, snaps.n, snaps.n == 1 ? "" : "s",
                   snaps.list, snaps.n > 5 ? ", ..." : "",
                   snaps.n == 1 ? "it" : "them");
    errno = ENOTEMPTY;
    goto out;
  }
  if ((busy = open_snapshot_locked (st, name)) != NULL) {
    refuse_open ("snapshot", busy, "delete");
    goto out;
  }
  if (snaps.n == 0) {
    if (do_delete_volume (st, name) == -1)
      goto out;
  }
  else if (intent_write (st, "delete", name, NULL) == -1 ||
           do_delete_volume (st, name) == -1 || intent_clear (st) == -1)
    goto out;
  ret = 0;
 out:
  pthread_mutex_unlock (&st->vol_lock);
  pthread_mutex_unlock (&st->admin_lock);
  return ret;
}

/* ---- rename ---- */

int
cas_store_rename (struct cas_store *st, const char *old, const char *new)
{
  CLEANUP_FREE char *a = NULL, *b = NULL, *sdir = NULL;
  struct cas_name o, nw;
  const char *busy;
  int ret = -1;

  if (writable (st) == -1 || cas_name_parse (st, old, &o) == -1 ||
      cas_name_parse (st, new, &nw) == -1)
    return -1;
  if (o.is_snapshot != nw.is_snapshot ||
      (o.is_snapshot && strcmp (o.volume, nw.volume) != 0)) {
    backend_error ("cas: cannot rename '%s' to '%s': a volume is renamed to "
                   "a volume, a snapshot to another name of the same "
                   "volume (VOLUME@NEW)", old, new);
    errno = EINVAL;
    return -1;
  }
  if ((!nw.is_snapshot && cas_volume_name_check (new) == -1) ||
      cas_new_name_check (nw.is_snapshot ? "snapshot" : "volume",
                          nw.is_snapshot ? nw.snap : nw.volume) == -1)
    return -1;
  pthread_mutex_lock (&st->admin_lock);
  pthread_mutex_lock (&st->vol_lock);
  switch (cas_volume_exists (st, old)) {
  case -1: goto out;
  case 0:
    backend_error ("cas: no %s named '%s' in store %s",
                   o.is_snapshot ? "snapshot" : "volume", old, st->dir);
    errno = ENOENT;
    goto out;
  }
  switch (cas_volume_exists (st, new)) {
  case -1: goto out;
  case 1:
    backend_error ("cas: '%s' already exists", new);
    errno = EEXIST;
    goto out;
  }
  if (find_open_locked (st, old)) {
    refuse_open (o.is_snapshot ? "snapshot" : "volume", old, "rename");
    goto out;
  }
  if (o.is_snapshot) {
    if ((a = cas_root_path (st, &o)) == NULL ||
        (b = cas_root_path (st, &nw)) == NULL ||
        asprintf (&sdir, "%s/%s", st->snapdir, o.volume) == -1)
      goto out;
    if (renameat2 (AT_FDCWD, a, AT_FDCWD, b, RENAME_NOREPLACE) == -1 ||
        cas_fsync_dir (sdir) == -1) {
      backend_error ("cas: renaming %s to %s: %m", a, b);
      goto out;
    }
    ret = 0;
    goto out;
  }
  if ((busy = open_snapshot_locked (st, old)) != NULL) {
    refuse_open ("snapshot", busy, "rename its volume");
    goto out;
  }
  /* A snapshot directory left under the new name (nothing should leave
   * one) would be adopted by the renamed volume: refuse instead.
   */
  if (asprintf (&sdir, "%s/%s", st->snapdir, new) == -1)
    goto out;
  if (access (sdir, F_OK) == 0) {
    backend_error ("cas: %s exists although there is no volume '%s': "
                   "remove it first", sdir, new);
    errno = EEXIST;
    goto out;
  }
  if (intent_write (st, "rename", old, new) == -1)
    goto out;
  cas_test_point ("rename-root");
  if (do_rename_volume (st, old, new) == -1 || intent_clear (st) == -1)
    goto out;
  ret = 0;
 out:
  pthread_mutex_unlock (&st->vol_lock);
  pthread_mutex_unlock (&st->admin_lock);
  return ret;
}

/* ---- listing ---- */

struct snap_list {
  const char *volume;
  int (*fn) (const char *, void *);
  void *opaque;
};

static int
one_snapshot (const char *snap, void *opaque)
{
  struct snap_list *l = opaque;
  char name[2 * CAS_VOLUME_NAME_MAX + 2];

  snprintf (name, sizeof name, "%s@%s", l->volume, snap);
  return l->fn (name, l->opaque);
}

int
cas_store_list_snapshots (struct cas_store *st, const char *volume,
                          int (*fn) (const char *, void *), void *opaque)
{
  CLEANUP_FREE char *dir = NULL;
  struct snap_list l = { volume, fn, opaque };

  if (asprintf (&dir, "%s/%s", st->snapdir, volume) == -1)
    return -1;
  return cas_list_dir (dir, one_snapshot, &l);
}
