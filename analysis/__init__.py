"""Offline analysis of triad runs: training curves (metrics.h5), sweeps, scaling, checkpoints.

Installed with `pip install ./analysis` (jobs/setup.sh does it into .venv), it provides

    triad-plot RUN... [--out curves.png] [--x tokens]     training curves, several runs overlaid
    triad-sweep {list,args,submit} SWEEP.ini ...           sweep expander (inputs/sweeps/*.ini)
    triad-sweep-report SWEEP.ini [--out-dir DIR]           one row per sweep point, CSV/MD/PNG
    triad-scaling RUN... [--out scaling.png]               throughput/efficiency vs rank count
    triad-ckpt CKPT [CKPT2]                                checkpoint contents, or a diff

and, without installing, `python -m analysis.plot_curves`, `python -m analysis.inspect_checkpoint`,
`python -m analysis.sweep`, `python -m analysis.sweep_report`, `python -m analysis.scaling`.
File formats: docs/formats.md; the tools: analysis/README.md.
"""

from . import hdf5_files  # noqa: F401  (sets HDF5_USE_FILE_LOCKING=FALSE before h5py loads)
from .cli import AnalysisError
from .metrics import Metrics, MetricsError, load_metrics

__all__ = ["AnalysisError", "Metrics", "MetricsError", "load_metrics"]
