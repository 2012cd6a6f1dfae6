#!/usr/bin/env bash
# One device call of the depth study: train the given depths, report, copy the small results to $OUT.
# Usage: bash mosaic_model/experiments/lm_depth_gpu.sh "1 2" TRAIN_SECONDS
# Needs .carry/ with books.tar.xz, gpt2-tokenizer/ and simplewiki/simplewiki.json.xz.
set -euo pipefail
depths=$1; limit=$2
export MOSAIC_TOKENIZER_DIR=$PWD/.carry/gpt2-tokenizer MOSAIC_CACHE_DIR=/tmp/mosaic-cache PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-results}; mkdir -p "$OUT" /tmp/books
tar -xJf .carry/books.tar.xz -C /tmp/books
common=(--data /tmp/books --out /tmp/lm_depth --depths $depths)
python -m mosaic_model.experiments.lm_depth run "${common[@]}" --parallel 16 --time-limit "$limit"
python -m mosaic_model.experiments.lm_depth report "${common[@]}" --ood .carry/simplewiki/simplewiki.json.xz \
  --figures "$OUT/figures" --num-seqs 512
tar -czf "$OUT/runs_metrics.tgz" -C /tmp lm_depth --exclude='*.pt'
