"""triad-generate against an independent PyTorch reference (tests/reference/generate_torch.py,
in float64): greedy continuations of seeded random models, with triad's cache of keys and values
and without it, through the prompt, token by token, and past the context (where the window
slides and is recomputed); and its new options' bad values."""

import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from triad_run import ENV, REPO, VOCAB, assert_clean_error, exe, gpt2_tiktoken, run

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


def generate(checkpoint, *args, top_k=1):
    p = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB, "--top-k",
             str(top_k), "--output", "ids", *map(str, args)], check=True)
    return [int(t) for t in p.stdout.split()]


@pytest.mark.parametrize("length", [1, 20, 45])  # 45: 21 tokens past the context of 32
def test_greedy_continuation_matches_torch(checkpoint, length):
    _, params = ref.load_checkpoint(checkpoint, dtype=torch.float64)
    want = generate_torch.generate(params, CFG, PROMPT, length, "recompute")
    assert generate_torch.generate(params, CFG, PROMPT, length, "kv-cache") == want
    ids = " ".join(map(str, PROMPT))
    assert generate(checkpoint, "--prompt-ids", ids, "--length", length) == want
    assert generate(checkpoint, "--prompt-ids", ids, "--length", length, "--no-kv-cache") == want


ROPE = ref.GptConfig(n_layer=2, n_head=4, n_embd=64, seq_len=32, vocab_size=50257,
                     position="rope", rope_theta=200.0)


@pytest.fixture(scope="module")
def rope_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("generate_rope") / "model.h5"
    w = {k: (v * 8 if v.dim() == 2 else v) for k, v in ref.random_weights(ROPE, 5).items()}
    ref.write_checkpoint(path, ROPE, w)
    return path


@pytest.mark.parametrize("n_kv_head,qk_norm,scaling,head_dim",
                         [(0, False, None, 0), (2, False, None, 0), (2, True, None, 0),
                          (2, False, (8.0, 1.0, 4.0, 32), 0), (2, True, None, 24),
                          (2, "full", None, 24)],
                         ids=["mha", "gqa", "gqa-qknorm", "gqa-llama3-rope", "qwen3-heads",
                              "qknorm-full"])
def test_llama_blocks_continuation_matches_torch(tmp_path, n_kv_head, qk_norm, scaling,
                                                 head_dim):
    """Llama's architecture (RMSNorm, rope, SwiGLU, no biases, an untied output layer; and
    grouped-query attention, 4 query heads over 2 key/value heads, whose cache holds the 2; and
    QK-norm, the cache holding normalized and rotated keys; and Llama 3.1's rope scaling; and
    heads 24 wide at n_embd 64, Qwen3's shape; and those heads with QK-norm over all of them,
    model.qk_norm_full, each tp rank's half of the sums of squares reduced with the other's) on
    one rank and on tp 2 × pp 2."""
    cfg = ref.GptConfig(n_layer=2, n_head=4, n_embd=64, seq_len=32, vocab_size=50257,
                        position="rope", rope_theta=200.0, norm="rmsnorm", bias=False,
                        mlp="swiglu", tied=False, n_kv_head=n_kv_head, qk_norm=bool(qk_norm),
                        qk_norm_full=qk_norm == "full", rope_scaling=scaling,
                        attn_head_dim=head_dim)
    continues_as_torch(tmp_path / "rms.h5", cfg, 6, 4, "--tp", 2, "--pp", 2)


@pytest.mark.parametrize("q_lora_rank,yarn", [
    (12, None), (0, None),
    (12, ref.Yarn(4.0, 8, beta_fast=0.5, beta_slow=0.05, mscale=1.5, mscale_all_dim=2.0))],
    ids=["q-latent", "q-from-token", "q-latent-deepseek-yarn"])
def test_latent_attention_continuation_matches_torch(tmp_path, q_lora_rank, yarn):
    """Multi-head latent attention (model.kv_lora_rank): the key/value cache keeps each head's
    assembled keys and values (the shared rotated key in each, v padded to the heads' 16); the
    greedy tokens, within the context and past it, are the float64 reference's (which forms the
    latents from the paper's equations over the whole context) on one rank and on tp 2 × pp 2;
    with queries through a latent of 12 and straight from the token; and with YaRN in
    DeepSeek's form (the scores scaled apart from cos and sin). The attention's matrices are 4
    times larger again, so that the scores steer the tokens: another rope_theta gives 38 of the
    40 other with queries through the latent (none without the gain), Qwen's form of YaRN or none
    35."""
    cfg = ref.GptConfig(n_layer=2, n_head=4, n_embd=64, seq_len=32, vocab_size=50257,
                        position="rope", rope_theta=200.0, norm="rmsnorm", bias=False,
                        mlp="swiglu", tied=False, kv_lora_rank=16, q_lora_rank=q_lora_rank,
                        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12,
                        rope_scaling=yarn)
    continues_as_torch(tmp_path / "mla.h5", cfg, 8, 4, "--tp", 2, "--pp", 2, attention_gain=4)


