/* The backends minnbd can serve, by name. */
#include <config.h>
#include <stddef.h>
#include <string.h>
#include "backend.h"
#include "backends.h"

extern const struct backend flatfile_backend;
extern const struct backend cas_backend;

static const struct backend *const backends[] = {
  &flatfile_backend,
  &cas_backend,
};

const struct backend *
backend_lookup (const char *name)
{
  size_t i;

  for (i = 0; i < sizeof backends / sizeof backends[0]; i++)
    if (strcmp (backends[i]->name, name) == 0)
      return backends[i];
  return NULL;
}

const struct backend *
backend_nth (size_t i)
{
  return i < sizeof backends / sizeof backends[0] ? backends[i] : NULL;
}
