/* Listening and accepting: systemd socket activation, Unix sockets (-U),
 * TCP on IPv4 and IPv6 (-p/-i, TCP_NODELAY on every connection), and the
 * registry of live connections used to shut down cleanly.
 *
 * Threads: the main thread runs listen_loop (poll on the listening
 * sockets and the wake-up pipe).  Each accepted connection gets its own
 * detached thread running conn_serve.  Connection threads start with
 * every signal blocked except SIGUSR1, which only serves to interrupt a
 * blocked read() on a non-socket (-s with pipes) at shutdown.
 *
 * Locks: the registry mutex guards the connection list and count; it is
 * taken only when a connection starts or ends and at shutdown.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "server.h"
#include "vector.h"

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reg_cond = PTHREAD_COND_INITIALIZER;
static struct conn *reg_head;
/* Connection threads started and not yet finished (a thread holds its
 * slot from before it exists until after its connection is gone, so
 * connections_wait never misses one that is just starting).
 */
static unsigned reg_slots;
/* Connections still in the handshake with a deadline, oldest first:
 * every deadline is its connection's start plus the same timeout, so the
 * head always expires first.
 */
static struct conn *hs_head, *hs_tail;
static int wake_fd = -1;        /* write end of the main wake-up pipe */
bool listen_activated;

void
set_wake_fd (int fd)
{
  wake_fd = fd;
}

void
wake_main (void)
{
  int saved = errno;

  if (wake_fd >= 0) {
    ssize_t r = write (wake_fd, "", 1);
    (void) r;                   /* a full pipe already wakes the loop */
  }
  errno = saved;
}

static int64_t
now_ms (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * INT64_C (1000) + ts.tv_nsec / 1000000;
}

/* Called with reg_lock held. */
static void
hs_remove_locked (struct conn *c)
{
  if (!c->hs_listed)
    return;
  if (c->hs_prev)
    c->hs_prev->hs_next = c->hs_next;
  else
    hs_head = c->hs_next;
  if (c->hs_next)
    c->hs_next->hs_prev = c->hs_prev;
  else
    hs_tail = c->hs_prev;
  c->hs_prev = c->hs_next = NULL;
  c->hs_listed = false;
}

int
connection_register (struct conn *c)
{
  SCOPED_LOCK (&reg_lock);

  c->prev = NULL;
  c->next = reg_head;
  if (reg_head)
    reg_head->prev = c;
  reg_head = c;

  /* The handshake deadline: only sockets can be cut off (shutdown). */
  if (opts.handshake_timeout > 0 && c->is_socket && !opts.single) {
    bool was_empty = hs_head == NULL;

    c->hs_deadline = now_ms () + opts.handshake_timeout * INT64_C (1000);
    c->hs_prev = hs_tail;
    c->hs_next = NULL;
    if (hs_tail)
      hs_tail->hs_next = c;
    else
      hs_head = c;
    hs_tail = c;
    c->hs_listed = true;
    /* The main loop sleeps without a deadline while the list is empty. */
    if (was_empty)
      wake_main ();
  }
  return 0;
}

void
connection_handshake_done (struct conn *c)
{
  SCOPED_LOCK (&reg_lock);

  hs_remove_locked (c);
}

void
connection_unregister (struct conn *c)
{
  SCOPED_LOCK (&reg_lock);

  hs_remove_locked (c);
  if (c->prev)
    c->prev->next = c->next;
  else
    reg_head = c->next;
  if (c->next)
    c->next->prev = c->prev;
}

/* Cut off every connection whose handshake deadline passed (shutdown:
 * its reader's next read or write fails and it closes).  Returns the
 * milliseconds until the next deadline, -1 for none.
 */
static int
handshake_deadlines (void)
{
  int64_t now = now_ms ();
  struct conn *c;
  SCOPED_LOCK (&reg_lock);

  while ((c = hs_head) != NULL && c->hs_deadline <= now) {
    log_error ("%s: no export chosen within %u s "
               "(--handshake-timeout): closing", c->name,
               opts.handshake_timeout);
    shutdown (c->rfd, SHUT_RDWR);
    hs_remove_locked (c);
  }
  if (hs_head == NULL)
    return -1;
  return hs_head->hs_deadline - now > INT_MAX ? INT_MAX
    : (int) (hs_head->hs_deadline - now);
}

