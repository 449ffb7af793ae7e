#!/usr/bin/python3
# cas store integrity (issue 9): what a damaged or forged store must never
# do to committed data, on every server that serves cas, and through the
# nbdcas tool.
#  - the index cache is a cache: a forged one (a version-1 mark or a
#    version-2 pack table pointing inside the last record, a wrong record
#    CRC, another store's cache) never cuts a pack and never hides data;
#  - a truncated pack: fsck names every volume and byte range that lost
#    data and fails; stat shows the healthy volumes and marks the others;
#    the server still serves the healthy volume;
#  - deduplication never trusts a damaged record: writing the same data
#    again (import, or a client through NBD) stores a good copy and heals
#    every volume; fsck --repair drops damaged records, heals from another
#    copy, and lists what it cannot;
#  - a read-only server (-r or readonly=true) writes nothing: the torn
#    tail and the index cache stay as they are, and a second read-only
#    server and nbdcas stat run beside it;
#  - a store without a volume named "default" is served by volume names;
#  - clear messages for a short superblock, an empty root, a symlink in
#    volumes/, and an import that fills the disk.
# The forged caches and the damaged data records are format 2's (version-1
# and version-2 index caches, data records found by their hash): those
# cases make format-2 stores.  A damaged unit of a format-4 store:
# test-cas-v4.py.

import os
import re
import shutil
import sys

import nbd

sys.path.insert(0, os.environ.get("srcdir", os.path.dirname(__file__)))
import casformat as cf  # noqa: E402
import nbdtest  # noqa: E402

from castest import (BS, MiB, check_reads, connection, image,  # noqa
                     make_store, read_volume, run_cases, serve, stopped,
                     tool)


def last_record(store):
    pack = cf.packs(store)[-1]
    return pack, list(cf.records(pack))[-1]


# ---- the index cache is never trusted to cut or hide ----

def forged_cache(server, d, forge):
    a = image(d, "a.img", 2 * MiB, 1)
    b = image(d, "b.img", 1 * MiB, 2)
    vols = {"a": a, "b": b}
    store = make_store(d, vols, fmt=2)
    pack, (off, typ, length, h) = last_record(store)
    size = os.path.getsize(pack)
    forge(store, pack, off, length)
    check_reads(server, store, d, vols)
    assert os.path.getsize(pack) == size, \
        "the pack was cut from %d to %d bytes" % (size, os.path.getsize(pack))
    p = tool("fsck", store, check=0)
    assert "clean" in p.stdout, p.stdout


def forge_v1_mid_record(store, pack, off, length):
    # The case: a CRC-valid cache whose high-water mark lies
    # inside the last record (the root map node of volume b).
    cf.write_index_v1(os.path.join(store, "index"), 1, off + 100,
                      cf.index_entries(store))


def forge_v2_mid_record(store, pack, off, length):
    size = os.path.getsize(pack)
    cf.write_index(os.path.join(store, "index"), cf.store_uuid(store),
                   {1: (off + 64, size, off, cf.record_header_crc(pack, off))},
                   cf.index_entries(store))


def forge_v2_wrong_record(store, pack, off, length):
    size = os.path.getsize(pack)
    crc = cf.record_header_crc(pack, off) ^ 1
    cf.write_index(os.path.join(store, "index"), cf.store_uuid(store),
                   {1: (off + cf.record_size(length), size, off, crc)},
                   cf.index_entries(store))


def foreign_cache(server, d):
    a = image(d, "a.img", 2 * MiB, 1)
    vols = {"a": a}
    store = make_store(d, vols)
    other = os.path.join(d, "other")
    tool("create", other, check=0)
    tool("import", other, "x", image(d, "x.img", 3 * MiB, 9), "--create",
         check=0)
    shutil.copy(os.path.join(other, "index"), os.path.join(store, "index"))
    p = tool("fsck", store, check=0)
    assert re.search(r"index cache: not usable \(of another store", p.stdout), \
        p.stdout
    check_reads(server, store, d, vols)
    # The server rewrote the cache on its clean exit: usable again.
    p = tool("fsck", store, check=0)
    assert "index cache" not in p.stdout, p.stdout


# ---- a truncated pack ----

