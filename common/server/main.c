/* minnbd's entry point.  The server itself is libminnbd.la (everything
 * in this directory but this file and backends.c), which the fuzz
 * targets and test programs link with backends of their own; minnbd is
 * that library plus the backends of backends.c.
 */
#include <config.h>

#include "server.h"

int
main (int argc, char **argv)
{
  return minnbd_main (argc, argv);
}
