#!/usr/bin/env bash
# One device call of the RegBench study (REPRODUCTION.md): the sweep resumes from the finished runs in
# PRIOR (a folder of run folders, as the previous call's rb.tgz unpacks), trains what is left for
# SECONDS, and packs every run's small files (no checkpoints) into $OUT/rb.tgz every 15 s, so that what
# finished comes back even if the call is cut. At the end the unfinished runs' checkpoints come back too
# ($OUT/ckpts.tar.part-*), so that the next call, given them in PRIOR, resumes those runs.
# Usage: bash experiments/regbench_gpu.sh SECONDS [PRIOR]
#   SIZES, DEPTHS, WIDTHS, WDS, LRS, PARALLEL, STEP_CAP: the grid (defaults below, the same for both models); IID=1 adds the
#   IID split at 100 languages on the same learning rates; EXTRA: more sweep flags, last on the line (a CPU smoke test:
#   EXTRA="--device cpu --epochs 2 --num-test 4 --train-args --max-string-len 5 --kernels reference").
set -uo pipefail
limit=$1; prior=${2:-}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
OUT=${OUT:-gpu-results}; mkdir -p "$OUT" /tmp/rb
[ -n "$prior" ] && cp -r "$prior"/. /tmp/rb/
(while sleep 15; do tar -czf "$OUT/rb.tmp.tgz" -C /tmp --exclude='*.pt' --exclude='*.tmp' rb 2>/dev/null && mv "$OUT/rb.tmp.tgz" "$OUT/rb.tgz"; done) &
packer=$!
grid=(--depths ${DEPTHS:-2} --widths ${WIDTHS:-128} --wds ${WDS:-0.1} --lrs ${LRS:-1.25e-4 2.5e-4 5e-4 1e-3 2e-3} --step-cap ${STEP_CAP:-3200})
python -m experiments.regbench run --out /tmp/rb --sizes ${SIZES:-100 500 1000 2500 10000 40000} \
  "${grid[@]}" --parallel ${PARALLEL:-4} --time-limit "$limit" ${EXTRA:-} > "$OUT/sweep.log" 2>&1 &
if [ "${IID:-1}" = 1 ]; then
  python -m experiments.regbench run --out /tmp/rb --iid --sizes 100 "${grid[@]}" --parallel 1 \
    --time-limit "$limit" ${EXTRA:-} > "$OUT/sweep_iid.log" 2>&1 &
fi
wait $(jobs -p | grep -v "^$packer$")
kill $packer 2>/dev/null
python -m experiments.regbench report --out /tmp/rb --figures /tmp/rb/figures > "$OUT/report.log" 2>&1
tail -n 3 "$OUT"/sweep*.log; cat "$OUT/report.log"
tar -czf "$OUT/rb.tgz" -C /tmp --exclude='*.pt' --exclude='*.tmp' rb
# The unfinished runs' last checkpoints (about 5 MB each, written when a run stops at the time limit) and their
# best.pt (the weights of best validation loss, a third of that: without it a resumed run cannot be scored from
# its best weights, and mosaic-train ends it with an error), in parts of at most 15 MiB (what a call brings back
# per file): `cat ckpts.tar.part-* | tar -x -C DIR` beside rb.tgz's folders, and the next call resumes those runs
# instead of starting them again.
for d in /tmp/rb/*/; do
  if [ -f "$d/ckpt.pt" ] && [ ! -f "$d/result.json" ]; then
    echo "rb/$(basename "$d")/ckpt.pt"
    [ -f "$d/best.pt" ] && echo "rb/$(basename "$d")/best.pt"
  fi
done > /tmp/rb_unfinished.txt
if [ -s /tmp/rb_unfinished.txt ]; then
  tar -cf - -C /tmp -T /tmp/rb_unfinished.txt | split -b 15m - "$OUT/ckpts.tar.part-"
  echo "checkpoints of $(grep -c ckpt.pt /tmp/rb_unfinished.txt) unfinished runs: $(ls "$OUT"/ckpts.tar.part-* | wc -l) part(s)"
fi
