#!/usr/bin/python3
# minnbd over a raw socket: hand-written handshakes and requests, good and
# malformed, checked byte for byte against doc/proto.md of
# NetworkBlockDevice/nbd.  After each hostile client the server must keep
# serving others; at the end it must exit 0 on SIGTERM (under the
# sanitizer build that also means no leak and no memory error).
#
# One TAP line per check.  Only minnbd: nbdkit is not ours to test.

import os
import shutil
import socket
import struct
import sys
import traceback

import nbd
import nbdtest

SIZE = 128 * 1024 * 1024     # sparse; larger than the 64 MiB maximum
PROBE = 96 * 1024 * 1024     # still_serving's offset: no check writes there

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REPMAGIC = 0x3e889045565a9
REQMAGIC = 0x25609513
SIMPLE = 0x67446698
STRUCT = 0x668e33ef

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO, \
    OPT_SR, OPT_LIST_META, OPT_SET_META = 1, 2, 3, 5, 6, 7, 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR = 1 << 31
ERR_UNSUP, ERR_POLICY, ERR_INVALID, ERR_UNKNOWN, ERR_TOO_BIG = \
    ERR + 1, ERR + 2, ERR + 3, ERR + 6, ERR + 9
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_ZERO, \
    CMD_BS = range(8)
F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO = 1, 2, 4, 8, 16
EPERM, EINVAL, ENOSPC, EOVERFLOW = 1, 22, 28, 75
T_DATA, T_HOLE, T_BS, T_ERROR = 1, 2, 5, 32769


class Closed(Exception):
    pass


class Raw:
    """A hand-driven NBD client on a Unix socket."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(30)
        self.s.connect(path)

    def close(self):
        self.s.close()

    def send(self, b):
        self.s.sendall(b)

    def recv(self, n):
        out = b""
        while len(out) < n:
            b = self.s.recv(n - len(out))
            if not b:
                raise Closed("server closed after %d of %d bytes" %
                             (len(out), n))
            out += b
        return out

    def is_closed(self):
        """True once the server has closed the connection (EOF)."""
        try:
            while True:
                b = self.s.recv(65536)
                if not b:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def hello(self, cflags=3):
        magic, opt, gflags = struct.unpack(">QQH", self.recv(18))
        assert magic == NBDMAGIC and opt == IHAVEOPT, "bad greeting"
        self.send(struct.pack(">I", cflags))
        return gflags

    def opt(self, option, data=b"", length=None):
        if length is None:
            length = len(data)
        self.send(struct.pack(">QII", IHAVEOPT, option, length) + data)

    def reply(self):
        magic, option, rtype, length = struct.unpack(">QIII",
                                                     self.recv(20))
        assert magic == REPMAGIC, "bad option reply magic %x" % magic
        return option, rtype, self.recv(length)

    def replies(self):
        """All replies to one option, up to ACK or an error."""
        out = []
        while True:
            o, t, d = self.reply()
            out.append((t, d))
            if t == REP_ACK or t & ERR:
                return out

    def go(self, name=b"", sr=True, meta=False, infos=(3,)):
        if sr:
            self.opt(OPT_SR)
            assert self.replies()[-1][0] == REP_ACK
        if meta:
            q = b"base:allocation"
            self.opt(OPT_SET_META, struct.pack(">I", len(name)) + name +
                     struct.pack(">II", 1, len(q)) + q)
            assert self.replies()[-1][0] == REP_ACK
        self.opt(OPT_GO, info_payload(name, infos))
        reps = self.replies()
        assert reps[-1][0] == REP_ACK, "GO failed: %r" % (reps,)
        for t, d in reps:
            if t == REP_INFO and struct.unpack(">H", d[:2])[0] == 0:
                return struct.unpack(">QH", d[2:12])
        raise AssertionError("no NBD_INFO_EXPORT")

    def req(self, rtype, off=0, count=0, flags=0, cookie=1, payload=b""):
        self.send(struct.pack(">IHHQQI", REQMAGIC, flags, rtype, cookie,
                              off, count) + payload)

    def simple(self):
        magic, err, cookie = struct.unpack(">IIQ", self.recv(16))
        assert magic == SIMPLE, "expected a simple reply, magic %x" % magic
        return err, cookie

    def chunk(self):
        magic, flags, ctype, cookie, length = \
            struct.unpack(">IHHQI", self.recv(20))
        assert magic == STRUCT, "expected a structured chunk, magic %x" % \
            magic
        return flags, ctype, cookie, self.recv(length)

    def any_reply(self):
        """(error, cookie, chunks) for one whole reply of either kind."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE:
            err, cookie = struct.unpack(">IQ", self.recv(12))
            return err, cookie, []
        assert magic == STRUCT, "bad reply magic %x" % magic
        chunks, err = [], 0
        rest = self.recv(16)
        while True:
            flags, ctype, cookie, length = struct.unpack(">HHQI", rest)
            data = self.recv(length)
            chunks.append((ctype, data))
            if ctype & 0x8000:
                err = struct.unpack(">I", data[:4])[0]
            if flags & 1:
                return err, cookie, chunks
            assert struct.unpack(">I", self.recv(4))[0] == STRUCT
            rest = self.recv(16)


