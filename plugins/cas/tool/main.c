/* nbdcas: the admin tool for cas stores.  The commands themselves are in
 * the tool library (tool.c and one file per command); this is the
 * program: the front-end services the store library needs
 * (backend_error/debug), and the choice of where a command runs -- here,
 * on the store itself, or, when a server holds the store, in that server
 * through the store's control socket (remote.c), so that every command
 * works on a served store as it does on an idle one.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "nbdcas.h"

/* ---- front-end services (common/backend.h) ---- */

void
backend_error (const char *fmt, ...)
{
  char msg[1024];
  va_list ap;
  int saved = errno;            /* callers set errno after reporting */

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  tool_store_message (true, msg);
  errno = saved;
}

void
backend_debug (const char *fmt, ...)
{
  char msg[1024];
  va_list ap;
  int saved = errno;

  if (!tool_verbose)
    return;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  tool_store_message (false, msg);
  errno = saved;
}

/* libcasstore does not call these (they belong to the server front
 * ends), but backend.h declares them: trivial ones keep any reference
 * linkable.
 */
int
backend_add_extent (struct backend_extents *e, uint64_t offset,
                    uint64_t length, uint32_t type)
{
  errno = ENOTSUP;
  return -1;
}

int
backend_add_export (struct backend_exports *e, const char *name,
                    const char *description)
{
  errno = ENOTSUP;
  return -1;
}

bool
backend_server_readonly (void)
{
  return false;
}

int
main (int argc, char **argv)
{
  /* Messages start with the name, not the path. */
  if (argc > 0)
    argv[0] = (char *) tool_name;
  /* Kept whole: a command that finds its store held by a server hands
   * this to the server (tool_remote_forward, from tool_open_store).
   */
  tool_argc = argc;
  tool_argv = malloc ((argc + 1) * sizeof *tool_argv);
  if (tool_argv == NULL) {
    perror (tool_name);
    return EXIT_FAIL;
  }
  /* A copy: getopt reorders argv, and the command's name is replaced. */
  memcpy (tool_argv, argv, (argc + 1) * sizeof *tool_argv);
  return tool_run (argc, argv);
}
