"""Weights and tokenizers in and out of triad: Hugging Face transformers models (config.json +
safetensors; GPT-2, Llama, Mistral, Qwen2, Qwen3, Mixtral, Qwen2-MoE, Qwen3-MoE, Nemotron,
StableLM, Gemma, Gemma 2, Granite, GraniteMoE, Cohere, Phi, GPT-J, GPT-NeoX, Falcon, OLMo,
OLMo-2, OLMoE, GLM, DBRX, OPT, GPT-BigCode, StarCoder2) and llm.c model files (gpt2_124M.bin
and the like) to a triad checkpoint, a triad checkpoint to either,
and Hugging Face or Meta tokenizers to a triad tokenizer description (hf_tokenizer.py).

    triad-convert import gpt2/ gpt2.h5                    # HF model directory
    triad-convert import gpt2_124M.bin gpt2.h5            # llm.c model file (fp32 or bf16)
    triad-convert import gpt2/ gpt2-t256.h5 --seq-len 256 # keep the first 256 positions
    triad-convert export runs/quick hf-out/ --to hf       # run dir, ckpt dir or checkpoint file
    triad-convert export runs/quick model.bin --to llmc --dtype bf16
    triad-convert tokenizer llama3-hf/ tok/                # tokenizer.json -> tokenizer.triad
    triad-convert tokenizer --meta-llama3 tokenizer.model tok/

An imported checkpoint holds the weights only (step 0, no optimizer state): start a run from
it with `triad-train --init-from FILE` (fine-tuning) or sample from it with `triad-generate
--checkpoint FILE`. Its config must match the model's n_layer, n_head, n_embd, vocab_size
and seq_len (`--seq-len` crops the position table for a shorter context).

What the formats hold and how they map (docs/formats.md, "Weights from other programs"):
- triad (DESIGN.md §3): linear weights [out, in]; c_attn rows q | k | v, heads in order;
  wte padded to a multiple of 128 rows (zeros); tied output head.
- HF GPT-2: the same tensors with `Conv1D` weights stored [in, out] (transposed here), names
  `[transformer.]h.{i}.attn.c_attn.weight` etc., the causal-mask buffers `attn.bias` /
  `attn.masked_bias` (ignored), `lm_head.weight` (absent or equal to wte: tied). The config
  must describe what triad computes: tanh GELU (`gelu_new`), LayerNorm eps 1e-5, MLP width
  4·C, attention scaled by 1/sqrt(head_dim), tied embeddings; anything else is refused.
- HF Llama: q_proj, k_proj, v_proj stacked into c_attn (rows), gate_proj and up_proj into c_fc.
  With grouped-query attention HF's query head kv·g + j (g = heads / key-value heads) uses
  key/value head kv, and so does triad's head j·n_kv_head + kv: the query heads (q_proj's
  rows, o_proj's columns) are reordered, both ways (llama_query_order).
- HF Mixtral: Llama's blocks with block_sparse_moe MLPs: expert e's w1 and w3 stacked into
  experts/c_fc[e], w2 as experts/c_proj[e], gate as router (model.moe_experts, moe_top_k).
  HF Qwen2-MoE: Qwen2's blocks with mlp.experts.{e} (gate_proj, up_proj, down_proj) likewise,
  mlp.gate as router, mlp.shared_expert as shared/c_fc and shared/c_proj, mlp.shared_expert_gate
  as shared/gate (model.moe_shared_hidden, moe_shared_gate). HF Qwen3-MoE: Qwen3's blocks with
  Qwen2-MoE's experts and router, no shared expert.
- HF Nemotron: Llama's tensors with LayerNorms (weight and bias; HF stores each weight as w - 1,
  its LayerNorm1P scaling by 1 + w, triad's as w itself), up_proj and down_proj around the
  squared ReLU (model.mlp = relu2), the first partial_rotary_factor of each head rotating
  (model.rotary_dim), no linear biases (model.bias = false, model.norm_bias = true).
- HF StableLM: the same LayerNorms (weights as they are) and partial rotary with Llama's SwiGLU
  and, with use_qkv_bias, q, k and v biases (model.qkv_bias).
- HF Gemma: Llama's tensors with GeGLU (model.mlp = geglu: gelu(gate_proj)·up_proj), RMSNorm
  weights stored as w - 1 (it scales by 1 + w), the embedding's output times sqrt(hidden_size)
  (model.embed_scale), heads head_dim wide (model.head_dim).
- HF Gemma 2: Gemma's with a norm on each branch's output (model.branch_norm: the sandwich's
  post_attention_layernorm and post_feedforward_layernorm; pre_feedforward_layernorm is ln_2),
  scores scaled by query_pre_attn_scalar^-0.5 (model.attn_scale) and soft-capped
  (attn_logit_softcapping: model.attn_softcap), soft-capped logits (final_logit_softcapping:
  model.logit_softcap), and a sliding window in every other layer, the first included
  (model.sliding_window, model.full_attention_every = 2).
- HF Granite (IBM's Granite 3): Llama's tensors and blocks with multipliers: embedding_multiplier
  (model.embed_scale), attention_multiplier (the scores' scale, model.attn_scale),
  residual_multiplier (each branch's output before its residual add, model.residual_scale) and
  logits_scaling (the logits divided by it: model.logit_scale = 1 / it). GraniteMoE's: Granite's
  with Mixtral's routing, each layer's experts fused: input_linear [E, 2H, C] (gate | up),
  output_linear [E, C, H], router.layer.
- HF Cohere (Command-R, Aya): parallel attention and MLP on one LayerNorm's output without biases
  (model.parallel_residual, model.shared_norm), SwiGLU, no linear biases, the logits times
  logit_scale (model.logit_scale), and rope on interleaved pairs (2i, 2i + 1) of each head, which
  q's and k's rows are reordered into triad's pairs (i, i + hd/2) for (the scores are the same).
- HF Phi (Phi-1, Phi-1.5, Phi-2): parallel attention and MLP on one LayerNorm with biases
  (model.parallel_residual, model.shared_norm), biases everywhere, GELU (gelu_new: tanh; or
  exact), rope on partial_rotary_factor of each head (model.rotary_dim), an untied head with a
  bias on the logits (model.head_bias).
- HF GPT-NeoX (Pythia): GPT-2's tensors under other names, q, k and v interleaved by head in
  query_key_value ([heads, 3, head width] rows, reordered into c_attn's q | k | v), rope on
  rotary_pct of each head (model.rotary_dim), parallel attention and MLP
  (use_parallel_residual: model.parallel_residual), GELU exact ("gelu": model.mlp = gelu_exact)
  or tanh, an untied embed_out.
- HF StarCoder2: GPT-2's sequential blocks with rope (Llama's q, k, v and o projections, with
  biases), LayerNorms with biases, a GELU-tanh MLP c_fc, c_proj with biases, grouped-query
  attention and Mistral's window (model.sliding_window).
- HF GPT-J: parallel attention and MLP on one LayerNorm with biases (model.parallel_residual,
  model.shared_norm), bias-free q, k, v and output projections beside an MLP with biases
  (model.bias = false, model.mlp_bias, model.norm_bias), GELU's tanh approximation, rope on the
  first rotary_dim values of each head (model.rotary_dim) in interleaved pairs (2i, 2i + 1),
  reordered as Cohere's, an untied head with a bias (model.head_bias).
- HF Falcon (with rope): parallel attention and MLP, LayerNorms with biases beside bias-free
  linear layers (model.norm_bias), GELU exact; Falcon-40B's layout (new_decoder_architecture:
  ln_attn and ln_mlp, query_key_value grouped by key/value head, [groups, q per group + 2, head
  width]) or Falcon-7B's (multi-query attention, q | k | v); one input_layernorm for both
  branches (Falcon-7B's, or num_ln_in_parallel_attn = 1: model.shared_norm) or ln_attn and ln_mlp.
  Written in Falcon-40B's layout.
- HF OLMo: Llama's tensors and math with LayerNorms that learn no weight or bias
  (model.norm = layernorm, model.norm_weight = false: triad's norms ones, frozen), OLMo-1.7's
  clamp of q, k and v as model.clip_qkv.
- HF OLMo-2: Llama's tensor names without input_layernorm, its post_attention_layernorm and
  post_feedforward_layernorm on the branches' outputs (model.pre_norm = false,
  model.branch_norm), q_norm and k_norm over the whole projections (model.qk_norm_full; q_norm's
  values reordered by head as q's rows). HF OLMoE: those QK-norms in Llama's blocks with
  Qwen2-MoE's expert and router names.
- llm.c: a header of 256 int32 (magic 20240326, version 3 = fp32 or 5 = bf16, max_seq_len,
  vocab_size, n_layer, n_head, n_embd, padded_vocab_size), then wte, wpe and each per-layer
  tensor for all layers in turn ([out, in] like triad), then ln_f.

Everything is checked: a missing, extra or misshapen tensor, a truncated file, a foreign
format or an output that already exists ends the command with one line naming the file and
the problem (exit status 1). Outputs are written under a temporary name and renamed when
complete, so a failed conversion leaves nothing behind and never replaces a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, Tuple

import numpy as np

from ._common import AnalysisError, file_kind, prog_name, run_main, token_arg
from . import hf_tokenizer
from .hf_tokenizer import tokenizer_files
from .inspect_checkpoint import expected_shapes, inspect, resolve_checkpoint_path

LLMC_MAGIC = 20240326
LLMC_VERSIONS = {3: "fp32", 5: "bf16"}  # llm.c's padded-vocabulary model files
LLMC_HEADER_INTS = 256
# HF activation names that are GELU's tanh approximation (triad's, DESIGN.md §3).
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


class ConvertError(AnalysisError):
    pass


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
    qkv_bias: bool = False  # c_attn's bias without the others (model.qkv_bias: Qwen2)
    mlp_bias: bool = False  # c_fc's and c_proj's without the attention's (model.mlp_bias: GPT-J)
    norm_eps: float = 1e-5  # the normalizations' epsilon (model.norm_eps)
    head_dim: int = 0  # each head's width (model.head_dim); 0: n_embd / n_head
    sliding_window: int = 0  # keys each query sees at most (model.sliding_window); 0: all
    full_attention_every: int = 0  # with a window, every N-th layer sees all (model.full_...)
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

    def moe_layer(self, i: int) -> bool:
        """Whether layer i has the experts (GptShape::moe_layer)."""
        return bool(self.moe_experts) and i >= self.moe_first_dense and \
            (i - self.moe_first_dense + 1) % self.moe_every == 0

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
            and self.norm_weight

    @property
    def padded_vocab_size(self) -> int:  # DESIGN.md §3 at tp = 1
        return -(-self.vocab_size // 128) * 128

    def check(self, where: str) -> None:
        for k in ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size"):
            if getattr(self, k) <= 0:
                raise ConvertError(f"{where}: {k} = {getattr(self, k)}, must be positive")
        if self.n_embd % self.n_head and not self.head_dim:
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
            if self.position == "rope":
                a["rope_theta"] = float(self.rope_theta)
            if self.rope_scaling is not None:
                a["rope_scaling"] = "llama3"
                a.update(zip(ROPE_SCALING_ATTRS, self.rope_scaling))
            if self.yarn is not None:
                a["rope_scaling"] = "yarn"
                a.update(zip(YARN_ATTRS, self.yarn))
            if self.longrope is not None:
                a["rope_scaling"] = "longrope"
                a.update(zip(LONGROPE_ATTRS, self.longrope[:2]))
                a["rope_short_factor"] = np.array(self.longrope[2], dtype="<f8")
                a["rope_long_factor"] = np.array(self.longrope[3], dtype="<f8")
            a.update(self.moe_keys())
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
        if not self.gpt2:
            keys.update(position=self.position, norm=self.norm,
                        bias="true" if self.bias else "false", mlp=self.mlp,
                        mlp_hidden=self.mlp_hidden, tie_embeddings="true" if self.tied else "false",
                        n_kv_head=self.kv)
            if self.position == "rope":
                keys["rope_theta"] = self.rope_theta
            if self.rope_scaling is not None:
                keys["rope_scaling"] = "llama3"
                keys.update(zip(ROPE_SCALING_ATTRS, self.rope_scaling))
            if self.yarn is not None:
                keys["rope_scaling"] = "yarn"
                keys.update(zip(YARN_ATTRS, self.yarn))
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
            for k, v in self.moe_keys().items():
                keys[k] = ("true" if v else "false") if k in BOOL_MOE_KEYS else v
        return "".join(f"{k} = {v}\n" for k, v in keys.items())


# The mixture of experts' keys that are booleans in triad-train's config.
BOOL_MOE_KEYS = ("moe_normalize", "moe_shared_gate")


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


def shapes(d: Dims) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape as the converters exchange it: wte with vocab_size rows."""
    s = expected_shapes(d.attrs())
    s["wte/weight"] = (d.vocab_size, d.n_embd)
    return {name: s[name] for name in triad_names(d.n_layer)}  # in checkpoint order


# ---------------------------------------------------------------- bf16 and safetensors

def bf16_to_fp32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype("<u4") << 16).view("<f4")


def fp32_to_bf16(a: np.ndarray) -> np.ndarray:
    """Round to nearest even (as PyTorch's .to(bfloat16)); NaN stays NaN."""
    u = np.ascontiguousarray(a, dtype="<f4").view("<u4")
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype("<u2")
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


# dtype -> (numpy type, bytes) of the floating-point tensors read; the others (a causal-mask
# buffer of an older transformers, stored BOOL or U8) are only skipped, so only their sizes.
SAFETENSORS_DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "F64": ("<f8", 8)}
SAFETENSORS_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
                     "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8,
                     "F64": 8}


