/* Pack files: append, read, sync, scan.  See pack.h for the contract. */
#include <config.h>

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "cleanup.h"
#include "compress.h"
#include "crc32c.h"
#include "extent.h"
#include "index.h"
#include "le.h"
#include "pack.h"
#include "vector.h"

/* Reservations whose write failed and that could not be given back or
 * zeroed yet (append_lock); see release_failed.
 */
#define MAX_FAILED 8
struct span {
  uint64_t off, size;
};

struct pack {
  int fd;
  _Atomic uint64_t end;          /* bytes in use (reserved) */
  atomic_bool dirty;             /* written since the last sync */
  unsigned nfailed;              /* append_lock */
  struct span failed[MAX_FAILED];
  /* Garbage collection retires a pack (cas_packs_retire): from then on
   * no read may start on it, and its fd is closed only once the reads
   * in progress (pinned) have ended.  The struct stays until close.
   */
  atomic_uint readers;
  atomic_bool retired;
};

struct cas_packs {
  char *packdir;
  bool readonly;
  atomic_bool tables;            /* format 2: piece tables (format.h) */
  uint8_t uuid[16];
  uint64_t cap;                  /* roll over past this many bytes */
  pthread_mutex_t append_lock;   /* cur pack and its end, creation */
  bool any_failed;               /* append_lock: some pack has nfailed */
  pthread_mutex_t sync_lock;     /* one sync at a time: see cas_packs_sync */
  int sync_err;                  /* sticky: errno of a failed fdatasync */
  _Atomic uint32_t last;         /* highest pack number, 0: none */
  uint32_t sealed_below;         /* append_lock: no append to a pack with
                                    a lower number (cas_packs_seal) */
  /* Indexed by pack number; an entry is published (release) once its fd
   * is open and never changes afterwards, so readers need no lock.
   */
  struct pack *_Atomic packs[CAS_MAX_PACKS];
};

static struct pack *
get_pack (struct cas_packs *p, uint32_t id)
{
  if (id == 0 || id >= CAS_MAX_PACKS)
    return NULL;
  return atomic_load_explicit (&p->packs[id], memory_order_acquire);
}

/* A pack a read may use: pinned until unpin_pack.  NULL with errno EIO
 * if there is no such pack, ESTALE if garbage collection retired it (its
 * records were copied and the index points at the copies: look again).
 */
static struct pack *
pin_pack (struct cas_packs *p, uint32_t id)
{
  struct pack *pk = get_pack (p, id);

  if (pk == NULL) {
    errno = EIO;
    return NULL;
  }
  /* Pin, then check: cas_packs_retire marks, then waits for the pins it
   * can see (both sequentially consistent: one of us sees the other).
   */
  atomic_fetch_add (&pk->readers, 1);
  if (atomic_load (&pk->retired)) {
    atomic_fetch_sub (&pk->readers, 1);
    errno = ESTALE;
    return NULL;
  }
  return pk;
}

static void
unpin_pack (struct pack *pk)
{
  unsigned was = atomic_fetch_sub (&pk->readers, 1);

  /* An unpin without its pin would let cas_packs_retire close the fd
   * under a reader that is still in pread.
   */
  assert (was > 0);
  (void) was;
}

/* A pack that is there and not retired, or NULL. */
static struct pack *
live_pack (struct cas_packs *p, uint32_t id)
{
  struct pack *pk = get_pack (p, id);

  return pk && !atomic_load (&pk->retired) ? pk : NULL;
}

static char *
pack_path (struct cas_packs *p, uint32_t id)
{
  char *s;
  if (asprintf (&s, "%s/pack-%08" PRIu32 ".cas", p->packdir, id) == -1)
    return NULL;
  return s;
}

int
cas_fsync_dir (const char *dir)
{
  int fd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int r;

  if (fd == -1)
    return -1;
  r = fsync (fd);
  close (fd);
  return r;
}

DEFINE_VECTOR_TYPE (u32_vector, uint32_t);

static int
cmp_u32 (const void *a, const void *b)
{
  uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;
  return x < y ? -1 : x > y;
}

