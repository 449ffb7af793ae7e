#!/usr/bin/python3
# cas store format versions: a new store is version 2, whose data records
# carry a piece table (a CRC32C per 4 KiB, FORMAT.md) that matches the
# data; a version-1 store (made by an older release) still opens, reads
# and writes, stays version 1 and gets no piece tables, so that the
# release that made it can still read it.  Garbage collection copies
# live records in the store's own version (tables in version 2, none in
# version 1).  `nbdcas upgrade` (here live, through the server) makes a
# version-1 store version 2: old records read as before, new ones and
# gc's copies get tables.  A piece table that does not match its intact
# data costs partial reads their speed, not their data, and fsck --full
# names it.  The store is made with format=2, so that this stays a test
# of format 2 whatever the default (format 4: test-cas-v4.py).

import os
import struct
import subprocess

import nbdtest
import casformat as cf

BS = 64 * 1024
MiB = 1024 * 1024
# Small packs (about 3 blocks each): garbage collection has many to
# rewrite.
os.environ["NBDCAS_PACK_SIZE"] = str(256 * 1024)


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


def check_records(store, tables):
    """Every data record: with a matching piece table (tables True),
    without one and without the flag (False), or either (None).  Returns
    (with, without)."""
    with_t = without = 0
    for pack, off, length, hsh in data_records(store):
        crcs = cf.piece_table(pack, off)
        with open(pack, "rb") as f:
            f.seek(off + 12)
            whole, = struct.unpack("<I", f.read(4))
            f.seek(off + 64)
            data = f.read(length)
        assert cf.sha256(data) == hsh, "record at %s:%d" % (pack, off)
        assert whole == cf.crc32c(data), "payload CRC at %s:%d" % (pack, off)
        if crcs is None:
            assert tables is not True, "no table at %s:%d" % (pack, off)
            without += 1
            continue
        assert tables is not False, "a table at %s:%d" % (pack, off)
        assert crcs == [cf.crc32c(data[i:i + 4096])
                        for i in range(0, length, 4096)], \
            "piece CRCs at %s:%d" % (pack, off)
        with_t += 1
    if tables is False:
        assert cf.TABLE not in types(store), types(store)
    return with_t, without