class SafetensorsFile:
    """One .safetensors file: an 8-byte little-endian header length, a JSON header naming each
    tensor's dtype, shape and byte range, then the data. Tensors are read on demand."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ConvertError(f"{path}: too short for a safetensors file ({size} bytes)")
            n = int.from_bytes(raw, "little")
            if n <= 0 or n > min(size - 8, 1 << 28):
                raise ConvertError(f"{path}: not a safetensors file (header length {n} in a "
                                   f"file of {size} bytes)")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ConvertError(f"{path}: not a safetensors file (header is not JSON: {e})")
        if not isinstance(header, dict):
            raise ConvertError(f"{path}: not a safetensors file (header is not a JSON object)")
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.entries = {}
        for name, e in header.items():
            try:
                dtype, shape = e["dtype"], tuple(int(x) for x in e["shape"])
                b, end = (int(x) for x in e["data_offsets"])
                if not isinstance(dtype, str) or dtype not in SAFETENSORS_SIZES:
                    raise ValueError(f"dtype {dtype!r}")
            except (KeyError, TypeError, ValueError, AttributeError) as why:
                raise ConvertError(f"{path}: malformed header entry for tensor {name} ({why})")
            want = math.prod(shape) * SAFETENSORS_SIZES[dtype]
            if end - b != want or b < 0 or self.base + end > size:
                raise ConvertError(f"{path}: tensor {name} ({dtype} {list(shape)}) has byte "
                                   f"range [{b}, {end}) but needs {want} bytes within the "
                                   f"{size - self.base} bytes of data (truncated file?)")
            self.entries[name] = (dtype, shape, b)

    def read(self, name: str) -> np.ndarray:
        """A floating-point tensor widened (or, F64, rounded) to fp32."""
        dtype, shape, b = self.entries[name]
        if dtype not in SAFETENSORS_DTYPES:
            raise ConvertError(f"{self.path}: tensor {name} has dtype {dtype}; weights are "
                               f"floating point ({', '.join(SAFETENSORS_DTYPES)})")
        np_dtype, _ = SAFETENSORS_DTYPES[dtype]
        a = np.fromfile(self.path, dtype=np_dtype, count=math.prod(shape),
                        offset=self.base + b).reshape(shape)
        return bf16_to_fp32(a) if dtype == "BF16" else a.astype("<f4")


def write_safetensors(path: Path, tensors: Iterator[Tuple[str, np.ndarray]],
                      specs: dict[str, tuple[int, ...]]) -> None:
    """fp32 tensors (name -> shape in `specs`, data from `tensors` in that order) with the
    metadata transformers asks for (format = pt)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in specs.items():
        n = math.prod(shape) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for (name, a), want in zip(tensors, specs):
            assert name == want and a.shape == specs[name], (name, a.shape)
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())


# ---------------------------------------------------------------- Hugging Face GPT-2

def hf_name(name: str, d: Dims | None = None) -> Tuple[str, bool]:
    """triad name -> (HF name without the `transformer.` prefix, stored transposed: GPT-2's
    Conv1D matrices, not GPT-BigCode's nn.Linear ones, Dims.bigcode)."""
    parts = name.split("/")
    return ".".join(parts), name.endswith("weight") and parts[-2] in ("c_attn", "c_proj", "c_fc") \
        and not (d is not None and d.bigcode)


def refuse_or_check_positions(where: str, refusals: list[str], seq_len: int | None, n_pos: int,
                              key: str) -> None:
    """Raises for an HF config triad does not compute (the refusals), or a --seq-len beyond its
    n_pos positions (config key `key`)."""
    if refusals:
        raise ConvertError(f"{where}: a model triad does not compute: " + "; ".join(refusals))
    if seq_len is not None and seq_len > n_pos:
        raise ConvertError(f"--seq-len {seq_len} exceeds the model's {n_pos} positions "
                           f"({key} in {where})")


def hf_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    def get(*keys, default=None):
        for k in keys:
            if cfg.get(k) is not None:
                return cfg[k]
        return default

    kind = cfg.get("model_type", "gpt2")
    if kind in ("llama", "mistral", "phi3", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe",
                "granite", "granitemoe", "olmo", "olmoe", "olmo2"):
        return llama_config_dims(cfg, where, seq_len)
    if kind in ("nemotron", "stablelm"):
        return layernorm_config_dims(cfg, where, seq_len)
    if kind in ("gemma", "gemma2"):
        return gemma_config_dims(cfg, where, seq_len)
    if kind == "gpt_neox":
        return neox_config_dims(cfg, where, seq_len)
    if kind == "starcoder2":
        return starcoder2_config_dims(cfg, where, seq_len)
    if kind == "cohere":
        return cohere_config_dims(cfg, where, seq_len)
    if kind == "phi":
        return phi_config_dims(cfg, where, seq_len)
    if kind == "glm":
        return glm_config_dims(cfg, where, seq_len)
    if kind == "dbrx":
        return dbrx_config_dims(cfg, where, seq_len)
    if kind == "opt":
        return opt_config_dims(cfg, where, seq_len)
    if kind == "falcon":
        return falcon_config_dims(cfg, where, seq_len)
    if kind == "gptj":
        return gptj_config_dims(cfg, where, seq_len)
    if kind in UNBUILT_MOE:
        raise ConvertError(f"{where}: model_type is {kind!r}, a mixture of experts triad does "
                           f"not compute: {UNBUILT_MOE[kind]} (triad imports Mixtral's, "
                           f"'mixtral', Qwen2-MoE's, 'qwen2_moe', Qwen3-MoE's, 'qwen3_moe', and "
                           f"OLMoE's, 'olmoe')")
    bigcode = kind == "gpt_bigcode"
    if kind not in ("gpt2", "gpt_bigcode"):
        raise ConvertError(f"{where}: model_type is {kind!r}; triad imports GPT-2 ('gpt2'), "
                           f"GPT-BigCode ('gpt_bigcode'), "
                           f"Llama ('llama'), Mistral ('mistral'), Mixtral ('mixtral'), Phi-3 "
                           f"('phi3'), Qwen2 ('qwen2'), Qwen2-MoE ('qwen2_moe'), Qwen3 ('qwen3'), "
                           f"Qwen3-MoE ('qwen3_moe'), OLMo ('olmo', 'olmo2'), OLMoE ('olmoe'), "
                           f"GLM ('glm'), DBRX ('dbrx'), OPT ('opt'), "
                           f"Nemotron ('nemotron'), StableLM "
                           f"('stablelm'), Gemma ('gemma', 'gemma2'), Granite ('granite', "
                           f"'granitemoe'), Cohere ('cohere'), Phi ('phi'), "
                           f"GPT-NeoX ('gpt_neox'), GPT-J ('gptj') and Falcon "
                           f"('falcon') models")
    try:
        n_layer, n_head, n_embd = int(get("n_layer")), int(get("n_head")), int(get("n_embd"))
        n_pos, vocab = int(get("n_positions", "n_ctx")), int(get("vocab_size"))
    except (TypeError, ValueError):
        raise ConvertError(f"{where}: needs integer n_layer, n_head, n_embd, n_positions and "
                           f"vocab_size")
    refusals = []
    try:
        eps = float(get("layer_norm_epsilon", default=1e-5))
        n_inner = get("n_inner")
        n_inner = None if n_inner is None else int(n_inner)
    except (TypeError, ValueError):
        raise ConvertError(f"{where}: layer_norm_epsilon and n_inner must be numbers")
    act = get("activation_function", default="gelu_pytorch_tanh" if bigcode else "gelu_new")
    # multi_query false: a key/value head per query head (c_attn's rows regrouped on import).
    multi_query = bigcode and bool(cfg.get("multi_query", True))
    if act not in TANH_GELU:
        refusals.append(f"activation_function {act!r} (triad's MLP uses GELU's tanh "
                        f"approximation: {', '.join(TANH_GELU)})")
    if not (0 < eps <= 0.1):
        refusals.append(f"layer_norm_epsilon {eps} (triad's model.norm_eps is in (0, 0.1])")
    if n_inner is not None and n_inner != 4 * n_embd:
        refusals.append(f"n_inner {n_inner} (triad's MLP is 4·n_embd = {4 * n_embd} wide)")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("tie_word_embeddings", True), ("add_cross_attention", False)):
        if key in cfg and bool(cfg[key]) != want:
            refusals.append(f"{key} = {cfg[key]} (triad's model has {want})")
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "n_positions")
    d = Dims(n_layer, n_head, n_embd, seq_len or n_pos, vocab, norm_eps=eps,
             n_kv_head=1 if multi_query else 0, bigcode=bigcode)
    d.check(where)
    return d


# Hugging Face's mixtures of experts whose blocks triad does not build, and why.
UNBUILT_MOE = {
    "jetmoe": "its attention is a mixture of experts too",
    "phimoe": "its router is sparsemixer, and its norms are LayerNorms with biases",
}


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
    Phi-3's (Phi3ForCausalLM, and Phi-4's) are Mistral's with q, k and v stored as one qkv_proj
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
    if cfg.get("rope_scaling"):
        r = cfg["rope_scaling"]
        kind = r.get("rope_type", r.get("type")) if isinstance(r, dict) else None
        try:
            # (Phi-3's older files say "su", or "yarn", for the same: transformers' Phi-3 reads
            # both as longrope.)
            if kind in ("longrope", "su", "yarn") and cfg.get("model_type") == "phi3":
                longrope = longrope_scaling(cfg, r, n_pos, head_dim_of(cfg, n_embd, n_head))
                raise StopIteration
            if kind == "yarn":
                yarn = yarn_scaling(r, n_pos)
                n_pos = int(n_pos * yarn[0])  # the context YaRN stretches the model to
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
                            f"and 'yarn' with factor >= 1, beta_fast > beta_slow > 0, and "
                            f"Phi-3's 'longrope'"
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
        if not 1 <= experts <= 256:
            refusals.append(f"num_local_experts {experts} (triad's model.moe_experts is in "
                            f"[1, 256])")
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
    olmo2 = cfg.get("model_type") == "olmo2"
    if olmo2 and "rms_norm_eps" not in cfg:  # Olmo2Config's default
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
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "max_position_embeddings")
    d = Dims(n_layer, n_head, n_embd, seq_len or n_pos, vocab, position="rope", rope_theta=theta,
             norm="layernorm" if olmo else "rmsnorm", norm_weight=not olmo, clip_qkv=clip,
             bias=False,
             mlp="swiglu", mlp_hidden=hidden,
             tied=bool(cfg.get("tie_word_embeddings", False)), n_kv_head=kv, rope_scaling=scaling,
             yarn=yarn, longrope=longrope,
             qkv_bias=qwen2, norm_eps=eps, head_dim=head_dim, qk_norm=qwen3 or olmoe or olmo2,
             qk_norm_full=olmoe or olmo2, pre_norm=not olmo2, branch_norm=olmo2,
             sliding_window=sliding, moe_experts=experts, moe_top_k=top_k, fused=phi3, **moe,
             **granite)
    d.check(where)
    return d


