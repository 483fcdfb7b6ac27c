"""μP's coordinate check: how the scale of a model's activations moves with its width.

    triad-coord-check runs/sp_* runs/mup_* --out coord.png
    python -m analysis.coord_check ...        (the same, without installing the package)

The arguments are run directories (or metrics.h5 files, or directories holding runs, e.g. a
sweep's) of runs trained with train.activations_every: the root mean square of each block's
attention and MLP outputs and of the residual stream after it, on the first validation
micro-batch, before the steps listed in /activations. Runs are grouped by parametrization (μP
where model.mup_base_width > 0, else the standard one, "SP") and ordered by model.n_embd.

One panel per parametrization and activation kind (attn, mlp, out: averaged over the layers; and
embed): the RMS against the width (log-log) at each recorded step (--steps: default the first
four and the last). Under μP the lines stay flat as the width grows; under SP, after a few Adam
steps, they climb with it (Yang et al., "Tensor Programs V", fig. 5). Prints a table of each
group's log-log slope of RMS against width at the last step: near 0 is width-independent (μP's
promise), near 1 is growing as the width.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .cli import prog_name, run_main  # noqa: E402
from .figures import check_figure_out, save_figure  # noqa: E402
from .metrics import (MetricsError, attr_value, open_with_group, parse_config,  # noqa: E402
                      resolve_metrics_path)
from .tables import markdown_table  # noqa: E402

KINDS = ("embed", "attn", "mlp", "out")


def metrics_files(paths) -> list[Path]:
    """Each argument as metrics.h5 files: a file, a run directory, or a directory of runs (its
    subdirectories holding one); each file once, whichever way it was named."""
    files = []
    for p in map(Path, paths):
        if p.is_dir() and not (p / "metrics.h5").exists():
            found = sorted(p.glob("*/metrics.h5"))
            if not found:
                raise MetricsError(f"{p}: no metrics.h5 in it nor in its subdirectories")
            files += found
        else:
            files.append(resolve_metrics_path(p))
    unique = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def load_run(path: Path) -> dict:
    """{width, mup, steps, rms: {kind: [steps] averaged over layers}} of one run."""
    with open_with_group(path, "activations", "the run did not set train.activations_every") as f:
        cfg = parse_config(str(attr_value(f.attrs.get("config", b""))))
        g = f["activations"]
        cols = {k: g[k][()] for k in g}
    # A file being written may hold columns of different lengths: the rows all of them have.
    rows = min(len(v) for v in cols.values())
    steps = cols.pop("step")[:rows].astype(np.int64)
    cols = {k: v[:rows] for k, v in cols.items()}
    if "embed" not in cols:
        raise MetricsError(f"{path}: /activations has no 'embed' column")
    rms = {"embed": cols["embed"]}
    for kind in KINDS[1:]:
        layers = [v for k, v in cols.items() if k.endswith("_" + kind)]
        rms[kind] = np.sqrt(np.mean(np.square(layers), axis=0))  # the layers' RMS together
    return {"path": path, "width": int(cfg.get("model.n_embd", "0")),
            "mup": int(cfg.get("model.mup_base_width", "0") or 0) > 0, "steps": steps, "rms": rms}


def slope(widths, values) -> float:
    """The least-squares slope of log(values) against log(widths)."""
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def value(run: dict, kind: str, step: int) -> float:
    """The run's RMS of `kind` before `step`, which must be a positive number."""
    v = float(run["rms"][kind][list(run["steps"]).index(step)])
    if not (np.isfinite(v) and v > 0):
        raise MetricsError(f"{run['path']}: the {kind} RMS before step {step} is {v} (the run "
                           "diverged?); choose earlier --steps")
    return v


def coord_check(paths, out, steps=None, title: str | None = None, dpi: int = 120):
    runs = [load_run(p) for p in metrics_files(paths)]
    groups = {name: sorted((r for r in runs if r["mup"] == mup), key=lambda r: r["width"])
              for name, mup in (("SP", False), ("μP", True))}
    groups = {k: v for k, v in groups.items() if v}
    for name, rs in groups.items():
        for a, b in zip(rs, rs[1:]):
            if a["width"] == b["width"]:
                raise MetricsError(f"{name}: two runs of width {a['width']} ({a['path']}, "
                                   f"{b['path']}): give one run per width and parametrization")
        if len({r["width"] for r in rs}) < 2:
            raise MetricsError(f"{name}: runs of at least two widths are needed, got "
                               f"{sorted({r['width'] for r in rs})}")
    common = sorted(set.intersection(*(set(r["steps"].tolist()) for r in runs)))
    if not common:
        raise MetricsError("the runs have no recorded step in common")
    if steps is None:
        steps = common[:4] + ([common[-1]] if len(common) > 4 else [])
    missing = [s for s in steps if s not in common]
    if missing:
        raise MetricsError(f"steps {missing} are not recorded by every run (common: {common})")

    fig, axes = plt.subplots(len(groups), len(KINDS), figsize=(4.2 * len(KINDS),
                             3.6 * len(groups)), squeeze=False, constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    table = []
    for row, (name, rs) in enumerate(groups.items()):
        widths = [r["width"] for r in rs]
        for col, kind in enumerate(KINDS):
            ax = axes[row][col]
            for i, s in enumerate(steps):
                vals = [value(r, kind, s) for r in rs]
                ax.plot(widths, vals, "o-", color=cmap(i / max(1, len(steps) - 1)), ms=3,
                        label=f"step {s}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{name}: {kind}", fontsize=10)
            ax.set_xlabel("width (model.n_embd)")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("RMS of the activation")
        last = max(steps)
        table.append([name, ", ".join(map(str, widths)), last] + [
            f"{slope(widths, [value(r, k, last) for r in rs]):+.2f}" for k in KINDS])
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    path = save_figure(fig, out, dpi=dpi)
    text = markdown_table(["parametrization", "widths", "step"] +
                          [f"slope {k}" for k in KINDS], table)
    return path, text


def main(argv: list[str] | None = None) -> int:
    prog = prog_name("python -m analysis.coord_check")
    ap = argparse.ArgumentParser(
        prog=prog, description="μP's coordinate check: activation RMS against width "
        "(metrics.h5's /activations, written with train.activations_every), standard and μP "
        "runs side by side.")
    ap.add_argument("runs", nargs="+", metavar="RUN",
                    help="run directories, metrics.h5 files or directories of runs")
    ap.add_argument("--steps", default=None,
                    help="comma-separated steps to draw (default: the first four and the last)")
    ap.add_argument("--out", "-o", default="coord_check.png",
                    help="output image (.png, .pdf, .svg; default coord_check.png)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--dpi", type=int, default=120)
    a = ap.parse_args(argv)

    def body() -> int:
        check_figure_out(a.out, a.dpi)
        steps = None
        if a.steps:
            try:
                steps = [int(s) for s in a.steps.split(",")]
            except ValueError:
                raise MetricsError(f"--steps: '{a.steps}' is not a comma-separated list of "
                                   "integers") from None
        path, text = coord_check(a.runs, a.out, steps, a.title, a.dpi)
        print(text)
        print(path)
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    sys.exit(main())
