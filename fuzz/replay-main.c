/* A main() for the fuzz harnesses built without libFuzzer: feeds each
 * file named on the command line (or each file in a directory named
 * there) to LLVMFuzzerTestOneInput once.  A crash or sanitizer report
 * ends the program, so a zero exit means every input ran clean.  This is
 * how `make check` replays the seed corpora and fuzz/regressions/ in
 * builds without clang.
 */
#include <config.h>

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vector.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static int
run_file (const char *path)
{
  FILE *f = fopen (path, "rb");
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0, r;

  if (f == NULL) {
    perror (path);
    return -1;
  }
  do {
    if (len == cap) {
      uint8_t *nb = realloc (buf, cap = cap ? cap * 2 : 65536);

      if (nb == NULL) {
        perror ("realloc");
        exit (1);
      }
      buf = nb;
    }
    r = fread (buf + len, 1, cap - len, f);
    len += r;
  } while (r > 0);
  fclose (f);
  printf ("replay: %s (%zu bytes)\n", path, len);
  fflush (stdout);
  /* A copy of the exact size, so ASan sees reads past the input. */
  {
    uint8_t *exact = malloc (len ? len : 1);

    if (exact == NULL)
      exit (1);
    memcpy (exact, buf, len);
    LLVMFuzzerTestOneInput (exact, len);
    free (exact);
  }
  free (buf);
  return 0;
}

DEFINE_VECTOR_TYPE (string_vector, char *);

static void
free_string (char **s)
{
  free (*s);
}

static int
cmp (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

int
main (int argc, char **argv)
{
  int i, n = 0;

  for (i = 1; i < argc; i++) {
    struct stat st;

    if (stat (argv[i], &st) == -1) {
      perror (argv[i]);
      return 1;
    }
    if (S_ISDIR (st.st_mode)) {
      DIR *d = opendir (argv[i]);
      struct dirent *e;
      string_vector names = empty_vector;
      size_t k;

      if (d == NULL) {
        perror (argv[i]);
        return 1;
      }
      while ((e = readdir (d)) != NULL) {
        char *name;

        if (e->d_name[0] == '.')
          continue;
        if (asprintf (&name, "%s/%s", argv[i], e->d_name) == -1 ||
            string_vector_append (&names, name) == -1)
          return 1;
      }
      closedir (d);
      qsort (names.ptr, names.len, sizeof *names.ptr, cmp);
      for (k = 0; k < names.len; k++) {
        if (run_file (names.ptr[k]) == -1)
          return 1;
        n++;
      }
      string_vector_free_all (&names, free_string);
    }
    else {
      if (run_file (argv[i]) == -1)
        return 1;
      n++;
    }
  }
  printf ("replay: %d inputs, no crash\n", n);
  return 0;
}
