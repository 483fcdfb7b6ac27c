"""Each Hugging Face family's config.json read as triad's Dims (Llama's family, Cohere, Phi,
GLM, OPT, DBRX, GPT-J, Nemotron and StableLM, Falcon, GPT-NeoX, StarCoder2, Gemma), refusing
what triad does not compute, with the helpers they share (rope scalings, experts, GELU's
names). hf_config_dims (weights_hf_import.py) picks the reader by model_type."""

from __future__ import annotations

import json
import math
from typing import Callable

import numpy as np

from .weights_dims import MAX_EXPERTS, ConvertError, Dims, ROPE_SCALING_HF, full_attention_period
from .weights_hf_layout import CODEGEN_BLOCKS
from .weights_hf_transformers5 import OLMO3_DEFAULT_THETA, OLMO3_SLIDING

# Keys of MiniCPM 1 and 2 a file must name: OpenBMB's config class defaults them to 1, no
# scaling, which no released model has. (tie_word_embeddings defaults to true there, as in
# transformers' base class, so save_pretrained leaves a tied model's out.)
MINICPM_REQUIRED = ("scale_emb", "scale_depth", "dim_model_base")

# HF activation names that are GELU's tanh approximation (triad's, DESIGN.md §3).
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def refuse_or_check_positions(where: str, refusals: list[str], seq_len: int | None, n_pos: int,
                              key: str) -> None:
    """Raises for an HF config triad does not compute (the refusals), or a --seq-len beyond its
    n_pos positions (config key `key`)."""
    if refusals:
        raise ConvertError(f"{where}: a model triad does not compute: " + "; ".join(refusals))
    if seq_len is not None and seq_len > n_pos:
        raise ConvertError(f"--seq-len {seq_len} exceeds the model's {n_pos} positions "
                           f"({key} in {where})")


class LlamaLikeConfig:
    """The sizes every Llama-like Hugging Face config (Llama's family, Nemotron, StableLM, Gemma)
    names the same way, read and checked: the layers, heads (key/value heads dividing the query
    heads), widths, context, vocabulary, the norms' epsilon (under eps_key) and rope's base.
    `refusals` starts with what of these triad does not compute."""

    def __init__(self, cfg: dict, where: str, eps_key: str, eps_default: float,
                 extra: dict[str, Callable[[], object]] | None = None):
        try:
            self.n_layer = int(cfg["num_hidden_layers"])
            self.n_head = int(cfg["num_attention_heads"])
            self.n_embd, self.hidden = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
            self.n_pos, self.vocab = int(cfg["max_position_embeddings"]), int(cfg["vocab_size"])
            self.kv = int(cfg.get("num_key_value_heads") or self.n_head)
            self.eps = float(cfg.get(eps_key, eps_default))
            self.theta = float(cfg.get("rope_theta", 10000.0))
            self.extra = {k: f() for k, f in (extra or {}).items()}
        except (KeyError, TypeError, ValueError) as e:
            more = "".join(f", {k}" for k in (extra or {}))
            raise ConvertError(f"{where}: needs integer num_hidden_layers, num_attention_heads, "
                               f"hidden_size, intermediate_size, max_position_embeddings, "
                               f"vocab_size and numeric {eps_key}, rope_theta{more} ({e})")
        self.refusals = []
        if self.kv <= 0 or self.n_head % self.kv:
            self.refusals.append(f"num_key_value_heads {self.kv} does not divide "
                                 f"num_attention_heads {self.n_head} (each key/value head serves "
                                 f"an equal group of query heads)")
        if not (0 < self.eps <= 0.1):
            self.refusals.append(f"{eps_key} {self.eps} (triad's model.norm_eps is in (0, 0.1])")


