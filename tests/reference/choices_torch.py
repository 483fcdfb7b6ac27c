#!/usr/bin/env python3
"""Multiple-choice scoring in PyTorch the way llm.c's dev/data/hellaswag.py and nanoGPT's
hellaswag.py do it: the peer of `triad-train --eval-only --eval.choices` in
jobs/bench-choices.sh.

Per example, one row per ending (the context, then the ending; shorter rows padded), one
forward pass of transformers' GPT2LMHeadModel over all of them, the cross-entropy of each
ending's tokens; the least mean loss picks (llm.c's accuracy), and the least summed loss for
the second number. With --vocab (GPT-2's ranks file), also lm-eval-harness's acc_norm: the least
summed loss per character of the ending's text, tiktoken decoding the tokens (less the space
before the ending). Contexts keep their last seq_len − (longest ending) tokens, as triad's.

    choices_torch.py --hf DIR --choices FILE.bin [--vocab gpt2.tiktoken] [--threads N]
                     [--limit N] [--dtype float32]

Prints "choice accuracy A (by summed loss B[, by characters C], ending loss L) | N examples" as
triad does, then "torch: N examples in S s: R examples/s (...)".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
if __name__ == "__main__" and "--threads" in sys.argv:
    import bench_torch  # noqa: E402  (threads and OpenBLAS kernels set before torch starts)

    _n = sys.argv[sys.argv.index("--threads") + 1]
    CORE_NOTE = bench_torch.prepare_torch(int(_n)) if _n.isdigit() and int(_n) > 0 else ""
else:
    CORE_NOTE = ""
import torch  # noqa: E402


def read_choices(path):
    """llm.c's eval file -> [(label, context tokens, [ending tokens])]."""
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240522 and header[1] == 1, f"{path}: not an eval file"
    w = np.fromfile(path, dtype="<u2", offset=1024).astype(np.int64).tolist()
    out, at = [], 0
    for _ in range(int(header[2])):
        assert w[at] == 65535, f"{path}: no example start at word {at}"
        size = w[at + 1] // 2
        ex = w[at:at + size]
        label, n_end, i = ex[3], ex[4], 5
        ctx = ex[i + 1:i + 1 + ex[i]]
        i += 1 + ex[i]
        ends = []
        for _ in range(n_end):
            ends.append(ex[i + 1:i + 1 + ex[i]])
            i += 1 + ex[i]
        assert i == size, f"{path}: an example's fields do not add up to its size"
        out.append((label, ctx, ends))
        at += size
    assert at == len(w), f"{path}: data after the last example"
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True, help="HF model directory (triad-convert export)")
    ap.add_argument("--choices", required=True)
    ap.add_argument("--vocab", help="GPT-2's ranks file: also the accuracy by characters")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = ap.parse_args()
    from transformers import GPT2LMHeadModel

    dtype = getattr(torch, args.dtype)
    model = GPT2LMHeadModel.from_pretrained(args.hf).to(dtype).eval()
    T = model.config.n_positions
    examples = read_choices(args.choices)
    if args.limit:
        examples = examples[:args.limit]
    chars = None
    if args.vocab:
        from tiktoken import Encoding
        from tiktoken.load import load_tiktoken_bpe
        enc = Encoding(name="gpt2-local", explicit_n_vocab=50257,
                       mergeable_ranks=load_tiktoken_bpe(args.vocab), special_tokens={
                           "<|endoftext|>": 50256}, pat_str=r"\S+")  # decoding only

        def length(ids):
            text = enc.decode(ids)
            return max(1, len(text[1:] if text.startswith(" ") else text))

        chars = [[length(e) for e in ends] for _, _, ends in examples]
    correct = correct_sum = correct_chars = 0
    ending_losses = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for k, (label, ctx, ends) in enumerate(examples):
            m = max(len(e) for e in ends)
            ctx = ctx[-(T - m):]
            L = len(ctx) + m
            tokens = torch.zeros((len(ends), L), dtype=torch.long)
            mask = torch.zeros((len(ends), L), dtype=torch.long)
            for i, e in enumerate(ends):
                tokens[i, :len(ctx) + len(e)] = torch.tensor(ctx + e)
                mask[i, len(ctx):len(ctx) + len(e)] = 1
            logits = model(tokens).logits
            # position t predicts token t + 1
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1),
                reduction="none").view(len(ends), -1)
            m_shift = mask[:, 1:]
            sums = (losses * m_shift).sum(1).double()
            means = sums / m_shift.sum(1)
            correct += int(means.argmin()) == label
            correct_sum += int(sums.argmin()) == label
            if chars:
                correct_chars += int((sums / torch.tensor(chars[k]).double()).argmin()) == label
            ending_losses += means.tolist()
    dt = time.perf_counter() - t0
    n = len(examples)
    by_chars = f", by characters {correct_chars / n:.4f}" if chars else ""
    print(f"choice accuracy {correct / n:.4f} (by summed loss {correct_sum / n:.4f}{by_chars}, "
          f"ending loss {float(np.mean(ending_losses)):.6f}) | {n} examples")
    print(f"torch: {n} examples in {dt:.2f} s: {n / dt:.2f} examples/s ({args.dtype}, "
          f"{torch.get_num_threads()} threads{CORE_NOTE}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
