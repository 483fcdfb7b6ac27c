"""Greedy generation in PyTorch from a triad checkpoint: the peer of `triad-generate --top-k 1`
in jobs/bench-generate.sh and the independent reference of tests/python/test_generate.py.

Two ways, as PyTorch users write them:
  recompute  nanoGPT's generate(): every new token runs the model over the whole context
             (the last seq_len tokens) and keeps the last position's logits;
  kv-cache   the usual incremental decoding: the prompt once, then each token's layers over that
             token only, its attention over the kept keys and values (while the context fits;
             past seq_len the window slides and is recomputed, as triad does).

    python generate_torch.py --checkpoint CKPT.h5 --prompt-ids "1 2 3" --length 64 \
        [--mode recompute|kv-cache] [--threads N] [--dtype float32|float64] [--batch B]

--batch B decodes B copies of the prompt together (tokens/s counts all of them).

Prints the generated ids on one line, then "torch: N tokens in S s: R tokens/s (...)".
The model code is gpt_torch's (explicit LayerNorm, tanh-GELU, softmax attention).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
if __name__ == "__main__" and "--threads" in sys.argv:
    # The benchmark: thread counts and OpenBLAS kernels set before torch starts (bench_torch).
    import bench_torch  # noqa: E402

    _n = sys.argv[sys.argv.index("--threads") + 1]
    CORE_NOTE = bench_torch.prepare_torch(int(_n)) if _n.isdigit() and int(_n) > 0 else ""
import torch  # noqa: E402

import gpt_torch as ref  # noqa: E402


def block(params: Dict[str, torch.Tensor], cfg: ref.GptConfig, i: int, x: torch.Tensor,
          cache: Optional[List[Tuple[torch.Tensor, torch.Tensor]]]) -> torch.Tensor:
    """Layer i on x [B, T_new, C] at the positions after those cached (cache: per layer (K, V) of
    shape [B, kv heads, T_old, hd], extended here; K as attention uses it: normalized with
    model.qk_norm and rotated with rope); cache None: x is the whole context."""
    p = f"h/{i}/"
    B, T, C = x.shape
    nh, kv, hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
    h = ref.norm(params, cfg, p + "ln_1", x) if cfg.pre_norm else x  # (OLMo-2's: none)
    if cfg.kv_lora_rank:  # multi-head latent attention: the whole context each time
        if cache is not None:
            raise SystemExit("generate_torch: --mode kv-cache is not written for multi-head "
                             "latent attention (model.kv_lora_rank); use --mode recompute")
        return finish_block(params, cfg, p, x, ref.mla_attention(params, cfg, p, h))
    q, k, v = ref.linear(h, params[p + "attn/c_attn/weight"],
                         params.get(p + "attn/c_attn/bias")).split([nh * hd, kv * hd, kv * hd],
                                                                   dim=-1)
    qn, kn = ref.qk_norm_weights(params, cfg, p)
    if qn is not None and cfg.qk_norm_full:  # model.qk_norm_full: all of q, all of k
        q, k = ref.rms_norm(q, qn, cfg.norm_eps), ref.rms_norm(k, kn, cfg.norm_eps)
    q = q.reshape(B, T, nh, hd).transpose(1, 2)  # [B, nh, T, hd]
    k, v = (t.reshape(B, T, kv, hd).transpose(1, 2) for t in (k, v))  # [B, kv, T, hd]
    past = cache[i][0].shape[2] if cache is not None and len(cache) > i else 0
    if qn is not None and not cfg.qk_norm_full:  # model.qk_norm: each q and k head RMSNormed,
        q, k = ref.rms_norm(q, qn, cfg.norm_eps), ref.rms_norm(k, kn, cfg.norm_eps)  # unrotated
    # Interleaved local and global layers: a windowed one keeps to the last sliding_window keys
    # and rotates by its own base where model.rope_local_theta gives one (unscaled).
    windowed = cfg.windowed(i)
    theta, scaling = cfg.layer_rope(i)
    if theta is not None:
        # (the new rows sit at positions past ..; cached keys are rotated; NoPE layers: none)
        q, k = (ref.rotary(q, theta, past, scaling, rot=cfg.rotary_dim),
                ref.rotary(k, theta, past, scaling, rot=cfg.rotary_dim))
    if cache is not None:
        if len(cache) > i:
            pk, pv = cache[i]
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
            cache[i] = (k, v)
        else:
            cache.append((k, v))
    # The cache keeps kv heads; query head j attends with key/value head j % kv (gpt_torch.py).
    k, v = k.repeat(1, nh // kv, 1, 1), v.repeat(1, nh // kv, 1, 1)
    att = torch.matmul(q, k.transpose(-2, -1)) * cfg.scores_scale
    # Row r (position past + r) sees keys 0 .. past + r (the last sliding_window of them in a
    # windowed layer); attention sinks (model.attn_sinks) join each head's denominators.
    mask = torch.ones(T, past + T, dtype=torch.bool).tril(diagonal=past)
    if windowed:
        rows = torch.arange(T).unsqueeze(1) + past
        mask &= (rows - torch.arange(past + T).unsqueeze(0)) < cfg.sliding_window
    att = ref.softmax_with_sinks(att.masked_fill(~mask, float("-inf")),
                                 params.get(p + "attn/sinks"))
    return finish_block(params, cfg, p, x, torch.matmul(att, v).transpose(1, 2).reshape(B, T, nh * hd))


def finish_block(params: Dict[str, torch.Tensor], cfg: ref.GptConfig, p: str, x: torch.Tensor,
                 y: torch.Tensor) -> torch.Tensor:
    """The rest of layer p from the attention's output y: c_proj, the residual adds, the MLP."""
    a = ref.linear(y, params[p + "attn/c_proj/weight"], params.get(p + "attn/c_proj/bias"))
    if cfg.branch_norm:  # model.branch_norm: each branch's output normalized
        a = ref.norm(params, cfg, p + "ln_attn_out", a)
    x = x + a
    h = ref.norm(params, cfg, p + "ln_2", x) if cfg.pre_norm else x
    m = ref.mlp(params, cfg, p, h)
    if cfg.branch_norm:
        m = ref.norm(params, cfg, p + "ln_mlp_out", m)
    return x + m


