"""`triad-tokenize shards --chat`: JSON Lines conversations to token shards and loss masks,
against the reference encoders' training form — mistral_common's encode_instruct for Mistral's
v1, v3 and v7 SentencePiece tokenizers and its Tekken one, Meta's encode_message (llama_models)
for Llama 3 — with the mask counting exactly the tokens each reference emits for the assistant
replies (mistral_common's encode_assistant_message; Meta's message after its header). Then a
fine-tuning run on such shards, and the refusals."""

import json

import numpy as np
import pytest

from test_chat_format import VOCAB, convert, mistral_pair, need
from triad_run import assert_clean_error, exe, run, tiny_config, tool, train

CONVERSATIONS = [
    [("user", "Hello world"), ("assistant", "Hi! How can I help?")],
    [("system", "Be brief."), ("user", "Name a colour."), ("assistant", "Blue."),
     ("user", "Another?"), ("assistant", "Green.  ")],  # trailing spaces: v3+ drop them
    [("user", "  two leading spaces"), ("assistant", " a leading space"),
     ("user", "Ünïcödé 漢字 🙂"), ("assistant", "lines\n\nand\ttabs"),
     ("user", "[INST] not a token [/INST] <s>"), ("assistant", "x")],
    [("system", "Answer in French.\nAlways."), ("user", "Hi"), ("assistant", "Bonjour")],
    [("system", ""), ("user", "q"), ("assistant", "r")],  # an empty system message, given
]


def write_jsonl(path, conversations, field="messages"):
    with open(path, "w", encoding="utf-8") as f:
        for conv in conversations:
            f.write(json.dumps({"id": 1, field: [{"role": r, "content": c} for r, c in conv]},
                               ensure_ascii=False) + "\n")


def read_ids_and_mask(path):
    head = np.fromfile(path, dtype="<i4", count=256)
    ids = np.fromfile(path, dtype="<u2" if head[0] == 20240520 else "<u4", offset=1024)
    mhead = np.fromfile(str(path) + ".mask", dtype="<i4", count=256)
    assert list(mhead[:3]) == [20261130, 1, ids.size]
    mask = np.fromfile(str(path) + ".mask", dtype=np.uint8, offset=1024)
    assert mask.size == ids.size
    return ids.tolist(), mask.tolist()


def shards(desc, jsonl, out, *flags):
    p = run([str(a) for a in (exe("triad-tokenize"), "shards", "--vocab", desc, "--out", out,
                              "--val-fraction", 0, *flags, jsonl)], timeout=300)
    assert p.returncode == 0, p.stderr
    return p


def mistral_reference(tok, version, conv):
    """(ids, counts) by mistral_common's instruct tokenizer, message by message as its
    encode_instruct goes (which the ids are checked against)."""
    from mistral_common.protocol.instruct.messages import (AssistantMessage, SystemMessage,
                                                           UserMessage)
    from mistral_common.tokens.instruct.request import InstructRequest
    it = tok.instruct_tokenizer
    system = next((c for r, c in conv if r == "system"), None)
    turns = [UserMessage(content=c) if r == "user" else AssistantMessage(content=c)
             for r, c in conv if r != "system"]
    messages = ([SystemMessage(content=system)] if version == "v7" and system is not None
                else []) + turns
    request = InstructRequest(messages=messages,
                              system_prompt=None if version == "v7" else system)
    want = it.encode_instruct(request).tokens
    users = [i for i, m in enumerate(messages) if isinstance(m, UserMessage)]
    ids, counts = list(it.start()), [0] * len(it.start())
    for i, m in enumerate(messages):
        if isinstance(m, UserMessage):
            t, _ = it.encode_user_message(m, None, i == users[-1], i == users[0],
                                          system_prompt=request.system_prompt)
        elif isinstance(m, AssistantMessage):
            t = it.encode_assistant_message(m, False)
        else:
            t = it.encode_system_message(m)
        ids += t
        counts += [1 if isinstance(m, AssistantMessage) else 0] * len(t)
    assert ids == want  # the walk above is encode_instruct's
    return ids, counts


