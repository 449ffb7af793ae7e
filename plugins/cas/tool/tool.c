/* The nbdcas commands as a library: dispatch (tool_run), messages,
 * where output goes, and small helpers shared by the subcommands.  The
 * nbdcas program (main.c) runs them in its own process; a server that
 * holds a store runs them for a remote nbdcas on its control socket
 * (control.c), with that nbdcas's stdout, stderr and working directory.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "cleanup.h"
#include "msghook.h"
#include "parse.h"
#include "nbdcas.h"

bool tool_verbose;
const char *tool_name = "nbdcas";
struct cas_ceph_options tool_ceph;

int
tool_ceph_option (int c, const char *value)
{
  uint64_t n;

  switch (c) {
  case TOOL_OPT_CEPH_CONF:
    free ((char *) tool_ceph.conf);
    tool_ceph.conf = NULL;
    return parse_path ("--ceph-conf", value, (char **) &tool_ceph.conf);
  case TOOL_OPT_CEPH_USER:
    if (value[0] == '\0') {
      tool_error ("--ceph-user is empty: give a cephx user name (default: "
                  "admin)");
      return -1;
    }
    free ((char *) tool_ceph.user);
    tool_ceph.user = strdup (value);
    return tool_ceph.user ? 0 : -1;
  case TOOL_OPT_CEPH_TIMEOUT:
    if (parse_uint ("--ceph-timeout", value, 1, 3600, &n) == -1)
      return -1;
    tool_ceph.timeout = n;
    return 0;
  }
  abort ();
}

const struct cas_open_options *
tool_store_options (void)
{
  static struct cas_open_options opts;

  opts.ceph = &tool_ceph;
  return &opts;
}

/* ---- where a command's output goes ---- */

static __thread const struct tool_ctx *ctx;

void
tool_set_ctx (const struct tool_ctx *c)
{
  ctx = c;
  /* The store's messages in this thread go to the command's stderr. */
  backend_message_hook = c ? tool_store_message : NULL;
}

const struct tool_ctx *
tool_get_ctx (void)
{
  return ctx;
}

FILE *
tool_stdout (void)
{
  return ctx ? ctx->out : stdout;
}

FILE *
tool_stderr (void)
{
  return ctx ? ctx->err : stderr;
}

int
tool_cwdfd (void)
{
  return ctx ? ctx->cwdfd : AT_FDCWD;
}

bool
tool_remote (void)
{
  return ctx && ctx->store;
}

int
tool_printf (const char *fmt, ...)
{
  va_list ap;
  int r;

  va_start (ap, fmt);
  r = vfprintf (tool_stdout (), fmt, ap);
  va_end (ap);
  return r;
}

/* fsck captures the store's messages instead of printing them (it prints
 * one line per problem with the message attached): see tool_capture.
 */
static __thread char *capture_buf;
static __thread size_t capture_len;

void
tool_capture (char *buf, size_t len)
{
  capture_buf = buf;
  capture_len = len;
  if (buf && len)
    buf[0] = '\0';
}

static void __attribute__ ((format (printf, 1, 0)))
vmessage (const char *fmt, va_list ap)
{
  char msg[1024];

  vsnprintf (msg, sizeof msg, fmt, ap);
  output_lock ();
  progress_clear_locked ();
  fprintf (tool_stderr (), "%s: %s\n", tool_name, msg);
  output_unlock ();
}

void
tool_error (const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vmessage (fmt, ap);
  va_end (ap);
}

void
tool_info (const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vmessage (fmt, ap);
  va_end (ap);
}

/* What the store says (backend_error / backend_debug) while a command
 * runs: printed as the command's own message, or kept for the problem
 * being reported (tool_capture).
 */
void
tool_store_message (bool error, const char *msg)
{
  const char *m = msg;

  /* The store prefixes its messages with "cas: " for server logs; here
   * the program name says it already.
   */
  if (strncmp (m, "cas: ", 5) == 0)
    m += 5;
  if (!error) {
    if (tool_verbose)
      tool_info ("debug: %s", m);
    return;
  }
  if (capture_buf) {
    /* Keep every message since the last reset: the first one usually
     * says what is wrong, the last one where.
     */
    size_t used = strlen (capture_buf);
    snprintf (capture_buf + used, capture_len - used, "%s%s",
              used ? "; " : "", m);
    if (tool_verbose)
      tool_info ("(%s)", m);
  }
  else
    tool_error ("%s", m);
}

