"""triad-train on several ranks (mpirun): preemption, a rank killed while checkpointing, grids
that do not fit, sampling and generation across tensor/pipeline grids. The loss/weight
equivalence of grids is tests/mpi/test_data_parallel.cpp and tests/mpi/test_model_parallel.cpp."""
import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from triad_run import (ENV, REPO, VOCAB, assert_clean_error, catching_pids, exe, tiny_config,
                       tool, train, write_choice_file, write_loss_mask, write_shard)

MPIRUN = shutil.which("mpirun")
MPI_ENV = dict(ENV, OMP_NUM_THREADS="1", OMPI_MCA_pml="ob1", OMPI_MCA_btl="self,vader")


def mpirun(n, *args):
    assert MPIRUN, "mpirun not found"
    return [MPIRUN, "--oversubscribe", "-np", str(n), exe("triad-train"), *map(str, args)]


def run(n, *args, timeout=120):
    return subprocess.run(mpirun(n, *args), capture_output=True, text=True, env=MPI_ENV,
                          timeout=timeout)


def metrics(run_dir):
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        return f["train/step"][:], f["train/loss"][:]


def model(path):
    out = {}
    with h5py.File(path, "r") as f:
        f["model"].visititems(lambda n, d: out.__setitem__(n, d[:]) if isinstance(d, h5py.Dataset) else None)
    return out


