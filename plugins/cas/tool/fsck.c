/* nbdcas fsck STORE [--full] [--repair]
 *
 * Trusts nothing but the packs: the index is rebuilt from them (the index
 * cache is only checked, and said to be usable or not).  Then:
 *  1. every record in every pack: CRC32C of header and payload (--full:
 *     and the payload's SHA-256 against the name in its header);
 *  2. every volume: walk its committed map tree from the root; every map
 *     node and every data chunk it references must be present and read
 *     back verified (CRC32C; --full: SHA-256).  What cannot be read is
 *     lost data: reported per volume as block and byte ranges.
 * A damaged record that no volume lost data from (a torn or failed
 * append after a crash, or an unused old chunk) is listed but is not a
 * problem; every volume that lost data is.
 *
 * Format 4: a block's slot is a descriptor of unit references; each
 * must decode, and every unit it references must read back from its
 * extent (CRC32C; --full: SHA-256 against the slot table).  A block that
 * does not is lost data, named with its extent (and that extent's
 * record by pack and offset when the record is damaged).
 *
 * --repair (needs the store to itself): a torn tail is cut (the open
 * does it), damaged records are dropped from the index so that another
 * intact copy of the same chunk is used if there is one, and so that
 * writing the same data again stores a good copy; the index cache is
 * rewritten; the volumes are checked again and what is still lost is
 * listed.  In a format-4 store units are referenced by extent id, not by
 * content, so no other copy can stand in for a damaged extent: --repair
 * reports them and changes nothing about them.
 *
 * Exit: 0 no volume lost data, 1 some did, 2 the check itself could not
 * run (no store, wrong version, store busy, I/O error while checking).
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "extent.h"
#include "format.h"             /* CAS_MAP_FANOUT: blocks per map leaf */
#include "nbdcas.h"
#include "vector.h"

/* Damaged records remembered in detail (more are counted). */
#define MAX_DAMAGED 100000

struct damaged {
  struct cas_record_info info;  /* problem: NULL (see why) */
  char why[128];
  uint64_t eid;                 /* an extent record's id, else 0 */
};

/* A run of lost blocks of one volume, merged while it grows. */
struct lost_run {
  bool open;
  uint64_t first, last;         /* blocks */
  int level;
  char what[1200];              /* cause, with the first chunk and detail */
};

DEFINE_VECTOR_TYPE (hash_vector, struct cas_hash);
DEFINE_VECTOR_TYPE (eid_vector, uint64_t);

struct fsck {
  struct cas_store *st;
  bool full, repair, quiet;
  bool failed;                  /* some check could not run */
  uint64_t nblocks;             /* of the volume being checked */
  uint32_t bs;
  const char *volume;           /* being checked */
  uint64_t vol_lost;            /* blocks lost in this volume */
  uint64_t lost_blocks, bad_volumes, volumes, lost_volumes;
  struct lost_run run;
  struct damaged *damaged;
  size_t ndamaged;
  struct damaged **by_hash;     /* damaged records with a hash, sorted */
  size_t nby_hash;
  struct damaged **by_eid;      /* damaged extent records, by id */
  size_t nby_eid;
  uint64_t damaged_total;
  hash_vector lost;             /* hashes volumes could not read */
  eid_vector lost_extents;      /* extents volumes could not read */
  char msg[1024];               /* the store's last message (captured) */
};

static void
help (void)
{
  tool_printf ("Usage: %s fsck STORE [--full] [--repair]\n"
          "Check STORE: every record's checksums, and that every block of\n"
          "every volume resolves to a readable chunk.  Lost data is named by\n"
          "volume, block and byte range; damaged records by pack and offset.\n"
          "\n"
          "  --full                also re-hash every chunk with SHA-256\n"
          "  --repair              cut torn tails, stop using damaged records\n"
          "                        (another good copy is used if there is "
          "one),\n"
          "                        rewrite the index cache, then check the\n"
          "                        volumes again (needs the store to itself)\n"
          "  -v, --verbose         say what is being checked\n"
          "  -h, --help            this help\n"
          "Exit status: 0 no volume lost data, 1 some did, 2 could not "
          "check.\n", tool_name);
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
  switch ((int) t) {
  case CAS_CHUNK_DATA: return "data";
  case CAS_CHUNK_MAPNODE: return "map node";
  case CAS_RECORD_TABLE: return "piece table of data";
  case CAS_RECORD_EXTENT: return "extent";
  default: return "unknown";
  }
}

