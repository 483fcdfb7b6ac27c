#!/usr/bin/env bash
# Tokenizer speed beside its peers: triad-tokenize shards (its own encode timing) against
# tiktoken (Rust behind Python: encode_ordinary per file on 1 thread, encode_ordinary_batch over
# the files on N) and Hugging Face's tokenizers (Rust: encode per file on 1 thread, encode_batch
# on N), with GPT-2's, Llama 3's and Mistral's Tekken tokenizers on the default corpus
# (data/corpus, one document per file); DeepSeek's pre-tokenizers over GPT-2's ranks against
# Hugging Face's tokenizers alone; then Mistral's SentencePiece tokenizer against sentencepiece (C++ behind Python:
# encode per file, or the list on N threads) and the tokenizer.json transformers converts it to;
# then chat conversations to shards with loss masks (--chat) against mistral_common's and Meta's
# chat encoders. Every peer must give triad's token count (sentencepiece its ids). Prints MB/s
# (best of R runs) and ratios.
#
#   jobs/bench-tokenize.sh [--threads N] [--repeat R]
#
# Defaults: nproc threads, R = 3. Needs jobs/setup.sh's data (both ranks files, the corpus) and
# builds triad-tokenize if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

threads=$(nproc 2>/dev/null || echo 2)
repeat=3
while [[ $# -gt 0 ]]; do
  [[ $# -ge 2 || ! $1 =~ ^--(threads|repeat)$ ]] || { echo "bench-tokenize: $1 needs a value" >&2; exit 2; }
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "bench-tokenize: unknown option '$1'" >&2; exit 2 ;;
  esac
done
source jobs/bench-prepare.sh
bench_build triad-tokenize
py=.venv/bin/python
[[ -x $py ]] || { echo "bench-tokenize: no .venv (run jobs/setup.sh)" >&2; exit 1; }
for f in data/vocab/gpt2.tiktoken data/vocab/llama3.tiktoken data/vocab/tekken.json \
         data/vocab/mistral-v1.model data/vocab/mistral-v3.model; do
  [[ -f $f ]] || { echo "bench-tokenize: $f missing (run jobs/setup.sh)" >&2; exit 1; }
done

RAYON_NUM_THREADS=$threads OMPI_MCA_ess_singleton_isolated=1 "$py" - "$threads" "$repeat" <<'PY'
import glob, os, re, subprocess, sys, tempfile, time
from pathlib import Path
import tiktoken, tokenizers
from tiktoken.load import load_tiktoken_bpe
sys.path.insert(0, ".")
from analysis import hf_tokenizer as h

threads, repeat = int(sys.argv[1]), int(sys.argv[2])
files = sorted(glob.glob("data/corpus/*.txt"))
texts = [Path(f).read_bytes().decode("utf-8") for f in files]
mb = sum(len(t.encode()) for t in texts) / 1e6
work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))


def best(fn):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t0)
    return min(times), n


def hf_speed(hf, t):
    """Hugging Face's tokenizers: per file on 1 thread, encode_batch over the files on more."""
    if t == 1:
        return best(lambda: sum(len(hf.encode(x, add_special_tokens=False).ids) for x in texts))
    return best(lambda: sum(len(e.ids) for e in hf.encode_batch(texts, add_special_tokens=False)))


def triad(vocab, t):
    secs, n = [], 0
    for _ in range(repeat):
        out = subprocess.run(["build/triad-tokenize", "shards", "--vocab", str(vocab), "--out",
                              str(work / "shards"), "--val-fraction", "0", "--threads", str(t),
                              *files], capture_output=True, text=True, check=True).stdout
        secs.append(float(re.search(r"\(encode ([0-9.]+) s", out).group(1)))
        n = int(re.search(r"tokens:\s+(\d+)", out).group(1)) - len(files)  # less the separators
    return min(secs), n


def descriptions():
    gpt2 = work / "gpt2.triad"
    gpt2.write_text(f"triad-tokenizer 1\nranks {Path('data/vocab/gpt2.tiktoken').resolve()}\n"
                    "ranks_count 50256\npretokenizer gpt2\nspecial 50256 <|endoftext|>\n"
                    "document_start <|endoftext|>\nstop <|endoftext|>\n")
    subprocess.run([sys.executable, "-m", "analysis.convert_weights", "tokenizer",
                    "--meta-llama3", "data/vocab/llama3.tiktoken", str(work / "llama3")],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "analysis.convert_weights", "tokenizer",
                    "--tekken", "data/vocab/tekken.json", str(work / "tekken")],
                   check=True, capture_output=True)
    return {"gpt2": (Path("data/vocab/gpt2.tiktoken"), gpt2),
            "llama3": (work / "llama3" / "tokenizer.triad", work / "llama3" / "tokenizer.triad"),
            "tekken": (work / "tekken" / "tokenizer.triad", work / "tekken" / "tokenizer.triad")}


