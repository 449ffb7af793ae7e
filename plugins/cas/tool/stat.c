/* nbdcas stat STORE [VOLUME] [--json]
 *
 * Space, as an admin asks about it.  Every root (each volume and each
 * snapshot) is walked into one reference set (refs.c), which says for
 * each chunk whether one root references it alone.  Then:
 *  - per volume and snapshot: logical size, mapped bytes (blocks that
 *    hold data), the distinct data chunks it references with their raw
 *    and stored bytes (its dedup ratio: mapped / raw; its compression
 *    ratio: raw / stored), and the bytes it alone references: what
 *    deleting it (and collecting garbage) would free;
 *  - the store: bytes stored (pack files on disk), referenced (records
 *    some root needs), unreferenced (what garbage collection would give
 *    back), the dedup ratio (mapped bytes of every volume and snapshot /
 *    referenced bytes before compression), the compression ratio (raw /
 *    stored bytes of the referenced data chunks), packs, chunks, index
 *    memory.
 * A volume is counted as of its last flush (a server holding the store
 * flushes each open volume first).  A root whose tree cannot be read is
 * marked DAMAGED (exit status 1) and the others are still shown.
 *
 * With VOLUME: that volume's (or snapshot's) size, blocks, mapped
 * blocks, map nodes, generation, root hash, and its unique bytes.
 *
 * Format 4: data chunks are 4 KiB units kept in extents.  The dedup
 * ratio is the non-zero bytes of the blocks (zero units inside a block
 * take nothing) over the raw bytes of the distinct units referenced; the
 * compression ratio raw over stored bytes of those units.  Referenced
 * bytes are the records of the extents referenced, whole (a collection
 * copies an extent whole: the units of those nobody references are shown
 * apart); what a volume alone references counts only extents all of
 * whose referenced units are its alone.  Plus the extents and the
 * extent table's and hooks' memory (extent.h cas_extents_stats).
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "extent.h"
#include "nbdcas.h"
#include "vector.h"

struct row {
  char *name;
  struct cas_root root;
  bool snapshot, ok;
  struct cas_refs_root_stats rs;
  uint64_t unique;
  char error[512];              /* why it could not be read */
};

DEFINE_VECTOR_TYPE (row_vector, struct row);

struct rows {
  struct cas_store *st;
  struct cas_refs *refs;
  row_vector v;
  unsigned broken;
};

static void
help (void)
{
  tool_printf ("Usage: %s stat STORE [VOLUME] [--json]\n"
               "Show space use of STORE: logical, mapped, stored, referenced "
               "and\n"
               "unreferenced bytes, the dedup and compression ratios, packs,\n"
               "chunks, index memory, and a line per volume and snapshot "
               "with\n"
               "the stored bytes of the chunks it references, its ratios and "
               "the\n"
               "bytes it alone references (what deleting it would free).  "
               "With VOLUME (or\n"
               "VOLUME@SNAP), that one in detail.  A volume that cannot be "
               "read\n"
               "is shown as damaged (exit status 1); run nbdcas fsck to see "
               "what\n"
               "was lost.\n"
               "\n"
               "  --json                print one JSON object\n"
               "  -h, --help            this help\n", tool_name);
}

static int
add_row (const char *name, void *opaque)
{
  struct rows *t = opaque;
  struct row row = { .name = strdup (name) };

  if (row.name == NULL || row_vector_append (&t->v, row) == -1) {
    free (row.name);
    return -1;
  }
  /* A volume's snapshots follow it. */
  if (strchr (name, '@') == NULL &&
      cas_store_list_snapshots (t->st, name, add_row, t) != 0)
    return -1;
  return 0;
}

/* Walk every root into the reference set; rows whose root or tree
 * cannot be read are marked, the others counted.
 */
static int
walk_rows (struct rows *t)
{
  struct cas_store_stats ss;
  struct cas_refs_totals tt;
  uint64_t *alone;
  size_t i;

  if (cas_store_stat (t->st, &ss) == -1)
    return -1;
  t->refs = cas_refs_new (ss.chunks.chunks);
  if (t->refs == NULL)
    return -1;
  for (i = 0; i < t->v.len; i++) {
    struct row *row = &t->v.ptr[i];
    int r;

    /* The store's messages say why a root cannot be read: keep them for
     * its line instead of printing them.
     */
    tool_capture (row->error, sizeof row->error);
    r = cas_root_get (t->st, row->name, true, &row->root);
    if (r == 0)
      r = cas_refs_add_root (t->st, t->refs, i + 1, &row->root, &row->rs);
    tool_capture (NULL, 0);
    if (r == -1) {
      if (row->error[0] == '\0')
        snprintf (row->error, sizeof row->error, "%s", strerror (errno));
      t->broken++;
      continue;
    }
    row->ok = true;
    row->snapshot = row->root.snapshot;
  }
  alone = calloc (t->v.len + 1, sizeof *alone);
  if (alone == NULL)
    return -1;
  cas_refs_totals (t->refs, alone, t->v.len, &tt);
  for (i = 0; i < t->v.len; i++)
    t->v.ptr[i].unique = alone[i + 1];
  free (alone);
  return 0;
}

