#!/usr/bin/env python3
# flatfile on a block device (a loop device over a sparse file): size from
# BLKGETSIZE64, round trips, trim (BLKDISCARD), zero (punch, BLKZEROOUT or
# written zeros), FAST_ZERO refused with ENOTSUP where only the slow path
# would do, extents (all data: devices have no holes to find).
# Needs root and loop devices; skipped (exit 77 style SKIP) otherwise.

import errno
import os
import shutil
import subprocess
import sys
import traceback

sys.path.insert(0, os.environ.get("srcdir", os.path.dirname(__file__)))
import nbd  # noqa: E402
import nbdtest  # noqa: E402

M = 1024 * 1024
SIZE = 64 * M


def body(srv, dev):
    h = srv.connect()
    assert h.get_size() == SIZE, h.get_size()
    assert not h.is_read_only()
    model = bytearray(os.urandom(SIZE // 4)) + bytearray(3 * SIZE // 4)
    h.pwrite(bytes(model[:SIZE // 4]), 0)
    h.pwrite(b"\x5a" * 777, SIZE - 777, nbd.CMD_FLAG_FUA)
    model[SIZE - 777:] = b"\x5a" * 777
    h.flush()
    assert h.pread(SIZE // 4, 0) == model[:SIZE // 4]

    # Trim: advisory on a device; the rest must be untouched.
    if h.can_trim():
        h.trim(M, 4 * M)
        h.trim(1000, 6 * M + 3)      # not whole sectors: shrunk or ignored
        model[4 * M:5 * M] = h.pread(M, 4 * M)   # contents now undefined
        model[6 * M + 3:6 * M + 1003] = h.pread(1000, 6 * M + 3)

    # FAST_ZERO without permission to punch: only BLKZEROOUT / written
    # zeros would do, so ENOTSUP at once and nothing changes.
    try:
        h.zero(M, 8 * M, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
        raise AssertionError("FAST_ZERO|NO_HOLE succeeded on a device")
    except nbd.Error as e:
        assert e.errnum == errno.ENOTSUP, e
    assert h.pread(M, 8 * M) == model[8 * M:9 * M]

    # FAST_ZERO that may punch: fast if the device zeroes on discard.
    try:
        h.zero(M, 9 * M, nbd.CMD_FLAG_FAST_ZERO)
        model[9 * M:10 * M] = bytes(M)
    except nbd.Error as e:
        assert e.errnum == errno.ENOTSUP, e

    # Slow zeroing works, aligned and not, with and without FUA.
    for off, n, flags in ((10 * M, M, nbd.CMD_FLAG_NO_HOLE),
                          (11 * M, M, 0),
                          (12 * M + 1, 1000, 0),
                          (13 * M - 5, 70000, nbd.CMD_FLAG_FUA),
                          (SIZE - 100, 100, nbd.CMD_FLAG_NO_HOLE)):
        h.zero(n, off, flags)
        model[off:off + n] = bytes(n)
        assert h.pread(n, off) == bytes(n), (off, n)

    # Extents: one data extent (no SEEK_DATA on devices).
    seen = []

    def cb(meta, off, entries, err):
        seen.extend(entries)
        return 0
    h.block_status(SIZE, 0, cb)
    assert seen and seen[1] == 0, seen

    h.cache(M, 0)
    assert h.pread(SIZE // 4, 0) == model[:SIZE // 4]
    h.flush()
    h.shutdown()
    with open(dev, "rb") as f:
        assert f.read() == model, "device contents differ"


def main():
    ps = nbdtest.pairs(backends=["flatfile"])
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        nbdtest.skip_all("needs root and losetup for a loop device")
    tap = nbdtest.TAP(len(ps))
    for server, backend in ps:
        desc = "flatfile on a block device [%s+%s]" % (server, backend)
        d = nbdtest.tmpdir()
        dev = srv = None
        try:
            img = os.path.join(d, "backing.img")
            with open(img, "wb") as f:
                f.truncate(SIZE)
            r = subprocess.run(["losetup", "-f", "--show", img],
                               capture_output=True, text=True)
            if r.returncode != 0:
                tap.skip(desc, "no loop device: " + r.stderr.strip())
                continue
            dev = r.stdout.strip()
            srv = nbdtest.Server(server, backend, ["file=" + dev], d).start()
            body(srv, dev)
            rc = srv.stop()
            tap.ok(rc == 0 or server == "nbdkit", desc,
                   "server exited with %s\n%s" % (rc, srv.log()))
        except Exception:
            log = srv.log() if srv else ""
            if srv:
                srv.kill9()
            tap.ok(False, desc, traceback.format_exc() + "server log:\n" + log)
        finally:
            if dev:
                subprocess.run(["losetup", "-d", dev])
            shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


main()
