#!/usr/bin/env bash
# Builds a portable triad here and packs it, with a relocatable Open MPI runtime, into .device/
# for the GPU machine (run there: jobs/device/check.sh, carry .device). Run from anywhere.
#
#   build-portable/   separate build tree: static HDF5 (+szip/zlib), static Boost.Program_options,
#                     static OpenBLAS (Debian's libopenblas.a; else its .so is carried); glibc,
#                     libstdc++ and libgcc_s stay dynamic (the GPU image has newer ones).
#   .device/bin.tar.xz  stripped triad-* apps, tools and the GPU's gtest executables. Each static OpenBLAS
#                     copy is ~25 MB (every CPU's kernels), so they travel as one xz stream with a
#                     64 MiB window (~10 MB); check.sh unpacks them outside the repository.
#   .device/lib/      every other shared library they need (Open MPI, hwloc, libevent, PMIx,
#                     libgomp, zlib, libudev, ...), found with ldd, not a list kept by hand.
#   .device/mpi/      Open MPI's MCA plugins (only those whose libraries we carry, no OpenSHMEM/
#                     UCX/OFI/verbs/monitoring), help files, mca-params.conf, mpirun and orted.
#   .device/env.sh    source it to run the binaries: OPAL_* paths, LD_LIBRARY_PATH, singleton.
#   .device/MANIFEST.txt  commit, toolchain, glibc/GLIBCXX needed, file list, ldd of the build.
#
#   .device/peers/train_gpt2cu  llm.c's GPT-2 trainer for the side-by-side benchmark, when LLMC_DIR
#                     names a checkout of it (never committed; built from a temporary copy).
#
# Env: JOBS (default 2), BUNDLE_SKIP_BUILD=1 (pack the existing build-portable as it is),
#      LLMC_DIR (a checkout of karpathy/llm.c to build the peer from; unset: no peer).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DEV=$ROOT/.device
BUILD=$ROOT/build-portable
L=/usr/lib/x86_64-linux-gnu
OMPI_PLUGINS=$L/openmpi/lib/openmpi3
JOBS=${JOBS:-2}
log() { printf '[bundle] %s\n' "$*"; }
die() { printf '[bundle] ERROR: %s\n' "$*" >&2; exit 1; }

excl=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$excl")"
grep -qxF '/.device/' "$excl" 2>/dev/null || echo '/.device/' >>"$excl"

# ---- 1. configure + build build-portable ---------------------------------------------------
need() { [[ -e $1 ]] || die "$1 missing: apt-get install $2"; }
need $L/hdf5/openmpi/libhdf5.a libhdf5-openmpi-dev
need $L/libboost_program_options.a libboost-program-options-dev
need $L/libsz.a libaec-dev
need $L/libaec.a libaec-dev
need $L/libz.a zlib1g-dev
cfg=(-DCMAKE_BUILD_TYPE=Release -DTRIAD_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a
     -DHDF5_USE_STATIC_LIBRARIES=ON -DBoost_USE_STATIC_LIBS=ON
     # FindHDF5 takes the extra libraries from h5pcc as shared ones: szip/zlib static instead;
     # HDF5's libcurl/libcrypto (read-only S3 driver, unused) are dropped by --as-needed.
     "-DHDF5_C_LIBRARY_sz=$L/libsz.a;$L/libaec.a" "-DHDF5_C_LIBRARY_z=$L/libz.a"
     "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--as-needed")
if [[ -e $L/libopenblas.a ]]; then cfg+=(-DBLA_STATIC=ON); else log "no libopenblas.a: OpenBLAS .so will be carried (~40 MB)"; fi

