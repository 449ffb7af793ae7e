#!/usr/bin/python3
# cas history (issue 11): snapshots, clones, delete, rename, diff and the
# nbdcas:changed metadata context, on every server that serves cas, with
# the nbdcas commands run beside the server (through its control socket)
# and offline.
#  - a snapshot taken while a client has unflushed writes holds them, and
#    survives kill -9 of the server;
#  - snapshots are listed (with when they were taken) and served
#    read-only: writes, trims and zeroes are refused with EPERM;
#  - clones are independent both ways; a clone of a clone of a snapshot
#    works; deleting the snapshot later changes neither;
#  - delete and rename refuse what a client has open, work otherwise;
#    a volume's snapshots follow it through a rename;
#  - diff is exact (against a block-by-block compare of two exports) and
#    reads only the changed part of the map (a 1 PiB volume);
#  - nbdcas:changed:SNAP through libnbd and qemu-img map (minnbd; nbdkit
#    1.32 cannot serve extra contexts, and does not list it);
#  - kill -9 in the middle of a snapshot, clone, delete or rename: after
#    the next open the operation is done or not, fsck is clean, no byte
#    is lost;
#  - hostile names are refused with a clear message;
#  - a store made before snapshots existed opens and takes them.

import os
import re
import signal
import subprocess
import sys

import nbd

sys.path.insert(0, os.environ.get("srcdir", os.path.dirname(__file__)))
import casformat as cf  # noqa: E402
import nbdtest  # noqa: E402
from castest import (BS, MiB, NBDCAS, connection, image,  # noqa: E402
                     make_store, read_volume, run_cases, serve, stopped,
                     tool)

SIZE = 8 * MiB


def export_names(srv):
    """{name: description} of the server's exports."""
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(srv.sock)
    out = {}
    h.opt_list(lambda name, desc: out.__setitem__(name, desc) or 0)
    h.opt_abort()
    return out


def write_random(h, rnd, model, n_ops, size):
    """Random writes (some partial blocks, some zeroes) into h and the
    model."""
    for _ in range(n_ops):
        n = rnd.choice([512, 4096, BS, 3 * BS + 100, 200000])
        off = rnd.randrange(0, size - n)
        if rnd.random() < 0.15:
            h.zero(n, off)
            model[off:off + n] = bytes(n)
        else:
            data = rnd.randbytes(n)
            h.pwrite(data, off)
            model[off:off + n] = data


# ---- snapshots ----

def snapshot_unflushed(server, d):
    import random
    store = make_store(d, {"v": image(d, "v.img", SIZE, 1)})
    with open(os.path.join(d, "v.img"), "rb") as f:
        model = bytearray(f.read())
    srv = serve(server, store, d, ["volume=v"])
    try:
        with connection(srv, "v") as h:
            # Written, acknowledged, not flushed -- then the snapshot,
            # while this client is still connected.
            write_random(h, random.Random(5), model, 40, SIZE)
            tool("snapshot", store, "v", "s1", check=0)
            assert read_volume(srv, "v@s1", SIZE) == bytes(model), \
                "the snapshot lacks acknowledged writes"
        srv.kill9()
        srv.start()
        assert read_volume(srv, "v@s1", SIZE) == bytes(model), \
            "the snapshot lost data across kill -9"
    finally:
        stopped(srv)
    tool("fsck", store, "--full", check=0)


