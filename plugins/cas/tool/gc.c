/* nbdcas gc STORE [--dry-run] [--max-unused PCT] [--grace SECONDS] [--json]
 *
 * Garbage collection (the store's gc.c has the protocol): mark from every
 * volume and snapshot, then remove packs that hold nothing referenced and
 * rewrite the emptiest others until what stays unreferenced is at most
 * --max-unused percent of the live data.  On a
 * served store the server runs it, while its volumes are written.  A
 * RADOS store (gc-rados.c): from any host, beside the servers; chunk
 * objects nothing references are removed if their last write is older
 * than --grace seconds.
 */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "parse.h"
#include "nbdcas.h"

#define DEFAULT_MAX_UNUSED 5
#define DEFAULT_GRACE 3600

static void
help (void)
{
  tool_printf ("Usage: %s gc STORE [--dry-run] [--max-unused PCT] "
               "[--grace SECONDS] [--json]\n"
               "Give back the space of chunks no volume or snapshot "
               "references:\n"
               "packs holding nothing referenced are removed; then the "
               "emptiest\n"
               "others are rewritten (their referenced records copied, the "
               "pack\n"
               "removed) until what is left unreferenced is at most PCT%% of "
               "the\n"
               "referenced bytes.  Safe while a server serves the store and "
               "its\n"
               "clients write (the server runs it), and if it is killed at "
               "any point.\n"
               "A store in a RADOS pool (rados:POOL[/NAMESPACE]) is collected "
               "from any\n"
               "host while servers on others write to it: chunk objects no "
               "volume or\n"
               "snapshot references are removed once their last write is "
               "older than\n"
               "the grace period.\n"
               "\n"
               "  -n, --dry-run         say what would be given back, change "
               "nothing\n"
               "  -u, --max-unused PCT  0..100, default %d\n"
               "  --grace SECONDS       RADOS: keep chunks written more "
               "recently, default %d\n"
               "  --json                print one JSON object\n"
               "  -v, --verbose         say what is being done\n"
               "  -h, --help            this help\n", tool_name,
               DEFAULT_MAX_UNUSED, DEFAULT_GRACE);
}

static void
bar (uint64_t bytes, void *opaque)
{
  progress_add (opaque, bytes);
  progress_update (opaque);
}

