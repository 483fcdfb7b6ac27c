"""MiniCPM's Hugging Face models as triad's model: MiniCPM 1 and 2's (model_type minicpm:
MiniCPM-1B, MiniCPM-2B) are Llama's blocks with MiniCPM's scalings (minicpm_scalings in
weights_hf_families.py, read by llama_config_dims); MiniCPM3's (model_type minicpm3: MiniCPM3-4B)
DeepSeek-V2's multi-head latent attention (its tensors and names, the rotated values in rotate-half
pairs, the latent norms at epsilon 1e-6) on Llama's dense blocks, with MiniCPM's scalings: the
embedding times scale_emb (model.embed_scale), each branch's output times scale_depth / sqrt(layers)
(model.residual_scale), the logits divided by hidden_size / dim_model_base (model.logit_scale), and
LongRoPE's per-pair frequency divisors (model.rope_scaling = longrope).

The semantics followed are OpenBMB's modeling code for MiniCPM3-4B and transformers' port of it,
which agree on the computation but not on the defaults of several keys (v_head_dim, scale_emb,
scale_depth, dim_model_base, rms_norm_eps): those must be in the file. MiniCPM3 is import only: the
export formats have none of its scalings beside latent attention (its export is refused, naming
them); MiniCPM 1 and 2 export as Granite."""

from __future__ import annotations

import math

from .weights_dims import ConvertError, Dims
from .weights_hf_deepseek import DeepSeekConfig, latent_attention_sizes, latent_norm_eps
from .weights_hf_families import LlamaLikeConfig, minicpm_scalings, refuse_or_check_positions

# Keys whose defaults differ between OpenBMB's config class and transformers' MiniCPM3Config.
MINICPM3_REQUIRED = ("v_head_dim", "scale_emb", "scale_depth", "dim_model_base", "rms_norm_eps",
                     "qk_nope_head_dim", "qk_rope_head_dim", "kv_lora_rank")
# What both classes take for the other keys the reader asks for (absent q_lora_rank: 768; null:
# queries from the token).
MINICPM3_DEFAULTS = dict(q_lora_rank=768, hidden_act="silu", attention_bias=False, mlp_bias=False,
                         pretraining_tp=1)


def minicpm3_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A MiniCPM3 config as triad's model (see the module's doc); refused where triad computes
    something else."""
    missing = [k for k in MINICPM3_REQUIRED if cfg.get(k) is None]
    if missing:
        raise ConvertError(f"{where}: a MiniCPM3 config needs {', '.join(missing)} (OpenBMB's "
                           f"code and transformers' default them differently)")
    c = LlamaLikeConfig(cfg, where, "rms_norm_eps", 1e-5)
    sizes, refusals = latent_attention_sizes(DeepSeekConfig(cfg, where, MINICPM3_DEFAULTS), c)
    scales = minicpm_scalings(cfg, where, c.n_layer, c.n_embd, refusals)

    longrope = None
    r = cfg.get("rope_scaling")
    if r:
        try:
            longrope = minicpm3_longrope(r, c.n_pos, sizes["qk_rope_head_dim"])
        except (KeyError, TypeError, ValueError) as e:
            refusals.append(f"rope_scaling {r} (triad builds MiniCPM3's 'longrope' where its "
                            f"original_max_position_embeddings is max_position_embeddings"
                            f"{'; ' + str(e) if str(e) else ''})")
    refuse_or_check_positions(where, refusals, seq_len, c.n_pos, "max_position_embeddings")
    d = Dims(c.n_layer, c.n_head, c.n_embd, seq_len or c.n_pos, c.vocab, position="rope",
             rope_theta=c.theta, norm="rmsnorm", bias=False, mlp="swiglu", mlp_hidden=c.hidden,
             tied=bool(cfg.get("tie_word_embeddings", True)), norm_eps=c.eps,
             mla_norm_eps=latent_norm_eps(c.eps),
             longrope=longrope, **sizes, **scales, deepseek="deepseek_v2",
             rope_interleave=False)
    d.check(where)
    return d


def minicpm3_longrope(r: dict, n_pos: int, rope_dim: int) -> tuple:
    """(stretch 1, original positions, short factors, long factors) of MiniCPM3's LongRoPE: each
    rotated pair's frequency divided by its short factor. Only a context that is not stretched
    (original_max_position_embeddings = max_position_embeddings, MiniCPM3-4B's) is read: beyond
    it OpenBMB's code takes the long factors for every length (its cache is built for the whole
    context) where transformers' decides by each call's length."""
    kind = r.get("rope_type", r.get("type"))
    if kind != "longrope":
        raise ValueError(f"rope type {kind!r} is not built")
    for k in ("short_mscale", "long_mscale", "attention_factor", "factor"):
        if r.get(k) is not None:
            raise ValueError(f"{k} is not built")
    original = r.get("original_max_position_embeddings", n_pos)
    if isinstance(original, bool) or not isinstance(original, int) or original != n_pos:
        raise ValueError(f"original_max_position_embeddings {original!r} is not "
                         f"max_position_embeddings {n_pos}")
    short = tuple(float(x) for x in r["short_factor"])
    long = tuple(float(x) for x in r["long_factor"])
    if len(short) != rope_dim // 2 or len(long) != rope_dim // 2:
        raise ValueError(f"short_factor and long_factor need {rope_dim // 2} numbers each "
                         f"(qk_rope_head_dim / 2)")
    if not all(math.isfinite(x) and x > 0 for x in short + long):
        raise ValueError("the factors must be finite numbers > 0")
    return 1.0, original, short, long
