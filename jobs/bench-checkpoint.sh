#!/usr/bin/env bash
# Checkpoint I/O benchmark (issue 3): triad-bench checkpoint writes and reads a GPT-2 124M
# checkpoint (parameters + AdamW m and v, 1.49 GB of fp32) with the ZeRO-1 partition over 1, 2
# and 4 ranks, next to a plain sequential write (+ fsync) and read of the same byte count by one
# process in the same directory. Prints a table of GB/s and the ratio checkpoint / plain.
#
#   jobs/bench-checkpoint.sh [--dir DIR] [--ranks "1 2 4"] [--model gpt2-124m] [--repeat N]
#                            [--build-dir DIR]
#
# DIR: where the files go (the file system measured; default a temporary directory under
# ${TMPDIR:-/tmp}, removed at the end). Reads follow a drop of the page cache when the process
# may write /proc/sys/vm/drop_caches (root outside a container), else they come from the cache
# (the table says which). Each figure is the median of N runs (default 3). Builds triad-bench
# if needed (the release preset's build/, or --build-dir).
set -euo pipefail
cd "$(dirname "$0")/.."

dir=""
ranks="1 2 4"
model=gpt2-124m
repeat=3
build=build
while [[ $# -gt 0 ]]; do
  [[ $# -ge 2 || ! $1 =~ ^--(dir|ranks|model|repeat|build-dir)$ ]] || { echo "bench-checkpoint: $1 needs a value" >&2; exit 2; }
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --build-dir) build=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "bench-checkpoint: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "bench-checkpoint: --repeat must be >= 1 (got '$repeat')" >&2; exit 2; }
[[ $ranks =~ ^[1-9][0-9]*( [1-9][0-9]*)*$ ]] ||
  { echo "bench-checkpoint: --ranks must be counts >= 1, e.g. \"1 2 4\" (got '$ranks')" >&2; exit 2; }

# Build (incremental). triad-bench exists as a target once src/apps/bench_main.cpp has been seen
# by a configure run.
if [[ ! -f $build/CMakeCache.txt ]]; then
  if [[ $build == build ]]; then cmake --preset release; else cmake -S . -B "$build"; fi
fi
if [[ ! -d $build/CMakeFiles/triad-bench.dir ]]; then  # Makefiles and Ninja alike
  cmake -S . -B "$build" >/dev/null
fi
cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" --target triad-bench
bench=$build/triad-bench

cleanup=""
if [[ -z $dir ]]; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/triad-bench-ckpt.XXXXXX")
  cleanup=$dir
fi
trap '[[ -n $cleanup ]] && rm -rf "$cleanup"' EXIT
mkdir -p "$dir"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_pml=${OMPI_MCA_pml:-ob1} OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader}
cores=$(nproc 2>/dev/null || echo 2)

echo "== checkpoint I/O: $model, ranks: $ranks, $repeat run(s) each, files in $dir"
echo "   file system: $(df -hT "$dir" | awk 'NR==2 {print $1 " (" $2 "), " $5 " free"}')," \
     "$cores cores, $(mpirun --version 2>/dev/null | head -1)"
results=()
for np in $ranks; do
  threads=$(( cores / np > 0 ? cores / np : 1 ))
  echo "== $np rank(s), OMP_NUM_THREADS=$threads"
  out=$(OMP_NUM_THREADS=$threads mpirun --oversubscribe -np "$np" "$bench" checkpoint \
          --dir "$dir" --model "$model" --repeat "$repeat" 2>&1 | tee /dev/stderr)
  results+=("$(grep '^RESULT ' <<<"$out" | tail -1)")
done

echo
echo "== $model checkpoint ($(awk '{for (i = 1; i <= NF; i++) if ($i ~ /^bytes=/) {split($i, a, "="); printf "%.3f GB", a[2] / 1e9}}' <<<"${results[0]}") of tensor data) in $dir, medians of $repeat runs"
echo "   ratio = checkpoint speed / plain speed (median of the runs' ratios)"
printf '%5s | %10s %10s %10s %6s | %10s %10s %6s | %8s | %s\n' ranks "write GB/s" "(save)" \
  "plain GB/s" ratio "read GB/s" "plain GB/s" ratio "resume s" reads
printf '%s\n' "------+--------------------------------------------+-------------------------------+----------+--------"
for r in "${results[@]}"; do
  awk '{
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    gb = v["bytes"] / 1e9
    printf "%5d | %10.2f %10.2f %10.2f %6.2f | %10.2f %10.2f %6.2f | %8.2f | %s\n", v["ranks"],
           gb / v["write_s"], gb / v["save_s"], gb / v["plain_write_s"], v["write_ratio"],
           gb / v["read_s"], gb / v["plain_read_s"], v["read_ratio"], v["resume_read_s"],
           v["cache"]
  }' <<<"$r"
done
echo "write: save_checkpoint + fsync, all ranks, each its ZeRO-1 slice of every group ((save):"
echo "the save_checkpoint call alone, what training waits for); plain: one process, write(2) in"
echo "64 MiB blocks + fsync. read: every rank its slice, checksums verified; plain: one process,"
echo "read(2). resume: seconds to load full parameters on every rank + optimizer slices, as the"
echo "trainer resumes."
