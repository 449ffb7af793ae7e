# Fault injection (issue 5, item 3): shared body of tests/test-fault-*.py.
#
# The server runs with tests/faultshim.so preloaded (FAULTSHIM, built by
# `make check`), restricted by FAULT_PATH to the test's own disk/store
# directory so nbdkit itself is untouched, and armed/disarmed through a
# control file (FAULT_CONTROL) while it runs.  Per (server, backend)
# pair:
#
#   1. write A, flush (acknowledged);
#   2. arm the fault, write B over the first extent, flush: the client
#      must see the expected NBD error (write or flush), never success of
#      both, never another error;
#   3. disarm: the server keeps serving: A intact outside the failed
#      write, the failed range reads A or B (old or new, nothing else),
#      a new write C + flush works;
#   4. arm again, a burst of unflushed writes runs out of space in the
#      middle, then kill -9 the server;
#   5. restart without the shim: every acknowledged byte is there, and for
#      cas the store opens clean and `nbdcas fsck` passes.
#
# Known bugs in the code under test are expected failures (TAP "# TODO"),
# listed in KNOWN_BUGS with the reason, so CI stays green while they are
# open and turns red (XPASS) once they are fixed.

import errno
import os
import shutil
import signal
import sys
import tempfile
import traceback

import nbd

from nbdtest import (TAP, Server, backend_params, cmd, pairs,
                     random_bytes, _watchdog)

SIZE = 16 * 1024 * 1024
EXT = 64 * 1024               # one cas block at the default block size
NEXT = 8                      # extents written with A


def _errno_of(e):
    # nbd.Error: .errnum is the number (.errno is its name).
    return getattr(e, "errnum", None)


class Fault:
    def __init__(self, base):
        self.ctl = os.path.join(base, "fault.ctl")
        self.disarm()

    def arm(self, text):
        with open(self.ctl + ".new", "w") as f:
            f.write(text)
        os.rename(self.ctl + ".new", self.ctl)

    def disarm(self):
        self.arm("")


def _preload_env(shim, fault_path, ctl, on):
    """Set os.environ so that Server.start() preloads the shim (or not).
    Under sanitizers the runtime must come first in LD_PRELOAD."""
    san = os.environ.get("_FAULT_SANITIZER_PRELOAD", "")
    if on:
        pre = (san + " " if san else "") + shim
        os.environ["LD_PRELOAD"] = pre
        if san:
            os.environ["SANITIZER_PRELOAD"] = pre
        os.environ["FAULT_PATH"] = fault_path
        os.environ["FAULT_CONTROL"] = ctl
    else:
        os.environ.pop("LD_PRELOAD", None)
        if san:
            os.environ["SANITIZER_PRELOAD"] = san
        for k in ("FAULT_PATH", "FAULT_CONTROL"):
            os.environ.pop(k, None)


def _try(fn, *args):
    """Run fn; return None on success or the errno of the NBD error."""
    try:
        fn(*args)
        return None
    except nbd.Error as e:
        return _errno_of(e) or -1


def body(srv, b, fault, arm_text, want, shim, fault_path, workdir, res):
    """res gets the soft results: res["errno"] a list of wrong errors,
    res["fsck"] None (not run) or (ok, output)."""
    A = random_bytes(NEXT * EXT, 1)
    B = random_bytes(EXT, 2)
    C = random_bytes(EXT, 3)
    name = errno.errorcode.get(want, str(want))

    # 1. acknowledged data
    h = srv.connect()
    h.pwrite(A, 0)
    h.flush()

    # 2. the fault
    fault.arm(arm_text)
    werr = _try(h.pwrite, B, 0)
    ferr = _try(h.flush)
    fault.disarm()
    assert werr is not None or ferr is not None, \
        "write and flush both succeeded with %s armed" % arm_text
    for what, e in (("write", werr), ("flush", ferr)):
        if e not in (None, want):
            res["errno"].append("%s failed with %s, expected %s" % (
                what, errno.errorcode.get(e, e), name))

    # 3. keeps serving; nothing acknowledged lost; old-or-new
    got = h.pread(NEXT * EXT, 0)
    assert got[EXT:] == A[EXT:], "flushed data outside the failed write " \
        "changed"
    if b == "cas":
        # cas promises whole blocks: old or new, never a mixture.
        assert got[:EXT] in (A[:EXT], B), "the failed write left neither " \
            "the old nor the new data"
    else:
        # A plain file has no atomic writes: each byte old or new.
        assert all(g in (x, y) for g, x, y in zip(got[:EXT], A, B)), \
            "the failed write left bytes that are neither old nor new"
    h.pwrite(C, 0)
    h.flush()
    assert h.pread(EXT, 0) == C, "write after the fault reads back wrong"

    # 4. out of space in the middle of a burst, then kill -9
    fault.arm(arm_text.replace("AFTER=0", "AFTER=5"))
    cookies = [h.aio_pwrite(random_bytes(EXT, 10 + i), (NEXT + i) * EXT)
               for i in range(16)]
    cookies.append(h.aio_flush())
    errs = set()
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        e = _try(h.aio_command_completed, c)
        if e is not None:
            errs.add(e)
    assert errs, "a burst of writes and a flush all succeeded with %s " \
        "armed" % arm_text
    if errs != {want}:
        res["errno"].append("burst: errors %s, expected only %s" % (
            sorted(errno.errorcode.get(e, e) for e in errs), name))
    srv.kill9()
    fault.disarm()

    # 5. restart clean
    _preload_env(shim, fault_path, fault.ctl, False)
    srv.start()
    h2 = srv.connect()
    got = h2.pread(NEXT * EXT, 0)
    assert got[:EXT] == C and got[EXT:] == A[EXT:], \
        "acknowledged data lost after the crash"
    h2.shutdown()
    rc = srv.stop()
    assert rc == 0, "server exited %s after restart:\n%s" % (rc, srv.log())
    if b == "cas":
        store = [p for p in srv.params if p.startswith("store=")][0][6:]
        p = cmd([os.environ["NBDCAS"], "fsck", store], check=False)
        res["fsck"] = (p.returncode == 0, "nbdcas fsck: exit %d\n%s%s" % (
            p.returncode, p.stdout, p.stderr))


