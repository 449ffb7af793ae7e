/* The front-end services minnbd provides to backends (backend.h):
 * backend_error, backend_debug, backend_add_extent, backend_add_export,
 * plus the server's own logging.
 *
 * Thread safety: the error message buffer is per thread, so a worker
 * reads back exactly the message its own backend call set.  Collectors
 * (extents, exports) belong to one request / one caller at a time.
 * Logging writes one line per call with a single stdio call, which glibc
 * locks, so lines from different threads do not interleave.  A daemon
 * (forked into the background) logs to syslog instead, as nbdkit does.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "backend.h"
#include "msghook.h"
#include "nbd-protocol.h"
#include "server.h"

static __thread char errmsg[1024];
static __thread bool errmsg_set;
static bool use_syslog;

void
log_to_syslog (void)
{
  openlog (progname, LOG_PID, LOG_DAEMON);
  use_syslog = true;
}

static void
emit (int level, const char *prefix, const char *msg)
{
  if (use_syslog)
    syslog (level, "%s%s", prefix, msg);
  else
    fprintf (stderr, "%s: %s%s\n", progname, prefix, msg);
}

static void __attribute__ ((format (printf, 3, 0)))
vlog (int level, const char *prefix, const char *fmt, va_list ap)
{
  char line[1200];

  vsnprintf (line, sizeof line, fmt, ap);
  emit (level, prefix, line);
}

void
log_error (const char *fmt, ...)
{
  va_list ap;
  int saved = errno;

  va_start (ap, fmt);
  vlog (LOG_ERR, "", fmt, ap);
  va_end (ap);
  errno = saved;
}

void
log_info (const char *fmt, ...)
{
  va_list ap;
  int saved = errno;

  if (!use_syslog && !opts.verbose)
    return;
  va_start (ap, fmt);
  vlog (LOG_INFO, "", fmt, ap);
  va_end (ap);
  errno = saved;
}

void
log_debug (const char *fmt, ...)
{
  va_list ap;
  int saved = errno;

  va_start (ap, fmt);
  vlog (LOG_DEBUG, "debug: ", fmt, ap);
  va_end (ap);
  errno = saved;
}

void
backend_error (const char *fmt, ...)
{
  va_list ap;
  int saved = errno;

  va_start (ap, fmt);
  vsnprintf (errmsg, sizeof errmsg, fmt, ap);
  va_end (ap);
  if (backend_message_hook) {   /* msghook.h */
    backend_message_hook (true, errmsg);
    errno = saved;
    return;
  }
  errmsg_set = true;
  emit (LOG_ERR, "", errmsg);
  errno = saved;
}

void
backend_debug (const char *fmt, ...)
{
  va_list ap;
  int saved = errno;

  if (backend_message_hook) {   /* msghook.h */
    char msg[1024];
    va_start (ap, fmt);
    vsnprintf (msg, sizeof msg, fmt, ap);
    va_end (ap);
    backend_message_hook (false, msg);
    errno = saved;
    return;
  }
  if (!opts.verbose)
    return;
  va_start (ap, fmt);
  vlog (LOG_DEBUG, "debug: ", fmt, ap);
  va_end (ap);
  errno = saved;
}

void
backend_error_clear (void)
{
  errmsg_set = false;
}

const char *
backend_error_message (void)
{
  return errmsg_set ? errmsg : NULL;
}

/* Extents. */

void
extents_reset (struct backend_extents *e, uint64_t start, uint64_t end,
               bool req_one)
{
  e->start = e->next = start;
  e->end = end;
  extent_vector_clear (&e->v);
  e->full = false;
  e->req_one = req_one;
}

void
extents_free (struct backend_extents *e)
{
  extent_vector_reset (&e->v);
}

int
backend_add_extent (struct backend_extents *e,
                    uint64_t offset, uint64_t length, uint32_t type)
{
  uint64_t end;

  if (e->full || length == 0)
    return 0;
  /* Extents before the request are dropped, one straddling its start is
   * clipped (as nbdkit does); after that they must follow each other.
   */
  if (e->v.len == 0 && offset < e->start) {
    if (length <= e->start - offset)
      return 0;
    length -= e->start - offset;
    offset = e->start;
  }
  if (offset != e->next) {
    backend_error ("backend_add_extent: extents must be added in order and "
                   "contiguous: expected offset %" PRIu64 ", got %" PRIu64,
                   e->next, offset);
    errno = EINVAL;
    return -1;
  }
  if (length > UINT64_MAX - offset) {
    backend_error ("backend_add_extent: length overflows");
    errno = EINVAL;
    return -1;
  }
  end = offset + length;
  e->next = end;

  /* The backend may report beyond the request: clip. */
  if (end > e->end)
    end = e->end;
  length = end - offset;
  if (end >= e->end)
    e->full = true;
  type &= BACKEND_EXTENT_HOLE | BACKEND_EXTENT_ZERO;

  /* Merging keeps the reply small when a backend reports block by block. */
  if (e->v.len > 0 && e->v.ptr[e->v.len - 1].type == type && !e->req_one) {
    e->v.ptr[e->v.len - 1].length += length;
    return 0;
  }
  if (extent_vector_append (&e->v,
                            (struct extent) { offset, length, type }) == -1) {
    backend_error ("backend_add_extent: %m");
    return -1;
  }
  if (e->req_one || e->v.len >= MAX_EXTENTS)
    e->full = true;
  return 0;
}

/* Exports. */

int
backend_add_export (struct backend_exports *x,
                    const char *name, const char *description)
{
  char *n = NULL, *d = NULL;

  if (name == NULL || strlen (name) > NBD_MAX_STRING ||
      (description && strlen (description) > NBD_MAX_STRING)) {
    backend_error ("backend_add_export: export name or description missing "
                   "or longer than %d bytes", NBD_MAX_STRING);
    errno = EINVAL;
    return -1;
  }
  if (x->v.len >= MAX_EXPORTS) {
    backend_error ("backend_add_export: more than %d exports", MAX_EXPORTS);
    errno = E2BIG;
    return -1;
  }
  n = strdup (name);
  if (n == NULL || (description && (d = strdup (description)) == NULL) ||
      export_vector_append (&x->v, (struct export_entry) { n, d }) == -1)
    goto nomem;
  return 0;

 nomem:
  free (n);
  free (d);
  backend_error ("backend_add_export: %m");
  errno = ENOMEM;
  return -1;
}

bool
backend_server_readonly (void)
{
  return opts.readonly;
}
