#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (the CI command).
# Tests that read ../shared/data find it beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
ctest --test-dir build/release --output-on-failure -j "$(nproc)"
