"""Plot how a mixture of experts spreads its tokens over the experts (train.moe_load_every).

    triad-plot-moe runs/moe --out moe_load.png
    python -m analysis.plot_moe_load ...        (the same, without installing the package)

The argument is a run directory (holding metrics.h5) or a metrics.h5 file whose /moe_load group
train.moe_load_every wrote: for each layer with experts, each expert's share of the layer's
choices in the logged steps. One heatmap per layer, experts against the step, coloured by E
times the share (1: the expert takes its even share; 0: none; E: all of them), on one scale for
every layer so that a collapsing layer stands out; a last panel draws each layer's busiest
expert's load, E times the largest share. Prints the path written.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from .cli import plot_run_main  # noqa: E402
from .figures import save_figure  # noqa: E402
from .metrics import MetricsError, load_group, resolve_metrics_path  # noqa: E402


def load_moe_load(p) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(steps, {layer: shares [rows, experts]}) of a run's /moe_load group, layers h<i> in
    order."""
    path = resolve_metrics_path(p)
    cols = load_group(path, "moe_load", "the run did not set train.moe_load_every, or has no "
                      "mixture of experts", wide=True)
    steps = cols["step"]
    layers = sorted((k for k in cols if re.fullmatch(r"h\d+", k)), key=lambda k: int(k[1:]))
    shares = {}
    for k in layers:
        if cols[k].ndim != 2:
            raise MetricsError(f"{path}: /moe_load/{k} is not [rows, experts]")
        shares[k] = cols[k]
    if not layers:
        raise MetricsError(f"{path}: /moe_load holds no layer")
    if len(steps) == 0:
        raise MetricsError(f"{path}: /moe_load holds no rows yet (train.moe_load_every writes at "
                           f"steps 0, N, 2N, ...)")
    return steps, shares


def plot_moe_load(p, out, title: str | None = None, dpi: int = 120) -> Path:
    steps, shares = load_moe_load(p)
    n = len(shares) + 1  # the layers' heatmaps, then the busiest experts' curves
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False,
                             constrained_layout=True)
    E = next(iter(shares.values())).shape[1]
    # E·share on a log scale around 1 (even): from a 100th of the even share to all of them.
    norm = LogNorm(vmin=0.01, vmax=float(E))
    image = None
    if len(steps) > 1:
        edges = np.concatenate([steps, [steps[-1] + (steps[-1] - steps[-2])]])
    else:
        edges = np.array([steps[0], steps[0] + 1]) if len(steps) else np.array([0, 1])
    for ax, (k, a) in zip(axes.ravel(), shares.items()):
        load = np.clip(a[:len(steps)].T * E, 0.01, None)  # [experts, rows]; 0 at the floor
        image = ax.pcolormesh(edges, np.arange(E + 1) - 0.5, load, norm=norm, cmap="coolwarm",
                              shading="flat")
        ax.set_title(f"layer {k[1:]}: E · share of the choices")
        ax.set_xlabel("step")
        ax.set_ylabel("expert")
    ax_max = axes.ravel()[len(shares)]
    cmap = plt.get_cmap("viridis")
    for i, (k, a) in enumerate(shares.items()):
        ax_max.plot(steps, E * a[:len(steps)].max(axis=1), lw=1.3, label=k,
                    color=cmap(i / max(1, len(shares) - 1)))
    ax_max.axhline(1.0, color="0.5", lw=0.8, ls="--")
    ax_max.set_title("busiest expert's load per layer (E · max share; 1: balanced)")
    ax_max.set_xlabel("step")
    ax_max.grid(alpha=0.3)
    ax_max.legend(fontsize=7, ncol=2 if len(shares) > 8 else 1, loc="best")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel()[:len(shares)].tolist(), shrink=0.8,
                     label="E · share (1: even)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out, dpi=dpi)


def main(argv: list[str] | None = None) -> int:
    return plot_run_main(argv, "analysis.plot_moe_load", "Plot each expert's share of each "
                         "layer's choices in a triad run (metrics.h5's /moe_load, written with "
                         "train.moe_load_every).", "moe_load.png", plot_moe_load)


if __name__ == "__main__":
    sys.exit(main())