int
cmd_gc (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "dry-run", no_argument, NULL, 'n' },
    { "max-unused", required_argument, NULL, 'u' },
    { "grace", required_argument, NULL, 'G' },
    { "json", no_argument, NULL, 'J' },
    TOOL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  struct cas_gc_options o = { .max_unused_pct = DEFAULT_MAX_UNUSED,
                              .grace_seconds = DEFAULT_GRACE };
  struct cas_gc_stats gs;
  struct cas_store_stats ss;
  struct cas_store *st = NULL;
  const char *dir;
  bool json = false, grace_given = false, max_unused_given = false;
  char h1[HUMAN_SIZE_LEN], h2[HUMAN_SIZE_LEN], h3[HUMAN_SIZE_LEN];
  uint64_t u;
  bool rados = false;
  double t0;
  int c, ret = EXIT_FAIL;

  while ((c = tool_getopt (argc, argv, "gc", "hnu:v", long_options, help,
                           &ret)) > 0) {
    switch (c) {
    case 'n': o.dry_run = true; break;
    case 'J': json = true; break;
    case 'u':
      if (parse_uint ("--max-unused", optarg, 0, 100, &u) == -1)
        return usage_error ("gc");
      o.max_unused_pct = u;
      max_unused_given = true;
      break;
    case 'G':
      if (parse_uint ("--grace", optarg, 0, UINT32_MAX, &u) == -1)
        return usage_error ("gc");
      o.grace_seconds = u;
      grace_given = true;
      break;
    }
  }
  if (c == -1)
    return ret;
  if (want_args ("gc", argc, argv, optind, 1, "STORE") == -1)
    return usage_error ("gc");
  dir = argv[optind];

  /* A dry run writes nothing, but marks from the same roots and sees the
   * same packs, so it opens the store the same way.
   */
  st = tool_open_store (dir, false, CAS_VERIFY_CHECKSUM);
  if (st == NULL)
    goto out;
  rados = !cas_store_is_local (st);
  if (grace_given && !rados) {
    tool_error ("gc: --grace is for a store in a RADOS pool; %s is a "
                "directory", dir);
    goto out;
  }
  if (max_unused_given && rados) {
    tool_error ("gc: --max-unused is for a store in a directory (packs); "
                "a RADOS store removes each chunk object by itself");
    goto out;
  }
  if (cas_store_stat (st, &ss) == -1)
    goto out;
  o.opaque = progress_start (o.dry_run ? "gc (dry run)" : "collecting",
                             ss.chunks.stored_bytes);
  if (o.opaque)
    o.progress = bar;
  t0 = now_seconds ();
  if (cas_store_gc (st, &o, &gs) == -1) {
    progress_end (o.opaque);
    tool_error ("gc: garbage collection failed; nothing referenced was "
                "removed");
    goto out;
  }
  progress_end (o.opaque);
  if (json && rados) {
    tool_printf ("{\n  \"dry_run\": %s,\n"
                 "  \"roots\": %" PRIu64 ",\n"
                 "  \"marked_chunks\": %" PRIu64 ",\n"
                 "  \"mark_bytes\": %" PRIu64 ",\n"
                 "  \"chunks_listed\": %" PRIu64 ",\n"
                 "  \"bytes_scanned\": %" PRIu64 ",\n"
                 "  \"live_chunks\": %" PRIu64 ",\n"
                 "  \"young_chunks\": %" PRIu64 ",\n"
                 "  \"touched_chunks\": %" PRIu64 ",\n"
                 "  \"dead_chunks\": %" PRIu64 ",\n"
                 "  \"bytes_freed\": %" PRIu64 ",\n"
                 "  \"orphans_removed\": %" PRIu64 ",\n"
                 "  \"grace_seconds\": %u,\n"
                 "  \"seconds\": %.3f\n}\n",
                 o.dry_run ? "true" : "false", gs.roots, gs.marked_chunks,
                 gs.mark_bytes, gs.chunks_listed, gs.bytes_scanned,
                 gs.live_chunks, gs.young_chunks, gs.touched_chunks,
                 gs.dead_chunks, gs.bytes_freed, gs.orphans_removed,
                 o.grace_seconds, now_seconds () - t0);
  }
  else if (rados) {
    tool_printf ("%s: %s %s: %" PRIu64 " unreferenced chunk objects "
                 "removed, %" PRIu64 " kept (%" PRIu64 " written within the "
                 "grace of %u s, %" PRIu64 " written again meanwhile), %"
                 PRIu64 " orphaned volume objects removed; marked %" PRIu64
                 " chunks from %" PRIu64 " volumes and snapshots (mark set "
                 "%s); listed %" PRIu64 " chunk objects in %.2f s\n", dir,
                 o.dry_run ? "would give back" : "gave back",
                 human_size (gs.bytes_freed, h1), gs.dead_chunks,
                 gs.young_chunks + gs.touched_chunks, gs.young_chunks,
                 o.grace_seconds, gs.touched_chunks, gs.orphans_removed,
                 gs.marked_chunks, gs.roots, human_size (gs.mark_bytes, h3),
                 gs.chunks_listed, now_seconds () - t0);
  }
  else if (json) {
    tool_printf ("{\n  \"dry_run\": %s,\n"
                 "  \"roots\": %" PRIu64 ",\n"
                 "  \"marked_chunks\": %" PRIu64 ",\n"
                 "  \"mark_bytes\": %" PRIu64 ",\n"
                 "  \"packs_scanned\": %" PRIu64 ",\n"
                 "  \"bytes_scanned\": %" PRIu64 ",\n"
                 "  \"packs_deleted\": %" PRIu64 ",\n"
                 "  \"packs_rewritten\": %" PRIu64 ",\n"
                 "  \"bytes_copied\": %" PRIu64 ",\n"
                 "  \"bytes_freed\": %" PRIu64 ",\n"
                 "  \"dead_chunks\": %" PRIu64 ",\n"
                 "  \"seconds\": %.3f\n}\n",
                 o.dry_run ? "true" : "false", gs.roots, gs.marked_chunks,
                 gs.mark_bytes, gs.packs_scanned, gs.bytes_scanned,
                 gs.packs_deleted, gs.packs_rewritten, gs.bytes_copied,
                 gs.bytes_freed, gs.dead_chunks, now_seconds () - t0);
  }
  else {
    /* bytes_freed counts whole packs; what comes back on disk is that
     * less what was copied.
     */
    uint64_t net = gs.bytes_freed > gs.bytes_copied
      ? gs.bytes_freed - gs.bytes_copied : 0;
    tool_printf ("%s: %s %s: %" PRIu64 " packs removed and %" PRIu64
                 " rewritten (%s copied), %" PRIu64 " unreferenced chunks; "
                 "marked %" PRIu64 " chunks from %" PRIu64 " volumes and "
                 "snapshots (mark set %s); scanned %" PRIu64 " packs in %.2f "
                 "s\n", dir, o.dry_run ? "would give back" : "gave back",
                 human_size (net, h1), gs.packs_deleted, gs.packs_rewritten,
                 human_size (gs.bytes_copied, h2), gs.dead_chunks,
                 gs.marked_chunks, gs.roots, human_size (gs.mark_bytes, h3),
                 gs.packs_scanned, now_seconds () - t0);
  }
  ret = EXIT_OK;
 out:
  if (tool_close_store (st) == -1)
    ret = EXIT_FAIL;
  if (tool_flush_stdout () == -1)
    ret = EXIT_FAIL;
  return ret;
}
