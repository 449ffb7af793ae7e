#!/bin/bash
# nbdcas benchmark: one command, one run, the same client work against every
# server, each serving one file (or cas store) over a Unix socket.
#
#   bench/run.sh [-B BUILDDIR] [-s SIZE_MB] [-t FIO_SECONDS] [-r REPEATS]
#                [-m peers|cas|tls|all] [-d TMPFS_DIR] [-D DISK_DIR]
#                [-S "row row ..."] [-L BUSY_PERCENT] [-o REPORT.md]
#
# -o also writes every single measurement to REPORT.md.raw.
# Modes (what rows and columns the table has; -m picks one or both):
#   peers  minnbd+flatfile, nbdkit+flatfile (this build's plugin), nbdkit's
#          own file plugin, qemu-nbd and nbd-server, all on tmpfs.  Columns:
#          nbdcopy sequential write and read (MB/s), fio ioengine=nbd 4 KiB
#          random read and write IOPS at queue depth 32 and 1.
#   cas    minnbd/nbdkit with the cas backend, store on tmpfs and on disk,
#          beside minnbd/nbdkit+flatfile on the same media.  Columns: unique
#          random data written sequentially, the same data again
#          (duplicates), sequential read, 4 KiB random read and write at
#          QD32 (fresh random data per write: nothing dedups), the same
#          random writes with a flush every 32 (fio --fsync=32), random
#          writes at QD1 (IOPS and fio's completion latency p99.9 in us),
#          zeros written as data; for cas rows the store's lookup RAM
#          (index, and on format 4 the extent table and hooks) in bytes per
#          64 KiB of unique data stored (nbdcas stat after the row: issue
#          15's bound is 40); plus `openssl speed -evp sha256` (the hash
#          ceiling).  Each fio write job has a seed of its own
#          (--randseed, from the round and the column) and fresh data per
#          write (--refill_buffers): no job rewrites the bytes another one
#          wrote at the same offsets, which format 4 would keep by
#          position.
#   tls    minnbd+flatfile and nbdkit+flatfile over TCP on 127.0.0.1 with
#          TLS (X.509, --tls=require; @tls) and without (@tcp), disk on
#          tmpfs.  Columns: nbdcopy sequential write and read (MB/s).
#          (fio's nbd engine cannot be given the certificates: libnbd
#          refuses a local file in its URI unless the program allows it.)
#          Certificates are made with certtool (gnutls-bin) for the run.
# Every row also reports the server's peak resident memory (VmHWM).
# CAS_PARAMS in the environment is added to every cas server's parameters.
# A cas row can carry its own parameters after a colon, commas between
# them: "minnbd+cas:format=4,compression=lz4@shm" (the store is created
# with them); such a row is also compared with the plain cas row of the
# same server and medium, if that is in the run.
#
# Rows are "server+backend@medium"; -S picks rows by name, e.g.
#   -S "minnbd+flatfile@shm qemu-nbd@shm"
# Medium @rados (cas rows only): store=rados:$RADOS_BENCH_POOL/NAMESPACE
# on the cluster $CEPH_CONF names, a fresh namespace per row, emptied
# after it (bench/rados.sh -m cas starts a cluster and runs these).
# With -r N (default 3) every measurement is taken N times, the rows
# interleaved round-robin, every other round in reverse order (so drift
# and position hit every row alike).  Each cell is the median with the
# spread of the N measurements [min-max]; the ratio tables compare rows
# within each round (cas against flatfile on the same server and medium,
# minnbd against the best peer) and give the median ratio and its spread.
#
# The machine should be quiet: before every row the CPU time used by
# anything else during one second is measured (the bench itself is idle
# then); above -L percent (default 10) a warning is printed and the
# report says how busy the machine was.
#
# Needs: nbdkit qemu-utils nbd-server libnbd-bin fio bc python3 openssl.
# Processes started here are ended by pid; nothing else is touched.
set -u
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
B=
SIZE_MB=1024
FIO_SECS=10
REPEATS=3
MODE=peers
SHM_DIR=/dev/shm
DISK_DIR=/tmp
ROWS=
REPORT=
BUSY_MAX=10
usage() { sed -n '2,/^set -u/p' "$0" | sed 's/^# \{0,1\}//; /^set -u/d'; exit "${1:-0}"; }
while getopts B:s:t:r:m:d:D:S:L:o:h opt; do
  case $opt in
    B) B=$OPTARG ;; s) SIZE_MB=$OPTARG ;; t) FIO_SECS=$OPTARG ;;
    r) REPEATS=$OPTARG ;; m) MODE=$OPTARG ;; d) SHM_DIR=$OPTARG ;;
    D) DISK_DIR=$OPTARG ;; S) ROWS=$OPTARG ;; L) BUSY_MAX=$OPTARG ;;
    o) REPORT=$OPTARG ;;
    h) usage 0 ;; *) usage 2 >&2 ;;
  esac
