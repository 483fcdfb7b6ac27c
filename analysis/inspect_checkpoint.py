"""Inspect a triad checkpoint (DESIGN.md §5).

    python -m analysis.inspect_checkpoint runs/quick/ckpt/step_00000100.h5
    python -m analysis.inspect_checkpoint runs/quick            # the one ckpt/latest names
    python -m analysis.inspect_checkpoint CKPT --stats --verify  # tensor statistics, CRC-32s

Prints the root and /model attributes and every dataset with its shape and dtype, then
checks the file: `complete = 1`, `format = "triad-checkpoint"`, `format_version = 1`, every
parameter of DESIGN.md §3 present in /model with the shape the /model attributes imply,
optimizer state with the same names and shapes, fp32 everywhere. With --verify each
dataset's `checksum` attribute is compared with the CRC-32 (zlib) of its little-endian fp32
bytes in C order.

Exit status: 0 when the checkpoint is complete and consistent, 1 otherwise (each problem is
printed as a line starting with "problem:" and naming the file).
"""

from __future__ import annotations

import argparse
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics import attr_value, open_h5

MODEL_ATTRS = ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size", "padded_vocab_size")
OPTIMIZER_SLOTS = ("m", "v", "momentum")


class CheckpointError(Exception):
    pass


def resolve_checkpoint_path(p: str | Path) -> Path:
    """A checkpoint file, a checkpoint directory or a run directory -> the checkpoint file
    (for directories: the one named in `latest`, else the newest step_*.h5)."""
    path = Path(p)
    if path.is_file():
        return path
    if path.is_dir():
        d = path / "ckpt" if (path / "ckpt").is_dir() else path
        latest = d / "latest"
        if latest.is_file():
            name = latest.read_text().strip()
            if name:
                f = d / name
                if not f.is_file():
                    raise CheckpointError(f"{latest}: names {name}, which does not exist")
                return f
        files = sorted(d.glob("step_*.h5"))
        if not files:
            raise CheckpointError(f"{d}: no checkpoint (no 'latest', no step_*.h5)")
        return files[-1]
    raise CheckpointError(f"{path}: no such file or directory")


