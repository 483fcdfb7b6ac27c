"""Where each triad tensor lives in a Hugging Face model's files: the names (GPT-2's hf_name,
each family's *_sources), the row and column orders that differ from triad's (*_order,
position_rows) and the tensors the files do not hold (unstored_tensor), used both ways: by the
import (weights_hf_import.py) and the export (weights_hf_export.py)."""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from .weights_dims import ConvertError, Dims

# CodeGen's qkv_proj: its rows in this many blocks (its code's mp_num), each q | v | k for a
# block of the heads.
CODEGEN_BLOCKS = 4


def hf_name(name: str, d: Dims | None = None) -> Tuple[str, bool]:
    """triad name -> (HF name without the `transformer.` prefix, stored transposed: GPT-2's
    Conv1D matrices, not GPT-BigCode's nn.Linear ones, Dims.bigcode)."""
    parts = name.split("/")
    return ".".join(parts), name.endswith("weight") and parts[-2] in ("c_attn", "c_proj", "c_fc") \
        and not (d is not None and d.bigcode)


def opt_sources(d: Dims) -> dict[str, list[str]]:
    """Each triad tensor of an OPT model and the HF tensors it is made of (c_attn's from q, k
    and v, stacked by rows; wpe from embed_positions past its 2 offset rows: position_rows)."""
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


def gpt_neo_sources(d: Dims) -> dict[str, list[str]]:
    """Each triad tensor of a GPT-Neo model and the HF tensors it is made of (c_attn's weight from
    q, k and v, stacked by rows; its bias from none: unstored_tensor)."""
    src = {"wte/weight": ["transformer.wte.weight"], "wpe/weight": ["transformer.wpe.weight"]}
    for i in range(d.n_layer):
        p, h = f"h/{i}/", f"transformer.h.{i}."
        src[p + "attn/c_attn/weight"] = [h + f"attn.attention.{x}_proj.weight" for x in "qkv"]
        for kind in ("weight", "bias"):
            src.update({
                p + f"ln_1/{kind}": [h + f"ln_1.{kind}"],
                p + f"attn/c_proj/{kind}": [h + f"attn.attention.out_proj.{kind}"],
                p + f"ln_2/{kind}": [h + f"ln_2.{kind}"],
                p + f"mlp/c_fc/{kind}": [h + f"mlp.c_fc.{kind}"],
                p + f"mlp/c_proj/{kind}": [h + f"mlp.c_proj.{kind}"],
            })
    src.update({"ln_f/weight": ["transformer.ln_f.weight"],
                "ln_f/bias": ["transformer.ln_f.bias"]})
    return src


def position_offset(d: Dims) -> int:
    """The rows of a learned position table before position 0's: OPT's 2 (embed_positions'
    offset), GPT-Neo's none."""
    return 2 if d.opt else 0


def position_rows(d: Dims, t: str, a: np.ndarray, to_hf: bool = False) -> np.ndarray:
    """OPT's embed_positions (position p at row p + 2) or GPT-Neo's wpe (longer than the context
    kept) as triad's wpe, rows offset .. offset + seq_len, or (to_hf) wpe with the offset's zero
    rows before it. Other tensors pass."""
    if not ((d.opt or d.gpt_neo) and t == "wpe/weight"):
        return a
    k = position_offset(d)
    if to_hf:
        return np.concatenate([np.zeros((k, a.shape[1]), dtype=a.dtype), a]) if k else a
    return a[k:k + d.seq_len]


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


