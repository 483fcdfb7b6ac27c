"""triad-bench kernels on the CPU backend: every op of a training step is timed and reported
against the ceilings measured in the same run, in both precisions; bad options are clear
errors. Only the report's completeness and sanity are checked, never a speed."""
import math
import pathlib
import re

import pytest

from triad_run import assert_clean_error, exe, run

SMALL = {"--backend": "cpu", "--B": "1", "--T": "32", "--C": "64", "--NH": "2", "--V": "300",
         "--layers": "2", "--repeat": "1"}


def bench(**override):
    opts = dict(SMALL, **{f"--{k}": v for k, v in override.items()})
    return [exe("triad-bench"), "kernels", *[x for kv in opts.items() for x in kv]]

OPS = ["encoder_forward", "layernorm_forward", "matmul_forward_qkv", "attention_forward",
       "matmul_forward_attn_proj", "residual_layernorm_fwd", "matmul_gelu_forward_fc",
       "matmul_forward_fc_proj", "matmul_forward_lm_head", "crossentropy_fwd_bwd",
       "matmul_backward_lm_head", "matmul_backward_gelu_fc_proj",
       "matmul_backward_fc", "layernorm_backward", "matmul_backward_attn_proj",
       "attention_backward", "matmul_backward_qkv", "encoder_backward",
       "sum_squares_(grad_norm)"]
# Timed beside the step, not added to it: the separate kernels of the fused ops, and the attention
# with sinks (model.attn_sinks).
COMPARED = ["gelu_backward", "bias_backward_qkv", "matmul_backward_qkv_no_bias",
            "attention_forward_sinks", "attention_backward_sinks"]
FP8 = ["matmul_forward_fp8_fc", "matmul_backward_fp8_fc"]


@pytest.mark.parametrize("precision, adamw", [("fp32", "adamw_update"),
                                               ("bf16", "adamw_update_+_bf16_copy")])
def test_every_op_is_reported_against_measured_ceilings(precision, adamw):
    p = run(bench(precision=precision), timeout=300, check=True)
    out = p.stdout
    assert f"backend cpu {precision}" in out
    ceil = re.search(r"matmul ([0-9.]+) TFLOP/s .* copy ([0-9.]+) GB/s", out)
    assert ceil and float(ceil.group(2)) > 0, out
    rows = {m.group(1): m for m in re.finditer(
        r"^KERNEL name=(\S+) ms=(\S+) rate=(\S+) unit=(\S+) of_ceiling=(\S+)$",
        out, re.M)}
    # bf16 also times run.fp8's products of the FFN's first layer (an emulation on the CPU).
    compared = COMPARED + (FP8 if precision == "bf16" else [])
    assert sorted(rows) == sorted(OPS + [adamw] + compared), sorted(rows)
    table = out[:out.index("sum of one step's ops")]
    # The compared ops come last, under their own heading (the name column is 28 wide).
    after = table[table.index("for comparison, not in the step"):].splitlines()[1:]
    assert sorted(line[:28].strip().replace(" ", "_") for line in after) == sorted(compared)
    for name, m in rows.items():
        ms, rate = float(m.group(2)), float(m.group(3))
        assert ms > 0 and math.isfinite(rate) and rate > 0, (name, m.group(0))
        want = "TFLOP/s" if ("matmul" in name or "attention" in name) else "GB/s"
        assert m.group(4) == want, m.group(0)
    step = re.search(r"sum of one step's ops: ([0-9.]+) ms, at most ([0-9]+) tokens/s", out)
    assert step and float(step.group(1)) > 0, out


def test_sliding_window_attention_counts_the_keys_it_keeps():
    """--window: the attention ops run with the window's mask and count its work: 8 keys of 32
    per query at most (the first 7 fewer) is 228 of the causal 512 key pairs per head; with
    sinks too."""
    p = run(bench(precision="fp32", window="8"), timeout=300, check=True)
    assert ", window 8," in p.stdout, p.stdout
    rows = dict(re.findall(r"^KERNEL name=(attention_\w+) ms=(\S+) ", p.stdout, re.M))
    full = dict(re.findall(r"^KERNEL name=(attention_\w+) ms=(\S+) ",
                           run(bench(precision="fp32"), timeout=300, check=True).stdout, re.M))
    assert sorted(rows) == sorted(full) == ["attention_backward", "attention_backward_sinks",
                                            "attention_forward", "attention_forward_sinks"]
    work = {m.group(1): float(m.group(2)) * float(m.group(3)) for m in re.finditer(
        r"^KERNEL name=(attention_\w+) ms=(\S+) rate=(\S+) ", p.stdout, re.M)}
    # 2 heads of 32: forward 4·B·C·keys = 4·1·64·228 FLOPs (ms·TFLOP/s = 1e9 FLOP)
    for name in ("attention_forward", "attention_forward_sinks"):
        assert math.isclose(work[name] * 1e9, 4 * 64 * 228, rel_tol=1e-3), work


