"""An independent PyTorch reference of triad's GPT-2 (DESIGN.md §3) and writers/readers for
triad's file formats (DESIGN.md §5): checkpoints (h5py), token shards (llm.c format) and
metrics.

Written plainly on purpose — explicit LayerNorm, tanh-GELU, masked softmax attention — so that
it shares no code or library kernels with triad beyond matrix products. Works with PyTorch 1.13
(Debian's python3-torch) and newer.

The model is a dict name -> tensor with the names and shapes of DESIGN.md §3:

    wte/weight [padded_vocab_size, C]   wpe/weight [seq_len, C]
    h/{i}/ln_1/{weight,bias} [C]
    h/{i}/attn/c_attn/weight [W, C]     h/{i}/attn/c_attn/bias [W]    (rows q | k | v,
                                                                       each head-major)
    h/{i}/attn/q_norm/weight [hd]       h/{i}/attn/k_norm/weight [hd] (qk_norm only)
    h/{i}/attn/c_proj/weight [C, C]     h/{i}/attn/c_proj/bias [C]
    h/{i}/ln_2/{weight,bias} [C]
    h/{i}/mlp/c_fc/weight [4C, C]       h/{i}/mlp/c_fc/bias [4C]
    h/{i}/mlp/c_proj/weight [C, 4C]     h/{i}/mlp/c_proj/bias [C]
    ln_f/{weight,bias} [C]

Linear weights are [out, in]: y = x @ W.T + b. W = C + 2·n_kv_head·hd (3C without grouped-query
attention): q has n_head heads, k and v n_kv_head each, and query head h attends with key/value
head h % n_kv_head. qk_norm: q and k RMSNormed per head (weights [hd] shared by the heads, as
Qwen3 and Gemma 3) right after c_attn, before rotary positions.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

LN_EPS = 1e-5
SHARD_MAGIC = 20240520  # uint16 tokens (GPT-2's format)
SHARD_VERSION = 1
SHARD_MAGIC_U32, SHARD_VERSION_U32 = 20240801, 7  # uint32 tokens (llm.c's Llama 3 format)
SHARD_HEADER_INTS = 256
LOSS_MASK_MAGIC, LOSS_MASK_VERSION = 20261130, 1  # <shard>.mask: a byte per token (docs/formats.md)


# ---- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Linear:
    """Linear rope scaling (model.rope_scaling = linear, position interpolation): every
    frequency divided by factor."""
    factor: float


@dataclass(frozen=True)
class Yarn:
    """YaRN's rope scaling (model.rope_scaling = yarn), DeepSeek-V2's form of it: pairs turning
    more than beta_fast times in the original context keep their frequency, those turning fewer
    than beta_slow times divide it by factor, a linear ramp between; cos and sin times
    m(mscale) / m(mscale_all_dim), the attention scores times m(mscale_all_dim)², with
    m(x) = 0.1·x·ln(factor) + 1 (1 for x = 0). Qwen's YaRN: mscale 1, mscale_all_dim 0.
    truncate False: the ramp's ends left unrounded (gpt-oss's; model.rope_yarn_truncate)."""
    factor: float
    original: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    truncate: bool = True

    def m(self, x: float) -> float:
        return 0.1 * x * math.log(self.factor) + 1.0 if x and self.factor > 1 else 1.0

    @property
    def rotation_scale(self) -> float:
        return self.m(self.mscale) / self.m(self.mscale_all_dim)

    @property
    def scores_mult(self) -> float:
        return self.m(self.mscale_all_dim) ** 2


@dataclass(frozen=True)
class GptConfig:
    n_layer: int
    n_head: int
    n_embd: int
    seq_len: int
    vocab_size: int
    tp: int = 1  # only for the padding rule
    position: str = "learned"  # learned (wpe) | rope (rotary q and k, no wpe)
    rope_theta: float = 10000.0
    # model.rope_local_theta: the windowed layers' base, without rope_scaling (0: rope_theta's).
    rope_local_theta: float = 0.0
    norm: str = "layernorm"  # layernorm (weight, bias) | rmsnorm (weight only)
    bias: bool = True  # False: no biases in linear layers and LayerNorms (nanoGPT's bias=False)
    mlp: str = "gelu"  # gelu, gelu_exact | swiglu, geglu (c_fc rows: gate, up) | relu2 | relu
    mlp_hidden: int = 0  # 0: 4C for gelu, relu2; gated: the multiple of 64 at or above 8C/3
    tied: bool = True  # False: an output layer lm_head/weight [Vp, C] of its own
    n_kv_head: int = 0  # key/value heads (0: n_head); fewer: grouped-query attention
    # llama3 rope scaling (model.rope_scaling): (factor, low_freq_factor, high_freq_factor,
    # original positions); or a Yarn; None: plain rope.
    rope_scaling: Optional[Tuple[float, float, float, int] | Yarn | Linear] = None
    qk_norm: bool = False  # True: RMSNorm of each q and k head (q_norm, k_norm [hd]) after c_attn
    # model.qk_norm_full: one RMSNorm over all of q (q_norm [n_head·hd]) and one over all of k
    # (k_norm [kv·hd]) instead (OLMo-2's, OLMoE's)
    qk_norm_full: bool = False
    # model.attn_sinks: a logit per query head and layer (attn/sinks [n_head]) in every softmax's
    # denominator, a key without a value (gpt-oss's)
    attn_sinks: bool = False
    # model.glu_alpha, glu_limit, glu_offset: SwiGLU as gpt-oss's, min(g, limit)·σ(alpha·min(g,
    # limit))·(clamp(up, ±limit) + offset) (limit 0: no clamps)
    glu_alpha: float = 1.0
    glu_limit: float = 0.0
    glu_offset: float = 0.0
    # model.pre_norm = False: no ln_1, ln_2; each branch reads x itself, its output normalized
    # by the branch norms (OLMo-2's reordered norms)
    pre_norm: bool = True
    qkv_bias: bool = False  # with bias False: c_attn keeps its bias (model.qkv_bias, as Qwen2)
    mlp_bias: bool = False  # with bias False: c_fc and c_proj keep theirs (model.mlp_bias, GPT-J)
    norm_bias: bool = False  # with bias False: the LayerNorms keep theirs (model.norm_bias)
    # model.norm_weight = False (OLMo's non-parametric norms): ln_1, ln_2, ln_f learn nothing;
    # their tensors stay ones (and zeros), which the training loop does not move.
    norm_weight: bool = True
    norm_eps: float = 1e-5  # the normalizations' epsilon (model.norm_eps)
    attn_head_dim: int = 0  # model.head_dim: each head's width (0: n_embd / n_head)
    rotary_dim: int = 0  # model.rotary_dim: the values of each head that rotate (0: all)
    nope_every: int = 0  # model.nope_every: layers N, 2N, .. (1-based) do not rotate (0: none)
    # data.document_mask: the token that starts a document; each token then attends to its own
    # document only (None: to the whole sequence).
    document_token: Optional[int] = None
    # data.reset_positions: with document_token, each token's position is its distance from its
    # document's first token (the learned table's row, the rotation under rope).
    reset_positions: bool = False
    # model.sliding_window: each token attends to the last sliding_window tokens at most (0: all).
    sliding_window: int = 0
    # model.full_attention_every: with a window, layers N, 2N, .. (1-based) attend to everything.
    full_attention_every: int = 0
    # model.full_attention_first: layers 1, N + 1, .. (1-based) instead (GPT-Neo's).
    full_attention_first: bool = False
    # model.logit_softcap: the logits are c·tanh(logit / c) (0: as they are).
    logit_softcap: float = 0.0
    # model.attn_softcap: the attention scores are c·tanh(s / c) before the softmax (0: as they
    # are).
    attn_softcap: float = 0.0
    # model.clip_qkv: c_attn's output clamped to [-c, c] before the rotation (OLMo-1.7's; 0: none).
    clip_qkv: float = 0.0
    # Multi-head latent attention (model.kv_lora_rank > 0; DeepSeek-V2's MLA, mla_attention):
    # the latents' ranks and each head's unrotated and rotated q·k widths and v width.
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # model.mla_norm_eps: the latent norms' epsilon (q_a_norm, kv_a_norm); 0: norm_eps.
    mla_norm_eps: float = 0.0
    # model.logit_scale: the head's logits times this, before the cap (Granite's
    # 1/logits_scaling); model.residual_scale: each branch's output times this before its
    # residual add (Granite's residual_multiplier). 1: none.
    logit_scale: float = 1.0
    residual_scale: float = 1.0
    # model.embed_scale: the embedding's output times this (Gemma's sqrt(C); 1: as it is).
    embed_scale: float = 1.0
    # model.parallel_residual: x + attn(ln_1(x)) + mlp(ln_2(x)) (GPT-J's, GPT-NeoX's).
    parallel_residual: bool = False
    # model.branch_norm: x + norm(attn(ln_1(x))), the branches' outputs normalized before their
    # residual adds (Gemma 2's and 3's sandwich norms).
    branch_norm: bool = False
    # model.shared_norm (with parallel_residual): the MLP reads ln_1's output; no ln_2.
    shared_norm: bool = False
    # model.head_bias (untied head): lm_head/bias [Vp] on the logits.
    head_bias: bool = False
    # model.attn_scale: the attention scores' scale (0: 1/sqrt(head width)).
    attn_scale: float = 0.0
    # model.mup_base_width: μP relative to a base model this wide (0: off); m = n_embd / it.
    mup_base_width: int = 0
    # model.moe_experts: each layer's MLP is this many experts (no biases) behind a top-k router
    # (mlp/router/weight [E, C]; experts' c_fc [E, F, C], c_proj [E, C, H]); 0: dense.
    moe_experts: int = 0
    moe_top_k: int = 2
    moe_normalize: bool = True  # the k gates divided by their sum (Mixtral)
    # model.moe_score: the router's scores, softmax or sigmoid (DeepSeek-V3: each logit's own).
    moe_score: str = "softmax"
    moe_routed_scale: float = 1.0  # model.moe_routed_scale: the gates times it
    # model.moe_groups, moe_group_top_k: the experts in groups of consecutive ones, each row's
    # experts from its group_top_k groups whose two best keys sum highest (1: no groups).
    moe_groups: int = 1
    moe_group_top_k: int = 1
    # model.moe_capacity_factor f: each expert takes the first ceil(f·N·k/E) of a pass's choices
    # (in row, then rank order), the others add nothing; 0: all.
    moe_capacity_factor: float = 0.0
    # model.moe_shared_hidden: shared experts, a dense MLP of this many units (the experts'
    # activation, no biases: mlp/shared/c_fc, mlp/shared/c_proj) added to the routed ones.
    moe_shared_hidden: int = 0
    # model.moe_shared_gate: their output times sigmoid(x · mlp/shared/gate/weight [1, C]ᵀ).
    moe_shared_gate: bool = False
    # model.moe_bias: the router's logits plus mlp/router/bias [E], each expert's products plus its
    # row of mlp/experts/c_fc/bias [E, F] and mlp/experts/c_proj/bias [E, C] (gpt-oss's).
    moe_bias: bool = False
    # model.moe_first_dense, model.moe_every: layer i has the experts when i >= first_dense and
    # (i - first_dense + 1) % every == 0; the others a dense MLP.
    moe_first_dense: int = 0
    moe_every: int = 1
    # model.moe_dense_hidden: the dense layers' MLP width among the experts (0: hidden, theirs).
    moe_dense_hidden: int = 0
    # model.mtp_depth: DeepSeek-V3's multi-token prediction modules after the layers, module j
    # predicting the token j + 2 ahead (forward_mtp); mtp_weight: train.mtp_loss_weight, their
    # losses' weight λ in the training objective (mtp_objective).
    mtp_depth: int = 0
    mtp_weight: float = 0.1

    def moe_layer(self, i: int) -> bool:
        return bool(self.moe_experts) and i >= self.moe_first_dense and \
            (i - self.moe_first_dense + 1) % self.moe_every == 0

    def windowed(self, layer: int) -> bool:
        """Whether layer keeps to the window: interleaved local (windowed) and global (full)
        layers."""
        every, shift = self.full_attention_every, 0 if self.full_attention_first else 1
        return bool(self.sliding_window) and not (every and (layer + shift) % every == 0)

    def layer_rope(self, layer: int):
        """(base, scaling) of layer's rotation: None for no rotation (learned positions, a NoPE
        layer), the windowed layers' own base unscaled (rope_local_theta)."""
        if self.position != "rope" or (self.nope_every and (layer + 1) % self.nope_every == 0):
            return None, None
        if self.rope_local_theta and self.windowed(layer):
            return self.rope_local_theta, None
        return self.rope_theta, self.rope_scaling

    @property
    def mup_mult(self) -> float:
        return self.n_embd / self.mup_base_width if self.mup_base_width else 1.0

    @property
    def scores_scale(self) -> float:
        """The attention scores' scale: attn_scale, or μP's 1/sqrt(hd·m), or 1/sqrt(hd); times
        YaRN's m(mscale_all_dim)²."""
        mult = self.rope_scaling.scores_mult if isinstance(self.rope_scaling, Yarn) else 1.0
        if self.attn_scale:
            return self.attn_scale * mult
        if self.kv_lora_rank:  # MLA: q·k over the unrotated and rotated values
            return mult / math.sqrt((self.qk_nope_head_dim + self.qk_rope_head_dim) *
                                    self.mup_mult)
        return mult / math.sqrt(self.head_dim * self.mup_mult)

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        return -(-8 * self.n_embd // 192) * 64 if self.gated else 4 * self.n_embd

    @property
    def dense_hidden(self) -> int:  # a dense layer's MLP width
        return self.moe_dense_hidden or self.hidden

    @property
    def gated(self) -> bool:  # c_fc holds gate and up rows
        return self.mlp in ("swiglu", "geglu")

    @property
    def padded_vocab_size(self) -> int:
        m = 128 * self.tp
        return (self.vocab_size + m - 1) // m * m

    @property
    def head_dim(self) -> int:
        if self.attn_head_dim:
            return self.attn_head_dim
        assert self.n_embd % self.n_head == 0
        return self.n_embd // self.n_head

    @property
    def attn_width(self) -> int:
        """q's width and the attention output's: n_head · head_dim (C unless model.head_dim)."""
        return self.n_head * self.head_dim

    @property
    def kv_heads(self) -> int:
        kv = self.n_kv_head or self.n_head
        assert self.n_head % kv == 0, "n_kv_head must divide n_head"
        return kv

    @property
    def qkv_width(self) -> int:
        """c_attn's rows: q (attn_width), then k and v of kv_heads heads each."""
        return self.attn_width + 2 * self.kv_heads * self.head_dim


# Multi-head latent attention's sizes: GptConfig fields, config keys (model.*) and checkpoint
# attributes alike.
MLA_KEYS = ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


def _layer_shapes(cfg: GptConfig, shapes: Dict[str, tuple], p: str, i: int) -> None:
    """The tensors of layer i (of the whole model, or a multi-token prediction module's block)
    under prefix p, into shapes."""
    C, rms = cfg.n_embd, cfg.norm == "rmsnorm"
    if cfg.pre_norm:
        shapes[p + "ln_1/weight"] = (C,)
        if not rms:
            shapes[p + "ln_1/bias"] = (C,)
    if cfg.kv_lora_rank:  # MLA's projections instead of c_attn
        NH, rq, rkv = cfg.n_head, cfg.q_lora_rank, cfg.kv_lora_rank
        dq = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if rq:
            shapes[p + "attn/q_a/weight"] = (rq, C)
            shapes[p + "attn/q_a_norm/weight"] = (rq,)
        shapes[p + "attn/q_b/weight"] = (NH * dq, rq or C)
        shapes[p + "attn/kv_a/weight"] = (rkv + cfg.qk_rope_head_dim, C)
        shapes[p + "attn/kv_a_norm/weight"] = (rkv,)
        shapes[p + "attn/kv_b/weight"] = (NH * (cfg.qk_nope_head_dim + cfg.v_head_dim), rkv)
    else:
        shapes[p + "attn/c_attn/weight"] = (cfg.qkv_width, C)
        shapes[p + "attn/c_attn/bias"] = (cfg.qkv_width,)
    if cfg.qk_norm and cfg.qk_norm_full:
        shapes[p + "attn/q_norm/weight"] = (cfg.attn_width,)
        shapes[p + "attn/k_norm/weight"] = (cfg.kv_heads * cfg.head_dim,)
    elif cfg.qk_norm:
        shapes[p + "attn/q_norm/weight"] = (cfg.head_dim,)
        shapes[p + "attn/k_norm/weight"] = (cfg.head_dim,)
    if cfg.attn_sinks:
        shapes[p + "attn/sinks"] = (cfg.n_head,)
    shapes[p + "attn/c_proj/weight"] = \
        (C, cfg.n_head * cfg.v_head_dim if cfg.kv_lora_rank else cfg.attn_width)
    shapes[p + "attn/c_proj/bias"] = (C,)
    if not cfg.shared_norm and cfg.pre_norm:
        shapes[p + "ln_2/weight"] = (C,)
        if not rms:
            shapes[p + "ln_2/bias"] = (C,)
    if cfg.branch_norm:
        for n in ("ln_attn_out", "ln_mlp_out"):
            shapes[p + n + "/weight"] = (C,)
            if not rms:
                shapes[p + n + "/bias"] = (C,)
    F = cfg.hidden * (2 if cfg.gated else 1)
    if cfg.moe_layer(i):
        E = cfg.moe_experts
        shapes[p + "mlp/experts/c_fc/weight"] = (E, F, C)
        shapes[p + "mlp/experts/c_proj/weight"] = (E, C, cfg.hidden)
        shapes[p + "mlp/router/weight"] = (E, C)
        if cfg.moe_bias:
            shapes[p + "mlp/experts/c_fc/bias"] = (E, F)
            shapes[p + "mlp/experts/c_proj/bias"] = (E, C)
            shapes[p + "mlp/router/bias"] = (E,)
        if cfg.moe_shared_hidden:
            S = cfg.moe_shared_hidden
            shapes[p + "mlp/shared/c_fc/weight"] = (S * (2 if cfg.gated else 1), C)
            shapes[p + "mlp/shared/c_proj/weight"] = (C, S)
            if cfg.moe_shared_gate:
                shapes[p + "mlp/shared/gate/weight"] = (1, C)
        return
    F = cfg.dense_hidden * (2 if cfg.gated else 1)
    shapes[p + "mlp/c_fc/weight"] = (F, C)
    shapes[p + "mlp/c_fc/bias"] = (F,)
    shapes[p + "mlp/c_proj/weight"] = (C, cfg.dense_hidden)
    shapes[p + "mlp/c_proj/bias"] = (C,)


def param_shapes(cfg: GptConfig) -> Dict[str, tuple]:
    """Names and shapes of every parameter, in DESIGN.md §3 order."""
    C, Vp, T = cfg.n_embd, cfg.padded_vocab_size, cfg.seq_len
    shapes = {"wte/weight": (Vp, C)}
    if cfg.position != "rope":
        shapes["wpe/weight"] = (T, C)
    rms = cfg.norm == "rmsnorm"
    for i in range(cfg.n_layer):
        _layer_shapes(cfg, shapes, f"h/{i}/", i)
    shapes["ln_f/weight"] = (C,)
    if not rms:
        shapes["ln_f/bias"] = (C,)
    # The multi-token prediction modules (forward_mtp): their norms as ln_f, eh_proj, the block.
    for j in range(cfg.mtp_depth):
        p, norms = f"mtp/{j}/", [k for k in ("ln_f/weight", "ln_f/bias") if k in shapes]
        for n in ("ln_e", "ln_h"):
            shapes.update({p + n + k[4:]: (C,) for k in norms})
        shapes[p + "eh_proj/weight"] = (C, 2 * C)
        _layer_shapes(cfg, shapes, p, cfg.n_layer + j)
        shapes.update({p + k: (C,) for k in norms})
    if not cfg.bias:
        shapes = {k: v for k, v in shapes.items() if not k.endswith("/bias")
                  or (cfg.qkv_bias and k.endswith("attn/c_attn/bias"))
                  or (cfg.mlp_bias and k.endswith(("mlp/c_fc/bias", "mlp/c_proj/bias")))
                  or (cfg.norm_bias and k.split("/")[-2].startswith("ln_"))
                  or "/mlp/experts/" in k or k.endswith("/mlp/router/bias")  # moe_bias's
                  or k == "lm_head/bias"}
    if not cfg.tied:
        shapes["lm_head/weight"] = (Vp, C)
        if cfg.head_bias:
            shapes["lm_head/bias"] = (Vp,)
    return shapes


def random_weights(cfg: GptConfig, seed: int, perturb: bool = True,
                   dtype=torch.float32) -> Dict[str, torch.Tensor]:
    """Seeded weights. perturb=False: DESIGN.md §3's init (N(0, 0.02), residual projections
    N(0, 0.02/sqrt(2L)), biases 0, LN, q_norm and k_norm weights 1). perturb=True additionally
    makes biases and these norm weights nonzero / non-unit so every term of the backward pass is
    exercised. Rows of wte at or beyond vocab_size are zero (padding)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name, shape in param_shapes(cfg).items():
        if name.endswith(("ln_1/weight", "ln_2/weight", "q_norm/weight", "k_norm/weight",
                          "ln_attn_out/weight", "ln_mlp_out/weight")) \
                or name == "ln_f/weight":
            t = torch.ones(shape, dtype=torch.float64)
            if perturb:
                t += 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
        elif name.endswith("attn/sinks"):  # logits of a few units: some heads' sinks matter
            t = torch.randn(shape, generator=g, dtype=torch.float64)
        elif len(shape) == 1 or name.endswith("/bias"):  # (the experts' biases are [E, ..])
            t = torch.zeros(shape, dtype=torch.float64)
            if perturb:
                t += 0.02 * torch.randn(shape, generator=g, dtype=torch.float64)
        else:
            std = resid_std if name.endswith("c_proj/weight") else 0.02
            t = std * torch.randn(shape, generator=g, dtype=torch.float64)
        if name in ("wte/weight", "lm_head/weight", "lm_head/bias"):
            t[cfg.vocab_size:] = 0
        out[name] = t.to(dtype).contiguous()
    return out


# ---- the model -----------------------------------------------------------------------------


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
               eps: float = LN_EPS) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    var = (xc * xc).mean(dim=-1, keepdim=True)  # biased variance, as GPT-2 / PyTorch
    y = xc * torch.rsqrt(var + eps) * w
    return y if b is None else y + b


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = LN_EPS) -> torch.Tensor:
    """RMSNorm (Zhang & Sennrich; Llama's): x / sqrt(mean(x^2) + eps) * w, no centering, no bias."""
    return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + eps) * w


def norm(params: Dict[str, torch.Tensor], cfg: GptConfig, name: str, x: torch.Tensor):
    """The model's normalization `name` (h/{i}/ln_1, h/{i}/ln_2, ln_f) of x."""
    if cfg.norm == "rmsnorm":
        return rms_norm(x, params[name + "/weight"], cfg.norm_eps)
    return layer_norm(x, params[name + "/weight"], params.get(name + "/bias"), cfg.norm_eps)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def activation(cfg: "GptConfig", a: torch.Tensor, hidden: int) -> torch.Tensor:
    """The MLP's activation of c_fc's output a: GELU (tanh), SwiGLU's silu(gate) * up of
    [gate | up] (Shazeer's GLU variants, as Llama) or the squared ReLU (Primer's)."""
    if cfg.mlp == "swiglu":
        gate, up = a.split(hidden, dim=-1)
        if (cfg.glu_alpha, cfg.glu_limit, cfg.glu_offset) != (1.0, 0.0, 0.0):  # gpt-oss's
            if cfg.glu_limit:
                gate = gate.clamp(max=cfg.glu_limit)
                up = up.clamp(-cfg.glu_limit, cfg.glu_limit)
            return gate * torch.sigmoid(cfg.glu_alpha * gate) * (up + cfg.glu_offset)
        return gate * torch.sigmoid(gate) * up
    if cfg.mlp == "geglu":  # Gemma's
        gate, up = a.split(hidden, dim=-1)
        return gelu_tanh(gate) * up
    if cfg.mlp == "relu2":
        return torch.relu(a).square()
    if cfg.mlp == "relu":  # OPT's
        return torch.relu(a)
    if cfg.mlp == "gelu_exact":  # GELU itself (erf), not its tanh approximation
        return 0.5 * a * (1.0 + torch.erf(a / math.sqrt(2.0)))
    return gelu_tanh(a)


def linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    """x @ w.T + b; b None: no bias. Within fp8_linears(): Fp8Linear's products."""
    if _FP8_LINEARS:
        return Fp8Linear.apply(x, w, b)
    y = torch.matmul(x, w.t())
    return y if b is None else y + b


# ---- FP8 linear layers (run.fp8 = tensorwise) ----------------------------------------------
# Each operand of a product through an 8-bit float at its tensorwise scale, the largest power of
# two s with amax·s <= the format's largest value: q = fp8(x·s), then the product of the q's
# divided by both scales. The casts are ml_dtypes' (JAX's float8 types: round to nearest even),
# which triad shares nothing with; the arithmetic is in the tensors' own precision (double).

_FP8_LINEARS = False
_FP8_HEAD = False
FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}


