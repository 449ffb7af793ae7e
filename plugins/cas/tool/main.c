/* nbdcas: the admin tool for cas stores -- command dispatch, the
 * front-end services the store library needs (backend_error/debug), and
 * small helpers shared by the subcommands.
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "parse.h"
#include "nbdcas.h"

bool verbose;
const char *progname = "nbdcas";

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
  fprintf (stderr, "%s: %s\n", progname, msg);
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

/* ---- front-end services (common/backend.h) ---- */

void
backend_error (const char *fmt, ...)
{
  char msg[1024];
  const char *m = msg;
  va_list ap;
  int saved = errno;            /* callers set errno after reporting */

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  /* The store prefixes its messages with "cas: " for server logs; here
   * the program name says it already.
   */
  if (strncmp (m, "cas: ", 5) == 0)
    m += 5;
  if (capture_buf) {
    /* Keep every message since the last reset: the first one usually
     * says what is wrong, the last one where.
     */
    size_t used = strlen (capture_buf);
    snprintf (capture_buf + used, capture_len - used, "%s%s",
              used ? "; " : "", m);
    if (verbose)
      tool_info ("(%s)", m);
  }
  else
    tool_error ("%s", m);
  errno = saved;
}

void
backend_debug (const char *fmt, ...)
{
  char msg[1024];
  va_list ap;
  int saved = errno;

  if (!verbose)
    return;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  tool_info ("debug: %s", strncmp (msg, "cas: ", 5) == 0 ? msg + 5 : msg);
  errno = saved;
}

/* libcasstore does not call these (they belong to the server front
 * ends), but backend.h declares them: trivial ones keep any reference
 * linkable.
 */
int
backend_add_extent (struct backend_extents *e, uint64_t offset,
                    uint64_t length, uint32_t type)
{
  errno = ENOTSUP;
  return -1;
}

int
backend_add_export (struct backend_exports *e, const char *name,
                    const char *description)
{
  errno = ENOTSUP;
  return -1;
}

/* ---- helpers ---- */

int
usage_error (const char *cmd)
{
  fprintf (stderr, "Try '%s %s%s--help' for more information.\n",
           progname, cmd ? cmd : "", cmd ? " " : "");
  return EXIT_USAGE;
}

int
tool_getopt (int argc, char **argv, const char *cmd, const char *shortopts,
             const struct option *longopts, void (*help) (void), int *status)
{
  int c;

  while ((c = getopt_long (argc, argv, shortopts, longopts, NULL)) == 'v')
    verbose = true;
  switch (c) {
  case -1:
    return 0;
  case 'h':
    help ();
    *status = EXIT_OK;
    return -1;
  case '?':                     /* getopt has said what is wrong */
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
  struct cas_open_options opts = {
    .readonly = readonly, .verify = verify, .rebuild_index = rebuild_index,
  };
  int r;

  /* The store's own open says "no superblock" for an empty directory and
   * fails with a bare ENOENT for a missing one: say what the user should
   * do instead.
   */
  r = cas_store_exists (dir);
  if (r == -1)
    return NULL;
  if (r == 0) {
    tool_error ("%s: no cas store here (create one with: %s create %s)",
                dir, progname, dir);
    errno = ENOENT;
    return NULL;
  }
  return cas_store_open (dir, &opts);
}

int
tool_close_store (struct cas_store *st)
{
  if (st && cas_store_close (st) == -1) {
    tool_error ("closing the store failed: recent changes may not be "
                "durable");
    return -1;
  }
  return 0;
}

int
tool_check_name (const char *name)
{
  return cas_volume_name_check (name);
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
  if (fflush (stdout) == EOF || ferror (stdout)) {
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

static const struct {
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
           "Commands:\n", progname);
  for (i = 0; i < NCOMMANDS; i++)
    fprintf (fp, "  %-8s %s\n", commands[i].name, commands[i].summary);
  fprintf (fp,
           "\n"
           "Options:\n"
           "  -v, --verbose   show debug messages from the store\n"
           "  -h, --help      this help ('%s COMMAND --help' for a command)\n"
           "  -V, --version   print the version\n"
           "\n"
           "Exit status: 0 success, 1 failure (fsck: problems found),\n"
           "2 bad command line (fsck: the check could not run).\n"
           "See nbdcas(1).\n", progname);
}

int
main (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "verbose", no_argument, NULL, 'v' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  const char *cmd;
  size_t i;
  int c;

  /* getopt's messages start with argv[0]: the name, not the path. */
  if (argc > 0)
    argv[0] = (char *) progname;
  /* "+": stop at the command name; its options are its own. */
  while ((c = getopt_long (argc, argv, "+hvV", long_options, NULL)) != -1) {
    switch (c) {
    case 'h':
      usage (stdout);
      return EXIT_OK;
    case 'v':
      verbose = true;
      break;
    case 'V':
      printf ("%s %s (store format version %d)\n", progname, PACKAGE_VERSION,
              CAS_FORMAT_VERSION);
      return EXIT_OK;
    default:
      return usage_error (NULL);
    }
  }
  if (optind >= argc) {
    tool_error ("no command given");
    usage (stderr);
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
    usage (stdout);
    return EXIT_OK;
  }
  for (i = 0; i < NCOMMANDS; i++)
    if (strcmp (commands[i].name, cmd) == 0) {
      int sub_argc = argc - optind;
      char **sub_argv = argv + optind;
      char name[64];
      /* getopt's own messages start with argv[0]: "nbdcas import: ..." */
      snprintf (name, sizeof name, "%s %s", progname, cmd);
      sub_argv[0] = name;
      optind = 0;               /* restart getopt for the command */
      return commands[i].fn (sub_argc, sub_argv);
    }
  tool_error ("unknown command '%s'", cmd);
  return usage_error (NULL);
}
