#!/usr/bin/python3
# TLS (issue 16 items 1 and 2) on every (server, backend) pair: minnbd
# with its own TLS (OpenSSL), nbdkit with --tls over our plugins (GnuTLS).
# Credentials are generated here (tlstest.py: certtool, psktool).
#
# For each pair, servers socket-activated on TCP 127.0.0.1 and a Unix
# socket:
#   X.509, --tls=require: libnbd over nbds:// and nbds+unix://, nbdinfo,
#     qemu-img and qemu-io with tls-creds-x509, TLS 1.2 and TLS 1.3 from
#     Python's ssl, a second STARTTLS (ERR_INVALID); refused: plaintext
#     (libnbd, and raw options answered ERR_TLS_REQD, EXPORT_NAME closed),
#     a client trusting another CA, garbage after STARTTLS; a client
#     connected before all that is still served, and a new one.
#   X.509 with --tls-verify-peer: a client certificate of our CA works;
#     none, or one of another CA, is refused.
#   An expired server certificate: refused by the client.
#   PSK, --tls=require: libnbd (nbds:// with a username) and qemu-img
#     with tls-creds-psk work; a wrong key and an unknown identity are
#     refused.
# minnbd alone: --tls=on serves plaintext and TLS clients; a key or PSK
# file the group or others may read is refused at start, and so is
# --tls=require without credentials.

import errno
import os
import shutil
import socket
import ssl
import struct
import sys
import traceback

import nbd
import nbdtest
import tlstest

SIZE = 64 * 1024 * 1024
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3e889045565a9
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO = 1, 2, 3, 5, 6
REP_ACK, REP_SERVER = 1, 2
ERR_INVALID, ERR_TLS_REQD = 0x80000003, 0x80000005
# nbdkit 1.32 answers STARTTLS with a policy error when TLS is off.
HAVE_QEMU = shutil.which("qemu-img", path=nbdtest.SYSTEM_PATH) is not None


# Raw protocol over a socket-like object (a socket or an SSLSocket).

def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            return b
        b += c
    return b


def raw_start(srv):
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    assert len(recv_exact(s, 18)) == 18, "no greeting"
    s.sendall(struct.pack(">I", 3))          # FIXED_NEWSTYLE | NO_ZEROES
    return s


def send_opt(s, opt, payload=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(payload)) + payload)


def read_reply(s):
    h = recv_exact(s, 20)
    assert len(h) == 20, "the connection closed instead of a reply"
    magic, opt, rep, ln = struct.unpack(">QIII", h)
    assert magic == REP_MAGIC, hex(magic)
    return opt, rep, recv_exact(s, ln)


def list_over(s):
    """NBD_OPT_LIST: the export names, until the ACK."""
    send_opt(s, OPT_LIST)
    names = []
    while True:
        _, rep, data = read_reply(s)
        if rep == REP_ACK:
            return names
        assert rep == REP_SERVER, "LIST answered 0x%x" % rep
        n = struct.unpack(">I", data[:4])[0]
        names.append(data[4:4 + n].decode())


def starttls_raw(srv, cafile, version=None):
    """STARTTLS over a raw socket, then a Python ssl session (which
    checks the server's certificate against cafile)."""
    s = raw_start(srv)
    send_opt(s, OPT_STARTTLS)
    _, rep, _ = read_reply(s)
    assert rep == REP_ACK, "STARTTLS answered 0x%x" % rep
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    if version:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx.wrap_socket(s, server_hostname="127.0.0.1")


# libnbd clients.

def client(srv, tls=nbd.TLS_REQUIRE, certs=None, psk=None, user=None,
           unix=False):
    h = nbd.NBD()
    h.set_tls(tls)
    if certs:
        h.set_tls_certificates(certs)
    if psk:
        h.set_tls_psk_file(psk)
    if user:
        h.set_tls_username(user)
    if unix:
        h.connect_unix(srv.sock)
    else:
        h.connect_tcp("127.0.0.1", str(srv.port))
    return h


def roundtrip(h, seed):
    data = nbdtest.random_bytes(65536, seed)
    h.pwrite(data, seed * 65536)
    h.flush()
    assert h.pread(65536, seed * 65536) == data


def refused(fn, what):
    try:
        h = fn()
    except nbd.Error:
        return
    h.shutdown()
    raise AssertionError(what + ": the connection was not refused")


def qemu_img_info(creds_object, port):
    img = "driver=nbd,server.type=inet,server.host=127.0.0.1," \
        "server.port=%d,tls-creds=tls0,export=" % port
    return nbdtest.cmd(["qemu-img", "info", "--object", creds_object,
                        "--image-opts", img])


