"""The SLURM workflow against a real SLURM (Debian's slurm-wlm, one node on this machine,
started by jobs/slurm/local-cluster.sh): the training job script, a requeue in the middle of a
run, and a sweep array with a re-submission of the point that did not finish. Not skipped where
SLURM cannot start: the test fails with the daemons' logs."""
import os
import re
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from triad_run import ENV, REPO, exe, tiny_config

CLUSTER = REPO / "jobs" / "slurm" / "local-cluster.sh"
SLURM_DIR = Path(os.environ.get("TRIAD_SLURM_DIR", "/tmp/triad-slurm"))


@pytest.fixture(scope="module")
def slurm():
    env = dict(ENV, TRIAD_SLURM_DIR=str(SLURM_DIR))
    p = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, f"SLURM did not start:\n{p.stdout}\n{p.stderr}"
    env["SLURM_CONF"] = str(SLURM_DIR / "slurm.conf")
    env["TRIAD_ROOT"] = str(REPO)
    env["TRIAD_TRAIN"] = exe("triad-train")
    yield env
    subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
    subprocess.run([str(CLUSTER), "stop"], env=env, capture_output=True, timeout=120)


def sh(env, *args, timeout=60):
    p = subprocess.run(list(map(str, args)), capture_output=True, text=True, env=env,
                       timeout=timeout)
    assert p.returncode == 0, f"{args}: {p.stdout}\n{p.stderr}"
    return p.stdout


def job_state(env, job):
    # scontrol answers nothing now and then while the machine is loaded (the controller's reply
    # timed out): asked again, for up to 10 s, before "UNKNOWN".
    deadline = time.time() + 10
    while True:
        out = subprocess.run(["scontrol", "show", "job", str(job)], capture_output=True,
                             text=True, env=env, timeout=30).stdout
        state = re.search(r"JobState=(\S+)", out)
        if state or time.time() > deadline:
            break
        time.sleep(0.5)
    restarts = re.search(r"Restarts=(\d+)", out)
    return (state.group(1) if state else "UNKNOWN", int(restarts.group(1)) if restarts else 0)


def wait_for(env, jobs, states=("COMPLETED",), timeout=240):
    """Waits until every job is in a final state; returns their states."""
    deadline = time.time() + timeout
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
    while time.time() < deadline:
        got = {j: job_state(env, j)[0] for j in jobs}
        if all(s in final for s in got.values()):
            return got
        time.sleep(0.5)
    pytest.fail(f"jobs {jobs} did not finish in {timeout} s: {got}\n"
                + (SLURM_DIR / "slurmctld.log").read_text()[-3000:])


def wait_gone(env, job, timeout=240):
    """Waits until no task of (array) job `job` is pending or running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", str(job)], capture_output=True, text=True,
                             env=env).stdout
        if not out.strip():
            return
        time.sleep(0.5)
    pytest.fail(f"job {job} did not finish in {timeout} s: {out}")


def train_metrics(run):
    with h5py.File(run / "metrics.h5", "r") as f:
        return f["train/step"][:], f["train/loss"][:]


def test_train_job_requeued_mid_run_resumes(slurm, tmp_path):
    steps = 1500
    cfg = tiny_config(tmp_path, name="job", train__steps=steps, checkpoint__every=50,
                      checkpoint__keep=3, eval__every=500, train__schedule="constant",
                      train__warmup_steps=0)
    job = sh(slurm, "sbatch", "--parsable", f"--chdir={tmp_path}",
             "--export=ALL,TRIAD_RUN_DIR=" + str(tmp_path / "runs"),
             REPO / "jobs" / "slurm" / "train.sbatch", cfg).strip()
    run = tmp_path / "runs" / f"triad-{job}"
    # Requeue once the run is under way: it has written a checkpoint and is still running.
    deadline = time.time() + 120
    while time.time() < deadline and not list((run / "ckpt").glob("step_*.h5")):
        time.sleep(0.2)
    assert job_state(slurm, job)[0] == "RUNNING", job_state(slurm, job)
    sh(slurm, "scontrol", "requeue", job)
    # A requeued job becomes eligible after a delay; start it now, as an operator would.
    deadline = time.time() + 60
    while time.time() < deadline and job_state(slurm, job)[0] != "PENDING":
        time.sleep(0.2)
    sh(slurm, "scontrol", "update", f"jobid={job}", "StartTime=now")
    assert wait_for(slurm, [job])[job] == "COMPLETED"
    assert job_state(slurm, job)[1] == 1  # restarted once
    log = (tmp_path / f"triad-{job}.out").read_text()
    assert "(restart 1)" in log and "resumed from" in log, log[-3000:]
    # SIGTERM from the requeue: the ranks finished their step and checkpointed it.
    preempted_at = int(re.search(r"preempted at step (\d+)", log).group(1))
    resumed_at = int(re.search(r"resumed from \S+ at step (\d+)", log).group(1))
    assert 0 < resumed_at == preempted_at < steps
    # The metrics continue from the checkpoint: every step once, in order.
    s, loss = train_metrics(run)
    assert list(s) == list(range(steps)), (s[:5], len(s))
    assert np.all(np.isfinite(loss))
    assert (run / "ckpt" / f"step_{steps:08d}.h5").exists()
    with h5py.File(run / "ckpt" / f"step_{steps:08d}.h5", "r") as f:
        assert f.attrs["complete"] == 1 and f.attrs["step"] == steps


def test_sweep_array_and_resubmission_of_the_unfinished_point(slurm, tmp_path):
    sweep_tool = REPO / ".venv" / "bin" / "triad-sweep"
    assert sweep_tool.exists(), "triad-sweep is not installed (jobs/setup.sh)"
    base = tiny_config(tmp_path, name="base", train__steps=30, checkpoint__every=10,
                       eval__every=10)
    sweep = tmp_path / "sweep.ini"
    sweep.write_text(f"""[sweep]
