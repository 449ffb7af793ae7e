/* recorder: an LD_PRELOAD library that logs every change a program makes
 * to the files under one directory, for the power-loss simulator
 * (tests/powerloss/README.md, powerloss.py reads the log).
 *
 * Contract: with PLR_DIR (an absolute, symlink-free directory) and
 * PLR_LOG (a file outside it) in the environment, every successful call
 * below that touches a file or directory under PLR_DIR appends one entry
 * to PLR_LOG *before it returns to its caller*, so whatever the caller
 * does next (reply to a client, publish a root) comes later in the log:
 *
 *   open/openat/creat (+64, __open_2 ...), fopen/fopen64/fdopen with a
 *     writable mode: OPEN (every open under the directory, read-only
 *     ones too: a directory is opened read-only to be fsync'ed);
 *   write, pwrite(64), writev, pwritev(64), pwritev2/pwritev64v2: WRITE
 *     with the bytes written and the file offset they went to;
 *   ftruncate/truncate (+64): TRUNCATE; fallocate, posix_fallocate:
 *     FALLOCATE; rename/renameat/renameat2, unlink/unlinkat/rmdir,
 *     mkdir/mkdirat, link/linkat, bind of a Unix socket (MKNOD): the
 *     name operations; close, dup*;
 *   fsync, fdatasync, syncfs, sync: SYNC_BEGIN before the call and
 *     SYNC_END (with its errno) after it.  A sync covers what was logged
 *     before its SYNC_BEGIN, once its SYNC_END is logged.
 *
 * Order: the log's order is an order the calls could have taken effect
 * in.  A data write is logged after it completed (before its caller can
 * act on it); a sync's begin before the call.  Name operations (opens,
 * creates, renames, unlinks, mkdirs, links, closes) hold the log's lock
 * across the call itself, so their order is exact: an open racing a
 * rename of the same name finds the file the log says it found, and a
 * close is logged before another thread's open can reuse its number.
 *
 * Streams: glibc's stdio writes through internal calls no preload can
 * see, so a stream opened for writing under PLR_DIR is re-made with
 * fopencookie over a plain fd whose writes go through write() here
 * (fileno() still works: _fileno is set to that fd).
 *
 * An fd is "under the directory" if /proc/self/fd/N says so: robust
 * against fds opened or closed behind our back; each fd entry also
 * carries that path, which the simulator checks against its model.
 *
 * Log format: entries back to back, each a struct plr_entry (host byte
 * order: the log is read on the machine that wrote it), then path, path2
 * and data (lengths in the header), then zero padding to 8 bytes.  One
 * entry is one writev(2) to an O_APPEND file under a process-wide lock,
 * so the log is totally ordered and never holds a partial entry; several
 * processes (a server, restarted) append to one log one after the other.
 * A failure to log aborts the process: a log with a hole proves nothing.
 *
 * Thread safety: all of it; not async-signal-safe.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include "recorder.h"

/* ---- the real functions ---- */

