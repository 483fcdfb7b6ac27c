"""Plot the validation loss at each position of the context (eval.loss_by_position).

    triad-plot-positions runs/long --out positions.png
    triad-plot-positions runs/long --set books --out books.png   (eval.sets' "books")
    python -m analysis.plot_positions ...        (the same, without installing the package)

The argument is a run directory (holding metrics.h5) or a metrics.h5 file whose /val_positions
group eval.loss_by_position wrote: at each evaluation, data.val's mean loss at each position
0 .. seq_len-1 of the sequence; with --set NAME, /val_set_positions/NAME, the same of eval.sets'
set NAME. One curve per evaluation (a few of them, evenly spaced over the
run, the last always), loss against the position on a logarithmic axis (position 0 at 1), so
that what the context adds shows where it is added: a model that uses its context has a loss
falling with the position; one trained past its context length shows where it stops helping.
Positions where no target counted (NaN) are left out of the curves. Prints the path written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .cli import plot_run_main  # noqa: E402
from .figures import save_figure  # noqa: E402
from .metrics import (MetricsError, load_group, open_with_group,  # noqa: E402
                      resolve_metrics_path)

MAX_CURVES = 6


def load_position_losses(p, set_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(steps [rows], losses [rows, seq_len]) of a run's /val_positions group, or with set_name
    of /val_set_positions/<set_name> (eval.sets)."""
    path = resolve_metrics_path(p)
    group = "val_positions" if set_name is None else f"val_set_positions/{set_name}"
    with open_with_group(path, "/", "") as f:  # a file h5py cannot read: one clear error
        if group not in f:
            sets = sorted(f["val_set_positions"]) if "val_set_positions" in f else []
            if set_name is None:
                why = "the run did not set eval.loss_by_position"
                if sets:
                    why = (f"the run set eval.loss_by_position without data.val; --set NAME "
                           f"draws its eval.sets': {', '.join(sets)}")
            else:
                why = (f"the run's sets with positions: {', '.join(sets)}" if sets else
                       "the run did not set eval.loss_by_position with eval.sets")
            raise MetricsError(f"{path}: no /{group} group ({why})")
    cols = load_group(path, group, "", fields=("step", "loss"), wide=True)
    steps, loss = cols["step"], cols["loss"]
    if loss.ndim != 2:
        raise MetricsError(f"{path}: /{group}/loss is not [rows, seq_len]")
    if len(steps) == 0:
        raise MetricsError(f"{path}: /{group} holds no rows yet (written at each evaluation)")
    return steps, loss


def chosen_rows(n: int, most: int = MAX_CURVES) -> list[int]:
    """Up to `most` row indices spread evenly over n rows, the first and the last among them."""
    if n <= most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (most - 1)) for i in range(most)})


def plot_position_losses(p, out, title: str | None = None, dpi: int = 120,
                         set_name: str | None = None) -> Path:
    steps, loss = load_position_losses(p, set_name)
    rows = chosen_rows(len(steps))
    fig, ax = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    positions = np.arange(1, loss.shape[1] + 1)  # position 0 drawn at 1 (log axis)
    for i, r in enumerate(rows):
        keep = np.isfinite(loss[r])
        ax.plot(positions[keep], loss[r][keep], lw=1.3, label=f"step {steps[r]}",
                color=cmap(i / max(1, len(rows) - 1)))
    ax.set_xscale("log")
    ax.set_xlabel("position in the sequence + 1 (tokens of context seen)")
    ax.set_ylabel(f"{set_name or 'validation'} loss (nats)")
    ax.set_title(title or f"{set_name or 'validation'} loss by position")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, out, dpi=dpi)


def main(argv: list[str] | None = None) -> int:
    return plot_run_main(argv, "analysis.plot_positions", "Plot a triad run's validation loss "
                         "at each position of the context (metrics.h5's /val_positions, or with "
                         "--set one of eval.sets' /val_set_positions/<name>, written with "
                         "eval.loss_by_position).", "positions.png", plot_position_losses,
                         [("--set", dict(dest="set_name", metavar="NAME", default=None,
                                         help="draw eval.sets' set NAME instead of data.val"))])


if __name__ == "__main__":
    sys.exit(main())
