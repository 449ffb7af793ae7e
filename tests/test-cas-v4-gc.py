#!/usr/bin/python3
# Garbage collection, fsck and stat of a format-4 store (4 KiB units in
# extents, block descriptors in the map: FORMAT.md "Format version 4"),
# on every server that serves cas and through the nbdcas tool offline:
#  - overwrites, then gc: the packs shrink to within 10% of the live
#    data, every byte reads back, also after kill -9;
#  - snapshots, a clone and a second volume deleted, then gc: what is
#    still referenced stays, byte for byte; what was only theirs goes;
#  - the new-copy rule for extents, made deterministic by pausing gc
#    between mark and sweep (test point gc-marked): data that was only in
#    garbage extents, written again, survives the sweep and a kill -9;
#  - 4 clients write (sub-block, whole blocks, duplicates) and flush
#    while gc runs again and again: the volume matches the model;
#  - kill -9 of the server during gc, and of the tool at 20+ points
#    across gc's phases: everything reads back, fsck --full is clean, a
#    second gc finishes the job; ENOSPC and EIO during gc lose nothing
#    (these cases are shared with test-cas-gc.py: gctest.py);
#  - gc=auto gives the space back by itself;
#  - a damaged block descriptor stops gc before it removes anything;
#  - fsck names a damaged unit (with its extent's pack and offset) and a
#    missing extent; a torn newer copy of an extent (a collection's copy
#    a power cut tore) hides nothing; gc keeps the pack of a damaged referenced extent;
#    fsck --repair changes nothing about extents and loses nothing;
#  - stat: units, extents, the dedup and compression ratios, what a
#    volume alone references; gc of a store that compresses (lz4).

import json
import os
import random
import re
import struct
import sys

sys.path.insert(0, os.environ.get("srcdir", os.path.dirname(__file__)))
import casformat  # noqa: E402
import gctest  # noqa: E402
import nbdtest  # noqa: E402
from castest import (BS, MiB, connection, read_volume,  # noqa: E402
                     run_cases, stopped, tool)
from gctest import (SIZE, check_gc, du_packs, overwrite,  # noqa: E402
                    referenced)

# Format 4, and sub-block writes among the writers' (units of a block
# kept by reference while others change).
FLAVOUR = gctest.Flavour(params=["format=4"], create=["--format", "4"],
                         lengths=[512, 4096, BS, 2 * BS])
EXTENT = 4                      # record type
SLOT_ENTRY = 40


def new_server(server, d, **kw):
    return gctest.new_server(FLAVOUR, server, d, **kw)


def prepared_store(d, seed):
    return gctest.prepared_store(FLAVOUR, d, seed)


def stat_json(store, *args):
    return json.loads(tool("stat", store, *args, "--json", check=0).stdout)


def fsck_clean(store):
    p = tool("fsck", store, "--full", check=0)
    assert "extents" in p.stdout, p.stdout


def extent_records(store):
    """(pack file, offset, eid, nslots, present, length) of every intact
    extent record header, in pack order."""
    for p in casformat.packs(store):
        for off, typ, length, h in casformat.records(p):
            if typ == EXTENT:
                eid, = struct.unpack_from("<Q", h, 0)
                present, = struct.unpack_from("<H", h, 10)
                yield p, off, eid, h[8], present, length


# ---- space comes back ----

def overwrite_heavy(server, d):
    rnd = random.Random(1)
    model = bytearray(SIZE)
    srv, store = new_server(server, d)
    try:
        with connection(srv) as h:
            overwrite(h, rnd, model, 5)
            # Sub-block writes too: units of a block kept by reference.
            for _ in range(200):
                off = rnd.randrange(0, SIZE - 512) // 512 * 512
                data = rnd.randbytes(512)
                h.pwrite(data, off)
                model[off:off + 512] = data
            h.flush()
        before = du_packs(store)
        p = tool("gc", store, check=0)
        assert "gave back" in p.stdout, p.stdout
        check_gc(store, referenced(store))
        assert du_packs(store) < before / 3, (before, du_packs(store))
        assert read_volume(srv, "", SIZE) == bytes(model)
        srv.kill9()
        srv.start().ready()
        assert read_volume(srv, "", SIZE) == bytes(model)
    finally:
        stopped(srv)
    fsck_clean(store)