/* ---- helpers ---- */

int
usage_error (const char *cmd)
{
  fprintf (tool_stderr (), "Try '%s %s%s--help' for more information.\n",
           tool_name, cmd ? cmd : "", cmd ? " " : "");
  return EXIT_USAGE;
}

int
tool_getopt (int argc, char **argv, const char *cmd, const char *shortopts,
             const struct option *longopts, void (*help) (void), int *status)
{
  int c;

  /* getopt's own messages would go to this process's stderr, which is not
   * the user's when the command runs in a server: say it ourselves.
   */
  opterr = 0;
  for (;;) {
    c = getopt_long (argc, argv, shortopts, longopts, NULL);
    if (c == 'v')
      tool_verbose = true;
    else if (c >= TOOL_OPT_CEPH_CONF && c <= TOOL_OPT_CEPH_TIMEOUT) {
      if (tool_ceph_option (c, optarg) == -1) {
        *status = usage_error (cmd);
        return -1;
      }
    }
    else
      break;
  }
  switch (c) {
  case -1:
    return 0;
  case 'h':
    help ();
    *status = EXIT_OK;
    return -1;
  case '?':
    if (optopt && strchr (shortopts, optopt))
      tool_error ("%s: option '-%c' needs an argument", cmd, optopt);
    else if (optopt)
      tool_error ("%s: invalid option -- '%c'", cmd, optopt);
    else
      tool_error ("%s: unrecognized option or missing argument: '%s'", cmd,
                  argv[optind - 1]);
    *status = usage_error (cmd);
    return -1;
  default:
    return c;
  }
}

int
want_args (const char *cmd, int argc, char **argv, int first, int n,
           const char *what)
{
  int have = argc - first;

  if (have < n) {
    tool_error ("%s: missing %s (expected: %s)", cmd,
                have == 0 ? "arguments" : "argument", what);
    return -1;
  }
  if (have > n) {
    tool_error ("%s: unexpected argument '%s' (expected: %s)", cmd,
                argv[first + n], what);
    return -1;
  }
  return 0;
}

struct cas_store *
tool_open_store (const char *dir, bool readonly, enum cas_verify verify)
{
  return tool_open_store_opts (dir, readonly, verify, false);
}

struct cas_store *
tool_open_store_opts (const char *dir, bool readonly, enum cas_verify verify,
                      bool rebuild_index)
{
  /* In a server: the store it serves (the client reached it through
   * STORE's control socket, so STORE names this one).
   */
  if (tool_remote ())
    return ctx->store;
  /* In the nbdcas program: a server holding the store runs the command
   * (this does not return then).  A RADOS store has no control socket:
   * any number of processes open it, the command runs here.
   */
  if (!cas_store_name_is_rados (dir))
    tool_remote_forward (dir);
  struct cas_open_options opts = {
    .readonly = readonly, .verify = verify, .rebuild_index = rebuild_index,
    .ceph = &tool_ceph,
  };
  struct cas_store *st;
  int r;

  /* The store's own open says "no superblock" for an empty directory and
   * fails with a bare ENOENT for a missing one: say what the user should
   * do instead.
   */
  r = cas_store_exists_opts (dir, &opts);
  if (r == -1)
    return NULL;
  if (r == 0) {
    tool_error ("%s: no cas store here (create one with: %s create %s)",
                dir, tool_name, dir);
    errno = ENOENT;
    return NULL;
  }
  st = cas_store_open (dir, &opts);
  if (st && tool_stale_socket) {
    /* The control socket of a server that died.  The store is ours now:
     * a read-write open may clear it away.
     */
    if (!readonly) {
      CLEANUP_FREE char *sock = NULL;
      if (asprintf (&sock, "%s/control.sock", dir) != -1)
        unlink (sock);
    }
    tool_info ("note: the server that held %s is no longer running (its "
               "control socket was left behind); working on the store "
               "directly", dir);
    tool_stale_socket = false;
  }
  else if (st == NULL && errno == EBUSY)
    tool_info ("hint: a server holds %s without a control socket: a "
               "read-only server (list, stat, export and fsck work beside "
               "it; to change the store, stop it) or one of an older "
               "release (stop it first)", dir);
  return st;
}

