/* One client connection: buffered input, whole-reply output, and the
 * transmission loop (a reader that reads requests ahead and a pool of
 * worker threads that execute them and reply out of order).
 *
 * Threads: the connection's own thread (the "reader") does the
 * handshake, then reads requests and queues them.  Up to opts.threads
 * workers, started on demand, take requests from the queue.  The reader
 * executes a request itself when nothing else is in flight and no more
 * input is waiting, buffered or in the socket (queue depth 1), or when
 * requests take less time on average than a thread hand-off
 * (INLINE_MAX_NS: page cache, tmpfs), as long as its reply can be
 * written without waiting for the client.
 * Slow requests always go to the workers, so a long one never holds up
 * reading the next.
 *
 * Locks: qlock guards the queue, the free pool and the in-flight counts;
 * wlock serialises replies (each reply is one writev).  Neither is ever
 * held while calling the backend.  Per-connection memory is bounded by
 * MAX_INFLIGHT_BYTES of write payloads, one read buffer per thread and
 * a small pool.
 *
 * Ending: on EOF, NBD_CMD_DISC, a bad magic or server shutdown the reader
 * stops reading, waits for every queued request to be executed and
 * answered (answers to a vanished client are dropped), joins the
 * workers, flushes the backend if anything was written since the last
 * flush, and closes the handle and the socket.
 */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "cleanup.h"
#include "minmax.h"
#include "nbd-protocol.h"
#include "server.h"

#define POOL_MAX          128              /* idle request structs kept */
/* Requests whose execution takes less than this on average (page cache,
 * tmpfs) cost less than handing them to another thread does.
 */
#define INLINE_MAX_NS     20000
#define POOL_BUF_MAX      (4u * 1024 * 1024) /* bigger buffers are freed */

int
conn_read (struct conn *c, void *buf, size_t len)
{
  char *p = buf;
  ssize_t r;
  bool direct;

  while (len > 0) {
    if (c->rstart < c->rend) {
      size_t n = c->rend - c->rstart;

      if (n > len)
        n = len;
      memcpy (p, c->rbuf + c->rstart, n);
      c->rstart += n;
      p += n;
      len -= n;
      continue;
    }
    /* Big payloads go straight to their destination; small reads fill
     * the buffer so that pipelined requests cost one syscall per batch.
     */
    direct = len >= READ_BUFFER_SIZE / 2;
    if (!direct)
      c->rstart = c->rend = 0;
    if (c->tls)
      r = tls_read (c, direct ? p : c->rbuf, direct ? len : READ_BUFFER_SIZE);
    else
      r = read (c->rfd, direct ? p : c->rbuf,
                direct ? len : READ_BUFFER_SIZE);
    if (r == 0) {
      errno = 0;                /* EOF */
      return -1;
    }
    if (r < 0) {
      if (errno == EINTR && !atomic_load (&shutting_down))
        continue;
      return -1;
    }
    if (direct) {
      p += r;
      len -= r;
    }
    else
      c->rend = r;
  }
  return 0;
}

/* Read exactly len bytes past the (empty) buffer, for a request header
 * that a big write payload follows: filling the buffer would pull in up
 * to READ_BUFFER_SIZE bytes of that payload, only to copy them out
 * again (a quarter of the CPU of a 256 KiB write on tmpfs went there).
 */
static int
conn_read_unbuffered (struct conn *c, void *buf, size_t len)
{
  char *p = buf;

  assert (c->rstart == c->rend);
  while (len > 0) {
    ssize_t r = c->tls ? tls_read (c, p, len) : read (c->rfd, p, len);

    if (r == 0) {
      errno = 0;                /* EOF */
      return -1;
    }
    if (r < 0) {
      if (errno == EINTR && !atomic_load (&shutting_down))
        continue;
      return -1;
    }
    p += r;
    len -= r;
  }
  return 0;
}

int
conn_skip (struct conn *c, uint64_t len)
{
  char scratch[4096];

  while (len > 0) {
    size_t n = len > sizeof scratch ? sizeof scratch : len;

    if (conn_read (c, scratch, n) == -1)
      return -1;
    len -= n;
  }
  return 0;
}

