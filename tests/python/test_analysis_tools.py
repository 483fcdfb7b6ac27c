"""The analysis commands (triad-plot, triad-ckpt, triad-scaling) on files written by real
triad-train runs: one rank, two data-parallel ranks, two tensor-parallel ranks (another wte
padding), a run read while it is still training; the error cases (missing, non-HDF5, foreign
HDF5, metrics without /train, incomplete / truncated / corrupted checkpoints); and the
package: its declared entry points, a wheel built from analysis/ and its console scripts."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
import zlib

import h5py
import numpy as np
import pytest

from triad_run import (ENV, MODULES, REPO, VENV_BIN, assert_clean_failure, exe, tiny_config,
                       tool, train)

PNG = b"\x89PNG\r\n\x1a\n"
MPIRUN = shutil.which("mpirun")
MPI_ENV = dict(ENV, OMP_NUM_THREADS="1", OMPI_MCA_pml="ob1", OMPI_MCA_btl="self,vader")
VOCAB = 300  # padded to 384 on one tensor-parallel rank, to 512 on two


def mpi_train(n, *args):
    assert MPIRUN, "mpirun not found"
    p = subprocess.run([MPIRUN, "--oversubscribe", "-np", str(n), exe("triad-train"),
                        *map(str, args)], capture_output=True, text=True, env=MPI_ENV,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four runs of one model and data: 1 rank, dp=2, tp=2, cp=2 (12 steps each)."""
    tmp = tmp_path_factory.mktemp("analysis_runs")
    common = ["--train.steps", 12, "--eval.every", 4, "--checkpoint.every", 6]
    cfg = tiny_config(tmp, name="r1", vocab=VOCAB)
    train("--config", cfg, *common, check=True)
    mpi_train(2, "--config", cfg, *common, "--run.name", "dp2")
    mpi_train(2, "--config", cfg, *common, "--run.name", "tp2", "--parallel.tp", 2)
    mpi_train(2, "--config", cfg, *common, "--run.name", "cp2", "--parallel.cp", 2)
    return {"tmp": tmp, "cfg": cfg, **{n: tmp / "runs" / n for n in ("r1", "dp2", "tp2", "cp2")}}


# ---- triad-plot ---------------------------------------------------------------------------

def test_plot_overlays_real_runs(runs, tmp_path):
    out = tmp_path / "curves.png"
    p = tool("triad-plot", runs["r1"], runs["dp2"] / "metrics.h5", runs["tp2"], "--out", out)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == str(out)
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 20_000
    assert "r1: 12 train rows" in p.stderr and "grid dp=1 pp=1 tp=2" in p.stderr
    out2 = tmp_path / "tokens.pdf"
    p = tool("triad-plot", runs["r1"], "--x", "tokens", "--smooth", 3, "--out", out2)
    assert p.returncode == 0, p.stderr
    assert out2.read_bytes()[:4] == b"%PDF"


# ---- triad-ckpt ---------------------------------------------------------------------------

def test_ckpt_lists_tensors_norms_attributes_and_verifies(runs):
    ck = runs["r1"] / "ckpt" / "step_00000012.h5"
    p = tool("triad-ckpt", runs["r1"], "--config")  # the run directory: ckpt/latest
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert f"checkpoint: {ck}" in out
    for needle in ("step = 12", "tokens_seen = 1536", "grid = dp=1 pp=1 tp=1", "complete = 1",
                   "format = triad-checkpoint", f"vocab_size={VOCAB}", "padded_vocab_size=384",
                   "[train]", "status: OK"):
        assert needle in out, needle
    # every /model tensor with its shape and L2 norm, the norm right
    with h5py.File(ck, "r") as f:
        w = f["model/h/1/mlp/c_fc/weight"][()].astype(np.float64)
        n_datasets = sum(1 for _ in _datasets(f))
    line = next(l for l in out.splitlines() if "/model/h/1/mlp/c_fc/weight" in l)
    assert "[128, 32]" in line and "float32" in line
    assert float(line.split("L2")[1]) == pytest.approx(np.linalg.norm(w), rel=1e-5)
    assert f"checksums: {n_datasets} of {n_datasets} datasets verified" in out
    p = tool("triad-ckpt", ck, "--quick", "--stats")
    assert p.returncode == 0 and "L2" not in p.stdout and "checksums" not in p.stdout


