# The garbage-collection tests' shared part: test-cas-gc.py (stores of
# format versions 1 to 3) and test-cas-v4-gc.py (format 4) run the same
# cases on their own kind of store (a Flavour): gc=auto, data written
# again between mark and sweep (test point gc-marked), 4 writers while gc
# runs, kill -9 of the server and of the tool across gc's test points
# (plugins/cas/testpoint.h), ENOSPC and EIO during gc; plus helpers:
# disk use of the packs, the space bound a collection must reach.

import json
import os
import random
import re
import select
import shutil
import subprocess
import threading

import nbdtest
from castest import (BS, MiB, NBDCAS, connection, read_volume, stopped,
                     tool)

# Small packs: a few MiB of data spans many, as a large store's do.
PACK = 4 * MiB
os.environ["NBDCAS_PACK_SIZE"] = str(PACK)
SIZE = 16 * MiB


class Flavour:
    """The kind of store a case makes: params for the server (it creates
    the store), create for `nbdcas create`, the write lengths the
    writers mix."""

    def __init__(self, params=(), create=(), lengths=(4096, BS, 2 * BS)):
        self.params = list(params)
        self.create = list(create)
        self.lengths = list(lengths)


def du_packs(store):
    """Bytes the pack files take on disk.  A collection running in the
    server may remove a pack between the listing and its stat: it then
    takes nothing."""
    d = os.path.join(store, "packs")
    total = 0
    for f in os.listdir(d):
        try:
            total += os.stat(os.path.join(d, f)).st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def check_gc(store, live):
    """du of the packs within 10% of the live bytes (plus the pack
    headers and one partly filled pack's rounding)."""
    used = du_packs(store)
    assert used <= live * 1.10 + 64 * 1024, (used, live)


def referenced(store):
    return json.loads(tool("stat", store, "--json",
                           check=0).stdout)["referenced_bytes"]


def new_server(fl, server, d, size=SIZE, env=None, params=("gc=off",)):
    store = os.path.join(d, "store")
    if env:
        os.environ.update(env)
    try:
        srv = nbdtest.Server(server, "cas", ["store=" + store,
                                             "size=%d" % size] +
                             fl.params + list(params), d)
        srv.start().ready()
    finally:
        for k in env or ():
            del os.environ[k]
    return srv, store


def overwrite(h, rnd, model, rounds, size=SIZE):
    """rounds times: every MiB of the volume with new random data, then
    a flush."""
    for _ in range(rounds):
        for off in range(0, size, MiB):
            data = rnd.randbytes(MiB)
            h.pwrite(data, off)
            model[off:off + MiB] = data
        h.flush()


def fifo(d, name):
    path = os.path.join(d, name)
    os.mkfifo(path)
    return path


# ---- space comes back by itself ----

def automatic_gc(fl, server, d):
    # gc=auto collects by itself once enough was overwritten (here past
    # 1M and a quarter of the store); there is no event to wait on, so
    # poll the disk use, with a deadline.
    rnd = random.Random(5)
    model = bytearray(SIZE)
    srv, store = new_server(fl, server, d, params=("gc=auto", "gc-min=1M"))
    try:
        with connection(srv) as h:
            overwrite(h, rnd, model, 4)
        nbdtest.wait_until(lambda: du_packs(store) < 1.2 * SIZE,
                           "the automatic collection", timeout=120)
        assert read_volume(srv, "", SIZE) == bytes(model)
    finally:
        stopped(srv)
    tool("fsck", store, "--full", check=0)


# ---- the race ----