def gptj_sources(d: Dims) -> dict[str, list[str]]:
    """Each triad tensor of a GPT-J model and the HF tensors it is made of (c_attn's from q, k and
    v, stacked by rows; CodeGen's from its qkv_proj, codegen_qkv_order)."""
    src = {"wte/weight": ["transformer.wte.weight"]}
    for i in range(d.n_layer):
        p, h = f"h/{i}/", f"transformer.h.{i}."
        src.update({p + "attn/c_attn/weight": [h + "attn.qkv_proj.weight"] if d.codegen else
                    [h + f"attn.{x}_proj.weight" for x in "qkv"],
                    p + "attn/c_proj/weight": [h + "attn.out_proj.weight"]})
        for kind in ("weight", "bias"):
            src.update({p + f"ln_1/{kind}": [h + f"ln_1.{kind}"],
                        p + f"mlp/c_fc/{kind}": [h + f"mlp.fc_in.{kind}"],
                        p + f"mlp/c_proj/{kind}": [h + f"mlp.fc_out.{kind}"]})
    src.update({"ln_f/weight": ["transformer.ln_f.weight"], "ln_f/bias": ["transformer.ln_f.bias"],
                "lm_head/weight": ["lm_head.weight"], "lm_head/bias": ["lm_head.bias"]})
    return src


def codegen_qkv_order(d: Dims, t: str, a: np.ndarray) -> np.ndarray:
    """c_attn's weight from CodeGen's qkv_proj rows, 4 blocks (CODEGEN_BLOCKS) each [q | v | k]
    for its quarter of the heads in order, to q | k | v (GPT-J's, still in interleaved rope
    pairs: interleaved_rope_order's input)."""
    if not d.codegen or not t.endswith("attn/c_attn/weight"):
        return a
    x = a.reshape(CODEGEN_BLOCKS, 3, -1, a.shape[1])  # [block, q|v|k, its heads' rows, C]
    return np.ascontiguousarray(np.concatenate([x[:, j].reshape(-1, a.shape[1])
                                                for j in (0, 2, 1)]))


def pair_order(r: int) -> np.ndarray:
    """r rotated values in pairs (2i, 2i + 1) as triad's rotate-half pairs (i, i + r/2): triad's
    value j is the interleaved one order[j]."""
    return np.concatenate([np.arange(0, r, 2), np.arange(1, r, 2)])


def interleaved_rope_order(d: Dims, t: str, a: np.ndarray, to_hf: bool = False) -> np.ndarray:
    """c_attn's weight (and bias) with each q and k head's rotating rows (the first r =
    rotary_dim, or all hd) from Cohere's, GPT-J's and GLM's rope pairs (2i, 2i + 1) to triad's
    (i, i + r/2): triad's row i is HF's 2i, row r/2 + i HF's 2i + 1; or (to_hf) back. v's rows and
    the rows past r stay. Only for those blocks (Dims.cohere, Dims.gptj, Dims.glm)."""
    if not ((d.cohere or d.gptj or d.glm) and t.endswith(("attn/c_attn/weight",
                                                         "attn/c_attn/bias"))):
        return a
    hd, r = d.hd, d.rotary_dim or d.hd
    order = np.concatenate([pair_order(r), np.arange(r, hd)])  # triad row: HF order[row]
    if to_hf:
        order = np.argsort(order)
    qk = (d.n_head + d.kv) * hd  # q's and k's rows, head by head
    heads = a[:qk].reshape(d.n_head + d.kv, hd, -1)[:, order].reshape(qk, *a.shape[1:])
    return np.concatenate([heads, a[qk:]])


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
    if d.deepseek:
        from .weights_hf_deepseek import deepseek_sources  # (which imports named_experts)
        return deepseek_sources(d)
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
    if d.gpt_neo:
        return gpt_neo_sources(d)
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
            # ones: unstored_tensor); OLMo-2 has none before the branches, nor does triad's model
            # then
            for t in ("ln_1/weight", "ln_2/weight"):
                src.pop(p + t, None)
        if d.moe_layer(i) and d.moe_format in ("qwen2_moe", "qwen3_moe", "olmoe"):  # sparse MLP
            m = h + "mlp."
            src.update(named_experts(p, m, d.moe_experts))
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


