"""DeepSeek-V2's and V3's Hugging Face models (model_type deepseek_v2, deepseek_v3: DeepSeek-V2,
V2-Lite, V2.5, Coder-V2, V3, R1; and kimi_k2, Kimi K2: V3's architecture with 384 experts in one
group and YaRN's beta_fast = beta_slow) as triad's multi-head latent attention and mixture of
experts, both ways: the config read as Dims (refusing what triad does
not compute) and written back, where each tensor lives in the files, the row orders that differ
from triad's, and FP8 weights. Used by weights_hf_import.py, weights_hf_export.py and
weights_triad.py.

The semantics followed are DeepSeek's own modeling code, which transformers' DeepseekV3 keeps:
the whole attention score times m(mscale_all_dim)² under YaRN (transformers' DeepseekV2 port
leaves it out, so its V2 models at long context score differently), the rotated q and k values in
pairs (2i, 2i + 1), the latent norms at epsilon 1e-6, and node-limited routing by the sum of each
group's two best keys (V3) or its best (V2's group_limited_greedy), the other groups' experts out
of the choice as in DeepSeek's inference code (its Hugging Face modeling file and transformers set their keys to 0 instead, which chooses
differently only where a searched group's keys fall to 0 or below)."""

from __future__ import annotations

import json
import math

import numpy as np

from .weights_dims import (MAX_EXPERTS, MAX_MTP_DEPTH, ConvertError, Dims, attr_text,
                           checkpoint_yarn, unheld_attributes)
from .weights_hf_families import LlamaLikeConfig, refuse_or_check_positions
from .weights_hf_layout import named_experts, pair_order

# config.json keys that hold counts in DeepSeek's configs (q_lora_rank null: no query latent).
DEEPSEEK_COUNT_KEYS = ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                       "v_head_dim", "n_routed_experts", "n_shared_experts",
                       "first_k_dense_replace", "moe_layer_freq", "n_group", "topk_group",
                       "num_nextn_predict_layers")


# transformers' DeepseekV2Config's and DeepseekV3Config's defaults of the keys read here: what
# transformers computes for a config.json that leaves one out. (DeepSeek's own config classes
# differ on some; its released files name them all.)
V2_DEFAULTS = dict(first_k_dense_replace=0, kv_lora_rank=512, q_lora_rank=1536, n_group=None,
                   n_routed_experts=64, n_shared_experts=2, qk_nope_head_dim=128,
                   qk_rope_head_dim=64, routed_scaling_factor=1.0, topk_group=None,
                   topk_method="greedy", norm_topk_prob=False, v_head_dim=128,
                   num_experts_per_tok=None, moe_intermediate_size=1407, rms_norm_eps=1e-6,
                   tie_word_embeddings=False, hidden_act="silu", attention_bias=False,
                   mlp_bias=False, moe_layer_freq=1, scoring_func="softmax",
                   num_nextn_predict_layers=0, rope_interleave=True)
V3_DEFAULTS = dict(V2_DEFAULTS, moe_intermediate_size=2048, n_shared_experts=1,
                   n_routed_experts=256, routed_scaling_factor=2.5, n_group=8, topk_group=4,
                   num_experts_per_tok=8, first_k_dense_replace=3, norm_topk_prob=True,
                   scoring_func="sigmoid", topk_method="noaux_tc")
# The model_types of V3's architecture: Kimi K2's config.json names its own (its modeling code is
# DeepSeek-V3's), and its file names every key it sets.
V3_MODEL_TYPES = ("deepseek_v3", "kimi_k2")
# The epsilon of the latent norms (q_a_layernorm, kv_a_layernorm), which DeepSeek's code and
# transformers' build with their RMSNorm's default whatever rms_norm_eps says: triad's
# model.mla_norm_eps where rms_norm_eps (model.norm_eps) is another.
LATENT_NORM_EPS = 1e-6


