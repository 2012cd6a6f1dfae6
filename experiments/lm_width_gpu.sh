#!/usr/bin/env bash
# One device call of the paper-width study (REPRODUCTION.md, "The paper's width"): the Memory Mosaic and
# GPT2 at d=768, 12 heads, T=512, batch 32 on the children's books, each process stopped cleanly at
# TRAIN_SECONDS. The parts named on the command line run at once, PARALLEL (default 2) processes each:
#   short  depths DEPTHS (default 12) at the learning rates LR (default 2e-3, GPT2's best at d=256; several: "1e-3 5e-3"),
#          warm-up over a tenth of STEPS, both models or those of MODELS ("gpt" or "mosaic")
#   paper  depth 12 on the paper's own schedule start (lr 5e-3, 2,000 warm-up steps), where the Memory
#          Mosaic was first seen to start slowly
#   paper-gpt2-output  the Memory Mosaic alone on that schedule with GPT2's output layer (--output-layer gpt2),
#          which removed the slow start in the CPU measurement (experiments/slow_start.py)
#   short-gpt2-output  the Memory Mosaic at depths GPT2_OUTPUT_DEPTHS (default 12) with GPT2's output layer on the
#          short part's schedule and learning rates
# SEEDS (default: seed 0 only) trains every part's runs with those seeds instead (folders ...-s1 for seed 1).
# The training loss is logged every step and the validation loss every EVAL_EVERY steps. The small files
# (no checkpoints) go to $OUT/width.tgz every 15 s, so what finished comes back if the call is cut.
# Memory: on 2026-12-04 eight 768-wide runs at once (depths 1, 4, 12 and two 12-layer ones) ran the H200
# out of memory (each 12-13 GiB to 22 GiB) and every Memory Mosaic died in its first steps; keep to about
# four processes. On 2026-12-05 six at once on an H100 beside other studies ran out of memory again (three
# died) and the survivors trained at a tenth of their speed alone: run this part alone.
# Usage: bash experiments/lm_width_gpu.sh TRAIN_SECONDS PART... (needs .carry/books.tar.xz)
set -uo pipefail
limit=$1; shift
DATA=${DATA:-.carry}
STEPS=${STEPS:-600}
EVAL_EVERY=${EVAL_EVERY:-50}
export MOSAIC_CACHE_DIR=/tmp/mosaic-cache PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-gpu-results}; mkdir -p "$OUT" /tmp/books /tmp/width
tar -xJf $DATA/books.tar.xz -C /tmp/books
# Checkpoints (*.pt, and *.tmp while one is written) stay behind; each pack writes its own temporary file.
pack() { tar -czf "$OUT/width.$1.tmp" -C /tmp --exclude='*.pt' --exclude='*.tmp' width && mv "$OUT/width.$1.tmp" "$OUT/width.tgz"; }
(while sleep 15; do pack periodic; done) &
packer=$!
# Tokenise once, with every core, before the runs start (they then read the cache).
python -c "from mosaic_model.data.text import load_corpus as l; l('/tmp/books', doc_split='file', workers=16, progress=False)"
common=(--data /tmp/books --width 768 --block-size 512 --batch-size 32 --steps "$STEPS" --eval-every "$EVAL_EVERY"
        --log-every 1 --cuda-graph --time-limit "$limit" --parallel "${PARALLEL:-2}" ${SEEDS:+--seeds $SEEDS})
for part in "$@"; do
  case $part in
    short) python -m experiments.lm_depth run --out /tmp/width/short ${MODELS:+--models $MODELS} --depths ${DEPTHS:-12} --lrs ${LR:-0.002} \
             "${common[@]}" > /tmp/width/short.log 2>&1 & ;;
    paper) python -m experiments.lm_depth run --out /tmp/width/paper --depths 12 --lrs 0.005 --warmup 2000 \
             "${common[@]}" > /tmp/width/paper.log 2>&1 & ;;
    paper-gpt2-output) python -m experiments.lm_depth run --out /tmp/width/paper_gpt2_output --models mosaic --depths 12 \
             --lrs 0.005 --warmup 2000 "${common[@]}" --train-args --output-layer gpt2 > /tmp/width/paper_gpt2_output.log 2>&1 & ;;
    short-gpt2-output) python -m experiments.lm_depth run --out /tmp/width/short_gpt2_output --models mosaic \
             --depths ${GPT2_OUTPUT_DEPTHS:-12} --lrs ${LR:-0.002} "${common[@]}" --train-args --output-layer gpt2 > /tmp/width/short_gpt2_output.log 2>&1 & ;;
    *) echo "unknown part $part" >&2; kill $packer; exit 2 ;;
  esac
done
wait $(jobs -p | grep -v "^$packer$")
kill $packer 2>/dev/null
tail -n 3 /tmp/width/*.log
for f in /tmp/width/*/*/train.log; do echo "$f"; tail -n 2 "$f"; done
pack final
