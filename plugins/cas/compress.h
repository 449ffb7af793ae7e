/* Compression of data records (FORMAT.md, "Compression"): lz4 and zstd
 * behind one pair of calls.
 *
 * Contract: cas_compress either produces a stream that cas_decompress
 * turns back into exactly the input, or says it did not fit in the room
 * given (the caller then stores the block raw).  cas_decompress never
 * writes past its output, and fails (-1/EIO, no message: the caller names
 * the record) unless the stream decodes to exactly raw_length bytes: a
 * damaged stream is never taken for data.  Callers check the stored
 * bytes' CRC32C before decompressing; this is the second line.
 *
 * A pool keeps the codecs' contexts (zstd's are allocated, and costly to
 * make per block) for reuse; pool may be NULL (a context is made for the
 * call: fine for scans and tests, slow on the data path).
 *
 * Thread safety: a pool may be used from many threads at once (a context
 * is taken out under a short lock and given back after the call).
 */
#ifndef NBDCAS_COMPRESS_H
#define NBDCAS_COMPRESS_H

#include <stdint.h>

#include "format.h"

struct cas_codec_pool;

struct cas_codec_pool *cas_codec_pool_new (void);
void cas_codec_pool_free (struct cas_codec_pool *pool);

/* Compress src[0 .. len) with c (not CAS_CODEC_NONE) into dst (room
 * bytes).  Returns 0 with *out the compressed length, or 0 with *out = 0
 * if the result would not fit in room; -1/ENOMEM (or EINVAL: bad codec)
 * with a message.
 */
int cas_compress (struct cas_codec_pool *pool, const struct cas_compression *c,
                  const void *src, uint32_t len, void *dst, uint32_t room,
                  uint32_t *out);

/* Decompress src[0 .. len), encoded with codec, into dst, which must
 * receive exactly raw_length bytes.  0, or -1 with errno EIO (the stream
 * is damaged or of another length) or ENOMEM, without a message.
 */
int cas_decompress (struct cas_codec_pool *pool, uint8_t codec,
                    const void *src, uint32_t len, void *dst,
                    uint32_t raw_length);

/* The same for only the first want bytes of the block (want <= its raw
 * length): what a partial read needs, at about want / raw_length of the
 * work.  The rest of the stream is not decoded, so nothing says it would
 * decode: callers check the stored bytes' CRC first.  0, or -1 with
 * errno EIO (the stream is damaged or ends before want) or ENOMEM.
 */
int cas_decompress_prefix (struct cas_codec_pool *pool, uint8_t codec,
                           const void *src, uint32_t len, void *dst,
                           uint32_t want);

#endif /* NBDCAS_COMPRESS_H */
