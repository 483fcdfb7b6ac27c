"""Hugging Face model directories out (triad-convert export --to hf): config.json for the
transformers class that computes what a triad model computes (GPT-2's, GPT-BigCode's and each
Llama-like family's *_hf_config, refusing options the format has none of) and the tensors in
its names and layout (write_hf, write_llama_hf)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Tuple

import numpy as np

from .inspect_checkpoint import expected_shapes
from .weights_dims import (ConvertError, Dims, ROPE_SCALING_HF, Tensors, VOCAB_TENSORS, YARN_HF,
                           shapes)
from .weights_hf_deepseek import deepseek_copies, deepseek_hf_config, mla_rope_order
from .weights_hf_gpt_oss import gpt_oss_hf_config, write_gpt_oss_hf
from .weights_hf_gpt_neo import gpt_neo_hf_config
from .weights_hf_layout import (dbrx_expert_order, falcon_qkv_order, hf_name,
                                interleaved_rope_order, llama_part_rows,
                                llama_query_order, llama_sources, neox_qkv_order,
                                position_rows, stacked_shape, stored_minus_one, unstored_tensor,
                                whole_experts)
from .weights_safetensors import write_safetensors


def hf_config(d: Dims) -> dict:
    """config.json for transformers' GPT2LMHeadModel computing what triad computes (no dropout:
    triad trains without), or with one key/value head GPTBigCodeForCausalLM's (multi-query)."""
    eot = 50256 if d.vocab_size > 50256 else None  # GPT-2's <|endoftext|>
    if d.bigcode:
        return {
            "architectures": ["GPTBigCodeForCausalLM"], "model_type": "gpt_bigcode",
            "n_layer": d.n_layer, "n_head": d.n_head, "n_embd": d.n_embd,
            "n_positions": d.seq_len, "vocab_size": d.vocab_size, "n_inner": None,
            "activation_function": "gelu_pytorch_tanh", "layer_norm_epsilon": d.norm_eps,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
            "scale_attn_weights": True, "multi_query": True, "attention_softmax_in_fp32": True,
            "scale_attention_softmax_in_fp32": True, "tie_word_embeddings": True,
            "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float32",
        }
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "n_layer": d.n_layer, "n_head": d.n_head, "n_embd": d.n_embd,
        "n_positions": d.seq_len, "n_ctx": d.seq_len, "vocab_size": d.vocab_size,
        "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": d.norm_eps,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": True,
        "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float32",
    }


def write_hf(out: Path, d: Dims, tensors: Tensors, extra: dict[str, str] | None = None) -> None:
    """A directory transformers' from_pretrained loads: config.json + model.safetensors, and
    `extra` files (the tokenizer's: hf_tokenizer.py)."""
    specs = {}
    for t, shape in shapes(d).items():
        h, transposed = hf_name(t, d)
        specs["transformer." + h] = tuple(reversed(shape)) if transposed else shape

    def hf_tensors():
        for t, a in tensors():
            h, transposed = hf_name(t, d)
            yield "transformer." + h, (np.ascontiguousarray(a.T) if transposed else a)

    write_hf_directory(out, specs, hf_tensors(), hf_config(d), extra)


def write_hf_directory(out: Path, specs: dict[str, tuple[int, ...]],
                       tensors: Iterator[Tuple[str, np.ndarray]], config: dict,
                       extra: dict[str, str] | None) -> None:
    """model.safetensors (the tensors of `specs`, in its order), config.json and the `extra`
    files: what from_pretrained loads."""
    write_safetensors(out / "model.safetensors", tensors, specs)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name, text in (extra or {}).items():
        (out / name).write_text(text, encoding="utf-8")


def qwen_moe_hf_keys(d: Dims) -> dict:
    """The config.json keys Qwen2-MoE and Qwen3-MoE share for triad's mixture of experts (the
    inverse of qwen_moe_keys): the experts, their routing and layers, no sliding window."""
    return dict(use_sliding_window=False, sliding_window=None, max_window_layers=d.n_layer,
                num_experts=d.moe_experts, num_experts_per_tok=d.moe_top_k,
                moe_intermediate_size=d.mlp_hidden, norm_topk_prob=d.moe_normalize,
                intermediate_size=d.moe_dense_hidden or d.mlp_hidden,  # the dense layers'
                decoder_sparse_step=d.moe_every, mlp_only_layers=list(range(d.moe_first_dense)),
                output_router_logits=False)


def refuse_absent(d: Dims, fmt: str, *more: tuple, holds_window: bool = False,
                  holds_qk_norm: bool = False, holds_experts: bool = False) -> None:
    """Raises, naming them, for the options of d that Hugging Face's `fmt` has none of: QK-norm
    (unless holds_qk_norm: OLMo-2's), rope scaling, a sliding window (unless holds_window: Phi-3's,
    StarCoder2's) and experts (unless holds_experts: DBRX's), and the (description, present)
    pairs in `more`."""
    extra = [what for what, on in (
        ("QK-norm (model.qk_norm)", d.qk_norm and not holds_qk_norm),
        ("rope scaling (model.rope_scaling)", d.rope_scaling is not None or d.yarn is not None),
        ("a sliding window (model.sliding_window)", d.sliding_window and not holds_window),
        ("experts (model.moe_experts)", d.moe_experts and not holds_experts), *more) if on]
    if extra:
        raise ConvertError(f"{fmt}, which has none of {', '.join(extra)}")


def rotary_fraction(d: Dims) -> float:
    """The partial_rotary_factor (or rotary_pct) whose int(head width · it), the count
    transformers rotates, is d's rotated values: their share of the head, or where that times
    the width rounds below the count (30 of 44) the next double up."""
    rot = d.rotary_dim or d.hd
    fraction = rot / d.hd
    if int(d.hd * fraction) != rot:
        fraction = math.nextafter(fraction, 2.0)
    if int(d.hd * fraction) != rot:
        raise ConvertError(f"the model rotates {rot} of each head's {d.hd} values "
                           f"(model.rotary_dim), which no partial_rotary_factor names exactly")
    return fraction


