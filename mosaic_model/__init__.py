"""mosaic_model: the Memory Mosaic language model, its GPT2 baseline, data, training and evaluation."""
from .config import GPTConfig, MosaicConfig
from .gpt import GPT
from .model import MemoryMosaic

__all__ = ["MemoryMosaic", "MosaicConfig", "GPT", "GPTConfig"]
