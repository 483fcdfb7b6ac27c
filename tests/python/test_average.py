"""triad-average: the mean of checkpoints, against numpy on the files' own tensors; the output
verifies (triad-ckpt), loads for evaluation and generation, and is refused for a resume; bad
inputs (another model, an incomplete file, one input, a taken or resumable output name) are
refused with one error line naming the file."""

import subprocess

import h5py
import numpy as np
import pytest

from triad_run import exe, tiny_config, tool, train


def tensors(path):
    out = {}
    with h5py.File(path, "r") as f:
        f["model"].visititems(lambda n, d: out.__setitem__(n, d[...])
                              if isinstance(d, h5py.Dataset) else None)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("avg")
    cfg = tiny_config(d, name="r", train__steps=6, checkpoint__every=2, checkpoint__keep=5)
    train("--config", cfg, check=True)
    ckpt = d / "runs" / "r" / "ckpt"
    return d, cfg, [ckpt / f"step_{s:08d}.h5" for s in (2, 4, 6)]


def test_mean_of_the_tensors(run):
    d, cfg, ckpts = run
    out = d / "avg3.h5"
    p = tool("triad-average", *ckpts, "--out", out)
    assert p.returncode == 0, p.stderr
    assert "the mean of 3 checkpoints" in p.stdout
    got, inputs = tensors(out), [tensors(c) for c in ckpts]
    assert got.keys() == inputs[0].keys()
    for name, a in got.items():
        want = (sum(t[name].astype(np.float64) for t in inputs) / 3).astype(np.float32)
        np.testing.assert_array_equal(a, want, err_msg=name)
    assert not np.array_equal(got["h/0/attn/c_attn/weight"], inputs[-1]["h/0/attn/c_attn/weight"])
    with h5py.File(out, "r") as f, h5py.File(ckpts[-1], "r") as last:
        assert int(f.attrs["step"]) == 6 and int(f.attrs["complete"]) == 1
        assert f.attrs["config"] == last.attrs["config"]
        assert "step_00000002.h5 (step 2)" in f.attrs["averaged_from"].decode()
        assert "optimizer" not in f
    ok = tool("triad-ckpt", out)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "weights only" in ok.stdout
    # Loads for evaluation (a val loss) and generation; a resume needs the optimizer state.
    p = train("--config", cfg, "--eval-only", "--init-from", out, check=True)
    assert "val loss" in p.stdout
    g = subprocess.run([exe("triad-generate"), "--checkpoint", out, "--prompt-ids", "1 2 3",
                        "--length", "4", "--output", "ids"], capture_output=True, text=True)
    assert g.returncode == 0 and len(g.stdout.split()) == 4, g.stdout + g.stderr
    p = train("--config", cfg, "--resume", out, "--train.steps", 8)
    assert p.returncode == 1 and "error" in p.stderr, p.stdout + p.stderr


def test_bad_inputs_are_refused(run, tmp_path):
    d, cfg, ckpts = run
    other = tiny_config(tmp_path, name="o", model__n_embd=64, train__steps=2)
    train("--config", other, check=True)
    wide = tmp_path / "runs" / "o" / "ckpt" / "step_00000002.h5"
    partial = tmp_path / "partial.h5"
    partial.write_bytes(ckpts[0].read_bytes())
    with h5py.File(partial, "r+") as f:
        del f.attrs["complete"]
    taken = tmp_path / "taken.h5"
    taken.write_bytes(b"x")
    for args, needle in [
            ((ckpts[0], wide, "--out", tmp_path / "a.h5"), "hold different models"),
            ((ckpts[0], partial, "--out", tmp_path / "b.h5"), f"{partial}: incomplete"),
            ((ckpts[0], "--out", tmp_path / "c.h5"), "two or more"),
            ((ckpts[0], ckpts[1], "--out", taken), "already exists"),
            ((ckpts[0], ckpts[1], "--out", tmp_path / "step_00000004.h5"), "resumable"),
            ((ckpts[0], tmp_path / "none.h5", "--out", tmp_path / "e.h5"), "none.h5"),
            (("--ema", ckpts[0], "--out", tmp_path / "f.h5"),
             "holds no moving average of the weights (/optimizer/ema/")]:
        p = tool("triad-average", *args)
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert needle in p.stderr and "Traceback" not in p.stderr, (needle, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert taken.read_bytes() == b"x"
    assert not (tmp_path / "step_00000004.h5").exists()
