/* chunkstore-driver: drive one chunk store (chunkstore.h) from commands on
 * stdin, for tests/test-rados-chunkstore.py and bench/rados.sh.
 *
 *   chunkstore-driver [-v] [-c CONF] [-u USER] [-t TIMEOUT] [-q INFLIGHT]
 *                     [-C CACHE] [-r] POOL[/NAMESPACE]     (RADOS)
 *   chunkstore-driver [-v] [-r] -P DIR                      (pack files)
 *
 * The store is opened first (an error there: its message on stderr, exit
 * 1).  Then one command per line; each answers one line on stdout,
 * "ok ..." or "error ERRNO-NAME (what)", and messages go to stderr:
 *
 *   put seed=S n=N len=L [first=F] [threads=T] [type=data|map]
 *       put chunks S/F .. S/F+N-1 (L pseudo-random bytes each, a function
 *       of S, the index and L, named by their SHA-256)
 *   get seed=S n=N len=L [first=F] [threads=T] [verify=off|checksum|full]
 *       read them back and compare ("error EBADMSG" if the bytes differ:
 *       wrong data, which must never happen)
 *   has seed=S n=N len=L [first=F] -> ok has=COUNT (how many present)
 *   sync
 *   hash seed=S i=I len=L         -> ok HEX (the chunk's name)
 *   enumerate [check=none|crc|rehash]
 *       one line "record HEX TYPE LENGTH STATUS PROBLEM" per record, then
 *       "ok records=N bad=M"
 *   counters                      -> the RADOS store's counters
 *   stats                         -> stats() of the store
 *   quit
 *
 * put/get/sync answers carry seconds=F (wall time, for benchmarks).
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "backend.h"
#include "chunkstore.h"
#include "format.h"
#include "hash.h"
#include "rados.h"

static bool verbose;

void
backend_error (const char *fmt, ...)
{
  va_list ap;
  int saved = errno;

  fputs ("chunkstore-driver: ", stderr);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
  errno = saved;
}

void
backend_debug (const char *fmt, ...)
{
  va_list ap;
  int saved = errno;

  if (!verbose)
    return;
  fputs ("chunkstore-driver: debug: ", stderr);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
  errno = saved;
}

static struct chunkstore *cs;
static struct cas_rados *conn;

static double
now (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Chunk (seed, i): L bytes of xorshift64 output. */
static void
make_chunk (uint64_t seed, uint64_t i, uint32_t len, uint8_t *buf)
{
  uint64_t x = (seed * 0x9e3779b97f4a7c15ULL) ^ (i + 1) * 0xbf58476d1ce4e5b9ULL;
  uint32_t off;

  if (x == 0)
    x = 1;
  for (off = 0; off < len; off += 8) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    memcpy (buf + off, &x, len - off < 8 ? len - off : 8);
  }
}

struct job {
  char cmd;                     /* 'p' put, 'g' get, 'h' has */
  uint64_t seed, first, end;
  uint32_t len;
  enum cas_chunk_type type;
  enum cas_verify verify;
  int err;                      /* first errno */
  const char *what;             /* "wrong data" etc. */
  uint64_t at;                  /* index of the first failure */
  uint64_t present;             /* has: count */
};

static void *
run_job (void *arg)
{
  struct job *j = arg;
  uint8_t *buf = malloc (j->len), *back = malloc (j->len);
  struct cas_hash h;
  uint64_t i;
  uint32_t got;
  int r;

  if (buf == NULL || back == NULL) {
    j->err = ENOMEM;
    goto out;
  }
  for (i = j->first; i < j->end; i++) {
    make_chunk (j->seed, i, j->len, buf);
    if (cas_hash_compute (buf, j->len, &h) == -1) {
      j->err = errno;
      j->at = i;
      break;
    }
    switch (j->cmd) {
    case 'p':
      r = cs->ops->put (cs, &h, j->type, buf, j->len, NULL);
      break;
    case 'g':
      r = cs->ops->get (cs, &h, back, j->len, &got, j->verify);
      if (r == 0 && (got != j->len || memcmp (back, buf, j->len) != 0)) {
        j->err = EBADMSG;
        j->what = "wrong data returned";
        j->at = i;
        goto out;
      }
      break;
    default:
      r = cs->ops->has (cs, &h);
      if (r == 1)
        j->present++;
      r = r == -1 ? -1 : 0;
      break;
    }
    if (r == -1) {
      j->err = errno ? errno : EIO;
      j->at = i;
      break;
    }
  }
 out:
  free (buf);
  free (back);
  return NULL;
}

/* key=value arguments of a command line. */
static const char *
arg (char **args, int nargs, const char *key, const char *dflt)
{
  size_t kl = strlen (key);
  int i;

  for (i = 0; i < nargs; i++)
    if (strncmp (args[i], key, kl) == 0 && args[i][kl] == '=')
      return args[i] + kl + 1;
  return dflt;
}

