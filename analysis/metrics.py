"""Load a triad ``metrics.h5`` (DESIGN.md §5) into numpy arrays.

Format: groups ``/train`` with 1-D datasets ``step, loss, lr, grad_norm, tokens_per_sec,
mfu, step_ms, tokens`` and ``/val`` with ``step, loss, accuracy`` (and ``choice_accuracy``, NaN
where ``eval.choices`` was not scored; files from before it lack it), all datasets of one group
having the same length; root attributes ``config`` (resolved INI text), ``grid``,
``n_params``, ``flops_per_token``, ``peak_flops``.

``/train/step`` is the 0-based index of the step whose batch gave ``/train/loss``;
``/train/tokens`` the tokens seen after that step; ``/val/step`` the number of updates
applied when the evaluation ran.

    >>> from analysis.metrics import load_metrics
    >>> m = load_metrics("runs/quick")          # a run directory or the .h5 file itself
    >>> m.train["loss"][-1], m.val["loss"][-1], m.attrs["n_params"], m.config("model.n_layer")
"""

from __future__ import annotations

import configparser
import os
import re
import time
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cli import AnalysisError
from .hdf5_files import file_kind, not_hdf5_message

TRAIN_FIELDS = ("step", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "step_ms", "tokens")
VAL_FIELDS = ("step", "loss", "accuracy")
ROOT_ATTRS = ("config", "grid", "n_params", "flops_per_token", "peak_flops")

__all__ = ["Metrics", "MetricsError", "load_metrics", "resolve_metrics_path", "parse_config",
           "open_h5", "attr_value", "parse_grid", "steady_tokens_per_sec", "TRAIN_FIELDS",
           "VAL_FIELDS", "ROOT_ATTRS"]


class MetricsError(AnalysisError):
    """A metrics file is missing, unreadable or does not follow the format. The message
    always names the file."""


def open_h5(path: str | os.PathLike):
    """Open an HDF5 file read-only without taking HDF5's file lock, so that a file that
    triad-train is still writing can be read (the writer flushes at evaluations, a second apart
    at the least, and every half minute)."""
    import h5py

    try:
        return h5py.File(path, "r", locking=False)
    except TypeError:  # h5py < 3.5 has no `locking`
        os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
        return h5py.File(path, "r")


def open_with_group(path: Path, group: str, why: str):
    """open_h5(path) where the file has /group; else MetricsError naming the file, with `why`
    the group would be missing. The caller closes the file (with ... as f)."""
    kind = file_kind(path)
    if kind != "hdf5":
        raise MetricsError(not_hdf5_message(path, kind))
    try:
        f = open_h5(path)
    except Exception as e:  # noqa: BLE001 - h5py raises several types
        raise MetricsError(f"{path}: cannot open as HDF5: {e}") from None
    if group not in f:
        f.close()
        raise MetricsError(f"{path}: no /{group} group ({why})")
    return f


