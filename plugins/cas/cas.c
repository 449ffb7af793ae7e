/* The cas backend: the store (store.h) behind the backend API
 * (common/backend.h), for nbdkit and minnbd alike.
 *
 * Parameters are parsed in config; config_complete creates the store and
 * the default volume if asked (size=), grows the default volume if size=
 * is larger, and opens the store (it stays open, and locked, until
 * unload).  A RADOS store (store=rados:POOL[/NAMESPACE]) is closed again
 * at the end of config_complete and reopened in after_fork: librados's
 * threads would not survive the fork into the background.  Each connection opens its volume (export name, "" = the
 * default volume); connections to one volume share one volume object, so
 * a flush on any connection commits every connection's writes: hence
 * can_multi_conn.
 *
 * Thread safety: the store is thread-safe; the handle is immutable after
 * open.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "control.h"
#include "extent.h"
#include "minmax.h"
#include "parse.h"
#include "store.h"

static char *store_dir;
static int64_t want_size = -1;       /* size=, -1: not given */
static uint32_t want_bs;             /* blocksize=, 0: not given */
static struct cas_compression want_comp;  /* compression= */
static bool comp_given;              /* compression= was given */
static uint32_t want_format;         /* format=, 0: not given */
static char *default_volume;         /* volume=, or DEFAULT_VOLUME */
static bool volume_given;            /* volume= was given */
static bool default_missing;         /* no such volume: "" is refused */
static bool readonly_param;          /* readonly= */
static bool store_readonly;          /* readonly= or the server's -r */
static enum cas_verify verify = CAS_VERIFY_CHECKSUM;
static uint64_t map_cache;           /* mapcache=, 0: the default */
static int64_t dirty_cache = -1;     /* dirtycache=, -1: the default */
static struct cas_store *store;
static struct cas_control *control;  /* admin commands while serving */
/* A RADOS store: ceph-conf=, ceph-user=, ceph-timeout=, lease=,
 * takeover= (the strings are owned here).
 */
static struct cas_ceph_options ceph;
static bool ceph_given;              /* one of them was given */
static struct cas_open_options open_opts;

/* gc=auto: a background thread collects garbage when enough was
 * overwritten (see autogc_thread).
 */
static bool gc_auto = true;
static uint64_t gc_auto_min = UINT64_C (256) * 1024 * 1024;  /* gc-min= */
static pthread_t gc_thread;
static bool gc_running;
static pthread_mutex_t gc_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gc_cond = PTHREAD_COND_INITIALIZER;
static bool gc_stop;                 /* under gc_mutex */
static double gc_pace_t0;            /* the collection thread's own */

#define DEFAULT_VOLUME "default"

struct handle {
  struct cas_volume *vol;
  bool readonly;
};

static void autogc_stop (void);

static void
cas_unload (void)
{
  autogc_stop ();
  cas_control_close (control);
  control = NULL;
  if (store && cas_store_close (store) == -1)
    backend_error ("cas: closing the store failed: some data may not be "
                   "durable");
  store = NULL;
  free (store_dir);
  free (default_volume);
  free ((char *) ceph.conf);
  free ((char *) ceph.user);
}

static int
set_string (char **dst, const char *key, const char *value)
{
  if (*dst) {
    backend_error ("cas: %s= given twice", key);
    errno = EINVAL;
    return -1;
  }
  *dst = strdup (value);
  return *dst ? 0 : -1;
}