def _datasets(f):
    out = []
    f.visititems(lambda n, o: out.append(n) if isinstance(o, h5py.Dataset) else None)
    return out


def test_ckpt_verifies_a_muon_checkpoint(tmp_path):
    """optim.name = muon keeps momentum for the hidden matrices and m, v for the rest."""
    cfg = tiny_config(tmp_path, name="mu", vocab=VOCAB)
    train("--config", cfg, "--train.steps", 3, "--optim.name", "muon", check=True)
    ck = tmp_path / "runs" / "mu" / "ckpt" / "step_00000003.h5"
    p = tool("triad-ckpt", ck)
    assert p.returncode == 0 and "status: OK" in p.stdout, p.stdout + p.stderr
    bad = tmp_path / "bad.h5"
    shutil.copy(ck, bad)
    with h5py.File(bad, "r+") as f:
        del f["optimizer/momentum/h/0/mlp/c_fc/weight"]
        f["optimizer/momentum/h/0/ln_1/weight"] = f["optimizer/m/h/0/ln_1/weight"][()]
    p = tool("triad-ckpt", bad)
    assert p.returncode != 0
    assert "/optimizer/momentum/h/0/mlp/c_fc/weight is missing" in p.stdout + p.stderr
    assert "/optimizer/momentum/h/0/ln_1/weight: Muon keeps m and v for it" in p.stdout + p.stderr


def test_ckpt_verifies_a_lion_checkpoint(tmp_path):
    """optim.name = lion keeps m alone: no complaint that v is missing; a v is one."""
    cfg = tiny_config(tmp_path, name="li", vocab=VOCAB)
    train("--config", cfg, "--train.steps", 3, "--optim.name", "lion", check=True)
    ck = tmp_path / "runs" / "li" / "ckpt" / "step_00000003.h5"
    with h5py.File(ck, "r") as f:
        assert sorted(f["optimizer"]) == ["m"]
    p = tool("triad-ckpt", ck)
    assert p.returncode == 0 and "status: OK" in p.stdout, p.stdout + p.stderr
    bad = tmp_path / "bad.h5"
    shutil.copy(ck, bad)
    with h5py.File(bad, "r+") as f:
        f["optimizer/v/h/0/ln_1/weight"] = f["optimizer/m/h/0/ln_1/weight"][()]
    p = tool("triad-ckpt", bad)
    assert p.returncode != 0 and "/optimizer/v: Lion keeps /optimizer/m alone" in p.stdout, \
        p.stdout + p.stderr


def test_ckpt_diff_across_grids_compares_the_vocabulary_rows(runs):
    a = runs["r1"] / "ckpt" / "step_00000012.h5"
    b = runs["tp2"] / "ckpt" / "step_00000012.h5"
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa["model/wte/weight"].shape == (384, 32)
        assert fb["model/wte/weight"].shape == (512, 32)
        expect = np.abs(fa["model/wte/weight"][:VOCAB].astype(np.float64)
                        - fb["model/wte/weight"][:VOCAB]).max()
    p = tool("triad-ckpt", a, b, "--optimizer", "--tolerance", 1e-3)  # fp32 rounding
    assert p.returncode == 0, p.stdout + p.stderr
    assert "attribute grid: A dp=1 pp=1 tp=1 | B dp=1 pp=1 tp=2" in p.stdout
    assert "parallel.tp: A 1 | B 2" in p.stdout and "run.name: A r1 | B tp2" in p.stdout
    wte = next(l for l in p.stdout.splitlines() if l.startswith("| /model/wte/weight "))
    assert f"first {VOCAB} rows (padded 384 vs 512)" in wte
    assert float(wte.split("|")[3]) == pytest.approx(expect, rel=1e-3, abs=1e-12)
    assert any(l.startswith("| /optimizer/v/wte/weight ") and "first 300 rows" in l
               for l in p.stdout.splitlines())
    assert "0 not comparable" not in p.stdout and "not comparable" not in p.stdout

    # the same run 6 steps apart differs by far more than 1e-6: exit 3, one line why
    early = runs["r1"] / "ckpt" / "step_00000006.h5"
    p = tool("triad-ckpt", early, a, "--tolerance", 1e-6)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "attribute step: A 6 | B 12" in p.stdout
    assert "differ by more than 1e-06" in p.stderr and "Traceback" not in p.stderr
    p = tool("triad-ckpt", a, a, "--tolerance", 0)
    assert p.returncode == 0 and "28 tensors compared, 28 identical" in p.stdout


