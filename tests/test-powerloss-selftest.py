#!/usr/bin/env python3
# The power-loss simulator must be able to fail (tests/powerloss/
# README.md): each case here gives it something broken on purpose and
# expects it to say so, and gives it the same thing done right and
# expects it to pass.
#
#  1. the data check: a lost acknowledged byte, a garbage byte and a
#     volume as of no flush are rejected; old-or-new is accepted; a
#     flush sent with requests in flight covers only the writes answered
#     before it was sent, even at an equal log position;
#  2. a fake store (tests/powerloss/fakestore.py) that commits correctly
#     passes every cut point; one that renames before its fsync, and one
#     that does not fsync the directory after its rename, fail;
#  3. the recorder's completeness check notices a change it could not
#     see (a write through mmap);
#  4. a real recording with one sync dropped from its log: for cas the
#     pack fdatasync before a root is published, for flatfile a flush's
#     fdatasync.  A state at the cut right after the acknowledgement
#     must fail; and a flatfile FUA write logged without RWF_DSYNC, and a
#     cas snapshot whose directory fsync is dropped.
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "powerloss"))
import powerloss  # noqa: E402
from powerloss import (CheckFailure, ClientLog, Model, ModelError,  # noqa
                       StateBuilder, check_data, read_log)
import fakestore  # noqa: E402
import nbdtest  # noqa: E402
import workloads  # noqa: E402


def expect_fail(fn, what):
    try:
        fn()
    except CheckFailure:
        return
    raise AssertionError("the check accepted " + what)


class FakeModel:
    """count() for check_data without a log: positions are entries."""
    @staticmethod
    def count(pos):
        return pos


def test_check_data():
    c = ClientLog(bytes(8192))
    a = bytes([1]) * 4096
    b = bytes([2]) * 4096
    c.write(0, a, 1, 2, "write A")
    c.barrier("flush 1", 3, 4)               # acked at entry 4
    c.write(0, b, 5, 6, "write B")           # not flushed
    m = FakeModel()
    blank = bytes(4096)
    # After the flush: A (or B, written later) must be there; for cas
    # (whole volume) B only once a flush published it.
    check_data(c, m, 10, a + blank, True, 4096)
    check_data(c, m, 10, b + blank, False, 4096)
    expect_fail(lambda: check_data(c, m, 10, b + blank, True, 4096),
                "an unflushed write as a cas volume's state")
    c.barrier("flush 2", 7, 20)              # sent before cut 10
    check_data(c, m, 10, b + blank, True, 4096)
    expect_fail(lambda: check_data(c, m, 10, blank + blank, True, 4096),
                "a lost acknowledged block")
    expect_fail(lambda: check_data(c, m, 10, a[:100] + bytes([7]) +
                                   a[101:] + blank, False, 4096),
                "a garbage byte")
    # Bytewise old-or-new is fine for flatfile, not a mixture for cas.
    mix = b[:2048] + a[2048:] + blank
    check_data(c, m, 10, mix, False, 4096)
    expect_fail(lambda: check_data(c, m, 10, mix, True, 4096),
                "a volume as of no flush")
    # Before the flush was acknowledged, zeros are fine.
    check_data(c, m, 3, blank + blank, True, 4096)
    # B was sent at 5: at cut 5 it cannot be there yet.
    expect_fail(lambda: check_data(c, m, 5, b + blank, False, 4096),
                "a write from after the cut")


class FakeAioHandle:
    """libnbd's aio calls for Session.aio, every command done at once."""
    def __init__(self):
        self.sent = []

    def _cmd(self, *what):
        self.sent.append(what)
        return len(self.sent)

    def aio_pwrite(self, data, off):
        return self._cmd("write", off, len(data))

    def aio_zero(self, n, off):
        return self._cmd("zero", off, n)

    def aio_flush(self):
        return self._cmd("flush")

    def poll(self, timeout):
        pass

    def aio_command_completed(self, c):
        return True