static int
cas_config (const char *key, const char *value)
{
  if (strcmp (key, "store") == 0) {
    if (store_dir) {
      backend_error ("cas: store= given twice");
      errno = EINVAL;
      return -1;
    }
    /* A pool is not a path. */
    if (cas_store_name_is_rados (value))
      return set_string (&store_dir, key, value);
    /* Absolute now: nbdkit changes to / when it goes to the background. */
    return parse_path (key, value, &store_dir);
  }
  if (strcmp (key, "ceph-conf") == 0) {
    ceph_given = true;
    if (ceph.conf) {
      backend_error ("cas: %s= given twice", key);
      errno = EINVAL;
      return -1;
    }
    return parse_path (key, value, (char **) &ceph.conf);
  }
  if (strcmp (key, "ceph-user") == 0) {
    ceph_given = true;
    if (value[0] == '\0') {
      backend_error ("cas: ceph-user= is empty: give a cephx user name "
                     "(default: admin)");
      errno = EINVAL;
      return -1;
    }
    return set_string ((char **) &ceph.user, key, value);
  }
  if (strcmp (key, "ceph-timeout") == 0 || strcmp (key, "lease") == 0) {
    uint64_t n;
    bool lease = key[0] == 'l';
    ceph_given = true;
    if (parse_uint (key, value, 1, 3600, &n) == -1)
      return -1;
    if (lease && n < CAS_CEPH_MIN_LEASE) {
      backend_error ("cas: lease=%s: a lease is at least %d seconds (it is "
                     "renewed every third of it)", value, CAS_CEPH_MIN_LEASE);
      errno = EINVAL;
      return -1;
    }
    *(lease ? &ceph.lease : &ceph.timeout) = n;
    return 0;
  }
  if (strcmp (key, "takeover") == 0) {
    ceph_given = true;
    if (strcmp (value, "no") == 0)
      ceph.takeover = CAS_TAKEOVER_NO;
    else if (strcmp (value, "wait") == 0)
      ceph.takeover = CAS_TAKEOVER_WAIT;
    else if (strcmp (value, "force") == 0)
      ceph.takeover = CAS_TAKEOVER_FORCE;
    else {
      backend_error ("cas: takeover=%s: must be no, wait or force", value);
      errno = EINVAL;
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "size") == 0)
    return parse_size_range (key, value, 1, CAS_MAX_VOLUME_SIZE, &want_size);
  if (strcmp (key, "blocksize") == 0) {
    int64_t bs;
    if (parse_size (key, value, &bs) == -1 ||
        cas_blocksize_check (key, bs) == -1)
      return -1;
    want_bs = bs;
    return 0;
  }
  if (strcmp (key, "compression") == 0) {
    if (cas_compression_parse ("cas: compression", value, &want_comp) == -1)
      return -1;
    comp_given = true;
    return 0;
  }
  if (strcmp (key, "format") == 0) {
    /* The rest of the rule (RADOS, block size) once all are known. */
    if (strcmp (value, "2") == 0)
      want_format = CAS_FORMAT_VERSION;
    else if (strcmp (value, "4") == 0)
      want_format = CAS_FORMAT_VERSION_UNITS;
    else {
      backend_error ("cas: format=%s: a new store is created at format 2 "
                     "(the default) or 4 (experimental: 4 KiB dedup units)",
                     value);
      errno = EINVAL;
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "volume") == 0) {
    /* A volume, or a snapshot VOLUME@SNAP (then served read-only). */
    const char *at = strchr (value, '@');
    if (at) {
      char vol[CAS_VOLUME_NAME_MAX + 1];
      size_t n = at - value;
      if (n == 0 || n > CAS_VOLUME_NAME_MAX) {
        backend_error ("cas: volume=%s: a snapshot is named VOLUME@SNAP",
                       value);
        errno = EINVAL;
        return -1;
      }
      memcpy (vol, value, n);
      vol[n] = '\0';
      if (cas_volume_name_check (vol) == -1 ||
          cas_snapshot_name_check (at + 1) == -1)
        return -1;
    }
    else if (cas_volume_name_check (value) == -1)
      return -1;
    volume_given = true;
    return set_string (&default_volume, key, value);
  }
  if (strcmp (key, "readonly") == 0)
    return parse_bool (key, value, &readonly_param);
  if (strcmp (key, "mapcache") == 0) {
    int64_t n;
    if (parse_size_range (key, value, 1024 * 1024, INT64_C (1) << 40,
                          &n) == -1)
      return -1;
    map_cache = n;
    return 0;
  }
  if (strcmp (key, "gc") == 0) {
    if (strcmp (value, "off") == 0)
      gc_auto = false;
    else if (strcmp (value, "auto") == 0)
      gc_auto = true;
    else {
      backend_error ("cas: gc=%s: must be off or auto", value);
      errno = EINVAL;
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "gc-min") == 0) {
    int64_t n;
    if (parse_size_range (key, value, 1024 * 1024, INT64_C (1) << 50,
                          &n) == -1)
      return -1;
    gc_auto_min = n;
    return 0;
  }
  if (strcmp (key, "dirtycache") == 0)
    /* 0: none; the store's block size sets the smallest other size. */
    return parse_size_range (key, value, 0, INT64_C (1) << 40, &dirty_cache);
  if (strcmp (key, "verify") == 0) {
    if (strcmp (value, "off") == 0)
      verify = CAS_VERIFY_OFF;
    else if (strcmp (value, "checksum") == 0)
      verify = CAS_VERIFY_CHECKSUM;
    else if (strcmp (value, "full") == 0)
      verify = CAS_VERIFY_FULL;
    else {
      backend_error ("cas: verify=%s: must be off, checksum or full", value);
      errno = EINVAL;
      return -1;
    }
    return 0;
  }
  backend_error ("cas: unknown parameter '%s' (see --help)", key);
  errno = EINVAL;
  return -1;
}

