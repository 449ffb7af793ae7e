/* Unit test of minmax.h. */
#include <config.h>

#include <assert.h>
#include <stdint.h>
#include <stdio.h>

#include "minmax.h"

static int calls;

static int
counted (int v)
{
  calls++;
  return v;
}

int
main (void)
{
  int i = 3;
  uint64_t big = UINT64_C (1) << 40;
  uint32_t small = 7;

  assert (MIN (1, 2) == 1 && MIN (2, 1) == 1 && MIN (-5, 5) == -5);
  assert (MAX (1, 2) == 2 && MAX (2, 1) == 2 && MAX (-5, 5) == 5);
  assert (MIN (big, small) == 7 && MAX (big, small) == big);
  /* Each argument once. */
  assert (MIN (i++, 10) == 3 && i == 4);
  assert (MAX (counted (1), counted (2)) == 2 && calls == 2);
  /* Nested (distinct temporaries). */
  assert (MIN (MIN (5, 4), MAX (3, 2)) == 3);
  assert (MAX (MAX (1, MIN (9, 8)), 7) == 8);
  printf ("minmax: ok\n");
  return 0;
}
