"""Throughput and parallel efficiency of several runs of one model on different rank counts.

    triad-scaling runs/dp1 runs/dp2 runs/dp4 [--out scaling.png] [--csv scaling.csv]

Each run's rank count comes from its `grid` attribute ("dp=2 pp=1 tp=1" -> dp·pp·tp = 2; with
context parallelism "dp=1 pp=1 tp=1 cp=4" -> 4),
its throughput is the median tokens/s of /train without the first --skip steps (start-up).
Efficiency = (tokens/s per rank) / (tokens/s per rank of the run on the fewest ranks);
speed-up = tokens/s / tokens/s of that run. Prints a Markdown table and writes a PNG
(throughput with the ideal line, efficiency) against the rank count. The runs must be of the
same model (model.* of their configs); --any-model compares different ones anyway.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .cli import AnalysisError, count_arg, prog_name, run_main
from .figures import check_figure_out, save_figure
from .tables import fmt, markdown_table
from .metrics import Metrics, load_runs, parse_grid, steady_tokens_per_sec

MODEL_KEYS = ("model.n_layer", "model.n_head", "model.n_kv_head", "model.n_embd",
              "model.seq_len", "model.vocab_size", "model.position", "model.norm", "model.bias",
              "model.mlp", "model.mlp_hidden", "model.qk_norm", "model.rope_scaling",
              "model.qkv_bias", "model.mlp_bias", "model.norm_eps", "model.head_dim",
              "model.logit_softcap", "model.attn_scale", "model.mup_base_width", "model.rotary_dim", "model.norm_bias",
              "model.embed_scale", "model.parallel_residual", "model.branch_norm",
              "model.attn_softcap", "model.logit_scale", "model.residual_scale",
              "model.shared_norm", "model.head_bias", "model.clip_qkv", "model.norm_weight",
              "model.qk_norm_full", "model.attn_sinks", "model.glu_alpha", "model.glu_limit",
              "model.glu_offset")
# What a run from before a key existed had (its config does not name it).
MODEL_DEFAULTS = {"model.position": "learned", "model.norm": "layernorm", "model.bias": "true",
                  "model.mlp": "gelu", "model.mlp_hidden": "0", "model.n_kv_head": "0",
                  "model.qk_norm": "false", "model.qk_norm_full": "false",
                  "model.attn_sinks": "false", "model.glu_alpha": "1", "model.glu_limit": "0",
                  "model.glu_offset": "0",
                  "model.rope_scaling": "none",
                  "model.qkv_bias": "false", "model.mlp_bias": "false",
                  "model.norm_eps": "1e-05", "model.head_dim": "0",
                  "model.logit_softcap": "0", "model.attn_scale": "0",
                  "model.mup_base_width": "0", "model.rotary_dim": "0",
                  "model.norm_bias": "false", "model.embed_scale": "1",
                  "model.parallel_residual": "false", "model.branch_norm": "false",
                  "model.attn_softcap": "0", "model.logit_scale": "1",
                  "model.residual_scale": "1", "model.shared_norm": "false",
                  "model.head_bias": "false", "model.clip_qkv": "0",
                  "model.norm_weight": "true"}


def _run_label(m: Metrics) -> str:
    return str(m.path.parent if m.path.name == "metrics.h5" else m.path)


def scaling_table(runs: list[Metrics], skip: int = 5, any_model: bool = False):
    """A pandas DataFrame, one row per run ordered by rank count (stable)."""
    import pandas as pd

    rows = []
    for m in runs:
        grid = parse_grid(m.attrs.get("grid"))
        if grid is None:
            raise AnalysisError(f"{m.path}: no usable 'grid' attribute (got "
                                f"{m.attrs.get('grid')!r}; expected e.g. 'dp=2 pp=1 tp=1')")
        if m.n_train == 0:
            raise AnalysisError(f"{m.path}: no training steps recorded yet (/train is empty)")
        tps, used = steady_tokens_per_sec(m, skip)
        if not np.isfinite(tps) or tps <= 0:
            raise AnalysisError(f"{m.path}: no positive tokens/s in /train/tokens_per_sec")
        ranks = grid["dp"] * grid["pp"] * grid["tp"] * grid["cp"]
        label = f"dp={grid['dp']} pp={grid['pp']} tp={grid['tp']}"
        rows.append({"run": m.name, "path": _run_label(m),
                     "grid": label + (f" cp={grid['cp']}" if grid["cp"] > 1 else ""),
                     "ranks": ranks, "batch_size": m.config("train.batch_size", ""),
                     "steps_used": used, "tokens_per_sec": tps,
                     "tokens_per_sec_per_rank": tps / ranks})
    if not any_model and len(runs) > 1:
        def model_of(m):
            model = {k: m.config(k, MODEL_DEFAULTS.get(k)) for k in MODEL_KEYS}
            if model["model.n_kv_head"] == "0":  # 0 is n_head: the same model as n_head written
                model["model.n_kv_head"] = model["model.n_head"]
            return model

        ref = model_of(runs[0])
        for m in runs[1:]:
            got = model_of(m)
            diff = [f"{k} {ref[k]} vs {got[k]}" for k in MODEL_KEYS if got[k] != ref[k]]
            if diff:
                raise AnalysisError(f"{m.path}: another model than {runs[0].path} "
                                    f"({'; '.join(diff)}); --any-model to compare anyway")
    df = pd.DataFrame(rows)
    df = df.sort_values("ranks", kind="stable").reset_index(drop=True)
    base = df.iloc[0]
    df["speedup"] = df["tokens_per_sec"] / base["tokens_per_sec"]
    df["efficiency"] = df["tokens_per_sec_per_rank"] / base["tokens_per_sec_per_rank"]
    return df


def to_markdown(df) -> str:
    headers = ["run", "grid", "ranks", "batch", "tokens/s", "tokens/s per rank", "speed-up",
               "efficiency", "steps used"]
    rows = [[r["run"], r["grid"], str(r["ranks"]), str(r["batch_size"]),
             fmt(r["tokens_per_sec"]), fmt(r["tokens_per_sec_per_rank"]),
             f"{r['speedup']:.2f}", f"{r['efficiency']:.2f}", str(r["steps_used"])]
            for r in df.to_dict("records")]
    return markdown_table(headers, rows, align_right=[False, False] + [True] * 7)


def plot(df, out: Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    r = df["ranks"].to_numpy(dtype=float)
    tps = df["tokens_per_sec"].to_numpy(dtype=float)
    eff = df["efficiency"].to_numpy(dtype=float)
    base_r, base_t = r[0], tps[0]
    xs = np.unique(r)
    ax_t.plot(xs, base_t * xs / base_r, ls="--", color="0.5", label="ideal (linear)")
    ax_t.plot(r, tps, "o", color="C0", label="measured")
    ax_e.axhline(1.0, ls="--", color="0.5")
    ax_e.plot(r, eff, "o", color="C1")
    # one line through the best run of each rank count
    best = df.loc[df.groupby("ranks")["tokens_per_sec"].idxmax()].sort_values("ranks")
    ax_t.plot(best["ranks"], best["tokens_per_sec"], "-", color="C0", alpha=0.6)
    ax_e.plot(best["ranks"], best["efficiency"], "-", color="C1", alpha=0.6)
    for x, t, e, g in zip(r, tps, eff, df["grid"]):
        ax_t.annotate(g, (x, t), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax_e.annotate(g, (x, e), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for ax in (ax_t, ax_e):
        ax.set_xlabel("ranks (dp·pp·tp)")
        if len(xs) > 1 and xs.max() / xs.min() >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(int(x)) for x in xs])
        ax.grid(True, alpha=0.3)
    ax_t.set_ylabel("tokens / s")
    ax_t.set_title("throughput")
    ax_t.legend(fontsize=8)
    ax_e.set_ylabel("efficiency")
    ax_e.set_title("parallel efficiency (per-rank throughput / smallest run's)")
    ax_e.set_ylim(0, max(1.1, float(np.nanmax(eff)) * 1.1))
    fig.suptitle(title or f"scaling: {len(df)} runs")
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    prog = prog_name("python -m analysis.scaling")
    ap = argparse.ArgumentParser(
        prog=prog, description="Throughput and parallel efficiency against rank count from "
        "several runs of the same model (rank count from each run's grid attribute).")
    ap.add_argument("runs", nargs="+", metavar="RUN",
                    help="run directories (holding metrics.h5) or metrics.h5 files")
    ap.add_argument("--out", "-o", default="scaling.png", help="figure (default scaling.png)")
    ap.add_argument("--csv", default=None, help="also write the table as CSV")
    ap.add_argument("--skip", type=count_arg, default=5,
                    help="steps left out of the tokens/s median (start-up; default 5)")
    ap.add_argument("--any-model", action="store_true",
                    help="accept runs of different models")
    ap.add_argument("--title", default=None)
    a = ap.parse_args(argv)

    def body() -> int:
        check_figure_out(a.out)
        if a.csv == "":
            raise AnalysisError("--csv is empty: give a file (or leave it out)")
        runs = load_runs(a.runs, prog, strict=False)
        df = scaling_table(runs, skip=a.skip, any_model=a.any_model)
        print(to_markdown(df))
        if a.csv:
            try:
                Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
                df.to_csv(a.csv, index=False, float_format="%.6g")
            except OSError as e:
                raise AnalysisError(f"{a.csv}: cannot write: {e}") from None
            print(f"wrote {a.csv}", file=sys.stderr)
        out = plot(df, a.out, a.title)
        print(f"wrote {out}", file=sys.stderr)
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    sys.exit(main())
