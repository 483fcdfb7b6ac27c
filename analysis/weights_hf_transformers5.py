"""A config.json saved by transformers 5 read as the keys of transformers 4 that the family
readers know: its rope_parameters as rope_theta, rope_scaling and partial_rotary_factor (and
their older names), Qwen3-MoE's num_local_experts as num_experts.

Since version 5 transformers saves a model's rope base, its rotated share and its scaling in one
rope_parameters object ({"rope_type": "default", "rope_theta": 500000.0}) and writes no
rope_theta beside it; Gemma 3's and OLMo 3's hold one object per kind of layer (full_attention,
sliding_attention). A reader that looked for rope_theta alone would take its default for such a
file. transformers4_keys moves the values back to where older files keep them, so each family's
reader (and its refusals) sees one form. A file that says a value in both places, differently,
is refused: the two versions would read different ones."""

from __future__ import annotations

import json

from .weights_dims import ConvertError

# Where a family's config.json kept the base and the rotated share before rope_parameters.
THETA_KEY = {"gpt_neox": "rotary_emb_base"}
SHARE_KEY = {"gpt_neox": "rotary_pct"}
# The keys of a rope_parameters object that are not its scaling.
PLAIN_KEYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")
# Kinds whose rope_parameters is per kind of layer.
PER_LAYER = ("full_attention", "sliding_attention")
# Where OLMo 3's sliding layers' base from that form goes (no file key of either version holds
# it: transformers 4.57 rotates them by rope_theta), and 5's base for them where the form has none.
OLMO3_SLIDING = "rope_parameters.sliding_attention.rope_theta"
OLMO3_DEFAULT_THETA = 500000.0


def transformers4_keys(cfg: dict, where: str) -> dict:
    """cfg with transformers 5's keys moved to transformers 4's: rope_parameters (if any) as
    rope_theta (GPT-NeoX's rotary_emb_base, DBRX's attn_config.rope_theta),
    partial_rotary_factor (GPT-NeoX's rotary_pct) and rope_scaling (absent for rope_type
    default), Gemma 3's and OLMo 3's per-layer form as the full-attention layers' and
    rope_local_base_freq for the sliding layers' base; Qwen3-MoE's num_local_experts as
    num_experts. Raises, naming `where`, for what the two versions would read differently or
    what is not an object."""
    kind = cfg.get("model_type")
    out = dict(cfg)
    if kind == "qwen3_moe" and out.get("num_local_experts") is not None:
        settle(out, "num_experts", out.pop("num_local_experts"), where, "num_local_experts")
    if kind == "dbrx":
        return dbrx_keys(out, where)
    params = out.pop("rope_parameters", None)
    if params is None:
        return out
    if not isinstance(params, dict):
        raise ConvertError(f"{where}: rope_parameters = {json.dumps(params)} is not a JSON object")
    nested = [k for k in params if k in PER_LAYER]
    if kind in ("gemma3_text", "olmo3"):
        if not nested:
            raise ConvertError(f"{where}: rope_parameters {json.dumps(params)} is not per kind "
                               f"of layer ({', '.join(PER_LAYER)}), which transformers 5 reads "
                               f"for Gemma 3 and OLMo 3")
        return per_layer_keys(out, params, where, kind)
    if nested:
        raise ConvertError(f"{where}: rope_parameters per kind of layer ({', '.join(nested)}) "
                           f"in a {kind!r} model; triad reads that form for Gemma 3 and OLMo 3 "
                           f"only")
    if out.get("rope_scaling") is not None:
        raise ConvertError(f"{where}: both rope_scaling and rope_parameters are given; "
                           f"transformers 5 reads rope_scaling in place of rope_parameters (its "
                           f"base too), transformers 4 rope_scaling alone: keep one")
    theta = THETA_KEY.get(kind, "rope_theta")
    if params.get("rope_theta") is None and out.get(theta) is None:
        raise ConvertError(f"{where}: rope_parameters has no rope_theta (transformers 5 then "
                           f"takes its own default base for the family, which differs by family)")
    settle(out, theta, params.get("rope_theta"), where, "rope_parameters.rope_theta")
    settle(out, SHARE_KEY.get(kind, "partial_rotary_factor"), params.get("partial_rotary_factor"),
           where, "rope_parameters.partial_rotary_factor")
    scaling = scaling_of(params)
    if scaling is not None:  # (Phi-3's original context: the top-level key, as in 5)
        out["rope_scaling"] = scaling
    elif kind == "gpt_oss":  # (plain rope said so: an absent rope_scaling is YaRN in 4's class)
        out["rope_scaling"] = None
    return out


