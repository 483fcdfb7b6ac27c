"""MiniCPM's Hugging Face models as triad's model: MiniCPM 1 and 2's (model_type minicpm:
MiniCPM-1B, MiniCPM-2B) are Llama's blocks with MiniCPM's scalings (minicpm_scalings, read by
llama_config_dims); MiniCPM3's (model_type minicpm3: MiniCPM3-4B) DeepSeek-V2's
multi-head latent attention (its tensors and names, the rotated values in rotate-half pairs, the
latent norms at epsilon 1e-6) on Llama's dense blocks, with MiniCPM's scalings: the embedding
times scale_emb (model.embed_scale), each branch's output times scale_depth / sqrt(layers)
(model.residual_scale), the logits divided by hidden_size / dim_model_base (model.logit_scale),
and LongRoPE's per-pair frequency divisors (model.rope_scaling = longrope).

The semantics followed are OpenBMB's modeling code for MiniCPM3-4B and transformers' port of it,
which agree on the computation but not on the defaults of several keys (v_head_dim, scale_emb,
scale_depth, dim_model_base, rms_norm_eps): those must be in the file. MiniCPM3 is import
only: the export formats have none of its scalings beside latent attention (its export is
refused, naming them); MiniCPM 1 and 2 export as Granite."""

from __future__ import annotations

import math

import numpy as np

from .weights_dims import ConvertError, Dims
from .weights_hf_families import LlamaLikeConfig, refuse_or_check_positions

# Keys of MiniCPM 1 and 2 a file must name: OpenBMB's config class defaults them to 1, no
# scaling, which no released model has. (tie_word_embeddings defaults to true there, as in
# transformers' base class, so save_pretrained leaves a tied model's out.)
MINICPM_REQUIRED = ("scale_emb", "scale_depth", "dim_model_base")
# Keys whose defaults differ between OpenBMB's config class and transformers' MiniCPM3Config.
MINICPM3_REQUIRED = ("v_head_dim", "scale_emb", "scale_depth", "dim_model_base", "rms_norm_eps",
                     "qk_nope_head_dim", "qk_rope_head_dim", "kv_lora_rank")
# The epsilon both build the latent norms (q_a_layernorm, kv_a_layernorm) with.
MINICPM3_LATENT_NORM_EPS = 1e-6


def minicpm3_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A MiniCPM3 config as triad's model (see the module's doc); refused where triad computes
    something else."""
    missing = [k for k in MINICPM3_REQUIRED if cfg.get(k) is None]
    if missing:
        raise ConvertError(f"{where}: a MiniCPM3 config needs {', '.join(missing)} (OpenBMB's "
                           f"code and transformers' default them differently)")
    c = LlamaLikeConfig(cfg, where, "rms_norm_eps", 1e-5)
    refusals = [x for x in c.refusals if not x.startswith("num_key_value_heads")]
    if c.kv != c.n_head:
        refusals.append(f"num_key_value_heads {c.kv} other than num_attention_heads {c.n_head} "
                        f"(multi-head latent attention gives every head its own key and value)")

    def count(key, null=None):
        v = cfg.get(key)
        if v is None and null is not None:
            return null
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConvertError(f"{where}: {key} = {v!r} is not an integer >= 0")
        return v

    # q_lora_rank: absent, both classes' 768; null, queries from the token (q_proj).
    q_lora_rank = count("q_lora_rank", null=0) if "q_lora_rank" in cfg else 768
    sizes = dict(kv_lora_rank=count("kv_lora_rank"), q_lora_rank=q_lora_rank,
                 qk_nope_head_dim=count("qk_nope_head_dim"),
                 qk_rope_head_dim=count("qk_rope_head_dim"), v_head_dim=count("v_head_dim"))
    if min(sizes["kv_lora_rank"], sizes["qk_rope_head_dim"], sizes["v_head_dim"]) < 2 or \
            any(x % 2 for x in sizes.values()):
        refusals.append(", ".join(f"{key} {v}" for key, v in sizes.items()) +
                        " (triad's latent attention needs kv_lora_rank, qk_rope_head_dim and "
                        "v_head_dim > 0, and every size even)")
    if cfg.get("hidden_act", "silu") != "silu":
        refusals.append(f"hidden_act {cfg.get('hidden_act')!r} (SwiGLU uses silu)")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            refusals.append(f"{key} = true (triad's latent attention and MLPs have no biases)")
    if cfg.get("pretraining_tp", 1) not in (None, 1):
        refusals.append(f"pretraining_tp {cfg['pretraining_tp']}")
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
             mla_norm_eps=0.0 if c.eps == MINICPM3_LATENT_NORM_EPS else MINICPM3_LATENT_NORM_EPS,
             longrope=longrope, **sizes, **scales, deepseek="deepseek_v2",
             rope_interleave=False)
    d.check(where)
    return d


def minicpm_scalings(cfg: dict, where: str, n_layer: int, n_embd: int,
                     refusals: list[str]) -> dict:
    """MiniCPM's scalings as Dims fields, rounded to fp32 as the products use them: the embedding
    times scale_emb, each branch's output times scale_depth / sqrt(n_layer), the final hidden
    state divided by n_embd / dim_model_base before the (linear) head, i.e. the logits times
    dim_model_base / n_embd. A value triad does not take is added to refusals."""
    v = {}
    for k in ("scale_emb", "scale_depth", "dim_model_base"):
        x = cfg.get(k)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or \
                x <= 0:
            raise ConvertError(f"{where}: {k} = {x!r} is not a finite number > 0")
        v[k] = float(x)
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    scales = dict(embed_scale=f32(v["scale_emb"]),
                  residual_scale=f32(v["scale_depth"] / math.sqrt(n_layer)),
                  logit_scale=f32(v["dim_model_base"] / n_embd))
    for k, x in scales.items():
        if not 0 < x <= 1e4:
            refusals.append(f"{k} {x} from scale_emb, scale_depth, dim_model_base (triad's "
                            f"model.{k} is in (0, 1e4])")
    return scales


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