def continues_as_torch(path, cfg, seed, ranks, *grid, attention_gain=1):
    """A checkpoint of cfg's random weights (seed; the matrices times 8, so that the greedy
    choices are clear, the attention's times attention_gain more) written to path:
    triad-generate's 40 greedy tokens after PROMPT, on one rank and on `ranks` ranks of `grid`,
    are the float64 reference's."""
    ref.write_checkpoint(path, cfg, {k: (v * 8 * (attention_gain if "/attn/" in k else 1)
                                         if v.dim() >= 2 else v)
                                     for k, v in ref.random_weights(cfg, seed).items()})
    _, params = ref.load_checkpoint(path, dtype=torch.float64)
    want = generate_torch.generate(params, cfg, PROMPT, 40, "recompute")
    ids = " ".join(map(str, PROMPT))
    assert generate(path, "--prompt-ids", ids, "--length", 40) == want
    p = mpi_generate(ranks, "--checkpoint", path, "--vocab", VOCAB, "--prompt-ids", ids,
                     "--length", 40, "--top-k", 1, "--output", "ids", *grid)
    assert p.returncode == 0, p.stderr
    assert [int(t) for t in p.stdout.split()] == want


def test_gpt_oss_blocks_continuation_matches_torch(tmp_path):
    """gpt-oss's blocks (attention sinks, split with the query heads over tp; an 8-token window in
    every other layer, which the cache keeps to; YaRN with unrounded ramp ends; experts with
    biases on their router and products, the clamped SwiGLU; biases in the attention):
    triad-generate's greedy tokens, within the context and past it, are the float64 reference's,
    on one rank and on tp 2 × pp 2. The reference's key/value cache gives its own tokens, and
    without the sinks, or without the window, the same weights give other tokens (so both are
    in what is compared)."""
    cfg = ref.GptConfig(n_layer=2, n_head=4, n_embd=64, seq_len=32, vocab_size=50257,
                        position="rope", rope_theta=200.0, norm="rmsnorm", mlp="swiglu",
                        mlp_hidden=32, tied=False, n_kv_head=2, attn_sinks=True,
                        sliding_window=8, full_attention_every=2, moe_experts=4, moe_top_k=2,
                        moe_bias=True, glu_alpha=1.702, glu_limit=7.0, glu_offset=1.0,
                        rope_scaling=ref.Yarn(4.0, 8, beta_fast=0.5, beta_slow=0.05,
                                              truncate=False))
    continues_as_torch(tmp_path / "oss.h5", cfg, 10, 4, "--tp", 2, "--pp", 2)
    _, params = ref.load_checkpoint(tmp_path / "oss.h5", dtype=torch.float64)
    want = generate_torch.generate(params, cfg, PROMPT, 40, "recompute")
    assert generate_torch.generate(params, cfg, PROMPT, 40, "kv-cache") == want
    no_sinks = {k: v for k, v in params.items() if not k.endswith("attn/sinks")}
    for other, w in ((replace(cfg, attn_sinks=False), no_sinks),
                     (replace(cfg, sliding_window=0, full_attention_every=0), params)):
        assert generate_torch.generate(w, other, PROMPT, 40, "recompute") != want


def test_mup_mixture_continuation_matches_torch(tmp_path):
    """A mixture of experts under μP (m = 2: the router's and the shared experts' gate logits
    times 1/m, the head's too, the attention scores by 1/sqrt(hd·m)): triad-generate's greedy
    tokens, through its key/value cache, are the float64 reference's, on one rank and on tp 2."""
    cfg = ref.GptConfig(n_layer=2, n_head=4, n_embd=64, seq_len=32, vocab_size=50257,
                        position="rope", rope_theta=200.0, norm="rmsnorm", bias=False,
                        mlp="swiglu", mlp_hidden=32, tied=False, moe_experts=4, moe_top_k=2,
                        moe_normalize=False, moe_shared_hidden=32, moe_shared_gate=True,
                        mup_base_width=32)
    continues_as_torch(tmp_path / "mup-moe.h5", cfg, 7, 2, "--tp", 2)


def test_partial_rotary_continuation_matches_torch(tmp_path):
    """Partial rotary (model.rotary_dim = 4 of 16: the first 4 values of each q and k head
    rotate): triad-generate's greedy tokens through its key/value cache are the float64
    reference's, on one rank and on tp 2 × pp 2."""
    cfg = ref.GptConfig(n_layer=2, n_head=4, n_embd=64, seq_len=32, vocab_size=50257,
                        position="rope", rope_theta=100.0, norm="rmsnorm", bias=False,
                        mlp="swiglu", mlp_hidden=64, tied=False, n_kv_head=2, rotary_dim=4)
    continues_as_torch(tmp_path / "partial.h5", cfg, 9, 4, "--tp", 2, "--pp", 2)


