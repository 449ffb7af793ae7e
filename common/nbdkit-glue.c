/* Turns one backend (struct backend, see backend.h) into an nbdkit plugin.
 *
 * Built once (libnbdkitglue.la); each plugin binds it to its backend at
 * link time with -Wl,--defsym=nbdkit_glue_backend=<table>, so the
 * plugin's own .c file holds backend logic only.  nbdkit API
 * version 2, PARALLEL thread model: the backend does its own locking.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "backend.h"
#include "capabilities.h"
#include "msghook.h"


extern const struct backend nbdkit_glue_backend;
#define B (&nbdkit_glue_backend)

/* The flag values are the same by construction; check it. */
_Static_assert (BACKEND_FLAG_MAY_TRIM == NBDKIT_FLAG_MAY_TRIM, "flag");
_Static_assert (BACKEND_FLAG_FUA == NBDKIT_FLAG_FUA, "flag");
_Static_assert (BACKEND_FLAG_REQ_ONE == NBDKIT_FLAG_REQ_ONE, "flag");
_Static_assert (BACKEND_FLAG_FAST_ZERO == NBDKIT_FLAG_FAST_ZERO, "flag");
_Static_assert (BACKEND_FUA_NATIVE == NBDKIT_FUA_NATIVE, "fua");
_Static_assert (BACKEND_CACHE_NATIVE == NBDKIT_CACHE_NATIVE, "cache");
_Static_assert (BACKEND_EXTENT_HOLE == NBDKIT_EXTENT_HOLE, "extent");
_Static_assert (BACKEND_EXTENT_ZERO == NBDKIT_EXTENT_ZERO, "extent");

/* A hooked thread's message (msghook.h): formatted, handed over. */
static void __attribute__ ((format (printf, 2, 0)))
hooked (bool error, const char *fmt, va_list ap)
{
  char msg[1024];

  vsnprintf (msg, sizeof msg, fmt, ap);
  backend_message_hook (error, msg);
}

void
backend_error (const char *fmt, ...)
{
  va_list ap;
  int saved = errno;

  va_start (ap, fmt);
  if (backend_message_hook)
    hooked (true, fmt, ap);
  else
    nbdkit_verror (fmt, ap);
  va_end (ap);
  errno = saved;
}

void
backend_debug (const char *fmt, ...)
{
  va_list ap;
  int saved = errno;

  va_start (ap, fmt);
  if (backend_message_hook)
    hooked (false, fmt, ap);
  else
    nbdkit_vdebug (fmt, ap);
  va_end (ap);
  errno = saved;
}

int
backend_add_extent (struct backend_extents *extents,
                    uint64_t offset, uint64_t length, uint32_t type)
{
  return nbdkit_add_extent ((struct nbdkit_extents *) extents,
                            offset, length, type);
}

int
backend_add_export (struct backend_exports *exports,
                    const char *name, const char *description)
{
  return nbdkit_add_export ((struct nbdkit_exports *) exports,
                            name, description);
}

/* nbdkit tells a plugin whether it runs with -r only per connection
 * (.open's readonly), but a backend must know before any connection
 * whether it may write to its storage at all (a cas store takes its lock
 * and repairs a torn pack when it is opened).  So read nbdkit's own
 * command line as its option parser (glibc getopt_long) does:
 *  - options are permuted: one may come anywhere before "--", also after
 *    the plugin name (unless POSIXLY_CORRECT is set);
 *  - short options cluster ("-fr"), and an option taking an argument
 *    takes the rest of its cluster or the next word ("-e -r" names the
 *    export "-r");
 *  - a long option may be abbreviated to any prefix that is unambiguous,
 *    and a prefix of several names of the same option ("--exp" for
 *    export, export-name and exportname) is unambiguous.
 * The tables are nbdkit 1.32's (server/options.h): which options take an
 * argument, so that an argument is never mistaken for an option, and
 * which names are the same option.  nbdkit itself refuses any command
 * line this parser would misread (an unknown or ambiguous option).
 */