def opt_hf_config(d: Dims) -> dict:
    """config.json for transformers' OPTForCausalLM computing what triad's model of GPT-2's
    blocks with the ReLU MLP computes."""
    if d.norm_eps != 1e-5:
        raise ConvertError(f"a model of GPT-2's blocks with the ReLU MLP exports as Hugging Face's "
                           f"OPT, whose LayerNorms' epsilon is 1e-5, not {d.norm_eps} "
                           f"(model.norm_eps)")
    eot = 2 if d.vocab_size > 2 else None  # OPT's </s>
    return {
        "architectures": ["OPTForCausalLM"], "model_type": "opt", "vocab_size": d.vocab_size,
        "hidden_size": d.n_embd, "num_hidden_layers": d.n_layer, "num_attention_heads": d.n_head,
        "ffn_dim": d.mlp_hidden or 4 * d.n_embd, "max_position_embeddings": d.seq_len,
        "do_layer_norm_before": True, "_remove_final_layer_norm": False,
        "word_embed_proj_dim": d.n_embd, "activation_function": "relu", "dropout": 0.0,
        "attention_dropout": 0.0, "layerdrop": 0.0, "init_std": 0.02, "enable_bias": True,
        "layer_norm_elementwise_affine": True, "tie_word_embeddings": True,
        "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": 1, "torch_dtype": "float32",
    }


def dbrx_hf_config(d: Dims) -> dict:
    """config.json for transformers' DbrxForCausalLM computing what triad's model of DBRX's
    blocks computes."""
    refuse_absent(d, "a model with LayerNorms without biases, SwiGLU and experts exports as "
                     "Hugging Face's DBRX",
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim),
                  ("Granite's multipliers", d.multiplied),
                  ("shared experts (model.moe_shared_hidden)", d.moe_shared_hidden),
                  ("dense layers among the expert layers (model.moe_first_dense, moe_every)",
                   (d.moe_first_dense, d.moe_every) != (0, 1)),
                  ("a LayerNorm epsilon other than 1e-5 (model.norm_eps)", d.norm_eps != 1e-5),
                  ("partial rotary (model.rotary_dim)", d.rotary_dim),
                  ("c_attn's bias (model.qkv_bias)", d.qkv_bias), holds_experts=True)
    return {
        "architectures": ["DbrxForCausalLM"], "model_type": "dbrx", "d_model": d.n_embd,
        "n_heads": d.n_head, "n_layers": d.n_layer, "max_seq_len": d.seq_len,
        "vocab_size": d.vocab_size, "resid_pdrop": 0.0, "emb_pdrop": 0.0,
        "attn_config": {"attn_pdrop": 0.0, "clip_qkv": d.clip_qkv or None, "kv_n_heads": d.kv,
                        "rope_theta": d.rope_theta},
        "rope_theta": d.rope_theta,  # (where transformers 5 reads it; 4, in attn_config)
        "ffn_config": {"ffn_act_fn": {"name": "silu"}, "ffn_hidden_size": d.mlp_hidden,
                       "moe_num_experts": d.moe_experts, "moe_top_k": d.moe_top_k,
                       "moe_jitter_eps": None, "moe_loss_weight": 0.01,
                       "moe_normalize_expert_weights": 1.0 if d.moe_normalize else None},
        "tie_word_embeddings": d.tied, "initializer_range": 0.02, "output_router_logits": False,
        "torch_dtype": "float32",
    }


def glm_hf_config(d: Dims) -> dict:
    """config.json for transformers' GlmForCausalLM computing what triad's model of GLM's
    blocks (Llama's with partial rotary, model.rotary_dim, and c_attn's bias or not) computes."""
    refuse_absent(d, "a Llama-architecture model with partial rotary (model.rotary_dim) exports as "
                     "Hugging Face's GLM",
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim),
                  ("Granite's multipliers", d.multiplied))
    return llama_like_hf(d, "GlmForCausalLM", "glm", rms_norm_eps=d.norm_eps,
                         hidden_act="silu", attention_bias=d.qkv_bias, head_dim=d.hd,
                         partial_rotary_factor=d.rotary_dim / d.hd, pad_token_id=None)


def starcoder2_hf_config(d: Dims) -> dict:
    """config.json for transformers' Starcoder2ForCausalLM computing what triad's model of its
    blocks computes (the inverse of starcoder2_config_dims)."""
    refuse_absent(d, "a model of StarCoder2's blocks (rope, LayerNorms, GELU, biases, "
                     "grouped-query attention or a window) exports as Hugging Face's StarCoder2",
                  ("LongRoPE (model.rope_scaling = longrope)", d.longrope is not None),
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim),
                  ("partial rotary (model.rotary_dim)", d.rotary_dim),
                  ("full-attention layers among windowed ones (model.full_attention_every)",
                   d.full_attention_every), holds_window=True)
    return llama_like_hf(d, "Starcoder2ForCausalLM", "starcoder2", norm_epsilon=d.norm_eps,
                         hidden_act="gelu" if d.mlp == "gelu_exact" else "gelu_pytorch_tanh",
                         use_bias=d.bias, sliding_window=d.sliding_window or None,
                         residual_dropout=0.0, embedding_dropout=0.0, rope_scaling=None)


def falcon_hf_config(d: Dims) -> dict:
    """config.json for transformers' FalconForCausalLM in Falcon-40B's layout
    (new_decoder_architecture; ln_attn and ln_mlp, or one input_layernorm under model.shared_norm)
    computing what triad's model of Falcon's blocks computes."""
    refuse_absent(d, "a model of Falcon's blocks exports as Hugging Face's Falcon",
                  ("a c_attn bias (model.qkv_bias)", d.qkv_bias),
                  ("partial rotary (model.rotary_dim)", d.rotary_dim),
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim))
    return {
        "architectures": ["FalconForCausalLM"], "model_type": "falcon",
        "num_hidden_layers": d.n_layer, "num_attention_heads": d.n_head, "num_kv_heads": d.kv,
        "hidden_size": d.n_embd, "ffn_hidden_size": d.mlp_hidden or 4 * d.n_embd,
        "max_position_embeddings": d.seq_len, "vocab_size": d.vocab_size,
        "layer_norm_epsilon": d.norm_eps, "rope_theta": d.rope_theta, "alibi": False,
        "bias": False, "parallel_attn": True, "new_decoder_architecture": True,
        "num_ln_in_parallel_attn": 1 if d.shared_norm else 2, "multi_query": d.kv == 1, "activation": "gelu",
        "attention_dropout": 0.0, "hidden_dropout": 0.0, "tie_word_embeddings": d.tied,
        "initializer_range": 0.02, "torch_dtype": "float32",
    }


