"""Tokenizers between triad and Hugging Face's formats.

triad's tokenizer (include/triad/data/tokenizer.h) reads tiktoken's ranks files, one
`base64(token bytes) rank` per line: GPT-2's alone (data/vocab/gpt2.tiktoken), or any byte-level
BPE through a tokenizer description (docs/formats.md, "Tokenizers"): a text file
`tokenizer.triad` naming the ranks file, the pre-tokenizer (gpt2, llama3, qwen2, gpt2_digits or
tekken),
NFC or no normalizer, the special tokens, and which tokens start documents and prompts and end
generation.

- Export (triad-convert export --to hf): GPT-2's files for transformers' GPT2Tokenizer
  (vocab.json, merges.txt, tokenizer_config.json) from GPT-2's ranks, or a tokenizer.json for
  PreTrainedTokenizerFast from a description.
    - vocab.json / tokenizer.json's vocab: each token's bytes in GPT-2's byte-to-character
      alphabet (printable Latin-1 bytes as themselves, the others moved to U+0100 onwards).
    - merges: a ranks file holds tokens, not merges. GPT-2's merges.txt has the one merge that
      makes each token, found by byte-pair encoding its bytes with the lower-ranked tokens
      only; a tokenizer.json has every split of a token into two tokens, at the token's rank,
      so that merging by pair (Hugging Face's rule) and by the rank of the joined token
      (tiktoken's and triad's) agree.
- Import (triad-convert tokenizer): a Hugging Face tokenizer.json of a byte-level BPE (GPT-2's,
  Llama 3's and the like) or Meta's Llama 3 tokenizer.model, to a description and its ranks.
SentencePiece-style BPEs (Llama 2's, Mistral's) are sp_tokenizer.py's: from_hf hands a
tokenizer.json with byte_fallback to it, and read_description a description naming `pieces`.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path

from . import sp_tokenizer
from .hdf5_files import special_file_problem

EOT = "<|endoftext|>"


def byte_alphabet() -> dict[int, str]:
    """GPT-2's map from a byte to the character standing for it in vocab.json and merges.txt."""
    kept = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    out, extra = {}, 0
    for b in range(256):
        if b in kept:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


_ALPHABET = byte_alphabet()


def alphabet_text(token: bytes) -> str:
    """A token's bytes as vocab.json, merges.txt and tokenizer.json write them."""
    return "".join(_ALPHABET[b] for b in token)


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    with open(path, "rb") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}:{no}: not `base64(token) rank` ({e})") from None
    return ranks


def merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts whose merge makes `token`: BPE on its bytes with lower-ranked tokens."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, at = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best):
                best, at = r, i
        if best is None:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not a merge of two lower-ranked ones")
    return parts[0], parts[1]


def tokenizer_files(ranks_path: Path, model_max_length: int) -> dict[str, str]:
    """The files' names and texts (ValueError or OSError for a bad ranks file)."""
    ranks = read_ranks(ranks_path)
    if len(ranks) != 50256 or sorted(ranks.values()) != list(range(50256)):
        raise ValueError(f"{ranks_path}: {len(ranks)} tokens; GPT-2's ranks are 0..50255")
    vocab = {alphabet_text(t): r for t, r in ranks.items()}
    vocab[EOT] = 50256
    merges = []
    for t, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(t) >= 2:
            a, b = merge_of(t, ranks)
            merges.append(f"{alphabet_text(a)} {alphabet_text(b)}")
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps({
            "tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length,
            "bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "add_prefix_space": False,
            "clean_up_tokenization_spaces": False}, indent=2) + "\n",
    }


# ---- tokenizer descriptions -------------------------------------------------------------------

DESCRIPTION_MAGIC = "triad-tokenizer 1"
# Special tokens a Tekken file may reserve (Mistral's have 1,000): a bound on a count read from
# the file before the table is made from it.
MAX_SPECIALS = 1 << 20
# The chat formats triad-generate --chat and triad-tokenize chat build (triad/data/chat_format.h).
CHAT_FORMATS = sp_tokenizer.CHAT_FORMATS
# The special tokens of DeepSeek-V3's chat format: its document start and end, the roles' tokens.
DEEPSEEK3_CHAT_TOKENS = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>",
                         "<｜Assistant｜>")
# A ChatML template's default system message, where it writes one for a conversation without:
# the text between "<|im_start|>system" and its newline (raw, or escaped in a Jinja string) and
# "<|im_end|>", with no template syntax inside.
_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)([^{}<]+?)<\|im_end\|>")


