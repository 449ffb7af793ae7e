#!/bin/bash
# RADOS benchmarks (issue 14), on a throwaway one-mon one-OSD memstore
# cluster started here (tests/cephcluster.py), client and OSD on this
# machine:
#
#   bench/rados.sh [-B BUILDDIR] [-r REPEATS] [-m layouts|stores|cas|all]
#                  [-d PACK_DIR] [-s SIZE_MB] [-t FIO_SECONDS]
#
#   layouts  bench/rados-layouts: one object per chunk (A) against chunks
#            packed into 4 MiB objects with an omap index (B); unique put,
#            duplicate put, get; 64 KiB and 4 KiB chunks; 32 in flight.
#   stores   tests/chunkstore-driver through the chunk store interface:
#            the RADOS store (plugins/cas/chunkstore-rados.c) against the
#            local pack store in PACK_DIR (default /dev/shm) and in /tmp;
#            unique put (+ sync), duplicate put from a second process
#            (another client: EEXIST / index lookups), duplicate put in
#            the same process (the known-names cache / index), get with
#            32 threads; 64 KiB and 4 KiB chunks.  The driver generates
#            and hashes every chunk (SHA-256) in its own threads: that
#            cost is in every figure.
#   cas      the whole cas store over NBD: bench/run.sh -m cas with the
#            store in the pool (@rados rows: store=rados:bench/NS) against
#            the store on tmpfs (@shm), minnbd and nbdkit: unique,
#            duplicate and zero writes, sequential read (nbdcopy), 4 KiB
#            random read and write at QD32 (fio); SIZE_MB (default 256)
#            per run, FIO_SECONDS (default 5) per fio job; each @rados
#            measurement on a cluster of its own.  Not in "all".
#
# With -r N each figure is the median of N runs.  The load average is
# printed before and after: the machine may be shared.
# Needs the ceph packages (ceph-mon ceph-osd ceph-common) and a build
# configured with librados (--with-rados).
set -u
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
B=
REPEATS=1
MODE=all
PACK_DIR=/dev/shm
SIZE_MB=256
FIO_SECS=5
while getopts B:r:m:d:s:t:h opt; do
  case $opt in
    B) B=$OPTARG ;; r) REPEATS=$OPTARG ;; m) MODE=$OPTARG ;;
    d) PACK_DIR=$OPTARG ;; s) SIZE_MB=$OPTARG ;; t) FIO_SECS=$OPTARG ;;
    h) sed -n '2,/^set -u/p' "$0" | sed 's/^# \{0,1\}//; /^set -u/d'; exit 0 ;;
    *) exit 2 ;;
  esac
done
[ -n "$B" ] || B=$(cd "$here/.." && pwd)
LAYOUTS=$B/bench/rados-layouts
DRIVER=$B/tests/chunkstore-driver
for p in "$LAYOUTS" "$DRIVER"; do
  [ -x "$p" ] || { echo "rados.sh: $p not built (configure --with-rados, make)" >&2; exit 1; }
done

median () { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# cas: each @rados measurement on a cluster of its own.  One cluster for
# several would not do: the memstore OSD's space accounting goes wrong
# after a few GB written and removed ("full status failsafe engaged", and
# every write then times out), which is the test OSD's problem, not the
# store's.  Rows interleaved round-robin; medians of REPEATS.
if [ "$MODE" = cas ]; then
  rows="minnbd+cas@shm minnbd+cas@rados nbdkit+cas@shm nbdkit+cas@rados"
  raw=$(mktemp)
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "ceph: $(ceph-osd --version | cut -d' ' -f1-3), $(nproc) CPUs"
  echo
  for r in $(seq "$REPEATS"); do
    for row in $rows; do
      echo "rados.sh: [$r/$REPEATS] $row" >&2
      args=(-B "$B" -m cas -s "$SIZE_MB" -t "$FIO_SECS" -r 1 -S "$row" -o "$raw.one")
      case $row in
        *@rados)
          /usr/bin/python3 "$here/../tests/cephcluster.py" -m 4096 -p bench -- \
            env RADOS_BENCH_POOL=bench "$here/run.sh" "${args[@]}" >/dev/null ;;
        *) "$here/run.sh" "${args[@]}" >/dev/null ;;
      esac
      cat "$raw.one.raw" >> "$raw"
    done
  done
  [ -s "$raw.one" ] && sed -n '/^Date/,/^Load average at start/p' "$raw.one" |
    grep -v '^Command\|^Load' | sed "s/median of 1/median of $REPEATS/"
  echo "Command: bench/rados.sh -m cas -r $REPEATS -s $SIZE_MB -t $FIO_SECS"
  echo
  # run.sh's cas columns; its raw lines are "cas REP ROW busy=N" and then
  # the columns in this order.
  cols="uniqW_MB/s dupW_MB/s seqR_MB/s rr4k_qd32 rw4k_qd32 rw4k_fs32 rw4k_qd1 p999_us zeroW_MB/s RSS_MiB idxB/chunk"
  printf '| server+backend@medium |'; for c in $cols; do printf ' %s |' "$c"; done; echo
  printf '|---|'; for c in $cols; do printf -- '---:|'; done; echo
  for row in $rows; do
    printf '| %s |' "$row"
    for i in $(seq "$(echo $cols | wc -w)"); do
      printf ' %s |' "$(awk -v r="$row" -v i=$((i + 4)) '$3 == r {print $i}' "$raw" | median)"
    done
    echo
  done
  echo
  echo "(every measurement: $raw)"
  rm -f "$raw.one" "$raw.one.raw"
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
  exit 0