def dedup_race(fl, server, d):
    rnd = random.Random(3)
    stop, resume = fifo(d, "stop"), fifo(d, "resume")
    srv, store = new_server(fl, server, d, env={
        "NBDCAS_TEST_STOP": "gc-marked", "NBDCAS_TEST_STOP_FIFO": stop,
        "NBDCAS_TEST_RESUME_FIFO": resume})
    try:
        with connection(srv) as h:
            # A pack's worth of data, then all of it overwritten: the
            # first packs hold nothing referenced, so gc removes them.
            old = rnd.randbytes(PACK)
            h.pwrite(old, 0)
            h.flush()
            h.pwrite(rnd.randbytes(PACK), 0)
            h.flush()
            gc = subprocess.Popen([NBDCAS, "gc", store],
                                  stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
            with open(stop) as f:
                assert f.readline() == "gc-marked\n"
            # gc has marked: the old data is garbage.  Now write some of
            # it again (a dedup hit on what is about to be swept: whole
            # blocks, and 4 KiB units inside a block, which format 4
            # deduplicates), and a block never seen before.
            x = old[3 * BS:5 * BS]
            y = old[20 * BS + 3 * 4096:20 * BS + 7 * 4096]
            z = rnd.randbytes(BS)
            h.pwrite(x, 9 * MiB)
            h.pwrite(y, 10 * MiB + 4096)
            h.pwrite(z, 11 * MiB)
            h.flush()
            with open(resume, "w") as f:
                f.write("go\n")
            out, err = gc.communicate(timeout=300)
            assert gc.returncode == 0, (out, err)
            assert re.search(r"[1-9]\d* packs removed", out.decode()), out
            assert h.pread(len(x), 9 * MiB) == x
            assert h.pread(len(y), 10 * MiB + 4096) == y
            assert h.pread(BS, 11 * MiB) == z
        srv.kill9()
        srv.start().ready()
        with connection(srv) as h:
            assert h.pread(len(x), 9 * MiB) == x, "deduplicated data lost"
            assert h.pread(len(y), 10 * MiB + 4096) == y, \
                "deduplicated units lost"
            assert h.pread(BS, 11 * MiB) == z
    finally:
        stopped(srv)
    tool("fsck", store, "--full", check=0)


# ---- writers and gc together ----

def writers_during_gc(fl, server, d):
    srv, store = new_server(fl, server, d)
    model = bytearray(SIZE)
    pool = [random.Random(100 + i).randbytes(BS) for i in range(8)]
    errors = []
    stop = threading.Event()

    def writer(k):
        # Each writer owns a quarter of the volume; some blocks repeat
        # (pool), some are new; flush every few writes.
        rnd = random.Random(k)
        lo = k * SIZE // 4
        try:
            with connection(srv) as h:
                n = 0
                while not stop.is_set() or n < 50:
                    ln = rnd.choice(fl.lengths)
                    off = lo + rnd.randrange(0, SIZE // 4 - 2 * BS)
                    off -= off % min(ln, 4096)
                    if rnd.random() < 0.4:
                        data = (pool[rnd.randrange(8)] * 2)[:ln]
                    else:
                        data = rnd.randbytes(ln)
                    h.pwrite(data, off)
                    model[off:off + ln] = data
                    n += 1
                    if n % 7 == 0:
                        h.flush()
                h.flush()
        except Exception as e:
            errors.append("writer %d: %r" % (k, e))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            tool("gc", store, "--max-unused", "0", check=0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        assert not errors, errors
        tool("gc", store, check=0)
        assert read_volume(srv, "", SIZE) == bytes(model), "data differs"
    finally:
        stopped(srv)
    tool("fsck", store, "--full", check=0)


# ---- kill -9 in the middle ----

def prepared_store(fl, d, seed):
    """A store whose gc has several packs to remove and rewrite, and the
    volume's content."""
    rnd = random.Random(seed)
    store = os.path.join(d, "base")
    tool("create", store, *fl.create, "--size", str(SIZE), "--volume", "v",
         check=0)
    model = bytearray(SIZE)
    img = os.path.join(d, "img")
    for rounds in range(3):
        # Rewrite most of it, keep some: packs end up partly live.
        for off in range(0, SIZE, MiB):
            if rnd.random() < 0.7:
                model[off:off + MiB] = rnd.randbytes(MiB)
        with open(img, "wb") as f:
            f.write(model)
        tool("import", store, "v", img, check=0)
    return store, bytes(model)


def check_store(store, model, d):
    tool("fsck", store, "--full", check=0)
    out = os.path.join(d, "out")
    tool("export", store, "v", out, "--force", check=0)
    with open(out, "rb") as f:
        assert f.read() == model, "data differs"


def killed_at(store, point, nth, d):
    """Run nbdcas gc --max-unused 0 on store and kill -9 it when it
    reaches test point `point` for the nth time.  True if it did; a gc
    that ends before (fewer packs) is not killed."""
    stop = fifo(d, "stop-%s-%d" % (point, nth))
    env = dict(os.environ, NBDCAS_TEST_STOP=point, NBDCAS_TEST_STOP_FIFO=stop,
               NBDCAS_TEST_STOP_NTH=str(nth))
    p = subprocess.Popen([NBDCAS, "gc", store, "--max-unused", "0"], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    # A gc that ends before the n-th time closes no FIFO: wait for either.
    t = threading.Thread(target=p.wait)
    t.start()
    fd = os.open(stop, os.O_RDONLY | os.O_NONBLOCK)
    try:
        reached = False
        while p.poll() is None and not reached:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r and os.read(fd, 100):
                reached = True
        if reached:
            p.kill()
    finally:
        os.close(fd)
        t.join()
        p.communicate()
    return reached


def kill_tool_during_gc(fl, d):
    base, model = prepared_store(fl, d, 7)
    points = [("gc-marked", 1)] + [(pt, k) for pt in
                                   ("gc-copied", "gc-indexed", "gc-retired")
                                   for k in range(1, 8)]
    reached = 0
    for point, nth in points:
        store = os.path.join(d, "s-%s-%d" % (point, nth))
        shutil.copytree(base, store)
        if killed_at(store, point, nth, d):
            reached += 1
        check_store(store, model, d)
        tool("gc", store, "--max-unused", "0", check=0)
        check_store(store, model, d)
        check_gc(store, referenced(store))
        shutil.rmtree(store)
    assert reached >= 20, "only %d kill points were reached" % reached


def kill_server_during_gc(fl, server, d):
    for point, nth in (("gc-copied", 1), ("gc-retired", 2)):
        sub = os.path.join(d, point)
        os.mkdir(sub)
        stop = fifo(sub, "stop")
        rnd = random.Random(4)
        model = bytearray(SIZE)
        srv, store = new_server(fl, server, sub, env={
            "NBDCAS_TEST_STOP": point, "NBDCAS_TEST_STOP_FIFO": stop,
            "NBDCAS_TEST_STOP_NTH": str(nth)})
        try:
            with connection(srv) as h:
                overwrite(h, rnd, model, 3)
            gc = subprocess.Popen([NBDCAS, "gc", store],
                                  stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
            with open(stop) as f:
                assert f.readline() == point + "\n"
            srv.kill9()
            gc.communicate(timeout=60)
            assert gc.returncode == 1, gc.returncode
            srv.start().ready()
            assert read_volume(srv, "", SIZE) == bytes(model)
            tool("gc", store, check=0)
            assert read_volume(srv, "", SIZE) == bytes(model)
        finally:
            stopped(srv)
        tool("fsck", store, "--full", check=0)


# ---- faults ----

def faults_during_gc(fl, d):
    base, model = prepared_store(fl, d, 8)
    for errno_name, ops, after in (("ENOSPC", "write", 3), ("EIO", "sync", 1),
                                   ("EIO", "write", 10)):
        store = os.path.join(d, "f-%s-%s" % (errno_name, ops))
        shutil.copytree(base, store)
        env = {"LD_PRELOAD": nbdtest.preload(os.environ["FAULTSHIM"]),
               "FAULT_PATH": os.path.join(store, "packs"),
               "FAULT_ERRNO": errno_name, "FAULT_OPS": ops,
               "FAULT_AFTER": str(after)}
        p = tool("gc", store, "--max-unused", "0", env=env)
        assert p.returncode == 1, (errno_name, p.returncode, p.stderr)
        assert "garbage collection failed" in p.stderr, p.stderr
        check_store(store, model, d)
        tool("gc", store, check=0)
        check_store(store, model, d)
        shutil.rmtree(store)
