/* CRC32C (Castagnoli, the iSCSI/ext4 polynomial 0x1EDC6F41, reflected).
 *
 * Contract: crc32c(0, buf, len) is the standard CRC32C of buf (initial
 * value ~0, final xor ~0 are applied inside), and
 * crc32c(crc32c(0, a, n), b, m) == crc32c(0, a||b, n+m).  Uses the SSE4.2
 * crc32 instruction when the CPU has it (checked once at run time), else
 * a slicing-by-8 table.
 *
 * crc32c_combine(crc32c(0, a, n), crc32c(0, b, m), m) ==
 * crc32c(0, a||b, n+m): the CRC of a concatenation from the CRCs of its
 * parts (a product in GF(2)[x] modulo the polynomial, about 100 ns), so
 * that per-piece CRCs give the whole CRC without a second pass.
 *
 * Thread safety: pure function; the first call initialises tables under
 * pthread_once.
 */
#ifndef NBDCAS_CRC32C_H
#define NBDCAS_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t crc32c (uint32_t crc, const void *buf, size_t len);
uint32_t crc32c_combine (uint32_t crc1, uint32_t crc2, uint64_t len2);

#endif /* NBDCAS_CRC32C_H */
