/* The store's metadata in a RADOS pool: not written yet (the next
 * commit); until then a RADOS store name is refused.
 */
#include <config.h>

#include <errno.h>

#include "backend.h"
#include "meta.h"

static int
not_yet (const char *pool)
{
  backend_error ("cas: rados:%s: RADOS stores are not supported yet", pool);
  errno = ENOTSUP;
  return -1;
}

int
cas_meta_rados_exists (const char *pool, const struct cas_ceph_options *c)
{
  return not_yet (pool);
}

int
cas_meta_rados_create (const char *pool, const struct cas_ceph_options *c,
                       const struct cas_super *sb)
{
  return not_yet (pool);
}

struct cas_meta *
cas_meta_rados_open (const char *pool, const struct cas_ceph_options *c,
                     bool ro, struct cas_super *sb)
{
  not_yet (pool);
  return NULL;
}