def llama_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face Llama config as triad's model: rope (HF's rotate-half pairing, triad's),
    RMSNorm, SwiGLU, no biases, tied or not, grouped-query attention or not; refused where triad
    computes something else. Mistral's (MistralForCausalLM: Llama's tensors and math, plus a
    sliding attention window in every layer, model.sliding_window where it is shorter than the
    context) reads the same, and so does Qwen2's (Qwen2ForCausalLM: biases on the q, k and v
    projections only, which model.qkv_bias keeps, and a sliding window that is off or covers the
    context: Qwen's windows are per layer, max_window_layers, which triad does not build).
    Llama's rope_scaling imports as Llama 3.1's 'llama3' (model.rope_scaling = llama3), 'yarn'
    or 'linear' (position interpolation, the long-context Llama 2 fine-tunes'; model.rope_scaling
    = linear). Phi-3's (Phi3ForCausalLM, and Phi-4's) are Mistral's with q, k and v stored as one qkv_proj
    and the MLP's gate and up as one gate_up_proj, and a window where sliding_window is set;
    its long-context rope scaling (longrope, "su" in older files) imports as model.rope_scaling =
    longrope (longrope_scaling), and a partial rotary factor is refused.
    Mixtral's (MixtralForCausalLM) is Mistral's with every MLP a mixture of num_local_experts
    SwiGLU experts of intermediate_size units, num_experts_per_tok per token, their gates
    renormalized: model.moe_experts, moe_top_k and moe_normalize = true. Qwen2-MoE's
    (Qwen2MoeForCausalLM) is Qwen2's with mixtures of num_experts experts of
    moe_intermediate_size units, their gates renormalized or not (norm_topk_prob), beside a shared
    expert of shared_expert_intermediate_size units whose output a sigmoid gate scales
    (model.moe_shared_hidden, moe_shared_gate), in the layers decoder_sparse_step and
    mlp_only_layers give them; Qwen3-MoE's (Qwen3MoeForCausalLM) is Qwen3's attention with
    Qwen2-MoE's experts and router, without the shared expert. Granite's (GraniteForCausalLM) is
    Llama's with its multipliers: embedding_multiplier (model.embed_scale), attention_multiplier
    (model.attn_scale, unset where it is 1/sqrt(head width)), residual_multiplier
    (model.residual_scale) and logits_scaling (model.logit_scale = 1 / it), each in fp32."""
    c = LlamaLikeConfig(cfg, where, "rms_norm_eps", 1e-6)
    n_layer, n_head, n_embd, hidden = c.n_layer, c.n_head, c.n_embd, c.hidden
    n_pos, vocab, kv, eps, theta, refusals = c.n_pos, c.vocab, c.kv, c.eps, c.theta, c.refusals
    # OLMo's (OlmoForCausalLM): Llama's tensors and math but LayerNorms without weight or bias
    # (non-parametric, epsilon 1e-5): model.norm = layernorm, norm_weight = false.
    olmo = cfg.get("model_type") == "olmo"
    clip = 0.0  # OLMo-1.7's clamp of q, k and v (model.clip_qkv)
    if olmo:
        eps = 1e-5
        try:
            clip = float(cfg.get("clip_qkv") or 0.0)
            if not (math.isfinite(clip) and 0 <= clip <= 1e4):
                raise ValueError
        except (TypeError, ValueError):
            refusals.append(f"clip_qkv {cfg.get('clip_qkv')!r} (a bound in (0, 1e4], or null)")
    qwen2_moe = cfg.get("model_type") == "qwen2_moe"
    qwen3_moe = cfg.get("model_type") == "qwen3_moe"
    qwen2 = cfg.get("model_type") == "qwen2" or qwen2_moe  # Qwen2-MoE's attention is Qwen2's
    qwen3 = cfg.get("model_type") == "qwen3" or qwen3_moe  # Qwen3-MoE's attention is Qwen3's
    if cfg.get("hidden_act", "silu") != "silu":
        refusals.append(f"hidden_act {cfg.get('hidden_act')!r} (SwiGLU uses silu)")
    scaling = yarn = longrope = None
    linear = 0.0  # a linear rope_scaling's factor (model.rope_scaling = linear)
    # OLMo 3's (Olmo3ForCausalLM): OLMo-2's blocks with a sliding window in all but every 4th
    # layer (layer_types) and its rope scaling in the full-attention layers alone.
    olmo3 = cfg.get("model_type") == "olmo3"
    minicpm = cfg.get("model_type") == "minicpm"
    if cfg.get("rope_scaling") and not minicpm:  # (MiniCPM's: refused below)
        r = cfg["rope_scaling"]
        kind = r.get("rope_type", r.get("type")) if isinstance(r, dict) else None
        try:
            # (Phi-3's older files say "su", or "yarn", for the same: transformers' Phi-3 reads
            # both as longrope.)
            if kind in ("longrope", "su", "yarn") and cfg.get("model_type") == "phi3":
                longrope = longrope_scaling(cfg, r, n_pos, head_dim_of(cfg, n_embd, n_head))
                raise StopIteration
            if kind == "yarn":
                yarn = yarn_scaling(r, n_pos, stretched=olmo3)
                if not olmo3:
                    n_pos = int(n_pos * yarn[0])  # the context YaRN stretches the model to
                raise StopIteration
            if kind == "linear":  # position interpolation: every position divided by the factor
                linear = float(r["factor"])  # (max_position_embeddings: the stretched context)
                if not (math.isfinite(linear) and linear >= 1):
                    raise ValueError("a linear factor must be a finite number >= 1")
                raise StopIteration
            if kind != "llama3":
                raise ValueError
            scaling = tuple(float(r[k]) for k in ROPE_SCALING_HF[:3]) + (
                int(r[ROPE_SCALING_HF[3]]),)
            if not (scaling[0] >= 1 and 0 < scaling[1] < scaling[2] and scaling[3] >= 1):
                raise ValueError
        except StopIteration:
            pass
        except (KeyError, TypeError, ValueError) as e:
            refusals.append(f"rope_scaling {r} (triad builds plain rope, Llama 3.1's 'llama3' "
                            f"scaling, with factor >= 1, 0 < low_freq_factor < high_freq_factor, "
                            f"'yarn' with factor >= 1, beta_fast >= beta_slow > 0, 'linear' with "
                            f"factor >= 1, and Phi-3's 'longrope'"
                            f"{'; ' + str(e) if str(e) else ''})")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            refusals.append(f"{key} = true (triad's Llama has no biases)")
    head_dim = int(cfg.get("head_dim") or 0)
    if head_dim == n_embd // max(n_head, 1) and n_embd % max(n_head, 1) == 0:
        head_dim = 0  # the default width: model.head_dim stays unset
    if head_dim < 0 or head_dim > 4096:
        refusals.append(f"head_dim {cfg['head_dim']} (triad's model.head_dim is in [0, 4096])")
    if int(cfg.get("pretraining_tp", 1) or 1) != 1:
        refusals.append(f"pretraining_tp {cfg['pretraining_tp']}")
    granite_moe = cfg.get("model_type") == "granitemoe"
    # GraniteMoE's experts route as Mixtral's: softmax over the k largest logits (the renormalized
    # softmax of all of them), in every layer.
    mixtral = cfg.get("model_type") == "mixtral" or granite_moe
    phi3 = cfg.get("model_type") == "phi3"
    # Mixtral's and Phi-3's windows are Mistral's (the window's keys, the query's own included).
    mistral = cfg.get("model_type") in ("mistral", "mixtral") or phi3
    if phi3 and float(cfg.get("partial_rotary_factor") or 1.0) != 1.0:
        refusals.append(f"partial_rotary_factor {cfg['partial_rotary_factor']} (triad rotates "
                        f"every dimension of q and k)")
    experts = top_k = 0
    if mixtral:
        try:
            experts, top_k = int(cfg["num_local_experts"]), int(cfg["num_experts_per_tok"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConvertError(f"{where}: a Mixtral config needs integer num_local_experts and "
                               f"num_experts_per_tok ({e})")
        if not 1 <= experts <= MAX_EXPERTS:
            refusals.append(f"num_local_experts {experts} (triad's model.moe_experts is in "
                            f"[1, {MAX_EXPERTS}])")
        if not 2 <= top_k <= experts:
            refusals.append(f"num_experts_per_tok {top_k} (Mixtral renormalizes the chosen "
                            f"experts' gates, triad's model.moe_normalize, which needs 2 to "
                            f"num_local_experts of them: one renormalized gate is always 1)")
    moe = {}
    if qwen2_moe or qwen3_moe:
        moe, hidden = qwen_moe_keys(cfg, where, n_layer, hidden, refusals)
        experts, top_k = moe.pop("moe_experts"), moe.pop("moe_top_k")
    # OLMoE's (OlmoeForCausalLM): Llama's blocks with QK-norm over the whole q and the whole k
    # projection (model.qk_norm_full) and in every layer a mixture of num_experts SwiGLU experts
    # of intermediate_size units, num_experts_per_tok per token, routed as Qwen3-MoE's.
    olmoe = cfg.get("model_type") == "olmoe"
    # OLMo-2's (Olmo2ForCausalLM): Llama's tensors with no norms before the branches and an
    # RMSNorm on each branch's output (post_attention_layernorm, post_feedforward_layernorm:
    # model.pre_norm = false, model.branch_norm), and OLMoE's QK-norm over the whole q and k.
    olmo2 = cfg.get("model_type") in ("olmo2", "olmo3")
    if olmo2 and "rms_norm_eps" not in cfg:  # Olmo2Config's and Olmo3Config's default
        eps = 1e-5
    if olmo2 and cfg.get("head_dim") not in (None, n_embd // max(n_head, 1)):
        refusals.append(f"head_dim {cfg['head_dim']} (OLMo-2's q_norm spans hidden_size values)")
    if olmoe:
        experts, top_k, normalize = routed_experts(cfg, where, refusals)
        moe = dict(moe_normalize=normalize)
        if "rms_norm_eps" not in cfg:  # OlmoeConfig's default
            eps = 1e-5
        if cfg.get("clip_qkv") is not None:
            refusals.append(f"clip_qkv {cfg['clip_qkv']!r} (OLMoE clamps q, k and v after its "
                            f"QK-norm; triad's model.clip_qkv clamps c_attn's output and is not "
                            f"built beside QK-norm)")
    window = cfg.get("sliding_window") if mistral or \
        ((qwen2 or qwen3) and cfg.get("use_sliding_window")) else None
    sliding = 0  # model.sliding_window: Mistral's window where it cuts the context
    if window is not None:
        try:
            window = int(window)
            if window < 1:
                raise ValueError
        except (TypeError, ValueError):
            refusals.append(f"sliding_window {cfg.get('sliding_window')!r} (a positive count)")
            window = None
    if window is not None and window < (seq_len or n_pos):
        if mistral:
            sliding = window
        else:
            refusals.append(f"sliding_window {window} with use_sliding_window, shorter than the "
                            f"context of {seq_len or n_pos} (Qwen's windows are per layer, "
                            f"max_window_layers, which triad does not build: import with "
                            f"--seq-len {window})")
    granite = {}
    if cfg.get("model_type") in ("granite", "granitemoe"):
        granite = granite_multipliers(cfg, where, n_embd // max(n_head, 1), refusals)
        granite["granite_moe"] = granite_moe
    if minicpm:  # Granite's multipliers under other names
        missing = [k for k in MINICPM_REQUIRED if cfg.get(k) is None]
        if missing:
            raise ConvertError(f"{where}: a MiniCPM config needs {', '.join(missing)} (OpenBMB's "
                               f"config class defaults them to no scaling)")
        granite = minicpm_scalings(cfg, where, n_layer, n_embd, refusals)
        if cfg.get("rope_scaling"):
            r = cfg["rope_scaling"]
            kind = r.get("rope_type", r.get("type")) if isinstance(r, dict) else r
            refusals.append(f"rope_scaling of type {kind!r} (triad imports MiniCPM's plain rope; "
                            f"MiniCPM3's LongRoPE under model_type minicpm3)")
        if cfg.get("num_experts"):
            refusals.append(f"num_experts {cfg['num_experts']} (MiniCPM-MoE's experts are not "
                            f"read)")
        for k in ("sparse_config", "mup_denominator"):
            if cfg.get(k):
                refusals.append(f"{k} {cfg[k]} (MiniCPM4's, not built)")
        if cfg.get("use_mup") is False:
            refusals.append("use_mup false (MiniCPM's code then leaves out its scalings)")
    nope = 0
    if cfg.get("model_type") == "smollm3":
        nope = smollm3_nope_every(cfg, where, n_layer, refusals)
        if cfg.get("rope_theta") is None:
            theta = 2e6  # (SmolLM3Config's default in transformers 4 and 5)
    local = {}
    if olmo3:  # (before the refusals are raised: it adds its own)
        local = olmo3_window(cfg, where, n_layer, seq_len or n_pos, theta,
                             scaling is not None or yarn is not None or linear, refusals)
        sliding = local.pop("sliding_window")
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "max_position_embeddings")
    d = Dims(n_layer, n_head, n_embd, seq_len or n_pos, vocab, position="rope", rope_theta=theta,
             norm="layernorm" if olmo else "rmsnorm", norm_weight=not olmo, clip_qkv=clip,
             bias=False,
             mlp="swiglu", mlp_hidden=hidden,
             # (MiniCPM's and SmolLM3's config classes tie by default: their files may say nothing)
             tied=bool(cfg.get("tie_word_embeddings", minicpm or
                               cfg.get("model_type") == "smollm3")), n_kv_head=kv,
             rope_scaling=scaling, rope_linear=linear,
             yarn=yarn, longrope=longrope,
             qkv_bias=qwen2, norm_eps=eps, head_dim=head_dim, qk_norm=qwen3 or olmoe or olmo2,
             qk_norm_full=olmoe or olmo2, pre_norm=not olmo2, branch_norm=olmo2,
             sliding_window=sliding, moe_experts=experts, moe_top_k=top_k, fused=phi3, **moe,
             nope_every=nope, **granite, **local)
    d.check(where)
    return d


def cohere_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face Cohere config (CohereForCausalLM: Command-R, Aya) as triad's model: rope
    (its interleaved pairs reordered on import), parallel attention and SwiGLU on one LayerNorm
    without biases (model.parallel_residual, model.shared_norm), no linear biases, grouped-query
    attention or not, the logits times logit_scale (model.logit_scale, fp32; absent: 0.0625,
    the config classes' default), tied or not; refused where triad computes something else
    (QK-norm, biases, rope scaling; Cohere2's head_dim other than hidden_size / heads)."""
    c = LlamaLikeConfig(cfg, where, "layer_norm_eps", 1e-5)
    refusals = c.refusals
    two = cfg.get("model_type") == "cohere2"
    if cfg.get("hidden_act", "silu") != "silu":
        refusals.append(f"hidden_act {cfg.get('hidden_act')!r} (Cohere's SwiGLU uses silu)")
    for key, why in (("use_qk_norm", "a LayerNorm of each q and k head"),
                     ("attention_bias", "biases on q, k, v and o"),
                     ("rope_scaling", "a rope scaling")):
        if cfg.get(key) and not (two and key == "use_qk_norm"):  # (no Cohere2 reads it)
            refusals.append(f"{key} = {cfg[key]} ({why}, which triad's Cohere does not have)")
    if two and cfg.get("head_dim") not in (None, c.n_embd // max(c.n_head, 1)):
        refusals.append(f"head_dim {cfg['head_dim']} (Cohere2's attention takes it over "
                        f"hidden_size / heads; triad's Cohere blocks do not)")
    if c.n_embd % max(c.n_head, 1) or (c.n_embd // max(c.n_head, 1)) % 2:
        refusals.append(f"hidden_size {c.n_embd} over {c.n_head} heads (rope needs an even head "
                        f"width)")
    try:
        scale = float(cfg.get("logit_scale", 0.0625))
    except (TypeError, ValueError):
        raise ConvertError(f"{where}: logit_scale must be a number")
    if not (math.isfinite(scale) and 0 < scale <= 1e4):
        refusals.append(f"logit_scale {scale} (triad's model.logit_scale is in (0, 1e4])")
    layers = cohere2_layers(cfg, where, c.n_layer, seq_len or c.n_pos, refusals) \
        if cfg.get("model_type") == "cohere2" else {}
    refuse_or_check_positions(where, refusals, seq_len, c.n_pos, "max_position_embeddings")
    d = Dims(c.n_layer, c.n_head, c.n_embd, seq_len or c.n_pos, c.vocab, position="rope",
             rope_theta=c.theta, norm="layernorm", bias=False, mlp="swiglu", mlp_hidden=c.hidden,
             tied=bool(cfg.get("tie_word_embeddings", True)), n_kv_head=c.kv, norm_eps=c.eps,
             parallel_residual=True, shared_norm=True, logit_scale=float(np.float32(scale)),
             **layers)
    d.check(where)
    return d


def phi_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face Phi config (PhiForCausalLM: Phi-1, Phi-1.5, Phi-2) as triad's model: rope on
    partial_rotary_factor of each head's values (model.rotary_dim), parallel attention and MLP on
    one LayerNorm (model.parallel_residual, model.shared_norm), biases everywhere, GELU's tanh
    approximation (gelu_new) or GELU itself (gelu: model.mlp = gelu_exact), grouped-query
    attention or not, an untied head with a bias (model.head_bias); refused where triad computes
    something else (per-head LayerNorms of q and k, rope scaling, a tied head)."""
    c = LlamaLikeConfig(cfg, where, "layer_norm_eps", 1e-5,
                        {"partial_rotary_factor": lambda: float(cfg.get("partial_rotary_factor",
                                                                        0.5))})
    refusals = c.refusals
    mlp = gelu_activation(cfg, refusals, "gelu_new")
    if cfg.get("qk_layernorm"):
        refusals.append("qk_layernorm = true (a LayerNorm of each q and k head, which triad's "
                        "Phi does not have)")
    if cfg.get("tie_word_embeddings"):
        refusals.append("tie_word_embeddings = true (Phi's head has a bias of its own beside "
                        "the embedding; triad's model.head_bias needs an untied head)")
    if c.n_embd % max(c.n_head, 1):
        refusals.append(f"hidden_size {c.n_embd} is not a multiple of num_attention_heads "
                        f"{c.n_head}")
    hd = c.n_embd // max(c.n_head, 1)
    rot = refuse_rotation(cfg, refusals, "Phi", "partial_rotary_factor",
                          c.extra["partial_rotary_factor"], hd)
    refuse_or_check_positions(where, refusals, seq_len, c.n_pos, "max_position_embeddings")
    d = Dims(c.n_layer, c.n_head, c.n_embd, seq_len or c.n_pos, c.vocab, position="rope",
             rope_theta=c.theta, norm="layernorm", bias=True,
             mlp=mlp, mlp_hidden=c.hidden, tied=False,
             n_kv_head=c.kv, norm_eps=c.eps, rotary_dim=0 if rot == hd else rot,
             parallel_residual=True, shared_norm=True, head_bias=True)
    d.check(where)
    return d


def glm_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face GLM config (GlmForCausalLM: GLM-4-9B and its chat and reasoning
    models) as triad's model: Llama's blocks (RMSNorm, SwiGLU, no linear biases but q's, k's and
    v's with attention_bias: model.qkv_bias) with rope on partial_rotary_factor of each head's
    values (model.rotary_dim) in interleaved pairs, which import reorders; grouped-query
    attention, tied or not; refused where triad computes something else."""
    c = LlamaLikeConfig(cfg, where, "rms_norm_eps", 1e-5,
                        {"partial_rotary_factor": lambda: float(cfg.get("partial_rotary_factor",
                                                                        0.5)),
                         "head_dim": lambda: int(cfg.get("head_dim") or 128)})
    refusals = c.refusals
    if cfg.get("hidden_act", "silu") != "silu":
        refusals.append(f"hidden_act {cfg.get('hidden_act')!r} (SwiGLU uses silu)")
    hd = c.extra["head_dim"]
    if c.n_head * hd != c.n_embd:  # GLM's o_proj maps hidden_size values to hidden_size
        refusals.append(f"head_dim {hd} with {c.n_head} heads, not hidden_size {c.n_embd}")
    rot = refuse_rotation(cfg, refusals, "GLM", "partial_rotary_factor",
                          c.extra["partial_rotary_factor"], hd)
    refuse_or_check_positions(where, refusals, seq_len, c.n_pos, "max_position_embeddings")
    d = Dims(c.n_layer, c.n_head, c.n_embd, seq_len or c.n_pos, c.vocab, position="rope",
             rope_theta=c.theta, norm="rmsnorm", bias=False, mlp="swiglu", mlp_hidden=c.hidden,
             tied=bool(cfg.get("tie_word_embeddings", False)), n_kv_head=c.kv, norm_eps=c.eps,
             qkv_bias=bool(cfg.get("attention_bias", True)),
             rotary_dim=0 if rot == hd else rot, glm=True)
    d.check(where)
    return d


def opt_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face OPT config (OPTForCausalLM: OPT-125M to OPT-66B but 350M) as triad's
    model: GPT-2's blocks (learned positions, LayerNorms before the branches, biases, a tied head)
    with the ReLU MLP of ffn_dim units (model.mlp = relu); refused where triad computes something
    else (OPT-350M's norms after the branches and its projected embedding)."""
    try:
        n_layer, n_head = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
        n_embd, hidden = int(cfg["hidden_size"]), int(cfg["ffn_dim"])
        n_pos, vocab = int(cfg["max_position_embeddings"]), int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"{where}: an OPT config needs integer num_hidden_layers, "
                           f"num_attention_heads, hidden_size, ffn_dim, max_position_embeddings "
                           f"and vocab_size ({e})")
    refusals = []
    for key, want in (("do_layer_norm_before", True), ("_remove_final_layer_norm", False),
                      ("enable_bias", True), ("layer_norm_elementwise_affine", True),
                      ("tie_word_embeddings", True)):
        if key in cfg and bool(cfg[key]) != want:
            refusals.append(f"{key} = {str(cfg[key]).lower()} (triad's OPT has {want})")
    if int(cfg.get("word_embed_proj_dim") or n_embd) != n_embd:
        refusals.append(f"word_embed_proj_dim {cfg['word_embed_proj_dim']} (projected "
                        f"embeddings, which triad's OPT does not have)")
    if cfg.get("activation_function", "relu") != "relu":
        refusals.append(f"activation_function {cfg['activation_function']!r} (OPT's is relu)")
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "max_position_embeddings")
    d = Dims(n_layer, n_head, n_embd, seq_len or n_pos, vocab, mlp="relu", mlp_hidden=hidden,
             opt=True)
    d.check(where)
    return d


def dbrx_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face DBRX config (DbrxForCausalLM: DBRX Base and Instruct) as triad's model:
    rope, LayerNorms with a weight and no bias (model.norm = layernorm, model.bias = false),
    c_attn's output clamped at attn_config.clip_qkv (model.clip_qkv), grouped-query attention, and
    in every layer a mixture of moe_num_experts SwiGLU experts, moe_top_k per token, chosen from
    the softmax of all the router's logits and renormalized (moe_normalize_expert_weights 1) or
    not (null); refused where triad computes something else."""
    # (transformers writes the keys that differ from DbrxConfig's defaults, which stand here
    # for the others.)
    attn, ffn = cfg.get("attn_config") or {}, cfg.get("ffn_config") or {}
    try:
        n_layer, n_head = int(cfg.get("n_layers", 24)), int(cfg.get("n_heads", 16))
        n_embd, n_pos = int(cfg.get("d_model", 2048)), int(cfg.get("max_seq_len", 2048))
        vocab = int(cfg.get("vocab_size", 32000))
        kv = int(attn.get("kv_n_heads", 1))
        theta = float(attn.get("rope_theta", 10000.0))
        hidden = int(ffn.get("ffn_hidden_size", 3584))
        experts, top_k = int(ffn.get("moe_num_experts", 4)), int(ffn.get("moe_top_k", 1))
        clip = float(attn.get("clip_qkv") or 0.0)
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"{where}: a DBRX config needs integer n_layers, n_heads, d_model, "
                           f"max_seq_len, vocab_size, attn_config.kv_n_heads and ffn_config's "
                           f"ffn_hidden_size, moe_num_experts and moe_top_k, and numbers for "
                           f"rope_theta and clip_qkv ({e})")
    refusals = []
    if kv <= 0 or n_head % kv:
        refusals.append(f"kv_n_heads {kv} does not divide n_heads {n_head}")
    if n_head <= 0 or n_embd % n_head:
        refusals.append(f"d_model {n_embd} is not a multiple of n_heads {n_head}")
    if not (math.isfinite(clip) and 0 <= clip <= 1e4):
        refusals.append(f"clip_qkv {attn.get('clip_qkv')!r} (a bound in (0, 1e4], or null)")
    act = (ffn.get("ffn_act_fn") or {}).get("name", "silu")
    if act != "silu":
        refusals.append(f"ffn_act_fn {act!r} (SwiGLU uses silu)")
    p = ffn.get("moe_normalize_expert_weights", 1.0)
    if p not in (None, 1, 1.0):
        refusals.append(f"moe_normalize_expert_weights {p} (triad renormalizes the chosen "
                        f"experts' gates to sum 1, the 1-norm, or leaves them)")
    if not 1 <= experts <= MAX_EXPERTS:
        refusals.append(f"moe_num_experts {experts} (triad's model.moe_experts is in "
                        f"[1, {MAX_EXPERTS}])")
    if not 1 <= top_k <= experts or (top_k == 1 and p is not None):
        refusals.append(f"moe_top_k {top_k} with moe_normalize_expert_weights {p} (1 to "
                        f"moe_num_experts, and 2 or more renormalized)")
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "max_seq_len")
    d = Dims(n_layer, n_head, n_embd, seq_len or n_pos, vocab, position="rope", rope_theta=theta,
             norm="layernorm", bias=False, mlp="swiglu", mlp_hidden=hidden,
             tied=bool(cfg.get("tie_word_embeddings", False)), n_kv_head=kv, clip_qkv=clip,
             moe_experts=experts, moe_top_k=top_k, moe_normalize=p is not None, dbrx=True)
    d.check(where)
    return d


def gptj_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face GPT-J config (GPTJForCausalLM: GPT-J-6B and its kin; and CodeGen's,
    CodeGenForCausalLM, the same blocks with q, v and k fused in 4 blocks of heads) as triad's
    model:
    parallel attention and MLP on one LayerNorm (model.parallel_residual, model.shared_norm),
    bias-free attention projections beside an MLP with biases (model.bias = false,
    model.mlp_bias, model.norm_bias), GELU's tanh approximation or GELU itself, rope of base
    10000 on the first rotary_dim values of each head (model.rotary_dim; its interleaved pairs
    reordered on import), an untied head with a bias (model.head_bias); refused where triad
    computes something else (rotary_dim null, which transformers rotates with a table as wide as
    the model, an odd rotary_dim, a tied head)."""
    try:
        n_layer, n_head, n_embd = (int(cfg[k]) for k in ("n_layer", "n_head", "n_embd"))
        n_pos, vocab = int(cfg.get("n_positions", 2048)), int(cfg["vocab_size"])
        hidden = int(cfg.get("n_inner") or 4 * n_embd)
        eps = float(cfg.get("layer_norm_epsilon", 1e-5))
        rot = cfg.get("rotary_dim")
        rot = None if rot is None else int(rot)
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"{where}: needs integer n_layer, n_head, n_embd, vocab_size, "
                           f"n_positions, n_inner, rotary_dim and a numeric layer_norm_epsilon "
                           f"({e})")
    refusals = []
    mlp = gelu_activation(cfg, refusals, "gelu_new", "activation_function")
    if n_head <= 0 or n_embd % n_head:
        refusals.append(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
    hd = n_embd // max(n_head, 1)
    if rot is None or rot < 2 or rot % 2 or rot > hd:
        refusals.append(f"rotary_dim {rot} (triad rotates an even count of at least 2 of each "
                        f"head's {hd} values; transformers rotates a null one with positions "
                        f"as wide as the model)")
    if cfg.get("tie_word_embeddings"):
        refusals.append("tie_word_embeddings = true (GPT-J's head has a bias of its own beside "
                        "the embedding; triad's model.head_bias needs an untied head)")
    codegen = cfg.get("model_type") == "codegen"
    if codegen and n_head % CODEGEN_BLOCKS:
        refusals.append(f"n_head {n_head} (CodeGen's qkv_proj holds its heads in "
                        f"{CODEGEN_BLOCKS} equal blocks)")
    if not (0 < eps <= 0.1):
        refusals.append(f"layer_norm_epsilon {eps} (triad's model.norm_eps is in (0, 0.1])")
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "n_positions")
    d = Dims(n_layer, n_head, n_embd, seq_len or n_pos, vocab, position="rope",
             rope_theta=10000.0, norm="layernorm", bias=False, mlp_bias=True, norm_bias=True,
             mlp=mlp, mlp_hidden=hidden, tied=False,
             norm_eps=eps, rotary_dim=0 if rot == hd else rot, parallel_residual=True,
             shared_norm=True, head_bias=True, codegen=codegen)
    d.check(where)
    return d


