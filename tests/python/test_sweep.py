"""The sweep expander (analysis/sweep.py, `triad-sweep`) and `triad-sweep-report`: parsing and
expansion of sweep files (cartesian, zip), each point's triad-train arguments, the status of
points finished by actually running triad-train with those arguments, the sbatch line for
the unfinished ones, the report, and the bad sweep files."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis import sweep as sw
from triad_run import REPO, VOCAB, tiny_config, train, write_choice_file

VENV_BIN = REPO / ".venv" / "bin"
MODULES = {"triad-sweep": "analysis.sweep", "triad-sweep-report": "analysis.sweep_report"}


def tool(name, *args, cwd=None):
    """The console script of .venv when installed (jobs/setup.sh), else `python -m`."""
    script = VENV_BIN / name
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", MODULES[name]]
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True,
                          env=env, timeout=60, cwd=cwd or REPO)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def base_files(tmp_path):
    a = write(tmp_path / "a.ini", "[train]\nsteps = 50   # comment\nlr = 1e-3\n"
              "[run]\nname = ignored\ndir = out/runs\n")
    b = write(tmp_path / "b.ini", "; a comment\n[train]\nsteps = 70\n")
    return a, b


# ---- parsing and expansion ----------------------------------------------------------------

def test_cartesian_expansion_in_key_order_last_fastest(tmp_path):
    a, b = base_files(tmp_path)
    f = write(tmp_path / "s.ini", f"""
[sweep]
name = grid
base = {a}, {b}     ; two files, the later wins
mode = cartesian
max_parallel = 3

[values]
train.lr = 1e-3, 3e-3
model.n_embd = 32, 64, 'x,y'

[set]
eval.every = 5
""")
    s = sw.load_sweep(f)
    assert [p.run_name for p in s.points] == [f"grid-{i:03d}" for i in range(6)]
    assert [tuple(p.overrides.values()) for p in s.points] == [
        ("1e-3", "32"), ("1e-3", "64"), ("1e-3", "x,y"),
        ("3e-3", "32"), ("3e-3", "64"), ("3e-3", "x,y")]
    assert s.max_parallel == 3 and s.mode == "cartesian"
    # run.dir of the base config, relative to the root (no jobs/ above: the current dir)
    assert s.run_dir == Path.cwd() / "out" / "runs"
    assert s.args(s.points[4]) == [
        "--config", str(a), "--config", str(b), "--eval.every", "5",
        "--train.lr", "3e-3", "--model.n_embd", "64",
        "--run.name", "grid-004", "--run.dir", str(Path.cwd() / "out" / "runs")]
    # train.steps: b.ini (later) wins over a.ini
    assert s.final_checkpoint(s.points[0]) == \
        Path.cwd() / "out" / "runs" / "grid-000" / "ckpt" / "step_00000070.h5"


def test_zip_expansion_run_dir_and_steps_override(tmp_path):
    a, _ = base_files(tmp_path)
    f = write(tmp_path / "z.ini", f"""[sweep]
