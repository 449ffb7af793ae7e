#!/usr/bin/python3
# A throwaway Ceph cluster for tests: one ceph-mon and one ceph-osd
# (memstore: objects in the OSD's RAM), no ceph-mgr, listening on
# 127.0.0.1 only (the monitor on a free port, the OSD on the first free
# ports of Ceph's own range), cephx on, every data, run, log and socket
# path inside one temporary directory, daemons stopped by pid.
#
# Use from a test:
#
#     import cephcluster
#     with cephcluster.Cluster() as c:   # raises Unavailable: skip
#         c.create_pool("test")
#         subprocess.run([...], env=c.env())   # CEPH_CONF=c.conf
#
# and by hand (development):
#
#     tests/cephcluster.py [-d DIR] [-p POOL] [-- COMMAND ...]
#
# which starts a cluster, prints `export CEPH_CONF=...`, then runs
# COMMAND with CEPH_CONF set (or waits for ^C) and stops the cluster.
# Exit status 77 (with a message) when the ceph packages are absent.
#
# Why it is built this way (measured on Debian 12, Ceph 16.2):
# * memstore serves its first object ~1 s after start (bluestore on a
#   file: ~9 s).  It saves its objects to osd_data only when it is
#   unmounted, so only a clean stop keeps them: SIGTERM with
#   osd_fast_shutdown off (on by default, it skips the unmount).  A
#   SIGKILLed OSD comes back empty, like a replaced disk.
# * No mgr is needed for pools, objects, locks or blocklists.  The cluster
#   is ready when the first object write succeeds (HEALTH_OK never comes
#   without a mgr).
# * Client timeouts (client_mount_timeout, rados_*_op_timeout) are set in
#   the conf, or a call against a dead daemon retries for 300 s.
# * No admin_socket in [global]: several clients would clash on one.
# * The OSD's key is in the keyring given to ceph-mon --mkfs, so the
#   OSD's first contact needs no extra auth step.
# * Daemons run in the foreground as our children with all three
#   standard streams redirected (an inherited pipe would keep a harness
#   waiting forever) and die with this process (PR_SET_PDEATHSIG).

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

TOOLS = ("ceph-mon", "ceph-osd", "ceph", "rados", "ceph-authtool",
         "monmaptool")
PACKAGES = "ceph-mon ceph-osd ceph-common"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Unavailable(Exception):
    """The ceph packages are not installed: the caller skips."""


class ClusterError(Exception):
    """The cluster did not start (the message has the daemons' logs)."""


def which(name):
    return shutil.which(name, path=SYSTEM_PATH + ":" +
                        os.environ.get("PATH", ""))


def missing_tools():
    return [t for t in TOOLS if which(t) is None]


def require():
    """Raise Unavailable naming what is missing."""
    miss = missing_tools()
    if miss:
        raise Unavailable("%s not installed (Debian: apt-get install "
                          "--no-install-recommends %s)"
                          % (", ".join(miss), PACKAGES))


def free_port():
    """A TCP port on 127.0.0.1 free right now (the monitor binds it a
    moment later; a clash is detected and retried by start())."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    # Runs in the child between fork and exec: a SIGKILLed test (its
    # watchdog, a CI timeout) must not leave daemons behind.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Daemon:
    def __init__(self, name, argv, logdir):
        self.name = name
        self.argv = argv
        self.out_path = os.path.join(logdir, name + ".out")
        self.proc = None

    def start(self, env):
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env=env, preexec_fn=_die_with_parent)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signal the daemon by pid and reap it; SIGKILL after timeout."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)


class Cluster:
    """One mon, one memstore OSD, in workdir (a new temp dir if None;
    removed by stop() unless keep=True or it was given).

    timeout: the client timeouts written into the conf (seconds), which
    bound every ceph/rados command run through this object.
    """

    def __init__(self, workdir=None, memstore_bytes=1 << 30, timeout=20,
                 keep=False):
        require()
        self.own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(
            prefix="nbdcas-ceph.", dir=os.environ.get("TMPDIR", "/tmp"))
        self.dir = os.path.abspath(self.dir)
        self.keep = keep or not self.own_dir
        self.memstore_bytes = memstore_bytes
        self.timeout = timeout
        self.conf = os.path.join(self.dir, "ceph.conf")
        self.keyring = os.path.join(self.dir, "keyring")
        self.fsid = str(uuid.uuid4())
        self.osd_uuid = str(uuid.uuid4())
        self.port = None
        self.mon = None
        self.osd = None
        self.pools = set()

    # ---- paths and environment ----

    def path(self, *p):
        return os.path.join(self.dir, *p)

    @property
    def mon_addr(self):
        return "v2:127.0.0.1:%d" % self.port

    def env(self, extra=None):
        """Environment for programs that talk to this cluster: CEPH_CONF
        points at our conf (never /etc/ceph), no CEPH_ARGS from outside."""
        env = dict(os.environ)
        env["PATH"] = SYSTEM_PATH + ":" + env.get("PATH", "")
        env["CEPH_CONF"] = self.conf
        env.pop("CEPH_ARGS", None)
        if extra:
            env.update(extra)
        return env

    def _write_conf(self):
        d = self.dir
        conf = """\
