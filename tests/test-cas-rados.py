#!/usr/bin/python3
# The cas store on Ceph RADOS as a whole (issue 14): several servers (one
# process each, one librados client each: as on several hosts) on one
# pool, against a real cluster this script starts (cephcluster.py: one
# mon, one memstore OSD, 127.0.0.1 only) and stops.  Each case works in
# its own namespace.  Servers alternate between minnbd and nbdkit so
# that both front ends take every role somewhere (only the selected ones:
# NBDCAS_PAIRS="minnbd-casrados" makes every server a minnbd).
#
#   - two servers writing different volumes with shared data: stored
#     once (chunk objects counted), each reads back its own
#   - a second writer of a held volume is refused, naming the holder
#   - kill -9 of a holder: another takes the volume after the lease
#     (takeover=wait) with every flushed byte
#   - a stalled holder (SIGSTOP past its lease, SIGCONT) cannot publish:
#     its flush fails, the root stays the new holder's
#   - takeover=force fences the old holder (blocklist) at once
#   - the OSD stopped and restarted under a running server: I/O fails
#     within the timeout, then resumes; nothing flushed is lost
#   - nbdcas on a served RADOS store: a snapshot holds the unflushed
#     writes of a server on another "host" (watch/notify), and fails
#     with a clear error when that server does not answer; list, stat,
#     fsck, import, export, clone, rename, delete, diff; delete and
#     rename refused while open elsewhere; read-only servers and
#     snapshot exports beside the writer
#   - errors: missing pool, refused key, unreachable monitors, bad
#     parameters -- clear, and within the timeout
#   - nbdcas gc on a RADOS store (FORMAT.md, "Garbage collection on
#     RADOS"): garbage past the grace period removed, younger kept, the
#     older root a read-only server serves kept while it serves it, an
#     orphaned volume object removed, a server that knew a removed chunk
#     stores it again; what a second server wrote and did not flush
#     survives (the collector makes it publish); a garbage chunk written
#     again while the collector sweeps is kept (touched); a writer that
#     does not answer stops the collection; a snapshot and a clone taken
#     while a collection marks are made from a root it marked
#
# Skipped when the ceph packages are not installed or the tree was built
# without librados.  `make check` runs the QUICK cases (a cluster's start
# and some 20 s), `make check-rados` (NBDCAS_RADOS=all) every case;
# RADOS_CASES="two_hosts stall" runs those.

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import nbdtest  # noqa: E402
import castest  # noqa: E402
import cephcluster  # noqa: E402

POOL = "nbdcas"
# The store's timeout (ceph-timeout=) in these cases: an operation
# against a dead OSD gives up after it.
TIMEOUT = 4
# A short lease: the takeover cases wait for one to lapse.
LEASE = 4
# What a loaded 2-core machine may add to a timeout before we call it a
# hang.
SLACK = 20
BS = 64 * 1024
MiB = 1024 * 1024

cluster = None


def params(ns, *extra, timeout=TIMEOUT, lease=LEASE):
    return ["store=rados:%s/%s" % (POOL, ns), "ceph-conf=" + cluster.conf,
            "ceph-timeout=%d" % timeout, "lease=%d" % lease] + list(extra)


# The servers the casrados pairs selected (NBDCAS_PAIRS); each role below
# asks for "minnbd" or "nbdkit" and gets it if selected, else the other.
KINDS = []


def pick(kind):
    return kind if kind in KINDS else KINDS[0]


def serve(kind, d, name, prm, readonly=False, ready=True):
    kind = pick(kind)
    wd = os.path.join(d, name)
    os.makedirs(wd, exist_ok=True)
    srv = nbdtest.Server(kind, "casrados", prm, wd, readonly=readonly)
    srv.start()
    if ready:
        srv.ready()
    return srv


def tool(*args, check=None):
    """nbdcas with the cluster's conf given by --ceph-conf (a global
    option, before the command)."""
    return castest.tool("--ceph-conf", cluster.conf, *args, check=check)


def store(ns):
    return "rados:%s/%s" % (POOL, ns)


def objects(ns):
    """The object names of a namespace."""
    import rados
    cl = rados.Rados(conffile=cluster.conf)
    cl.connect(timeout=30)
    try:
        io = cl.open_ioctx(POOL)
        io.set_namespace(ns)
        names = [o.key for o in io.list_objects()]
        io.close()
    finally:
        cl.shutdown()
    return names


def chunks(ns):
    return sum(1 for n in objects(ns) if n.startswith("chunk."))


def volume_generation(ns, volume):
    """The published generation of a volume (its object's nbdcas.gen)."""
    import rados
    cl = rados.Rados(conffile=cluster.conf)
    cl.connect(timeout=30)
    try:
        io = cl.open_ioctx(POOL)
        io.set_namespace(ns)
        oid = dict(omap_lookup(io, volume))[volume]
        gen = int(io.get_xattr(oid.decode(), "nbdcas.gen"))
        io.close()
    finally:
        cl.shutdown()
    return gen


