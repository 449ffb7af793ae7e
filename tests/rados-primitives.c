/* rados-primitives: the RADOS operations a multi-host cas store builds on
 * (volume roots published by compare-and-swap, one writer per volume by a
 * lease, fencing of a stale writer), checked against a live cluster, so
 * the design rests on measured behaviour of the Ceph version at hand.
 *
 *   rados-primitives -c CONF -p POOL [-l LEASE_SECONDS]
 *
 * Two librados clients (A and B, two rados_t in this process: two client
 * ids, two addresses) stand for two hosts.  Each check prints
 * "ok|FAIL NAME: what happened"; the exit status is 1 if any check
 * failed.  The lease checks sleep for the lease duration itself (that
 * is the semantics under test, not synchronisation); keep it short.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <rados/librados.h>

static int failures;

static void
check (bool ok, const char *name, const char *fmt, ...)
{
  va_list ap;

  printf ("%s %s: ", ok ? "ok" : "FAIL", name);
  va_start (ap, fmt);
  vprintf (fmt, ap);
  va_end (ap);
  putchar ('\n');
  fflush (stdout);
  if (!ok)
    failures++;
}

static const char *
err (int r)
{
  static char buf[8][64];
  static int i;
  char *b = buf[i++ % 8];

  if (r >= 0)
    snprintf (b, 64, "%d", r);
  else
    snprintf (b, 64, "-%s", strerrorname_np (-r) ? strerrorname_np (-r)
              : "?");
  return b;
}

static double
now (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static rados_t
client (const char *conf, const char *pool, rados_ioctx_t *io)
{
  rados_t cl;

  if (rados_create2 (&cl, "ceph", "client.admin", 0) < 0 ||
      rados_conf_read_file (cl, conf) < 0 ||
      rados_conf_set (cl, "client_mount_timeout", "10") < 0 ||
      rados_conf_set (cl, "rados_osd_op_timeout", "10") < 0 ||
      rados_conf_set (cl, "rados_mon_op_timeout", "10") < 0 ||
      rados_connect (cl) < 0 || rados_ioctx_create (cl, pool, io) < 0) {
    fprintf (stderr, "rados-primitives: cannot connect to %s\n", pool);
    exit (2);
  }
  rados_ioctx_set_namespace (*io, "primitives");
  return cl;
}

/* The "publish a root" op: {cmpxattr gen == expect, setxattr gen = next,
 * write_full data}, optionally preceded by the lock class's assert_locked.
 */
static int
publish (rados_ioctx_t io, const char *oid, const char *expect,
         const char *next, const char *data, const char *assert_in,
         size_t assert_len)
{
  rados_write_op_t op = rados_create_write_op ();
  int rv = 0, r;

  if (assert_in)
    rados_write_op_exec (op, "lock", "assert_locked", assert_in,
                         assert_len, &rv);
  rados_write_op_cmpxattr (op, "gen", LIBRADOS_CMPXATTR_OP_EQ, expect,
                           strlen (expect));
  rados_write_op_setxattr (op, "gen", next, strlen (next));
  rados_write_op_write_full (op, data, strlen (data));
  r = rados_write_op_operate (op, io, oid, NULL, 0);
  rados_release_write_op (op);
  return r;
}

static void
read_back (rados_ioctx_t io, const char *oid, char *data, char *gen)
{
  int r;

  r = rados_read (io, oid, data, 63, 0);
  data[r < 0 ? 0 : r] = '\0';
  r = rados_getxattr (io, oid, "gen", gen, 63);
  gen[r < 0 ? 0 : r] = '\0';
}

/* cls_lock_assert_op, Ceph's encoding: ENCODE_START(1, 1) (u8 version,
 * u8 compat, u32 length), then name (u32 length + bytes), type (u8,
 * 1 = exclusive), cookie, tag ("" for rados_lock_exclusive).
 */
static size_t
encode_assert (char *out, const char *name, const char *cookie)
{
  size_t n = 6, ln = strlen (name), lc = strlen (cookie);
  uint32_t v;

  out[0] = 1;
  out[1] = 1;
  v = ln; memcpy (out + n, &v, 4); n += 4;
  memcpy (out + n, name, ln); n += ln;
  out[n++] = 1;
  v = lc; memcpy (out + n, &v, 4); n += 4;
  memcpy (out + n, cookie, lc); n += lc;
  v = 0; memcpy (out + n, &v, 4); n += 4;
  v = n - 6; memcpy (out + 2, &v, 4);
  return n;
}

