#!/usr/bin/python3
# nbdcas history and garbage collection benchmarks (issues 11 and 12),
# on a store in tmpfs served by minnbd over a Unix socket:
#
#   snapshot/diff  a 1 TiB volume; 1 GiB written (contiguous, then in
#                  scattered 64 KiB blocks), a snapshot before and after;
#                  the time of each snapshot, of diff between them (and
#                  the map nodes it read), of diff against the live volume
#   gc             a 4 GiB store, half of it garbage (2 GiB written, then
#                  overwritten); nbdcas gc's time, GiB scanned and copied
#                  per second
#   gc impact      client throughput (unique sequential write, 4 KiB
#                  random write at QD32 with fio) with gc=auto collecting
#                  beside it, against gc=off, in one run, rounds
#                  interleaved
#
#   bench/history-gc.py [-B BUILDDIR] [-d TMPFS_DIR] [-r ROUNDS] [-o FILE]
#                       [-s history,gc,impact]
#
# Needs python3-libnbd, fio, nbdcopy.  Run it with /usr/bin/python3.
# Processes started here are ended by pid; the store is removed at the end.

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import nbd

GiB = 1 << 30
MiB = 1 << 20
BS = 64 * 1024

ap = argparse.ArgumentParser()
ap.add_argument("-B", default=os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ap.add_argument("-d", default="/dev/shm")
ap.add_argument("-r", type=int, default=3)
ap.add_argument("-o")
ap.add_argument("-s", default="history,gc,impact",
                help="sections to run, comma-separated")
args = ap.parse_args()
MINNBD = os.path.join(args.B, "common/server/minnbd")
NBDCAS = os.path.join(args.B, "plugins/cas/nbdcas")
out_lines = []


def say(s=""):
    print(s, flush=True)
    out_lines.append(s)


def nbdcas(*a):
    """Run the tool: (seconds, CompletedProcess), p.maxrss_kib its peak RSS."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, \
            tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([NBDCAS] + [str(x) for x in a],
                                stdout=out, stderr=err, text=True)
        _, status, ru = os.wait4(proc.pid, 0)   # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        p = subprocess.CompletedProcess(proc.args, proc.returncode,
                                        out.read(), err.read())
    if p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, p.args, p.stdout,
                                            p.stderr)
    p.maxrss_kib = ru.ru_maxrss
    return time.monotonic() - t0, p


class Server:
    def __init__(self, store, params):
        self.dir = tempfile.mkdtemp(dir=args.d)
        self.sock = os.path.join(self.dir, "sock")
        self.pidfile = os.path.join(self.dir, "pid")
        subprocess.run([MINNBD, "-U", self.sock, "-P", self.pidfile, "cas",
                        "store=" + store] + params, check=True)
        with open(self.pidfile) as f:
            self.pid = int(f.read())

    def uri(self, export=""):
        return "nbd+unix:///%s?socket=%s" % (export, self.sock)

    def connect(self):
        h = nbd.NBD()
        h.connect_uri(self.uri())
        return h

    def stop(self):
        os.kill(self.pid, signal.SIGTERM)
        while os.path.exists("/proc/%d" % self.pid):
            time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)


def write_blocks(h, offsets, rnd):
    data = rnd.randbytes(BS * 64)
    for i, off in enumerate(offsets):
        k = (i * 997) % 64
        h.pwrite(data[k * BS:(k + 1) * BS][:BS - 8] +
                 i.to_bytes(8, "little"), off)
    h.flush()


def history():
    say("## Snapshots and diff: a 1 TiB volume, 1 GiB written")
    say()
    store = tempfile.mkdtemp(dir=args.d) + "/store"
    srv = Server(store, ["size=1T", "gc=off"])
    rnd = random.Random(1)
    rows = []
    try:
        h = srv.connect()
        for kind in ("contiguous", "scattered"):
            n = GiB // BS
            if kind == "contiguous":
                base = rnd.randrange(0, (1 << 40) - GiB) // BS * BS
                offs = [base + i * BS for i in range(n)]
            else:
                offs = sorted(rnd.sample(range(0, (1 << 40) // BS), n))
                offs = [o * BS for o in offs]
            t_s1, _ = nbdcas("snapshot", store, "default", kind + "-before")
            write_blocks(h, offs, rnd)
            t_s2, _ = nbdcas("snapshot", store, "default", kind + "-after")
            t_d, p = nbdcas("-v", "diff", store, "default@%s-before" % kind,
                            "default@%s-after" % kind)
            nodes = p.stderr.split("map nodes read")[0].split()[-1]
            ranges = len(p.stdout.splitlines())
            # 1024 more blocks, then diff against the volume as it is.
            write_blocks(h, offs[:1024], rnd)
            t_dl, _ = nbdcas("diff", store, "default@%s-after" % kind,
                             "default")
            rows.append((kind, t_s1, t_s2, t_d, nodes, ranges, t_dl))
        h.shutdown()
    finally:
        srv.stop()
        shutil.rmtree(os.path.dirname(store), ignore_errors=True)
    say("| 1 GiB written | snapshot before | snapshot after | diff (s) | "
        "map nodes read | ranges | diff vs live (s) |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        say("| %s | %.3f s | %.3f s | %.3f | %s | %d | %.3f |" % r)
    say()
    say("The snapshot's time is the nbdcas command's whole run (the "
        "server flushes the volume, then writes one root file): it does not "
        "grow with the volume's size.")
    say()


def gc_throughput():
    say("## Garbage collection: a 4 GiB store, half garbage")
    say()
    say("A 2 GiB volume written whole, then every other 4 MiB of it "
        "written twice: 4 GiB stored, 2 GiB live; the first 2 GiB of "
        "packs are half live (rewritten), the next 1 GiB dead (removed).")
    say()
    store = tempfile.mkdtemp(dir=args.d) + "/store"
    srv = Server(store, ["size=2G", "gc=off"])
    try:
        h = srv.connect()
        rnd = random.Random(2)
        for off in range(0, 2 * GiB, 4 * MiB):
            h.pwrite(rnd.randbytes(4 * MiB), off)
        h.flush()
        for _ in range(2):
            for off in range(4 * MiB, 2 * GiB, 8 * MiB):
                h.pwrite(rnd.randbytes(4 * MiB), off)
            h.flush()
        h.shutdown()
    finally:
        srv.stop()
    t, p = nbdcas("gc", store, "--json")
    g = json.loads(p.stdout)
    say("| scanned | copied | removed packs | rewritten | "
        "time | scanned GiB/s | copied GiB/s | peak RSS |")
    say("|---:|---:|---:|---:|---:|---:|---:|---:|")
    say("| %.2f GiB | %.2f GiB | %d | %d | %.2f s | %.2f | %.2f | %.1f MiB |"
        % (g["bytes_scanned"] / GiB,
           g["bytes_copied"] / GiB, g["packs_deleted"], g["packs_rewritten"],
           g["seconds"], g["bytes_scanned"] / GiB / g["seconds"],
           g["bytes_copied"] / GiB / g["seconds"], p.maxrss_kib / 1024))
    say()
    shutil.rmtree(os.path.dirname(store), ignore_errors=True)


def client_round(gc_mode):
    """Unique write MB/s and rw4k QD32 IOPS on a fresh 2 GiB volume
    holding 1 GiB of garbage to collect."""
    store = tempfile.mkdtemp(dir=args.d) + "/store"
    srv = Server(store, ["size=2G", "gc=" + gc_mode, "gc-min=64M"])
    try:
        h = srv.connect()
        rnd = random.Random(3)
        for _ in range(2):
            for off in range(0, GiB, 4 * MiB):
                h.pwrite(rnd.randbytes(4 * MiB), off)
            h.flush()
        h.shutdown()
        src = os.path.join(srv.dir, "src.img")
        with open(src, "wb") as f:
            for _ in range(GiB // (64 * MiB)):
                f.write(rnd.randbytes(64 * MiB))
        t0 = time.monotonic()
        subprocess.run(["nbdcopy", "--flush", src, srv.uri()], check=True)
        seq = GiB / (time.monotonic() - t0) / 1e6
        os.unlink(src)
        p = subprocess.run(["fio", "--name=rw", "--ioengine=nbd",
                            "--uri=" + srv.uri(), "--rw=randwrite",
                            "--bs=4k", "--iodepth=32", "--time_based",
                            "--runtime=5", "--refill_buffers",
                            "--output-format=json"],
                           capture_output=True, text=True, check=True)
        # fio may print notes before its JSON
        iops = json.loads(p.stdout[p.stdout.index("{"):])["jobs"][0][
            "write"]["iops"]
        # The store's size at the end says whether gc=auto collected
        # while the clients ran (with gc=off nothing is ever removed).
        size = sum(os.path.getsize(os.path.join(d, f))
                   for d, _, fs in os.walk(store) for f in fs)
    finally:
        srv.stop()
        shutil.rmtree(os.path.dirname(store), ignore_errors=True)
    return seq, iops, size


def gc_impact():
    say("## Clients while gc=auto collects, against gc=off")
    say()
    res = {"off": [], "auto": []}
    for r in range(args.r):
        for mode in (("off", "auto") if r % 2 == 0 else ("auto", "off")):
            res[mode].append(client_round(mode))
    say("| gc | uniqW MB/s (median [min-max]) | rw4k QD32 IOPS | "
        "store at the end |")
    say("|---|---:|---:|---:|")
    for mode in ("off", "auto"):
        s = [x[0] for x in res[mode]]
        i = [x[1] for x in res[mode]]
        z = [x[2] / GiB for x in res[mode]]
        say("| %s | %.0f [%.0f-%.0f] | %.0f [%.0f-%.0f] | %.2f GiB |" % (
            mode, statistics.median(s), min(s), max(s),
            statistics.median(i), min(i), max(i), statistics.median(z)))
    ratio_s = statistics.median([x[0] for x in res["auto"]]) / \
        statistics.median([x[0] for x in res["off"]])
    ratio_i = statistics.median([x[1] for x in res["auto"]]) / \
        statistics.median([x[1] for x in res["off"]])
    say()
    say("Ratio auto/off: uniqW %.2f, rw4k %.2f (target >= 0.8)." % (
        ratio_s, ratio_i))
    say()


say("Load average at start: %s" % open("/proc/loadavg").read().split()[0])
say()
sections = args.s.split(",")
if "history" in sections:
    history()
if "gc" in sections:
    gc_throughput()
if "impact" in sections:
    gc_impact()
say("Load average at the end: %s" % open("/proc/loadavg").read().split()[0])
if args.o:
    with open(args.o, "w") as f:
        f.write("\n".join(out_lines) + "\n")
