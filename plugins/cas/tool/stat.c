/* nbdcas stat STORE [VOLUME] [--json]
 *
 * The store: logical bytes of all volumes, bytes they map (non-zero
 * blocks), bytes stored (pack files on disk), the dedup ratio (mapped /
 * stored: 2.0 means every stored byte is used twice on average; zero
 * blocks are neither mapped nor stored), packs, chunks and the RAM of the
 * hash index.  A volume: its size, mapped blocks, map nodes, generation
 * and root hash.
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "nbdcas.h"

/* One volume's line of the store's table. */
struct vol_row {
  char *name;
  struct cas_volume_stats vs;
  bool ok;
  char error[512];              /* why it could not be read */
};

struct totals {
  struct cas_store *st;
  uint64_t size, mapped_bytes, mapped_blocks, map_nodes;
  struct vol_row *rows;
  size_t nrows, alloc;
  unsigned broken;
};

static void
help (void)
{
  tool_printf ("Usage: %s stat STORE [VOLUME] [--json]\n"
          "Show space use of STORE (logical, mapped and stored bytes, dedup\n"
          "ratio, packs, chunks, index memory, and a line per volume), or of\n"
          "one VOLUME.  A volume that cannot be read is shown as damaged\n"
          "(exit status 1); run nbdcas fsck to see what was lost.\n"
          "\n"
          "  --json                print one JSON object\n"
          "  -h, --help            this help\n", tool_name);
}

static int
add_volume (const char *name, void *opaque)
{
  struct totals *t = opaque;
  struct cas_volume *vol;
  struct vol_row *row;
  int r = -1;

  if (t->nrows == t->alloc) {
    size_t n = t->alloc ? 2 * t->alloc : 16;
    struct vol_row *nr = realloc (t->rows, n * sizeof *nr);
    if (nr == NULL)
      return -1;
    t->rows = nr;
    t->alloc = n;
  }
  row = &t->rows[t->nrows];
  memset (row, 0, sizeof *row);
  row->name = strdup (name);
  if (row->name == NULL)
    return -1;
  t->nrows++;
  /* The store's messages say why a volume cannot be read: keep them for
   * its line instead of printing them.
   */
  tool_capture (row->error, sizeof row->error);
  vol = cas_volume_open (t->st, name);
  if (vol) {
    r = cas_volume_stat (vol, &row->vs);
    cas_volume_close (vol);
  }
  tool_capture (NULL, 0);
  if (r == -1) {
    if (row->error[0] == '\0')
      snprintf (row->error, sizeof row->error, "%s", strerror (errno));
    t->broken++;
    return 0;                   /* show the others */
  }
  row->ok = true;
  t->size += row->vs.size;
  t->mapped_bytes += row->vs.mapped_bytes;
  t->mapped_blocks += row->vs.mapped_blocks;
  t->map_nodes += row->vs.map_nodes;
  return 0;
}

static void
free_rows (struct totals *t)
{
  size_t i;

  for (i = 0; i < t->nrows; i++)
    free (t->rows[i].name);
  free (t->rows);
}

/* "N (1.0 GiB)" */
static const char *
bytes (uint64_t n, char *buf, size_t len)
{
  char h[HUMAN_SIZE_LEN];

  if (n < 1024)
    snprintf (buf, len, "%" PRIu64, n);
  else
    snprintf (buf, len, "%" PRIu64 " (%s)", n, human_size (n, h));
  return buf;
}