def granite_multipliers(cfg: dict, where: str, hd: int, refusals: list[str]) -> dict:
    """A Granite config's multipliers as Dims fields (fp32, as triad applies them; the defaults
    left out); a multiplier triad does not take is added to refusals."""
    try:
        m = {k: float(cfg.get(k, 1.0)) for k in ("embedding_multiplier", "attention_multiplier",
                                                 "residual_multiplier", "logits_scaling")}
    except (TypeError, ValueError) as e:
        raise ConvertError(f"{where}: a Granite config's multipliers must be numbers ({e})")
    for k, v in m.items():
        if not (math.isfinite(v) and 0 < v <= 1e4 and (k != "logits_scaling" or v >= 1e-4)):
            refusals.append(f"{k} {v} (triad takes multipliers in (0, 1e4])")
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    out = {"embed_scale": f32(m["embedding_multiplier"]),
           "residual_scale": f32(m["residual_multiplier"]),
           "logit_scale": f32(1.0 / m["logits_scaling"]) if m["logits_scaling"] > 0 else 1.0}
    if f32(m["attention_multiplier"]) != f32(1.0 / math.sqrt(hd)):
        out["attn_scale"] = f32(m["attention_multiplier"])
    return out


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


def layernorm_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face Nemotron or StableLM config as triad's model: rope on the first
    partial_rotary_factor of each head's values (model.rotary_dim), LayerNorms with biases beside
    bias-free linear layers (model.bias = false, model.norm_bias = true), grouped-query attention
    or not, tied or not; refused where triad computes something else. Nemotron's
    (NemotronForCausalLM: Nemotron-4, Minitron) stores each LayerNorm weight as w - 1 and has the
    squared-ReLU MLP (model.mlp = relu2); StableLM's (StableLmForCausalLM: StableLM-2, StableLM-3B)
    has SwiGLU and optionally q, k and v biases (use_qkv_bias: model.qkv_bias)."""
    nemotron = cfg.get("model_type") == "nemotron"
    kind, eps_key = ("Nemotron", "norm_eps") if nemotron else ("StableLM", "layer_norm_eps")
    c = LlamaLikeConfig(cfg, where, eps_key, 1e-5, {
        "partial_rotary_factor": lambda: float(cfg.get("partial_rotary_factor",
                                                       0.5 if nemotron else 0.25)),
        "head_dim": lambda: int(cfg.get("head_dim") or 0) if nemotron else 0})
    n_layer, n_head, n_embd, hidden = c.n_layer, c.n_head, c.n_embd, c.hidden
    n_pos, vocab, kv, eps, theta, refusals = c.n_pos, c.vocab, c.kv, c.eps, c.theta, c.refusals
    factor = c.extra["partial_rotary_factor"]
    hd = c.extra["head_dim"] or n_embd // max(n_head, 1)
    act = "relu2" if nemotron else "silu"
    if cfg.get("hidden_act", act) != act:
        refusals.append(f"hidden_act {cfg.get('hidden_act')!r} ({kind}'s MLP, triad's model.mlp = "
                        f"{'relu2, is the squared ReLU' if nemotron else 'swiglu, uses silu'})")
    for key in ("attention_bias", "mlp_bias") if nemotron else ():
        if cfg.get(key):
            refusals.append(f"{key} = true (triad's Nemotron has no linear biases)")
    for key, why in (() if nemotron else (
            ("use_parallel_residual", "attention and MLP side by side on one LayerNorm's output"),
            ("qk_layernorm", "a LayerNorm of each q and k head"))):
        if cfg.get(key):
            refusals.append(f"{key} = true ({why}, which triad does not build)")
    rot = refuse_rotation(cfg, refusals, kind, "partial_rotary_factor", factor, hd)
    head_dim = hd if hd * n_head != n_embd else 0
    if hd <= 0 or hd > 4096:
        refusals.append(f"head_dim {hd} (triad's model.head_dim is in [0, 4096])")
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "max_position_embeddings")
    d = Dims(n_layer, n_head, n_embd, seq_len or n_pos, vocab, position="rope", rope_theta=theta,
             norm="layernorm", bias=False, norm_bias=True, mlp="relu2" if nemotron else "swiglu",
             mlp_hidden=hidden, tied=bool(cfg.get("tie_word_embeddings", False)), n_kv_head=kv,
             norm_eps=eps, head_dim=head_dim, rotary_dim=0 if rot == hd else rot,
             qkv_bias=not nemotron and bool(cfg.get("use_qkv_bias")), norm_offset=nemotron)
    d.check(where)
    return d


def refuse_rotation(cfg: dict, refusals: list[str], kind: str, key: str, fraction: float,
                    hd: int) -> int:
    """The values of each head transformers' `kind` rotates, int(hd · fraction) (its
    partial_rotary_factor or rotary_pct under `key`); what triad does not build goes to
    refusals: an odd count (transformers would rotate one more than it names, in pairs
    (i, i + r/2)), none, or rope scaling."""
    if cfg.get("rope_scaling"):
        refusals.append(f"rope_scaling {cfg['rope_scaling']} (triad builds transformers' {kind} "
                        f"without scaling)")
    rot = int(hd * fraction)
    if not (0 < fraction <= 1) or rot < 2 or rot % 2:
        refusals.append(f"{key} {fraction} (of heads {hd} wide: triad rotates an even count of "
                        f"at least 2 values)")
    return rot


def falcon_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face Falcon config (FalconForCausalLM with rope: Falcon-7B, 40B, 180B) as
    triad's model: parallel attention and MLP (model.parallel_residual), LayerNorms with biases
    beside linear layers without (model.norm_bias) or with them (bias), GELU exact, grouped-query
    or multi-query attention, tied or not. Falcon-40B's layout (new_decoder_architecture, two
    LayerNorms or with num_ln_in_parallel_attn = 1 one) and Falcon-7B's (multi_query, one
    LayerNorm for both branches: model.shared_norm) import; alibi, sequential blocks and
    Falcon-7B's layout without multi_query are refused."""
    try:
        n_layer, n_head = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
        n_embd = int(cfg["hidden_size"])
        hidden = int(cfg.get("ffn_hidden_size") or 4 * n_embd)
        n_pos, vocab = int(cfg.get("max_position_embeddings", 2048)), int(cfg["vocab_size"])
        eps, theta = float(cfg.get("layer_norm_epsilon", 1e-5)), float(cfg.get("rope_theta",
                                                                              10000.0))
        new = bool(cfg.get("new_decoder_architecture", False))
        kv = int(cfg.get("num_kv_heads") or n_head) if new else 1
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"{where}: needs integer num_hidden_layers, num_attention_heads, "
                           f"hidden_size, vocab_size and numeric layer_norm_epsilon, rope_theta "
                           f"({e})")
    refusals = []
    if cfg.get("alibi"):
        refusals.append("alibi = true (triad's positions are learned or rotary)")
    if not cfg.get("parallel_attn", True):
        refusals.append("parallel_attn = false (Falcon's sequential blocks are not imported)")
    if not new and not cfg.get("multi_query", True):
        refusals.append("multi_query = false without new_decoder_architecture (that layout is "
                        "not imported)")
    if kv <= 0 or n_head % kv:
        refusals.append(f"num_kv_heads {kv} does not divide num_attention_heads {n_head}")
    if n_head <= 0 or n_embd % n_head:
        refusals.append(f"hidden_size {n_embd} is not a multiple of num_attention_heads {n_head}")
    if not (0 < eps <= 0.1):
        refusals.append(f"layer_norm_epsilon {eps} (triad's model.norm_eps is in (0, 0.1])")
    if cfg.get("activation", "gelu") != "gelu":
        refusals.append(f"activation {cfg.get('activation')!r} (triad builds Falcon's exact GELU)")
    if cfg.get("rope_scaling"):
        refusals.append(f"rope_scaling {cfg['rope_scaling']} (triad builds transformers' Falcon "
                        f"without scaling)")
    shared = not new or cfg.get("num_ln_in_parallel_attn") == 1  # one LayerNorm, both branches
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "max_position_embeddings")
    bias = bool(cfg.get("bias", False))
    d = Dims(n_layer, n_head, n_embd, seq_len or n_pos, vocab, position="rope", rope_theta=theta,
             norm="layernorm", bias=bias, norm_bias=not bias, mlp="gelu_exact",
             mlp_hidden=hidden, tied=bool(cfg.get("tie_word_embeddings", True)), n_kv_head=kv,
             norm_eps=eps, parallel_residual=True, shared_norm=shared,
             falcon="grouped" if new else "multi_query")
    d.check(where)
    return d


