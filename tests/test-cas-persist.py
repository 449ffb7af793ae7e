#!/usr/bin/python3
# cas: data persists across restarts: after flush, after a clean
# disconnect without flush, with the index cache, and with the index
# cache deleted (rebuilt from the packs).

import os
import random

import nbdtest

MiB = 1024 * 1024
SIZE = 64 * MiB


def body(srv):
    store = os.path.join(srv.workdir, "store")
    rnd = random.Random(4)
    model = bytearray(SIZE)

    def write(h, off, n):
        data = os.urandom(n)
        h.pwrite(data, off)
        model[off:off + n] = data

    h = srv.connect()
    for _ in range(40):
        n = rnd.choice([1, 512, 4096, 65536, 100000, MiB])
        off = rnd.randrange(0, SIZE - n)
        write(h, off, n)
    h.flush()
    h.shutdown()
    srv.restart()
    h = srv.connect()
    assert h.pread(SIZE, 0) == bytes(model), "after flush + restart"

    # No flush: the last close commits.
    write(h, 3 * MiB + 7, 2 * MiB)
    h.shutdown()
    srv.restart()
    h = srv.connect()
    assert h.pread(SIZE, 0) == bytes(model), "after close + restart"
    h.shutdown()

    # Without the index cache the index is rebuilt from the packs.
    srv.stop()
    os.unlink(os.path.join(store, "index"))
    srv.start()
    h = srv.connect()
    assert h.pread(SIZE, 0) == bytes(model), "after index rebuild"
    write(h, 60 * MiB, MiB)
    h.flush()
    h.shutdown()
    srv.restart()
    h = srv.connect()
    assert h.pread(SIZE, 0) == bytes(model), "after rebuild + writes"

    # Opened without size= it still serves the same volume.
    h.shutdown()
    srv.stop()
    srv.params = [p for p in srv.params if not p.startswith("size=")]
    srv.start()
    h = srv.connect()
    assert h.get_size() == SIZE
    assert h.pread(SIZE, 0) == bytes(model), "without size="
    h.shutdown()


nbdtest.run("cas persistence across restarts", body, backends=["cas"],
            size=SIZE)
