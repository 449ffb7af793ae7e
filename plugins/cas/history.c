/* History: snapshots, clones, delete and rename -- all of them operations
 * on roots (a volume's whole state is its root hash, FORMAT.md).  See
 * store.h for the contract.  This is the policy (names, what may be
 * deleted or renamed, flushing first); where roots live and how each
 * operation is made atomic is the meta layer's (meta.h: files and an
 * intent in the store directory, or single atomic operations on RADOS
 * objects).
 *
 * Thread safety: the operations are serialised by st->admin_lock; a
 * volume or snapshot that is open (in st->vols) is never deleted or
 * renamed: that is checked and done under st->vol_lock, so nobody opens
 * it meanwhile.  One open in another process (a RADOS store's other
 * hosts) is refused as well, by asking them (meta volume_users).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "storeint.h"

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
   * Open in another process (another host of a RADOS store): that one
   * is asked to flush.
   */
  if (v && cas_volume_flush (v) == -1) {
    cas_volume_close (v);
    return -1;
  }
  if (flush && !v && !strchr (name, '@') &&
      st->meta->ops->volume_sync (st->meta, name) == -1)
    return -1;
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

/* How often a snapshot or clone reads its source again when the store
 * says it changed in between (EAGAIN: RADOS, another host's writer
 * published, or a collector began marking).
 */
#define ROOT_TRIES 20

int
cas_snapshot_create (struct cas_store *st, const char *volume,
                     const char *snap)
{
  struct cas_root r;
  int ret = -1, tries, e;

  if (writable (st) == -1 || cas_volume_name_check (volume) == -1 ||
      cas_snapshot_name_check (snap) == -1 ||
      cas_new_name_check ("snapshot", snap) == -1)
    return -1;
  pthread_mutex_lock (&st->admin_lock);
  for (tries = 0; ; tries++) {
    if (cas_root_get (st, volume, true, &r) == -1)
      goto out;
    r.snapshot = true;
    r.mtime = time (NULL);
    if (st->meta->ops->snapshot_create (st->meta, volume, snap, &r) == 0)
      break;
    e = errno;
    if (e == EAGAIN && tries + 1 < ROOT_TRIES)
      continue;                 /* published meanwhile: the newer root */
    if (e == EEXIST)
      backend_error ("cas: snapshot '%s@%s' already exists", volume, snap);
    if (e == EAGAIN)
      backend_error ("cas: snapshot '%s@%s': volume '%s' was published "
                     "over %d times while the snapshot was taken", volume,
                     snap, volume, ROOT_TRIES);
    errno = e;
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
  struct cas_root r;
  int ret = -1, tries, e;

  if (writable (st) == -1 || cas_volume_name_check (newvol) == -1 ||
      cas_new_name_check ("volume", newvol) == -1)
    return -1;
  pthread_mutex_lock (&st->admin_lock);
  for (tries = 0; ; tries++) {
    if (cas_root_get (st, source, true, &r) == -1)
      goto out;
    /* The clone starts where the source is; its own history from here. */
    r.snapshot = false;
    r.generation = 1;
    r.mtime = time (NULL);
    cas_test_point ("clone");
    if (st->meta->ops->volume_create (st->meta, newvol, &r, source) == 0)
      break;
    e = errno;
    if (e == EAGAIN && tries + 1 < ROOT_TRIES)
      continue;                 /* published meanwhile: the newer root */
    if (e == EEXIST)
      backend_error ("cas: volume '%s' already exists", newvol);
    if (e == ENOENT)
      backend_error ("cas: '%s' was deleted or renamed while it was "
                     "cloned", source);
    if (e == EAGAIN)
      backend_error ("cas: clone of '%s': it was published over %d times "
                     "while it was cloned", source, ROOT_TRIES);
    errno = e;
    goto out;
  }
  ret = 0;
 out:
  pthread_mutex_unlock (&st->admin_lock);
  return ret;
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

/* Another process (another host of a RADOS store) has open what an
 * operation would remove or rename: the volume or any snapshot of it
 * (exact NULL), or exactly the name exact.
 */
struct remote_use {
  const char *exact;
  char name[2 * CAS_VOLUME_NAME_MAX + 2];
  char who[256];
  bool found;
};

static int
note_use (const char *name, const char *who, void *opaque)
{
  struct remote_use *u = opaque;

  if (u->exact && strcmp (name, u->exact) != 0)
    return 0;
  snprintf (u->name, sizeof u->name, "%s", name);
  snprintf (u->who, sizeof u->who, "%s", who);
  u->found = true;
  return 1;
}

static int
refuse_remote_use (struct cas_store *st, const char *volume,
                   const char *exact, const char *verb)
{
  struct remote_use u = { .exact = exact };

  if (st->meta->ops->volume_users (st->meta, volume, note_use, &u) < 0)
    return -1;
  if (!u.found)
    return 0;
  backend_error ("cas: %s '%s' is open on %s: cannot %s it now",
                 strchr (u.name, '@') ? "snapshot" : "volume", u.name, u.who,
                 verb);
  errno = EBUSY;
  return -1;
}

int
cas_store_delete (struct cas_store *st, const char *name, bool recursive)
{
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
  pthread_mutex_lock (&st->admin_lock);
  /* Held to the end: nobody opens what is being deleted. */
  pthread_mutex_lock (&st->vol_lock);
  if (find_open_locked (st, name)) {
    refuse_open (n.is_snapshot ? "snapshot" : "volume", name, "delete");
    goto out;
  }
  if (n.is_snapshot) {
    if (refuse_remote_use (st, n.volume, name, "delete") == -1)
      goto out;
    if (st->meta->ops->snapshot_delete (st->meta, n.volume, n.snap) == -1) {
      if (errno == ENOENT)
        backend_error ("cas: volume '%s' has no snapshot named '%s'",
                       n.volume, n.snap);
      goto out;
    }
    ret = 0;
    goto out;
  }
  if (st->meta->ops->list_snapshots (st->meta, name, note_name, &snaps) == -1)
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
  if (refuse_remote_use (st, name, NULL, "delete") == -1)
    goto out;
  if (st->meta->ops->volume_delete (st->meta, name) == -1) {
    if (errno == ENOENT)
      backend_error ("cas: no volume named '%s' in store %s", name, st->dir);
    goto out;
  }
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
    if (refuse_remote_use (st, o.volume, old, "rename") == -1)
      goto out;
    if (st->meta->ops->snapshot_rename (st->meta, o.volume, o.snap,
                                        nw.snap) == -1) {
      if (errno == EEXIST)
        backend_error ("cas: '%s' already exists", new);
      else if (errno == ENOENT)
        backend_error ("cas: no snapshot named '%s' in store %s", old,
                       st->dir);
      goto out;
    }
    ret = 0;
    goto out;
  }
  if ((busy = open_snapshot_locked (st, old)) != NULL) {
    refuse_open ("snapshot", busy, "rename its volume");
    goto out;
  }
  if (refuse_remote_use (st, old, NULL, "rename") == -1)
    goto out;
  if (st->meta->ops->volume_rename (st->meta, old, new) == -1) {
    /* EEXIST comes with its own message: what is in the way. */
    if (errno == ENOENT)
      backend_error ("cas: no volume named '%s' in store %s", old, st->dir);
    goto out;
  }
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
  struct snap_list l = { volume, fn, opaque };

  return st->meta->ops->list_snapshots (st->meta, volume, one_snapshot, &l);
}
