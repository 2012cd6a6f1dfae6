#!/usr/bin/env bash
# Everything that needs the GPU, in one call. Results go to $OUT (or ./gpu-results).
# Usage: bash benchmarks/gpu_check.sh [tests|tests-all|tests-kernels|tests-model|launch|launch-step|plans|plans-step|delta|delta-step|kernels|pmem|scan|host|trainer-flags|profiles|training|training-eager|training-compiled[-512|-2048|-8192]|v2|tree-ab|parity|all]...
#   tests      every test that runs on CUDA (GPU-marked tests plus the CUDA cases of the others: --cuda-only);
#              tests-kernels / tests-model run its two halves; tests-all the whole suite (CPU tests too)
#   kernels    the benchmark of every op of the registry (mosaic_kernels.registry: each record names its
#              benchmarks/bench_*.py), the compiler report (benchmarks.tools.kernel_report), a CUDA mosaic-train run
#   pmem       bench_persistent_memory, then bench_pmem_layout (the model's two SDPA layouts and its pick)
#   scan       bench_leaky_average alone
#   launch     the direct launch's GPU tests, then the kernel tests with MOSAIC_DIRECT_LAUNCH=0 (Triton's launch)
#   plans      the cached call plans of the attention, the key scan and the value (on by default since this passed on
#              an H100, 2026-12-07; MOSAIC_PLANS=0 turns them off): their tests, then the three ops', launch, compile and
#              CUDA-graph training tests with them on; host_cost's default rows beside the *_unplanned ones, the floor
#              and SDPA, twice; eager fwd+bwd at issue 38's three small shapes with and without them against SDPA
#              (bench_attention's ours_unplanned, 5 rounds, one process)
#   plans-step the 12-layer eager step at T=512 with MOSAIC_PLANS=1 and 0, alternated ROUNDS (3) times
#   delta      the attention backward's row term inside its kernels (MOSAIC_ATTN_DELTA_IN_KERNEL=1; by default
#              only for small 16-bit calls): the attention tests with it on at every shape, eager fwd+bwd at issue
#              38's three small shapes against SDPA with it off (MOSAIC_ATTN_DELTA_IN_KERNEL=0) and on in one
#              process (bench_attention's ours_delta_in_kernel, 5 rounds), host_cost's mosaic_attention_delta_in_kernel
#              beside mosaic_attention (off) and SDPA (twice), and the 256-key window
#              (bench_v2_ops ours_window) off and on, alternated twice
#   delta-step the 12-layer eager step at T=512 (Memory Mosaic and GPT2) with the row term's default and with
#              MOSAIC_ATTN_DELTA_IN_KERNEL=0, each in a fresh process, alternated ROUNDS (3) times
#   launch-step the same step with the direct launch (MOSAIC_DIRECT_LAUNCH=1, the default) and with Triton's (0)
#   host       host_cost: our wrapper, Triton's launcher (and the direct launch's, A/B) and the GPU time of one
#              eager call of each op
#   trainer-flags  bench_trainer: mosaic-train's step and loop under each speed flag, both models, on the
#              text folder $DATA (e.g. the books unpacked from a compressed copy); MODELS picks the models, FLAGS
#              the flags, ROUNDS (1) how many times the step and the loop are each timed, alternated (medians)
#   training*  bench_training (all / eager part / compiled part, or the compiled part of one sequence
#              length: each takes 4-6 minutes, so one fits a 10-minute call)
#   profiles   benchmarks.tools.profile_step: the 12-layer Memory Mosaic and GPT2 compiled at T=512 (issue 38), v2 and
#              the llama-style model eager at T=2048 (issue 37's step), and the RegBench preset's fp32 steps
#              (benchmarks.tools.profile_regbench): where each millisecond goes
#   v2         issue 37's step on a quiet GPU: the v2 ops' and model's CUDA tests, the v2 and llama-style 12-layer
#              steps eager at T=2048 and 8192 and compiled at 2048 (bench_training), the eager v2 step's profile,
#              the gated scan's chunking sweep and the two chunk rules (tune_kernels chunks-tv chunk-rule); about 7
#              minutes on an H200
#   tree-ab    the 12-layer eager step of MODELS (mosaic_v2 llama) at SEQ_LENS (2048 8192) with this tree and with
#              the earlier tree in the folder OLD, each from its own folder, alternated ROUNDS (2) times
#   parity     300 mosaic-train steps with fused and with reference ops, same data and seed
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
# The GPU tests spend most of their time compiling Triton kernels on the host (one per dtype, head dim and
# variant: in one process the kernel half reached 38% in 400 s on 2026-11-30), so they run in parallel
# pytest-xdist workers where it is installed, one CPU thread each (torch's default, a thread per core in
# every worker, would oversubscribe the cores). TEST_SECONDS caps a test part; pytest is then interrupted
# with SIGINT, so that it still prints its summary and the slowest tests. The log goes to $OUT as written.
# Workers: 16 on a card of 100 GiB or more (the H200), else 8: on 2026-12-06 16 workers on an 80 GB H100 failed
# three attention tests that pass alone (8 workers: 262 passed, none failed, before the time limit).
mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1)
gib=$(( ${mib:-0} / 1024 ))
par=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${WORKERS:-$(( gib >= 100 ? 16 : 8 ))} --dist worksteal")
gpu_tests() {  # gpu_tests LOG PYTEST-ARGS...
  local log=$1; shift
  # COLUMNS: pytest cuts its summary lines to the terminal's width (80 without one), which drops the error
  # message after a long test id.
  COLUMNS=400 OMP_NUM_THREADS=1 timeout -s INT "${TEST_SECONDS:-560}" python3 -m pytest -q "$@" $par -p no:cacheprovider \
    -p no:benchmark -rfEx --durations=25 > "$OUT/$log" 2>&1
  tail -n 45 "$OUT/$log"
}
step_ab() {  # step_ab VAR VALUE... : the 12-layer eager step at T=512 (Memory Mosaic and GPT2) with VAR at each
  # VALUE, each in a fresh process, alternated ROUNDS times (default 3), GPT2 beside each, since this host's step
  # time drifts between runs (BENCHMARKS.md "End-to-end training step").
  local var=$1; shift
  for round in $(seq "${ROUNDS:-3}"); do
    for v in "$@"; do
      env "$var=$v" python3 -m benchmarks.bench_training --part eager --layers 12 --seq-lens 512 \
        --models mosaic_fused gpt2 --out "$OUT/step_${var}_${v}_r$round.md" > /dev/null 2>&1
      grep -h "^| \(mosaic_fused\|gpt2\) " "$OUT/step_${var}_${v}_r$round.md" | sed "s/^/$var=$v round $round /"
    done
  done
}
for PART in "${@:-all}"; do
  case "$PART" in
    tests|all)
      gpu_tests gpu_tests.txt tests --cuda-only ;;&
    tests-all)
      gpu_tests gpu_tests_all.txt tests ;;&
    tests-kernels)
      gpu_tests gpu_tests_kernels.txt tests/kernels --cuda-only ;;&
    tests-model)
      gpu_tests gpu_tests_model.txt tests/model --cuda-only ;;&
    kernels|all)
      for B in $(python3 -c "from mosaic_kernels.registry import OPS; print(' '.join(op.benchmark for op in OPS))"); do
        python3 -m benchmarks.$B --out "$OUT/$B.md" > "$OUT/$B.log" 2>&1 || tail -n 20 "$OUT/$B.log"
        tail -n 12 "$OUT/$B.md"
      done
      python3 -m benchmarks.tools.kernel_report --out "$OUT/kernel_report.md" > /dev/null 2>&1 || echo "kernel_report failed"
      python3 -m mosaic_model.cli.train --device cuda --out-dir /tmp/run-cuda --overwrite --quiet 2>&1 | tail -n 4 | tee "$OUT/train_cuda.txt" ;;&
    launch)
      # The direct launch (mosaic_kernels/_triton_common.py, on by default since 2026-12-07): its own GPU tests,
      # then every kernel test with it off (Triton's own launch), the path the default run no longer takes.
      python3 -m pytest -q tests/kernels/test_launch.py tests/kernels/test_host_helpers.py --cuda-only \
        -p no:cacheprovider > "$OUT/launch_tests.txt" 2>&1; tail -n 5 "$OUT/launch_tests.txt"
      MOSAIC_DIRECT_LAUNCH=0 gpu_tests gpu_tests_triton_launch.txt tests/kernels --cuda-only ;;
    delta)
      MOSAIC_ATTN_DELTA_IN_KERNEL=1 TEST_SECONDS=${TEST_SECONDS:-300} gpu_tests gpu_tests_delta.txt \
        tests/kernels/test_attention.py tests/kernels/test_attention_band.py --cuda-only
      # The eager A/B inside one process (providers interleaved, medians of 5 rounds): separate processes
      # differed by up to 2x at these host-bound shapes on 2026-12-06.
      MOSAIC_ATTN_DELTA_IN_KERNEL=0 python3 -m benchmarks.bench_attention --shapes 16,12,512,64 8,12,1024,64 4,12,2048,64 --rounds 5 \
        --providers ours ours_delta_in_kernel sdpa_flash sdpa_cudnn --out "$OUT/eager_delta_ab.md" > /dev/null 2>&1
      grep -h "fwd+bwd" "$OUT/eager_delta_ab.md"
      for round in 1 2; do
        MOSAIC_ATTN_DELTA_IN_KERNEL=0 python3 -m benchmarks.host_cost --ops mosaic_attention mosaic_attention_delta_in_kernel sdpa \
          --out "$OUT/host_delta_r$round.md" > /dev/null 2>&1
        grep -h "| mosaic_attention\|| sdpa" "$OUT/host_delta_r$round.md" | sed "s/^/round $round /"
        for on in 0 1; do
          MOSAIC_ATTN_DELTA_IN_KERNEL=$on python3 -m benchmarks.bench_v2_ops --part attention --providers ours_window \
            --out "$OUT/window_delta${on}_r$round.md" > /dev/null 2>&1
          grep -h "| (" "$OUT/window_delta${on}_r$round.md" | sed "s/^/delta=$on round $round /"
        done
      done
      ;;
    delta-step)
      # Issue 38's 12-layer eager step at T=512 with the row term's default (inside the kernels for the model's
      # (32,12,512,64) bf16 calls) against its own launch.
      step_ab MOSAIC_ATTN_DELTA_IN_KERNEL auto 0 ;;
    plans)
      MOSAIC_PLANS=1 TEST_SECONDS=${TEST_SECONDS:-300} gpu_tests gpu_tests_plans.txt tests/kernels/test_attention_plans.py \
        tests/kernels/test_leaky_average_plans.py tests/kernels/test_peek_ahead_plans.py tests/kernels/test_attention.py \
        tests/kernels/test_leaky_average.py tests/kernels/test_leaky_average_tv.py tests/kernels/test_peek_ahead.py \
        tests/kernels/test_launch.py tests/kernels/test_compile.py tests/model/test_cuda_graph.py --cuda-only
      for round in 1 2; do
        python3 -m benchmarks.host_cost --ops mosaic_attention mosaic_attention_unplanned leaky_average leaky_average_unplanned \
          peek_ahead_value peek_ahead_value_unplanned autograd_floor sdpa --out "$OUT/host_cost_plans_r$round.md" > /dev/null 2>&1
        tail -n 18 "$OUT/host_cost_plans_r$round.md"
      done
      # Issue 38's eager op at its three small shapes, with the plans (the default) and without, in one process.
      python3 -m benchmarks.bench_attention --shapes 16,12,512,64 8,12,1024,64 4,12,2048,64 --rounds 5 \
        --providers ours ours_unplanned sdpa_flash sdpa_cudnn --out "$OUT/eager_plans_ab.md" > /dev/null 2>&1
      grep -h "fwd+bwd" "$OUT/eager_plans_ab.md" ;;
    plans-step)
      step_ab MOSAIC_PLANS 1 0 ;;
    launch-step)
      # The same step with the direct launch (the default) and with Triton's own launch.
      step_ab MOSAIC_DIRECT_LAUNCH 1 0 ;;
    scan)
      python3 -m benchmarks.bench_leaky_average --out "$OUT/bench_leaky_average.md" > "$OUT/bench_leaky.log" 2>&1 || tail -n 20 "$OUT/bench_leaky.log"
      tail -n 7 "$OUT/bench_leaky_average.md" ;;
    pmem)
      python3 -m benchmarks.bench_persistent_memory --out "$OUT/bench_pmem.md" 2>&1 | tail -n 16
      python3 -m benchmarks.bench_pmem_layout --out "$OUT/bench_pmem_layout.md" 2>&1 | tail -n 48 ;;&
    host|all)
      python3 -m benchmarks.host_cost --out "$OUT/host_cost.md" 2>/dev/null | tail -n 10
      python3 -m benchmarks.host_cost --dropout 0.05 --out "$OUT/host_cost_dropout.md" 2>/dev/null | tail -n 10 ;;&
    trainer-flags)
      python3 -m benchmarks.bench_trainer --data "${DATA:?trainer-flags: set DATA to a training text folder}" \
        --doc-split file --models ${MODELS:-mosaic gpt} --flags ${FLAGS:-eager compile cuda-graph} \
        --rounds "${ROUNDS:-1}" --out "$OUT/bench_trainer.md" 2>&1 | tail -n 16 ;;&
    training|all)
      python3 -m benchmarks.bench_training --out "$OUT/bench_training.md" 2>&1 | tail -n 45 ;;&
    training-eager)
      python3 -m benchmarks.bench_training --part eager --out "$OUT/bench_training_eager.md" 2>&1 | tail -n 40 ;;&
    training-compiled|training-compiled-512|training-compiled-2048|training-compiled-8192)
      for T in 512 2048 8192; do
        if [[ "$PART" == training-compiled || "$PART" == training-compiled-$T ]]; then
          python3 -m benchmarks.bench_training --part compiled --seq-lens $T \
            --out "$OUT/bench_training_compiled_$T.md" 2>&1 | tail -n 16
        fi
      done ;;&
    profiles)
      for M in mosaic_fused gpt2; do
        python3 -m benchmarks.tools.profile_step --model $M --T 512 --compile > "$OUT/profile_${M}_512_compiled.txt" 2>&1
        tail -n 14 "$OUT/profile_${M}_512_compiled.txt"
      done
      for M in mosaic_v2 llama; do
        python3 -m benchmarks.tools.profile_step --model $M --T 2048 > "$OUT/profile_${M}_2048.txt" 2>&1
        tail -n 14 "$OUT/profile_${M}_2048.txt"
      done
      python3 -m benchmarks.tools.profile_regbench > "$OUT/profile_regbench.txt" 2>&1
      grep "ms/step (unprofiled)" "$OUT/profile_regbench.txt" ;;
    v2)
      TEST_SECONDS=${TEST_SECONDS:-200} gpu_tests gpu_tests_v2.txt tests/kernels/test_host_helpers.py \
        tests/kernels/test_leaky_average_tv.py tests/kernels/test_row_bandwidth.py tests/kernels/test_kernel_globals.py \
        tests/kernels/test_attention_band.py tests/model/test_mosaic_v2.py tests/model/test_probes.py --cuda-only
      python3 -m benchmarks.bench_training --part eager --models mosaic_v2 llama --layers 12 --seq-lens 2048 8192 \
        --out "$OUT/bench_training_v2_eager.md" 2>&1 | tail -n 12
      python3 -m benchmarks.bench_training --part compiled --models mosaic_v2 llama --layers 12 --seq-lens 2048 \
        --out "$OUT/bench_training_v2_compiled.md" 2>&1 | tail -n 8
      python3 -m benchmarks.tools.profile_step --model mosaic_v2 --T 2048 > "$OUT/profile_mosaic_v2_2048.txt" 2>&1
      tail -n 12 "$OUT/profile_mosaic_v2_2048.txt"
      python3 -m benchmarks.tools.tune_kernels chunks-tv chunk-rule 2>&1 | tee "$OUT/chunks_tv.txt" | tail -n 12 ;;
    tree-ab)
      # A model or wrapper change against the code before it: the training step of each model in $MODELS (default
      # the v2 and llama-style ones) at each length in $SEQ_LENS (2048 8192) with this tree and with the tree in
      # $OLD (a folder holding an earlier commit's mosaic_model, mosaic_kernels and benchmarks, e.g. `git archive
      # REV mosaic_model mosaic_kernels benchmarks | tar -x -C .carry/old`), each side in its own process run from
      # its own folder (python -m imports the packages of the folder it starts in), alternated ROUNDS (2) times.
      old=${OLD:?tree-ab: set OLD to a folder holding the earlier tree}
      out=$(cd "$OUT" && pwd)  # absolute: each side runs from its own folder
      for round in $(seq "${ROUNDS:-2}"); do
        for side in new old; do
          dir=.; [[ $side == old ]] && dir=$old
          (cd "$dir" && python3 -m benchmarks.bench_training --part eager --layers 12 --seq-lens ${SEQ_LENS:-2048 8192} \
            --models ${MODELS:-mosaic_v2 llama} --out "$out/tree_ab_${side}_r$round.md" > /dev/null 2>&1)
          grep -h "^| [a-z_0-9]* | 12 " "$out/tree_ab_${side}_r$round.md" | sed "s/^/$side round $round /"
        done
      done ;;
    parity|all)
      for K in fused reference; do
        python3 -m mosaic_model.cli.train --device cuda --steps 300 --eval-every 300 --log-every 10 --kernels $K \
          --out-dir /tmp/parity-$K --overwrite --quiet 2>&1 | tail -n 1
        cp /tmp/parity-$K/metrics.jsonl "$OUT/parity_$K.jsonl"
      done ;;
  esac
done