def history_then_gc(server, d):
    rnd = random.Random(2)
    model = bytearray(SIZE)
    srv, store = new_server(server, d)
    try:
        with connection(srv) as h:
            overwrite(h, rnd, model, 1)
            tool("snapshot", store, "default", "s1", check=0)
            s1 = bytes(model)
            overwrite(h, rnd, model, 1)
            tool("snapshot", store, "default", "s2", check=0)
            s2 = bytes(model)
            # Half of it again, in 64 KiB pieces at odd places.
            for off in range(0, SIZE, 2 * BS):
                data = rnd.randbytes(BS)
                model[off + 4096:off + 4096 + BS] = data
                h.pwrite(data, off + 4096)
            h.flush()
        tool("clone", store, "default@s2", "c", check=0)
        tool("create", store, "--size", str(4 * MiB), "--volume", "other",
             check=0)
        other = rnd.randbytes(4 * MiB)
        with connection(srv, "other") as h:
            h.pwrite(other, 0)
            h.flush()
        tool("gc", store, check=0)
        # Everything is referenced: s1, s2, the half of the volume written
        # since, the other volume.
        assert du_packs(store) > (16 + 16 + 8 + 4) * MiB, du_packs(store)
        assert read_volume(srv, "default@s1", SIZE) == s1
        assert read_volume(srv, "other", 4 * MiB) == other
        assert read_volume(srv, "c", SIZE) == s2
        before = du_packs(store)
        tool("delete", store, "other", check=0)
        tool("delete", store, "default@s1", check=0)
        tool("gc", store, check=0)
        assert du_packs(store) < before - SIZE, (before, du_packs(store))
        # s2 is the clone's content: still referenced.
        assert read_volume(srv, "default@s2", SIZE) == s2
        assert read_volume(srv, "c", SIZE) == s2
        tool("delete", store, "default@s2", check=0)
        tool("delete", store, "c", check=0)
        tool("gc", store, "--max-unused", "0", check=0)
        check_gc(store, referenced(store))
        assert read_volume(srv, "", SIZE) == bytes(model)
    finally:
        stopped(srv)
    fsck_clean(store)


# ---- fsck ----

def lost_blocks(stdout):
    """The block numbers fsck says are lost (single blocks and ranges)."""
    blocks = set()
    for m in re.finditer(r"block (\d+) \(bytes", stdout):
        blocks.add(int(m.group(1)))
    for m in re.finditer(r"blocks (\d+)-(\d+) \(bytes", stdout):
        blocks.update(range(int(m.group(1)), int(m.group(2)) + 1))
    return blocks


