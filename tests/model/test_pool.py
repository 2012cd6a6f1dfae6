"""The sweeps' process pool: jobs run in order and report their exit, none starts too late to finish."""
from __future__ import annotations

from experiments import pool as _pool
from experiments.pool import Job
from mosaic_model.training import TrainConfig


def test_no_job_starts_within_the_last_seconds_of_the_time_limit(tmp_path, capsys):
    # A limit shorter than the start margin: nothing is launched (a launch would die at once, wasted).
    exits = []
    failed = _pool.run_jobs([Job(TrainConfig(), tmp_path / "a")], parallel=1, time_limit=_pool.MIN_START_S / 2,
                            poll_s=0.01, on_exit=lambda job, rc: exits.append(rc))
    assert failed == 0 and exits == [] and not (tmp_path / "a").exists()
    assert "1 runs not started" in capsys.readouterr().out


def test_exits_are_reported_to_on_exit(tmp_path):
    exits = []
    failed = _pool.run_jobs([Job(TrainConfig(), tmp_path / "b", extra_argv=("--bogus-flag",))], parallel=1, poll_s=0.05,
                            on_exit=lambda job, rc: exits.append((job.out.name, rc)))
    assert failed == 1 and exits == [("b", 2)]  # argparse's exit code for an unknown flag
