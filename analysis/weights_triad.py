"""triad checkpoints in and out: a weights-only checkpoint written at step 0 (write_triad; its
string attributes by _string_attr, which average_checkpoints.py shares) and a checkpoint read
for export, its /model attributes as Dims (open_triad, open_triad_llama), refusing mixtures of
experts no Hugging Face format holds."""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path
from typing import Tuple

import numpy as np

from .inspect_checkpoint import expected_shapes, inspect, resolve_checkpoint_path
from .weights_dims import (ConvertError, Dims, ROPE_SCALING_ATTRS, Tensors, VOCAB_TENSORS,
                           YARN_ATTRS, shapes, triad_names)
from .weights_hf_deepseek import deepseek_checkpoint_dims
from .weights_hf_gpt_oss import gpt_oss_checkpoint_dims


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

        def checked(name, a):  # a dataset with its CRC-32 `checksum`
            ds = f.create_dataset(name, data=a, dtype="<f4")
            ds.attrs.create("checksum", np.uint32(zlib.crc32(a.tobytes()) & 0xFFFFFFFF),
                            dtype="<u4")

        for name, a in tensors():
            a = np.ascontiguousarray(a, dtype="<f4")
            if name.startswith("router_bias/"):  # a router's biases (DeepSeek-V3's), not a
                checked(name, a)  # parameter: their own group, read by triad-train and -generate
                continue
            if name in VOCAB_TENSORS:
                a = np.concatenate([a, np.zeros((want[name][0] - a.shape[0], *a.shape[1:]),
                                                "<f4")])
            assert a.shape == want[name], (name, a.shape, want[name])
            checked(f"model/{name}", a)
        f.flush()
        f.attrs.create("complete", i64(1), dtype="<i8")


def open_triad(src: Path) -> Tuple[Dims, Tensors, str]:
    """A complete triad checkpoint whose checksums verify (a run directory, checkpoint
    directory or file). Its multi-token prediction modules (model.mtp_depth) go where the format
    holds them (DeepSeek-V3's prediction layers); elsewhere they are left out, and the source's
    description says so."""
    path = resolve_checkpoint_path(src)
    rep = inspect(path, verify=True)
    if not rep.ok:
        raise ConvertError(rep.headline())
    d, tensors, source = open_triad_model(path, rep.model_attrs)
    depth = int(rep.model_attrs.get("mtp_depth", 0))
    if depth and d.mtp_layers:
        source += (f"; its {depth} multi-token prediction module(s) as the prediction layers "
                   f"after layer {d.n_layer - 1}")
    elif depth:
        source += (f"; its {depth} multi-token prediction module(s) (mtp/*, model.mtp_depth) "
                   f"left out: the format has none")
    return d, tensors, source