@pytest.mark.parametrize("name,fmt", [("v1", "mistral_v1"), ("v3", "auto"), ("v7", "auto"),
                                      ("tekken", "auto")])
def test_mistral_conversations_match_mistral_common(tmp_path, name, fmt):
    ref, desc = mistral_pair(tmp_path, name)
    write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS)
    p = shards(desc, tmp_path / "chat.jsonl", tmp_path / "out", "--chat", fmt)
    assert f"conversations: {len(CONVERSATIONS)}" in p.stdout, p.stdout
    version = "v7" if name == "v7" else "v3" if name in ("v3", "tekken") else "v1"
    check_stream(p, tmp_path / "out", [mistral_reference(ref, version, c) for c in CONVERSATIONS])


def check_stream(p, out, examples):
    """The one shard in out holds the (ids, counts) examples in order, its mask the counts."""
    ids, mask = read_ids_and_mask(out / "tokens_train_000000.bin")
    assert ids == [t for i, _ in examples for t in i]
    assert mask == [c for _, m in examples for c in m]
    assert f"{sum(mask)} of them counted" in p.stdout


def test_llama3_conversations_match_meta(tmp_path):
    pytest.importorskip("llama_models")
    from llama_models.datatypes import RawMessage
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer
    need(VOCAB / "llama3.tiktoken")
    ref = ChatFormat(Tokenizer(VOCAB / "llama3.tiktoken"))
    desc = convert(VOCAB / "llama3.tiktoken", tmp_path / "tok", "--meta-llama3")
    write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS, field="conversation")
    p = shards(desc, tmp_path / "chat.jsonl", tmp_path / "out", "--chat", "llama3", "--field",
               "conversation")
    header = len(ref._encode_header("assistant"))

    def want(conv):
        ids, counts = [ref.tokenizer.special_tokens["<|begin_of_text|>"]], [0]
        for role, content in conv:
            t, _ = ref.encode_message(RawMessage(role=role, content=content), None)
            ids += t
            counts += [0] * len(t) if role != "assistant" else [0] * header + [1] * (len(t) - header)
        return ids, counts

    check_stream(p, tmp_path / "out", [want(c) for c in CONVERSATIONS])
    ids, _ = read_ids_and_mask(tmp_path / "out" / "tokens_train_000000.bin")
    assert ids.count(128006) == sum(len(c) for c in CONVERSATIONS)  # a header per message


def test_chat_shards_fine_tune_with_masks_and_replace_stale_masks(tmp_path):
    """Shards with masks split into train and val (the mask cut with the tokens), train with
    data.loss_mask = require; a later plain run with the same prefix removes the masks."""
    need(VOCAB / "mistral-v3.model")
    desc = convert(VOCAB / "mistral-v3.model", tmp_path / "tok", "--sentencepiece")
    write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS * 40)
    out = tmp_path / "sft"
    p = run([str(a) for a in (exe("triad-tokenize"), "shards", "--vocab", desc, "--out", out,
                              "--chat", "auto", "--val-fraction", 0.2, "--shard-tokens", 2000,
                              tmp_path / "chat.jsonl")], timeout=300)
    assert p.returncode == 0, p.stderr
    bins = sorted(out.glob("*.bin"))
    assert len(bins) >= 3 and all((out / (b.name + ".mask")).exists() for b in bins)
    stream = [read_ids_and_mask(b) for b in bins if "_train_" in b.name] + \
        [read_ids_and_mask(b) for b in bins if "_val_" in b.name]
    ids = sum((s[0] for s in stream), [])
    mask = sum((s[1] for s in stream), [])
    one = len(ids) // 40
    assert ids == ids[:one] * 40 and mask == mask[:one] * 40  # cut with the tokens

    cfg = tiny_config(tmp_path, name="sft", vocab=32768, model__seq_len=32, train__steps=3,
                      train__batch_size=4, train__micro_batch_size=4, eval__every=0,
                      eval__sequences=4, data__train=f"{out}/tokens_train_*.bin",
                      data__val=f"{out}/tokens_val_*.bin", data__loss_mask="require",
                      data__vocab=desc)
    t = train("--config", cfg, check=True)
    assert "shard(s) with loss masks" in t.stdout, t.stdout

    (tmp_path / "plain.txt").write_text("plain text " * 400)
    p = run([str(a) for a in (exe("triad-tokenize"), "shards", "--vocab", desc, "--out", out,
                              "--val-fraction", 0.2, tmp_path / "plain.txt")], timeout=300)
    assert p.returncode == 0, p.stderr
    assert not list(out.glob("*.mask")), "masks of the chat run were left beside new shards"
    assert "mask(s) of an earlier run" in p.stdout


