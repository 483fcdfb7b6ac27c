"""Plot training curves of one or more triad runs.

    triad-plot runs/quick [runs/other/metrics.h5 ...] --out curves.png [--x tokens]
    python -m analysis.plot_curves ...        (the same, without installing the package)

Each argument is a run directory (holding metrics.h5) or a metrics.h5 file. The figure has
six panels: loss (train raw, train smoothed, val), val accuracy (and the multiple-choice
accuracy where eval.choices was scored, and on a right-hand axis the bits per byte where
eval.bits_per_byte was on), learning rate, gradient norm, tokens/s and MFU, against
the step (default) or the tokens seen (--x tokens). A run of preference tuning (data.preferences)
adds a row: the pairs ranked right, the reward margin (train, and eval.preferences' held-out
pairs) and the held-out pairs' loss. Several runs are overlaid, one colour per run. Prints the
path written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .cli import number_arg, prog_name, run_main  # noqa: E402
from .figures import check_figure_out, save_figure  # noqa: E402
from .metrics import Metrics, load_runs  # noqa: E402


def ema(y: np.ndarray, window: float) -> np.ndarray:
    """Bias-corrected exponential moving average with span `window` (trailing, so it never
    looks ahead). window <= 1 returns y unchanged. NaNs/infs are skipped."""
    y = np.asarray(y, dtype=np.float64)
    if window <= 1 or len(y) == 0:
        return y.copy()
    a = 2.0 / (window + 1.0)
    out = np.empty_like(y)
    m = 0.0
    w = 0.0
    for i, v in enumerate(y):
        if np.isfinite(v):
            m = (1 - a) * m + a * v
            w = (1 - a) * w + a
        out[i] = m / w if w > 0 else np.nan
    return out


def auto_window(n: int) -> float:
    return float(min(200, max(1, n // 40)))


def _label_runs(runs: list[Metrics]) -> list[str]:
    labels = [r.name for r in runs]
    if len(set(labels)) < len(labels):  # ambiguous: fall back to paths
        labels = [str(r.path.parent if r.path.name == "metrics.h5" else r.path) for r in runs]
    return labels


def plot_runs(runs: list[Metrics], out: str | Path, x: str = "step", smooth: float | None = None,
              title: str | None = None, log_loss: bool = False, dpi: int = 120) -> Path:
    """Draw the figure for `runs` into `out` (format from the suffix, e.g. .png/.pdf/.svg).
    A mixture of experts (a run with /train/moe_max_load) adds a row: the busiest expert's load,
    the fraction of choices over capacity, and the routing loss terms; preference tuning (a run
    with /train/dpo_accuracy) one more: the pairs ranked right, the reward margin and the
    held-out pairs' loss."""
    def logged(group: str, key: str) -> bool:
        return any(getattr(r, group).get(key) is not None and
                   np.isfinite(getattr(r, group)[key]).any() for r in runs)

    moe = logged("train", "moe_max_load")
    dpo = logged("train", "dpo_accuracy")
    rows = 2 + moe + dpo
    fig, axes = plt.subplots(rows, 3, figsize=(16, 4.25 * rows), constrained_layout=True)
    ax_loss, ax_acc, ax_lr, ax_gn, ax_tps, ax_mfu = axes.ravel()[:6]
    ax_load, ax_drop, ax_terms = axes.ravel()[6:9] if moe else (None, None, None)
    ax_right, ax_margin, ax_held = axes.ravel()[-3:] if dpo else (None, None, None)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    xlabel = "tokens seen" if x == "tokens" else "step"
    labels = _label_runs(runs)
    run_handles = []
    any_choices = False
    any_skipped = False
    drop_drawn = False  # some run logged /train/moe_dropped (a capacity)
    set_markers: dict[str, str] = {}
    any_average = False  # some run scored the moving average of its weights (eval.ema)
    # eval.bits_per_byte: val/bpb (and each set's) on a right-hand axis of the accuracy panel.
    has_bpb = any(r.n_val and np.isfinite(r.val.get("bpb", np.array([np.nan]))).any()
                  for r in runs)
    ax_bpb = ax_acc.twinx() if has_bpb else None

    for k, (r, label) in enumerate(zip(runs, labels)):
        c = colors[k % len(colors)]
        tr, va = r.train, r.val
        if x == "tokens":
            tx = tr["tokens"].astype(np.float64)
            vx = r.val_tokens()
        else:
            tx = tr["step"].astype(np.float64)
            vx = va["step"].astype(np.float64)
        n = len(tx)
        if n:
            win = auto_window(n) if smooth is None else smooth
            ax_loss.plot(tx, tr["loss"], color=c, alpha=0.25, lw=0.8)
            ax_loss.plot(tx, ema(tr["loss"], win), color=c, lw=1.6)
            # Steps whose update was skipped (train.skip_*): their losses, marked.
            sk = tr.get("skipped")
            if sk is not None and (sk == 1).any():
                hit = sk == 1
                ax_loss.plot(tx[hit], tr["loss"][hit], ls="none", marker="x", ms=6, mew=1.5,
                             color=c)
                any_skipped = True
            ax_lr.plot(tx, tr["lr"], color=c, lw=1.4)
            gn = tr["grad_norm"]
            ax_gn.plot(tx, gn, color=c, alpha=0.3, lw=0.8)
            ax_gn.plot(tx, ema(gn, win), color=c, lw=1.4)
            tps = tr["tokens_per_sec"]
            ax_tps.plot(tx, tps, color=c, alpha=0.3, lw=0.8)
            ax_tps.plot(tx, ema(tps, win), color=c, lw=1.4)
            mfu = tr["mfu"]
            # MFU is stored as a fraction of peak (the metrics contract); it can exceed 1 when
            # the CPU peak was measured while the machine was busy.
            mfu_pct = 100.0 * mfu
            ax_mfu.plot(tx, mfu_pct, color=c, alpha=0.3, lw=0.8)
            ax_mfu.plot(tx, ema(mfu_pct, win), color=c, lw=1.4)
            if dpo:  # NaN where a column is absent (another run's objective)
                for ax, key, scale in ((ax_right, "dpo_accuracy", 100.0),
                                       (ax_margin, "dpo_margin", 1.0)):
                    y = tr.get(key)
                    if y is None or not np.isfinite(y).any():
                        continue
                    ok = np.isfinite(y)
                    ax.plot(tx[ok], scale * y[ok], color=c, alpha=0.25, lw=0.8)
                    ax.plot(tx[ok], ema(scale * y[ok], win), color=c, lw=1.6)
            if moe:  # NaN where a column is absent or not in use (dense, no capacity, no term)
                for ax, key, scale, ls in ((ax_load, "moe_max_load", 1.0, "-"),
                                           (ax_drop, "moe_dropped", 100.0, "-"),
                                           (ax_terms, "moe_aux_loss", 1.0, "-"),
                                           (ax_terms, "moe_z_loss", 1.0, "--")):
                    y = tr.get(key)
                    if y is None or not np.isfinite(y).any():
                        continue
                    drop_drawn = drop_drawn or ax is ax_drop
                    ok = np.isfinite(y)
                    ax.plot(tx[ok], scale * y[ok], color=c, alpha=0.3, lw=0.8, ls=ls)
                    ax.plot(tx[ok], ema(scale * y[ok], win), color=c, lw=1.4, ls=ls)
        # eval.sets: more validation sets, one marker shape each (the same across runs).
        for name, vs in r.val_sets.items():
            if not len(vs["step"]):
                continue
            sx = vs["step"].astype(np.float64)
            if x == "tokens" and len(va["step"]):  # the tokens seen at those evaluations
                sx = np.interp(sx, va["step"].astype(np.float64), r.val_tokens())
            mk = set_markers.setdefault(name, "^v<>sDPX*"[len(set_markers) % 9])
            ax_loss.plot(sx, vs["loss"], color=c, ls=":", marker=mk, ms=4, lw=1.0)
            sb = vs.get("bpb")
            if ax_bpb is not None and sb is not None and np.isfinite(sb).any():
                ok = np.isfinite(sb)
                ax_bpb.plot(sx[ok], sb[ok], color=c, ls=":", marker=mk, ms=4, lw=1.0)
        # eval.ema: data.val (and eval.choices) under the moving average of the weights; NaN
        # where the run did not score it.
        av = r.val_ema
        if av and len(av["step"]):
            ax_ = av["step"].astype(np.float64)
            if x == "tokens" and len(va["step"]):
                ax_ = np.interp(ax_, va["step"].astype(np.float64), r.val_tokens())
            for axis, y, scale in ((ax_loss, av["loss"], 1.0),
                                   (ax_acc, av.get("choice_accuracy"), 100.0)):
                if y is not None and np.isfinite(y).any():
                    ok = np.isfinite(y)
                    axis.plot(ax_[ok], scale * y[ok], color=c, ls="-.", marker="d", ms=4, lw=1.2)
                    any_average = True
        if dpo and len(vx):  # eval.preferences' held-out pairs
            for ax, key, scale in ((ax_right, "dpo_accuracy", 100.0),
                                   (ax_margin, "dpo_margin", 1.0), (ax_held, "dpo_loss", 1.0)):
                y = va.get(key)
                if y is not None and np.isfinite(y).any():
                    ok = np.isfinite(y)
                    ax.plot(vx[ok], scale * y[ok], color=c, ls="--", marker="o", ms=3.5, lw=1.2)
        if len(vx):
            ax_loss.plot(vx, va["loss"], color=c, ls="--", marker="o", ms=3.5, lw=1.2)
            ax_acc.plot(vx, 100.0 * va["accuracy"], color=c, ls="--", marker="o", ms=3.5)
            # eval.choices (multiple choice, e.g. HellaSwag): NaN where it was not scored
            mc = va.get("choice_accuracy")
            if mc is not None and np.isfinite(mc).any():
                ok = np.isfinite(mc)
                ax_acc.plot(vx[ok], 100.0 * mc[ok], color=c, ls=":", marker="s", ms=3.5)
                any_choices = True
            bpb = va.get("bpb")
            if ax_bpb is not None and bpb is not None and np.isfinite(bpb).any():
                ok = np.isfinite(bpb)
                ax_bpb.plot(vx[ok], bpb[ok], color=c, ls="-.", marker="D", ms=3.5, lw=1.2)
        extra = ""
        if n:
            win = auto_window(n) if smooth is None else smooth
            extra = f" (train {ema(tr['loss'], win)[-1]:.3f}"
            last_val = va["loss"][-1] if len(vx) else np.nan
            extra += f", val {last_val:.3f})" if np.isfinite(last_val) else ")"
        run_handles.append(Line2D([], [], color=c, lw=2, label=label + extra))

    ax_loss.set_title("loss (nats/token)")
    if log_loss:
        ax_loss.set_yscale("log")
    style = [Line2D([], [], color="0.4", alpha=0.35, lw=1, label="train (raw)"),
             Line2D([], [], color="0.4", lw=1.6, label="train (smoothed)"),
             Line2D([], [], color="0.4", ls="--", marker="o", ms=3.5, label="val")]
    if any_average:
        style.append(Line2D([], [], color="0.4", ls="-.", marker="d", ms=4,
                            label="moving average of the weights"))
    for name, mk in set_markers.items():
        style.append(Line2D([], [], color="0.4", ls=":", marker=mk, ms=4, label=f"val {name}"))
    if any_skipped:
        style.append(Line2D([], [], color="0.4", ls="none", marker="x", ms=6, mew=1.5,
                            label="update skipped"))
    leg = ax_loss.legend(handles=style, loc="upper right", fontsize=8)
    ax_loss.add_artist(leg)
    ax_loss.legend(handles=run_handles, loc="lower left", fontsize=8)
    # zoom on the interesting part: ignore the first few % of the curve for the y-range
    all_loss = [r.train["loss"][len(r.train["loss"]) // 20:] for r in runs if r.n_train] + \
               [r.val["loss"] for r in runs if r.n_val] + \
               [r.val_ema["loss"] for r in runs if r.val_ema]
    vals = np.concatenate(all_loss) if all_loss else np.array([])
    vals = vals[np.isfinite(vals)]
    if vals.size and not log_loss:
        lo, hi = float(vals.min()), float(np.percentile(vals, 99.5))
        pad = 0.05 * (hi - lo if hi > lo else max(abs(hi), 1.0))
        ax_loss.set_ylim(lo - pad, hi + pad)

    ax_acc.set_title("val top-1 accuracy (%)")
    if any_choices:
        ax_acc.set_title("val accuracy (%)")
        kinds = ax_acc.legend(handles=[
            Line2D([], [], color="0.4", ls="--", marker="o", ms=3.5, label="top-1 next token"),
            Line2D([], [], color="0.4", ls=":", marker="s", ms=3.5,
                   label="multiple choice (eval.choices)")], loc="best", fontsize=8)
        ax_acc.add_artist(kinds)  # kept beside the runs' legend below
    if ax_bpb is not None:
        ax_acc.set_title(ax_acc.get_title() + " and val bits per byte (-.)")
        ax_bpb.set_ylabel("val bits per byte (eval.bits_per_byte)")
    ax_lr.set_title("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_gn.set_title("gradient norm (before clipping)")
    if any(r.n_train and np.nanmin(r.train["grad_norm"]) > 0 for r in runs):
        ax_gn.set_yscale("log")
    ax_tps.set_title("tokens / s")
    ax_mfu.set_title("MFU (%)")
    if moe:
        ax_load.set_title("busiest expert's load (E · max share; 1: balanced)")
        ax_drop.set_title("choices dropped over capacity (%)")
        if not drop_drawn:  # say why the panel is empty
            ax_drop.text(0.5, 0.5, "dropless: no run has model.moe_capacity_factor",
                         ha="center", va="center", transform=ax_drop.transAxes, color="0.4")
        ax_terms.set_title("routing loss terms")
        ax_terms.legend(handles=[Line2D([], [], color="0.4", lw=1.4, label="load balancing"),
                                 Line2D([], [], color="0.4", lw=1.4, ls="--",
                                        label="router z-loss")], loc="best", fontsize=8)
    if dpo:
        ax_loss.set_title("loss (nats/token; preference tuning: the pairs' loss)")
        ax_right.set_title("pairs whose chosen reward is the higher (%)")
        ax_margin.set_title("reward margin, chosen - rejected")
        ax_held.set_title("held-out pairs' loss (eval.preferences)")
        for ax in (ax_right, ax_margin):
            ax.legend(handles=[Line2D([], [], color="0.4", lw=1.6, label="train (smoothed)"),
                               Line2D([], [], color="0.4", ls="--", marker="o", ms=3.5,
                                      label="held out (eval.preferences)")],
                      loc="best", fontsize=8)
        if not logged("val", "dpo_loss"):  # say why the panel is empty
            ax_held.text(0.5, 0.5, "no run has eval.preferences", ha="center", va="center",
                         transform=ax_held.transAxes, color="0.4")
    for ax in (ax_tps, ax_mfu, ax_acc):
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    for ax in axes.ravel():
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    if len(runs) > 1:
        ax_acc.legend(handles=[Line2D([], [], color=h.get_color(), lw=2, label=l)
                               for h, l in zip(run_handles, labels)], loc="center right",
                      fontsize=8)

    if title is None:
        if len(runs) == 1:
            r = runs[0]
            bits = [r.name]
            if r.attrs.get("grid"):
                bits.append(str(r.attrs["grid"]))
            n_params = r.attrs.get("n_params")
            if isinstance(n_params, (int, float)) and n_params > 0:  # (not a damaged file's text)
                bits.append(f"{n_params / 1e6:.2f}M params")
            title = " | ".join(bits)
        else:
            title = f"{len(runs)} runs"
    fig.suptitle(title)

    return save_figure(fig, out, dpi=dpi)


def main(argv: list[str] | None = None) -> int:
    prog = prog_name("python -m analysis.plot_curves")
    ap = argparse.ArgumentParser(
        prog=prog, description="Plot training curves of triad runs: loss (train, val) against "
        "steps or tokens, val accuracy, learning rate, gradient norm, tokens/s and MFU; several "
        "runs overlaid. Reads runs that are still training.")
    ap.add_argument("runs", nargs="+", metavar="RUN",
                    help="run directories (holding metrics.h5) or metrics.h5 files")
    ap.add_argument("--out", "-o", default="curves.png",
                    help="output image (.png, .pdf, .svg; default curves.png)")
    ap.add_argument("--x", choices=["step", "tokens"], default="step", help="x axis")
    ap.add_argument("--smooth", type=number_arg(1), default=None,
                    help="EMA span in steps for the smoothed curves (default: n/40, max 200; "
                         "1 = none)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--log-loss", action="store_true", help="log-scale loss axis")
    ap.add_argument("--dpi", type=int, default=120)
    ap.add_argument("--allow-partial", action="store_true",
                    help="accept datasets of unequal length (a damaged file) by truncating to "
                         "the shortest; a difference of one row (a file being written) is "
                         "always accepted")
    a = ap.parse_args(argv)

    def body() -> int:
        check_figure_out(a.out, a.dpi)
        runs = load_runs(a.runs, prog, strict=not a.allow_partial)
        for r in runs:
            print(f"  {r.summary()}", file=sys.stderr)
        out = plot_runs(runs, a.out, x=a.x, smooth=a.smooth, title=a.title,
                        log_loss=a.log_loss, dpi=a.dpi)
        print(out)
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    sys.exit(main())