/* What garbage collection on RADOS builds on (FORMAT.md, "Garbage
 * collection on RADOS"): object versions read with a read op (the
 * collector's listing), a touch that changes them (a writer that
 * deduplicated against an old object), a removal only if the version is
 * still the one listed, and the directory's epoch compared before it was
 * ever set.
 */
static void
gc_primitives (rados_ioctx_t a, rados_ioctx_t b)
{
  rados_completion_t c;
  rados_write_op_t op;
  rados_read_op_t rop;
  uint64_t v1, v2, v3, size = 0;
  time_t mt = 0;
  int r, r2, rv = 0;

  rados_remove (a, "gcchunk");
  rados_remove (a, "gcdir");
  r = rados_write_full (a, "gcchunk", "chunk", 5);
  /* The version of a listed object: an aio read op's completion. */
  rados_aio_create_completion2 (NULL, NULL, &c);
  rop = rados_create_read_op ();
  rados_read_op_stat (rop, &size, &mt, &rv);
  r2 = rados_aio_read_op_operate (rop, b, c, "gcchunk", 0);
  rados_aio_wait_for_complete (c);
  if (r2 == 0)
    r2 = rados_aio_get_return_value (c);
  v1 = rados_aio_get_version (c);
  rados_aio_release (c);
  rados_release_read_op (rop);
  check (r == 0 && r2 == 0 && rv == 0 && size == 5 && v1 > 0,
         "gc-version-by-read", "write %s, read op %s, version %" PRIu64,
         err (r), err (r2), v1);

  /* A touch: {assert_exists, setxattr} with the same value as before
   * still makes a new version.
   */
  op = rados_create_write_op ();
  rados_write_op_assert_exists (op);
  rados_write_op_setxattr (op, "nbdcas.t", "1", 1);
  r = rados_write_op_operate (op, b, "gcchunk", NULL, 0);
  rados_release_write_op (op);
  v2 = rados_get_last_version (b);
  op = rados_create_write_op ();
  rados_write_op_assert_exists (op);
  rados_write_op_setxattr (op, "nbdcas.t", "1", 1);
  r2 = rados_write_op_operate (op, b, "gcchunk", NULL, 0);
  rados_release_write_op (op);
  v3 = rados_get_last_version (b);
  check (r == 0 && r2 == 0 && v2 > v1 && v3 > v2, "gc-touch-new-version",
         "touches %s %s: versions %" PRIu64 " -> %" PRIu64 " -> %" PRIu64,
         err (r), err (r2), v1, v2, v3);

  /* Removal only at the listed version. */
  op = rados_create_write_op ();
  rados_write_op_assert_version (op, v1);
  rados_write_op_remove (op);
  r = rados_write_op_operate (op, a, "gcchunk", NULL, 0);
  rados_release_write_op (op);
  r2 = rados_stat (a, "gcchunk", &size, &mt);
  check (r < 0 && r2 == 0, "gc-remove-at-version-refused",
         "remove at the old version %s; object still there: %s", err (r),
         err (r2));
  op = rados_create_write_op ();
  rados_write_op_assert_version (op, v3);
  rados_write_op_remove (op);
  r = rados_write_op_operate (op, a, "gcchunk", NULL, 0);
  rados_release_write_op (op);
  r2 = rados_stat (a, "gcchunk", &size, &mt);
  check (r == 0 && r2 == -ENOENT, "gc-remove-at-version",
         "remove at the current version %s; then stat %s", err (r),
         err (r2));

  /* A touch does not create: it finds the object removed. */
  op = rados_create_write_op ();
  rados_write_op_assert_exists (op);
  rados_write_op_setxattr (op, "nbdcas.t", "1", 1);
  r = rados_write_op_operate (op, b, "gcchunk", NULL, 0);
  rados_release_write_op (op);
  r2 = rados_stat (a, "gcchunk", &size, &mt);
  check (r == -ENOENT && r2 == -ENOENT, "gc-touch-removed",
         "touch %s, stat %s", err (r), err (r2));
  /* Created again: a version the collector never listed. */
  r = rados_write_full (a, "gcchunk", "chunk", 5);
  v2 = rados_get_last_version (a);
  check (r == 0 && v2 > v3, "gc-recreated-new-version",
         "%s, version %" PRIu64 " after %" PRIu64, err (r), v2, v3);

  /* An xattr never set compares equal to "". */
  r = rados_write_full (a, "gcdir", "d", 1);
  op = rados_create_write_op ();
  rados_write_op_cmpxattr (op, "nbdcas.epoch", LIBRADOS_CMPXATTR_OP_EQ,
                           "", 0);
  rados_write_op_setxattr (op, "x", "1", 1);
  r = rados_write_op_operate (op, b, "gcdir", NULL, 0);
  rados_release_write_op (op);
  op = rados_create_write_op ();
  rados_write_op_cmpxattr (op, "nbdcas.epoch", LIBRADOS_CMPXATTR_OP_EQ,
                           "1", 1);
  rados_write_op_setxattr (op, "x", "2", 1);
  r2 = rados_write_op_operate (op, b, "gcdir", NULL, 0);
  rados_release_write_op (op);
  check (r == 0 && r2 == -ECANCELED, "gc-cmpxattr-unset",
         "== \"\" on an unset xattr %s; == \"1\" %s", err (r), err (r2));
  rados_remove (a, "gcchunk");
  rados_remove (a, "gcdir");
}

