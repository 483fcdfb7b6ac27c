"""triad-convert's import of OpenAI's gpt-oss models (Hugging Face's GptOssForCausalLM format),
against OpenAI's own reference implementation (the gpt-oss package's gpt_oss.torch.model, which
shares nothing with triad): a small random gpt-oss (2 layers, the first windowed, 8 query heads
of 16 over 2 key/value heads, sinks, biases, 4 experts of 64 units with 2 per token, their MXFP4
weights, YaRN with unrounded ramp ends, gpt-oss's clamped SwiGLU) is written in OpenAI's own
checkpoint layout, which the reference loads, and in Hugging Face's from the same bytes (MXFP4
blocks, and the experts dequantized to bf16 as transformers' converter writes them). triad's
validation loss, accuracy and greedy continuation of each import are the reference's (run in
float64), and what the import cannot build is refused by name."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from triad_run import assert_clean_error, assert_clean_failure, exe, run, tiny_config, tool, train

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors.torch")
oss = pytest.importorskip("gpt_oss.torch.model",
                          reason="OpenAI's gpt-oss package (jobs/setup.sh installs it)")
from safetensors.torch import load_file, save_file  # noqa: E402

V, SEQ, EVAL = 300, 32, 8
C, I, E, K, H, KV, HD = 64, 64, 4, 2, 8, 2, 16
# OpenAI's ModelConfig for the reference: 16 original positions stretched 4 times (64), YaRN's
# ramp from pair 2.10 to 5.06 of 8 at base 500 (beta 0.5 and alpha 0.05 turns: its assertion
# 0 < low < high < 7 holds), gate and up clamped at 1 (many of these activations pass it).
ORIGINAL = dict(num_hidden_layers=2, num_experts=E, experts_per_token=K, vocab_size=V,
                hidden_size=C, intermediate_size=I, swiglu_limit=1.0, head_dim=HD,
                num_attention_heads=H, num_key_value_heads=KV, sliding_window=8,
                initial_context_length=16, rope_theta=500.0, rope_scaling_factor=4.0,
                rope_ntk_alpha=0.05, rope_ntk_beta=0.5)
# The same model's Hugging Face config.json, as transformers' converter writes it.
HF_CONFIG = dict(architectures=["GptOssForCausalLM"], model_type="gpt_oss", num_hidden_layers=2,
                 num_local_experts=E, num_experts_per_tok=K, vocab_size=V, hidden_size=C,
                 intermediate_size=I, head_dim=HD, num_attention_heads=H, num_key_value_heads=KV,
                 sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                 rope_theta=500.0, max_position_embeddings=64, swiglu_limit=1.0,
                 rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=True,
                 hidden_act="silu",
                 rope_scaling=dict(rope_type="yarn", factor=4.0, beta_fast=0.5, beta_slow=0.05,
                                   truncate=False, original_max_position_embeddings=16),
                 quantization_config=dict(quant_method="mxfp4", modules_to_not_convert=[
                     "model.layers.*.self_attn", "model.layers.*.mlp.router",
                     "model.embed_tokens", "lm_head"]))


def mxfp4_dequantized(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The reference's own dequantization (its Checkpoint class) of MXFP4 blocks, in bf16."""
    ck = oss.Checkpoint.__new__(oss.Checkpoint)
    ck.tensor_name_to_file, ck.device_str = {"b": None, "s": None}, "cpu"
    ck._get_tensor = {"b": blocks, "s": scales}.get
    return ck._get_mxfp4_tensor("b", "s", dtype=torch.bfloat16)


