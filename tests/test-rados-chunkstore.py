#!/usr/bin/python3
# The RADOS chunk store (plugins/cas/chunkstore-rados.c) against a real
# Ceph cluster that this script starts (cephcluster.py: one mon, one
# memstore OSD, 127.0.0.1 only) and stops.  One cluster for every case;
# each case works in its own namespace of one pool.  The store is driven
# by chunkstore-driver (commands on stdin), one process per librados
# client.
#
# Skipped when the ceph packages are not installed or the tree was
# configured without librados (--with-rados=no).

import itertools
import os
import re
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdtest  # noqa: E402
import cephcluster  # noqa: E402

POOL = "nbdcas"
# Client timeout of the store under test (seconds): every operation
# against a dead daemon must give up after it.
TIMEOUT = 3
# What a loaded 2-core machine may add to a timeout before we call it a
# hang.
SLACK = 15


_driver_numbers = itertools.count()


class Driver:
    """One chunkstore-driver process: one librados client on one store."""

    def __init__(self, cluster, store, *opts, timeout=TIMEOUT, check=True):
        self.errpath = os.path.join(cluster.dir, "driver.%d.err" %
                                    next(_driver_numbers))
        self.err = open(self.errpath, "w+")
        argv = [os.environ["CHUNKSTORE_DRIVER"], "-t", str(timeout)] + \
            list(opts) + [store]
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.err,
                                  text=True, bufsize=1, env=cluster.env())
        nbdtest._live_servers.add(self.p)
        first = self.p.stdout.readline().strip()
        self.open_seconds = time.monotonic() - self.t0
        self.opened = first == "ok open"
        if check and not self.opened:
            raise AssertionError("driver did not open %s: %r\n%s" % (
                store, first, self.stderr()))

    def stderr(self):
        self.err.flush()
        with open(self.errpath) as f:
            return f.read()

    def cmd(self, line):
        """Send one command; returns (answer, seconds)."""
        t = time.monotonic()
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        ans = self.p.stdout.readline().strip()
        return ans, time.monotonic() - t

    def ok(self, line):
        ans, _ = self.cmd(line)
        assert ans.startswith("ok"), "%s -> %r\n%s" % (line, ans,
                                                      self.stderr())
        return dict(kv.split("=", 1) for kv in ans.split()[1:] if "=" in kv)

    def error(self, line, name):
        """The command must fail with errno `name`; returns seconds."""
        ans, secs = self.cmd(line)
        assert ans.startswith("error %s " % name), \
            "%s: expected error %s, got %r\n%s" % (line, name, ans,
                                                    self.stderr())
        return secs

    def lines(self, line):
        """A command answering several lines, the last "ok ..."."""
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out = []
        while True:
            ln = self.p.stdout.readline()
            assert ln, "driver died during %s\n%s" % (line, self.stderr())
            ln = ln.strip()
            if ln.startswith("ok") or ln.startswith("error"):
                return out, ln
            out.append(ln)

    def counters(self):
        return {k: int(v) for k, v in self.ok("counters").items()}

    def hash(self, seed, i, length=65536):
        ans, _ = self.cmd("hash seed=%d i=%d len=%d" % (seed, i, length))
        return ans.split()[1]

    def close(self):
        self.p.stdin.close()
        rc = self.p.wait(timeout=3 * TIMEOUT + SLACK)
        nbdtest._live_servers.discard(self.p)
        self.err.close()
        return rc


def wait_exit(d):
    """A driver that must fail to open: its exit status, seconds, stderr."""
    rc = d.p.wait(timeout=TIMEOUT + SLACK)
    secs = time.monotonic() - d.t0
    nbdtest._live_servers.discard(d.p)
    return rc, secs, d.stderr()


def case_roundtrip(c):
    d = Driver(c, POOL + "/roundtrip")
    # Read back before any sync: from the store's own copy or the
    # object, never an error.
    d.ok("put seed=1 n=40 len=65536")
    d.ok("get seed=1 n=40 len=65536")
    d.ok("sync")
    d.ok("put seed=2 n=40 len=4096 type=map threads=4")
    d.ok("sync")
    for v in ("off", "checksum", "full"):
        d.ok("get seed=1 n=40 len=65536 verify=%s threads=4" % v)
    d.ok("get seed=2 n=40 len=4096")
    assert d.ok("has seed=1 n=40 len=65536")["has"] == "40"
    assert d.ok("has seed=3 n=5 len=65536")["has"] == "0"
    d.error("get seed=3 n=1 len=65536", "ENOENT")
    d.ok("put seed=1 n=40 len=65536")   # known: no write at all
    cn = d.counters()
    assert cn["written"] == 80 and cn["cache_hits"] == 40 and \
        cn["failed"] == 0, cn
    assert d.close() == 0, d.stderr()
    # Another client, nothing cached: everything from the objects.
    d = Driver(c, POOL + "/roundtrip")
    assert d.ok("has seed=1 n=40 len=65536")["has"] == "40"
    d.ok("get seed=1 n=40 len=65536 verify=full")
    d.ok("get seed=2 n=40 len=4096 verify=full")
    assert d.close() == 0, d.stderr()


