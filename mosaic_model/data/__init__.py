"""Data: the embedded RegBench-style in-context language task (more tasks plug in beside it)."""
from .regbench import ICLTask, ICLTaskConfig, icl_metrics, legal_next_symbols

__all__ = ["ICLTask", "ICLTaskConfig", "icl_metrics", "legal_next_symbols"]