static const char nbdkit_short_with_arg[] = "DegipPtuU";
enum nbdkit_opt_kind { NOARG, ARG };
static const struct {
  const char *name;
  enum nbdkit_opt_kind kind;
  int id;                       /* equal ids: the same option */
} nbdkit_long[] = {
  { "ipv4-only", NOARG, '4' }, { "ipv6-only", NOARG, '6' },
  { "debug", ARG, 'D' }, { "dump-config", NOARG, 256 },
  { "dump-plugin", NOARG, 257 }, { "exit-with-parent", NOARG, 258 },
  { "export", ARG, 'e' }, { "export-name", ARG, 'e' },
  { "exportname", ARG, 'e' }, { "filter", ARG, 259 },
  { "foreground", NOARG, 'f' }, { "no-fork", NOARG, 'f' },
  { "group", ARG, 'g' }, { "help", NOARG, 260 },
  { "ip-addr", ARG, 'i' }, { "ipaddr", ARG, 'i' }, { "log", ARG, 261 },
  { "long-options", NOARG, 262 }, { "mask-handshake", ARG, 263 },
  { "new-style", NOARG, 'n' }, { "newstyle", NOARG, 'n' },
  { "no-sr", NOARG, 264 }, { "old-style", NOARG, 'o' },
  { "oldstyle", NOARG, 'o' }, { "pid-file", ARG, 'P' },
  { "pidfile", ARG, 'P' }, { "port", ARG, 'p' },
  { "read-only", NOARG, 'r' }, { "readonly", NOARG, 'r' },
  { "run", ARG, 265 }, { "selinux-label", ARG, 266 },
  { "short-options", NOARG, 267 }, { "single", NOARG, 's' },
  { "stdin", NOARG, 's' }, { "swap", NOARG, 268 },
  { "threads", ARG, 't' }, { "tls", ARG, 269 },
  { "tls-certificates", ARG, 270 }, { "tls-psk", ARG, 271 },
  { "tls-verify-peer", NOARG, 272 }, { "unix", ARG, 'U' },
  { "user", ARG, 'u' }, { "verbose", NOARG, 'v' },
  { "version", NOARG, 'V' }, { "vsock", NOARG, 273 },
};

/* One long option (without the leading "--"): sets *ro; returns whether
 * it consumes the next argument.
 */
static bool
nbdkit_long_option (const char *opt, bool *ro)
{
  size_t len = strcspn (opt, "="), i, m = 0;
  bool found = false, ambiguous = false;

  for (i = 0; i < sizeof nbdkit_long / sizeof nbdkit_long[0]; i++) {
    if (strncmp (nbdkit_long[i].name, opt, len) != 0)
      continue;
    if (nbdkit_long[i].name[len] == '\0') {   /* exact */
      m = i, found = true, ambiguous = false;
      break;
    }
    if (!found)
      m = i, found = true;
    else if (nbdkit_long[i].id != nbdkit_long[m].id)
      ambiguous = true;
  }
  if (!found || ambiguous)
    return false;               /* nbdkit itself refused it */
  if (nbdkit_long[m].id == 'r')
    *ro = true;
  return nbdkit_long[m].kind == ARG && opt[len] != '=';
}

/* /proc/self/cmdline, whole (a command line may be up to ARG_MAX long):
 * malloc'd, *len bytes, NUL-terminated words.  NULL on error.
 */
static char *
read_cmdline (size_t *len)
{
  size_t cap = 4096, n = 0;
  char *buf = NULL;
  FILE *fp = fopen ("/proc/self/cmdline", "re");

  if (fp == NULL)
    return NULL;
  for (;;) {
    char *nb = realloc (buf, cap + 1);

    if (nb == NULL) {
      free (buf);
      fclose (fp);
      return NULL;
    }
    buf = nb;
    n += fread (buf + n, 1, cap - n, fp);
    if (n < cap)
      break;
    cap *= 2;
  }
  fclose (fp);
  buf[n] = '\0';
  *len = n;
  return buf;
}

