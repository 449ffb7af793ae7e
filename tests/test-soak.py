#!/usr/bin/python3
# Soak (issue 5): many clients at once doing mixed reads, writes, trims,
# zeroes, flushes, cache and block-status requests and disconnects
# against a cas export, every answer checked against an exact model of
# the disk, and the server's memory use staying flat.
#
# Bounded in time and count, loopback only: CLIENTS threads, each with
# its own connection and up to DEPTH pipelined aio requests, run a fixed
# number of operations drawn from random.Random(seed) with fixed seeds,
# in ROUNDS rounds.  NBDCAS_SOAK_OPS (operations per client per round,
# default 800) and NBDCAS_SOAK_ROUNDS (default 3) make it longer.  At
# the defaults a pair takes ~25-30 s on 2 cores and leaves ~1 GiB of
# pack files in TMPDIR until it ends (no garbage collection yet; every
# partial-block write stores a whole 64K block).
#
# The model is exact despite the concurrency because every byte has one
# owner: the first 56 MiB are 256 KiB stripes (4 blocks of the default
# 64K), stripe s belonging to client s % CLIENTS; the last 8 MiB are
# 4 KiB pieces, piece p belonging to client p % CLIENTS, so one block
# there is written by up to 12 clients at once (cas read-modify-write
# under contention).  A client never has two requests in flight over the
# same bytes unless both only read.  Writes are unaligned and of any
# size (sub-block read-modify-write), some with FUA; some write whole
# blocks from a small pool shared by all clients (dedup, the same hash
# stored concurrently).  Every read is compared with the model as it was
# when the read was sent; block status must never call a byte zero the
# model says is not.  Disconnects: clean (NBD_CMD_DISC after draining)
# and abrupt (socket closed with reads in flight: the server must drop
# the replies and carry on; against nbdkit with nothing in flight, see
# ABANDON_READS_NBDKIT); the client then reconnects.
#
# After each round a fresh connection reads the whole disk back.  Then:
# flush, a clean restart (the soaked server's exit status is judged,
# which is when LeakSanitizer and valgrind report), read it back; a
# short round more on the reopened store, flush, kill -9 and restart
# (flushed data must survive), read it back.  Sanitizer reports in the
# server's log fail the test whenever they were written.
#
# Memory: the server's VmRSS and VmHWM (peak RSS) are read at rest (no
# connection left) at the start and after each round; round 1 is the
# warm-up (caches, thread stacks, the heap at its working size).  Judged:
# the peak must not grow after round 1 by more than max(8 MiB, 10% of
# round 1's peak); the RSS at rest, never above the peak, is bounded by
# the same figure.  Why peaks, not RSS at rest: what is resident at rest
# is the heap up to its highest live chunk, so without any leak it
# wanders between ~7 and ~23 MiB from round to round here (malloc's
# in-use bytes stay near 1 MiB), while the peak, set by the requests in
# flight (12 connections x 8 x up to 256 KiB), holds within ~4 MiB.  A
# leak raises every later moment, the peak with it.  What the rounds
# legitimately add is the hash index of the new unique chunks (< 40
# bytes per 64K chunk: well under 1 MiB).  Rounds 2 and 3 make ~19000
# requests and ~400 connections: a block buffer leaked per write exceeds
# the bound many times over, anything over ~20 KiB leaked per connection
# (a worker's stack, a read buffer) exceeds it too.  Smaller leaks are
# valgrind's and ASan's to find (make check-valgrind,
# --enable-sanitizers).
#
# The servers run with MALLOC_ARENA_MAX=1 (unless the caller set it):
# with glibc's default of 8 arenas per core, every connection thread
# may get an arena of its own and each arena keeps its own high-water
# mark, so RSS climbs for many rounds before it levels off (measured:
# minnbd 28 -> 107 MiB over 15 rounds, nbdkit 21 -> 134 MiB over 6,
# malloc's in-use bytes flat at ~1 MiB) -- glibc retention, not a leak,
# and it would hide one.  Under valgrind or a sanitizer memory figures
# mean nothing: they are printed, not judged, and under valgrind the
# operation counts are cut down.

