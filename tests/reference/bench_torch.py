#!/usr/bin/env python3
"""The PyTorch side of the CPU speed benchmark (jobs/bench-cpu.sh runs triad, then this).

Trains the model of a triad run config (same model, batch, micro-batch, optimizer settings)
in float32 with a nanoGPT-style step — per micro-batch forward + loss + backward, then
clip_grad_norm_, AdamW step, zero_grad — on random tokens, with the given thread count, and
reports the median tokens/s over the steps after the warm-up. The peer gets the same OpenBLAS
kernels as triad (see main) and runs under two thread settings, the faster one counting. With
--triad-metrics it also reads triad's /train/tokens_per_sec from metrics.h5 and prints both and
the ratio.

  bench_torch.py --config inputs/runs/bench-cpu.ini --threads 2 [--steps 10] [--warmup 2]
                 [--recompute none|full] [--triad-metrics RUN/metrics.h5] [--triad-log RUN/log.txt]
"""

from __future__ import annotations

import argparse
import configparser
import fnmatch
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
    ap.add_argument("--freeze", default="",
                    help="comma-separated globs (triad's train.freeze): those tensors get "
                         "requires_grad = False and stay out of the optimizer")
    ap.add_argument("--recompute", choices=["none", "full"], default="none",
                    help="full: each layer under torch.utils.checkpoint (activation recompute)")
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="nanoGPT's dropout: the embedding's output, the attention probabilities "
                         "and each branch's output (triad's train.hidden_dropout and "
                         "train.attention_dropout)")
    ap.add_argument("--no-single-intra-op", action="store_true",
                    help="skip the run with torch.set_num_threads(1) + N OpenBLAS threads")
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


PRE_AVX2_CORES = {"Unknown", "Katmai", "Coppermine", "Northwood", "Prescott", "Banias", "Atom",
                  "Core2", "Penryn", "Dunnington", "Nehalem", "Sandybridge"}


def best_openblas_core():
    """The OpenBLAS kernel set triad's CPU backend selects for this CPU (cpu_blas.cpp)."""
    try:
        flags = set()
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return None
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def openblas_core():
    """(library, kernel set) of the system OpenBLAS that torch's matmuls run on, or None."""
    import ctypes

    for path in blas_in_use():
        if "openblas" in os.path.basename(path) and "numpy" not in path:
            try:
                lib = ctypes.CDLL(path)
                lib.openblas_get_corename.restype = ctypes.c_char_p
                return path, lib.openblas_get_corename().decode()
            except (OSError, AttributeError):
                continue
    return None


def openblas_thread_setter(path):
    """A function setting OpenBLAS's thread count at run time (no-op without OpenBLAS)."""
    import ctypes

    if path:
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads
            fn.argtypes = [ctypes.c_int]
            return fn
        except (OSError, AttributeError):
            pass
    return lambda n: None


