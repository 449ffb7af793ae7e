#!/bin/bash
# nbdcas space study (issue 15): a corpus of ext4 images made from this
# machine's /usr (no downloads), the space table of real cas stores at
# several block sizes with compression estimated offline and measured in
# real compressed stores (lz4, zstd:1), and the simulation of
# fine-grained dedup designs.  Space figures do not depend
# on the machine's load; nothing here measures throughput.
#
#   bench/space.sh [-B BUILDDIR] [-d WORKDIR] [-m all|table|sim] [-f] [-c]
#                  [-o REPORT.md]
#
#   -B  build tree holding plugins/cas/nbdcas (default: the current
#       directory or the source tree's parent)
#   -d  work directory (default /var/tmp/nbdcas-space): images (~2.3 GB
#       of disk, kept between runs: building them takes ~30 s), chunk
#       lists, stores while they are measured, space.json, sim.json
#   -m  table: the space table only; sim: the design simulation only
#   -f  rebuild the corpus even if WORKDIR holds one
#   -c  remove WORKDIR at the end
#   -o  also write the report (Markdown) to this file
#
# Needs root (the nightly changes go through a loop mount), e2fsprogs
# (mke2fs, fstrim from util-linux), liblz4-1 and libzstd1 (runtime
# libraries, loaded by ctypes: no -dev packages), libssl-dev (the
# chunker's SHA-256) and /usr/bin/python3.  See bench/space/README.md.
set -eu
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
B=
WORK=/var/tmp/nbdcas-space
MODE=all
FORCE=
CLEAN=
REPORT=
PYTHON=${PYTHON:-/usr/bin/python3}
usage() { sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//; /^set -eu/d'; exit "${1:-0}"; }
while getopts B:d:m:fco:h opt; do
  case $opt in
    B) B=$OPTARG ;; d) WORK=$OPTARG ;; m) MODE=$OPTARG ;; f) FORCE=--force ;;
    c) CLEAN=1 ;; o) REPORT=$OPTARG ;; h) usage 0 ;; *) usage 2 >&2 ;;
  esac
done
case $MODE in all|table|sim) ;; *) echo "space.sh: -m must be all, table or sim" >&2; exit 2 ;; esac

if [ -z "$B" ]; then
  for d in "$PWD" "$here/.."; do
    [ -x "$d/plugins/cas/nbdcas" ] && { B=$(cd "$d" && pwd); break; }
  done
fi
[ -n "$B" ] && [ -x "$B/plugins/cas/nbdcas" ] ||
  { echo "space.sh: no build tree (plugins/cas/nbdcas); give -B BUILDDIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "space.sh: needs root (loop mount)" >&2; exit 2; }

chunker=$B/bench/space-chunker
if [ ! -x "$chunker" ] || [ "$chunker" -ot "$here/space/chunker.c" ]; then
  make -C "$B/bench" space-chunker >/dev/null
fi

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$(date +%s)
{
  echo "Space study: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "Machine: $(nproc) CPUs, $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
} >"$out"
"$PYTHON" "$here/space/corpus.py" "$WORK" $FORCE >&2
if [ "$MODE" != sim ]; then
  { echo "### The space table"; echo
    echo "Command: bench/space.sh -m table (part of: make -C bench space)"; echo; } >>"$out"
  "$PYTHON" "$here/space/space.py" "$WORK" --nbdcas "$B/plugins/cas/nbdcas" \
    --chunker "$chunker" >>"$out"
  echo >>"$out"
fi
if [ "$MODE" != table ]; then
  { echo "### Fine-grained dedup: the designs simulated"; echo; } >>"$out"
  "$PYTHON" "$here/space/sim.py" "$WORK" --chunker "$chunker" >>"$out"
fi
echo "Took $(( $(date +%s) - start )) s; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out"
cat "$out"
[ -z "$REPORT" ] || cp "$out" "$REPORT"
if [ -n "$CLEAN" ]; then rm -rf "$WORK"; fi
