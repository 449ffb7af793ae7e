#!/bin/bash
# Replay every seed (fuzz/corpus/<c>/) and every regression
# (fuzz/regressions/<c>/) through each harness; fail on any crash.
#
#   replay.sh SRCDIR BUILDDIR fuzz-handshake ...   (after make fuzz-run:
#                                                   the libFuzzer binaries)
#   replay.sh                                      (make check: the replay-*
#                                                   programs, env srcdir)
set -e
if [ $# -ge 2 ]; then
  src=$1 build=$2; shift 2
  progs=("$@")
else
  src=${srcdir:-.} build=.
  progs=(replay-handshake replay-requests replay-casstore)
fi
status=0
for p in "${progs[@]}"; do
  c=${p#fuzz-}; c=${c#replay-}
  dirs=()
  for d in "$src/corpus/$c" "$src/regressions/$c"; do
    if [ -d "$d" ] && [ -n "$(ls -A "$d")" ]; then dirs+=("$d"); fi
  done
  [ ${#dirs[@]} -gt 0 ] || continue
  if [ "${p#fuzz-}" != "$p" ]; then
    # libFuzzer: file arguments are run once each.
    files=()
    for d in "${dirs[@]}"; do files+=("$d"/*); done
    if ! "$build/$p" -runs=1 "${files[@]}" >"$build/replay-$c.log" 2>&1; then
      echo "FAIL: $p crashed replaying corpus/regressions (see replay-$c.log)"
      status=1
    else
      echo "ok: $p replayed ${#files[@]} inputs"
    fi
  else
    if ! "$build/$p" "${dirs[@]}" >"$build/replay-$c.log" 2>&1; then
      tail -30 "$build/replay-$c.log"
      echo "FAIL: $p crashed replaying corpus/regressions"
      status=1
    else
      tail -1 "$build/replay-$c.log"
    fi
  fi
done
exit $status
