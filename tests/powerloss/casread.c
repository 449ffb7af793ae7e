/* casread: open a cas store the way the server does and dump every
 * volume and snapshot in it, for the power-loss simulator (a process per
 * state is much cheaper than a server and a client).
 *
 *   casread STORE VOLUME SIZE BLOCKSIZE OUTDIR [REWRITE]
 *
 * Like the cas backend's config_complete: a store that does not exist
 * (or an empty directory) is created with BLOCKSIZE, VOLUME (the served
 * one) is created with SIZE bytes if missing and grown to SIZE if
 * smaller; the store is opened read-write, which finishes an interrupted
 * delete or rename and cuts torn pack tails.  Then every volume and
 * every snapshot (VOLUME@SNAP) is read whole into OUTDIR/NAME, and one
 * line "NAME SIZE" per volume is printed on stdout.
 *
 * REWRITE (a file): then write its contents over VOLUME from offset 0,
 * flush, close the store, open it again and read it back: it must read
 * as REWRITE.  This is what a client does after a crash (write its
 * unacknowledged data again); it catches a store that deduplicates new
 * writes against records a crash left damaged.
 *
 * Exit status 0 on success; 1 with the store's messages on stderr.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "store.h"

void
backend_error (const char *fmt, ...)
{
  va_list ap;
  int saved = errno;

  va_start (ap, fmt);
  fputs ("casread: ", stderr);
  vfprintf (stderr, fmt, ap);
  fputc ('\n', stderr);
  va_end (ap);
  errno = saved;
}

void
backend_debug (const char *fmt, ...)
{
  va_list ap;
  int saved = errno;

  if (getenv ("CASREAD_DEBUG") == NULL)
    return;
  va_start (ap, fmt);
  fputs ("casread: debug: ", stderr);
  vfprintf (stderr, fmt, ap);
  fputc ('\n', stderr);
  va_end (ap);
  errno = saved;
}

static void __attribute__ ((noreturn))
fail (const char *what)
{
  fprintf (stderr, "casread: %s: %s\n", what, strerror (errno));
  exit (EXIT_FAILURE);
}

/* The server's start-up: create, open, create or grow the volume. */
static struct cas_store *
open_like_server (const char *dir, const char *name, uint64_t size,
                  uint32_t bs)
{
  struct cas_store *st;
  struct cas_volume *v;
  int exists = cas_store_exists (dir);

  if (exists == -1)
    fail ("checking the store");
  if (exists == 0 && cas_store_create (dir, bs) == -1)
    fail ("creating the store");
  st = cas_store_open (dir, NULL);
  if (st == NULL)
    fail ("opening the store");
  switch (cas_volume_exists (st, name)) {
  case -1:
    fail ("checking the volume");
  case 0:
    if (cas_volume_create (st, name, size) == -1)
      fail ("creating the volume");
    break;
  default:
    v = cas_volume_open (st, name);
    if (v == NULL)
      fail ("opening the volume");
    if (cas_volume_size (v) < size) {
      cas_volume_close (v);
      if (cas_volume_resize (st, name, size) == -1)
        fail ("growing the volume");
    }
    else
      cas_volume_close (v);
  }
  return st;
}

static uint8_t *
read_volume (struct cas_volume *v, const char *what)
{
  uint64_t size = cas_volume_size (v);
  uint8_t *buf = malloc (size ? size : 1);

  if (buf == NULL)
    fail ("malloc");
  if (cas_volume_read (v, buf, size, 0) == -1)
    fail (what);
  return buf;
}

struct dump {
  struct cas_store *st;
  const char *outdir;
};

/* Read volume or snapshot name into OUTDIR/NAME; print "NAME SIZE". */
static int
dump_one (const char *name, void *opaque)
{
  struct dump *d = opaque;
  struct cas_volume *v = cas_volume_open (d->st, name);
  char *path;
  uint8_t *data;
  FILE *fp;

  if (v == NULL)
    fail (name);
  data = read_volume (v, name);
  if (asprintf (&path, "%s/%s", d->outdir, name) == -1)
    fail ("asprintf");
  fp = fopen (path, "wb");
  if (fp == NULL ||
      fwrite (data, 1, cas_volume_size (v), fp) != cas_volume_size (v) ||
      fclose (fp) != 0)
    fail (path);
  printf ("%s %" PRIu64 "\n", name, cas_volume_size (v));
  free (path);
  free (data);
  cas_volume_close (v);
  return 0;
}

static int
dump_volume (const char *name, void *opaque)
{
  struct dump *d = opaque;

  dump_one (name, opaque);
  if (cas_store_list_snapshots (d->st, name, dump_one, opaque) == -1)
    fail ("listing snapshots");
  return 0;
}

static uint8_t *
slurp (const char *path, uint64_t *len)
{
  FILE *fp = fopen (path, "rb");
  uint8_t *buf;
  long n;

  if (fp == NULL || fseek (fp, 0, SEEK_END) == -1 || (n = ftell (fp)) < 0 ||
      fseek (fp, 0, SEEK_SET) == -1)
    fail (path);
  buf = malloc (n ? n : 1);
  if (buf == NULL || fread (buf, 1, n, fp) != (size_t) n)
    fail (path);
  fclose (fp);
  *len = n;
  return buf;
}

int
main (int argc, char **argv)
{
  const char *dir, *name, *rewrite;
  uint64_t size;
  uint32_t bs;
  struct cas_store *st;
  struct cas_volume *v;
  struct dump d;
  uint8_t *data;

  if (argc != 6 && argc != 7) {
    fprintf (stderr, "usage: casread STORE VOLUME SIZE BLOCKSIZE OUTDIR "
             "[REWRITE]\n");
    return EXIT_FAILURE;
  }
  dir = argv[1];
  name = argv[2];
  size = strtoull (argv[3], NULL, 0);
  bs = strtoul (argv[4], NULL, 0);
  d.outdir = argv[5];
  rewrite = argc == 7 ? argv[6] : NULL;

  st = open_like_server (dir, name, size, bs);
  d.st = st;
  if (cas_store_list_volumes (st, dump_volume, &d) == -1)
    fail ("listing volumes");
  fflush (stdout);

  if (rewrite) {
    uint64_t len, vsize;
    uint8_t *want = slurp (rewrite, &len);

    v = cas_volume_open (st, name);
    if (v == NULL)
      fail ("opening the volume");
    vsize = cas_volume_size (v);
    if (len > vsize)
      len = vsize;
    if (cas_volume_write (v, want, len, 0, false) == -1 ||
        cas_volume_flush (v) == -1)
      fail ("rewriting the volume");
    cas_volume_close (v);
    if (cas_store_close (st) == -1)
      fail ("closing the store after the rewrite");
    st = cas_store_open (dir, NULL);
    if (st == NULL)
      fail ("opening the store again after the rewrite");
    v = cas_volume_open (st, name);
    if (v == NULL)
      fail ("opening the volume again after the rewrite");
    data = read_volume (v, "reading the volume back after the rewrite");
    if (memcmp (data, want, len) != 0) {
      uint64_t i;
      for (i = 0; i < len && data[i] == want[i]; i++)
        ;
      fprintf (stderr, "casread: after the rewrite, offset %" PRIu64
               " (block %" PRIu64 ") reads 0x%02x, written 0x%02x\n",
               i, i / cas_volume_blocksize (v), data[i], want[i]);
      return EXIT_FAILURE;
    }
    free (data);
    free (want);
    cas_volume_close (v);
  }
  if (cas_store_close (st) == -1)
    fail ("closing the store");
  return EXIT_SUCCESS;
}
