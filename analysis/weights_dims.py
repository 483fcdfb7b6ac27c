"""The model every triad-convert conversion passes through (convert_weights.py): Dims, a
checkpoint's architecture as the formats exchange it (its /model attributes and [model] keys),
ConvertError, the rope scalings' attribute and Hugging Face key names, and triad's tensor names
and shapes. The format modules (weights_*.py) all build on it; it imports none of them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Tuple

import numpy as np

from .cli import AnalysisError
from .inspect_checkpoint import MODEL_BOUNDS, expected_shapes


class ConvertError(AnalysisError):
    pass


# model.moe_experts' largest value (kMaxExperts in triad/kernels/moe_routing.h).
MAX_EXPERTS = 512
# model.mtp_depth's largest value (the multi-token prediction modules; triad-train's limit).
MAX_MTP_DEPTH = 16


# llama3 rope scaling's four numbers: as /model attributes (also triad-train's [model] keys),
# and in Hugging Face's rope_scaling.
ROPE_SCALING_ATTRS = ("rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                      "rope_original_positions")
ROPE_SCALING_HF = ("factor", "low_freq_factor", "high_freq_factor",
                   "original_max_position_embeddings")
# YaRN's (model.rope_scaling = yarn): attributes and Hugging Face's keys, in the same order.
YARN_ATTRS = ("rope_scaling_factor", "rope_yarn_beta_fast", "rope_yarn_beta_slow",
              "rope_original_positions")
YARN_HF = ("factor", "beta_fast", "beta_slow", "original_max_position_embeddings")
# DeepSeek's form of YaRN: cos and sin times m(mscale) / m(mscale_all_dim), the scores times
# m(mscale_all_dim)² (docs/formats.md); absent: 1 and 0.
YARN_MSCALE_ATTRS = ("rope_yarn_mscale", "rope_yarn_mscale_all_dim")
# LongRoPE's two numbers (model.rope_scaling = longrope), beside its two lists of factors.
LONGROPE_ATTRS = ("rope_scaling_factor", "rope_original_positions")


@dataclass(frozen=True)
class Dims:
    n_layer: int
    n_head: int
    n_embd: int
    seq_len: int
    vocab_size: int
    # The architecture options (docs/formats.md "Model"); the defaults are GPT-2's.
    position: str = "learned"
    rope_theta: float = 10000.0
    rope_local_theta: float = 0.0  # the windowed layers' base (model.rope_local_theta); 0: none
    # Linear rope scaling (model.rope_scaling = linear: the frequencies divided by this factor;
    # Gemma 3 4B-27B's full-attention layers); 0: none.
    rope_linear: float = 0.0
    norm: str = "layernorm"
    bias: bool = True
    mlp: str = "gelu"
    mlp_hidden: int = 0
    tied: bool = True
    n_kv_head: int = 0  # key/value heads; 0: n_head (no grouped-query attention)
    qk_norm: bool = False  # q_norm / k_norm per head (model.qk_norm): no export format holds it
    # ... over all heads' q and all k instead (model.qk_norm_full: OLMoE's, OLMo-2's)
    qk_norm_full: bool = False
    # Norms before the branches (ln_1, ln_2); False: none, the branch norms after them
    # (model.pre_norm = false: OLMo-2's reordered norms).
    pre_norm: bool = True
    # GLM's layout (GlmForCausalLM: GLM-4): q, k, v apart (with biases), the MLP's gate and up
    # as one gate_up_proj, the rope pairs (2i, 2i + 1) of each head's first rotary_dim values.
    glm: bool = False
    # GPT-BigCode's layout (GPTBigCodeForCausalLM: StarCoder, SantaCoder): GPT-2's names and
    # blocks with one key/value head (multi-query) or, with multi_query false, one per query head
    # (c_attn's rows interleaved head by head, regrouped on import; such a model exports as
    # GPT-2's, the same blocks), its matrices stored [out, in] (nn.Linear), not transposed as
    # GPT-2's Conv1D.
    bigcode: bool = False
    # DBRX's layout (DbrxForCausalLM): q, k, v as one Wqkv, each layer's experts as three tensors
    # w1 (gates), v1 (ups), w2 (downs, stored [E·F, C]: each expert's c_proj transposed).
    dbrx: bool = False
    # OPT's layout (OPTForCausalLM): GPT-2's blocks with the ReLU MLP under OPT's names (q, k, v
    # apart), its position table 2 rows longer (embed_positions' offset: position p is row p + 2).
    opt: bool = False
    # CodeGen's layout (CodeGenForCausalLM): GPT-J's blocks with q, v and k fused as qkv_proj in 4
    # blocks of rows, each [q | v | k] for a quarter of the heads (codegen_qkv_order).
    codegen: bool = False
    # GPT-Neo's layout (GPTNeoForCausalLM): GPT-2's blocks under its names (q, k, v apart, nn.Linear
    # matrices), c_attn without a bias (triad's zeros), attention_layers as the window's layers.
    gpt_neo: bool = False
    qkv_bias: bool = False  # c_attn's bias without the others (model.qkv_bias: Qwen2)
    mlp_bias: bool = False  # c_fc's and c_proj's without the attention's (model.mlp_bias: GPT-J)
    norm_eps: float = 1e-5  # the normalizations' epsilon (model.norm_eps)
    head_dim: int = 0  # each head's width (model.head_dim); 0: n_embd / n_head
    sliding_window: int = 0  # keys each query sees at most (model.sliding_window); 0: all
    full_attention_every: int = 0  # with a window, every N-th layer sees all (model.full_...)
    full_attention_first: bool = False  # ... the first of each N, not the last (GPT-Neo's)
    # Llama 3.1's rope scaling (model.rope_scaling = llama3): (factor, low_freq_factor,
    # high_freq_factor, original positions); None: plain rope.
    rope_scaling: tuple | None = None
    # YaRN's instead (model.rope_scaling = yarn): (factor, beta_fast, beta_slow, original
    # positions).
    yarn: tuple | None = None
    # LongRoPE's instead (model.rope_scaling = longrope: Phi-3's long-context models): (the
    # stretch of the original context, original positions, short factors, long factors), the
    # factors tuples of one divisor per rotated pair.
    longrope: tuple | None = None
    # A mixture of experts in every layer (model.moe_experts, moe_top_k, moe_normalize): Mixtral's
    # sparse MLP blocks; 0 experts: dense MLPs.
    moe_experts: int = 0
    moe_top_k: int = 0
    moe_normalize: bool = True
    # Qwen2-MoE's: shared experts of this many units (model.moe_shared_hidden), their sigmoid
    # gate (model.moe_shared_gate), and dense layers among the expert layers
    # (model.moe_first_dense, model.moe_every).
    moe_shared_hidden: int = 0
    moe_shared_gate: bool = False
    moe_first_dense: int = 0
    moe_every: int = 1
    # ... those dense layers' MLP width when it is not the experts' (model.moe_dense_hidden:
    # Qwen-MoE's intermediate_size beside moe_intermediate_size; 0: mlp_hidden).
    moe_dense_hidden: int = 0
    # The values of each head that rotate (model.rotary_dim; 0: all) and the LayerNorms' biases
    # beside bias-free linear layers (model.norm_bias): Nemotron's.
    rotary_dim: int = 0
    norm_bias: bool = False
    # Layers N, 2N, .. (1-based) rotate nothing (model.nope_every: SmolLM3's NoPE layers; 0: none).
    nope_every: int = 0
    # Norms without a learned weight or bias (model.norm_weight = false: OLMo's non-parametric
    # LayerNorm): triad holds them as ones (and zeros), frozen; the Hugging Face files have none.
    norm_weight: bool = True
    # Read from Phi-3's layout (Phi3ForCausalLM): q, k and v stored as one qkv_proj, the MLP's
    # gate and up as one gate_up_proj. An import's source only, not part of triad's model.
    fused: bool = False
    # Read from GraniteMoE's layout (GraniteMoeForCausalLM): each layer's experts as two tensors,
    # input_linear [E, 2H, C] (gate | up) and output_linear [E, C, H]. An import's source only.
    granite_moe: bool = False
    # GPT-NeoX's layout (GPTNeoXForCausalLM): its names, and q, k, v interleaved by head.
    neox: bool = False
    # StarCoder2's layout (Starcoder2ForCausalLM): Llama's q, k, v and o projections with biases,
    # LayerNorms with biases, and an MLP of c_fc and c_proj with biases.
    starcoder2: bool = False
    # Falcon's layout (FalconForCausalLM): "" (not Falcon), "grouped" (new_decoder_architecture:
    # q, k, v grouped by key/value head) or "multi_query" (Falcon-7B's: q | k | v). Its norms:
    # ln_attn and ln_mlp, or with shared_norm one input_layernorm (Falcon-7B's, or
    # num_ln_in_parallel_attn = 1).
    falcon: str = ""
    # Parallel attention and MLP (model.parallel_residual: GPT-NeoX's use_parallel_residual).
    parallel_residual: bool = False
    # Nemotron's and Gemma's layout: each norm weight stored as w - 1 (LayerNorm1P and
    # GemmaRMSNorm scale by 1 + w). The files' convention only, not part of triad's model.
    norm_offset: bool = False
    # The embedding's output times this (model.embed_scale: Gemma's sqrt(n_embd)); 1: none.
    embed_scale: float = 1.0
    # Gemma 2's: a norm on each branch's output (model.branch_norm), the scores' scale
    # (model.attn_scale; 0: 1/sqrt(head width)), and soft caps on the scores (model.attn_softcap)
    # and on the logits (model.logit_softcap); 0: none.
    branch_norm: bool = False
    # One norm for both parallel branches (model.shared_norm): Cohere's, Phi's.
    shared_norm: bool = False
    # A bias on the untied head's logits (model.head_bias): Phi's.
    head_bias: bool = False
    attn_scale: float = 0.0
    attn_softcap: float = 0.0
    # c_attn's output clamped to [-c, c] (model.clip_qkv: OLMo-1.7's clip_qkv); 0: none.
    clip_qkv: float = 0.0
    logit_softcap: float = 0.0
    # Granite's: each branch's output times residual_scale (model.residual_scale), the logits
    # times logit_scale (model.logit_scale); 1: none.
    residual_scale: float = 1.0
    logit_scale: float = 1.0
    # DeepSeek-V2's multi-head latent attention (model.kv_lora_rank > 0, q_lora_rank,
    # qk_nope_head_dim, qk_rope_head_dim, v_head_dim): attn/q_a, q_a_norm, q_b, kv_a, kv_a_norm and
    # kv_b instead of c_attn (docs/formats.md).
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # The latent norms' epsilon (model.mla_norm_eps); 0: norm_eps's.
    mla_norm_eps: float = 0.0
    # DeepSeek-V3's routing (model.moe_score, moe_routed_scale, moe_groups, moe_group_top_k) and
    # DeepSeek's YaRN, the whole score scaled (model.rope_yarn_mscale, rope_yarn_mscale_all_dim).
    moe_score: str = "softmax"
    moe_routed_scale: float = 1.0
    moe_groups: int = 1
    moe_group_top_k: int = 1
    moe_group_score: str = "top2"  # model.moe_group_score: max, DeepSeek-V2's
    yarn_mscale: tuple = (1.0, 0.0)
    # Read from DeepSeek's layout (DeepseekV2ForCausalLM, DeepseekV3ForCausalLM): "deepseek_v2" or
    # "deepseek_v3"; its rotated q and k rows in pairs (2i, 2i + 1) where rope_interleave (always in
    # V2's files); its multi-token prediction layers past the last (num_nextn_predict_layers),
    # triad's modules (model.mtp_depth; written to V3's files, where an export holds them); its FP8
    # weights' block (quantization_config's weight_block_size), each [rows, columns] block scaled
    # by the tensor's weight_scale_inv (an import's source only).
    deepseek: str = ""
    rope_interleave: bool = False
    mtp_layers: int = 0
    fp8_block: tuple | None = None
    # gpt-oss's: a learned logit per query head in each softmax's denominator (model.attn_sinks),
    # biases on the router's logits and the experts' products (model.moe_bias), its SwiGLU's
    # shape (alpha, limit, offset: model.glu_*; (1, 0, 0) is Llama's), and YaRN's ramp between
    # unrounded ends (model.rope_yarn_truncate = false where yarn_truncate is False).
    attn_sinks: bool = False
    moe_bias: bool = False
    glu: tuple = (1.0, 0.0, 0.0)
    yarn_truncate: bool = True
    # Read from gpt-oss's layouts: "hf" (GptOssForCausalLM: each layer's experts as gate_up_proj,
    # gate and up rows interleaved, and down_proj, MXFP4 blocks or not) or "openai" (OpenAI's own
    # checkpoint, its repositories' original/: block.{i} names, q|k|v as one qkv, the experts'
    # MXFP4 blocks as mlp1_weight and mlp2_weight); "": neither. An import's source only.
    gpt_oss: str = ""

    def moe_layer(self, i: int) -> bool:
        """Whether layer i has the experts (GptShape::moe_layer)."""
        return bool(self.moe_experts) and i >= self.moe_first_dense and \
            (i - self.moe_first_dense + 1) % self.moe_every == 0

    def windowed(self, i: int) -> bool:
        """Whether layer i keeps to the window (GptShape::windowed): with a window, all but
        the full-attention layers of model.full_attention_every (and model.full_attention_first)."""
        every, shift = self.full_attention_every, 0 if self.full_attention_first else 1
        return bool(self.sliding_window) and not (every and (i + shift) % every == 0)

    def rotates(self, i: int) -> bool:
        """Whether layer i rotates q and k (GptShape::rotates): with rope, all but every
        model.nope_every-th layer (1-based)."""
        return self.position == "rope" and not (self.nope_every and
                                                (i + 1) % self.nope_every == 0)

    @property
    def moe_format(self) -> str | None:
        """The Hugging Face model_type of its mixture of experts: GraniteMoE's read from its
        layout or with Granite's multipliers, OLMoE's with QK-norm over all heads, Qwen2-MoE's
        with gated shared experts, Qwen3-MoE's with QK-norm, else Mixtral's; None: dense."""
        if not self.moe_experts:
            return None
        if self.dbrx:
            return "dbrx"
        if self.granite_moe or self.multiplied:
            return "granitemoe"
        if self.qk_norm_full:
            return "olmoe"
        return "qwen2_moe" if self.moe_shared_gate else "qwen3_moe" if self.qk_norm else "mixtral"

    @property
    def cohere(self) -> bool:
        """Cohere's blocks: parallel SwiGLU and attention on one LayerNorm (its rope pairs
        interleaved in HF's q and k rows)."""
        return self.shared_norm and self.mlp == "swiglu" and self.norm == "layernorm"

    @property
    def phi(self) -> bool:
        """Phi's blocks: parallel GELU MLP and attention on one LayerNorm, biases everywhere."""
        return self.shared_norm and self.mlp in ("gelu", "gelu_exact") and self.bias

    @property
    def gptj(self) -> bool:
        """GPT-J's blocks: parallel GELU MLP with biases and bias-free attention on one LayerNorm
        (its rope pairs interleaved in HF's q and k rows, as Cohere's)."""
        return self.shared_norm and self.mlp_bias

    @property
    def multiplied(self) -> bool:
        """Whether it has any of Granite's multipliers (which only Granite's formats hold)."""
        return self.embed_scale != 1.0 or bool(self.attn_scale) or self.residual_scale != 1.0 or \
            self.logit_scale != 1.0

    def moe_keys(self) -> dict:
        """The mixture of experts' /model attributes, which are also its [model] keys (bools as
        1 and 0)."""
        if not self.moe_experts:
            return {}
        k = {"moe_experts": self.moe_experts, "moe_top_k": self.moe_top_k,
             "moe_normalize": int(self.moe_normalize)}
        if self.moe_shared_hidden:
            k["moe_shared_hidden"] = self.moe_shared_hidden
        if self.moe_shared_gate:
            k["moe_shared_gate"] = 1
        if (self.moe_first_dense, self.moe_every) != (0, 1):
            k.update(moe_first_dense=self.moe_first_dense, moe_every=self.moe_every)
        if self.moe_dense_hidden:
            k["moe_dense_hidden"] = self.moe_dense_hidden
        if self.moe_score != "softmax":
            k["moe_score"] = self.moe_score
        if self.moe_routed_scale != 1.0:
            k["moe_routed_scale"] = float(self.moe_routed_scale)
        if self.moe_groups > 1:
            k.update(moe_groups=self.moe_groups, moe_group_top_k=self.moe_group_top_k)
        if self.moe_group_score != "top2":
            k["moe_group_score"] = self.moe_group_score
        if self.moe_bias:
            k["moe_bias"] = 1
        return k

    def gpt_oss_keys(self) -> dict:
        """The /model attributes of gpt-oss's options (attention sinks, SwiGLU's shape, YaRN's
        unrounded ramp), which are also its [model] keys (bools as 1 and 0), where not the
        defaults."""
        k = {}
        if self.attn_sinks:
            k["attn_sinks"] = 1
        for key, v, default in zip(("glu_alpha", "glu_limit", "glu_offset"), self.glu,
                                   (1.0, 0.0, 0.0)):
            if v != default:
                k[key] = float(v)
        if self.yarn is not None and not self.yarn_truncate:
            k["rope_yarn_truncate"] = 0
        return k

    def mla_keys(self) -> dict:
        """Multi-head latent attention's /model attributes, which are also its [model] keys."""
        if not self.kv_lora_rank:
            return {}
        k = {"kv_lora_rank": self.kv_lora_rank, "q_lora_rank": self.q_lora_rank,
             "qk_nope_head_dim": self.qk_nope_head_dim,
             "qk_rope_head_dim": self.qk_rope_head_dim, "v_head_dim": self.v_head_dim}
        if self.mla_norm_eps:  # (absent: norm_eps's)
            k["mla_norm_eps"] = float(self.mla_norm_eps)
        return k

    @property
    def kv(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hd(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def attn_width(self) -> int:  # q's rows in c_attn, attn.c_proj's columns
        return self.n_head * self.hd

    @property
    def gpt2(self) -> bool:
        return (self.position, self.norm, self.bias, self.mlp, self.tied) == \
            ("learned", "layernorm", True, "gelu", True) and \
            self.mlp_hidden in (0, 4 * self.n_embd) and self.kv == self.n_head and \
            not self.qk_norm and not self.qkv_bias and not self.mlp_bias and \
            not self.head_dim and \
            not self.sliding_window and not self.moe_experts and not self.norm_bias and \
            not self.parallel_residual and self.embed_scale == 1.0 and not self.branch_norm \
            and not self.shared_norm and not self.head_bias \
            and not self.attn_scale and not self.attn_softcap and not self.logit_softcap \
            and self.residual_scale == 1.0 and self.logit_scale == 1.0 and not self.clip_qkv \
            and self.norm_weight and not self.kv_lora_rank

    @property
    def padded_vocab_size(self) -> int:  # DESIGN.md §3 at tp = 1
        return -(-self.vocab_size // 128) * 128

    def check(self, where: str) -> None:
        for k in ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size"):
            if getattr(self, k) <= 0:
                raise ConvertError(f"{where}: {k} = {getattr(self, k)}, must be positive")
            if getattr(self, k) > MODEL_BOUNDS[k]:  # (triad-train's bounds on model.*)
                raise ConvertError(f"{where}: {k} = {getattr(self, k)}, at most "
                                   f"{MODEL_BOUNDS[k]} in triad")
        # (a checkpoint with another base is refused by every reader: not written at all)
        if self.position == "rope" and not (math.isfinite(self.rope_theta) and self.rope_theta > 1):
            raise ConvertError(f"{where}: the rotary base (rope_theta) is {self.rope_theta}, "
                               f"not a finite number > 1")
        if self.n_embd % self.n_head and not self.head_dim and not self.kv_lora_rank:
            raise ConvertError(f"{where}: n_embd {self.n_embd} is not a multiple of n_head "
                               f"{self.n_head}")
        if self.kv < 0 or self.n_head % self.kv:
            raise ConvertError(f"{where}: n_kv_head {self.kv} does not divide n_head "
                               f"{self.n_head}")

    def attrs(self) -> dict:
        """The /model attributes of a checkpoint of this model (the architecture ones only when
        it is not GPT-2's, as a GPT-2 checkpoint from before them reads)."""
        a = {"n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd,
             "seq_len": self.seq_len, "vocab_size": self.vocab_size,
             "padded_vocab_size": self.padded_vocab_size}
        if self.norm_eps != 1e-5:  # model.norm_eps (absent: 1e-5)
            a["norm_eps"] = float(self.norm_eps)
        if self.head_dim:  # model.head_dim (absent: n_embd / n_head)
            a["head_dim"] = int(self.head_dim)
        if self.sliding_window:  # model.sliding_window (absent: none)
            a["sliding_window"] = int(self.sliding_window)
        if self.full_attention_every:  # model.full_attention_every (absent: 0)
            a["full_attention_every"] = int(self.full_attention_every)
        if self.full_attention_first:
            a["full_attention_first"] = 1
        if not self.gpt2:
            a.update(position=self.position, norm=self.norm, bias=int(self.bias), mlp=self.mlp,
                     mlp_hidden=self.mlp_hidden or 4 * self.n_embd,
                     tie_embeddings=int(self.tied), n_kv_head=self.kv, qk_norm=int(self.qk_norm),
                     qkv_bias=int(self.qkv_bias))
            if self.mlp_bias:  # model.mlp_bias (absent: 0)
                a["mlp_bias"] = 1
            if self.norm_bias:  # model.norm_bias (absent: 0)
                a["norm_bias"] = 1
            if not self.norm_weight:  # model.norm_weight (absent: 1)
                a["norm_weight"] = 0
            if self.qk_norm_full:  # model.qk_norm_full (absent: 0)
                a["qk_norm_full"] = 1
            if not self.pre_norm:  # model.pre_norm (absent: 1)
                a["pre_norm"] = 0
            if self.embed_scale != 1.0:  # model.embed_scale (absent: 1)
                a["embed_scale"] = float(self.embed_scale)
            if self.parallel_residual:  # model.parallel_residual (absent: 0)
                a["parallel_residual"] = 1
            if self.branch_norm:  # model.branch_norm (absent: 0)
                a["branch_norm"] = 1
            if self.shared_norm:  # model.shared_norm (absent: 0)
                a["shared_norm"] = 1
            if self.head_bias:  # model.head_bias (absent: 0)
                a["head_bias"] = 1
            for k in ("attn_scale", "attn_softcap", "logit_softcap", "clip_qkv"):  # (absent: 0)
                if getattr(self, k):
                    a[k] = float(getattr(self, k))
            for k in ("residual_scale", "logit_scale"):  # (absent: 1)
                if getattr(self, k) != 1.0:
                    a[k] = float(getattr(self, k))
            if self.rotary_dim:  # model.rotary_dim (absent: every value rotates)
                a["rotary_dim"] = int(self.rotary_dim)
            if self.nope_every:  # model.nope_every (absent: every layer rotates)
                a["nope_every"] = int(self.nope_every)
            if self.position == "rope":
                a["rope_theta"] = float(self.rope_theta)
                if self.rope_local_theta:
                    a["rope_local_theta"] = float(self.rope_local_theta)
                if self.rope_linear:
                    a["rope_scaling"] = "linear"
                    a["rope_scaling_factor"] = float(self.rope_linear)
            if self.rope_scaling is not None:
                a["rope_scaling"] = "llama3"
                a.update(zip(ROPE_SCALING_ATTRS, self.rope_scaling))
            if self.yarn is not None:
                a["rope_scaling"] = "yarn"
                a.update(zip(YARN_ATTRS, self.yarn))
                if self.yarn_mscale != (1.0, 0.0):
                    a.update(zip(YARN_MSCALE_ATTRS, map(float, self.yarn_mscale)))
            if self.longrope is not None:
                a["rope_scaling"] = "longrope"
                a.update(zip(LONGROPE_ATTRS, self.longrope[:2]))
                a["rope_short_factor"] = np.array(self.longrope[2], dtype="<f8")
                a["rope_long_factor"] = np.array(self.longrope[3], dtype="<f8")
            a.update(self.moe_keys())
            a.update(self.mla_keys())
            a.update(self.gpt_oss_keys())
            if self.mtp_layers:  # model.mtp_depth (absent: 0)
                a["mtp_depth"] = int(self.mtp_layers)
        return a

    def config_lines(self) -> str:
        """The [model] keys of triad-train's config for this model."""
        keys = {"n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd,
                "seq_len": self.seq_len, "vocab_size": self.vocab_size}
        if self.norm_eps != 1e-5:
            keys["norm_eps"] = repr(float(self.norm_eps))
        if self.head_dim:
            keys["head_dim"] = self.head_dim
        if self.sliding_window:
            keys["sliding_window"] = self.sliding_window
        if self.full_attention_every:
            keys["full_attention_every"] = self.full_attention_every
        if self.full_attention_first:
            keys["full_attention_first"] = "true"
        if not self.gpt2:
            keys.update(position=self.position, norm=self.norm,
                        bias="true" if self.bias else "false", mlp=self.mlp,
                        mlp_hidden=self.mlp_hidden, tie_embeddings="true" if self.tied else "false",
                        n_kv_head=self.kv)
            if self.position == "rope":
                keys["rope_theta"] = self.rope_theta
                if self.rope_local_theta:
                    keys["rope_local_theta"] = repr(float(self.rope_local_theta))
                if self.rope_linear:
                    keys["rope_scaling"] = "linear"
                    keys["rope_scaling_factor"] = repr(float(self.rope_linear))
            if self.rope_scaling is not None:
                keys["rope_scaling"] = "llama3"
                keys.update(zip(ROPE_SCALING_ATTRS, self.rope_scaling))
            if self.yarn is not None:
                keys["rope_scaling"] = "yarn"
                keys.update(zip(YARN_ATTRS, self.yarn))
                if self.yarn_mscale != (1.0, 0.0):
                    keys.update(zip(YARN_MSCALE_ATTRS, (repr(float(x)) for x in self.yarn_mscale)))
            if self.longrope is not None:
                keys["rope_scaling"] = "longrope"
                keys["rope_scaling_factor"] = repr(float(self.longrope[0]))
                keys["rope_original_positions"] = int(self.longrope[1])
                keys["rope_short_factor"] = ", ".join(repr(float(x)) for x in self.longrope[2])
                keys["rope_long_factor"] = ", ".join(repr(float(x)) for x in self.longrope[3])
            if self.qk_norm:
                keys["qk_norm"] = "true"
            if self.qk_norm_full:
                keys["qk_norm_full"] = "true"
            if not self.pre_norm:
                keys["pre_norm"] = "false"
            if self.qkv_bias:
                keys["qkv_bias"] = "true"
            if self.mlp_bias:
                keys["mlp_bias"] = "true"
            if self.norm_bias:
                keys["norm_bias"] = "true"
            if not self.norm_weight:
                keys["norm_weight"] = "false"
            if self.embed_scale != 1.0:
                keys["embed_scale"] = repr(float(self.embed_scale))
            if self.parallel_residual:
                keys["parallel_residual"] = "true"
            if self.branch_norm:
                keys["branch_norm"] = "true"
            if self.shared_norm:
                keys["shared_norm"] = "true"
            if self.head_bias:
                keys["head_bias"] = "true"
            for k in ("attn_scale", "attn_softcap", "logit_softcap", "clip_qkv"):
                if getattr(self, k):
                    keys[k] = repr(float(getattr(self, k)))
            for k in ("residual_scale", "logit_scale"):
                if getattr(self, k) != 1.0:
                    keys[k] = repr(float(getattr(self, k)))
            if self.rotary_dim:
                keys["rotary_dim"] = self.rotary_dim
            if self.nope_every:
                keys["nope_every"] = self.nope_every
            for k, v in {**self.moe_keys(), **self.gpt_oss_keys()}.items():
                keys[k] = ("true" if v else "false") if k in BOOL_MOE_KEYS else \
                    repr(v) if isinstance(v, float) else v
            keys.update(self.mla_keys())
            if self.mtp_layers:
                keys["mtp_depth"] = self.mtp_layers
        return "".join(f"{k} = {v}\n" for k, v in keys.items())


def attr_text(v) -> str:
    """A string /model attribute's text (h5py reads it as bytes or str)."""
    return v.decode() if isinstance(v, bytes) else str(v)


def unheld_attributes(a: dict, held: set, inert: dict) -> list[str]:
    """"key = value" of each /model attribute of `a` an export format has no place for: not in
    `held`, and not at its `inert` value, the one that computes nothing extra (text compared as
    text, numbers as floats)."""
    def inert_value(k, v):
        if k not in inert:
            return False
        w = inert[k]
        return attr_text(v) == w if isinstance(w, str) else float(v) == float(w)

    # (mtp_depth: every export leaves the multi-token prediction modules out, saying so:
    # open_triad)
    return [f"{k} = {attr_text(v)}" for k, v in a.items()
            if k not in held and k != "mtp_depth" and not inert_value(k, v)]


def checkpoint_yarn(path, a: dict, fmt: str) -> tuple | None:
    """A checkpoint's YaRN (its /model attributes `a`) as Dims.yarn, for an export format whose
    max_position_embeddings is the factor times the original positions (fmt: the format's name,
    for the message), refused where that is no whole number; None without YaRN."""
    if attr_text(a.get("rope_scaling", "none")) != "yarn":
        return None
    yarn = tuple(float(a[k]) for k in ("rope_scaling_factor", "rope_yarn_beta_fast",
                                       "rope_yarn_beta_slow")) + (
        int(a["rope_original_positions"]),)
    if yarn[0] * yarn[3] != int(yarn[0] * yarn[3]):
        raise ConvertError(f"{path}: YaRN's factor {yarn[0]} times its original {yarn[3]} "
                           f"positions is not a whole number of positions ({fmt}'s "
                           f"max_position_embeddings)")
    return yarn


# The mixture of experts' keys that are booleans in triad-train's config.
BOOL_MOE_KEYS = ("moe_normalize", "moe_shared_gate", "moe_bias", "attn_sinks",
                 "rope_yarn_truncate")


# A model as a source of tensors: triad names -> fp32 arrays in triad's layout (wte with
# exactly vocab_size rows), produced one at a time so that big models never sit in memory whole.
Tensors = Callable[[], Iterator[Tuple[str, np.ndarray]]]


# The tensors with a row per vocabulary entry (padding rows from vocab_size on; an untied head's
# lm_head beside wte).
VOCAB_TENSORS = ("wte/weight", "lm_head/weight", "lm_head/bias")

# Each layer's tensors (DESIGN.md §3), in checkpoint order and in llm.c's.
LAYER_TENSORS = ("ln_1/weight", "ln_1/bias", "attn/c_attn/weight", "attn/c_attn/bias",
                 "attn/c_proj/weight", "attn/c_proj/bias", "ln_2/weight", "ln_2/bias",
                 "mlp/c_fc/weight", "mlp/c_fc/bias", "mlp/c_proj/weight", "mlp/c_proj/bias")


def triad_names(n_layer: int) -> list[str]:
    """DESIGN.md §3's parameter names in checkpoint order."""
    names = ["wte/weight", "wpe/weight"]
    for i in range(n_layer):
        names += [f"h/{i}/{n}" for n in LAYER_TENSORS]
    return names + ["ln_f/weight", "ln_f/bias"]


def full_attention_period(full: list[bool]) -> tuple[int, bool] | None:
    """A file's list of which layers attend to the whole context as (model.full_attention_every,
    model.full_attention_first), the inverse of Dims.windowed: (0, False) where none does; the
    shortest period that repeats the list with the full layer last (else first) in each group;
    None where no period does."""
    if not any(full):
        return 0, False
    for every in range(1, len(full) + 1):
        for first in (False, True):
            shift = 0 if first else 1
            if all(f == ((i + shift) % every == 0) for i, f in enumerate(full)):
                return every, first and every > 1
    return None


def shapes(d: Dims) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape as the converters exchange it: wte with vocab_size rows."""
    s = expected_shapes(d.attrs())
    s["wte/weight"] = (d.vocab_size, d.n_embd)
    return {name: s[name] for name in triad_names(d.n_layer)}  # in checkpoint order


def hf_shapes(d: Dims) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape of d's model in checkpoint order (inspect_checkpoint), the
    vocabulary's tensors at vocab_size rows, as the Hugging Face formats hold them."""
    want = expected_shapes(d.attrs())
    for t in VOCAB_TENSORS:
        if t in want:
            want[t] = (d.vocab_size, *want[t][1:])
    return want