int
tool_close_store (struct cas_store *st)
{
  if (tool_remote ())
    return 0;                   /* the server's: it stays open */
  if (st && cas_store_close (st) == -1) {
    tool_error ("closing the store failed: recent changes may not be "
                "durable");
    return -1;
  }
  return 0;
}

int
tool_check_name (const char *name, bool snapshot_ok)
{
  const char *at = strchr (name, '@');
  char vol[CAS_VOLUME_NAME_MAX + 1];

  if (!snapshot_ok || at == NULL)
    return cas_volume_name_check (name);
  if (at == name || (size_t) (at - name) > CAS_VOLUME_NAME_MAX) {
    tool_error ("invalid name '%.60s': a snapshot is named VOLUME@SNAPSHOT",
                name);
    return -1;
  }
  memcpy (vol, name, at - name);
  vol[at - name] = '\0';
  return cas_volume_name_check (vol) == -1 ||
    cas_snapshot_name_check (at + 1) == -1 ? -1 : 0;
}

int
tool_parse_size (const char *opt, const char *value, uint64_t *r)
{
  int64_t n;

  if (parse_size_range (opt, value, 1, CAS_MAX_VOLUME_SIZE, &n) == -1)
    return -1;
  *r = n;
  return 0;
}

int
tool_parse_threads (const char *value, unsigned *r)
{
  uint64_t n;

  if (parse_uint ("--threads", value, 1, TOOL_MAX_THREADS, &n) == -1)
    return -1;
  *r = n;
  return 0;
}

char *
human_size (uint64_t bytes, char buf[HUMAN_SIZE_LEN])
{
  static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB",
                                       "EiB" };
  double v = bytes;
  int u = -1;

  if (bytes < 1024) {
    snprintf (buf, HUMAN_SIZE_LEN, "%" PRIu64 " bytes", bytes);
    return buf;
  }
  while (v >= 1024 && u < 5) {
    v /= 1024;
    u++;
  }
  snprintf (buf, HUMAN_SIZE_LEN, "%.1f %s", v, units[u]);
  return buf;
}

int
tool_flush_stdout (void)
{
  if (fflush (tool_stdout ()) == EOF || ferror (tool_stdout ())) {
    tool_error ("writing to stdout failed");
    return -1;
  }
  return 0;
}

void
json_string (FILE *fp, const char *s)
{
  const unsigned char *p;

  fputc ('"', fp);
  for (p = (const unsigned char *) s; *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf (fp, "\\%c", *p);
    else if (*p < 0x20 || *p == 0x7f)
      fprintf (fp, "\\u%04x", *p);
    else
      fputc (*p, fp);         /* UTF-8 passes through */
  }
  fputc ('"', fp);
}