done

# The build tree: -B, else the current directory or the source tree's
# parent if either holds the built plugin.
if [ -z "$B" ]; then
  for d in "$PWD" "$here/.."; do
    [ -e "$d/flatfile-plugin.so" ] && { B=$(cd "$d" && pwd); break; }
  done
fi
[ -n "$B" ] && [ -e "$B/flatfile-plugin.so" ] ||
  { echo "run.sh: no build tree (flatfile-plugin.so); give -B BUILDDIR" >&2; exit 2; }

case $MODE in
  peers) default_rows="minnbd+flatfile@shm nbdkit+flatfile@shm nbdkit+file@shm qemu-nbd@shm nbd-server@shm" ;;
  cas)   default_rows="minnbd+flatfile@shm nbdkit+flatfile@shm minnbd+cas@shm nbdkit+cas@shm minnbd+flatfile@disk nbdkit+flatfile@disk minnbd+cas@disk nbdkit+cas@disk" ;;
  tls)   default_rows="minnbd+flatfile@tls nbdkit+flatfile@tls minnbd+flatfile@tcp nbdkit+flatfile@tcp" ;;
  all)   default_rows="minnbd+flatfile@shm nbdkit+flatfile@shm nbdkit+file@shm qemu-nbd@shm nbd-server@shm minnbd+cas@shm nbdkit+cas@shm minnbd+flatfile@disk nbdkit+flatfile@disk minnbd+cas@disk nbdkit+cas@disk" ;;
  *) echo "run.sh: -m must be peers, cas, tls or all" >&2; exit 2 ;;
esac
ROWS=${ROWS:-$default_rows}

for t in nbdkit qemu-nbd nbd-server nbdcopy nbdinfo fio bc python3; do
  command -v $t >/dev/null || PATH=$PATH:/usr/sbin:/sbin
  command -v $t >/dev/null ||
    { echo "run.sh: $t not found (apt-get install nbdkit qemu-utils nbd-server libnbd-bin fio bc)" >&2; exit 2; }
done

W_SHM=$(mktemp -d "$SHM_DIR/nbdbench.XXXXXX") || exit 1
W_DISK=
case " $ROWS " in *@disk*) W_DISK=$(mktemp -d "$DISK_DIR/nbdbench.XXXXXX") || exit 1 ;; esac
SOCK=$W_SHM/s.sock
PID=
RAW=${REPORT:+$REPORT.raw}
RAW=${RAW:-$W_SHM/raw}
cleanup() {
  stop_server
  rm -rf "$W_SHM" ${W_DISK:+"$W_DISK"}
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# TLS rows: a CA and a server certificate for 127.0.0.1, made for this run.
TLS_DIR=$W_SHM/tls
case " $ROWS " in
  *@tls*)
    command -v certtool >/dev/null ||
      { echo "run.sh: certtool not found (apt-get install gnutls-bin)" >&2; exit 2; }
    mkdir -p "$TLS_DIR"
    ( cd "$TLS_DIR" &&
      certtool --generate-privkey --outfile ca-key.pem &&
      printf 'cn = bench CA\nca\ncert_signing_key\nexpiration_days = 2\n' > ca.info &&
      certtool --generate-self-signed --load-privkey ca-key.pem \
        --template ca.info --outfile ca-cert.pem &&
      certtool --generate-privkey --outfile server-key.pem &&
      chmod 600 server-key.pem &&
      printf 'cn = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' > server.info &&
      certtool --generate-certificate --load-ca-certificate ca-cert.pem \
        --load-ca-privkey ca-key.pem --load-privkey server-key.pem \
        --template server.info --outfile server-cert.pem ) >/dev/null 2>&1 ||
      { echo "run.sh: cannot make the TLS certificates" >&2; exit 2; } ;;
