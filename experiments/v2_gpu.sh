#!/usr/bin/env bash
# Both studies of Memory Mosaics v2 (REPRODUCTION.md "Memory Mosaics v2 at our scale") at once, detached
# from the device call that starts them, so that they run on across several calls of one warm machine
# (a device call lasts at most 10 minutes; a process in its own session outlives it):
#   bash experiments/v2_gpu.sh start LC_SECONDS ARM...   start long_context_gpu.sh (training stopped at
#        LC_SECONDS, then the evaluations at 16k and 32k) with the arms named, and new_knowledge on the GPU
#        (NK_MODELS, default "mosaic mosaic-v2 llama"; NK_SEEDS, default "0 1"; NK_JOBS runs at once,
#        default 6; NK_ARGS, more flags; NK=0 starts the long-context study alone) and, with RB_SECONDS set, the
#        RegBench sweep of regbench_gpu.sh for that long (RB_SIZES, RB_LRS, RB_PARALLEL for its SIZES, LRS and
#        PARALLEL, default 100 1000, the preset search and 4; its other variables as they are, e.g. EXTRA="--models
#        mosaic-v2 llama"), then return at once
#   bash experiments/v2_gpu.sh collect WAIT_SECONDS     wait until both are done or WAIT_SECONDS have passed,
#        then copy what they have written so far (no checkpoints) to $OUT: long_context.tgz,
#        new_knowledge.tgz, rb.tgz and the logs
# The machine is given back about 30 s after a call returns, and the detached runs with it: issue the next
# collect at once. Everything lives under /tmp/v2bg on the machine; the long-context arms and their sizes are
# long_context_gpu.sh's (its head comment). Needs .carry/books.tar.xz.
set -uo pipefail
BG=/tmp/v2bg
OUT=${OUT:-gpu-results}
mode=${1:?usage: v2_gpu.sh start LC_SECONDS ARM... | collect WAIT_SECONDS}; shift
case $mode in
  start)
    limit=${1:?start: give LC_SECONDS}; shift
    mkdir -p $BG/lc $BG/nk
    OUT=$BG/lc setsid nohup bash experiments/long_context_gpu.sh "$limit" "$@" > $BG/long_context.log 2>&1 < /dev/null &
    echo $! > $BG/lc.pid
    if [ -n "${RB_SECONDS:-}" ]; then
      mkdir -p $BG/rb
      OUT=$BG/rb IID=${IID:-0} SIZES=${RB_SIZES:-100 1000} LRS=${RB_LRS:-2.5e-4 5e-4 1e-3} PARALLEL=${RB_PARALLEL:-4} \
        setsid nohup bash experiments/regbench_gpu.sh "$RB_SECONDS" > $BG/regbench.log 2>&1 < /dev/null &
      echo $! > $BG/rb.pid; echo "started regbench (pid $(cat $BG/rb.pid))"
    fi
    [ "${NK:-1}" = 1 ] || { echo "started long_context (pid $(cat $BG/lc.pid)); new_knowledge not (NK=0)"; exit 0; }
    setsid nohup python -m experiments.new_knowledge --out $BG/nk --device cuda --jobs "${NK_JOBS:-6}" \
      --models ${NK_MODELS:-mosaic mosaic-v2 llama} --seeds ${NK_SEEDS:-0 1} --quiet ${NK_ARGS:-} \
      > $BG/new_knowledge.log 2>&1 < /dev/null &
    echo $! > $BG/nk.pid
    echo "started long_context (pid $(cat $BG/lc.pid)) and new_knowledge (pid $(cat $BG/nk.pid))" ;;
  collect)
    wait_s=${1:?collect: give WAIT_SECONDS}
    mkdir -p "$OUT"
    end=$((SECONDS + wait_s))
    alive() { [ -f $BG/$1.pid ] && kill -0 "$(cat $BG/$1.pid)" 2>/dev/null; }
    while (alive lc || alive nk || alive rb) && [ $SECONDS -lt $end ]; do sleep 5; done
    for s in lc nk rb; do alive $s && echo "$s: still running" || echo "$s: done"; done
    cp $BG/lc/long_context.tgz "$OUT/" 2>/dev/null || echo "no long_context.tgz yet"
    [ -f $BG/rb.pid ] && { cp $BG/rb/rb.tgz $BG/rb/*.log "$OUT/" 2>/dev/null || echo "no rb.tgz yet"; }
    [ -d $BG/nk ] && tar -czf "$OUT/new_knowledge.tgz" -C $BG --exclude='*.pt' nk
    cp $BG/*.log "$OUT/"
    tail -n 5 $BG/*.log
    ls $BG/nk/runs 2>/dev/null | wc -l | xargs echo "new_knowledge runs finished:" ;;
  *) echo "v2_gpu.sh: unknown mode $mode (start or collect)" >&2; exit 2 ;;
esac