/* Pass 1: remember each damaged record; it is printed once pass 2 has
 * said whether any volume lost data from it.
 */
static int
note_damaged (const struct cas_record_info *ri, void *opaque)
{
  struct fsck *f = opaque;
  struct damaged *d;

  if (ri->status == 0)
    return 0;
  f->damaged_total++;
  if (f->ndamaged == MAX_DAMAGED)
    return 0;
  if (f->damaged == NULL) {
    f->damaged = calloc (MAX_DAMAGED, sizeof *f->damaged);
    if (f->damaged == NULL)
      return -1;
  }
  d = &f->damaged[f->ndamaged++];
  d->info = *ri;
  d->eid = 0;
  if ((int) ri->type == CAS_RECORD_EXTENT) {
    struct cas_extent_fields ef;
    if (cas_extent_fields_decode (&ri->hash, &ef) == 0)
      d->eid = ef.eid;
  }
  snprintf (d->why, sizeof d->why, "%s", ri->problem ? ri->problem
            : "damaged");
  d->info.problem = NULL;
  return 0;
}

static int
cmp_damaged_eid (const void *a, const void *b)
{
  const struct damaged *x = *(struct damaged *const *) a;
  const struct damaged *y = *(struct damaged *const *) b;

  return x->eid < y->eid ? -1 : x->eid > y->eid;
}

static int
cmp_damaged (const void *a, const void *b)
{
  const struct damaged *x = *(struct damaged *const *) a;
  const struct damaged *y = *(struct damaged *const *) b;

  return memcmp (x->info.hash.b, y->info.hash.b, CAS_HASH_SIZE);
}

/* After pass 1: the damaged records by hash, so that a block the volume
 * check finds "missing" (a damaged record is not indexed) can be named
 * as damaged, with where.
 */
static int
sort_damaged (struct fsck *f)
{
  size_t i;

  f->by_hash = malloc ((f->ndamaged + 1) * sizeof *f->by_hash);
  f->by_eid = malloc ((f->ndamaged + 1) * sizeof *f->by_eid);
  if (f->by_hash == NULL || f->by_eid == NULL)
    return -1;
  /* An extent is referenced by its id, not its hash field. */
  for (i = 0; i < f->ndamaged; i++)
    if (f->damaged[i].eid)
      f->by_eid[f->nby_eid++] = &f->damaged[i];
  qsort (f->by_eid, f->nby_eid, sizeof *f->by_eid, cmp_damaged_eid);
  /* A piece table names the chunk it describes, but is not it: a bad
   * table never loses data (reads check the whole record instead).
   */
  for (i = 0; i < f->ndamaged; i++)
    if (!cas_hash_is_zero (&f->damaged[i].info.hash) &&
        (int) f->damaged[i].info.type != CAS_RECORD_TABLE &&
        (int) f->damaged[i].info.type != CAS_RECORD_EXTENT)
      f->by_hash[f->nby_hash++] = &f->damaged[i];
  qsort (f->by_hash, f->nby_hash, sizeof *f->by_hash, cmp_damaged);
  return 0;
}

static const struct damaged *
find_damaged (const struct fsck *f, const struct cas_hash *h)
{
  struct damaged key, *kp = &key, *const *r;

  if (f->nby_hash == 0)
    return NULL;
  key.info.hash = *h;
  r = bsearch (&kp, f->by_hash, f->nby_hash, sizeof *f->by_hash,
               cmp_damaged);
  return r ? *r : NULL;
}

static const struct damaged *
find_damaged_extent (const struct fsck *f, uint64_t eid)
{
  struct damaged key, *kp = &key, *const *r;

  if (f->nby_eid == 0)
    return NULL;
  key.eid = eid;
  r = bsearch (&kp, f->by_eid, f->nby_eid, sizeof *f->by_eid,
               cmp_damaged_eid);
  return r ? *r : NULL;
}

static int
remember_lost (struct fsck *f, const struct cas_hash *h)
{
  return hash_vector_append (&f->lost, *h);
}

static bool
extent_was_lost (const struct fsck *f, uint64_t eid)
{
  size_t i;

  for (i = 0; i < f->lost_extents.len; i++)
    if (f->lost_extents.ptr[i] == eid)
      return true;
  return false;
}