def main(test, arm_text, want, known_bugs=None):
    """Run the fault test on every pair: per pair one TAP line for the
    data checks, one for the NBD error the client saw, and (cas) one for
    fsck afterwards.  known_bugs: {(check, backend): reason}, check in
    "data", "errno", "fsck": reported as TODO (expected failure)."""
    known_bugs = known_bugs or {}
    shim = os.environ.get("FAULTSHIM")
    if not shim or not os.path.exists(shim):
        print("1..0 # SKIP FAULTSHIM (tests/faultshim.so) not built")
        sys.exit(0)
    if os.environ.get("SANITIZER_PRELOAD"):
        os.environ["_FAULT_SANITIZER_PRELOAD"] = \
            os.environ["SANITIZER_PRELOAD"]
    ps = pairs()
    tap = TAP(sum(3 if b == "cas" else 2 for s, b in ps))
    _watchdog(int(os.environ.get("NBDCAS_TEST_TIMEOUT", "600")))
    base = tempfile.mkdtemp(prefix="nbdcas-fault.",
                            dir=os.environ.get("TMPDIR", "/tmp"))
    base = os.path.realpath(base)
    failed = 0

    def report(check, b, ok, desc, diag):
        nonlocal failed
        todo = known_bugs.get((check, b))
        if todo:
            # "not ok # TODO" is XFAIL; "ok # TODO" is XPASS, which the
            # driver counts as a failure: the bug is fixed, drop the entry.
            tap.n += 1
            print("%s %d - %s # TODO %s" % ("ok" if ok else "not ok", tap.n,
                                           desc, todo), flush=True)
            for line in (diag or "").rstrip().splitlines():
                print("# " + line, flush=True)
        else:
            tap.ok(ok, desc, diag)
            failed += not ok

    for s, b in ps:
        pair = "[%s+%s]" % (s, b)
        d = tempfile.mkdtemp(prefix="pair.", dir=base)
        data = os.path.join(d, "data")
        os.mkdir(data)
        fault = Fault(base)
        srv = None
        ok, diag = True, None
        res = {"errno": [], "fsck": None}
        try:
            p = backend_params(b, data, SIZE)
            _preload_env(shim, data, fault.ctl, True)
            srv = Server(s, b, p, d).start()
            body(srv, b, fault, arm_text, want, shim, data, d, res)
        except Exception:
            ok = False
            diag = traceback.format_exc() + "server log:\n" + \
                (srv.log() if srv else "")
            if srv:
                srv.stop(signal.SIGKILL)
        finally:
            _preload_env(shim, data, fault.ctl, False)
            shutil.rmtree(d, ignore_errors=True)
        report("data", b, ok, "%s: serves on, no acknowledged data lost %s"
               % (test, pair), diag)
        report("errno", b, ok and not res["errno"],
               "%s: the client sees %s %s" % (
                   test, errno.errorcode.get(want, want), pair),
               "\n".join(res["errno"]) if ok else "not reached")
        if b == "cas":
            f = res["fsck"] or (False, "not reached")
            report("fsck", b, f[0], "%s: store opens clean, fsck passes %s"
                   % (test, pair), f[1])
    shutil.rmtree(base, ignore_errors=True)
    sys.exit(1 if failed else 0)
