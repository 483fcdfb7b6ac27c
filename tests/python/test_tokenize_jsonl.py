"""`triad-tokenize shards --jsonl`: documents from JSON Lines files, against Python's json module
(which lines are JSON objects with a string field, and what that string is) and tiktoken (the
ids of each document, GPT-2's <|endoftext|> before each)."""

import json
import os
import random
import shutil
import subprocess

import pytest

from test_tokenizer_llama3 import cli
from test_tokenizer_tiktoken import STRINGS, read_shard
from triad_run import ENV, VOCAB, assert_clean_failure, exe

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


def tokenize(tmp_path, jsonl, *flags, out="o"):
    return subprocess.run([str(a) for a in (exe("triad-tokenize"), "shards", "--vocab", VOCAB,
                                            "--out", tmp_path / out, "--val-fraction", 0, *flags,
                                            "--jsonl", jsonl)],
                          capture_output=True, text=True, env=ENV, timeout=60)


def test_bytes_that_are_not_utf8_are_refused_as_json_refuses_them(tmp_path):
    """JSON text is UTF-8 (RFC 8259): a stray byte, an overlong form, an encoded surrogate or a
    cut sequence, in the text or in a field triad reads past, is refused as Python refuses the
    line (naming the file, the line and the byte); a raw NUL is shown as \\x00."""
    f = tmp_path / "b.jsonl"
    for bad in (b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80"):
        for line in (b'{"text": "a' + bad + b'b"}', b'{"id": "' + bad + b'", "text": "a"}'):
            with pytest.raises(UnicodeDecodeError):
                line.decode("utf-8")
            f.write_bytes(b'{"text": "first"}\n' + line + b"\n")
            p = tokenize(tmp_path, f)
            assert p.returncode == 1, (line, p.stdout)
            assert p.stderr.startswith(f"triad-tokenize: error: input file {f}, line 2: invalid "
                                       f"UTF-8 in a string at column "), (line, p.stderr)
            assert f"(byte 0x{bad[0]:02x})" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    f.write_bytes('{"text": "é 中 😀 \U0010ffff"}\n'.encode())
    assert tokenize(tmp_path, f).returncode == 0
    p = tokenize(tmp_path, f, "--threads", 200000)  # (it asked the system for them: an abort)
    assert p.returncode == 1 and "--threads must be in [0, 1024]" in p.stderr, p.stderr
    f.write_bytes(b'{"text": "a\x00\x1b[2Jb"}\n')
    p = tokenize(tmp_path, f)
    assert p.returncode == 1 and "found '\\x00\\x1b[2Jb\"}'" in p.stderr, p.stderr


def test_a_run_that_fails_leaves_the_earlier_shards_as_they_were(tmp_path):
    """The shards (and loss masks) are written aside and moved into place once all are written:
    a run that fails on its input, or on a shard's name taken by a directory, leaves the earlier
    run's files byte for byte, nothing of its own (no partial shard, no staging directory)."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"question {i}?", "completion": f" no {i}"})
                             + "\n" for i in range(40)))
    p = tokenize(tmp_path, pairs, "--shard-tokens", 50, "--prompt-field", "prompt")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "o"

    def files():
        return {q.name: q.read_bytes() for q in sorted(out.iterdir())}

    before = files()
    assert len(before) >= 8 and sum(n.endswith(".mask") for n in before) == len(before) // 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": f"other document {i} " * 5}) + "\n"
                           for i in range(40)) + '{"text": 3}\n')
    p = tokenize(tmp_path, bad, "--shard-tokens", 20)
    assert p.returncode == 1 and "line 41" in p.stderr, p.stderr
    assert files() == before
    good = tmp_path / "good.jsonl"
    good.write_text(bad.read_text().rsplit("\n", 2)[0] + "\n")
    (out / "tokens_train_000009.bin").mkdir()
    p = tokenize(tmp_path, good, "--shard-tokens", 20)
    assert p.returncode == 1 and "tokens_train_000009.bin: exists and is not a file" in \
        p.stderr, p.stderr
    (out / "tokens_train_000009.bin").rmdir()
    assert files() == before
    p = tokenize(tmp_path, good, "--shard-tokens", 20)  # the plain corpus replaces the masked one
    assert p.returncode == 0, p.stderr
    after = files()
    assert not any(n.endswith(".mask") for n in after) and len(after) > 9, sorted(after)
    assert all(not n.startswith(".") for n in after)


def shards(tmp_path, *args, out="s", data=None):
    return subprocess.run([str(a) for a in (exe("triad-tokenize"), "shards", "--vocab", VOCAB,
                                            "--out", tmp_path / out, "--val-fraction", 0,
                                            "--threads", 1, *args)],
                          capture_output=True, text=True, env=ENV, timeout=60, input=data)


def test_inputs_the_run_would_lose_or_misread_are_refused(tmp_path):
    """An input under a name of the run's own shards in --out (it would be overwritten or removed
    as stale), one given twice, one with a NUL byte (gzip, UTF-16) or a corpus of no documents:
    one message, and nothing written or removed. (An empty text file is an empty document.)"""
    out = tmp_path / "s"
    out.mkdir()
    precious = out / "tokens_val_000000.bin"
    precious.write_text("precious text\n")
    p = shards(tmp_path, precious)
    assert_clean_failure(p, f"input file {precious}: in the output directory",
                         "under a name of this run's shards (--prefix tokens)")
    assert precious.read_text() == "precious text\n"
    (tmp_path / "a.txt").write_text("hello world\n")
    os.link(tmp_path / "a.txt", tmp_path / "same.txt")
    (tmp_path / "z.txt").write_bytes("hello".encode("utf-16"))
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    for args, needles in [
            ([tmp_path / "a.txt", tmp_path / "same.txt"],
             ["same.txt: given twice (also as", "a.txt)"]),
            ([tmp_path / "z.txt"], ["z.txt: a NUL byte at offset 3", "not UTF-8 text"]),
            (["--jsonl", tmp_path / "blank.jsonl"], ["no documents in the input files"])]:
        assert_clean_failure(shards(tmp_path, *args), *needles)
        assert sorted(q.name for q in out.iterdir()) == ["tokens_val_000000.bin"]


def test_an_earlier_shard_that_cannot_go_leaves_the_directory_as_it_was(tmp_path):
    """The stale shards of an earlier, longer run go aside before the new ones move in: one that
    cannot go (a directory by a shard's name) is found first and nothing changes."""
    (tmp_path / "b.txt").write_text("hello world " * 20)
    assert shards(tmp_path, "--shard-tokens", 5, tmp_path / "b.txt").returncode == 0
    out = tmp_path / "s"
    (out / "tokens_train_000003.bin").unlink()
    (out / "tokens_train_000003.bin" / "keep").mkdir(parents=True)
    before = sorted(q.name for q in out.iterdir())
    (tmp_path / "a.txt").write_text("hello world\n")
    p = shards(tmp_path, "--shard-tokens", 100, tmp_path / "a.txt")
    assert_clean_failure(p, "tokens_train_000003.bin, named as a shard of an earlier run",
                         "it is not a file")
    assert sorted(q.name for q in out.iterdir()) == before
    shutil.rmtree(out / "tokens_train_000003.bin")
    p = shards(tmp_path, "--shard-tokens", 100, tmp_path / "a.txt")
    assert p.returncode == 0, p.stderr
    assert sorted(q.name for q in out.iterdir()) == ["tokens_train_000000.bin"]


def test_a_byte_order_mark_is_no_part_of_the_first_line(tmp_path, gpt2):
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"text": "hi"}\n{"text": "there"}\n')
    assert tokenize(tmp_path, f).returncode == 0
    assert list(read_shard(tmp_path / "o" / "tokens_train_000000.bin")) == \
        [EOT] + gpt2.encode("hi") + [EOT] + gpt2.encode("there")


