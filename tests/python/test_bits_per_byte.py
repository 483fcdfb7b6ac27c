"""eval.bits_per_byte against independent references: tiktoken's byte strings of GPT-2's tokens
and the per-token losses of PyTorch's model (tests/reference/gpt_torch.py, double precision),
over validation shards with <|endoftext|> tokens (no bytes: left out of both sums); then the
same value on tensor-, pipeline-, context- and data-parallel grids, and in metrics.h5 at each
evaluation.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tiktoken = pytest.importorskip("tiktoken")
h5py = pytest.importorskip("h5py")
from tiktoken.load import load_tiktoken_bpe  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
import gpt_torch as ref  # noqa: E402
from analysis.metrics import load_metrics  # noqa: E402
import test_reference_model as trm  # noqa: E402
from test_reference_model import _torch_threads, tmp_root  # noqa: E402,F401 (its fixtures)

VOCAB = trm.ROOT / "data" / "vocab" / "gpt2.tiktoken"
EOT = 50256
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_bytes() -> np.ndarray:
    """Each GPT-2 id's byte count as tiktoken decodes it; 0 for <|endoftext|>."""
    enc = tiktoken.Encoding(name="gpt2_local", pat_str=GPT2_PATTERN,
                            mergeable_ranks=load_tiktoken_bpe(str(VOCAB)),
                            special_tokens={"<|endoftext|>": EOT})
    n = np.array([len(enc.decode_single_token_bytes(t)) for t in range(EOT)] + [0])
    assert n.min() == 0 and n[:EOT].min() >= 1 and n.max() > 10
    return n


def bpb_of(text: str, name: str = "val") -> float:
    m = re.search(rf"\| {name} [^|]*?bpb ([0-9.]+)", text)
    assert m, text
    return float(m.group(1))


def test_bits_per_byte_matches_tiktoken_and_torch(tmp_root, tmp_path):
    if not VOCAB.exists():
        pytest.fail(f"{VOCAB} does not exist: run jobs/setup.sh")
    case = next(c for c in trm.CASES if c.name == "gpt2vocab")
    p = trm.prepare(case, tmp_root)
    T, n = case.cfg.seq_len, case.val_sequences
    val = p.val_tokens.astype(np.int64).copy()
    val[::7] = EOT  # documents' markers among the targets
    ref.write_token_shard(tmp_path / "val_000.bin", val)
    ref.write_token_shard(tmp_path / "other_000.bin", val[::-1].copy())
    sections = trm.config_sections(case, p.dir, eval__bits_per_byte="true",
                                   data__val=str(tmp_path / "val_000.bin"),
                                   eval__sets=f"other={tmp_path / 'other_000.bin'}",
                                   data__vocab=str(VOCAB))
    cfg = tmp_path / "bpb.ini"
    ref.write_config(cfg, sections)

    # The reference: per-token cross-entropy (nats) of the seeded model, bytes from tiktoken.
    nbytes = gpt2_bytes()

    def reference(tokens):
        x, y = ref.batch(ref.read_token_shard(tokens), 0, n, T)
        with torch.no_grad():
            w = {k: v.double() for k, v in p.weights.items()}
            logits = ref.forward(w, case.cfg, x)
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                   y.reshape(-1), reduction="none").numpy()
        b = nbytes[y.reshape(-1).numpy()]
        assert (b == 0).sum() >= 10, "some targets are <|endoftext|>"
        return float(ce[b > 0].sum() / (math.log(2) * b.sum())), float(ce.mean())

    want, want_loss = reference(tmp_path / "val_000.bin")
    want_other, _ = reference(tmp_path / "other_000.bin")
    train = trm.binary("triad-train")
    out = trm.run([train, "--config", cfg, "--eval-only", "--init-from", p.ckpt])
    got = bpb_of(out)
    assert abs(got - want) / want < 2e-6, (got, want, out)
    assert abs(bpb_of(out, "other") - want_other) / want_other < 2e-6, (out, want_other)
    # (per token it is another number: the loss in bits over ~4 bytes per token)
    assert abs(got - want_loss / math.log(2)) / got > 0.5, (got, want_loss)

    # Grids: the same value; and metrics.h5 at each evaluation of a training run.
    mpirun = shutil.which("mpirun")
    assert mpirun, "mpirun not found"
    for grid in (["--parallel.tp", 2], ["--parallel.pp", 2], ["--parallel.cp", 2], []):
        r = subprocess.run([mpirun, "--oversubscribe", "-np", "2", str(train), "--config",
                            str(cfg), "--eval-only", "--init-from", str(p.ckpt),
                            *map(str, grid)], capture_output=True, text=True,
                           env=dict(trm.run_env(), OMP_NUM_THREADS="1"), timeout=300)
        assert r.returncode == 0, (grid, r.stderr)
        assert abs(bpb_of(r.stdout) - got) / got < 1e-6, (grid, r.stdout, got)
    trm.run([train, "--config", cfg, "--init-from", p.ckpt, "--resume", "none",
             "--train.steps", 2, "--eval.every", 1, "--run.dir", tmp_path / "runs",
             "--run.name", "bpb"])
    with h5py.File(tmp_path / "runs" / "bpb" / "metrics.h5", "r") as f:
        assert f["val/step"][0] == 0 and len(f["val/step"]) >= 2
        bpb = f["val/bpb"][:]
        other = f["val_sets/other/bpb"][:]
    assert abs(bpb[0] - want) / want < 2e-6 and abs(other[0] - want_other) / want_other < 2e-6
    assert np.all(np.isfinite(bpb)) and np.all(np.isfinite(other)) and bpb[-1] != bpb[0], bpb
    m = load_metrics(tmp_path / "runs" / "bpb")
    assert f"({bpb[-1]:.4f} bits per byte)" in m.summary(), m.summary()


def test_bits_per_byte_needs_a_readable_tokenizer(tmp_root, tmp_path):
    case = next(c for c in trm.CASES if c.name == "gpt2vocab")
    p = trm.prepare(case, tmp_root)
    cfg = tmp_path / "bad.ini"
    ref.write_config(cfg, trm.config_sections(case, p.dir, eval__bits_per_byte="true",
                                              data__vocab=str(tmp_path / "missing.tiktoken")))
    r = subprocess.run([str(trm.binary("triad-train")), "--config", str(cfg), "--eval-only",
                        "--init-from", str(p.ckpt)], capture_output=True, text=True,
                       env=trm.run_env(), timeout=300)
    assert r.returncode != 0 and "missing.tiktoken" in r.stderr, r.stderr
    # Without it the evaluation says nothing of bytes, and metrics.h5's column is NaN.
    ref.write_config(cfg, trm.config_sections(case, p.dir))
    out = trm.run([trm.binary("triad-train"), "--config", cfg, "--eval-only", "--init-from",
                   p.ckpt])
    assert "bpb" not in out, out
