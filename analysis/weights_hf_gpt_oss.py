"""OpenAI's gpt-oss models in Hugging Face's format (model_type gpt_oss, GptOssForCausalLM:
gpt-oss-20b, gpt-oss-120b) as triad's model: the config read as Dims (refusing what triad does not
compute) and the tensors, the experts' MXFP4 blocks dequantized and their interleaved gate and up
rows put in triad's order. Used by weights_hf_import.py.

What a gpt-oss block computes, in triad's terms (docs/formats.md "Weights from other programs"):
RMSNorm; grouped-query attention with biases on q, k, v and o, a learned sink logit per query
head (model.attn_sinks), a 128-token window in every other layer starting with the first
(layer_types: model.sliding_window, full_attention_every = 2), rope with YaRN's scaling whose
ramp ends are not rounded (model.rope_yarn_truncate = false); RMSNorm; a mixture of SwiGLU
experts, every layer, whose router's logits have a bias, each token's top k by logit weighed by
the softmax over those k (triad's softmax renormalized over the chosen: the same gates), each
expert's products with biases (model.moe_bias) and the activation (g clamped above at L) ·
σ(α·g) · (u clamped to [−L, L] + 1) (model.glu_alpha, glu_limit, glu_offset = α, L, 1); an
untied head without a bias."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .weights_dims import (MAX_EXPERTS, ConvertError, Dims, Tensors, attr_text,
                           checkpoint_yarn, full_attention_period, hf_shapes, unheld_attributes)
from .weights_hf_deepseek import DeepSeekConfig
from .weights_hf_families import refuse_or_check_positions, yarn_scaling
from .weights_hf_layout import llama_part_rows, llama_query_order

# transformers' GptOssConfig's defaults of the keys read here: what it computes for a config.json
# that leaves one out (swiglu_alpha: transformers before 5 have none and use 1.702).
GPT_OSS_DEFAULTS = dict(num_hidden_layers=36, num_local_experts=128, vocab_size=201088,
                        hidden_size=2880, intermediate_size=2880, head_dim=64,
                        num_attention_heads=64, num_key_value_heads=8, sliding_window=128,
                        tie_word_embeddings=False, hidden_act="silu",
                        max_position_embeddings=131072, rms_norm_eps=1e-5,
                        num_experts_per_tok=4, swiglu_alpha=1.702, swiglu_limit=7.0,
                        attention_bias=True, rope_theta=150000.0,
                        rope_scaling=dict(rope_type="yarn", factor=32.0, beta_fast=32.0,
                                          beta_slow=1.0, truncate=False,
                                          original_max_position_embeddings=4096))

# FP4 (E2M1) values of the 16 codes, as the OCP Microscaling format defines them: sign, two
# exponent bits, one mantissa bit.
FP4_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                     -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype="<f4")
MXFP4_BLOCK = 32  # values sharing one E8M0 scale


def gpt_oss_config_dims(cfg: dict, where: str, seq_len: int | None, layout: str = "hf") -> Dims:
    """A gpt-oss config.json as triad's model (module docstring); what triad does not compute
    is refused, naming the key."""
    c = DeepSeekConfig(cfg, where, GPT_OSS_DEFAULTS)  # (typed keys, transformers' defaults)
    value = c.value
    n_layer, n_head, n_embd = (c.count(k, 1) for k in ("num_hidden_layers",
                                                       "num_attention_heads", "hidden_size"))
    hidden, vocab, n_pos = (c.count(k, 1) for k in ("intermediate_size", "vocab_size",
                                                    "max_position_embeddings"))
    kv, E, k = (c.count(k, 1) for k in ("num_key_value_heads", "num_local_experts",
                                        "num_experts_per_tok"))
    hd = c.count("head_dim", 1) if value("head_dim") is not None else n_embd // n_head
    eps, theta = c.number("rms_norm_eps"), c.number("rope_theta")
    alpha, limit = c.number("swiglu_alpha"), c.number("swiglu_limit")
    refusals = []
    if n_head % kv:
        refusals.append(f"num_key_value_heads {kv} does not divide num_attention_heads {n_head}")
    if value("hidden_act") != "silu":
        refusals.append(f"hidden_act {value('hidden_act')!r} (gpt-oss's experts use silu)")
    if not (0 < eps <= 0.1):
        refusals.append(f"rms_norm_eps {eps} (triad's model.norm_eps is in (0, 0.1])")
    if not (E <= MAX_EXPERTS and k <= E):
        refusals.append(f"num_local_experts {E} and num_experts_per_tok {k} (triad builds up to "
                        f"{MAX_EXPERTS} experts, at most all of them per token)")
    if not (0 < alpha <= 100):
        refusals.append(f"swiglu_alpha {alpha} (triad's model.glu_alpha is in (0, 100])")
    if not (limit == 0 or 1e-6 <= limit <= 1e4):
        refusals.append(f"swiglu_limit {limit} (triad's model.glu_limit is 0 or in [1e-6, 1e4])")
    q = cfg.get("quantization_config")
    if q is not None and not (isinstance(q, dict) and q.get("quant_method") == "mxfp4"):
        refusals.append(f"quantization_config {json.dumps(q)} (triad reads gpt-oss's experts in "
                        f"bf16 or as its MXFP4 blocks, quant_method mxfp4)")
    # Which layers keep to the window: layer_types (absent: sliding, full, sliding, ...).
    window = value("sliding_window") or 0
    types = cfg.get("layer_types")
    if types is None:
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layer)]
    every, first = 0, False
    if not (isinstance(types, list) and len(types) == n_layer and
            all(t in ("sliding_attention", "full_attention") for t in types)):
        refusals.append(f"layer_types {json.dumps(types)} (one of sliding_attention and "
                        f"full_attention for each of the {n_layer} layers)")
    elif not window and any(t == "sliding_attention" for t in types):
        refusals.append(f"layer_types {json.dumps(types)} with sliding_window "
                        f"{json.dumps(value('sliding_window'))} (sliding layers need a window)")
    elif window and not all(t == "full_attention" for t in types):
        period = full_attention_period([t == "full_attention" for t in types])
        if period is None:
            refusals.append(f"layer_types {json.dumps(types)} (triad's full-attention layers "
                            f"repeat with a period: model.full_attention_every)")
        else:
            every, first = period
    else:
        window = 0  # no layer keeps to a window
    yarn, truncate = None, True
    r = value("rope_scaling")  # (absent: transformers' default, YaRN; null or default: none)
    if isinstance(r, dict) and r.get("rope_type", r.get("type")) == "default":
        r = None
    if r is not None:
        try:
            yarn, truncate = yarn_of(r, n_pos)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            refusals.append(f"rope_scaling {json.dumps(r)} (triad builds YaRN with factor >= 1, "
                            f"beta_fast >= beta_slow > 0, max_position_embeddings = factor · "
                            f"original_max_position_embeddings and its own attention factor"
                            f"{': ' + str(e) if str(e) else ''})")
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "max_position_embeddings")
    d = Dims(n_layer, n_head, n_embd, seq_len or n_pos, vocab, position="rope",
             rope_theta=theta, norm="rmsnorm", bias=bool(value("attention_bias")),
             mlp="swiglu", mlp_hidden=hidden, tied=bool(value("tie_word_embeddings")),
             n_kv_head=kv, norm_eps=eps, head_dim=hd if hd * n_head != n_embd else 0,
             sliding_window=window, full_attention_every=every, full_attention_first=first,
             yarn=yarn, yarn_truncate=truncate, moe_experts=E, moe_top_k=k, moe_normalize=True,
             moe_bias=True, attn_sinks=True, glu=(alpha, limit, 1.0), gpt_oss=layout)
    d.check(where)
    return d


# OpenAI's own checkpoint layout (the gpt-oss repositories' original/ directory, which its
# reference implementation reads): config.json holds the fields of its ModelConfig, with these
# defaults (gpt-oss-120b's), and nothing else.
OPENAI_DEFAULTS = dict(num_hidden_layers=36, num_experts=128, experts_per_token=4,
                       vocab_size=201088, hidden_size=2880, intermediate_size=2880,
                       swiglu_limit=7.0, head_dim=64, num_attention_heads=64,
                       num_key_value_heads=8, sliding_window=128, initial_context_length=4096,
                       rope_theta=150000.0, rope_scaling_factor=32.0, rope_ntk_alpha=1.0,
                       rope_ntk_beta=32.0)


def is_openai_config(cfg: dict) -> bool:
    """Whether a config.json is OpenAI's own for gpt-oss (no model_type; its YaRN's keys)."""
    return "model_type" not in cfg and {"experts_per_token", "rope_ntk_alpha",
                                        "rope_ntk_beta"} <= cfg.keys()


def openai_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """OpenAI's gpt-oss config.json read as its reference implementation does (every other
    layer windowed from the first, RMSNorm at 1e-5, biases in the attention, an untied head,
    YaRN where rope_scaling_factor > 1 from initial_context_length positions, with
    rope_ntk_beta and rope_ntk_alpha the ramp's fast and slow ends, unrounded), as the Hugging
    Face config transformers' converter writes for it."""
    unknown = sorted(set(cfg) - OPENAI_DEFAULTS.keys())
    if unknown:
        raise ConvertError(f"{where}: {', '.join(unknown)} not among the keys of OpenAI's gpt-oss "
                           f"config ({', '.join(OPENAI_DEFAULTS)})")
    v = {**OPENAI_DEFAULTS, **cfg}
    L, window, factor = v["num_hidden_layers"], v["sliding_window"], v["rope_scaling_factor"]
    original = v["initial_context_length"]
    try:
        factor, positions = float(factor), float(factor) * int(original)
    except (TypeError, ValueError):
        raise ConvertError(f"{where}: rope_scaling_factor {json.dumps(factor)} and "
                           f"initial_context_length {json.dumps(original)} are not numbers")
    if factor > 1 and positions != int(positions):
        raise ConvertError(f"{where}: rope_scaling_factor {factor} times initial_context_length "
                           f"{original} is not a whole number of positions")
    hf = {"model_type": "gpt_oss", "num_local_experts": v["num_experts"],
          "num_experts_per_tok": v["experts_per_token"], "rms_norm_eps": 1e-5,
          "tie_word_embeddings": False, "attention_bias": True, "hidden_act": "silu",
          "swiglu_alpha": 1.702, "quantization_config": {"quant_method": "mxfp4"},
          "layer_types": ["sliding_attention" if window and i % 2 == 0 else "full_attention"
                          for i in range(L)] if isinstance(L, int) else None,
          "max_position_embeddings": int(positions) if factor > 1 else original,
          "rope_scaling": {"rope_type": "yarn", "factor": factor, "beta_fast": v["rope_ntk_beta"],
                           "beta_slow": v["rope_ntk_alpha"], "truncate": False,
                           "original_max_position_embeddings": original} if factor > 1 else None,
          **{k: v[k] for k in ("num_hidden_layers", "vocab_size", "hidden_size",
                               "intermediate_size", "swiglu_limit", "head_dim",
                               "num_attention_heads", "num_key_value_heads", "sliding_window",
                               "rope_theta")}}
    return gpt_oss_config_dims(hf, where, seq_len, layout="openai")


