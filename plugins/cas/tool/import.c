/* nbdcas import STORE VOLUME IMAGE [--create] [--size SIZE] [--threads N]
 *
 * Copies a raw image (a file or a block device) into a volume.  The store
 * deduplicates (each block is hashed and stored at most once); here we
 * make the copy cheap where the image is empty:
 *  - holes (SEEK_DATA / SEEK_HOLE) are never read;
 *  - blocks that read back as all zeros are never written: in a fresh
 *    volume they are already unmapped, in an existing one they are
 *    unmapped with cas_volume_zero (which stores nothing);
 *  - the image is read in large chunks (CHUNK bytes) by a few worker
 *    threads, each hashing its own blocks (cas_volume_write hashes in the
 *    calling thread, outside the store's locks), so hashing runs on
 *    several cores at once.
 * At the end the volume is flushed: when import returns 0 the data is
 * durable.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "cleanup.h"
#include "nbdcas.h"

/* Work unit: a multiple of every block size (<= 1 MiB), large enough
 * that per-unit overhead (lseek, pread syscalls) vanishes.
 */
#define CHUNK (8u * 1024 * 1024)

struct import {
  struct cas_volume *vol;
  int fd;
  const char *image;
  uint64_t image_size;
  uint32_t bs;
  bool fresh;                   /* volume was all zero before: skip zeros */
  bool seek_data;               /* SEEK_DATA works on this fd */
  _Atomic uint64_t data_blocks, zero_blocks, hole_blocks;
  _Atomic int store_errno;      /* the first failure writing the store */
};

static void
help (void)
{
  tool_printf ("Usage: %s import STORE VOLUME IMAGE [--create] [--size SIZE] "
          "[--threads N]\n"
          "Copy the raw image IMAGE (a file or block device) into VOLUME.\n"
          "Identical blocks are stored once; zero blocks and holes are not\n"
          "stored at all.  The volume is flushed (durable) before exit.\n"
          "\n"
          "  -c, --create          create VOLUME (it must not exist), sized "
          "to\n"
          "                        the image (or --size); without it, VOLUME "
          "must\n"
          "                        exist and is grown if the image is larger\n"
          "  -s, --size SIZE       with --create: the volume size (at least "
          "the\n"
          "                        image's)\n"
          "  -j, --threads N       hashing threads (default: %u here)\n"
          "  -v, --verbose         print a summary (and the store's debug "
          "messages)\n"
          "  -h, --help            this help\n"
          "A progress bar is shown on stderr when it is a terminal.\n",
          tool_name, default_threads ());
}

/* Read exactly len bytes at off (the image must not shrink meanwhile). */
static int
read_full (struct import *im, uint8_t *buf, size_t len, uint64_t off)
{
  while (len > 0) {
    ssize_t n = pread (im->fd, buf, len, off);
    if (n == -1) {
      if (errno == EINTR)
        continue;
      tool_error ("%s: read at offset %" PRIu64 ": %m", im->image, off);
      return -1;
    }
    if (n == 0) {
      tool_error ("%s: unexpected end of file at offset %" PRIu64
                  " (did the image shrink?)", im->image, off);
      errno = EIO;
      return -1;
    }
    buf += n;
    len -= n;
    off += n;
  }
  return 0;
}

/* What one SEEK_DATA / SEEK_HOLE pair said: [from, data) is a hole and
 * [data, hole) is data.  Kept per worker and reused while chunks fall
 * inside it: on some file systems (tmpfs) SEEK_HOLE walks the page cache
 * up to the next hole, which in a dense image is the end of the file --
 * asking again for every chunk would make the import quadratic.
 */
struct seg {
  uint64_t from, data, hole;    /* all 0: nothing known yet */
};

/* Each thread's own (progress_run_chunks allocates it, zeroed). */
struct scratch {
  uint8_t buf[CHUNK];
  bool isdata[CHUNK / CAS_MIN_BLOCKSIZE];
  struct seg sg;
};

static int
seek_seg (struct import *im, uint64_t pos, struct seg *sg)
{
  off_t d, h;

  d = lseek (im->fd, pos, SEEK_DATA);
  if (d == -1) {
    if (errno != ENXIO) {
      tool_error ("%s: lseek SEEK_DATA: %m", im->image);
      return -1;
    }
    d = im->image_size;         /* only a hole up to EOF */
  }
  if ((uint64_t) d >= im->image_size)
    h = d = im->image_size;
  else {
    h = lseek (im->fd, d, SEEK_HOLE);
    if (h == -1) {
      tool_error ("%s: lseek SEEK_HOLE: %m", im->image);
      return -1;
    }
    if ((uint64_t) h > im->image_size || h <= d)
      h = im->image_size;
  }
  *sg = (struct seg) { .from = pos, .data = d, .hole = h };
  return 0;
}