esac
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Source data lives on tmpfs for every row, so reading it costs the same.
dd if=/dev/urandom of="$W_SHM/src.img" bs=1M count="$SIZE_MB" status=none
truncate -s "${SIZE_MB}M" "$W_SHM/zero.img"

dir_of() { case $1 in *@disk) echo "$W_DISK" ;; *) echo "$W_SHM" ;; esac; }
# "minnbd+cas:format=4,compression=lz4@shm": the server+backend
# (minnbd+cas) and the row's own cas parameters (format=4 compression=lz4).
row_server() { local s=${1%@*}; echo "${s%%:*}"; }
row_params() { local s=${1%@*}; case $s in *:*) echo "${s#*:}" | tr ',' ' ' ;; esac; }

# @rados: the store of a row, in a namespace of its own, emptied when the
# row's server stops (the test cluster's OSD keeps objects in RAM).
RADOS_NS=
STORE_ARG=
set_store() {
  case $1 in
    *@rados)
      [ -n "${CEPH_CONF:-}" ] && [ -n "${RADOS_BENCH_POOL:-}" ] ||
        { echo "run.sh: @rados rows need CEPH_CONF and RADOS_BENCH_POOL (bench/rados.sh -m cas)" >&2; return 1; }
      RADOS_NS=run$$.$RANDOM
      STORE_ARG="rados:$RADOS_BENCH_POOL/$RADOS_NS ceph-conf=$CEPH_CONF" ;;
    *) STORE_ARG="$(dir_of "$1")/store" ;;
  esac
}
purge_rados() {
  [ -n "$RADOS_NS" ] || return 0
  python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import cephcluster; cephcluster.purge_namespace(*sys.argv[2:])' \
    "$here/../tests" "$CEPH_CONF" "$RADOS_BENCH_POOL" "$RADOS_NS" ||
    echo "run.sh: could not empty namespace $RADOS_NS" >&2
  RADOS_NS=
}

# start_server ROW: serve a fresh disk (or a fresh cas store) on $SOCK,
# set PID and URI, and wait until a client can connect.
start_server() {
  local row=$1 d disk srv port params
  d=$(dir_of "$row"); disk=$d/disk.img; srv=$(row_server "$row")
  params=$(row_params "$row")
  rm -rf "$SOCK" "$disk" "$d/store"
  truncate -s "${SIZE_MB}M" "$disk"
  URI="nbd+unix:///?socket=$SOCK"
  case $row in
    *@tls|*@tcp)
      # TCP on 127.0.0.1, with TLS (@tls) or without (@tcp).
      port=$(free_port)
      local tls=()
      URI="nbd://127.0.0.1:$port/"
      if [ "${row#*@}" = tls ]; then
        tls=(--tls=require --tls-certificates "$TLS_DIR")
        URI="nbds://127.0.0.1:$port/?tls-certificates=$TLS_DIR"
      fi
      case $srv in
        minnbd+flatfile) "$B/minnbd" -f -p "$port" -i 127.0.0.1 "${tls[@]}" flatfile file="$disk" & PID=$! ;;
        nbdkit+flatfile) nbdkit -f -p "$port" -i 127.0.0.1 "${tls[@]}" "$B/flatfile-plugin.so" file="$disk" & PID=$! ;;
        *) echo "run.sh: no TCP/TLS row for $srv" >&2; return 1 ;;
      esac
      srv=started ;;
  esac
  case $srv in
    started) ;;
    minnbd+flatfile) "$B/minnbd" -f -U "$SOCK" flatfile file="$disk" & PID=$! ;;
    nbdkit+flatfile) nbdkit -f -U "$SOCK" "$B/flatfile-plugin.so" file="$disk" & PID=$! ;;
    minnbd+cas)      rm -f "$disk"; set_store "$row" || return 1
                     "$B/minnbd" -f -U "$SOCK" cas store=$STORE_ARG size="${SIZE_MB}M" ${CAS_PARAMS:-} $params & PID=$! ;;
    nbdkit+cas)      rm -f "$disk"; set_store "$row" || return 1
                     nbdkit -f -U "$SOCK" "$B/cas-plugin.so" store=$STORE_ARG size="${SIZE_MB}M" ${CAS_PARAMS:-} $params & PID=$! ;;
    nbdkit+file)     nbdkit -f -U "$SOCK" file "$disk" & PID=$! ;;
    qemu-nbd)        qemu-nbd -t -f raw -k "$SOCK" --cache=writeback --aio=threads -e 16 "$disk" & PID=$! ;;
    nbd-server)      # It daemonizes; its pid file says whom to end.
                     printf '[generic]\nunixsock = %s\n[disk]\nexportname = %s\nflush = true\nfua = true\ntrim = true\n' \
                       "$SOCK" "$disk" > "$d/nbd.conf"
                     rm -f "$d/nbd.pid"
                     nbd-server -C "$d/nbd.conf" -p "$d/nbd.pid" >/dev/null 2>&1
                     for i in $(seq 100); do [ -s "$d/nbd.pid" ] && break; sleep 0.05; done
                     PID=$(cat "$d/nbd.pid" 2>/dev/null)
                     URI="nbd+unix:///disk?socket=$SOCK" ;;
    *) echo "run.sh: unknown row $row" >&2; return 1 ;;
  esac
  for i in $(seq 200); do
    nbdinfo --size "$URI" >/dev/null 2>&1 && return 0
    [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "run.sh: $row did not start" >&2
  stop_server
  return 1
}