def weights() -> dict:
    """The model in OpenAI's checkpoint layout: bf16 tensors (fp32 norms), MXFP4 experts."""
    g = torch.Generator().manual_seed(11)

    def normal(*shape, std=1.0):
        return (std * torch.randn(*shape, generator=g)).to(torch.bfloat16)

    def blocks(rows, cols):  # random FP4 codes, scales 2^-5 .. 2^-3 (values up to 0.75)
        b = torch.randint(0, 256, (E, rows, cols // 32, 16), generator=g, dtype=torch.uint8)
        s = torch.randint(122, 125, (E, rows, cols // 32), generator=g, dtype=torch.uint8)
        return b, s

    w = {"embedding.weight": normal(V, C), "norm.scale": 1 + 0.1 * torch.randn(C, generator=g),
         "unembedding.weight": normal(V, C, std=C ** -0.5)}
    for i in range(2):
        p = f"block.{i}."
        rows = (H + 2 * KV) * HD
        b1, s1 = blocks(2 * I, C)
        b2, s2 = blocks(C, I)
        w.update({
            p + "attn.norm.scale": 1 + 0.1 * torch.randn(C, generator=g),
            p + "attn.qkv.weight": normal(rows, C, std=2 * C ** -0.5),
            p + "attn.qkv.bias": normal(rows, std=0.1),
            p + "attn.sinks": normal(H),
            p + "attn.out.weight": normal(C, H * HD, std=(H * HD) ** -0.5),
            p + "attn.out.bias": normal(C, std=0.1),
            p + "mlp.norm.scale": 1 + 0.1 * torch.randn(C, generator=g),
            p + "mlp.gate.weight": normal(E, C, std=2 * C ** -0.5),
            p + "mlp.gate.bias": normal(E, std=0.5),
            p + "mlp.mlp1_weight.blocks": b1, p + "mlp.mlp1_weight.scales": s1,
            p + "mlp.mlp1_bias": normal(E, 2 * I, std=0.5),
            p + "mlp.mlp2_weight.blocks": b2, p + "mlp.mlp2_weight.scales": s2,
            p + "mlp.mlp2_bias": normal(E, C, std=0.5),
        })
    return w


def hf_weights(w: dict, mxfp4: bool) -> dict:
    """The same model under Hugging Face's names (transformers' converter's mapping): q, k and v
    apart, the experts' MXFP4 blocks as they are, or dequantized to bf16 and transposed."""
    out = {"model.embed_tokens.weight": w["embedding.weight"], "model.norm.weight": w["norm.scale"],
           "lm_head.weight": w["unembedding.weight"]}
    for i in range(2):
        p, h = f"block.{i}.", f"model.layers.{i}."
        a, m = h + "self_attn.", h + "mlp."
        q, k = H * HD, KV * HD
        for kind in ("weight", "bias"):
            qkv = w[p + "attn.qkv." + kind]
            out.update({a + "q_proj." + kind: qkv[:q].clone(),
                        a + "k_proj." + kind: qkv[q:q + k].clone(),
                        a + "v_proj." + kind: qkv[q + k:].clone(),
                        a + "o_proj." + kind: w[p + "attn.out." + kind]})
        out.update({a + "sinks": w[p + "attn.sinks"],
                    h + "input_layernorm.weight": w[p + "attn.norm.scale"],
                    h + "post_attention_layernorm.weight": w[p + "mlp.norm.scale"],
                    m + "router.weight": w[p + "mlp.gate.weight"],
                    m + "router.bias": w[p + "mlp.gate.bias"],
                    m + "experts.gate_up_proj_bias": w[p + "mlp.mlp1_bias"],
                    m + "experts.down_proj_bias": w[p + "mlp.mlp2_bias"]})
        for mine, theirs in (("mlp1_weight", "gate_up_proj"), ("mlp2_weight", "down_proj")):
            b, s = w[p + f"mlp.{mine}.blocks"], w[p + f"mlp.{mine}.scales"]
            if mxfp4:
                out.update({m + f"experts.{theirs}_blocks": b, m + f"experts.{theirs}_scales": s})
            else:  # [E, out, in] -> [E, in, out]
                out[m + f"experts.{theirs}"] = \
                    mxfp4_dequantized(b, s).permute(0, 2, 1).contiguous()
    return out


def write(directory, config: dict, tensors: dict):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt_oss")
    w = weights()
    write(d / "original", ORIGINAL, w)
    write(d / "hf", HF_CONFIG, hf_weights(w, mxfp4=True))
    bf16 = {k: v for k, v in HF_CONFIG.items() if k != "quantization_config"}
    write(d / "hf_bf16", bf16, hf_weights(w, mxfp4=False))
    cfg = tiny_config(d, name="eval", vocab=V, eval__sequences=EVAL)
    return d, cfg


def reference_model(d):
    m = oss.Transformer.from_checkpoint(str(d / "original"), device="cpu")
    return m.to(torch.float64)


def val_sequences(d):
    tokens = np.fromfile(d / "data" / "val_000.bin", dtype="<u2", offset=1024).astype(np.int64)
    return [(torch.from_numpy(tokens[k * SEQ:k * SEQ + SEQ]),
             torch.from_numpy(tokens[k * SEQ + 1:k * SEQ + SEQ + 1])) for k in range(EVAL)]


def reference_loss_accuracy(model, d):
    losses, hits = [], 0
    with torch.no_grad():
        for x, y in val_sequences(d):
            logits = model(x)
            losses.append(torch.nn.functional.cross_entropy(logits, y).item())
            hits += int((logits.argmax(-1) == y).sum())
    return float(np.mean(losses)), hits / (EVAL * SEQ)


def imported(d, name):
    out = d / f"{name}.h5"
    if not out.exists():
        p = tool("triad-convert", "import", d / name, out, "--seq-len", SEQ)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "gpt-oss model" in p.stdout, p.stdout
    return out


@pytest.mark.parametrize("name", ["hf", "hf_bf16", "original"])
def test_gpt_oss_evaluates_and_generates_as_openais_reference(files, name):
    d, cfg = files
    ckpt = imported(d, name)
    with h5py.File(ckpt, "r") as f:
        a = f["model"].attrs
        assert (a["attn_sinks"], a["moe_bias"], a["rope_yarn_truncate"]) == (1, 1, 0)
        assert (float(a["glu_alpha"]), float(a["glu_limit"]), float(a["glu_offset"])) == \
            (1.702, 1.0, 1.0)
        assert (a["sliding_window"], a["full_attention_every"], a["head_dim"]) == (8, 2, HD)
        assert (a["moe_experts"], a["moe_top_k"], a["n_kv_head"]) == (E, K, KV)
        assert f["model/h/0/mlp/experts/c_fc/weight"].shape == (E, 2 * I, C)
    model = reference_model(d)
    want_loss, want_acc = reference_loss_accuracy(model, d)
    p = train("--config", cfg, "--eval-only", "--init-from", ckpt, "--model-from", ckpt,
              check=True)
    loss = float(p.stdout.split("val loss")[1].split()[0])
    acc = float(p.stdout.split("val accuracy")[1].split()[0])
    print(f"\n[{name}] val loss triad {loss:.6f} reference {want_loss:.6f}, accuracy triad "
          f"{acc:.4f} reference {want_acc:.4f}")
    assert abs(loss - want_loss) <= 1e-5 * want_loss, (loss, want_loss)
    assert abs(acc - want_acc) <= 1.5 / (EVAL * SEQ), (acc, want_acc)
    # Greedy decoding: the reference's TokenGenerator at temperature 0, the whole context each
    # token; triad's key/value cache.
    prompt = [5, 77, 123, 9, 250, 31]
    gen = oss.TokenGenerator.__new__(oss.TokenGenerator)
    gen.device, gen.model = torch.device("cpu"), model
    with torch.no_grad():
        want = list(gen.generate(prompt, stop_tokens=[], temperature=0.0, max_tokens=12))
    p = run([exe("triad-generate"), "--checkpoint", ckpt, "--top-k", "1", "--prompt-ids",
             " ".join(map(str, prompt)), "--length", "12", "--output", "ids"], check=True)
    assert [int(t) for t in p.stdout.split()] == want
    p = tool("triad-ckpt", ckpt)  # complete, consistent, its attributes in range
    assert p.returncode == 0 and "status: OK" in p.stdout, p.stdout + p.stderr
    # Trained on with YaRN's rounded ramp: another model, refused by that key.
    p = train("--config", cfg, "--init-from", ckpt, "--model-from", ckpt,
              "--model.rope_yarn_truncate", "true", "--run.name", f"rounded_{name}")
    assert_clean_error(p, "model.rope_yarn_truncate = true", str(ckpt))


def test_gpt_oss_forms_import_alike_and_its_parts_count(files):
    """The MXFP4 and the bf16 files, and OpenAI's own, import to the same checkpoint, tensor for
    tensor; and the
    reference's loss moves by more than 10 times the bound the test above holds triad to without
    the sinks, the clamp or the experts' biases (seen: 1e-3, 3e-3 and 3e-3 of it), so that each
    is in what it compares."""
    d, _ = files
    a = imported(d, "hf")
    for other in ("hf_bf16", "original"):
        b = imported(d, other)
        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
            names = []
            fa["model"].visit(lambda n: names.append(n)
                              if isinstance(fa["model"][n], h5py.Dataset) else None)
            assert len(names) == 3 + 2 * 13, names  # wte, ln_f, lm_head; 13 a layer
            assert dict(fa["model"].attrs) == dict(fb["model"].attrs), other
            for n in names:
                np.testing.assert_array_equal(fa["model"][n][()], fb["model"][n][()],
                                              err_msg=f"{other} {n}")
    model = reference_model(d)
    base, _ = reference_loss_accuracy(model, d)
    with torch.no_grad():
        for change in ("sinks", "limit", "bias"):
            m = reference_model(d)
            for blk in m.block:
                if change == "sinks":
                    blk.attn.sinks.fill_(-1e4)
                elif change == "limit":
                    blk.mlp.swiglu_limit = 7.0
                else:
                    blk.mlp.mlp2_bias.zero_()
            other, _ = reference_loss_accuracy(m, d)
            print(f"\n{change}: {other:.6f} vs {base:.6f}")
            assert abs(other - base) > 1e-4 * base, change  # (10 times the bound above)


def test_gpt_oss_refusals_name_the_problem(files, tmp_path):
    d, _ = files

    def refused(config_edit=None, tensors_edit=None, *needles):
        src = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        src.mkdir()
        cfg = json.loads((d / "hf" / "config.json").read_text())
        if config_edit:
            config_edit(cfg)
        (src / "config.json").write_text(json.dumps(cfg))
        t = load_file(str(d / "hf" / "model.safetensors"))
        if tensors_edit:
            tensors_edit(t)
        save_file(t, str(src / "model.safetensors"))
        out = tmp_path / "out.h5"
        assert_clean_failure(tool("triad-convert", "import", src, out), *needles)
        assert not out.exists()

    refused(lambda c: c.update(quantization_config={"quant_method": "fp8"}), None,
            "quantization_config", "mxfp4")
    refused(lambda c: c.update(num_hidden_layers=3, layer_types=[
        "sliding_attention", "full_attention", "full_attention"]), None, "layer_types",
        "repeat with a period")
    refused(lambda c: c.update(layer_types=["sliding_attention", "global"]), None,
            "layer_types", "one of sliding_attention and full_attention")
    refused(lambda c: c.update(sliding_window=None), None, "sliding layers need a window")
    refused(lambda c: c["rope_scaling"].update(factor=8.0), None,
            "factor 8.0 is not max_position_embeddings / original_max_position_embeddings")
    refused(lambda c: c.update(hidden_act="gelu"), None, "hidden_act 'gelu'")
    refused(None, lambda t: t.pop("model.layers.1.self_attn.sinks"),
            "model.layers.1.self_attn.sinks missing")
    refused(None, lambda t: t["model.layers.0.mlp.experts.down_proj_scales"].fill_(255),
            "down_proj_scales holds 255")
    refused(None, lambda t: t.update({"model.layers.0.mlp.experts.gate_up_proj":
                                      torch.zeros(E, C, 2 * I, dtype=torch.bfloat16)}),
            "not part of a gpt-oss model", "mix MXFP4 and bf16")
    # OpenAI's own config with a key its ModelConfig does not have.
    src = tmp_path / "openai"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({**ORIGINAL, "rope_scaling": {"type": "yarn"}}))
    (src / "model.safetensors").write_bytes((d / "original" / "model.safetensors").read_bytes())
    assert_clean_failure(tool("triad-convert", "import", src, tmp_path / "o.h5"),
                         "rope_scaling not among the keys of OpenAI's gpt-oss config")


def reference_from_hf(directory):
    """OpenAI's reference model (float64) holding a Hugging Face gpt-oss directory's fp32 or
    bf16 tensors, mapped to its own names and layouts as transformers' converter maps them the
    other way (q, k, v joined; the experts' [E, in, out] transposed back)."""
    t = load_file(str(directory / "model.safetensors"))
    sd = {"embedding.weight": t["model.embed_tokens.weight"], "norm.scale": t["model.norm.weight"],
          "unembedding.weight": t["lm_head.weight"]}
    for i in range(2):
        p, h = f"block.{i}.", f"model.layers.{i}."
        a, m = h + "self_attn.", h + "mlp."
        for kind in ("weight", "bias"):
            sd[p + "attn.qkv." + kind] = torch.cat([t[a + f"{x}_proj.{kind}"] for x in "qkv"])
            sd[p + "attn.out." + kind] = t[a + "o_proj." + kind]
        sd.update({p + "attn.sinks": t[a + "sinks"],
                   p + "attn.norm.scale": t[h + "input_layernorm.weight"],
                   p + "mlp.norm.scale": t[h + "post_attention_layernorm.weight"],
                   p + "mlp.gate.weight": t[m + "router.weight"],
                   p + "mlp.gate.bias": t[m + "router.bias"],
                   p + "mlp.mlp1_weight": t[m + "experts.gate_up_proj"].permute(0, 2, 1),
                   p + "mlp.mlp1_bias": t[m + "experts.gate_up_proj_bias"],
                   p + "mlp.mlp2_weight": t[m + "experts.down_proj"].permute(0, 2, 1),
                   p + "mlp.mlp2_bias": t[m + "experts.down_proj_bias"]})
    model = oss.Transformer(oss.ModelConfig(**ORIGINAL), device=torch.device("cpu"))
    model = model.to(torch.float64).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(sd.pop(name).double())
    assert not sd, sorted(sd)  # every tensor of the export has its place
    return model


def test_gpt_oss_fine_tuned_run_exports_as_gpt_oss(files, tmp_path):
    """A run fine-tuned from the import (3 AdamW steps: every tensor moves) exports to Hugging
    Face's gpt-oss (--to hf): its config.json names the same model, it imports back to the
    run's tensors exactly, and OpenAI's reference model holding the exported tensors computes the
    run's validation loss (to 1e-5). A model with sinks that the format cannot hold is refused."""
    d, cfg = files
    ckpt = imported(d, "hf")
    train("--config", cfg, "--init-from", ckpt, "--model-from", ckpt, "--run.name", "ft",
          "--train.steps", 3, "--eval.every", 3, "--checkpoint.every", 3, check=True)
    run_dir = d / "runs" / "ft"
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        assert list(f["val/step"][()]) == [0, 3]
        triad_loss = float(f["val/loss"][-1])
    out = tmp_path / "export"
    p = tool("triad-convert", "export", run_dir, out, "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stdout + p.stderr
    c = json.loads((out / "config.json").read_text())
    assert (c["model_type"], c["layer_types"], c["sliding_window"], c["head_dim"]) == \
        ("gpt_oss", HF_CONFIG["layer_types"], 8, HD)
    assert c["rope_scaling"] == {**HF_CONFIG["rope_scaling"]} and c["max_position_embeddings"] == 64
    assert (c["swiglu_limit"], c["num_local_experts"], c["num_experts_per_tok"]) == (1.0, E, K)
    back = tmp_path / "back.h5"
    p = tool("triad-convert", "import", out, back, "--seq-len", SEQ)
    assert p.returncode == 0, p.stdout + p.stderr
    final = run_dir / "ckpt" / "step_00000003.h5"
    with h5py.File(final, "r") as fa, h5py.File(back, "r") as fb:
        for n in ("wte/weight", "h/1/attn/sinks", "h/0/attn/c_attn/weight",
                  "h/0/mlp/experts/c_fc/weight", "h/1/mlp/experts/c_fc/bias",
                  "h/1/mlp/experts/c_proj/weight", "h/0/mlp/router/bias", "lm_head/weight"):
            want = fa["model"][n][()]
            if n in ("wte/weight", "lm_head/weight"):
                want = want[:V]
            np.testing.assert_array_equal(fb["model"][n][()][:len(want)], want, err_msg=n)
    ref_loss, _ = reference_loss_accuracy(reference_from_hf(out), d)
    print(f"\nfine-tuned: val loss triad {triad_loss:.6f} reference {ref_loss:.6f}")
    assert abs(ref_loss - triad_loss) <= 1e-5 * triad_loss, (ref_loss, triad_loss)
    # gpt-oss's SwiGLU with another gain: transformers before 5 compute 1.702 alone.
    with h5py.File(final, "r") as f:
        a = dict(f["model"].attrs)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(final.read_bytes())
    with h5py.File(bad, "r+") as f:
        f["model"].attrs["glu_alpha"] = 1.5
    assert_clean_failure(tool("triad-convert", "export", bad, tmp_path / "x", "--to", "hf"),
                         "bad.h5", "export as Hugging Face's gpt-oss",
                         "SwiGLU of glu_alpha 1.5")
    assert not (tmp_path / "x").exists() and a["attn_sinks"] == 1
    # Plain rope (no YaRN) exports as rope_type default, which an absent scaling is not there,
    # and imports back as plain rope; so does transformers 5's rope_parameters of that type.
    plain = tmp_path / "plain.h5"
    plain.write_bytes(final.read_bytes())
    with h5py.File(plain, "r+") as f:
        for k in ("rope_scaling", "rope_scaling_factor", "rope_original_positions",
                  "rope_yarn_beta_fast", "rope_yarn_beta_slow", "rope_yarn_mscale",
                  "rope_yarn_mscale_all_dim", "rope_yarn_truncate"):
            if k in f["model"].attrs:
                del f["model"].attrs[k]
    p = tool("triad-convert", "export", plain, tmp_path / "plain", "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stdout + p.stderr
    c = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert c["rope_scaling"] == {"rope_type": "default"} and c["max_position_embeddings"] == SEQ
    five = {k: v for k, v in c.items() if k != "rope_scaling"}
    five["rope_parameters"] = {"rope_type": "default", "rope_theta": c.pop("rope_theta")}
    five.pop("rope_theta")
    (tmp_path / "plain5").mkdir()
    (tmp_path / "plain5" / "config.json").write_text(json.dumps(five))
    (tmp_path / "plain5" / "model.safetensors").symlink_to(tmp_path / "plain" / "model.safetensors")
    for src in ("plain", "plain5"):
        p = tool("triad-convert", "import", tmp_path / src, tmp_path / f"{src}.back.h5")
        assert p.returncode == 0, p.stdout + p.stderr
        with h5py.File(tmp_path / f"{src}.back.h5", "r") as f:
            assert "rope_scaling" not in f["model"].attrs, src
            assert float(f["model"].attrs["rope_theta"]) == HF_CONFIG["rope_theta"]
