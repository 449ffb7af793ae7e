#!/usr/bin/python3
# cas store format versions: a new store is version 2, whose data records
# carry a piece table (a CRC32C per 4 KiB, FORMAT.md) that matches the
# data; a version-1 store (made by an older release) still opens, reads
# and writes, stays version 1 and gets no piece tables, so that the
# release that made it can still read it.

import os
import struct

import nbdtest
import casformat as cf

BS = 64 * 1024
MiB = 1024 * 1024


def superblock_version(store):
    with open(os.path.join(store, "superblock"), "rb") as f:
        return struct.unpack_from("<I", f.read(12), 8)[0]


def set_superblock_version(store, v):
    path = os.path.join(store, "superblock")
    with open(path, "r+b") as f:
        sb = bytearray(f.read(64))
        struct.pack_into("<I", sb, 8, v)
        struct.pack_into("<I", sb, 60, cf.crc32c(bytes(sb[:60])))
        f.seek(0)
        f.write(sb)


def data_records(store):
    """(pack, offset, length, hash) of every data record."""
    for pack in cf.packs(store):
        for off, typ, length, h in cf.records(pack):
            if typ == cf.DATA:
                yield pack, off, length, h


def types(store):
    return {typ for pack in cf.packs(store) for _, typ, _, _ in
            cf.records(pack)}


def write_some(srv, blocks):
    h = srv.connect()
    for i, d in blocks.items():
        h.pwrite(d, i * BS)
    # A partial write too: read-modify-write of block 3.
    h.pwrite(b"\x5a" * 1000, 3 * BS + 100)
    h.flush()
    want = {i: d for i, d in blocks.items()}
    want[3] = want[3][:100] + b"\x5a" * 1000 + want[3][1100:]
    for i, d in want.items():
        assert h.pread(BS, i * BS) == d, "block %d" % i
        assert h.pread(4096, i * BS + 8192) == d[8192:12288]
    h.shutdown()
    return want


def body(srv):
    store = os.path.join(srv.workdir, "store")
    blocks = {i: os.urandom(BS) for i in range(6)}

    # A new store is version 2; each data record's piece table holds the
    # CRC32C of each 4 KiB piece, and its payload CRC is the whole one.
    h = srv.connect()
    h.shutdown()
    assert superblock_version(store) == 2, superblock_version(store)
    write_some(srv, blocks)
    srv.stop()
    n = 0
    for pack, off, length, hsh in data_records(store):
        crcs = cf.piece_table(pack, off)
        assert crcs is not None, "data record at %d has no table" % off
        with open(pack, "rb") as f:
            f.seek(off + 12)
            whole, = struct.unpack("<I", f.read(4))
            f.seek(off + 64)
            data = f.read(length)
        assert cf.sha256(data) == hsh
        assert whole == cf.crc32c(data), "payload CRC at %d" % off
        assert crcs == [cf.crc32c(data[i:i + 4096])
                        for i in range(0, length, 4096)], \
            "piece CRCs at %d" % off
        n += 1
    assert n >= 6, n

    # A version-1 store: opened, written, read, still version 1, and no
    # piece table anywhere (an older release would take one for a chunk).
    v1 = os.path.join(srv.workdir, "v1")
    srv.params = [p.replace("store=" + store, "store=" + v1)
                  for p in srv.params]
    srv.start()
    h = srv.connect()
    h.shutdown()
    srv.stop()
    set_superblock_version(v1, 1)
    srv.start()
    want = write_some(srv, {i: os.urandom(BS) for i in range(6)})
    srv.stop()
    assert superblock_version(v1) == 1, superblock_version(v1)
    assert cf.TABLE not in types(v1), types(v1)
    assert all(cf.record_flags(p, off) & cf.F_TABLE == 0
               for p, off, _, _ in data_records(v1))
    srv.start()
    h = srv.connect()
    for i, d in want.items():
        assert h.pread(BS, i * BS) == d, "v1 block %d after restart" % i
        assert h.pread(512, i * BS + 4096) == d[4096:4608]
    h.shutdown()
    tool = os.environ.get("NBDCAS")
    if tool and os.access(tool, os.X_OK):
        srv.stop()
        for st in (store, v1):
            nbdtest.cmd([tool, "fsck", "--full", st])


nbdtest.run("cas format versions: piece tables (v2), v1 stores stay v1",
            body, backends=["cas"], size=16 * MiB)