/* Open an existing pack file and check its header. */
static int
open_pack (struct cas_packs *p, uint32_t id, bool is_last)
{
  CLEANUP_FREE char *path = pack_path (p, id);
  uint8_t hdr[CAS_PACK_HEADER_SIZE];
  struct cas_pack_header ph;
  struct pack *pk;
  struct stat sb;
  int fd;

  if (path == NULL)
    return -1;
  fd = open (path, (p->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd == -1 || fstat (fd, &sb) == -1) {
    backend_error ("cas: open %s: %m", path);
    if (fd >= 0)
      close (fd);
    return -1;
  }
  if (sb.st_size < CAS_PACK_HEADER_SIZE ||
      pread (fd, hdr, sizeof hdr, 0) != sizeof hdr ||
      cas_pack_header_decode (hdr, &ph) == -1 || ph.pack != id) {
    /* A crash while creating the newest pack leaves a short header:
     * nothing after it can matter, rewrite it.  Elsewhere it is damage:
     * say so, but still read the records behind it.
     */
    if (is_last && !p->readonly && sb.st_size <= CAS_PACK_HEADER_SIZE) {
      struct cas_pack_header nh = { .version = CAS_PACK_VERSION, .pack = id };
      memcpy (nh.uuid, p->uuid, 16);
      cas_pack_header_encode (&nh, hdr);
      if (pwrite (fd, hdr, sizeof hdr, 0) != sizeof hdr ||
          ftruncate (fd, sizeof hdr) == -1 || fdatasync (fd) == -1) {
        backend_error ("cas: repairing header of %s: %m", path);
        close (fd);
        return -1;
      }
      sb.st_size = sizeof hdr;
    }
    else
      backend_error ("cas: %s: damaged pack header (records are still read)",
                     path);
  }
  else if (memcmp (ph.uuid, p->uuid, 16) != 0)
    /* Harmless to the data (a record is named by its content, and every
     * read checks it), but a sign that packs were copied between stores.
     */
    backend_error ("cas: %s belongs to another store (its store UUID "
                   "differs); its records are read all the same", path);
  pk = calloc (1, sizeof *pk);
  if (pk == NULL) {
    close (fd);
    return -1;
  }
  pk->fd = fd;
  pk->end = sb.st_size < CAS_PACK_HEADER_SIZE ? CAS_PACK_HEADER_SIZE
    : (uint64_t) sb.st_size;
  atomic_store_explicit (&p->packs[id], pk, memory_order_release);
  if (id > p->last)
    p->last = id;
  return 0;
}

struct cas_packs *
cas_packs_open (const char *dir, bool readonly, const uint8_t uuid[16],
                bool tables)
{
  struct cas_packs *p;
  DIR *d = NULL;
  struct dirent *de;
  u32_vector ids = empty_vector;
  size_t i;
  const char *env;

  p = calloc (1, sizeof *p);
  if (p == NULL)
    return NULL;
  pthread_mutex_init (&p->append_lock, NULL);
  pthread_mutex_init (&p->sync_lock, NULL);
  p->readonly = readonly;
  atomic_init (&p->tables, tables);
  memcpy (p->uuid, uuid, 16);
  p->cap = CAS_DEFAULT_PACK_SIZE;
  env = getenv ("NBDCAS_PACK_SIZE");
  if (env && atoll (env) >= 4096)
    p->cap = (uint64_t) atoll (env);
  if (p->cap > CAS_MAX_PACK_OFFSET / 2)
    p->cap = CAS_MAX_PACK_OFFSET / 2;
  if (asprintf (&p->packdir, "%s/packs", dir) == -1) {
    p->packdir = NULL;
    goto err;
  }
  d = opendir (p->packdir);
  if (d == NULL) {
    backend_error ("cas: %s: %m", p->packdir);
    goto err;
  }
  while ((errno = 0, de = readdir (d)) != NULL) {
    unsigned long id;
    char tail[8];
    if (sscanf (de->d_name, "pack-%8lu.ca%1s", &id, tail) != 2 ||
        strcmp (tail, "s") != 0 || id == 0)
      continue;
    if (id >= CAS_MAX_PACKS) {
      backend_error ("cas: %s/%s: pack number too large", p->packdir,
                     de->d_name);
      errno = EIO;
      goto err;
    }
    if (u32_vector_append (&ids, id) == -1)
      goto err;
  }
  if (errno) {
    backend_error ("cas: reading %s: %m", p->packdir);
    goto err;
  }
  closedir (d);
  d = NULL;
  if (ids.len > 0)
    qsort (ids.ptr, ids.len, sizeof *ids.ptr, cmp_u32);
  for (i = 0; i < ids.len; i++)
    if (open_pack (p, ids.ptr[i], i == ids.len - 1) == -1)
      goto err;
  u32_vector_reset (&ids);
  return p;

 err:
  {
    int saved = errno ? errno : EIO;
    if (d)
      closedir (d);
    u32_vector_reset (&ids);
    cas_packs_close (p);
    errno = saved;
    return NULL;
  }
}

void
cas_packs_close (struct cas_packs *p)
{
  uint32_t i;

  if (!p)
    return;
  for (i = 1; i <= p->last; i++) {
    struct pack *pk = get_pack (p, i);
    if (pk) {
      if (pk->fd >= 0)
        close (pk->fd);
      free (pk);
    }
  }
  pthread_mutex_destroy (&p->append_lock);
  pthread_mutex_destroy (&p->sync_lock);
  free (p->packdir);
  free (p);
}

/* Create pack number id; called with append_lock held (rare: once per
 * cap bytes, so the I/O under the lock is acceptable).
 */
void
cas_packs_set_tables (struct cas_packs *p)
{
  atomic_store (&p->tables, true);
}

static struct pack *
new_pack (struct cas_packs *p, uint32_t id)
{
  CLEANUP_FREE char *path = pack_path (p, id);
  struct cas_pack_header ph = { .version = CAS_PACK_VERSION, .pack = id };
  uint8_t hdr[CAS_PACK_HEADER_SIZE];
  struct pack *pk;
  int fd;

  if (path == NULL)
    return NULL;
  if (id >= CAS_MAX_PACKS) {
    backend_error ("cas: store is full (%d packs)", CAS_MAX_PACKS);
    errno = ENOSPC;
    return NULL;
  }
  memcpy (ph.uuid, p->uuid, 16);
  cas_pack_header_encode (&ph, hdr);
  fd = open (path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd == -1) {
    backend_error ("cas: create %s: %m", path);
    return NULL;
  }
  /* The header and the directory entry must be durable before any
   * record in this pack can be referenced by a published root.
   */
  if (pwrite (fd, hdr, sizeof hdr, 0) != sizeof hdr || fdatasync (fd) == -1 ||
      cas_fsync_dir (p->packdir) == -1) {
    backend_error ("cas: initialising %s: %m", path);
    close (fd);
    unlink (path);
    return NULL;
  }
  pk = calloc (1, sizeof *pk);
  if (pk == NULL) {
    close (fd);
    return NULL;
  }
  pk->fd = fd;
  pk->end = CAS_PACK_HEADER_SIZE;
  atomic_store_explicit (&p->packs[id], pk, memory_order_release);
  p->last = id;
  backend_debug ("cas: new pack %s", path);
  return pk;
}

/* Make [off, off + size) read as zeros: a hole, or written zeros where
 * the file system cannot punch holes.
 */
static int
zero_span (int fd, uint64_t off, uint64_t size)
{
  static const uint8_t zeros[65536];

  if (fallocate (fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 off, size) == 0)
    return 0;
  if (errno != EOPNOTSUPP)
    return -1;
  while (size > 0) {
    size_t n = size > sizeof zeros ? sizeof zeros : size;
    ssize_t r = pwrite (fd, zeros, n, off);
    if (r <= 0)
      return -1;
    off += r, size -= r;
  }
  return 0;
}

/* A reservation whose write failed (ENOSPC, EIO, a short write) must
 * not stay behind as garbage: scans would report a partly written record
 * in the middle of a pack as damage (fsck fails for ever after a full
 * disk).  Called with append_lock held; best effort, never fails:
 *
 * - failed spans at the end of the pack are given back (end moves down,
 *   the file is truncated), which also releases earlier failed spans
 *   that thereby became the tail;
 * - a span with later reservations behind it is punched out, so it reads
 *   as zeros: an all-zero span is an unused reservation to the scanner
 *   (FORMAT.md);
 * - if punching fails too (the disk is still failing, or the file system
 *   cannot punch holes) the span is remembered and retried on the next
 *   sync and on later failures.
 *
 * Nothing can reference a failed span (its location was never handed
 * out), so neither step races with readers.
 */
static void
release_failed (struct pack *pk, uint32_t id)
{
  uint64_t end = pk->end;
  bool moved;
  unsigned i;

  do {
    moved = false;
    for (i = 0; i < pk->nfailed; i++) {
      if (pk->failed[i].off + pk->failed[i].size == end) {
        end = pk->failed[i].off;
        pk->failed[i] = pk->failed[--pk->nfailed];
        moved = true;
        break;
      }
    }
  } while (moved);
  if (end != pk->end) {
    pk->end = end;
    /* If this fails the bytes past end are overwritten by the next
     * append, or cut as a torn tail when the store is next opened.
     */
    if (ftruncate (pk->fd, end) == -1)
      backend_debug ("cas: pack %" PRIu32 ": truncating to %" PRIu64 ": %m",
                     id, end);
  }
  for (i = 0; i < pk->nfailed; ) {
    if (zero_span (pk->fd, pk->failed[i].off, pk->failed[i].size) == 0) {
      backend_debug ("cas: pack %" PRIu32 ": failed append at %" PRIu64
                     " (%" PRIu64 " bytes) zeroed", id, pk->failed[i].off,
                     pk->failed[i].size);
      pk->failed[i] = pk->failed[--pk->nfailed];
    }
    else
      i++;
  }
}

/* pwritev the whole of iov at off.  A short write (the disk filled up
 * part way, a signal) is not an error by itself: write the rest, so that
 * the caller sees the real error (ENOSPC, EIO) if there is one.
 */
static int
write_all (int fd, struct iovec *iov, int iovcnt, uint64_t off)
{
  while (iovcnt > 0) {
    ssize_t n = pwritev (fd, iov, iovcnt, off);
    if (n == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (n == 0) {                /* should not happen for a regular file */
      errno = EIO;
      return -1;
    }
    off += n;
    while (iovcnt > 0 && (size_t) n >= iov->iov_len) {
      n -= iov->iov_len;
      iov++, iovcnt--;
    }
    if (iovcnt > 0) {
      iov->iov_base = (char *) iov->iov_base + n;
      iov->iov_len -= n;
    }
  }
  return 0;
}

/* The piece table of payload[0..length): crcs[i] is the CRC32C of piece
 * i; returns the CRC32C of the whole payload, combined from them (one
 * pass over the data for both).
 */
static uint32_t
piece_crcs (const uint8_t *payload, uint32_t length, uint8_t *table)
{
  uint32_t i, n = cas_pieces (length), whole = 0;

  for (i = 0; i < n; i++) {
    uint32_t len = i + 1 < n ? CAS_PIECE_SIZE : length - i * CAS_PIECE_SIZE;
    uint32_t c = crc32c (0, payload + (size_t) i * CAS_PIECE_SIZE, len);
    put_le32 (table + 4 * i, c);
    whole = i ? crc32c_combine (whole, c, len) : c;
  }
  return whole;
}

int
cas_packs_append (struct cas_packs *p, struct cas_record_header *h,
                  const void *payload, uint64_t *loc)
{
  static const uint8_t zeros[CAS_RECORD_ALIGN];
  uint8_t hdr[CAS_RECORD_HEADER_SIZE], thdr[CAS_RECORD_HEADER_SIZE];
  uint8_t table[4 * (CAS_MAX_PAYLOAD / CAS_PIECE_SIZE)];
  uint64_t size = cas_record_size (h->length), tsize = 0, off;
  struct iovec iov[6];
  struct pack *pk;
  uint32_t id;
  size_t pad = size - CAS_RECORD_HEADER_SIZE - h->length;
  int n = 0;

  if (p->readonly) {
    backend_error ("cas: the store is read-only");
    errno = EROFS;
    return -1;
  }
  /* A compressed record has no table: a partial read of it decompresses
   * the whole block anyway.
   */
  if (atomic_load_explicit (&p->tables, memory_order_relaxed) &&
      h->type == CAS_CHUNK_DATA && cas_wants_table (h->length) &&
      !(h->flags & CAS_RECORD_F_COMPRESSED)) {
    struct cas_record_header th = {
      .type = CAS_RECORD_TABLE, .length = 4 * cas_pieces (h->length),
      .hash = h->hash,
    };

    h->payload_crc = piece_crcs (payload, h->length, table);
    h->flags |= CAS_RECORD_F_TABLE;
    th.payload_crc = crc32c (0, table, th.length);
    cas_record_header_encode (&th, thdr);
    tsize = cas_record_size (th.length);
    iov[n++] = (struct iovec) { thdr, sizeof thdr };
    iov[n++] = (struct iovec) { table, th.length };
    if (tsize - CAS_RECORD_HEADER_SIZE - th.length)
      iov[n++] = (struct iovec) { (void *) zeros,
                                  tsize - CAS_RECORD_HEADER_SIZE - th.length };
  }
  else {
    if (h->type != CAS_RECORD_EXTENT)
      h->flags &= ~CAS_RECORD_F_TABLE;
    /* An extent's covers its slot table, whose entries cover the units. */
    h->payload_crc = crc32c (0, payload, cas_record_crc_length (h));
  }
  cas_record_header_encode (h, hdr);
  iov[n++] = (struct iovec) { hdr, sizeof hdr };
  iov[n++] = (struct iovec) { (void *) payload, h->length };
  if (pad)
    iov[n++] = (struct iovec) { (void *) zeros, pad };
  size += tsize;

  /* Reserve: the only serialised step of an append. */
  pthread_mutex_lock (&p->append_lock);
  id = p->last;
  pk = live_pack (p, id);
  if (pk == NULL || pk->end + size > p->cap || id < p->sealed_below) {
    pk = new_pack (p, id + 1);
    if (pk == NULL) {
      pthread_mutex_unlock (&p->append_lock);
      return -1;
    }
    id++;
  }
  off = pk->end;
  pk->end = off + size;
  pthread_mutex_unlock (&p->append_lock);

  if (write_all (pk->fd, iov, n, off) == -1) {
    int saved = errno;
    backend_error ("cas: writing pack %" PRIu32 " at offset %" PRIu64 ": %m",
                   id, off);
    pthread_mutex_lock (&p->append_lock);
    if (pk->nfailed < MAX_FAILED)
      pk->failed[pk->nfailed++] = (struct span) { off, size };
    else
      backend_error ("cas: pack %" PRIu32 ": too many failed appends to "
                     "clean up; the one at %" PRIu64 " stays", id, off);
    release_failed (pk, id);
    if (pk->nfailed)
      p->any_failed = true;
    pthread_mutex_unlock (&p->append_lock);
    errno = saved;
    return -1;
  }
  /* Only after the data is in the file: a sync that sees dirty == false
   * must not miss this record (see cas_packs_sync).
   */
  atomic_store (&pk->dirty, true);
  *loc = CAS_LOC (id, off + tsize);
  return 0;
}

int
cas_packs_read_header (struct cas_packs *p, uint64_t loc,
                       struct cas_record_header *h)
{
  uint8_t hdr[CAS_RECORD_HEADER_SIZE];
  uint32_t id = CAS_LOC_PACK (loc);
  uint64_t off = CAS_LOC_OFFSET (loc);
  struct pack *pk = pin_pack (p, id);
  ssize_t n;

  if (pk == NULL) {
    if (errno != ESTALE)
      backend_error ("cas: pack %" PRIu32 " is missing", id);
    return -1;
  }
  n = pread (pk->fd, hdr, sizeof hdr, off);
  unpin_pack (pk);
  if (n != sizeof hdr || cas_record_header_decode (hdr, h) == -1) {
    backend_error ("cas: pack %" PRIu32 " offset %" PRIu64
                   ": damaged record header", id, off);
    errno = EIO;
    return -1;
  }
  return 0;
}

int
cas_packs_read_prefix (struct cas_packs *p, uint64_t loc,
                       struct cas_record_header *h, void *buf, uint32_t want,
                       uint32_t *got)
{
  uint8_t hdr[CAS_RECORD_HEADER_SIZE];
  uint32_t id = CAS_LOC_PACK (loc);
  uint64_t off = CAS_LOC_OFFSET (loc);
  struct pack *pk = pin_pack (p, id);
  struct iovec iov[2];
  ssize_t n;

  if (pk == NULL) {
    if (errno != ESTALE)
      backend_error ("cas: pack %" PRIu32 " is missing", id);
    return -1;
  }
  iov[0].iov_base = hdr;
  iov[0].iov_len = sizeof hdr;
  iov[1].iov_base = buf;
  iov[1].iov_len = want;
  n = preadv (pk->fd, iov, 2, off);
  unpin_pack (pk);
  if (n < (ssize_t) sizeof hdr || cas_record_header_decode (hdr, h) == -1) {
    backend_error ("cas: pack %" PRIu32 " offset %" PRIu64
                   ": damaged record header", id, off);
    errno = EIO;
    return -1;
  }
  *got = h->length < want ? h->length : want;
  if ((uint64_t) n < sizeof hdr + *got) {
    backend_error ("cas: pack %" PRIu32 " offset %" PRIu64
                   ": record of %" PRIu32 " bytes is truncated", id, off,
                   h->length);
    errno = EIO;
    return -1;
  }
  return 0;
}

int
cas_packs_read (struct cas_packs *p, uint64_t loc,
                struct cas_record_header *h, void *buf, uint32_t bufsize)
{
  uint32_t got;

  if (cas_packs_read_prefix (p, loc, h, buf, bufsize, &got) == -1)
    return -1;
  if (h->length > bufsize) {
    backend_error ("cas: pack %" PRIu32 " offset %" PRIu64
                   ": record of %" PRIu32 " bytes is too long",
                   CAS_LOC_PACK (loc), CAS_LOC_OFFSET (loc), h->length);
    errno = EIO;
    return -1;
  }
  return 0;
}

int
cas_packs_read_table (struct cas_packs *p, uint64_t loc, uint32_t length,
                      struct cas_record_header *h, uint32_t *crcs)
{
  uint8_t buf[CAS_RECORD_HEADER_SIZE + 4 * (CAS_MAX_PAYLOAD / CAS_PIECE_SIZE)
              + CAS_RECORD_HEADER_SIZE];
  uint32_t id = CAS_LOC_PACK (loc), i, n = cas_pieces (length);
  uint64_t off = CAS_LOC_OFFSET (loc);
  uint64_t tsize = cas_table_record_size (length);
  struct pack *pk;
  struct cas_record_header th;
  const char *why;
  ssize_t r;

  if (!cas_wants_table (length) || off < CAS_PACK_HEADER_SIZE + tsize) {
    /* No table can be there: just the record header. */
    if (cas_packs_read_header (p, loc, h) == -1)
      return -1;
    return 1;
  }
  pk = pin_pack (p, id);
  if (pk == NULL) {
    if (errno != ESTALE)
      backend_error ("cas: pack %" PRIu32 " is missing", id);
    return -1;
  }
  r = pread (pk->fd, buf, tsize + CAS_RECORD_HEADER_SIZE, off - tsize);
  unpin_pack (pk);
  if (r != (ssize_t) (tsize + CAS_RECORD_HEADER_SIZE) ||
      cas_record_header_decode (buf + tsize, h) == -1) {
    backend_error ("cas: pack %" PRIu32 " offset %" PRIu64
                   ": damaged record header", id, off);
    errno = EIO;
    return -1;
  }
  if (!(h->flags & CAS_RECORD_F_TABLE) || h->length != length)
    return 1;                   /* no table, or not a block: read it whole */
  why = "damaged header";
  if (cas_record_header_decode (buf, &th) == -1)
    goto bad;
  why = "not the table of this record";
  if (th.type != CAS_RECORD_TABLE || th.length != 4 * n ||
      !cas_hash_equal (&th.hash, &h->hash))
    goto bad;
  why = "checksum mismatch";
  if (crc32c (0, buf + CAS_RECORD_HEADER_SIZE, th.length) != th.payload_crc)
    goto bad;
  for (i = 0; i < n; i++)
    crcs[i] = get_le32 (buf + CAS_RECORD_HEADER_SIZE + 4 * i);
  return 0;
 bad:
  /* The data may well be intact: the caller reads the whole payload. */
  backend_debug ("cas: pack %" PRIu32 " offset %" PRIu64 ": piece table "
                 "unusable (%s)", id, off - tsize, why);
  return 1;
}

int
cas_packs_readv (struct cas_packs *p, uint64_t loc, uint64_t at,
                 const struct iovec *iov, int iovcnt, size_t *got)
{
  uint32_t id = CAS_LOC_PACK (loc);
  struct pack *pk = pin_pack (p, id);
  ssize_t r;

  if (pk == NULL) {
    if (errno != ESTALE)
      backend_error ("cas: pack %" PRIu32 " is missing", id);
    return -1;
  }
  /* pread for one buffer: the units of a kept table, the hot path. */
  if (iovcnt == 1)
    r = pread (pk->fd, iov[0].iov_base, iov[0].iov_len,
               CAS_LOC_OFFSET (loc) + at);
  else
    r = preadv (pk->fd, iov, iovcnt, CAS_LOC_OFFSET (loc) + at);
  unpin_pack (pk);
  if (r == -1) {
    int saved = errno;
    backend_error ("cas: reading pack %" PRIu32 " at offset %" PRIu64
                   ": %m", id, CAS_LOC_OFFSET (loc) + at);
    errno = saved == ESTALE ? EIO : saved;
    return -1;
  }
  *got = r;
  return 0;
}

int
cas_packs_read_payload (struct cas_packs *p, uint64_t loc, uint32_t off,
                        void *buf, uint32_t len)
{
  struct iovec iov = { buf, len };
  size_t got;

  if (cas_packs_readv (p, loc, CAS_RECORD_HEADER_SIZE + (uint64_t) off,
                       &iov, 1, &got) == -1)
    return -1;
  if (got != len) {
    backend_error ("cas: pack %" PRIu32 " offset %" PRIu64 ": record "
                   "payload is truncated", CAS_LOC_PACK (loc),
                   CAS_LOC_OFFSET (loc));
    errno = EIO;
    return -1;
  }
  return 0;
}

int
cas_packs_sync (struct cas_packs *p)
{
  uint32_t i, last = p->last;
  int err = 0;

  /* Serialised: otherwise a second flush could find dirty == false while
   * the first is still inside fdatasync, and publish a root before the
   * data it references is durable.  Waiting here is group commit.
   */
  pthread_mutex_lock (&p->sync_lock);
  /* A failed fdatasync is sticky, for the life of this cas_packs.  After
   * one, the kernel may have dropped the dirty pages (marked them clean,
   * or thrown them away) and a second fdatasync would report success
   * without writing them: "retry" is a lie.  Which records are lost is
   * unknowable, and they are already in the index (new writes dedup
   * against them) and in the volumes' maps, so rolling to a new pack
   * would not help: a later root could still reference them.  So no
   * root is published again until the store is reopened; reopening
   * scans, with payload CRCs, everything past the index cache saved
   * before (ps_close does not save it when the sync fails), so whatever
   * did not reach the disk is not indexed.
   * Reads and writes go on; flushes fail with the original errno.
   */
  if (p->sync_err == 0) {
    /* Retry cleaning up failed appends before making the packs durable
     * (rare: any_failed saves the walk over every pack on each flush).
     */
    pthread_mutex_lock (&p->append_lock);
    if (p->any_failed) {
      p->any_failed = false;
      for (i = 1; i <= last; i++) {
        struct pack *pk = live_pack (p, i);
        if (pk && pk->nfailed) {
          release_failed (pk, i);
          if (pk->nfailed)
            p->any_failed = true;
        }
      }
    }
    pthread_mutex_unlock (&p->append_lock);
    for (i = 1; i <= last; i++) {
      struct pack *pk = live_pack (p, i);
      if (pk && atomic_exchange (&pk->dirty, false)) {
        if (fdatasync (pk->fd) == -1) {
          p->sync_err = errno ? errno : EIO;
          errno = p->sync_err;
          backend_error ("cas: fdatasync pack %" PRIu32 ": %m (no further "
                         "flush can succeed until the store is reopened)", i);
          break;
        }
      }
    }
  }
  err = p->sync_err;
  pthread_mutex_unlock (&p->sync_lock);
  if (err) {
    errno = err;
    return -1;
  }
  return 0;
}

void
cas_packs_dirty (struct cas_packs *p, uint32_t id)
{
  struct pack *pk = live_pack (p, id);

  if (pk)
    atomic_store (&pk->dirty, true);
}

uint32_t
cas_packs_last (struct cas_packs *p)
{
  return p->last;
}

int64_t
cas_packs_size (struct cas_packs *p, uint32_t id)
{
  struct pack *pk = live_pack (p, id);

  return pk ? (int64_t) atomic_load (&pk->end) : -1;
}

uint64_t
cas_packs_count (struct cas_packs *p)
{
  uint32_t i, last = p->last;
  uint64_t n = 0;

  for (i = 1; i <= last; i++)
    if (live_pack (p, i))
      n++;
  return n;
}

uint64_t
cas_packs_bytes (struct cas_packs *p)
{
  uint32_t i, last = p->last;
  uint64_t n = 0;

  for (i = 1; i <= last; i++) {
    struct pack *pk = live_pack (p, i);
    if (pk)
      n += pk->end;
  }
  return n;
}

/* ---- garbage collection's part ---- */

uint32_t
cas_packs_seal (struct cas_packs *p)
{
  uint32_t below;

  pthread_mutex_lock (&p->append_lock);
  below = p->last + 1;
  p->sealed_below = below;
  pthread_mutex_unlock (&p->append_lock);
  return below;
}

int
cas_packs_retire (struct cas_packs *p, uint32_t id)
{
  CLEANUP_FREE char *path = pack_path (p, id);
  struct pack *pk = live_pack (p, id);
  struct timespec pause = { 0, 100 * 1000 };

  if (pk == NULL || path == NULL) {
    errno = ENOENT;
    return -1;
  }
  pthread_mutex_lock (&p->append_lock);
  if (id >= p->sealed_below) {
    pthread_mutex_unlock (&p->append_lock);
    backend_error ("cas: pack %" PRIu32 " is not sealed: not retiring it",
                   id);
    errno = EINVAL;
    return -1;
  }
  atomic_store (&pk->retired, true);
  pthread_mutex_unlock (&p->append_lock);
  /* No read starts now; the few in progress (one pread each) end soon. */
  while (atomic_load (&pk->readers) > 0)
    nanosleep (&pause, NULL);
  close (pk->fd);
  pk->fd = -1;
  if (unlink (path) == -1 || cas_fsync_dir (p->packdir) == -1) {
    backend_error ("cas: removing %s: %m", path);
    return -1;
  }
  backend_debug ("cas: pack %" PRIu32 " removed", id);
  return 0;
}

/* ---- scanning ---- */

struct scan {
  struct cas_packs *p;
  uint32_t id;
  struct pack *pk;
  uint64_t size;
  uint64_t keep;                 /* never cut below this */
  uint8_t *buf;                  /* CAS_MAX_PAYLOAD */
  /* Re-hashing a compressed record: its raw block (CAS_MAX_PAYLOAD,
   * allocated when first needed) and the codecs' contexts.
   */
  uint8_t *raw;
  struct cas_codec_pool *pool;
  bool extent_tables;            /* CAS_SCAN_EXTENT_TABLES */
  int (*fn) (const struct cas_record_info *, void *);
  void *opaque;
  /* Checking a data record that has a piece table (format 2): its piece
   * CRCs (record_at), and the record just before it, if that was a
   * table and checked out (the scan), to compare the two.
   */
  uint32_t pieces[CAS_MAX_PAYLOAD / CAS_PIECE_SIZE];
  enum { PREV_OTHER, PREV_TABLE, PREV_DAMAGED } prev;
  uint64_t table_off, table_end;
  struct cas_hash table_hash;
  uint32_t table_n;
  uint32_t table[CAS_MAX_PAYLOAD / CAS_PIECE_SIZE];
};

/* The payload of an extent record (format 4), in s->buf: its slot
 * table, every present unit's CRC, and with rehash every unit
 * decompressed and re-hashed with SHA-256 (extent.c).
 */
static bool
extent_ok (struct scan *s, const struct cas_record_header *h, bool rehash,
           const char **problem)
{
  struct cas_extent_fields f;
  struct cas_slot_entry se[CAS_UNITS_MAX];
  uint32_t start[CAS_UNITS_MAX];
  unsigned bad_slot;

  if (cas_extent_parse_table (h, s->buf, h->length, &f, se, start,
                              problem) == -1)
    return false;
  if (s->extent_tables && !rehash)
    return true;
  if (rehash && s->pool == NULL)
    s->pool = cas_codec_pool_new ();
  return cas_extent_check_units (&f, se, start, s->buf, rehash, rehash,
                                 s->pool, problem, &bad_slot) == 0;
}

/* Is there a whole, verified record at off?  1 yes (h filled); 0 no
 * valid header there (or it runs past the end); BAD_PAYLOAD: the header
 * is good (h filled) but the payload is not.
 */
#define BAD_PAYLOAD 2
static int
record_at (struct scan *s, uint64_t off, bool check, bool rehash,
           struct cas_record_header *h, const char **problem)
{
  uint8_t hdr[CAS_RECORD_HEADER_SIZE];

  *problem = "damaged record header";
  if (off + CAS_RECORD_HEADER_SIZE > s->size ||
      pread (s->pk->fd, hdr, sizeof hdr, off) != sizeof hdr ||
      cas_record_header_decode (hdr, h) == -1)
    return 0;
  *problem = "record runs past the end of the pack";
  if (off + cas_record_size (h->length) > s->size)
    return 0;
  if (!check && !rehash)
    return 1;
  *problem = "cannot read payload";
  if (pread (s->pk->fd, s->buf, h->length, off + CAS_RECORD_HEADER_SIZE) !=
      (ssize_t) h->length)
    return BAD_PAYLOAD;
  if (h->type == CAS_RECORD_EXTENT)
    return extent_ok (s, h, rehash, problem) ? 1 : BAD_PAYLOAD;
  *problem = "payload checksum (CRC32C) mismatch";
  if (h->type == CAS_CHUNK_DATA && (h->flags & CAS_RECORD_F_TABLE) &&
      cas_wants_table (h->length)) {
    /* The same pass gives the piece CRCs, for the check of its table
     * (scan_pack), and the whole CRC from them.
     */
    uint32_t i, n = cas_pieces (h->length), whole = 0;

    for (i = 0; i < n; i++) {
      uint32_t len = i + 1 < n ? CAS_PIECE_SIZE
        : h->length - i * CAS_PIECE_SIZE;
      s->pieces[i] = crc32c (0, s->buf + (size_t) i * CAS_PIECE_SIZE, len);
      whole = i ? crc32c_combine (whole, s->pieces[i], len) : s->pieces[i];
    }
    if (whole != h->payload_crc)
      return BAD_PAYLOAD;
  }
  else if (crc32c (0, s->buf, h->length) != h->payload_crc)
    return BAD_PAYLOAD;
  if (rehash && h->type != CAS_RECORD_TABLE) {
    struct cas_hash got;
    const uint8_t *data = s->buf;

    /* The name is the raw block's: decompress it first (the CRC above
     * was of the stored bytes).
     */
    if (h->flags & CAS_RECORD_F_COMPRESSED) {
      *problem = "compressed payload does not decompress to its length";
      if (s->raw == NULL && (s->raw = malloc (CAS_MAX_PAYLOAD)) == NULL)
        return BAD_PAYLOAD;
      if (s->pool == NULL)
        s->pool = cas_codec_pool_new ();
      if (cas_decompress (s->pool, h->codec, s->buf, h->length, s->raw,
                          h->raw_length) == -1)
        return BAD_PAYLOAD;
      data = s->raw;
    }
    *problem = "payload does not match its SHA-256";
    if (cas_hash_compute (data, h->raw_length, &got) == -1 ||
        !cas_hash_equal (&got, &h->hash))
      return BAD_PAYLOAD;
  }
  return 1;
}

/* After damage at off: the offset of the next whole, SHA-256-verified
 * record (verified, because a search may land inside a payload that
 * merely looks like a record), or s->size if there is none.
 */
static uint64_t
resync (struct scan *s, uint64_t off)
{
  uint8_t win[65536];
  struct cas_record_header h;
  const char *problem;
  uint64_t base;

  off = (off + CAS_RECORD_ALIGN - 1) & ~(uint64_t) (CAS_RECORD_ALIGN - 1);
  for (base = off; base + CAS_RECORD_HEADER_SIZE <= s->size;
       base += sizeof win - CAS_RECORD_HEADER_SIZE) {
    ssize_t n = pread (s->pk->fd, win, sizeof win, base);
    size_t i;
    if (n < CAS_RECORD_HEADER_SIZE)
      break;
    for (i = 0; i + CAS_RECORD_HEADER_SIZE <= (size_t) n;
         i += CAS_RECORD_ALIGN) {
      if (get_le32 (win + i) != CAS_RECORD_MAGIC)
        continue;
      if (record_at (s, base + i, true, true, &h, &problem) == 1)
        return base + i;
    }
  }
  return s->size;
}

/* Is [off, off + len) all zeros?  That is an unused reservation (an
 * append that failed and was zeroed, or never happened before a crash),
 * not damage.
 */
static bool
all_zero (struct scan *s, uint64_t off, uint64_t len)
{
  uint64_t win[8192];
  uint64_t end = off + len;

  while (off < end) {
    size_t want = end - off > sizeof win ? sizeof win : end - off;
    ssize_t n = pread (s->pk->fd, win, want, off);
    size_t i;
    if (n <= 0)
      return false;
    for (i = 0; i < (size_t) n / 8; i++)
      if (win[i])
        return false;
    for (i = (size_t) n / 8 * 8; i < (size_t) n; i++)
      if (((const uint8_t *) win)[i])
        return false;
    off += n;
  }
  return true;
}

static int
report_bad (struct scan *s, uint64_t off, uint64_t len, const char *problem,
            const struct cas_record_header *h, unsigned flags)
{
  struct cas_record_info info;

  if (flags & CAS_SCAN_QUIET_BAD)
    return 0;
  memset (&info, 0, sizeof info);
  if (h)
    info.hash = h->hash, info.type = h->type;
  info.length = len > UINT32_MAX ? UINT32_MAX : (uint32_t) len;
  info.pack = s->id;
  info.offset = off;
  info.status = EIO;
  info.problem = problem;
  return s->fn (&info, s->opaque);
}

/* After record_at checked the data record at off (h), which says a piece
 * table precedes it: does the table match it?  A table that does not is
 * reported as a damaged table record (the data itself is intact and is
 * reported as such): partial reads of the chunk then check the whole
 * record instead, so it costs speed, not data (FORMAT.md).
 */
static int
check_table (struct scan *s, uint64_t off, const struct cas_record_header *h,
             unsigned flags)
{
  struct cas_record_header th = *h;
  uint32_t n = cas_pieces (h->length);
  const char *problem = NULL;
  uint64_t at = off, len = 0;

  th.type = CAS_RECORD_TABLE;
  if (s->prev == PREV_DAMAGED)
    return 0;                   /* the damage in front is reported */
  if (s->prev != PREV_TABLE || s->table_end != off)
    problem = "the data record after it says it has a piece table, but "
      "no table precedes it";
  else {
    at = s->table_off;
    len = off - s->table_off;
    if (!cas_hash_equal (&s->table_hash, &h->hash) || s->table_n != n)
      problem = "piece table of another chunk or length in front of a "
        "data record";
    else if (memcmp (s->table, s->pieces, n * sizeof *s->pieces) != 0)
      problem = "piece table does not match the data record after it";
  }
  if (problem == NULL)
    return 0;
  return report_bad (s, at, len, problem, &th, flags);
}

static int
scan_pack (struct scan *s, uint64_t off, unsigned flags)
{
  bool check = flags & (CAS_ENUM_CHECK_CRC | CAS_ENUM_REHASH);
  bool rehash = flags & CAS_ENUM_REHASH;
  struct cas_record_header h;
  const char *problem;
  int r, found;

  s->prev = PREV_OTHER;
  while (off < s->size) {
    found = record_at (s, off, check, rehash, &h, &problem);
    if (found == 1) {
      struct cas_record_info info = {
        .hash = h.hash, .type = h.type, .length = h.length,
        .pack = s->id, .offset = off, .status = 0, .problem = NULL,
      };
      r = s->fn (&info, s->opaque);
      if (r)
        return r;
      if (check && h.type == CAS_CHUNK_DATA &&
          (h.flags & CAS_RECORD_F_TABLE) && cas_wants_table (h.length) &&
          (r = check_table (s, off, &h, flags)) != 0)
        return r;
      s->prev = PREV_OTHER;
      if (check && h.type == CAS_RECORD_TABLE &&
          h.length <= sizeof s->table) {
        uint32_t i;

        s->prev = PREV_TABLE;
        s->table_off = off;
        s->table_end = off + cas_record_size (h.length);
        s->table_hash = h.hash;
        s->table_n = h.length / 4;
        for (i = 0; i < s->table_n; i++)
          s->table[i] = get_le32 (s->buf + 4 * i);
      }
      off += cas_record_size (h.length);
      continue;
    }
    s->prev = PREV_DAMAGED;
    /* A header that checks out but a payload that does not: one damaged
     * record of known length; report it and go on after it.
     */
    if (found == BAD_PAYLOAD) {
      r = report_bad (s, off, h.length, problem, &h, flags);
      if (r)
        return r;
      off += cas_record_size (h.length);
      continue;
    }
    {
      uint64_t next = resync (s, off + CAS_RECORD_ALIGN);
      if (next >= s->size) {
        /* Nothing valid up to EOF: a torn tail from a crash -- unless
         * the index cache saw these bytes durable, then it is damage.
         */
        if ((flags & CAS_SCAN_CUT_TAIL) && !s->p->readonly && off >= s->keep) {
          backend_error ("cas: pack %" PRIu32 ": cutting torn tail at offset %"
                         PRIu64 " (%" PRIu64 " bytes)", s->id, off,
                         s->size - off);
          if (ftruncate (s->pk->fd, off) == -1 || fdatasync (s->pk->fd) == -1) {
            backend_error ("cas: truncating pack %" PRIu32 ": %m", s->id);
            return -1;
          }
          s->pk->end = off;
          s->size = off;
          return 0;
        }
        if (all_zero (s, off, s->size - off)) {
          backend_debug ("cas: pack %" PRIu32 ": unused reservation at the "
                         "end, offset %" PRIu64 " (%" PRIu64 " bytes)",
                         s->id, off, s->size - off);
          return 0;
        }
        if ((flags & CAS_SCAN_CUT_TAIL) && off < s->keep)
          backend_error ("cas: pack %" PRIu32 ": %" PRIu64 " damaged bytes at "
                         "the end (offset %" PRIu64 ") were durable when the "
                         "index cache was saved: not cutting them (run nbdcas "
                         "fsck)", s->id, s->size - off, off);
        return report_bad (s, off, s->size - off,
                           "torn or damaged tail (no valid record to the end)",
                           NULL, flags);
      }
      if (all_zero (s, off, next - off)) {
        backend_debug ("cas: pack %" PRIu32 ": unused reservation at offset %"
                       PRIu64 " (%" PRIu64 " bytes)", s->id, off, next - off);
        off = next;
        continue;
      }
      backend_error ("cas: pack %" PRIu32 ": skipping %" PRIu64
                     " unreadable bytes at offset %" PRIu64,
                     s->id, next - off, off);
      r = report_bad (s, off, next - off, problem, NULL, flags);
      if (r)
        return r;
      off = next;
    }
  }
  return 0;
}

int
cas_packs_scan_one (struct cas_packs *p, uint32_t id,
                    int (*fn) (const struct cas_record_info *, void *),
                    void *opaque)
{
  struct scan s = { .p = p, .fn = fn, .opaque = opaque, .id = id };
  int r;

  s.pk = live_pack (p, id);
  if (s.pk == NULL)
    return 0;
  s.buf = malloc (CAS_MAX_PAYLOAD);
  if (s.buf == NULL)
    return -1;
  s.size = s.pk->end;
  s.keep = s.size;              /* never cut */
  r = scan_pack (&s, CAS_PACK_HEADER_SIZE, 0);
  free (s.buf);
  free (s.raw);
  cas_codec_pool_free (s.pool);
  return r;
}

int
cas_packs_scan (struct cas_packs *p, const struct cas_scan_start *from,
                uint32_t nfrom, unsigned flags,
                int (*fn) (const struct cas_record_info *, void *),
                void *opaque)
{
  struct scan s = { .p = p, .fn = fn, .opaque = opaque };
  uint32_t id, last = p->last;
  int r = 0;

  s.buf = malloc (CAS_MAX_PAYLOAD);
  if (s.buf == NULL)
    return -1;
  s.extent_tables = flags & CAS_SCAN_EXTENT_TABLES;
  for (id = 1; id <= last; id++) {
    unsigned f = flags;
    uint64_t start = CAS_PACK_HEADER_SIZE;

    s.id = id;
    s.pk = live_pack (p, id);
    if (s.pk == NULL)
      continue;
    s.size = s.pk->end;
    s.keep = 0;
    if (from && id < nfrom) {
      if (from[id].start > start)
        start = from[id].start;
      s.keep = from[id].keep;
    }
    if (start >= s.size)
      continue;
    if ((flags & CAS_SCAN_CRC_LAST2) && id + 2 > last)
      f |= CAS_ENUM_CHECK_CRC;
    posix_fadvise (s.pk->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    r = scan_pack (&s, start, f);
    if (r)
      break;
  }
  free (s.buf);
  free (s.raw);
  cas_codec_pool_free (s.pool);
  return r;
}
