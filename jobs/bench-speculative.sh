#!/usr/bin/env bash
# Speculative decoding's speed: triad-generate with and without --draft beside Hugging Face
# transformers' assisted generation (generate(assistant_model=...): the same draft, the same
# tokens drafted a round, a constant schedule) and its plain generate(), on the same two
# checkpoints (exported to Hugging Face's GPT-2 by triad-convert), greedy decoding of the same
# prompt at the same thread count. Prints tokens/s of each (the best of R runs), the ratios, the
# drafted tokens each kept, and whether all four produced the same tokens.
#
#   jobs/bench-speculative.sh --target CKPT --draft CKPT [--threads N] [--length L] [--tokens K]
#                             [--repeat R]
#
# Both checkpoints: GPT-2 models over GPT-2's tokens (e.g. the quick start's and a smaller model
# trained on the same data); the 16-token prompt and L tokens must fit the target's context.
# Defaults: nproc threads, L = 100, K = 4, R = 3.
set -euo pipefail
cd "$(dirname "$0")/.."

threads=$(nproc 2>/dev/null || echo 2)
length=100
tokens=4
repeat=3
target=""
draft=""
while [[ $# -gt 0 ]]; do
  [[ $# -ge 2 || ! $1 =~ ^--(threads|length|tokens|repeat|target|draft)$ ]] || { echo "bench-speculative: $1 needs a value" >&2; exit 2; }
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --length) length=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --target) target=$2; shift 2 ;;
    --draft) draft=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "bench-speculative: unknown option $1" >&2; exit 2 ;;
  esac
done
if ! [[ $threads =~ ^[1-9][0-9]*$ && $length =~ ^[1-9][0-9]*$ && $repeat =~ ^[1-9][0-9]*$ &&
      $tokens =~ ^[1-9][0-9]*$ ]]; then
  echo "bench-speculative: --threads, --length, --tokens and --repeat must be >= 1 (got $threads, $length, $tokens, $repeat)" >&2
  exit 2
fi
for f in "$target" "$draft"; do
  [[ -n $f ]] || { echo "bench-speculative: give --target CKPT and --draft CKPT" >&2; exit 2; }
  [[ -f $f ]] || { echo "bench-speculative: $f: no such file" >&2; exit 2; }
done
vocab=data/vocab/gpt2.tiktoken
[[ -f $vocab ]] || { echo "bench-speculative: $vocab missing (run jobs/setup.sh)" >&2; exit 1; }

. jobs/bench-prepare.sh
bench_python bench-speculative
"$py" -c 'import transformers' 2>/dev/null || { echo "bench-speculative: $py lacks transformers (run jobs/setup.sh)" >&2; exit 1; }
bench_build triad-generate triad-tokenize
export OMPI_MCA_ess_singleton_isolated=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/triad-bench-speculative.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for m in target draft; do
  "$py" -m analysis.convert_weights export "${!m}" "$tmp/hf_$m" --to hf --vocab none >/dev/null
done

text="And the LORD said unto Moses, Stretch out thine hand over the sea, that the waters may come again."
ids=$(printf '%s' "$text" | build/triad-tokenize encode --vocab "$vocab" | head -16 | tr '\n' ' ')
echo "== target $target, draft $draft; $tokens drafted a round"
echo "== prompt ids: $ids; $length tokens, greedy, $threads threads; best of $repeat"
echo "== machine: $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | sed 's/^.*: //')"

best() {  # best tokens/s of the "... N tokens/s" lines of the files given
  grep -ho '[0-9.]* tokens/s' "$@" | sort -g | tail -1 | cut -d' ' -f1
}
for r in $(seq "$repeat"); do
  for mode in plain draft; do
    flag=(); [[ $mode == draft ]] && flag=(--draft "$draft" --draft-tokens "$tokens")
    build/triad-generate --checkpoint "$target" --vocab "$vocab" --prompt-ids "$ids" \
      --length "$length" --top-k 1 --threads "$threads" --output ids --timing "${flag[@]}" \
      >"$tmp/triad_$mode.ids" 2>"$tmp/triad_${mode}_$r.txt" \
      || { cat "$tmp/triad_${mode}_$r.txt" >&2; exit 1; }
  done
  for mode in plain assisted; do
    "$py" - "$tmp/hf_target" "$tmp/hf_draft" "$ids" "$length" "$tokens" "$threads" "$mode" \
      >"$tmp/hf_${mode}_$r.txt" <<'PY' || { cat "$tmp/hf_${mode}_$r.txt" >&2; exit 1; }
import sys
import time

import torch
import transformers.generation.utils as generation
from transformers import GPT2LMHeadModel

# generate() asks whether the model is FSDP's, importing torch.distributed.fsdp, which Debian's
# torch 1.13 cannot import under Python 3.11; no model here is.
generation.is_fsdp_managed_module = lambda module: False

target, draft, ids, length, k, threads, mode = sys.argv[1:]
torch.set_num_threads(int(threads))
model = GPT2LMHeadModel.from_pretrained(target).eval()
helper = GPT2LMHeadModel.from_pretrained(draft).eval() if mode == "assisted" else None
for m in (model, helper):
    if m is not None:
        m.generation_config.eos_token_id = None  # (greedy to the length asked, as triad's)
        m.generation_config.pad_token_id = 0
if helper is not None:
    helper.generation_config.num_assistant_tokens = int(k)
    helper.generation_config.num_assistant_tokens_schedule = "constant"
x = torch.tensor([[int(t) for t in ids.split()]])
if x.shape[1] + int(length) > model.config.n_positions:
    sys.exit(f"the prompt's {x.shape[1]} tokens and --length {length} exceed the target's "
             f"context of {model.config.n_positions}")
with torch.no_grad():
    model.generate(x, max_new_tokens=4, do_sample=False, assistant_model=helper)  # warm-up
    t0 = time.perf_counter()
    out = model.generate(x, max_new_tokens=int(length), do_sample=False, assistant_model=helper)
    dt = time.perf_counter() - t0
new = out[0, x.shape[1]:].tolist()
print(" ".join(map(str, new)))
print(f"transformers {mode}: {len(new)} tokens in {dt:.3f} s: {len(new) / dt:.3f} tokens/s")
PY
    head -1 "$tmp/hf_${mode}_$r.txt" >"$tmp/hf_$mode.ids"
  done
done
tail -qn1 "$tmp/triad_draft_1.txt" "$tmp"/hf_*_1.txt
t_p=$(best "$tmp"/triad_plain_*.txt); t_d=$(best "$tmp"/triad_draft_*.txt)
h_p=$(best "$tmp"/hf_plain_*.txt); h_a=$(best "$tmp"/hf_assisted_*.txt)
kept=$(grep -ho '[0-9]* of [0-9]* drafted tokens kept ([0-9.]*%)' "$tmp/triad_draft_1.txt")
same=yes
tr -s ' \n' '  ' <"$tmp/triad_plain.ids" | sed 's/ *$//' >"$tmp/a"
for f in triad_draft hf_plain hf_assisted; do
  tr -s ' \n' '  ' <"$tmp/$f.ids" | sed 's/ *$//' >"$tmp/b"
  cmp -s "$tmp/a" "$tmp/b" || same="no ($f differs from triad's plain greedy tokens)"
done
awk -v a="$t_p" -v b="$t_d" -v c="$h_p" -v d="$h_a" -v k="$tokens" -v kept="$kept" -v same="$same" 'BEGIN {
  printf "| generator | tokens/s |\n| --- | ---: |\n"
  printf "| triad | %.1f |\n| triad, --draft (%d a round) | %.1f |\n", a, k, b
  printf "| transformers generate() | %.1f |\n| transformers, assisted (%d a round) | %.1f |\n", c, k, d
  printf "draft speed-up: triad %.2fx, transformers %.2fx; triad/transformers: %.2f plain, %.2f with the draft\n", b / a, d / c, a / c, b / d
  printf "triad: %s; same tokens from all: %s\n", kept, same
}'