def chat_format_of_template(template, specials) -> str | None:
    """The chat format a tokenizer_config.json's chat_template writes, where triad has it:
    llama3 (Llama 3's headers), qwen2 (ChatML with Qwen2's default system message), chatml
    (ChatML without a default system message), kimi (Kimi K2's roles and default system
    message), deepseek3 (DeepSeek-V3's role tokens, no reasoning); None otherwise (e.g. Qwen2.5's
    own default system message: --chat chatml with that message given as the system; DeepSeek
    R1's and V3.1's, which open or drop a reply's reasoning between <think> and </think>)."""
    if not isinstance(template, str):
        return None
    if "<|start_header_id|>" in template and "<|start_header_id|>" in specials:
        return "llama3"
    if "<|im_start|>" in template and "<|im_start|>" in specials and "<|im_end|>" in specials:
        default = _CHATML_DEFAULT_SYSTEM.search(template)
        if default is None:
            return "chatml"
        return "qwen2" if default.group(1) == "You are a helpful assistant." else None
    if "<|im_middle|>" in template and all(s in specials for s in KIMI_CHAT_TOKENS):
        return "kimi" if KIMI_DEFAULT_SYSTEM in template else None
    if all(s in template for s in DEEPSEEK3_CHAT_TOKENS[2:]) and \
            all(s in specials for s in DEEPSEEK3_CHAT_TOKENS):
        return None if "think>" in template else "deepseek3"
    return None