class fp8_linears:
    """Context manager: the blocks' linear layers (linear()) multiply in FP8 inside it, and with
    head=True the output layer too (run.fp8_head)."""

    def __init__(self, head: bool = False):
        self.head = head

    def __enter__(self):
        global _FP8_LINEARS, _FP8_HEAD
        _FP8_LINEARS, _FP8_HEAD = True, self.head

    def __exit__(self, *exc):
        global _FP8_LINEARS, _FP8_HEAD
        _FP8_LINEARS = _FP8_HEAD = False


def fp8_quantized(t: torch.Tensor, fmt: str) -> torch.Tensor:
    """t as an FP8 product reads it: fp8(t·s)/s at t's tensorwise scale s."""
    import ml_dtypes
    amax = float(t.detach().abs().max())
    s = 1.0 if amax == 0 else 2.0 ** math.floor(math.log2(FP8_MAX[fmt] / amax))
    dtype = ml_dtypes.float8_e4m3fn if fmt == "e4m3" else ml_dtypes.float8_e5m2
    q = (t.detach().cpu().numpy() * s).astype(dtype).astype(np.float64) / s
    return torch.from_numpy(q).to(t.dtype)


class Fp8Linear(torch.autograd.Function):
    """y = x·Wᵀ + b with x and W in e4m3; backward: dy in e5m2 (x and W in e4m3 as forward) for
    dx = dy·W and dW = dyᵀ·x; db sums dy itself (Transformer Engine's and torchao's recipe)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        y = torch.matmul(fp8_quantized(x, "e4m3"), fp8_quantized(w, "e4m3").t())
        return y if b is None else y + b

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        qd = fp8_quantized(dy, "e5m2")
        dx = torch.matmul(qd, fp8_quantized(w, "e4m3"))
        dw = torch.matmul(qd.reshape(-1, qd.shape[-1]).t(),
                          fp8_quantized(x, "e4m3").reshape(-1, x.shape[-1]))
        db = dy.reshape(-1, dy.shape[-1]).sum(0) if ctx.has_bias else None
        return dx, dw, db


def rope_frequencies(theta: float, hd: int, scaling=None) -> torch.Tensor:
    """theta^(-2i/hd) for i < hd/2 (float64); with scaling = (factor, low, high, L), Llama 3.1's:
    wavelengths 2π/f above L/low divided by factor, below L/high kept, in between
    (1 - s)·f/factor + s·f with s = (L/wavelength - low)/(high - low). With a Yarn: pair i's
    frequency f/factor·r + f·(1 - r), r rising from 0 to 1 over the pairs between the one turning
    beta_fast times in the original context (rounded down) and the one turning beta_slow times
    (rounded up; neither rounded when the Yarn's truncate is False)."""
    freq = theta ** (-2.0 * torch.arange(hd // 2, dtype=torch.float64) / hd)
    if scaling is None:
        return freq
    if isinstance(scaling, Linear):
        return freq / scaling.factor
    if isinstance(scaling, Yarn):
        # Pair i turns L·f_i/(2π) times in the original context: solved for i at r turns.
        def pair(turns):
            return hd * math.log(scaling.original / (2 * math.pi * turns)) / (2 * math.log(theta))
        lo, hi = pair(scaling.beta_fast), pair(scaling.beta_slow)
        if scaling.truncate:
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, hd - 1)
        if hi == lo:
            hi += 0.001
        r = ((torch.arange(hd // 2, dtype=torch.float64) - lo) / (hi - lo)).clamp(0, 1)
        return freq / scaling.factor * r + freq * (1 - r)
    factor, low, high, L = scaling
    wavelength = 2 * math.pi / freq
    s = (L / wavelength - low) / (high - low)
    middle = (1 - s) * freq / factor + s * freq
    return torch.where(wavelength < L / high, freq,
                       torch.where(wavelength > L / low, freq / factor, middle))


def rotary(x: torch.Tensor, theta: float, pos0: int = 0, scaling=None,
           positions: Optional[torch.Tensor] = None, rot: int = 0) -> torch.Tensor:
    """RoFormer's rotary embedding of x [B, nh, T, hd] at positions pos0 .. pos0 + T - 1 (or each
    token at positions [B, T]), in the "rotate half" pairing (GPT-NeoX, Hugging Face Llama):
    dimension i < hd/2 pairs with i + hd/2, and the pair turns by the angle pos * theta^(-2i/hd)
    (scaled: rope_frequencies). Angles in float64. rot > 0: partial rotary (GPT-NeoX's
    rotary_pct, Hugging Face's partial_rotary_factor): the first rot dimensions rotate as a head
    of rot would, the others pass as they are."""
    if rot and rot < x.shape[-1]:
        return torch.cat([rotary(x[..., :rot], theta, pos0, scaling, positions), x[..., rot:]],
                         dim=-1)
    T, hd = x.shape[-2], x.shape[-1]
    half = hd // 2
    freq = rope_frequencies(theta, hd, scaling)
    if positions is None:
        pos = torch.arange(pos0, pos0 + T, dtype=torch.float64)[:, None]  # [T, 1]
    else:
        pos = positions.to(torch.float64)[:, None, :, None]  # [B, 1, T, 1]
    ang = pos * freq  # [T, half] or [B, 1, T, half]
    amp = scaling.rotation_scale if isinstance(scaling, Yarn) else 1.0  # YaRN's
    cos = (torch.cat([ang.cos(), ang.cos()], dim=-1) * amp).to(x.dtype)
    sin = (torch.cat([ang.sin(), ang.sin()], dim=-1) * amp).to(x.dtype)
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + turned * sin


def attention(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, n_head: int,
              rope_theta: Optional[float] = None, n_kv_head: int = 0,
              q_norm: Optional[torch.Tensor] = None,
              k_norm: Optional[torch.Tensor] = None, rope_scaling=None,
              eps: float = LN_EPS, head_dim: int = 0,
              mask: Optional[torch.Tensor] = None,
              positions: Optional[torch.Tensor] = None, scale: float = 0.0,
              rot: int = 0, softcap: float = 0.0, clip: float = 0.0,
              qk_full: bool = False, layer: int = -1,
              sinks: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Causal self-attention on x [B, T, C]: c_attn rows are q | k | v, each head-major, k and v
    with n_kv_head heads (0: n_head); q_norm, k_norm [hd] (model.qk_norm): each q head and each
    k head RMSNormed with these weights, shared by the heads, before the rotation; rope_theta:
    q and k rotated (rotary positions; at positions [B, T] where given). mask [B, 1, T, T] (True:
    query i sees key j) replaces the causal one (document_mask). scale: the scores' (model.
    attn_scale; 0: 1/sqrt(hd)). softcap: the scores capped at softcap·tanh(s / softcap)
    (model.attn_softcap; 0: none). clip: c_attn's output clamped to [-clip, clip] (model.clip_qkv;
    0: none). qk_full: q_norm [n_head·hd] and k_norm [kv·hd] normalize all of q and all of k
    (model.qk_norm_full). layer: the model's layer (the attention dropout's; -1: none). sinks
    [n_head] (model.attn_sinks): head h's exp(sinks[h]) a term of each of its denominators."""
    B, T, C = x.shape
    hd = head_dim or C // n_head  # model.head_dim: q is n_head·hd wide, not C
    kv = n_kv_head or n_head
    qkv = linear(x, w, b)  # [B, T, n_head·hd + 2·kv·hd]
    if clip:
        qkv = qkv.clamp(-clip, clip)
    q, k, v = qkv.split([n_head * hd, kv * hd, kv * hd], dim=-1)
    if q_norm is not None and qk_full:  # over the whole q and the whole k (OLMo-2, OLMoE)
        q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps)
    # [B, T, heads·hd] -> [B, heads, T, hd]; head j = columns j*hd .. (j+1)*hd of its block
    q = q.reshape(B, T, n_head, hd).transpose(1, 2)
    k = k.reshape(B, T, kv, hd).transpose(1, 2)
    v = v.reshape(B, T, kv, hd).transpose(1, 2)
    if q_norm is not None and not qk_full:  # QK-norm (Qwen3, Gemma 3): each head's hd values
        q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps)
    if rope_theta is not None:
        q = rotary(q, rope_theta, 0, rope_scaling, positions, rot)
        k = rotary(k, rope_theta, 0, rope_scaling, positions, rot)
    # Grouped-query attention: the kv heads repeated whole, so query head h meets kv head
    # h % kv (triad's grouping; not Hugging Face's repeat_interleave, h // (n_head / kv)).
    k, v = k.repeat(1, n_head // kv, 1, 1), v.repeat(1, n_head // kv, 1, 1)
    att = torch.matmul(q, k.transpose(-2, -1)) * (scale or 1.0 / math.sqrt(hd))  # [B, nh, T, T]
    if softcap:
        att = softcap * torch.tanh(att / softcap)
    if mask is None:
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    att = _drop_attention(softmax_with_sinks(att.masked_fill(~mask, float("-inf")), sinks), layer)
    y = torch.matmul(att, v)  # [B, nh, T, hd]
    return y.transpose(1, 2).reshape(B, T, n_head * hd)


def softmax_with_sinks(att: torch.Tensor, sinks: Optional[torch.Tensor]) -> torch.Tensor:
    """The softmax over the last axis of the masked scores att [B, nh, T, T]; with sinks [nh]
    (attention sinks), exp(sinks[h]) joins each of head h's denominators: the probabilities of a
    row then add up to less than 1."""
    m = att.max(dim=-1, keepdim=True).values
    if sinks is not None:
        z = sinks.view(1, -1, 1, 1).to(att.dtype)
        m = torch.maximum(m, z)
    m = m.detach()
    e = torch.exp(att - m)
    den = e.sum(dim=-1, keepdim=True)
    if sinks is not None:
        den = den + torch.exp(z - m)
    return e / den


def mla_attention(params: Dict[str, torch.Tensor], cfg: GptConfig, p: str, x: torch.Tensor,
                  mask: Optional[torch.Tensor] = None,
                  positions: Optional[torch.Tensor] = None, layer: int = -1) -> torch.Tensor:
    """Multi-head latent attention (DeepSeek-V2, section 2.1) on x [B, T, C], written from the
    paper: c_q = RMSNorm(W_DQ x) (or x itself without q_lora_rank), per head q = [q_rope | q_nope]
    of W_UQ c_q; [c_kv | k_rope] = W_DKV x, per head [k_nope | v] of W_UKV RMSNorm(c_kv); q_rope
    and the one k_rope rotated; scores q_nope·k_nope + q_rope·k_rope over sqrt(nope + rope)
    (or cfg.scores_scale); output [B, T, n_head·v_head_dim]. Each head's layout inside q_b's rows
    ([rope | nope]) and kv_b's ([nope | v]) is triad's choice, which the reference adopts. The
    four projections are linear()s: FP8 products within fp8_linears() (run.fp8)."""
    B, T, C = x.shape
    NH, dn, dr, dv = cfg.n_head, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    eps = cfg.mla_norm_eps or cfg.norm_eps
    cq = x
    if cfg.q_lora_rank:
        cq = rms_norm(linear(x, params[p + "attn/q_a/weight"], None),
                      params[p + "attn/q_a_norm/weight"], eps)
    q = linear(cq, params[p + "attn/q_b/weight"], None).view(B, T, NH, dr + dn).transpose(1, 2)
    q_rope, q_nope = q[..., :dr], q[..., dr:]
    ckv = linear(x, params[p + "attn/kv_a/weight"], None)
    c_kv, k_rope = ckv[..., :cfg.kv_lora_rank], ckv[..., cfg.kv_lora_rank:]
    kv = linear(rms_norm(c_kv, params[p + "attn/kv_a_norm/weight"], eps),
                params[p + "attn/kv_b/weight"], None)
    kv = kv.view(B, T, NH, dn + dv).transpose(1, 2)
    k_nope, v = kv[..., :dn], kv[..., dn:]
    q_rope = rotary(q_rope, cfg.rope_theta, 0, cfg.rope_scaling, positions)
    k_rope = rotary(k_rope.unsqueeze(1), cfg.rope_theta, 0, cfg.rope_scaling, positions)
    att = (torch.matmul(q_nope, k_nope.transpose(-2, -1)) +
           torch.matmul(q_rope, k_rope.transpose(-2, -1))) * cfg.scores_scale
    if cfg.attn_softcap:
        att = cfg.attn_softcap * torch.tanh(att / cfg.attn_softcap)
    if mask is None:
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    att = _drop_attention(softmax_with_sinks(att.masked_fill(~mask, float("-inf")),
                                             params.get(p + "attn/sinks")), layer)
    return torch.matmul(att, v).transpose(1, 2).reshape(B, T, NH * dv)


def head(params: Dict[str, torch.Tensor], cfg: GptConfig) -> torch.Tensor:
    """The output layer's weight: wte (tied) or lm_head."""
    return params["wte/weight"] if cfg.tied else params["lm_head/weight"]


# Within moe_balance(): each mixture-of-experts layer's forward appends (Switch's balance term
# E·Σ_e f_e·P_e of the rows it routed (f_e: expert e's share of the N·k choices, a constant;
# P_e: its mean probability, differentiable), ST-MoE's router z term mean_n (logsumexp_e z)², the
# fraction of its choices a capacity dropped, and each expert's count of choices (before the
# capacity: /moe_load's).
_MOE_TERMS: Optional[list] = None
# The balance term's rows: "micro_batch" (all the rows of the pass) or "sequence" (DeepSeek-V3's
# sequence-wise term: each sequence's f_e and P_e, the mean of their terms).
_MOE_SCOPE = "micro_batch"


# The routers' biases (DeepSeek-V3's auxiliary-loss-free balancing; triad's /router_bias/h/<i>):
# layer index -> [E] tensor added to the scores to choose the experts, not to weigh them. Empty:
# none (zero). update_router_bias moves them after a step.
ROUTER_BIAS: Dict[int, torch.Tensor] = {}
# When a list: each mixture-of-experts layer's forward appends its rows' routing margins, the k-th
# best key less the (k+1)-th (float64 [rows]): how far each row's choice is from a tie, which a
# lower precision's roundings may break the other way.
ROUTING_MARGINS: Optional[list] = None


def layer_index(cfg: GptConfig, p: str) -> int:
    """The layer index of prefix p: i of "h/<i>/", n_layer + j of a multi-token prediction
    module's block "mtp/<j>/"."""
    kind, i = p.split("/")[:2]
    return int(i) + (cfg.n_layer if kind == "mtp" else 0)


def update_router_bias(cfg: GptConfig, counts: np.ndarray, rate: float) -> None:
    """DeepSeek-V3's rule after an update: counts [layers with experts, E] the step's choices
    of each expert (all micro-batches; the modules' blocks after the layers); each bias moves by
    rate towards its layer's mean load: b_e += rate·sign(mean − c_e)."""
    layers = [i for i in range(cfg.n_layer + cfg.mtp_depth) if cfg.moe_layer(i)]
    for row, i in zip(counts, layers):
        b = ROUTER_BIAS.get(i, torch.zeros(cfg.moe_experts, dtype=torch.float64))
        step = torch.from_numpy(np.sign(row.mean() - row)).to(b.dtype)
        ROUTER_BIAS[i] = (b.float() + (rate * step).float()).to(b.dtype)  # fp32, as triad keeps it


# ---- hidden dropout (train.hidden_dropout) --------------------------------------------------
# triad's masks are a pure function of (seed, sequence, position, column, site): SplitMix64's
# finaliser as docs/formats.md states it, written here from that description in numpy uint64
# arithmetic (which wraps, as C++'s does).

_DROPOUT = None  # (p, seed, the sequences of the batch's rows in the data order), or None
_ATTENTION_DROPOUT = None  # the same for train.attention_dropout's p, or None


def _mix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _dropout_rows(p: float, seed: int, sequences, T: int):
    """(threshold, scale, row keys [B, T]) of a dropout of probability p (as the fp32 triad
    holds): round(p·2^24), 1/(1 - p) rounded to fp32, and mix(mix(seed ^ mix(n)) + t)."""
    p32 = float(np.float32(p))
    threshold = np.uint64(int(math.floor(p32 * 2 ** 24 + 0.5)))
    scale = float(np.float32(1.0 / (1.0 - p32)))
    with np.errstate(over="ignore"):
        seq = np.asarray(sequences, dtype=np.uint64)
        rows = _mix64(_mix64(np.uint64(seed) ^ _mix64(seq))[:, None] +
                      np.arange(T, dtype=np.uint64)[None, :])
    return threshold, scale, rows


def dropout_multiplier(p: float, seed: int, sequences, T: int, C: int, site: int) -> np.ndarray:
    """[B, T, C]: 0 where the value at (sequences[b], position t, column c) is dropped at `site`,
    1/(1 - p) (rounded to fp32) where it is kept; p as the fp32 triad holds."""
    threshold, scale, rows = _dropout_rows(p, seed, sequences, T)
    with np.errstate(over="ignore"):
        salt = (np.uint64(site) << np.uint64(32)) | np.arange(C, dtype=np.uint64)
        h = _mix64(rows[:, :, None] ^ salt[None, None, :])
    return np.where((h >> np.uint64(40)) >= threshold, scale, 0.0)


def attention_dropout_multiplier(p: float, seed: int, sequences, layer: int, n_head: int,
                                 T: int) -> np.ndarray:
    """[B, n_head, T, T]: what train.attention_dropout multiplies probability (query i, key j)
    of head h in layer `layer` by: 0 (dropped) or 1/(1 - p) rounded to fp32 (kept), from
    docs/formats.md's formula: head key a = mix(row_key(i) ^ ((2^31 | layer) << 32 | h)), kept
    iff (mix(a ^ j) >> 40) >= round(p·2^24)."""
    threshold, scale, rows = _dropout_rows(p, seed, sequences, T)
    with np.errstate(over="ignore"):
        salt = (np.uint64((1 << 31) | layer) << np.uint64(32)) | \
            np.arange(n_head, dtype=np.uint64)
        a = _mix64(rows[:, None, :] ^ salt[None, :, None])  # [B, n_head, T]
        h = _mix64(a[..., None] ^ np.arange(T, dtype=np.uint64)[None, None, None, :])
    return np.where((h >> np.uint64(40)) >= threshold, scale, 0.0)


class hidden_dropout:
    """Within it, forward() drops as triad's training passes: the embedding's output (site 0),
    layer i's attention branch output (1 + 2i; 2 + 2i under parallel_residual) and its MLP
    branch output (2 + 2i), for rows of the given sequences; with `attention` > 0 also the
    attention probabilities (train.attention_dropout, attention_dropout_multiplier)."""

    def __init__(self, p: float, seed: int, sequences, attention: float = 0.0):
        self.args = (p, seed, list(sequences))
        self.attention = (attention, seed, list(sequences))

    def __enter__(self):
        global _DROPOUT, _ATTENTION_DROPOUT
        _DROPOUT = self.args if self.args[0] > 0 else None
        _ATTENTION_DROPOUT = self.attention if self.attention[0] > 0 else None

    def __exit__(self, *exc):
        global _DROPOUT, _ATTENTION_DROPOUT
        _DROPOUT = _ATTENTION_DROPOUT = None


def _drop_attention(att: torch.Tensor, layer: int) -> torch.Tensor:
    """att [B, n_head, T, T] probabilities: times the attention dropout's multipliers (within
    hidden_dropout(..., attention=p) only; layer -1: none)."""
    if _ATTENTION_DROPOUT is None or layer < 0:
        return att
    p, seed, sequences = _ATTENTION_DROPOUT
    B, NH, T, _ = att.shape
    assert len(sequences) == B, "attention dropout: one sequence number per batch row"
    m = torch.from_numpy(attention_dropout_multiplier(p, seed, sequences, layer, NH, T))
    wide = torch.promote_types(att.dtype, torch.float32)
    return (att.to(wide) * m.to(wide)).to(att.dtype)


def _drop(x: torch.Tensor, site: int) -> torch.Tensor:
    if _DROPOUT is None:
        return x
    p, seed, sequences = _DROPOUT
    B, T, C = x.shape
    assert len(sequences) == B, "hidden_dropout: one sequence number per batch row"
    m = torch.from_numpy(dropout_multiplier(p, seed, sequences, T, C, site))
    # The product in fp32 at least, rounded once to x's type (as triad's bf16 kernels).
    wide = torch.promote_types(x.dtype, torch.float32)
    return (x.to(wide) * m.to(wide)).to(x.dtype)


class moe_balance:
    def __init__(self, scope: str = "micro_batch"):
        self.scope = scope

    def __enter__(self):
        global _MOE_TERMS, _MOE_SCOPE
        _MOE_TERMS, _MOE_SCOPE = [], self.scope
        return _MOE_TERMS

    def __exit__(self, *exc):
        global _MOE_TERMS, _MOE_SCOPE
        _MOE_TERMS, _MOE_SCOPE = None, "micro_batch"


def moe_mlp(params: Dict[str, torch.Tensor], cfg: GptConfig, p: str,
            h: torch.Tensor) -> torch.Tensor:
    """A mixture of experts (Shazeer et al.; Switch, Mixtral): softmax router probabilities (or
    DeepSeek-V3's sigmoid scores), each row's k best experts by score + the layer's
    ROUTER_BIAS, their scores as gates (renormalized to sum 1 under moe_normalize, times
    moe_routed_scale), the gated sum of those experts' MLPs. Written per expert with index_add,
    nothing shared with triad's dispatch."""
    E, k = cfg.moe_experts, cfg.moe_top_k
    x = h.reshape(-1, h.shape[-1])
    router_logits = x @ params[p + "mlp/router/weight"].t()  # exact under fp8_linears()
    if p + "mlp/router/bias" in params:  # model.moe_bias
        router_logits = router_logits + params[p + "mlp/router/bias"]
    router_logits = router_logits / cfg.mup_mult  # μP: a readout
    sigmoid = cfg.moe_score == "sigmoid"
    scores = torch.sigmoid(router_logits) if sigmoid else torch.softmax(router_logits, dim=-1)
    bias = ROUTER_BIAS.get(layer_index(cfg, p))
    key = scores.detach() if bias is None else scores.detach() + bias.to(scores.dtype)
    if cfg.moe_groups > 1:  # node-limited: other groups' experts out of reach
        G = cfg.moe_groups
        group = key.view(key.shape[0], G, E // G).topk(2, dim=-1).values.sum(-1)
        keep = torch.zeros_like(group, dtype=torch.bool)
        keep.scatter_(1, group.topk(cfg.moe_group_top_k, dim=-1).indices, True)
        key = key.masked_fill(~keep.repeat_interleave(E // G, dim=1), float("-inf"))
    choice = torch.topk(key, k, dim=-1).indices
    if ROUTING_MARGINS is not None and k < E:
        best = torch.topk(key, k + 1, dim=-1).values.double()
        ROUTING_MARGINS.append((best[:, k - 1] - best[:, k]).numpy())
    top = scores.gather(-1, choice)
    gates = top / top.sum(-1, keepdim=True) if cfg.moe_normalize else top
    gates = gates * cfg.moe_routed_scale
    # The balancing loss's probabilities: sigmoid scores over their row's sum (DeepSeek-V3's).
    probs = scores / scores.sum(-1, keepdim=True) if sigmoid else scores
    w1, w2 = params[p + "mlp/experts/c_fc/weight"], params[p + "mlp/experts/c_proj/weight"]
    b1, b2 = params.get(p + "mlp/experts/c_fc/bias"), params.get(p + "mlp/experts/c_proj/bias")

    out = torch.zeros_like(x)
    n_choices, kept = x.shape[0] * k, 0
    capacity = n_choices
    if cfg.moe_capacity_factor > 0:
        capacity = max(1, min(math.ceil(cfg.moe_capacity_factor * x.shape[0] * k / E), n_choices))
    for e in range(E):
        rows, j = (choice == e).nonzero(as_tuple=True)  # in row order, then rank within a row
        rows, j = rows[:capacity], j[:capacity]
        kept += rows.numel()
        if rows.numel() == 0:
            continue
        # linear(): within fp8_linears() each expert's products in FP8 at its own scales (the
        # amax of its rows, its matrix, its rows' gradients); the router stays exact.
        a = activation(cfg, linear(x[rows], w1[e], None if b1 is None else b1[e]), cfg.hidden)
        y = linear(a, w2[e], None if b2 is None else b2[e])
        out = out.index_add(0, rows, gates[rows, j].unsqueeze(-1) * y)
    if cfg.moe_shared_hidden:  # every token through the shared experts too
        a = activation(cfg, linear(x, params[p + "mlp/shared/c_fc/weight"], None),
                       cfg.moe_shared_hidden)
        shared = linear(a, params[p + "mlp/shared/c_proj/weight"], None)
        if cfg.moe_shared_gate:  # Qwen2-MoE's sigmoid gate of each row
            shared = torch.sigmoid(x @ params[p + "mlp/shared/gate/weight"].t() / cfg.mup_mult) \
                * shared
        out = out + shared
    if _MOE_TERMS is not None:
        if _MOE_SCOPE == "sequence":  # h: [B, T, C]; each sequence's term, then their mean
            B, T = h.shape[0], h.shape[1]
            per = choice.view(B, T * k)
            f = torch.stack([torch.bincount(r, minlength=E) for r in per]).to(probs.dtype) / (T * k)
            balance = E * (f * probs.view(B, T, E).mean(1)).sum(-1).mean()
        else:
            f = torch.bincount(choice.reshape(-1), minlength=E).to(probs.dtype) / choice.numel()
            balance = E * (f * probs.mean(0)).sum()
        _MOE_TERMS.append((balance,
                           torch.logsumexp(router_logits, dim=-1).pow(2).mean(),
                           1.0 - kept / n_choices,
                           torch.bincount(choice.reshape(-1), minlength=E).double().numpy()))
    return out.reshape(h.shape)


def mlp(params: Dict[str, torch.Tensor], cfg: GptConfig, p: str, h: torch.Tensor) -> torch.Tensor:
    """Layer p's MLP of h: c_proj(activation(c_fc(h))); a mixture of experts' (moe_mlp)."""
    if p + "mlp/router/weight" in params:  # a layer with experts (GptConfig.moe_layer)
        return moe_mlp(params, cfg, p, h)
    a = activation(cfg, linear(h, params[p + "mlp/c_fc/weight"], params.get(p + "mlp/c_fc/bias")),
                   cfg.dense_hidden)
    return linear(a, params[p + "mlp/c_proj/weight"], params.get(p + "mlp/c_proj/bias"))


def qk_norm_weights(params: Dict[str, torch.Tensor], cfg: GptConfig, p: str):
    """Layer p's (q_norm, k_norm) weights, or (None, None) without model.qk_norm."""
    if not cfg.qk_norm:
        return None, None
    return params[p + "attn/q_norm/weight"], params[p + "attn/k_norm/weight"]


def document_mask(idx: torch.Tensor, token: int) -> torch.Tensor:
    """[B, 1, T, T]: query i sees key j when j <= i and no token at positions j+1 .. i starts
    a document (written from that definition, not from triad's key_begin form)."""
    B, T = idx.shape
    starts = (idx == token).to(torch.int64)  # [B, T]
    # starts strictly after j, up to and including i: cum[i] - cum[j]
    cum = starts.cumsum(dim=1)
    later = cum.unsqueeze(2) - cum.unsqueeze(1)  # [B, i, j]
    causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
    return (causal & (later == 0)).unsqueeze(1)


def document_positions(idx: torch.Tensor, token: int) -> torch.Tensor:
    """[B, T]: each token's distance from the last token at or before it that starts a document
    (from the sequence's first token where none does)."""
    B, T = idx.shape
    t = torch.arange(T).expand(B, T)
    starts = torch.where(idx == token, t, torch.zeros_like(t))
    return t - torch.cummax(starts, dim=1).values


def _block(params: Dict[str, torch.Tensor], cfg: GptConfig, p: str, x: torch.Tensor, i: int,
           mask: Optional[torch.Tensor], positions: Optional[torch.Tensor]):
    """Layer i of the whole model (or a multi-token prediction module's block, i >= n_layer) under
    prefix p on x: (its output, the attention branch's output, the MLP branch's)."""
    h = norm(params, cfg, p + "ln_1", x) if cfg.pre_norm else x
    qn, kn = qk_norm_weights(params, cfg, p)
    if cfg.kv_lora_rank:
        y = mla_attention(params, cfg, p, h, mask, positions, layer=i)
    else:
        theta, scaling = cfg.layer_rope(i)
        y = attention(h, params[p + "attn/c_attn/weight"],
                      params.get(p + "attn/c_attn/bias"), cfg.n_head, theta,
                      cfg.kv_heads, qn, kn, scaling, cfg.norm_eps,
                      cfg.head_dim, mask, positions, cfg.scores_scale,
                      cfg.rotary_dim, cfg.attn_softcap, cfg.clip_qkv, cfg.qk_norm_full,
                      layer=i, sinks=params.get(p + "attn/sinks"))
    a = linear(y, params[p + "attn/c_proj/weight"], params.get(p + "attn/c_proj/bias"))
    if cfg.branch_norm:
        a = norm(params, cfg, p + "ln_attn_out", a)
    if cfg.residual_scale != 1.0:  # in fp32, as triad's
        a = a * float(np.float32(cfg.residual_scale))
    a = _drop(a, 2 + 2 * i if cfg.parallel_residual else 1 + 2 * i)
    # model.parallel_residual (GPT-J's, GPT-NeoX's): ln_2 reads the layer's input, and both
    # branches add to it, (x + a) + m.
    if cfg.parallel_residual:
        h = h if cfg.shared_norm else norm(params, cfg, p + "ln_2", x)
    x = x + a
    if not cfg.parallel_residual:
        h = norm(params, cfg, p + "ln_2", x) if cfg.pre_norm else x
    m = mlp(params, cfg, p, h)
    if cfg.branch_norm:
        m = norm(params, cfg, p + "ln_mlp_out", m)
    if cfg.residual_scale != 1.0:
        m = m * float(np.float32(cfg.residual_scale))
    m = _drop(m, 2 + 2 * i)
    x = x + m
    return x, a, m


def forward(params: Dict[str, torch.Tensor], cfg: GptConfig, idx: torch.Tensor,
            record: Optional[dict] = None) -> torch.Tensor:
    """Logits [B, T, vocab_size] (the padded columns are dropped) for token ids idx [B, T].
    record: filled with the activations triad's train.activations_every measures ("embed",
    "h<i>_attn", "h<i>_mlp", "h<i>_out": the embedding's output, each block's attention and MLP
    branch outputs, the residual stream after the block)."""
    return forward_mtp(params, cfg, idx, record, modules=False)[0]


def forward_mtp(params: Dict[str, torch.Tensor], cfg: GptConfig, idx: torch.Tensor,
                record: Optional[dict] = None, modules: bool = True):
    """(forward's logits, the multi-token prediction modules' logits [B, T, vocab_size] each):
    module j (cfg.mtp_depth of them) reads the previous hidden state h (what the head reads:
    ln_f's output, then module j − 1's ln_f output, as Megatron-Core's MultiTokenPredictionLayer
    and DeepSeek-V3's serving code define it) and the embedding e of input t + j + 1 (wte's row,
    times embed_scale; 0's past the end, whose rows have no target), and its block (layer n_layer
    + j's kind) runs on mtp/j/eh_proj · [ln_e(e) | ln_h(h)]; its ln_f's output goes through the
    model's head. Its target at row t is target t + j + 1."""
    B, T = idx.shape
    assert T <= cfg.seq_len
    rope = cfg.rope_theta if cfg.position == "rope" else None
    full = None if cfg.document_token is None else document_mask(idx, cfg.document_token)
    windowed = full
    if cfg.sliding_window:  # key j within the last sliding_window positions of query i
        i = torch.arange(T).unsqueeze(1)
        near = (i - torch.arange(T).unsqueeze(0)) < cfg.sliding_window
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        windowed = (causal & near) if full is None else (full & near)

    def layer_mask(layer):
        return windowed if cfg.windowed(layer) else full

    positions = None
    if cfg.reset_positions:
        assert cfg.document_token is not None
        positions = document_positions(idx, cfg.document_token)
    x = params["wte/weight"][idx]
    if rope is None:
        x = x + (params["wpe/weight"][:T] if positions is None else params["wpe/weight"][positions])
    if cfg.embed_scale != 1.0:  # model.embed_scale, in fp32 as triad applies it
        x = x * float(np.float32(cfg.embed_scale))
    x = _drop(x, 0)  # train.hidden_dropout (within hidden_dropout only)
    if record is not None:
        record["embed"] = x
    for i in range(cfg.n_layer):
        x, a, m = _block(params, cfg, f"h/{i}/", x, i, layer_mask(i), positions)
        if record is not None:  # the activations train.activations_every reports
            record[f"h{i}_attn"], record[f"h{i}_mlp"], record[f"h{i}_out"] = a, m, x
    x = norm(params, cfg, "ln_f", x)
    logits = _logits(params, cfg, x)
    predictions = []
    for j in range(cfg.mtp_depth if modules else 0):
        p, l = f"mtp/{j}/", cfg.n_layer + j
        ahead = torch.zeros_like(idx)
        ahead[:, : T - j - 1] = idx[:, j + 1:]
        e = params["wte/weight"][ahead]
        if cfg.embed_scale != 1.0:
            e = e * float(np.float32(cfg.embed_scale))
        both = torch.cat([norm(params, cfg, p + "ln_e", e), norm(params, cfg, p + "ln_h", x)], -1)
        x, _, _ = _block(params, cfg, p, linear(both, params[p + "eh_proj/weight"], None), l,
                         layer_mask(l), positions)
        x = norm(params, cfg, p + "ln_f", x)
        predictions.append(_logits(params, cfg, x))
    return logits, predictions


def mtp_targets(targets: torch.Tensor, j: int) -> torch.Tensor:
    """Module j's targets: target t + j + 1 of each row t, -1 (none) past the end."""
    out = torch.full_like(targets, -1)
    out[:, : targets.shape[1] - j - 1] = targets[:, j + 1:]
    return out


def mtp_losses(predictions, cfg: GptConfig, targets: torch.Tensor):
    """(The modules' cross-entropy summed over their targets, those targets' count) (targets < 0
    have none)."""
    total, count = 0.0, 0
    for j, logits in enumerate(predictions):
        t = mtp_targets(targets, j)
        keep = t >= 0
        total = total + cross_entropy_sum(logits[keep], t[keep])
        count += int(keep.sum())
    return total, count


def mtp_objective(predictions, cfg: GptConfig, targets: torch.Tensor) -> torch.Tensor:
    """What the modules add to the mean main loss: λ/D times their summed cross-entropy over the
    main loss's counted targets (train.mtp_loss_weight λ, D modules)."""
    total, _ = mtp_losses(predictions, cfg, targets)
    return cfg.mtp_weight / cfg.mtp_depth * total / int((targets >= 0).sum())


def _logits(params: Dict[str, torch.Tensor], cfg: GptConfig, x: torch.Tensor) -> torch.Tensor:
    """The head's logits [B, T, vocab_size] of the final norm's output x."""
    w = head(params, cfg)
    b = params.get("lm_head/bias")  # model.head_bias
    logits = Fp8Linear.apply(x, w, b) if _FP8_HEAD else \
        (torch.matmul(x, w.t()) + (b if b is not None else 0))
    logits = logits / cfg.mup_mult  # [B, T, Vp]; μP: times 1/m
    if cfg.logit_scale != 1.0:  # model.logit_scale, in fp32 as triad's
        logits = logits * float(np.float32(cfg.logit_scale))
    if cfg.logit_softcap:
        logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
    return logits[..., : cfg.vocab_size]


def forward_fast(params: Dict[str, torch.Tensor], cfg: GptConfig, idx: torch.Tensor,
                 checkpoint_layers: bool = False, dropout: float = 0.0) -> torch.Tensor:
    """The same model with PyTorch's own fused ops (F.layer_norm, F.gelu(approximate='tanh'),
    F.softmax) — what a nanoGPT-style training script runs on a CPU without flash attention.
    For the speed benchmark; forward() is the reference. Logits [B, T, vocab_size].
    checkpoint_layers: each layer under torch.utils.checkpoint (PyTorch's activation
    recomputation: the backward pass reruns the whole layer from its input). dropout: nanoGPT's
    (F.dropout of that probability on the embedding's output, the attention probabilities and
    each branch's output; triad's train.hidden_dropout and train.attention_dropout together)."""
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    B, T = idx.shape
    C, nh = cfg.n_embd, cfg.n_head
    hd = C // nh
    assert cfg.position == "learned" and cfg.norm == "layernorm" and cfg.bias and \
        cfg.mlp == "gelu" and cfg.hidden == 4 * cfg.n_embd and cfg.tied and \
        cfg.kv_heads == cfg.n_head and not cfg.qk_norm and cfg.norm_eps == LN_EPS and \
        not cfg.attn_head_dim and not cfg.attn_sinks, \
        "forward_fast is GPT-2's model"
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    x = F.embedding(idx, params["wte/weight"]) + params["wpe/weight"][:T]

    def drop(t):
        return F.dropout(t, dropout, training=True) if dropout > 0 else t

    x = drop(x)

    def layer(x, i):
        p = f"h/{i}/"
        h = F.layer_norm(x, (C,), params[p + "ln_1/weight"], params[p + "ln_1/bias"], LN_EPS)
        qkv = F.linear(h, params[p + "attn/c_attn/weight"], params[p + "attn/c_attn/bias"])
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, nh, hd).transpose(1, 2)
        k = k.view(B, T, nh, hd).transpose(1, 2)
        v = v.view(B, T, nh, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = drop(F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + drop(F.linear(y, params[p + "attn/c_proj/weight"], params[p + "attn/c_proj/bias"]))
        h = F.layer_norm(x, (C,), params[p + "ln_2/weight"], params[p + "ln_2/bias"], LN_EPS)
        h = F.gelu(F.linear(h, params[p + "mlp/c_fc/weight"], params[p + "mlp/c_fc/bias"]),
                   approximate="tanh")
        return x + drop(F.linear(h, params[p + "mlp/c_proj/weight"],
                                 params[p + "mlp/c_proj/bias"]))

    for i in range(cfg.n_layer):
        x = checkpoint(layer, x, i, use_reentrant=False) if checkpoint_layers else layer(x, i)
    x = F.layer_norm(x, (C,), params["ln_f/weight"], params["ln_f/bias"], LN_EPS)
    # Only the first vocab_size rows of the tied head enter the softmax (DESIGN.md §3).
    return F.linear(x, params["wte/weight"][: cfg.vocab_size])


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over tokens of -log softmax(logits)[target] (log-sum-exp written out)."""
    m = logits.max(dim=-1, keepdim=True).values.detach()
    lse = (logits - m).exp().sum(dim=-1).log() + m.squeeze(-1)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (lse - picked).sum()


def loss_fn(params, cfg: GptConfig, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy in nats."""
    return cross_entropy_sum(forward(params, cfg, idx), targets) / targets.numel()


class Gpt(torch.nn.Module):
    """nn.Module wrapper (for optimizers): parameters keyed by triad names ('/' -> '.')."""

    def __init__(self, cfg: GptConfig, weights: Dict[str, torch.Tensor], dtype=None,
                 fast: bool = False, checkpoint_layers: bool = False, dropout: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.fast = fast  # forward_fast (PyTorch's fused ops) instead of the plain reference
        self.checkpoint_layers = checkpoint_layers  # forward_fast only
        self.dropout = dropout  # forward_fast only (nanoGPT's dropout)
        self.names = list(param_shapes(cfg).keys())
        self.p = torch.nn.ParameterDict()
        for name in self.names:
            t = weights[name].detach().clone()
            if dtype is not None:
                t = t.to(dtype)
            assert tuple(t.shape) == param_shapes(cfg)[name], (name, t.shape)
            self.p[name.replace("/", "__")] = torch.nn.Parameter(t)

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {n: self.p[n.replace("/", "__")] for n in self.names}

    def forward(self, idx, targets=None):
        if self.fast:
            import torch.nn.functional as F

            logits = forward_fast(self.tensors(), self.cfg, idx, self.checkpoint_layers,
                                  self.dropout)
            if targets is None:
                return logits, None
            return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        # Multi-token prediction: its term of the objective and its losses, kept for the caller
        # (mtp_term, mtp_losses), the main loss returned.
        logits, predictions = forward_mtp(self.tensors(), self.cfg, idx,
                                          modules=targets is not None and self.cfg.mtp_depth > 0)
        if predictions:
            self.mtp_term = mtp_objective(predictions, self.cfg, targets)
            total, count = mtp_losses(predictions, self.cfg, targets)
            self.mtp_losses = (float(total), count)
        if targets is None:
            return logits, None
        if (targets < 0).any():  # masked targets: PyTorch's own mean over the kept ones
            import torch.nn.functional as F

            return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                           targets.reshape(-1), ignore_index=-1)
        return logits, cross_entropy_sum(logits, targets) / targets.numel()

    def param_groups(self, weight_decay: float) -> List[dict]:
        """Two groups as DESIGN.md §4: weight decay only on parameters of rank >= 2, the matrices
        (not the experts' biases [E, ..] of model.moe_bias)."""
        t = self.tensors()
        decay = [t[n] for n in self.names if t[n].dim() >= 2 and not n.endswith("/bias")]
        no_decay = [t[n] for n in self.names if t[n].dim() < 2 or n.endswith("/bias")]
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]


MUON_MATRICES = ("/attn/c_attn/weight", "/attn/c_proj/weight", "/mlp/c_fc/weight",
                 "/mlp/c_proj/weight", "/mlp/shared/c_fc/weight", "/mlp/shared/c_proj/weight",
                 "/mlp/experts/c_fc/weight", "/mlp/experts/c_proj/weight")


def is_muon_matrix(name: str) -> bool:
    """The tensors optim.name = muon gives to Muon: the attention and MLP weight matrices, the
    shared experts' and the routed experts' ([E, rows, cols]: each expert's matrix on its own;
    the router and the shared experts' gate stay with AdamW)."""
    return name.startswith(("h/", "mtp/")) and name.endswith(MUON_MATRICES)  # (mtp: the blocks')


def newton_schulz(g: torch.Tensor, steps: int, eps: float = 1e-7) -> torch.Tensor:
    """The quintic Newton-Schulz iteration of torch.optim.Muon's documentation, in g's dtype."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / max(float(x.norm()), eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


class Lion(torch.optim.Optimizer):
    """Lion as Chen et al. 2023 ("Symbolic Discovery of Optimization Algorithms", Algorithm 2)
    state it, with decoupled weight decay: c = b1 m + (1 - b1) g; p = p - lr (sign(c) + wd p);
    m = b2 m + (1 - b2) g (m starts at zero)."""

    def __init__(self, params, lr, betas, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "m" not in st:
                    st["m"] = torch.zeros_like(p)
                m = st["m"]
                c = b1 * m + (1 - b1) * p.grad
                p.sub_(group["lr"] * (torch.sign(c) + group["weight_decay"] * p))
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon as its documentation states it (the installed torch may predate it):
    B = mu B + g; U = g + mu B (Nesterov) or B; O = NS_k(U);
    p = p (1 - lr wd) - lr s O with s = sqrt(max(1, m/n)) or 0.2 sqrt(max(m, n))."""

    def __init__(self, params, lr, weight_decay, momentum=0.95, nesterov=True, ns_steps=5,
                 adjust_lr="original"):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov, ns_steps=ns_steps, adjust_lr=adjust_lr))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "buf" not in st:
                    st["buf"] = torch.zeros_like(p)
                buf = st["buf"]
                buf.mul_(mu).add_(p.grad)
                u = p.grad + mu * buf if group["nesterov"] else buf
                # An expert tensor [E, m, n]: E matrices, each orthogonalized on its own.
                o = (newton_schulz(u, group["ns_steps"]) if u.dim() == 2 else
                     torch.stack([newton_schulz(e, group["ns_steps"]) for e in u]))
                m, n = p.shape[-2:]
                s = (math.sqrt(max(1.0, m / n)) if group["adjust_lr"] == "original"
                     else 0.2 * math.sqrt(max(m, n)))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(o, alpha=-group["lr"] * s)


def build_model(weights: Dict[str, torch.Tensor], cfg: GptConfig, dtype=None,
                fast: bool = False, checkpoint_layers: bool = False,
                dropout: float = 0.0) -> Gpt:
    return Gpt(cfg, weights, dtype, fast, checkpoint_layers, dropout)


# ---- training semantics (DESIGN.md §4) ------------------------------------------------------


def lr_at(step: int, lr: float, warmup_steps: int, steps: int, schedule: str = "cosine",
          min_lr_ratio: float = 0.1, decay_fraction: float = 0.2,
          decay_shape: str = "linear") -> float:
    """Learning rate of 0-based step `step`, from DESIGN.md §4's formula."""
    min_lr = lr * min_lr_ratio
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "inverse_sqrt":  # Megatron's: lr·sqrt(W / n) after n steps, n >= W
        return max(min_lr, lr * math.sqrt(max(warmup_steps, 1) / (step + 1)))
    if schedule == "constant" or steps - warmup_steps <= 0:
        return lr
    frac = min(1.0, (step - warmup_steps) / (steps - warmup_steps))
    if schedule == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * frac))
    if schedule == "linear":
        return lr - (lr - min_lr) * frac
    if schedule == "wsd":
        decay_len = decay_fraction * steps
        start = steps - decay_len
        if step < start or decay_len <= 0:
            return lr
        f = min(1.0, (step - start) / decay_len)
        if decay_shape == "1-sqrt":
            return min_lr + (lr - min_lr) * (1.0 - math.sqrt(f))
        if decay_shape == "cosine":
            return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * f))
        return lr - (lr - min_lr) * f
    raise ValueError(schedule)


