"""Hugging Face model directories in (triad-convert import): config.json read as Dims (GPT-2's
and GPT-BigCode's here, the other families' by weights_hf_families.py) and the safetensors'
tensors as triad's (GPT-2's names, or the Llama-like families' through weights_hf_layout.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Tuple

import numpy as np

from .weights_dims import ConvertError, Dims, Tensors, hf_shapes, shapes
from .weights_hf_families import (TANH_GELU, cohere_config_dims, dbrx_config_dims,
                                  falcon_config_dims, gemma_config_dims, glm_config_dims,
                                  gptj_config_dims, layernorm_config_dims, llama_config_dims,
                                  neox_config_dims, opt_config_dims, phi_config_dims,
                                  refuse_or_check_positions, starcoder2_config_dims)
from .weights_hf_deepseek import (DEEPSEEK_COUNT_KEYS, deepseek_config_dims, dequantize_fp8,
                                  deepseek_copies, is_skipped_deepseek_tensor, mla_rope_order)
from .weights_hf_gpt_neo import gpt_neo_config_dims
from .weights_hf_gpt_oss import (gpt_oss_config_dims, gpt_oss_tensors, holds_mxfp4,
                                 is_openai_config, openai_config_dims)
from .weights_hf_minicpm import minicpm3_config_dims
from .weights_hf_transformers5 import transformers4_keys
from .weights_hf_layout import (codegen_qkv_order, dbrx_expert_order, falcon_qkv_order, hf_name,
                                interleaved_rope_order, llama_part_rows,
                                llama_query_order, llama_sources, neox_qkv_order,
                                position_offset, position_rows, stacked_shape, stored_minus_one,
                                unstored_tensor, whole_experts)
from .weights_safetensors import SafetensorsFile


# The config.json keys that hold counts, in every family that has them: int() took 100.5 or
# "100" for one, and true for 1.
HF_COUNT_KEYS = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "num_kv_heads",
                 "hidden_size", "intermediate_size", "max_position_embeddings", "vocab_size",
                 "head_dim", "n_layer", "n_head", "n_embd", "n_positions", "n_ctx", "n_inner",
                 "n_layers", "n_heads", "d_model", "max_seq_len", "ffn_dim", "rotary_dim",
                 "num_experts", "num_local_experts", "num_experts_per_tok",
                 "moe_intermediate_size", "shared_expert_intermediate_size", "sliding_window",
                 "original_max_position_embeddings", "word_embed_proj_dim",
                 "decoder_sparse_step", "num_ln_in_parallel_attn", "num_layers", "num_heads",
                 "window_size", "sliding_window_pattern")


def hf_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    for key in HF_COUNT_KEYS + DEEPSEEK_COUNT_KEYS:
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConvertError(f"{where}: {key} = {json.dumps(v)} is not an integer")

    def get(*keys, default=None):
        for k in keys:
            if cfg.get(k) is not None:
                return cfg[k]
        return default

    if is_openai_config(cfg):  # OpenAI's own gpt-oss checkpoint (original/)
        return openai_config_dims(cfg, where, seq_len)
    kind = cfg.get("model_type", "gpt2")
    if not isinstance(kind, str):
        raise ConvertError(f"{where}: model_type is {kind!r}, not a name")
    cfg = transformers4_keys(cfg, where)  # (a file of transformers 5, read as one of 4)
    if kind == "gemma3":  # Gemma3ForConditionalGeneration (Gemma 3 4B to 27B): its language model
        text = cfg.get("text_config")
        text = {} if text is None else text  # (absent: Gemma3TextConfig's defaults)
        if not isinstance(text, dict):
            raise ConvertError(f"{where}: text_config is not a JSON object")
        return hf_config_dims({**text, "model_type": "gemma3_text"}, f"{where} (text_config)",
                              seq_len)
    if kind in ("llama", "mistral", "phi3", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe",
                "granite", "granitemoe", "olmo", "olmoe", "olmo2", "olmo3", "minicpm",
                "smollm3"):
        return llama_config_dims(cfg, where, seq_len)
    if kind in ("deepseek_v2", "deepseek_v3", "kimi_k2"):
        return deepseek_config_dims(cfg, where, seq_len)
    if kind == "minicpm3":
        return minicpm3_config_dims(cfg, where, seq_len)
    if kind == "gpt_oss":
        return gpt_oss_config_dims(cfg, where, seq_len)
    if kind in ("nemotron", "stablelm"):
        return layernorm_config_dims(cfg, where, seq_len)
    if kind in ("gemma", "gemma2", "gemma3_text"):
        return gemma_config_dims(cfg, where, seq_len)
    if kind == "gpt_neox":
        return neox_config_dims(cfg, where, seq_len)
    if kind == "starcoder2":
        return starcoder2_config_dims(cfg, where, seq_len)
    if kind in ("cohere", "cohere2"):
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
    if kind in ("gptj", "codegen"):
        return gptj_config_dims(cfg, where, seq_len)
    if kind == "gpt_neo":
        return gpt_neo_config_dims(cfg, where, seq_len)
    if kind in UNBUILT_MOE:
        raise ConvertError(f"{where}: model_type is {kind!r}, a mixture of experts triad does "
                           f"not compute: {UNBUILT_MOE[kind]} (triad imports Mixtral's, "
                           f"'mixtral', Qwen2-MoE's, 'qwen2_moe', Qwen3-MoE's, 'qwen3_moe', and "
                           f"OLMoE's, 'olmoe')")
    bigcode = kind == "gpt_bigcode"
    if kind not in ("gpt2", "gpt_bigcode"):
        raise ConvertError(f"{where}: model_type is {kind!r}; triad imports {families_text()} "
                           f"models")
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


# The families hf_config_dims reads, by name and model_type (the --help text and the error for
# another model_type come from here; test_convert_weights.py checks that each is dispatched).
FAMILIES = (("GPT-2", ("gpt2",)), ("GPT-BigCode (StarCoder)", ("gpt_bigcode",)),
            ("StarCoder2", ("starcoder2",)), ("Llama", ("llama",)), ("Mistral", ("mistral",)),
            ("Mixtral", ("mixtral",)), ("Phi-3", ("phi3",)), ("Qwen2", ("qwen2",)),
            ("Qwen2-MoE", ("qwen2_moe",)), ("Qwen3", ("qwen3",)), ("Qwen3-MoE", ("qwen3_moe",)),
            ("OLMo", ("olmo", "olmo2", "olmo3")), ("OLMoE", ("olmoe",)), ("GLM", ("glm",)),
            ("DBRX", ("dbrx",)), ("OPT", ("opt",)), ("SmolLM3", ("smollm3",)),
            ("DeepSeek-V2", ("deepseek_v2",)), ("DeepSeek-V3", ("deepseek_v3",)),
            ("Kimi K2", ("kimi_k2",)), ("MiniCPM", ("minicpm", "minicpm3")),
            ("Nemotron", ("nemotron",)), ("StableLM", ("stablelm",)),
            ("Gemma", ("gemma", "gemma2", "gemma3_text", "gemma3")),
            ("Granite", ("granite", "granitemoe")), ("Cohere", ("cohere", "cohere2")),
            ("Phi", ("phi",)), ("gpt-oss", ("gpt_oss",)), ("GPT-Neo", ("gpt_neo",)),
            ("GPT-NeoX", ("gpt_neox",)),
            ("GPT-J", ("gptj",)), ("CodeGen", ("codegen",)), ("Falcon", ("falcon",)))


def families_text() -> str:
    """'GPT-2 ('gpt2'), ..., and Falcon ('falcon')': every family with its model_type values."""
    parts = [f"{name} ({', '.join(repr(k) for k in kinds)})" for name, kinds in FAMILIES]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


# Hugging Face's mixtures of experts whose blocks triad does not build, and why.
UNBUILT_MOE = {
    "jetmoe": "its attention is a mixture of experts too",
    "phimoe": "its router is sparsemixer, and its norms are LayerNorms with biases",
}


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
    except RecursionError:
        raise ConvertError(f"{cfg_path}: not readable as JSON (nested too deeply)") from None
    if not isinstance(cfg, dict):
        raise ConvertError(f"{cfg_path}: not a JSON object")
    d = hf_config_dims(cfg, str(cfg_path), seq_len)

    wm = None  # a sharded model's index: each tensor's file
    if src.is_file():
        files = [src]
    elif (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    elif (directory / "model.safetensors.index.json").is_file():
        index = directory / "model.safetensors.index.json"
        try:
            wm = json.loads(index.read_text())["weight_map"]
            files = [directory / f for f in sorted(set(wm.values()))]
            wm = {name: directory / f for name, f in wm.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
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
            # One copy of each tensor, in the file the index places it in (a stale shard left
            # beside the current ones must not replace tensors).
            if name in where:
                raise ConvertError(f"{f}: holds tensor {name}, which {where[name].path} holds too")
            if wm is not None and wm.get(name) != f:
                raise ConvertError(f"{f}: holds tensor {name}, which {index.name} places "
                                   + (f"in {wm[name]}" if name in wm else "in no file"))
            where[name] = st
    missing = next((n for n in (wm or {}) if n not in where), None)
    if missing is not None:
        raise ConvertError(f"{index}: places tensor {missing} in {wm[missing]}, which does not "
                           f"hold it")
    left_out = ""
    multimodal = cfg.get("model_type") == "gemma3"
    if multimodal:
        where, dropped = gemma3_language_model(where)
        left_out = (f"; its language model, the vision tower and projector ({dropped} tensors) "
                    f"left out")
    if d.gpt_oss:
        return d, gpt_oss_tensors(d, where, directory), \
            f"{'OpenAI' if d.gpt_oss == 'openai' else 'Hugging Face'} gpt-oss model {directory}" + (
                "; its experts' MXFP4 weights dequantized to fp32" if holds_mxfp4(d, where) else "")
    if d.opt or d.gpt_neo:
        note = (" (c_attn's bias zeros: GPT-Neo's q, k and v have none; an export takes k's "
                "and v's again, not q's: a fine-tuning run keeps them zero with train.freeze = "
                "\"*/c_attn/bias\")") if d.gpt_neo else ""
        return d, llama_tensors(d, where, directory, head_checked=d.gpt_neo), \
            f"Hugging Face {'GPT-Neo' if d.gpt_neo else 'OPT'} model {directory}{note}"
    if d.position == "rope":  # Llama's family
        kind = ({"kimi_k2": "Kimi K2", "minicpm3": "MiniCPM3", "minicpm": "MiniCPM",
                 "olmo3": "OLMo 3", "smollm3": "SmolLM3", "cohere2": "Cohere2"}.get(
            cfg.get("model_type")) or
                {"deepseek_v2": "DeepSeek-V2", "deepseek_v3": "DeepSeek-V3"}.get(d.deepseek) or
                {"qwen2_moe": "Qwen2-MoE", "qwen3_moe": "Qwen3-MoE", "mixtral": "Mixtral",
                 "granitemoe": "GraniteMoE", "olmoe": "OLMoE", "dbrx": "DBRX"}.get(
            d.moe_format or "") or ("GPT-NeoX" if d.neox else "Falcon" if d.falcon else
                                    "Nemotron" if d.mlp == "relu2" else
                                    "Cohere" if d.cohere else "Phi" if d.phi else
                                    "CodeGen" if d.codegen else "GPT-J" if d.gptj else
                                    ("Gemma 3" if d.qk_norm else
                                     "Gemma 2" if d.branch_norm else "Gemma")
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
        if d.mtp_layers:
            note += (f"; its {d.mtp_layers} multi-token prediction layer(s) after layer "
                     f"{d.n_layer - 1} as the modules mtp/0.. (model.mtp_depth = "
                     f"{d.mtp_layers}; --model.mtp_depth 0 trains without them)")
        if d.fp8_block:
            note += f"; its FP8 weights dequantized to fp32 (blocks of {list(d.fp8_block)})"
        note += left_out
        return d, llama_tensors(d, where, directory, head_checked=multimodal), \
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
                refuse_untied_head(where[head].read(head), a, where[head].path, "wte.weight")
            yield t, a

    return d, tensors, f"Hugging Face {'GPT-BigCode' if d.bigcode else 'GPT-2'} model {directory}"


# Gemma3ForConditionalGeneration's language model under its prefixes (transformers before 4.52 and
# since) as Gemma3ForCausalLM's names, and the vision side's, which the import leaves out.
GEMMA3_TEXT_PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
                        ("language_model.lm_head.", "lm_head."))
GEMMA3_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                          "model.multi_modal_projector.")


class RenamedTensors:
    """A safetensors file's tensors under other names (names: new name -> stored name)."""

    def __init__(self, st: SafetensorsFile, names: dict[str, str]):
        self.st, self.names, self.path = st, names, st.path
        self.entries = {new: st.entries[old] for new, old in names.items()}

    def read(self, name: str) -> np.ndarray:
        return self.st.read(self.names[name])

    def read_bytes(self, name: str) -> np.ndarray:
        return self.st.read_bytes(self.names[name])