def test_rotary_positions_continuation_matches_torch(rope_checkpoint):
    """Rotary positions: the cached keys are rotated once, at their own positions, and each new
    token's q and k at its position; past the context the window is recomputed from position 0.
    Against the reference, with and without the cache, on one rank and on tp 2 × pp 2."""
    _, params = ref.load_checkpoint(rope_checkpoint, dtype=torch.float64)
    want = generate_torch.generate(params, ROPE, PROMPT, 40, "recompute")
    assert generate_torch.generate(params, ROPE, PROMPT, 40, "kv-cache") == want
    ids = " ".join(map(str, PROMPT))
    assert generate(rope_checkpoint, "--prompt-ids", ids, "--length", 40) == want
    assert generate(rope_checkpoint, "--prompt-ids", ids, "--length", 40, "--no-kv-cache") == want
    p = mpi_generate(4, "--checkpoint", rope_checkpoint, "--vocab", VOCAB, "--prompt-ids", ids,
                     "--length", 40, "--top-k", 1, "--output", "ids", "--tp", 2, "--pp", 2)
    assert p.returncode == 0, p.stderr
    assert [int(t) for t in p.stdout.split()] == want
    # The positions matter: the same weights read as learned positions (a zero wpe) part ways.
    learned = ref.GptConfig(**{**ROPE.__dict__, "position": "learned"})
    zero_wpe = dict(params, **{"wpe/weight": torch.zeros(ROPE.seq_len, ROPE.n_embd,
                                                           dtype=torch.float64)})
    assert generate_torch.generate(zero_wpe, learned, PROMPT, 40, "recompute") != want


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


def test_several_samples_top_p_and_stop_at_eot(checkpoint):
    """--samples N draws N continuations from one seeded stream (the seed reproduces them all);
    greedy samples decoded together are the single one's (and the reference's); --top-p with a
    tiny P is greedy."""
    ids = " ".join(map(str, PROMPT))
    three = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB, "--prompt-ids",
                 ids, "--length", "8", "--samples", "3", "--top-k", "0", "--temperature", "2",
                 "--output", "ids", "--seed", "9"], check=True).stdout.splitlines()
    assert len(three) == 3 and all(len(s.split()) == 8 for s in three)
    assert len(set(three)) == 3  # temperature 2 over the whole vocabulary: three different draws
    again = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB, "--prompt-ids",
                 ids, "--length", "8", "--samples", "3", "--top-k", "0", "--temperature", "2",
                 "--output", "ids", "--seed", "9"], check=True).stdout.splitlines()
    assert again == three
    greedy = generate(checkpoint, "--prompt-ids", ids, "--length", 8)
    # Greedy samples generated together (and past the context of 32) are the single one's.
    batch = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB, "--prompt-ids",
                 ids, "--length", "40", "--samples", "5", "--batch", "3", "--top-k", "1",
                 "--output", "ids"], check=True).stdout.splitlines()
    _, params = ref.load_checkpoint(checkpoint, dtype=torch.float64)
    want = generate_torch.generate(params, CFG, PROMPT, 40, "recompute")
    assert [[int(t) for t in line.split()] for line in batch] == [want] * 5
    assert generate(checkpoint, "--prompt-ids", ids, "--length", 8, "--top-p", "1e-9",
                    "--temperature", "1", top_k=0) == greedy