def yarn_of(r, n_pos: int) -> tuple:
    """((factor, beta_fast, beta_slow, original positions), truncate) of gpt-oss's YaRN
    rope_scaling, for a context of n_pos positions: transformers (4.55 on, the versions that
    build gpt-oss) take the ratio max_position_embeddings / original_max_position_embeddings as
    the factor where the latter is given, so the two must agree; the attention factor is YaRN's
    0.1·ln(factor) + 1."""
    kind = r.get("rope_type", r.get("type"))
    if kind != "yarn":
        raise ValueError(f"rope_type {kind!r}")
    truncate = r.get("truncate", True)
    if not isinstance(truncate, bool):
        raise ValueError(f"truncate {json.dumps(truncate)} is not true or false")
    # The Llama family's reading otherwise (the mscales, the attention factor, the ranges), for a
    # context that YaRN stretched (without original_max_position_embeddings it is that already).
    yarn = yarn_scaling({k: v for k, v in r.items() if k != "truncate"}, n_pos, stretched=True)
    factor, original = yarn[0], yarn[3]
    if "original_max_position_embeddings" in r and not math.isclose(n_pos / original, factor):
        raise ValueError(f"factor {factor} is not max_position_embeddings / "
                         f"original_max_position_embeddings = {n_pos} / {original}")
    return yarn, truncate


