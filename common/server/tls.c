/* TLS for minnbd, with OpenSSL's libssl: the server's credentials
 * (X.509 certificates or pre-shared keys), NBD_OPT_STARTTLS's handshake,
 * and the record layer under conn_read / conn_writev.
 *
 * Credentials are loaded once, before minnbd forks or serves anyone
 * (tls_setup): --tls-certificates DIR holds server-cert.pem (with its
 * chain), server-key.pem and, for --tls-verify-peer, ca-cert.pem (the
 * layout nbdkit and qemu use); --tls-psk FILE holds "identity:hexkey"
 * lines (what psktool writes).  A key file that the group or others may
 * access is refused.  TLS 1.2 and 1.3 only, no renegotiation, no
 * compression, no session tickets (nothing to keep between sessions).
 *
 * Threads: the connection's reader calls tls_read while its workers
 * call tls_writev (one at a time: conn_writev holds the write lock).  An
 * SSL object must not be used by two threads at once, so every SSL_*
 * call on a connection happens under its tls_lock; the socket is
 * non-blocking and a thread that has to wait for the socket polls it
 * without the lock.  Nothing here blocks while holding tls_lock.
 */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "cleanup.h"
#include "minmax.h"
#include "server.h"
#include "vector.h"

/* Records are at most 16 KiB of payload: small pieces of a reply are
 * gathered up to that before they are encrypted.
 */
#define TLS_RECORD 16384

struct psk_entry {
  char *identity;
  unsigned char key[64];
  size_t keylen;
};
DEFINE_VECTOR_TYPE (psk_vector, struct psk_entry);

static SSL_CTX *ctx;
static psk_vector psks;         /* --tls-psk, read-only once loaded */

struct conn_tls {
  SSL *ssl;
  char psk_identity[128];       /* set by psk_server_cb, for the log */
  pthread_mutex_t lock;         /* every SSL_* call on ssl */
  char *wbuf;                   /* TLS_RECORD bytes, under the conn's wlock */
  size_t wlen;
};

/* The first error on OpenSSL's queue, as text (and the queue cleared). */
static const char *
ssl_reason (char *buf, size_t n)
{
  unsigned long e = ERR_get_error ();

  if (e == 0)
    snprintf (buf, n, "%s", errno ? strerror (errno) : "unknown error");
  else
    ERR_error_string_n (e, buf, n);
  ERR_clear_error ();
  return buf;
}

/* A key must be readable by its owner alone. */
static int
check_key_file (const char *what, const char *path)
{
  struct stat st;

  if (stat (path, &st) == -1) {
    log_error ("%s %s: %m", what, path);
    return -1;
  }
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    log_error ("%s %s: the group or others may access it (mode %04o): a "
               "private key must be accessible to its owner only (chmod "
               "600 %s)", what, path, (unsigned) (st.st_mode & 07777),
               path);
    return -1;
  }
  return 0;
}

static int
hexval (int ch)
{
  if (ch >= '0' && ch <= '9') return ch - '0';
  ch = tolower (ch);
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  return -1;
}

static void
psk_entry_free (struct psk_entry *e)
{
  OPENSSL_cleanse (e->key, sizeof e->key);
  free (e->identity);
}

/* "identity:hexkey" lines (psktool's format); blank lines and lines
 * starting with # are skipped.
 */
static int
load_psk_file (const char *path)
{
  FILE *f;
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  unsigned lineno = 0;
  int ret = -1;

  if (check_key_file ("--tls-psk", path) == -1)
    return -1;
  f = fopen (path, "re");
  if (f == NULL) {
    log_error ("--tls-psk %s: %m", path);
    return -1;
  }
  while ((n = getline (&line, &cap, f)) != -1) {
    struct psk_entry e = { 0 };
    char *colon, *hex;
    size_t hexlen, i;

    lineno++;
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
      line[--n] = '\0';
    if (n == 0 || line[0] == '#')
      continue;
    colon = strchr (line, ':');
    if (colon == NULL || colon == line) {
      log_error ("--tls-psk %s:%u: expected identity:hexkey", path, lineno);
      goto out;
    }
    hex = colon + 1;
    hexlen = strlen (hex);
    if (hexlen == 0 || hexlen % 2 || hexlen / 2 > sizeof e.key) {
      log_error ("--tls-psk %s:%u: the key must be 1 to %zu bytes in hex",
                 path, lineno, sizeof e.key);
      goto out;
    }
    for (i = 0; i < hexlen / 2; i++) {
      int hi = hexval ((unsigned char) hex[2 * i]);
      int lo = hexval ((unsigned char) hex[2 * i + 1]);

      if (hi < 0 || lo < 0) {
        log_error ("--tls-psk %s:%u: the key is not hexadecimal", path,
                   lineno);
        OPENSSL_cleanse (e.key, sizeof e.key);
        goto out;
      }
      e.key[i] = hi << 4 | lo;
    }
    e.keylen = hexlen / 2;
    e.identity = strndup (line, colon - line);
    if (e.identity == NULL || psk_vector_append (&psks, e) == -1) {
      log_error ("--tls-psk: %m");
      psk_entry_free (&e);
      goto out;
    }
  }
  if (psks.len == 0) {
    log_error ("--tls-psk %s: no key in the file", path);
    goto out;
  }
  ret = 0;

 out:
  if (line) {
    OPENSSL_cleanse (line, cap);
    free (line);
  }
  fclose (f);
  return ret;
}