def test_stop_at_eot(tmp_path):
    # A model whose tied head scores <|endoftext|> highest after any token: its embedding row is
    # large and aligned with what the last LayerNorm puts out (ln_f weight 0 and bias b: every
    # position's output is b; the row of 50256 is 10·b).
    w = ref.random_weights(CFG, 5, perturb=False)
    w["ln_f/weight"].zero_()
    w["ln_f/bias"].copy_(torch.linspace(-1, 1, CFG.n_embd))
    w["wte/weight"][50256] = 10 * w["ln_f/bias"]
    path = tmp_path / "eot.h5"
    ref.write_checkpoint(path, CFG, w)
    assert generate(path, "--prompt-ids", "1 2 3", "--length", 5) == [50256] * 5
    assert generate(path, "--prompt-ids", "1 2 3", "--length", 5, "--stop-at-eot") == [50256]
    p = run([exe("triad-generate"), "--checkpoint", path, "--vocab", VOCAB, "--prompt-ids", "1 2",
             "--length", "5", "--samples", "2", "--top-k", "1", "--output", "ids",
             "--stop-at-eot"], check=True)
    assert p.stdout.splitlines() == ["50256", "50256"]


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
    if not os.path.exists("/dev/nvidia0"):  # named before the checkpoint is read; says what works
        assert_clean_error(gen("--backend", "cuda"), "--backend cuda: ", "--backend cpu")
    assert_clean_error(gen("--precision", "fp16"), "--precision must be auto, fp32 or bf16")
    assert_clean_error(gen("--output", "json"), "--output must be text, ids or logprobs")
    assert_clean_error(gen("--logprobs", "2"), "--logprobs needs --output logprobs")
    assert_clean_error(gen("--output", "logprobs", "--logprobs", "-1"), "--logprobs must be >= 0")
    assert_clean_error(gen("--threads", "-2"), "--threads must be in [0, 1024]")
    # (100000 had OpenMP crash while the checkpoint's checksums were computed)
    assert_clean_error(gen("--threads", "100000"), "--threads must be in [0, 1024]")
    assert_clean_error(gen("--chat", "chatml", "--messages", ""), "--messages is empty")
    assert_clean_error(gen("--chat", "chatml", "--messages", checkpoint.parent),
                       f"--messages {checkpoint.parent}: is a directory")
    assert_clean_error(gen("--top-p", "0"), "--top-p must be in (0, 1]")
    assert_clean_error(gen("--top-p", "1.01"), "--top-p must be in (0, 1]")
    assert_clean_error(gen("--min-p", "1.5"), "--min-p must be in [0, 1]")
    assert_clean_error(gen("--min-p", "-0.1"), "--min-p must be in [0, 1]")
    assert_clean_error(gen("--repetition-penalty", "0"), "--repetition-penalty must be in [0.001, 1000]")
    assert_clean_error(gen("--repetition-penalty", "nan"), "--repetition-penalty must be in")
    assert_clean_error(gen("--repetition-penalty", "1e-60"), "--repetition-penalty must be in")
    assert_clean_error(gen("--frequency-penalty", "inf"), "--frequency-penalty must be in [-100, 100]")
    assert_clean_error(gen("--presence-penalty", "-inf"), "--presence-penalty must be in")
    assert_clean_error(gen("--presence-penalty", "nan"), "--presence-penalty must be in")
    assert_clean_error(gen("--stop", ""), "--stop: an empty string")
    assert_clean_error(gen("--samples", "0"), "--samples must be >= 1")
    assert_clean_error(gen("--batch", "0"), "--batch must be >= 1")
    assert_clean_error(gen("--suffix", "x"), "--suffix needs --fim-tokens")
    assert_clean_error(gen("--fim-tokens", "1, 2, 3"), "--fim-tokens and --fim-spm need --suffix")
    assert_clean_error(gen("--fim-spm"), "--fim-tokens and --fim-spm need --suffix")
    assert_clean_error(gen("--suffix", "x", "--fim-tokens", "1, 2, 3", "--prompt-ids", "5"),
                       "not with --prompt-ids or --chat")
    assert_clean_error(gen("--suffix", "x", "--fim-tokens", "1, 2"),
                       "must be three distinct token ids")
    assert_clean_error(gen("--suffix", "x", "--fim-tokens", "1, 2, 2"),
                       "must be three distinct token ids")
    assert_clean_error(gen("--suffix", "x", "--fim-tokens", "1, 2, 50257"),
                       "--fim-tokens: '50257' is not a token id")
    assert_clean_error(gen("--suffix", "x", "--fim-tokens", "<fim_prefix>, 2, 3"),
                       "--fim-tokens: '<fim_prefix>' is not a special token of the tokenizer")
    assert_clean_error(gen("--suffix", "x", "--fim-tokens", "1 2, 3, 4"),
                       "--fim-tokens: '1 2' is not one token")


def edited(checkpoint, path, edit):
    """A copy of the checkpoint at path, changed by edit(h5py.File) (a tensor changed keeps a
    correct checksum: what it holds is the problem, not damage)."""
    import h5py
    shutil.copy(checkpoint, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def set_tensor(f, name, change):
    d = f[name]
    a = d[...]
    change(a)
    d[...] = a
    d.attrs.create("checksum", np.uint32(ref.fp32_checksum(a)), dtype="<u4")


@pytest.mark.parametrize("edit,needles", [
    # The model's counts: nothing but the file says them here (no config to compare with).
    (lambda f: f["model"].attrs.modify("n_head", 0), ["attribute n_head of /model is 0"]),
    (lambda f: f["model"].attrs.modify("vocab_size", 2**40), ["attribute vocab_size of /model"]),
    (lambda f: f["model"].attrs.modify("n_embd", -32), ["attribute n_embd of /model is -32"]),
    (lambda f: f["model"].attrs.modify("seq_len", -1), ["attribute seq_len of /model is -1"]),
    (lambda f: f["model"].attrs.modify("padded_vocab_size", 3),
     ["attribute padded_vocab_size of /model is 3"]),
    # Attributes that describe fewer tensors than the file holds.
    (lambda f: f["model"].attrs.modify("n_layer", 1),
     ["dataset /model/h/1/", "is not a tensor of the model its attributes describe"]),
    (lambda f: f["model"].attrs.create("bias", 0, dtype="<i8"),
     ["/bias is not a tensor of the model its attributes describe"]),
    (lambda f: f.copy(f["model/ln_f/weight"], "model/h/7_ln_f_weight"),
     ["dataset /model/h/7_ln_f_weight is not a tensor"]),
    # Intact but not finite: a diverged run's weights.
    (lambda f: set_tensor(f, "model/ln_f/weight", lambda a: a.__setitem__(0, np.nan)),
     ["dataset /model/ln_f/weight holds values that are not finite"]),
    (lambda f: set_tensor(f, "model/wte/weight", lambda a: a.__setitem__((7, 3), np.inf)),
     ["dataset /model/wte/weight holds values that are not finite"]),
])
def test_refuses_inconsistent_or_non_finite_checkpoints(checkpoint, tmp_path, edit, needles):
    """A checkpoint whose attributes are out of range, describe other tensors than it holds, or
    whose tensors are intact but not finite: one error naming the file (it crashed, or sampled
    from a model with layers or biases silently dropped, or printed one token over and over)."""
    path = edited(checkpoint, tmp_path / "bad.h5", edit)
    p = run([exe("triad-generate"), "--checkpoint", path, "--vocab", VOCAB, "--prompt-ids", "1 2",
             "--length", "2", "--output", "ids"])
    assert_clean_error(p, f"checkpoint {path}", *needles)


def test_grid_refuses_non_finite_weights_on_every_rank(checkpoint, tmp_path):
    """The ranks that do not hold the tensor stop too (no hang): the verdict is collective."""
    path = edited(checkpoint, tmp_path / "nan.h5", lambda f: set_tensor(
        f, "model/h/1/mlp/c_fc/weight", lambda a: a.__setitem__((5, 5), np.nan)))
    p = mpi_generate(2, "--checkpoint", path, "--vocab", VOCAB, "--prompt-ids", "1 2", "--length",
                     2, "--output", "ids", "--pp", 2)
    assert p.returncode != 0 and "h/1/mlp/c_fc/weight holds values that are not finite" in p.stderr
    assert "Segmentation" not in p.stderr, p.stderr


def test_prompt_ids_the_tokenizer_cannot_decode_are_refused_before_loading(checkpoint, tmp_path):
    """Ids of the model but not of --vocab: --output text would fail after generating."""
    tok = tmp_path / "tok"
    tok.mkdir()
    ranks = tok / "small.tiktoken"
    with open(VOCAB, "rb") as src:
        ranks.write_bytes(b"".join(src.readline() for _ in range(1000)))
    (tok / "tokenizer.triad").write_text(
        "triad-tokenizer 1\nranks small.tiktoken\nranks_count 1000\npretokenizer gpt2\n"
        "special 1000 <|endoftext|>\ndocument_start <|endoftext|>\nstop <|endoftext|>\n")
    p = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", tok / "tokenizer.triad",
             "--prompt-ids", "40000 1", "--length", "2"])
    assert_clean_error(p, "--prompt-ids: 40000 is not a token of", "(0 .. 1000)")
    p = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", tok / "tokenizer.triad",
             "--prompt-ids", "40000 1", "--length", "2", "--output", "ids", "--top-k", "1"])
    assert p.returncode == 0, p.stderr