def qemu_io(commands, creds_object, port):
    img = "driver=nbd,server.type=inet,server.host=127.0.0.1," \
        "server.port=%d,tls-creds=tls0,export=" % port
    argv = ["qemu-io", "--object", creds_object, "--image-opts"]
    for c in commands:
        argv += ["-c", c]
    return nbdtest.cmd(argv + [img])


# The checks, per kind of server.

def x509_checks(srv, creds, pair):
    ca = os.path.join(creds.server, "ca-cert.pem")
    checks = []

    def c(desc):
        def deco(fn):
            checks.append((desc, fn))
            return fn
        return deco

    @c("X.509: libnbd over nbds:// (TCP) reads and writes")
    def _():
        h = client(srv, certs=creds.client_nocert)
        assert h.get_tls_negotiated()
        roundtrip(h, 1)
        h.shutdown()

    @c("X.509: libnbd over nbds+unix://")
    def _():
        h = nbd.NBD()
        h.set_uri_allow_local_file(True)
        h.connect_uri("nbds+unix:///?socket=%s&tls-certificates=%s" %
                      (srv.sock, creds.client_nocert))
        assert h.get_tls_negotiated()
        roundtrip(h, 2)
        h.shutdown()

    @c("X.509: nbdinfo nbds://")
    def _():
        p = nbdtest.cmd(["nbdinfo", "--size",
                         "nbds://127.0.0.1:%d/?tls-certificates=%s" %
                         (srv.port, creds.client_nocert)])
        assert p.stdout.strip() == str(SIZE), p.stdout

    @c("X.509: qemu-img info and qemu-io write/read (tls-creds-x509)")
    def _():
        if not HAVE_QEMU:
            raise nbdtest.Skip("qemu-img is not installed")
        obj = "tls-creds-x509,id=tls0,dir=%s,endpoint=client" % \
            creds.client_nocert
        p = qemu_img_info(obj, srv.port)
        assert "virtual size: 64 MiB" in p.stdout, p.stdout
        p = qemu_io(["write -P 0x5a 1M 64k", "read -P 0x5a 1M 64k"], obj,
                    srv.port)
        assert "read 65536/65536" in p.stdout, p.stdout

    @c("X.509: TLS 1.2 and TLS 1.3 (Python ssl), NBD options inside")
    def _():
        for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            s = starttls_raw(srv, ca, v)
            try:
                assert s.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                       ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[v]
                list_over(s)
                # A second STARTTLS inside TLS is invalid.
                send_opt(s, OPT_STARTTLS)
                _, rep, _ = read_reply(s)
                assert rep == ERR_INVALID, "second STARTTLS: 0x%x" % rep
                send_opt(s, OPT_ABORT)
            finally:
                s.close()

    @c("X.509 require: plaintext refused (libnbd; raw: ERR_TLS_REQD, "
       "EXPORT_NAME closed)")
    def _():
        try:
            client(srv, tls=nbd.TLS_DISABLE).shutdown()
            raise AssertionError("a plaintext client was served")
        except nbd.Error as e:
            assert e.errnum == errno.ENOTSUP or "TLS" in e.string, e.string
        s = raw_start(srv)
        try:
            for opt, payload in ((OPT_LIST, b""),
                                 (OPT_INFO, struct.pack(">IH", 0, 0))):
                send_opt(s, opt, payload)
                _, rep, _ = read_reply(s)
                assert rep == ERR_TLS_REQD, "option %d: 0x%x" % (opt, rep)
            send_opt(s, OPT_EXPORT_NAME)
            assert recv_exact(s, 1) == b"", "EXPORT_NAME without TLS served"
        finally:
            s.close()

    @c("X.509: plaintext sent right after STARTTLS is never taken as "
       "part of the TLS session (STARTTLS injection)")
    def _():
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
        try:
            assert len(recv_exact(s, 18)) == 18
            # Flags, STARTTLS and an injected LIST in one packet.
            s.sendall(struct.pack(">I", 3) +
                      struct.pack(">QII", IHAVEOPT, OPT_STARTTLS, 0) +
                      struct.pack(">QII", IHAVEOPT, OPT_LIST, 0))
            h = recv_exact(s, 20)
            if len(h) < 20:
                return              # refused: closed before the ACK
            _, opt, rep, _ = struct.unpack(">QIII", h)
            assert opt == OPT_STARTTLS and rep == REP_ACK, (opt, rep)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(ca)
            try:
                t = ctx.wrap_socket(s, server_hostname="127.0.0.1")
            except (ssl.SSLError, OSError):
                return              # the injected bytes broke the handshake
            # TLS is up: the first reply inside it must answer what we
            # send inside it (ABORT), not the injected LIST.
            send_opt(t, OPT_ABORT)
            opt, rep, _ = read_reply(t)
            assert opt == OPT_ABORT, "the server answered option %d, " \
                "injected before TLS, inside TLS" % opt
        finally:
            s.close()

    @c("X.509: a client trusting another CA is refused")
    def _():
        refused(lambda: client(srv, certs=creds.client_wrongca),
                "a client with the wrong CA")

    @c("X.509: garbage after STARTTLS closes that connection only")
    def _():
        s = raw_start(srv)
        try:
            send_opt(s, OPT_STARTTLS)
            _, rep, _ = read_reply(s)
            assert rep == REP_ACK
            s.sendall(b"\x16\x03\x01\x00\x10" + os.urandom(16) +
                      b"this is not TLS" * 64)
            try:
                while s.recv(4096):
                    pass            # an alert, then the close
            except ConnectionResetError:
                pass
        finally:
            s.close()

    return checks