@pytest.mark.parametrize("line,needle", [
    ('{"messages": [{"role": "assistant", "content": "hi"}]}',
     "line 2: message 1: role 'assistant' where the user's turn is"),
    ('{"messages": [{"role": "user", "content": "hi"}]}',
     "line 2: the conversation ends with the user's message; it must end with an assistant reply"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
     "line 2: message 2: role 'user' where the assistant's turn is"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}',
     "line 2: message 2: role 'tool' (expected system, user or assistant)"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}',
     "line 2: message 2: an empty assistant reply"),
    ('{"messages": [{"role": "user"}]}', "line 2: message 1 has no \"content\""),
    ('{"messages": [{"role": "user", "content": null}]}', "line 2: message 1: \"content\" is not"),
    ('{"messages": "hi"}', "line 2: field \"messages\" is not an array of messages"),
    ('{"text": "hi"}', "line 2: no \"messages\" field"),
    ('{"messages": []}', "line 2: a conversation without messages"),
    ('{"messages": [{"role": "user", "content": "a"},]}', "line 2: expected a message object"),
])
def test_bad_conversations_are_refused_naming_the_line(tmp_path, line, needle):
    need(VOCAB / "mistral-v3.model")
    desc = convert(VOCAB / "mistral-v3.model", tmp_path / "tok", "--sentencepiece")
    good = json.dumps({"messages": [{"role": "user", "content": "a"},
                                    {"role": "assistant", "content": "b"}]})
    (tmp_path / "c.jsonl").write_text(good + "\n" + line + "\n")
    p = run([exe("triad-tokenize"), "shards", "--vocab", desc, "--out", tmp_path / "o", "--chat",
             "auto", tmp_path / "c.jsonl"])
    assert_clean_error(p, "c.jsonl", needle)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_chat_option_errors(tmp_path):
    desc = convert(VOCAB / "mistral-v1.model", tmp_path / "tok", "--sentencepiece")
    (tmp_path / "c.jsonl").write_text("")
    base = [exe("triad-tokenize"), "shards", "--vocab", desc, "--out", tmp_path / "o"]
    assert_clean_error(run(base + ["--chat", "auto", tmp_path / "c.jsonl"]),
                       "names no chat format: give --chat")
    assert_clean_error(run(base + ["--chat", "alpaca", tmp_path / "c.jsonl"]), "unknown --chat")
    assert_clean_error(run(base + ["--chat", "mistral_v1", "--jsonl", tmp_path / "c.jsonl"]),
                       "drop --jsonl")
    assert_clean_error(run(base + ["--document-start", tmp_path / "c.jsonl"]),
                       "--document-start applies to --chat input only")
    write_jsonl(tmp_path / "c.jsonl", CONVERSATIONS[:1])
    assert_clean_error(run([exe("triad-tokenize"), "shards", "--vocab", VOCAB / "gpt2.tiktoken",
                            "--out", tmp_path / "o", "--chat", "llama3", tmp_path / "c.jsonl"]),
                       "c.jsonl, line 1: chat format llama3", "no special token <|begin_of_text|>")