def test_named_pipes_and_empty_values_are_refused_not_waited_on(tmp_path):
    """A tokenizer or a conversation file that is a named pipe would block for ever in open();
    an empty --messages or --format is not taken for "not given"; decode shows the bytes it
    cannot read escaped."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    tokenize_cli = [str(exe("triad-tokenize"))]
    for args in (["encode", "--vocab", fifo],
                 ["chat", "--vocab", VOCAB, "--format", "chatml", "--messages", fifo]):
        p = subprocess.run(tokenize_cli + [str(a) for a in args], capture_output=True, text=True,
                           env=ENV, timeout=60, input="")
        assert_clean_failure(p, str(fifo), "not a regular file")
    p = subprocess.run(tokenize_cli + ["chat", "--vocab", str(VOCAB), "--messages", ""],
                       capture_output=True, text=True, env=ENV, timeout=60, input="hi")
    assert_clean_failure(p, "--messages is empty")
    p = subprocess.run(tokenize_cli + ["chat", "--vocab", str(VOCAB), "--format", ""],
                       capture_output=True, text=True, env=ENV, timeout=60, input="hi")
    assert_clean_failure(p, "--format is empty")
    p = subprocess.run(tokenize_cli + ["decode", "--vocab", str(VOCAB)], capture_output=True,
                       env=ENV, timeout=60, input=b"\x01\x00zz\xff")
    assert p.returncode == 1
    assert b"decode: '\\x01\\x00zz\\xff' (item 1 on stdin) is not a token id" in p.stderr, p.stderr