# Each layer's tensors of triad's and their sources, under the layer's prefix, in Hugging Face's
# layout ("model.layers.{i}.") and in OpenAI's ("block.{i}."): c_attn's from q, k and v stacked
# by rows (OpenAI's qkv whole); an expert weight from its MXFP4 blocks and scales (the name with
# _blocks and _scales, or OpenAI's .blocks and .scales), or Hugging Face's bf16 tensor.
GPT_OSS_LAYER = (
    ("ln_1/weight", ["input_layernorm.weight"], ["attn.norm.scale"]),
    ("attn/c_attn/weight", [f"self_attn.{x}_proj.weight" for x in "qkv"], ["attn.qkv.weight"]),
    ("attn/c_attn/bias", [f"self_attn.{x}_proj.bias" for x in "qkv"], ["attn.qkv.bias"]),
    ("attn/c_proj/weight", ["self_attn.o_proj.weight"], ["attn.out.weight"]),
    ("attn/c_proj/bias", ["self_attn.o_proj.bias"], ["attn.out.bias"]),
    ("attn/sinks", ["self_attn.sinks"], ["attn.sinks"]),
    ("ln_2/weight", ["post_attention_layernorm.weight"], ["mlp.norm.scale"]),
    ("mlp/router/weight", ["mlp.router.weight"], ["mlp.gate.weight"]),
    ("mlp/router/bias", ["mlp.router.bias"], ["mlp.gate.bias"]),
    ("mlp/experts/c_fc/weight", ["mlp.experts.gate_up_proj"], ["mlp.mlp1_weight"]),
    ("mlp/experts/c_fc/bias", ["mlp.experts.gate_up_proj_bias"], ["mlp.mlp1_bias"]),
    ("mlp/experts/c_proj/weight", ["mlp.experts.down_proj"], ["mlp.mlp2_weight"]),
    ("mlp/experts/c_proj/bias", ["mlp.experts.down_proj_bias"], ["mlp.mlp2_bias"]))
