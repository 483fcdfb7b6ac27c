"""Tokenizers beyond GPT-2 against independent references.

- tiktoken: Llama 3's real ranks (data/vocab/llama3.tiktoken, Meta's tokenizer.model, put there
  by jobs/setup.sh) with Llama 3's pattern on the corpus, on hand-picked strings and on every
  Unicode code point; Qwen2's (data/vocab/qwen.tiktoken) with its pattern after NFC
  (unicodedata2); the llama3 and qwen2 pre-tokenizers over GPT-2's ranks.
- Hugging Face's tokenizers (Rust): byte-level BPEs it trains itself on part of the corpus,
  imported by `triad-convert tokenizer`, must encode held-out text to the same ids in triad;
  a tokenizer.json exported from a description must encode as triad does, and transformers'
  AutoTokenizer loads it.
- transformers' LlamaForCausalLM: a random model imported with Llama 3's vocabulary continues a
  text prompt, in triad-generate with the Llama 3 description, as the model in transformers
  does (greedily, float64) from the ids tiktoken gives the prompt.
"""

import json
import random
import subprocess
import tempfile
import unicodedata

import numpy as np
import pytest

from test_tokenizer_tiktoken import STRINGS, write_documents
from triad_run import (ENV, REPO, VOCAB, assert_clean_error, assert_clean_failure, exe,
                       greedy_continuation, import_random_model, parse_ids, run, tool)

tiktoken = pytest.importorskip("tiktoken")
from tiktoken.load import load_tiktoken_bpe  # noqa: E402

from analysis import hf_tokenizer  # noqa: E402

LLAMA3 = REPO / "data" / "vocab" / "llama3.tiktoken"
QWEN = REPO / "data" / "vocab" / "qwen.tiktoken"
CORPUS = sorted((REPO / "data" / "corpus").glob("*.txt"))
BEGIN, END = 128000, 128001


def need(path):
    if not path.exists():
        pytest.fail(f"{path} does not exist: run jobs/setup.sh (it fetches the BPE ranks)")


