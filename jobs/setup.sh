#!/usr/bin/env bash
# Set up a machine to build, test and run triad. Idempotent: a re-run on a ready machine
# takes a few seconds and installs nothing.
#
#   jobs/setup.sh [--no-system] [--no-data] [--check-system] [--force-data]
#
# Steps
#  1. System packages (compilers, CMake, Open MPI, parallel HDF5, Boost.Program_options,
#     OpenBLAS, GoogleTest, Debian's CPU PyTorch as the independent reference, SLURM and
#     munge for the job-script tests).
#     Debian with root (or passwordless sudo): apt-get installs what is missing.
#     Elsewhere (a cluster with `module load ...`): nothing is installed; the tools are
#     looked up on PATH / CPATH / *_ROOT and what is missing is printed (exit 1).
#  2. Python virtual environment .venv (--system-site-packages, so Debian's torch is
#     visible) with requirements.txt; skipped while requirements.txt is unchanged.
#  3. BPE ranks, each checked against its sha256: GPT-2's -> data/vocab/gpt2.tiktoken (from
#     the openai-whisper sdist); Llama 3's -> data/vocab/llama3.tiktoken (Meta's
#     tokenizer.model, from the llama-models wheel) and Qwen's -> data/vocab/qwen.tiktoken (the
#     151,643 ranks of Qwen and Qwen2, from the dashscope wheel), and Mistral's SentencePiece
#     models -> data/vocab/mistral-v1.model (Mistral 7B v0.1's, the scheme of Llama 2's) and
#     data/vocab/mistral-v3.model (with control and user-defined pieces), mistral-v7.model (with
#     [SYSTEM_PROMPT]), and Mistral's Tekken
#     tokenizer -> data/vocab/tekken.json (Mistral NeMo's), from the mistral_common wheel, for
#     the tokenizer tests.
#  4. Default corpus -> data/corpus/*.txt: King James Bible and Jane Austen's six novels,
#     from Debian packages (apt-get download + dpkg-deb -x, no root needed), cleaned to
#     plain UTF-8 text by jobs/prepare_corpus.py.
#
# Options
#   --no-system      skip step 1 (use what the environment provides)
#   --no-data        skip steps 3 and 4
#   --check-system   only report what step 1 would install / is missing; exit 0 if nothing
#   --force-data     redo steps 3 and 4 even when their files are present
# Environment
#   TRIAD_PYTHON=/path/python3   Python for the venv (default: /usr/bin/python3 if it has
#                                venv+ensurepip, else python3 on PATH)
#   TRIAD_PIP_TORCH=1            install torch from pip when no torch is importable (e.g. a
#                                cluster without Debian's python3-torch). Without it torch
#                                stays optional: the PyTorch reference tests are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DO_SYSTEM=1 DO_DATA=1 CHECK_ONLY=0 FORCE_DATA=0
for arg in "$@"; do
  case "$arg" in
    --no-system) DO_SYSTEM=0 ;;
    --no-data) DO_DATA=0 ;;
    --check-system) CHECK_ONLY=1 ;;
    --force-data) FORCE_DATA=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

# slurm-wlm and munge: the one-node SLURM the job-script tests start (jobs/slurm/local-cluster.sh).
DEB_PKGS=(build-essential cmake openmpi-bin libopenmpi-dev libhdf5-openmpi-dev hdf5-tools
          libboost-program-options-dev libopenblas-dev libgtest-dev python3-venv python3-torch
          slurm-wlm munge)
CORPUS_DEBS=(bible-kjv bible-kjv-text r-cran-janeaustenr)
CORPUS_FILES=(kjv.txt austen_emma.txt austen_mansfield_park.txt austen_northanger_abbey.txt
              austen_persuasion.txt austen_pride_and_prejudice.txt
              austen_sense_and_sensibility.txt)
