# valgrind memcheck for the test suite (`make check-valgrind`).
#
# With NBDCAS_VALGRIND=1 in the environment, every server a test starts --
# through nbdtest.Server or by running $MINNBD / $NBDKIT itself -- runs
# under valgrind: on import this module writes wrapper scripts into a
# private directory and points MINNBD and NBDKIT at them, so no test needs
# to know.  Each valgrind process writes an XML report named after its
# pid, which is judged and summarised into the TAP diagnostics.
#
# Judging: an XML <error> of any kind is a failure; leaks count only when
# definitely lost (--show-leak-kinds=definite).  nbdtest.TAP.ok() calls
# collect() before each result line, so the case during which an error
# appeared is the one that fails; errors still unreported when the script
# exits (a server that outlived its case) add a failing line at exit,
# which the TAP driver reports as a plan mismatch.
#
# A process killed with SIGKILL (the crash tests) writes no leak summary
# but its errors up to the kill are in its XML already.
#
# nbdkit: it dlclose()s the plugin before exit, which would leave the
# plugin's frames in leak reports as "???"; a preloaded shim
# (valgrind-nodlclose.so, built by tests/Makefile.am) turns dlclose into
# a no-op.  nbdkit's own allocations are not ours: tests/valgrind.supp
# says which of its reports are suppressed, and why.

import atexit
import glob
import os
import re
import shutil
import sys
import tempfile

ENABLED = os.environ.get("NBDCAS_VALGRIND", "") not in ("", "0")

_logdir = None
_reported = {}         # report file -> errors already reported
_pending = []          # failure texts not yet attached to a TAP line

_ERROR_RE = re.compile(r"<error>.*?<kind>(\w+)</kind>", re.S)


def _wrapper(name, real, extra_env=""):
    srcdir = os.environ.get("srcdir", os.path.dirname(__file__))
    supp = os.path.join(srcdir, "valgrind.supp")
    path = os.path.join(_logdir, name)
    opts = [
        "--quiet", "--vgdb=no",
        "--leak-check=full", "--show-leak-kinds=definite",
        "--errors-for-leak-kinds=definite", "--error-exitcode=119",
        # minnbd's and nbdkit's -f-less modes fork: follow the child.
        "--child-silent-after-fork=no",
        "--suppressions=" + supp,
        # A text log of its own, or valgrind keeps a copy of stderr open
        # in a daemonised server, and a caller waiting for EOF on the
        # server's stderr (test-minnbd-listen) hangs.  Empty with -q and
        # --xml: the errors are in the XML.
        "--log-file=" + os.path.join(_logdir, "vg.%p.log"),
        "--xml=yes", "--xml-file=" + os.path.join(_logdir, "vg.%p.xml"),
    ]
    with open(path, "w") as f:
        f.write("#!/bin/sh\n%sexec valgrind %s %s \"$@\"\n"
                % (extra_env, " ".join("'%s'" % o for o in opts), real))
    os.chmod(path, 0o755)
    return path


def _tool_under_valgrind():
    """Whether this script runs the nbdcas tool under valgrind too:
    always, unless NBDCAS_VALGRIND_TOOL_TESTS lists the scripts that do
    (a subset such as `make check-valgrind-ci`; the servers always run
    under valgrind)."""
    only = os.environ.get("NBDCAS_VALGRIND_TOOL_TESTS")
    if only is None:
        return True
    return os.path.basename(sys.argv[0]) in only.split()


def _setup():
    global _logdir
    base = os.environ.get("TMPDIR", "/tmp")
    _logdir = tempfile.mkdtemp(prefix="nbdcas-vg.", dir=base)
    # Some tests run the server as nobody (setpriv): it must reach the
    # wrappers and write its reports here.  Sticky, like /tmp.
    os.chmod(_logdir, 0o1777)
    for var in ("MINNBD", "NBDCAS"):
        if var == "NBDCAS" and not _tool_under_valgrind():
            continue
        if os.environ.get(var):
            os.environ[var] = _wrapper(var.lower(), os.environ[var])
    shim = os.environ.get("VALGRIND_NODLCLOSE")
    nbdkit = os.environ.get("NBDKIT") or "nbdkit"
    if shim:
        # Appended by valgrind to its own preloads; tests that add
        # LD_PRELOAD (faultshim) keep theirs since the wrapper prepends.
        env = 'LD_PRELOAD="%s${LD_PRELOAD:+:$LD_PRELOAD}"; ' \
              'export LD_PRELOAD; ' % shim
        os.environ["NBDKIT"] = _wrapper("nbdkit", nbdkit, env)
    atexit.register(_at_exit)


def _describe(text, skip):
    """The errors of an XML report after the first `skip`, as text: what
    valgrind said and the stack, one frame a line."""
    lines = []
    for err in re.findall(r"<error>(.*?)</error>", text, re.S)[skip:][:10]:
        what = re.search(r"<what>(.*?)</what>|<text>(.*?)</text>", err, re.S)
        lines.append(" ".join(g for g in what.groups() if g)
                     if what else "?")
        for fr in re.findall(r"<frame>(.*?)</frame>", err, re.S)[:12]:
            fn = re.search(r"<fn>(.*?)</fn>", fr)
            fl = re.search(r"<file>(.*?)</file>", fr)
            ln = re.search(r"<line>(.*?)</line>", fr)
            obj = re.search(r"<obj>(.*?)</obj>", fr)
            where = ("%s:%s" % (fl.group(1), ln.group(1)) if fl and ln
                     else obj.group(1) if obj else "")
            lines.append("   %s (%s)" % (fn.group(1) if fn else "???",
                                         where))
    return "\n".join(lines)


def collect():
    """Judge the reports written since the last call; return a failure
    text (empty if clean) for the TAP line being printed now."""
    if not ENABLED or _logdir is None:
        return ""
    out = _pending[:]
    del _pending[:]
    for xml in sorted(glob.glob(os.path.join(_logdir, "vg.*.xml"))):
        try:
            with open(xml, "r", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        # A live process's errors are reported as they appear, its leaks
        # once it has exited.  Every file is read again each time: the
        # child of a forking server (minnbd without -f) writes its
        # records into its parent's file, after the parent's end tag.
        done = "</valgrindoutput>" in text
        kinds = _ERROR_RE.findall(text)
        new = kinds[_reported.get(xml, 0):]
        if not new:
            continue
        _reported[xml] = len(kinds)
        out.append("valgrind: %d error(s) (%s) in pid %s%s\n%s"
                   % (len(new), ", ".join(sorted(set(new))),
                      os.path.basename(xml)[3:-4],
                      "" if done else " (still running)",
                      _describe(text, len(kinds) - len(new))))
    return "\n".join(out)


def _at_exit():
    rest = collect()
    if rest:
        # One extra result beyond the plan: the driver reports it.
        print("not ok - valgrind errors after the last result", flush=True)
        for line in rest.rstrip().splitlines():
            print("# " + line, flush=True)
    shutil.rmtree(_logdir, ignore_errors=True)


if ENABLED:
    _setup()
