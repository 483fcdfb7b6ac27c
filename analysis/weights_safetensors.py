"""bf16 <-> fp32 and the safetensors format (read on demand, written as fp32): the byte-level
part of the Hugging Face files (weights_hf_import.py, weights_hf_export.py), bf16 also llm.c's
(weights_llmc.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator, Tuple

import numpy as np

from .weights_dims import ConvertError


def bf16_to_fp32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype("<u4") << 16).view("<f4")


def fp32_to_bf16(a: np.ndarray) -> np.ndarray:
    """Round to nearest even (as PyTorch's .to(bfloat16)); NaN stays NaN."""
    u = np.ascontiguousarray(a, dtype="<f4").view("<u4")
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype("<u2")
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


# dtype -> (numpy type, bytes) of the floating-point tensors read; the others (a causal-mask
# buffer of an older transformers, stored BOOL or U8) are only skipped, so only their sizes.
SAFETENSORS_DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "F64": ("<f8", 8)}
SAFETENSORS_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
                     "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8,
                     "F64": 8}


class SafetensorsFile:
    """One .safetensors file: an 8-byte little-endian header length, a JSON header naming each
    tensor's dtype, shape and byte range, then the data. Tensors are read on demand."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ConvertError(f"{path}: too short for a safetensors file ({size} bytes)")
            n = int.from_bytes(raw, "little")
            if n <= 0 or n > min(size - 8, 1 << 28):
                raise ConvertError(f"{path}: not a safetensors file (header length {n} in a "
                                   f"file of {size} bytes)")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ConvertError(f"{path}: not a safetensors file (header is not JSON: {e})")
        if not isinstance(header, dict):
            raise ConvertError(f"{path}: not a safetensors file (header is not a JSON object)")
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.entries = {}
        for name, e in header.items():
            try:
                # (int() would cut 96.5 to 96 and read "7" as 7: the format's are JSON integers)
                if not all(type(x) is int for x in [*e["shape"], *e["data_offsets"]]):
                    raise ValueError(f"shape {e['shape']!r} and data_offsets "
                                     f"{e['data_offsets']!r} must hold integers")
                dtype, shape = e["dtype"], tuple(e["shape"])
                b, end = e["data_offsets"]
                if not isinstance(dtype, str) or dtype not in SAFETENSORS_SIZES:
                    raise ValueError(f"dtype {dtype!r}")
                if any(x < 0 for x in shape):  # (two negative sizes multiply to a positive one)
                    raise ValueError(f"shape {list(shape)}")
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as why:
                raise ConvertError(f"{path}: malformed header entry for tensor {name} ({why})")
            want = math.prod(shape) * SAFETENSORS_SIZES[dtype]
            if end - b != want or b < 0 or self.base + end > size:
                raise ConvertError(f"{path}: tensor {name} ({dtype} {list(shape)}) has byte "
                                   f"range [{b}, {end}) but needs {want} bytes within the "
                                   f"{size - self.base} bytes of data (truncated file?)")
            self.entries[name] = (dtype, shape, b)
        # As the safetensors library requires, the tensors tile the data exactly: a gap, an
        # overlap or bytes after the last tensor mean the file was damaged or written wrongly.
        at = 0
        by_start = sorted(self.entries.items(), key=lambda kv: (kv[1][2], math.prod(kv[1][1])))
        for name, (dtype, _, b) in by_start:
            if b != at:
                raise ConvertError(f"{path}: tensor {name} starts at data byte {b}, not at {at} "
                                   f"where the tensor before it ends ("
                                   f"{'overlap' if b < at else 'gap'} in the data)")
            at = b + math.prod(self.entries[name][1]) * SAFETENSORS_SIZES[dtype]
        if self.base + at != size:
            raise ConvertError(f"{path}: {size - self.base - at} bytes after the last tensor's "
                               f"data (the file is {size} bytes, its tensors end at "
                               f"{self.base + at})")

    def read(self, name: str) -> np.ndarray:
        """A floating-point tensor widened (or, F64, rounded) to fp32."""
        dtype, shape, b = self.entries[name]
        if dtype not in SAFETENSORS_DTYPES:
            raise ConvertError(f"{self.path}: tensor {name} has dtype {dtype}; weights are "
                               f"floating point ({', '.join(SAFETENSORS_DTYPES)})")
        np_dtype, _ = SAFETENSORS_DTYPES[dtype]
        a = np.fromfile(self.path, dtype=np_dtype, count=math.prod(shape),
                        offset=self.base + b).reshape(shape)
        if dtype == "BF16":
            return bf16_to_fp32(a)
        with np.errstate(over="ignore"):  # (an F64 beyond fp32 becomes inf, refused by name later)
            return a.astype("<f4")

    def read_bytes(self, name: str) -> np.ndarray:
        """A tensor of one-byte elements (an FP8 weight's) as its raw bytes."""
        dtype, shape, b = self.entries[name]
        if SAFETENSORS_SIZES[dtype] != 1:
            raise ConvertError(f"{self.path}: tensor {name} has dtype {dtype}, not one byte wide")
        return np.fromfile(self.path, dtype="u1", count=math.prod(shape),
                           offset=self.base + b).reshape(shape)


def write_safetensors(path: Path, tensors: Iterator[Tuple[str, np.ndarray]],
                      specs: dict[str, tuple[int, ...]]) -> None:
    """fp32 tensors (name -> shape in `specs`, data from `tensors` in that order) with the
    metadata transformers asks for (format = pt)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in specs.items():
        n = math.prod(shape) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for (name, a), want in zip(tensors, specs):
            assert name == want and a.shape == specs[name], (name, a.shape)
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
