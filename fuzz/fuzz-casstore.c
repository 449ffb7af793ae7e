/* libFuzzer target: opening and reading a cas store from hostile bytes.
 *
 * At startup a small valid store is made in a temporary directory (format
 * 2, block size 4 KiB; volume "a", 128 KiB with repeated and distinct blocks,
 * depth 1; volume "b", 5 MiB, depth 2, a few blocks mapped) and its files
 * are kept in memory.  Each input restores those files, damages one of
 * them as the input says, then does what a server and fsck do:
 * cas_store_open, list, open every volume, read it (the first MiB and
 * the last block), extents, stat, cas_volume_check and
 * cas_store_check_records, optionally a write + flush, close.  Any of it
 * may fail (that is the point); none of it may crash, hang, leak or hit
 * undefined behaviour.
 *
 * Input layout:
 *   byte 0  what to damage: 0 superblock, 1 pack, 2 index, 3 root of
 *           volume a, 4 root of volume b, 5 a crafted map node (below),
 *           6 truncate one file (byte 2 chooses, bytes 3-5 the length)
 *   byte 1  flags: 1 fix the CRCs after patching (so the damage gets past
 *           the checksums into the parsers), 2 open read-only, 4 verify
 *           full (SHA-256) instead of checksum, 8 write + flush after
 *           reading, 16 also fix each record's SHA-256 (pack)
 *   then    patches: offset (3 bytes LE, modulo file size + 1), length
 *           (1 byte), that many bytes (shortened at the end of the input)
 * Mode 5 instead: byte 2 the volume (bit 0), byte 3 the depth, bytes 4-11
 * the size (LE; 0 keeps it), then the node: per entry one byte b < 0x80
 * picks a known chunk hash (b % count; 0 the zero hash), b >= 0x80 takes
 * the next 32 bytes as a raw hash.  The node is appended to the pack as a
 * valid map-node record and published as the volume's root.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "crc32c.h"
#include "format.h"
#include "hash.h"
#include "store.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

#define BS 4096

/* The store library reports through these (backend.h); a fuzzer wants
 * silence unless FUZZ_VERBOSE is set.
 */
static bool verbose;

void
backend_error (const char *fmt, ...)
{
  va_list ap;

  if (!verbose)
    return;
  va_start (ap, fmt);
  fprintf (stderr, "casstore: ");
  vfprintf (stderr, fmt, ap);
  fprintf (stderr, "\n");
  va_end (ap);
}

void
backend_debug (const char *fmt, ...)
{
}

int
backend_add_extent (struct backend_extents *e, uint64_t o, uint64_t l,
                    uint32_t t)
{
  abort ();                     /* not used by the store */
}

int
backend_add_export (struct backend_exports *x, const char *n, const char *d)
{
  abort ();
}

static char dir[256];

struct file {
  const char *rel;
  uint8_t *data;
  size_t len;
};
enum { F_SUPER, F_PACK, F_INDEX, F_ROOT_A, F_ROOT_B, F_LOCKFILE, NFILES };
static struct file files[NFILES] = {
  { .rel = "superblock" }, { .rel = "packs/pack-00000001.cas" },
  { .rel = "index" }, { .rel = "volumes/a" }, { .rel = "volumes/b" },
  { .rel = "lock" },
};

static struct cas_hash *known;  /* every chunk hash in the valid pack */
static size_t nknown;

static void __attribute__ ((noreturn))
die (const char *what)
{
  perror (what);
  abort ();
}

static void
path_of (char *out, size_t n, const char *rel)
{
  snprintf (out, n, "%s/%s", dir, rel);
}

static void
load (struct file *f)
{
  char p[512];
  struct stat st;
  int fd;

  path_of (p, sizeof p, f->rel);
  fd = open (p, O_RDONLY);
  if (fd == -1 || fstat (fd, &st) == -1)
    die (p);
  f->len = st.st_size;
  f->data = malloc (f->len + 1);
  if (f->data == NULL || pread (fd, f->data, f->len, 0) != (ssize_t) f->len)
    die (p);
  close (fd);
}

