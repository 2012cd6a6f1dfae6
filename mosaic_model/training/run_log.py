"""A run folder's logs: ``metrics.jsonl`` (every training log line and evaluation), ``config.json`` (the
resolved training config) and ``provenance.jsonl`` (one line per start or resume: the code and versions
that produced the run)."""
from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import torch


def provenance() -> dict:
    """The git commit of the code (with a flag for uncommitted changes), the torch and Triton versions,
    the device and the time: a run's results are only comparable with runs of the same code."""
    root = Path(__file__).resolve().parents[2]
    info = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        git = lambda *args: subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,  # noqa: E731
                                           timeout=10, check=True).stdout.strip()
        info["commit"] = git("rev-parse", "HEAD")
        info["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None  # not a git checkout (an installed package), or no git
    return info


class RunLog:
    """Appends JSON lines to ``out/metrics.jsonl``; a fresh run (``fresh``) starts the file anew. Only
    the main process writes (``writes``); the others' calls do nothing."""

    def __init__(self, out: Path, fresh: bool, writes: bool):
        self.out, self.writes = out, writes
        self.file = None
        if writes:
            if fresh:
                (out / "metrics.jsonl").unlink(missing_ok=True)
            self.file = open(out / "metrics.jsonl", "a", encoding="utf-8")

    def config(self, config: dict) -> None:
        """``config.json``: the run's resolved TrainConfig (``mosaic-train --config`` reads it back)."""
        if self.writes:
            (self.out / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")

    def provenance(self, start_step: int) -> None:
        """One line in ``provenance.jsonl`` for this start (or resume) at ``start_step``."""
        if self.writes:
            with open(self.out / "provenance.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"start_step": start_step, **provenance()}) + "\n")

    def record(self, entry: dict) -> None:
        """One line of metrics, flushed at once (a run stopped mid-way keeps what it logged)."""
        if self.file is not None:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()

    def close(self) -> None:
        """Close the metrics file."""
        if self.file is not None:
            self.file.close()
            self.file = None
