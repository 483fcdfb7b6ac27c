#!/usr/bin/env bash
# CPU speed benchmark: triad's CPU backend and the PyTorch reference train the same GPT
# (inputs/runs/bench-cpu.ini: 4 layers, C=256, T=256, GPT-2 vocabulary, batch 8 = 2 x 4) with
# the same thread count, back to back, on a random token shard (data does not change speed).
# Prints both median tokens/s (first 2 steps left out as warm-up) and the ratio.
#
#   jobs/bench-cpu.sh [--threads N] [--steps N] [--freeze GLOBS] [--dropout P]
#                     [--section.key value ...]
#
# N defaults to nproc. --freeze: fine-tuning with the tensors GLOBS matches left as they are, on
# both sides (triad's train.freeze; PyTorch's requires_grad = False). --dropout: nanoGPT's
# dropout P on both sides (triad's train.hidden_dropout and train.attention_dropout). Extra --section.key options
# go to triad-train only (change the model in the INI instead, so that both sides run the same
# one). Builds triad-train if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

threads=$(nproc 2>/dev/null || echo 2)
steps=10
config=inputs/runs/bench-cpu.ini
extra=()
freeze=()
dropout=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads|--steps)
      [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || { echo "bench-cpu: $1 needs a count >= 1 (got '${2:-}')" >&2; exit 2; }
      [[ $1 == --threads ]] && threads=$2 || steps=$2; shift 2 ;;
    --freeze)
      [[ $# -ge 2 && -n $2 ]] || { echo "bench-cpu: --freeze needs comma-separated globs" >&2; exit 2; }
      freeze=(--freeze "$2"); extra+=(--train.freeze "$2"); shift 2 ;;
    --dropout)
      [[ $# -ge 2 && $2 =~ ^0?\.[0-9]+$ ]] || { echo "bench-cpu: --dropout needs a probability in [0, 1) (got '${2:-}')" >&2; exit 2; }
      dropout=(--dropout "$2"); extra+=(--train.hidden_dropout "$2" --train.attention_dropout "$2"); shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    --[a-z]*.[a-z]*)
      [[ $# -ge 2 ]] || { echo "bench-cpu: $1 needs a value" >&2; exit 2; }
      extra+=("$1" "$2"); shift 2 ;;
    *) echo "bench-cpu: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
(( steps >= 3 )) || { echo "bench-cpu: --steps must be >= 3 (2 are warm-up)" >&2; exit 2; }

. jobs/bench-prepare.sh
# Thread counts: triad-train gets --run.threads (it manages OpenMP and OpenBLAS itself);
# bench_torch.py sets OMP_NUM_THREADS / OPENBLAS_NUM_THREADS and torch.set_num_threads.
bench_prepare bench-cpu "$config" "$steps"

echo "== machine: $(nproc) cores, benchmark threads $threads"
grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/^.*: /   cpu: /' || true
if command -v update-alternatives >/dev/null 2>&1; then
  blas=$(update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null |
         sed -n 's/^Value: //p' || true)
  echo "   libblas.so.3 alternative (the BLAS Debian's torch calls): ${blas:-unknown}"
fi
echo "   triad-train links: $(ldd build/triad-train | grep -oE 'lib(open)?blas[^ ]*|libmkl[^ ]*' | sort -u | tr '\n' ' ')"

echo "== triad ($config, $steps steps, $threads threads)"
build/triad-train --config "$config" --data.train "$tmp/bench_train_*.bin" \
  --run.dir "$tmp" --run.name bench --run.threads "$threads" --train.steps "$steps" \
  --resume none "${extra[@]}"

echo "== pytorch"
"$py" tests/reference/bench_torch.py --config "$config" --threads "$threads" --steps "$steps" \
  --triad-metrics "$tmp/bench/metrics.h5" --triad-log "$tmp/bench/log.txt" "${freeze[@]}" \
  "${dropout[@]}"
