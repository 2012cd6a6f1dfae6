"""The llama-style baseline: its attention against a float64 loop, rotary positions, cached decoding, config errors."""
from __future__ import annotations

import math

import pytest
import torch

from mosaic_model.models.config import ConfigError, LlamaConfig
from mosaic_model.models.llama import Llama, RotaryAttention, rotary

SMALL = dict(n_layer=2, n_head=2, n_embd=16, vocab_size=40, block_size=32)


@torch.no_grad()
def loop_attention(attn: RotaryAttention, x: torch.Tensor) -> torch.Tensor:
    """Causal attention with rotary positions written out: each pair (i, i + hs/2) of q_t and k_j turned by
    its own 2x2 rotation matrix of angle t * theta^(-2i/hs), then a softmax over j <= t, in float64."""
    B, T, d = x.shape
    H = attn.config.n_head
    hs, half = d // H, d // H // 2
    W_q, W_k, W_v = attn.W_qkv.weight.double().split(d, dim=0)
    out = torch.zeros(B, T, d, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            rows = slice(h * hs, (h + 1) * hs)

            def turned(W, t, rows=rows, b=b):
                u = W[rows] @ x[b, t].double()
                r = u.clone()
                for i in range(half):
                    a = t * attn.config.rope_theta ** (-i / half)
                    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
                    r[i], r[i + half] = rot @ torch.stack([u[i], u[i + half]])
                return r
            for t in range(T):
                q = turned(W_q, t)
                logits = torch.stack([q @ turned(W_k, j) / math.sqrt(hs) for j in range(t + 1)])
                w = torch.softmax(logits, 0)
                out[b, t, rows] = sum(w[j] * (W_v[rows] @ x[b, j].double()) for j in range(t + 1))
    return out @ attn.c_proj.weight.double().T


def test_attention_matches_a_plain_loop():
    torch.manual_seed(0)
    attn = RotaryAttention(LlamaConfig(**SMALL)).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    # Both in float64 except the rotation angles, which the model forms in float32 (angle error ~1e-7
    # relative at t <= 8): the outputs agree far inside 1e-5.
    torch.testing.assert_close(attn(x), loop_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_rotary_logits_depend_on_the_offset_only():
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    logit = lambda t, j: float(rotary(q, torch.tensor([t]), 1e4) @ rotary(k, torch.tensor([j]), 1e4).transpose(-1, -2))  # noqa: E731
    assert abs(logit(5, 2) - logit(105, 102)) < 1e-5 and abs(logit(5, 2) - logit(5, 3)) > 1e-4


def test_cached_decoding_gives_the_uncached_tokens():
    torch.manual_seed(2)
    model = Llama(LlamaConfig(**SMALL))
    prompt = torch.randint(0, 40, (2, 5))
    cached = model.generate(prompt, 10, temperature=0)
    assert torch.equal(cached, model.generate(prompt, 10, temperature=0, use_cache=False))


def test_the_model_is_causal():
    torch.manual_seed(3)
    model = Llama(LlamaConfig(**SMALL)).eval()
    idx = torch.randint(0, 40, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 40
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=0, rtol=0)
    assert (a[:, 7:] - b[:, 7:]).abs().amax() > 1e-6


@pytest.mark.parametrize("field,value", [("n_head", 3), ("bias", True), ("rope_theta", 1.0), ("mlp_hidden", 0),
                                         ("n_embd", 18)])
def test_bad_config_names_the_field(field, value):
    kw = {**SMALL, field: value}
    if field == "n_embd":
        kw["n_head"] = 6  # head size 3: no rotary pairs
    with pytest.raises(ConfigError) as e:
        LlamaConfig(**kw)
    assert e.value.field in (field, "n_embd", "n_head")
