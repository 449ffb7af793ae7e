/* SHA-256 chunk names and the all-zero test.
 *
 * Contract: cas_hash_compute() is SHA-256 (OpenSSL EVP) of the bytes.  The
 * all-zero hash (32 zero bytes) is reserved: it names "no chunk" (an
 * unmapped block or an all-zero subtree of the block map), never stored
 * content.  SHA-256 of any real input is never all zero in practice.
 *
 * Thread safety: all functions are thread-safe; cas_hash_compute() keeps
 * one EVP_MD_CTX per calling thread, so many threads hash in parallel
 * without any shared state.
 */
#ifndef NBDCAS_HASH_H
#define NBDCAS_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define CAS_HASH_SIZE 32

struct cas_hash {
  uint8_t b[CAS_HASH_SIZE];
};
_Static_assert (sizeof (struct cas_hash) == CAS_HASH_SIZE, "hash size");

/* Returns -1 (errno EIO, with a message) only if OpenSSL fails. */
int cas_hash_compute (const void *data, size_t len, struct cas_hash *out);

static inline bool
cas_hash_is_zero (const struct cas_hash *h)
{
  static const struct cas_hash zero;
  return memcmp (h, &zero, sizeof zero) == 0;
}

static inline bool
cas_hash_equal (const struct cas_hash *a, const struct cas_hash *b)
{
  return memcmp (a, b, sizeof *a) == 0;
}

/* Lower-case hex, 64 chars + NUL; returns buf. */
char *cas_hash_hex (const struct cas_hash *h, char buf[2 * CAS_HASH_SIZE + 1]);
/* Parse 64 hex digits; -1/EINVAL otherwise. */
int cas_hash_parse (const char *hex, struct cas_hash *out);

/* True if buf[0..len) is all zero bytes (fast, word at a time). */
bool cas_is_zero (const void *buf, size_t len);

#endif /* NBDCAS_HASH_H */