/* Why the store cannot be written, for messages. */
static const char *
readonly_reason (void)
{
  return readonly_param ? "readonly=true" : "the server runs read-only (-r)";
}

/* The volume names for a message: "'a', 'b', ..." (cut short). */
struct name_list {
  char s[256];
};

static int
list_one (const char *name, void *opaque)
{
  struct name_list *l = opaque;
  size_t used = strlen (l->s);

  if (used < sizeof l->s - 56)
    snprintf (l->s + used, sizeof l->s - used, "%s'%.40s'",
              used ? ", " : "", name);
  else if (strcmp (l->s + used - 3, "...") != 0)
    snprintf (l->s + used, sizeof l->s - used, ", ...");
  return 0;
}

/* The default export's volume: create or grow it with size=, or check
 * it exists.  Without volume= and size=, a store with no volume named
 * "default" is still served: every volume under its own name, and the
 * default export refused with a message naming them (cas_open).
 */
static int
prepare_default_volume (void)
{
  uint64_t old;

  if (strchr (default_volume, '@') && want_size >= 0) {
    backend_error ("cas: size= cannot create or grow %s: it is a snapshot "
                   "(read-only)", default_volume);
    errno = EINVAL;
    return -1;
  }
  switch (cas_volume_exists (store, default_volume)) {
  case -1:
    return -1;
  case 0:
    if (want_size >= 0) {
      if (store_readonly) {
        backend_error ("cas: cannot create volume '%s' (size=): the store "
                       "is opened read-only (%s); create it with nbdcas "
                       "create, or serve it writable", default_volume,
                       readonly_reason ());
        errno = EROFS;
        return -1;
      }
      return cas_volume_create (store, default_volume, want_size);
    }
    if (volume_given) {
      struct name_list names = { "" };
      cas_store_list_volumes (store, list_one, &names);
      backend_error ("cas: store %s has no volume '%s' (its volumes: %s); "
                     "add size=SIZE to create it", store_dir, default_volume,
                     names.s[0] ? names.s : "none");
      errno = ENOENT;
      return -1;
    }
    default_missing = true;
    backend_debug ("cas: store %s has no volume '%s': the default export "
                   "is refused, the others are served by name", store_dir,
                   default_volume);
    return 0;
  }
  if (want_size < 0)
    return 0;
  if (store_readonly) {
    struct cas_volume *v = cas_volume_open (store, default_volume);
    uint64_t cur;
    if (v == NULL)
      return -1;
    cur = cas_volume_size (v);
    cas_volume_close (v);
    if ((uint64_t) want_size > cur) {
      backend_error ("cas: cannot grow volume '%s' to size=%" PRIi64 ": the "
                     "store is opened read-only (%s)", default_volume,
                     want_size, readonly_reason ());
      errno = EROFS;
      return -1;
    }
    old = cur;
  }
  else if (cas_volume_grow_to (store, default_volume, want_size, false,
                               &old) == -1)
    return -1;
  if (old > (uint64_t) want_size) {
    backend_error ("cas: volume '%s' is %" PRIu64 " bytes; size=%" PRIi64
                   " would shrink it, which is not supported",
                   default_volume, old, want_size);
    errno = EINVAL;
    return -1;
  }
  if (old < (uint64_t) want_size)
    backend_debug ("cas: grew volume %s from %" PRIu64 " to %" PRIi64,
                   default_volume, old, want_size);
  return 0;
}

/* dirtycache= against the block size (of the store, or of the store
 * about to be created: checked first, so a bad value creates nothing).
 */
static int
check_dirty_cache (uint32_t bs)
{
  char v[32], what[64];

  if (dirty_cache <= 0)
    return 0;
  format_size (dirty_cache, v);
  snprintf (what, sizeof what, "cas: dirtycache=%s", v);
  return cas_dirty_cache_check (what, dirty_cache, bs);
}

