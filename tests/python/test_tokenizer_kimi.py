"""Kimi K2's and o200k's pre-tokenizers, and Kimi K2's tokenizer files, against tiktoken.

The pre-tokenizers `kimi` (Moonshot's tokenization_kimi.py: runs of Han first, then letters told
by case without Han) and `o200k` (tiktoken's o200k_base: GPT-4o's, gpt-oss's), over GPT-2's ranks,
must encode a book, hand-picked strings, random mixes of Han, letters of every case class,
marks, contractions and digits, and every Unicode code point to the ids tiktoken gives with the
same ranks and the pattern as those files write it. `triad-convert tokenizer --kimi` reads a
model directory of Kimi's shape (tiktoken.model with tokenizer_config.json; here GPT-2's ranks
under Kimi's special tokens, as Kimi's own files are not at hand offline) and must number the
special tokens as tokenization_kimi.py does.
"""

import json
import random
import shutil

import pytest

from test_tokenizer_llama3 import CORPUS, cli, cli_encode, first_difference, over_gpt2_ranks
from test_tokenizer_sentencepiece import every_code_point
from test_tokenizer_tekken import case_mixes
from test_tokenizer_tiktoken import STRINGS
from triad_run import VOCAB, assert_clean_failure, tool

tiktoken = pytest.importorskip("tiktoken")
from tiktoken.load import load_tiktoken_bpe  # noqa: E402

from analysis import hf_tokenizer  # noqa: E402

# Kimi's pattern as tokenization_kimi.py writes it (a list of alternatives joined by "|"; the file
# is not at hand offline); o200k_base's is read from tiktoken itself (tiktoken_ext).
CONTRACTIONS = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
KIMI = "|".join([
    r"""[\p{Han}]+""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"""
    r"""[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+""" + CONTRACTIONS,
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"""
    r"""[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*""" + CONTRACTIONS,
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
O200K = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+""" +
    CONTRACTIONS,
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*""" +
    CONTRACTIONS,
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
# Kimi K2's named special tokens (tokenizer_config.json), by offset past the ranks.
KIMI_NAMED = {0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>",
              6: "<|start_header_id|>", 7: "<|end_header_id|>", 9: "[EOT]", 10: "<|im_system|>",
              17: "<|im_middle|>"}


def han_mixes(seed, count):
    """Strings of Han (ideographs, a radical, the Han numeral U+3007, the iteration mark U+3005,
    a Han mark U+16FF0), kana, letters of each case, marks, contractions, digits and white space:
    where Kimi's Han alternative and the letters without Han meet."""
    rng = random.Random(seed)
    alphabet = ["中", "文", "\u2e80", "\u3007", "\u3005", "\U00016ff0", "あ", "ア", "A", "b", "É",
                "ǅ", "ʰ", "\u0301", "'s", "'LL", "'ſ", "'", "1", "23", "٣", " ", "  ", "\n",
                "\r\n", "/", "!", "。", "😀"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30)))
            for _ in range(count)]


def test_patterns_are_the_sources(monkeypatch):
    import tiktoken_ext.openai_public as openai_public
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
    assert openai_public.o200k_base()["pat_str"] == O200K == hf_tokenizer.PATTERNS["o200k"]
    assert hf_tokenizer.PATTERNS["kimi"] == KIMI


@pytest.mark.parametrize("scheme", ["kimi", "o200k"])
def test_pretokenizer_over_gpt2_ranks_matches_tiktoken(tmp_path, scheme):
    desc, enc = over_gpt2_ranks(tmp_path, scheme, KIMI if scheme == "kimi" else O200K)
    book = CORPUS[0].read_text(encoding="utf-8")[:200000]
    for text in [book, "\n".join([*STRINGS.values(), *case_mixes(12, 2000), *han_mixes(13, 2000)]),
                 every_code_point()]:
        want = enc.encode_ordinary(text)
        got = cli_encode(desc, text)
        assert got == want, first_difference(got, want, enc.decode)