/* Mark isdata[i] for each block of [off, off+len) that holds any data
 * according to SEEK_DATA/SEEK_HOLE (everything, if unsupported).
 */
static int
map_chunk (struct import *im, uint64_t off, uint64_t len, bool *isdata,
           uint64_t nb, struct seg *sg)
{
  uint64_t end = off + len, pos = off, i;

  if (!im->seek_data) {
    for (i = 0; i < nb; i++)
      isdata[i] = true;
    return 0;
  }
  memset (isdata, 0, nb * sizeof *isdata);
  while (pos < end) {
    uint64_t d, h, b0, b1;

    if (pos < sg->from || pos >= sg->hole) {
      if (seek_seg (im, pos, sg) == -1)
        return -1;
    }
    d = sg->data > pos ? sg->data : pos;
    if (d >= end)
      break;
    h = sg->hole < end ? sg->hole : end;
    /* Whole blocks touched by [d, h). */
    b0 = (d - off) / im->bs;
    b1 = (h - off + im->bs - 1) / im->bs;
    for (i = b0; i < b1 && i < nb; i++)
      isdata[i] = true;
    pos = h;
  }
  return 0;
}

/* Write [off, off+len) as data (buf) or as zeros (buf NULL). */
static int
emit (struct import *im, const uint8_t *buf, uint64_t len, uint64_t off)
{
  if (buf)
    return cas_volume_write (im->vol, buf, len, off, false);
  if (im->fresh)                /* already unmapped: nothing to do */
    return 0;
  return cas_volume_zero (im->vol, len, off, false);
}

static int
import_chunk (void *arg, void *scratch, uint64_t off, uint64_t len)
{
  struct import *im = arg;
  uint8_t *buf = ((struct scratch *) scratch)->buf;
  bool *isdata = ((struct scratch *) scratch)->isdata;
  struct seg *sg = &((struct scratch *) scratch)->sg;
  uint64_t nb = (len + im->bs - 1) / im->bs, i, run_start = 0;
  uint64_t ndata = 0, nzero = 0, nhole = 0;
  int run_kind = -1;            /* -1 none, 0 zeros, 1 data */

  if (map_chunk (im, off, len, isdata, nb, sg) == -1)
    return -1;
  /* Read each run of data blocks with one pread. */
  for (i = 0; i < nb; ) {
    uint64_t j = i, s, e;
    if (!isdata[i]) {
      i++;
      continue;
    }
    while (j < nb && isdata[j])
      j++;
    s = i * im->bs;
    e = j * im->bs < len ? j * im->bs : len;
    if (read_full (im, buf + s, e - s, off + s) == -1)
      return -1;
    i = j;
  }
  /* Classify blocks, emitting maximal runs of data / zeros. */
  for (i = 0; i <= nb; i++) {
    int kind = -1;
    uint64_t s, e;

    if (i < nb) {
      uint64_t blen = (i + 1) * im->bs <= len ? im->bs : len - i * im->bs;
      if (!isdata[i]) {
        kind = 0;
        nhole++;
      }
      else if (cas_is_zero (buf + i * im->bs, blen)) {
        kind = 0;
        nzero++;
      }
      else {
        kind = 1;
        ndata++;
      }
      if (kind == run_kind)
        continue;
    }
    if (run_kind != -1) {
      s = run_start * im->bs;
      e = i * im->bs < len ? i * im->bs : len;
      if (emit (im, run_kind ? buf + s : NULL, e - s, off + s) == -1) {
        int expected = 0;
        atomic_compare_exchange_strong (&im->store_errno, &expected,
                                        errno ? errno : EIO);
        return -1;
      }
    }
    run_kind = kind;
    run_start = i;
  }
  atomic_fetch_add (&im->data_blocks, ndata);
  atomic_fetch_add (&im->zero_blocks, nzero);
  atomic_fetch_add (&im->hole_blocks, nhole);
  return 0;
}