# The pre-tokenizers triad implements, by name, with the regex each one is (as tiktoken and
# Hugging Face's Split pre-tokenizer take it).
PATTERNS = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "llama3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
              r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
             r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    # Mistral's Tekken (NeMo, Small 3, Ministral): letters told apart by case.
    "tekken": r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"""
              r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"""
              r"""\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    # tiktoken's o200k_base (GPT-4o's, gpt-oss's): Tekken's letters with the contractions after
    # them, numbers in threes.
    "o200k": r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
             r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"""
             r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
             r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"""
             r"""\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    # Kimi K2's (Moonshot's tiktoken.model): runs of Han first, o200k's letters without Han.
    "kimi": r"""[\p{Han}]+|"""
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"""
            r"""[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"""
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"""
            r"""[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"""
            r"""\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}
# ... and the ones that are no single regex: each number character alone, then GPT-2's regex on
# the stretches between them (Hugging Face's Digits(individual_digits) then ByteLevel: SmolLM's);
# DeepSeek-V3's three Splits (Isolated), each of the pieces of the one before, then ByteLevel
# without its regex (DeepSeek-V3's and R1's tokenizer.json; its file spells CR and LF in the
# third as the characters themselves, which read the same).
DEEPSEEK3_SPLITS = (
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|"""
    r""" ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# DeepSeek LLM's six Splits (Isolated), likewise (DeepSeek-V2's and DeepSeek-Coder-V2's
# tokenizer.json too): CR and LF alone, runs of the cased letters its file lists (with one white
# space before them), of ASCII punctuation and letters and their full-width forms, the white space
# at a piece's end, runs of U+0800..U+9FA5 and Hangul, runs of numbers. Written with escapes where
# a copy normalized to NFC would read another character (U+1F7D, U+1FBE, U+1FD3, U+1FDB, U+2126,
# U+212A: the first three ending ranges that would then run backwards).
DEEPSEEK_LLM_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293"
    "\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a"
    "\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556"
    "\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b"
    "\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d"
    "\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    "\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184"
    "\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b"
    "\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17"
    "\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943")
DEEPSEEK_LLM_SPLITS = (
    r"[\r\n]",
    r"\s?[" + DEEPSEEK_LLM_LETTERS + "]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    r"\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    r"\p{N}+")
# DeepSeek Coder's five (its 1.3B to 33B models): CR and LF alone, letters and punctuation each
# with one white space before them, DeepSeek LLM's fifth, each number alone.
DEEPSEEK_CODER_SPLITS = (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", DEEPSEEK_LLM_SPLITS[4], r"\p{N}")
SPLIT_SEQUENCES = {"deepseek3": DEEPSEEK3_SPLITS, "deepseek_llm": DEEPSEEK_LLM_SPLITS,
                   "deepseek_coder": DEEPSEEK_CODER_SPLITS}
SCHEMES = (*PATTERNS, "gpt2_digits", *SPLIT_SEQUENCES)
# Meta's Llama 3 tokenizer.model holds the 128,000 ranks; its 256 special tokens follow, in
# this order (the rest are <|reserved_special_token_N|>).
LLAMA3_RANKS = 128000
LLAMA3_NAMED = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                "<|python_tag|>", "<|image|>")


class TokenizerError(ValueError):
    pass


def _sp_errors(fn, *args, **kwargs):
    """fn's SentencePieceError as a TokenizerError (one kind of error for callers)."""
    try:
        return fn(*args, **kwargs)
    except sp_tokenizer.SentencePieceError as e:
        raise TokenizerError(str(e)) from None


def from_sentencepiece(path: Path, document_start: str | None = None,
                       prompt_start: str | None = None,
                       stops: list[str] | None = None) -> sp_tokenizer.PiecesDescription:
    """A description from a SentencePiece BPE model (Llama 2's, Mistral's tokenizer.model)."""
    return _sp_errors(sp_tokenizer.from_sentencepiece, path, document_start, prompt_start, stops)


@dataclass
class Description:
    ranked: dict[int, bytes]       # id (= rank) -> token bytes
    pretokenizer: str              # a key of PATTERNS
    specials: dict[str, int]       # text -> id
    document_start: str
    prompt_start: str | None
    stops: list[str]
    normalizer: str | None = None  # "nfc": the text put in Unicode's NFC first (Qwen2)
    # Those of `specials` that are found in text and encoded as themselves (`added ID TEXT`:
    # Hugging Face's non-special added tokens, such as Qwen2.5's <tool_call>).
    added: frozenset = frozenset()
    chat: str | None = None        # a CHAT_FORMATS name: the `chat` line

    @property
    def vocab_size(self) -> int:
        return len(self.ranked) + len(self.specials)

    def check(self, where: str) -> None:
        if self.pretokenizer not in SCHEMES:
            raise TokenizerError(f"{where}: unknown pretokenizer {self.pretokenizer!r}")
        if self.normalizer not in (None, "nfc"):
            raise TokenizerError(f"{where}: unknown normalizer {self.normalizer!r}")
        ids = sorted([*self.ranked, *self.specials.values()])
        if ids != list(range(len(ids))):
            raise TokenizerError(f"{where}: the ids of its tokens and special tokens are not "
                                 f"0..{len(ids) - 1}, each once")
        have = set(self.ranked.values())
        if len(have) != len(self.ranked):
            raise TokenizerError(f"{where}: the same token bytes have two ranks")
        if not all(bytes([b]) in have for b in range(256)):
            raise TokenizerError(f"{where}: a single byte has no token (a byte-level BPE "
                                 f"vocabulary needs all 256)")
        if not set(self.specials) - set(self.added):
            raise TokenizerError(f"{where}: no special tokens")
        problem = sp_tokenizer.roles_problem(self)
        if problem:
            raise TokenizerError(f"{where}: {problem}")

    def files(self, source: str) -> dict[str, str]:
        """tokenizer.triad and the ranks file it names."""
        return {"tokenizer.triad": description_text(self, "tokenizer.tiktoken", source),
                "tokenizer.tiktoken": ranks_text(self.ranked)}

    def summary(self) -> str:
        start = f", prompt start {self.prompt_start}" if self.prompt_start else ""
        return (f"{len(self.ranked)} ranks + {len(self.specials)} special tokens = vocab "
                f"{self.vocab_size}, pre-tokenizer {self.pretokenizer}, document start "
                f"{self.document_start}{start}, stop {' '.join(self.stops)}")


def description_text(d: Description, ranks_name: str, source: str) -> str:
    lines = [DESCRIPTION_MAGIC, f"# {source}", f"ranks {ranks_name}",
             f"ranks_count {len(d.ranked)}", f"pretokenizer {d.pretokenizer}",
             *sp_tokenizer.token_lines(d)]
    return "\n".join(lines) + "\n"


def ranks_text(ranked: dict[int, bytes]) -> str:
    return "".join(f"{base64.b64encode(ranked[r]).decode()} {r}\n" for r in sorted(ranked))


def _ranks(path: Path, where: str) -> dict[bytes, int]:
    """read_ranks, its errors as TokenizerError naming `where`."""
    if problem := special_file_problem(path):
        raise TokenizerError(problem)
    try:
        return read_ranks(path)
    except OSError as e:
        raise TokenizerError(f"{where}: cannot read ({e})") from None
    except ValueError as e:
        raise TokenizerError(str(e)) from None


def read_description(path: Path) -> Description | sp_tokenizer.PiecesDescription:
    """A description and its ranks (or pieces and merges), as triad reads them (TokenizerError
    naming the file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: cannot read ({e})") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != DESCRIPTION_MAGIC:
        raise TokenizerError(f"{path}: not a tokenizer description (first line is not "
                             f"{DESCRIPTION_MAGIC!r})")
    single: dict[str, str] = {}
    specials: dict[str, int] = {}
    added: set[str] = set()
    stops: list[str] = []
    for no, line in enumerate(lines[1:], 2):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        key = words[0]
        token = key in ("special", "added")
        if len(words) != (3 if token else 2) or (token and not words[1].isdigit()):
            raise TokenizerError(f"{path}:{no}: expected 'special ID TEXT', 'added ID TEXT' or "
                                 f"'key value'")
        value = words[1]
        if token:
            if words[2] in specials:
                raise TokenizerError(f"{path}:{no}: token {words[2]!r} given twice")
            specials[words[2]] = int(value)
            if key == "added":
                added.add(words[2])
        elif key == "stop":
            stops.append(value)
        elif key in ("ranks", "ranks_count", "pretokenizer", "normalizer", "document_start",
                     "prompt_start", "pieces", "pieces_count", "merges", "merges_count",
                     "space_prefix", "chat"):
            if key in single:
                raise TokenizerError(f"{path}:{no}: {key!r} given twice")
            single[key] = value
        else:
            raise TokenizerError(f"{path}:{no}: unknown key {key!r}")
    if "pieces" in single:
        return _sp_errors(sp_tokenizer.read_description, path, single, specials, added, stops)
    for key in ("ranks", "ranks_count", "pretokenizer", "document_start"):
        if key not in single:
            raise TokenizerError(f"{path}: no {key!r} line")
    ranks_path = path.parent / single["ranks"]
    ranks = _ranks(ranks_path, f"{ranks_path} (named by {path})")
    if str(len(ranks)) != single["ranks_count"]:
        raise TokenizerError(f"{ranks_path}: {len(ranks)} tokens, ranks_count "
                             f"{single['ranks_count']}")
    d = Description({r: t for t, r in ranks.items()}, single["pretokenizer"], specials,
                    single["document_start"], single.get("prompt_start"), stops,
                    single.get("normalizer"), frozenset(added), single.get("chat"))
    d.check(str(path))
    return d


# ---- Hugging Face tokenizer.json -> description -----------------------------------------------

def sniff(path: Path) -> str | None:
    """What a tokenizer file looks like from its first bytes: "triad" (a description),
    "sentencepiece" (a binary protobuf), "tekken", "hf" (a tokenizer.json), "json" (other JSON),
    "tiktoken" (a ranks file), or None (unreadable, a directory, or none of these)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    text = head.lstrip()
    if head.startswith(b"triad-tokenizer"):
        return "triad"
    if head[:1] == b"\n" and b"\0" in head:  # field 1 (pieces), float scores: NUL bytes
        return "sentencepiece"
    if text.startswith(b"{"):
        if b'"config"' in head and b'"pattern"' in head:
            return "tekken"
        return "hf" if b'"model"' in head or b'"added_tokens"' in head else "json"
    if re.match(rb"[A-Za-z0-9+/]+=*[ \t]+[0-9]+\r?\n", head):
        return "tiktoken"
    return None


SNIFF_HINTS = {
    "triad": "it is a triad tokenizer description already: give it as --vocab as it is",
    "sentencepiece": "it looks like a SentencePiece model: convert it with --sentencepiece",
    "tekken": "it looks like Mistral's tekken.json: convert it with --tekken",
    "hf": "it looks like a Hugging Face tokenizer.json: convert it (or its directory) without "
          "--sentencepiece, --tekken or --meta-llama3",
    "tiktoken": "it is a tiktoken ranks file: Meta's Llama 3 tokenizer.model converts with "
                "--meta-llama3; GPT-2's gpt2.tiktoken needs no converting (give it as --vocab)",
}


def sniff_hint(path: Path, reading_as: str) -> str:
    """'; <what the file looks like and how to convert it>' where that is not what it was
    read as ('' where it is, or where nothing is recognised)."""
    kind = sniff(path) if path.is_file() else None
    return f"; {SNIFF_HINTS[kind]}" if kind in SNIFF_HINTS and kind != reading_as else ""


def byte_decoder() -> dict[str, int]:
    return {c: b for b, c in byte_alphabet().items()}


def _load_json(path: Path, required: bool = True) -> dict | None:
    if not path.is_file():
        if required:
            raise TokenizerError(f"{path}: no such file")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: not readable JSON ({e})") from None
    except RecursionError:
        raise TokenizerError(f"{path}: not readable JSON (nested too deeply)") from None


def _pretokenizer_scheme(pre: dict | None, where: str) -> str:
    """The scheme a tokenizer.json pre_tokenizer is, or TokenizerError saying what it is."""
    def is_byte_level(p, use_regex):
        return (isinstance(p, dict) and p.get("type") == "ByteLevel"
                and not p.get("add_prefix_space", False)
                and p.get("use_regex", True) is use_regex)  # (a JSON boolean: "false" is none)

    def is_isolated_split(p, pattern):  # (CR and LF as characters or escapes alike)
        if not (isinstance(p, dict) and isinstance(p.get("pattern"), dict)):
            return False
        regex = p["pattern"].get("Regex")
        return (p.get("type") == "Split" and p.get("behavior") == "Isolated"
                and p.get("invert", False) is False and isinstance(regex, str)
                and regex.replace("\r", r"\r").replace("\n", r"\n") == pattern)

    if is_byte_level(pre, True):
        return "gpt2"
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        parts = parts if isinstance(parts, list) else []
        if len(parts) == 2 and is_byte_level(parts[1], True) and parts[0] == {
                "type": "Digits", "individual_digits": True}:
            return "gpt2_digits"
        for name, splits in SPLIT_SEQUENCES.items():
            if len(parts) == len(splits) + 1 and is_byte_level(parts[-1], False) and all(
                    is_isolated_split(p, pattern) for p, pattern in zip(parts, splits)):
                return name
        if len(parts) == 2 and is_byte_level(parts[1], False) and isinstance(parts[0], dict):
            split = parts[0]
            pattern = split.get("pattern")
            pattern = pattern.get("Regex") if isinstance(pattern, dict) else None
            if (split.get("type") == "Split" and split.get("behavior") == "Isolated"
                    and not split.get("invert", False)):
                for name, pat in PATTERNS.items():
                    if pattern == pat and name != "gpt2":
                        return name
                raise TokenizerError(f"{where}: pre-tokenizer regex {pattern!r} is not one "
                                     f"triad implements ({', '.join(PATTERNS)})")
    shown = json.dumps(pre)
    raise TokenizerError(f"{where}: pre_tokenizer {shown[:200]} is not a byte-level BPE "
                         f"pre-tokenizer triad implements (GPT-2's ByteLevel, a Split by Llama "
                         f"3's, Qwen2's, Tekken's, o200k's or Kimi K2's regex then ByteLevel, "
                         f"individual Digits "
                         f"then ByteLevel, or DeepSeek-V3's three, DeepSeek LLM's six or "
                         f"DeepSeek Coder's five Splits then ByteLevel)")


def _token_name(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def from_hf(src: Path, document_start: str | None = None, prompt_start: str | None = None,
            stops: list[str] | None = None) -> Description:
    """A description from a Hugging Face tokenizer.json (src: the file or its directory, where
    tokenizer_config.json, generation_config.json and config.json are read too when present).
    """
    directory = src if src.is_dir() else src.parent
    path = src / "tokenizer.json" if src.is_dir() else src
    if src.is_dir() and not path.is_file():
        if (src / "tiktoken.model").is_file():
            raise TokenizerError(f"{src}: has tiktoken.model but no tokenizer.json; Kimi K2's "
                                 f"converts with --kimi")
        if (src / "tokenizer.model").is_file():
            raise TokenizerError(f"{src}: has tokenizer.model but no tokenizer.json; Meta's "
                                 f"Llama 3 tokenizer.model converts with --meta-llama3 FILE, a "
                                 f"SentencePiece one (Llama 2, Mistral) with --sentencepiece "
                                 f"FILE")
        raise TokenizerError(f"{path}: no such file")
    tj = _load_json(path)
    where = str(path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerError(f"{where}: model type {model.get('type')!r}; triad reads BPE "
                             f"(Unigram and WordPiece tokenizers are not supported)")
    config = _load_json(directory / "tokenizer_config.json", required=False) or {}

    def roles(specials: dict[str, int]) -> tuple[str, str | None, list[str]]:
        """The document start, prompt start and stop tokens: the options, else what the
        post-processor and the config files say."""
        start, prompt, stop = document_start, prompt_start, stops
        bos = _template_bos(tj.get("post_processor"))
        if start is None:
            start = bos or _token_name(config.get("eos_token"))
            if start is None and "<|endoftext|>" in specials:
                start = "<|endoftext|>"
        if start is None:
            raise TokenizerError(f"{where}: cannot tell which token starts documents (no BOS in "
                                 f"the post-processor, no eos_token): give --document-start")
        if prompt is None:
            prompt = bos
        elif prompt == "none":
            prompt = None
        if not stop:
            stop = _stop_names(directory, config, specials)
        if not stop:
            raise TokenizerError(f"{where}: cannot tell which tokens end generation (no eos "
                                 f"token in tokenizer_config.json or generation_config.json): "
                                 f"give --stop")
        return start, prompt, stop

    if model.get("byte_fallback"):  # SentencePiece-style (Llama 2's, Mistral's)
        return _sp_errors(sp_tokenizer.from_hf_json, tj, where, roles)
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise TokenizerError(f"{where}: subword prefixes/suffixes are not byte-level BPE")
    normalizer = tj.get("normalizer")
    if normalizer == {"type": "Sequence", "normalizers": []}:  # (one of no steps: none)
        normalizer = None
    if normalizer is not None and normalizer != {"type": "NFC"}:
        raise TokenizerError(f"{where}: has a normalizer ({json.dumps(normalizer)[:120]}); "
                             f"triad normalizes with NFC only (Qwen2's), so the ids would differ")
    scheme = _pretokenizer_scheme(tj.get("pre_tokenizer"), where)
    dec = byte_decoder()
    vocab = model.get("vocab") or {}
    added = sorted(tj.get("added_tokens") or [], key=lambda a: a["id"])
    added_ids = {a["id"] for a in added}
    for a in added:
        if any(a.get(k) for k in ("lstrip", "rstrip", "single_word")):
            raise TokenizerError(f"{where}: added token {a['content']!r} (id {a['id']}) strips "
                                 f"spaces or matches whole words only; triad's added tokens do "
                                 f"neither")
        if any(c.isspace() for c in a["content"]) or not a["content"]:
            raise TokenizerError(f"{where}: added token {a['content']!r} (id {a['id']}) is empty "
                                 f"or holds white space")
        if not sp_tokenizer.is_text(a["content"]):  # (JSON's "\ud800" escape: no UTF-8)
            raise TokenizerError(f"{where}: added token {a['content']!r} (id {a['id']}) holds a "
                                 f"lone surrogate, which is no Unicode text")
        if not isinstance(a.get("special", False), bool):  # ("no" was taken for true)
            raise TokenizerError(f"{where}: added token {a['content']!r} has special = "
                                 f"{a['special']!r}, not true or false")
    base = {}
    for text, i in [*vocab.items(), *((a["content"], a["id"]) for a in added)]:
        if type(i) is not int:  # (300.0 and true were taken for 300 and 1)
            raise TokenizerError(f"{where}: token {text!r} has the id {i!r}, not an integer")
    for text, i in vocab.items():
        if i in added_ids:
            continue
        try:
            base[i] = bytes(dec[c] for c in text)
        except KeyError:
            raise TokenizerError(f"{where}: vocab entry {text!r} is not in the byte-level "
                                 f"alphabet") from None
    ids = sorted([*base, *added_ids])
    if ids != list(range(len(ids))) or len(added_ids) != len(added):
        raise TokenizerError(f"{where}: the ids of its vocabulary and added tokens are not "
                             f"0..{len(ids) - 1}, each once")
    rank = {t: i for i, t in base.items()}
    # Merges: each joins two tokens into a token, in the order of the joined token's rank, and
    # every token longer than a byte is made by one: then merging by pair and by rank agree.
    made = set()
    last = -1
    for k, m in enumerate(model.get("merges") or []):
        a, b = m.split(" ") if isinstance(m, str) else m
        try:
            ab = bytes(dec[c] for c in a + b)
            ra, rb, r = rank[bytes(dec[c] for c in a)], rank[bytes(dec[c] for c in b)], rank[ab]
        except KeyError:
            raise TokenizerError(f"{where}: merge {k} ({a!r} {b!r}) joins or makes a token "
                                 f"that is not in the vocabulary") from None
        if r < last or r <= max(ra, rb):
            raise TokenizerError(f"{where}: merge {k} ({a!r} {b!r}) is out of order with the "
                                 f"token ids; triad merges by token rank and needs them to agree")
        last = r
        made.add(r)
    unmade = sorted(i for i, t in base.items() if len(t) > 1 and i not in made)
    if unmade:
        raise TokenizerError(f"{where}: {len(unmade)} tokens (e.g. id {unmade[0]}) are made by "
                             f"no merge")

    specials = {a["content"]: a["id"] for a in added}
    document_start, prompt_start, stops = roles(specials)
    in_text = frozenset(a["content"] for a in added if not a.get("special", False))
    chat = chat_format_of_template(config.get("chat_template"), specials)
    d = Description(base, scheme, specials, document_start, prompt_start, stops,
                    "nfc" if normalizer is not None else None, in_text, chat)
    d.check(where)
    return d


def _template_bos(post: dict | None) -> str | None:
    """The special token a TemplateProcessing post-processor puts before a single sequence."""
    if not isinstance(post, dict):
        return None
    if post.get("type") == "Sequence":
        for p in post.get("processors") or []:
            name = _template_bos(p)
            if name:
                return name
        return None
    if post.get("type") != "TemplateProcessing":
        return None
    single = post.get("single") or []
    if single and "SpecialToken" in single[0]:
        return single[0]["SpecialToken"]["id"]
    return None


def _stop_names(directory: Path, config: dict, specials: dict[str, int]) -> list[str]:
    by_id = {i: s for s, i in specials.items()}
    for name in ("generation_config.json", "config.json"):
        cfg = _load_json(directory / name, required=False) or {}
        ids = cfg.get("eos_token_id")
        if ids is None:
            continue
        ids = ids if isinstance(ids, list) else [ids]
        if ids and all(i in by_id for i in ids):
            return [by_id[i] for i in ids]
    eos = _token_name(config.get("eos_token"))
    if eos in specials:
        return [eos]
    return ["<|endoftext|>"] if "<|endoftext|>" in specials else []


def from_meta_llama3(path: Path) -> Description:
    """Meta's Llama 3 tokenizer.model (tiktoken's format, 128,000 ranks) and its specials."""
    ranks = _ranks(path, str(path))
    if len(ranks) != LLAMA3_RANKS or sorted(ranks.values()) != list(range(LLAMA3_RANKS)):
        raise TokenizerError(f"{path}: {len(ranks)} tokens; Llama 3's tokenizer.model has ranks "
                             f"0..{LLAMA3_RANKS - 1}")
    names = list(LLAMA3_NAMED) + [f"<|reserved_special_token_{i}|>"
                                  for i in range(2, 2 + 256 - len(LLAMA3_NAMED))]
    specials = {s: LLAMA3_RANKS + i for i, s in enumerate(names)}
    d = Description({r: t for t, r in ranks.items()}, "llama3", specials, "<|begin_of_text|>",
                    "<|begin_of_text|>",
                    ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], chat="llama3")
    d.check(str(path))
    return d


# Kimi K2's tokenizer (tokenization_kimi.py): tiktoken.model's ranks, then this many special
# tokens, named by tokenizer_config.json's added_tokens_decoder (the rest <|reserved_token_ID|>).
# (Some later Moonshot tokenizers reserve 2 more, past the model's vocabulary: not read.)
KIMI_SPECIALS = 256
KIMI_CHAT_TOKENS = ("<|im_system|>", "<|im_user|>", "<|im_assistant|>", "<|im_middle|>",
                    "<|im_end|>")
KIMI_DEFAULT_SYSTEM = "You are Kimi, an AI assistant created by Moonshot AI."


def from_kimi(src: Path, document_start: str | None = None, prompt_start: str | None = None,
              stops: list[str] | None = None) -> Description:
    """Kimi K2's tokenizer: src is the model directory or its tiktoken.model, with
    tokenizer_config.json beside it. Document start: the config's bos_token ([BOS] where it names
    none, as tokenization_kimi.py); no prompt start (the tokenizer adds none); stops: its
    eos_token ([EOS] where it names none) and <|im_end|>."""
    directory = src if src.is_dir() else src.parent
    path = src / "tiktoken.model" if src.is_dir() else src
    if not path.is_file():
        raise TokenizerError(f"{path}: no such file")
    ranks = _ranks(path, str(path))
    n = len(ranks)
    if n < 256 or sorted(ranks.values()) != list(range(n)):
        raise TokenizerError(f"{path}: its {n} ranks are not 0..{n - 1}, each once, with at "
                             f"least the 256 bytes")
    config_path = directory / "tokenizer_config.json"
    config = _load_json(config_path)
    if not isinstance(config, dict):
        raise TokenizerError(f"{config_path}: not a JSON object")
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise TokenizerError(f"{config_path}: added_tokens_decoder is not an object")
    names = {}
    for key, value in decoder.items():
        name = _token_name(value)
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 18
                and n <= int(key) < n + KIMI_SPECIALS and name):
            raise TokenizerError(f"{config_path}: added_tokens_decoder entry {key!r} is not a "
                                 f"named token with an id in {n}..{n + KIMI_SPECIALS - 1} (the "
                                 f"{KIMI_SPECIALS} after tiktoken.model's {n} ranks)")
        names[int(key)] = name
    specials = {}
    for i in range(n, n + KIMI_SPECIALS):
        name = names.get(i, f"<|reserved_token_{i}|>")
        if name in specials:
            raise TokenizerError(f"{config_path}: special token {name!r} is given twice")
        specials[name] = i
    role = {}
    for key, default in (("bos_token", "[BOS]"), ("eos_token", "[EOS]")):
        role[key] = _token_name(config.get(key, default))
        if role[key] not in specials:
            raise TokenizerError(f"{config_path}: {key} {config.get(key, default)!r} is not one "
                                 f"of its special tokens")
    start = document_start or role["bos_token"]
    stop = stops or [role["eos_token"], *(["<|im_end|>"] if "<|im_end|>" in specials else [])]
    # Kimi K2 Instruct's chat format where the chat template (the config's, or
    # chat_template.jinja beside it) is Kimi's: its roles and its default system message (another
    # Moonshot model's, with another default, gets no chat line).
    template = config.get("chat_template")
    if template is None and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8",
                                                                 errors="replace")
    chat = chat_format_of_template(template, specials)
    d = Description({r: t for t, r in ranks.items()}, "kimi", specials, start, prompt_start,
                    list(dict.fromkeys(stop)), chat=chat)
    problem = sp_tokenizer.roles_problem(d)  # (the options' tokens)
    if problem:
        raise TokenizerError(f"{config_path}: {problem}")
    d.check(str(path))
    return d


