#!/usr/bin/python3
# cas format version 4 (FORMAT.md "Format version 4"): 4 KiB units in
# extent records, a map slot holding a block descriptor.  On every cas
# server, with a store made by format=4:
#  - round trips against a model: whole blocks, 4 KiB and 512-byte
#    writes, unaligned writes across blocks, zeroes, a block mixing zero
#    and data units, concurrent 4 KiB writes into one block; read whole,
#    in part and unaligned; again after a flush and a restart; fsck
#    --full clean.  Both with the write-back cache and without it
#    (dirtycache=0: read-modify-write of units), and with 16 KiB blocks.
#  - 4 clients at once writing their own units of the same blocks, with
#    flushes, through a small write-back cache (eviction) or none.
#  - dedup at 4 KiB: the same data written 4 KiB further into another
#    volume adds next to nothing to the packs.
#  - kill -9 after a flush: what was flushed reads back.
#  - a block whose units come from 8 different places (more runs than a
#    descriptor holds) reads back right, before and after a restart.
#  - compression=lz4 with format 4: round trip, and the packs shrink.
#  - a damaged unit is EIO on every read touching it (never wrong data),
#    the other units of its block and extent read fine, fsck reports it.
#  - a slot table the server has read and checked (it keeps it), then
#    damaged on disk under it together with a unit (the slot's CRC forged
#    to match the damaged unit): the unit is EIO from the table it keeps,
#    the extent's other units read fine; after a restart the damaged
#    table makes the unit EIO.
#  - a collection run through the serving process moves the extents whose
#    tables it keeps: everything reads back right from the copies, and a
#    unit damaged in a copy is EIO.
# And with the tool alone: create --format 4, import (dedup of the same
# image 4 KiB further), snapshot, clone, export, diff, fsck --full.

import errno
import os
import random
import struct
import threading

import nbd

import casformat as cf
import nbdtest
from castest import BS, MiB, tool, serve, stopped, connection, run_cases

UNIT = 4096
SIZE = 32 * MiB
EXTENT = 4                     # record type of an extent
SLOT_ENTRY = 40


def rand(seed, n):
    return random.Random(seed).randbytes(n)


def text(seed, n):
    rng = random.Random(seed)
    words = [b"extent", b"unit", b"block", b"descriptor", b"slot", b"table",
             b"hook", b"group", b"flush", b"durable", b"the", b"a", b"of"]
    out = bytearray(struct.pack("<Q", seed))
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def pack_bytes(store):
    return sum(os.path.getsize(p) for p in cf.packs(store))


def super_version(store):
    with open(os.path.join(store, "superblock"), "rb") as f:
        return struct.unpack_from("<I", f.read(64), 8)[0]


def extent_units(store):
    """{sha256 of a unit: (pack, offset of its stored bytes, stored
    length, offset of its slot entry)} over every extent record of the
    store's packs (the first slot holding it)."""
    out = {}
    for pack in cf.packs(store):
        with open(pack, "rb") as f:
            raw = f.read()
        for off, typ, length, h in cf.records(pack):
            if typ != EXTENT:
                continue
            nslots = h[8]
            present, = struct.unpack_from("<H", h, 10)
            at = off + cf.RECORD_HEADER + SLOT_ENTRY * nslots
            for s in range(nslots):
                e = off + cf.RECORD_HEADER + SLOT_ENTRY * s
                uh = raw[e:e + 32]
                stored, = struct.unpack_from("<H", raw, e + 32)
                if present >> s & 1:
                    out.setdefault(uh, (pack, at, stored, e))
                    at += stored
    return out


def expect_eio(h, n, off):
    try:
        h.pread(n, off)
    except nbd.Error as e:
        assert e.errnum == errno.EIO, "errno %s, expected EIO" % e.errno
        return
    raise AssertionError("read of %d at %d succeeded over a damaged unit"
                         % (n, off))


class Model:
    """The volume's expected bytes, and the handle that writes them."""

    def __init__(self, h, size):
        self.h = h
        self.m = bytearray(size)

    def write(self, off, data):
        self.h.pwrite(data, off)
        self.m[off:off + len(data)] = data

    def zero(self, off, n):
        self.h.zero(n, off)
        self.m[off:off + n] = bytes(n)

    def check(self, h=None, upto=None):
        h = h or self.h
        upto = upto or len(self.m)
        for off in range(0, upto, 4 * MiB):
            n = min(4 * MiB, upto - off)
            got = h.pread(n, off)
            if got != self.m[off:off + n]:
                bad = next(i for i in range(n) if got[i] != self.m[off + i])
                raise AssertionError("reads back wrong at %d" % (off + bad))
        rng = random.Random(5)
        for _ in range(200):          # partial and unaligned reads
            n = rng.choice([1, 512, 4096, 5000, 70000])
            off = rng.randrange(0, upto - n)
            assert h.pread(n, off) == self.m[off:off + n], \
                "read of %d at %d" % (n, off)