static bool
was_lost (const struct fsck *f, const struct cas_hash *h)
{
  size_t i;

  for (i = 0; i < f->lost.len; i++)
    if (cas_hash_equal (&f->lost.ptr[i], h))
      return true;
  return false;
}

static void
print_run (struct fsck *f)
{
  struct lost_run *r = &f->run;
  uint64_t lo = r->first * f->bs, hi = (r->last + 1) * f->bs;
  char hs[HUMAN_SIZE_LEN];

  if (!r->open)
    return;
  r->open = false;
  if (f->quiet)
    return;
  if (r->first == r->last)
    tool_printf ("volume '%s' block %" PRIu64 " (bytes %" PRIu64 "-%" PRIu64
            "): lost: %s\n", f->volume, r->first, lo, hi - 1, r->what);
  else
    tool_printf ("volume '%s' blocks %" PRIu64 "-%" PRIu64 " (bytes %" PRIu64
            "-%" PRIu64 ", %s): lost: %s\n", f->volume, r->first, r->last,
            lo, hi - 1, human_size (hi - lo, hs), r->what);
}

/* Pass 2: one unreadable reference, a block or a whole map subtree. */
static int
bad_ref (const struct cas_volume_problem *p, void *opaque)
{
  struct fsck *f = opaque;
  char hex[2 * CAS_HASH_SIZE + 1], d[1100], what[1200], cause[64];
  const struct damaged *dmg = p->extent ? find_damaged_extent (f, p->extent)
    : find_damaged (f, &p->hash);
  const char *why = p->what;
  uint64_t span = 1, first, last;
  int i;

  if (p->extent) {
    if (!extent_was_lost (f, p->extent) &&
        eid_vector_append (&f->lost_extents, p->extent) == -1)
      return -1;
  }
  else if (remember_lost (f, &p->hash) == -1)
    return -1;
  /* A node at height L (1 = leaf) covers fanout^L blocks. */
  for (i = 0; i < p->level && span < (UINT64_C (1) << 50); i++)
    span *= CAS_MAP_FANOUT;
  first = p->index * span;
  last = first + span - 1;
  if (last >= f->nblocks)
    last = f->nblocks - 1;
  f->vol_lost += last - first + 1;

  cas_hash_hex (&p->hash, hex);
  /* The store's message usually names the chunk already. */
  detail (f, d, sizeof d);
  if (dmg) {
    /* Not indexed because it is damaged: say so, and where. */
    why = p->extent ? "extent is damaged"
      : p->level == 0 ? "data chunk is damaged" : "map node is damaged";
    snprintf (d, sizeof d, " (pack %" PRIu32 " offset %" PRIu64 ": %s)",
              dmg->info.pack, dmg->info.offset, dmg->why);
  }
  else if (d[0] && strstr (d, hex))
    hex[0] = '\0';
  if (p->extent)
    /* Format 4: the slot holds a descriptor, not a chunk's name. */
    snprintf (what, sizeof what, "%s: extent %" PRIu64 "%s", why,
              p->extent, d);
  else if (p->level == 0 && cas_store_format_version (f->st) >=
           CAS_FORMAT_VERSION_UNITS)
    snprintf (what, sizeof what, "%s: %s%s", why, hex, d);
  else if (p->level == 0)
    snprintf (what, sizeof what, "%s%s%s%s", why,
              hex[0] ? ": chunk " : "", hex, d);
  else {
    snprintf (cause, sizeof cause, " (map node level %d index %" PRIu64 ")",
              p->level, p->index);
    snprintf (what, sizeof what, "%s%s%s%s%s", why, cause,
              hex[0] ? ": chunk " : "", hex, d);
  }

  /* Extend the open run if this continues it with the same cause. */
  if (f->run.open && f->run.last + 1 == first && f->run.level == p->level &&
      strncmp (f->run.what, why, strlen (why)) == 0) {
    f->run.last = last;
    return 0;
  }
  print_run (f);
  f->run.open = true;
  f->run.first = first;
  f->run.last = last;
  f->run.level = p->level;
  snprintf (f->run.what, sizeof f->run.what, "%s", what);
  return 0;
}

