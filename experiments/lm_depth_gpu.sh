#!/usr/bin/env bash
# One device call of the language-modelling study (REPRODUCTION.md): the parts named on the command line
# run at once for TRAIN_SECONDS, resuming from an earlier call's results (PRIOR.tgz, as this script packs
# them), then the reports. The small files of every run (no checkpoints) are packed into $OUT/results.tgz
# every 15 s, so that what finished comes back even if the call is cut; an unfinished run starts again
# next time (its checkpoint stays on the device machine).
# Usage: bash experiments/lm_depth_gpu.sh TRAIN_SECONDS PRIOR.tgz|- PART...
#   extend     the books grid past an edge that a model's best lies on (GPT_LRS, MOSAIC_LRS; the rule is
#              the same for both models) at DEPTHS (default 1 2 4 8)
#   seeds      seeds SEEDS (default 1 2) of each model's selected learning rate at depths 2 and 4 (SEED_DEPTHS;
#              MOSAIC_LR, GPT_LR: the selections of REPRODUCTION.md); seed 0 is the grid's run (extend
#              trains it again where an earlier call cut it short; SEEDS="0 1 2" trains it here, for a
#              call without PRIOR)
#   reference  the Memory Mosaic at depth REF_DEPTH (default 4), lr REF_LR (default 1e-2), seeds REF_SEEDS (default 0)
#              on the reference ops, REF_PARALLEL (default 1) at a time, against its fused twin of each seed
#              (one depth-8 run took 235 s beside two short TinyStories runs on 2026-12-01)
#   stories    the TinyStories grid at depths 1 and 2, STORIES_MODELS (default both), lr STORIES_LRS (default
#              {1e-3, 2e-3, 5e-3, 1e-2, 2e-2}); it is short, and starves beside many books runs: give it a call
#              with few others. It first trains again the selected depth-1/2 runs whose weights are gone, for
#              the evaluations (STORIES_RERUN="" skips that). Its report reads every learning rate that has runs,
#              and seeds 1 and 2 where they exist (STORIES_SEEDS="1 2" trains them at STORIES_LRS).
#   stories-reference  the TinyStories Memory Mosaic at depth STORIES_REF_DEPTH (default 2), lr STORIES_REF_LR
#              (default 2e-2) on the reference ops, against its fused twin
#   reference-ops  the fused Memory Mosaic with one C-mem op on its PyTorch reference, for each op of
#              ABLATE_OPS (default mosaic_attention leaky_average peek_ahead_value; an item may name several
#              ops joined by commas, which then run on the reference together; "none" is the all-fused model, for
#              seeds beyond the committed depth8_bf16 ones), at depth ABLATE_DEPTH
#              (default 8), lr ABLATE_LR (default 1e-2), seeds ABLATE_SEEDS (default 0 1 2), PARALLEL at a time
#              per op, each op into /tmp/lm_ablate/OP; compare the reports with the committed depth8_bf16 one
#   evals      train again the selected depth-1 and depth-2 books runs whose weights are gone, for the
#              evaluations (out-of-distribution loss, attention, long context, prompts)
# GRAPH=1 gives every run --cuda-graph. PARALLEL (default 6) runs at once per part. EXTRA: more lm_depth run
# flags, last on the line (a CPU smoke test: EXTRA="--device cpu --steps 4 --width 64 --batch-size 2
# --block-size 32 --eval-every 2 --kernels reference").
# Needs the folder DATA (default .carry, in the checkout) with books.tar.xz, simplewiki/simplewiki.json.xz and stories/.
DATA=${DATA:-.carry}
set -uo pipefail
limit=$1; prior=$2; shift 2
export MOSAIC_CACHE_DIR=/tmp/mosaic-cache PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-results}; mkdir -p "$OUT" /tmp/books /tmp/figures/books /tmp/figures/stories /tmp/lm_depth /tmp/lm_stories /tmp/lm_ablate
tar -xJf $DATA/books.tar.xz -C /tmp/books
[ "$prior" != - ] && tar -xzf "$prior" -C /tmp
ood=$DATA/simplewiki/simplewiki.json.xz
pack() { tar -czf "$OUT/results.tmp.tgz" -C /tmp --exclude='*.pt' --exclude='*.tmp' figures lm_depth lm_stories lm_ablate 2>/dev/null \
           && mv "$OUT/results.tmp.tgz" "$OUT/results.tgz"; }
