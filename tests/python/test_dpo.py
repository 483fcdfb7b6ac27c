"""Direct preference optimization (data.preferences, train.dpo_beta) against an independent
PyTorch float64 implementation of DPO's loss (Rafailov et al. 2023: -log sigmoid(beta ((pi_c -
ref_c) - (pi_r - ref_r))), pi a sequence's summed log-probability of its response tokens, ref the
same under the starting weights) on tests/reference/gpt_torch.py's model: the training curve,
the logged share of pairs ranked right and reward margin, and the final weights. Then the same
curve on every grid and a bit-exact resume, and the preference file's errors.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "reference"))
import gpt_torch as ref  # noqa: E402
from triad_run import ENV, exe  # noqa: E402

CFG = ref.GptConfig(n_layer=2, n_head=4, n_embd=48, seq_len=16, vocab_size=300)
# A mixture of experts: 4 GELU experts of 96 units, 2 per token (Mixtral's renormalized gates).
CFG_MOE = ref.GptConfig(n_layer=2, n_head=4, n_embd=48, seq_len=16, vocab_size=300,
                        mlp_hidden=96, moe_experts=4, moe_top_k=2)
PAIRS = 10  # 4 pairs a step: the third step wraps around into the second epoch
MPIRUN = shutil.which("mpirun")
MPI_ENV = dict(ENV, OMP_NUM_THREADS="1", OMPI_MCA_pml="ob1", OMPI_MCA_btl="self,vader")


def make_pairs(n: int, V: int, T: int, seed: int):
    """n pairs of (tokens, counts) sequences sharing a prompt: the prompt's tokens not counted,
    the response's counted (one response token masked here and there, as a chat format's), each
    sequence at most T + 1 tokens; a pair may share its first response tokens."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        prompt = rng.integers(0, V, int(rng.integers(1, 9)))
        sides = []
        for _ in range(2):
            r = rng.integers(0, V, int(rng.integers(1, T + 2 - len(prompt))))
            counts = np.r_[np.zeros(len(prompt)), np.ones(len(r))].astype(np.uint8)
            if len(r) > 3:
                counts[len(prompt) + 1] = 0
            sides.append((np.r_[prompt, r].astype(np.int32), counts))
        pairs.append(sides)
    return pairs


def write_preferences(path: Path, pairs, **override):
    with h5py.File(path, "w") as f:
        f.attrs["format"] = override.pop("format", "triad-preferences")
        f.attrs["version"] = override.pop("version", 1)
        for s, side in enumerate(("chosen", "rejected")):
            toks = [p[s][0] for p in pairs]
            counts = [p[s][1] for p in pairs]
            g = f.create_group(side)
            g["tokens"] = np.concatenate(toks).astype(np.int32)
            g["counts"] = np.concatenate(counts).astype(np.uint8)
            g["offsets"] = np.r_[0, np.cumsum([len(t) for t in toks])].astype(np.int64)
        for name, value in override.items():  # e.g. chosen/offsets = [...]
            del f[name]
            f[name] = value
    return path


def row(tokens, counts, T: int):
    """A sequence as a row: inputs t[:-1] then padding 0, targets t[1:] where counted, else -1."""
    x, y = np.zeros(T, np.int64), np.full(T, -1, np.int64)
    L = len(tokens)
    x[:L - 1] = tokens[:-1]
    y[:L - 1] = np.where(counts[1:] == 1, tokens[1:], -1)
    return x, y


def sections(d: Path, prefs: Path, cfg: ref.GptConfig = CFG, **over) -> dict:
    s = {
        "model": dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                      seq_len=cfg.seq_len, vocab_size=cfg.vocab_size,
                      **(dict(mlp_hidden=cfg.mlp_hidden, moe_experts=cfg.moe_experts,
                              moe_top_k=cfg.moe_top_k, moe_normalize=cfg.moe_normalize)
                         if cfg.moe_experts else {})),
        "train": dict(steps=6, batch_size=8, micro_batch_size=4, lr=3e-3, warmup_steps=2,
                      schedule="cosine", min_lr_ratio=0.1, grad_clip=1.0, seed=5, dpo_beta=0.5),
        "optim": dict(name="adamw", beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1),
        "data": dict(preferences=str(prefs), shuffle=False),
        "eval": dict(every=0),
        "checkpoint": dict(every=0, keep=1, at_start=False),
        "run": dict(threads=2, peak_tflops=1.0, dir=str(d / "runs")),
        "sample": dict(length=0),
    }
    for key, v in over.items():
        sec, k = key.split("__")
        s[sec][k] = v
    return s


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo")
    pairs = make_pairs(PAIRS, CFG.vocab_size, CFG.seq_len, seed=3)
    prefs = write_preferences(d / "prefs.h5", pairs)
    weights = ref.random_weights(CFG, seed=11, perturb=True)
    text = ref.write_config(d / "base.ini", sections(d, prefs))
    ref.write_checkpoint(d / "init.h5", CFG, weights, config_text=text)
    return d, pairs, prefs, weights