if [[ ${BUNDLE_SKIP_BUILD:-0} != 1 ]]; then
  gen=(); [[ -f $BUILD/CMakeCache.txt ]] || gen=(-G Ninja)
  mkdir -p "$BUILD"
  log "configure $BUILD"
  cmake -S . -B "$BUILD" "${gen[@]}" "${cfg[@]}" >"$BUILD/bundle-configure.log" 2>&1 \
    || { tail -30 "$BUILD/bundle-configure.log"; die "configure failed (log: $BUILD/bundle-configure.log)"; }
  log "build (-j$JOBS, keep going past broken targets)"
  if ! cmake --build "$BUILD" -j"$JOBS" -- -k 0 >"$BUILD/bundle-build.log" 2>&1; then
    grep -E '^FAILED|error:' "$BUILD/bundle-build.log" | head -20 || true
    log "WARNING: some targets failed (log: $BUILD/bundle-build.log); packing what was built"
  fi
fi
[[ -x $BUILD/triad-train ]] || die "$BUILD/triad-train was not built"

# ---- 2. stage the executables ---------------------------------------------------------------
rm -rf "$DEV"
mkdir -p "$DEV/lib" "$DEV/mpi/bin" "$DEV/mpi/lib/openmpi3" "$DEV/mpi/lib/pmix" "$DEV/mpi/lib/hwloc" "$DEV/mpi/share" \
         "$DEV/mpi/etc" "$DEV/data"
