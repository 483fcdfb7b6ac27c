"""Config files saved by transformers 5 (tests/python/transformers5: its save_pretrained of small
models of each family triad imports with rope, and expected.json, the rope parameters
transformers 5 computes with once it loads each file again) read by triad-convert's import: the
base, the rotated share and the scaling of the imported model are transformers 5's. The
transformers 4 forms of the same models are tested against transformers' computations in
test_convert_weights.py; this checks the reading of the newer form against transformers 5's own
reading, for files it wrote rather than imitations."""

import json
from pathlib import Path

import pytest

from analysis.weights_hf_import import hf_config_dims

HERE = Path(__file__).resolve().parent / "transformers5"
EXPECTED = json.loads((HERE / "expected.json").read_text())
NAMES = sorted(k for k in EXPECTED if not k.startswith("_"))


def rope_of(d) -> dict:
    """What triad's model of Dims d rotates by, in transformers 5's terms: per kind of layer for
    a model whose windowed layers have a base of their own."""
    rotated = (d.rotary_dim or d.hd) / d.hd
    full = {"rope_theta": d.rope_theta, "partial_rotary_factor": rotated}
    if d.rope_linear:
        full.update(rope_type="linear", factor=d.rope_linear)
    elif d.rope_scaling is not None:
        factor, low, high, original = d.rope_scaling
        full.update(rope_type="llama3", factor=factor, low_freq_factor=low,
                    high_freq_factor=high, original_max_position_embeddings=original)
    elif d.yarn is not None:
        factor, fast, slow, original = d.yarn
        full.update(rope_type="yarn", factor=factor, beta_fast=fast, beta_slow=slow,
                    original_max_position_embeddings=original)
        if d.yarn_mscale != (1.0, 0.0):
            full.update(zip(("mscale", "mscale_all_dim"), d.yarn_mscale))
    elif d.longrope is not None:
        _, original, short, long = d.longrope
        full.update(rope_type="longrope", original_max_position_embeddings=original,
                    short_factor=list(short), long_factor=list(long))
    else:
        full["rope_type"] = "default"
    if d.rope_local_theta:
        sliding = {"rope_theta": d.rope_local_theta, "partial_rotary_factor": rotated,
                   "rope_type": "default"}
        return {"full_attention": full, "sliding_attention": sliding}
    return full


def as_computed(params: dict) -> dict:
    """transformers 5's rope parameters with its defaults spelled out (a rotated share of 1, YaRN's
    betas 32 and 1) and numbers as floats, to compare with rope_of."""
    if "full_attention" in params:
        return {k: as_computed(v) for k, v in params.items()}
    out = {"partial_rotary_factor": 1.0, **params}
    if out["rope_type"] == "yarn":
        out = {"beta_fast": 32.0, "beta_slow": 1.0, **out}
    return {k: [float(x) for x in v] if isinstance(v, list) else
            v if isinstance(v, str) or k == "original_max_position_embeddings" else float(v)
            for k, v in out.items()}


@pytest.mark.parametrize("name", NAMES)
def test_transformers5_config_imports_with_its_rope(name):
    """Each file imports (no refusal) as a model that rotates as transformers 5 computes."""
    cfg = json.loads((HERE / f"{name}.json").read_text())
    d = hf_config_dims(cfg, f"{name}.json", None)
    want = as_computed(EXPECTED[name]["rope_parameters"])
    assert as_computed(rope_of(d)) == want, (rope_of(d), want)
    if "no_rope_layers" in cfg:  # (SmolLM3's layers without rope: every 4th)
        assert [int((i + 1) % d.nope_every != 0) for i in range(d.n_layer)] == \
            cfg["no_rope_layers"]


def test_the_files_are_transformers5s():
    """The files carry their rope settings in transformers 5's form (no top-level base), so the
    test above exercises the newer reading and not the older keys."""
    assert EXPECTED["_transformers"].startswith("5.")
    for name in NAMES:
        cfg = json.loads((HERE / f"{name}.json").read_text())
        text = cfg.get("text_config", cfg)
        assert "rope_parameters" in text, name
        assert not {"rope_theta", "rope_scaling", "rotary_emb_base"} & set(text), name
