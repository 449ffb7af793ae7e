/* nbdcas fsck STORE [--full]
 *
 * Two passes, both read-only:
 *  1. every record in every pack: CRC32C of header and payload (--full:
 *     and the payload's SHA-256 against the name in its header);
 *  2. every volume: walk its committed map tree from the root; every map
 *     node and every data chunk it references must be present and read
 *     back verified (CRC32C; --full: SHA-256).
 * Each problem is one line on stdout naming where it is: "pack P offset
 * O" for a record, "volume 'V' block B" (or the map node and the blocks
 * it covers) for a reference -- so a byte flipped in a pack shows up
 * both as the damaged record and as every volume block that uses it.
 *
 * Exit: 0 clean, 1 problems found, 2 the check itself could not run
 * (no store, wrong version, store busy, I/O error while checking).
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "format.h"             /* CAS_MAP_FANOUT: blocks per map leaf */
#include "nbdcas.h"

struct fsck {
  struct cas_store *st;
  bool full;
  bool failed;                  /* some check could not run */
  uint64_t nblocks;             /* of the volume being checked */
  uint64_t bad_records, bad_refs, bad_volumes, volumes;
  uint64_t unreachable;         /* damaged, but no read can reach them */
  char msg[1024];               /* the store's last message (captured) */
};

static void
help (void)
{
  printf ("Usage: %s fsck STORE [--full]\n"
          "Check STORE: every record's checksums, and that every block of\n"
          "every volume resolves to a readable chunk.  Each problem names "
          "the\n"
          "pack and offset, or the volume and block.\n"
          "\n"
          "  --full                also re-hash every chunk with SHA-256\n"
          "  -v, --verbose         say what is being checked\n"
          "  -h, --help            this help\n"
          "Exit status: 0 clean, 1 problems found, 2 could not check.\n",
          progname);
}

/* The store's message for the problem being reported, if any. */
static const char *
detail (struct fsck *f, char *buf, size_t len)
{
  if (f->msg[0])
    snprintf (buf, len, " (%s)", f->msg);
  else
    buf[0] = '\0';
  f->msg[0] = '\0';
  return buf;
}

static const char *
type_name (enum cas_chunk_type t)
{
  switch (t) {
  case CAS_CHUNK_DATA: return "data";
  case CAS_CHUNK_MAPNODE: return "map node";
  default: return "unknown";
  }
}

static int
bad_record (const struct cas_record_info *ri, void *opaque)
{
  struct fsck *f = opaque;
  char hex[2 * CAS_HASH_SIZE + 1], d[1100];

  /* Unreachable: a failed append that could not be punched out before a
   * crash.  Nothing was acknowledged from it and no volume can read it,
   * so it is said (and left for garbage collection), not counted.
   */
  const char *tail = ri->unreachable ? " (unreachable: a failed append, "
    "never indexed; no volume uses it)" : "";

  if (ri->unreachable)
    f->unreachable++;
  else
    f->bad_records++;
  /* A record whose header is unreadable has no trustworthy hash/type. */
  if (cas_hash_is_zero (&ri->hash))
    printf ("pack %" PRIu32 " offset %" PRIu64 ": %" PRIu32 " bytes: %s%s%s\n",
            ri->pack, ri->offset, ri->length,
            ri->problem ? ri->problem : "damaged", tail,
            detail (f, d, sizeof d));
  else
    printf ("pack %" PRIu32 " offset %" PRIu64 ": %s record %s: %s%s%s\n",
            ri->pack, ri->offset, type_name (ri->type),
            cas_hash_hex (&ri->hash, hex),
            ri->problem ? ri->problem : "damaged", tail,
            detail (f, d, sizeof d));
  return 0;
}

static int
bad_ref (const struct cas_volume_problem *p, void *opaque)
{
  struct fsck *f = opaque;
  char hex[2 * CAS_HASH_SIZE + 1], d[1100];
  uint32_t bs = cas_store_blocksize (f->st);

  f->bad_refs++;
  cas_hash_hex (&p->hash, hex);
  /* The store's message usually names the chunk already. */
  detail (f, d, sizeof d);
  if (d[0] && strstr (d, hex))
    hex[0] = '\0';
  if (p->level == 0)
    printf ("volume '%s' block %" PRIu64 " (offset %" PRIu64 "): %s%s%s%s\n",
            p->volume, p->index, p->index * bs, p->what,
            hex[0] ? ": chunk " : "", hex, d);
  else {
    /* A node at height L (1 = leaf) covers fanout^L blocks. */
    uint64_t span = 1, first, last;
    int i;
    for (i = 0; i < p->level && span < (UINT64_C (1) << 50); i++)
      span *= CAS_MAP_FANOUT;
    first = p->index * span;
    last = first + span - 1;
    if (last >= f->nblocks)
      last = f->nblocks - 1;
    printf ("volume '%s' blocks %" PRIu64 "-%" PRIu64 " (map node level %d "
            "index %" PRIu64 "): %s%s%s%s\n", p->volume, first,
            last, p->level, p->index, p->what,
            hex[0] ? ": chunk " : "", hex, d);
  }
  return 0;
}

