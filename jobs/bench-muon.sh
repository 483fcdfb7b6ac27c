#!/usr/bin/env bash
# What Muon costs per optimizer step beside AdamW, triad against PyTorch on the same model shape
# and thread count. triad: triad-train's step time with optim.name = muon minus with adamw (a
# batch of 2 × 64 tokens, so that the forward and backward passes are small beside the
# optimizer; median of the steps after the first). PyTorch: the same model's parameters in
# fp32, Muon (tests/reference/gpt_torch.py's, torch.optim.Muon's documented algorithm, in fp32,
# as triad) on the attention and MLP matrices plus AdamW (foreach) on the rest, minus AdamW on
# everything. Prints both in ms and the ratio.
#
#   jobs/bench-muon.sh [--threads N] [--model INI] [--steps N]
#
# Defaults: nproc threads, inputs/models/gpt2-124m.ini, 4 steps. Builds triad-train if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

threads=$(nproc 2>/dev/null || echo 2)
model=inputs/models/gpt2-124m.ini
steps=4
while [[ $# -gt 0 ]]; do
  [[ $# -ge 2 || ! $1 =~ ^--(threads|model|steps)$ ]] || { echo "bench-muon: $1 needs a value" >&2; exit 2; }
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "bench-muon: unknown option $1" >&2; exit 2 ;;
  esac
done
if ! [[ $threads =~ ^[1-9][0-9]*$ && $steps =~ ^[1-9][0-9]*$ ]] || ((steps < 3)); then
  echo "bench-muon: --threads must be >= 1 and --steps >= 3 (got $threads, $steps)" >&2
  exit 2
fi
[[ -f $model ]] || { echo "bench-muon: --model $model: no such file" >&2; exit 2; }

. jobs/bench-prepare.sh
bench_python bench-muon
bench_build
export OMPI_MCA_ess_singleton_isolated=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=$threads
tmp=$(mktemp -d "${TMPDIR:-/tmp}/triad-bench-muon.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

{ sed -n '/^\[model\]/,/^\[/p' "$model" | grep -v '^\[[a-z]*\]$' | sed '1i [model]' | sed 's/^seq_len.*/seq_len = 64/'
  printf '[train]\nsteps = %s\nbatch_size = 2\nmicro_batch_size = 2\nwarmup_steps = 1\n' "$steps"
  printf '[data]\ntrain = %s/bench_train_*.bin\nval = %s/bench_train_*.bin\n' "$tmp" "$tmp"
  printf '[eval]\nsequences = 0\nevery = 0\n[checkpoint]\nevery = 0\n[sample]\nlength = 0\n'
  printf '[run]\ndir = %s/runs\npeak_tflops = 1\nthreads = %s\n' "$tmp" "$threads"; } >"$tmp/run.ini"
bench_random_shard "$tmp/bench_train_000.bin" "$tmp/run.ini" "$steps"

step_ms() {  # median step time (ms) of the steps after the first, from metrics.h5
  "$py" -c 'import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as f: print(float(np.median(f["train/step_ms"][1:])))' "$1"
}
for opt in adamw muon; do
  build/triad-train --config "$tmp/run.ini" --optim.name "$opt" --run.name "$opt" --resume none >"$tmp/$opt.txt" 2>&1 ||
    { tail -5 "$tmp/$opt.txt"; exit 1; }
done
head -1 "$tmp/adamw.txt"
adamw=$(step_ms "$tmp/runs/adamw/metrics.h5")
muon=$(step_ms "$tmp/runs/muon/metrics.h5")

"$py" - "$model" "$threads" "$steps" "$adamw" "$muon" <<'PY'
import configparser, sys, time
import torch
sys.path.insert(0, "tests/reference")
import gpt_torch as ref
model, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t_adamw, t_muon = float(sys.argv[4]), float(sys.argv[5])
torch.set_num_threads(threads)
cp = configparser.ConfigParser(inline_comment_prefixes=("#",))
cp.read(model)
m = cp["model"]
cfg = ref.GptConfig(n_layer=int(m["n_layer"]), n_head=int(m["n_head"]), n_embd=int(m["n_embd"]),
                    seq_len=int(m["seq_len"]), vocab_size=int(m.get("vocab_size", "50257")))
g = torch.Generator().manual_seed(0)
params = {n: torch.nn.Parameter(torch.randn(s, generator=g) * 0.02)
          for n, s in ref.param_shapes(cfg).items()}
for p in params.values():
    p.grad = torch.randn(p.shape, generator=g) * 1e-3
mats = [p for n, p in params.items() if ref.is_muon_matrix(n)]
rest = [p for n, p in params.items() if not ref.is_muon_matrix(n)]

def timed(step):
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    return sorted(ts[1:])[len(ts[1:]) // 2] * 1e3

all_adamw = torch.optim.AdamW(list(params.values()), lr=1e-3, foreach=True)
muon = ref.Muon(mats, lr=0.02, weight_decay=0.1)
rest_adamw = torch.optim.AdamW(rest, lr=1e-3, foreach=True)
with torch.no_grad():
    p_adamw = timed(all_adamw.step)
    p_muon = timed(lambda: (muon.step(), rest_adamw.step()))
extra_triad, extra_torch = t_muon - t_adamw, p_muon - p_adamw
print(f"== {cfg.n_layer} layers, C={cfg.n_embd}: {len(mats)} Muon matrices; {threads} threads; "
      f"median of steps 2..{steps}")
print(f"triad   step: adamw {t_adamw:.0f} ms, muon {t_muon:.0f} ms -> Muon costs {extra_triad:.0f} ms")
print(f"PyTorch optimizer step: adamw {p_adamw:.0f} ms, muon + adamw {p_muon:.0f} ms -> Muon costs "
      f"{extra_torch:.0f} ms")
print(f"RATIO Muon's cost PyTorch/triad: {extra_torch / extra_triad:.2f}x")
PY