def test_ckpt_bad_files(runs, tmp_path):
    good = runs["r1"] / "ckpt" / "step_00000012.h5"
    assert_clean_failure(tool("triad-ckpt", tmp_path / "none.h5"), "none.h5",
                         "no such file")
    text = tmp_path / "text.h5"
    text.write_text("hello\n")
    assert_clean_failure(tool("triad-ckpt", text), text, "not an HDF5 file")
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    assert_clean_failure(tool("triad-ckpt", empty), empty, "empty file")
    # foreign HDF5: a metrics file, and some other HDF5 file
    assert_clean_failure(tool("triad-ckpt", runs["r1"] / "metrics.h5"),
                         runs["r1"] / "metrics.h5", "not a triad checkpoint")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    assert_clean_failure(tool("triad-ckpt", other), other, "not a triad checkpoint")
    # incomplete: complete = 1 missing (a write that died before its last attribute)
    inc = tmp_path / "step_00000012.h5"
    shutil.copy(good, inc)
    with h5py.File(inc, "a") as f:
        del f.attrs["complete"]
    err = assert_clean_failure(tool("triad-ckpt", inc), inc, "incomplete checkpoint")
    assert "complete" in err
    # a .partial file cut short while being written
    part = tmp_path / "step_00000012.h5.partial"
    part.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_clean_failure(tool("triad-ckpt", part), part, "truncated", ".partial file")
    # a flipped value: the checksum catches it
    bad = tmp_path / "corrupt.h5"
    shutil.copy(good, bad)
    with h5py.File(bad, "a") as f:
        f["model/wpe/weight"][0, 0] += 1.0
    assert_clean_failure(tool("triad-ckpt", bad), bad, "wpe/weight: checksum mismatch")
    # two files: the bad one is named
    assert_clean_failure(tool("triad-ckpt", good, inc), inc, "incomplete")
    # A tensor replaced by text (read back as bytes: an AttributeError), and an object header's
    # checksum broken (HDF5 raised from the walk over the file): named, for both tools that
    # read every tensor.
    words = tmp_path / "words.h5"
    shutil.copy(good, words)
    with h5py.File(words, "a") as f:
        del f["model/wpe/weight"]
        f["model/wpe/weight"] = "hello"
    header = tmp_path / "header.h5"
    shutil.copy(good, header)
    with h5py.File(header, "r") as f:
        at = f["model/wpe/weight"].id.get_offset()  # its data; the header is just before it
        addr = h5py.h5o.get_info(f["model/wpe/weight"].id).addr
    raw = bytearray(header.read_bytes())
    raw[addr + 8] ^= 0xFF  # inside the object header, whose checksum then fails
    header.write_bytes(bytes(raw))
    assert at is not None
    for tool_args in (("triad-ckpt",), ("triad-convert", "export", "--to", "hf")):
        for f, needle in ((words, "model/wpe/weight holds"), (header, "(the file is damaged)")):
            out = [tmp_path / "export"] if tool_args[0] == "triad-convert" else []
            assert_clean_failure(tool(*tool_args, f, *out), f, needle)
    # the options of a comparison, without a second file (they were ignored)
    for opt in (["--tolerance", "0.1"], ["--optimizer"]):
        p = tool("triad-ckpt", good, *opt)
        assert p.returncode == 2 and f"{opt[0]} compares two checkpoints" in p.stderr, p.stderr
    # a run directory without checkpoints
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    assert_clean_failure(tool("triad-ckpt", tmp_path / "run"), "no checkpoint")
    # Attributes no reader accepts: "status: OK" was printed for these, and a layer count of
    # 10^12 made the tool (and triad-convert export, triad-average) list layers until killed.
    for i, (where, key, value, needle) in enumerate((
            ("model", "n_layer", 10**12, "/model attribute n_layer = 1000000000000, not an "
                                         "integer in [1, 65536]"),
            ("model", "vocab_size", 0, "/model attribute vocab_size = 0, not an integer"),
            ("/", "step", -3, "root attribute step = -3, not an integer >= 0"),
            ("/", "step", "six", "root attribute step = 'six', not an integer >= 0"))):
        odd = tmp_path / f"odd{i}.h5"
        shutil.copy(good, odd)
        with h5py.File(odd, "a") as f:
            f[where].attrs[key] = value
        assert_clean_failure(tool("triad-ckpt", odd, timeout=60), odd, needle)
        if key == "n_layer":
            assert_clean_failure(tool("triad-convert", "export", odd, tmp_path / "x.bin", "--to",
                                      "llmc", timeout=60), needle)
            assert_clean_failure(tool("triad-average", odd, good, "--out", tmp_path / "a.h5",
                                      timeout=60), needle)
    # a named pipe: opening it to read waits for a writer forever
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    for t in ("triad-ckpt", "triad-plot"):
        assert_clean_failure(tool(t, fifo, timeout=60), fifo, "not a regular file")