def cli(*args, data=b""):
    with tempfile.TemporaryDirectory(prefix="triad-ompi-") as session:
        env = dict(ENV, OMPI_MCA_orte_tmpdir_base=session)
        p = subprocess.run([exe("triad-tokenize"), *map(str, args)], input=data,
                           capture_output=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p.stdout


def cli_encode(vocab, text: str):
    return parse_ids(cli("encode", "--vocab", vocab, data=text.encode()))


def first_difference(got, want, decode):
    i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return (f"{len(got)} vs {len(want)} tokens; first difference at {i}: "
            f"{decode(got[max(0, i - 5):i + 5])!r} vs {decode(want[max(0, i - 5):i + 5])!r}")


def mixed_strings(seed, count):
    rng = random.Random(seed)
    alphabet = [" ", "  ", "\t", "\n", "\r\n", "\n\n", "a", "Z", "é", "ſ", "1", "٣", "!", "$", "'",
                "'s", "'T", "'LL", "中", "😀", "\u00a0", "\u3000", "\u2028", "x", "\x1c"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
            for _ in range(count)]


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    """Llama 3's description, made by triad-convert from Meta's tokenizer.model."""
    need(LLAMA3)
    out = tmp_path_factory.mktemp("llama3") / "tok"
    p = tool("triad-convert", "tokenizer", "--meta-llama3", LLAMA3, out)
    assert p.returncode == 0, p.stderr
    assert "128000 ranks + 256 special tokens = vocab 128256" in p.stdout
    return out / "tokenizer.triad"


@pytest.fixture(scope="module")
def llama3_enc():
    need(LLAMA3)
    return tiktoken.Encoding("llama3", pat_str=hf_tokenizer.PATTERNS["llama3"],
                             mergeable_ranks=load_tiktoken_bpe(str(LLAMA3)), special_tokens={})


def test_llama3_description(llama3):
    text = llama3.read_text()
    assert text.startswith("triad-tokenizer 1\n")
    assert "pretokenizer llama3" in text and "special 128000 <|begin_of_text|>" in text
    assert "special 128255 <|reserved_special_token_245|>" in text
    assert "prompt_start <|begin_of_text|>" in text
    assert [ln for ln in text.splitlines() if ln.startswith("stop ")] == [
        "stop <|end_of_text|>", "stop <|eom_id|>", "stop <|eot_id|>"]
    # Known ids (tiktoken with Meta's file gives the same; the special tokens decode to text).
    assert cli_encode(llama3, "Hello world") == [9906, 1917]
    assert cli("decode", "--vocab", llama3, data=b"128000 9906 1917 128009") == \
        b"<|begin_of_text|>Hello world<|eot_id|>"


@pytest.mark.parametrize("path", CORPUS or [None], ids=lambda p: p.name if p else "none")
def test_llama3_corpus_matches_tiktoken(path, llama3, llama3_enc):
    if path is None:
        pytest.fail("data/corpus has no *.txt files: run jobs/setup.sh")
    text = path.read_bytes().decode("utf-8", errors="replace")
    want = llama3_enc.encode_ordinary(text)
    got = cli_encode(llama3, text)
    assert got == want, first_difference(got, want, llama3_enc.decode)


def test_llama3_strings_and_every_code_point_match_tiktoken(llama3, llama3_enc):
    # The test strings of the GPT-2 comparison, random mixes of the pattern's corner cases, and
    # every code point between an apostrophe, letters, digits and spaces (a line each: no
    # piece crosses a line end here, so one difference shows the code point).
    parts = list(STRINGS.values()) + mixed_strings(3, 3000)
    lines = [f"'{c}x {c}7{c}'l{c} {c}\n" for c in map(chr, range(0x110000))
             if not 0xD800 <= ord(c) <= 0xDFFF]
    text = "\n".join(parts) + "\n" + "".join(lines)
    want = llama3_enc.encode_ordinary(text)
    got = cli_encode(llama3, text)
    assert got == want, first_difference(got, want, llama3_enc.decode)


def over_gpt2_ranks(tmp_path, scheme, pattern=None):
    """A description of GPT-2's ranks under pre-tokenizer `scheme`, and (with the scheme's regex,
    `pattern`) tiktoken's encoding of the same."""
    desc = tmp_path / "t.triad"
    desc.write_text(f"triad-tokenizer 1\nranks {VOCAB}\nranks_count 50256\n"
                    f"pretokenizer {scheme}\nspecial 50256 <|endoftext|>\n"
                    f"document_start <|endoftext|>\nstop <|endoftext|>\n")
    enc = pattern and tiktoken.Encoding(scheme, pat_str=pattern, special_tokens={},
                                        mergeable_ranks=load_tiktoken_bpe(str(VOCAB)))
    return desc, enc


@pytest.mark.parametrize("scheme", ["llama3", "qwen2"])
def test_pretokenizers_over_gpt2_ranks_match_tiktoken(tmp_path, scheme):
    """The scheme alone, with GPT-2's ranks: qwen2 (digits one by one) has no ranks file here."""
    desc, enc = over_gpt2_ranks(tmp_path, scheme, hf_tokenizer.PATTERNS[scheme])
    text = "\n".join([*STRINGS.values(), *mixed_strings(4, 3000),
                      CORPUS[0].read_text(encoding="utf-8")[:300000]])
    want = enc.encode_ordinary(text)
    got = cli_encode(desc, text)
    assert got == want, first_difference(got, want, enc.decode)


def test_nfc_matches_unicode_16_on_every_code_point(tmp_path):
    """`normalizer nfc`: decode(encode(s)) is s in NFC, here against unicodedata2 (Unicode 16.0,
    the version of triad's tables), on every code point and on random base + combining-mark
    clusters (reordered, composed, blocked), with Hangul jamo and composition exclusions."""
    unicodedata2 = pytest.importorskip("unicodedata2")
    assert unicodedata2.unidata_version == "16.0.0"
    desc = tmp_path / "nfc.triad"
    desc.write_text(f"triad-tokenizer 1\nranks {VOCAB}\nranks_count 50256\n"
                    f"pretokenizer qwen2\nnormalizer nfc\nspecial 50256 <|endoftext|>\n"
                    f"document_start <|endoftext|>\nstop <|endoftext|>\n")
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    rng = random.Random(11)
    marks = [*range(0x300, 0x370), 0x93C, 0x94D, 0x3099, 0x309A, 0x1161, 0x11A8, 0x0F71, 0x0F72,
             0x05B0, 0x0653, 0x0654, 0x0655, 0x1B35, 0x302A, 0x16FF0, 0x113C9, 0x1611E]
    bases = [*map(ord, "aeiouAEIOUnNcCsSzZ"), 0x1100, 0x1112, 0xAC00, 0xAC01, 0x3046, 0x304B,
             0x0915, 0x0627, 0x0B47, 0x0DD9, 0x1025, 0x3B1, 0x3C9, 0x438, 0x1B05, 0x0958, 0x212B,
             0x11382, 0x1611E]
    clusters = "".join(chr(rng.choice(bases)) + "".join(
        chr(rng.choice(marks)) for _ in range(rng.randrange(0, 4))) + rng.choice(["", " ", "\n"])
        for _ in range(100000))
    for name, text in (("code points", "\n".join("".join(map(chr, cps[i:i + 64]))
                                                  for i in range(0, len(cps), 64))),
                       ("clusters", clusters)):
        ids = cli("encode", "--vocab", desc, data=text.encode())
        got = cli("decode", "--vocab", desc, data=ids).decode()
        want = unicodedata2.normalize("NFC", text)
        assert got == want, (name, first_difference(list(got), list(want), "".join))


def read_shard(path):
    header = np.fromfile(path, dtype="<i4", count=256)
    assert (header[0], header[1]) == (20240801, 7), header[:3]  # llm.c's Llama 3 format
    tokens = np.fromfile(path, dtype="<u4", offset=1024)
    assert len(tokens) == header[2]
    return tokens.tolist()


def test_llama3_shards_are_uint32_with_begin_of_text(tmp_path, llama3, llama3_enc):
    docs = [STRINGS["accents"] + "\n" + STRINGS["code"], STRINGS["long_random_mix"], "x"]
    files = write_documents(tmp_path, docs)
    out = tmp_path / "out"
    summary = cli("shards", "--vocab", llama3, "--out", out, "--prefix", "l3",
                  "--val-fraction", "0.2", "--shard-tokens", "700", "--threads", "2",
                  *files).decode()
    stream = []
    for d in docs:
        stream += [BEGIN] + llama3_enc.encode_ordinary(d)
    n_val = round(0.2 * len(stream))
    train = sum((read_shard(f) for f in sorted(out.glob("l3_train_*.bin"))), [])
    val = sum((read_shard(f) for f in sorted(out.glob("l3_val_*.bin"))), [])
    assert train + val == stream and len(val) == n_val
    assert "<|begin_of_text|> before each document; uint32 shards" in summary


# ---- Hugging Face tokenizers ------------------------------------------------------------------

tokenizers = pytest.importorskip("tokenizers")


def train_hf(path, scheme, vocab_size=3000, nfc=False):
    """A byte-level BPE trained by Hugging Face's tokenizers on two of the corpus's books, with
    the pre-tokenizer of `scheme` (and NFC first, as Qwen2's); <|endoftext|> takes id 0, before
    the ranks."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(ignore_merges=True))
    if nfc:
        tok.normalizer = normalizers.NFC()
    if scheme == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif scheme == "gpt2_digits":  # SmolLM's
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif scheme in hf_tokenizer.SPLIT_SEQUENCES:  # DeepSeek-V3's, DeepSeek LLM's
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            *(pre_tokenizers.Split(Regex(r), behavior="isolated")
              for r in hf_tokenizer.SPLIT_SEQUENCES[scheme]),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(hf_tokenizer.PATTERNS[scheme]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    books = [p for p in CORPUS if p.name.startswith("austen_")][:2]
    assert books, "data/corpus has no Austen novels: run jobs/setup.sh"
    tok.train([str(b) for b in books], trainer)
    # Added tokens that are not special (as Qwen2.5's): found in text, in both tokenizers.
    tok.add_tokens(["<tool_call>", "</tool_call>", "<tool_call>x"])
    tok.save(str(path))
    return tok


def held_out_text():
    """Text for comparisons with Hugging Face's tokenizers. Its Split pre-tokenizer runs the
    regex in Oniguruma, whose Unicode tables are older than tiktoken's (Rust's regex crate) and
    triad's: letters new in Unicode 16 are not letters there, so that string is left out."""
    books = [p for p in CORPUS if p.name.startswith("austen_")]
    strings = [s for k, s in STRINGS.items() if k != "unicode16_letters"]
    return "\n".join([books[-1].read_text(encoding="utf-8")[:400000], *strings,
                      *mixed_strings(5, 2000)])


