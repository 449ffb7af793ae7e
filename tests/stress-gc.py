#!/usr/bin/python3
# Stress of garbage collection against everything that runs beside it
# (branch review; not part of make check: it runs for minutes).
#
#   stress-gc.py [--server minnbd|nbdkit] [--seconds N] [--kill]
#                [--seed S] [--dir DIR] [--format 4]
#
# A store of 4 KiB blocks (--format 4: of format 4, 4 KiB units in
# extents) with small packs (many of them) and the
# smallest map cache (leaf write-backs all the time) is served; then at
# once, until the time is up:
#  - 2 writers per volume on 3 volumes, each owning a range of blocks,
#    writing one block at a time (a third of them from a small pool, so
#    that they deduplicate, also against garbage), flushing now and then;
#  - an admin thread taking snapshots (its volume's writers paused, so the
#    snapshot's content is known exactly), cloning snapshots into new
#    volumes, deleting and renaming clones and deleting snapshots, through
#    the control socket;
#  - a collector running nbdcas gc --max-unused 0 in a loop;
#  - with --kill, a killer that kill -9s the server at random moments
#    (then restarts it; every thread reconnects).
# Afterwards every volume, clone and snapshot is read through NBD and
# checked: a block reads as its last flushed value or one written after
# it (after a kill), exactly the model otherwise; snapshots and clones
# exactly; then the server is stopped and nbdcas fsck --full must pass.
#
# Environment: as tests/Makefile.am sets it (MINNBD, NBDKIT, CAS_PLUGIN,
# NBDCAS, PYTHONPATH=tests).  Exit 0 clean, 1 a check failed.

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbd  # noqa: E402
import nbdtest  # noqa: E402

NBDCAS = os.environ["NBDCAS"]
BS = 4096
NBLK = 40 * 1024            # 160 MiB volumes: 40 map leaves, more than
                            # mapcache=1M keeps (31): write-backs
VOLS = ["v0", "v1", "v2"]
WRITERS = 2


class RWLock:
    """Commands share it, the killer's restart takes it alone."""

    def __init__(self):
        self.c = threading.Condition()
        self.readers = 0
        self.writer = False

    def shared(self):
        lock = self

        class S:
            def __enter__(s):
                with lock.c:
                    while lock.writer:
                        lock.c.wait()
                    lock.readers += 1

            def __exit__(s, *e):
                with lock.c:
                    lock.readers -= 1
                    lock.c.notify_all()
        return S()

    def __enter__(self):
        with self.c:
            while self.writer:
                self.c.wait()
            self.writer = True
            while self.readers:
                self.c.wait()

    def __exit__(self, *e):
        with self.c:
            self.writer = False
            self.c.notify_all()


def digest(b):
    return hashlib.blake2b(b, digest_size=16).digest()


ZERO = digest(bytes(BS))


CMD_LOCK = RWLock()


def tool(*args, timeout=600):
    with CMD_LOCK.shared():
        return subprocess.run([NBDCAS] + [str(a) for a in args],
                              stdin=subprocess.DEVNULL,
                              capture_output=True, text=True,
                              timeout=timeout)


class Block:
    """What a block may read as: its value at the owner's last flush
    that returned, what was written after it, and (after a kill -9) what
    was written before the kill and may or may not have survived it."""
    __slots__ = ("committed", "pending", "uncertain")

    def __init__(self):
        self.committed = ZERO
        self.pending = []
        self.uncertain = set()

    def allowed(self):
        return {self.committed} | set(self.pending) | self.uncertain

    def flushed(self, cnt):
        """A flush returned after the first cnt pending writes."""
        self.committed = self.pending[cnt - 1]
        del self.pending[:cnt]
        self.uncertain = set()

    def crashed(self):
        """The server was killed: a later flush does not commit what
        was written before."""
        self.uncertain |= set(self.pending)
        self.pending = []


