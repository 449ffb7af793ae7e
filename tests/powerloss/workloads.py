# The power-loss simulator's workloads (README.md: adding one).
#
# A workload is a function of a Session (powerloss.py) that starts the
# server and drives it like a client would: s.write(offset, n or bytes,
# fua=), s.zero(offset, n, fua=), s.trim(offset, n), s.flush(),
# s.start(size=), s.stop(), s.restart(size=).  Everything it does is
# logged; the simulator then checks the states a power cut could leave.
# The data is reproducible (s.data(n): non-zero bytes from a generator
# seeded by the workload's name), so two recordings of one workload
# differ only in what the servers' threads and clocks do.

import os
import shutil

import powerloss
from powerloss import CheckFailure, check_data

WORKLOADS = {}


class Workload:
    """backend: "cas" or "flatfile"; server: the one recording
    ("minnbd" or "nbdkit"); servers: those that read states back (some
    cut points go through a real server, alternating); size, blocksize
    (cas): the volume; env: for the server (e.g. NBDCAS_PACK_SIZE);
    params: more server parameters (cas: e.g. dirtycache=)."""

    def __init__(self, name, body, backend, server, size, blocksize=4096,
                 env=None, servers=("minnbd", "nbdkit"), store_dir=True,
                 ci=True, base=None, params=()):
        self.name = name
        self.params = list(params)
        self.body = body
        self.backend = backend
        self.server = server
        self.servers = servers
        self.size = size
        self.blocksize = blocksize
        self.env = dict(env or {})
        # cas: a FUA write flushes everything (store.h); flatfile:
        # RWF_DSYNC makes that write durable, which is all NBD asks.
        self.fua_flushes_all = backend == "cas"
        # cas: whether the store's directory exists before the server
        # starts (False: the server creates it).
        self.store_dir = store_dir
        # False: only for regression cases, not run by the test scripts.
        self.ci = ci
        # (workload, locate, force): start from the state a power cut
        # left in another workload's recording (see _prepare_from).
        self.base = base
        self.pending = []

    def prepare(self, root):
        """The recorded directory before the server first starts (all
        of it durable).  Returns the volume's initial contents (None:
        zeros)."""
        if self.base:
            return self._prepare_from(root)
        if self.backend == "cas":
            # The store's own directory exists: the server fills it.
            if self.store_dir:
                os.mkdir(os.path.join(root, "store"))
        else:
            with open(os.path.join(root, "disk.img"), "wb") as f:
                f.truncate(self.size)

    def _prepare_from(self, root):
        """Record the base workload, build the state its cut point and
        forced choices give (always with seed 1), and start from it: the
        recovery of a crashed store is then itself under power loss.
        self.pending: the writes the base's client had sent before the
        cut (a client after a crash writes them again)."""
        name, locate, force = self.base
        bw = get(name)
        work = os.path.join(os.path.dirname(root), "base")
        rec = powerloss.record(bw, os.path.join(work, "rec"))
        ck = powerloss.Checker(bw, rec)
        ck.check_complete()
        P = locate(ck.model, ck.client)
        state = os.path.join(work, "state")
        powerloss.StateBuilder(ck.model).build(P, 1, state, force)
        shutil.copytree(state, os.path.join(work, "copy"))
        for n in os.listdir(state):
            shutil.move(os.path.join(state, n), os.path.join(root, n))
        # The volume as the server will find it: open a copy.
        out = os.path.join(work, "volumes")
        os.makedirs(out)
        p = powerloss.subprocess.run(
            [os.environ["PLR_CASREAD"], os.path.join(work, "copy", "store"),
             "default", str(self.size), str(self.blocksize), out],
            capture_output=True, text=True, timeout=300,
            env=dict(os.environ, **self.env))
        if p.returncode != 0:
            raise RuntimeError("the base state (%s at cut %d) does not "
                               "open: %s" % (name, P, p.stderr))
        with open(os.path.join(out, "default"), "rb") as f:
            initial = f.read()
        self.pending = [w for w in ck.client.writes
                        if ck.model.count(w.sent) < P]
        shutil.rmtree(work)
        return initial

    def server_params(self, root, size):
        if self.backend == "cas":
            return ["store=" + os.path.join(root, "store"),
                    "size=%d" % size,
                    "blocksize=%d" % self.blocksize] + self.params
        return ["file=" + os.path.join(root, "disk.img")]

    def check(self, ck, state, P, via_server, rewrite, scratch):
        if self.backend == "cas":
            return check_cas(self, ck, state, P, via_server, rewrite, scratch)
        return check_flatfile(self, ck, state, P, via_server, scratch)


