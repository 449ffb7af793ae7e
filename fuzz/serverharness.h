/* Driving minnbd's real connection code (common/server/conn.c) with a
 * byte stream, for the server fuzz targets.
 *
 * Contract: the harness links the server library (libminnbd.la) and
 * sets up what minnbd_main() would (harness_init): the backend B (the
 * memory backend, membackend.h) and the options.
 * serve_bytes() plays one client: it sends the bytes through a socketpair
 * into conn_serve() (running on the calling thread), then half-closes its
 * side, drains every reply, and returns once conn_serve() has returned --
 * i.e. once the connection's workers have been joined -- so every input
 * is complete and independent of the next (deterministic enough for
 * libFuzzer).  Replies are discarded; the fuzzers look for crashes,
 * sanitizer reports and hangs, not for protocol answers.
 *
 * Thread safety: one serve_bytes() at a time (libFuzzer runs inputs
 * sequentially).
 */
#ifndef NBDCAS_FUZZ_SERVERHARNESS_H
#define NBDCAS_FUZZ_SERVERHARNESS_H

#include <stddef.h>
#include <stdint.h>

/* One-time setup (signals, backend, options).  Idempotent. */
void harness_init (void);

/* Serve one connection whose client sends exactly the given bytes. */
void serve_bytes (const uint8_t *data, size_t size);

#endif /* NBDCAS_FUZZ_SERVERHARNESS_H */