/* Size of an image: a regular file or a block device (seekable). */
static int
image_size (int fd, const char *image, uint64_t *size)
{
  struct stat sb;
  off_t end;

  if (fstat (fd, &sb) == -1) {
    tool_error ("%s: %m", image);
    return -1;
  }
  if (S_ISREG (sb.st_mode)) {
    *size = sb.st_size;
    return 0;
  }
  if (!S_ISBLK (sb.st_mode)) {
    tool_error ("%s: not a regular file or block device", image);
    errno = EINVAL;
    return -1;
  }
  end = lseek (fd, 0, SEEK_END);
  if (end == -1) {
    tool_error ("%s: cannot find its size: %m", image);
    return -1;
  }
  *size = end;
  return 0;
}

/* After a failed import: say why (a full disk, plainly), what the volume
 * holds now, and how to finish.  What was written before the failure is
 * kept if it can still be flushed.
 */
static void
import_failed (struct import *im, const char *dir, const char *name,
               bool create)
{
  int err = atomic_load (&im->store_errno);
  char why[128];

  if (err == ENOSPC || err == EDQUOT)
    snprintf (why, sizeof why, "the disk holding the store is full");
  else if (err)
    snprintf (why, sizeof why, "writing the store failed: %s",
              strerror (err));
  else
    snprintf (why, sizeof why, "reading the image failed");
  if (cas_volume_flush (im->vol) == 0)
    tool_error ("import into volume '%s' stopped: %s.  What was imported "
                "before that is kept (durable); the rest of the volume %s.  "
                "To finish, make room if needed and run again: %s import "
                "%s %s %s", name, why,
                create ? "reads as zeros" : "still holds its old data",
                tool_name, dir, name, im->image);
  else
    tool_error ("import into volume '%s' stopped: %s.  Nothing of this "
                "import could be kept: the volume is as it was before%s.  "
                "Make room and run again: %s import %s %s %s", name, why,
                create ? " (empty)" : "", tool_name, dir, name, im->image);
}