static void
store_file (const char *rel, const uint8_t *d, size_t len)
{
  char p[512];
  int fd;

  path_of (p, sizeof p, rel);
  fd = open (p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd == -1 || (len && write (fd, d, len) != (ssize_t) len))
    die (p);
  close (fd);
}

/* Remove what a run added (new packs, temp roots): dir/sub entries that
 * are not among the saved files.
 */
static void
prune (const char *sub)
{
  char p[512], q[1024], rel[600];
  struct dirent *d;
  DIR *dh;
  size_t i;

  path_of (p, sizeof p, sub);
  dh = opendir (p);
  if (dh == NULL)
    return;
  while ((d = readdir (dh)) != NULL) {
    bool keep = false;

    if (strcmp (d->d_name, ".") == 0 || strcmp (d->d_name, "..") == 0)
      continue;
    snprintf (rel, sizeof rel, "%s/%s", sub, d->d_name);
    for (i = 0; i < NFILES; i++)
      if (strcmp (files[i].rel, rel) == 0)
        keep = true;
    if (!keep) {
      snprintf (q, sizeof q, "%s/%s", p, d->d_name);
      unlink (q);
    }
  }
  closedir (dh);
}

static void
restore (void)
{
  size_t i;

  for (i = 0; i < NFILES; i++)
    store_file (files[i].rel, files[i].data, files[i].len);
  prune ("packs");
  prune ("volumes");
}

static void
pattern (uint8_t *b, unsigned seed)
{
  unsigned i;

  for (i = 0; i < BS; i++)
    b[i] = (uint8_t) (seed * 131 + i * 7 + (i >> 8));
}

/* Collect the hash of every record in the pristine pack. */
static void
collect_known (void)
{
  const struct file *f = &files[F_PACK];
  uint64_t pos = CAS_PACK_HEADER_SIZE;

  known = calloc (f->len / CAS_RECORD_HEADER_SIZE + 1, sizeof *known);
  if (known == NULL)
    die ("calloc");
  while (pos + CAS_RECORD_HEADER_SIZE <= f->len) {
    struct cas_record_header h;

    if (cas_record_header_decode (f->data + pos, &h) == -1)
      break;
    known[nknown++] = h.hash;
    pos += cas_record_size (h.length);
  }
  if (nknown == 0) {
    fprintf (stderr, "fuzz-casstore: no records in the seed store\n");
    abort ();
  }
}

/* The scratch store goes away at exit (libFuzzer exits normally at the
 * end of a bounded run).
 */
static void
remove_store (void)
{
  char cmd[600];

  if (dir[0] && strchr (dir, '\'') == NULL) {
    snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system (cmd) != 0)
      fprintf (stderr, "fuzz-casstore: could not remove %s\n", dir);
  }
}

/* A crashed run (the point of fuzzing) never reaches atexit: remove the
 * scratch stores of fuzz-casstore processes that no longer exist.  Names
 * carry the owner's pid: fuzz-casstore.<pid>.XXXXXX.
 */
static void
remove_stale (const char *base)
{
  DIR *dh = opendir (base);
  struct dirent *d;

  if (dh == NULL)
    return;
  while ((d = readdir (dh)) != NULL) {
    char cmd[600];
    long pid;

    if (sscanf (d->d_name, "fuzz-casstore.%ld.", &pid) != 1 || pid <= 0 ||
        strchr (d->d_name, '\'') != NULL)
      continue;
    if (kill ((pid_t) pid, 0) == 0 || errno != ESRCH)
      continue;
    snprintf (cmd, sizeof cmd, "rm -rf '%s/%s'", base, d->d_name);
    if (system (cmd) != 0)
      fprintf (stderr, "fuzz-casstore: could not remove %s/%s\n", base,
               d->d_name);
  }
  closedir (dh);
}

