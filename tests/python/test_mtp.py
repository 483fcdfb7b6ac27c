"""Multi-token prediction (model.mtp_depth, train.mtp_loss_weight) through triad-train and the
tools: the modules' loss is logged beside the main one, a run resumes bit for bit, the checkpoint
holds the modules' tensors and the mtp_depth attribute (a config or a damaged attribute that
disagrees is refused), and the model still evaluates and generates with its layers and head
alone. (Their gradients and updates against PyTorch: test_reference_model's mtp and mtpllama
cases; across grids: test_model_parallel's MultiTokenPrediction.)"""
from __future__ import annotations

import h5py
import numpy as np

from test_moe import resumes_exactly
from triad_run import VOCAB, assert_clean_error, exe, run, tiny_config, tool, train


def curves(path):
    with h5py.File(path / "metrics.h5", "r") as f:
        return {k: f["train"][k][:] for k in ("loss", "grad_norm", "mtp_loss")}


def test_modules_train_log_resume_exactly_and_must_agree(tmp_path):
    cfg = tiny_config(tmp_path, name="whole", train__steps=8, eval__every=4, checkpoint__every=4,
                      data__shuffle="false", model__mtp_depth=2, train__mtp_loss_weight=0.3)
    p = train("--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "| mtp loss " in p.stdout
    whole = curves(tmp_path / "runs" / "whole")
    assert np.all(np.isfinite(whole["mtp_loss"])) and np.all(whole["mtp_loss"] > 0)
    resumes_exactly(tmp_path, cfg, whole, 4, curves)  # interrupted at step 4
    ckpt = tmp_path / "runs" / "whole" / "ckpt" / "step_00000008.h5"
    with h5py.File(ckpt, "r") as f:
        m = f["model"]
        assert m.attrs["mtp_depth"] == 2
        C = int(m.attrs["n_embd"])
        assert m["mtp/1/eh_proj/weight"].shape == (C, 2 * C)
        assert m["mtp/0/attn/c_attn/weight"].shape == m["h/0/attn/c_attn/weight"].shape
        for n in ("ln_e", "ln_h", "ln_f"):
            assert m[f"mtp/0/{n}/weight"].shape == (C,)
    assert tool("triad-ckpt", ckpt).returncode == 0  # the inspector expects these tensors
    # Generation reads the layers and the head alone.
    g = run([exe("triad-generate"), "--checkpoint", str(ckpt), "--vocab", VOCAB, "--prompt-ids",
             "1 2 3", "--length", "8", "--top-k", "1", "--output", "ids"])
    assert g.returncode == 0 and len(g.stdout.split()) == 8, g.stdout + g.stderr
    # Exports leave the modules out, and say so.
    e = tool("triad-convert", "export", ckpt, tmp_path / "hf", "--to", "hf")
    assert e.returncode == 0 and "2 multi-token prediction module(s)" in e.stdout + e.stderr, \
        e.stdout + e.stderr
    # A config without the modules is refused at the resume, and so is a damaged attribute.
    p = train("--config", cfg, "--resume", ckpt, "--model.mtp_depth", "1", "--train.steps", 9)
    assert_clean_error(p, "2 multi-token prediction modules", "model.mtp_depth = 1", str(ckpt))
    bad = tmp_path / "bad_mtp.h5"
    bad.write_bytes(ckpt.read_bytes())
    with h5py.File(bad, "r+") as f:
        f["model"].attrs["mtp_depth"] = 17
    p = train("--config", cfg, "--resume", bad, "--train.steps", 9)
    assert_clean_error(p, "attribute mtp_depth of /model is 17, not in [0, 16]", str(bad))


def test_weight_zero_trains_the_model_without_the_modules(tmp_path):
    """train.mtp_loss_weight = 0: the modules run and report their loss but give no gradient,
    so the layers train exactly as without them (the same main loss, bit for bit)."""
    cfg = tiny_config(tmp_path, name="plain", train__steps=4, eval__every=0, checkpoint__every=0,
                      data__shuffle="false")
    p = train("--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    p = train("--config", cfg, "--run.name", "zero", "--model.mtp_depth", 1,
              "--train.mtp_loss_weight", 0)
    assert p.returncode == 0, p.stdout + p.stderr
    with h5py.File(tmp_path / "runs" / "plain" / "metrics.h5", "r") as f:
        plain = f["train"]["loss"][:]
        assert np.all(np.isnan(f["train"]["mtp_loss"][:]))
    zero = curves(tmp_path / "runs" / "zero")
    np.testing.assert_array_equal(zero["loss"], plain)
    assert np.all(np.isfinite(zero["mtp_loss"]))
    # ... and with a weight the layers train otherwise.
    p = train("--config", cfg, "--run.name", "weighted", "--model.mtp_depth", 1)
    assert p.returncode == 0, p.stdout + p.stderr
    assert curves(tmp_path / "runs" / "weighted")["loss"][-1] != plain[-1]


def test_modules_with_experts_balance_resume_exactly_and_plot(tmp_path):
    """DeepSeek-V3's layout: the first layer dense, the others' and the module's block's experts,
    balanced by their router biases (train.moe_bias_rate). The module's loads are logged beside
    the layers' (/moe_load/mtp0), its biases saved (router_bias/mtp/0) and restored by a resume,
    which continues bit for bit; triad-ckpt and triad-plot-moe take the run."""
    cfg = tiny_config(tmp_path, name="whole", train__steps=6, eval__every=0, checkpoint__every=3,
                      data__shuffle="false", model__mtp_depth=1, model__moe_experts=4,
                      model__moe_top_k=2, model__moe_first_dense=1, model__mlp_hidden=32,
                      model__moe_score="sigmoid", train__moe_bias_rate=0.01,
                      train__moe_load_every=1)
    p = train("--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    whole = curves(tmp_path / "runs" / "whole")
    with h5py.File(tmp_path / "runs" / "whole" / "metrics.h5", "r") as f:
        assert sorted(f["moe_load"]) == ["h1", "mtp0", "step"]
        assert f["moe_load/mtp0"].shape == (6, 4)
        np.testing.assert_allclose(f["moe_load/mtp0"][()].sum(-1), 1.0)
    ckpt = tmp_path / "runs" / "whole" / "ckpt" / "step_00000006.h5"
    with h5py.File(ckpt, "r") as f:
        assert np.any(f["router_bias/mtp/0"][()] != 0) and np.any(f["router_bias/h/1"][()] != 0)
    resumes_exactly(tmp_path, cfg, whole, 3, curves)
    with h5py.File(ckpt, "r") as a, \
            h5py.File(tmp_path / "runs" / "cut" / "ckpt" / "step_00000006.h5", "r") as b:
        np.testing.assert_array_equal(a["router_bias/mtp/0"][()], b["router_bias/mtp/0"][()])
    assert tool("triad-ckpt", ckpt).returncode == 0
    out = tmp_path / "moe.png"
    p = tool("triad-plot-moe", tmp_path / "runs" / "whole", "--out", out)
    assert p.returncode == 0 and out.stat().st_size > 0, p.stdout + p.stderr


def test_init_from_adds_or_drops_modules(tmp_path):
    """--init-from a checkpoint with another number of modules (fine-tuning with multi-token
    prediction from a model trained without, or the reverse): the layers, embedding and head come
    from the checkpoint (the first evaluation is the checkpoint's own last one), the modules it
    lacks start from their initialization, those it has beyond the config's are left out; a
    resume still refuses the mismatch."""
    cfg = tiny_config(tmp_path, name="plain", train__steps=4, eval__every=4, checkpoint__every=4,
                      data__shuffle="false", model__moe_experts=4, model__moe_top_k=2,
                      model__moe_first_dense=1, model__mlp_hidden=32, train__moe_bias_rate=0.01)
    p = train("--config", cfg)  # (experts in layer 1 and in the modules' blocks)
    assert p.returncode == 0, p.stdout + p.stderr
    plain = tmp_path / "runs" / "plain" / "ckpt" / "step_00000004.h5"

    def val(name):
        with h5py.File(tmp_path / "runs" / name / "metrics.h5", "r") as f:
            return f["val"]["loss"][:]

    p = train("--config", cfg, "--run.name", "added", "--init-from", plain, "--model.mtp_depth", 2)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "holds 0 multi-token prediction module(s) of the config's 2" in p.stdout + p.stderr
    assert val("added")[0] == val("plain")[-1]
    added = tmp_path / "runs" / "added" / "ckpt" / "step_00000004.h5"
    p = train("--config", cfg, "--run.name", "dropped", "--init-from", added, "--model.mtp_depth", 1)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "holds 2 multi-token prediction module(s), the config 1" in p.stdout + p.stderr
    assert val("dropped")[0] == val("added")[-1]
    with h5py.File(added, "r") as a, \
            h5py.File(tmp_path / "runs" / "dropped" / "ckpt" / "step_00000004.h5", "r") as b:
        assert "1" not in b["model/mtp"] and sorted(b["router_bias/mtp"]) == ["0"]
        assert sorted(a["router_bias/mtp"]) == ["0", "1"]
    p = train("--config", cfg, "--run.name", "plain", "--resume", added, "--train.steps", 5)
    assert_clean_error(p, "2 multi-token prediction modules", "model.mtp_depth = 0")