WHISPER_SDIST=openai-whisper==20250625
VOCAB_SHA256=306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930
LLAMA_MODELS_WHEEL=llama-models==0.3.0
LLAMA3_SHA256=82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55
DASHSCOPE_WHEEL=dashscope==2.0.2
QWEN_SHA256=b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186
MISTRAL_COMMON_WHEEL=mistral_common==1.5.4
GPT_OSS_WHEEL=gpt-oss==0.0.9
MISTRAL_V1_SHA256=dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055
MISTRAL_V3_SHA256=9addc8bdce5988448ae81b729336f43a81262160ae8da760674badab9d4c7d33
TEKKEN_SHA256=386b1f98fba69b38c3de512a4eb602dc69a95dae0e54e6ce048ea3e29a2627a8
MISTRAL_V7_SHA256=1b968b8dc352f42192367337c78ccc61e1eaddc6d641a579372d4f20694beb7a
VENV=$ROOT/.venv

SUMMARY=()
WARNINGS=()
TMPDIRS=()
cleanup() { local d; for d in ${TMPDIRS[@]+"${TMPDIRS[@]}"}; do rm -rf "$d"; done; }
trap cleanup EXIT
mktmp() { local d; d=$(mktemp -d "${TMPDIR:-/tmp}/triad-setup.XXXXXX"); TMPDIRS+=("$d"); echo "$d"; }
log() { echo "setup: $*" >&2; }
warn() { echo "setup: WARNING: $*" >&2; WARNINGS+=("$*"); }
now() { echo "${EPOCHREALTIME:-$(date +%s.%N)}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
T_ALL=$(now)

# Root, or passwordless sudo, for apt-get install
SUDO=()
HAVE_ROOT=0
if [ "$(id -u)" -eq 0 ]; then
  HAVE_ROOT=1
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  HAVE_ROOT=1; SUDO=(sudo -n)
fi
as_root() { ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive "$@"; }

# ---- 1. system packages ----------------------------------------------------------------------

# Debian packages of DEB_PKGS not installed (empty output: all there)
missing_debs() {
  local have
  have=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${DEB_PKGS[@]}" 2>/dev/null |
         awk '$2 ~ /^ii/ { print $1 }' || true)
  local p
  for p in "${DEB_PKGS[@]}"; do
    grep -qx -- "$p" <<<"$have" || echo "$p"
  done
}