static int
check_volume (const char *name, void *opaque)
{
  struct fsck *f = opaque;
  struct cas_volume *vol;
  char d[1100];
  int r;

  f->volumes++;
  f->msg[0] = '\0';
  if (verbose)
    tool_info ("checking volume '%s'", name);
  vol = cas_volume_open (f->st, name);
  if (vol == NULL) {
    /* A root file that cannot be read is damage, not a failed check. */
    printf ("volume '%s': cannot open%s\n", name, detail (f, d, sizeof d));
    f->bad_volumes++;
    return 0;
  }
  f->nblocks = cas_volume_nblocks (vol);
  r = cas_volume_check (vol, f->full, bad_ref, f);
  cas_volume_close (vol);
  if (r == -1) {
    tool_error ("volume '%s': the check could not run%s", name,
                detail (f, d, sizeof d));
    f->failed = true;
  }
  return 0;                     /* go on with the other volumes */
}

int
cmd_fsck (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "full", no_argument, NULL, 'F' },
    TOOL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  struct fsck f;
  const char *dir;
  struct cas_store_stats ss;
  uint64_t problems;
  int c, r, ret = EXIT_USAGE;

  memset (&f, 0, sizeof f);
  while ((c = tool_getopt (argc, argv, "fsck", "hv", long_options, help,
                           &ret)) > 0) {
    if (c == 'F')
      f.full = true;
  }
  if (c == -1)
    return ret;
  if (want_args ("fsck", argc, argv, optind, 1, "STORE") == -1)
    return usage_error ("fsck");
  dir = argv[optind];

  /* Read-only: fsck reports, it never changes the store (a torn tail is
   * left for the next read-write open to cut).
   */
  f.st = tool_open_store (dir, true,
                          f.full ? CAS_VERIFY_FULL : CAS_VERIFY_CHECKSUM);
  if (f.st == NULL)
    goto out;
  if (cas_store_stat (f.st, &ss) == -1)
    goto out;

  tool_capture (f.msg, sizeof f.msg);
  if (verbose)
    tool_info ("checking %" PRIu64 " records in %" PRIu64 " packs (%s)",
               ss.chunks.chunks, ss.chunks.packs,
               f.full ? "CRC32C and SHA-256" : "CRC32C");
  r = cas_store_check_records (f.st, f.full, bad_record, &f);
  if (r == -1) {
    tool_capture (NULL, 0);
    tool_error ("checking the pack files failed%s%s",
                f.msg[0] ? ": " : "", f.msg);
    f.failed = true;
  }
  tool_capture (f.msg, sizeof f.msg);
  if (cas_store_list_volumes (f.st, check_volume, &f) != 0) {
    tool_capture (NULL, 0);
    tool_error ("listing the volumes failed%s%s", f.msg[0] ? ": " : "",
                f.msg);
    f.failed = true;
  }
  tool_capture (NULL, 0);

  problems = f.bad_records + f.bad_refs + f.bad_volumes;
  if (f.failed)
    printf ("%s: check incomplete: %" PRIu64 " problem%s found so far\n",
            dir, problems, problems == 1 ? "" : "s");
  else if (problems == 0) {
    char skipped[80] = "";
    if (f.unreachable)
      snprintf (skipped, sizeof skipped, "; %" PRIu64 " unreachable failed "
                "append%s skipped", f.unreachable,
                f.unreachable == 1 ? "" : "s");
    printf ("%s: clean: %" PRIu64 " chunks in %" PRIu64 " packs, %" PRIu64
            " volumes checked (%s)%s\n", dir, ss.chunks.chunks,
            ss.chunks.packs, f.volumes,
            f.full ? "checksums and SHA-256" : "checksums", skipped);
  }
  else
    printf ("%s: %" PRIu64 " problem%s: %" PRIu64 " damaged record%s, %"
            PRIu64 " bad reference%s in volumes, %" PRIu64 " unreadable "
            "volume%s\n", dir, problems, problems == 1 ? "" : "s",
            f.bad_records, f.bad_records == 1 ? "" : "s",
            f.bad_refs, f.bad_refs == 1 ? "" : "s",
            f.bad_volumes, f.bad_volumes == 1 ? "" : "s");
  if (f.failed)
    ret = EXIT_USAGE;           /* 2: incomplete, whatever was found */
  else
    ret = problems ? EXIT_FAIL : EXIT_OK;
 out:
  if (f.st && cas_store_close (f.st) == -1 && ret == EXIT_OK)
    ret = EXIT_USAGE;
  fflush (stdout);
  return ret;
}
