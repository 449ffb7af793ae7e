/* Fixed newstyle handshake: greeting, client flags, option haggling,
 * and opening the export for NBD_OPT_INFO / NBD_OPT_GO /
 * NBD_OPT_EXPORT_NAME.
 *
 * Every option payload is read whole (at most MAX_OPTION_LEN bytes;
 * larger ones up to MAX_OPTION_SKIP are skipped and refused with
 * NBD_REP_ERR_TOO_BIG, anything larger ends the connection) before it is
 * parsed, so a malformed option never desynchronises the stream.
 * Parsing checks every length against the payload before using it.
 *
 * Thread safety: runs on the connection's own thread before any worker
 * exists; touches only its struct conn.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "capabilities.h"
#include "cleanup.h"
#include "ispowerof2.h"
#include "nbd-protocol.h"
#include "server.h"

static int
send_reply (struct conn *c, uint32_t option, uint32_t reply,
            const void *data, size_t len)
{
  struct nbd_option_reply h;
  struct iovec iov[2];

  h.magic = htobe64 (NBD_REP_MAGIC);
  h.option = htobe32 (option);
  h.reply = htobe32 (reply);
  h.replylen = htobe32 (len);
  iov[0] = (struct iovec) { &h, sizeof h };
  iov[1] = (struct iovec) { (void *) data, len };
  return conn_writev (c, iov, len ? 2 : 1);
}

static int
send_ack (struct conn *c, uint32_t option)
{
  return send_reply (c, option, NBD_REP_ACK, NULL, 0);
}

/* Errors carry a message for the user (the spec allows it). */
static int
send_error (struct conn *c, uint32_t option, uint32_t reply, const char *msg)
{
  size_t len = msg ? strlen (msg) : 0;

  if (len > NBD_MAX_STRING)
    len = NBD_MAX_STRING;
  debug ("%s: option %" PRIu32 ": error 0x%" PRIx32 ": %s",
         c->name, option, reply, msg ? msg : "");
  return send_reply (c, option, reply, msg, len);
}

/* Big-endian readers over a bounded payload. */
static uint32_t
get32 (const char *p)
{
  uint32_t v;

  memcpy (&v, p, 4);
  return be32toh (v);
}

static uint16_t
get16 (const char *p)
{
  uint16_t v;

  memcpy (&v, p, 2);
  return be16toh (v);
}

static bool
valid_string (const char *s, size_t len)
{
  return len <= NBD_MAX_STRING && memchr (s, '\0', len) == NULL;
}

/* Export. */

void
export_close (struct conn *c)
{
  if (c->handle) {
    B->close (c->handle);
    c->handle = NULL;
  }
  free (c->export_name);
  c->export_name = NULL;
}