stop_server() {
  [ -n "${PID:-}" ] || return 0
  kill "$PID" 2>/dev/null
  # Our own children can be waited for; nbd-server's daemon cannot.
  wait "$PID" 2>/dev/null
  for i in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.05; done
  PID=
  purge_rados
}

# Peak resident memory of the server so far, MiB.
hwm() { awk '/^VmHWM/ { printf "%.0f", $2/1024 }' "/proc/$PID/status" 2>/dev/null || echo -; }

# Percent of all CPUs busy during one second, the bench being idle: what
# everything else on the machine uses.  Counted from the busy ticks in
# /proc/stat (user, nice, system, irq, softirq, steal) over the wall time:
# some VMs never advance the idle counter.
busy_others() {
  local a b s e
  s=$(date +%s.%N); a=$(awk '/^cpu / { print $2+$3+$4+$7+$8+$9 }' /proc/stat)
  sleep 1
  e=$(date +%s.%N); b=$(awk '/^cpu / { print $2+$3+$4+$7+$8+$9 }' /proc/stat)
  awk -v a="$a" -v b="$b" -v s="$s" -v e="$e" -v hz="$(getconf CLK_TCK)" \
      -v n="$(nproc)" 'BEGIN { p = 100 * (b - a) / (hz * (e - s) * n);
                               if (p > 100) p = 100; printf "%.0f", p }'
}

# secs CMD...: wall seconds, or FAIL.
secs() {
  local s e
  s=$(date +%s.%N)
  "$@" >/dev/null 2>"$W_SHM/err" || { echo "run.sh: FAIL: $* $(head -c 300 "$W_SHM/err")" >&2; echo FAIL; return; }
  e=$(date +%s.%N)
  echo "$e - $s" | bc
}
mbs() { [ "$1" = FAIL ] && echo FAIL || printf "%.0f" "$(echo "$SIZE_MB * 1.048576 / $1" | bc -l)"; }

# fio_run RW DEPTH [fio options]: one fio job over NBD; prints its IOPS
# and its completion latency p99.9 in microseconds.
fio_run() {
  local rw=$1 qd=$2; shift 2
  fio --name=j --ioengine=nbd --uri="$URI" --rw="$rw" --bs=4k --iodepth="$qd" \
      --runtime="$FIO_SECS" --time_based --size="${SIZE_MB}M" "$@" \
      --output-format=json 2>"$W_SHM/err" | sed -n '/^{/,$p' |
    python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
p = d["clat_ns"].get("percentile", {}).get("99.900000")
print(int(j["read"]["iops"] + j["write"]["iops"]), "%.0f" % (p / 1000) if p else "-")' 2>/dev/null ||
    { echo "run.sh: FAIL: fio $rw qd$qd on $URI $(head -c 300 "$W_SHM/err")" >&2; echo FAIL FAIL; }
}
iops() { fio_run "$@" | cut -d' ' -f1; }