def omap_lookup(io, key):
    import rados
    with rados.ReadOpCtx() as op:
        it, _ = io.get_omap_vals_by_keys(op, (key,))
        io.operate_read_op(op, "nbdcas.volumes")
        return list(it)


def stop(srv):
    """Stop a server (SIGTERM): it must exit within a minute."""
    if srv.proc is not None and srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            threads = ""
            task = "/proc/%d/task" % srv.proc.pid
            for t in sorted(os.listdir(task)):
                try:
                    with open("%s/%s/comm" % (task, t)) as f, \
                            open("%s/%s/wchan" % (task, t)) as g:
                        threads += "%s %s %s\n" % (t, f.read().strip(),
                                                    g.read().strip())
                except OSError:
                    pass
            try:
                threads += subprocess.run(
                    ["gdb", "-p", str(srv.proc.pid), "-batch", "-ex",
                     "thread apply all bt"], capture_output=True, text=True,
                    timeout=60).stdout
            except (OSError, subprocess.TimeoutExpired):
                pass
            srv.proc.kill()
            srv.stop()
            raise AssertionError("%s did not exit within 60 s of SIGTERM; "
                                 "threads:\n%slog:\n%s" % (
                                     srv.server, threads, srv.log()))
    rc = srv.stop()
    assert rc == 0 or srv.server == "nbdkit", \
        "server exited with %s:\n%s" % (rc, srv.log())


def close(h):
    try:
        h.shutdown()
    except nbd.Error:
        pass
    if hasattr(h, "close"):
        h.close()


def expect_nbd_error(fn, *args):
    try:
        fn(*args)
    except nbd.Error as e:
        return e
    raise AssertionError("%s succeeded, expected an error" % fn.__name__)


def connect_once_released(srv):
    """srv.connect() once the volume's writer has let it go.  nbdkit
    calls the plugin's close, which releases the lease, after it has
    closed the client's socket (server/connections.c, free_connection):
    right after a client of an nbdkit writer disconnects, the volume can
    still be held.  A refusal (NBD_REP_ERR_POLICY, "held by another
    writer") is tried again for up to TIMEOUT + SLACK seconds."""
    got = []

    def connected():
        try:
            got.append(srv.connect())
            return True
        except nbd.Error as e:
            if "policy" not in str(e):
                raise
            return False
    nbdtest.wait_until(connected, "the volume's release by its writer",
                       TIMEOUT + SLACK)
    return got[0]


def wait_log(srv, pattern, timeout=TIMEOUT + SLACK):
    def found():
        return re.search(pattern, srv.log())
    nbdtest.wait_until(found, "server log matching %r" % pattern, timeout)
    return found()


def set_super_version(ns, version):
    """Rewrite the superblock object with another format version (and
    its CRC, as format.c seals it)."""
    import rados
    import struct
    import casformat
    cl = rados.Rados(conffile=cluster.conf)
    cl.connect(timeout=30)
    try:
        io = cl.open_ioctx(POOL)
        io.set_namespace(ns)
        sb = bytearray(io.read("nbdcas.super", 64))
        struct.pack_into("<I", sb, 8, version)
        struct.pack_into("<I", sb, 60, casformat.crc32c(bytes(sb[:60])))
        io.write_full("nbdcas.super", bytes(sb))
        io.close()
    finally:
        cl.shutdown()


def chunk_names(ns):
    return set(n for n in objects(ns) if n.startswith("chunk."))


def volume_objects(ns):
    return [n for n in objects(ns) if n.startswith("vol.")]


def gc(ns, *args):
    """nbdcas gc --json on the store: its figures."""
    p = tool("gc", store(ns), "--json", *args, check=0)
    return json.loads(p.stdout)