static void
answer_error (int err, const char *what)
{
  const char *name = strerrorname_np (err);
  printf ("error %s (%s)\n", name ? name : "?", what ? what : strerror (err));
}

static void
do_jobs (char cmd, char **args, int nargs)
{
  uint64_t seed = strtoull (arg (args, nargs, "seed", "1"), NULL, 0);
  uint64_t n = strtoull (arg (args, nargs, "n", "1"), NULL, 0);
  uint64_t first = strtoull (arg (args, nargs, "first", "0"), NULL, 0);
  uint32_t len = strtoul (arg (args, nargs, "len", "65536"), NULL, 0);
  unsigned threads = strtoul (arg (args, nargs, "threads", "1"), NULL, 0);
  const char *v = arg (args, nargs, "verify", "checksum");
  const char *type = arg (args, nargs, "type", "data");
  struct job *jobs;
  pthread_t *tids;
  uint64_t present = 0;
  double t;
  unsigned k;

  if (threads == 0 || threads > 256 || len == 0 || len > CAS_MAX_PAYLOAD) {
    answer_error (EINVAL, "threads must be 1..256, len 1..1048576");
    return;
  }
  jobs = calloc (threads, sizeof *jobs);
  tids = calloc (threads, sizeof *tids);
  if (!jobs || !tids) {
    answer_error (ENOMEM, NULL);
    free (jobs);
    free (tids);
    return;
  }
  t = now ();
  for (k = 0; k < threads; k++) {
    jobs[k].cmd = cmd;
    jobs[k].seed = seed;
    jobs[k].first = first + n * k / threads;
    jobs[k].end = first + n * (k + 1) / threads;
    jobs[k].len = len;
    jobs[k].type = strcmp (type, "map") == 0 ? CAS_CHUNK_MAPNODE
      : CAS_CHUNK_DATA;
    jobs[k].verify = strcmp (v, "off") == 0 ? CAS_VERIFY_OFF
      : strcmp (v, "full") == 0 ? CAS_VERIFY_FULL : CAS_VERIFY_CHECKSUM;
    pthread_create (&tids[k], NULL, run_job, &jobs[k]);
  }
  for (k = 0; k < threads; k++)
    pthread_join (tids[k], NULL);
  t = now () - t;
  for (k = 0; k < threads; k++) {
    present += jobs[k].present;
    if (jobs[k].err) {
      char what[128];
      snprintf (what, sizeof what, "%s at chunk %" PRIu64,
                jobs[k].what ? jobs[k].what : strerror (jobs[k].err),
                jobs[k].at);
      answer_error (jobs[k].err, what);
      goto out;
    }
  }
  if (cmd == 'h')
    printf ("ok has=%" PRIu64 " seconds=%.6f\n", present, t);
  else
    printf ("ok n=%" PRIu64 " bytes=%" PRIu64 " seconds=%.6f\n", n,
            n * len, t);
 out:
  free (jobs);
  free (tids);
}

static int
print_record (const struct cas_record_info *ri, void *opaque)
{
  uint64_t *counts = opaque;
  char hex[2 * CAS_HASH_SIZE + 1];

  counts[0]++;
  if (ri->status)
    counts[1]++;
  printf ("record %s %s %" PRIu32 " %d %s\n", cas_hash_hex (&ri->hash, hex),
          ri->type == CAS_CHUNK_MAPNODE ? "map" : "data", ri->length,
          ri->status, ri->problem ? ri->problem : "-");
  return 0;
}