def attr_value(v: Any) -> Any:
    """HDF5 attribute value -> plain Python (str, int, float, or list)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, np.ndarray):
        if v.shape in ((), (1,)):
            return attr_value(v.reshape(-1)[0] if v.shape else v[()])
        return [attr_value(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v


def parse_config(text: str) -> dict[str, str]:
    """Resolved INI text -> {"section.key": "value"} (values as strings)."""
    cp = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",),
                                   comment_prefixes=("#", ";"), inline_comment_prefixes=None)
    cp.optionxform = str  # keep key case
    try:
        cp.read_string(text or "")
    except configparser.Error:
        return {}
    return {f"{s}.{k}": v.strip() for s in cp.sections() for k, v in cp.items(s)}


@dataclass
class Metrics:
    """The curves of one run. ``train`` and ``val`` map dataset names to 1-D numpy arrays
    (``step`` and ``tokens`` int64, the rest float64); ``attrs`` holds the root attributes."""

    path: Path
    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    # eval.sets: /val_sets/<name>/{step, loss, accuracy, bpb (newer files)}, by name
    val_sets: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # eval.ema: /val_ema, /val's columns scored under the moving average of the weights (older
    # files: step, loss, accuracy, bpb; empty: the run did not set it), and /val_ema_sets/<name>
    # the eval.sets under it, by name
    val_ema: dict[str, np.ndarray] = field(default_factory=dict)
    val_ema_sets: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def config_text(self) -> str:
        return str(self.attrs.get("config") or "")

    @property
    def config_dict(self) -> dict[str, str]:
        return parse_config(self.config_text)

    def config(self, key: str, default: str | None = None) -> str | None:
        """One resolved config value, e.g. ``m.config("train.lr")``."""
        return self.config_dict.get(key, default)

    @property
    def name(self) -> str:
        """A label for plots: ``run.name`` from the config, else the run directory's name."""
        n = self.config("run.name")
        if n:
            return n
        return self.path.parent.name if self.path.name == "metrics.h5" else self.path.stem

    @property
    def n_train(self) -> int:
        return len(self.train["step"])

    @property
    def n_val(self) -> int:
        return len(self.val["step"])

    def val_tokens(self) -> np.ndarray:
        """Tokens seen at each evaluation (val step v = v updates applied), from /train."""
        vs = self.val["step"]
        out = np.zeros(len(vs), dtype=np.float64)
        if self.n_train == 0:
            return out
        ts, tt = self.train["step"], self.train["tokens"].astype(np.float64)
        # after v updates the tokens seen are those of train step v-1
        per_step = tt[-1] / (ts[-1] + 1) if ts[-1] >= 0 else 0.0
        for i, v in enumerate(vs):
            if v <= 0:
                out[i] = 0.0
                continue
            j = np.searchsorted(ts, v - 1)
            out[i] = tt[j] if j < len(ts) and ts[j] == v - 1 else per_step * v
        return out

    def summary(self) -> str:
        parts = [f"{self.name}: {self.n_train} train rows"]
        if self.n_train:
            parts.append(f"last step {int(self.train['step'][-1])} "
                         f"loss {self.train['loss'][-1]:.4f}")
        if self.n_val:
            at = f" at step {int(self.val['step'][-1])}"
            if np.isfinite(self.val["loss"][-1]):
                bpb = self.val.get("bpb")  # eval.bits_per_byte
                per_byte = (f" ({bpb[-1]:.4f} bits per byte)"
                            if bpb is not None and np.isfinite(bpb[-1]) else "")
                parts.append(f"val loss {self.val['loss'][-1]:.4f}{per_byte}{at}")
            mc = self.val.get("choice_accuracy")
            if mc is not None and np.isfinite(mc[-1]):
                norm = self.val.get("choice_accuracy_by_chars")  # lm-eval's acc_norm
                by_chars = (f" (by characters {norm[-1]:.4f})"
                            if norm is not None and np.isfinite(norm[-1]) else "")
                parts.append(f"choice accuracy {mc[-1]:.4f}{by_chars}{at}")
        g = self.attrs.get("grid")
        if g:
            parts.append(f"grid {g}")
        return ", ".join(parts)


def resolve_metrics_path(p: str | os.PathLike) -> Path:
    """A run directory (holding metrics.h5) or a metrics file -> the file's path."""
    path = Path(p)
    if path.is_dir():
        path = path / "metrics.h5"
    if not path.exists():
        raise MetricsError(f"{path}: no such file")
    return path


class _Inconsistent(Exception):
    """A read that saw the file mid-append (unequal lengths, a chunk not yet there)."""


def _read_group(f, path: Path, name: str, fields: tuple[str, ...],
                wide: bool = False) -> dict[str, np.ndarray]:
    """The numeric datasets of group /name (its `fields` required); 1-D, or with `wide` also
    [rows, width]."""
    import h5py

    if name not in f:
        raise MetricsError(f"{path}: missing group /{name} (not a triad metrics.h5, or one "
                           "whose writer never got past its start)")
    g = f[name]
    if not isinstance(g, h5py.Group):
        raise MetricsError(f"{path}: /{name} is not a group (not a triad metrics.h5?)")
    missing = [k for k in fields if k not in g]
    if missing:
        raise MetricsError(f"{path}: /{name} lacks dataset(s) {', '.join(missing)}")
    out: dict[str, np.ndarray] = {}
    for k in list(fields) + sorted(set(g.keys()) - set(fields)):
        try:
            ds = g[k]
        except Exception as e:  # noqa: BLE001
            raise _Inconsistent(f"cannot open /{name}/{k}: {e}") from e
        if not isinstance(ds, h5py.Dataset):
            if k in fields:  # (another member that is no dataset is skipped)
                raise MetricsError(f"{path}: /{name}/{k} is not a dataset (not a triad "
                                   f"metrics.h5?)")
            continue
        if ds.ndim != 1 and not (wide and ds.ndim == 2 and k != "step"):
            raise MetricsError(f"{path}: /{name}/{k} has shape {ds.shape}, expected "
                               f"{'1-D or [rows, width]' if wide and k != 'step' else '1-D'}")
        # (numbers only: a text or compound dataset failed as Python's own error further on)
        if ds.dtype.kind not in "iuf":
            what = "text" if ds.dtype.kind in "OSU" else f"{ds.dtype} values"
            raise MetricsError(f"{path}: /{name}/{k} holds {what}, not numbers")
        # A shape larger than the whole file (a damaged or forged one: HDF5 allocates storage as
        # rows are written) would be allocated by the read. (The file's size, not the dataset's
        # storage: asking HDF5 for that walks every chunk, too slow for a reader that must keep
        # up with a writer.)
        # (retried: a writer's first rows may be declared before they are written)
        if ds.compression is None and ds.nbytes > path.stat().st_size:
            raise _Inconsistent(f"/{name}/{k} declares {ds.shape[0]} rows, more than the file "
                                f"holds (damaged?)")
        try:
            arr = ds[()]
        except Exception as e:  # noqa: BLE001 - h5py raises several types on damaged files
            raise _Inconsistent(f"cannot read /{name}/{k}: {e}") from e
        if k in ("step", "tokens"):
            arr = arr.astype(np.int64)
        elif arr.dtype.kind in "iuf":
            arr = arr.astype(np.float64)
        out[k] = arr
    return out


