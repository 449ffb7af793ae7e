/* faultshim: an LD_PRELOAD library that makes disk writes and syncs fail,
 * for the fault-injection tests (tests/test-fault-*.py).
 *
 * Contract: only calls on file descriptors whose path (readlink of
 * /proc/self/fd/N) starts with FAULT_PATH are ever touched, so the shim
 * can be preloaded into nbdkit itself: sockets, pipes, logs and nbdkit's
 * own files pass through.  Intercepted: write, writev, pwrite, pwrite64,
 * pwritev, pwritev64, pwritev2, fallocate, fallocate64 (the "write"
 * class), fsync, fdatasync (the "sync" class).
 *
 * Settings come from the file named by FAULT_CONTROL if that variable is
 * set (re-read on every intercepted call: a test arms and disarms faults
 * while the server runs by rewriting it; when it is absent or empty
 * nothing fails), else from the environment.  Keys (space or newline
 * separated KEY=VALUE in the file, FAULT_KEY in the environment):
 *   ERRNO=ENOSPC|EIO|EDQUOT|EFBIG|EROFS|<number>   the error (default EIO)
 *   AFTER=N   the first N matching calls succeed (default 0)
 *   COUNT=N   then N calls fail, later ones succeed again (default: all)
 *   OPS=write,sync   which classes fail (default both)
 *   SHORT=1   the first failing write-class call instead writes half its
 *             bytes and returns a short count (a disk filling up in the
 *             middle of a write); the calls after it fail with ERRNO
 * Counting restarts whenever the control file's contents change.
 *
 * Thread safety: counters are atomic; the parsed settings are guarded by
 * a mutex.  Async-signal-safe it is not (nor are the calls it wraps in
 * the programs we test).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum op_class { OP_WRITE = 1, OP_SYNC = 2 };

struct settings {
  bool armed;
  int err;
  unsigned long after, count;   /* count 0: unlimited */
  unsigned ops;
  bool shorten;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct settings cur;
static char last_text[4096];
static atomic_ulong calls;      /* matching calls since (re)arming */
static atomic_bool short_done;

static int
parse_errno (const char *v)
{
  if (strcmp (v, "ENOSPC") == 0) return ENOSPC;
  if (strcmp (v, "EIO") == 0) return EIO;
  if (strcmp (v, "EDQUOT") == 0) return EDQUOT;
  if (strcmp (v, "EFBIG") == 0) return EFBIG;
  if (strcmp (v, "EROFS") == 0) return EROFS;
  if (atoi (v) > 0) return atoi (v);
  return EIO;
}

static void
apply (struct settings *s, const char *key, const char *val)
{
  if (strcmp (key, "ERRNO") == 0) s->err = parse_errno (val);
  else if (strcmp (key, "AFTER") == 0) s->after = strtoul (val, NULL, 0);
  else if (strcmp (key, "COUNT") == 0) s->count = strtoul (val, NULL, 0);
  else if (strcmp (key, "SHORT") == 0) s->shorten = atoi (val) != 0;
  else if (strcmp (key, "OPS") == 0) {
    s->ops = 0;
    if (strstr (val, "write")) s->ops |= OP_WRITE;
    if (strstr (val, "sync")) s->ops |= OP_SYNC;
  }
}

static void
defaults (struct settings *s)
{
  *s = (struct settings) { .armed = true, .err = EIO,
                           .ops = OP_WRITE | OP_SYNC };
}

/* Read the control file with raw syscalls (nothing of ours intercepted,
 * no stdio locks).  Called with lock held.
 */
static void
reload (void)
{
  const char *ctl = getenv ("FAULT_CONTROL");
  char text[sizeof last_text];
  ssize_t n = 0;
  int fd;

  if (ctl == NULL) {
    static bool env_done;
    const char *v;

    if (env_done)
      return;
    env_done = true;
    if (getenv ("FAULT_ERRNO") == NULL && getenv ("FAULT_AFTER") == NULL &&
        getenv ("FAULT_SHORT") == NULL)
      return;
    defaults (&cur);
    if ((v = getenv ("FAULT_ERRNO"))) apply (&cur, "ERRNO", v);
    if ((v = getenv ("FAULT_AFTER"))) apply (&cur, "AFTER", v);
    if ((v = getenv ("FAULT_COUNT"))) apply (&cur, "COUNT", v);
    if ((v = getenv ("FAULT_OPS"))) apply (&cur, "OPS", v);
    if ((v = getenv ("FAULT_SHORT"))) apply (&cur, "SHORT", v);
    return;
  }
  fd = syscall (SYS_openat, AT_FDCWD, ctl, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    n = syscall (SYS_read, fd, text, sizeof text - 1);
    syscall (SYS_close, fd);
    if (n < 0)
      n = 0;
  }
  text[n] = '\0';
  if (strcmp (text, last_text) == 0)
    return;
  memcpy (last_text, text, n + 1);
  atomic_store (&calls, 0);
  atomic_store (&short_done, false);
  if (n == 0) {
    cur.armed = false;
    return;
  }
  defaults (&cur);
  {
    char *save = NULL, *tok;

    for (tok = strtok_r (text, " \t\n", &save); tok;
         tok = strtok_r (NULL, " \t\n", &save)) {
      char *eq = strchr (tok, '=');

      if (eq) {
        *eq = '\0';
        apply (&cur, tok, eq + 1);
      }
    }
  }
}

