/* The cas store on Ceph RADOS (issue 14): the connection to a cluster and
 * the chunk store on it (FORMAT.md, "RADOS").
 *
 * Contract: cas_rados_connect() connects as one librados client to one
 * pool (and namespace) and checks that the pool exists and answers, all
 * within the timeout; every operation done through the connection is
 * bounded by the same timeout (librados's client_mount_timeout,
 * rados_mon_op_timeout and rados_osd_op_timeout are set from it), so
 * nothing waits forever on a dead cluster.  Errors are -1 / NULL with
 * errno set after a message through backend_error() that names what
 * failed: the configuration file, the monitors (unreachable: ETIMEDOUT),
 * the key (refused: EACCES), the pool (missing: ENOENT), the OSDs.
 *
 * The connection is shared: the chunk store and the metadata (meta-rados.c:
 * roots, leases) use its ioctx; it must outlive everything opened on it.
 *
 * Thread safety: a connection is immutable after cas_rados_connect();
 * librados ioctx operations may be issued from many threads at once.
 * The chunk store follows chunkstore.h (every operation from any thread).
 */
#ifndef NBDCAS_RADOS_H
#define NBDCAS_RADOS_H

#include <stdbool.h>
#include <stddef.h>

#include <rados/librados.h>

#include "chunkstore.h"

#define CAS_RADOS_DEFAULT_TIMEOUT 30      /* seconds */
#define CAS_RADOS_DEFAULT_USER "admin"
#define CAS_RADOS_DEFAULT_INFLIGHT 32     /* asynchronous writes */
#define CAS_RADOS_DEFAULT_CACHE (1u << 20) /* known chunk names (32 B each) */

struct cas_rados_params {
  /* "POOL" or "POOL/NAMESPACE" (the part after the first '/'). */
  const char *pool;
  /* ceph.conf to read; NULL: librados's own search (the file named by
   * $CEPH_CONF, else /etc/ceph/ceph.conf, ~/.ceph/config, ./ceph.conf).
   */
  const char *conf;
  /* cephx user, without "client." (which is accepted too); NULL: admin. */
  const char *user;
  /* Seconds for connecting and for each operation; 0: the default. */
  unsigned timeout;
};

struct cas_rados;

struct cas_rados *cas_rados_connect (const struct cas_rados_params *p);
void cas_rados_disconnect (struct cas_rados *r);

rados_ioctx_t cas_rados_ioctx (const struct cas_rados *r);
/* The client (blocklisting, the client's own id). */
rados_t cas_rados_cluster (const struct cas_rados *r);
/* "pool P" or "pool P namespace N", for messages. */
const char *cas_rados_where (const struct cas_rados *r);
unsigned cas_rados_timeout (const struct cas_rados *r);

/* Object names (FORMAT.md): "chunk." + 64 lower-case hex digits. */
#define CAS_RADOS_CHUNK_PREFIX "chunk."
#define CAS_RADOS_CHUNK_OID_MAX (sizeof CAS_RADOS_CHUNK_PREFIX + 64)

struct cas_radosstore_params {
  bool readonly;           /* never write (put fails with EROFS) */
  unsigned max_inflight;   /* asynchronous writes at once; 0: default */
  size_t cache_entries;    /* names known to be stored; 0: default */
};

/* The chunk store on conn's pool/namespace: one object per chunk, the
 * record header then the payload.  put() is asynchronous (sync() waits
 * for every write and reports the first that failed, after retrying it
 * once; *stored says whether a write was sent).  A chunk already in the
 * pool costs an exclusive create answered with EEXIST, a touch of the
 * object there (a new version: no collector removes it now) and a check
 * of it (its header and the OSD's CRC32C of its payload; a damaged one is
 * overwritten), once per process; nothing when this client knows it
 * already.  get() checks the record as the pack store
 * does.  close() syncs but does not disconnect.  Returns NULL with errno
 * set and a message.
 */
struct chunkstore *cas_radosstore_open (struct cas_rados *conn,
                                        const struct cas_radosstore_params *p);

/* Empty the known-names cache: from now on a put trusts only a chunk it
 * wrote or touched itself after this call (FORMAT.md, "Garbage collection
 * on RADOS": a collector asks every writer for this before it marks, and
 * a writer does it when it takes a lease).  The caller keeps puts whose
 * chunks are not referenced yet out of the way (the store's gc_gate).
 */
void cas_radosstore_forget_known (struct chunkstore *cs);

/* What the chunk store did (for tests, benchmarks and debug messages). */
struct cas_radosstore_counters {
  uint64_t sent;           /* writes sent (first attempts) */
  uint64_t written;        /* writes that stored a new object */
  uint64_t duplicates;     /* writes answered EEXIST, and the object there
                              checked good: stored already */
  uint64_t healed;         /* ... checked damaged: overwritten */
  uint64_t cache_hits;     /* puts the known-names cache answered */
  uint64_t failed;         /* write attempts that failed */
  uint64_t retried;        /* failed writes sent again by sync */
};
void cas_radosstore_counters (struct chunkstore *cs,
                              struct cas_radosstore_counters *c);

#endif /* NBDCAS_RADOS_H */
