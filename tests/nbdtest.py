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
# restricts the pairs (by hand, or a CI step); NBDCAS_TEST_PAIRS does so
# per script (wanted_pairs()), NBDCAS_TESTS the scripts that run at all
# (the others skip).  NBDCAS_VALGRIND=1 runs every server under
# valgrind memcheck (vgcheck.py).  Each result line is followed by a
# "# time: ..." comment: what the case cost (TAP.ok).
#
# The cas backend on Ceph RADOS ("casrados": store=rados:POOL/NAMESPACE,
# one namespace per test run) is a pair of its own.  A cluster costs
# seconds to start, so it is opt-in for the whole suite: `make -C tests
# check-rados` runs the suite with NBDCAS_RADOS=all.  Without it, the scripts
# in RADOS_SUBSET still run on casrados (skipped where ceph or librados
# is absent); NBDCAS_RADOS=no turns that off.  Each script starts a
# cluster of its own, unless NBDCAS_RADOS_POOL and CEPH_CONF name one.

import faulthandler
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import nbd

import vgcheck  # noqa: E402  (make check-valgrind: wraps MINNBD/NBDKIT)

# Servers run under valgrind: tests that move hundreds of MiB may move less.
VALGRIND = vgcheck.ENABLED


def _sanitized_binaries():
    """Whether a server binary under test was built with a sanitizer."""
    for p in (os.environ.get("MINNBD"), os.environ.get("CAS_PLUGIN")):
        try:
            with open(p, "rb") as f:
                data = f.read()
        except (OSError, TypeError):
            continue
        if b"__asan_init" in data or b"__tsan_init" in data:
            return True
    return False


# Servers built with ASan or TSan (under valgrind MINNBD is a wrapper
# script, but then VALGRIND is set).  Memory figures of a server mean
# nothing under either: JUDGE_MEMORY says whether tests may judge them.
SANITIZED = bool(os.environ.get("SANITIZER_PRELOAD")) or _sanitized_binaries()
JUDGE_MEMORY = not (VALGRIND or SANITIZED)


def proc_status(pid, keys=("VmRSS", "VmHWM", "Threads")):
    """Fields of /proc/PID/status as integers (KiB for memory)."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0])
    return out

# Third-party tools (mkfs.ext4, e2fsck ...) live in sbin on Debian.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

ALL_PAIRS = [("nbdkit", "flatfile"), ("minnbd", "flatfile"),
             ("nbdkit", "cas"), ("minnbd", "cas"),
             ("nbdkit", "casrados"), ("minnbd", "casrados")]

# The suite scripts that run on the casrados pairs in every `make check`
# (each starts a cluster: about 3 s, more on a loaded machine).  Chosen to
# cover what RADOS changes, cheaply: the data path with FUA, flush and
# pipelined requests (test-rw), roots published and read back across
# restarts of the server (test-restart), and many connections sharing one
# volume, its lease and its flushes (test-parallel).  The rest of the
# suite only adds clients whose behaviour does not depend on where the
# store keeps its objects: `make check-rados` runs it all.
RADOS_SUBSET = ("test-rw.py", "test-restart.py", "test-parallel.py")


def rados_wanted():
    """Whether this script runs on the casrados pairs."""
    mode = os.environ.get("NBDCAS_RADOS", "")
    if mode == "no":
        return False
    if mode == "all":
        return True
    return os.path.basename(sys.argv[0]) in RADOS_SUBSET


def backend_name(backend):
    """The server's name of a backend (casrados is the cas backend)."""
    return "cas" if backend == "casrados" else backend


def wanted_pairs():
    """The pairs this script may use, as names ("minnbd-cas"), or None for
    all.  NBDCAS_TEST_PAIRS="test-x.py=minnbd-cas,nbdkit-cas ..." names
    them for one script (a subset such as `make check-valgrind-ci`);
    otherwise NBDCAS_PAIRS="minnbd-cas ..." restricts every script."""
    me = os.path.basename(sys.argv[0])
    for item in os.environ.get("NBDCAS_TEST_PAIRS", "").split():
        test, _, names = item.partition("=")
        if test == me:
            return names.replace(",", " ").split()
    want = os.environ.get("NBDCAS_PAIRS")
    return want.split() if want else None


