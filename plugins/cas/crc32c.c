/* CRC32C: SSE4.2 instruction when available, slicing-by-8 otherwise.
 * See crc32c.h for the contract.
 */
#include <config.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "crc32c.h"

#define POLY 0x82F63B78u        /* 0x1EDC6F41 reflected */
#define STRIDE 1360             /* 3 streams (crc_sse42): 3 x 1360 + 16
                                   is one 4 KiB piece */

static uint32_t table[8][256];
/* x2n[k] = x^(2^k) modulo the polynomial (reflected bit order). */
static uint32_t x2n[64];
/* The raw register after STRIDE more zero bytes, a byte at a time. */
static uint32_t shift[4][256];
static bool have_sse42;
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* a * b modulo the polynomial, both reflected (bit 31 is x^0). */
static uint32_t
mulmod (uint32_t a, uint32_t b)
{
  uint32_t m = UINT32_C (1) << 31, p = 0;

  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0)
        break;
    }
    m >>= 1;
    b = b & 1 ? (b >> 1) ^ POLY : b >> 1;
  }
  return p;
}

static void
init (void)
{
  uint32_t i, j, c;

  for (i = 0; i < 256; i++) {
    c = i;
    for (j = 0; j < 8; j++)
      c = (c >> 1) ^ (POLY & (0u - (c & 1)));
    table[0][i] = c;
  }
  for (i = 0; i < 256; i++)
    for (j = 1; j < 8; j++)
      table[j][i] = (table[j - 1][i] >> 8) ^ table[0][table[j - 1][i] & 0xff];
  x2n[0] = UINT32_C (1) << 30;  /* x^1 */
  for (i = 1; i < 64; i++)
    x2n[i] = mulmod (x2n[i - 1], x2n[i - 1]);
#if defined(__x86_64__)
  {
    /* x^(8 STRIDE) as a multiplier, then the map of each byte value. */
    uint32_t m = UINT32_C (1) << 31, n = 8 * STRIDE, k;

    for (k = 0; n; n >>= 1, k++)
      if (n & 1)
        m = mulmod (x2n[k], m);
    for (j = 0; j < 4; j++)
      for (i = 0; i < 256; i++)
        shift[j][i] = mulmod (m, i << (8 * j));
  }
#endif
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init ();
  have_sse42 = __builtin_cpu_supports ("sse4.2");
#endif
}

static uint32_t
crc_table (uint32_t c, const uint8_t *p, size_t len)
{
  /* Byte at a time to 8-byte alignment, then 8 bytes per step. */
  while (len && ((uintptr_t) p & 7)) {
    c = table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    len--;
  }
  while (len >= 8) {
    uint32_t lo = c ^ ((uint32_t) p[0] | (uint32_t) p[1] << 8 |
                       (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24);
    uint32_t hi = (uint32_t) p[4] | (uint32_t) p[5] << 8 |
      (uint32_t) p[6] << 16 | (uint32_t) p[7] << 24;
    c = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^
      table[5][(lo >> 16) & 0xff] ^ table[4][lo >> 24] ^
      table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^
      table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
    p += 8;
    len -= 8;
  }
  while (len--)
    c = table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
/* The crc32 instruction has a latency of 3 cycles and a throughput of 1:
 * one stream runs at a third of its speed.  So long buffers are taken
 * STRIDE * 3 bytes at a time, as three streams side by side, joined with
 * shift[]: appending STRIDE bytes multiplies the raw register by
 * x^(8 STRIDE), a linear map applied a byte of the register at a time.
 * (Reading and checking the 64 KiB of a block is the whole cost of a
 * sequential read here: this makes its CRC about 3x cheaper.)
 */

__attribute__ ((target ("sse4.2")))
static uint32_t
crc_sse42_1 (uint64_t c64, const uint8_t *p, size_t len)
{
  while (len >= 8) {
    uint64_t v;
    memcpy (&v, p, 8);          /* keep strict aliasing */
    c64 = __builtin_ia32_crc32di (c64, v);
    p += 8;
    len -= 8;
  }
  while (len--)
    c64 = __builtin_ia32_crc32qi ((uint32_t) c64, *p++);
  return (uint32_t) c64;
}

static uint32_t
shift_stride (uint32_t c)
{
  return shift[0][c & 0xff] ^ shift[1][(c >> 8) & 0xff] ^
    shift[2][(c >> 16) & 0xff] ^ shift[3][c >> 24];
}

__attribute__ ((target ("sse4.2")))
static uint32_t
crc_sse42 (uint32_t c, const uint8_t *p, size_t len)
{
  while (len >= 3 * STRIDE) {
    uint64_t a = c, b = 0, d = 0;
    const uint8_t *q = p + STRIDE, *r = p + 2 * STRIDE;
    size_t i;

    for (i = 0; i < STRIDE; i += 8) {
      uint64_t x, y, z;
      memcpy (&x, p + i, 8);
      memcpy (&y, q + i, 8);
      memcpy (&z, r + i, 8);
      a = __builtin_ia32_crc32di (a, x);
      b = __builtin_ia32_crc32di (b, y);
      d = __builtin_ia32_crc32di (d, z);
    }
    c = shift_stride (shift_stride ((uint32_t) a) ^ (uint32_t) b) ^
      (uint32_t) d;
    p += 3 * STRIDE;
    len -= 3 * STRIDE;
  }
  return crc_sse42_1 (c, p, len);
}
#endif
uint32_t
crc32c (uint32_t crc, const void *buf, size_t len)
{
  uint32_t c = ~crc;

  pthread_once (&once, init);
#if defined(__x86_64__)
  if (have_sse42)
    return ~crc_sse42 (c, buf, len);
#endif
  return ~crc_table (c, buf, len);
}

/* Appending len2 bytes to a message multiplies its CRC register by
 * x^(8 len2); the pre- and post-conditioning (~) cancel out of the
 * combination, so the conditioned CRCs combine directly.
 */
uint32_t
crc32c_combine (uint32_t crc1, uint32_t crc2, uint64_t len2)
{
  uint32_t p = UINT32_C (1) << 31;      /* x^0 */
  unsigned k = 3;                       /* 8 len2 = len2 << 3 */

  pthread_once (&once, init);
  for (; len2; len2 >>= 1, k++)
    if (len2 & 1)
      p = mulmod (x2n[k & 63], p);
  return mulmod (p, crc1) ^ crc2;
}
