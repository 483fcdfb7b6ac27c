#!/usr/bin/env bash
# The test command: set-up if needed, build, then every test (CTest: GoogleTest suites; pytest:
# tokenizer vs tiktoken, model vs PyTorch, CLI errors, resume, analysis, and the SLURM job
# scripts under a real one-node SLURM that the test starts and stops). CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs/setup.sh
jobs/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader
# mpirun's PMIx authenticates its ranks with munge when a munge socket exists (the SLURM tests
# start munged); a stale socket left by a munged that was killed makes every mpirun retry it for
# about 2 s. The ranks run on this one node: the native check is enough.
export PMIX_MCA_psec=native
# Waiting ranks yield the core instead of polling: the tests run several jobs of 2-4 ranks at once
# on few cores, and ranks spinning on their messages starved the ranks with work to do (four
# multi-rank pytest cases on 2 workers, 2 cores: 158 s polling, 24 s yielding). Open MPI yields
# by itself only where one mpirun oversubscribes the node.
export OMPI_MCA_mpi_yield_when_idle=1
# Idle OpenMP threads sleep instead of spinning (triad's CPU kernels and PyTorch's references both
# run OpenMP teams of 2 beside other test processes), and the Python references' BLAS runs on one
# thread (triad sets its own OpenBLAS to one thread). The Python tests on 2 cores, user time 14.3
# min before and 10.9 after, the suite 13.3 min and 11.6 (both while perf sampled a few minutes).
export OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1
export TRIAD_BUILD_DIR="$PWD/build"
workers=$(nproc 2>/dev/null || echo 2)
workers=$((workers < 2 ? 2 : workers > 4 ? 4 : workers))
echo "== ctest"
# Two tests or more at a time: the MPI suites one at a time, each taking two of the slots; the
# single-process suites that call MPI each take a private session directory
# (include/triad/core/mpi_session.h). About three minutes on two cores.
ctest --test-dir build --output-on-failure -j "$workers"
echo "== pytest"
# On pytest-xdist workers, a test file per worker at a time (the SLURM tests share one cluster):
# the runs leave the cores idle a third of the time when one at a time (process start-up, MPI
# ranks waiting on each other). Two workers on two cores, up to four on more. The slowest tests
# are listed last (the suite must keep inside CI's 30 minutes with the build).
.venv/bin/python -m pytest -q -n "$workers" --dist loadfile --durations=25 tests/python
echo "== all tests passed"
