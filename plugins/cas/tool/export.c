/* nbdcas export STORE VOLUME FILE [--force] [--threads N]
 *
 * Copies a volume into a raw file.  A regular file comes out sparse:
 * it is sized with ftruncate and only mapped blocks are written, so
 * unmapped (zero) blocks stay holes.  A block device gets zeros written
 * over unmapped ranges (it has no holes to leave); "-" writes the whole
 * volume to stdout, in order.  The store is opened read-only (a server
 * may not have it open for writing meanwhile: the store lock says so).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "nbdcas.h"

#define CHUNK (8u * 1024 * 1024)  /* a multiple of every block size */
#define MAX_RUNS (CHUNK / CAS_MIN_BLOCKSIZE)

struct export {
  struct cas_volume *vol;
  int fd;
  const char *file;
  bool created;                 /* we created file: remove it on failure */
  bool sparse;                  /* holes allowed: skip unmapped ranges */
  bool stream;                  /* a pipe: write() in order, one thread */
  uint64_t size;
  _Atomic uint64_t mapped_bytes;
};

struct run { uint64_t off, len; bool mapped; };
struct runs { struct run r[MAX_RUNS + 2]; size_t n; uint64_t start, end; };

/* Each thread's own (progress_run_chunks allocates it). */
struct scratch {
  uint8_t buf[CHUNK];
  struct runs rs;
};

static void
help (void)
{
  tool_printf ("Usage: %s export STORE VOLUME FILE [--force] [--threads N]\n"
          "Copy VOLUME into the raw file FILE.  A regular file is sparse:\n"
          "unmapped blocks become holes.  FILE may be a block device, or -\n"
          "for stdout.\n"
          "\n"
          "  -f, --force           overwrite FILE if it exists\n"
          "  -j, --threads N       reader threads (default: %u here)\n"
          "  -v, --verbose         print a summary (and the store's debug "
          "messages)\n"
          "  -h, --help            this help\n"
          "A progress bar is shown on stderr when it is a terminal.\n",
          tool_name, default_threads ());
}

/* Collect the extents of one chunk, clipped to it. */
static int
collect (uint64_t off, uint64_t len, bool mapped, void *opaque)
{
  struct runs *rs = opaque;
  uint64_t s = off < rs->start ? rs->start : off;
  uint64_t e = off + len > rs->end ? rs->end : off + len;

  if (s >= e)
    return rs->n > 0 && off >= rs->end ? 1 : 0;  /* 1: enough, stop */
  if (rs->n > 0 && rs->r[rs->n - 1].mapped == mapped) {
    rs->r[rs->n - 1].len = e - rs->r[rs->n - 1].off;
    return 0;
  }
  if (rs->n >= sizeof rs->r / sizeof rs->r[0]) {
    errno = EOVERFLOW;
    return -1;
  }
  rs->r[rs->n++] = (struct run) { .off = s, .len = e - s, .mapped = mapped };
  return 0;
}

static int
write_full (struct export *ex, const uint8_t *buf, size_t len, uint64_t off)
{
  while (len > 0) {
    ssize_t n = ex->stream ? write (ex->fd, buf, len)
      : pwrite (ex->fd, buf, len, off);
    if (n == -1) {
      if (errno == EINTR)
        continue;
      tool_error ("%s: write at offset %" PRIu64 ": %m", ex->file, off);
      return -1;
    }
    buf += n;
    len -= n;
    off += n;
  }
  return 0;
}

static int
export_chunk (void *arg, void *scratch, uint64_t off, uint64_t len)
{
  struct export *ex = arg;
  uint8_t *buf = ((struct scratch *) scratch)->buf;
  struct runs *rs = &((struct scratch *) scratch)->rs;
  uint64_t mapped = 0;
  size_t i;

  rs->n = 0;
  rs->start = off;
  rs->end = off + len;
  if (cas_volume_extents (ex->vol, len, off, collect, rs) == -1) {
    tool_error ("volume '%s': reading the map at offset %" PRIu64 " failed",
                cas_volume_name (ex->vol), off);
    return -1;
  }
  for (i = 0; i < rs->n; i++) {
    const struct run *r = &rs->r[i];
    uint8_t *p = buf + (r->off - off);
    if (r->mapped) {
      if (cas_volume_read (ex->vol, p, r->len, r->off) == -1) {
        tool_error ("volume '%s': reading offset %" PRIu64 " (block %"
                    PRIu64 ") failed", cas_volume_name (ex->vol), r->off,
                    r->off / cas_volume_blocksize (ex->vol));
        return -1;
      }
      mapped += r->len;
      if (ex->sparse && write_full (ex, p, r->len, r->off) == -1)
        return -1;
    }
    else if (!ex->sparse)
      memset (p, 0, r->len);
  }
  if (!ex->sparse && write_full (ex, buf, len, off) == -1)
    return -1;
  atomic_fetch_add (&ex->mapped_bytes, mapped);
  return 0;
}

