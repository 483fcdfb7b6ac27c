"""llm.c's model files (gpt2_124M.bin and the like) in and out: a header of 256 int32, then
every tensor fp32 or bf16 in llm.c's order (convert_weights.py's docstring has the layout)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from .weights_dims import ConvertError, Dims, LAYER_TENSORS, Tensors, shapes, triad_names
from .weights_safetensors import bf16_to_fp32, fp32_to_bf16

LLMC_MAGIC = 20240326
LLMC_VERSIONS = {3: "fp32", 5: "bf16"}  # llm.c's padded-vocabulary model files
LLMC_HEADER_INTS = 256


def llmc_order(d: Dims, padded_vocab: int) -> list[Tuple[str, tuple[int, ...]]]:
    """llm.c's tensor order and stored shapes: each per-layer tensor for all layers in turn."""
    s = shapes(d)
    order = [("wte/weight", (padded_vocab, d.n_embd)), ("wpe/weight", s["wpe/weight"])]
    for t in LAYER_TENSORS:
        order += [(f"h/{i}/{t}", s[f"h/{i}/{t}"]) for i in range(d.n_layer)]
    return order + [("ln_f/weight", s["ln_f/weight"]), ("ln_f/bias", s["ln_f/bias"])]


def llmc_offsets(order: list[Tuple[str, tuple[int, ...]]], item: int) -> Dict[str, int]:
    """Each tensor's byte offset in an llm.c file of `item`-byte elements."""
    offsets, at = {}, LLMC_HEADER_INTS * 4
    for name, shape in order:
        offsets[name] = at
        at += math.prod(shape) * item
    return offsets


def open_llmc(src: Path, seq_len: int | None) -> Tuple[Dims, Tensors, str]:
    size = src.stat().st_size
    header = np.fromfile(src, dtype="<i4", count=LLMC_HEADER_INTS)
    if header.size < LLMC_HEADER_INTS or header[0] != LLMC_MAGIC:
        raise ConvertError(f"{src}: not an llm.c model file (no magic {LLMC_MAGIC} at the start)")
    version = int(header[1])
    if version not in LLMC_VERSIONS:
        raise ConvertError(f"{src}: llm.c model file version {version}; versions 3 (fp32) and 5 "
                           f"(bf16) are read")
    max_t, vocab, n_layer, n_head, n_embd, padded = (int(x) for x in header[2:8])
    if seq_len is not None and seq_len > max_t:
        raise ConvertError(f"--seq-len {seq_len} exceeds the model's {max_t} positions ({src})")
    full = Dims(n_layer, n_head, n_embd, max_t, vocab)  # as the file holds it
    full.check(str(src))
    d = Dims(n_layer, n_head, n_embd, seq_len or max_t, vocab)  # as it is converted
    if padded < vocab:
        raise ConvertError(f"{src}: padded_vocab_size {padded} < vocab_size {vocab}")
    order = llmc_order(full, padded)
    item = 4 if LLMC_VERSIONS[version] == "fp32" else 2
    want = LLMC_HEADER_INTS * 4 + sum(math.prod(s) for _, s in order) * item
    if size != want:
        raise ConvertError(f"{src}: {size} bytes, but an llm.c {LLMC_VERSIONS[version]} model "
                           f"with these dimensions (L={n_layer} H={n_head} C={n_embd} "
                           f"T={max_t} V={vocab}/{padded}) has {want}"
                           f"{' (truncated?)' if size < want else ''}")

    offsets = llmc_offsets(order, item)
    shape_of = dict(order)

    def tensors():
        for name in triad_names(n_layer):
            shape = shape_of[name]
            a = np.fromfile(src, dtype="<f4" if item == 4 else "<u2", count=math.prod(shape),
                            offset=offsets[name])
            a = (a if item == 4 else bf16_to_fp32(a)).reshape(shape)
            if name == "wte/weight":
                a = a[:vocab]
            elif name == "wpe/weight":
                a = a[:d.seq_len]
            yield name, np.ascontiguousarray(a)

    return d, tensors, f"llm.c {LLMC_VERSIONS[version]} model file {src}"


def write_llmc(out: Path, d: Dims, tensors: Tensors, dtype: str) -> None:
    """llm.c's model file: the vocabulary padded to a multiple of 128 with zero rows."""
    header = np.zeros(LLMC_HEADER_INTS, dtype="<i4")
    header[:8] = [LLMC_MAGIC, 3 if dtype == "fp32" else 5, d.seq_len, d.vocab_size, d.n_layer,
                  d.n_head, d.n_embd, d.padded_vocab_size]
    order = llmc_order(d, d.padded_vocab_size)
    offsets = llmc_offsets(order, 4 if dtype == "fp32" else 2)
    with open(out, "wb") as f:
        f.write(header.tobytes())
        for name, a in tensors():  # triad's order; llm.c's groups each tensor of all layers
            if name == "wte/weight":
                a = np.concatenate([a, np.zeros((d.padded_vocab_size - a.shape[0], a.shape[1]),
                                                "<f4")])
            f.seek(offsets[name])
            f.write((np.ascontiguousarray(a, dtype="<f4") if dtype == "fp32"
                     else fp32_to_bf16(a)).tobytes())
