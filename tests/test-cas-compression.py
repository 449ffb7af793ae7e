#!/usr/bin/python3
# cas compression (FORMAT.md, "Compressed records"): a store created with
# compression=lz4|zstd[:LEVEL] (the plugin parameter, nbdcas create
# --compression) hashes each block raw, then stores it compressed if that
# saves at least 1/8, else raw.  Checked on every cas server:
#  - round trips with off, lz4 and zstd:3 (full, partial and unaligned
#    reads, a restart without the parameter), what is compressed and what
#    is not (the pack records themselves), that compressible data shrinks
#    the store (nbdcas stat and the pack files' size) and that dedup works
#    across compressed writes;
#  - damage: a flipped byte in a compressed record is EIO (full and
#    partial reads) and fsck reports it; a stream that no longer
#    decompresses (its CRC forged to match) is EIO too, never wrong data;
#    verify=full catches a forged stream that does decompress, and so does
#    fsck --full, not fsck;
#  - garbage collection copies compressed records as they are;
#  - bad values (compression=foo, zstd:99 ...) and a value other than the
#    store's are refused with a message naming the parameter.
# And with the tool: create --compression, import/export, stat's
# per-store and per-volume numbers, a store made without compression is
# what earlier releases wrote (no feature flag), an unknown feature flag
# is refused by name, and a RADOS store refuses compression.
# All of it on format-2 stores (format=2, --format 2): it looks at their
# data records (compressed or not, the 64 KiB block compressed whole) and
# superblocks of versions 2 and 3.  Compression in a format-4 store (each
# 4 KiB unit on its own): test-cas-v4.py.

import json
import os
import random
import shutil
import struct
import subprocess

import nbd

import casformat as cf
import castest
from castest import BS, MiB, tool, serve, stopped, connection

F_COMPRESSED = 0x02
CODECS = {"lz4": 1, "zstd:3": 2, "zstd:1": 2}
SIZE = 16 * MiB
WORDS = [w.encode() for w in (
    "the quick brown fox jumps over a lazy dog while block storage keeps "
    "every chunk once named by its hash and compressed when that pays "
    "store volume snapshot clone pack record header payload index cache "
    "flush durable crash power loss").split()]


