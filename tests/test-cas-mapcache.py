#!/usr/bin/python3
# cas: the block map's leaf cache (mapcache=) bounds memory and loses
# nothing.  With mapcache=1M (31 leaves of 1024 block hashes) and 4 KiB
# blocks, a 16 GiB volume has 4096 leaves, so nearly every request below
# evicts a leaf, most of them dirty (written back before they go):
#  1. one block written in each of the 4096 leaves, no flush; all read
#     back (reloaded from written-back nodes); flush; read back again;
#  2. 4 clients at once, each owning every 4th block, doing random full
#     and partial writes, trims and reads over all leaves, every read
#     checked against a model; flush;
#  3. restart: everything flushed reads back; nbdcas fsck is clean;
#  4. more writes, then flush, more writes, kill -9: after a restart each
#     block holds its flushed content or its later one, never anything
#     else, and fsck is clean.
# The server's peak RSS must stay far below the 128 MiB an unbounded
# cache would hold (judged only without valgrind and sanitizers).

import os
import random
import threading

import nbd
import nbdtest

BS = 4096
LEAF_SPAN = 1024 * BS           # volume bytes per map leaf
NLEAVES = 4096
SIZE = NLEAVES * LEAF_SPAN      # 16 GiB
RSS_LIMIT_KIB = 64 * 1024
CLIENTS = 4
OPS = 300 if nbdtest.VALGRIND else 1500
# Under valgrind, a block in every 4th leaf: still 1024 leaves for a
# cache of 31.
STEP = 4 if nbdtest.VALGRIND else 1


def block_data(tag, b):
    return nbdtest.random_nonzero(BS, hash((tag, b)) & 0xffffffff)


def check_rss(srv, when):
    if not nbdtest.JUDGE_MEMORY:
        return
    kib = nbdtest.proc_status(srv.proc.pid)["VmHWM"]
    assert kib < RSS_LIMIT_KIB, \
        "peak RSS %d KiB %s (limit %d KiB)" % (kib, when, RSS_LIMIT_KIB)


def fsck(store):
    nbdtest.cmd([os.environ["NBDCAS"], "fsck", store], timeout=600)


class Model:
    """What each block must read as; None: zeros."""

    def __init__(self):
        self.blocks = {}

    def read_expect(self, b):
        return self.blocks.get(b) or bytes(BS)


def client(srv, t, model, errors):
    """Random work on blocks b with b % CLIENTS == t, over all leaves."""
    try:
        rng = random.Random(1000 + t)
        h = srv.connect()
        for n in range(OPS):
            b = rng.randrange(NLEAVES * 4) * (LEAF_SPAN // BS // 4)
            b += rng.randrange(LEAF_SPAN // BS // 4)
            b -= b % CLIENTS
            b += t
            off = b * BS
            op = rng.random()
            cur = model.read_expect(b)
            if op < 0.35:
                data = block_data((t, n), b)
                h.pwrite(data, off)
                model.blocks[b] = data
            elif op < 0.55:         # partial: read-modify-write
                o = rng.randrange(BS - 100)
                piece = nbdtest.random_nonzero(100, n * 7 + t)
                h.pwrite(piece, off + o)
                model.blocks[b] = cur[:o] + piece + cur[o + 100:]
            elif op < 0.65:
                h.trim(BS, off)
                model.blocks.pop(b, None)
            else:
                got = h.pread(BS, off)
                assert got == cur, "client %d: block %d differs" % (t, b)
        h.flush()
        h.shutdown()
    except Exception as e:      # reported by the main thread
        errors.append("client %d: %r" % (t, e))


def check_all(h, model, what):
    for b, data in sorted(model.blocks.items()):
        assert h.pread(BS, b * BS) == data, "%s: block %d differs" % (what, b)


def body(srv):
    store = os.path.join(srv.workdir, "store")
    model = Model()

    # 1. A block in every leaf, no flush in between.
    h = srv.connect()
    assert h.get_size() == SIZE
    for i in range(0, NLEAVES, STEP):
        b = i * (LEAF_SPAN // BS) + (i * 37) % (LEAF_SPAN // BS)
        data = block_data("one", b)
        h.pwrite(data, b * BS)
        model.blocks[b] = data
    check_all(h, model, "before flush")
    h.flush()
    check_all(h, model, "after flush")
    h.shutdown()
    check_rss(srv, "after one block in each of 4096 leaves")

    # 2. Concurrent clients over all leaves.
    errors = []
    threads = [threading.Thread(target=client, args=(srv, t, model, errors))
               for t in range(CLIENTS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    check_rss(srv, "after %d concurrent clients" % CLIENTS)

    # 3. Restart: everything was flushed.
    srv.restart()
    h = srv.connect()
    check_all(h, model, "after restart")
    h.shutdown()
    srv.stop()
    fsck(store)
    srv.start()

    # 4. Flush, more writes, kill -9.
    h = srv.connect()
    for i in range(0, NLEAVES, 3 * STEP):
        b = i * (LEAF_SPAN // BS) + 5
        data = block_data("flushed", b)
        h.pwrite(data, b * BS)
        model.blocks[b] = data
    h.flush()
    later = {}
    for i in range(0, NLEAVES, 2 * STEP):
        b = i * (LEAF_SPAN // BS) + 5
        later[b] = block_data("later", b)
        h.pwrite(later[b], b * BS)
    srv.kill9()
    srv.start()
    h = srv.connect()
    for b in sorted(set(model.blocks) | set(later)):
        got = h.pread(BS, b * BS)
        allowed = [model.read_expect(b)]
        if b in later:
            allowed.append(later[b])
        assert got in allowed, "after kill -9: block %d is neither its " \
            "flushed nor its later content" % b
    h.shutdown()
    srv.stop()
    fsck(store)
    srv.start()


nbdtest.run("cas map leaf cache (mapcache=1M, 4096 leaves)", body,
            backends=["cas"], size=SIZE,
            params={"blocksize": BS, "mapcache": "1M"})