/* Stop reading on every connection: each then finishes its in-flight
 * requests and closes.  A connection still in the handshake sees EOF.
 * hard: also stop writing, for a client that does not read its replies
 * (its workers would otherwise block in write() for ever).
 */
void
connections_stop (bool hard)
{
  struct conn *c;
  SCOPED_LOCK (&reg_lock);

  for (c = reg_head; c; c = c->next) {
    if (c->is_socket &&
        shutdown (c->rfd, hard ? SHUT_RDWR : SHUT_RD) == 0)
      continue;
    pthread_kill (c->reader, SIGUSR1);
  }
}

/* Grace period for in-flight requests at shutdown, in 100 ms rounds. */
#define SHUTDOWN_GRACE_ROUNDS 50

void
connections_wait (void)
{
  unsigned round;

  for (round = 1; ; round++) {
    struct timespec ts;
    int r = 0;

    {
      SCOPED_LOCK (&reg_lock);

      clock_gettime (CLOCK_REALTIME, &ts);
      ts.tv_nsec += 100 * 1000 * 1000;
      if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
      }
      while (reg_slots > 0 && r == 0)
        r = pthread_cond_timedwait (&reg_cond, &reg_lock, &ts);
      if (reg_slots == 0)
        return;
    }
    /* A signal sent to interrupt a read can land just before the read
     * starts: repeat until every connection has noticed.  After the
     * grace period, a client that does not read its replies is cut off.
     */
    if (round == SHUTDOWN_GRACE_ROUNDS)
      log_error ("shutdown: connections still busy after %d s: closing "
                 "them", SHUTDOWN_GRACE_ROUNDS / 10);
    connections_stop (round >= SHUTDOWN_GRACE_ROUNDS);
  }
}

/* --allow: TCP peers allowed to connect (none given: everyone).
 * Written while parsing the command line, read-only afterwards.
 */
struct allow_rule {
  int family;                   /* AF_INET or AF_INET6 */
  unsigned char addr[16];       /* network byte order, host bits zero */
  unsigned prefix;
};
DEFINE_VECTOR_TYPE (allow_vector, struct allow_rule);
static allow_vector allows;

static void
mask_bits (unsigned char *addr, size_t len, unsigned prefix)
{
  size_t i;

  for (i = 0; i < len; i++) {
    unsigned keep = prefix >= 8 * (i + 1) ? 8
      : prefix > 8 * i ? prefix - 8 * i : 0;

    addr[i] &= keep ? (unsigned char) (0xff << (8 - keep)) : 0;
  }
}

int
allow_add (const char *spec)
{
  struct allow_rule r = { 0 };
  char buf[INET6_ADDRSTRLEN + 8], *slash, *end;
  unsigned long prefix;
  size_t len;

  if (strlen (spec) >= sizeof buf)
    goto bad;
  strcpy (buf, spec);
  slash = strchr (buf, '/');
  if (slash)
    *slash = '\0';
  if (inet_pton (AF_INET, buf, r.addr) == 1) {
    r.family = AF_INET;
    len = 4;
  }
  else if (inet_pton (AF_INET6, buf, r.addr) == 1) {
    r.family = AF_INET6;
    len = 16;
  }
  else
    goto bad;
  r.prefix = 8 * len;
  if (slash) {
    errno = 0;
    prefix = strtoul (slash + 1, &end, 10);
    if (slash[1] == '\0' || *end != '\0' || errno || prefix > 8 * len)
      goto bad;
    r.prefix = prefix;
  }
  mask_bits (r.addr, len, r.prefix);
  if (allow_vector_append (&allows, r) == -1) {
    log_error ("--allow: %m");
    return -1;
  }
  return 0;

 bad:
  log_error ("--allow %s: expected an IPv4 or IPv6 address, optionally "
             "followed by /PREFIX (0 to 32 for IPv4, 0 to 128 for IPv6), "
             "e.g. 192.168.1.0/24 or fd00::/8", spec);
  return -1;
}

