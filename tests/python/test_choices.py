"""Multiple-choice evaluation (eval.choices) against an independent PyTorch reference.

HellaSwag-style JSON lines are written to llm.c's eval file format by jobs/prepare_choices.py;
`triad-train --eval-only` scores them on a seeded random model, and tests/reference/gpt_torch.py
scores the same token rows in float64 the documented way (each ending after the shared
context; the least mean token loss picks, the least summed loss for the second number, and the
least summed loss per character of the ending's JSON text, lm-eval-harness's acc_norm, for the
third; contexts too long for seq_len lose their first tokens): the accuracies must be equal and
the mean ending loss equal within fp32 rounding, on one rank and on dp, tp and pp grids, during
training (metrics.h5's /val/choice_accuracy*) too. The file reader's refusals are in
tests/unit/test_choice_file.cpp; here the script's and the config's."""

import json
import shutil
from dataclasses import replace
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from triad_run import (ENV, REPO, VOCAB, assert_clean_error, exe, gpt2_tiktoken, tiny_config,
                       train)

sys.path.insert(0, str(REPO / "tests" / "reference"))
import gpt_torch as ref  # noqa: E402
from choices_torch import read_choices as read_eval_file  # noqa: E402  (the format's reader)

CACHED = ("--eval.choice_mode", "cached")
FULL = ("--train.recompute", "full")
CFG = ref.GptConfig(n_layer=2, n_head=4, n_embd=64, seq_len=32, vocab_size=50257)
PREPARE = REPO / "jobs" / "prepare_choices.py"
MPIRUN = shutil.which("mpirun")
MPI_ENV = dict(ENV, OMP_NUM_THREADS="1", OMPI_MCA_pml="ob1", OMPI_MCA_btl="self,vader")


def jsonl_examples(n=24, seed=0):
    rng = np.random.default_rng(seed)
    # Words of 2-byte and 3-byte UTF-8 characters too: acc_norm counts characters, not bytes.
    words = ("the man woman dog ball house runs jumps slowly quickly into over under red blue "
             "green a an is was then and but because while after before it they we café naïve "
             "über … —").split()

    def text(k):
        return " ".join(rng.choice(words, k))

    out = []
    for i in range(n):
        # one context longer than the model's 32 positions (it loses its first tokens)
        ctx = text(40 if i == 5 else int(rng.integers(3, 12))).capitalize() + "."
        endings = [text(int(rng.integers(1, 9))) + "." for _ in range(3 if i % 4 == 1 else 4)]
        out.append({"ind": i, "ctx": ctx, "endings": endings, "label": int(rng.integers(0, len(endings)))})
    return out


def ending_chars():
    """lm-eval-harness's acc_norm length: len() of each ending's string, without the space the
    continuation puts before it."""
    return [[len(e) for e in ex["endings"]] for ex in jsonl_examples()]