def named_experts(p: str, m: str, experts: int) -> dict[str, list[str]]:
    """Layer prefix p's experts and router from HF tensors under module m: each expert's
    gate_proj and up_proj (stacked into its c_fc) and down_proj, `experts.{e}.`, and the router
    `gate` (Qwen2-MoE's, Qwen3-MoE's, OLMoE's and DeepSeek's names)."""
    names = [m + f"experts.{e}." for e in range(experts)]
    return {p + "mlp/experts/c_fc/weight": [e + f"{w}_proj.weight" for e in names
                                            for w in ("gate", "up")],
            p + "mlp/experts/c_proj/weight": [e + "down_proj.weight" for e in names],
            p + "mlp/router/weight": [m + "gate.weight"]}


def llama_part_rows(d: Dims, t: str, rows: int) -> list[int]:
    """The rows of each HF tensor (llama_sources) stacked into triad's tensor t of `rows` rows
    (an expert tensor's E·rows): c_attn's q (C), k and v (n_kv_head heads each), c_fc's gate and
    up, and each expert's; Phi-3's fused tensors whole."""
    if d.neox or d.falcon or (d.fused and t.endswith(("attn/c_attn/weight", "mlp/c_fc/weight"))) \
            or (d.codegen and t.endswith("attn/c_attn/weight")) \
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
    under model.qk_norm_full, one per q value; attn/sinks, one per head); k and v stay."""
    q_norm = d.qk_norm_full and t.endswith("attn/q_norm/weight")
    if d.kv == d.n_head or not (q_norm or t.endswith(("attn/c_attn/weight", "attn/c_attn/bias",
                                                      "attn/c_proj/weight", "attn/sinks"))):
        return a  # one key/value head per query head: the orders agree
    nh, hd, g = d.n_head, d.hd, d.n_head // d.kv
    h = np.arange(nh)
    order = (h % d.kv) * g + h // d.kv  # triad's head h is HF's head order[h]
    if to_hf:
        order = np.argsort(order)  # HF's head h' is triad's head order[h']
    if q_norm:
        return a.reshape(nh, hd)[order].reshape(a.shape)
    if t.endswith("attn/sinks"):
        return a[order]
    if t.endswith(("c_attn/weight", "c_attn/bias")):  # q: the first C rows, head-major
        q = a[:d.attn_width].reshape(nh, hd, -1)[order].reshape(d.attn_width, *a.shape[1:])
        return np.concatenate([q, a[d.attn_width:]])
    return a.reshape(a.shape[0], nh, hd)[:, order].reshape(a.shape)  # o_proj's input columns


def unstored_tensor(d: Dims, t: str, shape: tuple) -> np.ndarray:
    """A tensor of triad's model that the Hugging Face files do not hold, as the import makes
    it: the weight of a norm under model.norm_weight = false (ones), GPT-Neo's c_attn bias
    (zeros; the export folds a fine-tuned one, GptNeoBiasFolding)."""
    if d.gpt_neo and t.endswith("attn/c_attn/bias"):
        return np.zeros(shape, dtype="<f4")
    if d.norm_weight or not is_norm_weight(t):
        raise ConvertError(f"tensor {t} has no source in the Hugging Face files")
    return np.ones(shape, dtype="<f4")


def stored_minus_one(d: Dims, t: str) -> bool:
    """Whether the Hugging Face files hold triad tensor t as w - 1 (the norm scales by 1 + w):
    Nemotron's LayerNorm1P and Gemma's RMSNorms (Dims.norm_offset), Gemma 3's q and k norms too."""
    return d.norm_offset and (is_norm_weight(t) or t.endswith(("attn/q_norm/weight",
                                                                "attn/k_norm/weight")))


def is_norm_weight(t: str) -> bool:
    """Whether triad tensor t is a LayerNorm's (or RMSNorm's) weight: ln_1, ln_2, the branch
    norms, ln_f."""
    return t.endswith(("ln_1/weight", "ln_2/weight", "ln_attn_out/weight",
                       "ln_mlp_out/weight")) or t == "ln_f/weight"
