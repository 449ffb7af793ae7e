/* MIN and MAX that evaluate each argument exactly once (a MIN (x++, y)
 * or MIN (f (), y) is safe).  Mixing signed and unsigned arguments is
 * caught by -Wsign-compare (in -Wextra, an error here).
 * Pure: thread-safe.  Unit test: test-minmax.c.
 */
#ifndef NBDCAS_MINMAX_H
#define NBDCAS_MINMAX_H

#undef MIN
#undef MAX

#define MINMAX_CAT2(a, b) a##b
#define MINMAX_CAT(a, b) MINMAX_CAT2 (a, b)
#define MINMAX_(op, a, b, n)                                            \
  ({                                                                    \
    __auto_type MINMAX_CAT (minmax_a_, n) = (a);                        \
    __auto_type MINMAX_CAT (minmax_b_, n) = (b);                        \
    MINMAX_CAT (minmax_a_, n) op MINMAX_CAT (minmax_b_, n)              \
      ? MINMAX_CAT (minmax_a_, n) : MINMAX_CAT (minmax_b_, n);          \
  })
#define MIN(a, b) MINMAX_ (<, a, b, __COUNTER__)
#define MAX(a, b) MINMAX_ (>, a, b, __COUNTER__)

#endif /* NBDCAS_MINMAX_H */