# ---- ChatML (Qwen2, Qwen3, SmolLM2) -------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen2_chat(tmp_path_factory):
    """Qwen2's tokenizer (Qwen's 151,643 ranks, NFC, the qwen2 split; <|endoftext|>,
    <|im_start|>, <|im_end|> after them) with Qwen2 Instruct's chat template, the one
    transformers ships as Qwen2-Audio's default, imported by triad-convert tokenizer; and the
    reference: tiktoken on the template's text, rendered by transformers' jinja2 environment."""
    pytest.importorskip("transformers")
    tiktoken = pytest.importorskip("tiktoken")
    unicodedata2 = pytest.importorskip("unicodedata2")
    from tiktoken.load import load_tiktoken_bpe
    from transformers.models.qwen2_audio.processing_qwen2_audio import Qwen2AudioProcessor
    from transformers.utils.chat_template_utils import _compile_jinja_template

    from analysis import hf_tokenizer
    qwen = VOCAB / "qwen.tiktoken"
    need(qwen)
    d = tmp_path_factory.mktemp("qwen2chat")
    ranked = {r: t for t, r in hf_tokenizer.read_ranks(qwen).items()}
    n = len(ranked)
    specials = {"<|endoftext|>": n, "<|im_start|>": n + 1, "<|im_end|>": n + 2}
    src = hf_tokenizer.Description(ranked, "qwen2", specials, "<|endoftext|>", None,
                                   ["<|endoftext|>", "<|im_end|>"], "nfc")
    template = Qwen2AudioProcessor.default_chat_template.fget(None)
    for name, text in hf_tokenizer.hf_files(src, 32768).items():
        if name == "tokenizer_config.json":
            text = json.dumps(dict(json.loads(text), chat_template=template))
        (d / "hf" / name).parent.mkdir(exist_ok=True)
        (d / "hf" / name).write_text(text, encoding="utf-8")
    p = tool("triad-convert", "tokenizer", d / "hf", d / "triad", timeout=300)
    assert p.returncode == 0, p.stderr
    enc = tiktoken.Encoding("qwen", pat_str=hf_tokenizer.PATTERNS["qwen2"],
                            mergeable_ranks=load_tiktoken_bpe(str(qwen)), special_tokens=specials)
    render = _compile_jinja_template(template)

    def reference(messages, prompt):
        """ids and per-token counts: the template's text encoded by tiktoken; a token counts if
        its characters overlap an assistant reply or its <|im_end|> (tiktoken's offsets)."""
        def text_of(msgs, gen):
            return unicodedata2.normalize("NFC", render.render(
                messages=[{"role": r, "content": c} for r, c in msgs], add_generation_prompt=gen))
        spans = []
        for k, (role, _) in enumerate(messages):
            if role == "assistant":
                start = len(text_of(messages[:k], True))
                spans.append((start, len(text_of(messages[:k + 1], False)) - 1))  # not the "\n"
        return ids_and_counts(enc, text_of(messages, prompt), spans)

    return d / "triad" / "tokenizer.triad", reference


def ids_and_counts(enc, text, spans):
    """A rendered template's text encoded by tiktoken enc (special tokens' texts as the tokens),
    and for each token whether its characters overlap one of spans (the replies)."""
    ids = enc.encode(text, allowed_special="all")
    _, offsets = enc.decode_with_offsets(ids)
    ends = offsets[1:] + [len(text)]
    return ids, [int(any(b > s and a < e for s, e in spans)) for a, b in zip(offsets, ends)]


CHATML_CONVERSATIONS = CONVERSATIONS + [
    [("user", "Why?"), ("assistant", "\n\nA reply that starts with blank lines")],
]


@pytest.mark.parametrize("fmt", ["auto", "chatml"])
def test_chatml_conversations_match_qwen2_template(tmp_path, qwen2_chat, fmt):
    """chatml, and qwen2 (told from the template: auto) which adds Qwen2's default system
    message to a conversation without one; a reply starting with newlines shares a token with
    its header line, which counts."""
    desc, reference = qwen2_chat
    assert "chat qwen2\n" in desc.read_text()
    write_jsonl(tmp_path / "chat.jsonl", CHATML_CONVERSATIONS)
    p = shards(desc, tmp_path / "chat.jsonl", tmp_path / "out", "--chat", fmt)

    def want(conv):
        if fmt == "auto" or conv[0][0] == "system":
            return reference(conv, False)
        # chatml has no default system message: the template's output without it.
        i, c = reference([("system", "")] + conv, False)
        head = i.index(qwen2_im_end(desc)) + 2  # <|im_start|>system\n<|im_end|>\n
        return i[head:], c[head:]

    check_stream(p, tmp_path / "out", [want(c) for c in CHATML_CONVERSATIONS])


