/* Sparse arrays: COUNT fixed-size elements, all zero until written.
 * Memory is allocated a page (up to 4096 elements) at a time, on the
 * first request for a writable element of that page, so a volume map
 * costs memory for the parts that are mapped, not for its size (a
 * 1 PiB volume with 4 KiB blocks has 2^28 map leaves).
 *
 * Thread safety: pages are created with compare-and-swap and never
 * freed before sparse_free, so sparse_peek and sparse_get may run in
 * any threads at once.  The elements themselves are the caller's to
 * protect.  A run of elements [i, i + n) lies in one page when
 * i % SPARSE_RUN == 0 and n <= SPARSE_RUN.
 */
#ifndef NBDCAS_SPARSE_H
#define NBDCAS_SPARSE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Smallest page, in elements, when an array has more than one page. */
#define SPARSE_RUN 1024

struct sparse {
  uint64_t count;               /* elements */
  size_t elem;                  /* bytes per element */
  unsigned shift;               /* log2 (elements per page) */
  uint64_t npages;
  void *_Atomic *pages;
};

/* Set up an empty array; -1 with errno on error. */
int sparse_init (struct sparse *s, uint64_t count, size_t elem);

/* Free every page (after calling fn, if not NULL, on every element of
 * every allocated page), then the page table.  Safe on a zeroed struct.
 */
void sparse_free (struct sparse *s, void (*fn) (void *elem));

/* Element i, or NULL if its page was never allocated (it is zero). */
void *sparse_peek (const struct sparse *s, uint64_t i);

/* Element i, allocating its page; NULL with errno = ENOMEM. */
void *sparse_get (struct sparse *s, uint64_t i);

/* The first index >= i whose page is allocated, or s->count: walks
 * skip the unallocated pages without touching them.
 *   for (i = sparse_next (s, 0); i < s->count; i = sparse_next (s, i + 1))
 */
uint64_t sparse_next (const struct sparse *s, uint64_t i);

#endif /* NBDCAS_SPARSE_H */
