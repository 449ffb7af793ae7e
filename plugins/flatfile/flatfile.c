/* flatfile: serve one regular file or block device (see backend.h).
 *
 * Contract: file= names the file (required), readonly= refuses writes.
 * The file is opened once, in config_complete, and that one descriptor is
 * shared by every connection: all I/O is positional (pread, pwrite,
 * fallocate, ioctl ranges) so connections never disturb each other, and
 * fdatasync on it makes every connection's writes durable, which is what
 * makes can_multi_conn true.  A plain descriptor survives the fork of a
 * daemonizing front end; it is close-on-exec so --run children do not
 * inherit it.  file= is made absolute when parsed (parse_path), as
 * every path parameter is: a daemonizing front end chdir("/")s.
 *
 * Thread safety: PARALLEL.  After config_complete the only shared mutable
 * state is a few "the kernel said EOPNOTSUPP" flags, relaxed atomics that
 * only ever go from true to false; a race merely repeats one failed
 * syscall.  lseek(SEEK_DATA/SEEK_HOLE) moves the shared file position,
 * but nothing here depends on the position, only on lseek's return value.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include <linux/falloc.h>
#include <linux/fs.h>

#include "backend.h"
#include "cleanup.h"
#include "parse.h"

/* Parameters. */
static char *filename;
static bool readonly_param;

/* The shared descriptor and what we learned about it in config_complete. */
static int fd = -1;
static bool fd_writable;       /* opened O_RDWR */
static bool is_block;          /* block device (else a regular file) */
static uint32_t sector_size = 512; /* block device: BLKDISCARD alignment */

/* Learned at run time; cleared (never set again) on EOPNOTSUPP & co. */
static atomic_bool have_punch = true;      /* FALLOC_FL_PUNCH_HOLE */
static atomic_bool have_zero_range = true; /* FALLOC_FL_ZERO_RANGE */
static atomic_bool have_alloc = true;      /* plain fallocate (mode 0) */
static atomic_bool have_discard = true;    /* BLKDISCARD */
static atomic_bool have_seek_data = true;  /* SEEK_DATA / SEEK_HOLE */
static atomic_bool have_dsync = true;      /* pwritev2 (RWF_DSYNC) */

/* Source for the slow zeroing path.  In .bss and never written, so its
 * pages all map the kernel's shared zero page.
 */
#define ZERO_BUF_SIZE (1024 * 1024)
static char zero_buf[ZERO_BUF_SIZE];

/* The largest request we accept: 32 MiB, what NBD clients (qemu, libnbd)
 * send at most and what nbdkit and minnbd both support.
 */
#define MAX_REQUEST (32 * 1024 * 1024)

static inline bool
known (atomic_bool *b)
{
  return atomic_load_explicit (b, memory_order_relaxed);
}

static inline void
forget (atomic_bool *b, const char *what)
{
  if (atomic_exchange_explicit (b, false, memory_order_relaxed))
    backend_debug ("flatfile: %s not supported here, falling back", what);
}

/* errno values meaning "this file system / kernel can't do that". */
static inline bool
is_unsupported (int e)
{
  return e == EOPNOTSUPP || e == ENOTSUP || e == ENOSYS || e == ENOTTY;
}

static void
ff_unload (void)
{
  if (fd >= 0)
    close (fd);
  fd = -1;
  free (filename);
  filename = NULL;
}

static int
ff_config (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0) {
    if (filename) {
      backend_error ("flatfile: file= given twice ('%s' and '%s'): "
                     "give exactly one file", filename, value);
      errno = EINVAL;
      return -1;
    }
    if (value[0] == '\0') {
      backend_error ("flatfile: file= is empty: expected the path of a "
                     "regular file or block device");
      errno = EINVAL;
      return -1;
    }
    /* Absolute from here on: every message names the file unambiguously
     * whatever directory the server later runs in.
     */
    return parse_path ("flatfile: file", value, &filename);
  }
  if (strcmp (key, "readonly") == 0)
    return parse_bool ("readonly", value, &readonly_param);

  backend_error ("flatfile: unknown parameter '%s': flatfile takes "
                 "file=PATH (required) and readonly=BOOL", key);
  errno = EINVAL;
  return -1;
}