def prepare_torch(threads: int) -> str:
    """Imports torch with `threads` OpenMP and OpenBLAS threads (set before its pools start) and
    the OpenBLAS kernels triad's CPU backend selects; returns a note for the machine line.

    OpenBLAS (DYNAMIC_ARCH) picks its kernels from cpuid at load time; 0.3.21 does not know
    recent Xeons and falls back to the SSE3 "Prescott" kernels (~3x slower sgemm). triad's CPU
    backend then selects SkylakeX/Haswell itself; the PyTorch peer gets the same kernels
    (OPENBLAS_CORETYPE is read at load time: the script re-runs itself with it set)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.ones(64, 64) @ torch.ones(64, 64)
    core = openblas_core()
    if core and core[1] in PRE_AVX2_CORES and "OPENBLAS_CORETYPE" not in os.environ:
        better = best_openblas_core()
        if better:
            os.environ["OPENBLAS_CORETYPE"] = better
            os.environ["TRIAD_BENCH_OPENBLAS_DETECTED"] = core[1]
            sys.stdout.flush()
            os.execv(sys.executable, [sys.executable] + sys.argv)
    torch.set_num_threads(threads)
    if "TRIAD_BENCH_OPENBLAS_DETECTED" in os.environ:
        return (f" (selected as triad does; OpenBLAS detected "
                f"{os.environ['TRIAD_BENCH_OPENBLAS_DETECTED']})")
    return ""


def main():
    args = parse_args()
    core_note = prepare_torch(args.threads)
    import numpy as np
    import torch

    core = openblas_core()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gpt_torch as ref


    cp = configparser.ConfigParser(inline_comment_prefixes=("#",))
    cp.read(args.config)
    # The peer is GPT-2: a config with another architecture would be measured against the wrong
    # model, so it is refused rather than silently read as GPT-2.
    gpt2 = {"position": "learned", "norm": "layernorm", "bias": "true", "mlp": "gelu",
            "mlp_hidden": "0", "tie_embeddings": "true", "n_kv_head": "0", "qk_norm": "false"}
    same = {"n_kv_head": cp.get("model", "n_head", fallback="12").strip(),  # 0 means these
            "mlp_hidden": str(4 * int(cp.get("model", "n_embd", fallback="768")))}
    for key, default in gpt2.items():
        value = cp.get("model", key, fallback=default).strip().lower()
        if value not in (default, same.get(key)):
            sys.exit(f"bench_torch: {args.config}: model.{key} = {value}; the PyTorch peer "
                     f"here is GPT-2's architecture ({key} = {default})")
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

    # Machine line: fp32 sgemm rate through torch (the BLAS both sides use), median of runs.
    n = args.sgemm_size
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    runs, t_end = [], time.perf_counter() + 1.5
    while len(runs) < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        runs.append(time.perf_counter() - t0)
    sgemm_gflops = 2 * n ** 3 / statistics.median(runs) / 1e9

    set_blas_threads = openblas_thread_setter(core[0] if core else None)

    def train(intra_op_threads: int):
        """Times `steps` nanoGPT-style training steps; returns the step times (s)."""
        torch.set_num_threads(intra_op_threads)
        set_blas_threads(args.threads)
        torch.manual_seed(0)
        model = ref.build_model(ref.random_weights(cfg, seed=0, perturb=False), cfg, fast=True,
                                checkpoint_layers=args.recompute == "full",
                                dropout=args.dropout)
        model.train()
        globs = [g.strip() for g in args.freeze.split(",") if g.strip()]
        for name, t in model.tensors().items():  # fine-tuning part of the model
            if any(fnmatch.fnmatchcase(name, g) for g in globs):
                t.requires_grad_(False)
        groups = [dict(g, params=[p for p in g["params"] if p.requires_grad])
                  for g in model.param_groups(wd)]
        opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
        gen = torch.Generator().manual_seed(1)
        data = torch.randint(0, cfg.vocab_size, (steps * B, T + 1), generator=gen)
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
        return times

    def summary(times):
        kept = times[args.warmup:] or times
        return statistics.median(B * T / t for t in kept), statistics.median(kept)

    # PyTorch's OpenMP pool and OpenBLAS's pthread pool both spin after their work and fight
    # over the cores when they alternate (triad avoids this by running OpenBLAS inside its own
    # OpenMP threads). So the peer runs twice and the faster one counts: (a) the usual setting,
    # torch.set_num_threads(N) and OpenBLAS N threads; (b) torch's own ops on 1 thread, OpenBLAS
    # N threads.
    configs = [(f"pytorch, {args.threads} torch + {args.threads} BLAS threads", args.threads)]
    if args.threads > 1 and not args.no_single_intra_op:
        configs.append((f"pytorch, 1 torch + {args.threads} BLAS threads", 1))
    torch_rows = []
    for label, intra in configs:
        print(f"== {label}", flush=True)
        torch_rows.append((label,) + summary(train(intra)))
    best = max(torch_rows, key=lambda r: r[1])

    blas_line = next((ln.strip() for ln in torch.__config__.show().splitlines()
                      if "BLAS_INFO" in ln), "")
    m = re.search(r"BLAS_INFO=([^,]*)", blas_line)
    print()
    print(f"model: n_layer={cfg.n_layer} n_head={cfg.n_head} n_embd={cfg.n_embd} "
          f"seq_len={T} vocab={cfg.vocab_size} (padded {cfg.padded_vocab_size}) | batch {B} = "
          f"{accum} x {mbs} sequences | {steps} steps, median of steps {args.warmup}.."
          f"{steps - 1} | threads {args.threads} | recompute {args.recompute}"
          + (f" | frozen: {args.freeze}" if args.freeze else "")
          + (f" | dropout {args.dropout}" if args.dropout > 0 else ""))
    print(f"torch {torch.__version__}: BLAS_INFO={m.group(1) if m else '?'}; BLAS libraries "
          f"loaded: {', '.join(blas_in_use()) or '?'}")
    if core:
        print(f"OpenBLAS kernels used by torch: {core[1]}{core_note} [{core[0]}]")
    print(f"sgemm fp32 {n}^3 via torch ({args.threads} BLAS threads): {sgemm_gflops:.1f} GFLOP/s")
    if args.triad_log and Path(args.triad_log).is_file():
        for line in Path(args.triad_log).read_text().splitlines():
            pk = re.search(r"peak ([0-9.]+) GFLOP/s", line)
            if pk:
                print(f"sgemm peak measured by triad-train (1024^3, best of 3): {pk.group(1)} "
                      f"GFLOP/s")
                break

    rows = list(torch_rows)
    triad_tps = None
    if args.triad_metrics:
        import h5py

        with h5py.File(args.triad_metrics, "r") as f:
            t_tps = np.asarray(f["train/tokens_per_sec"][...], dtype=float)
            t_ms = np.asarray(f["train/step_ms"][...], dtype=float)
        sel = slice(args.warmup, None) if t_tps.size > args.warmup else slice(None)
        triad_tps = float(np.median(t_tps[sel]))
        rows.insert(0, (f"triad, {args.threads} threads", triad_tps,
                        float(np.median(t_ms[sel])) / 1e3))
    print()
    print(f"{'':44s} {'tokens/s':>10s} {'step ms':>10s}")
    for name, v, t in rows:
        print(f"{name:44s} {v:10.0f} {t * 1e3:10.0f}")
    if triad_tps is not None:
        print(f"ratio triad/pytorch = {triad_tps / best[1]:.2f}   (pytorch = the faster: "
              f"{best[0]})")


if __name__ == "__main__":
    main()
