#!/usr/bin/python3
# cas crash test: random writes, flush, then kill -9 while more writes
# (some FUA) are in flight; restart and check that every flushed or
# FUA-acknowledged sector reads back (or a later write of it), every other
# sector reads its flushed content or one of the contents written after,
# and the store is consistent (nbdcas fsck when the tool is built).
# Another connection flushes now and then during phase 2: a flush on one
# connection commits the writes completed on the other (multi-conn).
# Then a torn record is appended to the newest pack: it must be cut on
# open.

import glob
import os
import random
import subprocess
import threading
import time

import nbd
import nbdtest

MiB = 1024 * 1024
SIZE = 32 * MiB
SEC = 512
NSEC = SIZE // SEC


def newest_pack(store):
    return sorted(glob.glob(os.path.join(store, "packs", "pack-*")))[-1]


def fsck(store):
    tool = os.environ.get("NBDCAS")
    if not tool or not os.access(tool, os.X_OK):
        return None
    p = subprocess.run([tool, "fsck", store], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, "nbdcas fsck failed (%d):\n%s%s" % (
        p.returncode, p.stdout, p.stderr)
    return p


def body(srv):
    store = os.path.join(srv.workdir, "store")
    rnd = random.Random(7)
    model = bytearray(SIZE)

    for cycle in range(3):
        h = srv.connect()
        # Phase 1: random writes, then flush: all of it must survive.
        for _ in range(60):
            n = rnd.choice([1, 8, 128, 512]) * SEC
            off = rnd.randrange(0, NSEC - n // SEC) * SEC
            d = os.urandom(n)
            h.pwrite(d, off)
            model[off:off + n] = d
        h.flush()

        # Phase 2: writes in another thread until the server dies.
        issued = {}           # sector -> [(seq, data)]
        durable = {}          # sector -> seq of the last acked FUA write
        stop = threading.Event()
        h2 = srv.connect()
        h3 = srv.connect()
        done = [0]            # seq of the last completed write
        flushed = [0]         # writes up to this seq are durable

        def writer():
            seq = 0
            wr = random.Random(cycle)
            while not stop.is_set():
                n = wr.choice([1, 8, 128, 256]) * SEC
                off = wr.randrange(0, NSEC - n // SEC) * SEC
                d = os.urandom(n)
                fua = wr.random() < 0.2
                seq += 1
                for s in range(n // SEC):
                    issued.setdefault(off // SEC + s, []).append(
                        (seq, d[s * SEC:(s + 1) * SEC]))
                try:
                    h2.pwrite(d, off, nbd.CMD_FLAG_FUA if fua else 0)
                except nbd.Error:
                    return
                if fua:
                    for s in range(n // SEC):
                        durable[off // SEC + s] = seq
                done[0] = seq

        def flusher():
            while not stop.is_set():
                upto = done[0]
                try:
                    h3.flush()
                except nbd.Error:
                    return
                flushed[0] = upto
                time.sleep(0.02)
        t = threading.Thread(target=writer)
        t.start()
        tf = threading.Thread(target=flusher)
        tf.start()
        time.sleep(0.3 + rnd.random() * 0.5)
        srv.kill9()
        stop.set()
        t.join()
        tf.join()
        # The last write of each sector covered by a completed flush is
        # durable too.
        for s, lst in issued.items():
            for q, _ in lst:
                if q <= flushed[0] and q > durable.get(s, 0):
                    durable[s] = q

        srv.start()
        h = srv.connect()
        got = h.pread(SIZE, 0)
        bad = []
        for s in range(NSEC):
            g = got[s * SEC:(s + 1) * SEC]
            old = bytes(model[s * SEC:(s + 1) * SEC])
            cands = issued.get(s, [])
            dseq = durable.get(s, 0)
            allowed = [d for q, d in cands if q >= dseq]
            if dseq == 0:
                allowed.append(old)
            if g not in allowed:
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

    # A torn record at the end of the newest pack (a crash in the middle
    # of an append) is cut when the store opens.
    srv.kill9()
    pack = newest_pack(store)
    good = os.path.getsize(pack)
    with open(pack, "ab") as f:
        f.write(b"CREC" + os.urandom(300))
    srv.start()
    h = srv.connect()
    assert h.pread(SIZE, 0) == bytes(model), "after torn tail"
    assert os.path.getsize(pack) == good, \
        "torn tail not cut: %d != %d" % (os.path.getsize(pack), good)
    h.pwrite(os.urandom(MiB), 0)
    h.flush()
    h.shutdown()
    srv.stop()
    fsck(store)


nbdtest.run("cas crash: kill -9 during writes", body, backends=["cas"],
            size=SIZE)
