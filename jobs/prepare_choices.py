#!/usr/bin/env python3
"""Multiple-choice examples (HellaSwag's JSON lines) -> the eval file `eval.choices` reads
(llm.c's format; include/triad/data/choice_file.h), tokenized with GPT-2's BPE.

    .venv/bin/python jobs/prepare_choices.py hellaswag_val.jsonl data/choices/hellaswag_val.bin
    build/triad-train --config RUN.ini --eval-only --init-from gpt2.h5 \\
        --eval.choices data/choices/hellaswag_val.bin

Each line is a JSON object with "ctx" (the shared context), "endings" (a list of at least two
strings) and "label" (the index of the right ending), as in HellaSwag's hellaswag_val.jsonl.
--render lm-eval renders HellaSwag's lines as lm-evaluation-harness's hellaswag task does, so
that eval.choices' accuracy by characters is the acc_norm it reports: the context is
"activity_label: ctx_a Ctx_b" (ctx_b through Python's str.capitalize), and the context and each
ending are cleaned of the WikiHow markup (stripped, " [title]" made ". ", every "[...]" removed,
then each double space made one); --render llmc (default) keeps "ctx" and the endings as they
are, as llm.c's and nanoGPT's HellaSwag scripts do.
With --cloze N the examples are made from held-out text instead (the quick start's val shard):
the first half of a sentence, and its own second half among three others' (cloze_examples);
--cloze N --pairs writes them as preference pairs for DPO instead (JSON Lines of "prompt",
"chosen" the sentence's own ending and "rejected" another's, for triad-tokenize preferences);
--others TEXT draws the wrong endings from another text (another author's, say).
As llm.c and nanoGPT do, the context is encoded as it is and each ending with a space before
it; for examples of four endings (HellaSwag's) the file is what llm.c's dev/data/hellaswag.py
writes for the same lines (llm.c reads only four; triad any number from two). A line that is
not such an object ends the script with one error naming the file and line (exit status 1);
the output is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

MAGIC, VERSION, START = 20240522, 1, 65535


def gpt2_encoding(vocab: Path):
    """tiktoken's GPT-2 encoding from the local ranks file (no download)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(vocab))
    return tiktoken.Encoding(
        name="gpt2-local", explicit_n_vocab=50257, mergeable_ranks=ranks,
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        special_tokens={"<|endoftext|>": 50256})


def lm_eval_clean(text: str) -> str:
    """lm-evaluation-harness's HellaSwag cleanup of WikiHow markup (see the module docstring)."""
    import re

    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def examples(path: Path, limit: int = 0, render: str = "llmc"):
    count = 0
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit and count == limit:
                return
            count += 1
            where = f"{path}:{no}"
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e})")
            if not isinstance(ex, dict):
                raise ValueError(f"{where}: not a JSON object")
            ctx, endings, label = ex.get("ctx"), ex.get("endings"), ex.get("label")
            if render == "lm-eval":
                parts = [ex.get(k) for k in ("activity_label", "ctx_a", "ctx_b")]
                if not all(isinstance(s, str) for s in parts):
                    raise ValueError(f'{where}: --render lm-eval needs "activity_label", "ctx_a" '
                                     f'and "ctx_b" strings (HellaSwag\'s fields)')
                ctx = lm_eval_clean(f"{parts[0]}: {parts[1]} {parts[2].capitalize()}")
                if isinstance(endings, list) and all(isinstance(e, str) for e in endings):
                    endings = [lm_eval_clean(e) for e in endings]
            if not isinstance(ctx, str) or not ctx:
                raise ValueError(f'{where}: "ctx" must be a non-empty string')
            if (not isinstance(endings, list) or len(endings) < 2
                    or not all(isinstance(e, str) and e for e in endings)):
                raise ValueError(f'{where}: "endings" must be a list of at least two non-empty '
                                 f"strings")
            if isinstance(label, str) and label.isdigit():
                label = int(label)
            if isinstance(label, bool) or not isinstance(label, int) \
                    or not 0 <= label < len(endings):
                raise ValueError(f'{where}: "label" must be an index into "endings" '
                                 f"(0..{len(endings) - 1}), got {label!r}")
            yield ctx, endings, label


def text_sentences(path: Path, enc) -> list[list[str]]:
    """The sentences of 10 to 40 words (as lists of words) of a plain text file, or of a token
    shard (the val shard of triad-tokenize, decoded)."""
    import re

    if path.suffix == ".bin":
        header = np.fromfile(path, dtype="<i4", count=256)
        if header.size >= 256 and header[0] == 20240801:
            raise ValueError(f"{path}: a uint32 token shard (magic 20240801); the context text "
                             f"is decoded with GPT-2's tokenizer, whose shards are uint16")
        if header.size < 256 or header[0] != 20240520:
            raise ValueError(f"{path}: not a token shard (magic 20240520)")
        text = enc.decode(np.fromfile(path, dtype="<u2", offset=1024).tolist())
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
    text = text.replace("<|endoftext|>", " ")
    sentences = [s.split() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split()))]
    sentences = [w for w in sentences if 10 <= len(w) <= 40]
    if len(sentences) < 4:
        raise ValueError(f"{path}: {len(sentences)} sentences of 10 to 40 words; need 4 or more")
    return sentences