def check_cas(wl, ck, state, P, via_server, rewrite, scratch):
    store = os.path.join(state, "store")
    facts = store_facts(store)
    try:
        _check_cas(wl, ck, store, P, via_server, rewrite, scratch)
    except CheckFailure as e:
        e.finding = classify_cas(str(e), facts)
        raise


def _check_cas(wl, ck, store, P, via_server, rewrite, scratch):
    # fsck first, on the state as the power cut left it (it is
    # read-only: a torn tail stays for the open below to cut).
    if not ck.skip_fsck and os.path.exists(os.path.join(store, "superblock")):
        ck.fsck(store)
    params = [p if not p.startswith("store=") else "store=" + store
              for p in ck.params_at(P)]
    size = int(next(p for p in params if p.startswith("size="))[5:])
    env = dict(wl.env)
    served = None
    if via_server:
        # The default volume through a real server (which also does the
        # recovery); every volume through casread afterwards.
        served = ck.read_server(via_server, "cas", params, scratch, env)
    out = os.path.join(scratch, "volumes")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    argv = [os.environ["PLR_CASREAD"], store, "default", str(size),
            str(wl.blocksize), out]
    if rewrite:
        # After the crash, the client writes what it last wrote (acked
        # or not) again: it must read back, from a clean store.
        img = latest_image(ck, P)
        rw = os.path.join(scratch, "rewrite")
        with open(rw, "wb") as f:
            f.write(img)
        argv.append(rw)
    p = powerloss.subprocess.run(argv, capture_output=True, text=True,
                                 env=dict(os.environ, **env), timeout=300)
    if p.returncode != 0:
        raise CheckFailure("the store does not open, read%s: %s" % (
            " or take the rewrite" if rewrite else "", p.stderr.strip()))
    present = {}
    for line in p.stdout.splitlines():
        name, _ = line.rsplit(" ", 1)
        with open(os.path.join(out, name), "rb") as f:
            present[name] = f.read()
    if rewrite and not ck.skip_fsck:
        ck.fsck(store)
    if served is not None and served != present.get("default"):
        raise CheckFailure("%s and the store library read the default "
                           "volume differently" % via_server)
    check_volumes(ck, P, present, wl.blocksize)


def check_volumes(ck, P, present, bs):
    """Which volumes and snapshots exist, and what each holds."""
    count = ck.model.count
    for name in present:
        if name not in ck.vols:
            raise CheckFailure("volume '%s' exists; the client never made "
                               "it" % name)
    for name, life in sorted(ck.vols.items()):
        want = "present" if name == "default" else life.expect(count, P)
        if want == "present" and name not in present:
            raise CheckFailure("volume '%s' is gone, but %s" % (
                name, "its creation was acknowledged before the cut"
                if life.born else "it was never deleted"))
        if want == "absent" and name in present:
            raise CheckFailure("volume '%s' is there, but %s" % (
                name, "its removal was acknowledged before the cut"
                if life.died and count(life.died[1]) <= P
                else "it was made after the cut"))
    for old, new, sent, acked in ck.info.get("renames", []):
        if count(sent) < P < count(acked):     # in flight at the cut
            n = (old in present) + (new in present)
            if n != 1:
                raise CheckFailure("rename of '%s' to '%s' cut short: %s" % (
                    old, new, "both names exist" if n
                    else "neither name exists"))
    for name, got in sorted(present.items()):
        try:
            check_data(ck.vols[name].log, ck.model, P, got, True, bs)
        except CheckFailure as e:
            raise CheckFailure("volume '%s': %s" % (name, e))