void
iso_time (uint64_t t, char buf[32])
{
  time_t tt = t;
  struct tm tm;

  if (gmtime_r (&tt, &tm) == NULL ||
      strftime (buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf (buf, 32, "@%" PRIu64, t);
}

double
now_seconds (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

unsigned
default_threads (void)
{
  long n = sysconf (_SC_NPROCESSORS_ONLN);

  /* Hashing scales with cores; past 8 the single volume's map and the
   * pack append dominate.
   */
  if (n < 1)
    n = 1;
  if (n > 8)
    n = 8;
  return n;
}

/* ---- dispatch ---- */

static const struct command {
  const char *name;
  int (*fn) (int, char **);
  const char *summary;
} commands[] = {
  { "create", cmd_create, "create a store (and optionally a volume)" },
  { "import", cmd_import, "copy a raw image into a volume" },
  { "export", cmd_export, "copy a volume into a sparse raw file" },
  { "list",   cmd_list,   "list the volumes of a store with their sizes" },
  { "stat",   cmd_stat,   "space used, dedup ratio, packs, chunks" },
  { "fsck",   cmd_fsck,   "check records and every volume's map" },
  { "snapshot", cmd_snapshot, "a read-only point in time of a volume" },
  { "clone",  cmd_clone,  "a writable copy of a volume or snapshot" },
  { "delete", cmd_delete, "delete a volume or a snapshot" },
  { "rename", cmd_rename, "rename a volume or a snapshot" },
  { "diff",   cmd_diff,   "the byte ranges that differ between two" },
  { "gc",     cmd_gc,     "give back the space nothing references" },
  { "upgrade", cmd_upgrade, "raise an older store to this format version" },
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void
usage (FILE *fp)
{
  size_t i;

  fprintf (fp,
           "Usage: %s [-v] COMMAND [OPTIONS] ARGS...\n"
           "The admin tool for nbdcas content-addressed block stores.\n"
           "\n"
           "Commands:\n", tool_name);
  for (i = 0; i < NCOMMANDS; i++)
    fprintf (fp, "  %-9s %s\n", commands[i].name, commands[i].summary);
  fprintf (fp,
           "\n"
           "STORE is a directory, or rados:POOL[/NAMESPACE] for a store in a\n"
           "Ceph RADOS pool (reached with --ceph-conf FILE, --ceph-user NAME,\n"
           "--ceph-timeout SECONDS; any command takes them).\n"
           "\n"
           "Options:\n"
           "  -v, --verbose   show debug messages from the store\n"
           "  -h, --help      this help ('%s COMMAND --help' for a command)\n"
           "  -V, --version   print the version\n"
           "\n"
           "Exit status: 0 success, 1 failure (fsck: problems found),\n"
           "2 bad command line (fsck: the check could not run).\n"
           "See nbdcas(1).\n", tool_name);
}

int
tool_run (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "verbose", no_argument, NULL, 'v' },
    { "version", no_argument, NULL, 'V' },
    TOOL_CEPH_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  const char *cmd;
  size_t i;
  int c;

  tool_verbose = false;
  free ((char *) tool_ceph.conf);
  free ((char *) tool_ceph.user);
  memset (&tool_ceph, 0, sizeof tool_ceph);
  optind = 0;
  opterr = 0;
  /* "+": stop at the command name; its options are its own. */
  while ((c = getopt_long (argc, argv, "+hvV", long_options, NULL)) != -1) {
    switch (c) {
    case 'h':
      usage (tool_stdout ());
      return EXIT_OK;
    case 'v':
      tool_verbose = true;
      break;
    case 'V':
      tool_printf ("%s %s (store format version %d; %d with compression)\n",
                   tool_name, PACKAGE_VERSION, CAS_FORMAT_VERSION,
                   CAS_FORMAT_VERSION_FEATURES);
      return EXIT_OK;
    case TOOL_OPT_CEPH_CONF:
    case TOOL_OPT_CEPH_USER:
    case TOOL_OPT_CEPH_TIMEOUT:
      if (tool_ceph_option (c, optarg) == -1)
        return usage_error (NULL);
      break;
    default:
      tool_error ("invalid option: '%s'", argv[optind - 1]);
      return usage_error (NULL);
    }
  }
  if (optind >= argc) {
    tool_error ("no command given");
    usage (tool_stderr ());
    return EXIT_USAGE;
  }
  cmd = argv[optind];
  if (strcmp (cmd, "help") == 0) {
    /* "nbdcas help import" == "nbdcas import --help" */
    if (optind + 1 < argc) {
      char *hargv[] = { argv[optind + 1], (char *) "--help", NULL };
      for (i = 0; i < NCOMMANDS; i++)
        if (strcmp (commands[i].name, argv[optind + 1]) == 0) {
          optind = 0;
          return commands[i].fn (2, hargv);
        }
      tool_error ("unknown command '%s'", hargv[0]);
      return usage_error (NULL);
    }
    usage (tool_stdout ());
    return EXIT_OK;
  }
  for (i = 0; i < NCOMMANDS; i++)
    if (strcmp (commands[i].name, cmd) == 0) {
      int sub_argc = argc - optind;
      char **sub_argv = argv + optind;
      char name[64];
      /* getopt's own messages start with argv[0]: "nbdcas import: ..." */
      snprintf (name, sizeof name, "%s %s", tool_name, cmd);
      sub_argv[0] = name;
      optind = 0;               /* restart getopt for the command */
      return commands[i].fn (sub_argc, sub_argv);
    }
  tool_error ("unknown command '%s'", cmd);
  return usage_error (NULL);
}