class DeepSeekConfig:
    """A DeepSeek config.json's keys, typed: a missing key is transformers' class default, a
    value of the wrong type a ConvertError naming it."""

    def __init__(self, cfg: dict, where: str, defaults: dict | None = None):
        self.cfg, self.where = cfg, where
        self.v3 = cfg.get("model_type") in V3_MODEL_TYPES
        self.defaults = defaults if defaults is not None else V3_DEFAULTS if self.v3 else \
            V2_DEFAULTS

    def value(self, key):
        return self.cfg[key] if key in self.cfg else self.defaults.get(key)

    def wrong(self, key, what):
        return ConvertError(f"{self.where}: {key} = {json.dumps(self.value(key))} is not {what}")

    def count(self, key, minimum=0, null=None):
        """An integer >= minimum; null (or absent with no default): `null`, if given."""
        v = self.value(key)
        if v is None and null is not None:
            return null
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.wrong(key, f"an integer >= {minimum}")
        return v

    def number(self, key):
        v = self.value(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.wrong(key, "a finite number")
        return float(v)

    def flag(self, key):
        v = self.value(key)
        if not isinstance(v, bool):
            raise self.wrong(key, "true or false")
        return v


def deepseek_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A DeepseekV2 or DeepseekV3 config as triad's model: rope, RMSNorms (rms_norm_eps; the latent
    norms' 1e-6 model.mla_norm_eps where that differs), SwiGLU, no biases, an untied head; MLA
    (latent_attention_sizes) with kv_lora_rank, q_lora_rank (null: q from the token),
    qk_nope_head_dim, qk_rope_head_dim, v_head_dim; from layer first_k_dense_replace on a mixture of
    n_routed_experts SwiGLU experts of moe_intermediate_size units, num_experts_per_tok per token,
    beside n_shared_experts ungated shared ones (model.moe_shared_hidden = n_shared_experts ·
    moe_intermediate_size), the first layers dense MLPs of intermediate_size units
    (model.moe_dense_hidden). V2 routes by softmax, the chosen gates times routed_scaling_factor
    (model.moe_routed_scale); V3 by sigmoid scores chosen with the router's e_score_correction_bias
    (/router_bias), in n_group groups of which topk_group are searched (model.moe_groups,
    moe_group_top_k), the gates renormalized under norm_topk_prob and then times
    routed_scaling_factor. YaRN with DeepSeek's mscale and mscale_all_dim. Missing keys take
    transformers' class defaults (V2_DEFAULTS, V3_DEFAULTS)."""
    k = DeepSeekConfig(cfg, where)
    v3 = k.v3
    c = LlamaLikeConfig(cfg, where, "rms_norm_eps", 1e-6)
    sizes, refusals = latent_attention_sizes(k, c)

    n_pos, yarn, mscales = c.n_pos, None, (1.0, 0.0)
    r = cfg.get("rope_scaling")
    if r:
        try:
            yarn, mscales = deepseek_yarn(r, n_pos)
        except (KeyError, TypeError, ValueError) as e:
            refusals.append(f"rope_scaling {r} (triad builds plain rope and DeepSeek's 'yarn' with "
                            f"factor >= 1, beta_fast >= beta_slow > 0 and factor · "
                            f"original_max_position_embeddings = max_position_embeddings"
                            f"{'; ' + str(e) if str(e) else ''})")

    experts = k.count("n_routed_experts", null=0)
    first = k.count("first_k_dense_replace")
    moe_hidden = k.count("moe_intermediate_size", null=0)
    moe = {}
    if experts and first < c.n_layer:
        moe = deepseek_moe_keys(k, experts, first, c.hidden, moe_hidden, refusals)
    mtp = k.count("num_nextn_predict_layers") if v3 else 0
    if mtp > MAX_MTP_DEPTH:
        refusals.append(f"num_nextn_predict_layers {mtp} (triad's model.mtp_depth is at most "
                        f"{MAX_MTP_DEPTH})")
    block = fp8_block(cfg, refusals)
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "max_position_embeddings")
    d = Dims(c.n_layer, c.n_head, c.n_embd, seq_len or n_pos, c.vocab, position="rope",
             rope_theta=c.theta, norm="rmsnorm", bias=False, mlp="swiglu",
             mlp_hidden=moe_hidden if moe else c.hidden, tied=k.flag("tie_word_embeddings"),
             norm_eps=c.eps, mla_norm_eps=latent_norm_eps(c.eps), yarn=yarn,
             yarn_mscale=mscales, **sizes, **moe,
             deepseek="deepseek_v3" if v3 else "deepseek_v2",
             rope_interleave=k.flag("rope_interleave") if v3 else True,
             mtp_layers=mtp, fp8_block=block)
    d.check(where)
    return d