def open_triad_model(path: Path, a: dict) -> Tuple[Dims, Tensors, str]:
    """open_triad's model: the export format's dims and tensors of a verified checkpoint (its
    /model attributes `a`)."""
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
    # GPT-Neo's: GPT-2's blocks (learned positions) with unscaled attention scores.
    gpt_neo = a.get("position", "learned") == "learned" and float(a.get("attn_scale", 0.0)) == 1.0
    if int(a.get("attn_sinks", 0)):  # gpt-oss's blocks: its format alone holds the sinks
        return open_triad_gpt_oss(path, a)
    if (float(a.get("glu_alpha", 1.0)), float(a.get("glu_limit", 0.0)),
            float(a.get("glu_offset", 0.0))) != (1.0, 0.0, 0.0):
        raise ConvertError(f"{path}: the model's SwiGLU has gpt-oss's shape (model.glu_alpha, "
                           f"glu_limit, glu_offset) without attention sinks; only Hugging Face's "
                           f"gpt-oss of the export formats holds it, with them (model.attn_sinks)")
    if int(a.get("moe_experts", 0)) and int(a.get("moe_bias", 0)):
        raise ConvertError(f"{path}: the model's router and experts have biases (model.moe_bias, "
                           f"gpt-oss's) without attention sinks; only Hugging Face's gpt-oss of "
                           f"the export formats holds them, with them (model.attn_sinks)")
    if int(a.get("full_attention_first", 0)) and not gpt_neo:
        raise ConvertError(f"{path}: the model's full-attention layers start each group of "
                           f"{a.get('full_attention_every')} (model.full_attention_first) in "
                           f"blocks other than GPT-Neo's (GPT-2's with model.attn_scale = 1); only "
                           f"Hugging Face's GPT-Neo of the export formats holds that order")
    if int(a.get("head_bias", 0)) and not (phi or gptj):
        raise ConvertError(f"{path}: the model's head has a bias (model.head_bias) in blocks other "
                           f"than Phi's and GPT-J's; only Hugging Face's Phi and GPT-J of the "
                           f"export formats have one")
    if int(a.get("kv_lora_rank", 0)) > 0:  # multi-head latent attention: DeepSeek's format
        return open_triad_deepseek(path, a)
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
    if float(a.get("attn_scale", 0.0)) and not (gemma2 or granite or gpt_neo):
        raise ConvertError(f"{path}: the model scales its attention scores by {a['attn_scale']} "
                           f"(model.attn_scale); the export formats but Gemma 2's "
                           f"(query_pre_attn_scalar), Granite's (attention_multiplier) and "
                           f"GPT-Neo's (1, learned positions) scale them by 1/sqrt(head width) "
                           f"only")
    if a.get("qk_norm", 0) == 1 and not llama:  # Qwen3's blocks hold it; no other format
        raise ConvertError(f"{path}: the model normalizes each attention head's q and k "
                           f"(model.qk_norm = true, tensors attn/q_norm and attn/k_norm) in "
                           f"blocks other than Llama's; only Hugging Face's Qwen3 (Llama's "
                           f"blocks) holds such weights, so it is not exported")
    if int(a.get("moe_experts", 0)):  # Hugging Face's Mixtral is the one format with experts
        refuse_unexported_experts(path, a, (llama and not gemma) or dbrx, dbrx)
        # DeepSeek-V3's balancing biases (train.moe_bias_rate)
        if any(np.any(b != 0) for b in router_biases(path).values()):
            raise ConvertError(f"{path}: the model's routers choose their experts with biases "
                               f"(/router_bias, train.moe_bias_rate); Hugging Face's Mixtral, "
                               f"Qwen2-MoE and Qwen3-MoE have none")
    if llama or norm_biased or neox or falcon or cohere or phi or gptj or olmo or dbrx:
        return open_triad_llama(path, a)
    if int(a.get("sliding_window", 0)) and not gpt_neo:
        raise ConvertError(f"{path}: the model attends to its last {a['sliding_window']} tokens "
                           f"(model.sliding_window); GPT-2's formats attend to the whole context "
                           f"(Llama's architecture exports a window as Hugging Face's Mistral; "
                           f"GPT-2's blocks with model.attn_scale = 1 as GPT-Neo)")
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
    if gpt_neo:
        unlike = [what for what, off in (
            (f"model.mlp = {a.get('mlp')} (GPT-Neo's MLP is GELU's)",
             a.get("mlp", "gelu") not in ("gelu", "gelu_exact")),
            ("model.tie_embeddings = false (GPT-Neo's head is wte)",
             int(a.get("tie_embeddings", 1)) != 1),
            (f"model.n_kv_head = {a.get('n_kv_head')} (GPT-Neo has a key/value head per query "
             f"head)", int(a.get("n_kv_head", d.n_head)) != d.n_head)) if off]
        if unlike:
            raise ConvertError(f"{path}: the model's blocks with learned positions and unscaled "
                               f"attention scores (model.attn_scale = 1) are GPT-Neo's but for "
                               f"{'; '.join(unlike)}")
        # (any MLP width: GPT-Neo's intermediate_size)
        d = replace(d, gpt_neo=True, attn_scale=1.0, mlp_hidden=int(a.get("mlp_hidden", 0)),
                    mlp=a.get("mlp", "gelu"), sliding_window=int(a.get("sliding_window", 0)),
                    full_attention_every=int(a.get("full_attention_every", 0)),
                    full_attention_first=int(a.get("full_attention_first", 0)) == 1)
    elif a.get("mlp", "gelu") in ("relu", b"relu"):  # OPT's blocks
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