def gelu_activation(cfg: dict, refusals: list[str], default: str,
                    key: str = "hidden_act") -> str:
    """triad's MLP for a Hugging Face config's GELU (`key`, absent: default): gelu_exact for
    "gelu", gelu for the tanh approximations; another activation goes to the refusals."""
    act = cfg.get(key, default)
    if act != "gelu" and act not in TANH_GELU:
        refusals.append(f"{key} {act!r} (triad's MLPs use GELU exact, 'gelu', or its tanh "
                        f"approximation: {', '.join(TANH_GELU)})")
    return "gelu_exact" if act == "gelu" else "gelu"


def neox_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face GPT-NeoX config (GPTNeoXForCausalLM: Pythia, GPT-NeoX-20B) as triad's
    model: GPT-2's blocks with rope on rotary_pct of each head's values (model.rotary_dim), GELU
    exact or tanh (model.mlp = gelu_exact or gelu), parallel attention and MLP or not
    (model.parallel_residual), an output layer of its own or tied; refused where triad computes
    something else."""
    try:
        n_layer, n_head = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
        n_embd, hidden = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
        n_pos, vocab = int(cfg["max_position_embeddings"]), int(cfg["vocab_size"])
        eps = float(cfg.get("layer_norm_eps", 1e-5))
        theta = float(cfg.get("rotary_emb_base", 10000.0))
        pct = float(cfg.get("rotary_pct", 0.25))
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"{where}: needs integer num_hidden_layers, num_attention_heads, "
                           f"hidden_size, intermediate_size, max_position_embeddings, vocab_size "
                           f"and numeric layer_norm_eps, rotary_emb_base, rotary_pct ({e})")
    refusals = []
    if n_head <= 0 or n_embd % n_head:
        refusals.append(f"hidden_size {n_embd} is not a multiple of num_attention_heads {n_head}")
    hd = n_embd // max(n_head, 1)
    if not (0 < eps <= 0.1):
        refusals.append(f"layer_norm_epsilon {eps} (triad's model.norm_eps is in (0, 0.1])")
    mlp = gelu_activation(cfg, refusals, "gelu")
    if cfg.get("attention_bias") is False:  # its MLP keeps biases: not one of triad's options
        refusals.append("attention_bias = false (the attention without biases beside an MLP "
                        "with them)")
    rot = refuse_rotation(cfg, refusals, "GPT-NeoX", "rotary_pct", pct, hd)
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "max_position_embeddings")
    d = Dims(n_layer, n_head, n_embd, seq_len or n_pos, vocab, position="rope", rope_theta=theta,
             norm="layernorm", bias=True, mlp=mlp,
             mlp_hidden=hidden, tied=bool(cfg.get("tie_word_embeddings", False)), norm_eps=eps,
             rotary_dim=0 if rot == hd else rot, neox=True,
             parallel_residual=bool(cfg.get("use_parallel_residual", True)))
    d.check(where)
    return d


def starcoder2_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face StarCoder2 config (Starcoder2ForCausalLM) as triad's model: GPT-2's
    sequential blocks with rope on every value (Llama's rotate-half pairing), LayerNorms with
    biases, biases in every linear layer (use_bias; without them the LayerNorms keep theirs:
    model.norm_bias), a GELU MLP (tanh or exact), grouped-query attention, Mistral's sliding window
    where it cuts the context, a tied head or not. Its dropouts are training-time only (triad
    trains without). Refused where triad computes something else."""
    c = LlamaLikeConfig(cfg, where, "norm_epsilon", 1e-5)
    refusals = c.refusals
    mlp = gelu_activation(cfg, refusals, "gelu_pytorch_tanh")
    if cfg.get("rope_scaling"):
        refusals.append(f"rope_scaling {cfg['rope_scaling']} (triad's StarCoder2 is plain rope)")
    if c.n_head <= 0 or c.n_embd % c.n_head:
        refusals.append(f"hidden_size {c.n_embd} is not a multiple of num_attention_heads "
                        f"{c.n_head}")
    window = cfg.get("sliding_window")
    sliding = 0
    if window is not None:
        try:
            window = int(window)
            if window < 1:
                raise ValueError
            sliding = window if window < (seq_len or c.n_pos) else 0
        except (TypeError, ValueError):
            refusals.append(f"sliding_window {window!r} (a positive count)")
    refuse_or_check_positions(where, refusals, seq_len, c.n_pos, "max_position_embeddings")
    bias = bool(cfg.get("use_bias", True))
    d = Dims(c.n_layer, c.n_head, c.n_embd, seq_len or c.n_pos, c.vocab, position="rope",
             rope_theta=c.theta, norm="layernorm", bias=bias, norm_bias=not bias,
             mlp=mlp, mlp_hidden=c.hidden,
             tied=bool(cfg.get("tie_word_embeddings", True)), n_kv_head=c.kv, norm_eps=c.eps,
             sliding_window=sliding, starcoder2=True)
    d.check(where)
    return d


