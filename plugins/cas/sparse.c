/* Sparse arrays.  See sparse.h for the contract. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sparse.h"

#define MAX_SHIFT 12            /* 4096 elements per page */

int
sparse_init (struct sparse *s, uint64_t count, size_t elem)
{
  memset (s, 0, sizeof *s);
  s->count = count;
  s->elem = elem;
  /* A small array is one page of just its size; a big one has pages of
   * 4096 elements (a multiple of SPARSE_RUN, so runs never straddle).
   */
  s->shift = 0;
  while (s->shift < MAX_SHIFT && (UINT64_C (1) << s->shift) < count)
    s->shift++;
  s->npages = (count + (UINT64_C (1) << s->shift) - 1) >> s->shift;
  if (s->npages == 0)
    s->npages = 1;
  s->pages = calloc (s->npages, sizeof *s->pages);
  if (s->pages == NULL) {
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

void
sparse_free (struct sparse *s, void (*fn) (void *elem))
{
  uint64_t p, i, per = UINT64_C (1) << s->shift;

  if (s->pages == NULL)
    return;
  for (p = 0; p < s->npages; p++) {
    char *page = atomic_load (&s->pages[p]);

    if (page == NULL)
      continue;
    if (fn)
      for (i = 0; i < per && (p << s->shift) + i < s->count; i++)
        fn (page + i * s->elem);
    free (page);
  }
  free (s->pages);
  s->pages = NULL;
}

void *
sparse_peek (const struct sparse *s, uint64_t i)
{
  char *page = atomic_load_explicit (&s->pages[i >> s->shift],
                                     memory_order_acquire);

  if (page == NULL)
    return NULL;
  return page + (i & ((UINT64_C (1) << s->shift) - 1)) * s->elem;
}

void *
sparse_get (struct sparse *s, uint64_t i)
{
  void *_Atomic *slot = &s->pages[i >> s->shift];
  char *page = atomic_load_explicit (slot, memory_order_acquire);

  if (page == NULL) {
    void *expected = NULL;

    page = calloc (UINT64_C (1) << s->shift, s->elem);
    if (page == NULL) {
      errno = ENOMEM;
      return NULL;
    }
    /* Another thread may have made the page meanwhile: use its. */
    if (!atomic_compare_exchange_strong (slot, &expected, page)) {
      free (page);
      page = expected;
    }
  }
  return page + (i & ((UINT64_C (1) << s->shift) - 1)) * s->elem;
}

uint64_t
sparse_next (const struct sparse *s, uint64_t i)
{
  uint64_t p;

  for (p = i >> s->shift; p < s->npages; p++)
    if (atomic_load_explicit (&s->pages[p], memory_order_acquire) != NULL) {
      uint64_t first = p << s->shift;
      if (first < i)
        first = i;
      return first < s->count ? first : s->count;
    }
  return s->count;
}
