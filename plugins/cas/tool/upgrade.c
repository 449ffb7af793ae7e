/* nbdcas upgrade STORE
 *
 * Raise a store made by an older release to this release's format
 * version (FORMAT.md, "Versions"): the superblock says the new version,
 * and from then on new data records carry piece tables.  Nothing already
 * stored is rewritten: old records are read as before, and garbage
 * collection gives the live ones tables as it copies them.  One way: a
 * release that reads only the old version refuses the store afterwards.
 * On a served store the server does it, without stopping its clients.
 */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>

#include "nbdcas.h"

static void
help (void)
{
  tool_printf ("Usage: %s upgrade STORE\n"
               "Upgrade STORE to format version %u (what this release "
               "creates).  Data\n"
               "written afterwards gets per-4K checksums, so that partial "
               "reads check\n"
               "only what they read; what is stored stays as it is.  "
               "Releases that\n"
               "read only an older version cannot open the store afterwards.  "
               "Safe\n"
               "while a server serves the store (the server does it).\n"
               "\n"
               "  -v, --verbose         say what is being done\n"
               "  -h, --help            this help\n", tool_name,
               CAS_FORMAT_VERSION);
}

int
cmd_upgrade (int argc, char **argv)
{
  static const struct option long_options[] = {
    TOOL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  struct cas_store *st = NULL;
  const char *dir;
  uint32_t from;
  int c, ret = EXIT_FAIL;

  while ((c = tool_getopt (argc, argv, "upgrade", "hv", long_options, help,
                           &ret)) > 0)
    ;
  if (c == -1)
    return ret;
  if (want_args ("upgrade", argc, argv, optind, 1, "STORE") == -1)
    return usage_error ("upgrade");
  dir = argv[optind];

  st = tool_open_store (dir, false, CAS_VERIFY_CHECKSUM);
  if (st == NULL)
    goto out;
  if (cas_store_upgrade (st, &from) == -1) {
    tool_error ("upgrade: %s is still format version %" PRIu32, dir,
                cas_store_format_version (st));
    goto out;
  }
  if (from >= CAS_FORMAT_VERSION)
    tool_printf ("%s: already format version %" PRIu32 ": nothing to do\n",
                 dir, from);
  else
    tool_printf ("%s: upgraded from format version %" PRIu32 " to %u\n",
                 dir, from, CAS_FORMAT_VERSION);
  ret = EXIT_OK;
 out:
  if (tool_close_store (st) == -1)
    ret = EXIT_FAIL;
  if (tool_flush_stdout () == -1)
    ret = EXIT_FAIL;
  return ret;
}