def test_chatml_conversations_with_document_starts(tmp_path, qwen2_chat):
    """--document-start: Qwen2's <|endoftext|> (the description's document start, not counted)
    before each conversation, the rest as the template's; a Mistral conversation, which begins
    with <s> (its document start) already, gets none. (data.document_mask = that id then keeps
    the packed conversations apart: the mask itself is tested in test_reference_model.py.)"""
    desc, reference = qwen2_chat
    write_jsonl(tmp_path / "chat.jsonl", CHATML_CONVERSATIONS)
    p = shards(desc, tmp_path / "chat.jsonl", tmp_path / "out", "--chat", "auto",
               "--document-start")
    start = int(next(ln.split()[1] for ln in desc.read_text().splitlines()
                     if ln.startswith("special ") and ln.endswith("<|endoftext|>")))

    def want(conv):
        ids, counts = reference(conv, False)
        return [start] + ids, [0] + counts

    check_stream(p, tmp_path / "out", [want(c) for c in CHATML_CONVERSATIONS])
    ids, _ = read_ids_and_mask(tmp_path / "out" / "tokens_train_000000.bin")
    assert ids.count(start) == len(CHATML_CONVERSATIONS)

    mistral = convert(VOCAB / "mistral-v3.model", tmp_path / "m", "--sentencepiece")
    write_jsonl(tmp_path / "m.jsonl", CONVERSATIONS)
    plain = shards(mistral, tmp_path / "m.jsonl", tmp_path / "mo", "--chat", "mistral_v3")
    marked = shards(mistral, tmp_path / "m.jsonl", tmp_path / "mo2", "--chat", "mistral_v3",
                    "--document-start")
    assert (read_ids_and_mask(tmp_path / "mo" / "tokens_train_000000.bin") ==
            read_ids_and_mask(tmp_path / "mo2" / "tokens_train_000000.bin"))
    assert "tokens:" in plain.stdout and "tokens:" in marked.stdout


def qwen2_im_end(desc):
    return int(next(ln.split()[1] for ln in desc.read_text().splitlines()
                    if ln.startswith("special ") and ln.endswith("<|im_end|>")))


def test_chatml_prompts_match_qwen2_template(qwen2_chat):
    from test_chat_format import chat
    desc, reference = qwen2_chat
    for user in ["Hello world", "  two leading spaces and a trailing one ", "Ünïcödé 漢字 🙂"]:
        for system in ["", "Be brief."]:
            msgs = ([("system", system)] if system else []) + [("user", user)]
            assert chat(desc, user, system, "qwen2") == reference(msgs, True)[0]
            assert chat(desc, user, system) == reference(msgs, True)[0]  # auto: qwen2


def test_chat_format_told_from_templates():
    from analysis.hf_tokenizer import chat_format_of_template
    specials = {"<|im_start|>": 1, "<|im_end|>": 2, "<|start_header_id|>": 3}
    plain = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>"
             "\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert chat_format_of_template(plain, specials) == "chatml"
    qwen2 = "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}" + plain
    assert chat_format_of_template(qwen2, specials) == "qwen2"
    qwen25 = ("{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
              "helpful assistant.<|im_end|>\\n' }}" + plain)
    assert chat_format_of_template(qwen25, specials) is None  # a default triad has no format for
    assert chat_format_of_template(plain, {"<|im_start|>": 1}) is None  # no <|im_end|> token
    assert chat_format_of_template(None, specials) is None
    assert chat_format_of_template("<|start_header_id|>", specials) == "llama3"


# ---- DeepSeek-V3 ---------------------------------------------------------------------------------

DS_BOS, DS_EOS, DS_USER, DS_ASSISTANT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", \
    "<｜User｜>", "<｜Assistant｜>"
