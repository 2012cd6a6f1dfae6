"""Continuations of text prompts: the 24 prompts of Eldan & Li (the paper's Table 1) or the caller's."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..runtime import autocast_for

EOT = 50256  # GPT-2's <|endoftext|>


def default_prompts() -> list[str]:
    """The 24 prompts of Eldan & Li (2023), which the paper's Table 1 continues."""
    path = Path(__file__).resolve().parent.parent / "assets" / "prompts_eldan_li.json"
    return json.loads(path.read_text(encoding="utf-8"))


def decode_tokens(enc: object, ids: list[int]) -> str:
    """Text of the token ids; ids the encoding does not know (the padded vocabulary's last 47) are dropped."""
    parts = []
    for t in ids:
        try:
            parts.append(enc.decode_single_token_bytes(t))
        except KeyError:
            continue
    return b"".join(parts).decode("utf-8", errors="replace")


def continue_prompts(model: torch.nn.Module, enc: object, prompts: list[str], max_new_tokens: int,
                     temperature: float, top_k: int | None, seed: int, device: str,
                     dtype: torch.dtype) -> list[str]:
    """One continuation per prompt with cached decoding, stopping at <|endoftext|>; prompt i (from 1)
    samples with a generator seeded ``seed + i``, so a continuation does not depend on the others."""
    outs = []
    for i, prompt in enumerate(prompts, 1):
        g = torch.Generator(device=device).manual_seed(seed + i)
        idx = torch.tensor([enc.encode_ordinary(prompt)], device=device)
        with autocast_for(device, dtype):
            out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, stop_token=EOT, generator=g)
        outs.append(decode_tokens(enc, [t for t in out[0, idx.shape[1]:].tolist() if t != EOT]))
    return outs