def reread(server, store, d, m, params=()):
    """Serve the store again and check that it reads as model m, then
    fsck --full it."""
    srv = serve(server, store, d, list(params))
    try:
        with connection(srv) as h:
            m.check(h)
    finally:
        stopped(srv)
    tool("fsck", store, "--full", check=0)


def patterns(m):
    """Write the test patterns through m."""
    # Whole blocks.
    for b in range(8):
        m.write(b * BS, rand(b, BS))
    # 4 KiB writes: into written blocks and unmapped ones, aligned to
    # units and not.
    for i in range(40):
        m.write((i * 37 % 300) * UNIT, rand(100 + i, UNIT))
    for i in range(10):
        m.write(20 * BS + i * 6000 + 512, rand(150 + i, UNIT))
    # 512-byte writes.
    for i in range(64):
        m.write(30 * BS + i * 1536, rand(200 + i, 512))
    m.write(2 * BS + 3 * 512, rand(299, 512))
    # Unaligned, across blocks.
    m.write(40 * BS - 3000, rand(300, 10000))
    m.write(45 * BS + 7, rand(301, 3 * BS + 11))
    m.write(3 * BS + 100, rand(302, 100))
    # Zeroes: a whole block, part of one, a unit, and zero data written.
    m.zero(1 * BS, BS)
    m.zero(4 * BS + 4096, 8192)
    m.zero(5 * BS + 100, 300)
    m.write(6 * BS, bytes(BS))
    m.write(7 * BS + UNIT, bytes(UNIT))
    # A block mixing zero and data units.
    mixed = b"".join(bytes(UNIT) if u % 3 == 0 else rand(400 + u, UNIT)
                     for u in range(BS // UNIT))
    m.write(50 * BS, mixed)
    # The same unit twice in a block, and a block of one repeated unit.
    m.write(51 * BS, rand(500, UNIT) * 16)
    # 16 concurrent 4 KiB writes into one block.
    cookies = []
    for u in range(16):
        data = rand(600 + u, UNIT)
        cookies.append(m.h.aio_pwrite(data, 52 * BS + u * UNIT))
        m.m[52 * BS + u * UNIT:52 * BS + (u + 1) * UNIT] = data
    nbdtest.aio_wait(m.h, cookies)


def round_trip(extra):
    def case(server, d):
        store = os.path.join(d, "store")
        srv = serve(server, store, d, ["size=%d" % SIZE, "format=4"] + extra)
        try:
            with connection(srv) as h:
                m = Model(h, SIZE)
                patterns(m)
                m.check()
                h.flush()
                m.check()
                # Overwrites after a flush: their old content is in
                # extents now.
                m.write(0 * BS + 2 * UNIT, rand(700, UNIT))
                m.write(8 * UNIT, rand(701, 512))
                m.zero(50 * BS + UNIT, UNIT)
                m.check()
                h.flush()
        finally:
            stopped(srv)
        assert super_version(store) == 4, super_version(store)
        reread(server, store, d, m, extra)
    return case


def concurrent(extra):
    def case(server, d):
        # 4 clients at once, each writing its own units (unit % 4) of the
        # same 64 blocks in pieces of 512 bytes to 8 KiB, with flushes;
        # a write-back cache of 9 blocks, so that eviction writes blocks
        # back on the housekeeping thread and in the writers' threads
        # at once (or none: write-through read-modify-write).
        store = os.path.join(d, "store")
        nblocks = 64
        srv = serve(server, store, d, ["size=%d" % SIZE, "format=4"] + extra)
        m = Model(None, nblocks * BS)
        errors = []

        def client(t):
            try:
                with connection(srv) as h:
                    rng = random.Random(t)
                    for k in range(300):
                        u = rng.randrange(0, nblocks * BS // UNIT // 4) * 4 + t
                        n = rng.choice([512, 1024, UNIT])
                        off = u * UNIT + rng.randrange(0, UNIT // n) * n
                        data = rand(t * 100000 + k, n) if k % 9 else bytes(n)
                        h.pwrite(data, off)
                        m.m[off:off + n] = data
                        if k % 50 == 49:
                            h.flush()
                    h.flush()
            except Exception as e:
                errors.append(e)

        try:
            threads = [threading.Thread(target=client, args=(t,))
                       for t in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert not errors, errors
            with connection(srv) as h:
                m.check(h)
        finally:
            stopped(srv)
        reread(server, store, d, m)
    return case


def dedup_shifted(server, d):
    store = os.path.join(d, "store")
    data = rand(1, 4 * MiB)
    srv = serve(server, store, d, ["size=%d" % SIZE, "format=4"])
    try:
        with connection(srv) as h:
            h.pwrite(data, 0)
            h.flush()
    finally:
        stopped(srv)
    once = pack_bytes(store)
    assert once >= len(data), once
    srv = serve(server, store, d, ["size=%d" % SIZE, "volume=second"])
    try:
        with connection(srv, "second") as h:
            h.pwrite(data, UNIT)
            h.flush()
            assert h.pread(len(data), UNIT) == data
            assert h.pread(UNIT, 0) == bytes(UNIT)
        with connection(srv, "default") as h:
            assert h.pread(len(data), 0) == data
    finally:
        stopped(srv)
    grown = pack_bytes(store) - once
    # Units not found before a hook led to the first volume's group, the
    # map, and the slot tables of a few fresh extents: far below a copy.
    assert grown < len(data) // 20, \
        "the same data 4 KiB further in another volume: packs grew by %d" \
        % grown
    tool("fsck", store, check=0)


def kill_after_flush(server, d):
    store = os.path.join(d, "store")
    srv = serve(server, store, d, ["size=%d" % SIZE, "format=4"])
    h = srv.connect()
    m = Model(h, SIZE)
    patterns(m)
    h.flush()
    # One unit alone in the open extent when the flush comes: only the
    # flush appends it (the write-backs of patterns() may have appended
    # the extent they left open).
    m.write(55 * BS + UNIT, rand(799, UNIT))
    h.flush()
    flushed = bytes(m.m)
    # Not flushed: may or may not survive, but must not harm the rest.
    # Partial writes only: they stay in the cache, so nothing appends
    # the extent the flush left open -- the flush itself must have.
    h.pwrite(rand(800, 2 * UNIT), 60 * BS)
    h.pwrite(rand(801, UNIT), 2 * BS + UNIT)
    srv.kill9()
    try:
        h.shutdown()
    except nbd.Error:
        pass
    del h
    srv = serve(server, store, d)
    try:
        with connection(srv) as h:
            got = h.pread(60 * BS, 0)
            for off in range(0, 60 * BS, UNIT):
                if off == 2 * BS + UNIT:
                    ok = (got[off:off + UNIT] in
                          (flushed[off:off + UNIT], rand(801, UNIT)))
                else:
                    ok = got[off:off + UNIT] == flushed[off:off + UNIT]
                assert ok, "flushed unit at %d lost" % off
    finally:
        stopped(srv)
    tool("fsck", store, check=0)


def many_runs(server, d):
    store = os.path.join(d, "store")
    srv = serve(server, store, d, ["size=%d" % SIZE, "format=4"])
    try:
        with connection(srv) as h:
            m = Model(h, 64 * BS)
            for b in range(8):
                m.write(b * BS, rand(900 + b, BS))
                h.flush()               # each in extents of its own
            # Unit u from block u % 8: 16 runs over 8 places.
            blk = b"".join(m.m[(u % 8) * BS + u * UNIT:
                               (u % 8) * BS + (u + 1) * UNIT]
                           for u in range(16))
            m.write(10 * BS, blk)
            # The same with every other unit zero.
            blk2 = b"".join(bytes(UNIT) if u % 2 else blk[u * UNIT:
                                                          (u + 1) * UNIT]
                            for u in range(16))
            m.write(11 * BS, blk2)
            # And built by 4 KiB writes, written back from the cache.
            for u in range(16):
                m.write(12 * BS + u * UNIT, blk[u * UNIT:(u + 1) * UNIT])
            m.check()
            h.flush()
            m.check()
    finally:
        stopped(srv)
    reread(server, store, d, m)


def compressed(server, d):
    store = os.path.join(d, "store")
    srv = serve(server, store, d, ["size=%d" % SIZE, "format=4",
                                   "compression=lz4"])
    try:
        with connection(srv) as h:
            m = Model(h, 64 * BS)
            for b in range(32):
                m.write(b * BS, text(b, BS))
            for b in range(32, 36):
                m.write(b * BS, rand(b, BS))     # incompressible: raw
            m.write(40 * BS + 1000, text(99, 9000))
            m.check()
            h.flush()
    finally:
        stopped(srv)
    raw = 36 * BS
    assert pack_bytes(store) < 0.8 * raw, (pack_bytes(store), raw)
    reread(server, store, d, m)


def damaged_unit(server, d):
    store = os.path.join(d, "store")
    srv = serve(server, store, d, ["size=%d" % SIZE, "format=4"])
    try:
        with connection(srv) as h:
            for b in range(4):
                h.pwrite(rand(1000 + b, BS), b * BS)
            h.flush()
    finally:
        stopped(srv)
    victim = rand(1002, BS)[5 * UNIT:6 * UNIT]     # block 2, unit 5
    units = extent_units(store)
    assert cf.sha256(victim) in units, "no extent slot holds the unit"
    pack, at, stored, _ = units[cf.sha256(victim)]
    cf.flip(pack, at + stored // 2)
    srv = serve(server, store, d)
    try:
        with connection(srv) as h:
            expect_eio(h, BS, 2 * BS)
            expect_eio(h, UNIT, 2 * BS + 5 * UNIT)
            expect_eio(h, 100, 2 * BS + 5 * UNIT + 2000)
            expect_eio(h, 2 * UNIT, 2 * BS + 4 * UNIT + 100)
            # The block's other units, and the other blocks, read fine.
            want = rand(1002, BS)
            for u in (0, 4, 6, 15):
                assert h.pread(UNIT, 2 * BS + u * UNIT) == \
                    want[u * UNIT:(u + 1) * UNIT], "unit %d of block 2" % u
            for b in (0, 1, 3):
                assert h.pread(BS, b * BS) == rand(1000 + b, BS), b
            # A partial write into the damaged block, away from the
            # damaged unit: it needs no read of it.
            h.pwrite(rand(1100, UNIT), 2 * BS)
            assert h.pread(UNIT, 2 * BS) == rand(1100, UNIT)
            h.flush()
            expect_eio(h, UNIT, 2 * BS + 5 * UNIT)
            # Writing the content again stores a good copy.
            h.pwrite(want, 7 * BS)
            assert h.pread(BS, 7 * BS) == want
    finally:
        stopped(srv)
    tool("fsck", store, check=1)
    # Writing the damaged unit's bytes again in place heals the block (the
    # old reference is not kept: its extent is damaged), and fsck with it.
    srv = serve(server, store, d)
    try:
        with connection(srv) as h:
            expect_eio(h, UNIT, 2 * BS + 5 * UNIT)
            h.pwrite(want[5 * UNIT:6 * UNIT], 2 * BS + 5 * UNIT)
            assert h.pread(UNIT, 2 * BS + 5 * UNIT) == \
                want[5 * UNIT:6 * UNIT]
            h.flush()
    finally:
        stopped(srv)
    tool("fsck", store, check=0)


def damaged_under_cached_table(server, d):
    store = os.path.join(d, "store")
    srv = serve(server, store, d, ["size=%d" % SIZE, "format=4"])
    try:
        with connection(srv) as h:
            for b in range(4):
                h.pwrite(rand(1200 + b, BS), b * BS)
            h.flush()
            want = rand(1202, BS)
            assert h.pread(BS, 2 * BS) == want     # its table is read
            victim = want[5 * UNIT:6 * UNIT]        # block 2, unit 5
            units = extent_units(store)
            assert cf.sha256(victim) in units, "no extent slot holds the unit"
            pack, at, _, entry = units[cf.sha256(victim)]
            # Under the running server: the unit damaged, and its slot's
            # CRC made to match the damaged bytes (the table's own CRC no
            # longer does).
            bad = bytearray(victim)
            bad[100] ^= 0x5a
            with open(pack, "r+b") as f:
                f.seek(at)
                f.write(bad)
                f.seek(entry + 36)
                f.write(struct.pack("<I", cf.crc32c(bytes(bad))))
            expect_eio(h, UNIT, 2 * BS + 5 * UNIT)
            expect_eio(h, BS, 2 * BS)
            expect_eio(h, 10, 2 * BS + 5 * UNIT + 95)
            for u in (0, 4, 6, 15):
                assert h.pread(UNIT, 2 * BS + u * UNIT) == \
                    want[u * UNIT:(u + 1) * UNIT], "unit %d of block 2" % u
            for b in (0, 1, 3):
                assert h.pread(BS, b * BS) == rand(1200 + b, BS), b
    finally:
        stopped(srv)
    srv = serve(server, store, d)
    try:
        with connection(srv) as h:
            expect_eio(h, UNIT, 2 * BS + 5 * UNIT)
            expect_eio(h, BS, 2 * BS)
            for b in (0, 1, 3):
                assert h.pread(BS, b * BS) == rand(1200 + b, BS), b
    finally:
        stopped(srv)


def reads_after_gc_moves(server, d):
    store = os.path.join(d, "store")
    srv = serve(server, store, d, ["size=%d" % SIZE, "format=4",
                                   "gc=off"])
    try:
        with connection(srv) as h:
            m = Model(h, SIZE)
            # Blocks of live and dead extents mixed in the same packs.
            for b in range(0, SIZE // BS, 2):
                m.write(b * BS, rand(1300 + b, 2 * BS))
            h.flush()
            for b in range(0, SIZE // BS, 4):
                m.write(b * BS, rand(1400 + b, BS))
            m.write(3 * BS + 5 * UNIT, rand(1500, UNIT))
            h.flush()
            m.check()                   # every extent's table is read
            before = {(r[0], r[1]) for r in
                      ((p, off) for p in cf.packs(store)
                       for off, typ, _, _ in cf.records(p) if typ == EXTENT)}
            p = tool("gc", store, "--max-unused", "0", check=0)
            assert "gave back" in p.stdout, p.stdout
            after = {(p, off) for p in cf.packs(store)
                     for off, typ, _, _ in cf.records(p) if typ == EXTENT}
            assert not (before & after), "gc moved no extent"
            m.check()
            want = m.m[6 * BS + 7 * UNIT:6 * BS + 8 * UNIT]
            pack, at, stored, _ = extent_units(store)[cf.sha256(bytes(want))]
            cf.flip(pack, at + stored // 3)
            expect_eio(h, UNIT, 6 * BS + 7 * UNIT)
            expect_eio(h, BS, 6 * BS)
            assert h.pread(UNIT, 6 * BS + 6 * UNIT) == \
                m.m[6 * BS + 6 * UNIT:6 * BS + 7 * UNIT]
    finally:
        stopped(srv)


def tool_history(d):
    # Offline, through the tool: import (whole blocks, and the same image
    # 4 KiB further: dedup), a snapshot, a clone written to, export of
    # each, diff, fsck --full.
    store = os.path.join(d, "store")
    tool("create", store, "--format", "4", check=0)
    img = rand(2000, 3 * MiB + 5000)
    paths = {}
    for name, data in (("a", img), ("b", bytes(UNIT) + img)):
        paths[name] = os.path.join(d, name + ".img")
        with open(paths[name], "wb") as f:
            f.write(data)
        tool("import", store, name, paths[name], "--create", check=0)
    once = len(img)
    assert pack_bytes(store) < once + once // 10, (pack_bytes(store), once)
    tool("snapshot", store, "a", "s1", check=0)
    tool("clone", store, "a@s1", "c", check=0)
    patch = rand(2001, 3 * UNIT)
    changed = bytearray(img)
    changed[BS + 512:BS + 512 + len(patch)] = patch
    with open(paths["a"], "wb") as f:
        f.write(changed)
    tool("import", store, "c", paths["a"], check=0)
    for name, want in (("a", img), ("a@s1", img), ("b", bytes(UNIT) + img),
                       ("c", bytes(changed))):
        out = os.path.join(d, "out-" + name)
        tool("export", store, name, out, check=0)
        with open(out, "rb") as f:
            got = f.read()
        assert got[:len(want)] == want, "%s exports wrong" % name
    p = tool("diff", store, "a@s1", "c", check=0)
    assert p.stdout.split() == [str(BS), str(BS)], p.stdout
    tool("fsck", store, "--full", check=0)


run_cases([
    ("format 4 round trip, write-back cache", round_trip([])),
    ("format 4 round trip, write-through", round_trip(["dirtycache=0"])),
    ("format 4 round trip, 16 KiB blocks", round_trip(["blocksize=16K"])),
    ("format 4 concurrent clients, small cache",
     concurrent(["dirtycache=600K"])),
    ("format 4 concurrent clients, write-through",
     concurrent(["dirtycache=0"])),
    ("format 4 dedup at 4 KiB across volumes", dedup_shifted),
    ("format 4 kill -9 after flush", kill_after_flush),
    ("format 4 block of more than 5 runs", many_runs),
    ("format 4 with compression=lz4", compressed),
    ("format 4 damaged unit is EIO", damaged_unit),
    ("format 4 damage under a slot table read before",
     damaged_under_cached_table),
    ("format 4 reads after gc moved the extents", reads_after_gc_moves),
], [("format 4 import, snapshot, clone, export, diff", tool_history)])
