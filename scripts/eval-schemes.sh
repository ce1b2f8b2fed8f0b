#!/usr/bin/env bash
# Runs the fidelity evaluator behind the tables in docs/RESULTS.md and writes
# JSON and SVG charts to docs/results/. Needs a release build
# (scripts/build.sh release) and ../shared/data beside the checkout.
#   scripts/eval-schemes.sh [chunks-tq-tiny (40)] [chunks-stories (100)] [modes ("strict deploy")]
# THREADS (default 2) sets -t.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${TURBOKV_BIN:-build/release/turbokv}
data=../shared/data
out=docs/results
mkdir -p "$out"
chunks=${1:-40}
stories_chunks=${2:-100}
modes=${3:-strict deploy}
threads=${THREADS:-2}
schemes=fp16,affine8,affine4,turbo8,turbo0v4,turbo0v2,turbo4,turbo4v2,turbo3,turbo3v2,turbo2

for mode in $modes; do
  echo "== tq-tiny-hd128, gutenberg_holdout, ctx 512, $chunks chunks, $mode" >&2
  "$bin" perplexity -m models/tq-tiny-hd128.gguf -f "$data/text/gutenberg_holdout.txt" --ctx 512 \
    --chunks "$chunks" -t "$threads" --kv "$schemes" --mode "$mode" --json --plot "$out/tq-tiny-$mode.svg" \
    > "$out/tq-tiny-$mode.json"
  echo "== stories260K, tinystories_validation_head, ctx 256, $stories_chunks chunks, $mode" >&2
  "$bin" perplexity -m "$data/models/stories260K.gguf" -f "$data/text/tinystories_validation_head.txt" --ctx 256 \
    --chunks "$stories_chunks" -t "$threads" --kv fp16,turbo8,turbo0v4,turbo0v2,turbo4,turbo4v2,turbo3,turbo2 --mode "$mode" \
    --json --plot "$out/stories260K-$mode.svg" > "$out/stories260K-$mode.json"
done
