"""triad-convert (analysis/convert_weights.py) against Hugging Face transformers' GPT-2.

An independent implementation judges the weight mapping both ways: a seeded GPT2LMHeadModel
(every tensor perturbed, so a swapped, untransposed or dropped tensor shows) is imported, and
triad's own validation loss, accuracy and greedy continuation of the imported checkpoint
(triad-train --eval-only, triad-generate) must equal what transformers computes in float64
from its own files; a run fine-tuned from it by triad-train is exported and transformers,
loading the export, must reproduce triad's final validation loss. Likewise LlamaForCausalLM,
with grouped-query attention or not; the reordering of its query heads is also checked without
triad's programs, by tests/reference/gpt_torch.py on the imported file. llm.c model files: an
fp32 round trip is exact, and bf16 files hold PyTorch's rounding of the weights. Every bad
input is refused with one line, leaving no output behind."""

import copy
import json
import math
import shutil
import sys
import zlib

import h5py
import numpy as np
import pytest

from test_mpi_runs import run as mpi_run
from triad_run import (REPO, VOCAB, assert_clean_error, assert_clean_failure, exe, gpt2_tiktoken,
                       greedy_continuation, run, tiny_config, tool, train)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(REPO / "tests" / "reference"))
import gpt_torch as ref  # noqa: E402

N_POS, SEQ, V = 64, 32, 50257  # the model's positions; the context triad uses (cropped)
PROMPT = [464, 3290, 7586, 21831, 18045, 625, 262, 16931]
EVAL_SEQUENCES = 16


def hf_model(**config):
    torch.manual_seed(3)
    cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=N_POS,
                                  vocab_size=V, **config)
    m = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            # weights 8× init's scale (greedy choices far from ties); biases and LayerNorm
            # parameters away from 0 and 1, so that each of them counts
            p.copy_(p * 8 if p.dim() == 2 else p + 0.1 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    d = tmp_path_factory.mktemp("convert")
    hf_model().save_pretrained(d / "hf", safe_serialization=True)
    ckpt = d / "gpt2.h5"
    p = tool("triad-convert", "import", d / "hf", ckpt, "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    assert "wrote" in p.stdout and ckpt.is_file()
    cfg = tiny_config(d, name="ft", vocab=V, model__n_layer=2, model__n_head=4,
                      model__n_embd=64, model__seq_len=SEQ, eval__sequences=EVAL_SEQUENCES,
                      train__steps=3)
    return d, ckpt, cfg


def val_sequences(d):
    tokens = np.fromfile(d / "data" / "val_000.bin", dtype="<u2", offset=1024).astype(np.int64)
    x = np.stack([tokens[k * SEQ:k * SEQ + SEQ] for k in range(EVAL_SEQUENCES)])
    y = np.stack([tokens[k * SEQ + 1:k * SEQ + SEQ + 1] for k in range(EVAL_SEQUENCES)])
    return torch.from_numpy(x), torch.from_numpy(y)


def hf_loss_accuracy(model, d):
    x, y = val_sequences(d)
    with torch.no_grad():
        logits = model.double()(x, use_cache=False).logits  # (no cache: Gemma 2 on torch 1.13)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1)).item()
    acc = (logits.argmax(-1) == y).double().mean().item()
    return loss, acc


def triad_eval(cfg, ckpt):
    p = train("--config", cfg, "--eval-only", "--init-from", ckpt, check=True)
    return float(p.stdout.split("val loss")[1].split()[0]), \
        float(p.stdout.split("val accuracy")[1].split()[0])


def evaluates_as_transformers(model, d, cfg, ckpt, *args):
    """triad-train --eval-only of ckpt (with args) against transformers' model in float64: the
    validation loss to 1e-5 and the accuracy to a token or so. Returns (triad's loss,
    transformers')."""
    want_loss, want_acc = hf_loss_accuracy(model, d)
    p = train("--config", cfg, "--eval-only", "--init-from", ckpt, *args, check=True)
    loss = float(p.stdout.split("val loss")[1].split()[0])
    acc = float(p.stdout.split("val accuracy")[1].split()[0])
    assert abs(loss - want_loss) <= 1e-5 * want_loss, (loss, want_loss)
    assert abs(acc - want_acc) <= 1.5 / (EVAL_SEQUENCES * SEQ), (acc, want_acc)
    return loss, want_loss


def test_imported_model_evaluates_and_generates_as_transformers(imported):
    d, ckpt, cfg = imported
    model = hf_model()
    want_loss, want_acc = hf_loss_accuracy(model, d)
    loss, acc = triad_eval(cfg, ckpt)
    assert abs(loss - want_loss) <= 1e-5 * want_loss, (loss, want_loss)
    assert abs(acc - want_acc) <= 1.5 / (EVAL_SEQUENCES * SEQ), (acc, want_acc)

    # Greedy decoding by transformers' model (its generate() needs a newer torch than 1.13).
    ids = list(PROMPT)
    with torch.no_grad():
        for _ in range(20):
            ids.append(int(model.double()(torch.tensor([ids])).logits[0, -1].argmax()))
    want = ids[len(PROMPT):]
    p = run([exe("triad-generate"), "--checkpoint", ckpt, "--vocab", VOCAB, "--top-k", "1",
             "--prompt-ids", " ".join(map(str, PROMPT)), "--length", "20", "--output", "ids"],
            check=True)
    assert [int(t) for t in p.stdout.split()] == want

    with h5py.File(ckpt, "r") as f:  # weights only, step 0, padded vocabulary of zeros
        assert int(f.attrs["step"]) == 0 and "optimizer" not in f
        assert f["model"].attrs["padded_vocab_size"] == 50304
        assert f["model/wpe/weight"].shape == (SEQ, 64)
        assert not np.any(f["model/wte/weight"][V:])
    p = tool("triad-ckpt", ckpt)  # complete, consistent, checksums verified
    assert p.returncode == 0 and "status: OK" in p.stdout, p.stdout + p.stderr


def test_finetuned_run_exports_to_transformers(imported, tmp_path):
    d, ckpt, cfg = imported
    train("--config", cfg, "--init-from", ckpt, "--run.name", "ft", check=True)
    run_dir = d / "runs" / "ft"
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        assert list(f["val/step"][()]) == [0, 3]
        triad_loss = float(f["val/loss"][-1])
    out = tmp_path / "hf-out"
    p = tool("triad-convert", "export", run_dir, out, "--to", "hf")
    assert p.returncode == 0, p.stderr
    model, info = transformers.GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.config.n_positions == SEQ and model.config.vocab_size == V
    loss, _ = hf_loss_accuracy(model.eval(), d)
    assert abs(loss - triad_loss) <= 1e-5 * triad_loss, (loss, triad_loss)
    # The imported weights averaged with their fine-tune: one model, though the import leaves
    # out the /model attributes triad-train writes with their default values (it was refused).
    mean = tool("triad-average", ckpt, run_dir, "--out", tmp_path / "mean.h5")
    assert mean.returncode == 0, mean.stderr
    # GPT-2's tokenizer beside it (vocab.json, merges.txt from the ranks file): transformers'
    # fast and slow tokenizers give tiktoken's ids, <|endoftext|> included.
    assert "GPT-2's tokenizer files from" in p.stdout
    enc = gpt2_tiktoken()
    text = ("It is a truth universally acknowledged, that a single man in possession of a good "
            "fortune, must be in want of a wife.\n\n  Über café, naïve 日本語 🤖 it's 1999!"
            "<|endoftext|>And  then\tagain")
    want = enc.encode(text, allowed_special="all")
    for cls in (transformers.GPT2TokenizerFast, transformers.GPT2Tokenizer):
        assert cls.from_pretrained(out)(text)["input_ids"] == want, cls
    assert transformers.AutoTokenizer.from_pretrained(out).decode(want) == text

    # ... and back: the same tensors, bit for bit.
    back = tmp_path / "back.h5"
    assert tool("triad-convert", "import", out, back).returncode == 0
    last = run_dir / "ckpt" / "step_00000003.h5"
    with h5py.File(back, "r") as a, h5py.File(last, "r") as b:
        names = []
        b["model"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset)
                              else None)
        assert len(names) == 2 + 2 + 2 * 12
        for n in names:
            np.testing.assert_array_equal(a["model"][n][()], b["model"][n][()], err_msg=n)


LLAMA_ARGS = ["--model.position", "rope", "--model.rope_theta", "500", "--model.norm", "rmsnorm",
              "--model.bias", "false", "--model.mlp", "swiglu", "--model.mlp_hidden", "176",
              "--model.tie_embeddings", "false"]


def llama_model(**config):
    torch.manual_seed(5)
    cfg = transformers.LlamaConfig(**{
        **dict(vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=N_POS,
               rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=False),
        **config})
    return spread(transformers.LlamaForCausalLM(cfg))


def spread(model):
    """model with larger weights and norms away from 1 (as hf_model), for evaluation: its
    choices clear, its routers' too, far from ties."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p * 4 if p.dim() == 2 else p + 0.1 * torch.randn_like(p))
    return model.eval()


def finetune_export_and_reimport(d, cfg, ckpt, args, name, tmp_path, original):
    """A run fine-tuned in triad from the imported ckpt and exported: transformers' class of the
    original model loads it and computes triad's final validation loss; the import exported
    again holds the original's tensors bit for bit. Returns the loaded fine-tuned model."""
    cls = type(original)
    train("--config", cfg, "--init-from", ckpt, *args, "--run.name", name, check=True)
    run_dir = d / "runs" / name
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        triad_loss = float(f["val/loss"][-1])
    p = tool("triad-convert", "export", run_dir, tmp_path / f"{name}-hf", "--to", "hf", "--vocab",
             "none")
    assert p.returncode == 0, p.stderr
    tuned, info = cls.from_pretrained(tmp_path / f"{name}-hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    loss, _ = hf_loss_accuracy(tuned.eval(), d)
    assert abs(loss - triad_loss) <= 1e-5 * triad_loss, (loss, triad_loss)
    p = tool("triad-convert", "export", ckpt, tmp_path / f"{name}-again", "--to", "hf", "--vocab",
             "none")
    assert p.returncode == 0, p.stderr
    again = cls.from_pretrained(tmp_path / f"{name}-again").state_dict()
    for k, v in original.float().state_dict().items():
        if not k.endswith("inv_freq"):
            assert torch.equal(again[k], v), k
    return tuned


def evaluates_generates_and_tunes(model, d, cfg, ckpt, name, tmp_path):
    """The import ckpt of model, its options from itself (--model-from): its loss and accuracy
    are transformers' (evaluates_as_transformers), greedy generation its tokens, and fine-tuned as
    run `name` and exported it loads in transformers computing triad's loss
    (finetune_export_and_reimport, whose loaded model this returns)."""
    args = ["--model-from", ckpt]
    evaluates_as_transformers(model, d, cfg, ckpt, *args)
    p = run([exe("triad-generate"), "--checkpoint", ckpt, "--vocab", VOCAB, "--top-k", "1",
             "--prompt-ids", " ".join(map(str, PROMPT)), "--length", "20", "--output", "ids"],
            check=True)
    assert [int(t) for t in p.stdout.split()] == greedy_continuation(model, PROMPT, 20)
    return finetune_export_and_reimport(d, cfg, ckpt, args, name, tmp_path, model)


# (query heads, key/value heads): multi-head attention, grouped-query attention with groups of
# 2 and of 4 (one key/value head), and 8 heads over 2 (a head order that is not its own inverse).
HEADS = [(4, 4), (4, 2), (4, 1), (8, 2)]


@pytest.mark.parametrize("heads,kv", HEADS, ids=[f"{h}h{k}kv" for h, k in HEADS])
def test_llama_imports_and_evaluates_as_transformers(imported, tmp_path, heads, kv):
    """transformers' LlamaForCausalLM (rope, RMSNorm, SwiGLU, no biases, an untied output layer,
    grouped-query attention or not), imported: triad's validation loss and accuracy are
    transformers' — triad's Llama architecture against an independent implementation."""
    d, _, cfg = imported
    model = llama_model(num_attention_heads=heads, num_key_value_heads=kv)
    model.save_pretrained(tmp_path / "llama", safe_serialization=True)
    out = tmp_path / "llama.h5"
    p = tool("triad-convert", "import", tmp_path / "llama", out, "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    args = [*LLAMA_ARGS, "--model.n_head", heads]
    if kv != heads:  # else the default, 0: as many as query heads, the file's n_kv_head
        args += ["--model.n_kv_head", kv]
    loss, want_loss = evaluates_as_transformers(model, d, cfg, out, *args)
    with h5py.File(out, "r") as f:
        assert f["model"].attrs["mlp"] == b"swiglu" and int(f["model"].attrs["tie_embeddings"]) == 0
    assert tool("triad-ckpt", out).returncode == 0
    finetune_export_and_reimport(d, cfg, out, args, f"llama-ft-{heads}h{kv}kv", tmp_path, model)
    assert_clean_failure(tool("triad-convert", "export", out, tmp_path / "x.bin", "--to", "llmc"),
                         "holds GPT-2 only")


QWEN2_ARGS = ["--model.position", "rope", "--model.rope_theta", "1000000", "--model.norm",
              "rmsnorm", "--model.bias", "false", "--model.qkv_bias", "true", "--model.norm_eps",
              "1e-6", "--model.mlp", "swiglu", "--model.mlp_hidden", "176", "--model.n_kv_head",
              "2", "--model.tie_embeddings", "false"]


def test_qwen2_imports_and_evaluates_as_transformers(imported, tmp_path):
    """transformers' Qwen2ForCausalLM (Llama's blocks with biases on the q, k and v projections
    only, RMSNorm epsilon 1e-6, grouped-query attention), imported: triad's
    validation loss and accuracy are transformers'; fine-tuned and exported, Qwen2ForCausalLM
    loads it and computes triad's loss; the import exported again is the original."""
    d, _, cfg = imported
    torch.manual_seed(7)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
        rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False, use_sliding_window=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Small embeddings (the first RMSNorm's mean square near the epsilon) and an output
            # layer of its own at a larger scale: the epsilon, 1e-6 against the default 1e-5,
            # moves the loss by 2e-3 relative, 200 times the tolerance.
            if name.endswith("bias"):
                p.copy_(0.5 * torch.randn_like(p))
            elif "embed" in name:
                p.mul_(0.05)
            elif p.dim() == 2:
                p.mul_(4)
            elif p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.eval().save_pretrained(tmp_path / "qwen2", safe_serialization=True)
    out = tmp_path / "qwen2.h5"
    p = tool("triad-convert", "import", tmp_path / "qwen2", out, "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    assert "Hugging Face Qwen2 model" in p.stdout
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert int(a["qkv_bias"]) == 1 and int(a["bias"]) == 0 and a["norm_eps"] == 1e-6
        assert "h/0/attn/c_attn/bias" in f["model"] and "h/0/attn/c_proj/bias" not in f["model"]
    assert tool("triad-ckpt", out).returncode == 0
    loss, want_loss = evaluates_as_transformers(model, d, cfg, out, *QWEN2_ARGS)
    # --model-from takes the architecture from the checkpoint instead of the options.
    p = train("--config", cfg, "--eval-only", "--init-from", out, "--model-from", out, check=True)
    assert float(p.stdout.split("val loss")[1].split()[0]) == loss
    p = train("--config", cfg, "--eval-only", "--init-from", out, "--model-from", out,
              "--model.norm_eps", "1e-5")  # the command line still overrides it
    assert_clean_error(p, "norm_eps 1e-06", "model.norm_eps = 1e-05")
    p = train("--config", cfg, "--eval-only", "--model-from", tmp_path / "none.h5")
    assert_clean_error(p, "none.h5")
    # The config must say what the checkpoint holds.
    at = QWEN2_ARGS.index("--model.norm_eps")
    p = train("--config", cfg, "--eval-only", "--init-from", out,
              *QWEN2_ARGS[:at], *QWEN2_ARGS[at + 2:])  # the default epsilon, 1e-5
    assert_clean_error(p, "norm_eps 1e-06", "model.norm_eps = 1e-05")
    at = QWEN2_ARGS.index("--model.qkv_bias")
    p = train("--config", cfg, "--eval-only", "--init-from", out,
              *QWEN2_ARGS[:at], *QWEN2_ARGS[at + 2:])
    assert_clean_error(p, "with a c_attn bias of its own", "model.qkv_bias = false")

    tuned = finetune_export_and_reimport(d, cfg, out, QWEN2_ARGS, "qwen2-ft", tmp_path, model)
    assert tuned.config.rms_norm_eps == 1e-6


def test_llama_with_wider_heads_imports_and_evaluates_as_transformers(imported, tmp_path):
    """LlamaForCausalLM with head_dim 24 at hidden_size 64 and 4 heads (q 96 wide, o_proj
    [64, 96]; Qwen3's shape of attention), grouped-query attention: triad's loss and accuracy are
    transformers'; fine-tuned, exported and re-imported as the Llama tests."""
    d, _, cfg = imported
    model = llama_model(num_attention_heads=4, num_key_value_heads=2, head_dim=24)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (96, 64)
    model.save_pretrained(tmp_path / "llama", safe_serialization=True)
    out = tmp_path / "llama.h5"
    p = tool("triad-convert", "import", tmp_path / "llama", out, "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        assert int(f["model"].attrs["head_dim"]) == 24
        assert f["model/h/0/attn/c_attn/weight"].shape == (96 + 2 * 2 * 24, 64)
        assert f["model/h/0/attn/c_proj/weight"].shape == (64, 96)
    args = [*LLAMA_ARGS, "--model.n_kv_head", "2", "--model.head_dim", "24"]
    loss, want_loss = evaluates_as_transformers(model, d, cfg, out, *args)
    p = train("--config", cfg, "--eval-only", "--init-from", out, *args[:-2])
    assert_clean_error(p, "heads 24 wide", "model.head_dim = 0")
    finetune_export_and_reimport(d, cfg, out, args, "llama-hd24", tmp_path, model)


def hook_qwen3_norms(model, hd, eps, seed):
    """Qwen3's per-head RMSNorms of q and k (before the rotation), as forward hooks on each
    layer's q_proj and k_proj of a transformers model that lacks them, with random weights near
    1: returns those weights under Qwen3's tensor names."""
    torch.manual_seed(seed)
    norms = {}
    for i, layer in enumerate(model.model.layers):
        for name in ("q_norm", "k_norm"):
            w = 1 + 0.3 * torch.randn(hd)
            norms[f"model.layers.{i}.self_attn.{name}.weight"] = w

            def hook(module, inputs, out, w=w):
                x = out.reshape(*out.shape[:-1], -1, hd)
                x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.to(x.dtype)
                return x.reshape(out.shape)

            getattr(layer.self_attn, name[0] + "_proj").register_forward_hook(hook)
    return norms


def rewrite_hf(src, tensors, drop=(), **changes):
    """Model directory src rewritten as another model: model.safetensors holding `tensors`,
    config.json without the keys `drop` and with `changes`."""
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in tensors.items()}, src / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    for k in drop:
        del config[k]
    config.update(changes)
    (src / "config.json").write_text(json.dumps(config))


def exports_back(ckpt, out, tensors):
    """ckpt exported (--to hf) into out must hold exactly `tensors`, bit for bit (as fp32).
    Returns the export's config.json."""
    from safetensors.torch import load_file
    p = tool("triad-convert", "export", ckpt, out, "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    again = load_file(out / "model.safetensors")
    assert sorted(again) == sorted(tensors)
    for k, v in tensors.items():
        assert torch.equal(again[k], v.float()), k
    return json.loads((out / "config.json").read_text())


def test_qwen3_imports_and_evaluates_as_its_definition(imported, tmp_path):
    """A Qwen3 model (model_type qwen3: Llama's blocks with head_dim 24 at hidden_size 64 and
    per-head RMSNorms q_norm, k_norm on q and k before the rotation, epsilon 1e-6, tied
    embeddings) written in Qwen3ForCausalLM's tensor names. transformers 4.47 predates Qwen3, so
    the reference is its LlamaForCausalLM with forward hooks on q_proj and k_proj that apply
    Qwen3's q_norm and k_norm to each head (what Qwen3Attention does before the rotation): triad's
    loss of the import is that model's; export writes Qwen3's config and tensors back, bit for
    bit."""
    from safetensors.torch import load_file
    d, _, cfg = imported
    hd, eps = 24, 1e-6
    model = llama_model(num_attention_heads=4, num_key_value_heads=2, head_dim=hd,
                        rms_norm_eps=eps, rope_theta=1e6, tie_word_embeddings=True)
    norms = hook_qwen3_norms(model, hd, eps, seed=13)
    src = tmp_path / "qwen3"
    model.save_pretrained(src, safe_serialization=True)
    tensors = {**load_file(src / "model.safetensors"), **norms}
    tensors.pop("lm_head.weight", None)
    rewrite_hf(src, tensors, model_type="qwen3", architectures=["Qwen3ForCausalLM"],
               use_sliding_window=False)
    out = tmp_path / "qwen3.h5"
    p = tool("triad-convert", "import", src, out, "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    assert "Hugging Face Qwen3 model" in p.stdout
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (int(a["qk_norm"]), int(a["head_dim"]), a["norm_eps"]) == (1, hd, eps)
    loss, want_loss = evaluates_as_transformers(model, d, cfg, out, "--model-from", out)
    exported = exports_back(out, tmp_path / "back", tensors)
    assert (exported["model_type"], exported["head_dim"], exported["rms_norm_eps"]) == \
        ("qwen3", hd, eps)


def test_llama_vocabulary_above_65536_trains_on_uint32_shards(tmp_path):
    """A Llama with Llama 3's kind of vocabulary (70,000 ids here): imported, evaluated by triad on
    llm.c's uint32 token shards, and its loss is transformers' on the same ids."""
    vocab = 70000
    torch.manual_seed(9)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=N_POS,
        rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=False)).eval()
    model.save_pretrained(tmp_path / "llama", safe_serialization=True)
    out = tmp_path / "llama.h5"
    p = tool("triad-convert", "import", tmp_path / "llama", out, "--seq-len", 16)
    assert p.returncode == 0, p.stderr
    cfg = tiny_config(tmp_path, vocab=vocab, model__n_layer=1, model__n_head=2,
                      model__seq_len=16, eval__sequences=8)
    val = ref.read_token_shard(tmp_path / "data" / "val_000.bin")
    assert val.dtype == np.dtype("<u4") and val.max() >= 65536  # the wide format
    x = torch.tensor(np.stack([val[k * 16:k * 16 + 17] for k in range(8)]).astype(np.int64))
    with torch.no_grad():
        logits = model.double()(x[:, :-1]).logits
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))
    p = train("--config", cfg, "--eval-only", "--init-from", out, "--model.position", "rope",
              "--model.rope_theta", "500", "--model.norm", "rmsnorm", "--model.bias", "false",
              "--model.mlp", "swiglu", "--model.mlp_hidden", "64", "--model.tie_embeddings",
              "false", "--model.n_kv_head", "1", check=True)
    loss = float(p.stdout.split("val loss")[1].split()[0])
    assert abs(loss - want.item()) <= 1e-5 * want.item(), (loss, want.item())


@pytest.mark.parametrize("heads,kv", HEADS[1:], ids=[f"{h}h{k}kv" for h, k in HEADS[1:]])
def test_llama_grouped_query_attention_layout(tmp_path, heads, kv):
    """Without triad's programs: an imported LlamaForCausalLM with grouped-query attention holds
    c_attn and attn.c_proj in triad's head order (query head h uses key/value head h % kv,
    docs/formats.md), the PyTorch reference (tests/reference/gpt_torch.py, which repeats the
    key/value heads) computes transformers' logits from the file, and the export gives back
    transformers' tensors bit for bit."""
    model = llama_model(num_attention_heads=heads, num_key_value_heads=kv)
    model.save_pretrained(tmp_path / "llama", safe_serialization=True)
    out = tmp_path / "llama.h5"
    p = tool("triad-convert", "import", tmp_path / "llama", out)
    assert p.returncode == 0, p.stderr
    assert f"{heads} heads ({kv} key/value)" in p.stdout
    p = tool("triad-ckpt", out)
    assert p.returncode == 0 and "status: OK" in p.stdout, p.stdout + p.stderr

    # The layout, spelled out: HF's query head m·g + j (of key/value head m) is triad's j·kv + m.
    C, hd, g = 64, 64 // heads, heads // kv
    sd = model.state_dict()
    with h5py.File(out, "r") as f:
        assert int(f["model"].attrs["n_kv_head"]) == kv
        c_attn = f["model/h/1/attn/c_attn/weight"][()]
        c_proj = f["model/h/1/attn/c_proj/weight"][()]
    assert c_attn.shape == (C + 2 * kv * hd, C)
    hf = {x: sd[f"model.layers.1.self_attn.{x}_proj.weight"].numpy() for x in "qkvo"}
    for h in range(heads):
        j, m = divmod(h, kv)
        hf_h = m * g + j
        mine, theirs = slice(h * hd, (h + 1) * hd), slice(hf_h * hd, (hf_h + 1) * hd)
        np.testing.assert_array_equal(c_attn[mine], hf["q"][theirs], err_msg=f"q head {h}")
        np.testing.assert_array_equal(c_proj[:, mine], hf["o"][:, theirs], err_msg=f"o head {h}")
    np.testing.assert_array_equal(c_attn[C:], np.concatenate([hf["k"], hf["v"]]))

    # The reference model on the imported file computes transformers' logits (float64; HF's
    # rotary angles are float32, hence the tolerance).
    cfg, weights = ref.load_checkpoint(out)
    assert cfg.kv_heads == kv
    ids = torch.tensor([PROMPT * 4])
    with torch.no_grad():
        want = model.double()(ids).logits
        got = ref.forward(weights, cfg, ids)
    assert (got - want).abs().max().item() < 1e-5, (got - want).abs().max().item()

    # Exported: LlamaForCausalLM with num_key_value_heads = kv, transformers' own tensors.
    p = tool("triad-convert", "export", out, tmp_path / "again", "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    again, info = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "again",
                                                                output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert again.config.num_key_value_heads == kv
    again = again.state_dict()
    for k, v in model.float().state_dict().items():
        if not k.endswith("inv_freq"):
            assert torch.equal(again[k], v), k
    assert_clean_failure(tool("triad-convert", "export", out, tmp_path / "x.bin", "--to", "llmc"),
                         "holds GPT-2 only")
    assert not (tmp_path / "x.bin").exists()


def test_llama_variants_triad_does_not_compute_are_refused(tmp_path):
    """Key/value heads that do not divide the query heads, and other variants triad does not
    compute, are refused, naming config.json."""
    for bad, needle in (({"num_key_value_heads": 3},
                         "num_key_value_heads 3 does not divide num_attention_heads 4"),
                        ({"hidden_act": "gelu"}, "hidden_act"),
                        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
                         "rope_scaling")):
        m = llama_model(**bad)
        m.save_pretrained(tmp_path / "bad", safe_serialization=True)
        assert_clean_failure(tool("triad-convert", "import", tmp_path / "bad",
                                  tmp_path / "bad.h5"), "config.json", needle)
        assert not (tmp_path / "bad.h5").exists()
    # Phi-3's long-context scaling (longrope: a factor per frequency, short and long) with
    # factors for another head width, or a scale of its own, and a partial rotary factor
    # (Phi-4-mini's), written into a Phi-3 config.
    phi3_model(None).save_pretrained(tmp_path / "phi3", safe_serialization=True)
    good = json.loads((tmp_path / "phi3" / "config.json").read_text())
    for bad, needle in (({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 7,
                                           "long_factor": [2.0] * 7}}, "head_dim / 2"),
                        ({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 8,
                                           "long_factor": [2.0] * 8, "long_mscale": 1.2}},
                         "long_mscale is not built"),
                        ({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 8,
                                           "long_factor": [0.0] * 8}}, "finite numbers > 0"),
                        ({"partial_rotary_factor": 0.75}, "partial_rotary_factor 0.75"),
                        # (imported with exit 0 into a checkpoint every reader refuses)
                        ({"rope_theta": -5.0}, "rope_theta) is -5.0, not a finite number > 1"),
                        ({"rope_theta": 1.0}, "rope_theta) is 1.0, not a finite number > 1"),
                        ({"num_hidden_layers": 10**12}, "n_layer = 1000000000000, at most"),
                        # (int() took these as 100 and 1)
                        ({"vocab_size": 100.5}, "vocab_size = 100.5 is not an integer"),
                        ({"num_hidden_layers": True}, "num_hidden_layers = true is not an")):
        (tmp_path / "phi3" / "config.json").write_text(json.dumps({**good, **bad}))
        assert_clean_failure(tool("triad-convert", "import", tmp_path / "phi3",
                                  tmp_path / "bad.h5"), "config.json", needle)
        assert not (tmp_path / "bad.h5").exists()


