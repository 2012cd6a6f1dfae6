"""bench_parallel_runs on the CPU at a tiny size: it runs, reads each run's throughput, writes JSON."""
from __future__ import annotations

import json

from benchmarks import bench_parallel_runs


def test_parallel_runs_report_summed_throughput(tmp_path):
    out = tmp_path / "runs.json"
    bench_parallel_runs.main(["--counts", "1", "2", "--steps", "4", "--device", "cpu", "--out", str(out), "--",
                              "--preset", "regbench", "--num-train", "8", "--max-string-len", "5",
                              "--n-embd", "16", "--n-head", "2", "--pmem-size", "8", "--log-every", "1",
                              "--kernels", "reference"])  # the interpreter would run fused kernels at a crawl
    results = json.loads(out.read_text())["results"]
    assert [r["processes"] for r in results] == [1, 2]
    for r in results:
        assert len(r["tokens_per_s_each"]) == r["processes"] and r["tokens_per_s_total"] > 0
        assert abs(sum(r["tokens_per_s_each"]) - r["tokens_per_s_total"]) < 1e-6 * r["tokens_per_s_total"]