static int
cas_config_complete (void)
{
  struct cas_open_options opts = { .ceph = &ceph };
  bool rados;
  int exists;

  if (store_dir == NULL) {
    backend_error ("cas: store=DIR is required (or "
                   "store=rados:POOL[/NAMESPACE])");
    errno = EINVAL;
    return -1;
  }
  rados = cas_store_name_is_rados (store_dir);
  if (ceph_given && !rados) {
    backend_error ("cas: ceph-conf=, ceph-user=, ceph-timeout=, lease= and "
                   "takeover= are for a RADOS store "
                   "(store=rados:POOL[/NAMESPACE]), not for %s", store_dir);
    errno = EINVAL;
    return -1;
  }
  if (default_volume == NULL && (default_volume = strdup (DEFAULT_VOLUME)) == NULL)
    return -1;
  /* A read-only server must not write to the store at all: shared lock,
   * no repair of a torn tail, no index cache write.
   */
  store_readonly = readonly_param || backend_server_readonly ();
  if (cas_store_compression_check (store_dir, &want_comp) == -1 ||
      cas_store_format_check ("cas: format", store_dir, want_format,
                              want_bs) == -1)
    return -1;
  exists = cas_store_exists_opts (store_dir, &opts);
  if (exists == -1)
    return -1;
  if (exists == 0) {
    if (want_size < 0) {
      backend_error ("cas: %s is not a cas store; add size=SIZE to create "
                     "one (or use nbdcas create)", store_dir);
      errno = ENOENT;
      return -1;
    }
    if (store_readonly) {
      backend_error ("cas: cannot create store %s: the store is opened "
                     "read-only (%s)", store_dir, readonly_reason ());
      errno = EROFS;
      return -1;
    }
    opts.compression = comp_given ? want_comp
      : cas_store_default_compression (store_dir);
    opts.format = want_format;
    if (check_dirty_cache (want_bs ? want_bs : CAS_DEFAULT_BLOCKSIZE) == -1 ||
        cas_store_create_opts (store_dir, want_bs, &opts) == -1)
      return -1;
    backend_debug ("cas: created store %s", store_dir);
  }
  opts.readonly = store_readonly;
  opts.verify = verify;
  opts.map_cache = map_cache;
  opts.dirty_cache = dirty_cache > 0 ? dirty_cache : 0;
  opts.write_through = dirty_cache == 0;
  store = cas_store_open (store_dir, &opts);
  if (store == NULL)
    return -1;
  if (check_dirty_cache (cas_store_blocksize (store)) == -1)
    return -1;
  if (exists && want_bs && want_bs != cas_store_blocksize (store)) {
    backend_error ("cas: blocksize=%" PRIu32 " differs from the store's "
                   "block size %" PRIu32 " (it is fixed when the store is "
                   "created)", want_bs, cas_store_blocksize (store));
    errno = EINVAL;
    return -1;
  }
  if (exists && comp_given) {
    struct cas_compression have = cas_store_compression (store);
    char w[CAS_COMPRESSION_NAME_LEN], h[CAS_COMPRESSION_NAME_LEN];

    if (!cas_compression_equal (&want_comp, &have)) {
      backend_error ("cas: compression=%s differs from the store's "
                     "compression %s (it is fixed when the store is "
                     "created)", cas_compression_name (&want_comp, w),
                     cas_compression_name (&have, h));
      errno = EINVAL;
      return -1;
    }
  }
  /* An existing store keeps its version (format= is for creating). */
  if (exists && want_format &&
      want_format != cas_store_format_version (store))
    backend_debug ("cas: format=%" PRIu32 " ignored: the store exists, at "
                   "format %" PRIu32, want_format,
                   cas_store_format_version (store));
  if (prepare_default_volume () == -1)
    return -1;
  open_opts = opts;
  /* RADOS: opened again in the serving process (after_fork).  No
   * control socket: nbdcas works on a RADOS store directly, beside any
   * number of servers.
   */
  if (rados) {
    int r = cas_store_close (store);
    store = NULL;
    return r;
  }
  /* A writer holds the store alone: nbdcas commands on it then run here,
   * through the store's control socket.  Without one the server still
   * serves; only admin commands need it stopped.
   */
  if (!store_readonly) {
    control = cas_control_open (store);
    if (control == NULL)
      backend_error ("cas: no control socket: nbdcas commands on %s will "
                     "need the server stopped", store_dir);
  }
  return 0;
}

/* ---- automatic garbage collection (gc=auto) ----
 *
 * Every few seconds the thread looks at what was overwritten since the
 * last collection (cas_store_garbage_hint, an upper bound of what a
 * collection would give back); past a quarter of the stored bytes and
 * gc-min= (256M), it collects, taking a fifth of the time for itself:
 * after each pack it waits four times as long as the pack took, so
 * clients keep most of the disk and the CPU.
 *
 * That fifth is not enough when clients overwrite faster than a fifth of
 * a collection gives back (bench/gc-soak.py: a 1 GiB volume overwritten
 * at random at 20 MB/s grew by 4 GiB a minute, each 1 GiB pack taking
 * half a minute under load and earning two minutes of rest).  So the
 * rest shrinks as garbage takes over the store: none at all once three
 * quarters of it are garbage.  The disk is then bounded by how fast a
 * collection at full speed can copy, not by a fixed share.
 */
#define AUTOGC_PERIOD 5                 /* seconds between looks */
#define AUTOGC_SHARE 4                  /* collect past 1/4 of the store */
#define AUTOGC_WAIT 4                   /* wait 4x the work: 20% duty */
#define AUTOGC_CALM 0.50                /* full rest up to this garbage share */
#define AUTOGC_URGENT 0.75              /* no rest from this share on */