def test_interleaved_full_attention_does_not_export(tmp_path):
    """A model whose every 2nd layer attends to the whole context (model.full_attention_every)
    has no Hugging Face class among those triad writes: export is refused, naming the option;
    triad-ckpt reads the attribute."""
    cfg = ref.GptConfig(n_layer=2, n_head=4, n_embd=64, seq_len=16, vocab_size=300,
                        position="rope", norm="rmsnorm", bias=False, mlp="swiglu", tied=False,
                        sliding_window=4, full_attention_every=2)
    ckpt = tmp_path / "swa.h5"
    ref.write_checkpoint(ckpt, cfg, ref.random_weights(cfg, seed=2))
    p = tool("triad-ckpt", ckpt)
    assert p.returncode == 0 and "full_attention_every=2" in p.stdout, p.stdout + p.stderr
    assert_clean_failure(tool("triad-convert", "export", ckpt, tmp_path / "hf", "--to", "hf",
                              "--vocab", "none"), "model.full_attention_every")
    assert not (tmp_path / "hf").exists()


def test_windows_triad_does_not_build_are_refused(tmp_path):
    """Qwen's sliding windows (per layer: use_sliding_window with max_window_layers) shorter than
    the context, and a window that is not a positive count, are refused naming config.json."""
    llama_model().save_pretrained(tmp_path / "m", safe_serialization=True)
    original = json.loads((tmp_path / "m" / "config.json").read_text())
    for change, needle in (({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8,
                             "max_window_layers": 1}, "max_window_layers"),
                           ({"model_type": "mistral", "sliding_window": 0}, "sliding_window 0")):
        (tmp_path / "m" / "config.json").write_text(json.dumps({**original, **change}))
        assert_clean_failure(tool("triad-convert", "import", tmp_path / "m", tmp_path / "w.h5",
                                  "--seq-len", SEQ), "config.json", needle)
        assert not (tmp_path / "w.h5").exists()


@pytest.mark.parametrize("name,shape", [("model.layers.1.self_attn.k_proj.weight", (64, 64)),
                                        ("model.layers.0.mlp.up_proj.weight", (170, 64)),
                                        ("model.layers.0.self_attn.o_proj.weight", (64, 32))])
def test_llama_tensors_of_the_wrong_shape_are_refused(tmp_path, name, shape):
    """A Llama tensor whose shape is not config.json's (k_proj of 4 heads where
    num_key_value_heads says 2, a narrower up_proj, a cut o_proj): one line naming the file and
    the tensor, no output left."""
    from safetensors.torch import save_file
    model = llama_model(num_key_value_heads=2)
    src = tmp_path / "bad"
    model.save_pretrained(src, safe_serialization=True)
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if "rotary" not in k}
    weights[name] = torch.zeros(shape)
    save_file(weights, str(src / "model.safetensors"))
    out = tmp_path / "bad.h5"
    assert_clean_failure(tool("triad-convert", "import", src, out), "model.safetensors", name)
    assert not out.exists()