int
export_open (struct conn *c, const char *name, char **description,
             const char **msg)
{
  CLEANUP_FREE char *open_name = NULL;
  char *canonical = NULL;
  void *h;
  int64_t size;
  uint32_t bmin, bpref, bmax;
  uint16_t f;

  *description = NULL;
  if (exports_resolve (name, &canonical, &open_name, description) == -1) {
    *msg = errno == ENOENT ? "unknown export" : "out of memory";
    return -1;
  }
  backend_error_clear ();
  h = B->open (open_name, opts.readonly);
  if (h == NULL) {
    int err = errno ? errno : EIO;

    *msg = backend_error_message () ? : "the backend could not open "
      "the export";
    free (canonical);
    free (*description);
    *description = NULL;
    errno = err;
    return -1;
  }
  c->handle = h;
  c->export_name = canonical;

  size = B->get_size (h);
  if (size < 0)
    goto fail;
  if (backend_get_block_size (B, h, &bmin, &bpref, &bmax) == -1 ||
      backend_get_caps (B, h, &c->caps) == -1)
    goto fail;

  c->size = size;
  c->readonly = opts.readonly || !c->caps.can_write;

  /* Block sizes: the backend's, sanitised to what the spec allows. */
  if (bmin && (!is_power_of_2 (bmin) || bmin > 65536)) {
    log_error ("backend minimum block size %" PRIu32 " is invalid: "
               "ignored", bmin);
    bmin = 0;
  }
  c->min_block = bmin ? bmin : 1;
  c->pref_block = bpref && is_power_of_2 (bpref) ? bpref : 4096;
  if (c->pref_block < c->min_block)
    c->pref_block = c->min_block;
  if (c->pref_block < 512)
    c->pref_block = 512;
  c->max_block = MAX_REQUEST;   /* a multiple of any valid minimum */
  c->backend_max = 0;
  if (bmax && bmax < MAX_REQUEST) {
    bmax -= bmax % c->min_block;
    c->backend_max = bmax ? bmax : c->min_block;
  }

  f = NBD_FLAG_HAS_FLAGS;
  if (c->readonly)
    f |= NBD_FLAG_READ_ONLY;
  if (c->caps.can_flush)
    f |= NBD_FLAG_SEND_FLUSH;
  if (!c->readonly && c->caps.can_fua != BACKEND_FUA_NONE)
    f |= NBD_FLAG_SEND_FUA;
  if (c->caps.is_rotational)
    f |= NBD_FLAG_ROTATIONAL;
  if (!c->readonly && c->caps.can_trim)
    f |= NBD_FLAG_SEND_TRIM;
  /* Zeroing is emulated with writes when the backend cannot; fast zero
   * then fails at once with ENOTSUP, which the spec allows.
   */
  if (!c->readonly)
    f |= NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
  if (c->structured)
    f |= NBD_FLAG_SEND_DF;
  if (c->caps.can_multi_conn)
    f |= NBD_FLAG_CAN_MULTI_CONN;
  if (c->caps.can_cache != BACKEND_CACHE_NONE)
    f |= NBD_FLAG_SEND_CACHE;
  c->eflags = f;
  debug ("%s: export \"%s\": size %" PRIi64 " flags 0x%x "
         "block sizes %" PRIu32 "/%" PRIu32 "/%" PRIu32, c->name,
         c->export_name, size, f, c->min_block, c->pref_block, c->max_block);
  return 0;

 fail:
  {
    int err = errno ? errno : EIO;

    *msg = backend_error_message () ? : "the backend failed to describe "
      "the export";
    export_close (c);
    free (*description);
    *description = NULL;
    errno = err;
    return -1;
  }
}

/* The option error for an export that could not be opened, from the
 * backend's errno, as libnbd turns each back into an errno:
 *   ENOENT                -> ERR_UNKNOWN  (libnbd: ENOENT, "no export")
 *   EINVAL, ENAMETOOLONG  -> ERR_INVALID  (libnbd: EINVAL)
 *   EPERM, EACCES, EROFS  -> ERR_POLICY   (libnbd: "policy prevents")
 *   ESHUTDOWN             -> ERR_SHUTDOWN (libnbd: ESHUTDOWN)
 *   anything else (EIO, ENOMEM, EBUSY ...) -> ERR_PLATFORM: the spec has
 *     no error for "the server failed"; PLATFORM ("not possible on this
 *     server") is what nbdkit answers when listing exports fails, and
 *     unlike ERR_UNKNOWN it does not tell the client the export does not
 *     exist.
 * The backend's message goes with it as the reply's text.
 */
static uint32_t
open_error_reply (int err)
{
  switch (err) {
  case ENOENT: return NBD_REP_ERR_UNKNOWN;
  case EINVAL: case ENAMETOOLONG: return NBD_REP_ERR_INVALID;
  case EPERM: case EACCES: case EROFS: return NBD_REP_ERR_POLICY;
  case ESHUTDOWN: return NBD_REP_ERR_SHUTDOWN;
  default: return NBD_REP_ERR_PLATFORM;
  }
}

/* Options. */

static int
opt_export_name (struct conn *c, const char *payload, uint32_t len)
{
  CLEANUP_FREE char *name = NULL;
  CLEANUP_FREE char *desc = NULL;
  struct nbd_export_name_reply rep;
  static const char zeroes[124];
  struct iovec iov[2];
  const char *msg;

  /* No error reply exists for this option: refusing means closing. */
  if (!valid_string (payload, len)) {
    log_error ("%s: NBD_OPT_EXPORT_NAME: invalid name: closing",
               c->name);
    return -1;
  }
  name = strndup (payload, len);
  if (name == NULL)
    return -1;
  if (c->meta_export && strcmp (c->meta_export, name) != 0)
    meta_drop (c);
  if (export_open (c, name, &desc, &msg) == -1) {
    log_error ("%s: NBD_OPT_EXPORT_NAME: export \"%s\": %s (%s): "
               "closing (this option has no error reply)", c->name, name,
               msg, strerror (errno));
    return -1;
  }
  rep.exportsize = htobe64 (c->size);
  rep.eflags = htobe16 (c->eflags);
  iov[0] = (struct iovec) { &rep, sizeof rep };
  iov[1] = (struct iovec) { (void *) zeroes, sizeof zeroes };
  return conn_writev (c, iov, c->no_zeroes ? 1 : 2);
}

