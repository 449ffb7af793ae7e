/* Chunk layouts on Ceph RADOS, measured (issue 14): which one should the
 * RADOS chunk store use?
 *
 *   A  one object per chunk, named by its hash: the 64-byte record header
 *      and the payload.  put = {create exclusive, write_full}: a duplicate
 *      is -EEXIST from the OSD, in the same round trip (the payload is sent
 *      anyway); "stat (dup check)" is the alternative, a stat before the
 *      write; "verify (after EEXIST)" is the check the chunk store makes
 *      of an object it found that way (header + the OSD's CRC32C of the
 *      payload).  get = one read of the whole object.
 *   B  chunks appended to pack objects (PACK bytes) with a shared index:
 *      omap entries hash -> (pack, offset, length) spread over SHARDS index
 *      objects.  put = append to a pack in memory; each full pack is one
 *      write_full plus one omap_set per index shard it touches.  A
 *      duplicate is found by an omap lookup (one round trip per chunk,
 *      unless a local cache knows it).  get = an index lookup then a
 *      ranged read of the pack ("get"), or the read alone when the index
 *      is known locally ("get-local-index").
 *
 * Both keep QD operations in flight with librados aio, from one thread.
 * Payloads are pseudo-random (pre-generated: generation is not timed);
 * hashing is the caller's cost in both layouts and is not measured.  Each
 * run writes into a fresh namespace, so nothing dedups against an earlier
 * run.  Output: one line per (layout, operation), tab-separated: layout,
 * chunk bytes, operation, MB/s, operations/s.
 *
 *   rados-layouts -c CONF -p POOL [-s CHUNK] [-N CHUNKS] [-q QD]
 *                 [-P PACK] [-S SHARDS] [-l A|B|AB]
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rados/librados.h>

#define HDR 64

static size_t chunk = 65536, nchunks = 4096, qd = 32, packsize = 4 << 20;
static unsigned shards = 64;
static uint8_t *data;              /* nchunks * chunk, pre-generated */
static uint8_t (*names)[32];       /* chunk i's "hash" */
static rados_ioctx_t io;

static void
die (const char *what, int r)
{
  fprintf (stderr, "rados-layouts: %s: %s\n", what, strerror (-r));
  exit (1);
}