def fsck_damaged_unit(d):
    store, model = prepared_store(d, 11)
    # The first extent the volume still references (the table names
    # the last copy of an id): damage a byte of its first unit.
    live = {}
    for rec in extent_records(store):
        live[rec[2]] = rec
    out = tool("stat", store, "--json", check=0)
    assert json.loads(out.stdout)["referenced_extents"] > 0
    victims = sorted(live.values(), key=lambda r: (r[0], r[1]))
    for packfile, off, eid, n, present, length in victims:
        # An extent of the last import is certainly referenced: take one
        # from the newest pack.
        if packfile == casformat.packs(store)[-1]:
            break
    pack = casformat.pack_number(packfile)
    casformat.flip(packfile, off + 64 + n * SLOT_ENTRY + 100)
    for full in ((), ("--full",)):
        p = tool("fsck", store, *full, check=1)
        assert "extent is damaged" in p.stdout, p.stdout
        assert "extent %d" % eid in p.stdout, p.stdout
        assert "pack %d offset %d" % (pack, off) in p.stdout, p.stdout
        bad = lost_blocks(p.stdout)
        assert bad, p.stdout
    lost = set(bad)
    # gc keeps the pack of a damaged extent that is referenced (whether
    # the pack was chosen for a rewrite or not).
    p = tool("gc", store, "--max-unused", "0")
    assert os.path.exists(packfile), p.stderr
    # --repair reports and changes nothing about extents.
    p = tool("fsck", store, "--repair", check=1)
    assert "damaged extent record" in p.stdout, p.stdout
    p = tool("fsck", store, check=1)
    assert lost_blocks(p.stdout) == lost, p.stdout
    # Every block fsck does not name reads back exactly.
    srv = nbdtest.Server("minnbd", "cas", ["store=" + store, "volume=v"], d)
    srv.start().ready()
    try:
        with connection(srv) as h:
            for b in range(SIZE // BS):
                if b in lost:
                    try:
                        h.pread(BS, b * BS)
                        assert False, "block %d reads despite damage" % b
                    except Exception as e:
                        assert "Input/output error" in str(e) or \
                            "EIO" in str(e), e
                    continue
                assert h.pread(BS, b * BS) == model[b * BS:(b + 1) * BS], b
    finally:
        stopped(srv)


def fsck_missing_extent(d):
    store, model = prepared_store(d, 12)
    packfile = casformat.packs(store)[-1]
    recs = [r for r in extent_records(store) if r[0] == packfile]
    assert len(recs) > 2, recs
    _, off, eid, n, present, length = recs[1]
    # Damage the header's extent id: the record no longer reads as
    # extent eid, so the extent table has no such extent.
    casformat.flip(packfile, off + 16, 0x01)
    p = tool("fsck", store, check=1)
    assert "extent is missing: extent %d" % eid in p.stdout, p.stdout
    assert lost_blocks(p.stdout), p.stdout
    # gc refuses to remove what it cannot name: the pack stays.
    tool("gc", store, "--max-unused", "0")
    assert os.path.exists(packfile)


def append_map_node(store, payload):
    """Append a map node record (type 2) holding payload to the newest
    pack, as the store writes one (FORMAT.md "Pack files"): its hash."""
    h = casformat.sha256(payload)
    hdr = struct.pack("<IBBHII", casformat.RECORD_MAGIC, casformat.MAPNODE,
                      0, 0, len(payload), casformat.crc32c(payload)) + h
    hdr += bytes(60 - len(hdr))
    hdr += struct.pack("<I", casformat.crc32c(hdr))
    packfile = casformat.packs(store)[-1]
    with open(packfile, "r+b") as f:
        end = f.seek(0, 2)
        assert end % 8 == 0, end
        f.write(hdr + payload + bytes(-len(payload) % 8))
    return h


def damaged_descriptor(d):
    # A leaf slot that is not a valid descriptor (its run count 7): gc
    # stops before it removes anything; fsck names the block.
    store = os.path.join(d, "dd")
    tool("create", store, "--format", "4", "--size", str(4 * MiB),
         "--volume", "v", check=0)
    img = os.path.join(d, "img")
    with open(img, "wb") as f:
        f.write(random.Random(15).randbytes(4 * MiB))
    tool("import", store, "v", img, check=0)
    tool("import", store, "v", img, check=0)        # garbage map nodes
    rootfile = os.path.join(store, "volumes", "v")
    with open(rootfile, "rb") as f:
        root = bytearray(f.read())
    leaf = bytes(root[40:72])
    for packfile in casformat.packs(store):
        for off, typ, length, h in casformat.records(packfile):
            if typ == casformat.MAPNODE and h == leaf:
                with open(packfile, "rb") as f:
                    f.seek(off + 64)
                    payload = bytearray(f.read(length))
    payload[5 * 32] = 7
    root[40:72] = append_map_node(store, bytes(payload))
    root[124:128] = struct.pack("<I", casformat.crc32c(bytes(root[:124])))
    with open(rootfile, "wb") as f:
        f.write(root)
    before = sorted(os.listdir(os.path.join(store, "packs")))
    du = du_packs(store)
    p = tool("gc", store, "--max-unused", "0", check=1)
    assert "block 5: its descriptor" in p.stderr, p.stderr
    assert "cannot be read" in p.stderr, p.stderr
    assert sorted(os.listdir(os.path.join(store, "packs"))) == before
    assert du_packs(store) == du
    p = tool("fsck", store, check=1)
    assert re.search(r"block 5 \(bytes \d+-\d+\): lost: block descriptor "
                     r"is damaged", p.stdout), p.stdout
    assert lost_blocks(p.stdout) == {5}, p.stdout


def torn_copy(d):
    # What a collection's copy torn by a power cut before its sync looks
    # like: a second record of an extent id, newer, its header and slot
    # table intact, a unit not.  It must not hide the intact original:
    # reads, fsck and the next collection use the original.
    store, model = prepared_store(d, 14)
    packfile = casformat.packs(store)[-1]
    recs = [r for r in extent_records(store) if r[0] == packfile]
    _, off, eid, n, present, length = recs[0]
    with open(packfile, "rb") as f:
        f.seek(off)
        raw = f.read(casformat.record_size(length))
    with open(packfile, "r+b") as f:
        end = f.seek(0, 2)
        assert end % 8 == 0, end
        f.write(raw)
    casformat.flip(packfile, end + 64 + n * SLOT_ENTRY + 100)
    gctest.check_store(store, model, d)
    tool("gc", store, "--max-unused", "0", check=0)
    gctest.check_store(store, model, d)
    p = tool("fsck", store, check=0)
    assert "damaged" not in p.stdout, p.stdout


# ---- stat ----

def stat_v4(d):
    store = os.path.join(d, "st")
    tool("create", store, "--format", "4", "--size", str(4 * MiB),
         "--volume", "a", check=0)
    rnd = random.Random(13)
    one = rnd.randbytes(MiB)
    img = bytearray(4 * MiB)
    img[0:MiB] = one
    img[2 * MiB:3 * MiB] = one             # a duplicate of the first MiB
    img[3 * MiB + 8192:3 * MiB + 12288] = rnd.randbytes(4096)  # one unit
    path = os.path.join(d, "img")
    with open(path, "wb") as f:
        f.write(img)
    tool("import", store, "a", path, check=0)
    s = stat_json(store)
    assert s["format_version"] == 4, s
    assert s["units"] == 257, s
    assert s["data_chunks"] == 257, s
    assert s["data_raw_bytes"] == 257 * 4096, s
    assert s["nonzero_bytes"] == 2 * MiB + 4096, s
    assert abs(s["dedup_ratio"] - (2 * MiB + 4096) / (257 * 4096)) < 0.01, s
    assert s["referenced_extents"] >= 17, s
    assert s["extents"] >= s["referenced_extents"], s
    assert s["extent_table_bytes"] > 0, s
    for k in ("hooks", "hook_bytes", "stored_units",
              "unreferenced_unit_bytes_in_referenced_extents"):
        assert k in s, (k, s)
    v = s["volume_list"][0]
    assert v["name"] == "a" and v["nonzero_bytes"] == 2 * MiB + 4096, v
    assert v["unique_bytes"] >= 257 * 4096, v
    # A snapshot shares everything: nothing is the volume's alone.
    tool("snapshot", store, "a", "s", check=0)
    s = stat_json(store)
    assert all(r["unique_bytes"] == 0 for r in s["volume_list"]), s
    vs = stat_json(store, "a")
    assert vs["data_chunks"] == 257 and vs["nonzero_bytes"] == 2 * MiB + 4096
    # Text output too.
    p = tool("stat", store, check=0)
    assert re.search(r"referenced: +257 in \d+ extents", p.stdout), p.stdout
    assert "extent memory:" in p.stdout, p.stdout


def dead_units_kept(d):
    # One unit of every block rewritten: each old extent keeps 15 live
    # units and one dead one.  gc copies such extents whole (no
    # compaction), stat shows the dead units apart, and a second gc
    # finds nothing to do (dead units inside live extents do not count
    # as unused: rewriting could not shrink them).
    store = os.path.join(d, "du")
    tool("create", store, "--format", "4", "--size", str(MiB), "--volume",
         "v", check=0)
    rnd = random.Random(17)
    model = bytearray(rnd.randbytes(MiB))
    img = os.path.join(d, "img")
    with open(img, "wb") as f:
        f.write(model)
    tool("import", store, "v", img, check=0)
    for b in range(MiB // BS):
        model[b * BS + 3 * 4096:b * BS + 4 * 4096] = rnd.randbytes(4096)
    with open(img, "wb") as f:
        f.write(model)
    tool("import", store, "v", img, check=0)
    s = stat_json(store)
    assert s["units"] == MiB // 4096, s
    dead = s["unreferenced_unit_bytes_in_referenced_extents"]
    assert dead == (MiB // BS) * 4096, s
    tool("gc", store, "--max-unused", "0", check=0)
    gctest.check_store(store, bytes(model), d)
    s = stat_json(store)
    assert s["unreferenced_unit_bytes_in_referenced_extents"] == dead, s
    p = tool("gc", store, "--max-unused", "0", check=0)
    assert "0 packs removed and 0 rewritten" in p.stdout, p.stdout
    gctest.check_store(store, bytes(model), d)


def compressed_gc(d):
    # lz4: compressible units are stored compressed; gc checks them
    # (CRC, and that they decode) before it copies their extents, and
    # stat's compression ratio is raw over stored bytes of the units.
    store = os.path.join(d, "cz")
    tool("create", store, "--format", "4", "--compression", "lz4",
         "--size", str(SIZE), "--volume", "v", check=0)
    rnd = random.Random(16)
    img = os.path.join(d, "img")
    model = bytearray(SIZE)
    for r in range(3):
        for off in range(0, SIZE, MiB):
            if rnd.random() < 0.6:
                # Compressible (a 512-byte random pattern repeated, new
                # each unit) or random, half and half.
                for u in range(off, off + MiB, 4096):
                    model[u:u + 4096] = (rnd.randbytes(512) * 8
                                         if (u // 4096) % 2 else
                                         rnd.randbytes(4096))
        with open(img, "wb") as f:
            f.write(model)
        tool("import", store, "v", img, check=0)
    s = stat_json(store)
    assert s["compressed_chunks"] > 0, s
    assert s["compression_ratio"] > 1.3, s
    before = du_packs(store)
    tool("gc", store, "--max-unused", "0", check=0)
    assert du_packs(store) < before, (before, du_packs(store))
    check_gc(store, referenced(store))
    gctest.check_store(store, bytes(model), d)
    after = stat_json(store)
    assert after["data_stored_bytes"] == s["data_stored_bytes"], (s, after)


def main():
    per_server = [
        ("v4: overwrites, gc brings the packs within 10% of the live data",
         overwrite_heavy),
        ("v4: snapshots, clone, deleted volume: gc keeps what is referenced",
         history_then_gc),
        ("v4: units written again between mark and sweep survive",
         lambda s, d: gctest.dedup_race(FLAVOUR, s, d)),
        ("v4: 4 writers with flushes while gc runs: data as the model",
         lambda s, d: gctest.writers_during_gc(FLAVOUR, s, d)),
        ("v4: kill -9 of the server during gc",
         lambda s, d: gctest.kill_server_during_gc(FLAVOUR, s, d)),
        ("v4: gc=auto gives the space back by itself",
         lambda s, d: gctest.automatic_gc(FLAVOUR, s, d)),
    ]
    tool_only = [
        ("v4: kill -9 of gc at 20+ points: nothing lost, gc finishes later",
         lambda d: gctest.kill_tool_during_gc(FLAVOUR, d)),
        ("v4: ENOSPC and EIO during gc: a message, nothing lost",
         lambda d: gctest.faults_during_gc(FLAVOUR, d)),
        ("v4: fsck names a damaged unit; gc keeps its pack; repair loses "
         "nothing", fsck_damaged_unit),
        ("v4: fsck names a missing extent", fsck_missing_extent),
        ("v4: a torn newer copy of an extent hides nothing", torn_copy),
        ("v4: a damaged block descriptor stops gc; fsck names it",
         damaged_descriptor),
        ("v4: stat counts units, extents and ratios", stat_v4),
        ("v4: lz4: gc copies compressed extents; stat's ratio",
         compressed_gc),
        ("v4: dead units in live extents: copied whole, shown by stat, "
         "no pointless rewrite", dead_units_kept),
    ]
    run_cases(per_server, tool_only)


main()
