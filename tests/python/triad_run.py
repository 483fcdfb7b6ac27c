"""Helpers for tests that drive the triad executables: paths, tiny configs, token shards."""
import contextlib
import importlib
import io
import os
import pathlib
import signal
import subprocess
import sys
import time
import traceback

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("TRIAD_BUILD_DIR", REPO / "build"))
VOCAB = REPO / "data" / "vocab" / "gpt2.tiktoken"
VENV_BIN = REPO / ".venv" / "bin"
# The analysis commands (analysis/pyproject.toml's entry points) and their `python -m` form.
MODULES = {"triad-plot": ["analysis.plot_curves"],
           "triad-plot-norms": ["analysis.plot_norms"],
           "triad-plot-moe": ["analysis.plot_moe_load"],
           "triad-plot-positions": ["analysis.plot_positions"],
           "triad-plot-noise": ["analysis.plot_noise"],
           "triad-ckpt": ["analysis.inspect_checkpoint", "ckpt"],
           "triad-scaling": ["analysis.scaling"],
           "triad-sweep": ["analysis.sweep"],
           "triad-sweep-report": ["analysis.sweep_report"],
           "triad-timeline": ["analysis.plot_timeline"],
           "triad-convert": ["analysis.convert_weights"],
           "triad-average": ["analysis.average_checkpoints"],
           "triad-coord-check": ["analysis.coord_check"]}

