/* Unit test of ispowerof2.h. */
#include <config.h>

#include <assert.h>
#include <stdint.h>
#include <stdio.h>

#include "ispowerof2.h"

int
main (void)
{
  unsigned i;

  assert (!is_power_of_2 (0));
  for (i = 0; i < 64; i++) {
    uint64_t p = UINT64_C (1) << i;

    assert (is_power_of_2 (p));
    assert (log_2_bits (p) == i);
    if (i > 1)
      assert (!is_power_of_2 (p + 1) && !is_power_of_2 (p - 1));
    if (i < 63)
      assert (!is_power_of_2 (p | (p << 1)));
  }
  assert (!is_power_of_2 (UINT64_MAX));
  assert (!is_power_of_2 (3) && !is_power_of_2 (6) && !is_power_of_2 (4097));
  printf ("ispowerof2: ok\n");
  return 0;
}