def check_flatfile(wl, ck, state, P, via_server, scratch):
    disk = os.path.join(state, "disk.img")
    if not os.path.exists(disk):
        raise CheckFailure("disk.img is gone")
    if via_server:
        got = ck.read_server(via_server, "flatfile", ["file=" + disk],
                             scratch)
    else:
        with open(disk, "rb") as f:
            got = f.read()
    check_data(ck.client, ck.model, P, got, False, 4096)


def latest_image(ck, P):
    """The volume as the client last wrote it before cut P."""
    c = ck.client
    img = bytearray(c.initial)
    size = len(img)
    for sent, params in ck.info["starts"]:
        if ck.model.count(sent) < P:
            for p in params:
                if p.startswith("size="):
                    size = max(size, int(p[5:]))
    img.extend(bytes(size - len(img)))
    for w in c.writes:
        if ck.model.count(w.sent) < P:
            img[w.off:w.off + len(w.data)] = w.data
    return bytes(img)


# ---- known findings ----
#
# Each is a bug in the store the simulator found, described in
# README.md ("Findings").  A state failing as a known finding does not
# fail its workload's TAP line (it is counted in the diagnostics); each
# finding has a deterministic regression case below, expected to fail
# (TAP TODO) until the store is fixed.  The classifiers are narrow on
# purpose: anything they do not recognise is a new failure.

FINDINGS = {
    # None open.  Fixed on main, each kept as a plain regression case
    # (README.md, "Findings"):
    #   F1a  a power cut between the store's mkdirs and its superblock
    #        left a directory the server refused (fixed by ced6ad3)
    #   F1b  no fsync of the store directory between the mkdirs and the
    #        superblock's rename (fixed by 48d974f)
    #   F1c  a store directory the server created was never fsync'ed
    #        into its parent (fixed by ced6ad3)
    #   F2   torn records in packs older than the last two indexed by the
    #        rebuild (fixed by ac037b9: dedup checks the payload CRC,
    #        fsck counts lost volume data)
}


def store_facts(store):
    """What a classifier needs to know of a crash state, taken before
    anything opened it."""
    packs = os.path.join(store, "packs")
    nums = []
    if os.path.isdir(packs):
        for n in os.listdir(packs):
            if n.startswith("pack-") and n.endswith(".cas"):
                nums.append(int(n[5:13]))
    return {"store_dir": os.path.isdir(store),
            "superblock": os.path.exists(os.path.join(store, "superblock")),
            "packs_dir": os.path.isdir(packs),
            "volumes_dir": os.path.isdir(os.path.join(store, "volumes")),
            "last_pack": max(nums) if nums else 0,
            "index": os.path.exists(os.path.join(store, "index"))}


def classify_cas(msg, facts):
    """The open finding a failure message is an instance of, or None (a
    new failure).  A finding's classifier goes when it is fixed, so that
    it cannot hide its return."""
    return None


def workload(name, **kw):
    def deco(fn):
        WORKLOADS[name] = Workload(name, fn, **kw)
        return fn
    return deco


def get(name):
    return WORKLOADS[name]


def names(backend=None):
    """The workloads the test scripts run."""
    return [n for n, w in WORKLOADS.items()
            if w.ci and (backend is None or w.backend == backend)]


BS = 4096


def mixed_round(s, r, fua=False):
    """One round of writes: full blocks, partial blocks across block
    boundaries, an overwrite, zero and trim, all inside the first 256
    blocks.  fua: make some of them FUA instead of flushing."""
    base = (r * 37) % 200
    s.write(base * BS, 3 * BS)                              # full blocks
    s.write((base + 5) * BS + 1000, 5000, fua=fua)          # partial, 2 blocks
    s.write((base + 1) * BS, BS)                            # overwrite
    s.write(7 * BS + 512 * r, 512)                          # sub-block
    s.zero((base + 2) * BS, BS, fua=fua)                    # whole block
    s.zero((base + 5) * BS + 3000, 300)                     # partial zero
    if s.wl.backend == "cas":
        s.trim((base + 20) * BS, 2 * BS)
    else:
        # flatfile: a trim may do nothing (it is advisory); zero instead.
        s.zero((base + 20) * BS, 2 * BS)


