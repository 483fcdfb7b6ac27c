"""Plot each layer's gradient and weight norms of a triad run (train.norms_every).

    triad-plot-norms runs/quick --out norms.png
    python -m analysis.plot_norms ...        (the same, without installing the package)

The argument is a run directory (holding metrics.h5) or a metrics.h5 file whose /norms group
train.norms_every wrote. Two panels against the step: the L2 norm of each layer's gradient
(before clipping; log scale) and of its weights, one line per layer (wte, wpe, h0 ... h{L-1},
ln_f), the transformer layers coloured from the first to the last. Prints the path written.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .cli import plot_run_main  # noqa: E402
from .figures import save_figure  # noqa: E402
from .metrics import load_group  # noqa: E402


def load_norms(p) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(steps, {layer: gradient norms}, {layer: weight norms}) of a run's /norms group, layers
    in the order the file lists them (wte, wpe, h0, ..., ln_f)."""
    cols = load_group(p, "norms", "the run did not set train.norms_every")
    steps = cols["step"]
    grad, weight = {}, {}
    for k, v in cols.items():
        m = re.fullmatch(r"(grad|weight)_(.+)", k)
        if m:
            (grad if m.group(1) == "grad" else weight)[m.group(2)] = v

    def order(name: str) -> tuple[int, int]:
        m = re.fullmatch(r"h(\d+)", name)
        return (1, int(m.group(1))) if m else ((0, 0) if name in ("wte", "wpe") else (2, 0))

    layers = sorted(grad, key=order)
    return steps, {k: grad[k] for k in layers}, {k: weight[k] for k in layers if k in weight}


def plot_norms(p, out, title: str | None = None, dpi: int = 120) -> Path:
    steps, grad, weight = load_norms(p)
    fig, (ax_g, ax_w) = plt.subplots(1, 2, figsize=(14, 5.5), constrained_layout=True)
    hidden = [k for k in grad if re.fullmatch(r"h\d+", k)]
    cmap = plt.get_cmap("viridis")
    styles = {"wte": ("tab:red", "--"), "wpe": ("tab:orange", "--"), "ln_f": ("black", ":")}
    for k in grad:
        if k in hidden:
            c, ls = cmap(hidden.index(k) / max(1, len(hidden) - 1)), "-"
        else:
            c, ls = styles.get(k, ("tab:gray", "-."))
        ax_g.plot(steps, grad[k], color=c, ls=ls, lw=1.3, label=k)
        if k in weight:
            ax_w.plot(steps, weight[k], color=c, ls=ls, lw=1.3, label=k)
    ax_g.set_yscale("log")
    ax_g.set_title("gradient L2 norm per layer (before clipping)")
    ax_w.set_title("weight L2 norm per layer")
    for ax in (ax_g, ax_w):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax_w.legend(fontsize=7, ncol=2 if len(grad) > 8 else 1, loc="best")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out, dpi=dpi)


def main(argv: list[str] | None = None) -> int:
    return plot_run_main(argv, "analysis.plot_norms", "Plot each layer's gradient and weight L2 "
                         "norms of a triad run (metrics.h5's /norms, written with "
                         "train.norms_every).", "norms.png", plot_norms)


if __name__ == "__main__":
    sys.exit(main())