# Lookup RAM of the store just served: index, plus on format 4 the extent
# table and hooks, in bytes per 64 KiB of data stored (raw, before
# compression; referenced or not: the row ends with zeros written over
# everything), from nbdcas stat; "-" without the tool.  Format 2: index
# bytes per chunk (a chunk holds up to one 64 KiB block).
index_per_64k() {
  local store=$1/store
  [ -x "$B/nbdcas" ] && [ -d "$store" ] || { echo -; return; }
  "$B/nbdcas" stat "$store" --json 2>/dev/null | python3 -c '
import json, sys
j = json.load(sys.stdin)
ram = j["index_bytes"] + j.get("extent_table_bytes", 0) + j.get("hook_bytes", 0)
# Everything stored, referenced or not (the index keeps both until GC):
# format 4: the raw bytes of its units; format 2: chunks of up to a block.
data = j.get("stored_unit_raw_bytes") or j.get("chunks", 0) * j["block_size"]
print("%.1f" % (ram * 65536 / data) if data else "-")' 2>/dev/null || echo -
}

# measure ROW: one line of numbers for that row, in COLUMNS order.
measure() {
  local row=$1 srv q1 idx=- seed
  srv=$(row_server "$row")
  # Seeds from the round and the column: every row of a round gets the
  # same work, no two write jobs of a row the same bytes and offsets.
  seed=$((1000 * ${rep:-1}))
  start_server "$row" || { echo "$COLUMNS" | sed 's/[^ ]*/FAIL/g'; return; }
  if [ "$TABLE" = tls ]; then
    echo "$(mbs "$(secs nbdcopy --flush "$W_SHM/src.img" "$URI")")" \
         "$(mbs "$(secs nbdcopy "$URI" null:)")" "$(hwm)"
    stop_server
  elif [ "$TABLE" = peers ]; then
    echo "$(mbs "$(secs nbdcopy --flush "$W_SHM/src.img" "$URI")")" \
         "$(mbs "$(secs nbdcopy "$URI" null:)")" \
         "$(iops randread 32)" "$(iops randwrite 32)" \
         "$(iops randread 1)" "$(iops randwrite 1)" "$(hwm)"
    stop_server
  else
    # The cas table: every write is data from the client (-S 0: nbdcopy
    # must not turn zeros into WRITE_ZEROES); fio refills its buffers so
    # random writes never dedup.
    local a b c d e f
    a=$(mbs "$(secs nbdcopy --flush -S 0 "$W_SHM/src.img" "$URI")")
    b=$(mbs "$(secs nbdcopy --flush -S 0 "$W_SHM/src.img" "$URI")")
    c=$(mbs "$(secs nbdcopy "$URI" null:)")
    d=$(iops randread 32)
    e=$(iops randwrite 32 --refill_buffers --randseed=$((seed + 1)))
    f=$(iops randwrite 32 --refill_buffers --randseed=$((seed + 2)) --fsync=32)
    q1=$(fio_run randwrite 1 --refill_buffers --randseed=$((seed + 3)))
    echo "$a $b $c $d $e $f $q1" \
         "$(mbs "$(secs nbdcopy --flush -S 0 --no-extents "$W_SHM/zero.img" "$URI")")" \
         "$(hwm)" | tr '\n' ' '
    stop_server
    case $srv in *+cas) idx=$(index_per_64k "$(dir_of "$row")") ;; esac
    echo "$idx"
  fi
}