static int
check_volume (const char *name, void *opaque)
{
  struct fsck *f = opaque;
  struct cas_volume *vol;
  char d[1100], hs[HUMAN_SIZE_LEN];
  int r;

  f->volumes++;
  f->msg[0] = '\0';
  if (tool_verbose && !f->quiet)
    tool_info ("checking volume '%s'", name);
  vol = cas_volume_open (f->st, name);
  if (vol == NULL) {
    /* A root file that cannot be read is lost data, not a failed check. */
    if (!f->quiet)
      tool_printf ("volume '%s': lost: its root cannot be read%s\n", name,
              detail (f, d, sizeof d));
    f->bad_volumes++;
    return 0;
  }
  f->nblocks = cas_volume_nblocks (vol);
  f->bs = cas_volume_blocksize (vol);
  f->volume = name;
  f->vol_lost = 0;
  r = cas_volume_check (vol, f->full, bad_ref, f);
  print_run (f);
  cas_volume_close (vol);
  if (r == -1) {
    tool_error ("volume '%s': the check could not run%s", name,
                detail (f, d, sizeof d));
    f->failed = true;
  }
  if (f->vol_lost) {
    f->lost_volumes++;
    f->lost_blocks += f->vol_lost;
    if (!f->quiet)
      tool_printf ("volume '%s': %" PRIu64 " of %" PRIu64 " blocks lost (%s)\n",
              name, f->vol_lost, f->nblocks,
              human_size (f->vol_lost * f->bs, hs));
  }
  /* A volume's snapshots are roots too: check each (a volume shares
   * most nodes with its snapshots, so this mostly re-reads the cache).
   */
  if (strchr (name, '@') == NULL &&
      cas_store_list_snapshots (f->st, name, check_volume, f) != 0)
    f->failed = true;
  return 0;                     /* go on with the other volumes */
}

static void
print_damaged (struct fsck *f)
{
  size_t i;
  char hex[2 * CAS_HASH_SIZE + 1];

  for (i = 0; i < f->ndamaged; i++) {
    const struct cas_record_info *ri = &f->damaged[i].info;
    bool has_hash = !cas_hash_is_zero (&ri->hash);
    /* Whether a volume lost data because of it: by its hash when the
     * header says which chunk it is; a span with no readable header may
     * have held anything, so it is suspect while any volume lost data.
     */
    const char *verdict =
      (int) ri->type == CAS_RECORD_TABLE && has_hash
      ? "partial reads of the chunk check the whole record instead"
      : f->damaged[i].eid
      ? (extent_was_lost (f, f->damaged[i].eid)
         ? "volumes lost units of this extent"
         : "no volume lost data from it")
      : has_hash ? (was_lost (f, &ri->hash) ? "volumes lost this chunk"
                    : "no volume lost data from it")
      : f->lost.len || f->bad_volumes ? "it may have held the lost data listed"
      : "no volume lost data from it";

    if (f->damaged[i].eid)
      tool_printf ("pack %" PRIu32 " offset %" PRIu64 ": extent record %"
                   PRIu64 ": %s: %s\n", ri->pack, ri->offset,
                   f->damaged[i].eid, f->damaged[i].why, verdict);
    else if (!has_hash)
      tool_printf ("pack %" PRIu32 " offset %" PRIu64 ": %" PRIu32 " bytes: %s: "
              "%s\n", ri->pack, ri->offset, ri->length, f->damaged[i].why,
              verdict);
    else
      tool_printf ("pack %" PRIu32 " offset %" PRIu64 ": %s record %s: %s: %s\n",
              ri->pack, ri->offset, type_name (ri->type),
              cas_hash_hex (&ri->hash, hex), f->damaged[i].why, verdict);
  }
  if (f->damaged_total > f->ndamaged)
    tool_printf ("... and %" PRIu64 " more damaged records\n",
            f->damaged_total - f->ndamaged);
}

static void
check_volumes (struct fsck *f)
{
  tool_capture (f->msg, sizeof f->msg);
  if (cas_store_list_volumes (f->st, check_volume, f) != 0) {
    tool_capture (NULL, 0);
    tool_error ("listing the volumes failed%s%s", f->msg[0] ? ": " : "",
                f->msg);
    f->failed = true;
  }
  tool_capture (NULL, 0);
}

/* --repair: stop using every damaged record (the index then uses another
 * intact copy of the chunk if there is one), then check the volumes
 * again, quietly, to count what is still lost.
 */