static bool
nbdkit_cmdline_readonly (void)
{
  char *buf, *p, *end;
  bool ro = false, skip = false;
  size_t n;

  buf = read_cmdline (&n);
  if (buf == NULL) {
    nbdkit_debug ("cannot read /proc/self/cmdline (%m): assuming nbdkit "
                  "was started without -r");
    return false;
  }
  end = buf + n;
  /* argv[0], then the arguments. */
  for (p = buf + strlen (buf) + 1; p < end; p += strlen (p) + 1) {
    if (skip) {                 /* an option's argument */
      skip = false;
      continue;
    }
    if (strcmp (p, "--") == 0)
      break;
    if (p[0] != '-' || p[1] == '\0') {   /* plugin name, key=value, "-" */
      if (getenv ("POSIXLY_CORRECT"))
        break;                  /* getopt stops at the first one */
      continue;
    }
    if (p[1] == '-') {
      skip = nbdkit_long_option (p + 2, &ro);
      continue;
    }
    for (const char *c = p + 1; *c; c++) {
      if (*c == 'r')
        ro = true;
      if (strchr (nbdkit_short_with_arg, *c)) {
        skip = c[1] == '\0';   /* else the rest is the argument */
        break;
      }
    }
  }
  free (buf);
  return ro;
}

/* Set by glue_load, single-threaded, before any other callback. */
static bool server_readonly;

bool
backend_server_readonly (void)
{
  return server_readonly;
}

static void
glue_load (void)
{
  server_readonly = nbdkit_cmdline_readonly ();
  if (server_readonly)
    nbdkit_debug ("nbdkit runs read-only (-r): the backend opens its "
                  "storage read-only");
  if (B->load)
    B->load ();
}

static void
glue_unload (void)
{
  if (B->unload)
    B->unload ();
}

static int
glue_config (const char *key, const char *value)
{
  return B->config (key, value);
}

static int
glue_config_complete (void)
{
  return B->config_complete ? B->config_complete () : 0;
}

static int
glue_after_fork (void)
{
  return B->after_fork ? B->after_fork () : 0;
}

static int
glue_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  (void) is_tls;
  if (!B->list_exports)
    return nbdkit_use_default_export (exports);
  return B->list_exports (readonly, (struct backend_exports *) exports);
}

static const char *
glue_default_export (int readonly, int is_tls)
{
  (void) is_tls;
  return backend_get_default_export (B, readonly);
}

/* Per connection: the backend's handle and its capabilities, resolved
 * once (capabilities.h) so every can_* answer and the contract checks
 * use the same rules as minnbd.
 */
struct glue_handle {
  void *h;
  bool readonly;
  struct backend_caps caps;
};

static void *
glue_open (int readonly)
{
  const char *name = nbdkit_export_name ();
  struct glue_handle *gh = malloc (sizeof *gh);

  if (gh == NULL) {
    nbdkit_error ("malloc: %m");
    return NULL;
  }
  gh->readonly = readonly;
  gh->h = B->open (name ? name : "", readonly);
  if (gh->h == NULL) {
    nbdkit_set_error (errno);
    free (gh);
    return NULL;
  }
  if (backend_get_caps (B, gh->h, &gh->caps) == -1) {
    int err = errno;

    B->close (gh->h);
    free (gh);
    nbdkit_set_error (err);
    return NULL;
  }
  if (!gh->caps.can_write)
    gh->readonly = true;
  return gh;
}

static void
glue_close (void *handle)
{
  struct glue_handle *gh = handle;

  B->close (gh->h);
  free (gh);
}

static int64_t
glue_get_size (void *handle)
{
  struct glue_handle *gh = handle;

  return B->get_size (gh->h);
}

static int
glue_block_size (void *handle, uint32_t *min, uint32_t *pref, uint32_t *max)
{
  struct glue_handle *gh = handle;

  return backend_get_block_size (B, gh->h, min, pref, max);
}

#define CAN(fn)                                         \
  static int                                            \
  glue_##fn (void *handle)                              \
  {                                                     \
    return ((struct glue_handle *) handle)->caps.fn;    \
  }