class Stress:
    def __init__(self, args):
        self.args = args
        self.rnd = random.Random(args.seed)
        self.dir = args.dir or tempfile.mkdtemp(prefix="stress-gc.")
        os.makedirs(self.dir, exist_ok=True)
        self.store = os.path.join(self.dir, "store")
        self.stop = threading.Event()
        self.failures = []
        self.lock = threading.Lock()
        self.model = {v: [Block() for _ in range(NBLK)] for v in VOLS}
        # One rwlock-ish per volume: writers share, a snapshot excludes.
        self.vol_gate = {v: threading.Condition() for v in VOLS}
        self.vol_busy = {v: 0 for v in VOLS}
        self.vol_paused = {v: False for v in VOLS}
        self.snaps = {}         # "v0@s3" -> [set of digests per block]
        self.clones = {}        # "c5" -> [set of digests per block]
        self.crashes = 0
        self.gcs = 0
        self.generation = 0     # bumped on each restart
        self.srv_lock = threading.Lock()
        self.pool = [random.Random(1000 + i).randbytes(BS) for i in range(16)]
        self.counts = {"writes": 0, "flushes": 0, "snapshots": 0,
                       "clones": 0, "deletes": 0, "renames": 0}

    def fail(self, msg):
        with self.lock:
            self.failures.append(msg)
        self.stop.set()

    # ---- the server ----

    def start(self):
        os.environ["NBDCAS_PACK_SIZE"] = str(512 * 1024)
        fmt = ["--format", self.args.format] if self.args.format else []
        p = tool("create", self.store, *fmt, "--blocksize", "4K", "--size",
                 str(NBLK * BS), "--volume", VOLS[0])
        assert p.returncode == 0, p.stderr
        for v in VOLS[1:]:
            tool("create", self.store, "--size", str(NBLK * BS),
                 "--volume", v)
        self.srv = nbdtest.Server(self.args.server, "cas",
                                  ["store=" + self.store, "volume=v0",
                                   "gc=off", "mapcache=1M"], self.dir)
        self.srv.start().ready()

    def connect(self, export):
        while not self.stop.is_set():
            try:
                return self.srv.connect(export), self.generation
            except nbd.Error:
                time.sleep(0.05)
        return None, self.generation

    # ---- writers ----

    def writer(self, vol, k):
        rnd = random.Random(hash((self.args.seed, vol, k)))
        lo = k * NBLK // WRITERS
        hi = lo + NBLK // WRITERS
        blocks = self.model[vol]
        h, gen = self.connect(vol)
        n = 0
        while not self.stop.is_set() and h is not None:
            b = rnd.randrange(lo, hi)
            r = rnd.random()
            if r < 0.33:
                data = self.pool[rnd.randrange(len(self.pool))]
            elif r < 0.4:
                data = bytes(BS)
            else:
                data = rnd.randbytes(BS)
            gate = self.vol_gate[vol]
            with gate:
                while self.vol_paused[vol]:
                    gate.wait()
                self.vol_busy[vol] += 1
            try:
                blocks[b].pending.append(digest(data))
                if r < 0.4 and data == bytes(BS) and rnd.random() < 0.5:
                    h.zero(BS, b * BS)
                else:
                    h.pwrite(data, b * BS)
                n += 1
                if n % 13 == 0:
                    # What was written before the flush is committed when
                    # it returns (snapshot the pending lists first).
                    mine = [(x, len(blocks[x].pending))
                            for x in range(lo, hi) if blocks[x].pending]
                    h.flush()
                    for x, cnt in mine:
                        blocks[x].flushed(cnt)
                    self.counts["flushes"] += 1
                self.counts["writes"] += 1
            except nbd.Error:
                if self.generation == gen and not self.stop.is_set():
                    self.fail("%s writer %d: %s" % (vol, k,
                                                    traceback.format_exc()))
                    return
                for x in range(lo, hi):
                    blocks[x].crashed()
                h, gen = self.connect(vol)
            finally:
                with gate:
                    self.vol_busy[vol] -= 1
                    gate.notify_all()
        if h is not None:
            try:
                mine = [(x, len(blocks[x].pending))
                        for x in range(lo, hi) if blocks[x].pending]
                h.flush()
                for x, cnt in mine:
                    blocks[x].flushed(cnt)
                h.shutdown()
            except nbd.Error:
                pass

    # ---- admin ----

    def transient(self, p):
        """A command that met a kill -9: its server died under it, or it
        ran while the next one was starting (it holds the store lock a
        moment before its control socket answers: "in use by another
        process", a finding of the review)."""
        return "without an answer" in p.stderr or \
            (self.args.kill and ("in use by another process" in p.stderr or
                                 # killed before the request was sent
                                 "sending the command to the server"
                                 in p.stderr))

    def paused(self, vol):
        gate = self.vol_gate[vol]

        class P:
            def __enter__(s):
                with gate:
                    self.vol_paused[vol] = True
                    while self.vol_busy[vol]:
                        gate.wait()

            def __exit__(s, *e):
                with gate:
                    self.vol_paused[vol] = False
                    gate.notify_all()
        return P()

    def current(self, vol):
        """What each block of the volume may read now (writers paused):
        its last write; after a kill -9, its value at the last flush or
        any written since."""
        if self.args.kill:
            return [frozenset(blk.allowed()) for blk in self.model[vol]]
        return [frozenset([blk.pending[-1] if blk.pending else blk.committed])
                for blk in self.model[vol]]

    def admin(self):
        rnd = random.Random(self.args.seed + 7)
        n = 0
        while not self.stop.is_set():
            n += 1
            op = rnd.random()
            try:
                if op < 0.35 or not self.snaps:
                    vol = rnd.choice(VOLS)
                    name = "%s@s%d" % (vol, n)
                    with self.paused(vol):
                        want = self.current(vol)
                        p = tool("snapshot", self.store, vol, "s%d" % n)
                    if p.returncode == 0:
                        self.snaps[name] = want
                        self.counts["snapshots"] += 1
                    elif not self.transient(p):
                        self.fail("snapshot %s: %s" % (name, p.stderr))
                elif op < 0.55:
                    snap = rnd.choice(sorted(self.snaps))
                    name = "c%d" % n
                    p = tool("clone", self.store, snap, name)
                    if p.returncode == 0:
                        self.clones[name] = self.snaps[snap]
                        self.counts["clones"] += 1
                    elif not self.transient(p):
                        self.fail("clone %s: %s" % (name, p.stderr))
                elif op < 0.75:
                    snap = rnd.choice(sorted(self.snaps))
                    p = tool("delete", self.store, snap)
                    if p.returncode == 0 or "no snapshot" in p.stderr:
                        del self.snaps[snap]
                        self.counts["deletes"] += 1
                    elif not self.transient(p):
                        self.fail("delete %s: %s" % (snap, p.stderr))
                elif self.clones:
                    c = rnd.choice(sorted(self.clones))
                    if op < 0.85:
                        p = tool("delete", self.store, c)
                        if p.returncode == 0 or "no volume" in p.stderr:
                            del self.clones[c]
                            self.counts["deletes"] += 1
                        elif not self.transient(p):
                            self.fail("delete %s: %s" % (c, p.stderr))
                    else:
                        new = "r%d" % n
                        p = tool("rename", self.store, c, new)
                        if p.returncode == 0:
                            self.clones[new] = self.clones.pop(c)
                            self.counts["renames"] += 1
                        elif "no volume" in p.stderr:
                            # Done before a kill -9, its answer lost.
                            if tool("list", self.store).stdout.find(
                                    new + "\t") >= 0:
                                self.clones[new] = self.clones.pop(c)
                        elif not self.transient(p):
                            self.fail("rename %s: %s" % (c, p.stderr))
            except subprocess.TimeoutExpired:
                self.fail("admin: a command hung")

    def collector(self):
        while not self.stop.is_set():
            p = tool("gc", self.store, "--max-unused", "0")
            if p.returncode == 0:
                self.gcs += 1
            elif not self.transient(p) and \
                    "already running" not in p.stderr:
                self.fail("gc: %s" % p.stderr)

    def killer(self):
        rnd = random.Random(self.args.seed + 13)
        while not self.stop.wait(rnd.uniform(2, 6)):
            with self.srv_lock:
                self.generation += 1
                self.srv.kill9()        # commands in flight see it die
                self.crashes += 1
                # Commands that found no server ran on the store
                # themselves: restart once they are done.
                with CMD_LOCK:
                    self.restart()

    def restart(self):
        """Start the server again."""
        self.srv.start().ready()
        if self.srv.proc.poll() is not None:
            self.fail("the server does not start again: " +
                      self.srv.log()[-500:])

    # ---- checks ----

    def read_all(self, export):
        with self.srv_lock:
            h = self.srv.connect(export)
        try:
            out = []
            for off in range(0, NBLK * BS, 1 << 20):
                chunk = h.pread(1 << 20, off)
                out += [digest(chunk[i:i + BS])
                        for i in range(0, len(chunk), BS)]
            return out
        finally:
            h.shutdown()

    def check(self):
        bad = []
        for vol in VOLS:
            got = self.read_all(vol)
            for b, blk in enumerate(self.model[vol]):
                ok = blk.allowed() if self.crashes else \
                    {blk.pending[-1] if blk.pending else blk.committed}
                if got[b] not in ok:
                    bad.append("%s block %d" % (vol, b))
        for name, want in list(self.snaps.items()) + \
                list(self.clones.items()):
            got = self.read_all(name)
            diff = [b for b in range(NBLK) if got[b] not in want[b]]
            if diff:
                bad.append("%s: %d blocks differ (first %d)"
                           % (name, len(diff), diff[0]))
        return bad

    def run(self):
        self.start()
        threads = [threading.Thread(target=self.writer, args=(v, k))
                   for v in VOLS for k in range(WRITERS)]
        threads.append(threading.Thread(target=self.admin))
        threads.append(threading.Thread(target=self.collector))
        if self.args.kill:
            threads.append(threading.Thread(target=self.killer))
        for t in threads:
            t.start()
        self.stop.wait(self.args.seconds)
        self.stop.set()
        for t in threads:
            t.join()
        if self.args.kill:
            # nbdkit --exit-with-parent follows the thread that started it
            # (PR_SET_PDEATHSIG), and the killer's thread has ended: one
            # more kill -9, and a server started by this thread.
            self.srv.kill9()
            self.crashes += 1
            self.restart()
        bad = [] if self.failures else self.check()
        if not self.failures:
            # The same after a kill -9 (everything was flushed).
            self.srv.kill9()
            self.restart()
            self.crashes += 1
            bad += self.check()
        rc = self.srv.stop()
        p = tool("fsck", self.store, "--full")
        if p.returncode != 0:
            bad.append("fsck --full: " + p.stdout[-2000:] + p.stderr[-2000:])
        print("%s: %ds, %d gc runs, %d kills; %s" % (
            self.args.server, self.args.seconds, self.gcs, self.crashes,
            ", ".join("%d %s" % (v, k) for k, v in self.counts.items())))
        problems = self.failures + bad
        if rc not in (0, None) and self.args.server == "minnbd":
            problems.append("server exit status %s" % rc)
        for m in problems:
            print("FAIL: " + m)
        if problems:
            print("store kept in " + self.dir)
            return 1
        shutil.rmtree(self.dir, ignore_errors=True)
        return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="minnbd")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--kill", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir")
    ap.add_argument("--format", choices=["2", "4"])
    sys.exit(Stress(ap.parse_args()).run())


main()
