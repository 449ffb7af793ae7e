#!/usr/bin/python3
# cas: partial-block writes are read-modify-write; two clients writing the
# two halves of one block at the same time must both land.  Also many
# connections writing interleaved small pieces of the same blocks.

import os
import threading

import nbdtest

BS = 64 * 1024          # the default block size; halves of other sizes
ROUNDS = 150            # still straddle blocks, which is also a test


def body(srv):
    h1 = srv.connect()
    h2 = srv.connect()
    errors = []

    for r in range(ROUNDS):
        off = (r % 16) * BS
        a = os.urandom(BS // 2)
        b = os.urandom(BS // 2)
        go = threading.Barrier(2)

        def w(h, data, o):
            try:
                go.wait()
                h.pwrite(data, o)
            except Exception as e:
                errors.append(e)
        t1 = threading.Thread(target=w, args=(h1, a, off))
        t2 = threading.Thread(target=w, args=(h2, b, off + BS // 2))
        t1.start()
        t2.start()
        t1.join()
        t2.join()
        assert not errors, errors
        got = h1.pread(BS, off)
        assert got == a + b, "round %d: a half was lost (%s %s)" % (
            r, got[:BS // 2] == a, got[BS // 2:] == b)

    # 8 connections, each owning every 8th 512-byte sector of 4 blocks.
    hs = [srv.connect() for _ in range(8)]
    want = bytearray(4 * BS)
    pieces = {i: [] for i in range(8)}
    for s in range(4 * BS // 512):
        d = os.urandom(512)
        want[s * 512:(s + 1) * 512] = d
        pieces[s % 8].append((s * 512, d))
    base = 64 * BS

    def run(i):
        try:
            for o, d in pieces[i]:
                hs[i].pwrite(d, base + o)
        except Exception as e:
            errors.append(e)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    assert h1.pread(4 * BS, base) == bytes(want), "interleaved sectors lost"
    h1.flush()
    for h in hs + [h1, h2]:
        h.shutdown()


nbdtest.run("cas concurrent partial writes to one block", body,
            backends=["cas"])
