#!/usr/bin/env bash
# One device call of the length-extrapolation study (experiments/long_context.py; REPRODUCTION.md "Memory
# Mosaics v2 at our scale"): the arms named on the command line train at once on the children's books
# (HELDOUT whole books, default 16, set aside first), each process stopped cleanly at TRAIN_SECONDS, then
# every finished run (EVAL=selected: those of the selected learning rate; EVAL=new: the finished runs no earlier
# call scored, into tagged files the report merges (2026-12-06: re-scoring every run each call cost minutes);
# UNFINISHED=1: runs stopped early
# count too) is scored on the held-out books at
# each of LENGTHS (default 16384 32768) with `mosaic-eval per-position --full-length` (run as python -m: the
# device's checkout is not installed, so the console script is absent there), the arms at once.
# Sizes: WIDTH 256, DEPTH 4, T 1024, BATCH 16, STEPS 1500, LRS "1e-3 2e-3 5e-3", SEEDS "0", PARALLEL 3 per arm. The small files come back in $OUT/long_context.tgz (every
# 15 s and at the end). Arms: mosaic mosaic-v2 mosaic-v2-fixed-delay mosaic-v2-fixed-bandwidth
# mosaic-v2-v1-keys llama; ARM:LR,LR trains that arm on those learning rates instead of LRS (to complete an arm
# whose other runs an earlier call made). Usage: bash experiments/long_context_gpu.sh TRAIN_SECONDS ARM[:LR,...]...
# (needs .carry/books.tar.xz; a later `python -m experiments.long_context report --out DIR` reads the result)
# Memory: each run takes about 16 GiB at these sizes (12 GiB of it the CUDA graph's pool); on 2026-12-05
# eight at once beside six new_knowledge runs ran the H200 out of memory and every v2 run died in its first
# steps: keep to about seven. Eager (GRAPH=0) is no cure: on 2026-12-05 twelve eager runs took 10-16 GiB each
# (the attention's float32 buffers of the backward) and five died at start; the seven left reached step 500
# by the 720 s limit. On 2026-12-06 (an H100 80GB) five eager runs at once fit (about 15.5 GiB each; six did
# not) and each trained its 800 steps in 63-116 s (the runs' elapsed_s); startup and the evaluations at 16k and
# 32k took about as long again. Most of a
# run's memory is its logits (16 x 1024 x 50304 in float32 is 3.3 GB, with their gradient and bf16 copies):
# LOSS_CHUNK=1024 makes the training loss's logits 1024 positions at a time (mosaic-train --loss-chunk).
# TRAIN_ARGS: more mosaic-train flags for every arm ("--max-steps-this-run 500" stops each run at step 500 of
# its STEPS-long schedule, as the time limit stopped the runs of 2026-12-05).
set -uo pipefail
limit=$1; shift
DATA=${DATA:-.carry}
export MOSAIC_CACHE_DIR=/tmp/mosaic-cache PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
OUT=${OUT:-gpu-results}; mkdir -p "$OUT" /tmp/books_all /tmp/lc/train_books /tmp/lc/heldout_books /tmp/lc/evals
tar -xJf $DATA/books.tar.xz -C /tmp/books_all
books=$(find /tmp/books_all -name '*.txt' | sort)
echo "$books" | head -n -"${HELDOUT:-16}" | xargs -I{} cp {} /tmp/lc/train_books/
echo "$books" | tail -n "${HELDOUT:-16}" | xargs -I{} cp {} /tmp/lc/heldout_books/
pack() { tar -czf "$OUT/lc.$1.tmp" -C /tmp --exclude='*.pt' --exclude='*.tmp' --exclude=lc/train_books \
           --exclude=lc/heldout_books lc && mv "$OUT/lc.$1.tmp" "$OUT/long_context.tgz"; }
(while sleep 15; do pack periodic; done) &
packer=$!
python -c "from mosaic_model.data.text import load_corpus as l; l('/tmp/lc/train_books', doc_split='file', workers=16, progress=False); l('/tmp/lc/heldout_books', doc_split='file', progress=False)"
common=(--data /tmp/lc/train_books --width "${WIDTH:-256}" --depths "${DEPTH:-4}" --block-size "${T:-1024}"
        --batch-size "${BATCH:-16}" --steps "${STEPS:-1500}" --seeds ${SEEDS:-0}
        --parallel "${PARALLEL:-3}" --time-limit "$limit")