def gemma_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face Gemma config (GemmaForCausalLM: Gemma 1, CodeGemma) as triad's model: rope,
    RMSNorm (weights stored as w - 1: it scales by 1 + w), GeGLU with GELU's tanh approximation
    (model.mlp = geglu), no biases, heads head_dim wide (model.head_dim), grouped-query or
    multi-query attention, the embedding's output times sqrt(hidden_size) (model.embed_scale),
    tied or not; refused where triad computes something else. Gemma 2's (Gemma2ForCausalLM) adds
    the branches' output norms (model.branch_norm), the scores scaled by
    query_pre_attn_scalar^-0.5 (model.attn_scale where that is not 1/sqrt(head_dim)), the scores
    and the logits soft-capped (attn_logit_softcapping, final_logit_softcapping: model.attn_softcap
    and model.logit_softcap), and a sliding window in layers 0, 2, 4, .. (transformers'
    is_sliding): model.sliding_window with model.full_attention_every = 2, or none where the
    window covers the context. Gemma 3's (Gemma3ForCausalLM, model_type gemma3_text: Gemma 3
    270M and 1B; the text_config of 4B to 27B) is Gemma 2's with QK-norm (model.qk_norm, its
    weights stored as w - 1 too), the final logits capped where final_logit_softcapping is set
    (its attention applies no attn_logit_softcapping, which is ignored as transformers ignores
    it), the window in every layer but each sliding_window_pattern-th (layer_types where given:
    model.full_attention_every), the windowed layers' rope base rope_local_base_freq, unscaled
    (model.rope_local_theta), and the others' frequencies under a linear rope_scaling
    (model.rope_scaling = linear); its window is kept where it covers the context (the windowed
    layers' rotation tells them apart). Refused: bidirectional attention (EmbeddingGemma's),
    no window. (transformers 5's rope_parameters arrive as the older keys: legacy_rope_keys.)"""
    gemma3 = cfg.get("model_type") == "gemma3_text"
    if gemma3:  # Gemma3TextConfig's defaults for the keys a file leaves out (the multimodal
        # models' text_config names only a few)
        cfg = {**GEMMA3_TEXT_DEFAULTS, **cfg}
    c = LlamaLikeConfig(cfg, where, "rms_norm_eps", 1e-6,
                        {"head_dim": lambda: int(cfg.get("head_dim") or 256)})
    n_layer, n_head, n_embd, hidden = c.n_layer, c.n_head, c.n_embd, c.hidden
    n_pos, vocab, kv, eps, theta, refusals = c.n_pos, c.vocab, c.kv, c.eps, c.theta, c.refusals
    hd = c.extra["head_dim"]
    # transformers' Gemma takes hidden_activation, and without it GELU's tanh approximation
    # whatever hidden_act says.
    act = cfg.get("hidden_activation") or "gelu_pytorch_tanh"
    if act not in TANH_GELU:
        refusals.append(f"hidden_activation {act!r} (triad's GeGLU gates with GELU's tanh "
                        f"approximation: {', '.join(TANH_GELU)})")
    if cfg.get("attention_bias"):
        refusals.append("attention_bias = true (triad's Gemma has no biases)")
    if gemma3 and cfg.get("use_bidirectional_attention"):
        refusals.append("use_bidirectional_attention = true (EmbeddingGemma's; triad's attention "
                        "is causal)")
    linear = 0.0  # Gemma 3's linear scaling of its full-attention layers (4B to 27B)
    r = cfg.get("rope_scaling")
    kind = r.get("rope_type", r.get("type")) if isinstance(r, dict) else None
    if r and kind != "default":  # (transformers' "default": none)
        try:
            linear = float(r["factor"]) if gemma3 and kind == "linear" else 0.0
        except (KeyError, TypeError, ValueError):
            pass
        if not (math.isfinite(linear) and linear >= 1):
            refusals.append(f"rope_scaling {r} (triad builds transformers' Gemma without scaling, "
                            f"and Gemma 3's linear scaling with a factor >= 1)")
    if not 2 <= hd <= 4096 or hd % 2:
        refusals.append(f"head_dim {hd} (triad's rope needs an even model.head_dim in [2, 4096])")
    gemma2 = cfg.get("model_type") == "gemma2" or gemma3  # (Gemma 3's scalings are Gemma 2's)
    scale = attn_cap = logit_cap = local_theta = 0.0
    window, every = 0, 2
    if gemma3:
        every = window_period(cfg, where, n_layer)
        try:
            local_theta = float(cfg["rope_local_base_freq"])
        except (TypeError, ValueError) as e:
            raise ConvertError(f"{where}: rope_local_base_freq must be a number ({e})")
        if not (math.isfinite(local_theta) and local_theta > 1):
            refusals.append(f"rope_local_base_freq {local_theta} (a rope base is a finite "
                            f"number > 1)")
    if gemma2:
        try:
            scalar = float(cfg.get("query_pre_attn_scalar") or hd)
            # (Gemma 3's attention passes no softcap: its attn_logit_softcapping does nothing)
            attn_cap = 0.0 if gemma3 else float(cfg.get("attn_logit_softcapping") or 0.0)
            logit_cap = float(cfg.get("final_logit_softcapping") or 0.0)
            window = int(cfg.get("sliding_window") or 0)
        except (TypeError, ValueError) as e:
            raise ConvertError(f"{where}: a Gemma 2 config needs numeric query_pre_attn_scalar, "
                               f"attn_logit_softcapping, final_logit_softcapping and an integer "
                               f"sliding_window ({e})")
        if scalar <= 0:
            refusals.append(f"query_pre_attn_scalar {scalar} (it must be positive)")
        elif float(np.float32(scalar ** -0.5)) != float(np.float32(1.0 / math.sqrt(hd))):
            scale = float(np.float32(scalar ** -0.5))  # model.attn_scale (else the default)
        for key, cap in (("attn_logit_softcapping", attn_cap),
                         ("final_logit_softcapping", logit_cap)):
            if not 0 <= cap <= 1e4:
                refusals.append(f"{key} {cap} (triad's caps are in [0, 1e4])")
        if window < 0 or (gemma3 and window == 0 and every != 1):
            refusals.append(f"sliding_window {cfg.get('sliding_window')} (Gemma 3's windowed "
                            f"layers need a window of at least one key)" if gemma3 else
                            f"sliding_window {window}")
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "max_position_embeddings")
    context = seq_len or n_pos
    # a window the context can exceed, or Gemma 3's (whose layers rotate by a base of their own)
    windowed = gemma2 and 0 < window and (window < context or gemma3) and every != 1
    d = Dims(n_layer, n_head, n_embd, context, vocab, position="rope", rope_theta=theta,
             norm="rmsnorm", bias=False, mlp="geglu", mlp_hidden=hidden,
             tied=bool(cfg.get("tie_word_embeddings", True)), n_kv_head=kv, norm_eps=eps,
             head_dim=0 if hd * n_head == n_embd else hd, norm_offset=True,
             embed_scale=float(np.float32(math.sqrt(n_embd))), branch_norm=gemma2,
             attn_scale=scale, attn_softcap=attn_cap, logit_softcap=logit_cap,
             sliding_window=window if windowed else 0,
             full_attention_every=every if windowed else 0, qk_norm=gemma3, rope_linear=linear,
             # (with a linear scaling the windowed layers' table differs even at one base)
             rope_local_theta=local_theta if windowed and (local_theta != theta or linear)
             else 0.0)
    d.check(where)
    return d