def text_block(seed, n=BS):
    """n bytes of text from a small vocabulary: lz4 keeps about half,
    zstd less.  Different seeds give different blocks (no dedup)."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += rng.choice(WORDS) + b" "
    out[:8] = struct.pack("<Q", seed)
    return bytes(out[:n])


def rand_block(seed, n=BS):
    return random.Random(seed).randbytes(n)


def data_records(store):
    """(pack path, offset, length, hash, flags, raw length, codec) of each
    data record, from the pack files as FORMAT.md lays them out."""
    out = []
    for pack in cf.packs(store):
        with open(pack, "rb") as f:
            raw = f.read()
        for off, typ, length, h in cf.records(pack):
            if typ != cf.DATA:
                continue
            flags = raw[off + 5]
            rawlen, = struct.unpack_from("<I", raw, off + 48)
            out.append((pack, off, length, h, flags, rawlen, raw[off + 52]))
    return out


def pack_bytes(store):
    return sum(os.path.getsize(p) for p in cf.packs(store))


def stat_json(store, *volume):
    return json.loads(tool("stat", store, *volume, "--json", check=0).stdout)


def expect_eio(h, n, off):
    import errno as E
    try:
        h.pread(n, off)
    except nbd.Error as e:
        assert e.errnum == E.EIO, "errno %s, expected EIO" % e.errno
        return
    raise AssertionError("read of a damaged block at %d succeeded" % off)


def fill(h):
    """Write the test pattern; returns {block: content} of what is mapped
    (unwritten blocks read as zeros)."""
    want = {}
    for b in range(24):                       # compressible
        want[b] = text_block(b)
    for b in range(24, 28):                   # incompressible: raw
        want[b] = rand_block(b)
    for b in range(28, 30):                   # dedup of compressed blocks
        want[b] = text_block(3)
    for b, data in want.items():
        h.pwrite(data, b * BS)
    h.pwrite(bytes(BS), 30 * BS)              # zeros: never stored
    # A partial write into an unmapped block: mostly zeros, compressible.
    part = text_block(99, 1000)
    h.pwrite(part, 31 * BS + 100)
    want[31] = bytes(100) + part + bytes(BS - 1100)
    # Unaligned, across two compressed blocks.
    new = text_block(77, 5000)
    h.pwrite(new, 5 * BS - 2000)
    for b in (4, 5):
        blk = bytearray(want[b])
        for i in range(5000):
            pos = 5 * BS - 2000 + i
            if pos // BS == b:
                blk[pos % BS] = new[i]
        want[b] = bytes(blk)
    return want


def check_reads(h, want):
    for b in range(34):
        data = want.get(b, bytes(BS))
        assert h.pread(BS, b * BS) == data, "block %d reads back wrong" % b
    for b in (0, 5, 24, 31):
        data = want[b]
        assert h.pread(4096, b * BS + 8192) == data[8192:12288], \
            "partial read of block %d" % b
        assert h.pread(777, b * BS + 1001) == data[1001:1778], \
            "unaligned read of block %d" % b
        assert h.pread(4096, b * BS) == data[:4096], \
            "first piece of block %d" % b
        assert h.pread(5000, b * BS + BS - 5000) == data[BS - 5000:], \
            "the end of block %d" % b
    # Across two blocks, one compressed, one raw.
    assert h.pread(BS, 23 * BS + 3000) == \
        want[23][3000:] + want[24][:3000]


def round_trip(comp):
    def case(server, d):
        store = os.path.join(d, "store")
        srv = serve(server, store, d, ["size=%d" % SIZE, "format=2",
                                       "compression=" + comp])
        try:
            with connection(srv) as h:
                want = fill(h)
                check_reads(h, want)
                h.flush()
        finally:
            stopped(srv)
        # Reopened without the parameter: the store knows its setting.
        srv = serve(server, store, d)
        try:
            with connection(srv) as h:
                check_reads(h, want)
                # Written after the restart: still compressed.
                h.pwrite(text_block(500), 40 * BS)
                want[40] = text_block(500)
                assert h.pread(BS, 40 * BS) == want[40]
        finally:
            stopped(srv)

        # Blocks 4 and 5 may have been stored before their partial
        # overwrite: those records are garbage, not looked at.
        distinct = {cf.sha256(data) for data in want.values()}
        by_hash = {h: (length, flags, rawlen, codec)
                   for _, _, length, h, flags, rawlen, codec
                   in data_records(store) if h in distinct}
        assert set(by_hash) == distinct, "a block has no data record"
        for b, data in want.items():
            length, flags, rawlen, codec = by_hash[cf.sha256(data)]
            if comp == "off" or 24 <= b < 28:
                assert not flags & F_COMPRESSED and length == BS and \
                    rawlen == 0 and codec == 0, \
                    "block %d: stored %d flags %x, expected raw" % (
                        b, length, flags)
            else:
                assert flags & F_COMPRESSED, "block %d not compressed" % b
                assert length <= BS - BS // 8 and rawlen == BS and \
                    codec == CODECS[comp], (b, length, rawlen, codec)
                assert not flags & cf.F_TABLE, "compressed with a table"
        s = stat_json(store)
        assert s["compression"] == comp, s
        ncomp = sum(1 for r in by_hash.values() if r[1] & F_COMPRESSED)
        assert s["compressed_chunks"] == ncomp, (s, ncomp)
        assert s["data_chunks"] == len(distinct), s
        assert s["data_raw_bytes"] == len(distinct) * BS, s
        stored = sum(r[0] for r in by_hash.values())
        assert s["data_stored_bytes"] == stored, (s, stored)
        assert s["mapped_bytes"] == len(want) * BS, s
        # Dedup: 32 mapped blocks of 30 distinct contents, before and
        # after compression alike.
        assert s["dedup_ratio"] > 1.0, s
        raw_total = len(distinct) * BS
        if comp == "off":
            assert s["compressed_chunks"] == 0, s
            assert s["compression_ratio"] == 1.0, s
            assert pack_bytes(store) >= raw_total, pack_bytes(store)
        else:
            assert s["compression_ratio"] > 1.5, s
            assert s["referenced_bytes"] < s["referenced_raw_bytes"], s
            # du: the packs hold far less than the raw unique data.
            assert pack_bytes(store) < 0.7 * raw_total, \
                (pack_bytes(store), raw_total)
            assert s["stored_bytes"] == pack_bytes(store), s
        v = s["volume_list"][0]
        assert v["data_chunks"] == len(distinct), v
        assert v["raw_bytes"] == raw_total and v["stored_bytes"] == stored, v
        vs = stat_json(store, "default")
        assert vs["stored_bytes"] == stored and \
            vs["compression_ratio"] == v["compression_ratio"], vs
        # Everything checks out, re-hashed.
        tool("fsck", store, "--full", check=0)
    return case


def write_blocks(server, store, d, comp, n):
    srv = serve(server, store, d, ["size=%d" % SIZE, "format=2",
                                   "compression=" + comp])
    try:
        with connection(srv) as h:
            for b in range(n):
                h.pwrite(text_block(b), b * BS)
            h.flush()
    finally:
        stopped(srv)
    return {r[3]: r for r in data_records(store)}


def damage_zstd(server, d):
    store = os.path.join(d, "store")
    recs = write_blocks(server, store, d, "zstd:3", 6)
    # Block 0: a byte flipped inside the stored bytes (CRC mismatch).
    pack, off, length = recs[cf.sha256(text_block(0))][:3]
    cf.flip(pack, off + 64 + length // 2)
    # Block 1: the zstd frame's magic broken and the CRC forged to match:
    # it passes the CRC and must fail to decompress.
    forge(recs[cf.sha256(text_block(1))],
          lambda p: bytes([p[0] ^ 0xff]) + p[1:])
    srv = serve(server, store, d)
    try:
        with connection(srv) as h:
            expect_eio(h, BS, 0)
            expect_eio(h, 4096, 4096)           # partial: whole block read
            expect_eio(h, 100, 50)
            expect_eio(h, BS, BS)
            expect_eio(h, 512, BS + 512)
            for b in (2, 3, 4, 5):
                assert h.pread(BS, b * BS) == text_block(b), b
            # Writing the content again stores a good copy.
            h.pwrite(text_block(1), 7 * BS)
            assert h.pread(BS, 7 * BS) == text_block(1)
            assert h.pread(BS, BS) == text_block(1), "not healed"
            h.flush()
        log = srv.log()
        assert "checksum mismatch" in log, log
        assert "does not decompress" in log, log
    finally:
        stopped(srv)
    # fsck: block 0's record is damaged (CRC); block 0 is lost.
    p = tool("fsck", store, check=1)
    assert "checksum" in p.stdout + p.stderr, p.stdout + p.stderr
    p = tool("fsck", store, "--full", check=1)
    out = p.stdout + p.stderr
    assert "does not decompress" in out and "checksum" in out, out


def damage_lz4(server, d):
    """A stream changed so that it still decompresses (to other bytes of
    the same length), its CRC forged: only the SHA-256 can tell, so
    verify=full and fsck --full catch it, and plain fsck does not."""
    store = os.path.join(d, "store")
    recs = write_blocks(server, store, d, "lz4", 4)
    forge(recs[cf.sha256(text_block(2))], change_lz4_literal)
    srv = serve(server, store, d, ["verify=full"])
    try:
        with connection(srv) as h:
            expect_eio(h, BS, 2 * BS)
            expect_eio(h, 4096, 2 * BS)
            for b in (0, 1, 3):
                assert h.pread(BS, b * BS) == text_block(b), b
    finally:
        stopped(srv)
    tool("fsck", store, check=0)
    p = tool("fsck", store, "--full", check=1)
    out = p.stdout + p.stderr
    assert "does not match its SHA-256" in out, out


def forge(rec, change):
    """Replace the payload of a compressed record with change(payload)
    (same length) and make its CRC32C match again."""
    pack, off, length = rec[:3]
    with open(pack, "r+b") as f:
        f.seek(off)
        hdr = bytearray(f.read(64))
        payload = f.read(length)
        new = change(payload)
        assert len(new) == length and new != payload
        struct.pack_into("<I", hdr, 12, cf.crc32c(new))
        struct.pack_into("<I", hdr, 60, cf.crc32c(bytes(hdr[:60])))
        f.seek(off)
        f.write(hdr + new)


def change_lz4_literal(p):
    """One byte of a literal run of an lz4 block changed (the block format:
    sequences of a token, literals, a 2-byte offset and a match length):
    the stream still decodes, to one other byte."""
    i = 0
    while i < len(p):
        token = p[i]
        i += 1
        litlen = token >> 4
        if litlen == 15:
            while True:
                litlen += p[i]
                i += 1
                if p[i - 1] != 255:
                    break
        if litlen >= 4:
            j = i + litlen // 2
            return p[:j] + bytes([p[j] ^ 0x20]) + p[j + 1:]
        i += litlen
        if i >= len(p):
            break
        i += 2                          # offset
        if token & 15 == 15:
            while p[i] == 255:
                i += 1
            i += 1
    raise AssertionError("no literal run of 4 bytes or more")


def gc_copies(server, d):
    store = os.path.join(d, "store")
    os.environ["NBDCAS_PACK_SIZE"] = str(256 * 1024)
    try:
        srv = serve(server, store, d, ["size=%d" % SIZE, "format=2",
                                       "compression=lz4", "gc=off"])
        try:
            with connection(srv) as h:
                for b in range(32):
                    h.pwrite(text_block(b), b * BS)
                h.flush()
                for b in range(16):
                    h.pwrite(text_block(1000 + b), b * BS)
                h.flush()
                tool("gc", store, "--max-unused", "0", check=0)
                for b in range(32):
                    want = text_block(1000 + b if b < 16 else b)
                    assert h.pread(BS, b * BS) == want, b
        finally:
            stopped(srv)
    finally:
        del os.environ["NBDCAS_PACK_SIZE"]
    recs = data_records(store)
    assert len({r[3] for r in recs}) == 32 and \
        all(r[4] & F_COMPRESSED for r in recs), [(r[2], r[4]) for r in recs]
    tool("fsck", store, "--full", check=0)


def params(server, d):
    store = os.path.join(d, "store")
    for value, want in (("foo", "compression: 'foo' is not a compression"),
                        ("zstd:99", "the zstd level must be a number from "
                         "1 to 19"),
                        ("zstd:0", "zstd level"), ("zstd:", "zstd level"),
                        ("zstd:3x", "zstd level"),
                        ("lz4:1", "'lz4:1' is not a compression")):
        fail(server, d, ["store=" + store, "size=1M",
                         "compression=" + value], want)
        assert not os.path.exists(store), "a bad value created the store"
    srv = serve(server, store, d, ["size=1M", "compression=lz4"])
    stopped(srv)
    for value, name in (("zstd", "zstd:3"), ("off", "off"),
                        ("zstd:1", "zstd:1")):
        fail(server, d, ["store=" + store, "compression=" + value],
             "compression=%s differs from the store's compression lz4 "
             "(it is fixed when the store is created)" % name)
    srv = serve(server, store, d, ["compression=lz4"])
    with connection(srv) as h:
        h.pwrite(text_block(1), 0)
    stopped(srv)
    # A RADOS store refuses it before connecting anywhere.
    fail(server, d, ["store=rados:pool/ns", "size=1M", "compression=lz4"],
         "a RADOS store (rados:pool/ns) does not support compression")


def fail(server, d, params, want):
    srv = nbdtest_server(server, params, d)
    try:
        rc = srv.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        srv.stop()
        raise AssertionError("server kept running with %s" % params)
    srv.proc = None
    srv.errf.close()
    log = srv.log()
    assert rc != 0, "exit status 0 with %s:\n%s" % (params, log)
    assert want in log, "%r not in:\n%s" % (want, log)


def nbdtest_server(server, params, d):
    import nbdtest
    srv = nbdtest.Server(server, "cas", params, d)
    if os.path.exists(srv.stderr_path):
        os.unlink(srv.stderr_path)
    return srv.start()


# ---- the tool ----

def tool_round_trip(d):
    store = os.path.join(d, "store")
    img = os.path.join(d, "img")
    with open(img, "wb") as f:
        for b in range(64):
            f.write(text_block(b) if b % 8 else rand_block(b))
        f.write(text_block(5) * 4)             # dedup inside the image
    tool("create", store, "--format", "2", "--compression", "zstd:1",
         check=0)
    tool("import", store, "v", img, "--create", check=0)
    tool("import", store, "w", img, "--create", check=0)
    out = os.path.join(d, "out")
    tool("export", store, "v", out, check=0)
    assert subprocess.run(["cmp", img, out]).returncode == 0
    s = stat_json(store)
    assert s["compression"] == "zstd:1", s
    assert s["data_chunks"] == 64 and s["compressed_chunks"] == 56, s
    assert s["compression_ratio"] > 1.5, s
    # Two identical volumes: every chunk is shared; per volume, dedup
    # inside it (68 blocks, 64 distinct).
    assert abs(s["dedup_ratio"] - 2 * 68 / 64) < 0.05, s
    for v in s["volume_list"]:
        assert v["data_chunks"] == 64 and v["unique_bytes"] == 0, v
        assert abs(v["dedup_ratio"] - 68 / 64) < 1e-3, v
        assert v["stored_bytes"] == s["data_stored_bytes"], (v, s)
    text = tool("stat", store, check=0).stdout
    assert "compression:    zstd:1" in text, text
    assert "compress ratio:" in text and "COMPR" in text, text
    text = tool("stat", store, "v", check=0).stdout
    assert "compress ratio:" in text, text
    tool("fsck", store, "--full", check=0)
    # --size on an existing store: another --compression is an error.
    p = tool("create", store, "--size", "1M", "--volume", "x",
             "--compression", "lz4", check=1)
    assert "has compression zstd:1, not lz4" in p.stderr, p.stderr
    tool("create", store, "--size", "1M", "--volume", "x",
         "--compression", "zstd:1", check=0)


def tool_bad_values(d):
    store = os.path.join(d, "store")
    for value, want in (("foo", "--compression: 'foo' is not a "
                         "compression"),
                        ("zstd:99", "--compression: 'zstd:99': the zstd "
                         "level must be a number from 1 to 19")):
        p = tool("create", store, "--compression", value, check=2)
        assert want in p.stderr, p.stderr
        assert not os.path.exists(store)
    p = tool("create", "rados:pool/ns", "--compression", "lz4", check=1)
    assert "does not support compression" in p.stderr, p.stderr


def tool_old_layout(d):
    """A store without compression is laid out as before the feature
    (flags and codec bytes zero), and still opens and reads; a feature
    bit this release does not know is refused by name, not as damage."""
    store = os.path.join(d, "store")
    img = os.path.join(d, "img")
    with open(img, "wb") as f:
        for b in range(8):
            f.write(text_block(b))
    tool("create", store, "--format", "2", "--compression", "off", check=0)
    tool("import", store, "v", img, "--create", check=0)
    with open(os.path.join(store, "superblock"), "rb") as f:
        sb = f.read(64)
    assert sb[20:24] == bytes(4) and sb[48:60] == bytes(12), sb.hex()
    # ... and at format version 2, which releases before compression read.
    assert struct.unpack_from("<I", sb, 8)[0] == 2, sb.hex()
    assert all(not r[4] & F_COMPRESSED for r in data_records(store))
    s = stat_json(store)
    assert s["compression"] == "off" and s["compressed_chunks"] == 0, s
    # A compressed store's superblock: flag bit 0, codec, level.
    c = os.path.join(d, "c")
    tool("create", c, "--format", "2", "--compression", "zstd:7", check=0)
    with open(os.path.join(c, "superblock"), "rb") as f:
        sb = f.read(64)
    assert struct.unpack_from("<I", sb, 20)[0] == 1 and sb[48] == 2 and \
        sb[49] == 7, sb.hex()
    # At format version 3: releases before the feature flags refuse it by
    # its version (they would read bytes 20..23 as reserved, serve it and
    # let their gc copy compressed records without their codec fields).
    assert struct.unpack_from("<I", sb, 8)[0] == 3, sb.hex()
    # Feature flags in a version-2 superblock (its CRC right): damaged.
    sbp = os.path.join(c, "superblock")
    with open(sbp, "r+b") as f:
        b = bytearray(sb)
        struct.pack_into("<I", b, 8, 2)
        struct.pack_into("<I", b, 60, cf.crc32c(bytes(b[:60])))
        f.write(b)
    p = tool("stat", c, check=1)
    assert "feature flags 0x1 in a version-2 store (damaged)" in p.stderr, \
        p.stderr
    # An unknown feature: refused, naming it, not called damaged.
    with open(sbp, "r+b") as f:
        b = bytearray(sb)
        struct.pack_into("<I", b, 20, 1 | 4)
        struct.pack_into("<I", b, 60, cf.crc32c(bytes(b[:60])))
        f.write(b)
    p = tool("stat", c, check=1)
    assert "features this program does not support (incompatible feature " \
        "flags 0x4" in p.stderr, p.stderr
    assert "damaged" not in p.stderr, p.stderr
    shutil.rmtree(c)


castest.run_cases(
    [("round trip, compression=off", round_trip("off")),
     ("round trip, compression=lz4", round_trip("lz4")),
     ("round trip, compression=zstd:3", round_trip("zstd:3")),
     ("damaged zstd records: EIO, fsck", damage_zstd),
     ("a forged lz4 record: verify=full, fsck --full", damage_lz4),
     ("gc copies compressed records", gc_copies),
     ("bad and mismatched compression= values", params)],
    [("create --compression, import, export, stat", tool_round_trip),
     ("bad --compression values", tool_bad_values),
     ("stores without compression: the old layout", tool_old_layout)])
