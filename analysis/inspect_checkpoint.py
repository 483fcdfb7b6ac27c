"""Inspect a triad checkpoint (docs/formats.md), or compare two.

    triad-ckpt runs/quick/ckpt/step_00000100.h5     # tensors, shapes, L2 norms, attributes,
                                                    # completeness, CRC-32 verification
    triad-ckpt runs/quick                           # the checkpoint ckpt/latest names
    triad-ckpt A.h5 B.h5                            # per-tensor max |a-b| and relative L2
    python -m analysis.inspect_checkpoint CKPT --stats --verify   # the older listing

Prints the root and /model attributes and every dataset with its shape and dtype, then
checks the file: `complete = 1`, `format = "triad-checkpoint"`, `format_version = 1`, every
parameter of DESIGN.md §3 present in /model with the shape the /model attributes imply,
optimizer state with the same names and shapes, fp32 everywhere. With --verify each
dataset's `checksum` attribute is compared with the CRC-32 (zlib) of its little-endian fp32
bytes in C order.

Exit status: 0 when the checkpoint is complete and consistent, 1 otherwise (each problem is
printed as a line starting with "problem:" and naming the file; triad-ckpt also prints one
"error:" line naming the file and the main problem on stderr). triad-ckpt with two files:
3 when --tolerance is given and a tensor differs by more (relative L2), or a tensor is
missing from one file or has another shape.
"""

from __future__ import annotations

import argparse
import math
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cli import AnalysisError, number_arg, prog_name, run_main
from .hdf5_files import file_kind, not_hdf5_message
from .tables import markdown_table
from .metrics import attr_value, open_h5, parse_config

MODEL_ATTRS = ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size", "padded_vocab_size")
OPTIMIZER_SLOTS = ("m", "v", "momentum", "ema")  # ema: optim.ema_decay's, every tensor


class CheckpointError(AnalysisError):
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
    if path.exists():
        raise CheckpointError(f"{path}: not a regular file (a pipe, socket or device)")
    raise CheckpointError(f"{path}: no such file or directory")