def gemma3_language_model(where: dict) -> Tuple[dict, int]:
    """A Gemma 3 multimodal model's tensors (name -> file) as its language model's, under
    Gemma3ForCausalLM's names (a stored head as lm_head.weight, which llama_tensors checks is
    the embedding), and how many of the vision tower's and projector's were left out."""
    by_file: dict[int, Tuple[SafetensorsFile, dict]] = {}
    dropped = 0
    for name, st in where.items():
        if name.startswith(GEMMA3_VISION_PREFIXES):
            dropped += 1
            continue
        new = next((to + name[len(frm):] for frm, to in GEMMA3_TEXT_PREFIXES
                    if name.startswith(frm)), name)
        by_file.setdefault(id(st), (st, {}))[1][new] = name
    renamed = {}
    for st, names in by_file.values():
        r = RenamedTensors(st, names)
        for new, old in names.items():
            if new in renamed:
                raise ConvertError(f"{st.path}: tensor {old} is {new} again")
            renamed[new] = r
    return renamed, dropped


def refuse_untied_head(head: np.ndarray, wte: np.ndarray, path: Path, wte_name: str,
                       head_name: str = "lm_head.weight") -> None:
    """Raises unless a tied model's stored head (head_name in file path) is its embedding
    wte_name, as the model ties them."""
    if head.shape != wte.shape or not np.array_equal(head, wte):
        raise ConvertError(f"{path}: {head_name} differs from {wte_name}; triad's model ties "
                           f"the output head to the token embedding and cannot hold a separate "
                           f"one")