[ "${GRAPH:-1}" = 1 ] && common+=(--cuda-graph)
arms=()
for spec in "$@"; do
  arm=${spec%%:*}; arms+=("$arm")
  lrs=${LRS:-0.001 0.002 0.005}; [[ $spec == *:* ]] && lrs=${spec#*:} && lrs=${lrs//,/ }
  case $arm in
    mosaic|llama) model=$arm; extra=() ;;
    mosaic-v2) model=mosaic-v2; extra=() ;;
    mosaic-v2-fixed-delay) model=mosaic-v2; extra=(--delay-min 64 --delay-max 64) ;;
    mosaic-v2-fixed-bandwidth) model=mosaic-v2; extra=(--fixed-bandwidth) ;;
    mosaic-v2-v1-keys) model=mosaic-v2; extra=(--ungated-keys) ;;
    *) echo "unknown arm $arm" >&2; kill $packer; exit 2 ;;
  esac
  [ -n "${LOSS_CHUNK:-}" ] && extra+=(--loss-chunk "$LOSS_CHUNK")
  extra+=(${TRAIN_ARGS:-})  # more mosaic-train flags for every arm, e.g. "--max-steps-this-run 500"
  train_args=(); [ ${#extra[@]} -gt 0 ] && train_args=(--train-args "${extra[@]}")  # lm_depth's last flag: it takes the rest
  python -m experiments.lm_depth run --out /tmp/lc/$arm --models $model "${common[@]}" --lrs $lrs ${train_args[@]+"${train_args[@]}"} \
    > /tmp/lc/$arm.log 2>&1 &
done
wait $(jobs -p | grep -v "^$packer$")
# Evaluation, the arms at once: every finished run, or with EVAL=selected only the runs of the learning rate
# that the report selects (lowest mean final validation loss: long_context.select_runs).
# UNFINISHED=1: runs stopped early (a time limit, --max-steps-this-run) count, on their last validation loss.
done_split=$([ "${UNFINISHED:-0}" = 1 ] && echo val || echo final)
for arm in "${arms[@]}"; do
  if [ "${EVAL:-all}" = selected ]; then
    runs=$(python -c "import sys; from pathlib import Path; from experiments.long_context import select_runs as s
r = s(Path(sys.argv[1]), unfinished=sys.argv[2] == '1'); print(' '.join(r['runs']) if r else '')" \
      /tmp/lc/$arm "${UNFINISHED:-0}")
  else
    runs=$(for r in /tmp/lc/$arm/*-L*; do grep -q "\"split\": \"$done_split\"" $r/metrics.jsonl 2>/dev/null && echo $r; done)
  fi
  [ -z "$runs" ] && { echo "$arm: no finished run"; continue; }
  for L in ${LENGTHS:-16384 32768}; do
    todo=$runs name=${arm}_T$L
    if [ "${EVAL:-all}" = new ]; then  # the runs no file of this arm and length holds yet, into a tagged file
      todo=$(python -c "import sys; from pathlib import Path; from experiments.long_context import evaluations as e
done = e(Path('/tmp/lc/evals'), sys.argv[1]).get(int(sys.argv[2]), {})
print(' '.join(r for r in sys.argv[3:] if Path(r).name not in done))" "$arm" "$L" $runs)
      name=${arm}_T${L}_$(date +%s)
    fi
    [ -z "$todo" ] && continue
    python -m mosaic_model.cli.eval per-position $todo --data /tmp/lc/heldout_books --doc-split file --block-size $L --full-length \
      --batch-size 1 --device cuda --quiet --out /tmp/lc/evals/$name > /tmp/lc/evals/$name.log 2>&1 \
      || tail -n 3 /tmp/lc/evals/$name.log
  done &
done
wait $(jobs -p | grep -v "^$packer$")
kill $packer 2>/dev/null
tail -n 2 /tmp/lc/*.log
pack final