def truncated_pack(server, d):
    a = image(d, "a.img", 2 * MiB, 1)
    b = image(d, "b.img", 2 * MiB, 2)
    store = make_store(d, {"a": a, "b": b})
    pack = cf.packs(store)[-1]
    recs = list(cf.records(pack))
    # Cut in the middle of b's data: a's records come first.
    cut = recs[len(recs) * 3 // 4][0] + 1000
    os.truncate(pack, cut)
    p = tool("fsck", store, check=1)
    assert re.search(r"index cache: not usable \(pack 1 is %d bytes but was "
                     r"\d+ when the index cache was saved" % cut, p.stdout), \
        p.stdout
    assert re.search(r"volume 'b' blocks? [\d-]+ \(bytes \d+-\d+.*\): lost:",
                     p.stdout), p.stdout
    assert re.search(r"volume 'b': \d+ of 32 blocks lost", p.stdout), p.stdout
    assert "volume 'a'" not in p.stdout, p.stdout
    assert "1 volume lost" in p.stdout.splitlines()[-1], p.stdout
    p = tool("stat", store, check=1)
    # SIZE MAPPED STORED UNIQUE DEDUP COMPR STATUS
    assert re.search(r"^a +2\.0 MiB +2\.0 MiB +2\.0 MiB +2\.0 MiB +1\.00 "
                     r"+1\.00 +ok$", p.stdout, re.M), p.stdout
    assert re.search(r"^b +- +- +- +- +- +- +DAMAGED: ", p.stdout, re.M), \
        p.stdout
    # The healthy volume is served whole; a lost block of b is EIO.
    srv = serve(server, store, d, ["volume=a"])
    try:
        with open(a, "rb") as f:
            assert read_volume(srv, "a", 2 * MiB) == f.read()
        with connection(srv, "b") as h:
            nbdtest.expect_error("EIO", h.pread, BS, 2 * MiB - BS)
    finally:
        stopped(srv)


# ---- deduplication never trusts a damaged record ----

def damage_data_record(store, img):
    """Flip a payload byte of a data record holding a block of img."""
    with open(img, "rb") as f:
        first = f.read(BS)
    want = cf.sha256(first)
    for pack in cf.packs(store):
        for off, typ, length, h in cf.records(pack):
            if typ == 1 and h == want:
                cf.flip(pack, off + 64 + 100)
                return
    raise AssertionError("no record of block 0 found")


def import_heals(d):
    a = image(d, "a.img", 2 * MiB, 1)
    store = make_store(d, {"a": a}, fmt=2)
    damage_data_record(store, a)
    tool("fsck", store, check=1)
    # A fresh volume of the same image: the damaged chunk is stored again.
    p = tool("-v", "import", store, "a2", a, "--create", check=0)
    m = re.search(r"\((\d+) new chunks\)", p.stderr)
    assert m and int(m.group(1)) >= 1, p.stderr
    for vol in ("a", "a2"):
        out = os.path.join(d, vol + ".out")
        tool("export", store, vol, out, check=0)
        with open(a, "rb") as f, open(out, "rb") as g:
            assert f.read() == g.read(), "volume %s differs" % vol
    p = tool("fsck", store, check=0)
    assert "no volume lost data from it" in p.stdout, p.stdout


def nbd_write_heals(server, d):
    a = image(d, "a.img", 2 * MiB, 1)
    store = make_store(d, {"a": a}, fmt=2)
    damage_data_record(store, a)
    with open(a, "rb") as f:
        data = f.read()
    srv = serve(server, store, d, ["volume=a"])
    try:
        # The same bytes written again, before anything read the damaged
        # record (a read would have dropped it from the index already):
        # the write itself must not trust it.
        with connection(srv, "a") as h:
            h.pwrite(data[:BS], 0)
            h.flush()
            assert h.pread(BS, 0) == data[:BS]
    finally:
        stopped(srv)
    check_reads(server, store, d, {"a": a})
    tool("fsck", store, check=0)


def repair(d):
    a = image(d, "a.img", 2 * MiB, 1)
    store = make_store(d, {"a": a}, fmt=2)
    damage_data_record(store, a)
    # No other copy: repair says what is lost and how to heal it.
    p = tool("fsck", store, "--repair", check=1)
    assert re.search(r"still lost after repair", p.stdout), p.stdout
    assert re.search(r"volume 'a' block 0 \(bytes 0-65535\): lost: data "
                     r"chunk is (damaged|missing)", p.stdout), p.stdout
    assert "write the same data again" in p.stdout, p.stdout
    tool("import", store, "a", a, check=0)
    tool("fsck", store, check=0)
    # A good copy elsewhere in the store: repair heals from it.
    pack = cf.packs(store)[-1]
    off, typ, length, h = next(r for r in cf.records(pack) if r[1] == 1)
    with open(pack, "rb") as f:
        f.seek(off)
        rec = f.read(cf.record_size(length))
    with open(pack, "ab") as f:
        f.write(rec)
    cf.flip(pack, off + 64 + 7)
    p = tool("fsck", store, "--repair", check=0)
    assert "still lost" not in p.stdout, p.stdout
    tool("fsck", store, "--full", check=0)


# ---- a read-only server writes nothing ----

def readonly_writes_nothing(server, d, spelling):
    a = image(d, "a.img", 2 * MiB, 1)
    store = make_store(d, {"a": a})
    pack = cf.packs(store)[-1]
    with open(pack, "ab") as f:             # a torn append after a crash
        f.write(b"\x43\x52\x45\x43" + os.urandom(300))
    size = os.path.getsize(pack)
    with open(os.path.join(store, "index"), "rb") as f:
        index = f.read()
    ro = spelling == "-r"
    params = ["volume=a"] + ([] if ro else ["readonly=true"])
    d2 = os.path.join(d, "second")
    os.mkdir(d2)
    srv = serve(server, store, d, params, readonly=ro)
    try:
        # Shared lock: the tool and a second read-only server run beside.
        tool("stat", store, check=0)
        srv2 = serve(server, store, d2, params, readonly=ro)
        try:
            with connection(srv2, "a") as h:
                assert h.is_read_only()
        finally:
            stopped(srv2)
        with open(a, "rb") as f:
            assert read_volume(srv, "a", 2 * MiB) == f.read()
        with connection(srv, "a") as h:
            assert h.is_read_only()
    finally:
        stopped(srv)
    assert os.path.getsize(pack) == size, "the torn tail was cut"
    with open(os.path.join(store, "index"), "rb") as f:
        assert f.read() == index, "the index cache was rewritten"


# ---- a store without a "default" volume ----

def no_default_volume(server, d):
    a = image(d, "a.img", 1 * MiB, 1)
    store = make_store(d, {"vm1": a})
    srv = serve(server, store, d)
    try:
        h = nbd.NBD()
        h.set_opt_mode(True)
        h.connect_unix(srv.sock)
        names = []
        h.opt_list(lambda name, desc: names.append(name) or 0)
        h.opt_abort()
        assert "vm1" in names, names
        try:
            with connection(srv, ""):
                raise AssertionError("the default export was served")
        except nbd.Error:
            pass
        with open(a, "rb") as f:
            assert read_volume(srv, "vm1", MiB) == f.read()
    finally:
        stopped(srv)
    assert "connect to a volume by its export name ('vm1')" in srv.log(), \
        srv.log()
    # An explicit volume= that does not exist is refused at start, naming
    # the store's volumes; creating one on a read-only store says why not.
    for params, want in ((["volume=nope"], "(its volumes: 'vm1')"),
                         (["volume=new", "size=1M", "readonly=true"],
                          "opened read-only (readonly=true)")):
        bad = nbdtest.Server(server, "cas", ["store=" + store] + params, d)
        bad.start()
        rc = bad.proc.wait(timeout=60)
        bad.proc = None
        bad.errf.close()
        assert rc != 0 and want in bad.log(), (rc, bad.log())


# ---- messages ----

def messages(d):
    store = make_store(d, {"good": image(d, "a.img", MiB, 1)})
    open(os.path.join(store, "volumes", "empty"), "w").close()
    os.symlink("/etc/passwd", os.path.join(store, "volumes", "evil"))
    p = tool("list", store, check=1)
    assert p.stdout.startswith("good\t"), p.stdout
    assert re.search(r"volume root \S+/empty is truncated: 0 of 128 bytes",
                     p.stderr), p.stderr
    assert re.search(r"volume root \S+/evil is a symbolic link: refused",
                     p.stderr), p.stderr
    p = tool("create", store, "--size", "1M", "--volume", "evil", check=1)
    assert "already exists" in p.stderr, p.stderr
    sb = os.path.join(store, "superblock")
    shutil.copy(sb, sb + ".bak")
    with open(sb, "r+b") as f:
        f.truncate(10)
    p = tool("list", store, check=1)
    assert re.search(r"superblock \S+ is truncated: 10 of 64 bytes",
                     p.stderr), p.stderr
    os.replace(sb + ".bak", sb)
    p = tool("create", os.path.join(d, "x"), "--size", "2P", check=2)
    assert "--size=2P: must be a size from 1 to 1P" in p.stderr, p.stderr


def import_full_disk(d):
    store = make_store(d, {"small": image(d, "s.img", MiB, 3)})
    big = image(d, "big.img", 8 * MiB, 4)
    env = {"LD_PRELOAD": nbdtest.preload(os.environ["FAULTSHIM"]),
           "FAULT_PATH": os.path.join(store, "packs"),
           "FAULT_ERRNO": "ENOSPC", "FAULT_AFTER": "40", "FAULT_OPS": "write"}
    p = tool("import", store, "big", big, "--create", env=env)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "the disk holding the store is full" in p.stderr, p.stderr
    assert re.search(r"run again: \S+ import \S+ big \S+big\.img", p.stderr), \
        p.stderr
    # Room again: the same command without --create finishes the job.
    tool("import", store, "big", big, check=0)
    out = os.path.join(d, "big.out")
    tool("export", store, "big", out, check=0)
    with open(big, "rb") as f, open(out, "rb") as g:
        assert f.read() == g.read()
    tool("fsck", store, check=0)


def interrupted_creation(server, d):
    # What a power cut during store creation leaves before the superblock
    # is there: the empty directories (and maybe the superblock's temp
    # file).  The next start with size= creates the store there.
    store = os.path.join(d, "store")
    for sub in ("", "packs", "volumes", "snapshots"):
        os.mkdir(os.path.join(store, sub))
    open(os.path.join(store, ".superblock.tmp"), "wb").close()
    srv = serve(server, store, d, ["size=1M"])
    try:
        with connection(srv) as h:
            h.pwrite(b"x" * 4096, 0)
            h.flush()
    finally:
        stopped(srv)
    tool("fsck", store, check=0)
    # Anything else there is still refused.
    other = os.path.join(d, "other")
    os.makedirs(os.path.join(other, "packs"))
    open(os.path.join(other, "packs", "x"), "w").close()
    p = tool("create", other, check=1)
    assert "not a cas store (no superblock) and is not empty" in p.stderr, \
        p.stderr


def main():
    per_server = [
        ("index cache v1 marked inside the last record: no cut",
         lambda s, d: forged_cache(s, d, forge_v1_mid_record)),
        ("index cache v2 covering half a record: ignored",
         lambda s, d: forged_cache(s, d, forge_v2_mid_record)),
        ("index cache v2 naming the wrong record: ignored",
         lambda s, d: forged_cache(s, d, forge_v2_wrong_record)),
        ("index cache of another store: ignored", foreign_cache),
        ("truncated pack: lost ranges named, healthy volume served",
         truncated_pack),
        ("writing good data through NBD heals a damaged record",
         nbd_write_heals),
        ("-r writes nothing, shares the store",
         lambda s, d: readonly_writes_nothing(s, d, "-r")),
        ("readonly=true writes nothing, shares the store",
         lambda s, d: readonly_writes_nothing(s, d, "readonly=true")),
        ("no default volume: served by name", no_default_volume),
        ("an interrupted store creation is completed", interrupted_creation),
    ]
    tool_only = [
        ("import heals a damaged record", import_heals),
        ("fsck --repair heals from a copy, lists the rest", repair),
        ("messages: truncated files, symlinks, sizes", messages),
        ("import on a full disk says so and how to finish", import_full_disk),
    ]
    run_cases(per_server, tool_only)


main()
