#!/usr/bin/env python3
# nbdcas and the servers agree on the store: what a client wrote is what
# `nbdcas export` gets (while the server runs: through its control
# socket, and after it stopped), what `nbdcas import` put is what a
# client reads, import into a served store is refused (write through NBD
# instead), and fsck passes on a store a server wrote.  Runs on every
# server that serves cas.

import os
import random
import subprocess

import nbdtest

MiB = 1024 * 1024
SIZE = 64 * MiB
NBDCAS = os.environ["NBDCAS"]


def nbdcas(*args, check=0):
    p = subprocess.run([NBDCAS] + [str(a) for a in args],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=600)
    assert check is None or p.returncode == check, \
        "nbdcas %s: exit %d, expected %s\n%s%s" % (
            " ".join(map(str, args)), p.returncode, check, p.stdout,
            p.stderr)
    return p


def body(srv):
    store = os.path.join(srv.workdir, "store")
    rnd = random.Random(7)
    model = bytearray(SIZE)

    # A client writes; while the server runs, the tool keeps off.
    h = srv.connect()
    for _ in range(30):
        n = rnd.choice([4096, 65536, 100000, MiB, 3 * MiB + 5])
        off = rnd.randrange(0, SIZE - n)
        data = os.urandom(n)
        h.pwrite(data, off)
        model[off:off + n] = data
    h.pwrite(bytes(model[:MiB]), 40 * MiB)          # a duplicate MiB
    model[40 * MiB:41 * MiB] = model[:MiB]
    h.flush()
    # While it is served, the server runs the commands: the same answers.
    p = nbdcas("list", store)
    assert p.stdout.startswith("default\t%d\t" % SIZE), p.stdout
    live = os.path.join(srv.workdir, "live.img")
    nbdcas("export", store, "default", live)
    with open(live, "rb") as f:
        assert f.read() == bytes(model), "live export differs from the writes"
    os.unlink(live)
    nbdcas("fsck", store)
    small = os.path.join(srv.workdir, "small.img")
    with open(small, "wb") as f:
        f.write(os.urandom(MiB))
    p = nbdcas("import", store, "other", small, "--create", check=1)
    assert "is being served" in p.stderr, p.stderr
    h.shutdown()
    srv.stop()

    # The tool reads what the client wrote.
    out = os.path.join(srv.workdir, "out.img")
    nbdcas("export", store, "default", out)
    with open(out, "rb") as f:
        assert f.read() == bytes(model), "export differs from the writes"
    nbdcas("fsck", store, "--full")
    p = nbdcas("stat", store, "default", "--json")
    assert '"size": %d' % SIZE in p.stdout, p.stdout

    # A client reads what the tool imported, under its volume name.
    img = os.path.join(srv.workdir, "in.img")
    want = os.urandom(5 * MiB + 4321) + bytes(2 * MiB) + os.urandom(MiB)
    with open(img, "wb") as f:
        f.write(want)
    nbdcas("import", store, "imported", img, "--create")
    srv.start()
    h = srv.connect("imported")
    assert h.get_size() == len(want)
    assert h.pread(len(want), 0) == want, "served data differs from import"
    h.shutdown()
    h = srv.connect()
    assert h.pread(SIZE, 0) == bytes(model), "default volume changed"
    h.shutdown()


nbdtest.run("nbdcas tool and server share a store", body,
            backends=["cas"], size=SIZE)
