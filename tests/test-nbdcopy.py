#!/usr/bin/python3
# nbdcopy round trips of 256 MiB (64 under valgrind or a sanitizer) of
# random data with holes, checked with cmp: file -> server with --flush
# and back through a pipe (1 connection, --synchronous --no-extents);
# then with several connections (-C 4 -T 4, multi-conn) into the wiped
# disk and, after a server restart, back into a sparse file using block
# status.

import os

import nbdtest

MiB = 1024 * 1024
# 64 MiB under valgrind or a sanitizer: the same layout and requests in
# flight, a quarter of the bytes to check.
SIZE = (64 if nbdtest.VALGRIND or nbdtest.SANITIZED else 256) * MiB


def make_source(path, regions, seed):
    """A sparse file of SIZE with random data in the given (off, len)."""
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for i, (off, ln) in enumerate(regions):
            f.seek(off)
            for k in range(0, ln, 16 * MiB):
                f.write(nbdtest.random_bytes(min(16 * MiB, ln - k),
                                             seed * 1000 + i * 100 + k))


def cmp(a, b):
    nbdtest.cmd(["cmp", a, b])


def pipe_cmp(argv, ref):
    """nbdcopy ... - | cmp - ref (no temporary file)."""
    p = nbdtest.cmd(["sh", "-c", '"$@" | cmp - "$0"', ref] + argv,
                    check=False)
    assert p.returncode == 0, "%s | cmp - %s: rc %d\n%s%s" % (
        " ".join(argv), ref, p.returncode, p.stdout, p.stderr)


def body(srv):
    d = srv.workdir
    uri = srv.uri()
    src = os.path.join(d, "src.img")
    out = os.path.join(d, "out.img")
    # Mostly data, a hole of 1/8, an odd-sized tail, data in the last MiB.
    q = SIZE // 256
    make_source(src, [(0, 96 * q), (128 * q, 100 * q + 12345),
                      (SIZE - MiB, MiB)], 1)

    # One connection each way; reading back without block status,
    # synchronously, to stdout.
    nbdtest.cmd(["nbdcopy", "-C", "1", "--flush", src, uri])
    pipe_cmp(["nbdcopy", "-C", "1", "--synchronous", "--no-extents",
              uri, "-"], src)

    # Several connections (nbdcopy opens more than one only when the
    # server advertises multi-conn; -C is capped by -T).  Wipe the disk
    # first so stale data cannot pass; read back after a restart, into a
    # sparse file, using block status.
    h = srv.connect()
    multi = h.can_multi_conn()
    h.zero(SIZE, 0)
    h.flush()
    assert h.pread(MiB, 0) == bytes(MiB)
    h.shutdown()
    if srv.backend == "flatfile":
        assert multi, "flatfile does not advertise multi-conn"
    nbdtest.cmd(["nbdcopy", "-C", "4", "-T", "4", "--flush", src, uri])
    srv.restart()
    nbdtest.cmd(["nbdcopy", "-C", "4", "-T", "4", srv.uri(), out])
    cmp(src, out)


nbdtest.require_tool("nbdcopy")
nbdtest.run("nbdcopy %d MiB round trip" % (SIZE // MiB), body, size=SIZE)
