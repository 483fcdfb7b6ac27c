"""Tests of analysis/: the metrics loader, the plot CLI and the checkpoint inspector, on
synthetic files written with h5py following DESIGN.md §5."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis.inspect_checkpoint import expected_shapes, inspect
from analysis.metrics import MetricsError, load_metrics

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CONFIG = """[model]
n_layer = 2
n_head = 2
n_embd = 8
seq_len = 16
vocab_size = 50

[train]
lr = 6e-4
steps = 60

[run]
name = synth
dir = runs
"""


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def write_metrics(path: Path, n_train: int = 60, evals=(0, 20, 40, 60), name: str = "synth",
                  chunked: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    steps = np.arange(n_train, dtype=np.int64)
    loss = 10.8 * np.exp(-steps / 25.0) + 3.0 + 0.1 * rng.standard_normal(n_train)
    train = {
        "step": steps,
        "loss": loss,
        "lr": np.minimum(6e-4 * (steps + 1) / 10, 6e-4),
        "grad_norm": 1.0 + rng.random(n_train),
        "tokens_per_sec": 1000.0 + 10 * rng.standard_normal(n_train),
        "mfu": np.full(n_train, 0.31),
        "step_ms": np.full(n_train, 512.0),
        "tokens": (steps + 1) * 512,
    }
    ev = np.asarray(evals, dtype=np.int64)
    val = {"step": ev, "loss": 10.8 * np.exp(-ev / 25.0) + 3.1,
           "accuracy": np.linspace(0.0, 0.3, len(ev))}
    with h5py.File(path, "w") as f:
        for gname, cols in (("train", train), ("val", val)):
            g = f.create_group(gname)
            for k, v in cols.items():
                if chunked:
                    g.create_dataset(k, data=v, maxshape=(None,), chunks=(64,))
                else:
                    g.create_dataset(k, data=v)
        f.attrs["config"] = CONFIG.replace("name = synth", f"name = {name}")
        f.attrs["grid"] = "dp=1 pp=1 tp=1"
        f.attrs["n_params"] = np.int64(12345)
        f.attrs["flops_per_token"] = 6.0 * 12345
        f.attrs["peak_flops"] = 1.9e11
    return path


# ---- metrics loader -------------------------------------------------------------------------

def test_load_metrics_file_and_run_dir(tmp_path):
    p = write_metrics(tmp_path / "run1" / "metrics.h5")
    for arg in (p, tmp_path / "run1", str(p)):
        m = load_metrics(arg)
        assert m.path == p
        assert m.n_train == 60 and m.n_val == 4
        assert m.train["step"].dtype == np.int64 and m.train["tokens"].dtype == np.int64
        assert m.train["loss"].dtype == np.float64
        assert set(m.train) >= {"step", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu",
                                 "step_ms", "tokens"}
        assert set(m.val) >= {"step", "loss", "accuracy"}
        assert m.attrs["grid"] == "dp=1 pp=1 tp=1"
        assert m.attrs["n_params"] == 12345
        assert m.config("train.lr") == "6e-4"
        assert m.name == "synth"
    # tokens at each evaluation: v updates applied -> tokens after train step v-1
    np.testing.assert_array_equal(m.val_tokens(), [0, 20 * 512, 40 * 512, 60 * 512])


def test_load_metrics_empty_groups(tmp_path):
    p = write_metrics(tmp_path / "metrics.h5", n_train=0, evals=())
    m = load_metrics(p)
    assert m.n_train == 0 and m.n_val == 0


def test_unequal_lengths_is_an_error(tmp_path):
    p = write_metrics(tmp_path / "bad" / "metrics.h5")
    with h5py.File(p, "a") as f:
        f["train/loss"].resize((57,))
    with pytest.raises(MetricsError) as e:
        load_metrics(p, wait=0.1)
    assert str(p) in str(e.value) and "unequal" in str(e.value)
    with pytest.warns(UserWarning):
        m = load_metrics(p, strict=False, wait=0.1)
    assert m.n_train == 57


def test_one_row_difference_is_a_file_being_written(tmp_path):
    """A reader that catches the writer between two columns' appends sees one row more in
    some of them: cut to the shortest, silently."""
    import warnings

    p = write_metrics(tmp_path / "mid" / "metrics.h5")
    with h5py.File(p, "a") as f:
        for k in ("grad_norm", "tokens_per_sec", "mfu", "step_ms", "tokens"):
            f[f"train/{k}"].resize((59,))
        f["val/accuracy"].resize((3,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = load_metrics(p, wait=0.1)
    assert m.n_train == 59 and m.n_val == 3
    assert all(len(v) == 59 for v in m.train.values())
    assert all(len(v) == 3 for v in m.val.values())


def test_missing_group_and_dataset(tmp_path):
    p = write_metrics(tmp_path / "nog" / "metrics.h5")
    with h5py.File(p, "a") as f:
        del f["val"]
    with pytest.raises(MetricsError, match="missing group /val") as e:
        load_metrics(p)
    assert str(p) in str(e.value)

    q = write_metrics(tmp_path / "nods" / "metrics.h5")
    with h5py.File(q, "a") as f:
        del f["train/grad_norm"]
    with pytest.raises(MetricsError, match="grad_norm"):
        load_metrics(q)


def test_not_hdf5_and_missing_file(tmp_path):
    p = tmp_path / "metrics.h5"
    p.write_text("not hdf5")
    with pytest.raises(MetricsError, match="cannot open") as e:
        load_metrics(p)
    assert str(p) in str(e.value)
    with pytest.raises(MetricsError, match="no such file"):
        load_metrics(tmp_path / "nowhere")


# ---- plot CLI -------------------------------------------------------------------------------

def test_plot_cli_single_and_overlay(tmp_path):
    a = write_metrics(tmp_path / "a" / "metrics.h5", name="run_a")
    write_metrics(tmp_path / "b" / "metrics.h5", n_train=40, evals=(0, 20, 40), name="run_b",
                  chunked=False)
    out = tmp_path / "figs" / "curves.png"
    r = run_cli("analysis.plot_curves", str(a), str(tmp_path / "b"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out)
    data = out.read_bytes()
    assert len(data) > 10_000 and data[:8] == PNG_MAGIC

    out2 = tmp_path / "tokens.png"
    r = run_cli("analysis.plot_curves", str(a), "--x", "tokens", "--smooth", "5", "--out",
                str(out2))
    assert r.returncode == 0, r.stderr
    assert out2.read_bytes()[:8] == PNG_MAGIC


def test_plot_marks_skipped_updates(tmp_path, monkeypatch):
    """Rows with /train/skipped = 1 get a marker on the loss panel; NaN (older rows) and 0 not."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from analysis import plot_curves

    path = write_metrics(tmp_path / "s" / "metrics.h5", name="skips")
    skipped = np.zeros(60)
    skipped[[17, 42]] = 1.0
    skipped[:5] = np.nan
    with h5py.File(path, "r+") as f:
        f["train"].create_dataset("skipped", data=skipped, maxshape=(None,), chunks=(64,))
    figs = []
    monkeypatch.setattr(plot_curves, "save_figure", lambda fig, out, dpi: figs.append(fig) or out)
    plot_curves.plot_runs([load_metrics(path)], tmp_path / "s.png")
    ax_loss = figs[-1].axes[0]
    marked = [line for line in ax_loss.lines if line.get_marker() == "x"]
    assert len(marked) == 1 and list(marked[0].get_xdata()) == [17.0, 42.0]
    plt.close(figs[-1])


