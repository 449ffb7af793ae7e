#!/usr/bin/python3
# minnbd under a flood of idle connections (issue 9 item 6, issue 16
# item 3): the handshake timeout, --max-connections, and running out of
# descriptors.  Idle sockets must not lock real clients out, and no
# connection may stay in the handshake for ever.
#
#  1. A few thousand idle sockets (as many as the open files limit
#     allows; fewer under valgrind, which caps threads): each gets the
#     greeting; a client connected before keeps being served and a new
#     one is served meanwhile; the server closes every idle socket once
#     the default handshake timeout (10 s) passed, and its threads go.
#  2. --max-connections: the sockets over the limit are closed at once
#     (EOF before the greeting), a libnbd client over the limit fails
#     cleanly, the clients within it are served; once the idle ones time
#     out a new client is served.
#  3. A client that keeps sending options without choosing an export is
#     closed at the deadline too: the timeout is for the whole
#     handshake, not per read.
#  4. Out of descriptors (open files limit 64): accepting pauses until a
#     connection ends instead of spinning on EMFILE; every waiting client
#     is served in the end.
#
# No sleep synchronises anything: the test waits for the server's own
# close on each socket (EOF), with generous upper bounds.

import os
import resource
import selectors
import socket
import struct
import sys
import time
import traceback

import nbd
import nbdtest

SIZE = 16 * 1024 * 1024
NBD_MAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454f5054
NBD_OPT_LIST = 3
GREETING = 18


def open_files_budget():
    """Raise our own soft limit to the hard one; how many idle sockets
    both sides can afford (the server raises its own limit the same)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard - 200


def idle_socket(path):
    """Connect and read the greeting; nothing else is sent."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    s.connect(path)
    g = b""
    while len(g) < GREETING:
        chunk = s.recv(GREETING - len(g))
        assert chunk, "the server closed an idle socket before its greeting"
        g += chunk
    assert struct.unpack(">QQ", g[:16]) == (NBD_MAGIC, IHAVEOPT), g
    return s