def scaled_llama(tmp_path, scaling):
    """A Llama (4 query heads over 2) with `scaling` as its rope_scaling, saved to
    tmp_path/llama and imported (--seq-len SEQ): (the model, the checkpoint, its /model
    attributes)."""
    model = llama_model(num_key_value_heads=2, rope_scaling=scaling)
    model.save_pretrained(tmp_path / "llama", safe_serialization=True)
    out = tmp_path / "llama.h5"
    p = tool("triad-convert", "import", tmp_path / "llama", out, "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        attrs = dict(f["model"].attrs)
    return model, out, attrs


def exports_to_llama(ckpt, tmp_path, d, want_loss):
    """ckpt exported (--to hf) to tmp_path/back loads in transformers' LlamaForCausalLM computing
    want_loss (to 1e-9); returns the export's config.json."""
    assert tool("triad-convert", "export", ckpt, tmp_path / "back", "--to", "hf", "--vocab",
                "none").returncode == 0
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert abs(hf_loss_accuracy(again, d)[0] - want_loss) <= 1e-9 * want_loss
    return json.loads((tmp_path / "back" / "config.json").read_text())


def test_llama3_rope_scaling_imports_and_evaluates_as_transformers(imported, tmp_path):
    """Llama 3.1's rope scaling (rope_type llama3) imported: with an original context of 32
    positions, hd 16 and theta 500 the pairs' wavelengths fall in all three of its regimes (kept,
    interpolated, divided by the factor); triad's loss is transformers', the options reach the
    checkpoint, and the export carries rope_scaling back."""
    d, _, cfg = imported
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    model, out, a = scaled_llama(tmp_path, scaling)
    assert a["rope_scaling"] in (b"llama3", "llama3") and float(a["rope_scaling_factor"]) == 8
    assert int(a["rope_original_positions"]) == 32
    want_loss, _ = hf_loss_accuracy(model, d)
    args = [*LLAMA_ARGS, "--model.n_head", 4, "--model.n_kv_head", 2, "--model.rope_scaling",
            "llama3", "--model.rope_scaling_factor", 8, "--model.rope_low_freq_factor", 1,
            "--model.rope_high_freq_factor", 4, "--model.rope_original_positions", 32]
    p = train("--config", cfg, "--eval-only", "--init-from", out, *args, check=True)
    loss = float(p.stdout.split("val loss")[1].split()[0])
    assert abs(loss - want_loss) <= 1e-5 * want_loss, (loss, want_loss)
    # Plain rope on the same weights computes something else, and is refused against the file.
    plain = llama_model(num_key_value_heads=2)
    assert abs(hf_loss_accuracy(plain, d)[0] - want_loss) > 1e-4
    p = train("--config", cfg, "--eval-only", "--init-from", out, *LLAMA_ARGS, "--model.n_head", 4,
              "--model.n_kv_head", 2)
    assert p.returncode != 0 and "rope_scaling llama3" in p.stderr, p.stderr
    back = exports_to_llama(out, tmp_path, d, want_loss)
    assert back["rope_scaling"]["rope_type"] == "llama3"
    assert back["rope_scaling"]["original_max_position_embeddings"] == 32


def test_yarn_rope_scaling_imports_and_evaluates_as_transformers(imported, tmp_path):
    """YaRN (rope_type yarn, Qwen2.5's and Qwen3's long-context setting) imported: with 64
    original positions, hd 16 and theta 500, pairs 0..2 ramp between kept and divided by the
    factor and the rest are divided; cos and sin are scaled by 0.1·ln 4 + 1. triad's loss is
    transformers', and the export carries rope_scaling back."""
    d, _, cfg = imported
    model, out, a = scaled_llama(tmp_path, {"rope_type": "yarn", "factor": 4.0})
    assert a["rope_scaling"] in (b"yarn", "yarn") and float(a["rope_scaling_factor"]) == 4
    assert (float(a["rope_yarn_beta_fast"]), float(a["rope_yarn_beta_slow"])) == (32, 1)
    assert int(a["rope_original_positions"]) == N_POS
    want_loss, _ = hf_loss_accuracy(model, d)
    p = train("--config", cfg, "--eval-only", "--init-from", out, "--model-from", out, check=True)
    loss = float(p.stdout.split("val loss")[1].split()[0])
    assert abs(loss - want_loss) <= 1e-5 * want_loss, (loss, want_loss)
    plain = llama_model(num_key_value_heads=2)  # the same weights without YaRN differ
    assert abs(hf_loss_accuracy(plain, d)[0] - want_loss) > 1e-4
    back = exports_to_llama(out, tmp_path, d, want_loss)
    assert back["rope_scaling"]["rope_type"] == "yarn" and back["max_position_embeddings"] == N_POS
    # DeepSeek's form (the scores scaled apart from cos and sin) has no such export, nor has
    # gpt-oss's ramp between unrounded ends (transformers 4.47 would round them).
    for name, key, value, needle in (
            ("deepseek", "rope_yarn_mscale_all_dim", 1.0, "rope_yarn_mscale_all_dim 1.0"),
            ("unrounded", "rope_yarn_truncate", 0, "model.rope_yarn_truncate = false")):
        variant = tmp_path / f"{name}.h5"
        variant.write_bytes(out.read_bytes())
        with h5py.File(variant, "r+") as f:
            f["model"].attrs[key] = value
        assert_clean_failure(tool("triad-convert", "export", variant, tmp_path / name, "--to",
                                  "hf"), f"{name}.h5", needle)
        assert not (tmp_path / name).exists()
    # A config whose two context lengths disagree is refused (transformers' versions differ on
    # which one YaRN's ramp takes).
    bad = json.loads((tmp_path / "llama" / "config.json").read_text())
    bad["rope_scaling"]["original_max_position_embeddings"] = 32
    (tmp_path / "llama" / "config.json").write_text(json.dumps(bad))
    p = tool("triad-convert", "import", tmp_path / "llama", tmp_path / "bad.h5")
    assert_clean_failure(p, "original_max_position_embeddings 32 differs")
    # gpt-oss's YaRN (truncate false: the ramp between unrounded bounds) is not triad's.
    bad["rope_scaling"].update(original_max_position_embeddings=N_POS, truncate=False)
    (tmp_path / "llama" / "config.json").write_text(json.dumps(bad))
    p = tool("triad-convert", "import", tmp_path / "llama", tmp_path / "bad.h5")
    assert_clean_failure(p, "config.json", "truncate false: transformers before 4.55 ignore it")



def test_linear_rope_scaling_imports_and_evaluates_as_transformers(imported, tmp_path):
    """Linear rope scaling (rope_type linear, position interpolation: the long-context Llama 2
    fine-tunes') imported as model.rope_scaling = linear: triad's loss is transformers', the
    same weights unscaled compute another, and the export carries it back to Llama. An export
    whose class would drop it (Mistral's) or a windowed layers' base of their own
    (model.rope_local_theta, Gemma 3's only) is refused, naming it."""
    d, _, cfg = imported
    model, out, a = scaled_llama(tmp_path, {"rope_type": "linear", "factor": 4.0})
    assert a["rope_scaling"] in (b"linear", "linear") and float(a["rope_scaling_factor"]) == 4
    assert "rope_original_positions" not in a
    want_loss, _ = hf_loss_accuracy(model, d)
    p = train("--config", cfg, "--eval-only", "--init-from", out, "--model-from", out, check=True)
    loss = float(p.stdout.split("val loss")[1].split()[0])
    assert abs(loss - want_loss) <= 1e-5 * want_loss, (loss, want_loss)
    plain = llama_model(num_key_value_heads=2)  # the same weights unscaled differ
    assert abs(hf_loss_accuracy(plain, d)[0] - want_loss) > 1e-4
    back = exports_to_llama(out, tmp_path, d, want_loss)
    assert back["model_type"] == "llama"
    assert back["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    assert back["max_position_embeddings"] == SEQ  # (the imported context)
    # With a sliding window the export would be Mistral's, which transformers computes unscaled;
    # a windowed layers' own base only Gemma 3's class holds.
    for name, attrs, needle in (
            ("window", {"sliding_window": 8}, "model.rope_scaling = linear"),
            ("local", {"sliding_window": 8, "rope_scaling": "none", "rope_local_theta": 1e4},
             "model.rope_local_theta")):
        bad = tmp_path / f"{name}.h5"
        bad.write_bytes(out.read_bytes())
        with h5py.File(bad, "r+") as f:
            f["model"].attrs.update(attrs)
        assert_clean_failure(tool("triad-convert", "export", bad, tmp_path / name, "--to", "hf"),
                             f"{name}.h5", needle, "MistralForCausalLM")
        assert not (tmp_path / name).exists()
    # Qwen2's and Qwen3's classes (a c_attn bias, QK-norm) keep the scaling too.
    from analysis.weights_dims import Dims
    from analysis.weights_hf_export import llama_hf_config
    for extra, arch in (({"qkv_bias": True}, "Qwen2ForCausalLM"),
                        ({"qk_norm": True}, "Qwen3ForCausalLM")):
        written = llama_hf_config(Dims(2, 4, 64, SEQ, V, position="rope", norm="rmsnorm",
                                       bias=False, mlp="swiglu", mlp_hidden=176, tied=False,
                                       n_kv_head=2, rope_linear=4.0, **extra))
        assert written["architectures"] == [arch]
        assert written["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    # A factor below 1 (a compression of the context) is refused on import.
    bad = json.loads((tmp_path / "llama" / "config.json").read_text())
    bad["rope_scaling"]["factor"] = 0.5
    (tmp_path / "llama" / "config.json").write_text(json.dumps(bad))
    assert_clean_failure(tool("triad-convert", "import", tmp_path / "llama", tmp_path / "x.h5"),
                         "config.json", "'linear' with factor >= 1")



def without_rope(model, layers):
    """transformers' Llama model whose `layers` rotate nothing: SmolLM3's NoPE layers
    (SmolLM3ForCausalLM is LlamaForCausalLM but for `if self.use_rope:` around the rotation;
    the transformers here predates it), each layer's attention handed cos 1 and sin 0."""
    for i in layers:
        attn = model.model.layers[i].self_attn

        def forward(*args, position_embeddings=None, _inner=attn.forward, **kw):
            cos, sin = position_embeddings
            return _inner(*args, position_embeddings=(torch.ones_like(cos), torch.zeros_like(sin)),
                          **kw)
        attn.forward = forward
    return model


@pytest.mark.parametrize("flags", [None, [1, 0]], ids=["interval", "list"])
def test_smollm3_imports_and_evaluates_as_transformers(imported, tmp_path, flags):
    """A SmolLM3 model (SmolLM3ForCausalLM's files: Llama's tensors, 4 query heads over 2, the
    second of its 2 layers without rope, said by no_rope_layer_interval 2 or by no_rope_layers
    [1, 0], tie_word_embeddings left out: tied, its config class's default) imports as
    model.nope_every = 2; triad's loss is transformers' Llama with that layer's rotation
    removed (without_rope) to 1e-5 and its greedy tokens triad-generate's, the plain Llama's
    loss is another; the export is SmolLM3's config and the tensors bit for bit, imported back
    to the same checkpoint. Other exports refuse a model with NoPE layers, and a pattern that is
    not every N-th layer, or SmolLM3's sliding window, is refused on import."""
    from safetensors.torch import load_file
    d, _, cfg = imported
    model = llama_model(num_key_value_heads=2, tie_word_embeddings=True)
    src = tmp_path / "smollm3"
    model.save_pretrained(src, safe_serialization=True)
    tensors = load_file(src / "model.safetensors")
    changes = dict(model_type="smollm3", architectures=["SmolLM3ForCausalLM"],
                   use_sliding_window=False, sliding_window=None)
    if flags is None:
        changes["no_rope_layer_interval"] = 2
    else:
        changes["no_rope_layers"] = flags
    rewrite_hf(src, tensors, drop=["tie_word_embeddings"], **changes)
    out, a = import_dir(src, "SmolLM3")
    assert int(a["nope_every"]) == 2 and int(a.get("tie_embeddings", 1)) == 1
    plain_loss = hf_loss_accuracy(model, d)[0]
    nope = without_rope(model, [1])
    _, want = evaluates_as_transformers(nope, d, cfg, out, "--model-from", out)
    assert abs(plain_loss - want) > 2e-4 * want, (plain_loss, want)
    generates_as_transformers(nope, out)
    exported = exports_back(out, tmp_path / "back", tensors)
    assert (exported["architectures"], exported["no_rope_layers"],
            exported["no_rope_layer_interval"], exported["use_sliding_window"],
            exported["tie_word_embeddings"]) == (["SmolLM3ForCausalLM"], [1, 0], 2, False, True)
    # (no token ids: SmolLM3Config's defaults, Llama 3's, lie past this vocabulary)
    assert exported["pad_token_id"] is None and exported["eos_token_id"] is None
    assert tool("triad-convert", "import", tmp_path / "back", tmp_path / "again.h5").returncode == 0
    same_import(out, tmp_path / "again.h5")
    if flags is not None:
        return
    # Refused: an export whose class rotates every layer (Granite's, for the embedding scale);
    # SmolLM3's window; a list that is not every N-th layer.
    bad = tmp_path / "granite.h5"
    bad.write_bytes(out.read_bytes())
    with h5py.File(bad, "r+") as f:
        f["model"].attrs["embed_scale"] = 2.0
    assert_clean_failure(tool("triad-convert", "export", bad, tmp_path / "m", "--to", "hf"),
                         "granite.h5", "model.nope_every", "GraniteForCausalLM")
    config = json.loads((src / "config.json").read_text())
    for change, needle in (({"use_sliding_window": True, "sliding_window": 8},
                            "use_sliding_window = true"),
                           ({"sliding_window": 8,
                             "layer_types": ["full_attention", "sliding_attention"]},
                            "layer_types ['full_attention', 'sliding_attention']"),
                           ({"no_rope_layers": [0, 1]}, "no_rope_layers [0, 1]"),
                           ({"no_rope_layers": [1, 2]}, "no_rope_layers must hold 1")):
        (src / "config.json").write_text(json.dumps({**config, **change}))
        assert_clean_failure(tool("triad-convert", "import", src, tmp_path / "x.h5"),
                             "config.json", needle)
    # A longer list (SmolLM3Config takes its first n_layer entries), and no rope_theta (2e6, its
    # default in transformers 4 and 5) import.
    (src / "config.json").write_text(json.dumps(
        {**{k: v for k, v in config.items() if k != "rope_theta"}, "no_rope_layers": [1, 0, 1]}))
    assert tool("triad-convert", "import", src, tmp_path / "y.h5").returncode == 0
    with h5py.File(tmp_path / "y.h5", "r") as f:
        assert (int(f["model"].attrs["nope_every"]), float(f["model"].attrs["rope_theta"])) == \
            (2, 2e6)
    # A config that disagrees with the checkpoint's layers is refused.
    p = train("--config", cfg, "--eval-only", "--init-from", out, "--model-from", out,
              "--model.nope_every", 0)
    assert p.returncode != 0 and "nope_every" in p.stderr, p.stderr


def mistral_model(window):
    torch.manual_seed(11)
    model = transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
        rms_norm_eps=1e-5, rope_theta=500.0, sliding_window=window, tie_word_embeddings=False))
    return spread(model)


@pytest.mark.parametrize("window", [SEQ, 8])
def test_mistral_imports_and_evaluates_as_transformers(imported, tmp_path, window):
    """transformers' MistralForCausalLM (Llama's tensors and math with grouped-query attention and
    a sliding window), imported: triad's validation loss and accuracy are transformers'. A window
    that covers the context needs none; a shorter one (8 of 32 positions) becomes
    model.sliding_window, which the config must then give (a checkpoint holds its window), and
    generation keeps to it. Fine-tuned and exported, MistralForCausalLM loads it and computes
    triad's loss; the import exported again is the original."""
    d, _, cfg = imported
    model = mistral_model(window)
    model.save_pretrained(tmp_path / "mistral", safe_serialization=True)
    out = tmp_path / "mistral.h5"
    p = tool("triad-convert", "import", tmp_path / "mistral", out, "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        assert int(f["model"].attrs.get("sliding_window", 0)) == (window if window < SEQ else 0)
        assert ("sliding_window" in f.attrs["config"].decode()) == (window < SEQ)
    want_loss, want_acc = hf_loss_accuracy(model, d)
    args = [*LLAMA_ARGS, "--model.n_head", 4, "--model.n_kv_head", 2]
    if window < SEQ:
        # The window matters here: the same weights attending to the whole context differ.
        whole, _ = hf_loss_accuracy(mistral_model(None), d)
        assert abs(whole - want_loss) > 1e-3 * want_loss, (whole, want_loss)
        refused = train("--config", cfg, "--eval-only", "--init-from", out, *args)
        assert_clean_error(refused, "attention window is 8 keys", "model.sliding_window = 0")
        args += ["--model.sliding_window", window]
    p = train("--config", cfg, "--eval-only", "--init-from", out, *args, check=True)
    loss = float(p.stdout.split("val loss")[1].split()[0])
    acc = float(p.stdout.split("val accuracy")[1].split()[0])
    assert abs(loss - want_loss) <= 1e-5 * want_loss, (loss, want_loss)
    assert abs(acc - want_acc) <= 1.5 / (EVAL_SEQUENCES * SEQ), (acc, want_acc)
    if window < SEQ:
        # Greedy generation past the window: triad-generate's tokens are transformers'.
        p = run([exe("triad-generate"), "--checkpoint", out, "--vocab", VOCAB, "--top-k", "1",
                 "--prompt-ids", " ".join(map(str, PROMPT)), "--length", "20", "--output", "ids"],
                check=True)
        assert [int(t) for t in p.stdout.split()] == greedy_continuation(model, PROMPT, 20)
        tuned = finetune_export_and_reimport(d, cfg, out, args, "mistral-ft", tmp_path, model)
        assert tuned.config.sliding_window == window
    assert tool("triad-ckpt", out).returncode == 0


def phi3_model(window):
    torch.manual_seed(17)
    model = transformers.Phi3ForCausalLM(transformers.Phi3Config(
        vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
        original_max_position_embeddings=N_POS, rms_norm_eps=1e-5, rope_theta=500.0,
        sliding_window=window, tie_word_embeddings=False, pad_token_id=None, resid_pdrop=0.0,
        embd_pdrop=0.0, attention_dropout=0.0))
    return spread(model)


@pytest.mark.parametrize("window", [None, 8])
def test_phi3_imports_and_evaluates_as_transformers(imported, tmp_path, window):
    """transformers' Phi3ForCausalLM (Mistral's math with q, k and v in one qkv_proj and the
    MLP's gate and up in one gate_up_proj; grouped-query attention, and a window of 8 of 32
    positions or none), imported: triad's validation loss and accuracy are transformers', and
    greedy generation past the window its tokens. Exported, it is a Llama (or with the window a
    Mistral) model that transformers loads and that computes the same loss."""
    d, _, cfg = imported
    model = phi3_model(window)
    out = import_hf(model, tmp_path / "phi3", "Phi-3")
    args = [*LLAMA_ARGS, "--model.n_head", 4, "--model.n_kv_head", 2]
    if window:
        args += ["--model.sliding_window", window]
    _, want_loss = evaluates_as_transformers(model, d, cfg, out, *args)
    p = run([exe("triad-generate"), "--checkpoint", out, "--vocab", VOCAB, "--top-k", "1",
             "--prompt-ids", " ".join(map(str, PROMPT)), "--length", "20", "--output", "ids"],
            check=True)
    assert [int(t) for t in p.stdout.split()] == greedy_continuation(model, PROMPT, 20)
    p = tool("triad-convert", "export", out, tmp_path / "phi3-out", "--to", "hf", "--vocab",
             "none")
    assert p.returncode == 0, p.stderr
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "phi3-out")
    assert type(exported).__name__ == ("MistralForCausalLM" if window else "LlamaForCausalLM")
    got, _ = hf_loss_accuracy(exported.eval(), d)
    assert abs(got - want_loss) <= 1e-5 * want_loss, (got, want_loss)


@pytest.mark.parametrize("original", [16, 32])
def test_phi3_longrope_imports_and_evaluates_as_transformers(imported, tmp_path, original):
    """Phi-3's LongRoPE (rope_scaling type longrope: one divisor per frequency, short and long)
    imported as model.rope_scaling = longrope, with 64 positions stretched from an original
    context of 16 (a 32-token context beyond it: the long factors) or of 32 (within it: the
    short ones), cos and sin scaled by sqrt(1 + ln s / ln original). triad's loss and accuracy
    are transformers' (whose Phi-3 picks the factors by the call's length, here the same side),
    the same weights with the other factors or without the scale differ, greedy generation within
    the original context is transformers'. Exported, it is a Phi-3 (its fused layout, the one
    class computing LongRoPE) that transformers loads and that computes the same loss, its
    tensors the original's bit for bit."""
    d, _, cfg = imported
    short = [1.0 + 0.25 * i for i in range(8)]
    long = [1.5 + 2.0 * i for i in range(8)]

    def phi3_longrope(short, long, original, positions=N_POS):
        plain = phi3_model(None)  # its weights, in a model built with the scaling
        config = copy.deepcopy(plain.config)
        config.original_max_position_embeddings = original
        config.max_position_embeddings = positions
        config.rope_scaling = {"type": "longrope", "short_factor": short, "long_factor": long}
        model = transformers.Phi3ForCausalLM(config)
        model.load_state_dict(plain.state_dict())
        return model.eval()

    model = phi3_longrope(short, long, original)
    out = import_hf(model, tmp_path / "phi3", "Phi-3")
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert a["rope_scaling"] in (b"longrope", "longrope")
        assert float(a["rope_scaling_factor"]) == N_POS / original
        assert int(a["rope_original_positions"]) == original
        assert list(a["rope_short_factor"]) == short and list(a["rope_long_factor"]) == long
    want_loss, want_acc = hf_loss_accuracy(model, d)
    p = train("--config", cfg, "--eval-only", "--init-from", out, "--model-from", out, check=True)
    loss = float(p.stdout.split("val loss")[1].split()[0])
    acc = float(p.stdout.split("val accuracy")[1].split()[0])
    assert abs(loss - want_loss) <= 1e-5 * want_loss, (loss, want_loss)
    assert abs(acc - want_acc) <= 1.5 / (EVAL_SEQUENCES * SEQ), (acc, want_acc)
    # The factors and the scale matter: the other list, or no stretch, computes another loss.
    swapped = phi3_longrope(long, short, original)
    assert abs(hf_loss_accuracy(swapped, d)[0] - want_loss) > 1e-4
    unscaled = phi3_longrope(short, long, original, positions=original)
    assert abs(hf_loss_accuracy(unscaled, d)[0] - want_loss) > 1e-4
    if original >= SEQ:  # every call within the original context: both use the short factors
        p = run([exe("triad-generate"), "--checkpoint", out, "--vocab", VOCAB, "--top-k", "1",
                 "--prompt-ids", " ".join(map(str, PROMPT)), "--length", "20", "--output",
                 "ids"], check=True)
        assert [int(t) for t in p.stdout.split()] == greedy_continuation(model, PROMPT, 20)
    p = tool("triad-convert", "export", out, tmp_path / "back", "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert back["model_type"] == "phi3" and back["rope_scaling"]["long_factor"] == long
    assert (back["max_position_embeddings"], back["original_max_position_embeddings"]) == \
        (N_POS, original)
    again = transformers.Phi3ForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert abs(hf_loss_accuracy(again, d)[0] - want_loss) <= 1e-9 * want_loss
    state = again.float().state_dict()
    for k, v in model.float().state_dict().items():
        assert torch.equal(state[k], v), k
    # Granite's multipliers have no place in Phi-3's format: such a checkpoint is not exported.
    shutil.copy(out, tmp_path / "scaled.h5")
    with h5py.File(tmp_path / "scaled.h5", "r+") as f:
        f["model"].attrs["embed_scale"] = 2.0
    assert_clean_failure(tool("triad-convert", "export", tmp_path / "scaled.h5",
                              tmp_path / "scaled", "--to", "hf", "--vocab", "none"),
                         "Phi-3", "model.embed_scale")
    # A config with other factors does not read this checkpoint.
    p = train("--config", cfg, "--eval-only", "--init-from", out, "--model-from", out,
              "--model.rope_long_factor", ", ".join(map(str, short)))
    assert_clean_failure(p, "rope_scaling longrope", "other factors")


def olmo_model(**config):
    torch.manual_seed(23)
    model = transformers.OlmoForCausalLM(transformers.OlmoConfig(**{
        **dict(vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
               rope_theta=500.0, tie_word_embeddings=False, pad_token_id=None,
               attention_dropout=0.0), **config}))
    return spread(model)


@pytest.mark.parametrize("tied,clip", [(False, None), (True, None), (False, 1.5)])
def test_olmo_imports_trains_and_exports_as_transformers(imported, tmp_path, tied, clip):
    """transformers' OlmoForCausalLM (Llama's tensors and math with LayerNorms that learn no
    weight or bias: OLMo's non-parametric norms; grouped-query attention; OLMo-1B's tied head or
    OLMo-7B's untied one; OLMo-1.7's clamp of q, k and v, clip_qkv 1.5, which cuts some of this
    model's: model.clip_qkv) imports as model.norm = layernorm, model.norm_weight = false: triad's
    loss and accuracy are transformers', greedy generation its tokens. Fine-tuned, the norms stay
    ones while the rest moves, and the export loads in transformers as OLMo computing triad's
    loss; exported again the import is the original bit for bit. A negative clip_qkv is
    refused."""
    d, _, cfg = imported
    model = olmo_model(tie_word_embeddings=tied, clip_qkv=clip)
    if clip:  # the clamp matters here: without it the loss differs
        unclipped = olmo_model(tie_word_embeddings=tied)
        assert abs(hf_loss_accuracy(unclipped, d)[0] - hf_loss_accuracy(model, d)[0]) > 1e-3
    out = import_hf(model, tmp_path / "olmo", "OLMo")
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert int(a["norm_weight"]) == 0 and a["norm"] in (b"layernorm", "layernorm")
        assert float(a.get("clip_qkv", 0.0)) == (clip or 0.0)
        assert np.all(f["model/h/1/ln_2/weight"][()] == 1) and np.all(f["model/ln_f/weight"][()] == 1)
    name = f"olmo-ft-{int(tied)}-{clip}"
    evaluates_generates_and_tunes(model, d, cfg, out, name, tmp_path)
    ckpt = sorted((d / "runs" / name / "ckpt").glob("step_*.h5"))[-1]
    with h5py.File(ckpt, "r") as f, h5py.File(out, "r") as g:
        for t in ("h/0/ln_1/weight", "h/1/ln_2/weight", "ln_f/weight"):
            assert np.all(f["model/" + t][()] == 1), t  # frozen: still ones
        w = "model/h/0/attn/c_attn/weight"
        assert not np.array_equal(f[w][()], g[w][()])  # trained
    bad = json.loads((tmp_path / "olmo" / "config.json").read_text())
    bad["clip_qkv"] = -8.0
    (tmp_path / "olmo" / "config.json").write_text(json.dumps(bad))
    assert_clean_failure(tool("triad-convert", "import", tmp_path / "olmo", tmp_path / "bad.h5"),
                         "config.json", "clip_qkv -8.0")
    assert not (tmp_path / "bad.h5").exists()


def olmo2_model(**config):
    torch.manual_seed(37)
    model = transformers.Olmo2ForCausalLM(transformers.Olmo2Config(**{
        **dict(vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
               rope_theta=500.0, rms_norm_eps=1e-6, tie_word_embeddings=False, pad_token_id=None,
               attention_dropout=0.0), **config}))
    return spread(model)


@pytest.mark.parametrize("tied", [False, True])
def test_olmo2_imports_trains_and_exports_as_transformers(imported, tmp_path, tied):
    """transformers' Olmo2ForCausalLM (no norms before the branches, an RMSNorm on each branch's
    output, QK-norm over the whole q and k projections, 4 query heads over 2, OLMo-2-7B's untied
    head or a tied one) imports as model.pre_norm = false, model.branch_norm, model.qk_norm_full:
    triad's loss and accuracy are transformers', on one rank and on tp 2 × pp 2, greedy
    generation its tokens; fine-tuned and exported it loads in transformers as OLMo-2 computing
    triad's loss, and the import exported again is the original bit for bit."""
    d, _, cfg = imported
    model = olmo2_model(tie_word_embeddings=tied)
    out = import_hf(model, tmp_path / "olmo2", "OLMo-2")
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (int(a["pre_norm"]), int(a["branch_norm"]), int(a["qk_norm_full"])) == (0, 1, 1)
        assert "ln_1" not in f["model/h/0"] and "ln_2" not in f["model/h/0"]
    evaluates_generates_and_tunes(model, d, cfg, out, f"olmo2-ft-{int(tied)}", tmp_path)
    p = mpi_run(4, "--config", cfg, "--eval-only", "--init-from", out, "--model-from", out,
                "--parallel.tp", 2, "--parallel.pp", 2)
    assert p.returncode == 0, p.stdout + p.stderr
    grid_loss = float(p.stdout.split("val loss")[1].split()[0])
    want_loss = hf_loss_accuracy(model, d)[0]
    assert abs(grid_loss - want_loss) <= 1e-5 * want_loss, (grid_loss, want_loss)



class Olmo3Reference(torch.nn.Module):
    """OLMo 3's model (Olmo3ForCausalLM) in float64, written from transformers' modeling_olmo3.py
    (4.57's and 5's; the transformers here predates it) over its files' tensors: OLMo-2's blocks
    (an RMSNorm, weight times the normalized values, on each branch's output; q and k RMSNormed
    over all heads), the layers layer_types names sliding (default: all but every 4th) seeing
    their last sliding_window keys and rotating by rope_theta unscaled, the others under the
    rope_scaling, here YaRN: each frequency blended between f and f / factor over the ramp of
    original_max_position_embeddings (floored and ceiled bounds), cos and sin times
    0.1·ln(factor) + 1; scores times head_dim^-0.5. scale_all: YaRN in every layer instead (what
    OLMo 3 does not do), to show the test can tell."""

    def __init__(self, cfg, tensors, scale_all=False):
        super().__init__()
        self.cfg, self.scale_all = cfg, scale_all
        self.t = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in tensors.items()}

    def forward(self, x, use_cache=False):
        c, t = self.cfg, self.t
        nh, kv = c["num_attention_heads"], c["num_key_value_heads"]
        hd = c["hidden_size"] // nh
        B, T = x.shape
        types = c.get("layer_types") or ["sliding_attention" if (n + 1) % 4 else "full_attention"
                                         for n in range(c["num_hidden_layers"])]

        def rms(h, w):
            return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + c["rms_norm_eps"]))

        def frequencies(scaled):
            base, r = c["rope_theta"], c.get("rope_scaling")
            f = 1.0 / base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
            if not scaled or not r:
                return f, 1.0
            factor = r["factor"]
            original = r.get("original_max_position_embeddings") or c["max_position_embeddings"]

            def at(turns):
                return hd * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(base))
            low = max(math.floor(at(r.get("beta_fast") or 32)), 0)
            high = min(math.ceil(at(r.get("beta_slow") or 1)), hd - 1)
            high = high + 0.001 if low == high else high
            ramp = ((torch.arange(hd // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
            return f / factor * ramp + f * (1 - ramp), 0.1 * math.log(factor) + 1

        def rope(q, scaled):  # [B, heads, T, hd], rotate-half pairs (i, i + hd/2)
            f, m = frequencies(scaled)
            ang = torch.arange(T, dtype=torch.float64)[:, None] * f[None, :]
            cos, sin = torch.cat([ang.cos(), ang.cos()], -1) * m, torch.cat([ang.sin(), ang.sin()], -1) * m
            half = torch.cat([-q[..., hd // 2:], q[..., :hd // 2]], -1)
            return q * cos + half * sin

        h = t["model.embed_tokens.weight"][x]
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        for n, kind in enumerate(types):
            p = f"model.layers.{n}."
            sliding = kind == "sliding_attention"
            q = rms(h @ t[p + "self_attn.q_proj.weight"].T, t[p + "self_attn.q_norm.weight"])
            k = rms(h @ t[p + "self_attn.k_proj.weight"].T, t[p + "self_attn.k_norm.weight"])
            v = h @ t[p + "self_attn.v_proj.weight"].T
            q, k, v = (z.view(B, T, -1, hd).transpose(1, 2) for z in (q, k, v))
            q, k = rope(q, self.scale_all or not sliding), rope(k, self.scale_all or not sliding)
            k, v = k.repeat_interleave(nh // kv, 1), v.repeat_interleave(nh // kv, 1)
            s = q @ k.transpose(-1, -2) * hd ** -0.5
            seen = (j <= i) & ((i - j < c["sliding_window"]) if sliding else True)
            s = s.masked_fill(~seen, float("-inf")).softmax(-1)
            o = (s @ v).transpose(1, 2).reshape(B, T, nh * hd) @ t[p + "self_attn.o_proj.weight"].T
            h = h + rms(o, t[p + "post_attention_layernorm.weight"])
            g = torch.nn.functional.silu(h @ t[p + "mlp.gate_proj.weight"].T)
            m = (g * (h @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
            h = h + rms(m, t[p + "post_feedforward_layernorm.weight"])
        logits = rms(h, t["model.norm.weight"]) @ t["lm_head.weight"].T
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize("scaled", [True, False], ids=["yarn", "plain"])
def test_olmo3_imports_and_evaluates_as_its_definition(imported, tmp_path, scaled):
    """An OLMo 3 model (Olmo3ForCausalLM's files: OLMo-2's tensors, an 8-key window in the
    sliding layers; with YaRN, factor 4 over 16 original positions, a sliding then a full layer,
    else layer_types left out: both sliding, Olmo3Config's default for 2 layers) imports as
    model.sliding_window with model.full_attention_every and, where the full layers are scaled,
    model.rope_local_theta = rope_theta (the windowed layers' table unscaled); triad's loss is
    the definition's (Olmo3Reference) to 1e-5, the same weights without the window (OLMo-2, as
    transformers computes it) or with YaRN in every layer give another loss; the export is OLMo
    3's config (both transformers versions' forms of the bases) and tensors, bit for bit, and
    imports back to the same checkpoint. The file's base is 500 in transformers 5's per-layer
    form; in 4's form (rope_theta alone) the versions read the sliding layers' base differently
    unless it is 500000, and such a file is refused."""
    from safetensors.torch import load_file
    d, _, cfg = imported
    model = olmo2_model()
    src = tmp_path / "olmo3"
    model.save_pretrained(src, safe_serialization=True)
    tensors = load_file(src / "model.safetensors")
    # transformers 5's form (a base per kind of layer: from rope_theta alone 5 would rotate the
    # sliding layers by 500000, 4.57 by rope_theta, 500 here)
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    full = {"rope_type": "default", "rope_theta": 500.0, **(yarn if scaled else {})}
    changes = dict(model_type="olmo3", architectures=["Olmo3ForCausalLM"], sliding_window=8,
                   rope_parameters={"full_attention": full, "sliding_attention": {
                       "rope_type": "default", "rope_theta": 500.0}})
    if scaled:
        changes.update(layer_types=["sliding_attention", "full_attention"])
    rewrite_hf(src, tensors, drop=["rope_theta", "rope_scaling"], **changes)
    config = json.loads((src / "config.json").read_text())
    definition = {**config, "rope_theta": 500.0, "rope_scaling": yarn if scaled else None}
    out, a = import_dir(src, "OLMo 3")
    assert int(a["sliding_window"]) == 8 and int(a["pre_norm"]) == 0
    if scaled:
        assert (int(a["full_attention_every"]), a["rope_scaling"], float(a["rope_local_theta"]),
                int(a["rope_original_positions"])) == (2, b"yarn", 500.0, 16)
    else:
        assert int(a.get("full_attention_every", 0)) == 0 and "rope_local_theta" not in a
    reference = Olmo3Reference(definition, {k: v.numpy() for k, v in tensors.items()})
    _, want = evaluates_as_transformers(reference, d, cfg, out, "--model-from", out)
    # (20 times the check's tolerance; measured: 8.6e-4 and 7.1e-4 relative)
    assert abs(hf_loss_accuracy(model, d)[0] - want) > 2e-4 * want
    if scaled:
        every = hf_loss_accuracy(Olmo3Reference(definition, reference.t, scale_all=True), d)[0]
        assert abs(every - want) > 2e-4 * want, (every, want)
        generates_as_transformers(reference, out)  # (decoding with the two tables)
        # DeepSeek's YaRN score scale beside a windowed base is not built: a checkpoint saying
        # so is refused by the programs that read no config too.
        bad = tmp_path / "mscale.h5"
        bad.write_bytes(out.read_bytes())
        with h5py.File(bad, "r+") as f:
            f["model"].attrs["rope_yarn_mscale_all_dim"] = 1.0
        p = run([exe("triad-generate"), "--checkpoint", bad, "--vocab", VOCAB, "--prompt-ids",
                 "1 2", "--length", "2"])
        assert_clean_error(p, "rope_local_theta", "rope_yarn_mscale_all_dim 1")
    exported = exports_back(out, tmp_path / "back", tensors)
    assert (exported["architectures"], exported["model_type"], exported["sliding_window"],
            exported["layer_types"]) == (["Olmo3ForCausalLM"], "olmo3", 8,
                                         config.get("layer_types", ["sliding_attention"] * 2))
    # Both forms: 4.57's rope_theta and rope_scaling, 5's base per kind of layer.
    written = {**yarn, "beta_fast": 32.0, "beta_slow": 1.0} if scaled else None
    assert (exported["rope_theta"], exported["rope_scaling"]) == (500.0, written)
    assert exported["rope_parameters"] == {
        "full_attention": {"rope_type": "default", "rope_theta": 500.0, **(written or {})},
        "sliding_attention": {"rope_type": "default", "rope_theta": 500.0}}
    assert tool("triad-convert", "import", tmp_path / "back", tmp_path / "again.h5").returncode == 0
    same_import(out, tmp_path / "again.h5")
    # transformers 4's form with a base other than 500000: the versions disagree, refused.
    older = {k: v for k, v in config.items() if k != "rope_parameters"}
    older.update(rope_theta=500.0, rope_scaling=yarn if scaled else None)
    (src / "config.json").write_text(json.dumps(older))
    assert_clean_failure(tool("triad-convert", "import", src, tmp_path / "x.h5"), "config.json",
                         "rope_theta 500.0 with sliding layers and no per-layer rope_parameters")
    (src / "config.json").write_text(json.dumps({**older, "rope_theta": 500000.0}))
    p = tool("triad-convert", "import", src, tmp_path / "x.h5", "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr


def starcoder2_model(**config):
    torch.manual_seed(29)
    model = transformers.Starcoder2ForCausalLM(transformers.Starcoder2Config(**{
        **dict(vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
               rope_theta=500.0, norm_epsilon=1e-5, use_bias=True, tie_word_embeddings=True,
               residual_dropout=0.0, embedding_dropout=0.0, attention_dropout=0.0,
               sliding_window=None), **config}))
    return spread(model)


@pytest.mark.parametrize("window,tied", [(None, True), (8, False)])
def test_starcoder2_imports_trains_and_exports_as_transformers(imported, tmp_path, window, tied):
    """transformers' Starcoder2ForCausalLM (GPT-2's sequential blocks with rope, LayerNorms and
    linear layers with biases, a GELU-tanh MLP, 4 query heads over 2, a tied head or not, and a
    window of 8 of 32 positions or none), imported: triad's loss and accuracy are transformers',
    greedy generation (past the window) its tokens; fine-tuned and exported, transformers' StarCoder2
    computes triad's loss, and the import exported again is the original bit for bit."""
    d, _, cfg = imported
    model = starcoder2_model(sliding_window=window, tie_word_embeddings=tied)
    out = import_hf(model, tmp_path / "sc2", "StarCoder2")
    tuned = evaluates_generates_and_tunes(model, d, cfg, out, f"sc2-ft-{window}", tmp_path)
    assert tuned.config.sliding_window == window


NEMOTRON_ARGS = ["--model.position", "rope", "--model.rope_theta", "500", "--model.norm",
                 "layernorm", "--model.bias", "false", "--model.norm_bias", "true", "--model.mlp",
                 "relu2", "--model.mlp_hidden", "176", "--model.tie_embeddings", "false",
                 "--model.n_head", "4", "--model.n_kv_head", "2"]


def tiny_hf(cls, config_cls, seed, defaults, config):
    """transformers' model cls of config_cls(defaults updated by config), seeded, spread."""
    torch.manual_seed(seed)
    return spread(cls(config_cls(**{**defaults, **config})))


@pytest.fixture
def nemotron_on_this_torch(monkeypatch):
    """transformers' NemotronLayerNorm1P hands nn.LayerNorm a `bias` argument, which torch
    before 2.1 (Debian's 1.13 here) does not take: on such a torch its constructor passes the
    others (bias = True is the old LayerNorm's only kind). Its forward stays transformers'."""
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 1):
        return
    from transformers.models.nemotron import modeling_nemotron

    def init(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None,
             dtype=None):
        assert bias
        torch.nn.LayerNorm.__init__(self, normalized_shape, eps, elementwise_affine,
                                    device=device, dtype=dtype)

    monkeypatch.setattr(modeling_nemotron.NemotronLayerNorm1P, "__init__", init)


def nemotron_model(**config):
    return tiny_hf(transformers.NemotronForCausalLM, transformers.NemotronConfig, 19, dict(
        vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
        norm_eps=1e-5, rope_theta=500.0, partial_rotary_factor=0.5,
        tie_word_embeddings=False, pad_token_id=None), config)


def evaluates_on_tp2(cfg, ckpt, args, want_loss):
    """ckpt (with args) evaluated on tp 2 gives want_loss to 1e-5."""
    p = mpi_run(2, "--config", cfg, "--eval-only", "--init-from", ckpt, *args, "--parallel.tp", 2)
    assert p.returncode == 0, p.stdout + p.stderr
    tp_loss = float(p.stdout.split("val loss")[1].split()[0])
    assert abs(tp_loss - want_loss) <= 1e-5 * want_loss, (tp_loss, want_loss)


def exports_with_loss(ckpt, directory, cls, d, want):
    """ckpt exported to directory (--to hf) loads as transformers' cls, whose validation loss is
    want to 1e-5."""
    p = tool("triad-convert", "export", ckpt, directory, "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    got, _ = hf_loss_accuracy(cls.from_pretrained(directory).eval(), d)
    assert abs(got - want) <= 1e-5 * want, (got, want)


def generates_as_transformers(model, ckpt):
    """triad-generate's greedy continuation of PROMPT from ckpt is transformers' model's."""
    p = run([exe("triad-generate"), "--checkpoint", ckpt, "--vocab", VOCAB, "--top-k", "1",
             "--prompt-ids", " ".join(map(str, PROMPT)), "--length", "20", "--output", "ids"],
            check=True)
    assert [int(t) for t in p.stdout.split()] == greedy_continuation(model, PROMPT, 20)


def hf_round_trip(imported, tmp_path, model, kind, args, offset, attrs, same_layout=True,
                  tp2=True):
    """transformers' model (of `kind`) imported: the checkpoint's /model attributes include
    attrs; triad's validation loss and accuracy (with args) are transformers' on one rank and on
    tp 2, and greedy generation gives its tokens. A run fine-tuned from it exports as the same
    class, which computes triad's loss; the import exported again is the original, bit for bit
    but (offset: Nemotron's and Gemma's w - 1 through 1 + w in fp32) the norm weights, to an ulp
    of 1 + w; a model the export writes in another layout (same_layout false: Falcon-7B's, written
    as Falcon-40B's) computes the original's loss instead. tp2: also evaluated on tp 2."""
    d, _, cfg = imported
    cls = type(model)
    out = import_hf(model, tmp_path / kind, kind)
    with h5py.File(out, "r") as f:
        a = {k: v.decode() if isinstance(v, bytes) else v for k, v in f["model"].attrs.items()}
        assert {k: a.get(k) for k in attrs} == attrs, a
    _, want_loss = evaluates_as_transformers(model, d, cfg, out, *args)
    if tp2:
        evaluates_on_tp2(cfg, out, args, want_loss)
    generates_as_transformers(model, out)

    name = f"{tmp_path.name}-ft"  # a run of its own in the module's directory
    train("--config", cfg, "--init-from", out, *args, "--run.name", name, check=True)
    with h5py.File(d / "runs" / name / "metrics.h5", "r") as f:
        triad_loss = float(f["val/loss"][-1])
    p = tool("triad-convert", "export", d / "runs" / name, tmp_path / "ft-hf", "--to", "hf",
             "--vocab", "none")
    assert p.returncode == 0, p.stderr
    tuned, info = cls.from_pretrained(tmp_path / "ft-hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert getattr(tuned.config, "partial_rotary_factor", None) == \
        getattr(model.config, "partial_rotary_factor", None)
    loss, _ = hf_loss_accuracy(tuned.eval(), d)
    assert abs(loss - triad_loss) <= 1e-5 * triad_loss, (loss, triad_loss)
    p = tool("triad-convert", "export", out, tmp_path / "again", "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    if not same_layout:
        got, _ = hf_loss_accuracy(cls.from_pretrained(tmp_path / "again").eval(), d)
        assert abs(got - want_loss) <= 1e-5 * want_loss, (got, want_loss)
        return
    again = cls.from_pretrained(tmp_path / "again").state_dict()
    for k, v in model.float().state_dict().items():
        if offset and (k.endswith("layernorm.weight") or k == "model.norm.weight"):
            # through 1 + w in fp32: within half an ulp of 1 + w
            assert bool(((again[k] - v).abs() <= 2.0 ** -23 * (1 + v.abs())).all()), k
        elif not k.endswith("inv_freq"):
            assert torch.equal(again[k], v), k


@pytest.mark.parametrize("factor", [0.5, 0.25, 1.0])
def test_nemotron_imports_and_evaluates_as_transformers(imported, tmp_path, factor,
                                                       nemotron_on_this_torch):
    """transformers' NemotronForCausalLM (LayerNorms with biases whose weights it stores as
    w - 1, the squared-ReLU MLP, no linear biases, half, a quarter or all of each head's 16
    values rotating, grouped-query attention) against triad's model.norm_bias, model.mlp = relu2
    and model.rotary_dim: hf_round_trip."""
    rot = int(16 * factor) % 16  # all 16: plain rope, rotary_dim 0
    hf_round_trip(imported, tmp_path, nemotron_model(partial_rotary_factor=factor), "Nemotron",
                  [*NEMOTRON_ARGS, "--model.rotary_dim", rot], True,
                  {"mlp": "relu2", "norm": "layernorm", "bias": 0, "norm_bias": 1,
                   "rotary_dim": rot or None})


def stablelm_model(**config):
    return tiny_hf(transformers.StableLmForCausalLM, transformers.StableLmConfig, 23, dict(
        vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
        layer_norm_eps=1e-5, rope_theta=500.0, partial_rotary_factor=0.25,
        tie_word_embeddings=False, pad_token_id=None), config)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_stablelm_imports_and_evaluates_as_transformers(imported, tmp_path, qkv_bias):
    """transformers' StableLmForCausalLM (StableLM-2's blocks: LayerNorms with biases, SwiGLU, a
    quarter of each head's values rotating, grouped-query attention, q, k and v biases or not)
    against triad's model.norm_bias, model.rotary_dim and model.qkv_bias: hf_round_trip."""
    args = [*NEMOTRON_ARGS, "--model.mlp", "swiglu", "--model.qkv_bias", str(qkv_bias).lower(),
            "--model.rotary_dim", 4]
    args.pop(args.index("relu2") - 1), args.remove("relu2")  # NEMOTRON_ARGS' own --model.mlp
    hf_round_trip(imported, tmp_path, stablelm_model(use_qkv_bias=qkv_bias), "StableLM", args,
                  False, {"mlp": "swiglu", "norm": "layernorm", "norm_bias": 1, "rotary_dim": 4,
                          "qkv_bias": int(qkv_bias)})


def neox_model(**config):
    return tiny_hf(transformers.GPTNeoXForCausalLM, transformers.GPTNeoXConfig, 31, dict(
        vocab_size=V, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=N_POS, rotary_pct=0.25,
        rotary_emb_base=500.0, layer_norm_eps=1e-5, use_parallel_residual=True,
        hidden_act="gelu", tie_word_embeddings=False), config)


@pytest.mark.parametrize("parallel,act", [(True, "gelu"), (False, "gelu_new")])
def test_gpt_neox_imports_and_evaluates_as_transformers(imported, tmp_path, parallel, act):
    """transformers' GPTNeoXForCausalLM (Pythia's blocks: q, k, v interleaved by head in
    query_key_value, a quarter of each head's values rotating, biases, an untied embed_out;
    parallel attention and MLP with GELU exact, or one after the other with its tanh
    approximation) against triad's model.parallel_residual, model.mlp = gelu_exact and
    model.rotary_dim: hf_round_trip."""
    args = ["--model.position", "rope", "--model.rope_theta", "500", "--model.mlp_hidden", "256",
            "--model.tie_embeddings", "false", "--model.n_head", "4", "--model.rotary_dim", "4",
            "--model.parallel_residual", str(parallel).lower(), "--model.mlp",
            "gelu_exact" if act == "gelu" else "gelu"]
    hf_round_trip(imported, tmp_path, neox_model(use_parallel_residual=parallel, hidden_act=act),
                  "GPT-NeoX", args, False,
                  {"mlp": "gelu_exact" if act == "gelu" else "gelu", "norm": "layernorm",
                   "bias": 1, "rotary_dim": 4, "parallel_residual": 1 if parallel else None})


def falcon_model(**config):
    return tiny_hf(transformers.FalconForCausalLM, transformers.FalconConfig, 37, dict(
        vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_kv_heads=2, new_decoder_architecture=True, parallel_attn=True, bias=False,
        alibi=False, max_position_embeddings=N_POS, rope_theta=500.0, layer_norm_epsilon=1e-5,
        attn_implementation="eager"), config)


@pytest.mark.parametrize("layout", ["40b", "40b_one_norm", "7b"])
def test_falcon_imports_and_evaluates_as_transformers(imported, tmp_path, layout):
    """transformers' FalconForCausalLM (parallel attention and MLP, LayerNorms with biases,
    bias-free linear layers, GELU exact, tied embeddings, rope) in Falcon-40B's layout (ln_attn and
    ln_mlp, or one input_layernorm with num_ln_in_parallel_attn = 1; query_key_value grouped by
    key/value head: 4 query heads over 2) and Falcon-7B's (one LayerNorm for both branches,
    multi-query attention) against triad's model.parallel_residual, model.shared_norm,
    model.norm_bias and model.mlp = gelu_exact: hf_round_trip (Falcon-7B's written back in
    Falcon-40B's layout; tp 2, whose parallel branches are reduced as one, where the key/value
    heads split)."""
    kv = 1 if layout == "7b" else 2
    shared = layout != "40b"
    model = {"40b": falcon_model, "40b_one_norm": lambda: falcon_model(num_ln_in_parallel_attn=1),
             "7b": lambda: falcon_model(new_decoder_architecture=False, multi_query=True,
                                        num_kv_heads=None)}[layout]()
    args = ["--model.position", "rope", "--model.rope_theta", "500", "--model.bias", "false",
            "--model.norm_bias", "true", "--model.mlp", "gelu_exact", "--model.n_head", "4",
            "--model.n_kv_head", kv, "--model.parallel_residual", "true", "--model.shared_norm",
            str(shared).lower()]
    hf_round_trip(imported, tmp_path, model, "Falcon", args, False,
                  {"mlp": "gelu_exact", "norm_bias": 1, "parallel_residual": 1, "n_kv_head": kv,
                   "shared_norm": 1 if shared else None},
                  same_layout=layout != "7b", tp2=kv == 2)


GEMMA_ARGS = ["--model.position", "rope", "--model.rope_theta", "500", "--model.norm", "rmsnorm",
              "--model.bias", "false", "--model.mlp", "geglu", "--model.mlp_hidden", "96",
              "--model.n_head", "4", "--model.n_kv_head", "2", "--model.head_dim", "24",
              "--model.norm_eps", "1e-06", "--model.embed_scale", "8"]


# The sizes of the Gemma and Gemma 2 models below (GEMMA_ARGS').
GEMMA_SIZES = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                   max_position_embeddings=N_POS, rms_norm_eps=1e-6, rope_theta=500.0,
                   hidden_activation="gelu_pytorch_tanh", pad_token_id=None)


def gemma_model(**config):
    return tiny_hf(transformers.GemmaForCausalLM, transformers.GemmaConfig, 29, GEMMA_SIZES,
                   config)


def test_gemma_imports_and_evaluates_as_transformers(imported, tmp_path):
    """transformers' GemmaForCausalLM (GeGLU, RMSNorm scaling by 1 + w, the tied embedding's
    output times sqrt(64) = 8, 4 query heads over 2, heads 24 wide at n_embd 64)
    against triad's model.mlp = geglu, model.embed_scale and model.head_dim: hf_round_trip."""
    hf_round_trip(imported, tmp_path, gemma_model(), "Gemma", GEMMA_ARGS, True,
                  {"mlp": "geglu", "norm": "rmsnorm", "embed_scale": 8.0, "head_dim": 24,
                   "tie_embeddings": 1, "n_kv_head": 2})


GRANITE_ARGS = LLAMA_ARGS + ["--model.n_kv_head", "2", "--model.embed_scale", "12",
                             "--model.attn_scale", "0.0625", "--model.residual_scale", "0.22",
                             "--model.logit_scale", "0.125"]


def granite_model(**config):
    return tiny_hf(transformers.GraniteForCausalLM, transformers.GraniteConfig, 37, dict(
        vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
        rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=False,
        embedding_multiplier=12.0, attention_multiplier=0.0625, residual_multiplier=0.22,
        logits_scaling=8.0, pad_token_id=None), config)


def test_granite_imports_and_evaluates_as_transformers(imported, tmp_path):
    """transformers' GraniteForCausalLM (Llama's blocks, 4 query heads over 2, with IBM's
    multipliers: the embedding's output times 12, the scores times 1/16 instead of 1/4, each
    branch's output times 0.22, the logits divided by 8) against triad's model.embed_scale,
    model.attn_scale, model.residual_scale and model.logit_scale: hf_round_trip."""
    hf_round_trip(imported, tmp_path, granite_model(), "Granite", GRANITE_ARGS, False,
                  {"embed_scale": 12.0, "attn_scale": 0.0625,
                   "residual_scale": float(np.float32(0.22)), "logit_scale": 0.125})


def test_minicpm_imports_and_evaluates_as_granite(imported, tmp_path):
    """MiniCPM 1 and 2's scalings are Granite's multipliers under other names: a transformers
    GraniteForCausalLM whose multipliers are MiniCPM's (embedding times scale_emb 12, branches
    times scale_depth 1.4 / sqrt(2 layers), logits divided by hidden_size / dim_model_base = 64
    / 16, scores at 1/sqrt(head width)) written with MiniCPM's config.json (model_type minicpm)
    imports to the same scalings (tied, the key left out as save_pretrained writes OpenBMB's
    default), evaluates to Granite's loss, generates its tokens and exports as a Granite that
    computes it; without scale_depth, with MiniCPM4's sparse attention, MiniCPM-MoE's experts or
    a rope scaling, it is refused."""
    d, _, cfg = imported
    model = granite_model(embedding_multiplier=12.0, attention_multiplier=0.25,
                          residual_multiplier=1.4 / math.sqrt(2), logits_scaling=4.0,
                          tie_word_embeddings=True)
    hf = tmp_path / "minicpm"
    model.save_pretrained(hf, safe_serialization=True)
    minicpm = {k: v for k, v in json.loads((hf / "config.json").read_text()).items()
               if not k.endswith(("_multiplier", "logits_scaling")) and
               k != "tie_word_embeddings"}  # (tied: OpenBMB's default, left out as HF saves it)
    minicpm.update(model_type="minicpm", architectures=["MiniCPMForCausalLM"], scale_emb=12,
                   scale_depth=1.4, dim_model_base=16)
    (hf / "config.json").write_text(json.dumps(minicpm))
    out = tmp_path / "minicpm.h5"
    p = tool("triad-convert", "import", hf, out, "--seq-len", SEQ)
    assert p.returncode == 0 and "Hugging Face MiniCPM model" in p.stdout, p.stdout + p.stderr
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (float(a["embed_scale"]), float(a["residual_scale"]), float(a["logit_scale"])) == \
            (12.0, float(np.float32(1.4 / math.sqrt(2))), 0.25) and "attn_scale" not in a
    _, want = evaluates_as_transformers(model, d, cfg, out, "--model-from", out)
    generates_as_transformers(model, out)
    exports_with_loss(out, tmp_path / "granite", transformers.GraniteForCausalLM, d, want)
    for change, needle in (({"scale_depth": None}, "needs scale_depth"),
                           ({"sparse_config": {"kernel_size": 32}}, "sparse_config"),
                           ({"num_experts": 8}, "num_experts 8 (MiniCPM-MoE's"),
                           ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0]}},
                            "rope_scaling of type 'longrope'")):
        (hf / "config.json").write_text(json.dumps({**minicpm, **change}))
        p = tool("triad-convert", "import", hf, tmp_path / "bad.h5", "--seq-len", SEQ)
        assert_clean_error(p, "config.json", needle)


def granite_moe_model(**config):
    return tiny_hf(transformers.GraniteMoeForCausalLM, transformers.GraniteMoeConfig, 41, dict(
        vocab_size=V, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
        rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=False, num_local_experts=4,
        num_experts_per_tok=2, embedding_multiplier=12.0, attention_multiplier=0.0625,
        residual_multiplier=0.22, logits_scaling=8.0, pad_token_id=None), config)


def test_granite_moe_imports_and_evaluates_as_transformers(imported, tmp_path):
    """transformers' GraniteMoeForCausalLM (Granite's multipliers; every MLP 4 SwiGLU experts,
    each layer's stored as two tensors, input_linear [4, 96, 64] with each expert's gate then up
    rows and output_linear [4, 64, 48], behind a router whose 2 largest logits' softmax weighs
    them) against triad's mixture of experts (model.moe_normalize: the renormalized softmax,
    the same gates) with the multipliers: hf_round_trip, the expert tensors exported whole."""
    hf_round_trip(imported, tmp_path, granite_moe_model(), "GraniteMoE",
                  MIXTRAL_ARGS + ["--model.moe_experts", 4, "--model.moe_top_k", 2,
                                  *GRANITE_ARGS[len(LLAMA_ARGS) + 2:]], False,
                  {"moe_experts": 4, "moe_top_k": 2, "moe_normalize": 1, "embed_scale": 12.0,
                   "residual_scale": float(np.float32(0.22)), "logit_scale": 0.125})


COHERE_ARGS = ["--model.position", "rope", "--model.rope_theta", "500", "--model.norm",
               "layernorm", "--model.bias", "false", "--model.mlp", "swiglu", "--model.mlp_hidden",
               "176", "--model.n_head", "4", "--model.n_kv_head", "2", "--model.parallel_residual",
               "true", "--model.shared_norm", "true", "--model.logit_scale", "0.25"]


def cohere_model(**config):
    return tiny_hf(transformers.CohereForCausalLM, transformers.CohereConfig, 43, dict(
        vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
        layer_norm_eps=1e-5, rope_theta=500.0, logit_scale=0.25, use_qk_norm=False,
        tie_word_embeddings=True, pad_token_id=None, bos_token_id=None, eos_token_id=None),
        config)


def test_cohere_imports_and_evaluates_as_transformers(imported, tmp_path):
    """transformers' CohereForCausalLM (attention and SwiGLU side by side on one LayerNorm without
    biases, 4 query heads over 2, rope on interleaved pairs, the tied head's logits times 1/4)
    against triad's model.parallel_residual, model.shared_norm and model.logit_scale, q's and k's
    rows reordered to triad's rope pairs: hf_round_trip (the export reorders them back, bit for
    bit)."""
    hf_round_trip(imported, tmp_path, cohere_model(), "Cohere", COHERE_ARGS, False,
                  {"parallel_residual": 1, "shared_norm": 1, "logit_scale": 0.25, "bias": 0,
                   "norm": "layernorm"})


def windowed(model, layers, window):
    """transformers' model whose `layers` attend to their last `window` keys, themselves included
    (Cohere2's sliding layers; the transformers here predates Cohere2): each layer's attention
    handed the causal mask cut to the window. For whole-sequence forward passes (no key/value
    cache: its T would be the new rows only), as hf_loss_accuracy's and greedy_continuation's."""
    for i in layers:
        attn = model.model.layers[i].self_attn

        def forward(*args, attention_mask=None, position_embeddings=None, _inner=attn.forward,
                    **kw):
            cos = position_embeddings[0]
            T = cos.shape[-2]
            r, c = torch.arange(T)[:, None], torch.arange(T)[None, :]
            seen = (c <= r) & (r - c < window)
            mask = torch.zeros(T, T, dtype=cos.dtype).masked_fill(~seen, torch.finfo(cos.dtype).min)
            return _inner(*args, attention_mask=mask[None, None],
                          position_embeddings=position_embeddings, **kw)
        attn.forward = forward
    return model


@pytest.mark.parametrize("types", [True, False], ids=["layer_types", "pattern"])
def test_cohere2_imports_and_evaluates_as_transformers(imported, tmp_path, types):
    """A Cohere2 model (Cohere2ForCausalLM's files: Cohere's tensors; its sliding layers keep to
    an 8-key window and rotate, its full ones see everything without rope; here a sliding then a
    full layer, said by layer_types or by sliding_window_pattern 2) imports as
    model.sliding_window = 8 with model.full_attention_every = model.nope_every = 2; triad's loss
    is transformers' Cohere with layer 0 windowed and layer 1's rotation removed (windowed,
    without_rope) to 1e-5 and its greedy tokens triad-generate's, the plain Cohere's loss is
    another; the export is Cohere2's config (both forms of the layers) and the tensors, q's and
    k's rope pairs reordered back, bit for bit, imported back to the same checkpoint."""
    from safetensors.torch import load_file
    d, _, cfg = imported
    model = cohere_model()
    src = tmp_path / "cohere2"
    model.save_pretrained(src, safe_serialization=True)
    tensors = load_file(src / "model.safetensors")
    changes = dict(model_type="cohere2", architectures=["Cohere2ForCausalLM"], sliding_window=8)
    if types:
        changes["layer_types"] = ["sliding_attention", "full_attention"]
    else:
        changes["sliding_window_pattern"] = 2
    rewrite_hf(src, tensors, **changes)
    out, a = import_dir(src, "Cohere2")
    assert (int(a["sliding_window"]), int(a["full_attention_every"]), int(a["nope_every"])) == \
        (8, 2, 2)
    plain_loss = hf_loss_accuracy(model, d)[0]
    only_nope = hf_loss_accuracy(without_rope(cohere_model(), [1]), d)[0]
    only_window = hf_loss_accuracy(windowed(cohere_model(), [0], 8), d)[0]
    reference = windowed(without_rope(model, [1]), [0], 8)
    _, want = evaluates_as_transformers(reference, d, cfg, out, "--model-from", out)
    # Each hook changes the loss, by more than twice the check's tolerance (measured: plain 1.7e-4,
    # the window alone 2.4e-4, the missing rotation alone 3.8e-5 relative).
    for other in (plain_loss, only_nope, only_window):
        assert abs(other - want) > 2e-5 * want, (other, want)
    generates_as_transformers(reference, out)
    exported = exports_back(out, tmp_path / "back", tensors)
    assert (exported["architectures"], exported["sliding_window"],
            exported["sliding_window_pattern"], exported["layer_types"]) == \
        (["Cohere2ForCausalLM"], 8, 2, ["sliding_attention", "full_attention"])
    assert exported["eos_token_id"] is None and exported["pad_token_id"] is None
    assert tool("triad-convert", "import", tmp_path / "back", tmp_path / "again.h5").returncode == 0
    same_import(out, tmp_path / "again.h5")
    if not types:
        return
    # use_qk_norm, which no Cohere2 reads, is ignored; a missing logit_scale is the classes'
    # 0.0625; a window the context does not exceed is kept; another head_dim is refused.
    config = json.loads((src / "config.json").read_text())
    config.pop("logit_scale")
    (src / "config.json").write_text(json.dumps({**config, "use_qk_norm": True,
                                                 "sliding_window": 64}))
    out.unlink()  # (import_dir writes it again)
    _, a = import_dir(src, "Cohere2")
    assert (float(a["logit_scale"]), int(a["sliding_window"]), int(a["nope_every"])) == \
        (0.0625, 64, 2)
    (src / "config.json").write_text(json.dumps({**config, "head_dim": 32}))
    assert_clean_failure(tool("triad-convert", "import", src, tmp_path / "x.h5"), "config.json",
                         "head_dim 32")


PHI_ARGS = ["--model.position", "rope", "--model.rope_theta", "500", "--model.mlp_hidden", "256",
            "--model.n_head", "4", "--model.tie_embeddings", "false", "--model.rotary_dim", "8",
            "--model.parallel_residual", "true", "--model.shared_norm", "true",
            "--model.head_bias", "true"]


def phi_model(**config):
    return tiny_hf(transformers.PhiForCausalLM, transformers.PhiConfig, 47, dict(
        vocab_size=V, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=N_POS, layer_norm_eps=1e-5,
        rope_theta=500.0, partial_rotary_factor=0.5, hidden_act="gelu_new", qk_layernorm=False,
        tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
        pad_token_id=None, bos_token_id=None, eos_token_id=None), config)


def test_phi_imports_and_evaluates_as_transformers(imported, tmp_path):
    """transformers' PhiForCausalLM (Phi-2's blocks: attention and a GELU MLP side by side on one
    LayerNorm, biases everywhere, half of each head's values rotating, an untied head with a bias)
    against triad's model.parallel_residual, model.shared_norm, model.rotary_dim and
    model.head_bias: hf_round_trip."""
    hf_round_trip(imported, tmp_path, phi_model(), "Phi", PHI_ARGS, False,
                  {"parallel_residual": 1, "shared_norm": 1, "head_bias": 1, "rotary_dim": 8,
                   "tie_embeddings": 0})


GPTJ_ARGS = ["--model.position", "rope", "--model.rope_theta", "10000", "--model.mlp_hidden", "256",
             "--model.n_head", "4", "--model.tie_embeddings", "false", "--model.rotary_dim", "6",
             "--model.bias", "false", "--model.mlp_bias", "true", "--model.norm_bias", "true",
             "--model.parallel_residual", "true", "--model.shared_norm", "true",
             "--model.head_bias", "true"]


def gptj_model(**config):
    return tiny_hf(transformers.GPTJForCausalLM, transformers.GPTJConfig, 53, dict(
        vocab_size=V, n_embd=64, n_inner=256, n_layer=2, n_head=4, n_positions=N_POS,
        rotary_dim=6, layer_norm_epsilon=1e-5, activation_function="gelu_new",
        tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None, attn_implementation="eager"), config)


def test_gptj_imports_and_evaluates_as_transformers(imported, tmp_path):
    """transformers' GPTJForCausalLM (attention without biases and a GELU MLP with them side by
    side on one LayerNorm, rope on the first 6 of each head's 16 values in interleaved pairs, an
    untied head with a bias) against triad's model.parallel_residual, model.shared_norm,
    model.mlp_bias, model.rotary_dim and model.head_bias: hf_round_trip (tp 2 too, its parallel
    branches reduced as one)."""
    hf_round_trip(imported, tmp_path, gptj_model(), "GPT-J", GPTJ_ARGS, False,
                  {"parallel_residual": 1, "shared_norm": 1, "head_bias": 1, "rotary_dim": 6,
                   "mlp_bias": 1, "bias": 0, "norm_bias": 1, "tie_embeddings": 0})


def test_codegen_imports_and_evaluates_as_transformers(imported, tmp_path):
    """transformers' CodeGenForCausalLM (GPT-J's blocks, q, v and k fused in qkv_proj as 4 blocks
    of [q | v | k], each for 2 of its 8 heads; rope on 6 of each head's 8 values) imports as
    GPT-J's model, evaluates (loss to 1e-5) and generates as CodeGen, and exports as a
    GPTJForCausalLM computing the same loss; the rows taken in their stored order give another
    model; 6 heads (not in 4 blocks) are refused."""
    d, _, cfg = imported
    model = tiny_hf(transformers.CodeGenForCausalLM, transformers.CodeGenConfig, 59, dict(
        vocab_size=V, n_embd=64, n_inner=256, n_layer=2, n_head=8, n_positions=N_POS, n_ctx=N_POS,
        rotary_dim=6, layer_norm_epsilon=1e-5, activation_function="gelu_new",
        tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None), {})
    out = import_hf(model, tmp_path / "codegen", "CodeGen")
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (int(a["parallel_residual"]), int(a["rotary_dim"]), int(a["head_bias"])) == \
            (1, 6, 1)
    _, want = evaluates_as_transformers(model, d, cfg, out, "--model-from", out)
    generates_as_transformers(model, out)
    exports_with_loss(out, tmp_path / "gptj", transformers.GPTJForCausalLM, d, want)
    # The blocks matter: CodeGen's rows read as GPT-J's q | k | v give another loss.
    sd = model.state_dict()
    qkv = {k: v for k, v in sd.items() if k.endswith("qkv_proj.weight")}
    as_gptj = {k: v for k, v in sd.items() if not k.endswith("qkv_proj.weight")}
    for k, w in qkv.items():
        for x, part in zip("qkv", w.split(64)):
            as_gptj[k.replace("qkv_proj", f"{x}_proj")] = part
    wrong = tiny_hf(transformers.GPTJForCausalLM, transformers.GPTJConfig, 59, dict(
        vocab_size=V, n_embd=64, n_inner=256, n_layer=2, n_head=8, n_positions=N_POS,
        rotary_dim=6, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
        attn_implementation="eager"), {})
    wrong.load_state_dict(as_gptj)  # (every tensor: strict)
    other, _ = hf_loss_accuracy(wrong.eval(), d)
    assert abs(other - want) > 1e-3 * want, (other, want)
    six = tiny_hf(transformers.CodeGenForCausalLM, transformers.CodeGenConfig, 59, dict(
        vocab_size=V, n_embd=48, n_inner=192, n_layer=1, n_head=6, n_positions=N_POS,
        n_ctx=N_POS, rotary_dim=6, tie_word_embeddings=False), {})
    six.save_pretrained(tmp_path / "six", safe_serialization=True)
    p = tool("triad-convert", "import", tmp_path / "six", tmp_path / "six.h5", "--seq-len", SEQ)
    assert_clean_error(p, "config.json", "n_head 6 (CodeGen's qkv_proj holds its heads in 4")


GPT_NEO_ARGS = ["--model.n_layer", "3", "--model.attn_scale", "1", "--model.sliding_window", "8",
                "--model.full_attention_every", "2", "--model.full_attention_first", "true",
                "--train.freeze", "*/c_attn/bias"]


def gpt_neo_model(**config):
    return tiny_hf(transformers.GPTNeoForCausalLM, transformers.GPTNeoConfig, 71, dict(
        vocab_size=V, hidden_size=64, num_layers=3, num_heads=4, max_position_embeddings=SEQ,
        window_size=8, attention_types=[[["global", "local"], 1], [["global"], 1]],
        intermediate_size=None, layer_norm_epsilon=1e-5, activation_function="gelu_new",
        resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0, bos_token_id=None,
        eos_token_id=None), config)


@pytest.mark.parametrize("act", ["gelu_new", "gelu"])
def test_gpt_neo_imports_and_evaluates_as_transformers(imported, tmp_path, act):
    """transformers' GPTNeoForCausalLM (GPT-2's blocks with unscaled scores, q, k and v without
    biases, layers global, local (an 8-key window), global; GELU's tanh approximation, or exact)
    against triad's model.attn_scale = 1, model.sliding_window with model.full_attention_every =
    2 and model.full_attention_first (and model.mlp = gelu_exact): hf_round_trip, fine-tuned with
    c_attn's zero bias frozen. The order of the layers matters (local first gives another loss);
    a fine-tuned q bias, which GPT-Neo cannot hold, is refused on export, and so is a pattern of
    layers triad does not compute. (The two GELUs move this model's loss by 5e-7 of it, below the
    1e-5 the comparison allows: for them the attribute mlp is what is checked; triad's exact GELU
    is held to PyTorch's by the Pythia and reference-model tests.) Nonzero k and v biases export
    as the same model (k's dropped, v's folded into out_proj's bias): transformers' loss of the
    export is triad's of the checkpoint."""
    d, _, cfg = imported
    model = gpt_neo_model(activation_function=act)
    mlp = "gelu_exact" if act == "gelu" else "gelu"
    hf_round_trip(imported, tmp_path, model, "GPT-Neo", [*GPT_NEO_ARGS, "--model.mlp", mlp], False,
                  {"attn_scale": 1.0, "sliding_window": 8, "full_attention_every": 2,
                   "full_attention_first": 1, "bias": 1, "position": "learned", "mlp": mlp})
    if act != "gelu_new":
        return
    want, _ = hf_loss_accuracy(model, d)
    swapped = gpt_neo_model(attention_types=[[["local", "global"], 1], [["local"], 1]])
    swapped.load_state_dict(model.state_dict())
    other, _ = hf_loss_accuracy(swapped.eval(), d)
    assert abs(other - want) > 1e-3 * want, (other, want)

    out = tmp_path / "GPT-Neo.h5"
    train("--config", cfg, "--init-from", out, *GPT_NEO_ARGS[:-2], "--run.name",
          f"{tmp_path.name}-bias", check=True)
    p = tool("triad-convert", "export", d / "runs" / f"{tmp_path.name}-bias", tmp_path / "bias",
             "--to", "hf", "--vocab", "none")
    assert_clean_error(p, "h/0/attn/c_attn/bias: its q part", "is not all zeros")
    assert not (tmp_path / "bias").exists()

    # k and v biases (q's zero) export as the same model: k's dropped, v's folded into out_proj's.
    biased = tmp_path / "kv-bias.h5"
    shutil.copy(out, biased)
    rng = np.random.default_rng(5)
    with h5py.File(biased, "r+") as f:
        for i in range(3):
            ds = f["model"][f"h/{i}/attn/c_attn/bias"]
            a = ds[...]
            a[64:] = rng.normal(0, 0.5, a.shape[0] - 64)
            ds[...] = a
            ds.attrs["checksum"] = np.uint32(zlib.crc32(a.astype("<f4").tobytes()))
    p = train("--config", cfg, "--eval-only", "--init-from", biased, *GPT_NEO_ARGS[:-2],
              check=True)
    loss = float(p.stdout.split("val loss")[1].split()[0])
    assert abs(loss - want) > 1e-3 * want, (loss, want)  # the biases matter
    p = tool("triad-convert", "export", biased, tmp_path / "kv-hf", "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    got, _ = hf_loss_accuracy(type(model).from_pretrained(tmp_path / "kv-hf").eval(), d)
    assert abs(got - loss) <= 1e-5 * loss, (got, loss)

    # A stored lm_head.weight must be the embedding it is tied to.
    import safetensors.numpy
    files = safetensors.numpy.load_file(str(tmp_path / "GPT-Neo" / "model.safetensors"))
    files["lm_head.weight"] = files["transformer.wte.weight"] * 2
    (tmp_path / "head").mkdir()
    safetensors.numpy.save_file(files, str(tmp_path / "head" / "model.safetensors"))
    shutil.copy(tmp_path / "GPT-Neo" / "config.json", tmp_path / "head")
    p = tool("triad-convert", "import", tmp_path / "head", tmp_path / "head.h5", "--seq-len", SEQ)
    assert_clean_error(p, "lm_head.weight differs from transformer.wte.weight")
    assert not (tmp_path / "head.h5").exists()

    odd = gpt_neo_model(attention_types=[[["local", "global", "global"], 1]])
    odd.save_pretrained(tmp_path / "odd", safe_serialization=True)
    p = tool("triad-convert", "import", tmp_path / "odd", tmp_path / "odd.h5", "--seq-len", SEQ)
    assert_clean_error(p, "config.json", "is not a repeating group of local layers")
    assert not (tmp_path / "odd.h5").exists()


GEMMA3 = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=SEQ,
              rms_norm_eps=1e-6, rope_theta=1000.0, rope_local_base_freq=50.0, sliding_window=8,
              sliding_window_pattern=2, query_pre_attn_scalar=24, hidden_activation="gelu_pytorch_tanh",
              attn_logit_softcapping=None, final_logit_softcapping=None, rope_scaling=None,
              tie_word_embeddings=True, attention_bias=False, model_type="gemma3_text",
              architectures=["Gemma3ForCausalLM"])


class Gemma3Reference(torch.nn.Module):
    """Gemma 3's language model (Gemma3ForCausalLM) in float64, written from transformers'
    modeling_gemma3.py (this transformers, pinned by Debian's torch 1.13, predates it), over the
    tensors of its files: the embedding times sqrt(hidden_size); per layer RMSNorms scaling by
    1 + w around both branches (input, post-attention, pre- and post-feedforward), q and k
    RMSNormed per head (1 + w) and rotated by rope_local_base_freq in the sliding layers
    ((i + 1) % sliding_window_pattern != 0: each query sees its last sliding_window keys) and by
    rope_theta in the others (its frequencies divided by a linear rope_scaling's factor), scores
    times query_pre_attn_scalar^-0.5, key/value head h // (heads
    / kv_heads) for query head h, the GeGLU MLP; the final norm and the tied head."""

    def __init__(self, cfg, tensors):
        super().__init__()
        self.cfg = cfg
        self.t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in tensors.items()}

    def forward(self, x, use_cache=False):
        c, t = self.cfg, self.t
        C, nh, kv, hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], \
            c["head_dim"]
        B, T = x.shape

        def rms(h, w):
            return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + c["rms_norm_eps"]) * (1 + w)

        def rope(q, base, factor):  # [B, heads, T, hd], rotate-half pairs (i, i + hd/2)
            inv = 1.0 / base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd) / factor
            ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
            cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
            half = torch.cat([-q[..., hd // 2:], q[..., :hd // 2]], -1)
            return q * cos + half * sin

        h = t["model.embed_tokens.weight"][x] * math.sqrt(C)
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        for n in range(c["num_hidden_layers"]):
            p = f"model.layers.{n}."
            sliding = (n + 1) % c["sliding_window_pattern"] != 0
            a = rms(h, t[p + "input_layernorm.weight"])
            q = (a @ t[p + "self_attn.q_proj.weight"].T).view(B, T, nh, hd).transpose(1, 2)
            k = (a @ t[p + "self_attn.k_proj.weight"].T).view(B, T, kv, hd).transpose(1, 2)
            v = (a @ t[p + "self_attn.v_proj.weight"].T).view(B, T, kv, hd).transpose(1, 2)
            q, k = rms(q, t[p + "self_attn.q_norm.weight"]), rms(k, t[p + "self_attn.k_norm.weight"])
            base = c["rope_local_base_freq"] if sliding else c["rope_theta"]
            factor = 1.0 if sliding or not c["rope_scaling"] else c["rope_scaling"]["factor"]
            q, k = rope(q, base, factor), rope(k, base, factor)
            k, v = k.repeat_interleave(nh // kv, 1), v.repeat_interleave(nh // kv, 1)
            s = q @ k.transpose(-1, -2) * c["query_pre_attn_scalar"] ** -0.5
            seen = (j <= i) & ((i - j < c["sliding_window"]) if sliding else True)
            s = s.masked_fill(~seen, float("-inf")).softmax(-1)
            o = (s @ v).transpose(1, 2).reshape(B, T, nh * hd) @ t[p + "self_attn.o_proj.weight"].T
            h = h + rms(o, t[p + "post_attention_layernorm.weight"])
            m = rms(h, t[p + "pre_feedforward_layernorm.weight"])
            g = torch.nn.functional.gelu(m @ t[p + "mlp.gate_proj.weight"].T, approximate="tanh")
            m = (g * (m @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
            h = h + rms(m, t[p + "post_feedforward_layernorm.weight"])
        logits = rms(h, t["model.norm.weight"]) @ t["model.embed_tokens.weight"].T
        return type("Out", (), {"logits": logits})()


def gemma3_files(directory, cfg=GEMMA3, seed=83, multimodal=None, head=None):
    """A Gemma 3 model directory (config.json, model.safetensors) of cfg with seeded weights,
    spread as tiny_hf's (matrices wide, norms away from 0); returns its tensors (Gemma3ForCausalLM's
    names). multimodal "old" or "new": Gemma3ForConditionalGeneration's files instead (cfg its
    text_config), the language model under transformers' prefixes before 4.52 or since, beside
    a vision tower and projector, and with head a number the tied lm_head.weight stored too: the
    embedding times it."""
    import safetensors.numpy
    rng = np.random.default_rng(seed)
    C, H, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nh, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], C), "model.norm.weight": (C,)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update({p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                       p + "pre_feedforward_layernorm.weight": (C,),
                       p + "post_feedforward_layernorm.weight": (C,),
                       p + "self_attn.q_proj.weight": (nh * hd, C),
                       p + "self_attn.k_proj.weight": (kv * hd, C),
                       p + "self_attn.v_proj.weight": (kv * hd, C),
                       p + "self_attn.o_proj.weight": (C, nh * hd),
                       p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,),
                       p + "mlp.gate_proj.weight": (H, C), p + "mlp.up_proj.weight": (H, C),
                       p + "mlp.down_proj.weight": (C, H)})
    tensors = {k: (rng.standard_normal(s) * (0.25 if len(s) == 2 else 0.3)).astype("<f4")
               for k, s in shapes.items()}
    directory.mkdir(parents=True)
    stored, config = tensors, cfg
    if multimodal:
        def name(k):
            return "language_model." + k if multimodal == "old" else \
                "model.language_model." + k[len("model."):]
        vision = "vision_tower.vision_model." if multimodal == "old" else "model.vision_tower."
        projector = "multi_modal_projector." if multimodal == "old" else \
            "model.multi_modal_projector."
        stored = {name(k): v for k, v in tensors.items()}
        stored[vision + "embeddings.patch_embedding.weight"] = np.ones((8, 3, 2, 2), "<f4")
        stored[projector + "mm_input_projection_weight"] = np.ones((8, cfg["hidden_size"]), "<f4")
        if head is not None:
            stored["language_model.lm_head.weight" if multimodal == "old" else "lm_head.weight"] = \
                tensors["model.embed_tokens.weight"] * np.float32(head)
        config = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
                  "text_config": {k: v for k, v in cfg.items() if k != "architectures"},
                  "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 8}}
    safetensors.numpy.save_file(stored, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    return tensors


def test_gemma3_imports_and_evaluates_as_its_definition(imported, tmp_path):
    """A Gemma 3 model (Gemma3ForCausalLM's files: layers sliding, full, sliding, an 8-key window,
    the sliding layers' rope base 50 and the others' 1000, QK-norm, 4 heads over 2 key/value
    heads) imports as Gemma 2's blocks with model.qk_norm, model.full_attention_every = 2 and
    model.rope_local_theta; triad's loss (1 rank and tp 2) and greedy tokens are those of
    transformers' definition (Gemma3Reference, float64). Its export is Gemma 3's config.json
    again, with the tensors bit for bit (the norms' w to an ulp of 1 + w); the same model written with newer transformers'
    layer_types imports the same. The local base, and the q and k norms' 1 + w, move the loss."""
    d, _, cfg = imported
    tensors = gemma3_files(tmp_path / "gemma3")
    ref = Gemma3Reference(GEMMA3, tensors)
    out = tmp_path / "gemma3.h5"
    p = tool("triad-convert", "import", tmp_path / "gemma3", out, "--seq-len", SEQ)
    assert p.returncode == 0 and "Hugging Face Gemma 3 model" in p.stdout, p.stdout + p.stderr
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (int(a["qk_norm"]), int(a["branch_norm"]), int(a["sliding_window"]),
                int(a["full_attention_every"]), float(a["rope_local_theta"]),
                float(a["rope_theta"])) == (1, 1, 8, 2, 50.0, 1000.0)
    _, want = evaluates_as_transformers(ref, d, cfg, out, "--model-from", out)
    evaluates_on_tp2(cfg, out, ["--model-from", out], want)
    generates_as_transformers(ref, out)
    plain = {k: (v - 1 if k.endswith(("q_norm.weight", "k_norm.weight")) else v)
             for k, v in tensors.items()}  # q and k norms scaling by w, not 1 + w
    for other, weights in (({**GEMMA3, "rope_local_base_freq": 1000.0}, tensors),
                           (GEMMA3, plain)):
        got, _ = hf_loss_accuracy(Gemma3Reference(other, weights), d)
        assert abs(got - want) > 1e-3 * want, (got, want)

    p = tool("triad-convert", "export", out, tmp_path / "again", "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    for k, v in GEMMA3.items():
        if k not in ("attn_logit_softcapping", "final_logit_softcapping", "rope_scaling"):
            assert again[k] == v, (k, again[k], v)
    assert again["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
    # An integer, the only type transformers 5's Gemma configs take (24.0 fails to load there).
    assert type(again["query_pre_attn_scalar"]) is int
    import safetensors.numpy
    back = safetensors.numpy.load_file(str(tmp_path / "again" / "model.safetensors"))
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():  # the norms through 1 + w in fp32: to half an ulp of 1 + w
        if k.endswith("norm.weight"):
            assert np.all(np.abs(back[k] - v) <= 2.0 ** -23 * (1 + np.abs(v))), k
        else:
            assert np.array_equal(back[k], v), k

    newer = {k: v for k, v in GEMMA3.items() if k != "sliding_window_pattern"}
    newer["layer_types"] = again["layer_types"]
    gemma3_files(tmp_path / "newer", newer)
    p = tool("triad-convert", "import", tmp_path / "newer", tmp_path / "newer.h5", "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    with h5py.File(tmp_path / "newer.h5", "r") as f:
        assert int(f["model"].attrs["full_attention_every"]) == 2
    newer["layer_types"] = ["full_attention", "sliding_attention", "sliding_attention"]
    gemma3_files(tmp_path / "odd", newer)
    p = tool("triad-convert", "import", tmp_path / "odd", tmp_path / "odd.h5", "--seq-len", SEQ)
    assert_clean_error(p, "config.json", "does not attend to the whole context in every N-th")
    assert not (tmp_path / "odd.h5").exists()
    # What transformers' Gemma 3 computes otherwise, or another form, is refused by name; its
    # attention ignores attn_logit_softcapping, and so does the import.
    for k, (over, needle) in enumerate((
            ({"use_bidirectional_attention": True}, "use_bidirectional_attention = true"),
            ({"rope_parameters": {"full_attention": {"rope_theta": 1e6}}}, "rope_parameters"),
            ({"sliding_window": None}, "sliding_window None"),
            ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope_scaling"))):
        gemma3_files(tmp_path / f"bad{k}", {**GEMMA3, **over})
        p = tool("triad-convert", "import", tmp_path / f"bad{k}", tmp_path / f"bad{k}.h5")
        assert_clean_error(p, "config.json", needle)
        assert not (tmp_path / f"bad{k}.h5").exists()
    gemma3_files(tmp_path / "capped", {**GEMMA3, "attn_logit_softcapping": 50.0})
    p = tool("triad-convert", "import", tmp_path / "capped", tmp_path / "capped.h5", "--seq-len",
             SEQ)
    assert p.returncode == 0, p.stderr
    with h5py.File(tmp_path / "capped.h5", "r") as f:
        assert "attn_softcap" not in f["model"].attrs


def test_gemma3_multimodal_language_model_imports_with_linear_scaling(imported, tmp_path):
    """Gemma 3 4B to 27B's files (Gemma3ForConditionalGeneration: the language model beside a
    vision tower, its text_config leaving out rope_local_base_freq, the full-attention layers'
    rope scaled linearly by 4): the language model imports (the vision side left out, said) under
    either naming of transformers, with model.rope_scaling = linear, and evaluates as the
    definition (1e-5); without the scaling the loss is another; the export is Gemma3ForCausalLM's
    with the scaling."""
    d, _, cfg = imported
    linear = {"rope_type": "linear", "factor": 4.0}
    text = {k: v for k, v in {**GEMMA3, "rope_scaling": linear}.items()
            if k != "rope_local_base_freq"}
    tensors = gemma3_files(tmp_path / "old", text, multimodal="old")
    gemma3_files(tmp_path / "new", text, multimodal="new")
    full = {**text, "rope_local_base_freq": 10000.0}  # (Gemma3TextConfig's default)
    outs = []
    for naming in ("old", "new"):
        outs.append(tmp_path / f"{naming}.h5")
        p = tool("triad-convert", "import", tmp_path / naming, outs[-1], "--seq-len", SEQ)
        assert p.returncode == 0, p.stderr
        assert "Hugging Face Gemma 3 model" in p.stdout and \
            "the vision tower and projector (2 tensors) left out" in p.stdout, p.stdout
    with h5py.File(outs[0], "r") as a, h5py.File(outs[1], "r") as b:
        m = a["model"].attrs
        assert (m["rope_scaling"], float(m["rope_scaling_factor"]), float(m["rope_local_theta"])) \
            == (b"linear", 4.0, 10000.0)
        assert {k: str(v) for k, v in m.items()} == \
            {k: str(v) for k, v in b["model"].attrs.items()}
        names = []
        a["model"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert len(names) == 3 * 10 + 2  # (10 a layer: c_attn, c_proj, 2 QK-norms, 4 norms, MLP 2)
        for n in names:
            assert np.array_equal(a["model"][n][()], b["model"][n][()]), n
    _, want = evaluates_as_transformers(Gemma3Reference(full, tensors), d, cfg, outs[0],
                                        "--model-from", outs[0])
    got, _ = hf_loss_accuracy(Gemma3Reference({**full, "rope_scaling": None}, tensors), d)
    assert abs(got - want) > 1e-3 * want, (got, want)
    p = tool("triad-convert", "export", outs[0], tmp_path / "hf", "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    again = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (again["architectures"], again["rope_scaling"], again["rope_local_base_freq"]) == \
        (["Gemma3ForCausalLM"], linear, 10000.0)


@pytest.mark.parametrize("naming", ["old", "new"])
def test_gemma3_multimodal_files_head_and_text_config_are_checked(tmp_path, naming):
    """A Gemma 3 multimodal file holding its tied lm_head.weight imports when the head is the
    embedding (the same tensors as without it) and is refused, naming both as the file does, when
    it differs (the model ties them; transformers would load one over the other); a text_config
    that is not a JSON object is refused, naming it."""
    gemma3_files(tmp_path / "plain", multimodal=naming)
    gemma3_files(tmp_path / "same", multimodal=naming, head=1)
    gemma3_files(tmp_path / "other", multimodal=naming, head=2)
    for name in ("plain", "same"):
        p = tool("triad-convert", "import", tmp_path / name, tmp_path / f"{name}.h5")
        assert p.returncode == 0, p.stderr
    with h5py.File(tmp_path / "plain.h5", "r") as a, h5py.File(tmp_path / "same.h5", "r") as b:
        names = []
        a["model"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert "wte/weight" in names
        for n in names:
            assert np.array_equal(a["model"][n][()], b["model"][n][()]), n
    head, wte = ("language_model.lm_head.weight", "language_model.model.embed_tokens.weight") \
        if naming == "old" else ("lm_head.weight", "model.language_model.embed_tokens.weight")
    assert_clean_failure(tool("triad-convert", "import", tmp_path / "other", tmp_path / "o.h5"),
                         "model.safetensors", f"{head} differs from {wte}")
    assert not (tmp_path / "o.h5").exists()
    for bad in ([], "text", 3):
        cfg = json.loads((tmp_path / "plain" / "config.json").read_text())
        cfg["text_config"] = bad
        (tmp_path / "plain" / "config.json").write_text(json.dumps(cfg))
        assert_clean_failure(tool("triad-convert", "import", tmp_path / "plain",
                                  tmp_path / "t.h5"), "config.json",
                             "text_config is not a JSON object")
        assert not (tmp_path / "t.h5").exists()


def opt_model(**config):
    return tiny_hf(transformers.OPTForCausalLM, transformers.OPTConfig, 67, dict(
        vocab_size=V, hidden_size=64, num_hidden_layers=2, ffn_dim=256, num_attention_heads=4,
        max_position_embeddings=SEQ, word_embed_proj_dim=64, do_layer_norm_before=True,
        dropout=0.0, attention_dropout=0.0, activation_function="relu", pad_token_id=1,
        bos_token_id=2, eos_token_id=2), config).float()


@pytest.fixture
def float64_default():
    """transformers' OPT builds its causal mask with torch.full(finfo(dtype).min) in the default
    dtype, which on torch 1.13 overflows a float32 in the float64 evaluation: the test runs with
    float64 as the default (its models made float32 explicitly)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_opt_imports_and_evaluates_as_transformers(imported, tmp_path, float64_default):
    """transformers' OPTForCausalLM (GPT-2's blocks with the ReLU MLP, q, k, v and the MLP under
    OPT's names, its position table two rows longer: position p at row p + 2) against triad's
    GPT-2 blocks with model.mlp = relu: hf_round_trip (tp 2 too), the export computing the
    original's loss (its two offset rows, which only padded positions read, written as zeros).
    OPT-350M's layout (norms after the branches, a projected embedding) is refused."""
    hf_round_trip(imported, tmp_path, opt_model(), "OPT",
                  ["--model.n_head", "4", "--model.mlp", "relu", "--model.mlp_hidden", "256"],
                  False, {"mlp": "relu", "mlp_hidden": 256, "position": "learned"},
                  same_layout=False)
    imports_refused(tmp_path, (
        (opt_model, {"do_layer_norm_before": False}, "do_layer_norm_before = false"),
        (opt_model, {"word_embed_proj_dim": 32}, "word_embed_proj_dim 32")
    ))


def bigcode_model(**config):
    return tiny_hf(transformers.GPTBigCodeForCausalLM, transformers.GPTBigCodeConfig, 61, dict(
        vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=SEQ, multi_query=True,
        activation_function="gelu_pytorch_tanh", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None), config)


def test_gpt_bigcode_imports_and_evaluates_as_transformers(imported, tmp_path):
    """transformers' GPTBigCodeForCausalLM (StarCoder's and SantaCoder's blocks: GPT-2's with one
    key/value head for the 4 query heads, its matrices stored as nn.Linear's; as many positions as
    triad's context, so that the export holds all of wpe) against triad's GPT-2 blocks with
    model.n_kv_head = 1: hf_round_trip."""
    hf_round_trip(imported, tmp_path, bigcode_model(), "GPT-BigCode",
                  ["--model.n_head", "4", "--model.n_kv_head", "1"], False,
                  {"n_kv_head": 1, "position": "learned", "mlp": "gelu"}, tp2=False)


def test_gpt_bigcode_with_a_head_per_query_imports(imported, tmp_path):
    """GPT-BigCode with multi_query false (a key/value head per query head; c_attn's rows
    interleaved head by head as its view(heads, 3·hd) reads them), regrouped into triad's
    q | k | v: the loss and accuracy of transformers on one rank and on tp 2 (each rank its heads'
    rows), greedy generation; it exports as GPT2LMHeadModel (the same blocks), whose loss is the
    original's. (Left as stored, the rows not regrouped, the loss is 1.7e-2 off.)"""
    d, _, cfg = imported
    model = bigcode_model(multi_query=False)
    out = import_hf(model, tmp_path / "mha", "GPT-BigCode")
    with h5py.File(out, "r") as f:
        assert int(f["model"].attrs.get("n_kv_head", 0)) in (0, 4)
        rows = f["model/h/0/attn/c_attn/weight"][...]
    _, want = evaluates_as_transformers(model, d, cfg, out, "--model.n_head", "4")
    evaluates_on_tp2(cfg, out, ["--model.n_head", "4"], want)
    generates_as_transformers(model, out)
    exports_with_loss(out, tmp_path / "gpt2", transformers.GPT2LMHeadModel, d, want)
    # The regrouping matters: the stored rows as they are give another model.
    stored = model.state_dict()["transformer.h.0.attn.c_attn.weight"].float().numpy()
    assert not np.array_equal(rows, stored)


GLM_ARGS = LLAMA_ARGS + ["--model.n_head", "4", "--model.n_kv_head", "2", "--model.qkv_bias",
                          "true", "--model.rotary_dim", "8"]


def glm_model(**config):
    return tiny_hf(transformers.GlmForCausalLM, transformers.GlmConfig, 59, dict(
        vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, partial_rotary_factor=0.5,
        max_position_embeddings=N_POS, rope_theta=500.0, rms_norm_eps=1e-5, attention_bias=True,
        tie_word_embeddings=False, pad_token_id=None, attention_dropout=0.0), config)


def test_glm_imports_and_evaluates_as_transformers(imported, tmp_path):
    """transformers' GlmForCausalLM (GLM-4's blocks: Llama's with biases on q, k and v, rope on
    the first half of each head's 16 values in interleaved pairs, the MLP's gate and up stored as
    one gate_up_proj, 4 query heads over 2) against triad's model.qkv_bias and model.rotary_dim:
    hf_round_trip (tp 2 too: the heads' rotated rows and their biases split with them)."""
    hf_round_trip(imported, tmp_path, glm_model(), "GLM", GLM_ARGS, False,
                  {"rotary_dim": 8, "qkv_bias": 1, "bias": 0, "n_kv_head": 2,
                   "tie_embeddings": 0})


GEMMA2_ARGS = GEMMA_ARGS + ["--model.branch_norm", "true", "--model.attn_scale", "0.25",
                            "--model.attn_softcap", "1", "--model.logit_softcap", "3",
                            "--model.sliding_window", "8", "--model.full_attention_every", "2"]


def gemma2_model(**config):
    return tiny_hf(transformers.Gemma2ForCausalLM, transformers.Gemma2Config, 31, dict(
        **GEMMA_SIZES, query_pre_attn_scalar=16, attn_logit_softcapping=1.0,
        final_logit_softcapping=3.0, sliding_window=8,
        attn_implementation="eager", use_cache=False, cache_implementation=None), config)


def test_gemma2_imports_and_evaluates_as_transformers(imported, tmp_path):
    """transformers' Gemma2ForCausalLM (Gemma's blocks with a norm before and after each branch,
    scores scaled by 16^-0.5 and capped at 1, logits capped at 3, an 8-token window in layer 0
    and the whole 32-token context in layer 1) against triad's model.branch_norm,
    model.attn_scale, model.attn_softcap, model.logit_softcap, model.sliding_window and
    model.full_attention_every = 2: hf_round_trip. The caps bend: the same import evaluated
    without them computes another loss."""
    model = gemma2_model()
    hf_round_trip(imported, tmp_path, model, "Gemma 2", GEMMA2_ARGS, True,
                  {"mlp": "geglu", "branch_norm": 1, "attn_scale": 0.25, "attn_softcap": 1.0,
                   "logit_softcap": 3.0, "sliding_window": 8, "full_attention_every": 2})
    def set_cap(value):  # (transformers 4.47's attention layers read a copy of the config's)
        model.config.attn_logit_softcapping = value
        for layer in model.model.layers:
            layer.self_attn.attn_logit_softcapping = value

    with torch.no_grad():
        set_cap(None)
        uncapped, _ = hf_loss_accuracy(model, imported[0])
        set_cap(1.0)
        capped, _ = hf_loss_accuracy(model, imported[0])
    assert abs(uncapped - capped) > 1e-4 * capped, (uncapped, capped)  # the check's 1e-5 × 10


def imports_refused(tmp_path, cases):
    """Each (make, change, needle) of cases: make()'s model saved with its config.json updated by
    `change` is refused by import, naming config.json and needle, and nothing is written."""
    for make, bad, needle in cases:
        make().save_pretrained(tmp_path / "bad", safe_serialization=True)
        c = json.loads((tmp_path / "bad" / "config.json").read_text())
        (tmp_path / "bad" / "config.json").write_text(json.dumps({**c, **bad}))
        assert_clean_failure(tool("triad-convert", "import", tmp_path / "bad",
                                  tmp_path / "bad.h5"), "config.json", needle)
        assert not (tmp_path / "bad.h5").exists()
        shutil.rmtree(tmp_path / "bad")


def exports_refused(tmp_path, cases, n_layer):
    """Each (options, needle) of cases: a checkpoint of random weights of a GptConfig with those
    options (n_layer layers of 4 heads, n_embd 64) is refused by export --to hf, naming needle,
    and nothing is written."""
    for over, needle in cases:
        cfg = ref.GptConfig(n_layer=n_layer, n_head=4, n_embd=64, seq_len=16, vocab_size=300,
                            **over)
        ckpt = tmp_path / "variant.h5"
        ref.write_checkpoint(ckpt, cfg, ref.random_weights(cfg, seed=4))
        assert_clean_failure(tool("triad-convert", "export", ckpt, tmp_path / "v-hf", "--to",
                                  "hf", "--vocab", "none"), needle)
        assert not (tmp_path / "v-hf").exists()
        ckpt.unlink()


def test_nemotron_stablelm_and_gemma_variants_triad_does_not_compute_are_refused(
        tmp_path, nemotron_on_this_torch):
    """A Nemotron, StableLM or Gemma config with another activation, linear biases (Nemotron,
    Gemma), the attention and MLP side by side or per-head LayerNorms (StableLM), rope scaling
    or a rotary factor that names an odd count of values is refused, naming config.json. Not
    exported: a model of Nemotron's blocks with QK-norm, a GeGLU model whose embedding scale is
    not Gemma's sqrt(n_embd), an embedding scale in blocks no format scales, parallel attention
    and MLP in blocks other than GPT-NeoX's, GPT-NeoX's blocks with grouped-query attention,
    branch norms or capped attention scores in blocks other than Gemma 2's, and Gemma 2's blocks
    whose window is not in every other layer. GPT-NeoX configs: without attention biases,
    another activation, an odd rotated count; Falcon's: alibi, sequential blocks, another
    activation; Gemma 2's: a negative query_pre_attn_scalar or cap; Cohere's: QK-norm, a
    negative logit scale; Phi's: QK-norm, a tied head; GPT-J's: rotary_dim null or odd, a tied
    head, another activation. Not exported either: one norm for parallel branches in blocks other
    than Cohere's, Phi's, Falcon's and GPT-J's, a head bias in blocks other than Phi's and GPT-J's,
    MLP biases beside bias-free attention in blocks other than GPT-J's, GPT-J's blocks with
    another rope base."""
    imports_refused(tmp_path, (
            (nemotron_model, {"hidden_act": "gelu"}, "hidden_act 'gelu'"),
            (nemotron_model, {"attention_bias": True}, "attention_bias"),
            (nemotron_model, {"partial_rotary_factor": 0.2}, "partial_rotary_factor 0.2"),
            (nemotron_model, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
             "rope_scaling"),
            (stablelm_model, {"use_parallel_residual": True}, "use_parallel_residual"),
            (stablelm_model, {"qk_layernorm": True}, "qk_layernorm"),
            (stablelm_model, {"hidden_act": "gelu"}, "hidden_act 'gelu'"),
            (gemma_model, {"hidden_activation": "gelu"}, "hidden_activation 'gelu'"),
            (gemma_model, {"attention_bias": True}, "attention_bias"),
            (gemma2_model, {"query_pre_attn_scalar": -4}, "query_pre_attn_scalar -4"),
            (gemma2_model, {"attn_logit_softcapping": -1.0}, "attn_logit_softcapping -1.0"),
            (cohere_model, {"use_qk_norm": True}, "use_qk_norm"),
            (cohere_model, {"logit_scale": -1.0}, "logit_scale -1.0"),
            (phi_model, {"qk_layernorm": True}, "qk_layernorm = true"),
            (phi_model, {"tie_word_embeddings": True}, "tie_word_embeddings = true"),
            (neox_model, {"attention_bias": False}, "attention_bias = false"),
            (neox_model, {"hidden_act": "relu"}, "hidden_act 'relu'"),
            (neox_model, {"rotary_pct": 0.2}, "rotary_pct 0.2"),
            (falcon_model, {"alibi": True}, "alibi = true"),
            (falcon_model, {"parallel_attn": False}, "parallel_attn = false"),
            (falcon_model, {"activation": "relu"}, "activation 'relu'"),
            (gptj_model, {"rotary_dim": None}, "rotary_dim None"),
            (gptj_model, {"rotary_dim": 5}, "rotary_dim 5"),
            (gptj_model, {"tie_word_embeddings": True}, "tie_word_embeddings = true"),
            (gptj_model, {"activation_function": "relu"}, "activation_function 'relu'")))
    cfg = ref.GptConfig(n_layer=1, n_head=4, n_embd=64, seq_len=16, vocab_size=300,
                        position="rope", bias=False, norm_bias=True, mlp="relu2", tied=False,
                        qk_norm=True, rotary_dim=8)
    ckpt = tmp_path / "qk.h5"
    ref.write_checkpoint(ckpt, cfg, ref.random_weights(cfg, seed=3))
    assert_clean_failure(tool("triad-convert", "export", ckpt, tmp_path / "qk-hf", "--to", "hf",
                              "--vocab", "none"), "model.qk_norm")
    assert not (tmp_path / "qk-hf").exists()
    exports_refused(tmp_path, (
        ({"mlp": "geglu", "position": "rope", "norm": "rmsnorm", "bias": False},
         "an embedding scale of 1.0"),
        ({"embed_scale": 8.0}, "model.embed_scale"),
        ({"parallel_residual": True, "norm": "rmsnorm"},
         "model.parallel_residual"),
        # (in sequential blocks StarCoder2's format holds it)
        ({"position": "rope", "n_kv_head": 2, "parallel_residual": True},
         "grouped-query attention"),
        # Gemma 2's options in blocks whose formats hold none of them
        ({"branch_norm": True}, "model.branch_norm"),
        ({"parallel_residual": True, "shared_norm": True}, "model.shared_norm"),
        ({"tied": False, "head_bias": True}, "model.head_bias"),
        ({"bias": False, "mlp_bias": True}, "model.mlp_bias"),
        ({"position": "rope", "rope_theta": 500.0, "rotary_dim": 8,
          "bias": False, "mlp_bias": True, "norm_bias": True, "tied": False,
          "parallel_residual": True, "shared_norm": True, "head_bias": True},
         "a rope base other than 10000"),
        ({"attn_softcap": 30.0}, "model.attn_softcap"),
        ({"mlp": "geglu", "position": "rope", "norm": "rmsnorm", "bias": False,
          "embed_scale": 8.0, "branch_norm": True, "sliding_window": 8,
          "full_attention_every": 3}, "model.full_attention_every = 3")
    ), n_layer=1)


def import_hf(model, directory, kind):
    """model saved to directory and imported (--seq-len SEQ) as directory.h5; the import says
    it read a Hugging Face model of `kind`."""
    model.save_pretrained(directory, safe_serialization=True)
    return import_dir(directory, kind)[0]


def import_dir(directory, kind):
    """The model directory imported (--seq-len SEQ) as directory.h5, the import saying it read
    a Hugging Face model of `kind`: (the checkpoint, its /model attributes)."""
    out = directory.with_suffix(".h5")
    p = tool("triad-convert", "import", directory, out, "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    assert f"Hugging Face {kind} model" in p.stdout, p.stdout
    with h5py.File(out, "r") as f:
        return out, dict(f["model"].attrs)


def evaluates_on_tp2_ep2(cfg, ckpt, want_loss):
    """The mixture of experts of ckpt (its own config) evaluated on 4 ranks, its experts split
    over tp 2 and spread over ep 2: transformers' loss to 1e-5."""
    p = mpi_run(4, "--config", cfg, "--eval-only", "--init-from", ckpt, "--model-from", ckpt,
                "--parallel.tp", 2, "--parallel.ep", 2)
    assert p.returncode == 0, p.stdout + p.stderr
    grid_loss = float(p.stdout.split("val loss")[1].split()[0])
    assert abs(grid_loss - want_loss) <= 1e-5 * want_loss, (grid_loss, want_loss)


def mixtral_model(**config):
    torch.manual_seed(13)
    model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**{
        **dict(vocab_size=V, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
               rms_norm_eps=1e-5, rope_theta=500.0, sliding_window=None,
               tie_word_embeddings=False, num_local_experts=4, num_experts_per_tok=2),
        **config}))
    return spread(model)  # the router's too: decisive choices, far from ties


MIXTRAL_ARGS = ["--model.position", "rope", "--model.rope_theta", "500", "--model.norm",
                "rmsnorm", "--model.bias", "false", "--model.mlp", "swiglu", "--model.mlp_hidden",
                "48", "--model.tie_embeddings", "false", "--model.n_head", 4, "--model.n_kv_head",
                2]


@pytest.mark.parametrize("top_k,window", [(2, None), (3, 8)], ids=["top2", "top3-window8"])
def test_mixtral_imports_and_evaluates_as_transformers(imported, tmp_path, top_k, window):
    """transformers' MixtralForCausalLM (Mistral's blocks, every MLP 4 SwiGLU experts behind a
    router choosing top_k of them, gates renormalized), imported: triad's mixture of experts
    computes transformers' validation loss and accuracy and its greedy continuation; fine-tuned
    (experts, router and all) and exported, MixtralForCausalLM loads it and computes triad's
    loss; the import exported again is the original, bit for bit."""
    d, _, cfg = imported
    model = mixtral_model(num_experts_per_tok=top_k, sliding_window=window)
    out = import_hf(model, tmp_path / "mixtral", "Mixtral")
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (int(a["moe_experts"]), int(a["moe_top_k"]), int(a["moe_normalize"])) == \
            (4, top_k, 1)
        assert f["model/h/1/mlp/experts/c_fc/weight"].shape == (4, 96, 64)
        assert f["model/h/1/mlp/experts/c_proj/weight"].shape == (4, 64, 48)
        assert f["model/h/1/mlp/router/weight"].shape == (4, 64)
        # expert 2's c_fc is its w1 (gate) rows, then its w3 (up) rows; c_proj its w2; the
        # router's rows the gate's, expert by expert
        moe = model.model.layers[1].block_sparse_moe
        w = moe.experts[2]
        for name, want in (("experts/c_fc/weight", torch.cat([w.w1.weight, w.w3.weight])),
                           ("experts/c_proj/weight", w.w2.weight)):
            np.testing.assert_array_equal(f[f"model/h/1/mlp/{name}"][2], want.detach().numpy())
        np.testing.assert_array_equal(f["model/h/1/mlp/router/weight"][()],
                                      moe.gate.weight.detach().numpy())
        assert "moe_experts = 4" in f.attrs["config"].decode()
    assert tool("triad-ckpt", out).returncode == 0
    dense = [*MIXTRAL_ARGS, *(["--model.sliding_window", window] if window else [])]
    args = [*dense, "--model.moe_experts", 4, "--model.moe_top_k", top_k]
    loss, want_loss = evaluates_as_transformers(model, d, cfg, out, *args)
    # --model-from: the import's config holds the experts and the window.
    p = train("--config", cfg, "--eval-only", "--init-from", out, "--model-from", out, check=True)
    assert float(p.stdout.split("val loss")[1].split()[0]) == loss
    # ... and on a grid: experts split over tp 2 and spread over ep 2 (4 ranks)
    evaluates_on_tp2_ep2(cfg, out, want_loss)
    # The routing matters: one expert fewer per token is another model (by 20 times the
    # tolerance at least).
    other, _ = hf_loss_accuracy(mixtral_model(num_experts_per_tok=top_k - 1,
                                              sliding_window=window), d)
    assert abs(other - want_loss) > 2e-4 * want_loss, (other, want_loss)
    p = run([exe("triad-generate"), "--checkpoint", out, "--vocab", VOCAB, "--top-k", "1",
             "--prompt-ids", " ".join(map(str, PROMPT)), "--length", "20", "--output", "ids"],
            check=True)
    assert [int(t) for t in p.stdout.split()] == greedy_continuation(model, PROMPT, 20)
    # The config must say what the checkpoint holds.
    p = train("--config", cfg, "--eval-only", "--init-from", out, *dense)
    assert_clean_error(p, "moe_experts")
    tuned = finetune_export_and_reimport(d, cfg, out, args, f"mixtral-ft-{top_k}", tmp_path,
                                         model)
    assert (tuned.config.num_local_experts, tuned.config.num_experts_per_tok) == (4, top_k)
    assert tuned.config.sliding_window == window


def qwen2_moe_model(**config):
    torch.manual_seed(17)
    model = transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(**{
        **dict(vocab_size=V, hidden_size=64, intermediate_size=40, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
               rms_norm_eps=1e-6, rope_theta=500.0, tie_word_embeddings=False,
               use_sliding_window=False, num_experts=4, num_experts_per_tok=2,
               moe_intermediate_size=40, shared_expert_intermediate_size=56,
               norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[]),
        **config}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            # the shared experts' gates far from 1/2 (their logits' deviation near 5), and their
            # output large enough for the gates to count
            p.copy_(0.5 * torch.randn_like(p) if name.endswith("bias") else
                    p * 80 if "shared_expert_gate" in name else
                    p * 10 if "shared_expert." in name else
                    p * 4 if p.dim() == 2 else p + 0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("top_k,normalize,dense", [(2, False, []), (3, True, [0])],
                         ids=["top2", "top3-normalized-dense0"])
def test_qwen2_moe_imports_and_evaluates_as_transformers(imported, tmp_path, top_k, normalize,
                                                        dense):
    """transformers' Qwen2MoeForCausalLM (Qwen2's attention; every MLP, or every one but the
    first (its dense MLP 88 units wide: intermediate_size beside the experts' 40, triad's
    model.moe_dense_hidden), 4 SwiGLU experts behind a router choosing top_k, gates renormalized
    or not, beside a shared expert whose output a sigmoid gate scales), imported: triad computes
    transformers'
    validation loss, accuracy and greedy continuation, on one rank and on tp 2 × ep 2; fine-tuned
    and exported, Qwen2MoeForCausalLM loads it and computes triad's loss; the import exported
    again is the original, bit for bit."""
    d, _, cfg = imported
    wide = 88 if dense else 40  # the dense layer's intermediate_size
    model = qwen2_moe_model(num_experts_per_tok=top_k, norm_topk_prob=normalize,
                            mlp_only_layers=dense, intermediate_size=wide)
    out = import_hf(model, tmp_path / "qmoe", "Qwen2-MoE")
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (int(a["moe_experts"]), int(a["moe_top_k"]), int(a["moe_normalize"]),
                int(a["moe_shared_hidden"]), int(a["moe_shared_gate"]), int(a["qkv_bias"])) == \
            (4, top_k, int(normalize), 56, 1, 1)
        assert int(a.get("moe_first_dense", 0)) == len(dense)
        assert int(a.get("moe_dense_hidden", 0)) == (88 if dense else 0)
        moe = model.model.layers[1].mlp
        for name, want in (("shared/gate/weight", moe.shared_expert_gate.weight),
                           ("shared/c_proj/weight", moe.shared_expert.down_proj.weight),
                           ("router/weight", moe.gate.weight)):
            np.testing.assert_array_equal(f[f"model/h/1/mlp/{name}"][()], want.detach().numpy())
        assert ("h/0/mlp/c_fc/weight" in f["model"]) == bool(dense)
        if dense:
            assert f["model/h/0/mlp/c_fc/weight"].shape == (2 * 88, 64)
    assert tool("triad-ckpt", out).returncode == 0
    loss, want_loss = evaluates_as_transformers(model, d, cfg, out, "--model-from", out)
    # The shared expert's gate matters: without it (weights 0: a gate of 1/2) another model.
    ungated = qwen2_moe_model(num_experts_per_tok=top_k, norm_topk_prob=normalize,
                              mlp_only_layers=dense, intermediate_size=wide)
    with torch.no_grad():
        for layer in ungated.model.layers[len(dense):]:
            layer.mlp.shared_expert_gate.weight.zero_()
    other, _ = hf_loss_accuracy(ungated, d)
    assert abs(other - want_loss) > 2e-4 * want_loss, (other, want_loss)
    evaluates_on_tp2_ep2(cfg, out, want_loss)
    p = run([exe("triad-generate"), "--checkpoint", out, "--vocab", VOCAB, "--top-k", "1",
             "--prompt-ids", " ".join(map(str, PROMPT)), "--length", "20", "--output", "ids"],
            check=True)
    assert [int(t) for t in p.stdout.split()] == greedy_continuation(model, PROMPT, 20)
    tuned = finetune_export_and_reimport(d, cfg, out, ["--model-from", out],
                                         f"qmoe-ft-{top_k}", tmp_path, model)
    assert (tuned.config.num_experts, tuned.config.norm_topk_prob,
            tuned.config.mlp_only_layers, tuned.config.intermediate_size,
            tuned.config.moe_intermediate_size) == (4, normalize, dense, wide, 40)


@pytest.mark.parametrize("normalize,dense", [(True, []), (False, [0])],
                         ids=["normalized", "dense0"])
def test_qwen3_moe_imports_and_evaluates_as_its_definition(imported, tmp_path, normalize, dense):
    """A Qwen3-MoE model (model_type qwen3_moe: Qwen3's attention, per-head RMSNorms q_norm and
    k_norm, no biases; Qwen2-MoE's experts and router without the shared expert) written in
    Qwen3MoeForCausalLM's tensor names. transformers 4.47 predates Qwen3, so the reference is its
    Qwen2MoeForCausalLM with the q, k and v biases and the shared expert's output at zero and
    forward hooks on q_proj and k_proj applying the per-head norms: triad's loss of the import
    is that model's, on one rank and on tp 2 × ep 2; export writes Qwen3-MoE's config and
    tensors back, bit for bit."""
    from safetensors.torch import load_file
    d, _, cfg = imported
    hd, eps = 16, 1e-6
    model = qwen2_moe_model(num_experts_per_tok=2, norm_topk_prob=normalize,
                            mlp_only_layers=dense, intermediate_size=88 if dense else 40)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for x in "qkv":
                getattr(layer.self_attn, f"{x}_proj").bias.zero_()
            if i >= len(dense):
                layer.mlp.shared_expert.down_proj.weight.zero_()
    norms = hook_qwen3_norms(model, hd, eps, seed=19)
    src = tmp_path / "qwen3moe"
    model.save_pretrained(src, safe_serialization=True)
    tensors = {k: v for k, v in load_file(src / "model.safetensors").items()
               if not k.endswith(("_proj.bias", "shared_expert_gate.weight"))
               and ".shared_expert." not in k}
    tensors.update(norms)
    rewrite_hf(src, tensors, drop=["shared_expert_intermediate_size"], model_type="qwen3_moe",
               architectures=["Qwen3MoeForCausalLM"], head_dim=hd, attention_bias=False)
    out = tmp_path / "qwen3moe.h5"
    p = tool("triad-convert", "import", src, out, "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    assert "Hugging Face Qwen3-MoE model" in p.stdout
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (int(a["qk_norm"]), int(a["qkv_bias"]), int(a["moe_experts"]),
                int(a["moe_normalize"]), int(a.get("moe_shared_hidden", 0))) == \
            (1, 0, 4, int(normalize), 0)
    loss, want_loss = evaluates_as_transformers(model, d, cfg, out, "--model-from", out)
    evaluates_on_tp2_ep2(cfg, out, want_loss)
    exported = exports_back(out, tmp_path / "back", tensors)
    assert (exported["model_type"], exported["head_dim"], exported["norm_topk_prob"],
            exported["mlp_only_layers"], exported["intermediate_size"]) == \
        ("qwen3_moe", hd, normalize, dense, 88 if dense else 40)
    assert "shared_expert_intermediate_size" not in exported
    # transformers 5 saves num_experts under its attribute_map's name, num_local_experts.
    v5 = json.loads((src / "config.json").read_text())
    v5["num_local_experts"] = v5.pop("num_experts")
    (src / "config.json").write_text(json.dumps(v5))
    assert tool("triad-convert", "import", src, tmp_path / "v5.h5", "--seq-len",
                SEQ).returncode == 0
    same_import(out, tmp_path / "v5.h5")


def olmoe_model(**config):
    torch.manual_seed(31)
    model = transformers.OlmoeForCausalLM(transformers.OlmoeConfig(**{
        **dict(vocab_size=V, hidden_size=64, intermediate_size=40, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
               rope_theta=500.0, rms_norm_eps=1e-5, tie_word_embeddings=False, num_experts=4,
               num_experts_per_tok=2, norm_topk_prob=False, clip_qkv=None, pad_token_id=None,
               attention_dropout=0.0), **config}))
    return spread(model)


def test_olmoe_imports_trains_and_exports_as_transformers(imported, tmp_path):
    """transformers' OlmoeForCausalLM (Llama's blocks with one RMSNorm over each token's whole q
    projection and one over its whole k projection, weights of 64 and 32 values; 4 query heads over
    2 key/value heads; 4 SwiGLU experts, 2 per token, their gates not renormalized) imports as
    model.qk_norm_full with experts: triad's loss and accuracy are transformers', on one rank and
    on tp 2 × ep 2 (each rank's half of the heads, the norms' sums of squares reduced over the
    pair), greedy generation its tokens; fine-tuned and exported it loads in transformers as OLMoE
    computing triad's loss, and the import exported again is the original bit for bit. A
    clip_qkv (which OLMoE applies after its norms) is refused."""
    d, _, cfg = imported
    model = olmoe_model()
    out = import_hf(model, tmp_path / "olmoe", "OLMoE")
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (int(a["qk_norm"]), int(a["qk_norm_full"]), int(a["moe_experts"]),
                int(a["moe_normalize"])) == (1, 1, 4, 0)
        assert f["model/h/0/attn/q_norm/weight"].shape == (64,)
        assert f["model/h/0/attn/k_norm/weight"].shape == (32,)
    tuned = evaluates_generates_and_tunes(model, d, cfg, out, "olmoe-ft", tmp_path)
    evaluates_on_tp2_ep2(cfg, out, hf_loss_accuracy(model, d)[0])
    assert (tuned.config.num_experts, tuned.config.norm_topk_prob) == (4, False)
    bad = json.loads((tmp_path / "olmoe" / "config.json").read_text())
    bad["clip_qkv"] = 8.0
    (tmp_path / "olmoe" / "config.json").write_text(json.dumps(bad))
    assert_clean_failure(tool("triad-convert", "import", tmp_path / "olmoe", tmp_path / "bad.h5"),
                         "config.json", "clip_qkv 8.0")
    assert not (tmp_path / "bad.h5").exists()


def test_olmo2_and_olmoe_variants_triad_does_not_compute_are_refused(tmp_path):
    """Imports: an OLMo-2 config whose head_dim is not hidden_size / heads (its q_norm spans
    hidden_size values), an OLMoE config without num_experts. Not exported, each naming the
    option: QK-norm over all heads without experts and with norms before the branches (neither
    OLMoE's nor OLMo-2's blocks), no norms before the branches in GPT-2's blocks or without
    QK-norm over all heads, and OLMoE's blocks with a dense first layer or wider heads. Nothing
    is written."""
    imports_refused(tmp_path, (
        (olmo2_model, {"head_dim": 32}, "head_dim 32"),
        (olmoe_model, {"num_experts": None}, "num_experts")
    ))
    llama = dict(position="rope", norm="rmsnorm", bias=False, mlp="swiglu", tied=False)
    full = dict(qk_norm=True, qk_norm_full=True)
    moe = dict(moe_experts=4, moe_top_k=2, moe_normalize=False)
    exports_refused(tmp_path, (
        ({**llama, **full}, "without experts and with norms before"),
        ({"pre_norm": False, "branch_norm": True}, "model.branch_norm"),
        ({**llama, "pre_norm": False, "branch_norm": True},
         "QK-norm over all heads (model.qk_norm_full)"),
        ({**llama, **full, **moe, "moe_first_dense": 1}, "OLMoE"),
        ({**llama, **full, **moe, "attn_head_dim": 24},
         "heads of another width")
    ), n_layer=2)


@pytest.fixture
def dbrx_on_this_torch(monkeypatch):
    """transformers' DBRX builds nn.LayerNorm(d, bias=False), which torch before 2.1 (Debian's
    1.13 here) does not take: on such a torch, a LayerNorm with a weight alone stands in for it
    (the same F.layer_norm; state_dict names norm_1.weight as DBRX's files do)."""
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 1):
        return

    class LayerNorm(torch.nn.Module):
        def __init__(self, n, eps=1e-5, elementwise_affine=True, bias=True, device=None,
                     dtype=None):
            super().__init__()
            self.normalized_shape, self.eps = (n,), eps
            self.weight = torch.nn.Parameter(torch.ones(n))
            self.bias = torch.nn.Parameter(torch.zeros(n)) if bias else None

        def forward(self, x):
            return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight,
                                                  self.bias, self.eps)

    monkeypatch.setattr(torch.nn, "LayerNorm", LayerNorm)


def dbrx_model(**config):
    ffn = {**dict(ffn_hidden_size=40, moe_num_experts=4, moe_top_k=2,
                  moe_normalize_expert_weights=1.0), **config.pop("ffn", {})}
    attn = {**dict(kv_n_heads=2, clip_qkv=1.5, rope_theta=500.0), **config.pop("attn", {})}
    torch.manual_seed(41)
    model = transformers.DbrxForCausalLM(transformers.DbrxConfig(**{
        **dict(vocab_size=V, d_model=64, n_heads=4, n_layers=2, max_seq_len=N_POS,
               attn_config=attn, ffn_config=ffn, tie_word_embeddings=False, pad_token_id=None,
               resid_pdrop=0.0, emb_pdrop=0.0), **config}))
    return spread(model)


@pytest.mark.parametrize("normalize", [1.0, None], ids=["renormalized", "as-routed"])
def test_dbrx_imports_trains_and_exports_as_transformers(imported, tmp_path, normalize,
                                                         dbrx_on_this_torch):
    """transformers' DbrxForCausalLM (rope, LayerNorms with a weight and no bias, q, k and v as
    one Wqkv clamped at clip_qkv 1.5, which cuts some of this model's, 4 query heads over 2, and
    4 SwiGLU experts stored as three fused tensors, 2 per token, their gates renormalized or as
    the router gives them) imports as model.norm = layernorm, bias = false, clip_qkv and experts:
    triad's loss and accuracy are transformers', on one rank and on tp 2 × ep 2, greedy
    generation its tokens; fine-tuned and exported it loads in transformers as DBRX computing
    triad's loss, and the import exported again is the original bit for bit."""
    d, _, cfg = imported
    model = dbrx_model(ffn=dict(moe_normalize_expert_weights=normalize))
    out = import_hf(model, tmp_path / "dbrx", "DBRX")
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (a["norm"] in (b"layernorm", "layernorm"), int(a["bias"]), float(a["clip_qkv"]),
                int(a["moe_experts"]), int(a["moe_normalize"])) == \
            (True, 0, 1.5, 4, int(normalize is not None))
        assert f["model/h/0/mlp/experts/c_proj/weight"].shape == (4, 64, 40)
    tuned = evaluates_generates_and_tunes(model, d, cfg, out, f"dbrx-ft-{normalize}", tmp_path)
    assert tuned.config.ffn_config.moe_normalize_expert_weights == normalize
    evaluates_on_tp2_ep2(cfg, out, hf_loss_accuracy(model, d)[0])


def test_mixtures_of_experts_triad_does_not_compute_are_refused(tmp_path):
    """Imports: Mixtral with one expert per token (its one renormalized gate is always 1), an
    expert's tensor of the wrong shape or missing, Qwen2-MoE's dense layers where triad's cannot
    be (not the first ones, or both first and every n-th, or of another width than the experts),
    and the mixtures whose blocks triad does not build (OLMoE's whole-width QK-norm). Exports:
    the triad mixtures neither Mixtral nor Qwen2-MoE holds (GPT-2's blocks, shared experts
    without a gate, a gate without Qwen2's c_attn bias or with QK-norm, c_attn's bias without
    shared experts, dense layers or gates not renormalized without QK-norm or shared experts,
    Qwen3-MoE with a window, Mixtral with wider heads). Each is one line naming the input and
    what it is; nothing is written."""
    from safetensors.torch import save_file
    model = mixtral_model()
    src = tmp_path / "mixtral"
    model.save_pretrained(src, safe_serialization=True)
    original = json.loads((src / "config.json").read_text())
    out = tmp_path / "bad.h5"
    for change, needle in (({"num_experts_per_tok": 1}, "num_experts_per_tok 1"),
                           ({"num_local_experts": 513, "num_experts_per_tok": 2},
                            "num_local_experts 513"),
                           ({"model_type": "jetmoe"}, "attention is a mixture of experts")):
        (src / "config.json").write_text(json.dumps({**original, **change}))
        assert_clean_failure(tool("triad-convert", "import", src, out), "config.json", needle)
        assert not out.exists()
    (src / "config.json").write_text(json.dumps(original))
    qwen = tmp_path / "qwen2moe"
    qwen2_moe_model(num_hidden_layers=3).save_pretrained(qwen, safe_serialization=True)
    original_q = json.loads((qwen / "config.json").read_text())
    for change, needle in (({"mlp_only_layers": [1]}, "mlp_only_layers [1]"),
                           ({"mlp_only_layers": [0], "decoder_sparse_step": 2},
                            "decoder_sparse_step 2")):
        (qwen / "config.json").write_text(json.dumps({**original_q, **change}))
        assert_clean_failure(tool("triad-convert", "import", qwen, out), "config.json", needle)
        assert not out.exists()
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    name = "model.layers.1.block_sparse_moe.experts.3.w2.weight"
    for bad, needle in (({**weights, name: torch.zeros(64, 40)}, f"{name} have shape(s) [[64, "
                                                                  f"40]], expected [[64, 48]]"),
                        ({k: v for k, v in weights.items() if k != name}, f"{name} missing")):
        save_file(bad, str(src / "model.safetensors"))
        assert_clean_failure(tool("triad-convert", "import", src, out), needle)
        assert not out.exists()

    llama = dict(n_layer=2, n_head=4, n_embd=32, seq_len=16, vocab_size=300, position="rope",
                 norm="rmsnorm", bias=False, mlp="swiglu", tied=False, moe_experts=4)
    for change, needle in (({"position": "learned", "norm": "layernorm", "bias": True,
                             "mlp": "gelu", "tied": True}, "in blocks other than Llama's"),
                           ({"moe_shared_hidden": 16}, "without a gate"),
                           ({"moe_shared_hidden": 16, "moe_shared_gate": True},
                            "model.qkv_bias = true"),
                           ({"moe_first_dense": 1}, "model.moe_first_dense = 1"),
                           ({"moe_every": 2}, "model.moe_every = 2"),
                           ({"moe_normalize": False}, "model.moe_normalize = false"),
                           ({"qkv_bias": True}, "Mixtral and Qwen3-MoE have no such bias"),
                           ({"moe_shared_hidden": 16, "moe_shared_gate": True, "qkv_bias": True,
                             "qk_norm": True}, "model.qk_norm = false"),
                           ({"qk_norm": True, "sliding_window": 4}, "exports as Qwen3-MoE"),
                           ({"n_layer": 4, "qk_norm": True, "moe_first_dense": 1,
                             "moe_every": 2}, "model.moe_every = 2"),
                           ({"sliding_window": 4, "attn_head_dim": 16}, "exports as Mixtral")):
        cfg = ref.GptConfig(**{**llama, **change})
        ckpt = tmp_path / "moe.h5"
        ckpt.unlink(missing_ok=True)
        ref.write_checkpoint(ckpt, cfg, ref.random_weights(cfg, seed=4))
        assert tool("triad-ckpt", ckpt).returncode == 0
        for to in ("hf", "llmc"):
            p = tool("triad-convert", "export", ckpt, tmp_path / "out", "--to", to, "--vocab",
                     "none") if to == "hf" else \
                tool("triad-convert", "export", ckpt, tmp_path / "out", "--to", to)
            assert_clean_failure(p, "moe.h5", *([needle] if to == "hf" else []))
            assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_gpt2_blocks_with_grouped_query_attention(tmp_path):
    """GPT-2's blocks with fewer key/value heads (model.n_kv_head, a file the reference writes):
    triad-ckpt checks the smaller c_attn and the attribute; GPT-2's formats cannot hold it."""
    cfg = ref.GptConfig(n_layer=2, n_head=4, n_embd=32, seq_len=16, vocab_size=300, n_kv_head=2)
    ckpt = tmp_path / "gqa.h5"
    ref.write_checkpoint(ckpt, cfg, ref.random_weights(cfg, seed=1))
    p = tool("triad-ckpt", ckpt)
    assert p.returncode == 0 and "status: OK" in p.stdout, p.stdout + p.stderr
    # c_attn: q's 32 rows, then k and v of 2 heads of 8 (96 rows with a key/value head each)
    line = next(x for x in p.stdout.splitlines() if "/model/h/0/attn/c_attn/weight" in x)
    assert "[64, 32]" in line, line
    for to in ("hf", "llmc"):
        assert_clean_failure(tool("triad-convert", "export", ckpt, tmp_path / f"out-{to}", "--to",
                                  to), "2 key/value heads for 4 query heads", "model.n_kv_head")
        assert not (tmp_path / f"out-{to}").exists()
    bad = tmp_path / "bad.h5"
    shutil.copy(ckpt, bad)
    with h5py.File(bad, "r+") as f:
        f["model"].attrs["n_kv_head"] = np.int64(3)
    p = tool("triad-ckpt", bad)
    assert p.returncode == 1 and "n_kv_head = 3, not a positive divisor of n_head 4" in p.stdout


def test_qk_norm_checkpoints_are_checked_and_not_exported(tmp_path):
    """model.qk_norm (files the reference writes): triad-ckpt expects q_norm and k_norm [hd] in
    each layer after the attribute; GPT-2's blocks with QK-norm are refused by every export,
    naming model.qk_norm, and nothing is written; Llama's blocks with it export as Qwen3 (and not
    to llm.c's GPT-2 format)."""
    for name, cfg in (("gpt2", ref.GptConfig(n_layer=2, n_head=4, n_embd=32, seq_len=16,
                                             vocab_size=300, qk_norm=True)),
                      ("llama", ref.GptConfig(n_layer=2, n_head=4, n_embd=32, seq_len=16,
                                              vocab_size=300, position="rope", norm="rmsnorm",
                                              bias=False, mlp="swiglu", tied=False, n_kv_head=2,
                                              qk_norm=True))):
        ckpt = tmp_path / f"{name}.h5"
        ref.write_checkpoint(ckpt, cfg, ref.random_weights(cfg, seed=1))
        p = tool("triad-ckpt", ckpt)
        assert p.returncode == 0 and "status: OK" in p.stdout, p.stdout + p.stderr
        for t in ("q_norm", "k_norm"):
            line = next(x for x in p.stdout.splitlines() if f"/model/h/1/attn/{t}/weight" in x)
            assert "[8]" in line, line
        for to in ("hf", "llmc"):
            p = tool("triad-convert", "export", ckpt, tmp_path / f"out-{to}", "--to", to)
            if name == "llama" and to == "hf":
                assert p.returncode == 0, p.stderr
                config = json.loads((tmp_path / "out-hf" / "config.json").read_text())
                assert config["model_type"] == "qwen3"
                continue
            assert_clean_failure(p, f"{name}.h5",
                                 "holds GPT-2 only" if name == "llama" else "model.qk_norm")
            assert not (tmp_path / f"out-{to}").exists()
            assert not list(tmp_path.glob(f".out-{to}*"))
        # The attribute decides the layout: without it the two tensors are unexpected.
        bad = tmp_path / f"{name}-bad.h5"
        shutil.copy(ckpt, bad)
        with h5py.File(bad, "r+") as f:
            f["model"].attrs["qk_norm"] = np.int64(0)
        p = tool("triad-ckpt", bad)
        assert p.returncode == 1 and "unexpected dataset(s): h/0/attn/k_norm/weight" in p.stdout, \
            p.stdout


@pytest.mark.parametrize("norm_bias", [False, True])
def test_model_without_biases_exports_as_gpt2_with_zero_biases(imported, tmp_path, norm_bias):
    """model.bias = false (nanoGPT's bias = False) is GPT-2 with every bias zero: the export
    writes zeros there (the LayerNorms' own biases under model.norm_bias), and transformers
    computes triad's validation loss."""
    d, _, cfg = imported
    name = "nbn" if norm_bias else "nb"
    train("--config", cfg, "--model.bias", "false", "--model.norm_bias", str(norm_bias).lower(),
          "--run.name", name, "--resume", "none", check=True)
    run_dir = d / "runs" / name
    with h5py.File(run_dir / "ckpt" / "step_00000003.h5", "r") as f:
        assert int(f["model"].attrs["bias"]) == 0
        assert "bias" not in f["model/h/0/attn/c_attn"]
        assert ("bias" in f["model/ln_f"]) == norm_bias
        ln_bias = f["model/h/0/ln_1/bias"][()] if norm_bias else None
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        triad_loss = float(f["val/loss"][-1])
    out = tmp_path / "hf-nb"
    p = tool("triad-convert", "export", run_dir, out, "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    model = transformers.GPT2LMHeadModel.from_pretrained(out)
    assert not model.transformer.h[0].attn.c_attn.bias.detach().any()
    if norm_bias:  # trained, not zero, and as the checkpoint has it
        assert ln_bias.any()
        np.testing.assert_array_equal(model.transformer.h[0].ln_1.bias.detach().numpy(), ln_bias)
    loss, _ = hf_loss_accuracy(model.eval(), d)
    assert abs(loss - triad_loss) <= 1e-5 * triad_loss, (loss, triad_loss)


def read_llmc(path):
    raw = path.read_bytes()
    return np.frombuffer(raw[:1024], dtype="<i4"), raw[1024:]


def test_llmc_files(imported, tmp_path):
    d, ckpt, _ = imported
    fp32, bf16 = tmp_path / "m.bin", tmp_path / "m_bf16.bin"
    assert tool("triad-convert", "export", ckpt, fp32, "--to", "llmc").returncode == 0
    assert tool("triad-convert", "export", ckpt, bf16, "--to", "llmc", "--dtype",
                "bf16").returncode == 0
    header, data = read_llmc(fp32)
    assert list(header[:8]) == [20240326, 3, SEQ, V, 2, 4, 64, 50304]
    assert read_llmc(bf16)[0][1] == 5
    with h5py.File(ckpt, "r") as f:
        wte = f["model/wte/weight"][()]
        wpe = f["model/wpe/weight"][()]
        ln1w = np.stack([f[f"model/h/{i}/ln_1/weight"][()] for i in range(2)])
        lnfb = f["model/ln_f/bias"][()]
    # llm.c's layout: wte (padded), wpe, then ln_1.weight of every layer, ...; ln_f last.
    got = np.frombuffer(data, dtype="<f4")
    np.testing.assert_array_equal(got[:wte.size], wte.ravel())
    np.testing.assert_array_equal(got[wte.size:wte.size + wpe.size], wpe.ravel())
    np.testing.assert_array_equal(got[wte.size + wpe.size:][:ln1w.size], ln1w.ravel())
    np.testing.assert_array_equal(got[-lnfb.size:], lnfb)
    # bf16: PyTorch's round-to-nearest-even of the fp32 weights.
    b16 = np.frombuffer(read_llmc(bf16)[1], dtype="<u2")
    want = torch.from_numpy(got.copy()).to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(b16, want.view("<u2"))

    for src, exact in ((fp32, True), (bf16, False)):
        back = tmp_path / (src.stem + ".h5")
        assert tool("triad-convert", "import", src, back).returncode == 0
        with h5py.File(back, "r") as a, h5py.File(ckpt, "r") as b:
            for n in ("wte/weight", "h/1/attn/c_attn/weight", "h/0/mlp/c_proj/weight",
                      "ln_f/bias"):
                x, y = a["model/" + n][()], b["model/" + n][()]
                if exact:
                    np.testing.assert_array_equal(x, y, err_msg=n)
                else:
                    ref = torch.from_numpy(y).to(torch.bfloat16).float().numpy()
                    np.testing.assert_array_equal(x, ref, err_msg=n)
    # Cropped on import, as the HF path.
    short = tmp_path / "short.h5"
    assert tool("triad-convert", "import", fp32, short, "--seq-len", 8).returncode == 0
    with h5py.File(short, "r") as f:
        np.testing.assert_array_equal(f["model/wpe/weight"][()], wpe[:8])


def save_hf(path, model, drop=(), extra=None):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in model.state_dict().items()
          if k not in drop and k != "lm_head.weight" and not k.endswith(".attn.bias")
          and not k.endswith("masked_bias")}
    sd.update(extra or {})
    path.mkdir()
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
    model.config.to_json_file(path / "config.json")
    return path


def assert_same_tensors(a_path, b_path, round_b_to_bf16=False):
    with h5py.File(a_path, "r") as a, h5py.File(b_path, "r") as b:
        names = []
        b["model"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset)
                              else None)
        assert len(names) == 28
        for n in names:
            want = b["model"][n][()]
            if round_b_to_bf16:
                want = torch.from_numpy(want).to(torch.bfloat16).float().numpy()
            np.testing.assert_array_equal(a["model"][n][()], want, err_msg=n)


def test_other_hf_layouts(imported, tmp_path):
    """The hub's GPT-2 layout (no `transformer.` prefix, the causal-mask buffers stored, here
    as F32 and as U8 the way older transformers saved them), bf16 weights, a sharded save and a
    single .safetensors file all import to the same tensors."""
    from safetensors.torch import save_file

    d, ckpt, _ = imported
    model = hf_model()
    n = N_POS
    sd = {k[len("transformer."):]: v.to(torch.bfloat16).contiguous()
          for k, v in model.state_dict().items()
          if k.startswith("transformer.") and not k.endswith(".attn.bias")
          and not k.endswith("masked_bias")}
    sd["h.0.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
    sd["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    sd["h.1.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.uint8)).view(1, 1, n, n)
    hub = tmp_path / "hub"
    hub.mkdir()
    save_file(sd, hub / "model.safetensors", metadata={"format": "pt"})
    model.config.to_json_file(hub / "config.json")
    out = tmp_path / "hub.h5"
    p = tool("triad-convert", "import", hub, out, "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    assert_same_tensors(out, ckpt, round_b_to_bf16=True)

    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="1MB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    for src, name in ((sharded, "sharded.h5"), (d / "hf" / "model.safetensors", "single.h5")):
        p = tool("triad-convert", "import", src, tmp_path / name, "--seq-len", SEQ)
        assert p.returncode == 0, p.stderr
        assert_same_tensors(tmp_path / name, ckpt)

    # Each tensor from the file the index places it in: a stale shard left beside the current
    # ones (it sorted last and its tensors replaced theirs), a tensor in two files, an index
    # naming a tensor its file lacks.
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    name, shard = next(iter(index["weight_map"].items()))
    stale = tmp_path / "stale"
    shutil.copytree(sharded, stale)
    shutil.copy(d / "hf" / "model.safetensors", stale / "zz-stale.safetensors")
    wm = dict(index["weight_map"], **{name: "zz-stale.safetensors"})
    (stale / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    assert_clean_failure(tool("triad-convert", "import", stale, tmp_path / "stale.h5"),
                         f"{stale / shard}: holds tensor {name}, which "
                         f"model.safetensors.index.json places in {stale / 'zz-stale.safetensors'}")
    wm = {n: f for n, f in index["weight_map"].items() if n != name}
    (stale / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    (stale / "zz-stale.safetensors").unlink()
    assert_clean_failure(tool("triad-convert", "import", stale, tmp_path / "stale.h5"),
                         f"holds tensor {name}, which model.safetensors.index.json places in "
                         f"no file")
    wm = dict(index["weight_map"], **{"transformer.h.9.ln_1.weight": shard})
    (stale / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    assert_clean_failure(tool("triad-convert", "import", stale, tmp_path / "stale.h5"),
                         f"places tensor transformer.h.9.ln_1.weight in {stale / shard}, which "
                         f"does not hold it")
    assert not (tmp_path / "stale.h5").exists()


def test_llmc_export_is_llmcs_layout(imported, tmp_path):
    """The export against the layout llm.c's train_gpt2.py write_model produces, built here
    from transformers' tensors: header, wte padded to 50304 rows with zeros, wpe, then each
    per-layer tensor (Linear layout, [out, in]) for all layers in turn, then ln_f."""
    d, ckpt, _ = imported
    sd = {k[len("transformer."):]: v for k, v in hf_model().state_dict().items()
          if k.startswith("transformer.")}
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    wte = torch.cat([sd["wte.weight"], torch.zeros(50304 - V, 64)])
    parts = [wte, sd["wpe.weight"][:SEQ]]
    for key in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"):
        for i in range(2):
            t = sd[f"h.{i}.{key}"]
            parts.append(t.t() if key in conv1d else t)
    parts += [sd["ln_f.weight"], sd["ln_f.bias"]]
    want = b"".join(t.contiguous().float().numpy().astype("<f4").tobytes() for t in parts)
    out = tmp_path / "m.bin"
    assert tool("triad-convert", "export", ckpt, out, "--to", "llmc").returncode == 0
    header, data = read_llmc(out)
    assert list(header[:8]) == [20240326, 3, SEQ, V, 2, 4, 64, 50304] and not header[8:].any()
    assert data == want


@pytest.mark.parametrize("case,needles", [
    ("erf_gelu", ["config.json", "activation_function 'gelu'"]),
    ("wide_mlp", ["config.json", "n_inner 128"]),
    ("untied_head", ["lm_head.weight differs from wte.weight"]),
    ("missing", ["h.1.mlp.c_fc.weight", "missing"]),
    ("foreign_tensor", ["h.0.attn.rotary", "not part of a GPT-2 model"]),
    ("truncated", ["model.safetensors", "truncated"]),
    ("not_safetensors", ["model.safetensors", "not a safetensors file"]),
    ("no_config", ["no config.json"]),
    ("seq_len", ["--seq-len 65 exceeds the model's 64 positions"]),
    ("llmc_truncated", ["m.bin", "truncated"]),
    ("llmc_version", ["m.bin", "version 4"]),
    ("hdf5", ["already HDF5"]),
    ("bad_offsets", ["model.safetensors", "malformed header entry for tensor wte.weight"]),
    ("trailing_bytes", ["model.safetensors", "16 bytes after the last tensor's data"]),
    ("overlap", ["model.safetensors", "tensor b starts at data byte 2, not at 4", "overlap"]),
    ("int_weight", ["model.safetensors", "tensor transformer.wte.weight has dtype I32"]),
])
def test_import_refuses_bad_inputs(imported, tmp_path, case, needles):
    d, ckpt, _ = imported
    model = hf_model()
    args = []
    if case == "erf_gelu":
        src = save_hf(tmp_path / "hf", hf_model(activation_function="gelu"))
    elif case == "wide_mlp":
        src = save_hf(tmp_path / "hf", hf_model(n_inner=128))
    elif case == "untied_head":
        src = save_hf(tmp_path / "hf", model, extra={"lm_head.weight": torch.zeros(V, 64)})
    elif case == "missing":
        src = save_hf(tmp_path / "hf", model, drop=("transformer.h.1.mlp.c_fc.weight",))
    elif case == "foreign_tensor":
        src = save_hf(tmp_path / "hf", model, extra={"transformer.h.0.attn.rotary": torch.ones(4)})
    elif case in ("truncated", "not_safetensors"):
        src = save_hf(tmp_path / "hf", model)
        f = src / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-100] if case == "truncated" else b"\0" * 64)
    elif case == "trailing_bytes":
        src = save_hf(tmp_path / "hf", model)
        f = src / "model.safetensors"
        f.write_bytes(f.read_bytes() + b"\0" * 16)
    elif case == "no_config":
        src = save_hf(tmp_path / "hf", model)
        (src / "config.json").unlink()
    elif case == "seq_len":
        src, args = save_hf(tmp_path / "hf", model), ["--seq-len", "65"]
    elif case in ("bad_offsets", "overlap"):
        src = tmp_path / "hf"
        src.mkdir()
        header = json.dumps({"wte.weight": {"dtype": "F32", "shape": [1],
                                            "data_offsets": ["0", "x"]}} if case == "bad_offsets"
                            else {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                  "b": {"dtype": "F16", "shape": [1], "data_offsets": [2, 4]}}
                            ).encode()
        (src / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header
                                                + b"\0" * 4)
        model.config.to_json_file(src / "config.json")
    elif case == "int_weight":
        src = save_hf(tmp_path / "hf", model,
                      drop=("transformer.wte.weight",),
                      extra={"transformer.wte.weight": torch.zeros(V, 64, dtype=torch.int32)})
    elif case.startswith("llmc"):
        src = tmp_path / "m.bin"
        assert tool("triad-convert", "export", ckpt, src, "--to", "llmc").returncode == 0
        raw = bytearray(src.read_bytes())
        if case == "llmc_truncated":
            raw = raw[:-4]
        else:
            raw[4:8] = (4).to_bytes(4, "little")
        src.write_bytes(bytes(raw))
    else:
        src = ckpt
    out = tmp_path / "out.h5"
    assert_clean_failure(tool("triad-convert", "import", src, out, *args), *needles)
    assert not out.exists() and not list(tmp_path.glob(".out.h5*"))


def test_rotary_position_checkpoints_are_not_exported_as_gpt2(tmp_path):
    """GPT-2's formats have no place for rotary positions: a rope model of GPT-2's blocks is
    refused by llm.c's format, not written without its positions, and exported to Hugging Face as
    GPT-NeoX's (which test_gpt_neox_imports_and_evaluates_as_transformers checks)."""
    cfg = tiny_config(tmp_path, name="rope", model__position="rope", train__steps=1,
                      checkpoint__every=1)
    p = run([exe("triad-train"), "--config", cfg])
    assert p.returncode == 0, p.stderr
    assert_clean_failure(tool("triad-convert", "export", tmp_path / "runs" / "rope",
                              tmp_path / "out-llmc", "--to", "llmc"), "holds GPT-2 only")
    assert not (tmp_path / "out-llmc").exists()
    p = tool("triad-convert", "export", tmp_path / "runs" / "rope", tmp_path / "out-hf", "--to",
             "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "out-hf" / "config.json").read_text())["model_type"] == \
        "gpt_neox"
    cfg = tiny_config(tmp_path, name="rms", model__norm="rmsnorm", train__steps=1,
                      checkpoint__every=1)
    assert run([exe("triad-train"), "--config", cfg]).returncode == 0
    assert_clean_failure(tool("triad-convert", "export", tmp_path / "runs" / "rms",
                              tmp_path / "out-rms", "--to", "hf"),
                         "uses rmsnorm", "LayerNorms (weight and bias) only")
    cfg = tiny_config(tmp_path, name="sw", model__mlp="swiglu", train__steps=1,
                      checkpoint__every=1)
    assert run([exe("triad-train"), "--config", cfg]).returncode == 0
    assert_clean_failure(tool("triad-convert", "export", tmp_path / "runs" / "sw",
                              tmp_path / "out-sw", "--to", "llmc"), "swiglu with 128 hidden units")
    p = tool("triad-ckpt", tmp_path / "runs" / "sw")  # the SwiGLU layout verifies
    assert p.returncode == 0, p.stdout + p.stderr
    cfg = tiny_config(tmp_path, name="un", model__tie_embeddings="false", train__steps=1,
                      checkpoint__every=1)
    assert run([exe("triad-train"), "--config", cfg]).returncode == 0
    assert_clean_failure(tool("triad-convert", "export", tmp_path / "runs" / "un",
                              tmp_path / "out-un", "--to", "hf"), "an output layer of its own")
    p = tool("triad-ckpt", tmp_path / "runs" / "un")  # lm_head is part of the layout
    assert p.returncode == 0, p.stdout + p.stderr
    # triad-ckpt verifies the rmsnorm layout (no LayerNorm biases) as complete and sound.
    p = tool("triad-ckpt", tmp_path / "runs" / "rms")
    assert p.returncode == 0, p.stdout + p.stderr


def test_refuses_to_replace_and_reports_bad_checkpoints(imported, tmp_path):
    d, ckpt, _ = imported
    before = ckpt.read_bytes()
    assert_clean_failure(tool("triad-convert", "import", d / "hf", ckpt), str(ckpt),
                         "already exists")
    assert ckpt.read_bytes() == before
    out = tmp_path / "hf-out"
    out.mkdir()
    assert_clean_failure(tool("triad-convert", "export", ckpt, out, "--to", "hf"),
                         "already exists")
    # A damaged checkpoint is not exported.
    bad = tmp_path / "bad.h5"
    bad.write_bytes(before)
    with h5py.File(bad, "r+") as f:
        f["model/ln_f/bias"][0] += 1
    assert_clean_failure(tool("triad-convert", "export", bad, tmp_path / "x", "--to", "hf"),
                         "bad.h5", "checksum")
    assert not (tmp_path / "x").exists()
    # A model of GPT-2's blocks whose logits are capped (model.logit_softcap) or scaled
    # (model.logit_scale), whose attention scores have another scale (model.attn_scale) or are
    # capped (model.attn_softcap), whose branches' outputs are scaled (model.residual_scale) or
    # normalized (model.branch_norm), or under μP: no export format for those blocks holds them
    # (Gemma 2's and Granite's hold some, for their blocks).
    for attr, key in (("logit_softcap", 30.0), ("attn_scale", 0.01), ("mup_base_width", 64),
                      ("logit_scale", 0.5), ("attn_softcap", 50.0), ("residual_scale", 0.5)):
        capped = tmp_path / f"{attr}.h5"
        capped.write_bytes(before)
        with h5py.File(capped, "r+") as f:
            f["model"].attrs[attr] = key
        for to in ("hf", "llmc"):
            assert_clean_failure(tool("triad-convert", "export", capped, tmp_path / "c", "--to",
                                      to), f"{attr}.h5", "model." + attr)
    assert not (tmp_path / "c").exists()
    assert_clean_failure(tool("triad-convert", "export", ckpt, tmp_path / "y", "--to", "hf",
                              "--dtype", "bf16"), "--dtype")
    assert_clean_failure(tool("triad-convert", "export", ckpt, tmp_path / "y", "--to", "llmc",
                              "--vocab", VOCAB), "--vocab applies to --to hf")
    assert_clean_failure(tool("triad-convert", "export", ckpt, tmp_path / "y", "--to", "hf",
                              "--vocab", tmp_path / "none.tiktoken"), "none.tiktoken",
                         "no such file")
    assert not (tmp_path / "y").exists()
    p = tool("triad-convert", "export", ckpt, tmp_path / "w", "--to", "hf", "--vocab", "none")
    assert p.returncode == 0 and "no tokenizer files" in p.stdout, p.stderr
    assert sorted(f.name for f in (tmp_path / "w").iterdir()) == ["config.json",
                                                                  "model.safetensors"]
    # The exported config is what transformers needs to compute triad's model.
    p = tool("triad-convert", "export", ckpt, tmp_path / "z", "--to", "hf")
    assert p.returncode == 0, p.stderr
    cfg = json.loads((tmp_path / "z" / "config.json").read_text())
    assert cfg["activation_function"] == "gelu_new" and cfg["layer_norm_epsilon"] == 1e-5
    assert cfg["tie_word_embeddings"] and cfg["eos_token_id"] == 50256


def test_latent_attention_on_blocks_deepseek_lacks_is_not_exported(tmp_path):
    """Multi-head latent attention (model.kv_lora_rank) exports as Hugging Face's DeepSeek
    (tests/python/test_convert_deepseek.py), whose blocks are Llama's: on GPT-2's blocks with
    experts it is refused naming what DeepSeek's format lacks, nothing written."""
    mla = dict(position="rope", kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
               v_head_dim=16)
    exports_refused(tmp_path, (
        ({**mla, "moe_experts": 4, "moe_top_k": 2},
         "multi-head latent attention, which exports as Hugging Face's DeepSeek-V2 or V3; those "
         "have none of position rope, norm layernorm, mlp gelu, bias 1"),
    ), n_layer=2)


def test_gpt_oss_blocks_are_not_exported(tmp_path):
    """Attention sinks (model.attn_sinks), gpt-oss's SwiGLU (model.glu_*) and its experts' and
    router's biases (model.moe_bias): only gpt-oss's format holds them, all together (its export:
    test_convert_gpt_oss.py); sinks on GPT-2's blocks or Llama's dense ones, and the SwiGLU or the
    biases without sinks (Mixtral's blocks but for the biases), are refused naming the keys,
    nothing written."""
    sinks = "the model has attention sinks, which export as Hugging Face's gpt-oss; that has none"
    glu = "SwiGLU has gpt-oss's shape (model.glu_alpha, glu_limit, glu_offset) without attention"
    moe = "router and experts have biases (model.moe_bias, gpt-oss's) without attention sinks"
    llama = {"position": "rope", "norm": "rmsnorm", "bias": False, "mlp": "swiglu", "tied": False}
    exports_refused(tmp_path, (
        ({"attn_sinks": True}, sinks),
        ({**llama, "attn_sinks": True}, sinks),
        ({**llama, "glu_alpha": 1.702, "glu_limit": 7.0, "glu_offset": 1.0}, glu),
        ({**llama, "glu_offset": 1.0}, glu),
        ({**llama, "moe_experts": 4, "moe_top_k": 2, "moe_bias": True}, moe),
    ), n_layer=1)


def as_transformers5(cfg):
    """A config.json of transformers 4 as transformers 5 saves it (its RotaryEmbeddingConfigMixin
    and the families' convert_rope_params_to_dict): the base, the rotated share and the scaling
    in one rope_parameters object, none of them beside it (Gemma 3's: one object per kind of
    layer; GPT-NeoX's rotary_emb_base and rotary_pct, DBRX's attn_config.rope_theta moved in
    too), the original context added to the scalings that have one."""
    cfg = json.loads(json.dumps(cfg))
    kind = cfg["model_type"]
    if kind == "gemma3_text":
        full = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta", 1e6),
                **(cfg.pop("rope_scaling", None) or {})}
        sliding = {"rope_type": "default", "rope_theta": cfg.pop("rope_local_base_freq", 1e4)}
        cfg["rope_parameters"] = {"full_attention": full, "sliding_attention": sliding}
        return cfg
    if kind == "gpt_neox":  # (transformers 4.47 writes both names of its base and share)
        cfg.pop("rope_theta", None), cfg.pop("partial_rotary_factor", None)
    theta = cfg["attn_config"].pop("rope_theta") if kind == "dbrx" else \
        cfg.pop("rotary_emb_base" if kind == "gpt_neox" else "rope_theta", 1e4)
    params = {"rope_type": "default", "rope_theta": theta}
    share = cfg.pop("rotary_pct" if kind == "gpt_neox" else "partial_rotary_factor", None)
    if share is not None:
        params["partial_rotary_factor"] = share
    scaling = cfg.pop("rope_scaling", None) or {}
    params.update(scaling)
    if params["rope_type"] in ("llama3", "yarn", "longrope"):
        params.setdefault("original_max_position_embeddings", cfg["max_position_embeddings"])
    cfg["rope_parameters"] = params
    return cfg


def same_import(a, b):
    """Whether two triad checkpoints hold the same model: attributes and tensors."""
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        assert {k: str(v) for k, v in x["model"].attrs.items()} == \
            {k: str(v) for k, v in y["model"].attrs.items()}
        names = []
        x["model"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert names
        for n in names:
            assert np.array_equal(x["model"][n][()], y["model"][n][()]), n


def test_transformers5_rope_parameters_import_as_the_older_keys(tmp_path, dbrx_on_this_torch):
    """transformers 5 saves rope_theta, partial_rotary_factor and rope_scaling inside one
    rope_parameters (Gemma 3: per kind of layer); a file in that form imports as the same model
    as its transformers 4 form (each with a base other than the default, which reading the older
    keys alone would have taken): Llama with Llama 3.1's scaling, GPT-NeoX's rotary_emb_base and
    rotary_pct, the partial rotary of Phi and StableLM (each other than the share transformers 5
    defaults it to; Nemotron's is set the same way, and its model's LayerNorm stand-in on this
    torch clashes with DBRX's), DBRX's base, Gemma 3's two bases and linear scaling. A
    rope_parameters that is not an object, per-layer parameters outside Gemma 3 and flat ones in
    it, scaled sliding layers, one without a base, one beside a rope_scaling (transformers 5 then
    reads the second alone), and a base said both ways differently are refused, naming
    config.json."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    models = {"llama": llama_model(num_key_value_heads=2, rope_scaling=scaling),
              "neox": neox_model(rotary_pct=0.5), "phi": phi_model(partial_rotary_factor=0.75),
              "stablelm": stablelm_model(partial_rotary_factor=0.5), "dbrx": dbrx_model()}
    for name, model in models.items():
        model.save_pretrained(tmp_path / name, safe_serialization=True)
    linear = {**GEMMA3, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    gemma3_files(tmp_path / "gemma3", linear)
    gemma3_files(tmp_path / "mm", linear, multimodal="new")
    for name in [*models, "gemma3", "mm"]:
        old, new = tmp_path / name, tmp_path / f"{name}5"
        shutil.copytree(old, new)
        cfg = json.loads((old / "config.json").read_text())
        if name == "mm":
            cfg["text_config"] = as_transformers5({**cfg["text_config"],
                                                   "model_type": "gemma3_text"})
        else:
            cfg = as_transformers5(cfg)
        (new / "config.json").write_text(json.dumps(cfg))
        top = cfg["text_config"] if name == "mm" else cfg
        assert not set(top) & {"rope_theta", "rotary_emb_base", "rotary_pct", "rope_scaling",
                               "partial_rotary_factor", "rope_local_base_freq"}, top
        for src in (old, new):
            p = tool("triad-convert", "import", src, tmp_path / f"{src.name}.h5", "--seq-len", SEQ)
            assert p.returncode == 0, p.stderr
        same_import(tmp_path / f"{name}.h5", tmp_path / f"{name}5.h5")
    with h5py.File(tmp_path / "llama5.h5", "r") as f:
        assert float(f["model"].attrs["rope_theta"]) == 500.0
    with h5py.File(tmp_path / "gemma35.h5", "r") as f:
        a = f["model"].attrs
        assert (float(a["rope_theta"]), float(a["rope_local_theta"]), a["rope_scaling"]) == \
            (1000.0, 50.0, b"linear")
    # DBRX's export writes its base at the top too (transformers 5's place): the same model.
    dbrx = json.loads((tmp_path / "dbrx" / "config.json").read_text())
    (tmp_path / "dbrx5" / "config.json").write_text(json.dumps({**dbrx, "rope_theta": 500.0}))
    p = tool("triad-convert", "import", tmp_path / "dbrx5", tmp_path / "top.h5", "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    same_import(tmp_path / "dbrx.h5", tmp_path / "top.h5")
    (tmp_path / "dbrx5" / "config.json").write_text(json.dumps({**dbrx, "rope_theta": 1e4}))
    assert_clean_failure(tool("triad-convert", "import", tmp_path / "dbrx5", tmp_path / "x.h5"),
                         "config.json", "given differently as attn_config.rope_theta = 500.0 and "
                         "rope_theta = 10000.0")
    base = json.loads((tmp_path / "llama5" / "config.json").read_text())
    g3 = json.loads((tmp_path / "gemma35" / "config.json").read_text())
    for bad, needle in (
            ({**base, "rope_parameters": [500.0]}, "rope_parameters = [500.0] is not a JSON object"),
            ({**base, "rope_parameters": {"full_attention": {"rope_theta": 500.0}}},
             "rope_parameters per kind of layer (full_attention) in a 'llama' model"),
            ({**base, "rope_theta": 10000.0}, "rope_theta = 10000.0 and rope_parameters.rope_theta "
                                              "= 500.0 disagree"),
            ({**base, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
             "both rope_scaling and rope_parameters are given"),
            ({**base, "rope_parameters": {"rope_type": "default"}},
             "rope_parameters has no rope_theta"),
            ({**g3, "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0}},
             "is not per kind of layer"),
            ({**g3, "rope_parameters": {**g3["rope_parameters"], "sliding_attention": {
                "rope_type": "linear", "factor": 2.0, "rope_theta": 50.0}}},
             "rope_parameters.sliding_attention scales the windowed layers' rope"),
            ({**g3, "rope_local_base_freq": 10000.0},
             "rope_local_base_freq = 10000.0 and rope_parameters.sliding_attention.rope_theta = "
             "50.0 disagree")):
        src = tmp_path / ("gemma35" if bad["model_type"] == "gemma3_text" else "llama5")
        (src / "config.json").write_text(json.dumps(bad))
        assert_clean_failure(tool("triad-convert", "import", src, tmp_path / "bad.h5"),
                             "config.json", needle)
        assert not (tmp_path / "bad.h5").exists()


def test_every_listed_family_is_read_and_another_model_type_names_them_all():
    """The families --help lists (weights_hf_import.FAMILIES) are the ones hf_config_dims
    dispatches: an empty config of each fails, if at all, on its own keys, never as a model_type
    triad does not import; another model_type's error names every family's."""
    from analysis.weights_dims import ConvertError
    from analysis.weights_hf_import import FAMILIES, hf_config_dims

    for _, kinds in FAMILIES:
        for kind in kinds:
            try:
                hf_config_dims({"model_type": kind}, "config.json", None)
            except ConvertError as e:
                assert "triad imports" not in str(e), (kind, str(e))
            except (KeyError, TypeError, ValueError):
                pass
    with pytest.raises(ConvertError) as e:
        hf_config_dims({"model_type": "bert"}, "config.json", None)
    assert "config.json: model_type is 'bert'; triad imports GPT-2 ('gpt2')" in str(e.value)
    for _, kinds in FAMILIES:
        for kind in kinds:
            assert repr(kind) in str(e.value), kind


def test_malformed_model_files_are_refused_by_name(tmp_path):
    """Damage Python's own errors told of without naming the file (a model_type that is a list,
    a shape of Infinity or of two negative sizes whose product looks right, JSON nested past
    Python's recursion limit): each is refused with the file and the problem."""
    src = tmp_path / "hf"
    hf_model().save_pretrained(src, safe_serialization=True)
    cfg = json.loads((src / "config.json").read_text())
    st = (src / "model.safetensors").read_bytes()
    n = int.from_bytes(st[:8], "little")
    header = json.loads(st[8:8 + n])

    def with_header(h):
        text = json.dumps(h).encode()
        return len(text).to_bytes(8, "little") + text + st[8 + n:]

    wte = header["transformer.wte.weight"]
    cases = (
        ("model_type", lambda d: (d / "config.json").write_text(
            json.dumps({**cfg, "model_type": ["gpt2"]})), "model_type is ['gpt2'], not a name"),
        ("deep", lambda d: (d / "config.json").write_text("[" * 100000 + "]" * 100000),
         "nested too deeply"),
        ("infinity", lambda d: (d / "model.safetensors").write_bytes(with_header(
            {**header, "transformer.wte.weight": {**wte, "shape": [1e999, wte["shape"][1]]}})
            .replace(b"1e999", b"Infinity")), "malformed header entry for tensor"),
        ("negative", lambda d: (d / "model.safetensors").write_bytes(with_header(
            {**header, "transformer.wte.weight": {**wte, "shape": [-s for s in wte["shape"]]}})),
         "malformed header entry for tensor transformer.wte.weight (shape [-"),
        # (int() cut 96.5 to 96: a damaged header read as a tensor of another size)
        ("fraction", lambda d: (d / "model.safetensors").write_bytes(with_header(
            {**header,
             "transformer.wte.weight": {**wte, "shape": [s + 0.5 for s in wte["shape"]]}})),
         "transformer.wte.weight (shape [")
    )
    for name, damage, needle in cases:
        bad = tmp_path / name
        shutil.copytree(src, bad)
        damage(bad)
        assert_clean_failure(tool("triad-convert", "import", bad, tmp_path / f"{name}.h5"),
                             needle)
        assert not (tmp_path / f"{name}.h5").exists()