def test_inflight_flush_covers():
    """A flush in flight covers the writes whose replies the client saw
    before sending it, even when the log did not move meanwhile (writes
    answered from the cas write-back cache): a write sent after it and
    acknowledged at the same log position is not in it."""
    import types
    wl = types.SimpleNamespace(name="fake", size=1 << 16, blocksize=4096,
                               env={})
    s = powerloss.Session(wl, rec=None)
    s.pos = lambda: 100                      # nothing reaches the log
    s.handles["default"] = FakeAioHandle()
    s.aio([("write", 0, 512), ("flush",), ("write", 4096, 512)])
    c = s.client
    before, after = c.writes
    assert before.acked == after.acked == c.points[-1].sent == 100
    got = [w.what for w in c.required(c.points[-1])]
    if got != [before.what]:
        raise AssertionError("flush in flight requires %s, expected only "
                             "%s" % (got, before.what))


class FakeHandle:
    """libnbd's synchronous pwrite and flush, done at once."""
    def pwrite(self, data, off, flags=0):
        pass

    def flush(self):
        pass


def test_sequential_flush_covers():
    """One request at a time: a flush that had nothing to write (format
    4 rewriting a block's units unchanged) is sent and acknowledged at
    the same log position as the writes around it; it covers the writes
    before it, not the one sent after it (cas-recover-index on format 4
    failed on that)."""
    import types
    wl = types.SimpleNamespace(name="fake", size=1 << 16, blocksize=4096,
                               env={})
    s = powerloss.Session(wl, rec=None)
    s.pos = lambda: 100                      # nothing reaches the log
    s.handles["default"] = FakeHandle()
    s.write(0, 512)
    s.flush()
    s.write(4096, 512)
    c = s.client
    before, after = c.writes
    assert before.acked == after.acked == c.points[-1].sent == 100
    got = [w.what for w in c.required(c.points[-1])]
    if got != [before.what]:
        raise AssertionError("the flush requires %s, expected only %s"
                             % (got, before.what))


