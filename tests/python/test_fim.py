"""data.fim_rate (fill-in-the-middle) against an independent reference: the training sequences
rearranged in Python from docs/formats.md's definition (the hash, the cuts, PSM and SPM, the
cut back to T + 1 tokens, the mask bytes travelling with their tokens), and PyTorch trained on
them for 10 steps beside triad-train reading the same shards with data.fim_* set. Then the bad
values, refused by name.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
import gpt_torch as ref  # noqa: E402
import test_reference_model as trm  # noqa: E402
from test_reference_model import _torch_threads, tmp_root  # noqa: E402,F401 (its fixtures)

M64 = (1 << 64) - 1
PREFIX, MIDDLE, SUFFIX = 297, 298, 299


def mix(z: int) -> int:
    """SplitMix64's finaliser."""
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def draws(seed: int, k: int, j: int, part: int | None = None):
    """h(d) and u(d) of sequence k's j-th fragment, or of its part-th part."""
    key = mix(mix(mix(seed) ^ k) ^ j)
    if part is not None:
        key = mix(key ^ (4 + part))

    def h(d):
        return mix(key ^ d)

    def u(d):
        return (h(d) >> 11) * 2.0 ** -53

    return h, u


def rearranged(tokens, counts, k, seed, rate, split, one, part_split=None, part_rate=0.0,
               pad=None):
    """Sequence k's window (T + 1 tokens and their mask bytes) cut into fragments at `split`
    (kept in place), each given to one(seg, h, u, rate) -> [(token, count)]; a fragment holding
    part_split, where u(0) < rate, part by part (each at part_rate with its own draws); the
    window cut back to its length (padded with `pad` where given)."""
    n, out, j, start = len(tokens), [], 0, 0
    for i in range(n + 1):
        if i < n and tokens[i] != split:
            continue
        if i > start:
            seg = [(int(t), int(c)) for t, c in zip(tokens[start:i], counts[start:i])]
            h, u = draws(seed, k, j)
            if part_split is None or all(t != part_split for t, _ in seg):
                out += one(seg, h, u, rate)
            elif u(0) >= rate:
                out += seg
            else:
                a, p = 0, 0
                for b in range(len(seg) + 1):
                    if b < len(seg) and seg[b][0] != part_split:
                        continue
                    if b > a:
                        out += one(seg[a:b], *draws(seed, k, j, p), part_rate)
                        p += 1
                    if b < len(seg):
                        out.append(seg[b])
                    a = b + 1
            j += 1
        if i < n:
            out.append((int(tokens[i]), int(counts[i])))
        start = i + 1
    if pad is not None:
        out += [(pad, 0)] * n
    out = out[:n]
    assert len(out) == n
    return np.array([t for t, _ in out]), np.array([c for _, c in out])


def by_tokens(seg, h, u, rate, spm, keep=lambda seg: False):
    """A fragment rearranged between tokens, the tokens keeping their mask bytes (not where
    keep(seg): data.fim_no_prefix's)."""
    if u(0) >= rate or keep(seg):
        return seg
    L = len(seg)
    a, b = sorted((h(2) % (L + 1), h(3) % (L + 1)))
    pre, mid, suf = seg[:a], seg[a:b], seg[b:]
    if u(1) < spm:
        return [(PREFIX, 1), (SUFFIX, 1)] + suf + [(MIDDLE, 1)] + pre + mid
    return [(PREFIX, 1)] + pre + [(SUFFIX, 1)] + suf + [(MIDDLE, 1)] + mid


def fim_window(tokens, counts, k, seed, rate, spm, split, part_split=None, part_rate=0.0,
               keep=lambda seg: False):
    """Sequence k's window rearranged between tokens, as documented."""
    return rearranged(tokens, counts, k, seed, rate, split,
                      lambda seg, h, u, r: by_tokens(seg, h, u, r, spm, keep), part_split,
                      part_rate)


def fim_batch(tokens, mask, first, count, T, seed, rate, spm, split, part_split=None,
              part_rate=0.0):
    """Sequences first .. first+count-1 (wrapping as ref.batch), rearranged: (x, y) with the
    targets whose mask byte is 0 at -1."""
    n = (tokens.size - 1) // T
    xs, ys = [], []
    for i in range(count):
        k = (first + i) % n
        t, c = fim_window(tokens[k * T:k * T + T + 1], mask[k * T:k * T + T + 1], k, seed,
                          rate, spm, split, part_split, part_rate)
        xs.append(t[:-1])
        ys.append(np.where(c[1:] == 1, t[1:], -1))
    return torch.from_numpy(np.stack(xs).astype(np.int64)), torch.from_numpy(
        np.stack(ys).astype(np.int64))


