/* minnbd internals shared between the server's source files.
 *
 * Layout: cmdline.c (command line, daemon, signals, --run), listen.c
 * (sockets, accept loop, connection registry), handshake.c (option
 * haggling), conn.c (per-connection reader, worker pool, reply writing),
 * requests.c (validation and execution of NBD commands against the
 * backend), services.c (the backend_* services and logging), exports.c
 * (export names: listing, default, resolution).
 *
 * Thread safety: `opts` and `B` are written only by minnbd_main() (or a
 * test harness setting up) before the first connection and read-only
 * afterwards.  A struct conn is owned by its reader thread; the fields
 * workers touch are documented in comments below.  Nothing on the data path takes a global lock.
 */
#ifndef MINNBD_SERVER_H
#define MINNBD_SERVER_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "backend.h"
#include "capabilities.h"
#include "vector.h"

/* Limits.  Requests up to MAX_REQUEST bytes are accepted (the spec asks
 * servers to take at least 32 MiB); a connection holds at most
 * MAX_INFLIGHT_BYTES of request buffers at once, so a client cannot make
 * the server allocate what it likes.
 */
#define MAX_REQUEST        (64u * 1024 * 1024)
#define MAX_INFLIGHT_BYTES (256u * 1024 * 1024)
#define MAX_INFLIGHT_REQS  1024
#define MAX_OPTION_LEN     (64u * 1024)     /* bigger: ERR_TOO_BIG */
#define MAX_OPTION_SKIP    (16u * 1024 * 1024) /* bigger: disconnect */
#define MAX_OPTIONS        4096             /* per session */
#define MAX_EXTENTS        65536            /* descriptors per reply */
#define MAX_EXPORTS        100000
#define MAX_THREADS        1024
#define DEFAULT_THREADS    16
#define DEFAULT_MAX_CONNECTIONS   1024
#define DEFAULT_HANDSHAKE_TIMEOUT 10  /* seconds, as qemu-nbd's */
#define READ_BUFFER_SIZE   (128u * 1024)
/* Asked for on each connection: room for a few big replies (the kernel
 * doubles it for its overhead and caps it at net.core.wmem_max).
 */
#define SEND_BUFFER_SIZE   (1024 * 1024)

struct options {
  const char *unix_socket;     /* -U, NULL if none; "-" = private */
  const char *port;            /* -p */
  const char *ipaddr;          /* -i */
  bool single;                 /* -s */
  bool readonly;               /* -r */
  bool foreground;             /* -f */
  const char *export_name;     /* -e, NULL if not given */
  const char *description;     /* -D */
  unsigned threads;            /* -t */
  const char *pidfile;         /* -P */
  bool verbose;                /* -v */
  const char *run;             /* --run */
  bool exit_with_parent;
  unsigned max_connections;    /* --max-connections, 0: no limit */
  unsigned handshake_timeout;  /* --handshake-timeout (s), 0: none */
  int tls;                     /* --tls: TLS_OFF, TLS_ON, TLS_REQUIRE */
  const char *tls_certificates; /* --tls-certificates DIR */
  const char *tls_psk;         /* --tls-psk FILE */
  bool tls_verify_peer;        /* --tls-verify-peer */
  int log_to;                  /* --log: LOG_TO_* */
};
enum { TLS_OFF, TLS_ON, TLS_REQUIRE };
enum { LOG_TO_DEFAULT, LOG_TO_STDERR, LOG_TO_SYSLOG };
extern struct options opts;
extern const struct backend *B;
extern const char *progname;

/* Set by SIGTERM/SIGINT (or --run's command exiting). */
extern atomic_bool shutting_down;

/* services.c: logging (stderr, or syslog once log_to_syslog was called).
 * log_info: what an admin wants in the log of a daemon (connections,
 * TLS peers): always in syslog, on stderr only with -v.
 */