static void
make_store (void)
{
  const char *base = getenv ("TMPDIR");
  struct cas_open_options oo = { .verify = CAS_VERIFY_CHECKSUM };
  const struct cas_open_options fmt2 = { .format = CAS_FORMAT_VERSION };
  struct cas_store *st;
  struct cas_volume *v;
  uint8_t b[BS];
  unsigned i;
  size_t k;

  if (base == NULL || !*base)
    base = access ("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  remove_stale (base);
  snprintf (dir, sizeof dir, "%s/fuzz-casstore.%ld.XXXXXX", base,
            (long) getpid ());
  if (mkdtemp (dir) == NULL)
    die ("mkdtemp");
  atexit (remove_store);
  /* Format 2 whatever the default: the input layout (record hashes,
   * crafted map nodes of chunk hashes) and the seeds are format 2's.
   */
  if (cas_store_create_opts (dir, BS, &fmt2) == -1)
    die ("cas_store_create_opts");
  st = cas_store_open (dir, &oo);
  if (st == NULL ||
      cas_volume_create (st, "a", 32 * BS) == -1 ||
      cas_volume_create (st, "b", 5 * 1024 * 1024) == -1)
    die ("cas_store_open/cas_volume_create");
  v = cas_volume_open (st, "a");
  if (v == NULL)
    die ("cas_volume_open a");
  for (i = 0; i < 32; i++) {
    if (i % 5 == 4)
      continue;                 /* unmapped */
    pattern (b, i % 7);         /* repeats: dedup */
    if (cas_volume_write (v, b, BS, (uint64_t) i * BS, false) == -1)
      die ("write a");
  }
  if (cas_volume_flush (v) == -1)
    die ("flush a");
  cas_volume_close (v);
  v = cas_volume_open (st, "b");
  if (v == NULL)
    die ("cas_volume_open b");
  for (i = 0; i < 4; i++) {
    pattern (b, 100 + i);
    if (cas_volume_write (v, b, BS, (uint64_t) i * 1024 * 1024 + 3 * BS,
                          false) == -1)
      die ("write b");
  }
  if (cas_volume_flush (v) == -1)
    die ("flush b");
  cas_volume_close (v);
  if (cas_store_close (st) == -1)
    die ("cas_store_close");

  for (k = 0; k < NFILES; k++)
    load (&files[k]);
  collect_known ();
}

/* ---- damage ---- */

static void
put_le32 (uint8_t *p, uint32_t v)
{
  p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}

static uint64_t
get_le64 (const uint8_t *p)
{
  uint64_t v = 0;
  int i;

  for (i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

static void
fix_crc (uint8_t *d, size_t len, size_t at)
{
  if (len >= at + 4)
    put_le32 (d + at, crc32c (0, d, at));
}

static void
fix_pack (uint8_t *d, size_t len, bool sha)
{
  uint64_t pos = CAS_PACK_HEADER_SIZE;

  fix_crc (d, len, 60);
  while (pos + CAS_RECORD_HEADER_SIZE <= len) {
    uint32_t rl = d[pos + 8] | d[pos + 9] << 8 | d[pos + 10] << 16 |
      (uint32_t) d[pos + 11] << 24;

    if (memcmp (d + pos, "CREC", 4) != 0 || rl == 0 ||
        rl > CAS_MAX_PAYLOAD ||
        pos + CAS_RECORD_HEADER_SIZE + rl > len) {
      pos += CAS_RECORD_ALIGN;
      continue;
    }
    put_le32 (d + pos + 12, crc32c (0, d + pos + 64, rl));
    if (sha) {
      struct cas_hash h;

      if (cas_hash_compute (d + pos + 64, rl, &h) == 0)
        memcpy (d + pos + 16, &h, sizeof h);
    }
    fix_crc (d + pos, CAS_RECORD_HEADER_SIZE, 60);
    pos += cas_record_size (rl);
  }
}

static void
fix_index (uint8_t *d, size_t len)
{
  uint64_t n;

  if (len < 64)
    return;
  n = get_le64 (d + 24);
  if (n > (len - 64) / 16)
    n = (len - 64) / 16;
  put_le32 (d + 32, crc32c (0, d + 64, n * 16));
  fix_crc (d, len, 60);
}

/* Apply the patch list to a copy of file f; write it out. */
static void
patch_file (int which, const uint8_t *p, size_t n, unsigned flags)
{
  const struct file *f = &files[which];
  size_t cap = f->len + 65536, len = f->len;
  uint8_t *d = malloc (cap);

  if (d == NULL)
    die ("malloc");
  memcpy (d, f->data, f->len);
  while (n >= 4) {
    size_t off = (p[0] | p[1] << 8 | (size_t) p[2] << 16) % (len + 1);
    size_t l = p[3];

    p += 4;
    n -= 4;
    if (l > n)
      l = n;
    if (off + l > cap)
      l = cap - off;
    memcpy (d + off, p, l);
    if (off + l > len)
      len = off + l;
    p += l;
    n -= l;
  }
  if (flags & 1) {
    switch (which) {
    case F_SUPER: fix_crc (d, len, 60); break;
    case F_PACK: fix_pack (d, len, flags & 16); break;
    case F_INDEX: fix_index (d, len); break;
    case F_ROOT_A: case F_ROOT_B: fix_crc (d, len, 124); break;
    }
  }
  store_file (f->rel, d, len);
  free (d);
}

static void
truncate_file (const uint8_t *p, size_t n)
{
  const struct file *f;
  size_t len;

  if (n < 4)
    return;
  f = &files[p[0] % F_LOCKFILE];
  len = (p[1] | p[2] << 8 | (size_t) p[3] << 16) % (f->len + 1);
  store_file (f->rel, f->data, len);
}

/* Mode 5: publish a crafted map node as a volume's root. */
static void
crafted_root (const uint8_t *p, size_t n)
{
  const struct file *pf = &files[F_PACK];
  struct cas_record_header rh;
  struct cas_root root;
  struct cas_hash h;
  uint8_t *node, *pack, rootbuf[CAS_ROOT_SIZE];
  size_t nlen = 0, plen;
  int which;
  uint32_t depth;
  uint64_t vsize;

  if (n < 10)
    return;
  which = (p[0] & 1) ? F_ROOT_B : F_ROOT_A;
  depth = p[1];
  vsize = get_le64 (p + 2);
  p += 10;
  n -= 10;

  node = calloc (CAS_MAP_FANOUT, CAS_HASH_SIZE);
  if (node == NULL)
    die ("calloc");
  while (n > 0 && nlen < CAS_MAP_FANOUT * CAS_HASH_SIZE) {
    uint8_t b = *p++;

    n--;
    if (b < 0x80) {
      if (b % (nknown + 1))
        memcpy (node + nlen, &known[b % (nknown + 1) - 1], CAS_HASH_SIZE);
    }
    else {
      size_t l = n < CAS_HASH_SIZE ? n : CAS_HASH_SIZE;

      memcpy (node + nlen, p, l);
      p += l;
      n -= l;
    }
    nlen += CAS_HASH_SIZE;
  }
  if (nlen == 0)
    nlen = CAS_HASH_SIZE;
  if (cas_hash_compute (node, nlen, &h) == -1)
    die ("sha256");

  /* Append the record to the pack. */
  plen = pf->len + cas_record_size (nlen);
  pack = calloc (1, plen);
  if (pack == NULL)
    die ("calloc");
  memcpy (pack, pf->data, pf->len);
  memset (&rh, 0, sizeof rh);
  rh.type = CAS_CHUNK_MAPNODE;
  rh.length = nlen;
  rh.payload_crc = crc32c (0, node, nlen);
  rh.hash = h;
  cas_record_header_encode (&rh, pack + pf->len);
  memcpy (pack + pf->len + CAS_RECORD_HEADER_SIZE, node, nlen);
  store_file (pf->rel, pack, plen);
  free (pack);
  free (node);

  /* Publish it. */
  if (cas_root_decode (files[which].data, &root) == -1)
    abort ();                   /* the seed store's own root */
  root.depth = depth;
  if (vsize)
    root.size = vsize;
  root.root = h;
  root.generation++;
  cas_root_encode (&root, rootbuf);
  store_file (files[which].rel, rootbuf, sizeof rootbuf);
}

/* ---- exercise the store ---- */

static int
count_volume (const char *name, void *opaque)
{
  char ***names = opaque;
  size_t n = 0;

  while ((*names)[n])
    n++;
  if (n >= 16)
    return 1;
  (*names)[n] = strdup (name);
  return 0;
}

static int
extent_cb (uint64_t off, uint64_t len, bool mapped, void *opaque)
{
  unsigned *count = opaque;

  return ++*count >= 4096;      /* enough: stop early */
}

static void
exercise_volume (struct cas_store *st, const char *name, unsigned flags)
{
  static uint8_t buf[64 * 1024];
  struct cas_volume_stats vs;
  struct cas_volume *v;
  struct cas_hash h;
  uint64_t size, off, n;
  unsigned ext = 0;

  v = cas_volume_open (st, name);
  if (v == NULL)
    return;
  size = cas_volume_size (v);
  for (off = 0; off < size && off < 1024 * 1024; off += n) {
    n = size - off < sizeof buf ? size - off : sizeof buf;
    cas_volume_read (v, buf, n, off);
  }
  if (size > BS)
    cas_volume_read (v, buf, BS, size - BS);
  cas_volume_extents (v, size < (1u << 30) ? size : 1u << 30, 0,
                      extent_cb, &ext);
  cas_volume_block_hash (v, cas_volume_nblocks (v) - 1, &h);
  cas_volume_stat (v, &vs);
  cas_volume_check (v, (flags & 4) != 0, NULL, NULL);
  if ((flags & 8) && !cas_store_readonly (st)) {
    memset (buf, 0x5a, BS);
    if (cas_volume_write (v, buf, BS, 0, false) == 0)
      cas_volume_flush (v);
  }
  cas_volume_close (v);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static bool init;
  struct cas_open_options oo = { 0 };
  struct cas_store *st;
  struct cas_store_stats ss;
  char *namev[17] = { NULL }, **names = namev;
  unsigned flags;
  size_t i;

  if (!init) {
    verbose = getenv ("FUZZ_VERBOSE") != NULL;
    make_store ();
    init = true;
  }
  if (size < 2)
    return 0;
  flags = data[1];
  restore ();
  switch (data[0] % 7) {
  case 0: case 1: case 2: case 3: case 4:
    patch_file (data[0] % 7, data + 2, size - 2, flags);
    break;
  case 5:
    crafted_root (data + 2, size - 2);
    break;
  case 6:
    truncate_file (data + 2, size - 2);
    break;
  }

  oo.readonly = flags & 2;
  oo.verify = (flags & 4) ? CAS_VERIFY_FULL : CAS_VERIFY_CHECKSUM;
  st = cas_store_open (dir, &oo);
  if (st == NULL)
    return 0;
  cas_store_list_volumes (st, count_volume, &names);
  for (i = 0; namev[i]; i++) {
    exercise_volume (st, namev[i], flags);
    free (namev[i]);
  }
  /* Names that are not volumes, or not valid: clean refusals. */
  exercise_volume (st, "../superblock", flags);
  exercise_volume (st, "nonexistent", flags);
  cas_store_stat (st, &ss);
  cas_store_check_records (st, (flags & 4) != 0, NULL, NULL);
  cas_store_close (st);
  return 0;
}