name = z
base = {a}
mode = zip
run_dir = {tmp_path / "elsewhere"}
[values]
train.lr = 1e-3, 2e-3, 3e-3
train.steps = 10, 20, 30
checkpoint.dir = ckpts1, ckpts2, ckpts3
""")
    s = sw.load_sweep(f)
    assert [{k: v for k, v in p.overrides.items() if k != "checkpoint.dir"} for p in s.points] == [
        {"train.lr": "1e-3", "train.steps": "10"}, {"train.lr": "2e-3", "train.steps": "20"},
        {"train.lr": "3e-3", "train.steps": "30"}]
    assert s.run_dir == tmp_path / "elsewhere" and s.max_parallel is None
    assert s.args(s.points[2])[-2:] == ["--run.dir", str(tmp_path / "elsewhere")]
    # the point's train.steps, and checkpoint.dir (relative: from the root) when set
    assert s.final_checkpoint(s.points[1]) == Path.cwd() / "ckpts2" / "step_00000020.h5"


def test_run_length_in_sequences_sets_the_final_step(tmp_path):
    """A sweep of batch sizes at one token budget (train.sequences): each point's final step is
    what triad-train resolves (the same numbers test_config.cpp and test_train_cli.py check
    against triad-train itself: 4800 sequences are 300 steps of 16, or 450 through a ramp of 8s
    over the first 2400, and 52 through 4s over the first 16 with a batch of 8 are 9)."""
    assert sw.run_steps(4800, 16, "") == 300 and sw.run_steps(4801, 16, "") == 301
    assert sw.run_steps(4800, 16, "8, 8, 2400") == 450
    assert sw.run_steps(2401, 16, "8, 8, 2400") == 301
    assert sw.run_steps(52, 8, "4, 4, 16") == 9
    # Counted a batch at a time (a ramp over 10^12 sequences took 10^8 steps of the loop): the
    # same as step by step, triad-train's rule, on random ramps.
    rng = np.random.default_rng(5)
    for _ in range(3000):
        batch = int(rng.integers(1, 65))
        start, inc = int(rng.integers(1, batch + 1)), int(rng.integers(1, 17))
        ramp_n, sequences = int(rng.integers(1, 3001)), int(rng.integers(1, 5001))
        done = steps = 0
        k = (batch - start) // inc
        while done < sequences and done < ramp_n:
            done += start + inc * (done * k // ramp_n)
            steps += 1
        steps += -(-(sequences - done) // batch) if done < sequences else 0
        assert sw.run_steps(sequences, batch, f"{start}, {inc}, {ramp_n}") == steps
    # 32 through the ramp: 259, as triad-train printed it ("259 steps for train.sequences =
    # 4800" at the start of a run of the quick start with these keys).
    a, _ = base_files(tmp_path)
    f = write(tmp_path / "s.ini", f"[sweep]\nname = b\nbase = {a}\n[set]\n"
              "train.sequences = 4800\ntrain.batch_rampup = 8, 8, 2400\n"
              "[values]\ntrain.batch_size = 16, 32\n")
    s = sw.load_sweep(f)
    assert [s.steps(p) for p in s.points] == [450, 259]  # the base's train.steps replaced
    assert s.final_checkpoint(s.points[0]).name == "step_00000450.h5"
    bad = write(tmp_path / "bad.ini", f"[sweep]\nname = b\nbase = {a}\n[set]\n"
                "train.sequences = many\n[values]\ntrain.lr = 1\n")
    with pytest.raises(sw.SweepError, match="train.sequences = 'many'"):
        sw.load_sweep(bad).steps(sw.load_sweep(bad).points[0])


def test_relative_paths_are_taken_from_the_repository_root(tmp_path):
    repo = tmp_path / "repo"
    (repo / "jobs").mkdir(parents=True)
    (repo / "inputs" / "runs").mkdir(parents=True)
    (repo / "inputs" / "sweeps").mkdir()
    write(repo / "inputs" / "runs" / "r.ini", "[run]\ndir = myruns\n")
    f = write(repo / "inputs" / "sweeps" / "s.ini",
              "[sweep]\nname = s\nbase = inputs/runs/r.ini\n[values]\ntrain.lr = 1, 2\n")
    s = sw.load_sweep(f)
    assert s.root == repo and s.bases == [repo / "inputs" / "runs" / "r.ini"]
    assert s.run_dir == repo / "myruns"
    assert s.steps(s.points[0]) == 1000  # triad-train's default
    p = tool("triad-sweep", "submit", f, cwd=tmp_path)
    assert p.stdout.strip().endswith(" repo/inputs/sweeps/s.ini") or \
        p.stdout.strip().endswith(f" {f}"), p.stdout


def test_the_mixture_of_experts_sweep_gives_triad_train_its_points(tmp_path):
    """inputs/sweeps/moe-balance.ini: three balancing-loss coefficients on the quick-start model
    with 8 experts; each point's arguments are a config triad-train accepts (checked with
    --plan, which reads no data), logging the experts' loads."""
    s = sw.load_sweep(REPO / "inputs" / "sweeps" / "moe-balance.ini")
    assert s.name == "moe-balance" and len(s.points) == 3
    assert [p.overrides["train.moe_aux_loss"] for p in s.points] == ["0", "0.001", "0.01"]
    assert s.steps(s.points[0]) == 60
    for i in range(3):
        p = tool("triad-sweep", "args", REPO / "inputs" / "sweeps" / "moe-balance.ini", str(i))
        assert p.returncode == 0, p.stderr
        args = p.stdout.splitlines()
        assert "--train.moe_load_every" in args and "--model.moe_experts" in args
        plan = train(*args, "--plan", check=True)
        assert "1 rank" in plan.stdout