# transformers' Gemma3TextConfig defaults (its config.json files leave them out).
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
    "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
    "query_pre_attn_scalar": 256, "sliding_window": 4096, "rope_local_base_freq": 10000.0,
    "sliding_window_pattern": 6, "hidden_activation": "gelu_pytorch_tanh",
}


def window_period(cfg: dict, where: str, n_layer: int, pattern: int | None = None) -> int:
    """Gemma 3's, OLMo 3's and Cohere2's windowed layers as model.full_attention_every: every
    layer but each N-th (1-based) keeps to the window, N from layer_types where given (newer
    transformers' list of "sliding_attention" and "full_attention"), else sliding_window_pattern
    (Gemma 3's; else `pattern`: OLMo 3's 4, Cohere2's file value or 4); 0: every layer windowed;
    1: none."""
    types = cfg.get("layer_types")
    if types is None:
        try:
            period = int(cfg["sliding_window_pattern"] if pattern is None else pattern)
        except (TypeError, ValueError) as e:
            raise ConvertError(f"{where}: sliding_window_pattern must be an integer ({e})")
        if period < 1:
            raise ConvertError(f"{where}: sliding_window_pattern {period} is not >= 1")
        return 1 if period == 1 else period if period <= n_layer else 0
    kinds = ("sliding_attention", "full_attention")
    if not isinstance(types, list) or len(types) != n_layer or any(t not in kinds for t in types):
        raise ConvertError(f"{where}: layer_types must list 'sliding_attention' or "
                           f"'full_attention' for each of the {n_layer} layers")
    period = full_attention_period([t == "full_attention" for t in types])
    if period is None or period[1]:  # (the full layers end their groups)
        raise ConvertError(f"{where}: layer_types {types} does not attend to the whole context "
                           f"in every N-th layer (layers N - 1, 2N - 1, ..), which triad's "
                           f"model.full_attention_every holds")
    return period[0]