def neox_hf_config(d: Dims) -> dict:
    """config.json for transformers' GPTNeoXForCausalLM computing what triad's model of GPT-NeoX's
    blocks computes (the inverse of neox_config_dims)."""
    refuse_absent(d, "a model of GPT-NeoX's blocks (rope, LayerNorms, GELU, biases) exports as "
                     "Hugging Face's GPT-NeoX",
                  ("grouped-query attention (model.n_kv_head)", d.kv != d.n_head),
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim))
    return {
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
        "num_hidden_layers": d.n_layer, "num_attention_heads": d.n_head, "hidden_size": d.n_embd,
        "intermediate_size": d.mlp_hidden or 4 * d.n_embd, "max_position_embeddings": d.seq_len,
        "vocab_size": d.vocab_size, "layer_norm_eps": d.norm_eps, "rotary_emb_base": d.rope_theta,
        "rotary_pct": rotary_fraction(d), "hidden_act": "gelu" if d.mlp == "gelu_exact" else "gelu_new",
        "use_parallel_residual": d.parallel_residual, "attention_bias": True,
        "attention_dropout": 0.0, "hidden_dropout": 0.0, "tie_word_embeddings": d.tied,
        "initializer_range": 0.02, "torch_dtype": "float32",
    }


def gemma_hf_config(d: Dims) -> dict:
    """config.json for transformers' GemmaForCausalLM computing what triad's model of Gemma's
    blocks computes (the inverse of gemma_config_dims): the embedding scale must be its
    sqrt(hidden_size) in fp32. With model.branch_norm Gemma2ForCausalLM's: its window in every
    other layer from the first (model.full_attention_every = 2; without a window, one covering
    the context), the scores' scale as query_pre_attn_scalar (1 / attn_scale²), the caps where
    set. With QK-norm too Gemma3ForCausalLM's (gemma3_text): the window in every layer but each
    model.full_attention_every-th (sliding_window_pattern, and layer_types as newer transformers
    read it), the windowed layers' base as rope_local_base_freq."""
    gemma_scale = float(np.float32(math.sqrt(d.n_embd)))
    two = d.branch_norm  # Gemma 2's blocks
    three = two and d.qk_norm  # Gemma 3's
    name = " 3" if three else " 2" if two else ""
    refuse_absent(replace(d, sliding_window=0) if two else d,  # (Gemma 2's window: below)
                  f"a model of Gemma{name}'s blocks (GeGLU"
                  f"{', branch norms' if two else ''}{', QK-norm' if three else ''}) exports as "
                  f"Hugging Face's Gemma{name}",
                  ("a c_attn bias (model.qkv_bias)", d.qkv_bias),
                  ("partial rotary (model.rotary_dim)", d.rotary_dim),
                  (f"an embedding scale of {d.embed_scale} (model.embed_scale; Gemma's is "
                   f"sqrt(n_embd) = {gemma_scale})",
                   float(np.float32(d.embed_scale)) != gemma_scale),
                  (f"layers other than every second attending to the whole context "
                   f"(model.full_attention_every = {d.full_attention_every}; Gemma 2's window "
                   f"is in layers 0, 2, 4, ..)",
                   two and not three and d.sliding_window and d.full_attention_every != 2),
                  ("QK-norm over all heads (model.qk_norm_full; Gemma 3's is per head)",
                   d.qk_norm_full),
                  ("capped attention scores (model.attn_softcap; Gemma 3's attention applies "
                   "none)", three and d.attn_softcap),
                  ("windowed layers rotating under the linear scaling (Gemma 3's rotate by "
                   "rope_local_base_freq unscaled: set model.rope_local_theta)",
                   three and d.rope_linear and d.sliding_window and not d.rope_local_theta),
                  holds_qk_norm=three)
    cfg = llama_like_hf(d, "GemmaForCausalLM", "gemma", head_dim=d.hd, rms_norm_eps=d.norm_eps,
                        hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
                        attention_bias=False)
    if two:
        cfg.update(architectures=["Gemma2ForCausalLM"], model_type="gemma2",
                   query_pre_attn_scalar=d.hd if not d.attn_scale
                   else pre_attn_scalar(float(d.attn_scale)),
                   sliding_window=d.sliding_window or d.seq_len,
                   attn_logit_softcapping=d.attn_softcap or None,
                   final_logit_softcapping=d.logit_softcap or None)
    if three:
        # transformers' is_sliding: (i + 1) % pattern != 0; a pattern past the last layer
        # windows every layer, 1 none.
        every = d.full_attention_every if d.sliding_window else 1
        pattern = every or d.n_layer + 1
        cfg.update(architectures=["Gemma3ForCausalLM"], model_type="gemma3_text",
                   sliding_window_pattern=pattern,
                   rope_scaling=rope_scaling_hf(d),  # (linear alone: the others refused above)
                   layer_types=["sliding_attention" if d.windowed(i) else "full_attention"
                                for i in range(d.n_layer)],
                   rope_local_base_freq=d.rope_local_theta or d.rope_theta)
    return cfg


def pre_attn_scalar(scale: float) -> int | float:
    """Gemma 2's query_pre_attn_scalar for triad's fp32 attn_scale: transformers scales by
    query_pre_attn_scalar ** -0.5 in double, so the scalar whose power rounds to it, the whole
    number (as the files have it: 144, 24; an integer, the only type transformers 5's config
    class takes) where one does, else 1 / scale² (which transformers 4 alone loads)."""
    exact = 1.0 / scale ** 2
    whole = round(exact)
    return whole if whole > 0 and float(np.float32(whole ** -0.5)) == scale else exact


def granite_hf_config(d: Dims) -> dict:
    """config.json for transformers' GraniteForCausalLM computing what triad's model of Llama's
    blocks with multipliers (model.embed_scale, attn_scale, residual_scale, logit_scale)
    computes: the inverse of granite_multipliers; with experts GraniteMoeForCausalLM's (Mixtral's
    routing: experts in every layer, gates renormalized, no shared experts)."""
    moe = d.moe_experts > 0
    refuse_absent(replace(d, moe_experts=0),  # (its experts are checked here)
                  f"a model of Llama's blocks with multipliers exports as Hugging Face's "
                  f"Granite{'MoE' if moe else ''}",
                  ("a c_attn bias (model.qkv_bias)", d.qkv_bias),
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim),
                  ("shared experts (model.moe_shared_hidden)", d.moe_shared_hidden),
                  ("dense layers among the expert layers (model.moe_first_dense, moe_every)",
                   moe and (d.moe_first_dense, d.moe_every) != (0, 1)),
                  ("gates kept as the router gives them (model.moe_normalize = false)",
                   moe and not d.moe_normalize))
    cfg = llama_like_hf(d, "GraniteForCausalLM", "granite", rms_norm_eps=d.norm_eps,
                        hidden_act="silu", attention_bias=False, mlp_bias=False,
                        embedding_multiplier=d.embed_scale,
                        attention_multiplier=d.attn_scale or float(
                            np.float32(1.0 / math.sqrt(d.hd))),
                        residual_multiplier=d.residual_scale, logits_scaling=1.0 / d.logit_scale)
    if moe:
        del cfg["mlp_bias"]
        cfg.update(architectures=["GraniteMoeForCausalLM"], model_type="granitemoe",
                   num_local_experts=d.moe_experts, num_experts_per_tok=d.moe_top_k,
                   output_router_logits=False)
    return cfg


