/* The connection to a Ceph cluster: one librados client, one ioctx on the
 * store's pool and namespace.  See rados.h for the contract.
 *
 * Every failure on the way in is told apart, because each has a different
 * fix: no configuration, no monitor address, monitors unreachable, key
 * refused, pool missing, OSDs silent or forbidding access.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "rados.h"

struct cas_rados {
  rados_t cluster;
  rados_ioctx_t io;            /* NULL until the pool is open */
  unsigned timeout;
  char *where;                 /* "pool 'P'" or "pool 'P' namespace 'N'" */
};

rados_ioctx_t
cas_rados_ioctx (const struct cas_rados *r)
{
  return r->io;
}

rados_t
cas_rados_cluster (const struct cas_rados *r)
{
  return r->cluster;
}

const char *
cas_rados_where (const struct cas_rados *r)
{
  return r->where;
}

unsigned
cas_rados_timeout (const struct cas_rados *r)
{
  return r->timeout;
}

void
cas_rados_disconnect (struct cas_rados *r)
{
  if (r == NULL)
    return;
  if (r->io)
    rados_ioctx_destroy (r->io);
  rados_shutdown (r->cluster);
  free (r->where);
  free (r);
}

/* A configuration value for a message ("" if unset or too long). */
static const char *
conf_value (rados_t cl, const char *key, char *buf, size_t size)
{
  if (rados_conf_get (cl, key, buf, size) < 0)
    buf[0] = '\0';
  return buf;
}

static int
set_timeouts (rados_t cl, unsigned timeout)
{
  static const char *const keys[] = {
    /* connecting and authenticating to the monitors */
    "client_mount_timeout",
    /* monitor commands, waiting for an OSD map (pool lookup) */
    "rados_mon_op_timeout",
    /* every object operation, asynchronous ones included: an op
     * against a dead OSD otherwise waits until it comes back.
     */
    "rados_osd_op_timeout",
  };
  char v[32];
  size_t i;
  int r;

  snprintf (v, sizeof v, "%u", timeout);
  for (i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    r = rados_conf_set (cl, keys[i], v);
    if (r < 0) {
      backend_error ("cas: rados: cannot set %s: %s", keys[i],
                     strerror (-r));
      errno = -r;
      return -1;
    }
  }
  return 0;
}

static int
read_conf (rados_t cl, const char *conf)
{
  char mon[512];
  int r;

  r = rados_conf_read_file (cl, conf);
  if (r < 0) {
    const char *env = getenv ("CEPH_CONF");
    if (conf)
      backend_error ("cas: rados: cannot read the Ceph configuration %s: %s",
                     conf, strerror (-r));
    else if (env && *env)
      backend_error ("cas: rados: cannot read the Ceph configuration %s "
                     "(from CEPH_CONF): %s", env, strerror (-r));
    else
      backend_error ("cas: rados: no Ceph configuration found: CEPH_CONF "
                     "is not set and none of /etc/ceph/ceph.conf, "
                     "~/.ceph/config, ./ceph.conf can be read (give "
                     "ceph-conf=FILE)");
    errno = -r;
    return -1;
  }
  /* Without mon_host librados looks the monitors up in DNS: never send
   * traffic anywhere the configuration does not name.
   */
  if (*conf_value (cl, "mon_host", mon, sizeof mon) == '\0') {
    backend_error ("cas: rados: the Ceph configuration %s has no monitor "
                   "address (mon_host)", conf ? conf : "found");
    errno = EINVAL;
    return -1;
  }
  return 0;
}

static void
connect_error (rados_t cl, const char *name, unsigned timeout, int r)
{
  char buf[512];

  switch (-r) {
  case ETIMEDOUT:
    backend_error ("cas: rados: cannot reach the Ceph monitors (mon_host = "
                   "%s) within %u s", conf_value (cl, "mon_host", buf,
                                                  sizeof buf), timeout);
    break;
  case EACCES:
  case EPERM:
    backend_error ("cas: rados: the Ceph monitors refused the key of %s: "
                   "no key for it in the keyring, or a wrong one "
                   "(keyring = %s)", name,
                   conf_value (cl, "keyring", buf, sizeof buf));
    break;
  case ENOENT:
    backend_error ("cas: rados: no keyring found for %s (keyring = %s)",
                   name, conf_value (cl, "keyring", buf, sizeof buf));
    break;
  default:
    backend_error ("cas: rados: cannot connect to the Ceph cluster as %s: "
                   "%s", name, strerror (-r));
  }
}

