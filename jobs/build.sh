#!/usr/bin/env bash
# Configures and builds triad (Release) into build/. CUDA parts are built where nvcc exists.
# Usage: jobs/build.sh [extra cmake configure args...]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
if [[ ! -f build/CMakeCache.txt ]]; then
  # Ninja where it is installed: it keeps both cores busy to the end (a clean build: 520 s
  # against make's 540 s on 2 cores); make otherwise.
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  cmake --preset release "${generator[@]}" "$@"
elif [[ $# -gt 0 ]]; then
  cmake -S . -B build "$@"
fi
cmake --build build -j"$jobs"