def llama_tensors(d: Dims, where: dict, directory: Path, head_checked: bool = False) -> Tensors:
    """The tensors of an HF Llama model as triad's (their shapes checked before any is read).
    head_checked: the files of a tied model may hold lm_head.weight, which must then be the
    embedding (GPT-Neo's, and Gemma 3's multimodal files; others' tied files hold none)."""
    src = llama_sources(d)
    want = hf_shapes(d)
    for t in src:  # DeepSeek-V3's routers' biases (written under /router_bias)
        if t.startswith("router_bias/"):
            want[t] = (d.moe_experts,)
    # Copies of a tensor the files may hold (DeepSeek-V3's prediction layers' embedding and
    # head): each must equal it, as triad's modules read the model's own.
    copies = deepseek_copies(d) if d.deepseek else {}
    used = {n for names in (*src.values(), *copies.values()) for n in names}
    for name in where:
        if name not in used and not name.endswith("rotary_emb.inv_freq") and not (
                d.neox and name.endswith(("attention.bias", "attention.masked_bias"))) and \
                not (head_checked and d.tied and name == "lm_head.weight") and \
                not (d.gpt_neo and re.fullmatch(
                    r"transformer\.h\.\d+\.attn\.attention\.(bias|masked_bias)", name)) and \
                not (d.deepseek and is_skipped_deepseek_tensor(d, name)):  # masks, MTP, scales
            raise ConvertError(f"{where[name].path}: tensor {name} is not part of a Llama model "
                               f"as triad has it" + (" (lm_head.weight with tie_word_embeddings)"
                                                     if name == "lm_head.weight" else ""))
    for name in where if d.fp8_block else ():  # DeepSeek's FP8 scales: each by an FP8 weight
        weight = name[:-len("_scale_inv")]
        if name.endswith(".weight_scale_inv") and (
                weight not in where or where[weight].entries[weight][0] != "F8_E4M3"):
            raise ConvertError(f"{where[name].path}: tensor {name} scales {weight}, which is "
                               + ("not an FP8 (F8_E4M3) weight" if weight in where else "absent"))
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
        if t == "wpe/weight" and len(got[0]) == 2 and got[0][1] == d.n_embd and \
                got[0][0] >= rows + position_offset(d) and (d.opt or d.gpt_neo):
            expected = got  # (any table covering seq_len past its offset: position_rows)
        if got != expected:
            if len(names) > 3:  # an expert's tensor: name the first that is wrong
                names, got, expected = zip(*[x for x in zip(names, got, expected)
                                             if x[1] != x[2]][:1])
            raise ConvertError(f"{where[names[0]].path}: tensor(s) {', '.join(names)} have "
                               f"shape(s) {list(got)}, expected {list(expected)} for the model "
                               f"in config.json")

    def read(n):
        if where[n].entries[n][0] != "F8_E4M3" or d.fp8_block is None:
            return np.asarray(where[n].read(n), dtype="<f4")
        scales = n + "_scale_inv"  # DeepSeek's block-scaled FP8
        if scales not in where:
            raise ConvertError(f"{where[n].path}: FP8 tensor {n} has no {scales}")
        return dequantize_fp8(where[n].read_bytes(n), where[scales].read(scales), d.fp8_block, n,
                              str(where[n].path))

    def tensors():
        for t in [t for t in want if t not in src]:  # (norms without a weight, GPT-Neo's bias)
            yield t, unstored_tensor(d, t, want[t])
        for t, names in src.items():
            parts = [read(n) for n in names]
            a = np.concatenate(parts) if len(parts) > 1 else parts[0]
            for n in (n for n in copies.get(t, ()) if n in where):
                if not np.array_equal(read(n), a):
                    raise ConvertError(f"{where[n].path}: tensor {n} differs from {names[0]}: "
                                       f"triad's multi-token prediction modules read the model's "
                                       f"own embedding and head")
            if stored_minus_one(d, t):  # LayerNorm1P's, Gemma's w - 1
                a = a + np.float32(1)
            a = falcon_qkv_order(d, t, neox_qkv_order(d, t, codegen_qkv_order(d, t, a)))
            a = interleaved_rope_order(d, t, dbrx_expert_order(d, t, position_rows(d, t, a)))
            a = mla_rope_order(d, t, a)
            if head_checked and t == "wte/weight" and "lm_head.weight" in where:  # (tied)
                head, wte = (getattr(where[n], "names", {}).get(n, n)  # (as the file names them)
                             for n in ("lm_head.weight", names[0]))
                refuse_untied_head(read("lm_head.weight"), a, where["lm_head.weight"].path, wte,
                                   head)
            yield t, llama_query_order(d, t, a.reshape(want[t]))

    return tensors
