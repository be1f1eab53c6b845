#!/usr/bin/env bash
# Instructions per joined `Required` level, from callgrind: for each depth, the chain with
# `#[transactional]` and the same recursion without it, each at two level counts; the
# difference of the totals divided by the difference of the counts cancels start-up, and the
# plain recursion's figure is subtracted from the joined one (what the engine adds per level).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p tx-bench --bench nesting --no-run 2>/dev/null
bin=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/nesting-* | grep -v '\.d$' | head -n1)
total() { # depth levels [--plain]
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" --case joins --depth "$1" --iters "$2" ${3:-} 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for depth in 1 8 64; do
  tx=$(( ($(total "$depth" 70400) - $(total "$depth" 6400)) / 64000 ))
  plain=$(( ($(total "$depth" 70400 --plain) - $(total "$depth" 6400 --plain)) / 64000 ))
  echo "instructions case=joined_level depth=$depth per_level_tx=$tx per_level_plain=$plain engine_per_level=$((tx - plain))"
done