def _lengths(cols: dict[str, np.ndarray]) -> dict[str, int]:
    return {k: len(v) for k, v in cols.items()}


def _tail_unwritten(cols: dict[str, np.ndarray], increasing: tuple[str, ...]) -> bool:
    """Columns that only grow (step, tokens) whose last row is not above the one before: rows
    whose extent a reader saw before their data (a mid-append read); retried."""
    n = min(len(v) for v in cols.values())
    if n < 2:
        return False
    return any(int(cols[k][n - 1]) <= int(cols[k][n - 2]) for k in increasing if k in cols)


def _read_open(path: Path, read, what: str = ""):
    """read(f) of the file opened by open_h5; h5py's own errors (a truncated file, damaged
    metadata, or a writer's caught midway) as _Inconsistent, to be read again."""
    try:
        f = open_h5(path)
    except Exception as e:  # noqa: BLE001 - OSError for truncated files, etc.
        raise _Inconsistent(f"cannot open as HDF5: {e}") from e
    try:
        with f:
            return read(f)
    except (MetricsError, _Inconsistent):
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises several types
        raise _Inconsistent(f"cannot read{what}: {e}") from e


def _spread(cols: dict[str, np.ndarray]) -> int:
    """How many rows the longest column of a group has more than the shortest."""
    lens = _lengths(cols).values()
    return max(lens) - min(lens)


def _read_file(f, path: Path):
    import h5py

    attrs = {k: attr_value(v) for k, v in f.attrs.items()}
    train = _read_group(f, path, "train", TRAIN_FIELDS)
    val = _read_group(f, path, "val", VAL_FIELDS)
    for group in ("val_sets", "val_ema_sets"):
        if group in f and not isinstance(f[group], h5py.Group):
            raise MetricsError(f"{path}: /{group} is not a group (not a triad metrics.h5?)")
    sets, average_sets = ({name: _read_group(f[group], path, name,
                                             ("step", "loss", "accuracy"))
                           for name in sorted(f[group].keys())} if group in f else {}
                          for group in ("val_sets", "val_ema_sets"))
    average = _read_group(f, path, "val_ema", ("step", "loss", "accuracy")) \
        if "val_ema" in f else {}
    return train, val, attrs, sets, average, average_sets


def _read_until_settled(path: Path, read, settled, wait: float):
    """read() again, a little later each time, until settled(what it read) holds or ``wait``
    seconds have passed (a writer caught midway finishes its append): what was read last. A read
    that raises _Inconsistent at the end is a MetricsError naming the file."""
    deadline = time.monotonic() + max(0.0, wait)
    delay = 0.02
    while True:
        try:
            result = read()
        except _Inconsistent as e:
            if time.monotonic() >= deadline:
                raise MetricsError(f"{path}: {e}") from None
        else:
            if settled(result) or time.monotonic() >= deadline:
                return result
        time.sleep(delay)
        delay = min(2 * delay, 0.2)


