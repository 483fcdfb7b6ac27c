#!/usr/bin/env bash
# How well `triad-train --plan` predicts a step: one rank measures the sustained rate R (the
# plan's FLOPs of a step / its measured time), then the plan predicts pipeline-parallel grids at
# that R and the same grids are measured with mpirun: equal stages under 1F1B and GPipe, the
# layers balanced against the head (parallel.stage_layers = auto), the zero-bubble schedule
# (zb-h1) on both, and two virtual stages per rank (interleaved, zb-h1 splitting it, zb-v). Prints
# planned vs measured step times (the median of the steps after the first 3) and their ratio.
# 1 thread per rank; the model is the quick-start GPT with 8 layers (uneven stages: GPT-2's
# vocabulary makes the head heavy; --vocab 512 makes it light, so that the stages are even and
# the schedules differ by their bubbles alone).
#
#   jobs/bench-plan.sh [--steps N] [--pp P] [--vocab V] [--section.key value ...]
#
# Needs P cores for an honest comparison (default P = 2). Builds triad-train if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

steps=14
pp=2
vocab=50257
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps|--pp|--vocab)
      [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || { echo "bench-plan: $1 needs a count >= 1 (got '${2:-}')" >&2; exit 2; }
      case "$1" in --steps) steps=$2 ;; --pp) pp=$2 ;; *) vocab=$2 ;; esac
      shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    --[a-z]*.[a-z]*)
      [[ $# -ge 2 ]] || { echo "bench-plan: $1 needs a value" >&2; exit 2; }
      extra+=("$1" "$2"); shift 2 ;;
    *) echo "bench-plan: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
(( steps >= 5 )) || { echo "bench-plan: --steps must be >= 5" >&2; exit 2; }
(( pp >= 2 )) || { echo "bench-plan: --pp must be >= 2 (a pipeline)" >&2; exit 2; }

. jobs/bench-prepare.sh
bench_build
export OMPI_MCA_ess_singleton_isolated=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

tmp=$(mktemp -d "${TMPDIR:-/tmp}/triad-bench-plan.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Random tokens: the data does not change the speed.
bench_uniform_tokens "$tmp/plan_train_000.bin" "$vocab"

args=(--config inputs/runs/quickstart.ini --model.n_layer 8 --model.vocab_size "$vocab"
      --train.batch_size 16 --train.micro_batch_size 4 --train.steps "$steps" --train.log_every 1
      --eval.every 0 --eval.sequences 0 --sample.length 0 --checkpoint.every 0 --run.threads 1
      --resume none --data.train "$tmp/plan_train_*.bin" --data.val '' --run.dir "$tmp"
      "${extra[@]}")
# The plan's step time (ms) at TFLOP/s $1 for the extra arguments after it.
planned_ms() {
  local r=$1; shift
  build/triad-train "${args[@]}" "$@" --plan --plan-tflops "$r" |
    sed -n 's/^step time at .*: \([0-9.]*\) ms.*/\1/p'
}

echo "== one rank: the sustained rate"
build/triad-train "${args[@]}" --run.name one > "$tmp/one.txt" 2>&1 || { cat "$tmp/one.txt"; exit 1; }
one=$(bench_median_ms "$tmp/one.txt")
rate=$(awk -v p="$(planned_ms 1)" -v m="$one" 'BEGIN { printf "%.6g", p / m }')  # TFLOP/s
echo "   measured $one ms per step: R = $rate TFLOP/s"
printf '%-22s %14s %14s %8s\n' grid "measured ms" "planned ms" ratio
# Equal stages under 1F1B and GPipe, then the layers balanced against the head (stage_layers
# auto), then the zero-bubble schedule on both splits (its gain over 1F1B is the ratio of their
# measured times), then two virtual stages per rank: interleaved, zb-h1 splitting it, and zb-v's
# V.
for v in "1f1b - 1" "gpipe - 1" "1f1b auto 1" "zb-h1 - 1" "zb-h1 auto 1" "interleaved - 2" \
         "zb-h1 - 2" "zb-v - 2"; do
  read -r sched split vs <<<"$v"
  [[ $split == - ]] && split=
  grid=(--parallel.pp "$pp" --parallel.schedule "$sched" --parallel.stage_layers "$split"
        --parallel.virtual_stages "$vs")
  name="pp$sched${split:+_$split}_v$vs"
  mpirun --oversubscribe -np "$pp" build/triad-train "${args[@]}" "${grid[@]}" \
    --run.name "$name" > "$tmp/$name.txt" 2>&1 || { cat "$tmp/$name.txt"; exit 1; }
  m=$(bench_median_ms "$tmp/$name.txt")
  p=$(planned_ms "$rate" "${grid[@]}" --plan-ranks "$pp")
  label="pp $pp $sched${split:+ layers $(build/triad-train "${args[@]}" "${grid[@]}" --plan \
    --plan-ranks "$pp" | sed -n 's/.*stage layers \([0-9,]*\).*/\1/p')}"
  (( vs > 1 )) && label+=" v $vs"
  printf '%-22s %14s %14s %8s\n' "$label" "$m" "$p" \
    "$(awk -v p="$p" -v m="$m" 'BEGIN { printf "%.3f", p / m }')"
done
