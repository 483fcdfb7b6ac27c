"""triad-average: the element-wise mean of a run's checkpoints, as one checkpoint.

    triad-average runs/gpt2/ckpt/step_00009000.h5 runs/gpt2/ckpt/step_00010000.h5 \\
        --out runs/gpt2/avg_last2.h5
    build/triad-train --config RUN.ini --eval-only --init-from runs/gpt2/avg_last2.h5
    # the moving average of the weights a run kept (optim.ema_decay), as a model of its own
    triad-average --ema runs/gpt2/ckpt/step_00010000.h5 --out runs/gpt2/ema.h5

Averaging the weights of the last checkpoints of a run (LAWA, and the checkpoint averaging of
Llama 3's annealing) often gives a model better than each of them. The inputs must be complete
triad checkpoints whose checksums verify, of one model: the same /model attributes and the same
tensors at the same shapes (any grids wrote them: checkpoints hold full tensors). Each tensor of
the output is the mean of the inputs' (summed in float64, stored as fp32) with its CRC-32; the
root attributes are the newest input's (by step) plus `averaged_from` (each input's path and
step), and so is `/router_bias` (a mixture's routers' biases, which no optimizer updates). The output holds no optimizer state, so it is for `--init-from`, `--eval-only`,
`triad-generate` and `triad-convert export`, not for `--resume`; a name a run directory would
take for a resumable checkpoint (step_NNNNNNNN.h5) is refused. It is written under a temporary
name and published only where nothing is, so it never replaces a file.

With --ema each input contributes its /optimizer/ema tensors (the moving average of a run with
optim.ema_decay) in place of its /model ones, and one input is enough; an input without that
group is refused.
"""

from __future__ import annotations

import argparse
import os
import re
import zlib
from pathlib import Path

import numpy as np

from .cli import AnalysisError, prog_name, run_main
from .convert_weights import finish
from .inspect_checkpoint import Report, inspect, model_attrs_with_defaults
from .weights_triad import _string_attr


class AverageError(AnalysisError):
    pass


def _check_inputs(reps: list[Report]) -> None:
    for rep in reps:
        if rep.kind != "checkpoint" or not rep.ok or not rep.complete:
            raise AverageError(rep.headline() or f"{rep.path}: not a complete checkpoint")
    first = reps[0]
    described = model_attrs_with_defaults(first.model_attrs)
    for rep in reps[1:]:
        theirs = model_attrs_with_defaults(rep.model_attrs)
        for k in sorted(set(described) | set(theirs)):
            a, b = described.get(k), theirs.get(k)
            if np.asarray(a).tolist() != np.asarray(b).tolist():
                raise AverageError(f"{first.path} and {rep.path} hold different models: /model "
                                   f"attribute {k} is {a!r} against {b!r}")
        mine = {n: d[0] for n, d in first.datasets.items() if n.startswith("model/")}
        theirs = {n: d[0] for n, d in rep.datasets.items() if n.startswith("model/")}
        if mine != theirs:
            diff = sorted(set(mine.items()) ^ set(theirs.items()))[0]
            raise AverageError(f"{first.path} and {rep.path} hold different tensors: "
                               f"{diff[0]} {tuple(diff[1])} is in only one of them")


def _copy_attrs(src, dst, skip: tuple = ()) -> None:
    """Attributes as triad writes them: strings fixed-length, numbers with their own types."""
    for k in src.attrs:
        if k in skip:
            continue
        v = src.attrs[k]
        if isinstance(v, (bytes, str)) or (isinstance(v, np.ndarray) and v.dtype.kind == "S"):
            text = v.decode() if isinstance(v, bytes) else str(np.asarray(v).astype(str))
            _string_attr(dst, k, text)
        else:
            a = np.asarray(v)
            dst.attrs.create(k, a, dtype=a.dtype)


