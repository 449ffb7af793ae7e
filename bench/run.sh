#!/bin/bash
# nbdcas benchmark: one command, one run, the same client work against every
# server, each serving one file (or cas store) over a Unix socket.
#
#   bench/run.sh [-B BUILDDIR] [-s SIZE_MB] [-t FIO_SECONDS] [-r REPEATS]
#                [-m peers|cas|tls|all] [-d TMPFS_DIR] [-D DISK_DIR]
#                [-S "row row ..."] [-o REPORT.md]
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
#          QD32 (fresh random data per write: nothing dedups), zeros written
#          as data; plus `openssl speed -evp sha256` (the hash ceiling).
#   tls    minnbd+flatfile and nbdkit+flatfile over TCP on 127.0.0.1 with
#          TLS (X.509, --tls=require; @tls) and without (@tcp), disk on
#          tmpfs.  Columns: nbdcopy sequential write and read (MB/s).
#          (fio's nbd engine cannot be given the certificates: libnbd
#          refuses a local file in its URI unless the program allows it.)
#          Certificates are made with certtool (gnutls-bin) for the run.
# Every row also reports the server's peak resident memory (VmHWM).
#
# Rows are "server+backend@medium"; -S picks rows by name, e.g.
#   -S "minnbd+flatfile@shm qemu-nbd@shm"
# With -r N every measurement is taken N times, the rows interleaved
# round-robin (so drift hits every row alike), and the median is reported.
#
# Needs: nbdkit qemu-utils nbd-server libnbd-bin fio bc python3 openssl.
# Processes started here are ended by pid; nothing else is touched.
set -u
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
B=
SIZE_MB=1024
FIO_SECS=10
REPEATS=1
MODE=peers
SHM_DIR=/dev/shm
DISK_DIR=/tmp
ROWS=
REPORT=
usage() { sed -n '2,/^set -u/p' "$0" | sed 's/^# \{0,1\}//; /^set -u/d'; exit "${1:-0}"; }
while getopts B:s:t:r:m:d:D:S:o:h opt; do
  case $opt in
    B) B=$OPTARG ;; s) SIZE_MB=$OPTARG ;; t) FIO_SECS=$OPTARG ;;
    r) REPEATS=$OPTARG ;; m) MODE=$OPTARG ;; d) SHM_DIR=$OPTARG ;;
    D) DISK_DIR=$OPTARG ;; S) ROWS=$OPTARG ;; o) REPORT=$OPTARG ;;
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

# start_server ROW: serve a fresh disk (or a fresh cas store) on $SOCK,
# set PID and URI, and wait until a client can connect.
start_server() {
  local row=$1 d disk srv port
  d=$(dir_of "$row"); disk=$d/disk.img; srv=${row%@*}
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
    minnbd+cas)      rm -f "$disk"
                     "$B/minnbd" -f -U "$SOCK" cas store="$d/store" size="${SIZE_MB}M" ${CAS_PARAMS:-} & PID=$! ;;
    nbdkit+cas)      rm -f "$disk"
                     nbdkit -f -U "$SOCK" "$B/cas-plugin.so" store="$d/store" size="${SIZE_MB}M" ${CAS_PARAMS:-} & PID=$! ;;
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
}

# Peak resident memory of the server so far, MiB.
hwm() { awk '/^VmHWM/ { printf "%.0f", $2/1024 }' "/proc/$PID/status" 2>/dev/null || echo -; }

# secs CMD...: wall seconds, or FAIL.
secs() {
  local s e
  s=$(date +%s.%N)
  "$@" >/dev/null 2>"$W_SHM/err" || { echo "run.sh: FAIL: $* $(head -c 300 "$W_SHM/err")" >&2; echo FAIL; return; }
  e=$(date +%s.%N)
  echo "$e - $s" | bc
}
mbs() { [ "$1" = FAIL ] && echo FAIL || printf "%.0f" "$(echo "$SIZE_MB * 1.048576 / $1" | bc -l)"; }

# iops RW DEPTH [fio options]: total IOPS of one fio job over NBD.
iops() {
  local rw=$1 qd=$2; shift 2
  fio --name=j --ioengine=nbd --uri="$URI" --rw="$rw" --bs=4k --iodepth="$qd" \
      --runtime="$FIO_SECS" --time_based --size="${SIZE_MB}M" "$@" \
      --output-format=json 2>"$W_SHM/err" | sed -n '/^{/,$p' |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(int(j["read"]["iops"]+j["write"]["iops"]))' 2>/dev/null ||
    { echo "run.sh: FAIL: fio $rw qd$qd on $URI $(head -c 300 "$W_SHM/err")" >&2; echo FAIL; }
}

