"""The models: the Memory Mosaic (``mosaic.py``, its memory units in ``memory.py``), the GPT2 baseline
(``gpt.py``), their configs (``config.py``), what both share as language models (``generation.py``:
the loss, cached and graphed decoding) and models by name (``build.py``). Imports only
``mosaic_kernels`` and ``mosaic_model.runtime``."""
from .build import MODEL_CHOICES, MODEL_CLASSES, build_model, config_class, model_type_of
from .config import ConfigError, GPTConfig, MosaicConfig
from .gpt import GPT
from .mosaic import MemoryMosaic

__all__ = ["MemoryMosaic", "MosaicConfig", "GPT", "GPTConfig", "ConfigError", "MODEL_CLASSES", "MODEL_CHOICES",
           "build_model", "config_class", "model_type_of"]
