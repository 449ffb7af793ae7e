#!/bin/bash
# Replay every seed (fuzz/corpus/<c>/) and every regression
# (fuzz/regressions/<c>/) through each harness; fail on any crash.
#
#   replay.sh SRCDIR BUILDDIR fuzz-handshake ...   (after make fuzz-run:
#                                                   the libFuzzer binaries)
#   replay.sh                                      (make check: the replay-*
#                                                   programs, env srcdir)
#
# regressions/KNOWN-BUGS lists regressions whose bug is still open (one
# path relative to regressions/ per line, then the reason): they are
# replayed one by one and a crash is reported as XFAIL, not a failure, so
# CI stays usable until the owner fixes the bug and deletes the line.
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
  files=()
  for d in "$src/corpus/$c" "$src/regressions/$c"; do
    [ -d "$d" ] || continue
    for f in "$d"/*; do
      [ -f "$f" ] || continue
      rel=${f#"$src/regressions/"}
      if [ "$rel" != "$f" ] && [ -f "$src/regressions/KNOWN-BUGS" ] &&
         grep -q "^$rel\b" "$src/regressions/KNOWN-BUGS"; then
        # An open bug: replay alone, tolerate a crash.
        if "$build/$p" "$f" >"$build/replay-known.log" 2>&1; then
          echo "ok: $p $rel (known bug, did not crash here)"
        else
          echo "XFAIL: $p $rel crashes (known bug: see regressions/KNOWN-BUGS)"
        fi
        continue
      fi
      files+=("$f")
    done
  done
  [ ${#files[@]} -gt 0 ] || continue
  if [ "${p#fuzz-}" != "$p" ]; then
    # libFuzzer: file arguments are run once each.
    if ! "$build/$p" -runs=1 "${files[@]}" >"$build/replay-$c.log" 2>&1; then
      echo "FAIL: $p crashed replaying corpus/regressions (see replay-$c.log)"
      status=1
    else
      echo "ok: $p replayed ${#files[@]} inputs"
    fi
  else
    if ! "$build/$p" "${files[@]}" >"$build/replay-$c.log" 2>&1; then
      tail -30 "$build/replay-$c.log"
      echo "FAIL: $p crashed replaying corpus/regressions"
      status=1
    else
      tail -1 "$build/replay-$c.log"
    fi
  fi
done
exit $status
