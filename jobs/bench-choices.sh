#!/usr/bin/env bash
# Multiple-choice evaluation speed: `triad-train --eval-only --eval.choices` (both
# eval.choice_mode ways, cached and batched) beside the PyTorch
# peer scoring the same examples the way llm.c's and nanoGPT's hellaswag.py do
# (tests/reference/choices_torch.py: transformers' GPT2LMHeadModel, one forward pass over the
# context + ending rows of each example), on the same weights (a seeded GPT2LMHeadModel exported
# by transformers, imported by triad-convert), the same HellaSwag-shaped examples (jobs/
# prepare_choices.py: a context of 20–60 words, four endings of 5–25 words) and the same thread
# count (the peer also at 1 thread; its best counts). Prints examples/s of each (best of R
# runs), the ratio, and whether both scored the same (accuracies; mean ending loss to 1e-4).
#
#   jobs/bench-choices.sh [--threads N] [--examples N] [--model INI] [--repeat R]
#
# Defaults: nproc threads, 40 examples, inputs/models/gpt2-124m.ini, R = 2. Builds triad-train
# if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

threads=$(nproc 2>/dev/null || echo 2)
examples=40
model=inputs/models/gpt2-124m.ini
repeat=2
while [[ $# -gt 0 ]]; do
  [[ $# -ge 2 || ! $1 =~ ^--(threads|examples|model|repeat)$ ]] || { echo "bench-choices: $1 needs a value" >&2; exit 2; }
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --examples) examples=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "bench-choices: unknown option $1" >&2; exit 2 ;;
  esac
done
if ! [[ $threads =~ ^[1-9][0-9]*$ && $examples =~ ^[1-9][0-9]*$ && $repeat =~ ^[1-9][0-9]*$ ]]; then
  echo "bench-choices: --threads, --examples and --repeat must be >= 1 (got $threads, $examples, $repeat)" >&2
  exit 2
fi
[[ -f $model ]] || { echo "bench-choices: --model $model: no such file" >&2; exit 2; }
vocab=data/vocab/gpt2.tiktoken
[[ -f $vocab ]] || { echo "bench-choices: $vocab missing (run jobs/setup.sh)" >&2; exit 1; }

. jobs/bench-prepare.sh
bench_python bench-choices
bench_build
export OMPI_MCA_ess_singleton_isolated=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/triad-bench-choices.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# The weights: transformers' own GPT-2 of the model's shape, seeded; triad imports them.
"$py" - "$model" "$tmp" "$examples" <<'PY'
import configparser, json, random, sys
import torch, transformers
cp = configparser.ConfigParser(inline_comment_prefixes=("#",))
cp.read(sys.argv[1])
m = cp["model"]
torch.manual_seed(1)
cfg = transformers.GPT2Config(n_layer=int(m["n_layer"]), n_head=int(m["n_head"]),
                              n_embd=int(m["n_embd"]), n_positions=int(m["seq_len"]),
                              vocab_size=int(m.get("vocab_size", "50257")))
transformers.GPT2LMHeadModel(cfg).save_pretrained(sys.argv[2] + "/hf", safe_serialization=True)
words = ("the a man woman child dog cat ball house garden river city road car boat tree water "
         "runs walks jumps throws holds opens closes takes puts looks smiles waves sits stands "
         "slowly quickly then and but because while after before into over under with from "
         "red blue green small large old new happy tired").split()
rnd = random.Random(2)
text = lambda a, b: " ".join(rnd.choice(words) for _ in range(rnd.randint(a, b)))
with open(sys.argv[2] + "/ex.jsonl", "w") as f:
    for i in range(int(sys.argv[3])):
        f.write(json.dumps({"ctx": text(20, 60).capitalize() + ".",
                            "endings": [text(5, 25) + "." for _ in range(4)],
                            "label": rnd.randrange(4)}) + "\n")
print(f"== model {sys.argv[1]}: {cfg.n_layer} layers, C={cfg.n_embd}, {cfg.n_head} heads, "
      f"context {cfg.n_positions}, vocabulary {cfg.vocab_size} (seeded random weights)")
PY
"$py" -m analysis.convert_weights import "$tmp/hf" "$tmp/model.h5" >/dev/null
"$py" jobs/prepare_choices.py "$tmp/ex.jsonl" "$tmp/ex.bin" --vocab "$vocab" >/dev/null
{ sed -n '/^\[model\]/,/^\[/p' "$model" | grep -v '^\[[a-z]*\]$' | sed '1i [model]'
  printf '[eval]\nchoices = %s\nsequences = 0\n[run]\nname = bench\ndir = %s/runs\npeak_tflops = 1\n' \
    "$tmp/ex.bin" "$tmp"; } >"$tmp/run.ini"
echo "== $examples examples, 4 endings each; $threads threads; best of $repeat"
echo "== machine: $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | sed 's/^.*: //')"

for r in $(seq "$repeat"); do
  for mode in cached batched; do
    OMP_NUM_THREADS=$threads build/triad-train --config "$tmp/run.ini" --eval-only \
      --init-from "$tmp/model.h5" --eval.choice_mode "$mode" >"$tmp/triad_${mode}_$r.txt" 2>&1 \
      || { cat "$tmp/triad_${mode}_$r.txt" >&2; exit 1; }
  done
  for pt in $( (echo "$threads"; echo 1) | sort -u); do
    "$py" tests/reference/choices_torch.py --hf "$tmp/hf" --choices "$tmp/ex.bin" \
      --vocab "$vocab" --threads "$pt" >"$tmp/torch_${r}_$pt.txt" || { cat "$tmp/torch_${r}_$pt.txt" >&2; exit 1; }
  done
done
grep -h 'choice accuracy' "$tmp"/triad_*_1.txt
tail -qn1 "$tmp"/torch_1_*.txt
# triad's eval-only line ends "| S s" (the evaluation alone, the load excluded).
best_s() { sed -n 's/.*| \([0-9.]*\) s$/\1/p' "$@" | sort -g | head -1; }
t_best=$(best_s "$tmp"/triad_cached_*.txt)
b_best=$(best_s "$tmp"/triad_batched_*.txt)
p_best=$(grep -ho 'examples in [0-9.]* s' "$tmp"/torch_*.txt | awk '{print $3}' | sort -g | head -1)
"$py" - "$tmp" "$examples" "$t_best" "$p_best" "$b_best" <<'PY'
import re, sys
tmp, n, t, p, b = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:6])
def scores(path):
    # accuracy, by summed loss, by characters (lm-eval's acc_norm), mean ending loss
    m = re.search(r"choice accuracy ([0-9.]+) \(by summed loss ([0-9.]+),"
                  r"(?: by characters ([0-9.]+),)? ending loss ([0-9.]+)", open(path).read())
    return tuple(float(g) if g else None for g in m.groups())
a, a2, c = (scores(f"{tmp}/{f}.txt") for f in ("triad_cached_1", "triad_batched_1", "torch_1_1"))
same = all(x[:3] == c[:3] and abs(x[3] - c[3]) <= 1e-4 * c[3] for x in (a, a2))
print("| scorer | examples/s |\n| --- | ---: |")
print(f"| triad, cached (the context once, its keys and values kept for the endings) | {n / t:.2f} |")
print(f"| triad, batched (rows of several examples per pass, as llm.c) | {n / b:.2f} |")
print(f"| PyTorch, transformers (context + ending rows, one pass) | {n / p:.2f} |")
print(f"ratio triad/PyTorch: cached {p / t:.2f}, batched {p / b:.2f}")
print(f"same scores: {'yes' if same else 'no'} (triad {a} and {a2}, PyTorch {c})")
PY