/* Size of the open file or device, or -1 with a message. */
static int64_t
fd_size (void)
{
  struct stat st;
  uint64_t n;

  if (is_block) {
    if (ioctl (fd, BLKGETSIZE64, &n) == -1) {
      backend_error ("flatfile: %s: ioctl BLKGETSIZE64: %m", filename);
      return -1;
    }
    if (n > INT64_MAX) {
      errno = EOVERFLOW;
      backend_error ("flatfile: %s: device too large", filename);
      return -1;
    }
    return (int64_t) n;
  }
  if (fstat (fd, &st) == -1) {
    backend_error ("flatfile: %s: fstat: %m", filename);
    return -1;
  }
  return st.st_size;
}

/* Block devices: discard support is in sysfs ("0" means none). */
static void
probe_block_discard (dev_t rdev)
{
  char path[128], buf[32];
  CLEANUP_CLOSE int sfd = -1;
  ssize_t r;

  snprintf (path, sizeof path,
            "/sys/dev/block/%u:%u/queue/discard_max_bytes",
            major (rdev), minor (rdev));
  sfd = open (path, O_RDONLY | O_CLOEXEC);
  if (sfd == -1)
    return;                     /* unknown: try, learn on EOPNOTSUPP */
  r = read (sfd, buf, sizeof buf - 1);
  if (r > 0) {
    buf[r] = '\0';
    if (strtoull (buf, NULL, 10) == 0)
      forget (&have_discard, "discard (BLKDISCARD)");
  }
}

/* Regular files: punching a hole past EOF with KEEP_SIZE changes nothing
 * but tells whether the file system can punch holes at all, so can_trim
 * is honest from the first connection.
 */
static void
probe_file_punch (off_t size)
{
  if (fallocate (fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, size, 1)
      == -1 && is_unsupported (errno))
    forget (&have_punch, "hole punching");
}

static int
ff_config_complete (void)
{
  struct stat st;
  int flags = O_CLOEXEC | O_NOCTTY;

  if (filename == NULL) {
    backend_error ("flatfile: file= is required: the path of a regular "
                   "file or block device to serve (create one with "
                   "'truncate -s 1G disk.img')");
    errno = EINVAL;
    return -1;
  }

  /* Refuse what is neither a file nor a device before opening it: opening
   * a FIFO read-only would block until some writer came along.
   */
  if (stat (filename, &st) == 0 && !S_ISREG (st.st_mode) &&
      !S_ISBLK (st.st_mode)) {
    fd = -1;
    goto bad_type;
  }

  /* Open read-write unless told not to (readonly=true, or a read-only
   * server: nbdkit -r, minnbd -r); a file we may only read (mode,
   * read-only mount, immutable) is served read-only rather than refused,
   * as nbdkit's file plugin does.
   */
  fd_writable = !readonly_param && !backend_server_readonly ();
  fd = open (filename, flags | (fd_writable ? O_RDWR : O_RDONLY));
  if (fd == -1 && fd_writable &&
      (errno == EACCES || errno == EROFS || errno == EPERM ||
       errno == ETXTBSY)) {
    backend_debug ("flatfile: %s: cannot open for writing (%m): "
                   "serving it read-only", filename);
    fd_writable = false;
    fd = open (filename, flags | O_RDONLY);
  }
  if (fd == -1) {
    int e = errno;
    switch (e) {
    case ENOENT:
      backend_error ("flatfile: file=%s: no such file: expected an existing "
                     "regular file or block device (create one with "
                     "'truncate -s 1G %s')", filename, filename);
      break;
    case EACCES: case EPERM:
      backend_error ("flatfile: file=%s: permission denied: the server "
                     "needs read access (and write access unless "
                     "readonly=true)", filename);
      break;
    case EISDIR:
      backend_error ("flatfile: file=%s is a directory: expected a regular "
                     "file or block device", filename);
      break;
    default:
      backend_error ("flatfile: file=%s: cannot open: %m", filename);
    }
    errno = e;
    return -1;
  }

  if (fstat (fd, &st) == -1) {
    backend_error ("flatfile: file=%s: fstat: %m", filename);
    goto err;
  }
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode))
    goto bad_type;
  is_block = S_ISBLK (st.st_mode);

  if (is_block) {
    int ss;

    if (ioctl (fd, BLKSSZGET, &ss) == 0 && ss > 0)
      sector_size = (uint32_t) ss;
    probe_block_discard (st.st_rdev);
    /* Block devices have no holes to find. */
    forget (&have_seek_data, "SEEK_DATA on a block device");
  }
  else if (fd_writable)
    probe_file_punch (st.st_size);

  if (fd_size () == -1)
    goto err;
  backend_debug ("flatfile: serving %s (%s, %s%s)", filename,
                 is_block ? "block device" : "regular file",
                 fd_writable ? "read-write" : "read-only",
                 backend_server_readonly () ? ": the server is read-only"
                 : readonly_param ? ": readonly=true" : "");
  return 0;

 bad_type:
  if (S_ISDIR (st.st_mode)) {
    backend_error ("flatfile: file=%s is a directory: expected a regular "
                   "file or block device", filename);
    errno = EISDIR;
  }
  else {
    backend_error ("flatfile: file=%s is neither a regular file nor a block "
                   "device (a pipe, socket or character device cannot be "
                   "served: its size is unknown)", filename);
    errno = EINVAL;
  }
 err:
  if (fd >= 0) {
    int e = errno;
    close (fd);
    fd = -1;
    errno = e;
  }
  return -1;
}

