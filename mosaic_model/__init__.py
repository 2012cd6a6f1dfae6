"""mosaic_model: the Memory Mosaic language model (v1 and v2), their baselines, data, training and evaluation.

Layers, each importing only those below it: ``runtime`` (devices, precision); ``models`` and ``data``;
``evaluation``; ``training``; ``cli`` (the ``mosaic-train`` and ``mosaic-eval`` command lines, which
nothing imports). docs/ARCHITECTURE.md draws them.
"""
from .models import GPT, GPTConfig, Llama, LlamaConfig, MemoryMosaic, MemoryMosaicV2, MosaicConfig, MosaicV2Config
from .training import TrainConfig, load_model, preset, train

__all__ = ["MemoryMosaic", "MosaicConfig", "GPT", "GPTConfig", "MemoryMosaicV2", "MosaicV2Config", "Llama", "LlamaConfig",
           "TrainConfig", "preset", "train", "load_model"]
