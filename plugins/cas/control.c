/* The server side of the control socket (control-proto.h): a server that
 * holds a store for writing runs nbdcas commands on it for the store's
 * owner, so that snapshots, clones, deletes, diffs, stat and fsck work
 * while the store is served, with the output and exit status the command
 * has offline.
 *
 * One thread accepts connections and runs their commands one at a time
 * (tool_run is not reentrant: getopt; admin commands are rare and the
 * store serialises them anyway).  The thread blocks SIGPIPE, so that a
 * client that goes away while its command writes to its pipe only makes
 * the writes fail, not the server die; threads a command starts inherit
 * that mask.
 *
 * Thread safety: cas_control_open and cas_control_close run single
 * threaded (config_complete and unload); the socket thread is the only
 * user of the socket in between.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "cleanup.h"
#include "control.h"
#include "control-proto.h"
#include "le.h"
#include "nbdcas.h"

struct cas_control {
  struct cas_store *st;
  char *path;
  int listen_fd;
  int wake[2];                  /* close: write a byte to stop the thread */
  pthread_t thread;
  bool running;
};

struct cas_control *
cas_control_open (struct cas_store *st)
{
  struct cas_control *c;
  struct sockaddr_un sun = { .sun_family = AF_UNIX };
  mode_t old;
  int n;

  c = calloc (1, sizeof *c);
  if (c == NULL)
    return NULL;
  c->st = st;
  c->listen_fd = c->wake[0] = c->wake[1] = -1;
  if (asprintf (&c->path, "%s/%s", cas_store_dir (st), CONTROL_SOCKET) == -1) {
    c->path = NULL;
    goto err;
  }
  n = snprintf (sun.sun_path, sizeof sun.sun_path, "%s", c->path);
  if (n < 0 || (size_t) n >= sizeof sun.sun_path) {
    backend_error ("cas: the control socket path %s is too long for a Unix "
                   "socket (%zu bytes at most): admin commands on this store "
                   "will need the server stopped", c->path,
                   sizeof sun.sun_path - 1);
    errno = ENAMETOOLONG;
    goto err;
  }
  /* We hold the store's exclusive lock: a socket there is a dead
   * server's.
   */
  unlink (c->path);
  c->listen_fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->listen_fd == -1)
    goto err_msg;
  /* Owner only from the start (the umask applies to bind). */
  old = umask (0177);
  if (bind (c->listen_fd, (struct sockaddr *) &sun, sizeof sun) == -1) {
    umask (old);
    goto err_msg;
  }
  umask (old);
  if (chmod (c->path, 0600) == -1 || listen (c->listen_fd, 16) == -1 ||
      pipe2 (c->wake, O_CLOEXEC) == -1)
    goto err_msg;
  return c;

 err_msg:
  backend_error ("cas: control socket %s: %m", c->path);
 err:
  cas_control_close (c);
  return NULL;
}

/* Wait until fd has something to read, at most until deadline
 * (CLOCK_MONOTONIC), and never past the server's close (c->wake).
 * Commands run one at a time: a client that connects and sends nothing
 * must not hold up the next ones, nor the server's exit.  0 readable, -1
 * not (a message says why).
 */
static int
wait_request (struct cas_control *c, int fd, const struct timespec *deadline)
{
  for (;;) {
    struct pollfd pfd[2] = {
      { .fd = fd, .events = POLLIN },
      { .fd = c->wake[0], .events = POLLIN },
    };
    struct timespec now;
    int64_t ms;
    int r;

    clock_gettime (CLOCK_MONOTONIC, &now);
    ms = (deadline->tv_sec - now.tv_sec) * 1000 +
      (deadline->tv_nsec - now.tv_nsec) / 1000000;
    if (ms <= 0) {
      backend_error ("cas: control: a client sent no complete request in "
                     "%d seconds: dropped", CONTROL_REQUEST_TIMEOUT);
      return -1;
    }
    r = poll (pfd, 2, ms);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1)
      return -1;
    if (pfd[1].revents)
      return -1;                /* closing: the thread loop sees it too */
    if (pfd[0].revents)
      return 0;
  }
}