def kimi_dir(path, named=None, **config):
    """A model directory of Kimi's shape: GPT-2's ranks as tiktoken.model, Kimi's specials."""
    path.mkdir()
    shutil.copy(VOCAB, path / "tiktoken.model")
    decoder = {str(50256 + k): {"content": v, "special": True}
               for k, v in (KIMI_NAMED if named is None else named).items()}
    body = {"tokenizer_class": "TikTokenTokenizer", "bos_token": "[BOS]", "eos_token": "[EOS]",
            "added_tokens_decoder": decoder, **config}
    (path / "tokenizer_config.json").write_text(json.dumps(body))
    return path


def test_kimi_files_convert_as_tokenization_kimi(tmp_path):
    src = kimi_dir(tmp_path / "kimi")
    p = tool("triad-convert", "tokenizer", "--kimi", src, tmp_path / "tok")
    assert p.returncode == 0, p.stderr
    assert ("50256 ranks + 256 special tokens = vocab 50512, pre-tokenizer kimi, document start "
            "[BOS], stop [EOS] <|im_end|>") in p.stdout
    desc = tmp_path / "tok" / "tokenizer.triad"
    text = desc.read_text()
    for line in ["special 50256 [BOS]", "special 50258 <|im_end|>", "special 50273 <|im_middle|>",
                 "special 50261 <|reserved_token_50261|>", "special 50511 <|reserved_token_50511|>",
                 "document_start [BOS]", "stop [EOS]", "stop <|im_end|>"]:
        assert line + "\n" in text
    assert "prompt_start" not in text  # (tokenization_kimi.py adds no BOS)
    # The ids of tokenization_kimi.py's tiktoken.Encoding, its special tokens' texts read as
    # ordinary text (triad's rule everywhere; Kimi's encode() reads them as the tokens); their ids
    # decode to them.
    specials = {KIMI_NAMED.get(i - 50256, f"<|reserved_token_{i}|>"): i
                for i in range(50256, 50256 + 256)}
    enc = tiktoken.Encoding("kimi", pat_str=KIMI, mergeable_ranks=load_tiktoken_bpe(str(VOCAB)),
                            special_tokens=specials)
    sample = "用户说：Hello, it's 2025! [BOS]<|im_end|> 你好世界\n"
    assert cli_encode(desc, sample) == enc.encode_ordinary(sample)
    ids = [50256, *enc.encode_ordinary("中文 text"), 50258, 50300]
    assert cli("decode", "--vocab", desc, data=" ".join(map(str, ids)).encode()).decode() == \
        enc.decode(ids)
    # The model file itself, and overridden roles.
    p = tool("triad-convert", "tokenizer", "--kimi", src / "tiktoken.model", tmp_path / "tok2",
             "--document-start", "[EOS]", "--stop", "[EOT]")
    assert p.returncode == 0, p.stderr
    assert "document start [EOS], stop [EOT]" in p.stdout


def test_kimi_refusals(tmp_path):
    def refused(src, *needles, args=("--kimi",)):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert_clean_failure(tool("triad-convert", "tokenizer", *args, src, out), *needles)
        assert not out.exists()

    refused(kimi_dir(tmp_path / "far", {300: "[X]"}), "tokenizer_config.json",
            "added_tokens_decoder entry '50556'", "50256..50511")
    refused(kimi_dir(tmp_path / "twice", {0: "[BOS]", 5: "[BOS]"}), "'[BOS]' is given twice")
    refused(kimi_dir(tmp_path / "space", {0: "[BOS]", 1: "[EOS]", 5: "a b"}), "'a b'",
            "white space")
    refused(kimi_dir(tmp_path / "nobos", {1: "[EOS]"}), "tokenizer_config.json",
            "bos_token '[BOS]' is not one of its special tokens")
    refused(kimi_dir(tmp_path / "badeos", eos_token=7), "tokenizer_config.json", "eos_token 7")
    refused(kimi_dir(tmp_path / "digit", {0: "[BOS]", 1: "[EOS]"}, added_tokens_decoder={
        "\u00b2": {"content": "[X]"}}), "added_tokens_decoder entry '\u00b2'")
    empty = kimi_dir(tmp_path / "empty")
    (empty / "tiktoken.model").write_text("")
    refused(empty, "tiktoken.model", "at least the 256 bytes")
    listed = kimi_dir(tmp_path / "list")
    (listed / "tokenizer_config.json").write_text("[]")
    refused(listed, "tokenizer_config.json: not a JSON object")
    refused(kimi_dir(tmp_path / "stop"), "tokenizer_config.json",
            "'[NOPE]' is not one of its special tokens", args=("--kimi", "--stop", "[NOPE]"))
    bad = kimi_dir(tmp_path / "json")
    (bad / "tokenizer_config.json").write_text("{")
    refused(bad, "tokenizer_config.json", "not readable JSON")
    missing = kimi_dir(tmp_path / "missing")
    (missing / "tiktoken.model").unlink()
    refused(missing, "tiktoken.model: no such file")
    # Without --kimi: what the directory is, and how to convert it.
    refused(kimi_dir(tmp_path / "plain"), "has tiktoken.model but no tokenizer.json",
            "--kimi", args=())


