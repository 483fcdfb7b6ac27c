"""SentencePiece-style BPE tokenizers (Llama 2's, Mistral's) against independent references.

- sentencepiece (Google's C++ library): Mistral's real models (data/vocab/mistral-v1.model,
  Mistral 7B v0.1's and the scheme of Llama 2's; mistral-v3.model with control and
  user-defined pieces; both put there by jobs/setup.sh) converted by `triad-convert tokenizer
  --sentencepiece` must encode the corpus, hand-picked strings and every Unicode code point to
  sentencepiece's ids; so must BPE models sentencepiece trains here with other settings (no
  dummy prefix, pieces across spaces, user-defined symbols).
- the model reader (protobuf read by hand) against sentencepiece's own protobuf classes.
- Hugging Face's tokenizers: the tokenizer.json transformers makes from Mistral's model (legacy
  Prepend + Replace, and Metaspace) imports to its exact ids; the tokenizer.json triad exports
  encodes as triad does, and transformers' AutoTokenizer loads it.
"""

import io
import json
import random
import shutil
import subprocess

import pytest

from test_tokenizer_llama3 import CORPUS, cli, cli_encode, first_difference, mixed_strings
from test_tokenizer_tiktoken import STRINGS, read_shard, write_documents
from triad_run import ENV, REPO, assert_clean_error, assert_clean_failure, exe, tool

spm = pytest.importorskip("sentencepiece")

from analysis import hf_tokenizer, sp_tokenizer  # noqa: E402

MISTRAL_V1 = REPO / "data" / "vocab" / "mistral-v1.model"
MISTRAL_V3 = REPO / "data" / "vocab" / "mistral-v3.model"


def need(path):
    if not path.exists():
        pytest.fail(f"{path} does not exist: run jobs/setup.sh (it fetches Mistral's models)")


def convert(model, out, *extra):
    p = tool("triad-convert", "tokenizer", *extra, model, out)
    assert p.returncode == 0, p.stderr
    return out / "tokenizer.triad", p.stdout


def book_text(chars=300000):
    books = [p for p in CORPUS if p.name.startswith("austen_")]
    assert books, "data/corpus has no Austen novels: run jobs/setup.sh"
    return books[-1].read_text(encoding="utf-8")[:chars]


def held_out_text():
    """Held-out prose, the hand-picked strings, random mixes of tricky characters, runs of
    spaces of every length, and U+2581 itself (SentencePiece's stand-in for a space)."""
    runs = [" " * n + "w" + " " * n + "\n" for n in range(1, 34)]
    return "\n".join([book_text(), *STRINGS.values(), *mixed_strings(7, 1500), *runs,
                      "\u2581x \u2581\u2581 y\u2581", "\ttab", " lead", "trail "])


def every_code_point():
    cps = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    rng = random.Random(3)
    return "\n".join("x" + "".join(cps[i:i + 997]) + " y " +
                     "".join(rng.sample(cps[i:i + 997], min(50, len(cps[i:i + 997]))))
                     for i in range(0, len(cps), 997))


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """{name: (sentencepiece processor, triad description)} for Mistral's v1 and v3 models."""
    out = {}
    for name, path in [("v1", MISTRAL_V1), ("v3", MISTRAL_V3)]:
        need(path)
        desc, summary = convert(path, tmp_path_factory.mktemp(name) / "tok", "--sentencepiece")
        assert "31741 pieces + 256 byte tokens" in summary
        out[name] = (spm.SentencePieceProcessor(model_file=str(path)), desc)
    return out


def test_model_reader_matches_sentencepiece_protobuf():
    from sentencepiece import sentencepiece_model_pb2 as pb
    for path in (MISTRAL_V1, MISTRAL_V3):
        need(path)
        ref = pb.ModelProto()
        ref.ParseFromString(path.read_bytes())
        m = sp_tokenizer.read_model(path)
        assert [(p["text"], p["score"], p["type"]) for p in m["pieces"]] == \
            [(p.piece, p.score, p.type) for p in ref.pieces]
        ts, ns = ref.trainer_spec, ref.normalizer_spec
        assert (m["model_type"], m["byte_fallback"], m["bos_id"], m["eos_id"]) == \
            (ts.model_type, ts.byte_fallback, ts.bos_id, ts.eos_id)
        assert (m["name"], m["dummy_prefix"], m["remove_extra_whitespaces"],
                m["escape_whitespaces"]) == (ns.name, ns.add_dummy_prefix,
                                             ns.remove_extra_whitespaces, ns.escape_whitespaces)