def latent_attention_sizes(k: DeepSeekConfig, c: LlamaLikeConfig) -> tuple[dict, list[str]]:
    """The sizes of DeepSeek-V2's latent attention on Llama's blocks (Dims' kv_lora_rank,
    q_lora_rank (null: 0, q from the token), qk_nope_head_dim, qk_rope_head_dim, v_head_dim) as
    a config names them (k, its defaults for the absent keys; c, the Llama-like sizes), and what
    of those blocks triad does not compute: the refusals DeepSeek's and MiniCPM3's readers share."""
    refusals = [x for x in c.refusals if not x.startswith("num_key_value_heads")]
    if c.kv != c.n_head:
        refusals.append(f"num_key_value_heads {c.kv} other than num_attention_heads {c.n_head} "
                        f"(multi-head latent attention gives every head its own key and value)")
    sizes = dict(kv_lora_rank=k.count("kv_lora_rank"), q_lora_rank=k.count("q_lora_rank", null=0),
                 qk_nope_head_dim=k.count("qk_nope_head_dim"),
                 qk_rope_head_dim=k.count("qk_rope_head_dim"), v_head_dim=k.count("v_head_dim"))
    if min(sizes["kv_lora_rank"], sizes["qk_rope_head_dim"], sizes["v_head_dim"]) < 2 or \
            any(x % 2 for x in sizes.values()):
        refusals.append(", ".join(f"{key} {v}" for key, v in sizes.items()) +
                        " (triad's latent attention needs kv_lora_rank, qk_rope_head_dim and "
                        "v_head_dim > 0, and every size even)")
    if k.value("hidden_act") != "silu":
        refusals.append(f"hidden_act {k.value('hidden_act')!r} (SwiGLU uses silu)")
    for key in ("attention_bias", "mlp_bias"):
        if k.flag(key):
            refusals.append(f"{key} = true (triad's latent attention and MLPs have no biases)")
    if k.count("pretraining_tp", null=1) != 1:
        refusals.append(f"pretraining_tp {k.value('pretraining_tp')}")
    return sizes, refusals


def latent_norm_eps(norm_eps: float) -> float:
    """Dims.mla_norm_eps of a model whose other norms use norm_eps and whose latent norms use
    DeepSeek's LATENT_NORM_EPS: 0 (the same) where the two agree."""
    return 0.0 if norm_eps == LATENT_NORM_EPS else LATENT_NORM_EPS


def deepseek_yarn(r: dict, n_pos: int) -> tuple[tuple, tuple]:
    """(factor, beta_fast, beta_slow, original positions) and (mscale, mscale_all_dim) of
    DeepSeek's YaRN rope_scaling, with its code's defaults for absent keys (4096 positions, 32,
    1, 1, 0). transformers derives the factor from max_position_embeddings /
    original_max_position_embeddings where DeepSeek's code reads it: a config where the two
    disagree is refused."""
    kind = r.get("rope_type", r.get("type")) if isinstance(r, dict) else None
    if kind != "yarn":
        raise ValueError(f"rope type {kind!r} is not built")
    if not r.get("truncate", True):  # (transformers 5's: the ramp's bounds unrounded)
        raise ValueError(f"truncate {json.dumps(r['truncate'])}: transformers before 4.55 ignore "
                         f"it and round the ramp's bounds, later ones do not (gpt-oss's files "
                         f"import with it)")

    def get(key, default, integer=False):
        v = r.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
            what = "an integer" if integer else "a number"
            raise ValueError(f"{key} {json.dumps(v)} is not {what}")
        return v

    if r.get("factor") is None:
        raise ValueError("it has no factor")
    factor = float(get("factor", None))
    original = get("original_max_position_embeddings", 4096, integer=True)
    fast, slow = float(get("beta_fast", 32)), float(get("beta_slow", 1))
    mscales = (float(get("mscale", 1.0)), float(get("mscale_all_dim", 0.0)))
    if r.get("attention_factor") is not None:
        raise ValueError("attention_factor is not built")
    if not (math.isfinite(factor) and factor >= 1 and fast >= slow > 0 and original >= 1 and
            all(math.isfinite(m) and 0 <= m <= 100 for m in mscales)):
        raise ValueError("")
    if factor * original != n_pos:
        raise ValueError(f"factor {factor} · original_max_position_embeddings {original} is not "
                         f"max_position_embeddings {n_pos}")
    return (factor, fast, slow, original), mscales