bool
allow_peer (const struct sockaddr *sa, socklen_t salen)
{
  unsigned char addr[16];
  int family;
  size_t i, len;

  if (allows.len == 0 || sa->sa_family == AF_UNIX)
    return true;
  if (sa->sa_family == AF_INET) {
    family = AF_INET;
    len = 4;
    memcpy (addr, &((const struct sockaddr_in *) sa)->sin_addr, 4);
  }
  else if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *) sa)->sin6_addr;

    /* An IPv4 client on a dual-stack socket (socket activation). */
    if (IN6_IS_ADDR_V4MAPPED (a6)) {
      family = AF_INET;
      len = 4;
      memcpy (addr, &a6->s6_addr[12], 4);
    }
    else {
      family = AF_INET6;
      len = 16;
      memcpy (addr, a6, 16);
    }
  }
  else
    return false;
  for (i = 0; i < allows.len; i++) {
    unsigned char masked[16];

    if (allows.ptr[i].family != family)
      continue;
    memcpy (masked, addr, len);
    mask_bits (masked, len, allows.ptr[i].prefix);
    if (memcmp (masked, allows.ptr[i].addr, len) == 0)
      return true;
  }
  return false;
}

void
allow_free (void)
{
  allow_vector_reset (&allows);
}

/* Listening sockets. */

static int
socket_activation (int **fds)
{
  const char *s = getenv ("LISTEN_PID"), *n = getenv ("LISTEN_FDS");
  char *end;
  long pid, nfds, i;

  if (s == NULL || n == NULL)
    return 0;
  errno = 0;
  pid = strtol (s, &end, 10);
  if (errno || *end || pid != getpid ())
    return 0;
  nfds = strtol (n, &end, 10);
  if (errno || *end || nfds < 1 || nfds > 64) {
    log_error ("LISTEN_FDS=%s: expected a number of sockets 1..64", n);
    return -1;
  }
  unsetenv ("LISTEN_PID");
  unsetenv ("LISTEN_FDS");
  unsetenv ("LISTEN_FDNAMES");
  *fds = calloc (nfds, sizeof **fds);
  if (*fds == NULL)
    return -1;
  for (i = 0; i < nfds; i++) {
    int fd = 3 + i;

    fcntl (fd, F_SETFD, FD_CLOEXEC);
    (*fds)[i] = fd;
  }
  listen_activated = true;
  debug ("socket activation: %ld socket(s)", nfds);
  return nfds;
}

static int
listen_unix (const char *path)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  int fd;

  if (strlen (path) >= sizeof addr.sun_path) {
    log_error ("-U %s: socket path too long (at most %zu bytes)", path,
               sizeof addr.sun_path - 1);
    return -1;
  }
  strcpy (addr.sun_path, path);
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1 ||
      bind (fd, (struct sockaddr *) &addr, sizeof addr) == -1 ||
      listen (fd, SOMAXCONN) == -1) {
    log_error ("-U %s: %m", path);
    if (fd >= 0)
      close (fd);
    return -1;
  }
  return fd;
}