static void
repair (struct fsck *f, const char *dir)
{
  struct chunkstore *cs = cas_store_chunks (f->st);
  uint64_t before = f->lost_blocks, extents = 0;
  size_t i;

  /* A RADOS store keeps one object per chunk: no other copy to fall
   * back on (a damaged object is overwritten by the next write of its
   * content, as the advice below says).
   */
  for (i = 0; i < f->ndamaged && cas_store_is_local (f->st); i++) {
    const struct cas_record_info *ri = &f->damaged[i].info;
    /* A table is never indexed (and its chunk may be intact).  An
     * extent is not named by its content: no other copy can stand in
     * for it, and the extent table never offers a damaged one for dedup
     * (extent.c checks every unit before the first use), so it is left
     * as it is, for the volumes that can still read its good units.
     */
    if ((int) ri->type == CAS_RECORD_EXTENT) {
      extents++;
      continue;
    }
    if (!cas_hash_is_zero (&ri->hash) &&
        (int) ri->type != CAS_RECORD_TABLE)
      cas_packstore_forget (cs, &ri->hash, ri->pack, ri->offset);
  }
  f->lost_blocks = f->lost_volumes = f->bad_volumes = f->volumes = 0;
  hash_vector_clear (&f->lost);
  eid_vector_clear (&f->lost_extents);
  check_volumes (f);
  tool_printf ("%s: repair: %zu damaged records no longer used; %" PRIu64
          " of %" PRIu64 " lost blocks healed from other copies\n", dir,
          f->ndamaged - extents, before - f->lost_blocks, before);
  if (extents)
    tool_printf ("%s: repair: %" PRIu64 " damaged extent record%s left as "
                 "%s: units are referenced by extent id, so no other copy "
                 "can stand in for them\n", dir, extents,
                 extents == 1 ? "" : "s", extents == 1 ? "it is" : "they are");
  if (f->lost_volumes || f->bad_volumes) {
    f->quiet = false;
    tool_printf ("%s: still lost after repair (no good copy in the store):\n",
            dir);
    f->lost_blocks = f->lost_volumes = f->bad_volumes = f->volumes = 0;
    check_volumes (f);
    tool_printf ("%s: to heal them, write the same data again (a write that "
            "finds its chunk only damaged stores a good copy): nbdcas "
            "import the original image, or restore it through NBD\n", dir);
  }
}

