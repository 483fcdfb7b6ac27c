"""triad-tokenize against tiktoken, the reference GPT-2 tokenizer, on the same local ranks file.

No network: tiktoken is built from data/vocab/gpt2.tiktoken (put there by the setup script).
The executable is $TRIAD_BUILD_DIR/triad-tokenize (default: <repo>/build).
"""

import concurrent.futures
import os
import random
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

tiktoken = pytest.importorskip("tiktoken")
from tiktoken.load import load_tiktoken_bpe  # noqa: E402
from triad_run import parse_ids  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("TRIAD_BUILD_DIR", REPO / "build"))
EXE = BUILD / "triad-tokenize"
VOCAB = REPO / "data" / "vocab" / "gpt2.tiktoken"
CORPUS = REPO / "data" / "corpus"
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = 50256

# A singleton MPI start without spawning orted, and with the cheap transports: ~0.1 s. Each
# run gets its own Open MPI session directory: isolated singletons all use job family 0 under
# one /tmp/ompi.<host>.<uid>, and one process's cleanup there was seen to break another's
# start ("A call to mkdir was unable to create the desired directory").
ENV = dict(os.environ)
for key, value in (("OMPI_MCA_ess_singleton_isolated", "1"), ("OMPI_MCA_pml", "ob1"),
                   ("OMPI_MCA_btl", "self,vader")):
    ENV.setdefault(key, value)

_rng = random.Random(20240520)
STRINGS = {
    # Unicode letters, accents, scripts, combining marks (category M is 'other').
    "cjk": "你好，世界！这是一个测试。",
    "japanese": "日本語のテキストとカタカナ、ひらがな。",
    "korean": "안녕하세요 세계",
    "accents": "naïve café résumé Ångström Dvořák façade",
    "accents_decomposed": "cafe\u0301 nai\u0308ve a\u0308\u0301b",
    "arabic": "مرحبا بالعالم! السلام عليكم",
    "hebrew": "שלום עולם",
    "devanagari": "नमस्ते दुनिया",
    "thai": "สวัสดีชาวโลก",
    "greek_cyrillic": "Καλημέρα κόσμε, Привет мир",
    "vietnamese": "Tiếng Việt có dấu",
    "combining_only": "\u0301\u0302\u0303 x\u0301",
    "unicode16_letters": "\u1c89\u1c8a \U000105c0\U000105c1 \U00010d40",
    "math_letters": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐁𝐨𝐥𝐝",
    # Emoji: plain, skin tones, ZWJ sequences, flags, keycaps, variation selectors.
    "emoji": "I love 😀😃😄 so much!",
    "skin_tones": "👍🏽 👋🏿👋🏻",
    "zwj_family": "👨‍👩‍👧‍👦 family",
    "zwj_misc": "👩🏿‍💻 🏳️‍🌈 🧑‍🤝‍🧑",
    "flags": "🇯🇵🇺🇸🇫🇷",
    "keycap_vs": "1️⃣ ❤️ ☺︎",
    # Numbers.
    "long_number": "1234567890123456789012345678901234567890",
    "numbers_mixed": "pi = 3.14159, e=2.71828; 1,000,000 and 42nd 7x8",
    "other_digits": "٣٤٥ ۱۲۳ १२३ ²³ ½ Ⅻ ⅰⅱ ①②",
    "year_range": "1999-2024 (25 years)",
    # Contractions (lowercase only; uppercase and others split).
    "contractions": "it's can't you're we've I'm you'll he'd",
    "contractions_upper": "IT'S CAN'T YOU'RE WE'VE I'M YOU'LL HE'D 'S 'T",
    "contractions_odd": "y'all'd've rock 'n' roll '' ''' '''s 's'",
    "apostrophe_alone": "'",
    "curly_apostrophe": "it’s don’t",
    # Whitespace runs.
    "spaces": "a  b   c    d",
    "trailing_spaces": "trailing   ",
    "leading_spaces": "   leading",
    "only_spaces": "     ",
    "tabs": "\tindent\t\tx\t",
    "newlines": "line1\nline2\n\nline4\n\n\n",
    "crlf": "windows\r\nline\r\n",
    "mixed_ws": " \n\n  \t x \t\n y  \n",
    "nbsp": "x\u00a0y \u00a0 z\u00a0",
    "ideographic_space": "日本\u3000語\u3000\u3000x",
    "unicode_spaces": "a\u2028b\u2029c\u0085d\u1680e\u2003f\u202fg\u205fh",
    "vt_ff": "a\x0bb\x0cc",
    "not_spaces": "a\x1cb\x1dc\x1e d\x1f",
    "code": "def f(x):\n    return x  # comment\n\n\nclass A:\n\tpass\n",
    # Punctuation runs.
    "punct": "Wait... what?!?! No way!!! (really) [yes] {ok}",
    "punct_runs": "--- *** ### @@@ $$$ %%% ^^^ &&& ~~~ ``` ||| \\\\ //",
    "special_text": "<|endoftext|> is not special here <|endoftext|>",
    "url": "https://example.com/path?q=1&r=two#frag",
    "quotes": "\"double\" 'single' «guillemets» „low“ ¿Qué? ¡Hola!",
    "arrows_symbols": "→ ⇒ ∑∫√ © ® ™ € £ ¥",
    "c_plus_plus": "C++ e.g. i.e. U.S.A. ...",
    # Edge cases and long pieces.
    "empty": "",
    "single_space": " ",
    "single_newline": "\n",
    "long_digits": "9" * 1000,
    "long_spaces": " " * 1000 + "x",
    "long_newlines": "\n" * 700,
    "long_punct": "!" * 600 + "?" * 300,
    "long_letters": "a" * 2000,
    "long_pairs": "ab" * 700,
    "long_random_letters": "".join(_rng.choice("etaoinshrdlu") for _ in range(3000)),
    "long_random_mix": "".join(_rng.choice([" ", "  ", "a", "é", "1", "!", "\n", "'s", "中", "😀"])
                               for _ in range(5000)),
}