def phi_hf_config(d: Dims) -> dict:
    """config.json for transformers' PhiForCausalLM computing what triad's model of Phi's blocks
    computes (the inverse of phi_config_dims)."""
    refuse_absent(d, "a model of Phi's blocks (parallel GELU MLP and attention on one LayerNorm) "
                  "exports as Hugging Face's Phi",
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim),
                  ("branch norms (model.branch_norm)", d.branch_norm))
    return llama_like_hf(d, "PhiForCausalLM", "phi", layer_norm_eps=d.norm_eps,
                         partial_rotary_factor=rotary_fraction(d),
                         hidden_act="gelu" if d.mlp == "gelu_exact" else "gelu_new",
                         qk_layernorm=False, resid_pdrop=0.0, embd_pdrop=0.0)


def gptj_hf_config(d: Dims) -> dict:
    """config.json for transformers' GPTJForCausalLM computing what triad's model of GPT-J's
    blocks computes (the inverse of gptj_config_dims)."""
    refuse_absent(d, "a model of GPT-J's blocks (parallel GELU MLP with biases and bias-free "
                  "attention on one LayerNorm) exports as Hugging Face's GPT-J",
                  ("grouped-query attention (model.n_kv_head)", d.kv != d.n_head),
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim),
                  ("a rope base other than 10000 (model.rope_theta)", d.rope_theta != 10000.0),
                  ("branch norms (model.branch_norm)", d.branch_norm))
    return {
        "architectures": ["GPTJForCausalLM"], "model_type": "gptj", "n_layer": d.n_layer,
        "n_head": d.n_head, "n_embd": d.n_embd, "n_inner": d.mlp_hidden or 4 * d.n_embd,
        "n_positions": d.seq_len, "vocab_size": d.vocab_size, "rotary_dim": d.rotary_dim or d.hd,
        "layer_norm_epsilon": d.norm_eps,
        "activation_function": "gelu" if d.mlp == "gelu_exact" else "gelu_new",
        "embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0, "tie_word_embeddings": False,
        "initializer_range": 0.02, "torch_dtype": "float32",
    }


def cohere_hf_config(d: Dims) -> dict:
    """config.json for transformers' CohereForCausalLM computing what triad's model of Cohere's
    blocks computes (the inverse of cohere_config_dims), or with a window or layers without rope
    Cohere2ForCausalLM's (the inverse of cohere2_layers)."""
    refuse_absent(d, "a model of Cohere's blocks (parallel SwiGLU and attention on one "
                  "LayerNorm) exports as Hugging Face's Cohere or Cohere2",
                  ("a c_attn bias (model.qkv_bias)", d.qkv_bias),
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim),
                  ("partial rotary (model.rotary_dim)", d.rotary_dim),
                  ("branch norms (model.branch_norm)", d.branch_norm),
                  ("Granite's multipliers (model.embed_scale, attn_scale, residual_scale)",
                   d.embed_scale != 1.0 or d.attn_scale or d.residual_scale != 1.0),
                  holds_window=True)
    # (no token ids: the config classes' defaults, Cohere's tokenizer's 0, 5 and 255001, would
    # pad with token 0 and end past a smaller vocabulary)
    cfg = llama_like_hf(d, "CohereForCausalLM", "cohere", layer_norm_eps=d.norm_eps,
                        logit_scale=d.logit_scale, hidden_act="silu", attention_bias=False,
                        use_qk_norm=False, pad_token_id=None, bos_token_id=None,
                        eos_token_id=None)
    if not (d.sliding_window or d.nope_every):
        return cfg
    # Cohere2's: the sliding layers rotate, the full ones do not (a model without a window:
    # its rotating layers as sliding ones whose window covers the context).
    rotating = [d.rotates(i) for i in range(d.n_layer)]
    if d.sliding_window and any(d.windowed(i) != r for i, r in enumerate(rotating)):
        raise ConvertError(f"a model of Cohere's blocks with a window exports as Hugging Face's "
                           f"Cohere2, whose windowed layers are exactly those that rotate "
                           f"(model.full_attention_every {d.full_attention_every}, "
                           f"model.full_attention_first {d.full_attention_first}, "
                           f"model.nope_every {d.nope_every})")
    del cfg["use_qk_norm"]
    cfg.update(architectures=["Cohere2ForCausalLM"], model_type="cohere2",
               sliding_window=d.sliding_window or d.seq_len,
               sliding_window_pattern=d.nope_every or d.n_layer + 1,  # (the older key)
               layer_types=["sliding_attention" if r else "full_attention" for r in rotating])
    return cfg


def llama_like_hf(d: Dims, architecture: str, model_type: str, **keys) -> dict:
    """The config.json keys every Llama-like transformers class (LlamaLikeConfig's, read the
    other way) names alike, for d, with the class's own `keys` added."""
    return {
        "architectures": [architecture], "model_type": model_type,
        "num_hidden_layers": d.n_layer, "num_attention_heads": d.n_head,
        "num_key_value_heads": d.kv, "hidden_size": d.n_embd,
        "intermediate_size": d.mlp_hidden, "max_position_embeddings": d.seq_len,
        "vocab_size": d.vocab_size, "rope_theta": d.rope_theta, "attention_dropout": 0.0,
        "tie_word_embeddings": d.tied, "initializer_range": 0.02, "torch_dtype": "float32",
        **keys,
    }


