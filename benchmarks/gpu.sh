#!/usr/bin/env bash
# The GPU check of rnn_jax: tests, the book's run and throughput against PyTorch on CUDA.
#
#     bash benchmarks/gpu.sh                                   # on the GPU machine, repo root
#     bash benchmarks/gpu.sh PEERS=/path/to/torch_peers.py OUT=benchmarks/results/gpu
#     GPU_SMOKE=1 PY=.venv/bin/python PEERS_PY=.venv-peers/bin/python bash benchmarks/gpu.sh
#
# Settings come from the environment or from KEY=VALUE arguments:
#   OUT       output folder (default benchmarks/results/gpu)
#   PY        the Python with jax (default python3); PEERS_PY the one with torch (default $PY)
#   PEERS     shared/peers/torch_peers.py (default ../shared/peers/torch_peers.py); when it
#             is absent (the device tool sends only the repository) its rows are skipped
#             with a note, and the repository's own peer (benchmarks/torch_ttq.py --device
#             cuda: nn.RNN / nn.LSTM + clip_grad_norm_ + torch.optim.SGD) still gives the
#             training rows
#   SECS      timed seconds per throughput measurement (default 1)
#   GPU_SMOKE 1: a CPU dry run (JAX_PLATFORMS=cpu, torch on cpu, H 16/8, batch 4 only,
#             1 s each, no pytest, the book run cut to 2 epochs, no pip install, no
#             TOTAL_LIMIT before 600 s): 1.9 minutes here on a quiet core, 5.7 at load 6,
#             20 table rows; its ratios mean nothing (tiny models, torch's threads on one
#             core): it checks the plumbing
#
# What it does, each step bounded so the whole stays under 8 minutes on one GPU:
#   1. pip install --no-deps -e . (PYTHONPATH=$PWD is set either way); nvidia-smi name and
#      driver; jax.devices()                                                  (~20 s)
#   2. pytest of the device-independent tests on the default backend, tee'd to
#      $OUT/pytest.txt                                           (at most PYTEST_LIMIT=140 s)
#   3. experiments/book_rnn.py --out $OUT/book_rnn (500 epochs), output in
#      $OUT/book_rnn.txt, its last lines printed                  (at most BOOK_LIMIT=110 s)
#   4. throughput, one process per measurement (benchmarks/gpu_workloads.py for rnn_jax,
#      torch_peers.py / torch_ttq.py for torch): train, eval, greedy gen; rnn H 512 and
#      lstm H 256; V 28, T 35; batch 32 then 256; rnn_jax in float32 and bfloat16, torch
#      in float32; each torch peer right after the rnn_jax float32 measurement it is
#      compared with. No measurement starts after TOTAL_LIMIT=400 s from the start (each
#      is stopped after 60 s); those left are recorded as skipped.
#   5. $OUT/results.md: the table (workload, dtype, batch, rnn_jax tokens/s, torch
#      tokens/s, ratio, GPU), printed; raw records in $OUT/results.jsonl.
#
# Not yet run on a GPU (written where none was lent): the times above are limits, not
# measurements. Through the device tool, whose $OUT is the folder that comes back:
#     bash benchmarks/gpu.sh        (timeout_s 540; shared/ does not travel: torch_ttq rows)
set -uo pipefail

for arg in "$@"; do
  case "$arg" in
    OUT=* | PY=* | PEERS=* | PEERS_PY=* | SECS=* | GPU_SMOKE=* | PYTEST_LIMIT=* | BOOK_LIMIT=* | TOTAL_LIMIT=*)
      export "${arg?}" ;;
    *)
      echo "usage: bash benchmarks/gpu.sh [OUT=dir] [PEERS=torch_peers.py] [PY=python] [SECS=s] ..." >&2
      exit 2 ;;
  esac
done