def test_fill_in_the_middle_prompts_as_training_rearranges(checkpoint):
    """--suffix: a middle's prompt as data.fim_* trains it after a document start (tiktoken's ids
    of prefix and suffix between the sentinels, PSM and SPM); its greedy continuation is that of
    the same ids given with --prompt-ids, ending at <|endoftext|>; the text printed is prefix,
    middle and suffix."""
    enc = gpt2_tiktoken()
    prefix, suffix = "def add(a, b):\n    return", " + b\n"
    P, M, S = 50252, 50253, 50254
    psm = [50256, P] + enc.encode_ordinary(prefix) + [S] + enc.encode_ordinary(suffix) + [M]
    spm = [50256, P, S] + enc.encode_ordinary(suffix) + [M] + enc.encode_ordinary(prefix)
    middles = []
    for order, prompt in (([], psm), (["--fim-spm"], spm)):
        want = generate(checkpoint, "--prompt-ids", " ".join(map(str, prompt)), "--length", 12,
                        "--stop-at-eot")
        args = ["--prompt", prefix, "--suffix", suffix, "--fim-tokens", f"{P}, {M}, {S}", *order,
                "--length", 12]
        assert generate(checkpoint, *args) == want
        text = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB,
                    "--top-k", "1", *map(str, args)], check=True).stdout
        middle = want[:-1] if want[-1] == 50256 else want
        assert text == prefix + enc.decode(middle) + suffix + "\n", text
        middles.append(want)
    assert middles[0] != middles[1]  # the two orders are two prompts
    # A special token by its text: <|endoftext|> is 50256.
    assert generate(checkpoint, "--prompt", prefix, "--suffix", suffix, "--fim-tokens",
                    f"<|endoftext|>, {M}, {S}", "--length", 12) == generate(
        checkpoint, "--prompt", prefix, "--suffix", suffix, "--fim-tokens", f"50256, {M}, {S}",
        "--length", 12)


MPI_ENV = dict(ENV, OMP_NUM_THREADS="1", OMPI_MCA_pml="ob1", OMPI_MCA_btl="self,vader")


def mpi_generate(n, *args):
    mpirun = shutil.which("mpirun")
    assert mpirun, "mpirun not found"
    return subprocess.run([mpirun, "--oversubscribe", "-np", str(n), exe("triad-generate"),
                           *map(str, args)], capture_output=True, text=True, env=MPI_ENV,
                          timeout=180)


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)])
def test_generation_on_a_grid_matches_torch(checkpoint, tp, pp):
    """mpirun -np tp·pp triad-generate --tp --pp: each rank loads its shard of the checkpoint
    (the vocabulary padded for the grid), the ranks decode together with the cache, and rank 0
    prints the float64 reference's greedy tokens, within and past the context."""
    _, params = ref.load_checkpoint(checkpoint, dtype=torch.float64)
    want = generate_torch.generate(params, CFG, PROMPT, 40, "recompute")
    p = mpi_generate(tp * pp, "--checkpoint", checkpoint, "--vocab", VOCAB, "--prompt-ids",
                     " ".join(map(str, PROMPT)), "--length", 40, "--top-k", 1, "--output", "ids",
                     "--tp", tp, "--pp", pp)
    assert p.returncode == 0, p.stderr
    assert [int(t) for t in p.stdout.split()] == want


