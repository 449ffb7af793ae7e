#!/usr/bin/python3
# A backend learns whether nbdkit runs read-only (backend_server_readonly)
# from nbdkit's own command line, parsed in common/nbdkit-glue.c as
# nbdkit's getopt_long parses it.  Each spelling of -r must be seen, and
# nothing else may be taken for it: an option's argument that looks like
# -r ("-e -r", "--exp -r": an export named "-r"), -r after "--".
#
# What the backend saw shows in flatfile's debug line under nbdkit -v:
# "serving FILE (regular file, read-only: the server is read-only)" or
# "(regular file, read-write)".  nbdkit runs with --run true: it
# configures the plugin, listens, runs the command and exits.
# It is the nbdkit+flatfile pair's test: skipped when NBDCAS_PAIRS leaves
# that pair out; in a sanitizer build nbdkit runs with the runtime
# preloaded, as nbdtest.Server runs it.

import os
import shutil
import subprocess
import sys

import nbdtest

NBDKIT = os.environ.get("NBDKIT", "nbdkit")
PLUGIN = os.environ.get("FLATFILE_PLUGIN")

# (description, options before the plugin, options after its parameters,
#  whether the backend must see a read-only server)
CASES = [
    ("plain nbdkit", [], [], False),
    ("-r", ["-r"], [], True),
    ("--readonly", ["--readonly"], [], True),
    ("--read-only", ["--read-only"], [], True),
    ("-fr (clustered)", ["-fr"], [], True),
    ("-rf (clustered)", ["-rf"], [], True),
    ("--read-o (abbreviated)", ["--read-o"], [], True),
    ("--read (abbreviation of both spellings)", ["--read"], [], True),
    ("-r after the plugin's parameters (permuted)", [], ["-r"], True),
    ("-e -r: an export named -r", ["-e", "-r"], [], False),
    ("-e-r: an export named -r", ["-e-r"], [], False),
    ("--export -r", ["--export", "-r"], [], False),
    ("--exp -r: abbreviation of three names of one option", ["--exp", "-r"],
     [], False),
    ("--pid FILE-r", ["--pid", "-rpid"], [], False),
    ("-P -r.pid (a pid file's name)", ["-P", "-r.pid"], [], False),
    ("-fe -r", ["-fe", "-r"], [], False),
    ("-vfre x", ["-vfre", "x"], [], True),
    ("--threads=4 -r", ["--threads=4", "-r"], [], True),
]


def main():
    if shutil.which(NBDKIT) is None or not PLUGIN:
        nbdtest.skip_all("nbdkit is not installed")
    if not nbdtest.pairs(servers=["nbdkit"], backends=["flatfile"]):
        nbdtest.skip_all("nbdkit+flatfile is not among the selected pairs "
                         "(NBDCAS_PAIRS)")
    tap = nbdtest.TAP(len(CASES))
    d = nbdtest.tmpdir()
    try:
        disk = os.path.join(d, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(1024 * 1024)
        for desc, before, after, want_ro in CASES:
            # Options that name files do so inside the temporary directory.
            argv = [NBDKIT, "-v", "-U", "-", "--run", "true"] + before + \
                [PLUGIN, "file=" + disk] + after
            p = subprocess.run(argv, cwd=d, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=120,
                               env=nbdtest.server_env(
                                   "nbdkit", nbdtest.tool_env()))
            lines = [ln for ln in p.stderr.splitlines()
                     if "flatfile: serving" in ln]
            want = "read-only: the server is read-only" if want_ro \
                else "read-write"
            ok = p.returncode == 0 and len(lines) == 1 and want in lines[0]
            tap.ok(ok, "nbdkit %s: the backend sees %s" %
                   (desc, "a read-only server" if want_ro else
                    "a writable server"),
                   "exit status %d, wanted '%s' in:\n%s" %
                   (p.returncode, want, p.stderr[-3000:]))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


main()
