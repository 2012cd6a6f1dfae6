#!/usr/bin/env bash
# One device call of the depth study: train the given depths, report, pack the small results into $OUT.
# Usage: bash mosaic_model/experiments/lm_depth_gpu.sh "1 2" TRAIN_SECONDS
# Needs .carry/ with books.tar.xz, gpt2-tokenizer/ and simplewiki/simplewiki.json.xz (REPRODUCTION.md).
set -euo pipefail
depths=$1; limit=$2
export MOSAIC_TOKENIZER_DIR=$PWD/.carry/gpt2-tokenizer MOSAIC_CACHE_DIR=/tmp/mosaic-cache PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-results}; mkdir -p "$OUT" /tmp/books /tmp/figures
tar -xJf .carry/books.tar.xz -C /tmp/books
# Tokenise once, with every core, before the runs start (they then read the cache).
python -c "from mosaic_model.data.text import load_corpus as l; l('/tmp/books', doc_split='file', workers=16, progress=False); l('.carry/simplewiki/simplewiki.json.xz', progress=False)"
common=(--data /tmp/books --out /tmp/lm_depth --depths $depths)
python -m mosaic_model.experiments.lm_depth run "${common[@]}" --parallel 16 --time-limit "$limit"
python -m mosaic_model.experiments.lm_depth report "${common[@]}" --ood .carry/simplewiki/simplewiki.json.xz \
  --figures /tmp/figures --num-seqs 512
tar -czf "$OUT/results.tgz" -C /tmp --exclude='*.pt' figures lm_depth