/* TLS 1.2 PSK ciphersuites and TLS 1.3 alike (OpenSSL uses this callback
 * for TLS 1.3 too when no session callback is set).
 */
static unsigned int
psk_server_cb (SSL *ssl, const char *identity, unsigned char *psk,
               unsigned int max_psk_len)
{
  size_t i;

  struct conn_tls *t = SSL_get_app_data (ssl);

  if (identity == NULL)
    return 0;
  if (t)
    snprintf (t->psk_identity, sizeof t->psk_identity, "%s", identity);
  for (i = 0; i < psks.len; i++)
    if (strcmp (psks.ptr[i].identity, identity) == 0) {
      if (psks.ptr[i].keylen > max_psk_len)
        return 0;
      memcpy (psk, psks.ptr[i].key, psks.ptr[i].keylen);
      return psks.ptr[i].keylen;
    }
  return 0;                     /* unknown identity: handshake fails */
}

static int
setup_certificates (const char *dir)
{
  CLEANUP_FREE char *cert = NULL, *key = NULL, *ca = NULL;
  char reason[256];

  if (asprintf (&cert, "%s/server-cert.pem", dir) == -1 ||
      asprintf (&key, "%s/server-key.pem", dir) == -1 ||
      asprintf (&ca, "%s/ca-cert.pem", dir) == -1) {
    log_error ("%m");
    return -1;
  }
  if (SSL_CTX_use_certificate_chain_file (ctx, cert) != 1) {
    log_error ("--tls-certificates: %s: %s", cert,
               ssl_reason (reason, sizeof reason));
    return -1;
  }
  if (check_key_file ("--tls-certificates", key) == -1)
    return -1;
  if (SSL_CTX_use_PrivateKey_file (ctx, key, SSL_FILETYPE_PEM) != 1) {
    log_error ("--tls-certificates: %s: %s", key,
               ssl_reason (reason, sizeof reason));
    return -1;
  }
  if (SSL_CTX_check_private_key (ctx) != 1) {
    log_error ("--tls-certificates: %s does not match %s: %s", key, cert,
               ssl_reason (reason, sizeof reason));
    return -1;
  }
  if (opts.tls_verify_peer) {
    if (SSL_CTX_load_verify_locations (ctx, ca, NULL) != 1) {
      log_error ("--tls-verify-peer: %s: %s", ca,
                 ssl_reason (reason, sizeof reason));
      return -1;
    }
    SSL_CTX_set_verify (ctx, SSL_VERIFY_PEER |
                        SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    SSL_CTX_set_client_CA_list (ctx, SSL_load_client_CA_file (ca));
  }
  return 0;
}

int
tls_setup (void)
{
  char reason[256];

  if (opts.tls == TLS_OFF) {
    if (opts.tls_certificates || opts.tls_psk || opts.tls_verify_peer)
      log_error ("--tls=off: --tls-certificates, --tls-psk and "
                 "--tls-verify-peer are ignored");
    return 0;
  }
  if (!opts.tls_certificates == !opts.tls_psk) {
    log_error ("--tls=%s needs credentials: --tls-certificates DIR "
               "(X.509) or --tls-psk FILE (pre-shared keys), one of them",
               opts.tls == TLS_REQUIRE ? "require" : "on");
    return -1;
  }
  if (opts.tls_verify_peer && !opts.tls_certificates) {
    log_error ("--tls-verify-peer checks client certificates: it needs "
               "--tls-certificates DIR (with ca-cert.pem), not --tls-psk");
    return -1;
  }
  ctx = SSL_CTX_new (TLS_server_method ());
  if (ctx == NULL) {
    log_error ("TLS: %s", ssl_reason (reason, sizeof reason));
    return -1;
  }
  SSL_CTX_set_min_proto_version (ctx, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version (ctx, TLS1_3_VERSION);
  SSL_CTX_set_options (ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                       SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_session_cache_mode (ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode (ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  /* Read ahead: several records per read() instead of two reads (header,
   * body) per record.  Safe with the waiting in tls_read: a WANT_READ
   * still means the socket must deliver more, and whatever is buffered
   * shows in SSL_has_pending.
   */
  SSL_CTX_set_read_ahead (ctx, 1);
  SSL_CTX_set_default_read_buffer_len (ctx, 4 * TLS_RECORD + 1024);
  /* AES-GCM first: with AES instructions it is the cheapest per byte. */
  SSL_CTX_set_ciphersuites (ctx, "TLS_AES_128_GCM_SHA256:"
                            "TLS_AES_256_GCM_SHA384:"
                            "TLS_CHACHA20_POLY1305_SHA256");

  if (opts.tls_certificates) {
    if (setup_certificates (opts.tls_certificates) == -1)
      goto fail;
  }
  else {
    if (load_psk_file (opts.tls_psk) == -1)
      goto fail;
    SSL_CTX_set_psk_server_callback (ctx, psk_server_cb);
    /* TLS 1.2: the PSK suites (with forward secrecy first). */
    if (SSL_CTX_set_cipher_list (ctx, "ECDHEPSK:DHEPSK:PSK:!aNULL:!eNULL:"
                                 "!SHA1:!CBC") != 1 &&
        SSL_CTX_set_cipher_list (ctx, "ECDHEPSK:DHEPSK:PSK") != 1) {
      log_error ("--tls-psk: %s", ssl_reason (reason, sizeof reason));
      goto fail;
    }
  }
  debug ("TLS %s with %s", opts.tls == TLS_REQUIRE ? "required" : "offered",
         opts.tls_certificates ? "X.509 certificates" : "pre-shared keys");
  return 0;

 fail:
  tls_free ();
  return -1;
}

void
tls_free (void)
{
  SSL_CTX_free (ctx);
  ctx = NULL;
  psk_vector_free_all (&psks, psk_entry_free);
}

/* Wait until fd is ready (POLLIN or POLLOUT) without any lock held.
 * -1 with errno EINTR when a signal interrupts (shutdown of -s).
 */
static int
wait_fd (int fd, short events)
{
  struct pollfd p = { .fd = fd, .events = events };

  if (poll (&p, 1, -1) == -1)
    return -1;
  return 0;
}

static int
set_nonblocking (int fd)
{
  int fl = fcntl (fd, F_GETFL);

  return fl == -1 ? -1 : fcntl (fd, F_SETFL, fl | O_NONBLOCK);
}

/* Who the client is, for the log. */
static void
describe_peer (struct conn *c, SSL *ssl)
{
  const char *psk_id = c->tls->psk_identity[0] ? c->tls->psk_identity : NULL;
  X509 *peer = SSL_get0_peer_certificate (ssl);
  char subject[256] = "";

  if (peer)
    X509_NAME_oneline (X509_get_subject_name (peer), subject,
                       sizeof subject);
  log_info ("%s: TLS established: %s, %s%s%s%s%s", c->name,
            SSL_get_version (ssl), SSL_get_cipher_name (ssl),
            psk_id ? ", PSK identity " : "", psk_id ? psk_id : "",
            peer ? ", client certificate " : "", subject);
}

int
tls_start (struct conn *c)
{
  struct conn_tls *t;
  char reason[256];
  int r, err;

  t = calloc (1, sizeof *t);
  if (t == NULL || (t->wbuf = malloc (TLS_RECORD)) == NULL) {
    free (t);
    log_error ("%s: TLS: %m", c->name);
    return -1;
  }
  pthread_mutex_init (&t->lock, NULL);
  c->tls = t;                   /* freed by tls_end, whatever happens */
  t->ssl = SSL_new (ctx);
  if (t->ssl == NULL || SSL_set_app_data (t->ssl, t) != 1 ||
      SSL_set_rfd (t->ssl, c->rfd) != 1 || SSL_set_wfd (t->ssl, c->wfd) != 1 ||
      set_nonblocking (c->rfd) == -1 || set_nonblocking (c->wfd) == -1) {
    log_error ("%s: TLS: %s", c->name, ssl_reason (reason, sizeof reason));
    return -1;
  }
  /* Only this thread uses the connection yet: no lock needed.  The
   * handshake deadline (--handshake-timeout) shuts the socket down if
   * the client stalls.
   */
  for (;;) {
    ERR_clear_error ();
    r = SSL_accept (t->ssl);
    if (r == 1)
      break;
    err = SSL_get_error (t->ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      if (wait_fd (err == SSL_ERROR_WANT_READ ? c->rfd : c->wfd,
                   err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT) == -1 &&
          !(errno == EINTR && !atomic_load (&shutting_down)))
        goto failed;
      continue;
    }
    goto failed;
  }
  describe_peer (c, t->ssl);
  return 0;

 failed:
  log_error ("%s: TLS handshake failed: %s", c->name,
             ssl_reason (reason, sizeof reason));
  return -1;
}

void
tls_thread_end (void)
{
  /* OpenSSL keeps per-thread state (its random generators) that a
   * thread-exit destructor frees; a detached connection thread may not
   * get that far before the process exits, so free it now.
   */
  OPENSSL_thread_stop ();
}

void
tls_end (struct conn *c)
{
  struct conn_tls *t = c->tls;

  if (t == NULL)
    return;
  if (t->ssl) {
    /* One try at a close_notify; a vanished client is no error. */
    if (SSL_is_init_finished (t->ssl) && !atomic_load (&c->dead))
      SSL_shutdown (t->ssl);
    SSL_free (t->ssl);
  }
  ERR_clear_error ();
  pthread_mutex_destroy (&t->lock);
  free (t->wbuf);
  free (t);
  c->tls = NULL;
}

bool
tls_pending (struct conn *c)
{
  struct conn_tls *t = c->tls;
  SCOPED_LOCK (&t->lock);

  return SSL_has_pending (t->ssl);
}

ssize_t
tls_read (struct conn *c, void *buf, size_t len)
{
  struct conn_tls *t = c->tls;
  char reason[256];

  for (;;) {
    size_t got = 0;
    int ok, err;

    {
      SCOPED_LOCK (&t->lock);

      ERR_clear_error ();
      ok = SSL_read_ex (t->ssl, buf, len, &got);
      err = ok ? SSL_ERROR_NONE : SSL_get_error (t->ssl, 0);
      if (err == SSL_ERROR_SSL || err == SSL_ERROR_SYSCALL)
        ssl_reason (reason, sizeof reason);
    }
    switch (err) {
    case SSL_ERROR_NONE:
      return got;
    case SSL_ERROR_ZERO_RETURN:   /* close_notify */
      return 0;
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
      if (wait_fd (err == SSL_ERROR_WANT_READ ? c->rfd : c->wfd,
                   err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT) == -1)
        return -1;              /* EINTR: the caller decides */
      continue;
    case SSL_ERROR_SYSCALL:
      /* EOF without close_notify: the client vanished or the socket was
       * shut down (server shutdown, handshake deadline).
       */
      if (errno == 0 || errno == ECONNRESET || errno == EPIPE)
        return 0;
      return -1;
    default:
      debug ("%s: TLS read: %s", c->name, reason);
      errno = EPROTO;
      return -1;
    }
  }
}

/* Encrypt and send len bytes, all of them. */
static int
tls_write_all (struct conn *c, const char *buf, size_t len)
{
  struct conn_tls *t = c->tls;
  char reason[256];

  while (len > 0) {
    size_t done = 0;
    int ok, err;

    {
      SCOPED_LOCK (&t->lock);

      ERR_clear_error ();
      ok = SSL_write_ex (t->ssl, buf, len, &done);
      err = ok ? SSL_ERROR_NONE : SSL_get_error (t->ssl, 0);
      if (err == SSL_ERROR_SSL || err == SSL_ERROR_SYSCALL)
        ssl_reason (reason, sizeof reason);
    }
    switch (err) {
    case SSL_ERROR_NONE:
      buf += done;
      len -= done;
      continue;
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
      if (wait_fd (err == SSL_ERROR_WANT_READ ? c->rfd : c->wfd,
                   err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT) == -1 &&
          errno != EINTR)
        return -1;
      continue;
    default:
      debug ("%s: TLS write: %s", c->name, reason);
      if (errno == 0)
        errno = EPIPE;
      return -1;
    }
  }
  return 0;
}

/* A reply: small pieces (headers) are gathered into one record with what
 * follows them; big pieces (read data) are encrypted in place.
 */
int
tls_writev (struct conn *c, const struct iovec *iov, int iovcnt)
{
  struct conn_tls *t = c->tls;
  int i;

  t->wlen = 0;
  for (i = 0; i < iovcnt; i++) {
    const char *p = iov[i].iov_base;
    size_t n = iov[i].iov_len;

    while (n > 0) {
      if (t->wlen == 0 && n >= TLS_RECORD) {
        /* Whole records straight from the caller's buffer. */
        size_t whole = n - n % TLS_RECORD;

        if (tls_write_all (c, p, whole) == -1)
          return -1;
        p += whole;
        n -= whole;
        continue;
      }
      {
        size_t k = MIN (n, (size_t) TLS_RECORD - t->wlen);

        memcpy (t->wbuf + t->wlen, p, k);
        t->wlen += k;
        p += k;
        n -= k;
      }
      if (t->wlen == TLS_RECORD) {
        if (tls_write_all (c, t->wbuf, t->wlen) == -1)
          return -1;
        t->wlen = 0;
      }
    }
  }
  if (t->wlen > 0 && tls_write_all (c, t->wbuf, t->wlen) == -1)
    return -1;
  t->wlen = 0;
  return 0;
}