def deepseek_moe_keys(k: DeepSeekConfig, experts: int, first: int, dense_hidden: int,
                      hidden: int, refusals: list[str]) -> dict:
    """The mixture of experts of a DeepSeek config as Dims' moe_* fields; what triad does not
    build is added to refusals."""
    v3 = k.v3
    top_k = k.count("num_experts_per_tok", null=0)
    shared = k.count("n_shared_experts", null=0)
    normalize = k.flag("norm_topk_prob")
    scale = k.number("routed_scaling_factor")
    groups, group_top = k.count("n_group", 1, null=1), k.count("topk_group", 1, null=1)
    score, method = k.value("scoring_func"), k.value("topk_method")
    if not 1 <= experts <= MAX_EXPERTS:
        refusals.append(f"n_routed_experts {experts} (triad's model.moe_experts is in "
                        f"[1, {MAX_EXPERTS}])")
    if not 1 <= top_k <= experts:
        refusals.append(f"num_experts_per_tok {top_k} (1 to n_routed_experts)")
    if hidden < 1:
        refusals.append(f"moe_intermediate_size {hidden} (a positive width)")
    if k.count("moe_layer_freq", null=1) != 1:  # (transformers ignores it; DeepSeek's code not)
        refusals.append(f"moe_layer_freq {k.value('moe_layer_freq')} (experts in every layer "
                        f"from first_k_dense_replace on, as every DeepSeek model has them)")
    if not 0 < scale <= 1e4:
        refusals.append(f"routed_scaling_factor {scale} (in (0, 1e4])")
    if v3:
        if score != "sigmoid" or method != "noaux_tc":
            refusals.append(f"scoring_func {score!r} with topk_method {method!r} (DeepSeek-V3's "
                            f"routing is 'sigmoid' with 'noaux_tc')")
        if top_k == 1 and normalize:
            refusals.append("num_experts_per_tok 1 with norm_topk_prob (one renormalized gate "
                            "is always 1)")
    else:
        if score != "softmax":
            refusals.append(f"scoring_func {score!r} (DeepSeek-V2 routes by softmax)")
        if method not in ("greedy", "group_limited_greedy"):
            refusals.append(f"topk_method {method!r} (DeepSeek-V2's are 'greedy' and "
                            f"'group_limited_greedy')")
        if normalize and top_k > 1:  # (DeepSeek's code then leaves out the scaling factor,
            # transformers' port applies it and never renormalizes)
            refusals.append("norm_topk_prob true (DeepSeek-V2's code and transformers' disagree "
                            "on its gates)")
        if method != "group_limited_greedy":  # (greedy: n_group and topk_group unused; V2's
            groups = group_top = 1  # group_limited_greedy scores a group by its best expert)
    if groups > 1 and not (experts % groups == 0 and experts // groups >= 2 and
                           1 <= group_top <= groups and group_top * (experts // groups) >= top_k):
        refusals.append(f"n_group {groups} with topk_group {group_top} (groups of two experts or "
                        f"more dividing n_routed_experts, 1 to n_group of them searched, holding "
                        f"num_experts_per_tok experts)")
    keys = dict(moe_experts=experts, moe_top_k=top_k, moe_normalize=normalize and v3,
                moe_shared_hidden=shared * hidden, moe_first_dense=first,
                moe_dense_hidden=dense_hidden if first and dense_hidden != hidden else 0,
                moe_routed_scale=scale, moe_groups=groups if groups > 1 else 1,
                moe_group_top_k=group_top if groups > 1 else 1,
                moe_group_score="max" if groups > 1 and not v3 else "top2")
    if v3:
        keys["moe_score"] = "sigmoid"
    return keys


def fp8_block(cfg: dict, refusals: list[str]) -> tuple | None:
    """The [rows, columns] block of DeepSeek's FP8 weights (quantization_config: fp8, e4m3,
    weight_block_size), each block scaled by the tensor's weight_scale_inv; None: unquantized."""
    q = cfg.get("quantization_config")
    if not q:
        return None
    try:
        block = tuple(q["weight_block_size"])
        if q.get("quant_method") != "fp8" or q.get("fmt", "e4m3") != "e4m3" or len(block) != 2 \
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1
                           for x in block):
            raise ValueError
    except (KeyError, TypeError, ValueError, AttributeError):
        refusals.append(f"quantization_config {q} (triad reads DeepSeek's block-scaled FP8: "
                        f"quant_method 'fp8', fmt 'e4m3', a weight_block_size of two sizes)")
        return None
    return block


def deepseek_sources(d: Dims) -> dict[str, list[str]]:
    """Each triad tensor of a DeepSeek model and the HF tensors it is made of (c_fc's gate and up
    rows stacked, expert by expert for the experts'); V3's routers' biases as router_bias/h/{i};
    V3's multi-token prediction layers (model.layers.{n_layer + j}: enorm, hnorm, eh_proj, a
    decoder layer, shared_head.norm) as triad's modules mtp/<j>/ (their routers' biases
    router_bias/mtp/<j>). Their copies of the embedding and the head: deepseek_copies."""
    src = {"wte/weight": ["model.embed_tokens.weight"], "ln_f/weight": ["model.norm.weight"]}
    for i in range(d.n_layer):
        src.update(layer_sources(d, i, f"h/{i}/", f"model.layers.{i}.", f"router_bias/h/{i}"))
    if not d.tied:
        src["lm_head/weight"] = ["lm_head.weight"]
    for j in range(d.mtp_layers):
        p, h = f"mtp/{j}/", f"model.layers.{d.n_layer + j}."
        src.update({p + "ln_e/weight": [h + "enorm.weight"], p + "ln_h/weight": [h + "hnorm.weight"],
                    p + "eh_proj/weight": [h + "eh_proj.weight"],
                    p + "ln_f/weight": [h + "shared_head.norm.weight"]})
        src.update(layer_sources(d, d.n_layer + j, p, h, f"router_bias/mtp/{j}"))
    return src


def layer_sources(d: Dims, i: int, p: str, h: str, router_bias: str) -> dict[str, list[str]]:
    """deepseek_sources of layer i's block, triad's names under p, the files' under h."""
    a, m = h + "self_attn.", h + "mlp."
    src = {
        p + "ln_1/weight": [h + "input_layernorm.weight"],
        p + "ln_2/weight": [h + "post_attention_layernorm.weight"],
        p + "attn/kv_a/weight": [a + "kv_a_proj_with_mqa.weight"],
        p + "attn/kv_a_norm/weight": [a + "kv_a_layernorm.weight"],
        p + "attn/kv_b/weight": [a + "kv_b_proj.weight"],
        p + "attn/c_proj/weight": [a + "o_proj.weight"],
    }
    if d.q_lora_rank:
        src.update({p + "attn/q_a/weight": [a + "q_a_proj.weight"],
                    p + "attn/q_a_norm/weight": [a + "q_a_layernorm.weight"],
                    p + "attn/q_b/weight": [a + "q_b_proj.weight"]})
    else:
        src[p + "attn/q_b/weight"] = [a + "q_proj.weight"]
    if d.moe_layer(i):
        src.update(named_experts(p, m, d.moe_experts))
        if d.moe_shared_hidden:
            s = m + "shared_experts."
            src.update({p + "mlp/shared/c_fc/weight": [s + "gate_proj.weight",
                                                       s + "up_proj.weight"],
                        p + "mlp/shared/c_proj/weight": [s + "down_proj.weight"]})
        if d.deepseek == "deepseek_v3":
            src[router_bias] = [m + "gate.e_score_correction_bias"]
    else:
        src.update({p + "mlp/c_fc/weight": [m + "gate_proj.weight", m + "up_proj.weight"],
                    p + "mlp/c_proj/weight": [m + "down_proj.weight"]})
    return src


def deepseek_copies(d: Dims) -> dict[str, list[str]]:
    """The files' copies of a triad tensor: each multi-token prediction layer's embedding
    (model.layers.{n_layer + j}.embed_tokens) and head (shared_head.head), which DeepSeek-V3's
    release holds beside the model's and which equal them (the modules share the model's)."""
    copies: dict[str, list[str]] = {}
    for j in range(d.mtp_layers):
        h = f"model.layers.{d.n_layer + j}."
        copies.setdefault("wte/weight", []).append(h + "embed_tokens.weight")
        copies.setdefault("wte/weight" if d.tied else "lm_head/weight", []).append(
            h + "shared_head.head.weight")
    return copies


def is_skipped_deepseek_tensor(d: Dims, name: str) -> bool:
    """Whether HF tensor `name` of a DeepSeek model is read with another rather than as a
    tensor of triad's: an FP8 weight's scales."""
    return d.fp8_block is not None and name.endswith(".weight_scale_inv")


def mla_rope_order(d: Dims, t: str, a: np.ndarray, to_hf: bool = False) -> np.ndarray:
    """q_b's rows (each head's qk_nope_head_dim values, then its qk_rope_head_dim rotated ones, in
    HF's files) as triad's (each head's rotated values first), and kv_a's (the latent, then the
    shared rotated key); the rotated values from pairs (2i, 2i + 1) to triad's (i, i + dr/2)
    where the files interleave them (rope_interleave). Or (to_hf) back. Other tensors pass."""
    if not d.deepseek or not t.endswith(("attn/q_b/weight", "attn/kv_a/weight")):
        return a
    dn, dr = d.qk_nope_head_dim, d.qk_rope_head_dim
    pairs = pair_order(dr) if d.rope_interleave else np.arange(dr)
    if t.endswith("kv_a/weight"):  # [latent | shared rotated key] rows
        order = np.concatenate([np.arange(d.kv_lora_rank), d.kv_lora_rank + pairs])
        heads = a.reshape(1, *a.shape)
    else:  # each head's rows: HF's [nope | rope], triad's [rope | nope]
        order = np.concatenate([dn + pairs, np.arange(dn)])  # triad row: HF order[row]
        heads = a.reshape(d.n_head, dn + dr, -1)
    if to_hf:
        order = np.argsort(order)
    return np.ascontiguousarray(heads[:, order].reshape(a.shape))


# The 256 values of an FP8 E4M3 byte (OCP's e4m3fn: bias 7, no infinities, S.1111.111 NaN).
def _e4m3_table() -> np.ndarray:
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp, man = (b >> 3) & 0xF, b & 0x7
    value = np.where(exp == 0, man / 8.0 * 2.0 ** -6, (1 + man / 8.0) * 2.0 ** (exp - 7.0))
    value = sign * value
    value[(b & 0x7F) == 0x7F] = np.nan
    return value.astype("<f4")


E4M3 = _e4m3_table()


def dequantize_fp8(bits: np.ndarray, scale_inv: np.ndarray, block: tuple, name: str,
                   where: str) -> np.ndarray:
    """An FP8 E4M3 weight [rows, columns] (its bytes) times its [ceil(rows / b0),
    ceil(columns / b1)] block scales, as fp32."""
    if bits.ndim != 2:
        raise ConvertError(f"{where}: FP8 tensor {name} has shape {list(bits.shape)}; DeepSeek's "
                           f"block-scaled weights are matrices")
    want = tuple(-(-n // b) for n, b in zip(bits.shape, block))
    if scale_inv.shape != want:
        raise ConvertError(f"{where}: {name}_scale_inv has shape {list(scale_inv.shape)}, "
                           f"expected {list(want)} for {list(bits.shape)} in blocks of "
                           f"{list(block)}")
    scales = np.repeat(np.repeat(scale_inv.astype("<f4"), block[0], 0), block[1], 1)
    out = E4M3[bits] * scales[:bits.shape[0], :bits.shape[1]]
    if np.isnan(out).any():
        raise ConvertError(f"{where}: FP8 tensor {name} holds NaN")
    return out


# The /model attributes of a triad model that DeepSeek's Hugging Face format holds, and the
# others' values that compute nothing extra (a file may carry them): any other attribute, or
# value, is an option the format has none of (deepseek_checkpoint_dims).
DEEPSEEK_HELD = {"n_layer", "n_head", "n_embd", "seq_len", "vocab_size", "padded_vocab_size",
                 "norm_eps", "position", "norm", "bias", "mlp", "mlp_hidden", "tie_embeddings",
                 "n_kv_head", "rope_theta", "rope_scaling", "rope_scaling_factor",
                 "rope_yarn_beta_fast", "rope_yarn_beta_slow", "rope_yarn_mscale",
                 "rope_yarn_mscale_all_dim", "rope_original_positions", "kv_lora_rank",
                 "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                 "mla_norm_eps", "moe_experts", "moe_top_k", "moe_normalize", "moe_shared_hidden",
                 "moe_first_dense", "moe_dense_hidden", "moe_score", "moe_routed_scale",
                 "moe_groups", "moe_group_top_k", "moe_group_score"}
DEEPSEEK_INERT = {"qk_norm": 0, "qkv_bias": 0, "mlp_bias": 0, "norm_bias": 0, "norm_weight": 1,
                  "pre_norm": 1, "qk_norm_full": 0, "moe_every": 1, "moe_shared_gate": 0,
                  "moe_capacity_factor": 0.0, "head_dim": 0, "rotary_dim": 0,
                  "sliding_window": 0, "full_attention_every": 0, "parallel_residual": 0,
                  "shared_norm": 0, "branch_norm": 0, "head_bias": 0, "embed_scale": 1.0,
                  "attn_scale": 0.0, "attn_softcap": 0.0, "logit_softcap": 0.0,
                  "clip_qkv": 0.0, "residual_scale": 1.0, "logit_scale": 1.0,
                  "mup_base_width": 0}


def deepseek_checkpoint_dims(path, a: dict, biased: bool) -> Dims:
    """A triad checkpoint's multi-head latent attention model (its /model attributes `a`; biased:
    its routers' biases are not all zero) as the Dims of DeepSeek's format: DeepseekV3ForCausalLM
    for sigmoid scores (the biases its e_score_correction_bias) or no experts,
    DeepseekV2ForCausalLM for softmax routing; refused where neither computes the model."""
    extra = unheld_attributes(a, DEEPSEEK_HELD, DEEPSEEK_INERT)
    position, norm, mlp = (attr_text(a.get(k)) for k in ("position", "norm", "mlp"))
    if (position, norm, mlp, int(a.get("bias", 1))) != ("rope", "rmsnorm", "swiglu", 0):
        extra.append(f"position {position}, norm {norm}, mlp {mlp}, bias {a.get('bias')} "
                     f"(DeepSeek's are rope, RMSNorms, SwiGLU, no biases)")
    if a.get("rope_scaling") is not None and attr_text(a["rope_scaling"]) not in ("yarn", "none"):
        extra.append(f"rope_scaling {attr_text(a['rope_scaling'])} (DeepSeek's is yarn)")
    if extra:
        raise ConvertError(f"{path}: the model's attention is multi-head latent attention, which "
                           f"exports as Hugging Face's DeepSeek-V2 or V3; those have none of "
                           f"{'; '.join(extra)}")
    eps = float(a.get("norm_eps", 1e-5))
    latent = float(a.get("mla_norm_eps", 0.0)) or eps
    if latent != LATENT_NORM_EPS:
        raise ConvertError(f"{path}: the model's latent norms use epsilon {latent} "
                           f"(model.mla_norm_eps, or model.norm_eps where it is 0); DeepSeek's "
                           f"(q_a_layernorm, kv_a_layernorm) use {LATENT_NORM_EPS} whatever its "
                           f"rms_norm_eps says")
    E = int(a.get("moe_experts", 0))
    score = attr_text(a.get("moe_score", "softmax"))
    groups, normalize = int(a.get("moe_groups", 1)), int(a.get("moe_normalize", 1)) == 1
    by_best = attr_text(a.get("moe_group_score", "top2")) == "max"
    hidden, shared = int(a["mlp_hidden"]), int(a.get("moe_shared_hidden", 0))
    v3 = not E or score == "sigmoid"
    if E and shared % hidden:
        raise ConvertError(f"{path}: the model's shared experts are {shared} wide "
                           f"(model.moe_shared_hidden), not a whole number of experts of "
                           f"{hidden} (DeepSeek's n_shared_experts · moe_intermediate_size)")
    if E and not v3 and ((groups > 1 and not by_best) or (normalize and int(a["moe_top_k"]) > 1)
                         or biased):
        raise ConvertError(f"{path}: the model routes by softmax (DeepSeek-V2's) with "
                           + ("groups of experts scored by their two best (model.moe_groups, "
                              "moe_group_score = top2), where V2 scores a group by its best" if
                              groups > 1 and not by_best else
                              "routers' biases (/router_bias), which V2 has none of" if biased
                              else "renormalized gates (model.moe_normalize), on which "
                              "DeepSeek-V2's code and transformers' disagree"))
    if E and v3 and by_best:
        raise ConvertError(f"{path}: the model scores groups of experts by their best "
                           f"(model.moe_group_score = max, DeepSeek-V2's) beside sigmoid scores; "
                           f"DeepSeek-V3 scores a group by its two best")
    yarn = checkpoint_yarn(path, a, "DeepSeek")
    return Dims(*(int(a[k]) for k in ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size")),
                position="rope", rope_theta=float(a["rope_theta"]), norm="rmsnorm", bias=False,
                mlp="swiglu", mlp_hidden=hidden, tied=int(a.get("tie_embeddings", 1)) == 1,
                norm_eps=eps, mla_norm_eps=latent_norm_eps(eps), yarn=yarn,
                yarn_mscale=(float(a.get("rope_yarn_mscale", 1.0)),
                             float(a.get("rope_yarn_mscale_all_dim", 0.0))),
                **{k: int(a.get(k, 0)) for k in ("kv_lora_rank", "q_lora_rank",
                                                 "qk_nope_head_dim", "qk_rope_head_dim",
                                                 "v_head_dim")},
                moe_experts=E, moe_top_k=int(a.get("moe_top_k", 0)), moe_normalize=normalize,
                moe_shared_hidden=shared, moe_first_dense=int(a.get("moe_first_dense", 0)),
                moe_dense_hidden=int(a.get("moe_dense_hidden", 0)), moe_score=score,
                moe_routed_scale=float(a.get("moe_routed_scale", 1.0)), moe_groups=groups,
                moe_group_top_k=int(a.get("moe_group_top_k", 1)),
                moe_group_score="max" if by_best else "top2",
                deepseek="deepseek_v3" if v3 else "deepseek_v2", rope_interleave=True,
                mtp_layers=int(a.get("mtp_depth", 0)) if v3 else 0)


def deepseek_hf_config(d: Dims) -> dict:
    """config.json for DeepseekV3ForCausalLM or DeepseekV2ForCausalLM computing d (the inverse of
    deepseek_config_dims): the rotated rows interleaved, as DeepSeek's own files."""
    v3 = d.deepseek == "deepseek_v3"
    E = d.moe_experts
    cfg = {
        "architectures": ["DeepseekV3ForCausalLM" if v3 else "DeepseekV2ForCausalLM"],
        "model_type": d.deepseek, "vocab_size": d.vocab_size, "hidden_size": d.n_embd,
        "num_hidden_layers": d.n_layer, "num_attention_heads": d.n_head,
        "num_key_value_heads": d.n_head, "head_dim": d.qk_rope_head_dim,
        "kv_lora_rank": d.kv_lora_rank, "q_lora_rank": d.q_lora_rank or None,
        "qk_nope_head_dim": d.qk_nope_head_dim, "qk_rope_head_dim": d.qk_rope_head_dim,
        "v_head_dim": d.v_head_dim,
        "intermediate_size": (d.moe_dense_hidden or d.mlp_hidden) if E else d.mlp_hidden,
        "moe_intermediate_size": d.mlp_hidden if E else None,
        "n_routed_experts": E or None, "num_experts_per_tok": d.moe_top_k or None,
        "n_shared_experts": d.moe_shared_hidden // d.mlp_hidden if E else None,
        "first_k_dense_replace": d.moe_first_dense if E else d.n_layer, "moe_layer_freq": 1,
        "routed_scaling_factor": d.moe_routed_scale, "norm_topk_prob": d.moe_normalize,
        "n_group": d.moe_groups, "topk_group": d.moe_group_top_k,
        "scoring_func": "sigmoid" if v3 else "softmax",
        "topk_method": "noaux_tc" if v3 else
        "group_limited_greedy" if d.moe_groups > 1 else "greedy",
        "hidden_act": "silu", "rms_norm_eps": d.norm_eps, "rope_theta": d.rope_theta,
        "max_position_embeddings": int(d.yarn[0] * d.yarn[3]) if d.yarn else d.seq_len,
        "rope_scaling": None if d.yarn is None else {
            "type": "yarn", "rope_type": "yarn", "factor": d.yarn[0],
            "original_max_position_embeddings": d.yarn[3], "beta_fast": d.yarn[1],
            "beta_slow": d.yarn[2], "mscale": d.yarn_mscale[0],
            "mscale_all_dim": d.yarn_mscale[1]},
        "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": d.tied,
        "initializer_range": 0.02, "torch_dtype": "float32", "use_cache": True,
    }
    if v3:
        cfg.update(rope_interleave=True, num_nextn_predict_layers=d.mtp_layers)
    return cfg