static double
now_mono (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Wait secs or until stopped: -1 if stopped. */
static int
autogc_wait (double secs)
{
  struct timespec until;
  int r = 0;

  clock_gettime (CLOCK_REALTIME, &until);
  until.tv_sec += (time_t) secs;
  until.tv_nsec += (long) ((secs - (time_t) secs) * 1e9);
  if (until.tv_nsec >= 1000000000) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000;
  }
  pthread_mutex_lock (&gc_mutex);
  while (!gc_stop &&
         pthread_cond_timedwait (&gc_cond, &gc_mutex, &until) == 0)
    ;
  if (gc_stop)
    r = -1;
  pthread_mutex_unlock (&gc_mutex);
  return r;
}

/* One collection of the thread's: what its pacing needs to estimate how
 * much of the store is garbage while it runs.
 */
struct autogc_run {
  struct cas_gc_stats gs;               /* filled in by the collection */
  uint64_t stored0, chunks0;            /* the store when it began */
};

/* The records a collection's marked_chunks is a share of: the chunks
 * of the index, and in a format-4 store the extents (the mark counts
 * live extents as chunks; the index holds only map nodes there).
 */
static uint64_t
autogc_records (const struct cas_store_stats *ss)
{
  struct cas_extents *ext = cas_packstore_extents (cas_store_chunks (store));
  struct cas_extents_stats es;

  if (ext == NULL)
    return ss->chunks.chunks;
  cas_extents_stats (ext, &es);
  return ss->chunks.chunks + es.extents;
}

/* The share of the store's bytes that is garbage now, estimated: what
 * the mark left unreferenced (chunks not marked, at the store's average
 * chunk size), less what the sweep gave back so far, plus what clients
 * overwrote since the mark.  0 before the mark is done.
 */
static double
autogc_garbage_share (const struct autogc_run *run)
{
  struct cas_store_stats ss;
  double live, garbage, freed;

  if (run->gs.marked_chunks == 0 || run->chunks0 == 0)
    return 0;
  live = (double) run->gs.marked_chunks * run->stored0 / run->chunks0;
  garbage = run->stored0 > live ? run->stored0 - live : 0;
  freed = run->gs.bytes_freed > run->gs.bytes_copied ?
    run->gs.bytes_freed - run->gs.bytes_copied : 0;
  garbage = garbage > freed ? garbage - freed : 0;
  garbage += cas_store_garbage_hint (store);
  if (cas_store_stat (store, &ss) == -1 || ss.chunks.stored_bytes == 0)
    return 0;
  return MIN (1.0, garbage / ss.chunks.stored_bytes);
}

/* How long to rest per second worked: AUTOGC_WAIT while garbage is at
 * most AUTOGC_CALM of the store, down to nothing at AUTOGC_URGENT.
 */
static double
autogc_rest_factor (double garbage_share)
{
  if (garbage_share <= AUTOGC_CALM)
    return AUTOGC_WAIT;
  if (garbage_share >= AUTOGC_URGENT)
    return 0;
  return AUTOGC_WAIT * (AUTOGC_URGENT - garbage_share) /
    (AUTOGC_URGENT - AUTOGC_CALM);
}

static int
autogc_pace (void *opaque)
{
  const struct autogc_run *run = opaque;
  double t = now_mono (), worked = t - gc_pace_t0;
  double share = autogc_garbage_share (run);
  double rest = autogc_rest_factor (share);
  int r;

  backend_debug ("cas: gc=auto: %.1f s worked, garbage about %.0f%% of "
                 "the store: resting %.1f s", worked, share * 100,
                 worked * rest);
  r = autogc_wait (worked * rest);
  gc_pace_t0 = now_mono ();
  return r;
}

static void *
autogc_thread (void *arg)
{
  pthread_setname_np (pthread_self (), "bg:cas-gc");
  while (autogc_wait (AUTOGC_PERIOD) == 0) {
    struct cas_store_stats ss;
    struct autogc_run run = { 0 };
    struct cas_gc_options o = {
      .max_unused_pct = 5, .pace = autogc_pace, .opaque = &run,
    };
    struct cas_gc_stats *gs = &run.gs;
    uint64_t hint = cas_store_garbage_hint (store);

    if (hint < gc_auto_min || cas_store_stat (store, &ss) == -1 ||
        hint < ss.chunks.stored_bytes / AUTOGC_SHARE)
      continue;
    backend_debug ("cas: gc=auto: %" PRIu64 " bytes overwritten, %" PRIu64
                   " stored: collecting", hint, ss.chunks.stored_bytes);
    run.stored0 = ss.chunks.stored_bytes;
    run.chunks0 = autogc_records (&ss);
    gc_pace_t0 = now_mono ();
    if (cas_store_gc (store, &o, gs) == -1) {
      if (errno != ECANCELED && errno != EBUSY)
        backend_error ("cas: gc=auto: the collection failed (it will be "
                       "tried again)");
      continue;
    }
    backend_debug ("cas: gc=auto: %" PRIu64 " packs removed, %" PRIu64
                   " rewritten, %" PRIu64 " bytes copied", gs->packs_deleted,
                   gs->packs_rewritten, gs->bytes_copied);
  }
  return NULL;
}