def average(paths: list[Path], out: Path, ema: bool = False) -> tuple[int, int]:
    """Writes the mean of the checkpoints `paths` (ema: of their moving averages) to `out`;
    returns (tensors, parameters)."""
    import h5py

    if len(paths) < (1 if ema else 2):
        raise AverageError("give two or more checkpoints to average")
    if re.fullmatch(r"step_\d{8}\.h5", out.name):
        raise AverageError(f"{out}: a run takes step_NNNNNNNN.h5 for a resumable checkpoint, "
                           "which an average (no optimizer state) is not; choose another name")
    resolved = [p.resolve() for p in paths]
    twice = next((p for i, p in enumerate(paths) if resolved[i] in resolved[:i]), None)
    if twice is not None:
        raise AverageError(f"{twice}: given twice (it would weigh double in the mean)")
    reps = [inspect(p, verify=True) for p in paths]
    # The same file by two names: a run directory and its newest checkpoint, a hard link.
    seen: dict[tuple[int, int], Path] = {}
    for given, r in zip(paths, reps):
        try:
            st = os.stat(r.path)
        except OSError:
            continue  # (missing: _check_inputs names it)
        first = seen.setdefault((st.st_dev, st.st_ino), given)
        if first is not given:
            raise AverageError(f"{given}: the same file as {first} ({r.path}; it would weigh "
                               f"double in the mean)")
    _check_inputs(reps)
    steps = [int(r.root_attrs.get("step", 0)) for r in reps]
    newest = reps[int(np.argmax(steps))]
    names = sorted(n for n in reps[0].datasets if n.startswith("model/"))
    # Where each tensor is read: /model, or with --ema /optimizer/ema (every tensor of the model).
    source = {n: ("optimizer/ema/" + n[len("model/"):] if ema else n) for n in names}
    for rep in reps if ema else []:
        missing = [n for n in names if source[n] not in rep.datasets]
        if missing:
            raise AverageError(f"{rep.path} holds no moving average of the weights "
                               f"(/{source[missing[0]]}): train with optim.ema_decay > 0")
        if rep.datasets[source[names[0]]][0] != rep.datasets[names[0]][0]:
            raise AverageError(f"{rep.path}: /{source[names[0]]} is not shaped as "
                               f"/{names[0]}")
    count = [0, 0]

    def write(tmp: Path) -> None:
        files = [h5py.File(r.path, "r") for r in reps]
        try:
            with h5py.File(tmp, "w") as f:
                src = files[reps.index(newest)]
                _copy_attrs(src, f, skip=("complete",))
                _string_attr(f, "averaged_from", ", ".join(
                    f"{r.path} (step {s}{', its moving average' if ema else ''})"
                    for r, s in zip(reps, steps)))
                m = f.create_group("model")
                _copy_attrs(src["model"], m)
                for name in names:
                    total = np.zeros(files[0][name].shape, dtype=np.float64)
                    for h in files:
                        total += h[source[name]][...]
                    a = np.ascontiguousarray(total / len(files), dtype="<f4")
                    ds = f.create_dataset(name, data=a, dtype="<f4")
                    ds.attrs.create("checksum", np.uint32(zlib.crc32(a.tobytes()) & 0xFFFFFFFF),
                                    dtype="<u4")
                    count[0] += 1
                    count[1] += a.size
                # A mixture's routers' biases (train.moe_bias_rate) are no weights of the
                # optimizer's: the newest input's, so the output routes as that checkpoint does.
                if "router_bias" in src:
                    src.copy(src["router_bias"], f, name="router_bias")
                f.flush()
                f.attrs.create("complete", np.int64(1), dtype="<i8")
        finally:
            for h in files:
                h.close()

    finish(out, write)
    return count[0], count[1]


def main(argv: list[str] | None = None) -> int:
    prog = prog_name("python -m analysis.average_checkpoints")
    ap = argparse.ArgumentParser(
        prog=prog, description="The element-wise mean of checkpoints of one model, as one "
        "checkpoint (weights only: for --init-from, --eval-only, triad-generate).")
    ap.add_argument("ckpts", nargs="+", type=Path,
                    help="two or more checkpoint files (one or more with --ema)")
    ap.add_argument("--out", type=Path, required=True, help="the checkpoint to write")
    ap.add_argument("--ema", action="store_true",
                    help="average the checkpoints' moving averages of the weights "
                    "(/optimizer/ema, optim.ema_decay) instead of their weights")
    a = ap.parse_args(argv)

    def body() -> int:
        tensors, params = average(a.ckpts, a.out, a.ema)
        n = len(a.ckpts)
        what = (f"the mean of {n} checkpoints" if not a.ema else
                f"the moving average of the weights of {a.ckpts[0]}" if n == 1 else
                f"the mean of the moving averages of {n} checkpoints")
        print(f"{prog}: wrote {a.out}: {what}, {tensors} tensors, {params} values")
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    raise SystemExit(main())