# ... and the model's others.
GPT_OSS_OUTER = (("wte/weight", "model.embed_tokens.weight", "embedding.weight"),
                 ("ln_f/weight", "model.norm.weight", "norm.scale"),
                 ("lm_head/weight", "lm_head.weight", "unembedding.weight"))


def gpt_oss_sources(d: Dims, mxfp4: bool) -> dict[str, list[str]]:
    """Each triad tensor and the tensors of d's layout (Dims.gpt_oss) it is made of
    (GPT_OSS_LAYER); mxfp4: the experts' weights as MXFP4 blocks (OpenAI's always are)."""
    openai = d.gpt_oss == "openai"
    src = {t: [oa if openai else hf] for t, hf, oa in GPT_OSS_OUTER
           if t != "lm_head/weight" or not d.tied}
    for i in range(d.n_layer):
        prefix = f"block.{i}." if openai else f"model.layers.{i}."
        for t, hf, oa in GPT_OSS_LAYER:
            if t in ("attn/c_attn/bias", "attn/c_proj/bias") and not d.bias:
                continue  # (attention_bias false)
            names = [prefix + n for n in (oa if openai else hf)]
            if "/experts/" in t and t.endswith("/weight") and (mxfp4 or openai):
                names = [names[0] + ("." if openai else "_") + x for x in ("blocks", "scales")]
            src[f"h/{i}/{t}"] = names
    return src


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray, name: str, where: str) -> np.ndarray:
    """MXFP4 blocks [..., G, 16] (two FP4 codes a byte, the low nibble first) with their E8M0
    scales [..., G] (2^(s − 127)) as fp32 [..., G·32]."""
    if scales.shape != blocks.shape[:-1] or blocks.shape[-1] != MXFP4_BLOCK // 2:
        raise ConvertError(f"{where}: {name}_blocks {list(blocks.shape)} and {name}_scales "
                           f"{list(scales.shape)} are not MXFP4 blocks of {MXFP4_BLOCK} values "
                           f"([..., G, 16] bytes and [..., G] scales)")
    if (scales == 255).any():  # E8M0's NaN
        raise ConvertError(f"{where}: {name}_scales holds 255, E8M0's NaN")
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], -1)
    with np.errstate(over="ignore"):  # (beyond fp32: inf, refused by convert_weights)
        out = np.ldexp(FP4_E2M1[codes], scales.astype(np.int32)[..., None] - 127)
    return out.reshape(*blocks.shape[:-2], -1).astype("<f4", copy=False)