def clip_grad_norm_(params: Iterable[torch.Tensor], clip: float) -> float:
    """Global L2 norm; if above clip (> 0) scale by clip / (norm + 1e-6). Returns the norm."""
    params = [p for p in params if p.grad is not None]
    norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params))
    if clip > 0 and norm > clip:
        s = clip / (norm + 1e-6)
        for p in params:
            p.grad.mul_(s)
    return norm


# ---- files (DESIGN.md §5) -------------------------------------------------------------------


def write_token_shard(path, tokens) -> None:
    """llm.c's formats: 256 little-endian int32 header (magic, version, count), then uint16
    tokens, or uint32 ones (magic 20240801, version 7) when an id does not fit 16 bits."""
    tokens = np.asarray(tokens)
    assert tokens.ndim == 1 and (tokens.size == 0 or (tokens.min() >= 0 and tokens.max() < 2**32))
    wide = tokens.size > 0 and tokens.max() >= 65536
    header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
    header[0], header[1] = (SHARD_MAGIC_U32, SHARD_VERSION_U32) if wide else (SHARD_MAGIC,
                                                                              SHARD_VERSION)
    header[2] = tokens.size
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u4" if wide else "<u2").tobytes())


def write_loss_mask(path, mask) -> None:
    """A loss-mask file: the shard header with its own magic, then a uint8 (0 or 1) per token."""
    mask = np.asarray(mask)
    assert mask.ndim == 1 and set(np.unique(mask)) <= {0, 1}
    header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = LOSS_MASK_MAGIC, LOSS_MASK_VERSION, mask.size
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(mask.astype(np.uint8).tobytes())