def test_bits_per_byte_is_summarized_and_plotted(tmp_path, monkeypatch):
    """eval.bits_per_byte: /val/bpb (and a set's) load, join the summary, and are drawn on a
    right-hand axis of the accuracy panel; a file without them draws no such axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from analysis import plot_curves

    plain = write_metrics(tmp_path / "p" / "metrics.h5", name="plain")
    path = write_metrics(tmp_path / "b" / "metrics.h5", name="bpb")
    bpb = np.array([np.nan, 1.9, 1.4, 1.2])  # (NaN: a row from before it was on)
    with h5py.File(path, "r+") as f:
        f["val"].create_dataset("bpb", data=bpb, maxshape=(None,), chunks=(64,))
        g = f.create_group("val_sets/web")
        g["step"], g["loss"] = np.array([0, 20, 40, 60]), np.array([10.0, 6.0, 4.0, 3.5])
        g["accuracy"], g["bpb"] = np.linspace(0.0, 0.3, 4), bpb + 0.1
    m = load_metrics(path)
    assert "(1.2000 bits per byte)" in m.summary(), m.summary()
    assert "bits per byte" not in load_metrics(plain).summary()
    figs = []
    monkeypatch.setattr(plot_curves, "save_figure", lambda fig, out, dpi: figs.append(fig) or out)
    plot_curves.plot_runs([m], tmp_path / "b.png")
    twin = [ax for ax in figs[-1].axes if "bits per byte" in ax.get_ylabel()]
    assert len(twin) == 1
    lines = {line.get_marker(): list(line.get_ydata()) for line in twin[0].lines}
    assert lines["D"] == pytest.approx([1.9, 1.4, 1.2]) and lines["^"] == pytest.approx(
        [2.0, 1.5, 1.3])
    plt.close(figs[-1])
    plot_curves.plot_runs([load_metrics(plain)], tmp_path / "p.png")
    assert not any("bits per byte" in ax.get_ylabel() for ax in figs[-1].axes)
    plt.close(figs[-1])


def test_val_sets_are_loaded_and_plotted(tmp_path, monkeypatch):
    """eval.sets: /val_sets/<name> groups load into Metrics.val_sets and get a marker each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from analysis import plot_curves

    path = write_metrics(tmp_path / "v" / "metrics.h5", name="sets")
    with h5py.File(path, "r+") as f:
        for name, off in (("web", 0.2), ("books", -0.1)):
            g = f.create_group(f"val_sets/{name}")
            g["step"] = np.array([0, 20, 40, 60], dtype=np.int64)
            g["loss"] = np.array([10.0, 6.0, 4.0, 3.5]) + off
            g["accuracy"] = np.linspace(0.0, 0.3, 4)
    m = load_metrics(path)
    assert sorted(m.val_sets) == ["books", "web"]
    assert list(m.val_sets["web"]["loss"]) == pytest.approx([10.2, 6.2, 4.2, 3.7])
    figs = []
    monkeypatch.setattr(plot_curves, "save_figure", lambda fig, out, dpi: figs.append(fig) or out)
    plot_curves.plot_runs([m], tmp_path / "v.png")
    ax = figs[-1].axes[0]
    marks = sorted(line.get_marker() for line in ax.lines if line.get_linestyle() == ":")
    assert marks == ["^", "v"]
    plt.close(figs[-1])
    # Against tokens: the sets sit at the tokens seen at their evaluations, as /val does.
    plot_curves.plot_runs([m], tmp_path / "t.png", x="tokens")
    ax = figs[-1].axes[0]
    xs = [list(line.get_xdata()) for line in ax.lines if line.get_linestyle() == ":"]
    assert xs and all(x == pytest.approx(list(m.val_tokens())) for x in xs)
    plt.close(figs[-1])