def verify_peer_checks(srv, creds, pair):
    return [
        ("X.509 --tls-verify-peer: a client certificate of our CA works",
         lambda: (lambda h: (roundtrip(h, 3), h.shutdown()))(
             client(srv, certs=creds.client))),
        ("X.509 --tls-verify-peer: no client certificate is refused",
         lambda: refused(lambda: client(srv, certs=creds.client_nocert),
                         "a client without a certificate")),
        ("X.509 --tls-verify-peer: a certificate of another CA is refused",
         lambda: refused(lambda: client(srv, certs=creds.client_badcert),
                         "a client certificate of another CA")),
    ]


def expired_checks(srv, creds, pair):
    return [
        ("X.509: an expired server certificate is refused by the client",
         lambda: refused(lambda: client(srv, certs=creds.client_nocert),
                         "an expired server certificate")),
    ]


def psk_checks(srv, creds, pair):
    def ok():
        h = nbd.NBD()
        h.set_uri_allow_local_file(True)
        h.connect_uri("nbds://alice@127.0.0.1:%d/?tls-psk-file=%s" %
                      (srv.port, creds.psk))
        assert h.get_tls_negotiated()
        roundtrip(h, 4)
        h.shutdown()

    def qemu_psk():
        if not HAVE_QEMU:
            raise nbdtest.Skip("qemu-img is not installed")
        obj = "tls-creds-psk,id=tls0,dir=%s,username=alice,endpoint=client" \
            % creds.pskdir
        p = qemu_img_info(obj, srv.port)
        assert "virtual size: 64 MiB" in p.stdout, p.stdout

    return [
        ("PSK: libnbd nbds://alice@ reads and writes", ok),
        ("PSK: qemu-img info (tls-creds-psk)", qemu_psk),
        ("PSK: a wrong key is refused",
         lambda: refused(lambda: client(srv, psk=creds.wrongpsk,
                                        user="alice"), "a wrong PSK")),
        ("PSK: an unknown identity is refused",
         lambda: refused(lambda: client(srv, psk=creds.bobpsk, user="bob"),
                         "an unknown PSK identity")),
    ]


def run_server(tap, pair, d, params, extra, checks_fn, creds):
    s, b = pair
    srv = tlstest.TLSServer(s, b, params, d, extra=extra).start()
    desc_pair = " [%s+%s]" % pair
    keep = None
    try:
        checks = checks_fn(srv, creds, pair)
        # A client connected before the refusals, checked after them.
        if checks_fn in (x509_checks, verify_peer_checks):
            keep = client(srv, certs=creds.client)
        elif checks_fn is psk_checks:
            keep = client(srv, psk=creds.psk, user="alice")
        for desc, fn in checks:
            try:
                fn()
                tap.ok(True, desc + desc_pair)
            except nbdtest.Skip as e:
                tap.skip(desc + desc_pair, str(e))
            except Exception:
                tap.ok(False, desc + desc_pair, traceback.format_exc() +
                       "server log:\n" + srv.log()[-3000:])
        if keep is not None:
            try:
                roundtrip(keep, 9)
                keep.shutdown()
                keep = None
                tap.ok(True, "a client connected before the refusals is "
                       "still served" + desc_pair)
            except Exception:
                tap.ok(False, "a client connected before the refusals is "
                       "still served" + desc_pair, traceback.format_exc())
    finally:
        if keep is not None:
            del keep
        rc = srv.stop()
    if s == "minnbd" and rc != 0:
        tap.ok(False, "minnbd exited cleanly" + desc_pair,
               "exit status %s\n%s" % (rc, srv.log()[-3000:]))


