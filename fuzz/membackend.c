/* The fuzz targets' memory backend: see membackend.h. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "membackend.h"

#define MEM_SIZE  (1024 * 1024)
#define MEM_GRAIN 4096

enum mem_kind { MEM_DEFAULT, MEM_RO, MEM_SMALL, MEM_EMUL };

struct mem_handle {
  enum mem_kind kind;
  bool readonly;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char disk[MEM_SIZE];
static bool allocated[MEM_SIZE / MEM_GRAIN];

void
mem_backend_reset (void)
{
  memset (disk, 0, sizeof disk);
  memset (allocated, 0, sizeof allocated);
}

static int
mem_config (const char *key, const char *value)
{
  backend_error ("mem: unknown parameter '%s'", key);
  errno = EINVAL;
  return -1;
}

static int
mem_list_exports (bool readonly, struct backend_exports *x)
{
  if (backend_add_export (x, "", "the default export") == -1 ||
      backend_add_export (x, "ro", "read-only") == -1 ||
      backend_add_export (x, "small", NULL) == -1 ||
      backend_add_export (x, "emul", "emulated capabilities") == -1)
    return -1;
  return 0;
}

static const char *
mem_default_export (bool readonly)
{
  return "";
}

/* Exports named "error-ENAME" (not listed) fail to open with errno
 * ENAME and a message, so tests choose how an open fails.
 */
static const struct { const char *name; int err; } open_errors[] = {
  { "ENOENT", ENOENT }, { "EINVAL", EINVAL }, { "EPERM", EPERM },
  { "EACCES", EACCES }, { "EROFS", EROFS }, { "EIO", EIO },
  { "ENOMEM", ENOMEM }, { "ESHUTDOWN", ESHUTDOWN },
  { "ENOTSUP", ENOTSUP }, { "EBUSY", EBUSY },
};

static void *
mem_open (const char *name, bool readonly)
{
  struct mem_handle *h;
  enum mem_kind k;
  size_t i;

  if (strncmp (name, "error-", 6) == 0) {
    for (i = 0; i < sizeof open_errors / sizeof open_errors[0]; i++)
      if (strcmp (name + 6, open_errors[i].name) == 0) {
        backend_error ("mem: export '%s' fails to open with %s, as its "
                       "name asks", name, open_errors[i].name);
        errno = open_errors[i].err;
        return NULL;
      }
  }
  if (strcmp (name, "") == 0) k = MEM_DEFAULT;
  else if (strcmp (name, "ro") == 0) k = MEM_RO;
  else if (strcmp (name, "small") == 0) k = MEM_SMALL;
  else if (strcmp (name, "emul") == 0) k = MEM_EMUL;
  else {
    backend_error ("mem: no export '%s'", name);
    errno = ENOENT;
    return NULL;
  }
  h = malloc (sizeof *h);
  if (h == NULL)
    return NULL;
  h->kind = k;
  h->readonly = readonly || k == MEM_RO;
  return h;
}

static void
mem_close (void *vh)
{
  free (vh);
}

static int64_t
mem_get_size (void *vh)
{
  struct mem_handle *h = vh;

  /* Odd on purpose: a size that is no multiple of any block size. */
  return h->kind == MEM_SMALL ? 1000 + 24 * 512 + 3 : MEM_SIZE;
}

static int
mem_block_size (void *vh, uint32_t *min, uint32_t *pref, uint32_t *max)
{
  struct mem_handle *h = vh;

  if (h->kind == MEM_SMALL) {
    *min = 512;
    *pref = 4096;
    *max = 65536;
  }
  else
    *min = *pref = *max = 0;
  return 0;
}

static int
mem_can_write (void *vh)
{
  return !((struct mem_handle *) vh)->readonly;
}

static int
mem_yes (void *vh)
{
  return 1;
}

static int
mem_native_unless_emul (void *vh)
{
  struct mem_handle *h = vh;

  return h->kind == MEM_EMUL ? 1 /* EMULATE */ : 2 /* NATIVE */;
}

static int
mem_unless_emul (void *vh)
{
  return ((struct mem_handle *) vh)->kind != MEM_EMUL;
}

/* The server promises in-range requests (backend.h): check it, since a
 * fuzzer that makes it break that promise found a server bug.
 */
static void
check_range (void *vh, uint32_t count, uint64_t offset)
{
  uint64_t size = mem_get_size (vh);

  if (count == 0 || offset > size || count > size - offset)
    abort ();
}

