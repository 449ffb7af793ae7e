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

void
cas_test_point (const char *name)
{
  const char *want = getenv ("NBDCAS_TEST_STOP");
  const char *path = getenv ("NBDCAS_TEST_STOP_FIFO"), *resume;
  char line[300];
  int n, fd;

  static _Atomic unsigned hits;
  const char *nth = getenv ("NBDCAS_TEST_STOP_NTH");

  if (want == NULL || strcmp (want, name) != 0)
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