int
main (int argc, char **argv)
{
  const char *conf = NULL, *pool = "test";
  unsigned lease = 1;
  rados_t ca, cb, cc;
  rados_ioctx_t a, b, c;
  char data[64], gen[64], enc[128];
  struct timeval dur;
  int opt, r, r2;
  size_t encl;
  double t;

  while ((opt = getopt (argc, argv, "c:p:l:")) != -1) {
    switch (opt) {
    case 'c': conf = optarg; break;
    case 'p': pool = optarg; break;
    case 'l': lease = atoi (optarg); break;
    default:
      fprintf (stderr, "usage: rados-primitives -c CONF -p POOL "
               "[-l LEASE_SECONDS]\n");
      return 2;
    }
  }
  ca = client (conf, pool, &a);
  cb = client (conf, pool, &b);
  rados_remove (a, "root");
  rados_remove (a, "excl");

  /* Exclusive create: the first creator wins, the others get EEXIST.
   * (An op object is spent by operate: one per operation.)
   */
  {
    rados_write_op_t op = rados_create_write_op ();
    rados_write_op_create (op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
    rados_write_op_write_full (op, "x", 1);
    r = rados_write_op_operate (op, a, "excl", NULL, 0);
    rados_release_write_op (op);
    op = rados_create_write_op ();
    rados_write_op_create (op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
    rados_write_op_write_full (op, "x", 1);
    r2 = rados_write_op_operate (op, b, "excl", NULL, 0);
    rados_release_write_op (op);
    check (r == 0 && r2 == -EEXIST, "exclusive-create",
           "first %s, second client %s", err (r), err (r2));
  }

  /* Compare-and-swap publication. */
  {
    rados_write_op_t op = rados_create_write_op ();
    rados_write_op_create (op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
    rados_write_op_setxattr (op, "gen", "1", 1);
    rados_write_op_write_full (op, "root-1", 6);
    r = rados_write_op_operate (op, a, "root", NULL, 0);
    rados_release_write_op (op);
  }
  r2 = publish (a, "root", "1", "2", "root-2", NULL, 0);
  r = publish (b, "root", "1", "3", "root-3", NULL, 0);  /* stale */
  read_back (b, "root", data, gen);
  check (r2 == 0 && r == -ECANCELED && strcmp (data, "root-2") == 0 &&
         strcmp (gen, "2") == 0, "cmpxattr+setxattr+write_full",
         "current %s, stale %s; object \"%s\" gen %s (the stale op changed "
         "nothing)", err (r2), err (r), data, gen);
  r = publish (b, "nosuch", "1", "2", "x", NULL, 0);
  check (r == -ENOENT, "cmpxattr-missing-object", "%s", err (r));
  {
    rados_write_op_t op = rados_create_write_op ();
    rados_write_op_cmpxattr (op, "nosuchattr", LIBRADOS_CMPXATTR_OP_EQ,
                             "1", 1);
    rados_write_op_write_full (op, "y", 1);
    r = rados_write_op_operate (op, a, "excl", NULL, 0);
    rados_release_write_op (op);
    check (r == -ECANCELED || r == -ENODATA, "cmpxattr-missing-xattr",
           "%s", err (r));
  }

  /* assert_version: the other way to compare-and-swap. */
  {
    uint64_t v;
    rados_write_op_t op;
    r = rados_read (a, "root", data, sizeof data, 0);
    v = rados_get_last_version (a);
    op = rados_create_write_op ();
    rados_write_op_assert_version (op, v);
    rados_write_op_write_full (op, "root-2", 6);
    r = rados_write_op_operate (op, a, "root", NULL, 0);
    rados_release_write_op (op);
    op = rados_create_write_op ();              /* the same: now stale */
    rados_write_op_assert_version (op, v);
    rados_write_op_write_full (op, "root-x", 6);
    r2 = rados_write_op_operate (op, b, "root", NULL, 0);
    rados_release_write_op (op);
    read_back (b, "root", data, gen);
    check (r == 0 && r2 < 0 && strcmp (data, "root-2") == 0,
           "assert_version",
           "version %llu: %s, the same again (stale) %s; object \"%s\"",
           (unsigned long long) v, err (r), err (r2), data);
  }

  /* Leases: rados_lock_exclusive with a duration. */
  dur.tv_sec = lease;
  dur.tv_usec = 0;
  r = rados_lock_exclusive (a, "root", "lease", "a", "host A", &dur, 0);
  r2 = rados_lock_exclusive (b, "root", "lease", "b", "host B", &dur, 0);
  check (r == 0 && r2 == -EBUSY, "lock-exclusive",
         "A %s, B while A holds it %s", err (r), err (r2));
  r = rados_lock_exclusive (a, "root", "lease", "a", "host A", &dur, 0);
  r2 = rados_lock_exclusive (a, "root", "lease", "a", "host A", &dur,
                             LIBRADOS_LOCK_FLAG_MAY_RENEW);
  check (r == -EEXIST && r2 == 0, "lock-renew",
         "A again without MAY_RENEW %s, with MAY_RENEW %s", err (r),
         err (r2));
  {
    char tag[64], clients[256], cookies[256], addrs[256];
    size_t tl = sizeof tag, cl = sizeof clients, kl = sizeof cookies,
      al = sizeof addrs;
    int excl = 0;
    ssize_t n = rados_list_lockers (b, "root", "lease", &excl, tag, &tl,
                                    clients, &cl, cookies, &kl, addrs, &al);
    check (n == 1 && excl == 1 && strcmp (cookies, "a") == 0,
           "list-lockers", "%zd locker: %s cookie %s address %s "
           "(exclusive %d): enough to name the holder", n,
           n == 1 ? clients : "-", n == 1 ? cookies : "-",
           n == 1 ? addrs : "-", excl);
  }
  encl = encode_assert (enc, "lease", "a");
  r = publish (a, "root", "2", "3", "root-3", enc, encl);
  encl = encode_assert (enc, "lease", "b");
  r2 = publish (b, "root", "3", "4", "root-4", enc, encl);
  read_back (b, "root", data, gen);
  check (r == 0 && r2 < 0 && strcmp (gen, "3") == 0,
         "assert_locked-in-write-op", "holder A %s; B (not holding) %s; "
         "object gen %s", err (r), err (r2), gen);

  /* Expiry: B takes the lease once A stops renewing. */
  t = now ();
  for (;;) {
    r = rados_lock_exclusive (b, "root", "lease", "b", "host B", &dur, 0);
    if (r != -EBUSY || now () - t > 3 * lease + 5)
      break;
    usleep (100000);
  }
  encl = encode_assert (enc, "lease", "a");
  r2 = publish (a, "root", "3", "4", "root-4", enc, encl);
  check (r == 0 && r2 < 0, "lease-expiry",
         "B took the lease %.1f s after A's last renewal (duration %u s): "
         "%s; A's publish with assert_locked afterwards %s", now () - t,
         lease, err (r), err (r2));
  r = rados_lock_exclusive (a, "root", "lease", "a", "host A", &dur,
                            LIBRADOS_LOCK_FLAG_MAY_RENEW);
  check (r == -EBUSY, "renew-after-loss", "A renewing a lease B now "
         "holds: %s", err (r));
  /* An expired lease that nobody took over: does assert_locked still
   * pass for the old holder?  (Tells whether a writer must check its
   * own lease time before publishing.)
   */
  usleep ((lease + 1) * 1000000);
  encl = encode_assert (enc, "lease", "b");
  r = publish (b, "root", "3", "4", "root-4", enc, encl);
  check (true, "assert_locked-after-expiry", "B's lease expired, nobody "
         "else locked: B's publish with assert_locked %s%s", err (r),
         r == 0 ? " (passes: an expired lock is still asserted until "
         "someone breaks or takes it)" : " (refused)");
  r = rados_lock_exclusive (b, "root", "lease", "b", "host B", &dur,
                            LIBRADOS_LOCK_FLAG_MAY_RENEW);
  r2 = publish (b, "root", "3", "4", "root-4", enc, encl);
  check (r == 0 && r2 == 0, "renew-after-expiry", "B renewing its own "
         "expired lease nobody took: %s; then its publish %s", err (r),
         err (r2));
  rados_unlock (b, "root", "lease", "b");

  gc_primitives (a, b);

  /* Forced takeover: B blocklists A and breaks A's lock; A is fenced. */
  dur.tv_sec = 600;
  r = rados_lock_exclusive (a, "root", "lease", "a", "host A", &dur, 0);
  {
    char tag[64], clients[256], cookies[256], addrs[256];
    size_t tl = sizeof tag, cl = sizeof clients, kl = sizeof cookies,
      al = sizeof addrs;
    int excl = 0;
    ssize_t n = rados_list_lockers (b, "root", "lease", &excl, tag, &tl,
                                    clients, &cl, cookies, &kl, addrs, &al);
    t = now ();
    r = n == 1 ? rados_blocklist_add (cb, addrs, 3600) : -ENOENT;
    r2 = n == 1 ? rados_break_lock (b, "root", "lease", clients, cookies)
      : -ENOENT;
    check (r == 0 && r2 == 0, "blocklist+break_lock",
           "blocklist %s %s, break_lock %s (%.2f s)", addrs, err (r),
           err (r2), now () - t);
  }
  r = rados_lock_exclusive (b, "root", "lease", "b", "host B", &dur, 0);
  t = now ();
  r2 = rados_write_full (a, "root", "stale", 5);
  check (r == 0 && r2 == -ESHUTDOWN, "fenced-old-client",
         "B locks %s; A's write afterwards %s after %.2f s", err (r),
         err (r2), now () - t);
  r = rados_read (a, "root", data, sizeof data, 0);
  r2 = rados_lock_exclusive (a, "root", "lease", "a", "host A", &dur,
                             LIBRADOS_LOCK_FLAG_MAY_RENEW);
  check (r == -ESHUTDOWN && r2 == -ESHUTDOWN, "fenced-client-everything",
         "A's read %s, A's renewal %s", err (r), err (r2));
  /* A new client instance (a new address) is not blocklisted. */
  cc = client (conf, pool, &c);
  r = rados_write_full (c, "excl", "z", 1);
  check (r == 0, "new-client-after-blocklist", "a fresh client's write %s",
         err (r));
  encl = encode_assert (enc, "lease", "b");
  read_back (b, "root", data, gen);
  r = publish (b, "root", gen, "9", "root-9", enc, encl);
  check (r == 0, "new-holder-publishes", "%s", err (r));

  rados_unlock (b, "root", "lease", "b");
  rados_ioctx_destroy (c);
  rados_shutdown (cc);
  rados_ioctx_destroy (a);
  rados_shutdown (ca);
  rados_ioctx_destroy (b);
  rados_shutdown (cb);
  return failures ? 1 : 0;
}