void log_to_syslog (void);
void log_error (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
void log_info (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
void log_debug (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
#define debug(...) do { if (opts.verbose) log_debug (__VA_ARGS__); } while (0)
/* The per-thread backend error message: cleared before each backend
 * call, read after a failure (NULL if the backend set none).
 */
void backend_error_clear (void);
const char *backend_error_message (void);

/* services.c: extent collector used by requests.c. */
struct extent {
  uint64_t offset;
  uint64_t length;
  uint32_t type;
};
DEFINE_VECTOR_TYPE (extent_vector, struct extent);
struct backend_extents {
  uint64_t start, end;         /* the request: [start, end) */
  uint64_t next;               /* where the next extent must begin */
  extent_vector v;
  bool full;                   /* stop collecting (cap or REQ_ONE) */
  bool req_one;
};
void extents_reset (struct backend_extents *e, uint64_t start, uint64_t end,
                    bool req_one);
void extents_free (struct backend_extents *e);

/* exports.c */
struct export_entry {
  char *name;
  char *description;           /* may be NULL */
};
DEFINE_VECTOR_TYPE (export_vector, struct export_entry);
struct backend_exports {
  export_vector v;
};
/* Fill with the exports the client may list (the backend's, or the
 * single export of a backend that lists none).  -1 + errno on failure.
 */
int exports_list (struct backend_exports *list);
void exports_free (struct backend_exports *list);
/* Resolve a client's export name to the canonical name (what INFO_NAME
 * and LIST show), the name to pass to backend->open, and a description
 * (may be NULL).  Returns -1 with errno ENOENT if the name is unknown.
 * Strings are malloc'd.
 */
int exports_resolve (const char *requested, char **canonical,
                     char **open_name, char **description);

/* A request, pooled per connection (see conn.c). */
struct request {
  struct request *next;
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint32_t count;
  uint32_t error;              /* NBD_E*: set by validation, or 0 */
  const char *errmsg;          /* static message for validation errors */
  size_t charge;               /* bytes counted against the in-flight cap */
  char *buf;                   /* WRITE payload */
  size_t bufcap;
  char *rep;                   /* reply scratch (headers, descriptors) */
  size_t repcap;
  struct backend_extents ex;
};

/* One client connection. */
struct conn {
  int rfd, wfd;                /* equal except for -s */
  bool is_socket;
  pthread_t reader;
  unsigned long id;
  /* "conn 12 (127.0.0.1:40312)": how log lines name the connection. */
  char name[96];
  struct conn_tls *tls;        /* tls.c: NULL until STARTTLS succeeded */

  /* Handshake results (written by the reader before any worker runs). */
  bool fixed_newstyle, no_zeroes;
  bool structured;             /* NBD_OPT_STRUCTURED_REPLY acked */
  bool meta_alloc;             /* base:allocation selected (id 1) */
  char **meta_names;           /* the backend's contexts selected: ids
                                  2, 3, ... (B->meta_contexts) */
  uint32_t n_meta_names;
  char *meta_export;           /* export name given to SET_META_CONTEXT */
  void *handle;                /* backend handle, NULL before GO */
  char *export_name;           /* canonical */
  bool readonly;
  uint64_t size;
  uint16_t eflags;
  uint32_t min_block, pref_block, max_block; /* advertised */
  uint32_t backend_max;        /* split backend calls (0 = no limit) */
  struct backend_caps caps;    /* the backend's, resolved */

  /* Buffered input (reader thread only). */
  char *rbuf;
  size_t rstart, rend;

  /* Output: replies are written whole under wlock. */
  pthread_mutex_t wlock;
  atomic_bool dead;            /* a write failed: drop further replies */
  atomic_bool dirty;           /* writes since the last flush */
  int sndbuf;                  /* SO_SNDBUF of wfd, 0 if not a socket */

  /* Work queue and pool, under qlock. */
  pthread_mutex_t qlock;
  pthread_cond_t qcond;        /* workers wait for work */
  pthread_cond_t done_cond;    /* reader waits for capacity / drain */
  struct request *qhead, *qtail;
  struct request *freelist;    /* answered requests, for reuse */
  unsigned nfree;
  struct request *rpool;       /* the reader's own (no lock) */
  unsigned in_flight;          /* queued + executing */
  size_t in_flight_bytes;
  unsigned nworkers, idle;
  bool stopping;
  atomic_int_least64_t avg_ns; /* moving average of execution time */
  pthread_t *workers;

  /* Registry (listen.c), under the registry lock. */
  struct conn *prev, *next;
  /* The handshake deadline (listen.c, under the registry lock): while
   * hs_listed, the main thread shuts the socket down at hs_deadline
   * (CLOCK_MONOTONIC, ms).
   */
  struct conn *hs_prev, *hs_next;
  bool hs_listed;
  int64_t hs_deadline;
};

/* Every backend call on a connection's handle keeps backend.h's
 * contract (capabilities.h): asserted before each call.
 */
#define CONN_CHECK_CALL(c, call, flags) \
  BACKEND_ASSERT_CALL (B, &(c)->caps, (c)->readonly, (call), (flags))

/* conn.c */
/* Serve one connection start to end (handshake, transmission, cleanup)
 * on the calling thread.  The caller closes the fds afterwards: the
 * client sees its connection end only then (listen.c gives the
 * connection's slot back first, so a client that saw its connection
 * closed finds the slot free).
 */
void conn_serve (int rfd, int wfd, bool is_socket);
/* Read exactly len bytes through the connection's buffer: 0 ok, -1 on
 * EOF/error/shutdown.
 */
int conn_read (struct conn *c, void *buf, size_t len);
/* Discard len bytes of input. */
int conn_skip (struct conn *c, uint64_t len);
/* Write a whole message (under the write lock). -1 on error. */
int conn_writev (struct conn *c, struct iovec *iov, int iovcnt);
int conn_write (struct conn *c, const void *buf, size_t len);

/* handshake.c: negotiate; on success c->handle is open.  -1: close. */
int handshake (struct conn *c);
/* Open the backend for export name and fill c's export fields.  Used by
 * INFO (then closed again) and GO / EXPORT_NAME.  *description gets the
 * export's description (malloc'd) or NULL.  On failure returns -1 with
 * errno set and a message in *msg (static or the backend's).
 */
int export_open (struct conn *c, const char *name, char **description,
                 const char **msg);
void export_close (struct conn *c);

/* requests.c */
/* Validate the header just read; sets r->error / r->errmsg. */
void request_validate (struct conn *c, struct request *r);
/* Execute r and write its reply. */
void request_execute (struct conn *c, struct request *r);
/* Free the calling thread's read buffer (at thread exit). */
void request_thread_exit (void);
/* Map a host errno to the NBD error number. */
uint32_t nbd_errno (int err);

/* tls.c (OpenSSL).  tls_setup loads the credentials of opts (before
 * any fork); tls_start runs the server side of the handshake on c
 * after NBD_OPT_STARTTLS was acknowledged; then conn_read / conn_writev
 * go through tls_read / tls_writev; tls_end frees it all.
 */
int tls_setup (void);
void tls_free (void);
int tls_start (struct conn *c);
void tls_end (struct conn *c);
/* >0 bytes, 0 at EOF, -1 with errno. */
ssize_t tls_read (struct conn *c, void *buf, size_t len);
int tls_writev (struct conn *c, const struct iovec *iov, int iovcnt);
/* Decrypted input waiting inside the TLS layer. */
bool tls_pending (struct conn *c);
/* A thread that used TLS frees OpenSSL's per-thread state before it
 * ends (harmless in one that did not).
 */
void tls_thread_end (void);

/* listen.c */
extern bool listen_activated;  /* the sockets came from LISTEN_FDS */
/* --allow ADDR[/PREFIX]: add one rule; -1 with a message if malformed. */
int allow_add (const char *spec);
/* Whether a peer may connect (no --allow rule: anyone; a Unix socket
 * peer: always).
 */
bool allow_peer (const struct sockaddr *sa, socklen_t len);
void allow_free (void);
/* Forget the metadata contexts selected (base:allocation and the
 * backend's): a new SET_META_CONTEXT, another export, STARTTLS.
 */
void meta_drop (struct conn *c);

/* Listening sockets from opts (or socket activation); returns count. */
int listen_setup (int **fds, char **unix_path_out, char **tmpdir_out,
                  int *port_out);
/* Accept and serve until shutdown; returns when all connections ended. */
void listen_loop (int *fds, int nfds, int wakefd);
/* Tell every connection to stop reading (shutdown request); hard: to
 * stop writing too.
 */
void connections_stop (bool hard);
/* Register/unregister a connection (for connections_stop); a socket's
 * handshake gets its deadline (--handshake-timeout) when registered.
 */
int connection_register (struct conn *c);
void connection_unregister (struct conn *c);
/* The handshake is over (either way): no deadline any more. */
void connection_handshake_done (struct conn *c);
/* Wait until no connection is left (no connection thread either). */
void connections_wait (void);
/* Serve a connection on a new thread (fds are closed by it), whatever
 * --max-connections says (for -s).
 */
int start_connection (int rfd, int wfd, bool is_socket);
/* The main loop's wake-up pipe (write end); wake_main is signal-safe. */
void set_wake_fd (int fd);
void wake_main (void);

/* cmdline.c: the whole server, from the command line on; the backends
 * come from backend_lookup() / backend_nth() (backends.h), which the
 * program linking libminnbd.la provides.
 */
int minnbd_main (int argc, char **argv);
/* cmdline.c: reap the --run command; sets shutting_down when it exited. */
void check_children (void);

#endif /* MINNBD_SERVER_H */
