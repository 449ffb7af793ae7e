/* The store's metadata in a RADOS pool (meta.h; FORMAT.md, "RADOS").
 *
 * Objects (in the store's pool and namespace, beside the chunk objects):
 *
 *   nbdcas.super     the superblock (the 64 bytes of DIR/superblock),
 *                    created exclusively, last: the store exists once it
 *                    does
 *   nbdcas.volumes   the directory: omap NAME -> "vol.<32 hex>"
 *   vol.<32 hex>     one volume, under a random name that never changes:
 *                    data = its 128-byte root; xattr nbdcas.gen = the
 *                    root's generation; the lock nbdcas.lease = its
 *                    writer's lease; omap SNAP -> a snapshot's 128-byte
 *                    root; watched by every process that has it open
 *
 * Why no two writers can publish over each other: a root is published by
 * ONE write op on the volume's object {assert_locked(our lease), cmpxattr
 * nbdcas.gen == the generation we last saw, setxattr nbdcas.gen = +1,
 * write_full(root)}, which the OSD applies all or nothing.  The lease is
 * a cls_lock exclusive lock with a duration, taken once per open (with
 * a random cookie) and then only ever renewed with MUST_RENEW, which
 * fails once the lock expired or was broken: so while assert_locked
 * passes, this handle has held the lease without a gap since it took it,
 * and nobody else can have published; a writer that stalled past its
 * lease, or whose lease was broken (takeover=force, after blocklisting
 * it), fails every publish from then on, because the OSD checks the lock
 * (with the OSD's clock, the only clock involved) in the same op.  The
 * generation compare catches what the lease alone would not: a writer
 * that reads a root, loses the lease and wins it back (impossible here,
 * but cheap to rule out), and a root replaced by anyone else.
 *
 * Everything else is one atomic op too: a snapshot is an omap key set
 * only if absent (omap_cmp against "", which an absent key equals; no
 * value is ever empty), a rename of a volume is one op on the directory
 * (cmp old == its object, cmp new absent, set new, remove old), a delete
 * removes the directory entry (the volume is gone for everyone) and then
 * the object with its snapshots; a crash between the two leaves an
 * orphan object that nothing names: harmless (FORMAT.md says how it is
 * cleaned).  A new volume is its object first (created exclusively),
 * then its directory entry (set only if absent): the same kind of
 * orphan, the same cleaning.
 *
 * Other processes: each open volume watches its object.  A snapshot
 * taken elsewhere notifies "flush": the writer flushes (a thread of
 * ours: the watch callback only queues), then acks; readers ack at
 * once.  A delete or rename notifies "who": every opener answers with
 * what it has open.  See volume_sync / volume_users.
 *
 * Threads: "bg:cas-lease" renews the leases (every lease/3) and
 * re-establishes broken watches; "bg:cas-notify" runs remote flushes.
 * Both start with the first open volume, stop at close.
 *
 * Locks: rm->lock guards the list of handles, their lease times, watch
 * state and the notify queue; it is never held across a RADOS call.  A
 * handle's flush_lock is held while its flush callback runs (so that
 * set_flush(NULL) waits for it); it is taken before rm->lock, never
 * after.
 */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <rados/librados.h>

#include "backend.h"
#include "cleanup.h"
#include "vector.h"
#include "le.h"
#include "meta.h"
#include "rados.h"
#include "testpoint.h"

#define SUPER_OID "nbdcas.super"
#define DIR_OID "nbdcas.volumes"
#define VOL_PREFIX "vol."
#define VOL_OID_LEN (sizeof VOL_PREFIX - 1 + 32)
#define GEN_XATTR "nbdcas.gen"
#define LEASE_NAME "nbdcas.lease"
#define NOTIFY_FLUSH "nbdcas 1 flush"
#define NOTIFY_WHO "nbdcas 1 who"
#define NOTIFY_GC "nbdcas 1 gc"
#define NOTIFY_ROOTS "nbdcas 1 roots"
/* The directory's xattr that garbage collection increments each round
 * of marking; a new volume's directory entry is set only if it is still
 * what the creator read before it read the root it copies.
 */
#define EPOCH_XATTR "nbdcas.epoch"
/* Rounds of marking, and attempts at a consistent read of an object that
 * keeps changing, before a collection gives up.
 */
#define GC_ROUNDS 10
#define CONSISTENT_TRIES 10
/* How long a writer fenced by takeover=force stays blocklisted: long
 * enough that it has certainly noticed (its next renewal, a lease/3
 * later, fails) and been restarted; a restarted process is a new client
 * (a new address) and is not affected.
 */
#define BLOCKLIST_SECONDS 3600
#define COOKIE_MAX 320
#define WHO_MAX 320
/* Pages of directory and snapshot listings. */
#define LIST_PAGE 1000
/* Offset of the generation in an encoded root (FORMAT.md, "Volumes"). */
#define ROOT_GENERATION_OFFSET 24

struct rados_vol;

struct notify_req {
  struct notify_req *next;
  struct rados_vol *h;
  uint64_t notify_id, cookie;
  bool gc;                      /* NOTIFY_GC: forget known names first */
};

struct rados_meta {
  struct cas_meta m;
  struct cas_rados *conn;       /* const */
  rados_ioctx_t io;             /* const */
  char *name;                   /* const: "rados:POOL[/NAMESPACE]" */
  bool readonly;                /* const */
  unsigned timeout;             /* const: seconds */
  unsigned lease;               /* const: seconds */
  enum cas_takeover takeover;   /* const */
  char self[WHO_MAX];           /* const: "client.N on host H (pid P)" */
  char host[256];               /* const */
  struct chunkstore *cs;        /* set once by open_chunks */
  pthread_rwlock_t *gate;       /* set once: the store's gc_gate */

  pthread_mutex_t lock;
  pthread_cond_t cond;          /* wakes the threads; close waits on it */
  struct rados_vol *vols;       /* open handles */
  bool threads;                 /* started */
  bool stopping;
  pthread_t lease_thread, notify_thread;
  struct notify_req *queue, **queue_tail;
  struct rados_vol *notify_busy; /* whose flush the notify thread runs */
};

enum vol_state {
  VOL_OPENING,                  /* no write yet: nothing to flush */
  VOL_READY,                    /* flush_fn flushes */
  VOL_CLOSING,                  /* going: the final flush publishes */
};

struct rados_vol {
  struct cas_meta_vol h;
  struct rados_meta *rm;        /* const */
  struct rados_vol *next;       /* rm->vols, under rm->lock */
  char *name;                   /* const: VOLUME or VOLUME@SNAP */
  char volume[CAS_VOLUME_NAME_MAX + 1]; /* const */
  char oid[VOL_OID_LEN + 1];    /* const */
  bool writable;                /* const */
  char cookie[COOKIE_MAX];      /* const: the lease's */
  uint8_t root[CAS_ROOT_SIZE];  /* const: the root read at open (a reader
                                   serves this tree as long as it is open) */
  uint64_t generation;          /* the root last seen or published:
                                   publish is called by one thread */
  atomic_bool lost;             /* lease lost: fenced for good */
  atomic_uint_fast64_t valid_ms;  /* the lease surely holds until then
                                     (CLOCK_MONOTONIC, ms) */
  char why[256];                /* under rm->lock: why it was lost */
  double next_renew;            /* under rm->lock */
  bool renewing;                /* under rm->lock: the lease thread uses h */
  bool released;                /* under rm->lock: a lost lease given up */
  uint64_t watch;               /* under rm->lock; 0: none */
  bool watch_broken;            /* under rm->lock */
  pthread_mutex_t flush_lock;   /* held while flush_fn runs */
  enum vol_state state;         /* under flush_lock */
  cas_meta_flush_fn flush_fn;   /* under flush_lock */
  void *flush_arg;
};

#define RM(m) ((struct rados_meta *) (m))
#define RV(h) ((struct rados_vol *) (h))

