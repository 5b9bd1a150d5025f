#!/usr/bin/env bash
# Runs the whole suite N times in a row (default 10) and prints one line a run: its number, pytest's result line
# and the time. Issue 16 asks the suite to pass ten times in a row on a loaded machine: run this in two clones at
# once (each loads the other) or beside `make bench`. Stops at the first failing run unless KEEP_GOING=1.
# Logs: build/repeat-suite/run-K.log.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
mkdir -p build/repeat-suite
for ((k = 1; k <= runs; k++)); do
  started=$(date -u +%H:%M:%S)
  make test > "build/repeat-suite/run-$k.log" 2>&1
  rc=$?
  result=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "build/repeat-suite/run-$k.log" | tail -1)
  echo "run $k/$runs: rc=$rc  $result  (started $started UTC, ended $(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"
  if [ "$rc" != 0 ] && [ "${KEEP_GOING:-0}" != 1 ]; then
    grep -E '^(FAILED|ERROR) ' "build/repeat-suite/run-$k.log"
    exit "$rc"
  fi
done
