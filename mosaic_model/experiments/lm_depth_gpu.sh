#!/usr/bin/env bash
# One device call of the language-modelling study (REPRODUCTION.md). In parallel: the books depth grid
# (extending an earlier call's results when given, and training again the selected depth-1 and depth-2
# runs whose weights did not come back), the Memory Mosaic at depth 4 on the reference ops against its
# fused twin (for as long as the others run), and the TinyStories grid at depths 1 and 2. Then both reports, and the small results
# packed into $OUT/results.tgz.
# Usage: bash mosaic_model/experiments/lm_depth_gpu.sh TRAIN_SECONDS [PRIOR.tgz]
# Needs .carry/ with books.tar.xz, gpt2-tokenizer/, simplewiki/simplewiki.json.xz and stories/.
set -euo pipefail
limit=$1; prior=${2:-}
export MOSAIC_TOKENIZER_DIR=$PWD/.carry/gpt2-tokenizer MOSAIC_CACHE_DIR=/tmp/mosaic-cache PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-results}; mkdir -p "$OUT" /tmp/books /tmp/figures/books /tmp/figures/stories
tar -xJf .carry/books.tar.xz -C /tmp/books
[ -n "$prior" ] && tar -xzf "$prior" -C /tmp
ood=.carry/simplewiki/simplewiki.json.xz
# Tokenise once, with every core, before the runs start (they then read the cache).
python -c "from mosaic_model.data.text import load_corpus as l; l('/tmp/books', doc_split='file', workers=16, progress=False); l('$ood', progress=False); l('.carry/stories', progress=False)"
m=python; lm="-m mosaic_model.experiments.lm_depth"
books=(--data /tmp/books --out /tmp/lm_depth)
stories=(--data .carry/stories --doc-split auto --out /tmp/lm_stories --depths 1 2 --steps 300 --eval-every 25)
# The books grid grows by one lr past an edge that a model's best lies on (GPT_LRS, MOSAIC_LRS: the
# rule is the same for both models, REPRODUCTION.md). BOOKS_RERUN: depths whose selected runs are trained
# again for the evaluations when their weights are gone (empty: no evaluations, curves only).
# REFERENCE=1 adds the depth-4 Memory Mosaic on the reference ops.
rerun=${BOOKS_RERUN-1 2}
$m $lm run "${books[@]}" --models gpt --lrs ${GPT_LRS:-0.001} --parallel 5 --time-limit "$limit" --rerun-selected $rerun > /tmp/books_gpt.log 2>&1 &
$m $lm run "${books[@]}" --models mosaic --lrs ${MOSAIC_LRS:-0.02} --parallel 5 --time-limit "$limit" --rerun-selected $rerun > /tmp/books_mosaic.log 2>&1 &
[ "${REFERENCE:-1}" = 1 ] && $m $lm run "${books[@]}" --models mosaic --depths 4 --lrs 0.01 --kernels reference --parallel 1 --time-limit "$limit" > /tmp/reference.log 2>&1 &
$m $lm run "${stories[@]}" --lrs 0.002 0.005 0.01 --parallel 4 --time-limit "$limit" --rerun-selected 1 2 > /tmp/stories.log 2>&1 &
wait
tail -n 2 /tmp/books_*.log /tmp/stories.log
$m $lm report "${books[@]}" $([ -z "$rerun" ] && echo --no-evals) --ood $ood --figures /tmp/figures/books --num-seqs 512 > /tmp/books_report.log 2>&1 &
$m $lm report "${stories[@]}" --lrs 0.002 0.005 0.01 --ood $ood --figures /tmp/figures/stories --num-seqs 512 > /tmp/stories_report.log 2>&1 &
wait
cat /tmp/books_report.log /tmp/stories_report.log
cp /tmp/*.log /tmp/figures/
tar -czf "$OUT/results.tgz" -C /tmp --exclude='*.pt' figures lm_depth lm_stories
if [ "${BENCH:-0}" = 1 ]; then  # cached against uncached generation, alone on the GPU (BENCHMARKS.md)
  timeout 240 python -m benchmarks.bench_generate --profile 8 > "$OUT/bench_generate.log" 2>&1 || true
fi
