/* space-chunker: cut a disk image into chunks and name each by SHA-256,
 * for the space study (bench/space/README.md).  Not part of nbdcas.
 *
 *   space-chunker fixed SIZE IMAGE   aligned SIZE-byte blocks, as the cas
 *                                    store cuts a volume (SIZE: power of
 *                                    two, 4096 .. 1048576)
 *   space-chunker cdc AVG IMAGE      content-defined chunks, average about
 *                                    AVG bytes (min AVG/4, max AVG*4)
 *
 * Output (stdout), one 48-byte record per chunk, little-endian:
 *   u64 offset, u32 length, u32 flags (bit 0: every byte is zero),
 *   u8[32] SHA-256 of the chunk (all zero for an all-zero chunk).
 * fixed mode skips all-zero blocks and holes (SEEK_DATA/SEEK_HOLE), as
 * the store does; cdc mode reads the whole image (holes as zeros, since
 * a zero run moves boundaries too) and reports zero chunks with bit 0.
 *
 * The CDC is a gear rolling hash with FastCDC's normalized chunking
 * (Xia et al., USENIX ATC 2016): a stricter cut condition below the
 * average size, a looser one above it, so sizes cluster near AVG.  Its
 * gear table comes from a fixed seed, so runs are reproducible.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#define MIN_FIXED 4096
#define MAX_FIXED (1024 * 1024)
#define READ_SIZE (4 * 1024 * 1024)

struct out_record {
  uint64_t offset;
  uint32_t length;
  uint32_t flags;
  uint8_t hash[32];
};
_Static_assert (sizeof (struct out_record) == 48, "output record size");

static EVP_MD_CTX *md_ctx;
static const EVP_MD *md;

static bool
all_zero (const uint8_t *p, size_t n)
{
  /* memcmp against itself shifted: zero iff first byte zero and the
   * buffer equals itself moved by one.
   */
  return n == 0 || (p[0] == 0 && memcmp (p, p + 1, n - 1) == 0);
}

static int
emit (uint64_t offset, const uint8_t *data, uint32_t len)
{
  struct out_record r = { .offset = offset, .length = len };
  unsigned hlen;

  if (all_zero (data, len))
    r.flags = 1;
  else if (EVP_DigestInit_ex (md_ctx, md, NULL) != 1
           || EVP_DigestUpdate (md_ctx, data, len) != 1
           || EVP_DigestFinal_ex (md_ctx, r.hash, &hlen) != 1) {
    fprintf (stderr, "space-chunker: SHA-256 failed\n");
    return -1;
  }
  if (fwrite (&r, sizeof r, 1, stdout) != 1) {
    perror ("space-chunker: stdout");
    return -1;
  }
  return 0;
}

/* Read exactly len bytes at off (short only at end of file). */
static ssize_t
pread_full (int fd, uint8_t *buf, size_t len, off_t off)
{
  size_t done = 0;

  while (done < len) {
    ssize_t r = pread (fd, buf + done, len - done, off + done);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0)
      break;
    done += r;
  }
  return done;
}

static int
chunk_fixed (int fd, const char *path, uint32_t size, off_t end)
{
  uint8_t *buf = malloc (size);
  off_t off = 0;
  int ret = -1;

  if (buf == NULL) {
    perror ("space-chunker: malloc");
    return -1;
  }
  while (off < end) {
    /* Skip holes: the store never reads them either. */
    off_t data = lseek (fd, off, SEEK_DATA);
    if (data == -1) {
      if (errno == ENXIO)     /* no data past off */
        break;
      fprintf (stderr, "space-chunker: %s: SEEK_DATA: %m\n", path);
      goto out;
    }
    off = data / size * size;
    ssize_t n = pread_full (fd, buf, size, off);
    if (n == -1) {
      fprintf (stderr, "space-chunker: %s: read: %m\n", path);
      goto out;
    }
    if (n == 0)
      break;
    if ((size_t) n < size)    /* the last block: zero-padded, as stored */
      memset (buf + n, 0, size - n);
    if (!all_zero (buf, size) && emit (off, buf, size) == -1)
      goto out;
    off += size;
  }
  ret = 0;
 out:
  free (buf);
  return ret;
}

static uint64_t gear[256];