def masked_batch(tokens: np.ndarray, mask: np.ndarray, first: int, count: int, T: int):
    """batch() with the targets a loss mask does not count set to -1 (PyTorch's ignore_index
    as the tests use it)."""
    x, y = batch(tokens, first, count, T)
    _, keep = batch(mask, first, count, T)  # the mask of each target token
    return x, torch.where(keep == 1, y, torch.full_like(y, -1))


def read_token_shard(path) -> np.ndarray:
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(SHARD_HEADER_INTS * 4), dtype="<i4")
        formats = {SHARD_MAGIC: (SHARD_VERSION, "<u2"), SHARD_MAGIC_U32: (SHARD_VERSION_U32, "<u4")}
        assert header[0] in formats and header[1] == formats[header[0]][0], path
        tokens = np.frombuffer(f.read(), dtype=formats[header[0]][1])
    assert tokens.size == header[2], path
    return tokens


def sequence(tokens: np.ndarray, k: int, T: int):
    """Sequence k of a shard: tokens [kT, kT+T], inputs the first T, targets shifted by 1."""
    chunk = np.asarray(tokens[k * T: k * T + T + 1], dtype=np.int64)
    assert chunk.size == T + 1
    return chunk[:-1], chunk[1:]


def blend_places(weights, n: int, period: int = 10000):
    """data.train_weights (docs/formats.md): (dataset, its sample number) of positions 0..n-1.
    The weights' shares of a period by largest remainders, then in each period the dataset
    furthest behind its share first (ties: the lower one)."""
    total = sum(weights)
    shares = [w / total * period for w in weights]
    per = [math.floor(s) for s in shares]
    rest = sorted(range(len(weights)), key=lambda d: -(shares[d] - math.floor(shares[d])))
    for i in range(period - sum(per)):
        per[rest[i % len(weights)]] += 1
    order, seen = [], [0] * len(weights)
    for q in range(period):
        lag = [per[d] * (q + 1) - seen[d] * period for d in range(len(weights))]
        d = lag.index(max(lag))
        order.append((d, seen[d]))
        seen[d] += 1
    return [(order[p % period][0], p // period * per[order[p % period][0]] + order[p % period][1])
            for p in range(n)]


def batch(tokens: np.ndarray, first: int, count: int, T: int):
    """Global sequences first .. first+count-1 of one shard as (inputs, targets) [count, T]
    int64 tensors, wrapping at the shard's end (one shard = the whole sequence list)."""
    n = (tokens.size - 1) // T
    xs, ys = zip(*(sequence(tokens, (first + i) % n, T) for i in range(count)))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def _str(value) -> str:
    """A string attribute as h5py returns it (bytes or str)."""
    return value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value)


