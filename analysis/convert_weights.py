"""Weights and tokenizers in and out of triad: Hugging Face transformers models (config.json +
safetensors, of the families listed below: weights_hf_import.FAMILIES) and llm.c
model files (gpt2_124M.bin and the like) to a triad checkpoint, a triad checkpoint to either,
and Hugging Face or Meta tokenizers to a triad tokenizer description (hf_tokenizer.py).

    triad-convert import gpt2/ gpt2.h5                    # HF model directory
    triad-convert import gpt2_124M.bin gpt2.h5            # llm.c model file (fp32 or bf16)
    triad-convert import gpt2/ gpt2-t256.h5 --seq-len 256 # keep the first 256 positions
    triad-convert export runs/quick hf-out/ --to hf       # run dir, ckpt dir or checkpoint file
    triad-convert export runs/quick model.bin --to llmc --dtype bf16
    triad-convert tokenizer llama3-hf/ tok/                # tokenizer.json -> tokenizer.triad
    triad-convert tokenizer --meta-llama3 tokenizer.model tok/
    triad-convert tokenizer --kimi kimi-k2/ tok/           # tiktoken.model + tokenizer_config.json

An imported checkpoint holds the weights only (step 0, no optimizer state): start a run from
it with `triad-train --init-from FILE` (fine-tuning) or sample from it with `triad-generate
--checkpoint FILE`. Its config must match the model's n_layer, n_head, n_embd, vocab_size
and seq_len (`--seq-len` crops the position table for a shorter context).

What the formats hold and how they map (docs/formats.md, "Weights from other programs"):
- triad (DESIGN.md §3): linear weights [out, in]; c_attn rows q | k | v, heads in order;
  wte padded to a multiple of 128 rows (zeros); tied output head.
- HF GPT-2: the same tensors with `Conv1D` weights stored [in, out] (transposed here), names
  `[transformer.]h.{i}.attn.c_attn.weight` etc., the causal-mask buffers `attn.bias` /
  `attn.masked_bias` (ignored), `lm_head.weight` (absent or equal to wte: tied). The config
  must describe what triad computes: tanh GELU (`gelu_new`), LayerNorm eps 1e-5, MLP width
  4·C, attention scaled by 1/sqrt(head_dim), tied embeddings; anything else is refused.
- HF Llama: q_proj, k_proj, v_proj stacked into c_attn (rows), gate_proj and up_proj into c_fc.
  With grouped-query attention HF's query head kv·g + j (g = heads / key-value heads) uses
  key/value head kv, and so does triad's head j·n_kv_head + kv: the query heads (q_proj's
  rows, o_proj's columns) are reordered, both ways (llama_query_order).
- HF Mixtral: Llama's blocks with block_sparse_moe MLPs: expert e's w1 and w3 stacked into
  experts/c_fc[e], w2 as experts/c_proj[e], gate as router (model.moe_experts, moe_top_k).
  HF Qwen2-MoE: Qwen2's blocks with mlp.experts.{e} (gate_proj, up_proj, down_proj) likewise,
  mlp.gate as router, mlp.shared_expert as shared/c_fc and shared/c_proj, mlp.shared_expert_gate
  as shared/gate (model.moe_shared_hidden, moe_shared_gate). HF Qwen3-MoE: Qwen3's blocks with
  Qwen2-MoE's experts and router, no shared expert.
- HF Nemotron: Llama's tensors with LayerNorms (weight and bias; HF stores each weight as w - 1,
  its LayerNorm1P scaling by 1 + w, triad's as w itself), up_proj and down_proj around the
  squared ReLU (model.mlp = relu2), the first partial_rotary_factor of each head rotating
  (model.rotary_dim), no linear biases (model.bias = false, model.norm_bias = true).
- HF StableLM: the same LayerNorms (weights as they are) and partial rotary with Llama's SwiGLU
  and, with use_qkv_bias, q, k and v biases (model.qkv_bias).
- HF Gemma: Llama's tensors with GeGLU (model.mlp = geglu: gelu(gate_proj)·up_proj), RMSNorm
  weights stored as w - 1 (it scales by 1 + w), the embedding's output times sqrt(hidden_size)
  (model.embed_scale), heads head_dim wide (model.head_dim).
- HF Gemma 2: Gemma's with a norm on each branch's output (model.branch_norm: the sandwich's
  post_attention_layernorm and post_feedforward_layernorm; pre_feedforward_layernorm is ln_2),
  scores scaled by query_pre_attn_scalar^-0.5 (model.attn_scale) and soft-capped
  (attn_logit_softcapping: model.attn_softcap), soft-capped logits (final_logit_softcapping:
  model.logit_softcap), and a sliding window in every other layer, the first included
  (model.sliding_window, model.full_attention_every = 2).
- HF Granite (IBM's Granite 3): Llama's tensors and blocks with multipliers: embedding_multiplier
  (model.embed_scale), attention_multiplier (the scores' scale, model.attn_scale),
  residual_multiplier (each branch's output before its residual add, model.residual_scale) and
  logits_scaling (the logits divided by it: model.logit_scale = 1 / it). GraniteMoE's: Granite's
  with Mixtral's routing, each layer's experts fused: input_linear [E, 2H, C] (gate | up),
  output_linear [E, C, H], router.layer.
- HF Cohere (Command-R, Aya): parallel attention and MLP on one LayerNorm's output without biases
  (model.parallel_residual, model.shared_norm), SwiGLU, no linear biases, the logits times
  logit_scale (model.logit_scale), and rope on interleaved pairs (2i, 2i + 1) of each head, which
  q's and k's rows are reordered into triad's pairs (i, i + hd/2) for (the scores are the same).
- HF Phi (Phi-1, Phi-1.5, Phi-2): parallel attention and MLP on one LayerNorm with biases
  (model.parallel_residual, model.shared_norm), biases everywhere, GELU (gelu_new: tanh; or
  exact), rope on partial_rotary_factor of each head (model.rotary_dim), an untied head with a
  bias on the logits (model.head_bias).
- HF GPT-NeoX (Pythia): GPT-2's tensors under other names, q, k and v interleaved by head in
  query_key_value ([heads, 3, head width] rows, reordered into c_attn's q | k | v), rope on
  rotary_pct of each head (model.rotary_dim), parallel attention and MLP
  (use_parallel_residual: model.parallel_residual), GELU exact ("gelu": model.mlp = gelu_exact)
  or tanh, an untied embed_out.
- HF GPT-Neo (TinyStories): GPT-2's blocks with unscaled scores (model.attn_scale = 1), q, k
  and v without biases (c_attn's bias zeros; freeze it to export a fine-tuned model), and its
  global and local layers as model.sliding_window with model.full_attention_every and
  model.full_attention_first (global first in each group).
- HF StarCoder2: GPT-2's sequential blocks with rope (Llama's q, k, v and o projections, with
  biases), LayerNorms with biases, a GELU-tanh MLP c_fc, c_proj with biases, grouped-query
  attention and Mistral's window (model.sliding_window).
- HF GPT-J: parallel attention and MLP on one LayerNorm with biases (model.parallel_residual,
  model.shared_norm), bias-free q, k, v and output projections beside an MLP with biases
  (model.bias = false, model.mlp_bias, model.norm_bias), GELU's tanh approximation, rope on the
  first rotary_dim values of each head (model.rotary_dim) in interleaved pairs (2i, 2i + 1),
  reordered as Cohere's, an untied head with a bias (model.head_bias).
- HF Falcon (with rope): parallel attention and MLP, LayerNorms with biases beside bias-free
  linear layers (model.norm_bias), GELU exact; Falcon-40B's layout (new_decoder_architecture:
  ln_attn and ln_mlp, query_key_value grouped by key/value head, [groups, q per group + 2, head
  width]) or Falcon-7B's (multi-query attention, q | k | v); one input_layernorm for both
  branches (Falcon-7B's, or num_ln_in_parallel_attn = 1: model.shared_norm) or ln_attn and ln_mlp.
  Written in Falcon-40B's layout.
- HF OLMo: Llama's tensors and math with LayerNorms that learn no weight or bias
  (model.norm = layernorm, model.norm_weight = false: triad's norms ones, frozen), OLMo-1.7's
  clamp of q, k and v as model.clip_qkv.
- HF OLMo-2: Llama's tensor names without input_layernorm, its post_attention_layernorm and
  post_feedforward_layernorm on the branches' outputs (model.pre_norm = false,
  model.branch_norm), q_norm and k_norm over the whole projections (model.qk_norm_full; q_norm's
  values reordered by head as q's rows). HF OLMoE: those QK-norms in Llama's blocks with
  Qwen2-MoE's expert and router names.
- llm.c: a header of 256 int32 (magic 20240326, version 3 = fp32 or 5 = bf16, max_seq_len,
  vocab_size, n_layer, n_head, n_embd, padded_vocab_size), then wte, wpe and each per-layer
  tensor for all layers in turn ([out, in] like triad), then ln_f.

Everything is checked: a missing, extra or misshapen tensor, a truncated file, a foreign
format or an output that already exists ends the command with one line naming the file and
the problem (exit status 1). Outputs are written under a temporary name and renamed when
complete, so a failed conversion leaves nothing behind and never replaces a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import textwrap
from pathlib import Path
from typing import Callable, Dict, Iterator, Tuple

import numpy as np

from .cli import prog_name, run_main, token_arg
from .hdf5_files import file_kind, special_file_problem
from . import hf_tokenizer
from .hf_tokenizer import tokenizer_files
from .weights_dims import ConvertError, Dims, Tensors
from .weights_hf_export import llama_hf_config, write_hf, write_llama_hf
from .weights_hf_import import families_text, open_hf
from .weights_llmc import LLMC_MAGIC, open_llmc, write_llmc
from .weights_triad import open_triad, write_triad


def open_source(src: Path, seq_len: int | None) -> Tuple[Dims, Tensors, str]:
    if not src.exists():
        raise ConvertError(f"{src}: no such file or directory")
    if problem := special_file_problem(src):
        raise ConvertError(problem)
    if src.is_dir() or src.suffix == ".safetensors":
        return open_hf(src, seq_len)
    with open(src, "rb") as f:
        head = f.read(8)
    if file_kind(src) == "hdf5":
        raise ConvertError(f"{src}: is already HDF5 (a triad checkpoint?); import reads HF "
                           f"model directories, .safetensors files and llm.c model files")
    if len(head) >= 4 and int.from_bytes(head[:4], "little") == LLMC_MAGIC:
        return open_llmc(src, seq_len)
    raise ConvertError(f"{src}: neither an HF model directory, a .safetensors file nor an llm.c "
                       f"model file (magic {LLMC_MAGIC})")


def finite_only(tensors: Tensors, src: str) -> Tensors:
    """The tensors, each checked on the way: a NaN or an infinity (a diverged run's weights, a
    damaged file) is refused by the tensor's name, and nothing is written."""
    def checked() -> Iterator[Tuple[str, np.ndarray]]:
        for name, a in tensors():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                bad = int(a.size - np.count_nonzero(np.isfinite(a)))
                raise ConvertError(f"{src}: tensor {name} holds {bad} NaN or infinite value(s)")
            yield name, a
    return checked