def checkpoint_tensors(path: Path, a: dict, vocab_size: int, modules: bool = False):
    """The parameters of a checkpoint with /model attributes `a`, in checkpoint order, as fp32,
    the vocabulary tensors cropped to vocab_size rows (the multi-token prediction modules' left
    out unless `modules`)."""
    import h5py

    with h5py.File(path, "r") as f:
        for name in expected_shapes(a):
            if name.startswith("mtp/") and not modules:  # (DeepSeek-V3's format alone has them)
                continue
            arr = f["model/" + name][()].astype("<f4")
            yield name, (arr[:vocab_size] if name in VOCAB_TENSORS else arr)


def router_biases(path: Path) -> dict[str, np.ndarray]:
    """A checkpoint's routers' biases (/router_bias/h/{i}, DeepSeek-V3's; router_bias/mtp/{j},
    its multi-token prediction modules') by name; none in a file from before them."""
    import h5py
    with h5py.File(path, "r") as f:
        if "router_bias" not in f:
            return {}
        return {f"router_bias/{g}/{i}": d[()].astype("<f4")
                for g in ("h", "mtp") if g in f["router_bias"]
                for i, d in f["router_bias/" + g].items()}


def open_triad_gpt_oss(path: Path, a: dict) -> Tuple[Dims, Tensors, str]:
    """A triad checkpoint with attention sinks, for Hugging Face's gpt-oss format (refused
    where that does not compute it: gpt_oss_checkpoint_dims)."""
    biases = router_biases(path)
    d = gpt_oss_checkpoint_dims(path, a, any(np.any(b != 0) for b in biases.values()))

    def tensors():
        yield from checkpoint_tensors(path, a, d.vocab_size)

    return d, tensors, f"triad checkpoint {path}"


def open_triad_deepseek(path: Path, a: dict) -> Tuple[Dims, Tensors, str]:
    """A triad checkpoint of multi-head latent attention, for Hugging Face's DeepSeek-V3 (or,
    routed by softmax, V2) format: its tensors in triad's names, then (V3 with experts) the
    routers' biases, zero where the file has none."""
    biases = router_biases(path)
    d = deepseek_checkpoint_dims(path, a, any(np.any(b != 0) for b in biases.values()))

    def tensors():
        yield from checkpoint_tensors(path, a, d.vocab_size, modules=d.mtp_layers > 0)
        if d.deepseek == "deepseek_v3":
            blocks = [(f"h/{i}", i) for i in range(d.n_layer)] + \
                [(f"mtp/{j}", d.n_layer + j) for j in range(d.mtp_layers)]
            for name, i in blocks:
                if d.moe_layer(i):
                    name = "router_bias/" + name
                    yield name, biases.get(name, np.zeros(d.moe_experts, dtype="<f4"))

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
    if a.get("rope_scaling") == "yarn" and not int(a.get("rope_yarn_truncate", 1)):
        raise ConvertError(f"{path}: YaRN's ramp between unrounded ends (model.rope_yarn_truncate "
                           f"= false, gpt-oss's) has no Hugging Face Llama-family export: "
                           f"transformers before 4.55 ignore rope_scaling's truncate and round "
                           f"them")
    neox_like = mlp in ("gelu", "gelu_exact") and int(a.get("bias", 1)) == 1 and \
        not int(a.get("shared_norm", 0))  # (shared: Phi's)
    starcoder2 = neox_like and not int(a.get("parallel_residual", 0)) and (
        int(a.get("n_kv_head", a["n_head"])) != int(a["n_head"]) or
        int(a.get("sliding_window", 0)) > 0)
    d = Dims(*(int(a[k]) for k in ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size")),
             position="rope", rope_theta=float(a["rope_theta"]),
             rope_local_theta=float(a.get("rope_local_theta", 0.0)),
             rope_linear=float(a["rope_scaling_factor"]) if a.get("rope_scaling") == "linear"
             else 0.0,
             norm=a["norm"].decode() if isinstance(a["norm"], bytes) else str(a["norm"]),
             bias=int(a.get("bias", 1)) == 1, norm_bias=int(a.get("norm_bias", 0)) == 1,
             norm_weight=int(a.get("norm_weight", 1)) == 1,
             rotary_dim=int(a.get("rotary_dim", 0)), nope_every=int(a.get("nope_every", 0)),
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

    return d, lambda: checkpoint_tensors(path, a, d.vocab_size), f"triad checkpoint {path}"
