"""Run a module with the leaky-average forward switched to the decay-matrix product (A/B testing).

Usage: python -m benchmarks.with_leaky_dot pytest -q tests/kernels/test_leaky_average.py
       python -m benchmarks.with_leaky_dot benchmarks.bench_leaky_average --out r.md
"""
import runpy
import sys

from mosaic_kernels.leaky_average import function

function.FWD_IN_TILE = "dot"
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