/* Per connection: the size, read once (as nbdkit's file plugin does), so a
 * file grown between connections is seen by the next one.
 */
struct handle {
  int64_t size;
};

static void *
ff_open (const char *exportname, bool readonly)
{
  struct handle *h;

  /* Like nbdkit's file plugin, any export name reaches the one file; a
   * front end that serves only named exports checks names itself.
   */
  (void) exportname;
  (void) readonly;
  h = malloc (sizeof *h);
  if (h == NULL) {
    backend_error ("flatfile: malloc: %m");
    return NULL;
  }
  h->size = fd_size ();
  if (h->size == -1) {
    int e = errno;
    free (h);
    errno = e;
    return NULL;
  }
  return h;
}

static void
ff_close (void *handle)
{
  free (handle);
}

static int64_t
ff_get_size (void *handle)
{
  struct handle *h = handle;
  return h->size;
}

static int
ff_block_size (void *handle,
               uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  /* Any byte range works; page-sized requests avoid read-modify-write in
   * the page cache.
   */
  *minimum = 1;
  *preferred = 4096;
  *maximum = MAX_REQUEST;
  return 0;
}

static int
ff_can_write (void *handle)
{
  return fd_writable;
}

static int
ff_can_flush (void *handle)
{
  return 1;
}

static int
ff_can_trim (void *handle)
{
  if (!fd_writable)
    return 0;
  return is_block ? known (&have_discard) : known (&have_punch);
}

static int
ff_can_zero (void *handle)
{
  return 1;
}

static int
ff_can_fast_zero (void *handle)
{
  /* Fast zero requests fail at once with ENOTSUP wherever only the slow
   * write path would do, so answering yes is always honest.
   */
  return 1;
}

static int
ff_can_fua (void *handle)
{
  return BACKEND_FUA_NATIVE;
}

static int
ff_can_multi_conn (void *handle)
{
  return 1;                     /* one fd: fdatasync flushes everyone */
}

static int
ff_can_extents (void *handle)
{
  return 1;
}

static int
ff_can_cache (void *handle)
{
  return BACKEND_CACHE_NATIVE;
}

static int
do_fdatasync (void)
{
  while (fdatasync (fd) == -1) {
    if (errno == EINTR)
      continue;
    backend_error ("flatfile: fdatasync: %m");
    return -1;
  }
  return 0;
}