def phi3_hf_config(d: Dims) -> dict:
    """config.json for transformers' Phi3ForCausalLM (its fused qkv_proj and gate_up_proj:
    Dims.fused) computing what triad's Llama-architecture model with LongRoPE computes (the
    inverse of longrope_scaling): max_position_embeddings the original context stretched by the
    factor, original_max_position_embeddings, and both lists of factors."""
    refuse_absent(d, "a model with LongRoPE (model.rope_scaling = longrope) exports as Hugging "
                     "Face's Phi-3",
                  ("a c_attn bias (model.qkv_bias)", d.qkv_bias),
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim),
                  ("partial rotary (model.rotary_dim)", d.rotary_dim),
                  ("Granite's multipliers (model.embed_scale, attn_scale, residual_scale, "
                   "logit_scale)", d.multiplied), holds_window=True)
    stretch, original, short, long = d.longrope
    positions = round(stretch * original)
    if positions / original != stretch or positions < d.seq_len:
        raise ConvertError(f"the model's LongRoPE stretches its original {original} positions by "
                           f"{stretch} (model.rope_scaling_factor), which Phi-3's "
                           f"max_position_embeddings / original_max_position_embeddings does not "
                           f"say exactly for a context of {d.seq_len}")
    if (d.norm, d.bias, d.mlp, d.full_attention_every) != ("rmsnorm", False, "swiglu", 0):
        raise ConvertError("a model with LongRoPE exports as Hugging Face's Phi-3, which computes "
                           "RMSNorm, SwiGLU and no biases, one window for every layer")
    return llama_like_hf(d, "Phi3ForCausalLM", "phi3", rms_norm_eps=d.norm_eps,
                         hidden_act="silu", max_position_embeddings=positions,
                         original_max_position_embeddings=original,
                         rope_scaling={"type": "longrope", "short_factor": list(short),
                                       "long_factor": list(long)},
                         sliding_window=d.sliding_window or None, resid_pdrop=0.0,
                         embd_pdrop=0.0, pad_token_id=None)


def olmo_hf_config(d: Dims) -> dict:
    """config.json for transformers' OlmoForCausalLM computing what triad's model of OLMo's
    blocks (Llama's with non-parametric LayerNorms: model.norm = layernorm, norm_weight = false,
    epsilon 1e-5) computes."""
    refuse_absent(d, "a model without norm weights (model.norm_weight = false) exports as "
                     "Hugging Face's OLMo",
                  ("a c_attn bias (model.qkv_bias)", d.qkv_bias),
                  ("LayerNorm biases (model.norm_bias)", d.norm_bias),
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim))
    if (d.position, d.norm, d.bias, d.mlp, d.norm_eps) != ("rope", "layernorm", False, "swiglu",
                                                           1e-5) or d.parallel_residual or \
            d.branch_norm or d.shared_norm or d.rotary_dim or d.longrope is not None:
        raise ConvertError("a model without norm weights (model.norm_weight = false) exports as "
                           "Hugging Face's OLMo, which computes rope, LayerNorms of epsilon 1e-5, "
                           "SwiGLU and no biases in sequential blocks, rotating every value")
    return llama_like_hf(d, "OlmoForCausalLM", "olmo", hidden_act="silu", attention_bias=False,
                         clip_qkv=d.clip_qkv or None, rope_scaling=None, pad_token_id=None)


def smollm3_hf_config(d: Dims) -> dict:
    """config.json for transformers' SmolLM3ForCausalLM computing what triad's model of Llama's
    blocks with layers that do not rotate (model.nope_every) computes (the inverse of
    smollm3_nope_every): no_rope_layers, no window; Llama's rope scalings."""
    refuse_absent(replace(d, rope_scaling=None, yarn=None),  # (Llama's scalings: written)
                  "a model whose layers do not all rotate (model.nope_every) exports as "
                  "Hugging Face's SmolLM3",
                  ("a c_attn bias (model.qkv_bias)", d.qkv_bias),
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim),
                  ("partial rotary (model.rotary_dim)", d.rotary_dim),
                  ("Granite's multipliers", d.multiplied),
                  ("DeepSeek's YaRN scales (model.rope_yarn_mscale, rope_yarn_mscale_all_dim)",
                   d.yarn is not None and d.yarn_mscale != (1.0, 0.0)))
    if (d.position, d.norm, d.bias, d.mlp, d.norm_weight, d.norm_bias, d.parallel_residual,
            d.clip_qkv, d.longrope) != ("rope", "rmsnorm", False, "swiglu", True, False, False,
                                        0.0, None):
        raise ConvertError("a model whose layers do not all rotate (model.nope_every) exports as "
                           "Hugging Face's SmolLM3: Llama's blocks (rmsnorm, swiglu, no biases)")
    cfg = llama_like_hf(d, "SmolLM3ForCausalLM", "smollm3", rms_norm_eps=d.norm_eps,
                        hidden_act="silu", attention_bias=False, mlp_bias=False,
                        rope_scaling=rope_scaling_hf(d), use_sliding_window=False,
                        sliding_window=None,
                        no_rope_layers=[int(d.rotates(i)) for i in range(d.n_layer)],
                        no_rope_layer_interval=d.nope_every,
                        layer_types=["full_attention"] * d.n_layer,
                        # (SmolLM3Config's defaults are Llama 3's ids, past a smaller vocabulary)
                        pad_token_id=None, bos_token_id=None, eos_token_id=None)
    if d.yarn is not None:  # (as Llama's: the original context, stretched by the factor)
        cfg["max_position_embeddings"] = d.yarn[3]
    return cfg


def rope_scaling_hf(d: Dims) -> dict | None:
    """Hugging Face's rope_scaling for d's Llama-family scaling (model.rope_scaling llama3, yarn
    or linear: at most one), None without one. (LongRoPE's and DeepSeek's YaRN scales are their
    own writers'.)"""
    if d.rope_linear:
        return {"rope_type": "linear", "factor": d.rope_linear}
    if d.rope_scaling is not None:
        return {"rope_type": "llama3", **dict(zip(ROPE_SCALING_HF, d.rope_scaling))}
    if d.yarn is not None:
        return {"rope_type": "yarn", **dict(zip(YARN_HF, d.yarn))}
    return None