def rank_pids(mpirun_pid):
    """The triad-train processes started by this mpirun."""
    out = subprocess.run(["pgrep", "-P", str(mpirun_pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.parametrize("n,args,needle", [
    (3, [], "train.batch_size"),                        # 8 sequences do not split over 3 ranks
    (3, ["--parallel.tp", "2"], "not a multiple"),       # 3 ranks cannot hold tp = 2
    (4, ["--parallel.tp", "4"], "must divide model.n_head"),  # 2 heads
    (4, ["--parallel.pp", "4"], "must not exceed model.n_layer"),  # 2 layers
    (2, ["--parallel.pp", "2", "--model.n_layer", "3"], "must be divisible"),
    (2, ["--parallel.pp", "2", "--parallel.schedule", "interleaved"], "parallel.virtual_stages"),
    (3, ["--parallel.cp", "3"], "divisible by 2 · parallel.cp"),  # 16 tokens in 6 pieces
    (2, ["--parallel.cp", "2", "--sample.length", "4"], "sample.length"),
    (2, ["--parallel.pp", "2", "--parallel.schedule", "zb-v"], "must be 2 for parallel.schedule = zb-v"),
    (2, ["--parallel.pp", "2", "--parallel.schedule", "zb-v", "--parallel.virtual_stages", "2"],
     "must be divisible"),  # 2 layers in 4 chunks
    (2, ["--data.reset_positions", "true"], "needs data.document_mask"),
    (2, ["--parallel.zero", "2", "--parallel.pp", "2"], "= 2 needs parallel.pp = 1"),
    (2, ["--parallel.zero", "4"], "must be 0, 1, 2 or 3"),
])
def test_grid_that_does_not_fit_fails_on_every_rank(tmp_path, n, args, needle):
    cfg = tiny_config(tmp_path)
    p = run(n, "--config", cfg, *args, timeout=60)  # a hang would time out
    assert p.returncode != 0
    assert needle in p.stderr, p.stderr
    assert p.stderr.count("triad-train: error") == 1, p.stderr  # one message, not one per rank


@pytest.mark.parametrize("n,grid", [
    (2, []),
    (4, ["--parallel.tp", 2, "--parallel.pp", 2, "--train.micro_batch_size", 2]),
    (2, ["--parallel.cp", 2]),  # context parallel: ZeRO-1 slices over the cp replicas
    (2, ["--checkpoint.async", "true"]),  # the preemption's save waited for before stopping
])
def test_preemption_on_one_rank_stops_all_and_resumes_bit_exactly(tmp_path, n, grid):
    # A constant LR makes the schedule independent of train.steps, so the interrupted run can be
    # launched "forever" and the uninterrupted one sized afterwards.
    common = ["--checkpoint.every", 0, "--eval.every", 0, "--parallel.zero", 1,
              "--train.schedule", "constant", "--train.warmup_steps", 0, *grid]
    pre = tiny_config(tmp_path, name="pre")
    proc = subprocess.Popen(mpirun(n, "--config", pre, "--train.steps", 10**6, *common),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=MPI_ENV)
    pids = catching_pids(lambda: rank_pids(proc.pid), n, signal.SIGUSR1)
    time.sleep(1)  # into training, mostly; a signal before the first step is honoured there too
    os.kill(pids[-1], signal.SIGUSR1)  # one rank only, as a scheduler's signal may arrive
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "preempted at step" in out, out
    step = int(out.split("preempted at step")[1].split()[0])
    assert (tmp_path / "runs" / "pre" / "ckpt" / f"step_{step:08d}.h5").exists()
    total = step + 15
    p = run(n, "--config", pre, "--train.steps", total, *common)  # --resume auto
    assert p.returncode == 0, p.stderr
    assert "resumed from" in p.stdout
    straight = tiny_config(tmp_path, name="straight")
    p = run(n, "--config", straight, "--train.steps", total, *common)
    assert p.returncode == 0, p.stderr
    s1, l1 = metrics(tmp_path / "runs" / "straight")
    s2, l2 = metrics(tmp_path / "runs" / "pre")
    assert list(s2) == list(range(total))
    assert np.array_equal(l1, l2)
    w1 = model(tmp_path / "runs" / "straight" / "ckpt" / f"step_{total:08d}.h5")
    w2 = model(tmp_path / "runs" / "pre" / "ckpt" / f"step_{total:08d}.h5")
    for k in w1:
        assert np.array_equal(w1[k], w2[k]), k


def test_a_rank_that_stops_ends_the_job_through_the_others_watchdogs(tmp_path):
    """run.hang_minutes: one rank stopped (SIGSTOP: a dead node, a hung kernel or file system)
    leaves the other waiting in a collective for ever; its watchdog ends the job with an error
    naming the rank and what it was doing, instead of holding the nodes to the job's limit."""
    cfg = tiny_config(tmp_path, name="hang")
    proc = subprocess.Popen(mpirun(2, "--config", cfg, "--train.steps", 10**6, "--eval.every", 0,
                                   "--checkpoint.every", 0, "--run.hang_minutes", 0.05),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=MPI_ENV)
    pids = catching_pids(lambda: rank_pids(proc.pid), 2, signal.SIGUSR1)
    try:
        time.sleep(1)  # into training
        os.kill(pids[-1], signal.SIGSTOP)
        out, err = proc.communicate(timeout=90)
    finally:
        for pid in pids:  # (mpirun kills its ranks, stopped ones included; in case it did not)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    assert "triad-train: error (rank 0): no progress for" in err, err
    assert "run.hang_minutes" in err and " of step " in err, err
    assert_clean_error(train("--config", cfg, "--run.hang_minutes", -1),
                       "run.hang_minutes", "must be a number of minutes >= 0")


def test_time_budget_stops_every_rank_with_a_checkpoint_and_resumes_bit_exactly(tmp_path):
    """run.max_minutes (Megatron's --exit-duration-in-mins): a budget of 0.6 s (by rank 0's
    clock) on a run of a million steps stops both ranks at the same step, past which the
    checkpoint is written, exit status 0; --resume auto continues it to the uninterrupted run's
    losses and weights bit for bit. A negative budget is refused."""
    common = ["--checkpoint.every", 0, "--eval.every", 0, "--parallel.zero", 1,
              "--train.schedule", "constant", "--train.warmup_steps", 0]
    cfg = tiny_config(tmp_path, name="budget")
    p = run(2, "--config", cfg, "--train.steps", 10**6, "--run.max_minutes", 0.01, *common)
    assert p.returncode == 0, p.stderr
    assert "run.max_minutes = 0.01 reached at step" in p.stdout, p.stdout
    step = int(p.stdout.split("reached at step")[1].split(":")[0])
    assert 1 <= step < 10**6
    assert (tmp_path / "runs" / "budget" / "ckpt" / f"step_{step:08d}.h5").exists()
    total = step + 5
    p = run(2, "--config", cfg, "--train.steps", total, *common)  # --resume auto, no budget
    assert p.returncode == 0 and "resumed from" in p.stdout, p.stderr
    straight = tiny_config(tmp_path, name="straight")
    p = run(2, "--config", straight, "--train.steps", total, *common)
    assert p.returncode == 0, p.stderr
    s1, l1 = metrics(tmp_path / "runs" / "straight")
    s2, l2 = metrics(tmp_path / "runs" / "budget")
    assert list(s2) == list(range(total)) and np.array_equal(l1, l2)
    p = run(2, "--config", cfg, "--run.max_minutes", -1)
    assert p.returncode != 0 and "run.max_minutes" in p.stderr, p.stderr


def test_best_checkpoint_is_kept_and_follows_the_validation_loss_across_a_resume(tmp_path):
    """checkpoint.best on 2 ranks (lr 1e-2 on random tokens: the validation loss is lowest at
    step 2 of the first 12 steps, then at step 22 of 24): ckpt/best names the checkpoint of the
    lowest loss of the evaluations after step 0, with that loss to the bit, and checkpoint.keep
    = 1 keeps it besides the latest; a run resumed from step 12 moves it to step 22 (and step 2's
    checkpoint goes), as the uninterrupted run does; a run rolled back before its best and a new
    run in that directory start without it (set aside with the checkpoints); a malformed ckpt/best and a run without validation
    data are refused by name."""
    common = ["--checkpoint.best", "true", "--checkpoint.every", 0, "--checkpoint.keep", 1,
              "--eval.every", 2, "--train.lr", 1e-2, "--train.schedule", "constant"]
    cfg = tiny_config(tmp_path, name="best")

    def best_and_curve(name):
        ckpt = tmp_path / "runs" / name / "ckpt"
        name_, loss = (ckpt / "best").read_text().split()
        with h5py.File(tmp_path / "runs" / name / "metrics.h5", "r") as f:
            steps, val = f["val/step"][:], f["val/loss"][:]
        return name_, float(loss), steps, val, sorted(p.name for p in ckpt.glob("step_*.h5"))

    p = run(2, "--config", cfg, "--train.steps", 12, *common)
    assert p.returncode == 0, p.stderr
    name, loss, steps, val, files = best_and_curve("best")
    i = 1 + int(np.argmin(val[1:]))  # (step 0's evaluation does not count)
    assert name == f"step_{steps[i]:08d}.h5" == "step_00000002.h5" and loss == val[i], (name, val)
    assert files == ["step_00000002.h5", "step_00000012.h5"], files
    p = run(2, "--config", cfg, "--train.steps", 24, *common)  # --resume auto
    assert p.returncode == 0 and "resumed from" in p.stdout, p.stderr
    name, loss, steps, val, files = best_and_curve("best")
    i = 1 + int(np.argmin(val[1:]))
    assert name == f"step_{steps[i]:08d}.h5" == "step_00000022.h5" and loss == val[i], (name, val)
    assert files == ["step_00000022.h5", "step_00000024.h5"], files
    straight = tiny_config(tmp_path, name="straight")
    milestones = [a if a != "--checkpoint.every" else None for a in common]
    i = milestones.index(None)
    milestones[i:i + 2] = ["--checkpoint.every", 4, "--checkpoint.keep_every", 4]
    p = run(2, "--config", straight, "--train.steps", 24, *milestones)
    assert p.returncode == 0, p.stderr
    assert best_and_curve("straight")[:2] == (name, loss)
    # Rolled back to step 8 (before the best, 22): that ckpt/best is another history's, set aside
    # with the checkpoints past step 8; the best of the new history is its own checkpoint at 10.
    back = tmp_path / "runs" / "straight" / "ckpt" / "step_00000008.h5"
    p = run(2, "--config", straight, "--train.steps", 10, "--resume", back, *common)
    assert p.returncode == 0 and "goes on from step 8" in p.stdout, p.stdout
    aside = tmp_path / "runs" / "straight" / "ckpt" / "superseded_1"
    assert (aside / "best").read_text().split("\n")[0] == name, list(aside.iterdir())
    assert (aside / name).exists()
    assert best_and_curve("straight")[0] == "step_00000010.h5"
    # A malformed ckpt/best, resuming: refused by its name.
    (tmp_path / "runs" / "best" / "ckpt" / "best").write_text("step_00000022.h5\nlow\n")
    p = run(2, "--config", cfg, "--train.steps", 26, *common)
    assert p.returncode != 0 and "ckpt/best" in p.stderr and "finite validation loss" in p.stderr
    # A new run in the directory: the old ckpt/best goes aside with its checkpoint.
    p = run(2, "--config", cfg, "--train.steps", 2, "--resume", "none", *common)
    assert p.returncode == 0 and "this run starts anew" in p.stdout, p.stderr
    assert (tmp_path / "runs" / "best" / "ckpt" / "superseded_1" / "best").exists()
    assert best_and_curve("best")[0] == "step_00000002.h5"
    p = run(1, "--config", cfg, "--checkpoint.best", "true", "--data.val", "")
    assert p.returncode != 0 and "checkpoint.best" in p.stderr and "data.val" in p.stderr


def plain_differs_and_resuming_is_exact(tmp_path, cfg, common):
    """Beside run "one" of cfg (8 steps) with the options `common` (evaluating every 4 steps,
    checkpointing every 3): run "plain" without them gives another curve, and run "resumed"
    with them from one's step-3 checkpoint gives one's last five losses bit for bit."""
    want = metrics(tmp_path / "runs" / "one")[1]
    p = run(1, "--config", cfg, "--eval.every", 4, "--run.name", "plain")
    assert p.returncode == 0, p.stderr
    plain = metrics(tmp_path / "runs" / "plain")[1]
    assert np.max(np.abs(plain - want) / want) > 1e-4, (plain, want)
    p = run(1, "--config", cfg, *common, "--run.name", "resumed", "--resume",
            tmp_path / "runs" / "one" / "ckpt" / "step_00000003.h5")
    assert p.returncode == 0, p.stderr
    steps, got = metrics(tmp_path / "runs" / "resumed")
    assert list(steps[-5:]) == [3, 4, 5, 6, 7], steps
    np.testing.assert_array_equal(got[-5:], want[-5:])


def assert_grids_follow_one_rank(tmp_path, cfg, common, pp_extra=(), more=()):
    """Tensor, pipeline (with pp_extra), data (ZeRO-1) and 2 x 2 grids of cfg with the options
    `common`, and the grids `more` ((name, ranks, options)): their train and val losses are run
    "one"'s within fp32 rounding."""
    def curves(name):
        with h5py.File(tmp_path / "runs" / name / "metrics.h5", "r") as f:
            return f["train/loss"][:], f["val/loss"][:]

    want, want_val = curves("one")
    for name, n, grid in [("tp", 2, ["--parallel.tp", 2]),
                          ("pp", 2, ["--parallel.pp", 2, "--train.micro_batch_size", 2,
                                     *pp_extra]),
                          ("dp", 2, ["--parallel.zero", 1]),
                          ("tppp", 4, ["--parallel.tp", 2, "--parallel.pp", 2,
                                       "--train.micro_batch_size", 2]), *more]:
        p = run(n, "--config", cfg, *common, *grid, "--run.name", name)
        assert p.returncode == 0, (name, p.stderr)
        got, got_val = curves(name)
        np.testing.assert_allclose(got, want, rtol=2e-6, err_msg=name)
        np.testing.assert_allclose(got_val, want_val, rtol=2e-6, err_msg=name)


def one_and_other(tmp_path, cfg, common, other, differ):
    """Run "one" of cfg with the options `common` on one rank, and "other" with `other` instead:
    their training curves part by more than `differ` (relative) somewhere."""
    for name, options in (("one", common), ("other", other)):
        p = run(1, "--config", cfg, *options, "--run.name", name)
        assert p.returncode == 0, p.stderr
    want, got = metrics(tmp_path / "runs" / "one")[1], metrics(tmp_path / "runs" / "other")[1]
    assert np.max(np.abs(got - want) / want) > differ, (got, want)


def test_loss_masks_give_the_same_curve_on_every_grid(tmp_path):
    """Loss masks on tensor (the vocabulary-parallel loss), pipeline, data (ZeRO-1) and 2 x 2
    grids: the one-rank curve within fp32 rounding (its values against PyTorch:
    test_reference_model.py). Half the targets masked, in runs, shuffled data."""
    cfg = tiny_config(tmp_path, name="one", train__steps=8, eval__every=4)
    rng = np.random.default_rng(3)
    for shard in sorted((tmp_path / "data").glob("*.bin")):
        n = int(np.frombuffer(shard.read_bytes()[:12], dtype="<i4")[2])
        write_loss_mask(shard, np.repeat(rng.integers(0, 2, n // 7 + 1), 7)[:n])
    common = ["--data.loss_mask", "require", "--eval.every", 4, "--checkpoint.every", 0]
    p = run(1, "--config", cfg, *common)
    assert p.returncode == 0, p.stderr
    assert "3 shard(s) with loss masks" not in p.stdout  # the train shards: 2
    assert "2 shard(s) with loss masks" in p.stdout, p.stdout
    assert_grids_follow_one_rank(tmp_path, cfg, common)


@pytest.mark.parametrize("n,grid", [(2, []), (4, ["--parallel.tp", 2, "--parallel.pp", 2,
                                                   "--train.micro_batch_size", 2])],
                         ids=["dp2", "tp2pp2"])
def test_bad_loss_masks_stop_every_rank(tmp_path, n, grid):
    """Loss masks that do not belong to their shard, a value other than 0 or 1 deep in a shard
    (read by whichever rank's batch reaches it, mid-run), and a missing mask under
    data.loss_mask = require: every rank stops with an error naming the file, never a hang."""
    # 80 steps of 8 sequences: a whole epoch of the 562 train sequences, so the bad value is read.
    cfg = tiny_config(tmp_path, name="bad", train__steps=80, eval__every=0, checkpoint__every=0)
    data = tmp_path / "data"
    shards = sorted(data.glob("*.bin"))
    sizes = {s: int(np.frombuffer(s.read_bytes()[:12], dtype="<i4")[2]) for s in shards}
    mask_of = {s: s.with_name(s.name + ".mask") for s in shards}

    def masks(short=None, bad_at=None):
        for s in shards:
            m = np.ones(sizes[s] - (1 if s == short else 0), np.uint8)
            if s == bad_at:
                m[sizes[s] * 2 // 3] = 7
            write_loss_mask(s, m)

    masks(short=shards[1])
    p = run(n, "--config", cfg, *grid, timeout=120)
    assert p.returncode != 0 and f"loss mask {mask_of[shards[1]]}" in p.stderr, p.stderr
    assert "not this shard's mask" in p.stderr, p.stderr
    masks(bad_at=shards[0])
    p = run(n, "--config", cfg, *grid, "--run.name", "late", timeout=120)
    assert p.returncode != 0 and f"loss mask {mask_of[shards[0]]}" in p.stderr, p.stderr
    assert "value 7" in p.stderr, p.stderr
    masks()
    mask_of[shards[2]].unlink()
    p = run(n, "--config", cfg, *grid, "--data.loss_mask", "require", "--run.name", "missing",
            timeout=120)
    assert p.returncode != 0 and f"loss mask {mask_of[shards[2]]}: missing" in p.stderr, p.stderr


@pytest.mark.parametrize("window,every,reset", [(0, 0, False), (5, 0, False), (5, 2, False),
                                                (0, 0, True)])
def test_document_masks_give_the_same_curve_on_every_grid(tmp_path, window, every, reset):
    """data.document_mask (and with it a sliding window of 5, model.sliding_window, in both
    layers or, model.full_attention_every = 2, in the first: the pipeline's second stage holds a
    full-attention layer; or positions that restart at every document, data.reset_positions) on
    tensor, pipeline (every stage masks its layers' attention with the micro-batch's documents),
    data (ZeRO-1) and 2 x 2 grids, with full recomputation on one: the one-rank curve within fp32
    rounding (its values against PyTorch: test_reference_model.py), which differs from the
    unmasked one (with reset positions: from the masked one without)."""
    cfg = tiny_config(tmp_path, name="one", train__steps=8, eval__every=4)
    rng = np.random.default_rng(4)
    for shard in sorted((tmp_path / "data").glob("*.bin")):
        tokens = np.frombuffer(shard.read_bytes()[1024:], dtype="<u2").astype(np.int64)
        tokens[rng.random(tokens.size) < 0.15] = 3  # documents of ~7 tokens, starting with 3
        write_shard(shard, tokens)
    masked = ["--data.document_mask", 3, "--model.sliding_window", window,
              "--model.full_attention_every", every, "--eval.every", 4, "--checkpoint.every", 0]
    common = masked + (["--data.reset_positions", "true"] if reset else [])
    p = run(1, "--config", cfg, *common)
    assert p.returncode == 0, p.stderr
    want = metrics(tmp_path / "runs" / "one")[1]
    other = masked if reset else ["--eval.every", 4, "--checkpoint.every", 0]
    p = run(1, "--config", cfg, *other, "--run.name", "plain")
    assert p.returncode == 0, p.stderr
    plain = metrics(tmp_path / "runs" / "plain")[1]  # random tokens: attention matters little
    assert np.max(np.abs(plain - want) / want) > 1e-4, (plain, want)
    # Reset positions: context parallelism too (each rank's two pieces at their documents'
    # positions), alone and with sequence parallelism.
    more = [("cp", 2, ["--parallel.cp", 2]),
            ("cpsp", 4, ["--parallel.cp", 2, "--parallel.tp", 2,
                         "--parallel.sequence_parallel", "true"])] if reset else []
    assert_grids_follow_one_rank(tmp_path, cfg, common, pp_extra=["--train.recompute", "full"],
                                 more=more)


def test_window_warmup_gives_the_same_curve_on_every_grid_and_resumes_exactly(tmp_path):
    """train.window_warmup (windows 2, 4, 6, 10, 12, 14, then the whole context of 16; the
    evaluation at step 4 keeps to step 4's window) on tensor, pipeline, data (ZeRO-1 and 3),
    context-parallel and 2 x 2 grids: the one-rank curve within fp32 rounding (its values against
    PyTorch: test_reference_model.py), which differs from the curve without the warmup; a run
    resumed at step 3 gives the uninterrupted run's losses bit for bit."""
    cfg = tiny_config(tmp_path, name="one", train__steps=8, eval__every=4)
    common = ["--train.window_warmup", "2, 6, 2", "--eval.every", 4, "--checkpoint.every", 3]
    p = run(1, "--config", cfg, *common)
    assert p.returncode == 0, p.stderr
    plain_differs_and_resuming_is_exact(tmp_path, cfg, common)
    assert_grids_follow_one_rank(tmp_path, cfg, common,
                                 more=[("cp", 2, ["--parallel.cp", 2]),
                                       ("zero3", 2, ["--parallel.zero", 3])])


def test_lion_gives_the_same_curve_on_every_grid_and_resumes_exactly(tmp_path):
    """optim.name = lion (its values against PyTorch: test_reference_model.py) on tensor,
    pipeline, data (ZeRO-1 and 3) and 2 x 2 grids: the one-rank curve within fp32 rounding, which
    differs from AdamW's; a run resumed at step 3 (its /optimizer/m) gives the uninterrupted
    run's losses bit for bit."""
    cfg = tiny_config(tmp_path, name="one", train__steps=8, eval__every=4)
    common = ["--optim.name", "lion", "--optim.beta2", 0.99, "--train.lr", 3e-4,
              "--optim.weight_decay", 1.0, "--eval.every", 4, "--checkpoint.every", 3]
    p = run(1, "--config", cfg, *common)
    assert p.returncode == 0, p.stderr
    plain_differs_and_resuming_is_exact(tmp_path, cfg, common)
    assert_grids_follow_one_rank(tmp_path, cfg, common,
                                 more=[("zero3", 2, ["--parallel.zero", 3])])


def test_fim_gives_the_same_curve_on_every_grid_and_resumes_exactly(tmp_path):
    """data.fim_rate (each sequence rearranged by a function of the seed and its index, its
    values against PyTorch: test_fim.py) with the fragments cut at a frequent token and the
    data shuffled: tensor, pipeline, data (ZeRO-1), context-parallel and 2 x 2 grids give the
    one-rank curve within fp32 rounding, which differs from the plain one; a run resumed at
    step 3 gives the uninterrupted run's losses bit for bit."""
    cfg = tiny_config(tmp_path, name="one", train__steps=8, eval__every=4, vocab=64)
    common = ["--data.fim_rate", 0.6, "--data.fim_tokens", "61, 62, 63", "--data.fim_split", 5,
              "--eval.every", 4, "--checkpoint.every", 3]
    p = run(1, "--config", cfg, *common)
    assert p.returncode == 0, p.stderr
    assert "| fill-in-the-middle 0.6 (SPM 0.5, fragments cut at 5) |" in p.stdout, p.stdout
    plain_differs_and_resuming_is_exact(tmp_path, cfg, common)
    assert_grids_follow_one_rank(tmp_path, cfg, common, more=[("cp", 2, ["--parallel.cp", 2])])


@pytest.mark.parametrize("args,needle", [
    (["--train.window_warmup", "0, 10"], "train.window_warmup"),
    (["--train.window_warmup", "16, 10"], "model.seq_len (16)"),
    (["--train.batch_rampup", "4, 4, 100"], "multiples of micro_batch_size · dp (4 · 2)"),
    (["--train.lr_by", "tokens"], "train.lr_by"),
    (["--train.lr_by", "sequences", "--train.warmup_steps", 2], "train.warmup_steps"),
    (["--train.sequences", -5], "train.sequences"),
    (["--train.window_warmup", "6, 10, 4"], "must be a multiple of MULTIPLE (4)"),
    (["--train.freeze", "h/7/*"], "pattern 'h/7/*' matches no tensor"),
    (["--train.freeze", "*"], "freezes every tensor"),
    (["--train.z_loss", -1], "train.z_loss"),
    (["--train.schedule", "wsd", "--train.decay_shape", "exp"], "train.decay_shape"),
    (["--model.logit_softcap", -30], "model.logit_softcap"),
    (["--model.attn_scale", 1000], "model.attn_scale"),
    (["--model.mup_base_width", 16, "--optim.name", "sgd"], "model.mup_base_width"),
    (["--run.fp8", "rowwise"], "run.fp8"),
    (["--train.activations_every", 2, "--data.val", ""], "train.activations_every")])
def test_bad_schedule_keys_stop_every_rank(tmp_path, args, needle):
    """The schedule, objective and parametrization keys (window warmup, batch ramp, lr by
    sequences, run length, frozen tensors, z-loss, decay shape, logit cap, attention scale, μP)
    refused on a 2-rank grid: one error naming the key, exit status 1 from mpirun, no hang."""
    cfg = tiny_config(tmp_path, name="bad", train__steps=4)
    p = run(2, "--config", cfg, *args, timeout=60)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert needle in p.stderr and "error" in p.stderr, p.stderr


@pytest.mark.parametrize("optim", ["adamw", "muon"])
def test_frozen_tensors_give_the_same_curve_on_every_grid(tmp_path, optim):
    """train.freeze (the embeddings and the whole first layer, whose backward is then left out,
    and the second layer's c_fc) on tensor, pipeline (the first stage's backward is all frozen),
    data (ZeRO-1, 2 and 3), 2 x 2 and dp 2 x pp 2 grids (the pipeline's all-reduce between the
    frozen extents), with AdamW and with Muon: the one-rank curve within
    fp32 rounding (its values against PyTorch: test_reference_model.py), and every grid's frozen
    tensors in its last checkpoint bit for bit the initial ones."""
    cfg = tiny_config(tmp_path, name="one", train__steps=6, eval__every=3)
    freeze = "wte/weight, wpe/weight, h/0/*, h/1/mlp/c_fc/*"
    common = ["--train.freeze", freeze, "--optim.name", optim, "--checkpoint.at_start", "true",
              "--checkpoint.every", 0, "--train.norms_every", 2]
    p = run(1, "--config", cfg, *common)
    assert p.returncode == 0, p.stderr
    assert "frozen (train.freeze): 16 tensors" in p.stdout, p.stdout
    # The per-layer gradient norms leave frozen tensors out (their weights' norms stay).
    with h5py.File(tmp_path / "runs" / "one" / "metrics.h5", "r") as f:
        n = {k: f["norms"][k][:] for k in f["norms"]}
    assert not n["grad_h0"].any() and not n["grad_wte"].any() and n["grad_h1"].all()
    assert n["weight_h0"].all() and n["weight_wte"].all()
    assert_grids_follow_one_rank(tmp_path, cfg, common,
                                 more=[("zero2", 2, ["--parallel.zero", 2]),
                                       ("zero3", 2, ["--parallel.zero", 3]),
                                       ("zb", 2, ["--parallel.pp", 2, "--parallel.schedule",
                                                  "zb-h1"]),
                                       ("dppp", 4, ["--parallel.pp", 2,
                                                    "--train.micro_batch_size", 2])])
    start = model(tmp_path / "runs" / "one" / "ckpt" / "step_00000000.h5")
    frozen = [n for n in start if n.startswith(("wte/", "wpe/", "h/0/", "h/1/mlp/c_fc/"))]
    assert len(frozen) == 16, frozen
    for run_name in ("one", "tp", "pp", "dp", "tppp", "zero2", "zero3", "zb", "dppp"):
        end = model(tmp_path / "runs" / run_name / "ckpt" / "step_00000006.h5")
        for n in frozen:
            np.testing.assert_array_equal(end[n], start[n], err_msg=f"{run_name} {n}")
        assert not np.array_equal(end["h/1/attn/c_attn/weight"], start["h/1/attn/c_attn/weight"])


def test_olmo_norms_and_clamp_give_the_same_curve_on_every_grid(tmp_path):
    """model.norm_weight = false (OLMo's non-parametric norms: ln_1, ln_2 and ln_f learn no
    weight or bias) with model.clip_qkv = 0.15 (OLMo-1.7's clamp of q, k and v, cutting about a
    third of them here) on tensor with sequence parallelism (c_attn's columns clamped where they
    are), pipeline, data (ZeRO-1) and 2 x 2 grids: the one-rank curve within fp32 rounding (its
    values against PyTorch and transformers' OLMo: test_reference_model.py,
    test_convert_weights.py), unlike the curve with learned norms and no clamp; every grid's
    norms still ones and zeros at the end. A checkpoint of it does not resume with learned norms."""
    cfg = tiny_config(tmp_path, name="one", train__steps=6, eval__every=3)
    common = ["--model.norm_weight", "false", "--model.clip_qkv", 0.15, "--checkpoint.every", 0]
    one_and_other(tmp_path, cfg, common, ["--checkpoint.every", 0], 1e-5)
    p = run(1, "--config", cfg, *common, "--run.name", "note", "--train.steps", 1)
    assert "frozen (model.norm_weight = false): 10 tensors" in p.stdout, p.stdout
    assert_grids_follow_one_rank(tmp_path, cfg, common,
                                 more=[("sp", 2, ["--parallel.tp", 2,
                                                  "--parallel.sequence_parallel", "true"])])
    for run_name in ("one", "tp", "pp", "dp", "tppp", "sp"):
        end = model(tmp_path / "runs" / run_name / "ckpt" / "step_00000006.h5")
        norms = [n for n in end if n.startswith(("ln_f/", "h/0/ln_", "h/1/ln_"))]
        assert len(norms) == 10, norms
        for n in norms:
            assert np.all(end[n] == (1 if n.endswith("weight") else 0)), (run_name, n)
    p = run(1, "--config", cfg, "--model.clip_qkv", 0.15, "--checkpoint.every", 0, "--run.name",
            "learned", "--init-from", tmp_path / "runs" / "one" / "ckpt" / "step_00000006.h5")
    assert p.returncode != 0 and "without learned norm weights" in p.stderr, p.stderr
    p = run(1, "--config", cfg, "--model.norm_weight", "false", "--checkpoint.every", 0,
            "--run.name", "unclamped", "--init-from",
            tmp_path / "runs" / "one" / "ckpt" / "step_00000006.h5")
    assert p.returncode != 0 and "clamped at 0.15" in p.stderr, p.stderr


def test_olmo2_blocks_give_the_same_curve_on_every_grid(tmp_path):
    """OLMo-2's blocks (model.pre_norm = false with the branch norms, QK-norm over all heads) on
    tensor, pipeline, data (ZeRO-1, 2 and 3: each layer's weights gathered from its first tensor,
    c_attn's, as it has no ln_1) and 2 x 2 grids: the one-rank curve within fp32 rounding (its
    values against PyTorch and transformers' OLMo-2: test_reference_model.py,
    test_convert_weights.py), which differs from the same blocks' with norms before the
    branches too."""
    cfg = tiny_config(tmp_path, name="one", train__steps=6, eval__every=3)
    common = ["--model.pre_norm", "false", "--model.branch_norm", "true", "--model.norm",
              "rmsnorm", "--model.qk_norm", "true", "--model.qk_norm_full", "true",
              "--checkpoint.every", 0]
    one_and_other(tmp_path, cfg, common, [*common[2:], "--model.pre_norm", "true"], 1e-5)
    assert_grids_follow_one_rank(tmp_path, cfg, common,
                                 more=[("zero2", 2, ["--parallel.zero", 2]),
                                       ("zero3", 2, ["--parallel.zero", 3])])


def test_mup_gives_the_same_curve_on_every_grid(tmp_path):
    """μP (model.mup_base_width = 8: m = 4) on tensor, pipeline, data (ZeRO-1, 2 and 3: the
    hidden matrices' learning rate in each slice's update runs) and 2 x 2 grids: the one-rank
    curve within fp32 rounding (its values against PyTorch: test_reference_model.py), which
    differs from the standard parametrization's."""
    cfg = tiny_config(tmp_path, name="one", train__steps=6, eval__every=3)
    common = ["--model.mup_base_width", 8, "--checkpoint.every", 0]
    one_and_other(tmp_path, cfg, common, ["--checkpoint.every", 0], 1e-5)  # μP against SP
    assert_grids_follow_one_rank(tmp_path, cfg, common,
                                 more=[("zero2", 2, ["--parallel.zero", 2]),
                                       ("zero3", 2, ["--parallel.zero", 3])])


def test_embedding_rates_and_decay_schedules_give_the_same_curve_on_every_grid(tmp_path):
    """optim.embedding_lr (10 times train.lr), optim.decay_embeddings = false and a cosine
    optim.weight_decay_schedule on tensor, pipeline (the last stage's copy of the tied wte at the
    embedding's rate and decay too), data (ZeRO-1, 2, 3: the rates and decays in each slice's
    update runs) and 2 x 2 grids: the one-rank curve within fp32 rounding (its values against
    PyTorch: test_reference_model.py), which differs from the plain one; an untied head's
    optim.head_lr on the pipeline's last stage and in ZeRO-1's slices too."""
    cfg = tiny_config(tmp_path, name="one", train__steps=6, eval__every=3)
    common = ["--optim.embedding_lr", 0.03, "--optim.decay_embeddings", "false",
              "--optim.weight_decay_schedule", "cosine", "--optim.weight_decay_end", 1.0,
              "--checkpoint.every", 0]
    one_and_other(tmp_path, cfg, common, ["--checkpoint.every", 0], 1e-4)
    assert_grids_follow_one_rank(tmp_path, cfg, common,
                                 more=[("zero2", 2, ["--parallel.zero", 2]),
                                       ("zero3", 2, ["--parallel.zero", 3])])
    untied = ["--model.tie_embeddings", "false", "--optim.head_lr", 3e-4, *common]
    p = run(1, "--config", cfg, *untied, "--run.name", "untied")
    assert p.returncode == 0, p.stderr
    assert ("embedding lr 0.03 | head lr 0.0003 | weight decay 0.1 to 1 (cosine) | no weight "
            "decay on the embeddings") in p.stdout, p.stdout
    want = metrics(tmp_path / "runs" / "untied")[1]
    for name, n, grid in [("untied-pp", 2, ["--parallel.pp", 2, "--train.micro_batch_size", 2]),
                          ("untied-zero1", 2, ["--parallel.zero", 1])]:
        p = run(n, "--config", cfg, *untied, *grid, "--run.name", name)
        assert p.returncode == 0, (name, p.stderr)
        np.testing.assert_allclose(metrics(tmp_path / "runs" / name)[1], want, rtol=2e-6,
                                   err_msg=name)


def test_partial_rotary_gives_the_same_curve_on_every_grid(tmp_path):
    """Partial rotary (model.rotary_dim = 8 of each head's 16 values; its math against PyTorch:
    test_reference_model.py) on tensor, pipeline, data, 2 x 2 and context-parallel grids: the
    one-rank curve within fp32 rounding, another than the whole heads' rotation. Its checkpoint
    records rotary_dim, and a config that disagrees is refused; a count that is odd, wider than
    the head, or without rope is refused by name."""
    cfg = tiny_config(tmp_path, name="one", train__steps=6, eval__every=3,
                      model__position="rope", model__norm="rmsnorm", checkpoint__every=6)
    common = ["--model.rotary_dim", 8]
    # Against the whole heads' rotation. (A young model's loss depends little on positions:
    # apart by more than the grids' 2e-6.)
    one_and_other(tmp_path, cfg, common, ["--checkpoint.every", 0], 5e-6)
    assert_grids_follow_one_rank(tmp_path, cfg, [*common, "--checkpoint.every", 0],
                                 more=[("cp", 2, ["--parallel.cp", 2])])
    ckpt = tmp_path / "runs" / "one" / "ckpt" / "step_00000006.h5"
    with h5py.File(ckpt, "r") as f:
        assert int(f["model"].attrs["rotary_dim"]) == 8
    assert tool("triad-ckpt", ckpt).returncode == 0
    p = train("--config", cfg, "--init-from", ckpt, "--run.name", "other")
    assert p.returncode != 0 and "model.rotary_dim = 0" in p.stdout + p.stderr, p.stderr
    # All 16 of a head's values is plain rope: no attribute, and it resumes as rotary_dim 0.
    p = train("--config", cfg, "--model.rotary_dim", 16, "--train.steps", 2,
              "--checkpoint.every", 2, "--run.name", "all16")
    assert p.returncode == 0, p.stderr
    ckpt16 = tmp_path / "runs" / "all16" / "ckpt" / "step_00000002.h5"
    with h5py.File(ckpt16, "r") as f:
        assert "rotary_dim" not in f["model"].attrs
    p = train("--config", cfg, "--init-from", ckpt16, "--train.steps", 1, "--run.name", "as0")
    assert p.returncode == 0, p.stderr
    for value, needle in ((3, "model.rotary_dim must be even"), (18, "[0, 16]")):
        p = train("--config", cfg, "--model.rotary_dim", value, "--run.name", "bad")
        assert p.returncode != 0 and needle in p.stderr, p.stderr
    p = train("--config", cfg, "--model.position", "learned", "--model.rotary_dim", 8,
              "--run.name", "bad")
    assert p.returncode != 0 and "model.rotary_dim needs model.position = rope" in p.stderr


def dropout_follows_one_rank_on_every_grid(tmp_path, kind):
    """train.<kind>_dropout = 0.2 on 8 steps of a tiny model (evaluating every 4, checkpointing
    every 3): the start line names it; another curve than without it, but the same first
    evaluation (which never drops); a resume at step 3 bit for bit; tensor (with and without
    sequence parallelism), pipeline (1F1B with full recomputation, ZB-H1), data (ZeRO-1, 3),
    context-parallel and 2 x 2 grids within fp32 rounding of one rank. Returns (cfg, options)."""
    cfg = tiny_config(tmp_path, name="one", train__steps=8, eval__every=4)
    common = [f"--train.{kind}_dropout", 0.2, "--eval.every", 4, "--checkpoint.every", 3]
    p = run(1, "--config", cfg, *common)
    assert p.returncode == 0, p.stderr
    assert f"| {kind} dropout 0.2 |" in p.stdout, p.stdout
    plain_differs_and_resuming_is_exact(tmp_path, cfg, common)
    with h5py.File(tmp_path / "runs" / "one" / "metrics.h5", "r") as a, \
            h5py.File(tmp_path / "runs" / "plain" / "metrics.h5", "r") as b:
        assert a["val/loss"][0] == b["val/loss"][0]  # before any update: evaluation drops nothing
    pp = ["--parallel.pp", 2, "--train.micro_batch_size", 2]
    assert_grids_follow_one_rank(
        tmp_path, cfg, common, pp_extra=["--train.recompute", "full"],
        more=[("tpsp", 2, ["--parallel.tp", 2, "--parallel.sequence_parallel", "true"]),
              ("cp", 2, ["--parallel.cp", 2]), ("zero3", 2, ["--parallel.zero", 3]),
              ("zb", 2, [*pp, "--parallel.schedule", "zb-h1"])])
    return cfg, common


def test_hidden_dropout_gives_the_same_curve_on_every_grid_and_resumes_exactly(tmp_path):
    """train.hidden_dropout = 0.2: the masks are a function of the seed and of each value's
    sequence (its place in the data order), position and column, so tensor (with and without
    sequence parallelism), pipeline (full recomputation: the backward pass drops again; and the
    zero-bubble schedule's split backward), data (ZeRO-1 and 3), context-parallel and 2 x 2
    grids, and a parallel-residual model on a tensor-parallel grid, give the one-rank curve
    within fp32 rounding (its values against PyTorch:
    test_reference_model.py); it differs from the curve without dropout while the first
    evaluation (which never drops) is the same to the bit; a run resumed at step 3 gives the
    uninterrupted run's losses bit for bit."""
    cfg, common = dropout_follows_one_rank_on_every_grid(tmp_path, "hidden")
    # Parallel residual: one mask for the branches' sum, which tensor parallelism reduces as one.
    par = ["--model.parallel_residual", "true"]
    for name, n, grid in (("par1", 1, []), ("par_tp", 2, ["--parallel.tp", 2])):
        p = run(n, "--config", cfg, *common, *par, *grid, "--run.name", name)
        assert p.returncode == 0, (name, p.stderr)
    np.testing.assert_allclose(metrics(tmp_path / "runs" / "par_tp")[1],
                               metrics(tmp_path / "runs" / "par1")[1], rtol=2e-6)


def test_attention_dropout_gives_the_same_curve_on_every_grid_and_resumes_exactly(tmp_path):
    """train.attention_dropout = 0.2: the masks are a function of the seed, the sequence, the
    query's and the key's positions, the layer and the global head, so tensor (each rank its
    heads; with sequence parallelism too), pipeline (full recomputation: the backward pass drops
    again; and the zero-bubble schedule's split backward), data (ZeRO-1 and 3), context-parallel
    (each rank's query ranges against the gathered keys) and 2 x 2 grids, grouped-query
    attention on a tensor-parallel grid, and bf16 on tensor and context-parallel grids give the
    one-rank curve within rounding (its values against PyTorch: test_reference_model.py); it
    differs from the curve without dropout while the first evaluation (which never drops) is the
    same to the bit; a run resumed at step 3 gives the uninterrupted run's losses bit for bit."""
    cfg, common = dropout_follows_one_rank_on_every_grid(tmp_path, "attention")
    # Grouped-query attention (query heads apart on each rank): one rank against tensor- and
    # context-parallel grids.
    def curve(name):
        return metrics(tmp_path / "runs" / name)[1]

    def rel(a, b):
        return float(np.max(np.abs(curve(a) - curve(b)) / np.abs(curve(b))))

    gqa = ["--model.n_head", 4, "--model.n_kv_head", 2]
    tp, cp = ["--parallel.tp", 2], ["--parallel.cp", 2]
    bf16, half = ["--run.precision", "bf16"], ["--train.attention_dropout", 0.5]
    at_02 = common[:2]  # common: the dropout of 0.2, then the rest
    for name, n, options in (("gqa1", 1, at_02 + gqa), ("gqa_tp", 2, at_02 + gqa + tp),
                             ("gqa_cp", 2, at_02 + gqa + cp), ("bf16", 1, bf16 + half),
                             ("bf16_tp", 2, bf16 + half + tp), ("bf16_cp", 2, bf16 + half + cp),
                             ("fp32_half", 1, half), ("bf16_plain", 1, bf16)):
        p = run(n, "--config", cfg, *common[2:], *options, "--run.name", name)
        assert p.returncode == 0, (name, p.stderr)
    for name in ("gqa_tp", "gqa_cp"):
        np.testing.assert_allclose(curve(name), curve("gqa1"), rtol=2e-6, err_msg=name)
    # bf16 (p = 0.5; the probabilities dropped in fp32): its grids and fp32 agree with it to
    # bf16's rounding, far below what the dropout itself moves the curve by.
    moved = rel("bf16_plain", "bf16")
    noise = max(rel(name, "bf16") for name in ("bf16_tp", "bf16_cp", "fp32_half"))
    assert noise < 1e-3 and 5 * noise < moved, (noise, moved)


def test_z_loss_gives_the_same_curve_on_every_grid(tmp_path):
    """train.z_loss = 0.05 on tensor (the vocabulary-parallel loss: log Z from the group's row
    statistics), pipeline, data (ZeRO-1, 3), context-parallel and 2 x 2 grids: the one-rank
    curves of the loss and of /train/z_loss within fp32 rounding (their values against PyTorch:
    test_reference_model.py), which differ from the curve without it."""
    def z_curve(name):
        with h5py.File(tmp_path / "runs" / name / "metrics.h5", "r") as f:
            return f["train/z_loss"][:]

    cfg = tiny_config(tmp_path, name="one", train__steps=6, eval__every=3)
    common = ["--train.z_loss", 0.05, "--checkpoint.every", 0]
    p = run(1, "--config", cfg, *common)
    assert p.returncode == 0, p.stderr
    assert "| z-loss " in p.stdout, p.stdout
    want = metrics(tmp_path / "runs" / "one")[1]
    p = run(1, "--config", cfg, "--checkpoint.every", 0, "--run.name", "plain")
    assert p.returncode == 0, p.stderr
    plain = metrics(tmp_path / "runs" / "plain")[1]
    assert np.max(np.abs(plain - want) / want) > 1e-4, (plain, want)
    assert np.all(np.isnan(z_curve("plain")))
    more = [("cp", 2, ["--parallel.cp", 2]), ("zero3", 2, ["--parallel.zero", 3])]
    assert_grids_follow_one_rank(tmp_path, cfg, common, more=more)
    for name in ("tp", "pp", "dp", "tppp", "cp", "zero3"):
        np.testing.assert_allclose(z_curve(name), z_curve("one"), rtol=2e-6, err_msg=name)


@pytest.mark.parametrize("background", [False, True])
def test_rank_killed_during_checkpoint_leaves_previous_one_loadable(tmp_path, background):
    # A model whose checkpoint takes long enough to be caught in the middle of writing (by the
    # training thread, or with checkpoint.async by the thread beside it).
    cfg = tiny_config(tmp_path, name="kill", model__n_embd=256, model__n_head=4,
                      model__n_layer=4, model__vocab_size=512)
    proc = subprocess.Popen(mpirun(2, "--config", cfg, "--train.steps", 100000,
                                   "--checkpoint.every", 1, "--checkpoint.keep", 3,
                                   "--eval.every", 0, "--checkpoint.async",
                                   str(background).lower()),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=MPI_ENV)
    ckpt = tmp_path / "runs" / "kill" / "ckpt"
    deadline = time.time() + 60
    # Wait until two checkpoints are complete and the next one is being written (the .partial
    # seen then: it may be renamed before a second look).
    partial = []
    while time.time() < deadline and not (len(list(ckpt.glob("step_*.h5"))) >= 2
                                          and (partial := list(ckpt.glob("*.partial")))):
        time.sleep(0.005)
    assert time.time() < deadline, "no checkpoint was being written"
    pids = rank_pids(proc.pid)
    os.kill(pids[-1], signal.SIGKILL)
    try:
        proc.communicate(timeout=60)  # the job must end: no rank waits forever
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the job did not end after a rank was killed")
    assert proc.returncode != 0
    # The newest complete checkpoint loads; an unfinished one is never picked.
    p = train("--config", cfg, "--train.steps", 0, "--eval-only")
    assert p.returncode == 0, p.stderr
    assert "val loss" in p.stdout
    loaded = p.stdout.split("checkpoint ")[1].split()[0]
    assert not loaded.endswith(".partial") and os.path.basename(loaded) != partial[0].name


@pytest.mark.parametrize("n,grid", [
    (2, ["--parallel.zero", 1]),
    (4, ["--parallel.tp", 2, "--parallel.pp", 2, "--train.micro_batch_size", 2]),
])
def test_background_checkpoints_are_the_foreground_ones(tmp_path, n, grid):
    """checkpoint.async: every checkpoint (each step's, the last kept 3 as usual) holds the bits
    the training thread's save writes, while training runs on unchanged; resuming from one
    continues exactly."""
    common = ["--train.steps", 6, "--checkpoint.every", 1, "--checkpoint.keep", 3,
              "--eval.every", 3, *grid]
    runs = {}
    for background in (False, True):
        name = "async" if background else "sync"
        cfg = tiny_config(tmp_path, name=name)
        p = run(n, "--config", cfg, *common, "--checkpoint.async", str(background).lower())
        assert p.returncode == 0, p.stderr
        if background:
            assert "writing in the background" in p.stdout and \
                "written in the background" in p.stdout, p.stdout
        runs[background] = tmp_path / "runs" / name
    s1, l1 = metrics(runs[False])
    s2, l2 = metrics(runs[True])
    assert list(s1) == list(s2) and np.array_equal(l1, l2)
    files = sorted(p.name for p in (runs[False] / "ckpt").glob("step_*.h5"))
    assert files == sorted(p.name for p in (runs[True] / "ckpt").glob("step_*.h5"))
    assert files == [f"step_{s:08d}.h5" for s in (4, 5, 6)]
    assert (runs[True] / "ckpt" / "latest").read_text().strip() == files[-1]
    for f in files:
        with h5py.File(runs[False] / "ckpt" / f, "r") as a, \
                h5py.File(runs[True] / "ckpt" / f, "r") as b:
            got = {}
            b.visititems(lambda k, d: got.__setitem__(k, d) if isinstance(d, h5py.Dataset)
                         else None)
            want = {}
            a.visititems(lambda k, d: want.__setitem__(k, d) if isinstance(d, h5py.Dataset)
                         else None)
            assert sorted(got) == sorted(want), f
            for k in want:
                assert np.array_equal(want[k][()], got[k][()]), (f, k)
                assert want[k].attrs["checksum"] == got[k].attrs["checksum"], (f, k)
            assert dict(a["model"].attrs) == dict(b["model"].attrs)
            for k in ("step", "tokens_seen", "next_sequence", "epoch", "complete"):
                assert a.attrs[k] == b.attrs[k], (f, k)
    # Resumed from the background save of step 4: steps 5 and 6 as the uninterrupted run.
    cfg = tiny_config(tmp_path, name="resumed")
    p = run(n, "--config", cfg, *common, "--checkpoint.async", "true",
            "--resume", runs[True] / "ckpt" / "step_00000004.h5")
    assert p.returncode == 0, p.stderr
    s3, l3 = metrics(tmp_path / "runs" / "resumed")
    assert list(s3) == [4, 5] and np.array_equal(l3, l2[4:])


def test_init_from_across_rank_counts(tmp_path):
    cfg = tiny_config(tmp_path, name="one")
    assert train("--config", cfg, "--train.steps", 5).returncode == 0
    ckpt = tmp_path / "runs" / "one" / "ckpt" / "step_00000005.h5"
    p = run(4, "--config", cfg, "--init-from", ckpt, "--run.name", "four", "--train.steps", 3,
            "--parallel.zero", 1, "--train.micro_batch_size", 2)
    assert p.returncode == 0, p.stderr
    assert "initialized weights from" in p.stdout
    steps, _ = metrics(tmp_path / "runs" / "four")
    assert list(steps) == [0, 1, 2]


def test_resume_auto_falls_back_past_a_damaged_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, name="fb")
    p = run(2, "--config", cfg, "--train.steps", 10, "--checkpoint.every", 5,
            "--parallel.zero", 1)
    assert p.returncode == 0, p.stderr
    ckpt = tmp_path / "runs" / "fb" / "ckpt"
    newest = ckpt / "step_00000010.h5"
    data = bytearray(newest.read_bytes())
    with h5py.File(newest, "r") as f:
        offset = f["model/h/0/mlp/c_fc/weight"].id.get_offset()
    data[offset:offset + 64] = bytes(64)  # damage the data of one tensor
    newest.write_bytes(bytes(data))
    p = run(2, "--config", cfg, "--train.steps", 12, "--checkpoint.every", 5,
            "--parallel.zero", 1)
    assert p.returncode == 0, p.stderr
    assert "step_00000005.h5 at step 5" in p.stdout, p.stdout + p.stderr


def test_sampling_and_generation_across_tensor_and_pipeline_grids(tmp_path):
    """In-training samples are drawn collectively by the tensor and pipeline ranks: greedy
    samples of a 2×2 (tp × pp) run equal the single rank's; its checkpoint generates on one."""
    common = ["--train.steps", 4, "--eval.every", 2, "--sample.length", 12, "--sample.top_k", 1,
              "--data.vocab", VOCAB, "--train.micro_batch_size", 2]
    cfg = tiny_config(tmp_path, name="g1", vocab=50257)
    assert train("--config", cfg, *common).returncode == 0
    p = run(4, "--config", cfg, "--run.name", "g4", "--parallel.tp", 2, "--parallel.pp", 2,
            *common)
    assert p.returncode == 0, p.stderr
    one = (tmp_path / "runs" / "g1" / "samples.txt").read_text()
    four = (tmp_path / "runs" / "g4" / "samples.txt").read_text()
    assert one.count("=== step") == 3 and one == four
    ckpt = tmp_path / "runs" / "g4" / "ckpt" / "step_00000004.h5"
    g = subprocess.run([exe("triad-generate"), "--checkpoint", str(ckpt), "--vocab", str(VOCAB),
                        "--prompt", "Hello", "--length", "5"], capture_output=True, text=True,
                       env=ENV, timeout=120)
    assert g.returncode == 0, g.stderr
    assert g.stdout.startswith("Hello")
    # ZeRO-3 on two data-parallel ranks: both sample (the weight gathers are collective over
    # them), rank 0 writes the single rank's greedy samples.
    p = run(2, "--config", cfg, "--run.name", "g2z3", "--parallel.zero", 3, *common)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "runs" / "g2z3" / "samples.txt").read_text() == one
    # The 2×2 run's weights equal the single rank's to fp32 rounding.
    w1 = model(tmp_path / "runs" / "g1" / "ckpt" / "step_00000004.h5")
    w4 = model(ckpt)
    assert set(w1) == set(w4)
    for k in w1:  # wte is padded to 50304 rows at tp = 1, 50432 at tp = 2
        a, b = (w4[k][:50257], w1[k][:50257]) if k == "wte/weight" else (w4[k], w1[k])
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-4, err_msg=k)
    # sample.repetition_penalty and sample.presence_penalty: the last evaluation's sample is
    # triad-generate's with the same options from the checkpoint of that step (tested against
    # transformers in test_generate.py), and not the unpenalized one.
    penalties = ["--sample.repetition_penalty", 3, "--sample.presence_penalty", 2]
    assert train("--config", cfg, "--run.name", "g1p", *common, *penalties).returncode == 0
    last = (tmp_path / "runs" / "g1p" / "samples.txt").read_text().split("=== step 4 ===\n")[1]
    g = subprocess.run([exe("triad-generate"), "--checkpoint",
                        str(tmp_path / "runs" / "g1p" / "ckpt" / "step_00000004.h5"), "--vocab",
                        str(VOCAB), "--prompt", "", "--length", "12", "--top-k", "1",
                        "--repetition-penalty", "3", "--presence-penalty", "2"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert g.returncode == 0, g.stderr
    assert last == g.stdout + "\n" and last != one.split("=== step 4 ===\n")[1], (last, one)


@pytest.mark.parametrize("schedule,v", [("1f1b", 1), ("zb-h1", 1), ("zb-h1", 2), ("zb-v", 2)])
def test_profile_step_writes_the_pipeline_trace_and_triad_timeline_draws_it(tmp_path, schedule,
                                                                            v):
    """--train.profile_step N: every stage's actions of step N, measured, then the schedule
    simulated with their mean times; each stage runs its actions one after another, and
    triad-timeline draws both panels."""
    cfg = tiny_config(tmp_path, name="trace", model__n_layer=4)
    p = run(2, "--config", cfg, "--train.steps", 3, "--train.profile_step", 2,
            "--parallel.pp", 2, "--parallel.schedule", schedule, "--parallel.virtual_stages", v,
            "--train.micro_batch_size", 2)  # 4 micro-batches per step
    assert p.returncode == 0, p.stderr
    path = tmp_path / "runs" / "trace" / "pipeline_trace_step_00000002.csv"
    assert f"pipeline trace of step 2 ({path}): measured" in p.stdout, p.stdout
    rows = list(csv.DictReader(open(path)))
    kinds = "FBW" if schedule.startswith("zb-") else "FB"
    for source in ("measured", "simulated"):
        for stage in (0, 1):
            mine = [r for r in rows if r["source"] == source and int(r["stage"]) == stage]
            # every (kind, micro-batch, chunk) once
            assert sorted((r["kind"], r["microbatch"], r["chunk"]) for r in mine) == sorted(
                (k, str(mb), str(c)) for k in kinds for mb in range(4) for c in range(v))
            ends = [(float(r["start_ms"]), float(r["end_ms"])) for r in mine]
            assert all(s <= e for s, e in ends)
            assert all(a[1] <= b[0] + 1e-3 for a, b in zip(ends, ends[1:])), "overlapping"
            # B never before its forward; W never before its B
            at = {(r["kind"], r["microbatch"], r["chunk"]): float(r["start_ms"]) for r in mine}
            for (k, mb, c), t in at.items():
                if k == "B":
                    assert t >= at[("F", mb, c)]
                if k == "W":
                    assert t >= at[("B", mb, c)]
    out = tmp_path / "timeline.png"
    t = subprocess.run([sys.executable, "-m", "analysis.plot_timeline", str(path), "--out",
                        str(out)], capture_output=True, text=True, env=ENV, cwd=REPO,
                       timeout=120)
    assert t.returncode == 0, t.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_step_needs_a_pipeline_and_triad_timeline_refuses_foreign_files(tmp_path):
    cfg = tiny_config(tmp_path, name="one")
    p = train("--config", cfg, "--train.profile_step", 2)
    assert p.returncode != 0
    assert "train.profile_step" in p.stderr and "parallel.pp > 1" in p.stderr, p.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    t = subprocess.run([sys.executable, "-m", "analysis.plot_timeline", str(bad)],
                       capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)
    assert t.returncode == 1
    assert t.stderr.strip().endswith("expected source,stage,kind,microbatch,chunk,start_ms,end_ms)")
    assert "Traceback" not in t.stderr


def test_layer_norms_are_the_same_on_every_grid(tmp_path):
    """train.norms_every on tensor, pipeline and ZeRO data-parallel grids: each layer's
    gradient and weight norms equal one rank's (every parameter counted once: not the tensor-
    parallel replicas of the LayerNorms, nor the last stage's copy of the tied wte)."""
    cfg = tiny_config(tmp_path, name="one", train__norms_every=2, train__steps=6,
                      eval__every=0, data__shuffle="false")

    def norms(name):
        with h5py.File(tmp_path / "runs" / name / "metrics.h5", "r") as f:
            return {k: f["norms"][k][:] for k in f["norms"]}

    p = run(1, "--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    want = norms("one")
    assert list(want["step"]) == [0, 2, 4]
    assert {"grad_wte", "grad_wpe", "grad_h0", "grad_h1", "grad_ln_f", "weight_h1"} <= set(want)
    for n, grid in ((4, ["--parallel.tp", 2, "--parallel.zero", 1]),
                    (2, ["--parallel.pp", 2]),
                    (4, ["--parallel.tp", 2, "--parallel.pp", 2])):
        name = f"g{n}_" + "_".join(map(str, grid[::2])).replace("--parallel.", "")
        p = run(n, "--config", cfg, "--run.name", name, *grid)
        assert p.returncode == 0, p.stdout + p.stderr
        got = norms(name)
        assert set(got) == set(want), name
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=2e-5, err_msg=f"{name} {k}")
    # triad-plot-norms draws them (and says plainly when a run has none).
    out = tmp_path / "norms.png"
    p = tool("triad-plot-norms", tmp_path / "runs" / "one", "--out", out)
    assert p.returncode == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p.stderr
    plain = tiny_config(tmp_path, name="plain", train__steps=2)
    assert train("--config", plain).returncode == 0
    p = tool("triad-plot-norms", tmp_path / "runs" / "plain", "--out", out)
    assert p.returncode == 1 and "no /norms group" in p.stderr and "train.norms_every" in p.stderr


def moving_average(path):
    """A checkpoint's /optimizer/ema (optim.ema_decay), by tensor name."""
    out = {}
    with h5py.File(path, "r") as f:
        f["optimizer/ema"].visititems(
            lambda n, d: out.__setitem__(n, d[:]) if isinstance(d, h5py.Dataset) else None)
    return out


def test_weight_moving_average_is_the_same_on_every_grid_and_resumes_exactly(tmp_path):
    """optim.ema_decay (its values against PyTorch: test_reference_model.py): the last
    checkpoint's /optimizer/ema on tensor, pipeline, data (ZeRO-1, 2 and 3) and 2 x 2 grids and
    with the experts of a mixture on their own ranks (ZeRO-1, ep 2) is one rank's within fp32
    rounding; resumed at step 3 it ends as the uninterrupted run's bit for bit; resumed from a
    checkpoint that has none, it starts from that checkpoint's weights."""
    cfg = tiny_config(tmp_path, name="one", train__steps=8, eval__every=4)
    common = ["--optim.ema_decay", 0.75, "--checkpoint.every", 3]
    last = lambda name: tmp_path / "runs" / name / "ckpt" / "step_00000008.h5"  # noqa: E731
    moe = ["--model.moe_experts", 4, "--model.moe_top_k", 2, "--model.mlp_hidden", 64]
    for name, n, grid in [("one", 1, []), ("tp", 2, ["--parallel.tp", 2]),
                          ("pp", 2, ["--parallel.pp", 2, "--train.micro_batch_size", 2]),
                          ("z1", 2, ["--parallel.zero", 1]), ("z2", 2, ["--parallel.zero", 2]),
                          ("z3", 2, ["--parallel.zero", 3]),
                          ("tppp", 4, ["--parallel.tp", 2, "--parallel.pp", 2,
                                       "--train.micro_batch_size", 2]),
                          ("moe", 1, moe), ("moe_ep", 2, [*moe, "--parallel.ep", 2,
                                                           "--parallel.zero", 1])]:
        p = run(n, "--config", cfg, *common, *grid, "--run.name", name)
        assert p.returncode == 0, (name, p.stderr)
    want, weights = moving_average(last("one")), model(last("one"))
    assert sorted(want) == sorted(weights)
    assert max(np.abs(want[k] - weights[k]).max() for k in want) > 1e-3  # it lags the weights
    for name in ("tp", "pp", "z1", "z2", "z3", "tppp"):
        got = moving_average(last(name))
        assert sorted(got) == sorted(want), name
        for k in want:
            np.testing.assert_allclose(got[k][:512], want[k][:512], rtol=0, atol=2e-5,
                                       err_msg=f"{name} {k}")
    # (The mixture's weights themselves part more on that grid: the average may not part more.)
    got, one = moving_average(last("moe_ep")), moving_average(last("moe"))
    w_got, w_one = model(last("moe_ep")), model(last("moe"))
    assert any("experts" in k for k in one) and sorted(got) == sorted(one)
    for k in one:
        apart = np.abs(w_got[k] - w_one[k]).max()
        assert np.abs(got[k] - one[k]).max() <= 2 * apart + 2e-6, (k, apart)
    p = run(1, "--config", cfg, *common, "--run.name", "resumed", "--resume",
            tmp_path / "runs" / "one" / "ckpt" / "step_00000003.h5")
    assert p.returncode == 0, p.stderr
    got = moving_average(last("resumed"))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # No average in the checkpoint: one starts from its weights (said so), and differs from the
    # uninterrupted run's.
    p = run(1, "--config", cfg, "--checkpoint.every", 3, "--run.name", "plain")
    assert p.returncode == 0, p.stderr
    p = run(1, "--config", cfg, *common, "--run.name", "late", "--resume",
            tmp_path / "runs" / "plain" / "ckpt" / "step_00000003.h5")
    assert p.returncode == 0 and "holds no moving average of the weights" in p.stdout, p.stdout
    late = moving_average(last("late"))
    assert max(np.abs(late[k] - want[k]).max() for k in want) > 1e-4


def test_moving_average_evaluation_leaves_training_bit_for_bit(tmp_path):
    """eval.ema: every evaluation is also run with the moving average of the weights (/val_ema
    and /val_ema_sets of metrics.h5, "ema" scores on the eval line) and the weights are put back:
    the training and validation losses are those of the same run without it, bit for bit, in bf16
    on a pipeline x data grid (ZeRO-1: the bf16 copy gathered, the tied embedding sent as bf16)
    and with a mixture's experts on their own ranks under ZeRO-3 (packed experts, layers
    gathered) and ZeRO-1 (the experts' slice of the buffer, which spans dense tensors too); the
    last scores (data.val, a set of eval.sets, eval.choices' accuracy and ending loss) are
    --eval-only --from-ema's on that step's checkpoint, on the same grid; resumed at step 3
    (ZeRO-1 with experts: the checkpoint gives the experts' average their tensors alone), the
    scores are the uninterrupted run's. (Against PyTorch's average: test_reference_model.py.)"""
    choices = write_choice_file(tmp_path / "choices.bin", 512)
    cfg = tiny_config(tmp_path, name="ema", train__steps=8, eval__every=4, run__precision="bf16",
                      optim__ema_decay=0.75, checkpoint__every=3, eval__choices=choices,
                      eval__sets=f"again={tmp_path / 'data' / 'train_001.bin'}")
    moe = ["--model.moe_experts", 4, "--model.moe_top_k", 2, "--model.mlp_hidden", 64]
    for name, n, grid in [("z1pp", 4, ["--parallel.pp", 2, "--parallel.zero", 1,
                                       "--train.micro_batch_size", 2]),
                          ("moe_z3", 2, [*moe, "--parallel.ep", 2, "--parallel.zero", 3]),
                          ("moe_z1", 2, [*moe, "--parallel.ep", 2, "--parallel.zero", 1])]:
        curves = {}
        for scored in ("true", "false"):
            p = run(n, "--config", cfg, *grid, "--eval.ema", scored, "--run.name", name + scored)
            assert p.returncode == 0, (name, p.stderr)
            with h5py.File(tmp_path / "runs" / (name + scored) / "metrics.h5", "r") as f:
                curves[scored] = {k: f[k][:] for k in ("train/loss", "val/loss",
                                                       "val/choice_accuracy",
                                                       "val_sets/again/loss")}
                if scored == "true":
                    steps, average = f["val_ema/step"][:], f["val_ema/loss"][:]
                    again = f["val_ema_sets/again/loss"][:]
                    np.testing.assert_array_equal(f["val_ema_sets/again/step"][:], steps)
                    right = f["val_ema/choice_accuracy"][:]
                else:
                    assert "val_ema" not in f and "val_ema_sets" not in f
        for k in curves["true"]:
            np.testing.assert_array_equal(curves["true"][k], curves["false"][k], err_msg=name)
        np.testing.assert_array_equal(steps, [0, 4, 8])
        val = curves["true"]["val/loss"]
        assert average[0] == val[0] and abs(average[2] - val[2]) > 1e-4, (name, average, val)
        assert abs(again[2] - average[2]) > 1e-4, (name, again, average)  # (another file)
        ckpt = tmp_path / "runs" / (name + "true") / "ckpt" / "step_00000008.h5"
        p = run(n, "--config", cfg, *grid, "--eval-only", "--resume", ckpt, "--from-ema")
        assert p.returncode == 0, (name, p.stderr)
        assert f"val loss {average[2]:.6f}" in p.stdout, (name, average, p.stdout)
        assert f"again loss {again[2]:.6f}" in p.stdout, (name, again, p.stdout)
        assert f"choice accuracy {right[2]:.4f}" in p.stdout, (name, right, p.stdout)
        ending_loss = p.stdout.split("ending loss ")[1].split(")")[0]
        line = [ln for ln in (tmp_path / "runs" / (name + "true") / "log.txt").read_text()
                .splitlines() if ln.startswith("eval step 8")]
        assert line and f"ema val loss {average[2]:.4f}" in line[0], line
        assert f"ema again loss {again[2]:.4f}" in line[0], line
        assert f"ema choice accuracy {right[2]:.4f}" in line[0], line
        assert line[0].split("ema choice accuracy")[1].split("ending loss ")[1].startswith(
            ending_loss), (line, ending_loss)
        if name == "moe_z1":
            p = run(n, "--config", cfg, *grid, "--eval.ema", "true", "--run.name", "resumed",
                    "--resume", tmp_path / "runs" / (name + "true") / "ckpt" / "step_00000003.h5")
            assert p.returncode == 0, p.stderr
            with h5py.File(tmp_path / "runs" / "resumed" / "metrics.h5", "r") as f:
                np.testing.assert_array_equal(f["val_ema/step"][:], [4, 8])
                np.testing.assert_array_equal(f["val_ema/loss"][:], average[1:])
                np.testing.assert_array_equal(f["val_ema_sets/again/loss"][:], again[1:])
                np.testing.assert_array_equal(f["val_ema/choice_accuracy"][:], right[1:])
    # eval.choices alone, scored with kept keys and values (eval.choice_mode = cached): the
    # average's scores are --from-ema's (the cache the weights' scoring left is not reused).
    p = train("--config", cfg, "--run.name", "choices", "--eval.ema", "true", "--eval.sequences",
              0, "--eval.sets", "", "--eval.choice_mode", "cached")
    assert p.returncode == 0, p.stderr
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("eval step 8")][0]
    ckpt = tmp_path / "runs" / "choices" / "ckpt" / "step_00000008.h5"
    p = train("--config", cfg, "--eval-only", "--resume", ckpt, "--from-ema", "--eval.sequences",
              0, "--eval.sets", "", "--eval.choice_mode", "cached")
    assert p.returncode == 0, p.stderr
    ending_loss = p.stdout.split("ending loss ")[1].split(")")[0]
    assert line.split("| ema choice accuracy")[1].split("ending loss ")[1].startswith(
        ending_loss), (line, ending_loss)
    # It needs the average and something to score.
    for extra, needle in [(["--optim.ema_decay", 0], "eval.ema needs optim.ema_decay > 0"),
                          (["--eval.sequences", 0, "--eval.choices", ""],
                           "eval.ema needs something to score")]:
        assert_clean_error(train("--config", cfg, "--eval.ema", "true", *extra), needle)
