#!/usr/bin/python3
# minnbd's ways to listen and to be run: -s (libnbd connect_command),
# systemd socket activation (libnbd connect_systemd_socket_activation),
# --run with $uri/$nbd/$unixsocket/$port and CMD's exit status, -U with
# the daemon returning only once it listens, -P, TCP -p/-i on IPv4 and
# IPv6, SIGTERM with requests in flight, --exit-with-parent, and the
# command line's errors.  Synchronisation is by the protocol itself (a
# handshake proves the server runs) or by process exit, never by sleeps.

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import traceback

import nbd
import nbdtest

SIZE = 64 * 1024 * 1024
MINNBD = os.environ.get("MINNBD")


def free_port(family=socket.AF_INET, addr="127.0.0.1"):
    """A port nobody listens on right now (bind to 0, read, close)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((addr, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def has_ipv6():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def wait_exit(pid, timeout=30):
    """Wait for a process that is not our child to exit (pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        r, _, _ = select.select([fd], [], [], timeout)
        return bool(r)
    finally:
        os.close(fd)


def run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=120, **kw)


class Env:
    def __init__(self):
        self.d = nbdtest.tmpdir()
        self.disk = os.path.join(self.d, "disk.img")
        with open(self.disk, "wb") as f:
            f.truncate(SIZE)
        self.params = ["file=" + self.disk]

    def argv(self, *flags):
        return [MINNBD] + list(flags) + ["flatfile"] + self.params


def roundtrip(h, off=4096):
    data = os.urandom(4096)
    h.pwrite(data, off)
    assert h.pread(4096, off) == data
    assert h.get_size() == SIZE