def cloze_examples(path: Path, enc, count: int, seed: int, others: Path | None = None):
    """Held-out text -> "which ending is the sentence's own" examples: a sentence's first half
    as the context, its second half and the second halves of three other sentences (of the text
    `others` where given) as the endings, the right one at a random place. The text is a plain
    file, or a token shard (text_sentences), so the examples come from text training never
    saw."""
    import random

    sentences = text_sentences(path, enc)
    pool = text_sentences(others, enc) if others is not None else sentences

    def second_half(w):
        return " ".join(w[len(w) // 2:])

    rnd = random.Random(seed)
    made = 0
    for i in rnd.sample(range(len(sentences)), len(sentences)):
        if made == count:
            break
        words = sentences[i]
        right = second_half(words)
        # Three other endings, each different from the right one and from each other (repeated
        # phrases would make an example with two right answers); an example without them is
        # skipped.
        endings = []
        for _ in range(50):
            e = second_half(pool[rnd.randrange(len(pool))])
            if e != right and e not in endings:
                endings.append(e)
                if len(endings) == 3:
                    break
        if len(endings) < 3:
            continue
        label = rnd.randrange(4)
        endings.insert(label, right)
        made += 1
        yield " ".join(words[:len(words) // 2]), endings, label


def encode_example(enc, index: int, ctx: str, endings: list[str], label: int) -> list[int]:
    stream = [START, 0, index, label, len(endings)]
    ctx_tokens = enc.encode_ordinary(ctx)
    stream += [len(ctx_tokens), *ctx_tokens]
    for e in endings:
        t = enc.encode_ordinary(" " + e)
        stream += [len(t), *t]
    stream[1] = 2 * len(stream)
    return stream


def write_atomically(out: Path, data: bytes) -> None:
    """out's bytes, written under a temporary name and renamed when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file (mkstemp makes it 0600)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("jsonl", type=Path,
                    help="HellaSwag-style JSON lines (with --cloze: a text file or token shard)")
    ap.add_argument("out", type=Path, help="the eval file to write")
    ap.add_argument("--cloze", type=int, default=0, metavar="N",
                    help="N examples made from held-out text instead (see cloze_examples)")
    ap.add_argument("--seed", type=int, default=1, help="--cloze: which sentences and endings")
    ap.add_argument("--pairs", action="store_true",
                    help="--cloze: write preference pairs instead, as JSON Lines for "
                         "triad-tokenize preferences: the first half as the prompt, its own "
                         "ending chosen, another's rejected")
    ap.add_argument("--others", type=Path, metavar="TEXT",
                    help="--cloze: the wrong endings from this text's sentences (a text file or "
                         "token shard) instead of the same text's")
    ap.add_argument("--vocab", type=Path, default=root / "data" / "vocab" / "gpt2.tiktoken",
                    help="GPT-2 BPE ranks (default: data/vocab/gpt2.tiktoken)")
    ap.add_argument("--limit", type=int, default=0, help="the first N examples only (0: all)")
    ap.add_argument("--render", choices=("llmc", "lm-eval"), default="llmc",
                    help="HellaSwag's text as llm.c keeps it, or as lm-evaluation-harness renders "
                         "it (for its acc_norm)")
    args = ap.parse_args(argv)
    prog = "prepare_choices.py"
    try:
        if not args.jsonl.is_file():
            raise ValueError(f"{args.jsonl}: no such file")
        if not args.vocab.is_file():
            raise ValueError(f"{args.vocab}: no such file (jobs/setup.sh fetches it)")
        enc = gpt2_encoding(args.vocab)
        words, longest, count = [], 0, 0
        if args.limit < 0 or args.cloze < 0:
            raise ValueError("--limit and --cloze must be >= 0")
        if args.limit and args.cloze:
            raise ValueError("--limit applies to JSON lines; --cloze N sets the count itself")
        if args.render != "llmc" and args.cloze:
            raise ValueError("--render applies to HellaSwag's JSON lines, not to --cloze")
        if args.others is not None and not args.cloze:
            raise ValueError("--others applies to --cloze")
        if args.others is not None and not args.others.is_file():
            raise ValueError(f"{args.others}: no such file")
        source = cloze_examples(args.jsonl, enc, args.cloze, args.seed, args.others) \
            if args.cloze else examples(args.jsonl, args.limit, args.render)
        if args.pairs:
            if not args.cloze:
                raise ValueError("--pairs applies to --cloze")
            lines = [json.dumps({"prompt": ctx, "chosen": " " + endings[label],
                                 "rejected": " " + endings[(label + 1) % len(endings)]})
                     for ctx, endings, label in source]
            if not lines:
                raise ValueError(f"{args.jsonl}: no examples")
            write_atomically(args.out, ("\n".join(lines) + "\n").encode())
            print(f"{prog}: wrote {args.out} ({len(lines)} preference pairs)")
            return 0
        for i, (ctx, endings, label) in enumerate(source):
            if i >= START:
                raise ValueError(f"{args.jsonl}: more than {START} examples (the format numbers "
                                 f"them in 16 bits)")
            s = encode_example(enc, i, ctx, endings, label)
            if s[1] >= 1 << 16:
                raise ValueError(f"{args.jsonl}: example {i} takes {s[1]} bytes, over the "
                                 f"format's 65535")
            longest = max(longest, s[1])
            words += s
            count += 1
        if not count:
            raise ValueError(f"{args.jsonl}: no examples")
        header = np.zeros(256, dtype="<i4")
        header[:4] = [MAGIC, VERSION, count, longest]
        write_atomically(args.out, header.tobytes() + np.asarray(words, dtype="<u2").tobytes())
    except (ValueError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    print(f"{prog}: wrote {args.out} ({count} examples, longest {longest} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