def test_mistral_description(mistral):
    text = mistral["v1"][1].read_text()
    for line in ["pieces_count 31997", "space_prefix true", "special 0 <unk>", "special 1 <s>",
                 "special 2 </s>", "document_start <s>", "prompt_start <s>", "stop </s>"]:
        assert line + "\n" in text
    v3 = mistral["v3"][1].read_text()
    assert "special 3 [INST]" in v3 and "added 770 [REFERENCE_DOC_0]" in v3
    assert cli_encode(mistral["v1"][1], "Hello world") == [22557, 1526]
    assert cli("decode", "--vocab", mistral["v1"][1], data=b"1 22557 1526 2") == \
        b"<s> Hello world</s>"


def test_description_files_cut_short_are_refused(tmp_path, mistral):
    """A pieces or merges file cut inside its last line (a merge's rank 31726 cut to 31 still
    parsed): refused, naming the file."""
    src = mistral["v1"][1].parent
    for name in ("tokenizer.merges", "tokenizer.pieces"):
        cut = tmp_path / name.split(".")[1]
        shutil.copytree(src, cut)
        data = (cut / name).read_bytes()
        (cut / name).write_bytes(data[:-4])
        p = subprocess.run([exe("triad-tokenize"), "encode", "--vocab", str(cut / "tokenizer.triad")],
                           input="Hello world", capture_output=True, text=True, env=ENV,
                           timeout=120)
        assert_clean_error(p, str(cut / name), "the last line has no line end")


@pytest.mark.parametrize("name", ["v1", "v3"])
def test_mistral_matches_sentencepiece(mistral, name):
    sp, desc = mistral[name]
    text = held_out_text() + "\n[INST] a [/INST] [REFERENCE_DOC_1]x[REFERENCE_DOC_12] [REFERENCE_DOC"
    want = sp.encode(text)
    got = cli_encode(desc, text)
    assert got == want, first_difference(got, want, sp.decode)
    # Every code point: characters without a piece fall back to their bytes.
    text = every_code_point()
    want = sp.encode(text)
    got = cli_encode(desc, text)
    assert got == want, first_difference(got, want, sp.decode)
    # The bytes come back (decode gives the dummy prefix's space first).
    ids = cli_encode(desc, "Ünïcödé 漢字 🙂 ok")
    assert cli("decode", "--vocab", desc, data=" ".join(map(str, ids)).encode()).decode() == \
        " Ünïcödé 漢字 🙂 ok"


def test_mistral_shards_equal_sentencepiece_per_document(tmp_path, mistral):
    """Documents cut into chunks encoded on several threads (the chunks after the first take no
    space prefix) give sentencepiece's ids of each whole document, after <s>."""
    sp, desc = mistral["v1"]
    docs = [book_text(2_500_000), " starts with a space\n" + STRINGS["accents"], "x"]
    files = write_documents(tmp_path, docs)
    out = tmp_path / "out"
    summary = cli("shards", "--vocab", desc, "--out", out, "--val-fraction", "0",
                  "--threads", "2", *files).decode()
    assert "<s> before each document; uint16 shards" in summary
    got = read_shard(out / "tokens_train_000000.bin")
    want = sum(([1] + sp.encode(d) for d in docs), [])
    assert got == want, first_difference(got, want, sp.decode)


def train_sentencepiece(tmp_path, name, **options):
    """A BPE model sentencepiece trains on part of a book, with byte fallback."""
    model = io.BytesIO()
    text = book_text(400000)
    settings = dict(model_type="bpe", vocab_size=1200, byte_fallback=True,
                    normalization_rule_name="identity", remove_extra_whitespaces=False,
                    allow_whitespace_only_pieces=True, minloglevel=2)
    settings.update(options)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()),
                                   model_writer=model, **settings)
    path = tmp_path / f"{name}.model"
    path.write_bytes(model.getvalue())
    return path


