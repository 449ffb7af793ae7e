#!/usr/bin/python3
# cas: identical blocks are stored once, within a volume and across
# volumes; zero blocks are never stored.  Measured on disk: the bytes of
# the store's pack files.

import glob
import os

import nbdtest

MiB = 1024 * 1024
DATA = 8 * MiB


def pack_bytes(store):
    return sum(os.path.getsize(p)
               for p in glob.glob(os.path.join(store, "packs", "*")))


def body(srv):
    store = os.path.join(srv.workdir, "store")
    data = os.urandom(DATA)

    h = srv.connect()
    h.flush()
    base = pack_bytes(store)

    h.pwrite(data, 0)
    h.flush()
    once = pack_bytes(store)
    grew = once - base
    assert DATA <= grew < DATA * 1.05, \
        "first copy: packs grew by %d for %d bytes" % (grew, DATA)

    # The same data again at another offset: only map nodes are new.
    h.pwrite(data, 32 * MiB)
    h.flush()
    twice = pack_bytes(store)
    assert twice - once < DATA * 0.02, \
        "second copy in one volume: packs grew by %d" % (twice - once)
    assert h.pread(DATA, 32 * MiB) == data
    assert h.pread(DATA, 0) == data

    # Duplicate blocks inside one request.
    blk = os.urandom(64 * 1024)
    h.pwrite(blk * 16, 48 * MiB)
    h.flush()
    thrice = pack_bytes(store)
    assert thrice - twice < 64 * 1024 + 256 * 1024, \
        "16 equal blocks: packs grew by %d" % (thrice - twice)
    h.shutdown()

    # A second volume in the same store (volume= creates it with size=).
    srv.stop()
    srv.params.append("volume=second")
    srv.start()
    h2 = srv.connect("second")
    h2.pwrite(data, 5 * MiB)
    h2.flush()
    across = pack_bytes(store)
    assert across - thrice < DATA * 0.02, \
        "copy in a second volume: packs grew by %d" % (across - thrice)
    assert h2.pread(DATA, 5 * MiB) == data
    # Both volumes are listed, and the first one is intact.
    h1 = srv.connect("default")
    assert h1.pread(DATA, 32 * MiB) == data
    h1.shutdown()
    h2.shutdown()


nbdtest.run("cas dedup within and across volumes", body, backends=["cas"])
