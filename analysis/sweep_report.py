"""Summarise a sweep: one row per point with its overrides, status and results.

    triad-sweep-report inputs/sweeps/quickstart-lr.ini [--out-dir DIR]

Columns: index, run, one per swept key, status (finished / running / missing; with "(metrics.h5
unreadable)" or "(no metrics.h5)" where a started point's results cannot be read, its steps
then "?"), steps (done of total), final val loss, best val loss and the step it was reached at, final train loss,
tokens/s (median over the steps after the first few), and where points measured them the final
val bpb (eval.bits_per_byte) and the moving average's final val loss (eval.ema). Written to DIR/<name>.csv and
DIR/<name>.md (DIR defaults to <run dir>/<name>-report), printed as a Markdown table, and
plotted into DIR/<name>.png: final and best val loss against each swept key. Runs still
training are read as they are.

With --x KEY --lines KEY [--panels KEY] (swept keys) the PNG is instead the final val loss
against --x, one line per value of --lines, one panel per value of --panels, and a table of the
best --x of each line follows (where the loss is least): a learning-rate transfer plot, e.g.
--x train.lr --lines model.n_embd --panels model.mup_base_width for μP's.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from .cli import AnalysisError, count_arg, is_number, prog_name, run_main
from .figures import save_figure
from .tables import fmt, markdown_table, write_text
from .metrics import MetricsError, load_metrics, steady_tokens_per_sec
from .sweep import Sweep, load_sweep

RESULT_COLUMNS = ("final_val_loss", "best_val_loss", "best_val_step", "final_train_loss",
                  "tokens_per_sec", "final_val_bpb",  # bpb: eval.bits_per_byte (NaN: off)
                  "final_ema_val_loss",  # eval.ema: the moving average's (NaN: off)
                  # eval.choices' accuracy (lm-eval's acc), the weights' and under eval.ema the
                  # moving average's (NaN: off)
                  "final_choice_accuracy", "final_ema_choice_accuracy")
# The result columns the markdown table shows only where some point has them, with headers.
OPTIONAL_COLUMNS = (("final_val_bpb", "final val bpb"),
                    ("final_ema_val_loss", "final ema val loss"),
                    ("final_choice_accuracy", "final choice accuracy"),
                    ("final_ema_choice_accuracy", "final ema choice accuracy"))


def collect(sweep: Sweep, skip: int = 5, notes: list | None = None):
    """A pandas DataFrame with one row per point (NaN where a point has no data yet)."""
    import pandas as pd

    rows = []
    for p in sweep.points:
        row: dict = {"index": p.index, "run": p.run_name}
        row.update(p.overrides)
        row["status"] = sweep.status(p)
        row["steps_done"] = np.nan
        row["steps_total"] = sweep.steps(p)
        for c in RESULT_COLUMNS:
            row[c] = np.nan
        # Why a started point has no results: its metrics.h5 missing or unreadable ("" else).
        row["metrics_problem"] = ""
        mpath = sweep.run_path(p) / "metrics.h5"
        if not mpath.exists() and row["status"] == "finished":
            row["metrics_problem"] = "no metrics.h5"
        if mpath.exists():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = load_metrics(mpath, strict=False)
            except MetricsError as e:
                if notes is not None:
                    notes.append(f"point {p.index}: {e}")
                row["metrics_problem"] = "metrics.h5 unreadable"
                m = None
            if m is not None:
                if m.n_train:
                    row["steps_done"] = int(m.train["step"][-1]) + 1
                    row["final_train_loss"] = float(m.train["loss"][-1])
                    row["tokens_per_sec"] = steady_tokens_per_sec(m, skip)[0]
                if m.n_val:
                    vl = m.val["loss"]
                    row["final_val_loss"] = float(vl[-1])
                    ok = np.isfinite(vl)
                    if ok.any():
                        j = int(np.nanargmin(np.where(ok, vl, np.nan)))
                        row["best_val_loss"] = float(vl[j])
                        row["best_val_step"] = int(m.val["step"][j])
                    for col, key in (("final_val_bpb", "bpb"),
                                     ("final_choice_accuracy", "choice_accuracy")):
                        v = m.val.get(key)
                        if v is not None and len(v):
                            row[col] = float(v[-1])
                if m.val_ema and len(m.val_ema["loss"]):
                    for col, key in (("final_ema_val_loss", "loss"),
                                     ("final_ema_choice_accuracy", "choice_accuracy")):
                        v = m.val_ema.get(key)
                        if v is not None and len(v):
                            row[col] = float(v[-1])
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("steps_done", "best_val_step"):
        df[c] = df[c].astype("Int64")
    return df


def to_markdown(df, keys: list[str]) -> str:
    # (the optional results only where some point measured them: the bits per byte under
    # eval.bits_per_byte, the moving average's under eval.ema, the accuracies under eval.choices)
    shown = [(c, h) for c, h in OPTIONAL_COLUMNS
             if np.isfinite(df[c].to_numpy(dtype=float)).any()]
    headers = ["index", "run", *keys, "status", "steps", "final val loss", "best val loss",
               "best at step", "final train loss", "tokens/s", *[h for _, h in shown]]
    rows = []
    for r in df.to_dict("records"):
        done = r["steps_done"]
        # (a point whose metrics cannot be read: its steps unknown, not 0, and the reason shown)
        problem = r["metrics_problem"]
        steps = f"{'?' if problem else 0 if _na(done) else int(done)}/{r['steps_total']}"
        status = f"{r['status']} ({problem})" if problem else r["status"]
        rows.append([str(r["index"]), r["run"], *[str(r[k]) for k in keys], status, steps,
                     fmt(r["final_val_loss"]), fmt(r["best_val_loss"]),
                     "" if _na(r["best_val_step"]) else str(int(r["best_val_step"])),
                     fmt(r["final_train_loss"]), fmt(r["tokens_per_sec"]),
                     *[fmt(r[c]) for c, _ in shown]])
    right = [True, False, *[False] * len(keys), False, True, True, True, True, True, True,
             *[True] * len(shown)]
    return markdown_table(headers, rows, align_right=right)


def _na(v) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def plot(df, sweep: Sweep, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(sweep.values) or ["index"]
    n = len(keys)
    fig, axes = plt.subplots(1, n, figsize=(max(6.5, 5.2 * n), 4.4), squeeze=False, constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys):
        vals = [str(v) for v in df[key]] if key in df else [str(i) for i in df["index"]]
        numeric = all(is_number(v) for v in vals)
        if numeric:
            xs = np.array([float(v) for v in vals])
            positive = bool(np.all(xs > 0))
            if positive and xs.max() / xs.min() >= 10:
                ax.set_xscale("log")
        else:
            cats = list(dict.fromkeys(vals))
            xs = np.array([cats.index(v) for v in vals], dtype=float)
            ax.set_xticks(range(len(cats)), cats, rotation=30 if len(cats) > 4 else 0)
        others = [k for k in sweep.values if k != key]
        groups: dict = {}
        for i, r in enumerate(df.to_dict("records")):
            groups.setdefault(tuple(str(r[k]) for k in others), []).append(i)
        for g, (label, idx) in enumerate(groups.items()):
            idx = sorted(idx, key=lambda i: xs[i])
            c = colors[g % len(colors)]
            x = xs[idx]
            best = df["best_val_loss"].to_numpy(dtype=float)[idx]
            final = df["final_val_loss"].to_numpy(dtype=float)[idx]
            lab = ", ".join(f"{k}={v}" for k, v in zip(others, label))
            ax.plot(x, best, "-o", color=c, label=("best " + lab).strip())
            ax.plot(x, final, "--s", color=c, alpha=0.7, mfc="none",
                    label=("final " + lab).strip())
            unfinished = [j for j, i in enumerate(idx) if df["status"].iloc[i] != "finished"]
            if unfinished:
                ax.scatter(x[unfinished], best[unfinished], s=120, facecolors="none",
                           edgecolors="0.5", zorder=3,
                           label="not finished" if g == 0 else None)
        ax.set_xlabel(key)
        ax.set_ylabel("val loss (nats/token)")
        ax.grid(True, alpha=0.3)
        if not np.isfinite(df["best_val_loss"].to_numpy(dtype=float)).any():
            ax.text(0.5, 0.5, "no validation results yet", transform=ax.transAxes,
                    ha="center", va="center", color="0.4")
        ax.legend(fontsize=7)
    n_fin = int((df["status"] == "finished").sum())
    fig.suptitle(f"sweep {sweep.name}: {n_fin} of {len(df)} points finished", fontsize=11)
    return save_figure(fig, out)


def _numeric_or_str(v):
    return float(v) if is_number(str(v)) else str(v)


def best_by_line(df, x: str, lines: str, panels: str | None):
    """[(panel value, line value, best x, its final val loss)] over the finished points, the
    least final val loss of each line (None where a line has none)."""
    done = df[(df["status"] == "finished") & df["final_val_loss"].notna()]
    out = []
    for pv in (list(dict.fromkeys(df[panels])) if panels else [None]):
        part = df if panels is None else df[df[panels] == pv]
        for lv in dict.fromkeys(part[lines]):
            rows = done if panels is None else done[done[panels] == pv]
            rows = rows[rows[lines] == lv]
            if len(rows) == 0:
                out.append((pv, lv, None, None))
                continue
            b = rows.loc[rows["final_val_loss"].idxmin()]
            out.append((pv, lv, b[x], float(b["final_val_loss"])))
    return out


def plot_lines(df, sweep: Sweep, x: str, lines: str, panels: str | None, out: Path) -> Path:
    """Final val loss against x, a line per value of `lines`, a panel per value of `panels`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pvals = list(dict.fromkeys(df[panels])) if panels else [None]
    fig, axes = plt.subplots(1, len(pvals), figsize=(5.4 * len(pvals), 4.4), squeeze=False,
                             sharey=True, constrained_layout=True)
    xs_all = [_numeric_or_str(v) for v in df[x]]
    numeric = all(isinstance(v, float) for v in xs_all)
    for ax, pv in zip(axes[0], pvals):
        part = df if panels is None else df[df[panels] == pv]
        for lv in dict.fromkeys(part[lines]):
            rows = part[part[lines] == lv]
            xv = [_numeric_or_str(v) for v in rows[x]]
            order = sorted(range(len(xv)), key=lambda i: xv[i]) if numeric else range(len(xv))
            ys = rows["final_val_loss"].to_numpy(dtype=float)
            ax.plot([xv[i] for i in order], [ys[i] for i in order], "-o", label=f"{lines}={lv}")
        if numeric and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(x)
        ax.set_title(f"{panels}={pv}" if panels else sweep.name, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("final val loss (nats/token)")
    fig.suptitle(f"sweep {sweep.name}", fontsize=11)
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    prog = prog_name("python -m analysis.sweep_report")
    ap = argparse.ArgumentParser(
        prog=prog, description="One row per sweep point: overrides, status, final and best "
        "val loss, final train loss, tokens/s; as CSV, Markdown and a PNG of val loss against "
        "each swept key.")
    ap.add_argument("sweep", metavar="SWEEP.ini")
    ap.add_argument("--out-dir", default=None,
                    help="where to write <name>.csv, <name>.md and <name>.png (default: "
                         "<run dir>/<name>-report)")
    ap.add_argument("--skip", type=count_arg, default=5,
                    help="steps left out of the tokens/s median (start-up; default 5)")
    ap.add_argument("--no-plot", action="store_true", help="tables only")
    ap.add_argument("--x", default=None, metavar="KEY",
                    help="with --lines: plot the final val loss against this swept key")
    ap.add_argument("--lines", default=None, metavar="KEY", help="one line per value of KEY")
    ap.add_argument("--panels", default=None, metavar="KEY", help="one panel per value of KEY")
    a = ap.parse_args(argv)

    def body() -> int:
        sweep = load_sweep(a.sweep)
        lined = [k for k in (a.x, a.lines, a.panels) if k is not None]
        if lined and (a.x is None or a.lines is None):
            raise AnalysisError("--x and --lines go together (--panels with them)")
        for k in lined:
            if k not in sweep.values:
                raise AnalysisError(f"{a.sweep}: {k} is not a swept key (swept: "
                                    f"{', '.join(sweep.values) or 'none'})")
        if len(set(lined)) != len(lined):
            raise AnalysisError("--x, --lines and --panels must be different keys")
        notes: list = []
        df = collect(sweep, skip=a.skip, notes=notes)
        keys = list(sweep.values)
        if a.out_dir == "":
            raise AnalysisError("--out-dir is empty: give a directory (or leave it out)")
        out_dir = Path(a.out_dir) if a.out_dir else sweep.run_dir / f"{sweep.name}-report"
        csv = out_dir / f"{sweep.name}.csv"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            df.to_csv(csv, index=False, float_format="%.6g")
        except OSError as e:
            raise AnalysisError(f"{csv}: cannot write: {e}") from None
        md_table = to_markdown(df, keys)
        counts = df["status"].value_counts().to_dict()
        head = (f"sweep {sweep.name} ({sweep.mode}, {len(df)} points: "
                + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("finished", "running", "missing"))
                + ")")
        fixed = ("every point: " + " ".join(f"{k}={v}" for k, v in sweep.fixed.items())
                 if sweep.fixed else "")
        md = "\n\n".join(x for x in (f"# {head}", fixed, md_table) if x) + "\n"
        write_text(out_dir / f"{sweep.name}.md", md)
        written = [csv, out_dir / f"{sweep.name}.md"]
        if not a.no_plot:
            png = out_dir / f"{sweep.name}.png"
            written.append(plot_lines(df, sweep, a.x, a.lines, a.panels, png) if a.x
                           else plot(df, sweep, png))
        print(head)
        if fixed:
            print(fixed)
        print()
        print(md_table)
        finished = df[df["status"] == "finished"]
        if len(finished) and finished["best_val_loss"].notna().any():
            b = finished.loc[finished["best_val_loss"].idxmin()]
            desc = " ".join(f"{k}={b[k]}" for k in keys) or b["run"]
            print(f"\nbest finished point: {int(b['index'])} ({desc}), best val loss "
                  f"{b['best_val_loss']:.4f} at step {int(b['best_val_step'])}")
        if a.x:
            hdr = ([a.panels] if a.panels else []) + [a.lines, f"best {a.x}", "final val loss"]
            rows = [([str(pv)] if a.panels else []) + [str(lv), "" if bx is None else str(bx),
                                                        "" if bl is None else f"{bl:.4f}"]
                    for pv, lv, bx, bl in best_by_line(df, a.x, a.lines, a.panels)]
            print(f"\nbest {a.x} of each line (least final val loss):\n")
            print(markdown_table(hdr, rows))
        for n in notes:
            print(f"{prog}: warning: {n}", file=sys.stderr)
        for w in written:
            print(f"wrote {w}", file=sys.stderr)
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    sys.exit(main())
