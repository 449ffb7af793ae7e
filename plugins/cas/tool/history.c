/* nbdcas snapshot STORE VOLUME SNAP
 * nbdcas clone STORE SOURCE NEWVOL
 * nbdcas delete STORE NAME [--recursive]
 * nbdcas rename STORE OLD NEW
 *
 * Operations on roots (history.c of the store has the crash-safety
 * argument).  On a served store they run in the server (control socket),
 * which flushes a volume before it is snapshotted or cloned, so that the
 * result holds every write the server acknowledged before the command.
 */
#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "nbdcas.h"

/* Parse "CMD [options] STORE ARG1 ARG2" with the common options plus
 * --recursive where allowed.  Returns 0 to go on, or -1 when the command
 * ends here (--help: *status is EXIT_OK; a usage error: EXIT_USAGE).
 */
static int
two_names (int argc, char **argv, const char *cmd, const char *what,
           void (*help) (void), bool *recursive, char **dir, char **a,
           char **b, int *status)
{
  static const struct option with_r[] = {
    { "recursive", no_argument, NULL, 'r' },
    TOOL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  static const struct option without_r[] = {
    TOOL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  int c, nargs = b ? 3 : 2;

  *status = EXIT_USAGE;
  while ((c = tool_getopt (argc, argv, cmd, recursive ? "hrv" : "hv",
                           recursive ? with_r : without_r, help,
                           status)) > 0)
    if (c == 'r' && recursive)
      *recursive = true;
  if (c == -1)
    return -1;
  if (want_args (cmd, argc, argv, optind, nargs, what) == -1) {
    *status = usage_error (cmd);
    return -1;
  }
  *dir = argv[optind];
  *a = argv[optind + 1];
  if (b)
    *b = argv[optind + 2];
  return 0;
}

/* Open the store for a change: the server's if one holds it. */
static struct cas_store *
open_for_change (const char *dir)
{
  return tool_open_store (dir, false, CAS_VERIFY_CHECKSUM);
}

static int
finish (struct cas_store *st, int ret)
{
  if (tool_close_store (st) == -1)
    ret = EXIT_FAIL;
  return ret;
}

/* ---- snapshot ---- */

static void
snapshot_help (void)
{
  tool_printf ("Usage: %s snapshot STORE VOLUME SNAP\n"
               "Record a read-only point in time of VOLUME, named "
               "VOLUME@SNAP.\n"
               "It takes no time and no space of its own (it shares every "
               "block).\n"
               "On a served store the server flushes VOLUME first: the "
               "snapshot\n"
               "holds every write acknowledged before the command.  It is "
               "served\n"
               "read-only as the export VOLUME@SNAP.\n"
               "\n"
               "  -v, --verbose         say what was done\n"
               "  -h, --help            this help\n", tool_name);
}

int
cmd_snapshot (int argc, char **argv)
{
  struct cas_store *st = NULL;
  char *dir, *vol, *snap;
  int r, status;

  r = two_names (argc, argv, "snapshot", "STORE VOLUME SNAP", snapshot_help,
                 NULL, &dir, &vol, &snap, &status);
  if (r == -1)
    return status;
  if (tool_check_name (vol, false) == -1)
    return usage_error ("snapshot");
  if (strchr (snap, '@') == NULL && cas_snapshot_name_check (snap) == -1)
    return usage_error ("snapshot");
  /* "VOLUME@SNAP" is accepted for SNAP too, if VOLUME matches. */
  if (strchr (snap, '@')) {
    size_t n = strlen (vol);
    if (strncmp (snap, vol, n) != 0 || snap[n] != '@') {
      tool_error ("snapshot: '%s' is not a snapshot of '%s' (give the "
                  "snapshot's own name: VOLUME SNAP)", snap, vol);
      return usage_error ("snapshot");
    }
    snap += n + 1;
    if (cas_snapshot_name_check (snap) == -1)
      return usage_error ("snapshot");
  }
  st = open_for_change (dir);
  if (st == NULL)
    return EXIT_FAIL;
  if (cas_snapshot_create (st, vol, snap) == -1)
    return finish (st, EXIT_FAIL);
  if (tool_verbose)
    tool_info ("snapshot '%s@%s' taken", vol, snap);
  return finish (st, EXIT_OK);
}

/* ---- clone ---- */

static void
clone_help (void)
{
  tool_printf ("Usage: %s clone STORE SOURCE NEWVOL\n"
               "Make NEWVOL, a writable volume that starts as SOURCE (a "
               "volume or\n"
               "a snapshot VOLUME@SNAP) and shares every block with it.  It "
               "takes\n"
               "no time; writes to either never show in the other.\n"
               "\n"
               "  -v, --verbose         say what was done\n"
               "  -h, --help            this help\n", tool_name);
}

int
cmd_clone (int argc, char **argv)
{
  struct cas_store *st;
  char *dir, *src, *dst;
  int r, status;

  r = two_names (argc, argv, "clone", "STORE SOURCE NEWVOL", clone_help,
                 NULL, &dir, &src, &dst, &status);
  if (r == -1)
    return status;
  if (tool_check_name (src, true) == -1 || tool_check_name (dst, false) == -1)
    return usage_error ("clone");
  st = open_for_change (dir);
  if (st == NULL)
    return EXIT_FAIL;
  if (cas_volume_clone (st, src, dst) == -1)
    return finish (st, EXIT_FAIL);
  if (tool_verbose)
    tool_info ("volume '%s' cloned from '%s'", dst, src);
  return finish (st, EXIT_OK);
}

/* ---- delete ---- */

static void
delete_help (void)
{
  tool_printf ("Usage: %s delete STORE NAME [--recursive]\n"
               "Delete a snapshot (VOLUME@SNAP), or a volume.  A volume "
               "with\n"
               "snapshots is deleted only with --recursive (with them).  "
               "Something\n"
               "a client is connected to is not deleted.  The space comes "
               "back\n"
               "with nbdcas gc.\n"
               "\n"
               "  -r, --recursive       a volume with its snapshots\n"
               "  -v, --verbose         say what was done\n"
               "  -h, --help            this help\n", tool_name);
}

int
cmd_delete (int argc, char **argv)
{
  struct cas_store *st;
  char *dir, *name;
  bool recursive = false;
  int r, status;

  r = two_names (argc, argv, "delete", "STORE NAME", delete_help,
                 &recursive, &dir, &name, NULL, &status);
  if (r == -1)
    return status;
  if (tool_check_name (name, true) == -1)
    return usage_error ("delete");
  st = open_for_change (dir);
  if (st == NULL)
    return EXIT_FAIL;
  if (cas_store_delete (st, name, recursive) == -1)
    return finish (st, EXIT_FAIL);
  if (tool_verbose)
    tool_info ("'%s' deleted", name);
  return finish (st, EXIT_OK);
}

/* ---- rename ---- */

static void
rename_help (void)
{
  tool_printf ("Usage: %s rename STORE OLD NEW\n"
               "Rename a volume (its snapshots follow it), or a snapshot: "
               "VOLUME@OLD\n"
               "to VOLUME@NEW (or just NEW).  Something a client is "
               "connected to\n"
               "is not renamed.\n"
               "\n"
               "  -v, --verbose         say what was done\n"
               "  -h, --help            this help\n", tool_name);
}

int
cmd_rename (int argc, char **argv)
{
  struct cas_store *st;
  char *dir, *old, *new, full[2 * CAS_VOLUME_NAME_MAX + 2];
  const char *at;
  int r, status;

  r = two_names (argc, argv, "rename", "STORE OLD NEW", rename_help, NULL,
                 &dir, &old, &new, &status);
  if (r == -1)
    return status;
  if (tool_check_name (old, true) == -1)
    return usage_error ("rename");
  /* A snapshot's new name may be given alone: VOLUME@OLD NEW. */
  at = strchr (old, '@');
  if (at && strchr (new, '@') == NULL) {
    if (cas_snapshot_name_check (new) == -1)
      return usage_error ("rename");
    snprintf (full, sizeof full, "%.*s@%s", (int) (at - old), old, new);
    new = full;
  }
  if (tool_check_name (new, true) == -1)
    return usage_error ("rename");
  st = open_for_change (dir);
  if (st == NULL)
    return EXIT_FAIL;
  if (cas_store_rename (st, old, new) == -1)
    return finish (st, EXIT_FAIL);
  if (tool_verbose)
    tool_info ("'%s' renamed to '%s'", old, new);
  return finish (st, EXIT_OK);
}