OUT=${OUT:-benchmarks/results/gpu}
PY=${PY:-python3}
PEERS_PY=${PEERS_PY:-$PY}
PEERS=${PEERS:-../shared/peers/torch_peers.py}
GPU_SMOKE=${GPU_SMOKE:-0}
PYTEST_LIMIT=${PYTEST_LIMIT:-140}
BOOK_LIMIT=${BOOK_LIMIT:-110}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false # jax and torch processes take turns on the GPU
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-$(mktemp -d)}

if [[ $GPU_SMOKE == 1 ]]; then
  export JAX_PLATFORMS=cpu
  TORCH_DEVICE=cpu
  SECS=${SECS:-1}
  TOTAL_LIMIT=${TOTAL_LIMIT:-600} # a busy 2-core CPU: 5-15 s a process
  RNN_H=16 LSTM_H=8 BATCHES=4 NUM_CHARS=20 EPOCHS=2
else
  TORCH_DEVICE=cuda
  SECS=${SECS:-1}
  RNN_H=512 LSTM_H=256 BATCHES="32 256" NUM_CHARS=500 EPOCHS=500
fi
TOTAL_LIMIT=${TOTAL_LIMIT:-400} # + one 60 s measurement + the table: under 8 min
CORPUS=rnn_jax/assets/timemachine.txt # the peers read the same 10,000 tokens as rnn_jax
WORKLOADS=(benchmarks/gpu_workloads.py)
mkdir -p "$OUT"
: >"$OUT/results.jsonl"
rm -f "$OUT/pytest.txt" "$OUT/book_rnn.txt" # no stale lines in this run's summary

section() { printf '\n=== %s (%ds elapsed)\n' "$1" "$SECONDS"; }

# ---------------------------------------------------------------- 1. setup and devices
section "setup"
if [[ $GPU_SMOKE != 1 ]]; then
  "$PY" -m pip install --no-deps --no-build-isolation -q -e . >"$OUT/pip.txt" 2>&1 ||
    echo "note: pip install -e . failed (see $OUT/pip.txt); running with PYTHONPATH=$PWD"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  GPU=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)
else
  GPU="none ($(grep -m 1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
fi
echo "GPU (name, driver): $GPU"
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tail -n 3
"$PEERS_PY" -c 'import torch; print("torch", torch.__version__, "cuda:", torch.cuda.is_available())' 2>&1 | tail -n 1
# the last line names a missing dependency (the library needs tqdm and matplotlib)
"$PY" -c 'import rnn_jax.run; print("rnn_jax imports: ok")' 2>&1 | tail -n 1
{
  echo "GPU: $GPU"
  echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "GPU_SMOKE=$GPU_SMOKE SECS=$SECS PEERS=$PEERS"
} >"$OUT/info.txt"

# ---------------------------------------------------------------- 2. tests on the default backend
section "pytest (device-independent tests, limit ${PYTEST_LIMIT}s)"
if [[ $GPU_SMOKE == 1 ]]; then
  echo "skipped (GPU_SMOKE=1)"
else
  timeout "$PYTEST_LIMIT" "$PY" -m pytest -q -x -p no:cacheprovider \
    tests/test_cells.py tests/test_model.py tests/test_train.py tests/test_optim.py \
    tests/test_decode.py tests/test_sample.py 2>&1 | tee "$OUT/pytest.txt" | tail -n 15
  echo "pytest exit status: ${PIPESTATUS[0]} (124 = stopped at the time limit)"
fi

# ---------------------------------------------------------------- 3. the book's run
section "experiments/book_rnn.py, $EPOCHS epochs (limit ${BOOK_LIMIT}s)"
rm -rf "${OUT:?}/book_rnn"
timeout "$BOOK_LIMIT" "$PY" experiments/book_rnn.py --out "$OUT/book_rnn" --epochs "$EPOCHS" \
  >"$OUT/book_rnn.txt" 2>&1
echo "exit status: $? (124 = stopped at the time limit); last lines:"
tail -n 12 "$OUT/book_rnn.txt"

# ---------------------------------------------------------------- 4. throughput
section "throughput (${SECS}s per measurement, none started after ${TOTAL_LIMIT}s)"
have_peers=0
if [[ -f $PEERS ]]; then
  have_peers=1