static double
mono (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A RADOS error as a message: "cas: rados:P: OBJECT: WHAT: why". */
static int
fail (struct rados_meta *rm, const char *oid, const char *what, int r)
{
  int e = r < 0 ? -r : EIO;

  if (e == ESHUTDOWN)
    backend_error ("cas: %s: %s: %s: this client is blocklisted (fenced "
                   "by another server that took a volume over): restart "
                   "this server", rm->name, oid, what);
  else if (e == ETIMEDOUT)
    backend_error ("cas: %s: %s: %s: no answer from the cluster within "
                   "%u s", rm->name, oid, what, rm->timeout);
  else
    backend_error ("cas: %s: %s: %s: %s", rm->name, oid, what,
                   strerror (e));
  errno = e;
  return -1;
}

/* ---- cls_lock operations, encoded as Ceph does (src/cls/lock) ----
 * Strings are a le32 length and the bytes; each op starts with
 * ENCODE_START(1, 1): version 1, compat 1, le32 length of the rest.
 */

struct enc {
  char buf[1024];
  size_t n;
};

static void
enc_u8 (struct enc *e, uint8_t v)
{
  if (e->n < sizeof e->buf)
    e->buf[e->n++] = v;
}

static void
enc_u32 (struct enc *e, uint32_t v)
{
  if (e->n + 4 <= sizeof e->buf) {
    put_le32 ((uint8_t *) e->buf + e->n, v);
    e->n += 4;
  }
}

static void
enc_str (struct enc *e, const char *s)
{
  size_t len = strlen (s);

  enc_u32 (e, len);
  if (e->n + len <= sizeof e->buf) {
    memcpy (e->buf + e->n, s, len);
    e->n += len;
  }
}

static void
enc_start (struct enc *e)
{
  e->n = 0;
  enc_u8 (e, 1);
  enc_u8 (e, 1);
  enc_u32 (e, 0);
}

static void
enc_finish (struct enc *e)
{
  put_le32 ((uint8_t *) e->buf + 2, e->n - 6);
}

#define LOCK_EXCLUSIVE 1
#define LOCK_FLAG_MUST_RENEW 2

/* cls_lock_lock_op: name, type, cookie, tag, description, duration
 * (le32 seconds, le32 nanoseconds), flags.
 */
static void
enc_lock (struct enc *e, const char *cookie, unsigned seconds, uint8_t flags)
{
  enc_start (e);
  enc_str (e, LEASE_NAME);
  enc_u8 (e, LOCK_EXCLUSIVE);
  enc_str (e, cookie);
  enc_str (e, "");
  enc_str (e, "nbdcas writer lease");
  enc_u32 (e, seconds);
  enc_u32 (e, 0);
  enc_u8 (e, flags);
  enc_finish (e);
}

/* cls_lock_assert_op: name, type, cookie, tag. */
static void
enc_assert (struct enc *e, const char *cookie)
{
  enc_start (e);
  enc_str (e, LEASE_NAME);
  enc_u8 (e, LOCK_EXCLUSIVE);
  enc_str (e, cookie);
  enc_str (e, "");
  enc_finish (e);
}

/* Take (flags 0) or renew (MUST_RENEW) h's lease, on an object that
 * must exist (a bare lock would create a deleted volume's object anew).
 * Returns 0 or -errno.
 */
static int
lease_op (struct rados_vol *h, uint8_t flags)
{
  struct enc e;
  rados_write_op_t op = rados_create_write_op ();
  int rv = 0, r;

  enc_lock (&e, h->cookie, h->rm->lease, flags);
  rados_write_op_assert_exists (op);
  rados_write_op_exec (op, "lock", "lock", e.buf, e.n, &rv);
  r = rados_write_op_operate (op, h->rm->io, h->oid, NULL, 0);
  rados_release_write_op (op);
  return r;
}

/* ---- the lease's holder, for messages ---- */

struct holder {
  char client[128];             /* "client.4109" */
  char cookie[COOKIE_MAX];
  char addr[256];
  uint64_t gid;                 /* 4109 */
  char host[256];
  long pid;
  unsigned lease;
};

/* The current holder of oid's lease: 1 (in *hd), 0 none, -errno. */
static int
lease_holder (struct rados_meta *rm, const char *oid, struct holder *hd)
{
  char tag[256], clients[512], cookies[1024], addrs[512];
  size_t tl = sizeof tag, cl = sizeof clients, kl = sizeof cookies,
    al = sizeof addrs;
  int exclusive = 0;
  ssize_t n;
  const char *p;

  memset (hd, 0, sizeof *hd);
  n = rados_list_lockers (rm->io, oid, LEASE_NAME, &exclusive, tag, &tl,
                          clients, &cl, cookies, &kl, addrs, &al);
  if (n < 0)
    return n;
  if (n == 0)
    return 0;
  /* The first of NUL-separated lists (an exclusive lock has one). */
  snprintf (hd->client, sizeof hd->client, "%.127s", clients);
  snprintf (hd->cookie, sizeof hd->cookie, "%.319s", cookies);
  snprintf (hd->addr, sizeof hd->addr, "%.255s", addrs);
  if (strncmp (hd->client, "client.", 7) == 0)
    hd->gid = strtoull (hd->client + 7, NULL, 10);
  /* Our cookies: "nbdcas RANDOM host=H pid=P lease=L". */
  snprintf (hd->host, sizeof hd->host, "?");
  hd->pid = -1;
  if ((p = strstr (hd->cookie, " host=")) != NULL)
    sscanf (p + 6, "%255s", hd->host);
  if ((p = strstr (hd->cookie, " pid=")) != NULL)
    hd->pid = strtol (p + 5, NULL, 10);
  if ((p = strstr (hd->cookie, " lease=")) != NULL)
    hd->lease = strtoul (p + 7, NULL, 10);
  return 1;
}

static void
holder_text (const struct holder *hd, char *buf, size_t len)
{
  if (hd->pid >= 0)
    snprintf (buf, len, "%.60s on host %.100s (pid %ld, address %.100s)",
              hd->client, hd->host, hd->pid, hd->addr);
  else
    snprintf (buf, len, "%.60s (address %.100s, lock cookie '%.100s')",
              hd->client, hd->addr, hd->cookie);
}

/* ---- the directory ---- */

/* The value of key in oid's omap: 1 (in val, NUL-terminated), 0 absent,
 * -errno.
 */
static int
omap_get (struct rados_meta *rm, const char *oid, const char *key,
          char *val, size_t size, size_t *len)
{
  rados_read_op_t op = rados_create_read_op ();
  rados_omap_iter_t it = NULL;
  const char *keys[1] = { key };
  char *k, *v;
  size_t vl;
  int prval = 0, r, found = 0;

  rados_read_op_omap_get_vals_by_keys (op, keys, 1, &it, &prval);
  r = rados_read_op_operate (op, rm->io, oid, 0);
  rados_release_read_op (op);
  if (r == 0 && prval < 0)
    r = prval;
  if (r < 0) {
    if (it)
      rados_omap_get_end (it);
    return r;
  }
  while (rados_omap_get_next2 (it, &k, &v, NULL, &vl) == 0 && k) {
    if (strcmp (k, key) != 0)
      continue;
    if (vl >= size)
      vl = size - 1;
    memcpy (val, v, vl);
    val[vl] = '\0';
    if (len)
      *len = vl;
    found = 1;
  }
  rados_omap_get_end (it);
  return found;
}

/* The object of volume: 0, -1/ENOENT (quiet) if no such volume, -1
 * (reported) on an error.
 */
static int
dir_lookup (struct rados_meta *rm, const char *volume, char oid[VOL_OID_LEN + 1])
{
  char val[128];
  size_t len = 0;
  int r;

  r = omap_get (rm, DIR_OID, volume, val, sizeof val, &len);
  if (r < 0)
    return fail (rm, DIR_OID, "looking a volume up in the directory", r);
  if (r == 0) {
    errno = ENOENT;
    return -1;
  }
  if (len != VOL_OID_LEN || strncmp (val, VOL_PREFIX, 4) != 0) {
    backend_error ("cas: %s: the directory %s names '%.60s' for volume "
                   "'%s': not a volume object (damaged)", rm->name, DIR_OID,
                   val, volume);
    errno = EIO;
    return -1;
  }
  memcpy (oid, val, VOL_OID_LEN + 1);
  return 0;
}

/* fn(key) for every omap key of oid, in order (the OSD sorts them). */
static int
omap_keys (struct rados_meta *rm, const char *oid,
           int (*fn) (const char *, void *), void *opaque)
{
  char after[CAS_VOLUME_NAME_MAX + 1] = "";
  unsigned char more = 1;
  int r, ret = 0;

  while (more && ret == 0) {
    rados_read_op_t op = rados_create_read_op ();
    rados_omap_iter_t it = NULL;
    char *k;
    int prval = 0;

    more = 0;
    rados_read_op_omap_get_keys2 (op, after, LIST_PAGE, &it, &more, &prval);
    r = rados_read_op_operate (op, rm->io, oid, 0);
    rados_release_read_op (op);
    if (r == 0 && prval < 0)
      r = prval;
    if (r < 0) {
      if (it)
        rados_omap_get_end (it);
      if (r == -ENOENT)
        return 0;               /* a volume deleted meanwhile: nothing */
      return fail (rm, oid, "listing", r);
    }
    while (ret == 0 && rados_omap_get_next2 (it, &k, NULL, NULL, NULL) == 0
           && k) {
      snprintf (after, sizeof after, "%s", k);
      ret = fn (k, opaque);
    }
    rados_omap_get_end (it);
  }
  return ret;
}

/* ---- the store: exists, create, open ---- */

static struct cas_rados *
connect_pool (const char *pool, const struct cas_ceph_options *ceph)
{
  struct cas_rados_params p = {
    .pool = pool, .conf = ceph->conf, .user = ceph->user,
    .timeout = ceph->timeout ? ceph->timeout : CAS_CEPH_DEFAULT_TIMEOUT,
  };

  return cas_rados_connect (&p);
}

int
cas_meta_rados_exists (const char *pool, const struct cas_ceph_options *ceph)
{
  struct cas_rados *c = connect_pool (pool, ceph);
  uint64_t size;
  time_t mtime;
  int r;

  if (c == NULL)
    return -1;
  r = rados_stat (cas_rados_ioctx (c), SUPER_OID, &size, &mtime);
  if (r < 0 && r != -ENOENT) {
    backend_error ("cas: rados:%s: reading %s: %s", pool, SUPER_OID,
                   strerror (-r));
    cas_rados_disconnect (c);
    errno = -r;
    return -1;
  }
  cas_rados_disconnect (c);
  return r == 0;
}

int
cas_meta_rados_create (const char *pool, const struct cas_ceph_options *ceph,
                       const struct cas_super *sb)
{
  struct cas_rados *c = connect_pool (pool, ceph);
  uint8_t buf[CAS_SUPER_SIZE];
  rados_write_op_t op;
  int r;

  if (c == NULL)
    return -1;
  /* The directory first (idempotent: one left by an interrupted create
   * is kept), the superblock last and exclusively: two creators race,
   * one wins, the other is told the store exists.
   */
  op = rados_create_write_op ();
  rados_write_op_create (op, LIBRADOS_CREATE_IDEMPOTENT, NULL);
  r = rados_write_op_operate (op, cas_rados_ioctx (c), DIR_OID, NULL, 0);
  rados_release_write_op (op);
  if (r < 0) {
    backend_error ("cas: rados:%s: creating %s: %s", pool, DIR_OID,
                   strerror (-r));
    goto out;
  }
  cas_super_encode (sb, buf);
  op = rados_create_write_op ();
  rados_write_op_create (op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
  rados_write_op_write_full (op, (const char *) buf, sizeof buf);
  r = rados_write_op_operate (op, cas_rados_ioctx (c), SUPER_OID, NULL, 0);
  rados_release_write_op (op);
  if (r == -EEXIST)
    backend_error ("cas: rados:%s already holds a cas store", pool);
  else if (r < 0)
    backend_error ("cas: rados:%s: creating %s: %s", pool, SUPER_OID,
                   strerror (-r));
 out:
  cas_rados_disconnect (c);
  if (r < 0) {
    errno = -r;
    return -1;
  }
  return 0;
}

static void rados_close (struct cas_meta *m);
static const struct cas_meta_ops rados_ops;

struct cas_meta *
cas_meta_rados_open (const char *pool, const struct cas_ceph_options *ceph,
                     bool readonly, struct cas_super *sb)
{
  struct rados_meta *rm;
  uint8_t buf[CAS_SUPER_SIZE];
  int r;

  if (ceph->lease && ceph->lease < CAS_CEPH_MIN_LEASE) {
    backend_error ("cas: lease=%u: must be at least %u seconds", ceph->lease,
                   CAS_CEPH_MIN_LEASE);
    errno = EINVAL;
    return NULL;
  }
  rm = calloc (1, sizeof *rm);
  if (rm == NULL)
    return NULL;
  rm->m.ops = &rados_ops;
  pthread_mutex_init (&rm->lock, NULL);
  pthread_cond_init (&rm->cond, NULL);
  rm->queue_tail = &rm->queue;
  rm->readonly = readonly;
  rm->timeout = ceph->timeout ? ceph->timeout : CAS_CEPH_DEFAULT_TIMEOUT;
  rm->lease = ceph->lease ? ceph->lease : CAS_CEPH_DEFAULT_LEASE;
  rm->takeover = ceph->takeover;
  if (asprintf (&rm->name, "%s%s", CAS_RADOS_STORE_PREFIX, pool) == -1) {
    rm->name = NULL;
    goto err;
  }
  rm->conn = connect_pool (pool, ceph);
  if (rm->conn == NULL)
    goto err;
  rm->io = cas_rados_ioctx (rm->conn);
  if (gethostname (rm->host, sizeof rm->host - 1) == -1)
    snprintf (rm->host, sizeof rm->host, "?");
  snprintf (rm->self, sizeof rm->self, "client.%" PRIu64 " on host %s "
            "(pid %ld)", rados_get_instance_id (cas_rados_cluster (rm->conn)),
            rm->host, (long) getpid ());
  r = rados_read (rm->io, SUPER_OID, (char *) buf, sizeof buf, 0);
  if (r == -ENOENT) {
    backend_error ("cas: %s is not a cas store (no superblock object %s)",
                   rm->name, SUPER_OID);
    errno = ENOENT;
    goto err;
  }
  if (r < 0) {
    fail (rm, SUPER_OID, "reading the superblock", r);
    goto err;
  }
  if (r != CAS_SUPER_SIZE) {
    backend_error ("cas: %s: superblock %s is truncated: %d of %d bytes "
                   "(damaged)", rm->name, SUPER_OID, r, CAS_SUPER_SIZE);
    errno = EIO;
    goto err;
  }
  if (cas_super_decode (buf, sb) == -1)
    goto err;
  return &rm->m;

 err:
  {
    int saved = errno ? errno : EIO;
    rados_close (&rm->m);
    errno = saved;
    return NULL;
  }
}

static void *lease_thread (void *arg);
static void *notify_thread (void *arg);

/* Under rm->lock. */
static int
start_threads (struct rados_meta *rm)
{
  int r;

  if (rm->threads)
    return 0;
  r = pthread_create (&rm->lease_thread, NULL, lease_thread, rm);
  if (r == 0) {
    r = pthread_create (&rm->notify_thread, NULL, notify_thread, rm);
    if (r != 0) {
      rm->stopping = true;
      pthread_cond_broadcast (&rm->cond);
      pthread_mutex_unlock (&rm->lock);
      pthread_join (rm->lease_thread, NULL);
      pthread_mutex_lock (&rm->lock);
      rm->stopping = false;
    }
  }
  if (r != 0) {
    backend_error ("cas: %s: cannot start a thread: %s", rm->name,
                   strerror (r));
    errno = r;
    return -1;
  }
  rm->threads = true;
  return 0;
}

static void
rados_close (struct cas_meta *m)
{
  struct rados_meta *rm = RM (m);

  if (rm == NULL)
    return;
  pthread_mutex_lock (&rm->lock);
  if (rm->vols)
    backend_debug ("cas: %s: closing with volumes still open", rm->name);
  rm->stopping = true;
  pthread_cond_broadcast (&rm->cond);
  pthread_mutex_unlock (&rm->lock);
  if (rm->threads) {
    pthread_join (rm->lease_thread, NULL);
    pthread_join (rm->notify_thread, NULL);
  }
  cas_rados_disconnect (rm->conn);
  pthread_cond_destroy (&rm->cond);
  pthread_mutex_destroy (&rm->lock);
  free (rm->name);
  free (rm);
}

static struct chunkstore *
rados_open_chunks (struct cas_meta *m, bool readonly, const uint8_t uuid[16],
                   unsigned flags)
{
  struct cas_radosstore_params p = { .readonly = readonly };

  RM (m)->cs = cas_radosstore_open (RM (m)->conn, &p);
  return RM (m)->cs;
}

/* One write_full: the OSD applies it all or nothing.  (A RADOS store has
 * no piece tables: its chunk store reads whole chunks; the version is
 * the format's number only.)
 */
static int
rados_super_write (struct cas_meta *m, const struct cas_super *sb)
{
  struct rados_meta *rm = RM (m);
  uint8_t buf[CAS_SUPER_SIZE];
  int r;

  if (rm->readonly) {
    backend_error ("cas: %s is open read-only", rm->name);
    errno = EROFS;
    return -1;
  }
  cas_super_encode (sb, buf);
  r = rados_write_full (rm->io, SUPER_OID, (const char *) buf, sizeof buf);
  if (r < 0)
    return fail (rm, SUPER_OID, "writing the superblock", r);
  return 0;
}

void
cas_meta_rados_set_gate (struct cas_meta *m, pthread_rwlock_t *gate)
{
  RM (m)->gate = gate;
}

/* Empty the known-names cache of this process's chunk store, with no put
 * between storing a chunk and setting a map to it (FORMAT.md, "Garbage
 * collection on RADOS": a reference made before is in the map, which the
 * flush that follows publishes; one made after trusts only what was
 * written or touched after).
 */
static void
forget_known (struct rados_meta *rm)
{
  if (rm->cs == NULL || rm->readonly)
    return;
  if (rm->gate)
    pthread_rwlock_wrlock (rm->gate);
  cas_radosstore_forget_known (rm->cs);
  if (rm->gate)
    pthread_rwlock_unlock (rm->gate);
}

/* ---- names and roots ---- */

static int
rados_exists (struct cas_meta *m, const struct cas_name *n)
{
  struct rados_meta *rm = RM (m);
  char oid[VOL_OID_LEN + 1], val[CAS_ROOT_SIZE + 1];
  int r;

  if (dir_lookup (rm, n->volume, oid) == -1)
    return errno == ENOENT ? 0 : -1;
  if (!n->is_snapshot)
    return 1;
  r = omap_get (rm, oid, n->snap, val, sizeof val, NULL);
  if (r == -ENOENT)
    return 0;
  if (r < 0)
    return fail (rm, oid, "looking a snapshot up", r);
  return r;
}

static bool
rados_legacy_volume (struct cas_meta *m, const char *name)
{
  return false;                 /* '@' was never allowed in RADOS stores */
}

static int
rados_list_volumes (struct cas_meta *m, int (*fn) (const char *, void *),
                    void *opaque)
{
  return omap_keys (RM (m), DIR_OID, fn, opaque);
}

static int
rados_list_snapshots (struct cas_meta *m, const char *volume,
                      int (*fn) (const char *, void *), void *opaque)
{
  char oid[VOL_OID_LEN + 1];

  if (dir_lookup (RM (m), volume, oid) == -1)
    return errno == ENOENT ? 0 : -1;
  return omap_keys (RM (m), oid, fn, opaque);
}

/* The root of n, from its object oid. */
static int
load_root (struct rados_meta *rm, const char *oid, const struct cas_name *n,
           uint8_t buf[CAS_ROOT_SIZE], char where[CAS_META_WHERE_MAX])
{
  char val[CAS_ROOT_SIZE + 1];
  size_t len = 0;
  int r;

  if (n->is_snapshot) {
    snprintf (where, CAS_META_WHERE_MAX, "%s object %s (volume '%s') omap "
              "key '%s'", rm->name, oid, n->volume, n->snap);
    r = omap_get (rm, oid, n->snap, val, sizeof val, &len);
    if (r < 0)
      return fail (rm, oid, "reading a snapshot root", r);
    if (r == 0) {
      errno = ENOENT;
      return -1;
    }
    memcpy (buf, val, len < CAS_ROOT_SIZE ? len : CAS_ROOT_SIZE);
  }
  else {
    snprintf (where, CAS_META_WHERE_MAX, "%s object %s (volume '%s')",
              rm->name, oid, n->volume);
    r = rados_read (rm->io, oid, (char *) buf, CAS_ROOT_SIZE, 0);
    if (r == -ENOENT) {
      errno = ENOENT;           /* deleted since the lookup */
      return -1;
    }
    if (r < 0)
      return fail (rm, oid, "reading a volume root", r);
    len = r;
  }
  if (len != CAS_ROOT_SIZE) {
    backend_error ("cas: %s root %s is truncated: %zu of %d bytes (damaged)",
                   n->is_snapshot ? "snapshot" : "volume", where, len,
                   CAS_ROOT_SIZE);
    errno = EIO;
    return -1;
  }
  return 0;
}

static int
rados_root_load (struct cas_meta *m, const struct cas_name *n,
                 uint8_t buf[CAS_ROOT_SIZE], char where[CAS_META_WHERE_MAX])
{
  char oid[VOL_OID_LEN + 1];

  if (dir_lookup (RM (m), n->volume, oid) == -1)
    return -1;
  return load_root (RM (m), oid, n, buf, where);
}

static int
random_hex (char *out, size_t bytes)
{
  uint8_t r[32];
  size_t i;

  if (bytes > sizeof r || getrandom (r, bytes, 0) != (ssize_t) bytes) {
    backend_error ("cas: getrandom: %m");
    return -1;
  }
  for (i = 0; i < bytes; i++)
    sprintf (out + 2 * i, "%02x", r[i]);
  return 0;
}

static int
writable (struct rados_meta *rm)
{
  if (rm->readonly) {
    backend_error ("cas: %s is open read-only", rm->name);
    errno = EROFS;
    return -1;
  }
  return 0;
}

/* The directory's epoch (EPOCH_XATTR) as stored: "" until a collection
 * first sets it.  0, or -1 after a message.
 */
static int
read_epoch (struct rados_meta *rm, char val[32], size_t *len)
{
  int r = rados_getxattr (rm->io, DIR_OID, EPOCH_XATTR, val, 31);

  if (r == -ENODATA)
    r = 0;
  if (r < 0)
    return fail (rm, DIR_OID, "reading the collection epoch", r);
  val[r] = '\0';
  *len = r;
  return 0;
}

/* Whether the encoded root buf has the tree r has (the same map, size
 * and shape; generation, flags and times may differ).
 */
static bool
same_tree (const uint8_t buf[CAS_ROOT_SIZE], const struct cas_root *r)
{
  struct cas_root s;

  return cas_root_decode (buf, &s) == 0 &&
    cas_hash_equal (&s.root, &r->root) && s.size == r->size &&
    s.depth == r->depth && s.blocksize == r->blocksize &&
    s.fanout == r->fanout && s.version == r->version;
}

/* For a clone: the object of source ("VOLUME" or "VOLUME@SNAP") in
 * soid, and whether its root is still r's tree (0), or not (-1/EAGAIN),
 * or it is gone (-1/ENOENT); -1 after a message on an error.
 */
static int
source_check (struct rados_meta *rm, const char *source,
              const struct cas_root *r, char soid[VOL_OID_LEN + 1],
              char svolume[CAS_VOLUME_NAME_MAX + 1])
{
  struct cas_name n;
  const char *at = strchr (source, '@');
  uint8_t buf[CAS_ROOT_SIZE];
  char where[CAS_META_WHERE_MAX];

  memset (&n, 0, sizeof n);
  snprintf (n.volume, sizeof n.volume, "%.*s",
            (int) (at ? (size_t) (at - source) : strlen (source)), source);
  if (at) {
    snprintf (n.snap, sizeof n.snap, "%s", at + 1);
    n.is_snapshot = true;
  }
  memcpy (svolume, n.volume, sizeof n.volume);
  if (dir_lookup (rm, n.volume, soid) == -1 ||
      load_root (rm, soid, &n, buf, where) == -1)
    return -1;
  if (!same_tree (buf, r)) {
    errno = EAGAIN;
    return -1;
  }
  return 0;
}

static int
rados_volume_create (struct cas_meta *m, const char *volume,
                     const struct cas_root *r, const char *source)
{
  struct rados_meta *rm = RM (m);
  char oid[VOL_OID_LEN + 1], soid[VOL_OID_LEN + 1], gen[32], epoch[32];
  char svolume[CAS_VOLUME_NAME_MAX + 1], other[VOL_OID_LEN + 1];
  uint8_t buf[CAS_ROOT_SIZE];
  const char *keys[1] = { volume }, *vals[1] = { oid };
  size_t lens[1] = { VOL_OID_LEN }, epoch_len = 0;
  rados_write_op_t op;
  int rv = 0, rv2 = 0, ret, tries;

  if (writable (rm) == -1)
    return -1;
  cas_root_encode (r, buf);
  snprintf (gen, sizeof gen, "%" PRIu64, r->generation);
  for (tries = 0; ; tries++) {
    /* 0. The collection epoch, then (a clone) the source's root read
     * again after it: if the epoch is unchanged when the name is set, no
     * collection began marking in between, so whatever it marks next
     * covers this root (FORMAT.md, "Garbage collection on RADOS").
     */
    if (read_epoch (rm, epoch, &epoch_len) == -1)
      return -1;
    if (source && source_check (rm, source, r, soid, svolume) == -1)
      return -1;
    memcpy (oid, VOL_PREFIX, 4);
    if (random_hex (oid + 4, 16) == -1)
      return -1;
    /* 1. The object, complete, under a name nobody else can pick. */
    op = rados_create_write_op ();
    rados_write_op_create (op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
    rados_write_op_setxattr (op, GEN_XATTR, gen, strlen (gen));
    rados_write_op_write_full (op, (const char *) buf, sizeof buf);
    ret = rados_write_op_operate (op, rm->io, oid, NULL, 0);
    rados_release_write_op (op);
    if (ret < 0)
      return fail (rm, oid, "creating a volume object", ret);
    cas_test_point ("rados-create-object");
    /* 2. Its name, only if nobody has it (an absent key compares equal
     * to ""), the epoch is the one read, and a clone's source still
     * names the object its root was read from: from here on the volume
     * exists for everyone.
     */
    op = rados_create_write_op ();
    rados_write_op_cmpxattr (op, EPOCH_XATTR, LIBRADOS_CMPXATTR_OP_EQ, epoch,
                             epoch_len);
    rados_write_op_omap_cmp (op, volume, LIBRADOS_CMPXATTR_OP_EQ, "", 0, &rv);
    if (source)
      rados_write_op_omap_cmp (op, svolume, LIBRADOS_CMPXATTR_OP_EQ, soid,
                               VOL_OID_LEN, &rv2);
    rados_write_op_omap_set (op, keys, vals, lens, 1);
    ret = rados_write_op_operate (op, rm->io, DIR_OID, NULL, 0);
    rados_release_write_op (op);
    if (ret == 0)
      return 0;
    rados_remove (rm->io, oid); /* unnamed: nobody else can know it */
    if (ret != -ECANCELED)
      return fail (rm, DIR_OID, "adding a volume to the directory", ret);
    /* Which comparison failed: the name taken, the source gone, or the
     * epoch moved on (a collection is marking: read the source again).
     */
    if (dir_lookup (rm, volume, other) == 0) {
      errno = EEXIST;
      return -1;
    }
    if (errno != ENOENT)
      return -1;
    if (source && (dir_lookup (rm, svolume, other) == -1 ||
                   strcmp (other, soid) != 0)) {
      errno = ENOENT;
      return -1;
    }
    if (tries + 1 == CONSISTENT_TRIES) {
      backend_error ("cas: %s: creating volume '%s': the directory kept "
                     "changing (%d tries)", rm->name, volume, tries + 1);
      errno = EAGAIN;
      return -1;
    }
  }
}

static int
rados_snapshot_create (struct cas_meta *m, const char *volume,
                       const char *snap, const struct cas_root *r)
{
  struct rados_meta *rm = RM (m);
  char oid[VOL_OID_LEN + 1], gen[32];
  uint8_t buf[CAS_ROOT_SIZE];
  const char *keys[1] = { snap }, *vals[1] = { (const char *) buf };
  size_t lens[1] = { CAS_ROOT_SIZE };
  rados_write_op_t op;
  int rv = 0, ret;

  if (writable (rm) == -1)
    return -1;
  if (dir_lookup (rm, volume, oid) == -1) {
    if (errno == ENOENT)
      backend_error ("cas: no volume named '%s' in store %s", volume,
                     rm->name);
    return -1;
  }
  cas_root_encode (r, buf);
  snprintf (gen, sizeof gen, "%" PRIu64, r->generation);
  cas_test_point ("rados-snapshot");
  /* Only if r is the volume's root still (its generation): a snapshot is
   * always a root the volume had when the snapshot was set, which is what
   * a collector marking meanwhile relies on (FORMAT.md, "Garbage
   * collection on RADOS").
   */
  op = rados_create_write_op ();
  rados_write_op_assert_exists (op);
  rados_write_op_cmpxattr (op, GEN_XATTR, LIBRADOS_CMPXATTR_OP_EQ, gen,
                           strlen (gen));
  rados_write_op_omap_cmp (op, snap, LIBRADOS_CMPXATTR_OP_EQ, "", 0, &rv);
  rados_write_op_omap_set (op, keys, vals, lens, 1);
  ret = rados_write_op_operate (op, rm->io, oid, NULL, 0);
  rados_release_write_op (op);
  if (ret == -ECANCELED) {
    char val[CAS_ROOT_SIZE + 1];
    /* The name taken, or a newer root published: read it again. */
    ret = omap_get (rm, oid, snap, val, sizeof val, NULL);
    errno = ret == 1 ? EEXIST : EAGAIN;
    return -1;
  }
  if (ret == -ENOENT) {
    backend_error ("cas: volume '%s' was deleted meanwhile", volume);
    errno = ENOENT;
    return -1;
  }
  if (ret < 0)
    return fail (rm, oid, "adding a snapshot", ret);
  return 0;
}

/* The object of volume and the root of its snapshot snap (in val, *len
 * bytes): 0, -1/ENOENT (quiet) if either is absent, -1 (reported).
 */
static int
snapshot_lookup (struct rados_meta *rm, const char *volume, const char *snap,
                 char oid[VOL_OID_LEN + 1], char val[CAS_ROOT_SIZE + 1],
                 size_t *len)
{
  int r;

  if (dir_lookup (rm, volume, oid) == -1)
    return -1;
  r = omap_get (rm, oid, snap, val, CAS_ROOT_SIZE + 1, len);
  if (r < 0 && r != -ENOENT)    /* -ENOENT: the volume deleted meanwhile */
    return fail (rm, oid, "looking a snapshot up", r);
  if (r <= 0) {
    errno = ENOENT;
    return -1;
  }
  return 0;
}

static int
rados_snapshot_delete (struct cas_meta *m, const char *volume,
                       const char *snap)
{
  struct rados_meta *rm = RM (m);
  char oid[VOL_OID_LEN + 1], val[CAS_ROOT_SIZE + 1];
  const char *keys[1] = { snap };
  size_t len = 0;
  rados_write_op_t op;
  int rv = 0, ret;

  if (writable (rm) == -1 ||
      snapshot_lookup (rm, volume, snap, oid, val, &len) == -1)
    return -1;
  /* Removed only if it is still the root just read. */
  op = rados_create_write_op ();
  rados_write_op_omap_cmp (op, snap, LIBRADOS_CMPXATTR_OP_EQ, val, len, &rv);
  rados_write_op_omap_rm_keys (op, keys, 1);
  ret = rados_write_op_operate (op, rm->io, oid, NULL, 0);
  rados_release_write_op (op);
  if (ret == -ECANCELED || ret == -ENOENT) {
    errno = ENOENT;
    return -1;
  }
  if (ret < 0)
    return fail (rm, oid, "removing a snapshot", ret);
  return 0;
}

static int
rados_snapshot_rename (struct cas_meta *m, const char *volume,
                       const char *old, const char *new)
{
  struct rados_meta *rm = RM (m);
  char oid[VOL_OID_LEN + 1], val[CAS_ROOT_SIZE + 1];
  const char *rm_keys[1] = { old }, *keys[1] = { new }, *vals[1] = { val };
  size_t len = 0, lens[1];
  rados_write_op_t op;
  int rv1 = 0, rv2 = 0, ret;

  if (writable (rm) == -1 ||
      snapshot_lookup (rm, volume, old, oid, val, &len) == -1)
    return -1;
  lens[0] = len;
  op = rados_create_write_op ();
  rados_write_op_omap_cmp (op, new, LIBRADOS_CMPXATTR_OP_EQ, "", 0, &rv1);
  rados_write_op_omap_cmp (op, old, LIBRADOS_CMPXATTR_OP_EQ, val, len, &rv2);
  rados_write_op_omap_set (op, keys, vals, lens, 1);
  rados_write_op_omap_rm_keys (op, rm_keys, 1);
  ret = rados_write_op_operate (op, rm->io, oid, NULL, 0);
  rados_release_write_op (op);
  if (ret == -ECANCELED) {
    /* Which comparison failed: the new name taken, or the old gone. */
    ret = omap_get (rm, oid, new, val, sizeof val, NULL);
    errno = ret == 1 ? EEXIST : ENOENT;
    return -1;
  }
  if (ret == -ENOENT) {
    errno = ENOENT;
    return -1;
  }
  if (ret < 0)
    return fail (rm, oid, "renaming a snapshot", ret);
  return 0;
}

static int
rados_volume_delete (struct cas_meta *m, const char *volume)
{
  struct rados_meta *rm = RM (m);
  char oid[VOL_OID_LEN + 1];
  const char *keys[1] = { volume };
  rados_write_op_t op;
  int rv = 0, ret;

  if (writable (rm) == -1 || dir_lookup (rm, volume, oid) == -1)
    return -1;
  /* 1. The name, only if it still names this object: the volume and its
   * snapshots are gone for everyone at once.
   */
  op = rados_create_write_op ();
  rados_write_op_omap_cmp (op, volume, LIBRADOS_CMPXATTR_OP_EQ, oid,
                           VOL_OID_LEN, &rv);
  rados_write_op_omap_rm_keys (op, keys, 1);
  ret = rados_write_op_operate (op, rm->io, DIR_OID, NULL, 0);
  rados_release_write_op (op);
  if (ret == -ECANCELED) {
    errno = ENOENT;
    return -1;
  }
  if (ret < 0)
    return fail (rm, DIR_OID, "removing a volume from the directory", ret);
  /* 2. The object with its snapshot roots.  Failing here leaves an
   * orphan that nothing names (FORMAT.md: how it is cleaned); the
   * delete itself is done.
   */
  cas_test_point ("rados-delete-object");
  ret = rados_remove (rm->io, oid);
  if (ret < 0 && ret != -ENOENT)
    backend_error ("cas: %s: volume '%s' is deleted, but removing its "
                   "object %s failed (%s): it is an orphan now, removed "
                   "by garbage collection", rm->name, volume, oid,
                   strerror (-ret));
  return 0;
}

static int
rados_volume_rename (struct cas_meta *m, const char *old, const char *new)
{
  struct rados_meta *rm = RM (m);
  char oid[VOL_OID_LEN + 1];
  const char *rm_keys[1] = { old }, *keys[1] = { new }, *vals[1] = { oid };
  size_t lens[1] = { VOL_OID_LEN };
  rados_write_op_t op;
  int rv1 = 0, rv2 = 0, ret;

  if (writable (rm) == -1 || dir_lookup (rm, old, oid) == -1)
    return -1;
  /* One op on the directory: the object (and its snapshots) keeps its
   * name, only the directory entry moves.
   */
  op = rados_create_write_op ();
  rados_write_op_omap_cmp (op, new, LIBRADOS_CMPXATTR_OP_EQ, "", 0, &rv1);
  rados_write_op_omap_cmp (op, old, LIBRADOS_CMPXATTR_OP_EQ, oid,
                           VOL_OID_LEN, &rv2);
  rados_write_op_omap_set (op, keys, vals, lens, 1);
  rados_write_op_omap_rm_keys (op, rm_keys, 1);
  ret = rados_write_op_operate (op, rm->io, DIR_OID, NULL, 0);
  rados_release_write_op (op);
  if (ret == -ECANCELED) {
    char other[VOL_OID_LEN + 1];
    if (dir_lookup (rm, new, other) == 0) {
      backend_error ("cas: '%s' already exists", new);
      errno = EEXIST;
    }
    else
      errno = ENOENT;
    return -1;
  }
  if (ret < 0)
    return fail (rm, DIR_OID, "renaming a volume", ret);
  return 0;
}

/* ---- open volumes ---- */

/* Mark h lost (fenced for good), once, with why. */
static void
lose (struct rados_vol *h, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
static void
lose (struct rados_vol *h, const char *fmt, ...)
{
  struct rados_meta *rm = h->rm;
  va_list ap;
  bool first;

  pthread_mutex_lock (&rm->lock);
  first = !atomic_exchange (&h->lost, true);
  if (first) {
    va_start (ap, fmt);
    vsnprintf (h->why, sizeof h->why, fmt, ap);
    va_end (ap);
  }
  pthread_mutex_unlock (&rm->lock);
  if (first)
    backend_error ("cas: %s: volume '%s': %s: every request on it fails "
                   "from now on (its clients must reconnect, to the server "
                   "that holds it now)", rm->name, h->volume, h->why);
}

static void
ack (struct rados_vol *h, uint64_t notify_id, uint64_t cookie,
     const char *payload)
{
  rados_notify_ack (h->rm->io, h->oid, notify_id, cookie, payload,
                    strlen (payload));
}

/* librados's thread: never block here.  A flush is queued for the
 * notify thread; everything else is answered at once.
 */
static void
watch_cb (void *arg, uint64_t notify_id, uint64_t cookie,
          uint64_t notifier_id, void *data, size_t len)
{
  struct rados_vol *h = arg;
  struct rados_meta *rm = h->rm;
  char who[WHO_MAX + 2 * CAS_VOLUME_NAME_MAX + 8];

  bool gc = len == strlen (NOTIFY_GC) && memcmp (data, NOTIFY_GC, len) == 0;

  if (gc ||
      (len == strlen (NOTIFY_FLUSH) && memcmp (data, NOTIFY_FLUSH, len) == 0)) {
    struct notify_req *q;
    if (!h->writable) {
      ack (h, notify_id, cookie, "ro");
      return;
    }
    q = calloc (1, sizeof *q);
    if (q == NULL) {
      ack (h, notify_id, cookie, "failed: out of memory");
      return;
    }
    q->h = h;
    q->notify_id = notify_id;
    q->cookie = cookie;
    q->gc = gc;
    pthread_mutex_lock (&rm->lock);
    *rm->queue_tail = q;
    rm->queue_tail = &q->next;
    pthread_cond_broadcast (&rm->cond);
    pthread_mutex_unlock (&rm->lock);
    return;
  }
  /* A collector: a reader keeps the tree it opened (no later root may
   * reference all of it); its writer's tree is the barrier's business.
   */
  if (len == strlen (NOTIFY_ROOTS) && memcmp (data, NOTIFY_ROOTS, len) == 0) {
    char answer[5 + 2 * CAS_ROOT_SIZE + 1];
    size_t i;
    if (h->writable) {
      ack (h, notify_id, cookie, "writer");
      return;
    }
    memcpy (answer, "root ", 5);
    for (i = 0; i < CAS_ROOT_SIZE; i++)
      sprintf (answer + 5 + 2 * i, "%02x", h->root[i]);
    ack (h, notify_id, cookie, answer);
    return;
  }
  if (len == strlen (NOTIFY_WHO) && memcmp (data, NOTIFY_WHO, len) == 0) {
    snprintf (who, sizeof who, "%s\n%s, %s", h->name, rm->self,
              h->writable ? "its writer" : "reading it");
    ack (h, notify_id, cookie, who);
    return;
  }
  ack (h, notify_id, cookie, "unknown request");
}

static void
watch_err (void *arg, uint64_t cookie, int err)
{
  struct rados_vol *h = arg;

  pthread_mutex_lock (&h->rm->lock);
  if (h->watch == cookie)
    h->watch_broken = true;     /* the lease thread watches again */
  pthread_mutex_unlock (&h->rm->lock);
}

static int
watch (struct rados_vol *h)
{
  uint64_t w = 0;
  int r;

  r = rados_watch2 (h->rm->io, h->oid, &w, watch_cb, watch_err, h);
  if (r < 0)
    return r;
  pthread_mutex_lock (&h->rm->lock);
  h->watch = w;
  h->watch_broken = false;
  pthread_mutex_unlock (&h->rm->lock);
  return 0;
}

/* Take the lease of a new handle: 0, or -1 after a message. */
static int
take_lease (struct rados_vol *h)
{
  struct rados_meta *rm = h->rm;
  struct holder hd;
  char text[512];
  double t0 = mono (), sent;
  int r;

  for (;;) {
    sent = mono ();
    r = lease_op (h, 0);
    if (r == 0)
      break;
    if (r == -ENOENT) {
      errno = ENOENT;           /* deleted since the lookup */
      return -1;
    }
    if (r != -EBUSY)
      return fail (rm, h->oid, "taking the writer lease", r);
    r = lease_holder (rm, h->oid, &hd);
    if (r < 0)
      return fail (rm, h->oid, "reading the writer lease", r);
    if (r == 0)
      continue;                 /* released meanwhile: try again */
    holder_text (&hd, text, sizeof text);
    if (rm->takeover == CAS_TAKEOVER_FORCE) {
      /* Fence first: once blocklisted, nothing the old writer sent can
       * reach an OSD; then nothing it still has in flight can land
       * after our lease starts (its publishes assert its lease anyway).
       */
      r = rados_blocklist_add (cas_rados_cluster (rm->conn), hd.addr,
                               BLOCKLIST_SECONDS);
      if (r < 0)
        return fail (rm, h->oid, "blocklisting the lease's holder", r);
      r = rados_break_lock (rm->io, h->oid, LEASE_NAME, hd.client,
                            hd.cookie);
      if (r < 0 && r != -ENOENT)
        return fail (rm, h->oid, "breaking the writer lease", r);
      backend_error ("cas: %s: volume '%s': took it over by force from %s, "
                     "which is blocklisted for %d s (takeover=force)",
                     rm->name, h->volume, text, BLOCKLIST_SECONDS);
      continue;
    }
    /* A dead writer's lease lapses by itself; wait=one lease at most. */
    if (rm->takeover == CAS_TAKEOVER_WAIT &&
        mono () - t0 < (hd.lease ? hd.lease : rm->lease) + 2.0) {
      usleep (200000);
      continue;
    }
    backend_error ("cas: %s: volume '%s' is held by another writer: %s; "
                   "its lease lasts up to %u s after its last renewal.  "
                   "Read it read-only, or wait for that server to stop "
                   "(takeover=wait waits a lease for a dead one), or fence "
                   "it and take the volume over (takeover=force)",
                   rm->name, h->volume, text, hd.lease ? hd.lease : rm->lease);
    errno = EBUSY;
    return -1;
  }
  /* A collector that marked while this process held no lease of this
   * volume did not ask it to forget what it knew: it forgets now, before
   * it writes anything here.
   */
  forget_known (rm);
  /* The OSD's expiry is at least sent + lease; a margin for clock rates. */
  atomic_store (&h->valid_ms, (uint64_t) ((sent + rm->lease - 1.0) * 1000));
  pthread_mutex_lock (&rm->lock);
  h->next_renew = sent + rm->lease / 3.0;
  pthread_mutex_unlock (&rm->lock);
  return 0;
}

static void free_vol (struct rados_vol *h);

static struct cas_meta_vol *
rados_volume_open (struct cas_meta *m, const struct cas_name *n,
                   bool writable_, uint8_t buf[CAS_ROOT_SIZE],
                   char where[CAS_META_WHERE_MAX])
{
  struct rados_meta *rm = RM (m);
  struct rados_vol *h;
  char rnd[33];
  int r;

  if (writable_ && writable (rm) == -1)
    return NULL;
  h = calloc (1, sizeof *h);
  if (h == NULL)
    return NULL;
  h->h.m = m;
  h->rm = rm;
  h->writable = writable_;
  pthread_mutex_init (&h->flush_lock, NULL);
  snprintf (h->volume, sizeof h->volume, "%s", n->volume);
  if (n->is_snapshot
      ? asprintf (&h->name, "%s@%s", n->volume, n->snap) == -1
      : (h->name = strdup (n->volume)) == NULL) {
    h->name = NULL;
    goto err;
  }
  if (dir_lookup (rm, n->volume, h->oid) == -1)
    goto err;
  pthread_mutex_lock (&rm->lock);
  r = start_threads (rm);
  pthread_mutex_unlock (&rm->lock);
  if (r == -1)
    goto err;
  /* A writer takes the lease before it reads the root: then the root it
   * reads is the last one anybody published.
   */
  if (writable_) {
    if (random_hex (rnd, 16) == -1)
      goto err;
    snprintf (h->cookie, sizeof h->cookie, "nbdcas %s host=%.200s pid=%ld "
              "lease=%u", rnd, rm->host, (long) getpid (), rm->lease);
    if (take_lease (h) == -1)
      goto err;
  }
  if (load_root (rm, h->oid, n, buf, where) == -1)
    goto err;
  memcpy (h->root, buf, CAS_ROOT_SIZE);
  h->generation = get_le64 (buf + ROOT_GENERATION_OFFSET);
  /* From here the lease thread renews the lease and keeps the watch. */
  pthread_mutex_lock (&rm->lock);
  h->next = rm->vols;
  rm->vols = h;
  pthread_mutex_unlock (&rm->lock);
  r = watch (h);
  if (r < 0) {
    fail (rm, h->oid, "watching the volume", r);
    goto err;
  }
  return &h->h;

 err:
  {
    int saved = errno ? errno : EIO;
    free_vol (h);
    errno = saved;
    return NULL;
  }
}

static void
rados_volume_set_flush (struct cas_meta_vol *hv, cas_meta_flush_fn fn,
                        void *arg)
{
  struct rados_vol *h = RV (hv);

  /* Waits for a remote flush running now: after this, fn is not used. */
  pthread_mutex_lock (&h->flush_lock);
  h->flush_fn = fn;
  h->flush_arg = arg;
  h->state = fn ? VOL_READY : VOL_CLOSING;
  pthread_mutex_unlock (&h->flush_lock);
}

static int
lost_error (struct rados_vol *h)
{
  char why[256];

  pthread_mutex_lock (&h->rm->lock);
  snprintf (why, sizeof why, "%s", h->why);
  pthread_mutex_unlock (&h->rm->lock);
  backend_error ("cas: %s: volume '%s': %s", h->rm->name, h->volume, why);
  errno = EIO;
  return -1;
}

static int
rados_volume_check (struct cas_meta_vol *hv)
{
  struct rados_vol *h = RV (hv);

  if (!h->writable)
    return 0;
  if (!atomic_load (&h->lost) &&
      (uint64_t) (mono () * 1000) > atomic_load (&h->valid_ms))
    lose (h, "its writer lease was not renewed in time (this process "
          "stalled, or the cluster did not answer, for longer than the "
          "lease): another server may have taken the volume over");
  if (atomic_load (&h->lost))
    return lost_error (h);
  return 0;
}

static int
publish_op (struct rados_vol *h, uint64_t expect, const uint8_t *buf,
            uint64_t next)
{
  struct enc e;
  char old[32], new[32];
  rados_write_op_t op = rados_create_write_op ();
  int rv = 0, r;

  enc_assert (&e, h->cookie);
  snprintf (old, sizeof old, "%" PRIu64, expect);
  snprintf (new, sizeof new, "%" PRIu64, next);
  /* One op, all or nothing: our lease, the root we saw, the new root. */
  rados_write_op_exec (op, "lock", "assert_locked", e.buf, e.n, &rv);
  rados_write_op_cmpxattr (op, GEN_XATTR, LIBRADOS_CMPXATTR_OP_EQ, old,
                           strlen (old));
  rados_write_op_setxattr (op, GEN_XATTR, new, strlen (new));
  rados_write_op_write_full (op, (const char *) buf, CAS_ROOT_SIZE);
  r = rados_write_op_operate (op, h->rm->io, h->oid, NULL, 0);
  rados_release_write_op (op);
  return r;
}

/* After -ECANCELED: the generation there, if our lease still holds (then
 * every root published since we took it is ours: a publish of ours that
 * timed out and landed anyway).  0 with *gen, or -errno.
 */
static int
own_generation (struct rados_vol *h, uint64_t *gen)
{
  struct enc e;
  char val[32], *out = NULL;
  size_t outlen = 0;
  int rv = 0, r;
  rados_read_op_t op = rados_create_read_op ();

  enc_assert (&e, h->cookie);
  rados_read_op_exec (op, "lock", "assert_locked", e.buf, e.n, &out, &outlen,
                      &rv);
  r = rados_read_op_operate (op, h->rm->io, h->oid, 0);
  rados_release_read_op (op);
  if (out)
    rados_buffer_free (out);
  if (r < 0)
    return r;
  /* Still ours: nobody but us can change it before we publish again. */
  r = rados_getxattr (h->rm->io, h->oid, GEN_XATTR, val, sizeof val - 1);
  if (r < 0)
    return r;
  val[r] = '\0';
  *gen = strtoull (val, NULL, 10);
  return 0;
}

static int
rados_volume_publish (struct cas_meta_vol *hv, const struct cas_root *root)
{
  struct rados_vol *h = RV (hv);
  struct rados_meta *rm = h->rm;
  uint8_t buf[CAS_ROOT_SIZE];
  uint64_t there;
  int r, tries;

  if (!h->writable) {
    errno = EROFS;
    return -1;
  }
  if (rados_volume_check (hv) == -1)
    return -1;
  cas_root_encode (root, buf);
  for (tries = 0; tries < 2; tries++) {
    r = publish_op (h, h->generation, buf, root->generation);
    if (r == 0) {
      h->generation = root->generation;
      return 0;
    }
    if (r != -ECANCELED)
      break;
    /* Stale: ours landed late (adopt it and publish over it), or
     * somebody else's (then we lost the volume).
     */
    r = own_generation (h, &there);
    if (r < 0 || there < h->generation)
      break;
    backend_debug ("cas: %s: volume '%s': generation %" PRIu64 " there "
                   "(ours, landed after a timeout), %" PRIu64 " here",
                   rm->name, h->volume, there, h->generation);
    h->generation = there;
  }
  switch (-r) {
  case EBUSY:
    lose (h, "its writer lease is gone (it expired, or another server "
          "took the volume over): nothing was published");
    return lost_error (h);
  case ENOENT:
    lose (h, "the volume was deleted");
    return lost_error (h);
  case ESHUTDOWN:
    lose (h, "this server was fenced (blocklisted) by another that took "
          "the volume over");
    return lost_error (h);
  case ECANCELED:
    lose (h, "another writer published a root over the one this server "
          "started from");
    return lost_error (h);
  }
  fail (rm, h->oid, "publishing the volume's root", r);
  errno = EIO;
  return -1;
}

/* Under nothing.  Unlink h, wait until no thread uses it, drop what is
 * queued for it, stop watching, release the lease, free.
 */
static void
free_vol (struct rados_vol *h)
{
  struct rados_meta *rm;
  struct rados_vol **pp;
  struct notify_req *q, **qp, *drop = NULL;
  uint64_t w;

  if (h == NULL)
    return;
  rm = h->rm;
  pthread_mutex_lock (&rm->lock);
  w = h->watch;
  h->watch = 0;
  pthread_mutex_unlock (&rm->lock);
  /* No callback for h after these two. */
  if (w) {
    rados_unwatch2 (rm->io, w);
    rados_watch_flush (cas_rados_cluster (rm->conn));
  }
  pthread_mutex_lock (&rm->lock);
  for (pp = &rm->vols; *pp; pp = &(*pp)->next)
    if (*pp == h) {
      *pp = h->next;
      break;
    }
  for (qp = &rm->queue; (q = *qp) != NULL; ) {
    if (q->h == h) {
      *qp = q->next;
      q->next = drop;
      drop = q;
    }
    else
      qp = &q->next;
  }
  rm->queue_tail = &rm->queue;
  while (*rm->queue_tail)
    rm->queue_tail = &(*rm->queue_tail)->next;
  while (rm->notify_busy == h || h->renewing)
    pthread_cond_wait (&rm->cond, &rm->lock);
  pthread_mutex_unlock (&rm->lock);
  while ((q = drop) != NULL) {
    drop = q->next;
    ack (h, q->notify_id, q->cookie, "closing");
    free (q);
  }
  /* Released after the final publish (a lost one: by the lease thread,
   * or right here if it had no time to).
   */
  if (h->writable && h->cookie[0] && !h->released)
    rados_unlock (rm->io, h->oid, LEASE_NAME, h->cookie);
  pthread_mutex_destroy (&h->flush_lock);
  free (h->name);
  free (h);
}

static void
rados_volume_close (struct cas_meta_vol *hv)
{
  free_vol (RV (hv));
}

/* ---- the threads ---- */

static void *
lease_thread (void *arg)
{
  struct rados_meta *rm = arg;

  pthread_setname_np (pthread_self (), "bg:cas-lease");
  pthread_mutex_lock (&rm->lock);
  while (!rm->stopping) {
    struct rados_vol *h, *due = NULL;
    double now = mono (), wake = now + 1.0;
    bool rewatch = false;
    struct timespec ts;
    int r;

    for (h = rm->vols; h && !due; h = h->next) {
      if (h->watch_broken) {
        due = h;
        rewatch = true;
      }
      else if (h->writable && h->next_renew && atomic_load (&h->lost)) {
        if (!h->released)
          due = h;              /* give the lost lease up */
      }
      else if (h->writable && h->next_renew) {
        if (h->next_renew <= now)
          due = h;
        else if (h->next_renew < wake)
          wake = h->next_renew;
      }
    }
    if (due) {
      double sent = mono ();
      due->renewing = true;
      pthread_mutex_unlock (&rm->lock);
      if (!rewatch && atomic_load (&due->lost)) {
        /* Whatever the OSD still holds for us (a lease that lapsed here
         * first) goes now, so that another server need not wait for it:
         * this handle never publishes again either way.
         */
        rados_unlock (rm->io, due->oid, LEASE_NAME, due->cookie);
        pthread_mutex_lock (&rm->lock);
        due->released = true;
        due->renewing = false;
        pthread_cond_broadcast (&rm->cond);
        continue;
      }
      /* Never renew a lease that may have lapsed already: what this
       * process did not notice (a stall) another may have used.
       */
      if (!rewatch && (uint64_t) (sent * 1000) > atomic_load (&due->valid_ms)) {
        lose (due, "its writer lease was not renewed in time (this process "
              "stalled, or the cluster did not answer, for longer than the "
              "lease): another server may have taken the volume over");
        pthread_mutex_lock (&rm->lock);
        due->renewing = false;
        pthread_cond_broadcast (&rm->cond);
        continue;
      }
      if (rewatch) {
        uint64_t old;
        pthread_mutex_lock (&rm->lock);
        old = due->watch;
        due->watch = 0;
        due->watch_broken = false;
        pthread_mutex_unlock (&rm->lock);
        if (old)
          rados_unwatch2 (rm->io, old);
        r = watch (due);
        if (r < 0) {
          pthread_mutex_lock (&rm->lock);
          due->watch_broken = true;
          pthread_mutex_unlock (&rm->lock);
        }
        pthread_mutex_lock (&rm->lock);
        due->renewing = false;
        pthread_cond_broadcast (&rm->cond);
        if (r < 0) {            /* retry in a second, not in a loop */
          clock_gettime (CLOCK_REALTIME, &ts);
          ts.tv_sec += 1;
          pthread_cond_timedwait (&rm->cond, &rm->lock, &ts);
        }
        continue;
      }
      r = lease_op (due, LOCK_FLAG_MUST_RENEW);
      if (r == 0)
        atomic_store (&due->valid_ms,
                      (uint64_t) ((sent + rm->lease - 1.0) * 1000));
      else if (r == -ENOENT || r == -EBUSY)
        lose (due, "its writer lease was lost (it expired, was broken by "
              "another server's takeover=force, or the volume was "
              "deleted)");
      else if (r == -ESHUTDOWN)
        lose (due, "this server was fenced (blocklisted) by another that "
              "took the volume over");
      else if ((uint64_t) (mono () * 1000) > atomic_load (&due->valid_ms))
        lose (due, "its writer lease could not be renewed in time (%s)",
              strerror (-r));
      pthread_mutex_lock (&rm->lock);
      /* A failed renewal is tried again soon, while the lease lasts. */
      due->next_renew = r == 0 ? sent + rm->lease / 3.0 : mono () + 1.0;
      due->renewing = false;
      pthread_cond_broadcast (&rm->cond);
      continue;
    }
    ts.tv_sec = 0;
    clock_gettime (CLOCK_REALTIME, &ts);
    {
      double d = wake - now;
      ts.tv_sec += (time_t) d;
      ts.tv_nsec += (long) ((d - (time_t) d) * 1e9);
      if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
      }
    }
    pthread_cond_timedwait (&rm->cond, &rm->lock, &ts);
  }
  pthread_mutex_unlock (&rm->lock);
  return NULL;
}

static void *
notify_thread (void *arg)
{
  struct rados_meta *rm = arg;

  pthread_setname_np (pthread_self (), "bg:cas-notify");
  pthread_mutex_lock (&rm->lock);
  while (!rm->stopping) {
    struct notify_req *q = rm->queue;
    struct rados_vol *h;
    const char *answer;

    if (q == NULL) {
      pthread_cond_wait (&rm->cond, &rm->lock);
      continue;
    }
    rm->queue = q->next;
    if (rm->queue == NULL)
      rm->queue_tail = &rm->queue;
    h = q->h;
    rm->notify_busy = h;
    pthread_mutex_unlock (&rm->lock);

    /* A collector: forget, then flush what was referenced before. */
    if (q->gc)
      forget_known (rm);
    pthread_mutex_lock (&h->flush_lock);
    switch (h->state) {
    case VOL_OPENING:
      answer = "flushed";       /* nothing written yet */
      break;
    case VOL_READY:
      answer = h->flush_fn (h->flush_arg) == 0 ? "flushed"
        : "failed (see the log of the server holding it)";
      break;
    default:
      answer = "closing";       /* its final flush publishes */
    }
    pthread_mutex_unlock (&h->flush_lock);
    ack (h, q->notify_id, q->cookie, answer);
    free (q);

    pthread_mutex_lock (&rm->lock);
    rm->notify_busy = NULL;
    pthread_cond_broadcast (&rm->cond);
  }
  pthread_mutex_unlock (&rm->lock);
  return NULL;
}

/* ---- other processes ---- */

/* Notify oid with request; *acks / *timeouts as librados decodes them
 * (free with rados_free_notify_response).  -errno on failure.
 */
static int
notify (struct rados_meta *rm, const char *oid, const char *request,
        double seconds, struct notify_ack_t **acks, size_t *nacks,
        struct notify_timeout_t **timeouts, size_t *ntimeouts)
{
  char *reply = NULL;
  size_t reply_len = 0;
  int r, r2;

  *acks = NULL;
  *timeouts = NULL;
  *nacks = *ntimeouts = 0;
  r = rados_notify2 (rm->io, oid, request, strlen (request),
                     (uint64_t) (seconds * 1000), &reply, &reply_len);
  /* The reply names who timed out, even when r is -ETIMEDOUT. */
  if (reply) {
    r2 = rados_decode_notify_response (reply, reply_len, acks, nacks,
                                       timeouts, ntimeouts);
    rados_buffer_free (reply);
    if (r2 < 0)
      return r2;
  }
  return r == -ETIMEDOUT ? 0 : r;
}

/* Ask the writer of volume (object oid), if any, to carry out request
 * (NOTIFY_FLUSH, NOTIFY_GC) and answer "flushed": 0 when it did, or when
 * nobody holds the volume; -1 after a message (why says what for).
 */
static int
ask_writer (struct rados_meta *rm, const char *volume, const char *oid,
            const char *request, const char *why)
{
  char text[512];
  double deadline = mono () + rm->timeout;
  struct holder hd;
  int r;

  for (;;) {
    struct notify_ack_t *acks;
    struct notify_timeout_t *timeouts;
    size_t nacks, ntimeouts, i;
    const char *answer = NULL;
    char answer_buf[128];
    bool timed_out = false;
    double left;

    r = lease_holder (rm, oid, &hd);
    if (r == -ENOENT)
      return 0;                 /* deleted meanwhile: nobody writes it */
    if (r < 0)
      return fail (rm, oid, "reading the writer lease", r);
    if (r == 0)
      return 0;                 /* nobody writes it: the root is all */
    holder_text (&hd, text, sizeof text);
    left = deadline - mono ();
    if (left < 1)
      left = 1;
    r = notify (rm, oid, request, left, &acks, &nacks, &timeouts,
                &ntimeouts);
    if (r < 0)
      return fail (rm, oid, "asking the volume's writer to flush", r);
    for (i = 0; i < nacks; i++)
      if (acks[i].notifier_id == hd.gid && acks[i].payload_len > 0 &&
          strncmp (acks[i].payload, "ro", acks[i].payload_len) != 0) {
        snprintf (answer_buf, sizeof answer_buf, "%.*s",
                  (int) acks[i].payload_len, acks[i].payload);
        answer = answer_buf;
      }
    for (i = 0; i < ntimeouts; i++)
      if (timeouts[i].notifier_id == hd.gid)
        timed_out = true;
    rados_free_notify_response (acks, nacks, timeouts);
    if (answer && strcmp (answer, "flushed") == 0)
      return 0;
    if (answer && strncmp (answer, "failed", 6) == 0) {
      backend_error ("cas: %s: volume '%s': its writer %s could not flush "
                     "it: %s", rm->name, volume, text, answer);
      errno = EIO;
      return -1;
    }
    /* Closing (its final flush publishes, then the lease goes), or not
     * watching just now (its watch is being re-established): again.
     */
    if (!timed_out && mono () < deadline) {
      usleep (100000);
      continue;
    }
    backend_error ("cas: %s: volume '%s' is held by %s, which did not "
                   "answer the request to flush it within %u s, so %s: "
                   "nothing was done.  If that server is dead, its lease "
                   "lapses within %u s: try again then", rm->name, volume,
                   text, rm->timeout, why, hd.lease ? hd.lease : rm->lease);
    errno = ETIMEDOUT;
    return -1;
  }
}

static int
rados_volume_sync (struct cas_meta *m, const char *volume)
{
  struct rados_meta *rm = RM (m);
  char oid[VOL_OID_LEN + 1];

  if (dir_lookup (rm, volume, oid) == -1)
    return -1;
  return ask_writer (rm, volume, oid, NOTIFY_FLUSH,
                     "what it acknowledged cannot be included");
}

static int
rados_volume_users (struct cas_meta *m, const char *volume,
                    int (*fn) (const char *, const char *, void *),
                    void *opaque)
{
  struct rados_meta *rm = RM (m);
  char oid[VOL_OID_LEN + 1], text[512], who[1024], name[2 * 256 + 2];
  struct notify_ack_t *acks;
  struct notify_timeout_t *timeouts;
  size_t nacks, ntimeouts, i;
  struct holder hd;
  bool holder_answered = false;
  int r, ret = 0;

  if (dir_lookup (rm, volume, oid) == -1)
    return errno == ENOENT ? 0 : -1;
  r = notify (rm, oid, NOTIFY_WHO, rm->timeout, &acks, &nacks, &timeouts,
              &ntimeouts);
  if (r < 0)
    return fail (rm, oid, "asking who has the volume open", r);
  r = lease_holder (rm, oid, &hd);
  for (i = 0; i < nacks && ret == 0; i++) {
    const char *p = acks[i].payload, *nl;
    size_t len = acks[i].payload_len;
    if (p == NULL || (nl = memchr (p, '\n', len)) == NULL)
      continue;
    snprintf (name, sizeof name, "%.*s", (int) (nl - p), p);
    snprintf (who, sizeof who, "%.*s", (int) (len - (nl + 1 - p)), nl + 1);
    if (r == 1 && acks[i].notifier_id == hd.gid)
      holder_answered = true;
    ret = fn (name, who, opaque);
  }
  for (i = 0; i < ntimeouts && ret == 0; i++) {
    snprintf (who, sizeof who, "client.%" PRIu64 ", which did not answer "
              "within %u s", timeouts[i].notifier_id, rm->timeout);
    if (r == 1 && timeouts[i].notifier_id == hd.gid)
      holder_answered = true;   /* named here already */
    ret = fn (volume, who, opaque);
  }
  rados_free_notify_response (acks, nacks, timeouts);
  /* A writer whose lease runs but which did not answer at all (dead,
   * its lease not lapsed yet) still holds the volume.
   */
  if (ret == 0 && r == 1 && !holder_answered) {
    holder_text (&hd, text, sizeof text);
    snprintf (who, sizeof who, "%s, its writer, which did not answer (if "
              "it is dead, its lease lapses within %u s)", text,
              hd.lease ? hd.lease : rm->lease);
    ret = fn (volume, who, opaque);
  }
  return ret;
}

/* ---- garbage collection (gc-rados.c drives it; FORMAT.md, "Garbage
 * collection on RADOS") ---- */

struct cas_rados *
cas_meta_rados_conn (struct cas_meta *m)
{
  return RM (m)->conn;
}

bool
cas_meta_rados_is_volume_object (const char *oid)
{
  size_t i;

  if (strlen (oid) != VOL_OID_LEN || strncmp (oid, VOL_PREFIX, 4) != 0)
    return false;
  for (i = 4; i < VOL_OID_LEN; i++)
    if (!((oid[i] >= '0' && oid[i] <= '9') || (oid[i] >= 'a' && oid[i] <= 'f')))
      return false;
  return true;
}

/* Run read op on oid and wait: its result, and in *version the version of
 * the object it read (per operation: the ioctx's "last version" is shared
 * with every other thread).
 */
static int
read_op_version (struct rados_meta *rm, rados_read_op_t op, const char *oid,
                 uint64_t *version)
{
  rados_completion_t c;
  int r;

  r = rados_aio_create_completion2 (NULL, NULL, &c);
  if (r < 0)
    return r;
  r = rados_aio_read_op_operate (op, rm->io, c, oid, 0);
  if (r == 0) {
    rados_aio_wait_for_complete (c);
    r = rados_aio_get_return_value (c);
    *version = rados_aio_get_version (c);
  }
  rados_aio_release (c);
  return r;
}

struct entry {
  char *key;
  char *val;
  size_t len;
};
DEFINE_VECTOR_TYPE (entry_vector, struct entry);

static void
free_entry (struct entry *e)
{
  free (e->key);
  free (e->val);
}

/* Every omap entry of oid, and (data != NULL) its first datalen bytes
 * (*got of them), all as of one version of the object: the pages of a
 * long omap are read with that version asserted, and read again from the
 * start if the object changed in between.  0; 1 if oid does not exist;
 * -1 after a message.
 */
static int
read_consistent (struct rados_meta *rm, const char *oid, uint8_t *data,
                 size_t datalen, size_t *got, entry_vector *out)
{
  int tries;

  for (tries = 0; tries < CONSISTENT_TRIES; tries++) {
    char after[CAS_VOLUME_NAME_MAX + 1] = "";
    unsigned char more = 1;
    bool first = true, changed = false;
    uint64_t version = 0, v;

    entry_vector_free_all (out, free_entry);
    while (more && !changed) {
      rados_read_op_t op = rados_create_read_op ();
      rados_omap_iter_t it = NULL;
      int prval = 0, rrv = 0, r;
      char *k, *val;
      size_t vl;

      more = 0;
      if (!first)
        rados_read_op_assert_version (op, version);
      else if (data)
        rados_read_op_read (op, 0, datalen, (char *) data, got, &rrv);
      rados_read_op_omap_get_vals2 (op, after, "", LIST_PAGE, &it, &more,
                                    &prval);
      r = read_op_version (rm, op, oid, &v);
      rados_release_read_op (op);
      if (r == 0)
        r = rrv < 0 ? rrv : prval;
      if (r < 0) {
        if (it)
          rados_omap_get_end (it);
        if (r == -ENOENT && first)
          return 1;
        if (r == -ERANGE || r == -EOVERFLOW || r == -ENOENT) {
          changed = true;       /* changed between two pages: again */
          break;
        }
        entry_vector_free_all (out, free_entry);
        return fail (rm, oid, "reading for garbage collection", r);
      }
      if (first)
        version = v;
      first = false;
      while (rados_omap_get_next2 (it, &k, &val, NULL, &vl) == 0 && k) {
        struct entry e = { NULL, NULL, vl };
        if (strlen (k) >= sizeof after) {
          /* Not a name this store makes; paging after it would not work. */
          backend_error ("cas: %s: %s has an omap key of %zu bytes "
                         "(damaged): no garbage collection", rm->name, oid,
                         strlen (k));
          rados_omap_get_end (it);
          entry_vector_free_all (out, free_entry);
          errno = EIO;
          return -1;
        }
        e.key = strdup (k);
        e.val = malloc (vl + 1);
        if (e.key == NULL || e.val == NULL ||
            entry_vector_append (out, e) == -1) {
          free_entry (&e);
          rados_omap_get_end (it);
          entry_vector_free_all (out, free_entry);
          backend_error ("cas: %s: garbage collection: out of memory",
                         rm->name);
          errno = ENOMEM;
          return -1;
        }
        memcpy (e.val, val, vl);
        e.val[vl] = '\0';
        snprintf (after, sizeof after, "%s", k);
      }
      rados_omap_get_end (it);
    }
    if (!changed)
      return 0;
  }
  entry_vector_free_all (out, free_entry);
  backend_error ("cas: %s: garbage collection: %s kept changing while it "
                 "was read (%d tries): nothing was removed", rm->name, oid,
                 CONSISTENT_TRIES);
  errno = EAGAIN;
  return -1;
}

/* The directory, consistent, each entry checked to name a volume
 * object.
 */
static int
read_directory (struct rados_meta *rm, entry_vector *dir)
{
  size_t i;
  int r;

  r = read_consistent (rm, DIR_OID, NULL, 0, NULL, dir);
  if (r == 1) {
    backend_error ("cas: %s: the directory %s is missing (damaged)",
                   rm->name, DIR_OID);
    errno = EIO;
    return -1;
  }
  if (r == -1)
    return -1;
  for (i = 0; i < dir->len; i++)
    if (!cas_meta_rados_is_volume_object (dir->ptr[i].val)) {
      backend_error ("cas: %s: the directory %s names '%.60s' for volume "
                     "'%s': not a volume object (damaged): no garbage "
                     "collection", rm->name, DIR_OID, dir->ptr[i].val,
                     dir->ptr[i].key);
      entry_vector_free_all (dir, free_entry);
      errno = EIO;
      return -1;
    }
  return 0;
}

int
cas_meta_rados_gc_barrier (struct cas_meta *m)
{
  struct rados_meta *rm = RM (m);
  entry_vector dir = empty_vector;
  size_t i;
  int ret = 0;

  if (read_directory (rm, &dir) == -1)
    return -1;
  for (i = 0; i < dir.len && ret == 0; i++)
    ret = ask_writer (rm, dir.ptr[i].key, dir.ptr[i].val, NOTIFY_GC,
                      "what it has written but not published cannot be "
                      "known to the garbage collection");
  entry_vector_free_all (&dir, free_entry);
  return ret;
}

/* The root in a NOTIFY_ROOTS answer "root <256 hex digits>": 0, or -1. */
static int
parse_root_answer (const char *p, size_t len, uint8_t root[CAS_ROOT_SIZE])
{
  size_t i;

  if (len != 5 + 2 * CAS_ROOT_SIZE || memcmp (p, "root ", 5) != 0)
    return -1;
  for (i = 0; i < CAS_ROOT_SIZE; i++) {
    unsigned v;
    char two[3] = { p[5 + 2 * i], p[6 + 2 * i], 0 };
    if (!isxdigit ((unsigned char) two[0]) ||
        !isxdigit ((unsigned char) two[1]) || sscanf (two, "%x", &v) != 1)
      return -1;
    root[i] = v;
  }
  return 0;
}

int
cas_meta_rados_gc_reader_roots (struct cas_meta *m,
                                int (*fn) (const char *, const uint8_t *,
                                           void *),
                                void *opaque)
{
  struct rados_meta *rm = RM (m);
  entry_vector dir = empty_vector;
  char name[CAS_VOLUME_NAME_MAX + 32];
  uint8_t root[CAS_ROOT_SIZE];
  size_t i, j;
  int ret = 0, r;

  if (read_directory (rm, &dir) == -1)
    return -1;
  for (i = 0; i < dir.len && ret == 0; i++) {
    struct notify_ack_t *acks;
    struct notify_timeout_t *timeouts;
    size_t nacks, ntimeouts;

    r = notify (rm, dir.ptr[i].val, NOTIFY_ROOTS, rm->timeout, &acks,
                &nacks, &timeouts, &ntimeouts);
    if (r == -ENOENT)
      continue;                 /* deleted meanwhile: nobody has it open */
    if (r < 0) {
      ret = fail (rm, dir.ptr[i].val, "asking the volume's readers for "
                  "their roots", r);
      break;
    }
    for (j = 0; j < nacks && ret == 0; j++) {
      if (acks[j].payload_len < 5 ||
          memcmp (acks[j].payload, "root ", 5) != 0)
        continue;               /* its writer, or an nbdcas without it */
      if (parse_root_answer (acks[j].payload, acks[j].payload_len,
                             root) == -1) {
        backend_error ("cas: %s: volume '%s': client.%" PRIu64 " answered "
                       "the collector with a malformed root: no garbage "
                       "collection", rm->name, dir.ptr[i].key,
                       acks[j].notifier_id);
        errno = EIO;
        ret = -1;
        break;
      }
      snprintf (name, sizeof name, "%s (client.%" PRIu64 "'s)",
                dir.ptr[i].key, acks[j].notifier_id);
      ret = fn (name, root, opaque);
    }
    if (ret == 0 && ntimeouts > 0) {
      backend_error ("cas: %s: volume '%s' is open on client.%" PRIu64
                     ", which did not say within %u s which root it reads, "
                     "so garbage collection cannot know what it needs: "
                     "nothing was removed.  If that process is dead, its "
                     "watch lapses within a minute: try again then",
                     rm->name, dir.ptr[i].key, timeouts[0].notifier_id,
                     rm->timeout);
      errno = ETIMEDOUT;
      ret = -1;
    }
    rados_free_notify_response (acks, nacks, timeouts);
  }
  entry_vector_free_all (&dir, free_entry);
  return ret;
}

/* The directory's epoch + 1, by compare-and-swap. */
static int
bump_epoch (struct rados_meta *rm)
{
  char val[32], next[32];
  size_t len;
  int tries, r;

  for (tries = 0; tries < CONSISTENT_TRIES; tries++) {
    rados_write_op_t op;

    if (read_epoch (rm, val, &len) == -1)
      return -1;
    snprintf (next, sizeof next, "%llu", strtoull (val, NULL, 10) + 1);
    op = rados_create_write_op ();
    rados_write_op_cmpxattr (op, EPOCH_XATTR, LIBRADOS_CMPXATTR_OP_EQ, val,
                             len);
    rados_write_op_setxattr (op, EPOCH_XATTR, next, strlen (next));
    r = rados_write_op_operate (op, rm->io, DIR_OID, NULL, 0);
    rados_release_write_op (op);
    if (r == 0)
      return 0;
    if (r != -ECANCELED)
      return fail (rm, DIR_OID, "setting the collection epoch", r);
  }
  backend_error ("cas: %s: the collection epoch kept changing (another "
                 "garbage collection?)", rm->name);
  errno = EAGAIN;
  return -1;
}

static int
compare_oid (const void *a, const void *b)
{
  const struct cas_meta_rados_oid *x = a, *y = b;

  return strcmp (x->s, y->s);
}

typedef struct cas_meta_rados_oid oid_t;
DEFINE_VECTOR_TYPE (oid_vector, oid_t);

static bool
oid_in (const oid_vector *v, const char *oid)
{
  oid_t key;

  snprintf (key.s, sizeof key.s, "%s", oid);
  return v->len &&
    bsearch (&key, v->ptr, v->len, sizeof (oid_t), compare_oid) != NULL;
}

/* The roots of volume name, object oid (not there any more: none). */
static int
volume_roots (struct rados_meta *rm, const char *name, const char *oid,
              int (*fn) (const char *, const uint8_t *, void *),
              void *opaque)
{
  entry_vector snaps = empty_vector;
  uint8_t root[CAS_ROOT_SIZE];
  char full[2 * CAS_VOLUME_NAME_MAX + 2];
  size_t got = 0, i;
  int r;

  r = read_consistent (rm, oid, root, sizeof root, &got, &snaps);
  if (r != 0)
    return r == 1 ? 0 : -1;     /* deleted since the directory was read */
  if (got != CAS_ROOT_SIZE) {
    backend_error ("cas: %s: volume '%s' (object %s): its root is truncated: "
                   "%zu of %d bytes (damaged): no garbage collection",
                   rm->name, name, oid, got, CAS_ROOT_SIZE);
    entry_vector_free_all (&snaps, free_entry);
    errno = EIO;
    return -1;
  }
  r = fn (name, root, opaque);
  for (i = 0; i < snaps.len && r == 0; i++) {
    snprintf (full, sizeof full, "%s@%s", name, snaps.ptr[i].key);
    if (snaps.ptr[i].len != CAS_ROOT_SIZE) {
      backend_error ("cas: %s: snapshot '%s' (object %s): its root is "
                     "%zu bytes, not %d (damaged): no garbage collection",
                     rm->name, full, oid, snaps.ptr[i].len, CAS_ROOT_SIZE);
      errno = EIO;
      r = -1;
      break;
    }
    r = fn (full, (const uint8_t *) snaps.ptr[i].val, opaque);
  }
  entry_vector_free_all (&snaps, free_entry);
  return r;
}

int
cas_meta_rados_gc_roots (struct cas_meta *m,
                         int (*fn) (const char *, const uint8_t *, void *),
                         void *opaque, struct cas_meta_rados_oid **named,
                         size_t *nnamed)
{
  struct rados_meta *rm = RM (m);
  oid_vector done = empty_vector, last = empty_vector;
  entry_vector dir = empty_vector;
  size_t i, before;
  int round, r = 0;

  *named = NULL;
  *nnamed = 0;
  /* Round k: the epoch moves on (a creation that read its source before
   * this fails and reads it again), the directory, then the objects it
   * names that no earlier round read.  A round after the first that
   * finds none ends it: every root made from another since is made from
   * one read after it was last changed (FORMAT.md has the argument).
   */
  for (round = 1; round <= GC_ROUNDS; round++) {
    if (bump_epoch (rm) == -1 || read_directory (rm, &dir) == -1)
      goto err;
    oid_vector_reset (&last);
    before = done.len;
    for (i = 0; i < dir.len; i++) {
      oid_t o;
      snprintf (o.s, sizeof o.s, "%s", dir.ptr[i].val);
      if (oid_vector_append (&last, o) == -1)
        goto nomem;
      if (oid_in (&done, o.s))
        continue;
      r = volume_roots (rm, dir.ptr[i].key, o.s, fn, opaque);
      if (r != 0)
        goto err;
      if (oid_vector_append (&done, o) == -1)
        goto nomem;
    }
    if (done.len > before)
      qsort (done.ptr, done.len, sizeof (oid_t), compare_oid);
    if (round > 1 && done.len == before) {
      qsort (last.ptr, last.len, sizeof (oid_t), compare_oid);
      *named = last.ptr;
      *nnamed = last.len;
      entry_vector_free_all (&dir, free_entry);
      oid_vector_reset (&done);
      return 0;
    }
  }
  backend_error ("cas: %s: garbage collection: volumes were created "
                 "through %d rounds of marking: try again when fewer are",
                 rm->name, GC_ROUNDS);
  errno = EAGAIN;
  r = -1;
  goto err;
 nomem:
  backend_error ("cas: %s: garbage collection: out of memory", rm->name);
  errno = ENOMEM;
  r = -1;
 err:
  entry_vector_free_all (&dir, free_entry);
  oid_vector_reset (&done);
  oid_vector_reset (&last);
  return r ? r : -1;
}

static const struct cas_meta_ops rados_ops = {
  .kind = "rados",
  .close = rados_close,
  .open_chunks = rados_open_chunks,
  .super_write = rados_super_write,
  .exists = rados_exists,
  .legacy_volume = rados_legacy_volume,
  .list_volumes = rados_list_volumes,
  .list_snapshots = rados_list_snapshots,
  .root_load = rados_root_load,
  .volume_create = rados_volume_create,
  .snapshot_create = rados_snapshot_create,
  .snapshot_delete = rados_snapshot_delete,
  .snapshot_rename = rados_snapshot_rename,
  .volume_delete = rados_volume_delete,
  .volume_rename = rados_volume_rename,
  .volume_open = rados_volume_open,
  .volume_set_flush = rados_volume_set_flush,
  .volume_publish = rados_volume_publish,
  .volume_check = rados_volume_check,
  .volume_close = rados_volume_close,
  .volume_sync = rados_volume_sync,
  .volume_users = rados_volume_users,
};
