# Helpers shared by the cas tests that drive servers and the nbdcas tool
# over real stores (test-cas-integrity.py, test-cas-history.py): running
# the tool, making stores from images, connections that always close,
# and a runner of named cases, one TAP line each.

import os
import shutil
import subprocess
import time
import traceback

import nbd

import nbdtest

NBDCAS = os.environ["NBDCAS"]
BS = 64 * 1024
MiB = 1024 * 1024


# nbdkit closes a client's socket before it calls the plugin's close
# (server/connections.c, free_connection), so a client that has
# disconnected cannot wait for the server to let go of its volume: a
# delete or rename right after can still be refused as open.  That is
# the right answer at that moment.  Where a test expects the command to
# succeed (check=0) it is run again until the volume is closed, for up to
# OPEN_WAIT seconds: a volume that stays open still fails the test.
OPEN_REFUSAL = "is open (a client is connected to it)"
OPEN_WAIT = 60


def tool(*args, check=None, env=None):
    deadline = time.monotonic() + OPEN_WAIT
    pause = 0.01
    while True:
        p = subprocess.run([NBDCAS] + [str(a) for a in args],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=600,
                           env=dict(os.environ, **(env or {})))
        if check != 0 or p.returncode == 0 or \
                OPEN_REFUSAL not in p.stderr or time.monotonic() > deadline:
            break
        time.sleep(pause)
        pause = min(2 * pause, 0.5)
    if check is not None and p.returncode != check:
        raise AssertionError("nbdcas %s: exit %d, expected %d\nstdout:\n%s\n"
                             "stderr:\n%s" % (" ".join(map(str, args)),
                                              p.returncode, check, p.stdout,
                                              p.stderr))
    return p


def image(d, name, size, seed):
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(nbdtest.random_bytes(size, seed))
    return path


def make_store(d, vols, fmt=None):
    """A store at d/store with volumes {name: image path}, imported in
    order (so the last volume's records, its map node last, end the
    pack).  fmt: its format version (nbdcas create --format), None for
    the default."""
    store = os.path.join(d, "store")
    tool("create", store, *(["--format", str(fmt)] if fmt else []), check=0)
    for name, img in vols.items():
        tool("import", store, name, img, "--create", check=0)
    return store


class connection:
    """with connection(srv, export) as h: a handle that is closed however
    the block ends (a server waits for its clients before it exits)."""

    def __init__(self, srv, export=""):
        self.h = srv.connect(export)

    def __enter__(self):
        return self.h

    def __exit__(self, *exc):
        try:
            self.h.shutdown()
        except nbd.Error:
            pass
        if hasattr(self.h, "close"):
            self.h.close()
        del self.h


def read_volume(srv, export, size):
    with connection(srv, export) as h:
        out = bytearray()
        for off in range(0, size, 4 * MiB):
            out += h.pread(min(4 * MiB, size - off), off)
        return bytes(out)


def serve(server, store, d, params=(), readonly=False):
    """A server on store, past its start-up: it holds the store (and its
    control socket answers) when this returns."""
    srv = nbdtest.Server(server, "cas", ["store=" + store] + list(params),
                         d, readonly=readonly).start()
    srv.ready()
    return srv


def stopped(srv):
    rc = srv.stop()
    assert rc == 0 or srv.server == "nbdkit", \
        "server exited with %s:\n%s" % (rc, srv.log())




def check_reads(server, store, d, vols):
    srv = serve(server, store, d, ["volume=" + next(iter(vols))])
    try:
        for name, img in vols.items():
            with open(img, "rb") as f:
                want = f.read()
            assert read_volume(srv, name, len(want)) == want, \
                "volume %s reads back wrong" % name
    finally:
        stopped(srv)


def run_cases(per_server, tool_only):
    """per_server: [(name, fn(server, d))], run once per server serving
    cas; tool_only: [(name, fn(d))], run once.  Each in a fresh temp dir,
    one TAP line each."""
    servers = [s for s, _ in nbdtest.pairs(backends=["cas"])]
    if not servers:
        nbdtest.skip_all("no cas pair selected (NBDCAS_PAIRS)")
    tap = nbdtest.TAP(len(per_server) * len(servers) + len(tool_only))
    nbdtest._watchdog(int(os.environ.get("NBDCAS_TEST_TIMEOUT", "900")))
    cases = [("%s [%s+cas]" % (n, s), (lambda fn, s: lambda d: fn(s, d))(fn, s))
             for s in servers for n, fn in per_server]
    cases += [("%s [nbdcas]" % n, fn) for n, fn in tool_only]
    for name, fn in cases:
        d = nbdtest.tmpdir()
        try:
            fn(d)
            tap.ok(True, name)
        except Exception:
            tap.ok(False, name, traceback.format_exc())
        finally:
            shutil.rmtree(d, ignore_errors=True)
    raise SystemExit(1 if tap.failed else 0)