def per_layer_keys(out: dict, params: dict, where: str, kind: str) -> dict:
    """Gemma 3's and OLMo 3's per-layer rope_parameters: the full-attention layers' base and
    scaling as rope_theta and rope_scaling (a rope_scaling beside it is merged in, as
    transformers 5 does), the sliding layers' base (they are not scaled) as Gemma 3's
    rope_local_base_freq or OLMo 3's OLMO3_SLIDING (500000 where absent, as 5 reads it). Absent
    full bases keep Gemma3TextConfig's defaults, which both versions take (OLMo 3's reader
    refuses a file without rope_theta: its default differs between them)."""
    full, sliding = (params.get(k) or {} for k in PER_LAYER)
    for name, p in zip(PER_LAYER, (full, sliding)):
        if not isinstance(p, dict):
            raise ConvertError(f"{where}: rope_parameters.{name} = {json.dumps(p)} is not a JSON "
                               f"object")
    if scaling_of(sliding) is not None:
        raise ConvertError(f"{where}: rope_parameters.sliding_attention scales the windowed "
                           f"layers' rope ({json.dumps(sliding)}); Gemma 3's rotate by their "
                           f"base unscaled")
    if kind == "olmo3":
        out[OLMO3_SLIDING] = sliding.get("rope_theta", OLMO3_DEFAULT_THETA)
    else:
        settle(out, "rope_local_base_freq", sliding.get("rope_theta"), where,
               "rope_parameters.sliding_attention.rope_theta")
    settle(out, "rope_theta", full.get("rope_theta"), where,
           "rope_parameters.full_attention.rope_theta")
    older, scaling = out.get("rope_scaling"), scaling_of(full)
    if older is not None and scaling is not None and scaling_of(older) != scaling:
        raise ConvertError(f"{where}: rope_scaling {json.dumps(older)} and "
                           f"rope_parameters.full_attention {json.dumps(full)} name different "
                           f"scalings")
    if scaling is not None:
        out["rope_scaling"] = scaling
    return out


def dbrx_keys(out: dict, where: str) -> dict:
    """DBRX's base: transformers 4 reads attn_config.rope_theta, 5 rope_parameters.rope_theta
    (or a top-level rope_theta, which triad's export writes beside the first). One of them must
    be given, and those given must agree; the base lands in attn_config."""
    params = out.pop("rope_parameters", None)
    attn = out.get("attn_config") or {}
    for name, v in (("rope_parameters", params), ("attn_config", attn)):
        if not isinstance(v, dict) and v is not None:
            raise ConvertError(f"{where}: {name} = {json.dumps(v)} is not a JSON object")
    params = params or {}
    if scaling_of(params) is not None or out.get("rope_scaling") is not None:
        raise ConvertError(f"{where}: DBRX's rope is not scaled (rope_parameters "
                           f"{json.dumps(params)}, rope_scaling {json.dumps(out.get('rope_scaling'))})")
    given = [(label, v) for label, v in (
        ("attn_config.rope_theta", attn.get("rope_theta")), ("rope_theta", out.pop("rope_theta", None)),
        ("rope_parameters.rope_theta", params.get("rope_theta"))) if v is not None]
    if len({json.dumps(v) for _, v in given}) > 1:
        raise ConvertError(f"{where}: the rope base is given differently as "
                           f"{' and '.join(f'{k} = {json.dumps(v)}' for k, v in given)} "
                           f"(transformers 4 reads attn_config.rope_theta, 5 "
                           f"rope_parameters.rope_theta or else rope_theta)")
    if given:
        out["attn_config"] = {**attn, "rope_theta": given[0][1]}
    return out


def scaling_of(params: dict) -> dict | None:
    """A rope_parameters (or rope_scaling) object's scaling keys, None for plain rope: no type
    or 'default'."""
    if not isinstance(params, dict):
        return {"value": params}  # (not an object: differs from every scaling, refused by readers)
    kind = params.get("rope_type", params.get("type"))
    if kind in (None, "default"):
        return None
    return {"rope_type": kind, **{k: v for k, v in params.items() if k not in PLAIN_KEYS}}


def settle(out: dict, key: str, value, where: str, new: str) -> None:
    """out[key] = value where value is given; raises where out already has another one."""
    if value is None:
        return
    if out.get(key) is not None and out[key] != value:
        raise ConvertError(f"{where}: {key} = {json.dumps(out[key])} and {new} = "
                           f"{json.dumps(value)} disagree (transformers 4 reads the first, 5 the "
                           f"second)")
    out[key] = value