/* One small read: the pool's OSDs answer and this client may use them.
 * Catches a down OSD or missing OSD capabilities at open time rather
 * than at the first write.
 */
static int
probe_osds (struct cas_rados *c, const char *name)
{
  uint64_t size;
  time_t mtime;
  int r;

  r = rados_stat (c->io, "nbdcas.probe", &size, &mtime);
  if (r == 0 || r == -ENOENT)
    return 0;
  switch (-r) {
  case ETIMEDOUT:
    backend_error ("cas: rados: the OSDs of %s did not answer within %u s",
                   c->where, c->timeout);
    break;
  case EPERM:
  case EACCES:
    backend_error ("cas: rados: %s may not read %s (its OSD capabilities)",
                   name, c->where);
    break;
  case ESHUTDOWN:
    backend_error ("cas: rados: %s: this client is blocklisted", c->where);
    break;
  default:
    backend_error ("cas: rados: %s: reading from the OSDs: %s", c->where,
                   strerror (-r));
  }
  errno = -r;
  return -1;
}

struct cas_rados *
cas_rados_connect (const struct cas_rados_params *p)
{
  struct cas_rados *c = NULL;
  char *pool = NULL, *name = NULL;
  const char *ns = NULL, *user;
  char *slash;
  int r, saved;

  if (p->pool == NULL || p->pool[0] == '\0' || p->pool[0] == '/') {
    backend_error ("cas: rados: the pool name is empty (expected "
                   "POOL or POOL/NAMESPACE)");
    errno = EINVAL;
    return NULL;
  }
  user = p->user ? p->user : CAS_RADOS_DEFAULT_USER;
  if (user[0] == '\0' || strcmp (user, "client.") == 0) {
    backend_error ("cas: rados: the Ceph user name is empty");
    errno = EINVAL;
    return NULL;
  }
  pool = strdup (p->pool);
  if (pool == NULL)
    goto err;
  slash = strchr (pool, '/');
  if (slash) {
    *slash = '\0';
    ns = slash + 1;
    if (*ns == '\0') {
      backend_error ("cas: rados: '%s': the namespace after '/' is empty",
                     p->pool);
      errno = EINVAL;
      goto err;
    }
  }
  if (asprintf (&name, "%s%s", strncmp (user, "client.", 7) == 0 ? ""
                : "client.", user) == -1) {
    name = NULL;
    goto err;
  }

  c = calloc (1, sizeof *c);
  if (c == NULL)
    goto err;
  c->timeout = p->timeout ? p->timeout : CAS_RADOS_DEFAULT_TIMEOUT;
  if ((ns && asprintf (&c->where, "pool '%s' namespace '%s'", pool, ns) == -1)
      || (!ns && asprintf (&c->where, "pool '%s'", pool) == -1)) {
    c->where = NULL;
    free (c);
    c = NULL;
    goto err;
  }
  r = rados_create2 (&c->cluster, "ceph", name, 0);
  if (r < 0) {
    backend_error ("cas: rados: cannot create a librados client for %s: %s",
                   name, strerror (-r));
    free (c->where);
    free (c);
    c = NULL;
    errno = -r;
    goto err;
  }
  if (read_conf (c->cluster, p->conf) == -1 ||
      set_timeouts (c->cluster, c->timeout) == -1)
    goto err;
  r = rados_connect (c->cluster);
  if (r < 0) {
    connect_error (c->cluster, name, c->timeout, r);
    errno = -r;
    goto err;
  }
  r = rados_ioctx_create (c->cluster, pool, &c->io);
  if (r < 0) {
    c->io = NULL;
    if (r == -ENOENT)
      backend_error ("cas: rados: pool '%s' does not exist", pool);
    else if (r == -ETIMEDOUT)
      backend_error ("cas: rados: opening pool '%s': the monitors did not "
                     "answer within %u s", pool, c->timeout);
    else
      backend_error ("cas: rados: cannot open pool '%s': %s", pool,
                     strerror (-r));
    errno = -r;
    goto err;
  }
  if (ns)
    rados_ioctx_set_namespace (c->io, ns);
  if (probe_osds (c, name) == -1)
    goto err;
  backend_debug ("cas: rados: connected as %s to %s", name, c->where);
  free (pool);
  free (name);
  return c;

 err:
  saved = errno ? errno : EIO;
  cas_rados_disconnect (c);
  free (pool);
  free (name);
  errno = saved;
  return NULL;
}
