/* Test points: see testpoint.h. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testpoint.h"

/* Is name one of the comma-separated names of want? */
static int
listed (const char *want, const char *name)
{
  size_t len = strlen (name);

  for (;;) {
    const char *comma = strchr (want, ',');
    size_t n = comma ? (size_t) (comma - want) : strlen (want);

    if (n == len && strncmp (want, name, len) == 0)
      return 1;
    if (comma == NULL)
      return 0;
    want = comma + 1;
  }
}

void
cas_test_point (const char *name)
{
  const char *want = getenv ("NBDCAS_TEST_STOP");
  const char *path = getenv ("NBDCAS_TEST_STOP_FIFO"), *resume;
  char line[300];
  int n, fd;

  static _Atomic unsigned hits;
  const char *nth = getenv ("NBDCAS_TEST_STOP_NTH");

  if (want == NULL || !listed (want, name))
    return;
  /* NBDCAS_TEST_STOP_NTH=k: only the k-th time this point is reached. */
  if (nth && atomic_fetch_add (&hits, 1) + 1 != strtoul (nth, NULL, 10))
    return;
  n = snprintf (line, sizeof line, "%s\n", name);
  if (path) {
    fd = open (path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      if (write (fd, line, n) != n)
        n = -1;
      close (fd);
    }
  }
  resume = getenv ("NBDCAS_TEST_RESUME_FIFO");
  if (resume) {
    char per_point[4096];
    /* A "%s" in it: one FIFO per point (two points stopped at once). */
    const char *at = strstr (resume, "%s");

    if (at) {
      snprintf (per_point, sizeof per_point, "%.*s%s%s",
                (int) (at - resume), resume, name, at + 2);
      resume = per_point;
    }
    fd = open (resume, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      while (read (fd, line, 1) == -1 && errno == EINTR)
        ;
      close (fd);
      return;
    }
  }
  for (;;)
    pause ();
}
