#!/usr/bin/env bash
# What each ZeRO stage costs and saves on two data-parallel ranks: the quick-start GPT (8 layers,
# GPT-2's vocabulary, tied embeddings) in bf16, 2 micro-batches of 4 sequences per rank, under
# parallel.zero = 0, 1, 2 and 3. Prints, per stage, the plan's megabytes of fp32 weights,
# gradients, optimizer state and the rank's total (triad-train --plan, which
# tests/mpi/test_model_parallel.cpp checks equals the backend's allocations), what the run itself
# reported holding on its backend at start ("in all" of its start line, the largest rank), the
# data-parallel bytes over a rank's link per step, and the median step time after the first 3.
# 1 thread per rank.
#
#   jobs/bench-zero.sh [--steps N] [--section.key value ...]
#
# Needs 2 cores for honest times. Builds triad-train if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

steps=14
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps)
      [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || { echo "bench-zero: $1 needs a count >= 1 (got '${2:-}')" >&2; exit 2; }
      steps=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    --[a-z]*.[a-z]*)
      [[ $# -ge 2 ]] || { echo "bench-zero: $1 needs a value" >&2; exit 2; }
      extra+=("$1" "$2"); shift 2 ;;
    *) echo "bench-zero: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
(( steps >= 5 )) || { echo "bench-zero: --steps must be >= 5" >&2; exit 2; }

. jobs/bench-prepare.sh
bench_mpi bench-zero
# Random tokens: the data does not change the speed or the memory.
bench_uniform_tokens "$tmp/zero_train_000.bin" 50257

args=(--config inputs/runs/quickstart.ini --model.n_layer 8 --run.precision bf16
      --train.batch_size 16 --train.micro_batch_size 4 --train.steps "$steps" --train.log_every 1
      --eval.every 0 --eval.sequences 0 --sample.length 0 --checkpoint.every 0 --run.threads 1
      --resume none --data.train "$tmp/zero_train_*.bin" --data.val '' --run.dir "$tmp"
      "${extra[@]}")
printf '%-6s %11s %13s %13s %11s %11s %13s %10s\n' zero "weights MB" "gradients MB" \
  "optimizer MB" "planned MB" "run MB" "dp MB / step" "ms / step"
for z in 0 1 2 3; do
  mpirun --oversubscribe -np 2 build/triad-train "${args[@]}" --parallel.zero "$z" \
    --run.name "zero$z" > "$tmp/zero$z.txt" 2>&1 || { cat "$tmp/zero$z.txt"; exit 1; }
  # The plan's row of the one stage: weights, bf16 copy, gradients, optimizer, ..., total.
  read -r w _ g o _ _ _ t < <(build/triad-train "${args[@]}" --parallel.zero "$z" --plan \
    --plan-ranks 2 | awk '$1 == "0" { print $4, $5, $6, $7, $8, $9, $10, $11 }')
  # Data-parallel payload per step from the plan: reduce-scatter/all-reduce and gather.
  dp=$(build/triad-train "${args[@]}" --parallel.zero "$z" --plan --plan-ranks 2 |
    sed -n 's/^data-parallel gradient reduction per step and rank (ring): \([0-9.]*\) MB.*/\1/p')
  run=$(sed -n 's/.*in all \([0-9.]*\) MB.*/\1/p' "$tmp/zero$z.txt" | head -1)
  printf '%-6s %11s %13s %13s %11s %11s %13s %10s\n' "$z" "$w" "$g" "$o" "$t" "${run:--}" \
    "${dp:--}" "$(bench_median_ms "$tmp/zero$z.txt")"
done
echo "(MB = 1e6 bytes; dp MB: the ring's wire bytes over a rank's link per step, from the plan)"
