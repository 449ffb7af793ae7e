#!/usr/bin/python3
# cas garbage collection (issue 12), on every server that serves cas and
# through the nbdcas tool offline:
#  - an overwrite-heavy volume: after gc the packs are within 10% of the
#    live data (du), and every byte reads back; deleting snapshots then
#    collecting gives their space back;
#  - the classic race, made deterministic by pausing gc between mark and
#    sweep (test point gc-marked): a write that deduplicates against a
#    chunk that was garbage when marked, and one of new data, both
#    survive the sweep and a kill -9;
#  - 4 clients write random, partly duplicate data and flush while gc
#    runs again and again: the volume matches the model afterwards;
#  - kill -9 of the tool at 20+ points across gc's phases, and of the
#    server twice: the store opens, fsck --full passes, every flushed
#    byte is there, and a second gc finishes the job;
#  - ENOSPC and EIO while gc copies or syncs: gc fails with a message,
#    nothing is lost;
#  - a store with an unreadable volume root is not collected.
# Most cases are gctest.py's, shared with test-cas-v4-gc.py (format 4).
# Every store here is made at format 2 (format=2, --format 2), so that this
# stays the test of format 2's collection (data records, chunks by hash)
# whatever the default.

import os
import random
import sys

sys.path.insert(0, os.environ.get("srcdir", os.path.dirname(__file__)))
import gctest  # noqa: E402
from castest import (connection, read_volume, run_cases,  # noqa: E402
                     stopped, tool)
from gctest import (SIZE, check_gc, du_packs, overwrite,  # noqa: E402
                    prepared_store, referenced)

FLAVOUR = gctest.Flavour(params=["format=2"], create=["--format", "2"])


def new_server(server, d, **kw):
    return gctest.new_server(FLAVOUR, server, d, **kw)


# ---- space comes back ----

def overwrite_heavy(server, d):
    rnd = random.Random(1)
    model = bytearray(SIZE)
    srv, store = new_server(server, d)
    try:
        with connection(srv) as h:
            overwrite(h, rnd, model, 5)
        before = du_packs(store)
        p = tool("gc", store, check=0)
        assert "gave back" in p.stdout, p.stdout
        live = referenced(store)
        check_gc(store, live)
        assert du_packs(store) < before / 3, (before, du_packs(store))
        assert read_volume(srv, "", SIZE) == bytes(model)
        srv.kill9()
        srv.start().ready()
        assert read_volume(srv, "", SIZE) == bytes(model)
    finally:
        stopped(srv)
    tool("fsck", store, "--full", check=0)


def snapshots_then_gc(server, d):
    rnd = random.Random(2)
    model = bytearray(SIZE)
    srv, store = new_server(server, d)
    try:
        with connection(srv) as h:
            overwrite(h, rnd, model, 1)
            tool("snapshot", store, "default", "s1", check=0)
            s1 = bytes(model)
            overwrite(h, rnd, model, 1)
            tool("snapshot", store, "default", "s2", check=0)
            overwrite(h, rnd, model, 1)
        tool("gc", store, check=0)
        # Everything is still referenced: three versions stay.
        assert du_packs(store) > 2.8 * SIZE, du_packs(store)
        assert read_volume(srv, "default@s1", SIZE) == s1
        tool("delete", store, "default@s1", check=0)
        tool("delete", store, "default@s2", check=0)
        tool("gc", store, check=0)
        check_gc(store, referenced(store))
        assert read_volume(srv, "", SIZE) == bytes(model)
    finally:
        stopped(srv)
    tool("fsck", store, "--full", check=0)


def damaged_root_refused(d):
    base, model = prepared_store(FLAVOUR, d, 9)
    tool("create", base, "--size", "1M", "--volume", "broken", check=0)
    with open(os.path.join(base, "volumes", "broken"), "r+b") as f:
        f.seek(20)
        f.write(b"garbage")
    before = du_packs(base)
    p = tool("gc", base, check=1)
    assert "'broken' cannot be read" in p.stderr, p.stderr
    assert du_packs(base) == before


def main():
    per_server = [
        ("overwrite-heavy volume: gc brings the packs within 10% of the "
         "live data", overwrite_heavy),
        ("deleted snapshots: gc gives their space back", snapshots_then_gc),
        ("a dedup hit on garbage between mark and sweep survives",
         lambda s, d: gctest.dedup_race(FLAVOUR, s, d)),
        ("4 writers with flushes while gc runs: data as the model",
         lambda s, d: gctest.writers_during_gc(FLAVOUR, s, d)),
        ("kill -9 of the server during gc",
         lambda s, d: gctest.kill_server_during_gc(FLAVOUR, s, d)),
        ("gc=auto gives the space back by itself",
         lambda s, d: gctest.automatic_gc(FLAVOUR, s, d)),
    ]
    tool_only = [
        ("kill -9 of gc at 20+ points: nothing lost, gc finishes later",
         lambda d: gctest.kill_tool_during_gc(FLAVOUR, d)),
        ("ENOSPC and EIO during gc: a message, nothing lost",
         lambda d: gctest.faults_during_gc(FLAVOUR, d)),
        ("a store with an unreadable root is not collected",
         damaged_root_refused),
    ]
    run_cases(per_server, tool_only)


main()