def case_dedup_two_clients(c):
    store = POOL + "/dedup"
    a = Driver(c, store)
    b = Driver(c, store)
    a.ok("put seed=5 n=50 len=65536")
    a.ok("sync")
    b.ok("put seed=5 n=50 len=65536")
    b.ok("sync")
    ca, cb = a.counters(), b.counters()
    assert ca["written"] == 50, ca
    assert cb["written"] == 0 and cb["duplicates"] == 50, cb
    # Both at once, the same chunks: each is stored exactly once.
    for d in (a, b):
        d.p.stdin.write("put seed=6 n=200 len=65536 threads=4\n")
        d.p.stdin.flush()
    for d in (a, b):
        ans = d.p.stdout.readline()
        assert ans.startswith("ok"), (ans, d.stderr())
    a.ok("sync")
    b.ok("sync")
    ca2, cb2 = a.counters(), b.counters()
    written = ca2["written"] - ca["written"] + cb2["written"] - cb["written"]
    dups = ca2["duplicates"] - ca["duplicates"] + \
        cb2["duplicates"] - cb["duplicates"]
    assert written == 200 and dups == 200, (ca2, cb2)
    a.ok("get seed=6 n=200 len=65536 verify=full")
    b.ok("get seed=5 n=50 len=65536 verify=full")
    names = c.rados("-p", POOL, "-N", "dedup", "ls").stdout.split()
    assert len(names) == 250, len(names)
    assert a.close() == 0 and b.close() == 0


def flip(data, off):
    b = bytearray(data)
    b[off] ^= 0x01
    return bytes(b)


def case_damage(c):
    ns = "damage"
    d = Driver(c, POOL + "/" + ns)
    d.ok("put seed=7 n=10 len=65536")
    d.ok("sync")
    h = [d.hash(7, i) for i in range(10)]
    assert d.close() == 0
    obj = {i: "chunk." + h[i] for i in range(10)}

    def get(i):
        return c.rados("-p", POOL, "-N", ns, "get", obj[i], "-").stdout

    def put(i, data):
        c.rados("-p", POOL, "-N", ns, "put", obj[i], "-", input=data)

    put(3, flip(get(3), 64 + 1000))     # a payload bit
    put(4, get(4)[:64 + 30000])         # truncated
    put(5, get(6))                      # another chunk's record
    put(7, flip(get(7), 20))            # a header bit (in the hash)

    d = Driver(c, POOL + "/" + ns)
    for i in (3, 4, 5, 7):
        d.error("get seed=7 first=%d n=1 len=65536" % i, "EIO")
        assert obj[i] in d.stderr(), d.stderr()
    for i in (0, 1, 2, 6, 8, 9):
        d.ok("get seed=7 first=%d n=1 len=65536" % i)
    recs, last = d.lines("enumerate check=crc")
    assert last == "ok records=10 bad=4", (last, recs)
    bad = sorted(r.split()[1] for r in recs if r.split()[4] != "0")
    assert bad == sorted(h[i] for i in (3, 4, 5, 7)), recs
    assert all(obj[i] in "\n".join(recs) for i in (3, 4, 5, 7)), recs
    # Writing the same data again heals what this client found damaged.
    before = d.counters()
    d.ok("put seed=7 n=10 len=65536")
    d.ok("sync")
    after = d.counters()
    assert after["written"] - before["written"] == 4, (before, after)
    d.ok("get seed=7 n=10 len=65536 verify=full")
    recs, last = d.lines("enumerate check=rehash")
    assert last == "ok records=10 bad=0", (last, recs)
    assert d.close() == 0
    # A client that never read them: an EEXIST is checked before it is
    # trusted (header and the OSD's CRC of the payload), so damaged
    # objects are overwritten, good ones left alone.
    put(2, flip(get(2), 64 + 5))
    put(8, get(8)[:64])
    put(9, get(9) + b"trailing")
    d = Driver(c, POOL + "/" + ns)
    d.ok("put seed=7 n=10 len=65536")
    d.ok("sync")
    cn = d.counters()
    assert cn["healed"] == 3 and cn["written"] == 3 and \
        cn["duplicates"] == 7, cn
    recs, last = d.lines("enumerate check=rehash")
    assert last == "ok records=10 bad=0", (last, recs)
    assert d.close() == 0