static int
send_info_string (struct conn *c, uint32_t option, uint16_t type,
                  const char *s)
{
  size_t len = strlen (s);
  CLEANUP_FREE char *buf = malloc (2 + len);
  uint16_t t = htobe16 (type);

  if (buf == NULL)
    return -1;
  memcpy (buf, &t, 2);
  memcpy (buf + 2, s, len);
  return send_reply (c, option, NBD_REP_INFO, buf, 2 + len);
}

/* NBD_OPT_INFO and NBD_OPT_GO.  Returns 1 when GO succeeded (enter
 * transmission), 0 to continue haggling, -1 to close.
 */
static int
opt_info_go (struct conn *c, uint32_t option, const char *p, uint32_t len)
{
  CLEANUP_FREE char *name = NULL;
  CLEANUP_FREE char *desc = NULL;
  uint32_t namelen;
  uint16_t nreqs, i;
  bool want_name = false, want_desc = false;
  struct nbd_info_export ie;
  struct nbd_info_block_size ib;
  const char *msg;

  if (len < 6)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "option too short for an export name and "
                       "information request count");
  namelen = get32 (p);
  if (namelen > len - 6)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "export name length exceeds the option length");
  if (!valid_string (p + 4, namelen))
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "export name too long or contains NUL");
  nreqs = get16 (p + 4 + namelen);
  if ((uint64_t) 6 + namelen + 2 * (uint64_t) nreqs != len)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "number of information requests does not match "
                       "the option length");
  for (i = 0; i < nreqs; i++) {
    switch (get16 (p + 6 + namelen + 2 * i)) {
    case NBD_INFO_NAME: want_name = true; break;
    case NBD_INFO_DESCRIPTION: want_desc = true; break;
    default: break;          /* EXPORT and BLOCK_SIZE are always sent */
    }
  }
  name = strndup (p + 4, namelen);
  if (name == NULL)
    return -1;

  if (export_open (c, name, &desc, &msg) == -1) {
    int err = errno;

    log_error ("%s: %s: export \"%s\": %s (%s)", c->name,
               option == NBD_OPT_GO ? "NBD_OPT_GO" : "NBD_OPT_INFO", name,
               msg, strerror (err));
    return send_error (c, option, open_error_reply (err), msg) == -1
      ? -1 : 0;
  }

  ie.info = htobe16 (NBD_INFO_EXPORT);
  ie.exportsize = htobe64 (c->size);
  ie.eflags = htobe16 (c->eflags);
  ib.info = htobe16 (NBD_INFO_BLOCK_SIZE);
  ib.minimum = htobe32 (c->min_block);
  ib.preferred = htobe32 (c->pref_block);
  ib.maximum = htobe32 (c->max_block);
  if (send_reply (c, option, NBD_REP_INFO, &ie, sizeof ie) == -1 ||
      (want_name &&
       send_info_string (c, option, NBD_INFO_NAME, c->export_name) == -1) ||
      (want_desc && desc &&
       send_info_string (c, option, NBD_INFO_DESCRIPTION, desc) == -1) ||
      send_reply (c, option, NBD_REP_INFO, &ib, sizeof ib) == -1)
    return -1;

  if (option == NBD_OPT_INFO) {
    export_close (c);
    return send_ack (c, option) == -1 ? -1 : 0;
  }
  /* Contexts chosen for another export do not carry over. */
  if (c->meta_export && strcmp (c->meta_export, name) != 0)
    meta_drop (c);
  if (send_ack (c, option) == -1)
    return -1;
  return 1;
}

