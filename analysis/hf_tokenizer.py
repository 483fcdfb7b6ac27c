"""GPT-2's tokenizer as the files Hugging Face transformers loads (vocab.json, merges.txt,
tokenizer_config.json), written from the BPE ranks file triad tokenizes with
(data/vocab/gpt2.tiktoken: one `base64(token bytes) rank` per line). triad-convert export --to
hf puts them beside the model, so that AutoTokenizer.from_pretrained (and with it evaluation
harnesses) can use an exported model as it is.

- vocab.json: each token's bytes in GPT-2's byte-to-character alphabet (printable Latin-1 bytes
  as themselves, the others moved to U+0100 onwards), with its id; <|endoftext|> = 50256.
- merges.txt: the merges in rank order. A ranks file holds tokens, not merges: the merge that
  makes a token is found by byte-pair encoding its bytes with the lower-ranked tokens only,
  which leaves two parts.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

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
    alpha = byte_alphabet()

    def text(b: bytes) -> str:
        return "".join(alpha[x] for x in b)

    vocab = {text(t): r for t, r in ranks.items()}
    vocab[EOT] = 50256
    merges = []
    for t, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(t) >= 2:
            a, b = merge_of(t, ranks)
            merges.append(f"{text(a)} {text(b)}")
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps({
            "tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length,
            "bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "add_prefix_space": False,
            "clean_up_tokenization_spaces": False}, indent=2) + "\n",
    }