def case_enumerate(c):
    ns = "enum"
    d = Driver(c, POOL + "/" + ns)
    d.ok("put seed=8 n=15 len=65536")
    d.ok("put seed=9 n=5 len=4096 type=map")
    d.ok("sync")
    want = {d.hash(8, i): ("data", "65536") for i in range(15)}
    want.update({d.hash(9, i, 4096): ("map", "4096") for i in range(5)})
    # Objects that are not chunks share the namespace: not reported.
    for name in ("volume.x", "chunk.nothex", "chunk." + "0" * 63):
        c.rados("-p", POOL, "-N", ns, "put", name, "-", input=b"x" * 100)
    for check in ("none", "crc", "rehash"):
        recs, last = d.lines("enumerate check=" + check)
        assert last == "ok records=20 bad=0", (check, last, recs)
        got = {r.split()[1]: (r.split()[2], r.split()[3]) for r in recs}
        assert got == want, (check, got, want)
    assert d.close() == 0


def expect_open_error(c, store, opts, pattern, waits=False):
    d = Driver(c, store, *opts, check=False)
    assert not d.opened, "opened %s with %s" % (store, opts)
    rc, secs, err = wait_exit(d)
    assert rc == 1, (rc, err)
    assert re.search(pattern, err), "%r not in:\n%s" % (pattern, err)
    assert secs < TIMEOUT + SLACK, "gave up after %.1f s" % secs
    if waits:
        assert secs >= TIMEOUT - 0.5, "gave up after %.1f s" % secs
    return err


def case_errors(c):
    store = POOL + "/errors"
    expect_open_error(c, "nosuchpool", [], r"pool 'nosuchpool' does not exist")
    expect_open_error(c, store, ["-u", "nobody"],
                      r"monitors refused the key of client\.nobody")
    # A user that exists, with a wrong key in the keyring.
    c.add_user("tester")
    badkey = subprocess.run(["ceph-authtool", "--gen-print-key"],
                            capture_output=True, text=True,
                            check=True).stdout.strip()
    kr = c.path("tester.keyring")
    with open(kr, "w") as f:
        f.write("[client.tester]\n\tkey = %s\n" % badkey)
    conf = c.path("tester.conf")
    with open(c.conf) as f:
        text = f.read()
    with open(conf, "w") as f:
        f.write(re.sub(r"(?m)^keyring = .*$", "keyring = " + kr, text))
    expect_open_error(c, store, ["-c", conf, "-u", "tester"],
                      r"monitors refused the key of client\.tester")
    # A user without OSD capabilities: refused at open, not at a write.
    c.add_user("nocaps", caps=("mon", "allow r"))
    expect_open_error(c, store, ["-u", "nocaps"],
                      r"client\.nocaps may not read pool 'nbdcas'")
    # The monitors' port closed (nothing listens on 127.0.0.1:PORT).
    port = cephcluster.free_port()
    conf = c.path("unreachable.conf")
    with open(conf, "w") as f:
        f.write(re.sub(r"(?m)^mon_host = .*$",
                       "mon_host = v2:127.0.0.1:%d" % port, text))
    expect_open_error(c, store, ["-c", conf],
                      r"cannot reach the Ceph monitors \(mon_host = "
                      r"v2:127\.0\.0\.1:%d\) within %d s" % (port, TIMEOUT),
                      waits=True)
    expect_open_error(c, store, ["-c", c.path("no-such.conf")],
                      r"cannot read the Ceph configuration")
    expect_open_error(c, POOL + "/", [], r"namespace after '/' is empty")
    # Read-only: reads work, writes are refused.
    d = Driver(c, store, "-r")
    d.error("put seed=1 n=1 len=4096", "EROFS")
    d.ok("sync")
    assert d.close() == 0