static void
autogc_stop (void)
{
  if (!gc_running)
    return;
  pthread_mutex_lock (&gc_mutex);
  gc_stop = true;
  pthread_cond_broadcast (&gc_cond);
  pthread_mutex_unlock (&gc_mutex);
  pthread_join (gc_thread, NULL);
  gc_running = false;
}

/* The serving process: start the control socket's and the collector's
 * threads.
 */
static int
cas_after_fork (void)
{
  int err;

  /* A RADOS store: opened here, in the serving process. */
  if (store == NULL &&
      (store = cas_store_open (store_dir, &open_opts)) == NULL)
    return -1;
  if (cas_control_start (control) == -1)
    return -1;
  /* A RADOS store is collected by nbdcas gc from one host: a collection
   * lists the whole pool, not something every server should start.
   */
  if (gc_auto && !store_readonly && cas_store_is_local (store)) {
    err = pthread_create (&gc_thread, NULL, autogc_thread, NULL);
    if (err) {
      errno = err;
      backend_error ("cas: gc=auto: cannot start its thread: %m");
      return -1;
    }
    gc_running = true;
  }
  return 0;
}

struct list_ctx {
  struct backend_exports *exports;
};

static int
add_snapshot (const char *name, void *opaque)
{
  struct list_ctx *c = opaque;
  struct cas_root r;
  char desc[128], when[32] = "?";
  struct tm tm;
  time_t t;

  if (cas_root_get (store, name, false, &r) == 0) {
    t = r.mtime;
    if (gmtime_r (&t, &tm) == NULL ||
        strftime (when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
      snprintf (when, sizeof when, "@%" PRIu64, r.mtime);
  }
  snprintf (desc, sizeof desc, "snapshot taken %s (read-only)", when);
  return backend_add_export (c->exports, name, desc);
}

/* A volume, then its snapshots (VOLUME@SNAP). */
static int
add_one (const char *name, void *opaque)
{
  struct list_ctx *c = opaque;

  if (backend_add_export (c->exports, name, NULL) == -1)
    return -1;
  if (strchr (name, '@'))
    return 0;                   /* a volume named before snapshots */
  return cas_store_list_snapshots (store, name, add_snapshot, c);
}

static int
cas_list_exports (bool readonly, struct backend_exports *exports)
{
  struct list_ctx c = { exports };
  return cas_store_list_volumes (store, add_one, &c);
}

static const char *
cas_default_export (bool readonly)
{
  return default_missing ? "" : default_volume;
}

static void *
cas_open (const char *exportname, bool readonly)
{
  const char *name = exportname[0] ? exportname : default_volume;
  struct handle *h;

  if (!exportname[0] && default_missing &&
      cas_volume_exists (store, default_volume) != 1) {
    struct name_list names = { "" };
    cas_store_list_volumes (store, list_one, &names);
    backend_error ("cas: store %s has no volume '%s' to serve as the "
                   "default export; connect to a volume by its export name "
                   "(%s), or start the server with volume=NAME", store_dir,
                   default_volume, names.s[0] ? names.s : "the store has none");
    errno = ENOENT;
    return NULL;
  }
  h = malloc (sizeof *h);
  if (h == NULL)
    return NULL;
  h->vol = cas_volume_open (store, name);
  if (h->vol == NULL) {
    int saved = errno;
    free (h);
    errno = saved;
    return NULL;
  }
  /* A snapshot is served read-only: the read-only flag is set, and
   * writes are refused (EPERM) by the front end.
   */
  h->readonly = readonly || store_readonly || cas_volume_readonly (h->vol);
  return h;
}

static void
cas_close (void *handle)
{
  struct handle *h = handle;

  cas_volume_close (h->vol);
  free (h);
}

static int64_t
cas_get_size (void *handle)
{
  struct handle *h = handle;
  return cas_volume_size (h->vol);
}

static int
cas_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                uint32_t *maximum)
{
  struct handle *h = handle;

  /* Any size works (partial blocks are read-modify-write), whole blocks
   * avoid the read.
   */
  *minimum = 1;
  *preferred = cas_volume_blocksize (h->vol);
  *maximum = 0xffffffff;
  return 0;
}

static int
cas_can_write (void *handle)
{
  struct handle *h = handle;
  return !h->readonly;
}

static int cas_yes (void *handle) { return 1; }
static int cas_no (void *handle) { return 0; }
static int cas_can_fua (void *handle) { return BACKEND_FUA_NATIVE; }
static int cas_can_cache (void *handle) { return BACKEND_CACHE_NATIVE; }

static int
cas_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
           uint32_t flags)
{
  struct handle *h = handle;
  return cas_volume_read (h->vol, buf, count, offset);
}