def run_fakestore(mode, tmp, n=3):
    """Record fakestore.py MODE; return (model, [(value, ack entry)],
    recording root)."""
    root = os.path.join(tmp, "root")
    base = os.path.join(tmp, "baseline")
    log = os.path.join(tmp, "log")
    os.makedirs(root)
    shutil.copytree(root, base)
    open(log, "wb").close()
    env = dict(os.environ, LD_PRELOAD=os.environ["PLR_RECORDER"],
               PLR_DIR=os.path.realpath(root), PLR_LOG=log)
    p = subprocess.Popen([sys.executable, fakestore.__file__, mode,
                          os.path.realpath(root), str(n)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env=env, text=True)
    acks = []
    for i in range(1, n + 1):
        line = p.stdout.readline()
        assert line == "ack %d\n" % i, "fakestore said %r" % line
        acks.append((i, os.path.getsize(log)))
        p.stdin.write("go\n")
        p.stdin.flush()
    p.stdin.close()
    assert p.wait() == 0, "fakestore failed"
    model = Model(os.path.realpath(root), base, read_log(log))
    return model, [(v, model.count(pos)) for v, pos in acks], root


def check_fake_state(state, P, acks):
    """The db must hold one whole commit, no older than the last one
    acknowledged before P."""
    need = max([v for v, a in acks if a <= P], default=0)
    db = os.path.join(state, "db")
    if not os.path.exists(db):
        if need:
            raise CheckFailure("db is gone, commit %d was acknowledged"
                               % need)
        return
    with open(db, "rb") as f:
        got = f.read()
    ok = [v for v in range(need, len(acks) + 1) if v and
          got == fakestore.value(v)]
    if not ok:
        raise CheckFailure("db holds %d bytes that are no commit from %d "
                           "on" % (len(got), need))


def fake_failures(mode, tmp, seeds=8):
    """Every cut point of a fakestore run, each with several seeds; the
    failures found."""
    model, acks, root = run_fakestore(mode, tmp)
    model.check_complete(os.path.realpath(root))
    b = StateBuilder(model)
    out = []
    for P in range(len(model.entries) + 1):
        for seed in range(seeds):
            st = os.path.join(tmp, "state")
            b.build(P, seed, st)
            try:
                check_fake_state(st, P, acks)
            except CheckFailure as e:
                out.append((P, seed, str(e)))
            shutil.rmtree(st)
    return out


def test_fake_good(tmp):
    f = fake_failures("good", tmp)
    assert not f, "a correct commit protocol fails at cut %d seed %d: %s" \
        % f[0]


def test_fake_rename_first(tmp):
    assert fake_failures("rename-first", tmp), \
        "renaming before the fsync was not caught"


def test_fake_no_dirsync(tmp):
    assert fake_failures("no-dirsync", tmp), \
        "acknowledging before the directory fsync was not caught"


def test_recorder_blind_spot(tmp):
    model, acks, root = run_fakestore("mmap", tmp, n=1)
    try:
        model.check_complete(os.path.realpath(root))
    except ModelError as e:
        assert "contents differ" in str(e), str(e)
        return
    raise AssertionError("a write through mmap went unnoticed")


def _first_publish_sync(entries, backend):
    """Index (among successful syncs) of the sync to drop, and the log
    index of the acknowledgement it guards: cas, the last pack fdatasync
    before the first root published after data was written; flatfile,
    the first fdatasync after a write."""
    ok_syncs = [i for i, e in enumerate(entries)
                if e.type == powerloss.SYNC_END and e.err == 0]
    wrote = False
    last_pack_sync = None
    for i, e in enumerate(entries):
        if e.type == powerloss.WRITE and "/packs/pack-" in e.path and \
                e.a > 64:
            wrote = True
        if e.type == powerloss.WRITE and e.path.endswith("disk.img"):
            wrote = True
        if e.type == powerloss.SYNC_END and e.err == 0 and wrote:
            if backend == "flatfile":
                return ok_syncs.index(i)
            if "/packs/pack-" in e.path:
                last_pack_sync = i
        if (backend == "cas" and e.type == powerloss.RENAME and
                e.path2.endswith("/volumes/default") and
                last_pack_sync is not None):
            return ok_syncs.index(last_pack_sync)
    raise AssertionError("no sync to drop in the log")


def test_dropped_sync(tmp, name):
    """Drop the sync; the state right after the next acknowledgement,
    with nothing unsynced surviving, must fail."""
    wl = workloads.get(name)
    rec = powerloss.record(wl, os.path.join(tmp, "rec"))
    entries = read_log(rec.log)
    which = _first_publish_sync(entries, wl.backend)
    # Without the drop, that state passes ...
    ck = powerloss.Checker(wl, rec)
    ck.check_complete()
    client = ck.client
    # the first durability point acknowledged after the dropped sync
    end = [i for i, e in enumerate(entries)
           if e.type == powerloss.SYNC_END and e.err == 0][which]
    P = min(ck.model.count(d.acked) for d in client.points
            if ck.model.count(d.acked) > end)
    force = {"latest": 0.0, "floor": 1.0, "ns": 0.0}
    scratch = os.path.join(tmp, "scratch")
    os.makedirs(scratch)
    r = ck.check_state(StateBuilder(ck.model), P, 0, scratch, force=force)
    assert r is None, "cut %d fails even with every sync: %s" % (P, r[0])
    # ... with it, it fails (positions shift by the two dropped entries).
    ck2 = powerloss.Checker(wl, rec, drop=which)
    P2 = P - 2
    r = ck2.check_state(StateBuilder(ck2.model), P2, 0, scratch, force=force)
    assert r is not None, "dropping sync %d (%s) went unnoticed at cut %d" % (
        which, entries[end], P2)


def test_snapshot_not_durable(tmp):
    """cas-history with the directory fsync after the first snapshot's
    link dropped: at the snapshot's acknowledgement, unsynced names
    lost, the snapshot is gone, which the volume check must notice."""
    wl = workloads.get("cas-history")
    rec = powerloss.record(wl, os.path.join(tmp, "rec"))
    entries = read_log(rec.log)
    link = next(i for i, e in enumerate(entries)
                if e.type == powerloss.LINK and
                "/snapshots/default/s1" in e.path2)
    end = next(i for i in range(link, len(entries))
               if entries[i].type == powerloss.SYNC_END and
               entries[i].path.endswith("/snapshots/default"))
    which = [i for i, e in enumerate(entries)
             if e.type == powerloss.SYNC_END and e.err == 0].index(end)
    ck = powerloss.Checker(wl, rec)
    ck.check_complete()
    snap = next(d for d in ck.vols["default"].log.points
                if d.what == "snapshot default@s1")
    P = ck.model.count(snap.acked)
    force = {"latest": 1.0, "floor": 0.0, "ns": 0.0}
    scratch = os.path.join(tmp, "scratch")
    os.makedirs(scratch)
    r = ck.check_state(StateBuilder(ck.model), P, 0, scratch, force=force)
    assert r is None, "cut %d fails with every sync: %s" % (P, r[0])
    ck2 = powerloss.Checker(wl, rec, drop=which)
    r = ck2.check_state(StateBuilder(ck2.model), P - 2, 0, scratch,
                        force=force)
    assert r is not None and "default@s1" in r[0], \
        "a snapshot lost after its acknowledgement went unnoticed: %s" % (
            r and r[0])


def test_fua_not_durable(tmp):
    """flatfile-fua with the DSYNC flag taken off its first FUA write in
    the log (as if the server had written it without RWF_DSYNC): the
    cut right after that write's acknowledgement, nothing unsynced
    surviving, must fail; with the flag, it passes."""
    wl = workloads.get("flatfile-fua")
    rec = powerloss.record(wl, os.path.join(tmp, "rec"))
    ck = powerloss.Checker(wl, rec)
    ck.check_complete()
    fua = next(d for d in ck.client.points if d.kind == "range")
    P = ck.model.count(fua.acked)
    force = {"latest": 0.0, "floor": 1.0, "ns": 0.0}
    scratch = os.path.join(tmp, "scratch")
    os.makedirs(scratch)
    r = ck.check_state(StateBuilder(ck.model), P, 0, scratch, force=force)
    assert r is None, "cut %d fails with RWF_DSYNC: %s" % (P, r[0])
    n = 0
    for ino in ck.model.inodes:
        for k, (i, op) in enumerate(ino.ops):
            if i < P and len(op) > 3 and op[3] == "dsync":
                ino.ops[k] = (i, op[:3])
                n += 1
    assert n, "no RWF_DSYNC write in the log"
    r = ck.check_state(StateBuilder(ck.model), P, 0, scratch, force=force)
    assert r is not None, "a FUA write that was not durable went unnoticed"


def main():
    why = powerloss.prerequisites()
    if why:
        nbdtest.skip_all(why)
    nbdtest._watchdog(600)
    cases = [
        ("the data check rejects lost, garbage and mixed data",
         lambda t: test_check_data()),
        ("a flush in flight does not cover a write sent after it",
         lambda t: test_inflight_flush_covers()),
        ("a flush with nothing to write does not cover a write sent "
         "after it", lambda t: test_sequential_flush_covers()),
        ("a fake store that commits correctly passes every cut point",
         test_fake_good),
        ("a fake store that renames before its fsync is caught",
         test_fake_rename_first),
        ("a fake store that skips the directory fsync is caught",
         test_fake_no_dirsync),
        ("the recorder notices a change it cannot see (mmap)",
         test_recorder_blind_spot),
        ("cas with the pack fdatasync before a root dropped is caught",
         lambda t: test_dropped_sync(t, "cas-flush")),
        ("flatfile with a flush's fdatasync dropped is caught",
         lambda t: test_dropped_sync(t, "flatfile-flush")),
        ("flatfile with a FUA write not durable is caught",
         test_fua_not_durable),
        ("cas with a snapshot's directory fsync dropped is caught",
         test_snapshot_not_durable),
    ]
    tap = powerloss.TAP(len(cases))
    for desc, fn in cases:
        tmp = tempfile.mkdtemp(prefix="powerloss-self.",
                               dir=powerloss._scratch_base())
        try:
            fn(tmp)
            tap.ok(True, "powerloss self-test: " + desc)
        except Exception:
            tap.ok(False, "powerloss self-test: " + desc,
                   traceback.format_exc())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


main()