# Mistral's Tekken files before version v7 list no special tokens: these come first, in this order,
# then <SPECIAL_N> up to the file's default_num_special_tokens (as mistral_common numbers them).
TEKKEN_NAMED = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]",
                "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]",
                "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]",
                "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]")


def from_tekken(path: Path) -> Description:
    """Mistral's tekken.json (Mistral NeMo, Small 3, Ministral): tiktoken-style ranks after the
    special tokens (a token's id is its rank plus their number), with tekken's pattern."""
    where = str(path)
    tj = _load_json(path)
    try:
        config, vocab = tj["config"], tj["vocab"]
        n_special = int(config["default_num_special_tokens"])
        n_ranks = int(config["default_vocab_size"]) - n_special
        pattern = config["pattern"]
    except (KeyError, TypeError, ValueError) as e:
        raise TokenizerError(f"{where}: not a Tekken file (no {e})") from None
    if pattern != PATTERNS["tekken"]:
        raise TokenizerError(f"{where}: pattern {pattern[:80]!r}... is not the tekken pattern "
                             f"triad implements")
    if not 0 < n_ranks <= len(vocab):
        raise TokenizerError(f"{where}: default_vocab_size {config['default_vocab_size']} leaves "
                             f"{n_ranks} of its {len(vocab)} ranks")
    # (the specials below are made one by one: a count no tokenizer has is refused first)
    if not 0 <= n_special <= MAX_SPECIALS:
        raise TokenizerError(f"{where}: default_num_special_tokens {n_special} is not in "
                             f"[0, {MAX_SPECIALS}]")
    ranked = {}
    for i, v in enumerate(vocab[:n_ranks]):
        if v.get("rank") != i:
            raise TokenizerError(f"{where}: vocab entry {i} has rank {v.get('rank')}")
        ranked[n_special + i] = base64.b64decode(v["token_bytes"], validate=True)
    if "special_tokens" in tj:  # v7 and later list them
        names = {int(s["rank"]): s["token_str"] for s in tj["special_tokens"]}
    else:
        names = dict(enumerate(TEKKEN_NAMED))
    specials = {names.get(i, f"<SPECIAL_{i}>"): i for i in range(n_special)}
    if len(specials) != n_special:
        raise TokenizerError(f"{where}: two special tokens share a name")
    # Instruct formats: v3 puts the system message before the user's; v7 on has its own tokens.
    # The file's version is "v3", "v7", "v11", ...; a version written otherwise would pick one of
    # the two formats by accident, so it is refused.
    version = config.get("version", "v3")
    if not (isinstance(version, str) and re.fullmatch(r"v?[0-9]{1,4}", version)):
        raise TokenizerError(f"{where}: config.version {version!r} is not a Tekken version such "
                             f"as \"v3\" or \"v7\"")
    chat = "mistral_v7" if int(version.lstrip("v")) >= 7 else "mistral_v3"
    d = Description(ranked, "tekken", specials, "<s>", "<s>", ["</s>"], chat=chat)
    d.check(where)
    return d


