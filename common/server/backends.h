/* Registry of the backends linked into minnbd.  Read-only: thread-safe. */
#ifndef MINNBD_BACKENDS_H
#define MINNBD_BACKENDS_H
#include <stddef.h>
#include "backend.h"
/* NULL when no backend has that name. */
const struct backend *backend_lookup (const char *name);
/* For --help: NULL past the last one. */
const struct backend *backend_nth (size_t i);
#endif