# measure ROW: one line of numbers for that row, in COLUMNS order.
measure() {
  local row=$1 srv=${1%@*} mode
  start_server "$row" || { echo "$COLUMNS" | sed 's/[^ ]*/FAIL/g'; return; }
  if [ "$TABLE" = tls ]; then
    echo "$(mbs "$(secs nbdcopy --flush "$W_SHM/src.img" "$URI")")" \
         "$(mbs "$(secs nbdcopy "$URI" null:)")" "$(hwm)"
  elif [ "$TABLE" = peers ]; then
    echo "$(mbs "$(secs nbdcopy --flush "$W_SHM/src.img" "$URI")")" \
         "$(mbs "$(secs nbdcopy "$URI" null:)")" \
         "$(iops randread 32)" "$(iops randwrite 32)" \
         "$(iops randread 1)" "$(iops randwrite 1)" "$(hwm)"
  else
    # The cas table: every write is data from the client (-S 0: nbdcopy
    # must not turn zeros into WRITE_ZEROES); fio refills its buffers so
    # random writes never dedup.
    echo "$(mbs "$(secs nbdcopy --flush -S 0 "$W_SHM/src.img" "$URI")")" \
         "$(mbs "$(secs nbdcopy --flush -S 0 "$W_SHM/src.img" "$URI")")" \
         "$(mbs "$(secs nbdcopy "$URI" null:)")" \
         "$(iops randread 32)" "$(iops randwrite 32 --refill_buffers)" \
         "$(mbs "$(secs nbdcopy --flush -S 0 --no-extents "$W_SHM/zero.img" "$URI")")" \
         "$(hwm)"
  fi
  stop_server
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (v[1] == "FAIL") print "FAIL"; else print v[int((NR + 1) / 2)] }'; }

# run_table NAME HEADER ROWS...: measure, REPEATS times round-robin, print.
run_table() {
  TABLE=$1 COLUMNS=$2; shift 2
  local rows=("$@") rep row i line n=0
  declare -A res
  for rep in $(seq "$REPEATS"); do
    for row in "${rows[@]}"; do
      echo "run.sh: [$rep/$REPEATS] $row" >&2
      line=$(measure "$row")
      res[$row]+="$line"$'\n'
      # Every single measurement, for whoever doubts a median.
      [ -n "$REPORT" ] && echo "$TABLE $rep $row $line" >> "$REPORT.raw"
    done
  done
  n=$(echo "$COLUMNS" | wc -w)
  printf '| %-22s |' "server+backend@medium"
  for c in $COLUMNS; do printf ' %10s |' "$c"; done; echo
  printf '|%s|' "$(printf -- '-%.0s' $(seq 24))"
  for c in $COLUMNS; do printf '%s|' "$(printf -- '-%.0s' $(seq 11)):"; done; echo
  for row in "${rows[@]}"; do
    printf '| %-22s |' "$row"
    for i in $(seq "$n"); do
      printf ' %10s |' "$(printf '%s' "${res[$row]}" | awk -v i="$i" 'NF { print $i }' | median)"
    done
    echo
  done
}

machine() {
  echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) CPUs," \
       "$(awk '/MemTotal/ { printf "%.0f GiB", $2/1048576 }' /proc/meminfo) RAM, Linux $(uname -r)"
  echo "Media: shm=$(df --output=fstype "$SHM_DIR" | tail -1) ($SHM_DIR)${W_DISK:+, disk=$(df --output=fstype "$DISK_DIR" | tail -1) ($DISK_DIR)}"
  echo "Versions: $(nbdkit --version), $(qemu-nbd --version | head -1), nbd-server $(nbd-server -V 2>&1 | grep -o '[0-9][0-9.]*' | head -1), $(nbdcopy --version | head -1), $(fio --version)"
  echo "Work: ${SIZE_MB} MiB; nbdcopy file<->nbd (default connections and requests); fio ioengine=nbd bs=4k, ${FIO_SECS} s time-based, one job; median of $REPEATS"
  echo "Command: bench/run.sh $ORIG_ARGS"
  echo "Load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}

ORIG_ARGS="$*"
[ -n "$REPORT" ] && : > "$REPORT.raw"
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
    run_table peers "seqW_MB/s seqR_MB/s rr4k_qd32 rw4k_qd32 rr4k_qd1 rw4k_qd1 RSS_MiB" "${peer_rows[@]}"
    echo
  fi
  if [ ${#tls_rows[@]} -gt 0 ]; then
    echo "TLS over TCP on 127.0.0.1: sequential MB/s (nbdcopy, 10^6 bytes/s), peak RSS MiB:"
    echo
    run_table tls "seqW_MB/s seqR_MB/s RSS_MiB" "${tls_rows[@]}"
    echo
  fi
  if [ ${#cas_rows[@]} -gt 0 ]; then
    echo "cas: unique/duplicate/zero writes and sequential read MB/s (nbdcopy --flush -S 0), 4 KiB IOPS at QD32 (fio), peak RSS MiB:"
    echo
    run_table cas "uniqW_MB/s dupW_MB/s seqR_MB/s rr4k_qd32 rw4k_qd32 zeroW_MB/s RSS_MiB" "${cas_rows[@]}"
    echo
    echo "Hash ceiling (openssl speed -evp sha256, one core):"
    echo
    openssl speed -seconds 2 -evp sha256 2>/dev/null | sed -n '/^type/,$p' | sed 's/^/    /'
    echo
  fi
  echo "Load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee ${REPORT:+"$REPORT"}
