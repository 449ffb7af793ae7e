#!/usr/bin/env python3
# The nbdcas admin tool: create / list / stat, import-export round trips
# (random, zero and hole regions, a size that is not a block multiple),
# dedup seen in stat, fsck on clean and damaged stores, and every error
# case with its exit status (0 ok, 1 failure / fsck problems, 2 bad
# command line / fsck could not check).  No server involved: one TAP line
# per case.

import fcntl
import hashlib
import json
import os
import pty
import random
import re
import shutil
import struct
import subprocess
import sys
import traceback

sys.path.insert(0, os.environ.get("srcdir", os.path.dirname(__file__)))
import nbdtest  # noqa: E402
from casformat import TABLE, flip, records  # noqa: E402

NBDCAS = os.environ.get("NBDCAS") or os.path.join(
    os.environ.get("top_builddir", "."), "plugins/cas/nbdcas")
BS = 64 * 1024            # the default block size
MiB = 1024 * 1024


def run(*args, check=None, env=None):
    """Run nbdcas; check: the expected exit status (None: any)."""
    argv = [NBDCAS] + [str(a) for a in args]
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=600, env=env)
    out = p.stdout.decode(errors="replace")
    err = p.stderr.decode(errors="replace")
    if check is not None and p.returncode != check:
        raise AssertionError("%s: exit %d, expected %d\nstdout:\n%s\n"
                             "stderr:\n%s" % (" ".join(argv), p.returncode,
                                              check, out, err))
    return p.returncode, out, err


def fails(status, pattern, *args):
    """nbdcas args must exit with status and say pattern on stderr."""
    rc, out, err = run(*args)
    assert rc == status, "%s: exit %d, expected %d\nstderr: %s" % (
        " ".join(map(str, args)), rc, status, err)
    assert re.search(pattern, err, re.I), \
        "%s: stderr lacks /%s/:\n%s" % (" ".join(map(str, args)), pattern,
                                        err)
    assert err.startswith("nbdcas"), "message not prefixed: " + err


def stat_json(store, volume=None):
    args = ["stat", store] + ([volume] if volume else []) + ["--json"]
    return json.loads(run(*args, check=0)[1])