static int
cas_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  struct handle *h = handle;
  return cas_volume_write (h->vol, buf, count, offset,
                           flags & BACKEND_FLAG_FUA);
}

static int
cas_flush (void *handle, uint32_t flags)
{
  struct handle *h = handle;
  return cas_volume_flush (h->vol);
}

/* Trim and write-zeroes are the same here: unmapping a block is both the
 * cheapest and the exact way to make it read as zeros.  So FAST_ZERO is
 * always honoured.
 */
static int
cas_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  return cas_volume_zero (h->vol, count, offset, flags & BACKEND_FLAG_FUA);
}

struct extents_ctx {
  struct backend_extents *extents;
  bool one;
};

static int
add_extent (uint64_t off, uint64_t len, bool mapped, void *opaque)
{
  struct extents_ctx *c = opaque;

  if (backend_add_extent (c->extents, off, len,
                          mapped ? 0
                          : BACKEND_EXTENT_HOLE | BACKEND_EXTENT_ZERO) == -1)
    return -1;
  return c->one ? 1 : 0;
}

static int
cas_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
             struct backend_extents *extents)
{
  struct handle *h = handle;
  struct extents_ctx c = { extents, flags & BACKEND_FLAG_REQ_ONE };
  return cas_volume_extents (h->vol, count, offset, add_extent, &c);
}

static int
cas_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  return cas_volume_prefetch (h->vol, count, offset);
}

/* ---- the nbdcas:changed:SNAP metadata context (minnbd) ----
 *
 * On the export of a volume, or of a snapshot or clone of it: flag bit 0
 * set where a block differs from the same block of snapshot SNAP, which
 * is a snapshot of the export's volume (SNAP), or any snapshot of the
 * store (VOLUME@SNAP).  An incremental backup reads only those.
 */
#define CHANGED_PREFIX "nbdcas:changed:"

/* The volume an export belongs to: "vm1" for "vm1" and "vm1@s". */
static void
export_volume (const char *exportname, char vol[CAS_VOLUME_NAME_MAX + 1])
{
  const char *name = exportname[0] ? exportname : default_volume;
  size_t n = strcspn (name, "@");

  if (n > CAS_VOLUME_NAME_MAX)
    n = CAS_VOLUME_NAME_MAX;
  memcpy (vol, name, n);
  vol[n] = '\0';
}

/* The root SNAP names (after the prefix), for the export's volume. */
static int
changed_base (const char *exportname, const char *snap, struct cas_root *r)
{
  char vol[CAS_VOLUME_NAME_MAX + 1], full[2 * CAS_VOLUME_NAME_MAX + 2];

  if (strchr (snap, '@') == NULL) {
    export_volume (exportname, vol);
    snprintf (full, sizeof full, "%s@%s", vol, snap);
    snap = full;
  }
  if (cas_volume_exists (store, snap) != 1) {
    errno = ENOENT;
    return -1;
  }
  return cas_root_get (store, snap, false, r);
}

struct meta_list {
  int (*add) (const char *, void *);
  void *opaque;
};

static int
meta_list_one (const char *name, void *opaque)
{
  struct meta_list *l = opaque;
  char ctx[sizeof CHANGED_PREFIX + CAS_VOLUME_NAME_MAX];
  const char *at = strchr (name, '@');

  snprintf (ctx, sizeof ctx, "%s%s", CHANGED_PREFIX, at ? at + 1 : name);
  return l->add (ctx, l->opaque);
}