int
cmd_fsck (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "full", no_argument, NULL, 'F' },
    { "repair", no_argument, NULL, 'R' },
    TOOL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  struct fsck f;
  const char *dir;
  struct cas_store_stats ss;
  uint64_t problems;
  char why[512];
  int c, r, ret = EXIT_USAGE;

  memset (&f, 0, sizeof f);
  while ((c = tool_getopt (argc, argv, "fsck", "hv", long_options, help,
                           &ret)) > 0) {
    if (c == 'F')
      f.full = true;
    else if (c == 'R')
      f.repair = true;
  }
  if (c == -1)
    return ret;
  if (want_args ("fsck", argc, argv, optind, 1, "STORE") == -1)
    return usage_error ("fsck");
  dir = argv[optind];

  /* Without --repair fsck only reports: read-only (a torn tail is left
   * for the next read-write open to cut).  Either way the index is
   * rebuilt from the packs: the cache is only checked.
   */
  f.st = tool_open_store_opts (dir, !f.repair,
                               f.full ? CAS_VERIFY_FULL : CAS_VERIFY_CHECKSUM,
                               true);
  if (f.st == NULL)
    goto out;
  if (cas_store_stat (f.st, &ss) == -1)
    goto out;

  /* The index cache is the pack store's (a RADOS store has none). */
  switch (!cas_store_is_local (f.st) ? -1 :
          cas_packstore_check_cache (cas_store_chunks (f.st), why,
                                     sizeof why)) {
  case 0:
    tool_printf ("index cache: not usable (%s): it is only a cache; the next "
            "read-write open rebuilds it%s\n", why,
            f.repair ? " (--repair does now)" : "");
    break;
  case 1:
    if (tool_verbose)
      tool_info ("index cache: usable");
    break;
  }

  tool_capture (f.msg, sizeof f.msg);
  if (tool_verbose)
    tool_info ("checking %" PRIu64 " records in %" PRIu64 " packs (%s)",
               ss.chunks.chunks, ss.chunks.packs,
               f.full ? "CRC32C and SHA-256" : "CRC32C");
  r = cas_store_check_records (f.st, f.full, note_damaged, &f);
  if (r == -1) {
    tool_capture (NULL, 0);
    tool_error ("checking the pack files failed%s%s",
                f.msg[0] ? ": " : "", f.msg);
    f.failed = true;
  }
  tool_capture (NULL, 0);
  if (sort_damaged (&f) == -1) {
    tool_error ("out of memory");
    f.failed = true;
  }
  check_volumes (&f);
  print_damaged (&f);

  problems = f.lost_volumes + f.bad_volumes;
  /* The extent id reservation (FORMAT.md "Format version 4"): below an
   * id found, the next writable open could hand out an id a descriptor
   * may name; damaged, a writable open is refused.
   */
  if (cas_store_is_local (f.st)) {
    struct cas_extents *ext = cas_packstore_extents (cas_store_chunks (f.st));
    struct cas_extents_stats es;

    if (ext) {
      cas_extents_stats (ext, &es);
      if (es.ids_file == CAS_EXTENT_IDS_DAMAGED) {
        tool_printf ("%s: problem: %s/extent-ids (the extent id "
                     "reservation) is damaged: a writable open is "
                     "refused\n", dir, dir);
        problems++;
      }
      else if (es.ids_file == CAS_EXTENT_IDS_OK &&
               es.max_eid / CAS_GROUP_EXTENTS >= es.reserved_group) {
        tool_printf ("%s: problem: %s/extent-ids reserves extent groups "
                     "below %" PRIu64 " but extent %" PRIu64 " exists\n",
                     dir, dir, es.reserved_group, es.max_eid);
        problems++;
      }
    }
  }
  if (f.failed)
    tool_printf ("%s: check incomplete: %" PRIu64 " volume%s lost data so far\n",
            dir, problems, problems == 1 ? "" : "s");
  else if (problems == 0) {
    char skipped[120] = "";
    if (f.damaged_total)
      snprintf (skipped, sizeof skipped, "; %" PRIu64 " damaged record%s "
                "no volume needs", f.damaged_total,
                f.damaged_total == 1 ? "" : "s");
    struct cas_extents *ext = cas_store_is_local (f.st)
      ? cas_packstore_extents (cas_store_chunks (f.st)) : NULL;
    char extents[64] = "";
    if (ext) {
      struct cas_extents_stats es;
      cas_extents_stats (ext, &es);
      snprintf (extents, sizeof extents, " and %" PRIu64 " extents",
                es.extents);
    }
    tool_printf ("%s: clean: %" PRIu64 " chunks%s in %" PRIu64 " packs, %"
                 PRIu64 " volumes checked (%s)%s\n", dir, ss.chunks.chunks,
                 extents, ss.chunks.packs, f.volumes,
                 f.full ? "checksums and SHA-256" : "checksums", skipped);
  }
  else {
    char hs[HUMAN_SIZE_LEN];
    tool_printf ("%s: %" PRIu64 " problem%s: %" PRIu64 " volume%s lost %" PRIu64
            " blocks (%s), %" PRIu64 " volume root%s unreadable, %" PRIu64
            " damaged record%s\n", dir, problems, problems == 1 ? "" : "s",
            f.lost_volumes, f.lost_volumes == 1 ? "" : "s", f.lost_blocks,
            human_size (f.lost_blocks * cas_store_blocksize (f.st), hs),
            f.bad_volumes, f.bad_volumes == 1 ? "" : "s", f.damaged_total,
            f.damaged_total == 1 ? "" : "s");
  }
  if (f.repair && !f.failed && (f.damaged_total || problems)) {
    f.quiet = true;
    repair (&f, dir);
    problems = f.lost_volumes + f.bad_volumes;
  }
  if (f.failed)
    ret = EXIT_USAGE;           /* 2: incomplete, whatever was found */
  else
    ret = problems ? EXIT_FAIL : EXIT_OK;
 out:
  if (f.st && tool_close_store (f.st) == -1 && ret == EXIT_OK)
    ret = EXIT_USAGE;
  free (f.damaged);
  free (f.by_hash);
  free (f.by_eid);
  hash_vector_reset (&f.lost);
  eid_vector_reset (&f.lost_extents);
  fflush (tool_stdout ());
  return ret;
}
