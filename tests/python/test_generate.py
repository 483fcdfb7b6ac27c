"""triad-generate against an independent PyTorch reference (tests/reference/generate_torch.py,
in float64): greedy continuations of seeded random models, with triad's cache of keys and values
and without it, through the prompt, token by token, and past the context (where the window
slides and is recomputed); and its new options' bad values."""

import sys

import pytest
import torch

from triad_run import REPO, VOCAB, assert_clean_error, exe, run

sys.path.insert(0, str(REPO / "tests" / "reference"))
import generate_torch  # noqa: E402
import gpt_torch as ref  # noqa: E402

CFG = ref.GptConfig(n_layer=2, n_head=4, n_embd=64, seq_len=32, vocab_size=50257)
PROMPT = [464, 3290, 7586, 21831, 18045, 625, 262, 16931]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("generate") / "model.h5"
    # perturb: nonzero biases and LayerNorm parameters, so every term of the layers counts;
    # a larger scale than init's, so the greedy choices are far from ties.
    w = {k: (v * 8 if v.dim() == 2 else v) for k, v in ref.random_weights(CFG, 4).items()}
    ref.write_checkpoint(path, CFG, w)
    return path


def generate(checkpoint, *args):
    p = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB, "--top-k", "1",
             "--output", "ids", *map(str, args)], check=True)
    return [int(t) for t in p.stdout.split()]


@pytest.mark.parametrize("length", [1, 20, 45])  # 45: 21 tokens past the context of 32
def test_greedy_continuation_matches_torch(checkpoint, length):
    _, params = ref.load_checkpoint(checkpoint, dtype=torch.float64)
    want = generate_torch.generate(params, CFG, PROMPT, length, "recompute")
    assert generate_torch.generate(params, CFG, PROMPT, length, "kv-cache") == want
    ids = " ".join(map(str, PROMPT))
    assert generate(checkpoint, "--prompt-ids", ids, "--length", length) == want
    assert generate(checkpoint, "--prompt-ids", ids, "--length", length, "--no-kv-cache") == want


def test_bf16_continuation_with_and_without_the_cache(checkpoint):
    """bf16 weights and activations: the cache changes only the order of fp32 sums, so both ways
    give the same greedy tokens; the first ones are fp32's (later ones may part where bf16's
    rounding exceeds a gap between the two likeliest tokens)."""
    ids = " ".join(map(str, PROMPT))
    fp32 = generate(checkpoint, "--prompt-ids", ids, "--length", 2)
    cached = generate(checkpoint, "--prompt-ids", ids, "--length", 6, "--precision", "bf16")
    assert cached[:2] == fp32
    assert generate(checkpoint, "--prompt-ids", ids, "--length", 6, "--precision", "bf16",
                    "--no-kv-cache") == cached


def test_prompt_ids_print_their_text(checkpoint):
    p = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB, "--prompt-ids",
             "15496 995", "--length", "2"], check=True)
    assert p.stdout.startswith("Hello world"), p.stdout


def test_timing_goes_to_stderr(checkpoint):
    p = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB, "--prompt-ids",
             "1 2 3", "--length", "3", "--output", "ids", "--timing"], check=True)
    assert len(p.stdout.split()) == 3
    assert "3 tokens after a prompt of 3" in p.stderr and "KV cache on" in p.stderr, p.stderr


def test_refuses_bad_new_options(checkpoint):
    def gen(*args):
        return run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB,
                    *map(str, args)])

    assert_clean_error(gen("--prompt-ids", "1 x 3"), "'x' is not a token id")
    assert_clean_error(gen("--prompt-ids", "50257"), "'50257' is not a token id")
    assert_clean_error(gen("--prompt-ids", "-1"), "'-1' is not a token id")
    assert_clean_error(gen("--prompt-ids", "  "), "--prompt-ids: no token ids")
    assert_clean_error(gen("--prompt-ids", "1", "--prompt", "Hi"), "not both")
    assert_clean_error(gen("--prompt-ids", "1", "--prompt", ""), "not both")
    assert_clean_error(gen("--backend", "tpu"), "--backend must be cpu or cuda")
    assert_clean_error(gen("--precision", "fp16"), "--precision must be auto, fp32 or bf16")
    assert_clean_error(gen("--output", "json"), "--output must be text or ids")
    assert_clean_error(gen("--threads", "-2"), "--threads must be >= 0")