def check_output(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise ConvertError(f"{out}: already exists (remove it first; a conversion never "
                           f"replaces a file)")
    if not out.parent.is_dir():
        raise ConvertError(f"{out.parent}: " + ("not a directory" if out.parent.exists()
                                                  else "no such directory"))


def finish(out: Path, write: Callable[[Path], None], directory: bool = False) -> None:
    """Writes into a fresh temporary name beside `out` and publishes it only where nothing is:
    a file by a hard link (which fails on an existing name) or, where the file system has no
    hard links, a rename after a last check; a directory by creating `out` (which fails on an
    existing name) and moving the finished files into it. Never replaces anything; a failure
    leaves nothing behind."""
    check_output(out)
    prefix = f".{out.name}."
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=prefix, suffix=".partial"))
        else:
            fd, name = tempfile.mkstemp(dir=out.parent, prefix=prefix, suffix=".partial")
            os.close(fd)
            tmp = Path(name)
    except OSError as e:  # (the temporary's name would only confuse)
        raise ConvertError(f"{out}: cannot write in {out.parent} ({e.strerror})")
    try:
        write(tmp)
        if directory:
            try:
                out.mkdir()
            except FileExistsError:
                check_output(out)
                raise
            for f in sorted(tmp.iterdir()):
                os.rename(f, out / f.name)
            tmp.rmdir()
        else:
            try:
                os.link(tmp, out)
            except FileExistsError:
                check_output(out)
                raise
            except OSError:  # no hard links here
                check_output(out)
                os.rename(tmp, out)
            if tmp.exists():
                tmp.unlink()
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def is_description(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.readline().strip() == hf_tokenizer.DESCRIPTION_MAGIC.encode()


def description_files(path: Path, d: Dims) -> Dict[str, str]:
    """An HF export's tokenizer.json, tokenizer_config.json and generation_config.json from a
    tokenizer description."""
    try:
        desc = hf_tokenizer.read_description(path)
    except hf_tokenizer.TokenizerError as e:
        raise ConvertError(f"--vocab: {e}") from None
    if desc.vocab_size != d.vocab_size:
        raise ConvertError(f"--vocab {path}: the tokenizer has {desc.vocab_size} tokens, the "
                           f"model {d.vocab_size}")
    return hf_tokenizer.hf_files(desc, d.seq_len)


def tokenizer_vocab(arg: str | None, d: Dims) -> Tuple[Path | None, str]:
    """The ranks file for an HF export's tokenizer files (or None) and a note for the output."""
    if arg == "none":
        return None, "; no tokenizer files (--vocab none)"
    if arg is not None:
        if not Path(arg).is_file():
            raise ConvertError(f"--vocab {arg}: no such file")
        if is_description(Path(arg)):
            return Path(arg), "; tokenizer.json from " + arg
        if d.vocab_size != 50257:
            raise ConvertError(f"--vocab {arg}: the model has {d.vocab_size} tokens, not GPT-2's "
                               f"50257; give --vocab none")
        return Path(arg), "; GPT-2's tokenizer files from " + arg
    for p in (Path("data/vocab/gpt2.tiktoken"),
              Path(__file__).resolve().parent.parent / "data" / "vocab" / "gpt2.tiktoken"):
        if p.is_file() and d.vocab_size == 50257:
            return p, f"; GPT-2's tokenizer files from {p}"
    why = "its vocabulary is not GPT-2's" if d.vocab_size != 50257 else \
        "data/vocab/gpt2.tiktoken not found: give --vocab"
    return None, f"; no tokenizer files ({why})"


def convert_tokenizer(prog: str, args) -> int:
    src, out = Path(args.src), Path(args.out)
    check_output(out)
    try:
        if sum(map(bool, (args.meta_llama3, args.sentencepiece, args.tekken, args.kimi))) > 1:
            raise ConvertError("--meta-llama3, --sentencepiece, --tekken and --kimi: give one")
        if args.tekken and (args.document_start or args.prompt_start or args.stop):
            raise ConvertError("--tekken sets <s> as document and prompt start and </s> as "
                               "stop; --document-start, --prompt-start and --stop apply to a "
                               "tokenizer.json or a SentencePiece model")
        if args.tekken:
            desc = hf_tokenizer.from_tekken(src)
            source = f"Mistral's Tekken tokenizer {src}"
        elif args.sentencepiece:
            desc = hf_tokenizer.from_sentencepiece(src, args.document_start, args.prompt_start,
                                                   args.stop)
            source = f"SentencePiece model {src}"
        elif args.kimi:
            desc = hf_tokenizer.from_kimi(src, args.document_start, args.prompt_start, args.stop)
            source = f"Kimi K2's tokenizer {src}"
        elif args.meta_llama3:
            if args.document_start or args.prompt_start or args.stop:
                raise ConvertError("--meta-llama3 sets Llama 3's document start, prompt start "
                                   "and stop tokens; --document-start, --prompt-start and "
                                   "--stop apply to a tokenizer.json")
            desc = hf_tokenizer.from_meta_llama3(src)
            source = f"Meta's Llama 3 tokenizer {src}"
        else:
            desc = hf_tokenizer.from_hf(src, args.document_start, args.prompt_start, args.stop)
            source = f"Hugging Face tokenizer {src}"
    except hf_tokenizer.TokenizerError as e:
        reading_as = "tekken" if args.tekken else "sentencepiece" if args.sentencepiece else \
            "tiktoken" if args.meta_llama3 or args.kimi else "hf"
        raise ConvertError(str(e) + hf_tokenizer.sniff_hint(src, reading_as)) from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        # A JSON file of the right syntax whose values have other types than the format's (a
        # list for an object, a number for a merge, bad base64): name the file, not Python.
        raise ConvertError(f"{src}: not a tokenizer this reads: a value of the wrong type or "
                           f"form ({type(e).__name__}: {e})") from None
    if args.chat is not None:
        desc.chat = None if args.chat == "none" else args.chat
    files = desc.files(f"converted from {source}")

    def write(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")

    finish(out, write, directory=True)
    print(f"{prog}: wrote {out}/tokenizer.triad ({desc.summary()}) from {source}")
    return 0


def main(argv: list[str] | None = None) -> int:
    prog = prog_name("python -m analysis.convert_weights")
    families = textwrap.fill("Hugging Face families imported (model_type): " + families_text()
                             + ".", width=100)
    ap = argparse.ArgumentParser(prog=prog,
                                 description=__doc__.split("\n\n")[0] + "\n\n" + families,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="an HF model or llm.c model file -> a triad checkpoint")
    imp.add_argument("src", help="HF model directory, .safetensors file or llm.c .bin file")
    imp.add_argument("out", help="the triad checkpoint to write (.h5; must not exist)")
    imp.add_argument("--seq-len", type=int, help="keep the first N positions (default: all)")
    exp = sub.add_parser("export", help="a triad checkpoint -> an HF model or llm.c model file")
    exp.add_argument("ckpt", help="a checkpoint file, checkpoint directory or run directory")
    exp.add_argument("out", help="the HF model directory or llm.c file to write (must not exist)")
    exp.add_argument("--to", choices=("hf", "llmc"), required=True)
    exp.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                     help="llm.c file precision (default fp32; bf16 rounds to nearest even)")
    exp.add_argument("--vocab", help="--to hf: GPT-2's BPE ranks, for GPT-2's tokenizer files, "
                     "or a tokenizer description (tokenizer.triad), for a tokenizer.json "
                     "(default data/vocab/gpt2.tiktoken when found and the vocabulary is "
                     "GPT-2's; none: no tokenizer files)")
    tok = sub.add_parser("tokenizer", help="an HF tokenizer.json, Meta's Llama 3 "
                         "tokenizer.model or a SentencePiece model -> a triad tokenizer "
                         "description")
    tok.add_argument("src", help="HF model directory or its tokenizer.json (with --meta-llama3 "
                     "or --sentencepiece: the tokenizer.model)")
    tok.add_argument("out", help="directory to create (must not exist) for tokenizer.triad "
                     "(give it to --vocab / data.vocab) and the ranks file (or pieces and merges files) "
                     "it names")
    tok.add_argument("--meta-llama3", action="store_true",
                     help="src is Meta's Llama 3 tokenizer.model (tiktoken's format)")
    tok.add_argument("--tekken", action="store_true",
                     help="src is Mistral's tekken.json (Mistral NeMo, Small 3, Ministral)")
    tok.add_argument("--kimi", action="store_true",
                     help="src is Kimi K2's model directory or its tiktoken.model, with "
                     "tokenizer_config.json beside it")
    tok.add_argument("--chat", choices=(*hf_tokenizer.CHAT_FORMATS, "none"),
                     help="the chat format of the model's instruct version, for triad-generate "
                     "--chat auto (default: told from the tokenizer where it can be: llama3, "
                     "Mistral's v3 and v7 formats, qwen2, chatml, kimi, deepseek3; none: no chat "
                     "line)")
    tok.add_argument("--sentencepiece", action="store_true",
                     help="src is a SentencePiece BPE model (Llama 2's or Mistral's "
                     "tokenizer.model)")
    tok.add_argument("--document-start", type=token_arg, help="special token before each "
                     "document (default: the BOS the tokenizer adds, else its eos_token)")
    tok.add_argument("--prompt-start", type=token_arg, help="special token before each prompt "
                     "(default: the BOS the tokenizer adds; none: no token)")
    tok.add_argument("--stop", action="append", type=token_arg, help="special token that ends "
                     "generation (repeat for several; default: generation_config.json's "
                     "eos_token_id, else config.json's, else tokenizer_config.json's eos_token)")
    args = ap.parse_args(argv)

    def body() -> int:
        if args.command == "tokenizer":
            return convert_tokenizer(prog, args)
        if args.command == "import":
            if args.seq_len is not None and args.seq_len <= 0:
                raise ConvertError(f"--seq-len {args.seq_len}: must be positive")
            check_output(Path(args.out))
            d, tensors, source = open_source(Path(args.src), args.seq_len)
            tensors = finite_only(tensors, args.src)
            finish(Path(args.out), lambda p: write_triad(p, d, tensors, source))
        else:
            if args.to == "hf" and args.dtype != "fp32":
                raise ConvertError("--dtype applies to --to llmc; HF exports are fp32")
            if args.to != "hf" and args.vocab is not None:
                raise ConvertError("--vocab applies to --to hf")
            check_output(Path(args.out))
            d, tensors, source = open_triad(Path(args.ckpt))
            tensors = finite_only(tensors, args.ckpt)
            if args.to == "llmc" and not d.gpt2:
                raise ConvertError(f"{args.ckpt}: llm.c's model file holds GPT-2 only; a model "
                                   f"of Llama's architecture exports with --to hf")
            if args.to == "llmc" and d.norm_eps != 1e-5:
                raise ConvertError(f"{args.ckpt}: the model's LayerNorm epsilon is "
                                   f"{d.norm_eps} (model.norm_eps); llm.c computes with 1e-5 "
                                   f"(export with --to hf)")
            if args.to == "hf":
                if not (d.gpt2 or d.bigcode):  # a model no HF class computes: refused up front
                    try:
                        llama_hf_config(d)
                    except ConvertError as e:
                        raise ConvertError(f"{args.ckpt}: {e}")
                vocab, note = tokenizer_vocab(args.vocab, d)
                try:  # before the weights: a bad ranks file costs no export
                    if vocab and is_description(vocab):
                        files = description_files(vocab, d)
                    else:
                        files = tokenizer_files(vocab, d.seq_len) if vocab else {}
                except (OSError, ValueError) as e:
                    raise ConvertError(f"{e}" if str(vocab) in str(e) else f"{vocab}: {e}")
                write = write_hf if d.gpt2 or d.bigcode else write_llama_hf
                finish(Path(args.out), lambda p: write(p, d, tensors, files), directory=True)
                source += note
            else:
                finish(Path(args.out), lambda p: write_llmc(p, d, tensors, args.dtype))
        kv = f" ({d.kv} key/value)" if d.kv != d.n_head else ""
        print(f"{prog}: wrote {args.out} ({d.n_layer} layers, {d.n_head} heads{kv}, n_embd "
              f"{d.n_embd}, seq_len {d.seq_len}, vocab {d.vocab_size}) from {source}")
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    raise SystemExit(main())
