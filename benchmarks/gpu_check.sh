#!/usr/bin/env bash
# Everything that needs the GPU: GPU-marked tests, both kernel benchmarks, a CUDA training run.
# Results go to $OUT (or ./gpu-results). Usage: bash benchmarks/gpu_check.sh [tests|bench|all]
set -uo pipefail
PART=${1:-all}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
if [ "$PART" != bench ]; then
  python3 -m pytest -q -m gpu tests -p no:cacheprovider -rf 2>&1 | tail -n 40 | tee "$OUT/gpu_tests.txt"
fi
if [ "$PART" != tests ]; then
  python3 -m benchmarks.bench_leaky_average --out "$OUT/bench_leaky_average.md" > "$OUT/bench_leaky.log" 2>&1 || tail -n 20 "$OUT/bench_leaky.log"
  tail -n 7 "$OUT/bench_leaky_average.md"
  python3 -m benchmarks.bench_attention --out "$OUT/bench_attention.md" > "$OUT/bench_attention.log" 2>&1 || tail -n 20 "$OUT/bench_attention.log"
  tail -n 19 "$OUT/bench_attention.md"
  python3 -m mosaic_model.train --device cuda --out-dir /tmp/run-cuda --quiet 2>&1 | tail -n 4 | tee "$OUT/train_cuda.txt"
fi
