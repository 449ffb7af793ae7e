/* See serverharness.h. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "membackend.h"
#include "server.h"
#include "serverharness.h"

void
harness_init (void)
{
  static bool done;
  struct sigaction sa = { .sa_handler = SIG_IGN };

  if (done)
    return;
  done = true;
  /* The client side may close first: EPIPE, not death by SIGPIPE. */
  sigaction (SIGPIPE, &sa, NULL);
  /* What minnbd_main would set: the backend, a few workers, and no
   * handshake deadline (no main loop runs to enforce it).
   */
  B = &mem_backend;
  opts.threads = 4;
  opts.handshake_timeout = 0;
  progname = "minnbd-fuzz";
  /* FUZZ_VERBOSE=1 shows the server's debug messages while debugging a
   * reproducer.
   */
  opts.verbose = getenv ("FUZZ_VERBOSE") != NULL;
}

struct client {
  int fd;
  const uint8_t *data;
  size_t size;
};

/* The client: write the input while draining replies (the server blocks
 * on a full socket otherwise), then half-close and drain until the
 * server closes its end.
 */
static void *
client_thread (void *vcl)
{
  struct client *cl = vcl;
  size_t pos = 0;
  char sink[65536];
  bool wr_open = true;

  for (;;) {
    struct pollfd p = { .fd = cl->fd, .events = POLLIN };
    ssize_t r;

    if (wr_open && pos == cl->size) {
      shutdown (cl->fd, SHUT_WR);
      wr_open = false;
    }
    if (wr_open)
      p.events |= POLLOUT;
    if (poll (&p, 1, -1) == -1) {
      if (errno == EINTR)
        continue;
      break;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      r = read (cl->fd, sink, sizeof sink);
      if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
        break;                  /* the server closed the connection */
    }
    if (wr_open && (p.revents & POLLOUT)) {
      r = write (cl->fd, cl->data + pos, cl->size - pos);
      if (r > 0)
        pos += r;
      else if (r < 0 && errno != EAGAIN && errno != EINTR) {
        /* The server hung up early (a bad magic, say): stop sending. */
        shutdown (cl->fd, SHUT_WR);
        wr_open = false;
      }
    }
  }
  return NULL;
}

void
serve_bytes (const uint8_t *data, size_t size)
{
  struct client cl = { .data = data, .size = size };
  pthread_t t;
  int sv[2];

  if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1) {
    perror ("socketpair");
    abort ();
  }
  cl.fd = sv[1];
  if (fcntl (cl.fd, F_SETFL, O_NONBLOCK) == -1) {
    perror ("fcntl");
    abort ();
  }
  mem_backend_reset ();
  if (pthread_create (&t, NULL, client_thread, &cl) != 0) {
    perror ("pthread_create");
    abort ();
  }
  conn_serve (sv[0], sv[0], true);
  close (sv[0]);                     /* the client then sees EOF */
  pthread_join (t, NULL);
  close (sv[1]);
}