int
cmd_import (int argc, char **argv)
{
  static const struct option long_options[] = {
    { "create", no_argument, NULL, 'c' },
    { "size", required_argument, NULL, 's' },
    { "threads", required_argument, NULL, 'j' },
    TOOL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  const char *dir, *name, *image;
  bool create = false, have_size = false;
  uint64_t size = 0, vol_size, nchunks;
  unsigned nthreads = default_threads ();
  CLEANUP_CLOSE int fd = -1;
  struct cas_store *st = NULL;
  struct import im;
  struct cas_store_stats before, after;
  double t0, t1;
  int c, e, ret = EXIT_FAIL;

  memset (&im, 0, sizeof im);
  while ((c = tool_getopt (argc, argv, "import", "chj:s:v", long_options,
                           help, &ret)) > 0) {
    switch (c) {
    case 'c':
      create = true;
      break;
    case 'j':
      if (tool_parse_threads (optarg, &nthreads) == -1)
        return usage_error ("import");
      break;
    case 's':
      if (tool_parse_size ("--size", optarg, &size) == -1)
        return usage_error ("import");
      have_size = true;
      break;
    }
  }
  if (c == -1)
    return ret;
  if (want_args ("import", argc, argv, optind, 3, "STORE VOLUME IMAGE") == -1)
    return usage_error ("import");
  dir = argv[optind];
  name = argv[optind + 1];
  image = argv[optind + 2];
  if (have_size && !create) {
    tool_error ("import: --size only applies with --create (an existing "
                "volume keeps its size, or grows to the image's)");
    return usage_error ("import");
  }
  if (tool_check_name (name, false) == -1)
    return usage_error ("import");
  if (tool_remote ()) {
    /* A server holds the store and serves its volumes: two writers of
     * one volume would lose writes, and the server's clients must see
     * what is written.
     */
    tool_error ("import: store %s is being served: write the image into "
                "the volume through NBD instead (for example: nbdcopy %s "
                "'nbd+unix:///%s?socket=SOCKET'), or stop the server first",
                dir, image, name);
    return EXIT_FAIL;
  }

  /* The image first: a typo there should not touch the store. */
  fd = open (image, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    tool_error ("%s: %m", image);
    return EXIT_FAIL;
  }
  if (image_size (fd, image, &im.image_size) == -1)
    return EXIT_FAIL;
  if (im.image_size > CAS_MAX_VOLUME_SIZE) {
    tool_error ("%s: %" PRIu64 " bytes is larger than the largest volume "
                "(1 PiB)", image, im.image_size);
    return EXIT_FAIL;
  }
  if (have_size && size < im.image_size) {
    tool_error ("import: --size %" PRIu64 " is smaller than the image "
                "(%" PRIu64 " bytes)", size, im.image_size);
    return usage_error ("import");
  }
  vol_size = have_size ? size : im.image_size;
  if (create && vol_size == 0) {
    tool_error ("%s is empty: a new volume needs a size (use --size)",
                image);
    return EXIT_FAIL;
  }
  posix_fadvise (fd, 0, 0, POSIX_FADV_SEQUENTIAL);

  st = tool_open_store (dir, false, CAS_VERIFY_CHECKSUM);
  if (st == NULL)
    goto out;
  e = cas_volume_exists (st, name);
  if (e == -1)
    goto out;
  if (create && e == 1) {
    tool_error ("volume '%s' already exists in %s (import into it without "
                "--create)", name, dir);
    goto out;
  }
  if (!create && e == 0) {
    tool_error ("no volume '%s' in %s (add --create to create it)", name,
                dir);
    goto out;
  }
  {
    uint64_t old;
    char a[HUMAN_SIZE_LEN], b[HUMAN_SIZE_LEN];

    if (cas_volume_grow_to (st, name, create ? vol_size : im.image_size,
                            create, &old) == -1)
      goto out;
    im.fresh = create;
    if (!create && old < im.image_size)
      tool_info ("volume '%s' grown from %s to %s to fit the image", name,
                 human_size (old, a), human_size (im.image_size, b));
  }
  im.vol = cas_volume_open (st, name);
  if (im.vol == NULL)
    goto out;
  if (!create) {
    /* An existing volume has no mapped block past its root's size, but
     * it may have mapped ones anywhere inside: a fresh import must not
     * leave old data in holes, unless nothing is mapped at all.
     */
    struct cas_volume_stats vs;
    if (cas_volume_stat (im.vol, &vs) == -1)
      goto out;
    im.fresh = vs.mapped_blocks == 0;
  }

  im.fd = fd;
  im.image = image;
  im.bs = cas_volume_blocksize (im.vol);
  nchunks = (im.image_size + CHUNK - 1) / CHUNK;
  /* Probe SEEK_DATA once: some file systems and devices lack it. */
  im.seek_data = true;
  if (im.image_size > 0 && lseek (fd, 0, SEEK_DATA) == -1 &&
      errno != ENXIO) {
    backend_debug ("%s: no SEEK_DATA (%m): reading everything", image);
    im.seek_data = false;
  }
  if (nthreads > nchunks && nchunks > 0)
    nthreads = nchunks;         /* the summary says how many ran */
  if (cas_store_stat (st, &before) == -1)
    goto out;

  t0 = now_seconds ();
  if (progress_run_chunks (&(struct chunk_job) {
        .cmd = "import", .label = "importing", .size = im.image_size,
        .chunk = CHUNK, .nthreads = nthreads,
        .scratch_size = sizeof (struct scratch),
        .fn = import_chunk, .arg = &im }) == -1) {
    import_failed (&im, dir, name, create);
    goto out;
  }
  /* Past the image, an older and larger volume must read as zeros. */
  if (!im.fresh && cas_volume_size (im.vol) > im.image_size &&
      cas_volume_zero (im.vol, cas_volume_size (im.vol) - im.image_size,
                       im.image_size, false) == -1)
    goto out;
  if (cas_volume_flush (im.vol) == -1) {
    tool_error ("import: flushing volume '%s' failed: the import is not "
                "durable", name);
    goto out;
  }
  t1 = now_seconds ();
  if (cas_store_stat (st, &after) == -1)
    goto out;

  if (tool_verbose || isatty (fileno (tool_stderr ()))) {
    char a[HUMAN_SIZE_LEN], b[HUMAN_SIZE_LEN];
    double secs = t1 - t0 > 1e-6 ? t1 - t0 : 1e-6;
    uint64_t grown = after.chunks.stored_bytes - before.chunks.stored_bytes;
    tool_info ("imported %s into volume '%s': %s in %.2f s (%.1f MB/s, "
               "%u threads)", image, name, human_size (im.image_size, a),
               secs, im.image_size / secs / 1e6, nthreads);
    tool_info ("blocks: %" PRIu64 " data, %" PRIu64 " zero, %" PRIu64
               " in holes; store grew by %s (%" PRIu64 " new chunks)",
               atomic_load (&im.data_blocks), atomic_load (&im.zero_blocks),
               atomic_load (&im.hole_blocks), human_size (grown, b),
               after.chunks.appended - before.chunks.appended);
  }
  ret = EXIT_OK;
 out:
  if (im.vol)
    cas_volume_close (im.vol);
  if (tool_close_store (st) == -1)
    ret = EXIT_FAIL;
  return ret;
}