def test_moving_average_validation_is_loaded_and_plotted(tmp_path, monkeypatch):
    """eval.ema: /val_ema loads into Metrics.val_ema (its choice accuracy too) and
    /val_ema_sets into Metrics.val_ema_sets; its loss and choice accuracy are drawn dash-dot
    beside val's, where scored, at the tokens seen at its evaluations against tokens; a file
    without it loads with none."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from analysis import plot_curves

    plain = load_metrics(write_metrics(tmp_path / "p" / "metrics.h5"))
    assert plain.val_ema == {}
    path = write_metrics(tmp_path / "e" / "metrics.h5", name="ema")
    with h5py.File(path, "r+") as f:
        g = f.create_group("val_ema")
        g["step"] = np.array([0, 20, 40, 60], dtype=np.int64)
        g["loss"] = np.array([10.0, 5.5, 3.9, 3.4])
        g["accuracy"] = np.linspace(0.0, 0.3, 4)
        g["bpb"] = np.full(4, np.nan)
        g["choice_accuracy"] = np.array([np.nan, 0.25, 0.3, 0.5])
        s = f.create_group("val_ema_sets/code")
        s["step"] = np.array([0, 20, 40], dtype=np.int64)  # (a row short: cut to the shortest)
        s["loss"] = np.array([9.0, 6.0, 4.0, 3.5])
        s["accuracy"] = np.zeros(4)
    m = load_metrics(path)
    assert list(m.val_ema["loss"]) == pytest.approx([10.0, 5.5, 3.9, 3.4])
    assert list(m.val_ema_sets) == ["code"] and plain.val_ema_sets == {}
    assert list(m.val_ema_sets["code"]["loss"]) == [9.0, 6.0, 4.0]
    figs = []
    monkeypatch.setattr(plot_curves, "save_figure", lambda fig, out, dpi: figs.append(fig) or out)
    for x in ("step", "tokens"):
        plot_curves.plot_runs([m, plain], tmp_path / "e.png", x=x)
        ax = figs[-1].axes[0]
        lines = [line for line in ax.lines if line.get_linestyle() == "-."]
        assert len(lines) == 1 and list(lines[0].get_ydata()) == list(m.val_ema["loss"])
        want = m.val_tokens() if x == "tokens" else [0, 20, 40, 60]
        assert list(lines[0].get_xdata()) == pytest.approx(list(want))
        labels = [t.get_text() for leg in ax.findobj(matplotlib.legend.Legend)
                  for t in leg.get_texts()]
        assert "moving average of the weights" in labels
        # The choice accuracy (%) where scored.
        acc = [line for a in figs[-1].axes[1:] for line in a.lines if line.get_linestyle() == "-."]
        assert len(acc) == 1 and list(acc[0].get_ydata()) == pytest.approx([25.0, 30.0, 50.0])
        plt.close(figs[-1])


def test_plot_cli_bad_files(tmp_path):
    p = write_metrics(tmp_path / "r" / "metrics.h5")
    with h5py.File(p, "a") as f:
        f["val/accuracy"].resize((2,))
    out = tmp_path / "x.png"
    r = run_cli("analysis.plot_curves", str(p), "--out", str(out))
    assert r.returncode != 0
    assert str(p) in r.stderr and "unequal" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()
    r = run_cli("analysis.plot_curves", str(p), "--allow-partial", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC

    q = write_metrics(tmp_path / "q" / "metrics.h5")
    with h5py.File(q, "a") as f:
        del f["train"]
    r = run_cli("analysis.plot_curves", str(q), "--out", str(out))
    assert r.returncode != 0 and str(q) in r.stderr and "/train" in r.stderr

    # A column that is a group (a KeyError), and the optional tables each tool reads: without
    # their step, with columns of unequal lengths (they were cut to the shortest, or drawn
    # against the steps until matplotlib raised): one error naming the file and the table.
    g = write_metrics(tmp_path / "g" / "metrics.h5")
    with h5py.File(g, "a") as f:
        del f["train/loss"]
        f.create_group("train/loss")
    r = run_cli("analysis.plot_curves", str(g), "--out", str(out))
    assert r.returncode != 0 and f"{g}: /train/loss is not a dataset" in r.stderr, r.stderr
    tables = {"norms": ("analysis.plot_norms", {"grad_h0": (6,), "weight_h0": (6,)}),
              "moe_load": ("analysis.plot_moe_load", {"h0": (6, 4)}),
              "noise": ("analysis.plot_noise", {c: (6,) for c in ("small_sq", "small_tokens",
                                                                  "big_sq", "big_tokens")}),
              "val_positions": ("analysis.plot_positions", {"loss": (6, 16)})}
    for group, (module, columns) in tables.items():
        # (Unequal lengths are retried for 3 s, a writer's append caught midway: one tool for
        # them; the tables' one loader reads all four.)
        for damage in ("no step", "short") if group == "noise" else ("no step",):
            m = write_metrics(tmp_path / f"{group}_{damage[:2]}" / "metrics.h5")
            with h5py.File(m, "a") as f:
                t = f.create_group(group)
                if damage != "no step":
                    t["step"] = np.arange(6, dtype=np.int64) * 10
                for i, (k, shape) in enumerate(columns.items()):
                    rows = 2 if damage == "short" and i == 0 else shape[0]
                    t[k] = np.full((rows, *shape[1:]), 0.25 + i)
            r = run_cli(module, str(m.parent), "--out", str(out))
            want = (f"/{group} lacks dataset(s) step" if damage == "no step"
                    else f"datasets of /{group} have unequal lengths")
            assert r.returncode != 0 and str(m) in r.stderr and want in r.stderr, \
                (group, damage, r.stderr)
            assert "Traceback" not in r.stderr


# ---- checkpoint inspector -------------------------------------------------------------------

MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 8, "seq_len": 16, "vocab_size": 50,
         "padded_vocab_size": 128}


def write_checkpoint(path: Path, complete: bool = True, slots=("m", "v")) -> Path:
    import zlib

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    shapes = expected_shapes(MODEL)
    with h5py.File(path, "w") as f:
        for group in ["model"] + [f"optimizer/{s}" for s in slots]:
            g = f.require_group(group)
            for name, shape in shapes.items():
                a = (0.02 * rng.standard_normal(shape)).astype(np.float32)
                ds = g.create_dataset(name, data=a)
                ds.attrs["checksum"] = np.uint32(zlib.crc32(a.astype("<f4").tobytes()))
        for k, v in MODEL.items():
            f["model"].attrs[k] = np.int64(v)
        f.attrs["format"] = "triad-checkpoint"
        f.attrs["format_version"] = np.int64(1)
        f.attrs["step"] = np.int64(100)
        f.attrs["tokens_seen"] = np.int64(100 * 512)
        f.attrs["next_sequence"] = np.int64(400)
        f.attrs["epoch"] = np.int64(0)
        f.attrs["config"] = CONFIG
        f.attrs["grid"] = "dp=2 pp=1 tp=1"
        if complete:
            f.attrs["complete"] = np.int64(1)
    return path


def test_inspect_checkpoint_ok(tmp_path):
    run = tmp_path / "run"
    p = write_checkpoint(run / "ckpt" / "step_00000100.h5")
    (run / "ckpt" / "latest").write_text("step_00000100.h5\n")
    rep = inspect(p, stats=True, verify=True)
    assert rep.ok, rep.problems
    assert rep.datasets["model/wte/weight"][0] == (128, 8)
    for arg in (str(p), str(run), str(run / "ckpt")):
        r = run_cli("analysis.inspect_checkpoint", arg, "--stats", "--verify")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "/model/h/1/mlp/c_fc/weight" in r.stdout and "[32, 8]" in r.stdout
        assert "step = 100" in r.stdout and "status: OK" in r.stdout


def test_inspect_checkpoint_incomplete(tmp_path):
    p = write_checkpoint(tmp_path / "step_00000005.h5", complete=False)
    r = run_cli("analysis.inspect_checkpoint", str(p))
    assert r.returncode != 0
    assert "complete" in r.stdout and str(p) in r.stdout + r.stderr


def test_inspect_checkpoint_inconsistent(tmp_path):
    p = write_checkpoint(tmp_path / "c.h5")
    with h5py.File(p, "a") as f:
        del f["optimizer/v/h/0/ln_1/bias"]
        del f["model/ln_f/bias"]
        f["model/ln_f/bias"] = np.zeros(9, np.float32)
        ds = f["optimizer/m/wpe/weight"]
        ds[0, 0] = 123.0  # checksum now stale
    rep = inspect(p, verify=True)
    text = "\n".join(rep.problems)
    assert "optimizer/v/h/0/ln_1/bias is missing" in text
    assert "/model/ln_f/bias has shape (9,)" in text
    assert "optimizer/m/wpe/weight: checksum mismatch" in text
    r = run_cli("analysis.inspect_checkpoint", str(p))
    assert r.returncode != 0 and str(p) in r.stdout
    # triad-ckpt printed every problem; a tool that did not (triad-convert, triad-average)
    # quotes the others in its one error line rather than pointing "above" at nothing.
    r = run_cli("analysis.inspect_checkpoint", "ckpt", str(p))  # triad-ckpt
    assert r.returncode != 0 and all(q in r.stdout for q in rep.problems)
    assert r.stderr.strip().endswith("more problems, listed above)")
    line = rep.headline()
    assert "listed above" not in line and all(q in line for q in rep.problems[:4])
    if len(rep.problems) > 4:
        assert f"`triad-ckpt {p}` lists all" in line


def test_inspect_not_a_checkpoint(tmp_path):
    p = tmp_path / "junk.h5"
    p.write_bytes(b"\0" * 100)
    r = run_cli("analysis.inspect_checkpoint", str(p))
    assert r.returncode != 0 and str(p) in r.stdout and "Traceback" not in r.stderr
    r = run_cli("analysis.inspect_checkpoint", str(tmp_path / "missing.h5"))
    assert r.returncode != 0 and "missing.h5" in r.stdout


def test_mixture_of_experts_adds_a_row_of_routing_panels(tmp_path, monkeypatch):
    """A run with /train/moe_max_load gets a third row: the busiest expert's load, the fraction
    dropped (in %), the routing loss terms; a dense run keeps two rows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from analysis import plot_curves

    dense = write_metrics(tmp_path / "d" / "metrics.h5", name="dense")
    path = write_metrics(tmp_path / "m" / "metrics.h5", name="moe")
    with h5py.File(path, "r+") as f:
        n = len(f["train/step"])
        for key, values in (("moe_max_load", np.linspace(2.0, 1.2, n)),
                            ("moe_dropped", np.full(n, 0.25)),
                            ("moe_aux_loss", np.full(n, 0.011)),
                            ("moe_z_loss", np.full(n, np.nan))):
            f["train"].create_dataset(key, data=values, maxshape=(None,), chunks=(64,))
    figs = []
    monkeypatch.setattr(plot_curves, "save_figure", lambda fig, out, dpi: figs.append(fig) or out)
    plot_curves.plot_runs([load_metrics(dense)], tmp_path / "d.png")
    assert len(figs[-1].axes) == 6
    plt.close(figs[-1])
    plot_curves.plot_runs([load_metrics(dense), load_metrics(path)], tmp_path / "m.png")
    axes = figs[-1].axes
    assert len(axes) == 9
    load, drop, terms = axes[6:]
    assert len(load.lines) == 2 and max(load.lines[0].get_ydata()) == pytest.approx(2.0)
    assert len(drop.lines) == 2 and list(drop.lines[0].get_ydata())[0] == pytest.approx(25.0)
    assert len(terms.lines) == 2  # the balancing term; the z-loss is NaN throughout
    assert not drop.texts
    plt.close(figs[-1])
    # Dropless runs only: the empty panel says why.
    with h5py.File(path, "r+") as f:
        f["train/moe_dropped"][...] = np.nan
    plot_curves.plot_runs([load_metrics(path)], tmp_path / "n.png")
    drop = figs[-1].axes[7]
    assert not drop.lines and "dropless" in drop.texts[0].get_text()
    plt.close(figs[-1])
