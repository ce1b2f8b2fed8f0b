#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (the CI command).
# Tests that read ../shared/data find it beside the checkout.
# Where nvcc exists, the CUDA part (src/cuda, tests/cuda) is compiled too; its
# tests need a GPU and run on the GPU machine (README, "CUDA").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
ctest --test-dir build/release --output-on-failure -j "$(nproc)"
if command -v nvcc >/dev/null 2>&1; then
  echo "test.sh: nvcc found, compiling the CUDA part (build/cuda)"
  cmake -S . -B build/cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DTURBOKV_CUDA=ON -DTURBOKV_BUILD_BENCH=OFF >/dev/null
  cmake --build build/cuda -j "$(nproc)" --target cuda_tests turbokv-cuda-bench
fi