int
conn_writev (struct conn *c, struct iovec *iov, int iovcnt)
{
  SCOPED_LOCK (&c->wlock);

  if (atomic_load (&c->dead))
    return -1;
  if (c->tls) {
    if (tls_writev (c, iov, iovcnt) == -1) {
      debug ("%s: write: %m", c->name);
      atomic_store (&c->dead, true);
      return -1;
    }
    return 0;
  }
  while (iovcnt > 0) {
    ssize_t r = writev (c->wfd, iov, MIN (iovcnt, IOV_MAX));

    if (r < 0) {
      if (errno == EINTR)
        continue;
      /* The client is gone: later replies are dropped; the reader sees
       * EOF or an error and winds the connection down.
       */
      debug ("%s: write: %m", c->name);
      atomic_store (&c->dead, true);
      return -1;
    }
    while (iovcnt > 0 && (size_t) r >= iov->iov_len) {
      r -= iov->iov_len;
      iov++;
      iovcnt--;
    }
    if (iovcnt > 0) {
      iov->iov_base = (char *) iov->iov_base + r;
      iov->iov_len -= r;
    }
  }
  return 0;
}

int
conn_write (struct conn *c, const void *buf, size_t len)
{
  struct iovec iov = { (void *) buf, len };

  return conn_writev (c, &iov, 1);
}

/* Request pool. */

/* Reader side: requests come from a private list, refilled with the
 * whole shared free list at once, so the reader seldom takes qlock for
 * them.
 */
static struct request *
request_get (struct conn *c)
{
  struct request *r;

  if (c->rpool == NULL) {
    pthread_mutex_lock (&c->qlock);
    c->rpool = c->freelist;
    c->freelist = NULL;
    c->nfree = 0;
    pthread_mutex_unlock (&c->qlock);
  }
  r = c->rpool;
  if (r)
    c->rpool = r->next;
  else
    r = calloc (1, sizeof *r);
  if (r)
    r->next = NULL;
  return r;
}

static void
request_destroy (struct request *r)
{
  free (r->buf);
  free (r->rep);
  extents_free (&r->ex);
  free (r);
}

/* Called with qlock held, once r is answered. */
static void
request_done_locked (struct conn *c, struct request *r)
{
  c->in_flight--;
  c->in_flight_bytes -= r->charge;
  r->charge = 0;
  r->error = 0;
  r->errmsg = NULL;
  if (r->bufcap > POOL_BUF_MAX) {
    free (r->buf);
    r->buf = NULL;
    r->bufcap = 0;
  }
  if (r->ex.v.cap > 4096)
    extents_free (&r->ex);
  if (c->nfree < POOL_MAX) {
    r->next = c->freelist;
    c->freelist = r;
    c->nfree++;
  }
  else
    request_destroy (r);
  pthread_cond_signal (&c->done_cond);
}

/* Would a reply of len bytes have to wait for the client to read
 * earlier replies?  TIOCOUTQ counts what is queued in the socket with
 * the kernel's per-buffer overhead; allow a quarter more for this reply's.
 */
static bool
output_would_block (struct conn *c, size_t len)
{
  int n;

  if (c->sndbuf <= 0 || ioctl (c->wfd, TIOCOUTQ, &n) == -1)
    return false;               /* not a socket: no way to know */
  return (size_t) n + len + len / 4 + 8192 > (size_t) c->sndbuf;
}

/* Is more input waiting in the socket?  A big WRITE's payload is read
 * past the buffer, so an empty buffer says nothing about what follows:
 * without this the reader took every such write as the last one in
 * flight and executed it itself, one at a time, while the client's next
 * writes waited in the socket (a duplicate write on cas hashed on one
 * core).  Not a socket, or no way to know: assume nothing.
 */
static bool
input_pending (struct conn *c)
{
  int n;

  return ioctl (c->rfd, FIONREAD, &n) == 0 && n > 0;
}

/* Execute and keep a moving average of how long execution takes. */
static void
execute_timed (struct conn *c, struct request *r)
{
  struct timespec t0, t1;
  int64_t ns, avg;

  clock_gettime (CLOCK_MONOTONIC, &t0);
  request_execute (c, r);
  clock_gettime (CLOCK_MONOTONIC, &t1);
  ns = (t1.tv_sec - t0.tv_sec) * INT64_C (1000000000) +
    (t1.tv_nsec - t0.tv_nsec);
  /* Racy read-modify-write among workers: an approximate average is all
   * the heuristic needs.
   */
  avg = atomic_load_explicit (&c->avg_ns, memory_order_relaxed);
  atomic_store_explicit (&c->avg_ns, avg + (ns - avg) / 8,
                         memory_order_relaxed);
}

