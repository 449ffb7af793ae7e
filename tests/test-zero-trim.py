#!/usr/bin/python3
# TRIM and WRITE_ZEROES (plain, NO_HOLE, FAST_ZERO, FUA) read back as
# zeros without disturbing neighbours, and base:allocation extents
# report zeroed / trimmed ranges as zero and written ranges as data.

import errno

import nbd
import nbdtest

SIZE = 64 * 1024 * 1024
MiB = 1024 * 1024
ZERO = nbd.STATE_ZERO


def body(srv):
    h = srv.connect()
    assert h.can_trim() and h.can_zero()
    assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)

    # A fresh disk is one zero region (holes or not).
    ex = nbdtest.extents(h)
    assert nbdtest.state_at(ex, 0, SIZE) <= {ZERO, ZERO | nbd.STATE_HOLE}, \
        "fresh disk extents not all zero: %r" % ex[:10]

    # Fill the first 32 MiB with data (no byte zero, so any zeroing shows).
    model = bytearray(SIZE)
    data = nbdtest.random_nonzero(32 * MiB, 7)
    for off in range(0, 32 * MiB, 8 * MiB):
        h.pwrite(data[off:off + 8 * MiB], off)
    model[0:32 * MiB] = data
    h.flush()
    ex = nbdtest.extents(h, 0, 32 * MiB)
    assert not any(st & ZERO for (_, _, st) in ex), \
        "written data reported as zero: %r" % ex[:10]

    def zero_range(off, n):
        model[off:off + n] = bytes(n)

    # Aligned 1 MiB operations (whole blocks for every cas block size).
    h.trim(MiB, 1 * MiB)
    zero_range(1 * MiB, MiB)
    h.zero(MiB, 3 * MiB)
    zero_range(3 * MiB, MiB)
    h.zero(MiB, 5 * MiB, nbd.CMD_FLAG_NO_HOLE)
    zero_range(5 * MiB, MiB)
    h.zero(MiB, 7 * MiB, nbd.CMD_FLAG_FUA)
    zero_range(7 * MiB, MiB)
    # FAST_ZERO: either done (and zero) or refused at once with ENOTSUP
    # and nothing changed.
    if h.can_fast_zero():
        try:
            h.zero(MiB, 9 * MiB, nbd.CMD_FLAG_FAST_ZERO)
            zero_range(9 * MiB, MiB)
        except nbd.Error as e:
            assert e.errnum == errno.ENOTSUP, \
                "FAST_ZERO failed with %s, not ENOTSUP" % e
    # Trim with FUA.
    h.trim(2 * MiB, 11 * MiB, nbd.CMD_FLAG_FUA)
    zero_range(11 * MiB, 2 * MiB)

    # Unaligned ranges, at odd offsets, crossing block boundaries.
    for (off, n, how) in [(15 * MiB + 1, 3, "trim"),
                          (15 * MiB + 4093, 9000, "zero"),
                          (16 * MiB - 17, MiB + 34, "zero-nohole"),
                          (18 * MiB + 100, 2 * MiB, "trim"),
                          (21 * MiB - 1, 1, "zero"),
                          (22 * MiB + 4096 * 3 + 1, 65536 * 3, "trim")]:
        if how == "trim":
            # TRIM is advisory: it may leave data or zero it; it must not
            # touch anything outside the range.  Our backends zero.
            h.trim(n, off)
        elif how == "zero":
            h.zero(n, off)
        else:
            h.zero(n, off, nbd.CMD_FLAG_NO_HOLE)
        zero_range(off, n)
        lo, hi = max(0, off - 65536), min(SIZE, off + n + 65536)
        got = h.pread(hi - lo, lo)
        assert got == bytes(model[lo:hi]), \
            "%s %d@%d: read back differs around the range" % (how, n, off)

    # The tail of the disk, up to the last byte.
    h.pwrite(b"\xaa" * 8192, SIZE - 8192)
    h.zero(4097, SIZE - 4097)
    h.trim(1, SIZE - 1)
    model[SIZE - 8192:SIZE - 4097] = b"\xaa" * 4095
    assert h.pread(8192, SIZE - 8192) == bytes(model[SIZE - 8192:])

    h.flush()
    got = h.pread(32 * MiB, 0)
    assert got == bytes(model[0:32 * MiB]), "first 32 MiB differ from model"

    # Extents: zeroed and trimmed aligned ranges read as zero; untouched
    # data regions do not.
    for (conn, name) in [(h, "same connection"), (srv.connect(), "new")]:
        ex = nbdtest.extents(conn)
        for (off, n) in [(MiB, MiB), (3 * MiB, MiB), (7 * MiB, MiB),
                         (11 * MiB, 2 * MiB), (32 * MiB, 31 * MiB)]:
            st = nbdtest.state_at(ex, off, n)
            assert all(s & ZERO for s in st), \
                "%s: %d@%d zeroed/trimmed but extents say %r: %r" % (
                    name, n, off, st, ex[:20])
        for (off, n) in [(0, MiB), (2 * MiB, MiB), (4 * MiB, MiB),
                         (13 * MiB, 2 * MiB), (24 * MiB, 8 * MiB)]:
            st = nbdtest.state_at(ex, off, n)
            assert not any(s & ZERO for s in st), \
                "%s: data at %d@%d reported zero: %r" % (name, n, off, ex[:20])
        # REQ_ONE answers one extent, consistent with the full answer.
        one = nbdtest.extents(conn, 11 * MiB, 2 * MiB, nbd.CMD_FLAG_REQ_ONE)
        assert all(st & ZERO for (_, _, st) in one), one
        # Repeatable.
        assert nbdtest.extents(conn) == ex, "extents not repeatable"
        # Structured reads of zeroed ranges still return zeros.
        assert conn.pread(2 * MiB, 11 * MiB) == bytes(2 * MiB)
    h.shutdown()

    # Zeroing the whole disk at once (qemu-img convert does this).
    h = srv.connect()
    h.zero(SIZE, 0)
    h.flush()
    ex = nbdtest.extents(h)
    assert all(st & ZERO for (_, _, st) in ex), \
        "whole-disk zero: extents %r" % ex[:10]
    assert h.pread(4 * MiB, 0) == bytes(4 * MiB)
    assert h.pread(4 * MiB, SIZE - 4 * MiB) == bytes(4 * MiB)
    h.shutdown()


nbdtest.run("trim and write_zeroes, extents", body, size=SIZE)
