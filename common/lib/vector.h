/* Growable arrays, instead of hand-grown realloc arrays.
 *
 *   DEFINE_VECTOR_TYPE (int_vector, int);
 *   int_vector v = empty_vector;
 *   if (int_vector_append (&v, 42) == -1) ... (errno = ENOMEM)
 *   for (size_t i = 0; i < v.len; i++) use (v.ptr[i]);
 *   int_vector_reset (&v);
 *
 * The capacity doubles (at least 8 elements), so appending n elements
 * costs O(n); every size computation is checked for overflow.  A vector
 * is a plain struct: it belongs to whoever holds it, no locking.
 * Unit test: test-vector.c.
 */
#ifndef NBDCAS_VECTOR_H
#define NBDCAS_VECTOR_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define empty_vector { .ptr = NULL, .len = 0, .cap = 0 }

/* Make room for n more elements than len (len does not change).  0, or
 * -1 with errno ENOMEM (the vector is unchanged).
 */
static inline int
generic_vector_reserve (void **ptr, size_t len, size_t *cap, size_t n,
                        size_t elemsize)
{
  size_t want, ncap;
  void *p;

  if (n > SIZE_MAX - len) {
    errno = ENOMEM;
    return -1;
  }
  want = len + n;
  if (want <= *cap)
    return 0;
  ncap = *cap < 8 ? 8 : *cap;
  while (ncap < want)
    ncap = ncap > SIZE_MAX / 2 ? want : ncap * 2;
  if (ncap > SIZE_MAX / elemsize) {
    errno = ENOMEM;
    return -1;
  }
  p = realloc (*ptr, ncap * elemsize);
  if (p == NULL) {
    errno = ENOMEM;
    return -1;
  }
  *ptr = p;
  *cap = ncap;
  return 0;
}

#define DEFINE_VECTOR_TYPE(name, type)                                  \
  typedef struct name {                                                 \
    type *ptr;                  /* elements 0 .. len-1 */               \
    size_t len;                                                         \
    size_t cap;                 /* allocated elements */                \
  } name;                                                               \
                                                                        \
  static inline __attribute__ ((unused)) int                            \
  name##_reserve (name *v, size_t n)                                    \
  {                                                                     \
    void *p = v->ptr;                                                   \
    int r = generic_vector_reserve (&p, v->len, &v->cap, n,             \
                                    sizeof (type));                     \
    v->ptr = p;                                                         \
    return r;                                                           \
  }                                                                     \
                                                                        \
  /* Append one element: 0, or -1 with errno ENOMEM. */                 \
  static inline __attribute__ ((unused)) int                            \
  name##_append (name *v, type elem)                                    \
  {                                                                     \
    if (v->len == v->cap && name##_reserve (v, 1) == -1)                \
      return -1;                                                        \
    v->ptr[v->len++] = elem;                                            \
    return 0;                                                           \
  }                                                                     \
                                                                        \
  /* Forget the elements, keep the memory. */                           \
  static inline __attribute__ ((unused)) void                           \
  name##_clear (name *v)                                                \
  {                                                                     \
    v->len = 0;                                                         \
  }                                                                     \
                                                                        \
  /* Free the memory (not what the elements point to). */               \
  static inline __attribute__ ((unused)) void                           \
  name##_reset (name *v)                                                \
  {                                                                     \
    free (v->ptr);                                                      \
    v->ptr = NULL;                                                      \
    v->len = v->cap = 0;                                                \
  }                                                                     \
                                                                        \
  /* Call f on each element, then reset. */                             \
  static inline __attribute__ ((unused)) void                           \
  name##_free_all (name *v, void (*f) (type *))                         \
  {                                                                     \
    for (size_t i = 0; i < v->len; i++)                                 \
      f (&v->ptr[i]);                                                   \
    name##_reset (v);                                                   \
  }

#endif /* NBDCAS_VECTOR_H */
