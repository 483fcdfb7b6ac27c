"""Mistral's Tekken tokenizer (Mistral NeMo, Small 3, Ministral) against tiktoken.

data/vocab/tekken.json (Mistral NeMo's, put there by jobs/setup.sh from the mistral_common
wheel) converted by `triad-convert tokenizer --tekken` must encode the corpus, hand-picked
strings, random mixes of letters of every case class and marks, and every Unicode code point
to the ids tiktoken gives with the file's ranks and pattern (mistral_common encodes through
tiktoken the same way), shifted past the 1,000 special tokens. The tokenizer.json triad exports
encodes as triad does in Hugging Face's tokenizers on Latin text.
"""

import base64
import json
import random

import pytest

from test_tokenizer_llama3 import CORPUS, cli, cli_encode, first_difference
from test_tokenizer_tiktoken import STRINGS
from test_tokenizer_sentencepiece import every_code_point
from triad_run import REPO, assert_clean_failure, tool

tiktoken = pytest.importorskip("tiktoken")

from analysis import hf_tokenizer  # noqa: E402

TEKKEN = REPO / "data" / "vocab" / "tekken.json"
N_SPECIAL = 1000


@pytest.fixture(scope="module")
def tekken(tmp_path_factory):
    """(triad description, a function giving tiktoken's ids of a text as triad numbers them)."""
    if not TEKKEN.exists():
        pytest.fail(f"{TEKKEN} does not exist: run jobs/setup.sh (it fetches Mistral's files)")
    out = tmp_path_factory.mktemp("tekken") / "tok"
    p = tool("triad-convert", "tokenizer", "--tekken", TEKKEN, out, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "130072 ranks + 1000 special tokens = vocab 131072, pre-tokenizer tekken" in p.stdout
    tj = json.loads(TEKKEN.read_text())
    n = tj["config"]["default_vocab_size"] - N_SPECIAL
    ranks = {base64.b64decode(v["token_bytes"]): v["rank"] for v in tj["vocab"][:n]}
    enc = tiktoken.Encoding("tekken", pat_str=tj["config"]["pattern"], mergeable_ranks=ranks,
                            special_tokens={})
    return out / "tokenizer.triad", lambda text: [i + N_SPECIAL
                                                  for i in enc.encode_ordinary(text)]


def case_mixes(seed, count):
    """Strings of upper, lower, title-case, modifier and other letters, marks, digits, spaces,
    slashes and punctuation, where tekken's case-aware alternatives backtrack."""
    rng = random.Random(seed)
    alphabet = ["A", "b", "Z", "q", "É", "é", "ǅ", "ǈ", "ʰ", "ˀ", "中", "ｱ", "\u0301", "\u0308",
                "\u20dd", "ß", "İ", "Σς", "1", "٣", "/", "//", " ", "  ", "\n", "\r\n", "\t", "'",
                "'S", "!", "$", "\u00a0", "😀", "Ⅻ"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30)))
            for _ in range(count)]


def test_tekken_matches_tiktoken(tekken):
    desc, want_ids = tekken
    books = [p.read_text(encoding="utf-8") for p in CORPUS if p.name.startswith("austen_")][:2]
    for text in ["\n".join(books), "\n".join([*STRINGS.values(), *case_mixes(11, 3000)]),
                 every_code_point()]:
        want = want_ids(text)
        got = cli_encode(desc, text)
        assert got == want, first_difference(got, want, lambda ids: ids)
    assert cli_encode(desc, "Hello world") == want_ids("Hello world")
    assert cli("decode", "--vocab", desc, data=b"1 1000 2") == b"<s>\x00</s>"


def test_tekken_description_and_export(tmp_path, tekken):
    desc, want_ids = tekken
    text = desc.read_text()
    for line in ["special 0 <unk>", "special 3 [INST]", "special 19 [TOOL_CONTENT]",
                 "special 999 <SPECIAL_999>", "document_start <s>", "prompt_start <s>",
                 "stop </s>"]:
        assert line + "\n" in text
    tokenizers = pytest.importorskip("tokenizers")
    files = hf_tokenizer.hf_files(hf_tokenizer.read_description(desc), 4096)
    hf = tokenizers.Tokenizer.from_str(files["tokenizer.json"])
    hf.encode_special_tokens = True
    # Oniguruma's case classes (Hugging Face's Split) may date from an older Unicode than tiktoken's
    # regex crate, so the comparison keeps to the books.
    book = [p for p in CORPUS if p.name.startswith("austen_")][0].read_text(encoding="utf-8")
    assert hf.encode(book, add_special_tokens=False).ids == want_ids(book)
    (tmp_path / "hf").mkdir()
    for name, body in files.items():
        (tmp_path / "hf" / name).write_text(body, encoding="utf-8")
    back = tool("triad-convert", "tokenizer", tmp_path / "hf", tmp_path / "back", timeout=300)
    assert back.returncode == 0, back.stderr
    assert "pre-tokenizer tekken" in back.stdout