/* Receive the request header and its file descriptors.  Returns the
 * number of descriptors received (any extra are closed), -1 on error.
 */
static int
recv_request (int fd, uint8_t *hdr, int *fds)
{
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE ((CONTROL_NFDS + 4) * sizeof (int))];
  } cm;
  struct iovec iov = { hdr, CONTROL_REQUEST_SIZE };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                        .msg_control = cm.buf,
                        .msg_controllen = sizeof cm.buf };
  struct cmsghdr *h;
  ssize_t n;
  int got = 0;

  n = recvmsg (fd, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
  for (h = CMSG_FIRSTHDR (&msg); h; h = CMSG_NXTHDR (&msg, h)) {
    int *p = (int *) CMSG_DATA (h);
    size_t k, m;
    if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
      continue;
    m = (h->cmsg_len - CMSG_LEN (0)) / sizeof (int);
    for (k = 0; k < m; k++) {
      int f;
      memcpy (&f, p + k, sizeof f);
      if (got < CONTROL_NFDS)
        fds[got++] = f;
      else
        close (f);
    }
  }
  if (n != CONTROL_REQUEST_SIZE || (msg.msg_flags & MSG_CTRUNC))
    return -1;
  return got;
}

static int
read_full (int fd, void *buf, size_t len)
{
  size_t got = 0;

  while (got < len) {
    ssize_t n = read (fd, (char *) buf + got, len - got);
    if (n == -1 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    got += n;
  }
  return 0;
}

static void
send_reply (int fd, int status)
{
  uint8_t r[CONTROL_REPLY_SIZE];

  memcpy (r, CONTROL_MAGIC, 8);
  put_le32 (r + 8, CONTROL_VERSION);
  put_le32 (r + 12, (uint32_t) status);
  if (send (fd, r, sizeof r, MSG_NOSIGNAL) != (ssize_t) sizeof r)
    backend_debug ("cas: control: the client left before its reply");
}

/* The peer must be the store's owner: the user the server runs as, or
 * root.
 */
static bool
peer_allowed (int fd)
{
  struct ucred cred;
  socklen_t len = sizeof cred;

  if (getsockopt (fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1)
    return false;
  return cred.uid == 0 || cred.uid == geteuid ();
}

/* One connection: one command. */
static void
serve_one (struct cas_control *c, int fd)
{
  uint8_t hdr[CONTROL_REQUEST_SIZE];
  int fds[CONTROL_NFDS] = { -1, -1, -1, -1 };
  CLEANUP_FREE char *args = NULL;
  CLEANUP_FREE char **argv = NULL;
  uint32_t version, argc, len, i;
  struct tool_ctx ctx;
  FILE *out = NULL, *err = NULL;
  int nfds, status;
  char *p;
  struct timespec deadline;
  struct timeval tv = { CONTROL_REQUEST_TIMEOUT, 0 };

  if (!peer_allowed (fd)) {
    backend_error ("cas: control: refused a connection from another user");
    return;
  }
  /* The request must arrive in time: each read waits for it (and for the
   * server's close) at most until the deadline; a receive timeout bounds
   * a read that a client stalls in the middle of a request.
   */
  clock_gettime (CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += CONTROL_REQUEST_TIMEOUT;
  if (setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == -1 ||
      wait_request (c, fd, &deadline) == -1)
    return;
  nfds = recv_request (fd, hdr, fds);
  if (nfds < 0 || memcmp (hdr, CONTROL_MAGIC, 8) != 0)
    goto close_fds;
  version = get_le32 (hdr + 8);
  argc = get_le32 (hdr + 16);
  len = get_le32 (hdr + 20);
  if (nfds != CONTROL_NFDS)
    goto close_fds;
  /* Output straight to the client's own stdout and stderr. */
  out = fdopen (fds[1], "w");
  if (out)
    fds[1] = -1;
  err = fdopen (fds[2], "w");
  if (err)
    fds[2] = -1;
  if (out == NULL || err == NULL)
    goto close_fds;
  if (version != CONTROL_VERSION) {
    fprintf (err, "nbdcas: the server holding this store speaks control "
             "protocol version %d, not %" PRIu32 ": use the nbdcas of the "
             "server's release\n", CONTROL_VERSION, version);
    send_reply (fd, CONTROL_STATUS_VERSION);
    goto close_fds;
  }
  if (argc == 0 || argc > CONTROL_MAX_ARGC || len > CONTROL_MAX_LENGTH)
    goto close_fds;
  args = malloc (len + 1);
  argv = calloc (argc + 1, sizeof *argv);
  if (args == NULL || argv == NULL ||
      (len > 0 && wait_request (c, fd, &deadline) == -1) ||
      read_full (fd, args, len) == -1)
    goto close_fds;
  args[len] = '\0';
  /* argc strings, each ending in NUL, filling len exactly. */
  for (i = 0, p = args; i < argc; i++) {
    char *end = memchr (p, '\0', args + len - p);
    if (end == NULL)
      goto close_fds;
    argv[i] = p;
    p = end + 1;
  }
  if (p != args + len)
    goto close_fds;

  ctx = (struct tool_ctx) { .out = out, .err = err, .cwdfd = fds[3],
                            .store = c->st };
  tool_set_ctx (&ctx);
  status = tool_run (argc, argv);
  fflush (out);
  fflush (err);
  tool_set_ctx (NULL);
  backend_debug ("cas: control: '%s%s%s' exited with %d",
                 argc > 1 ? argv[1] : "", argc > 2 ? " " : "",
                 argc > 2 ? argv[2] : "", status);
  /* The client's descriptors are closed before it hears the status, so
   * its output is complete when it exits.
   */
  fclose (out);
  fclose (err);
  out = err = NULL;
  send_reply (fd, status);

 close_fds:
  if (out)
    fclose (out);
  if (err)
    fclose (err);
  for (i = 0; i < CONTROL_NFDS; i++)
    if (fds[i] >= 0)
      close (fds[i]);
}

static void *
control_thread (void *arg)
{
  struct cas_control *c = arg;
  sigset_t pipe;
  struct timespec zero = { 0, 0 };

  /* "bg:": a background thread, not a connection's (tests count those). */
  pthread_setname_np (pthread_self (), "bg:cas-control");
  sigemptyset (&pipe);
  sigaddset (&pipe, SIGPIPE);
  pthread_sigmask (SIG_BLOCK, &pipe, NULL);
  for (;;) {
    struct pollfd pfd[2] = {
      { .fd = c->listen_fd, .events = POLLIN },
      { .fd = c->wake[0], .events = POLLIN },
    };
    int fd;

    if (poll (pfd, 2, -1) == -1) {
      if (errno == EINTR)
        continue;
      backend_error ("cas: control socket: poll: %m");
      break;
    }
    if (pfd[1].revents)
      break;
    if (!(pfd[0].revents & POLLIN))
      continue;
    fd = accept4 (c->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd == -1)
      continue;
    serve_one (c, fd);
    close (fd);
    /* A SIGPIPE the command earned stays pending while blocked: drop it. */
    while (sigtimedwait (&pipe, NULL, &zero) > 0)
      ;
  }
  return NULL;
}

int
cas_control_start (struct cas_control *c)
{
  int err;

  if (c == NULL || c->running)
    return 0;
  err = pthread_create (&c->thread, NULL, control_thread, c);
  if (err) {
    errno = err;
    backend_error ("cas: control socket thread: %m");
    return -1;
  }
  c->running = true;
  return 0;
}

void
cas_control_close (struct cas_control *c)
{
  if (c == NULL)
    return;
  if (c->running) {
    ssize_t r = write (c->wake[1], "", 1);
    (void) r;
    pthread_join (c->thread, NULL);
  }
  if (c->listen_fd >= 0) {
    close (c->listen_fd);
    if (c->path)
      unlink (c->path);
  }
  if (c->wake[0] >= 0)
    close (c->wake[0]);
  if (c->wake[1] >= 0)
    close (c->wake[1]);
  free (c->path);
  free (c);
}
