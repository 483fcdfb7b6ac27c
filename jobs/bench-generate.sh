#!/usr/bin/env bash
# Generation speed: triad-generate with and without its cache of keys and values, beside the
# PyTorch peer (tests/reference/generate_torch.py) recomputing the context for every token
# (nanoGPT's generate) and with a KV cache, on the same seeded random GPT-2 weights, the same
# prompt, greedy decoding and the same thread count (the peer also at 1 thread, where it is often
# faster; its best counts); then K samples decoded together (triad-generate --samples K --batch K,
# the peer's KV cache over a batch of K). Prints tokens/s of each (the best of R runs), the ratios,
# and whether all produced the same tokens (an independent check of triad's decoding).
#
#   jobs/bench-generate.sh [--threads N] [--length L] [--model INI] [--repeat R] [--batch K]
#
# Defaults: nproc threads, 256 tokens after a 16-token prompt, inputs/models/gpt2-124m.ini (GPT-2
# 124M, context 1024), R = 3, K = 8. Builds triad-generate and triad-tokenize if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

threads=$(nproc 2>/dev/null || echo 2)
length=256
model=inputs/models/gpt2-124m.ini
repeat=3
batch=8
while [[ $# -gt 0 ]]; do
  [[ $# -ge 2 || ! $1 =~ ^--(threads|length|model|repeat|batch)$ ]] || { echo "bench-generate: $1 needs a value" >&2; exit 2; }
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --length) length=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "bench-generate: unknown option $1" >&2; exit 2 ;;
  esac
done
if ! [[ $threads =~ ^[1-9][0-9]*$ && $length =~ ^[1-9][0-9]*$ && $repeat =~ ^[1-9][0-9]*$ &&
      $batch =~ ^[1-9][0-9]*$ ]]; then
  echo "bench-generate: --threads, --length, --repeat and --batch must be >= 1 (got $threads, $length, $repeat, $batch)" >&2
  exit 2
fi
[[ -f $model ]] || { echo "bench-generate: --model $model: no such file" >&2; exit 2; }
vocab=data/vocab/gpt2.tiktoken
[[ -f $vocab ]] || { echo "bench-generate: $vocab missing (run jobs/setup.sh)" >&2; exit 1; }

. jobs/bench-prepare.sh
bench_python bench-generate
bench_build triad-generate triad-tokenize
export OMPI_MCA_ess_singleton_isolated=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/triad-bench-generate.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Seeded random weights of the model (DESIGN.md §3's init), written as a triad checkpoint.
"$py" - "$model" "$tmp/model.h5" <<'PY'
import configparser, sys
sys.path.insert(0, "tests/reference")
import gpt_torch as ref
cp = configparser.ConfigParser(inline_comment_prefixes=("#",))
cp.read(sys.argv[1])
m = cp["model"]
cfg = ref.GptConfig(int(m["n_layer"]), int(m["n_head"]), int(m["n_embd"]), int(m["seq_len"]),
                    int(m.get("vocab_size", "50257")))
ref.write_checkpoint(sys.argv[2], cfg, ref.random_weights(cfg, 1, perturb=False))
print(f"== model {sys.argv[1]}: {cfg.n_layer} layers, C={cfg.n_embd}, {cfg.n_head} heads, "
      f"context {cfg.seq_len}, vocabulary {cfg.vocab_size} (seeded random weights)")
PY
text="It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife."
ids=$(printf '%s' "$text" | build/triad-tokenize encode --vocab "$vocab" | head -16 | tr '\n' ' ')
echo "== prompt ids: $ids; $length tokens, greedy, $threads threads; best of $repeat"
echo "== machine: $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | sed 's/^.*: //')"

best() {  # best tokens/s of the "... N tokens/s" lines of the files given
  grep -ho '[0-9.]* tokens/s' "$@" | sort -g | tail -1 | cut -d' ' -f1
}
for r in $(seq "$repeat"); do
  for mode in on off batch; do
    flag=(); [[ $mode == off ]] && flag=(--no-kv-cache)
    [[ $mode == batch ]] && flag=(--samples "$batch" --batch "$batch")
    build/triad-generate --checkpoint "$tmp/model.h5" --vocab "$vocab" --prompt-ids "$ids" \
      --length "$length" --top-k 1 --threads "$threads" --output ids --timing ${flag[@]+"${flag[@]}"} \
      >"$tmp/triad_$mode.all" 2>"$tmp/triad_${mode}_$r.txt" \
      || { cat "$tmp/triad_${mode}_$r.txt" >&2; exit 1; }
    head -1 "$tmp/triad_$mode.all" >"$tmp/triad_$mode.ids"
  done
  # The peer at the same thread count and at 1 (PyTorch 1.13's OpenMP and OpenBLAS threads
  # contend on small products: one thread is often faster); the best counts.
  for pt in $( (echo "$threads"; echo 1) | sort -u); do
    for mode in kv-cache recompute batch; do
      args=(--mode "$mode"); [[ $mode == batch ]] && args=(--mode kv-cache --batch "$batch")
      "$py" tests/reference/generate_torch.py --checkpoint "$tmp/model.h5" --prompt-ids "$ids" \
        --length "$length" --threads "$pt" "${args[@]}" >"$tmp/torch_${mode}_${r}_$pt.txt" \
        || { cat "$tmp/torch_${mode}_${r}_$pt.txt" >&2; exit 1; }
      head -1 "$tmp/torch_${mode}_${r}_$pt.txt" >"$tmp/torch_$mode.ids"
    done
  done
done
tail -1 "$tmp/triad_on_1.txt"
tail -qn1 "$tmp"/torch_*_1_*.txt
t_on=$(best "$tmp"/triad_on_*.txt); t_off=$(best "$tmp"/triad_off_*.txt)
p_kv=$(best "$tmp"/torch_kv-cache_*.txt); p_re=$(best "$tmp"/torch_recompute_*.txt)
t_b=$(best "$tmp"/triad_batch_*.txt); p_b=$(best "$tmp"/torch_batch_*.txt)
same=yes
# Greedy: every sample of the batch is the single one.
[[ $(sort -u "$tmp/triad_batch.all" | wc -l) == 1 ]] || same="no (triad's batched samples differ)"
for f in triad_off triad_batch torch_kv-cache torch_recompute torch_batch; do
  cmp -s "$tmp/triad_on.ids" "$tmp/$f.ids" || same="no ($f differs from triad with its cache)"
done
awk -v a="$t_on" -v b="$t_off" -v c="$p_kv" -v d="$p_re" -v e="$t_b" -v f="$p_b" -v k="$batch" -v same="$same" 'BEGIN {
  printf "| generator | tokens/s |\n| --- | ---: |\n"
  printf "| triad, KV cache | %.1f |\n| triad, recomputing the context | %.1f |\n", a, b
  printf "| PyTorch, KV cache | %.1f |\n| PyTorch, recomputing the context (nanoGPT) | %.1f |\n", c, d
  printf "| triad, KV cache, %d samples together | %.1f |\n| PyTorch, KV cache, batch of %d | %.1f |\n", k, e, k, f
  printf "ratio triad/PyTorch with KV cache: %.2f; without: %.2f; %d together: %.2f; triad cache speed-up: %.2fx, batch of %d: %.2fx more\n", a / c, b / d, k, e / f, a / b, k, e / a
  printf "same tokens from all: %s\n", same
}'
