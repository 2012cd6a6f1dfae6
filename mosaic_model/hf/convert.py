"""A ``mosaic-train`` run as a Hugging Face folder, and back.

``to_hf_folder(run, out)`` writes ``save_pretrained``'s files (``config.json``, ``model.safetensors``),
GPT-2's tokenizer (``tokenizer.json``, from the BPE files shipped with the package) and
``mosaic_run.json`` (the run's model type, step, training config and provenance, so that the way back
rebuilds the same checkpoint). ``from_hf_folder(folder, out)`` writes a run folder whose ``ckpt.pt``
``mosaic-eval`` and ``load_model`` read (weights only: no optimizer state, so it does not resume).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Tokenizer

from ..data.text import SHIPPED_TOKENIZER_DIR
from ..models.build import model_type_of
from ..training.checkpoint import CheckpointError, load_model
from .configuration import MemoryMosaicConfig, MemoryMosaicV2Config, MosaicGPT2Config, MosaicLlamaConfig
from .modeling import MemoryMosaicForCausalLM, MemoryMosaicV2ForCausalLM, MosaicGPT2ForCausalLM, MosaicLlamaForCausalLM

# The transformers classes of each model type of mosaic_model.models.build.MODEL_CLASSES.
CLASSES = {"mosaic": (MemoryMosaicConfig, MemoryMosaicForCausalLM), "gpt": (MosaicGPT2Config, MosaicGPT2ForCausalLM),
           "mosaic-v2": (MemoryMosaicV2Config, MemoryMosaicV2ForCausalLM), "llama": (MosaicLlamaConfig, MosaicLlamaForCausalLM)}


def gpt2_tokenizer() -> GPT2Tokenizer:
    """transformers' GPT-2 tokenizer from the package's BPE files (end of text as bos, eos and padding)."""
    return GPT2Tokenizer(vocab=str(SHIPPED_TOKENIZER_DIR / "encoder.json"), merges=str(SHIPPED_TOKENIZER_DIR / "vocab.bpe"),
                         pad_token="<|endoftext|>")


def to_hf(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model holding ``model``'s weights (a Memory Mosaic or a GPT of this package)."""
    config_cls, model_cls = CLASSES[model_type_of(model)]
    hf = model_cls(config_cls(**model.config.to_dict()))
    hf.model.load_state_dict(model.state_dict())
    return hf.to(next(model.parameters()).device).eval()


def to_hf_folder(run: str | Path, out: str | Path, best: bool = False) -> Path:
    """Export the checkpoint of ``run`` (its ckpt.pt, or best.pt with ``best``; a .pt file also works)
    as a Hugging Face folder ``out``; returns ``out``."""
    run, out = Path(run), Path(out)
    path = run / "best.pt" if best and run.is_dir() else run
    model, ckpt = load_model(path)
    hf = to_hf(model)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    gpt2_tokenizer().save_pretrained(out)
    provenance = run / "provenance.jsonl" if run.is_dir() else run.parent / "provenance.jsonl"
    record = {"model_type": ckpt["model_type"], "step": ckpt["step"], "train_config": ckpt.get("args"),
              "source": str(path), "provenance": provenance.read_text().splitlines() if provenance.is_file() else []}
    (out / "mosaic_run.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    return out


def from_hf_folder(folder: str | Path, out: str | Path) -> Path:
    """Import a Hugging Face folder written by :func:`to_hf_folder` (or any folder of these model types)
    as a run folder ``out`` holding ``ckpt.pt``; returns ``out``."""
    folder, out = Path(folder), Path(out)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json there (not a Hugging Face folder)")
    hf = AutoModelForCausalLM.from_pretrained(folder)
    if not isinstance(hf, tuple(cls for _, cls in CLASSES.values())):
        raise CheckpointError(f"{folder}: a {type(hf).__name__}, not a model of this package")
    record = json.loads((folder / "mosaic_run.json").read_text()) if (folder / "mosaic_run.json").is_file() else {}
    model = hf.model
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "model_type": model_type_of(model), "model_config": model.config.to_dict(),
                "step": record.get("step", 0), "args": record.get("train_config") or {}, "imported_from": str(folder)},
               out / "ckpt.pt")
    return out