else
  echo "note: no torch peers at PEERS=$PEERS; the nn/scratch torch rows are skipped" \
    "(pass PEERS=path/to/torch_peers.py); benchmarks/torch_ttq.py gives the train rows."
fi

# measure TAGS... -- CMD...: run CMD (at most 60 s, none after TOTAL_LIMIT) and
# append its JSON line, tagged, to results.jsonl; a failure is recorded as an error.
measure() {
  local tags=()
  while [[ $1 != -- ]]; do tags+=("$1") && shift; done
  shift
  if ((SECONDS >= TOTAL_LIMIT)); then
    echo "skipped (TOTAL_LIMIT reached)" | "$PY" "${WORKLOADS[@]}" --record "${tags[@]}" >>"$OUT/results.jsonl"
  else
    timeout 60 "$@" 2>&1 | "$PY" "${WORKLOADS[@]}" --record "${tags[@]}" >>"$OUT/results.jsonl"
  fi
  tail -n 1 "$OUT/results.jsonl" | cut -c 1-160
}

for B in $BATCHES; do
  "$PY" "${WORKLOADS[@]}" --write-peer-data "$OUT/peer_data_B$B.npz" --batch-size "$B" >/dev/null
  for spec in "train rnn $RNN_H" "train lstm $LSTM_H" "eval rnn $RNN_H" "eval lstm $LSTM_H" \
    "gen rnn $RNN_H" "gen lstm $LSTM_H"; do
    read -r W CELL H <<<"$spec"
    same=(workload="$W" cell="$CELL" num_hiddens="$H" batch_size="$B")
    for DT in float32 bfloat16; do
      measure impl=rnn_jax "${same[@]}" dtype="$DT" -- "$PY" "${WORKLOADS[@]}" --workload "$W" \
        --cell "$CELL" --num-hiddens "$H" --batch-size "$B" --dtype "$DT" --seconds "$SECS" \
        --num-chars "$NUM_CHARS"
      [[ $DT == float32 ]] || continue # torch runs float32 only: once per workload
      peer=("$PEERS_PY" "$PEERS" "$W" --cell "$CELL" --num-hiddens "$H" --batch-size "$B"
        --seconds "$SECS" --repeats 1 --corpus "$CORPUS" --max-tokens 10000
        --num-chars "$NUM_CHARS" --prefix "time traveller" --device "$TORCH_DEVICE")
      if ((have_peers)); then
        measure impl="nn.${CELL^^}" "${same[@]}" dtype=float32 -- "${peer[@]}" --impl nn
        if [[ $CELL == rnn && $W != gen ]]; then # the book's scratch RNN (gen: batch 1 only)
          measure impl=book-scratch "${same[@]}" dtype=float32 -- "${peer[@]}" --impl scratch
        fi
      fi
      if [[ $W == train ]]; then # the repository's own peer: there without shared/
        measure impl="torch_ttq-nn.${CELL^^}" "${same[@]}" dtype=float32 -- "$PEERS_PY" \
          benchmarks/torch_ttq.py --data "$OUT/peer_data_B$B.npz" --cell "$CELL" \
          --num-hiddens "$H" --seconds "$SECS" --eval-every 1e9 --warmup 1 \
          --device "$TORCH_DEVICE"
      fi
    done
  done
done
rm -f "$OUT"/peer_data_B*.npz

# ---------------------------------------------------------------- 5. the table
section "results ($OUT/results.md)"
"$PY" "${WORKLOADS[@]}" --table "$OUT/results.jsonl" --gpu "$GPU" --out "$OUT/results.md"
{
  echo
  echo "pytest: $(tail -n 1 "$OUT/pytest.txt" 2>/dev/null || echo 'not run')"
  echo "book run: $(grep -m 1 '^perplexity' "$OUT/book_rnn.txt" || echo 'no final line')"
  echo "total: ${SECONDS}s"
} | tee -a "$OUT/results.md"
echo "raw records in $OUT/results.jsonl"