static int
ff_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
          uint32_t flags)
{
  char *p = buf;

  while (count > 0) {
    ssize_t r = pread (fd, p, count, (off_t) offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      backend_error ("flatfile: pread: %m");
      return -1;
    }
    if (r == 0) {
      /* Someone truncated the file under us. */
      backend_error ("flatfile: pread: unexpected end of file at %" PRIu64
                     " (was %s truncated?)", offset, filename);
      errno = EIO;
      return -1;
    }
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

/* Write everything, retrying short writes and EINTR.  dsync: each
 * pwritev2 is RWF_DSYNC, so the range is durable on return without
 * flushing the rest of the file (cheaper than a whole-file fdatasync when
 * other connections have dirty data).
 */
static int
write_all (const char *p, uint32_t count, uint64_t offset, bool dsync)
{
  while (count > 0) {
    ssize_t r;

#ifdef RWF_DSYNC
    if (dsync) {
      struct iovec iov = { .iov_base = (void *) p, .iov_len = count };
      r = pwritev2 (fd, &iov, 1, (off_t) offset, RWF_DSYNC);
      if (r == -1 && (is_unsupported (errno) || errno == EINVAL)) {
        /* Old kernel: plain write now, the caller's fdatasync later. */
        forget (&have_dsync, "pwritev2 RWF_DSYNC");
        return -2;
      }
    }
    else
#endif
      r = pwrite (fd, p, count, (off_t) offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      backend_error ("flatfile: pwrite: %m");
      return -1;
    }
    if (r == 0) {
      backend_error ("flatfile: pwrite: wrote nothing at %" PRIu64, offset);
      errno = EIO;
      return -1;
    }
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

static int
ff_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
           uint32_t flags)
{
  bool fua = flags & BACKEND_FLAG_FUA;
  int r;

#ifdef RWF_DSYNC
  if (fua && known (&have_dsync)) {
    r = write_all (buf, count, offset, true);
    if (r != -2)
      return r;
    /* else RWF_DSYNC unsupported: nothing written yet, fall through. */
  }
#endif
  r = write_all (buf, count, offset, false);
  if (r == 0 && fua)
    r = do_fdatasync ();
  return r;
}

static int
ff_flush (void *handle, uint32_t flags)
{
  return do_fdatasync ();
}

static int
ff_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  /* Trim is advisory: where the file system or device cannot discard,
   * succeed without doing anything.
   */
  if (is_block) {
    uint64_t start, end, range[2];

    if (!known (&have_discard))
      goto out;
    /* BLKDISCARD wants whole sectors: shrink the range to them. */
    start = (offset + sector_size - 1) / sector_size * sector_size;
    end = (offset + count) / sector_size * sector_size;
    if (start >= end)
      goto out;
    range[0] = start;
    range[1] = end - start;
    if (ioctl (fd, BLKDISCARD, range) == -1) {
      if (is_unsupported (errno))
        forget (&have_discard, "BLKDISCARD");
      else {
        backend_error ("flatfile: ioctl BLKDISCARD: %m");
        return -1;
      }
    }
  }
  else if (known (&have_punch)) {
    if (fallocate (fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                   (off_t) offset, count) == -1) {
      if (is_unsupported (errno))
        forget (&have_punch, "hole punching");
      else {
        backend_error ("flatfile: fallocate PUNCH_HOLE: %m");
        return -1;
      }
    }
  }

 out:
  if (flags & BACKEND_FLAG_FUA)
    return do_fdatasync ();
  return 0;
}

/* One fallocate attempt.  Returns 0 done, 1 "not supported here" (flag
 * cleared, try the next way), -1 error.
 */
static int
try_fallocate (atomic_bool *have, const char *what, int mode,
               uint64_t offset, uint32_t count)
{
  if (!known (have))
    return 1;
  if (fallocate (fd, mode, (off_t) offset, count) == 0)
    return 0;
  if (is_unsupported (errno)) {
    forget (have, what);
    return 1;
  }
  backend_error ("flatfile: fallocate %s: %m", what);
  return -1;
}

static int
zero_fast (uint32_t count, uint64_t offset, uint32_t flags)
{
  int r;

  /* MAY_TRIM: a hole reads as zeros and costs nothing.  On a block
   * device, fallocate PUNCH_HOLE is a discard the kernel guarantees to
   * zero (it never falls back to writing), but only whole sectors.
   */
  if ((flags & BACKEND_FLAG_MAY_TRIM) &&
      (!is_block || (offset % sector_size == 0 && count % sector_size == 0))) {
    r = try_fallocate (&have_punch, "PUNCH_HOLE",
                       FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                       offset, count);
    if (r <= 0)
      return r;
  }

  if (is_block)
    /* ZERO_RANGE on a device may quietly become written zeros in the
     * kernel: not fast.  The caller decides.
     */
    return 1;

  /* Zeros that stay allocated (NBD_CMD_FLAG_NO_HOLE honoured). */
  r = try_fallocate (&have_zero_range, "ZERO_RANGE",
                     FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                     offset, count);
  if (r <= 0)
    return r;

  /* File systems without ZERO_RANGE (tmpfs, for one): punch, then
   * allocate the range again.  Still zeros and still allocated.
   */
  if (known (&have_punch) && known (&have_alloc)) {
    r = try_fallocate (&have_punch, "PUNCH_HOLE",
                       FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                       offset, count);
    if (r != 0)
      return r;
    /* The range already reads as zeros; failing to re-allocate only
     * loses the allocation hint, so it is not an error.
     */
    if (try_fallocate (&have_alloc, "allocate", FALLOC_FL_KEEP_SIZE,
                       offset, count) == -1)
      backend_debug ("flatfile: re-allocating zeroed range failed: "
                     "left as a hole");
    return 0;
  }
  return 1;
}

static int
ff_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int r;

  r = zero_fast (count, offset, flags);
  if (r == -1)
    return -1;
  if (r == 1) {
    if (is_block && !(flags & BACKEND_FLAG_FAST_ZERO)) {
      /* The device may have WRITE ZEROES; the kernel writes zero pages
       * otherwise, which is still cheaper than doing it from here.
       */
      uint64_t range[2] = { offset, count };
      if (offset % sector_size == 0 && count % sector_size == 0 &&
          ioctl (fd, BLKZEROOUT, range) == 0)
        goto done;
    }
    /* Only the slow way is left. */
    if (flags & BACKEND_FLAG_FAST_ZERO) {
      errno = ENOTSUP;
      return -1;
    }
    while (count > 0) {
      uint32_t n = count < ZERO_BUF_SIZE ? count : ZERO_BUF_SIZE;
      if (write_all (zero_buf, n, offset, false) == -1)
        return -1;
      count -= n;
      offset += n;
    }
  }

 done:
  if (flags & BACKEND_FLAG_FUA)
    return do_fdatasync ();
  return 0;
}

static int
ff_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
            struct backend_extents *extents)
{
  const uint64_t end = offset + count;
  const bool req_one = flags & BACKEND_FLAG_REQ_ONE;

