#!/usr/bin/env bash
# Fill-in-the-middle between characters (data.fim_granularity = character) as the loader reads
# training sequences, beside a Python peer that rearranges them as Megatron's FIM dataset does
# (tiktoken decodes a fragment to a str, the str is cut at two character indices, each piece is
# encoded by tiktoken again; the fragments and draws of tests/python/test_fim.py), on the same
# sequences of the default corpus's shards (GPT-2 tokens, documents cut at <|endoftext|>, rate
# 0.5). The peer's sequences must be triad's, id for id. Prints M tokens/s on one thread and the
# ratio; triad-bench's token-level row too.
#
#   jobs/bench-fim.sh [--sequences N] [--seq-len T]
#
# Defaults: 512 sequences of 1024 tokens. Needs jobs/setup.sh's shards and .venv (tiktoken).
set -euo pipefail
cd "$(dirname "$0")/.."

sequences=512
seq_len=1024
while [[ $# -gt 0 ]]; do
  [[ $# -ge 2 || ! $1 =~ ^--(sequences|seq-len)$ ]] || { echo "bench-fim: $1 needs a value" >&2; exit 2; }
  case "$1" in
    --sequences) sequences=$2; shift 2 ;;
    --seq-len) seq_len=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "bench-fim: unknown option '$1'" >&2; exit 2 ;;
  esac
done
source jobs/bench-prepare.sh
bench_build triad-bench
bench_python bench-fim
data=data/shards/default/default_train_000000.bin
[[ -f $data ]] || { echo "bench-fim: $data missing (run jobs/setup.sh)" >&2; exit 1; }
dump=$(mktemp)
trap 'rm -f "$dump"' EXIT
common=(--data "$data" --vocab data/vocab/gpt2.tiktoken --split 50256 --rate 0.5
        --sequences "$sequences" --seq-len "$seq_len")
OMPI_MCA_ess_singleton_isolated=1 build/triad-bench fim "${common[@]}" --tokens "50252, 50253, 50254" \
  --granularity token | sed -n '1,3p'
triad=$(OMPI_MCA_ess_singleton_isolated=1 build/triad-bench fim "${common[@]}" \
  --tokens "50252, 50253, 50254, 50255" --granularity character --dump "$dump")
echo "$triad" | sed -n '2,3p'
"$py" - "$data" "$dump" "$sequences" "$seq_len" "$triad" <<'PY'
import re, sys, time
import numpy as np
sys.path[:0] = ["tests/python", "tests/reference"]
import gpt_torch as ref
from test_fim import C_MIDDLE, C_PAD, C_PREFIX, C_SUFFIX, by_characters, rearranged
from triad_run import gpt2_tiktoken

data, dump, n, T, triad = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
tokens = ref.read_token_shard(data).astype(np.int64)
n = min(n, (tokens.size - 1) // T)
enc = gpt2_tiktoken()
ones = np.ones(T + 1, dtype=np.uint8)


def megatron_style(seg, h, u, rate):
    """One fragment as Megatron's _permute: the text, its characters cut, the pieces encoded."""
    if u(0) >= rate:
        return seg
    try:
        text = enc.decode_bytes([t for t, _ in seg]).decode("utf-8")
    except UnicodeDecodeError:  # a character cut by the window's edge: unit by unit
        return by_characters(enc, seg, h, u, rate, 0.5)
    a, b = sorted((h(2) % (len(text) + 1), h(3) % (len(text) + 1)))
    pre, mid, suf = (enc.encode_ordinary(x) for x in (text[:a], text[a:b], text[b:]))
    if u(1) < 0.5:
        ids = [C_PREFIX, C_SUFFIX] + suf + [C_MIDDLE] + pre + mid
    else:
        ids = [C_PREFIX] + pre + [C_SUFFIX] + suf + [C_MIDDLE] + mid
    return [(t, 1) for t in ids]


t0 = time.perf_counter()
peer = [rearranged(tokens[k * T:k * T + T + 1], ones, k, 1, 0.5, 50256, megatron_style,
                   pad=C_PAD)[0][:-1] for k in range(n)]
seconds = time.perf_counter() - t0
got = np.fromfile(dump, dtype=np.int32).reshape(n, T)
same = sum(np.array_equal(got[k], peer[k]) for k in range(n))
if same != n:
    sys.exit(f"bench-fim: the peer's sequences differ from triad's in {n - same} of {n}")
m = re.search(r"rearranged_s=([0-9.]+)", triad)
ours = float(m.group(1))
print(f"  Python peer (tiktoken) {n * T / seconds / 1e6:8.2f} M tokens/s ({seconds:.3f} s); "
      f"{n} sequences equal to triad's")
print(f"  triad / peer: {seconds / ours:.1f}x")
PY
