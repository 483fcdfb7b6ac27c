"""triad-generate --draft (speculative decoding) against independent references: greedy decoding
with a draft gives the float64 PyTorch reference's greedy continuation (the draft the model
itself, every token kept; a perturbed copy, some kept; an unrelated model, almost none), within
and past the context, on one rank and on a grid; sampled continuations follow the distribution
transformers' logits processors give the reference's logits, pair by pair; bad options are
refused by name."""

import re
import shutil
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from test_generate import (CFG, PROMPT, generate_torch, mpi_generate, processed_distribution,
                           ref)
from triad_run import VOCAB, assert_clean_error, exe, run, tiny_config, train

BLUR = 0.5  # the noise on the module's eh_proj (mtp_model)
DRAFT_CFG = ref.GptConfig(n_layer=1, n_head=2, n_embd=32, seq_len=24, vocab_size=CFG.vocab_size)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The target (test_generate's model), a copy of it with every weight moved by 5% noise, the
    target with its final norm's weight and bias times 1.6 (its logits times 1.6: the same order
    of the tokens, each distribution sharper), and an unrelated smaller model with a shorter
    context."""
    d = tmp_path_factory.mktemp("speculative")
    w = {k: (v * 8 if v.dim() == 2 else v) for k, v in ref.random_weights(CFG, 4).items()}
    g = torch.Generator().manual_seed(12)
    near = {k: v * (1 + 0.05 * torch.randn(v.shape, generator=g)) for k, v in w.items()}
    small = {k: (v * 8 if v.dim() == 2 else v)
             for k, v in ref.random_weights(DRAFT_CFG, 7).items()}
    sharp = {k: v * 1.6 if k.startswith("ln_f/") else v for k, v in w.items()}
    paths = {name: d / f"{name}.h5" for name in ("target", "near", "sharp", "small")}
    ref.write_checkpoint(paths["target"], CFG, w)
    ref.write_checkpoint(paths["near"], CFG, near)
    ref.write_checkpoint(paths["sharp"], CFG, sharp)
    ref.write_checkpoint(paths["small"], DRAFT_CFG, small)
    return paths


def generate(target, *args):
    return run([exe("triad-generate"), "--checkpoint", target, "--vocab", VOCAB, "--output",
                "ids", *map(str, args)], check=True)


def kept(stderr):
    """(kept, drafted) from --timing's line."""
    m = re.search(r"(\d+) of (\d+) drafted tokens kept", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("draft,tokens", [("target", 4), ("near", 3), ("small", 5)])
def test_greedy_with_a_draft_is_the_models_greedy_continuation(models, draft, tokens):
    """40 greedy tokens after an 8-token prompt (the context is 32: the last ones slide) are the
    reference's, whatever the draft: the model itself (every drafted token kept), a perturbed
    copy (some kept, some replaced) or an unrelated model of another shape (its context of 24
    sliding too; almost none kept)."""
    _, params = ref.load_checkpoint(models["target"], dtype=torch.float64)
    want = generate_torch.generate(params, CFG, PROMPT, 40, "recompute")
    p = generate(models["target"], "--prompt-ids", " ".join(map(str, PROMPT)), "--length", 40,
                 "--top-k", 1, "--draft", models[draft], "--draft-tokens", tokens, "--timing")
    assert [int(t) for t in p.stdout.split()] == want
    k, n = kept(p.stderr)
    assert n > 0 and {"target": k == n, "near": 0 < k < n, "small": k < n / 4}[draft], p.stderr
    assert "tokens without a draft" in p.stderr


def test_greedy_with_a_draft_on_a_grid(models):
    """mpirun -np 2 --tp 2 and --pp 2: every rank holds the whole draft and they keep the same
    tokens: rank 0 prints the reference's greedy continuation."""
    _, params = ref.load_checkpoint(models["target"], dtype=torch.float64)
    want = generate_torch.generate(params, CFG, PROMPT, 30, "recompute")
    for grid in (("--tp", 2), ("--pp", 2)):
        p = mpi_generate(2, "--checkpoint", models["target"], "--vocab", VOCAB, "--prompt-ids",
                         " ".join(map(str, PROMPT)), "--length", 30, "--top-k", 1, "--output",
                         "ids", "--draft", models["near"], *grid)
        assert p.returncode == 0, p.stderr
        assert [int(t) for t in p.stdout.split()] == want, grid


def test_sampling_with_a_draft_follows_the_models_distribution(models):
    """3,000 seeded samples of two tokens (temperature 0.5, top-k 5, repetition penalty 1.3,
    which reads the first drawn token for the second) with a draft that ranks the tokens as the
    model does but is sure of them (the sharpened copy: the rule keeps a token with probability
    p/q where the draft overrates it, and replaces it from the tokens it underrates), and with
    the perturbed copy (whose candidates differ): every pair's frequency is within 5 standard
    deviations of the probability transformers' processors give the reference's logits (the
    first token's, times the second's after it), nothing is drawn that they remove, and some
    draft tokens were replaced. A seed repeats its samples."""
    setting = dict(temperature=0.5, top_k=5, top_p=1.0, min_p=0.0, repetition=1.3)
    _, params = ref.load_checkpoint(models["target"], dtype=torch.float64)
    first = processed_distribution(params, PROMPT, **setting)
    pairs = {}
    for a in torch.nonzero(first).flatten().tolist():
        second = processed_distribution(params, PROMPT + [a], **setting)
        for b in torch.nonzero(second).flatten().tolist():
            pairs[(a, b)] = float(first[a] * second[b])
    assert len(pairs) >= 8 and abs(sum(pairs.values()) - 1) < 1e-9
    n = 3000
    for draft in ("sharp", "near"):
        args = ["--prompt-ids", " ".join(map(str, PROMPT)), "--length", 2, "--samples", n,
                "--temperature", 0.5, "--top-k", 5, "--repetition-penalty", 1.3, "--seed", 3,
                "--draft", models[draft], "--draft-tokens", 2, "--timing"]
        p = generate(models["target"], *args)
        drawn = np.array([int(t) for t in p.stdout.split()]).reshape(n, 2)
        k, proposed = kept(p.stderr)
        assert 0 < k < proposed, p.stderr
        counts = {}
        for a, b in drawn.tolist():
            counts[(a, b)] = counts.get((a, b), 0) + 1
        assert set(counts) <= set(pairs), ("drew a pair the processors remove", draft)
        for pair, prob in pairs.items():
            c = counts.get(pair, 0)
            assert abs(c - n * prob) <= 5 * np.sqrt(n * prob * (1 - prob)) + 1, \
                (draft, pair, c, n * prob)
    assert generate(models["target"], *args[:-1]).stdout == p.stdout


def test_refuses_bad_draft_options(models, tmp_path):
    def gen(*args):
        return run([exe("triad-generate"), "--checkpoint", models["target"], "--vocab", VOCAB,
                    "--prompt-ids", "1 2", *map(str, args)])

    assert_clean_error(gen("--draft-tokens", 2), "--draft-tokens needs --draft")
    assert_clean_error(gen("--draft", ""), "--draft is empty")
    for bad in (0, 33):
        assert_clean_error(gen("--draft", models["near"], "--draft-tokens", bad),
                           "--draft-tokens must be in [1, 32]")
    assert_clean_error(gen("--draft", models["near"], "--samples", 4, "--batch", 2),
                       "--draft decodes one sample at a time: give --batch 1")
    assert_clean_error(gen("--draft", models["near"], "--no-kv-cache"),
                       "--draft checks the drafted tokens against the KV cache")
    other = tmp_path / "other_vocab.h5"
    cfg = ref.GptConfig(n_layer=1, n_head=2, n_embd=32, seq_len=16, vocab_size=300)
    ref.write_checkpoint(other, cfg, ref.random_weights(cfg, 1))
    assert_clean_error(gen("--draft", other), f"--draft {other}: its model has 300 tokens",
                       "a draft must share the model's token ids")
    assert_clean_error(gen("--draft", tmp_path / "absent.h5"), "absent.h5")
    assert_clean_error(gen("--draft", tmp_path), f"--draft {tmp_path}: no complete checkpoint in")
    # a run directory: its newest complete checkpoint
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    shutil.copy(models["near"], tmp_path / "run" / "ckpt" / "step_00000000.h5")
    p = gen("--draft", tmp_path / "run", "--top-k", 1, "--length", 6, "--output", "ids")
    assert p.returncode == 0, p.stderr
    assert p.stdout == gen("--top-k", 1, "--length", 6, "--output", "ids").stdout


# ---- the model's own multi-token prediction module as the draft (--draft mtp) -----------------


@pytest.fixture(scope="module")
def mtp_model(tmp_path_factory):
    """A small model with one multi-token prediction module (context 48), trained 30 steps on
    a token stream that repeats a 5-token pattern with a fifth of its tokens replaced at random,
    its module's eh_proj then blurred by noise (so that its drafts of the pattern are sometimes
    wrong; the checksum rewritten). Returns the checkpoint, its reference config (the module
    included) and float64 weights."""
    d = tmp_path_factory.mktemp("mtp_draft")
    (d / "data").mkdir()
    rng = np.random.default_rng(3)

    def stream(n):
        t = np.tile(np.array([11, 22, 33, 44, 55]), n // 5 + 1)[:n]
        noise = rng.random(n) < 0.2
        t[noise] = rng.integers(100, 140, int(noise.sum()))
        return t

    for name, n in (("train_000", 20000), ("train_001", 2000), ("val_000", 2000)):
        ref.write_token_shard(d / "data" / f"{name}.bin", stream(n))
    cfg = tiny_config(d, name="m", model__seq_len=48, model__mtp_depth=1, train__steps=30,
                      eval__every=0, checkpoint__every=30)
    train("--config", cfg, check=True)
    path = d / "runs" / "m" / "ckpt" / "step_00000030.h5"
    with h5py.File(path, "r+") as f:
        w = f["model/mtp/0/eh_proj/weight"]
        blurred = w[...] + BLUR * np.random.default_rng(5).standard_normal(w.shape).astype("<f4")
        w[...] = blurred
        w.attrs.create("checksum", np.uint32(ref.fp32_checksum(blurred)), dtype="<u4")
    model_cfg, params = ref.load_checkpoint(path, dtype=torch.float64)
    return path, replace(model_cfg, mtp_depth=1), params


def test_greedy_with_the_module_as_draft(mtp_model):
    """--draft mtp, greedy, 60 tokens after a 6-token prompt (past the context of 48): the
    reference's greedy continuation, and as many of the module's drafts kept as the reference's
    module (forward_mtp's first prediction at each round's position) gets right. The same
    without --timing, and on a model without modules or on a grid it is refused by name."""
    path, cfg, params = mtp_model
    prompt, length = [11, 22, 33, 44, 55, 11], 60
    want = generate_torch.generate(params, cfg, prompt, length, "recompute")
    p = generate(path, "--prompt-ids", " ".join(map(str, prompt)), "--length", length, "--top-k",
                 1, "--draft", "mtp", "--timing")
    assert [int(t) for t in p.stdout.split()] == want
    # The rounds as the module drafts them: after the first token, one draft a round while two
    # tokens or more are wanted and the pass with the draft fits the context.
    full, n, T = prompt + want, len(prompt), cfg.seq_len
    L, rounds, good = n + 1, 0, 0
    with torch.no_grad():
        while length - (L - n) >= 2 and L + 1 <= T:
            _, predictions = ref.forward_mtp(params, cfg, torch.tensor([full[:L]]))
            rounds += 1
            if int(predictions[0][0, L - 2].argmax()) == full[L]:
                good, L = good + 1, L + 2
            else:
                L += 1
    assert kept(p.stderr) == (good, rounds) and 0 < good < rounds, (p.stderr, good, rounds)


def test_sampling_with_the_module_as_draft(mtp_model):
    """3,000 samples of three tokens (temperature 1.5, top-k 4: the module's draft of the
    second is often replaced) follow the reference's distribution, triple by triple."""
    path, cfg, params = mtp_model
    prompt = [11, 22, 33, 44]

    def dist(ids):
        with torch.no_grad():
            logits = ref.forward(params, cfg, torch.tensor([ids]))[0, -1] / 1.5
        top = logits.topk(4)
        p = torch.zeros_like(logits)
        p[top.indices] = torch.softmax(top.values, -1)
        return p

    triples = {}
    first = dist(prompt)
    for a in torch.nonzero(first).flatten().tolist():
        second = dist(prompt + [a])
        for b in torch.nonzero(second).flatten().tolist():
            third = dist(prompt + [a, b])
            for c in torch.nonzero(third).flatten().tolist():
                triples[(a, b, c)] = float(first[a] * second[b] * third[c])
    n = 3000
    p = generate(path, "--prompt-ids", " ".join(map(str, prompt)), "--length", 3, "--samples", n,
                 "--temperature", 1.5, "--top-k", 4, "--seed", 8, "--draft", "mtp", "--timing")
    k, proposed = kept(p.stderr)
    assert proposed == n and 0 < k < n, p.stderr
    counts = {}
    for t in np.array([int(t) for t in p.stdout.split()]).reshape(n, 3).tolist():
        counts[tuple(t)] = counts.get(tuple(t), 0) + 1
    assert set(counts) <= set(triples), "drew a sequence the reference's filters remove"
    for triple, prob in triples.items():
        c = counts.get(triple, 0)
        assert abs(c - n * prob) <= 5 * np.sqrt(n * prob * (1 - prob)) + 1, (triple, c, n * prob)


def test_module_draft_refusals(mtp_model, models):
    path, _, _ = mtp_model
    assert_clean_error(run([exe("triad-generate"), "--checkpoint", models["target"], "--vocab",
                            VOCAB, "--draft", "mtp"]),
                       "--draft mtp:", "has no multi-token prediction modules")
    assert_clean_error(run([exe("triad-generate"), "--checkpoint", path, "--vocab", VOCAB,
                            "--draft", "mtp", "--draft-tokens", "2"]),
                       "--draft mtp drafts one token a round")
    p = mpi_generate(2, "--checkpoint", path, "--vocab", VOCAB, "--draft", "mtp", "--tp", 2)
    assert p.returncode != 0 and "--draft mtp runs on one rank" in p.stderr, p.stderr


def test_draft_keeps_logprobs_and_streaming(models):
    """With a draft, --output logprobs reports the model's own log-probabilities of each token
    (its check's rows, equal to a pass without a draft up to rounding), and --stream prints the
    text as without it."""
    common = ["--prompt-ids", " ".join(map(str, PROMPT)), "--length", 12, "--top-k", 1]
    def logprobs(*draft):
        return run([exe("triad-generate"), "--checkpoint", models["target"], "--vocab", VOCAB,
                    *map(str, common), "--output", "logprobs", "--logprobs", "3",
                    *map(str, draft)], check=True).stdout

    plain, drafted = logprobs(), logprobs("--draft", models["near"])

    def rows(text):  # each token's (id, logprob), then its alternatives'
        out = []
        for line in text.strip().splitlines():
            token, value, *alternatives = line.split()
            out.append([(int(token), float(value))] +
                       [(int(i), float(v)) for i, v in (a.split(":") for a in alternatives)])
        return out

    a, b = rows(plain), rows(drafted)
    assert len(a) == len(b) == 12
    for x, y in zip(a, b):
        assert [i for i, _ in x] == [i for i, _ in y]
        assert np.allclose([v for _, v in x], [v for _, v in y], rtol=0, atol=1e-5)
    text = ["--prompt", "It is", "--length", 10, "--top-k", 1]
    want = run([exe("triad-generate"), "--checkpoint", models["target"], "--vocab", VOCAB,
                *map(str, text)], check=True).stdout
    got = run([exe("triad-generate"), "--checkpoint", models["target"], "--vocab", VOCAB,
               *map(str, text), "--stream", "--draft", models["near"]], check=True).stdout
    assert got == want
