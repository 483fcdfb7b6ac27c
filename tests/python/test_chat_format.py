"""Chat prompts (`triad-tokenize chat`, `triad-generate --chat`) against the reference encoders:
mistral_common's encode_chat_completion for Mistral's v1, v3 and v7 SentencePiece tokenizers and
its v3 Tekken one, and Meta's ChatFormat (llama_models) for Llama 3."""

import json
import shutil

import pytest

from test_tokenizer_llama3 import cli
from triad_run import (REPO, assert_clean_error, exe, greedy_continuation, import_random_model,
                       run, tool)

VOCAB = REPO / "data" / "vocab"
MESSAGES = ["Hello world", "  two leading spaces and a trailing one ", "Ünïcödé 漢字 🙂",
            "lines\n\nand\ttabs", "[INST] not a token [/INST] <s>", "x"]


def need(path):
    if not path.exists():
        pytest.fail(f"{path} does not exist: run jobs/setup.sh (it fetches Mistral's and Meta's "
                    f"tokenizer files)")


def convert(src, out, *flags):
    p = tool("triad-convert", "tokenizer", *flags, src, out, timeout=300)
    assert p.returncode == 0, p.stderr
    return out / "tokenizer.triad"


def chat(desc, user, system="", fmt=None):
    args = ["chat", "--vocab", desc, "--system", system] + (["--format", fmt] if fmt else [])
    return [int(t) for t in cli(*args, data=user.encode()).split()]


# Mistral's tokenizer files: the file, triad-convert's flag, and the name mistral_common needs
# (it tells the version from the file name).
MISTRAL = {"v1": ("mistral-v1.model", "--sentencepiece", "tokenizer.model.v1"),
           "v3": ("mistral-v3.model", "--sentencepiece", "tokenizer.model.v3"),
           "v7": ("mistral-v7.model", "--sentencepiece", "tokenizer.model.v7"),
           "tekken": ("tekken.json", "--tekken", "tekken.json")}


def mistral_pair(tmp_path, name):
    """mistral_common's tokenizer for Mistral's file `name`, and triad's description of it."""
    mc = pytest.importorskip("mistral_common.tokens.tokenizers.mistral")
    file, flag, ref_name = MISTRAL[name]
    need(VOCAB / file)
    shutil.copy(VOCAB / file, tmp_path / ref_name)
    return (mc.MistralTokenizer.from_file(str(tmp_path / ref_name)),
            convert(VOCAB / file, tmp_path / "tok", flag))


@pytest.mark.parametrize("name,fmt", [("v1", None), ("v3", "mistral_v3"), ("v7", "mistral_v7"),
                                      ("tekken", "mistral_v3")])
def test_mistral_chat_prompts_match_mistral_common(tmp_path, name, fmt):
    from mistral_common.protocol.instruct.messages import SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    ref, desc = mistral_pair(tmp_path, name)
    assert (f"chat {fmt}\n" in desc.read_text()) == (fmt is not None)
    fmt = fmt or "mistral_v1"  # Mistral 7B Instruct v0.1's, which its tokenizer cannot tell
    for user in MESSAGES:
        for system in ["", "Be brief.", "Answer in French.\nAlways."]:
            msgs = ([SystemMessage(content=system)] if system else []) + [UserMessage(content=user)]
            want = ref.encode_chat_completion(ChatCompletionRequest(messages=msgs)).tokens
            assert chat(desc, user, system, fmt) == want, (user, system)


def test_llama3_chat_prompts_match_meta(tmp_path):
    pytest.importorskip("llama_models")
    from llama_models.datatypes import RawMessage
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer
    need(VOCAB / "llama3.tiktoken")
    ref = ChatFormat(Tokenizer(VOCAB / "llama3.tiktoken"))
    desc = convert(VOCAB / "llama3.tiktoken", tmp_path / "tok", "--meta-llama3")
    assert "chat llama3\n" in desc.read_text()
    for user in MESSAGES:
        for system in ["", "Be brief."]:
            msgs = ([RawMessage(role="system", content=system)] if system else []) + \
                [RawMessage(role="user", content=user)]
            assert chat(desc, user, system) == ref.encode_dialog_prompt(msgs).tokens