# DeepSeek-V3's chat format as its template writes a conversation without tools: the BOS, the
# system text, then each message after its role's token, a reply closed by the EOS; the reply
# opened by <｜Assistant｜>.
DEEPSEEK3_TEMPLATE = (
    "{{ bos_token }}{%- for m in messages -%}{%- if m['role'] == 'system' -%}{{ m['content'] }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{{ '" + DS_USER + "' + m['content'] }}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{ '" + DS_ASSISTANT + "' + m['content'] + '" + DS_EOS + "' }}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '" + DS_ASSISTANT + "' }}{%- endif -%}")


@pytest.fixture(scope="module")
def deepseek3_chat(tmp_path_factory):
    """A byte-level BPE with DeepSeek-V3's pre-tokenizer trained by Hugging Face's tokenizers,
    its BOS and EOS as special tokens and the roles' tokens as added ones (found in text), a
    post-processor that puts the BOS first and the template above in tokenizer_config.json,
    imported by triad-convert tokenizer; and the reference: the template rendered by
    transformers' jinja2 environment, encoded by tokenizers."""
    pytest.importorskip("transformers")
    from tokenizers import processors
    from transformers.utils.chat_template_utils import _compile_jinja_template

    from test_tokenizer_llama3 import train_hf
    d = tmp_path_factory.mktemp("deepseek3chat")
    (d / "hf").mkdir()
    tok = train_hf(d / "hf" / "tokenizer.json", "deepseek3")
    tok.add_special_tokens([DS_BOS, DS_EOS])
    tok.add_tokens([DS_USER, DS_ASSISTANT])
    bos = tok.token_to_id(DS_BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{DS_BOS} $A",
                                                       special_tokens=[(DS_BOS, bos)])
    tok.save(str(d / "hf" / "tokenizer.json"))
    (d / "hf" / "tokenizer_config.json").write_text(json.dumps(dict(
        bos_token=DS_BOS, eos_token=DS_EOS, chat_template=DEEPSEEK3_TEMPLATE)), encoding="utf-8")
    p = tool("triad-convert", "tokenizer", d / "hf", d / "triad", timeout=300)
    assert p.returncode == 0, p.stderr
    render = _compile_jinja_template(DEEPSEEK3_TEMPLATE)

    def text_of(msgs, gen):
        return render.render(messages=[{"role": r, "content": c} for r, c in msgs],
                             add_generation_prompt=gen, bos_token=DS_BOS)

    def reference(messages, prompt):
        """ids and per-token counts: a token counts if its characters overlap an assistant
        reply or the EOS after it."""
        text = text_of(messages, prompt)
        spans = [(len(text_of(messages[:k], True)), len(text_of(messages[:k + 1], False)))
                 for k, (role, _) in enumerate(messages) if role == "assistant"]
        enc = tok.encode(text, add_special_tokens=False)
        return enc.ids, [int(any(b > s and a < e for s, e in spans)) for a, b in enc.offsets]

    return d / "triad" / "tokenizer.triad", reference, tok


def test_deepseek3_conversations_and_prompts_match_its_template(tmp_path, deepseek3_chat):
    """deepseek3, told from the template: fine-tuning conversations (`shards --chat auto`: ids
    and loss mask), multi-turn and single-turn prompts, as the template renders them; the
    replies and their EOS count, the roles' tokens and the system text do not."""
    from test_chat_format import chat
    desc, reference, tok = deepseek3_chat
    text = desc.read_text()
    assert "chat deepseek3\n" in text
    assert f"added {tok.token_to_id(DS_USER)} {DS_USER}\n" in text
    write_jsonl(tmp_path / "chat.jsonl", CONVERSATIONS)
    p = shards(desc, tmp_path / "chat.jsonl", tmp_path / "out", "--chat", "auto")
    examples = [reference(c, False) for c in CONVERSATIONS]
    check_stream(p, tmp_path / "out", examples)
    ids, counts = examples[1]  # two replies: each reply's tokens and its EOS, nothing else
    eos = tok.token_to_id(DS_EOS)
    assert [i for i, c in zip(ids, counts) if c and i == eos] == [eos, eos]
    assert tok.decode([i for i, c in zip(ids, counts) if c and i != eos]) == "Blue.Green.  "
    assert prompts(desc, OPEN) == [reference(conv, True)[0] for conv in OPEN]
    for user in ["Hello world", "Ünïcödé 漢字 🙂"]:
        for system in ["", "Be brief."]:
            msgs = ([("system", system)] if system else []) + [("user", user)]
            assert chat(desc, user, system, "deepseek3") == reference(msgs, True)[0]


