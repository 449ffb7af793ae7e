#!/usr/bin/python3
# Relative paths on the command line of a server that daemonizes (issue 9
# item 5).  nbdkit and minnbd both change to / when they fork into the
# background, so every path parameter must be made absolute when parsed:
# file= (flatfile), store= (cas), and minnbd's own -U and -P.
#
# Each pair runs the way a user runs it: from the directory holding the
# disk, in the background (really daemonizing: -P pidfile, -U socket,
# not socket activation), with relative paths only:
#   cd DIR && nbdkit -P nbdkit.pid -U nbd.sock ./flatfile-plugin.so file=rel.img
#   cd DIR && minnbd -P minnbd.pid -U nbd.sock flatfile file=rel.img
# Then a client writes and flushes, the daemon must be running in /, a
# SIGTERM stops it (minnbd removes its socket), a second daemon started
# the same way reads the data back, and the data must be in DIR (the
# flatfile image itself; for cas, DIR/STORE exists and /STORE does not).
#
# Synchronisation: both daemons' parents return once the socket listens;
# the pidfile exists once a handshake succeeded (nbdkit writes it after
# forking, before accepting); exits are waited for with a pidfd.

import os
import select
import shutil
import signal
import subprocess
import sys
import traceback
import uuid

import nbd
import nbdtest

SIZE = 16 * 1024 * 1024
PATTERN = bytes(range(256)) * 16


def wait_exit(pid, timeout=60):
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        r, _, _ = select.select([fd], [], [], timeout)
        return bool(r)
    finally:
        os.close(fd)


class Daemon:
    def __init__(self, server, backend, d, store):
        self.server, self.backend, self.d, self.store = \
            server, backend, d, store
        self.pidfile = os.path.join(d, server + ".pid")
        self.sock = os.path.join(d, "nbd.sock")
        self.pid = None

    def argv(self, create):
        if self.backend == "flatfile":
            params = ["file=rel.img"]
        else:
            params = ["store=" + self.store] + \
                (["size=%d" % SIZE] if create else [])
        if self.server == "nbdkit":
            plugin = "./%s-plugin.so" % self.backend
            if not os.path.exists(os.path.join(self.d, plugin)):
                os.symlink(os.environ["%s_PLUGIN" % self.backend.upper()],
                           os.path.join(self.d, plugin))
            return [os.environ.get("NBDKIT", "nbdkit"),
                    "-P", os.path.basename(self.pidfile), "-U", "nbd.sock",
                    plugin] + params
        return [os.environ["MINNBD"], "-P", os.path.basename(self.pidfile),
                "-U", "nbd.sock", self.backend] + params

    def start(self, create=False):
        env = nbdtest._sanitizer_env(dict(os.environ), self.server)
        p = subprocess.run(self.argv(create), cwd=self.d, env=env,
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, "%s exited with %d:\n%s" % (
            " ".join(self.argv(create)), p.returncode, p.stderr)
        # A handshake proves the daemon serves, and that it wrote its
        # pidfile (before accepting).
        h = nbd.NBD()
        try:
            h.connect_unix(self.sock)
        except nbd.Error:
            # The daemon runs but does not serve: learn its pid anyway
            # (nbdkit writes it after forking), so that it is stopped.
            nbdtest.wait_until(lambda: os.path.exists(self.pidfile),
                               "the pidfile", timeout=30)
            self.read_pid()
            raise
        self.read_pid()
        return h

    def read_pid(self):
        with open(self.pidfile) as f:
            self.pid = int(f.read().strip())

    def stop(self):
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        assert wait_exit(self.pid), "the daemon did not exit on SIGTERM"
        self.pid = None

    def kill(self):
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_exit(self.pid)
            self.pid = None


def body(server, backend, d):
    store = "relstore-" + uuid.uuid4().hex[:8]
    if backend == "flatfile":
        with open(os.path.join(d, "rel.img"), "wb") as f:
            f.truncate(SIZE)
    dm = Daemon(server, backend, d, store)
    try:
        h = dm.start(create=True)
        assert h.get_size() == SIZE, "size %d" % h.get_size()
        cwd = os.readlink("/proc/%d/cwd" % dm.pid)
        assert cwd == "/", "the daemon runs in %s, not in /" % cwd
        h.pwrite(PATTERN, 65536)
        h.flush()
        h.shutdown()
        del h
        dm.stop()
        if server == "minnbd":
            assert not os.path.exists(dm.sock), \
                "minnbd left its socket nbd.sock behind"

        if backend == "flatfile":
            with open(os.path.join(d, "rel.img"), "rb") as f:
                f.seek(65536)
                assert f.read(len(PATTERN)) == PATTERN, \
                    "the data is not in DIR/rel.img"
        else:
            assert not os.path.exists("/" + store), \
                "the store was created as /%s" % store
            assert os.path.isdir(os.path.join(d, store)), \
                "no store in DIR/%s" % store

        if os.path.exists(dm.sock):
            os.unlink(dm.sock)      # nbdkit 1.32 leaves it
        h = dm.start()
        assert h.pread(len(PATTERN), 65536) == PATTERN, \
            "the second daemon does not read the data back"
        h.shutdown()
        del h
        dm.stop()
    finally:
        dm.kill()
        if os.path.isdir("/" + store):
            shutil.rmtree("/" + store, ignore_errors=True)


def main():
    ps = nbdtest.pairs()
    tap = nbdtest.TAP(len(ps))
    for server, backend in ps:
        desc = "relative paths, in the background [%s+%s]" % (server,
                                                               backend)
        if server == "nbdkit" and shutil.which(
                os.environ.get("NBDKIT", "nbdkit")) is None:
            tap.skip(desc, "nbdkit is not installed")
            continue
        d = nbdtest.tmpdir()
        try:
            body(server, backend, d)
            tap.ok(True, desc)
        except Exception:
            tap.ok(False, desc, traceback.format_exc())
        finally:
            shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


main()