def test_generation_grid_refuses_a_bad_shape(checkpoint):
    p = mpi_generate(3, "--checkpoint", checkpoint, "--vocab", VOCAB, "--tp", 2)
    assert p.returncode != 0 and "runs on --tp × --pp = 2 ranks (got 3)" in p.stderr, p.stderr
    p = mpi_generate(3, "--checkpoint", checkpoint, "--vocab", VOCAB, "--tp", 3)
    assert p.returncode != 0 and "--tp 3 does not divide the model's 4 heads" in p.stderr, p.stderr
    assert_clean_error(run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB,
                            "--pp", "0"]), "--tp and --pp must be >= 1")


@pytest.mark.parametrize("change,needle", [
    (dict(n_kv_head=1), "--tp 2 does not divide the model's 1 key/value heads"),
    (dict(mlp_hidden=65), "--tp 2 does not divide the model's 65 MLP hidden units")])
def test_generation_grid_refuses_what_tp_cannot_split(tmp_path, change, needle):
    cfg = ref.GptConfig(**{**CFG.__dict__, **change})
    path = tmp_path / "m.h5"
    ref.write_checkpoint(path, cfg, ref.random_weights(cfg, 2))
    p = mpi_generate(2, "--checkpoint", path, "--vocab", VOCAB, "--tp", 2)
    assert p.returncode != 0 and needle in p.stderr, p.stderr


def test_grid_samples_draw_as_one_rank(checkpoint, tmp_path):
    """Sampled (not greedy) continuations on a grid are one rank's with the same --batch (the
    samples in lockstep on the grid too): the ranks share the logits and the seed, so they draw
    the same tokens; stopping at <|endoftext|> too. A checkpoint padded for tp 2 (50432 rows of
    wte) loads on the grid of one rank (50304)."""
    args = ["--prompt-ids", " ".join(map(str, PROMPT)), "--length", 12, "--samples", 3,
            "--temperature", 1.5, "--top-k", 20, "--seed", 4, "--stop-at-eot", "--output", "ids"]
    # (pipeline grids only: a stage split leaves every sum as one rank's, so the sampled draws are
    # exactly equal; tensor parallelism changes the logits' last bits, see the MPI decode test)
    for grid, batch in ((("--pp", 2), ()), (("--pp", 2), ("--batch", 2)),
                        (("--pp", 2), ("--batch", 1))):
        one = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB,
                   *map(str, batch), *map(str, args)], check=True).stdout
        p = mpi_generate(2, "--checkpoint", checkpoint, "--vocab", VOCAB, *grid, *batch, *args)
        assert p.returncode == 0, p.stderr
        assert p.stdout == one and len(set(one.splitlines())) == 3, (grid, batch, p.stdout, one)
    cfg2 = ref.GptConfig(CFG.n_layer, CFG.n_head, CFG.n_embd, CFG.seq_len, CFG.vocab_size, tp=2)
    _, params = ref.load_checkpoint(checkpoint, dtype=torch.float32)
    wte = torch.zeros(cfg2.padded_vocab_size, CFG.n_embd)
    wte[:CFG.vocab_size] = params["wte/weight"][:CFG.vocab_size]
    params["wte/weight"] = wte
    padded = tmp_path / "tp2.h5"
    ref.write_checkpoint(padded, cfg2, params)
    assert generate(padded, "--prompt-ids", " ".join(map(str, PROMPT)), "--length", 10) == \
        generate(checkpoint, "--prompt-ids", " ".join(map(str, PROMPT)), "--length", 10)



def processed_distribution(params, prompt, temperature, top_k, top_p, min_p, repetition):
    """The next token's probabilities after Hugging Face's logits processors, in the order its
    generate() applies them when sampling: the repetition penalty, then temperature, top-k, top-p
    and min-p (on the float64 reference's logits)."""
    from transformers import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                              TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
    ids = torch.tensor([prompt])
    scores = generate_torch.last_logits(params, CFG, ids, 0, None)
    steps = [RepetitionPenaltyLogitsProcessor(float(repetition)), TemperatureLogitsWarper(temperature),
             TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)]
    if min_p > 0:
        steps.append(MinPLogitsWarper(min_p))
    for step in steps:
        scores = step(ids, scores)
    return torch.softmax(scores, dim=-1)[0]


@pytest.mark.parametrize("setting,binding", [
    (dict(top_k=5, top_p=1.0, min_p=0.0), dict(top_k=50)),
    (dict(top_k=50, top_p=0.5, min_p=0.0), dict(top_p=1.0)),
    (dict(top_k=50, top_p=0.95, min_p=0.4), dict(min_p=0.0))])