def write_image(path, layout, seed):
    """layout: list of (kind, length): 'rand', 'zero' (written zeros),
    'hole' (sparse), 'dup' (a copy of the first random MiB)."""
    rnd = random.Random(seed)
    first = None
    with open(path, "wb") as f:
        for kind, n in layout:
            if kind == "rand":
                data = rnd.randbytes(n)
                if first is None:
                    first = data
                f.write(data)
            elif kind == "dup":
                one = first[:MiB]
                f.write((one * (n // len(one) + 1))[:n])
            elif kind == "zero":
                f.write(bytes(n))
            elif kind == "hole":
                f.seek(n, os.SEEK_CUR)
        f.truncate(f.tell())


def nonzero_blocks(path, bs=BS):
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(bs)
            if not b:
                return n
            n += any(b)


def block_hashes(path, bs=BS):
    """{sha256: [block numbers]} of the image's non-zero blocks."""
    out = {}
    with open(path, "rb") as f:
        i = 0
        while True:
            b = f.read(bs)
            if not b:
                return out
            b = b + bytes(bs - len(b))
            if any(b):
                out.setdefault(hashlib.sha256(b).digest(), []).append(i)
            i += 1


def is_sparse(path, hole_bytes):
    st = os.stat(path)
    return st.st_blocks * 512 <= st.st_size - hole_bytes + BS


class Tests:
    def __init__(self, d):
        self.d = d
        self.store = os.path.join(d, "store")
        self.img = os.path.join(d, "a.img")
        # Random, zeros, a hole, duplicates of the first MiB, random; the
        # size is not a multiple of the block size (nor of 4 KiB).
        self.layout = [("rand", 3 * MiB + 1000), ("zero", 2 * MiB),
                       ("hole", 4 * MiB), ("dup", 2 * MiB),
                       ("rand", 1 * MiB + 12345)]
        write_image(self.img, self.layout, 1)
        self.size = os.path.getsize(self.img)

    def p(self, name):
        return os.path.join(self.d, name)

    # -- basics --

    def t_version_help(self):
        rc, out, _ = run("--version", check=0)
        assert re.match(r"nbdcas \S+ \(store format version \d+[;)]", out), out
        run("--help", check=0)
        for c in ("create", "import", "export", "list", "stat", "fsck", "gc",
                  "snapshot", "clone", "delete", "rename", "diff", "upgrade"):
            rc, out, _ = run(c, "--help", check=0)
            assert out.startswith("Usage: nbdcas " + c), out
            assert run("help", c, check=0)[1] == out

    def t_create_list_stat(self):
        run("create", self.store, "--size", "10M", "--volume", "vol0",
            check=0)
        rc, out, _ = run("list", self.store, check=0)
        assert out == "vol0\t10485760\t10.0 MiB\n", out
        js = json.loads(run("list", self.store, "--json", check=0)[1])
        assert js == [{"name": "vol0", "size": 10485760}], js
        rc, out, _ = run("stat", self.store, check=0)
        for want in ("block size: +65536", "volumes: +1\n",
                     "logical size: +10485760", "mapped bytes: +0\n",
                     "stored bytes: +0\n", "packs: +0\n", "chunks: +0",
                     "index memory: +"):
            assert re.search(want, out), "stat lacks %r:\n%s" % (want, out)
        s = stat_json(self.store, "vol0")
        assert s["size"] == 10485760 and s["blocks"] == 160 and \
            s["mapped_blocks"] == 0, s
        # A second volume in the same store; a 4K-block store.
        run("create", self.store, "--size", "1G", "--volume", "big", check=0)
        rc, out, _ = run("list", self.store, check=0)
        assert out.splitlines() == ["big\t1073741824\t1.0 GiB",
                                    "vol0\t10485760\t10.0 MiB"], out
        small = self.p("store4k")
        run("create", small, "--blocksize", "4K", check=0)
        assert stat_json(small)["block_size"] == 4096
        assert run("list", small, check=0)[1] == ""
        # An empty directory is fine for create.
        os.mkdir(self.p("empty"))
        run("create", self.p("empty"), check=0)

    def t_round_trip(self):
        rc, _, err = run("import", "-v", self.store, "v1", self.img,
                         "--create", check=0)
        # The summary counts blocks: written zeros are read but not
        # stored; holes (where the file system reports them) not read.
        m = re.search(r"blocks: (\d+) data, (\d+) zero, (\d+) in holes", err)
        assert m, err
        data, zero, hole = map(int, m.groups())
        assert data == nonzero_blocks(self.img), err
        assert data + zero + hole == (self.size + BS - 1) // BS, err
        with open(self.img, "rb") as f:
            fs_holes = os.lseek(f.fileno(), 0, os.SEEK_HOLE) < self.size
        assert zero >= 31 and (hole >= 60 or not fs_holes), err
        assert stat_json(self.store, "v1")["size"] == self.size
        out = self.p("v1.out")
        run("export", self.store, "v1", out, check=0)
        r = subprocess.run(["cmp", self.img, out], capture_output=True)
        assert r.returncode == 0, r.stdout + r.stderr
        # The zero and hole regions (6 MiB, 5.9 MiB of whole blocks) came
        # out as holes.
        assert is_sparse(out, 5 * MiB), os.stat(out)
        s = stat_json(self.store, "v1")
        assert s["mapped_blocks"] == nonzero_blocks(self.img), s
        # Export to stdout gives the same bytes.
        p = subprocess.run([NBDCAS, "export", self.store, "v1", "-"],
                           capture_output=True, timeout=300)
        assert p.returncode == 0, p.stderr
        with open(self.img, "rb") as f:
            assert p.stdout == f.read()

    def t_4k_round_trip(self):
        small = self.p("store4k")
        run("import", small, "v", self.img, "--create", "-j", "3", check=0)
        out = self.p("v4k.out")
        run("export", small, "v", out, check=0)
        r = subprocess.run(["cmp", self.img, out], capture_output=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert stat_json(small, "v")["mapped_blocks"] == \
            nonzero_blocks(self.img, 4096)

    def t_dedup(self):
        before = stat_json(self.store)
        run("import", self.store, "v2", self.img, "--create", check=0)
        after = stat_json(self.store)
        # The data is all there already: only nothing (identical map) or
        # a few map nodes are new.
        grown = after["stored_bytes"] - before["stored_bytes"]
        assert grown <= 2 * BS, (before, after)
        assert after["mapped_bytes"] == 2 * before["mapped_bytes"]
        # Within one image too: the 'dup' region repeats the first MiB.
        distinct = len(block_hashes(self.img))
        assert distinct < nonzero_blocks(self.img)
        assert after["chunks"] - after["map_nodes"] <= distinct, after
        rc, out, _ = run("stat", self.store, check=0)
        m = re.search(r"dedup ratio: +([0-9.]+)", out)
        assert m and float(m.group(1)) > 2.0, out
        out2 = self.p("v2.out")
        run("export", self.store, "v2", out2, check=0)
        assert subprocess.run(["cmp", self.img, out2]).returncode == 0

    def t_reimport(self):
        # Into an existing volume: old data in what are now zeros or holes
        # must go; a smaller image leaves zeros after it; a larger one
        # grows the volume.
        b = self.p("b.img")
        write_image(b, [("hole", 3 * MiB), ("rand", 100000),
                        ("zero", 3 * MiB), ("rand", 5000)], 2)
        run("import", self.store, "v2", b, check=0)
        out = self.p("v2b.out")
        run("export", self.store, "v2", out, check=0)
        assert os.path.getsize(out) == self.size
        with open(out, "rb") as f, open(b, "rb") as g:
            got, want = f.read(), g.read()
        assert got[:len(want)] == want
        assert not any(got[len(want):])
        c = self.p("c.img")
        write_image(c, [("rand", self.size + 3 * BS + 7)], 3)
        rc, _, err = run("import", self.store, "v2", c, check=0)
        assert "grown" in err, err
        run("export", self.store, "v2", out, "--force", check=0)
        assert subprocess.run(["cmp", c, out]).returncode == 0
        # --size with --create makes a larger volume, zeros past the image.
        run("import", self.store, "v3", b, "--create", "--size", "20M",
            check=0)
        assert stat_json(self.store, "v3")["size"] == 20 * MiB

    def t_no_progress_when_not_tty(self):
        rc, out, err = run("import", self.store, "quiet", self.img,
                           "--create", check=0)
        assert out == "" and err == "", (out, err)

    def t_progress_on_tty(self):
        # stderr on a pseudo-terminal: bar and summary go there.
        big = self.p("big.img")
        write_image(big, [("rand", 64 * MiB)], 4)
        master, slave = pty.openpty()
        p = subprocess.Popen([NBDCAS, "import", self.store, "tty", big,
                              "--create", "-j", "1"],
                             stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        assert p.wait(timeout=300) == 0
        assert p.stdout.read() == b""
        text = b"".join(chunks).decode(errors="replace")
        assert "imported" in text and "MB/s" in text, text
        os.unlink(big)

    def t_block_device(self):
        # Import from and export to a loop device (root only).
        if os.geteuid() != 0 or shutil.which("losetup") is None:
            raise nbdtest.Skip("needs root and losetup")
        back = self.p("loop.img")
        with open(back, "wb") as f:
            f.truncate(16 * MiB)
        r = subprocess.run(["losetup", "-f", "--show", back],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise nbdtest.Skip("no loop device: " + r.stderr.strip())
        dev = r.stdout.strip()
        try:
            with open(self.img, "rb") as f, open(dev, "r+b") as g:
                g.write(f.read())
            run("import", self.store, "dev", dev, "--create", check=0)
            assert stat_json(self.store, "dev")["size"] == 16 * MiB
            # Export back over it: without --force refused, with --force
            # the whole device is written (zeros over unmapped blocks).
            with open(dev, "r+b") as g:
                g.write(os.urandom(16 * MiB))
            fails(1, "already exists", "export", self.store, "dev", dev)
            run("export", self.store, "dev", dev, "--force", check=0)
            with open(self.img, "rb") as f, open(dev, "rb") as g:
                want = f.read()
                got = g.read()
            assert got[:len(want)] == want and not any(got[len(want):])
            run("import", self.store, "dev2", dev, "--create", check=0)
        finally:
            subprocess.run(["losetup", "-d", dev])

    def t_fsck_clean(self):
        rc, out, err = run("fsck", self.store, check=0)
        assert "clean" in out, out
        rc, out, err = run("fsck", self.store, "--full", check=0)
        assert "clean" in out and "SHA-256" in out, out

    def format2_store(self, name):
        """A format-2 store holding a.img twice, as volumes v1 and quiet:
        the fsck cases below damage its data records, found by their
        hash (a format-4 store's damaged units: test-cas-v4.py)."""
        st = self.p(name)
        run("create", st, "--format", "2", check=0)
        for vol in ("v1", "quiet"):
            run("import", st, vol, self.img, "--create", check=0)
        return st

    def t_fsck_damaged(self):
        # Flip one byte in the payload of a data record that the volumes
        # use, and expect fsck to name each volume and block that holds
        # it.
        st = self.format2_store("damaged")
        hashes = block_hashes(self.img)
        packs = sorted(os.listdir(os.path.join(st, "packs")))
        target = None
        for pk in packs:
            path = os.path.join(st, "packs", pk)
            for off, typ, length, h in records(path):
                if typ == 1 and h in hashes and len(hashes[h]) == 1:
                    target = (path, off, h)
                    break
            if target:
                break
        assert target, "no data record found in %s" % packs
        path, off, h = target
        flip(path, off + 64 + 1000)
        block = hashes[h][0]
        for full in ([], ["--full"]):
            rc, out, err = run("fsck", st, *full)
            assert rc == 1, (rc, out, err)
            for vol in ("v1", "quiet"):   # both imported a.img unchanged
                assert re.search(r"volume '%s' block %d\b.*damaged"
                                 % (vol, block), out), out
            assert re.search(r"pack \d+ offset %d\b" % off, out), out
            assert "problem" in out.splitlines()[-1], out
        # Reading that block fails: export says so and leaves no file.
        fails(1, "block %d|damaged|checksum" % block,
              "export", st, "v1", self.p("bad.out"))
        assert not os.path.exists(self.p("bad.out"))

    def t_fsck_failed_append(self):
        # What a crash can leave after appends failed on a full or failing
        # disk and could not be punched out: a torn record (good header,
        # bad payload) and a torn header, in the middle of a pack, with a
        # record written after them.  The store never indexed them, so no
        # volume can read them: fsck names them, says so, and passes.
        st = self.format2_store("failedappend")
        pack = os.path.join(st, "packs",
                            sorted(os.listdir(os.path.join(st, "packs")))[-1])
        off, typ, length, h = next(r for r in records(pack) if r[1] == 1)
        size = 64 + (length + 7) // 8 * 8
        with open(pack, "rb") as f:
            f.seek(off)
            rec = f.read(size)
            end = f.seek(0, os.SEEK_END)
        torn = bytearray(rec)
        torn[64 + length // 2:] = bytes(size - 64 - length // 2)
        with open(pack, "ab") as f:
            f.write(bytes(torn) + b"\xa5" * 40 + rec)
        for full in ([], ["--full"]):
            rc, out, err = run("fsck", st, *full)
            assert rc == 0, (rc, out, err)
            assert re.search(r"pack \d+ offset %d: data record %s: payload "
                             r"checksum.*: no volume lost data from it"
                             % (end, h.hex()), out), out
            assert re.search(r"pack \d+ offset %d: 40 bytes: .*: no volume "
                             r"lost data from it" % (end + size), out), out
            assert out.splitlines()[-1].endswith(
                "2 damaged records no volume needs"), out
        # The original damaged too: the intact copy appended after the
        # garbage still holds the chunk, so no volume lost data (fsck
        # trusts the packs, not which copy an index happened to name).
        flip(pack, off + 64 + length - 1)
        rc, out, err = run("fsck", st, check=0)
        assert re.search(r"pack \d+ offset %d: data record %s: payload "
                         r"checksum \(CRC32C\) mismatch: no volume lost "
                         r"data from it" % (off, h.hex()), out), out

    def t_fsck_damaged_map_node(self):
        # One data block at block 7 of a small volume: the pack of a
        # format-2 store then holds that chunk, then the map leaf.  Damage
        # the leaf.
        st = self.p("maponly")
        img = self.p("one.img")
        with open(img, "wb") as f:
            f.truncate(16 * BS)
            f.seek(7 * BS)
            f.write(os.urandom(BS))
        run("create", st, "--format", "2", check=0)
        run("import", st, "m", img, "--create", check=0)
        run("fsck", st, check=0)
        pack = os.path.join(st, "packs",
                            sorted(os.listdir(os.path.join(st, "packs")))[0])
        # (Piece tables, type 3, are records but not chunks.)
        recs = [r for r in records(pack) if r[1] != TABLE]
        assert [r[1] for r in recs] == [1, 2], recs
        flip(pack, recs[1][0] + 64 + 7 * 32 + 3)   # block 7's hash
        rc, out, err = run("fsck", st)
        assert rc == 1, (rc, out, err)
        assert re.search(r"volume 'm' blocks 0-15 \(bytes 0-1048575, "
                         r"1.0 MiB\): lost: map node is damaged \(map node "
                         r"level 1 index 0\)", out), out

    def t_damaged_volume_root(self):
        # A volume whose root file is damaged: list shows the others and
        # fails, fsck names it.
        st = self.p("badroot")
        run("create", st, "--size", "1M", "--volume", "good", check=0)
        run("create", st, "--size", "1M", "--volume", "bad", check=0)
        with open(os.path.join(st, "volumes", "bad"), "r+b") as f:
            f.seek(20)
            f.write(b"garbage")
        rc, out, err = run("list", st, check=1)
        assert out == "good\t1048576\t1.0 MiB\n", out
        assert "checksum" in err, err
        rc, out, err = run("fsck", st, check=1)
        assert re.search(r"volume 'bad': lost: its root cannot be read.*"
                         r"checksum", out), out
        assert "good" not in out, out

    # -- errors --

    def t_missing_store(self):
        nostore = self.p("nostore")
        for args in (["list", nostore], ["stat", nostore],
                     ["import", nostore, "v", self.img],
                     ["import", nostore, "v", self.img, "--create"],
                     ["export", nostore, "v", self.p("x.out")],
                     ["create", nostore, "--size", "1M", "--volume", "v/"]):
            status = 2 if "v/" in args else 1
            fails(status, "no cas store here|invalid volume name", *args)
        fails(2, "no cas store here", "fsck", nostore)
        assert not os.path.exists(nostore)
        # A directory holding something else is not a store either.
        junk = self.p("junk")
        os.mkdir(junk)
        open(os.path.join(junk, "file"), "w").close()
        fails(1, "not a cas store", "list", junk)
        fails(1, "not a cas store", "create", junk)
        fails(1, "not a directory", "list", self.img)

    def t_wrong_version(self):
        st = self.p("v2store")
        run("create", st, "--size", "1M", check=0)
        with open(os.path.join(st, "superblock"), "r+b") as f:
            f.seek(8)
            f.write(struct.pack("<I", 99))
        for args in (["list", st], ["stat", st],
                     ["import", st, "default", self.img],
                     ["export", st, "default", self.p("y.out")],
                     ["create", st, "--size", "1M", "--volume", "w"]):
            fails(1, "version 99 is not supported", *args)
        fails(2, "version 99 is not supported", "fsck", st)

    def t_bad_sizes(self):
        for size in ("10X", "0", "-1", "", "1.5G", "2P", "9E"):
            fails(2, "--size", "create", self.p("s-" + size), "--size", size)
            assert not os.path.exists(self.p("s-" + size))
        for bs in ("3000", "2K", "2M", "0", "abc"):
            fails(2, "--blocksize", "create", self.p("b-" + bs),
                  "--blocksize", bs)
        fails(2, "--size", "import", self.store, "n", self.img, "--create",
              "--size", "12Q")
        fails(2, "smaller than the image", "import", self.store, "n",
              self.img, "--create", "--size", "1M")
        fails(2, "only applies with --create", "import", self.store, "v1",
              self.img, "--size", "1G")
        fails(2, "--threads", "import", self.store, "n", self.img,
              "--create", "-j", "0")

    def t_volume_exists(self):
        fails(1, "already exists", "create", self.store, "--size", "1M",
              "--volume", "v1")
        fails(1, "already exists", "import", self.store, "v1", self.img,
              "--create")
        fails(1, "already holds a cas store", "create", self.store)
        other = self.p("other.out")
        open(other, "w").close()
        fails(1, "already exists.*--force", "export", self.store, "v1",
              other)
        assert os.path.getsize(other) == 0
        run("export", self.store, "v1", other, "--force", check=0)
        assert subprocess.run(["cmp", self.img, other]).returncode == 0

    def t_volume_missing(self):
        fails(1, "no volume 'nope'.*--create", "import", self.store, "nope",
              self.img)
        fails(1, "no volume 'nope'", "export", self.store, "nope",
              self.p("nope.out"))
        assert not os.path.exists(self.p("nope.out"))
        fails(1, "no volume 'nope'", "stat", self.store, "nope")

    def t_bad_names(self):
        for name in ("..", "../x", "a/b", ".hidden", "", "a\x01b", "x" * 256,
                     "tab\tname"):
            for args in (["create", self.store, "--size", "1M", "--volume",
                          name],
                         ["import", self.store, name, self.img, "--create"],
                         ["export", self.store, name, self.p("n.out")],
                         ["stat", self.store, name]):
                fails(2, "invalid volume name", *args)
        assert not os.path.exists(self.p("n.out"))
        rc, out, _ = run("list", self.store, check=0)
        assert "x" * 256 not in out and ".." not in out

    def t_bad_command_line(self):
        fails(2, "unknown command", "frobnicate")
        fails(2, "no command", )
        fails(2, "unrecognized option|invalid option", "list", "--bogus",
              self.store)
        fails(2, "unrecognized option|invalid option", "--bogus")
        fails(2, "missing", "import", self.store, "v1")
        fails(2, "missing", "list")
        fails(2, "unexpected argument 'extra'", "list", self.store, "extra")
        fails(2, "unexpected argument", "fsck", self.store, "extra")
        fails(2, "--volume needs --size", "create", self.p("nv"), "--volume",
              "x")

    def t_bad_image(self):
        fails(1, "No such file", "import", self.store, "n",
              self.p("noimage"), "--create")
        empty = self.p("empty.img")
        open(empty, "w").close()
        fails(1, "empty", "import", self.store, "n", empty, "--create")
        fails(1, "not a regular file or block device", "import", self.store,
              "n", self.d, "--create")
        rc, out, _ = run("list", self.store, check=0)
        assert not re.search(r"^n\t", out, re.M), out

    def t_store_busy(self):
        # A server holds the store lock: the tool refuses, not corrupts.
        with open(os.path.join(self.store, "lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fails(1, "in use", "import", self.store, "v1", self.img)
            fails(1, "in use", "list", self.store)
            fails(2, "in use", "fsck", self.store)
        run("list", self.store, check=0)


def main():
    d = nbdtest.tmpdir()
    t = Tests(d)
    cases = [m for m in dir(Tests) if m.startswith("t_")]
    # Definition order: later cases use the store the earlier ones built.
    cases.sort(key=lambda m: getattr(Tests, m).__code__.co_firstlineno)
    tap = nbdtest.TAP(len(cases))
    for name in cases:
        try:
            getattr(t, name)()
            tap.ok(True, "nbdcas " + name[2:].replace("_", " "))
        except nbdtest.Skip as e:
            tap.skip("nbdcas " + name[2:].replace("_", " "), str(e))
        except Exception:
            tap.ok(False, "nbdcas " + name[2:].replace("_", " "),
                   traceback.format_exc())
    shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


if __name__ == "__main__":
    main()
