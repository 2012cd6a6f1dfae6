"""The models: the Memory Mosaic (``mosaic.py``, its memory units in ``memory.py``), the GPT2 baseline
(``gpt.py``), Memory Mosaics v2 (``mosaic_v2.py``) and its llama-style baseline (``llama.py``), their
configs (``config.py``), what they share as language models (``generation.py``: the loss, cached and
graphed decoding) and models by name (``build.py``). Imports only ``mosaic_kernels`` and
``mosaic_model.runtime``."""
from .build import MODEL_CHOICES, MODEL_CLASSES, build_model, config_class, model_type_of
from .config import ConfigError, GPTConfig, LlamaConfig, MosaicConfig, MosaicV2Config
from .gpt import GPT
from .llama import Llama
from .mosaic import MemoryMosaic
from .mosaic_v2 import MemoryMosaicV2

__all__ = ["MemoryMosaic", "MosaicConfig", "GPT", "GPTConfig", "MemoryMosaicV2", "MosaicV2Config", "Llama", "LlamaConfig",
           "ConfigError", "MODEL_CLASSES", "MODEL_CHOICES", "build_model", "config_class", "model_type_of"]