@pytest.mark.parametrize("rate,spm,split,masked,part", [
    (0.5, 0.5, 7, True, None), (1.0, 0.3, None, False, None), (0.9, 0.5, 7, True, 11)],
    ids=["documents-masked", "whole-sequences", "documents-in-parts"])
def test_fim_sequences_train_as_torch_on_them(rate, spm, split, masked, part, tmp_root,
                                              tmp_path):
    case = next(c for c in trm.CASES if c.name == "oddshapes")
    q = trm.packed_documents(trm.prepare(case, tmp_root), tmp_path, 7, 31)
    part_rate = 0.5
    if part is not None:  # Megatron's second level: documents cut into parts at token 11
        t = q.train_tokens.copy()
        t[(np.random.default_rng(4).random(t.size) < 0.25) & (t != 7)] = part
        ref.write_token_shard(tmp_path / "train_000.bin", t)
        q = replace(q, train_tokens=t)
    plain = replace(q, case=replace(q.case, cfg=replace(q.case.cfg, document_token=None)))
    T = case.cfg.seq_len
    mask = np.ones(q.train_tokens.size, dtype=np.uint8)
    if masked:
        mask = (np.random.default_rng(3).random(q.train_tokens.size) > 0.25).astype(np.uint8)
        ref.write_loss_mask(tmp_path / "train_000.bin.mask", mask)
    sections = trm.config_sections(case, tmp_path, train__grad_clip=trm.GRAD_CLIP[case.name],
                                   data__fim_rate=rate, data__fim_spm_rate=spm,
                                   data__fim_tokens=f"{PREFIX}, {MIDDLE}, {SUFFIX}",
                                   data__fim_split="none" if split is None else split)
    if part is not None:
        sections["data"].update(fim_fragment_split=part, fim_fragment_rate=part_rate)
    B, seed = sections["train"]["batch_size"], sections["train"]["seed"]

    def batch_of_step(s):
        return fim_batch(q.train_tokens, mask, s * B, B, T, seed, rate, spm, split, part,
                         part_rate)

    # The rearrangement happens (PSM and SPM among them) and keeps the masked targets apart.
    x, y = zip(*(batch_of_step(s) for s in range(10)))
    x, y = torch.cat(x), torch.cat(y)
    assert int((x == PREFIX).sum()) >= (8 if rate < 1 else 20), x
    spm_seen = ((x[:, :-1] == PREFIX) & (x[:, 1:] == SUFFIX)).sum()
    assert 0 < int(spm_seen) < int((x == PREFIX).sum())
    assert int((y == -1).sum()) > (20 if masked else -1)
    if part is not None:  # the parts change the sequences (the test can tell)
        assert not torch.equal(
            fim_batch(q.train_tokens, mask, 0, 10 * B, T, seed, rate, spm, split)[0], x)
    trm.compare_training(plain, tmp_path, sections, "fim", batch_of_step)
    # Without it the curve differs (the test can tell).
    m = ref.read_metrics(tmp_path / "runs" / "ref" / "metrics.h5")
    losses, *_ = trm.torch_train(plain, sections, lambda s: ref.masked_batch(
        q.train_tokens, mask, s * B, B, T))
    assert np.max(np.abs(losses - m["train/loss"]) / losses) > 1e-4


