"""triad-train end to end on a tiny model: bad inputs, resume, fine-tuning, evaluation."""
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib

import h5py
import numpy as np
import pytest

from triad_run import (ENV, REPO, VOCAB, assert_clean_error, catching_pids, exe, run,
                       tiny_config, train, write_loss_mask, write_shard)
from test_mpi_runs import run as mpirun


def losses(run_dir):
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        return f["train/step"][:], f["train/loss"][:]


def weights(path):
    with h5py.File(path, "r") as f:
        out = {}
        f["model"].visititems(lambda n, d: out.__setitem__(n, d[:]) if isinstance(d, h5py.Dataset) else None)
        return out


def test_a_program_started_without_a_launcher_keeps_its_own_mpi_session_directory(tmp_path):
    """Open MPI runs every singleton (a program started without mpirun or srun) as the same job,
    whose session directory under $TMPDIR the first to end removes under the others: side by
    side, MPI_Init failed at random. Each triad program started alone takes a directory of its
    own. Here the shared one cannot be made (a file holds its name), so MPI_Init gets through,
    and the config error comes after it, only with the private directory, which is gone after."""
    singleton_gets_past_a_blocked_session_dir(tmp_path, tmp_path, TMPDIR=str(tmp_path))


def singleton_gets_past_a_blocked_session_dir(tmp_path, base, **env_vars):
    """triad-train alone (no launcher; env_vars set, OMPI_MCA_orte_tmpdir_base not) with a file
    where Open MPI's shared session directory under `base` would go: MPI_Init gets through (the
    config error comes, no ORTE error), and `base` holds nothing but that file after."""
    # Open MPI's name for it: ompi.<host name up to its first dot>.<uid>.
    blocker = base / f"ompi.{socket.gethostname().split('.')[0]}.{os.getuid()}"
    blocker.write_text("not a directory")
    env = dict(ENV, **env_vars)
    env.pop("OMPI_MCA_orte_tmpdir_base", None)
    p = subprocess.run([exe("triad-train"), "--config", str(tmp_path / "absent.ini")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "absent.ini: cannot open" in p.stderr and "ORTE" not in p.stderr, p.stderr
    assert list(base.iterdir()) == [blocker]


def test_the_private_mpi_session_directory_goes_under_the_configured_base(tmp_path):
    """orte_tmpdir_base in ~/.openmpi/mca-params.conf (a site's node-local scratch) is where the
    private directory goes. $TMPDIR is a file here, so no directory can be made there, and the
    base holds a file in the place of Open MPI's shared directory: only a private directory
    under the base gets MPI_Init through, and it is gone after."""
    home, scratch = tmp_path / "home", tmp_path / "scratch"
    (home / ".openmpi").mkdir(parents=True)
    (home / ".openmpi" / "mca-params.conf").write_text(
        f"# site settings\norte_tmpdir_base = {scratch}\nbtl = self,vader\n")
    scratch.mkdir()
    (tmp_path / "tmpfile").write_text("not a directory")
    singleton_gets_past_a_blocked_session_dir(tmp_path, scratch, HOME=str(home),
                                              TMPDIR=str(tmp_path / "tmpfile"))


def test_a_configured_base_that_is_no_directory_is_named(tmp_path):
    """orte_tmpdir_base naming a file: triad says it cannot make its directory there and where
    the base came from, then Open MPI fails to make its own, naming it: exit status 1, no hang."""
    home, base = tmp_path / "home", tmp_path / "afile"
    (home / ".openmpi").mkdir(parents=True)
    conf = home / ".openmpi" / "mca-params.conf"
    conf.write_text(f"orte_tmpdir_base = {base}\n")
    base.write_text("not a directory")
    env = dict(ENV, HOME=str(home), TMPDIR=str(tmp_path))
    env.pop("OMPI_MCA_orte_tmpdir_base", None)
    p = subprocess.run([exe("triad-train"), "--config", str(tmp_path / "absent.ini")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 1, p.stderr
    assert (f"cannot make a private MPI session directory under {base} (orte_tmpdir_base of "
            f"{conf}): Not a directory") in p.stderr, p.stderr
    assert p.stderr.count(str(base)) >= 2, p.stderr  # Open MPI's error names it too


def test_help_lists_every_key_with_defaults():
    p = train("--help", check=True)
    for key in ["model.n_layer", "train.lr", "train.micro_batch_size", "optim.beta2", "data.train",
                "eval.sequences", "checkpoint.at_start", "run.dir", "parallel.virtual_stages",
                "--resume", "--init-from", "--eval-only", "--plan", "--plan-ranks"]:
        assert key in p.stdout, key
    assert "--train.lr arg (=6e-04)" in p.stdout


@pytest.mark.parametrize("args,needles", [
    (["--train.bogus", "1"], ["train.bogus"]),
    (["--model.n_head", "3"], ["model.n_head", "divide"]),
    (["--train.batch_size", "6"], ["train.batch_size", "divisible"]),
    (["--train.lr", "-0.1"], ["train.lr"]),
    (["--train.steps", "ten"], ["train.steps"]),
    (["--model.n_layer", "-2"], ["model.n_layer"]),
    (["--optim.name", "lamb"], ["optim.name"]),
    (["--run.backend", "tpu"], ["run.backend"]),
    (["--train.recompute", "selective"], ["train.recompute", "none, gelu or full"]),
    (["--train.logits_chunk", "-5"], ["train.logits_chunk", ">= 0"]),
    (["--data.eod_mask_loss", "eot"], ["data.eod_mask_loss", "token id"]),
    (["--eval.bits_per_byte", "true", "--data.vocab", ""], ["eval.bits_per_byte", "data.vocab"]),
    (["--run.max_minutes", "nan"], ["run.max_minutes", ">= 0"]),
    (["--data.eod_mask_loss", "99999"], ["data.eod_mask_loss", "model.vocab_size"]),
    (["--train.hidden_dropout", "1"], ["train.hidden_dropout", "[0, 1)"]),
    (["--train.hidden_dropout", "-0.1"], ["train.hidden_dropout", "[0, 1)"]),
    (["--train.hidden_dropout", "nan"], ["train.hidden_dropout", "[0, 1)"]),
    (["--train.hidden_dropout", "0.99999999"], ["train.hidden_dropout", "[0, 1)"]),  # 1 in fp32
    (["--train.attention_dropout", "1"], ["train.attention_dropout", "[0, 1)"]),
    (["--train.attention_dropout", "-0.1"], ["train.attention_dropout", "[0, 1)"]),
    (["--train.attention_dropout", "inf"], ["train.attention_dropout", "[0, 1)"]),
    (["--train.attention_dropout", "0.99999999"], ["train.attention_dropout", "[0, 1)"]),
    (["--parallel.stage_layers", "1,1"], ["parallel.stage_layers", "parallel.pp is 1"]),
    (["--parallel.stage_layers", "two"], ["parallel.stage_layers", "layer counts"]),
    (["--train.recompute_layers", "1"], ["train.recompute_layers", "needs train.recompute"]),
    (["--train.recompute", "full", "--train.recompute_layers", "-1"], ["train.recompute_layers"]),
    (["--train.recompute", "gelu", "--train.recompute_layers", "99"],
     ["train.recompute_layers", "must not exceed"]),
    (["--resume", "/nonexistent/ckpt.h5"], ["/nonexistent/ckpt.h5"]),
    (["--model.position", "alibi"], ["model.position", "learned or rope"]),
    (["--model.position", "rope", "--model.n_head", "32"], ["model.position", "even head"]),
    (["--model.position", "rope", "--model.rope_theta", "0.5"], ["model.rope_theta", "> 1"]),
    (["--model.position", "rope", "--model.rope_theta", "nan"], ["model.rope_theta"]),
    (["--model.norm", "batchnorm"], ["model.norm", "layernorm or rmsnorm"]),
    (["--model.bias", "maybe"], ["model.bias"]),
    (["--model.mlp", "relu3"], ["model.mlp", "gelu, gelu_exact, swiglu, geglu, relu2 or relu"]),
    (["--model.embed_scale", "0"], ["model.embed_scale", "(0, 1e4]"]),
    (["--model.embed_scale", "inf"], ["model.embed_scale", "(0, 1e4]"]),
    (["--model.mlp_hidden", "-8"], ["model.mlp_hidden", ">= 0"]),
    (["--model.n_kv_head", "-1"], ["model.n_kv_head", ">= 0"]),
    (["--model.qk_norm", "sometimes"], ["model.qk_norm"]),
    (["--model.rope_scaling", "llama3"], ["model.rope_scaling", "needs model.position = rope"]),
    (["--model.position", "rope", "--model.rope_scaling", "ntk"],
     ["model.rope_scaling", "none, llama3, yarn, longrope or linear"]),
    (["--model.position", "rope", "--model.rope_scaling", "llama3",
      "--model.rope_high_freq_factor", "0.5"], ["model.rope_high_freq_factor"]),
    (["--model.position", "rope", "--model.rope_scaling", "yarn",
      "--model.rope_yarn_beta_fast", "0.5"],
     ["model.rope_yarn_beta_fast", ">= model.rope_yarn_beta_slow"]),
    (["--model.position", "rope", "--model.rope_scaling", "yarn", "--model.rope_yarn_mscale",
      "-1"], ["model.rope_yarn_mscale", "[0, 100]"]),
    (["--model.rope_yarn_mscale", "2"], ["model.rope_yarn_mscale", "needs model.position = rope"]),
    (["--model.position", "rope", "--model.rope_scaling", "llama3",
      "--model.rope_yarn_mscale_all_dim", "1"],
     ["model.rope_yarn_mscale_all_dim", "model.rope_scaling = yarn"]),
    # LongRoPE: one divisor per rotated pair (the test model's head width 16: 8 pairs).
    (["--model.position", "rope", "--model.rope_scaling", "longrope", "--model.rope_short_factor",
      ",".join(["1"] * 7), "--model.rope_long_factor", ",".join(["2"] * 8)],
     ["model.rope_short_factor", "holds 7 numbers", "one per rotated pair: 8"]),
    (["--model.position", "rope", "--model.rope_scaling", "longrope", "--model.rope_short_factor",
      ",".join(["1"] * 8), "--model.rope_long_factor", "2, x"],
     ["model.rope_long_factor", "finite numbers > 0", "'x'"]),
    (["--model.position", "rope", "--model.rope_scaling", "longrope", "--model.rope_short_factor",
      ",".join(["1"] * 8), "--model.rope_long_factor", ",".join(["2"] * 8),
      "--model.rope_scaling_factor", "0.5"], ["model.rope_scaling_factor", ">= 1"]),
    (["--model.position", "rope", "--model.rope_scaling", "longrope", "--model.rope_short_factor",
      ",".join(["1"] * 8), "--model.rope_long_factor", ",".join(["2"] * 8),
      "--model.rope_scaling_factor", "2", "--model.rope_original_positions", "1"],
     ["model.rope_original_positions", ">= 2"]),
    (["--model.head_dim", "-2"], ["model.head_dim", "[0, 4096]"]),
    (["--model.clip_qkv", "-1"], ["model.clip_qkv", "[0, 1e4]"]),
    (["--model.clip_qkv", "8", "--model.qk_norm", "true"], ["model.clip_qkv", "model.qk_norm"]),
    (["--model.qk_norm_full", "true"], ["model.qk_norm_full", "needs model.qk_norm = true"]),
    # Multi-head latent attention (model.kv_lora_rank): its sizes, and what it is not built with.
    (["--model.kv_lora_rank", "-1"], ["model.kv_lora_rank", "must be >= 0"]),
    (["--model.v_head_dim", "8"], ["model.kv_lora_rank", "= 0: model.q_lora_rank"]),
    (["--model.mla_norm_eps", "1e-6"], ["model.kv_lora_rank", "mla_norm_eps are for"]),
    (["--model.kv_lora_rank", "8", "--model.position", "rope", "--model.qk_rope_head_dim", "4",
      "--model.v_head_dim", "8", "--model.mla_norm_eps", "0.5"],
     ["model.mla_norm_eps", "must be 0 (model.norm_eps) or in (0, 0.1]"]),
    (["--model.kv_lora_rank", "8", "--model.position", "rope", "--model.qk_rope_head_dim", "4"],
     ["model.kv_lora_rank", "v_head_dim > 0", "v_head_dim 0"]),
    (["--model.kv_lora_rank", "8", "--model.position", "rope", "--model.qk_rope_head_dim", "3",
      "--model.v_head_dim", "8"], ["model.kv_lora_rank", "every MLA size even"]),
    (["--model.kv_lora_rank", "8", "--model.qk_rope_head_dim", "4", "--model.v_head_dim", "8"],
     ["model.kv_lora_rank", "model.position = rope"]),
    (["--model.kv_lora_rank", "8", "--model.position", "rope", "--model.qk_rope_head_dim", "4",
      "--model.v_head_dim", "8", "--model.head_dim", "8"], ["model.head_dim", "model.rotary_dim"]),
    (["--model.kv_lora_rank", "8", "--model.position", "rope", "--model.qk_rope_head_dim", "4",
      "--model.v_head_dim", "8", "--model.n_kv_head", "1"], ["model.n_kv_head", "model.n_head"]),
    (["--model.kv_lora_rank", "8", "--model.position", "rope", "--model.qk_rope_head_dim", "4",
      "--model.v_head_dim", "8", "--model.qk_norm", "true"], ["model.kv_lora_rank", "no c_attn"]),
    (["--model.kv_lora_rank", "8", "--model.position", "rope", "--model.qk_rope_head_dim", "4",
      "--model.v_head_dim", "8", "--run.fp8", "tensorwise"],
     ["run.fp8", "q_b's outputs n_head·(qk_nope_head_dim + qk_rope_head_dim) (8)",
      "multiple of 16"]),
    (["--model.kv_lora_rank", "16", "--model.position", "rope", "--model.qk_rope_head_dim", "8",
      "--model.qk_nope_head_dim", "8", "--model.v_head_dim", "8", "--run.fp8", "tensorwise"],
     ["run.fp8", "kv_a's outputs kv_lora_rank + qk_rope_head_dim (24)", "multiple of 16"]),
    (["--model.pre_norm", "false"], ["model.pre_norm", "needs model.branch_norm = true"]),
    (["--model.init_std", "0"], ["model.init_std", "(0, 1]"]),
    (["--model.init_std", "nan"], ["model.init_std", "(0, 1]"]),
    (["--model.init_truncation", "0.5"], ["model.init_truncation", "[1, 10]"]),
    (["--model.pre_norm", "false", "--model.branch_norm", "true", "--model.parallel_residual",
      "true"], ["model.pre_norm", "sequential blocks only"]),
    (["--model.qkv_bias", "true"], ["model.qkv_bias", "model.bias = false"]),
    (["--model.mlp_bias", "true"], ["model.mlp_bias", "model.bias = false"]),
    (["--model.mlp_bias", "true", "--model.bias", "false", "--model.moe_experts", "4"],
     ["model.mlp_bias", "every layer has experts"]),
    (["--model.moe_bias", "true"], ["model.moe_bias", "needs model.moe_experts > 0"]),
    (["--model.rope_yarn_truncate", "false"],
     ["model.rope_yarn_truncate", "needs model.rope_scaling = yarn"]),
    (["--model.norm_bias", "true"], ["model.norm_bias", "model.bias = false"]),
    (["--model.norm_bias", "true", "--model.bias", "false", "--model.norm", "rmsnorm"],
     ["model.norm_bias", "model.norm = layernorm"]),
    (["--model.norm_eps", "0"], ["model.norm_eps", "(0, 0.1]"]),
    (["--model.logit_softcap", "-30"], ["model.logit_softcap", "[0, 1e4]"]),
    (["--model.logit_softcap", "nan"], ["model.logit_softcap", "[0, 1e4]"]),
    (["--model.attn_softcap", "-50"], ["model.attn_softcap", "[0, 1e4]"]),
    (["--model.logit_scale", "0"], ["model.logit_scale", "(0, 1e4]"]),
    (["--model.residual_scale", "inf"], ["model.residual_scale", "(0, 1e4]"]),
    (["--model.shared_norm", "true"], ["model.shared_norm", "model.parallel_residual = true"]),
    (["--model.head_bias", "true"], ["model.head_bias", "model.tie_embeddings = false"]),
    (["--model.attn_scale", "-0.1"], ["model.attn_scale", "[0, 100]"]),
    (["--model.mup_base_width", "-64"], ["model.mup_base_width", "[0, 2^20]"]),
    (["--model.mup_base_width", "16", "--optim.name", "sgd"],
     ["model.mup_base_width", "optim.name = adamw, lion or muon"]),
    (["--run.fp8", "e4m3"], ["run.fp8", "off or tensorwise"]),
    (["--run.fp8_skip", "h/0/*"], ["run.fp8_skip", "needs run.fp8"]),
    (["--run.fp8_head", "true"], ["run.fp8_head", "needs run.fp8"]),
    (["--train.activations_every", "-1"], ["train.activations_every", ">= 0"]),
    (["--run.fp8", "tensorwise", "--run.fp8_head", "true", "--train.logits_chunk", "24"],
     ["run.fp8_head", "train.logits_chunk (24)", "multiple of 16"]),
    (["--run.fp8", "tensorwise", "--run.fp8_skip", "h/0/*, h/5/*"],
     ["run.fp8_skip", "'h/5/*' matches no linear layer", "model.n_layer = 2"]),
    (["--run.fp8", "tensorwise", "--model.n_embd", "40"], ["run.fp8", "model.n_embd (40)",
                                                           "multiple of 16"]),
    (["--run.fp8", "tensorwise", "--model.seq_len", "12", "--train.micro_batch_size", "1"],
     ["run.fp8", "rows of a micro-batch", "= 12)", "multiple of 16"]),
    (["--model.vocab_size", "1"], ["model.vocab_size", "[2, 1073741824]"]),
    (["--model.vocab_size", "2000000000"], ["model.vocab_size", "[2, 1073741824]"]),
    (["--model.n_kv_head", "3"], ["model.n_kv_head", "must divide model.n_head"]),
    # Sizes whose tables or counts would not fit (an allocation of 2e9 layers was OOM-killed, a
    # count past int64 printed negative): refused before any is made.
    (["--model.n_layer", "2000000000", "--plan"], ["model.n_layer", "<= 65536"]),
    (["--model.n_embd", "2000000000", "--model.n_head", "1", "--plan"], ["model.n_embd"]),
    (["--model.n_embd", "1000000", "--model.n_head", "1", "--model.n_layer", "60000", "--plan"],
     ["model has 7.2e+17 parameters", "2^50"]),
    (["--model.seq_len", "2000000000", "--plan"], ["model.seq_len", "<= 16777216"]),
    (["--train.steps", "100000000"], ["train.steps", "[0, 99999999]"]),
    (["--optim.eps", "inf"], ["optim.eps", "finite number > 0"]),
    (["--sample.temperature", "inf"], ["sample.temperature", "finite number > 0"]),
    (["--run.peak_tflops", "inf"], ["run.peak_tflops", "finite number >= 0"]),
    # Empty paths (an unset shell variable) are not "not given".
    (["--resume", ""], ["--resume is empty"]),
    (["--resume", "Auto"], ["--resume Auto: no such file", "auto and none are lower case"]),
    (["--init-from", ""], ["--init-from is empty"]),
    (["--model-from", ""], ["--model-from is empty"]),
    (["--config", ""], ["--config is empty"]),
    (["--run.name", ".."], ["run.name", "not blanks alone, . or .."]),  # (the run's parent)
    (["--run.name", "  "], ["run.name", "not blanks alone"]),
    (["--run.name", "a\nb"], ["run.name", "without '/' or control characters"]),
    (["--eval-only", "--init-from", "a.h5", "--resume", "b.h5"],
     ["--eval-only evaluates one checkpoint", "give one"]),
    # An explicit --resume PATH dropped --init-from with a message about "its own checkpoint".
    (["--init-from", "a.h5", "--resume", "b.h5"],
     ["--init-from starts a new run from one checkpoint and --resume b.h5", "give one"]),
    # (OpenMP crashed asking for that many threads)
    (["--run.threads", "100000"], ["run.threads", "must be in [0, 1024]"]),
    # A grid whose size overflowed an int to 0 (a division by zero: SIGFPE), and a plan for more
    # ranks than the batch splits over (micro_batch_size · dp overflowed and passed).
    (["--parallel.tp", "65536", "--parallel.pp", "65536"],
     ["not a multiple of parallel.tp · parallel.pp · parallel.cp", "4294967296"]),
    (["--plan", "--plan-ranks", "2147483647"],
     ["train.batch_size (8) must be divisible by micro_batch_size · dp (4 · 2147483647)"]),
    # Keys of a multiple-choice file that is not there.
    (["--eval.choice_mode", "cached"], ["eval.choice_mode", "needs eval.choices"]),
    (["--eval.choice_examples", "3"], ["eval.choice_examples", "needs eval.choices"]),
])
def test_bad_config_values(tmp_path, args, needles):
    cfg = tiny_config(tmp_path)
    assert_clean_error(train("--config", cfg, *args), *needles)


def planned_floats(tmp_path, model_ini, layers):
    """The parameter floats --plan counts for inputs/models/<model_ini> on one rank (its stage 0
    row of `layers` layers), without data."""
    p = train("--config", REPO / "inputs/models" / model_ini, "--run.backend", "cuda",
              "--data.train", str(tmp_path / "none_*.bin"), "--run.dir", str(tmp_path / "runs"),
              "--train.batch_size", "8", "--train.micro_batch_size", "8", "--plan", check=True)
    row = next((l.split() for l in p.stdout.splitlines() if l.split()[:2] == ["0", str(layers)]),
               None)
    assert row is not None, p.stdout
    return int(row[2])


def test_init_options_draw_the_weights_they_say_on_every_grid(tmp_path):
    """model.init_std, init_scaled_residual and init_truncation (OLMo-2's init: σ everywhere,
    truncated at 3σ): the step-0 checkpoint's matrices and embeddings have mean ~0 and the
    deviation of a normal of σ truncated at ±2σ (σ·0.8796, to 3%), none beyond 2σ, attn.c_proj's
    and mlp.c_proj's alike (unscaled), the norms 1; the defaults draw c_proj with
    0.02/sqrt(2·n_layer) and other values beyond 2σ; tp 2 draws the same weights bit for bit."""
    sigma, cut = 0.05, 2.0
    opts = ["--model.init_std", sigma, "--model.init_scaled_residual", "false",
            "--model.init_truncation", cut, "--checkpoint.at_start", "true", "--train.steps", 1]
    cfg = tiny_config(tmp_path, name="init")
    train("--config", cfg, *opts, check=True)
    train("--config", cfg, "--checkpoint.at_start", "true", "--train.steps", 1, "--run.name",
          "default", check=True)
    p = mpirun(2, "--config", cfg, *opts, "--parallel.tp", 2, "--run.name", "tp")
    assert p.returncode == 0, p.stderr

    def weights(name):
        with h5py.File(tmp_path / "runs" / name / "ckpt" / "step_00000000.h5", "r") as f:
            return {k: f["model/" + k][()] for k in ("wte/weight", "h/0/attn/c_attn/weight",
                                                     "h/1/attn/c_proj/weight",
                                                     "h/1/mlp/c_proj/weight", "h/0/ln_1/weight")}

    w, d, t = weights("init"), weights("default"), weights("tp")
    factor = 0.8796  # sqrt(1 - 2·a·φ(a) / (2Φ(a) - 1)) at a = 2
    for k in ("wte/weight", "h/0/attn/c_attn/weight", "h/1/attn/c_proj/weight",
              "h/1/mlp/c_proj/weight"):
        a = w[k][:500] if k == "wte/weight" else w[k]  # (wte's padding rows are zero)
        assert abs(a.mean()) < 0.05 * sigma, k
        assert abs(a.std() / (sigma * factor) - 1) < 0.03, (k, a.std())
        assert np.abs(a).max() <= cut * sigma * (1 + 1e-6), k
        np.testing.assert_array_equal(t[k], w[k], err_msg=k)
    assert np.all(w["h/0/ln_1/weight"] == 1)
    proj = d["h/1/mlp/c_proj/weight"]
    assert abs(proj.std() / (0.02 / np.sqrt(4)) - 1) < 0.03, proj.std()
    assert np.abs(d["h/0/attn/c_attn/weight"]).max() > 2 * 0.02  # not truncated


def test_llama_model_config_plans_its_parameters(tmp_path):
    """inputs/models/llama-124m.ini: --plan counts Llama's tensors (no biases, no wpe, SwiGLU's
    2048 units, the untied head), each padded vocabulary tensor with its 47 padding rows."""
    C, L, V, H = 768, 12, 50257, 2048
    layer = 4 * C * C + 3 * C * H + 2 * C  # q|k|v and o; gate|up and down; two RMSNorm weights
    floats = L * layer + C + 2 * 50304 * C  # ln_f; wte and lm_head padded to 50304 rows
    assert planned_floats(tmp_path, "llama-124m.ini", L) == floats
    assert 162_100_000 < floats - 2 * (50304 - V) * C < 162_200_000


def test_qwen3_model_config_plans_its_parameters(tmp_path):
    """inputs/models/qwen3-0.6b.ini: --plan counts Qwen3-0.6B's tensors with heads of 128 at
    n_embd 1024 (c_attn [2048 + 2·8·128, 1024], attn.c_proj [1024, 2048]), QK-norm weights and the
    tied 151,936-row embedding: 596,049,920 parameters, of which 0.44B outside the embedding, as
    Qwen publishes ("0.6B; non-embedding 0.44B")."""
    floats = planned_floats(tmp_path, "qwen3-0.6b.ini", 28)
    assert floats == 596_049_920
    assert 440_000_000 < floats - 151_936 * 1024 < 440_500_000


def test_olmo2_model_config_plans_its_parameters(tmp_path):
    """inputs/models/olmo2-7b.ini: --plan counts OLMo-2-7B's tensors: no ln_1 and ln_2, the two
    branch norms and the q and k norms over all 4096 values of each (model.qk_norm_full) in every
    layer, SwiGLU's 11008 units, the untied 100,352-row embedding and head: 7,298,617,344
    parameters, OLMo-2-7B's published 7.3B."""
    C, L, V, H = 4096, 32, 100352, 11008
    layer = 4 * C * C + 2 * C + 3 * C * H + 2 * C  # q|k|v and o, q_norm and k_norm; the MLP;
    # ln_attn_out and ln_mlp_out
    floats = L * layer + 2 * V * C + C  # wte and lm_head; ln_f
    assert planned_floats(tmp_path, "olmo2-7b.ini", L) == floats == 7_298_617_344


def test_deepseek_v2_lite_model_config_plans_its_parameters(tmp_path):
    """inputs/models/deepseek-v2-lite.ini: --plan counts DeepSeek-V2-Lite's tensors, worked out
    here from its config.json: multi-head latent attention (q_proj [16·192, C], kv_a [512 + 64,
    C] and its norm, kv_b [16·256, 512], o_proj [C, 16·128]), a dense first layer of 10944 units
    (model.moe_dense_hidden), 26 layers of 64 experts of 1408 units with a router and shared
    experts of 2816: 15,706,484,224 parameters, DeepSeek's published 15.7B; per token the FLOPs
    count 6 of the 64 experts."""
    C, L, V, E, k = 2048, 27, 102400, 64, 6
    attention = 16 * 192 * C + 576 * C + 512 + 16 * 256 * 512 + C * 16 * 128
    layer = attention + 2 * C  # two RMSNorms
    dense_mlp, expert = 3 * C * 10944, 3 * C * 1408
    moe_mlp = E * C + E * expert + 3 * C * 2816  # router, experts, shared experts
    total = L * layer + dense_mlp + (L - 1) * moe_mlp + 2 * V * C + C
    assert total == 15_706_484_224
    assert planned_floats(tmp_path, "deepseek-v2-lite.ini", L) == total
    active = total - (L - 1) * (E - k) * expert
    assert 2.4e9 < active - V * C < 2.5e9  # "2.4B activated": the token embedding aside
    p = train("--config", REPO / "inputs/models/deepseek-v2-lite.ini", "--run.backend", "cuda",
              "--data.train", str(tmp_path / "none_*.bin"), "--run.dir", str(tmp_path / "runs"),
              "--train.batch_size", "8", "--train.micro_batch_size", "8", "--plan", check=True)
    # 6·active + 6·L·(attention width)·T, the attention at n_head·(192 + 128)/2 per key
    flops = 6 * active + 6 * L * 16 * (192 + 128) / 2 * 4096
    assert f"compute: {flops / 1e9:.3f} GFLOP per token" in p.stdout, p.stdout


@pytest.mark.parametrize("size,layers,experts,published", [("20b", 24, 32, (20.91e9, 3.61e9)),
                                                             ("120b", 36, 128, (116.83e9, 5.13e9))])
def test_gpt_oss_model_configs_plan_their_parameters(tmp_path, size, layers, experts, published):
    """inputs/models/gpt-oss-20b.ini and -120b.ini: --plan counts gpt-oss's tensors, worked out
    here from its config.json: q|k|v [(64 + 2·8)·64, C] and o [C, 64·64] with biases, 64 sinks,
    two RMSNorms, a router [E, C] with its bias, E experts of 2880 SwiGLU units with biases on both
    products, an untied head: OpenAI's published totals (20.91B and 116.83B) and per-token counts
    without the token embedding (3.61B and 5.13B), to their rounding."""
    C, V, I, k = 2880, 201088, 2880, 4
    attention = 80 * 64 * C + 80 * 64 + C * 4096 + C + 64
    expert = 2 * I * C + 2 * I + C * I + C
    layer = attention + 2 * C + experts * C + experts + experts * expert
    total = layers * layer + 2 * V * C + C
    assert planned_floats(tmp_path, f"gpt-oss-{size}.ini", layers) == total
    active = total - layers * (experts - k) * expert - V * C
    assert abs(total - published[0]) < 5e6 and abs(active - published[1]) < 5e6, (total, active)


def test_deepseek_v3_model_config_plans_its_parameters(tmp_path):
    """inputs/models/deepseek-v3.ini: --plan counts DeepSeek-V3's tensors, worked out here from
    its config.json (queries through a latent of 1536: q_a, its norm and q_b [128·192, 1536];
    three dense layers of 18432 units; 58 layers of 256 experts of 2048 units, a router and one
    shared expert): 671.0B parameters and 37.6B per token, DeepSeek's "671B total, 37B
    activated" (its routers' balancing biases are state, not parameters, in triad)."""
    C, L, V, E, k, first = 7168, 61, 129280, 256, 8, 3
    attention = 1536 * C + 1536 + 128 * 192 * 1536 + 576 * C + 512 + 128 * 256 * 512 + C * 16384
    layer = attention + 2 * C
    dense_mlp, expert = 3 * C * 18432, 3 * C * 2048
    moe_mlp = E * C + E * expert + 3 * C * 2048
    total = L * layer + first * dense_mlp + (L - first) * moe_mlp + 2 * V * C + C
    assert 671.0e9 < total < 671.1e9
    assert planned_floats(tmp_path, "deepseek-v3.ini", L) == total
    active = total - (L - first) * (E - k) * expert
    assert 37.5e9 < active < 37.6e9
    # run.fp8: the GPU's scratch for the largest FP8 backward's operands is the wide dense
    # layers' c_fc (N rows of F = 2·18432: N·F + max(F·C, N·C) bytes), not an expert's.
    p = train("--config", REPO / "inputs/models/deepseek-v3.ini", "--run.backend", "cuda",
              "--data.train", str(tmp_path / "none_*.bin"), "--run.dir", str(tmp_path / "runs"),
              "--train.batch_size", "8", "--train.micro_batch_size", "8", "--plan",
              "--run.fp8", "tensorwise", check=True)
    N, F = 8 * 4096, 2 * 18432
    assert f"FP8 operands {(256 + N * F + max(F * C, N * C)) / 1e6:.1f} MB" in p.stdout, p.stdout
    # The context extension the config's comment gives (YaRN in DeepSeek's form) is accepted.
    train("--config", REPO / "inputs/models/deepseek-v3.ini", "--run.backend", "cuda",
          "--data.train", str(tmp_path / "none_*.bin"), "--run.dir", str(tmp_path / "runs"),
          "--train.batch_size", "1", "--train.micro_batch_size", "1", "--plan",
          "--model.seq_len", "32768", "--model.rope_scaling", "yarn",
          "--model.rope_scaling_factor", "40", "--model.rope_original_positions", "4096",
          "--model.rope_yarn_mscale", "1", "--model.rope_yarn_mscale_all_dim", "1", check=True)


# (layers, n_embd, attention width, key/value width, query/key norm weights, experts, chosen,
# expert width, vocabulary): Mixtral-8x7B's, Qwen3-30B-A3B's and OLMoE-1B-7B's config.json
# (OLMoE's norm weights one per q and k value: model.qk_norm_full).
MOE_MODELS = {"mixtral-8x7b.ini": (32, 4096, 4096, 1024, 0, 8, 2, 14336, 32000),
              "qwen3-30b-a3b.ini": (48, 2048, 4096, 512, 256, 128, 8, 768, 151936),
              "olmoe-1b-7b.ini": (16, 2048, 2048, 2048, 4096, 64, 8, 1024, 50304)}


# (OLMoE's total is the sum worked out here from its config.json, published as "6.9B"; its
# active count is checked against the published 1.3B below.)
@pytest.mark.parametrize("ini,published,published_active", [
    ("mixtral-8x7b.ini", 46_702_792_704, 12.9e9), ("qwen3-30b-a3b.ini", 30_532_122_624, 3.3e9),
    ("olmoe-1b-7b.ini", 6_919_161_856, 1.3e9)])
def test_mixture_of_experts_model_configs_plan_their_parameters(tmp_path, ini, published,
                                                                 published_active):
    """inputs/models' Mixtral-8x7B and Qwen3-30B-A3B: --plan counts every expert's tensors and
    the routers (their vocabularies are multiples of 128: no padding rows), exactly the
    parameters of the published checkpoints; the FLOPs per token count the chosen experts only
    (6 · active + 6·L·A·T), the active parameters worked out here and, to 2%, the published
    "12.9B" and "3.3B activated"."""
    L, C, A, KV, QK, E, k, F, V = MOE_MODELS[ini]
    attention = C * A + 2 * C * KV + A * C + QK
    per_expert = 3 * C * F  # gate and up, down
    layer = attention + 2 * C + E * C + E * per_expert  # two RMSNorms, the router
    ends = 2 * V * C + C  # wte and lm_head, ln_f
    assert L * layer + ends == published
    assert planned_floats(tmp_path, ini, L) == published
    p = train("--config", REPO / "inputs/models" / ini, "--run.backend", "cuda", "--data.train",
              str(tmp_path / "none_*.bin"), "--run.dir", str(tmp_path / "runs"),
              "--train.batch_size", "8", "--train.micro_batch_size", "8", "--plan",
              "--run.fp8", "tensorwise", check=True)
    gflop = float(p.stdout.split(" GFLOP per token for the model")[0].split()[-1])
    active = L * (layer - (E - k) * per_expert) + ends
    T = 4096
    assert abs((gflop * 1e9 - 6 * L * A * T) / 6 - active) < 1e5  # the plan prints 3 decimals
    assert abs(active - published_active) < 0.02 * published_active, active
    # run.fp8: the GPU's scratch for the largest FP8 product's operands (the backward's, 256
    # bytes of scales first): of N rows, c_attn's (Qwen3's and OLMoE's, their experts narrower
    # than the queries, keys and values) or an expert's c_fc (Mixtral's).
    N = 8 * T
    backward = lambda OC, IC: 256 + max(OC * IC, N * IC) + N * OC  # noqa: E731
    operands = max(backward(A + 2 * KV, C), backward(2 * F, C))
    assert f"FP8 operands {operands / 1e6:.1f} MB" in p.stdout, p.stdout


def test_expert_parallel_plan_counts_a_ranks_work(tmp_path):
    """Under expert parallelism a rank holds 1/ep of the experts but runs them for the tokens of
    ep ranks: per token of its own, its compute (and so the planned step time) is the same as
    without (Mixtral-8x7B on 64 ranks, tp 4, ep 1 and 8); what it holds is 1/ep of the experts."""
    def plan(ep):
        p = train("--config", REPO / "inputs/models/mixtral-8x7b.ini", "--run.backend", "cuda",
                  "--data.train", str(tmp_path / "none_*.bin"), "--run.dir", str(tmp_path / "r"),
                  "--train.batch_size", "64", "--train.micro_batch_size", "1", "--parallel.tp", 4,
                  "--parallel.ep", ep, "--plan", "--plan-ranks", 64, check=True)
        row = next(l.split() for l in p.stdout.splitlines() if l.split()[:2] == ["0", "32"])
        return float(p.stdout.split("stage 0: ")[1].split()[0]), int(row[2])
    (flops1, params1), (flops8, params8) = plan(1), plan(8)
    assert flops1 == flops8 and flops1 > 19
    experts = 32 * 8 * 3 * 4096 * 14336 // 4  # a tensor-parallel rank's share of them
    assert params1 - params8 == experts - experts // 8


def test_plan_prints_each_stage_without_data_or_peers(tmp_path):
    # A grid of 16 ranks planned by one process; the data globs name no files, and no run
    # directory is made.
    p = train("--config", REPO / "inputs/models/gpt2-124m.ini", "--run.backend", "cuda",
              "--data.train", str(tmp_path / "none_*.bin"), "--run.dir", str(tmp_path / "runs"),
              "--train.batch_size", "64",
              "--train.micro_batch_size", "4", "--parallel.tp", "2", "--parallel.pp", "2",
              "--parallel.zero", "1", "--plan", "--plan-ranks", "16", "--plan-tflops", "300",
              "--plan-gbps", "50", check=True)
    out = p.stdout
    assert "plan: 16 ranks = dp 4 x pp 2 x tp 2 | bf16 on cuda" in out, out
    assert "4 micro-batches of 4 sequences" in out and "ZeRO-1" in out, out
    rows = [l.split() for l in out.splitlines() if l.strip().split(" ")[0] in ("0", "1")]
    assert [r[0] for r in rows] == ["0", "1"], out
    for r in rows:  # weights + bf16 copy + gradients + optimizer + activations + other = total
        parts = [float(x) for x in (r[3], r[4], r[5], r[6], r[7], r[9])]
        assert abs(sum(parts) - float(r[10])) < 0.35, r
        assert int(r[1]) == 6, r
    assert "pipeline bubble" in out and "tokens/s" in out and "at 50 GB/s" in out, out
    assert not (tmp_path / "runs").exists()


def test_plan_context_parallel_shares_each_sequence(tmp_path):
    """parallel.cp = 4 on GPT-2 124M (fp32, the cpu backend): each rank holds a quarter of every
    sequence, so its activations shrink about 4x (the attention probabilities of its two pieces,
    (2·4 + 1)/16 of T x T, a little more), its compute per step 4x, and --plan prints the keys' and
    values' traffic: per layer two gathers and a reduce-scatter of (cp − 1)/cp of the micro-batch's
    key and value columns, and a third gather where full recomputation reruns the layer."""
    def plan(cp, *extra):
        out = train("--config", REPO / "inputs/models/gpt2-124m.ini", "--data.train",
                    str(tmp_path / "none_*.bin"), "--train.batch_size", "8",
                    "--train.micro_batch_size", "8", "--parallel.cp", str(cp), "--plan",
                    "--plan-ranks", str(cp), "--plan-tflops", "1", *extra, check=True).stdout
        row = next(l.split() for l in out.splitlines() if l.split()[:2] == ["0", "12"])
        ms = float(re.search(r"counted\): ([0-9.]+) ms", out).group(1))
        return out, float(row[7].split("(")[0]), ms

    one, act1, ms1 = plan(1)
    four, act4, ms4 = plan(4)
    assert "plan: 4 ranks = dp 1 x pp 1 x tp 1 x cp 4 | fp32 on cpu" in four, four
    assert "x cp" not in one and "context-parallel" not in one, one
    assert 3.5 < act1 / act4 < 5, (act1, act4)
    assert abs(ms1 / ms4 - 4) < 0.01, (ms1, ms4)
    mb = re.search(r"context-parallel key/value traffic per step and rank: ([0-9.]+) MB", four)
    assert mb, four
    want = (2 * 4 + 4) * 3 / 4 * 8 * 1024 * (2 * 768) * 12 / 1e6  # fp32: 4 bytes, 12 layers
    assert abs(float(mb.group(1)) - want) < 0.1, (mb.group(1), want)
    full = plan(4, "--train.recompute", "full")[0]
    mb = re.search(r"context-parallel key/value traffic per step and rank: ([0-9.]+) MB", full)
    assert abs(float(mb.group(1)) - want * 16 / 12) < 0.1, (mb.group(1), want)


def test_plan_shows_what_recomputation_saves_and_costs(tmp_path):
    def plan(mode):
        p = train("--config", REPO / "inputs/models/gpt2-124m.ini", "--run.backend", "cuda",
                  "--data.train", str(tmp_path / "none_*.bin"), "--train.batch_size", "32",
                  "--train.micro_batch_size", "4", "--parallel.pp", "2", "--plan",
                  "--plan-ranks", "2", "--plan-tflops", "300", "--train.recompute", mode,
                  check=True)
        rows = [l.split() for l in p.stdout.splitlines() if l.strip().split(" ")[0] in ("0", "1")]
        step = re.search(r"compute only \(communication not counted\): ([0-9.]+) ms", p.stdout)
        return p.stdout, [float(r[7]) for r in rows], float(step.group(1))

    out_none, act_none, ms_none = plan("none")
    out_gelu, act_gelu, ms_gelu = plan("gelu")
    out_full, act_full, ms_full = plan("full")
    assert "recompute" not in out_none and "| recompute gelu" in out_gelu, out_gelu
    assert "full recomputation adds" in out_full and "| recompute full" in out_full, out_full
    for n, g, f in zip(act_none, act_gelu, act_full):
        assert f < g < n, (act_none, act_gelu, act_full)
    # The first stage keeps 2 micro-batches of 6 layers: full keeps C of each layer's ~16C.
    assert act_full[0] < 0.4 * act_none[0], (act_none, act_full)
    # gelu costs no FLOPs in the plan; full reruns ~2/3 of each layer's forward pass.
    assert ms_gelu == ms_none and ms_none < ms_full < 1.3 * ms_none, (ms_none, ms_full)


def test_plan_auto_stage_layers_balance_the_head(tmp_path):
    def plan(*extra):
        out = train("--config", REPO / "inputs/models/gpt2-350m.ini", "--run.backend", "cuda",
                    "--data.train", str(tmp_path / "none_*.bin"), "--train.batch_size", "64",
                    "--train.micro_batch_size", "4", "--parallel.pp", "4", "--plan",
                    "--plan-ranks", "4", "--plan-tflops", "300", *extra, check=True).stdout
        layers = [int(l.split()[1]) for l in out.splitlines() if re.match(r"\s+[0-3]\s", l)]
        ms = float(re.search(r"counted\): ([0-9.]+) ms", out).group(1))
        return out, layers, ms

    _, even, even_ms = plan()
    out, auto, auto_ms = plan("--parallel.stage_layers", "auto")
    assert even == [6, 6, 6, 6] and auto == [7, 7, 7, 3], (even, auto)
    assert "| stage layers 7,7,7,3" in out, out
    assert auto_ms < 0.9 * even_ms, (even_ms, auto_ms)
    _, given, _ = plan("--parallel.stage_layers", "8,8,8,0")
    assert given == [8, 8, 8, 0], given


def test_plan_memory_budget_picks_the_cheapest_recomputation_that_fits(tmp_path):
    def plan(*extra):
        return train("--config", REPO / "inputs/models/gpt2-350m.ini", "--run.backend", "cuda",
                     "--data.train", str(tmp_path / "none_*.bin"), "--train.batch_size", "64",
                     "--train.micro_batch_size", "16", "--plan", "--plan-ranks", "1",
                     "--plan-tflops", "400", *extra, check=True).stdout

    def largest(out):  # the largest rank's total of a plan (its last column)
        return max(float(l.split()[-1]) for l in out.splitlines() if l.startswith("    0 "))

    out = plan("--plan-memory-gb", "15")
    table = out.split("activation recomputation against 15.0 GB per rank")[1].splitlines()
    rows = [re.match(r"  (\S.*?)\s+([0-9.]+)\s+([0-9.]+)$", l) for l in table]
    rows = [(m.group(1), float(m.group(2)), float(m.group(3))) for m in rows if m]
    assert [r[0] for r in rows[:2]] == ["none", "gelu"] and rows[-1][0] == "full", rows
    for a, b in zip(rows, rows[1:]):  # each listed setting saves memory and costs compute
        assert b[1] < a[1] and b[2] >= a[2], (a, b)
    first = next(r for r in rows if r[1] <= 15000)
    assert first[0].startswith("full in "), rows
    k = int(first[0].split()[2])
    assert k > 1, rows  # (k = 1 would be the advice's "--train.recompute_layers 1")
    assert f"fits with --train.recompute full --train.recompute_layers {k} (step time +" in out, out
    # The chosen setting's own plan agrees, and one layer fewer would not fit.
    assert largest(plan("--train.recompute", "full", "--train.recompute_layers", str(k))) <= 15000
    assert largest(plan("--train.recompute", "full", "--train.recompute_layers", str(k - 1))) > 15000
    assert ("fits without recomputation: --train.recompute none --train.recompute_layers 0"
            in plan("--plan-memory-gb", "30"))
    assert "does not fit even with full recomputation" in plan("--plan-memory-gb", "5")


@pytest.mark.parametrize("args,needles", [
    (["--plan-ranks", "3", "--parallel.tp", "2"], ["parallel.tp", "3"]),
    (["--plan-ranks", "-4"], ["--plan-ranks"]),
    (["--plan-tflops", "-1"], ["--plan-tflops"]),
    (["--plan-gbps", "-1"], ["--plan-gbps"]),
    (["--plan-memory-gb", "-2"], ["--plan-memory-gb"]),
    (["--plan-tflops", "inf"], ["--plan-tflops must be a finite number >= 0"]),
    (["--plan-memory-gb", "inf"], ["--plan-memory-gb must be a finite number >= 0"]),
    (["--plan-ranks", "2", "--parallel.pp", "2", "--parallel.stage_layers", "2,1"],
     ["parallel.stage_layers", "holds 3 layers, model.n_layer is 2"]),
    (["--plan-ranks", "3", "--parallel.pp", "3", "--parallel.stage_layers", "2,0,0"],
     ["parallel.stage_layers", "stage 1 no layers"]),
    (["--plan-ranks", "4", "--parallel.pp", "4", "--parallel.stage_layers", "auto"],
     ["parallel.pp", "model.n_layer + 1"]),
    (["--plan-ranks", "3", "--parallel.pp", "3"], ["parallel.pp", "model.n_layer"]),
])
def test_plan_refuses_bad_grids(tmp_path, args, needles):
    cfg = tiny_config(tmp_path)
    assert_clean_error(train("--config", cfg, "--plan", *args), *needles)


def test_cuda_backend_without_a_gpu_is_a_clear_error(tmp_path):
    import subprocess as sp
    if sp.run(["nvidia-smi"], capture_output=True).returncode == 0 if shutil.which("nvidia-smi") else False:
        pytest.skip("a GPU is present")
    cfg = tiny_config(tmp_path)
    assert_clean_error(train("--config", cfg, "--run.backend", "cuda"), "CUDA")


def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.ini"
    bad.write_text("[model]\nn_layer = 2\nwidth = 3\n")
    assert_clean_error(train("--config", bad), "width", str(bad))
    assert_clean_error(train("--config", tmp_path / "missing.ini"), "missing.ini")
    # A UTF-8 byte-order mark (some editors write one) starts no line: the file reads as without.
    bom = tmp_path / "bom.ini"
    bom.write_bytes(b"\xef\xbb\xbf[train]\nstepz = 3\n")
    assert_clean_error(train("--config", bom), "unrecognised option 'train.stepz'")
    bom.write_bytes(b"\xef\xbb\xbf[train]\nmicro_batch_size = 2\n")
    p = train("--config", tiny_config(tmp_path), "--config", bom, "--plan")
    assert p.returncode == 0 and "4 micro-batches of 2 sequences" in p.stdout, p.stderr
    # Not a regular file: a FIFO would block the read for ever, /dev/zero fill memory.
    fifo = tmp_path / "fifo.ini"
    os.mkfifo(fifo)
    assert_clean_error(train("--config", fifo), f"config file {fifo}: is not a regular file")
    assert_clean_error(train("--config", "/dev/zero"), "/dev/zero: is not a regular file")
    # An empty boolean (an unset shell variable) is no "true", as Boost reads it.
    empty = tmp_path / "empty_bool.ini"
    empty.write_text("[data]\nshuffle =\n")
    assert_clean_error(train("--config", tiny_config(tmp_path), "--config", empty),
                       f"config file {empty}: data.shuffle is empty (give true or false)")
    assert_clean_error(train("--config", tiny_config(tmp_path), "--model.bias", ""),
                       "command line: model.bias is empty (give true or false)")


def test_stray_words_on_a_command_line_are_refused(tmp_path):
    """A word that is no option nor an option's value (Boost drops such words where a parser takes
    none: `triad-train run.ini` trained on the default config): one error naming it, at once."""
    cfg = tiny_config(tmp_path)
    assert_clean_error(train(cfg), f"unexpected argument '{cfg}'", "--config")
    assert_clean_error(train("--config", cfg, "again.ini"), "unexpected argument 'again.ini'")
    tools = (([exe("triad-generate"), "model.h5"], "'model.h5'"),
             ([exe("triad-tokenize"), "decode", "ids.txt"], "'ids.txt'"),
             ([exe("triad-bench"), "kernels", "fast"], "'fast'"),
             ([exe("triad-bench"), "fim", "shards.bin"], "'shards.bin'"))
    for args, word in tools:
        assert_clean_error(run(args), "unexpected argument", word)


def test_bad_data(tmp_path):
    cfg = tiny_config(tmp_path)
    d = tmp_path / "bad"
    d.mkdir()
    assert_clean_error(train("--config", cfg, "--data.train", f"{d}/none_*.bin"), "matches no files")
    write_shard(d / "magic.bin", np.arange(100), magic=1234)
    assert_clean_error(train("--config", cfg, "--data.train", d / "magic.bin"), "magic.bin", "magic")
    write_shard(d / "short.bin", np.arange(100), count=500)
    assert_clean_error(train("--config", cfg, "--data.train", d / "short.bin"), "short.bin")
    write_shard(d / "empty.bin", [])
    assert_clean_error(train("--config", cfg, "--data.train", d / "empty.bin"), "no complete sequence")
    write_shard(d / "ids.bin", np.full(100, 600))
    assert_clean_error(train("--config", cfg, "--data.train", d / "ids.bin"), "ids.bin", "vocab_size")
    os.mkfifo(d / "pipe.bin")  # (opening it would wait for a writer: a hang)
    assert_clean_error(train("--config", cfg, "--data.train", d / "pipe.bin", timeout=30),
                       "pipe.bin: not a regular file")


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    resume_matches_uninterrupted(tmp_path)


def resume_matches_uninterrupted(tmp_path, *args):
    """Runs the tiny config with args straight through (run 'straight') and again ('part'),
    removes part's checkpoints after step 10 as if the job had died right after writing it,
    resumes it (--resume auto) and checks that losses and final weights are bit-identical.
    Returns part's config and the resumed run's process."""
    straight = tiny_config(tmp_path, name="straight")
    train("--config", straight, *args, check=True)
    part = tiny_config(tmp_path, name="part")
    train("--config", part, *args, check=True)
    ckpt_dir = tmp_path / "runs" / "part" / "ckpt"
    for step in (15, 20):
        (ckpt_dir / f"step_{step:08d}.h5").unlink()
    (ckpt_dir / "latest").write_text("step_00000010.h5\n")
    p = train("--config", part, *args, check=True)
    assert "resumed from" in p.stdout and "step 10" in p.stdout, p.stdout
    s1, l1 = losses(tmp_path / "runs" / "straight")
    s2, l2 = losses(tmp_path / "runs" / "part")
    assert list(s1) == list(range(20)) and list(s2) == list(range(20))
    assert np.array_equal(l1, l2), (l1, l2)  # bit-identical
    w1 = weights(tmp_path / "runs" / "straight" / "ckpt" / "step_00000020.h5")
    w2 = weights(ckpt_dir / "step_00000020.h5")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert np.array_equal(w1[k], w2[k]), k
    return part, p


def test_bad_run_paths_are_refused_by_name(tmp_path):
    """Paths a run writes or reads that are the wrong kind of file: one error naming each, before
    training (a wrong data.train before the model is built: under a 3 GB address space, where
    GPT-2 124M, the default model, does not fit)."""
    import resource

    def capped():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    p = subprocess.run([exe("triad-train"), "--data.train", str(tmp_path / "none_*.bin"),
                        "--run.dir", str(tmp_path / "runs")], capture_output=True, text=True,
                       env=ENV, preexec_fn=capped, timeout=120)
    assert_clean_error(p, "data.train = '", "none_*.bin' matches no files")
    cfg = tiny_config(tmp_path, train__steps=1)
    assert_clean_error(train("--config", tmp_path), f"config file {tmp_path}: is a directory")
    (tmp_path / "file").write_text("")
    assert_clean_error(train("--config", cfg, "--run.dir", tmp_path / "file"),
                       "run.dir", str(tmp_path / "file"), "Not a directory")
    run_dir = tmp_path / "runs" / "run"
    (run_dir / "log.txt").mkdir(parents=True)
    assert_clean_error(train("--config", cfg), f"run directory {run_dir}: log.txt is not a "
                       "regular file")
    (run_dir / "log.txt").rmdir()
    # A named pipe there blocked open() for ever (and the run, catching SIGTERM, could then only
    # be killed).
    os.mkfifo(run_dir / "config.ini")
    assert_clean_error(train("--config", cfg), f"run directory {run_dir}: config.ini is not a "
                       "regular file")
    (run_dir / "config.ini").unlink()
    (run_dir / "ckpt" / "latest").mkdir(parents=True)
    p = train("--config", cfg)
    assert_clean_error(p, "ckpt: latest is not a file")
    assert "val loss" not in p.stdout, p.stdout  # (before the first evaluation)
    # A checkpoint.dir the file system refuses: said before training, not after it at the first
    # save (as an "unexpected failure" naming no key).
    p = train("--config", cfg, "--run.name", "long", "--checkpoint.dir", tmp_path / ("x" * 300))
    assert_clean_error(p, "checkpoint.dir: cannot make", "File name too long")
    assert "step " not in p.stdout, p.stdout


def test_a_rolled_back_or_new_run_sets_the_other_history_aside(tmp_path):
    """A run resumed from an earlier step of its directory, or a new one (--resume none), would
    find its checkpoints' names taken by the abandoned history's files, which are never
    overwritten (it used to train on, saving nothing, while ckpt/latest named the old weights).
    They move, byte for byte, to ckpt/superseded_<n> with a latest of their own; the run's
    checkpoints and ckpt/latest are its own: its step 6 equals that of the same run made in
    another directory, and --resume auto goes on from it."""
    cfg = tiny_config(tmp_path, name="h", train__steps=6, checkpoint__every=2, eval__every=0)
    ckpt = tmp_path / "runs" / "h" / "ckpt"
    train("--config", cfg, check=True)
    first = {n: (ckpt / n).read_bytes() for n in ("step_00000004.h5", "step_00000006.h5")}
    start = tmp_path / "step_00000002.h5"
    shutil.copy(ckpt / "step_00000002.h5", start)
    p = train("--config", cfg, "--resume", ckpt / "step_00000002.h5", "--train.lr", 1e-3,
              check=True)
    aside = ckpt / "superseded_1"
    assert f"set aside in {aside}" in p.stdout and "goes on from step 2" in p.stdout, p.stdout
    assert sorted(f.name for f in aside.iterdir()) == ["latest", *first], list(aside.iterdir())
    assert (aside / "latest").read_text() == "step_00000006.h5\n"
    for n, data in first.items():
        assert (aside / n).read_bytes() == data, n
    assert (ckpt / "latest").read_text() == "step_00000006.h5\n"
    other = tiny_config(tmp_path, name="o", train__steps=6, checkpoint__every=2, eval__every=0)
    train("--config", other, "--resume", start, "--train.lr", 1e-3, check=True)
    mine = weights(ckpt / "step_00000006.h5")
    want = weights(tmp_path / "runs" / "o" / "ckpt" / "step_00000006.h5")
    assert any(not np.array_equal(mine[k], v) for k, v in weights(aside / "step_00000006.h5").items())
    for k, v in want.items():
        assert np.array_equal(mine[k], v), k
    # Resumed from another directory's file again: o's checkpoints are another history's.
    p = train("--config", other, "--resume", start, "--train.steps", 4, check=True)
    assert f"this run starts its own history from {start}" in p.stdout, p.stdout
    p = train("--config", cfg, "--train.steps", 8, "--train.lr", 1e-3, check=True)
    assert "step_00000006.h5 at step 6" in p.stdout and "set aside" not in p.stdout, p.stdout
    # A new run: every checkpoint of the directory is another history's.
    p = train("--config", cfg, "--resume", "none", "--train.steps", 2, check=True)
    assert "this run starts anew" in p.stdout, p.stdout
    assert sorted(f.name for f in (ckpt / "superseded_2").iterdir()) == [
        "latest", "step_00000002.h5", "step_00000004.h5", "step_00000006.h5", "step_00000008.h5"]
    assert sorted(f.name for f in ckpt.iterdir()) == [
        "latest", "step_00000002.h5", "superseded_1", "superseded_2"]


def test_a_loader_position_beyond_any_run_is_refused(tmp_path):
    """epoch · sequences + next_sequence overflowed int64 (a position read anywhere, or
    negative) for a checkpoint whose attributes were damaged, checksums and all intact."""
    cfg = tiny_config(tmp_path, name="pos", train__steps=2, checkpoint__every=2, eval__every=0)
    train("--config", cfg, check=True)
    ckpt = tmp_path / "runs" / "pos" / "ckpt" / "step_00000002.h5"
    with h5py.File(ckpt, "a") as f:
        f.attrs["epoch"] = np.int64(2**60)
        f.attrs["next_sequence"] = np.int64(2**62)
    p = train("--config", cfg, "--resume", ckpt, "--train.steps", 3)
    assert_clean_error(p, str(ckpt), f"its loader position (epoch {2**60}, next_sequence "
                       f"{2**62}) is beyond any run over")


def test_checkpoints_that_none_loads_are_kept_and_refused_and_latest_is_a_name(tmp_path):
    """--resume auto where the directory holds checkpoints and none loads (a full disk where Open
    MPI could not open a file, storage that is down, damage) is an error that moves nothing: taken
    for "no checkpoint", the run started anew and set them aside, its history lost. A latest that
    names a path (a hand edit) is ignored: the run resumes from its own newest checkpoint."""
    cfg = tiny_config(tmp_path, name="k", train__steps=4, checkpoint__every=2, eval__every=0)
    ckpt = tmp_path / "runs" / "k" / "ckpt"
    train("--config", cfg, check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(ckpt / "step_00000002.h5", elsewhere / "step_00000004.h5")
    (ckpt / "latest").write_text("../../../elsewhere/step_00000004.h5\n")
    p = train("--config", cfg, "--train.steps", 5, check=True)
    assert "not a checkpoint's name in the directory; ignored" in p.stderr, p.stderr
    assert "step_00000004.h5 at step 4" in p.stdout and "set aside" not in p.stdout, p.stdout
    names = sorted(f.name for f in ckpt.iterdir())
    good = {n: (ckpt / n).read_bytes() for n in names if n.endswith(".h5")}
    for n, data in good.items():
        (ckpt / n).write_bytes(data[: len(data) // 3])
    p = train("--config", cfg, "--train.steps", 6)
    assert_clean_error(p, f"checkpoint directory {ckpt} holds checkpoints, and none can be loaded",
                       "nothing was moved", "--resume none")
    assert sorted(f.name for f in ckpt.iterdir()) == names
    p = train("--config", cfg, "--train.steps", 2, "--resume", "none", check=True)
    assert f"set aside in {ckpt / 'superseded_1'}" in p.stdout, p.stdout


def test_checkpoints_read_on_a_full_disk(tmp_path):
    """Open MPI's lockedfile component (shared file pointers, which triad never uses) wrote a lock
    file beside each file MPI_File_open opened: on a full disk no checkpoint could be read, and
    --resume auto took every one for damaged. The apps leave it out (app_main.cpp). Needs a small
    tmpfs to fill (mounting one needs root: skipped where that fails)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                                            str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs to fill (needs root)")
    try:
        cfg = tiny_config(tmp_path, name="full", train__steps=2, checkpoint__every=2,
                          eval__every=0)
        ckdir = disk / "ck"
        train("--config", cfg, "--checkpoint.dir", ckdir, check=True)
        with open(disk / "fill", "wb") as f:  # until the disk is full
            try:
                while True:
                    f.write(bytes(1 << 16))
                    f.flush()
            except OSError:
                pass
        env = {k: v for k, v in ENV.items() if k != "OMPI_MCA_sharedfp"}
        p = subprocess.run([exe("triad-train"), "--config", str(cfg), "--checkpoint.dir",
                            str(ckdir), "--eval-only"], capture_output=True, text=True, env=env,
                           timeout=120)
        assert p.returncode == 0 and "(step 2) | val loss" in p.stdout, p.stdout + p.stderr
        assert sorted(f.name for f in ckdir.iterdir()) == ["latest", "step_00000002.h5"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_new_history_sets_the_earlier_record_aside_and_metrics_survive_a_crash(tmp_path):
    """--resume none, or a checkpoint of another directory, starts a history of its own: the
    earlier run's metrics.h5, log.txt, samples.txt and config.ini move to earlier_<n> (they were
    overwritten, or the metrics went on from the other run's step). Metrics reach the disk with
    every checkpoint: a run killed after one resumes without a gap in its history."""
    cfg = tiny_config(tmp_path, name="h", train__steps=4, checkpoint__every=2, eval__every=0)
    run_dir = tmp_path / "runs" / "h"
    train("--config", cfg, check=True)
    record = {n: (run_dir / n).read_bytes()
              for n in ("metrics.h5", "log.txt", "samples.txt", "config.ini")}
    # A mistyped --resume or --init-from path is found before the record is touched.
    for flag in ("--resume", "--init-from"):
        assert_clean_error(train("--config", cfg, flag, tmp_path / "nowhere.h5"), "nowhere.h5")
        assert not (run_dir / "earlier_1").exists()
        assert {n: (run_dir / n).read_bytes() for n in record} == record
    p = train("--config", cfg, "--resume", "none", "--train.steps", 2, check=True)
    assert f"the earlier run's metrics.h5, log.txt, samples.txt, config.ini moved to " \
        f"{run_dir}/earlier_1" in p.stdout, p.stdout
    assert {n: (run_dir / "earlier_1" / n).read_bytes() for n in record} == record
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        np.testing.assert_array_equal(f["train/step"][:], [0, 1])
    other = tiny_config(tmp_path, name="o", train__steps=4, checkpoint__every=2, eval__every=0)
    train("--config", other, check=True)
    train("--config", cfg, "--resume", tmp_path / "runs" / "o" / "ckpt" / "step_00000002.h5",
          check=True)
    assert (run_dir / "earlier_2" / "metrics.h5").exists()
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        np.testing.assert_array_equal(f["train/step"][:], [2, 3])  # not h's 0, 1 then o's
    # Killed (no flush at exit) after the checkpoint of step 2: steps 0 and 1 are on disk.
    crash = tiny_config(tmp_path, name="c", train__steps=1000, checkpoint__every=2,
                        eval__every=0)
    proc = subprocess.Popen([exe("triad-train"), "--config", crash], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=ENV, text=True)
    for line in proc.stdout:
        m = re.match(r"step +(\d+)/", line)
        if m and int(m[1]) >= 5:
            break
    proc.kill()
    proc.wait()
    proc.stdout.close()
    last = int((tmp_path / "runs" / "c" / "ckpt" / "latest").read_text()[5:13])
    p = train("--config", crash, "--train.steps", last + 2, check=True)
    with h5py.File(tmp_path / "runs" / "c" / "metrics.h5", "r") as f:
        np.testing.assert_array_equal(f["train/step"][:], np.arange(last + 2))


def test_a_run_directory_removed_under_the_run_stops_it(tmp_path):
    """Its metrics and log went to files no one could open any more and the run ended with 0:
    the next checkpoint finds metrics.h5 gone and the run stops, naming it."""
    cfg = tiny_config(tmp_path, name="gone", train__steps=100000, checkpoint__every=500,
                      eval__every=0)
    proc = subprocess.Popen([exe("triad-train"), "--config", cfg], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV, text=True)
    for line in proc.stdout:
        if re.match(r"step +\d+/", line):
            break
    shutil.rmtree(tmp_path / "runs")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out[-2000:] + err
    assert f"run directory {tmp_path / 'runs' / 'gone'}: metrics.h5 is gone" in err, err


def test_a_run_directory_in_use_is_refused(tmp_path):
    """Two runs in one directory interleaved their checkpoints and corrupted metrics.h5 (a sweep
    point submitted again while its job ran): the second stops at once, naming the first."""
    cfg = tiny_config(tmp_path, name="busy", train__steps=100000, checkpoint__every=0,
                      eval__every=0)
    first = subprocess.Popen([exe("triad-train"), "--config", cfg], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=ENV, text=True)
    try:
        for line in first.stdout:
            if re.match(r"step +\d+/", line):
                break
        p = train("--config", cfg, "--resume", "none")
        assert_clean_error(p, f"run directory {tmp_path / 'runs' / 'busy'} is in use by another "
                           f"triad-train (pid {first.pid} on ")
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
        first.stdout.close()
    assert not (tmp_path / "runs" / "busy" / "earlier_1").exists()
    train("--config", cfg, "--train.steps", 1, "--resume", "none", check=True)  # free once it ends
    # Held from another host (a failed node's NFS lock outlives it until its lease ends): waited
    # for, TRIAD_RUN_LOCK_WAIT seconds, before the run gives up.
    with open(tmp_path / "runs" / "busy" / ".lock", "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.truncate(0)
        held.write("pid 4242 on node-that-failed\n")
        held.flush()
        p = subprocess.run([exe("triad-train"), "--config", str(cfg), "--resume", "none"],
                           capture_output=True, text=True, timeout=120,
                           env=dict(ENV, TRIAD_RUN_LOCK_WAIT="5"))
        bad = subprocess.run([exe("triad-train"), "--config", str(cfg), "--resume", "none"],
                             capture_output=True, text=True, timeout=120,
                             env=dict(ENV, TRIAD_RUN_LOCK_WAIT="5m"))
    assert_clean_error(bad, "TRIAD_RUN_LOCK_WAIT must be a number of seconds in [0, 86400] "
                       "(got '5m')")
    assert_clean_error(p, "is in use by another triad-train (pid 4242 on node-that-failed)")
    assert "locked by pid 4242 on node-that-failed; waiting up to 5 s" in p.stderr, p.stderr


def test_muon_resumes_bit_exactly_and_refuses_another_optimizers_state(tmp_path):
    muon = ["--optim.name", "muon", "--optim.muon_lr", "0.02"]
    part, _ = resume_matches_uninterrupted(tmp_path, *muon)
    # Muon's state: momentum for the matrices, m and v for the rest.
    with h5py.File(tmp_path / "runs" / "part" / "ckpt" / "step_00000020.h5", "r") as f:
        assert set(f["optimizer"].keys()) == {"m", "v", "momentum"}
        assert "attn" in f["optimizer/momentum/h/0"] and "ln_1" not in f["optimizer/momentum/h/0"]
        assert list(f["optimizer/m/h/0/mlp/c_fc"].keys()) == ["bias"]
    ckpt = tmp_path / "runs" / "part" / "ckpt" / "step_00000020.h5"
    for other in ("adamw", "sgd"):
        assert_clean_error(train("--config", part, "--optim.name", other, "--resume", ckpt,
                                 "--train.steps", "25"), "optim.name = muon, not " + other)
    adam_ckpt = tmp_path / "runs" / "adam" / "ckpt" / "step_00000005.h5"
    train("--config", tiny_config(tmp_path, name="adam"), "--train.steps", "5", check=True)
    assert_clean_error(train("--config", part, *muon, "--resume", adam_ckpt, "--run.name", "x"),
                       "optim.name = adamw, not muon")
    # Weights only (fine-tuning) cross optimizers freely.
    train("--config", part, *muon, "--init-from", adam_ckpt, "--run.name", "ft",
          "--train.steps", "3", check=True)


def test_rotary_positions_resume_bit_exactly_and_refuse_the_other_positions(tmp_path):
    rope = ["--model.position", "rope", "--model.rope_theta", "500"]
    part, _ = resume_matches_uninterrupted(tmp_path, *rope)
    ckpt = tmp_path / "runs" / "part" / "ckpt" / "step_00000020.h5"
    w = weights(ckpt)
    assert "wpe" not in w and "wte/weight" in w
    with h5py.File(ckpt, "r") as f:
        assert f["model"].attrs["position"] == b"rope"
        assert f["model"].attrs["rope_theta"] == 500.0
    # A rope checkpoint is not a learned-position model, nor one with another base, and back.
    assert_clean_error(train("--config", part, "--resume", ckpt, "--train.steps", "25"),
                       str(ckpt), "rope with rope_theta=500", "model.position = learned")
    assert_clean_error(train("--config", part, *rope[:2], "--init-from", ckpt, "--run.name", "x"),
                       "rope with rope_theta=500", "rope with rope_theta=10000")
    assert_clean_error(train("--config", part, *rope, "--model.sliding_window", "4",
                             "--model.rope_local_theta", "50", "--init-from", ckpt,
                             "--run.name", "x"),
                       "windowed layers rotate by the base 0", "model.rope_local_theta = 50")
    learned = tmp_path / "runs" / "lp" / "ckpt" / "step_00000005.h5"
    train("--config", tiny_config(tmp_path, name="lp"), "--train.steps", "5", check=True)
    assert_clean_error(train("--config", part, *rope, "--init-from", learned, "--run.name", "y"),
                       "learned (wpe)", "model.position = rope")
    # Fine-tuning a rope model from its checkpoint works, and evaluates as it trained.
    train("--config", part, *rope, "--init-from", ckpt, "--run.name", "ft", "--train.steps", "2",
          check=True)
    # Context extension (--extend-positions): the checkpoint's weights (one step at lr 0 keeps
    # them bit for bit) under the config's positions, twice the context, another base and YaRN
    # over the old context, each change said; the new checkpoint holds the new positions.
    longer = ["--model.seq_len", "32", "--model.rope_scaling", "yarn",
              "--model.rope_scaling_factor", "2", "--model.rope_original_positions", "16"]
    assert_clean_error(train("--config", part, *rope[:2], *longer, "--init-from", ckpt,
                             "--run.name", "x"), "seq_len=16", "seq_len=32", "--extend-positions")
    p = train("--config", part, *rope[:2], *longer, "--init-from", ckpt, "--extend-positions",
              "--run.name", "ext", "--train.steps", "1", "--train.lr", "0", check=True)
    assert "seq_len 16 -> 32, rope_theta 500 -> 10000, rope scaling none -> yarn" in p.stdout, \
        p.stdout
    ext = tmp_path / "runs" / "ext" / "ckpt" / "step_00000001.h5"
    assert weights(ext).keys() == w.keys()
    for k in w:
        assert np.array_equal(weights(ext)[k], w[k]), k
    with h5py.File(ext, "r") as f:
        a = f["model"].attrs
        assert (a["seq_len"], a["rope_theta"], a["rope_scaling"]) == (32, 10000.0, b"yarn")
    assert_clean_error(train("--config", part, *rope, "--extend-positions", "--run.name", "z"),
                       "--extend-positions", "--init-from")
    assert_clean_error(train("--config", part, *rope, "--init-from", learned,
                             "--extend-positions", "--run.name", "y"),
                       "learned (wpe)", "model.position = rope")


def test_rmsnorm_checkpoints_hold_no_norm_biases_and_refuse_layernorm(tmp_path):
    rms = ["--model.norm", "rmsnorm"]
    cfg = tiny_config(tmp_path, name="rms")
    train("--config", cfg, *rms, "--train.steps", "5", check=True)
    ckpt = tmp_path / "runs" / "rms" / "ckpt" / "step_00000005.h5"
    w = weights(ckpt)
    assert "h/0/ln_1/weight" in w and "ln_f/weight" in w
    assert not [k for k in w if k.endswith("ln_1/bias") or k.endswith("ln_2/bias")
                or k == "ln_f/bias"]
    with h5py.File(ckpt, "r") as f:
        assert f["model"].attrs["norm"] == b"rmsnorm"
        assert f["model"].attrs["position"] == b"learned"
    assert_clean_error(train("--config", cfg, "--resume", ckpt, "--train.steps", "8"),
                       "norm rmsnorm", "model.norm = layernorm")
    ln = tmp_path / "runs" / "ln" / "ckpt" / "step_00000005.h5"
    train("--config", tiny_config(tmp_path, name="ln"), "--train.steps", "5", check=True)
    assert_clean_error(train("--config", cfg, *rms, "--init-from", ln, "--run.name", "x"),
                       "norm layernorm", "model.norm = rmsnorm")
    p = train("--config", cfg, *rms, "--resume", ckpt, "--train.steps", "8", check=True)
    assert "resumed from" in p.stdout
    # model.bias = false: no bias tensor at all; the other setting is refused both ways.
    nb = tmp_path / "runs" / "nb" / "ckpt" / "step_00000005.h5"
    train("--config", tiny_config(tmp_path, name="nb"), "--model.bias", "false", "--train.steps",
          "5", check=True)
    assert not [k for k in weights(nb) if k.endswith("bias")]
    assert_clean_error(train("--config", cfg, "--init-from", nb, "--run.name", "y"),
                       "without biases", "model.bias = true")
    assert_clean_error(train("--config", cfg, "--model.bias", "false", "--init-from", ln,
                             "--run.name", "z"), "with biases", "model.bias = false")
    # SwiGLU: c_fc holds gate and up rows; another MLP or width is refused.
    sw = tmp_path / "runs" / "sw" / "ckpt" / "step_00000005.h5"
    train("--config", tiny_config(tmp_path, name="sw"), "--model.mlp", "swiglu",
          "--train.steps", "5", check=True)
    with h5py.File(sw, "r") as f:
        assert f["model"].attrs["mlp"] == b"swiglu" and f["model"].attrs["mlp_hidden"] == 128
        assert f["model/h/0/mlp/c_fc/weight"].shape == (256, 32)
        assert f["model/h/0/mlp/c_proj/weight"].shape == (32, 128)
    assert_clean_error(train("--config", cfg, "--init-from", sw, "--run.name", "w"),
                       "swiglu MLP of 128", "model.mlp = gelu with 128")
    assert_clean_error(train("--config", cfg, "--model.mlp", "swiglu", "--model.mlp_hidden", "96",
                             "--init-from", sw, "--run.name", "v"), "model.mlp = swiglu with 96")
    assert_clean_error(train("--config", cfg, "--model.mlp_hidden", "33", "--parallel.tp", "2",
                             "--plan", "--plan-ranks", "2"), "parallel.tp", "MLP's hidden units (33")
    # An untied output layer: lm_head/weight beside wte; the other setting is refused both ways.
    un = tmp_path / "runs" / "un" / "ckpt" / "step_00000005.h5"
    train("--config", tiny_config(tmp_path, name="un"), "--model.tie_embeddings", "false",
          "--train.steps", "5", check=True)
    with h5py.File(un, "r") as f:
        assert f["model/lm_head/weight"].shape == f["model/wte/weight"].shape == (512, 32)
        assert int(f["model"].attrs["tie_embeddings"]) == 0
        assert not np.array_equal(f["model/lm_head/weight"][()], f["model/wte/weight"][()])
    assert_clean_error(train("--config", cfg, "--init-from", un, "--run.name", "u"),
                       "is lm_head (untied)", "model.tie_embeddings = true")
    assert_clean_error(train("--config", cfg, "--model.tie_embeddings", "false", "--init-from", ln,
                             "--run.name", "t"), "is wte (tied)", "model.tie_embeddings = false")
    # Grouped-query attention: c_attn holds q for both heads and k, v for one (multi-query); the
    # attribute says so, and a checkpoint with another count is refused both ways; tp must split
    # the key/value heads.
    kv = tmp_path / "runs" / "kv" / "ckpt" / "step_00000005.h5"
    train("--config", tiny_config(tmp_path, name="kv"), "--model.n_kv_head", "1",
          "--train.steps", "5", check=True)
    with h5py.File(kv, "r") as f:
        assert int(f["model"].attrs["n_kv_head"]) == 1
        assert f["model/h/0/attn/c_attn/weight"].shape == (32 + 2 * 1 * 16, 32)
    assert_clean_error(train("--config", cfg, "--init-from", kv, "--run.name", "k"),
                       "1 key/value heads", "asks for 2")
    assert_clean_error(train("--config", cfg, "--model.n_kv_head", "1", "--init-from", ln,
                             "--run.name", "j"), "2 key/value heads", "asks for 1")
    assert_clean_error(train("--config", cfg, "--model.n_kv_head", "1", "--parallel.tp", "2",
                             "--plan", "--plan-ranks", "2"), "parallel.tp", "model.n_kv_head (1)")
    # QK-norm: q_norm and k_norm [hd] beside c_attn, the attribute, refused both ways.
    qk = tmp_path / "runs" / "qk" / "ckpt" / "step_00000005.h5"
    train("--config", tiny_config(tmp_path, name="qk"), "--model.qk_norm", "true",
          "--train.steps", "5", check=True)
    with h5py.File(qk, "r") as f:
        assert int(f["model"].attrs["qk_norm"]) == 1
        assert f["model/h/1/attn/q_norm/weight"].shape == f["model/h/1/attn/k_norm/weight"].shape
        assert f["model/h/1/attn/q_norm/weight"].shape == (16,)
        assert not np.allclose(f["model/h/1/attn/k_norm/weight"][()], 1.0)  # trained
    with h5py.File(ln, "r") as f:
        assert int(f["model"].attrs["qk_norm"]) == 0 and "q_norm" not in f["model/h/0/attn"]
    assert_clean_error(train("--config", cfg, "--init-from", qk, "--run.name", "q"),
                       "with q and k norms", "model.qk_norm = false")
    assert_clean_error(train("--config", cfg, "--model.qk_norm", "true", "--init-from", ln,
                             "--run.name", "p"), "without q and k norms", "model.qk_norm = true")
    # ... over all heads (model.qk_norm_full): q_norm [n_head·hd], k_norm [n_kv_head·hd], the
    # attribute; a per-head config does not read it, nor it a per-head checkpoint.
    qf = tmp_path / "runs" / "qf" / "ckpt" / "step_00000005.h5"
    train("--config", tiny_config(tmp_path, name="qf"), "--model.qk_norm", "true",
          "--model.qk_norm_full", "true", "--model.n_kv_head", "1", "--train.steps", "5",
          check=True)
    with h5py.File(qf, "r") as f:
        assert int(f["model"].attrs["qk_norm_full"]) == 1
        assert f["model/h/1/attn/q_norm/weight"].shape == (32,)
        assert f["model/h/1/attn/k_norm/weight"].shape == (16,)
        assert not np.allclose(f["model/h/1/attn/q_norm/weight"][()], 1.0)  # trained
    assert_clean_error(train("--config", cfg, "--model.qk_norm", "true", "--model.n_kv_head", "1",
                             "--init-from", qf, "--run.name", "r"), "over all heads",
                       "model.qk_norm_full = false")
    assert_clean_error(train("--config", cfg, "--model.qk_norm", "true", "--model.qk_norm_full",
                             "true", "--init-from", qk, "--run.name", "s"), "per head",
                       "model.qk_norm_full = true")
    # Multi-head latent attention: its five sizes in attributes; a config with other sizes, or
    # without it, does not read the checkpoint, nor an MLA config a plain one.
    mla = ["--model.position", "rope", "--model.kv_lora_rank", "16", "--model.q_lora_rank", "8",
           "--model.qk_nope_head_dim", "8", "--model.qk_rope_head_dim", "4",
           "--model.v_head_dim", "8"]
    ml = tmp_path / "runs" / "ml" / "ckpt" / "step_00000005.h5"
    train("--config", tiny_config(tmp_path, name="ml"), *mla, "--train.steps", "5", check=True)
    with h5py.File(ml, "r") as f:
        attrs = f["model"].attrs
        assert [int(attrs[k]) for k in ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim",
                                        "qk_rope_head_dim", "v_head_dim")] == [16, 8, 8, 4, 8]
        assert f["model/h/1/attn/kv_b/weight"].shape == (2 * (8 + 8), 16)
        assert "h/1/attn/c_attn/weight" not in f["model"]
    assert_clean_error(train("--config", cfg, *mla[:-1], "16", "--init-from", ml, "--run.name",
                             "m1"), "v_head_dim 8", "v_head_dim 16")
    assert_clean_error(train("--config", cfg, "--model.position", "rope", "--init-from", ml,
                             "--run.name", "m2"), "with multi-head latent attention",
                       "asks for no multi-head latent attention")
    rope = tmp_path / "runs" / "rp" / "ckpt" / "step_00000005.h5"
    train("--config", tiny_config(tmp_path, name="rp"), "--model.position", "rope",
          "--train.steps", "5", check=True)
    assert_clean_error(train("--config", cfg, *mla, "--init-from", rope, "--run.name", "m3"),
                       "with no multi-head latent attention", "kv_lora_rank 16")


def _spiky_run(tmp_path, name, **train):
    """A config on data the model learns within a few steps (a period-4 token pattern), except
    the batch of step index 14: random tokens, a loss spike."""
    T, B, spike = 16, 8, 14
    d = tmp_path / "spiky"
    if not d.exists():
        d.mkdir()
        n = 30 * B * T + 1
        tokens = np.tile(np.arange(4) * 7, n // 4 + 1)[:n]
        tokens[spike * B * T:(spike + 1) * B * T + 1] = np.random.default_rng(3).integers(
            0, 512, B * T + 1)
        write_shard(d / "train_000.bin", tokens)
        write_shard(d / "val_000.bin", np.tile(np.arange(4) * 7, 200))
    over = dict(train__lr=1e-2, train__warmup_steps=1, train__skip_window=8,
                data__train=f"{d}/train_*.bin", data__val=f"{d}/val_*.bin", data__shuffle="false",
                eval__sequences=8, checkpoint__every=1, sample__length=0)
    over.update({f"train__{k}": v for k, v in train.items()})
    return tiny_config(tmp_path, name=name, **over)


def _train_metrics(run_dir):
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        return f["train/loss"][:], f["train/grad_norm"][:], f["train/skipped"][:]


def test_update_skipping_keeps_the_weights_at_a_loss_spike_and_resumes_exactly(tmp_path):
    cfg = _spiky_run(tmp_path, "skip", skip_loss_z=4)
    p = train("--config", cfg, check=True)
    assert "step 15 skipped: loss" in p.stdout, p.stdout
    loss, norm, skipped = _train_metrics(tmp_path / "runs" / "skip")
    assert list(np.flatnonzero(skipped)) == [14], skipped
    # The rule, computed here: the z-score of each loss against the 8 before it.
    for s in range(8, len(loss)):
        w = loss[s - 8:s]
        z = (loss[s] - w.mean()) / w.std()
        assert (z > 4) == (s == 14), (s, z)
    ckpt = tmp_path / "runs" / "skip" / "ckpt"
    before, after = ckpt / "step_00000014.h5", ckpt / "step_00000015.h5"
    with h5py.File(before, "r") as a, h5py.File(after, "r") as b:
        for group in ("model", "optimizer/m", "optimizer/v"):
            names = []
            a[group].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            for n in names:
                assert np.array_equal(a[group][n][()], b[group][n][()]), f"{group}/{n} changed"
        assert len(b.attrs["loss_window"]) == 8 and b.attrs["loss_window"][-1] == loss[14]
    # Without skipping the same step moves the weights (what the check above can see).
    plain = _spiky_run(tmp_path, "plain")
    train("--config", plain, check=True)
    _, _, none_skipped = _train_metrics(tmp_path / "runs" / "plain")
    assert not none_skipped.any()
    pc = tmp_path / "runs" / "plain" / "ckpt"
    with h5py.File(pc / "step_00000014.h5", "r") as a, h5py.File(pc / "step_00000015.h5", "r") as b:
        assert not np.array_equal(a["model/h/0/mlp/c_fc/weight"][()], b["model/h/0/mlp/c_fc/weight"][()])
    # Resumed at step 10 (the windows come from the checkpoint: fresh ones would not be full at
    # the spike), the run skips the same step and ends bit for bit where the straight one does.
    part = _spiky_run(tmp_path, "part", skip_loss_z=4)
    train("--config", part, "--train.steps", 20, check=True)
    pk = tmp_path / "runs" / "part" / "ckpt"
    for step in range(11, 21):
        (pk / f"step_{step:08d}.h5").unlink()
    (pk / "latest").write_text("step_00000010.h5\n")
    p = train("--config", part, check=True)
    assert "resumed from" in p.stdout and "step 15 skipped" in p.stdout, p.stdout
    l2, _, s2 = _train_metrics(tmp_path / "runs" / "part")
    assert np.array_equal(loss, l2) and np.array_equal(skipped, s2)
    assert weights(ckpt / "step_00000020.h5").keys() == weights(pk / "step_00000020.h5").keys()
    for k, v in weights(ckpt / "step_00000020.h5").items():
        assert np.array_equal(v, weights(pk / "step_00000020.h5")[k]), k


def test_update_skipping_skips_non_finite_steps_and_stops_a_diverged_run(tmp_path):
    # lr 1e30 without clipping: the weights overflow after one update, every later loss is NaN.
    cfg = _spiky_run(tmp_path, "nan", skip_loss_z=4, skip_window=4, lr=1e30, grad_clip=0)
    p = train("--config", cfg)
    assert_clean_error(p, "training diverged: the last 4 steps (train.skip_window) were all skipped")
    assert "step 2 skipped: loss" in p.stdout, p.stdout
    _, _, skipped = _train_metrics(tmp_path / "runs" / "nan")
    assert list(skipped) == [0, 1, 1, 1, 1], skipped
    # Resumed after two of those skips, the run stops after two more: the count travels in the
    # checkpoint.
    ck = tmp_path / "runs" / "nan" / "ckpt" / "step_00000003.h5"
    p = train("--config", cfg, "--resume", ck, "--run.name", "nan2")
    assert_clean_error(p, "the last 4 steps (train.skip_window) were all skipped, up to step 5")


def test_blended_datasets_resume_exactly_and_bad_blends_are_refused(tmp_path):
    d = tmp_path / "data"
    cfg = tiny_config(tmp_path, name="blend")  # writes data/train_00[01] (shuffled data)
    write_shard(d / "other_000.bin", np.random.default_rng(4).integers(0, 100, 700))
    blend = ["--data.train", f"{d}/train_*.bin, {d}/other_*.bin", "--data.train_weights", "3, 1"]
    _, p = resume_matches_uninterrupted(tmp_path, *blend)
    assert "in 2 blended datasets" in p.stdout, p.stdout
    _, l1 = losses(tmp_path / "runs" / "straight")
    # Another weighting reads other batches: the weights are not ignored.
    train("--config", cfg, "--run.name", "blend13", "--data.train", blend[1],
          "--data.train_weights", "1, 3", check=True)
    _, l3 = losses(tmp_path / "runs" / "blend13")
    assert not np.array_equal(l1, l3)
    for weights, needle in (("3", "data.train_weights has 1 weight(s) but data.train 2"),
                            ("3, 0", "'0' (weight 2) must be a finite number > 0")):
        assert_clean_error(train("--config", cfg, "--data.train", blend[1],
                                 "--data.train_weights", weights, "--run.name", "bad"), needle)
    assert_clean_error(train("--config", cfg, "--data.train", f"{d}/train_*.bin, {d}/nope_*.bin",
                             "--data.train_weights", "1,1", "--run.name", "bad2"),
                       f"data.train ({d}/nope_*.bin) matches no files")
    for train_set, weights, needle in (
            # without weights the list is one glob
            (blend[1], "", "several datasets, separated by commas, need data.train_weights"),
            (blend[1], "0x3, 1", "'0x3' (weight 1) must be a finite number > 0"),
            (f"{d}/other_*.bin, {d}/other_*.bin", "1, 1", "glob 2 (" + f"{d}/other_*.bin) is glob 1 "
             "again"),
            # one shard in two datasets would be drawn at both weights
            (f"{d}/train_*.bin, {d}/train_000.bin", "1, 1", "train_000.bin is in data.train (")):
        assert_clean_error(train("--config", cfg, "--data.train", train_set,
                                 "--data.train_weights", weights, "--run.name", "bad3"), needle)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would wait for a writer, and no signal but KILL ends that
    assert_clean_error(train("--config", cfg, "--data.document_mask", "<|endoftext|>",
                             "--data.vocab", fifo, "--run.name", "bad4"),
                       "data.document_mask", "is not a regular file")


def test_more_validation_sets_are_scored_into_metrics_and_resume(tmp_path):
    d = tmp_path / "data"
    cfg = tiny_config(tmp_path, name="sets")
    write_shard(d / "other_000.bin", np.random.default_rng(8).integers(0, 50, 600))
    sets = ["--eval.sets", f"same={d}/val_*.bin, other={d}/other_*.bin"]
    p = train("--config", cfg, *sets, check=True)
    assert " | same loss " in p.stdout and " | other loss " in p.stdout, p.stdout
    with h5py.File(tmp_path / "runs" / "sets" / "metrics.h5", "r") as f:
        val_step, val_loss = f["val/step"][:], f["val/loss"][:]
        same = {k: f["val_sets/same"][k][:] for k in ("step", "loss", "accuracy")}
        other = f["val_sets/other/loss"][:]
        acc = f["val/accuracy"][:]
    # The set that reads data.val's shards is data.val, to the bit; the other one differs.
    assert list(same["step"]) == list(val_step) == [0, 5, 10, 15, 20]
    assert np.array_equal(same["loss"], val_loss) and np.array_equal(same["accuracy"], acc)
    assert len(other) == 5 and not np.allclose(other, val_loss)
    # Resumed at step 10: the rows after it are dropped, then written again, no duplicates.
    part = tiny_config(tmp_path, name="sets_part")
    train("--config", part, *sets, check=True)
    ck = tmp_path / "runs" / "sets_part" / "ckpt"
    for step in (15, 20):
        (ck / f"step_{step:08d}.h5").unlink()
    (ck / "latest").write_text("step_00000010.h5\n")
    train("--config", part, *sets, check=True)
    with h5py.File(tmp_path / "runs" / "sets_part" / "metrics.h5", "r") as f:
        assert list(f["val_sets/other/step"][:]) == [0, 5, 10, 15, 20]
        assert np.array_equal(f["val_sets/other/loss"][:], other)
    # Resumed at 10 again without the set "same": its rows from step 10 on are cut too.
    for step in (15, 20):
        (ck / f"step_{step:08d}.h5").unlink()
    (ck / "latest").write_text("step_00000010.h5\n")
    train("--config", part, "--eval.sets", f"other={d}/other_*.bin", check=True)
    with h5py.File(tmp_path / "runs" / "sets_part" / "metrics.h5", "r") as f:
        assert list(f["val_sets/same/step"][:]) == [0, 5]
        assert list(f["val_sets/other/step"][:]) == [0, 5, 10, 15, 20]
    p = train("--config", cfg, *sets, "--eval-only", "--resume",
              tmp_path / "runs" / "sets" / "ckpt" / "step_00000020.h5", check=True)
    assert "other loss" in p.stdout
    for value, needle in (("nope", "'nope' is not name=GLOB"),
                          (f"a={d}/val_*.bin, a={d}/val_*.bin", "name 'a' repeats"),
                          (f"a b={d}/val_*.bin", "name 'a b' must be letters"),
                          (f"a={d}/val_*.bin,", "has an empty entry"),
                          (f"x={d}/missing_*.bin", "eval.sets (x)")):
        assert_clean_error(train("--config", cfg, "--eval.sets", value, "--run.name", "bad"), needle)
    assert_clean_error(train("--config", cfg, "--eval.sets", f"short={d}/other_*.bin",
                             "--eval.sequences", 50, "--run.name", "bad"),
                       "eval.sets (short) holds")


def test_run_length_in_sequences_through_a_ramp(tmp_path):
    """train.sequences sets the steps: batches of 4 over the first 16 sequences (4 steps), then
    8; 52 sequences take 4 + 5 steps (56 trained), which the start line, metrics.h5's rows and
    its tokens say."""
    cfg = tiny_config(tmp_path, name="len")
    p = train("--config", cfg, "--train.sequences", "52", "--train.batch_rampup", "4, 4, 16",
              "--train.steps", "1000", check=True)
    assert "9 steps for train.sequences = 52" in p.stdout, p.stdout
    assert "step     9/9 " in p.stdout, p.stdout
    with h5py.File(tmp_path / "runs" / "len" / "metrics.h5") as f:
        assert list(f["train/step"][...]) == list(range(9))
        assert list(f["train/tokens"][...]) == [16 * n for n in (4, 8, 12, 16, 24, 32, 40, 48, 56)]


def test_damaged_checkpoints(tmp_path):
    cfg = tiny_config(tmp_path, name="a")
    train("--config", cfg, "--train.steps", "5", check=True)
    good = tmp_path / "runs" / "a" / "ckpt" / "step_00000005.h5"
    assert good.exists()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_clean_error(train("--config", cfg, "--resume", truncated), "truncated.h5")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    assert_clean_error(train("--config", cfg, "--resume", foreign), "foreign.h5")
    # The update-skipping state of the root attributes, of the wrong kind.
    # ... and the tokens trained on (where a batch-size ramp continues): whole sequences only.
    for attr, value in (("loss_window", "not numbers"), ("grad_norm_window", np.zeros((2, 2))),
                        ("skipped_in_a_row", 1.5), ("tokens_seen", np.int64(-32)),
                        ("tokens_seen", np.int64(33)), ("step", np.int64(-5)),
                        ("step", np.int64(2**62)), ("loss_window", [1.0, np.nan, 2.0]),
                        ("grad_norm_window", [np.inf]), ("epoch", np.int64(-1))):
        bad = tmp_path / f"bad_{attr}.h5"
        bad.write_bytes(good.read_bytes())
        with h5py.File(bad, "r+") as f:
            f.attrs[attr] = value
        assert_clean_error(train("--config", cfg, "--resume", bad), f"bad_{attr}.h5", attr)
    # The /model attributes of the positions: an unknown kind, rope without its base, a base
    # that is no number.
    for name, edit, needle in (
            ("position", {"position": "alibi"}, "'alibi', not learned or rope"),
            ("theta", {"position": "rope"}, "rope_theta of /model is missing"),
            ("theta_kind", {"position": "rope", "rope_theta": "ten"}, "rope_theta"),
            ("norm", {"norm": "batchnorm"}, "'batchnorm', not layernorm or rmsnorm"),
            ("bias", {"bias": 2}, "attribute bias of /model is 2"),
            ("mlp", {"mlp": "relu3"}, "'relu3', not gelu, gelu_exact, swiglu, geglu, relu2 or relu"),
            ("embed_scale", {"embed_scale": -2.0}, "attribute embed_scale of /model is -2"),
            ("parallel", {"parallel_residual": 2}, "attribute parallel_residual of /model is 2"),
            ("branch", {"branch_norm": 2}, "attribute branch_norm of /model is 2"),
            ("shared", {"shared_norm": 1}, "attribute shared_norm of /model is 1 without "
             "parallel_residual"),
            ("head_bias", {"head_bias": 1}, "attribute head_bias of /model is 1 with a tied head"),
            ("tied", {"tie_embeddings": 3}, "attribute tie_embeddings of /model is 3"),
            ("hidden", {"mlp_hidden": 0}, "attribute mlp_hidden of /model is 0"),
            ("kv", {"n_kv_head": 3}, "attribute n_kv_head of /model is 3"),
            ("qk", {"qk_norm": 2}, "attribute qk_norm of /model is 2"),
            ("qk_full", {"qk_norm_full": 1}, "attribute qk_norm_full of /model is 1 without "
             "qk_norm"),
            ("pre_norm", {"pre_norm": 0}, "attribute pre_norm of /model is 0 without branch_norm"),
            ("qkv_bias", {"qkv_bias": 1}, "attributes bias and qkv_bias of /model are both 1"),
            ("mlp_bias", {"mlp_bias": 1}, "attributes bias and mlp_bias of /model are both 1"),
            ("mlp_bias2", {"bias": 0, "mlp_bias": 2}, "attribute mlp_bias of /model is 2"),
            ("norm_bias", {"norm_bias": 1}, "attributes bias and norm_bias of /model are both 1"),
            ("norm_bias_rms", {"bias": 0, "norm": "rmsnorm", "norm_bias": 1},
             "attribute norm_bias of /model is 1 with norm rmsnorm"),
            ("eps", {"norm_eps": 0.0}, "attribute norm_eps of /model is 0"),
            ("head_dim", {"head_dim": -4}, "attribute head_dim of /model is -4"),
            ("rotary_odd", {"position": "rope", "rope_theta": 10000.0, "rotary_dim": 3},
             "attribute rotary_dim of /model is 3"),
            ("rotary_learned", {"rotary_dim": 4}, "attribute rotary_dim of /model is 4"),
            ("window", {"sliding_window": -3}, "attribute sliding_window of /model is -3"),
            ("softcap", {"logit_softcap": -1.0}, "attribute logit_softcap of /model is -1"),
            ("attn_softcap", {"attn_softcap": -1.0}, "attribute attn_softcap of /model is -1"),
            ("clip_qkv", {"clip_qkv": -1.0}, "attribute clip_qkv of /model is -1"),
            ("attn_sinks", {"attn_sinks": 2}, "attribute attn_sinks of /model is 2"),
            ("glu_limit", {"mlp": "swiglu", "glu_limit": 1e-46},
             "attribute glu_limit of /model is 1e-46, not 0 or in [1e-6, 1e4]"),
            ("glu_alpha", {"mlp": "swiglu", "glu_alpha": 0.0},
             "attribute glu_alpha of /model is 0"),
            ("glu_gelu", {"glu_offset": 1.0}, "attributes glu_alpha, glu_limit, glu_offset of "
             "/model are 1, 0, 1 with mlp gelu: they shape SwiGLU only"),
            ("logit_scale", {"logit_scale": 0.0}, "attribute logit_scale of /model is 0"),
            ("residual_scale", {"residual_scale": -0.5},
             "attribute residual_scale of /model is -0.5"),
            ("attn_scale", {"attn_scale": 1e9}, "attribute attn_scale of /model is 1e+09"),
            ("mup", {"mup_base_width": -8}, "attribute mup_base_width of /model is -8"),
            ("full_every", {"full_attention_every": 2},
             "attribute full_attention_every of /model is 2"),
            ("full_first", {"sliding_window": 4, "full_attention_first": 1},
             "attribute full_attention_first of /model is 1 without full_attention_every"),
            ("local_theta", {"position": "rope", "rope_theta": 10000.0, "rope_local_theta": 0.5},
             "attribute rope_local_theta of /model is 0.5, not 0 or a finite number > 1"),
            ("nope_range", {"position": "rope", "rope_theta": 10000.0, "nope_every": -2},
             "attribute nope_every of /model is -2, not in [0, 2^30]"),
            ("nope_learned", {"nope_every": 2}, "attribute nope_every of /model is 2"),
            ("rscale", {"position": "rope", "rope_theta": 10000.0, "rope_scaling": "ntk"},
             "'ntk', not none, llama3, yarn, longrope or linear"),
            ("rscale_longrope", {"position": "rope", "rope_theta": 10000.0,
                                 "rope_scaling": "longrope", "rope_scaling_factor": 2.0,
                                 "rope_original_positions": 8},
             "rope_short_factor of /model is missing (rope_scaling is longrope)"),
            ("rscale_longrope_pairs", {"position": "rope", "rope_theta": 10000.0,
                                       "rope_scaling": "longrope", "rope_scaling_factor": 2.0,
                                       "rope_original_positions": 8,
                                       "rope_short_factor": np.ones(3),
                                       "rope_long_factor": np.ones(3)},
             "not one per rotated pair"),
            ("rscale_yarn", {"position": "rope", "rope_theta": 10000.0, "rope_scaling": "yarn"},
             "rope_scaling_factor of /model is missing (rope_scaling is yarn)"),
            ("rscale_mscale", {"position": "rope", "rope_theta": 10000.0, "rope_scaling": "yarn",
                               "rope_scaling_factor": 4.0, "rope_original_positions": 8,
                               "rope_yarn_beta_fast": 32.0, "rope_yarn_beta_slow": 1.0,
                               "rope_yarn_mscale_all_dim": -1.0},
             "rope_yarn_mscale_all_dim (-1) of /model"),
            ("rscale_truncate", {"position": "rope", "rope_theta": 10000.0, "rope_scaling": "yarn",
                                 "rope_scaling_factor": 4.0, "rope_original_positions": 8,
                                 "rope_yarn_beta_fast": 32.0, "rope_yarn_beta_slow": 1.0,
                                 "rope_yarn_truncate": 2},
             "attribute rope_yarn_truncate of /model is 2, not 0 or 1"),
            ("rscale_factor", {"position": "rope", "rope_theta": 10000.0, "rope_scaling": "llama3"},
             "rope_scaling_factor of /model is missing")):
        bad = tmp_path / f"bad_{name}.h5"
        bad.write_bytes(good.read_bytes())
        with h5py.File(bad, "r+") as f:
            for k, v in edit.items():
                f["model"].attrs[k] = np.bytes_(v) if isinstance(v, str) else v
        assert_clean_error(train("--config", cfg, "--resume", bad), f"bad_{name}.h5", needle)
    shard = tmp_path / "data" / "train_000.bin"
    assert_clean_error(train("--config", cfg, "--init-from", shard, "--run.name", "c"),
                       "train_000.bin")
    assert_clean_error(train("--config", cfg, "--init-from", shard), "train_000.bin")
    # Shapes that do not match the config.
    assert_clean_error(train("--config", cfg, "--resume", good, "--model.n_embd", "64",
                             "--run.name", "b"), "n_embd")
    assert_clean_error(train("--config", cfg, "--eval-only", "--resume", good,
                             "--model.n_layer", "3"), "n_layer")
    # Model options the checkpoint's model does not have: a window, caps, scales, μP, parallel
    # blocks, branch norms; each named with what the checkpoint holds.
    for key, value, held in (
            ("sliding_window", "4", "attention window is the whole context"),
            ("logit_softcap", "30", "logits are capped at 0"),
            ("attn_softcap", "50", "attention scores are capped at 0"),
            ("residual_scale", "0.2", "branches' outputs are scaled by 1"),
            ("logit_scale", "0.5", "logits are scaled by 1"),
            ("attn_scale", "0.01", "attention scale is 0"),
            ("mup_base_width", "16", "μP base width 0"),
            ("embed_scale", "2", "embedding is scaled by 1"),
            ("parallel_residual", "true", "without parallel attention and MLP"),
            ("branch_norm", "true", "without norms on the branches' outputs")):
        assert_clean_error(train("--config", cfg, "--eval-only", "--resume", good,
                                 f"--model.{key}", value), held, f"model.{key} = {value}")


def test_init_from_eval_only_and_generate(tmp_path):
    cfg = tiny_config(tmp_path, name="pre")
    train("--config", cfg, "--train.steps", "10", check=True)
    ckpt = tmp_path / "runs" / "pre" / "ckpt" / "step_00000010.h5"
    # Fine-tune on other data: a fresh optimizer, steps counted from 0.
    rng = np.random.default_rng(5)
    write_shard(tmp_path / "ft.bin", rng.integers(0, 100, 3000))
    p = train("--config", cfg, "--init-from", ckpt, "--run.name", "ft", "--data.train",
              tmp_path / "ft.bin", "--train.steps", "5", check=True)
    assert "initialized weights from" in p.stdout
    steps, ft_losses = losses(tmp_path / "runs" / "ft")
    assert list(steps) == list(range(5))
    p = train("--config", cfg, "--eval-only", "--resume", ckpt, check=True)
    assert "val loss" in p.stdout and "val accuracy" in p.stdout
    val = float(p.stdout.split("val loss")[1].split()[0])
    with h5py.File(tmp_path / "runs" / "pre" / "metrics.h5", "r") as f:
        assert abs(f["val/loss"][-1] - val) < 1e-5

    # Intact (checksums that match) but not what the model is: refused on every path that
    # loads it, naming the tensor (eval-only printed "val loss nan", --init-from "training
    # diverged", an extra tensor was ignored).
    def edited(name, edit):
        path = tmp_path / name
        shutil.copy(ckpt, path)
        with h5py.File(path, "r+") as f:
            edit(f)
        return path

    def poison(f, name):
        d = f[name]
        a = d[...]
        a.flat[3] = np.nan
        d[...] = a
        d.attrs.create("checksum", np.uint32(zlib.crc32(a.astype("<f4").tobytes())), dtype="<u4")

    nan_w = edited("nan_w.h5", lambda f: poison(f, "model/h/1/attn/c_attn/weight"))
    assert_clean_error(train("--config", cfg, "--eval-only", "--resume", nan_w),
                       "dataset /model/h/1/attn/c_attn/weight holds values that are not finite")
    assert_clean_error(train("--config", cfg, "--init-from", nan_w, "--run.name", "ft_nan"),
                       "dataset /model/h/1/attn/c_attn/weight holds values that are not finite")
    nan_v = edited("nan_v.h5", lambda f: poison(f, "optimizer/v/wpe/weight"))
    assert_clean_error(train("--config", cfg, "--resume", nan_v, "--run.name", "r_nan"),
                       "dataset /optimizer/v/wpe/weight holds values that are not finite")
    extra = edited("extra.h5", lambda f: f.copy(f["model/ln_f"], "model/h/9"))
    assert_clean_error(train("--config", cfg, "--eval-only", "--resume", extra),
                       "dataset /model/h/9/", "is not a tensor of the model")


def test_loss_masks_batch_without_targets_and_bad_val(tmp_path):
    """A step whose batch the masks leave without a counted target gets no update (its loss
    NaN, the run goes on), and a validation set without one is refused before training."""
    cfg = tiny_config(tmp_path, name="m", data__shuffle="false", train__steps=3,
                      checkpoint__every=1, eval__every=0)
    data = tmp_path / "data"
    n0 = 6000
    first = np.zeros(n0, np.uint8)
    first[8 * 16 + 1:] = 1  # the 8 sequences of step 0: no counted target
    write_loss_mask(data / "train_000.bin", first)
    write_loss_mask(data / "val_000.bin", np.ones(2000, np.uint8))
    p = train("--config", cfg, check=True)
    assert "step 1: the loss masks count no target of its batch; no update" in p.stdout, p.stdout
    steps, loss = losses(tmp_path / "runs" / "m")
    assert np.isnan(loss[0]) and np.all(np.isfinite(loss[1:]))
    ckpt = tmp_path / "runs" / "m" / "ckpt"
    w0, w1 = weights(ckpt / "step_00000001.h5"), weights(ckpt / "step_00000002.h5")
    with h5py.File(tmp_path / "runs" / "m" / "metrics.h5", "r") as f:
        assert f["train/skipped"][0] == 1 and f["train/skipped"][1] == 0
    assert any(not np.array_equal(w0[k], w1[k]) for k in w0)  # step 2 updates

    write_loss_mask(data / "val_000.bin", np.zeros(2000, np.uint8))
    p = train("--config", cfg, "--run.name", "bad")
    assert_clean_error(p, "data.val", "count no target in its first 16 sequences")


def test_preemption_signal_checkpoints_and_exits_zero(tmp_path):
    cfg = tiny_config(tmp_path, name="pre")
    proc = subprocess.Popen([exe("triad-train"), "--config", cfg, "--train.steps", "100000",
                             "--checkpoint.every", "0", "--eval.every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    catching_pids(lambda: [proc.pid], 1, signal.SIGUSR1)
    time.sleep(1)  # into training, mostly; a signal before the first step is honoured there too
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "preempted at step" in out, out
    step = int(out.split("preempted at step")[1].split()[0])
    assert (tmp_path / "runs" / "pre" / "ckpt" / f"step_{step:08d}.h5").exists()


def test_ctrl_c_checkpoints_and_exits_as_interrupted(tmp_path):
    """SIGINT (Ctrl-C) killed the run with nothing saved: the first now stops it as a preemption
    does, with a checkpoint --resume auto continues from; the exit status is 130 (not the 0 a job
    script takes for a preemption to requeue)."""
    cfg = tiny_config(tmp_path, name="int")
    proc = subprocess.Popen([exe("triad-train"), "--config", cfg, "--train.steps", "100000",
                             "--checkpoint.every", "0", "--eval.every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    catching_pids(lambda: [proc.pid], 1, signal.SIGINT)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: stopping after this step with a checkpoint" in err, err
    step = int(out.split("interrupted at step")[1].split(":")[0])
    assert (tmp_path / "runs" / "int" / "ckpt" / f"step_{step:08d}.h5").exists()
    p = train("--config", cfg, "--train.steps", step + 1, "--checkpoint.every", 0,
              "--eval.every", 0, check=True)
    assert f"at step {step}" in p.stdout, p.stdout


def test_a_run_past_its_steps_says_so_and_divergence_names_its_step(tmp_path):
    cfg = tiny_config(tmp_path, name="past")
    train("--config", cfg, "--train.steps", 4, check=True)
    p = train("--config", cfg, "--train.steps", 2, check=True)  # (exit 0: a requeue's check)
    assert "nothing to train: the run is at step 4 of train.steps = 2" in p.stdout, p.stdout
    assert "note: no evaluation" not in p.stdout
    # eval.every (100 by default) with nothing to score is said, not silently no evaluation
    p = train("--config", cfg, "--data.val", "", "--run.name", "noval", "--train.steps", 1,
              check=True)
    assert "note: no evaluation (no data.val or eval.sets" in p.stdout, p.stdout
    # Step 1's loss is the initial model's; its update sends step 2's to NaN. The step named is
    # the one the log line above it would have shown (steps count from 1).
    p = train("--config", cfg, "--train.lr", "1e10", "--run.name", "diverge", "--resume", "none")
    assert_clean_error(p, "training diverged: loss is", "at step 2 ")
    assert "step     1/" in p.stdout, p.stdout


def test_a_shard_cut_short_during_the_run_is_named_not_a_bare_crash(tmp_path):
    """The shards are memory-mapped: one truncated while the run reads it makes a read a SIGBUS,
    which is reported as such, naming the shard (exit 1), rather than ending the process without
    a word."""
    cfg = tiny_config(tmp_path, name="cut")
    proc = subprocess.Popen([exe("triad-train"), "--config", cfg, "--train.steps", "100000",
                             "--checkpoint.every", "0", "--eval.every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline()  # (its first line: set up, the shards mapped)
    time.sleep(0.5)
    for shard in (tmp_path / "data").glob("train_*.bin"):
        os.truncate(shard, 100)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (proc.returncode, err)
    assert "bus error (SIGBUS): a memory-mapped file was cut short" in err, err
    assert f"read: token shard {tmp_path / 'data' / 'train_'}" in err, err  # the one it was in


def test_generate_samples_and_refuses_bad_input(tmp_path):
    cfg = tiny_config(tmp_path, name="gen", vocab=50257)
    train("--config", cfg, "--train.steps", 2, check=True)
    ckpt = tmp_path / "runs" / "gen" / "ckpt" / "step_00000002.h5"

    def gen(*args, **kw):
        return run([exe("triad-generate"), *map(str, args)], **kw)

    p = gen("--checkpoint", ckpt, "--vocab", VOCAB, "--prompt", "Hello", "--length", 5,
             "--seed", 3, check=True)
    assert p.stdout.startswith("Hello")
    again = gen("--checkpoint", ckpt, "--vocab", VOCAB, "--prompt", "Hello", "--length", 5,
                 "--seed", 3, check=True)
    assert again.stdout == p.stdout  # the seed reproduces the sample
    assert_clean_error(gen("--checkpoint", tmp_path / "none.h5", "--vocab", VOCAB),
                       "none.h5")
    assert_clean_error(gen("--checkpoint", ckpt, "--vocab", VOCAB, "--temperature", "0"),
                       "--temperature")
    assert_clean_error(gen("--checkpoint", ckpt, "--vocab", VOCAB, "--temperature", "inf"),
                       "--temperature must be a finite number > 0")
    assert_clean_error(gen("--checkpoint", ckpt, "--run", tmp_path / "runs" / "run", "--vocab",
                           VOCAB), "--checkpoint and --run both name the weights")
    assert_clean_error(gen("--checkpoint", "", "--vocab", VOCAB), "--checkpoint is empty")
    assert_clean_error(gen("--checkpoint", ckpt, "--vocab", tmp_path),
                       f"vocabulary file {tmp_path}: is a directory")
    assert_clean_error(gen("--checkpoint", ckpt, "--vocab", VOCAB, "--top-k", "-1"),
                       "--top-k")
    bad_vocab = tmp_path / "bad.tiktoken"
    bad_vocab.write_text("not base64 at all\n")
    assert_clean_error(gen("--checkpoint", ckpt, "--vocab", bad_vocab), "bad.tiktoken")
    assert_clean_error(gen("--vocab", VOCAB), "--checkpoint")


@pytest.mark.parametrize("schedule,v", [("1f1b", 1), ("zb-h1", 2)])
def test_plan_timeline_writes_the_simulated_step_for_triad_timeline(tmp_path, schedule, v):
    """--plan --plan-timeline FILE: the pipeline step the plan simulated, one row per action of
    every stage, ending at the plan's step time; triad-timeline draws it."""
    csv_path = tmp_path / "plan.csv"
    out = train("--config", REPO / "inputs/models/gpt2-350m.ini", "--run.backend", "cuda",
                "--data.train", str(tmp_path / "none_*.bin"), "--train.batch_size", "64",
                "--train.micro_batch_size", "4", "--parallel.pp", "4", "--parallel.schedule",
                schedule, "--parallel.virtual_stages", str(v), "--plan", "--plan-ranks", "4",
                "--plan-tflops", "300", "--plan-timeline", csv_path, check=True).stdout
    assert f"pipeline step as simulated, action by action: {csv_path}" in out, out
    ms = float(re.search(r"counted\): ([0-9.]+) ms", out).group(1))
    rows = [line.split(",") for line in csv_path.read_text().splitlines()]
    assert rows[0] == ["source", "stage", "kind", "microbatch", "chunk", "start_ms", "end_ms"]
    rows = rows[1:]
    assert {r[0] for r in rows} == {"simulated"}
    kinds = "FBW" if schedule == "zb-h1" else "FB"
    for stage in range(4):  # 16 micro-batches, v chunks, each kind once
        mine = sorted((r[2], int(r[3]), int(r[4])) for r in rows if r[1] == str(stage))
        assert mine == sorted((k, mb, c) for k in kinds for mb in range(16) for c in range(v))
    assert abs(max(float(r[6]) for r in rows) - ms) <= 0.05 + 1e-3 * ms, ms
    png = tmp_path / "plan.png"
    t = subprocess.run([sys.executable, "-m", "analysis.plot_timeline", str(csv_path), "--out",
                        str(png)], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)
    assert t.returncode == 0, t.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_plan_timeline_needs_a_pipeline_a_rate_and_the_plan(tmp_path):
    base = ["--config", REPO / "inputs/models/gpt2-350m.ini", "--run.backend", "cuda",
            "--data.train", str(tmp_path / "none_*.bin"), "--train.batch_size", "64",
            "--train.micro_batch_size", "4", "--plan-timeline", tmp_path / "x.csv"]
    for extra, needle in [(["--plan", "--plan-tflops", "300"], "needs parallel.pp > 1"),
                          (["--plan", "--parallel.pp", "4", "--plan-ranks", "4"],
                           "needs --plan-tflops > 0"),
                          ([], "--plan-timeline is an option of --plan")]:
        p = train(*base, *extra)
        assert p.returncode != 0 and needle in p.stderr, (extra, p.stderr)
        assert not (tmp_path / "x.csv").exists()
    # A file that cannot be written: one clear error, no traceback or crash.
    p = train(*base[:-1], tmp_path / "missing" / "x.csv", "--plan", "--parallel.pp", "4",
              "--plan-ranks", "4", "--plan-tflops", "300")
    assert_clean_error(p, "pipeline trace: cannot write", "missing/x.csv")


def test_samples_of_a_model_wider_than_its_tokenizer_decode(tmp_path):
    """A model with more embedding rows than its tokenizer has ids (Qwen2's padding; here 70,000
    against GPT-2's 50,257) samples among the tokenizer's ids only, so that every sample decodes,
    and says so."""
    cfg = tiny_config(tmp_path, vocab=70000, train__steps=2, sample__length=16,
                      sample__top_k=0)
    p = train("--config", cfg, "--data.vocab", VOCAB, check=True)
    assert "samples are drawn among the 50257 ids" in p.stdout + p.stderr
    samples = (tmp_path / "runs" / "run" / "samples.txt").read_bytes()  # bytes: any tokens
    assert samples.count(b"=== step") >= 1