static int
stat_store (struct cas_store *st, const char *dir, bool json)
{
  struct cas_store_stats ss;
  struct totals t = { .st = st };
  const struct cas_chunkstore_stats *cs = &ss.chunks;
  char b[64], h1[HUMAN_SIZE_LEN], h2[HUMAN_SIZE_LEN];
  size_t i;
  int r = -1;

  if (cas_store_stat (st, &ss) == -1 ||
      cas_store_list_volumes (st, add_volume, &t) != 0)
    goto out;
  if (json) {
    tool_printf ("{\n  \"store\": ");
    json_string (tool_stdout (), dir);
    tool_printf (",\n  \"format_version\": %d,\n"
            "  \"block_size\": %" PRIu32 ",\n"
            "  \"volumes\": %" PRIu64 ",\n"
            "  \"damaged_volumes\": %u,\n"
            "  \"logical_bytes\": %" PRIu64 ",\n"
            "  \"mapped_bytes\": %" PRIu64 ",\n"
            "  \"mapped_blocks\": %" PRIu64 ",\n"
            "  \"stored_bytes\": %" PRIu64 ",\n",
            CAS_FORMAT_VERSION, ss.blocksize, ss.volumes, t.broken, t.size,
            t.mapped_bytes, t.mapped_blocks, cs->stored_bytes);
    if (cs->stored_bytes)
      tool_printf ("  \"dedup_ratio\": %.4f,\n",
              (double) t.mapped_bytes / cs->stored_bytes);
    else
      tool_printf ("  \"dedup_ratio\": null,\n");
    tool_printf ("  \"packs\": %" PRIu64 ",\n"
            "  \"chunks\": %" PRIu64 ",\n"
            "  \"map_nodes\": %" PRIu64 ",\n"
            "  \"index_bytes\": %" PRIu64 ",\n"
            "  \"index_slots\": %" PRIu64 ",\n"
            "  \"volume_list\": [",
            cs->packs, cs->chunks, t.map_nodes, cs->index_bytes,
            cs->index_slots);
    for (i = 0; i < t.nrows; i++) {
      const struct vol_row *row = &t.rows[i];
      tool_printf ("%s\n    { \"name\": ", i ? "," : "");
      json_string (tool_stdout (), row->name);
      if (row->ok)
        tool_printf (", \"ok\": true, \"size\": %" PRIu64 ", \"mapped_bytes\": %"
                PRIu64 " }", row->vs.size, row->vs.mapped_bytes);
      else {
        tool_printf (", \"ok\": false, \"error\": ");
        json_string (tool_stdout (), row->error);
        tool_printf (" }");
      }
    }
    tool_printf ("%s]\n}\n", t.nrows ? "\n  " : "");
    r = t.broken ? -1 : 0;
    goto out;
  }
  tool_printf ("store:          %s\n", dir);
  tool_printf ("format version: %d\n", CAS_FORMAT_VERSION);
  tool_printf ("block size:     %s\n", bytes (ss.blocksize, b, sizeof b));
  tool_printf ("volumes:        %" PRIu64, ss.volumes);
  if (t.broken)
    tool_printf (" (%u damaged: not counted below)", t.broken);
  tool_printf ("\n");
  tool_printf ("logical size:   %s\n", bytes (t.size, b, sizeof b));
  tool_printf ("mapped bytes:   %s\n", bytes (t.mapped_bytes, b, sizeof b));
  tool_printf ("stored bytes:   %s\n", bytes (cs->stored_bytes, b, sizeof b));
  if (cs->stored_bytes)
    tool_printf ("dedup ratio:    %.2f\n",
            (double) t.mapped_bytes / cs->stored_bytes);
  else
    tool_printf ("dedup ratio:    -\n");
  tool_printf ("packs:          %" PRIu64 "\n", cs->packs);
  tool_printf ("chunks:         %" PRIu64 " (%" PRIu64 " map nodes)\n",
          cs->chunks, t.map_nodes);
  tool_printf ("index memory:   %s", bytes (cs->index_bytes, b, sizeof b));
  if (cs->chunks)
    tool_printf (", %.1f bytes per chunk", (double) cs->index_bytes / cs->chunks);
  tool_printf ("\n");
  if (t.nrows)
    tool_printf ("\n%-24s %12s %12s  %s\n", "VOLUME", "SIZE", "MAPPED", "STATUS");
  for (i = 0; i < t.nrows; i++) {
    const struct vol_row *row = &t.rows[i];
    if (row->ok)
      tool_printf ("%-24s %12s %12s  ok\n", row->name,
              human_size (row->vs.size, h1),
              human_size (row->vs.mapped_bytes, h2));
    else
      tool_printf ("%-24s %12s %12s  DAMAGED: %s\n", row->name, "-", "-",
              row->error);
  }
  r = t.broken ? -1 : 0;
 out:
  free_rows (&t);
  return r;
}