@pytest.mark.parametrize("override, needle", [
    ({"backend": "tpu"}, "--backend must be cpu or cuda"),
    ({"window": "-2"}, "--window must be >= 0"),
    ({"precision": "fp16"}, "--precision must be fp32, bf16 or auto"),
    ({"C": "65", "NH": "5"}, "--C (65) must be even and divisible by --NH"),
    ({"repeat": "-1"}, "must be at least 1"),
    ({"bogus": "1"}, "unrecognised option"),
    # (a padded vocabulary of 2^31 overflowed: "out of memory allocating 18446743798831661056
    # bytes"; --T 2^31 - 1 and --layers 10^9 ran until killed)
    ({"V": "2147483647"}, "--V and --layers must be at most a model's"),
    ({"T": "2147483647"}, "must be at most a model's (16777216,"),
    ({"layers": "1000000000"}, "must be at most a model's"),
])
def test_bad_options_are_clear_errors(override, needle):
    p = run(bench(**override), timeout=60)
    assert_clean_error(p, needle)


@pytest.mark.skipif(pathlib.Path("/dev/nvidia0").exists(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    p = run([exe("triad-bench"), "kernels", "--backend", "cuda"], timeout=60)
    assert_clean_error(p, "--backend cuda: ", "CUDA", "--backend cpu")


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--kernel", "tensor", "--kernel must be auto, mma, wgmma or tma"),
        ("--backward", "fast", "--backward must be auto, deterministic, atomic or ordered"),
    ],
)
def test_attention_bad_choice_is_a_clear_error(option, value, message):
    # Checked before any device is touched, so this holds with or without CUDA and a GPU.
    p = run([exe("triad-bench"), "attention", option, value], timeout=60)
    assert_clean_error(p, message)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--t-wgt", "3"], "--t-wgt (3) must not exceed --t-bwd (2)"),
        (["--t-wgt", "-1"], "--t-wgt must be >= 0 (got -1)"),
        (["--t-fwd", "0"], "--t-fwd and --t-bwd must be numbers in (0, 1e9]"),
        (["--t-bwd", "inf"], "--t-fwd and --t-bwd must be numbers in (0, 1e9]"),
        # (the simulation of 1e10 actions ran past a minute)
        (["--pp", "100000", "--m", "100000"], "--pp · --m · --v (20000000000) must be at most"),
    ],
)
def test_schedule_bad_times_are_clear_errors(args, message):
    p = run([exe("triad-bench"), "schedule", *args], timeout=60)
    assert_clean_error(p, message)


def test_checkpoint_bench_never_touches_files_it_did_not_make(tmp_path):
    """triad-bench checkpoint writes and deletes triad_bench_ckpt_np<N>.h5 and .plain in --dir:
    where one is there already (someone's file), it stops before writing anything."""
    mine = tmp_path / "triad_bench_ckpt_np1.plain"
    mine.write_text("not the bench's")
    p = run([exe("triad-bench"), "checkpoint", "--dir", tmp_path, "--model", "gpt2-tiny",
             "--repeat", "1"], timeout=60)
    assert_clean_error(p, f"already holds {mine}")
    assert mine.read_text() == "not the bench's" and sorted(tmp_path.iterdir()) == [mine]


@pytest.mark.parametrize("args, needle", [
    (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--dropout", "-0.1"], "--dropout must be in [0, 1)"),
    (["--hd", "96"], "--hd must be 64, 128 or 192"),
])
def test_attention_bench_refuses_bad_options(args, needle):
    """triad-bench attention checks its options before looking for a GPU (a CUDA build; one
    without CUDA says so instead)."""
    p = run([exe("triad-bench"), "attention", *args])
    if "built without CUDA" in p.stderr:
        pytest.skip("this triad-bench was built without CUDA")
    assert_clean_error(p, needle)