def expected_shapes(a: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of DESIGN.md §3 from the /model attributes."""
    L, C, T, V = (int(a[k]) for k in ("n_layer", "n_embd", "seq_len", "padded_vocab_size"))
    s = {"wte/weight": (V, C), "wpe/weight": (T, C), "ln_f/weight": (C,), "ln_f/bias": (C,)}
    for i in range(L):
        p = f"h/{i}/"
        s.update({
            p + "ln_1/weight": (C,), p + "ln_1/bias": (C,),
            p + "attn/c_attn/weight": (3 * C, C), p + "attn/c_attn/bias": (3 * C,),
            p + "attn/c_proj/weight": (C, C), p + "attn/c_proj/bias": (C,),
            p + "ln_2/weight": (C,), p + "ln_2/bias": (C,),
            p + "mlp/c_fc/weight": (4 * C, C), p + "mlp/c_fc/bias": (4 * C,),
            p + "mlp/c_proj/weight": (C, 4 * C), p + "mlp/c_proj/bias": (C,),
        })
    return s


@dataclass
class Report:
    path: Path
    root_attrs: dict = field(default_factory=dict)
    model_attrs: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)  # full name -> (shape, dtype, attrs)
    stats: dict = field(default_factory=dict)     # full name -> (min, max, mean, rms)
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def inspect(path: str | Path, stats: bool = False, verify: bool = False) -> Report:
    """Read and check a checkpoint; never raises for a bad file (see Report.problems)."""
    import h5py

    try:
        path = resolve_checkpoint_path(path)
    except CheckpointError as e:
        rep = Report(Path(path))
        rep.problems.append(str(e))
        return rep
    rep = Report(path)
    if path.name.endswith(".partial"):
        rep.notes.append("the name ends in .partial: this file was not finished being written")
    try:
        f = open_h5(path)
    except Exception as e:  # noqa: BLE001
        rep.problems.append(f"cannot open as HDF5: {e}")
        return rep
    with f:
        rep.root_attrs = {k: attr_value(v) for k, v in f.attrs.items()}
        if "model" in f and isinstance(f["model"], h5py.Group):
            rep.model_attrs = {k: attr_value(v) for k, v in f["model"].attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                rep.datasets[name] = (tuple(obj.shape), str(obj.dtype),
                                      {k: attr_value(v) for k, v in obj.attrs.items()})
                if stats or verify:
                    try:
                        arr = obj[()]
                    except Exception as e:  # noqa: BLE001
                        rep.problems.append(f"cannot read {name}: {e}")
                        return
                    if stats and arr.size and arr.dtype.kind == "f":
                        a64 = arr.astype(np.float64)
                        rep.stats[name] = (float(a64.min()), float(a64.max()), float(a64.mean()),
                                           float(np.sqrt(np.mean(a64 * a64))))
                        if not np.all(np.isfinite(arr)):
                            rep.problems.append(f"{name} holds NaN or Inf values")
                    if verify:
                        ck = obj.attrs.get("checksum")
                        if ck is None:
                            rep.problems.append(f"{name} has no checksum attribute")
                        else:
                            le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
                            crc = zlib.crc32(le.tobytes()) & 0xFFFFFFFF
                            if crc != int(attr_value(ck)) & 0xFFFFFFFF:
                                rep.problems.append(f"{name}: checksum mismatch (file "
                                                    f"{int(attr_value(ck)) & 0xFFFFFFFF:#010x}, "
                                                    f"data {crc:#010x})")

        f.visititems(visit)
    rep.datasets = dict(sorted(rep.datasets.items(), key=lambda kv: _natural_key(kv[0])))
    _check(rep)
    return rep


_ORDER = {"wte": 0, "wpe": 1, "h": 2, "ln_f": 3}


def _natural_key(name: str):
    """model/wte, model/wpe, model/h/0..., model/h/10 after h/9, model/ln_f; then optimizer."""
    parts = name.split("/")
    key = []
    for p in parts:
        key.append((0, int(p), "") if p.isdigit() else (1, _ORDER.get(p, 9), p))
    return key


def _check(rep: Report) -> None:
    ra, P = rep.root_attrs, rep.problems
    complete = ra.get("complete")
    if complete is None:
        P.append("no 'complete' attribute: the checkpoint was not finished (never loaded)")
    elif int(complete) != 1:
        P.append(f"complete = {complete}, not 1: the checkpoint was not finished (never loaded)")
    if ra.get("format") != "triad-checkpoint":
        P.append(f"format = {ra.get('format')!r}, expected 'triad-checkpoint'")
    if ra.get("format_version") is not None and int(ra["format_version"]) != 1:
        P.append(f"format_version = {ra['format_version']}, this tool knows 1")
    for k in ("format_version", "step", "tokens_seen", "next_sequence", "epoch", "config",
              "grid"):
        if k not in ra:
            P.append(f"missing root attribute '{k}'")

    model = {n[len("model/"):]: v for n, v in rep.datasets.items() if n.startswith("model/")}
    if not model:
        P.append("no /model group with datasets")
        return
    missing_attrs = [k for k in MODEL_ATTRS if k not in rep.model_attrs]
    if missing_attrs:
        P.append(f"/model lacks attribute(s) {', '.join(missing_attrs)}")
        return
    ma = rep.model_attrs
    V, Vp = int(ma["vocab_size"]), int(ma["padded_vocab_size"])
    if Vp < V:
        P.append(f"padded_vocab_size {Vp} < vocab_size {V}")
    if int(ma["n_head"]) <= 0 or int(ma["n_embd"]) % int(ma["n_head"]) != 0:
        P.append(f"n_embd {ma['n_embd']} is not a multiple of n_head {ma['n_head']}")
    exp = expected_shapes(ma)
    for name, shape in exp.items():
        if name not in model:
            P.append(f"/model/{name} is missing")
        elif model[name][0] != shape:
            P.append(f"/model/{name} has shape {model[name][0]}, expected {shape}")
    extra = sorted(set(model) - set(exp))
    if extra:
        P.append(f"/model has unexpected dataset(s): {', '.join(extra[:5])}"
                 + (" ..." if len(extra) > 5 else ""))
    for n, (shape, dtype, _) in rep.datasets.items():
        if (n.startswith("model/") or n.startswith("optimizer/")) and dtype != "float32":
            P.append(f"/{n} is {dtype}, expected float32")

    slots = sorted({n.split("/")[1] for n in rep.datasets if n.startswith("optimizer/")
                    and n.count("/") >= 2})
    if not slots:
        rep.notes.append("no optimizer state (weights only)")
    for slot in slots:
        if slot not in OPTIMIZER_SLOTS:
            P.append(f"/optimizer/{slot}: unknown optimizer slot")
            continue
        pre = f"optimizer/{slot}/"
        st = {n[len(pre):]: v for n, v in rep.datasets.items() if n.startswith(pre)}
        for name, (shape, _, _) in model.items():
            if name not in st:
                P.append(f"/{pre}{name} is missing")
            elif st[name][0] != shape:
                P.append(f"/{pre}{name} has shape {st[name][0]}, /model/{name} {shape}")
        for name in sorted(set(st) - set(model)):
            P.append(f"/{pre}{name} has no /model counterpart")
    if set(slots) & {"m", "v"} and not {"m", "v"} <= set(slots):
        P.append("AdamW state incomplete: need both /optimizer/m and /optimizer/v")


def n_params(rep: Report) -> tuple[int, int]:
    """(stored model elements, elements excluding wte's padding rows)."""
    total = sum(int(np.prod(s)) for n, (s, _, _) in rep.datasets.items() if n.startswith("model/"))
    pad = 0
    ma = rep.model_attrs
    w = rep.datasets.get("model/wte/weight")
    if w and "vocab_size" in ma and len(w[0]) == 2:
        pad = max(0, w[0][0] - int(ma["vocab_size"])) * w[0][1]
    return total, total - pad


def format_report(rep: Report, show_config: bool = False, show_all: bool = False) -> str:
    out = [f"checkpoint: {rep.path}"]
    if rep.root_attrs:
        out.append("root attributes:")
        for k, v in rep.root_attrs.items():
            if k == "config" and not show_config:
                lines = str(v).count("\n") + 1
                out.append(f"  config = <{lines} lines of INI; --config to print>")
            else:
                out.append(f"  {k} = {v}")
    if rep.model_attrs:
        out.append("/model attributes: " + " ".join(f"{k}={v}" for k, v in rep.model_attrs.items()))
    if rep.datasets:
        width = max(len(n) for n in rep.datasets) + 1
        groups: dict[str, list[str]] = {}
        for n in rep.datasets:
            top = n.split("/")[0] if not n.startswith("optimizer/") else "/".join(n.split("/")[:2])
            groups.setdefault(top, []).append(n)
        out.append(f"datasets ({len(rep.datasets)}):")
        for top, names in groups.items():
            shown = names if (show_all or len(names) <= 40 or top == "model") else names[:8]
            for n in shown:
                shape, dtype, attrs = rep.datasets[n]
                line = f"  /{n:<{width}} {str(list(shape)):>16} {dtype}"
                if n in rep.stats:
                    mn, mx, mean, rms = rep.stats[n]
                    line += f"  min {mn:+.4g} max {mx:+.4g} mean {mean:+.4g} rms {rms:.4g}"
                out.append(line)
            if len(shown) < len(names):
                out.append(f"  ... {len(names) - len(shown)} more under /{top} (--all)")
        tot, real = n_params(rep)
        out.append(f"model parameters: {tot:,} stored ({real:,} excluding vocabulary padding)")
    for n in rep.notes:
        out.append(f"note: {n}")
    for p in rep.problems:
        out.append(f"problem: {rep.path}: {p}")
    out.append(f"status: {'OK (complete and consistent)' if rep.ok else 'NOT OK'}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.inspect_checkpoint",
                                 description="List and check a triad checkpoint.")
    ap.add_argument("path", help="checkpoint .h5, checkpoint directory, or run directory")
    ap.add_argument("--stats", action="store_true", help="min/max/mean/rms of every tensor")
    ap.add_argument("--verify", action="store_true",
                    help="compare each dataset's checksum attribute with its CRC-32")
    ap.add_argument("--config", action="store_true", help="print the stored config text")
    ap.add_argument("--all", action="store_true", help="list every optimizer dataset too")
    a = ap.parse_args(argv)
    rep = inspect(a.path, stats=a.stats, verify=a.verify)
    text = format_report(rep, show_config=a.config, show_all=a.all)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return 0 if rep.ok else 1
    if not rep.ok:
        print(f"inspect_checkpoint: {rep.path}: {len(rep.problems)} problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
