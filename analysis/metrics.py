"""Load a triad ``metrics.h5`` (DESIGN.md §5) into numpy arrays.

Format: groups ``/train`` with 1-D datasets ``step, loss, lr, grad_norm, tokens_per_sec,
mfu, step_ms, tokens`` and ``/val`` with ``step, loss, accuracy``, all datasets of one group
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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_FIELDS = ("step", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "step_ms", "tokens")
VAL_FIELDS = ("step", "loss", "accuracy")
ROOT_ATTRS = ("config", "grid", "n_params", "flops_per_token", "peak_flops")

__all__ = ["Metrics", "MetricsError", "load_metrics", "resolve_metrics_path", "parse_config",
           "open_h5", "attr_value", "TRAIN_FIELDS", "VAL_FIELDS", "ROOT_ATTRS"]


class MetricsError(Exception):
    """A metrics file is missing, unreadable or does not follow the format. The message
    always names the file."""


def open_h5(path: str | os.PathLike):
    """Open an HDF5 file read-only without taking HDF5's file lock, so that a file that
    triad-train is still writing can be read (the writer flushes at least every eval)."""
    import h5py

    try:
        return h5py.File(path, "r", locking=False)
    except TypeError:  # h5py < 3.5 has no `locking`
        os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
        return h5py.File(path, "r")


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
            parts.append(f"val loss {self.val['loss'][-1]:.4f} at step "
                         f"{int(self.val['step'][-1])}")
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


def _read_group(f, path: Path, name: str, fields: tuple[str, ...], strict: bool):
    if name not in f:
        raise MetricsError(f"{path}: missing group /{name} (not a triad metrics.h5?)")
    g = f[name]
    import h5py

    if not isinstance(g, h5py.Group):
        raise MetricsError(f"{path}: /{name} is not a group")
    missing = [k for k in fields if k not in g]
    if missing:
        raise MetricsError(f"{path}: /{name} lacks dataset(s) {', '.join(missing)}")
    out: dict[str, np.ndarray] = {}
    for k in list(fields) + sorted(set(g.keys()) - set(fields)):
        ds = g[k]
        if not isinstance(ds, h5py.Dataset):
            continue
        if ds.ndim != 1:
            raise MetricsError(f"{path}: /{name}/{k} has shape {ds.shape}, expected 1-D")
        try:
            arr = ds[()]
        except Exception as e:  # noqa: BLE001 - h5py raises several types on damaged files
            raise MetricsError(f"{path}: cannot read /{name}/{k}: {e}") from e
        if k in ("step", "tokens"):
            arr = arr.astype(np.int64)
        elif arr.dtype.kind in "iuf":
            arr = arr.astype(np.float64)
        out[k] = arr
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k}={n}" for k, n in lengths.items())
        if strict:
            raise MetricsError(f"{path}: datasets of /{name} have unequal lengths ({desc})")
        n = min(lengths.values())
        warnings.warn(f"{path}: /{name} truncated to {n} rows (unequal lengths: {desc}; "
                      "file being written?)", stacklevel=3)
        out = {k: v[:n] for k, v in out.items()}
    return out


def load_metrics(p: str | os.PathLike, strict: bool = True) -> Metrics:
    """Load a run's metrics. ``p``: a run directory or a ``metrics.h5`` path.

    Raises MetricsError (naming the file) for a missing/unreadable file, a missing group or
    dataset, or datasets of unequal length within a group. With ``strict=False`` unequal
    lengths (a file caught mid-append) are truncated to the shortest, with a warning.
    """
    path = resolve_metrics_path(p)
    try:
        f = open_h5(path)
    except MetricsError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError for non-HDF5/truncated files, etc.
        raise MetricsError(f"{path}: cannot open as HDF5: {e}") from e
    with f:
        train = _read_group(f, path, "train", TRAIN_FIELDS, strict)
        val = _read_group(f, path, "val", VAL_FIELDS, strict)
        attrs = {k: attr_value(v) for k, v in f.attrs.items()}
    return Metrics(path=path, train=train, val=val, attrs=attrs)