def gate_up_order(a: np.ndarray, to_hf: bool = False) -> np.ndarray:
    """gpt-oss's gate_up rows [E, 2·I, ...] interleaved (gate 0, up 0, gate 1, ...) as triad's
    c_fc [E, 2·I, ...]: the I gate rows, then the I up rows; or (to_hf) back."""
    E, rows = a.shape[:2]
    split = (E, 2, rows // 2) if to_hf else (E, rows // 2, 2)
    return np.ascontiguousarray(a.reshape(*split, *a.shape[2:]).swapaxes(1, 2)).reshape(a.shape)


def holds_mxfp4(d: Dims, where: dict) -> bool:
    """Whether the files (tensor name -> file) hold the experts as MXFP4 blocks (OpenAI's always
    do)."""
    return d.gpt_oss == "openai" or any(n.endswith("experts.gate_up_proj_blocks") for n in where)


def gpt_oss_tensors(d: Dims, where: dict, directory: Path) -> Tensors:
    """The tensors of a gpt-oss model as triad's, each checked before any is read: the experts'
    weights from MXFP4 blocks where the files hold them, else from bf16 gate_up_proj
    [E, C, 2·I] and down_proj [E, I, C] (transposed, as transformers' bmm reads them)."""
    openai = d.gpt_oss == "openai"
    mxfp4 = holds_mxfp4(d, where)
    src = gpt_oss_sources(d, mxfp4)
    want = hf_shapes(d)
    used = {n for names in src.values() for n in names}
    for name in where:
        if name not in used:
            raise ConvertError(f"{where[name].path}: tensor {name} is not part of a gpt-oss model "
                               f"as triad has it" + (" (the files mix MXFP4 and bf16 experts)"
                                                     if "experts." in name else ""))
    E, C, I = d.moe_experts, d.n_embd, d.mlp_hidden
    for t, names in src.items():
        missing = [n for n in names if n not in where]
        if missing:
            raise ConvertError(f"{directory}: tensor(s) {', '.join(missing)} missing")
        got = [list(where[n].entries[n][1]) for n in names]
        if (t.endswith("attn/c_attn/weight") or t.endswith("attn/c_attn/bias")) and not openai:
            expected = [[r, *want[t][1:]] for r in llama_part_rows(d, t, want[t][0])]
        elif "/mlp/experts/" in t and t.endswith("weight"):
            out, inp = (2 * I, C) if "c_fc" in t else (C, I)
            if mxfp4:
                if inp % MXFP4_BLOCK:
                    raise ConvertError(f"{where[names[0]].path}: {names[0]} holds rows of {inp} "
                                       f"values, not whole MXFP4 blocks of {MXFP4_BLOCK}")
                G = inp // MXFP4_BLOCK
                expected = [[E, out, G, MXFP4_BLOCK // 2], [E, out, G]]
                dtypes = [where[n].entries[n][0] for n in names]
                if dtypes != ["U8", "U8"]:
                    raise ConvertError(f"{where[names[0]].path}: {', '.join(names)} have dtypes "
                                       f"{dtypes}, not U8 (MXFP4 codes and E8M0 scales)")
            else:
                expected = [[E, inp, out]]  # [E, in, out]: transposed
        else:
            expected = [list(want[t])]
        if got != expected:
            raise ConvertError(f"{where[names[0]].path}: tensor(s) {', '.join(names)} have "
                               f"shape(s) {got}, expected {expected} for the model in config.json")

    def read(t, names):
        if "/mlp/experts/" in t and t.endswith("weight"):
            if mxfp4:
                base = names[0][:-len("_blocks")]  # (OpenAI's ".blocks": the same length)
                a = dequantize_mxfp4(where[names[0]].read_bytes(names[0]),
                                     where[names[1]].read_bytes(names[1]), base,
                                     str(where[names[0]].path))
            else:
                a = np.ascontiguousarray(where[names[0]].read(names[0]).transpose(0, 2, 1))
            return gate_up_order(a) if "c_fc" in t else a
        parts = [np.asarray(where[n].read(n), dtype="<f4") for n in names]
        a = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return gate_up_order(a) if t.endswith("mlp/experts/c_fc/bias") else a

    def tensors():
        for t, names in src.items():  # (non-finite values: refused by convert_weights)
            yield t, llama_query_order(d, t, read(t, names).reshape(want[t]))

    return tensors


# ---- export: a triad checkpoint of gpt-oss's blocks as Hugging Face's gpt-oss --------------

# The /model attributes of a triad model that gpt-oss's format holds (gpt_oss_hf_config writes
# them), and the others' values that compute nothing extra there: any other attribute, or
# value, is an option the format has none of (gpt_oss_checkpoint_dims).
GPT_OSS_HELD = {"n_layer", "n_head", "n_embd", "seq_len", "vocab_size", "padded_vocab_size",
                "norm_eps", "position", "norm", "bias", "mlp", "mlp_hidden", "tie_embeddings",
                "n_kv_head", "head_dim", "rope_theta", "rope_scaling", "rope_scaling_factor",
                "rope_yarn_beta_fast", "rope_yarn_beta_slow", "rope_original_positions",
                "rope_yarn_truncate", "sliding_window", "full_attention_every",
                "full_attention_first", "moe_experts", "moe_top_k", "attn_sinks", "moe_bias",
                "glu_alpha", "glu_limit", "glu_offset"}
GPT_OSS_INERT = {"qk_norm": 0, "qk_norm_full": 0, "qkv_bias": 0, "mlp_bias": 0, "norm_bias": 0,
                 "norm_weight": 1, "pre_norm": 1, "moe_normalize": 1, "moe_every": 1,
                 "moe_first_dense": 0, "moe_shared_hidden": 0, "moe_shared_gate": 0,
                 "moe_dense_hidden": 0, "moe_routed_scale": 1.0, "moe_groups": 1,
                 "moe_group_top_k": 1, "moe_capacity_factor": 0.0, "rotary_dim": 0,
                 "nope_every": 0, "parallel_residual": 0, "shared_norm": 0, "branch_norm": 0,
                 "head_bias": 0, "embed_scale": 1.0, "attn_scale": 0.0, "attn_softcap": 0.0,
                 "logit_softcap": 0.0, "clip_qkv": 0.0, "residual_scale": 1.0,
                 "logit_scale": 1.0, "mup_base_width": 0, "rope_local_theta": 0.0,
                 "rope_yarn_mscale": 1.0, "rope_yarn_mscale_all_dim": 0.0, "kv_lora_rank": 0,
                 "moe_score": "softmax", "moe_group_score": "top2"}
# The gate's gain transformers' gpt-oss computes with before version 5 (which reads
# swiglu_alpha): a model with another exports as nothing they all compute.
GPT_OSS_ALPHA = 1.702


def gpt_oss_checkpoint_dims(path, a: dict, biased: bool) -> Dims:
    """A triad checkpoint with attention sinks (its /model attributes `a`; biased: DeepSeek's
    selection-only router biases, /router_bias, not all zero) as the Dims of gpt-oss's format,
    refused where GptOssForCausalLM does not compute the model."""
    extra = unheld_attributes(a, GPT_OSS_HELD, GPT_OSS_INERT)
    position, norm, mlp = (attr_text(a.get(k)) for k in ("position", "norm", "mlp"))
    if (position, norm, mlp) != ("rope", "rmsnorm", "swiglu"):
        extra.append(f"position {position}, norm {norm}, mlp {mlp} (gpt-oss's are rope, RMSNorm, "
                     f"SwiGLU)")
    E = int(a.get("moe_experts", 0))
    if not E or not int(a.get("moe_bias", 0)):
        extra.append("experts without biases on the router and the experts (gpt-oss's MLPs are "
                     "experts with them: model.moe_experts, moe_bias)")
    glu = tuple(float(a.get(k, v)) for k, v in (("glu_alpha", 1.0), ("glu_limit", 0.0),
                                                ("glu_offset", 0.0)))
    if glu[0] != GPT_OSS_ALPHA or glu[1] <= 0 or glu[2] != 1.0:
        extra.append(f"SwiGLU of glu_alpha {glu[0]}, glu_limit {glu[1]}, glu_offset {glu[2]} "
                     f"(gpt-oss's: {GPT_OSS_ALPHA}, a limit > 0, 1)")
    scaling = attr_text(a.get("rope_scaling", "none"))
    if scaling not in ("none", "yarn"):
        extra.append(f"rope_scaling {scaling} (gpt-oss's is yarn or none)")
    if biased:
        extra.append("routers' balancing biases (/router_bias, DeepSeek-V3's: they choose "
                     "without weighing)")
    if extra:
        raise ConvertError(f"{path}: the model has attention sinks, which export as Hugging "
                           f"Face's gpt-oss; that has none of {'; '.join(extra)}")
    yarn = checkpoint_yarn(path, a, "gpt-oss")
    H = int(a["n_head"])
    return Dims(*(int(a[k]) for k in ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size")),
                position="rope", rope_theta=float(a["rope_theta"]), norm="rmsnorm",
                bias=int(a.get("bias", 1)) == 1, mlp="swiglu", mlp_hidden=int(a["mlp_hidden"]),
                tied=int(a.get("tie_embeddings", 1)) == 1, n_kv_head=int(a.get("n_kv_head", H)),
                norm_eps=float(a.get("norm_eps", 1e-5)), head_dim=int(a.get("head_dim", 0)),
                sliding_window=int(a.get("sliding_window", 0)),
                full_attention_every=int(a.get("full_attention_every", 0)),
                full_attention_first=int(a.get("full_attention_first", 0)) == 1,
                yarn=yarn, yarn_truncate=int(a.get("rope_yarn_truncate", 1)) == 1,
                moe_experts=E, moe_top_k=int(a["moe_top_k"]), moe_normalize=True, moe_bias=True,
                attn_sinks=True, glu=glu, gpt_oss="hf")


def gpt_oss_hf_config(d: Dims) -> dict:
    """config.json for GptOssForCausalLM computing d (the inverse of gpt_oss_config_dims): the
    experts in bf16's layout (no quantization_config), each layer's kind in layer_types, YaRN's
    scaling written in full, plain rope as rope_type default (an absent one is YaRN there)."""
    rope = {"rope_type": "default"}
    if d.yarn is not None:
        rope = {"rope_type": "yarn", **dict(zip(("factor", "beta_fast", "beta_slow",
                                                 "original_max_position_embeddings"), d.yarn)),
                "truncate": d.yarn_truncate}
    return {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "vocab_size": d.vocab_size, "hidden_size": d.n_embd, "intermediate_size": d.mlp_hidden,
        "num_hidden_layers": d.n_layer, "num_attention_heads": d.n_head,
        "num_key_value_heads": d.kv, "head_dim": d.hd, "num_local_experts": d.moe_experts,
        "num_experts_per_tok": d.moe_top_k, "experts_per_token": d.moe_top_k,
        "sliding_window": d.sliding_window or None,
        "layer_types": ["sliding_attention" if d.windowed(i) else "full_attention"
                        for i in range(d.n_layer)],
        "rope_theta": d.rope_theta, "rope_scaling": rope,
        "max_position_embeddings": int(d.yarn[0] * d.yarn[3]) if d.yarn else d.seq_len,
        "rms_norm_eps": d.norm_eps, "swiglu_limit": d.glu[1], "swiglu_alpha": d.glu[0],
        "attention_bias": d.bias, "hidden_act": "silu", "tie_word_embeddings": d.tied,
        "attention_dropout": 0.0, "initializer_range": 0.02, "router_aux_loss_coef": 0.0,
        "output_router_logits": False, "use_cache": True, "torch_dtype": "float32",
    }


def write_gpt_oss_hf(out: Path, d: Dims, tensors: Tensors, extra: dict[str, str] | None,
                     write_directory) -> None:
    """triad's tensors of a gpt-oss model as GptOssForCausalLM's (fp32, the experts unquantized:
    gate_up_proj [E, C, 2·I] with gate and up rows interleaved, down_proj [E, I, C]); the query
    heads in HF's order. write_directory: weights_hf_export.write_hf_directory."""
    src = gpt_oss_sources(d, mxfp4=False)
    E, C, I = d.moe_experts, d.n_embd, d.mlp_hidden
    specs = {}
    for t, shape in hf_shapes(d).items():
        if t.endswith(("attn/c_attn/weight", "attn/c_attn/bias")):
            for n, r in zip(src[t], llama_part_rows(d, t, shape[0])):
                specs[n] = (r, *shape[1:])
        elif "/mlp/experts/" in t and t.endswith("weight"):
            specs[src[t][0]] = (E, C, 2 * I) if "c_fc" in t else (E, I, C)
        else:
            specs[src[t][0]] = tuple(shape)

    def hf_tensors():
        for t, a in tensors():
            a = llama_query_order(d, t, a, to_hf=True)
            if t.endswith(("mlp/experts/c_fc/weight", "mlp/experts/c_fc/bias")):
                a = gate_up_order(a, to_hf=True)
            if "/mlp/experts/" in t and t.endswith("weight"):
                a = a.transpose(0, 2, 1)  # [E, out, in] -> [E, in, out]
            if t.endswith(("attn/c_attn/weight", "attn/c_attn/bias")):
                ends = np.cumsum(llama_part_rows(d, t, a.shape[0]))[:-1]
                for n, part in zip(src[t], np.split(a, ends)):
                    yield n, np.ascontiguousarray(part)
                continue
            yield src[t][0], np.ascontiguousarray(a)

    write_directory(out, specs, hf_tensors(), gpt_oss_hf_config(d), extra)
