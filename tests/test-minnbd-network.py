#!/usr/bin/python3
# minnbd on the network (issue 16 items 3 and 5): --allow ADDR[/PREFIX]
# for IPv4 and IPv6 peers, and the log: every connection's lines name the
# peer, a daemon logs to syslog, --log=stderr|syslog choose.
#
# Servers are socket-activated on sockets the test makes (TCP on
# 127.0.0.1, [::1], a dual-stack [::] for IPv4-mapped peers, and a Unix
# socket), so no port is fixed.  Syslog is checked by binding /dev/log
# ourselves (a datagram socket, as glibc's syslog() expects) when no
# syslog daemon owns it; otherwise those cases are skipped.

import os
import select
import signal
import socket
import subprocess
import sys
import traceback

import nbd
import nbdtest

SIZE = 16 * 1024 * 1024
MINNBD = os.environ.get("MINNBD")


def has_ipv6():
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


class Activated(nbdtest.Server):
    """minnbd socket-activated on the given listening sockets."""

    def __init__(self, d, socks, extra):
        nbdtest.Server.__init__(self, "minnbd", "flatfile",
                                nbdtest.backend_params("flatfile", d, SIZE),
                                d, extra=extra)
        self.socks = socks

    def start(self):
        fds = [s.fileno() for s in self.socks]
        env = dict(os.environ)
        env["LISTEN_FDS"] = str(len(fds))
        # Fresh descriptors first, then 3, 4, ... in order.
        pre = " ".join("{t%d}<&%d" % (i, fd) for i, fd in enumerate(fds))
        place = " ".join("%d<&$t%d" % (3 + i, i) for i in range(len(fds)))
        close = " ".join("%d<&-" % fd for fd in fds
                         if fd >= 3 + len(fds))
        drop = " ".join("{t%d}<&-" % i for i in range(len(fds)))
        wrapper = ('exec %s; exec %s %s; exec %s; LISTEN_PID=$$; '
                   'export LISTEN_PID; exec "$@"' % (pre, place, close, drop))
        self.errf = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(["bash", "-c", wrapper, "bash"] +
                                     self.argv(), env=env, pass_fds=fds,
                                     stdin=subprocess.DEVNULL,
                                     stdout=self.errf, stderr=self.errf)
        nbdtest._live_servers.add(self.proc)
        for s in self.socks:
            s.close()
        return self

    def _wait_ready(self):
        pass                    # the tests have talked to it already


def listener(family, addr, v6only=True):
    s = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    s.bind((addr, 0))
    s.listen(16)
    return s, s.getsockname()[1]