def _string_attr(obj, name: str, value: str) -> None:
    """A scalar fixed-length, NUL-terminated ASCII string attribute (as triad writes)."""
    import h5py

    data = value.encode("ascii")
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(data) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    obj.attrs.create(name, np.array(data, dtype=f"S{len(data) + 1}"), dtype=h5py.Datatype(tid))


def fp32_checksum(a: np.ndarray) -> int:
    """CRC-32 (zlib) of the little-endian fp32 bytes, triad's per-dataset `checksum`."""
    return zlib.crc32(np.ascontiguousarray(a, dtype="<f4").tobytes()) & 0xFFFFFFFF


def write_checkpoint(path, cfg: GptConfig, weights: Dict[str, torch.Tensor], *, step: int = 0,
                     tokens_seen: int = 0, next_sequence: int = 0, epoch: int = 0,
                     config_text: str = "", grid: str = "dp=1 pp=1 tp=1",
                     optimizer: Optional[Dict[str, Dict[str, torch.Tensor]]] = None) -> None:
    """A triad checkpoint per DESIGN.md §5 (root attrs, /model attrs, /model/<name> fp32 with a
    uint32 `checksum` attribute each, optional /optimizer/<slot>/<name>, `complete` last)."""
    import h5py

    i64 = np.int64
    with h5py.File(path, "w") as f:
        _string_attr(f, "format", "triad-checkpoint")
        f.attrs.create("format_version", i64(1), dtype="<i8")
        f.attrs.create("step", i64(step), dtype="<i8")
        f.attrs.create("tokens_seen", i64(tokens_seen), dtype="<i8")
        f.attrs.create("next_sequence", i64(next_sequence), dtype="<i8")
        f.attrs.create("epoch", i64(epoch), dtype="<i8")
        _string_attr(f, "config", config_text)
        _string_attr(f, "grid", grid)
        m = f.create_group("model")
        for key, val in (("n_layer", cfg.n_layer), ("n_head", cfg.n_head),
                         ("n_embd", cfg.n_embd), ("seq_len", cfg.seq_len),
                         ("vocab_size", cfg.vocab_size),
                         ("padded_vocab_size", cfg.padded_vocab_size)):
            m.attrs.create(key, i64(val), dtype="<i8")
        _string_attr(m, "position", cfg.position)
        if cfg.position == "rope":
            m.attrs.create("rope_theta", np.float64(cfg.rope_theta), dtype="<f8")
            if cfg.rope_local_theta:
                m.attrs.create("rope_local_theta", np.float64(cfg.rope_local_theta), dtype="<f8")
        if isinstance(cfg.rope_scaling, Yarn):
            y = cfg.rope_scaling
            _string_attr(m, "rope_scaling", "yarn")
            for key, val in (("rope_scaling_factor", y.factor), ("rope_yarn_beta_fast", y.beta_fast),
                             ("rope_yarn_beta_slow", y.beta_slow), ("rope_yarn_mscale", y.mscale),
                             ("rope_yarn_mscale_all_dim", y.mscale_all_dim)):
                m.attrs.create(key, np.float64(val), dtype="<f8")
            m.attrs.create("rope_original_positions", i64(y.original), dtype="<i8")
            if not y.truncate:
                m.attrs.create("rope_yarn_truncate", i64(0), dtype="<i8")
        elif isinstance(cfg.rope_scaling, Linear):
            _string_attr(m, "rope_scaling", "linear")
            m.attrs.create("rope_scaling_factor", np.float64(cfg.rope_scaling.factor), dtype="<f8")
        elif cfg.rope_scaling is not None:
            _string_attr(m, "rope_scaling", "llama3")
            for key, val in zip(("rope_scaling_factor", "rope_low_freq_factor",
                                 "rope_high_freq_factor"), cfg.rope_scaling[:3]):
                m.attrs.create(key, np.float64(val), dtype="<f8")
            m.attrs.create("rope_original_positions", i64(cfg.rope_scaling[3]), dtype="<i8")
        _string_attr(m, "norm", cfg.norm)
        m.attrs.create("bias", i64(1 if cfg.bias else 0), dtype="<i8")
        _string_attr(m, "mlp", cfg.mlp)
        m.attrs.create("mlp_hidden", i64(cfg.hidden), dtype="<i8")
        m.attrs.create("tie_embeddings", i64(1 if cfg.tied else 0), dtype="<i8")
        m.attrs.create("n_kv_head", i64(cfg.kv_heads), dtype="<i8")
        m.attrs.create("qk_norm", i64(1 if cfg.qk_norm else 0), dtype="<i8")
        if cfg.qk_norm_full:
            m.attrs.create("qk_norm_full", i64(1), dtype="<i8")
        if cfg.attn_sinks:
            m.attrs.create("attn_sinks", i64(1), dtype="<i8")
        for key, default in (("glu_alpha", 1.0), ("glu_limit", 0.0), ("glu_offset", 0.0)):
            if getattr(cfg, key) != default:
                m.attrs.create(key, np.float64(getattr(cfg, key)), dtype="<f8")
        if not cfg.pre_norm:
            m.attrs.create("pre_norm", i64(0), dtype="<i8")
        m.attrs.create("qkv_bias", i64(1 if cfg.qkv_bias else 0), dtype="<i8")
        if cfg.mlp_bias:
            m.attrs.create("mlp_bias", i64(1), dtype="<i8")
        if cfg.norm_bias:
            m.attrs.create("norm_bias", i64(1), dtype="<i8")
        m.attrs.create("norm_eps", np.float64(cfg.norm_eps), dtype="<f8")
        if cfg.attn_head_dim:
            m.attrs.create("head_dim", i64(cfg.attn_head_dim), dtype="<i8")
        if cfg.kv_lora_rank:
            for key in MLA_KEYS:
                m.attrs.create(key, i64(getattr(cfg, key)), dtype="<i8")
            if cfg.mla_norm_eps:
                m.attrs.create("mla_norm_eps", np.float64(cfg.mla_norm_eps), dtype="<f8")
        if cfg.rotary_dim:
            m.attrs.create("rotary_dim", i64(cfg.rotary_dim), dtype="<i8")
        if cfg.nope_every:
            m.attrs.create("nope_every", i64(cfg.nope_every), dtype="<i8")
        if cfg.sliding_window:
            m.attrs.create("sliding_window", i64(cfg.sliding_window), dtype="<i8")
        if cfg.full_attention_every:
            m.attrs.create("full_attention_every", i64(cfg.full_attention_every), dtype="<i8")
        if cfg.full_attention_first:
            m.attrs.create("full_attention_first", i64(1), dtype="<i8")
        if cfg.logit_softcap:
            m.attrs.create("logit_softcap", np.float64(cfg.logit_softcap), dtype="<f8")
        if cfg.attn_softcap:
            m.attrs.create("attn_softcap", np.float64(cfg.attn_softcap), dtype="<f8")
        if cfg.clip_qkv:
            m.attrs.create("clip_qkv", np.float64(cfg.clip_qkv), dtype="<f8")
        if not cfg.norm_weight:
            m.attrs.create("norm_weight", i64(0), dtype="<i8")
        for key in ("logit_scale", "residual_scale"):
            if getattr(cfg, key) != 1.0:
                m.attrs.create(key, np.float64(getattr(cfg, key)), dtype="<f8")
        if cfg.embed_scale != 1.0:
            m.attrs.create("embed_scale", np.float64(cfg.embed_scale), dtype="<f8")
        if cfg.parallel_residual:
            m.attrs.create("parallel_residual", i64(1), dtype="<i8")
        if cfg.branch_norm:
            m.attrs.create("branch_norm", i64(1), dtype="<i8")
        if cfg.shared_norm:
            m.attrs.create("shared_norm", i64(1), dtype="<i8")
        if cfg.head_bias:
            m.attrs.create("head_bias", i64(1), dtype="<i8")
        if cfg.attn_scale:
            m.attrs.create("attn_scale", np.float64(cfg.attn_scale), dtype="<f8")
        if cfg.mup_base_width:
            m.attrs.create("mup_base_width", i64(cfg.mup_base_width), dtype="<i8")
        if cfg.moe_experts:
            for key, val in (("moe_experts", cfg.moe_experts), ("moe_top_k", cfg.moe_top_k),
                             ("moe_normalize", int(cfg.moe_normalize))):
                m.attrs.create(key, i64(val), dtype="<i8")
            if cfg.moe_score != "softmax":
                _string_attr(m, "moe_score", cfg.moe_score)
            if cfg.moe_routed_scale != 1.0:
                m.attrs.create("moe_routed_scale", np.float64(cfg.moe_routed_scale), dtype="<f8")
            if cfg.moe_groups > 1:
                m.attrs.create("moe_groups", i64(cfg.moe_groups), dtype="<i8")
                m.attrs.create("moe_group_top_k", i64(cfg.moe_group_top_k), dtype="<i8")
            if cfg.moe_shared_hidden:
                m.attrs.create("moe_shared_hidden", i64(cfg.moe_shared_hidden), dtype="<i8")
            if cfg.moe_shared_gate:
                m.attrs.create("moe_shared_gate", i64(1), dtype="<i8")
            if cfg.moe_bias:
                m.attrs.create("moe_bias", i64(1), dtype="<i8")
            if (cfg.moe_first_dense, cfg.moe_every) != (0, 1):
                m.attrs.create("moe_first_dense", i64(cfg.moe_first_dense), dtype="<i8")
                m.attrs.create("moe_every", i64(cfg.moe_every), dtype="<i8")
            if cfg.moe_dense_hidden:
                m.attrs.create("moe_dense_hidden", i64(cfg.moe_dense_hidden), dtype="<i8")
        if cfg.mtp_depth:
            m.attrs.create("mtp_depth", i64(cfg.mtp_depth), dtype="<i8")
        groups = {"model": weights}
        for slot, tensors in (optimizer or {}).items():
            groups["optimizer/" + slot] = tensors
        shapes = param_shapes(cfg)
        for gpath, tensors in groups.items():
            for name, shape in shapes.items():
                a = tensors[name].detach().cpu().numpy().astype("<f4")
                assert a.shape == shape, (name, a.shape, shape)
                d = f.create_dataset(f"{gpath}/{name}", data=a, dtype="<f4")
                d.attrs.create("checksum", np.uint32(fp32_checksum(a)), dtype="<u4")
        f.flush()
        f.attrs.create("complete", i64(1), dtype="<i8")