def pairs(servers=None, backends=None):
    """The pairs a test runs on, optionally restricted.  The casrados
    pairs: for a test of every backend (backends None) when
    rados_wanted(), or when asked for by name."""
    want = wanted_pairs()
    out = []
    for s, b in ALL_PAIRS:
        if servers and s not in servers:
            continue
        # A script about one backend's own behaviour (backends=["cas"]:
        # its files, packs) gets casrados only if it asks for it.
        if backends and b not in backends:
            continue
        if b == "casrados" and not backends and not rados_wanted():
            continue
        if want is not None and ("%s-%s" % (s, b)) not in want:
            continue
        out.append((s, b))
    return out


# ---- the Ceph cluster of the casrados pairs ----

_cluster = None


class RadosUnavailable(Exception):
    pass


def rados_cluster():
    """(conf, pool) of the cluster casrados stores live in: the one
    `make check-rados` started (CEPH_CONF, NBDCAS_RADOS_POOL), or one
    started for this script (stopped at exit).  Raises RadosUnavailable
    where ceph or librados is missing."""
    global _cluster
    if not os.environ.get("NBDCAS_HAVE_RADOS"):
        raise RadosUnavailable("built without librados "
                               "(configure --with-rados)")
    pool = os.environ.get("NBDCAS_RADOS_POOL")
    if pool and os.environ.get("CEPH_CONF"):
        return os.environ["CEPH_CONF"], pool
    if _cluster is None:
        import atexit
        import cephcluster
        try:
            c = cephcluster.Cluster(memstore_bytes=2 << 30)
        except cephcluster.Unavailable as e:
            raise RadosUnavailable(str(e))
        c.start(pool="nbdcas")
        atexit.register(c.stop)
        _cluster = c
    return _cluster.conf, "nbdcas"


def rados_purge(pool, namespace):
    """Remove every object of a test's namespace (the cluster's memory
    is the OSD's storage)."""
    conf, _ = rados_cluster()
    import cephcluster
    cephcluster.purge_namespace(conf, pool, namespace)


class TAP:
    """Minimal TAP producer (plan printed up front)."""

    def __init__(self, n):
        self.n = 0
        self.failed = 0
        self._last = _clock()
        print("1..%d" % n, flush=True)

    def _time(self):
        # What each case cost, in the .log file: CI's budget is planned
        # from these (wall time, and CPU time of this script and of the
        # child processes it has reaped: servers, valgrind, clients).
        now = _clock()
        # (A subclass may not call __init__: count from the first line.)
        last = getattr(self, "_last", now)
        print("# time: %.1fs wall, %.1fs cpu" % (now[0] - last[0],
                                                 now[1] - last[1]),
              flush=True)
        self._last = now

    def ok(self, cond, desc, diag=None):
        vg = vgcheck.collect()
        if vg:
            cond = False
            diag = (str(diag) + "\n" if diag else "") + vg
        self.n += 1
        if not cond:
            self.failed += 1
        print("%s %d - %s" % ("ok" if cond else "not ok", self.n, desc),
              flush=True)
        if diag and not cond:
            for line in str(diag).rstrip().splitlines():
                print("# " + line, flush=True)
        self._time()

    def skip(self, desc, reason):
        self.n += 1
        print("ok %d - %s # SKIP %s" % (self.n, desc, reason), flush=True)
        self._time()


def _clock():
    """(wall seconds, CPU seconds of this process and its reaped
    children)."""
    import resource
    cpu = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        cpu += ru.ru_utime + ru.ru_stime
    return time.monotonic(), cpu


def skip_all(reason):
    """Skip a whole script (a missing optional tool)."""
    print("1..0 # SKIP %s" % reason, flush=True)
    sys.exit(0)


def _run_selected_scripts_only():
    """NBDCAS_TESTS="test-rw.py ...": only these scripts run, the others
    skip.  For a smoke run under `make distcheck`, where TESTS= on the
    command line would reach fuzz/'s tests too."""
    only = os.environ.get("NBDCAS_TESTS")
    me = os.path.basename(sys.argv[0])
    if only is not None and me.startswith("test-") and \
            me not in only.split():
        skip_all("not selected (NBDCAS_TESTS='%s')" % only)


def require_tool(name):
    path = shutil.which(name, path=SYSTEM_PATH + ":" +
                        os.environ.get("PATH", ""))
    if path is None:
        skip_all("%s is not installed" % name)
    return path


def preload(*libs):
    """An LD_PRELOAD value that preloads libs (a fault shim) into a
    program of ours: in a sanitizer build the sanitizer runtime must come
    first, or ASan refuses to start."""
    san = os.environ.get("SANITIZER_PRELOAD", "")
    return " ".join(([san] if san else []) + list(libs))


