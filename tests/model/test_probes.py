"""The attention probes: for every model, the last row's weights that ``last_row_attention`` reads off the keys
(and queries) reproduce what the layer itself mixed into its last output, ``y_t = sum_j w_j v_j``."""
from __future__ import annotations

import pytest
import torch

from mosaic_model.evaluation.probes import last_row_attention
from mosaic_model.models import GPT, GPTConfig, Llama, LlamaConfig, MemoryMosaic, MemoryMosaicV2, MosaicConfig, MosaicV2Config

COMMON = dict(n_layer=1, n_head=2, n_embd=16, vocab_size=30, block_size=32)


def _capture(module: torch.nn.Module, store: list, pre: bool = False):
    if pre:
        return module.register_forward_pre_hook(lambda _m, args: store.append(args[0].detach().double()))
    return module.register_forward_hook(lambda _m, _i, out: store.append(out.detach().double()))


def _heads(x: torch.Tensor, H: int) -> torch.Tensor:
    """(B, T, d) -> (B, H, T, hs)."""
    B, T, d = x.shape
    return x.view(B, T, H, d // H).transpose(1, 2)


@torch.no_grad()
def _weights_and_mixtures(model: torch.nn.Module, idx: torch.Tensor) -> list[tuple]:
    """Per probe row: (weights (B, H, n), values (B, H, n, hs) of the keys it covers, the layer's last
    output before its projection (B, H, hs))."""
    H = model.config.n_head
    values, mixed = [], []
    block = model.blocks[0]
    if isinstance(model, MemoryMosaic):
        hooks = [_capture(block.cmem.value, values), _capture(block.cmem.c_proj, mixed, pre=True)]
    elif isinstance(model, MemoryMosaicV2):  # both memories run as one: their values from the block's LN output
        ln = []
        hooks = [_capture(block.ln_1, ln), _capture(block.c_proj, mixed, pre=True)]
    else:
        proj = block.attn.c_attn if isinstance(model, GPT) else block.attn.W_qkv
        hooks = [_capture(proj, values), _capture(block.attn.c_proj, mixed, pre=True)]
    rows = last_row_attention(model.eval(), idx)
    for h in hooks:
        h.remove()
    out = mixed[0][:, -1]                                                            # (B, d) or (B, 2d)
    if isinstance(model, MemoryMosaicV2):
        values = [mem.value(ln[0]).double() for mem in (block.short, block.long)]
        d = model.config.n_embd
        return [(rows[i].double(), values[i][..., :-1, :], out[:, i * d:(i + 1) * d].view(len(idx), H, -1))
                for i in range(2)]
    if isinstance(model, MemoryMosaic):
        return [(rows[0].double(), values[0][..., :-1, :], out.view(len(idx), H, -1))]
    v = _heads(values[0][..., 2 * model.config.n_embd:], H)                          # all T keys, diagonal included
    return [(rows[0].double(), v, out.view(len(idx), H, -1))]


@pytest.mark.parametrize("build", [
    lambda: MemoryMosaic(MosaicConfig(**COMMON, kernels="reference", dropout=0.0)),
    lambda: GPT(GPTConfig(**COMMON, dropout=0.0)),
    lambda: MemoryMosaicV2(MosaicV2Config(**COMMON, kernels="reference", window=5, delay_min=3, delay_max=7,
                                          delay_eval=4)),
    lambda: Llama(LlamaConfig(**COMMON)),
], ids=["mosaic", "gpt", "mosaic-v2", "llama"])
def test_probe_weights_reproduce_the_layers_last_output(build):
    torch.manual_seed(0)
    model = build().double()
    idx = torch.randint(0, 30, (3, 20))
    for weights, v, y in _weights_and_mixtures(model, idx):
        assert torch.allclose(weights.sum(-1), torch.ones_like(weights[..., 0]))     # a distribution
        # A float64 model; the probe forms its logits in float32 (relative rounding 6e-8 on logits of size
        # < 10, so weights off by < 1e-6 relative): the mixtures agree to 1e-5 of the values' size (~1).
        torch.testing.assert_close(torch.einsum("bhj,bhjd->bhd", weights, v), y, atol=1e-5, rtol=1e-5)


def test_v2_rows_are_zero_outside_each_band():
    torch.manual_seed(1)
    model = MemoryMosaicV2(MosaicV2Config(**COMMON, kernels="reference", window=5, delay_eval=4)).eval()
    short, long = last_row_attention(model, torch.randint(0, 30, (2, 20)))
    t = 19  # the last row; keys j < t
    assert short[..., : t - 5].abs().max() == 0 and short[..., t - 5:].sum(-1).allclose(torch.ones(2, 2))
    assert long[..., t - 4 + 1:].abs().max() == 0 and long[..., : t - 4 + 1].sum(-1).allclose(torch.ones(2, 2))