def cohere2_layers(cfg: dict, where: str, n_layer: int, context: int,
                   refusals: list[str]) -> dict:
    """Cohere2's (Command R7B's, Command A's) layers as Dims fields: those layer_types names
    sliding (default: all but every sliding_window_pattern-th, 4) keep to sliding_window keys
    and rotate, the others attend to the whole context without rope: model.sliding_window and
    model.full_attention_every with model.nope_every, the same N (the window kept where the
    context does not exceed it, so that an extension of the positions keeps it)."""
    try:
        window = int(cfg.get("sliding_window", 4096) or 0)
    except (TypeError, ValueError) as e:
        raise ConvertError(f"{where}: sliding_window must be an integer ({e})")
    every = window_period(cfg, where, n_layer, pattern=cfg.get("sliding_window_pattern", 4))
    if window < 1 and every != 1:
        refusals.append(f"sliding_window {cfg.get('sliding_window')} (Cohere2's sliding layers "
                        f"need a window of at least one key)")
    keep = every != 1 and window > 0  # (kept where it covers the context: a longer one later)
    return dict(sliding_window=window if keep else 0, full_attention_every=every if keep else 0,
                nope_every=every)


def smollm3_nope_every(cfg: dict, where: str, n_layer: int, refusals: list[str]) -> int:
    """SmolLM3's layers without rope as model.nope_every: no_rope_layers (1: the layer
    rotates, 0: it does not), else every no_rope_layer_interval-th (1-based, 4 by default), as
    transformers' SmolLM3Config builds the list (a longer one: its first n_layer entries); a list
    of another pattern, or a sliding window (use_sliding_window, which SmolLM3 puts in its NoPE
    layers; layer_types naming sliding layers beside a sliding_window, which transformers' masks
    follow), is refused."""
    if cfg.get("use_sliding_window"):
        refusals.append("use_sliding_window = true (SmolLM3's window in its NoPE layers is not "
                        "built)")
    types = cfg.get("layer_types")
    if cfg.get("sliding_window") is not None and isinstance(types, list) and \
            any(t != "full_attention" for t in types):
        refusals.append(f"layer_types {types} beside sliding_window {cfg['sliding_window']} "
                        f"(SmolLM3's windowed layers are not built)")
    flags = cfg.get("no_rope_layers")
    try:
        if flags is None:
            interval = int(cfg.get("no_rope_layer_interval", 4))
            if interval < 1:
                raise ValueError(f"no_rope_layer_interval {interval} is not >= 1")
            flags = [int((i + 1) % interval != 0) for i in range(n_layer)]
        if not isinstance(flags, list) or len(flags) < n_layer or \
                any(f not in (0, 1) or isinstance(f, float) for f in flags):
            raise ValueError(f"no_rope_layers must hold 1 (rope) or 0 (none) for each of the "
                             f"{n_layer} layers")
        flags = flags[:n_layer]
    except (TypeError, ValueError) as e:
        raise ConvertError(f"{where}: {e}")
    period = full_attention_period([f == 0 for f in flags])
    if period is None or period[1]:
        refusals.append(f"no_rope_layers {flags} (triad's model.nope_every leaves out rope in "
                        f"every N-th layer, 1-based: layers N - 1, 2N - 1, .. from 0)")
        return 0
    return period[0]