class Paused:
    """nbdcas ARGS, stopped the first time it reaches test point `point`
    (testpoint.h) until resume(), or killed there."""

    def __init__(self, d, point, *args):
        self.stop_fifo = os.path.join(d, point + ".stop")
        self.resume_fifo = os.path.join(d, point + ".resume")
        for f in (self.stop_fifo, self.resume_fifo):
            if os.path.exists(f):
                os.unlink(f)
            os.mkfifo(f)
        env = dict(os.environ, NBDCAS_TEST_STOP=point,
                   NBDCAS_TEST_STOP_NTH="1",
                   NBDCAS_TEST_STOP_FIFO=self.stop_fifo,
                   NBDCAS_TEST_RESUME_FIFO=self.resume_fifo)
        self.args = args
        self.p = subprocess.Popen(
            [castest.NBDCAS, "--ceph-conf", cluster.conf] + list(args),
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        nbdtest._live_servers.add(self.p)
        # Reached, or exited without reaching it (a failure).
        fd = os.open(self.stop_fifo, os.O_RDONLY | os.O_NONBLOCK)
        line = b""
        try:
            deadline = time.monotonic() + 60 + SLACK
            while not line.endswith(b"\n") and self.p.poll() is None and \
                    time.monotonic() < deadline:
                r, _, _ = select.select([fd], [], [], 0.2)
                if r:
                    line += os.read(fd, 100)
        finally:
            os.close(fd)
        if line != (point + "\n").encode():
            self.p.kill()
            out, err = self.p.communicate()
            raise AssertionError("nbdcas %s did not stop at %s (%r): "
                                 "exit %s\n%s" % (" ".join(args), point,
                                                  line, self.p.returncode,
                                                  err))

    def resume(self):
        """Let it go on; (exit status, stdout, stderr)."""
        with open(self.resume_fifo, "w") as f:
            f.write("go\n")
        out, err = self.p.communicate(timeout=120)
        nbdtest._live_servers.discard(self.p)
        return self.p.returncode, out, err

    def kill(self):
        self.p.kill()
        self.p.communicate()
        nbdtest._live_servers.discard(self.p)


# ---- cases ----

def case_two_hosts(d):
    """Two servers, two volumes, shared data: stored once."""
    ns = "twohosts"
    tool("create", store(ns), "--size", "64M", "--volume", "a", check=0)
    tool("create", store(ns), "--size", "64M", "--volume", "b", check=0)
    shared = nbdtest.random_bytes(16 * MiB, 1)
    own_a = nbdtest.random_bytes(MiB, 2)
    own_b = nbdtest.random_bytes(MiB, 3)
    a = serve("minnbd", d, "a", params(ns, "volume=a"))
    b = serve("nbdkit", d, "b", params(ns, "volume=b"))
    try:
        ha = a.connect("a")
        hb = b.connect("b")
        base = chunks(ns)
        ha.pwrite(shared, 0)
        ha.pwrite(own_a, 32 * MiB)
        ha.flush()
        after_a = chunks(ns)
        # 256 shared + 16 own data chunks, plus a map leaf.
        assert after_a - base >= 272, (base, after_a)
        # The same data at other offsets of the other volume, through the
        # other server: only B's own blocks and its map leaf are new.
        hb.pwrite(shared, 8 * MiB)
        hb.pwrite(own_b, 40 * MiB)
        hb.flush()
        after_b = chunks(ns)
        assert after_b - after_a <= 16 + 2, \
            "B stored %d objects for 16 new blocks and 16 MiB of A's data" \
            % (after_b - after_a)
        assert ha.pread(16 * MiB, 0) == shared
        assert hb.pread(16 * MiB, 8 * MiB) == shared
        assert hb.pread(MiB, 40 * MiB) == own_b
        close(ha)
        close(hb)
    finally:
        stop(a)
        stop(b)
    # Another process reads both back from the pool.
    exp = os.path.join(d, "a.img")
    tool("export", store(ns), "a", exp, check=0)
    with open(exp, "rb") as f:
        assert f.read(16 * MiB) == shared
        f.seek(32 * MiB)
        assert f.read(MiB) == own_a
    tool("fsck", store(ns), check=0)


def case_second_writer(d):
    """A held volume: a second writer is refused, naming the holder; a
    read-only server and a snapshot export are served beside it."""
    ns = "second"
    tool("create", store(ns), "--size", "16M", check=0)
    a = serve("nbdkit", d, "a", params(ns))
    b = serve("minnbd", d, "b", params(ns))
    ro = serve("minnbd", d, "ro", params(ns), readonly=True)
    ha = None
    try:
        ha = a.connect()
        data = nbdtest.random_bytes(BS, 4)
        ha.pwrite(data, 0)
        ha.flush()
        t = time.monotonic()
        expect_nbd_error(b.connect)
        assert time.monotonic() - t < TIMEOUT + SLACK
        m = wait_log(b, r"volume 'default' is held by another writer: "
                     r"client\.\d+ on host \S+ \(pid (\d+)")
        assert int(m.group(1)) == a.proc.pid, \
            "holder named pid %s, server A is %d" % (m.group(1), a.proc.pid)
        # Readers need no lease: the published root.
        hr = ro.connect()
        assert hr.is_read_only()
        assert hr.pread(BS, 0) == data
        close(hr)
        tool("snapshot", store(ns), "default", "s1", check=0)
        hs = b.connect("default@s1")
        assert hs.is_read_only() and hs.pread(BS, 0) == data
        close(hs)
        close(ha)
        ha = None
        # Released with A's last connection: now B may write.
        hb = connect_once_released(b)
        hb.pwrite(data[::-1], 0)
        hb.flush()
        close(hb)
    finally:
        if ha:
            close(ha)
        for s in (a, b, ro):
            stop(s)


def case_kill9_takeover(d):
    """kill -9 of the holder: after its lease another server takes the
    volume, with every flushed byte."""
    ns = "kill9"
    tool("create", store(ns), "--size", "32M", check=0)
    a = serve("minnbd", d, "a", params(ns))
    ha = a.connect()
    flushed = nbdtest.random_bytes(4 * MiB, 5)
    ha.pwrite(flushed, MiB)
    fua = nbdtest.random_bytes(BS, 6)
    ha.flush()
    ha.pwrite(fua, 20 * MiB, nbd.CMD_FLAG_FUA)
    ha.pwrite(nbdtest.random_bytes(BS, 7), 30 * MiB)   # not flushed
    a.kill9()
    # At once: refused, naming the dead holder.
    b = serve("nbdkit", d, "b", params(ns))
    expect_nbd_error(b.connect)
    stop(b)
    # takeover=wait: opens once the dead holder's lease lapsed.
    c = serve("nbdkit", d, "c", params(ns, "takeover=wait"))
    try:
        t = time.monotonic()
        hc = c.connect()
        waited = time.monotonic() - t
        assert waited < LEASE + TIMEOUT + SLACK, waited
        assert hc.pread(4 * MiB, MiB) == flushed
        assert hc.pread(BS, 20 * MiB) == fua
        hc.pwrite(b"after takeover", 0)
        hc.flush()
        close(hc)
        print("# takeover after kill -9: %.1f s (lease %d s)" %
              (waited, LEASE), flush=True)
    finally:
        stop(c)
    tool("fsck", store(ns), check=0)


def case_stall(d):
    """A holder stopped past its lease (SIGSTOP) while another takes the
    volume over cannot publish when it resumes."""
    ns = "stall"
    tool("create", store(ns), "--size", "32M", check=0)
    a = serve("nbdkit", d, "a", params(ns))
    ha = a.connect()
    one = nbdtest.random_bytes(MiB, 8)
    ha.pwrite(one, 0)
    ha.flush()
    stale = nbdtest.random_bytes(MiB, 9)
    ha.pwrite(stale, 4 * MiB)           # acknowledged, never published
    gen_a = volume_generation(ns, "default")
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        b = serve("minnbd", d, "b", params(ns, "takeover=wait"))
        hb = b.connect()                # after A's lease lapsed
        new = nbdtest.random_bytes(MiB, 10)
        hb.pwrite(new, 8 * MiB)
        hb.flush()
        gen_b = volume_generation(ns, "default")
        assert gen_b > gen_a
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    try:
        # A resumes: its flush fails, and so does everything else.
        e = expect_nbd_error(ha.flush)
        assert e.errnum == __import__("errno").EIO, e
        expect_nbd_error(ha.pread, 16, 0)
        assert volume_generation(ns, "default") == gen_b
        wait_log(a, r"volume 'default': its writer lease")
        # Nothing of A's unpublished write; B's writes intact.
        assert hb.pread(MiB, 4 * MiB) == bytes(MiB)
        assert hb.pread(MiB, 8 * MiB) == new
        assert hb.pread(MiB, 0) == one
    finally:
        close(ha)
        close(hb)
        stop(a)
        stop(b)


def case_force(d):
    """takeover=force: the old holder is fenced at once."""
    ns = "force"
    tool("create", store(ns), "--size", "16M", check=0)
    a = serve("minnbd", d, "a", params(ns, lease=60))
    ha = a.connect()
    one = nbdtest.random_bytes(MiB, 11)
    ha.pwrite(one, 0)
    ha.flush()
    ha.pwrite(nbdtest.random_bytes(MiB, 12), MiB)   # never published
    gen = volume_generation(ns, "default")
    b = serve("nbdkit", d, "b", params(ns, "takeover=force", lease=60))
    hb = None
    try:
        t = time.monotonic()
        hb = b.connect()
        assert time.monotonic() - t < TIMEOUT + SLACK
        m = wait_log(b, r"took it over by force from client\.\d+ on host "
                     r"\S+ \(pid (\d+)")
        assert int(m.group(1)) == a.proc.pid
        assert hb.pread(MiB, 0) == one
        assert hb.pread(MiB, MiB) == bytes(MiB)
        # The fenced server cannot publish: its flush fails.
        expect_nbd_error(ha.flush)
        assert volume_generation(ns, "default") == gen
        hb.pwrite(b"new holder", 0)
        hb.flush()
    finally:
        close(ha)
        if hb:
            close(hb)
        stop(a)
        stop(b)


def case_osd_restart(d):
    """The OSD stopped and restarted under a running server."""
    ns = "osd"
    tool("create", store(ns), "--size", "32M", check=0)
    a = serve("minnbd", d, "a", params(ns, lease=60))
    try:
        h = a.connect()
        one = nbdtest.random_bytes(2 * MiB, 13)
        h.pwrite(one, 0)
        h.flush()
        # memstore keeps objects across a clean stop only (SIGTERM).
        cluster.osd.stop()
        t = time.monotonic()
        expect_nbd_error(h.pread, BS, 0)         # not cached: the OSD
        assert time.monotonic() - t < TIMEOUT + SLACK
        two = nbdtest.random_bytes(MiB, 14)
        try:
            h.pwrite(two, 4 * MiB)               # may be refused too
            wrote = True
        except nbd.Error:
            wrote = False
        t = time.monotonic()
        expect_nbd_error(h.flush)
        assert time.monotonic() - t < 3 * TIMEOUT + SLACK
        cluster.start_osd()
        cluster.wait_writable(POOL)
        if not wrote:
            h.pwrite(two, 4 * MiB)
        h.flush()                                # now it goes through
        assert h.pread(2 * MiB, 0) == one
        assert h.pread(MiB, 4 * MiB) == two
        close(h)
        a.restart()
        a.ready()
        h = a.connect()
        assert h.pread(2 * MiB, 0) == one
        assert h.pread(MiB, 4 * MiB) == two
        close(h)
    finally:
        if not cluster.osd.running():
            cluster.start_osd()
            cluster.wait_writable(POOL)
        stop(a)


def case_snapshot_remote(d):
    """nbdcas snapshot of a volume a server on another host holds: the
    server flushes first; one that does not answer makes it fail."""
    ns = "snap"
    tool("create", store(ns), "--size", "16M", check=0)
    # A lease longer than the stop below: the holder stays the holder.
    a = serve("nbdkit", d, "a", params(ns, lease=60))
    ha = a.connect()
    try:
        data = nbdtest.random_bytes(2 * MiB, 15)
        ha.pwrite(data, 0)                       # acknowledged, unflushed
        tool("snapshot", store(ns), "default", "s1", check=0)
        exp = os.path.join(d, "s1.img")
        tool("export", store(ns), "default@s1", exp, check=0)
        with open(exp, "rb") as f:
            assert f.read(2 * MiB) == data, "the snapshot misses writes " \
                "the server acknowledged before it"
        # A clone of it, and a diff against the volume.
        ha.pwrite(b"z" * BS, 8 * MiB)
        tool("clone", store(ns), "default@s1", "c1", check=0)
        p = tool("diff", store(ns), "default@s1", "default", check=0)
        assert p.stdout.split() == [str(8 * MiB), str(BS)], p.stdout
        # The holder stopped: no answer within the timeout.
        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            t = time.monotonic()
            p = tool("snapshot", store(ns), "default", "s2",
                     "--ceph-timeout", str(TIMEOUT), check=1)
            secs = time.monotonic() - t
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        assert re.search(r"held by client\.\d+ on host \S+ \(pid %d.*did not "
                         r"answer the request to flush it within %d s" %
                         (a.proc.pid, TIMEOUT), p.stderr), p.stderr
        assert secs < 2 * TIMEOUT + SLACK, secs
        assert "default@s2" not in tool("list", store(ns), check=0).stdout
        # Open elsewhere: delete and rename refused, naming it.
        p = tool("delete", store(ns), "default", "--recursive", check=1)
        assert re.search(r"volume 'default' is open on client\.\d+ on host "
                         r"\S+ \(pid %d\)" % a.proc.pid, p.stderr), p.stderr
        p = tool("rename", store(ns), "default", "other", check=1)
        assert "is open on" in p.stderr, p.stderr
    finally:
        close(ha)
        stop(a)
    tool("rename", store(ns), "default", "other", check=0)
    tool("delete", store(ns), "other@s1", check=0)
    out = tool("list", store(ns), check=0).stdout
    assert re.search(r"(?m)^c1\t", out) and re.search(r"(?m)^other\t", out), \
        out
    assert "default" not in out and "@" not in out, out
    tool("fsck", store(ns), check=0)


def case_tool(d):
    """nbdcas on a RADOS store: every command, and the options."""
    ns = "tool"
    s = store(ns)
    # --ceph-conf after the command works as well as before it.
    castest.tool("create", s, "--ceph-conf", cluster.conf, check=0)
    p = tool("create", s, check=1)
    assert "already holds a cas store" in p.stderr, p.stderr
    img = castest.image(d, "img", 8 * MiB, 16)
    tool("import", s, "vm", img, "--create", check=0)
    tool("import", s, "copy", img, "--create", check=0)   # all duplicates
    out = os.path.join(d, "out")
    tool("export", s, "vm", out, check=0)
    with open(img, "rb") as f, open(out, "rb") as g:
        assert f.read() == g.read()
    p = tool("list", s, check=0)
    assert p.stdout.splitlines()[0].startswith("copy\t"), p.stdout
    p = tool("stat", s, "--json", check=0)
    assert '"volumes": 2' in p.stdout.replace(" ", " "), p.stdout
    # 128 data chunks for both volumes.
    assert 128 <= chunks(ns) <= 128 + 4, chunks(ns)
    tool("snapshot", s, "vm", "s", check=0)
    tool("rename", s, "vm@s", "vm@t", check=0)
    p = tool("rename", s, "vm@t", "vm@t", check=1)
    tool("delete", s, "vm", check=1)                      # has snapshots
    tool("delete", s, "vm", "--recursive", check=0)
    p = tool("list", s, check=0)
    assert p.stdout.startswith("copy\t") and "vm" not in p.stdout, p.stdout
    p = tool("fsck", s, "--full", check=0)
    assert "clean" in p.stdout, p.stdout
    # No orphan volume objects were left by any of it.
    vols = [n for n in objects(ns) if n.startswith("vol.")]
    assert len(vols) == 1, vols
    # nbdcas upgrade: a store of format version 1 (its superblock forged
    # here) becomes version 2; then there is nothing to do.
    p = tool("upgrade", s, check=0)
    assert "already format version 2" in p.stdout, p.stdout
    set_super_version(ns, 1)
    p = tool("stat", s, "--json", check=0)
    assert '"format_version": 1' in p.stdout, p.stdout
    p = tool("upgrade", s, check=0)
    assert "upgraded from format version 1 to 2" in p.stdout, p.stdout
    p = tool("stat", s, "--json", check=0)
    assert '"format_version": 2' in p.stdout, p.stdout
    tool("export", s, "copy", out, "--force", check=0)


def case_errors(d):
    """Missing pool, refused key, unreachable cluster, bad parameters."""
    ns = "errors"
    s = store(ns)
    tool("create", s, "--size", "1M", check=0)

    def refused(prm, pattern, kind="minnbd", waits=False):
        kind = pick(kind)
        srv = serve(kind, d, "e%d" % time.monotonic_ns(), prm, ready=False)
        t = time.monotonic()
        rc = srv.proc.wait(timeout=TIMEOUT + SLACK)
        secs = time.monotonic() - t
        log = srv.log()
        srv.stop()
        assert rc != 0 and re.search(pattern, log), (rc, log)
        assert secs < TIMEOUT + SLACK, secs
        if waits:
            assert secs >= TIMEOUT - 1, secs

    base = ["ceph-conf=" + cluster.conf, "ceph-timeout=%d" % TIMEOUT]
    refused(["store=rados:nosuchpool/x"] + base,
            r"pool 'nosuchpool' does not exist")
    refused(["store=" + s, "ceph-user=nobody"] + base,
            r"monitors refused the key of client\.nobody", kind="nbdkit")
    with open(cluster.conf) as f:
        text = f.read()
    bad = os.path.join(d, "unreachable.conf")
    with open(bad, "w") as f:
        f.write(re.sub(r"(?m)^mon_host = .*$", "mon_host = v2:127.0.0.1:%d"
                       % cephcluster.free_port(), text))
    refused(["store=" + s, "ceph-conf=" + bad,
             "ceph-timeout=%d" % TIMEOUT], r"cannot reach the Ceph monitors",
            waits=True)
    refused(["store=" + s, "lease=1"] + base,
            r"lease=1: a lease is at least 3 seconds")
    refused(["store=" + s, "takeover=maybe"] + base,
            r"takeover=maybe: must be no, wait or force")
    refused(["store=" + os.path.join(d, "local"), "size=1M", "lease=10"],
            r"are for a RADOS store")
    refused(["store=rados:%s/empty" % POOL] + base,
            r"is not a cas store; add size=SIZE")
    p = castest.tool("list", "rados:nosuchpool", "--ceph-conf", cluster.conf,
                     "--ceph-timeout", str(TIMEOUT), check=1)
    assert "pool 'nosuchpool' does not exist" in p.stderr, p.stderr
    p = castest.tool("list", s, "--ceph-conf", bad, "--ceph-timeout",
                     str(TIMEOUT), check=1)
    assert "cannot reach the Ceph monitors" in p.stderr, p.stderr
    p = castest.tool("list", s, "--ceph-conf", cluster.conf, "--ceph-user",
                     "nobody", check=1)
    assert "refused the key of client.nobody" in p.stderr, p.stderr
    p = castest.tool("list", "rados:%s/empty" % POOL, "--ceph-conf",
                     cluster.conf, check=1)
    assert "no cas store here" in p.stderr, p.stderr


def case_gc(d):
    """nbdcas gc: garbage past the grace period removed, younger kept; a
    read-only server's older root kept while it serves it; an orphaned
    volume object removed; a server that knew a removed chunk stores it
    again."""
    ns = "gc"
    tool("create", store(ns), "--size", "32M", check=0)
    old = nbdtest.random_bytes(MiB, 20)
    new = nbdtest.random_bytes(MiB, 21)
    a = serve("minnbd", d, "a", params(ns))
    ro = serve("nbdkit", d, "ro", params(ns), readonly=True)
    ha = a.connect()
    hr = None
    try:
        ha.pwrite(old, 0)
        ha.flush()
        hr = ro.connect()               # serves the root with `old`
        ha.pwrite(new, 0)
        ha.flush()
        before = chunk_names(ns)
        g = gc(ns)                      # the default grace: an hour
        assert g["dead_chunks"] == 0 and g["young_chunks"] == 0 and \
            g["roots"] == 2 and g["chunks_listed"] == len(before), g
        # A create killed between its object and its name: an orphan.
        Paused(d, "rados-create-object", "create", store(ns), "--volume",
               "orphan", "--size", "1M").kill()
        assert len(volume_objects(ns)) == 2, volume_objects(ns)
        g = gc(ns, "--grace", "0")
        assert g["dead_chunks"] == 0 and g["orphans_removed"] == 1, g
        assert len(volume_objects(ns)) == 1, volume_objects(ns)
        assert hr.pread(MiB, 0) == old
        close(hr)
        hr = None
        stop(ro)
        g = gc(ns)
        assert g["dead_chunks"] == 0 and g["young_chunks"] == 17, g
        g = gc(ns, "--grace", "0")
        # The 16 blocks of `old` and the map leaf that held them.
        assert g["dead_chunks"] == 17 and g["young_chunks"] == 0 and \
            g["touched_chunks"] == 0, g
        assert len(chunk_names(ns)) == len(before) - 17
        # The server wrote `old` itself: had it not forgotten that, it
        # would reference removed chunks now.
        ha.pwrite(old, 4 * MiB)
        ha.flush()
        assert ha.pread(MiB, 4 * MiB) == old and ha.pread(MiB, 0) == new
        close(ha)
        ha = None
    finally:
        for h in (ha, hr):
            if h:
                close(h)
        stop(a)
        stop(ro)
    p = tool("fsck", store(ns), "--full", check=0)
    assert "clean" in p.stdout, p.stdout
    g = gc(ns, "--grace", "0", "--dry-run")
    assert g["orphans_removed"] == 0 and g["roots"] == 1, g
    p = tool("gc", store(ns), "--max-unused", "3", check=1)
    assert "--max-unused is for a store in a directory" in p.stderr, p.stderr
    local = os.path.join(d, "local")
    castest.tool("create", local, "--size", "1M", check=0)
    p = castest.tool("gc", local, "--grace", "5", check=1)
    assert "--grace is for a store in a RADOS pool" in p.stderr, p.stderr


def case_gc_writers(d):
    """nbdcas gc beside two servers: what one acknowledged and did not
    flush survives; a garbage chunk written again while the collector
    sweeps is kept; a writer that does not answer stops it."""
    ns = "gcwriters"
    tool("create", store(ns), "--size", "32M", "--volume", "a", check=0)
    tool("create", store(ns), "--size", "32M", "--volume", "b", check=0)
    a = serve("minnbd", d, "a", params(ns, "volume=a"))
    # A lease longer than the stop below: B stays the holder.
    b = serve("nbdkit", d, "b", params(ns, "volume=b", lease=60))
    ha = a.connect("a")
    hb = b.connect("b")
    try:
        garbage = nbdtest.random_bytes(MiB, 22)
        ha.pwrite(garbage, 0)
        ha.flush()
        ha.pwrite(nbdtest.random_bytes(MiB, 23), 0)
        ha.flush()
        unflushed = nbdtest.random_bytes(MiB, 24)
        hb.pwrite(unflushed, 0)         # acknowledged, never flushed
        gen_b = volume_generation(ns, "b")
        p = Paused(d, "gc-marked", "gc", store(ns), "--grace", "0",
                   "--json")
        # The collector made B publish what it acknowledged, and marked.
        assert volume_generation(ns, "b") > gen_b
        # B writes A's garbage (B never saw it: found by EEXIST) after
        # the marking: the touch keeps the sweep from removing it.
        hb.pwrite(garbage, 8 * MiB)
        hb.flush()
        rc, out, err = p.resume()
        assert rc == 0, err
        g = json.loads(out)
        assert g["touched_chunks"] == 16 and g["dead_chunks"] >= 1 and \
            g["roots"] == 2, g
        assert hb.pread(MiB, 0) == unflushed
        assert hb.pread(MiB, 8 * MiB) == garbage
        # B stopped: it cannot answer, so nothing is removed.
        ha.pwrite(nbdtest.random_bytes(MiB, 25), 0)
        ha.flush()
        before = chunk_names(ns)
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            t = time.monotonic()
            p = tool("gc", store(ns), "--grace", "0", "--ceph-timeout",
                     str(TIMEOUT), check=1)
            secs = time.monotonic() - t
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        assert re.search(r"volume 'b' is held by client\.\d+ on host \S+ "
                         r"\(pid %d.*did not answer the request to flush it "
                         r"within %d s" % (b.proc.pid, TIMEOUT), p.stderr), \
            p.stderr
        assert secs < 2 * TIMEOUT + SLACK, secs
        assert chunk_names(ns) == before
        close(ha)
        close(hb)
        ha = hb = None
    finally:
        for h in (ha, hb):
            if h:
                close(h)
        stop(a)
        stop(b)
    p = tool("fsck", store(ns), "--full", check=0)
    assert "clean" in p.stdout, p.stdout


def case_gc_copies(d):
    """A snapshot and a clone taken while a collection marks: made from a
    root the collection marked, never from one it did not."""
    ns = "gccopies"
    tool("create", store(ns), "--size", "16M", check=0)
    one, two, three, four = (nbdtest.random_bytes(MiB, s)
                             for s in (26, 27, 28, 29))
    a = serve("minnbd", d, "a", params(ns))
    ha = a.connect()
    try:
        ha.pwrite(one, 0)
        ha.flush()
        # The snapshot has read the root (`one` at 0); the volume moves
        # on and `one` becomes garbage, which the collection removes.
        p = Paused(d, "rados-snapshot", "snapshot", store(ns), "default",
                   "s")
        ha.pwrite(two, 0)
        ha.flush()
        g = gc(ns, "--grace", "0")
        assert g["dead_chunks"] >= 16, g
        rc, out, err = p.resume()
        assert rc == 0, err
        # The clone has read the root (`three` at 4M) and made its object,
        # not its name; likewise.
        ha.pwrite(three, 4 * MiB)
        ha.flush()
        p = Paused(d, "rados-create-object", "clone", store(ns), "default",
                   "c")
        ha.pwrite(four, 4 * MiB)
        ha.flush()
        g = gc(ns, "--grace", "0")
        assert g["dead_chunks"] >= 16 and g["orphans_removed"] == 1, g
        rc, out, err = p.resume()
        assert rc == 0, err
        close(ha)
        ha = None
    finally:
        if ha:
            close(ha)
        stop(a)
    for name, off, want in (("default@s", 0, two), ("c", 0, two),
                            ("c", 4 * MiB, four)):
        exp = os.path.join(d, "exp.img")
        tool("export", store(ns), name, exp, "--force", check=0)
        with open(exp, "rb") as f:
            f.seek(off)
            assert f.read(MiB) == want, "%s at %d" % (name, off)
    p = tool("fsck", store(ns), "--full", check=0)
    assert "clean" in p.stdout, p.stdout


# What `make check` runs: dedup across hosts, the refused second writer,
# failover with every flushed byte, fencing, garbage collection.  The
# others wait out leases and timeouts (stall, errors, snapshot_remote) or
# restart the OSD (osd_restart): make check-rados.
QUICK = ("two_hosts", "second_writer", "kill9_takeover", "force", "gc",
         "gc_writers", "gc_copies")

CASES = [
    ("two servers, two volumes, shared data stored once", case_two_hosts),
    ("second writer refused naming the holder; readers beside it",
     case_second_writer),
    ("kill -9 of the holder, takeover after the lease, flushed data intact",
     case_kill9_takeover),
    ("a holder stalled past its lease cannot publish", case_stall),
    ("takeover=force fences the old holder", case_force),
    ("OSD stopped and restarted under a running server", case_osd_restart),
    ("nbdcas snapshot of a volume served elsewhere; delete/rename refused",
     case_snapshot_remote),
    ("nbdcas commands on a RADOS store", case_tool),
    ("errors: pool, key, monitors, parameters", case_errors),
    ("nbdcas gc: grace, a reader's root, orphans, a server's known chunks "
     "forgotten", case_gc),
    ("nbdcas gc beside servers: unflushed data kept, touched chunks kept, "
     "a silent writer stops it", case_gc_writers),
    ("a snapshot and a clone made while gc marks", case_gc_copies),
]


def main():
    global cluster
    KINDS.extend(s for s, _ in nbdtest.pairs(backends=["casrados"]))
    if not KINDS:
        nbdtest.skip_all("no casrados pair selected (NBDCAS_PAIRS)")
    if not os.environ.get("NBDCAS_HAVE_RADOS"):
        nbdtest.skip_all("built without librados (configure --with-rados)")
    try:
        cephcluster.require()
        import rados  # noqa: F401
    except (cephcluster.Unavailable, ImportError) as e:
        nbdtest.skip_all(str(e))
    nbdtest._watchdog(int(os.environ.get("NBDCAS_TEST_TIMEOUT", "900")))
    want = os.environ.get("RADOS_CASES")
    if not want and os.environ.get("NBDCAS_RADOS") != "all":
        want = " ".join(QUICK)
    cases = [(dsc, f) for dsc, f in CASES
             if not want or f.__name__[5:] in want.split()]
    later = [dsc for dsc, f in CASES if (dsc, f) not in cases and
             not os.environ.get("RADOS_CASES")]
    tap = nbdtest.TAP(len(cases) + len(later))
    for dsc in later:
        tap.skip(dsc, "not a quick case: make check-rados runs it")
    cluster = cephcluster.Cluster(memstore_bytes=768 << 20)
    try:
        cluster.start(pool=POOL)
    except cephcluster.ClusterError as e:
        for dsc, _ in cases:
            tap.ok(False, dsc, "cluster did not start: %s" % e)
        sys.exit(1)
    print("# cluster up in %.1f s (%s)" % (cluster.startup_seconds,
                                          cluster.dir), flush=True)
    try:
        for dsc, fn in cases:
            t = time.monotonic()
            d = nbdtest.tmpdir()
            try:
                if not cluster.osd.running():
                    cluster.start_osd()
                    cluster.wait_writable(POOL)
                fn(d)
                tap.ok(True, dsc)
            except Exception:
                tap.ok(False, dsc, traceback.format_exc() + cluster.logs(10))
            finally:
                import shutil
                shutil.rmtree(d, ignore_errors=True)
            print("# %.1f s" % (time.monotonic() - t), flush=True)
    finally:
        cluster.stop()
    sys.exit(1 if tap.failed else 0)


main()