CAN (can_write)
CAN (can_flush)
CAN (can_trim)
CAN (can_zero)
CAN (can_fast_zero)
CAN (can_fua)
CAN (can_multi_conn)
CAN (can_extents)
CAN (can_cache)
CAN (is_rotational)
#undef CAN

/* Each data call checks nbdkit keeps the contract of backend.h. */
#define CHECK(call, flags) \
  BACKEND_ASSERT_CALL (B, &gh->caps, gh->readonly, (call), (flags))

static int
glue_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  struct glue_handle *gh = handle;

  CHECK (BACKEND_CALL_PREAD, flags);
  return B->pread (gh->h, buf, count, offset, flags);
}

static int
glue_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
             uint32_t flags)
{
  struct glue_handle *gh = handle;

  CHECK (BACKEND_CALL_PWRITE, flags);
  return B->pwrite (gh->h, buf, count, offset, flags);
}

static int
glue_flush (void *handle, uint32_t flags)
{
  struct glue_handle *gh = handle;

  CHECK (BACKEND_CALL_FLUSH, flags);
  return B->flush (gh->h, flags);
}

static int
glue_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct glue_handle *gh = handle;

  CHECK (BACKEND_CALL_TRIM, flags);
  return B->trim (gh->h, count, offset, flags);
}

static int
glue_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct glue_handle *gh = handle;

  CHECK (BACKEND_CALL_ZERO, flags);
  return B->zero (gh->h, count, offset, flags);
}

static int
glue_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
              struct nbdkit_extents *extents)
{
  struct glue_handle *gh = handle;

  CHECK (BACKEND_CALL_EXTENTS, flags);
  return B->extents (gh->h, count, offset, flags,
                     (struct backend_extents *) extents);
}

static int
glue_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct glue_handle *gh = handle;

  CHECK (BACKEND_CALL_CACHE, flags);
  return B->cache (gh->h, count, offset, flags);
}
#undef CHECK

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

/* Optional callbacks stay NULL in nbdkit's table when the backend lacks
 * them, so nbdkit's own defaults (and its emulation) apply.  Filled in at
 * load time because the backend table is not a constant expression here.
 */
static struct nbdkit_plugin plugin = {
  .name = NULL,
  .longname = NULL,
  .version = PACKAGE_VERSION,
  .load = glue_load,
  .unload = glue_unload,
  .config = glue_config,
  .config_complete = glue_config_complete,
  .after_fork = glue_after_fork,
  .magic_config_key = NULL,
  .list_exports = glue_list_exports,
  .default_export = glue_default_export,
  .open = glue_open,
  .close = glue_close,
  .get_size = glue_get_size,
  .block_size = glue_block_size,
  .can_write = glue_can_write,
  .can_flush = glue_can_flush,
  .can_trim = glue_can_trim,
  .can_zero = glue_can_zero,
  .can_fast_zero = glue_can_fast_zero,
  .can_fua = glue_can_fua,
  .can_multi_conn = glue_can_multi_conn,
  .can_extents = glue_can_extents,
  .can_cache = glue_can_cache,
  .is_rotational = glue_is_rotational,
  .pread = glue_pread,
  .pwrite = glue_pwrite,
  .flush = glue_flush,
  .trim = glue_trim,
  .zero = glue_zero,
  .extents = glue_extents,
  .cache = glue_cache,
  .errno_is_preserved = 1,
};

/* Runs before nbdkit reads any field but name-independent ones. */
static void glue_fill (void) __attribute__ ((constructor));
static void
glue_fill (void)
{
  plugin.name = B->name;
  plugin.longname = B->longname;
  plugin.description = B->description;
  plugin.config_help = B->config_help;
  if (!B->pwrite) plugin.pwrite = NULL;
  if (!B->flush) plugin.flush = NULL;
  if (!B->trim) plugin.trim = NULL;
  if (!B->zero) plugin.zero = NULL;
  if (!B->extents) plugin.extents = NULL;
  if (!B->cache) plugin.cache = NULL;
}

NBDKIT_REGISTER_PLUGIN (plugin)
