# Test harness shared by every test script: runs one test body against
# every (server, backend) pair and reports each as one TAP line.
#
# Servers are started with systemd socket activation: the harness binds and
# listens on a Unix socket itself and hands it over as fd 3 (LISTEN_FDS=1),
# so a client can connect the moment the process exists -- no polling, no
# sleeps, no fixed ports.  Both nbdkit and minnbd support this.
#
# Environment (set by tests/Makefile.am): MINNBD, NBDKIT, FLATFILE_PLUGIN,
# CAS_PLUGIN, NBDCAS, SANITIZER_PRELOAD.  NBDCAS_PAIRS="nbdkit-flatfile ..."
# restricts the pairs (for debugging one pair by hand).

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback

import nbd

ALL_PAIRS = [("nbdkit", "flatfile"), ("minnbd", "flatfile"),
             ("nbdkit", "cas"), ("minnbd", "cas")]


def pairs(servers=None, backends=None):
    """The pairs a test runs on, optionally restricted."""
    want = os.environ.get("NBDCAS_PAIRS")
    out = []
    for s, b in ALL_PAIRS:
        if servers and s not in servers:
            continue
        if backends and b not in backends:
            continue
        if want and ("%s-%s" % (s, b)) not in want.split():
            continue
        out.append((s, b))
    return out


class TAP:
    """Minimal TAP producer (plan printed up front)."""

    def __init__(self, n):
        self.n = 0
        self.failed = 0
        print("1..%d" % n, flush=True)

    def ok(self, cond, desc, diag=None):
        self.n += 1
        if not cond:
            self.failed += 1
        print("%s %d - %s" % ("ok" if cond else "not ok", self.n, desc),
              flush=True)
        if diag and not cond:
            for line in str(diag).rstrip().splitlines():
                print("# " + line, flush=True)

    def skip(self, desc, reason):
        self.n += 1
        print("ok %d - %s # SKIP %s" % (self.n, desc, reason), flush=True)


def skip_all(reason):
    """Skip a whole script (a missing optional tool)."""
    print("1..0 # SKIP %s" % reason, flush=True)
    sys.exit(0)


def require_tool(name):
    path = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin:" +
                        os.environ.get("PATH", ""))
    if path is None:
        skip_all("%s is not installed" % name)
    return path


def _sanitizer_env(env, server):
    # An ASan/TSan plugin loaded into a non-sanitized nbdkit needs the
    # runtime preloaded; nbdkit's own allocations are not ours to check.
    pre = os.environ.get("SANITIZER_PRELOAD")
    if pre and server == "nbdkit":
        env["LD_PRELOAD"] = pre
        env["ASAN_OPTIONS"] = "detect_leaks=0:" + env.get("ASAN_OPTIONS", "")
    return env


class Server:
    """One server process for one (server, backend) pair.

    params: backend key=value list.  readonly: -r.  extra: server flags.
    """

    def __init__(self, server, backend, params, workdir, readonly=False,
                 extra=None):
        self.server = server
        self.backend = backend
        self.params = list(params)
        self.workdir = workdir
        self.readonly = readonly
        self.extra = list(extra or [])
        self.sock = os.path.join(workdir, "nbd.sock")
        self.proc = None
        self.stderr_path = os.path.join(workdir, "server.err")

    def argv(self):
        if self.server == "nbdkit":
            plugin = os.environ["%s_PLUGIN" % self.backend.upper()]
            a = [os.environ.get("NBDKIT", "nbdkit"), "--exit-with-parent"]
            if self.readonly:
                a.append("-r")
            return a + self.extra + [plugin] + self.params
        a = [os.environ["MINNBD"]]
        if self.readonly:
            a.append("-r")
        return a + self.extra + [self.backend] + self.params

    def start(self):
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(self.sock)
        lsock.listen(64)
        env = _sanitizer_env(dict(os.environ), self.server)
        env["LISTEN_FDS"] = "1"
        fd = lsock.fileno()
        # LISTEN_PID must be the server's own pid: set it in the child
        # right before exec, and move the socket to fd 3.
        move = "" if fd == 3 else "exec 3<&%d %d<&-; " % (fd, fd)
        wrapper = move + 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"'
        self.errf = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(["sh", "-c", wrapper, "sh"] + self.argv(),
                                     env=env, pass_fds=[fd],
                                     stdin=subprocess.DEVNULL,
                                     stdout=self.errf, stderr=self.errf)
        lsock.close()
        return self

    def uri(self, export=""):
        return "nbd+unix:///%s?socket=%s" % (export, self.sock)

    def connect(self, export="", **opts):
        h = nbd.NBD()
        h.set_export_name(export)
        for k, v in opts.items():
            getattr(h, "set_" + k)(v)
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.connect_unix(self.sock)
        return h

    def stop(self, sig=signal.SIGTERM):
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait()
        self.proc = None
        self.errf.close()
        return rc

    def kill9(self):
        return self.stop(signal.SIGKILL)

    def restart(self):
        self.stop()
        return self.start()

    def log(self):
        try:
            with open(self.stderr_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def backend_params(backend, workdir, size, **kw):
    """Backend parameters for a fresh disk of `size` bytes in workdir."""
    if backend == "flatfile":
        path = os.path.join(workdir, "disk.img")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.truncate(size)
        return ["file=" + path] + ["%s=%s" % kv for kv in kw.items()]
    if backend == "cas":
        store = os.path.join(workdir, "store")
        return ["store=" + store, "size=%d" % size] + \
            ["%s=%s" % kv for kv in kw.items()]
    raise ValueError(backend)


def tmpdir():
    base = os.environ.get("TMPDIR", "/tmp")
    return tempfile.mkdtemp(prefix="nbdcas-test.", dir=base)


def run(name, body, servers=None, backends=None, size=64 * 1024 * 1024,
        params=None, readonly=False, extra=None):
    """Run body(srv) for each pair; body raises (AssertionError...) to fail.

    One TAP line per pair: "<name> [server+backend]".  A body may raise
    Skip("reason") to skip that pair.
    """
    ps = pairs(servers, backends)
    tap = TAP(len(ps))
    for s, b in ps:
        desc = "%s [%s+%s]" % (name, s, b)
        d = tmpdir()
        srv = None
        try:
            p = backend_params(b, d, size, **(params or {}))
            srv = Server(s, b, p, d, readonly=readonly, extra=extra).start()
            body(srv)
            rc = srv.stop()
            srv_ok = rc == 0 or s == "nbdkit"
            tap.ok(srv_ok, desc, "server exited with %s\n%s" % (rc, srv.log()))
        except Skip as e:
            if srv:
                srv.stop()
            tap.skip(desc, str(e))
        except Exception:
            log = srv.log() if srv else ""
            if srv:
                srv.stop(signal.SIGKILL)
            tap.ok(False, desc, traceback.format_exc() + "server log:\n" + log)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


class Skip(Exception):
    pass


def expect_error(errno_name, fn, *args):
    """fn(*args) must fail with the named errno (e.g. "EINVAL")."""
    try:
        fn(*args)
    except nbd.Error as e:
        import errno as E
        want = getattr(E, errno_name)
        assert e.errno == want, "expected %s, got errno %s (%s)" % (
            errno_name, e.errno, e.string)
        return
    raise AssertionError("expected %s, but the call succeeded" % errno_name)