@pytest.mark.parametrize("over,needle", [
    (dict(data__fim_rate=1.5), "data.fim_rate must be in [0, 1]"),
    (dict(data__fim_rate=0.5), "data.fim_tokens must be the three sentinel token ids"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2"), "the three sentinel token ids"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 2"), "three distinct token ids"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 300"), "300 is not a token"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3", data__fim_split=3),
     "none of them data.fim_split or data.fim_fragment_split"),
    # A sentinel that starts documents or masks the next token's loss.
    (dict(data__fim_rate=0.5, data__fim_tokens="5, 6, 7", data__eod_mask_loss=6),
     "its MIDDLE sentinel 6 is data.eod_mask_loss too"),
    (dict(data__fim_rate=0.5, data__fim_tokens="5, 6, 7", data__document_mask=5),
     "its PREFIX sentinel 5 is data.document_mask too"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3", data__fim_spm_rate=-0.1),
     "data.fim_spm_rate must be in [0, 1]"),
    (dict(data__fim_tokens="1, 2, 3"), "need data.fim_rate > 0"),
    (dict(data__fim_spm_rate=0.9), "need data.fim_rate > 0"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3", data__fim_split="eot"),
     "data.fim_split: 'eot' is not a special token of data.vocab"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3", data__fim_split="1x"),
     "data.fim_split must be none or the token id"),
    (dict(eval__fim="true"), "eval.fim needs data.fim_rate > 0"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3", data__fim_granularity="word"),
     "data.fim_granularity must be token or character"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3", data__fim_granularity="character"),
     "must be the four token ids \"PREFIX, MIDDLE, SUFFIX, PAD\""),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3, 3", data__fim_granularity="character"),
     "must be four distinct token ids"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3, 4"), "the three sentinel token ids"),
    (dict(data__fim_granularity="character"), "need data.fim_rate > 0"),
    (dict(data__fim_no_prefix="xyz"), "need data.fim_rate > 0"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3", data__fim_fragment_split=5),
     "data.fim_fragment_rate must be in [0, 1] with data.fim_fragment_split"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3", data__fim_fragment_rate=0.5),
     "data.fim_fragment_rate needs data.fim_fragment_split"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3", data__fim_split=5,
          data__fim_fragment_split=5, data__fim_fragment_rate=0.5),
     "data.fim_fragment_split must differ from data.fim_split"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3", data__fim_fragment_split=3,
          data__fim_fragment_rate=0.5), "none of them data.fim_split or data.fim_fragment_split"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3", data__fim_no_prefix="xyz",
          data__vocab="/nonexistent/vocab.tiktoken"),
     "data.fim_no_prefix decodes the fragments with data.vocab"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3, 4", data__fim_granularity="character",
          data__vocab="/nonexistent/vocab.tiktoken"),
     "data.fim_granularity = character decodes the fragments with data.vocab"),
    (dict(data__fim_rate=0.5, data__fim_tokens="1, 2, 3, 4", data__fim_granularity="character"),
     "more than model.vocab_size = 300"),
    (dict(eval__fim="true", data__fim_rate=0.5, data__fim_tokens="1, 2, 3", eval__sequences=0),
     "eval.fim needs data.val or eval.sets, and eval.sequences > 0"),
    (dict(eval__fim="true", data__fim_rate=0.5, data__fim_tokens="1, 2, 3",
          eval__bits_per_byte="true"), "eval.bits_per_byte measures text per byte: not with"),
])
def test_bad_fim_settings_are_refused_by_name(over, needle, tmp_root, tmp_path):
    case = next(c for c in trm.CASES if c.name == "oddshapes")
    p = trm.prepare(case, tmp_root)
    cfg = tmp_path / "bad.ini"
    ref.write_config(cfg, trm.config_sections(case, p.dir, **over))
    r = subprocess.run([str(trm.binary("triad-train")), "--config", str(cfg), "--init-from",
                        str(p.ckpt), "--resume", "none", "--run.dir", str(tmp_path / "runs")],
                       capture_output=True, text=True, env=trm.run_env(), timeout=300)
    assert r.returncode != 0 and needle in r.stderr, r.stderr
    assert len([line for line in r.stderr.splitlines() if "error" in line]) == 1, r.stderr


def test_eval_fim_scores_the_rearranged_validation(tmp_root, tmp_path):
    """eval.fim: data.val and eval.sets rearranged as documented (d = 0, the seed 20220728
    whatever train.seed), scored by --eval-only as PyTorch's double-precision model scores the
    rearranged sequences (with a loss mask); without it, the plain sequences' loss."""
    case = next(c for c in trm.CASES if c.name == "oddshapes")
    p = trm.prepare(case, tmp_root)
    T, n = case.cfg.seq_len, case.val_sequences
    val = p.val_tokens.astype(np.int64)
    ref.write_token_shard(tmp_path / "val_000.bin", val)
    mask = (np.random.default_rng(5).random(val.size) > 0.2).astype(np.uint8)
    ref.write_loss_mask(tmp_path / "val_000.bin.mask", mask)
    rate, spm, split = 0.7, 0.5, 7

    def reference(fim: bool) -> float:
        xs, ys = [], []
        for k in range(n):
            t, c = val[k * T:k * T + T + 1], mask[k * T:k * T + T + 1]
            if fim:
                t, c = fim_window(t, c, k, 20220728, rate, spm, split)
            xs.append(t[:-1])
            ys.append(np.where(c[1:] == 1, t[1:], -1))
        x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
        with torch.no_grad():
            logits = ref.forward({k: v.double() for k, v in p.weights.items()}, case.cfg, x)
            return float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-1))

    sections = trm.config_sections(case, p.dir, data__val=str(tmp_path / "val_000.bin"),
                                   data__loss_mask="auto", data__fim_rate=rate,
                                   data__fim_spm_rate=spm, data__fim_split=split,
                                   data__fim_tokens=f"{PREFIX}, {MIDDLE}, {SUFFIX}",
                                   train__seed=77, eval__sets=f"again={tmp_path / 'val_000.bin'}")
    cfg = tmp_path / "evalfim.ini"
    ref.write_config(cfg, sections)
    train = trm.binary("triad-train")
    plain = trm.run([train, "--config", cfg, "--eval-only", "--init-from", p.ckpt])
    fim = trm.run([train, "--config", cfg, "--eval-only", "--init-from", p.ckpt,
                   "--eval.fim", "true"])
    want_plain, want_fim = reference(False), reference(True)
    assert abs(want_fim - want_plain) > 2e-4 * want_plain  # ten times the tolerance below
    for out, want in ((plain, want_plain), (fim, want_fim)):
        got = float(out.split("val loss")[1].split()[0])
        assert abs(got - want) <= 2e-5 * want, (out, want)
        assert float(out.split("again loss")[1].split()[0]) == got, out