def cohere_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face Cohere config (CohereForCausalLM: Command-R, Aya) as triad's model: rope
    (its interleaved pairs reordered on import), parallel attention and SwiGLU on one LayerNorm
    without biases (model.parallel_residual, model.shared_norm), no linear biases, grouped-query
    attention or not, the logits times logit_scale (model.logit_scale, fp32), tied or not;
    refused where triad computes something else (QK-norm, biases, rope scaling)."""
    c = LlamaLikeConfig(cfg, where, "layer_norm_eps", 1e-5)
    refusals = c.refusals
    if cfg.get("hidden_act", "silu") != "silu":
        refusals.append(f"hidden_act {cfg.get('hidden_act')!r} (Cohere's SwiGLU uses silu)")
    for key, why in (("use_qk_norm", "a LayerNorm of each q and k head"),
                     ("attention_bias", "biases on q, k, v and o"),
                     ("rope_scaling", "a rope scaling")):
        if cfg.get(key):
            refusals.append(f"{key} = {cfg[key]} ({why}, which triad's Cohere does not have)")
    if c.n_embd % max(c.n_head, 1) or (c.n_embd // max(c.n_head, 1)) % 2:
        refusals.append(f"hidden_size {c.n_embd} over {c.n_head} heads (rope needs an even head "
                        f"width)")
    try:
        scale = float(cfg.get("logit_scale", 1.0))
    except (TypeError, ValueError):
        raise ConvertError(f"{where}: logit_scale must be a number")
    if not (math.isfinite(scale) and 0 < scale <= 1e4):
        refusals.append(f"logit_scale {scale} (triad's model.logit_scale is in (0, 1e4])")
    refuse_or_check_positions(where, refusals, seq_len, c.n_pos, "max_position_embeddings")
    d = Dims(c.n_layer, c.n_head, c.n_embd, seq_len or c.n_pos, c.vocab, position="rope",
             rope_theta=c.theta, norm="layernorm", bias=False, mlp="swiglu", mlp_hidden=c.hidden,
             tied=bool(cfg.get("tie_word_embeddings", True)), n_kv_head=c.kv, norm_eps=c.eps,
             parallel_residual=True, shared_norm=True, logit_scale=float(np.float32(scale)))
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


def opt_sources(d: Dims) -> dict[str, list[str]]:
    """Each triad tensor of an OPT model and the HF tensors it is made of (c_attn's from q, k
    and v, stacked by rows; wpe from embed_positions past its 2 offset rows: opt_positions)."""
    m = "model.decoder."
    src = {"wte/weight": [m + "embed_tokens.weight"], "wpe/weight": [m + "embed_positions.weight"]}
    for i in range(d.n_layer):
        p, h = f"h/{i}/", f"{m}layers.{i}."
        for kind in ("weight", "bias"):
            src.update({
                p + f"ln_1/{kind}": [h + f"self_attn_layer_norm.{kind}"],
                p + f"attn/c_attn/{kind}": [h + f"self_attn.{x}_proj.{kind}" for x in "qkv"],
                p + f"attn/c_proj/{kind}": [h + f"self_attn.out_proj.{kind}"],
                p + f"ln_2/{kind}": [h + f"final_layer_norm.{kind}"],
                p + f"mlp/c_fc/{kind}": [h + f"fc1.{kind}"],
                p + f"mlp/c_proj/{kind}": [h + f"fc2.{kind}"],
            })
    src.update({"ln_f/weight": [m + "final_layer_norm.weight"],
                "ln_f/bias": [m + "final_layer_norm.bias"]})
    return src


def opt_positions(d: Dims, t: str, a: np.ndarray, to_hf: bool = False) -> np.ndarray:
    """OPT's embed_positions (position p at row p + 2) as triad's wpe, rows 2 .. 2 + seq_len,
    or (to_hf) wpe with 2 zero rows before it. Other tensors pass."""
    if not (d.opt and t == "wpe/weight"):
        return a
    if to_hf:
        return np.concatenate([np.zeros((2, a.shape[1]), dtype=a.dtype), a])
    return a[2:2 + d.seq_len]


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
    if not 1 <= experts <= 256:
        refusals.append(f"moe_num_experts {experts} (triad's model.moe_experts is in [1, 256])")
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


def dbrx_sources(d: Dims) -> dict[str, list[str]]:
    """Each triad tensor of a DBRX model and the HF tensors it is made of (the experts' by
    dbrx_expert_order)."""
    src = {"wte/weight": ["transformer.wte.weight"]}
    for i in range(d.n_layer):
        p, h = f"h/{i}/", f"transformer.blocks.{i}."
        a, m = h + "norm_attn_norm.", h + "ffn."
        src.update({
            p + "ln_1/weight": [a + "norm_1.weight"],
            p + "attn/c_attn/weight": [a + "attn.Wqkv.weight"],
            p + "attn/c_proj/weight": [a + "attn.out_proj.weight"],
            p + "ln_2/weight": [a + "norm_2.weight"],
            p + "mlp/experts/c_fc/weight": [m + "experts.mlp.w1", m + "experts.mlp.v1"],
            p + "mlp/experts/c_proj/weight": [m + "experts.mlp.w2"],
            p + "mlp/router/weight": [m + "router.layer.weight"],
        })
    src["ln_f/weight"] = ["transformer.norm_f.weight"]
    if not d.tied:
        src["lm_head/weight"] = ["lm_head.weight"]
    return src


def dbrx_expert_order(d: Dims, t: str, a: np.ndarray, to_hf: bool = False) -> np.ndarray:
    """An expert tensor from DBRX's layout to triad's, or (to_hf) back: c_fc [E, 2F, C] from
    w1 and v1 stacked [2·E·F, C] (each expert's gate rows then its up rows), c_proj [E, C, F] from
    w2 [E·F, C] (each expert's rows transposed). Other tensors pass."""
    if not d.dbrx or "/mlp/experts/" not in t:
        return a
    E, F, C = d.moe_experts, d.mlp_hidden, d.n_embd
    if t.endswith("c_fc/weight"):  # [2, E, F, C] <-> [E, 2, F, C]
        if to_hf:
            return np.ascontiguousarray(a.reshape(E, 2, F, C).transpose(1, 0, 2, 3)).reshape(
                2 * E * F, C)
        return np.ascontiguousarray(a.reshape(2, E, F, C).transpose(1, 0, 2, 3)).reshape(
            E, 2 * F, C)
    if to_hf:  # [E, C, F] -> [E·F, C]
        return np.ascontiguousarray(a.reshape(E, C, F).transpose(0, 2, 1)).reshape(E * F, C)
    return np.ascontiguousarray(a.reshape(E, F, C).transpose(0, 2, 1))


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


def phi_sources(d: Dims) -> dict[str, list[str]]:
    """Each triad tensor of a Phi model and the HF tensors it is made of (c_attn's from q, k and
    v, stacked by rows)."""
    src = {"wte/weight": ["model.embed_tokens.weight"]}
    for i in range(d.n_layer):
        p, h = f"h/{i}/", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            src.update({
                p + f"ln_1/{kind}": [h + f"input_layernorm.{kind}"],
                p + f"attn/c_attn/{kind}": [h + f"self_attn.{x}_proj.{kind}" for x in "qkv"],
                p + f"attn/c_proj/{kind}": [h + f"self_attn.dense.{kind}"],
                p + f"mlp/c_fc/{kind}": [h + f"mlp.fc1.{kind}"],
                p + f"mlp/c_proj/{kind}": [h + f"mlp.fc2.{kind}"],
            })
    src.update({"ln_f/weight": ["model.final_layernorm.weight"],
                "ln_f/bias": ["model.final_layernorm.bias"],
                "lm_head/weight": ["lm_head.weight"], "lm_head/bias": ["lm_head.bias"]})
    return src


def gptj_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face GPT-J config (GPTJForCausalLM: GPT-J-6B and its kin) as triad's model:
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
    if not (0 < eps <= 0.1):
        refusals.append(f"layer_norm_epsilon {eps} (triad's model.norm_eps is in (0, 0.1])")
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "n_positions")
    d = Dims(n_layer, n_head, n_embd, seq_len or n_pos, vocab, position="rope",
             rope_theta=10000.0, norm="layernorm", bias=False, mlp_bias=True, norm_bias=True,
             mlp=mlp, mlp_hidden=hidden, tied=False,
             norm_eps=eps, rotary_dim=0 if rot == hd else rot, parallel_residual=True,
             shared_norm=True, head_bias=True)
    d.check(where)
    return d


def gptj_sources(d: Dims) -> dict[str, list[str]]:
    """Each triad tensor of a GPT-J model and the HF tensors it is made of (c_attn's from q, k and
    v, stacked by rows)."""
    src = {"wte/weight": ["transformer.wte.weight"]}
    for i in range(d.n_layer):
        p, h = f"h/{i}/", f"transformer.h.{i}."
        src.update({p + "attn/c_attn/weight": [h + f"attn.{x}_proj.weight" for x in "qkv"],
                    p + "attn/c_proj/weight": [h + "attn.out_proj.weight"]})
        for kind in ("weight", "bias"):
            src.update({p + f"ln_1/{kind}": [h + f"ln_1.{kind}"],
                        p + f"mlp/c_fc/{kind}": [h + f"mlp.fc_in.{kind}"],
                        p + f"mlp/c_proj/{kind}": [h + f"mlp.fc_out.{kind}"]})
    src.update({"ln_f/weight": ["transformer.ln_f.weight"], "ln_f/bias": ["transformer.ln_f.bias"],
                "lm_head/weight": ["lm_head.weight"], "lm_head/bias": ["lm_head.bias"]})
    return src


def interleaved_rope_order(d: Dims, t: str, a: np.ndarray, to_hf: bool = False) -> np.ndarray:
    """c_attn's weight (and bias) with each q and k head's rotating rows (the first r =
    rotary_dim, or all hd) from Cohere's, GPT-J's and GLM's rope pairs (2i, 2i + 1) to triad's
    (i, i + r/2): triad's row i is HF's 2i, row r/2 + i HF's 2i + 1; or (to_hf) back. v's rows and
    the rows past r stay. Only for those blocks (Dims.cohere, Dims.gptj, Dims.glm)."""
    if not ((d.cohere or d.gptj or d.glm) and t.endswith(("attn/c_attn/weight",
                                                         "attn/c_attn/bias"))):
        return a
    hd, r = d.hd, d.rotary_dim or d.hd
    order = np.concatenate([np.arange(0, r, 2), np.arange(1, r, 2),  # triad row: HF order[row]
                            np.arange(r, hd)])
    if to_hf:
        order = np.argsort(order)
    qk = (d.n_head + d.kv) * hd  # q's and k's rows, head by head
    heads = a[:qk].reshape(d.n_head + d.kv, hd, -1)[:, order].reshape(qk, *a.shape[1:])
    return np.concatenate([heads, a[qk:]])


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


def falcon_sources(d: Dims) -> dict[str, list[str]]:
    """Each triad tensor of a Falcon model and the HF tensor it is (c_attn's rows reordered:
    falcon_qkv_order; one LayerNorm for both branches is ln_1, model.shared_norm)."""
    src = {"wte/weight": ["transformer.word_embeddings.weight"]}
    lns = (("ln_1", "input_layernorm"),) if d.shared_norm \
        else (("ln_1", "ln_attn"), ("ln_2", "ln_mlp"))
    linears = (("attn/c_attn", "self_attention.query_key_value"),
               ("attn/c_proj", "self_attention.dense"), ("mlp/c_fc", "mlp.dense_h_to_4h"),
               ("mlp/c_proj", "mlp.dense_4h_to_h"))
    for i in range(d.n_layer):
        h = f"transformer.h.{i}."
        for t, n in lns:
            for kind in ("weight", "bias"):
                src[f"h/{i}/{t}/{kind}"] = [h + f"{n}.{kind}"]
        for t, n in linears:
            for kind in ("weight", "bias") if d.bias else ("weight",):
                src[f"h/{i}/{t}/{kind}"] = [h + f"{n}.{kind}"]
    src.update({"ln_f/weight": ["transformer.ln_f.weight"], "ln_f/bias": ["transformer.ln_f.bias"]})
    if not d.tied:
        src["lm_head/weight"] = ["lm_head.weight"]
    return src


def falcon_qkv_order(d: Dims, t: str, a: np.ndarray, to_hf: bool = False) -> np.ndarray:
    """c_attn's weight or bias from Falcon-40B's query_key_value rows, grouped by key/value head
    ([groups, q per group + 2, head width]: the group's query heads, then its k and v), to
    q (in Hugging Face's head order, llama_query_order's input) | k | v, or (to_hf) back.
    Falcon-7B's multi-query rows are q | k | v already."""
    if d.falcon != "grouped" or not t.endswith(("attn/c_attn/weight", "attn/c_attn/bias")):
        return a
    g, per, hd, rest = d.kv, d.n_head // d.kv, d.hd, a.shape[1:]
    if not to_hf:
        x = a.reshape(g, per + 2, hd, *rest)
        return np.ascontiguousarray(np.concatenate(
            [x[:, :per].reshape(-1, *rest), x[:, per].reshape(-1, *rest),
             x[:, per + 1].reshape(-1, *rest)]))
    q = a[:d.n_head * hd].reshape(g, per, hd, *rest)
    k = a[d.n_head * hd:(d.n_head + g) * hd].reshape(g, 1, hd, *rest)
    v = a[(d.n_head + g) * hd:].reshape(g, 1, hd, *rest)
    return np.ascontiguousarray(np.concatenate([q, k, v], axis=1).reshape(a.shape))


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


def starcoder2_sources(d: Dims) -> dict[str, list[str]]:
    """Each triad tensor of a StarCoder2 model and the HF tensors it is made of (c_attn's rows
    and bias from q_proj, k_proj, v_proj)."""
    biases = ("weight", "bias") if d.bias else ("weight",)
    src = {"wte/weight": ["model.embed_tokens.weight"],
           "ln_f/weight": ["model.norm.weight"], "ln_f/bias": ["model.norm.bias"]}
    for i in range(d.n_layer):
        p, h = f"h/{i}/", f"model.layers.{i}."
        for t, hf in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            src.update({p + f"{t}/{k}": [h + f"{hf}.{k}"] for k in ("weight", "bias")})
        for k in biases:
            src.update({p + f"attn/c_attn/{k}": [h + f"self_attn.{x}_proj.{k}" for x in "qkv"],
                        p + f"attn/c_proj/{k}": [h + f"self_attn.o_proj.{k}"],
                        p + f"mlp/c_fc/{k}": [h + f"mlp.c_fc.{k}"],
                        p + f"mlp/c_proj/{k}": [h + f"mlp.c_proj.{k}"]})
    if not d.tied:
        src["lm_head/weight"] = ["lm_head.weight"]
    return src


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
    window covers the context."""
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
    if cfg.get("rope_scaling"):
        refusals.append(f"rope_scaling {cfg['rope_scaling']} (triad builds transformers' Gemma "
                        f"without scaling)")
    if not 2 <= hd <= 4096 or hd % 2:
        refusals.append(f"head_dim {hd} (triad's rope needs an even model.head_dim in [2, 4096])")
    gemma2 = cfg.get("model_type") == "gemma2"
    scale = attn_cap = logit_cap = 0.0
    window = 0
    if gemma2:
        try:
            scalar = float(cfg.get("query_pre_attn_scalar") or hd)
            attn_cap = float(cfg.get("attn_logit_softcapping") or 0.0)
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
        if window < 0:
            refusals.append(f"sliding_window {window}")
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "max_position_embeddings")
    context = seq_len or n_pos
    windowed = gemma2 and 0 < window < context  # a window the context can exceed
    d = Dims(n_layer, n_head, n_embd, context, vocab, position="rope", rope_theta=theta,
             norm="rmsnorm", bias=False, mlp="geglu", mlp_hidden=hidden,
             tied=bool(cfg.get("tie_word_embeddings", True)), n_kv_head=kv, norm_eps=eps,
             head_dim=0 if hd * n_head == n_embd else hd, norm_offset=True,
             embed_scale=float(np.float32(math.sqrt(n_embd))), branch_norm=gemma2,
             attn_scale=scale, attn_softcap=attn_cap, logit_softcap=logit_cap,
             sliding_window=window if windowed else 0,
             full_attention_every=2 if windowed else 0)
    d.check(where)
    return d


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
    if not 1 <= experts <= 256:
        refusals.append(f"num_experts {experts} (triad's model.moe_experts is in [1, 256])")
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


def yarn_scaling(r: dict, n_pos: int) -> tuple:
    """(factor, beta_fast, beta_slow, original positions) of a Hugging Face YaRN rope_scaling.
    transformers' versions differ on which positions set YaRN's ramp (max_position_embeddings,
    or original_max_position_embeddings when given), so a config where the two differ is
    refused; so are the mscale variants."""
    for k in ("mscale", "mscale_all_dim"):
        if r.get(k):
            raise ValueError(f"{k} is not built")
    factor = float(r["factor"])
    original = int(r.get("original_max_position_embeddings") or n_pos)
    if original != n_pos:
        raise ValueError(f"original_max_position_embeddings {original} differs from "
                         f"max_position_embeddings {n_pos}")
    fast, slow = float(r.get("beta_fast") or 32), float(r.get("beta_slow") or 1)
    if r.get("attention_factor") not in (None, 0.1 * math.log(factor) + 1 if factor > 1 else 1):
        raise ValueError("an attention_factor other than 0.1·ln(factor) + 1 is not built")
    if not (factor >= 1 and fast > slow > 0 and original >= 1):
        raise ValueError("")
    return factor, fast, slow, original


def neox_sources(d: Dims) -> dict[str, list[str]]:
    """Each triad tensor of a GPT-NeoX model and the HF tensor it is (c_attn's rows reordered:
    neox_qkv_order)."""
    src = {"wte/weight": ["gpt_neox.embed_in.weight"]}
    parts = (("ln_1", "input_layernorm"), ("attn/c_attn", "attention.query_key_value"),
             ("attn/c_proj", "attention.dense"), ("ln_2", "post_attention_layernorm"),
             ("mlp/c_fc", "mlp.dense_h_to_4h"), ("mlp/c_proj", "mlp.dense_4h_to_h"))
    for i in range(d.n_layer):
        for t, h in parts:
            for kind in ("weight", "bias"):
                src[f"h/{i}/{t}/{kind}"] = [f"gpt_neox.layers.{i}.{h}.{kind}"]
    src.update({"ln_f/weight": ["gpt_neox.final_layer_norm.weight"],
                "ln_f/bias": ["gpt_neox.final_layer_norm.bias"]})
    if not d.tied:
        src["lm_head/weight"] = ["embed_out.weight"]
    return src


def neox_qkv_order(d: Dims, t: str, a: np.ndarray, to_hf: bool = False) -> np.ndarray:
    """c_attn's weight or bias from GPT-NeoX's query_key_value rows, [heads, 3, head width]
    (each head's q, k, v together), to triad's q | k | v ([3, heads, head width]), or (to_hf)
    back."""
    if not (d.neox and t.endswith(("attn/c_attn/weight", "attn/c_attn/bias"))):
        return a
    shape = (d.n_head, 3, d.hd) if not to_hf else (3, d.n_head, d.hd)
    return np.ascontiguousarray(
        a.reshape(*shape, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape))


def llama_sources(d: Dims) -> dict[str, list[str]]:
    """Each triad tensor of a Llama model and the HF tensors it is made of, stacked by rows (an
    expert tensor [E, rows, columns] as [E·rows, columns]: expert by expert, Mixtral's w1 and w3
    stacked into each expert's c_fc); GPT-NeoX's (neox_sources)."""
    if d.neox:
        return neox_sources(d)
    if d.starcoder2:
        return starcoder2_sources(d)
    if d.falcon:
        return falcon_sources(d)
    if d.phi:
        return phi_sources(d)
    if d.gptj:
        return gptj_sources(d)
    if d.dbrx:
        return dbrx_sources(d)
    if d.opt:
        return opt_sources(d)
    src = {"wte/weight": ["model.embed_tokens.weight"], "ln_f/weight": ["model.norm.weight"],
           **({"ln_f/bias": ["model.norm.bias"]} if d.norm_bias else {})}
    for i in range(d.n_layer):
        p, h = f"h/{i}/", f"model.layers.{i}."
        if d.norm_bias:  # Nemotron's LayerNorms
            src.update({p + "ln_1/bias": [h + "input_layernorm.bias"],
                        p + "ln_2/bias": [h + "post_attention_layernorm.bias"]})
        if d.branch_norm:  # Gemma 2's sandwich: pre- and post-norms around both branches
            src.update({p + "ln_attn_out/weight": [h + "post_attention_layernorm.weight"],
                        p + "ln_mlp_out/weight": [h + "post_feedforward_layernorm.weight"]})
        src.update({
            p + "ln_1/weight": [h + "input_layernorm.weight"],
            p + "attn/c_attn/weight": [h + "self_attn.qkv_proj.weight"] if d.fused else
                                      [h + f"self_attn.{x}_proj.weight" for x in "qkv"],
            **({p + "attn/c_attn/bias": [h + f"self_attn.{x}_proj.bias" for x in "qkv"]}
               if d.qkv_bias else {}),
            p + "attn/c_proj/weight": [h + "self_attn.o_proj.weight"],
            **({p + "attn/q_norm/weight": [h + "self_attn.q_norm.weight"],
                p + "attn/k_norm/weight": [h + "self_attn.k_norm.weight"]} if d.qk_norm else {}),
            **({} if d.shared_norm else {
                p + "ln_2/weight": [h + ("pre_feedforward_layernorm.weight" if d.branch_norm else
                                         "post_attention_layernorm.weight")]}),
        })
        if not d.norm_weight or not d.pre_norm:  # OLMo's norms hold nothing (triad's are
            # ones: ones_for); OLMo-2 has none before the branches, nor does triad's model then
            for t in ("ln_1/weight", "ln_2/weight"):
                src.pop(p + t, None)
        if d.moe_layer(i) and d.moe_format in ("qwen2_moe", "qwen3_moe", "olmoe"):  # sparse MLP
            m = h + "mlp."
            experts = [m + f"experts.{e}." for e in range(d.moe_experts)]
            src.update({
                p + "mlp/experts/c_fc/weight": [e + f"{w}_proj.weight" for e in experts
                                                for w in ("gate", "up")],
                p + "mlp/experts/c_proj/weight": [e + "down_proj.weight" for e in experts],
                p + "mlp/router/weight": [m + "gate.weight"],
            })
            if d.moe_format == "qwen2_moe":  # the gated shared expert
                src.update({
                    p + "mlp/shared/c_fc/weight": [m + "shared_expert.gate_proj.weight",
                                                   m + "shared_expert.up_proj.weight"],
                    p + "mlp/shared/c_proj/weight": [m + "shared_expert.down_proj.weight"],
                    p + "mlp/shared/gate/weight": [m + "shared_expert_gate.weight"],
                })
        elif d.moe_layer(i) and d.moe_format == "granitemoe":  # each layer's experts fused
            m = h + "block_sparse_moe."
            src.update({
                p + "mlp/experts/c_fc/weight": [m + "input_linear.weight"],
                p + "mlp/experts/c_proj/weight": [m + "output_linear.weight"],
                p + "mlp/router/weight": [m + "router.layer.weight"],
            })
        elif d.moe_layer(i):  # Mixtral's sparse MLP block: w1 (gate), w3 (up), w2 (down)
            m = h + "block_sparse_moe."
            experts = [m + f"experts.{e}." for e in range(d.moe_experts)]
            src.update({
                p + "mlp/experts/c_fc/weight": [e + w for e in experts
                                                for w in ("w1.weight", "w3.weight")],
                p + "mlp/experts/c_proj/weight": [e + "w2.weight" for e in experts],
                p + "mlp/router/weight": [m + "gate.weight"],
            })
        elif d.mlp == "relu2":  # Nemotron's: up, the squared ReLU, down
            src.update({
                p + "mlp/c_fc/weight": [h + "mlp.up_proj.weight"],
                p + "mlp/c_proj/weight": [h + "mlp.down_proj.weight"],
            })
        elif d.fused or d.glm:  # Phi-3's and GLM's gate and up rows in one tensor
            src.update({
                p + "mlp/c_fc/weight": [h + "mlp.gate_up_proj.weight"],
                p + "mlp/c_proj/weight": [h + "mlp.down_proj.weight"],
            })
        else:
            src.update({
                p + "mlp/c_fc/weight": [h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"],
                p + "mlp/c_proj/weight": [h + "mlp.down_proj.weight"],
            })
    if not d.tied:
        src["lm_head/weight"] = ["lm_head.weight"]
    if not d.norm_weight:
        del src["ln_f/weight"]
    return src


def llama_part_rows(d: Dims, t: str, rows: int) -> list[int]:
    """The rows of each HF tensor (llama_sources) stacked into triad's tensor t of `rows` rows
    (an expert tensor's E·rows): c_attn's q (C), k and v (n_kv_head heads each), c_fc's gate and
    up, and each expert's; Phi-3's fused tensors whole."""
    if d.neox or d.falcon or (d.fused and t.endswith(("attn/c_attn/weight", "mlp/c_fc/weight"))) \
            or (d.glm and t.endswith("mlp/c_fc/weight")) or whole_experts(d, t) \
            or (d.dbrx and t.endswith("attn/c_attn/weight")):  # (DBRX's Wqkv)
        return [rows]
    if t.endswith(("attn/c_attn/weight", "attn/c_attn/bias")):
        kv_rows = d.kv * d.hd
        return [d.attn_width, kv_rows, kv_rows]
    if t.endswith(("mlp/c_fc/weight", "mlp/shared/c_fc/weight")) and \
            d.mlp in ("swiglu", "geglu"):
        return [rows // 2, rows // 2]
    if t.endswith("mlp/experts/c_fc/weight") and d.dbrx:  # w1, v1: all the experts' each
        return [rows // 2, rows // 2]
    if t.endswith("mlp/experts/c_fc/weight"):
        return [rows // (2 * d.moe_experts)] * (2 * d.moe_experts)
    if t.endswith("mlp/experts/c_proj/weight") and d.dbrx:  # w2 [E·F, C]: whole
        return [d.moe_experts * d.mlp_hidden]
    if t.endswith("mlp/experts/c_proj/weight"):
        return [rows // d.moe_experts] * d.moe_experts
    return [rows]


def whole_experts(d: Dims, t: str) -> bool:
    """Whether triad's expert tensor t is one HF tensor of the same [E, rows, columns] shape
    (GraniteMoE's input_linear and output_linear), not E stacked ones."""
    return d.moe_format == "granitemoe" and "/mlp/experts/" in t


def stacked_shape(shape: tuple) -> tuple:
    """A tensor's shape as its HF parts stack: an expert tensor's [E, rows, columns] as
    [E·rows, columns]; the others as they are."""
    return (math.prod(shape[:-1]), shape[-1]) if len(shape) > 2 else tuple(shape)


def llama_query_order(d: Dims, t: str, a: np.ndarray, to_hf: bool = False) -> np.ndarray:
    """Tensor t (of HF's Llama) with its query heads in triad's order, or (to_hf) the other way.
    HF's repeat_kv gives each key/value head kv a run of g = n_head / n_kv_head query heads,
    kv·g .. kv·g + g - 1; triad repeats the key/value heads whole, query head h using key/value
    head h % n_kv_head, so that tensor parallelism can cut c_attn into equal blocks of
    n_kv_head heads (docs/formats.md). HF's query head kv·g + j is triad's j·n_kv_head + kv:
    c_attn's q rows and attn.c_proj's input columns move by whole heads (and q_norm's weights
    under model.qk_norm_full, one per q value); k and v stay."""
    q_norm = d.qk_norm_full and t.endswith("attn/q_norm/weight")
    if d.kv == d.n_head or not (q_norm or t.endswith(("attn/c_attn/weight", "attn/c_attn/bias",
                                                      "attn/c_proj/weight"))):
        return a  # one key/value head per query head: the orders agree
    nh, hd, g = d.n_head, d.hd, d.n_head // d.kv
    h = np.arange(nh)
    order = (h % d.kv) * g + h // d.kv  # triad's head h is HF's head order[h]
    if to_hf:
        order = np.argsort(order)  # HF's head h' is triad's head order[h']
    if q_norm:
        return a.reshape(nh, hd)[order].reshape(a.shape)
    if t.endswith(("c_attn/weight", "c_attn/bias")):  # q: the first C rows, head-major
        q = a[:d.attn_width].reshape(nh, hd, -1)[order].reshape(d.attn_width, *a.shape[1:])
        return np.concatenate([q, a[d.attn_width:]])
    return a.reshape(a.shape[0], nh, hd)[:, order].reshape(a.shape)  # o_proj's input columns


def open_hf(src: Path, seq_len: int | None) -> Tuple[Dims, Tensors, str]:
    """An HF model directory (config.json + model.safetensors or a sharded index), or one
    .safetensors file with config.json beside it."""
    directory = src if src.is_dir() else src.parent
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ConvertError(f"{directory}: no config.json (an HF model directory holds "
                           f"config.json and model.safetensors)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{cfg_path}: not readable as JSON: {e}")
    if not isinstance(cfg, dict):
        raise ConvertError(f"{cfg_path}: not a JSON object")
    d = hf_config_dims(cfg, str(cfg_path), seq_len)

    if src.is_file():
        files = [src]
    elif (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    elif (directory / "model.safetensors.index.json").is_file():
        index = directory / "model.safetensors.index.json"
        try:
            wm = json.loads(index.read_text())["weight_map"]
            files = [directory / f for f in sorted(set(wm.values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConvertError(f"{index}: not a safetensors index ({e})")
    else:
        bins = sorted(p.name for p in directory.glob("pytorch_model*.bin"))
        raise ConvertError(f"{directory}: no model.safetensors" + (
            f" ({', '.join(bins)} is a pickled PyTorch file; save the model with "
            f"save_pretrained(..., safe_serialization=True) to get safetensors)" if bins else ""))
    where: dict[str, SafetensorsFile] = {}
    for f in files:
        if not f.is_file():
            raise ConvertError(f"{f}: no such file (named by the safetensors index)")
        st = SafetensorsFile(f)
        for name in st.entries:
            where[name] = st
    if d.opt:
        return d, llama_tensors(d, where, directory), f"Hugging Face OPT model {directory}"
    if d.position == "rope":  # Llama's family
        kind = ({"qwen2_moe": "Qwen2-MoE", "qwen3_moe": "Qwen3-MoE", "mixtral": "Mixtral",
                 "granitemoe": "GraniteMoE", "olmoe": "OLMoE", "dbrx": "DBRX"}.get(
            d.moe_format or "") or ("GPT-NeoX" if d.neox else "Falcon" if d.falcon else
                                    "Nemotron" if d.mlp == "relu2" else
                                    "Cohere" if d.cohere else "Phi" if d.phi else
                                    "GPT-J" if d.gptj else
                                    ("Gemma 2" if d.branch_norm else "Gemma")
                                    if d.mlp == "geglu" else
                                    "Granite" if cfg.get("model_type") == "granite" else
                                    "StableLM" if d.norm_bias else
                                    "OLMo-2" if not d.pre_norm else "GLM" if d.glm else
                                    "Qwen2" if d.qkv_bias else "Qwen3" if d.qk_norm else
                                    "Phi-3" if d.fused else "OLMo" if not d.norm_weight else
                                    "StarCoder2" if d.starcoder2 else
                                    "Mistral" if d.sliding_window else "Llama"))
        note = ""
        if d.moe_experts and cfg.get("router_jitter_noise"):  # noise on the router's input
            note = (f"; its router_jitter_noise {cfg['router_jitter_noise']} is a training-time "
                    f"noise triad does not add")
        return d, llama_tensors(d, where, directory), \
            f"Hugging Face {kind} model {directory}{note}"

    # HF names as stored (with or without the `transformer.` prefix) -> triad's.
    stored = {}
    for name in where:
        bare = name[len("transformer."):] if name.startswith("transformer.") else name
        if bare in stored.values():
            raise ConvertError(f"{where[name].path}: tensor {bare} is stored twice")
        stored[name] = bare
    want = shapes(d)
    by_hf = {}
    for t in want:
        h, transposed = hf_name(t, d)
        by_hf[h] = (t, transposed)
    found = {}
    for name, bare in stored.items():
        if bare in by_hf:
            found[by_hf[bare][0]] = name
        elif bare == "lm_head.weight" or re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", bare):
            continue  # the tied head (checked below); causal-mask constants
        else:
            raise ConvertError(f"{where[name].path}: tensor {name} is not part of a GPT-2 "
                               f"model as triad has it")
    missing = [by_hf_name for by_hf_name, (t, _) in by_hf.items() if t not in found]
    if missing:
        raise ConvertError(f"{directory}: tensor(s) {', '.join(missing[:4])}"
                           f"{' ...' if len(missing) > 4 else ''} missing")
    for t, name in found.items():
        _, transposed = hf_name(t, d)
        shape = where[name].entries[name][1]
        stored_shape = tuple(reversed(want[t])) if transposed else want[t]
        if t == "wpe/weight":
            ok = len(shape) == 2 and shape[1] == d.n_embd and shape[0] >= d.seq_len
        else:
            ok = shape == stored_shape
        if not ok:
            raise ConvertError(f"{where[name].path}: tensor {name} has shape {list(shape)}, "
                               f"expected {list(stored_shape)} for the model in config.json")
    head = next((n for n, b in stored.items() if b == "lm_head.weight"), None)

    def tensors():
        for t in want:
            name = found[t]
            a = where[name].read(name)
            if hf_name(t, d)[1]:
                a = np.ascontiguousarray(a.T)
            if t == "wpe/weight":
                a = a[:d.seq_len]
            if d.bigcode and d.n_kv_head != 1 and t.endswith(("attn/c_attn/weight",
                                                             "attn/c_attn/bias")):
                # GPT-BigCode without multi_query: rows [q | k | v] of head 0, then of head 1,
                # ... (its view(heads, 3·hd)); triad's: every head's q, then k, then v.
                hd = d.n_embd // d.n_head
                a = np.ascontiguousarray(
                    a.reshape(d.n_head, 3, hd, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape))
            if t == "wte/weight" and head is not None:
                h = where[head].read(head)
                if h.shape != a.shape or not np.array_equal(h, a):
                    raise ConvertError(f"{where[head].path}: lm_head.weight differs from "
                                       f"wte.weight; triad's model ties the output head to "
                                       f"the token embedding and cannot hold a separate one")
            yield t, a

    return d, tensors, f"Hugging Face {'GPT-BigCode' if d.bigcode else 'GPT-2'} model {directory}"


def llama_tensors(d: Dims, where: dict, directory: Path) -> Tensors:
    """The tensors of an HF Llama model as triad's (their shapes checked before any is read)."""
    src = llama_sources(d)
    want = expected_shapes(d.attrs())
    for t in VOCAB_TENSORS:
        if t in want:
            want[t] = (d.vocab_size, *want[t][1:])
    used = {n for names in src.values() for n in names}
    for name in where:
        if name not in used and not name.endswith("rotary_emb.inv_freq") and not (
                d.neox and name.endswith(("attention.bias", "attention.masked_bias"))):  # masks
            raise ConvertError(f"{where[name].path}: tensor {name} is not part of a Llama model "
                               f"as triad has it" + (" (lm_head.weight with tie_word_embeddings)"
                                                     if name == "lm_head.weight" else ""))
    for t, names in src.items():
        missing = [n for n in names if n not in where]
        if missing:
            raise ConvertError(f"{directory}: tensor(s) {', '.join(missing)} missing")
        got = [list(where[n].entries[n][1]) for n in names]
        rows, *cols = stacked_shape(want[t])
        expected = [[r, *cols] for r in llama_part_rows(d, t, rows)]
        if whole_experts(d, t):
            expected = [list(want[t])]
        if d.dbrx and t.endswith("mlp/experts/c_proj/weight"):  # w2, each expert transposed
            expected = [[d.moe_experts * d.mlp_hidden, d.n_embd]]
        if d.opt and t == "wpe/weight" and len(got[0]) == 2 and got[0][0] >= rows + 2:
            expected = got  # (any table covering seq_len past its offset: opt_positions)
        if got != expected:
            if len(names) > 3:  # an expert's tensor: name the first that is wrong
                names, got, expected = zip(*[x for x in zip(names, got, expected)
                                             if x[1] != x[2]][:1])
            raise ConvertError(f"{where[names[0]].path}: tensor(s) {', '.join(names)} have "
                               f"shape(s) {list(got)}, expected {list(expected)} for the model "
                               f"in config.json")

    def tensors():
        for t in [t for t in want if t not in src]:  # norms without a weight: ones
            yield t, ones_for(d, t, want[t])
        for t, names in src.items():
            parts = [np.asarray(where[n].read(n), dtype="<f4") for n in names]
            a = np.concatenate(parts) if len(parts) > 1 else parts[0]
            if d.norm_offset and is_norm_weight(t):  # LayerNorm1P's w - 1
                a = a + np.float32(1)
            a = falcon_qkv_order(d, t, neox_qkv_order(d, t, a))
            a = interleaved_rope_order(d, t, dbrx_expert_order(d, t, opt_positions(d, t, a)))
            yield t, llama_query_order(d, t, a.reshape(want[t]))

    return tensors


def ones_for(d: Dims, t: str, shape: tuple) -> np.ndarray:
    """The weight of norm t under model.norm_weight = false, which the Hugging Face files do not
    hold: ones."""
    if d.norm_weight or not is_norm_weight(t):
        raise ConvertError(f"tensor {t} has no source in the Hugging Face files")
    return np.ones(shape, dtype="<f4")


def is_norm_weight(t: str) -> bool:
    """Whether triad tensor t is a LayerNorm's (or RMSNorm's) weight: ln_1, ln_2, the branch
    norms, ln_f."""
    return t.endswith(("ln_1/weight", "ln_2/weight", "ln_attn_out/weight",
                       "ln_mlp_out/weight")) or t == "ln_f/weight"


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


# ---------------------------------------------------------------- llm.c

def llmc_order(d: Dims, padded_vocab: int) -> list[Tuple[str, tuple[int, ...]]]:
    """llm.c's tensor order and stored shapes: each per-layer tensor for all layers in turn."""
    s = shapes(d)
    order = [("wte/weight", (padded_vocab, d.n_embd)), ("wpe/weight", s["wpe/weight"])]
    for t in LAYER_TENSORS:
        order += [(f"h/{i}/{t}", s[f"h/{i}/{t}"]) for i in range(d.n_layer)]
    return order + [("ln_f/weight", s["ln_f/weight"]), ("ln_f/bias", s["ln_f/bias"])]


def llmc_offsets(order: list[Tuple[str, tuple[int, ...]]], item: int) -> Dict[str, int]:
    """Each tensor's byte offset in an llm.c file of `item`-byte elements."""
    offsets, at = {}, LLMC_HEADER_INTS * 4
    for name, shape in order:
        offsets[name] = at
        at += math.prod(shape) * item
    return offsets


def open_llmc(src: Path, seq_len: int | None) -> Tuple[Dims, Tensors, str]:
    size = src.stat().st_size
    header = np.fromfile(src, dtype="<i4", count=LLMC_HEADER_INTS)
    if header.size < LLMC_HEADER_INTS or header[0] != LLMC_MAGIC:
        raise ConvertError(f"{src}: not an llm.c model file (no magic {LLMC_MAGIC} at the start)")
    version = int(header[1])
    if version not in LLMC_VERSIONS:
        raise ConvertError(f"{src}: llm.c model file version {version}; versions 3 (fp32) and 5 "
                           f"(bf16) are read")
    max_t, vocab, n_layer, n_head, n_embd, padded = (int(x) for x in header[2:8])
    if seq_len is not None and seq_len > max_t:
        raise ConvertError(f"--seq-len {seq_len} exceeds the model's {max_t} positions ({src})")
    full = Dims(n_layer, n_head, n_embd, max_t, vocab)  # as the file holds it
    full.check(str(src))
    d = Dims(n_layer, n_head, n_embd, seq_len or max_t, vocab)  # as it is converted
    if padded < vocab:
        raise ConvertError(f"{src}: padded_vocab_size {padded} < vocab_size {vocab}")
    order = llmc_order(full, padded)
    item = 4 if LLMC_VERSIONS[version] == "fp32" else 2
    want = LLMC_HEADER_INTS * 4 + sum(math.prod(s) for _, s in order) * item
    if size != want:
        raise ConvertError(f"{src}: {size} bytes, but an llm.c {LLMC_VERSIONS[version]} model "
                           f"with these dimensions (L={n_layer} H={n_head} C={n_embd} "
                           f"T={max_t} V={vocab}/{padded}) has {want}"
                           f"{' (truncated?)' if size < want else ''}")

    offsets = llmc_offsets(order, item)
    shape_of = dict(order)

    def tensors():
        for name in triad_names(n_layer):
            shape = shape_of[name]
            a = np.fromfile(src, dtype="<f4" if item == 4 else "<u2", count=math.prod(shape),
                            offset=offsets[name])
            a = (a if item == 4 else bf16_to_fp32(a)).reshape(shape)
            if name == "wte/weight":
                a = a[:vocab]
            elif name == "wpe/weight":
                a = a[:d.seq_len]
            yield name, np.ascontiguousarray(a)

    return d, tensors, f"llm.c {LLMC_VERSIONS[version]} model file {src}"


def write_llmc(out: Path, d: Dims, tensors: Tensors, dtype: str) -> None:
    """llm.c's model file: the vocabulary padded to a multiple of 128 with zero rows."""
    header = np.zeros(LLMC_HEADER_INTS, dtype="<i4")
    header[:8] = [LLMC_MAGIC, 3 if dtype == "fp32" else 5, d.seq_len, d.vocab_size, d.n_layer,
                  d.n_head, d.n_embd, d.padded_vocab_size]
    order = llmc_order(d, d.padded_vocab_size)
    offsets = llmc_offsets(order, 4 if dtype == "fp32" else 2)
    with open(out, "wb") as f:
        f.write(header.tobytes())
        for name, a in tensors():  # triad's order; llm.c's groups each tensor of all layers
            if name == "wte/weight":
                a = np.concatenate([a, np.zeros((d.padded_vocab_size - a.shape[0], a.shape[1]),
                                                "<f4")])
            f.seek(offsets[name])
            f.write((np.ascontiguousarray(a, dtype="<f4") if dtype == "fp32"
                     else fp32_to_bf16(a)).tobytes())


# ---------------------------------------------------------------- triad checkpoints

def _string_attr(obj, name: str, value: str) -> None:
    """A fixed-length NUL-terminated string attribute, as triad writes (and reads) them."""
    import h5py

    data = value.encode("utf-8")
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(data) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    obj.attrs.create(name, np.array(data, dtype=f"S{len(data) + 1}"), dtype=h5py.Datatype(tid))


def write_triad(out: Path, d: Dims, tensors: Tensors, source: str) -> None:
    """A weights-only triad checkpoint (DESIGN.md §5) at step 0: /model/<name> fp32 with a
    CRC-32 `checksum` each, wte padded with zero rows, `complete = 1` written last."""
    import h5py

    i64 = np.int64
    config = f"# imported by triad-convert from {source}\n[model]\n" + d.config_lines()
    want = expected_shapes(d.attrs())
    with h5py.File(out, "w") as f:
        _string_attr(f, "format", "triad-checkpoint")
        for k in ("format_version", "step", "tokens_seen", "next_sequence", "epoch"):
            f.attrs.create(k, i64(1 if k == "format_version" else 0), dtype="<i8")
        _string_attr(f, "config", config)
        _string_attr(f, "grid", "dp=1 pp=1 tp=1")
        m = f.create_group("model")
        for k, v in d.attrs().items():
            if isinstance(v, str):
                _string_attr(m, k, v)
            elif isinstance(v, float):
                m.attrs.create(k, np.float64(v), dtype="<f8")
            elif isinstance(v, np.ndarray):  # doubles (longrope's factors)
                m.attrs.create(k, v.astype("<f8"), dtype="<f8")
            else:
                m.attrs.create(k, i64(v), dtype="<i8")
        for name, a in tensors():
            a = np.ascontiguousarray(a, dtype="<f4")
            if name in VOCAB_TENSORS:
                a = np.concatenate([a, np.zeros((want[name][0] - a.shape[0], *a.shape[1:]),
                                                "<f4")])
            assert a.shape == want[name], (name, a.shape, want[name])
            ds = f.create_dataset(f"model/{name}", data=a, dtype="<f4")
            ds.attrs.create("checksum", np.uint32(zlib.crc32(a.tobytes()) & 0xFFFFFFFF),
                            dtype="<u4")
        f.flush()
        f.attrs.create("complete", i64(1), dtype="<i8")


def open_triad(src: Path) -> Tuple[Dims, Tensors, str]:
    """A complete triad checkpoint whose checksums verify (a run directory, checkpoint
    directory or file)."""
    path = resolve_checkpoint_path(src)
    rep = inspect(path, verify=True)
    if not rep.ok:
        raise ConvertError(rep.headline())
    a = rep.model_attrs
    llama = (a.get("position"), a.get("norm"), int(a.get("bias", 1))) == ("rope", "rmsnorm", 0) \
        and a.get("mlp") in ("swiglu", "geglu")  # Llama's blocks, or Gemma's (GeGLU)
    gemma = llama and a.get("mlp") == "geglu"
    # OLMo's blocks: Llama's with LayerNorms that learn no weight or bias (model.norm_weight).
    olmo = (a.get("position"), a.get("norm"), int(a.get("bias", 1)), int(a.get("norm_weight", 1)),
            a.get("mlp")) == ("rope", "layernorm", 0, 0, "swiglu")
    # Gemma 2's blocks: Gemma's with the branches' output norms (model.branch_norm); its format
    # alone holds the caps and the scores' scale.
    gemma2 = gemma and int(a.get("branch_norm", 0)) == 1
    # OLMo-2's blocks: Llama's (SwiGLU) with the branch norms alone (model.pre_norm = false).
    olmo2 = llama and not gemma and int(a.get("pre_norm", 1)) == 0
    # DBRX's blocks: LayerNorms with a weight and no bias, SwiGLU experts in every layer.
    dbrx = (a.get("position"), a.get("norm"), int(a.get("bias", 1)), int(a.get("norm_bias", 0)),
            int(a.get("norm_weight", 1)), a.get("mlp")) == \
        ("rope", "layernorm", 0, 0, 1, "swiglu") and int(a.get("moe_experts", 0)) > 0
    # Granite's blocks: Llama's (SwiGLU), whose format alone holds the multipliers (the
    # embedding's, the scores', the residual branches' and the logits').
    granite = llama and not gemma
    # Cohere's blocks: parallel SwiGLU and attention on one LayerNorm without biases.
    cohere = (a.get("position"), a.get("norm"), int(a.get("bias", 1)), int(a.get("norm_bias", 0)),
              int(a.get("parallel_residual", 0)), int(a.get("shared_norm", 0)), a.get("mlp")) == \
        ("rope", "layernorm", 0, 0, 1, 1, "swiglu")
    # Phi's: parallel GELU MLP and attention on one LayerNorm, biases everywhere, an untied head
    # with a bias.
    phi = (a.get("position"), a.get("norm"), int(a.get("bias", 1)),
           int(a.get("parallel_residual", 0)), int(a.get("shared_norm", 0)),
           int(a.get("head_bias", 0)), int(a.get("tie_embeddings", 1))) == \
        ("rope", "layernorm", 1, 1, 1, 1, 0) and a.get("mlp") in ("gelu", "gelu_exact")
    # GPT-J's: Phi's, but bias-free attention projections beside an MLP with biases.
    gptj = (a.get("position"), a.get("norm"), int(a.get("bias", 1)), int(a.get("norm_bias", 0)),
            int(a.get("mlp_bias", 0)), int(a.get("parallel_residual", 0)),
            int(a.get("shared_norm", 0)), int(a.get("head_bias", 0)),
            int(a.get("tie_embeddings", 1))) == ("rope", "layernorm", 0, 1, 1, 1, 1, 1, 0) and \
        a.get("mlp") in ("gelu", "gelu_exact")
    if int(a.get("head_bias", 0)) and not (phi or gptj):
        raise ConvertError(f"{path}: the model's head has a bias (model.head_bias) in blocks other "
                           f"than Phi's and GPT-J's; only Hugging Face's Phi and GPT-J of the "
                           f"export formats have one")
    if int(a.get("kv_lora_rank", 0)) > 0:  # (DeepSeek-V2's and V3's need transformers >= 4.50)
        raise ConvertError(f"{path}: the model's attention is multi-head latent attention "
                           f"(model.kv_lora_rank = {a['kv_lora_rank']}: attn/q_b, attn/kv_a, "
                           f"attn/kv_b instead of c_attn); none of the export formats (Hugging "
                           f"Face's GPT-2 ... DBRX, llm.c's) holds it")
    if int(a.get("mlp_bias", 0)) and not gptj:
        raise ConvertError(f"{path}: the model's MLP has biases beside bias-free attention "
                           f"(model.mlp_bias) in blocks other than GPT-J's (rope, parallel "
                           f"branches on one LayerNorm, GELU, a head bias); only Hugging Face's "
                           f"GPT-J of the export formats has such biases")
    for key, what in (("residual_scale", "each branch's output"), ("logit_scale", "its logits")):
        if float(a.get(key, 1.0)) != 1.0 and not (granite or (cohere and key == "logit_scale")):
            raise ConvertError(f"{path}: the model multiplies {what} by {a[key]} (model.{key}) in "
                               f"blocks other than Llama's (rope, RMSNorm, SwiGLU, no biases); "
                               f"only Hugging Face's Granite holds such multipliers")
    if int(a.get("branch_norm", 0)) and not (gemma or olmo2):
        raise ConvertError(f"{path}: the model normalizes each branch's output (model.branch_norm) "
                           f"in blocks other than Gemma's (rope, RMSNorm, GeGLU, no biases) and "
                           f"OLMo-2's (rope, RMSNorm, SwiGLU, no biases, no norms before the "
                           f"branches); only Hugging Face's Gemma 2 and OLMo-2 hold such norms")
    if int(a.get("pre_norm", 1)) == 0 and not olmo2:
        raise ConvertError(f"{path}: the model has no norms before its branches "
                           f"(model.pre_norm = false) in blocks other than OLMo-2's (rope, "
                           f"RMSNorm, SwiGLU, no biases); only Hugging Face's OLMo-2 holds them")
    if float(a.get("clip_qkv", 0.0)) and not (olmo or dbrx):  # OLMo's and DBRX's hold it
        raise ConvertError(f"{path}: the model clamps c_attn's output at {a['clip_qkv']} "
                           f"(model.clip_qkv) in blocks other than OLMo's (rope, LayerNorms "
                           f"without weights, SwiGLU, no biases); only Hugging Face's OLMo of "
                           f"the export formats clamps them")
    for key, what in (("logit_softcap", "its logits"), ("attn_softcap", "its attention scores")):
        if float(a.get(key, 0.0)) and not gemma2:  # dropping it would change the probabilities
            raise ConvertError(f"{path}: the model caps {what} at {a[key]} (model.{key}) in "
                               f"blocks other than Gemma 2's (Gemma's with model.branch_norm); "
                               f"only Hugging Face's Gemma 2 of the export formats caps them")
    if int(a.get("mup_base_width", 0)):  # its logits multiplier and attention scale
        raise ConvertError(f"{path}: the model is μP-parametrized (model.mup_base_width = "
                           f"{a['mup_base_width']}: logits times 1/m, another attention scale); "
                           f"the export formats hold neither")
    if float(a.get("embed_scale", 1.0)) != 1.0 and not (gemma or granite):  # Gemma's √C, Granite's
        raise ConvertError(f"{path}: the model scales its embedding's output by "
                           f"{a['embed_scale']} (model.embed_scale) in blocks other than Gemma's "
                           f"and Llama's (Granite's); none of the export formats for them scales "
                           f"it")
    # Nemotron's and StableLM's blocks: LayerNorms with biases, bias-free linear layers (but
    # StableLM's optional q, k, v biases), the squared ReLU or SwiGLU.
    norm_biased = (a.get("position"), a.get("norm"), int(a.get("bias", 1)),
                   int(a.get("norm_bias", 0))) == ("rope", "layernorm", 0, 1) and \
        a.get("mlp") in ("relu2", "swiglu")
    # GPT-NeoX's blocks: GPT-2's (all biases, LayerNorm, GELU exact or tanh) with rope.
    neox = (a.get("position"), a.get("norm"), int(a.get("bias", 1))) == ("rope", "layernorm", 1) \
        and a.get("mlp", "gelu") in ("gelu", "gelu_exact")
    # Falcon's blocks: parallel attention and MLP, LayerNorms with biases, bias-free linear layers,
    # GELU exact (exported in Falcon-40B's layout).
    falcon = (a.get("position"), a.get("norm"), int(a.get("bias", 1)), int(a.get("norm_bias", 0)),
              int(a.get("parallel_residual", 0)), a.get("mlp")) == \
        ("rope", "layernorm", 0, 1, 1, "gelu_exact") and not gptj
    # (Llama's blocks with partial rotary export as GLM's: Dims.glm.)
    if int(a.get("rotary_dim", 0)) and not (norm_biased or neox or gptj or granite):
        raise ConvertError(f"{path}: the model rotates the first {a['rotary_dim']} values of "
                           f"each head only (model.rotary_dim, partial rotary) in blocks other "
                           f"than Nemotron's, StableLM's, GPT-NeoX's, Phi's, GPT-J's and GLM's "
                           f"(Llama's); the export formats for them rotate all of them")
    if int(a.get("shared_norm", 0)) and not (cohere or phi or falcon or gptj):
        raise ConvertError(f"{path}: the model's parallel branches share one norm "
                           f"(model.shared_norm) in blocks other than Cohere's (rope, a LayerNorm "
                           f"without biases, SwiGLU, no linear biases), Phi's (rope, a LayerNorm, "
                           f"GELU, biases everywhere and on the untied head) and Falcon's (rope, "
                           f"a LayerNorm, GELU exact, no linear biases) and GPT-J's; only Hugging "
                           f"Face's Cohere, Phi, Falcon and GPT-J of the export formats have such "
                           f"blocks")
    if int(a.get("parallel_residual", 0)) and not (neox or falcon or cohere or gptj):
        raise ConvertError(f"{path}: the model runs attention and MLP side by side "
                           f"(model.parallel_residual) in blocks other than GPT-NeoX's (rope, "
                           f"LayerNorms, GELU, biases) and Falcon's (rope, LayerNorms, GELU exact, "
                           f"no linear biases); the export formats for them run them one after "
                           f"the other")
    if float(a.get("attn_scale", 0.0)) and not (gemma2 or granite):  # others: 1/sqrt(width)
        raise ConvertError(f"{path}: the model scales its attention scores by {a['attn_scale']} "
                           f"(model.attn_scale); the export formats but Gemma 2's "
                           f"(query_pre_attn_scalar) and Granite's (attention_multiplier) scale "
                           f"them by 1/sqrt(head width) only")
    if a.get("qk_norm", 0) == 1 and not llama:  # Qwen3's blocks hold it; no other format
        raise ConvertError(f"{path}: the model normalizes each attention head's q and k "
                           f"(model.qk_norm = true, tensors attn/q_norm and attn/k_norm) in "
                           f"blocks other than Llama's; only Hugging Face's Qwen3 (Llama's "
                           f"blocks) holds such weights, so it is not exported")
    if int(a.get("moe_experts", 0)):  # Hugging Face's Mixtral is the one format with experts
        refuse_unexported_experts(path, a, (llama and not gemma) or dbrx, dbrx)
        import h5py
        with h5py.File(path, "r") as f:  # DeepSeek-V3's balancing biases (train.moe_bias_rate)
            moved = "router_bias" in f and any(
                np.any(d[()] != 0) for d in f["router_bias/h"].values())
        if moved:
            raise ConvertError(f"{path}: the model's routers choose their experts with biases "
                               f"(/router_bias, train.moe_bias_rate); Hugging Face's Mixtral, "
                               f"Qwen2-MoE and Qwen3-MoE have none")
    if llama or norm_biased or neox or falcon or cohere or phi or gptj or olmo or dbrx:
        return open_triad_llama(path, a)
    if int(a.get("sliding_window", 0)):
        raise ConvertError(f"{path}: the model attends to its last {a['sliding_window']} tokens "
                           f"(model.sliding_window); GPT-2's formats attend to the whole context "
                           f"(Llama's architecture exports a window as Hugging Face's Mistral)")
    if int(a.get("head_dim", 0)):
        raise ConvertError(f"{path}: the model's heads are {a['head_dim']} wide "
                           f"(model.head_dim); GPT-2's formats hold n_embd / n_head only")
    if a.get("position", "learned") != "learned":
        raise ConvertError(f"{path}: the model uses {a['position']} positions (model.position); "
                           f"GPT-2's Hugging Face and llm.c formats hold learned positions (wpe) "
                           f"only (Llama's architecture, all five model options, exports to "
                           f"Hugging Face's Llama)")
    if a.get("norm", "layernorm") != "layernorm":
        raise ConvertError(f"{path}: the model uses {a['norm']} (model.norm); GPT-2's Hugging "
                           f"Face and llm.c formats hold LayerNorms (weight and bias) only")
    d = Dims(*(int(a[k]) for k in ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size")),
             norm_eps=float(a.get("norm_eps", 1e-5)))
    if int(a.get("qkv_bias", 0)) == 1:
        raise ConvertError(f"{path}: the model has c_attn's bias without the others "
                           f"(model.qkv_bias) in GPT-2's blocks; Hugging Face's GPT-2 and "
                           f"llm.c's format have all biases or (as zeros) none")
    if a.get("mlp", "gelu") in ("relu", b"relu"):  # OPT's blocks
        d = replace(d, mlp="relu", mlp_hidden=int(a.get("mlp_hidden", 4 * d.n_embd)), opt=True)
    elif a.get("mlp", "gelu") != "gelu" or \
            int(a.get("mlp_hidden", 4 * d.n_embd)) != 4 * d.n_embd:
        raise ConvertError(f"{path}: the model's MLP is {a.get('mlp', 'gelu')} with "
                           f"{a.get('mlp_hidden')} hidden units (model.mlp, model.mlp_hidden); "
                           f"GPT-2's formats hold a GELU MLP of 4·n_embd units only")
    if int(a.get("tie_embeddings", 1)) != 1:
        raise ConvertError(f"{path}: the model has an output layer of its own "
                           f"(model.tie_embeddings = false); GPT-2's formats tie it to wte")
    kv = int(a.get("n_kv_head", d.n_head))
    if kv == 1 and d.n_head > 1:  # multi-query: GPT-BigCode's (StarCoder's) blocks
        d = replace(d, n_kv_head=1, bigcode=True)
    elif kv != d.n_head:
        raise ConvertError(f"{path}: the model has {a['n_kv_head']} key/value heads for "
                           f"{d.n_head} query heads (model.n_kv_head); GPT-2's formats hold one "
                           f"per query head, GPT-BigCode's one for all (Llama's architecture "
                           f"exports grouped-query attention to Hugging Face's Llama)")
    # model.bias = false: GPT-2 with every bias zero computes exactly that model (the LayerNorms'
    # kept under model.norm_bias).
    no_bias = int(a.get("bias", 1)) == 0
    norm_bias = int(a.get("norm_bias", 0)) == 1
    full = shapes(d)

    def tensors():
        import h5py

        with h5py.File(path, "r") as f:
            for name in triad_names(d.n_layer):
                kept = norm_bias and name.split("/")[-2].startswith("ln_")
                if no_bias and name.endswith("/bias") and not kept:
                    yield name, np.zeros(full[name], dtype="<f4")
                    continue
                arr = f["model/" + name][()].astype("<f4")
                yield name, (arr[:d.vocab_size] if name == "wte/weight" else arr)

    return d, tensors, f"triad checkpoint {path}"


def refuse_unexported_experts(path: Path, a: dict, llama: bool, dbrx: bool = False) -> None:
    """Raises for a mixture of experts none of Hugging Face's Mixtral, Qwen2-MoE, Qwen3-MoE,
    OLMoE and DBRX computes (dbrx: DBRX's blocks, whose gates may also stay as the router gives
    them). All have Llama's blocks. Mixtral: experts in every layer, no shared experts,
    renormalized gates, no c_attn bias, no QK-norm. Qwen2-MoE: a shared expert with a sigmoid
    gate, c_attn's bias, no QK-norm. Qwen3-MoE: QK-norm, no shared expert, no c_attn bias. Both
    Qwens: gates renormalized or not, dense layers first or every n-th."""
    E = int(a["moe_experts"])
    shared, gated = int(a.get("moe_shared_hidden", 0)), int(a.get("moe_shared_gate", 0)) == 1
    first, every = int(a.get("moe_first_dense", 0)), int(a.get("moe_every", 1))
    qk, bias = int(a.get("qk_norm", 0)) == 1, int(a.get("qkv_bias", 0)) == 1
    full = int(a.get("qk_norm_full", 0)) == 1
    score = a.get("moe_score", "softmax")
    score = score.decode() if isinstance(score, bytes) else str(score)
    why = None
    groups = int(a.get("moe_groups", 1))
    if score != "softmax" or float(a.get("moe_routed_scale", 1.0)) != 1.0 or groups > 1:
        why = (f"the model's router scores by {score} with its gates times "
               f"{float(a.get('moe_routed_scale', 1.0))} in {groups} group(s) of experts "
               f"(model.moe_score, moe_routed_scale, moe_groups: DeepSeek-V3's routing); Hugging "
               f"Face's Mixtral, Qwen2-MoE and Qwen3-MoE score by softmax over all the experts "
               f"and weigh the gates as they are")
    elif not llama:
        why = (f"the model's MLPs are mixtures of {E} experts (model.moe_experts) in blocks "
               f"other than Llama's; the export formats with experts, Hugging Face's Mixtral, "
               f"Qwen2-MoE and Qwen3-MoE, have Llama's blocks (rope, RMSNorm, SwiGLU, no biases)")
    elif full and (shared or first or every != 1):
        why = ("the model normalizes q and k over all heads (model.qk_norm_full) beside experts, "
               "which exports as Hugging Face's OLMoE: experts in every layer, no shared ones")
    elif shared and not gated:
        why = (f"the model has shared experts (model.moe_shared_hidden = {shared}) without a "
               f"gate; Hugging Face's Mixtral and Qwen3-MoE have none, and Qwen2-MoE's has a "
               f"sigmoid gate (model.moe_shared_gate = true)")
    elif gated and (qk or not bias):
        why = ("the model's shared experts are gated (model.moe_shared_gate), which exports as "
               "Hugging Face's Qwen2-MoE, whose attention has q, k and v biases "
               "(model.qkv_bias = true) and no QK-norm (model.qk_norm = false)")
    elif (gated or qk) and first and every != 1:
        why = (f"the model has dense layers both first and between its expert layers "
               f"(model.moe_first_dense = {first}, model.moe_every = {every}); Qwen's "
               f"mlp_only_layers and decoder_sparse_step would place the experts in other layers")
    elif not shared and bias:
        why = ("the model has c_attn's bias alone (model.qkv_bias) and experts without shared "
               "ones; Hugging Face's Mixtral and Qwen3-MoE have no such bias, and Qwen2-MoE has "
               "a shared expert")
    elif not shared and not qk and (first or every != 1):
        why = (f"the model has dense layers among its expert layers (model.moe_first_dense = "
               f"{first}, model.moe_every = {every}) without QK-norm or shared experts; Hugging "
               f"Face's Mixtral has experts in every layer")
    elif not shared and not qk and not dbrx and not int(a.get("moe_normalize", 1)):
        why = ("the model keeps its gates as the router gives them (model.moe_normalize = "
               "false) without QK-norm or shared experts; Hugging Face's Mixtral renormalizes the "
               "chosen experts' gates")
    if why:
        raise ConvertError(f"{path}: {why}")


def scaling_attrs(a: dict, names: tuple) -> tuple:
    """A rope scaling's four numbers from the /model attributes `names`: three floats and the
    original context."""
    return tuple(float(a[k]) for k in names[:3]) + (int(a[names[3]]),)


def open_triad_llama(path: Path, a: dict) -> Tuple[Dims, Tensors, str]:
    """A triad checkpoint of Llama's architecture (rope, RMSNorm, SwiGLU or GeGLU, no biases),
    Nemotron's or StableLM's (rope, LayerNorms with biases, the squared ReLU or SwiGLU, no linear
    biases but StableLM's q, k, v ones), or GPT-NeoX's (GPT-2's blocks with rope), its tensors in
    triad's names, the vocabulary tensors cropped to vocab_size rows. GPT-NeoX's blocks with
    grouped-query attention or a sliding window, which GPT-NeoX's format does not hold, in
    sequential blocks are StarCoder2's."""
    mlp = a["mlp"].decode() if isinstance(a["mlp"], bytes) else str(a["mlp"])  # (always written
    # for a rope model: not GPT-2's)
    # DeepSeek's form of YaRN (scores scaled apart from cos and sin): transformers' Llama-family
    # classes scale cos and sin only.
    mscales = (float(a.get("rope_yarn_mscale", 1.0)), float(a.get("rope_yarn_mscale_all_dim", 0.0)))
    if a.get("rope_scaling") == "yarn" and mscales != (1.0, 0.0):
        raise ConvertError(f"{path}: YaRN with rope_yarn_mscale {mscales[0]} and "
                           f"rope_yarn_mscale_all_dim {mscales[1]} (DeepSeek's form) has no "
                           f"Hugging Face Llama-family export; only 1 and 0 (Qwen's) export")
    neox_like = mlp in ("gelu", "gelu_exact") and int(a.get("bias", 1)) == 1 and \
        not int(a.get("shared_norm", 0))  # (shared: Phi's)
    starcoder2 = neox_like and not int(a.get("parallel_residual", 0)) and (
        int(a.get("n_kv_head", a["n_head"])) != int(a["n_head"]) or
        int(a.get("sliding_window", 0)) > 0)
    d = Dims(*(int(a[k]) for k in ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size")),
             position="rope", rope_theta=float(a["rope_theta"]),
             norm=a["norm"].decode() if isinstance(a["norm"], bytes) else str(a["norm"]),
             bias=int(a.get("bias", 1)) == 1, norm_bias=int(a.get("norm_bias", 0)) == 1,
             norm_weight=int(a.get("norm_weight", 1)) == 1,
             rotary_dim=int(a.get("rotary_dim", 0)),
             neox=neox_like and not starcoder2,
             starcoder2=starcoder2,
             falcon="grouped" if mlp == "gelu_exact" and int(a.get("norm_bias", 0)) and
             not int(a.get("mlp_bias", 0)) else "",  # (with MLP biases: GPT-J's)
             mlp_bias=int(a.get("mlp_bias", 0)) == 1,
             parallel_residual=int(a.get("parallel_residual", 0)) == 1,
             norm_offset=mlp in ("relu2", "geglu"), mlp=mlp, mlp_hidden=int(a["mlp_hidden"]),
             embed_scale=float(a.get("embed_scale", 1.0)),
             branch_norm=int(a.get("branch_norm", 0)) == 1,
             shared_norm=int(a.get("shared_norm", 0)) == 1,
             head_bias=int(a.get("head_bias", 0)) == 1,
             attn_scale=float(a.get("attn_scale", 0.0)),
             attn_softcap=float(a.get("attn_softcap", 0.0)),
             clip_qkv=float(a.get("clip_qkv", 0.0)),
             logit_softcap=float(a.get("logit_softcap", 0.0)),
             residual_scale=float(a.get("residual_scale", 1.0)),
             logit_scale=float(a.get("logit_scale", 1.0)),
             tied=int(a.get("tie_embeddings", 1)) == 1,
             n_kv_head=int(a.get("n_kv_head", a["n_head"])),
             rope_scaling=scaling_attrs(a, ROPE_SCALING_ATTRS)
             if a.get("rope_scaling") == "llama3" else None,
             yarn=scaling_attrs(a, YARN_ATTRS) if a.get("rope_scaling") == "yarn" else None,
             longrope=(float(a["rope_scaling_factor"]), int(a["rope_original_positions"]),
                       tuple(float(x) for x in a["rope_short_factor"]),
                       tuple(float(x) for x in a["rope_long_factor"]))
             if a.get("rope_scaling") == "longrope" else None,
             # LongRoPE exports as Phi-3, in its fused layout (the one class computing it).
             fused=a.get("rope_scaling") == "longrope",
             qkv_bias=int(a.get("qkv_bias", 0)) == 1, norm_eps=float(a.get("norm_eps", 1e-5)),
             head_dim=int(a.get("head_dim", 0)), qk_norm=int(a.get("qk_norm", 0)) == 1,
             qk_norm_full=int(a.get("qk_norm_full", 0)) == 1,
             pre_norm=int(a.get("pre_norm", 1)) == 1,
             dbrx=(a["norm"] in (b"layernorm", "layernorm"), int(a.get("bias", 1)),
                   int(a.get("norm_bias", 0)), int(a.get("norm_weight", 1)), mlp,
                   int(a.get("moe_experts", 0)) > 0) == (True, 0, 0, 1, "swiglu", True),
             # Llama's blocks with partial rotary: GLM's (glm_hf_config refuses what GLM lacks)
             glm=(mlp, a["norm"] in (b"rmsnorm", "rmsnorm"), int(a.get("bias", 1)),
                  int(a.get("rotary_dim", 0)) > 0, int(a.get("pre_norm", 1))) ==
             ("swiglu", True, 0, True, 1),
             sliding_window=int(a.get("sliding_window", 0)),
             full_attention_every=int(a.get("full_attention_every", 0)),
             moe_experts=int(a.get("moe_experts", 0)), moe_top_k=int(a.get("moe_top_k", 0)),
             moe_normalize=int(a.get("moe_normalize", 1)) == 1,
             moe_shared_hidden=int(a.get("moe_shared_hidden", 0)),
             moe_shared_gate=int(a.get("moe_shared_gate", 0)) == 1,
             moe_first_dense=int(a.get("moe_first_dense", 0)),
             moe_every=int(a.get("moe_every", 1)),
             moe_dense_hidden=int(a.get("moe_dense_hidden", 0)))

    def tensors():
        import h5py

        with h5py.File(path, "r") as f:
            for name in expected_shapes(a):
                arr = f["model/" + name][()].astype("<f4")
                yield name, (arr[:d.vocab_size] if name in VOCAB_TENSORS
                             else arr)

    return d, tensors, f"triad checkpoint {path}"


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
    set."""
    gemma_scale = float(np.float32(math.sqrt(d.n_embd)))
    two = d.branch_norm  # Gemma 2's blocks
    refuse_absent(replace(d, sliding_window=0) if two else d,  # (Gemma 2's window: below)
                  f"a model of Gemma{' 2' if two else ''}'s blocks (GeGLU"
                  f"{', branch norms' if two else ''}) exports as Hugging Face's "
                  f"Gemma{' 2' if two else ''}",
                  ("a c_attn bias (model.qkv_bias)", d.qkv_bias),
                  ("partial rotary (model.rotary_dim)", d.rotary_dim),
                  (f"an embedding scale of {d.embed_scale} (model.embed_scale; Gemma's is "
                   f"sqrt(n_embd) = {gemma_scale})",
                   float(np.float32(d.embed_scale)) != gemma_scale),
                  (f"layers other than every second attending to the whole context "
                   f"(model.full_attention_every = {d.full_attention_every}; Gemma 2's window "
                   f"is in layers 0, 2, 4, ..)",
                   two and d.sliding_window and d.full_attention_every != 2))
    cfg = llama_like_hf(d, "GemmaForCausalLM", "gemma", head_dim=d.hd, rms_norm_eps=d.norm_eps,
                        hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
                        attention_bias=False)
    if two:
        # transformers scales by query_pre_attn_scalar ** -0.5 in double, triad by the fp32
        # attn_scale: the scalar whose power rounds to it.
        cfg.update(architectures=["Gemma2ForCausalLM"], model_type="gemma2",
                   query_pre_attn_scalar=float(d.hd) if not d.attn_scale
                   else 1.0 / float(d.attn_scale) ** 2,
                   sliding_window=d.sliding_window or d.seq_len,
                   attn_logit_softcapping=d.attn_softcap or None,
                   final_logit_softcapping=d.logit_softcap or None)
    return cfg


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
    blocks computes (the inverse of cohere_config_dims)."""
    refuse_absent(d, "a model of Cohere's blocks (parallel SwiGLU and attention on one "
                  "LayerNorm) exports as Hugging Face's Cohere",
                  ("a c_attn bias (model.qkv_bias)", d.qkv_bias),
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim),
                  ("partial rotary (model.rotary_dim)", d.rotary_dim),
                  ("branch norms (model.branch_norm)", d.branch_norm),
                  ("Granite's multipliers (model.embed_scale, attn_scale, residual_scale)",
                   d.embed_scale != 1.0 or d.attn_scale or d.residual_scale != 1.0))
    return llama_like_hf(d, "CohereForCausalLM", "cohere", layer_norm_eps=d.norm_eps,
                         logit_scale=d.logit_scale, hidden_act="silu", attention_bias=False,
                         use_qk_norm=False)


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


def olmo2_hf_config(d: Dims) -> dict:
    """config.json for transformers' Olmo2ForCausalLM computing what triad's model of OLMo-2's
    blocks (Llama's with the branch norms alone, model.pre_norm = false, and QK-norm over all
    heads, model.qk_norm_full) computes."""
    refuse_absent(d, "a model without norms before its branches (model.pre_norm = false) exports "
                     "as Hugging Face's OLMo-2",
                  ("a c_attn bias (model.qkv_bias)", d.qkv_bias),
                  ("heads of another width than n_embd / n_head (model.head_dim)", d.head_dim),
                  ("Granite's multipliers", d.multiplied), holds_qk_norm=True)
    if (d.position, d.norm, d.bias, d.mlp) != ("rope", "rmsnorm", False, "swiglu") or \
            not (d.branch_norm and d.qk_norm_full and d.norm_weight) or d.parallel_residual or \
            d.rotary_dim or d.longrope is not None or d.clip_qkv:
        raise ConvertError("a model without norms before its branches (model.pre_norm = false) "
                           "exports as Hugging Face's OLMo-2, which computes rope, RMSNorms with "
                           "weights on the branches' outputs (model.branch_norm), QK-norm over all "
                           "heads (model.qk_norm_full), SwiGLU and no biases, rotating every value")
    return llama_like_hf(d, "Olmo2ForCausalLM", "olmo2", rms_norm_eps=d.norm_eps,
                         hidden_act="silu", attention_bias=False, rope_scaling=None,
                         pad_token_id=None)


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
    """config.json for transformers' LlamaForCausalLM computing what triad computes, or
    Qwen2ForCausalLM's for a model with c_attn's bias alone (model.qkv_bias), or
    Qwen3ForCausalLM's for one with QK-norm (model.qk_norm), or MistralForCausalLM's for one with
    a sliding window (model.sliding_window), or for a mixture of experts (model.moe_experts,
    Dims.moe_format) Qwen2MoeForCausalLM's (gated shared experts), Qwen3MoeForCausalLM's
    (QK-norm) or MixtralForCausalLM's (with a sliding window or not)."""
    if d.opt:
        return opt_hf_config(d)
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
    cfg = llama_like_hf(
        d, "LlamaForCausalLM", "llama", rms_norm_eps=d.norm_eps,
        rope_scaling=None if d.rope_scaling is None else
        {"rope_type": "llama3", **dict(zip(ROPE_SCALING_HF, d.rope_scaling))},
        hidden_act="silu", attention_bias=False, mlp_bias=False)
    if d.head_dim:
        cfg["head_dim"] = d.head_dim
    if d.yarn is not None:  # HF's convention: the original context, stretched by the factor
        cfg["rope_scaling"] = {"rope_type": "yarn", **dict(zip(YARN_HF, d.yarn))}
        cfg["max_position_embeddings"] = d.yarn[3]
    if d.full_attention_every:
        raise ConvertError(f"the model's every {d.full_attention_every}th layer attends to the "
                           f"whole context (model.full_attention_every); Hugging Face's Llama, "
                           f"Mistral, Mixtral and Qwen classes hold one window for every layer")
    if not d.pre_norm:
        return olmo2_hf_config(d)
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


def write_llama_hf(out: Path, d: Dims, tensors: Tensors, extra: dict[str, str] | None) -> None:
    """triad's Llama-architecture tensors as LlamaForCausalLM's: c_attn's rows split into
    q, k and v, c_fc's into gate and up, query heads in HF's order (llama_sources,
    llama_query_order, read the other way)."""
    src = llama_sources(d)
    specs = {}  # in the order tensors() yields triad's tensors, each split into its HF parts
    # (OPT's from the GPT-2 reader, open_triad: GPT-2's order)
    for t, shape in (shapes(d) if d.opt else expected_shapes(d.attrs())).items():
        if t not in src:  # (a norm without a weight: ones, checked below)
            continue
        rows, *cols = stacked_shape(shape)
        rows = d.vocab_size if t in VOCAB_TENSORS else rows
        if d.opt and t == "wpe/weight":  # OPT's 2 offset rows first
            rows += 2
        for n, r in zip(src[t], llama_part_rows(d, t, rows)):
            specs[n] = tuple(shape) if whole_experts(d, t) else \
                (r, d.n_embd) if d.dbrx and "/mlp/experts/" in t else (r, *cols)

    def hf_tensors():
        for t, a in tensors():
            if t not in src:  # model.norm_weight = false: the frozen ones, which OLMo has not
                if not np.all(ones_for(d, t, a.shape) == a):
                    raise ConvertError(f"tensor {t} is not all ones, which a model without "
                                       f"norm weights (model.norm_weight = false) must hold")
                continue
            if d.norm_offset and is_norm_weight(t):  # Nemotron's LayerNorm1P stores w - 1
                a = a - np.float32(1)
            a = neox_qkv_order(d, t, a, to_hf=True)
            a = llama_query_order(d, t, a, to_hf=True)
            a = interleaved_rope_order(d, t, a, to_hf=True)
            a = dbrx_expert_order(d, t, opt_positions(d, t, a, to_hf=True), to_hf=True)
            if whole_experts(d, t):  # GraniteMoE's: the [E, rows, columns] tensor as it is
                yield src[t][0], np.ascontiguousarray(a)
                continue
            a = falcon_qkv_order(d, t, a, to_hf=True).reshape(stacked_shape(a.shape))
            ends = np.cumsum(llama_part_rows(d, t, a.shape[0]))[:-1]
            for n, part in zip(src[t], np.split(a, ends)):
                yield n, np.ascontiguousarray(part)

    write_hf_directory(out, specs, hf_tensors(), llama_hf_config(d), extra)


# ---------------------------------------------------------------- the command

def open_source(src: Path, seq_len: int | None) -> Tuple[Dims, Tensors, str]:
    if not src.exists():
        raise ConvertError(f"{src}: no such file or directory")
    if src.is_dir() or src.suffix == ".safetensors":
        return open_hf(src, seq_len)
    with open(src, "rb") as f:
        head = f.read(8)
    if file_kind(src) == "hdf5":
        raise ConvertError(f"{src}: is already HDF5 (a triad checkpoint?); import reads HF "
                           f"model directories, .safetensors files and llm.c model files")
    if len(head) >= 4 and int.from_bytes(head[:4], "little") == LLMC_MAGIC:
        return open_llmc(src, seq_len)
    raise ConvertError(f"{src}: neither an HF model directory, a .safetensors file nor an llm.c "
                       f"model file (magic {LLMC_MAGIC})")


def finite_only(tensors: Tensors, src: str) -> Tensors:
    """The tensors, each checked on the way: a NaN or an infinity (a diverged run's weights, a
    damaged file) is refused by the tensor's name, and nothing is written."""
    def checked() -> Iterator[Tuple[str, np.ndarray]]:
        for name, a in tensors():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                bad = int(a.size - np.count_nonzero(np.isfinite(a)))
                raise ConvertError(f"{src}: tensor {name} holds {bad} NaN or infinite value(s)")
            yield name, a
    return checked


def check_output(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise ConvertError(f"{out}: already exists (remove it first; a conversion never "
                           f"replaces a file)")
    if not out.parent.is_dir():
        raise ConvertError(f"{out.parent}: no such directory")


def finish(out: Path, write: Callable[[Path], None], directory: bool = False) -> None:
    """Writes into a fresh temporary name beside `out` and publishes it only where nothing is:
    a file by a hard link (which fails on an existing name) or, where the file system has no
    hard links, a rename after a last check; a directory by creating `out` (which fails on an
    existing name) and moving the finished files into it. Never replaces anything; a failure
    leaves nothing behind."""
    check_output(out)
    prefix = f".{out.name}."
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=prefix, suffix=".partial"))
    else:
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=prefix, suffix=".partial")
        os.close(fd)
        tmp = Path(name)
    try:
        write(tmp)
        if directory:
            try:
                out.mkdir()
            except FileExistsError:
                check_output(out)
                raise
            for f in sorted(tmp.iterdir()):
                os.rename(f, out / f.name)
            tmp.rmdir()
        else:
            try:
                os.link(tmp, out)
            except FileExistsError:
                check_output(out)
                raise
            except OSError:  # no hard links here
                check_output(out)
                os.rename(tmp, out)
            if tmp.exists():
                tmp.unlink()
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def is_description(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.readline().strip() == hf_tokenizer.DESCRIPTION_MAGIC.encode()


def description_files(path: Path, d: Dims) -> Dict[str, str]:
    """An HF export's tokenizer.json and tokenizer_config.json from a tokenizer description."""
    try:
        desc = hf_tokenizer.read_description(path)
    except hf_tokenizer.TokenizerError as e:
        raise ConvertError(f"--vocab: {e}") from None
    if desc.vocab_size != d.vocab_size:
        raise ConvertError(f"--vocab {path}: the tokenizer has {desc.vocab_size} tokens, the "
                           f"model {d.vocab_size}")
    return hf_tokenizer.hf_files(desc, d.seq_len)


def tokenizer_vocab(arg: str | None, d: Dims) -> Tuple[Path | None, str]:
    """The ranks file for an HF export's tokenizer files (or None) and a note for the output."""
    if arg == "none":
        return None, "; no tokenizer files (--vocab none)"
    if arg is not None:
        if not Path(arg).is_file():
            raise ConvertError(f"--vocab {arg}: no such file")
        if is_description(Path(arg)):
            return Path(arg), "; tokenizer.json from " + arg
        if d.vocab_size != 50257:
            raise ConvertError(f"--vocab {arg}: the model has {d.vocab_size} tokens, not GPT-2's "
                               f"50257; give --vocab none")
        return Path(arg), "; GPT-2's tokenizer files from " + arg
    for p in (Path("data/vocab/gpt2.tiktoken"),
              Path(__file__).resolve().parent.parent / "data" / "vocab" / "gpt2.tiktoken"):
        if p.is_file() and d.vocab_size == 50257:
            return p, f"; GPT-2's tokenizer files from {p}"
    why = "its vocabulary is not GPT-2's" if d.vocab_size != 50257 else \
        "data/vocab/gpt2.tiktoken not found: give --vocab"
    return None, f"; no tokenizer files ({why})"


def convert_tokenizer(prog: str, args) -> int:
    src, out = Path(args.src), Path(args.out)
    check_output(out)
    try:
        if sum(map(bool, (args.meta_llama3, args.sentencepiece, args.tekken))) > 1:
            raise ConvertError("--meta-llama3, --sentencepiece and --tekken: give one")
        if args.tekken and (args.document_start or args.prompt_start or args.stop):
            raise ConvertError("--tekken sets <s> as document and prompt start and </s> as "
                               "stop; --document-start, --prompt-start and --stop apply to a "
                               "tokenizer.json or a SentencePiece model")
        if args.tekken:
            desc = hf_tokenizer.from_tekken(src)
            source = f"Mistral's Tekken tokenizer {src}"
        elif args.sentencepiece:
            desc = hf_tokenizer.from_sentencepiece(src, args.document_start, args.prompt_start,
                                                   args.stop)
            source = f"SentencePiece model {src}"
        elif args.meta_llama3:
            if args.document_start or args.prompt_start or args.stop:
                raise ConvertError("--meta-llama3 sets Llama 3's document start, prompt start "
                                   "and stop tokens; --document-start, --prompt-start and "
                                   "--stop apply to a tokenizer.json")
            desc = hf_tokenizer.from_meta_llama3(src)
            source = f"Meta's Llama 3 tokenizer {src}"
        else:
            desc = hf_tokenizer.from_hf(src, args.document_start, args.prompt_start, args.stop)
            source = f"Hugging Face tokenizer {src}"
    except hf_tokenizer.TokenizerError as e:
        reading_as = "tekken" if args.tekken else "sentencepiece" if args.sentencepiece else \
            "tiktoken" if args.meta_llama3 else "hf"
        raise ConvertError(str(e) + hf_tokenizer.sniff_hint(src, reading_as)) from None
    if args.chat is not None:
        desc.chat = None if args.chat == "none" else args.chat
    files = desc.files(f"converted from {source}")

    def write(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")

    finish(out, write, directory=True)
    print(f"{prog}: wrote {out}/tokenizer.triad ({desc.summary()}) from {source}")
    return 0


def main(argv: list[str] | None = None) -> int:
    prog = prog_name("python -m analysis.convert_weights")
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="an HF model or llm.c model file -> a triad checkpoint")
    imp.add_argument("src", help="HF model directory, .safetensors file or llm.c .bin file")
    imp.add_argument("out", help="the triad checkpoint to write (.h5; must not exist)")
    imp.add_argument("--seq-len", type=int, help="keep the first N positions (default: all)")
    exp = sub.add_parser("export", help="a triad checkpoint -> an HF model or llm.c model file")
    exp.add_argument("ckpt", help="a checkpoint file, checkpoint directory or run directory")
    exp.add_argument("out", help="the HF model directory or llm.c file to write (must not exist)")
    exp.add_argument("--to", choices=("hf", "llmc"), required=True)
    exp.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                     help="llm.c file precision (default fp32; bf16 rounds to nearest even)")
    exp.add_argument("--vocab", help="--to hf: GPT-2's BPE ranks, for GPT-2's tokenizer files, "
                     "or a tokenizer description (tokenizer.triad), for a tokenizer.json "
                     "(default data/vocab/gpt2.tiktoken when found and the vocabulary is "
                     "GPT-2's; none: no tokenizer files)")
    tok = sub.add_parser("tokenizer", help="an HF tokenizer.json, Meta's Llama 3 "
                         "tokenizer.model or a SentencePiece model -> a triad tokenizer "
                         "description")
    tok.add_argument("src", help="HF model directory or its tokenizer.json (with --meta-llama3 "
                     "or --sentencepiece: the tokenizer.model)")
    tok.add_argument("out", help="directory to create (must not exist) for tokenizer.triad "
                     "(give it to --vocab / data.vocab) and the ranks file (or pieces and merges files) "
                     "it names")
    tok.add_argument("--meta-llama3", action="store_true",
                     help="src is Meta's Llama 3 tokenizer.model (tiktoken's format)")
    tok.add_argument("--tekken", action="store_true",
                     help="src is Mistral's tekken.json (Mistral NeMo, Small 3, Ministral)")
    tok.add_argument("--chat", choices=(*hf_tokenizer.CHAT_FORMATS, "none"),
                     help="the chat format of the model's instruct version, for triad-generate "
                     "--chat auto (default: told from the tokenizer where it can be: llama3, "
                     "Mistral's v3 and v7 formats; none: no chat line)")
    tok.add_argument("--sentencepiece", action="store_true",
                     help="src is a SentencePiece BPE model (Llama 2's or Mistral's "
                     "tokenizer.model)")
    tok.add_argument("--document-start", type=token_arg, help="special token before each "
                     "document (default: the BOS the tokenizer adds, else its eos_token)")
    tok.add_argument("--prompt-start", type=token_arg, help="special token before each prompt "
                     "(default: the BOS the tokenizer adds; none: no token)")
    tok.add_argument("--stop", action="append", type=token_arg, help="special token that ends "
                     "generation (repeat for several; default: generation_config.json's "
                     "eos_token_id, else config.json's, else tokenizer_config.json's eos_token)")
    args = ap.parse_args(argv)

    def body() -> int:
        if args.command == "tokenizer":
            return convert_tokenizer(prog, args)
        if args.command == "import":
            if args.seq_len is not None and args.seq_len <= 0:
                raise ConvertError(f"--seq-len {args.seq_len}: must be positive")
            check_output(Path(args.out))
            d, tensors, source = open_source(Path(args.src), args.seq_len)
            tensors = finite_only(tensors, args.src)
            finish(Path(args.out), lambda p: write_triad(p, d, tensors, source))
        else:
            if args.to == "hf" and args.dtype != "fp32":
                raise ConvertError("--dtype applies to --to llmc; HF exports are fp32")
            if args.to != "hf" and args.vocab is not None:
                raise ConvertError("--vocab applies to --to hf")
            check_output(Path(args.out))
            d, tensors, source = open_triad(Path(args.ckpt))
            tensors = finite_only(tensors, args.ckpt)
            if args.to == "llmc" and not d.gpt2:
                raise ConvertError(f"{args.ckpt}: llm.c's model file holds GPT-2 only; a model "
                                   f"of Llama's architecture exports with --to hf")
            if args.to == "llmc" and d.norm_eps != 1e-5:
                raise ConvertError(f"{args.ckpt}: the model's LayerNorm epsilon is "
                                   f"{d.norm_eps} (model.norm_eps); llm.c computes with 1e-5 "
                                   f"(export with --to hf)")
            if args.to == "hf":
                if not (d.gpt2 or d.bigcode):  # a model no HF class computes: refused up front
                    try:
                        llama_hf_config(d)
                    except ConvertError as e:
                        raise ConvertError(f"{args.ckpt}: {e}")
                vocab, note = tokenizer_vocab(args.vocab, d)
                try:  # before the weights: a bad ranks file costs no export
                    if vocab and is_description(vocab):
                        files = description_files(vocab, d)
                    else:
                        files = tokenizer_files(vocab, d.seq_len) if vocab else {}
                except (OSError, ValueError) as e:
                    raise ConvertError(f"{e}" if str(vocab) in str(e) else f"{vocab}: {e}")
                write = write_hf if d.gpt2 or d.bigcode else write_llama_hf
                finish(Path(args.out), lambda p: write(p, d, tensors, files), directory=True)
                source += note
            else:
                finish(Path(args.out), lambda p: write_llmc(p, d, tensors, args.dtype))
        kv = f" ({d.kv} key/value)" if d.kv != d.n_head else ""
        print(f"{prog}: wrote {args.out} ({d.n_layer} layers, {d.n_head} heads{kv}, n_embd "
              f"{d.n_embd}, seq_len {d.seq_len}, vocab {d.vocab_size}) from {source}")
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    raise SystemExit(main())