static void
command (char *line)
{
  char *args[16];
  int nargs = 0;
  char *tok, *save;
  double t;

  for (tok = strtok_r (line, " \t\n", &save); tok && nargs < 16;
       tok = strtok_r (NULL, " \t\n", &save))
    args[nargs++] = tok;
  if (nargs == 0)
    return;
  if (strcmp (args[0], "put") == 0)
    do_jobs ('p', args + 1, nargs - 1);
  else if (strcmp (args[0], "get") == 0)
    do_jobs ('g', args + 1, nargs - 1);
  else if (strcmp (args[0], "has") == 0)
    do_jobs ('h', args + 1, nargs - 1);
  else if (strcmp (args[0], "sync") == 0) {
    t = now ();
    if (cs->ops->sync (cs) == -1)
      answer_error (errno, NULL);
    else
      printf ("ok seconds=%.6f\n", now () - t);
  }
  else if (strcmp (args[0], "hash") == 0) {
    uint64_t seed = strtoull (arg (args + 1, nargs - 1, "seed", "1"), NULL, 0);
    uint64_t i = strtoull (arg (args + 1, nargs - 1, "i", "0"), NULL, 0);
    uint32_t len = strtoul (arg (args + 1, nargs - 1, "len", "65536"), NULL, 0);
    uint8_t *buf = malloc (len ? len : 1);
    struct cas_hash h;
    char hex[2 * CAS_HASH_SIZE + 1];
    if (buf == NULL || len == 0 || len > CAS_MAX_PAYLOAD) {
      answer_error (EINVAL, NULL);
      free (buf);
      return;
    }
    make_chunk (seed, i, len, buf);
    cas_hash_compute (buf, len, &h);
    printf ("ok %s\n", cas_hash_hex (&h, hex));
    free (buf);
  }
  else if (strcmp (args[0], "enumerate") == 0) {
    const char *check = arg (args + 1, nargs - 1, "check", "crc");
    unsigned flags = strcmp (check, "none") == 0 ? 0
      : strcmp (check, "rehash") == 0 ? CAS_ENUM_CHECK_CRC | CAS_ENUM_REHASH
      : CAS_ENUM_CHECK_CRC;
    uint64_t counts[2] = { 0, 0 };
    if (cs->ops->enumerate (cs, flags, print_record, counts) == -1)
      answer_error (errno, NULL);
    else
      printf ("ok records=%" PRIu64 " bad=%" PRIu64 "\n", counts[0],
              counts[1]);
  }
  else if (strcmp (args[0], "counters") == 0) {
    struct cas_radosstore_counters c;
    if (conn == NULL) {
      answer_error (ENOTSUP, "not a RADOS store");
      return;
    }
    cas_radosstore_counters (cs, &c);
    printf ("ok sent=%" PRIu64 " written=%" PRIu64 " duplicates=%" PRIu64
            " healed=%" PRIu64 " cache_hits=%" PRIu64 " failed=%" PRIu64
            " retried=%" PRIu64 "\n", c.sent, c.written, c.duplicates,
            c.healed, c.cache_hits, c.failed, c.retried);
  }
  else if (strcmp (args[0], "stats") == 0) {
    struct cas_chunkstore_stats st;
    cs->ops->stats (cs, &st);
    printf ("ok chunks=%" PRIu64 " stored_bytes=%" PRIu64 " packs=%" PRIu64
            " index_bytes=%" PRIu64 " index_slots=%" PRIu64 "\n", st.chunks,
            st.stored_bytes, st.packs, st.index_bytes, st.index_slots);
  }
  else
    answer_error (EINVAL, "unknown command");
}

static void
usage (int status)
{
  fprintf (status ? stderr : stdout,
           "usage: chunkstore-driver [-v] [-c CONF] [-u USER] [-t TIMEOUT] "
           "[-q INFLIGHT] [-C CACHE] [-r] POOL[/NAMESPACE]\n"
           "       chunkstore-driver [-v] [-r] -P DIR\n"
           "then commands on stdin (see the source's opening comment)\n");
  exit (status);
}

int
main (int argc, char **argv)
{
  struct cas_rados_params rp = { 0 };
  struct cas_radosstore_params sp = { 0 };
  const char *packdir = NULL;
  char *line = NULL;
  size_t cap = 0;
  int opt, r = 0;

  while ((opt = getopt (argc, argv, "vc:u:t:q:C:rP:h")) != -1) {
    switch (opt) {
    case 'v': verbose = true; break;
    case 'c': rp.conf = optarg; break;
    case 'u': rp.user = optarg; break;
    case 't': rp.timeout = strtoul (optarg, NULL, 0); break;
    case 'q': sp.max_inflight = strtoul (optarg, NULL, 0); break;
    case 'C': sp.cache_entries = strtoull (optarg, NULL, 0); break;
    case 'r': sp.readonly = true; break;
    case 'P': packdir = optarg; break;
    case 'h': usage (0); break;
    default: usage (2);
    }
  }
  if (packdir) {
    static const uint8_t uuid[16] = { 'c', 'h', 'u', 'n', 'k', 's' };
    char *packs;
    if (optind != argc)
      usage (2);
    if (asprintf (&packs, "%s/packs", packdir) == -1)
      return 1;
    mkdir (packdir, 0755);
    mkdir (packs, 0755);
    free (packs);
    cs = cas_packstore_open (packdir, sp.readonly, uuid, 0);
  }
  else {
    if (optind != argc - 1)
      usage (2);
    rp.pool = argv[optind];
    conn = cas_rados_connect (&rp);
    if (conn == NULL)
      return 1;
    cs = cas_radosstore_open (conn, &sp);
  }
  if (cs == NULL) {
    fprintf (stderr, "chunkstore-driver: opening the store: %m\n");
    cas_rados_disconnect (conn);
    return 1;
  }
  printf ("ok open\n");
  fflush (stdout);
  while (getline (&line, &cap, stdin) != -1) {
    if (strncmp (line, "quit", 4) == 0)
      break;
    command (line);
    fflush (stdout);
  }
  free (line);
  if (cs->ops->close (cs) == -1) {
    fprintf (stderr, "chunkstore-driver: closing the store: %m\n");
    r = 1;
  }
  cas_rados_disconnect (conn);
  return r;
}