fi

# Run ourselves inside a cluster: cephcluster.py starts it, runs this
# script again with CEPH_CONF set, and stops it.
if [ -z "${RADOS_BENCH_INNER:-}" ]; then
  RADOS_BENCH_INNER=1 exec /usr/bin/python3 "$here/../tests/cephcluster.py" \
    -m 4096 -p bench -- "$0" "$@"
fi

# A fresh pool before each measurement: the memstore OSD keeps every
# object in RAM, and a full OSD is a slower one.
fresh_pool () {
  ceph osd pool rm bench bench --yes-i-really-really-mean-it >/dev/null 2>&1
  ceph osd pool create bench 8 >/dev/null 2>&1 &&
    ceph osd pool application enable bench nbdcas >/dev/null 2>&1 &&
    echo ready | rados -p bench put ready-probe - ||
    { echo "rados.sh: cannot recreate pool bench" >&2; exit 1; }
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ceph: $(ceph-osd --version | cut -d' ' -f1-3), $(nproc) CPUs"

if [ "$MODE" = layouts ] || [ "$MODE" = all ]; then
  echo
  echo "## layouts (MB/s, median of $REPEATS; $LAYOUTS, 32 in flight)"
  echo
  tmp=$(mktemp)
  for r in $(seq "$REPEATS"); do
    fresh_pool
    "$LAYOUTS" -c "$CEPH_CONF" -p bench -s 65536 -N 4096 -q 32
    fresh_pool
    "$LAYOUTS" -c "$CEPH_CONF" -p bench -s 4096 -N 16384 -q 32
  done > "$tmp"
  printf '| layout | chunk | operation | MB/s | ops/s |\n'
  printf '|---|---:|---|---:|---:|\n'
  cut -f1-3 "$tmp" | awk '!seen[$0]++' | while IFS=$'\t' read -r lay size op; do
      sel () { awk -F'\t' -v l="$lay" -v s="$size" -v o="$op" -v c="$1" \
                 '$1 == l && $2 == s && $3 == o {print $c}' "$tmp" | median; }
      printf '| %s | %s | %s | %s | %s |\n' "$lay" "$size" "$op" "$(sel 4)" "$(sel 5)"
    done
  rm -f "$tmp"
fi

# One chunkstore-driver session: $1 = store args, stdin = commands;
# prints the seconds= of each answer, one per line ("fail" for errors).
session () {
  "$DRIVER" -t 60 "$@" 2>/dev/null | awk '
    /^ok open/ {next}
    /^ok/ {for (i=2; i<=NF; i++) if ($i ~ /^seconds=/) {sub("seconds=", "", $i); print $i}; next}
    {print "fail"}'
}

if [ "$MODE" = stores ] || [ "$MODE" = all ]; then
  echo
  echo "## chunk stores (MB/s, median of $REPEATS; $DRIVER)"
  echo
  printf '| store | chunk | unique put+sync | duplicate put (2nd process) | duplicate put (same process) | get (32 threads) |\n'
  printf '|---|---:|---:|---:|---:|---:|\n'
  run=0
  for size in 65536 4096; do
    if [ "$size" = 65536 ]; then n=4096; else n=16384; fi
    mb=$(echo "$n * $size / 1000000" | bc -l)
    for store in rados shm disk; do
      [ "$store" = disk ] && [ "$PACK_DIR" = /tmp ] && continue
      u=; d=; c=; g=
      for r in $(seq "$REPEATS"); do
        run=$((run + 1))
        case $store in
          rados) fresh_pool; args=(bench/run$run) ;;
          shm) dir=$PACK_DIR/nbdcas-bench.$$; rm -rf "$dir"; args=(-P "$dir") ;;
          disk) dir=/tmp/nbdcas-bench.$$; rm -rf "$dir"; args=(-P "$dir") ;;
        esac
        one="seed=$run n=$n len=$size"
        # unique put + sync, then the same again (cache / index)
        mapfile -t t1 < <(printf 'put %s threads=2\nsync\nput %s threads=2\n' "$one" "$one" | session "${args[@]}")
        # a second process: another client, nothing cached
        mapfile -t t2 < <(printf 'put %s threads=2\nsync\nget %s threads=32\n' "$one" "$one" | session "${args[@]}")
        [ "$store" = rados ] || rm -rf "$dir"
        u+="$(echo "$mb / (${t1[0]} + ${t1[1]})" | bc -l)"$'\n'
        c+="$(echo "$mb / ${t1[2]}" | bc -l)"$'\n'
        d+="$(echo "$mb / (${t2[0]} + ${t2[1]})" | bc -l)"$'\n'
        g+="$(echo "$mb / ${t2[2]}" | bc -l)"$'\n'
      done
      name=$store
      [ "$store" = shm ] && name="pack ($PACK_DIR)"
      [ "$store" = disk ] && name="pack (/tmp)"
      printf '| %s | %s | %.0f | %.0f | %.0f | %.0f |\n' "$name" "$size" \
        "$(printf '%s' "$u" | median)" "$(printf '%s' "$d" | median)" \
        "$(printf '%s' "$c" | median)" "$(printf '%s' "$g" | median)"
    done
  done
fi
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