static int
opt_list (struct conn *c, uint32_t len)
{
  struct backend_exports list;
  size_t i;
  int r = 0;

  if (len != 0)
    return send_error (c, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
                       "NBD_OPT_LIST takes no data");
  if (exports_list (&list) == -1)
    return send_error (c, NBD_OPT_LIST, NBD_REP_ERR_PLATFORM,
                       backend_error_message () ? :
                       "the backend could not list its exports");
  for (i = 0; i < list.v.len && r == 0; i++) {
    const struct export_entry *x = &list.v.ptr[i];
    size_t nl = strlen (x->name);
    size_t dl = x->description ? strlen (x->description) : 0;
    CLEANUP_FREE char *buf = malloc (4 + nl + dl);
    uint32_t be = htobe32 (nl);

    if (buf == NULL) {
      r = -1;
      break;
    }
    memcpy (buf, &be, 4);
    memcpy (buf + 4, x->name, nl);
    if (dl)
      memcpy (buf + 4 + nl, x->description, dl);
    r = send_reply (c, NBD_OPT_LIST, NBD_REP_SERVER, buf, 4 + nl + dl);
  }
  exports_free (&list);
  if (r == 0)
    r = send_ack (c, NBD_OPT_LIST);
  return r;
}

/* NBD_OPT_STARTTLS.  0: go on (TLS up, or refused), -1: close (the
 * handshake failed after the ACK: there is no way back to plaintext).
 */
static int
opt_starttls (struct conn *c, uint32_t len)
{
  if (opts.tls == TLS_OFF)
    return send_error (c, NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY,
                       "TLS is off on this server (--tls)");
  if (len != 0)
    return send_error (c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
                       "NBD_OPT_STARTTLS takes no data");
  if (c->tls)
    return send_error (c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
                       "TLS is already established");
  if (!c->fixed_newstyle)
    return send_error (c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
                       "TLS needs the fixed newstyle handshake");
  /* Bytes the client sent after STARTTLS, before our ACK, are already in
   * the plaintext buffer: taking them as if they had come over TLS would
   * let anyone on the path inject options into the encrypted session
   * (the STARTTLS injection flaw).  A client must wait for the ACK.
   */
  if (c->rstart != c->rend) {
    log_error ("%s: data after NBD_OPT_STARTTLS before its reply: closing",
               c->name);
    return -1;
  }
  if (send_ack (c, NBD_OPT_STARTTLS) == -1 || tls_start (c) == -1)
    return -1;
  /* The spec: nothing negotiated before STARTTLS survives it. */
  c->structured = false;
  meta_drop (c);
  free (c->meta_export);
  c->meta_export = NULL;
  return 0;
}

void
meta_drop (struct conn *c)
{
  uint32_t i;

  c->meta_alloc = false;
  for (i = 0; i < c->n_meta_names; i++)
    free (c->meta_names[i]);
  free (c->meta_names);
  c->meta_names = NULL;
  c->n_meta_names = 0;
}

/* The backend's contexts an option names: each one the backend gives
 * for (export, query) is replied (with its id when selecting) and, when
 * selecting, remembered.
 */
#define MAX_META_SELECTED 64
struct meta_add {
  struct conn *c;
  uint32_t option;
  bool set;
  int err;
};

static int
meta_add_one (const char *name, void *opaque)
{
  struct meta_add *m = opaque;
  struct conn *c = m->c;
  size_t n = strlen (name);
  uint32_t id = 0, i;
  char *buf;

  if (n == 0 || n > NBD_MAX_STRING)
    return 0;
  if (m->set) {
    for (i = 0; i < c->n_meta_names; i++)
      if (strcmp (c->meta_names[i], name) == 0)
        return 0;               /* asked twice: once is enough */
    if (c->n_meta_names == MAX_META_SELECTED)
      return 0;
    if (c->meta_names == NULL &&
        (c->meta_names = calloc (MAX_META_SELECTED,
                                 sizeof *c->meta_names)) == NULL)
      return -1;
    c->meta_names[c->n_meta_names] = strdup (name);
    if (c->meta_names[c->n_meta_names] == NULL)
      return -1;
    c->n_meta_names++;
    id = c->n_meta_names + 1;   /* 1 is base:allocation */
  }
  buf = malloc (4 + n);
  if (buf == NULL)
    return -1;
  id = htobe32 (id);
  memcpy (buf, &id, 4);
  memcpy (buf + 4, name, n);
  if (send_reply (c, m->option, NBD_REP_META_CONTEXT, buf, 4 + n) == -1) {
    m->err = -1;
    free (buf);
    return -1;
  }
  free (buf);
  return 0;
}

/* NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: base:allocation
 * (id 1 once selected), and the backend's own contexts (ids from 2).
 */
static int
opt_meta_context (struct conn *c, uint32_t option, const char *p,
                  uint32_t len)
{
  static const char base_alloc[] = "base:allocation";
  bool set = option == NBD_OPT_SET_META_CONTEXT;
  uint32_t namelen, nq, i, pos, qlen;
  bool match = false;
  char *export = NULL;
  struct meta_add m = { .c = c, .option = option, .set = set };
  int ret = -1;

  if (set) {
    /* SET replaces the selection even when it fails. */
    meta_drop (c);
    free (c->meta_export);
    c->meta_export = NULL;
  }
  if (!c->structured)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "structured replies must be negotiated first");
  if (len < 8)
    return send_error (c, option, NBD_REP_ERR_INVALID, "option too short");
  namelen = get32 (p);
  if (namelen > len - 8)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "export name length exceeds the option length");
  if (!valid_string (p + 4, namelen))
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "export name too long or contains NUL");
  nq = get32 (p + 4 + namelen);
  pos = 8 + namelen;
  /* Check every query before answering any. */
  for (i = 0; i < nq; i++) {
    const char *q, *colon;

    if (len - pos < 4)
      return send_error (c, option, NBD_REP_ERR_INVALID,
                         "query count exceeds the option length");
    qlen = get32 (p + pos);
    pos += 4;
    if (qlen > len - pos)
      return send_error (c, option, NBD_REP_ERR_INVALID,
                         "query length exceeds the option length");
    q = p + pos;
    pos += qlen;
    if (!valid_string (q, qlen))
      return send_error (c, option, NBD_REP_ERR_INVALID,
                         "query too long or contains NUL");
    colon = memchr (q, ':', qlen);
    if (colon == NULL || colon == q)
      return send_error (c, option, NBD_REP_ERR_INVALID,
                         "a query must be namespace:leaf");
    /* Unknown namespaces and leaves are ignored, as the spec says. */
    if (qlen == sizeof base_alloc - 1 &&
        memcmp (q, base_alloc, qlen) == 0)
      match = true;
    else if (!set && qlen == 5 && memcmp (q, "base:", 5) == 0)
      match = true;
  }
  if (pos != len)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "trailing data after the queries");
  if (!set && nq == 0)
    match = true;

  if (match) {
    char buf[4 + sizeof base_alloc - 1];
    uint32_t id = htobe32 (set ? 1 : 0);

    memcpy (buf, &id, 4);
    memcpy (buf + 4, base_alloc, sizeof base_alloc - 1);
    if (send_reply (c, option, NBD_REP_META_CONTEXT, buf, sizeof buf) == -1)
      return -1;
  }
  /* The backend's own contexts, query by query (all of them when
   * listing with no query).  A whole name selects; a bare "namespace:"
   * only lists.
   */
  export = strndup (p + 4, namelen);
  if (export == NULL)
    return -1;
  if (B->meta_contexts) {
    if (!set && nq == 0) {
      if (B->meta_contexts (export, NULL, meta_add_one, &m) == -1 &&
          m.err)
        goto out;
    }
    for (i = 0, pos = 8 + namelen; i < nq; i++) {
      char *q;
      qlen = get32 (p + pos);
      q = strndup (p + pos + 4, qlen);
      pos += 4 + qlen;
      if (q == NULL)
        goto out;
      if (strncmp (q, "base:", 5) != 0 &&
          (!set || q[qlen - 1] != ':') &&
          B->meta_contexts (export, q, meta_add_one, &m) == -1 && m.err) {
        free (q);
        goto out;
      }
      free (q);
    }
  }
  if (set) {
    c->meta_export = export;
    export = NULL;
    c->meta_alloc = match;
  }
  ret = send_ack (c, option);
 out:
  free (export);
  return ret;
}