def define(e):
    checks = []

    def c(desc):
        def deco(fn):
            checks.append((desc, fn))
            return fn
        return deco

    @c("-s: libnbd connect_command")
    def _():
        h = nbd.NBD()
        h.connect_command(e.argv("-s"))
        roundtrip(h)
        assert h.get_structured_replies_negotiated()
        h.shutdown()

    @c("socket activation: libnbd connect_systemd_socket_activation")
    def _():
        h = nbd.NBD()
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.connect_systemd_socket_activation(e.argv())
        roundtrip(h)
        assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.shutdown()

    @c("socket activation: nbdinfo -- [ minnbd ... ]")
    def _():
        if shutil.which("nbdinfo") is None:
            return
        p = run(["nbdinfo", "--size", "--", "["] + e.argv() + ["]"])
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == str(SIZE).encode(), p.stdout

    @c("--run: $uri works, CMD's exit status is minnbd's")
    def _():
        script = ('/usr/bin/python3 -c "import nbd,sys; h=nbd.NBD(); '
                  'h.connect_uri(sys.argv[1]); '
                  'sys.exit(0 if h.get_size()==%d else 9)" "$uri" && '
                  'test -S "$unixsocket" && test -z "$port" && '
                  'case "$nbd" in nbd:unix:*) exit 7;; esac' % SIZE)
        p = run(e.argv("--run", script))
        assert p.returncode == 7, (p.returncode, p.stderr)
        p = run(e.argv("--run", "exit 0"))
        assert p.returncode == 0, p.stderr
        p = run(e.argv("--run", "kill -9 $$"))
        assert p.returncode != 0

    @c("--run with -U -: private socket removed afterwards")
    def _():
        p = run(e.argv("-U", "-", "--run", 'echo "$unixsocket"'))
        assert p.returncode == 0, p.stderr
        path = p.stdout.decode().strip()
        assert path and not os.path.exists(path), path
        assert not os.path.exists(os.path.dirname(path))

    @c("--run with -p 0: $port and $uri over TCP")
    def _():
        p = run(e.argv("-p", "0", "-i", "127.0.0.1", "--run",
                       'echo "$port $uri"; /usr/bin/python3 -c "import '
                       'nbd,sys; h=nbd.NBD(); h.connect_uri(sys.argv[1]);'
                       ' print(h.get_size())" "$uri"'))
        assert p.returncode == 0, p.stderr
        lines = p.stdout.decode().split("\n")
        port, uri = lines[0].split()
        assert int(port) > 0 and uri == "nbd://127.0.0.1:%s/" % port, uri
        assert lines[1] == str(SIZE)

    @c("-U: the daemon returns once listening; -P; SIGTERM removes socket")
    def _():
        sock = os.path.join(e.d, "u.sock")
        pidf = os.path.join(e.d, "u.pid")
        p = run(e.argv("-U", sock, "-P", pidf))
        assert p.returncode == 0, p.stderr
        pid = int(open(pidf).read())
        try:
            h = nbd.NBD()
            h.connect_unix(sock)        # no waiting: it already listens
            roundtrip(h)
            h.shutdown()
        finally:
            os.kill(pid, signal.SIGTERM)
        assert wait_exit(pid), "daemon did not exit on SIGTERM"
        assert not os.path.exists(sock)

    @c("-U on a path in use: exit 1 with a message")
    def _():
        sock = os.path.join(e.d, "busy.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(sock)
        p = run(e.argv("-f", "-U", sock))
        s.close()
        assert p.returncode == 1 and b"busy.sock" in p.stderr, p.stderr

    @c("-p/-i: TCP on 127.0.0.1, small round trips stay fast")
    def _():
        port = free_port()
        pidf = os.path.join(e.d, "t.pid")
        p = run(e.argv("-p", str(port), "-i", "127.0.0.1", "-P", pidf))
        assert p.returncode == 0, p.stderr
        pid = int(open(pidf).read())
        try:
            h = nbd.NBD()
            h.connect_tcp("127.0.0.1", str(port))
            roundtrip(h)
            # Many small round trips: Nagle + delayed ACK would cost
            # ~40 ms each; 200 must take far less than 8 s.
            import time
            t = time.monotonic()
            for i in range(200):
                h.pwrite(b"n" * 100, i * 512)
            assert time.monotonic() - t < 4, "slow small writes over TCP"
            h.shutdown()
        finally:
            os.kill(pid, signal.SIGTERM)
        assert wait_exit(pid)

    @c("-p with IPv6 (::1)")
    def _():
        if not has_ipv6():
            return
        port = free_port(socket.AF_INET6, "::1")
        p = run(e.argv("-p", str(port), "-i", "::1", "--run",
                       '/usr/bin/python3 -c "import nbd,sys; h=nbd.NBD(); '
                       'h.connect_uri(sys.argv[1]); h.pread(512, 0)" '
                       '"$uri"'))
        assert p.returncode == 0, p.stderr

    @c("-p without -i: IPv4 and IPv6 on one port")
    def _():
        port = free_port()
        script = ('/usr/bin/python3 -c "import nbd,sys\n'
                  'for host in sys.argv[1:]:\n'
                  '    h=nbd.NBD(); h.connect_tcp(host, \'%d\');'
                  ' h.pread(512, 0)" 127.0.0.1' % port)
        if has_ipv6():
            script += " ::1"
        p = run(e.argv("-p", str(port), "--run", script))
        assert p.returncode == 0, p.stderr

    def held_port_refused(family, addr, want):
        """Another process listens on addr:PORT; minnbd -p PORT without
        -i must fail naming the address it could not bind (issue 9 item
        7), not start on the other addresses only."""
        port = free_port(family, addr)
        holder = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        holder.bind((addr, port))
        holder.listen(1)
        pidf = os.path.join(e.d, "held.pid")
        try:
            p = run(e.argv("-p", str(port), "-P", pidf))
        finally:
            holder.close()
        if p.returncode == 0:
            os.kill(int(open(pidf).read()), signal.SIGTERM)
        msg = p.stderr.decode(errors="replace")
        assert p.returncode == 1, "minnbd started (exit %d) although " \
            "%s:%d is held:\n%s" % (p.returncode, addr, port, msg)
        assert (want % port) in msg and "Address already in use" in msg, msg

    @c("-p without -i: 127.0.0.1:PORT held by another process: exit 1")
    def _():
        held_port_refused(socket.AF_INET, "127.0.0.1", "0.0.0.0:%d")

    @c("-p without -i: [::1]:PORT held by another process: exit 1")
    def _():
        if not has_ipv6():
            return
        held_port_refused(socket.AF_INET6, "::1", "[::]:%d")

    @c("SIGTERM with requests in flight: they finish, exit 0")
    def _():
        d = os.path.join(e.d, "term")
        os.makedirs(d, exist_ok=True)
        srv = nbdtest.Server("minnbd", "flatfile", e.params, d).start()
        h = srv.connect()
        bufs = [os.urandom(1024 * 1024) for i in range(8)]
        cookies = {}
        for i in range(64):
            cookies[h.aio_pwrite(bufs[i % 8], i * 1024 * 1024)] = i
        srv.proc.send_signal(signal.SIGTERM)
        done = set()
        try:
            while len(done) < len(cookies):
                h.poll(-1)
                for ck in cookies:
                    if ck not in done and h.aio_command_completed(ck):
                        done.add(ck)
        except nbd.Error:
            pass            # unread requests die with the connection
        rc = srv.proc.wait(timeout=60)
        srv.proc = None
        srv.errf.close()
        assert rc == 0, "exit %s\n%s" % (rc, srv.log())
        with open(e.disk, "rb") as f:
            for ck in done:
                i = cookies[ck]
                f.seek(i * 1024 * 1024)
                assert f.read(1024 * 1024) == bufs[i % 8], \
                    "acknowledged write %d missing" % i

    @c("SIGTERM with a client that never reads its replies: exit 0")
    def _():
        import struct
        d = os.path.join(e.d, "stuck")
        os.makedirs(d, exist_ok=True)
        srv = nbdtest.Server("minnbd", "flatfile", e.params, d).start()
        s = socket.socket(socket.AF_UNIX)
        s.connect(srv.sock)
        s.settimeout(30)
        got = b""
        while len(got) < 18:
            got += s.recv(18 - len(got))
        s.sendall(struct.pack(">I", 3) +
                  struct.pack(">QII", 0x49484156454F5054, 1, 0))
        got = b""
        while len(got) < 10:
            got += s.recv(10 - len(got))
        # Fill both directions: replies pile up unread until the
        # server's writes block and it stops reading.
        s.setblocking(False)
        req = b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 0, i,
                                   (i % 64) * 1024 * 1024, 1024 * 1024)
                       for i in range(4096))
        try:
            while req:
                req = req[s.send(req):]
        except BlockingIOError:
            pass
        srv.proc.send_signal(signal.SIGTERM)
        try:
            rc = srv.proc.wait(timeout=60)
        finally:
            s.close()
        srv.proc = None
        srv.errf.close()
        assert rc == 0, "exit %s\n%s" % (rc, srv.log())

    @c("--exit-with-parent: exits when its parent dies")
    def _():
        sock = os.path.join(e.d, "ewp.sock")
        # A parent that starts minnbd (socket-activated, so the socket
        # exists at once), reports its pid, then waits to be killed.
        code = ("import nbdtest, sys\n"
                "s = nbdtest.Server('minnbd', 'flatfile', %r, %r,\n"
                "    extra=['--exit-with-parent'])\n"
                "s.sock = %r\n"
                "s.start()\n"
                "print(s.proc.pid, flush=True)\n"
                "sys.stdin.read()\n" % (e.params, e.d, sock))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.path.dirname(os.path.abspath(__file__))
        parent = subprocess.Popen(["/usr/bin/python3", "-c", code],
                                  stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, env=env)
        pid = int(parent.stdout.readline())
        h = nbd.NBD()
        h.connect_unix(sock)            # minnbd is up and has set it up
        h.shutdown()
        parent.kill()
        parent.wait()
        assert wait_exit(pid), "minnbd outlived its parent"

    @c("usage errors: exit 1, naming the argument")
    def _():
        cases = [
            ([MINNBD], b"BACKEND"),
            ([MINNBD, "nosuch"], b"flatfile"),
            ([MINNBD, "flatfile", "file"], b"key=value"),
            ([MINNBD, "-t", "0", "flatfile"] + e.params, b"-t"),
            ([MINNBD, "-t", "x", "flatfile"] + e.params, b"-t"),
            ([MINNBD, "-p", "99999", "flatfile"] + e.params, b"-p"),
            ([MINNBD, "-s", "-U", "x", "flatfile"] + e.params, b"-s"),
            ([MINNBD, "-U", "x", "-p", "1", "flatfile"] + e.params, b"-U"),
            ([MINNBD, "--bogus", "flatfile"] + e.params, b"usage"),
            ([MINNBD, "-f", "-U", os.path.join(e.d, "x.sock"), "flatfile"],
             b"file"),
            ([MINNBD, "-f", "-U", os.path.join(e.d, "y.sock"), "flatfile",
              "file=/nonexistent/disk"], b"nonexistent"),
        ]
        for argv, want in cases:
            p = run(argv, stdin=subprocess.DEVNULL)
            assert p.returncode == 1, (argv, p.returncode, p.stderr)
            assert want in p.stderr, (argv, p.stderr)

    @c("--help lists backends and their parameters; --version")
    def _():
        p = run([MINNBD, "--help"])
        assert p.returncode == 0
        for w in (b"flatfile", b"cas", b"file=", b"--run", b"-U"):
            assert w in p.stdout, w
        p = run([MINNBD, "--version"])
        assert p.returncode == 0 and p.stdout.startswith(b"minnbd "), \
            p.stdout

    return checks


def main():
    if not MINNBD:
        nbdtest.skip_all("MINNBD is not set")
    if not nbdtest.pairs(servers=["minnbd"], backends=["flatfile"]):
        nbdtest.skip_all("minnbd+flatfile not selected")
    e = Env()
    checks = define(e)
    tap = nbdtest.TAP(len(checks))
    try:
        for desc, fn in checks:
            try:
                fn()
                tap.ok(True, desc)
            except Exception:
                tap.ok(False, desc, traceback.format_exc())
    finally:
        shutil.rmtree(e.d, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


main()