rows = []
for name, (vocab, desc) in descriptions().items():
    d = h.read_description(desc)
    enc = tiktoken.Encoding(name, pat_str=h.PATTERNS[d.pretokenizer],
                            mergeable_ranks={t: i for i, t in d.ranked.items()}, special_tokens={})
    hf = tokenizers.Tokenizer.from_str(h.hf_files(d, 1024)["tokenizer.json"])
    hf.encode_special_tokens = True
    for t in sorted({1, threads}):
        tr, n = triad(vocab, t)
        if t == 1:
            tk, n_tk = best(lambda: sum(len(enc.encode_ordinary(x)) for x in texts))
        else:
            tk, n_tk = best(lambda: sum(map(len, enc.encode_ordinary_batch(texts, num_threads=t))))
        hs, n_hf = hf_speed(hf, t)
        assert n == n_tk, (name, t, n, n_tk)
        # Hugging Face's Split runs its regex in Oniguruma: a few pieces may differ on rare
        # characters, so only the count is reported there.
        rows.append((name, t, n, mb / tr, mb / tk, mb / hs, n_hf))

print(f"corpus: {len(files)} files, {mb:.2f} MB; best of {repeat}; MB/s of encoding")
print(f"{'tokenizer':9} {'threads':>7} {'tokens':>9} {'triad':>8} {'tiktoken':>9} "
      f"{'HF tok.':>8} {'triad/tiktoken':>15} {'triad/HF':>9}")
for name, t, n, a, b, c, n_hf in rows:
    note = "" if n_hf == n else f"  (HF: {n_hf} tokens)"
    print(f"{name:9} {t:7d} {n:9d} {a:8.1f} {b:9.1f} {c:8.1f} {a / b:15.2f} {a / c:9.2f}{note}")

# DeepSeek's pre-tokenizers (sequences of Splits, which tiktoken cannot express) over GPT-2's
# ranks, against the tokenizer.json triad writes for them in Hugging Face's tokenizers, the
# reference they were built to: its token count must be triad's.
rows = []
for scheme in h.SPLIT_SEQUENCES:
    desc = work / f"{scheme}.triad"
    desc.write_text(f"triad-tokenizer 1\nranks {Path('data/vocab/gpt2.tiktoken').resolve()}\n"
                    f"ranks_count 50256\npretokenizer {scheme}\nspecial 50256 <|endoftext|>\n"
                    "document_start <|endoftext|>\nstop <|endoftext|>\n")
    hf = tokenizers.Tokenizer.from_str(h.hf_files(h.read_description(desc), 1024)["tokenizer.json"])
    hf.encode_special_tokens = True
    for t in sorted({1, threads}):
        tr, n = triad(desc, t)
        hs, n_hf = hf_speed(hf, t)
        assert n == n_hf, (scheme, t, n, n_hf)
        rows.append((scheme, t, n, mb / tr, mb / hs))
print(f"\n{'tokenizer':14} {'threads':>7} {'tokens':>9} {'triad':>8} {'HF tok.':>8} {'triad/HF':>9}")
for name, t, n, a, c in rows:
    print(f"{name:14} {t:7d} {n:9d} {a:8.1f} {c:8.1f} {a / c:9.2f}")

# Mistral 7B v0.1's SentencePiece BPE (Llama 2's scheme): converted by triad-convert from the
# model; sentencepiece reads the model itself; Hugging Face's tokenizers the tokenizer.json
# transformers makes from it (the legacy Prepend + Replace form of the Hub's files).
import sentencepiece as spm
import transformers
model = "data/vocab/mistral-v1.model"
subprocess.run([sys.executable, "-m", "analysis.convert_weights", "tokenizer", "--sentencepiece",
                model, str(work / "mistral")], check=True, capture_output=True)
slow = transformers.LlamaTokenizer(vocab_file=model, legacy=True)
transformers.LlamaTokenizerFast(__slow_tokenizer=slow, legacy=True, from_slow=True) \
    .save_pretrained(str(work / "mistral-hf"))