# Kimi K2 Instruct's chat format as its rendered prompts show it (Moonshot's chat_template.jinja
# itself is not at hand offline): per message the role's token, the role, <|im_middle|>, the
# text and <|im_end|>; a default system message where the first is none; the reply opened by
# <|im_assistant|>assistant<|im_middle|>.
KIMI_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "<|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI."
    "<|im_end|>{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}<|im_user|>{%- elif m['role'] == 'assistant' -%}"
    "<|im_assistant|>{%- else -%}<|im_system|>{%- endif -%}"
    "{{ m['role'] }}<|im_middle|>{{ m['content'] }}<|im_end|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}")


def test_kimi_chat_matches_its_template(tmp_path):
    """`chat kimi` (told from the tokenizer): prompts (`triad-tokenize chat --messages`) and
    fine-tuning conversations (`shards --chat auto`: ids and loss mask) as the template renders
    them, encoded by tiktoken; a token counts where it overlaps a reply or its <|im_end|>."""
    pytest.importorskip("transformers")
    from test_chat_shards import (CONVERSATIONS, OPEN, check_stream, ids_and_counts, prompts,
                                  shards, write_jsonl)
    from transformers.utils.chat_template_utils import _compile_jinja_template
    p = tool("triad-convert", "tokenizer", "--kimi",
             kimi_dir(tmp_path / "kimi", chat_template=KIMI_TEMPLATE), tmp_path / "tok")
    assert p.returncode == 0, p.stderr
    desc = tmp_path / "tok" / "tokenizer.triad"
    assert "chat kimi\n" in desc.read_text()
    # The chat line only for Kimi's template (in the config or chat_template.jinja): another
    # default system message, or no template, gives none.
    other = kimi_dir(tmp_path / "other", chat_template=KIMI_TEMPLATE.replace(
        "You are Kimi, an AI assistant created by Moonshot AI.", "You are a helpful assistant."))
    bare = kimi_dir(tmp_path / "bare")
    jinja = kimi_dir(tmp_path / "jinja")
    (jinja / "chat_template.jinja").write_text(KIMI_TEMPLATE)
    for src, line in ((other, False), (bare, False), (jinja, True)):
        p = tool("triad-convert", "tokenizer", "--kimi", src, src / "tok")
        assert p.returncode == 0, p.stderr
        assert ("chat kimi\n" in (src / "tok" / "tokenizer.triad").read_text()) == line, src
    specials = {KIMI_NAMED.get(i - 50256, f"<|reserved_token_{i}|>"): i
                for i in range(50256, 50256 + 256)}
    enc = tiktoken.Encoding("kimi", pat_str=KIMI, mergeable_ranks=load_tiktoken_bpe(str(VOCAB)),
                            special_tokens=specials)
    render = _compile_jinja_template(KIMI_TEMPLATE)

    def text_of(messages, gen):
        return render.render(messages=[{"role": r, "content": c} for r, c in messages],
                             add_generation_prompt=gen)

    def reference(messages, prompt):
        spans = [(len(text_of(messages[:k], True)), len(text_of(messages[:k + 1], False)))
                 for k, (role, _) in enumerate(messages) if role == "assistant"]
        return ids_and_counts(enc, text_of(messages, prompt), spans)

    assert prompts(desc, OPEN) == [reference(conv, True)[0] for conv in OPEN]
    write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS)
    out = shards(desc, tmp_path / "chat.jsonl", tmp_path / "out", "--chat", "auto")
    check_stream(out, tmp_path / "out", [reference(conv, False) for conv in CONVERSATIONS])
