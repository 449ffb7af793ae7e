/* SHA-256 with one EVP_MD_CTX per thread; see hash.h. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>

#include "backend.h"
#include "hash.h"

static pthread_key_t ctx_key;
static pthread_once_t once = PTHREAD_ONCE_INIT;
/* Fetched once: EVP_sha256() would re-resolve the provider per call. */
static EVP_MD *sha256;

static void
free_ctx (void *p)
{
  EVP_MD_CTX_free (p);
}

static void
init (void)
{
  pthread_key_create (&ctx_key, free_ctx);
  sha256 = EVP_MD_fetch (NULL, "SHA256", NULL);
}

/* At unload (dlclose of the plugin, or exit): quiet leak checkers. */
static void free_sha256 (void) __attribute__ ((destructor));
static void
free_sha256 (void)
{
  EVP_MD_free (sha256);
  sha256 = NULL;
}

int
cas_hash_compute (const void *data, size_t len, struct cas_hash *out)
{
  EVP_MD_CTX *ctx;
  unsigned int n = 0;

  pthread_once (&once, init);
  ctx = pthread_getspecific (ctx_key);
  if (ctx == NULL) {
    ctx = EVP_MD_CTX_new ();
    if (ctx == NULL || pthread_setspecific (ctx_key, ctx) != 0) {
      EVP_MD_CTX_free (ctx);
      goto err;
    }
  }
  if (sha256 == NULL ||
      EVP_DigestInit_ex (ctx, sha256, NULL) != 1 ||
      EVP_DigestUpdate (ctx, data, len) != 1 ||
      EVP_DigestFinal_ex (ctx, out->b, &n) != 1 ||
      n != CAS_HASH_SIZE)
    goto err;
  return 0;

 err:
  backend_error ("cas: OpenSSL SHA-256 failed");
  errno = EIO;
  return -1;
}

char *
cas_hash_hex (const struct cas_hash *h, char buf[2 * CAS_HASH_SIZE + 1])
{
  static const char hex[] = "0123456789abcdef";
  size_t i;

  for (i = 0; i < CAS_HASH_SIZE; i++) {
    buf[2 * i] = hex[h->b[i] >> 4];
    buf[2 * i + 1] = hex[h->b[i] & 15];
  }
  buf[2 * CAS_HASH_SIZE] = '\0';
  return buf;
}

static int
hexval (char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int
cas_hash_parse (const char *s, struct cas_hash *out)
{
  size_t i;

  if (strlen (s) != 2 * CAS_HASH_SIZE)
    goto bad;
  for (i = 0; i < CAS_HASH_SIZE; i++) {
    int hi = hexval (s[2 * i]), lo = hexval (s[2 * i + 1]);
    if (hi < 0 || lo < 0)
      goto bad;
    out->b[i] = (uint8_t) (hi << 4 | lo);
  }
  return 0;
 bad:
  backend_error ("cas: '%s' is not a SHA-256 hash (64 hex digits)", s);
  errno = EINVAL;
  return -1;
}

bool
cas_is_zero (const void *buf, size_t len)
{
  const unsigned char *p = buf;
  size_t i;

  /* Check a 16-byte head, then compare the buffer with itself shifted:
   * memcmp is vectorised in glibc, so this runs at memory speed.
   */
  for (i = 0; i < len && i < 16; i++)
    if (p[i])
      return false;
  if (len <= 16)
    return true;
  return memcmp (p, p + 16, len - 16) == 0;
}
