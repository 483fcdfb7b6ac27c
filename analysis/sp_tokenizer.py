"""SentencePiece-style BPE tokenizers (Llama 2's, Mistral's, TinyLlama's) between triad and
their sources.

triad reads them through a tokenizer description (docs/formats.md, "Tokenizers") naming
- a pieces file: `base64(token bytes) id` per token, `base64(byte) id byte` for the 256 byte
  fallback tokens (SentencePiece's <0xAB>). A token's bytes are what it decodes to: a space
  where SentencePiece writes U+2581 ("▁");
- a merges file: `left right rank` per merge (token ids): two adjacent parts with a merge
  become its joined token, the lowest rank first and the leftmost of equal ranks first;
- `space_prefix true|false|unless_space`: whether a space goes before the text (SentencePiece's
  dummy prefix; unless_space: only before a text that does not begin with a space, as Hugging
  Face's Metaspace pre-tokenizer does).

Sources (triad-convert tokenizer):
- a SentencePiece model (`tokenizer.model` of Llama 2 or Mistral; --sentencepiece), read here
  from its protobuf bytes without the sentencepiece package. SentencePiece merges the adjacent
  pair whose join is a piece, the highest-scoring join first, the leftmost of equal scores: the
  merges are every split of every piece into two pieces, ranked by the piece's score, equal
  scores sharing a rank.
- a Hugging Face tokenizer.json whose model is a BPE with byte_fallback (as transformers
  converts Llama 2's and Mistral's): its merges in their order, which is Hugging Face's rule.
- export (triad-convert export --to hf --vocab tokenizer.triad): the reverse tokenizer.json.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .hdf5_files import special_file_problem

SPACE = "\u2581"  # SentencePiece's stand-in for a space
BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")


class SentencePieceError(ValueError):
    pass


@dataclass
class PiecesDescription:
    pieces: dict[int, bytes]               # id -> token bytes (spaces as spaces)
    byte_tokens: dict[int, int]            # id -> the byte it falls back to
    merges: list[tuple[int, int, int]]     # (left id, right id, rank)
    space_prefix: str                      # "true", "false" or "unless_space"
    specials: dict[str, int]               # text -> id
    document_start: str
    prompt_start: str | None
    stops: list[str]
    added: frozenset = field(default_factory=frozenset)  # specials found in text
    normalizer: str | None = None
    chat: str | None = None                # a chat format (hf_tokenizer.CHAT_FORMATS)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces) + len(self.byte_tokens) + len(self.specials)

    def check(self, where: str) -> None:
        ids = sorted([*self.pieces, *self.byte_tokens, *self.specials.values()])
        if ids != list(range(len(ids))):
            raise SentencePieceError(f"{where}: the ids of its pieces, byte tokens and special "
                                     f"tokens are not 0..{len(ids) - 1}, each once")
        if sorted(self.byte_tokens.values()) != list(range(256)):
            raise SentencePieceError(f"{where}: byte fallback tokens must cover the 256 bytes "
                                     f"once each (it has {len(self.byte_tokens)})")
        if len(set(self.pieces.values())) != len(self.pieces):
            raise SentencePieceError(f"{where}: two pieces have the same text")
        problem = roles_problem(self)
        if problem:
            raise SentencePieceError(f"{where}: {problem}")

    def files(self, source: str) -> dict[str, str]:
        """tokenizer.triad and the pieces and merges files it names."""
        lines = ["triad-tokenizer 1", f"# {source}", "pieces tokenizer.pieces",
                 f"pieces_count {len(self.pieces) + len(self.byte_tokens)}",
                 "merges tokenizer.merges", f"merges_count {len(self.merges)}",
                 f"space_prefix {self.space_prefix}", *token_lines(self)]
        entries = [(i, f"{base64.b64encode(t).decode()} {i}") for i, t in self.pieces.items()]
        entries += [(i, f"{base64.b64encode(bytes([b])).decode()} {i} byte")
                    for i, b in self.byte_tokens.items()]
        return {"tokenizer.triad": "\n".join(lines) + "\n",
                "tokenizer.pieces": "".join(e + "\n" for _, e in sorted(entries)),
                "tokenizer.merges": "".join(f"{a} {b} {r}\n" for a, b, r in self.merges)}

    def summary(self) -> str:
        start = f", prompt start {self.prompt_start}" if self.prompt_start else ""
        return (f"SentencePiece-style: {len(self.pieces)} pieces + 256 byte tokens + "
                f"{len(self.specials)} special tokens = vocab {self.vocab_size}, "
                f"{len(self.merges)} merges, space prefix {self.space_prefix}, "
                f"document start {self.document_start}{start}, stop {' '.join(self.stops)}")


# ---- what both kinds of description hold: special tokens and their roles -------------------------
# (hf_tokenizer.Description and PiecesDescription: specials, added, normalizer, document_start,
# prompt_start, stops, chat)

CHAT_FORMATS = ("mistral_v1", "mistral_v3", "mistral_v7", "llama3", "chatml", "qwen2", "kimi",
                "deepseek3")


def is_text(s) -> bool:
    """Whether the str s is Unicode text UTF-8 can write (JSON can hold lone surrogates)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def mistral_chat(special_names) -> str | None:
    """Mistral's instruct format its special tokens tell: [INST] as a special token means v3,
    [SYSTEM_PROMPT] too v7; None otherwise (an older model's, or Llama 2's: --chat names it)."""
    if "[INST]" not in special_names:
        return None
    return "mistral_v7" if "[SYSTEM_PROMPT]" in special_names else "mistral_v3"


