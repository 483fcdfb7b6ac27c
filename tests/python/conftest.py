"""pytest configuration: put the repository root on sys.path so that `import analysis` works
from any working directory; and, under pytest-xdist (jobs/test.sh runs the suite on several
workers), give each worker its own Open MPI session directory."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    # An MPI program started without mpirun (a singleton) creates and, when it ends, removes its
    # job's session directory under a top directory shared by every Open MPI process of the user
    # (orte_tmpdir_base, default /tmp). Two singletons started at once by two workers can remove
    # that top directory under each other ("ORTE_ERROR_LOG ... session_dir.c"): each worker gets
    # its own: for its mpirun jobs above all (triad's singletons take a private directory of
    # their own, include/triad/core/mpi_session.h, except where this is set: a worker runs one
    # program at a time). Set before the test modules are imported, which copy os.environ.
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        base = Path(tempfile.mkdtemp(prefix=f"triad-ompi-{worker}-"))
        os.environ["OMPI_MCA_orte_tmpdir_base"] = str(base)
        config._triad_ompi_base = base


def pytest_unconfigure(config):
    base = getattr(config, "_triad_ompi_base", None)
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)
