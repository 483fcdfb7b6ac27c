#!/usr/bin/env bash
# What a checkpoint costs the training loop, written by the training thread or in the background
# (checkpoint.async): the quick-start GPT with 8 layers (GPT-2's vocabulary, tied embeddings) on
# data-parallel ranks under ZeRO-1, fp32, 1 thread per rank, a checkpoint every K steps
# (weights plus AdamW's m and v), against the same run without checkpoints. Prints, per mode,
# the training loop's wall time (the start line to the last step line), the seconds checkpoints
# added to it, their share of the foreground's, and the checkpoints' size. The checkpoints go to
# TMPDIR (default /tmp).
#
#   jobs/bench-checkpoint-async.sh [--ranks R] [--repeats M] [--steps N] [--every K]
#                                  [--section.key value ...]
#
# R data-parallel ranks (default 2); each mode runs M times (default 3), in turn, and its
# median counts. The background writer needs a core the training leaves idle:
# on 2 cores, 1 rank leaves it one, 2 ranks none.
#
# No peer runs beside it: PyTorch's asynchronous distributed checkpoint needs torch >= 2.3.
set -euo pipefail
cd "$(dirname "$0")/.."

ranks=2
repeats=3
steps=24
every=4
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ranks | --repeats | --steps | --every)
      [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || {
        echo "bench-checkpoint-async: $1 needs a count >= 1 (got '${2:-}')" >&2; exit 2; }
      case "$1" in
        --ranks) ranks=$2 ;; --repeats) repeats=$2 ;; --steps) steps=$2 ;; *) every=$2 ;;
      esac
      shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    --[a-z]*.[a-z]*)
      [[ $# -ge 2 ]] || { echo "bench-checkpoint-async: $1 needs a value" >&2; exit 2; }
      extra+=("$1" "$2"); shift 2 ;;
    *) echo "bench-checkpoint-async: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
(( every < steps )) || { echo "bench-checkpoint-async: --every must be < --steps" >&2; exit 2; }

. jobs/bench-prepare.sh
bench_mpi bench-ckpt
bench_uniform_tokens "$tmp/ckpt_train_000.bin" 50257

args=(--config inputs/runs/quickstart.ini --model.n_layer 8 --run.precision fp32
      --train.batch_size 16 --train.micro_batch_size 4 --train.steps "$steps" --train.log_every 1
      --eval.every 0 --eval.sequences 0 --sample.length 0 --run.threads 1 --parallel.zero 1
      --checkpoint.keep 2 --resume none --data.train "$tmp/ckpt_train_*.bin" --data.val ''
      --run.dir "$tmp" "${extra[@]}")
# Wall seconds from the start line to the last step line, from timestamps the loop's output gets
# as it arrives.
run_seconds() {
  if ! mpirun --oversubscribe -np "$ranks" build/triad-train "${args[@]}" "$@" 2>&1 |
    while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done > "$tmp/log.txt"
  then
    cat "$tmp/log.txt" >&2
    return 1
  fi
  awk '$2 == "triad:" && !s { s = $1 } $2 == "step" { e = $1 } END { printf "%.2f", e - s }' \
    "$tmp/log.txt"
}
# The three modes in turn, `repeats` rounds; each mode's median (this VM's step times drift).
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
t_none=() t_sync=() t_async=()
for ((r = 0; r < repeats; ++r)); do
  t_none+=("$(run_seconds --checkpoint.every 0 --run.name none)") || exit 1
  t_sync+=("$(run_seconds --checkpoint.every "$every" --checkpoint.async false \
    --run.name sync)") || exit 1
  mb=$(du -m "$tmp/sync/ckpt/step_$(printf %08d "$steps").h5" | cut -f1)
  t_async+=("$(run_seconds --checkpoint.every "$every" --checkpoint.async true \
    --run.name async)") || exit 1
  rm -rf "$tmp/none" "$tmp/sync" "$tmp/async"  # (the disk holds one run's checkpoints at a time)
done
none=$(median "${t_none[@]}") sync=$(median "${t_sync[@]}") async=$(median "${t_async[@]}")
n=$(( (steps - 1) / every ))  # checkpoints inside the loop (the last step's comes after it)
printf '%-22s %10s %14s %10s\n' mode "loop s" "added s" "share"
printf '%-22s %10s %14s %10s\n' "no checkpoints" "$none" - -
for m in sync async; do
  t=${!m}
  printf '%-22s %10s %14s %10s\n' "every $every, $m" "$t" \
    "$(awk -v t="$t" -v b="$none" 'BEGIN { printf "%.2f", t - b }')" \
    "$(awk -v t="$t" -v b="$none" -v s="$sync" 'BEGIN { printf "%.2f", (t - b) / (s - b) }')"
done
echo "($n checkpoints of $mb MB inside the loop, $ranks rank(s); medians of $repeats; share: the"
echo " seconds added, over the sync run's)"
