/* nbdcas list STORE [--json]
 *
 * One line per volume, in name order: the name, the size in bytes and
 * the size for humans, tab-separated (names cannot hold tabs: control
 * characters are refused by cas_volume_name_check); after each volume a
 * line per snapshot, VOLUME@SNAP, with a fourth field: when it was taken
 * (UTC, ISO 8601).
 */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "nbdcas.h"

struct list {
  struct cas_store *st;
  bool json;
  unsigned n;
  unsigned bad;                 /* volumes whose root could not be read */
};

static void
help (void)
{
  tool_printf ("Usage: %s list STORE [--json]\n"
          "List the volumes of STORE: name, size in bytes, size.\n"
          "\n"
          "  --json                print a JSON array of objects\n"
          "  -h, --help            this help\n", tool_name);
}

static int
one (const char *name, void *opaque)
{
  struct list *l = opaque;
  struct cas_root r;
  char hs[HUMAN_SIZE_LEN], when[32] = "";

  /* The committed root: what the store holds now (a volume a server has
   * open is flushed first, so it is up to date).
   */
  if (cas_root_get (l->st, name, true, &r) == -1) {
    /* The message is out; list the others (and fail at the end). */
    l->bad++;
    return 0;
  }
  if (r.snapshot)
    iso_time (r.mtime, when);
  if (l->json) {
    tool_printf ("%s\n  { \"name\": ", l->n ? "," : "");
    json_string (tool_stdout (), name);
    tool_printf (", \"size\": %" PRIu64, r.size);
    if (r.snapshot)
      tool_printf (", \"snapshot\": true, \"created\": \"%s\"", when);
    tool_printf (" }");
  }
  else if (r.snapshot)
    tool_printf ("%s\t%" PRIu64 "\t%s\t%s\n", name, r.size,
                 human_size (r.size, hs), when);
  else
    tool_printf ("%s\t%" PRIu64 "\t%s\n", name, r.size,
                 human_size (r.size, hs));
  l->n++;
  /* Its snapshots follow it. */
  if (!r.snapshot && strchr (name, '@') == NULL &&
      cas_store_list_snapshots (l->st, name, one, l) != 0)
    return -1;
  return 0;
}

int
cmd_list (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "json", no_argument, NULL, 'J' },
    TOOL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  struct list l = { .st = NULL };
  int c, ret = EXIT_FAIL;

  while ((c = tool_getopt (argc, argv, "list", "hv", long_options, help,
                           &ret)) > 0) {
    if (c == 'J')
      l.json = true;
  }
  if (c == -1)
    return ret;
  if (want_args ("list", argc, argv, optind, 1, "STORE") == -1)
    return usage_error ("list");
  l.st = tool_open_store (argv[optind], true, CAS_VERIFY_CHECKSUM);
  if (l.st == NULL)
    goto out;
  if (l.json)
    tool_printf ("[");
  if (cas_store_list_volumes (l.st, one, &l) != 0)
    goto out;
  if (l.json)
    tool_printf ("%s]\n", l.n ? "\n" : "");
  ret = l.bad ? EXIT_FAIL : EXIT_OK;
 out:
  if (tool_close_store (l.st) == -1)
    ret = EXIT_FAIL;
  if (tool_flush_stdout () == -1)
    ret = EXIT_FAIL;
  return ret;
}
