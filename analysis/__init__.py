"""Offline analysis of triad runs: training curves (metrics.h5) and checkpoints.

    python -m analysis.plot_curves RUN_DIR [RUN_DIR ...] --out curves.png
    python -m analysis.inspect_checkpoint RUN_DIR/ckpt/step_00000100.h5

File formats: DESIGN.md §5.
"""

from .metrics import Metrics, MetricsError, load_metrics

__all__ = ["Metrics", "MetricsError", "load_metrics"]