def unix_listener(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(16)
    return s


def greeted(family, addr, port):
    """Whether the server greets a TCP client (or closes it at once)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect((addr, port))
    try:
        data = s.recv(18)
    except ConnectionResetError:
        data = b""
    s.close()
    return len(data) > 0


def served_tcp(host, port):
    h = nbd.NBD()
    h.connect_tcp(host, str(port))
    assert h.get_size() == SIZE
    h.pread(512, 0)
    h.shutdown()


def case_allow_ipv4(d):
    s4, p4 = listener(socket.AF_INET, "127.0.0.1")
    srv = Activated(d, [s4], ["--allow", "127.0.0.1"]).start()
    try:
        served_tcp("127.0.0.1", p4)
    finally:
        assert srv.stop() == 0, srv.log()
    # Not in the list: closed before the greeting, logged with the
    # address; Unix clients are not filtered.
    s4, p4 = listener(socket.AF_INET, "127.0.0.1")
    sock = os.path.join(d, "u.sock")
    su = unix_listener(sock)
    srv = Activated(d, [s4, su], ["--allow", "10.0.0.0/8",
                                  "--allow", "192.168.0.0/16"]).start()
    try:
        assert not greeted(socket.AF_INET, "127.0.0.1", p4), \
            "a peer outside --allow was greeted"
        h = nbd.NBD()
        h.connect_unix(sock)
        h.pread(512, 0)
        h.shutdown()
    finally:
        assert srv.stop() == 0, srv.log()
    assert "refused a connection from 127.0.0.1:" in srv.log() and \
        "not allowed by --allow" in srv.log(), srv.log()
    # A prefix that covers us.
    s4, p4 = listener(socket.AF_INET, "127.0.0.1")
    srv = Activated(d, [s4], ["--allow", "10.1.2.3",
                              "--allow", "127.0.0.0/8"]).start()
    try:
        served_tcp("127.0.0.1", p4)
    finally:
        assert srv.stop() == 0, srv.log()


def case_allow_ipv6(d):
    if not has_ipv6():
        raise nbdtest.Skip("no IPv6 on this machine")
    s6, p6 = listener(socket.AF_INET6, "::1")
    srv = Activated(d, [s6], ["--allow", "::1/128"]).start()
    try:
        served_tcp("::1", p6)
    finally:
        assert srv.stop() == 0, srv.log()
    s6, p6 = listener(socket.AF_INET6, "::1")
    srv = Activated(d, [s6], ["--allow", "fd00::/8",
                              "--allow", "127.0.0.1"]).start()
    try:
        assert not greeted(socket.AF_INET6, "::1", p6), \
            "[::1] was greeted although only fd00::/8 and 127.0.0.1 are allowed"
    finally:
        assert srv.stop() == 0, srv.log()
    assert "refused a connection from [::1]:" in srv.log(), srv.log()
    # A dual-stack socket: an IPv4 client is ::ffff:127.0.0.1, and
    # matched as the IPv4 address it is.
    sd, pd = listener(socket.AF_INET6, "::", v6only=False)
    srv = Activated(d, [sd], ["--allow", "127.0.0.1"]).start()
    try:
        served_tcp("127.0.0.1", pd)
        assert not greeted(socket.AF_INET6, "::1", pd), \
            "[::1] was greeted with --allow 127.0.0.1"
    finally:
        assert srv.stop() == 0, srv.log()


def case_allow_bad(d):
    params = nbdtest.backend_params("flatfile", d, SIZE)
    for spec in ("10.0.0.0/33", "::/129", "host.example", "1.2.3.4/",
                 "1.2.3.4/x", "", "1.2.3.4/-1"):
        p = nbdtest.cmd([MINNBD, "-f", "-U", os.path.join(d, "x.sock"),
                         "--allow", spec, "flatfile"] + params, check=False)
        assert p.returncode == 1 and "--allow" in p.stderr and \
            "PREFIX" in p.stderr, (spec, p.returncode, p.stderr)


def case_log_names_peers(d):
    s4, p4 = listener(socket.AF_INET, "127.0.0.1")
    sock = os.path.join(d, "u.sock")
    su = unix_listener(sock)
    srv = Activated(d, [s4, su], ["-v"]).start()
    try:
        c = socket.create_connection(("127.0.0.1", p4), timeout=60)
        local = c.getsockname()[1]
        assert len(c.recv(18)) > 0
        c.close()
        h = nbd.NBD()
        h.connect_unix(sock)
        h.shutdown()
    finally:
        assert srv.stop() == 0, srv.log()
    log = srv.log()
    assert "(127.0.0.1:%d): new connection" % local in log, log[-2000:]
    assert "(unix, pid %d): new connection" % os.getpid() in log, \
        log[-2000:]


class DevLog:
    """A syslog stand-in on /dev/log, when nobody owns it."""

    def __init__(self):
        if os.path.exists("/dev/log"):
            raise nbdtest.Skip("/dev/log exists: a syslog daemon owns it")
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.s.bind("/dev/log")
        except OSError as e:
            raise nbdtest.Skip("cannot bind /dev/log: %s" % e)

    def messages_until(self, needle, timeout=60):
        """Datagrams received until one contains needle."""
        got = []
        while True:
            r, _, _ = select.select([self.s], [], [], timeout)
            assert r, "no syslog message with %r; got:\n%s" % (
                needle, "\n".join(got))
            m = self.s.recv(65536).decode(errors="replace")
            got.append(m)
            if needle in m:
                return got

    def close(self):
        self.s.close()
        os.unlink("/dev/log")


def case_syslog(d):
    log = DevLog()
    params = nbdtest.backend_params("flatfile", d, SIZE)
    sock = os.path.join(d, "daemon.sock")
    pidf = os.path.join(d, "daemon.pid")
    try:
        # A daemon (no -f, no -v) logs to syslog, with the peer on each
        # connection's lines, at level info (facility daemon: <30>).
        p = nbdtest.cmd([MINNBD, "-U", sock, "-P", pidf, "flatfile"] +
                        params)
        pid = int(open(pidf).read())
        try:
            h = nbd.NBD()
            h.connect_unix(sock)
            h.shutdown()
            got = log.messages_until("closed")
            line = [m for m in got if "new connection" in m]
            # "<30>Dec  3 08:33:21 minnbd[PID]: conn 1 (unix, pid N): ..."
            assert line and line[0].startswith("<30>") and \
                " minnbd[%d]: " % pid in line[0] and \
                "(unix, pid %d)" % os.getpid() in line[0], got
            # An error goes there too (<27>: daemon.err).
            h = nbd.NBD()
            h.set_export_name("nosuch")
            try:
                h.connect_unix(sock)
            except nbd.Error:
                pass
            got = log.messages_until("nosuch")
            assert any(m.startswith("<27>") for m in got), got
        finally:
            os.kill(pid, signal.SIGTERM)
            fd = os.pidfd_open(pid)
            select.select([fd], [], [], 60)
            os.close(fd)
        assert p.stderr == "", p.stderr
        # --log=syslog in the foreground.
        srv = nbdtest.Server("minnbd", "flatfile", params, d,
                             extra=["--log=syslog"]).start()
        try:
            h = nbd.NBD()
            h.connect_unix(srv.sock)
            h.shutdown()
            log.messages_until("new connection")
        finally:
            assert srv.stop() == 0
        assert "new connection" not in srv.log(), srv.log()
        # --log=stderr in the background: the daemon keeps stderr.
        errpath = os.path.join(d, "daemon.err")
        with open(errpath, "w") as err:
            subprocess.run([MINNBD, "-U", sock, "-P", pidf, "--log=stderr",
                            "-v", "flatfile"] + params, stderr=err,
                           stdin=subprocess.DEVNULL, check=True, timeout=60)
        pid = int(open(pidf).read())
        try:
            h = nbd.NBD()
            h.connect_unix(sock)
            h.shutdown()
        finally:
            os.kill(pid, signal.SIGTERM)
            fd = os.pidfd_open(pid)
            select.select([fd], [], [], 60)
            os.close(fd)
        with open(errpath) as f:
            text = f.read()
        assert "new connection" in text, text
    finally:
        log.close()


CASES = [
    ("--allow: IPv4 addresses and prefixes; others closed before the "
     "greeting; Unix clients not filtered", case_allow_ipv4),
    ("--allow: IPv6, and IPv4-mapped peers on a dual-stack socket",
     case_allow_ipv6),
    ("--allow: malformed rules are refused at start", case_allow_bad),
    ("log lines name each connection's peer (TCP address, Unix pid)",
     case_log_names_peers),
    ("syslog: a daemon logs there with peers; --log=syslog, --log=stderr",
     case_syslog),
]


def main():
    if not MINNBD or not nbdtest.pairs(["minnbd"], ["flatfile"]):
        nbdtest.skip_all("minnbd-flatfile is not selected")
    tap = nbdtest.TAP(len(CASES))
    nbdtest._watchdog(int(os.environ.get("NBDCAS_TEST_TIMEOUT", "900")))
    for desc, fn in CASES:
        d = nbdtest.tmpdir()
        try:
            fn(d)
            tap.ok(True, desc)
        except nbdtest.Skip as e:
            tap.skip(desc, str(e))
        except Exception:
            tap.ok(False, desc, traceback.format_exc())
        finally:
            import shutil
            shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


main()