@pytest.mark.parametrize("path", sorted((REPO / "inputs" / "sweeps").glob("*.ini")),
                         ids=lambda p: p.stem)
def test_every_shipped_sweep_point_is_a_config_triad_train_accepts(path):
    """Each point of each sweep in inputs/sweeps (the commands docs/performance.md gives): its
    arguments pass triad-train's checks (--plan reads no data)."""
    s = sw.load_sweep(path)
    assert s.points and s.name == path.stem
    for i in range(len(s.points)):
        p = tool("triad-sweep", "args", path, str(i))
        assert p.returncode == 0, p.stderr
        plan = train(*p.stdout.splitlines(), "--plan")
        assert plan.returncode == 0 and "1 rank" in plan.stdout, f"{path.name} point {i}: " + \
            plan.stdout + plan.stderr


def test_the_example_sweep_and_the_format_of_the_brief(tmp_path):
    s = sw.load_sweep(REPO / "inputs" / "sweeps" / "quickstart-lr.ini")
    assert s.name == "quickstart-lr" and len(s.points) == 3 and s.max_parallel == 2
    assert s.bases == [REPO / "inputs" / "runs" / "quickstart.ini"]
    assert [p.overrides["train.lr"] for p in s.points] == ["3e-4", "1e-3", "3e-3"]
    assert s.run_dir == REPO / "runs"
    assert s.final_checkpoint(s.points[2]) == \
        REPO / "runs" / "quickstart-lr-002" / "ckpt" / "step_00000020.h5"
    # comments after section headers and values, as in the format's description
    f = write(tmp_path / "brief.ini", f"""[sweep]
name = quickstart-lr
base = {REPO}/inputs/runs/quickstart.ini   ; one or more config files, comma-separated
mode = cartesian                    ; or zip (all value lists equally long)
max_parallel = 2                    ; the %K of sbatch --array
[values]
train.lr = 3e-4, 1e-3, 3e-3
[set]                               ; fixed overrides for every point (optional)
train.steps = 20
""")
    t = sw.load_sweep(f)
    assert t.fixed == {"train.steps": "20"} and len(t.points) == 3


def test_array_spec():
    assert sw.array_spec([0, 1, 2]) == "0-2"
    assert sw.array_spec([1]) == "1"
    assert sw.array_spec([7, 0, 2, 3, 4, 9, 10]) == "0,2-4,7,9-10"


# ---- the command: list, args, submit on real runs, and the report -----------------------