import bisect
import glob
import os
import random
import threading
import time
import traceback

import nbd
import nbdtest

KiB = 1024
MiB = 1024 * KiB
SIZE = 64 * MiB
BLOCK = 64 * KiB                # cas default block size
STRIPE = 4 * BLOCK
STRIPED_END = 56 * MiB          # [0, 56M): stripes; [56M, 64M): pieces
PIECE = 4 * KiB
CLIENTS = 12
DEPTH = 8
POOL = 8                        # shared whole-block patterns (dedup)

VALGRIND = nbdtest.VALGRIND
OPS = int(os.environ.get("NBDCAS_SOAK_OPS", "800"))
ROUNDS = max(2, int(os.environ.get("NBDCAS_SOAK_ROUNDS", "3")))
if VALGRIND:
    OPS = max(20, OPS // 10)
    ROUNDS = 2
elif nbdtest.SANITIZED:
    # Memory is not judged under a sanitizer (nbdtest.JUDGE_MEMORY), so
    # the rounds that show it flat are not needed: what is left is many
    # clients at once, for ASan and TSan to watch.
    OPS = max(50, OPS // 4)
    ROUNDS = 2

# nbdkit 1.32.5 (Debian 12) aborts when a client closes its socket while
# replies are in flight ("connections.c:402: raw_send_socket: Assertion
# `sock >= 0' failed", right after "write reply: Broken pipe"; with any
# plugin, nbdkit's own memory plugin too: it seems a worker thread sends
# a reply on a connection another thread has already closed after a
# failed send).  Not ours to fix: against nbdkit an abrupt disconnect
# closes the socket with nothing in flight, unless
# NBDCAS_SOAK_NBDKIT_ABANDON=1 (for a fixed nbdkit).
ABANDON_READS_NBDKIT = os.environ.get("NBDCAS_SOAK_NBDKIT_ABANDON",
                                      "") not in ("", "0")

# The servers' malloc: one arena unless the caller chose otherwise (see
# "Memory" above for why).  Read by glibc when the server starts.
os.environ.setdefault("MALLOC_ARENA_MAX", "1")

MEM_SLACK = 8 * MiB
MEM_FRACTION = 0.10
# Threads of an idle server (no connection): minnbd and nbdkit alike
# start none besides the main one, not counting a backend's background
# threads, which are named "bg:..." (the cas control socket's, say).
# (TSan's runtime adds one; memory is not judged under sanitizers.)
IDLE_THREADS = 1

# Kinds of operation and their weights.
WEIGHTS = [
    ("read", 24), ("read_piece", 6),
    ("write", 18), ("write_dup", 10), ("write_piece", 8),
    ("trim", 6), ("zero", 6), ("zero_piece", 3),
    ("flush", 5), ("cache", 2), ("block_status", 4),
    ("disconnect", 1), ("abort", 1),
]
KINDS = [k for k, _ in WEIGHTS]
CUM = []
_t = 0
for _k, _w in WEIGHTS:
    _t += _w
    CUM.append(_t)


JUDGE_RSS = nbdtest.JUDGE_MEMORY


def foreground_threads(pid):
    """Threads of a process that are not a backend's background threads
    (named "bg:...")."""
    n = 0
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, t)) as f:
                if f.read().startswith("bg:"):
                    continue
        except OSError:
            continue                    # exited meanwhile
        n += 1
    return n


def proc_status(pid):
    """VmRSS and VmHWM (KiB) and the number of foreground threads."""
    out = nbdtest.proc_status(pid)
    return out["VmRSS"], out["VmHWM"], foreground_threads(pid)


def quiescent(srv):
    """The server's (VmRSS, VmHWM) at rest: when judging memory, first
    wait until it is back to IDLE_THREADS, i.e. the connections our
    clients closed are torn down and their memory freed (a server
    thread's exit has no event a client could wait on)."""
    if JUDGE_RSS:
        nbdtest.wait_until(
            lambda: proc_status(srv.proc.pid)[2] <= IDLE_THREADS,
            "the server's connection threads to exit")
    return proc_status(srv.proc.pid)[:2]