def olmo2_hf_config(d: Dims) -> dict:
    """config.json for transformers' Olmo2ForCausalLM computing what triad's model of OLMo-2's
    blocks (Llama's with the branch norms alone, model.pre_norm = false, and QK-norm over all
    heads, model.qk_norm_full) computes, or with a sliding window Olmo3ForCausalLM's (the inverse
    of olmo3_window: layer_types from model.full_attention_every, the rope scaling in the
    full-attention layers alone, the windowed ones rotating by rope_theta unscaled)."""
    three = bool(d.sliding_window)
    scaled = d.rope_scaling is not None or d.yarn is not None or bool(d.rope_linear)
    refuse_absent(replace(d, rope_scaling=None, yarn=None) if three else d,
                  f"a model without norms before its branches (model.pre_norm = false) exports "
                  f"as Hugging Face's {'OLMo 3' if three else 'OLMo-2'}",
                  ("a c_attn bias (model.qkv_bias)", d.qkv_bias),
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim),
                  ("Granite's multipliers", d.multiplied),
                  ("full-attention layers first in their groups (model.full_attention_first)",
                   d.full_attention_first),
                  ("windowed layers rotating under the rope scaling (OLMo 3's rotate by "
                   "rope_theta unscaled: set model.rope_local_theta = model.rope_theta)",
                   three and scaled and d.rope_local_theta != d.rope_theta),
                  (f"windowed layers rotating by a base of their own, {d.rope_local_theta} "
                   f"(model.rope_local_theta; OLMo 3's is rope_theta)",
                   d.rope_local_theta not in (0.0, d.rope_theta)),
                  ("DeepSeek's YaRN scales (model.rope_yarn_mscale, rope_yarn_mscale_all_dim)",
                   d.yarn is not None and d.yarn_mscale != (1.0, 0.0)),
                  holds_qk_norm=True, holds_window=True)
    if (d.position, d.norm, d.bias, d.mlp) != ("rope", "rmsnorm", False, "swiglu") or \
            not (d.branch_norm and d.qk_norm_full and d.norm_weight) or d.parallel_residual or \
            d.rotary_dim or d.longrope is not None or d.clip_qkv:
        raise ConvertError("a model without norms before its branches (model.pre_norm = false) "
                           "exports as Hugging Face's OLMo-2, which computes rope, RMSNorms with "
                           "weights on the branches' outputs (model.branch_norm), QK-norm over all "
                           "heads (model.qk_norm_full), SwiGLU and no biases, rotating every value")
    if not three:
        return llama_like_hf(d, "Olmo2ForCausalLM", "olmo2", rms_norm_eps=d.norm_eps,
                             hidden_act="silu", attention_bias=False, rope_scaling=None,
                             pad_token_id=None)
    scaling = rope_scaling_hf(d)
    # Both forms of the bases: transformers 4.57 reads rope_theta for every layer, 5 reads the
    # per-layer rope_parameters (from rope_theta alone it would rotate the sliding layers by
    # 500000).
    per_layer = {"full_attention": {"rope_type": "default", "rope_theta": d.rope_theta,
                                    **(scaling or {})},
                 "sliding_attention": {"rope_type": "default", "rope_theta": d.rope_theta}}
    return llama_like_hf(d, "Olmo3ForCausalLM", "olmo3", rms_norm_eps=d.norm_eps,
                         hidden_act="silu", attention_bias=False, rope_scaling=scaling,
                         rope_parameters=per_layer,
                         pad_token_id=None, sliding_window=d.sliding_window,
                         layer_types=["sliding_attention" if d.windowed(i) else "full_attention"
                                      for i in range(d.n_layer)])


def layernorm_hf_config(d: Dims) -> dict:
    """config.json for transformers' NemotronForCausalLM (the squared ReLU) or
    StableLmForCausalLM (SwiGLU) computing what triad's model of their blocks computes (the
    inverse of layernorm_config_dims)."""
    kind = "Nemotron" if d.mlp == "relu2" else "StableLM"
    refuse_absent(d, f"a model of {kind}'s blocks exports as Hugging Face's {kind}",
                  ("a c_attn bias (model.qkv_bias)", d.qkv_bias and d.mlp == "relu2"),
                  ("heads of another width than n_embd / n_head (model.head_dim)",
                   d.head_dim and d.mlp != "relu2"))
    factor = rotary_fraction(d)
    if kind == "StableLM":
        return llama_like_hf(d, "StableLmForCausalLM", "stablelm", layer_norm_eps=d.norm_eps,
                             partial_rotary_factor=factor, hidden_act="silu",
                             use_qkv_bias=d.qkv_bias, qk_layernorm=False,
                             use_parallel_residual=False, hidden_dropout=0.0)
    return llama_like_hf(d, "NemotronForCausalLM", "nemotron", head_dim=d.hd, norm_eps=d.norm_eps,
                         partial_rotary_factor=factor, hidden_act="relu2", attention_bias=False,
                         mlp_bias=False)


def llama_hf_config(d: Dims) -> dict:
    """config.json for the transformers class computing what triad's model of d computes
    (family_hf_config), refused where the rope it writes is not the model's."""
    cfg = family_hf_config(d)
    refuse_unwritten_rope(d, cfg)
    return cfg


def refuse_unwritten_rope(d: Dims, cfg: dict) -> None:
    """Raises where config.json `cfg` leaves out d's linear rope scaling or its windowed
    layers' own rope base, options few Hugging Face classes hold: one check here, not one in
    each family's writer."""
    name = cfg["architectures"][0]
    if d.nope_every and cfg["model_type"] not in ("smollm3", "cohere2"):
        raise ConvertError(f"every {d.nope_every}th layer of the model rotates nothing "
                           f"(model.nope_every), which this export's Hugging Face class, {name}, "
                           f"does not compute (SmolLM3's and Cohere2's do)")
    r = cfg.get("rope_scaling")
    if d.rope_linear and not (isinstance(r, dict) and r.get("rope_type") == "linear" and
                              r.get("factor") == d.rope_linear):
        raise ConvertError(f"the model's positions are divided by {d.rope_linear} "
                           f"(model.rope_scaling = linear), which this export's Hugging Face "
                           f"class, {name}, does not compute (Llama's, Qwen2's, Qwen3's, "
                           f"Qwen3-MoE's, Gemma 3's, OLMo 3's and SmolLM3's do)")
    # (OLMo 3's windowed layers rotate by rope_theta, unscaled)
    local = cfg.get("rope_theta") if cfg["model_type"] == "olmo3" else \
        cfg.get("rope_local_base_freq")
    if d.rope_local_theta and local != d.rope_local_theta:
        raise ConvertError(f"the model's windowed layers rotate by a base of their own, "
                           f"{d.rope_local_theta} (model.rope_local_theta), which this export's "
                           f"Hugging Face class, {name}, does not compute (Gemma 3's does, and "
                           f"OLMo 3's at rope_theta)")


