/* STUB: replaced by the real minnbd. */
#include <config.h>
#include <stdio.h>
#include <stdarg.h>
#include "backend.h"
#include "backends.h"
void backend_error (const char *fmt, ...) { va_list ap; va_start (ap, fmt); vfprintf (stderr, fmt, ap); va_end (ap); fputc ('\n', stderr); }
void backend_debug (const char *fmt, ...) { }
int backend_add_extent (struct backend_extents *e, uint64_t o, uint64_t l, uint32_t t) { return 0; }
int backend_add_export (struct backend_exports *e, const char *n, const char *d) { return 0; }
int main (int argc, char **argv) { return backend_lookup ("flatfile") ? 0 : 1; }
