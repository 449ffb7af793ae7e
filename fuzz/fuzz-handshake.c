/* libFuzzer target: minnbd's handshake and option parsing.
 *
 * The input is everything a client sends, from the client flags on: it is
 * written through a socketpair into the real conn_serve() (handshake.c,
 * then transmission if an option succeeds) against the memory backend.
 * Seeds (fuzz/corpus/handshake/) are the byte streams of real client
 * handshakes: libnbd's GO with structured replies and base:allocation,
 * LIST, INFO, the old EXPORT_NAME, STARTTLS, unknown options, ABORT.
 */
#include <config.h>

#include <stddef.h>
#include <stdint.h>

#include "serverharness.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  harness_init ();
  serve_bytes (data, size);
  return 0;
}