def reference_score(params, examples, cfg=CFG):
    correct = correct_sum = correct_chars = 0
    ending_losses = []
    for (label, ctx, ends), chars in zip(examples, ending_chars()):
        m = max(len(e) for e in ends)
        ctx = ctx[-(CFG.seq_len - m):]
        sums, means = [], []
        for e in ends:
            row = torch.tensor([ctx + e[:-1]])
            with torch.no_grad():
                logp = torch.log_softmax(ref.forward(params, cfg, row)[0], -1)
            s = -sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(e))
            sums.append(s)
            means.append(s / len(e))
        correct += int(np.argmin(means) == label)
        correct_sum += int(np.argmin(sums) == label)
        correct_chars += int(np.argmin(np.array(sums) / np.array(chars)) == label)
        ending_losses += means
    n = len(examples)
    return correct / n, correct_sum / n, float(np.mean(ending_losses)), correct_chars / n


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("choices")
    jl = d / "ex.jsonl"
    jl.write_text("".join(json.dumps(e) + "\n" for e in jsonl_examples()))
    out = d / "ex.bin"
    p = subprocess.run([sys.executable, PREPARE, jl, out, "--vocab", VOCAB], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    ckpt = d / "model.h5"
    # perturbed (nonzero biases, LayerNorm away from 1) and 8× init's weights: choices far from ties
    w = {k: (v * 8 if v.dim() == 2 else v) for k, v in ref.random_weights(CFG, 11).items()}
    ref.write_checkpoint(ckpt, CFG, w)
    cfg = tiny_config(d, name="mc", vocab=CFG.vocab_size, model__n_layer=2, model__n_head=4,
                      model__n_embd=64, model__seq_len=32, eval__choices=out,
                      train__micro_batch_size=4, train__batch_size=8, data__vocab=VOCAB)
    _, params = ref.load_checkpoint(ckpt, dtype=torch.float64)
    want = reference_score(params, read_eval_file(out))
    return d, out, ckpt, cfg, want


def parse(stdout):
    line = stdout.split("choice accuracy")[1]
    acc = float(line.split()[0])
    by_sum = float(line.split("by summed loss")[1].split(",")[0])
    loss = float(line.split("ending loss")[1].split(")")[0])
    n = int(line.split("|")[1].split()[0])
    by_chars = float(line.split("by characters")[1].split(",")[0]) if "by characters" in line \
        else None
    return acc, by_sum, loss, n, by_chars


def check(got, want, n=24):
    acc, by_sum, loss, count, by_chars = got
    assert count == n
    assert abs(acc - want[0]) < 1e-4 and abs(by_sum - want[1]) < 1e-4, (got, want)
    assert by_chars is not None and abs(by_chars - want[3]) < 1e-4, (got, want)
    assert abs(loss - want[2]) <= 1e-5 * want[2], (loss, want[2])


def test_matches_the_reference(setup):
    d, out, ckpt, cfg, want = setup
    p = train("--config", cfg, "--eval-only", "--init-from", ckpt, check=True)
    check(parse(p.stdout), want)
    # The file is what llm.c's writer makes: header, examples numbered in order.
    header = np.fromfile(out, dtype="<i4", count=4)
    assert list(header[:3]) == [20240522, 1, 24]
    # eval.choice_examples: the first N.
    p = train("--config", cfg, "--eval-only", "--init-from", ckpt, "--eval.choice_examples", 7,
              check=True)
    _, params = ref.load_checkpoint(ckpt, dtype=torch.float64)
    check(parse(p.stdout), reference_score(params, read_eval_file(out)[:7]), n=7)
    # Cached (each context once, the endings through the KV cache), also under full recomputation
    # (no cache kept: every row computed each call): the same numbers. (Batched, the default,
    # puts an example's rows across two passes of 4 above.)
    for extra in (CACHED, CACHED + FULL, FULL):
        p = train("--config", cfg, "--eval-only", "--init-from", ckpt, *extra, check=True)
        check(parse(p.stdout), want)
    # bf16: the mean ending loss within bf16's rounding.
    p = train("--config", cfg, "--eval-only", "--init-from", ckpt, "--run.precision", "bf16",
              check=True)
    assert abs(parse(p.stdout)[2] - want[2]) <= 2e-2 * want[2]


def test_lm_eval_rendering_of_hellaswag(tmp_path):
    """--render lm-eval: lm-evaluation-harness's HellaSwag text (written out here by hand from
    its rules), each ending after a space; a line without HellaSwag's fields is refused."""
    line = {"activity_label": "Home and Garden",
            "ctx_a": "[header] How to plant roses [title] Choose a spot.",
            "ctx_b": "you should PICK a sunny place", "ctx": "unused",
            "endings": ["[step] Dig a hole.", " Water  the roses. [substeps] Then wait."],
            "label": 1}
    src = tmp_path / "hs.jsonl"
    src.write_text(json.dumps(line) + "\n")
    out = tmp_path / "hs.bin"
    p = subprocess.run([sys.executable, PREPARE, src, out, "--vocab", VOCAB, "--render", "lm-eval"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    enc = gpt2_tiktoken()
    [(label, ctx, ends)] = read_eval_file(out)
    assert label == 1
    assert ctx == enc.encode("Home and Garden: How to plant roses. Choose a spot. You should pick "
                             "a sunny place")
    # The cleanup strips before it removes the markup: the first ending keeps a leading space.
    assert ends == [enc.encode("  Dig a hole."), enc.encode(" Water the roses. Then wait.")]
    del line["ctx_b"]
    src.write_text(json.dumps(line) + "\n")
    p = subprocess.run([sys.executable, PREPARE, src, out, "--vocab", VOCAB, "--render", "lm-eval"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and f"{src}:1" in p.stderr and "ctx_b" in p.stderr, p.stderr


def test_file_holds_gpt2_tokens(setup):
    """The script's tokens against tiktoken's GPT-2 encoding built here: the context as it is,
    each ending after a space (llm.c's and nanoGPT's HellaSwag rendering)."""
    d, out, *_ = setup
    enc = gpt2_tiktoken()
    got = read_eval_file(out)
    for ex, (label, ctx, ends) in zip(jsonl_examples(), got):
        assert label == ex["label"]
        assert ctx == enc.encode(ex["ctx"])
        assert ends == [enc.encode(" " + e) for e in ex["endings"]]
    assert len(got) == len(jsonl_examples())




@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")
@pytest.mark.parametrize("ranks,grid", [
    (2, ("--parallel.tp", 2)), (2, ("--parallel.pp", 2)), (2, ()),
    (2, ("--parallel.tp", 2, "--parallel.sequence_parallel", 1)),
    (4, ("--parallel.tp", 4, "--parallel.sequence_parallel", 1)),
    # cached: sequence parallelism pads the new rows to a multiple of tp (4: the cache's clamp
    # near the end of the context)
    (2, ("--parallel.tp", 2) + CACHED), (2, ("--parallel.pp", 2) + CACHED), (2, CACHED),
    (2, ("--parallel.tp", 2, "--parallel.sequence_parallel", 1) + CACHED),
    (4, ("--parallel.tp", 4, "--parallel.sequence_parallel", 1) + CACHED),
    (2, ("--parallel.zero", 3)), (2, ("--parallel.zero", 3) + CACHED)])
def test_grids_match_the_reference(setup, ranks, grid):
    d, out, ckpt, cfg, want = setup
    p = subprocess.run([MPIRUN, "--oversubscribe", "-np", str(ranks), exe("triad-train"), "--config",
                        str(cfg), "--eval-only", "--init-from", str(ckpt), *map(str, grid)],
                       capture_output=True, text=True, env=MPI_ENV, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    check(parse(p.stdout), want)


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")
@pytest.mark.parametrize("ranks,extra", [(2, ()), (3, CACHED), (3, CACHED + FULL)])
def test_zero3_ranks_split_uneven_examples(setup, tmp_path, ranks, extra):
    """ZeRO-3 gathers each layer's weights from every data-parallel rank, so the ranks must run
    the same forward passes; the examples are still split over them: 7 examples give ranks 4 and
    3 (2 ranks, batched: 4 and 3 passes of 4 rows) or 3, 2 and 2 (cached: a pass per context and
    per ending, or per ending only under full recomputation), and the ranks with fewer join the
    others' gathers. Four layers, so that every pass gathers again (three are held at a time; a
    rank that stopped early would leave the others waiting). The scores are the reference's."""
    cfg4 = ref.GptConfig(n_layer=4, n_head=4, n_embd=64, seq_len=32, vocab_size=50257)
    check_seven_examples(setup, tmp_path, ranks, cfg4, 12,
                         ["--model.n_layer", 4, "--parallel.zero", 3, *extra])


def check_seven_examples(setup, tmp_path, ranks, model, seed, args):
    """The first 7 examples scored on `ranks` ranks (4 rows per micro-batch) by the model
    `model` (random weights of `seed`, 8× init's matrices), with more triad-train arguments:
    the reference's scores."""
    d, out, _, cfg, _ = setup
    ckpt = tmp_path / "model.h5"
    w = {k: (v * 8 if v.dim() >= 2 else v) for k, v in ref.random_weights(model, seed).items()}
    ref.write_checkpoint(ckpt, model, w)
    p = subprocess.run([MPIRUN, "--oversubscribe", "-np", str(ranks), exe("triad-train"), "--config",
                        str(cfg), "--eval-only", "--init-from", str(ckpt),
                        "--eval.choice_examples", "7", "--train.batch_size", str(4 * ranks),
                        *map(str, args)],
                       capture_output=True, text=True, env=MPI_ENV, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    _, params = ref.load_checkpoint(ckpt, dtype=torch.float64)
    check(parse(p.stdout), reference_score(params, read_eval_file(out)[:7], model), n=7)


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found")
@pytest.mark.parametrize("ranks,extra", [(2, ()), (2, CACHED), (4, ("--parallel.tp", 2)),
                                         (4, ("--parallel.zero", 3))])
def test_expert_parallel_ranks_split_uneven_examples(setup, tmp_path, ranks, extra):
    """Expert parallelism (parallel.ep = 2) exchanges the tokens of every layer with experts over
    its group, so the group's ranks must run the same forward passes; 7 examples split 4 and 3
    (batched: 4 and 3 passes of 4 rows; cached: a pass per context and per ending), and the rank
    with fewer runs a pass whose result it drops (under ZeRO-3 at dp 4 too, split 2, 2, 2 and 1,
    its gathers with it). A mixture of 4 experts, 2 per token; the scores
    are the PyTorch reference's."""
    moe = replace(CFG, moe_experts=4, moe_top_k=2, mlp_hidden=96)
    check_seven_examples(setup, tmp_path, ranks, moe, 13,
                         ["--model.moe_experts", 4, "--model.moe_top_k", 2, "--model.mlp_hidden",
                          96, "--parallel.ep", 2, *extra])


def test_during_training_into_metrics(setup):
    d, out, ckpt, cfg, want = setup
    p = train("--config", cfg, "--init-from", ckpt, "--train.steps", 2, "--eval.every", 2,
              "--run.name", "mc-train", check=True)
    assert "choice accuracy" in p.stdout
    with h5py.File(d / "runs" / "mc-train" / "metrics.h5", "r") as f:
        assert list(f["val/step"][()]) == [0, 2]
        got = f["val/choice_accuracy"][()]
        assert abs(got[0] - want[0]) < 1e-9 and np.isfinite(got[1])
        assert abs(f["val/choice_accuracy_by_sum"][0] - want[1]) < 1e-9
        assert abs(f["val/choice_accuracy_by_chars"][0] - want[3]) < 1e-9
    from analysis.metrics import load_metrics
    m = load_metrics(d / "runs" / "mc-train")
    assert f"(by characters {m.val['choice_accuracy_by_chars'][-1]:.4f}) at step 2" in m.summary()
    # Without eval.choices the column is NaN.
    train("--config", cfg, "--train.steps", 1, "--eval.choices", "", "--run.name", "plain",
          check=True)
    with h5py.File(d / "runs" / "plain" / "metrics.h5", "r") as f:
        for col in ("", "_by_sum", "_by_chars"):
            assert np.all(np.isnan(f["val/choice_accuracy" + col][()]))


def test_characters_need_the_tokenizer_that_wrote_the_file(setup, tmp_path):
    """acc_norm's characters come from data.vocab decoding the endings: without that file the
    run says so and reports the others (a tokenizer too small for the file's ids:
    tests/unit/test_choice_file.cpp)."""
    d, out, ckpt, cfg, want = setup
    p = train("--config", cfg, "--eval-only", "--init-from", ckpt, "--data.vocab",
              tmp_path / "none.tiktoken", check=True)
    assert "no accuracy by characters (lm-eval's acc_norm): data.vocab" in p.stdout
    assert "does not exist" in p.stdout
    got = parse(p.stdout)
    assert got[4] is None and abs(got[0] - want[0]) < 1e-4


def test_cloze_examples_from_held_out_text(tmp_path):
    """--cloze: each example is a sentence's first half, its own second half among three other
    sentences' as the endings; the same seed gives the same file."""
    import re

    sentences = [f"The {w} of the garden saw {n} small birds fly over the {w} stone wall today."
                 for n, w in enumerate(("keeper", "owner", "child", "dog", "cat", "king",
                                        "queen", "gardener"))]
    # a repeated sentence: its copy's ending is never offered as a wrong one
    sentences.append(sentences[0])
    text = tmp_path / "held_out.txt"
    text.write_text("  ".join(sentences) + "\nToo short. Also short!\n")
    out = [tmp_path / "a.bin", tmp_path / "b.bin"]
    for o in out:
        p = subprocess.run([sys.executable, PREPARE, text, o, "--vocab", VOCAB, "--cloze", "5",
                            "--seed", "3"], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    assert out[0].read_bytes() == out[1].read_bytes()
    enc = gpt2_tiktoken()
    got = read_eval_file(out[0])
    assert len(got) == 5
    for label, ctx, ends in got:
        assert len(ends) == 4
        whole = enc.decode(ctx) + enc.decode(ends[label])
        assert whole in sentences
        others = [enc.decode(ctx) + enc.decode(e) for i, e in enumerate(ends) if i != label]
        assert not any(o in sentences for o in others)
        assert all(re.search(r"birds fly over", enc.decode(e)) for e in ends)
    p = subprocess.run([sys.executable, PREPARE, tmp_path / "a.bin", tmp_path / "c.bin",
                        "--vocab", VOCAB, "--cloze", "5"], capture_output=True, text=True)
    assert p.returncode == 1 and "not a token shard" in p.stderr, p.stderr
    # --pairs: the same examples as preference pairs, its own ending chosen, another rejected
    p = subprocess.run([sys.executable, PREPARE, text, tmp_path / "p.jsonl", "--vocab", VOCAB,
                        "--cloze", "5", "--seed", "3", "--pairs"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    import json
    pairs = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(pairs) == 5
    for pair, (label, ctx, ends) in zip(pairs, got):
        assert enc.encode(pair["prompt"]) == ctx
        assert enc.encode(pair["chosen"]) == ends[label]
        assert pair["prompt"] + pair["chosen"] in sentences
        assert pair["prompt"] + pair["rejected"] not in sentences
    p = subprocess.run([sys.executable, PREPARE, text, tmp_path / "q.jsonl", "--vocab", VOCAB,
                        "--pairs"], capture_output=True, text=True)
    assert p.returncode == 1 and "--pairs applies to --cloze" in p.stderr, p.stderr
    # --others: the wrong endings from another text (another author's)
    other = [f"Thou shalt keep all of these that the king gave unto thee, {n} {w} for ever."
             for n, w in enumerate(("statutes", "laws", "words", "days", "gifts"))]
    (tmp_path / "other.txt").write_text("  ".join(other) + "\n")
    p = subprocess.run([sys.executable, PREPARE, text, tmp_path / "o.jsonl", "--vocab", VOCAB,
                        "--cloze", "5", "--pairs", "--others", tmp_path / "other.txt"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    for line in (tmp_path / "o.jsonl").read_text().splitlines():
        pair = json.loads(line)
        assert pair["prompt"] + pair["chosen"] in sentences
        assert any(o.endswith(pair["rejected"].strip()) for o in other), pair


def test_bad_inputs(setup, tmp_path):
    d, out, ckpt, cfg, _ = setup
    # A token shard is not an eval file; a model with a smaller vocabulary refuses its tokens.
    shard = d / "data" / "val_000.bin"
    assert_clean_error(train("--config", cfg, "--eval-only", "--init-from", ckpt,
                             "--eval.choices", shard), "eval.choices", "magic")
    assert_clean_error(train("--config", cfg, "--eval-only", "--eval.choices", out,
                             "--model.vocab_size", 300, "--init-from", ckpt),
                       "eval.choices", "outside the vocabulary")
    assert_clean_error(train("--config", cfg, "--eval.choice_examples", -1), "eval.choice_examples")
    # more examples than the file holds: refused (as eval.sequences is), not quietly all of them
    assert_clean_error(train("--config", cfg, "--eval-only", "--init-from", ckpt, "--eval.choices",
                             out, "--eval.choice_examples", 100000), "fewer than "
                       "eval.choice_examples = 100000")
    assert_clean_error(train("--config", cfg, "--eval.choice_mode", "fast"), "eval.choice_mode")
    assert_clean_error(train("--config", cfg, "--eval-only", "--init-from", ckpt, "--eval.choices",
                             "", "--eval.sequences", 0), "nothing to evaluate")
    assert_clean_error(train("--config", cfg, "--eval-only", "--init-from", ckpt, "--eval.choices",
                             tmp_path / "missing.bin"), "eval.choices", "missing.bin")

    def prepare(lines):
        jl = tmp_path / "bad.jsonl"
        jl.write_text(lines)
        return subprocess.run([sys.executable, PREPARE, jl, tmp_path / "bad.bin", "--vocab",
                               VOCAB], capture_output=True, text=True)

    for lines, needle in [("{not json\n", "bad.jsonl:1: not JSON"),
                          ('{"ctx": "a", "endings": ["b"], "label": 0}\n', '"endings"'),
                          ('{"ctx": "a", "endings": ["b", "c"], "label": 2}\n', '"label"'),
                          ('{"ctx": "a", "endings": ["b", "c"], "label": true}\n', '"label"'),
                          ("\n", "no examples")]:
        p = prepare(lines)
        assert p.returncode == 1 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert not list(tmp_path.glob("bad.bin*"))
