# Sourced by the CPU benchmarks (jobs/bench-cpu.sh, jobs/bench-recompute.sh, jobs/bench-plan.sh)
# from the repository root: builds triad-train, finds the Python with the PyTorch peer, and writes
# the random token shard both sides train on (the data does not change the speed).

# bench_build [TARGET ...]: configures build/ with the release preset on first use, then builds
# the targets (default triad-train).
bench_build() {
  if [[ ! -f build/CMakeCache.txt ]]; then
    cmake --preset release
  fi
  cmake --build build -j"$(nproc 2>/dev/null || echo 2)" --target "${@:-triad-train}"
}

# bench_python NAME: sets $py to the project's .venv Python (else python3) and exits with a
# message naming the benchmark NAME unless it has torch, h5py and numpy.
bench_python() {
  py=.venv/bin/python
  [[ -x $py ]] || py=python3
  if ! "$py" -c 'import torch, h5py, numpy' 2>/dev/null; then
    echo "$1: $py lacks torch/h5py/numpy (run jobs/setup.sh)" >&2
    exit 1
  fi
}

# bench_random_shard FILE CONFIG STEPS: a token shard (docs/formats.md) of random GPT-2 ids long
# enough for STEPS steps of CONFIG's batch without wrapping.
bench_random_shard() {
  "$py" - "$1" "$2" "$3" <<'PY'
import configparser, sys
import numpy as np
sys.path.insert(0, "tests/reference")
import gpt_torch as ref
path, config, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
cp = configparser.ConfigParser(inline_comment_prefixes=("#",))
cp.read(config)
T = cp.getint("model", "seq_len")
V = cp.getint("model", "vocab_size")
B = cp.getint("train", "batch_size")
ref.write_token_shard(path, np.random.default_rng(0).integers(0, V, steps * B * T + 1))
PY
}

# bench_uniform_tokens FILE VOCAB: a shard (docs/formats.md) of 400,000 uniform random ids below
# VOCAB, with the system python3 alone (no numpy needed): enough for the MPI benchmarks' steps.
bench_uniform_tokens() {
  python3 - "$1" "$2" <<'PY'
import random, struct, sys
n, vocab = 400_000, int(sys.argv[2])
random.seed(0)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<3i", 20240520, 1, n) + bytes(253 * 4))
    f.write(struct.pack(f"<{n}H", *(random.randrange(vocab) for _ in range(n))))
PY
}

# bench_mpi NAME: for a benchmark NAME that runs triad-train under mpirun: builds it, lets Open
# MPI run as root and as singletons, and sets $tmp (removed on exit).
bench_mpi() {
  bench_build
  export OMPI_MCA_ess_singleton_isolated=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/triad-$1.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
}

# bench_median_ms LOG: the median step time (ms) of a triad-train log's step lines, the first 3
# left out (start-up).
bench_median_ms() {
  grep '^step' "$1" | awk -F'|' 'NR > 3 { gsub(/ ms/, "", $7); print $7 + 0 }' | sort -n |
    awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

# bench_prepare NAME CONFIG STEPS: all of the above for a benchmark NAME that runs triad-train
# (singleton MPI allowed as root) and the PyTorch peer: sets $py and $tmp (removed on exit), with
# the shard at $tmp/bench_train_000.bin.
bench_prepare() {
  bench_python "$1"
  bench_build
  export OMPI_MCA_ess_singleton_isolated=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/triad-$1.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  bench_random_shard "$tmp/bench_train_000.bin" "$2" "$3"
}