@workload("cas-flush", backend="cas", server="minnbd", size=1 << 20)
def cas_flush(s):
    s.start()
    for r in range(6):
        mixed_round(s, r)
        if r % 2 == 0:
            s.flush()
        s.write(((r * 11) % 250) * BS, 2 * BS)
        s.flush()
    s.stop()


def fua_rounds(s, skew):
    """Rounds of writes, some FUA, no flush."""
    s.start()
    for r in range(6):
        mixed_round(s, r, fua=True)
        s.write(((r * 13) % 250) * BS + skew, 2 * BS, fua=True)
    s.stop()


@workload("cas-fua", backend="cas", server="nbdkit", size=1 << 20)
def cas_fua(s):
    fua_rounds(s, 0)


def compressible(s, n):
    """n reproducible non-zero bytes that lz4 shrinks well: a 512-byte
    run repeated (FORMAT.md, "Compressed records")."""
    unit = s.data(512)
    return (unit * (n // 512 + 1))[:n]


@workload("cas-compress", backend="cas", server="minnbd", size=1 << 20,
          params=("compression=lz4",))
def cas_compress(s):
    # A store that compresses: most blocks are stored compressed (no
    # piece tables), some raw; flushes and FUA writes both commit them.
    s.start()
    for r in range(6):
        base = (r * 37) % 200
        s.write(base * BS, compressible(s, 3 * BS))
        s.write((base + 5) * BS + 1000, compressible(s, 5000), fua=True)
        s.write((base + 1) * BS, BS)                    # random: raw
        s.write(7 * BS + 512 * r, compressible(s, 512))
        s.zero((base + 2) * BS, BS, fua=r % 2 == 1)
        if r % 2 == 0:
            s.flush()
        s.write(((r * 11) % 250) * BS, compressible(s, 2 * BS),
                fua=r % 2 == 1)
    s.flush()
    s.stop()


@workload("cas-index", backend="cas", server="nbdkit", size=1 << 20)
def cas_index(s):
    # Clean stops save the index cache; the next start loads it and
    # scans past its mark.  Some rounds end without a flush: the close
    # commits them.
    s.start()
    for r in range(4):
        mixed_round(s, r)
        s.flush()
        s.write(((r * 7) % 250) * BS, 4 * BS)
        s.restart(server=("minnbd", "nbdkit")[r % 2])
    s.write(100 * BS, 8 * BS)
    s.stop()


@workload("cas-rollover", backend="cas", server="minnbd", size=1 << 20,
          env={"NBDCAS_PACK_SIZE": "65536"})
def cas_rollover(s):
    # 64 KiB packs hold 15 records of a 4 KiB block: each round fills
    # two or three packs before its flush.
    s.start()
    for r in range(5):
        for k in range(40):
            s.write(((r * 40 + k) % 256) * BS, BS)
        s.flush()
        if r == 2:
            s.restart()
    s.stop()


@workload("cas-grow", backend="cas", server="nbdkit", size=1 << 20)
def cas_grow(s):
    # 256 blocks (map depth 1), then 1280 (depth 2), then 1536.
    s.start()
    s.write(0, 4 * BS)
    s.write((1 << 20) - BS, BS)
    s.flush()
    s.restart(size=5 << 20)
    s.write((5 << 20) - 3 * BS, 3 * BS)
    s.write(1 << 20, 2 * BS)
    s.flush()
    s.restart(size=6 << 20, server="minnbd")
    s.write((11 << 19), 5 * BS)
    s.stop()


@workload("cas-create", backend="cas", server="minnbd", size=1 << 20,
          store_dir=False)
def cas_create(s):
    # The server creates the store's directory itself (the other
    # workloads give it an empty one; F1c's regression case).
    s.start()
    s.write(0, 4 * BS)
    s.flush()
    s.stop()


def recover(s):
    # The server recovers the crashed store (cuts torn tails, rebuilds
    # or checks the index); the client writes again what it had sent
    # before the crash, then more, with flushes.
    s.start()
    for k, w in enumerate(s.wl.pending):
        s.write(w.off, w.data)
        if k % 25 == 24:
            s.flush()
    s.flush()
    for k in range(20):
        s.write(((k * 5) % 256) * BS, BS)
    s.flush()
    s.stop()


@workload("cas-recover", backend="cas", server="nbdkit", size=1 << 20,
          env={"NBDCAS_PACK_SIZE": "65536"},
          base=("cas-rollover", lambda m, c: _first_flush_of_three_packs(m),
                {"latest": 0.5, "floor": 0.3, "ns": 0.0}))
def cas_recover(s):
    # From cas-rollover cut before its first flush of three packs (no
    # index cache; torn records in all three).
    recover(s)


@workload("cas-recover-index", backend="cas", server="minnbd",
          size=1 << 20, env={"NBDCAS_PACK_SIZE": "65536"},
          base=("cas-rollover", lambda m, c: _last_flush(m),
                {"latest": 0.5, "floor": 0.3, "ns": 0.0}))
def cas_recover_index(s):
    # From cas-rollover cut before its last flush (after a restart: the
    # index cache of the first session is there).
    recover(s)


@workload("cas-repair", backend="cas", server="minnbd", size=1 << 20,
          env={"NBDCAS_PACK_SIZE": "65536"},
          base=("cas-rollover", lambda m, c: _first_flush_of_three_packs(m),
                {"latest": 0.5, "floor": 0.3, "ns": 0.0}))
def cas_repair(s):
    # From the same torn state as cas-recover, `nbdcas fsck --repair`
    # first (it cuts torn tails, drops damaged records from the index and
    # rewrites the index cache), then the server and the client.
    p = s.nbdcas("fsck", "--repair", "STORE")
    if p.returncode not in (0, 1):
        raise RuntimeError("nbdcas fsck --repair: exit %d: %s%s" % (
            p.returncode, p.stdout, p.stderr))
    recover(s)


@workload("cas-history", backend="cas", server="minnbd", size=1 << 20)
def cas_history(s):
    # Snapshots, clones, deletes and renames, live (through the server's
    # control socket) and offline (the tool on the store, recorded too).
    s.start()
    s.write(0, 8 * BS)
    s.write(20 * BS, 4 * BS)
    s.flush()
    s.snapshot("default", "s1")
    s.write(0, 2 * BS)                  # not flushed: the snapshot does
    s.snapshot("default", "s2")
    s.clone("default@s1", "c1")         # a writable copy of a snapshot
    s.open("c1")
    s.write(4 * BS, 3 * BS)
    s.flush()
    s.snapshot("c1", "t1")              # of an open clone
    s.use("default")
    s.write(40 * BS, BS)
    s.delete("default@s1")              # one snapshot: an unlink
    s.stop()
    s.rename("c1", "c2")                # offline; its snapshot follows
    s.start()
    s.clone("default", "c3")
    s.delete("c2", recursive=True)      # the root, then its snapshots
    s.write(60 * BS, 2 * BS)
    s.flush()
    s.rename("default@s2", "default@s3")
    s.stop()


@workload("cas-import", backend="cas", server="minnbd", size=1 << 20)
def cas_import(s):
    # nbdcas import (offline, recorded): over the volume, into a new one.
    s.start()
    s.write(0, 4 * BS)
    s.flush()
    s.stop()
    s.import_image("default", 1 << 20)
    s.import_image("imported", 512 << 10, create=True)
    s.start()
    s.write(8 * BS, 2 * BS)
    s.flush()
    s.stop()


@workload("cas-gc", backend="cas", server="minnbd", size=1 << 20,
          env={"NBDCAS_PACK_SIZE": "65536"})
def cas_gc(s):
    # Garbage (the same blocks written again and again, a deleted
    # snapshot and clone) in small packs, collected with nothing left
    # unreferenced (--max-unused 0: packs removed, others rewritten):
    # live through the server, with writes before and after, and
    # offline.
    s.start()
    for r in range(3):
        for k in range(24):
            s.write(k * BS, BS)
        s.flush()
    s.restart()                         # an index cache for gc to remove
    s.snapshot("default", "old")
    s.clone("default", "tmp")
    for k in range(24):
        s.write(k * BS, BS)
    s.write(200 * BS, 4 * BS)           # not flushed: the collection does
    s.delete("default@old")
    s.delete("tmp")
    s.gc("--max-unused", "0")
    for k in range(8):
        s.write((k + 4) * BS, BS)
    s.flush()
    s.stop()
    s.gc("--max-unused", "0")
    s.start()
    s.write(40 * BS, 4 * BS)
    s.flush()
    s.stop()


@workload("cas-v4-gc", backend="cas", server="minnbd", size=1 << 20,
          blocksize=16384, params=("format=4",),
          env={"NBDCAS_PACK_SIZE": "262144"})
def cas_v4_gc(s):
    # cas-gc on a format-4 store (4 KiB units in extents, 16 KiB blocks:
    # descriptors of up to 4 units).  Flushes every other block make
    # small extents, and each round overwrites two thirds of the blocks,
    # so packs hold live and dead extents; partial blocks; a deleted
    # snapshot and clone; `nbdcas gc --max-unused 0` live (unflushed
    # writes before it, writes after it) and offline: extents dropped,
    # copied whole (the copy synced before the table points at it) and
    # packs retired.
    bs = 16384
    s.start()
    for r in range(3):
        for k in range(32):
            if (k + r) % 3:
                s.write(k * bs, bs)
            if k % 2:
                s.flush()
        for k in range(6):
            s.write(k * 5 * bs + 4096 * (k % 4), 4096)
        s.flush()
    s.restart()
    s.snapshot("default", "old")
    s.clone("default", "tmp")
    for k in range(16):
        s.write(k * 2 * bs + 512 * (k % 3), bs - 1024)
    s.write(50 * bs, 4 * bs)            # not flushed: the collection does
    s.delete("default@old")
    s.delete("tmp")
    s.gc("--max-unused", "0")
    for k in range(8):
        s.write((k + 4) * bs, bs)
    s.flush()
    s.stop()
    s.gc("--max-unused", "0")
    s.start()
    s.write(40 * bs + 4096, 8192)
    s.flush()
    s.stop()


@workload("cas-cache", backend="cas", server="minnbd", size=4 << 20,
          blocksize=65536, params=("dirtycache=640K",),
          env={"NBDCAS_PACK_SIZE": "262144"})
def cas_cache(s):
    # The write-back cache under pressure: 64 KiB blocks (so 4 KiB
    # writes are partial, and records get piece tables), a cache of 9
    # blocks, partial writes to 40 blocks between flushes: eviction
    # stores dirty blocks before any flush asks (a root must still be as
    # of one flush).  Whole-block writes over dirty entries, unaligned
    # partial writes (the entry is filled from the store), zero, trim, a
    # FUA write (a flush: everything before it is durable), a collection
    # live with dirty blocks in the cache, and a restart.
    bs = 65536
    s.start()
    for r in range(3):
        for k in range(40):
            s.write(((k * 7 + r) % 64) * bs + 4096 * ((k + r) % 16), 4096)
        s.write(((r * 5) % 64) * bs, bs)
        s.write(((r * 11) % 64) * bs + 1000, 3000)
        s.zero(((r * 3) % 64) * bs + 8192, 8192)
        s.trim(((r * 17 + 1) % 64) * bs, bs)
        if r == 1:
            s.write(((r * 13) % 64) * bs + 512, 2048, fua=True)
            s.write(((r * 13 + 1) % 64) * bs + 512, 2048)
        s.flush()
    for k in range(20):
        s.write(((k * 3) % 64) * bs + 512 * k, 1024)
    s.gc("--max-unused", "0")           # it flushes the dirty blocks
    for k in range(12):
        s.write(((k * 5 + 2) % 64) * bs + 4096 * k, 4096)
    s.restart()                         # the clean stop flushes
    s.write(3 * bs + 100, 200)
    s.flush()
    s.stop()


@workload("cas-v4", backend="cas", server="minnbd", size=2 << 20,
          blocksize=65536, params=("format=4",),
          env={"NBDCAS_PACK_SIZE": "262144"})
def cas_v4(s):
    # Format 4 (4 KiB units in extents, a block descriptor per slot):
    # whole blocks, 4 KiB and 512-byte writes into them (the write-back
    # keeps the untouched units' references), unaligned writes, the same
    # data again 4 KiB further (dedup into extents of earlier rounds),
    # zero and trim, flushes and FUA writes (the open extent appended
    # before the sync), small packs (extents across pack rollover), a
    # restart.
    bs = 65536
    s.start()
    for r in range(4):
        base = (r * 7) % 24
        s.write(base * bs, 2 * bs)
        for k in range(6):
            s.write((base + k % 2) * bs + 4096 * ((k * 5 + r) % 16), 4096)
        s.write((base + 1) * bs + 512 * (r + 3), 512)
        s.write(((r * 5 + 3) % 30) * bs + 1000, 6000, fua=r % 2 == 1)
        again = s.data(bs)
        s.write(((r * 3 + 10) % 30) * bs, again)
        s.write(((r * 3 + 11) % 30) * bs + 4096, again[:bs - 4096])
        s.zero(((r * 11 + 2) % 30) * bs + 8192, 8192)
        s.trim(((r * 13 + 5) % 30) * bs, bs)
        if r % 2 == 0:
            s.flush()
    s.restart()
    s.write(3 * bs + 100, 200)
    s.write(4 * bs, 4096, fua=True)
    s.flush()
    s.stop()


def waves(s, nwaves, per_wave):
    """Waves of requests in flight together: writes to distinct blocks
    (whole or partial), zeroes, and a flush in the middle of each wave,
    sent while writes are in flight."""
    for r in range(nwaves):
        blocks = s.rng.sample(range(256), per_wave)
        ops = []
        for k, b in enumerate(blocks):
            if k == per_wave // 2:
                ops.append(("flush",))
            if k % 5 == 4:
                ops.append(("zero", b * BS, BS))
            elif k % 3 == 2:
                ops.append(("write", b * BS + 512 * (k % 7), 1536))
            else:
                ops.append(("write", b * BS, BS))
        s.aio(ops)


@workload("cas-inflight", backend="cas", server="nbdkit", size=1 << 20)
def cas_inflight(s):
    # Flushes racing writes in the server (group commit, dirty leaves
    # committed while being written): the check is per block.
    s.start()
    waves(s, 6, 16)
    s.flush()
    waves(s, 2, 16)
    s.stop()


@workload("flatfile-inflight", backend="flatfile", server="minnbd",
          size=1 << 20)
def flatfile_inflight(s):
    s.start()
    waves(s, 6, 16)
    s.flush()
    s.stop()


@workload("flatfile-flush", backend="flatfile", server="minnbd",
          size=1 << 20)
def flatfile_flush(s):
    s.start()
    for r in range(6):
        mixed_round(s, r)
        s.flush()
        s.write(((r * 11) % 250) * BS + 100, 3 * BS)
        if r % 2:
            s.flush()
    s.stop()


@workload("flatfile-fua", backend="flatfile", server="nbdkit", size=1 << 20)
def flatfile_fua(s):
    fua_rounds(s, 7)


# ---- regression cases: one per finding (or per way to hit it) ----

def _index_of(model, pred, what):
    for i, e in enumerate(model.entries):
        if pred(e):
            return i
    raise powerloss.ModelError("regression case: no %s in the log" % what)


def _superblock_rename(model, client=None):
    return _index_of(model, lambda e: e.type == powerloss.RENAME and
                     e.path2.endswith("/store/superblock"),
                     "rename of the superblock")


def _first_flush_of_three_packs(model, client=None):
    """The cut right before the first flush that has to sync three or
    more packs: everything since the last flush is written, none of it
    synced."""
    syncs = [i for i, e in enumerate(model.entries)
             if e.type == powerloss.SYNC_BEGIN and "/packs/pack-" in e.path
             and e.a == powerloss.SYNC_FDATASYNC and
             model.entries[i - 1].type in (powerloss.WRITE,
                                           powerloss.SYNC_END)]
    for i in syncs:
        run = 0
        j = i
        while model.entries[j].type in (powerloss.SYNC_BEGIN,
                                        powerloss.SYNC_END):
            run += model.entries[j].type == powerloss.SYNC_BEGIN
            j += 1
        if run >= 3 and model.entries[i].path.endswith("pack-00000001.cas"):
            return i
    raise powerloss.ModelError("regression case: no flush of 3 packs")


def _first_flush_ack(model, client):
    """The cut right after the first flush was acknowledged."""
    return next(model.count(d.acked) for d in client.points
                if d.what.startswith("flush"))


def _last_flush(model):
    """The cut right before the last flush's first pack sync."""
    last = None
    for i, e in enumerate(model.entries):
        if e.type == powerloss.SYNC_BEGIN and "/packs/pack-" in e.path and \
                model.entries[i - 1].type == powerloss.WRITE:
            last = i
    if last is None:
        raise powerloss.ModelError("no flush in the log")
    return last


def _tear_first_record(path, sec, lo, hi):
    # Pack 1's first record: header at 64, payload from 128; its second
    # sector (bytes 512..1023, payload) keeps its durable value (zeros),
    # everything else written reaches the disk.
    if path.endswith("/packs/pack-00000001.cas") and sec == 1:
        return lo
    return None


REGRESSIONS = [
    # F1a and F1c were found on 993ee1f and are fixed by ced6ad3 (a
    # directory holding only what an interrupted creation leaves is
    # created again; the new store directory is fsync'ed into its
    # parent).
    powerloss.Regression(
        "F1a", "cut between the store's mkdirs and the superblock's "
        "rename: the server creates the store again",
        "cas-flush", _superblock_rename,
        {"ns": lambda op: op.kind == "mkdir"}, fixed=True),
    # F1b was found on 993ee1f and is fixed by 48d974f (the store
    # directory is fsync'ed after the mkdirs): this must now pass.
    powerloss.Regression(
        "F1b", "the superblock's rename survives the cut, unsynced mkdirs "
        "do not: the store is whole (the mkdirs were fsync'ed first)",
        "cas-flush", lambda m, c: _superblock_rename(m) + 1,
        {"ns": lambda op: op.kind == "rename"}, fixed=True),
    powerloss.Regression(
        "F1c", "the server creates the store's directory: after the first "
        "flush is acknowledged, unsynced names lost, the store is there",
        "cas-create", _first_flush_ack,
        {"ns": 0.0, "latest": 1.0, "floor": 0.0}, fixed=True),
    # F2 was found on 993ee1f and is fixed by ac037b9 (dedup checks a
    # candidate's payload CRC; fsck counts lost volume data, not
    # unreferenced damage): these two must now pass.
    powerloss.Regression(
        "F2", "cut before a flush of 3 packs, one sector of pack 1 lost: "
        "fsck passes (a torn record no volume uses)",
        "cas-rollover", _first_flush_of_three_packs,
        {"latest": 1.0, "floor": 0.0, "ns": 0.0,
         "sector": _tear_first_record}, fixed=True),
    powerloss.Regression(
        "F2", "same state: the data written again and flushed reads back "
        "(it must not deduplicate against the torn record)",
        "cas-rollover", _first_flush_of_three_packs,
        {"latest": 1.0, "floor": 0.0, "ns": 0.0,
         "sector": _tear_first_record}, rewrite=True, skip_fsck=True,
        fixed=True),
]