def pair_losses(kind: str, beta: float, smoothing: float, pi, ref_pi, n):
    """Each pair's loss (sequences 2j chosen, 2j + 1 rejected) as the papers define them: DPO's
    -log sigmoid(beta h) (cDPO's label smoothing), SLiC's hinge max(0, 1 - beta h), IPO's
    (h' - 1/(2 beta))^2 on per-token means as TRL computes it."""
    ratio = pi - ref_pi
    h = ratio[0::2] - ratio[1::2]
    F = torch.nn.functional
    if kind == "sigmoid":
        return (1 - smoothing) * F.softplus(-beta * h) + smoothing * F.softplus(beta * h)
    if kind == "hinge":
        return torch.relu(1 - beta * h)
    mean = ratio / n
    return (mean[0::2] - mean[1::2] - 1 / (2 * beta)) ** 2


def torch_dpo(weights, pairs, sec, held_out=(), eval_steps=(), cfg=CFG):
    """DPO (train.dpo_loss's) in float64 on the reference model: per step (loss, share right,
    margin) and the final weights. The pairs in the file's order (data.shuffle = false),
    wrapping around. With held_out pairs, their (loss, share right, margin) after each of
    eval_steps updates too (torch_dpo.val). A mixture of experts adds train.moe_aux_loss times
    Switch's balance term of each micro-batch's routing, weighted as a language model's:
    rows / the batch's counted targets."""
    tr, op, T = sec["train"], sec["optim"], cfg.seq_len
    beta, npairs = tr["dpo_beta"], tr["batch_size"] // 2
    model = ref.build_model(weights, cfg, dtype=torch.float64)
    opt = torch.optim.AdamW(model.param_groups(op["weight_decay"]), lr=tr["lr"],
                            betas=(op["beta1"], op["beta2"]), eps=op["eps"])

    def logps(idx, pairs=pairs):  # summed log-probability of each sequence's counted targets
        rows = [row(*pairs[i // 2][i % 2], T) for i in idx]
        x = torch.tensor(np.stack([r[0] for r in rows]))
        y = torch.tensor(np.stack([r[1] for r in rows]))
        logps.balance = 0.0
        if cfg.moe_experts:  # each micro-batch's routing and balance term (its rows)
            parts, mbs = [], tr["micro_batch_size"]
            for m0 in range(0, len(idx), mbs):
                with ref.moe_balance() as terms:
                    parts.append(model(x[m0:m0 + mbs])[0])
                logps.balance = logps.balance + sum(t[0] for t in terms) * x[m0:m0 + mbs].numel()
            logits = torch.cat(parts)
        else:
            logits, _ = model(x)
        assert logits.shape[-1] == cfg.vocab_size
        lp = torch.log_softmax(logits, -1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (lp * (y >= 0)).sum(-1), (y >= 0).sum(-1).double()

    def scores(pi, ref, n):
        rewards = beta * (pi - ref)
        z = rewards[0::2] - rewards[1::2]
        loss = pair_losses(tr.get("dpo_loss", "sigmoid"), beta,
                           tr.get("dpo_label_smoothing", 0.0), pi, ref, n)
        return loss.mean(), (z > 0).double().mean(), z.mean()

    every = range(2 * len(held_out))
    with torch.no_grad():
        reference, _ = logps(range(2 * len(pairs)))
        val_reference, _ = logps(every, held_out) if held_out else (None, None)
    out, torch_dpo.val = [], []
    for s in range(tr["steps"] + 1):
        if s in eval_steps:
            with torch.no_grad():
                pi, n = logps(every, held_out)
                torch_dpo.val.append([float(v) for v in scores(pi, val_reference, n)])
        if s == tr["steps"]:
            break
        lr = ref.lr_at(s, tr["lr"], tr["warmup_steps"], tr["steps"], tr["schedule"],
                       tr["min_lr_ratio"])
        for g in opt.param_groups:
            g["lr"] = lr
        idx = [2 * ((s * npairs + j) % len(pairs)) + k for j in range(npairs) for k in (0, 1)]
        opt.zero_grad(set_to_none=True)
        pi, n = logps(idx)
        loss, right, margin = scores(pi, reference[idx], n)
        (loss + tr.get("moe_aux_loss", 0.01) * logps.balance / n.sum()).backward()
        ref.clip_grad_norm_(model.parameters(), tr["grad_clip"])
        opt.step()
        out.append((float(loss), float(right), float(margin)))
    return np.array(out), {k: v.detach().numpy() for k, v in model.tensors().items()}


def train(d: Path, sec: dict, name: str, *args):
    cfg = d / f"{name}.ini"
    ref.write_config(cfg, sec)
    p = subprocess.run([exe("triad-train"), "--config", cfg, "--run.name", name,
                        "--resume", "none", *map(str, args)],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def curves(run: Path):
    with h5py.File(run / "metrics.h5", "r") as f:
        return (f["train/loss"][:], f["train/dpo_accuracy"][:], f["train/dpo_margin"][:],
                f["val/dpo_loss"][:] if "val/dpo_loss" in f else np.zeros(0))


@pytest.mark.parametrize("kind,smoothing,at_start", [("sigmoid", 0.0, np.log(2)),
                                                     ("sigmoid", 0.2, np.log(2)),
                                                     ("hinge", 0.0, 1.0), ("ipo", 0.0, 1.0)])
def test_dpo_steps_match_torch(prepared, kind, smoothing, at_start):
    """train.dpo_loss's losses (and cDPO's label smoothing). Also eval.preferences: 5 held-out
    pairs scored at steps 0, 3 and 6 (/val/dpo_*)."""
    d, pairs, prefs, weights = prepared
    held_out = make_pairs(5, CFG.vocab_size, CFG.seq_len, seed=8)
    sec = sections(d, prefs, eval__every=3,
                   eval__preferences=write_preferences(d / "held_out.h5", held_out),
                   train__dpo_loss=kind, train__dpo_label_smoothing=smoothing)
    name = f"ref-{kind}-{smoothing}"
    p = train(d, sec, name, "--init-from", d / "init.h5")
    assert "DPO (beta 0.5) on 10 preference pairs" in p.stdout
    assert "DPO's reference: the log-probabilities of 30 sequences" in p.stdout
    assert f"| DPO val loss {at_start:.4f} | val pairs right 0.000 | val margin 0.0000" in p.stdout
    loss, right, margin, _ = curves(d / "runs" / name)
    with h5py.File(d / "runs" / name / "metrics.h5", "r") as f:
        val_steps = f["val/step"][:].tolist()
        val = np.stack([f[f"val/dpo_{k}"][:] for k in ("loss", "accuracy", "margin")], axis=1)
    assert val_steps == [0, 3, 6]
    want, final = torch_dpo(weights, pairs, sec, held_out, val_steps)
    want_val = np.array(torch_dpo.val)
    print("held-out (loss, right, margin): triad", val.tolist(), "torch", want_val.tolist())
    np.testing.assert_allclose(val[:, 0], want_val[:, 0], rtol=1e-6)
    np.testing.assert_array_equal(val[:, 1], want_val[:, 1])
    np.testing.assert_allclose(val[:, 2], want_val[:, 2], rtol=1e-4, atol=1e-7)
    assert want_val[-1, 0] != want_val[0, 0]
    print("\nstep  loss(triad)   loss(torch)   right  margin(triad) margin(torch)")
    for s in range(len(loss)):
        print(f"{s:4d}  {loss[s]:.9f}  {want[s, 0]:.9f}  {right[s]:.2f}   {margin[s]:.3e}"
              f"     {want[s, 2]:.3e}")
    # The first step's policy is the reference: every margin 0 (sigmoid's loss log 2).
    assert loss[0] == pytest.approx(at_start, abs=1e-6) and abs(margin[0]) < 1e-6
    np.testing.assert_allclose(loss, want[:, 0], rtol=1e-6)
    np.testing.assert_allclose(margin[1:], want[1:, 2], rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(right[1:], want[1:, 1])
    assert want[-1, 0] < at_start - 0.05  # the pairs are being learned
    got = ref.load_checkpoint(d / "runs" / name / "ckpt" / "step_00000006.h5",
                              dtype=torch.float64)[1]
    for name, w in final.items():
        u = w - weights[name].double().numpy()
        err = np.sqrt(np.mean((got[name].numpy() - w) ** 2)) / np.sqrt(np.mean(u * u))
        assert err < 1e-3, (name, err)


def mpi(n, d: Path, sec: dict, name: str, *args):
    cfg = d / f"{name}.ini"
    ref.write_config(cfg, sec)
    p = subprocess.run([MPIRUN, "--oversubscribe", "-np", str(n), exe("triad-train"), "--config",
                        cfg, "--run.name", name, *map(str, args)],
                       capture_output=True, text=True, env=MPI_ENV, timeout=300)
    return p


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")
def test_dpo_gives_the_same_curve_on_every_grid_and_resumes_exactly(prepared, tmp_path):
    """Shuffled pairs on one rank, then tensor (vocabulary-parallel loss), pipeline (1F1B), data
    (ZeRO-1 and 3), context-parallel (each sequence's log-probability summed over its pieces) and
    2 x 2 grids: the one-rank curve within fp32 rounding, and so are eval.preferences' held-out
    losses; a run resumed at step 3 (both references from its checkpoint) gives the uninterrupted
    run's losses bit for bit."""
    d, _, prefs, _ = prepared
    held_out = write_preferences(tmp_path / "held_out.h5",
                                 make_pairs(3, CFG.vocab_size, CFG.seq_len, seed=9))
    sec = sections(tmp_path, prefs, data__shuffle=True, train__steps=8, eval__every=4,
                   eval__preferences=held_out, checkpoint__every=3, checkpoint__keep=0)
    init = ["--init-from", d / "init.h5"]
    p = mpi(1, tmp_path, sec, "one", *init)
    assert p.returncode == 0, p.stderr
    want = curves(tmp_path / "runs" / "one")
    # triad-plot draws the preference row (pairs right, margin, held-out loss)
    from triad_run import tool
    p = tool("triad-plot", tmp_path / "runs" / "one", "--out", tmp_path / "one.png")
    assert p.returncode == 0 and (tmp_path / "one.png").stat().st_size > 10000, p.stderr
    p = mpi(1, tmp_path, sec, "resumed", "--resume",
            tmp_path / "runs" / "one" / "ckpt" / "step_00000003.h5")
    assert p.returncode == 0, p.stderr
    got = curves(tmp_path / "runs" / "resumed")
    for a, b in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(a[-5:], b[-5:])
    assert len(want[3]) == 3  # steps 0, 4 and 8; resumed at 3: 4 and 8
    np.testing.assert_array_equal(got[3], want[3][1:])
    for name, n, grid in [("tp", 2, ["--parallel.tp", 2]),
                          ("pp", 2, ["--parallel.pp", 2, "--train.micro_batch_size", 2]),
                          ("dp", 2, ["--parallel.zero", 1]),
                          ("zero3", 2, ["--parallel.zero", 3]),
                          ("cp", 2, ["--parallel.cp", 2]),
                          ("tppp", 4, ["--parallel.tp", 2, "--parallel.pp", 2,
                                       "--train.micro_batch_size", 2])]:
        p = mpi(n, tmp_path, sec, name, *init, *grid)
        assert p.returncode == 0, (name, p.stderr)
        got = curves(tmp_path / "runs" / name)
        np.testing.assert_allclose(got[0], want[0], rtol=2e-6, err_msg=name)
        np.testing.assert_array_equal(got[1], want[1], err_msg=name)
        np.testing.assert_allclose(got[2], want[2], rtol=1e-4, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(got[3], want[3], rtol=2e-6, err_msg=name)


def bad_file_cases(pairs):
    long = [[(np.arange(CFG.seq_len + 2, dtype=np.int32), np.r_[0, np.ones(CFG.seq_len + 1)]
              .astype(np.uint8)), pairs[0][1]]]
    first = [[(pairs[0][0][0], np.r_[1, pairs[0][0][1][1:]].astype(np.uint8)), pairs[0][1]]]
    none = [[(pairs[0][0][0], np.zeros_like(pairs[0][0][1])), pairs[0][1]]]
    big = [[(np.r_[pairs[0][0][0][:-1], CFG.vocab_size].astype(np.int32), pairs[0][0][1]),
            pairs[0][1]]]
    two = [[(pairs[0][0][0], np.where(pairs[0][0][1] == 1, 2, 0).astype(np.uint8)), pairs[0][1]]]
    n = int(sum(len(p[0][0]) for p in pairs))
    return [
        ("format", pairs, dict(format="something-else"), "not a preference file"),
        ("version", pairs, dict(version=2), "version 2, this build reads 1"),
        ("long", long, {}, "pair 0's chosen sequence has 18 tokens, more than model.seq_len + 1"),
        ("first", first, {}, "pair 0's chosen sequence counts its first token as a target"),
        ("none", none, {}, "pair 0's chosen sequence counts no target"),
        ("vocab", big, {}, "outside the vocabulary [0, 300)"),
        ("counts", two, {}, "(counts are 0 or 1)"),
        ("offsets", pairs, {"chosen/offsets": np.r_[0, np.cumsum([len(p[0][0]) for p in pairs])[:-1],
                                                    n - 1].astype(np.int64)},
         "/chosen/offsets must start at 0 and end at the token count"),
        ("pairs", pairs, {"rejected/offsets": np.r_[0, np.cumsum(
            [len(p[1][0]) for p in pairs])[[0, -1]]].astype(np.int64)},
         "10 chosen sequences but 2 rejected ones"),
        ("float", pairs, {"chosen/tokens": np.zeros(n, np.float32)},
         "/chosen/tokens is not an integer dataset"),
        ("lengths", pairs, {"rejected/counts": np.zeros(3, np.uint8)},
         "/rejected/counts has 3 values for"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_bad_preference_files_are_refused(prepared, tmp_path, case):
    """Each damage to a preference file: one error naming data.preferences, the file and the
    problem (the pair and side where one sequence is at fault), exit status 1."""
    d, pairs, _, _ = prepared
    name, ps, override, needle = bad_file_cases(pairs)[case]
    path = write_preferences(tmp_path / f"{name}.h5", ps, **override)
    cfg = tmp_path / "bad.ini"
    ref.write_config(cfg, sections(tmp_path, path))
    p = subprocess.run([exe("triad-train"), "--config", cfg, "--init-from", d / "init.h5"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"data.preferences {path}" in p.stderr and needle in p.stderr, p.stderr
    assert "terminate called" not in p.stderr


def test_not_a_preference_file_is_refused(prepared, tmp_path):
    d, _, _, _ = prepared
    for path, needle in ((tmp_path / "missing.h5", "no such file"),
                         (d / "base.ini", "not an HDF5 file")):
        cfg = tmp_path / "bad.ini"
        ref.write_config(cfg, sections(tmp_path, path))
        p = subprocess.run([exe("triad-train"), "--config", cfg], capture_output=True, text=True,
                           env=ENV, timeout=120)
        assert p.returncode == 1 and needle in p.stderr, p.stderr


@pytest.mark.parametrize("args,needle", [
    (["--train.micro_batch_size", 3, "--train.batch_size", 9],
     "train.micro_batch_size must be even with data.preferences"),
    (["--data.train", "x_*.bin"], "data.preferences trains on preference pairs instead of data.train"),
    (["--train.z_loss", 1e-4], "train.z_loss does not apply to DPO's loss"),
    (["--model.mtp_depth", 1], "model.mtp_depth does not apply to DPO's loss"),
    (["--train.dpo_beta", 0], "train.dpo_beta must be a number in (0, 1000]"),
    (["--train.dpo_beta", "nan"], "train.dpo_beta must be a number in (0, 1000]"),
    (["--train.dpo_loss", "kto"], "train.dpo_loss must be sigmoid, hinge or ipo (it is 'kto')"),
    (["--train.dpo_label_smoothing", 0.5], "train.dpo_label_smoothing must be in [0, 0.5)"),
    (["--train.dpo_loss", "ipo", "--train.dpo_label_smoothing", 0.1],
     "train.dpo_label_smoothing applies to train.dpo_loss = sigmoid only"),
    (["--data.preferences", "", "--data.train", "x_*.bin", "--eval.preferences", "PREFS"],
     "eval.preferences scores DPO's pairs against the run's reference and needs data.preferences"),
    (["--eval.preferences", "BASE"], "eval.preferences BASE: not an HDF5 file"),
])
def test_dpo_config_errors(prepared, tmp_path, args, needle):
    d, _, prefs, _ = prepared
    args = [str(prefs) if a == "PREFS" else str(d / "base.ini") if a == "BASE" else a
            for a in args]
    needle = needle.replace("BASE", str(d / "base.ini"))
    cfg = tmp_path / "c.ini"
    ref.write_config(cfg, sections(tmp_path, prefs))
    p = subprocess.run([exe("triad-train"), "--config", cfg, *map(str, args)],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 1 and needle in p.stderr, p.stderr


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")
def test_resuming_dpo_from_a_checkpoint_without_its_reference_stops_every_rank(prepared,
                                                                                tmp_path):
    """--resume of a checkpoint that holds no reference (not saved by a DPO run: the reference
    would be the resumed weights, not the run's start) and of one whose reference is another
    file's: refused on both ranks, naming the checkpoint; --init-from starts a run from it."""
    d, pairs, prefs, _ = prepared
    sec = sections(tmp_path, prefs, train__steps=2, checkpoint__every=1, checkpoint__keep=0)
    p = mpi(2, tmp_path, sec, "fresh", "--resume", d / "init.h5")
    assert p.returncode != 0 and "holds no DPO reference" in p.stderr, p.stderr
    p = mpi(2, tmp_path, sec, "fresh", "--init-from", d / "init.h5")
    assert p.returncode == 0, p.stderr
    fewer = write_preferences(tmp_path / "fewer.h5", pairs[:6])
    sec = sections(tmp_path, fewer, train__steps=3)
    p = mpi(2, tmp_path, sec, "other", "--resume",
            tmp_path / "runs" / "fresh" / "ckpt" / "step_00000002.h5")
    assert p.returncode != 0 and "holds DPO reference values of 20 sequences" in p.stderr
    assert "data.preferences has 12" in p.stderr, p.stderr
    # a held-out set the run did not start with: no reference for it in the checkpoint
    sec = sections(tmp_path, prefs, train__steps=3, eval__preferences=fewer)
    p = mpi(2, tmp_path, sec, "fresh", "--resume",
            tmp_path / "runs" / "fresh" / "ckpt" / "step_00000002.h5")
    assert p.returncode != 0, p.stderr
    assert "holds DPO reference values of 0 held-out sequences, but eval.preferences has 12" \
        in p.stderr, p.stderr


# ---- triad-tokenize preferences ------------------------------------------------------------

LINES = [
    {"prompt": "What is the capital of France?", "chosen": " Paris.", "rejected": " Lyon, I think."},
    {"prompt": "Ünïcödé 漢字 🙂\n", "chosen": "lines\n\nand\ttabs", "rejected": "x", "id": 7},
    {"prompt": "  two leading spaces", "chosen": "", "rejected": " a leading space"},
]


def write_lines(path: Path, lines):
    import json
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


def read_file(path: Path):
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] in (b"triad-preferences", "triad-preferences")
        assert f.attrs["version"] == 1
        out = []
        for side in ("chosen", "rejected"):
            t, c, o = (f[f"{side}/{k}"][()] for k in ("tokens", "counts", "offsets"))
            out.append([(t[a:b].tolist(), c[a:b].tolist()) for a, b in zip(o[:-1], o[1:])])
        return list(zip(*out))


def tokenize(*args):
    return subprocess.run([exe("triad-tokenize"), "preferences", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=120)


def test_preference_file_of_text_pairs_matches_tiktoken_and_trains(tmp_path):
    """Each pair's sequences are GPT-2's <|endoftext|>, the prompt, the response (encoded on its
    own) and <|endoftext|>, tiktoken's ids; the counts mark the response and its end. A model
    then trains on the file (the tool's summary gives the longest sequence for seq_len)."""
    from triad_run import VOCAB, gpt2_tiktoken
    enc = gpt2_tiktoken()
    src = write_lines(tmp_path / "p.jsonl", LINES)
    p = tokenize("--vocab", VOCAB, "--out", tmp_path / "p.h5", src)
    assert p.returncode == 0, p.stderr
    got = read_file(tmp_path / "p.h5")
    assert len(got) == len(LINES)
    longest = 0
    for line, pair in zip(LINES, got):
        for side, (ids, counts) in zip(("chosen", "rejected"), pair):
            prompt, response = enc.encode(line["prompt"]), enc.encode(line[side])
            assert ids == [50256, *prompt, *response, 50256], (line, side)
            assert counts == [0] * (1 + len(prompt)) + [1] * (len(response) + 1)
            longest = max(longest, len(ids))
    assert "pairs:        3 written to" in p.stdout and f"longest:      {longest} tokens" in p.stdout
    # --max-tokens leaves out the pairs with a longer sequence, and says so
    p = tokenize("--vocab", VOCAB, "--out", tmp_path / "short.h5", "--max-tokens", longest - 1, src)
    assert p.returncode == 0 and "left out" in p.stdout, p.stdout + p.stderr
    assert 0 < len(read_file(tmp_path / "short.h5")) < len(LINES)
    sec = sections(tmp_path, tmp_path / "p.h5", train__steps=2, train__batch_size=2,
                   train__micro_batch_size=2, model__vocab_size=50257,
                   model__seq_len=longest - 1, checkpoint__every=0)
    cfg = tmp_path / "t.ini"
    ref.write_config(cfg, sec)
    p = subprocess.run([exe("triad-train"), "--config", cfg], capture_output=True, text=True,
                       env=ENV, timeout=120)
    assert p.returncode == 0 and "DPO (beta 0.5) on 3 preference pairs" in p.stdout, p.stderr


def test_preference_file_of_chat_pairs_matches_meta(tmp_path):
    """--chat llama3 (and a --system message): each sequence is the conversation (system, the
    prompt as the user's message, the response as the assistant's reply) as Meta's encoder
    renders it, the counts the reply's tokens after its header. Then conversational lines as
    preference datasets export them: a multi-turn prompt (an array of messages) with replies as
    arrays of one assistant message, and whole conversations (UltraFeedback's binarized form:
    chosen and rejected each the conversation, a prompt field beside them unused): only the last
    reply counts, the earlier one is context."""
    pytest.importorskip("llama_models")
    from llama_models.datatypes import RawMessage
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer
    from test_chat_format import VOCAB, convert, need
    need(VOCAB / "llama3.tiktoken")
    meta = ChatFormat(Tokenizer(VOCAB / "llama3.tiktoken"))
    desc = convert(VOCAB / "llama3.tiktoken", tmp_path / "tok", "--meta-llama3")
    lines = [dict(line, chosen=line["chosen"] or "ok") for line in LINES]  # replies non-empty
    src = write_lines(tmp_path / "c.jsonl", lines)
    p = tokenize("--vocab", desc, "--out", tmp_path / "c.h5", "--chat", "llama3", "--system",
                 "Be brief.", src)
    assert p.returncode == 0, p.stderr
    header = len(meta._encode_header("assistant"))
    for line, pair in zip(lines, read_file(tmp_path / "c.h5")):
        for side, (ids, counts) in zip(("chosen", "rejected"), pair):
            want, want_counts = [meta.tokenizer.special_tokens["<|begin_of_text|>"]], [0]
            for role, content in (("system", "Be brief."), ("user", line["prompt"]),
                                  ("assistant", line[side])):
                t, _ = meta.encode_message(RawMessage(role=role, content=content), None)
                want += t
                want_counts += ([0] * len(t) if role != "assistant"
                                else [0] * header + [1] * (len(t) - header))
            assert (ids, counts) == (want, want_counts), (line, side)

    def msgs(*turns):
        return [{"role": r, "content": c} for r, c in turns]

    turns = [("system", "Answer in French."), ("user", "Hi"), ("assistant", "Bonjour"),
             ("user", "Colour?")]
    conversational = [
        {"prompt": msgs(*turns), "chosen": msgs(("assistant", "Bleu.")),
         "rejected": msgs(("assistant", "Blue."))},
        {"prompt": "Colour?", "chosen": msgs(*turns, ("assistant", "Vert.")),
         "rejected": msgs(*turns[1:], ("assistant", "Green."))},
    ]
    src = write_lines(tmp_path / "conv.jsonl", conversational)
    p = tokenize("--vocab", desc, "--out", tmp_path / "conv.h5", "--chat", "llama3", src)
    assert p.returncode == 0, p.stderr
    for line, pair in zip(conversational, read_file(tmp_path / "conv.h5")):
        for side, (ids, counts) in zip(("chosen", "rejected"), pair):
            conv = (line["prompt"] if isinstance(line["prompt"], list) and
                    line[side][0]["role"] == "assistant" else []) + line[side]
            want, want_counts = [meta.tokenizer.special_tokens["<|begin_of_text|>"]], [0]
            for i, m in enumerate(conv):
                t, _ = meta.encode_message(RawMessage(role=m["role"], content=m["content"]), None)
                want += t
                last = i == len(conv) - 1
                want_counts += [0] * len(t) if not last else [0] * header + [1] * (len(t) - header)
            assert (ids, counts) == (want, want_counts), (line, side)
    bad = write_lines(tmp_path / "bad.jsonl", [{"prompt": "q", "chosen": msgs(("user", "x")),
                                                "rejected": "r"}])
    p = tokenize("--vocab", desc, "--out", tmp_path / "bad.h5", "--chat", "llama3", bad)
    assert p.returncode == 1 and "line 1: the \"chosen\" conversation does not end with the " \
        "assistant's reply" in p.stderr, p.stderr


@pytest.mark.parametrize("lines,args,needle", [
    ([{"prompt": "a", "chosen": "b"}], [], 'line 1: no "rejected" field'),
    ([{"prompt": "a", "chosen": 3, "rejected": "c"}], [],
     'field "chosen" is neither a string nor an array of messages'),
    ([{"prompt": [{"role": "user", "content": "a"}], "chosen": "b", "rejected": "c"}], [],
     '"prompt" is a conversation (an array of messages): give --chat FORMAT'),
    ([{"chosen": "b", "rejected": "c"}], [], 'line 1: no "prompt" field'),
    ([LINES[0]], ["--max-tokens", 2], "every pair has a sequence longer than --max-tokens"),
    ([LINES[0]], ["--system", "x"], "--system needs --chat"),
    ([LINES[0]], ["--chosen-field", "prompt"], "the prompt, chosen and rejected fields must differ"),
    ([LINES[0]], ["--max-tokens", -1], "--max-tokens must be >= 0"),
])
def test_preference_tool_errors(tmp_path, lines, args, needle):
    from triad_run import VOCAB, assert_clean_error
    src = write_lines(tmp_path / "bad.jsonl", lines)
    p = tokenize("--vocab", VOCAB, "--out", tmp_path / "o.h5", *args, src)
    assert_clean_error(p, needle)
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.partial").exists()


def test_dpo_of_a_mixture_of_experts_matches_torch(prepared, tmp_path):
    """A mixture of experts (4 experts, 2 per token) with Switch's load-balancing term beside
    DPO's loss: the term weighs each row by 1 / the batch's counted targets, as in a language
    model's training, over each micro-batch's routing; against PyTorch as above."""
    _, pairs, prefs, _ = prepared
    weights = ref.random_weights(CFG_MOE, seed=13, perturb=True)
    sec = sections(tmp_path, prefs, cfg=CFG_MOE, train__moe_aux_loss=0.05)
    ref.write_checkpoint(tmp_path / "moe.h5", CFG_MOE, weights,
                         config_text=ref.write_config(tmp_path / "moe.ini", sec))
    train(tmp_path, sec, "moe", "--init-from", tmp_path / "moe.h5")
    loss, right, margin, _ = curves(tmp_path / "runs" / "moe")
    want, final = torch_dpo(weights, pairs, sec, cfg=CFG_MOE)
    print("loss triad", loss.tolist(), "torch", want[:, 0].tolist())
    np.testing.assert_allclose(loss, want[:, 0], rtol=1e-6)
    np.testing.assert_array_equal(right[1:], want[1:, 1])
    got = ref.load_checkpoint(tmp_path / "runs" / "moe" / "ckpt" / "step_00000006.h5",
                              dtype=torch.float64)[1]
    errs = {}
    for name, w in final.items():
        u = w - weights[name].double().numpy()
        errs[name] = np.sqrt(np.mean((got[name].numpy() - w) ** 2)) / np.sqrt(np.mean(u * u))
    assert max(errs.values()) < 1e-3, sorted(errs.items(), key=lambda kv: -kv[1])[:3]
    # without the routing term's weight (a build weighing it per pair) the router differs
    sec0 = sections(tmp_path, prefs, cfg=CFG_MOE, train__moe_aux_loss=0.0)
    want0, final0 = torch_dpo(weights, pairs, sec0, cfg=CFG_MOE)
    router = [k for k in final if "router" in k]
    assert router and max(np.abs(final0[k] - final[k]).max() for k in router) > 1e-4


def test_eval_only_scores_held_out_pairs_against_the_checkpoints_reference(prepared, tmp_path):
    """--eval-only with eval.preferences scores a DPO run's checkpoint on its held-out pairs
    against that run's reference (the checkpoint's preference_val_reference): the run's own last
    evaluation, to the printed digits; a checkpoint without that reference is refused."""
    d, _, prefs, _ = prepared
    held = write_preferences(tmp_path / "held.h5",
                             make_pairs(4, CFG.vocab_size, CFG.seq_len, seed=10))
    sec = sections(tmp_path, prefs, eval__every=3, eval__preferences=held)
    train(tmp_path, sec, "run", "--init-from", d / "init.h5")
    with h5py.File(tmp_path / "runs" / "run" / "metrics.h5", "r") as f:
        loss, right, margin = (f[f"val/dpo_{k}"][-1] for k in ("loss", "accuracy", "margin"))
    cfg = tmp_path / "eval.ini"
    ref.write_config(cfg, sec)
    ckpt = tmp_path / "runs" / "run" / "ckpt" / "step_00000006.h5"
    p = subprocess.run([exe("triad-train"), "--config", cfg, "--eval-only", "--resume", ckpt],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (f"| DPO val loss {loss:.6f} | val pairs right {right:.4f} | val margin {margin:.4f} "
            f"| 4 pairs") in p.stdout, p.stdout
    p = subprocess.run([exe("triad-train"), "--config", cfg, "--eval-only", "--init-from",
                        d / "init.h5"], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 1 and "holds reference values of 0 held-out sequences, not of " \
        "eval.preferences' 8" in p.stderr, p.stderr


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")
def test_a_bad_preference_file_stops_every_rank(prepared, tmp_path):
    """Every rank reads the file before the model is built: a damaged one ends a 2-rank job
    with its error and a non-zero status, no hang."""
    d, pairs, _, _ = prepared
    bad = write_preferences(tmp_path / "bad.h5", pairs, format="something-else")
    p = mpi(2, tmp_path, sections(tmp_path, bad), "bad", "--init-from", d / "init.h5")
    assert p.returncode != 0 and f"data.preferences {bad}: not a preference file" in p.stderr, \
        p.stderr
