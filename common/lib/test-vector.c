/* Unit test of vector.h. */
#include <config.h>

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vector.h"

DEFINE_VECTOR_TYPE (int_vector, int);
DEFINE_VECTOR_TYPE (string_vector, char *);

struct big { char bytes[1 << 20]; };
DEFINE_VECTOR_TYPE (big_vector, struct big);

static void
free_string (char **s)
{
  free (*s);
}

int
main (void)
{
  int_vector v = empty_vector;
  string_vector sv = empty_vector;
  big_vector bv = empty_vector;
  size_t i;

  /* Appends keep order and values; capacity grows geometrically. */
  for (i = 0; i < 100000; i++)
    assert (int_vector_append (&v, (int) i * 3) == 0);
  assert (v.len == 100000 && v.cap >= v.len && v.cap < 2 * v.len + 8);
  for (i = 0; i < v.len; i++)
    assert (v.ptr[i] == (int) i * 3);

  /* clear keeps the memory, reset frees it. */
  int_vector_clear (&v);
  assert (v.len == 0 && v.cap >= 100000 && v.ptr != NULL);
  int_vector_reset (&v);
  assert (v.len == 0 && v.cap == 0 && v.ptr == NULL);

  /* reserve: room without changing len. */
  assert (int_vector_reserve (&v, 10) == 0);
  assert (v.len == 0 && v.cap >= 10);
  int_vector_reset (&v);

  /* Overflowing requests fail with ENOMEM and change nothing. */
  assert (int_vector_append (&v, 1) == 0);
  errno = 0;
  assert (int_vector_reserve (&v, SIZE_MAX) == -1 && errno == ENOMEM);
  errno = 0;
  assert (int_vector_reserve (&v, SIZE_MAX / sizeof (int)) == -1 &&
          errno == ENOMEM);
  assert (v.len == 1 && v.ptr[0] == 1);
  int_vector_reset (&v);
  errno = 0;
  assert (big_vector_reserve (&bv, SIZE_MAX / (1 << 19)) == -1 &&
          errno == ENOMEM && bv.ptr == NULL);

  /* free_all frees what the elements own (valgrind/ASan check it). */
  for (i = 0; i < 100; i++) {
    char *s = strdup ("element");

    assert (s && string_vector_append (&sv, s) == 0);
  }
  string_vector_free_all (&sv, free_string);
  assert (sv.len == 0 && sv.ptr == NULL);

  printf ("vector: ok\n");
  return 0;
}