static int
mem_pread (void *vh, void *buf, uint32_t count, uint64_t offset,
           uint32_t flags)
{
  check_range (vh, count, offset);
  pthread_mutex_lock (&lock);
  memcpy (buf, disk + offset, count);
  pthread_mutex_unlock (&lock);
  return 0;
}

static void
mark (uint64_t offset, uint32_t count, bool a)
{
  uint64_t g;

  for (g = offset / MEM_GRAIN; g <= (offset + count - 1) / MEM_GRAIN; g++)
    allocated[g] = a;
}

static int
mem_pwrite (void *vh, const void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  struct mem_handle *h = vh;

  check_range (vh, count, offset);
  if (h->readonly)
    abort ();                   /* the server must refuse it first */
  /* A deterministic I/O error, so the error paths run too. */
  if (count >= 3 && memcmp (buf, "EIO", 3) == 0) {
    backend_error ("mem: injected EIO");
    errno = EIO;
    return -1;
  }
  pthread_mutex_lock (&lock);
  memcpy (disk + offset, buf, count);
  mark (offset, count, true);
  pthread_mutex_unlock (&lock);
  return 0;
}

static int
mem_flush (void *vh, uint32_t flags)
{
  return 0;
}

static int
mem_zero (void *vh, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct mem_handle *h = vh;

  check_range (vh, count, offset);
  if (h->readonly)
    abort ();
  /* Only whole grains become holes; FAST_ZERO fails for partial ones so
   * the ENOTSUP path runs.
   */
  if ((flags & BACKEND_FLAG_FAST_ZERO) && (offset % MEM_GRAIN) != 0) {
    errno = ENOTSUP;
    return -1;
  }
  pthread_mutex_lock (&lock);
  memset (disk + offset, 0, count);
  if ((flags & BACKEND_FLAG_MAY_TRIM) && offset % MEM_GRAIN == 0 &&
      count % MEM_GRAIN == 0)
    mark (offset, count, false);
  pthread_mutex_unlock (&lock);
  return 0;
}

static int
mem_trim (void *vh, uint32_t count, uint64_t offset, uint32_t flags)
{
  return mem_zero (vh, count, offset, flags | BACKEND_FLAG_MAY_TRIM);
}

static int
mem_extents (void *vh, uint32_t count, uint64_t offset, uint32_t flags,
             struct backend_extents *e)
{
  uint64_t size = mem_get_size (vh), pos = offset, end;
  int r = 0;

  check_range (vh, count, offset);
  /* Report whole grains beyond the request: the server clips. */
  pthread_mutex_lock (&lock);
  while (pos < size && r == 0) {
    bool a = allocated[pos / MEM_GRAIN];

    end = (pos / MEM_GRAIN + 1) * MEM_GRAIN;
    if (end > size)
      end = size;
    r = backend_add_extent (e, pos, end - pos,
                            a ? 0 : BACKEND_EXTENT_HOLE | BACKEND_EXTENT_ZERO);
    pos = end;
    if ((flags & BACKEND_FLAG_REQ_ONE) || pos >= (uint64_t) offset + count)
      break;
  }
  pthread_mutex_unlock (&lock);
  return r;
}

static int
mem_cache (void *vh, uint32_t count, uint64_t offset, uint32_t flags)
{
  check_range (vh, count, offset);
  return 0;
}

const struct backend mem_backend = {
  .name = "mem",
  .longname = "fuzzing memory backend",
  .description = "1 MiB in RAM, every callback implemented",
  .config = mem_config,
  .list_exports = mem_list_exports,
  .default_export = mem_default_export,
  .open = mem_open,
  .close = mem_close,
  .get_size = mem_get_size,
  .block_size = mem_block_size,
  .can_write = mem_can_write,
  .can_flush = mem_yes,
  .can_trim = mem_unless_emul,
  .can_zero = mem_unless_emul,
  .can_fast_zero = mem_unless_emul,
  .can_fua = mem_native_unless_emul,
  .can_multi_conn = mem_yes,
  .can_extents = mem_unless_emul,
  .can_cache = mem_native_unless_emul,
  .is_rotational = mem_unless_emul,
  .pread = mem_pread,
  .pwrite = mem_pwrite,
  .flush = mem_flush,
  .trim = mem_trim,
  .zero = mem_zero,
  .extents = mem_extents,
  .cache = mem_cache,
};
