/* Export names: what NBD_OPT_LIST shows and how a client's name maps to
 * a backend open.
 *
 * A backend without list_exports serves one export.  It is called "" or,
 * with -e NAME, NAME; the client may ask for it by either name, and the
 * backend is always opened with "" (its only export).  A backend that
 * lists exports (cas volumes) has its own names; "" means the default
 * export: -e NAME if given, else backend->default_export, else "".
 *
 * Thread safety: reads opts and B only; each call owns its results.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "capabilities.h"
#include "server.h"

static void
export_entry_free (struct export_entry *e)
{
  free (e->name);
  free (e->description);
}

void
exports_free (struct backend_exports *list)
{
  export_vector_free_all (&list->v, export_entry_free);
}

int
exports_list (struct backend_exports *list)
{
  list->v = (export_vector) empty_vector;

  if (B->list_exports == NULL)
    return backend_add_export (list, opts.export_name ? opts.export_name : "",
                               opts.description);

  backend_error_clear ();
  if (B->list_exports (opts.readonly, list) == -1) {
    int saved = errno;
    exports_free (list);
    errno = saved;
    return -1;
  }
  return 0;
}

static const char *
default_name (void)
{
  if (opts.export_name)
    return opts.export_name;
  return backend_get_default_export (B, opts.readonly);
}

int
exports_resolve (const char *requested, char **canonical,
                 char **open_name, char **description)
{
  const char *name = requested;
  const char *desc = NULL;
  struct backend_exports list;
  size_t i;

  *canonical = *open_name = *description = NULL;

  if (B->list_exports == NULL) {
    const char *single = opts.export_name ? opts.export_name : "";

    if (strcmp (requested, "") != 0 && strcmp (requested, single) != 0) {
      errno = ENOENT;
      return -1;
    }
    *canonical = strdup (single);
    *open_name = strdup ("");
    if (opts.description && (*description = strdup (opts.description)) == NULL)
      goto nomem;
  }
  else {
    if (strcmp (name, "") == 0)
      name = default_name ();
    /* The description comes from the listing; a name the backend accepts
     * without listing it (its open decides) simply has none.
     */
    if (exports_list (&list) == 0) {
      for (i = 0; i < list.v.len; i++)
        if (strcmp (list.v.ptr[i].name, name) == 0) {
          desc = list.v.ptr[i].description;
          break;
        }
      if (desc)
        *description = strdup (desc);
      exports_free (&list);
      if (desc && *description == NULL)
        goto nomem;
    }
    *canonical = strdup (name);
    *open_name = strdup (name);
  }
  if (*canonical && *open_name)
    return 0;

 nomem:
  free (*canonical);
  free (*open_name);
  free (*description);
  *canonical = *open_name = *description = NULL;
  errno = ENOMEM;
  return -1;
}