/* Resolved on first use; a race only stores the same pointer twice. */
#define REAL(name)                                                      \
  static __typeof__ (name) *_Atomic real_##name;                        \
  if (real_##name == NULL)                                              \
    real_##name = (__typeof__ (name) *) dlsym (RTLD_NEXT, #name);       \
  if (real_##name == NULL)                                              \
    die ("dlsym " #name)

static void __attribute__ ((noreturn))
die (const char *what)
{
  char msg[256];
  int n = snprintf (msg, sizeof msg, "powerloss recorder: %s failed (%s)\n",
                    what, strerror (errno));
  if (n > 0)
    syscall (SYS_write, 2, msg, (size_t) n < sizeof msg ? (size_t) n
             : sizeof msg - 1);
  abort ();
}

/* ---- configuration ---- */

static const char *
watch_dir (void)
{
  const char *d = getenv ("PLR_DIR");
  return d && d[0] == '/' ? d : NULL;
}

/* Is path (absolute, normalised) the directory or under it? */
static bool
under (const char *path)
{
  const char *d = watch_dir ();
  size_t n;

  if (d == NULL || path == NULL)
    return false;
  n = strlen (d);
  while (n > 1 && d[n - 1] == '/')
    n--;
  return strncmp (path, d, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* ---- paths ---- */

/* Lexically normalise an absolute path in place: no "//", ".", "..". */
static void
normalise (char *p)
{
  char *out = p, *in = p;

  while (*in) {
    char *seg;
    size_t len;

    while (*in == '/')
      in++;
    if (*in == '\0')
      break;
    seg = in;
    while (*in && *in != '/')
      in++;
    len = in - seg;
    if (len == 1 && seg[0] == '.')
      continue;
    if (len == 2 && seg[0] == '.' && seg[1] == '.') {
      while (out > p && *--out != '/')
        ;
      continue;
    }
    *out++ = '/';
    memmove (out, seg, len);
    out += len;
  }
  if (out == p)
    *out++ = '/';
  *out = '\0';
}

/* The path fd refers to now (/proc/self/fd), or "" if none. */
static void
fd_path (int fd, char *buf, size_t size)
{
  char link[64];
  ssize_t n;

  snprintf (link, sizeof link, "/proc/self/fd/%d", fd);
  n = readlink (link, buf, size - 1);
  if (n < 0)
    n = 0;
  buf[n] = '\0';
}

/* path made absolute against dirfd (AT_FDCWD: the cwd) and normalised. */
static void
abs_path (int dirfd, const char *path, char *buf, size_t size)
{
  buf[0] = '\0';
  if (path == NULL)
    return;
  if (path[0] == '/')
    snprintf (buf, size, "%s", path);
  else {
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
      if (getcwd (base, sizeof base) == NULL)
        base[0] = '\0';
    }
    else
      fd_path (dirfd, base, sizeof base);
    if (base[0] != '/')
      return;                   /* not resolvable: not ours */
    snprintf (buf, size, "%s/%s", base, path);
  }
  normalise (buf);
}

/* Is fd open on something under the directory?  Fills path if so. */
static bool
fd_watched (int fd, char *path, size_t size)
{
  if (fd < 0 || watch_dir () == NULL)
    return false;
  fd_path (fd, path, size);
  return under (path);
}

/* ---- the log ---- */

/* Recursive: name operations hold it across the call (names_lock). */
static pthread_mutex_t log_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static int log_fd = -1;
static uint64_t log_seq;

static void
log_entry (uint16_t type, int fd, int err, uint64_t a, uint64_t b,
           uint64_t c, const char *path, const char *path2,
           const struct iovec *data, int ndata, uint64_t *seq_out)
{
  static const uint8_t zeros[8];
  struct plr_entry e;
  struct iovec iov[64 + 4];
  size_t total;
  int n = 0, i, saved = errno;
  const char *logpath = getenv ("PLR_LOG");

  if (logpath == NULL)
    return;
  memset (&e, 0, sizeof e);
  e.magic = PLR_MAGIC;
  e.type = type;
  e.pid = getpid ();
  e.tid = gettid ();
  e.fd = fd;
  e.err = err;
  e.a = a, e.b = b, e.c = c;
  e.path_len = path ? strlen (path) : 0;
  e.path2_len = path2 ? strlen (path2) : 0;
  iov[n].iov_base = &e;
  iov[n++].iov_len = sizeof e;
  if (e.path_len) {
    iov[n].iov_base = (void *) path;
    iov[n++].iov_len = e.path_len;
  }
  if (e.path2_len) {
    iov[n].iov_base = (void *) path2;
    iov[n++].iov_len = e.path2_len;
  }
  if (ndata > 64)
    die ("logging a write of more than 64 buffers");
  for (i = 0; i < ndata; i++) {
    if (data[i].iov_len == 0)
      continue;
    iov[n++] = data[i];
    e.data_len += data[i].iov_len;
  }
  total = sizeof e + e.path_len + e.path2_len + e.data_len;
  if (total % 8) {
    iov[n].iov_base = (void *) zeros;
    iov[n++].iov_len = 8 - total % 8;
    total += 8 - total % 8;
  }

  pthread_mutex_lock (&log_lock);
  if (log_fd == -1) {
    log_fd = syscall (SYS_openat, AT_FDCWD, logpath,
                      O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd == -1)
      die ("opening PLR_LOG");
  }
  e.seq = ++log_seq;
  if (seq_out)
    *seq_out = e.seq;
  /* The kernel writes all of a regular file writev at once (no signal
   * can interrupt it part way for a local file system); check anyway.
   */
  if ((size_t) syscall (SYS_writev, log_fd, iov, n) != total)
    die ("writing PLR_LOG");
  pthread_mutex_unlock (&log_lock);
  errno = saved;
}

static void
log_write (int fd, const char *path, uint64_t off, uint64_t flags,
           const struct iovec *iov, int iovcnt, size_t done)
{
  struct iovec part[64];
  int i, k = 0;

  /* Only the bytes that were written. */
  for (i = 0; i < iovcnt && done > 0; i++) {
    if (k == 64)
      die ("logging a write of more than 64 buffers");
    part[k] = iov[i];
    if (part[k].iov_len > done)
      part[k].iov_len = done;
    done -= part[k].iov_len;
    k++;
  }
  log_entry (PLR_WRITE, fd, 0, off, flags, 0, path, NULL, part, k, NULL);
}

/* Writes to an O_SYNC/O_DSYNC fd are synchronous, as RWF_DSYNC ones. */
static uint64_t
fd_sync_flags (int fd)
{
  int fl = fcntl (fd, F_GETFL);
  uint64_t r = 0;

  if (fl != -1 && (fl & O_DSYNC))
    r |= PLR_WRITE_DSYNC;
  return r;
}

/* ---- name operations ----
 *
 * Opens, creates, renames, unlinks, mkdirs, links and closes under the
 * directory run with the log locked, call and entry together: the log's
 * order of them is then the order they took effect in.  (An open racing
 * a rename of the same name in another thread must find the file the
 * log says it found; a close must be logged before its fd number can be
 * reused by another thread's open.)  Data writes and syncs need no such
 * care: each is logged after it completed, before its caller can act
 * on it, and a sync's begin entry precedes the call.
 */

static bool
names_lock (int dirfd, const char *path, int dirfd2, const char *path2)
{
  char p[PATH_MAX];
  bool ours;

  abs_path (dirfd, path, p, sizeof p);
  ours = under (p);
  if (!ours && path2) {
    abs_path (dirfd2, path2, p, sizeof p);
    ours = under (p);
  }
  if (ours)
    pthread_mutex_lock (&log_lock);
  return ours;
}

static void
names_unlock (bool locked)
{
  if (locked)
    pthread_mutex_unlock (&log_lock);
}

/* ---- open ---- */

static int
after_open (int fd, int dirfd, const char *path, int flags, mode_t mode)
{
  char want[PATH_MAX], real[PATH_MAX];
  struct stat sb;

  if (fd < 0 || watch_dir () == NULL)
    return fd;
  abs_path (dirfd, path, want, sizeof want);
  fd_path (fd, real, sizeof real);
  if (!under (want) && !under (real))
    return fd;
  if (fstat (fd, &sb) == -1)
    memset (&sb, 0, sizeof sb);
  log_entry (PLR_OPEN, fd, 0, flags, mode, sb.st_ino, want, real, NULL, 0,
             NULL);
  return fd;
}

static mode_t
mode_arg (int flags, va_list ap)
{
  return (flags & (O_CREAT | __O_TMPFILE)) ? va_arg (ap, mode_t) : 0;
}

/* Make the real call with the log locked if the path is ours, log the
 * open, return the fd.
 */
#define OPEN_CALL(dirfd, path, flags, mode, call)                       \
  do {                                                                  \
    bool locked_ = names_lock (dirfd, path, AT_FDCWD, NULL);            \
    int fd_ = after_open (call, dirfd, path, flags, mode);              \
    names_unlock (locked_);                                             \
    return fd_;                                                         \
  } while (0)

int
open (const char *path, int flags, ...)
{
  va_list ap;
  mode_t mode;
  REAL (open);

  va_start (ap, flags);
  mode = mode_arg (flags, ap);
  va_end (ap);
  OPEN_CALL (AT_FDCWD, path, flags, mode, real_open (path, flags, mode));
}

int
open64 (const char *path, int flags, ...)
{
  va_list ap;
  mode_t mode;
  REAL (open64);

  va_start (ap, flags);
  mode = mode_arg (flags, ap);
  va_end (ap);
  OPEN_CALL (AT_FDCWD, path, flags, mode, real_open64 (path, flags, mode));
}

int
openat (int dirfd, const char *path, int flags, ...)
{
  va_list ap;
  mode_t mode;
  REAL (openat);

  va_start (ap, flags);
  mode = mode_arg (flags, ap);
  va_end (ap);
  OPEN_CALL (dirfd, path, flags, mode,
             real_openat (dirfd, path, flags, mode));
}

int
openat64 (int dirfd, const char *path, int flags, ...)
{
  va_list ap;
  mode_t mode;
  REAL (openat64);

  va_start (ap, flags);
  mode = mode_arg (flags, ap);
  va_end (ap);
  OPEN_CALL (dirfd, path, flags, mode,
             real_openat64 (dirfd, path, flags, mode));
}

/* _FORTIFY_SOURCE entry points (no mode: they refuse O_CREAT). */
int __open_2 (const char *path, int flags);
int __open64_2 (const char *path, int flags);
int __openat_2 (int dirfd, const char *path, int flags);
int __openat64_2 (int dirfd, const char *path, int flags);

int
__open_2 (const char *path, int flags)
{
  REAL (__open_2);
  OPEN_CALL (AT_FDCWD, path, flags, 0, real___open_2 (path, flags));
}

int
__open64_2 (const char *path, int flags)
{
  REAL (__open64_2);
  OPEN_CALL (AT_FDCWD, path, flags, 0, real___open64_2 (path, flags));
}

int
__openat_2 (int dirfd, const char *path, int flags)
{
  REAL (__openat_2);
  OPEN_CALL (dirfd, path, flags, 0, real___openat_2 (dirfd, path, flags));
}

int
__openat64_2 (int dirfd, const char *path, int flags)
{
  REAL (__openat64_2);
  OPEN_CALL (dirfd, path, flags, 0, real___openat64_2 (dirfd, path, flags));
}

int
creat (const char *path, mode_t mode)
{
  return open (path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}

int
creat64 (const char *path, mode_t mode)
{
  return open (path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}

/* ---- writes ---- */

ssize_t
write (int fd, const void *buf, size_t n)
{
  char path[PATH_MAX];
  ssize_t r;
  REAL (write);

  if (!fd_watched (fd, path, sizeof path))
    return real_write (fd, buf, n);
  r = real_write (fd, buf, n);
  if (r > 0) {
    struct iovec iov = { (void *) buf, r };
    off_t end = lseek (fd, 0, SEEK_CUR);
    if (end == -1)
      die ("lseek after write");
    log_write (fd, path, end - r, fd_sync_flags (fd), &iov, 1, r);
  }
  return r;
}

ssize_t
pwrite (int fd, const void *buf, size_t n, off_t off)
{
  char path[PATH_MAX];
  ssize_t r;
  REAL (pwrite);

  if (!fd_watched (fd, path, sizeof path))
    return real_pwrite (fd, buf, n, off);
  r = real_pwrite (fd, buf, n, off);
  if (r > 0) {
    struct iovec iov = { (void *) buf, r };
    log_write (fd, path, off, fd_sync_flags (fd), &iov, 1, r);
  }
  return r;
}

ssize_t
pwrite64 (int fd, const void *buf, size_t n, off_t off)
{
  return pwrite (fd, buf, n, off);
}

ssize_t
writev (int fd, const struct iovec *iov, int cnt)
{
  char path[PATH_MAX];
  ssize_t r;
  REAL (writev);

  if (!fd_watched (fd, path, sizeof path))
    return real_writev (fd, iov, cnt);
  r = real_writev (fd, iov, cnt);
  if (r > 0) {
    off_t end = lseek (fd, 0, SEEK_CUR);
    if (end == -1)
      die ("lseek after writev");
    log_write (fd, path, end - r, fd_sync_flags (fd), iov, cnt, r);
  }
  return r;
}

ssize_t
pwritev2 (int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
  char path[PATH_MAX];
  ssize_t r;
  uint64_t f;
  REAL (pwritev2);

  if (!fd_watched (fd, path, sizeof path))
    return real_pwritev2 (fd, iov, cnt, off, flags);
  r = real_pwritev2 (fd, iov, cnt, off, flags);
  if (r > 0) {
    f = fd_sync_flags (fd);
    if (flags & (RWF_DSYNC | RWF_SYNC))
      f |= PLR_WRITE_DSYNC;
    if (off == -1 || (flags & RWF_APPEND)) {
      off_t end = lseek (fd, 0, SEEK_CUR);
      if (end == -1)
        die ("lseek after pwritev2");
      off = end - r;
    }
    log_write (fd, path, off, f, iov, cnt, r);
  }
  return r;
}

ssize_t
pwritev64v2 (int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
  return pwritev2 (fd, iov, cnt, off, flags);
}

ssize_t
pwritev (int fd, const struct iovec *iov, int cnt, off_t off)
{
  char path[PATH_MAX];
  ssize_t r;
  REAL (pwritev);

  if (!fd_watched (fd, path, sizeof path))
    return real_pwritev (fd, iov, cnt, off);
  r = real_pwritev (fd, iov, cnt, off);
  if (r > 0)
    log_write (fd, path, off, fd_sync_flags (fd), iov, cnt, r);
  return r;
}

ssize_t
pwritev64 (int fd, const struct iovec *iov, int cnt, off_t off)
{
  return pwritev (fd, iov, cnt, off);
}

int
ftruncate (int fd, off_t len)
{
  char path[PATH_MAX];
  int r;
  REAL (ftruncate);

  if (!fd_watched (fd, path, sizeof path))
    return real_ftruncate (fd, len);
  r = real_ftruncate (fd, len);
  if (r == 0)
    log_entry (PLR_TRUNCATE, fd, 0, len, 0, 0, path, NULL, NULL, 0, NULL);
  return r;
}

int
ftruncate64 (int fd, off_t len)
{
  return ftruncate (fd, len);
}

int
truncate (const char *p, off_t len)
{
  char path[PATH_MAX];
  int r;
  REAL (truncate);

  abs_path (AT_FDCWD, p, path, sizeof path);
  r = real_truncate (p, len);
  if (r == 0 && under (path))
    log_entry (PLR_TRUNCATE, -1, 0, len, 0, 0, path, NULL, NULL, 0, NULL);
  return r;
}

int
truncate64 (const char *p, off_t len)
{
  return truncate (p, len);
}

int
fallocate (int fd, int mode, off_t off, off_t len)
{
  char path[PATH_MAX];
  int r;
  REAL (fallocate);

  if (!fd_watched (fd, path, sizeof path))
    return real_fallocate (fd, mode, off, len);
  r = real_fallocate (fd, mode, off, len);
  if (r == 0)
    log_entry (PLR_FALLOCATE, fd, 0, mode, off, len, path, NULL, NULL, 0,
               NULL);
  return r;
}

int
fallocate64 (int fd, int mode, off_t off, off_t len)
{
  return fallocate (fd, mode, off, len);
}

int
posix_fallocate (int fd, off_t off, off_t len)
{
  char path[PATH_MAX];
  int r;
  REAL (posix_fallocate);

  if (!fd_watched (fd, path, sizeof path))
    return real_posix_fallocate (fd, off, len);
  r = real_posix_fallocate (fd, off, len);
  if (r == 0)
    log_entry (PLR_FALLOCATE, fd, 0, 0, off, len, path, NULL, NULL, 0, NULL);
  return r;
}

int
posix_fallocate64 (int fd, off_t off, off_t len)
{
  return posix_fallocate (fd, off, len);
}

/* ---- names ---- */

static int
do_rename (int olddir, const char *old, int newdir, const char *new,
           unsigned flags)
{
  char a[PATH_MAX], b[PATH_MAX];
  int r;

  bool l = names_lock (olddir, old, newdir, new);

  abs_path (olddir, old, a, sizeof a);
  abs_path (newdir, new, b, sizeof b);
  r = syscall (SYS_renameat2, olddir, old, newdir, new, flags);
  if (r == 0 && (under (a) || under (b)))
    log_entry (PLR_RENAME, -1, 0, flags, 0, 0, a, b, NULL, 0, NULL);
  names_unlock (l);
  return r;
}

int
rename (const char *old, const char *new)
{
  return do_rename (AT_FDCWD, old, AT_FDCWD, new, 0);
}

int
renameat (int olddir, const char *old, int newdir, const char *new)
{
  return do_rename (olddir, old, newdir, new, 0);
}

int
renameat2 (int olddir, const char *old, int newdir, const char *new,
           unsigned flags)
{
  return do_rename (olddir, old, newdir, new, flags);
}

static int
do_unlink (int dirfd, const char *p, int flags)
{
  char path[PATH_MAX];
  int r;

  bool l = names_lock (dirfd, p, AT_FDCWD, NULL);

  abs_path (dirfd, p, path, sizeof path);
  r = syscall (SYS_unlinkat, dirfd, p, flags);
  if (r == 0 && under (path))
    log_entry (PLR_UNLINK, -1, 0, (flags & AT_REMOVEDIR) != 0, 0, 0, path,
               NULL, NULL, 0, NULL);
  names_unlock (l);
  return r;
}

int
unlink (const char *p)
{
  return do_unlink (AT_FDCWD, p, 0);
}

int
unlinkat (int dirfd, const char *p, int flags)
{
  return do_unlink (dirfd, p, flags);
}

int
rmdir (const char *p)
{
  return do_unlink (AT_FDCWD, p, AT_REMOVEDIR);
}

int
mkdirat (int dirfd, const char *p, mode_t mode)
{
  char path[PATH_MAX];
  int r;

  bool l = names_lock (dirfd, p, AT_FDCWD, NULL);

  abs_path (dirfd, p, path, sizeof path);
  r = syscall (SYS_mkdirat, dirfd, p, mode);
  if (r == 0 && under (path))
    log_entry (PLR_MKDIR, -1, 0, mode, 0, 0, path, NULL, NULL, 0, NULL);
  names_unlock (l);
  return r;
}

int
mkdir (const char *p, mode_t mode)
{
  return mkdirat (AT_FDCWD, p, mode);
}

int
linkat (int olddir, const char *old, int newdir, const char *new, int flags)
{
  char a[PATH_MAX], b[PATH_MAX];
  int r;

  bool l = names_lock (olddir, old, newdir, new);

  abs_path (olddir, old, a, sizeof a);
  abs_path (newdir, new, b, sizeof b);
  r = syscall (SYS_linkat, olddir, old, newdir, new, flags);
  if (r == 0 && (under (a) || under (b)))
    log_entry (PLR_LINK, -1, 0, flags, 0, 0, a, b, NULL, 0, NULL);
  names_unlock (l);
  return r;
}

int
link (const char *old, const char *new)
{
  return linkat (AT_FDCWD, old, AT_FDCWD, new, 0);
}

/* A Unix socket bound to a path makes a name in its directory. */
int
bind (int fd, const struct sockaddr *addr, socklen_t len)
{
  const struct sockaddr_un *sun = (const struct sockaddr_un *) addr;
  char p[sizeof sun->sun_path + 1], path[PATH_MAX];
  bool l = false;
  int r;
  REAL (bind);

  if (addr == NULL || addr->sa_family != AF_UNIX ||
      len <= offsetof (struct sockaddr_un, sun_path) ||
      sun->sun_path[0] == '\0')         /* abstract: no file */
    return real_bind (fd, addr, len);
  {
    size_t n = len - offsetof (struct sockaddr_un, sun_path);
    if (n > sizeof sun->sun_path)
      n = sizeof sun->sun_path;
    memcpy (p, sun->sun_path, n);
    p[n] = '\0';
  }
  l = names_lock (AT_FDCWD, p, AT_FDCWD, NULL);
  abs_path (AT_FDCWD, p, path, sizeof path);
  r = real_bind (fd, addr, len);
  if (r == 0 && under (path))
    log_entry (PLR_MKNOD, -1, 0, S_IFSOCK, 0, 0, path, NULL, NULL, 0, NULL);
  names_unlock (l);
  return r;
}

/* ---- fds ---- */

int
close (int fd)
{
  char path[PATH_MAX];
  int r;
  REAL (close);

  if (!fd_watched (fd, path, sizeof path))
    return real_close (fd);
  /* Logged first, and with the log locked until the fd is gone: once it
   * is, another thread's open may get the same number.  close releases
   * the fd even when it reports an error.
   */
  pthread_mutex_lock (&log_lock);
  log_entry (PLR_CLOSE, fd, 0, 0, 0, 0, path, NULL, NULL, 0, NULL);
  r = real_close (fd);
  pthread_mutex_unlock (&log_lock);
  return r;
}

static int
after_dup (int newfd, int oldfd)
{
  char path[PATH_MAX];

  if (newfd >= 0 && fd_watched (newfd, path, sizeof path))
    log_entry (PLR_DUP, newfd, 0, oldfd, 0, 0, path, NULL, NULL, 0, NULL);
  return newfd;
}

int
dup (int fd)
{
  REAL (dup);
  return after_dup (real_dup (fd), fd);
}

/* dup2/dup3 over a watched fd close it first (atomically). */
static int
dup_over (int fd, int fd2, int flags, bool three)
{
  char path[PATH_MAX];
  bool w = fd != fd2 && fd_watched (fd2, path, sizeof path);
  int r;
  REAL (dup2);
  REAL (dup3);

  if (w) {
    pthread_mutex_lock (&log_lock);
    log_entry (PLR_CLOSE, fd2, 0, 0, 0, 0, path, NULL, NULL, 0, NULL);
  }
  r = three ? real_dup3 (fd, fd2, flags) : real_dup2 (fd, fd2);
  r = after_dup (r, fd);
  if (w)
    pthread_mutex_unlock (&log_lock);
  return r;
}

int
dup2 (int fd, int fd2)
{
  return dup_over (fd, fd2, 0, false);
}

int
dup3 (int fd, int fd2, int flags)
{
  return dup_over (fd, fd2, flags, true);
}

/* ---- syncs ---- */

static int
logged_sync (int fd, int kind, int (*fn) (int))
{
  char path[PATH_MAX];
  uint64_t begin;
  int r;

  if (kind != PLR_SYNC_ALL && !fd_watched (fd, path, sizeof path))
    return fn (fd);
  if (kind == PLR_SYNC_ALL)
    path[0] = '\0';
  log_entry (PLR_SYNC_BEGIN, fd, 0, kind, 0, 0, path, NULL, NULL, 0, &begin);
  r = fn (fd);
  log_entry (PLR_SYNC_END, fd, r == 0 ? 0 : errno, kind, begin, 0, path,
             NULL, NULL, 0, NULL);
  return r;
}

int
fsync (int fd)
{
  REAL (fsync);
  return logged_sync (fd, PLR_SYNC_FSYNC, real_fsync);
}

int
fdatasync (int fd)
{
  REAL (fdatasync);
  return logged_sync (fd, PLR_SYNC_FDATASYNC, real_fdatasync);
}

int
syncfs (int fd)
{
  REAL (syncfs);
  /* syncfs of any fd on the file system syncs all of it: log it if the
   * directory is being watched at all (the simulator assumes one file
   * system).
   */
  if (watch_dir () == NULL)
    return real_syncfs (fd);
  return logged_sync (fd, PLR_SYNC_ALL, real_syncfs);
}

static int
sync_all (int fd)
{
  REAL (sync);
  real_sync ();
  return 0;
}

void
sync (void)
{
  if (watch_dir () == NULL) {
    REAL (sync);
    real_sync ();
    return;
  }
  logged_sync (-1, PLR_SYNC_ALL, sync_all);
}

/* ---- streams ---- */

static ssize_t
cookie_read (void *c, char *buf, size_t n)
{
  REAL (read);
  return real_read (*(int *) c, buf, n);
}

static ssize_t
cookie_write (void *c, const char *buf, size_t n)
{
  size_t done = 0;

  while (done < n) {
    ssize_t r = write (*(int *) c, buf + done, n - done);
    if (r <= 0) {
      if (r == -1 && errno == EINTR)
        continue;
      return done ? (ssize_t) done : -1;
    }
    done += r;
  }
  return done;
}

static int
cookie_seek (void *c, off64_t *pos, int whence)
{
  off_t r = lseek (*(int *) c, *pos, whence);

  if (r == -1)
    return -1;
  *pos = r;
  return 0;
}

static int
cookie_close (void *c)
{
  int r = close (*(int *) c);

  free (c);
  return r;
}

/* A stream on fd writing through our write(); NULL on error (fd is
 * left open, as fdopen leaves it).
 */
static FILE *
cookie_stream (int fd, const char *mode)
{
  static const cookie_io_functions_t io = {
    .read = cookie_read, .write = cookie_write,
    .seek = cookie_seek, .close = cookie_close,
  };
  int *c = malloc (sizeof *c);
  FILE *fp;

  if (c == NULL)
    return NULL;
  *c = fd;
  fp = fopencookie (c, mode, io);
  if (fp == NULL) {
    free (c);
    return NULL;
  }
  fp->_fileno = fd;             /* so that fileno() (for fsync) works */
  return fp;
}

static bool
writable_mode (const char *mode)
{
  return strpbrk (mode, "wa+") != NULL;
}

/* The stream, NULL if p is not ours (or the mode only reads), or
 * (FILE *) -1 if opening failed (errno set).
 */
static FILE *
open_stream (const char *p, const char *mode)
{
  char path[PATH_MAX];
  int flags, fd;
  bool plus;
  FILE *fp;

  abs_path (AT_FDCWD, p, path, sizeof path);
  if (!writable_mode (mode) || !under (path))
    return NULL;
  plus = strchr (mode, '+') != NULL;
  switch (mode[0]) {
  case 'w': flags = O_CREAT | O_TRUNC | (plus ? O_RDWR : O_WRONLY); break;
  case 'a': flags = O_CREAT | O_APPEND | (plus ? O_RDWR : O_WRONLY); break;
  default: flags = plus ? O_RDWR : O_RDONLY;
  }
  if (strchr (mode, 'e'))
    flags |= O_CLOEXEC;
  if (strchr (mode, 'x'))
    flags |= O_EXCL;
  fd = open (p, flags, 0666);
  if (fd == -1)
    return (FILE *) -1;
  fp = cookie_stream (fd, mode);
  if (fp == NULL) {
    int saved = errno;
    close (fd);
    errno = saved;
    return (FILE *) -1;
  }
  return fp;
}

FILE *
fopen (const char *p, const char *mode)
{
  FILE *fp = open_stream (p, mode);
  REAL (fopen);

  if (fp == (FILE *) -1)
    return NULL;
  return fp ? fp : real_fopen (p, mode);
}

FILE *
fopen64 (const char *p, const char *mode)
{
  FILE *fp = open_stream (p, mode);
  REAL (fopen64);

  if (fp == (FILE *) -1)
    return NULL;
  return fp ? fp : real_fopen64 (p, mode);
}

FILE *
fdopen (int fd, const char *mode)
{
  char path[PATH_MAX];
  REAL (fdopen);

  if (writable_mode (mode) && fd_watched (fd, path, sizeof path))
    return cookie_stream (fd, mode);
  return real_fdopen (fd, mode);
}