# run_table NAME "COLUMNS" ROWS...: measure, REPEATS times round-robin
# (every other round reversed), each line to $RAW.
run_table() {
  TABLE=$1 COLUMNS=$2; shift 2
  local rows=("$@") rep row line busy i order
  for rep in $(seq "$REPEATS"); do
    order=("${rows[@]}")
    if [ $((rep % 2)) = 0 ]; then
      order=()
      for ((i = ${#rows[@]} - 1; i >= 0; i--)); do order+=("${rows[$i]}"); done
    fi
    for row in "${order[@]}"; do
      busy=$(busy_others)
      echo "run.sh: [$rep/$REPEATS] $row (others busy: $busy% CPU)" >&2
      [ "$busy" -gt "$BUSY_MAX" ] &&
        echo "run.sh: WARNING: the machine is busy ($busy% CPU used by others before $row, round $rep): figures are unreliable" >&2
      line=$(measure "$row")
      echo "$TABLE $rep $row busy=$busy $line" >> "$RAW"
    done
  done
}

# Tables from the raw lines: median [min-max] per cell, then the ratios.
print_table() {
  python3 - "$RAW" "$1" "$2" <<'EOF'
import sys, statistics
raw, table, columns = sys.argv[1], sys.argv[2], sys.argv[3].split()
# Columns where lower is better: a ratio is then other/this.
lower = {"RSS_MiB", "p999_us", "idxB/64K"}
rows, res, busy = [], {}, []
for line in open(raw):
    f = line.split()
    if len(f) < 4 or f[0] != table:
        continue
    rep, row = int(f[1]), f[2]
    busy.append(int(f[3].split("=")[1]))
    if row not in rows:
        rows.append(row)
    res.setdefault(row, {})[rep] = f[4:4 + len(columns)]

def num(v):
    try:
        return float(v)
    except ValueError:
        return None

def cell(vals):
    v = sorted(x for x in map(num, vals) if x is not None)
    if not v:
        return vals[0] if vals else "-"
    fmt = (lambda x: "%.0f" % x) if max(v) >= 100 else (lambda x: "%.3g" % x)
    med = statistics.median_low(v)
    if len(v) == 1:
        return fmt(med)
    return "%s [%s-%s]" % (fmt(med), fmt(v[0]), fmt(v[-1]))

w = max(22, max(len(r) for r in rows))
cw = [max(len(c), 18) for c in columns]
print("| %-*s |" % (w, "server+backend@medium") +
      "".join(" %*s |" % (cw[i], c) for i, c in enumerate(columns)))
print("|" + "-" * (w + 2) + "|" + "".join("-" * (cw[i] + 1) + ":|"
                                         for i in range(len(columns))))
for r in rows:
    cells = [cell([res[r][k][i] for k in sorted(res[r]) if i < len(res[r][k])])
             for i in range(len(columns))]
    print("| %-*s |" % (w, r) +
          "".join(" %*s |" % (cw[i], c) for i, c in enumerate(cells)))
print()

def ratios(title, pairs):
    """pairs: (label, this_row, [other rows]); per round, this / best other
    (other / this where lower is better), then median [min-max]."""
    out = []
    for label, this, others in pairs:
        if this not in res or not all(o in res for o in others):
            continue
        line = []
        for i, c in enumerate(columns):
            if c in lower and c != "p999_us":
                line.append("-")
                continue
            rs = []
            for k in sorted(res[this]):
                a = num(res[this][k][i]) if i < len(res[this][k]) else None
                os_ = [num(res[o][k][i]) for o in others
                       if k in res[o] and i < len(res[o][k])]
                os_ = [x for x in os_ if x]
                if a is None or not os_ or not a:
                    continue
                best = min(os_) if c in lower else max(os_)
                rs.append(best / a if c in lower else a / best)
            if not rs:
                line.append("-")
                continue
            rs.sort()
            line.append("%.2f [%.2f-%.2f]" % (statistics.median_low(rs),
                                              rs[0], rs[-1])
                        if len(rs) > 1 else "%.2f" % rs[0])
        out.append((label, line))
    if not out:
        return
    print(title)
    print()
    lw = max(len(l) for l, _ in out)
    print("| %-*s |" % (lw, "") +
          "".join(" %*s |" % (cw[i], c) for i, c in enumerate(columns)))
    print("|" + "-" * (lw + 2) + "|" + "".join("-" * (cw[i] + 1) + ":|"
                                              for i in range(len(columns))))
    for l, line in out:
        print("| %-*s |" % (lw, l) +
              "".join(" %*s |" % (cw[i], c) for i, c in enumerate(line)))
    print()

if table == "peers":
    peers = [r for r in ("nbdkit+file@shm", "qemu-nbd@shm", "nbd-server@shm")
             if r in res]
    if "minnbd+flatfile@shm" in res and peers:
        ratios("minnbd+flatfile against the best peer (%s), per round "
               "(p99.9: the peer's over minnbd's):" % ", ".join(peers),
               [("minnbd / best peer", "minnbd+flatfile@shm", peers)])
else:
    import re
    pairs, vs_plain = [], []
    for r in rows:
        m = re.match(r"(.*)\+cas(?::([^@]*))?@(.*)$", r)
        if not m:
            continue
        srv, params, medium = m.groups()
        ff = "%s+flatfile@%s" % (srv, medium)
        label = "%s%s@%s" % (srv, ":" + params if params else "", medium)
        pairs.append((label + " cas/flatfile", r, [ff]))
        if params:
            vs_plain.append((label + " / cas", r, ["%s+cas@%s" % (srv, medium)]))
    ratios("cas against flatfile on the same server and medium, per round "
           "(p99.9: flatfile's over cas's; above 1 is cas doing better):",
           pairs)
    ratios("cas rows with parameters against the plain cas row of the same "
           "server and medium, per round (p99.9: the plain row's over this "
           "one's; above 1 is this row doing better):", vs_plain)
if busy:
    print("CPU used by others before each row: median %d%%, max %d%% "
          "(%d rows)." % (statistics.median_low(busy), max(busy), len(busy)))
    print()
EOF
}

machine() {
  echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) CPUs," \
       "$(awk '/MemTotal/ { printf "%.0f GiB", $2/1048576 }' /proc/meminfo) RAM, Linux $(uname -r)"
  echo "Media: shm=$(df --output=fstype "$SHM_DIR" | tail -1) ($SHM_DIR)${W_DISK:+, disk=$(df --output=fstype "$DISK_DIR" | tail -1) ($DISK_DIR)}"
  echo "Versions: $(nbdkit --version), $(qemu-nbd --version | head -1), nbd-server $(nbd-server -V 2>&1 | grep -o '[0-9][0-9.]*' | head -1), $(nbdcopy --version | head -1), $(fio --version)"
  echo "Work: ${SIZE_MB} MiB; nbdcopy file<->nbd (default connections and requests); fio ioengine=nbd bs=4k, ${FIO_SECS} s time-based, one job; median [min-max] of $REPEATS, rows interleaved"
  echo "Command: bench/run.sh $ORIG_ARGS${CAS_PARAMS:+ (CAS_PARAMS=$CAS_PARAMS)}"
  echo "Load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}

ORIG_ARGS="$*"
: > "$RAW"
{
  machine
  echo
  peer_rows=() cas_rows=() tls_rows=()
  for r in $ROWS; do
    case $MODE in
      peers) peer_rows+=("$r") ;;
      cas) cas_rows+=("$r") ;;
      tls) tls_rows+=("$r") ;;
      all) case $r in *@shm) case $r in *+cas*) ;; *) peer_rows+=("$r") ;; esac ;; esac
           case $r in *flatfile*|*+cas*) cas_rows+=("$r") ;; esac ;;
    esac
  done
  if [ ${#peer_rows[@]} -gt 0 ]; then
    echo "Sequential MB/s (nbdcopy, 10^6 bytes/s), random 4 KiB IOPS (fio), peak RSS MiB:"
    echo
    cols="seqW_MB/s seqR_MB/s rr4k_qd32 rw4k_qd32 rr4k_qd1 rw4k_qd1 RSS_MiB"
    run_table peers "$cols" "${peer_rows[@]}"
    print_table peers "$cols"
  fi
  if [ ${#tls_rows[@]} -gt 0 ]; then
    echo "TLS over TCP on 127.0.0.1: sequential MB/s (nbdcopy, 10^6 bytes/s), peak RSS MiB:"
    echo
    cols="seqW_MB/s seqR_MB/s RSS_MiB"
    run_table tls "$cols" "${tls_rows[@]}"
    print_table tls "$cols"
  fi
  if [ ${#cas_rows[@]} -gt 0 ]; then
    echo "cas: unique/duplicate/zero writes and sequential read MB/s (nbdcopy --flush -S 0), 4 KiB IOPS (fio; fs32: --fsync=32), QD1 write latency p99.9 (us), peak RSS MiB, lookup RAM bytes per 64 KiB of unique data:"
    echo
    cols="uniqW_MB/s dupW_MB/s seqR_MB/s rr4k_qd32 rw4k_qd32 rw4k_fs32 rw4k_qd1 p999_us zeroW_MB/s RSS_MiB idxB/64K"
    run_table cas "$cols" "${cas_rows[@]}"
    print_table cas "$cols"
    echo "Hash ceiling (openssl speed -evp sha256, one core):"
    echo
    openssl speed -seconds 2 -evp sha256 2>/dev/null | sed -n '/^type/,$p' | sed 's/^/    /'
    echo
  fi
  echo "Load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee ${REPORT:+"$REPORT"}