def load_checkpoint(path, dtype=torch.float64) -> Tuple[GptConfig, Dict[str, torch.Tensor]]:
    """Reads /model of a triad checkpoint: (config, name -> tensor). Verifies checksums."""
    import h5py

    with h5py.File(path, "r") as f:
        assert int(f.attrs["complete"]) == 1, f"{path}: incomplete checkpoint"
        a = f["model"].attrs
        if "rope_scaling" in a and _str(a["rope_scaling"]) not in ("none", "llama3", "yarn",
                                                                   "linear"):
            raise ValueError(f"{path}: rope_scaling {_str(a['rope_scaling'])} is not in this "
                             f"reference (its rotary has none, llama3, yarn and linear)")
        position = _str(a["position"]) if "position" in a else "learned"
        cfg = GptConfig(int(a["n_layer"]), int(a["n_head"]), int(a["n_embd"]),
                        int(a["seq_len"]), int(a["vocab_size"]), position=position,
                        rope_theta=float(a["rope_theta"]) if position == "rope" else 10000.0,
                        norm=_str(a["norm"]) if "norm" in a else "layernorm",
                        bias=int(a["bias"]) == 1 if "bias" in a else True,
                        mlp=_str(a["mlp"]) if "mlp" in a else "gelu",
                        mlp_hidden=int(a["mlp_hidden"]) if "mlp_hidden" in a else 0,
                        tied=int(a["tie_embeddings"]) == 1 if "tie_embeddings" in a else True,
                        n_kv_head=int(a["n_kv_head"]) if "n_kv_head" in a else 0,
                        qk_norm=int(a["qk_norm"]) == 1 if "qk_norm" in a else False,
                        qk_norm_full=int(a.get("qk_norm_full", 0)) == 1,
                        attn_sinks=int(a.get("attn_sinks", 0)) == 1,
                        glu_alpha=float(a.get("glu_alpha", 1.0)),
                        glu_limit=float(a.get("glu_limit", 0.0)),
                        glu_offset=float(a.get("glu_offset", 0.0)),
                        pre_norm=int(a.get("pre_norm", 1)) == 1,
                        qkv_bias=int(a["qkv_bias"]) == 1 if "qkv_bias" in a else False,
                        mlp_bias=int(a.get("mlp_bias", 0)) == 1,
                        norm_bias=int(a.get("norm_bias", 0)) == 1,
                        norm_eps=float(a["norm_eps"]) if "norm_eps" in a else LN_EPS,
                        attn_head_dim=int(a["head_dim"]) if "head_dim" in a else 0,
                        rotary_dim=int(a.get("rotary_dim", 0)),
                        nope_every=int(a.get("nope_every", 0)),
                        **{key: int(a.get(key, 0)) for key in MLA_KEYS},
                        mla_norm_eps=float(a.get("mla_norm_eps", 0.0)),
                        logit_softcap=float(a.get("logit_softcap", 0.0)),
                        attn_softcap=float(a.get("attn_softcap", 0.0)),
                        clip_qkv=float(a.get("clip_qkv", 0.0)),
                        norm_weight=int(a.get("norm_weight", 1)) == 1,
                        logit_scale=float(a.get("logit_scale", 1.0)),
                        residual_scale=float(a.get("residual_scale", 1.0)),
                        embed_scale=float(a.get("embed_scale", 1.0)),
                        parallel_residual=int(a.get("parallel_residual", 0)) == 1,
                        branch_norm=int(a.get("branch_norm", 0)) == 1,
                        shared_norm=int(a.get("shared_norm", 0)) == 1,
                        head_bias=int(a.get("head_bias", 0)) == 1,
                        attn_scale=float(a.get("attn_scale", 0.0)),
                        mup_base_width=int(a.get("mup_base_width", 0)),
                        moe_experts=int(a.get("moe_experts", 0)),
                        moe_top_k=int(a.get("moe_top_k", 2)),
                        moe_normalize=int(a.get("moe_normalize", 1)) == 1,
                        moe_score=_str(a["moe_score"]) if "moe_score" in a else "softmax",
                        moe_routed_scale=float(a.get("moe_routed_scale", 1.0)),
                        moe_groups=int(a.get("moe_groups", 1)),
                        moe_group_top_k=int(a.get("moe_group_top_k", 1)),
                        moe_shared_hidden=int(a.get("moe_shared_hidden", 0)),
                        moe_shared_gate=int(a.get("moe_shared_gate", 0)) == 1,
                        moe_bias=int(a.get("moe_bias", 0)) == 1,
                        mtp_depth=int(a.get("mtp_depth", 0)),
                        moe_first_dense=int(a.get("moe_first_dense", 0)),
                        moe_every=int(a.get("moe_every", 1)),
                        moe_dense_hidden=int(a.get("moe_dense_hidden", 0)),
                        rope_scaling=(float(a["rope_scaling_factor"]),
                                      float(a["rope_low_freq_factor"]),
                                      float(a["rope_high_freq_factor"]),
                                      int(a["rope_original_positions"]))
                        if "rope_scaling" in a and _str(a["rope_scaling"]) == "llama3" else
                        Yarn(float(a["rope_scaling_factor"]), int(a["rope_original_positions"]),
                             float(a["rope_yarn_beta_fast"]), float(a["rope_yarn_beta_slow"]),
                             float(a.get("rope_yarn_mscale", 1.0)),
                             float(a.get("rope_yarn_mscale_all_dim", 0.0)),
                             int(a.get("rope_yarn_truncate", 1)) == 1)
                        if "rope_scaling" in a and _str(a["rope_scaling"]) == "yarn" else
                        Linear(float(a["rope_scaling_factor"]))
                        if "rope_scaling" in a and _str(a["rope_scaling"]) == "linear" else None,
                        rope_local_theta=float(a.get("rope_local_theta", 0.0)),
                        sliding_window=int(a.get("sliding_window", 0)),
                        full_attention_every=int(a.get("full_attention_every", 0)),
                        full_attention_first=int(a.get("full_attention_first", 0)) == 1)
        if cfg.n_kv_head == cfg.n_head:
            cfg = GptConfig(**{**cfg.__dict__, "n_kv_head": 0})  # the default: one per head
        if cfg.mlp_hidden == GptConfig(**{**cfg.__dict__, "mlp_hidden": 0}).hidden:
            cfg = GptConfig(**{**cfg.__dict__, "mlp_hidden": 0})  # the default width
        out = {}
        for name, shape in param_shapes(cfg).items():
            d = f["model/" + name]
            arr = d[...].astype("<f4")
            if "checksum" in d.attrs:
                assert fp32_checksum(arr) == int(d.attrs["checksum"]), f"{name}: bad checksum"
            if name in ("wte/weight", "lm_head/weight") and arr.shape[0] != shape[0]:
                pad = np.zeros(shape, dtype="<f4")
                rows = min(shape[0], arr.shape[0])
                pad[:rows] = arr[:rows]
                pad[cfg.vocab_size:] = 0
                arr = pad
            out[name] = torch.from_numpy(arr.copy()).to(dtype)
    return cfg, out


def read_metrics(path) -> Dict[str, np.ndarray]:
    """metrics.h5 as {'train/loss': array, ..., 'val/loss': ...}."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for g in ("train", "val", "val_ema"):
            if g in f:
                for k, d in f[g].items():
                    out[f"{g}/{k}"] = d[...]
    return out


def write_config(path, sections: Dict[str, Dict[str, object]]) -> str:
    """An INI file from {section: {key: value}}; returns its text."""
    lines = []
    for s, kv in sections.items():
        lines.append(f"[{s}]")
        for k, v in kv.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            lines.append(f"{k} = {v}")
        lines.append("")
    text = "\n".join(lines)
    with open(path, "w") as f:
        f.write(text)
    return text