def run(args, data=b"", check=True):
    if not EXE.exists():
        pytest.fail(f"{EXE} does not exist: build it (cmake --build ... --target triad-tokenize) "
                    "or set TRIAD_BUILD_DIR")
    if not VOCAB.exists():
        pytest.fail(f"{VOCAB} does not exist: run the setup script (ENVIRONMENT.md, real data)")
    with tempfile.TemporaryDirectory(prefix="triad-ompi-") as session:
        env = dict(ENV, OMPI_MCA_orte_tmpdir_base=session)
        p = subprocess.run([str(EXE), *args], input=data, capture_output=True, env=env,
                           timeout=300)
    if check and p.returncode != 0:
        pytest.fail(f"triad-tokenize {' '.join(args)} exited {p.returncode}: "
                    f"{p.stderr.decode(errors='replace')}")
    return p


def cli_encode(data: bytes):
    return parse_ids(run(["encode", "--vocab", str(VOCAB)], data).stdout)


def cli_decode(ids) -> bytes:
    return run(["decode", "--vocab", str(VOCAB)], " ".join(map(str, ids)).encode()).stdout


@pytest.fixture(scope="module")
def enc():
    if not VOCAB.exists():
        pytest.fail(f"{VOCAB} does not exist: run the setup script (ENVIRONMENT.md, real data)")
    return tiktoken.Encoding(name="gpt2_local", pat_str=GPT2_PATTERN,
                             mergeable_ranks=load_tiktoken_bpe(str(VOCAB)),
                             special_tokens={"<|endoftext|>": EOT})