# PMIX_MCA_psec: one node needs no munge, and a stale munge socket costs every mpirun ~2 s
# (jobs/test.sh says more); kept where the caller set it.
ENV = dict(os.environ, OMPI_MCA_ess_singleton_isolated="1", OMP_NUM_THREADS="2",
           OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
ENV.setdefault("PMIX_MCA_psec", "native")


def exe(name):
    path = BUILD / name
    assert path.exists(), f"{path} is missing: build first (jobs/build.sh)"
    return str(path)


def write_shard(path, tokens, magic=None, version=None, count=None):
    """A token shard: uint16 ids (magic 20240520, version 1) unless one is above 65535, then llm.c's
    uint32 format (20240801, 7); magic, version and count override the header (bad shards)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    wide = magic == 20240801 if magic is not None else bool(tokens.size and tokens.max() >= 65536)
    tokens = tokens.astype(np.uint32 if wide else np.uint16)
    magic = magic if magic is not None else (20240801 if wide else 20240520)
    version = version if version is not None else (7 if wide else 1)
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1] = magic, version
    header[2] = len(tokens) if count is None else count
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())
    return str(path)


def write_loss_mask(shard, mask):
    """The loss mask beside a token shard (shard + ".mask"): magic 20261130, version 1, a byte per
    token (docs/formats.md)."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20261130, 1, len(mask))
    with open(str(shard) + ".mask", "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(mask, np.uint8).tobytes())


def tiny_config(tmp, name="run", vocab=512, **overrides):
    """A model small enough that a step takes milliseconds, on random token shards."""
    rng = np.random.default_rng(0)
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    if not (data / "train_000.bin").exists():
        write_shard(data / "train_000.bin", rng.integers(0, vocab, 6000))
        write_shard(data / "train_001.bin", rng.integers(0, vocab, 3000))
        write_shard(data / "val_000.bin", rng.integers(0, vocab, 2000))
    cfg = {
        "model": dict(n_layer=2, n_head=2, n_embd=32, seq_len=16, vocab_size=vocab),
        "train": dict(steps=20, batch_size=8, micro_batch_size=4, lr=3e-3, warmup_steps=3,
                      schedule="cosine", grad_clip=1.0, seed=7),
        "data": dict(train=f"{data}/train_*.bin", val=f"{data}/val_*.bin", shuffle="true"),
        "eval": dict(every=5, sequences=16),
        "checkpoint": dict(every=5, keep=0),
        "run": dict(name=name, dir=str(tmp / "runs"), peak_tflops=0.1),
    }
    for key, value in overrides.items():
        section, k = key.split("__")
        cfg.setdefault(section, {})[k] = value
    path = tmp / f"{name}.ini"
    with open(path, "w") as f:
        for section, values in cfg.items():
            f.write(f"[{section}]\n")
            for k, v in values.items():
                f.write(f"{k} = {v}\n")
    return str(path)


def write_choice_file(path, vocab, n=6, seed=3):
    """n multiple-choice examples of random tokens below `vocab`, 4 endings each, in llm.c's
    eval file format (include/triad/data/choice_file.h)."""
    rng = np.random.default_rng(seed)
    words = []
    for i in range(n):
        ctx = rng.integers(0, vocab, int(rng.integers(3, 8))).tolist()
        ends = [rng.integers(0, vocab, int(rng.integers(1, 4))).tolist() for _ in range(4)]
        body = [i, int(rng.integers(0, 4)), 4, len(ctx), *ctx]
        for e in ends:
            body += [len(e), *e]
        words.append([65535, 2 * (len(body) + 2), *body])
    header = np.zeros(256, dtype="<i4")
    header[:4] = [20240522, 1, n, max(2 * len(w) for w in words)]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for w in words:
            f.write(np.array(w, dtype="<u2").tobytes())
    return path


def run(args, timeout=120, check=False, **kw):
    p = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def catching_pids(list_pids, n, sig, timeout=60):
    """The n pids list_pids() returns once each has a handler for sig installed (Linux's SigCgt
    mask), so a signal sent next tests the handler instead of racing start-up: loading the CUDA
    libraries alone can take seconds on a busy machine, and before its handler a process dies."""
    deadline = time.time() + timeout
    while True:
        pids = list_pids()
        try:
            masks = [int(line.split()[1], 16) for p in pids
                     for line in open(f"/proc/{p}/status") if line.startswith("SigCgt:")]
        except FileNotFoundError:  # a process in the list exited or is being replaced
            masks = []
        if len(pids) == n and len(masks) == n and all(m >> (sig - 1) & 1 for m in masks):
            return pids
        assert time.time() < deadline, f"no {n} processes catching signal {sig}: {pids}"
        time.sleep(0.05)


def train(*args, **kw):
    return run([exe("triad-train"), *map(str, args)], **kw)


def assert_clean_error(p, *needles):
    """A bad input must end with exit code 1 (not a crash signal) and one clear message."""
    assert p.returncode == 1, f"exit {p.returncode} (negative = killed by signal)\n{p.stdout}\n{p.stderr}"
    assert p.returncode != -signal.SIGSEGV
    err = p.stderr
    assert "error:" in err, err
    for n in needles:
        assert n in err, f"{n!r} not in: {err}"
    assert "terminate called" not in err and "Segmentation" not in err, err


def parse_ids(out: bytes):
    """triad-tokenize encode's output (an id a line) as a list of ints: numpy's parser (a 30 MB
    output, 29.7M ids: 0.8 s against 4.6 s for int() of each), checked to be digits and line ends
    only, an id on every line (numpy's parser stops quietly at what is not a number)."""
    assert not out.translate(None, b"0123456789\n") and b"\n\n" not in out \
        and not out.startswith(b"\n") and (not out or out.endswith(b"\n")), \
        f"triad-tokenize encode: not an id a line: {out[:200]!r}"
    ids = np.fromstring(out, dtype=np.int64, sep=" ")
    assert len(ids) == out.count(b"\n"), "triad-tokenize encode: not an id a line"
    return ids.tolist()


def tool_env():
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# The commands the tests run most (162 call sites, several in loops) and that start no process of
# their own: run in the test's process, their entry point called as the console script calls it,
# stdout and stderr captured and SystemExit taken as the exit status. As processes, each run
# first started an interpreter and imported numpy and h5py (`triad-convert --help` took 0.22 s,
# `triad-ckpt --help` 0.14 s); the console scripts themselves are tested in
# test_analysis_tools.py (test_wheel_from_analysis_installs_working_commands).
IN_PROCESS = {"triad-convert": ("analysis.convert_weights", "main"),
              "triad-ckpt": ("analysis.inspect_checkpoint", "ckpt_main")}


class _Expired(BaseException):
    """Raised by SIGALRM in a command run in process (BaseException: the commands' own
    handlers catch Exception)."""


def _expire(signum, frame):
    raise _Expired


def run_in_process(name, args, timeout, cwd=None):
    """An IN_PROCESS command's CompletedProcess, as subprocess.run with capture_output would
    give it: exit status, stdout and stderr (an exception that escapes the command: its traceback
    and status 1, as Python's own top level). Past `timeout` seconds: subprocess.TimeoutExpired,
    as subprocess.run's (a command that hangs, or reads a FIFO without a writer, is stopped by
    SIGALRM; pytest runs tests in the main thread)."""
    module, function = IN_PROCESS[name]
    entry = getattr(importlib.import_module(module), function)
    out, err = io.StringIO(), io.StringIO()
    here, argv0 = os.getcwd(), sys.argv[0]
    sys.argv[0] = str(VENV_BIN / name)  # the program name its messages print
    alarm = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        os.chdir(cwd or REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = entry(args)
            except SystemExit as e:
                code = e.code
                if code is not None and not isinstance(code, int):
                    print(code, file=sys.stderr)
                    code = 1
            except Exception:  # noqa: BLE001 - reported as the interpreter would
                traceback.print_exc()
                code = 1
    except _Expired:
        raise subprocess.TimeoutExpired([name, *args], timeout, out.getvalue(),
                                        err.getvalue()) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, alarm)
        os.chdir(here)
        sys.argv[0] = argv0
    return subprocess.CompletedProcess([name, *args], code or 0, out.getvalue(), err.getvalue())


def tool(name, *args, timeout=60, cwd=None):
    """Run an analysis command: the console script of .venv when installed (jobs/setup.sh),
    else the same code with `python -m`; the IN_PROCESS ones in this process."""
    if name in IN_PROCESS:
        return run_in_process(name, [str(a) for a in args], timeout, cwd)
    script = VENV_BIN / name
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", *MODULES[name]]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True,
                          env=tool_env(), timeout=timeout, cwd=cwd or REPO)


def assert_clean_failure(p, *needles):
    """An analysis command's bad input: exit status 1, one error line naming the file and the
    problem, no traceback."""
    assert p.returncode == 1, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    errors = [l for l in p.stderr.splitlines() if ": error: " in l]
    assert len(errors) == 1, p.stderr
    for n in needles:
        assert str(n) in errors[0], f"{n!r} not in {errors[0]!r}"
    return errors[0]


def gpt2_tiktoken():
    """tiktoken's GPT-2 encoding built from the local ranks file (no download): the reference
    token ids, <|endoftext|> = 50256."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    return tiktoken.Encoding(
        name="gpt2_local", mergeable_ranks=load_tiktoken_bpe(str(VOCAB)),
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        special_tokens={"<|endoftext|>": 50256})


# ---- random transformers models for generation tests ---------------------------------------------

def import_random_model(model, directory, seq_len=None):
    """Scales a random transformers model's matrices by 4 (so greedy choices sit far from ties),
    saves it under directory/hf and imports it with triad-convert: returns the checkpoint."""
    import torch
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p * 4 if p.dim() == 2 else p)
    model.save_pretrained(directory / "hf", safe_serialization=True)
    ckpt = directory / "imported.h5"
    extra = ["--seq-len", str(seq_len)] if seq_len else []
    p = tool("triad-convert", "import", directory / "hf", ckpt, *extra, timeout=300)
    assert p.returncode == 0, p.stderr
    return ckpt


def greedy_continuation(model, ids, n):
    """n tokens after ids, greedily, in float64 (transformers' generate() needs a newer
    torch.distributed than Debian's torch has)."""
    import torch
    seq = list(ids)
    with torch.no_grad():
        model = model.double()
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]