def info_payload(name, infos=(), count=None):
    if count is None:
        count = len(infos)
    return struct.pack(">I", len(name)) + name + struct.pack(">H", count) + \
        b"".join(struct.pack(">H", i) for i in infos)


def meta_payload(name, queries, count=None):
    if count is None:
        count = len(queries)
    return struct.pack(">I", len(name)) + name + \
        struct.pack(">I", count) + \
        b"".join(struct.pack(">I", len(q)) + q for q in queries)


def error_message(chunks):
    for ctype, data in chunks:
        if ctype & 0x8000:
            n = struct.unpack(">H", data[4:6])[0]
            return data[6:6 + n].decode()
    return None


class Suite:
    def __init__(self, srv):
        self.srv = srv
        self.checks = []

    def check(self, desc):
        def deco(fn):
            self.checks.append((desc, fn))
            return fn
        return deco

    def raw(self):
        return Raw(self.srv.sock)

    def still_serving(self):
        """Another client is served normally.  At an offset no other
        check writes: a vanished client's queued writes are still being
        executed (drained) meanwhile, and connections are not ordered."""
        h = nbd.NBD()
        h.connect_unix(self.srv.sock)
        assert h.get_size() == SIZE
        h.pwrite(b"ok" * 256, PROBE)
        assert h.pread(512, PROBE) == b"ok" * 256
        h.shutdown()