/* "0.0.0.0:10809", "[::]:10809" for messages. */
static void
format_addr (const struct sockaddr *sa, socklen_t len, char *buf, size_t n)
{
  char host[NI_MAXHOST], serv[NI_MAXSERV];

  if (getnameinfo (sa, len, host, sizeof host, serv, sizeof serv,
                   NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    snprintf (buf, n, "(an address of family %d)", sa->sa_family);
  else
    snprintf (buf, n, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s",
              host, serv);
}

/* Every address getaddrinfo gives for -i/-p (without -i: the IPv4 and
 * IPv6 wildcards) is bound, or minnbd fails: listening on some of them
 * only would send the clients of the others elsewhere (another process
 * holding 127.0.0.1:PORT gets every IPv4 client).  Only an address
 * family the kernel lacks altogether is skipped.
 */
static int
listen_tcp (int **fds, int *port_out)
{
  const char *port = opts.port ? opts.port : "10809";
  struct addrinfo hints = {
    .ai_flags = AI_PASSIVE | AI_ADDRCONFIG,
    .ai_family = AF_UNSPEC,
    .ai_socktype = SOCK_STREAM,
  };
  struct addrinfo *ai, *a;
  int n = 0, err, one = 1;
  char where[NI_MAXHOST + NI_MAXSERV + 8];

  err = getaddrinfo (opts.ipaddr, port, &hints, &ai);
  if (err) {
    log_error ("-i %s -p %s: %s", opts.ipaddr ? opts.ipaddr : "(any)",
               port, gai_strerror (err));
    return -1;
  }
  for (a = ai; a; a = a->ai_next)
    n++;
  *fds = calloc (n ? n : 1, sizeof **fds);
  if (*fds == NULL) {
    freeaddrinfo (ai);
    return -1;
  }
  n = 0;
  for (a = ai; a; a = a->ai_next) {
    int fd = socket (a->ai_family, a->ai_socktype | SOCK_CLOEXEC,
                     a->ai_protocol);

    /* -p 0: every address family gets the port the first one got. */
    if (n > 0 && port_out && *port_out) {
      if (a->ai_family == AF_INET6)
        ((struct sockaddr_in6 *) a->ai_addr)->sin6_port = htons (*port_out);
      else if (a->ai_family == AF_INET)
        ((struct sockaddr_in *) a->ai_addr)->sin_port = htons (*port_out);
    }
    format_addr (a->ai_addr, a->ai_addrlen, where, sizeof where);
    if (fd == -1) {
      if (errno == EAFNOSUPPORT) {
        debug ("%s: %m: skipped", where);
        continue;
      }
      log_error ("cannot listen on %s: socket: %m", where);
      goto fail;
    }
    setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Separate v4 and v6 sockets, so both can bind the same port. */
    if (a->ai_family == AF_INET6)
      setsockopt (fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind (fd, a->ai_addr, a->ai_addrlen) == -1 ||
        listen (fd, SOMAXCONN) == -1) {
      log_error ("cannot listen on %s: %m%s", where,
                 errno == EADDRINUSE ? " (another process listens there; "
                 "choose another port with -p, or one address with -i)"
                 : "");
      close (fd);
      goto fail;
    }
    if (n == 0 && port_out) {
      struct sockaddr_storage ss;
      socklen_t sl = sizeof ss;

      if (getsockname (fd, (struct sockaddr *) &ss, &sl) == 0)
        *port_out = ntohs (ss.ss_family == AF_INET6
                           ? ((struct sockaddr_in6 *) &ss)->sin6_port
                           : ((struct sockaddr_in *) &ss)->sin_port);
    }
    debug ("listening on %s", where);
    (*fds)[n++] = fd;
  }
  freeaddrinfo (ai);
  if (n == 0) {
    log_error ("-p %s%s%s: no address to listen on", port,
               opts.ipaddr ? " -i " : "", opts.ipaddr ? opts.ipaddr : "");
    free (*fds);
    *fds = NULL;
    return -1;
  }
  return n;

 fail:
  freeaddrinfo (ai);
  while (n > 0)
    close ((*fds)[--n]);
  free (*fds);
  *fds = NULL;
  return -1;
}

int
listen_setup (int **fds, char **unix_path_out, char **tmpdir_out,
              int *port_out)
{
  int n, fd;

  *fds = NULL;
  *unix_path_out = *tmpdir_out = NULL;
  *port_out = 0;

  n = socket_activation (fds);
  if (n != 0)
    return n;
  if (opts.single)
    return 0;

  if (opts.unix_socket) {
    char *path;

    if (strcmp (opts.unix_socket, "-") == 0) {
      /* A private socket for --run (or whoever reads the log). */
      const char *tmp = getenv ("TMPDIR");
      char *dir;

      if (asprintf (&dir, "%s/minnbdXXXXXX", tmp && *tmp ? tmp : "/tmp")
          == -1)
        return -1;
      if (mkdtemp (dir) == NULL) {
        log_error ("mkdtemp: %s: %m", dir);
        free (dir);
        return -1;
      }
      if (asprintf (&path, "%s/socket", dir) == -1) {
        rmdir (dir);
        free (dir);
        return -1;
      }
      *tmpdir_out = dir;
    }
    else if ((path = strdup (opts.unix_socket)) == NULL)
      return -1;
    fd = listen_unix (path);
    if (fd == -1) {
      free (path);
      return -1;
    }
    *unix_path_out = path;
    *fds = malloc (sizeof **fds);
    if (*fds == NULL)
      return -1;
    (*fds)[0] = fd;
    return 1;
  }
  return listen_tcp (fds, port_out);
}

/* Connection threads. */

struct conn_args {
  int rfd, wfd;
  bool is_socket;
};

static atomic_bool single_finished;

static void
sigusr1_unblock (void)
{
  sigset_t s;

  sigemptyset (&s);
  sigaddset (&s, SIGUSR1);
  pthread_sigmask (SIG_UNBLOCK, &s, NULL);
}

/* Take a connection slot; false when --max-connections are live. */
static bool
slot_take (bool limited)
{
  SCOPED_LOCK (&reg_lock);

  if (limited && opts.max_connections > 0 &&
      reg_slots >= opts.max_connections)
    return false;
  reg_slots++;
  return true;
}

static void
slot_give_back (void)
{
  SCOPED_LOCK (&reg_lock);

  reg_slots--;
  pthread_cond_broadcast (&reg_cond);
}

static void *
conn_thread (void *va)
{
  struct conn_args a = *(struct conn_args *) va;

  free (va);
  sigusr1_unblock ();
  conn_serve (a.rfd, a.wfd, a.is_socket);
  if (opts.single) {
    atomic_store (&single_finished, true);
    wake_main ();
  }
  tls_thread_end ();
  /* The slot keeps the main thread from unloading the backend; it is
   * free before the client sees the socket close, so a client that saw
   * its connection end may connect again within --max-connections.
   */
  slot_give_back ();
  wake_main ();
  close (a.rfd);
  if (a.wfd != a.rfd)
    close (a.wfd);
  return NULL;
}

/* Start the thread of a connection whose slot is taken. */
static int
spawn_connection (int rfd, int wfd, bool is_socket)
{
  struct conn_args *a = malloc (sizeof *a);
  pthread_attr_t attr;
  sigset_t all, old;
  pthread_t t;
  int err;

  if (a == NULL) {
    slot_give_back ();
    return -1;
  }
  *a = (struct conn_args) { rfd, wfd, is_socket };
  pthread_attr_init (&attr);
  pthread_attr_setdetachstate (&attr, PTHREAD_CREATE_DETACHED);
  sigfillset (&all);
  pthread_sigmask (SIG_BLOCK, &all, &old);
  err = pthread_create (&t, &attr, conn_thread, a);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  pthread_attr_destroy (&attr);
  if (err) {
    slot_give_back ();
    free (a);
    errno = err;
    return -1;
  }
  return 0;
}

int
start_connection (int rfd, int wfd, bool is_socket)
{
  slot_take (false);
  return spawn_connection (rfd, wfd, is_socket);
}

/* Errors of accept() that mean "no resources now": waiting for a
 * connection to end is the only cure; trying again at once would spin.
 */
static bool
accept_out_of_resources (int err)
{
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

/* How long accepting pauses after running out of descriptors when no
 * connection ends meanwhile (one ending wakes the loop at once).
 */
#define ACCEPT_PAUSE_MS 1000

/* Over-limit refusals logged at most once per this many ms. */
#define REFUSAL_LOG_MS 1000

void
listen_loop (int *fds, int nfds, int wakefd)
{
  struct pollfd *pfd;
  int i, one = 1, timeout;
  bool paused = false;          /* out of descriptors: not accepting */
  int64_t pause_until = 0, refusal_logged = 0, disallowed_logged = 0;
  unsigned long refused = 0, disallowed = 0;
  struct sockaddr_storage peer;
  socklen_t peer_len;

  pfd = calloc (nfds + 1, sizeof *pfd);
  if (pfd == NULL) {
    log_error ("%m");
    atomic_store (&shutting_down, true);
  }
  else {
    for (i = 0; i < nfds; i++)
      pfd[i] = (struct pollfd) { .fd = fds[i], .events = POLLIN };
    pfd[nfds] = (struct pollfd) { .fd = wakefd, .events = POLLIN };
  }

  while (pfd && !atomic_load (&shutting_down)) {
    timeout = handshake_deadlines ();
    if (paused) {
      int64_t left = pause_until - now_ms ();

      if (left <= 0)
        paused = false;
      else if (timeout == -1 || left < timeout)
        timeout = left;
    }
    /* While paused only the wake-up pipe is watched (fd -1 is ignored). */
    for (i = 0; i < nfds; i++)
      pfd[i].fd = paused ? -1 : fds[i];
    if (poll (pfd, nfds + 1, timeout) == -1) {
      if (errno != EINTR)
        log_error ("poll: %m");
    }
    if (pfd[nfds].revents & POLLIN) {
      char buf[64];

      /* A connection ended (or a signal came): accepting may work again. */
      paused = false;
      while (read (wakefd, buf, sizeof buf) > 0)
        ;
    }
    check_children ();
    if (atomic_load (&shutting_down) ||
        (opts.single && atomic_load (&single_finished)))
      break;
    for (i = 0; i < nfds && !paused; i++) {
      int fd;

      if (pfd[i].fd == -1 || !(pfd[i].revents & POLLIN))
        continue;
      peer_len = sizeof peer;
      fd = accept4 (fds[i], (struct sockaddr *) &peer, &peer_len,
                    SOCK_CLOEXEC);
      if (fd == -1) {
        if (accept_out_of_resources (errno)) {
          log_error ("accept: %m: not accepting connections until one "
                     "ends (--max-connections %u; raise the open files "
                     "limit, ulimit -n, or lower --max-connections)",
                     opts.max_connections);
          paused = true;
          pause_until = now_ms () + ACCEPT_PAUSE_MS;
        }
        else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
          log_error ("accept: %m");
        continue;
      }
      /* Not allowed (--allow): closed before the greeting. */
      if (!allow_peer ((struct sockaddr *) &peer, peer_len)) {
        int64_t now = now_ms ();
        char where[NI_MAXHOST + NI_MAXSERV + 8];

        close (fd);
        disallowed++;
        if (now - disallowed_logged >= REFUSAL_LOG_MS) {
          format_addr ((struct sockaddr *) &peer, peer_len, where,
                       sizeof where);
          log_error ("refused a connection from %s (not allowed by "
                     "--allow)%s", where, disallowed > 1 ? ", and others"
                     : "");
          disallowed_logged = now;
          disallowed = 0;
        }
        continue;
      }
      /* Over the limit: closed at once, before any thread or buffer is
       * spent on it (the client sees the connection closed before the
       * greeting).  Logged at most once a second, with a count.
       */
      if (!slot_take (true)) {
        int64_t now = now_ms ();

        close (fd);
        refused++;
        if (now - refusal_logged >= REFUSAL_LOG_MS) {
          log_error ("%u connections (--max-connections): refused %lu "
                     "new one(s)", opts.max_connections, refused);
          refusal_logged = now;
          refused = 0;
        }
        continue;
      }
      /* Fails harmlessly on Unix sockets. */
      setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      if (spawn_connection (fd, fd, true) == -1) {
        log_error ("cannot start a connection thread: %m");
        close (fd);
      }
    }
  }
  free (pfd);

  /* Stop accepting, then let every connection finish its work. */
  for (i = 0; i < nfds; i++)
    close (fds[i]);
  connections_stop (false);
  connections_wait ();
}
