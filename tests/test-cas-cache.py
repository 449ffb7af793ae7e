#!/usr/bin/python3
# cas: the write-back cache of blocks (dirtycache=) under concurrency and
# pressure.  With dirtycache=600K the cache holds 9 blocks of 64 KiB, so
# nearly every partial write below evicts one (writing it back first)
# while other connections write, read, zero and flush the same blocks:
#  1. 8 clients at once, each owning every 8th 512-byte sector of 48
#     blocks (so all of them share every block) and 4 whole blocks of
#     another 32: sector writes, unaligned pieces inside a sector, FUA
#     writes, partial zeroes, whole-block writes, zeroes and trims, reads
#     checked against a model, flushes;
#  2. flush; everything reads back; restart: everything reads back; fsck;
#  3. one 4 KiB write into each of 4096 blocks (256 MiB): the server's
#     peak RSS stays far below what an unbounded cache would hold
#     (judged only without valgrind and sanitizers); all read back.

import os
import random
import threading

import nbd
import nbdtest

BS = 64 * 1024
SEC = 512
CLIENTS = 8
SHARED = 48                     # blocks whose sectors all clients share
OWNED0 = 64                     # then 32 blocks, 4 per client
OPS = 150 if nbdtest.VALGRIND else 600
SIZE = 256 * 1024 * 1024
RSS_LIMIT_KIB = 64 * 1024


class Model:
    """The volume's expected content (a bytearray) under a lock."""

    def __init__(self, size):
        self.data = bytearray(size)
        self.lock = threading.Lock()

    def put(self, off, d):
        with self.lock:
            self.data[off:off + len(d)] = d

    def get(self, off, n):
        with self.lock:
            return bytes(self.data[off:off + n])


def client(srv, t, model, errors):
    rnd = random.Random(t)
    h = srv.connect()
    mine = [b for b in range(OWNED0, OWNED0 + 32) if b % CLIENTS == t]
    try:
        for i in range(OPS):
            op = rnd.randrange(12)
            # A sector of the shared blocks that this client owns.
            sec = rnd.randrange(SHARED * BS // SEC // CLIENTS) * CLIENTS + t
            off = sec * SEC
            if op <= 2:
                d = os.urandom(SEC)
                h.pwrite(d, off)
                model.put(off, d)
            elif op == 3:                       # unaligned, in one sector
                o = rnd.randrange(1, 400)
                d = os.urandom(rnd.randrange(1, SEC - o))
                h.pwrite(d, off + o)
                model.put(off + o, d)
            elif op == 4:
                d = os.urandom(SEC)
                h.pwrite(d, off, nbd.CMD_FLAG_FUA)
                model.put(off, d)
            elif op == 5:
                h.zero(SEC, off)
                model.put(off, bytes(SEC))
            elif op == 6:
                got = h.pread(SEC, off)
                want = model.get(off, SEC)
                assert got == want, "client %d: sector %d reads wrong" % (
                    t, sec)
            elif op == 7:
                h.flush()
            else:                               # its own whole blocks
                b = rnd.choice(mine)
                boff = b * BS
                if op == 8:
                    d = os.urandom(BS)
                    h.pwrite(d, boff)
                    model.put(boff, d)
                elif op == 9:
                    (h.trim if rnd.random() < 0.5 else h.zero)(BS, boff)
                    model.put(boff, bytes(BS))
                elif op == 10:
                    o = rnd.randrange(BS - 5000)
                    d = os.urandom(rnd.randrange(1, 5000))
                    h.pwrite(d, boff + o)
                    model.put(boff + o, d)
                else:
                    assert h.pread(BS, boff) == model.get(boff, BS), \
                        "client %d: block %d reads wrong" % (t, b)
        h.shutdown()
    except Exception as e:
        errors.append("client %d: %r" % (t, e))


def check_all(h, model, n, what):
    for off in range(0, n, 1024 * 1024):
        got = h.pread(1024 * 1024, off)
        if got != model.get(off, 1024 * 1024):
            for s in range(0, 1024 * 1024, SEC):
                if got[s:s + SEC] != model.get(off + s, SEC):
                    raise AssertionError("%s: sector at byte %d differs"
                                         % (what, off + s))


def check_rss(srv, when):
    if not nbdtest.JUDGE_MEMORY:
        return
    kib = nbdtest.proc_status(srv.proc.pid)["VmHWM"]
    assert kib < RSS_LIMIT_KIB, \
        "peak RSS %d KiB %s (limit %d KiB)" % (kib, when, RSS_LIMIT_KIB)


def body(srv):
    store = os.path.join(srv.workdir, "store")
    model = Model(SIZE)
    errors = []

    # 1. Many clients at once.
    ts = [threading.Thread(target=client, args=(srv, t, model, errors))
          for t in range(CLIENTS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors

    # 2. Flushed, restarted: all of it.
    h = srv.connect()
    h.flush()
    span = (OWNED0 + 32) * BS
    check_all(h, model, span, "after the clients")
    h.shutdown()
    srv.stop()
    srv.start()
    h = srv.connect()
    check_all(h, model, span, "after a restart")

    # 3. A partial write into each of 4096 blocks: bounded memory.
    rnd = random.Random(99)
    for b in range(SIZE // BS):
        o = rnd.randrange(BS // SEC) * SEC
        d = os.urandom(4096 if o + 4096 <= BS else BS - o)
        h.pwrite(d, b * BS + o)
        model.put(b * BS + o, d)
    check_rss(srv, "after 4096 partial writes")
    check_all(h, model, SIZE, "after 4096 partial writes")
    h.flush()
    h.shutdown()
    srv.stop()
    tool = os.environ.get("NBDCAS")
    if tool and os.access(tool, os.X_OK):
        nbdtest.cmd([tool, "fsck", store], timeout=600)
    srv.start()


nbdtest.run("cas write-back cache: concurrency, eviction, bounded memory",
            body, backends=["cas"], size=SIZE,
            params={"dirtycache": "600K"})