def server_env(server, env=None):
    """Environment for running a server binary ourselves (not through
    Server): env (default os.environ) with what a sanitizer build needs
    for that server (nbdkit loading our ASan plugin: the runtime
    preloaded)."""
    return _sanitizer_env(dict(os.environ if env is None else env), server)


def tool_env(extra=None):
    """Environment for third-party clients: system tools first in PATH
    (a pyenv python3 earlier in PATH breaks nbdsh), sanitizer variables
    of the server side removed."""
    env = dict(os.environ)
    env["PATH"] = SYSTEM_PATH + ":" + env.get("PATH", "")
    env.pop("LD_PRELOAD", None)
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


def cmd(argv, timeout=300, check=True, input=None, env=None, cwd=None):
    """Run a third-party command; return its CompletedProcess (text).

    check=True: a non-zero exit raises AssertionError with the command,
    its status, stdout and stderr (which lands in the TAP diagnostics).
    """
    argv = [str(a) for a in argv]
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL
                           if input is None else None,
                           input=input, capture_output=True, text=True,
                           timeout=timeout, env=tool_env(env), cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("timed out after %ss: %s\nstdout:\n%s\n"
                             "stderr:\n%s" % (timeout, " ".join(argv),
                                              e.stdout, e.stderr))
    if check and p.returncode != 0:
        raise AssertionError("exit status %d: %s\nstdout:\n%s\nstderr:\n%s"
                             % (p.returncode, " ".join(argv),
                                p.stdout[-4000:], p.stderr[-4000:]))
    return p