static void *
worker (void *vc)
{
  struct conn *c = vc;
  struct request *r;

  pthread_mutex_lock (&c->qlock);
  for (;;) {
    while (c->qhead == NULL && !c->stopping) {
      c->idle++;
      pthread_cond_wait (&c->qcond, &c->qlock);
      c->idle--;
    }
    r = c->qhead;
    if (r == NULL)
      break;                    /* stopping and nothing left */
    c->qhead = r->next;
    if (c->qhead == NULL)
      c->qtail = NULL;
    pthread_mutex_unlock (&c->qlock);

    execute_timed (c, r);

    pthread_mutex_lock (&c->qlock);
    request_done_locked (c, r);
  }
  pthread_mutex_unlock (&c->qlock);
  request_thread_exit ();
  if (c->tls)
    tls_thread_end ();
  return NULL;
}

/* Called with qlock held.  Workers block every signal: the backend's
 * syscalls are never interrupted, and signals reach the main thread.
 */
static int
worker_start_locked (struct conn *c)
{
  sigset_t all, old;
  int err;

  sigfillset (&all);
  pthread_sigmask (SIG_BLOCK, &all, &old);
  err = pthread_create (&c->workers[c->nworkers], NULL, worker, c);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  if (err) {
    errno = err;
    return -1;
  }
  c->nworkers++;
  return 0;
}

/* Bytes a request holds or will hold while in flight (what the
 * back-pressure counts), and of those what must be allocated now (a
 * WRITE's payload; reads use the executing thread's buffer).
 */
static size_t
request_charge (const struct request *r)
{
  if (r->error)
    return 0;
  if (r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE)
    return r->count;
  return 0;
}

/* Hand r to the workers: wake an idle one, or start one if all are
 * busy.
 */
static void
queue_request_locked (struct conn *c, struct request *r)
{
  r->next = NULL;
  if (c->qtail)
    c->qtail->next = r;
  else
    c->qhead = r;
  c->qtail = r;
  if (c->idle == 0 && c->nworkers < opts.threads)
    worker_start_locked (c);
  else if (c->idle > 0)
    pthread_cond_signal (&c->qcond);
}