/* Open the output: refuse to clobber without --force. */
static int
open_output (struct export *ex, bool force)
{
  struct stat sb;

  if (strcmp (ex->file, "-") == 0) {
    fflush (tool_stdout ());
    ex->fd = dup (fileno (tool_stdout ()));
    if (ex->fd == -1) {
      tool_error ("stdout: %m");
      return -1;
    }
  }
  else {
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC;
    /* Relative to the user's directory (a server runs this command in
     * its own, with the user's as tool_cwdfd).
     */
    if (fstatat (tool_cwdfd (), ex->file, &sb, 0) == 0) {
      if (!force) {
        tool_error ("%s already exists (use --force to overwrite it)",
                    ex->file);
        errno = EEXIST;
        return -1;
      }
      if (S_ISREG (sb.st_mode))
        flags |= O_TRUNC;
    }
    else
      flags |= O_EXCL;
    ex->fd = openat (tool_cwdfd (), ex->file, flags, 0644);
    if (ex->fd == -1) {
      tool_error ("%s: %m", ex->file);
      return -1;
    }
    ex->created = flags & O_EXCL;
  }
  if (fstat (ex->fd, &sb) == -1) {
    tool_error ("%s: %m", ex->file);
    return -1;
  }
  if (S_ISREG (sb.st_mode)) {
    ex->sparse = true;
    if (ftruncate (ex->fd, ex->size) == -1) {
      tool_error ("%s: cannot size it to %" PRIu64 " bytes: %m", ex->file,
                  ex->size);
      return -1;
    }
  }
  else if (S_ISBLK (sb.st_mode)) {
    off_t end = lseek (ex->fd, 0, SEEK_END);
    if (end == -1 || (uint64_t) end < ex->size) {
      tool_error ("%s: the device is smaller than the volume (%" PRIu64
                  " bytes)", ex->file, ex->size);
      errno = ENOSPC;
      return -1;
    }
  }
  else
    ex->stream = true;          /* pipe, terminal, character device */
  return 0;
}

int
cmd_export (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "force", no_argument, NULL, 'f' },
    { "threads", required_argument, NULL, 'j' },
    TOOL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  const char *dir, *name;
  bool force = false;
  unsigned nthreads = default_threads ();
  struct cas_store *st = NULL;
  struct export ex;
  double t0, t1;
  int c, ret = EXIT_FAIL;

  memset (&ex, 0, sizeof ex);
  ex.fd = -1;
  while ((c = tool_getopt (argc, argv, "export", "fhj:v", long_options,
                           help, &ret)) > 0) {
    switch (c) {
    case 'f':
      force = true;
      break;
    case 'j':
      if (tool_parse_threads (optarg, &nthreads) == -1)
        return usage_error ("export");
      break;
    }
  }
  if (c == -1)
    return ret;
  if (want_args ("export", argc, argv, optind, 3, "STORE VOLUME FILE") == -1)
    return usage_error ("export");
  dir = argv[optind];
  name = argv[optind + 1];
  ex.file = argv[optind + 2];
  if (tool_check_name (name, true) == -1)
    return usage_error ("export");

  st = tool_open_store (dir, true, CAS_VERIFY_CHECKSUM);
  if (st == NULL)
    goto out;
  /* Check first: cas_volume_open's ENOENT message does not say which
   * store, and no output file should be created for a typo.
   */
  switch (cas_volume_exists (st, name)) {
  case -1:
    goto out;
  case 0:
    tool_error ("no volume '%s' in %s", name, dir);
    goto out;
  }
  ex.vol = cas_volume_open (st, name);
  if (ex.vol == NULL)
    goto out;
  ex.size = cas_volume_size (ex.vol);
  if (open_output (&ex, force) == -1)
    goto out;
  if (ex.stream)
    nthreads = 1;               /* in order */

  t0 = now_seconds ();
  if (progress_run_chunks (&(struct chunk_job) {
        .cmd = "export", .label = "exporting", .size = ex.size,
        .chunk = CHUNK, .nthreads = nthreads,
        .scratch_size = sizeof (struct scratch),
        .fn = export_chunk, .arg = &ex }) == -1) {
    tool_error ("export of volume '%s' to %s failed", name, ex.file);
    goto out;
  }
  /* Durable before we say it worked; pipes and terminals cannot sync. */
  if (fsync (ex.fd) == -1 && errno != EINVAL && errno != EROFS) {
    tool_error ("%s: fsync: %m", ex.file);
    goto out;
  }
  t1 = now_seconds ();
  if (tool_verbose || isatty (fileno (tool_stderr ()))) {
    char a[HUMAN_SIZE_LEN], b[HUMAN_SIZE_LEN];
    double secs = t1 - t0 > 1e-6 ? t1 - t0 : 1e-6;
    tool_info ("exported volume '%s' to %s: %s (%s mapped) in %.2f s "
               "(%.1f MB/s)", name, ex.file, human_size (ex.size, a),
               human_size (atomic_load (&ex.mapped_bytes), b), secs,
               ex.size / secs / 1e6);
  }
  ret = EXIT_OK;
 out:
  if (ex.fd >= 0 && close (ex.fd) == -1 && ret == EXIT_OK) {
    tool_error ("%s: close: %m", ex.file);
    ret = EXIT_FAIL;
  }
  /* A half-written new file would look like a good export. */
  if (ret != EXIT_OK && ex.created)
    unlinkat (tool_cwdfd (), ex.file, 0);
  if (ex.vol)
    cas_volume_close (ex.vol);
  if (tool_close_store (st) == -1)
    ret = EXIT_FAIL;
  return ret;
}