  if (!known (&have_seek_data))
    return backend_add_extent (extents, offset, count, 0);

  while (offset < end) {
    off_t pos;

    /* Where does the next data start? */
    pos = lseek (fd, (off_t) offset, SEEK_DATA);
    if (pos == -1) {
      if (errno == ENXIO)       /* no data from here to EOF */
        return backend_add_extent (extents, offset, end - offset,
                                   BACKEND_EXTENT_HOLE |
                                   BACKEND_EXTENT_ZERO);
      if (errno == EINVAL || is_unsupported (errno)) {
        /* Can't tell: everything is data, which is always true. */
        forget (&have_seek_data, "SEEK_DATA");
        return backend_add_extent (extents, offset, end - offset, 0);
      }
      backend_error ("flatfile: lseek SEEK_DATA: %m");
      return -1;
    }
    if ((uint64_t) pos > offset) {
      uint64_t to = (uint64_t) pos < end ? (uint64_t) pos : end;
      if (backend_add_extent (extents, offset, to - offset,
                              BACKEND_EXTENT_HOLE | BACKEND_EXTENT_ZERO)
          == -1)
        return -1;
      if (req_one)
        return 0;
      offset = to;
      if (offset >= end)
        break;
    }

    /* Data from offset: where does it end? */
    pos = lseek (fd, (off_t) offset, SEEK_HOLE);
    if (pos == -1) {
      if (errno == ENXIO)       /* file shrank under us: call it data */
        return backend_add_extent (extents, offset, end - offset, 0);
      backend_error ("flatfile: lseek SEEK_HOLE: %m");
      return -1;
    }
    {
      uint64_t to = (uint64_t) pos < end ? (uint64_t) pos : end;
      if (to <= offset)         /* raced with a writer: be safe */
        to = end;
      if (backend_add_extent (extents, offset, to - offset, 0) == -1)
        return -1;
      if (req_one)
        return 0;
      offset = to;
    }
  }
  return 0;
}

static int
ff_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int r = posix_fadvise (fd, (off_t) offset, count, POSIX_FADV_WILLNEED);
  if (r != 0) {
    errno = r;
    backend_error ("flatfile: posix_fadvise WILLNEED: %m");
    return -1;
  }
  return 0;
}

const struct backend flatfile_backend = {
  .name = "flatfile",
  .longname = "nbdcas flat file backend",
  .description = "Serve a regular file or a block device.",
  .config_help =
    "file=PATH        (required) Regular file or block device to serve.\n"
    "readonly=BOOL    Refuse writes (default false).",
  .unload = ff_unload,
  .config = ff_config,
  .config_complete = ff_config_complete,
  .open = ff_open,
  .close = ff_close,
  .get_size = ff_get_size,
  .block_size = ff_block_size,
  .can_write = ff_can_write,
  .can_flush = ff_can_flush,
  .can_trim = ff_can_trim,
  .can_zero = ff_can_zero,
  .can_fast_zero = ff_can_fast_zero,
  .can_fua = ff_can_fua,
  .can_multi_conn = ff_can_multi_conn,
  .can_extents = ff_can_extents,
  .can_cache = ff_can_cache,
  .pread = ff_pread,
  .pwrite = ff_pwrite,
  .flush = ff_flush,
  .trim = ff_trim,
  .zero = ff_zero,
  .extents = ff_extents,
  .cache = ff_cache,
};