(while sleep 15; do pack; done) &
packer=$!
# Tokenise once, with every core, before the runs start (they then read the cache).
python -c "from mosaic_model.data.text import load_corpus as l; l('/tmp/books', doc_split='file', workers=16, progress=False); l('$ood', progress=False); l('$DATA/stories', progress=False)"
lm=(python -m experiments.lm_depth)
common=(--parallel "${PARALLEL:-6}" --time-limit "$limit" $([ "${GRAPH:-0}" = 1 ] && echo --cuda-graph) ${EXTRA:-})
books=(--data /tmp/books --out /tmp/lm_depth)
stories=(--data $DATA/stories --doc-split auto --out /tmp/lm_stories --depths 1 2 --steps 300 --eval-every 25)
pids=()
for part in "$@"; do
  case $part in
    extend)
      "${lm[@]}" run "${books[@]}" --depths ${DEPTHS:-1 2 4 8} --models gpt --lrs ${GPT_LRS:-0.001} "${common[@]}" > /tmp/figures/extend_gpt.log 2>&1 &
      pids+=($!)
      "${lm[@]}" run "${books[@]}" --depths ${DEPTHS:-1 2 4 8} --models mosaic --lrs ${MOSAIC_LRS:-0.02} "${common[@]}" > /tmp/figures/extend_mosaic.log 2>&1 &
      pids+=($!) ;;
    seeds)
      "${lm[@]}" run "${books[@]}" --depths ${SEED_DEPTHS:-2 4} --models mosaic --lrs ${MOSAIC_LR:-0.02} --seeds ${SEEDS:-1 2} "${common[@]}" > /tmp/figures/seeds_mosaic.log 2>&1 &
      pids+=($!)
      "${lm[@]}" run "${books[@]}" --depths ${SEED_DEPTHS:-2 4} --models gpt --lrs ${GPT_LR:-0.002} --seeds ${SEEDS:-1 2} "${common[@]}" > /tmp/figures/seeds_gpt.log 2>&1 &
      pids+=($!) ;;
    reference)
      "${lm[@]}" run "${books[@]}" --models mosaic --depths ${REF_DEPTH:-4} --lrs ${REF_LR:-0.01} --seeds ${REF_SEEDS:-0} --kernels reference --parallel ${REF_PARALLEL:-1} --time-limit "$limit" > /tmp/figures/reference.log 2>&1 &
      pids+=($!) ;;
    stories-reference)
      "${lm[@]}" run "${stories[@]}" --models mosaic --depths ${STORIES_REF_DEPTH:-2} --lrs ${STORIES_REF_LR:-0.02} --kernels reference --parallel 1 --time-limit "$limit" > /tmp/figures/stories_reference.log 2>&1 &
      pids+=($!) ;;
    stories)
      "${lm[@]}" run "${stories[@]}" --models ${STORIES_MODELS:-mosaic gpt} --lrs ${STORIES_LRS:-0.001 0.002 0.005 0.01 0.02} --seeds ${STORIES_SEEDS:-0} "${common[@]}" --rerun-selected ${STORIES_RERUN-1 2} > /tmp/figures/stories.log 2>&1 &
      pids+=($!) ;;
    reference-ops)
      for op in ${ABLATE_OPS:-mosaic_attention leaky_average peek_ahead_value}; do
        refops=(--reference-ops ${op//,/ }); [ "$op" = none ] && refops=()
        "${lm[@]}" run --data /tmp/books --out /tmp/lm_ablate/$op --models mosaic --depths ${ABLATE_DEPTH:-8} --lrs ${ABLATE_LR:-0.01} \
          --seeds ${ABLATE_SEEDS:-0 1 2} ${refops[@]+"${refops[@]}"} "${common[@]}" > /tmp/figures/ablate_$op.log 2>&1 &
        pids+=($!)
      done ;;
    evals)
      # --lrs of finished runs only: nothing of the grid is new, only the selected runs are trained again.
      "${lm[@]}" run "${books[@]}" --depths 1 2 --lrs 0.002 "${common[@]}" --rerun-selected 1 2 > /tmp/figures/evals.log 2>&1 &
      pids+=($!) ;;
    *) echo "unknown part $part" >&2; kill $packer; exit 2 ;;
  esac
done
wait "${pids[@]}"
tail -n 2 /tmp/figures/*.log
pack
# Reports: the books selection and curves (evaluations only where weights exist; the loss by position also on
# TinyStories, a second out-of-distribution text for book-trained models), the stories with theirs.
evals=$([[ " $* " == *" evals "* ]] || echo --no-evals)
"${lm[@]}" report "${books[@]}" $evals --seeds 0 1 2 --ood $ood $DATA/stories --figures /tmp/figures/books --num-seqs 512 > /tmp/figures/books_report.log 2>&1 &
if [[ " $* " == *" stories"* ]]; then
  "${lm[@]}" report "${stories[@]}" --seeds 0 1 2 --ood $ood --figures /tmp/figures/stories --num-seqs 512 > /tmp/figures/stories_report.log 2>&1 &
fi
for op in $(ls /tmp/lm_ablate); do
  # Seeds without seed 0 (ABLATE_SEEDS="3 4") exit 2 here: merge their run metrics with seed 0's first.
  "${lm[@]}" report --out /tmp/lm_ablate/$op --depths ${ABLATE_DEPTH:-8} --lrs ${ABLATE_LR:-0.01} --no-evals --seeds ${ABLATE_SEEDS:-0 1 2} \
    --figures /tmp/figures/ablate_$op > /tmp/figures/ablate_${op}_report.log 2>&1
done
wait $(jobs -p | grep -v "^$packer$")
kill $packer 2>/dev/null
cat /tmp/figures/*_report.log
pack
