"""`triad-tokenize shards --jsonl`: documents from JSON Lines files, against Python's json module
(which lines are JSON objects with a string field, and what that string is) and tiktoken (the
ids of each document, GPT-2's <|endoftext|> before each)."""

import json
import random
import subprocess

import pytest

from test_tokenizer_llama3 import cli
from test_tokenizer_tiktoken import STRINGS, read_shard
from triad_run import ENV, VOCAB, exe

tiktoken = pytest.importorskip("tiktoken")
from tiktoken.load import load_tiktoken_bpe  # noqa: E402

EOT = 50256


@pytest.fixture(scope="module")
def gpt2():
    return tiktoken.Encoding("gpt2", pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+"""
                             r"""| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                             mergeable_ranks=load_tiktoken_bpe(str(VOCAB)), special_tokens={})


def random_text(rng):
    alphabet = ["a", "Z", " ", "\n", "\t", "\"", "\\", "/", "é", "中", "😀", "\u2028", "\x00",
                "\x1f", "\x7f", "\ud7ff", "\ue000", "\U0010ffff", "<|endoftext|>", "{", "}"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))


def test_documents_match_json_and_tiktoken(tmp_path, gpt2):
    rng = random.Random(4)
    docs = list(STRINGS.values()) + [random_text(rng) for _ in range(400)]
    files = []
    for k in range(3):  # ASCII escapes, raw UTF-8, and other fields around the text
        lines = []
        for i, d in enumerate(docs[k::3]):
            obj = {"id": i, "meta": {"tags": ["x", None, 1.5e-3, True]}, "text": d}
            if k == 2:
                obj = {"text": "stale", **obj, "z": [[], {}]}  # the last "text" counts
            lines.append(json.dumps(obj, ensure_ascii=(k == 0)))
        files.append(tmp_path / f"part{k}.jsonl")
        sep = "\r\n" if k == 1 else "\n"
        files[-1].write_text(sep.join(lines) + sep + "\n  \n", encoding="utf-8")
    out = tmp_path / "out"
    summary = cli("shards", "--vocab", VOCAB, "--out", out, "--val-fraction", "0", "--jsonl",
                  "--threads", "2", *files).decode()
    ordered = [d for k in range(3) for d in docs[k::3]]
    assert f"documents:    {len(ordered)} " in summary
    want = sum(([EOT] + gpt2.encode_ordinary(d) for d in ordered), [])
    got = sum((read_shard(f) for f in sorted(out.glob("tokens_train_*.bin"))), [])
    assert got == want
    # --field names another string field.
    f = tmp_path / "body.jsonl"
    f.write_text('{"body": "Hello world", "text": 3}\n')
    cli("shards", "--vocab", VOCAB, "--out", out, "--val-fraction", "0", "--jsonl", "--field",
        "body", f)
    assert read_shard(out / "tokens_train_000000.bin") == [EOT] + gpt2.encode_ordinary(
        "Hello world")
    # --field without --jsonl, and an empty one, are refused.
    for args, message in [(["--field", "body"], "--field applies to --jsonl or --chat input only"),
                          (["--jsonl", "--field", ""], "--field must name a field")]:
        p = subprocess.run([exe("triad-tokenize"), "shards", "--vocab", str(VOCAB), "--out",
                            str(out), *args, str(f)], capture_output=True, text=True, env=ENV,
                           timeout=60)
        assert p.returncode == 1 and message in p.stderr, p.stderr


def accepts(line):
    """Python's verdict: the line is a JSON object whose "text" is a string of characters (a lone
    surrogate escape, which json.loads lets through, cannot be written as UTF-8: triad refuses it).
    """
    try:
        obj = json.loads(line)
        if not (isinstance(obj, dict) and isinstance(obj.get("text"), str)):
            return False
        obj["text"].encode("utf-8")
        return True
    except ValueError:  # UnicodeEncodeError included
        return False


def test_malformed_lines_are_refused_as_json_refuses_them(tmp_path):
    """Mutations of a valid line (a character dropped, doubled or replaced by JSON syntax):
    triad-tokenize takes a line exactly when Python's json.loads gives an object with a string
    "text", and then fails with one line naming the file and line otherwise."""
    rng = random.Random(9)
    base = '{"id": [1, -2.5e+3, {"k": null}], "ok": true, "text": "caf\\u00e9 \\ud83d\\ude00 \\"q\\""}'
    syntax = list('{}[],:"\\ ') + ["\\u", "\\ud800", "tru", "1e", "-", "0", "\t", "\x01"]
    seen = set()
    mutated = []
    while len(mutated) < 60:
        i = rng.randrange(len(base))
        kind = rng.randrange(3)
        line = base[:i] + (base[i + 1:] if kind == 0 else base[i] + base[i:] if kind == 1
                           else rng.choice(syntax) + base[i + 1:])
        if line not in seen:
            seen.add(line)
            mutated.append(line)
    accepted = 0
    for line in mutated:
        f = tmp_path / "m.jsonl"
        f.write_text('{"text": "first"}\n' + line + "\n", encoding="utf-8")
        p = subprocess.run([exe("triad-tokenize"), "shards", "--vocab", str(VOCAB), "--out",
                            str(tmp_path / "o"), "--val-fraction", "0", "--jsonl", str(f)],
                           capture_output=True, text=True, env=ENV, timeout=60)
        if accepts(line):
            accepted += 1
            assert p.returncode == 0, (line, p.stderr)
        else:
            assert p.returncode == 1, line
            assert p.stderr.startswith(f"triad-tokenize: error: input file {f}, line 2: "), \
                (line, p.stderr)
            assert p.stderr.count("\n") == 1
    assert 0 < accepted < len(mutated)