# Include directories a compiler would search, including those set up by environment modules
include_dirs() {
  local IFS=: d
  for d in ${CPATH:-} ${CPLUS_INCLUDE_PATH:-} ${C_INCLUDE_PATH:-}; do [ -n "$d" ] && echo "$d"; done
  for d in ${CMAKE_PREFIX_PATH:-}; do [ -n "$d" ] && echo "$d/include"; done
  for d in "${BOOST_ROOT:-}" "${Boost_ROOT:-}" "${OPENBLAS_ROOT:-}" "${OPENBLAS_DIR:-}" \
           "${GTEST_ROOT:-}" "${GTest_ROOT:-}" "${HDF5_ROOT:-}" "${HDF5_DIR:-}"; do
    [ -n "$d" ] && echo "$d/include"
  done
  [ -n "${BOOST_INCLUDEDIR:-}" ] && echo "$BOOST_INCLUDEDIR"
  echo /usr/local/include
  echo /usr/include
  for d in /usr/include/*-linux-gnu /usr/include/openblas /usr/local/include/openblas; do
    [ -d "$d" ] && echo "$d"
  done
  return 0
}
have_header() {
  local d
  while read -r d; do [ -f "$d/$1" ] && return 0; done < <(include_dirs)
  return 1
}
have_parallel_hdf5() {
  command -v h5pcc >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/*-linux-gnu/hdf5/openmpi" >/dev/null && return 0
  local d
  while read -r d; do
    [ -f "$d/H5pubconf.h" ] && grep -q 'define H5_HAVE_PARALLEL 1' "$d/H5pubconf.h" && return 0
  done < <(include_dirs)
  return 1
}
# Build prerequisites missing from the environment, one line each
missing_tools() {
  command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 ||
    echo "a C++20 compiler (c++ / g++ >= 12)"
  command -v cmake >/dev/null 2>&1 || echo "cmake (>= 3.25)"
  command -v mpicxx >/dev/null 2>&1 || echo "mpicxx (an MPI, e.g. Open MPI)"
  have_parallel_hdf5 || echo "parallel HDF5 (h5pcc, or HDF5_ROOT with H5_HAVE_PARALLEL)"
  have_header boost/program_options.hpp || echo "Boost.Program_options headers (boost/program_options.hpp)"
  have_header cblas.h || echo "OpenBLAS / CBLAS headers (cblas.h)"
  have_header gtest/gtest.h || echo "GoogleTest headers (gtest/gtest.h)"
  return 0
}

apt_lists_present() { compgen -G "/var/lib/apt/lists/*Packages*" >/dev/null; }

step_system() {
  local t0 missing tools
  t0=$(now)
  if command -v dpkg-query >/dev/null 2>&1; then
    missing=$(missing_debs)
    if [ -z "$missing" ]; then
      SUMMARY+=("system: all ${#DEB_PKGS[@]} Debian packages present ($(elapsed "$t0"))")
      [ "$CHECK_ONLY" -eq 1 ] && log "system: nothing to install"
      return 0
    fi
    missing=$(tr '\n' ' ' <<<"$missing"); missing=${missing% }
    if [ "$CHECK_ONLY" -eq 1 ]; then
      log "system: Debian packages not installed: $missing"
      tools=$(missing_tools)
      if [ -z "$tools" ]; then
        log "system: (the build tools are present through other means)"
      else
        log "system: build prerequisites missing:"; sed 's/^/    /' <<<"$tools" >&2
      fi
      return 1
    fi
    if [ "$HAVE_ROOT" -eq 1 ] && command -v apt-get >/dev/null 2>&1; then
      log "system: apt-get install $missing"
      # shellcheck disable=SC2086
      if ! apt_lists_present || ! as_root apt-get install -y --no-install-recommends $missing; then
        log "system: apt-get update, then retry"
        as_root apt-get update
        # shellcheck disable=SC2086
        as_root apt-get install -y --no-install-recommends $missing
      fi
      SUMMARY+=("system: installed $missing ($(elapsed "$t0"))")
      return 0
    fi
  fi
  # Not Debian, or no root: use what the environment (e.g. `module load`) provides
  tools=$(missing_tools)
  if [ -z "$tools" ]; then
    local note=""
    [ -n "${missing:-}" ] && note=", Debian packages not installed: ${missing}"
    SUMMARY+=("system: build tools found, nothing installed (no root${note}) ($(elapsed "$t0"))")
    [ "$CHECK_ONLY" -eq 1 ] && log "system: nothing to install"
    return 0
  fi
  {
    echo "setup: system: these build prerequisites are missing:"
    sed 's/^/    /' <<<"$tools"
    if command -v apt-get >/dev/null 2>&1; then
      echo "  As root, install them with:"
      echo "    apt-get install -y --no-install-recommends ${DEB_PKGS[*]}"
    else
      echo "  Load them (e.g. 'module load gcc openmpi hdf5/parallel boost openblas cmake') or"
      echo "  point CPATH / CMAKE_PREFIX_PATH / *_ROOT at them, then re-run jobs/setup.sh."
    fi
  } >&2
  exit 1
}

# ---- 2. Python virtual environment -------------------------------------------------------------

pick_python() {
  if [ -n "${TRIAD_PYTHON:-}" ]; then echo "$TRIAD_PYTHON"; return; fi
  if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo /usr/bin/python3; return
  fi
  command -v python3 || { echo "setup: venv: no python3 found" >&2; exit 1; }
}

step_venv() {
  local t0 py pyver venv_ok=0 stamp want did=()
  t0=$(now)
  py=$(pick_python)
  pyver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ -x "$VENV/bin/python" ] &&
     [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$pyver" ] &&
     grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg" 2>/dev/null; then
    venv_ok=1
  fi
  if [ "$venv_ok" -eq 0 ]; then
    if ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
      echo "setup: venv: $py lacks the venv/ensurepip modules (Debian: apt-get install python3-venv)" >&2
      exit 1
    fi
    log "venv: creating $VENV with $py ($pyver, --system-site-packages)"
    "$py" -m venv --clear --system-site-packages "$VENV"
    did+=("created with $py")
  fi
  stamp=$VENV/.triad-requirements.sha256
  want="$(sha256sum requirements.txt | cut -d' ' -f1) python$pyver"
  if [ "$venv_ok" -eq 0 ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "venv: pip install -r requirements.txt"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements.txt
    echo "$want" >"$stamp"
    did+=("pip install -r requirements.txt")
  fi
  # OpenAI's gpt-oss package, for its reference model (gpt_oss.torch.model), which checks
  # triad-convert's gpt-oss import (tests/python/test_convert_gpt_oss.py). Its metadata asks for
  # Python >= 3.12 and, for the whole package (chat tools, servers), torch >= 2.7 and more; the
  # reference model alone runs on Debian's Python 3.11 and torch 1.13, so it is installed without
  # its dependencies and without that check.
  local gstamp=$VENV/.triad-gpt-oss gwant="$GPT_OSS_WHEEL python$pyver"
  if [ "$(cat "$gstamp" 2>/dev/null)" != "$gwant" ]; then
    log "venv: pip install $GPT_OSS_WHEEL (no dependencies, any Python)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps \
      --ignore-requires-python "$GPT_OSS_WHEEL"
    echo "$gwant" >"$gstamp"
    did+=("pip install $GPT_OSS_WHEEL")
  fi
  # The analysis package (analysis/pyproject.toml: triad-plot, triad-sweep, triad-sweep-report,
  # triad-scaling, triad-ckpt, triad-timeline in .venv/bin), editable so that it runs this
  # checkout's code;
  # redone when its pyproject.toml, the checkout's place or the requirements change. Built with
  # the venv's setuptools when it can (no download), else in pip's isolated build environment.
  local astamp=$VENV/.triad-analysis.sha256 awant
  awant="$(sha256sum analysis/pyproject.toml | cut -d' ' -f1) $ROOT $want"
  if [ "$(cat "$astamp" 2>/dev/null)" != "$awant" ] || [ ! -x "$VENV/bin/triad-sweep" ]; then
    log "venv: pip install -e ./analysis"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps \
           --no-build-isolation -e ./analysis 2>/dev/null; then
      "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -e ./analysis
    fi
    echo "$awant" >"$astamp"
    did+=("pip install -e ./analysis")
  fi
  # torch: Debian's python3-torch through --system-site-packages, else optional from pip
  if ! "$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)'; then
    if [ "${TRIAD_PIP_TORCH:-0}" = 1 ]; then
      log "venv: pip install torch (TRIAD_PIP_TORCH=1)"
      "$VENV/bin/python" -m pip install --disable-pip-version-check -q torch
      did+=("pip install torch")
    else
      warn "torch is not importable in .venv: the PyTorch reference tests and benchmark peer will be skipped (Debian: apt-get install python3-torch; elsewhere: TRIAD_PIP_TORCH=1 jobs/setup.sh)"
    fi
  fi
  if [ ${#did[@]} -eq 0 ]; then
    SUMMARY+=("venv: up to date ($(elapsed "$t0"))")
  else
    local joined; joined=$(printf '%s, ' "${did[@]}"); SUMMARY+=("venv: ${joined%, } ($(elapsed "$t0"))")
  fi
}

# ---- 3. GPT-2 BPE ranks --------------------------------------------------------------------------

# fetch_ranks DST SHA256 MEMBER PIP_ARGS...: pip download PIP_ARGS, take the archive member
# ending in MEMBER to DST, and check its sha256; a present DST with the right sha256 is kept.
fetch_ranks() {
  local dst=$1 sha=$2 member=$3 t0 tmp got
  shift 3
  t0=$(now)
  if [ "$FORCE_DATA" -eq 0 ] && [ -f "$dst" ] &&
     [ "$(sha256sum "$dst" | cut -d' ' -f1)" = "$sha" ]; then
    SUMMARY+=("vocab: $dst present ($(elapsed "$t0"))")
    return 0
  fi
  tmp=$(mktmp)
  log "vocab: pip download $* for $member"
  if ! "$VENV/bin/python" -m pip download --disable-pip-version-check -q --no-deps \
         "$@" -d "$tmp/dl" >&2; then
    log "vocab: retrying without build isolation"
    "$VENV/bin/python" -m pip download --disable-pip-version-check -q --no-deps \
      --no-build-isolation "$@" -d "$tmp/dl" >&2
  fi
  mkdir -p data/vocab
  "$VENV/bin/python" - "$tmp/dl" "$dst.tmp" "$member" <<'EOF'
import sys, tarfile, zipfile, pathlib
src, dst, member = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
for a in sorted(src.iterdir()):
    if a.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(a) as t:
            m = next((m for m in t.getmembers() if m.name.endswith(member)), None)
            if m:
                open(dst, "wb").write(t.extractfile(m).read()); sys.exit(0)
    elif a.suffix in (".zip", ".whl"):
        with zipfile.ZipFile(a) as z:
            n = next((n for n in z.namelist() if n.endswith(member)), None)
            if n:
                open(dst, "wb").write(z.read(n)); sys.exit(0)
sys.exit(f"setup: vocab: no {member} in {[p.name for p in src.iterdir()]}")
EOF
  got=$(sha256sum "$dst.tmp" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    rm -f "$dst.tmp"
    echo "setup: vocab: sha256 of $member is $got, expected $sha" >&2
    exit 1
  fi
  mv -f "$dst.tmp" "$dst"
  SUMMARY+=("vocab: wrote $dst ($(stat -c %s "$dst") bytes, sha256 ok) ($(elapsed "$t0"))")
}

step_vocab() {
  fetch_ranks data/vocab/gpt2.tiktoken "$VOCAB_SHA256" whisper/assets/gpt2.tiktoken \
    --no-binary :all: "$WHISPER_SDIST"
  fetch_ranks data/vocab/llama3.tiktoken "$LLAMA3_SHA256" llama_models/llama3/tokenizer.model \
    --only-binary :all: "$LLAMA_MODELS_WHEEL"
  fetch_ranks data/vocab/qwen.tiktoken "$QWEN_SHA256" dashscope/resources/qwen.tiktoken \
    --only-binary :all: "$DASHSCOPE_WHEEL"
  fetch_ranks data/vocab/mistral-v1.model "$MISTRAL_V1_SHA256" data/tokenizer.model.v1 \
    --only-binary :all: "$MISTRAL_COMMON_WHEEL"
  fetch_ranks data/vocab/mistral-v3.model "$MISTRAL_V3_SHA256" \
    data/mistral_instruct_tokenizer_240323.model.v3 --only-binary :all: "$MISTRAL_COMMON_WHEEL"
  fetch_ranks data/vocab/tekken.json "$TEKKEN_SHA256" data/tekken_240911.json \
    --only-binary :all: "$MISTRAL_COMMON_WHEEL"
  fetch_ranks data/vocab/mistral-v7.model "$MISTRAL_V7_SHA256" \
    data/mistral_instruct_tokenizer_241114.model.v7 --only-binary :all: "$MISTRAL_COMMON_WHEEL"
}

# ---- 4. default corpus ---------------------------------------------------------------------------

corpus_stamp_value() {
  echo "prepare_corpus $(sha256sum jobs/prepare_corpus.py | cut -d' ' -f1)"
  echo "debs ${CORPUS_DEBS[*]}"
}

# apt-get download PKG... into the current directory; without root and without package lists,
# fetch private lists first (apt-get update into a temporary state directory needs no root).
apt_download() {
  local opts=()
  [ "$(id -u)" -eq 0 ] && opts+=(-o APT::Sandbox::User=root)  # no _apt sandbox warning
  if apt-get "${opts[@]}" download "$@" >/dev/null 2>"$PWD/apt.err"; then return 0; fi
  if [ "$HAVE_ROOT" -eq 1 ]; then
    log "corpus: apt-get download failed; apt-get update, then retry"
    as_root apt-get update >&2
    apt-get "${opts[@]}" download "$@" >/dev/null
  else
    log "corpus: apt-get download failed; fetching private package lists (no root)"
    local st=$PWD/apt-state
    mkdir -p "$st/lists/partial" "$st/cache/archives/partial"
    opts+=(-o "Dir::State::Lists=$st/lists" -o "Dir::Cache=$st/cache" -o Debug::NoLocking=1)
    apt-get "${opts[@]}" update >&2
    apt-get "${opts[@]}" download "$@" >/dev/null
  fi
}

step_corpus() {
  local t0 out=data/corpus stamp f ok=1 tmp
  t0=$(now)
  stamp=$out/.stamp
  for f in "${CORPUS_FILES[@]}"; do [ -s "$out/$f" ] || ok=0; done
  if [ "$FORCE_DATA" -eq 0 ] && [ "$ok" -eq 1 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$(corpus_stamp_value)" ]; then
    SUMMARY+=("corpus: $out present ($(du -sb "$out" | cut -f1) bytes) ($(elapsed "$t0"))")
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    warn "corpus: apt-get/dpkg-deb not available: $out not produced. Copy data/corpus/ from a machine where jobs/setup.sh ran, or bring your own *.txt"
    SUMMARY+=("corpus: SKIPPED (no apt-get)")
    return 0
  fi
  tmp=$(mktmp)
  chmod 755 "$tmp"
  log "corpus: apt-get download ${CORPUS_DEBS[*]}"
  (cd "$tmp" && apt_download "${CORPUS_DEBS[@]}") || {
    cat "$tmp/apt.err" >&2 2>/dev/null || true
    echo "setup: corpus: apt-get download ${CORPUS_DEBS[*]} failed" >&2; exit 1; }
  mkdir -p "$tmp/root"
  for f in "$tmp"/*.deb; do dpkg-deb -x "$f" "$tmp/root"; done
  # The `bible` decoder links libreadline; bring it along if this machine lacks it
  if ldd "$tmp/root/usr/bin/bible" 2>/dev/null | grep -q 'not found'; then
    log "corpus: fetching libreadline for the bible decoder"
    local rl=libreadline8
    apt-cache show libreadline8t64 >/dev/null 2>&1 && rl=libreadline8t64  # Debian >= 13
    (cd "$tmp" && apt_download "$rl") &&
      for f in "$tmp"/libreadline*.deb; do dpkg-deb -x "$f" "$tmp/root"; done
  fi
  mkdir -p "$out"
  "$VENV/bin/python" jobs/prepare_corpus.py --root "$tmp/root" --out "$out" >&2
  corpus_stamp_value >"$stamp"
  SUMMARY+=("corpus: wrote ${#CORPUS_FILES[@]} files to $out ($(du -sb "$out" | cut -f1) bytes) ($(elapsed "$t0"))")
}

# ---- run ------------------------------------------------------------------------------------------

if [ "$CHECK_ONLY" -eq 1 ]; then
  if step_system; then exit 0; else exit 1; fi
fi
if [ "$DO_SYSTEM" -eq 1 ]; then step_system; else SUMMARY+=("system: skipped (--no-system)"); fi
step_venv
if [ "$DO_DATA" -eq 1 ]; then
  step_vocab
  step_corpus
else
  SUMMARY+=("data: skipped (--no-data)")
fi

{
  IFS='|'
  s="${SUMMARY[*]}"
  echo "setup: done in $(elapsed "$T_ALL"): ${s//|/; }"
  [ ${#WARNINGS[@]} -eq 0 ] || echo "setup: ${#WARNINGS[@]} warning(s) above"
}
