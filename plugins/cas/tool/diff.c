/* nbdcas diff STORE FROM TO [--json]
 *
 * The byte ranges whose content differs between FROM and TO (volumes or
 * snapshots of one store), found by comparing their hash trees: the cost
 * follows what changed, not the size.  A volume is compared as of now:
 * flushed first if a server has it open (so every write acknowledged
 * before the command counts).  Text: one "OFFSET LENGTH" line per range;
 * --json: an array of {"offset", "length"}.  The ranges are block
 * aligned: a block counts as changed when its content does.
 */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>

#include "nbdcas.h"

struct out {
  bool json;
  uint64_t n, bytes;
};

static void
help (void)
{
  tool_printf ("Usage: %s diff STORE FROM TO [--json]\n"
               "Print the byte ranges whose content differs between FROM "
               "and TO\n"
               "(volumes or snapshots VOLUME@SNAP of STORE): one \"OFFSET "
               "LENGTH\"\n"
               "line per range, in bytes, block aligned.  Only the changed "
               "parts\n"
               "of the two block maps are read.\n"
               "\n"
               "  --json                print a JSON array of {offset, "
               "length}\n"
               "  -v, --verbose         also print a summary on stderr\n"
               "  -h, --help            this help\n", tool_name);
}

static int
one (uint64_t off, uint64_t len, void *opaque)
{
  struct out *o = opaque;

  if (o->json)
    tool_printf ("%s\n  { \"offset\": %" PRIu64 ", \"length\": %" PRIu64
                 " }", o->n ? "," : "", off, len);
  else
    tool_printf ("%" PRIu64 " %" PRIu64 "\n", off, len);
  o->n++;
  o->bytes += len;
  return 0;
}

int
cmd_diff (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "json", no_argument, NULL, 'J' },
    TOOL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  struct cas_store *st = NULL;
  struct cas_root a, b;
  struct out o = { .json = false };
  const char *dir, *from, *to;
  double t0;
  uint64_t nodes = 0;
  int c, ret = EXIT_FAIL;

  while ((c = tool_getopt (argc, argv, "diff", "hv", long_options, help,
                           &ret)) > 0)
    if (c == 'J')
      o.json = true;
  if (c == -1)
    return ret;
  if (want_args ("diff", argc, argv, optind, 3, "STORE FROM TO") == -1)
    return usage_error ("diff");
  dir = argv[optind];
  from = argv[optind + 1];
  to = argv[optind + 2];
  if (tool_check_name (from, true) == -1 || tool_check_name (to, true) == -1)
    return usage_error ("diff");

  st = tool_open_store (dir, true, CAS_VERIFY_CHECKSUM);
  if (st == NULL)
    goto out;
  if (cas_root_get (st, from, true, &a) == -1 ||
      cas_root_get (st, to, true, &b) == -1)
    goto out;
  t0 = now_seconds ();
  if (o.json)
    tool_printf ("[");
  if (cas_diff (st, &a, &b, one, &o, &nodes) == -1) {
    tool_error ("diff: comparing '%s' with '%s' failed", from, to);
    goto out;
  }
  if (o.json)
    tool_printf ("%s]\n", o.n ? "\n" : "");
  if (tool_verbose) {
    char hs[HUMAN_SIZE_LEN];
    tool_info ("%" PRIu64 " changed range%s, %s; %" PRIu64 " map nodes "
               "read in %.3f s", o.n, o.n == 1 ? "" : "s",
               human_size (o.bytes, hs), nodes, now_seconds () - t0);
  }
  ret = EXIT_OK;
 out:
  if (tool_close_store (st) == -1)
    ret = EXIT_FAIL;
  if (tool_flush_stdout () == -1)
    ret = EXIT_FAIL;
  return ret;
}
