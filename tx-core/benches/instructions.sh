#!/usr/bin/env bash
# Instructions per operation of the engine micro-benchmark, from callgrind: run each case at two
# iteration counts and divide the difference of the totals by the difference of the counts, so
# start-up and runtime set-up cancel out.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench -p tx-core --bench engine --no-run 2>/dev/null
bin=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/engine-* | grep -v '\.d$' | head -n1)
total() { # case iters
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" --iters="$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
# joined: iters + iters/10 warm-up calls; new: iters/4 transactions; hook: iters/400
# transactions with 100 hooks plus as many without, so subtract two transactions per 100 hooks.
j=$(( ($(total joined 44000) - $(total joined 4000)) / 44000 ))
n=$(( ($(total new 44000) - $(total new 4000)) / 10000 ))
h=$(( ($(total hook 44000) - $(total hook 4000) - 200 * n) / 10000 ))
echo "instructions case=joined_required per_op=$j"
echo "instructions case=new_transaction_no_statement per_op=$n"
echo "instructions case=register_and_run_after_commit_hook per_op=$h"