@pytest.mark.parametrize("options", [
    {},
    {"add_dummy_prefix": False},
    {"split_by_whitespace": False},  # pieces hold spaces inside: the text is merged whole
    {"user_defined_symbols": ["<tool>", "</tool>", "@@"]},
], ids=["default", "no-prefix", "across-spaces", "user-defined"])
def test_models_sentencepiece_trains_match_it(tmp_path, options):
    path = train_sentencepiece(tmp_path, "m", **options)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    desc, _ = convert(path, tmp_path / "tok", "--sentencepiece")
    inside = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
              if "\u2581" in sp.id_to_piece(i).lstrip("\u2581")]
    assert bool(inside) == ("split_by_whitespace" in options)
    assert ("space_prefix false" in desc.read_text()) == ("add_dummy_prefix" in options)
    text = held_out_text()[:200000] + " <tool>a@@b</tool> @@@ <tool"
    want = sp.encode(text)
    got = cli_encode(desc, text)
    assert got == want, first_difference(got, want, sp.decode)


# ---- Hugging Face -----------------------------------------------------------------------------

tokenizers = pytest.importorskip("tokenizers")


@pytest.mark.parametrize("legacy", [True, False], ids=["prepend-replace", "metaspace"])
def test_tokenizer_json_from_transformers_imports_exactly(tmp_path, legacy):
    """transformers converts Mistral's model to a tokenizer.json (legacy: Prepend and Replace
    normalizers, as Llama 2's and Mistral's files on the Hub; otherwise a Metaspace
    pre-tokenizer, which adds no space before a text that begins with one)."""
    transformers = pytest.importorskip("transformers")
    need(MISTRAL_V1)
    slow = transformers.LlamaTokenizer(vocab_file=str(MISTRAL_V1), legacy=legacy)
    fast = transformers.LlamaTokenizerFast(__slow_tokenizer=slow, legacy=legacy, from_slow=True)
    fast.save_pretrained(str(tmp_path / "hf"))
    desc, summary = convert(tmp_path / "hf", tmp_path / "tok")
    assert f"space prefix {'true' if legacy else 'unless_space'}" in summary
    assert "document start <s>, prompt start <s>, stop </s>" in summary
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    hf.encode_special_tokens = True
    for text in [held_out_text(), " begins with a space", "\u2581begins with U+2581", "\t\ttab"]:
        want = hf.encode(text, add_special_tokens=False).ids
        got = cli_encode(desc, text)
        assert got == want, first_difference(got, want, hf.decode)


def test_exported_tokenizer_json_encodes_as_triad(tmp_path, mistral):
    sp, desc = mistral["v1"]
    files = hf_tokenizer.hf_files(hf_tokenizer.read_description(desc), 4096)
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = held_out_text()
    assert hf.encode(text, add_special_tokens=False).ids == sp.encode(text)
    assert hf.encode("Hello world").ids == [1, 22557, 1526]
    assert hf.decode([1, 22557, 1526, 2], skip_special_tokens=True) == "Hello world"
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert auto("Hello world")["input_ids"] == [1, 22557, 1526]
    back, _ = convert(tmp_path, tmp_path / "back")
    a = hf_tokenizer.read_description(desc)
    b = hf_tokenizer.read_description(back)
    assert (a.pieces, a.byte_tokens, a.specials, a.space_prefix, a.prompt_start) == \
        (b.pieces, b.byte_tokens, b.specials, b.space_prefix, b.prompt_start)
    assert {(x, y) for x, y, _ in a.merges} == {(x, y) for x, y, _ in b.merges}