static void
transmission (struct conn *c)
{
  struct nbd_request h;
  struct request *r;
  size_t need;
  bool inline_exec;
  bool big_write = false;       /* the last request was a big WRITE */

  {
    socklen_t sl = sizeof c->sndbuf;
    int want = SEND_BUFFER_SIZE, have;
    struct sockaddr_storage ss;
    socklen_t al = sizeof ss;

    /* A Unix socket's send buffer (208 KiB by default on Linux) is
     * smaller than one 256 KiB read reply (nbdcopy's request size):
     * every such reply blocked in writev until the client had read most
     * of it, and the other workers queued on wlock behind it (seqR on
     * cas: about a third of the server's samples were those sleeps and
     * wake-ups).  Room for a few replies lets workers hand theirs over
     * and go on.  The kernel caps it at net.core.wmem_max; never shrink
     * it.  TCP is left alone: setting the size would turn off the
     * kernel's own tuning of it.
     */
    if (c->is_socket &&
        getsockname (c->wfd, (struct sockaddr *) &ss, &al) == 0 &&
        ss.ss_family == AF_UNIX &&
        getsockopt (c->wfd, SOL_SOCKET, SO_SNDBUF, &have, &sl) == 0 &&
        have < want)
      setsockopt (c->wfd, SOL_SOCKET, SO_SNDBUF, &want, sizeof want);
    sl = sizeof c->sndbuf;
    if (getsockopt (c->wfd, SOL_SOCKET, SO_SNDBUF, &c->sndbuf, &sl) == -1)
      c->sndbuf = 0;
  }
  c->workers = calloc (opts.threads, sizeof *c->workers);
  if (c->workers == NULL) {
    log_error ("%s: %m", c->name);
    return;
  }
  {
    SCOPED_LOCK (&c->qlock);

    if (worker_start_locked (c) == -1) {
      log_error ("%s: cannot start a worker thread: %m", c->name);
      return;
    }
  }

  for (;;) {
    /* After a big WRITE, the next is likely one too: read just its
     * header, so that its payload goes straight to its buffer.  (Small
     * requests keep filling the buffer: one read per batch of them.)
     */
    if ((big_write && c->rstart == c->rend
         ? conn_read_unbuffered (c, &h, sizeof h)
         : conn_read (c, &h, sizeof h)) == -1) {
      if (errno)
        debug ("%s: read: %m", c->name);
      else
        debug ("%s: client closed the connection", c->name);
      break;
    }
    if (be32toh (h.magic) != NBD_REQUEST_MAGIC) {
      log_error ("%s: bad request magic 0x%08" PRIx32
                 ": closing the connection", c->name, be32toh (h.magic));
      break;
    }
    if (be16toh (h.type) == NBD_CMD_DISC) {
      debug ("%s: NBD_CMD_DISC", c->name);
      break;
    }
    r = request_get (c);
    if (r == NULL) {
      log_error ("%s: %m", c->name);
      break;
    }
    r->flags = be16toh (h.flags);
    r->type = be16toh (h.type);
    r->cookie = h.cookie;       /* opaque: echoed back as sent */
    r->offset = be64toh (h.offset);
    r->count = be32toh (h.count);
    r->error = 0;
    r->errmsg = NULL;
    request_validate (c, r);
    need = request_charge (r);
    big_write = r->type == NBD_CMD_WRITE && r->count >= READ_BUFFER_SIZE / 2;

    /* Grown before the in-flight check below, so the cap can be passed
     * by at most this one request; pooled buffers make this rare.
     */
    if (r->type == NBD_CMD_WRITE && need > r->bufcap) {
      char *nb = malloc (need);

      if (nb == NULL) {
        r->error = NBD_ENOMEM;
        r->errmsg = "out of memory for the request buffer";
        need = 0;
      }
      else {
        free (r->buf);
        r->buf = nb;
        r->bufcap = need;
      }
    }

    pthread_mutex_lock (&c->qlock);
    /* Back-pressure: stop reading until enough in-flight work is done. */
    while (c->in_flight > 0 &&
           (c->in_flight >= MAX_INFLIGHT_REQS ||
            c->in_flight_bytes + need > MAX_INFLIGHT_BYTES))
      pthread_cond_wait (&c->done_cond, &c->qlock);
    c->in_flight++;
    c->in_flight_bytes += need;
    r->charge = need;

    if (r->type == NBD_CMD_WRITE) {
      int rr;

      /* The payload follows whatever we think of the request. */
      pthread_mutex_unlock (&c->qlock);
      if (r->error == 0)
        rr = conn_read (c, r->buf, r->count);
      else
        rr = conn_skip (c, r->count);
      pthread_mutex_lock (&c->qlock);
      if (rr == -1) {
        debug ("%s: short write payload", c->name);
        request_done_locked (c, r);
        pthread_mutex_unlock (&c->qlock);
        break;
      }
    }

    /* Run the request here rather than hand it to a worker when nothing
     * else is in flight and no more input is waiting, buffered or in the
     * socket (the reader would only sleep in read() meanwhile), or when
     * requests take less time on average than a thread hand-off (files
     * in the page cache or on tmpfs): then one thread serving the whole
     * connection beats waking others.  Slow backends (disks) keep
     * requests on the workers, so a long request never holds up reading
     * the next ones; and a reply that would have to wait for a client
     * not reading its replies goes to a worker, so the reader never
     * blocks in write().
     *
     * Only when this request is the only one in flight: a worker's reply
     * still to be written could otherwise fill the socket after the
     * output_would_block() check, and the reader would block behind it
     * (a client that sends a long pipeline before reading any reply then
     * deadlocks against us).  A connection served inline never has more
     * than one request in flight anyway.
     */
    inline_exec = c->in_flight == 1 &&
      (atomic_load_explicit (&c->avg_ns, memory_order_relaxed) <
       INLINE_MAX_NS ||
       (c->rstart == c->rend && !(c->tls && tls_pending (c)) &&
        !input_pending (c)));
    if (!inline_exec)
      queue_request_locked (c, r);
    pthread_mutex_unlock (&c->qlock);

    /* Checked only now: with this request the only one in flight, every
     * earlier reply has been written and no other thread writes until
     * the next request is read, so the socket's queue cannot grow
     * behind the check.
     */
    if (inline_exec &&
        output_would_block (c, r->type == NBD_CMD_READ ? r->count : 0)) {
      pthread_mutex_lock (&c->qlock);
      queue_request_locked (c, r);
      pthread_mutex_unlock (&c->qlock);
      inline_exec = false;
    }
    if (inline_exec) {
      execute_timed (c, r);
      pthread_mutex_lock (&c->qlock);
      request_done_locked (c, r);
      pthread_mutex_unlock (&c->qlock);
    }
  }

  /* Drain: every request read is executed and answered (the spec's
   * NBD_CMD_DISC semantics, and harmless when the client vanished).
   */
  pthread_mutex_lock (&c->qlock);
  while (c->in_flight > 0)
    pthread_cond_wait (&c->done_cond, &c->qlock);
  c->stopping = true;
  pthread_cond_broadcast (&c->qcond);
  pthread_mutex_unlock (&c->qlock);
  request_thread_exit ();       /* the reader's own, from inline requests */
}