def pack_bytes(store):
    return sum(os.path.getsize(p)
               for p in glob.glob(os.path.join(store, "packs", "*")))


def overlaps(a_off, a_len, b_off, b_len):
    return a_off < b_off + b_len and b_off < a_off + a_len


class Client:
    """One soak client: its own connection (renewed on disconnects), its
    own bytes of the disk, its own deterministic stream of operations."""

    def __init__(self, srv, i, seed, model, pool, counts):
        self.srv = srv
        self.i = i
        self.rng = random.Random(seed)
        self.model = model
        self.pool = pool
        self.counts = counts
        self.stripes = [s for s in range(STRIPED_END // STRIPE)
                        if s % CLIENTS == i]
        self.pieces = [p for p in range((SIZE - STRIPED_END) // PIECE)
                       if p % CLIENTS == i]
        self.h = None
        self.abandon_reads = srv.server != "nbdkit" or ABANDON_READS_NBDKIT
        # cookie -> (kind, off, len, writes, check) with check a function
        # run on success (reads compare their buffer with the model).
        self.inflight = {}

    def count(self, kind, n=1):
        self.counts[kind] = self.counts.get(kind, 0) + n

    def connect(self):
        self.h = self.srv.connect()
        self.count("connect")

    # --- completion -------------------------------------------------------

    def reap(self, block):
        """Retire completed requests; with block, wait for at least one."""
        while True:
            done = [c for c in self.inflight
                    if self.h.aio_command_completed(c)]
            for c in done:
                kind, off, ln, _, check = self.inflight.pop(c)
                if check:
                    check()
            if done or not block or not self.inflight:
                return
            self.h.poll(-1)

    def drain(self):
        while self.inflight:
            self.reap(True)

    def make_room(self, off, ln, writes):
        """Wait until a request over [off, off+ln) may be sent: fewer than
        DEPTH in flight, none overlapping it unless both only read."""
        while True:
            if len(self.inflight) < DEPTH and not any(
                    (writes or w) and overlaps(off, ln, o, n)
                    for (_, o, n, w, _) in self.inflight.values()):
                return
            self.reap(True)

    def send(self, kind, off, ln, writes, issue, check=None):
        self.make_room(off, ln, writes)
        c = issue()
        self.inflight[c] = (kind, off, ln, writes, check)
        self.count(kind)

    # --- choosing ranges --------------------------------------------------

    def stripe_range(self):
        """A range inside one of our stripes: any alignment, any size,
        biased towards small and towards block/4K alignment."""
        base = self.rng.choice(self.stripes) * STRIPE
        r = self.rng.random()
        if r < 0.25:
            a = BLOCK
        elif r < 0.5:
            a = PIECE
        else:
            a = 1
        off = self.rng.randrange(0, STRIPE, a)
        room = STRIPE - off
        r = self.rng.random()
        if r < 0.4:
            ln = self.rng.randint(1, min(room, 8 * KiB))
        elif r < 0.7:
            ln = self.rng.randint(1, min(room, BLOCK))
        else:
            ln = self.rng.randint(1, room)
        if a > 1 and self.rng.random() < 0.5:
            ln = max(a, ln - ln % a) if room >= a else ln
        return base + off, min(ln, room)

    def piece_range(self):
        """All or part of one of our 4 KiB pieces of the shared blocks."""
        base = STRIPED_END + self.rng.choice(self.pieces) * PIECE
        if self.rng.random() < 0.5:
            return base, PIECE
        off = self.rng.randrange(PIECE)
        return base + off, self.rng.randint(1, PIECE - off)

    # --- operations ---------------------------------------------------------

    def read(self, off, ln, kind):
        want = bytes(self.model[off:off + ln])
        buf = nbd.Buffer(ln)

        def check():
            got = buf.to_bytearray()
            if got != want:
                k = next(k for k in range(ln) if got[k] != want[k])
                raise AssertionError(
                    "client %d: %s of [%d, +%d) differs from the model at "
                    "byte %d (got %d, want %d)" % (
                        self.i, kind, off, ln, off + k, got[k], want[k]))
        self.send(kind, off, ln, False,
                  lambda: self.h.aio_pread(buf, off), check)

    def write(self, off, data, kind):
        ln = len(data)
        flags = 0
        if self.rng.random() < 0.1:
            flags = nbd.CMD_FLAG_FUA
            self.count("fua")
        buf = nbd.Buffer.from_bytearray(bytearray(data))
        # The model changes when the request is sent: nothing of ours over
        # these bytes is in flight by then, and nobody else's ever is.
        self.make_room(off, ln, True)
        self.model[off:off + ln] = data
        self.count("bytes_written", ln)
        self.send(kind, off, ln, True,
                  lambda: self.h.aio_pwrite(buf, off, flags=flags))

    def zero(self, off, ln, kind):
        self.make_room(off, ln, True)
        self.model[off:off + ln] = bytes(ln)
        if kind == "trim":
            self.send(kind, off, ln, True,
                      lambda: self.h.aio_trim(ln, off))
            return
        flags = 0
        r = self.rng.random()
        if r < 0.3:
            flags = nbd.CMD_FLAG_NO_HOLE
        elif r < 0.5:
            flags = nbd.CMD_FLAG_FAST_ZERO
        if self.rng.random() < 0.1:
            flags |= nbd.CMD_FLAG_FUA
            self.count("fua")
        self.send(kind, off, ln, True,
                  lambda: self.h.aio_zero(ln, off, flags=flags))

    def block_status(self, off, ln):
        flags = nbd.CMD_FLAG_REQ_ONE if self.rng.random() < 0.3 else 0
        want = bytes(self.model[off:off + ln])
        got = []

        def extent(metacontext, eoff, entries, err):
            if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
                got.append((eoff, list(entries)))
            return 0

        def check():
            assert len(got) == 1, "client %d: block status at %d: %d " \
                "replies" % (self.i, off, len(got))
            eoff, ents = got[0]
            assert eoff == off and ents, \
                "client %d: block status at %d: %r" % (self.i, off, got)
            pos = 0
            for k in range(0, len(ents), 2):
                n, st = ents[k], ents[k + 1]
                assert n > 0, "client %d: empty extent at %d" % (
                    self.i, off + pos)
                end = min(pos + n, ln)
                if st & nbd.STATE_ZERO and any(want[pos:end]):
                    raise AssertionError(
                        "client %d: block status says [%d, %d) reads as "
                        "zero, the model has data there" % (
                            self.i, off + pos, off + end))
                pos += n
                if pos >= ln:
                    break
        self.send("block_status", off, ln, False,
                  lambda: self.h.aio_block_status(ln, off, extent,
                                                  flags=flags), check)

    def disconnect(self):
        """Clean: everything answered, NBD_CMD_DISC, a new connection."""
        self.drain()
        self.h.shutdown()
        del self.h
        self.connect()

    def abort(self):
        """Abrupt: drain our writes (their outcome must be known), then
        send a few reads and close the socket without waiting for them
        (against nbdkit without the reads, see ABANDON_READS_NBDKIT)."""
        self.drain()
        bufs = []
        n = self.rng.randint(1, DEPTH)
        for _ in range(n if self.abandon_reads else 0):
            off, ln = self.stripe_range()
            bufs.append(nbd.Buffer(ln))
            self.h.aio_pread(bufs[-1], off)
            self.count("abandoned_reads")
        # Dropping the last reference closes the handle and the socket.
        self.h = None
        del bufs
        self.connect()

    def step(self):
        kind = KINDS[bisect.bisect_right(CUM, self.rng.randrange(CUM[-1]))]
        if kind == "read":
            off, ln = self.stripe_range()
            self.read(off, ln, kind)
        elif kind == "read_piece":
            off, ln = self.piece_range()
            self.read(off, ln, kind)
        elif kind == "write":
            off, ln = self.stripe_range()
            self.write(off, self.rng.randbytes(ln), kind)
        elif kind == "write_dup":
            # Whole blocks from the shared pool, block-aligned (stored
            # once whoever writes them), or a slice of one unaligned.
            s = self.rng.choice(self.stripes) * STRIPE
            if self.rng.random() < 0.75:
                first = self.rng.randrange(STRIPE // BLOCK)
                n = self.rng.randint(1, STRIPE // BLOCK - first)
                data = b"".join(self.rng.choice(self.pool) for _ in range(n))
                self.write(s + first * BLOCK, data, kind)
            else:
                p = self.rng.choice(self.pool)
                a = self.rng.randrange(BLOCK)
                b = self.rng.randint(a + 1, BLOCK)
                off = s + self.rng.randrange(STRIPE - (b - a) + 1)
                self.write(off, p[a:b], kind)
        elif kind == "write_piece":
            off, ln = self.piece_range()
            self.write(off, self.rng.randbytes(ln), kind)
        elif kind in ("trim", "zero"):
            off, ln = self.stripe_range()
            self.zero(off, ln, kind)
        elif kind == "zero_piece":
            off, ln = self.piece_range()
            self.zero(off, ln, "trim" if self.rng.random() < 0.5 else
                      "zero")
            self.count(kind)
        elif kind == "flush":
            self.send(kind, 0, 0, False, lambda: self.h.aio_flush())
        elif kind == "cache":
            off, ln = self.stripe_range()
            self.send(kind, off, ln, False,
                      lambda: self.h.aio_cache(ln, off))
        elif kind == "block_status":
            off, ln = self.stripe_range()
            self.block_status(off, ln)
        elif kind == "disconnect":
            self.disconnect()
            self.count(kind)
        elif kind == "abort":
            self.abort()
            self.count(kind)
        # Pick up whatever has completed, without waiting.
        self.reap(False)

    def run(self, ops, errors):
        try:
            self.connect()
            for _ in range(ops):
                self.step()
            self.drain()
            self.h.shutdown()
            self.h = None
        except BaseException:
            errors.append("client %d: %s" % (self.i, traceback.format_exc()))
            self.h = None


def verify(srv, model, what):
    h = srv.connect()
    assert h.get_size() == SIZE, "%s: size %d" % (what, h.get_size())
    # No bigger than the workload's requests: a new, bigger size would
    # move glibc's mmap threshold and so the RSS figures.
    step = STRIPE
    for off in range(0, SIZE, step):
        got = h.pread(step, off)
        if got != model[off:off + step]:
            k = next(k for k in range(step) if got[k] != model[off + k])
            raise AssertionError("%s: the disk differs from the model at "
                                 "byte %d (got %d, want %d)" % (
                                     what, off + k, got[k], model[off + k]))
    return h


def diag(msg):
    print("# " + msg, flush=True)


SANITIZER_REPORTS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                     "WARNING: ThreadSanitizer", "runtime error:")


def body(srv):
    t_pair = time.monotonic()
    tag = "%s+%s" % (srv.server, srv.backend)
    pair_seed = 1 if srv.server == "minnbd" else 2
    prng = random.Random(pair_seed)
    pool = [prng.randbytes(BLOCK) for _ in range(POOL)]
    model = bytearray(SIZE)
    counts = [dict() for _ in range(CLIENTS)]
    diag("%s: %d clients x %d ops x %d rounds, depth %d%s" % (
        tag, CLIENTS, OPS, ROUNDS, DEPTH,
        "" if JUDGE_RSS else " (valgrind/sanitizer: memory not judged)"))

    def soak_round(r, ops, what):
        tr = time.monotonic()
        errors = []
        clients = [Client(srv, i, 1000 * pair_seed + 100 * r + i, model,
                          pool, counts[i]) for i in range(CLIENTS)]
        threads = [threading.Thread(target=c.run, args=(ops, errors))
                   for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, "%s:\n%s" % (what, "\n".join(errors))
        verify(srv, model, "after " + what).shutdown()
        assert srv.proc.poll() is None, "server died"
        return time.monotonic() - tr

    # A first connection: the server is up and past its handshake.
    h = srv.connect()
    h.shutdown()
    del h
    rss_start, _ = quiescent(srv)
    rss_rounds = []
    hwm_rounds = []
    t0 = time.monotonic()
    for r in range(ROUNDS):
        took = soak_round(r, OPS, "round %d" % (r + 1))
        rss, hwm = quiescent(srv)
        rss_rounds.append(rss)
        hwm_rounds.append(hwm)
        diag("%s: round %d: %.1f s, server VmRSS %d KiB (peak %d KiB)" % (
            tag, r + 1, took, rss, hwm))
    soak_time = time.monotonic() - t0

    limit = max(MEM_SLACK // KiB, int(hwm_rounds[0] * MEM_FRACTION))
    diag("%s: VmRSS at rest: start %d KiB, after round 1 %d KiB, after "
         "round %d %d KiB (%+d KiB)" % (
             tag, rss_start, rss_rounds[0], ROUNDS, rss_rounds[-1],
             rss_rounds[-1] - rss_rounds[0]))
    diag("%s: VmHWM (peak): after round 1 %d KiB, after round %d %d KiB "
         "(%+d KiB); limit %d KiB%s" % (
             tag, hwm_rounds[0], ROUNDS, hwm_rounds[-1],
             hwm_rounds[-1] - hwm_rounds[0], limit,
             "" if JUDGE_RSS else ", not judged"))
    if JUDGE_RSS:
        assert hwm_rounds[-1] - hwm_rounds[0] < limit, \
            "the server's peak memory grew by %d KiB after round 1 " \
            "(limit %d KiB): VmHWM %r" % (
                hwm_rounds[-1] - hwm_rounds[0], limit, hwm_rounds)

    # Flush, then a clean restart: the server that took the soak exits
    # normally, so its exit status counts (LeakSanitizer, TSan, valgrind
    # judge at exit).  (nbdkit's own exit status is not ours, as in
    # nbdtest.run.)
    h = srv.connect()
    h.flush()
    h.shutdown()
    del h
    rc = srv.stop()
    assert rc == 0 or srv.server == "nbdkit", \
        "the server exited with status %s after the soak" % rc
    srv.start()
    verify(srv, model, "a flush and a clean restart").shutdown()

    # A short last round on the reopened store, a flush, kill -9: what
    # was flushed survives.
    soak_round(ROUNDS, max(1, OPS // 4), "the round after the restart")
    h = srv.connect()
    h.flush()
    h.shutdown()
    del h
    srv.kill9()
    srv.start()
    verify(srv, model, "a flush, kill -9 and a restart").shutdown()

    total = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    ops = sum(total.get(k, 0) for k in KINDS if k != "zero_piece")
    diag("%s: %d operations (%.1f s for the %d judged rounds): %s" % (
        tag, ops, soak_time, ROUNDS, " ".join(
            "%s=%d" % (k, total[k]) for k in KINDS + ["fua"]
            if k in total)))
    if srv.server == "nbdkit" and not ABANDON_READS_NBDKIT:
        diag("%s: aborts close with nothing in flight (nbdkit 1.32's "
             "raw_send_socket assertion, see ABANDON_READS_NBDKIT)" % tag)
    diag("%s: %d connections (%d abandoned reads), %.1f MiB written, "
         "packs %.1f MiB" % (
             tag, total.get("connect", 0), total.get("abandoned_reads", 0),
             total.get("bytes_written", 0) / MiB,
             pack_bytes(os.path.join(srv.workdir, "store")) / MiB))
    # Sanitizer reports of a server killed or still running have no exit
    # status to show in: look for them in its log.
    log = srv.log()
    found = [m for m in SANITIZER_REPORTS if m in log]
    assert not found, "sanitizer reports in the server log: %s" % found
    diag("%s: %.1f s in all" % (tag, time.monotonic() - t_pair))


nbdtest.run("soak: many clients, mixed requests, model-checked, flat memory",
            body, backends=["cas"], size=SIZE)
