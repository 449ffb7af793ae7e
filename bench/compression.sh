#!/bin/bash
# nbdcas compression settings on a compressible corpus (issue 15): for each
# setting, a fresh cas store on tmpfs served by minnbd, the corpus written
# with nbdcopy (--flush), read back with nbdcopy to null:, and the bytes
# stored (nbdcas stat).  Throughput is of this machine at this moment:
# compare rows of one run only, and read the load printed with them.
#
#   bench/compression.sh [-B BUILDDIR] [-c CORPUS] [-d DIR] [-r REPEATS]
#                        [-f FIO_SECONDS] [-s "off lz4 zstd:1 zstd:3"]
#                        [-F "2 4"]
#
#   -c  the corpus (default: DIR/corpus.tar, made once from
#       /usr/share/doc, /usr/share/man and /usr/bin: text, compressed
#       files and binaries, cut to a multiple of 1 MiB)
#   -d  work directory on tmpfs (default /dev/shm/nbdcas-compression)
#   -r  runs per setting, interleaved (default 1): one line each
#   -f  also fio 4 KiB random reads (ioengine=nbd, QD32) of the written
#       corpus for this many seconds: a partial read of a compressed
#       block decompresses all of it (default 0: none)
#   -F  store format versions to run each setting on (format=N when the
#       store is created), interleaved with the settings; default: the
#       default format only.  A setting may also carry its own format
#       ("lz4/4"): -F "2 4" -s "off lz4 zstd:1/4" runs format 2 and 4 with
#       off and lz4, and zstd:1 on format 4 only.
#
# Needs: nbdcopy, nbdinfo (libnbd-bin), tar; fio for -f.  Processes started here are
# ended by pid.
set -eu
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
B=
CORPUS=
DIR=/dev/shm/nbdcas-compression
REPEATS=1
SETTINGS="off lz4 zstd:1 zstd:3"
FIO_SECS=0
FORMATS=
while getopts B:c:d:f:r:s:F:h opt; do
  case $opt in
    B) B=$OPTARG ;; c) CORPUS=$OPTARG ;; d) DIR=$OPTARG ;;
    f) FIO_SECS=$OPTARG ;; r) REPEATS=$OPTARG ;; s) SETTINGS=$OPTARG ;;
    F) FORMATS=$OPTARG ;;
    *) sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//; /^set -eu/d'; exit 2 ;;
  esac
done
if [ -z "$B" ]; then
  for d in "$PWD" "$here/.."; do
    [ -x "$d/minnbd" ] && [ -x "$d/plugins/cas/nbdcas" ] && { B=$(cd "$d" && pwd); break; }
  done
fi
[ -n "$B" ] || { echo "compression.sh: no build tree; give -B BUILDDIR" >&2; exit 2; }
mkdir -p "$DIR"
if [ -z "$CORPUS" ]; then
  CORPUS=$DIR/corpus.tar
  if [ ! -s "$CORPUS" ]; then
    tar -cf "$CORPUS" /usr/share/doc /usr/share/man /usr/bin 2>/dev/null || true
    truncate -s $(( $(stat -c %s "$CORPUS") / 1048576 * 1048576 )) "$CORPUS"
  fi
fi
SIZE=$(stat -c %s "$CORPUS")
SOCK=$DIR/nbd.sock
URI="nbd+unix:///?socket=$SOCK"
PID=

stop() {
  [ -n "$PID" ] || return 0
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=
}
trap stop EXIT

now() { date +%s.%N; }
# CPU seconds (user + system) the server has used so far: robust where
# MB/s are not, on a shared machine.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$PID/stat"; }

# fio 4 KiB random read IOPS at QD32 over the whole corpus, or "-".
rr4k() {
  [ "$FIO_SECS" -gt 0 ] || { echo -; return; }
  fio --name=j --ioengine=nbd --uri="$URI" --rw=randread --bs=4k \
      --iodepth=32 --runtime="$FIO_SECS" --time_based --size="$SIZE" \
      --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
    /usr/bin/python3 -c '
import json, sys
print(int(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))' 2>/dev/null ||
    echo FAIL
}

# One run of one setting ("CODEC" or "CODEC/FORMAT"): "write_MBs
# read_MBs stored_bytes data_stored ratio write_cpu_s read_cpu_s rr4k_iops"
run() {
  local c=${1%/*} fmt= t0 t1 t2 c0 c1 c2 rr
  case $1 in */*) fmt="format=${1##*/}" ;; esac
  rm -rf "$DIR/store" "$SOCK"
  "$B/minnbd" -f -U "$SOCK" cas store="$DIR/store" size="$SIZE" compression="$c" $fmt &
  PID=$!
  for i in $(seq 200); do
    nbdinfo --size "$URI" >/dev/null 2>&1 && break
    sleep 0.05
  done
  c0=$(cpu); t0=$(now)
  nbdcopy --flush "$CORPUS" "$URI"
  t1=$(now); c1=$(cpu)
  nbdcopy "$URI" null:
  t2=$(now); c2=$(cpu)
  rr=$(rr4k)
  stop
  "$B/plugins/cas/nbdcas" stat "$DIR/store" --json | /usr/bin/python3 -c '
import json, sys
s = json.load(sys.stdin)
size, t0, t1, t2, c0, c1, c2 = int(sys.argv[1]), *map(float, sys.argv[2:8])
print("%.0f %.0f %d %d %s %.2f %.2f" % (
      size / (t1 - t0) / 1e6, size / (t2 - t1) / 1e6, s["stored_bytes"],
      s["data_stored_bytes"], s["compression_ratio"], c1 - c0, c2 - c1),
      sys.argv[8])
' "$SIZE" "$t0" "$t1" "$t2" "$c0" "$c1" "$c2" "$rr"
}

# The runs: each setting on each format of -F (a setting with its own
# format as is), in this order every repeat.
RUNS=()
for c in $SETTINGS; do
  case $c in
    */*) RUNS+=("$c") ;;
    *) if [ -z "$FORMATS" ]; then RUNS+=("$c")
       else for f in $FORMATS; do RUNS+=("$c/$f"); done; fi ;;
  esac
done
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
declare -A RES
for r in $(seq "$REPEATS"); do
  for c in "${RUNS[@]}"; do
    RES[$c]+="$(run "$c")"$'\n'
  done
done
echo "corpus: $CORPUS ($SIZE bytes); load average at start $LOAD0, at end $(cut -d" " -f1-3 /proc/loadavg)"
echo "CPU s: the server's user+system seconds for the whole write / read"
[ -z "$FORMATS" ] || echo "setting/N: on a store of format version N"
printf '%-10s %10s %10s %14s %8s %10s %10s %10s\n' setting "write MB/s" \
  "read MB/s" "stored bytes" ratio "write CPU" "read CPU" "rr4k IOPS"
for c in "${RUNS[@]}"; do
  printf '%s' "${RES[$c]}" | while read -r w rd s ds ratio cw cr rr; do
    printf '%-10s %10s %10s %14s %8s %10s %10s %10s\n' "$c" "$w" "$rd" "$s" \
      "$ratio" "$cw" "$cr" "$rr"
  done
done
rm -rf "$DIR/store" "$SOCK"
