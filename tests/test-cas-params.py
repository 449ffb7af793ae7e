#!/usr/bin/python3
# cas: every bad parameter and unusable store gives a clear message and a
# non-zero exit, on every server.

import os
import struct
import subprocess

import nbdtest

MiB = 1024 * 1024


def make_store(d, extra=()):
    """A real store in d/store (made by briefly running the server)."""
    store = os.path.join(d, "store")
    return store


def cases(d):
    store = os.path.join(d, "store")       # created by "create" below
    absent = os.path.join(d, "absent")
    afile = os.path.join(d, "afile")
    junk = os.path.join(d, "junk")
    oldver = os.path.join(d, "oldver")
    S = "store=" + store
    return [
        ("no store=", [], "store=DIR is required", None),
        ("empty store=", ["store="], "store= must name a path", None),
        ("store= twice", [S, "store=" + absent, "size=1M"], "given twice",
         None),
        ("size=abc", ["store=" + absent, "size=abc"], "size", None),
        ("size=0", ["store=" + absent, "size=0"], "size=0", None),
        ("size=2P", ["store=" + absent, "size=2P"], "size=2P", None),
        ("blocksize=3000", ["store=" + absent, "size=1M", "blocksize=3000"],
         "power of two", None),
        ("blocksize=2M", ["store=" + absent, "size=1M", "blocksize=2M"],
         "power of two", None),
        ("blocksize=2K", ["store=" + absent, "size=1M", "blocksize=2K"],
         "power of two", None),
        ("format=3", ["store=" + absent, "size=1M", "format=3"],
         "format=3: a new store is created at format 2", None),
        ("format=4 at blocksize=128K", ["store=" + absent, "size=1M",
                                        "format=4", "blocksize=128K"],
         "format: format 4: the block size 131072 is too large", None),
        ("verify=bogus", ["store=" + absent, "size=1M", "verify=bogus"],
         "verify=bogus", None),
        ("mapcache=512K", ["store=" + absent, "size=1M", "mapcache=512K"],
         "mapcache=512K: must be a size from 1M to 1T", None),
        ("mapcache=2T", ["store=" + absent, "size=1M", "mapcache=2T"],
         "mapcache=2T: must be a size from 1M to 1T", None),
        ("mapcache=lots", ["store=" + absent, "size=1M", "mapcache=lots"],
         "mapcache", None),
        ("dirtycache=2T", ["store=" + absent, "size=1M", "dirtycache=2T"],
         "dirtycache=2T: must be a size from 0 to 1T", None),
        ("dirtycache=-1", ["store=" + absent, "size=1M", "dirtycache=-1"],
         "dirtycache=-1: must be a size from 0 to 1T", None),
        ("dirtycache=lots", ["store=" + absent, "size=1M",
                             "dirtycache=lots"], "dirtycache=lots", None),
        ("dirtycache=64K", ["store=" + absent, "size=1M",
                            "dirtycache=64K"],
         "dirtycache=64K: 65536 bytes hold fewer than 8 blocks of this "
         "store's block size (65536): give 0 (no write-back cache) or at "
         "least", None),
        ("dirtycache=1M at 1M blocks", ["store=" + absent, "size=1M",
                                        "blocksize=1M", "dirtycache=1M"],
         "dirtycache=1M: 1048576 bytes hold fewer than 8 blocks", None),
        ("dirtycache=64K, existing store", [S, "dirtycache=64K"],
         "dirtycache=64K: 65536 bytes hold fewer than 8 blocks", None),
        ("readonly=maybe", ["store=" + absent, "size=1M", "readonly=maybe"],
         "readonly", None),
        ("gc=sometimes", ["store=" + absent, "size=1M", "gc=sometimes"],
         "gc=sometimes: must be off or auto", None),
        ("gc-min=1K", ["store=" + absent, "size=1M", "gc-min=1K"],
         "gc-min=1K: must be a size from 1M", None),
        ("volume=../x", ["store=" + absent, "size=1M", "volume=../x"],
         "invalid volume name", None),
        ("volume=.x", ["store=" + absent, "size=1M", "volume=.x"],
         "invalid volume name", None),
        ("unknown key", ["store=" + absent, "size=1M", "colour=blue"],
         "unknown parameter", None),
        ("absent store, no size", ["store=" + absent],
         "is not a cas store; add size=", None),
        ("store is a file", ["store=" + afile, "size=1M"],
         "not a directory", lambda: open(afile, "w").write("x")),
        ("non-store directory", ["store=" + junk, "size=1M"],
         "not empty",
         lambda: (os.mkdir(junk), open(os.path.join(junk, "f"), "w"))),
        ("shrinking the volume", [S, "size=1M"], "shrink", None),
        ("blocksize of an existing store", [S, "blocksize=4K"],
         "differs from the store's block size", None),
        ("unknown default volume", [S, "volume=other"],
         "has no volume 'other'", None),
        ("wrong format version", ["store=" + oldver], "format version 99",
         lambda: set_version(store, oldver, 99)),
        ("readonly creation", ["store=" + absent, "size=1M",
                               "readonly=true"], "readonly", None),
    ]


def set_version(src, dst, v):
    subprocess.run(["cp", "-a", src, dst], check=True)
    sb = os.path.join(dst, "superblock")
    with open(sb, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", v))


def expect_fail(server, params, d, want):
    srv = nbdtest.Server(server, "cas", params, d)
    if os.path.exists(srv.stderr_path):
        os.unlink(srv.stderr_path)
    srv.start()
    try:
        rc = srv.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        srv.stop()
        return False, "server kept running"
    srv.proc = None
    srv.errf.close()
    log = srv.log()
    if rc == 0:
        return False, "exit status 0\n" + log
    if want not in log:
        return False, "message %r not in:\n%s" % (want, log)
    return True, ""


def main():
    ps = nbdtest.pairs(backends=["cas"])
    d0 = nbdtest.tmpdir()
    n = len(cases(d0)) + 1
    tap = nbdtest.TAP(n * len(ps))
    for server, _ in ps:
        d = nbdtest.tmpdir()
        try:
            # A real store with a 2 MiB default volume.
            store = os.path.join(d, "store")
            good = nbdtest.Server(server, "cas",
                                  ["store=" + store, "size=2M"], d).start()
            h = good.connect()
            h.shutdown()
            # While it runs, a second server on the same store is refused.
            ok, why = expect_fail(server, ["store=" + store], d,
                                  "in use by another process")
            tap.ok(ok, "cas params: store locked by another process [%s]"
                   % server, why)
            good.stop()
            for name, params, want, setup in cases(d):
                if setup:
                    setup()
                ok, why = expect_fail(server, params, d, want)
                tap.ok(ok, "cas params: %s [%s+cas]" % (name, server), why)
        finally:
            subprocess.run(["rm", "-rf", d])
    subprocess.run(["rm", "-rf", d0])
    raise SystemExit(1 if tap.failed else 0)


main()