static double
now (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t
xorshift (uint64_t *s)
{
  uint64_t x = *s;
  x ^= x << 13; x ^= x >> 7; x ^= x << 17;
  return *s = x;
}

static void
hex (const uint8_t *b, size_t n, char *out)
{
  for (size_t i = 0; i < n; i++)
    sprintf (out + 2 * i, "%02x", b[i]);
}

/* ---- a FIFO window of QD asynchronous operations ---- */

enum kind { A_PUT, A_STAT, A_VERIFY, A_GET, B_PACK, B_INDEX, B_LOOKUP, B_READ };

struct op {
  enum kind kind;
  size_t idx;                      /* chunk */
  rados_completion_t c;
  rados_write_op_t w;
  rados_read_op_t r;
  rados_omap_iter_t it;
  int rval, rval2, rval3;
  size_t got, got2;
  uint8_t *buf;                    /* read buffer (HDR + chunk) */
  /* B_INDEX: keys/values owned by the op */
  char **keys;
  char **vals;
  size_t *lens;
  size_t nkeys;
};

static struct op *ring;
static size_t head, count;         /* oldest at head */
static size_t stored, dups, found, reads;

/* Where B put each chunk (filled by the put pass, read by local gets). */
struct loc { uint32_t pack, off; };
static struct loc *locs;

static void complete (struct op *o);

static struct op *
slot (void)
{
  while (count == qd) {
    struct op *o = &ring[head];
    rados_aio_wait_for_complete (o->c);
    head = (head + 1) % qd;
    count--;
    complete (o);
  }
  struct op *o = &ring[(head + count) % qd];
  count++;
  uint8_t *keep = o->buf;
  memset (o, 0, sizeof *o);
  o->buf = keep;
  if (rados_aio_create_completion2 (NULL, NULL, &o->c) < 0)
    die ("completion", -ENOMEM);
  return o;
}

static void
drain (void)
{
  while (count) {
    struct op *o = &ring[head];
    rados_aio_wait_for_complete (o->c);
    head = (head + 1) % qd;
    count--;
    complete (o);
  }
}

static void
name_a (size_t i, char out[80])
{
  memcpy (out, "chunk.", 6);
  hex (names[i], 32, out + 6);
}

/* ---- layout A ---- */

static void
a_put (size_t i)
{
  struct op *o = slot ();
  char oid[80];
  uint8_t hdr[HDR] = { 'C', 'R', 'E', 'C' };

  o->kind = A_PUT;
  o->idx = i;
  name_a (i, oid);
  memcpy (hdr + 16, names[i], 32);
  o->w = rados_create_write_op ();
  rados_write_op_create (o->w, LIBRADOS_CREATE_EXCLUSIVE, NULL);
  rados_write_op_write_full (o->w, (char *) hdr, HDR);
  rados_write_op_write (o->w, (char *) data + i * chunk, chunk, HDR);
  int r = rados_aio_write_op_operate (o->w, io, o->c, oid, NULL, 0);
  if (r < 0)
    die ("aio write", r);
}

/* The other way to find a duplicate: stat first (and write only if
 * absent).  Costs an extra round trip for every unique chunk.
 */
static void
a_stat (size_t i)
{
  struct op *o = slot ();
  char oid[80];

  o->kind = A_STAT;
  o->idx = i;
  name_a (i, oid);
  o->r = rados_create_read_op ();
  rados_read_op_stat (o->r, &o->got, NULL, &o->rval);
  int r = rados_aio_read_op_operate (o->r, io, o->c, oid, 0);
  if (r < 0)
    die ("aio stat", r);
}

/* What the chunk store does after an EEXIST, before trusting the object
 * for dedup: its header and the OSD's CRC32C of its payload (nothing but
 * 64 + 8 bytes cross the network).
 */
static void
a_verify (size_t i)
{
  static const uint32_t init = 0xffffffff;
  struct op *o = slot ();
  char oid[80];

  o->kind = A_VERIFY;
  o->idx = i;
  name_a (i, oid);
  o->r = rados_create_read_op ();
  rados_read_op_stat (o->r, &o->got, NULL, &o->rval);
  rados_read_op_read (o->r, 0, HDR, (char *) o->buf, &o->got2, &o->rval2);
  rados_read_op_checksum (o->r, LIBRADOS_CHECKSUM_TYPE_CRC32C,
                          (const char *) &init, sizeof init, HDR, chunk, 0,
                          (char *) o->buf + HDR, 8, &o->rval3);
  int r = rados_aio_read_op_operate (o->r, io, o->c, oid, 0);
  if (r < 0)
    die ("aio verify", r);
}

static void
a_get (size_t i)
{
  struct op *o = slot ();
  char oid[80];

  o->kind = A_GET;
  o->idx = i;
  name_a (i, oid);
  o->r = rados_create_read_op ();
  rados_read_op_read (o->r, 0, HDR + chunk, (char *) o->buf, &o->got,
                      &o->rval);
  int r = rados_aio_read_op_operate (o->r, io, o->c, oid, 0);
  if (r < 0)
    die ("aio read", r);
}

/* ---- layout B ---- */

static uint8_t *pack;              /* being filled */
static size_t pack_used;
static uint32_t pack_no;
static size_t pack_first;          /* first chunk in this pack */

static unsigned
shard_of (size_t i)
{
  return names[i][0] % shards;
}

static void
index_key (size_t i, char out[65])
{
  hex (names[i], 32, out);
}

static void
b_flush_pack (void)
{
  char oid[64];
  struct op *o;
  size_t i;

  if (pack_used == 0)
    return;
  o = slot ();
  o->kind = B_PACK;
  snprintf (oid, sizeof oid, "pack.%08" PRIx32, pack_no);
  o->w = rados_create_write_op ();
  rados_write_op_create (o->w, LIBRADOS_CREATE_EXCLUSIVE, NULL);
  rados_write_op_write_full (o->w, (char *) pack, pack_used);
  int r = rados_aio_write_op_operate (o->w, io, o->c, oid, NULL, 0);
  if (r < 0)
    die ("aio write pack", r);

  /* One omap_set per index shard touched by this pack. */
  for (unsigned s = 0; s < shards; s++) {
    size_t n = 0;
    for (i = pack_first; i < pack_first + (pack_used / (HDR + chunk)); i++)
      if (shard_of (i) == s)
        n++;
    if (n == 0)
      continue;
    o = slot ();
    o->kind = B_INDEX;
    o->keys = calloc (n, sizeof *o->keys);
    o->vals = calloc (n, sizeof *o->vals);
    o->lens = calloc (n, sizeof *o->lens);
    for (i = pack_first; i < pack_first + (pack_used / (HDR + chunk)); i++) {
      if (shard_of (i) != s)
        continue;
      o->keys[o->nkeys] = malloc (65);
      index_key (i, o->keys[o->nkeys]);
      o->vals[o->nkeys] = malloc (sizeof (struct loc));
      memcpy (o->vals[o->nkeys], &locs[i], sizeof (struct loc));
      o->lens[o->nkeys] = sizeof (struct loc);
      o->nkeys++;
    }
    snprintf (oid, sizeof oid, "index.%02x", s);
    o->w = rados_create_write_op ();
    rados_write_op_omap_set (o->w, (const char *const *) o->keys,
                             (const char *const *) o->vals, o->lens,
                             o->nkeys);
    r = rados_aio_write_op_operate (o->w, io, o->c, oid, NULL, 0);
    if (r < 0)
      die ("aio omap_set", r);
  }
  pack_no++;
  pack_used = 0;
}

static void
b_put (size_t i)
{
  uint8_t hdr[HDR] = { 'C', 'R', 'E', 'C' };

  if (pack_used + HDR + chunk > packsize) {
    b_flush_pack ();
    pack_first = i;
  }
  memcpy (hdr + 16, names[i], 32);
  memcpy (pack + pack_used, hdr, HDR);
  memcpy (pack + pack_used + HDR, data + i * chunk, chunk);
  locs[i].pack = pack_no;
  locs[i].off = pack_used;
  pack_used += HDR + chunk;
}

static void
b_lookup (size_t i)
{
  struct op *o = slot ();
  char oid[32], key[65];
  const char *keys[1] = { key };

  o->kind = B_LOOKUP;
  o->idx = i;
  index_key (i, key);
  snprintf (oid, sizeof oid, "index.%02x", shard_of (i));
  o->r = rados_create_read_op ();
  rados_read_op_omap_get_vals_by_keys (o->r, keys, 1, &o->it, &o->rval);
  int r = rados_aio_read_op_operate (o->r, io, o->c, oid, 0);
  if (r < 0)
    die ("aio omap lookup", r);
}

static void
b_read (size_t i, struct loc l)
{
  struct op *o = slot ();
  char oid[64];

  o->kind = B_READ;
  o->idx = i;
  snprintf (oid, sizeof oid, "pack.%08" PRIx32, l.pack);
  o->r = rados_create_read_op ();
  rados_read_op_read (o->r, l.off, HDR + chunk, (char *) o->buf, &o->got,
                      &o->rval);
  int r = rados_aio_read_op_operate (o->r, io, o->c, oid, 0);
  if (r < 0)
    die ("aio read pack", r);
}

/* B get with the index in RADOS: the lookup's completion issues the
 * read.  Set while measuring that case.
 */
static bool lookup_then_read;

static void
complete (struct op *o)
{
  int r = rados_aio_get_return_value (o->c);

  switch (o->kind) {
  case A_PUT:
    if (r == 0)
      stored++;
    else if (r == -EEXIST)
      dups++;
    else
      die ("put", r);
    break;
  case A_STAT:
    if (r == 0 && o->got == HDR + chunk)
      found++;
    else
      die ("stat", r < 0 ? r : -EIO);
    break;
  case A_VERIFY:
    if (r < 0 || o->rval < 0 || o->rval2 < 0 || o->rval3 < 0 ||
        o->got != HDR + chunk || o->got2 != HDR ||
        memcmp (o->buf + 16, names[o->idx], 32) != 0)
      die ("verify", r < 0 ? r : -EIO);
    found++;
    break;
  case B_PACK:
  case B_INDEX:
    if (r < 0)
      die (o->kind == B_PACK ? "pack write" : "omap_set", r);
    break;
  case A_GET:
  case B_READ:
    if (r < 0 || o->rval < 0)
      die ("read", r < 0 ? r : o->rval);
    if (o->got != HDR + chunk ||
        memcmp (o->buf + 16, names[o->idx], 32) != 0 ||
        memcmp (o->buf + HDR, data + o->idx * chunk, 64) != 0)
      die ("read: wrong data", -EIO);
    reads++;
    break;
  case B_LOOKUP: {
    char *k, *v;
    size_t vl;
    struct loc l;
    if (r < 0 || o->rval < 0)
      die ("omap lookup", r < 0 ? r : o->rval);
    if (rados_omap_get_next (o->it, &k, &v, &vl) == 0 && k != NULL &&
        vl == sizeof l) {
      found++;
      memcpy (&l, v, sizeof l);
    }
    else
      die ("omap lookup: not found", -ENOENT);
    rados_omap_get_end (o->it);
    if (lookup_then_read) {
      size_t idx = o->idx;
      if (o->r)
        rados_release_read_op (o->r);
      rados_aio_release (o->c);
      o->r = NULL;
      b_read (idx, l);   /* may recurse into complete() via slot() */
      return;
    }
    break;
  }
  }
  if (o->w)
    rados_release_write_op (o->w);
  if (o->r)
    rados_release_read_op (o->r);
  for (size_t i = 0; i < o->nkeys; i++) {
    free (o->keys[i]);
    free (o->vals[i]);
  }
  free (o->keys);
  free (o->vals);
  free (o->lens);
  o->keys = NULL;
  o->vals = NULL;
  o->lens = NULL;
  o->nkeys = 0;
  rados_aio_release (o->c);
}

static void
report (const char *layout, const char *what, double secs, size_t n)
{
  printf ("%s\t%zu\t%s\t%.1f\t%.0f\n", layout, chunk, what,
          n * (double) chunk / secs / 1e6, n / secs);
  fflush (stdout);
}

int
main (int argc, char **argv)
{
  const char *conf = NULL, *pool = "test", *layouts = "AB";
  rados_t cl;
  char ns[64];
  int opt, r;
  double t;
  size_t i;

  while ((opt = getopt (argc, argv, "c:p:s:N:q:P:S:l:")) != -1) {
    switch (opt) {
    case 'c': conf = optarg; break;
    case 'p': pool = optarg; break;
    case 's': chunk = strtoul (optarg, NULL, 0); break;
    case 'N': nchunks = strtoul (optarg, NULL, 0); break;
    case 'q': qd = strtoul (optarg, NULL, 0); break;
    case 'P': packsize = strtoul (optarg, NULL, 0); break;
    case 'S': shards = strtoul (optarg, NULL, 0); break;
    case 'l': layouts = optarg; break;
    default:
      fprintf (stderr, "usage: rados-layouts [-c CONF] [-p POOL] [-s CHUNK] "
               "[-N CHUNKS] [-q QD] [-P PACK] [-S SHARDS] [-l A|B|AB]\n");
      return 2;
    }
  }
  if (chunk == 0 || nchunks == 0 || qd == 0 || shards == 0 ||
      shards > 256 || packsize < HDR + chunk) {
    fprintf (stderr, "rados-layouts: bad -s/-N/-q/-S/-P\n");
    return 2;
  }

  if ((r = rados_create2 (&cl, "ceph", "client.admin", 0)) < 0)
    die ("rados_create2", r);
  if ((r = rados_conf_read_file (cl, conf)) < 0)
    die ("reading the ceph conf", r);
  rados_conf_parse_env (cl, NULL);
  rados_conf_set (cl, "client_mount_timeout", "30");
  rados_conf_set (cl, "rados_osd_op_timeout", "60");
  if ((r = rados_connect (cl)) < 0)
    die ("rados_connect", r);
  if ((r = rados_ioctx_create (cl, pool, &io)) < 0)
    die (pool, r);

  data = malloc (nchunks * chunk);
  names = malloc (nchunks * sizeof *names);
  locs = calloc (nchunks, sizeof *locs);
  ring = calloc (qd, sizeof *ring);
  pack = malloc (packsize);
  if (!data || !names || !locs || !ring || !pack)
    die ("malloc", -ENOMEM);
  for (i = 0; i < qd; i++)
    if ((ring[i].buf = malloc (HDR + chunk)) == NULL)
      die ("malloc", -ENOMEM);
  uint64_t seed = 0x9e3779b97f4a7c15ULL ^ ((uint64_t) getpid () << 20) ^
    (uint64_t) time (NULL);
  for (i = 0; i < nchunks * chunk / 8; i++)
    ((uint64_t *) data)[i] = xorshift (&seed);
  for (i = 0; i < nchunks; i++)
    for (int j = 0; j < 4; j++)
      ((uint64_t *) names[i])[j] = xorshift (&seed);

  if (strchr (layouts, 'A')) {
    snprintf (ns, sizeof ns, "bench-A-%d", (int) getpid ());
    rados_ioctx_set_namespace (io, ns);
    stored = dups = reads = 0;
    t = now ();
    for (i = 0; i < nchunks; i++)
      a_put (i);
    drain ();
    report ("A", "put unique", now () - t, nchunks);
    if (stored != nchunks)
      die ("A: not every unique put stored", -EIO);
    t = now ();
    for (i = 0; i < nchunks; i++)
      a_put (i);
    drain ();
    report ("A", "put duplicate", now () - t, nchunks);
    if (dups != nchunks)
      die ("A: not every duplicate put answered EEXIST", -EIO);
    found = 0;
    t = now ();
    for (i = 0; i < nchunks; i++)
      a_stat (i);
    drain ();
    report ("A", "stat (dup check)", now () - t, nchunks);
    if (found != nchunks)
      die ("A: not every stat found the chunk", -EIO);
    found = 0;
    t = now ();
    for (i = 0; i < nchunks; i++)
      a_verify (i);
    drain ();
    report ("A", "verify (after EEXIST)", now () - t, nchunks);
    t = now ();
    for (i = 0; i < nchunks; i++)
      a_get (i);
    drain ();
    report ("A", "get", now () - t, nchunks);
  }

  if (strchr (layouts, 'B')) {
    snprintf (ns, sizeof ns, "bench-B-%d", (int) getpid ());
    rados_ioctx_set_namespace (io, ns);
    pack_no = 0;
    pack_used = 0;
    pack_first = 0;
    t = now ();
    for (i = 0; i < nchunks; i++)
      b_put (i);
    b_flush_pack ();
    drain ();
    report ("B", "put unique", now () - t, nchunks);
    found = 0;
    lookup_then_read = false;
    t = now ();
    for (i = 0; i < nchunks; i++)
      b_lookup (i);
    drain ();
    report ("B", "put duplicate", now () - t, nchunks);
    if (found != nchunks)
      die ("B: not every duplicate found in the index", -EIO);
    reads = 0;
    lookup_then_read = true;
    t = now ();
    for (i = 0; i < nchunks; i++)
      b_lookup (i);
    drain ();
    report ("B", "get", now () - t, nchunks);
    lookup_then_read = false;
    t = now ();
    for (i = 0; i < nchunks; i++)
      b_read (i, locs[i]);
    drain ();
    report ("B", "get-local-index", now () - t, nchunks);
  }

  rados_ioctx_destroy (io);
  rados_shutdown (cl);
  return 0;
}
