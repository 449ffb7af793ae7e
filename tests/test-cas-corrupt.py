#!/usr/bin/python3
# cas: a damaged record (a byte flipped in a pack file) makes the read of
# that block fail with EIO and a message naming the pack and offset, never
# return wrong data; other blocks still read.  Also with verify=full.
# The store is format 2 (format=2): the damage is made in its data records
# (a block's record found by its bytes, its header, its piece table); a
# damaged unit of a format-4 store: test-cas-v4.py.

import errno
import glob
import os

import nbd
import nbdtest
from casformat import crc32c, flip, piece_table

BS = 64 * 1024
MiB = 1024 * 1024


def pack_path(store):
    return sorted(glob.glob(os.path.join(store, "packs", "pack-*")))[0]


def errname(e):
    """libnbd's Error.errno is a name ("EIO") in some versions, a number in
    others."""
    if isinstance(e.errno, int):
        return errno.errorcode.get(e.errno, str(e.errno))
    return e.errno


def expect_eio(h, n, off):
    try:
        h.pread(n, off)
    except nbd.Error as e:
        assert errname(e) == "EIO", "errno %s, expected EIO" % e.errno
        return
    raise AssertionError("read of a damaged block succeeded")


def body(srv):
    store = os.path.join(srv.workdir, "store")
    a = os.urandom(BS)
    b = os.urandom(BS)
    c = os.urandom(BS)
    h = srv.connect()
    h.pwrite(a, 0)
    h.pwrite(b, 5 * BS)
    h.pwrite(c, 9 * BS)
    h.flush()
    h.shutdown()
    srv.stop()

    pack = pack_path(store)
    raw = open(pack, "rb").read()
    pa = raw.find(a[:4096])
    pb = raw.find(b[:4096])
    assert pa > 0 and pb > 0
    flip(pack, pa + 1000)          # in a's payload
    flip(pack, pb - 64 + 20)       # in b's record header (its hash)

    srv.start()
    h = srv.connect()
    expect_eio(h, BS, 0)
    expect_eio(h, 512, 100)        # a partial read of it, too
    expect_eio(h, BS, 5 * BS)
    assert h.pread(BS, 9 * BS) == c, "an intact block is unreadable"
    # A partial write to a damaged block fails rather than inventing data.
    try:
        h.pwrite(b"x" * 10, 50)
        raise AssertionError("partial write over a damaged block succeeded")
    except nbd.Error as e:
        assert errname(e) == "EIO", e.errno
    # Writing the same content again stores a good copy (no dedup
    # against the damaged record), at another place too.
    h.pwrite(a, 0)
    assert h.pread(BS, 0) == a, "rewrite of damaged content"
    h.pwrite(b, 12 * BS)
    assert h.pread(BS, 12 * BS) == b
    # Overwriting a damaged block with other content works.
    h.pwrite(c, 5 * BS)
    assert h.pread(BS, 5 * BS) == c
    h.pwrite(b, 5 * BS)
    h.flush()
    h.shutdown()
    log = srv.log()
    assert "pack 1 offset" in log and "checksum mismatch" in log, log

    # verify=full re-hashes: still EIO, still no wrong data.
    srv.stop()
    srv.params.append("verify=full")
    srv.start()
    h = srv.connect()
    assert h.pread(BS, 0) == a
    assert h.pread(BS, 5 * BS) == b
    assert h.pread(BS, 9 * BS) == c
    h.shutdown()
    # A damaged copy that verify=full catches but the CRC cannot: a
    # payload changed together with its CRC.
    srv.stop()
    raw = open(pack_path(store), "rb").read()
    pc = raw.find(c[:4096])
    assert pc > 0
    import struct
    with open(pack_path(store), "r+b") as f:
        bad = bytearray(c)
        bad[77] ^= 1
        f.seek(pc)
        f.write(bad)
        f.seek(pc - 64)
        hdr = bytearray(f.read(64))
        hdr[12:16] = struct.pack("<I", crc32c(bytes(bad)))
        hdr[60:64] = struct.pack("<I", crc32c(bytes(hdr[:60])))
        f.seek(pc - 64)
        f.write(hdr)
    srv.start()
    h = srv.connect()
    expect_eio(h, BS, 9 * BS)
    h.shutdown()
    partial_reads(srv, store)


def partial_reads(srv, store):
    """Partial reads of a damaged block: a read of 4 KiB pieces checks
    only those pieces (format 2 keeps a CRC per piece), so an intact piece
    of a damaged block reads back right, and any read that touches the
    damaged piece is EIO -- never wrong data.  A damaged piece table costs
    only speed: the whole block is read and checked instead."""
    d = os.urandom(BS)
    e = os.urandom(BS)
    srv.stop()
    srv.params = [p for p in srv.params if not p.startswith("verify=")]
    srv.start()
    h = srv.connect()
    h.pwrite(d, 13 * BS)
    h.pwrite(e, 14 * BS)
    h.flush()
    h.shutdown()
    srv.stop()
    pack = pack_path(store)
    raw = open(pack, "rb").read()
    pd = raw.find(d[:4096])
    pe = raw.find(e[:4096])
    assert pd > 0 and pe > 0
    flip(pack, pd + 3 * 4096 + 10)     # d's piece 3
    if piece_table(pack, pd - 64) is not None:
        flip(pack, pe - 64 - 30)       # e's piece table (its payload)
    srv.start()
    h = srv.connect()
    assert h.pread(4096, 13 * BS) == d[:4096], "intact piece 0"
    assert h.pread(100, 13 * BS + 5000) == d[5000:5100], "intact piece 1"
    assert h.pread(8192, 13 * BS + 4 * 4096) == d[4 * 4096:6 * 4096]
    expect_eio(h, 512, 13 * BS + 3 * 4096 + 512)   # inside piece 3
    expect_eio(h, 4096, 13 * BS + 3 * 4096)
    expect_eio(h, 3 * 4096, 13 * BS + 2 * 4096)    # across it
    expect_eio(h, BS, 13 * BS)
    # e's data is intact; its damaged table only sends reads the long way.
    assert h.pread(4096, 14 * BS + 4096) == e[4096:8192]
    assert h.pread(BS, 14 * BS) == e
    h.shutdown()
    log = srv.log()
    assert "checksum mismatch in bytes 12288-16383" in log, log


nbdtest.run("cas corrupted pack: EIO, never wrong data", body,
            backends=["cas"], size=16 * MiB, params={"format": 2})