def define(s):
    c = s.check

    # ---- handshake ----
    @c("greeting: fixed newstyle + no zeroes")
    def _():
        r = s.raw()
        assert r.hello() == 3
        r.opt(OPT_ABORT)
        assert r.replies() == [(REP_ACK, b"")]
        assert r.is_closed()

    @c("unknown client flags: connection closed")
    def _():
        r = s.raw()
        r.hello(cflags=1 | 4)
        assert r.is_closed()

    @c("bad option magic: connection closed")
    def _():
        r = s.raw()
        r.hello()
        r.send(struct.pack(">QII", 0x1122334455667788, OPT_LIST, 0))
        assert r.is_closed()

    @c("option length 0xffffffff: closed without reading 4 GiB")
    def _():
        r = s.raw()
        r.hello()
        r.opt(OPT_GO, b"\0" * 16, length=0xffffffff)
        assert r.is_closed()

    @c("option length 0xffffffff on EXPORT_NAME: closed")
    def _():
        r = s.raw()
        r.hello()
        r.opt(OPT_EXPORT_NAME, b"", length=0xffffffff)
        assert r.is_closed()

    @c("truncated option then close: no harm")
    def _():
        r = s.raw()
        r.hello()
        r.opt(OPT_INFO, b"\0\0", length=100)
        r.close()
        s.still_serving()

    @c("oversized option payload: ERR_TOO_BIG, payload consumed")
    def _():
        r = s.raw()
        r.hello()
        r.opt(99, b"x" * (200 * 1024))
        assert r.replies()[-1][0] == ERR_TOO_BIG
        r.opt(OPT_LIST)
        assert r.replies()[-1][0] == REP_ACK

    @c("unknown option: ERR_UNSUP, payload consumed, session goes on")
    def _():
        r = s.raw()
        r.hello()
        r.opt(99, b"0123456789")
        (t, d), = r.replies()
        assert t == ERR_UNSUP, hex(t)
        r.opt(OPT_LIST)
        reps = r.replies()
        assert reps[-1][0] == REP_ACK
        assert reps[0] == (REP_SERVER, b"\0\0\0\0"), reps

    @c("LIST with data: ERR_INVALID")
    def _():
        r = s.raw()
        r.hello()
        r.opt(OPT_LIST, b"junk")
        assert r.replies()[-1][0] == ERR_INVALID

    @c("STARTTLS: ERR_UNSUP or ERR_POLICY, session goes on")
    def _():
        r = s.raw()
        r.hello()
        r.opt(OPT_STARTTLS)
        assert r.replies()[-1][0] in (ERR_UNSUP, ERR_POLICY)
        size, flags = r.go()
        assert size == SIZE

    @c("STRUCTURED_REPLY with data: ERR_INVALID")
    def _():
        r = s.raw()
        r.hello()
        r.opt(OPT_SR, b"x")
        assert r.replies()[-1][0] == ERR_INVALID

    @c("INFO: name length larger than the payload: ERR_INVALID")
    def _():
        r = s.raw()
        r.hello()
        r.opt(OPT_INFO, struct.pack(">I", 1000) + b"abc" +
              struct.pack(">H", 0))
        assert r.replies()[-1][0] == ERR_INVALID
        r.opt(OPT_INFO, info_payload(b""))
        assert r.replies()[-1][0] == REP_ACK

    @c("INFO/GO: bad information request counts: ERR_INVALID")
    def _():
        r = s.raw()
        r.hello()
        for p in (info_payload(b"", (3,), count=5),
                  info_payload(b"", (3, 1), count=1),
                  info_payload(b"", ()) + b"x",
                  b"\0\0\0\0\0"):
            r.opt(OPT_GO, p)
            assert r.replies()[-1][0] == ERR_INVALID, p
        r.go()

    @c("GO unknown export: ERR_UNKNOWN, then GO works")
    def _():
        r = s.raw()
        r.hello()
        r.opt(OPT_GO, info_payload(b"nosuchexport"))
        reps = r.replies()
        assert reps[-1][0] == ERR_UNKNOWN, reps
        assert not any(t == REP_INFO for t, _ in reps)
        r.go()

    @c("INFO then GO: same answers; INFO_NAME and BLOCK_SIZE")
    def _():
        r = s.raw()
        r.hello()
        r.opt(OPT_SR)
        r.replies()
        r.opt(OPT_INFO, info_payload(b"", (1, 2, 3)))
        a = r.replies()
        r.opt(OPT_GO, info_payload(b"", (1, 2, 3)))
        b = r.replies()
        assert sorted(a) == sorted(b), (a, b)
        infos = {struct.unpack(">H", d[:2])[0]: d[2:] for t, d in a
                 if t == REP_INFO}
        assert infos[1] == b"", infos
        mn, pref, mx = struct.unpack(">III", infos[3])
        assert mn == 1 and pref >= 512 and mx >= 32 * 1024 * 1024
        size, flags = struct.unpack(">QH", infos[0])
        assert size == SIZE and flags & 1 and flags & (1 << 7)  # DF

    @c("meta contexts: need SR, syntax errors, unknown namespaces")
    def _():
        r = s.raw()
        r.hello()
        r.opt(OPT_SET_META, meta_payload(b"", [b"base:allocation"]))
        assert r.replies()[-1][0] == ERR_INVALID   # SR not negotiated
        r.opt(OPT_SR)
        r.replies()
        r.opt(OPT_LIST_META, meta_payload(b"", []))
        reps = r.replies()
        assert reps == [(REP_META, b"\0\0\0\0base:allocation"),
                        (REP_ACK, b"")], reps
        r.opt(OPT_LIST_META, meta_payload(b"", [b"base:"]))
        assert r.replies()[0] == (REP_META, b"\0\0\0\0base:allocation")
        r.opt(OPT_LIST_META, meta_payload(b"", [b"nocolon"]))
        assert r.replies()[-1][0] == ERR_INVALID
        r.opt(OPT_LIST_META, meta_payload(b"", [b":leaf"]))
        assert r.replies()[-1][0] == ERR_INVALID
        r.opt(OPT_SET_META, meta_payload(b"", [b"x-foo:bar", b"qemu:x"]))
        assert r.replies() == [(REP_ACK, b"")]
        r.opt(OPT_SET_META, meta_payload(b"", [b"base:allocation"],
                                         count=3))
        assert r.replies()[-1][0] == ERR_INVALID
        r.opt(OPT_SET_META, struct.pack(">I", 50) + b"x")
        assert r.replies()[-1][0] == ERR_INVALID
        r.opt(OPT_SET_META, meta_payload(b"", [b"base:allocation"]))
        reps = r.replies()
        assert reps[-1][0] == REP_ACK and reps[0][0] == REP_META
        ctx = struct.unpack(">I", reps[0][1][:4])[0]
        r.opt(OPT_GO, info_payload(b""))
        assert r.replies()[-1][0] == REP_ACK
        r.req(CMD_BS, 0, 65536, cookie=7)
        flags, ctype, cookie, data = r.chunk()
        assert ctype == T_BS and cookie == 7 and flags & 1
        assert struct.unpack(">I", data[:4])[0] == ctx
        assert len(data) >= 12 and (len(data) - 4) % 8 == 0

    @c("EXPORT_NAME without NO_ZEROES: 124 zero bytes, then in sync")
    def _():
        r = s.raw()
        r.hello(cflags=1)
        r.opt(OPT_EXPORT_NAME, b"")
        size, flags = struct.unpack(">QH", r.recv(10))
        assert size == SIZE
        assert r.recv(124) == b"\0" * 124
        r.req(CMD_READ, 0, 512, cookie=42)
        assert r.simple() == (0, 42)
        assert len(r.recv(512)) == 512

    @c("EXPORT_NAME with NO_ZEROES: no padding")
    def _():
        r = s.raw()
        r.hello(cflags=3)
        r.opt(OPT_EXPORT_NAME, b"")
        size, flags = struct.unpack(">QH", r.recv(10))
        r.req(CMD_READ, 0, 512, cookie=43)
        assert r.simple() == (0, 43)

    @c("old client (no fixed newstyle) with EXPORT_NAME")
    def _():
        r = s.raw()
        r.hello(cflags=0)
        r.opt(OPT_EXPORT_NAME, b"")
        size, flags = struct.unpack(">QH", r.recv(10))
        assert size == SIZE
        r.recv(124)

    @c("EXPORT_NAME of an unknown export: connection closed")
    def _():
        r = s.raw()
        r.hello()
        r.opt(OPT_EXPORT_NAME, b"nosuchexport")
        assert r.is_closed()

    @c("too many options: connection closed")
    def _():
        r = s.raw()
        r.hello()
        r.send(struct.pack(">QII", IHAVEOPT, 99, 0) * 5000)
        n = 0
        try:
            while True:
                r.reply()
                n += 1
        except (Closed, ConnectionResetError):
            pass
        assert 0 < n < 5000, n

    # ---- transmission ----
    def session(meta=False, sr=True):
        r = s.raw()
        r.hello()
        r.go(sr=sr, meta=meta)
        return r

    @c("bad request magic: that connection closed, others served")
    def _():
        r = session()
        r.send(struct.pack(">IHHQQI", 0xdeadbeef, 0, CMD_READ, 1, 0, 512))
        assert r.is_closed()
        s.still_serving()

    @c("unknown command: EINVAL with a message, connection goes on")
    def _():
        r = session()
        r.req(99, 0, 512, cookie=5)
        err, cookie, chunks = r.any_reply()
        assert (err, cookie) == (EINVAL, 5)
        assert error_message(chunks), chunks
        r.req(CMD_READ, 0, 512, cookie=6)
        err, cookie, chunks = r.any_reply()
        assert (err, cookie) == (0, 6) and chunks[0][0] == T_DATA

    @c("unknown and misplaced flags: EINVAL")
    def _():
        r = session()
        for flags, cmd in ((1 << 14, CMD_READ), (F_REQ_ONE, CMD_READ),
                           (F_NO_HOLE, CMD_TRIM), (F_DF, CMD_BS),
                           (F_FAST_ZERO, CMD_TRIM)):
            r.req(cmd, 0, 512, flags=flags, cookie=flags)
            err, cookie, _ = r.any_reply()
            assert (err, cookie) == (EINVAL, flags), (flags, cmd, err)

    @c("WRITE with a bad flag: EINVAL, payload consumed, in sync")
    def _():
        r = session()
        r.req(CMD_WRITE, 0, 4096, flags=F_REQ_ONE, cookie=1,
              payload=b"\x55" * 4096)
        assert r.any_reply()[:2] == (EINVAL, 1)
        r.req(CMD_READ, 0, 4096, cookie=2)
        err, cookie, chunks = r.any_reply()
        assert (err, cookie) == (0, 2)
        assert b"\x55" not in chunks[0][1][8:]

    @c("out of range: READ EINVAL, WRITE/ZERO ENOSPC, TRIM/BS EINVAL")
    def _():
        r = session(meta=True)
        cases = [(CMD_READ, SIZE - 512, 1024, EINVAL, b""),
                 (CMD_WRITE, SIZE - 512, 1024, ENOSPC, b"w" * 1024),
                 (CMD_ZERO, SIZE, 512, ENOSPC, b""),
                 (CMD_TRIM, SIZE + 4096, 512, EINVAL, b""),
                 (CMD_CACHE, 1 << 62, 512, EINVAL, b""),
                 (CMD_BS, SIZE - 1, 2, EINVAL, b""),
                 (CMD_READ, (1 << 64) - 512, 1024, EINVAL, b"")]
        for i, (cmd, off, n, want, pl) in enumerate(cases):
            r.req(cmd, off, n, cookie=i, payload=pl)
            err, cookie, _ = r.any_reply()
            assert (err, cookie) == (want, i), (cmd, err)

    @c("zero length and bad FLUSH: EINVAL")
    def _():
        r = session()
        for i, (cmd, off, n) in enumerate(((CMD_READ, 0, 0),
                                           (CMD_WRITE, 0, 0),
                                           (CMD_TRIM, 0, 0),
                                           (CMD_FLUSH, 512, 0),
                                           (CMD_FLUSH, 0, 512))):
            r.req(cmd, off, n, cookie=i)
            err, cookie, _ = r.any_reply()
            assert (err, cookie) == (EINVAL, i), (cmd, err)

    @c("BLOCK_STATUS without a meta context: EINVAL")
    def _():
        r = session()
        r.req(CMD_BS, 0, 4096, cookie=3)
        assert r.any_reply()[:2] == (EINVAL, 3)

    @c("READ over the maximum: EINVAL; with DF: EOVERFLOW")
    def _():
        r = session()
        r.req(CMD_READ, 0, 64 * 1024 * 1024 + 512, cookie=1)
        assert r.any_reply()[:2] == (EINVAL, 1)
        r.req(CMD_READ, 0, 64 * 1024 * 1024 + 512, flags=F_DF, cookie=2)
        assert r.any_reply()[:2] == (EOVERFLOW, 2)

    @c("WRITE over the maximum: EINVAL, payload skipped, in sync")
    def _():
        r = Raw(s.srv.sock)
        r.hello()
        r.go(sr=False)
        n = 64 * 1024 * 1024 + 4096
        r.req(CMD_WRITE, 0, n, cookie=9)
        r.send(b"\xaa" * n)
        assert r.simple() == (EINVAL, 9)
        r.req(CMD_READ, 0, 512, cookie=10)
        assert r.simple() == (0, 10)
        assert r.recv(512) != b"\xaa" * 512

    @c("simple replies: READ error carries no payload")
    def _():
        r = session(sr=False)
        r.req(CMD_READ, SIZE, 512, cookie=1)
        assert r.simple() == (EINVAL, 1)
        r.req(CMD_READ, 0, 16, cookie=2)
        assert r.simple() == (0, 2)
        r.recv(16)

    @c("structured READ: DATA, zero runs as HOLE, DF gives one chunk")
    def _():
        r = session()
        r.req(CMD_WRITE, 1024 * 1024, 4096, cookie=1,
              payload=b"\x33" * 4096)
        assert r.any_reply()[:2] == (0, 1)
        r.req(CMD_READ, 1024 * 1024 - 256 * 1024, 512 * 1024, cookie=2)
        err, cookie, chunks = r.any_reply()
        assert err == 0
        types = [t for t, _ in chunks]
        assert T_HOLE in types and T_DATA in types, types
        covered = 0
        for t, d in chunks:
            if t == T_HOLE:
                covered += struct.unpack(">QI", d)[1]
            else:
                covered += len(d) - 8
        assert covered == 512 * 1024
        r.req(CMD_READ, 1024 * 1024 - 256 * 1024, 512 * 1024, flags=F_DF,
              cookie=3)
        err, cookie, chunks = r.any_reply()
        assert err == 0 and len(chunks) == 1 and chunks[0][0] == T_DATA

    @c("pipelined requests: every cookie answered once")
    def _():
        r = session()
        want = set()
        for i in range(200):
            if i % 3 == 0:
                r.req(CMD_WRITE, i * 4096, 4096, cookie=1000 + i,
                      payload=bytes([i % 256]) * 4096)
            else:
                r.req(CMD_READ, i * 4096, 4096, cookie=1000 + i)
            want.add(1000 + i)
        got = []
        for i in range(200):
            err, cookie, _ = r.any_reply()
            assert err == 0
            got.append(cookie)
        assert sorted(got) == sorted(want)
        r.req(CMD_DISC)
        assert r.is_closed()

    @c("request cut off half-way (header, then payload): no harm")
    def _():
        r = session()
        r.send(struct.pack(">IHHQ", REQMAGIC, 0, CMD_READ, 1))
        r.close()
        r = session()
        r.req(CMD_WRITE, 0, 65536, cookie=1, payload=b"x" * 1000)
        r.close()
        s.still_serving()

    @c("client vanishes with a deep pipeline in flight (x20)")
    def _():
        for rep in range(20):
            r = session()
            # Send until the socket is full (the server's replies are
            # never read, so it stops reading once its replies block),
            # then vanish.
            r.s.setblocking(False)
            buf = b"".join(
                struct.pack(">IHHQQI", REQMAGIC, 0, CMD_READ, i,
                            i * 1024 * 1024, 1024 * 1024) +
                struct.pack(">IHHQQI", REQMAGIC, 0, CMD_WRITE, 100 + i,
                            i * 65536, 65536) + b"v" * 65536
                for i in range(64))
            try:
                while buf:
                    buf = buf[r.s.send(buf):]
            except BlockingIOError:
                pass
            r.close()
        s.still_serving()

    @c("connect-then-close probes (x50)")
    def _():
        for i in range(50):
            r = s.raw()
            r.close()
        s.still_serving()


def main():
    d = nbdtest.tmpdir()
    params = nbdtest.backend_params("flatfile", d, SIZE)
    srv = nbdtest.Server("minnbd", "flatfile", params, d,
                         extra=["-t", "4"])
    s = Suite(srv)
    define(s)
    tap = nbdtest.TAP(len(s.checks) + 1)
    srv.start()
    try:
        for desc, fn in s.checks:
            try:
                fn()
                tap.ok(True, desc)
            except Exception:
                tap.ok(False, desc, traceback.format_exc())
        s.still_serving()
        rc = srv.stop()
        tap.ok(rc == 0, "server exits 0 on SIGTERM after all that",
               "exit %s\n%s" % (rc, srv.log()))
    finally:
        if srv.proc:
            srv.stop()
        shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


if nbdtest.pairs(servers=["minnbd"], backends=["flatfile"]):
    main()
else:
    nbdtest.skip_all("minnbd+flatfile not selected")
