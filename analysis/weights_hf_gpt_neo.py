"""GPT-Neo's Hugging Face config (GPTNeoForCausalLM: EleutherAI's GPT-Neo 125M to 2.7B, the
TinyStories models) read as triad's model and written back. Its blocks are GPT-2's (learned
positions, LayerNorms before the branches, a GELU MLP: gelu_new, GELU's tanh approximation, as
model.mlp = gelu, or exact, "gelu", as gelu_exact; a tied head) but for three things:
the attention scores are not scaled (q·k as it is: model.attn_scale = 1), the q, k and v
projections have no biases (triad holds c_attn's bias as zeros), and layers alternate between
attending to the whole context ("global") and to the last window_size tokens ("local"), which
triad computes as model.sliding_window with model.full_attention_every and, where each group of
layers starts with its global one (GPT-Neo's [global, local]), model.full_attention_first."""

from __future__ import annotations

from .weights_dims import ConvertError, Dims, full_attention_period
from .weights_hf_families import TANH_GELU, refuse_or_check_positions


def attention_pattern(layers: list[str], where: str) -> tuple[int, bool]:
    """GPT-Neo's attention_layers as (model.full_attention_every, model.full_attention_first):
    (0, False) where every layer is local; the shortest period that repeats the list with one
    global layer first or last in each group; refused where none does."""
    period = full_attention_period([x == "global" for x in layers])
    if period is not None:
        return period
    raise ConvertError(f"{where}: attention_layers {layers} is not a repeating group of local "
                       f"layers with one global layer first or last, which triad's "
                       f"model.full_attention_every (and model.full_attention_first) hold")


def layer_types(d: Dims) -> list[str]:
    """d's layers as GPT-Neo's attention_layers (the inverse of attention_pattern)."""
    return ["local" if d.windowed(i) else "global" for i in range(d.n_layer)]


def gpt_neo_config_dims(cfg: dict, where: str, seq_len: int | None) -> Dims:
    """A Hugging Face GPT-Neo config as triad's model (module docstring); refused where triad
    computes something else."""
    try:
        n_layer, n_head = int(cfg.get("num_layers", 24)), int(cfg.get("num_heads", 16))
        n_embd = int(cfg.get("hidden_size", 2048))
        n_pos = int(cfg.get("max_position_embeddings", 2048))
        vocab, window = int(cfg.get("vocab_size", 50257)), int(cfg.get("window_size", 256))
        hidden = cfg.get("intermediate_size")
        hidden = 4 * n_embd if hidden is None else int(hidden)
        eps = float(cfg.get("layer_norm_epsilon", 1e-5))
    except (TypeError, ValueError) as e:
        raise ConvertError(f"{where}: a GPT-Neo config needs integer num_layers, num_heads, "
                           f"hidden_size, max_position_embeddings, vocab_size, window_size and "
                           f"intermediate_size (or null), and a number layer_norm_epsilon ({e})")
    # transformers expands attention_types ([[["global", "local"], 12]]) into attention_layers,
    # and a stored attention_layers stands over it.
    layers = cfg.get("attention_layers")
    if layers is None:
        types = cfg.get("attention_types", [[["global", "local"], 12]])
        try:
            layers = [x for kinds, count in types for _ in range(int(count)) for x in kinds]
        except (TypeError, ValueError):
            raise ConvertError(f"{where}: attention_types {types} is not a list of [[kinds...], "
                               f"count] pairs")
    if not isinstance(layers, list) or any(x not in ("global", "local") for x in layers):
        raise ConvertError(f"{where}: attention_layers {layers} is not a list of 'global' and "
                           f"'local'")
    if len(layers) != n_layer:
        raise ConvertError(f"{where}: attention_layers names {len(layers)} layers, num_layers "
                           f"is {n_layer}")
    refusals = []
    act = cfg.get("activation_function", "gelu_new")
    if act not in TANH_GELU + ("gelu",):
        refusals.append(f"activation_function {act!r} (triad's GPT-Neo MLP is exact GELU, 'gelu', "
                        f"or its tanh approximation: {', '.join(TANH_GELU)})")
    if not (0 < eps <= 0.1):
        refusals.append(f"layer_norm_epsilon {eps} (triad's model.norm_eps is in (0, 0.1])")
    if "local" in layers and window < 1:
        refusals.append(f"window_size {window} (local layers need one of at least 1 key)")
    if "tie_word_embeddings" in cfg and not cfg["tie_word_embeddings"]:
        refusals.append("tie_word_embeddings = false (GPT-Neo's head is the token embedding)")
    refuse_or_check_positions(where, refusals, seq_len, n_pos, "max_position_embeddings")
    every, first = attention_pattern(layers, where) if "local" in layers else (0, False)
    d = Dims(n_layer, n_head, n_embd, seq_len or n_pos, vocab, norm_eps=eps, mlp_hidden=hidden,
             mlp="gelu_exact" if act == "gelu" else "gelu",
             attn_scale=1.0, sliding_window=window if "local" in layers else 0,
             full_attention_every=every, full_attention_first=first, gpt_neo=True)
    d.check(where)
    return d


def gpt_neo_hf_config(d: Dims) -> dict:
    """config.json for transformers' GPTNeoForCausalLM computing what triad's model computes:
    GPT-2's blocks with unscaled scores (model.attn_scale = 1), c_attn's bias none (q's zero,
    checked by the export, which folds k's and v's: GptNeoBiasFolding), and the window's layers
    as attention_types."""
    layers = layer_types(d)
    eot = 50256 if d.vocab_size > 50256 else None  # GPT-2's <|endoftext|>
    return {
        "architectures": ["GPTNeoForCausalLM"], "model_type": "gpt_neo",
        "vocab_size": d.vocab_size, "max_position_embeddings": d.seq_len,
        "hidden_size": d.n_embd, "num_layers": d.n_layer, "num_heads": d.n_head,
        "intermediate_size": d.mlp_hidden or 4 * d.n_embd,
        "attention_types": [[[x], 1] for x in layers], "attention_layers": layers,
        "window_size": d.sliding_window or 256,  # (no local layer reads it)
        "activation_function": "gelu" if d.mlp == "gelu_exact" else "gelu_new",
        "layer_norm_epsilon": d.norm_eps,
        "resid_dropout": 0.0, "embed_dropout": 0.0, "attention_dropout": 0.0,
        "initializer_range": 0.02, "tie_word_embeddings": True,
        "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float32",
    }