STAGE=$(mktemp -d /tmp/triad-bundle.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin/tests"
exes=()
for f in "$BUILD"/triad-* "$BUILD"/triad_* "$BUILD"/tests/test_*; do
  [[ -f $f && -x $f && $f != *.cmake ]] || continue
  # Of the tests, the GPU's own: test_cuda_* and test_flash_attention. The others (the block
  # programs' emulated tests, the CPU, MPI and I/O ones) run on the CPU in CI; on the GPU machine
  # they would spend its minutes, and the archive's bytes (each executable holds a static
  # OpenBLAS: 40 of them made a 94 MiB bundle, past the 64 MiB that travel), on nothing the GPU
  # shows. The apps' runs there (check.sh) show the build works on that machine's libraries.
  [[ $f == "$BUILD"/tests/* && $f != */test_cuda_* && $f != */test_flash_attention ]] && continue
  case $f in "$BUILD"/tests/*) dst=$STAGE/bin/tests/$(basename "$f");; *) dst=$STAGE/bin/$(basename "$f");; esac
  strip -o "$dst" "$f"
  exes+=("$dst")
done
for want in triad-train triad-tokenize triad-generate; do
  [[ -x $STAGE/bin/$want ]] || log "WARNING: $want not built"
done
log "staged ${#exes[@]} executables"

# ---- 2b. the llm.c peer (optional) ---------------------------------------------------------
if [[ -n ${LLMC_DIR:-} ]]; then
  [[ -f $LLMC_DIR/train_gpt2.cu && -d $LLMC_DIR/llmc ]] || die "LLMC_DIR=$LLMC_DIR is not an llm.c checkout"
  LT=$(mktemp -d /tmp/triad-llmc.XXXXXX)
  cp -r "$LLMC_DIR/llmc" "$LLMC_DIR/train_gpt2.cu" "$LT/"
  # Two edits to build it with this toolkit, neither touching what it computes: CUDA 13 takes a
  # cudaMemLocation in cudaMemAdvise (its out-of-memory fallback), and NVML (GPU utilization
  # logging) has no link library here.
  sed -i 's/cudaMemAdvise(\*out, bytes, cudaMemAdviseSetPreferredLocation, cudaCpuDeviceId)/cudaMemAdvise(*out, bytes, cudaMemAdviseSetPreferredLocation, cudaMemLocation{cudaMemLocationTypeHost, 0})/' "$LT/llmc/cuda_utils.cuh"
  sed -i 's/^#if __has_include(<nvml.h>)$/#if 0/' "$LT/llmc/mfu.h"
  log "build llm.c train_gpt2cu (sm_90, bf16) from $LLMC_DIR ($(git -C "$LLMC_DIR" rev-parse --short HEAD 2>/dev/null || echo '?'))"
  mkdir -p "$DEV/peers"
  if (cd "$LT" && nvcc --threads=0 --use_fast_math -std=c++17 -O3 -gencode arch=compute_90,code=sm_90 \
        -DENABLE_BF16 train_gpt2.cu -lcublas -lcublasLt -o "$DEV/peers/train_gpt2cu") >"$LT/build.log" 2>&1; then
    strip "$DEV/peers/train_gpt2cu"
    echo "llm.c $(git -C "$LLMC_DIR" rev-parse HEAD 2>/dev/null)" >"$DEV/peers/VERSION"
  else
    tail -20 "$LT/build.log"; log "WARNING: llm.c peer failed to build; check.sh will skip it"
  fi
  rm -rf "$LT"
fi

# ---- 3. shared libraries: whatever ldd resolves outside glibc/libstdc++/libgcc_s ------------
# The CUDA libraries (cuBLAS 517 MB, NCCL 208 MB) are far too large to carry: the GPU machine has
# its own (/usr/local/cuda/lib64, torch's nvidia wheels); env.sh puts them on the path.
SYSTEM_OK='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libutil|libresolv|libanl|libstdc\+\+|libgcc_s|libcublas|libcublasLt|libcudart|libcuda|libnccl)\.so'
copy_deps() {  # copy_deps FILE...: copy their non-system shared libraries into .device/lib
  local f line name path
  for f in "$@"; do
    while read -r line; do
      name=$(awk '{print $1}' <<<"$line")
      [[ $name =~ $SYSTEM_OK ]] && continue
      if [[ $line == *"not found"* ]]; then echo "NOTFOUND $name"; continue; fi
      path=$(awk '/=>/{print $3}' <<<"$line")
      [[ -n $path && -f $path ]] || continue
      [[ -e $DEV/lib/$name ]] || cp -L "$path" "$DEV/lib/$name"
    done < <(ldd "$f" 2>/dev/null | grep '=>')
  done
}
missing=$(copy_deps "${exes[@]}")
[[ -z $missing ]] || die "unresolved libraries of the executables: $missing"

# Open MPI MCA plugins: drop frameworks a single-node MPI job doesn't use and those needing
# libraries we won't carry (UCX, libfabric, verbs, PSM, libnl); keep every other loadable one.
deny='^mca_(atomic|memheap|scoll|spml|sshmem)_|monitoring|ucx|ofi|openib|psm|netlink|slurm|flux|jsm|gridengine|simulator|vprotocol'
kept=0; dropped=()
for p in "$OMPI_PLUGINS"/mca_*.so; do
  b=$(basename "$p")
  if [[ $b =~ $deny ]]; then dropped+=("$b"); continue; fi
  cp "$p" "$DEV/mpi/lib/openmpi3/"; kept=$((kept + 1))
done
missing=$(copy_deps "$DEV"/mpi/lib/openmpi3/*.so)
[[ -z $missing ]] || die "unresolved libraries of the MPI plugins: $missing"
# libraries pulled in by the copied libraries themselves (ldd is already transitive, but the
# plugins' own libs, e.g. libmca_common_ompio, may need more)
missing=$(copy_deps "$DEV"/lib/*.so*)
[[ -z $missing ]] || die "unresolved libraries: $missing"
log "MPI plugins: kept $kept, dropped ${#dropped[@]}"

# mpirun/orted (multi-rank runs) and their libraries; PMIx's own plugins and help files.
cp -L "$(command -v orterun || echo /usr/bin/orterun)" "$DEV/mpi/bin/mpirun"
cp -L /usr/bin/orted "$DEV/mpi/bin/orted"
missing=$(copy_deps "$DEV/mpi/bin/mpirun" "$DEV/mpi/bin/orted")
[[ -z $missing ]] || die "unresolved libraries of mpirun: $missing"
if [[ -d $L/pmix2/lib/pmix ]]; then
  for p in "$L"/pmix2/lib/pmix/*.so; do [[ $p == *slurm* ]] || cp "$p" "$DEV/mpi/lib/pmix/"; done
  copy_deps "$DEV"/mpi/lib/pmix/*.so >/dev/null
fi
# bookworm's libevent is the only library here that needs glibc 2.36 (arc4random); the same
# upstream 2.1.12 from bullseye needs 2.25, so the bundle also runs on glibc 2.34/2.35 images
# (Ubuntu 22.04). Fetched once with apt (separate lists dir) into build-portable/compat.
COMPAT=$BUILD/compat
if [[ ! -f $COMPAT/ok ]]; then
  rm -rf "$COMPAT"; mkdir -p "$COMPAT/lists/partial" "$COMPAT/cache/archives/partial" "$COMPAT/deb"
  echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main' >"$COMPAT/sources.list"
  ao=(-o "Dir::Etc::SourceList=$COMPAT/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$COMPAT/lists" -o "Dir::Cache=$COMPAT/cache")
  if apt-get "${ao[@]}" update >"$COMPAT/apt.log" 2>&1 &&
     (cd "$COMPAT/deb" && apt-get "${ao[@]}" download libevent-core-2.1-7=2.1.12-stable-1 \
        libevent-pthreads-2.1-7=2.1.12-stable-1 >>"$COMPAT/apt.log" 2>&1); then
    for d in "$COMPAT"/deb/*.deb; do dpkg-deb -x "$d" "$COMPAT/x"; done && touch "$COMPAT/ok"
  fi
fi
if [[ -f $COMPAT/ok ]]; then
  for n in libevent_core-2.1.so.7 libevent_pthreads-2.1.so.7; do
    [[ -e $DEV/lib/$n ]] && cp -L "$COMPAT/x/usr/lib/x86_64-linux-gnu/$n" "$DEV/lib/$n"
  done
  log "libevent: bullseye's 2.1.12 (glibc >= 2.25)"
else
  log "WARNING: could not fetch bullseye's libevent ($COMPAT/apt.log): the bundle needs glibc 2.36"
fi
cp -r /usr/share/openmpi "$DEV/mpi/share/openmpi"
[[ -d $L/pmix2/share/pmix ]] && cp -r "$L/pmix2/share/pmix" "$DEV/mpi/share/pmix"
# Debian's site defaults (skip the transports we don't carry), plus quiet component loading.
{
  grep -v '^#' /etc/openmpi/openmpi-mca-params.conf 2>/dev/null | grep -v '^$' || true
  echo 'mca_base_component_show_load_errors = 0'
} >"$DEV/mpi/etc/openmpi-mca-params.conf"
strip --strip-unneeded "$DEV"/lib/*.so* "$DEV"/mpi/lib/*/*.so "$DEV"/mpi/bin/* 2>/dev/null || true

# ---- 4. binaries archive, data, env script, manifest ----------------------------------------
log "compressing executables (xz, 64 MiB window)"
tar -C "$STAGE" -cf - bin | xz -T1 --lzma2=preset=1,dict=64MiB >"$DEV/bin.tar.xz"
[[ -f data/vocab/gpt2.tiktoken ]] && cp data/vocab/gpt2.tiktoken "$DEV/data/" \
  || log "WARNING: data/vocab/gpt2.tiktoken missing: test_tokenizer will fail there"

cat >"$DEV/env.sh" <<'EOF'
# Source me (bash) to run the carried triad build: relocated Open MPI, carried libraries first.
TRIAD_DEVICE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export OPAL_PREFIX=$TRIAD_DEVICE/mpi OPAL_EXEC_PREFIX=$TRIAD_DEVICE/mpi
export OPAL_BINDIR=$TRIAD_DEVICE/mpi/bin OPAL_LIBDIR=$TRIAD_DEVICE/lib
export OPAL_PKGLIBDIR=$TRIAD_DEVICE/mpi/lib/openmpi3 OPAL_DATAROOTDIR=$TRIAD_DEVICE/mpi/share
export OPAL_DATADIR=$TRIAD_DEVICE/mpi/share OPAL_PKGDATADIR=$TRIAD_DEVICE/mpi/share/openmpi
export OPAL_SYSCONFDIR=$TRIAD_DEVICE/mpi/etc
export OMPI_MCA_mca_base_component_path=$TRIAD_DEVICE/mpi/lib/openmpi3
export PMIX_INSTALL_PREFIX=$TRIAD_DEVICE/mpi PMIX_MCA_mca_base_component_path=$TRIAD_DEVICE/mpi/lib/pmix
export PMIX_MCA_mca_base_component_show_load_errors=0
# hwloc's optional plugins (GL, OpenCL, PCI, libxml2) are not carried: look for none
export HWLOC_PLUGINS_PATH=$TRIAD_DEVICE/mpi/lib/hwloc
export LD_LIBRARY_PATH=$TRIAD_DEVICE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
for d in /usr/local/cuda/lib64 /usr/local/cuda-13.0/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d $d ]] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d
done
# NCCL (opened with dlopen for parallel.comm = nccl): the system's if the loader knows one, else
# the copy in PyTorch's nvidia wheels.
if ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2'; then
  for d in /usr/local/lib/python3*/*-packages/nvidia/nccl/lib /usr/lib/python3*/*-packages/nvidia/nccl/lib \
           "$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null)/lib"; do
    [[ -f $d/libnccl.so.2 ]] && { LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d; break; }
  done
fi
export LD_LIBRARY_PATH
export PATH=$TRIAD_DEVICE/mpi/bin:$PATH
export OMPI_MCA_ess_singleton_isolated=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
EOF

glibc_need=$( (for f in "${exes[@]}" "$DEV"/lib/*.so* "$DEV"/mpi/lib/*/*.so "$DEV"/mpi/bin/*; do objdump -T "$f"; done) 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
glibcxx_need=$( (for f in "${exes[@]}" "$DEV"/lib/*.so*; do objdump -T "$f"; done) 2>/dev/null | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -1)
{
  echo "triad portable bundle"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "built: $(date -u +%FT%TZ) on $(. /etc/os-release; echo "$PRETTY_NAME"), $(gcc --version | head -1), $(ldd --version | head -1)"
  echo "source_dir: $ROOT"
  echo "binary_dir: $BUILD"
  echo "needs: $glibc_need $glibcxx_need"
  echo "mpi plugins dropped: ${dropped[*]}"
  echo "== files"
  (cd "$DEV" && find . -type f -printf '%8s %p\n' | sort -k2)
  echo "== executables (in bin.tar.xz)"
  (cd "$STAGE" && find bin -type f -printf '%10s %p\n' | sort -k2)
  echo "== ldd triad-train (here)"
  ldd "$STAGE/bin/triad-train"
} >"$DEV/MANIFEST.txt"
echo "$ROOT" >"$DEV/source_dir"; echo "$BUILD" >"$DEV/binary_dir"

# ---- 5. verify: every non-glibc/libstdc++ dependency resolves inside .device/lib ----------------
bad=0
for f in "${exes[@]}" "$DEV"/lib/*.so* "$DEV"/mpi/lib/*/*.so "$DEV"/mpi/bin/*; do
  while read -r name _ path _; do
    [[ $name =~ $SYSTEM_OK ]] && continue
    if [[ $path != "$DEV/lib/"* ]]; then echo "  $(basename "$f"): $name -> $path"; bad=1; fi
  done < <(LD_LIBRARY_PATH=$DEV/lib ldd "$f" 2>/dev/null | grep '=>')
done
[[ $bad == 0 ]] || die "dependencies resolve outside .device/lib (above)"
size=$(du -sb "$DEV" | cut -f1)
log "OK: .device is $((size / 1024 / 1024)) MiB ($(du -sh "$DEV/bin.tar.xz" | cut -f1) executables archive, $(du -sh "$DEV/lib" | cut -f1) lib, $(du -sh "$DEV/mpi" | cut -f1) mpi); needs $glibc_need $glibcxx_need"
# What travels to the GPU machine is the working tree (tracked and untracked, not ignored) plus
# the carried .device, 64 MiB in all: keep 2 MiB of that free.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
(( size + tree < 62 * 1024 * 1024 )) ||
  die ".device ($((size / 1024 / 1024)) MiB) and the tree ($((tree / 1024 / 1024)) MiB) exceed 62 of the 64 MiB that travel"
log "with the tree ($((tree / 1024 / 1024)) MiB): $(((size + tree) / 1024 / 1024)) of the 64 MiB that travel"
