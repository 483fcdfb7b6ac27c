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
    out = subprocess.run(["scontrol", "show", "job", str(job)], capture_output=True, text=True,
                         env=env).stdout
    state = re.search(r"JobState=(\S+)", out)
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