def test_nan_weights_are_refused_by_every_tool(runs, tmp_path):
    """A checkpoint whose weights hold a NaN and an infinity (a diverged run's, with checksums
    that match): triad-ckpt says so without --stats, triad-average and triad-convert export
    refuse it by the tensor's name, and so does import for an llm.c file holding a NaN; the
    same checkpoint given twice to triad-average (weighing double) is refused too."""
    good = runs["r1"] / "ckpt" / "step_00000012.h5"
    bad = tmp_path / "nan.h5"
    shutil.copy(good, bad)
    with h5py.File(bad, "a") as f:
        d = f["model/h/0/mlp/c_fc/weight"]
        a = d[...]
        a[0, :2] = [np.nan, np.inf]
        d[...] = a
        d.attrs["checksum"] = np.uint32(zlib.crc32(np.ascontiguousarray(a, "<f4").tobytes()))
    needle = "h/0/mlp/c_fc/weight holds NaN or Inf"
    assert_clean_failure(tool("triad-ckpt", bad), bad, needle)
    assert_clean_failure(tool("triad-average", "--out", tmp_path / "av.h5", good, bad), needle)
    assert_clean_failure(tool("triad-average", "--out", tmp_path / "av.h5", good, good), good,
                         "given twice")
    assert_clean_failure(tool("triad-convert", "export", "--to", "llmc", bad,
                              tmp_path / "x.bin"), needle)
    assert not any(tmp_path.glob("*av.h5*")) and not any(tmp_path.glob("*x.bin*"))
    llmc = tmp_path / "good.bin"
    assert tool("triad-convert", "export", "--to", "llmc", good, llmc).returncode == 0
    data = bytearray(llmc.read_bytes())
    data[1024 + 8:1024 + 12] = np.float32(np.nan).tobytes()  # a value of wte, after the header
    (tmp_path / "nan.bin").write_bytes(bytes(data))
    assert_clean_failure(tool("triad-convert", "import", tmp_path / "nan.bin",
                              tmp_path / "n.h5"), "nan.bin", "wte/weight holds 1 NaN")
    assert not (tmp_path / "n.h5").exists() and not any(tmp_path.glob(".n.h5.*"))


