/* crashshim: an LD_PRELOAD library for the review's crash and race tests
 * (tests/test-cas-review.py): it holds one pack write in the middle (to
 * open a race window deterministically) and logs what reached the disk
 * durably (to simulate a power cut after a kill -9).
 *
 * Only calls on file descriptors whose path (readlink of /proc/self/fd/N)
 * starts with CRASHSHIM_PATH are touched.  Intercepted: pwrite, pwritev
 * (the calls pack.c appends with), fdatasync, fsync.
 *
 *   CRASHSHIM_HOLD=FILE  while FILE exists, the next record append
 *       (pwritev; one at a time) creates FILE.held and waits until FILE is
 *       removed, then goes on; the test removes FILE to let it finish.
 *   CRASHSHIM_LOG=FILE   append one line per intercepted call, after it
 *       succeeded: "W PATH OFFSET LENGTH" for a write, "S PATH" for a
 *       sync.  A write logged after the last sync of its file is what a
 *       power cut could lose (tests/test-cas-review.py: power_cut).
 *
 * Thread safety: the hold is claimed with an atomic flag; log lines are
 * single write(2) calls on an O_APPEND descriptor.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static atomic_bool holding;

static bool
fd_path (int fd, char *path, size_t len)
{
  const char *prefix = getenv ("CRASHSHIM_PATH");
  char link[64];
  ssize_t n;

  if (prefix == NULL || *prefix == '\0')
    return false;
  snprintf (link, sizeof link, "/proc/self/fd/%d", fd);
  n = readlink (link, path, len - 1);
  if (n <= 0)
    return false;
  path[n] = '\0';
  return strncmp (path, prefix, strlen (prefix)) == 0;
}

static bool
exists (const char *p)
{
  return syscall (SYS_faccessat, AT_FDCWD, p, F_OK) == 0;
}

static void
maybe_hold (void)
{
  const char *hold = getenv ("CRASHSHIM_HOLD");
  struct timespec t = { 0, 5 * 1000 * 1000 };
  char held[4096];
  int fd;

  if (hold == NULL || !exists (hold) || atomic_exchange (&holding, true))
    return;
  snprintf (held, sizeof held, "%s.held", hold);
  fd = syscall (SYS_openat, AT_FDCWD, held, O_WRONLY | O_CREAT | O_CLOEXEC,
                0644);
  if (fd >= 0)
    syscall (SYS_close, fd);
  while (exists (hold))
    nanosleep (&t, NULL);
  atomic_store (&holding, false);
}

static void
log_line (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

static void
log_line (const char *fmt, ...)
{
  const char *log = getenv ("CRASHSHIM_LOG");
  char line[4200];
  va_list ap;
  int fd, n;

  if (log == NULL)
    return;
  va_start (ap, fmt);
  n = vsnprintf (line, sizeof line, fmt, ap);
  va_end (ap);
  if (n <= 0 || (size_t) n >= sizeof line)
    return;
  fd = syscall (SYS_openat, AT_FDCWD, log,
                O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd >= 0) {
    if (syscall (SYS_write, fd, line, n) != n)
      n = -1;
    syscall (SYS_close, fd);
  }
}

#define REAL(name, ret, ...)                                          \
  static ret (*real_##name) (__VA_ARGS__);                            \
  if (real_##name == NULL)                                            \
    real_##name = (ret (*) (__VA_ARGS__)) dlsym (RTLD_NEXT, #name)

ssize_t
pwrite (int fd, const void *buf, size_t n, off_t off)
{
  char path[4096];
  bool match;
  ssize_t r;
  int saved;

  REAL (pwrite, ssize_t, int, const void *, size_t, off_t);
  saved = errno;
  match = fd_path (fd, path, sizeof path);
  errno = saved;
  r = real_pwrite (fd, buf, n, off);
  saved = errno;
  if (match && r > 0)
    log_line ("W %s %lld %zd\n", path, (long long) off, r);
  errno = saved;
  return r;
}

ssize_t
pwrite64 (int fd, const void *buf, size_t n, off_t off)
{
  return pwrite (fd, buf, n, off);
}

ssize_t
pwritev (int fd, const struct iovec *iov, int cnt, off_t off)
{
  char path[4096];
  bool match;
  ssize_t r;
  int saved;

  REAL (pwritev, ssize_t, int, const struct iovec *, int, off_t);
  saved = errno;
  match = fd_path (fd, path, sizeof path);
  errno = saved;
  if (match)
    maybe_hold ();
  r = real_pwritev (fd, iov, cnt, off);
  saved = errno;
  if (match && r > 0)
    log_line ("W %s %lld %zd\n", path, (long long) off, r);
  errno = saved;
  return r;
}

ssize_t
pwritev64 (int fd, const struct iovec *iov, int cnt, off_t off)
{
  return pwritev (fd, iov, cnt, off);
}

static int
sync_call (int fd, int (*real) (int))
{
  char path[4096];
  bool match;
  int r, saved = errno;

  match = fd_path (fd, path, sizeof path);
  errno = saved;
  r = real (fd);
  saved = errno;
  if (match && r == 0)
    log_line ("S %s\n", path);
  errno = saved;
  return r;
}

int
fdatasync (int fd)
{
  REAL (fdatasync, int, int);
  return sync_call (fd, real_fdatasync);
}

int
fsync (int fd)
{
  REAL (fsync, int, int);
  return sync_call (fd, real_fsync);
}
