#!/usr/bin/python3
# cas: a damaged record (a byte flipped in a pack file) makes the read of
# that block fail with EIO and a message naming the pack and offset, never
# return wrong data; other blocks still read.  Also with verify=full.

import errno
import glob
import os

import nbd
import nbdtest
from casformat import crc32c, flip

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


nbdtest.run("cas corrupted pack: EIO, never wrong data", body,
            backends=["cas"], size=16 * MiB)