# Decomposed accents and Hangul jamo, composed by NFC (U+16FF0 and Unicode 16's new compositions
# are left out: tokenizers 0.20's tables predate them).
DECOMPOSED = ("cafe\u0301 nai\u0308ve A\u030a \u212b e\u0323\u0302 a\u0302\u0323 "
              "\u1100\u1161\u11a8 \u1112\u1161\u11ab \u0915\u093c \u3046\u3099 o\u0308\u0301")


@pytest.mark.parametrize("scheme,nfc", [("gpt2", False), ("llama3", False), ("qwen2", False),
                                        ("qwen2", True), ("gpt2_digits", False),
                                        ("deepseek3", False), ("deepseek_llm", False),
                                        ("deepseek_coder", False)],
                         ids=["gpt2", "llama3", "qwen2", "qwen2-nfc", "gpt2_digits", "deepseek3",
                              "deepseek_llm", "deepseek_coder"])
def test_bpe_trained_by_hf_tokenizers_imports_exactly(tmp_path, scheme, nfc):
    hf = train_hf(tmp_path / "tokenizer.json", scheme, nfc=nfc)
    if scheme.startswith("deepseek_"):  # (a Sequence of no normalizers, as some files hold)
        tj = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
        tj["normalizer"] = {"type": "Sequence", "normalizers": []}
        (tmp_path / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    p = tool("triad-convert", "tokenizer", tmp_path / "tokenizer.json", tmp_path / "triad")
    assert p.returncode == 0, p.stderr
    assert f"pre-tokenizer {scheme}, document start <|endoftext|>" in p.stdout
    desc = tmp_path / "triad" / "tokenizer.triad"
    assert "special 0 <|endoftext|>" in desc.read_text()
    assert "added 3000 <tool_call>" in desc.read_text()
    assert ("normalizer nfc" in desc.read_text()) == nfc
    hf.encode_special_tokens = True  # special tokens' texts are ordinary text, as in triad
    text = held_out_text() + "\n" + DECOMPOSED * 3 + \
        ' <tool_call>{"x": 1}</tool_call> <tool_call>xy <<tool_call>> <|endoftext|>'
    want = hf.encode(text, add_special_tokens=False).ids
    assert 3000 in want and 3001 in want and 3002 in want
    got = cli_encode(desc, text)
    assert got == want, first_difference(got, want, hf.decode)
    back = cli("decode", "--vocab", desc, data=" ".join(map(str, got)).encode()).decode()
    assert back == (unicodedata.normalize("NFC", text) if nfc else text)
    assert (back == text) == (not nfc)  # the decomposed accents came back composed


def every_code_point_text():
    """Every assigned code point (and one in 4096 of the unassigned and private ones) before a
    letter, after a space, between digits, before a kana and before a space, a line each. Left
    out: the code points whose category Unicode 16 (triad's tables, tiktoken's) and Python's
    unicodedata (14.0) disagree on, since Oniguruma's tables, which Hugging Face's tokenizers
    uses, lie between them."""
    import unicodedata2

    def kept(cp):
        cat = unicodedata2.category(chr(cp))
        return not 0xD800 <= cp <= 0xDFFF and cat == unicodedata.category(chr(cp)) and (
            cat not in ("Cn", "Co") or cp % 4096 == 0)

    return "".join(f"{c}x {c}7{c}\u3042{c} \n" for c in map(chr, filter(kept, range(0x110000))))


@pytest.mark.parametrize("scheme", hf_tokenizer.SCHEMES)
def test_pieces_match_hf_pre_tokenizer(tmp_path, scheme):
    """`triad-tokenize pieces` (the pre-tokenizer alone) against the pre-tokenizer of the
    tokenizer.json triad writes for the scheme (hf_files), in Hugging Face's tokenizers: the same
    pieces (in its byte-level alphabet) on the held-out text and, for the split sequences
    (deepseek3, deepseek_llm, deepseek_coder), on every code point in context (tokenizers takes valid UTF-8 only: ill-formed
    bytes are not compared)."""
    desc, _ = over_gpt2_ranks(tmp_path, scheme)
    files = hf_tokenizer.hf_files(hf_tokenizer.read_description(desc), 1024)
    (tmp_path / "tokenizer.json").write_text(files["tokenizer.json"], encoding="utf-8")
    pre = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")).pre_tokenizer
    # (every code point for the split sequences only: tiktoken checks the others on every code
    # point; the ends of deepseek3's second split's class, U+3040 unassigned; deepseek_llm's
    # classes' ends, white space before and after them, control characters among spaces)
    text = (every_code_point_text() + "a\u3040b\u303fc\u30ff\u3100 \u4dff\u4e00\u9fa5\u9fa6\n"
            + "\u07ff\u0800\u9fa5\u9fa6\uabff\uac00\ud7ff\ue000 \u00b4\u00b5\u00b6\u2125\u2126"
            "\u2127 a\u3000b \u3000\u3001  x\t \u0085y\u00a0\u2028z \u3000 \x01 \x01\x7f a \n"
            "  \n \r\n9 \uff10\uff01 \u2018\u201f\u2020 \u3002\u3003 \u00a0\n+ + x $5 \u00b2\u00b3 \n"
            if scheme in hf_tokenizer.SPLIT_SEQUENCES else "") + held_out_text()
    want = [p for p, _ in pre.pre_tokenize_str(text)]
    # (a JSON string a line: read as one array, 1.1M lines 0.6 s against 4.8 s line by line)
    lines = cli("pieces", "--vocab", desc, data=text.encode()).decode().split("\n")[:-1]
    pieces = json.loads("[" + ",".join(lines) + "]")
    assert len(pieces) == len(lines)  # a JSON string a line
    got = [hf_tokenizer.alphabet_text(piece.encode("utf-8", "surrogateescape")) for piece in pieces]
    i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    assert got == want, f"{len(got)} vs {len(want)} pieces; first difference at {i}: " \
        f"{got[max(0, i - 3):i + 3]} vs {want[max(0, i - 3):i + 3]}"


def test_exported_tokenizer_json_encodes_as_triad(tmp_path, llama3, llama3_enc):
    """A description's tokenizer.json (what export --to hf writes) in Hugging Face's tokenizers
    and transformers, and imported back."""
    files = hf_tokenizer.hf_files(hf_tokenizer.read_description(llama3), 8192)
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    hf.encode_special_tokens = True
    text = held_out_text()
    assert hf.encode(text, add_special_tokens=False).ids == llama3_enc.encode_ordinary(text)
    assert hf.encode("Hello world").ids == [BEGIN, 9906, 1917]  # the prompt start, as triad's
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert auto("Hello world")["input_ids"] == [BEGIN, 9906, 1917]
    assert auto.decode([BEGIN, 9906, 1917, 128009]) == "<|begin_of_text|>Hello world<|eot_id|>"
    back = tool("triad-convert", "tokenizer", tmp_path, tmp_path / "back")
    assert back.returncode == 0, back.stderr
    a = hf_tokenizer.read_description(llama3)
    b = hf_tokenizer.read_description(tmp_path / "back" / "tokenizer.triad")
    assert (a.ranked, a.specials, a.pretokenizer, a.document_start, a.prompt_start) == \
        (b.ranked, b.specials, b.pretokenizer, b.document_start, b.prompt_start)
    assert a.stops == b.stops == ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], (a.stops, b.stops)
    gen = transformers.GenerationConfig.from_pretrained(str(tmp_path))
    assert gen.eos_token_id == [128001, 128008, 128009] and gen.bos_token_id == BEGIN