def test_tekken_refusals(tmp_path):
    tj = json.loads(TEKKEN.read_text())
    tj["vocab"] = tj["vocab"][:2000]
    tj["config"]["default_vocab_size"] = 2500
    for change, needles in [
            (lambda t: t["config"].update(pattern=r"\p{L}+|\s+"), ["not the tekken pattern"]),
            (lambda t: t["config"].update(default_vocab_size=9000), ["leaves 8000 of its 2000"]),
            # A count of special tokens the table would be made from, one by one: refused first.
            (lambda t: t["config"].update(default_num_special_tokens=10**12,
                                          default_vocab_size=10**12 + 1000),
             ["default_num_special_tokens 1000000000000 is not in"]),
            (lambda t: t.pop("config"), ["not a Tekken file"]),
            (lambda t: t["vocab"][5].update(rank=7), ["vocab entry 5 has rank 7"]),
            # A version that is not "vN" would pick a chat format by accident.
            (lambda t: t["config"].update(version="seven"), ["config.version 'seven'"]),
            (lambda t: t["config"].update(version=7), ["config.version 7 is not"])]:
        bad = json.loads(json.dumps(tj))
        change(bad)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        p = tool("triad-convert", "tokenizer", "--tekken", path, tmp_path / "out")
        assert_clean_failure(p, str(path), *needles)
        assert not (tmp_path / "out").exists()
    # Read as something else, the message says what it looks like and how it converts.
    (tmp_path / "small.json").write_text(json.dumps(tj))
    for how in ([], ["--sentencepiece"]):
        p = tool("triad-convert", "tokenizer", *how, tmp_path / "small.json", tmp_path / "out")
        assert_clean_failure(p, "small.json", "looks like Mistral's tekken.json",
                             "convert it with --tekken")


def test_nemo_shaped_generation_matches_transformers(tmp_path, tekken):
    """A random MistralForCausalLM shaped as Mistral NeMo (Tekken's 131,072 tokens, heads wider
    than hidden / heads, 4 query heads over 2 key/value heads): triad-generate, given the prompt
    as text and the description converted from tekken.json, continues as transformers does
    (greedily, float64) from tiktoken's ids of the prompt after <s>."""
    from triad_run import exe, greedy_continuation, import_random_model, run
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    desc, want_ids = tekken
    torch.manual_seed(2)
    model = transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=131072, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=1000000.0, tie_word_embeddings=False,
        sliding_window=None, bos_token_id=1, eos_token_id=2)).eval()
    ckpt = import_random_model(model, tmp_path, seq_len=32)
    prompt = "It is a truth universally acknowledged, that a SINGLE man"
    ids = [1] + want_ids(prompt)
    want = greedy_continuation(model, ids, 10)
    p = run([exe("triad-generate"), "--checkpoint", ckpt, "--vocab", desc, "--prompt", prompt,
             "--length", "10", "--top-k", "1", "--output", "ids"], check=True, timeout=300)
    assert [int(t) for t in p.stdout.split()] == want


def test_tekken_v7_lists_its_special_tokens(tmp_path):
    """A v7 file (Mistral Small 3's) lists its special tokens with their ranks; they name ids
    0..n-1 and its chat format is mistral_v7 (here a small file cut from NeMo's)."""
    tj = json.loads(TEKKEN.read_text())
    tj["vocab"] = tj["vocab"][:2000]
    tj["config"].update(default_vocab_size=2100, default_num_special_tokens=100, version="v7")
    names = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]
    tj["special_tokens"] = [{"rank": i, "token_str": n, "is_control": True}
                            for i, n in enumerate(names)] + \
        [{"rank": i, "token_str": f"<SPECIAL_{i}>", "is_control": True} for i in range(7, 100)]
    path = tmp_path / "tekken_v7.json"
    path.write_text(json.dumps(tj))
    desc = tmp_path / "tok" / "tokenizer.triad"
    p = tool("triad-convert", "tokenizer", "--tekken", path, tmp_path / "tok")
    assert p.returncode == 0, p.stderr
    assert "2000 ranks + 100 special tokens = vocab 2100" in p.stdout
    text = desc.read_text()
    for line in ["special 5 [SYSTEM_PROMPT]", "special 99 <SPECIAL_99>", "chat mistral_v7"]:
        assert line + "\n" in text
    ids = [int(t) for t in cli("chat", "--vocab", desc, "--system", "Be brief.",
                               data=b"Hi").split()]
    assert ids[:2] == [1, 5] and ids[-1] == 4 and 6 in ids and 3 in ids