def snapshot_exports_readonly(server, d):
    store = make_store(d, {"v": image(d, "v.img", SIZE, 1)})
    tool("snapshot", store, "v", "nightly", check=0)
    srv = serve(server, store, d, ["volume=v@nightly"])
    try:
        names = export_names(srv)
        assert "v" in names and "v@nightly" in names, names
        assert re.match(r"snapshot taken \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC",
                        names["v@nightly"]), names
        for export in ("v@nightly", ""):      # by name, and as the default
            with connection(srv, export) as h:
                assert h.is_read_only(), export
                # libnbd would refuse these itself: send them anyway.
                h.set_strict_mode(0)
                nbdtest.expect_error("EPERM", h.pwrite, b"x" * 512, 0)
                nbdtest.expect_error("EPERM", h.trim, BS, 0)
                nbdtest.expect_error("EPERM", h.zero, BS, 0)
        with open(os.path.join(d, "v.img"), "rb") as f:
            assert read_volume(srv, "v@nightly", SIZE) == f.read()
    finally:
        stopped(srv)
    out = os.path.join(d, "snap.img")
    tool("export", store, "v@nightly", out, check=0)
    with open(os.path.join(d, "v.img"), "rb") as f, open(out, "rb") as g:
        assert f.read() == g.read()
    p = tool("list", store, check=0)
    assert re.search(r"^v@nightly\t%d\t8\.0 MiB\t\d{4}-\d\d-\d\dT" % SIZE,
                     p.stdout, re.M), p.stdout


# ---- clones ----

def clones_independent(server, d):
    base = os.path.join(d, "v.img")
    store = make_store(d, {"v": image(d, "v.img", SIZE, 1)})
    with open(base, "rb") as f:
        orig = f.read()
    srv = serve(server, store, d, ["volume=v"])
    try:
        tool("snapshot", store, "v", "s1", check=0)
        tool("clone", store, "v@s1", "c", check=0)
        tool("clone", store, "c", "c2", check=0)     # a clone of a clone
        with connection(srv, "c") as h:
            h.pwrite(b"C" * BS, 0)
            h.flush()
        with connection(srv, "v") as h:
            h.pwrite(b"V" * BS, BS)
            h.flush()
        for name, want in (("v@s1", orig), ("c2", orig),
                           ("c", b"C" * BS + orig[BS:]),
                           ("v", orig[:BS] + b"V" * BS + orig[2 * BS:])):
            assert read_volume(srv, name, SIZE) == want, name
        # The source snapshot goes: the clones keep every block.
        tool("delete", store, "v@s1", check=0)
        assert read_volume(srv, "c2", SIZE) == orig
        assert read_volume(srv, "c", SIZE) == b"C" * BS + orig[BS:]
    finally:
        stopped(srv)
    tool("fsck", store, "--full", check=0)


# ---- delete and rename ----

def delete_rename_live(server, d):
    store = make_store(d, {"v": image(d, "v.img", SIZE, 1),
                           "other": image(d, "o.img", MiB, 2)})
    srv = serve(server, store, d, ["volume=other"])
    try:
        tool("snapshot", store, "v", "s1", check=0)
        tool("snapshot", store, "v", "s2", check=0)
        with connection(srv, "v"):
            p = tool("delete", store, "v", "--recursive", check=1)
            assert "volume 'v' is open" in p.stderr, p.stderr
            p = tool("rename", store, "v", "w", check=1)
            assert "volume 'v' is open" in p.stderr, p.stderr
        with connection(srv, "v@s1"):
            p = tool("delete", store, "v@s1", check=1)
            assert "snapshot 'v@s1' is open" in p.stderr, p.stderr
        p = tool("delete", store, "v", check=1)
        assert "has 2 snapshots ('s1', 's2')" in p.stderr, p.stderr
        tool("delete", store, "v@s1", check=0)
        assert "v@s1" not in export_names(srv)
        tool("rename", store, "v", "w", check=0)
        tool("rename", store, "w@s2", "kept", check=0)
        names = export_names(srv)
        assert "w" in names and "w@kept" in names and "v" not in names, names
        with open(os.path.join(d, "v.img"), "rb") as f:
            want = f.read()
        assert read_volume(srv, "w", SIZE) == want
        assert read_volume(srv, "w@kept", SIZE) == want
        try:
            with connection(srv, "v"):
                raise AssertionError("the old name was served")
        except nbd.Error:
            pass
        tool("delete", store, "w", "--recursive", check=0)
        assert sorted(export_names(srv)) == ["other"], export_names(srv)
    finally:
        stopped(srv)
    tool("fsck", store, check=0)


