#!/usr/bin/env bash
# Configures and builds turbokv in build/<type> (default: release).
#   scripts/build.sh [release|debug|asan] [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."
type=${1:-release}; shift || true
case "$type" in
  release) args=(-DCMAKE_BUILD_TYPE=Release) ;;
  debug)   args=(-DCMAKE_BUILD_TYPE=Debug) ;;
  asan)    args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DTURBOKV_SANITIZE=ON) ;;
  *) echo "build.sh: unknown build type '$type' (expected release, debug or asan)" >&2; exit 2 ;;
esac
cmake -S . -B "build/$type" -G Ninja "${args[@]}" "$@" >/dev/null
cmake --build "build/$type" -j "$(nproc)"
