/* libFuzzer target: minnbd's transmission phase (request parsing,
 * validation, execution, replies, pipelining with workers).
 *
 * The input's first byte chooses the session: bits 0-1 the export of the
 * memory backend ("", "ro", "small", "emul": see membackend.h), bit 2
 * simple replies only (no NBD_OPT_STRUCTURED_REPLY), bit 3 no metadata
 * context.  The harness sends a valid fixed-newstyle handshake for it
 * (client flags FIXED_NEWSTYLE|NO_ZEROES, STRUCTURED_REPLY,
 * SET_META_CONTEXT base:allocation, GO with INFO_NAME/INFO_BLOCK_SIZE)
 * followed by the rest of the input as the request stream.
 */
#include <config.h>

#include <endian.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nbd-protocol.h"
#include "serverharness.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static size_t
put32 (uint8_t *p, uint32_t v)
{
  v = htobe32 (v);
  memcpy (p, &v, 4);
  return 4;
}

static size_t
put_option (uint8_t *p, uint32_t option, const void *payload, uint32_t len)
{
  uint64_t magic = htobe64 (NBD_OPT_MAGIC);

  memcpy (p, &magic, 8);
  put32 (p + 8, option);
  put32 (p + 12, len);
  if (len)
    memcpy (p + 16, payload, len);
  return 16 + len;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static const char *const exports[] = { "", "ro", "small", "emul" };
  static const char ctx[] = "base:allocation";
  uint8_t pre[512], opt[256], *buf;
  size_t n = 0, k, elen;
  const char *export;
  unsigned sel;

  if (size < 1)
    return 0;
  sel = data[0];
  export = exports[sel & 3];
  elen = strlen (export);
  harness_init ();

  n += put32 (pre + n, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  if (!(sel & 4)) {
    n += put_option (pre + n, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
    if (!(sel & 8)) {
      k = put32 (opt, elen);
      memcpy (opt + k, export, elen);
      k += elen;
      k += put32 (opt + k, 1);
      k += put32 (opt + k, sizeof ctx - 1);
      memcpy (opt + k, ctx, sizeof ctx - 1);
      k += sizeof ctx - 1;
      n += put_option (pre + n, NBD_OPT_SET_META_CONTEXT, opt, k);
    }
  }
  k = put32 (opt, elen);
  memcpy (opt + k, export, elen);
  k += elen;
  opt[k++] = 0;                 /* two information requests */
  opt[k++] = 2;
  opt[k++] = 0;
  opt[k++] = NBD_INFO_NAME;
  opt[k++] = 0;
  opt[k++] = NBD_INFO_BLOCK_SIZE;
  n += put_option (pre + n, NBD_OPT_GO, opt, k);

  buf = malloc (n + size - 1);
  if (buf == NULL)
    abort ();
  memcpy (buf, pre, n);
  memcpy (buf + n, data + 1, size - 1);
  serve_bytes (buf, n + size - 1);
  free (buf);
  return 0;
}