def minnbd_only(tap, d, creds):
    if not nbdtest.pairs(["minnbd"], ["flatfile"]):
        return
    os.makedirs(d)
    params = nbdtest.backend_params("flatfile", d, SIZE)
    minnbd = os.environ["MINNBD"]

    # --tls=on: both kinds of clients.
    desc = "minnbd --tls=on: plaintext and TLS clients are both served"
    srv = tlstest.TLSServer("minnbd", "flatfile", params, d,
                            extra=["--tls=on", "--tls-certificates",
                                   creds.server]).start()
    try:
        h = client(srv, tls=nbd.TLS_DISABLE)
        assert not h.get_tls_negotiated()
        roundtrip(h, 5)
        h.shutdown()
        h = client(srv, certs=creds.client_nocert)
        assert h.get_tls_negotiated()
        roundtrip(h, 6)
        h.shutdown()
        tap.ok(True, desc)
    except Exception:
        tap.ok(False, desc, traceback.format_exc() + srv.log()[-3000:])
    finally:
        srv.stop()

    # Readable keys and missing credentials: exit 1 with a message.
    loose = os.path.join(d, "loose")
    shutil.copytree(creds.server, loose)
    os.chmod(os.path.join(loose, "server-key.pem"), 0o644)
    loosepsk = os.path.join(d, "loose.psk")
    shutil.copy(creds.psk, loosepsk)
    os.chmod(loosepsk, 0o640)
    for desc, flags, want in [
            ("a server key readable by others",
             ["--tls=require", "--tls-certificates", loose],
             "server-key.pem"),
            ("a PSK file readable by the group",
             ["--tls=require", "--tls-psk", loosepsk], "loose.psk"),
            ("--tls=require without credentials", ["--tls=require"],
             "--tls-certificates"),
            ("--tls-verify-peer with --tls-psk",
             ["--tls=require", "--tls-psk", creds.psk, "--tls-verify-peer"],
             "--tls-verify-peer")]:
        p = nbdtest.cmd([minnbd, "-f", "-U", os.path.join(d, "x.sock")] +
                        flags + ["flatfile"] + params, check=False)
        tap.ok(p.returncode == 1 and want in p.stderr,
               "minnbd refuses to start: " + desc,
               "exit %d, wanted %r in:\n%s" % (p.returncode, want, p.stderr))


def main():
    ps = nbdtest.pairs()
    if not ps:
        nbdtest.skip_all("no pair selected")
    if not nbd.NBD().supports_tls():
        nbdtest.skip_all("libnbd was built without TLS")
    nbdtest.require_tool("certtool")
    nbdtest.require_tool("psktool")
    nbdtest._watchdog(int(os.environ.get("NBDCAS_TEST_TIMEOUT", "900")))
    top = nbdtest.tmpdir()
    # The plan is not known before the servers ran (skips count as
    # lines): print TAP lines as they come and the plan at the end.
    tap = LateTAP()
    try:
        creds = tlstest.Credentials(os.path.join(top, "creds"))
        # An identity the servers do not know.
        creds.bobpsk = os.path.join(top, "creds", "bob.psk")
        nbdtest.cmd([creds.psktool, "-u", "bob", "-p", creds.bobpsk])
        for pair in ps:
            d = os.path.join(top, "%s-%s" % pair)
            os.makedirs(d)
            params = nbdtest.backend_params(pair[1], d, SIZE)
            for extra, fn in [
                    (["--tls=require", "--tls-certificates", creds.server],
                     x509_checks),
                    (["--tls=require", "--tls-certificates", creds.server,
                      "--tls-verify-peer"], verify_peer_checks),
                    (["--tls=require", "--tls-certificates", creds.expired],
                     expired_checks),
                    (["--tls=require", "--tls-psk", creds.psk],
                     psk_checks)]:
                run_server(tap, pair, d, params, extra, fn, creds)
        minnbd_only(tap, os.path.join(top, "minnbd-only"), creds)
    finally:
        shutil.rmtree(top, ignore_errors=True)
        tap.plan()
    sys.exit(1 if tap.failed else 0)


class LateTAP(nbdtest.TAP):
    """TAP with the plan printed last (allowed by TAP)."""

    def __init__(self):
        self.n = 0
        self.failed = 0

    def plan(self):
        print("1..%d" % self.n, flush=True)


main()
