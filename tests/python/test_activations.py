"""train.activations_every (μP's coordinate check): the root mean squares of the embedding's
output, each block's attention and MLP branch outputs and the residual stream after it.

- Against an independent reference: PyTorch's model (tests/reference/gpt_torch.py, double
  precision) on the same weights and batch (triad_model_probe's /activations).
- The same on every grid (tensor, sequence, pipeline, context and ZeRO data parallelism): each
  activation counted once.
- triad-coord-check draws and tabulates runs of several widths, standard and μP, and refuses
  runs it cannot use with one clear error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from test_mpi_runs import run
from triad_run import tiny_config, tool, train

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
import gpt_torch as ref  # noqa: E402
import test_reference_model as trm  # noqa: E402
from test_reference_model import _torch_threads, tmp_root  # noqa: E402,F401 (its fixtures)


@pytest.mark.parametrize("name", ["gpt2vocab", "gqa", "headdim"])
def test_activation_rms_match_torch(name, tmp_root):
    case = next(c for c in trm.CASES if c.name == name)
    p = trm.prepare(case, tmp_root)
    cfg = p.dir / "act_probe.ini"
    ref.write_config(cfg, trm.config_sections(case, p.dir))
    out = p.dir / "act_probe.h5"
    trm.run([trm.binary("triad_model_probe"), "--config", cfg, "--checkpoint", p.ckpt,
             "--out", out])
    x, _ = ref.batch(p.train_tokens, 0, case.micro_batch, case.cfg.seq_len)
    params = {k: v.double() for k, v in p.weights.items()}
    record = {}
    with torch.no_grad():
        ref.forward(params, case.cfg, x, record=record)
    want = {k: float(v.pow(2).mean().sqrt()) for k, v in record.items()}
    with h5py.File(out, "r") as f:
        got = {k: float(f["activations"][k][0]) for k in f["activations"]}
    assert set(got) == set(want)
    assert len(want) == 1 + 3 * case.cfg.n_layer
    bad = {k: (got[k], want[k]) for k in want if not abs(got[k] - want[k]) <= 1e-5 * want[k]}
    assert not bad, bad


def activations(path: Path) -> dict:
    with h5py.File(path / "metrics.h5", "r") as f:
        return {k: f["activations"][k][:] for k in f["activations"]}


GRIDS = ((4, ["--parallel.tp", 2, "--parallel.zero", 1]),
         (2, ["--parallel.tp", 2, "--parallel.sequence_parallel", "true"]),
         (2, ["--parallel.pp", 2]),
         (2, ["--parallel.cp", 2]),
         (2, ["--parallel.zero", 3]))


# Parallel blocks (model.parallel_residual): under tensor parallelism training reduces both
# branches as one, while the measuring pass reduces each on its own to see them apart.
@pytest.mark.parametrize("parallel", [False, True])
def test_activations_are_the_same_on_every_grid(tmp_path, parallel):
    extra = {"model__parallel_residual": "true"} if parallel else {}
    cfg = tiny_config(tmp_path, name="one", train__activations_every=2, train__steps=5,
                      eval__every=0, data__shuffle="false", **extra)
    p = run(1, "--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    want = activations(tmp_path / "runs" / "one")
    assert list(want["step"]) == [0, 2, 4]
    assert set(want) == {"step", "embed", "h0_attn", "h0_mlp", "h0_out", "h1_attn", "h1_mlp",
                         "h1_out"}
    for n, grid in GRIDS[:2] if parallel else GRIDS:
        name = f"g{n}_" + "_".join(map(str, grid[::2])).replace("--parallel.", "")
        p = run(n, "--config", cfg, "--run.name", name, *grid)
        assert p.returncode == 0, p.stdout + p.stderr
        got = activations(tmp_path / "runs" / name)
        assert set(got) == set(want), name
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=2e-5, err_msg=f"{name} {k}")


def test_activations_need_validation_data(tmp_path):
    cfg = tiny_config(tmp_path, train__activations_every=1)
    p = train("--config", cfg, "--data.val", "")
    assert p.returncode != 0 and "train.activations_every" in p.stderr and "data.val" in p.stderr


def test_coord_check_draws_standard_and_mup_runs(tmp_path):
    """Widths 32 and 64 under both parametrizations (μP relative to 32), 4 steps at lr 3e-2:
    the tool draws them and prints each group's slope against width."""
    runs = []
    for mup in (0, 32):
        for width in (32, 64):
            name = f"w{width}_m{mup}"
            cfg = tiny_config(tmp_path, name=name, train__activations_every=1, train__steps=4,
                              train__lr=3e-2, train__warmup_steps=0, eval__every=0,
                              model__n_embd=width, model__mup_base_width=mup)
            p = train("--config", cfg)
            assert p.returncode == 0, p.stderr
            runs.append(tmp_path / "runs" / name)
    out = tmp_path / "coord.png"
    p = tool("triad-coord-check", tmp_path / "runs", "--out", out)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [line for line in p.stdout.splitlines() if line.startswith("| SP") or
            line.startswith("| μP")]
    assert len(rows) == 2 and "32, 64" in rows[0], p.stdout
    # Chosen steps, and steps some run lacks.
    p = tool("triad-coord-check", *runs, "--steps", "0,3", "--out", out)
    assert p.returncode == 0, p.stderr
    p = tool("triad-coord-check", *runs, "--steps", "0,9", "--out", out)
    assert p.returncode == 1 and "steps [9]" in p.stderr
    # The same run named twice counts once; two runs of one width are refused.
    p = tool("triad-coord-check", tmp_path / "runs", *runs, "--out", out)
    assert p.returncode == 0, p.stderr
    other = tiny_config(tmp_path, name="w32_again", train__activations_every=1, train__steps=4,
                        eval__every=0, model__n_embd=32)
    assert train("--config", other).returncode == 0
    p = tool("triad-coord-check", *runs, tmp_path / "runs" / "w32_again", "--out", out)
    assert p.returncode == 1 and "two runs of width 32" in p.stderr
    # One width only, and a run without /activations: one clear error each.
    p = tool("triad-coord-check", runs[0], runs[2], "--out", out)
    assert p.returncode == 1 and "at least two widths" in p.stderr
    plain = tiny_config(tmp_path, name="plain", train__steps=1)
    assert train("--config", plain).returncode == 0
    p = tool("triad-coord-check", runs[0], tmp_path / "runs" / "plain", "--out", out)
    assert p.returncode == 1 and "no /activations group" in p.stderr


def test_resume_cuts_the_abandoned_rows_even_without_the_option(tmp_path):
    """A run resumed from step 3 without train.activations_every leaves /activations with the
    rows before step 3 (not the first run's steps 3..5, which its new future replaces)."""
    cfg = tiny_config(tmp_path, name="r", train__activations_every=1, train__steps=6,
                      checkpoint__every=3, eval__every=0)
    assert train("--config", cfg).returncode == 0
    assert list(activations(tmp_path / "runs" / "r")["step"]) == [0, 1, 2, 3, 4, 5]
    ckpt = tmp_path / "runs" / "r" / "ckpt" / "step_00000003.h5"
    p = train("--config", cfg, "--resume", ckpt, "--train.activations_every", 0)
    assert p.returncode == 0, p.stderr
    assert list(activations(tmp_path / "runs" / "r")["step"]) == [0, 1, 2]