def test_sampling_draws_as_transformers_processors(checkpoint, setting, binding):
    """--repetition-penalty and --temperature with --top-k, --top-p and --min-p: 4,000 seeded
    draws of one token follow the distribution transformers' processors give the reference's
    logits (each frequency within 5 standard deviations; nothing drawn that they remove). The
    prompt ends in a token among the likeliest next ones, which the penalty takes out; the
    penalty, the temperature and the setting's binding filter each change the distribution (so a
    sampler ignoring one would fail)."""
    prompt = PROMPT + [387, 6758]
    setting = dict(setting, temperature=0.5, repetition=1.3)
    _, params = ref.load_checkpoint(checkpoint, dtype=torch.float64)
    want = processed_distribution(params, prompt, **setting)
    for off in (dict(temperature=1.0), dict(repetition=1.0), binding):
        other = processed_distribution(params, prompt, **{**setting, **off})
        assert (other - want).abs().max() > 0.01, off
    assert want[6758] == 0 and 3 <= int((want > 0).sum()) <= 20
    n = 4000
    p = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB, "--prompt-ids",
             " ".join(map(str, prompt)), "--length", "1", "--samples", str(n), "--batch", "1000",
             "--temperature", "0.5", "--top-k", str(setting["top_k"]), "--top-p",
             str(setting["top_p"]), "--min-p", str(setting["min_p"]), "--repetition-penalty",
             "1.3", "--seed", "11", "--output", "ids"], check=True)
    drawn = [int(t) for t in p.stdout.split()]
    assert len(drawn) == n
    counts = torch.bincount(torch.tensor(drawn), minlength=CFG.vocab_size).double()
    assert float(want[counts > 0].min()) > 0, "drew a token the processors remove"
    sd = (n * want * (1 - want)).sqrt()
    assert bool(((counts - n * want).abs() <= 5 * sd + 1).all())


def greedy_penalized(params, prompt, length, repetition, frequency, presence):
    """Greedy decoding with transformers' repetition penalty over the prompt and the continuation
    and OpenAI's frequency and presence penalties over the continuation (logit − n·F − P for a
    token drawn n > 0 times), on the float64 reference (recomputing the last seq_len tokens)."""
    from transformers import RepetitionPenaltyLogitsProcessor
    penalty = RepetitionPenaltyLogitsProcessor(float(repetition))
    tokens = list(prompt)
    for _ in range(length):
        logits = generate_torch.last_logits(params, CFG, torch.tensor([tokens[-CFG.seq_len:]]), 0,
                                            None)
        logits = penalty(torch.tensor([tokens]), logits)[0]
        made = tokens[len(prompt):]
        for t in set(made):
            logits[t] -= made.count(t) * frequency + presence
        tokens.append(int(torch.argmax(logits)))
    return tokens[len(prompt):]


@pytest.mark.parametrize("repetition,frequency,presence", [(1.5, 0, 0), (1, 0.3, 0.2),
                                                           (1.2, 0.1, -0.1)])
def test_penalized_greedy_continuation_matches_torch(checkpoint, repetition, frequency, presence):
    """Greedy continuations (past the context of 32, with the cache and without) under the
    penalties match the reference's, which differ from the unpenalized one's."""
    _, params = ref.load_checkpoint(checkpoint, dtype=torch.float64)
    want = greedy_penalized(params, PROMPT, 30, repetition, frequency, presence)
    assert want != greedy_penalized(params, PROMPT, 30, 1, 0, 0)
    args = ["--prompt-ids", " ".join(map(str, PROMPT)), "--length", 30, "--repetition-penalty",
            repetition, "--frequency-penalty", frequency, "--presence-penalty", presence]
    assert generate(checkpoint, *args) == want
    assert generate(checkpoint, *args, "--no-kv-cache") == want
    two = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB, "--top-k", "1",
               "--samples", "2", "--output", "ids", *map(str, args)], check=True).stdout
    assert [[int(t) for t in line.split()] for line in two.splitlines()] == [want, want]


def test_stop_strings_cut_the_text(checkpoint):
    """--stop S ends a sample where its text (decoded by tiktoken here) first holds S: the text
    is cut before S, --output ids ends with the token completing it; the earliest of several
    stops wins, and samples drawn together stop apart."""
    enc = gpt2_tiktoken()
    ids = " ".join(map(str, PROMPT))
    full = generate(checkpoint, "--prompt-ids", ids, "--length", 30)
    text = enc.decode(full)
    stop = text[len(enc.decode(full[:12])):][:3]  # three characters from the 13th token on
    assert len(stop) == 3
    cut = text[:text.index(stop)]
    made = generate(checkpoint, "--prompt-ids", ids, "--length", 30, "--stop", stop)
    assert made == full[:len(made)] and stop in enc.decode(made)
    assert stop not in enc.decode(made[:-1])
    p = run([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB, "--prompt-ids",
             ids, "--length", "30", "--top-k", "1", "--stop", "no such text", "--stop", stop,
             "--samples", "2"], check=True)
    whole = enc.decode(PROMPT) + cut
    assert p.stdout == f"{whole}\n---\n{whole}\n", p.stdout