name = lr
base = {base}
mode = cartesian
max_parallel = 1
run_dir = {tmp_path / "runs"}
[values]
train.lr = 1e-3, 2e-3, 3e-3
""")
    line = sh(slurm, sweep_tool, "submit", sweep).strip().splitlines()[-1]
    assert re.search(r"sbatch --array=0-2%1 ", line), line
    args = line.split()
    assert args[0] == "sbatch"
    # Point 1 fails: cancelled while it waits for its turn (%1 runs the points one by one).
    job = sh(slurm, "sbatch", "--parsable", f"--chdir={tmp_path}", *args[1:]).strip()
    sh(slurm, "scancel", f"{job}_1")
    wait_gone(slurm, job)
    # (A task cancelled while pending leaves no job record: the run directories tell.)
    assert job_state(slurm, f"{job}_0")[0] == "COMPLETED"
    assert job_state(slurm, f"{job}_2")[0] == "COMPLETED"
    runs = tmp_path / "runs"
    done = {p: (runs / f"lr-{p:03d}" / "ckpt" / "step_00000030.h5").exists() for p in range(3)}
    assert done == {0: True, 1: False, 2: True}
    before = {p: (runs / f"lr-{p:03d}" / "metrics.h5").stat().st_mtime_ns for p in (0, 2)}
    # Re-submitting runs only the missing point.
    line = sh(slurm, sweep_tool, "submit", sweep).strip().splitlines()[-1]
    assert re.search(r"sbatch --array=1%1 ", line), line
    job2 = sh(slurm, "sbatch", "--parsable", f"--chdir={tmp_path}", *line.split()[1:]).strip()
    wait_gone(slurm, job2)
    assert job_state(slurm, f"{job2}_1")[0] == "COMPLETED"
    assert (runs / "lr-001" / "ckpt" / "step_00000030.h5").exists()
    assert {p: (runs / f"lr-{p:03d}" / "metrics.h5").stat().st_mtime_ns for p in (0, 2)} == before
    # Each point trained with its own learning rate.
    for p, lr in enumerate((1e-3, 2e-3, 3e-3)):
        with h5py.File(runs / f"lr-{p:03d}" / "metrics.h5", "r") as f:
            assert np.isclose(f["train/lr"][:].max(), lr, rtol=1e-6)
    out = sh(slurm, sweep_tool, "submit", sweep)
    assert "sbatch" not in out  # nothing left to run


def test_train_job_with_the_mpirun_launcher(slurm, tmp_path):
    """TRIAD_LAUNCHER=mpirun: Open MPI takes the ranks from the SLURM allocation."""
    cfg = tiny_config(tmp_path, name="mpi", train__steps=20, checkpoint__every=10)
    job = sh(slurm, "sbatch", "--parsable", f"--chdir={tmp_path}", "--job-name=viampirun",
             "--export=ALL,TRIAD_LAUNCHER=mpirun,TRIAD_RUN_DIR=" + str(tmp_path / "runs"),
             REPO / "jobs" / "slurm" / "train.sbatch", cfg).strip()
    assert wait_for(slurm, [job])[job] == "COMPLETED"
    log = (tmp_path / f"viampirun-{job}.out").read_text()
    assert "mpirun" in log and "dp=2 pp=1 tp=1" in log, log[-2000:]
    s, _ = train_metrics(tmp_path / "runs" / f"viampirun-{job}")
    assert list(s) == list(range(20))


def test_a_finished_run_with_its_own_checkpoint_dir_is_not_requeued(tmp_path):
    """launch.sh requeues a job whose run stopped before its last step: it looked for the last
    checkpoint in <run>/ckpt only, so a run with checkpoint.dir set was requeued for ever
    (srun and scontrol stand-ins here: no cluster needed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n'
                                  'exec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$*" >> {tmp_path}/scontrol.log\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    cfg = tiny_config(tmp_path, train__steps=4, checkpoint__every=2, eval__every=0,
                      checkpoint__dir=str(tmp_path / "own_ckpt"))
    env = dict(ENV, PATH=f"{bin_dir}:{ENV['PATH']}", SLURM_JOB_ID="77", TRIAD_ROOT=str(REPO),
               TRIAD_TRAIN=exe("triad-train"))
    script = (f"source {REPO}/jobs/slurm/launch.sh; triad_launch --config {cfg} "
              f"--run.dir {tmp_path}/runs --run.name job-77")
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp_path / "own_ckpt" / "latest").read_text() == "step_00000004.h5\n"
    assert "requeueing" not in p.stdout and not (tmp_path / "scontrol.log").exists(), p.stdout
