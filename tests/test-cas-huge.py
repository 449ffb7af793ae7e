#!/usr/bin/python3
# cas: a volume costs memory for what is mapped, not for its size.  A
# 1 PiB volume with 4 KiB blocks has 2^28 map leaves; the server opens it,
# writes and reads at its start, middle and end, flushes, reports extents
# and reopens it, with its peak RSS staying small (a map held as flat
# arrays would need 10 GiB).  nbdcas stat and fsck see the same volume.

import os

import nbd
import nbdtest

PiB = 1 << 50
BS = 4096
RSS_LIMIT_KIB = 256 * 1024      # ASan's shadow memory included

# (offset, length): the first block, an unaligned run across blocks and
# leaves in the middle, the last block.
PLACES = [(0, BS), (PiB // 2 - 3000, 3 * BS + 1000), (PiB - BS, BS)]


def check_rss(srv, when):
    if nbdtest.VALGRIND:
        return                  # valgrind's own memory is in the figure
    kib = nbdtest.proc_status(srv.proc.pid)["VmHWM"]
    assert kib < RSS_LIMIT_KIB, \
        "peak RSS %d KiB %s (limit %d KiB)" % (kib, when, RSS_LIMIT_KIB)


def check_data(h):
    for i, (off, n) in enumerate(PLACES):
        got = h.pread(n, off)
        assert got == nbdtest.random_nonzero(n, 100 + i), \
            "data at %d differs" % off
    # Between them: zeros, reported as a hole.
    assert h.pread(BS, PiB // 4) == bytes(BS)
    exts = nbdtest.extents(h, PiB // 4, 64 * 1024 * 1024)
    assert all(st & nbd.STATE_HOLE
               for st in nbdtest.state_at(exts, PiB // 4, BS)), exts
    exts = nbdtest.extents(h, PiB - BS, BS)
    assert nbdtest.state_at(exts, PiB - BS, BS) == {0}, exts


def body(srv):
    store = os.path.join(srv.workdir, "store")
    h = srv.connect()
    assert h.get_size() == PiB, h.get_size()
    for i, (off, n) in enumerate(PLACES):
        h.pwrite(nbdtest.random_nonzero(n, 100 + i), off)
    check_data(h)
    h.flush()
    check_data(h)
    h.shutdown()
    check_rss(srv, "after writing and flushing")

    srv.restart()
    h = srv.connect()
    check_data(h)
    # Unmap one place again: the map shrinks back to what is left.
    h.trim(BS, 0)
    h.flush()
    assert h.pread(BS, 0) == bytes(BS)
    h.shutdown()
    check_rss(srv, "after reopening")
    srv.stop()

    out = nbdtest.cmd([os.environ["NBDCAS"], "stat", store], timeout=600)
    assert "1.00 PiB" in out.stdout or str(PiB) in out.stdout, out.stdout
    nbdtest.cmd([os.environ["NBDCAS"], "fsck", store], timeout=600)
    srv.start()


nbdtest.run("cas huge sparse volume (1 PiB, 4 KiB blocks)", body,
            backends=["cas"], size=PiB, params={"blocksize": BS})