static void
conn_free (struct conn *c)
{
  struct request *r;
  unsigned i;

  if (c->workers) {
    for (i = 0; i < c->nworkers; i++)
      pthread_join (c->workers[i], NULL);
    free (c->workers);
  }
  while ((r = c->freelist) != NULL) {
    c->freelist = r->next;
    request_destroy (r);
  }
  while ((r = c->rpool) != NULL) {
    c->rpool = r->next;
    request_destroy (r);
  }
  export_close (c);
  tls_end (c);
  meta_drop (c);
  free (c->meta_export);
  free (c->rbuf);
  pthread_mutex_destroy (&c->wlock);
  pthread_mutex_destroy (&c->qlock);
  pthread_cond_destroy (&c->qcond);
  pthread_cond_destroy (&c->done_cond);
  free (c);
}

/* "conn 12 (127.0.0.1:40312)", "conn 12 (unix, pid 4321)", "conn 12". */
static void
conn_name (struct conn *c)
{
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  char host[NI_MAXHOST], serv[NI_MAXSERV];

  snprintf (c->name, sizeof c->name, "conn %lu", c->id);
  if (!c->is_socket ||
      getpeername (c->rfd, (struct sockaddr *) &ss, &sl) == -1)
    return;
  if (ss.ss_family == AF_UNIX) {
    struct ucred cred;
    socklen_t cl = sizeof cred;

    if (getsockopt (c->rfd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0 &&
        cred.pid > 0)
      snprintf (c->name, sizeof c->name, "conn %lu (unix, pid %d)", c->id,
                (int) cred.pid);
    return;
  }
  if (getnameinfo ((struct sockaddr *) &ss, sl, host, sizeof host,
                   serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) == 0)
    snprintf (c->name, sizeof c->name,
              ss.ss_family == AF_INET6 ? "conn %lu ([%s]:%s)"
              : "conn %lu (%s:%s)", c->id, host, serv);
}

void
conn_serve (int rfd, int wfd, bool is_socket)
{
  static atomic_ulong next_id;
  pthread_mutexattr_t ma;
  struct conn *c;
  bool ok;

  c = calloc (1, sizeof *c);
  if (c == NULL || (c->rbuf = malloc (READ_BUFFER_SIZE)) == NULL) {
    log_error ("new connection: %m");
    free (c);
    return;
  }
  c->rfd = rfd;
  c->wfd = wfd;
  c->is_socket = is_socket;
  c->reader = pthread_self ();
  c->id = atomic_fetch_add (&next_id, 1) + 1;
  conn_name (c);
  /* Adaptive mutexes spin briefly before sleeping: both locks are held
   * only for a few microseconds, and a futex round trip costs more.
   */
  pthread_mutexattr_init (&ma);
  pthread_mutexattr_settype (&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
  pthread_mutex_init (&c->wlock, &ma);
  pthread_mutex_init (&c->qlock, &ma);
  pthread_mutexattr_destroy (&ma);
  pthread_cond_init (&c->qcond, NULL);
  pthread_cond_init (&c->done_cond, NULL);

  connection_register (c);
  log_info ("%s: new connection", c->name);

  ok = handshake (c) == 0;
  connection_handshake_done (c);
  if (ok)
    transmission (c);

  /* Join the workers before touching the handle. */
  if (c->workers) {
    unsigned i;

    for (i = 0; i < c->nworkers; i++)
      pthread_join (c->workers[i], NULL);
    free (c->workers);
    c->workers = NULL;
  }
  if (c->handle && !c->readonly && c->caps.can_flush &&
      atomic_load (&c->dirty)) {
    backend_error_clear ();
    CONN_CHECK_CALL (c, BACKEND_CALL_FLUSH, 0);
    if (B->flush (c->handle, 0) == -1)
      log_error ("%s: flush on close: %s", c->name,
                 backend_error_message () ? : strerror (errno));
  }
  log_info ("%s: closed", c->name);
  /* The backend handle is closed before the connection leaves the
   * registry: at shutdown the main thread unloads the backend as soon
   * as the registry is empty, and a close racing with the unload (cas:
   * the volume list) is a use after free.  Found by ThreadSanitizer.
   */
  export_close (c);
  connection_unregister (c);
  conn_free (c);
}