def bad_tokenizer_json(tmp_path, change):
    tj = json.loads((tmp_path / "good.json").read_text())
    change(tj)
    path = tmp_path / "bad" / "tokenizer.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(tj))
    return path


def test_convert_refuses_what_triad_cannot_encode_exactly(tmp_path):
    train_hf(tmp_path / "good.json", "llama3", vocab_size=400)

    def merge_out_of_order(tj):
        m = tj["model"]["merges"]
        m[3], m[40] = m[40], m[3]

    def strips(tj):
        tj["added_tokens"][0]["lstrip"] = True

    def other_regex(tj):
        tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+"

    def deepseek3_but(change, scheme="deepseek3"):  # its pre-tokenizer with one thing changed
        def f(tj):
            splits = [{"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated",
                       "invert": False} for r in hf_tokenizer.SPLIT_SEQUENCES[scheme]]
            change(splits)
            tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
                *splits, {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}
        return f

    cases = [
        (lambda tj: tj.update(normalizer={"type": "NFKC"}), ["normalizer", "NFKC"]),
        (lambda tj: tj["model"].update(byte_fallback=True), ["byte_fallback"]),
        (lambda tj: tj["model"].update(type="Unigram"), ["'Unigram'"]),
        (strips, ["strips spaces"]),
        (other_regex, ["is not one triad implements"]),
        (lambda tj: tj.update(pre_tokenizer={"type": "Metaspace"}), ["Metaspace"]),
        (deepseek3_but(lambda s: s[1].update(invert=True)), ["not a byte-level BPE"]),
        (deepseek3_but(lambda s: s[2]["pattern"].update(Regex=r"\s+")), ["not a byte-level BPE"]),
        (deepseek3_but(lambda s: s.pop(1)), ["not a byte-level BPE"]),
        # DeepSeek LLM's letters with the ohm sign read as omega (a copy normalized to NFC): the
        # class would lose U+2126, so the regex is not the one triad computes.
        (deepseek3_but(lambda s: s[1]["pattern"].update(
            Regex=s[1]["pattern"]["Regex"].replace("\u2126", "\u03a9")), "deepseek_llm"),
         ["not a byte-level BPE"]),
        (deepseek3_but(lambda s: s.pop(3), "deepseek_llm"), ["not a byte-level BPE"]),
        (deepseek3_but(lambda s: s[4]["pattern"].update(Regex=r"\p{N}+"), "deepseek_coder"),
         ["not a byte-level BPE"]),
        (merge_out_of_order, ["merge 4", "out of order"]),
        (lambda tj: tj["model"]["merges"].pop(), ["made by no merge"]),
        (lambda tj: tj["model"]["vocab"].pop("a"), ["not 0..", "each once"]),
        # Values of other types than the format's: named as the file's, not as Python's
        # "unexpected TypeError".
        (lambda tj: tj["model"]["merges"].__setitem__(0, 7), ["a value of the wrong type"]),
        (lambda tj: tj["model"]["vocab"].__setitem__("a", "one"),
         ["token 'a' has the id 'one', not an integer"]),
        # ... and of the right value in another type (taken for 300 and 1), and an added token
        # that is no text (an "unexpected UnicodeEncodeError" writing it)
        (lambda tj: tj["model"]["vocab"].__setitem__("a", float(tj["model"]["vocab"]["a"])),
         ["token 'a' has the id", "not an integer"]),
        (lambda tj: tj["added_tokens"][0].__setitem__("id", True), ["not an integer"]),
        (lambda tj: tj["added_tokens"][0].__setitem__("content", "<\ud800>"),
         ["holds a lone surrogate"]),
        # a JSON boolean given as text ("no" was taken for true)
        (lambda tj: tj["added_tokens"][0].__setitem__("special", "no"),
         ["has special = 'no', not true or false"]),
    ]
    for change, needles in cases:
        path = bad_tokenizer_json(tmp_path, change)
        p = tool("triad-convert", "tokenizer", path, tmp_path / "out")
        assert_clean_failure(p, str(path), *needles)
        assert not (tmp_path / "out").exists()
    p = tool("triad-convert", "tokenizer", tmp_path / "none", tmp_path / "out")
    assert_clean_failure(p, "no such file")
    p = tool("triad-convert", "tokenizer", "--meta-llama3", VOCAB, tmp_path / "out")
    assert_clean_failure(p, "50256 tokens", "Llama 3's tokenizer.model")
    (tmp_path / "out").mkdir()
    p = tool("triad-convert", "tokenizer", tmp_path / "good.json", tmp_path / "out")
    assert_clean_failure(p, "already exists")
    # triad-tokenize pieces: a SentencePiece-style description has no pre-tokenizer
    p = tool("triad-convert", "tokenizer", "--sentencepiece", REPO / "data" / "vocab" /
             "mistral-v1.model", tmp_path / "sp")
    assert p.returncode == 0, p.stderr
    p = run([exe("triad-tokenize"), "pieces", "--vocab", tmp_path / "sp" / "tokenizer.triad"],
            input="a b")
    assert_clean_error(p, "SentencePiece-style BPE, which has no pre-tokenizer")
    assert_clean_error(run([exe("triad-tokenize"), "pieces"], input="a"), "--vocab")