def roles_problem(d) -> str | None:
    """What is wrong with d's special tokens, roles and chat format, or None."""
    for name in [d.document_start, d.prompt_start, *d.stops]:
        if name is not None and name not in d.specials:
            return f"{name!r} is not one of its special tokens"
    if not d.stops:
        return "no stop token"
    for name in d.specials:
        if not name or any(c.isspace() for c in name):
            return f"special token {name!r} is empty or holds white space"
    if d.chat not in (None, *CHAT_FORMATS):
        return f"unknown chat format {d.chat!r}"
    return None


def token_lines(d) -> list[str]:
    """The description lines of d's normalizer, special and added tokens, roles and chat."""
    lines = [] if d.normalizer is None else [f"normalizer {d.normalizer}"]
    lines += [f"{'added' if s in d.added else 'special'} {i} {s}"
              for s, i in sorted(d.specials.items(), key=lambda kv: kv[1])]
    lines.append(f"document_start {d.document_start}")
    if d.prompt_start is not None:
        lines.append(f"prompt_start {d.prompt_start}")
    lines += [f"stop {s}" for s in d.stops]
    if d.chat is not None:
        lines.append(f"chat {d.chat}")
    return lines


def bos_template(d) -> dict | None:
    """A tokenizer.json post-processor putting d's prompt start before a text (None if none)."""
    if d.prompt_start is None:
        return None
    bos = d.prompt_start
    spec = {"SpecialToken": {"id": bos, "type_id": 0}}
    return {"type": "TemplateProcessing",
            "single": [spec, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [spec, {"Sequence": {"id": "A", "type_id": 0}}, spec,
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [d.specials[bos]], "tokens": [bos]}}}


def piece_bytes(text: str) -> bytes:
    return text.replace(SPACE, " ").encode("utf-8")


def piece_text(token: bytes) -> str:
    return token.decode("utf-8").replace(" ", SPACE)


# ---- SentencePiece's model file (protobuf) ------------------------------------------------------