static void
free_row (struct row *r)
{
  free (r->name);
}

static void
free_rows (struct rows *t)
{
  row_vector_free_all (&t->v, free_row);
  cas_refs_free (t->refs);
}

/* a / b, or "null" / "-" if b is 0: a ratio for JSON or for text. */
static const char *
ratio (uint64_t a, uint64_t b, bool json, char buf[32])
{
  if (b == 0)
    snprintf (buf, 32, "%s", json ? "null" : "-");
  else if (json)
    snprintf (buf, 32, "%.4f", (double) a / b);
  else
    snprintf (buf, 32, "%.2f", (double) a / b);
  return buf;
}

/* The extent store of a format-4 store (NULL otherwise). */
static struct cas_extents *
extents_of (struct cas_store *st)
{
  if (cas_store_format_version (st) < CAS_FORMAT_VERSION_UNITS ||
      !cas_store_is_local (st))
    return NULL;
  return cas_packstore_extents (cas_store_chunks (st));
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
  struct rows t = { .st = st };
  struct cas_store_stats ss;
  struct cas_refs_totals tt;
  const struct cas_chunkstore_stats *cs = &ss.chunks;
  struct cas_compression comp = cas_store_compression (st);
  struct cas_extents *ext = extents_of (st);
  struct cas_extents_stats es = { 0 };
  uint64_t logical = 0, mapped = 0, snap_mapped = 0, unreferenced, overhead,
    nvol = 0, nsnap = 0, *alone, nonzero = 0, dedup_raw;
  uint32_t bs = cas_store_blocksize (st);
  char b[64], r1[32], r2[32], cn[CAS_COMPRESSION_NAME_LEN];
  char h1[HUMAN_SIZE_LEN], h2[HUMAN_SIZE_LEN], h3[HUMAN_SIZE_LEN],
    h4[HUMAN_SIZE_LEN];
  size_t i;
  int r = -1;

  if (cas_store_list_volumes (st, add_row, &t) != 0 || walk_rows (&t) == -1 ||
      cas_store_stat (st, &ss) == -1)
    goto out;
  alone = calloc (t.v.len + 1, sizeof *alone);
  if (alone == NULL)
    goto out;
  cas_refs_totals (t.refs, alone, t.v.len, &tt);
  free (alone);
  cas_compression_name (&comp, cn);
  if (ext)
    cas_extents_stats (ext, &es);
  for (i = 0; i < t.v.len; i++) {
    const struct row *row = &t.v.ptr[i];
    if (!row->ok)
      continue;
    nonzero += row->rs.nonzero_bytes;
    if (row->snapshot) {
      nsnap++;
      snap_mapped += row->rs.mapped_blocks * bs;
    }
    else {
      nvol++;
      logical += row->root.size;
      mapped += row->rs.mapped_blocks * bs;
    }
  }
  /* Pack headers are neither referenced nor reclaimable. */
  overhead = cs->packs * 64;
  unreferenced = cs->stored_bytes > tt.referenced + overhead
    ? cs->stored_bytes - tt.referenced - overhead : 0;
  /* The dedup ratio's denominator: the bytes the referenced data would
   * take were nothing shared.  Format 4: the raw bytes of the distinct
   * units (its numerator the non-zero bytes of every block).
   */
  dedup_raw = ext ? tt.data_raw : tt.referenced_raw;
  if (!ext)
    nonzero = mapped + snap_mapped;
  if (json) {
    tool_printf ("{\n  \"store\": ");
    json_string (tool_stdout (), dir);
    tool_printf (",\n  \"format_version\": %d,\n"
                 "  \"block_size\": %" PRIu32 ",\n"
                 "  \"compression\": \"%s\",\n"
                 "  \"volumes\": %" PRIu64 ",\n"
                 "  \"snapshots\": %" PRIu64 ",\n"
                 "  \"damaged_volumes\": %u,\n"
                 "  \"logical_bytes\": %" PRIu64 ",\n"
                 "  \"mapped_bytes\": %" PRIu64 ",\n"
                 "  \"snapshot_mapped_bytes\": %" PRIu64 ",\n"
                 "  \"stored_bytes\": %" PRIu64 ",\n"
                 "  \"referenced_bytes\": %" PRIu64 ",\n"
                 "  \"referenced_raw_bytes\": %" PRIu64 ",\n"
                 "  \"unreferenced_bytes\": %" PRIu64 ",\n"
                 "  \"dedup_ratio\": %s,\n"
                 "  \"nonzero_bytes\": %" PRIu64 ",\n"
                 "  \"data_chunks\": %" PRIu64 ",\n"
                 "  \"compressed_chunks\": %" PRIu64 ",\n"
                 "  \"data_raw_bytes\": %" PRIu64 ",\n"
                 "  \"data_stored_bytes\": %" PRIu64 ",\n"
                 "  \"compression_ratio\": %s,\n",
                 cas_store_format_version (st), bs, cn, nvol, nsnap,
                 t.broken, logical, mapped, snap_mapped, cs->stored_bytes,
                 tt.referenced, tt.referenced_raw, unreferenced,
                 ratio (nonzero, dedup_raw, true, r1), nonzero,
                 tt.data_chunks, tt.compressed_chunks, tt.data_raw,
                 tt.data_stored, ratio (tt.data_raw, tt.data_stored, true,
                                        r2));
    tool_printf ("  \"packs\": %" PRIu64 ",\n"
                 "  \"chunks\": %" PRIu64 ",\n"
                 "  \"referenced_chunks\": %" PRIu64 ",\n"
                 "  \"map_nodes\": %" PRIu64 ",\n"
                 "  \"index_bytes\": %" PRIu64 ",\n"
                 "  \"index_slots\": %" PRIu64 ",\n",
                 cs->packs, cs->chunks + es.extents, tt.chunks, tt.nodes,
                 cs->index_bytes,
                 cs->index_slots);
    if (ext)
      tool_printf ("  \"unit_size\": %u,\n"
                   "  \"units\": %" PRIu64 ",\n"
                   "  \"extents\": %" PRIu64 ",\n"
                   "  \"referenced_extents\": %" PRIu64 ",\n"
                   "  \"unreferenced_unit_bytes_in_referenced_extents\": %"
                   PRIu64 ",\n"
                   "  \"stored_units\": %" PRIu64 ",\n"
                   "  \"stored_unit_raw_bytes\": %" PRIu64 ",\n"
                   "  \"stored_unit_bytes\": %" PRIu64 ",\n"
                   "  \"hooks\": %" PRIu64 ",\n"
                   "  \"extent_table_bytes\": %" PRIu64 ",\n"
                   "  \"hook_bytes\": %" PRIu64 ",\n",
                   CAS_UNIT_SIZE, tt.units, es.extents, tt.extents,
                   tt.dead_unit_bytes, es.units, es.unit_bytes_raw,
                   es.unit_bytes_stored, es.hooks, es.table_bytes,
                   es.hook_bytes);
    tool_printf ("  \"volume_list\": [");
    for (i = 0; i < t.v.len; i++) {
      const struct row *row = &t.v.ptr[i];
      tool_printf ("%s\n    { \"name\": ", i ? "," : "");
      json_string (tool_stdout (), row->name);
      if (row->ok) {
        tool_printf (", \"ok\": true, \"snapshot\": %s, \"size\": %" PRIu64
                     ", \"mapped_bytes\": %" PRIu64 ", \"unique_bytes\": %"
                     PRIu64 ", \"data_chunks\": %" PRIu64 ", \"raw_bytes\": %"
                     PRIu64 ", \"stored_bytes\": %" PRIu64
                     ", \"dedup_ratio\": %s, \"compression_ratio\": %s"
                     ", \"nonzero_bytes\": %" PRIu64,
                     row->snapshot ? "true" : "false",
                     row->root.size, row->rs.mapped_blocks * bs, row->unique,
                     row->rs.data_chunks, row->rs.raw_bytes,
                     row->rs.stored_bytes,
                     ratio (row->rs.nonzero_bytes, row->rs.raw_bytes,
                            true, r1),
                     ratio (row->rs.raw_bytes, row->rs.stored_bytes, true,
                            r2), row->rs.nonzero_bytes);
        if (row->snapshot) {
          char when[32];
          iso_time (row->root.mtime, when);
          tool_printf (", \"created\": \"%s\"", when);
        }
        tool_printf (" }");
      }
      else {
        tool_printf (", \"ok\": false, \"error\": ");
        json_string (tool_stdout (), row->error);
        tool_printf (" }");
      }
    }
    tool_printf ("%s]\n}\n", t.v.len ? "\n  " : "");
    r = t.broken ? -1 : 0;
    goto out;
  }
  tool_printf ("store:          %s\n", dir);
  tool_printf ("format version: %" PRIu32 "\n", cas_store_format_version (st));
  tool_printf ("block size:     %s\n", bytes (bs, b, sizeof b));
  tool_printf ("compression:    %s\n", cn);
  tool_printf ("volumes:        %" PRIu64, nvol);
  if (t.broken)
    tool_printf (" (and %u damaged: not counted below)", t.broken);
  tool_printf ("\n");
  tool_printf ("snapshots:      %" PRIu64 "\n", nsnap);
  tool_printf ("logical size:   %s\n", bytes (logical, b, sizeof b));
  tool_printf ("mapped bytes:   %s\n", bytes (mapped, b, sizeof b));
  if (nsnap)
    tool_printf ("  snapshots:    %s\n", bytes (snap_mapped, b, sizeof b));
  tool_printf ("stored bytes:   %s\n", bytes (cs->stored_bytes, b, sizeof b));
  tool_printf ("  referenced:   %s\n", bytes (tt.referenced, b, sizeof b));
  tool_printf ("  unreferenced: %s (garbage collection gives it back)\n",
               bytes (unreferenced, b, sizeof b));
  tool_printf ("dedup ratio:    %s\n", ratio (nonzero, dedup_raw, false, r1));
  if (ext) {
    /* Format 4: the unit store (its records are not chunks). */
    tool_printf ("units:          %" PRIu64 " in %" PRIu64 " extents: %s raw, "
                 "%s stored\n", es.units, es.extents,
                 human_size (es.unit_bytes_raw, h1),
                 human_size (es.unit_bytes_stored, h2));
    tool_printf ("  referenced:   %" PRIu64 " in %" PRIu64 " extents, %"
                 PRIu64 " compressed: %s raw, %s stored\n", tt.units,
                 tt.extents, tt.compressed_chunks,
                 human_size (tt.data_raw, h1), human_size (tt.data_stored, h2));
    tool_printf ("  unreferenced in referenced extents: %s (kept: garbage "
                 "collection copies an extent whole)\n",
                 human_size (tt.dead_unit_bytes, h1));
  }
  else
    tool_printf ("data chunks:    %" PRIu64 " referenced, %" PRIu64
                 " compressed: %s raw, %s stored\n", tt.data_chunks,
                 tt.compressed_chunks, human_size (tt.data_raw, h1),
                 human_size (tt.data_stored, h2));
  tool_printf ("compress ratio: %s\n",
               ratio (tt.data_raw, tt.data_stored, false, r2));
  tool_printf ("packs:          %" PRIu64 "\n", cs->packs);
  if (ext)
    /* The index holds the map nodes; the extents stand for chunks. */
    tool_printf ("chunks:         %" PRIu64 " (%" PRIu64 " referenced: %"
                 PRIu64 " map nodes, %" PRIu64 " extents)\n",
                 cs->chunks + es.extents, tt.chunks, tt.nodes, tt.extents);
  else
    tool_printf ("chunks:         %" PRIu64 " (%" PRIu64 " referenced, %"
                 PRIu64 " of them map nodes)\n", cs->chunks, tt.chunks,
                 tt.nodes);
  tool_printf ("index memory:   %s", bytes (cs->index_bytes, b, sizeof b));
  if (cs->chunks)
    tool_printf (", %.1f bytes per chunk",
                 (double) cs->index_bytes / cs->chunks);
  tool_printf ("\n");
  if (ext)
    tool_printf ("extent memory:  %s (table %s, %" PRIu64 " hooks %s)\n",
                 bytes (es.table_bytes + es.hook_bytes, b, sizeof b),
                 human_size (es.table_bytes, h1), es.hooks,
                 human_size (es.hook_bytes, h2));
  if (t.v.len)
    tool_printf ("\n%-28s %10s %10s %10s %10s %6s %6s  %s\n", "VOLUME",
                 "SIZE", "MAPPED", "STORED", "UNIQUE", "DEDUP", "COMPR",
                 "STATUS");
  for (i = 0; i < t.v.len; i++) {
    const struct row *row = &t.v.ptr[i];
    if (row->ok) {
      char status[48] = "ok";
      if (row->snapshot) {
        char when[32];
        iso_time (row->root.mtime, when);
        snprintf (status, sizeof status, "snapshot %s", when);
      }
      tool_printf ("%-28s %10s %10s %10s %10s %6s %6s  %s\n", row->name,
                   human_size (row->root.size, h1),
                   human_size (row->rs.mapped_blocks * bs, h2),
                   human_size (row->rs.stored_bytes, h3),
                   human_size (row->unique, h4),
                   ratio (row->rs.nonzero_bytes, row->rs.raw_bytes,
                          false, r1),
                   ratio (row->rs.raw_bytes, row->rs.stored_bytes, false,
                          r2),
                   status);
    }
    else
      tool_printf ("%-28s %10s %10s %10s %10s %6s %6s  DAMAGED: %s\n",
                   row->name, "-", "-", "-", "-", "-", "-", row->error);
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
  struct rows t = { .st = st };
  struct cas_refs_root_stats rs = { 0 };
  char hex[2 * CAS_HASH_SIZE + 1], b[64], b2[64], r1[32], r2[32];
  uint64_t unique = 0;
  uint32_t bs;
  size_t i;
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
  /* What it alone references needs every root. */
  if (cas_store_list_volumes (st, add_row, &t) == 0 && walk_rows (&t) == 0)
    for (i = 0; i < t.v.len; i++)
      if (strcmp (t.v.ptr[i].name, name) == 0) {
        unique = t.v.ptr[i].unique;
        rs = t.v.ptr[i].rs;
      }
  free_rows (&t);
  cas_hash_hex (&vs.root, hex);
  if (json) {
    tool_printf ("{\n  \"volume\": ");
    json_string (tool_stdout (), name);
    tool_printf (",\n  \"size\": %" PRIu64 ",\n"
                 "  \"block_size\": %" PRIu32 ",\n"
                 "  \"blocks\": %" PRIu64 ",\n"
                 "  \"mapped_blocks\": %" PRIu64 ",\n"
                 "  \"mapped_bytes\": %" PRIu64 ",\n"
                 "  \"unique_bytes\": %" PRIu64 ",\n"
                 "  \"data_chunks\": %" PRIu64 ",\n"
                 "  \"raw_bytes\": %" PRIu64 ",\n"
                 "  \"stored_bytes\": %" PRIu64 ",\n"
                 "  \"dedup_ratio\": %s,\n"
                 "  \"compression_ratio\": %s,\n"
                 "  \"nonzero_bytes\": %" PRIu64 ",\n"
                 "  \"map_nodes\": %" PRIu64 ",\n"
                 "  \"generation\": %" PRIu64 ",\n"
                 "  \"root\": \"%s\"\n}\n",
                 vs.size, bs, vs.blocks, vs.mapped_blocks, vs.mapped_bytes,
                 unique, rs.data_chunks, rs.raw_bytes, rs.stored_bytes,
                 ratio (rs.nonzero_bytes, rs.raw_bytes, true, r1),
                 ratio (rs.raw_bytes, rs.stored_bytes, true, r2),
                 rs.nonzero_bytes, vs.map_nodes, vs.generation, hex);
    return 0;
  }
  tool_printf ("%-15s %s\n", strchr (name, '@') ? "snapshot:" : "volume:",
               name);
  tool_printf ("size:           %s\n", bytes (vs.size, b, sizeof b));
  tool_printf ("block size:     %s\n", bytes (bs, b, sizeof b));
  tool_printf ("blocks:         %" PRIu64 "\n", vs.blocks);
  tool_printf ("mapped blocks:  %" PRIu64 " (%.1f%%)\n", vs.mapped_blocks,
               vs.blocks ? 100.0 * vs.mapped_blocks / vs.blocks : 0);
  tool_printf ("mapped bytes:   %s\n", bytes (vs.mapped_bytes, b, sizeof b));
  tool_printf ("%s    %" PRIu64 " distinct: %s raw, %s stored\n",
               extents_of (st) ? "units:      " : "data chunks:",
               rs.data_chunks, bytes (rs.raw_bytes, b, sizeof b),
               bytes (rs.stored_bytes, b2, sizeof b2));
  if (extents_of (st))
    tool_printf ("non-zero bytes: %s\n", bytes (rs.nonzero_bytes, b,
                                                sizeof b));
  tool_printf ("dedup ratio:    %s\n",
               ratio (rs.nonzero_bytes, rs.raw_bytes, false, r1));
  tool_printf ("compress ratio: %s\n",
               ratio (rs.raw_bytes, rs.stored_bytes, false, r2));
  tool_printf ("unique bytes:   %s (only this references them)\n",
               bytes (unique, b, sizeof b));
  tool_printf ("map nodes:      %" PRIu64 "\n", vs.map_nodes);
  tool_printf ("generation:     %" PRIu64 "\n", vs.generation);
  tool_printf ("root:           %s\n", cas_hash_is_zero (&vs.root)
               ? "(empty)" : hex);
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
