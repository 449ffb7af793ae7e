#!/usr/bin/env python3
# flatfile: WRITE_ZEROES with and without MAY_TRIM (NBD_CMD_FLAG_NO_HOLE),
# with FAST_ZERO and FUA, aligned and not.  Without MAY_TRIM the range
# stays allocated in the backing file; with it, the blocks are freed.
# FAST_ZERO either succeeds or fails with ENOTSUP leaving the data alone.

import errno
import os
import sys

sys.path.insert(0, os.environ.get("srcdir", os.path.dirname(__file__)))
import nbd  # noqa: E402
import nbdtest  # noqa: E402

M = 1024 * 1024


def blocks(path):
    return os.stat(path).st_blocks * 512


def body(srv):
    path = [p[5:] for p in srv.params if p.startswith("file=")][0]
    h = srv.connect()
    assert h.can_zero() and h.can_fast_zero()
    data = os.urandom(8 * M)
    model = bytearray(data)     # what the disk must hold
    h.pwrite(data, 0)
    h.flush()
    punch = h.can_trim()        # the file system frees blocks
    before = blocks(path)

    # NO_HOLE: zeros, still allocated.
    h.zero(M, 0, nbd.CMD_FLAG_NO_HOLE)
    model[0:M] = bytes(M)
    assert h.pread(M, 0) == bytes(M)
    assert h.pread(M, M) == data[M:2 * M]
    h.flush()
    if punch:
        assert blocks(path) >= before, (blocks(path), before)

    # MAY_TRIM (libnbd's default): zeros, and the blocks go away.
    h.zero(M, M)
    model[M:2 * M] = bytes(M)
    assert h.pread(M, M) == bytes(M)
    h.flush()
    if punch:
        assert blocks(path) <= before - M, (blocks(path), before)

    # FAST_ZERO, with and without NO_HOLE: on a file system that can
    # punch or zero ranges this is fast; elsewhere it must fail at once
    # with ENOTSUP and change nothing.
    for off, flags in ((2 * M, nbd.CMD_FLAG_FAST_ZERO),
                       (3 * M, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)):
        try:
            h.zero(M, off, flags)
            assert h.pread(M, off) == bytes(M)
            model[off:off + M] = bytes(M)
        except nbd.Error as e:
            assert e.errnum == errno.ENOTSUP, e
            assert h.pread(M, off) == data[off:off + M]
            assert not punch, "FAST_ZERO refused where zeroing is fast"

    # Unaligned ranges and FUA: exact bytes zeroed, neighbours intact.
    for off, n, flags in ((4 * M + 1, 1000, 0),
                          (4 * M + 4095, 8194, nbd.CMD_FLAG_NO_HOLE),
                          (5 * M - 7, 70001, nbd.CMD_FLAG_FUA),
                          (6 * M + 100, 3 * 4096,
                           nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE)):
        h.zero(n, off, flags)
        model[off:off + n] = bytes(n)
        assert h.pread(n, off) == bytes(n), (off, n, flags)
    assert h.pread(8 * M, 0) == model

    # The last byte of the disk.
    size = h.get_size()
    h.pwrite(b"\xff", size - 1)
    h.zero(1, size - 1, nbd.CMD_FLAG_NO_HOLE)
    assert h.pread(2, size - 2) == b"\0\0"
    h.shutdown()

    # Untouched data made it to the file.
    with open(path, "rb") as f:
        f.seek(7 * M)
        assert f.read(M) == data[7 * M:]


nbdtest.run("flatfile zero: NO_HOLE, MAY_TRIM, FAST_ZERO, FUA", body,
            backends=["flatfile"])