def family_hf_config(d: Dims) -> dict:
    """config.json for transformers' LlamaForCausalLM computing what triad computes, or
    Qwen2ForCausalLM's for a model with c_attn's bias alone (model.qkv_bias), or
    Qwen3ForCausalLM's for one with QK-norm (model.qk_norm), or MistralForCausalLM's for one with
    a sliding window (model.sliding_window), or for a mixture of experts (model.moe_experts,
    Dims.moe_format) Qwen2MoeForCausalLM's (gated shared experts), Qwen3MoeForCausalLM's
    (QK-norm) or MixtralForCausalLM's (with a sliding window or not), or another family's
    (the *_hf_config it hands over to)."""
    if d.deepseek:
        return deepseek_hf_config(d)
    if d.gpt_oss:
        return gpt_oss_hf_config(d)
    if d.opt:
        return opt_hf_config(d)
    if d.gpt_neo:
        return gpt_neo_hf_config(d)
    if not d.norm_weight:
        return olmo_hf_config(d)
    if d.longrope is not None:
        return phi3_hf_config(d)
    if d.falcon:  # (before StableLM's and Nemotron's: its LayerNorms have biases too)
        return falcon_hf_config(d)
    if d.gptj:  # (likewise)
        return gptj_hf_config(d)
    if d.cohere:  # (before Granite's: its logit scale is Cohere's too)
        return cohere_hf_config(d)
    if d.phi:
        return phi_hf_config(d)
    if d.norm_bias:
        return layernorm_hf_config(d)
    if d.mlp == "geglu":
        return gemma_hf_config(d)
    if d.starcoder2:
        return starcoder2_hf_config(d)
    if d.neox:
        return neox_hf_config(d)
    if d.multiplied or d.moe_format == "granitemoe":
        return granite_hf_config(d)
    if not d.pre_norm:
        return olmo2_hf_config(d)
    if d.nope_every:
        return smollm3_hf_config(d)
    cfg = llama_like_hf(
        d, "LlamaForCausalLM", "llama", rms_norm_eps=d.norm_eps,
        rope_scaling=rope_scaling_hf(d), hidden_act="silu", attention_bias=False, mlp_bias=False)
    if d.head_dim:
        cfg["head_dim"] = d.head_dim
    if d.yarn is not None:  # HF's convention: the original context, stretched by the factor
        cfg["max_position_embeddings"] = d.yarn[3]  # (linear's has none: the context stays)
    if d.full_attention_every:
        raise ConvertError(f"the model's every {d.full_attention_every}th layer attends to the "
                           f"whole context (model.full_attention_every); Hugging Face's Llama, "
                           f"Mistral, Mixtral and Qwen classes hold one window for every layer")
    if d.glm:
        return glm_hf_config(d)
    if d.dbrx:
        return dbrx_hf_config(d)
    if d.qk_norm_full:
        # OLMoE's blocks (OlmoeForCausalLM); without experts they would be OLMo-2's, whose norms
        # follow the branches instead of leading them.
        if d.moe_format != "olmoe":
            raise ConvertError("the model normalizes q and k over all heads (model.qk_norm_full) "
                               "without experts and with norms before the branches; the Hugging "
                               "Face classes with such QK-norm are OLMoE (with experts) and "
                               "OLMo-2 (model.pre_norm = false, model.branch_norm)")
        if d.rope_scaling is not None or d.yarn is not None or d.qkv_bias or d.head_dim or \
                d.sliding_window:
            raise ConvertError("a model with model.qk_norm_full and experts exports as OLMoE, "
                               "whose transformers model has neither rope scaling, a c_attn "
                               "bias, heads of another width than n_embd / n_head nor a sliding "
                               "window")
        return llama_like_hf(d, "OlmoeForCausalLM", "olmoe", rms_norm_eps=d.norm_eps,
                             hidden_act="silu", attention_bias=False, clip_qkv=None,
                             num_experts=d.moe_experts, num_experts_per_tok=d.moe_top_k,
                             norm_topk_prob=d.moe_normalize, router_aux_loss_coef=0.01,
                             output_router_logits=False, rope_scaling=None)
    if d.moe_format == "qwen2_moe":
        if d.qk_norm or d.rope_scaling is not None or d.yarn is not None or d.head_dim or \
                d.sliding_window:
            raise ConvertError("a model with model.moe_shared_gate exports as Qwen2-MoE, which "
                               "has no QK-norm; its export here is written (and tested against "
                               "transformers) without rope scaling, heads of another width than "
                               "n_embd / n_head or a sliding window")
        for k in ("attention_bias", "mlp_bias", "rope_scaling", "head_dim"):
            cfg.pop(k, None)
        cfg.update(architectures=["Qwen2MoeForCausalLM"], model_type="qwen2_moe",
                   shared_expert_intermediate_size=d.moe_shared_hidden, **qwen_moe_hf_keys(d))
        return cfg
    if d.moe_format == "qwen3_moe":
        if d.rope_scaling is not None or d.qkv_bias or d.sliding_window:
            raise ConvertError("a model with model.moe_experts and model.qk_norm exports as "
                               "Qwen3-MoE, whose transformers model has neither llama3 rope "
                               "scaling, a c_attn bias nor a sliding window")
        del cfg["mlp_bias"]  # Qwen3's attention_bias (false) stays, as for Qwen3
        cfg.update(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", head_dim=d.hd,
                   **qwen_moe_hf_keys(d))
        return cfg
    if d.moe_format == "mixtral":  # (QK-norm makes it Qwen3-MoE)
        if d.qkv_bias or d.rope_scaling is not None or d.yarn is not None or d.head_dim:
            raise ConvertError("a model with model.moe_experts exports as Mixtral, whose "
                               "transformers model has neither a c_attn bias of its own, rope "
                               "scaling nor heads of another width than n_embd / n_head")
        for k in ("attention_bias", "mlp_bias", "rope_scaling", "head_dim"):
            cfg.pop(k, None)
        cfg.update(architectures=["MixtralForCausalLM"], model_type="mixtral",
                   sliding_window=d.sliding_window or None, num_local_experts=d.moe_experts,
                   num_experts_per_tok=d.moe_top_k, router_jitter_noise=0.0,
                   output_router_logits=False)
        return cfg
    if d.qk_norm:
        if d.rope_scaling is not None or d.qkv_bias:
            raise ConvertError("a model with model.qk_norm exports as Qwen3, whose transformers "
                               "model has neither llama3 rope scaling nor a c_attn bias")
        del cfg["mlp_bias"]  # Qwen3 has attention_bias (false) but no MLP biases
        cfg.update(architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=d.hd,
                   use_sliding_window=False, sliding_window=None, max_window_layers=d.n_layer)
    if d.sliding_window:
        if d.qk_norm or d.qkv_bias or d.rope_scaling is not None or d.yarn is not None:
            raise ConvertError("a model with model.sliding_window exports as Mistral, whose "
                               "transformers model has neither QK-norm, a c_attn bias of its "
                               "own nor rope scaling")
        for k in ("attention_bias", "mlp_bias", "rope_scaling"):
            del cfg[k]
        cfg.update(architectures=["MistralForCausalLM"], model_type="mistral",
                   sliding_window=d.sliding_window, head_dim=d.hd)
    if d.qkv_bias:
        if d.rope_scaling is not None:
            raise ConvertError("a model with model.qkv_bias exports as Qwen2, whose "
                               "transformers model has no llama3 rope scaling")
        for k in ("attention_bias", "mlp_bias"):  # Qwen2's biases are fixed: q, k, v only
            del cfg[k]
        cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                   use_sliding_window=False, sliding_window=None, max_window_layers=d.n_layer)
    return cfg