def test_deepseek3_told_only_from_its_template():
    """The chat line for DeepSeek-V3's template with its four tokens; none for R1's or V3.1's
    (which open or drop a reply's reasoning) or without the tokens."""
    from analysis.hf_tokenizer import chat_format_of_template
    specials = {DS_BOS: 0, DS_EOS: 1, DS_USER: 2, DS_ASSISTANT: 3}
    assert chat_format_of_template(DEEPSEEK3_TEMPLATE, specials) == "deepseek3"
    r1 = DEEPSEEK3_TEMPLATE.replace(f"'{DS_ASSISTANT}' }}}}", f"'{DS_ASSISTANT}<think>\\n' }}}}")
    assert r1 != DEEPSEEK3_TEMPLATE
    assert chat_format_of_template(r1, specials) is None
    assert chat_format_of_template(DEEPSEEK3_TEMPLATE, {DS_USER: 2, DS_ASSISTANT: 3}) is None


# ---- multi-turn prompts (triad-tokenize chat --messages, triad-generate --messages) -------------

def prompts(desc, conversations, fmt=None):
    """triad-tokenize chat --messages: each conversation's prompt ids."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/m.jsonl"
        write_jsonl(path, conversations)
        p = run([str(a) for a in (exe("triad-tokenize"), "chat", "--vocab", desc, "--messages",
                                  path, *(["--format", fmt] if fmt else []))])
    assert p.returncode == 0, p.stderr
    return [[int(t) for t in line.split()] for line in p.stdout.splitlines()]


# Every conversation without its last reply: it ends with the user's message.
OPEN = [c[:-1] for c in CONVERSATIONS]


@pytest.mark.parametrize("name", ["v1", "v3", "v7", "tekken"])
def test_multi_turn_prompts_match_mistral_common(tmp_path, name):
    from mistral_common.protocol.instruct.messages import (AssistantMessage, SystemMessage,
                                                           UserMessage)
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    ref, desc = mistral_pair(tmp_path, name)
    kind = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    want = [ref.encode_chat_completion(ChatCompletionRequest(
        messages=[kind[r](content=c) for r, c in conv])).tokens
        for conv in OPEN]
    assert prompts(desc, OPEN, "mistral_v1" if name == "v1" else None) == want


def test_multi_turn_prompts_match_meta_and_qwen2(tmp_path, qwen2_chat):
    pytest.importorskip("llama_models")
    from llama_models.datatypes import RawMessage
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer
    need(VOCAB / "llama3.tiktoken")
    ref = ChatFormat(Tokenizer(VOCAB / "llama3.tiktoken"))
    desc = convert(VOCAB / "llama3.tiktoken", tmp_path / "tok", "--meta-llama3")
    want = [ref.encode_dialog_prompt([RawMessage(role=r, content=c) for r, c in conv]).tokens
            for conv in OPEN]
    assert prompts(desc, OPEN) == want
    qdesc, reference = qwen2_chat
    assert prompts(qdesc, OPEN) == [reference(conv, True)[0] for conv in OPEN]


def test_messages_errors(tmp_path):
    need(VOCAB / "mistral-v3.model")
    desc = convert(VOCAB / "mistral-v3.model", tmp_path / "tok", "--sentencepiece")
    write_jsonl(tmp_path / "done.jsonl", CONVERSATIONS[:1])  # ends with a reply
    p = run([exe("triad-tokenize"), "chat", "--vocab", desc, "--messages", tmp_path / "done.jsonl"])
    assert_clean_error(p, "--messages", "done.jsonl, line 1",
                       "ends with the assistant's message; it must end with the user's")
    p = run([exe("triad-tokenize"), "chat", "--vocab", desc, "--messages", tmp_path / "none.jsonl"])
    assert_clean_error(p, "--messages", "none.jsonl: cannot open")
    p = run([exe("triad-tokenize"), "chat", "--vocab", desc, "--messages", tmp_path / "done.jsonl",
             "--system", "x"])
    assert_clean_error(p, "drop --system")


# ---- prompt and completion pairs (--jsonl --prompt-field) -----------------------------------

PAIRS = [("Q: What is 2+2?\nA:", " 4"), ("Translate to French: cheese\n", "fromage"),
         ("", "an empty prompt"), ("Ünïcödé 漢字 ", "🙂 and <|endoftext|> as text"),
         ("x", "")]


def test_prompt_completion_pairs_match_tiktoken_and_meta(tmp_path):
    """GPT-2 (tiktoken) and Llama 3 (Meta's tokenizer): the document start, the prompt, the
    completion encoded on its own and the first stop token; the mask counts the last two."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe
    with open(tmp_path / "pairs.jsonl", "w", encoding="utf-8") as f:
        for prompt, completion in PAIRS:
            f.write(json.dumps({"instruction": prompt, "output": completion, "n": 1}) + "\n")
    gpt2 = tiktoken.Encoding("gpt2", pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+"""
                             r"""| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                             mergeable_ranks=load_tiktoken_bpe(str(VOCAB / "gpt2.tiktoken")),
                             special_tokens={})
    cases = [(VOCAB / "gpt2.tiktoken", gpt2.encode_ordinary, 50256, 50256)]
    if pytest.importorskip("llama_models"):
        from llama_models.llama3.tokenizer import Tokenizer
        need(VOCAB / "llama3.tiktoken")
        meta = Tokenizer(VOCAB / "llama3.tiktoken")
        desc = convert(VOCAB / "llama3.tiktoken", tmp_path / "l3", "--meta-llama3")
        cases.append((desc, lambda s: meta.encode(s, bos=False, eos=False), 128000, 128001))
    for k, (vocab, encode, start, stop) in enumerate(cases):
        out = tmp_path / f"out{k}"
        p = shards(vocab, tmp_path / "pairs.jsonl", out, "--jsonl", "--prompt-field",
                   "instruction", "--field", "output")
        assert f"documents:    {len(PAIRS)} prompt and completion pairs" in p.stdout, p.stdout
        examples = []
        for prompt, completion in PAIRS:
            a, b = [start] + encode(prompt), encode(completion) + [stop]
            examples.append((a + b, [0] * len(a) + [1] * len(b)))
        check_stream(p, out, examples)


@pytest.mark.parametrize("line,args,needle", [
    ('{"prompt": "a"}', [], "line 2: no \"completion\" field"),
    ('{"completion": "a"}', [], "line 2: no \"prompt\" field"),
    ('{"prompt": 1, "completion": "a"}', [], "line 2: field \"prompt\" is not a string"),
    ('{"prompt": "a", "completion": "b"}', ["--field", "prompt"],
     "--prompt-field and --field name the same field 'prompt'"),
])
def test_bad_pairs_are_refused(tmp_path, line, args, needle):
    good = json.dumps({"prompt": "p", "completion": "c"})
    (tmp_path / "p.jsonl").write_text(good + "\n" + line + "\n")
    p = run([str(a) for a in (exe("triad-tokenize"), "shards", "--vocab", VOCAB / "gpt2.tiktoken",
                              "--out", tmp_path / "o", "--jsonl", "--prompt-field", "prompt",
                              *args, tmp_path / "p.jsonl")])
    assert_clean_error(p, needle)
    p = run([exe("triad-tokenize"), "shards", "--vocab", VOCAB / "gpt2.tiktoken", "--out",
             tmp_path / "o", "--prompt-field", "prompt", tmp_path / "p.jsonl"])
    assert_clean_error(p, "--prompt-field needs --jsonl")
