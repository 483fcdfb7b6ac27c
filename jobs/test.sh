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
export TRIAD_BUILD_DIR="$PWD/build"
echo "== ctest"
# One test at a time: concurrent Open MPI singletons can race on their session directory,
# and the MPI suites oversubscribe the cores anyway. About four minutes on two cores.
ctest --test-dir build --output-on-failure
echo "== pytest"
.venv/bin/python -m pytest -q tests/python
echo "== all tests passed"
