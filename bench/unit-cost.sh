#!/usr/bin/env bash
# Instructions (callgrind) and heap blocks/bytes (dhat) per place-order unit, for one peer,
# backend and variant: two runs of the bench binary with different unit counts, one worker;
# the difference of the totals over the difference of the counts cancels start-up and the
# warm-ups (both runs do the same).
# usage: bench/unit-cost.sh BACKEND PEER VARIANT [SMALL LARGE] [callgrind|dhat|both]
# (PEER: tx or sqlx; BIN overrides the bench binary; SQLite files go to $TMPDIR; PostgreSQL is
# TX_BENCH_PG_URL, which no other run may use at the same time: each run recreates its schemas.)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -n ${BIN:-} ]] || cargo bench -p tx-bench --bench place_order --no-run 2>/dev/null
backend=$1 peer=$2 variant=$3 small=${4:-200} large=${5:-1200} tool=${6:-both}
bin=${BIN:-$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/place_order-* | grep -v '\.d$' | head -n1)}
export TMPDIR=${TMPDIR:-/tmp/sqlxperf}
mkdir -p "$TMPDIR"
args() { echo --backend "$backend" --workers 1 --rounds 1 --only "$peer" --variants "$variant" --units "$1"; }
# "total tasks driver": all instructions; those of tokio tasks (run_task, the futures' own
# work: the units, and sqlx's spawned returns to the pool); those of SQLite's connection threads
# (the driver's work, zero on PostgreSQL). The scheduler's own parking and spinning, the rest,
# varies from run to run with timing, so `tasks + driver` is the steadier figure.
instr() {
  local out="$TMPDIR/cg.$backend.$peer.$variant.$1"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" $(args "$1") >/dev/null 2>&1
  callgrind_annotate --inclusive=yes "$out" 2>/dev/null | awk '
    /PROGRAM TOTALS/ { gsub(",", "", $1); total = $1 }
    /worker::Context::run_task \[/ && !t { gsub(",", "", $1); t = $1 }
    /sqlx-sqlite-[0-9.]*\/src\/connection\/worker.rs:std::sys::backtrace::__rust_begin_short_backtrace/ && !d { gsub(",", "", $1); d = $1 }
    END { print total, t + 0, d + 0 }'
}
heap() { # "bytes blocks"
  valgrind --tool=dhat --dhat-out-file=/dev/null "$bin" $(args "$1") 2>&1 \
    | sed -n 's/.*Total: *\([0-9,]*\) bytes in \([0-9,]*\) blocks.*/\1 \2/p' | tr -d ,
}
n=$((large - small))
if [[ $tool != dhat ]]; then
  read -r ta ka da < <(instr "$small"); read -r tb kb db < <(instr "$large")
  echo "instructions backend=$backend peer=$peer variant=$variant per_unit: total=$(( (tb - ta) / n )) tasks=$(( (kb - ka) / n )) driver=$(( (db - da) / n )) tasks+driver=$(( (kb + db - ka - da) / n ))"
fi
if [[ $tool != callgrind ]]; then
  read -r ba ka < <(heap "$small"); read -r bb kb < <(heap "$large")
  echo "heap backend=$backend peer=$peer variant=$variant blocks_per_unit=$(echo "scale=1; ($kb - $ka) / $n" | bc) bytes_per_unit=$(( (bb - ba) / n ))"
fi