def expected_shapes(a: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of DESIGN.md §3 from the /model attributes (no wpe when the
    attribute position is rope: rotary positions; no LayerNorm biases when norm is rmsnorm;
    c_attn's k and v rows for n_kv_head heads; q_norm and k_norm [head_dim] when qk_norm is 1
    ([n_head·head_dim] and [n_kv_head·head_dim] with qk_norm_full 1); attn/sinks [n_head] when
    attn_sinks is 1;
    c_attn's bias alone when bias is 0 and qkv_bias 1, the MLP's with mlp_bias 1; moe_experts
    E > 0: experts/c_fc [E, F, C], experts/c_proj [E, C, H] and router [E, C] instead of the MLP's
    tensors in the layers moe_first_dense and moe_every give them, with experts/c_fc/bias [E, F],
    experts/c_proj/bias [E, C] and router/bias [E] when moe_bias is 1; shared/c_fc, shared/c_proj
    with moe_shared_hidden, shared/gate [1, C] with moe_shared_gate; the dense layers' MLP
    moe_dense_hidden wide; mtp_depth D > 0: D multi-token prediction modules mtp/<j>/, each
    ln_e, ln_h, eh_proj [C, 2C], the tensors of a block of layer n_layer + j's kind, and ln_f)."""
    L, C, T, V = (int(a[k]) for k in ("n_layer", "n_embd", "seq_len", "padded_vocab_size"))
    # The blocks: each layer's, then each multi-token prediction module's (as layer L + j).
    blocks = [(f"h/{i}/", i) for i in range(L)] + \
        [(f"mtp/{j}/", L + j) for j in range(int(a.get("mtp_depth", 0)))]
    H = int(a["n_head"])
    # c_attn: q (C rows), then k and v with n_kv_head heads of C / n_head rows (absent: n_head)
    # model.head_dim (absent or 0: C / n_head) sets the heads' width, q's is n_head · head_dim
    hd = int(a.get("head_dim", 0)) or (C // H if H > 0 else 0)
    A = H * hd if H > 0 else C
    W = A + 2 * int(a.get("n_kv_head", H)) * hd if H > 0 else 3 * C
    qk = a.get("qk_norm", 0) == 1  # model.qk_norm (absent: a file from before it, 0)
    s = {"wte/weight": (V, C), "ln_f/weight": (C,), "ln_f/bias": (C,)}
    if a.get("position", "learned") != "rope":
        s["wpe/weight"] = (T, C)
    for j in range(len(blocks) - L):  # the modules' own tensors around their blocks'
        p = f"mtp/{j}/"
        s.update({p + "ln_e/weight": (C,), p + "ln_e/bias": (C,), p + "ln_h/weight": (C,),
                  p + "ln_h/bias": (C,), p + "eh_proj/weight": (C, 2 * C),
                  p + "ln_f/weight": (C,), p + "ln_f/bias": (C,)})
    for p, i in blocks:
        s.update({
            p + "ln_1/weight": (C,), p + "ln_1/bias": (C,),
            p + "attn/c_attn/weight": (W, C), p + "attn/c_attn/bias": (W,),
        })
        rkv = int(a.get("kv_lora_rank", 0))
        if rkv > 0:  # multi-head latent attention: its projections instead of c_attn
            rq, dn, dr, dv = (int(a.get(k, 0)) for k in
                              ("q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"))
            del s[p + "attn/c_attn/weight"], s[p + "attn/c_attn/bias"]
            if rq > 0:
                s.update({p + "attn/q_a/weight": (rq, C), p + "attn/q_a_norm/weight": (rq,)})
            s.update({p + "attn/q_b/weight": (H * (dn + dr), rq or C),
                      p + "attn/kv_a/weight": (rkv + dr, C), p + "attn/kv_a_norm/weight": (rkv,),
                      p + "attn/kv_b/weight": (H * (dn + dv), rkv)})
            A = H * dv  # c_proj reads each head's v
        if qk and a.get("qk_norm_full", 0) == 1:  # over all heads' q, and all k
            kv = int(a.get("n_kv_head", H))
            s.update({p + "attn/q_norm/weight": (A,), p + "attn/k_norm/weight": (kv * hd,)})
        elif qk:  # per-head RMSNorm weights of q and k, after c_attn in checkpoint order
            s.update({p + "attn/q_norm/weight": (hd,), p + "attn/k_norm/weight": (hd,)})
        if a.get("attn_sinks", 0) == 1:  # model.attn_sinks: a logit per query head
            s[p + "attn/sinks"] = (H,)
        s.update({
            p + "attn/c_proj/weight": (C, A), p + "attn/c_proj/bias": (C,),
            p + "ln_2/weight": (C,), p + "ln_2/bias": (C,),
            p + "mlp/c_fc/weight": (4 * C, C), p + "mlp/c_fc/bias": (4 * C,),
            p + "mlp/c_proj/weight": (C, 4 * C), p + "mlp/c_proj/bias": (C,),
        })
        if int(a.get("shared_norm", 0)) == 1:  # model.shared_norm: ln_1 serves both branches
            del s[p + "ln_2/weight"], s[p + "ln_2/bias"]
        if int(a.get("pre_norm", 1)) == 0:  # model.pre_norm = false: no norms before branches
            for n in ("ln_1", "ln_2"):
                s.pop(p + n + "/weight", None), s.pop(p + n + "/bias", None)
        if int(a.get("branch_norm", 0)) == 1:  # model.branch_norm: the branches' output norms
            for n in ("ln_attn_out", "ln_mlp_out"):
                s.update({p + n + "/weight": (C,), p + n + "/bias": (C,)})
    if a.get("norm", "layernorm") == "rmsnorm":  # no norm has a bias
        s = {k: v for k, v in s.items()
             if not (k.endswith("/bias") and k.split("/")[-2].startswith("ln_"))}
    gated = a.get("mlp", "gelu") in ("swiglu", "geglu")  # c_fc holds gate and up rows
    if gated or "mlp_hidden" in a or "moe_dense_hidden" in a:  # model.mlp, model.mlp_hidden
        # (dense layers among experts: model.moe_dense_hidden units, else mlp_hidden's)
        H = int(a.get("moe_dense_hidden", 0)) or int(a.get("mlp_hidden", 4 * C))
        F = 2 * H if gated else H
        for block, i in blocks:
            p = block + "mlp/"
            s.update({p + "c_fc/weight": (F, C), p + "c_fc/bias": (F,), p + "c_proj/weight": (C, H)})
    E = int(a.get("moe_experts", 0))
    if E > 0:  # model.moe_experts: the experts' MLPs and the router replace the MLP
        H = int(a.get("mlp_hidden", 4 * C))
        F = 2 * H if gated else H
        first, every = int(a.get("moe_first_dense", 0)), int(a.get("moe_every", 1))
        for block, i in blocks:
            if i < first or (i - first + 1) % every:  # a dense layer among them
                continue
            p = block + "mlp/"
            for k in ("c_fc/weight", "c_fc/bias", "c_proj/weight", "c_proj/bias"):
                s.pop(p + k, None)
            s.update({p + "experts/c_fc/weight": (E, F, C), p + "experts/c_proj/weight": (E, C, H),
                      p + "router/weight": (E, C)})
            if int(a.get("moe_bias", 0)) == 1:  # model.moe_bias (gpt-oss's), whatever bias says
                s.update({p + "experts/c_fc/bias": (E, F), p + "experts/c_proj/bias": (E, C),
                          p + "router/bias": (E,)})
            S = int(a.get("moe_shared_hidden", 0))  # shared experts
            if S > 0:
                FS = 2 * S if gated else S
                s.update({p + "shared/c_fc/weight": (FS, C), p + "shared/c_proj/weight": (C, S)})
                if int(a.get("moe_shared_gate", 0)) == 1:  # their sigmoid gate (Qwen2-MoE's)
                    s[p + "shared/gate/weight"] = (1, C)
    if int(a.get("tie_embeddings", 1)) == 0:  # an output layer of its own
        s["lm_head/weight"] = (V, C)
        if int(a.get("head_bias", 0)) == 1:  # model.head_bias
            s["lm_head/bias"] = (V,)
    if int(a.get("bias", 1)) == 0:  # model.bias = false (model.qkv_bias: c_attn's kept;
        # model.mlp_bias: c_fc's and mlp.c_proj's; model.norm_bias: the LayerNorms')
        keep = (("attn/c_attn/bias",) if int(a.get("qkv_bias", 0)) == 1 else ()) + \
            (("mlp/c_fc/bias", "mlp/c_proj/bias") if int(a.get("mlp_bias", 0)) == 1 else ())
        norms = int(a.get("norm_bias", 0)) == 1
        s = {k: v for k, v in s.items()
             if not k.endswith("/bias") or k.endswith(keep)
             or (norms and k.split("/")[-2].startswith("ln_")) or k == "lm_head/bias"
             or "/mlp/experts/" in k or k.endswith("/mlp/router/bias")}
    return s


@dataclass
class Report:
    path: Path
    root_attrs: dict = field(default_factory=dict)
    model_attrs: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)  # full name -> (shape, dtype, attrs)
    stats: dict = field(default_factory=dict)     # full name -> (min, max, mean, rms)
    norms: dict = field(default_factory=dict)     # full name -> L2 norm (float64 sum)
    verified: int = 0                             # datasets whose checksum matched
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    # missing | directory | not-hdf5 | foreign (HDF5 without the triad layout) | checkpoint
    kind: str = "checkpoint"

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def complete(self) -> bool:
        c = self.root_attrs.get("complete")
        try:
            return c is not None and int(c) == 1
        except (TypeError, ValueError):
            return False

    def headline(self, listed: bool = False) -> str:
        """The main problem as one line naming the file ('' when OK). listed: the caller has
        printed every problem already (format_report); otherwise the others are quoted too (a
        few of them, then the triad-ckpt command that lists the rest)."""
        if not self.problems:
            return ""
        if self.kind == "missing":
            return self.problems[0]
        if self.kind != "checkpoint":
            partial = " (a .partial file: its write never finished)" \
                if self.path.name.endswith(".partial") else ""
            return f"{self.path}: {self.problems[0]}{partial}"
        first = next((p for p in self.problems if "complete" in p), self.problems[0])
        if first.startswith(("no 'complete'", "complete = ")):
            first = "incomplete checkpoint: " + first
        others = [p for p in self.problems if p != first]
        if not others:
            return f"{self.path}: {first}"
        n = f"{len(others)} more problem{'s' * (len(others) > 1)}"
        if listed:
            return f"{self.path}: {first} (and {n}, listed above)"
        shown = "; ".join(others[:3])
        rest = f"; `triad-ckpt {self.path}` lists all" if len(others) > 3 else ""
        return f"{self.path}: {first} (and {n}: {shown}{rest})"


def _read_checkpoint(f, rep: Report, stats: bool, verify: bool, norms: bool) -> bool:
    """inspect's reading of the open file f into rep; False for a foreign HDF5 file (said in
    rep.problems)."""
    import h5py

    rep.root_attrs = {k: attr_value(v) for k, v in f.attrs.items()}
    has_model = "model" in f and isinstance(f["model"], h5py.Group)
    if rep.root_attrs.get("format") != "triad-checkpoint" and not has_model:
        rep.kind = "foreign"
        what = ", ".join(sorted(f.keys())[:6]) or "nothing"
        rep.problems.append(f"HDF5 but not a triad checkpoint (no format = "
                            f"'triad-checkpoint' attribute and no /model group; it holds "
                            f"{what})")
        return False
    if has_model:
        rep.model_attrs = {k: attr_value(v) for k, v in f["model"].attrs.items()}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            rep.datasets[name] = (tuple(obj.shape), str(obj.dtype),
                                  {k: attr_value(v) for k, v in obj.attrs.items()})
            if stats or verify or norms:
                # HDF5 allocates a dataset's storage as it is written: a damaged or
                # forged file can declare gigabytes it does not hold, which reading would
                # allocate. triad's datasets are contiguous and uncompressed: all their
                # bytes are there.
                held = obj.id.get_storage_size()
                if obj.chunks is None and obj.nbytes > held:
                    rep.problems.append(f"{name} declares {obj.nbytes} bytes of data, the "
                                        f"file holds {held} for it (damaged?)")
                    return
                if obj.dtype.kind not in "fiu":  # (text reads as bytes, not an array)
                    rep.problems.append(f"{name} holds {obj.dtype} values, not numbers")
                    return
                try:
                    arr = np.asarray(obj[()])
                except Exception as e:  # noqa: BLE001
                    rep.problems.append(f"cannot read {name}: {e}")
                    return
                if norms and arr.dtype.kind in "fiu":
                    a64 = arr.astype(np.float64).ravel()
                    rep.norms[name] = float(np.sqrt(np.dot(a64, a64)))
                if stats and arr.size and arr.dtype.kind == "f":
                    a64 = arr.astype(np.float64)
                    rep.stats[name] = (float(a64.min()), float(a64.max()),
                                       float(a64.mean()),
                                       float(np.sqrt(np.mean(a64 * a64))))
                # (Read anyway: a diverged run's weights are no checkpoint to go on from.)
                if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                    rep.problems.append(f"{name} holds NaN or Inf values")
                if verify:
                    ck = obj.attrs.get("checksum")
                    if ck is None:
                        rep.problems.append(f"{name} has no checksum attribute")
                    elif not is_count(attr_value(ck)):
                        rep.problems.append(f"{name}: its checksum attribute "
                                            f"{attr_value(ck)!r} is not an integer")
                    else:
                        le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
                        crc = zlib.crc32(le.tobytes()) & 0xFFFFFFFF
                        stored = int(attr_value(ck)) & 0xFFFFFFFF
                        if crc != stored:
                            rep.problems.append(f"{name}: checksum mismatch (file "
                                                f"{stored:#010x}, data {crc:#010x})")
                        else:
                            rep.verified += 1

    f.visititems(visit)
    return True


def inspect(path: str | Path, stats: bool = False, verify: bool = False,
            norms: bool = False) -> Report:
    """Read and check a checkpoint; never raises for a bad file (see Report.problems and
    Report.kind). stats: min/max/mean/rms of every tensor; norms: their L2 norms; verify:
    compare each dataset's checksum attribute with the CRC-32 of its data."""
    try:
        path = resolve_checkpoint_path(path)
    except CheckpointError as e:
        rep = Report(Path(path), kind="missing")
        rep.problems.append(str(e))  # names the file or directory
        return rep
    rep = Report(path)
    kind = file_kind(path)
    if kind != "hdf5":
        rep.kind = "not-hdf5"
        msg = not_hdf5_message(path, kind)[len(str(path)) + 2:]
        rep.problems.append("cannot open as HDF5: " + msg if msg.startswith("not an") else msg)
        return rep
    if path.name.endswith(".partial"):
        rep.notes.append("the name ends in .partial: this file was not finished being written")
    try:
        f = open_h5(path)
    except Exception as e:  # noqa: BLE001
        rep.kind = "not-hdf5"
        rep.problems.append(f"cannot open as HDF5: {e}")
        return rep
    with f:
        # (HDF5 raises as it meets damaged metadata: a file read only in part is reported, not
        # a traceback.)
        try:
            if not _read_checkpoint(f, rep, stats, verify, norms):
                return rep
        except Exception as e:  # noqa: BLE001 - h5py raises several types on damaged files
            rep.problems.append(f"cannot read its HDF5 structure: {e} (the file is damaged)")
            return rep
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


# The /model attributes that hold names (src/io/model_attributes.cpp); every other holds numbers.
STRING_ATTRS = ("position", "norm", "mlp", "rope_scaling", "moe_score", "moe_group_score")
ROPE_SCALINGS = ("none", "linear", "llama3", "yarn", "longrope")


def finite_numbers(v) -> bool:
    """v is a finite number (not a bool) or a non-empty list of them."""
    items = v if isinstance(v, list) and v else [v]
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
               for x in items)


def is_count(v, least: int = 0, most: int | None = None) -> bool:
    """v is an integer (not a bool) in [least, most]."""
    return (isinstance(v, int) and not isinstance(v, bool) and v >= least
            and (most is None or v <= most))


# The bounds of the model.* keys triad-train accepts (and its checkpoint reader): a count beyond
# them is a damaged file, and expected_shapes would otherwise list 10^12 layers.
MODEL_BOUNDS = {"n_layer": 1 << 16, "n_head": 1 << 16, "n_embd": 1 << 20, "seq_len": 1 << 24,
                "vocab_size": 1 << 30, "padded_vocab_size": (1 << 30) + (1 << 23)}


# The 0/1 /model attributes and what a reader takes for one that is absent (a file from before
# it, or one another tool wrote).
FLAG_DEFAULTS = {"bias": 1, "tie_embeddings": 1, "qk_norm": 0, "qk_norm_full": 0, "pre_norm": 1,
                 "attn_sinks": 0, "moe_bias": 0, "rope_yarn_truncate": 1,
                 "qkv_bias": 0, "mlp_bias": 0, "norm_bias": 0, "parallel_residual": 0,
                 "branch_norm": 0, "shared_norm": 0, "head_bias": 0, "full_attention_first": 0}


def model_attrs_with_defaults(ma: dict) -> dict:
    """The /model attributes with the values readers take for the absent ones (an imported
    GPT-2 checkpoint leaves out those triad-train always writes): two files that describe the
    same model compare equal."""
    full = {"position": "learned", "norm": "layernorm", "mlp": "gelu", "norm_eps": 1e-5,
            **FLAG_DEFAULTS}
    if "n_embd" in ma:
        full["mlp_hidden"] = 4 * ma["n_embd"]
    if "n_head" in ma:
        full["n_kv_head"] = ma["n_head"]
    full.update(ma)
    return full


def _check(rep: Report) -> None:
    ra, P = rep.root_attrs, rep.problems
    complete = ra.get("complete")
    if complete is None:
        P.append("no 'complete' attribute: the checkpoint was not finished (never loaded)")
    elif complete != 1:
        P.append(f"complete = {complete!r}, not 1: the checkpoint was not finished (never loaded)")
    if ra.get("format") != "triad-checkpoint":
        P.append(f"format = {ra.get('format')!r}, expected 'triad-checkpoint'")
    if ra.get("format_version") is not None and ra["format_version"] != 1:
        P.append(f"format_version = {ra['format_version']!r}, this tool knows 1")
    for k in ("format_version", "step", "tokens_seen", "next_sequence", "epoch", "config",
              "grid"):
        if k not in ra:
            P.append(f"missing root attribute '{k}'")
    for k in ("step", "tokens_seen", "next_sequence", "epoch"):
        if k in ra and not is_count(ra[k]):
            P.append(f"root attribute {k} = {ra[k]!r}, not an integer >= 0")
    for k in ("config", "grid"):
        if k in ra and not isinstance(ra[k], str):
            P.append(f"root attribute {k} is not a string (it holds {type(ra[k]).__name__})")

    model = {n[len("model/"):]: v for n, v in rep.datasets.items() if n.startswith("model/")}
    if not model:
        P.append("no /model group with datasets")
        return
    missing_attrs = [k for k in MODEL_ATTRS if k not in rep.model_attrs]
    if missing_attrs:
        P.append(f"/model lacks attribute(s) {', '.join(missing_attrs)}")
        return
    ma = rep.model_attrs
    bad = [f"/model attribute {k} = {ma[k]!r}, not an integer in [1, {most}]"
           for k, most in MODEL_BOUNDS.items() if not is_count(ma[k], 1, most)]
    if bad:
        P.extend(bad)
        return
    V, Vp = int(ma["vocab_size"]), int(ma["padded_vocab_size"])
    if Vp < V:
        P.append(f"padded_vocab_size {Vp} < vocab_size {V}")
    if int(ma["n_head"]) <= 0 or (int(ma["n_embd"]) % int(ma["n_head"]) != 0
                                  and not ma.get("head_dim", 0)):
        P.append(f"n_embd {ma['n_embd']} is not a multiple of n_head {ma['n_head']}")
    position = ma.get("position", "learned")  # absent: a file from before rotary positions
    if position not in ("learned", "rope"):
        P.append(f"/model attribute position = {position!r}, expected 'learned' or 'rope'")
    elif position == "rope" and "rope_theta" not in ma:
        P.append("/model has position = 'rope' but no rope_theta attribute")
    elif position == "rope" and not (isinstance(ma["rope_theta"], (int, float))
                                     and math.isfinite(ma["rope_theta"]) and ma["rope_theta"] > 1):
        P.append(f"/model attribute rope_theta = {ma['rope_theta']!r}, not a finite number > 1")
    for flag, absent in FLAG_DEFAULTS.items():
        if ma.get(flag, absent) not in (0, 1):
            P.append(f"/model attribute {flag} = {ma[flag]!r}, expected 0 or 1")
    if not (isinstance(ma.get("mlp_hidden", 1), int) and ma.get("mlp_hidden", 1) >= 1):
        P.append(f"/model attribute mlp_hidden = {ma['mlp_hidden']!r}, not a positive count")
    local = ma.get("rope_local_theta", 0.0)  # absent: rope_theta's
    if not (isinstance(local, (int, float)) and (local == 0 or (math.isfinite(local) and
                                                                local > 1))):
        P.append(f"/model attribute rope_local_theta = {local!r}, not 0 or a finite number > 1")
    scale = ma.get("attn_scale", 0.0)  # absent: 1/sqrt(head width)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and 0 <= scale <= 100):
        P.append(f"/model attribute attn_scale = {scale!r}, not a number in [0, 100]")
    base = ma.get("mup_base_width", 0)  # absent: no μP
    if not (isinstance(base, int) and 0 <= base <= 1 << 20):
        P.append(f"/model attribute mup_base_width = {base!r}, not a width in [0, 2^20]")
    es = ma.get("embed_scale", 1.0)  # absent: none
    if not (isinstance(es, (int, float)) and math.isfinite(es) and 0 < es <= 1e4):
        P.append(f"/model attribute embed_scale = {es!r}, not a number in (0, 1e4]")
    cap = ma.get("logit_softcap", 0.0)  # absent: no cap
    if not (isinstance(cap, (int, float)) and math.isfinite(cap) and 0 <= cap <= 1e4):
        P.append(f"/model attribute logit_softcap = {cap!r}, not a number in [0, 1e4]")
    for key in ("logit_scale", "residual_scale"):  # absent: 1
        v = ma.get(key, 1.0)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 1e4):
            P.append(f"/model attribute {key} = {v!r}, not a number in (0, 1e4]")
    cap = ma.get("attn_softcap", 0.0)  # absent: no cap
    if not (isinstance(cap, (int, float)) and math.isfinite(cap) and 0 <= cap <= 1e4):
        P.append(f"/model attribute attn_softcap = {cap!r}, not a number in [0, 1e4]")
    clip = ma.get("clip_qkv", 0.0)  # absent: no clamp
    if not (isinstance(clip, (int, float)) and math.isfinite(clip) and 0 <= clip <= 1e4):
        P.append(f"/model attribute clip_qkv = {clip!r}, not a number in [0, 1e4]")
    glu = {}
    for key, lo, hi, default in (("glu_alpha", 0.0, 100.0, 1.0), ("glu_limit", 1e-6, 1e4, 0.0),
                                 ("glu_offset", -1e4, 1e4, 0.0)):  # SwiGLU's shape (model.glu_*)
        v = glu[key] = ma.get(key, default)
        if not (isinstance(v, (int, float)) and math.isfinite(v)
                and (lo <= v <= hi or (key == "glu_limit" and v == 0))
                and (key != "glu_alpha" or v > 0)):
            P.append(f"/model attribute {key} = {v!r}, not a number in "
                     f"{'(' if key == 'glu_alpha' else '['}{lo:g}, {hi:g}]"
                     + (" or 0" if key == "glu_limit" else ""))
    if glu != {"glu_alpha": 1.0, "glu_limit": 0.0, "glu_offset": 0.0} and \
            ma.get("mlp", "gelu") != "swiglu":
        P.append(f"/model attributes glu_alpha, glu_limit, glu_offset = "
                 f"{glu['glu_alpha']!r}, {glu['glu_limit']!r}, {glu['glu_offset']!r} with mlp "
                 f"{ma.get('mlp', 'gelu')!r}: they shape SwiGLU only")
    head_dim = ma.get("head_dim", 0)  # absent: n_embd / n_head
    if not (isinstance(head_dim, int) and 0 <= head_dim <= 4096):
        P.append(f"/model attribute head_dim = {head_dim!r}, not a width in [0, 4096]")
    rot = ma.get("rotary_dim", 0)  # absent: every value of a head rotates
    width = head_dim or (int(ma["n_embd"]) // max(1, int(ma["n_head"])))
    if not (isinstance(rot, int) and 0 <= rot <= width and rot % 2 == 0 and
            (rot == 0 or ma.get("position") == "rope")):
        P.append(f"/model attribute rotary_dim = {rot!r}, not an even count in [0, {width}] "
                 f"(the head's width; > 0 only with rope positions)")
    nope = ma.get("nope_every", 0)  # absent: every layer rotates
    if not (isinstance(nope, int) and 0 <= nope <= 2 ** 30 and
            (nope == 0 or (ma.get("position") == "rope" and not ma.get("kv_lora_rank", 0)))):
        P.append(f"/model attribute nope_every = {nope!r}, not a count in [0, 2^30] (> 0 only "
                 f"with rope positions, without latent attention)")
    kv = ma.get("n_kv_head", ma["n_head"])  # absent: a file from before grouped-query attention
    if not (isinstance(kv, int) and kv >= 1 and int(ma["n_head"]) % kv == 0):
        P.append(f"/model attribute n_kv_head = {kv!r}, not a positive divisor of n_head "
                 f"{ma['n_head']}")
    if ma.get("mlp", "gelu") not in ("gelu", "gelu_exact", "swiglu", "geglu", "relu2", "relu"):
        P.append(f"/model attribute mlp = {ma['mlp']!r}, expected 'gelu', 'gelu_exact', 'swiglu', "
                 f"'geglu', 'relu2' or 'relu'")
    if ma.get("norm", "layernorm") not in ("layernorm", "rmsnorm"):
        P.append(f"/model attribute norm = {ma['norm']!r}, expected 'layernorm' or 'rmsnorm'")
    # The rest: a name where triad writes one, finite numbers elsewhere (a text where a number
    # stands failed the readers' int() and float(); a NaN went into an export's config.json, which
    # is then no JSON; an unknown rope scaling was exported as none).
    known = len(P)
    for k, v in ma.items():
        if k in STRING_ATTRS:
            if not isinstance(v, str):
                P.append(f"/model attribute {k} = {v!r}, not a name")
            elif k == "rope_scaling" and v not in ROPE_SCALINGS:
                P.append(f"/model attribute rope_scaling = {v!r}, expected one of "
                         f"{', '.join(ROPE_SCALINGS)}")
        elif not finite_numbers(v):
            P.append(f"/model attribute {k} = {v!r}, not a finite number")
    if len(P) > known:  # (the shapes below are computed from them)
        return
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
    # optim.name = muon: momentum for the attention and MLP weight matrices, m and v for the rest.
    muon = {"m", "v", "momentum"} <= set(slots)
    for slot in slots:
        if slot not in OPTIMIZER_SLOTS:
            P.append(f"/optimizer/{slot}: unknown optimizer slot")
            continue
        pre = f"optimizer/{slot}/"
        st = {n[len(pre):]: v for n, v in rep.datasets.items() if n.startswith(pre)}
        for name, (shape, _, _) in model.items():
            if muon and slot != "ema" and is_muon_matrix(name) != (slot == "momentum"):
                if name in st:
                    P.append(f"/{pre}{name}: Muon keeps "
                             + ("momentum" if slot != "momentum" else "m and v") + " for it")
                continue
            if name not in st:
                P.append(f"/{pre}{name} is missing")
            elif st[name][0] != shape:
                P.append(f"/{pre}{name} has shape {st[name][0]}, /model/{name} {shape}")
        for name in sorted(set(st) - set(model)):
            P.append(f"/{pre}{name} has no /model counterpart")
    # optim.name = lion keeps m alone (the file's config says which optimizer saved it).
    lion = parse_config(str(rep.root_attrs.get("config") or "")).get("optim.name") == "lion"
    if lion and "v" in slots:
        P.append("/optimizer/v: Lion keeps /optimizer/m alone")
    elif not lion and set(slots) & {"m", "v"} and not {"m", "v"} <= set(slots):
        P.append("AdamW state incomplete: need both /optimizer/m and /optimizer/v")


def is_muon_matrix(name: str) -> bool:
    """The tensors optim.name = muon updates with Muon (docs/formats.md)."""
    return name.startswith("h/") and name.endswith(
        ("/attn/c_attn/weight", "/attn/c_proj/weight", "/mlp/c_fc/weight", "/mlp/c_proj/weight"))


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
                if n in rep.norms:
                    line += f"  L2 {rep.norms[n]:.6g}"
                if n in rep.stats:
                    mn, mx, mean, rms = rep.stats[n]
                    line += f"  min {mn:+.4g} max {mx:+.4g} mean {mean:+.4g} rms {rms:.4g}"
                out.append(line)
            if len(shown) < len(names):
                out.append(f"  ... {len(names) - len(shown)} more under /{top} (--all)")
        tot, real = n_params(rep)
        out.append(f"model parameters: {tot:,} stored ({real:,} excluding vocabulary padding)")
    if rep.verified:
        n_ck = sum(1 for _, _, a in rep.datasets.values() if "checksum" in a)
        out.append(f"checksums: {rep.verified} of {len(rep.datasets)} datasets verified"
                   + ("" if rep.verified == n_ck else f" ({n_ck} carry one)"))
    for n in rep.notes:
        out.append(f"note: {n}")
    for p in rep.problems:
        out.append(f"problem: {p}" if rep.kind == "missing" else f"problem: {rep.path}: {p}")
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


# ---- triad-ckpt: one checkpoint, or the difference of two ---------------------------------

@dataclass
class TensorDiff:
    name: str
    shape_a: tuple | None
    shape_b: tuple | None
    max_abs: float = float("nan")
    rel_l2: float = float("nan")     # ||a - b|| / max(||a||, ||b||); 0 when both are 0
    rows_compared: int | None = None  # wte: the first vocab_size rows only
    note: str = ""

    @property
    def compared(self) -> bool:
        return self.max_abs == self.max_abs  # not NaN


@dataclass
class DiffReport:
    a: Report
    b: Report
    tensors: list = field(default_factory=list)          # TensorDiff, in checkpoint order
    attrs: list = field(default_factory=list)            # (name, value a, value b)
    config: list = field(default_factory=list)           # (key, value a, value b)

    def worst(self) -> TensorDiff | None:
        done = [t for t in self.tensors if t.compared]
        return max(done, key=lambda t: t.rel_l2) if done else None

    @property
    def mismatched(self) -> list:
        return [t for t in self.tensors if not t.compared]


def _vocab(rep: Report) -> int | None:
    v = rep.model_attrs.get("vocab_size")
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def diff_checkpoints(a: Report, b: Report, optimizer: bool = False) -> DiffReport:
    """Per-tensor difference of two checked checkpoints (Reports from inspect()). The
    embedding (`wte/weight` and its optimizer state) is compared on its first vocab_size
    rows, so files padded for different tensor-parallel sizes compare equal."""
    import h5py

    d = DiffReport(a, b)
    for k in ("step", "tokens_seen", "epoch", "next_sequence", "grid", "format_version"):
        va, vb = a.root_attrs.get(k), b.root_attrs.get(k)
        if va != vb:
            d.attrs.append((k, va, vb))
    ca, cb = parse_config(str(a.root_attrs.get("config") or "")), \
        parse_config(str(b.root_attrs.get("config") or ""))
    for k in list(ca) + [k for k in cb if k not in ca]:
        if ca.get(k) != cb.get(k):
            d.config.append((k, ca.get(k), cb.get(k)))

    def wanted(n: str) -> bool:
        return n.startswith("model/") or (optimizer and n.startswith("optimizer/"))

    names = [n for n in a.datasets if wanted(n)]
    names += [n for n in b.datasets if wanted(n) and n not in a.datasets]
    va, vb = _vocab(a), _vocab(b)
    with open_h5(a.path) as fa, open_h5(b.path) as fb:
        for n in names:
            sa = a.datasets[n][0] if n in a.datasets else None
            sb = b.datasets[n][0] if n in b.datasets else None
            t = TensorDiff(n, sa, sb)
            d.tensors.append(t)
            if sa is None or sb is None:
                t.note = f"only in {'B' if sa is None else 'A'}"
                continue
            rows = None
            if sa != sb:
                if (n.endswith("wte/weight") and len(sa) == 2 and len(sb) == 2
                        and sa[1] == sb[1] and va is not None and va == vb
                        and sa[0] >= va and sb[0] >= va):
                    rows = va
                else:
                    t.note = f"shape {list(sa)} vs {list(sb)}"
                    continue
            elif n.endswith("wte/weight") and len(sa) == 2 and va is not None and va == vb \
                    and sa[0] > va:
                rows = va
            da, db = fa[n], fb[n]
            if not isinstance(da, h5py.Dataset) or not isinstance(db, h5py.Dataset):
                t.note = "not a dataset"
                continue
            xa = (da[:rows] if rows is not None else da[()]).astype(np.float64)
            xb = (db[:rows] if rows is not None else db[()]).astype(np.float64)
            diff = xa - xb
            t.max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
            na, nb = float(np.linalg.norm(xa.ravel())), float(np.linalg.norm(xb.ravel()))
            nd = float(np.linalg.norm(diff.ravel()))
            den = max(na, nb)
            t.rel_l2 = nd / den if den > 0 else (0.0 if nd == 0 else float("inf"))
            if rows is not None:
                t.rows_compared = rows
                if sa != sb:
                    t.note = f"first {rows} rows (padded {sa[0]} vs {sb[0]})"
    return d


def format_diff(d: DiffReport, show_all: bool = False) -> str:
    out = [f"A: {d.a.path}", f"B: {d.b.path}"]
    for k, va, vb in d.attrs:
        out.append(f"attribute {k}: A {va} | B {vb}")
    if d.config:
        out.append(f"config differences ({len(d.config)}):")
        for k, va, vb in d.config:
            out.append(f"  {k}: A {va if va is not None else '(absent)'} | "
                       f"B {vb if vb is not None else '(absent)'}")
    rows = []
    for t in d.tensors:
        if not show_all and t.compared and t.max_abs == 0 and not t.note and len(d.tensors) > 60:
            continue
        shape = list(t.shape_a if t.shape_a is not None else t.shape_b)
        rows.append(["/" + t.name, str(shape),
                     f"{t.max_abs:.3e}" if t.compared else "",
                     f"{t.rel_l2:.3e}" if t.compared else "", t.note])
    out.append("")
    out.append(markdown_table(["tensor", "shape", "max abs diff", "rel L2 diff", "note"], rows,
                              align_right=[False, True, True, True, False]))
    done = [t for t in d.tensors if t.compared]
    same = sum(1 for t in done if t.max_abs == 0)
    w = d.worst()
    line = f"{len(done)} tensors compared, {same} identical"
    if w is not None:
        line += f"; largest relative L2 difference {w.rel_l2:.3e} (/{w.name})"
        m = max(done, key=lambda t: t.max_abs)
        line += f", largest absolute {m.max_abs:.3e} (/{m.name})"
    if d.mismatched:
        line += f"; {len(d.mismatched)} not comparable (missing or another shape)"
    out.append(line)
    return "\n".join(out)


def ckpt_main(argv: list[str] | None = None) -> int:
    """triad-ckpt CKPT [CKPT2]."""
    prog = prog_name("python -m analysis.inspect_checkpoint ckpt")
    ap = argparse.ArgumentParser(
        prog=prog, description="Show a triad checkpoint: its tensors with shapes and L2 "
        "norms, step/grid/config attributes, completeness and checksums. With two files: "
        "the per-tensor difference (max |a-b|, relative L2), the embedding compared on its "
        "first vocab_size rows.")
    ap.add_argument("ckpt", help="checkpoint .h5, checkpoint directory, or run directory "
                                 "(the checkpoint ckpt/latest names)")
    ap.add_argument("ckpt2", nargs="?", help="a second checkpoint to compare with the first")
    ap.add_argument("--quick", action="store_true",
                    help="read attributes and shapes only: no norms, no checksum verification")
    ap.add_argument("--stats", action="store_true", help="min/max/mean/rms of every tensor too")
    ap.add_argument("--config", action="store_true", help="print the stored config text")
    ap.add_argument("--all", action="store_true",
                    help="list every optimizer dataset (one file) / every tensor (two files)")
    ap.add_argument("--optimizer", action="store_true",
                    help="two files: compare the optimizer state too")
    ap.add_argument("--tolerance", type=number_arg(0), default=None, metavar="REL",
                    help="two files: exit 3 when a tensor's relative L2 difference exceeds "
                         "REL (or a tensor cannot be compared)")
    a = ap.parse_args(argv)
    if a.ckpt2 is None and (a.tolerance is not None or a.optimizer):
        ap.error(f"{'--tolerance' if a.tolerance is not None else '--optimizer'} compares two "
                 "checkpoints: give a second one")

    def check(path) -> Report:
        rep = inspect(path, stats=a.stats and not a.quick, verify=not a.quick,
                      norms=not a.quick and a.ckpt2 is None)
        if rep.kind != "checkpoint":
            raise CheckpointError(rep.headline())
        return rep

    def body() -> int:
        rep = check(a.ckpt)
        if a.ckpt2 is None:
            print(format_report(rep, show_config=a.config, show_all=a.all), flush=True)
            if not rep.ok:
                raise CheckpointError(rep.headline(listed=True))
            return 0
        rep2 = check(a.ckpt2)
        for r in (rep, rep2):
            if not r.ok:
                print(format_report(r, show_config=False, show_all=False), flush=True)
                raise CheckpointError(r.headline(listed=True))
        d = diff_checkpoints(rep, rep2, optimizer=a.optimizer)
        print(format_diff(d, show_all=a.all), flush=True)
        if a.tolerance is not None:
            w = d.worst()
            bad = [t for t in d.tensors if t.compared and t.rel_l2 > a.tolerance]
            if bad or d.mismatched:
                what = (f"{len(bad)} tensor(s) differ by more than {a.tolerance:g} (relative "
                        f"L2; largest {w.rel_l2:.3e} at /{w.name})" if bad else
                        f"{len(d.mismatched)} tensor(s) missing or of another shape")
                print(f"{prog}: {rep.path} vs {rep2.path}: {what}", file=sys.stderr)
                return 3
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    # `python -m analysis.inspect_checkpoint ckpt ...` is triad-ckpt; anything else the listing
    if len(sys.argv) > 1 and sys.argv[1] == "ckpt":
        sys.exit(ckpt_main(sys.argv[2:]))
    sys.exit(main())
