"""What a tool is handed in place of an HDF5 file, told apart before h5py reads it (file_kind,
not_hdf5_message); and HDF5's file locking turned off for the readers, which must happen before
h5py loads (the package's __init__ imports this module first)."""

from __future__ import annotations

import os
from pathlib import Path

# HDF5's file locking would make a reader wait for (or fail on) a metrics.h5 that triad-train
# still holds open; the readers here only read, so they never need the lock. This must be set
# before the HDF5 library is initialised, i.e. before the first `import h5py`.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def special_file_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with reading `path` as a file where it is a pipe, socket or device (reading
    one can wait for ever, or never end), else None: callers raise their own error with it."""
    p = Path(path)
    try:
        special = p.exists() and not p.is_dir() and not p.is_file()
    except OSError:  # (an unreadable directory above it: the reader's own error says so)
        return None
    return not_hdf5_message(path, "special") if special else None


def file_kind(path: str | os.PathLike) -> str:
    """'missing', 'directory', 'special' (a pipe, socket or device: reading one can wait
    forever), 'unreadable', 'empty', 'hdf5' (has HDF5's signature at offset 0) or 'other'."""
    p = Path(path)
    if not p.exists():
        return "missing"
    if p.is_dir():
        return "directory"
    if not p.is_file():
        return "special"
    try:
        with open(p, "rb") as f:
            head = f.read(len(HDF5_SIGNATURE))
    except OSError:
        return "unreadable"
    if not head:
        return "empty"
    if head == HDF5_SIGNATURE:
        return "hdf5"
    # HDF5 allows a user block (the superblock at 512, 1024, ...); triad never writes one,
    # but h5py is the judge of those.
    try:
        import h5py

        return "hdf5" if h5py.is_hdf5(str(p)) else "other"
    except Exception:  # noqa: BLE001
        return "other"


def not_hdf5_message(path: str | os.PathLike, kind: str) -> str:
    return {
        "missing": f"{path}: no such file",
        "directory": f"{path}: is a directory, expected a file",
        "special": f"{path}: not a regular file (a pipe, socket or device)",
        "unreadable": f"{path}: cannot be read (permissions?)",
        "empty": f"{path}: empty file, not HDF5",
        "other": f"{path}: not an HDF5 file",
    }.get(kind, f"{path}: not an HDF5 file")