# ---- description -> Hugging Face tokenizer.json -----------------------------------------------

def hf_files(d: Description | sp_tokenizer.PiecesDescription,
             model_max_length: int) -> dict[str, str]:
    """tokenizer.json and tokenizer_config.json for transformers' PreTrainedTokenizerFast, and a
    generation_config.json with every stop token: tokenizer_config.json's eos_token holds one
    (Llama 3's instruct models stop at three), and generate() and an import read the list here."""
    files = (sp_tokenizer.hf_files(d, model_max_length)
             if isinstance(d, sp_tokenizer.PiecesDescription)
             else _byte_level_hf_files(d, model_max_length))
    stops = [d.specials[s] for s in d.stops]
    generation = {"eos_token_id": stops if len(stops) > 1 else stops[0]}
    if d.prompt_start is not None:
        generation["bos_token_id"] = d.specials[d.prompt_start]
    files["generation_config.json"] = json.dumps(generation, indent=2) + "\n"
    return files


def _byte_level_hf_files(d: Description, model_max_length: int) -> dict[str, str]:
    rank = {t: i for i, t in d.ranked.items()}
    merges = []
    for r in sorted(d.ranked):
        t = d.ranked[r]
        splits = [(rank[t[:k]], rank[t[k:]]) for k in range(1, len(t))
                  if t[:k] in rank and t[k:] in rank and max(rank[t[:k]], rank[t[k:]]) < r]
        merges += [[alphabet_text(d.ranked[a]), alphabet_text(d.ranked[b])]
                   for a, b in sorted(splits)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    if d.pretokenizer == "gpt2":
        pre = byte_level
    elif d.pretokenizer == "gpt2_digits":
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]}
    elif d.pretokenizer in SPLIT_SEQUENCES:
        pre = {"type": "Sequence", "pretokenizers": [
            *({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False}
              for r in SPLIT_SEQUENCES[d.pretokenizer]),
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]}
    else:
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PATTERNS[d.pretokenizer]},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]}
    post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
            "use_regex": True}
    post = sp_tokenizer.bos_template(d) or post
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": s not in d.added}
                         for s, i in sorted(d.specials.items(), key=lambda kv: kv[1])],
        "normalizer": {"type": "NFC"} if d.normalizer == "nfc" else None,
        "pre_tokenizer": pre, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {**{alphabet_text(t): i for i, t in sorted(d.ranked.items())},
                            **d.specials},
                  "merges": merges},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "eos_token": d.stops[0], "clean_up_tokenization_spaces": False}
    if d.prompt_start is not None:
        config["bos_token"] = d.prompt_start
    return {"tokenizer.json": json.dumps(tj, ensure_ascii=False),
            "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}