def test_chat_errors(tmp_path):
    desc = convert(VOCAB / "mistral-v1.model", tmp_path / "tok", "--sentencepiece")
    p = run([exe("triad-tokenize"), "chat", "--vocab", desc], input="hi")
    assert_clean_error(p, "names no chat format: give --format")
    p = run([exe("triad-tokenize"), "chat", "--vocab", desc, "--format", "mistral_v3"],
            input="hi")
    assert_clean_error(p, "chat format mistral_v3", "has no special token [INST]")
    p = run([exe("triad-tokenize"), "chat", "--vocab", desc, "--format", "deepseek3"],
            input="hi")
    assert_clean_error(p, "chat format deepseek3", "has no special token <｜begin▁of▁sentence｜>")
    p = run([exe("triad-tokenize"), "chat", "--vocab", desc, "--format", "alpaca"], input="hi")
    assert_clean_error(p, "unknown --format 'alpaca'")
    bad = tmp_path / "bad.triad"
    bad.write_text(desc.read_text() + "chat zephyr\n")
    (tmp_path / "tokenizer.pieces").write_bytes((desc.parent / "tokenizer.pieces").read_bytes())
    (tmp_path / "tokenizer.merges").write_bytes((desc.parent / "tokenizer.merges").read_bytes())
    p = run([exe("triad-tokenize"), "chat", "--vocab", bad, "--format", "mistral_v1"],
            input="hi")
    assert_clean_error(p, str(bad), "unknown chat format 'zephyr'")
    # triad-convert --chat sets or removes the line.
    d2 = convert(VOCAB / "mistral-v1.model", tmp_path / "tok2", "--sentencepiece", "--chat",
                 "mistral_v1")
    assert chat(d2, "hi") == chat(desc, "hi", fmt="mistral_v1")


def test_generate_chat_continues_the_reference_prompt(tmp_path):
    """A random MistralForCausalLM with the v3 tokenizer: triad-generate --chat auto continues the
    prompt mistral_common encodes as transformers does (greedily, float64), and prints the reply
    alone."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    mc = pytest.importorskip("mistral_common.tokens.tokenizers.mistral")
    from mistral_common.protocol.instruct.messages import SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    need(VOCAB / "mistral-v3.model")
    shutil.copy(VOCAB / "mistral-v3.model", tmp_path / "tokenizer.model.v3")
    ref = mc.MistralTokenizer.from_file(str(tmp_path / "tokenizer.model.v3"))
    desc = convert(VOCAB / "mistral-v3.model", tmp_path / "tok", "--sentencepiece")
    torch.manual_seed(8)
    model = transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=32768, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False, sliding_window=None)).eval()
    ckpt = import_random_model(model, tmp_path)
    ids = ref.encode_chat_completion(ChatCompletionRequest(messages=[
        SystemMessage(content="Be brief."), UserMessage(content="Hello world")])).tokens
    want = greedy_continuation(model, ids, 8)
    if 2 in want:  # the reply ends at </s>
        want = want[:want.index(2) + 1]
    args = [exe("triad-generate"), "--checkpoint", ckpt, "--vocab", desc, "--chat", "auto",
            "--system", "Be brief.", "--prompt", "Hello world", "--length", "8", "--top-k", "1"]
    p = run(args + ["--output", "ids"], check=True, timeout=300)
    assert [int(t) for t in p.stdout.split()] == want
    p = run(args, check=True, timeout=300)
    reply = [t for t in want if t != 2]
    assert p.stdout == cli("decode", "--vocab", desc,
                           data=" ".join(map(str, reply)).encode()).decode() + "\n"
    # A conversation (--messages): the next reply to its prompt, as mistral_common encodes it.
    from mistral_common.protocol.instruct.messages import AssistantMessage
    conv = [SystemMessage(content="Be brief."), UserMessage(content="Hi"),
            AssistantMessage(content="Hello."), UserMessage(content="Name a river.")]
    ids = ref.encode_chat_completion(ChatCompletionRequest(messages=conv)).tokens
    want = greedy_continuation(model, ids, 8)
    if 2 in want:
        want = want[:want.index(2) + 1]
    line = json.dumps({"messages": [{"role": m.role, "content": m.content} for m in conv]})
    (tmp_path / "conv.jsonl").write_text(line + "\n")
    base = [exe("triad-generate"), "--checkpoint", ckpt, "--vocab", desc]
    p = run(base + ["--chat", "auto", "--messages", tmp_path / "conv.jsonl", "--length", "8",
                    "--top-k", "1", "--output", "ids"], check=True, timeout=300)
    assert [int(t) for t in p.stdout.split()] == want
    assert_clean_error(run(base + ["--messages", tmp_path / "conv.jsonl"]), "--messages needs --chat")
    assert_clean_error(run(base + ["--chat", "auto", "--messages", tmp_path / "conv.jsonl",
                                   "--prompt", "hi"]), "drop --prompt and --system")
    (tmp_path / "two.jsonl").write_text(line + "\n" + line + "\n")
    assert_clean_error(run(base + ["--chat", "auto", "--messages", tmp_path / "two.jsonl"]),
                       "2 conversations; give one")
    p = run([exe("triad-generate"), "--checkpoint", ckpt, "--vocab", desc, "--system", "x"])
    assert_clean_error(p, "--system needs --chat")
    p = run([exe("triad-generate"), "--checkpoint", ckpt, "--vocab", desc, "--chat", "auto",
             "--prompt-ids", "1 2"])
    assert_clean_error(p, "--chat formats --prompt, not --prompt-ids")
    p = run([exe("triad-generate"), "--checkpoint", ckpt, "--vocab", desc, "--chat", "zephyr",
             "--prompt", "hi"])
    assert_clean_error(p, "unknown --chat 'zephyr'")
