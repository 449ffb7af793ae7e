/* What the C test programs share: CHECK counts a failed condition (with
 * its file and line on stderr) and goes on, so one run reports every
 * failure; main returns failures ? 1 : 0.  The backend's debug messages
 * are dropped (each program defines its own backend_error: some count
 * or keep messages they expect).  Include once, in the program's .c.
 */
#ifndef NBDCAS_TESTS_CCHECK_H
#define NBDCAS_TESTS_CCHECK_H

#include <stdio.h>

#include "backend.h"

void
backend_debug (const char *fmt, ...)
{
  (void) fmt;
}

static int failures;

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf (stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
               #cond);                                                  \
      failures++;                                                       \
    }                                                                   \
  } while (0)

#endif /* NBDCAS_TESTS_CCHECK_H */