# ---- triad-scaling ------------------------------------------------------------------------

def test_scaling_from_runs_on_one_and_two_ranks(runs, tmp_path):
    out, csv = tmp_path / "scaling.png", tmp_path / "scaling.csv"
    p = tool("triad-scaling", runs["dp2"], runs["r1"], runs["tp2"], runs["cp2"], "--skip", 3,
             "--out", out, "--csv", csv)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:8] == PNG
    import pandas as pd

    df = pd.read_csv(csv)
    assert list(df["run"]) == ["r1", "dp2", "tp2", "cp2"]  # by rank count, stable
    assert list(df["ranks"]) == [1, 2, 2, 2]  # context-parallel ranks count too
    assert list(df["grid"]) == ["dp=1 pp=1 tp=1", "dp=2 pp=1 tp=1", "dp=1 pp=1 tp=2",
                                "dp=1 pp=1 tp=1 cp=2"]
    for name, row in zip(df["run"], df.to_dict("records")):
        with h5py.File(runs[name] / "metrics.h5", "r") as f:
            tps = np.median(f["train/tokens_per_sec"][3:])
        assert row["tokens_per_sec"] == pytest.approx(tps, rel=1e-5)
        assert row["steps_used"] == 9
    base = df["tokens_per_sec"][0]
    assert df["efficiency"][0] == pytest.approx(1.0)
    # The CSV's numbers have 6 significant digits: a ratio recomputed from two of them and the
    # ratio written (each rounded by up to 5e-6 relative) can differ by 1.5e-5 (measured 1.1e-5).
    assert df["efficiency"][1] == pytest.approx(df["tokens_per_sec"][1] / 2 / base, rel=2e-5)
    assert df["speedup"][2] == pytest.approx(df["tokens_per_sec"][2] / base, rel=2e-5)
    table = p.stdout.splitlines()
    assert table[0].startswith("| run") and "efficiency" in table[0] and len(table) == 6


def test_scaling_refuses_another_model(runs, tmp_path):
    cfg = tiny_config(tmp_path, name="wide", vocab=VOCAB, model__n_embd=64)
    train("--config", cfg, "--train.steps", 4, check=True)
    wide = tmp_path / "runs" / "wide"
    err = assert_clean_failure(tool("triad-scaling", runs["r1"], wide, "--out",
                                    tmp_path / "s.png"), wide / "metrics.h5", "model.n_embd")
    assert "--any-model" in err
    p = tool("triad-scaling", runs["r1"], wide, "--any-model", "--out", tmp_path / "s.png")
    assert p.returncode == 0, p.stderr


# ---- bad metrics files, for every tool reading them ----------------------------------------

