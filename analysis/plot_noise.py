"""Plot the gradient noise scale of a run (train.noise_every), McCandlish et al. (2018).

    triad-plot-noise runs/gns --out noise.png
    python -m analysis.plot_noise ...        (the same, without installing the package)

The argument is a run directory (holding metrics.h5) or a metrics.h5 file whose /noise group
train.noise_every wrote: at the measured steps, the squared norm of a small batch's gradient
(one micro-batch, or under pipeline parallelism a replica's share of the step; mean over the
data-parallel replicas, b tokens) and of the whole batch's (B tokens). From each
pair come unbiased estimates of the true gradient's squared norm and of the per-token
gradient's total variance,

    |G|^2 = (B |G_B|^2 - b |G_b|^2) / (B - b),    tr(S) = (|G_b|^2 - |G_B|^2) / (1/b - 1/B),

and the simple noise scale B_simple = tr(S) / |G|^2 (tokens) is the ratio of their exponential
moving averages (--decay, 0.9 as triad-train's log line), drawn against the step beside the
batch the run trained with: a batch well below B_simple wastes steps, one well above wastes
tokens. Prints the path written, and the last estimate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .cli import prog_name, run_main  # noqa: E402
from .figures import check_figure_out, save_figure  # noqa: E402
from .metrics import MetricsError, load_group, resolve_metrics_path  # noqa: E402

COLUMNS = ("step", "small_sq", "small_tokens", "big_sq", "big_tokens")


def load_noise(p) -> dict[str, np.ndarray]:
    """The /noise group's columns, cut to their common length."""
    path = resolve_metrics_path(p)
    cols = load_group(path, "noise", "the run did not set train.noise_every", fields=COLUMNS)
    if len(cols["step"]) == 0:
        raise MetricsError(f"{path}: /noise holds no rows yet (train.noise_every writes at steps "
                           f"0, N, 2N, ...)")
    return {c: cols[c] for c in COLUMNS}


def noise_scale(cols: dict[str, np.ndarray], decay: float = 0.9) -> dict[str, np.ndarray]:
    """Per row: the estimates of |G|^2 and tr(S), and B_simple from their running means."""
    b, B = cols["small_tokens"], cols["big_tokens"]
    g_sq = (B * cols["big_sq"] - b * cols["small_sq"]) / (B - b)
    trace = (cols["small_sq"] - cols["big_sq"]) / (1 / b - 1 / B)
    mg = mt = 0.0
    simple = np.empty(len(b))
    for i in range(len(b)):
        mg = decay * mg + (1 - decay) * g_sq[i]
        mt = decay * mt + (1 - decay) * trace[i]
        simple[i] = mt / mg if mg > 0 else np.nan  # no estimate while the mean of |G|^2 <= 0
    return {"g_sq": g_sq, "trace": trace, "b_simple": simple}


def plot_noise(p, out, title: str | None = None, dpi: int = 120, decay: float = 0.9) -> Path:
    cols = load_noise(p)
    est = noise_scale(cols, decay)
    steps = cols["step"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    simple = est["b_simple"]
    ax.plot(steps, np.where(simple > 0, simple, np.nan), lw=1.5, color="C0",
            label="B_simple (running means; non-positive left out)")
    ax.plot(steps, cols["big_tokens"], lw=1.0, ls="--", color="0.4", label="the batch (tokens)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("tokens")
    ax.set_title("gradient noise scale tr(Σ)/|G|²")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    for key, label, color in (("g_sq", "|G|² estimate", "C1"), ("trace", "tr(Σ) estimate", "C2")):
        v = est[key]
        ax2.plot(steps, np.where(v > 0, v, np.nan), lw=1.0, color=color, label=label)
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.set_title("the estimates (non-positive ones left out)")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out, dpi=dpi)


def main(argv: list[str] | None = None) -> int:
    import argparse

    prog = prog_name("python -m analysis.plot_noise")
    ap = argparse.ArgumentParser(prog=prog, description="Plot a triad run's gradient noise scale "
                                 "(metrics.h5's /noise, written with train.noise_every).")
    ap.add_argument("run", metavar="RUN", help="run directory (holding metrics.h5) or metrics.h5")
    ap.add_argument("--out", "-o", default="noise.png",
                    help="output image (.png, .pdf, .svg; default noise.png)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--dpi", type=int, default=120)
    ap.add_argument("--decay", type=float, default=0.9,
                    help="the running means' decay (default 0.9, as triad-train's log line)")
    a = ap.parse_args(argv)

    def body() -> int:
        if not 0 <= a.decay < 1:
            raise MetricsError(f"--decay must be in [0, 1) (got {a.decay})")
        check_figure_out(a.out, a.dpi)
        path = plot_noise(a.run, a.out, title=a.title, dpi=a.dpi, decay=a.decay)
        last = noise_scale(load_noise(a.run), a.decay)["b_simple"][-1]
        print(path)
        print(f"B_simple {last:.4g} tokens (last estimate)" if last > 0 else
              "B_simple: no estimate yet (the running mean of |G|^2 is not positive)")
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    sys.exit(main())