# ---- data.fim_granularity = character ----------------------------------------------------------

EOT = 50256  # GPT-2's <|endoftext|>, its one special token
# Sentinels and the padding: ordinary GPT-2 ids that the text below never holds.
C_PREFIX, C_MIDDLE, C_SUFFIX, C_PAD = 50252, 50253, 50254, 50255


def char_units(enc, ids):
    """A fragment as docs/formats.md's units: ("c", bytes) for each UTF-8 character of the text
    its ordinary tokens decode to (a byte that is not 10xxxxxx starts one), ("w", id) for each
    token kept whole (<|endoftext|>, ids past the vocabulary)."""
    units, i = [], 0
    while i < len(ids):
        if ids[i] >= EOT:
            units.append(("w", int(ids[i])))
            i += 1
            continue
        j = i
        while j < len(ids) and ids[j] < EOT:
            j += 1
        text = enc.decode_bytes([int(t) for t in ids[i:j]])
        starts = [p for p in range(len(text)) if p == 0 or (text[p] & 0xC0) != 0x80]
        units += [("c", text[a:b]) for a, b in zip(starts, starts[1:] + [len(text)])]
        i = j
    return units


def encode_units(enc, units):
    """Units back to ids: each run of characters encoded anew by tiktoken, whole tokens kept."""
    out, run = [], b""
    for kind, v in units + [("w", None)]:
        if kind == "c":
            run += v
            continue
        if run:
            out += enc.encode_ordinary(run.decode("utf-8"))
            run = b""
        if v is not None:
            out.append(v)
    return out


def by_characters(enc, seg, h, u, rate, spm, no_prefix=""):
    """A fragment rearranged between characters, as documented: kept where a token does not
    count or its text starts with no_prefix; a rearranged one's tokens all counted."""
    ids = [t for t, _ in seg]
    text = enc.decode_bytes(ids[:next((i for i, t in enumerate(ids) if t > EOT), len(ids))])
    if u(0) >= rate or not all(c for _, c in seg) or (
            no_prefix and text.startswith(no_prefix.encode())):
        return seg
    units = char_units(enc, ids)
    C = len(units)
    a, b = sorted((h(2) % (C + 1), h(3) % (C + 1)))
    if u(1) < spm:
        ids = ([C_PREFIX, C_SUFFIX] + encode_units(enc, units[b:]) + [C_MIDDLE]
               + encode_units(enc, units[:a]) + encode_units(enc, units[a:b]))
    else:
        ids = ([C_PREFIX] + encode_units(enc, units[:a]) + [C_SUFFIX]
               + encode_units(enc, units[b:]) + [C_MIDDLE] + encode_units(enc, units[a:b]))
    return [(t, 1) for t in ids]


def fim_window_chars(enc, tokens, counts, k, seed, rate, spm, split, part_split=None,
                     part_rate=0.0, no_prefix=""):
    """Sequence k's window rearranged at character granularity, padding at the end not
    counted."""
    return rearranged(tokens, counts, k, seed, rate, split,
                      lambda seg, h, u, r: by_characters(enc, seg, h, u, r, spm, no_prefix),
                      part_split, part_rate, C_PAD)