[global]
fsid = {fsid}
mon_host = {mon}
ms_bind_msgr1 = false
ms_bind_ipv6 = false
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = {d}/keyring
run_dir = {d}/run
crash_dir = {d}/crash
log_file =
pid_file =
log_to_stderr = false
err_to_stderr = true
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
paxos_propose_interval = 0.1
mon_data_avail_crit = 0
mon_data_avail_warn = 0
client_mount_timeout = {t}
rados_mon_op_timeout = {t}
rados_osd_op_timeout = {t}

[mon]
mon_data = {d}/mon
admin_socket = {d}/run/$name.asok
log_file = {d}/log/$name.log

[osd]
osd_data = {d}/osd
osd_objectstore = memstore
osd_fast_shutdown = false
memstore_device_bytes = {mb}
admin_socket = {d}/run/$name.asok
log_file = {d}/log/$name.log
""".format(fsid=self.fsid, mon=self.mon_addr, d=d, t=self.timeout,
           mb=self.memstore_bytes)
        with open(self.conf, "w") as f:
            f.write(conf)

    def _run(self, argv, timeout=None, input=None, check=True, env=None):
        argv = [str(a) for a in argv]
        try:
            p = subprocess.run(argv, input=input, capture_output=True,
                               stdin=None if input is not None
                               else subprocess.DEVNULL,
                               timeout=timeout or 3 * self.timeout,
                               env=env or self.env())
        except subprocess.TimeoutExpired:
            raise ClusterError("timed out: %s\n%s" % (" ".join(argv),
                                                      self.logs()))
        if check and p.returncode != 0:
            raise ClusterError("exit status %d: %s\n%s%s" % (
                p.returncode, " ".join(argv),
                p.stderr.decode(errors="replace")[-2000:], self.logs()))
        return p

    # ---- ceph/rados command line tools against this cluster ----

    def ceph(self, *args, **kw):
        """Run `ceph ARGS` (as client.admin); returns stdout (text)."""
        p = self._run(["ceph", "-c", self.conf, "--connect-timeout",
                       self.timeout] + list(args), **kw)
        return p.stdout.decode(errors="replace")

    def rados(self, *args, **kw):
        """Run `rados ARGS`; returns the CompletedProcess (bytes)."""
        return self._run(["rados", "-c", self.conf] + list(args), **kw)

    def create_pool(self, name, pg_num=8):
        self.ceph("osd", "pool", "create", name, str(pg_num))
        self.ceph("osd", "pool", "application", "enable", name, "nbdcas")
        self.pools.add(name)

    def add_user(self, name, caps=("mon", "allow r", "osd", "allow rwx")):
        """Create client.NAME with caps, its key in the conf's keyring
        (so `-u NAME` works with our conf); returns the key."""
        self.ceph("auth", "get-or-create", "client." + name, *caps)
        key = self.ceph("auth", "print-key", "client." + name).strip()
        self._run(["ceph-authtool", self.keyring, "-n", "client." + name,
                   "--add-key", key])
        return key

    def logs(self, lines=30):
        """The tails of the daemons' logs, for error messages."""
        out = []
        logdir = self.path("log")
        for name in sorted(os.listdir(logdir)) if os.path.isdir(logdir) \
                else []:
            try:
                with open(os.path.join(logdir, name), "rb") as f:
                    tail = f.read().decode(errors="replace").splitlines()
            except OSError:
                continue
            out.append("--- %s:\n%s" % (name, "\n".join(tail[-lines:])))
        return "\n".join(out)

    # ---- start / stop ----

    def _mkfs(self):
        for sub in ("mon", "osd", "run", "log", "crash"):
            os.makedirs(self.path(sub), exist_ok=True)
        auth = ["ceph-authtool", self.keyring]
        self._run(auth + ["--create-keyring", "--gen-key", "-n", "mon.",
                          "--cap", "mon", "allow *"])
        self._run(auth + ["--gen-key", "-n", "client.admin",
                          "--cap", "mon", "allow *", "--cap", "osd",
                          "allow *", "--cap", "mgr", "allow *"])
        self._run(auth + ["--gen-key", "-n", "osd.0",
                          "--cap", "mon", "allow profile osd",
                          "--cap", "osd", "allow *"])
        monmap = self.path("monmap")
        self._run(["monmaptool", "--create", "--clobber", "--fsid",
                   self.fsid, "--addv", "a", "[%s]" % self.mon_addr, monmap])
        self._run(["ceph-mon", "-c", self.conf, "--mkfs", "-i", "a",
                   "--monmap", monmap, "--keyring", self.keyring])
        self._run(["ceph-osd", "-c", self.conf, "-i", "0", "--mkfs",
                   "--osd-uuid", self.osd_uuid, "--no-mon-config"])

    def start_osd(self):
        self.osd = Daemon("osd.0", ["ceph-osd", "-c", self.conf, "-i", "0",
                                    "-f"], self.path("log")).start(self.env())
        return self.osd

    def start(self, pool=None):
        """Start the daemons; ready when an object write to `pool`
        (created here; default a private pool `.ready`) succeeds."""
        t0 = time.monotonic()
        try:
            for attempt in range(3):
                self.port = free_port()
                self._write_conf()
                if attempt == 0:
                    self._mkfs()
                else:
                    # The monmap holds the address: rebuild the mon only.
                    shutil.rmtree(self.path("mon"))
                    os.makedirs(self.path("mon"))
                    monmap = self.path("monmap")
                    self._run(["monmaptool", "--create", "--clobber",
                               "--fsid", self.fsid, "--addv", "a",
                               "[%s]" % self.mon_addr, monmap])
                    self._run(["ceph-mon", "-c", self.conf, "--mkfs", "-i",
                               "a", "--monmap", monmap, "--keyring",
                               self.keyring])
                self.mon = Daemon("mon.a", ["ceph-mon", "-c", self.conf,
                                            "-i", "a", "-f"],
                                  self.path("log")).start(self.env())
                try:
                    # Waits (up to the connect timeout) for the mon.
                    self.ceph("osd", "new", self.osd_uuid, "0")
                    break
                except ClusterError:
                    if self.mon.running():
                        raise
                    # The port was taken between free_port() and bind.
                    self.mon.stop()
            else:
                raise ClusterError("ceph-mon did not start\n" + self.logs())
            self.start_osd()
            pool = pool or ".ready"
            self.create_pool(pool)
            self.wait_writable(pool)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def wait_writable(self, pool):
        """Block until an object write to pool succeeds (the OSD is up
        and its PGs are active), within the client timeout."""
        self.rados("-p", pool, "put", "ready-probe", "-", input=b"ready")

    def stop(self):
        """Stop both daemons by pid (SIGTERM, then SIGKILL) and remove
        the directory unless it is to be kept."""
        for d in (self.osd, self.mon):
            if d is not None:
                d.stop()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def purge_namespace(conf, pool, namespace, timeout=60):
    """Remove every object of one namespace of a pool (a test's store):
    with the rados module when it is there (ceph-common's ceph needs
    it), else with the rados tool."""
    try:
        import rados
    except ImportError:
        rados = None
    if rados is not None:
        cl = rados.Rados(conffile=conf, conf={
            "client_mount_timeout": str(timeout),
            "rados_osd_op_timeout": str(timeout)})
        cl.connect(timeout=timeout)
        try:
            io = cl.open_ioctx(pool)
            io.set_namespace(namespace)
            done = [io.aio_remove(o.key) for o in io.list_objects()]
            for c in done:
                c.wait_for_complete()
            io.close()
        finally:
            cl.shutdown()
        return
    env = dict(os.environ, CEPH_CONF=conf)
    names = subprocess.run(["rados", "-c", conf, "-p", pool, "-N",
                            namespace, "ls"], capture_output=True,
                           text=True, env=env, timeout=timeout,
                           check=True).stdout.split()
    for i in range(0, len(names), 500):
        subprocess.run(["rados", "-c", conf, "-p", pool, "-N", namespace,
                        "rm"] + names[i:i + 500], capture_output=True,
                       env=env, timeout=timeout, check=True)


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(
        description="Start a one-mon one-OSD (memstore) Ceph cluster on "
        "127.0.0.1 in a temp directory, run COMMAND with CEPH_CONF set "
        "(or wait for ^C), then stop it.")
    ap.add_argument("-d", "--dir", help="directory (kept); default a new "
                    "temp dir, removed at the end")
    ap.add_argument("-p", "--pool", default="test",
                    help="pool to create (default: test)")
    ap.add_argument("-m", "--memstore-mib", type=int, default=1024,
                    help="OSD capacity (RAM), MiB (default 1024)")
    ap.add_argument("command", nargs="*")
    a = ap.parse_args(argv)
    try:
        if a.dir:
            os.makedirs(a.dir, exist_ok=True)
        c = Cluster(workdir=a.dir, memstore_bytes=a.memstore_mib << 20)
    except Unavailable as e:
        print("cephcluster: skipped: %s" % e, file=sys.stderr)
        return 77
    try:
        c.start(pool=a.pool)
    except ClusterError as e:
        print("cephcluster: %s" % e, file=sys.stderr)
        return 1
    print("cephcluster: up in %.1f s: mon %s, pool %s, mon pid %d, osd pid "
          "%d, dir %s" % (c.startup_seconds, c.mon_addr, a.pool, c.mon.pid,
                          c.osd.pid, c.dir), file=sys.stderr)
    print("export CEPH_CONF=%s" % c.conf, flush=True)
    rc = 0
    try:
        if a.command:
            rc = subprocess.call(a.command, env=c.env())
        else:
            sigs = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
            signal.sigwait(sigs)
    finally:
        c.stop()
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