static uint64_t
splitmix64 (uint64_t *state)
{
  uint64_t z = (*state += UINT64_C (0x9E3779B97F4A7C15));
  z = (z ^ (z >> 30)) * UINT64_C (0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C (0x94D049BB133111EB);
  return z ^ (z >> 31);
}

/* A mask of n one-bits at the top of the word: the gear hash's high bits
 * depend on the most bytes of the window.
 */
static uint64_t
top_bits (unsigned n)
{
  return n == 0 ? 0 : ~UINT64_C (0) << (64 - n);
}

static int
chunk_cdc (int fd, const char *path, uint32_t avg)
{
  const uint32_t min = avg / 4, max = avg * 4;
  unsigned bits = 0;
  uint64_t seed = UINT64_C (0x6e626463617321);  /* "nbdcas!" */
  /* Buffer: a whole maximal chunk always fits after the unread tail. */
  size_t cap = READ_SIZE + max;
  uint8_t *buf = malloc (cap);
  size_t have = 0, start = 0;
  uint64_t buf_off = 0;    /* image offset of buf[0] */
  bool eof = false;
  int ret = -1;

  if (buf == NULL) {
    perror ("space-chunker: malloc");
    return -1;
  }
  while ((UINT32_C (1) << bits) < avg)
    bits++;
  /* Normalization level 2: 2 bits stricter below avg, 2 looser above. */
  const uint64_t mask_small = top_bits (bits + 2);
  const uint64_t mask_large = top_bits (bits - 2);
  for (int i = 0; i < 256; i++)
    gear[i] = splitmix64 (&seed);

  for (;;) {
    if (!eof && have - start < max) {
      /* Move the unread tail to the front and refill. */
      memmove (buf, buf + start, have - start);
      buf_off += start;
      have -= start;
      start = 0;
      ssize_t n = pread_full (fd, buf + have, cap - have, buf_off + have);
      if (n == -1) {
        fprintf (stderr, "space-chunker: %s: read: %m\n", path);
        goto out;
      }
      if (n == 0)
        eof = true;
      have += n;
    }
    size_t left = have - start;
    if (left == 0)
      break;
    size_t len;
    if (left <= min)
      len = left;
    else {
      const uint8_t *p = buf + start;
      size_t limit = left < max ? left : max;
      size_t i = min;
      uint64_t h = 0;
      len = limit;
      for (; i < limit && i < avg; i++) {
        h = (h << 1) + gear[p[i]];
        if ((h & mask_small) == 0) {
          len = i + 1;
          goto cut;
        }
      }
      for (; i < limit; i++) {
        h = (h << 1) + gear[p[i]];
        if ((h & mask_large) == 0) {
          len = i + 1;
          goto cut;
        }
      }
    }
  cut:
    if (emit (buf_off + start, buf + start, len) == -1)
      goto out;
    start += len;
  }
  ret = 0;
 out:
  free (buf);
  return ret;
}

static int
usage (void)
{
  fprintf (stderr, "usage: space-chunker fixed SIZE IMAGE\n"
                   "       space-chunker cdc AVG IMAGE\n");
  return 2;
}

int
main (int argc, char **argv)
{
  char *end;
  unsigned long size;
  int fd, r;

  if (argc != 4)
    return usage ();
  errno = 0;
  size = strtoul (argv[2], &end, 0);
  if (errno || *end || size < MIN_FIXED || size > MAX_FIXED
      || (size & (size - 1)) != 0) {
    fprintf (stderr, "space-chunker: SIZE/AVG '%s': a power of two "
             "from 4096 to 1048576 is allowed\n", argv[2]);
    return 2;
  }
  fd = open (argv[3], O_RDONLY);
  if (fd == -1) {
    fprintf (stderr, "space-chunker: %s: %m\n", argv[3]);
    return 1;
  }
  md = EVP_sha256 ();
  md_ctx = EVP_MD_CTX_new ();
  if (md_ctx == NULL) {
    fprintf (stderr, "space-chunker: EVP_MD_CTX_new failed\n");
    return 1;
  }
  if (strcmp (argv[1], "fixed") == 0) {
    off_t e = lseek (fd, 0, SEEK_END);
    r = e == -1 ? -1 : chunk_fixed (fd, argv[3], size, e);
  }
  else if (strcmp (argv[1], "cdc") == 0)
    r = chunk_cdc (fd, argv[3], size);
  else
    return usage ();
  if (r == 0 && fflush (stdout) != 0) {
    perror ("space-chunker: stdout");
    r = -1;
  }
  EVP_MD_CTX_free (md_ctx);
  close (fd);
  return r == 0 ? 0 : 1;
}
