#!/usr/bin/env bash
# Activation recomputation: what each train.recompute mode keeps and what it costs, beside the
# PyTorch peer with and without torch.utils.checkpoint on every layer (its activation
# recomputation), on the same model (inputs/runs/bench-recompute.ini: 12 layers, C=256, T=256,
# GPT-2 vocabulary, batch 8 = 2 x 4), the same random tokens and the same thread count.
# Prints per mode: triad's activation buffers and all its buffers (MB, from the start line),
# median tokens/s (first 2 steps left out), the slowdown against keeping everything, and the
# same for PyTorch (which has no GELU-only mode) with the triad/PyTorch ratio.
#
#   jobs/bench-recompute.sh [--threads N] [--steps N]
#
# N defaults to nproc. Builds triad-train if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

threads=$(nproc 2>/dev/null || echo 2)
steps=6
config=inputs/runs/bench-recompute.ini
while [[ $# -gt 0 ]]; do
  [[ $# -ge 2 || ! $1 =~ ^--(threads|steps)$ ]] || { echo "bench-recompute: $1 needs a value" >&2; exit 2; }
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "bench-recompute: unknown option $1" >&2; exit 2 ;;
  esac
done
if ! [[ $threads =~ ^[1-9][0-9]*$ && $steps =~ ^[1-9][0-9]*$ && $steps -gt 2 ]]; then
  echo "bench-recompute: --threads must be >= 1 and --steps >= 3 (got $threads, $steps)" >&2
  exit 2
fi

. jobs/bench-prepare.sh
bench_prepare bench-recompute "$config" "$steps"

echo "== machine: $(nproc) cores, benchmark threads $threads; $(grep -m1 'model name' /proc/cpuinfo | sed 's/^.*: //')"
for mode in none gelu full; do
  echo "== triad, train.recompute = $mode"
  build/triad-train --config "$config" --data.train "$tmp/bench_train_*.bin" --run.dir "$tmp" \
    --run.name "$mode" --run.threads "$threads" --train.steps "$steps" --train.recompute "$mode" \
    --resume none | grep -E '^(triad|step)'
done
for mode in none full; do
  echo "== pytorch, recompute $mode"
  "$py" tests/reference/bench_torch.py --config "$config" --threads "$threads" --steps "$steps" \
    --recompute "$mode" --triad-metrics "$tmp/$mode/metrics.h5" \
    | tee "$tmp/torch_$mode.txt" | grep -E '^(torch step|pytorch|triad|ratio)'
done

"$py" - "$tmp" <<'PY'
import re, statistics, sys
from pathlib import Path
import h5py, numpy as np
tmp = Path(sys.argv[1])
rows = {}
for mode in ("none", "gelu", "full"):
    log = (tmp / mode / "log.txt").read_text()
    act = float(re.search(r"activations ([0-9.]+) MB", log).group(1))
    total = float(re.search(r"in all ([0-9.]+) MB", log).group(1))
    with h5py.File(tmp / mode / "metrics.h5", "r") as f:
        tps = float(np.median(np.asarray(f["train/tokens_per_sec"][2:], dtype=float)))
    torch_tps = None
    out = tmp / f"torch_{mode}.txt"
    if out.is_file():
        # The faster of the PyTorch thread settings counts (bench_torch.py runs both).
        torch_tps = max(float(m.group(1)) for m in
                        re.finditer(r"^pytorch.*?\s([0-9]+)\s+[0-9]+$", out.read_text(), re.M))
    rows[mode] = (act, total, tps, torch_tps)
print()
print("| recompute | triad activations MB | triad all buffers MB | triad tok/s | triad vs none "
      "| PyTorch tok/s | PyTorch vs none | triad / PyTorch |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for mode, (act, total, tps, ttps) in rows.items():
    base, tbase = rows["none"][2], rows["none"][3]
    torch_cells = (f"{ttps:.0f} | {ttps / tbase:.2f} | {tps / ttps:.2f}" if ttps
                   else "n/a (no GELU-only mode) | – | –")
    print(f"| {mode} | {act:.1f} | {total:.1f} | {tps:.0f} | {tps / base:.2f} | {torch_cells} |")
PY
