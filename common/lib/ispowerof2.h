/* Power-of-two test, one definition for the whole tree.
 * Pure: thread-safe.  Unit test: test-ispowerof2.c.
 */
#ifndef NBDCAS_ISPOWEROF2_H
#define NBDCAS_ISPOWEROF2_H

#include <stdbool.h>
#include <stdint.h>

/* True for 1, 2, 4, ... 2^63; false for 0 and everything else. */
static inline bool
is_power_of_2 (uint64_t v)
{
  return v != 0 && (v & (v - 1)) == 0;
}

/* log2 of a power of two (is_power_of_2 (v) must hold). */
static inline unsigned
log_2_bits (uint64_t v)
{
  return 63 - (unsigned) __builtin_clzll (v);
}

#endif /* NBDCAS_ISPOWEROF2_H */