def last_logits(params, cfg: ref.GptConfig, ids: torch.Tensor, pos0: int,
                cache: Optional[list]) -> torch.Tensor:
    """Logits [B, vocab_size] of the last of ids [B, T], which sit at positions pos0 ..."""
    x = params["wte/weight"][ids]
    if cfg.position != "rope":
        x = x + params["wpe/weight"][pos0:pos0 + ids.shape[1]]
    for i in range(cfg.n_layer):
        x = block(params, cfg, i, x, cache)
    x = ref.norm(params, cfg, "ln_f", x[:, -1])
    logits = torch.matmul(x, ref.head(params, cfg).t())[:, :cfg.vocab_size] / cfg.mup_mult
    if cfg.logit_softcap:  # model.logit_softcap
        logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
    return logits


@torch.no_grad()
def generate(params, cfg: ref.GptConfig, prompt: List[int], length: int, mode: str,
             batch: int = 1) -> List[int]:
    """Greedy continuation of prompt (batch copies of it decoded together; the first returned)."""
    tokens = torch.tensor([prompt] * batch, dtype=torch.long)
    cache: Optional[list] = None
    T = cfg.seq_len
    for _ in range(length):
        if mode == "kv-cache" and tokens.shape[1] <= T:
            if cache is None:  # the prompt
                cache = []
                logits = last_logits(params, cfg, tokens, 0, cache)
            else:  # the token added last
                logits = last_logits(params, cfg, tokens[:, -1:], tokens.shape[1] - 1, cache)
        else:
            logits = last_logits(params, cfg, tokens[:, -T:], 0, None)
        nxt = torch.argmax(logits, dim=-1, keepdim=True)  # the first of equal maxima
        tokens = torch.cat([tokens, nxt], dim=1)
    return tokens[0, len(prompt):].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--prompt-ids", required=True, help="token ids separated by spaces")
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--mode", choices=("recompute", "kv-cache"), default="kv-cache")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--batch", type=int, default=1,
                    help="copies of the prompt decoded together (tokens/s counts all of them)")
    a = ap.parse_args()
    if a.length < 0 or a.batch < 1:
        ap.error("--length must be >= 0 and --batch >= 1")
    prompt = [int(t) for t in a.prompt_ids.split()]
    if not prompt:
        ap.error("--prompt-ids is empty")
    cfg, params = ref.load_checkpoint(a.checkpoint, dtype=getattr(torch, a.dtype))
    t0 = time.perf_counter()
    out = generate(params, cfg, prompt, a.length, a.mode, a.batch)
    sec = time.perf_counter() - t0
    n = len(out) * a.batch
    print(" ".join(map(str, out)))
    print(f"torch: {n} tokens after a prompt of {len(prompt)} in {sec:.3f} s: "
          f"{n / sec:.1f} tokens/s ({a.dtype}, {a.mode}, batch {a.batch}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__})")


if __name__ == "__main__":
    main()
