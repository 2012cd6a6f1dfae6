"""Hugging Face causal-LM classes around the package's models, so that ``AutoModelForCausalLM``,
``save_pretrained``/``from_pretrained`` (safetensors), ``generate()`` and lm-evaluation-harness work on
them. Each class holds the package's own model as ``.model`` (same weights, same forward) and decodes on
that model's own cache: ``generate()`` feeds the prompt one position at a time through ``decode_step``
and then one token a step, exactly as :meth:`GenerateMixin.generate` does, so both give the same tokens.

Masks: the models are causal and have no padding mask. Right padding (how the harness batches its
loglikelihood requests) changes nothing before the padding; a mask with a zero before a one (left
padding) raises, rather than giving silently different logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from ..models.generation import IGNORE_INDEX, feed
from ..models.gpt import GPT
from ..models.llama import Llama
from ..models.mosaic import MemoryMosaic
from ..models.mosaic_v2 import MemoryMosaicV2
from .configuration import MemoryMosaicConfig, MemoryMosaicV2Config, MosaicGPT2Config, MosaicLlamaConfig, own_config


class DecodingCache:
    """The package's decoding cache (a dict, ``GenerateMixin``'s) with the number of positions it holds:
    what ``generate()`` passes between steps as ``cache``."""

    is_compileable = False  # transformers asks; the cache grows by one position a step
    is_croppable = False

    def __init__(self):
        self.state: dict = {}
        self.length = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions fed so far."""
        return self.length


@dataclass
class CausalLMOutput(ModelOutput):
    """``loss`` (with ``labels``), ``logits`` (B, T, vocab) and the decoding ``cache`` when one was used."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: DecodingCache | None = None


def _check_mask(attention_mask: torch.Tensor | None) -> None:
    if attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
        raise ValueError("attention_mask has padding before tokens (left padding): these causal models take no "
                         "padding mask; pad on the right, or run one sequence at a time")


class _MosaicCausalLM(PreTrainedModel, GenerationMixin):
    """What the package's causal LMs share as transformers models (see the module docstring)."""

    base_model_prefix = "model"
    model_class: type = None
    _tied_weights_keys = {"model.lm_head.weight": "model.wte.weight"}
    main_input_name = "input_ids"

    def __init__(self, config):
        super().__init__(config)
        self.model = self.model_class(own_config(config))
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: the package's model initialises its own weights (the Library's or GPT-2's scheme)."""

    def get_input_embeddings(self) -> torch.nn.Module:
        """The token embedding (tied to the output head)."""
        return self.model.wte

    def get_output_embeddings(self) -> torch.nn.Module:
        """The output head (its weight is the token embedding's)."""
        return self.model.lm_head

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() decodes on the package's own cache (prepare_inputs_for_generation)

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, cache: DecodingCache | None = None,
                use_cache: bool | None = None, return_dict: bool | None = None, **kwargs) -> CausalLMOutput:
        """Logits of every position; with ``labels`` (the input ids, -100 where ignored) the mean
        next-token cross-entropy, shifted inside as transformers' causal LMs do. With a ``cache`` (from
        ``generate()``) the positions are fed to it one at a time and the last position's logits
        (B, 1, vocab) come back with it."""
        _check_mask(attention_mask)
        if cache is not None:
            logits = feed(self.model, input_ids, cache.state)
            cache.length += input_ids.shape[1]
            return CausalLMOutput(logits=logits[:, None], cache=cache)
        logits, _ = self.model(input_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, next_sequence_length: int | None = None,
                                      cache: DecodingCache | None = None, attention_mask: torch.Tensor | None = None,
                                      use_cache: bool | None = True, **kwargs) -> dict:
        """The tokens not yet in the cache, and the cache (a new one on the first step). Without a cache,
        the last ``block_size`` tokens, as the package's uncached decoding does; once the sequence is
        longer than ``block_size``, a new cache of its last ``block_size`` tokens at every step (the
        package's cached decoding crops the same way)."""
        _check_mask(attention_mask)
        block = self.model.config.block_size
        if use_cache is False:
            return {"input_ids": input_ids[:, -block:]}
        if cache is None or input_ids.shape[1] > block:
            cache = DecodingCache()
            input_ids = input_ids[:, -block:]
        return {"input_ids": input_ids[:, cache.length:], "cache": cache}


class MemoryMosaicForCausalLM(_MosaicCausalLM):
    """The Memory Mosaic (``mosaic_model.models.MemoryMosaic``) as a transformers causal LM."""

    config_class = MemoryMosaicConfig
    model_class = MemoryMosaic


class MosaicGPT2ForCausalLM(_MosaicCausalLM):
    """The GPT2 baseline (``mosaic_model.models.GPT``) as a transformers causal LM."""

    config_class = MosaicGPT2Config
    model_class = GPT


class MemoryMosaicV2ForCausalLM(_MosaicCausalLM):
    """Memory Mosaics v2 (``mosaic_model.models.MemoryMosaicV2``) as a transformers causal LM (eval mode: the
    long-term memory's delay is ``delay_eval``)."""

    config_class = MemoryMosaicV2Config
    model_class = MemoryMosaicV2


class MosaicLlamaForCausalLM(_MosaicCausalLM):
    """The llama-style baseline (``mosaic_model.models.Llama``) as a transformers causal LM."""

    config_class = MosaicLlamaConfig
    model_class = Llama