def olmo3_window(cfg: dict, where: str, n_layer: int, context: int, theta: float, scaled: bool,
                 refusals: list[str]) -> dict:
    """OLMo 3's windows and rotations as Dims fields: sliding_window (Olmo3Config's default
    4096) in the layers layer_types names sliding (default: all but every 4th), which rotate by
    their base (transformers 5's rope_parameters.sliding_attention, else rope_theta: a file
    whose rope_theta is not 500000 is refused, 4.57 and 5 reading it differently) unscaled
    while the full-attention layers take the rope scaling: model.rope_local_theta where the two
    tables differ. A window the context cannot exceed is dropped where the tables agree."""
    if cfg.get("rope_theta") is None:
        refusals.append("no rope_theta (transformers 4.57's OLMo 3 then takes 10000, 5's 500000)")
    try:
        window = int(cfg.get("sliding_window", 4096) or 0)
        local_theta = float(cfg.get(OLMO3_SLIDING, theta))
    except (TypeError, ValueError) as e:
        raise ConvertError(f"{where}: an OLMo 3 config needs an integer sliding_window and a "
                           f"numeric base ({e})")
    every = window_period(cfg, where, n_layer, pattern=4)
    if OLMO3_SLIDING not in cfg and every != 1 and theta != OLMO3_DEFAULT_THETA:
        # (5's OLMo 3 config hands the file's rope_theta to the full layers alone)
        refusals.append(f"rope_theta {theta} with sliding layers and no per-layer "
                        f"rope_parameters (transformers 4.57 rotates the sliding layers by it, 5 "
                        f"by {OLMO3_DEFAULT_THETA}: give rope_parameters.sliding_attention)")
    if window < 0 or (window == 0 and every != 1):
        refusals.append(f"sliding_window {cfg.get('sliding_window')} (OLMo 3's windowed layers "
                        f"need a window of at least one key)")
    unscaled = scaled or local_theta != theta  # (the windowed layers' table is another)
    if every == 1 or window <= 0 or (window >= context and not unscaled):
        return dict(sliding_window=0)
    return dict(sliding_window=window, full_attention_every=every,
                rope_local_theta=local_theta if unscaled else 0.0)


def qwen_moe_keys(cfg: dict, where: str, n_layer: int, dense_hidden: int,
                  refusals: list[str]) -> tuple[dict, int]:
    """A Qwen2-MoE or Qwen3-MoE config's mixture of experts as Dims' moe_* fields (Qwen2-MoE's
    with its gated shared expert, the dense layers' intermediate_size as moe_dense_hidden where
    it is not the experts'), and the experts' width (model.mlp_hidden); what triad does not build
    is added to refusals."""
    qwen2 = cfg.get("model_type") == "qwen2_moe"
    experts, top_k, normalize = routed_experts(cfg, where, refusals)
    try:
        hidden = int(cfg["moe_intermediate_size"])
        shared = int(cfg["shared_expert_intermediate_size"]) if qwen2 else 0
        step = int(cfg.get("decoder_sparse_step", 1))
        dense = sorted(int(i) for i in (cfg.get("mlp_only_layers") or []))
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"{where}: a Qwen MoE config needs integer moe_intermediate_size, "
                           f"{'shared_expert_intermediate_size, ' if qwen2 else ''}"
                           f"decoder_sparse_step and a list of mlp_only_layers ({e})")
    if qwen2 and shared < 1:
        refusals.append(f"shared_expert_intermediate_size {shared} (a positive width)")
    # Qwen's layer i has the experts when it is not in mlp_only_layers and (i + 1) is a multiple
    # of decoder_sparse_step; triad's when i >= first_dense and (i - first_dense + 1) is one of
    # every: the same layers when mlp_only_layers is empty, or its first layers with step 1.
    first = len(dense) if dense == list(range(len(dense))) else -1
    if step < 1 or first < 0 or (first and step != 1) or first + step > n_layer:
        refusals.append(f"decoder_sparse_step {step} with mlp_only_layers {dense} (triad's dense "
                        f"layers among the expert layers are the first ones, model."
                        f"moe_first_dense, or every n-th, model.moe_every, not both, and some "
                        f"layer keeps the experts)")
    wider = (first > 0 or step > 1) and dense_hidden != hidden  # model.moe_dense_hidden
    return dict(moe_experts=experts, moe_top_k=top_k, moe_normalize=normalize,
                moe_shared_hidden=shared, moe_shared_gate=qwen2, moe_first_dense=max(first, 0),
                moe_every=step, moe_dense_hidden=dense_hidden if wider else 0), hidden


def routed_experts(cfg: dict, where: str, refusals: list[str]) -> tuple[int, int, bool]:
    """The experts, the experts per token and norm_topk_prob of a Qwen-MoE or OLMoE config (the
    softmax of all the router's logits, its k largest kept, renormalized or not); what triad does
    not build is added to refusals."""
    try:
        experts, top_k = int(cfg["num_experts"]), int(cfg["num_experts_per_tok"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"{where}: a {cfg.get('model_type')} config needs integer num_experts "
                           f"and num_experts_per_tok ({e})")
    normalize = bool(cfg.get("norm_topk_prob", False))
    if not 1 <= experts <= MAX_EXPERTS:
        refusals.append(f"num_experts {experts} (triad's model.moe_experts is in "
                        f"[1, {MAX_EXPERTS}])")
    if not 1 <= top_k <= experts or (top_k == 1 and normalize):
        refusals.append(f"num_experts_per_tok {top_k} with norm_topk_prob {normalize} (1 to "
                        f"num_experts, and 2 or more with norm_topk_prob: one renormalized gate "
                        f"is always 1)")
    return experts, top_k, normalize


def head_dim_of(cfg: dict, n_embd: int, n_head: int) -> int:
    """A Hugging Face config's head width: head_dim, or hidden_size / num_attention_heads."""
    return int(cfg.get("head_dim") or n_embd // max(n_head, 1))


def longrope_scaling(cfg: dict, r: dict, n_pos: int, head_dim: int) -> tuple:
    """(stretch, original positions, short factors, long factors) of Phi-3's LongRoPE
    rope_scaling, as transformers' Phi3ForCausalLM computes it: frequency i divided by the short
    factor i where a call's length is at most original_max_position_embeddings, else by the long
    one, and cos and sin scaled by sqrt(1 + ln s / ln original) for s = max_position_embeddings /
    original > 1. triad decides by model.seq_len, so the two agree on every call as long as
    its length lies on the same side of the original context. The variants with their own scales
    (short_mscale, long_mscale, attention_factor, factor), whose meaning depends on the
    transformers version, are refused."""
    for k in ("short_mscale", "long_mscale", "attention_factor", "factor"):
        if r.get(k) is not None:
            raise ValueError(f"{k} is not built")
    original = int(cfg.get("original_max_position_embeddings") or 0)
    if original < 1 or (original < 2 and n_pos > original):
        raise ValueError("original_max_position_embeddings is missing, or 1 with a stretch (the "
                         "scale divides by its logarithm)")
    short = tuple(float(x) for x in r["short_factor"])
    long = tuple(float(x) for x in r["long_factor"])
    pairs = head_dim // 2
    if len(short) != pairs or len(long) != pairs:
        raise ValueError(f"short_factor and long_factor need {pairs} numbers each (head_dim / 2)")
    if not all(math.isfinite(x) and x > 0 for x in short + long):
        raise ValueError("the factors must be finite numbers > 0")
    return max(1.0, n_pos / original), original, short, long


def yarn_scaling(r: dict, n_pos: int, stretched: bool = False) -> tuple:
    """(factor, beta_fast, beta_slow, original positions) of a Hugging Face YaRN rope_scaling.
    transformers' versions differ on which positions set YaRN's ramp (max_position_embeddings,
    or original_max_position_embeddings when given), so a config where the two differ is
    refused, unless `stretched`: a model only transformers 4.57 and later build (OLMo 3's), whose
    ramp is original_max_position_embeddings' and whose context max_position_embeddings. So are
    the mscale variants and truncate false (the ramp between unrounded bounds: triad builds it,
    model.rope_yarn_truncate, and imports it with gpt-oss's files, but transformers' Llama family
    before 4.55 ignores the key and rounds them, so such a file is two models)."""
    for k in ("mscale", "mscale_all_dim"):
        if r.get(k):
            raise ValueError(f"{k} is not built")
    if not r.get("truncate", True):  # (transformers 5 reads null as false too)
        raise ValueError(f"truncate {json.dumps(r['truncate'])}: transformers before 4.55 ignore "
                         f"it and round the ramp's bounds, later ones do not (gpt-oss's files "
                         f"import with it)")
    factor = float(r["factor"])
    original = int(r.get("original_max_position_embeddings") or n_pos)
    if original != n_pos and not stretched:
        raise ValueError(f"original_max_position_embeddings {original} differs from "
                         f"max_position_embeddings {n_pos}")
    fast, slow = float(r.get("beta_fast") or 32), float(r.get("beta_slow") or 1)
    if r.get("attention_factor") not in (None, 0.1 * math.log(factor) + 1 if factor > 1 else 1):
        raise ValueError("an attention_factor other than 0.1·ln(factor) + 1 is not built")
    if not (factor >= 1 and fast >= slow > 0 and original >= 1):
        raise ValueError("")
    return factor, fast, slow, original
