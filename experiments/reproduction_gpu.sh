#!/usr/bin/env bash
# The v1 reproduction's GPU studies (REPRODUCTION.md: the paper's width, RegBench trained longer, the stutter
# at width 256, the induction positive control), started detached from the device call, so that they run on
# across the calls of one warm machine (a call lasts at most 10 minutes; a process in its own session
# outlives it), then collected:
#   bash experiments/reproduction_gpu.sh start SECONDS PART...   start each PART in the background, each
#        stopped at SECONDS of training where it can be, and return at once. Parts:
#     width    lm_width_gpu.sh's parts WIDTH_PARTS (default "short short-gpt2-output"; d=768, T=512, batch 32):
#              DEPTHS (default "12 4 1": the longest runs first) at LR for both models, STEPS (default 1200),
#              EVAL_EVERY (default 100), SEEDS (default 0), WIDTH_PARALLEL (default 3; 1 on a card under 100 GB, beside
#              the output-layer arm) processes of the short part at once
#     rb       regbench_gpu.sh on RB_SIZES (default "2500 10000"), RB_DEPTHS (default "2 4": the preset's depth
#              and a larger model), RB_WIDTHS (default 128), RB_LRS (default "1e-3 2e-3": the earlier search's best
#              at both sizes and the point past it) for both models, up to the preset's 200 epochs (STEP_CAP,
#              default none), each run ended once its validation loss has not improved for RB_PATIENCE_STEPS (default
#              3,160: 40 epochs at 2,500 languages, 11 at 10,000; regbench --patience-steps), RB_PARALLEL at once (default 4: the unfinished runs'
#              checkpoints come back, and must fit a call's 64 MiB), every run replaying CUDA graphs, resuming from
#              the run folders in RB_PRIOR (default docs/figures/regbench_long/runs: the finished runs, committed)
#              and the checkpoints unpacked there; RB_MODELS (default "gpt mosaic") orders the runs at each size:
#              the transformer first, as its runs train longest (up to 62,600 steps at 10,000 languages);
#              RB_RESUME_ONLY=1 trains only the runs whose checkpoints RB_PRIOR holds and starts none (regbench
#              --resume-only), so that a call can carry some of the checkpoints when all of them exceed 64 MiB
#     stutter  the depth study's depth-2 pair (width 256, T=512, batch 16, 1,200 steps; the Memory Mosaic at its
#              selected lr 4e-2, GPT2 at 2e-3) trained again with seeds 0, 1 and 2, then experiments/stutter.py on
#              each seed's pair on the GPU (waits for the width part's tokenised books when that part runs)
#     stutter-stories  the same on the TinyStories-trained depth-2 pair (300 steps; the Memory Mosaic at 2e-2, GPT2
#              at 2e-3, the stories study's selected rates), from $DATA/stories (the JSON-lines stories and the
#              train split's start, xz-compressed)
#     induction  experiments/induction.py's positive-control grid on the GPU: IND_MODELS (default "gpt-2 gpt-3
#              llama-2") on IND_LRS (default "1e-3 3e-3"), IND_SEEDS (default "0"), IND_STEPS (default 50000)
#   bash experiments/reproduction_gpu.sh collect WAIT_SECONDS    wait until every started part is done or
#        WAIT_SECONDS have passed, then copy what they wrote so far (no checkpoints) to $OUT as PART.tgz, with
#        the logs
# Everything lives under /tmp/repro on the machine. Needs .carry/books.tar.xz for width and stutter.
# Memory and speed, 2026-12-05 on an H100 (80 GB): width (short, six runs), stutter and rb (four at once) with a
# GPU test sweep beside them held 70 GiB; three width runs (GPT2 12 layers, Memory Mosaic 1 and 4 layers) died
# of out-of-memory, and the rest trained at a tenth of their speed alone (the 12-layer Memory Mosaic at 24k
# tokens/s: step 100 of 1,200 after 7 minutes). Start the width part alone, on an H200, and the others after it.
# 2026-12-05 on an H200: the width part's short runs (six) alone with 4 pytest workers beside them held 94 GiB and
# reached step 200 of 1,200 in the 400 s limit, their steps' own times summing to 25-90 s (where the rest went:
# the metrics' elapsed_s says from now on). 2026-12-05, again on an H200 with seven runs at once: elapsed_s put
# 284-299 s of every run's 400 into its first evaluation (one window a model call, 640 small eager calls from each
# of seven processes time-sharing the GPU); evaluations now take many windows a call on a GPU
# (mosaic_model/evaluation/metrics.py), and fewer runs share the GPU at once.
set -uo pipefail
BG=/tmp/repro
OUT=${OUT:-gpu-results}
DATA=${DATA:-.carry}
export MOSAIC_CACHE_DIR=/tmp/mosaic-cache PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
mode=${1:?usage: reproduction_gpu.sh start SECONDS PART... | collect WAIT_SECONDS}; shift
detach() {  # detach NAME COMMAND...: run COMMAND in its own session, its output in $BG/NAME.log
  local name=$1; shift
  setsid nohup "$@" > "$BG/$name.log" 2>&1 < /dev/null &
  echo $! > "$BG/$name.pid"; echo "started $name (pid $!)"
}
stutter_part() {  # stutter_part NAME DATA MM_LR PREPARE [LM_DEPTH_ARGS...]: after the shell line PREPARE, the
  # depth-2 pair (the Memory Mosaic at MM_LR, GPT2 at 2e-3) trained on DATA with seeds 0, 1 and 2, then
  # experiments/stutter.py on each seed's pair on the GPU; everything under $BG/NAME
  local name=$1 data=$2 lr=$3 prepare=$4; shift 4
  mkdir -p $BG/$name
  detach $name bash -c "$prepare
    common=(--data $data --out $BG/$name/runs --depths 2 --cuda-graph --seeds 0 1 2 --time-limit $limit $*)
    python -m experiments.lm_depth run --models mosaic --lrs $lr \"\${common[@]}\" &
    python -m experiments.lm_depth run --models gpt --lrs 0.002 \"\${common[@]}\" &
    wait
    for s in '' -s1 -s2; do
      OMP_NUM_THREADS=4 python -m experiments.stutter $BG/$name/runs/mosaic-L2-lr$lr\$s \
        $BG/$name/runs/gpt-L2-lr0.002\$s --out $BG/$name/study/seed\$s --windows 64 --samples 3 --device cuda &
    done
    wait"
}
case $mode in
  start)
    limit=${1:?start: give SECONDS}; shift
    mkdir -p $BG
    for part in "$@"; do
      case $part in
        width) mkdir -p $BG/width
          # four 768-wide runs at once ran an 80 GB H100 out of memory (2026-12-05): two there (one short run
          # beside the output-layer arm)
          mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
          [ "${mem:-0}" -lt 100000 ] && : "${WIDTH_PARALLEL:=1}"
          detach width env OUT=$BG/width DATA="$DATA" STEPS="${STEPS:-1200}" EVAL_EVERY="${EVAL_EVERY:-100}" \
            PARALLEL="${WIDTH_PARALLEL:-3}" DEPTHS="${DEPTHS:-12 4 1}" bash experiments/lm_width_gpu.sh "$limit" ${WIDTH_PARTS:-short short-gpt2-output} ;;
        rb) mkdir -p $BG/rb
          detach rb env OUT=$BG/rb IID=0 SIZES="${RB_SIZES:-2500 10000}" DEPTHS="${RB_DEPTHS:-2 4}" \
            WIDTHS="${RB_WIDTHS:-128}" LRS="${RB_LRS:-1e-3 2e-3}" STEP_CAP="${STEP_CAP:-1000000}" \
            PARALLEL="${RB_PARALLEL:-4}" EXTRA="--models ${RB_MODELS:-gpt mosaic} --patience-steps ${RB_PATIENCE_STEPS:-3160} ${RB_RESUME_ONLY:+--resume-only} --train-args --cuda-graph" \
            bash experiments/regbench_gpu.sh "$limit" "${RB_PRIOR:-docs/figures/regbench_long/runs}" ;;
        stutter)  # the books are untarred here, or by the width part (then wait for its runs)
          stutter_part stutter /tmp/books 0.04 "
            if [ -f $BG/width.pid ]; then
              until ls /tmp/width/*.log >/dev/null 2>&1 || ! kill -0 \$(cat $BG/width.pid) 2>/dev/null; do sleep 5; done
            else
              mkdir -p /tmp/books && tar -xJf $DATA/books.tar.xz -C /tmp/books
            fi" ;;
        stutter-stories)  # the stories study's recipe: 300 steps, evaluations every 25
          stutter_part stutter-stories $DATA/stories 0.02 : --doc-split auto --steps 300 --eval-every 25 ;;
        induction) mkdir -p $BG/induction
          read -ra models <<< "${IND_MODELS:-gpt-2 gpt-3 llama-2}"; read -ra lrs <<< "${IND_LRS:-1e-3 3e-3}"
          read -ra seeds <<< "${IND_SEEDS:-0}"
          detach induction python -m experiments.induction --out $BG/induction --models "${models[@]}" \
            --lrs "${lrs[@]}" --seeds "${seeds[@]}" --steps "${IND_STEPS:-50000}" --eval-every 1000 --device cuda \
            --jobs $(( ${#models[@]} * ${#lrs[@]} * ${#seeds[@]} )) --quiet ;;
        *) echo "reproduction_gpu.sh: unknown part $part (width, rb, stutter, stutter-stories or induction)" >&2; exit 2 ;;
      esac
    done ;;
  collect)
    wait_s=${1:?collect: give WAIT_SECONDS}
    mkdir -p "$OUT"
    end=$((SECONDS + wait_s))
    alive() { kill -0 "$(cat "$1")" 2>/dev/null; }
    running() { for f in $BG/*.pid; do [ -f "$f" ] && alive "$f" && return 0; done; return 1; }
    while running && [ $SECONDS -lt $end ]; do sleep 5; done
    for f in $BG/*.pid; do [ -f "$f" ] || continue; p=$(basename "$f" .pid)
      alive "$f" && echo "$p: still running" || echo "$p: done"; done
    # width and rb pack their own archives (checkpoints left out; rb's unfinished runs' checkpoints come in
    # ckpts.tar.part-* once its time limit has passed); the others are packed here, every log in logs.tgz (a
    # call brings back at most 8 files).
    cp $BG/width/width.tgz $BG/rb/rb.tgz $BG/rb/ckpts.tar.part-* "$OUT/" 2>/dev/null
    [ -d /tmp/width ] && tar -czf "$OUT/width_now.tgz" -C /tmp --exclude='*.pt' --exclude='*.tmp' width
    for p in stutter stutter-stories induction; do
      [ -d $BG/$p ] && tar -czf "$OUT/$p.tgz" -C $BG --exclude='*.pt' --exclude='*.tmp' $p; done
    tar -czf "$OUT/logs.tgz" -C $BG $(cd $BG && ls *.log */*.log 2>/dev/null)
    tail -n 4 $BG/*.log ;;
  *) echo "reproduction_gpu.sh: unknown mode $mode (start or collect)" >&2; exit 2 ;;
esac
