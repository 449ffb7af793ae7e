#!/usr/bin/env python3
# flatfile: trim punches holes that read back as zeros, and extents
# (NBD_CMD_BLOCK_STATUS, base:allocation) follow them, REQ_ONE included.

import os
import sys

sys.path.insert(0, os.environ.get("srcdir", os.path.dirname(__file__)))
import nbd  # noqa: E402
import nbdtest  # noqa: E402

M = 1024 * 1024
K = 1024
HOLE = nbd.STATE_HOLE | nbd.STATE_ZERO


def extents(h, count, offset, flags=0):
    """[(offset, length, flags)] as the server sent them."""
    out = []

    def cb(meta, off, entries, err):
        if meta != nbd.CONTEXT_BASE_ALLOCATION:
            return 0
        pos = off
        for i in range(0, len(entries), 2):
            out.append((pos, entries[i], entries[i + 1]))
            pos += entries[i]
        return 0
    h.block_status(count, offset, cb, flags)
    return out


def type_at(ext, offset):
    for off, length, flags in ext:
        if off <= offset < off + length:
            return flags
    raise AssertionError("no extent covers %d: %r" % (offset, ext))


def body(srv):
    h = srv.connect()
    if not h.can_trim():
        raise nbdtest.Skip("the file system cannot punch holes")
    size = h.get_size()
    a = os.urandom(M)
    b = os.urandom(M)
    h.pwrite(a, 4 * M)
    h.pwrite(b, 8 * M)
    h.flush()

    # A fresh sparse file: data exactly where we wrote.
    ext = extents(h, size, 0)
    assert ext[0][0] == 0, ext
    assert sum(e[1] for e in ext) >= size, ext
    assert type_at(ext, 0) == HOLE, ext
    assert type_at(ext, 4 * M - 1) == HOLE, ext
    assert type_at(ext, 4 * M) == 0, ext
    assert type_at(ext, 5 * M - 1) == 0, ext
    assert type_at(ext, 5 * M) == HOLE, ext
    assert type_at(ext, 8 * M) == 0, ext
    assert type_at(ext, size - 1) == HOLE, ext

    # REQ_ONE: exactly one extent, starting where asked.
    one = extents(h, size, 0, nbd.CMD_FLAG_REQ_ONE)
    assert len(one) == 1 and one[0][0] == 0 and one[0][2] == HOLE, one
    assert one[0][1] <= 4 * M, one
    one = extents(h, 2 * M, 4 * M + 4 * K, nbd.CMD_FLAG_REQ_ONE)
    assert len(one) == 1 and one[0][2] == 0, one

    # Trim the middle of the first block of data: page-aligned, so a real
    # hole appears and reads back as zeros; the rest is untouched.
    h.trim(512 * K, 4 * M + 256 * K)
    assert h.pread(512 * K, 4 * M + 256 * K) == bytes(512 * K)
    assert h.pread(256 * K, 4 * M) == a[:256 * K]
    assert h.pread(256 * K, 4 * M + 768 * K) == a[768 * K:]
    ext = extents(h, M, 4 * M)
    assert type_at(ext, 4 * M) == 0, ext
    assert type_at(ext, 4 * M + 256 * K) == HOLE, ext
    assert type_at(ext, 4 * M + 768 * K - 1) == HOLE, ext
    assert type_at(ext, 4 * M + 768 * K) == 0, ext

    # REQ_ONE starting inside the hole.
    one = extents(h, M, 4 * M + 300 * K, nbd.CMD_FLAG_REQ_ONE)
    assert len(one) == 1 and one[0][2] == HOLE, one
    assert one[0][0] == 4 * M + 300 * K, one

    # Unaligned trim: flatfile punches, so the bytes read back as zeros
    # and the neighbours keep their data.
    h.trim(1000, 8 * M + 5000, nbd.CMD_FLAG_FUA)
    assert h.pread(1000, 8 * M + 5000) == bytes(1000)
    assert h.pread(5000, 8 * M) == b[:5000]
    assert h.pread(M - 6000, 8 * M + 6000) == b[6000:]

    # Trim everything written: the whole disk is one hole again, and the
    # backing file agrees.
    h.trim(size, 0)
    h.flush()
    ext = extents(h, size, 0)
    assert all(e[2] == HOLE for e in ext), ext
    assert h.pread(2 * M, 4 * M) == bytes(2 * M)
    assert h.pread(M, 8 * M) == bytes(M)
    h.shutdown()
    path = [p[5:] for p in srv.params if p.startswith("file=")][0]
    assert os.stat(path).st_blocks == 0, os.stat(path)


nbdtest.run("flatfile trim punches holes, extents follow", body,
            backends=["flatfile"])
