/* minnbd serving the fuzz targets' memory backend (membackend.h) instead
 * of flatfile and cas: the whole server (libminnbd.la), for tests that
 * need a backend whose behaviour they choose, e.g. an open that fails
 * with a given errno (tests/test-minnbd-open-errors.py).  Not installed.
 *
 *   minnbd-membackend [minnbd options] mem
 */
#include <config.h>

#include "server.h"

int
main (int argc, char **argv)
{
  return minnbd_main (argc, argv);
}
