"""The benchmark scripts (jobs/bench-*.sh) refuse bad command lines before building or running
anything: an unknown option, a missing or non-numeric count, out-of-range values. Exit status 2
and one line naming the script and the option."""

import subprocess

import pytest

from triad_run import REPO

CASES = [
    ("bench-cpu", ["--bogus"], "unknown option --bogus"),
    ("bench-cpu", ["--threads", "two"], "--threads needs a count"),
    ("bench-cpu", ["--steps", "2"], "--steps must be >= 3"),
    ("bench-cpu", ["--train.lr"], "--train.lr needs a value"),
    ("bench-cpu", ["--freeze"], "--freeze needs comma-separated globs"),
    ("bench-cpu", ["--dropout", "1.5"], "--dropout needs a probability in [0, 1)"),
    ("bench-cpu", ["--dropout"], "--dropout needs a probability in [0, 1)"),
    ("bench-plan", ["--bogus"], "unknown option --bogus"),
    ("bench-plan", ["--pp", "x"], "--pp needs a count"),
    ("bench-plan", ["--pp", "1"], "--pp must be >= 2"),
    ("bench-plan", ["--steps", "4"], "--steps must be >= 5"),
    ("bench-recompute", ["--bogus"], "unknown option --bogus"),
    ("bench-recompute", ["--steps", "2"], "--steps >= 3"),
    ("bench-generate", ["--bogus"], "unknown option --bogus"),
    ("bench-generate", ["--length", "0"], "must be >= 1"),
    ("bench-generate", ["--model", "missing.ini"], "missing.ini: no such file"),
    ("bench-choices", ["--bogus"], "unknown option --bogus"),
    ("bench-choices", ["--examples", "-3"], "must be >= 1"),
    ("bench-checkpoint", ["--bogus"], "unknown option --bogus"),
    ("bench-muon", ["--bogus"], "unknown option --bogus"),
    ("bench-muon", ["--steps", "2"], "--steps >= 3"),
    ("bench-muon", ["--model", "missing.ini"], "missing.ini: no such file"),
    ("bench-muon", ["--threads"], "--threads needs a value"),
    ("bench-checkpoint", ["--repeat", "0"], "--repeat must be >= 1"),
    ("bench-checkpoint", ["--ranks", "1 two"], "--ranks must be counts"),
    ("bench-zero", ["--bogus"], "unknown option --bogus"),
    ("bench-zero", ["--steps", "4"], "--steps must be >= 5"),
    ("bench-zero", ["--steps"], "--steps needs a count"),
    ("bench-zero", ["--train.lr"], "--train.lr needs a value"),
    ("bench-checkpoint-async", ["--bogus"], "unknown option --bogus"),
    ("bench-checkpoint-async", ["--every", "0"], "--every needs a count"),
    ("bench-checkpoint-async", ["--steps", "4", "--every", "4"], "--every must be < --steps"),
    ("bench-checkpoint-async", ["--train.lr"], "--train.lr needs a value"),
    # an option without its value
    ("bench-cpu", ["--threads"], "--threads needs a count"),
    ("bench-plan", ["--steps"], "--steps needs a count"),
    ("bench-recompute", ["--steps"], "--steps needs a value"),
    ("bench-generate", ["--length"], "--length needs a value"),
    ("bench-choices", ["--threads"], "--threads needs a value"),
    ("bench-checkpoint", ["--dir"], "--dir needs a value"),
]


@pytest.mark.parametrize("script,args,needle", CASES)
def test_bad_arguments_are_refused_up_front(script, args, needle):
    p = subprocess.run(["bash", str(REPO / "jobs" / f"{script}.sh"), *args], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert p.returncode == 2, p.stdout + p.stderr
    assert needle in p.stderr and p.stderr.startswith(f"{script}: "), p.stderr
    assert "Built target" not in p.stdout and "cmake" not in p.stdout.lower()


@pytest.mark.parametrize("script", ["bench-cpu", "bench-plan", "bench-recompute", "bench-generate",
                                    "bench-choices", "bench-checkpoint", "bench-muon",
                                    "bench-zero", "bench-checkpoint-async"])
def test_help(script):
    p = subprocess.run(["bash", str(REPO / "jobs" / f"{script}.sh"), "--help"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 0 and f"jobs/{script}.sh" in p.stdout, p.stdout + p.stderr
