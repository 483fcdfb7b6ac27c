"""eval.loss_by_position against an independent reference: the per-token losses of PyTorch's
model (tests/reference/gpt_torch.py, double precision) averaged at each position over the
validation sequences, with a loss mask leaving some targets out, and of a second set given by
eval.sets; the same values on tensor-, pipeline-, context- and data-parallel grids, across a
resume, in --eval-only's summary, and drawn by triad-plot-positions.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
import gpt_torch as ref  # noqa: E402
import test_reference_model as trm  # noqa: E402
from test_reference_model import _torch_threads, tmp_root  # noqa: E402,F401 (its fixtures)
from triad_run import assert_clean_failure, tool, write_loss_mask  # noqa: E402


def reference_by_position(p, val: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """Mean cross-entropy at each position over the first n sequences; NaN where every target
    at that position is masked (mask[i] = 0: the target token i is not counted)."""
    T = p.case.cfg.seq_len
    x, y = ref.batch(val, 0, n, T)
    with torch.no_grad():
        w = {k: v.double() for k, v in p.weights.items()}
        logits = ref.forward(w, p.case.cfg, x)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               y.reshape(-1), reduction="none")
    ce = ce.reshape(n, T).numpy()
    # The target of input i is token i + 1; its mask byte is the target token's.
    counted = np.stack([mask[s * T + 1:s * T + T + 1] for s in range(n)]).astype(bool)
    sums, counts = (ce * counted).sum(axis=0), counted.sum(axis=0)
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def positions_of(run_dir: Path, group: str = "val_positions") -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        return f[f"{group}/step"][:], f[f"{group}/loss"][:]


SET = "val_set_positions/other"  # eval.sets' "other": the training shard's first sequences


def test_loss_by_position_matches_torch_on_every_grid(tmp_root, tmp_path):
    case = next(c for c in trm.CASES if c.name == "llama")  # T = 16: cp 2 takes pieces of 4
    p = trm.prepare(case, tmp_root)
    T, n = case.cfg.seq_len, case.val_sequences
    val = p.val_tokens.astype(np.int64)
    ref.write_token_shard(tmp_path / "val_000.bin", val)
    rng = np.random.default_rng(11)
    mask = (rng.random(len(val)) < 0.7).astype(np.uint8)
    mask[np.arange(len(val)) % T == 5] = 0  # position 4's targets: all masked (NaN)
    write_loss_mask(tmp_path / "val_000.bin", mask)
    want = reference_by_position(p, val, mask, n)
    assert np.isnan(want[4]) and np.isfinite(np.delete(want, 4)).all(), want
    assert np.nanmax(want) - np.nanmin(want) > 1e-3  # positions differ: a mix-up would show
    # A set without a mask file (every target counted) of other tokens.
    other = p.train_tokens.astype(np.int64)
    ref.write_token_shard(tmp_path / "other_000.bin", other)
    want_set = reference_by_position(p, other, np.ones(len(other), np.uint8), n)
    assert np.isfinite(want_set).all() and np.nanmax(np.abs(want_set - want)) > 1e-2, want_set
    sections = trm.config_sections(case, p.dir, eval__loss_by_position="true",
                                   data__val=str(tmp_path / "val_000.bin"), data__loss_mask="auto",
                                   eval__sets=f"other={tmp_path}/other_*.bin")
    cfg = tmp_path / "positions.ini"
    ref.write_config(cfg, sections)
    train = trm.binary("triad-train")

    out = trm.run([train, "--config", cfg, "--eval-only", "--init-from", p.ckpt])
    for label, expected in (("val", want), ("other", want_set)):
        line = next(l for l in out.splitlines() if l.startswith(f"{label} loss by position:"))
        spans = re.findall(r"(\d+)-(\d+) ([^, ]+)", line)
        assert len(spans) == 8, line
        for lo, hi, got in spans:
            part = expected[int(lo):int(hi) + 1]
            assert abs(float(got) - np.nanmean(part)) < 1e-4, (line, part)

    # metrics.h5 of one rank and of each grid (2 steps, evaluating at 0, 1, 2), and of a run
    # resumed at step 1: the rows at step 0 are the reference's, every grid's are one rank's.
    mpirun = shutil.which("mpirun")
    assert mpirun, "mpirun not found"
    common = ["--config", cfg, "--init-from", p.ckpt, "--resume", "none", "--train.steps", 2,
              "--eval.every", 1, "--checkpoint.every", 1, "--checkpoint.keep", 0,
              "--run.dir", tmp_path / "runs"]
    trm.run([train, *common, "--run.name", "one"])
    steps, one = positions_of(tmp_path / "runs" / "one")
    np.testing.assert_array_equal(steps, [0, 1, 2])
    assert one.shape == (3, T)
    np.testing.assert_allclose(one[0], want, rtol=2e-6, equal_nan=True)
    assert np.isnan(one[:, 4]).all() and not np.allclose(one[2], one[0], equal_nan=True)
    set_steps, one_set = positions_of(tmp_path / "runs" / "one", SET)
    np.testing.assert_array_equal(set_steps, steps)
    assert one_set.shape == (3, T)
    np.testing.assert_allclose(one_set[0], want_set, rtol=2e-6)
    for name, grid in (("tp", ["--parallel.tp", 2]), ("pp", ["--parallel.pp", 2]),
                       ("cp", ["--parallel.cp", 2]), ("dp", ["--train.micro_batch_size", 1])):
        r = subprocess.run([mpirun, "--oversubscribe", "-np", "2", str(train),
                            *map(str, common), "--run.name", name, *map(str, grid)],
                           capture_output=True, text=True,
                           env=dict(trm.run_env(), OMP_NUM_THREADS="1"), timeout=300)
        assert r.returncode == 0, (name, r.stderr)
        got_steps, got = positions_of(tmp_path / "runs" / name)
        np.testing.assert_array_equal(got_steps, steps, err_msg=name)
        np.testing.assert_allclose(got, one, rtol=2e-6, equal_nan=True, err_msg=name)
        np.testing.assert_allclose(positions_of(tmp_path / "runs" / name, SET)[1], one_set,
                                   rtol=2e-6, err_msg=name)
    trm.run([train, "--config", cfg, "--train.steps", 2, "--eval.every", 1, "--run.dir",
             tmp_path / "runs", "--run.name", "one", "--resume",
             tmp_path / "runs" / "one" / "ckpt" / "step_00000001.h5"])
    resumed_steps, resumed = positions_of(tmp_path / "runs" / "one")
    np.testing.assert_array_equal(resumed_steps, [0, 1, 2])
    np.testing.assert_array_equal(resumed, one)
    resumed_steps, resumed = positions_of(tmp_path / "runs" / "one", SET)
    np.testing.assert_array_equal(resumed_steps, [0, 1, 2])
    np.testing.assert_array_equal(resumed, one_set)
    # eval.sets without data.val: the set's positions alone.
    trm.run([train, *common, "--run.name", "sets", "--data.val", ""])
    with h5py.File(tmp_path / "runs" / "sets" / "metrics.h5", "r") as f:
        assert "val_positions" not in f and "val" in f
    np.testing.assert_array_equal(positions_of(tmp_path / "runs" / "sets", SET)[1], one_set)

    # triad-plot-positions draws them, and says plainly when a run has none.
    png = tmp_path / "positions.png"
    r = tool("triad-plot-positions", tmp_path / "runs" / "one", "--out", png)
    assert r.returncode == 0 and r.stdout.strip() == str(png), r.stdout + r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000
    set_png = tmp_path / "other.png"
    r = tool("triad-plot-positions", tmp_path / "runs" / "sets", "--set", "other", "--out", set_png)
    assert r.returncode == 0 and r.stdout.strip() == str(set_png), r.stdout + r.stderr
    assert set_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and set_png.stat().st_size > 10000
    assert_clean_failure(tool("triad-plot-positions", tmp_path / "runs" / "sets", "--out", png),
                         "no /val_positions group", "eval.loss_by_position")
    assert_clean_failure(tool("triad-plot-positions", tmp_path / "runs" / "sets", "--set", "web",
                              "--out", png), "no /val_set_positions/web group", "other")
    trm.run([train, "--config", cfg, "--init-from", p.ckpt, "--resume", "none", "--train.steps",
             1, "--eval.loss_by_position", "false", "--run.dir", tmp_path / "runs",
             "--run.name", "plain"])
    assert_clean_failure(tool("triad-plot-positions", tmp_path / "runs" / "plain", "--out", png),
                         "no /val_positions group", "eval.loss_by_position")


def test_loss_by_position_needs_validation_data(tmp_root, tmp_path):
    case = next(c for c in trm.CASES if c.name == "llama")
    p = trm.prepare(case, tmp_root)
    for over, needle in ((dict(data__val=""), "needs data.val or eval.sets"),
                         (dict(eval__sequences=0), "eval.sequences > 0")):
        cfg = tmp_path / "bad.ini"
        ref.write_config(cfg, trm.config_sections(case, p.dir, eval__loss_by_position="true",
                                                  **over))
        r = subprocess.run([str(trm.binary("triad-train")), "--config", str(cfg), "--eval-only",
                            "--init-from", str(p.ckpt)], capture_output=True, text=True,
                           env=trm.run_env(), timeout=300)
        assert r.returncode != 0 and "eval.loss_by_position" in r.stderr, r.stderr
        assert needle in r.stderr, r.stderr