def tool(*args, check=0):
    p = subprocess.run([os.environ["NBDCAS"]] + list(args),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == check, "nbdcas %s: exit %d\n%s%s" % (
        " ".join(args), p.returncode, p.stdout, p.stderr)
    return p.stdout


def write_some(srv, blocks):
    h = srv.connect()
    for i, d in blocks.items():
        h.pwrite(d, i * BS)
    # A partial write too: read-modify-write of block 3.
    h.pwrite(b"\x5a" * 1000, 3 * BS + 100)
    h.flush()
    want = {i: d for i, d in blocks.items()}
    want[3] = want[3][:100] + b"\x5a" * 1000 + want[3][1100:]
    check(h, want)
    h.shutdown()
    return want


def check(h, want):
    for i, d in want.items():
        assert h.pread(BS, i * BS) == d, "block %d" % i
        assert h.pread(4096, i * BS + 8192) == d[8192:12288]
        assert h.pread(512, i * BS + 4096 + 512) == d[4608:5120]


def collect(srv, store, want, keep):
    """Overwrite every block of want but those in keep, flush, then
    collect everything (live, through the server): every pack written so
    far holds garbage, so each is rewritten or removed, and every record
    still live is a copy."""
    h = srv.connect()
    for i in list(want):
        if i not in keep:
            want[i] = os.urandom(BS)
            h.pwrite(want[i], i * BS)
    h.flush()
    h.shutdown()
    out = tool("gc", store, "--max-unused", "0")
    assert "rewritten" in out, out
    h = srv.connect()
    check(h, want)
    h.shutdown()


def use_store(srv, store):
    srv.params = [p for p in srv.params if not p.startswith("store=")]
    srv.params.append("store=" + store)


def forge_table(pack, off, piece, crc):
    """Set entry piece of the table in front of the data record at off to
    crc, and seal the table record again (its payload CRC and header CRC
    right): a table that checks out but does not match its data."""
    with open(pack, "r+b") as f:
        f.seek(off + 8)
        length, = struct.unpack("<I", f.read(4))
        n = (length + 4095) // 4096
        toff = off - cf.record_size(4 * n)
        f.seek(toff)
        rec = bytearray(f.read(64 + 4 * n))
        struct.pack_into("<I", rec, 64 + 4 * piece, crc)
        struct.pack_into("<I", rec, 12, cf.crc32c(bytes(rec[64:64 + 4 * n])))
        struct.pack_into("<I", rec, 60, cf.crc32c(bytes(rec[:60])))
        f.seek(toff)
        f.write(rec)


def body(srv):
    store = os.path.join(srv.workdir, "store")
    blocks = {i: os.urandom(BS) for i in range(12)}

    # A new store is version 2; each data record's piece table holds the
    # CRC32C of each 4 KiB piece, and its payload CRC is the whole one.
    h = srv.connect()
    h.shutdown()
    assert superblock_version(store) == 2, superblock_version(store)
    want = write_some(srv, blocks)
    # Garbage collection's copies have tables too.
    collect(srv, store, want, keep={1, 3, 7})
    srv.stop()
    n, _ = check_records(store, True)
    assert n >= 12, n
    tool("fsck", "--full", store)

    # A table that does not match its (intact) data: partial reads read
    # and check the whole record instead, and give the right data; fsck
    # names the table and finds no volume that lost data.
    pack, off, _, hsh = next((p, o, ln, hh)
                             for p, o, ln, hh in data_records(store)
                             if cf.sha256(want[7]) == hh)
    forge_table(pack, off, 2, 0x12345678)
    srv.start()
    h = srv.connect()
    assert h.pread(4096, 7 * BS + 2 * 4096) == want[7][8192:12288]
    assert h.pread(100, 7 * BS + 2 * 4096 + 50) == want[7][8242:8342]
    assert h.pread(4096, 7 * BS + 4096) == want[7][4096:8192]
    h.shutdown()
    srv.stop()
    assert "piece table does not match its intact data" in srv.log(), \
        srv.log()
    out = tool("fsck", "--full", store)
    assert "piece table of data record" in out and \
        "does not match the data record after it" in out and \
        "clean" in out, out

    # A version-1 store: opened, written, read, still version 1, and no
    # piece table anywhere (an older release would take one for a chunk),
    # garbage collection's copies included.
    v1 = os.path.join(srv.workdir, "v1")
    use_store(srv, v1)
    srv.start()
    h = srv.connect()
    h.shutdown()
    srv.stop()
    set_superblock_version(v1, 1)
    srv.start()
    want = write_some(srv, {i: os.urandom(BS) for i in range(12)})
    collect(srv, v1, want, keep={1, 3, 7})
    srv.stop()
    assert superblock_version(v1) == 1, superblock_version(v1)
    check_records(v1, False)
    assert all(cf.record_flags(p, off) & cf.F_TABLE == 0
               for p, off, _, _ in data_records(v1))
    tool("fsck", "--full", v1)
    srv.start()
    h = srv.connect()
    check(h, want)
    h.shutdown()

    # nbdcas upgrade, live: the server does it between two writes.  Old
    # records read as before (partial reads check the whole record), new
    # ones have tables, and a collection gives the old ones tables.
    out = tool("upgrade", v1)
    assert "upgraded from format version 1 to 2" in out, out
    assert superblock_version(v1) == 2, superblock_version(v1)
    out = tool("upgrade", v1)
    assert "already format version 2" in out, out
    assert "format version: 2" in tool("stat", v1)
    h = srv.connect()
    check(h, want)
    for i in range(12, 16):
        want[i] = os.urandom(BS)
        h.pwrite(want[i], i * BS)
    h.flush()
    check(h, want)
    h.shutdown()
    srv.stop()
    with_t, without = check_records(v1, None)
    assert with_t >= 4 and without >= 3, (with_t, without)
    tool("fsck", "--full", v1)
    srv.start()
    # Block 1's record (a version-1 copy, in a pack with 3's and 7's) is
    # copied again, now with a table.
    collect(srv, v1, want, keep={1, 12})
    srv.stop()
    with_t, without = check_records(v1, True)
    assert without == 0 and with_t >= 16, (with_t, without)
    tool("fsck", "--full", v1)
    srv.start()
    h = srv.connect()
    check(h, want)
    h.shutdown()


nbdtest.run("cas format versions: piece tables (v2) and gc's copies, v1 "
            "stores stay v1, nbdcas upgrade, a wrong table costs no data",
            body, backends=["cas"], size=16 * MiB, params={"format": 2})