@pytest.mark.parametrize("output", ["text", "ids", "logprobs"])
def test_stream_prints_what_the_buffered_output_does(checkpoint, output):
    """--stream prints each token as it is drawn; the output reads exactly as without it: the
    samples in turn, a --stop string found across tokens cut off with what follows it."""
    enc = gpt2_tiktoken()
    ids = " ".join(map(str, PROMPT))
    args = [exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB, "--prompt-ids",
            ids, "--length", "30", "--top-k", "0", "--temperature", "1.5", "--samples", "3",
            "--seed", "5"]
    first = [int(t) for t in run(args + ["--batch", "1", "--output", "ids"],
                                 check=True).stdout.split("\n")[0].split()]
    text = enc.decode_bytes(first)
    at = len(enc.decode_bytes(first[:12])) - 2
    stop = text[at:at + 4].decode()  # four bytes across the 12th token's end
    args += ["--output", output, "--stop", stop, "--stop", "no such text"]
    buffered = run(args + ["--batch", "1"], check=True).stdout
    streamed = run(args + ["--batch", "1", "--stream"], check=True).stdout
    assert streamed == buffered
    if output == "text":
        assert buffered.split("\n---\n")[0].encode() == \
            enc.decode_bytes(PROMPT) + text[:text.index(stop.encode())]
    # The samples drawn together are printed once all end: one at a time only.
    assert_clean_error(run(args + ["--stream", "--batch", "2"]),
                       "--stream prints one sample at a time: with --samples 3, give --batch 1")


def test_stream_prints_before_the_sample_ends(checkpoint):
    """The tokens of a sample too long to wait for come out as they are drawn."""
    p = subprocess.Popen([exe("triad-generate"), "--checkpoint", checkpoint, "--vocab", VOCAB,
                          "--prompt-ids", "464", "--length", "100000000", "--stream", "--output",
                          "ids"], stdout=subprocess.PIPE, env=ENV)
    got = b""
    try:
        deadline = time.monotonic() + 120
        while got.count(b" ") < 5 and time.monotonic() < deadline:
            if select.select([p.stdout], [], [], 1)[0]:
                chunk = os.read(p.stdout.fileno(), 4096)
                if not chunk:
                    break
                got += chunk
        assert got.count(b" ") >= 5 and p.poll() is None, got
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_padded_model_draws_among_the_tokenizers_ids_together(tmp_path):
    """A model with more rows than the tokenizer has ids (as Qwen2's) decodes several samples at
    once among the tokenizer's ids: each sample reads its own row of logits."""
    big = ref.GptConfig(**{**CFG.__dict__, "vocab_size": CFG.vocab_size + 3})
    w = {k: (v * 8 if v.dim() == 2 else v) for k, v in ref.random_weights(big, 6).items()}
    path = tmp_path / "big.h5"
    ref.write_checkpoint(path, big, w)
    # The reference's logits over the tokenizer's ids only (CFG's vocabulary).
    want = generate_torch.generate({k: v.double() for k, v in w.items()}, CFG, PROMPT, 6,
                                   "recompute")
    p = run([exe("triad-generate"), "--checkpoint", path, "--vocab", VOCAB, "--prompt-ids",
             " ".join(map(str, PROMPT)), "--length", "6", "--top-k", "1", "--samples", "3",
             "--output", "ids"], check=True)
    assert [[int(t) for t in line.split()] for line in p.stdout.splitlines()] == [want] * 3


@pytest.mark.parametrize("tp", [1, 2])
def test_logprobs_are_the_models(checkpoint, tp):
    """--output logprobs: each drawn token's log-probability and the likeliest ids beside it are
    the float64 reference's log-softmax of the logits at that point (before the penalty and the
    temperature, which change what is drawn but not these), for sampled tokens of three samples
    decoded together; with tensor parallelism too (the three rows' vocabulary slices gathered
    in one exchange and put in place)."""
    args = ["--checkpoint", checkpoint, "--vocab", VOCAB, "--prompt-ids",
            " ".join(map(str, PROMPT)), "--length", "12", "--samples", "3", "--temperature", "3",
            "--top-k", "0", "--repetition-penalty", "1.5", "--seed", "5", "--output", "logprobs",
            "--logprobs", "3"]
    if tp == 1:
        p = run([exe("triad-generate"), *args], check=True)
    else:
        p = mpi_generate(tp, *args, "--tp", tp)
        assert p.returncode == 0, p.stderr
    samples = p.stdout.rstrip("\n").split("\n---\n")
    assert len(samples) == 3 and len(set(samples)) == 3
    _, params = ref.load_checkpoint(checkpoint, dtype=torch.float64)
    for sample in samples:
        rows = [line.split("\t") for line in sample.splitlines()]
        assert len(rows) == 12
        tokens = list(PROMPT)
        for tok, lp, alts in rows:
            want = torch.log_softmax(generate_torch.last_logits(
                params, CFG, torch.tensor([tokens]), 0, None)[0], dim=-1)
            assert abs(float(lp) - float(want[int(tok)])) < 1e-5
            top = torch.topk(want, 3)
            got = [a.split(":") for a in alts.split()]
            assert [int(i) for i, _ in got] == top.indices.tolist()
            assert max(abs(float(v) - w) for (_, v), w in zip(got, top.values.tolist())) < 1e-5
            tokens.append(int(tok))