# ---- generation ---------------------------------------------------------------------------------

def test_llama3_generation_matches_transformers(tmp_path, llama3):
    """A random LlamaForCausalLM with Llama 3's vocabulary: triad-generate, given the prompt as
    text and the Llama 3 description, continues as transformers' greedy generate does from the
    ids tiktoken gives the prompt after <|begin_of_text|>, greedily."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(11)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=128256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        bos_token_id=BEGIN, eos_token_id=END)).eval()
    ckpt = import_random_model(model, tmp_path, seq_len=32)
    prompt = "It is a truth universally acknowledged"
    ids = [BEGIN] + load_enc().encode_ordinary(prompt)
    want = greedy_continuation(model, ids, 12)
    p = run([exe("triad-generate"), "--checkpoint", ckpt, "--vocab", llama3, "--prompt", prompt,
             "--length", "12", "--top-k", "1", "--output", "ids"], check=True, timeout=300)
    assert [int(t) for t in p.stdout.split()] == want
    # With GPT-2's tokenizer (fewer ids than the model's rows) it draws among the tokenizer's
    # ids only, and says so; a prompt of ids past the model's is refused.
    p = run([exe("triad-generate"), "--checkpoint", ckpt, "--vocab", VOCAB, "--length", "20",
             "--top-k", "0", "--temperature", "5", "--output", "ids"], check=True, timeout=300)
    assert "drawn among the tokenizer's ids only" in p.stderr
    assert all(int(t) < 50257 for t in p.stdout.split())
    small = tmp_path / "small"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, max_position_embeddings=64, tie_word_embeddings=False)).save_pretrained(
        small, safe_serialization=True)
    assert tool("triad-convert", "import", small, tmp_path / "small.h5").returncode == 0
    p = run([exe("triad-generate"), "--checkpoint", tmp_path / "small.h5", "--vocab", llama3,
             "--prompt", "Hello world", "--length", "2"])
    assert_clean_error(p, "the prompt's token 128000", "beyond the model's 1000 tokens")
    # Exported with its tokenizer: transformers' AutoTokenizer gives the prompt's ids.
    p = tool("triad-convert", "export", ckpt, tmp_path / "out", "--to", "hf", "--vocab", llama3,
             timeout=300)
    assert p.returncode == 0, p.stderr
    assert "tokenizer.json from" in p.stdout
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert auto(prompt)["input_ids"] == ids
    gpt2_desc = tmp_path / "gpt2.triad"
    gpt2_desc.write_text(f"triad-tokenizer 1\nranks {VOCAB}\nranks_count 50256\n"
                         f"pretokenizer gpt2\nspecial 50256 <|endoftext|>\n"
                         f"document_start <|endoftext|>\nstop <|endoftext|>\n")
    p = tool("triad-convert", "export", ckpt, tmp_path / "out2", "--to", "hf", "--vocab",
             gpt2_desc, timeout=300)
    assert_clean_failure(p, "the tokenizer has 50257 tokens, the model 128256")
    assert not (tmp_path / "out2").exists()


def load_enc():
    return tiktoken.Encoding("llama3", pat_str=hf_tokenizer.PATTERNS["llama3"],
                             mergeable_ranks=load_tiktoken_bpe(str(LLAMA3)), special_tokens={})


# ---- Qwen2 ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """Qwen2's tokenizer as a Hugging Face tokenizer.json holds it (NFC, then the qwen2 split, then
    byte-level BPE over Qwen's 151,643 ranks; <|endoftext|>, <|im_start|>, <|im_end|> after them;
    generation ends at <|endoftext|> or <|im_end|>), written here from Qwen's ranks and imported
    by triad-convert tokenizer."""
    need(QWEN)
    d = tmp_path_factory.mktemp("qwen2")
    ranked = {r: t for t, r in hf_tokenizer.read_ranks(QWEN).items()}
    n = len(ranked)
    assert n == 151643
    src = hf_tokenizer.Description(
        ranked, "qwen2", {"<|endoftext|>": n, "<|im_start|>": n + 1, "<|im_end|>": n + 2},
        "<|endoftext|>", None, ["<|endoftext|>"], "nfc")
    for name, text in hf_tokenizer.hf_files(src, 32768).items():
        (d / "hf" / name).parent.mkdir(exist_ok=True)
        (d / "hf" / name).write_text(text, encoding="utf-8")
    (d / "hf" / "generation_config.json").write_text(json.dumps({"eos_token_id": [n, n + 2]}))
    p = tool("triad-convert", "tokenizer", d / "hf", d / "triad", timeout=300)
    assert p.returncode == 0, p.stderr
    return d / "triad" / "tokenizer.triad", d / "hf" / "tokenizer.json"


def test_qwen2_matches_tiktoken_after_nfc(qwen2):
    unicodedata2 = pytest.importorskip("unicodedata2")
    desc, hf_json = qwen2
    text = desc.read_text()
    assert "normalizer nfc" in text and "pretokenizer qwen2" in text
    assert [ln for ln in text.splitlines() if ln.startswith("stop ")] == [
        "stop <|endoftext|>", "stop <|im_end|>"]
    assert "prompt_start" not in text  # Qwen2 puts no token before a prompt
    enc = tiktoken.Encoding("qwen", pat_str=hf_tokenizer.PATTERNS["qwen2"],
                            mergeable_ranks=load_tiktoken_bpe(str(QWEN)), special_tokens={})
    parts = [CORPUS[0].read_text(encoding="utf-8")[:600000], *STRINGS.values(),
             *mixed_strings(6, 3000), DECOMPOSED * 5]
    text = "\n".join(parts)
    want = enc.encode_ordinary(unicodedata2.normalize("NFC", text))
    got = cli_encode(desc, text)
    assert got == want, first_difference(got, want, enc.decode)
    # Hugging Face's tokenizers on the same tokenizer.json (Unicode 16's additions left out).
    hf = tokenizers.Tokenizer.from_file(str(hf_json))
    hf.encode_special_tokens = True
    text = held_out_text() + DECOMPOSED
    assert hf.encode(text, add_special_tokens=False).ids == cli_encode(desc, text)
    ids = cli("decode", "--vocab", desc, data=b"151644 9707 151645 151643")
    assert ids == b"<|im_start|>Hello<|im_end|><|endoftext|>"
