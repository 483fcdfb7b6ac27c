"""train.noise_every (the gradient noise scale) against PyTorch: the squared norms of each
replica's first micro-batch's mean gradient and of the whole batch's at the initial weights, in
double precision, beside /noise of triad-train's metrics.h5 on one rank, dp 2 (ZeRO 0, 2 and
3: the last two measured bucket by bucket before each is reduced), tp 2, cp 2 (the parts of
the gradient summed first; with dp 2 and ZeRO-2 too) and pp 2 x dp 2, also with cp 2 (each
replica's share of the step as the small batch) and ep 2 (the expert-parallel group's first
micro-batches), also with a loss mask and frozen tensors; the plot and its clean failure; the
grids it refuses.
"""

from __future__ import annotations

import fnmatch
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
from triad_run import assert_clean_failure, tool  # noqa: E402


def grad_sq(p, x, y) -> float:
    """|∇ mean cross-entropy|² over every trainable tensor (the tied wte once)."""
    model = ref.build_model(p.weights, p.case.cfg, dtype=torch.float64)
    _, loss = model(x, y)
    loss.backward()
    return float(sum((t.grad.double() ** 2).sum() for t in model.tensors().values()
                     if t.grad is not None))


def noise_rows(run_dir: Path) -> dict:
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        g = f["noise"]
        return {k: g[k][:] for k in ("step", "small_sq", "small_tokens", "big_sq", "big_tokens")}


def test_noise_scale_matches_torch_gradients(tmp_root, tmp_path):
    case = next(c for c in trm.CASES if c.name == "llama")  # micro-batches of 2, batch 4
    p = trm.prepare(case, tmp_root)
    T, B = case.cfg.seq_len, 2 * case.micro_batch
    sections = trm.config_sections(case, p.dir, train__noise_every=1, train__steps=3)
    cfg = tmp_path / "noise.ini"
    ref.write_config(cfg, sections)
    x, y = ref.batch(p.train_tokens, 0, B, T)
    big = grad_sq(p, x, y)
    want = {1: grad_sq(p, x[:2], y[:2]),  # one rank: its first micro-batch of 2
            2: np.mean([grad_sq(p, x[r * 2:r * 2 + 1], y[r * 2:r * 2 + 1]) for r in (0, 1)]),
            # a pipeline's: each data-parallel replica's share of the step (2 of the 4)
            "pp": np.mean([grad_sq(p, x[r * 2:r * 2 + 2], y[r * 2:r * 2 + 2]) for r in (0, 1)])}
    assert want[1] > 1.5 * big and want[2] > want[1]  # smaller batches, noisier gradients
    assert abs(want["pp"] - want[1]) > 1e-3 * want[1]

    train = trm.binary("triad-train")
    out = trm.run([train, "--config", cfg, "--init-from", p.ckpt, "--resume", "none",
                   "--run.dir", tmp_path / "runs", "--run.name", "one"])
    assert " | noise scale " in out and " tokens" in out, out
    one = noise_rows(tmp_path / "runs" / "one")
    np.testing.assert_array_equal(one["step"], [0, 1, 2])
    assert one["small_tokens"][0] == 2 * T and one["big_tokens"][0] == B * T
    assert abs(one["small_sq"][0] - want[1]) / want[1] < 1e-5, (one, want)
    assert abs(one["big_sq"][0] - big) / big < 1e-5, (one, big)
    with h5py.File(tmp_path / "runs" / "one" / "metrics.h5", "r") as f:
        np.testing.assert_allclose(f["train/grad_norm"][:] ** 2, one["big_sq"], rtol=1e-6)

    mpirun = shutil.which("mpirun")
    assert mpirun, "mpirun not found"
    for name, grid in (("dp", ["--train.micro_batch_size", 1]),
                       ("z2", ["--train.micro_batch_size", 1, "--parallel.zero", 2]),
                       ("z3", ["--train.micro_batch_size", 1, "--parallel.zero", 3]),
                       ("tp", ["--parallel.tp", 2]),
                       ("pp", ["--train.micro_batch_size", 1, "--parallel.pp", 2]),
                       ("cp", ["--parallel.cp", 2]),
                       ("cpz2", ["--train.micro_batch_size", 1, "--parallel.cp", 2,
                                 "--parallel.zero", 2]),
                       ("ppcp", ["--train.micro_batch_size", 1, "--parallel.pp", 2,
                                 "--parallel.cp", 2])):
        ranks = {"pp": 4, "cpz2": 4, "ppcp": 8}.get(name, 2)
        r = subprocess.run([mpirun, "--oversubscribe", "-np", str(ranks), str(train), "--config",
                            str(cfg), "--init-from", str(p.ckpt), "--resume", "none", "--run.dir",
                            str(tmp_path / "runs"), "--run.name", name, *map(str, grid)],
                           capture_output=True, text=True,
                           env=dict(trm.run_env(), OMP_NUM_THREADS="1"), timeout=300)
        assert r.returncode == 0, (name, r.stderr)
        got = noise_rows(tmp_path / "runs" / name)
        if name in ("tp", "cp"):  # the same micro-batches as one rank: its rows
            for k in one:
                np.testing.assert_allclose(got[k], one[k], rtol=2e-5, err_msg=k)
        elif name in ("pp", "ppcp"):  # each replica's share (under cp its pieces summed)
            assert got["small_tokens"][0] == 2 * T and got["big_tokens"][0] == B * T
            assert abs(got["small_sq"][0] - want["pp"]) / want["pp"] < 1e-5, (got, want)
            assert abs(got["big_sq"][0] - big) / big < 1e-5
        else:
            assert got["small_tokens"][0] == T
            assert abs(got["small_sq"][0] - want[2]) / want[2] < 1e-5, (got, want)
            assert abs(got["big_sq"][0] - big) / big < 1e-5

    png = tmp_path / "noise.png"
    r = tool("triad-plot-noise", tmp_path / "runs" / "one", "--out", png)
    assert r.returncode == 0 and r.stdout.splitlines()[0] == str(png), r.stdout + r.stderr
    assert "B_simple" in r.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trm.run([train, "--config", cfg, "--init-from", p.ckpt, "--resume", "none", "--run.dir",
             tmp_path / "runs", "--run.name", "plain", "--train.noise_every", 0])
    assert_clean_failure(tool("triad-plot-noise", tmp_path / "runs" / "plain", "--out", png),
                         "no /noise group", "train.noise_every")


