#!/usr/bin/python3
# cas format 4, review cases (helper v4review):
#  - an extent id must never name other data than what a published root
#    referenced under it: a damaged header of the newest extent record
#    (the only one of its id) must not let the next open hand its id out
#    again, or the old block descriptor reads the new extent's units, with
#    good CRCs: wrong data instead of EIO.

import errno
import os
import random

import nbd

import casformat as cf
from castest import BS, MiB, serve, stopped, connection, run_cases

SIZE = 32 * MiB
EXTENT = 4


def rand(seed, n):
    return random.Random(seed).randbytes(n)


def damaged_newest_extent_id_reused(server, d):
    store = os.path.join(d, "store")
    srv = serve(server, store, d, ["size=%d" % SIZE, "format=4"])
    with connection(srv) as h:
        h.pwrite(rand(1, BS), 0)
        h.flush()
    srv.kill9()                 # no index cache saved: the open scans
    extents = [(p, off) for p in cf.packs(store)
               for off, typ, _, _ in cf.records(p) if typ == EXTENT]
    assert extents, "no extent record"
    pack, off = extents[-1]
    cf.flip(pack, off + 20)     # the header (its id field): header CRC bad
    srv = serve(server, store, d)
    try:
        with connection(srv) as h:
            h.pwrite(rand(2, BS), 4 * BS)
            h.flush()
            try:
                got = h.pread(BS, 0)
            except nbd.Error as e:
                assert e.errnum == errno.EIO, e
                return
            assert got != rand(2, BS), \
                "block 0 reads block 4's new data: extent id handed out again"
            assert got == rand(1, BS), "block 0 reads wrong data"
    finally:
        stopped(srv)


run_cases([
    ("format 4 damaged newest extent: its id is not reused",
     damaged_newest_extent_id_reused),
], [])