def case_osd_restart(c):
    store = POOL + "/restart"
    d = Driver(c, store)
    d.ok("put seed=20 n=20 len=65536")
    d.ok("sync")
    c.osd.stop()                        # SIGTERM, by pid; see below
    # Reads fail within the timeout.
    secs = d.error("get seed=20 n=1 len=65536", "ETIMEDOUT")
    assert secs < TIMEOUT + SLACK, secs
    # Writes go in flight; the flush waits for them, retries once, and
    # reports the failure within two timeouts.
    d.ok("put seed=21 n=20 len=65536")
    secs = d.error("sync", "ETIMEDOUT")
    assert secs < 2 * TIMEOUT + SLACK, secs
    # Failed writes are not dropped: new ones are refused until a flush
    # has stored them.
    secs = d.error("put seed=22 n=1 len=65536", "ETIMEDOUT")
    assert secs < 1, secs
    d.ok("get seed=21 n=20 len=65536")  # still served from memory
    c.start_osd()
    c.wait_writable(POOL)
    d.ok("sync")                        # the retry stores them
    cn = d.counters()
    assert cn["written"] == 40 and cn["retried"] >= 20, cn
    d.ok("get seed=20 n=20 len=65536 verify=full")
    d.ok("put seed=22 n=5 len=65536")
    d.ok("sync")
    assert d.close() == 0, d.stderr()
    d = Driver(c, store)
    d.ok("get seed=21 n=20 len=65536 verify=full")
    d.ok("get seed=22 n=5 len=65536 verify=full")
    assert d.close() == 0, d.stderr()


def case_primitives(c):
    # Facts the multi-host design (volume roots, leases, fencing) rests
    # on, checked on this Ceph version; the program says what it saw.
    p = subprocess.run([os.environ["RADOS_PRIMITIVES"], "-c", c.conf, "-p",
                        POOL, "-l", "1"], capture_output=True, text=True,
                       env=c.env(), timeout=120)
    for line in p.stdout.splitlines():
        print("# " + line, flush=True)
    assert p.returncode == 0, p.stdout + p.stderr


# What `make check` runs; osd_restart (15 s of timeouts and a restart)
# only with make check-rados (NBDCAS_RADOS=all).
QUICK = ("roundtrip", "dedup_two_clients", "damage", "enumerate", "errors",
         "primitives")

CASES = [
    ("put/get/has round trips, two chunk sizes, both record types",
     case_roundtrip),
    ("dedup across two clients (processes), one after the other and at once",
     case_dedup_two_clients),
    ("damaged objects: EIO naming the object, enumerate reports them, "
     "a put heals them (also one that only found them by EEXIST)",
     case_damage),
    ("enumerate: exactly the chunks, other objects ignored",
     case_enumerate),
    ("errors: missing pool, unknown user, wrong key, no OSD caps, "
     "unreachable monitors, bad conf, read-only", case_errors),
    # memstore keeps its objects across a clean stop only (SIGTERM with
    # osd_fast_shutdown off): a SIGKILLed OSD would come back empty.
    ("OSD stopped and restarted under a running client: timeouts, "
     "then the retried writes are stored", case_osd_restart),
    ("RADOS primitives for roots and leases: exclusive create, "
     "cmpxattr+write_full, assert_version, locks, expiry, assert_locked, "
     "blocklist fencing; for gc: versions, touch, removal at a version",
     case_primitives),
]


def main():
    if not os.environ.get("CHUNKSTORE_DRIVER") or \
            not os.path.exists(os.environ["CHUNKSTORE_DRIVER"]):
        nbdtest.skip_all("built without librados (configure --with-rados)")
    try:
        cephcluster.require()
    except cephcluster.Unavailable as e:
        nbdtest.skip_all(str(e))
    nbdtest._watchdog(int(os.environ.get("NBDCAS_TEST_TIMEOUT", "900")))
    want = os.environ.get("RADOS_CASES")   # "damage errors": a subset
    if not want and os.environ.get("NBDCAS_RADOS") != "all":
        want = " ".join(QUICK)
    cases = [(d, f) for d, f in CASES
             if not want or f.__name__[5:] in want.split()]
    later = [d for d, f in CASES if (d, f) not in cases and
             not os.environ.get("RADOS_CASES")]
    tap = nbdtest.TAP(len(cases) + len(later))
    for d in later:
        tap.skip(d, "not a quick case: make check-rados runs it")
    c = cephcluster.Cluster(memstore_bytes=512 << 20)
    try:
        c.start(pool=POOL)
    except cephcluster.ClusterError as e:
        for desc, _ in cases:
            tap.ok(False, desc, "cluster did not start: %s" % e)
        sys.exit(1)
    print("# cluster up in %.1f s (%s)" % (c.startup_seconds, c.dir),
          flush=True)
    try:
        for desc, fn in cases:
            t = time.monotonic()
            try:
                if c.osd is None or not c.osd.running():
                    c.start_osd()
                    c.wait_writable(POOL)
                fn(c)
                tap.ok(True, desc)
            except Exception:
                tap.ok(False, desc, traceback.format_exc() + c.logs(10))
            print("# %.1f s" % (time.monotonic() - t), flush=True)
    finally:
        c.stop()
    sys.exit(1 if tap.failed else 0)


if __name__ == "__main__":
    main()
