#!/usr/bin/python3
# Which lines of our C code each (test script, pair) reaches: the data
# behind the CI subsets (tests/Makefile.am, check-valgrind-ci).  Builds a
# gcov tree from the distributed sources in build-ci/coverage, runs every
# test script once per (server, backend) pair (NBDCAS_PAIRS) through
# `make -C tests check`, and keeps the lines each run reached.  Then it
# prints, per script, the lines no other script reaches, and the lines of
# common/nbdkit-glue.c that only runs on the nbdkit pairs reach.
#
#   .ci/coverage.py [TEST.py ...]        (from the top of a configured tree;
#                                         about 10 minutes of one core)
#
# Results stay in build-ci/coverage/lines/TEST@PAIR (one "file:line" a
# line); a run skips the (test, pair) runs it already has.

import glob
import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict

PAIRS = ["minnbd-flatfile", "minnbd-cas", "nbdkit-flatfile", "nbdkit-cas"]

top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
build = os.path.join(top, "build-ci", "coverage")
src = os.path.join(top, "build-ci", "coverage-src")
out = os.path.join(build, "lines")


def sh(argv, **kw):
    return subprocess.run(argv, check=True, **kw)


def make_tree():
    if os.path.exists(os.path.join(build, "Makefile")):
        return
    mk = open(os.path.join(top, "Makefile")).read()
    name = {k: v for k, _, v in (ln.partition(" = ")
                                 for ln in mk.splitlines())}
    dd = "%s-%s" % (name["PACKAGE"], name["VERSION"])
    shutil.rmtree(src, ignore_errors=True)
    sh(["make", "-C", top, "distdir"], stdout=subprocess.DEVNULL)
    os.rename(os.path.join(top, dd), src)
    os.makedirs(build, exist_ok=True)
    # -O0 trips -Wformat-truncation in places -O2 proves safe.
    sh([os.path.join(src, "configure"),
        "CFLAGS=-g -O0 --coverage -Wno-error=format-truncation",
        "LDFLAGS=--coverage"], cwd=build, stdout=subprocess.DEVNULL)
    sh(["make", "-j2"], cwd=build, stdout=subprocess.DEVNULL)


def gcda_files():
    return [os.path.join(r, f) for r, _, fs in os.walk(build) for f in fs
            if f.endswith(".gcda") and "/fuzz" not in r]


def reached():
    lines = set()
    for g in gcda_files():
        d = os.path.dirname(g)
        p = subprocess.run(["gcov", "-t", "-j", "-o", d, g], cwd=d,
                           capture_output=True, text=True)
        for doc in p.stdout.splitlines():
            if not doc.strip():
                continue
            js = json.loads(doc)
            cwd = js.get("current_working_directory", d)
            for f in js["files"]:
                path = os.path.realpath(os.path.join(cwd, f["file"]))
                if not path.startswith(src + "/") or "/tests/" in path:
                    continue
                rel = path[len(src) + 1:]
                lines.update("%s:%d" % (rel, ln["line_number"])
                             for ln in f["lines"] if ln["count"] > 0)
    return lines


def run_all(tests):
    os.makedirs(out, exist_ok=True)
    for t in tests:
        for pair in PAIRS:
            dst = os.path.join(out, "%s@%s" % (t, pair))
            if os.path.exists(dst):
                continue
            for g in gcda_files():
                os.unlink(g)
            subprocess.run(["make", "-C", "tests", "check", "TESTS=" + t,
                            "NBDCAS_PAIRS=" + pair], cwd=build,
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            log = open(os.path.join(build, "tests", t[:-3] + ".log"),
                       errors="replace").read()
            ran = any(ln.startswith(("ok ", "not ok "))
                      and "# SKIP" not in ln for ln in log.splitlines())
            lines = reached() if ran else set()
            with open(dst + ".new", "w") as f:
                f.write("".join(ln + "\n" for ln in sorted(lines)))
            os.rename(dst + ".new", dst)
            print("%-36s %-16s %5d lines" % (t, pair, len(lines)),
                  flush=True)


def report():
    items = {}
    for p in glob.glob(os.path.join(out, "*@*")):
        t, _, pair = os.path.basename(p).partition("@")
        items[(t, pair)] = set(open(p).read().split())
    by_test = defaultdict(set)
    for (t, _), s in items.items():
        by_test[t] |= s
    print("\nLines only one script reaches (any pair):")
    for t in sorted(by_test):
        others = set().union(*(s for u, s in by_test.items() if u != t))
        only = by_test[t] - others
        if only:
            c = Counter(ln.split(":")[0] for ln in only)
            print("  %-36s %4d  %s" % (t, len(only), ", ".join(
                "%s %d" % kv for kv in c.most_common(4))))
    minnbd = set().union(*(s for (t, p), s in items.items()
                           if p.startswith("minnbd")))
    print("\nnbdkit-glue.c lines reached only on the nbdkit pairs, and by:")
    glue = {ln for s in items.values() for ln in s
            if ln.startswith("common/nbdkit-glue.c:")} - minnbd
    for (t, p), s in sorted(items.items()):
        if s & glue:
            print("  %-36s %-16s %3d of %d" % (t, p, len(s & glue),
                                              len(glue)))


def main():
    os.chdir(top)
    tests = sys.argv[1:] or sorted(
        os.path.basename(p) for p in glob.glob(top + "/tests/test-*.py"))
    make_tree()
    run_all(tests)
    report()


main()
