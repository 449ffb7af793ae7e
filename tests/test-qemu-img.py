#!/usr/bin/python3
# qemu-img against the server: info (size, format), convert a file into
# the export (-n, as qemu does: WRITE_ZEROES + writes + FLUSH), compare
# against the source, map (data and zero extents where they should be),
# convert the export to qcow2 and compare that with the export too.

import json
import os

import nbdtest

SIZE = 64 * 1024 * 1024
MiB = 1024 * 1024


def body(srv):
    d = srv.workdir
    uri = srv.uri()
    info = json.loads(nbdtest.cmd(["qemu-img", "info", "--output=json",
                                   "-f", "raw", uri]).stdout)
    assert info["virtual-size"] == SIZE, info
    assert info["format"] == "raw", info
    nbdtest.cmd(["qemu-img", "info", "-f", "raw", uri])

    # Source: data at 0-8M, 16M+1..24M+1 (unaligned), the last 2 MiB;
    # holes elsewhere.
    src = os.path.join(d, "src.img")
    regions = [(0, 8 * MiB), (16 * MiB + 1, 8 * MiB), (SIZE - 2 * MiB,
                                                       2 * MiB)]
    with open(src, "wb") as f:
        f.truncate(SIZE)
        for i, (off, ln) in enumerate(regions):
            f.seek(off)
            f.write(nbdtest.random_nonzero(ln, i))

    # Pre-fill the export with junk so the holes really have to be
    # written as zeroes.
    h = srv.connect()
    junk = b"\xee" * MiB
    for off in range(0, SIZE, MiB):
        h.pwrite(junk, off)
    h.flush()
    h.shutdown()
    p = nbdtest.cmd(["qemu-img", "compare", "-f", "raw", "-F", "raw",
                     src, uri], check=False)
    assert p.returncode == 1, "compare with junk: rc %d %s" % (
        p.returncode, p.stdout)

    nbdtest.cmd(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw",
                 src, uri])
    p = nbdtest.cmd(["qemu-img", "compare", "-f", "raw", "-F", "raw",
                     src, uri])
    assert "Images are identical" in p.stdout, p.stdout
    # And the other way round.
    nbdtest.cmd(["qemu-img", "compare", "-f", "raw", "-F", "raw", uri, src])

    # Map: the data regions are data, the big holes read as zero.
    m = json.loads(nbdtest.cmd(["qemu-img", "map", "--output=json",
                                "-f", "raw", uri]).stdout)
    assert m and m[0]["start"] == 0 and \
        m[-1]["start"] + m[-1]["length"] == SIZE, m
    for a, b in zip(m, m[1:]):
        assert a["start"] + a["length"] == b["start"], "map gap: %r" % m

    def flags_over(off, ln):
        return {(e["data"], e["zero"]) for e in m
                if e["start"] < off + ln and off < e["start"] + e["length"]}
    for (off, ln) in regions:
        fl = flags_over(off + MiB, ln - 2 * MiB)
        assert fl == {(True, False)}, \
            "data region %d@%d mapped as %r" % (ln, off, fl)
    for (off, ln) in [(9 * MiB, 6 * MiB), (26 * MiB, 36 * MiB)]:
        fl = flags_over(off, ln)
        assert all(z for (_, z) in fl), \
            "hole %d@%d mapped as %r: %r" % (ln, off, fl, m)

    # Export -> qcow2 -> compare against the export and the source.
    q = os.path.join(d, "out.qcow2")
    nbdtest.cmd(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", uri, q])
    nbdtest.cmd(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", uri, q])
    nbdtest.cmd(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", src, q])
    # qcow2 -> export (different data in place) and back.
    raw2 = os.path.join(d, "raw2.img")
    with open(raw2, "wb") as f:
        f.truncate(SIZE)
        f.seek(3 * MiB + 7)
        f.write(nbdtest.random_bytes(5 * MiB, 99))
    nbdtest.cmd(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw",
                 raw2, uri])
    nbdtest.cmd(["qemu-img", "compare", "-f", "raw", "-F", "raw", raw2, uri])
    # The image-opts form qemu users write by hand.
    nbdtest.cmd(["qemu-img", "compare", "--image-opts",
                 "driver=nbd,server.type=unix,server.path=%s,export=" %
                 srv.sock, "driver=file,filename=%s" % raw2])

nbdtest.require_tool("qemu-img")
nbdtest.run("qemu-img info/convert/compare/map", body, size=SIZE)
