#!/usr/bin/python3
# cas: zero blocks are never stored; trim and write-zeroes unmap blocks
# (reported as hole+zero), partial blocks are zeroed by read-modify-write.

import glob
import os

import nbd
import nbdtest

MiB = 1024 * 1024
BS = 64 * 1024


def pack_bytes(store):
    return sum(os.path.getsize(p)
               for p in glob.glob(os.path.join(store, "packs", "*")))


def extents(h, off, n):
    out = []

    def cb(meta, offset, ents, err):
        if meta == nbd.CONTEXT_BASE_ALLOCATION:
            pos = offset
            for i in range(0, len(ents), 2):
                out.append((pos, ents[i], ents[i + 1]))
                pos += ents[i]
        return 0
    h.block_status(n, off, cb)
    return out


def flags_at(h, off):
    for start, length, fl in extents(h, off, BS):
        if start <= off < start + length:
            return fl
    raise AssertionError("no extent at %d" % off)


HZ = nbd.STATE_HOLE | nbd.STATE_ZERO


def body(srv):
    store = os.path.join(srv.workdir, "store")
    h = srv.connect()
    h.flush()
    base = pack_bytes(store)

    # 16 MiB of zeros: nothing stored but map nodes (none: all zero).
    h.pwrite(bytes(16 * MiB), 0)
    h.flush()
    assert pack_bytes(store) - base < 64 * 1024, "zeros were stored"
    assert flags_at(h, 0) == HZ

    data = os.urandom(4 * MiB)
    h.pwrite(data, 8 * MiB)
    assert flags_at(h, 8 * MiB) == 0
    h.flush()
    after_data = pack_bytes(store)

    # write-zeroes over whole blocks: unmapped, hole+zero, nothing stored.
    h.zero(MiB, 8 * MiB)
    assert h.pread(MiB, 8 * MiB) == bytes(MiB)
    assert flags_at(h, 8 * MiB) == HZ
    assert flags_at(h, 9 * MiB) == 0
    # trim likewise.
    h.trim(MiB, 9 * MiB)
    assert h.pread(MiB, 9 * MiB) == bytes(MiB)
    assert flags_at(h, 9 * MiB) == HZ
    # FAST_ZERO is honoured (zeroing is always cheap here).
    if h.can_fast_zero():
        h.zero(MiB, 10 * MiB, nbd.CMD_FLAG_FAST_ZERO)
        assert flags_at(h, 10 * MiB) == HZ
    h.flush()
    assert pack_bytes(store) - after_data < 64 * 1024, \
        "zeroing stored data"

    # Partial-block zero: the edges keep their data.
    off = 11 * MiB + 100
    h.zero(2 * BS, off)
    want = bytearray(data[3 * MiB:4 * MiB])
    want[100:100 + 2 * BS] = bytes(2 * BS)
    assert h.pread(MiB, 11 * MiB) == bytes(want)
    # The block fully inside the zeroed range is a hole now.
    assert flags_at(h, 11 * MiB + BS) == HZ
    assert flags_at(h, 11 * MiB) == 0

    # A block written with data and then zeros by a plain write becomes
    # a hole again.
    h.pwrite(os.urandom(BS), 20 * MiB)
    assert flags_at(h, 20 * MiB) == 0
    h.pwrite(bytes(BS), 20 * MiB)
    assert flags_at(h, 20 * MiB) == HZ

    # Survives a restart.
    h.flush()
    h.shutdown()
    srv.restart()
    h = srv.connect()
    assert h.pread(MiB, 11 * MiB) == bytes(want)
    assert flags_at(h, 8 * MiB) == HZ
    h.shutdown()


nbdtest.run("cas zero elision, trim, write-zeroes", body, backends=["cas"])