int
handshake (struct conn *c)
{
  struct nbd_greeting g;
  struct nbd_option o;
  uint32_t cflags, option, len;
  CLEANUP_FREE char *payload = NULL;
  unsigned n;
  int r;

  g.nbdmagic = htobe64 (NBD_MAGIC);
  g.version = htobe64 (NBD_OPT_MAGIC);
  g.gflags = htobe16 (NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  if (conn_write (c, &g, sizeof g) == -1)
    return -1;
  if (conn_read (c, &cflags, 4) == -1) {
    debug ("%s: closed before sending client flags", c->name);
    return -1;
  }
  cflags = be32toh (cflags);
  if (cflags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
    log_error ("%s: unknown client flags 0x%" PRIx32 ": closing",
               c->name, cflags);
    return -1;
  }
  c->fixed_newstyle = cflags & NBD_FLAG_C_FIXED_NEWSTYLE;
  c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;

  payload = malloc (MAX_OPTION_LEN);
  if (payload == NULL)
    return -1;

  for (n = 0; ; n++) {
    if (n >= MAX_OPTIONS) {
      log_error ("%s: more than %d options: closing", c->name,
                 MAX_OPTIONS);
      return -1;
    }
    if (conn_read (c, &o, sizeof o) == -1) {
      debug ("%s: closed during option haggling", c->name);
      return -1;
    }
    if (be64toh (o.magic) != NBD_OPT_MAGIC) {
      log_error ("%s: bad option magic: closing", c->name);
      return -1;
    }
    option = be32toh (o.option);
    len = be32toh (o.optlen);
    debug ("%s: option %" PRIu32 " length %" PRIu32, c->name,
           option, len);

    if (len > MAX_OPTION_LEN) {
      if (option == NBD_OPT_EXPORT_NAME || len > MAX_OPTION_SKIP) {
        log_error ("%s: option %" PRIu32 " with %" PRIu32
                   " bytes of data: closing", c->name, option, len);
        return -1;
      }
      if (conn_skip (c, len) == -1)
        return -1;
      if (send_error (c, option, NBD_REP_ERR_TOO_BIG,
                      "option data too long") == -1)
        return -1;
      continue;
    }
    if (conn_read (c, payload, len) == -1) {
      debug ("%s: truncated option", c->name);
      return -1;
    }

    if (atomic_load (&shutting_down) && option != NBD_OPT_ABORT) {
      if (option == NBD_OPT_EXPORT_NAME ||
          send_error (c, option, NBD_REP_ERR_SHUTDOWN,
                      "the server is shutting down") == -1)
        return -1;
      continue;
    }

    /* --tls=require: nothing but STARTTLS and ABORT before TLS. */
    if (opts.tls == TLS_REQUIRE && c->tls == NULL &&
        option != NBD_OPT_STARTTLS && option != NBD_OPT_ABORT) {
      if (option == NBD_OPT_EXPORT_NAME) {
        log_error ("%s: NBD_OPT_EXPORT_NAME without TLS (--tls=require): "
                   "closing", c->name);
        return -1;
      }
      if (send_error (c, option, NBD_REP_ERR_TLS_REQD,
                      "TLS is required: send NBD_OPT_STARTTLS first") == -1)
        return -1;
      continue;
    }

    switch (option) {
    case NBD_OPT_EXPORT_NAME:
      return opt_export_name (c, payload, len);

    case NBD_OPT_ABORT:
      send_ack (c, option);     /* the client may already be gone */
      debug ("%s: NBD_OPT_ABORT", c->name);
      return -1;

    case NBD_OPT_LIST:
      r = opt_list (c, len);
      break;

    case NBD_OPT_STARTTLS:
      r = opt_starttls (c, len);
      break;

    case NBD_OPT_INFO:
    case NBD_OPT_GO:
      r = opt_info_go (c, option, payload, len);
      if (r == 1)
        return 0;
      break;

    case NBD_OPT_STRUCTURED_REPLY:
      if (len != 0)
        r = send_error (c, option, NBD_REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data");
      else {
        c->structured = true;
        r = send_ack (c, option);
      }
      break;

    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
      r = opt_meta_context (c, option, payload, len);
      break;

    default:
      r = send_error (c, option, NBD_REP_ERR_UNSUP, "unknown option");
      break;
    }
    if (r == -1)
      return -1;
  }
}