def load_metrics(p: str | os.PathLike, strict: bool = True, wait: float = 3.0,
                 tolerate_rows: int = 1) -> Metrics:
    """Load a run's metrics. ``p``: a run directory or a ``metrics.h5`` path.

    The file may be one that triad-train is still appending to: it is opened read-only
    without HDF5's file lock, and a read that catches the writer mid-append (datasets of one
    group of unequal length, a chunk not readable yet) is retried for up to ``wait`` seconds
    (a writer descheduled mid-append on a busy node can take a second or more to finish it).
    Lengths that still differ by at most ``tolerate_rows`` are cut to the shortest.

    Raises MetricsError (naming the file) for a missing or non-HDF5 file, a file without the
    triad layout (no /train or /val group, a missing dataset), or one that stays unreadable or
    whose datasets still differ in length by more than ``tolerate_rows`` — unless
    ``strict=False``, which cuts them to the shortest with a warning.
    """
    path = resolve_metrics_path(p)
    kind = file_kind(path)
    if kind != "hdf5":
        raise MetricsError(not_hdf5_message(path, kind).replace(
            ": not an HDF5 file", ": cannot open as HDF5: not an HDF5 file"))
    def unequal(train, val):
        return [(gname, _lengths(cols)) for gname, cols in (("train", train), ("val", val))
                if _spread(cols) > tolerate_rows]

    train, val, attrs, sets, average, average_sets = _read_until_settled(
        path, lambda: _read_open(path, lambda f: _read_file(f, path)),
        lambda r: not (unequal(r[0], r[1]) or _tail_unwritten(r[0], ("step", "tokens"))
                       or _tail_unwritten(r[1], ("step",))), wait)
    for gname, lens in unequal(train, val):
        desc = ", ".join(f"{k}={n}" for k, n in lens.items())
        if strict:
            raise MetricsError(f"{path}: datasets of /{gname} have unequal lengths ({desc})")
        warnings.warn(f"{path}: /{gname} truncated to {min(lens.values())} rows (unequal "
                      f"lengths: {desc}; file being written?)", stacklevel=2)
    train = {k: v[:min(_lengths(train).values())] for k, v in train.items()}
    val = {k: v[:min(_lengths(val).values())] for k, v in val.items()}
    # Written with /val, at the same evaluations: cut to equal lengths like it.
    sets, average_sets = ({n: {k: v[:min(_lengths(c).values())] for k, v in c.items()}
                           for n, c in g.items()} for g in (sets, average_sets))
    if average:
        average = {k: v[:min(_lengths(average).values())] for k, v in average.items()}
    return Metrics(path=path, train=train, val=val, attrs=attrs, val_sets=sets, val_ema=average,
                   val_ema_sets=average_sets)


def load_group(p: str | os.PathLike, group: str, why: str, fields: tuple[str, ...] = ("step",),
               wide: bool = False, wait: float = 3.0) -> dict[str, np.ndarray]:
    """The numeric datasets of a run's table /group (its rows: `step` and the columns beside it,
    `fields` required; with `wide` also [rows, width] ones), read as load_metrics reads /train:
    retried for up to ``wait`` seconds while the file is caught mid-append, lengths that then
    differ by one row cut to the shortest. Raises MetricsError naming the file for a missing
    group (saying `why` it would be), a missing field, a member of the wrong kind or shape,
    lengths that differ by more, or a file HDF5 cannot read."""
    path = resolve_metrics_path(p)
    kind = file_kind(path)
    if kind != "hdf5":
        raise MetricsError(not_hdf5_message(path, kind))
    def read(f):
        if group not in f:
            raise MetricsError(f"{path}: no /{group} group ({why})")
        return _read_group(f, path, group, fields, wide=wide)

    cols = _read_until_settled(path, lambda: _read_open(path, read, f" /{group}"),
                               lambda c: _spread(c) <= 1, wait)
    lens = _lengths(cols)
    if _spread(cols) > 1:
        desc = ", ".join(f"{k}={n}" for k, n in lens.items())
        raise MetricsError(f"{path}: datasets of /{group} have unequal lengths ({desc})")
    n = min(lens.values())
    return {k: v[:n] for k, v in cols.items()}


_GRID_RE = re.compile(r"\b(dp|pp|tp|cp)\s*=\s*(\d+)")



def load_runs(paths, prog: str, strict: bool = True) -> list[Metrics]:
    """load_metrics for each of ``paths``, its warnings printed as ``prog: warning: ...`` on
    stderr (the command-line tools' convention)."""
    runs = []
    for p in paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs.append(load_metrics(p, strict=strict))
        for w in caught:
            print(f"{prog}: warning: {w.message}", file=sys.stderr)
    return runs

def parse_grid(text: str | None) -> dict[str, int] | None:
    """"dp=2 pp=1 tp=1" -> {"dp": 2, "pp": 1, "tp": 1, "cp": 1} (missing axes are 1: "cp=N"
    appears only for context-parallel runs); None when the text names no axis."""
    found = {k: int(v) for k, v in _GRID_RE.findall(str(text or ""))}
    if not found:
        return None
    return {a: found.get(a, 1) for a in ("dp", "pp", "tp", "cp")}


def steady_tokens_per_sec(m: Metrics, skip: int = 5) -> tuple[float, int]:
    """The median of /train/tokens_per_sec without the first ``skip`` rows (start-up: first
    touches of memory, the first evaluation), and the number of rows it used. With at most
    ``skip`` rows, the rows after the first (or the one row) are used. NaN when empty."""
    tps = np.asarray(m.train.get("tokens_per_sec", np.array([])), dtype=np.float64)
    tps = tps[np.isfinite(tps)]
    n = len(tps)
    if n == 0:
        return float("nan"), 0
    k = skip if n > skip else min(1, n - 1)
    used = tps[k:]
    return float(np.median(used)), len(used)