static int
cas_meta_contexts (const char *exportname, const char *query,
                   int (*add) (const char *, void *), void *opaque)
{
  char vol[CAS_VOLUME_NAME_MAX + 1];
  struct meta_list l = { add, opaque };
  struct cas_root r;
  size_t n;

  /* Listing: every snapshot of the export's volume, for a NULL query or
   * one that is a prefix of the context's names ("nbdcas:").
   */
  n = query ? strlen (query) : 0;
  if (query == NULL ||
      (n > 0 && query[n - 1] == ':' &&
       strncmp (CHANGED_PREFIX, query, n) == 0)) {
    export_volume (exportname, vol);
    if (cas_volume_name_check (vol) == -1)
      return 0;
    return cas_store_list_snapshots (store, vol, meta_list_one, &l);
  }
  if (strncmp (query, CHANGED_PREFIX, strlen (CHANGED_PREFIX)) != 0 ||
      query[strlen (CHANGED_PREFIX)] == '\0')
    return 0;
  if (changed_base (exportname, query + strlen (CHANGED_PREFIX), &r) == -1)
    return 0;                   /* not a context of ours: ignored */
  return add (query, opaque);
}

struct changed_ctx {
  struct backend_extents *extents;
  bool one;
};

static int
add_changed (uint64_t off, uint64_t len, bool changed, void *opaque)
{
  struct changed_ctx *c = opaque;

  if (backend_add_extent (c->extents, off, len, changed ? 1 : 0) == -1)
    return -1;
  return c->one ? 1 : 0;
}

static int
cas_meta_extents (void *handle, const char *name, uint32_t count,
                  uint64_t offset, uint32_t flags,
                  struct backend_extents *extents)
{
  struct handle *h = handle;
  struct changed_ctx c = { extents, flags & BACKEND_FLAG_REQ_ONE };
  struct cas_root r;

  if (strncmp (name, CHANGED_PREFIX, strlen (CHANGED_PREFIX)) != 0) {
    errno = EINVAL;
    return -1;
  }
  /* The snapshot may have been deleted since it was selected. */
  if (changed_base (cas_volume_name (h->vol), name + strlen (CHANGED_PREFIX),
                    &r) == -1) {
    backend_error ("cas: %s: the snapshot is gone", name);
    errno = EIO;
    return -1;
  }
  return cas_volume_changed (h->vol, &r, count, offset, add_changed, &c);
}

const struct backend cas_backend = {
  .name = "cas",
  .longname = "nbdcas content-addressed deduplicating store",
  .description = "Serve volumes of a deduplicating content-addressed store",
  .config_help =
  "store=DIR           (required) the store directory, or\n"
  "store=rados:POOL[/NAMESPACE]  a store in a Ceph RADOS pool\n"
  "ceph-conf=FILE      RADOS: ceph.conf (default: librados's search)\n"
  "ceph-user=NAME      RADOS: cephx user (default admin)\n"
  "ceph-timeout=SECS   RADOS: connecting and each operation (default 30)\n"
  "lease=SECS          RADOS: a writer's lease on its volume (default 30)\n"
  "takeover=no|wait|force  RADOS: a volume another writer holds\n"
  "size=SIZE           create the store / default volume if absent; grow it\n"
  "blocksize=SIZE      block size of a new store (4K..1M, default 64K)\n"
  "compression=off|lz4|zstd[:LEVEL]  how a new store compresses its\n"
  "                    data blocks (default off; zstd is zstd:3)\n"
  "format=2|4          format of a new store (default 2; 4: experimental,\n"
  "                    4 KiB dedup units, blocksize 4K..64K, local only)\n"
  "volume=NAME         the default volume (default: \"default\")\n"
  "readonly=BOOL       open the store read-only\n"
  "verify=off|checksum|full  check chunks on every read (default checksum)\n"
  "mapcache=SIZE       block map kept in memory per volume (default 64M)\n"
  "gc=off|auto         collect garbage in the background (default auto)\n"
  "gc-min=SIZE         ... once this much was overwritten (default 256M)\n"
  "dirtycache=SIZE     written blocks kept in memory per volume before they\n"
  "                    are hashed and stored (default 64M; 0: none)",
  .unload = cas_unload,
  .config = cas_config,
  .config_complete = cas_config_complete,
  .after_fork = cas_after_fork,
  .list_exports = cas_list_exports,
  .default_export = cas_default_export,
  .open = cas_open,
  .close = cas_close,
  .get_size = cas_get_size,
  .block_size = cas_block_size,
  .can_write = cas_can_write,
  .can_flush = cas_yes,
  .can_trim = cas_yes,
  .can_zero = cas_yes,
  .can_fast_zero = cas_yes,
  .can_fua = cas_can_fua,
  .can_multi_conn = cas_yes,
  .can_extents = cas_yes,
  .can_cache = cas_can_cache,
  .is_rotational = cas_no,
  .pread = cas_pread,
  .pwrite = cas_pwrite,
  .flush = cas_flush,
  .trim = cas_zero,
  .zero = cas_zero,
  .extents = cas_extents,
  .cache = cas_cache,
  .meta_contexts = cas_meta_contexts,
  .meta_extents = cas_meta_extents,
};
