/* The client side of the control socket (control-proto.h): when a server
 * holds the store a command works on, nbdcas hands the whole command line
 * to that server, with its own stdout, stderr and working directory, and
 * exits with the server's status.  So a command prints the same, and
 * exits the same, whether the store is served or not.
 *
 * Thread safety: called once, from the main thread, before any work.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "cleanup.h"
#include "control-proto.h"
#include "le.h"
#include "nbdcas.h"

int tool_argc;
char **tool_argv;
/* A control socket was found whose server is gone (see tool_open_store). */
bool tool_stale_socket;

/* Connect to DIR/control.sock.  fd >= 0 connected; -1: errno ENOENT (no
 * server holds the store), ECONNREFUSED (a stale socket: its server is
 * gone) or another error.
 */
static int
connect_control (const char *store)
{
  struct sockaddr_un sun = { .sun_family = AF_UNIX };
  int fd, dirfd = -1, n, saved;

  n = snprintf (sun.sun_path, sizeof sun.sun_path, "%s/%s", store,
                CONTROL_SOCKET);
  if (n < 0 || (size_t) n >= sizeof sun.sun_path) {
    /* A long path: through the directory's file descriptor. */
    dirfd = open (store, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd == -1)
      return -1;
    snprintf (sun.sun_path, sizeof sun.sun_path, "/proc/self/fd/%d/%s",
              dirfd, CONTROL_SOCKET);
  }
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    goto err;
  if (connect (fd, (struct sockaddr *) &sun, sizeof sun) == -1)
    goto err;
  if (dirfd >= 0)
    close (dirfd);
  return fd;
 err:
  saved = errno;
  if (fd >= 0)
    close (fd);
  if (dirfd >= 0)
    close (dirfd);
  errno = saved;
  return -1;
}

static int
send_request (int fd)
{
  uint8_t hdr[CONTROL_REQUEST_SIZE];
  int fds[CONTROL_NFDS];
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE (sizeof fds)];
  } cm;
  struct msghdr msg = { 0 };
  struct iovec iov = { hdr, sizeof hdr };
  CLEANUP_FREE char *args = NULL;
  size_t len = 0, off = 0;
  int i, cwd;

  for (i = 0; i < tool_argc; i++)
    len += strlen (tool_argv[i]) + 1;
  if (tool_argc > CONTROL_MAX_ARGC || len > CONTROL_MAX_LENGTH) {
    tool_error ("the command line is too long for the control socket");
    errno = E2BIG;
    return -1;
  }
  args = malloc (len ? len : 1);
  if (args == NULL)
    return -1;
  for (i = 0; i < tool_argc; i++) {
    size_t n = strlen (tool_argv[i]) + 1;
    memcpy (args + off, tool_argv[i], n);
    off += n;
  }
  cwd = open (".", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (cwd == -1) {
    tool_error ("the current directory: %m");
    return -1;
  }
  memcpy (hdr, CONTROL_MAGIC, 8);
  put_le32 (hdr + 8, CONTROL_VERSION);
  put_le32 (hdr + 12, 0);
  put_le32 (hdr + 16, tool_argc);
  put_le32 (hdr + 20, len);
  fds[0] = STDIN_FILENO;
  fds[1] = STDOUT_FILENO;
  fds[2] = STDERR_FILENO;
  fds[3] = cwd;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cm.buf;
  msg.msg_controllen = sizeof cm.buf;
  memset (cm.buf, 0, sizeof cm.buf);
  CMSG_FIRSTHDR (&msg)->cmsg_level = SOL_SOCKET;
  CMSG_FIRSTHDR (&msg)->cmsg_type = SCM_RIGHTS;
  CMSG_FIRSTHDR (&msg)->cmsg_len = CMSG_LEN (sizeof fds);
  memcpy (CMSG_DATA (CMSG_FIRSTHDR (&msg)), fds, sizeof fds);
  fflush (stdout);
  fflush (stderr);
  if (sendmsg (fd, &msg, MSG_NOSIGNAL) != (ssize_t) sizeof hdr ||
      send (fd, args, len, MSG_NOSIGNAL) != (ssize_t) len) {
    close (cwd);
    return -1;
  }
  close (cwd);
  return 0;
}

/* The server's reply: the exit status, or -1 (EOF: the server went away
 * during the command, or a reply we cannot read).
 */
static int
read_reply (int fd)
{
  uint8_t r[CONTROL_REPLY_SIZE];
  size_t got = 0;

  while (got < sizeof r) {
    ssize_t n = read (fd, r + got, sizeof r - got);
    if (n == -1 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    got += n;
  }
  if (memcmp (r, CONTROL_MAGIC, 8) != 0)
    return -1;
  return (int32_t) get_le32 (r + 12);
}

void
tool_remote_forward (const char *store)
{
  int fd, status;

  if (tool_argv == NULL)
    return;                     /* not the nbdcas program */
  fd = connect_control (store);
  if (fd == -1) {
    /* Its server is gone (a crash leaves the socket behind): the store
     * is free again, and the command runs here.  A read-write open
     * removes the socket (tool_open_store).
     */
    if (errno == ECONNREFUSED)
      tool_stale_socket = true;
    return;
  }
  if (tool_verbose)
    tool_info ("a server holds %s: running the command there", store);
  if (send_request (fd) == -1) {
    tool_error ("sending the command to the server holding %s: %m "
                "(is it running? see its log)", store);
    exit (EXIT_FAIL);
  }
  status = read_reply (fd);
  close (fd);
  if (status < 0) {
    tool_error ("the server holding %s closed its control socket without "
                "an answer: it may have stopped or crashed during the "
                "command (see its log); if it is gone, run the command "
                "again", store);
    exit (EXIT_FAIL);
  }
  exit (status);
}