def test_points_finished_by_triad_train_leave_the_sbatch_line(tmp_path):
    cfg = tiny_config(tmp_path, name="base", checkpoint__every=3)
    f = write(tmp_path / "lr.ini", f"""[sweep]
name = lr
base = {cfg}
max_parallel = 2
[values]
train.lr = 1e-3, 2e-3, 4e-3
[set]
train.steps = 6
eval.every = 3
""")
    p = tool("triad-sweep", "submit", f)
    assert p.returncode == 0, p.stderr
    script = "jobs/slurm/sweep.sbatch"
    assert p.stdout == f"sbatch --array=0-2%2 {script} {f}\n", p.stdout
    mine = tmp_path / "my.sbatch"
    mine.write_text("#!/bin/bash\n")
    p = tool("triad-sweep", "submit", f, "--sbatch-script", mine)
    assert p.stdout == f"sbatch --array=0-2%2 {mine} {f}\n"
    p = tool("triad-sweep", "submit", f, "--sbatch-script", tmp_path / "none.sbatch")
    assert p.returncode == 1 and "none.sbatch': no such file" in p.stderr, p.stderr

    def run_point(i):
        a = tool("triad-sweep", "args", f, i)
        assert a.returncode == 0, a.stderr
        args = a.stdout.splitlines()
        assert args[:2] == ["--config", cfg]
        train(*args, check=True)
        return args

    args0 = run_point(0)
    assert args0[2:] == ["--train.steps", "6", "--eval.every", "3", "--train.lr", "1e-3",
                         "--run.name", "lr-000", "--run.dir", str(tmp_path / "runs")]
    run_point(2)
    assert tool("triad-sweep", "submit", f).stdout == f"sbatch --array=1%2 {script} {f}\n"
    runs = tmp_path / "runs"
    with h5py.File(runs / "lr-002" / "metrics.h5", "r") as h:
        assert np.isclose(h["train/lr"][:].max(), 4e-3, rtol=1e-6)  # its own lr

    # point 1 stops before its last checkpoint is complete: still unfinished ("running")
    run_point(1)
    final1 = runs / "lr-001" / "ckpt" / "step_00000006.h5"
    with h5py.File(final1, "a") as h:
        del h.attrs["complete"]
    lst = tool("triad-sweep", "list", f).stdout
    assert "| 0 | lr-000 | train.lr=1e-3 | finished |" in lst.replace("     ", " ")
    assert "| lr-001 | train.lr=2e-3 | running  |" in lst, lst
    assert "2 finished, 1 running, 0 missing" in lst
    assert tool("triad-sweep", "submit", f).stdout == f"sbatch --array=1%2 {script} {f}\n"
    # ... unless its job runs now (a triad-train holds the run directory's lock): left out
    with open(runs / "lr-001" / ".lock", "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        p = tool("triad-sweep", "submit", f)
    assert p.stdout == "" and "point 1 (lr-001) is running now" in p.stderr, p.stderr
    assert "all 3 points are finished or running; nothing to submit" in p.stderr, p.stderr
    assert tool("triad-sweep", "submit", f).stdout == f"sbatch --array=1%2 {script} {f}\n"

    # the report before the last point is redone
    out = tmp_path / "report"
    r = tool("triad-sweep-report", f, "--out-dir", out)
    assert r.returncode == 0, r.stderr
    import pandas as pd

    df = pd.read_csv(out / "lr.csv")
    assert list(df["status"]) == ["finished", "running", "finished"]
    assert list(df["train.lr"]) == [1e-3, 2e-3, 4e-3]
    for i in range(3):
        with h5py.File(runs / f"lr-{i:03d}" / "metrics.h5", "r") as h:
            vl, vs = h["val/loss"][:], h["val/step"][:]
            tl = h["train/loss"][:]
            tps = np.median(h["train/tokens_per_sec"][5:])
        row = df.iloc[i]
        assert row["final_val_loss"] == pytest.approx(vl[-1], rel=1e-5)
        assert row["best_val_loss"] == pytest.approx(vl.min(), rel=1e-5)
        assert row["best_val_step"] == vs[np.argmin(vl)]
        assert row["final_train_loss"] == pytest.approx(tl[-1], rel=1e-5)
        assert row["tokens_per_sec"] == pytest.approx(tps, rel=1e-5)
        assert row["steps_done"] == 6 and row["steps_total"] == 6
    md = (out / "lr.md").read_text()
    assert md.startswith("# sweep lr (cartesian, 3 points: 2 finished, 1 running, 0 missing)")
    assert "bpb" not in md and df["final_val_bpb"].isna().all()  # (eval.bits_per_byte off)
    assert "ema" not in md and df["final_ema_val_loss"].isna().all()  # (eval.ema off)
    assert "choice" not in md and df["final_choice_accuracy"].isna().all()  # (no eval.choices)
    assert "| index | run    | train.lr | status" in md
    assert md.split("\n\n", 2)[2].strip() in r.stdout  # the same table printed
    assert (out / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best finished point:" in r.stdout

    # point 1 again, as after a crash before its final checkpoint: it resumes from its last
    # complete checkpoint and finishes (triad-train never overwrites an existing step file,
    # so the broken one goes first)
    final1.unlink()
    assert "| lr-001 | train.lr=2e-3 | running  |" in tool("triad-sweep", "list", f).stdout
    run_point(1)
    p = tool("triad-sweep", "submit", f)
    assert p.returncode == 0 and p.stdout == ""
    assert "all 3 points are finished" in p.stderr
    assert "3 finished, 0 running, 0 missing" in tool("triad-sweep", "list", f).stdout

    # a finished point whose metrics.h5 is damaged, another's gone: their rows say so (steps
    # unknown, not 0 of 6), the damage is a warning naming the file
    (runs / "lr-000" / "metrics.h5").write_bytes(b"\0" * 4096)
    (runs / "lr-002" / "metrics.h5").unlink()
    r = tool("triad-sweep-report", f, "--out-dir", out, "--no-plot")
    assert r.returncode == 0 and "warning: point 0: " in r.stderr, r.stderr
    assert "| finished (metrics.h5 unreadable) |   ?/6 |" in r.stdout, r.stdout
    assert "| finished (no metrics.h5)         |   ?/6 |" in r.stdout, r.stdout
    assert "| finished                         |   6/6 |" in r.stdout, r.stdout
    df = pd.read_csv(out / "lr.csv", keep_default_na=False)
    assert list(df["metrics_problem"]) == ["metrics.h5 unreadable", "", "no metrics.h5"]


def train_points_and_report(f, tmp_path, points=2):
    """Trains the sweep's first `points` points one after another and reports it (no plot):
    the report's directory and its table as a DataFrame."""
    import pandas as pd

    for i in range(points):
        a = tool("triad-sweep", "args", f, i)
        assert a.returncode == 0, a.stderr
        train(*a.stdout.splitlines(), check=True)
    out = tmp_path / "report"
    r = tool("triad-sweep-report", f, "--out-dir", out, "--no-plot")
    assert r.returncode == 0, r.stderr
    return out, pd.read_csv(out / f"{f.stem}.csv")


def test_report_gives_the_bits_per_byte_where_they_were_measured(tmp_path):
    """eval.bits_per_byte on every point: the report's table and CSV give each point's last
    val/bpb."""
    cfg = tiny_config(tmp_path, name="base")
    f = write(tmp_path / "b.ini", f"""[sweep]
name = b
base = {cfg}
[values]
train.lr = 1e-3, 4e-3
[set]
train.steps = 2
eval.bits_per_byte = true
data.vocab = {VOCAB}
""")
    out, df = train_points_and_report(f, tmp_path)
    for i in range(2):
        with h5py.File(tmp_path / "runs" / f"b-{i:03d}" / "metrics.h5", "r") as h:
            assert df.iloc[i]["final_val_bpb"] == pytest.approx(h["val/bpb"][-1], rel=1e-5)
    assert "| final val bpb |" in (out / "b.md").read_text()


def test_report_gives_the_moving_averages_loss_where_it_was_scored(tmp_path):
    """A sweep of optim.ema_decay with eval.ema and eval.choices: the report gives each point's
    last /val_ema/loss beside its val loss, and the last choice accuracy of the weights and of
    the average."""
    cfg = tiny_config(tmp_path, name="base")
    choices = write_choice_file(tmp_path / "choices.bin", 512, n=20)
    f = write(tmp_path / "e.ini", f"""[sweep]
name = e
base = {cfg}
[values]
optim.ema_decay = 0.5, 0.9
[set]
train.steps = 3
eval.ema = true
eval.choices = {choices}
""")
    out, df = train_points_and_report(f, tmp_path)
    for i in range(2):
        with h5py.File(tmp_path / "runs" / f"e-{i:03d}" / "metrics.h5", "r") as h:
            want = h["val_ema/loss"][-1]
            assert want != h["val/loss"][-1]
            assert df.iloc[i]["final_ema_val_loss"] == pytest.approx(want, rel=1e-5)
            for col, key in (("final_choice_accuracy", "val/choice_accuracy"),
                             ("final_ema_choice_accuracy", "val_ema/choice_accuracy")):
                assert np.isfinite(h[key][-1])
                assert df.iloc[i][col] == pytest.approx(h[key][-1], rel=1e-5), col
    assert df.iloc[0]["final_ema_val_loss"] != df.iloc[1]["final_ema_val_loss"]
    md = (out / "e.md").read_text()
    for header in ("final ema val loss", "final choice accuracy", "final ema choice accuracy"):
        assert f"| {header} |" in md, md


def test_report_of_a_sweep_not_started(tmp_path):
    cfg = tiny_config(tmp_path, name="base")
    f = write(tmp_path / "w.ini", f"""[sweep]
name = w
base = {cfg}
mode = cartesian
[values]
train.lr = 1e-3, 2e-3
optim.name = adamw, sgd
""")
    r = tool("triad-sweep-report", f)  # default out dir: <run dir>/<name>-report
    assert r.returncode == 0, r.stderr
    out = tmp_path / "runs" / "w-report"
    assert {p.name for p in out.iterdir()} == {"w.csv", "w.md", "w.png"}
    assert r.stdout.count("| missing |") == 4
    assert "0 finished, 0 running, 4 missing" in r.stdout


# --x/--lines/--panels: the final val loss against the learning rate, a line per width, a panel
# per optimizer; the best rate of each line is the least final val loss of its finished points.
def test_report_lines_and_best_of_each(tmp_path):
    cfg = tiny_config(tmp_path, name="base")
    f = write(tmp_path / "t.ini", f"""[sweep]
name = t
base = {cfg}
mode = cartesian
[values]
optim.name = adamw, muon
model.n_embd = 16, 32
train.lr = 1e-3, 8e-3
[set]
train.steps = 4
eval.every = 4
""")
    for i in range(8):
        a = tool("triad-sweep", "args", f, i)
        assert a.returncode == 0, a.stderr
        train(*a.stdout.splitlines(), check=True)
    out = tmp_path / "rep"
    r = tool("triad-sweep-report", f, "--out-dir", out, "--x", "train.lr", "--lines",
             "model.n_embd", "--panels", "optim.name")
    assert r.returncode == 0, r.stderr
    assert (out / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import pandas as pd

    df = pd.read_csv(out / "t.csv")
    table = r.stdout.split("best train.lr of each line (least final val loss):")[1]
    best = {}
    for line in table.strip().splitlines()[2:]:
        opt, width, lr, loss = (c.strip() for c in line.strip("|").split("|"))
        best[(opt, int(width))] = (float(lr), float(loss))
    assert len(best) == 4, table
    for (opt, width), g in df.groupby(["optim.name", "model.n_embd"]):
        b = g.loc[g["final_val_loss"].idxmin()]
        assert best[(opt, int(width))] == (b["train.lr"], pytest.approx(b["final_val_loss"],
                                                                         abs=1e-4)), (opt, width)
    for args, needle in ((["--x", "train.lr"], "--x and --lines go together"),
                         (["--x", "train.lr", "--lines", "model.n_layer"],
                          "model.n_layer is not a swept key"),
                         (["--x", "train.lr", "--lines", "train.lr"], "must be different keys")):
        p = tool("triad-sweep-report", f, "--out-dir", out, *args)
        assert p.returncode != 0 and needle in p.stderr, p.stderr


# ---- errors -------------------------------------------------------------------------------

def good(tmp_path, **kw):
    a, _ = base_files(tmp_path)
    sec = {"sweep": f"name = s\nbase = {a}\n", "values": "train.lr = 1, 2\n", "set": ""}
    sec.update(kw)
    return "".join(f"[{k}]\n{v}" for k, v in sec.items() if v is not None)


BAD = [
    ("no_name", dict(sweep="base = {a}\n"), "[sweep] has no name"),
    ("no_base", dict(sweep="name = s\n"), "[sweep] has no base"),
    ("no_sweep_section", dict(sweep=None), "no [sweep] section"),
    ("bad_mode", dict(sweep="name = s\nbase = {a}\nmode = random\n"), "mode 'random' is unknown"),
    ("zip_lengths", dict(sweep="name = s\nbase = {a}\nmode = zip\n",
                         values="train.lr = 1, 2\ntrain.steps = 5, 6, 7\n"),
     "mode = zip needs value lists of one length, got train.lr: 2, train.steps: 3"),
    ("key_form", dict(values="lr = 1, 2\n"), "[values] key 'lr' is not of the form section.name"),
    ("key_form_set", dict(set="train.lr.x = 1\n"), "[set] key 'train.lr.x' is not of the form"),
    ("empty_list", dict(values="train.lr =\n"), "[values] train.lr has an empty value list"),
    ("empty_item", dict(values="train.lr = 1,,2\n"), "has an empty item"),
    ("missing_base", dict(sweep="name = s\nbase = nowhere/x.ini\n"),
     "base config nowhere/x.ini not found"),
    ("unknown_sweep_key", dict(sweep="name = s\nbase = {a}\nmax_paralel = 2\n"),
     "[sweep] has unknown key 'max_paralel'"),
    ("max_parallel", dict(sweep="name = s\nbase = {a}\nmax_parallel = two\n"),
     "max_parallel 'two' is not a positive integer"),
    ("reserved", dict(set="run.name = x\n"), "run.name cannot be set by a sweep"),
    ("both", dict(set="train.lr = 1\n"), "train.lr is both in [set] and in [values]"),
    ("unknown_section", dict(extra="a = 1\n"), "unknown section [extra]"),
    ("duplicate_key", dict(values="train.lr = 1\ntrain.lr = 2\n"), "train.lr appears twice"),
    ("bad_name", dict(sweep="name = my sweep\nbase = {a}\n"), "[sweep] name 'my sweep'"),
    ("no_equals", dict(values="train.lr = 1, 2\ntrain.steps 5\n"),
     "'train.steps 5' is not 'key = value'"),
    # sweep.sbatch reads the arguments a line each: every job got a stray one
    ("two_lines", dict(set="sample.prompt = hello\n  world\n"),
     "[set] sample.prompt: a value of several lines"),
    ("listed_twice", dict(values="train.lr = 1, 2, 1\n"),
     "points 0 and 2 are the same run (train.lr=1)"),
    # every point would resume from another's checkpoints
    ("shared_checkpoints", dict(set="checkpoint.dir = ckpt_shared\n"),
     "checkpoint.dir = 'ckpt_shared' is points 0 and 1's"),
    # every job would have failed at its start: run directories in a file, or named beyond what
    # a file name can be
    ("run_dir_file", dict(sweep="name = s\nbase = {a}\nrun_dir = {a}\n"),
     "is not a directory (each run's goes in it)"),
    ("long_name", dict(sweep=f"name = {'n' * 300}\nbase = {{a}}\n"), "name is 300 bytes"),
    # (an "unexpected ValueError: embedded null byte"; submit wrote it into the arguments)
    ("nul", dict(values="train.lr = 1\0, 2\n"), "train.lr: a value with a NUL byte"),
    # 20^8 points were listed one by one until the memory ran out
    ("too_many", dict(values="".join(f"train.k{i} = {', '.join(map(str, range(20)))}\n"
                                     for i in range(8))),
     "the lists' lengths multiply to 25600000000 points; a sweep has at most 1000000"),
]

# The final step that list and the report work out for each point's status: inf
# (OverflowError), a batch of 0 (ZeroDivisionError), ramps starting at 0 or with increments of 0
# (loops without end), more steps than a checkpoint's name holds (counted for minutes).
BAD_STEPS = [
    ("steps_inf", dict(set="train.steps = inf\n"), "train.steps = 'inf' is not what"),
    ("batch_0", dict(set="train.sequences = 100\ntrain.batch_size = 0\n"),
     "train.batch_size = '0' is not what triad-train takes"),
    ("ramp_0", dict(set="train.sequences = 100\ntrain.batch_rampup = 0, 1, 50\n"),
     "train.batch_rampup = '0, 1, 50' is not what triad-train takes (not three integers >= 1)"),
    ("ramp_inc_0", dict(set="train.sequences = 100\ntrain.batch_rampup = 4, 0, 50\n"),
     "(not three integers >= 1)"),
    ("too_long", dict(set="train.sequences = 1000000000000\ntrain.batch_rampup = 4, 4, "
                      "1000000000000\n"), "(more than 99999999 steps)"),
]


@pytest.mark.parametrize("case,sections,needle", BAD_STEPS, ids=[b[0] for b in BAD_STEPS])
def test_final_steps_triad_train_refuses(tmp_path, capsys, case, sections, needle):
    f = write(tmp_path / f"{case}.ini", good(tmp_path, **sections))
    assert sw.main(["list", str(f)]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"error: {f}: point 0: " in err and needle in err, err


@pytest.mark.parametrize("case,sections,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_sweep_files(tmp_path, capsys, case, sections, needle):
    a, _ = base_files(tmp_path)
    sections = {k: (v.replace("{a}", str(a)) if v else v) for k, v in sections.items()}
    f = write(tmp_path / f"{case}.ini", good(tmp_path, **sections))
    for cmd in (["list", str(f)], ["args", str(f), "0"], ["submit", str(f)]):
        assert sw.main(cmd) == 1
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and err.endswith("\n") and err.count("\n") == 1, err
        assert f"error: {f}: " in err and needle in err, err


def test_points_triad_train_refuses_are_named_before_submitting(tmp_path):
    """A mistyped key, a bad value, a grid the model cannot split: triad-train --plan refuses
    the point, and list / submit name it with triad-train's message (exit 1, no sbatch line);
    the points it takes are not named."""
    cfg = tiny_config(tmp_path, name="base")
    f = write(tmp_path / "bad.ini", f"""[sweep]
name = bad
base = {cfg}
mode = zip
[values]
train.lr = 1e-3, abc, 1e-3, 1e-3
parallel.tp = 1, 1, 3, 2
""")
    g = write(tmp_path / "typo.ini", f"[sweep]\nname = typo\nbase = {cfg}\n"
              "[set]\ntrain.lrr = 1e-3\n")
    for cmd in ("submit", "list"):
        p = tool("triad-sweep", cmd, f)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert "sbatch" not in p.stdout
        assert "point 1 (bad-001: train.lr=abc parallel.tp=1): " in p.stderr and \
            "('abc') for option '--train.lr' is invalid" in p.stderr, p.stderr
        assert "point 2 (bad-002: train.lr=1e-3 parallel.tp=3): config: parallel.tp (3) must " \
            "divide model.n_head (2)" in p.stderr, p.stderr
        assert "point 0 " not in p.stderr and "point 3 " not in p.stderr, p.stderr
        assert f"error: {f}: triad-train refuses 2 of 4 points (listed above)" in p.stderr
        p = tool("triad-sweep", cmd, g)
        assert p.returncode == 1 and "unrecognised option '--train.lrr'" in p.stderr, p.stderr
    assert "bad-003" in tool("triad-sweep", "list", f).stdout  # the table still shown


def test_byte_order_marks_are_not_text(tmp_path):
    """A sweep file and a base config saved with a UTF-8 byte-order mark (as triad-train reads
    the config) parse as without one."""
    base = tmp_path / "base.ini"
    base.write_bytes(b"\xef\xbb\xbf[train]\nsteps = 70\n")
    f = tmp_path / "bom.ini"
    f.write_bytes(f"\ufeff[sweep]\nname = bom\nbase = {base}\n[values]\ntrain.lr = 1e-3\n"
                  .encode())
    s = sw.load_sweep(f)
    assert s.name == "bom" and s.steps(s.points[0]) == 70


def test_bad_invocations_through_the_command(tmp_path):
    a, _ = base_files(tmp_path)
    f = write(tmp_path / "ok.ini", good(tmp_path))
    for args, needle in ((["args", f, 2], "point index 2 out of range (the sweep has 2 points: 0-1)"),
                         (["args", f, -1], "point index -1 out of range"),
                         (["args", f, "x"], "point index 'x' is not an integer"),
                         (["args", f, "1_0"], "point index '1_0' is not an integer"),
                         (["list", tmp_path / "none.ini"], "none.ini: no such file"),
                         (["list", tmp_path], "is a directory")):
        p = tool("triad-sweep", *args)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.strip().count("\n") == 0 and needle in p.stderr, p.stderr
    binary = tmp_path / "bin.ini"
    binary.write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe\x00")
    p = tool("triad-sweep-report", binary)
    assert p.returncode == 1 and "Traceback" not in p.stderr and str(binary) in p.stderr
    p = tool("triad-sweep-report", tmp_path / "none.ini")
    assert p.returncode == 1 and "none.ini: no such file" in p.stderr