@pytest.mark.parametrize("cmd", ["triad-plot", "triad-scaling"])
def test_metrics_tools_bad_files(runs, tmp_path, cmd):
    out = tmp_path / "x.png"
    assert_clean_failure(tool(cmd, tmp_path / "nowhere", "--out", out),
                         tmp_path / "nowhere", "no such file")
    (tmp_path / "emptyrun").mkdir()
    assert_clean_failure(tool(cmd, tmp_path / "emptyrun", "--out", out),
                         tmp_path / "emptyrun" / "metrics.h5", "no such file")
    text = tmp_path / "text" / "metrics.h5"
    text.parent.mkdir()
    text.write_text("step,loss\n0,10.8\n")
    assert_clean_failure(tool(cmd, text, "--out", out), text, "not an HDF5 file")
    # foreign HDF5: a checkpoint given as metrics
    ck = runs["r1"] / "ckpt" / "step_00000012.h5"
    assert_clean_failure(tool(cmd, ck, "--out", out), ck, "missing group /train")
    # a metrics file without /train
    notrain = tmp_path / "notrain" / "metrics.h5"
    notrain.parent.mkdir()
    shutil.copy(runs["r1"] / "metrics.h5", notrain)
    with h5py.File(notrain, "a") as f:
        del f["train"]
    assert_clean_failure(tool(cmd, runs["r1"], notrain, "--out", out), notrain, "/train")
    # text where numbers stand; a dataset where a group of sets stands
    for edit, needle in ((lambda f: f["train"].create_dataset("odd", data=[b"a", b"b"]),
                          "/train/odd holds text, not numbers"),
                         (lambda f: f.create_dataset("val_sets", data=[1.0]),
                          "/val_sets is not a group")):
        damaged = tmp_path / "damaged" / "metrics.h5"
        damaged.parent.mkdir(exist_ok=True)
        shutil.copy(runs["r1"] / "metrics.h5", damaged)
        with h5py.File(damaged, "a") as f:
            edit(f)
        assert_clean_failure(tool(cmd, damaged, "--out", out), damaged, needle)
    assert not out.exists()
    # Where the figure goes: matplotlib wrote "<name>.png" for a name without a suffix (a
    # directory's too) and allocated what any dpi asked for.
    for where, needle in ((tmp_path, "is a directory"), (tmp_path / "fig", "not an image file"),
                          ("", "--out is empty")):
        assert_clean_failure(tool(cmd, runs["r1"], "--out", where), needle)
    if cmd == "triad-plot":
        assert_clean_failure(tool(cmd, runs["r1"], "--out", out, "--dpi", 100000), "--dpi 100000")
    else:
        assert_clean_failure(tool(cmd, runs["r1"], "--out", out, "--csv", ""), "--csv is empty")
    assert not any(tmp_path.glob("*.png")) and not out.exists()
    # ... told before the runs are read: nothing is printed of them, and a missing run is not
    # what the message is about.
    for args in ([runs["r1"], "--out", tmp_path / "fig"], [tmp_path / "nowhere", "--out", ""]):
        p = tool(cmd, *args)
        assert_clean_failure(p, "--out is empty" if args[-1] == "" else "not an image file")
        said = p.stderr + p.stdout
        assert "nowhere" not in said and "train rows" not in said and "tokens/s" not in said, said
    # Numbers out of range are refused by argparse (exit 2), naming the option.
    bad = ["--smooth", "0"] if cmd == "triad-plot" else ["--skip", "-3"]
    p = tool(cmd, runs["r1"], "--out", out, *bad)
    assert p.returncode == 2 and f"argument {bad[0]}: must be" in p.stderr, p.stderr


# ---- a run that is still training ----------------------------------------------------------