static int
stat_volume (struct cas_store *st, const char *name, bool json)
{
  struct cas_volume *vol;
  struct cas_volume_stats vs;
  char hex[2 * CAS_HASH_SIZE + 1], b[64];
  uint32_t bs;
  int r;

  vol = cas_volume_open (st, name);
  if (vol == NULL)
    return -1;
  bs = cas_volume_blocksize (vol);
  r = cas_volume_stat (vol, &vs);
  cas_volume_close (vol);
  if (r == -1) {
    tool_error ("volume '%s': cannot read its map", name);
    return -1;
  }
  cas_hash_hex (&vs.root, hex);
  if (json) {
    tool_printf ("{\n  \"volume\": ");
    json_string (tool_stdout (), name);
    tool_printf (",\n  \"size\": %" PRIu64 ",\n"
            "  \"block_size\": %" PRIu32 ",\n"
            "  \"blocks\": %" PRIu64 ",\n"
            "  \"mapped_blocks\": %" PRIu64 ",\n"
            "  \"mapped_bytes\": %" PRIu64 ",\n"
            "  \"map_nodes\": %" PRIu64 ",\n"
            "  \"generation\": %" PRIu64 ",\n"
            "  \"root\": \"%s\"\n}\n",
            vs.size, bs, vs.blocks, vs.mapped_blocks, vs.mapped_bytes,
            vs.map_nodes, vs.generation, hex);
    return 0;
  }
  tool_printf ("volume:         %s\n", name);
  tool_printf ("size:           %s\n", bytes (vs.size, b, sizeof b));
  tool_printf ("block size:     %s\n", bytes (bs, b, sizeof b));
  tool_printf ("blocks:         %" PRIu64 "\n", vs.blocks);
  tool_printf ("mapped blocks:  %" PRIu64 " (%.1f%%)\n", vs.mapped_blocks,
          vs.blocks ? 100.0 * vs.mapped_blocks / vs.blocks : 0);
  tool_printf ("mapped bytes:   %s\n", bytes (vs.mapped_bytes, b, sizeof b));
  tool_printf ("map nodes:      %" PRIu64 "\n", vs.map_nodes);
  tool_printf ("generation:     %" PRIu64 "\n", vs.generation);
  tool_printf ("root:           %s\n", cas_hash_is_zero (&vs.root) ? "(empty)"
          : hex);
  return 0;
}

int
cmd_stat (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "json", no_argument, NULL, 'J' },
    TOOL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  struct cas_store *st = NULL;
  const char *dir, *name = NULL;
  bool json = false;
  int c, ret = EXIT_FAIL;

  while ((c = tool_getopt (argc, argv, "stat", "hv", long_options, help,
                           &ret)) > 0) {
    if (c == 'J')
      json = true;
  }
  if (c == -1)
    return ret;
  if (argc - optind == 2)
    name = argv[optind + 1];
  else if (want_args ("stat", argc, argv, optind, 1, "STORE [VOLUME]") == -1)
    return usage_error ("stat");
  dir = argv[optind];
  if (name && tool_check_name (name, true) == -1)
    return usage_error ("stat");

  st = tool_open_store (dir, true, CAS_VERIFY_CHECKSUM);
  if (st == NULL)
    goto out;
  if (name) {
    int e = cas_volume_exists (st, name);
    if (e == -1)
      goto out;
    if (e == 0) {
      tool_error ("no volume '%s' in %s", name, dir);
      goto out;
    }
    if (stat_volume (st, name, json) == -1)
      goto out;
  }
  else if (stat_store (st, dir, json) == -1)
    goto out;
  ret = EXIT_OK;
 out:
  if (tool_close_store (st) == -1)
    ret = EXIT_FAIL;
  if (tool_flush_stdout () == -1)
    ret = EXIT_FAIL;
  return ret;
}