def wait_until(cond, what, timeout=60):
    """Wait for a condition that has no event to wait on (e.g. a FUSE
    mount becoming ready): poll it, fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def extents(h, offset=0, length=None, flags=0):
    """base:allocation extents covering [offset, offset+length), as a
    list of (offset, length, state), adjacent equal states merged and the
    last one clipped to the range.  Checks the server's answers are sane
    (non-empty, progress on each call)."""
    if length is None:
        length = h.get_size() - offset
    end = offset + length
    out = []
    pos = offset
    while pos < end:
        got = []

        def cb(metacontext, off, entries, err):
            if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
                got.append((off, list(entries)))
            return 0
        h.block_status(min(end - pos, 1 << 30), pos, cb, flags)
        assert len(got) == 1, "block_status at %d: %d base:allocation " \
            "replies" % (pos, len(got))
        ents = got[0][1]
        assert ents and len(ents) % 2 == 0, \
            "block_status at %d: bad entries %r" % (pos, ents)
        if flags & nbd.CMD_FLAG_REQ_ONE:
            assert len(ents) == 2, "REQ_ONE gave %d extents" % (len(ents) // 2)
        for i in range(0, len(ents), 2):
            ln, st = ents[i], ents[i + 1]
            assert ln > 0, "zero-length extent at %d" % pos
            ln = min(ln, end - pos)
            if out and out[-1][2] == st and out[-1][0] + out[-1][1] == pos:
                out[-1] = (out[-1][0], out[-1][1] + ln, st)
            else:
                out.append((pos, ln, st))
            pos += ln
            if pos >= end:
                break
    return out


def aio_wait(h, cookies):
    """Wait until every aio command in cookies completed; a failed one
    raises its nbd.Error."""
    pending = set(cookies)
    while pending:
        for c in list(pending):
            if h.aio_command_completed(c):
                pending.discard(c)
        if pending:
            h.poll(-1)


def state_at(exts, offset, length):
    """The set of extent states covering [offset, offset+length)."""
    return {st for (o, ln, st) in exts
            if o < offset + length and offset < o + ln}


def random_bytes(n, seed):
    """n pseudo-random bytes, reproducible from seed (fast)."""
    import random
    return random.Random(seed).randbytes(n)


_NONZERO = bytes([1]) + bytes(range(1, 256))


def random_nonzero(n, seed):
    """Like random_bytes, with no zero byte (so any zeroing shows)."""
    return random_bytes(n, seed).translate(_NONZERO)


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
        backend = backend_name(self.backend)
        if self.server == "nbdkit":
            plugin = os.environ["%s_PLUGIN" % backend.upper()]
            a = [os.environ.get("NBDKIT", "nbdkit"), "--exit-with-parent"]
            if self.readonly:
                a.append("-r")
            return a + self.extra + [plugin] + self.params
        a = [os.environ["MINNBD"]]
        if self.readonly:
            a.append("-r")
        return a + self.extra + [backend] + self.params

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
        _live_servers.add(self.proc)
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

    def _wait_ready(self):
        """Block until the server is in its main loop: a signal sent
        between exec and the server installing its handlers would kill
        it with the default action, whatever the server does.  A server
        that answers the handshake is past that point.  The probe ends
        the session cleanly with NBD_OPT_ABORT (an abrupt close makes
        nbdkit log an error, and with the ASan runtime preloaded nbdkit
        then deadlocks in exit(): libp11-kit's destructor, freelocale)."""
        h = nbd.NBD()
        try:
            h.set_opt_mode(True)
            h.connect_unix(self.sock)
            h.opt_abort()
        except nbd.Error:
            pass
        finally:
            h.close() if hasattr(h, "close") else None
            del h

    def ready(self):
        """Return once the server has started up: it answered a handshake
        (a server started by socket activation accepts connections in the
        kernel before it has even configured its backend)."""
        self._wait_ready()
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            if sig != signal.SIGKILL:
                self._wait_ready()
            self.proc.send_signal(sig)
        if self.server == "nbdkit" and os.environ.get("SANITIZER_PRELOAD"):
            # nbdkit with the ASan runtime preloaded can deadlock in
            # exit() after its own cleanup (and the plugin's unload) is
            # done: libp11-kit's destructor blocks in freelocale.  Not
            # our code, and nothing is lost: do not hang the suite on it.
            try:
                rc = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.errf.write(b"nbdtest: nbdkit hung in exit(), killed\n")
                self.proc.kill()
                rc = self.proc.wait()
        else:
            rc = self.proc.wait()
        _live_servers.discard(self.proc)
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


def with_reference(srv, fn):
    """Run fn(ref) against nbdkit serving srv's backend with srv's
    parameters (the reference front end), with srv stopped meanwhile (a
    store may allow one server at a time); srv is restarted afterwards.
    Used to check that minnbd presents a backend exactly as nbdkit does.
    """
    d = os.path.join(srv.workdir, "reference")
    os.makedirs(d, exist_ok=True)
    srv.stop()
    ref = Server("nbdkit", srv.backend, srv.params, d,
                 readonly=srv.readonly).start()
    try:
        return fn(ref)
    finally:
        rc = ref.stop()
        srv.start()
        assert rc == 0, "reference nbdkit exited with %s:\n%s" % (
            rc, ref.log())


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
    if backend == "casrados":
        # One namespace per test directory: runs never see each other.
        conf, pool = rados_cluster()
        return ["store=" + rados_store(workdir), "ceph-conf=" + conf,
                "ceph-timeout=20", "size=%d" % size] + \
            ["%s=%s" % kv for kv in kw.items()]
    raise ValueError(backend)


def rados_store(workdir):
    """The casrados store of a test directory: rados:POOL/NAMESPACE."""
    _, pool = rados_cluster()
    return "rados:%s/%s" % (pool, os.path.basename(workdir))


_live_servers = set()


def _watchdog(seconds):
    """A hung server or client must not hang `make check`: after
    `seconds`, dump every thread's stack, kill the servers we started and
    exit (the TAP driver reports the missing lines as an error).  The C
    faulthandler timer is the backstop in case the GIL is held."""
    import threading

    def fire():
        print("# TIMEOUT after %ds: stacks follow on stderr" % seconds,
              flush=True)
        faulthandler.dump_traceback(all_threads=True)
        for p in list(_live_servers):
            try:
                p.kill()
            except OSError:
                pass
        os._exit(1)
    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
    faulthandler.dump_traceback_later(seconds + 30, exit=True)


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
    _watchdog(int(os.environ.get("NBDCAS_TEST_TIMEOUT", "900")))
    for s, b in ps:
        desc = "%s [%s+%s]" % (name, s, b)
        d = tmpdir()
        srv = None
        try:
            if b == "casrados":
                try:
                    rados_cluster()
                except RadosUnavailable as e:
                    raise Skip(str(e))
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
            if b == "casrados" and (_cluster or
                                    os.environ.get("NBDCAS_RADOS_POOL")):
                try:
                    rados_purge(rados_cluster()[1], os.path.basename(d))
                except Exception as e:
                    print("# purging the test's objects failed: %s" % e,
                          flush=True)
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
        # nbd.Error: .errnum is the number, .errno its name (a string).
        assert e.errnum == want, "expected %s, got errno %s (%s)" % (
            errno_name, e.errno, e.string)
        return e
    raise AssertionError("expected %s, but the call succeeded" % errno_name)


_run_selected_scripts_only()