@pytest.fixture(scope="module")
def cli_ids():
    """Every test string through the CLI, a few processes at a time."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ids = pool.map(lambda s: cli_encode(s.encode()), STRINGS.values())
        return dict(zip(STRINGS, ids))


@pytest.mark.parametrize("name", list(STRINGS))
def test_encode_matches_tiktoken(name, enc, cli_ids):
    text = STRINGS[name]
    want = enc.encode_ordinary(text)
    assert cli_ids[name] == want, f"{name}: {text[:80]!r}"
    assert enc.decode_bytes(cli_ids[name]) == text.encode()


def test_decode_round_trip_strings(enc):
    # All test strings at once: one decode of tiktoken's ids gives the UTF-8 bytes back.
    ids, text = [], ""
    for s in STRINGS.values():
        ids += enc.encode_ordinary(s)
        text += s
    assert cli_decode(ids) == text.encode()


def test_round_trip_any_bytes():
    rng = random.Random(5)
    data = bytes(range(256)) + b"\xc3(\xa0\xa1\xed\xa0\x80\xf4\x90\x80\x80\xc0\xaf\xe2\x82 ok\xff"
    data += bytes(rng.randrange(256) for _ in range(20000))
    ids = cli_encode(data)
    assert all(0 <= i < EOT for i in ids)
    assert cli_decode(ids) == data


def test_eot_decodes_to_its_text():
    assert cli_decode([15496, EOT, 995]) == b"Hello<|endoftext|> world"
    assert cli_encode(b"Hello world") == [15496, 995]


def test_cli_errors_are_one_line():
    for args, data, part in (
        (["decode", "--vocab", str(VOCAB)], b"15496 50257", b"out of range"),
        (["decode", "--vocab", str(VOCAB)], b"15496 -1", b"out of range"),
        (["decode", "--vocab", str(VOCAB)], b"15496 12x", b"not a token id"),
        (["encode", "--vocab", "/nonexistent/gpt2.tiktoken"], b"", b"cannot open"),
        (["encode"], b"", b"--vocab"),
        (["encode", "--vocab", str(VOCAB), "--bogus"], b"", b"bogus"),
        (["frobnicate"], b"", b"unknown command"),
        ([], b"", b"no command"),
        (["shards", "--vocab", str(VOCAB), "--out", "/tmp/x"], b"", b"no input files"),
    ):
        p = run(args, data, check=False)
        assert p.returncode == 1, (args, p.stderr)
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(b"triad-tokenize: error: "), p.stderr
        assert part in lines[0], p.stderr
    assert run(["--help"]).stdout.startswith(b"usage: triad-tokenize")
    assert b"--val-fraction" in run(["shards", "--help"]).stdout


def read_shard(path):
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240520 and header[1] == 1
    tokens = np.fromfile(path, dtype="<u2", offset=1024)
    assert len(tokens) == header[2]
    return tokens.tolist()


def write_documents(directory, docs):
    """Each document as its own UTF-8 file directory/doc{i}.txt; returns the paths in order."""
    files = [directory / f"doc{i}.txt" for i in range(len(docs))]
    for f, d in zip(files, docs):
        f.write_text(d, encoding="utf-8")
    return files


def test_shards_cli(tmp_path, enc):
    docs = [STRINGS["accents"] + "\n" + STRINGS["code"] * 50, STRINGS["long_random_mix"], "x"]
    files = write_documents(tmp_path, docs)
    out = tmp_path / "out"
    p = run(["shards", "--vocab", str(VOCAB), "--out", str(out), "--prefix", "t",
             "--val-fraction", "0.1", "--shard-tokens", "1000", "--threads", "2",
             *map(str, files)])
    stream = []
    for d in docs:
        stream += [EOT] + enc.encode_ordinary(d)
    n_val = round(0.1 * len(stream))
    train = sorted(out.glob("t_train_*.bin"))
    val = sorted(out.glob("t_val_*.bin"))
    assert len(train) == -(-(len(stream) - n_val) // 1000) and len(val) == -(-n_val // 1000)
    got_train = sum((read_shard(f) for f in train), [])
    got_val = sum((read_shard(f) for f in val), [])
    assert got_train == stream[:len(stream) - n_val]
    assert got_val == stream[len(stream) - n_val:]
    summary = p.stdout.decode()
    assert "documents:    3" in summary and f"tokens:       {len(stream)}" in summary


CORPUS_FILES = sorted(CORPUS.glob("*.txt")) if CORPUS.is_dir() else []


@pytest.mark.parametrize("path", CORPUS_FILES or [None], ids=lambda p: p.name if p else "none")
def test_corpus_matches_tiktoken(path, enc):
    if path is None:
        pytest.skip(f"{CORPUS} has no *.txt files yet (the setup script makes the corpus)")
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")  # tiktoken takes str: compare on valid UTF-8
    data = text.encode("utf-8")
    want = enc.encode_ordinary(text)
    got = cli_encode(data)
    assert len(got) == len(want), f"{path.name}: {len(got)} tokens, tiktoken {len(want)}"
    if got != want:
        i = next(k for k, (a, b) in enumerate(zip(got, want)) if a != b)
        pytest.fail(f"{path.name}: first difference at token {i}: "
                    f"{enc.decode(got[max(0, i - 5):i + 5])!r} vs "
                    f"{enc.decode(want[max(0, i - 5):i + 5])!r}")
    print(f"{path.name}: {len(want)} tokens match tiktoken")