def test_convert_refuses_what_triad_cannot_encode_exactly(tmp_path):
    cases = [({"model_type": "unigram"}, ["UNIGRAM", "BPE models"]),
             ({"byte_fallback": False}, ["byte_fallback"]),
             ({"normalization_rule_name": "nmt_nfkc"}, ["'nmt_nfkc'"]),
             ({"remove_extra_whitespaces": True}, ["removes extra white space"])]
    for i, (options, needles) in enumerate(cases):
        path = train_sentencepiece(tmp_path, f"bad{i}", **options)
        p = tool("triad-convert", "tokenizer", "--sentencepiece", path, tmp_path / "out")
        assert_clean_failure(p, str(path), *needles)
        assert not (tmp_path / "out").exists()
    (tmp_path / "junk.model").write_bytes(b"\x0a\xff\xff\xff\xff\x0f")
    p = tool("triad-convert", "tokenizer", "--sentencepiece", tmp_path / "junk.model",
             tmp_path / "out")
    assert_clean_failure(p, "junk.model", "not a SentencePiece model")
    good = train_sentencepiece(tmp_path, "good")
    for how in ([], ["--tekken"], ["--meta-llama3"]):  # what it is, and how it converts
        p = tool("triad-convert", "tokenizer", *how, good, tmp_path / "out")
        assert_clean_failure(p, str(good), "looks like a SentencePiece model",
                             "convert it with --sentencepiece")
    for option in ("--document-start", "--prompt-start", "--stop"):  # empty: not "not given"
        p = tool("triad-convert", "tokenizer", "--sentencepiece", option, "",
                 tmp_path / "junk.model", tmp_path / "out")
        assert p.returncode == 2 and f"argument {option}: empty" in p.stderr, p.stderr
        assert not (tmp_path / "out").exists()

    transformers = pytest.importorskip("transformers")
    slow = transformers.LlamaTokenizer(vocab_file=str(good), legacy=True)
    transformers.LlamaTokenizerFast(__slow_tokenizer=slow, legacy=True, from_slow=True) \
        .save_pretrained(str(tmp_path / "hf"))
    tj = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())

    def added_in_text(t):
        t["added_tokens"].append({"id": len(t["model"]["vocab"]), "content": "<x>",
                                  "special": False, "lstrip": False, "rstrip": False,
                                  "single_word": False, "normalized": False})

    def split_metaspace(t):
        t["normalizer"] = None
        t["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581",
                              "prepend_scheme": "always", "split": True}

    def bad_merge(t):
        t["model"]["merges"][5] = "q z"

    for change, needles in [(added_in_text, ["'<x>'", "not special"]),
                            (split_metaspace, ["Metaspace", "SentencePiece-style"]),
                            (lambda t: t.update(normalizer={"type": "NFKC"}), ["NFKC"]),
                            (bad_merge, ["merge 5", "not a piece"]),
                            # converted, then refused by triad-tokenize (its merges file)
                            (lambda t: t["model"]["merges"].append(t["model"]["merges"][0]),
                             ["merges 0 and", "are the same pair"]),
                            (lambda t: t["model"].update(merges=None), ["no merges"])]:
        bad = json.loads(json.dumps(tj))
        change(bad)
        (tmp_path / "bad").mkdir(exist_ok=True)
        (tmp_path / "bad" / "tokenizer.json").write_text(json.dumps(bad))
        p = tool("triad-convert", "tokenizer", tmp_path / "bad" / "tokenizer.json",
                 tmp_path / "out")
        assert_clean_failure(p, "tokenizer.json", *needles)
        assert not (tmp_path / "out").exists()


# ---- generation ---------------------------------------------------------------------------------

def test_mistral_generation_matches_transformers(tmp_path, mistral):
    """A random MistralForCausalLM with Mistral's vocabulary: triad-generate, given the prompt as
    text and the description converted from Mistral's model, continues as transformers does
    (greedily, float64) from sentencepiece's ids of the prompt after <s>; the export carries a
    tokenizer.json that gives AutoTokenizer the same prompt ids."""
    from triad_run import exe, greedy_continuation, import_random_model, run
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    sp, desc = mistral["v1"]
    torch.manual_seed(5)
    model = transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, sliding_window=None,
        bos_token_id=1, eos_token_id=2)).eval()
    ckpt = import_random_model(model, tmp_path, seq_len=32)
    prompt = "It is a truth universally acknowledged, ünïcödé"
    ids = [1] + sp.encode(prompt)
    want = greedy_continuation(model, ids, 10)
    p = run([exe("triad-generate"), "--checkpoint", ckpt, "--vocab", desc, "--prompt", prompt,
             "--length", "10", "--top-k", "1", "--output", "ids"], check=True, timeout=300)
    assert [int(t) for t in p.stdout.split()] == want
    p = tool("triad-convert", "export", ckpt, tmp_path / "out", "--to", "hf", "--vocab", desc,
             timeout=300)
    assert p.returncode == 0, p.stderr
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert auto(prompt)["input_ids"] == ids
