/* nbdcas list STORE [--json]
 *
 * One line per volume, in name order: the name, the size in bytes and
 * the size for humans, tab-separated (names cannot hold tabs: control
 * characters are refused by cas_volume_name_check).
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
  printf ("Usage: %s list STORE [--json]\n"
          "List the volumes of STORE: name, size in bytes, size.\n"
          "\n"
          "  --json                print a JSON array of objects\n"
          "  -h, --help            this help\n", progname);
}

static int
one (const char *name, void *opaque)
{
  struct list *l = opaque;
  struct cas_volume *vol;
  char hs[HUMAN_SIZE_LEN];
  uint64_t size;

  vol = cas_volume_open (l->st, name);
  if (vol == NULL) {
    /* The message is out; list the others (and fail at the end). */
    l->bad++;
    return 0;
  }
  size = cas_volume_size (vol);
  cas_volume_close (vol);
  if (l->json) {
    printf ("%s\n  { \"name\": ", l->n ? "," : "");
    json_string (stdout, name);
    printf (", \"size\": %" PRIu64 " }", size);
  }
  else
    printf ("%s\t%" PRIu64 "\t%s\n", name, size, human_size (size, hs));
  l->n++;
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
    printf ("[");
  if (cas_store_list_volumes (l.st, one, &l) != 0)
    goto out;
  if (l.json)
    printf ("%s]\n", l.n ? "\n" : "");
  ret = l.bad ? EXIT_FAIL : EXIT_OK;
 out:
  if (tool_close_store (l.st) == -1)
    ret = EXIT_FAIL;
  if (tool_flush_stdout () == -1)
    ret = EXIT_FAIL;
  return ret;
}
