#!/usr/bin/python3
# gc=auto soak (issue 12, "done when"): an overwrite-heavy volume served
# for a long time, its store's disk use sampled as it goes.
#
#   bench/gc-soak.py [-B BUILDDIR] [-d DIR] [-m MINUTES] [-R RATE]
#                    [-s SIZE_GIB] [-i SAMPLE_SECONDS] [-o FILE]
#
# minnbd serves a cas store in DIR (default /tmp: disk) with the backend's
# defaults (gc=auto).  The volume is written whole with random data, then
# fio overwrites it at random for MINUTES, 64 KiB and 4 KiB writes mixed
# (fresh random data: nothing deduplicates), a flush every 64 writes,
# capped at RATE (default 20m, fio's syntax: bytes per second).  Every
# SAMPLE_SECONDS the store's disk use (du: allocated blocks) and the
# server's resident memory are printed.  Without collection the store
# would grow by what is written; with it, it should stay flat near the
# volume's size.  At the end the server is stopped and `nbdcas fsck
# --full` must pass.
#
# Needs fio (ioengine=nbd).  Run it with /usr/bin/python3.  The server is
# ended by pid; the store is removed at the end.

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

GiB = 1 << 30

ap = argparse.ArgumentParser()
ap.add_argument("-B", default=os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ap.add_argument("-d", default="/tmp")
ap.add_argument("-m", type=float, default=60)
ap.add_argument("-R", default="20m")
ap.add_argument("-s", type=int, default=1)
ap.add_argument("-i", type=int, default=60)
ap.add_argument("-o")
args = ap.parse_args()
MINNBD = os.path.join(args.B, "common/server/minnbd")
NBDCAS = os.path.join(args.B, "plugins/cas/nbdcas")
out_lines = []


def say(s=""):
    print(s, flush=True)
    out_lines.append(s)


def du(path):
    n = 0
    for d, _, fs in os.walk(path):
        for f in fs:
            try:
                n += os.lstat(os.path.join(d, f)).st_blocks * 512
            except FileNotFoundError:
                pass        # a pack removed by the collector meanwhile
    return n


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fio(uri, *extra):
    return subprocess.Popen(["fio", "--name=soak", "--ioengine=nbd",
                             "--uri=" + uri, "--refill_buffers",
                             "--output-format=json"] + list(extra),
                            stdout=subprocess.PIPE, text=True)


top = tempfile.mkdtemp(dir=args.d, prefix="gc-soak.")
store = os.path.join(top, "store")
sock = os.path.join(top, "sock")
pidfile = os.path.join(top, "pid")
pid = None
rc = 1
try:
    subprocess.run([MINNBD, "-U", sock, "-P", pidfile, "cas",
                    "store=" + store, "size=%dG" % args.s], check=True)
    with open(pidfile) as f:
        pid = int(f.read())
    uri = "nbd+unix:///?socket=" + sock
    say("gc=auto soak: %d GiB volume, store in %s, %g min of random "
        "overwrites at %s/s (bs 64k and 4k, flush every 64), load average "
        "at start %s" % (args.s, args.d, args.m, args.R,
                         open("/proc/loadavg").read().split()[0]))
    say()
    fill = fio(uri, "--rw=write", "--bs=1m", "--iodepth=8", "--end_fsync=1")
    fill.communicate()
    if fill.returncode != 0:
        raise SystemExit("gc-soak: fio: filling the volume failed")
    say("| minutes | written GiB (rate x time) | store du GiB | du / volume | server RSS MiB |")
    say("|---:|---:|---:|---:|---:|")
    t0 = time.monotonic()
    p = fio(uri, "--rw=randwrite", "--bssplit=64k/50:4k/50",
            "--iodepth=8", "--fsync=64", "--rate=" + args.R,
            "--time_based", "--runtime=%d" % int(args.m * 60))
    rate = subprocess.run(["numfmt", "--from=iec", args.R.upper()],
                          capture_output=True, text=True).stdout.strip()
    rate = float(rate) if rate else 0.0
    peak = 0
    out = None
    while out is None:
        try:
            out, _ = p.communicate(timeout=args.i)
        except subprocess.TimeoutExpired:
            pass
        m = (time.monotonic() - t0) / 60
        d = du(store)
        peak = max(peak, d)
        say("| %.1f | %.1f | %.2f | %.2f | %.0f |" % (
            m, rate * m * 60 / GiB, d / GiB, d / (args.s * GiB),
            rss_mib(pid)))
    if p.returncode != 0:
        raise SystemExit("gc-soak: fio failed: %d" % p.returncode)
    written = json.loads(out[out.index("{"):])["jobs"][0]["write"]["io_bytes"]
    say()
    say("Written by fio: %.1f GiB (%.1f times the volume). Peak du %.2f GiB "
        "for a %d GiB volume; load average at the end %s." % (
            written / GiB, written / (args.s * GiB), peak / GiB, args.s,
            open("/proc/loadavg").read().split()[0]))
    os.kill(pid, signal.SIGTERM)
    while os.path.exists("/proc/%d" % pid):
        time.sleep(0.05)
    pid = None
    f = subprocess.run([NBDCAS, "fsck", "--full", store],
                       capture_output=True, text=True)
    say("nbdcas fsck --full: exit %d %s" % (
        f.returncode, (f.stdout + f.stderr).strip().splitlines()[-1:]))
    rc = 0 if f.returncode == 0 else 1
finally:
    if pid:
        os.kill(pid, signal.SIGTERM)
        while os.path.exists("/proc/%d" % pid):
            time.sleep(0.05)
    shutil.rmtree(top, ignore_errors=True)
    if args.o:
        with open(args.o, "w") as f:
            f.write("\n".join(out_lines) + "\n")
sys.exit(rc)