def code_documents(enc) -> list[list[int]]:
    """Small code-like documents with accented letters (every GPT-2 token of them decodes to
    whole characters), one of them written a byte per token (not GPT-2's own
    encoding: encoded anew it takes fewer tokens, so its window needs the padding)."""
    docs = []
    for i in range(14):
        text = f"def café_{i}(naïve):  # façade\n    return naïve * {i} or 'Größe déjà'\n"
        docs.append(enc.encode_ordinary(text))
    for i in (1, 4):
        docs[i] = [enc.encode_single_token(bytes([b])) for b in f"for x in range({i}): y += x\n"
                   .encode()]
    return docs


NEWLINE = 198  # GPT-2's "\n"


@pytest.mark.parametrize("split,part,no_prefix", [(EOT, None, ""), (None, None, ""),
                                                  (EOT, NEWLINE, "def café_")],
                         ids=["documents", "whole-windows", "lines-no-prefix"])
def test_fim_by_characters_scores_as_torch_on_tiktokens_pieces(split, part, no_prefix, tmp_root,
                                                               tmp_path):
    """eval.fim with data.fim_granularity = character: data.val (GPT-2 tokens of code, with a
    loss mask) rearranged by the Python above from tiktoken's decoding and encoding, scored by
    PyTorch's double-precision model, against --eval-only; the documents as fragments, whole
    windows with <|endoftext|> kept whole inside them, and documents in parts (their lines,
    Megatron's second level) with data.fim_no_prefix keeping some lines (also between tokens)."""
    tiktoken = pytest.importorskip("tiktoken")  # noqa: F841
    from triad_run import VOCAB, gpt2_tiktoken
    enc = gpt2_tiktoken()
    case = next(c for c in trm.CASES if c.name == "gpt2vocab")
    p = trm.prepare(case, tmp_root)
    T, n = case.cfg.seq_len, case.val_sequences
    docs = code_documents(enc)
    val = np.array([t for d in docs for t in d + [EOT]][:n * T + 1], dtype=np.int64)
    assert val.size == n * T + 1
    assert all(enc.decode_single_token_bytes(int(t)).decode("utf-8") for t in val if t != EOT)
    mask = np.ones(val.size, dtype=np.uint8)
    mask[40:44] = 0  # a few targets not counted: their fragment stays as it is
    ref.write_token_shard(tmp_path / "val_000.bin", val)
    ref.write_loss_mask(tmp_path / "val_000.bin.mask", mask)
    rate, spm, part_rate = 0.8, 0.5, 0.6
    windows = [fim_window_chars(enc, val[k * T:k * T + T + 1], mask[k * T:k * T + T + 1], k,
                                20220728, rate, spm, split, part, part_rate, no_prefix)
               for k in range(n)]
    x = np.stack([t[:-1] for t, _ in windows])
    y = np.stack([np.where(c[1:] == 1, t[1:], -1) for t, c in windows])
    # The cuts fall inside tokens (new ids appear; the lines' few cuts may not), the masked
    # targets kept; with documents as
    # fragments SPM and PSM both, and a window padded (the documents of single bytes encoded
    # anew); whole windows rearranged with <|endoftext|> inside them.
    plain_ids = set(val.tolist())
    assert part is not None or any(t not in plain_ids | {C_PREFIX, C_MIDDLE, C_SUFFIX, C_PAD}
                                   for t in x.ravel())
    assert int((y == -1).sum()) >= 4
    if part is not None:  # the parts and the kept lines change the sequences
        for other in ((None, 0.0, no_prefix), (part, part_rate, "")):
            w = [fim_window_chars(enc, val[k * T:k * T + T + 1], mask[k * T:k * T + T + 1], k,
                                  20220728, rate, spm, split, *other)[0][:-1] for k in range(n)]
            assert not np.array_equal(np.stack(w), x), other
    elif split == EOT:  # (six windows as fragments: too few to hold both orders)
        spm_seen = int(((x[:, :-1] == C_PREFIX) & (x[:, 1:] == C_SUFFIX)).sum())
        assert 0 < spm_seen < int((x == C_PREFIX).sum()), x
        assert (x == C_PAD).any(), x
    else:
        assert int((x == C_PREFIX).sum()) >= 3 and (x[:, 1:] == EOT).any(), x

    def loss_of(x, y):
        with torch.no_grad():
            logits = ref.forward({k: v.double() for k, v in p.weights.items()}, case.cfg,
                                 torch.from_numpy(x))
            return float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1),
                ignore_index=-1))

    want = loss_of(x, y)
    sections = trm.config_sections(
        case, p.dir, data__val=str(tmp_path / "val_000.bin"), data__loss_mask="auto",
        data__fim_rate=rate, data__fim_spm_rate=spm, data__fim_granularity="character",
        data__fim_split="none" if split is None else split, data__vocab=str(VOCAB),
        data__fim_tokens=f"{C_PREFIX}, {C_MIDDLE}, {C_SUFFIX}, {C_PAD}", eval__fim="true")
    if part is not None:
        sections["data"].update(fim_fragment_split=part, fim_fragment_rate=part_rate,
                                fim_no_prefix=no_prefix)
    cfg = tmp_path / "chars.ini"
    ref.write_config(cfg, sections)
    out = trm.run([trm.binary("triad-train"), "--config", cfg, "--eval-only", "--init-from",
                   p.ckpt])
    got = float(out.split("val loss")[1].split()[0])
    assert abs(got - want) <= 2e-5 * want, (out, want)
    # Token granularity rearranges otherwise (the test can tell them apart); with the parts and
    # data.fim_no_prefix, as the reference between tokens does.
    tokens = trm.run([trm.binary("triad-train"), "--config", cfg, "--eval-only", "--init-from",
                      p.ckpt, "--data.fim_granularity", "token", "--data.fim_tokens",
                      f"{PREFIX}, {MIDDLE}, {SUFFIX}"])
    got_tokens = float(tokens.split("val loss")[1].split()[0])
    assert abs(got_tokens - want) > 2e-4 * want, tokens
    if part is not None:
        def keep(seg):
            return enc.decode_bytes([t for t, _ in seg]).startswith(no_prefix.encode())

        xs, ys = [], []
        for k in range(n):
            t, c = fim_window(val[k * T:k * T + T + 1], mask[k * T:k * T + T + 1], k, 20220728,
                              rate, spm, split, part, part_rate, keep)
            xs.append(t[:-1])
            ys.append(np.where(c[1:] == 1, t[1:], -1))
        want_tokens = loss_of(np.stack(xs), np.stack(ys))
        assert abs(got_tokens - want_tokens) <= 2e-5 * want_tokens, (tokens, want_tokens)
    # Training reads its sequences the same way, with train.seed: the first step's loss (these
    # shards as data.train, no mask file) is the mean over the counted targets, the padding left
    # out.
    if split != EOT:
        return
    B, seed = sections["train"]["batch_size"], sections["train"]["seed"]
    ones = np.ones(val.size, dtype=np.uint8)
    (tmp_path / "plain").mkdir()
    ref.write_token_shard(tmp_path / "plain" / "train_000.bin", val)
    batch = [fim_window_chars(enc, val[k * T:k * T + T + 1], ones[k * T:k * T + T + 1], k,
                              seed, rate, spm, split, part, part_rate, no_prefix)
             for k in range(B)]
    xt = np.stack([t[:-1] for t, _ in batch])
    yt = np.stack([np.where(c[1:] == 1, t[1:], -1) for t, c in batch])
    assert (yt == -1).any()  # padding among the targets
    out = trm.run([trm.binary("triad-train"), "--config", cfg, "--init-from", p.ckpt,
                   "--resume", "none", "--train.steps", 1, "--run.dir", tmp_path / "runs",
                   "--data.train", tmp_path / "plain" / "train_*.bin", "--run.name", "train"])
    assert "cut between characters" in out, out
    m = ref.read_metrics(tmp_path / "runs" / "train" / "metrics.h5")
    want_train = loss_of(xt, yt)
    assert abs(m["train/loss"][0] - want_train) <= 2e-5 * want_train, (m["train/loss"], want_train)
    # dp 2: each replica counts its share's targets, the two counts summed: the same loss.
    r = subprocess.run([shutil.which("mpirun"), "--oversubscribe", "-np", "2",
                        str(trm.binary("triad-train")), "--config", str(cfg), "--init-from",
                        str(p.ckpt), "--resume", "none", "--train.steps", "1", "--run.dir",
                        str(tmp_path / "runs"), "--data.train",
                        str(tmp_path / "plain" / "train_*.bin"), "--run.name", "dp"],
                       capture_output=True, text=True,
                       env=dict(trm.run_env(), OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 0, r.stderr
    dp = ref.read_metrics(tmp_path / "runs" / "dp" / "metrics.h5")["train/loss"][0]
    assert abs(dp - want_train) <= 2e-5 * want_train, (dp, want_train)


def test_fim_tokens_by_special_token_names(tmp_root, tmp_path):
    """data.fim_tokens (and data.fim_split) may name data.vocab's special tokens instead of their
    ids: eval.fim with GPT-2's "<|endoftext|>" as the suffix sentinel, or as the split, scores as
    with its id 50256, and otherwise than with another id; a name the tokenizer lacks, or a name
    without data.vocab, is refused."""
    from triad_run import VOCAB
    case = next(c for c in trm.CASES if c.name == "gpt2vocab")
    p = trm.prepare(case, tmp_root)
    sections = trm.config_sections(case, p.dir, data__fim_rate=0.9, data__vocab=str(VOCAB),
                                   data__fim_tokens="50252, 50253, 50256", eval__fim="true")
    cfg = tmp_path / "ids.ini"
    ref.write_config(cfg, sections)

    def val_loss(tokens, split="none"):
        out = trm.run([trm.binary("triad-train"), "--config", cfg, "--eval-only", "--init-from",
                       p.ckpt, "--data.fim_tokens", tokens, "--data.fim_split", split])
        return float(out.split("val loss")[1].split()[0])

    by_id = val_loss("50252, 50253, 50256")
    assert val_loss("50252, 50253, <|endoftext|>") == by_id
    assert val_loss("50252, 50253, 50255") != by_id
    # data.fim_split by name too (the documents cut at <|endoftext|>)
    split = val_loss("50252, 50253, 50254", "50256")
    assert val_loss("50252, 50253, 50254", "<|endoftext|>") == split != by_id
    for tokens, vocab, needle in (
            ("50252, <fim_middle>, 50256", str(VOCAB),
             "data.fim_tokens: '<fim_middle>' is not a special token of data.vocab"),
            ("50252, 50253, <|endoftext|>", "",
             "is neither a token id nor, without data.vocab, a special token's name")):
        r = subprocess.run([str(trm.binary("triad-train")), "--config", str(cfg), "--eval-only",
                            "--init-from", str(p.ckpt), "--data.fim_tokens", tokens,
                            "--data.vocab", vocab], capture_output=True, text=True,
                           env=trm.run_env(), timeout=300)
        assert r.returncode != 0 and needle in r.stderr, r.stderr
        assert len([line for line in r.stderr.splitlines() if "error" in line]) == 1, r.stderr


def test_document_mask_and_eod_mask_loss_by_special_token_names(tmp_root, tmp_path):
    """data.document_mask and data.eod_mask_loss may name data.vocab's special tokens: with
    GPT-2's "<|endoftext|>" the validation on packed documents scores exactly as with its id
    50256, and otherwise than without the mask; the run's recorded config holds the id; a name
    the tokenizer lacks, or a name without data.vocab, is refused by key."""
    from triad_run import VOCAB
    case = next(c for c in trm.CASES if c.name == "gpt2vocab")
    p = trm.prepare(case, tmp_root)
    rng = np.random.default_rng(3)
    for shard, tokens in (("train_000.bin", p.train_tokens), ("val_000.bin", p.val_tokens)):
        t = tokens.copy()
        t[rng.random(t.size) < 0.15] = 50256  # documents of about seven tokens, packed
        ref.write_token_shard(tmp_path / shard, t)
    cfg = tmp_path / "docs.ini"
    ref.write_config(cfg, trm.config_sections(case, tmp_path, data__vocab=str(VOCAB)))

    def val_loss(*over):
        out = trm.run([trm.binary("triad-train"), "--config", cfg, "--eval-only", "--init-from",
                       p.ckpt, "--run.dir", tmp_path / "runs", *over])
        return float(out.split("val loss")[1].split()[0])

    plain = val_loss()
    by_id = val_loss("--data.document_mask", "50256")
    assert val_loss("--data.document_mask", "<|endoftext|>") == by_id != plain
    eod = val_loss("--data.eod_mask_loss", "50256")
    assert val_loss("--data.eod_mask_loss", "<|endoftext|>") == eod != plain
    # A short training run records the resolved id in its config.
    trm.run([trm.binary("triad-train"), "--config", cfg, "--init-from", p.ckpt, "--resume", "none",
             "--run.dir", tmp_path / "runs", "--run.name", "named", "--train.steps", "1",
             "--data.document_mask", "<|endoftext|>"])
    with h5py.File(tmp_path / "runs" / "named" / "metrics.h5", "r") as f:
        recorded = f.attrs["config"]
    recorded = recorded.decode() if isinstance(recorded, bytes) else str(recorded)
    assert "document_mask = 50256" in recorded and "<|endoftext|>" not in recorded
    for key, value, vocab, needle in (
            ("--data.document_mask", "<fim_middle>", str(VOCAB),
             "data.document_mask: '<fim_middle>' is neither a token id nor a special token of "
             "data.vocab"),
            ("--data.eod_mask_loss", "<|endoftext|>", "",
             "data.eod_mask_loss: '<|endoftext|>' is neither a token id nor, without data.vocab"),
            ("--data.document_mask", "<|endoftext|>", str(tmp_path / "missing.tiktoken"),
             "data.document_mask resolves its name '<|endoftext|>' with data.vocab")):
        r = subprocess.run([str(trm.binary("triad-train")), "--config", str(cfg), "--eval-only",
                            "--init-from", str(p.ckpt), key, value, "--data.vocab", vocab],
                           capture_output=True, text=True, env=trm.run_env(), timeout=300)
        assert r.returncode != 0 and needle in r.stderr, r.stderr
        assert len([line for line in r.stderr.splitlines() if "error" in line]) == 1, r.stderr


def test_bench_fim_reads_the_documented_rearrangement(tmp_path):
    """triad-bench fim's --dump: the sequences it timed, rearranged between characters, are the
    Python reference's; bad options are clear errors."""
    pytest.importorskip("tiktoken")
    from triad_run import VOCAB, assert_clean_error, exe, gpt2_tiktoken, run
    enc = gpt2_tiktoken()
    T, n = 32, 6
    tokens = np.array([t for d in code_documents(enc) for t in d + [EOT]][:n * T + 1])
    ref.write_token_shard(tmp_path / "data_000.bin", tokens)
    base = [str(a) for a in (exe("triad-bench"), "fim", "--data", tmp_path / "data_*.bin",
                             "--vocab", VOCAB, "--seq-len", T, "--sequences", n, "--repeat", 1,
                             "--split", EOT)]
    bench = [*base, "--rate", "0.8"]
    p = run([*bench, "--tokens", f"{C_PREFIX}, {C_MIDDLE}, {C_SUFFIX}, {C_PAD}", "--dump",
             str(tmp_path / "dump.bin")], check=True)
    assert "rearranged (character)" in p.stdout and "RESULT fim" in p.stdout, p.stdout
    got = np.fromfile(tmp_path / "dump.bin", dtype=np.int32).reshape(n, T)
    ones = np.ones(T + 1, np.uint8)
    for k in range(n):
        want = fim_window_chars(enc, tokens[k * T:k * T + T + 1], ones, k, 1, 0.8, 0.5, EOT)[0]
        np.testing.assert_array_equal(got[k], want[:-1], err_msg=str(k))
    # (checked as a run's data.fim_* are, the message naming this command's options)
    assert_clean_error(run([*bench, "--tokens", "1, 2, 3"]),
                       "fim: --tokens must be the four token ids")
    if Path("/dev/full").exists():  # (a full disk: the write failed at the close, unseen, exit 0)
        assert_clean_error(run([*bench, "--tokens", f"{C_PREFIX}, {C_MIDDLE}, {C_SUFFIX}, "
                                f"{C_PAD}", "--dump", "/dev/full"]),
                           "fim: cannot write --dump /dev/full")
    assert_clean_error(run([*bench, "--tokens", "1, 2, 3, 4x"]),
                       "--tokens must be none or the token id of the padding (got '4x')")
    assert_clean_error(run([*bench, "--tokens", "1, 2, 3, x"]),
                       "--tokens: 'x' is not a special token of --vocab")
    assert_clean_error(run([*bench, "--tokens", "1, 2, 3, 4", "--granularity", "word"]),
                       "--granularity must be token or character")
    assert_clean_error(run([*base, "--tokens", "1, 2, 3, 4", "--rate", "0"]),
                       "--rate must be > 0")
    assert_clean_error(run([*base, "--tokens", "1, 2, 3, 4", "--rate", "nan"]),
                       "--rate must be in [0, 1]")  # (not "must be > 0", which nan was told)
    assert_clean_error(run([*bench, "--tokens", "1, 2, 3, 4", "--spm-rate", "2"]),
                       "--spm-rate must be in [0, 1]")
    for p in (run([*bench, "--tokens", "1, 2, 3"]), run([*bench, "--tokens", "1, 2, 3, x"])):
        assert "data." not in p.stderr and "config" not in p.stderr, p.stderr
    assert_clean_error(run([*bench, "--tokens", "1, 2, 3, 4", "--dump", ""]), "--dump is empty")
    assert_clean_error(run([*bench, "--tokens", "1, 2, 3, 4", "--dump", str(tmp_path)]),
                       "is a directory")
