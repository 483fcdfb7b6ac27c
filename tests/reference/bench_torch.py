#!/usr/bin/env python3
"""The PyTorch side of the CPU speed benchmark (jobs/bench-cpu.sh runs triad, then this).

Trains the model of a triad run config (same model, batch, micro-batch, optimizer settings)
in float32 with a nanoGPT-style step — per micro-batch forward + loss + backward, then
clip_grad_norm_, AdamW step, zero_grad — on random tokens, with the given thread count, and
reports the median tokens/s over the steps after the warm-up. With --triad-metrics it also
reads triad's /train/tokens_per_sec from metrics.h5 and prints both and the ratio.

  bench_torch.py --config inputs/runs/bench-cpu.ini --threads 2 [--steps 10] [--warmup 2]
                 [--triad-metrics RUN/metrics.h5] [--triad-log RUN/log.txt]
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import statistics
import sys
import time
from pathlib import Path


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="triad run config (INI)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=None, help="default: train.steps of the INI")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    ap.add_argument("--triad-metrics", help="triad's metrics.h5 of the same benchmark")
    ap.add_argument("--triad-log", help="triad's log.txt (for its measured sgemm peak)")
    ap.add_argument("--sgemm-size", type=int, default=2048)
    return ap.parse_args()


def ini_value(cp, section, key, default, cast):
    if cp.has_option(section, key):
        return cast(cp.get(section, key).split("#")[0].strip())
    return default


def blas_in_use():
    """The BLAS libraries mapped into this process (after a matmul has loaded them)."""
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if re.search(r"blas|mkl|blis|lapack", os.path.basename(path)):
                    libs.add(os.path.realpath(path))
    except OSError:
        pass
    return sorted(libs)


def main():
    args = parse_args()
    # Thread counts before torch starts its pools: OpenMP (ATen) and OpenBLAS's own threads.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gpt_torch as ref

    torch.set_num_threads(args.threads)

    cp = configparser.ConfigParser(inline_comment_prefixes=("#",))
    cp.read(args.config)
    cfg = ref.GptConfig(
        n_layer=ini_value(cp, "model", "n_layer", 12, int),
        n_head=ini_value(cp, "model", "n_head", 12, int),
        n_embd=ini_value(cp, "model", "n_embd", 768, int),
        seq_len=ini_value(cp, "model", "seq_len", 1024, int),
        vocab_size=ini_value(cp, "model", "vocab_size", 50257, int))
    B = ini_value(cp, "train", "batch_size", 8, int)
    mbs = ini_value(cp, "train", "micro_batch_size", 8, int)
    steps = args.steps or ini_value(cp, "train", "steps", 10, int)
    lr = ini_value(cp, "train", "lr", 6e-4, float)
    clip = ini_value(cp, "train", "grad_clip", 1.0, float)
    wd = ini_value(cp, "optim", "weight_decay", 0.1, float)
    betas = (ini_value(cp, "optim", "beta1", 0.9, float),
             ini_value(cp, "optim", "beta2", 0.95, float))
    eps = ini_value(cp, "optim", "eps", 1e-8, float)
    assert B % mbs == 0, "batch_size must be a multiple of micro_batch_size"
    accum, T = B // mbs, cfg.seq_len

    # Machine line: fp32 sgemm rate through torch (the BLAS both sides use).
    n = args.sgemm_size
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 1.0:
        a @ b
        reps += 1
    sgemm_gflops = 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9

    torch.manual_seed(0)
    model = ref.build_model(ref.random_weights(cfg, seed=0, perturb=False), cfg, fast=True)
    model.train()
    opt = torch.optim.AdamW(model.param_groups(wd), lr=lr, betas=betas, eps=eps)
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, cfg.vocab_size, (steps * B + 1, T + 1), generator=gen)

    times = []
    for s in range(steps):
        t0 = time.perf_counter()
        for m in range(accum):
            chunk = data[s * B + m * mbs: s * B + (m + 1) * mbs]
            x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
            _, loss = model(x, y)
            (loss / accum).backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        times.append(dt)
        print(f"torch step {s:3d} | loss {loss.item():.4f} | {B * T / dt:8.0f} tok/s | "
              f"{dt * 1e3:.0f} ms", flush=True)
    tps = [B * T / t for t in times[args.warmup:]] or [B * T / t for t in times]
    torch_tps = statistics.median(tps)

    blas_line = next((ln.strip() for ln in torch.__config__.show().splitlines()
                      if "BLAS_INFO" in ln), "")
    m = re.search(r"BLAS_INFO=([^,]*)", blas_line)
    print()
    print(f"model: n_layer={cfg.n_layer} n_head={cfg.n_head} n_embd={cfg.n_embd} "
          f"seq_len={T} vocab={cfg.vocab_size} (padded {cfg.padded_vocab_size}) | batch {B} = "
          f"{accum} x {mbs} sequences | {steps} steps, median of steps {args.warmup}.."
          f"{steps - 1} | threads {args.threads}")
    print(f"torch {torch.__version__}: BLAS_INFO={m.group(1) if m else '?'}; BLAS libraries "
          f"loaded: {', '.join(blas_in_use()) or '?'}")
    print(f"torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']}, OPENBLAS_NUM_THREADS="
          f"{os.environ['OPENBLAS_NUM_THREADS']})")
    print(f"sgemm fp32 {n}^3 via torch: {sgemm_gflops:.1f} GFLOP/s")
    if args.triad_log and Path(args.triad_log).is_file():
        for line in Path(args.triad_log).read_text().splitlines():
            pk = re.search(r"peak ([0-9.]+) GFLOP/s", line)
            if pk:
                print(f"sgemm peak measured by triad-train: {pk.group(1)} GFLOP/s")
                break

    rows = [("pytorch (float32, AdamW)", torch_tps, statistics.median(times[args.warmup:] or times))]
    triad_tps = None
    if args.triad_metrics:
        import h5py

        with h5py.File(args.triad_metrics, "r") as f:
            t_tps = np.asarray(f["train/tokens_per_sec"][...], dtype=float)
            t_ms = np.asarray(f["train/step_ms"][...], dtype=float)
        sel = slice(args.warmup, None) if t_tps.size > args.warmup else slice(None)
        triad_tps = float(np.median(t_tps[sel]))
        rows.insert(0, ("triad (cpu backend, fp32)", triad_tps, float(np.median(t_ms[sel])) / 1e3))
    print()
    print(f"{'':28s} {'tokens/s':>10s} {'step ms':>10s}")
    for name, v, t in rows:
        print(f"{name:28s} {v:10.0f} {t * 1e3:10.0f}")
    if triad_tps is not None:
        print(f"ratio triad/pytorch = {triad_tps / torch_tps:.2f}")


if __name__ == "__main__":
    main()