def wait_all_closed(socks, timeout=120):
    """Wait until the server closed every socket (EOF); return the time
    at which each one closed."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = {}
    deadline = time.monotonic() + timeout
    while len(closed) < len(socks):
        left = deadline - time.monotonic()
        assert left > 0, "%d of %d idle sockets still open after %d s" % (
            len(socks) - len(closed), len(socks), timeout)
        for key, _ in sel.select(left):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            if not data:
                closed[s] = time.monotonic()
                sel.unregister(s)
    sel.close()
    return closed


def served(srv, seed):
    """A real client: connects, writes, reads back."""
    h = srv.connect()
    data = nbdtest.random_bytes(4096, seed)
    h.pwrite(data, seed * 4096)
    assert h.pread(4096, seed * 4096) == data
    return h


def threads(srv):
    return nbdtest.proc_status(srv.proc.pid)["Threads"]


def case_idle_flood(d):
    n = min(3000, open_files_budget())
    if nbdtest.VALGRIND:
        n = min(n, 200)         # valgrind runs at most 500 threads
    srv = nbdtest.Server("minnbd", "flatfile",
                         nbdtest.backend_params("flatfile", d, SIZE), d,
                         extra=["--max-connections", str(n + 20)]).start()
    socks = []
    try:
        h0 = served(srv, 1)
        t0 = time.monotonic()
        for _ in range(n):
            socks.append(idle_socket(srv.sock))
        # Everyone idle holds a thread, nobody else is held up.
        h0.pwrite(b"x" * 512, 0)
        h1 = served(srv, 2)
        t = threads(srv)
        assert t <= n + 64, "%d threads for %d idle sockets" % (t, n)
        closed = wait_all_closed(socks)
        first = min(closed.values()) - t0
        assert first >= 9.0, "an idle socket was closed after %.1f s, " \
            "before the 10 s default timeout" % first
        # The served clients were not in the handshake: still served.
        assert h0.pread(512, 0) == b"x" * 512
        h1.shutdown()
        h0.shutdown()
        nbdtest.wait_until(lambda: threads(srv) < 64,
                           "the idle connections' threads to end")
        log = srv.log()
        assert "--handshake-timeout" in log, log[-2000:]
        served(srv, 3).shutdown()
    finally:
        for s in socks:
            s.close()
        rc = srv.stop()
    assert rc == 0, "minnbd exited with %s:\n%s" % (rc, srv.log()[-3000:])
    return "%d idle sockets" % n


def case_max_connections(d):
    limit = 20
    srv = nbdtest.Server("minnbd", "flatfile",
                         nbdtest.backend_params("flatfile", d, SIZE), d,
                         extra=["--max-connections", str(limit),
                                "--handshake-timeout", "3"]).start()
    socks = []
    try:
        h0 = served(srv, 1)
        t0 = time.monotonic()
        for _ in range(limit - 1):
            socks.append(idle_socket(srv.sock))
        # Over the limit: closed before the greeting, at once.
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(60)
            s.connect(srv.sock)
            try:
                data = s.recv(GREETING)
            except ConnectionResetError:
                data = b""
            s.close()
            assert data == b"", "a client over the limit got %r" % data
        try:
            srv.connect().shutdown()
            raise AssertionError("a libnbd client over the limit was served")
        except nbd.Error:
            pass
        # The client within the limit is served throughout.
        h0.pwrite(b"y" * 512, 0)
        assert h0.pread(512, 0) == b"y" * 512
        closed = wait_all_closed(socks)
        assert min(closed.values()) - t0 >= 2.5, "closed before 3 s"
        # Slots are free again: a new client is served.
        served(srv, 4).shutdown()
        h0.shutdown()
        log = srv.log()
        assert "(--max-connections): refused" in log, log[-2000:]
    finally:
        for s in socks:
            s.close()
        rc = srv.stop()
    assert rc == 0, "minnbd exited with %s:\n%s" % (rc, srv.log()[-3000:])


def case_chatty_handshake(d):
    """Options every 0.2 s (pacing, not synchronisation), never GO."""
    srv = nbdtest.Server("minnbd", "flatfile",
                         nbdtest.backend_params("flatfile", d, SIZE), d,
                         extra=["--handshake-timeout", "2"]).start()
    try:
        s = idle_socket(srv.sock)
        t0 = time.monotonic()
        s.sendall(struct.pack(">I", 1))          # FIXED_NEWSTYLE
        s.settimeout(0.2)
        eof = False
        while not eof and time.monotonic() - t0 < 60:
            try:
                s.sendall(struct.pack(">QII", IHAVEOPT, NBD_OPT_LIST, 0))
            except (BrokenPipeError, ConnectionResetError):
                eof = True
                break
            end = time.monotonic() + 0.2
            while time.monotonic() < end:
                try:
                    data = s.recv(65536)
                except socket.timeout:
                    break
                except ConnectionResetError:
                    data = b""
                if not data:
                    eof = True
                    break
        elapsed = time.monotonic() - t0
        s.close()
        assert eof, "a client sending options for 60 s was not closed"
        assert elapsed >= 1.5, "closed after %.1f s, before 2 s" % elapsed
        served(srv, 5).shutdown()
    finally:
        rc = srv.stop()
    assert rc == 0, "minnbd exited with %s:\n%s" % (rc, srv.log()[-3000:])


class LimitedServer(nbdtest.Server):
    """minnbd with at most 64 open files (prlimit execs the server
    in place, so socket activation's LISTEN_PID still matches)."""

    def argv(self):
        return ["prlimit", "--nofile=64:64", "--"] + super().argv()


def case_out_of_descriptors(d):
    if nbdtest.VALGRIND:
        raise nbdtest.Skip("valgrind needs descriptors of its own")
    nbdtest.require_tool("prlimit")
    srv = LimitedServer("minnbd", "flatfile",
                        nbdtest.backend_params("flatfile", d, SIZE), d,
                        extra=["--max-connections", "0",
                               "--handshake-timeout", "3"]).start()
    socks = []
    try:
        # About 57 are accepted before EMFILE; the others wait in the
        # listening socket's backlog (64) until descriptors come back.
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Blocking: with the backlog full, connect waits for room
            # (a non-blocking one would fail with EAGAIN).
            s.connect(srv.sock)
            s.settimeout(120)
            socks.append(s)
        # Every one gets its greeting in turn, and is closed in the end.
        for s in socks:
            g = b""
            while len(g) < GREETING:
                chunk = s.recv(GREETING - len(g))
                assert chunk, "closed before the greeting"
                g += chunk
        wait_all_closed(socks)
        served(srv, 6).shutdown()
        log = srv.log()
        n = log.count("accept: Too many open files")
        assert 1 <= n <= 30, "%d accept EMFILE messages (a spinning " \
            "accept loop?):\n%s" % (n, log[-2000:])
    finally:
        for s in socks:
            s.close()
        rc = srv.stop()
    assert rc == 0, "minnbd exited with %s:\n%s" % (rc, srv.log()[-3000:])


CASES = [
    ("idle sockets in the handshake are closed after the default "
     "timeout; others are served meanwhile", case_idle_flood),
    ("--max-connections: over-limit clients are closed, the others "
     "served", case_max_connections),
    ("a client sending options for ever is closed at the handshake "
     "deadline", case_chatty_handshake),
    ("out of descriptors: accepting pauses, every client is served in "
     "the end", case_out_of_descriptors),
]


def main():
    if not [p for p in nbdtest.pairs(["minnbd"], ["flatfile"])]:
        nbdtest.skip_all("minnbd-flatfile is not among NBDCAS_PAIRS")
    tap = nbdtest.TAP(len(CASES))
    nbdtest._watchdog(int(os.environ.get("NBDCAS_TEST_TIMEOUT", "900")))
    for desc, fn in CASES:
        d = nbdtest.tmpdir()
        try:
            note = fn(d)
            tap.ok(True, desc + (" (%s)" % note if note else ""))
        except nbdtest.Skip as e:
            tap.skip(desc, str(e))
        except Exception:
            tap.ok(False, desc, traceback.format_exc())
        finally:
            import shutil
            shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


main()