def delete_rename_offline(d):
    store = make_store(d, {"v": image(d, "v.img", MiB, 1)})
    tool("snapshot", store, "v", "a", check=0)
    tool("rename", store, "v", "w", check=0)
    p = tool("list", store, check=0)
    assert [ln.split("\t")[0] for ln in p.stdout.splitlines()] == \
        ["w", "w@a"], p.stdout
    p = tool("rename", store, "w@a", "x@b", check=1)
    assert "same volume" in p.stderr, p.stderr
    tool("delete", store, "w", "--recursive", check=0)
    assert tool("list", store, check=0).stdout == ""
    assert not os.path.exists(os.path.join(store, "snapshots", "w"))


# ---- diff ----

def changed_blocks(a, b):
    """Blocks (BS) whose bytes differ between two equal-length images."""
    return {i for i in range(0, len(a) // BS)
            if a[i * BS:(i + 1) * BS] != b[i * BS:(i + 1) * BS]}


def ranges_to_blocks(text):
    out = set()
    for ln in text.splitlines():
        off, n = map(int, ln.split())
        assert off % BS == 0 and n % BS == 0, ln
        out.update(range(off // BS, (off + n) // BS))
    return out


def diff_exact(server, d):
    import random
    rnd = random.Random(11)
    store = make_store(d, {"v": image(d, "v.img", 16 * MiB, 3)})
    with open(os.path.join(d, "v.img"), "rb") as f:
        model = bytearray(f.read())
    srv = serve(server, store, d, ["volume=v"])
    try:
        tool("snapshot", store, "v", "s1", check=0)
        with connection(srv, "v") as h:
            write_random(h, rnd, model, 60, 16 * MiB)
            h.flush()
            tool("snapshot", store, "v", "s2", check=0)
            a = read_volume(srv, "v@s1", 16 * MiB)
            b = read_volume(srv, "v@s2", 16 * MiB)
            want = changed_blocks(a, b)
            got = ranges_to_blocks(tool("diff", store, "v@s1", "v@s2",
                                        check=0).stdout)
            assert got == want, (sorted(got ^ want)[:20], len(want))
            # The live volume, with writes not flushed yet.
            write_random(h, rnd, model, 20, 16 * MiB)
            want = changed_blocks(b, bytes(model))
            got = ranges_to_blocks(tool("diff", store, "v@s2", "v",
                                        check=0).stdout)
            assert got == want, (sorted(got ^ want)[:20], len(want))
    finally:
        stopped(srv)
    p = tool("diff", store, "v@s1", "v@s1", "--json", check=0)
    assert p.stdout == "[]\n", p.stdout


def diff_huge(server, d):
    # A 1 PiB volume (depth 4 at 64 KiB blocks): one block changed between
    # two snapshots is found by reading a few map nodes, not 2^34 blocks.
    store = os.path.join(d, "store")
    srv = nbdtest.Server(server, "cas", ["store=" + store, "size=1P"],
                         d).start().ready()
    try:
        with connection(srv) as h:
            h.pwrite(b"a" * BS, 0)
            h.pwrite(b"b" * BS, 2 ** 49)
            h.flush()
        tool("snapshot", store, "default", "s1", check=0)
        with connection(srv) as h:
            h.pwrite(b"c" * BS, 2 ** 49 + 7 * BS)
            h.flush()
        tool("snapshot", store, "default", "s2", check=0)
        p = tool("-v", "diff", store, "default@s1", "default@s2", check=0)
        assert p.stdout == "%d %d\n" % (2 ** 49 + 7 * BS, BS), p.stdout
        m = re.search(r"(\d+) map nodes read", p.stderr)
        assert m and int(m.group(1)) <= 8, p.stderr
    finally:
        stopped(srv)


# ---- the nbdcas:changed:SNAP context ----

def changed_context(server, d):
    store = make_store(d, {"v": image(d, "v.img", SIZE, 1)})
    tool("snapshot", store, "v", "s0", check=0)
    srv = serve(server, store, d, ["volume=v"])
    try:
        h = nbd.NBD()
        h.add_meta_context("nbdcas:changed:s0")
        h.set_export_name("v")
        h.connect_unix(srv.sock)
        try:
            if server == "nbdkit":
                # nbdkit 1.32 serves only base:allocation.
                assert not h.can_meta_context("nbdcas:changed:s0")
                return
            assert h.can_meta_context("nbdcas:changed:s0")
            h.pwrite(b"x" * 3 * BS, 5 * BS)          # blocks 5-7
            h.pwrite(b"y" * 100, 40 * BS + 10)       # part of block 40
            got = []

            def cb(ctx, off, entries, err):
                if ctx == "nbdcas:changed:s0":
                    pos = off
                    for i in range(0, len(entries), 2):
                        if entries[i + 1] & 1:
                            got.append((pos, entries[i]))
                        pos += entries[i]
                return 0
            h.block_status(SIZE, 0, cb)
            assert got == [(5 * BS, 3 * BS), (40 * BS, BS)], got
        finally:
            h.shutdown()
        # qemu: an x-dirty-bitmap context's set bit shows as "data": false.
        p = nbdtest.cmd(["qemu-img", "map", "--output=json", "--image-opts",
                         "driver=nbd,server.type=unix,server.path=%s,"
                         "export=v,x-dirty-bitmap=nbdcas:changed:s0"
                         % srv.sock])
        dirty = [(e["start"], e["length"]) for e in
                 __import__("json").loads(p.stdout) if not e["data"]]
        assert dirty == [(5 * BS, 3 * BS), (40 * BS, BS)], p.stdout
    finally:
        stopped(srv)


# ---- kill -9 in the middle ----

def stop_fifo(d):
    """A FIFO the store's NBDCAS_TEST_STOP hook reports on."""
    path = os.path.join(d, "stop.fifo")
    os.mkfifo(path)
    return path


def stopped_at(d, point, *args):
    """Run nbdcas args, stopped at test point `point` (the store's
    NBDCAS_TEST_STOP hook), then kill -9 it."""
    fifo = stop_fifo(d)
    env = dict(os.environ, NBDCAS_TEST_STOP=point,
               NBDCAS_TEST_STOP_FIFO=fifo)
    p = subprocess.Popen([NBDCAS] + list(args), env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    with open(fifo) as f:               # until the hook opens it
        line = f.readline()
    assert line == point + "\n", (line, p.communicate())
    p.send_signal(signal.SIGKILL)
    p.communicate()
    os.unlink(fifo)


def crash_midway(d):
    img = image(d, "v.img", 2 * MiB, 1)
    with open(img, "rb") as f:
        data = f.read()
    cases = [
        # (point, command, names present after the next open)
        ("snapshot", ["snapshot", "v", "s2"], {"v", "v@s1"}),
        ("clone", ["clone", "v@s1", "c"], {"v", "v@s1"}),
        ("delete-root", ["delete", "v", "--recursive"], set()),
        ("delete-snapshots", ["delete", "v", "--recursive"], set()),
        ("rename-root", ["rename", "v", "w"], {"w", "w@s1"}),
        ("rename-snapshots", ["rename", "v", "w"], {"w", "w@s1"}),
    ]
    for point, cmd, after in cases:
        sub = os.path.join(d, point)
        os.mkdir(sub)
        store = make_store(sub, {"v": img})
        tool("snapshot", store, "v", "s1", check=0)
        stopped_at(sub, point, cmd[0], store, *cmd[1:])
        # The next read-write open finishes what the intent says.
        tool("fsck", store, "--repair", check=0)
        p = tool("list", store, check=0)
        names = {ln.split("\t")[0] for ln in p.stdout.splitlines()}
        assert names == after, (point, names, p.stderr)
        assert not os.path.exists(os.path.join(store, "intent")), point
        for name in names:
            out = os.path.join(sub, "out")
            tool("export", store, name, out, "--force", check=0)
            with open(out, "rb") as f:
                assert f.read() == data, (point, name)
        tool("fsck", store, "--full", check=0)


def crash_in_server(server, d):
    # kill -9 of the server while its control thread takes a snapshot.
    store = make_store(d, {"v": image(d, "v.img", MiB, 1)})
    fifo = stop_fifo(d)
    os.environ.update(NBDCAS_TEST_STOP="snapshot", NBDCAS_TEST_STOP_FIFO=fifo)
    try:
        srv = nbdtest.Server(server, "cas", ["store=" + store, "volume=v"], d)
        srv.start().ready()
    finally:
        del os.environ["NBDCAS_TEST_STOP"]
        del os.environ["NBDCAS_TEST_STOP_FIFO"]
    try:
        p = subprocess.Popen([NBDCAS, "snapshot", store, "v", "s"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        with open(fifo) as f:
            assert f.readline() == "snapshot\n"
        srv.kill9()
        out, err = p.communicate(timeout=60)
        assert p.returncode == 1 and b"without an answer" in err, err
    finally:
        srv.stop()
    tool("fsck", store, "--full", check=0)
    p = tool("list", store, check=0)
    assert p.stdout.startswith("v\t"), p.stdout
    # The stale control socket is noted, then cleared by a writer.
    p = tool("snapshot", store, "v", "s", check=0)
    assert "no longer running" in p.stderr, p.stderr


# ---- names ----

HOSTILE = ["a@b@c", "@x", "x@", "../x", "a" * 300, "tab\tx", "nl\nx", ".x"]


def hostile_names(d):
    store = make_store(d, {"v": image(d, "v.img", MiB, 1)})
    for name in HOSTILE:
        for args in (["snapshot", store, "v", name],
                     ["snapshot", store, name, "s"],
                     ["clone", store, "v", name],
                     ["clone", store, name, "c"],
                     ["delete", store, name],
                     ["rename", store, "v", name],
                     ["diff", store, name, "v"]):
            p = tool(*args)
            assert p.returncode == 2, (args, p.returncode, p.stderr)
            assert re.search(r"invalid|is not a snapshot of", p.stderr), \
                (args, p.stderr)
    assert tool("list", store, check=0).stdout.startswith("v\t")


def hostile_exports(server, d):
    store = make_store(d, {"v": image(d, "v.img", MiB, 1)})
    srv = serve(server, store, d, ["volume=v"])
    try:
        for name in ["a@b@c", "@x", "x@", "v@nope", "v@../x", "v@.x"]:
            try:
                with connection(srv, name):
                    raise AssertionError("export %r was served" % name)
            except nbd.Error:
                pass
        with open(os.path.join(d, "v.img"), "rb") as f:
            assert read_volume(srv, "v", MiB) == f.read()
    finally:
        stopped(srv)


def old_store(d):
    # What the previous release made: no snapshots/ directory, a version 1
    # index cache (so a format-2 store).
    img = image(d, "v.img", MiB, 1)
    store = make_store(d, {"v": img}, fmt=2)
    os.rmdir(os.path.join(store, "snapshots"))
    cf.write_index_v1(os.path.join(store, "index"), 1,
                      os.path.getsize(cf.packs(store)[0]),
                      cf.index_entries(store))
    tool("snapshot", store, "v", "first", check=0)
    tool("fsck", store, "--full", check=0)
    out = os.path.join(d, "out")
    tool("export", store, "v@first", out, check=0)
    with open(img, "rb") as f, open(out, "rb") as g:
        assert f.read() == g.read()


def main():
    per_server = [
        ("a snapshot holds unflushed acknowledged writes, survives kill -9",
         snapshot_unflushed),
        ("snapshots are listed and served read-only",
         snapshot_exports_readonly),
        ("clones are independent; the source snapshot can go",
         clones_independent),
        ("delete and rename while served: open ones refused",
         delete_rename_live),
        ("diff is exact, live and between snapshots", diff_exact),
        ("diff of one block in 1 PiB reads a few map nodes", diff_huge),
        ("nbdcas:changed:SNAP through libnbd and qemu-img map",
         changed_context),
        ("kill -9 of the server during a snapshot", crash_in_server),
        ("hostile export names refused, the server goes on",
         hostile_exports),
    ]
    tool_only = [
        ("delete and rename offline", delete_rename_offline),
        ("kill -9 in the middle of snapshot, clone, delete, rename",
         crash_midway),
        ("hostile names refused", hostile_names),
        ("a store of the previous release opens and takes snapshots",
         old_store),
    ]
    run_cases(per_server, tool_only)


main()