sp = spm.SentencePieceProcessor(model_file=model)
hf = tokenizers.Tokenizer.from_file(str(work / "mistral-hf" / "tokenizer.json"))
want = sum(len(sp.encode(x)) for x in texts)
rows = []
for t in sorted({1, threads}):
    tr, n = triad(work / "mistral" / "tokenizer.triad", t)
    if t == 1:
        ss, n_sp = best(lambda: sum(len(sp.encode(x)) for x in texts))
    else:
        ss, n_sp = best(lambda: sum(map(len, sp.encode(texts, num_threads=t))))
    hs, n_hf = hf_speed(hf, t)
    assert n == n_sp == n_hf == want, (t, n, n_sp, n_hf, want)
    rows.append((t, n, mb / tr, mb / ss, mb / hs))
print(f"\n{'tokenizer':9} {'threads':>7} {'tokens':>9} {'triad':>8} {'sentencepiece':>14} "
      f"{'HF tok.':>8} {'triad/sentencepiece':>20} {'triad/HF':>9}")
for t, n, a, b, c in rows:
    print(f"{'mistral':9} {t:7d} {n:9d} {a:8.1f} {b:14.1f} {c:8.1f} {a / b:20.2f} {a / c:9.2f}")

# Fine-tuning data: conversations (the corpus's paragraphs as user and assistant turns, 4 per
# conversation) in JSON Lines, to shards with loss masks (triad-tokenize shards --chat) against
# the reference encoders' training form on the same lines, JSON parsing included: Mistral's
# mistral_common (encode_instruct, v3 SentencePiece) and Meta's llama_models (encode_message per
# message, tiktoken underneath) on one thread. Both must give triad's token count.
import json
import shutil
from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
from mistral_common.tokens.instruct.request import InstructRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from llama_models.datatypes import RawMessage
from llama_models.llama3.chat_format import ChatFormat
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
paragraphs = [p.strip() for t in texts for p in t.split("\n\n") if p.strip()]
roles = ["user", "assistant"] * 2
lines = [json.dumps({"messages": [{"role": r, "content": c}
                                  for r, c in zip(roles, paragraphs[i:i + 4])]})
         for i in range(0, len(paragraphs) - 3, 4)]
chats = work / "chats.jsonl"
chats.write_text("\n".join(lines) + "\n")
chat_mb = chats.stat().st_size / 1e6
subprocess.run([sys.executable, "-m", "analysis.convert_weights", "tokenizer", "--sentencepiece",
                "data/vocab/mistral-v3.model", str(work / "mistral3")], check=True, capture_output=True)
shutil.copy("data/vocab/mistral-v3.model", work / "tokenizer.model.v3")
mistral = MistralTokenizer.from_file(str(work / "tokenizer.model.v3")).instruct_tokenizer
meta = ChatFormat(MetaTokenizer(Path("data/vocab/llama3.tiktoken")))


def triad_chat(vocab, t):
    secs, n = [], 0
    for _ in range(repeat):
        out = subprocess.run(["build/triad-tokenize", "shards", "--vocab", str(vocab), "--out",
                              str(work / "chat-shards"), "--val-fraction", "0", "--threads",
                              str(t), "--chat", "auto", str(chats)],
                             capture_output=True, text=True, check=True).stdout
        secs.append(float(re.search(r"\(encode ([0-9.]+) s", out).group(1)))
        n = int(re.search(r"tokens:\s+(\d+)", out).group(1))
    return min(secs), n


def mistral_chat():
    n = 0
    for line in chats.read_text().splitlines():
        m = json.loads(line)["messages"]
        n += len(mistral.encode_instruct(InstructRequest(messages=[
            (UserMessage if x["role"] == "user" else AssistantMessage)(content=x["content"])
            for x in m])).tokens)
    return n


def meta_chat():
    n = 0
    for line in chats.read_text().splitlines():
        n += 1 + sum(len(meta.encode_message(RawMessage(**x), None)[0])
                     for x in json.loads(line)["messages"])
    return n


rows = []
for name, vocab, peer in [("mistral3", work / "mistral3" / "tokenizer.triad", mistral_chat),
                          ("llama3", work / "llama3" / "tokenizer.triad", meta_chat)]:
    ps, n_peer = best(peer)
    for t in sorted({1, threads}):
        tr, n = triad_chat(vocab, t)
        assert n == n_peer, (name, t, n, n_peer)
        rows.append((name, t, n, chat_mb / tr, chat_mb / ps))
print(f"\nconversations: {len(lines)} ({chat_mb:.2f} MB of JSON Lines); MB/s, JSON parsing included")
print(f"{'tokenizer':9} {'threads':>7} {'tokens':>9} {'triad':>8} {'reference (1 thread)':>21} "
      f"{'triad/reference':>16}")
for name, t, n, a, b in rows:
    print(f"{name:9} {t:7d} {n:9d} {a:8.1f} {b:21.1f} {a / b:16.1f}")
PY
