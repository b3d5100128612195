#!/usr/bin/env bash
# The book run (experiments/book_rnn.py) of an older commit against this tree, interleaved,
# pinned to one core: was the book's configuration slowed? Prints each run's closing line
# (perplexities must match exactly; tokens/s is the median epoch).
#
#   bash benchmarks/ab_book.sh e6ed034 [EPOCHS=40] [ROUNDS=3] [CPU=1]
#   ORDER="new old" bash benchmarks/ab_book.sh ...   # this tree first in every round
#
# Measured 2026-11-27 against e6ed034 (40 epochs, 3 rounds, a loaded 2-core machine):
# identical perplexities; tokens/s new/old 0.99, 2.03, 1.07 per round.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: ab_book.sh REV [EPOCHS] [ROUNDS] [CPU]}
EPOCHS=${2:-40}
ROUNDS=${3:-3}
CPU=${4:-1}
PY=${PY:-$PWD/.venv/bin/python}
OLD=$(mktemp -d)
trap 'git worktree remove --force "$OLD" >/dev/null 2>&1 || true' EXIT
git worktree add -q --detach "$OLD" "$REV"
for round in $(seq 1 "$ROUNDS"); do
  for tree in ${ORDER:-old new}; do
    dir=$PWD
    [ "$tree" = old ] && dir=$OLD
    out=$(mktemp -d)
    line=$(cd "$dir" && PYTHONPATH=$dir taskset -c "$CPU" "$PY" experiments/book_rnn.py \
      --out "$out/run" --epochs "$EPOCHS" 2>&1 | grep "tokens/s (median epoch)")
    echo "round $round $tree: $line"
    rm -rf "$out"
  done
done