static bool
fd_matches (int fd)
{
  const char *prefix = getenv ("FAULT_PATH");
  char link[64], path[4096];
  ssize_t n;

  if (prefix == NULL || *prefix == '\0')
    return false;
  snprintf (link, sizeof link, "/proc/self/fd/%d", fd);
  n = readlink (link, path, sizeof path - 1);
  if (n <= 0)
    return false;
  path[n] = '\0';
  return strncmp (path, prefix, strlen (prefix)) == 0;
}

/* 0: let the call through.  -1: fail it (errno set).  1: shorten it. */
static int
decide (int fd, enum op_class cls)
{
  struct settings s;
  unsigned long nth;
  int saved = errno;

  if (!fd_matches (fd)) {
    errno = saved;
    return 0;
  }
  pthread_mutex_lock (&lock);
  reload ();
  s = cur;
  pthread_mutex_unlock (&lock);
  errno = saved;
  if (!s.armed || !(s.ops & cls))
    return 0;
  nth = atomic_fetch_add (&calls, 1);
  if (nth < s.after)
    return 0;
  if (s.count && nth >= s.after + s.count)
    return 0;
  if (s.shorten && cls == OP_WRITE && !atomic_exchange (&short_done, true))
    return 1;
  errno = s.err;
  return -1;
}

#define REAL(name, ret, ...)                                          \
  static ret (*real_##name) (__VA_ARGS__);                            \
  if (real_##name == NULL)                                            \
    real_##name = (ret (*) (__VA_ARGS__)) dlsym (RTLD_NEXT, #name)

ssize_t
write (int fd, const void *buf, size_t n)
{
  REAL (write, ssize_t, int, const void *, size_t);
  switch (decide (fd, OP_WRITE)) {
  case -1: return -1;
  case 1: return real_write (fd, buf, n > 1 ? n / 2 : n);
  }
  return real_write (fd, buf, n);
}

ssize_t
pwrite (int fd, const void *buf, size_t n, off_t off)
{
  REAL (pwrite, ssize_t, int, const void *, size_t, off_t);
  switch (decide (fd, OP_WRITE)) {
  case -1: return -1;
  case 1: return real_pwrite (fd, buf, n > 1 ? n / 2 : n, off);
  }
  return real_pwrite (fd, buf, n, off);
}

ssize_t
pwrite64 (int fd, const void *buf, size_t n, off_t off)
{
  return pwrite (fd, buf, n, off);
}

/* A shortened vector write: the first half of the total bytes. */
static int
half_iov (const struct iovec *iov, int cnt, struct iovec *out)
{
  size_t total = 0, want, k = 0;
  int i;

  for (i = 0; i < cnt; i++)
    total += iov[i].iov_len;
  want = total > 1 ? total / 2 : total;
  for (i = 0; i < cnt && want > 0; i++) {
    out[k] = iov[i];
    if (out[k].iov_len > want)
      out[k].iov_len = want;
    want -= out[k].iov_len;
    k++;
  }
  return k;
}

ssize_t
writev (int fd, const struct iovec *iov, int cnt)
{
  struct iovec h[64];

  REAL (writev, ssize_t, int, const struct iovec *, int);
  switch (decide (fd, OP_WRITE)) {
  case -1: return -1;
  case 1:
    if (cnt <= 64)
      return real_writev (fd, h, half_iov (iov, cnt, h));
  }
  return real_writev (fd, iov, cnt);
}

ssize_t
pwritev (int fd, const struct iovec *iov, int cnt, off_t off)
{
  struct iovec h[64];

  REAL (pwritev, ssize_t, int, const struct iovec *, int, off_t);
  switch (decide (fd, OP_WRITE)) {
  case -1: return -1;
  case 1:
    if (cnt <= 64)
      return real_pwritev (fd, h, half_iov (iov, cnt, h), off);
  }
  return real_pwritev (fd, iov, cnt, off);
}

ssize_t
pwritev64 (int fd, const struct iovec *iov, int cnt, off_t off)
{
  return pwritev (fd, iov, cnt, off);
}

ssize_t
pwritev2 (int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
  struct iovec h[64];

  REAL (pwritev2, ssize_t, int, const struct iovec *, int, off_t, int);
  switch (decide (fd, OP_WRITE)) {
  case -1: return -1;
  case 1:
    if (cnt <= 64)
      return real_pwritev2 (fd, h, half_iov (iov, cnt, h), off, flags);
  }
  return real_pwritev2 (fd, iov, cnt, off, flags);
}

ssize_t
pwritev64v2 (int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
  return pwritev2 (fd, iov, cnt, off, flags);
}

int
fallocate (int fd, int mode, off_t off, off_t len)
{
  REAL (fallocate, int, int, int, off_t, off_t);
  int d = decide (fd, OP_WRITE);

  /* No partial form: a "short" fallocate is a failed one. */
  if (d == 1)
    errno = ENOSPC;
  if (d != 0)
    return -1;
  return real_fallocate (fd, mode, off, len);
}

int
fallocate64 (int fd, int mode, off_t off, off_t len)
{
  return fallocate (fd, mode, off, len);
}

int
fsync (int fd)
{
  REAL (fsync, int, int);
  if (decide (fd, OP_SYNC) == -1)
    return -1;
  return real_fsync (fd);
}

int
fdatasync (int fd)
{
  REAL (fdatasync, int, int);
  if (decide (fd, OP_SYNC) == -1)
    return -1;
  return real_fdatasync (fd);
}