def test_tools_read_a_run_while_it_trains(tmp_path, capsys):
    """A sweep point still training: its metrics.h5 is read while triad-train appends to it
    (at evaluations every 5 steps, a second apart) by the loader, triad-plot, triad-scaling,
    triad-sweep and triad-sweep-report; the point is 'running' until it has its final checkpoint."""
    from analysis import scaling, sweep_report
    from analysis.metrics import load_metrics

    cfg = tiny_config(tmp_path, name="base")
    sweep = tmp_path / "live.ini"
    sweep.write_text(f"""[sweep]
name = live
base = {cfg}
[values]
train.lr = 1e-3
[set]
train.steps = 1000000
train.schedule = constant
train.warmup_steps = 0
checkpoint.every = 0
""")
    args = tool("triad-sweep", "args", sweep, 0).stdout.splitlines()
    assert args[-4:] == ["--run.name", "live-000", "--run.dir", str(tmp_path / "runs")]
    log = open(tmp_path / "live.log", "w")  # noqa: SIM115 - the run's progress lines
    # one OpenMP thread: no spinning threads competing with the readers for 2 cores
    proc = subprocess.Popen([exe("triad-train"), *args], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(ENV, OMP_NUM_THREADS="1"))
    run = tmp_path / "runs" / "live-000"
    try:
        deadline = time.time() + 90  # start-up alone can take seconds on a busy machine
        rows = 0
        while time.time() < deadline and rows < 10:
            time.sleep(0.05)
            if (run / "metrics.h5").exists():
                try:
                    rows = load_metrics(run, wait=0.2).n_train
                except Exception:  # noqa: BLE001 - the writer's very first moments
                    rows = 0
        assert rows >= 10, "the run wrote no metrics: " + (tmp_path / "live.log").read_text()
        seen = []
        for _ in range(20):  # reads land in the middle of appends
            m = load_metrics(run)
            assert len(set(len(v) for v in m.train.values())) == 1
            assert len(set(len(v) for v in m.val.values())) == 1
            np.testing.assert_array_equal(m.train["step"], np.arange(m.n_train))
            seen.append(m.n_train)
            time.sleep(0.01)
        p_plot = tool("triad-plot", run, "--out", tmp_path / "live.png")
        p_list = tool("triad-sweep", "list", sweep)
        assert scaling.main([str(run), "--out", str(tmp_path / "scaling.png")]) == 0
        assert sweep_report.main([str(sweep), "--out-dir", str(tmp_path / "report"),
                                  "--no-plot"]) == 0
        later = load_metrics(run).n_train
        assert proc.poll() is None, "the run ended early: " + \
            (tmp_path / "live.log").read_text()[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)  # finishes the step, checkpoints, exits 0
        proc.wait(timeout=60)
        log.close()
    assert p_plot.returncode == 0, p_plot.stderr
    assert (tmp_path / "live.png").read_bytes()[:8] == PNG
    assert seen == sorted(seen) and later > seen[0], (seen, later)
    assert "| live-000 | train.lr=1e-3 | running |" in p_list.stdout, p_list.stdout
    out = capsys.readouterr().out
    assert "| live-000 " in out  # the scaling table
    import pandas as pd

    row = pd.read_csv(tmp_path / "report" / "live.csv").iloc[0]
    assert row["status"] == "running" and row["steps_total"] == 1000000
    assert seen[0] <= row["steps_done"] <= later and row["tokens_per_sec"] > 0
    assert np.isfinite(row["final_val_loss"]) and np.isfinite(row["best_val_loss"])
    # stopped by the signal before its last step: still not finished
    assert proc.returncode == 0
    assert "| live-000 | train.lr=1e-3 | running |" in tool("triad-sweep", "list", sweep).stdout


# ---- the package ----------------------------------------------------------------------------

def test_entry_points_are_declared_and_resolve():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    meta = tomllib.loads((REPO / "analysis" / "pyproject.toml").read_text())
    scripts = meta["project"]["scripts"]
    assert set(scripts) == set(MODULES)
    deps = " ".join(meta["project"]["dependencies"])
    for d in ("h5py", "numpy", "pandas", "matplotlib"):
        assert d in deps
    import importlib

    for name, target in scripts.items():
        mod, func = target.split(":")
        assert mod == MODULES[name][0]
        assert callable(getattr(importlib.import_module(mod), func))