def test_noise_scale_on_a_pipeline_counts_the_tied_embedding_once(tmp_root, tmp_path):
    """pp 2 x dp 2 on a model whose head is the token embedding (its two stages each hold a
    copy, whose gradients the step sums): each replica's share of the step against PyTorch."""
    case = next(c for c in trm.CASES if c.name == "oddshapes")
    assert case.cfg.tied
    p = trm.prepare(case, tmp_root)
    T, B = case.cfg.seq_len, 2 * case.micro_batch
    cfg = tmp_path / "noise.ini"
    ref.write_config(cfg, trm.config_sections(case, p.dir, train__noise_every=1, train__steps=1))
    x, y = ref.batch(p.train_tokens, 0, B, T)
    share = B // 2
    want = np.mean([grad_sq(p, x[r * share:(r + 1) * share], y[r * share:(r + 1) * share])
                    for r in (0, 1)])
    r = subprocess.run([shutil.which("mpirun"), "--oversubscribe", "-np", "4",
                        str(trm.binary("triad-train")), "--config", str(cfg), "--init-from",
                        str(p.ckpt), "--resume", "none", "--run.dir", str(tmp_path / "runs"),
                        "--run.name", "pp", "--parallel.pp", "2", "--train.micro_batch_size", "1"],
                       capture_output=True, text=True,
                       env=dict(trm.run_env(), OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 0, r.stderr
    got = noise_rows(tmp_path / "runs" / "pp")
    assert got["small_tokens"][0] == share * T
    assert abs(got["small_sq"][0] - want) / want < 1e-5, (got, want)


def test_noise_scale_under_expert_parallelism_takes_the_groups_micro_batches(tmp_root, tmp_path):
    """ep 2 on dp 2 (ZeRO 0, 1 and 2, and with tp 2) and on dp 4 (two groups): each rank's experts
    see both ranks' micro-batches, so the small batch is the group's first micro-batches (one
    sequence of each rank's share): the dense tensors' gradient summed over the group, each
    rank's experts' its own, against PyTorch's gradient of those two sequences (SwiGLU experts
    beside shared ones; no balancing term, which is each rank's own)."""
    case = next(c for c in trm.CASES if c.name == "moeswiglu")
    p = trm.prepare(case, tmp_root)
    T, B = case.cfg.seq_len, 2 * case.micro_batch
    cfg = tmp_path / "noise.ini"
    ref.write_config(cfg, trm.config_sections(case, p.dir, train__noise_every=1, train__steps=1,
                                              train__moe_aux_loss=0))
    x, y = ref.batch(p.train_tokens, 0, B, T)
    share = B // 2  # rank r trains sequences [r·share, (r + 1)·share) one at a time
    first = [0, share]
    want, big = grad_sq(p, x[first], y[first]), grad_sq(p, x, y)
    # (one rank's first sequence alone is another number)
    assert abs(grad_sq(p, x[:1], y[:1]) - want) > 1e-3 * want
    # Two expert-parallel groups (dp 4, a batch of 8: rank r trains sequences 2r, 2r + 1): each
    # group's first micro-batches (sequences 0, 2 and 4, 6), the mean over the groups.
    x8, y8 = ref.batch(p.train_tokens, 0, 8, T)
    two_groups = np.mean([grad_sq(p, x8[[g, g + 2]], y8[[g, g + 2]]) for g in (0, 4)])
    big8 = grad_sq(p, x8, y8)
    assert abs(two_groups - want) > 1e-3 * want
    for name, grid in (("ep", []), ("ep_z1", ["--parallel.zero", "1"]),
                       ("ep_z2", ["--parallel.zero", "2"]), ("ep_tp", ["--parallel.tp", "2"]),
                       ("ep_dp4", [])):
        if name == "ep_dp4":
            want, big, B, grid = two_groups, big8, 8, ["--train.batch_size", "8"]
        r = subprocess.run([shutil.which("mpirun"), "--oversubscribe", "-np",
                            "4" if name in ("ep_tp", "ep_dp4") else "2",
                            str(trm.binary("triad-train")), "--config", str(cfg), "--init-from",
                            str(p.ckpt), "--resume", "none", "--run.dir", str(tmp_path / "runs"),
                            "--run.name", name, "--parallel.ep", "2",
                            "--train.micro_batch_size", "1", *grid],
                           capture_output=True, text=True,
                           env=dict(trm.run_env(), OMP_NUM_THREADS="1"), timeout=300)
        assert r.returncode == 0, (name, r.stderr)
        got = noise_rows(tmp_path / "runs" / name)
        assert got["small_tokens"][0] == 2 * T and got["big_tokens"][0] == B * T, got
        assert abs(got["small_sq"][0] - want) / want < 1e-5, (name, got, want)
        assert abs(got["big_sq"][0] - big) / big < 1e-5, (name, got, big)


def test_noise_scale_counts_masked_targets_and_leaves_frozen_tensors_out(tmp_root, tmp_path):
    """A loss mask and train.freeze, on one rank and on ep 2 x dp 2: the small and big batches'
    squared norms are PyTorch's of the mean over their counted targets, over the tensors not
    frozen, and their token counts the counted targets."""
    case = next(c for c in trm.CASES if c.name == "moeswiglu")
    p = trm.prepare(case, tmp_root)
    T, B = case.cfg.seq_len, 2 * case.micro_batch
    tokens = p.train_tokens.astype(np.int64)
    mask = (np.random.default_rng(8).random(tokens.size) < 0.7).astype(np.uint8)
    ref.write_token_shard(tmp_path / "train_000.bin", tokens)
    ref.write_loss_mask(tmp_path / "train_000.bin.mask", mask)
    freeze = ["h/1/attn/*", "lm_head/*"]
    cfg = tmp_path / "noise.ini"
    ref.write_config(cfg, trm.config_sections(
        case, p.dir, train__noise_every=1, train__steps=1, train__moe_aux_loss=0,
        data__train=str(tmp_path / "train_*.bin"), data__loss_mask="auto",
        train__freeze=", ".join(freeze)))
    x, y = ref.masked_batch(tokens, mask, 0, B, T)

    def sq(rows):
        model = ref.build_model(p.weights, case.cfg, dtype=torch.float64)
        logits, _ = model(x[rows])
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                          y[rows].reshape(-1), ignore_index=-1).backward()
        kept = {n: t for n, t in model.tensors().items()
                if not any(fnmatch.fnmatchcase(n, g) for g in freeze)}
        assert len(kept) < len(model.tensors())
        return (float(sum((t.grad.double() ** 2).sum() for t in kept.values()
                          if t.grad is not None)), int((y[rows] >= 0).sum()))

    big = sq(list(range(B)))
    # one rank: its first micro-batch; ep 2 x dp 2: the group's first micro-batches (0 and 2)
    for name, rows, grid in (("one", [0, 1], []),
                             ("ep", [0, B // 2], ["--parallel.ep", "2",
                                                  "--train.micro_batch_size", "1"])):
        small = sq(rows)
        assert small[1] < len(rows) * T  # some targets not counted
        cmd = [str(trm.binary("triad-train")), "--config", str(cfg), "--init-from", str(p.ckpt),
               "--resume", "none", "--run.dir", str(tmp_path / "runs"), "--run.name", name,
               *grid]
        if grid:
            cmd = [shutil.which("mpirun"), "--oversubscribe", "-np", "2", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True,
                           env=dict(trm.run_env(), OMP_NUM_THREADS="1"), timeout=300)
        assert r.returncode == 0, (name, r.stderr)
        got = noise_rows(tmp_path / "runs" / name)
        assert got["small_tokens"][0] == small[1] and got["big_tokens"][0] == big[1], (name, got)
        assert abs(got["small_sq"][0] - small[0]) / small[0] < 1e-5, (name, got, small)
        assert abs(got["big_sq"][0] - big[0]) / big[0] < 1e-5, (name, got, big)


@pytest.mark.parametrize("n,args,needle", [
    (1, ["--train.micro_batch_size", 4], "at least two micro-batches per step"),
    (2, ["--parallel.pp", 2], "it needs two replicas or more (dp >= 2)"),
    (2, ["--parallel.ep", 2, "--model.moe_experts", 2, "--model.moe_top_k", 2,
         "--parallel.zero", 3, "--train.micro_batch_size", 1],
     "under expert parallelism (parallel.ep > 1) needs parallel.pp = 1, parallel.cp = 1 and "
     "parallel.zero <= 2"),
    (1, ["--train.noise_every", -1], "must be >= 0"),
])
def test_noise_scale_refuses_what_it_cannot_measure(n, args, needle, tmp_root, tmp_path):
    case = next(c for c in trm.CASES if c.name == "llama")
    p = trm.prepare(case, tmp_root)
    cfg = tmp_path / "noise.ini"
    ref.write_config(cfg, trm.config_sections(case, p.dir, train__noise_every=1))
    cmd = [str(trm.binary("triad-train")), "--config", str(cfg), "--init-from", str(p.ckpt),
           "--resume", "none", "--run.dir", str(tmp_path / "runs"), *map(str, args)]
    if n > 1:
        cmd = [shutil.which("mpirun"), "--oversubscribe", "-np", str(n), *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, env=trm.run_env(), timeout=300)
    assert r.returncode != 0 and "train.noise_every" in r.stderr and needle in r.stderr, r.stderr
