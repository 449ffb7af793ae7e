/* nbdcas create STORE [--size SIZE] [--blocksize N] [--compression C]
 *                    [--format F] [--volume NAME]
 *
 * Creates the store if STORE is absent or an empty directory.  With
 * --size, also creates a volume (default name "default") in it -- in a
 * store that already exists too, which is how a second volume is made.
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parse.h"
#include "nbdcas.h"

#define DEFAULT_VOLUME "default"

static void
help (void)
{
  tool_printf ("Usage: %s create STORE [--size SIZE] [--blocksize N] "
          "[--compression C]\n"
          "                     [--format F] [--volume NAME]\n"
          "Create a cas store in the directory STORE (absent or empty), or\n"
          "in a Ceph RADOS pool: STORE = rados:POOL[/NAMESPACE].\n"
          "With --size, also create a volume of SIZE bytes: in a new store,\n"
          "or in STORE if it already holds a store.\n"
          "\n"
          "  -s, --size SIZE       volume size: bytes or with a K, M, G, T, P "
          "suffix\n"
          "  -b, --blocksize N     block size of a new store: a power of two "
          "from\n"
          "                        4K to 1M (default %uK); fixed for the "
          "store's life\n"
          "  -c, --compression C   how a new store compresses its data "
          "blocks:\n"
          "                        off (default), lz4, zstd or zstd:LEVEL "
          "(1 to 19;\n"
          "                        zstd is zstd:3); fixed for the store's "
          "life\n"
          "  -f, --format F        format of a new store: 2 (default) or 4\n"
          "                        (experimental: 4 KiB dedup units, block "
          "size\n"
          "                        4K to 64K, local stores only)\n"
          "  -n, --volume NAME     volume name (default \"%s\"); needs "
          "--size\n"
          "  -h, --help            this help\n",
          tool_name, CAS_DEFAULT_BLOCKSIZE / 1024, DEFAULT_VOLUME);
}

/* Block size from the command line: a power of two in range. */
static int
parse_blocksize (const char *value, uint32_t *r)
{
  int64_t n;

  if (parse_size ("--blocksize", value, &n) == -1 ||
      cas_blocksize_check ("--blocksize", n) == -1)
    return -1;
  *r = n;
  return 0;
}

int
cmd_create (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "blocksize", required_argument, NULL, 'b' },
    { "compression", required_argument, NULL, 'c' },
    { "format", required_argument, NULL, 'f' },
    { "size", required_argument, NULL, 's' },
    { "volume", required_argument, NULL, 'n' },
    TOOL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  const char *dir, *volume = NULL;
  uint64_t size = 0;
  uint32_t blocksize = 0;
  struct cas_open_options opts = *tool_store_options ();
  char cn[CAS_COMPRESSION_NAME_LEN];
  bool have_size = false, have_comp = false;
  struct cas_store *st = NULL;
  char hs[HUMAN_SIZE_LEN];
  int c, r, ret = EXIT_FAIL;

  while ((c = tool_getopt (argc, argv, "create", "b:c:f:hn:s:v", long_options,
                           help, &ret)) > 0) {
    switch (c) {
    case 'b':
      if (parse_blocksize (optarg, &blocksize) == -1)
        return usage_error ("create");
      break;
    case 'c':
      if (cas_compression_parse ("--compression", optarg,
                                 &opts.compression) == -1)
        return usage_error ("create");
      have_comp = true;
      break;
    case 'f':
      if (strcmp (optarg, "2") == 0)
        opts.format = CAS_FORMAT_VERSION;
      else if (strcmp (optarg, "4") == 0)
        opts.format = CAS_FORMAT_VERSION_UNITS;
      else {
        tool_error ("--format %s: a new store is created at format 2 (the "
                    "default) or 4 (experimental: 4 KiB dedup units)",
                    optarg);
        return usage_error ("create");
      }
      break;
    case 'n':
      volume = optarg;
      break;
    case 's':
      if (tool_parse_size ("--size", optarg, &size) == -1)
        return usage_error ("create");
      have_size = true;
      break;
    }
  }
  if (c == -1)
    return ret;
  if (want_args ("create", argc, argv, optind, 1, "STORE") == -1)
    return usage_error ("create");
  dir = argv[optind];
  if (volume && !have_size) {
    tool_error ("create: --volume needs --size (the size of the new "
                "volume)");
    return usage_error ("create");
  }
  if (!volume)
    volume = DEFAULT_VOLUME;
  if (have_size && (tool_check_name (volume, false) == -1 ||
                    cas_new_name_check ("volume", volume) == -1))
    return usage_error ("create");

  if (!have_comp)
    opts.compression = cas_store_default_compression (dir);
  if (cas_store_compression_check (dir, &opts.compression) == -1 ||
      cas_store_format_check ("--format", dir, opts.format, blocksize) == -1)
    return EXIT_FAIL;
  /* In a server, STORE is the store it serves. */
  r = tool_remote () ? 1 : cas_store_exists_opts (dir, tool_store_options ());
  if (r == -1)
    return EXIT_FAIL;
  if (r == 1 && !have_size) {
    tool_error ("%s already holds a cas store (to add a volume to it: "
                "%s create %s --size SIZE --volume NAME)", dir, tool_name,
                dir);
    return EXIT_FAIL;
  }
  if (r == 0) {
    if (cas_store_create_opts (dir, blocksize, &opts) == -1)
      return EXIT_FAIL;
    if (tool_verbose)
      tool_info ("created store %s (block size %" PRIu32 ", compression %s%s)",
                 dir, blocksize ? blocksize : CAS_DEFAULT_BLOCKSIZE,
                 cas_compression_name (&opts.compression, cn),
                 opts.format == CAS_FORMAT_VERSION_UNITS ? ", format 4" : "");
  }
  if (!have_size)
    return EXIT_OK;

  st = tool_open_store (dir, false, CAS_VERIFY_CHECKSUM);
  if (st == NULL)
    goto out;
  /* In an existing store, a different --blocksize is a mistake worth
   * stopping for: the store's own is fixed.
   */
  if (r == 1 && blocksize && blocksize != cas_store_blocksize (st)) {
    tool_error ("%s has block size %" PRIu32 ", not %" PRIu32 " (the block "
                "size is fixed when a store is created)", dir,
                cas_store_blocksize (st), blocksize);
    goto out;
  }
  if (r == 1 && opts.format &&
      opts.format != cas_store_format_version (st) &&
      !(opts.format == CAS_FORMAT_VERSION &&
        cas_store_format_version (st) < CAS_FORMAT_VERSION_UNITS)) {
    tool_error ("%s is a format-%" PRIu32 " store, not format %" PRIu32
                " (the format is fixed when a store is created)", dir,
                cas_store_format_version (st), opts.format);
    goto out;
  }
  if (r == 1 && have_comp) {
    struct cas_compression have = cas_store_compression (st);
    char w[CAS_COMPRESSION_NAME_LEN], h[CAS_COMPRESSION_NAME_LEN];

    if (!cas_compression_equal (&have, &opts.compression)) {
      tool_error ("%s has compression %s, not %s (the compression is fixed "
                  "when a store is created)", dir,
                  cas_compression_name (&have, h),
                  cas_compression_name (&opts.compression, w));
      goto out;
    }
  }
  if (cas_volume_create (st, volume, size) == -1)
    goto out;
  if (tool_verbose)
    tool_info ("created volume '%s' of %" PRIu64 " bytes (%s)", volume, size,
               human_size (size, hs));
  ret = EXIT_OK;
 out:
  if (tool_close_store (st) == -1)
    ret = EXIT_FAIL;
  return ret;
}