def _fields(buf: bytes, where: str):
    """(field number, wire type, value) of a protobuf message: varints as int, length-delimited
    as bytes, fixed32/fixed64 as their raw bytes."""
    pos, n = 0, len(buf)

    def varint():
        nonlocal pos
        shift = value = 0
        while True:
            if pos >= n or shift > 63:
                raise SentencePieceError(f"{where}: truncated or not a SentencePiece model")
            b = buf[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    while pos < n:
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 2:
            size = varint()
            if pos + size > n:
                raise SentencePieceError(f"{where}: truncated or not a SentencePiece model")
            yield number, wire, buf[pos:pos + size]
            pos += size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > n:
                raise SentencePieceError(f"{where}: truncated or not a SentencePiece model")
            yield number, wire, buf[pos:pos + size]
            pos += size
        else:
            raise SentencePieceError(f"{where}: not a SentencePiece model (protobuf wire type "
                                     f"{wire})")


# SentencePiece's piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODEL_TYPES = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}


def read_model(path: Path) -> dict:
    """The parts of a SentencePiece ModelProto that decide encoding: pieces (text, score, type)
    and the trainer's and normalizer's settings, with the proto's defaults."""
    where = str(path)
    if problem := special_file_problem(path):
        raise SentencePieceError(problem)
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise SentencePieceError(f"{where}: cannot read ({e})") from None
    model = {"pieces": [], "model_type": 1, "byte_fallback": False, "suffix": False,
             "bos_id": 1, "eos_id": 2, "name": "", "charsmap": b"", "dummy_prefix": True,
             "remove_extra_whitespaces": True, "escape_whitespaces": True, "rules": b""}

    def signed(v: int) -> int:
        return v - (1 << 64) if v >= 1 << 63 else v

    for number, wire, value in _fields(buf, where):
        if number == 1 and wire == 2:
            piece = {"text": "", "score": 0.0, "type": NORMAL}
            for f, w, v in _fields(value, where):
                if f == 1 and w == 2:
                    try:
                        piece["text"] = v.decode("utf-8")
                    except UnicodeDecodeError:
                        raise SentencePieceError(f"{where}: piece {len(model['pieces'])} is "
                                                 f"not UTF-8") from None
                elif f == 2 and w == 5:
                    piece["score"] = struct.unpack("<f", v)[0]
                elif f == 3 and w == 0:
                    piece["type"] = v
            model["pieces"].append(piece)
        elif number == 2 and wire == 2:  # TrainerSpec
            for f, w, v in _fields(value, where):
                if w != 0:
                    continue
                key = {3: "model_type", 35: "byte_fallback", 24: "suffix", 41: "bos_id",
                       42: "eos_id"}.get(f)
                if key:
                    model[key] = signed(v) if key.endswith("_id") else v
        elif number == 3 and wire == 2:  # NormalizerSpec
            for f, w, v in _fields(value, where):
                key = {1: "name", 2: "charsmap", 3: "dummy_prefix",
                       4: "remove_extra_whitespaces", 5: "escape_whitespaces",
                       6: "rules"}.get(f)
                if key == "name" and w == 2:
                    model[key] = v.decode("utf-8", "replace")
                elif key in ("charsmap", "rules") and w == 2:
                    model[key] = v
                elif key and w == 0:
                    model[key] = bool(v)
    if not model["pieces"]:
        raise SentencePieceError(f"{where}: no pieces; not a SentencePiece model")
    return model


def from_sentencepiece(path: Path, document_start: str | None = None,
                       prompt_start: str | None = None,
                       stops: list[str] | None = None) -> PiecesDescription:
    """A description from a SentencePiece BPE model; refuses what triad would encode
    differently (a unigram model, a normalization rule, no byte fallback, ...)."""
    where = str(path)
    m = read_model(path)
    kind = MODEL_TYPES.get(m["model_type"], str(m["model_type"]))
    if kind != "BPE":
        raise SentencePieceError(f"{where}: a SentencePiece {kind} model; triad reads BPE models "
                                 f"(Llama 2's, Mistral's) only")
    if not m["byte_fallback"]:
        raise SentencePieceError(f"{where}: trained without byte_fallback; triad needs it (an "
                                 f"unknown character would become <unk>)")
    if m["name"] not in ("identity", "") or m["charsmap"] or m["rules"]:
        raise SentencePieceError(f"{where}: normalizes with {m['name']!r}; triad applies no "
                                 f"normalization rules (Llama 2's and Mistral's are 'identity')")
    if m["remove_extra_whitespaces"]:
        raise SentencePieceError(f"{where}: removes extra white space; triad keeps it (as Llama "
                                 f"2's and Mistral's tokenizers do)")
    if not m["escape_whitespaces"] or m["suffix"]:
        raise SentencePieceError(f"{where}: does not write spaces as a {SPACE!r} prefix of "
                                 f"pieces; triad reads only models that do")
    pieces, byte_tokens, specials, added = {}, {}, {}, set()
    scores: dict[int, float] = {}
    for i, p in enumerate(m["pieces"]):
        t = p["type"]
        if t in (NORMAL, USER_DEFINED) and " " in p["text"]:
            raise SentencePieceError(f"{where}: piece {i} {p['text']!r} holds a space")
        if t == NORMAL:
            pieces[i] = piece_bytes(p["text"])
            scores[i] = p["score"]
        elif t == BYTE:
            b = BYTE_PIECE.fullmatch(p["text"])
            if not b:
                raise SentencePieceError(f"{where}: byte piece {i} is {p['text']!r}, not <0xAB>")
            byte_tokens[i] = int(b.group(1), 16)
        elif t in (CONTROL, UNKNOWN):
            specials[p["text"]] = i
        elif t == USER_DEFINED:
            if SPACE in p["text"]:
                raise SentencePieceError(f"{where}: user-defined piece {i} {p['text']!r} holds "
                                         f"{SPACE!r}; triad cannot find it in text")
            specials[p["text"]] = i
            added.add(p["text"])
        else:
            raise SentencePieceError(f"{where}: piece {i} {p['text']!r} has type {t} (unused "
                                     f"pieces are not supported)")
    by_bytes = {t: i for i, t in pieces.items()}
    # SentencePiece merges two symbols whose join is a piece, the highest score first: every
    # split of a piece into two pieces, ranked by its score. A character inside a piece must be
    # a piece itself, or SentencePiece could merge it where triad's table cannot.
    order = {s: r for r, s in enumerate(sorted(set(scores.values()), reverse=True))}
    merges = []
    for i, t in pieces.items():
        text = t.decode("utf-8")
        for c in text:
            if c.encode("utf-8") not in by_bytes:
                raise SentencePieceError(f"{where}: piece {i} {piece_text(t)!r} holds "
                                         f"{c!r}, which is no piece")
        for k in range(1, len(text)):
            a, b = text[:k].encode("utf-8"), text[k:].encode("utf-8")
            if a in by_bytes and b in by_bytes:
                merges.append((by_bytes[a], by_bytes[b], order[scores[i]], i))
    # Equal ranks in the order transformers writes them to a tokenizer.json: by the joined
    # piece's id, then the parts' ids (Hugging Face breaks ties by that order).
    merges = [g[:3] for g in sorted(merges, key=lambda g: (g[2], g[3], g[0], g[1]))]
    names = {i: s for s, i in specials.items()}
    bos, eos = names.get(m["bos_id"]), names.get(m["eos_id"])
    document_start = document_start or bos
    if prompt_start is None:
        prompt_start = bos
    elif prompt_start == "none":
        prompt_start = None
    stops = stops or ([eos] if eos else [])
    if document_start is None:
        raise SentencePieceError(f"{where}: no BOS piece: give --document-start")
    if not stops:
        raise SentencePieceError(f"{where}: no EOS piece: give --stop")
    chat = mistral_chat({p["text"] for p in m["pieces"] if p["type"] == CONTROL})
    d = PiecesDescription(pieces, byte_tokens, merges, "true" if m["dummy_prefix"] else "false",
                          specials, document_start, prompt_start, stops, frozenset(added),
                          chat=chat)
    d.check(where)
    return d


# ---- Hugging Face tokenizer.json ----------------------------------------------------------------

def space_prefix_of(tj: dict, where: str) -> str:
    """When a SentencePiece-style tokenizer.json puts U+2581 before the text (a space_prefix
    value); refuses a normalizer or pre-tokenizer that does anything else."""
    norm, pre = tj.get("normalizer"), tj.get("pre_tokenizer")
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    prepend = {"type": "Prepend", "prepend": SPACE}
    if pre is None and norm == replace:
        return "false"
    if pre is None and isinstance(norm, dict) and norm.get("type") == "Sequence":
        parts = norm.get("normalizers") or []
        if parts == [prepend, replace]:
            return "true"
        if parts == [replace]:
            return "false"
    if norm is None and isinstance(pre, dict) and pre.get("type") == "Metaspace" \
            and pre.get("replacement") == SPACE and pre.get("split", True) is False:
        scheme = pre.get("prepend_scheme", "always" if pre.get("add_prefix_space", True)
                         else "never")
        # Metaspace puts U+2581 first unless the text begins with one (a space, replaced).
        if scheme in ("always", "first", "never"):
            return "never" if scheme == "never" else "unless_space"
    raise SentencePieceError(
        f"{where}: normalizer {json.dumps(norm)[:160]} with pre_tokenizer "
        f"{json.dumps(pre)[:160]}; triad reads SentencePiece-style tokenizers that write spaces "
        f"as {SPACE!r} (Prepend + Replace, Replace, or an unsplit Metaspace) and nothing else")


def from_hf_json(tj: dict, where: str, roles) -> PiecesDescription:
    """A description from a tokenizer.json with a byte_fallback BPE. roles(specials) gives
    (document_start, prompt_start, stops) as hf_tokenizer.from_hf decides them."""
    model = tj["model"]
    if model.get("ignore_merges"):
        raise SentencePieceError(f"{where}: ignore_merges with byte_fallback is not supported")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") \
            or model.get("dropout"):
        raise SentencePieceError(f"{where}: subword prefixes, suffixes or dropout are not "
                                 f"supported")
    space_prefix = space_prefix_of(tj, where)
    added = sorted(tj.get("added_tokens") or [], key=lambda a: a["id"])
    for a in added:
        if not isinstance(a.get("special", False), bool):  # ("no" was taken for true)
            raise SentencePieceError(f"{where}: added token {a['content']!r} has special = "
                                     f"{a['special']!r}, not true or false")
        if not is_text(a["content"]):  # (JSON's "\ud800" escape: no UTF-8 bytes to match)
            raise SentencePieceError(f"{where}: added token {a['content']!r} (id {a['id']}) "
                                     f"holds a lone surrogate, which is no Unicode text")
        if not a.get("special", False):
            raise SentencePieceError(
                f"{where}: added token {a['content']!r} (id {a['id']}) is not special; Hugging "
                f"Face normalizes the text on either side of it apart, which triad does not do "
                f"for SentencePiece-style tokenizers")
    specials = {a["content"]: a["id"] for a in added}
    special_ids = set(specials.values())
    pieces, byte_tokens = {}, {}
    for text, i in (model.get("vocab") or {}).items():
        if i in special_ids:
            continue
        b = BYTE_PIECE.fullmatch(text)
        if b:
            byte_tokens[i] = int(b.group(1), 16)
        elif " " in text:
            raise SentencePieceError(f"{where}: vocab entry {text!r} holds a space")
        else:
            pieces[i] = piece_bytes(text)
    unk = model.get("unk_token")
    if unk is not None and unk not in specials:
        raise SentencePieceError(f"{where}: unk_token {unk!r} is not a special added token")
    by_text = {t.decode("utf-8"): i for i, t in pieces.items()}
    merges = []
    first: dict[tuple[int, int], int] = {}
    for k, g in enumerate(model.get("merges") or []):
        a, b = g.split(" ") if isinstance(g, str) else g
        a, b = a.replace(SPACE, " "), b.replace(SPACE, " ")
        if a not in by_text or b not in by_text or a + b not in by_text:
            raise SentencePieceError(f"{where}: merge {k} ({g!r}) joins or makes a token that is "
                                     f"not a piece of the vocabulary")
        # (one rank per pair: the merges file triad reads refuses a second)
        j = first.setdefault((by_text[a], by_text[b]), k)
        if j != k:
            raise SentencePieceError(f"{where}: merges {j} and {k} are the same pair ({g!r})")
        merges.append((by_text[a], by_text[b], k))
    if not merges:  # (a description needs one: triad-tokenize refused the converted file)
        raise SentencePieceError(f"{where}: no merges (model.merges is "
                                 f"{model.get('merges')!r:.40})")
    document_start, prompt_start, stops = roles(specials)
    chat = mistral_chat(specials)
    d = PiecesDescription(pieces, byte_tokens, merges, space_prefix, specials, document_start,
                          prompt_start, stops, chat=chat)
    d.check(where)
    return d


def hf_files(d: PiecesDescription, model_max_length: int) -> dict[str, str]:
    """tokenizer.json and tokenizer_config.json for transformers' PreTrainedTokenizerFast: a BPE
    with byte fallback whose merges are the table's in rank order. Hugging Face breaks ties by
    the merges' order where triad (and SentencePiece) take the leftmost pair: equal ranks are
    written as transformers writes them (by the joined token's id, then the parts' ids), which
    gives SentencePiece's ids on the texts tested."""
    by_bytes = {t: i for i, t in d.pieces.items()}
    names = {i: piece_text(t) for i, t in d.pieces.items()}
    names.update({i: f"<0x{b:02X}>" for i, b in d.byte_tokens.items()})
    names.update({i: s for s, i in d.specials.items()})
    joined = {(a, b): by_bytes.get(d.pieces[a] + d.pieces[b], -1) for a, b, _ in d.merges}
    merges = [[names[a], names[b]]
              for a, b, _ in sorted(d.merges, key=lambda g: (g[2], joined[g[:2]], g[0], g[1]))]
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    norm = {"type": "Sequence", "normalizers": [replace]}
    pre = None
    if d.space_prefix == "true":
        norm["normalizers"].insert(0, {"type": "Prepend", "prepend": SPACE})
    elif d.space_prefix == "unless_space":
        norm, pre = None, {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "first",
                           "split": False}
    unk = next((s for s in d.specials if s == "<unk>"), None)
    post = bos_template(d)
    decoder = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
               {"type": "ByteFallback"}, {"type": "Fuse"}]
    if d.space_prefix != "false":
        decoder.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for s, i in sorted(d.specials.items(), key=lambda kv: kv[1])],
        "normalizer": norm, "pre_tokenizer": pre, "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": decoder},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {names[i]: i for i in sorted(names)}, "merges": merges},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "eos_token": d.stops[0], "clean_up_tokenization_spaces": False}
    if d.prompt_start is not None:
        config["bos_token"] = d.prompt_start
    if unk is not None:
        config["unk_token"] = unk
    return {"tokenizer.json": json.dumps(tj, ensure_ascii=False),
            "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}


# ---- reading a description back (for export) ----------------------------------------------------

def read_description(path: Path, single: dict[str, str], specials: dict[str, int],
                     added: set[str], stops: list[str]) -> PiecesDescription:
    """The pieces and merges files a parsed description names (hf_tokenizer.read_description
    parses the `key value` lines)."""
    for key in ("pieces", "pieces_count", "merges", "merges_count", "space_prefix",
                "document_start"):
        if key not in single:
            raise SentencePieceError(f"{path}: no {key!r} line")
    pieces, byte_tokens = {}, {}
    pieces_path = path.parent / single["pieces"]
    try:
        lines = pieces_path.read_text(encoding="utf-8").splitlines()
        for no, line in enumerate(lines, 1):
            if not line:
                continue
            w = line.split()
            if len(w) not in (2, 3) or (len(w) == 3 and w[2] != "byte"):
                raise SentencePieceError(f"{pieces_path}:{no}: expected 'base64 id [byte]'")
            t = base64.b64decode(w[0], validate=True)
            if len(w) == 3:
                byte_tokens[int(w[1])] = t[0]
            else:
                pieces[int(w[1])] = t
        merges_path = path.parent / single["merges"]
        merges = [tuple(int(x) for x in line.split())
                  for line in merges_path.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError, IndexError) as e:
        raise SentencePieceError(f"{path}: cannot read its pieces or merges ({e})") from None
    if any(len(g) != 3 for g in merges):
        raise SentencePieceError(f"{path}: a merges line is not 'left right rank'")
    if single["space_prefix"] not in ("true", "false", "unless_space"):
        raise SentencePieceError(f"{path}: space_prefix {single['space_prefix']!r}")
    d = PiecesDescription(pieces, byte_tokens, merges, single["space_prefix"],
                          specials, single["document_start"], single.get("prompt_start"), stops,
                          frozenset(added), single.get("normalizer"), single.get("chat"))
    d.check(str(path))
    return d
