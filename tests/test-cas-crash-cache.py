#!/usr/bin/python3
# cas crash test with the write-back cache full of dirty blocks: partial
# writes fill the cache (dirtycache=16M: about 250 blocks of 64 KiB) with
# dirty blocks, a flush makes them durable; then more partial writes,
# many more blocks than the cache holds (so eviction writes dirty blocks
# back between flushes), some of them FUA, and kill -9 while they are
# still coming.  After a restart every flushed or FUA-acknowledged sector
# reads back (or a later write of it), every other sector reads its
# flushed content or one written after, and nbdcas fsck is clean.

import os
import random
import subprocess
import threading
import time

import nbd
import nbdtest

MiB = 1024 * 1024
BS = 64 * 1024
SIZE = 48 * MiB                 # 768 blocks, 3x the cache
SEC = 512
NSEC = SIZE // SEC


def fsck(store):
    tool = os.environ.get("NBDCAS")
    if not tool or not os.access(tool, os.X_OK):
        return
    p = subprocess.run([tool, "fsck", store], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, "nbdcas fsck failed (%d):\n%s%s" % (
        p.returncode, p.stdout, p.stderr)


def partial(rnd, first_block, nblocks, step=1):
    """A partial write somewhere in blocks first, first+step, ... (n of
    them): offset and length; sector-aligned mostly, sometimes not."""
    b = first_block + step * rnd.randrange(nblocks)
    if rnd.random() < 0.1:
        o = rnd.randrange(BS - 700)
        return b * BS + o, rnd.randrange(1, 700)
    n = rnd.choice([1, 2, 8, 16]) * SEC
    o = rnd.randrange((BS - n) // SEC + 1) * SEC
    return b * BS + o, n


def body(srv):
    store = os.path.join(srv.workdir, "store")
    rnd = random.Random(11)
    model = bytearray(SIZE)

    for cycle in range(3):
        # Phase 1: dirty partial blocks filling most of the cache, then a
        # flush: all of it is durable.
        h = srv.connect()
        for _ in range(1500):
            off, n = partial(rnd, 0, 240)
            d = os.urandom(n)
            h.pwrite(d, off)
            model[off:off + n] = d
        h.flush()

        # Phase 2: partial writes over 3x the cache (from the second
        # cycle on a tenth of them FUA: the first cycle has nothing but
        # the flush to make phase 1 durable), from two connections (each
        # its own blocks, so that each sector's writes are in order),
        # until the server is killed.
        issued = {}           # sector -> [(seq, bytes)]
        durable = {}          # sector -> seq of its last acked FUA write
        lock = threading.Lock()
        stop = threading.Event()
        seq = [0]

        def writer(k):
            wr = random.Random(cycle * 10 + k)
            hw = srv.connect()
            while not stop.is_set():
                off, n = partial(wr, k, SIZE // BS // 2, 2)
                d = os.urandom(n)
                fua = cycle > 0 and wr.random() < 0.1
                with lock:
                    seq[0] += 1
                    q = seq[0]
                    for s in range(off // SEC, (off + n - 1) // SEC + 1):
                        lo = max(off, s * SEC) - off
                        hi = min(off + n, (s + 1) * SEC) - off
                        issued.setdefault(s, []).append((q, lo + off - s * SEC,
                                                         d[lo:hi]))
                try:
                    hw.pwrite(d, off, nbd.CMD_FLAG_FUA if fua else 0)
                except nbd.Error:
                    return
                if fua:
                    with lock:
                        for s in range(off // SEC, (off + n - 1) // SEC + 1):
                            durable[s] = max(durable.get(s, 0), q)
        ts = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
        for t in ts:
            t.start()
        time.sleep(0.5 + rnd.random())
        srv.kill9()
        stop.set()
        for t in ts:
            t.join()

        srv.start()
        h = srv.connect()
        got = h.pread(SIZE, 0)
        bad = []
        for s in range(NSEC):
            g = got[s * SEC:(s + 1) * SEC]
            old = bytes(model[s * SEC:(s + 1) * SEC])
            writes = sorted(issued.get(s, []))
            dseq = durable.get(s, 0)
            # Each write changes part of the sector: the sector may read
            # as the flushed content with any prefix-in-time of the later
            # writes applied, as long as every FUA-acked one is in it.
            ok = False
            cur = bytearray(old)
            if dseq == 0 and g == old:
                ok = True
            for q, o, piece in writes:
                cur[o:o + len(piece)] = piece
                if q >= dseq and g == bytes(cur):
                    ok = True
                    break
            if not ok:
                bad.append(s)
            else:
                model[s * SEC:(s + 1) * SEC] = g
        assert not bad, "cycle %d: %d sectors lost, first at byte %d" % (
            cycle, len(bad), bad[0] * SEC)
        h.flush()
        h.shutdown()
        srv.stop()
        fsck(store)
        srv.start()


nbdtest.run("cas crash with the write-back cache full of dirty blocks", body,
            backends=["cas"], size=SIZE, params={"dirtycache": "16M"})
