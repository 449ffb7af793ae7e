#!/usr/bin/python3
# How minnbd reports a backend whose open fails (issue 9 item 8, the
# front end's part): NBD_OPT_GO and NBD_OPT_INFO get the option error
# that matches the backend's errno, with the backend's message as the
# reply's text, and the session goes on; NBD_OPT_EXPORT_NAME (no error
# reply exists) closes the connection; the log names the export, the
# message and the errno.  libnbd then reports the matching errno.
#
# The backend is the fuzz targets' memory backend served by minnbd
# (fuzz/minnbd-membackend): its unlisted export "error-ENAME" fails to
# open with errno ENAME.

import os
import socket
import struct
import sys
import traceback

import nbd
import nbdtest

IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3e889045565a9
NBD_OPT_EXPORT_NAME, NBD_OPT_INFO, NBD_OPT_GO = 1, 6, 7
REP_ACK = 1
ERR = {
    "UNSUP": 0x80000001, "POLICY": 0x80000002, "INVALID": 0x80000003,
    "PLATFORM": 0x80000004, "UNKNOWN": 0x80000006, "SHUTDOWN": 0x80000007,
}

# errno -> (option error, what libnbd 1.14 makes of it: an errno name,
# or None for "server policy prevents NBD_OPT_GO" without an errno)
CASES = [
    ("ENOENT", "UNKNOWN", "ENOENT"),
    ("EINVAL", "INVALID", "EINVAL"),
    ("EPERM", "POLICY", None),
    ("EACCES", "POLICY", None),
    ("EROFS", "POLICY", None),
    ("ESHUTDOWN", "SHUTDOWN", "ESHUTDOWN"),
    ("EIO", "PLATFORM", None),
    ("ENOMEM", "PLATFORM", None),
    ("EBUSY", "PLATFORM", None),
]

TOP = os.environ.get("top_builddir", "..")
MEMSERVER = os.path.join(TOP, "fuzz", "minnbd-membackend")


class MemServer(nbdtest.Server):
    def argv(self):
        return [MEMSERVER] + self.extra + ["mem"]


def message(ename):
    return "mem: export 'error-%s' fails to open with %s, as its name " \
        "asks" % (ename, ename)


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            return b
        b += c
    return b


def start_session(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(path)
    assert len(recv_exact(s, 18)) == 18
    s.sendall(struct.pack(">I", 3))          # FIXED_NEWSTYLE | NO_ZEROES
    return s


def send_option(s, opt, payload):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(payload)) + payload)


def read_reply(s):
    h = recv_exact(s, 20)
    assert len(h) == 20, "connection closed instead of a reply"
    magic, opt, rep, ln = struct.unpack(">QIII", h)
    assert magic == REP_MAGIC, hex(magic)
    return opt, rep, recv_exact(s, ln)


def go_payload(name):
    name = name.encode()
    return struct.pack(">I", len(name)) + name + struct.pack(">H", 0)


def check_raw(srv, ename, want):
    """GO and INFO get ERR_<want> + the message, the session goes on; GO
    on the default export then succeeds on the same connection."""
    s = start_session(srv.sock)
    try:
        for opt in (NBD_OPT_INFO, NBD_OPT_GO):
            send_option(s, opt, go_payload("error-" + ename))
            o, rep, text = read_reply(s)
            assert o == opt and rep == ERR[want], \
                "%s: option %d answered 0x%x, wanted ERR_%s" % (
                    ename, opt, rep, want)
            assert text.decode() == message(ename), \
                "%s: reply text %r" % (ename, text)
        send_option(s, NBD_OPT_GO, go_payload(""))
        while True:
            o, rep, _ = read_reply(s)
            if rep != 3:                          # NBD_REP_INFO
                break
        assert rep == REP_ACK, "GO \"\" after the failures: 0x%x" % rep
    finally:
        s.close()
    # EXPORT_NAME has no error reply: the server closes.
    s = start_session(srv.sock)
    try:
        send_option(s, NBD_OPT_EXPORT_NAME, ("error-" + ename).encode())
        assert s.recv(1) == b"", "EXPORT_NAME of a failing export answered"
    finally:
        s.close()


def check_libnbd(srv, ename, want_errno):
    h = nbd.NBD()
    h.set_export_name("error-" + ename)
    try:
        h.connect_unix(srv.sock)
        raise AssertionError("libnbd connected to export error-" + ename)
    except nbd.Error as e:
        if want_errno is None:
            assert "policy" in e.string, "%s: libnbd said %r" % (
                ename, e.string)
        else:
            import errno as E
            assert e.errnum == getattr(E, want_errno), \
                "%s: libnbd said errno %s (%s)" % (ename, e.errno, e.string)


def main():
    if not os.path.exists(MEMSERVER):
        nbdtest.skip_all("fuzz/minnbd-membackend is not built")
    if not nbdtest.pairs(["minnbd"]):
        nbdtest.skip_all("no minnbd pair in NBDCAS_PAIRS")
    tap = nbdtest.TAP(len(CASES))
    nbdtest._watchdog(int(os.environ.get("NBDCAS_TEST_TIMEOUT", "900")))
    d = nbdtest.tmpdir()
    srv = MemServer("minnbd", "mem", [], d).start()
    try:
        for ename, want, lib in CASES:
            desc = "open fails with %s: GO/INFO answer ERR_%s with the " \
                "backend's message, EXPORT_NAME closes, libnbd sees %s" % (
                    ename, want, lib or "'policy prevents'")
            try:
                check_raw(srv, ename, want)
                check_libnbd(srv, ename, lib)
                log = srv.log()
                line = "NBD_OPT_GO: export \"error-%s\": %s (%s)" % (
                    ename, message(ename), os.strerror(
                        getattr(__import__("errno"), ename)))
                assert line in log, "no log line %r in:\n%s" % (
                    line, log[-3000:])
                tap.ok(True, desc)
            except Exception:
                tap.ok(False, desc, traceback.format_exc())
    finally:
        rc = srv.stop()
        import shutil
        shutil.rmtree(d, ignore_errors=True)
    if rc != 0:
        print("# the server exited with %s" % rc)
    sys.exit(1 if tap.failed or rc != 0 else 0)


main()