class GptNeoBiasFolding:
    """GPT-Neo's q, k and v have no bias; a fine-tuned c_attn bias of triad's (rows q | k | v)
    is written as the same model where it can be. k's adds q·b_k to every score of a query, the
    same for all its keys, which the softmax takes out: dropped. v's adds b_v to every head's
    output (its probabilities sum to 1): c_proj(y + b_v) = c_proj(y) + W_o b_v, folded into
    c_proj's bias (in float64). q's changes the scores: refused. Tensors come in checkpoint
    order (LAYER_TENSORS: c_attn's bias before c_proj's weight and bias)."""

    def __init__(self, n_embd: int):
        self.C, self.v_bias, self.proj = n_embd, {}, {}

    def take(self, t: str, a: np.ndarray) -> np.ndarray | None:
        """The tensor to write for t (None: nothing, for c_attn's bias)."""
        layer = t.rsplit("/attn/", 1)[0]
        if t.endswith("/attn/c_attn/bias"):
            q_rows = int(np.count_nonzero(a[:self.C]))
            if q_rows:
                raise ConvertError(
                    f"tensor {t}: its q part (the first {self.C} values) is not all zeros "
                    f"({q_rows} are not), and Hugging Face's GPT-Neo has no q bias (its k and v "
                    f"parts are written as the same model: k's changes no score, v's goes into "
                    f"attn/c_proj/bias); fine-tune with train.freeze = \"*/c_attn/bias\" to "
                    f"keep the import's zeros")
            self.v_bias[layer] = a[2 * self.C:3 * self.C].astype(np.float64)
            return None
        if t.endswith("/attn/c_proj/weight"):
            self.proj[layer] = a
        elif t.endswith("/attn/c_proj/bias"):
            bv, w = self.v_bias.pop(layer, None), self.proj.pop(layer, None)
            if bv is None or w is None:
                raise ConvertError(f"tensor {t} comes before {layer}/attn/c_attn/bias or "
                                   f"{layer}/attn/c_proj/weight (not a triad checkpoint's order)")
            if np.any(bv):
                a = (a.astype(np.float64) + w.astype(np.float64) @ bv).astype("<f4")
        return a


def write_llama_hf(out: Path, d: Dims, tensors: Tensors, extra: dict[str, str] | None) -> None:
    """triad's Llama-architecture tensors as LlamaForCausalLM's: c_attn's rows split into
    q, k and v, c_fc's into gate and up, query heads in HF's order (llama_sources,
    llama_query_order, read the other way)."""
    if d.gpt_oss:
        return write_gpt_oss_hf(out, d, tensors, extra, write_hf_directory)
    src = llama_sources(d)
    copies = deepseek_copies(d) if d.deepseek else {}  # (written after the tensor they copy)
    specs = {}  # in the order tensors() yields triad's tensors, each split into its HF parts
    # (OPT's from the GPT-2 reader, open_triad: GPT-2's order)
    want = shapes(d) if d.opt or d.gpt_neo else expected_shapes(d.attrs())
    want.update({t: (d.moe_experts,) for t in src if t.startswith("router_bias/")})
    for t, shape in want.items():
        if t not in src:  # (a norm without a weight: ones, checked below)
            continue
        rows, *cols = stacked_shape(shape)
        rows = d.vocab_size if t in VOCAB_TENSORS else rows
        if d.opt and t == "wpe/weight":  # OPT's 2 offset rows first
            rows += 2
        for n, r in zip(src[t], llama_part_rows(d, t, rows)):
            specs[n] = tuple(shape) if whole_experts(d, t) else \
                (r, d.n_embd) if d.dbrx and "/mlp/experts/" in t else (r, *cols)
        specs.update({n: (rows, *cols) for n in copies.get(t, ())})

    folded = GptNeoBiasFolding(d.n_embd) if d.gpt_neo else None

    def hf_tensors():
        for t, a in tensors():
            if folded is not None:
                a = folded.take(t, a)
                if a is None:  # (c_attn's bias: held until c_proj's)
                    continue
            if t not in src:  # model.norm_weight = false: the frozen ones, which OLMo has not
                if not np.all(unstored_tensor(d, t, a.shape) == a):
                    raise ConvertError(
                        f"tensor {t} is not all ones, which a model without norm weights "
                        f"(model.norm_weight = false) must hold")
                continue
            if stored_minus_one(d, t):  # Nemotron's LayerNorm1P, Gemma's RMSNorm: w - 1
                a = a - np.float32(1)
            a = neox_qkv_order(d, t, a, to_hf=True)
            a = llama_query_order(d, t, a, to_hf=True)
            a = interleaved_rope_order(d, t, a, to_hf=True)
            a = mla_rope_order(d, t, a, to_hf=True)
            a = dbrx_expert_order(d, t, position_rows(d, t, a, to_hf=True), to_hf=True)
            if whole_experts(d, t):  # GraniteMoE's: the [E, rows, columns] tensor as it is
                yield src[t][0], np.ascontiguousarray(a)
                continue
            a = falcon_qkv_order(d, t, a, to_hf=True).reshape(stacked_shape(a.shape))
            ends = np.cumsum(llama_part_rows(d, t, a.shape[0]))[:-1]
            for n, part in zip(src[t], np.split(a, ends)):
                yield n, np.ascontiguousarray(part)
            for n in copies.get(t, ()):
                yield n, np.ascontiguousarray(a)

    write_hf_directory(out, specs, hf_tensors(), llama_hf_config(d), extra)
