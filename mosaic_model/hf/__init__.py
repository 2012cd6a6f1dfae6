"""The package's models for Hugging Face transformers (``pip install -e ".[hf]"``): configs, causal-LM
classes registered with ``AutoConfig`` and ``AutoModelForCausalLM`` when this module is imported, and
the conversion of a ``mosaic-train`` run into a ``save_pretrained`` folder and back (``convert.py``;
the command line is ``mosaic-hf``).

    import mosaic_model.hf  # registers "memory_mosaic", "mosaic_gpt2", "memory_mosaic_v2" and "mosaic_llama"
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("hf/my-run")
"""
from transformers import AutoConfig, AutoModelForCausalLM

from .configuration import MemoryMosaicConfig, MemoryMosaicV2Config, MosaicGPT2Config, MosaicLlamaConfig
from .convert import CLASSES as HF_CLASSES
from .convert import from_hf_folder, to_hf_folder
from .modeling import MemoryMosaicForCausalLM, MemoryMosaicV2ForCausalLM, MosaicGPT2ForCausalLM, MosaicLlamaForCausalLM

for _config, _model in HF_CLASSES.values():
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModelForCausalLM.register(_config, _model, exist_ok=True)

__all__ = ["MemoryMosaicConfig", "MosaicGPT2Config", "MemoryMosaicV2Config", "MosaicLlamaConfig", "MemoryMosaicForCausalLM",
           "MosaicGPT2ForCausalLM", "MemoryMosaicV2ForCausalLM", "MosaicLlamaForCausalLM", "HF_CLASSES", "to_hf_folder",
           "from_hf_folder"]
