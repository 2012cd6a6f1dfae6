"""Hugging Face configs of the package's models: each a ``PreTrainedConfig`` whose fields are those of the
model's own config dataclass (``MosaicConfig``, ``GPTConfig``, ``MosaicV2Config``, ``LlamaConfig``), with
the same defaults, plus GPT-2's token ids. The fields are read from the dataclass, so the two cannot
drift apart."""
from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PreTrainedConfig

from ..models.config import GPTConfig, LlamaConfig, MosaicConfig, MosaicV2Config

EOT = 50256  # GPT-2's <|endoftext|>: beginning, end and padding of the exported models


def _hf_config_class(name: str, model_type: str, fields_of: type, doc: str) -> type:
    """A PreTrainedConfig subclass named ``name`` whose dataclass fields are those of ``fields_of``."""
    namespace = {"__doc__": doc, "__module__": __name__, "model_type": model_type, "own_config": fields_of,
                 "attribute_map": {"num_hidden_layers": "n_layer", "hidden_size": "n_embd",
                                   "num_attention_heads": "n_head", "max_position_embeddings": "block_size"},
                 "__annotations__": {}}
    for f in dataclasses.fields(fields_of):
        namespace["__annotations__"][f.name] = Any
        namespace[f.name] = f.default
    for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
        namespace["__annotations__"][token] = Any
        namespace[token] = EOT
    namespace["__annotations__"]["tie_word_embeddings"] = bool
    namespace["tie_word_embeddings"] = True
    return type(name, (PreTrainedConfig,), namespace)


MemoryMosaicConfig = _hf_config_class(
    "MemoryMosaicConfig", "memory_mosaic", MosaicConfig,
    """The Memory Mosaic's config for transformers: ``MosaicConfig``'s fields and defaults (docs/MODEL.md).""")
MosaicGPT2Config = _hf_config_class(
    "MosaicGPT2Config", "mosaic_gpt2", GPTConfig,
    """The GPT2 baseline's config for transformers: ``GPTConfig``'s fields and defaults.""")
MemoryMosaicV2Config = _hf_config_class(
    "MemoryMosaicV2Config", "memory_mosaic_v2", MosaicV2Config,
    """Memory Mosaics v2's config for transformers: ``MosaicV2Config``'s fields and defaults (docs/MODEL.md 8).""")
MosaicLlamaConfig = _hf_config_class(
    "MosaicLlamaConfig", "mosaic_llama", LlamaConfig,
    """The llama-style baseline's config for transformers: ``LlamaConfig``'s fields and defaults (docs/MODEL.md 9).""")


def own_config(config: PreTrainedConfig) -> object:
    """The package's own config (``MosaicConfig``, ``GPTConfig``...) that an exported config describes."""
    names = {f.name for f in dataclasses.fields(config.own_config)}
    return config.own_config(**{k: getattr(config, k) for k in names})
