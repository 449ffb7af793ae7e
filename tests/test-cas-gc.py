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

import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading

sys.path.insert(0, os.environ.get("srcdir", os.path.dirname(__file__)))
import nbdtest  # noqa: E402
from castest import (BS, MiB, NBDCAS, connection, read_volume,  # noqa: E402
                     run_cases, stopped, tool)

# Small packs: a few MiB of data spans many, as a large store's do.
PACK = 4 * MiB
os.environ["NBDCAS_PACK_SIZE"] = str(PACK)
SIZE = 16 * MiB


def du_packs(store):
    """Bytes the pack files take on disk."""
    d = os.path.join(store, "packs")
    return sum(os.stat(os.path.join(d, f)).st_blocks * 512
               for f in os.listdir(d))


def referenced(store):
    return json.loads(tool("stat", store, "--json",
                           check=0).stdout)["referenced_bytes"]


def new_server(server, d, size=SIZE, env=None, params=("gc=off",)):
    store = os.path.join(d, "store")
    if env:
        os.environ.update(env)
    try:
        srv = nbdtest.Server(server, "cas", ["store=" + store,
                                             "size=%d" % size] + list(params),
                             d)
        srv.start().ready()
    finally:
        for k in env or ():
            del os.environ[k]
    return srv, store


def overwrite(h, rnd, model, rounds, size=SIZE):
    for _ in range(rounds):
        for off in range(0, size, MiB):
            data = rnd.randbytes(MiB)
            h.pwrite(data, off)
            model[off:off + MiB] = data
        h.flush()


def check_gc(store, live):
    """du of the packs within 10% of the live bytes (plus the pack
    headers and one partly filled pack's rounding)."""
    used = du_packs(store)
    assert used <= live * 1.10 + 64 * 1024, (used, live)


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


def automatic_gc(server, d):
    # gc=auto collects by itself once enough was overwritten (here past
    # 1M and a quarter of the store); there is no event to wait on, so
    # poll the disk use, with a deadline.
    rnd = random.Random(5)
    model = bytearray(SIZE)
    srv, store = new_server(server, d, params=("gc=auto", "gc-min=1M"))
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

def fifo(d, name):
    path = os.path.join(d, name)
    os.mkfifo(path)
    return path


def dedup_race(server, d):
    rnd = random.Random(3)
    stop, resume = fifo(d, "stop"), fifo(d, "resume")
    srv, store = new_server(server, d, env={
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
            # gc has marked: the old blocks are garbage.  Now write one of
            # them again (a dedup hit on a record about to be swept), and
            # a block never seen before.
            x = old[3 * BS:4 * BS]
            z = rnd.randbytes(BS)
            h.pwrite(x, 9 * MiB)
            h.pwrite(z, 10 * MiB)
            h.flush()
            with open(resume, "w") as f:
                f.write("go\n")
            out, err = gc.communicate(timeout=300)
            assert gc.returncode == 0, (out, err)
            assert re.search(r"[1-9]\d* packs removed", out.decode()), out
            assert h.pread(BS, 9 * MiB) == x
            assert h.pread(BS, 10 * MiB) == z
        srv.kill9()
        srv.start().ready()
        with connection(srv) as h:
            assert h.pread(BS, 9 * MiB) == x, "the deduplicated block is lost"
            assert h.pread(BS, 10 * MiB) == z
    finally:
        stopped(srv)
    tool("fsck", store, "--full", check=0)


# ---- writers and gc together ----

def writers_during_gc(server, d):
    srv, store = new_server(server, d)
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
                    off = lo + rnd.randrange(0, SIZE // 4 - 2 * BS)
                    off -= off % 4096
                    ln = rnd.choice([4096, BS, 2 * BS])
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

def prepared_store(d, seed):
    """A store whose gc has several packs to remove and rewrite, and the
    volume's content."""
    rnd = random.Random(seed)
    store = os.path.join(d, "base")
    tool("create", store, "--size", str(SIZE), "--volume", "v", check=0)
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
    stop = fifo(d, "stop-%s-%d" % (point, nth))
    env = dict(os.environ, NBDCAS_TEST_STOP=point, NBDCAS_TEST_STOP_FIFO=stop,
               NBDCAS_TEST_STOP_NTH=str(nth))
    p = subprocess.Popen([NBDCAS, "gc", store, "--max-unused", "0"], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    # A gc that ends before the n-th time (fewer packs) closes no FIFO:
    # wait for either.
    t = threading.Thread(target=p.wait)
    t.start()
    fd = os.open(stop, os.O_RDONLY | os.O_NONBLOCK)
    try:
        import select
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


def kill_tool_during_gc(d):
    base, model = prepared_store(d, 7)
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


def kill_server_during_gc(server, d):
    for point, nth in (("gc-copied", 1), ("gc-retired", 2)):
        sub = os.path.join(d, point)
        os.mkdir(sub)
        stop = fifo(sub, "stop")
        rnd = random.Random(4)
        model = bytearray(SIZE)
        srv, store = new_server(server, sub, env={
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

def faults_during_gc(d):
    base, model = prepared_store(d, 8)
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


def damaged_root_refused(d):
    base, model = prepared_store(d, 9)
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
         dedup_race),
        ("4 writers with flushes while gc runs: data as the model",
         writers_during_gc),
        ("kill -9 of the server during gc", kill_server_during_gc),
        ("gc=auto gives the space back by itself", automatic_gc),
    ]
    tool_only = [
        ("kill -9 of gc at 20+ points: nothing lost, gc finishes later",
         kill_tool_during_gc),
        ("ENOSPC and EIO during gc: a message, nothing lost",
         faults_during_gc),
        ("a store with an unreadable root is not collected",
         damaged_root_refused),
    ]
    run_cases(per_server, tool_only)


main()