def test_wheel_from_analysis_installs_working_commands(tmp_path):
    """`pip install ./analysis` as a fresh clone would: a wheel built from a copy of the
    directory, installed into a target folder, its console scripts run from elsewhere."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    shutil.copytree(REPO / "analysis", src, ignore=shutil.ignore_patterns(
        "__pycache__", "build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    p = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", str(src), "-w",
                              str(tmp_path / "dist")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    (whl,) = (tmp_path / "dist").glob("triad_analysis-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        ep = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for mod in ("__init__", "metrics", "plot_curves", "plot_timeline", "inspect_checkpoint",
                "sweep", "sweep_report", "scaling", "convert_weights", "cli", "hdf5_files",
                "tables", "figures",
                "weights_dims", "weights_safetensors", "weights_hf_families", "weights_hf_layout",
                "weights_hf_import", "weights_hf_export", "weights_llmc", "weights_triad"):
        assert f"analysis/{mod}.py" in names
    for name in MODULES:
        assert f"{name} = " in ep
    target = tmp_path / "site"
    p = subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(target),
                              str(whl)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    env = dict(os.environ, PYTHONPATH=str(target), MPLBACKEND="Agg")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    sweep = REPO / "inputs" / "sweeps" / "quickstart-lr.ini"
    r = subprocess.run([str(target / "bin" / "triad-sweep"), "list", str(sweep)],
                       capture_output=True, text=True, env=env, cwd=elsewhere, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "quickstart-lr-002" in r.stdout and "train.lr=3e-3" in r.stdout
    r = subprocess.run([sys.executable, "-c", "import analysis; print(analysis.__file__)"],
                       capture_output=True, text=True, env=env, cwd=elsewhere)
    assert r.stdout.strip().startswith(str(target))
    for name in MODULES:
        r = subprocess.run([str(target / "bin" / name), "--help"], capture_output=True,
                           text=True, env=env, cwd=elsewhere, timeout=60)
        assert r.returncode == 0 and "usage:" in r.stdout, (name, r.stderr)


def test_console_scripts_in_the_venv():
    """jobs/setup.sh installed the package: the commands are in .venv/bin."""
    missing = [n for n in MODULES if not (VENV_BIN / n).exists()]
    if missing and os.environ.get("CI"):
        pytest.fail(f"not installed in .venv/bin: {missing} (jobs/setup.sh)")
    if missing:
        pytest.skip(f"not installed in .venv/bin: {missing} (run jobs/setup.sh)")
    for name in MODULES:
        r = subprocess.run([str(VENV_BIN / name), "--help"], capture_output=True, text=True,
                           timeout=60, env=dict(os.environ, MPLBACKEND="Agg"))
        assert r.returncode == 0 and f"usage: {name}" in r.stdout, (name, r.stderr)


def test_a_pipe_given_for_a_file_is_refused_not_read(tmp_path):
    """A named pipe (or a device) in place of an input file: reading it waits for ever. Every
    tool refuses it by name before it opens it (these hung: import, the tokenizer readers, the
    plots of metrics groups, the timeline's CSV, the sweep file)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    png = tmp_path / "x.png"
    for cmd in (("triad-convert", "import", fifo, tmp_path / "o.h5"),
                ("triad-convert", "tokenizer", "--meta-llama3", fifo, tmp_path / "o1"),
                ("triad-convert", "tokenizer", "--sentencepiece", fifo, tmp_path / "o2"),
                ("triad-plot-norms", fifo, "--out", png), ("triad-timeline", fifo, "--out", png),
                ("triad-sweep", "list", fifo)):
        assert_clean_failure(tool(*cmd, timeout=30), fifo, "not a regular file"), cmd


def test_model_attributes_of_the_wrong_kind_are_refused_by_name(runs, tmp_path):
    """/model attributes are names where triad writes names (and rope_scaling a known one) and
    finite numbers elsewhere: a NaN epsilon was exported into a config.json that is no JSON, an
    unknown rope scaling exported as none, a text where a count stands failed with Python's
    own error. triad-ckpt names each, and the export refuses the file."""
    good = runs["r1"] / "ckpt" / "step_00000012.h5"
    for attr, value, needle in (("norm_eps", np.nan, "norm_eps = nan, not a finite number"),
                                ("rope_scaling", "weird", "rope_scaling = 'weird', expected one"),
                                ("n_kv_head", "x", "n_kv_head = 'x', not a finite number"),
                                ("norm", 3, "norm = 3")):
        bad = tmp_path / f"bad_{attr}.h5"
        shutil.copy(good, bad)
        with h5py.File(bad, "r+") as f:
            f["model"].attrs[attr] = value
        p = tool("triad-ckpt", bad)
        assert p.returncode == 1 and needle in p.stdout, p.stdout + p.stderr
        assert_clean_failure(tool("triad-convert", "export", bad, tmp_path / f"hf_{attr}", "--to",
                                  "hf", "--vocab", "none"), needle)
        assert not (tmp_path / f"hf_{attr}").exists()
