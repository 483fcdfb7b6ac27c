"""Draw pipeline timelines: a measured pipeline step beside its simulation.

    triad-timeline runs/pp4/pipeline_trace_step_00000010.csv --out timeline.png
    triad-timeline a.csv b.csv --out both.png        (one pair of panels per file, stacked)
    python -m analysis.plot_timeline ...             (the same, without installing)

The input is what `triad-train --train.profile_step N` writes into the run directory when
parallel.pp > 1: one row per forward (F), backward (B; its input-gradient part under zb-h1)
and weight pass (W) of every stage, with its start and end in the step (source "measured"),
then the schedule simulated with each stage's mean measured action times ("simulated"). Columns:
source,stage,kind,microbatch,chunk,start_ms,end_ms. Each source becomes one panel: a row per
stage, a bar per action coloured by kind (lighter for later virtual-stage chunks) and labelled
with its micro-batch where it fits; the title gives the step time and the idle share of the
stages' time. Prints the path written.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .cli import AnalysisError, prog_name, run_main  # noqa: E402
from .figures import check_figure_out, save_figure  # noqa: E402
from .hdf5_files import special_file_problem  # noqa: E402

COLUMNS = ["source", "stage", "kind", "microbatch", "chunk", "start_ms", "end_ms"]
COLOURS = {"F": "#4C72B0", "B": "#DD8452", "W": "#55A868"}
NAMES = {"F": "forward", "B": "backward (its input-gradient part under zb-h1)", "W": "weight pass"}


def read_trace(path: str | Path) -> dict[str, list[dict]]:
    """The rows of a trace file by source, checked; AnalysisError naming the file and the
    problem for anything that is not such a file."""
    path = Path(path)
    if problem := special_file_problem(path):
        raise AnalysisError(problem)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != COLUMNS:
                raise AnalysisError(f"{path}: not a pipeline trace (columns {reader.fieldnames}, "
                                    f"expected {','.join(COLUMNS)})")
            rows = list(reader)
    except OSError as e:
        raise AnalysisError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise AnalysisError(f"{path}: not a pipeline trace (not text)") from None
    out: dict[str, list[dict]] = {}
    for i, r in enumerate(rows, start=2):
        try:
            row = {"stage": int(r["stage"]), "kind": r["kind"], "microbatch": int(r["microbatch"]),
                   "chunk": int(r["chunk"]), "start": float(r["start_ms"]),
                   "end": float(r["end_ms"])}
        except (TypeError, ValueError):
            raise AnalysisError(f"{path}: line {i}: malformed row {r}") from None
        if (r["source"] not in ("measured", "simulated") or row["kind"] not in COLOURS
                or row["stage"] < 0 or not math.isfinite(row["start"])
                or not math.isfinite(row["end"]) or row["end"] < row["start"]):
            raise AnalysisError(f"{path}: line {i}: bad action {r}")
        out.setdefault(r["source"], []).append(row)
    if not out:
        raise AnalysisError(f"{path}: the trace has no actions")
    return out


def summary(rows: list[dict]) -> tuple[float, float, int]:
    """Step time (ms), idle share of the stages' time, and the number of stages."""
    stages = max(r["stage"] for r in rows) + 1
    makespan = max(r["end"] for r in rows)
    busy = sum(r["end"] - r["start"] for r in rows)
    idle = 1.0 - busy / (stages * makespan) if makespan > 0 else 0.0
    return makespan, idle, stages


def draw(ax, rows: list[dict], title: str, xmax: float) -> None:
    makespan, idle, stages = summary(rows)
    for r in rows:
        width = r["end"] - r["start"]
        alpha = 1.0 if r["chunk"] == 0 else max(0.35, 1.0 - 0.3 * r["chunk"])
        ax.barh(r["stage"], width, left=r["start"], height=0.8, color=COLOURS[r["kind"]],
                alpha=alpha, edgecolor="white", linewidth=0.5)
        if width > makespan / 60:
            ax.text(r["start"] + width / 2, r["stage"], str(r["microbatch"]), ha="center",
                    va="center", fontsize=7, color="white")
    ax.set_yticks(range(stages))
    ax.set_yticklabels([f"stage {s}" for s in range(stages)])
    ax.set_ylim(stages - 0.5, -0.5)  # stage 0 on top
    ax.set_xlim(0, xmax * 1.01)  # one scale for every panel: step times compare by length
    ax.set_title(f"{title}: {makespan:.1f} ms, idle {idle * 100:.1f}% of the stages' time",
                 fontsize=10)


def main(argv: list[str] | None = None) -> int:
    prog = prog_name("python -m analysis.plot_timeline")
    ap = argparse.ArgumentParser(
        prog=prog, description="Draw a pipeline step as measured (triad-train "
        "--train.profile_step) beside the schedule simulated with its action times.")
    ap.add_argument("traces", nargs="+", metavar="CSV",
                    help="pipeline_trace_step_N.csv files from run directories")
    ap.add_argument("--out", "-o", default="timeline.png",
                    help="output image (.png, .pdf, .svg; default timeline.png)")
    ap.add_argument("--title", default=None, help="prefix of every panel's title")
    ap.add_argument("--dpi", type=int, default=120)
    a = ap.parse_args(argv)

    def body() -> int:
        check_figure_out(a.out, a.dpi)
        panels = []
        for path in a.traces:
            by_source = read_trace(path)
            name = a.title or Path(path).parent.name or Path(path).stem
            for source in ("measured", "simulated"):
                if source in by_source:
                    panels.append((by_source[source], f"{name} {source}"))
        height = sum(1.0 + 0.35 * summary(rows)[2] for rows, _ in panels)
        fig, axes = plt.subplots(len(panels), 1, figsize=(12, max(3.0, height)), squeeze=False)
        xmax = max(summary(rows)[0] for rows, _ in panels)
        for ax, (rows, title) in zip(axes[:, 0], panels):
            draw(ax, rows, title, xmax)
        axes[-1, 0].set_xlabel("ms from the step's start")
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
        fig.legend(handles, list(NAMES.values()), loc="lower center", fontsize=8, ncol=3)
        fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))  # room for the legend
        print(save_figure(fig, a.out, a.dpi))
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    raise SystemExit(main())
