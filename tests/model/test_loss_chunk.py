"""The training loss in chunks of positions (models' ``loss_chunk``, the trainer's ``loss_chunk``): the same
loss and gradients as the whole logits, without ever keeping the (B, T, vocab) logits; and evaluations
sized to the run."""
from __future__ import annotations

import pytest
import torch

from mosaic_model.models import GPT, GPTConfig, Llama, LlamaConfig, MemoryMosaic, MemoryMosaicV2, MosaicConfig, MosaicV2Config
from mosaic_model.training import TrainConfig
from mosaic_model.training.step import CPU_LOSS_LOGITS, loss_rows
from mosaic_model.training.tasks import LMTrainingTask
from tests import tolerances
from tests.conftest import rel_err

SMALL = dict(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=500, dropout=0.0)


KINDS = ["mosaic", "gpt", "mosaic-v2", "llama"]


def _model(kind):
    torch.manual_seed(0)
    if kind == "mosaic":
        return MemoryMosaic(MosaicConfig(**SMALL, kernels="reference"))
    if kind == "mosaic-v2":  # a band that cuts the 32 positions: window 8, delays 4 to 12
        # eval mode: the delay is fixed (in training it is drawn per call, and the two passes would differ)
        return MemoryMosaicV2(MosaicV2Config(**SMALL, kernels="reference", window=8, delay_min=4, delay_max=12,
                                             delay_eval=6)).eval()
    return Llama(LlamaConfig(**SMALL)) if kind == "llama" else GPT(GPTConfig(**SMALL))


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_loss_equals_the_whole_one(kind):
    model = _model(kind)
    x = torch.randint(0, 500, (3, 32), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 500, (3, 32), generator=torch.Generator().manual_seed(2))
    y[0, :5] = -100  # ignored targets count in neither
    results = []
    for chunk in (None, 7):  # 96 positions in chunks of 7: a short last chunk
        model.zero_grad()
        logits, loss = model(x, y, loss_chunk=chunk)
        loss.backward()
        results.append((logits, loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (whole_logits, whole, grads), (none, chunked, chunked_grads) = results
    assert whole_logits is not None and none is None
    # float32, the same terms summed in another grouping (14 partial sums instead of one): a few roundings.
    assert rel_err(chunked, whole) < tolerances.FP32
    for a, b in zip(chunked_grads, grads):
        assert rel_err(a, b) < tolerances.FP32


def _largest_saved(model, x, y, chunk):
    largest = [0]

    def pack(t):
        largest[0] = max(largest[0], t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x, y, loss_chunk=chunk)
    loss.backward()
    return largest[0]


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_loss_keeps_no_whole_logits(kind):
    model = _model(kind)
    x = torch.randint(0, 500, (4, 32))
    logits_numel = 4 * 32 * 500
    assert _largest_saved(model, x, x, None) >= logits_numel
    # 16 of the 128 positions at a time: an eighth of the logits (8,000 values). The largest tensor left is
    # another one: the reference attention's (B, H, T, T) weights, 8,192 values, or v2's 16,384 (both memories'
    # heads in one call); the whole logits (64,000) would exceed half.
    assert _largest_saved(model, x, x, 16) <= logits_numel // 2


def test_the_trainer_chunks_the_cpu_loss_of_large_vocabularies_only():
    lm = TrainConfig(task="lm", data="x.txt", batch_size=32, block_size=256)
    assert loss_rows(lm, 50304, torch.device("cpu")) == CPU_LOSS_LOGITS // 50304
    assert loss_rows(lm, 50304, torch.device("cuda")) == 0
    assert loss_rows(TrainConfig(), 25, torch.device("cpu")) == 0  # the in-context task's vocabulary is tiny
    assert loss_rows(TrainConfig(task="lm", data="x", loss_chunk=0), 50304, torch.device("cpu")) == 0


@pytest.mark.parametrize("eval_every, steps, given, expected", [
    (50, 30, None, 5),      # 30 steps x 8 sequences trained: 5 batches of 50 windows cover them
    (50, 2000, None, 8),    # 50 steps x 8 between evaluations: 400 windows
    (1000, 5000, None, 20),  # capped at 20
    (1, 2, None, 1),        # at least one
    (50, 30, 3, 3),         # given: as given
])
def test_evaluations_are_sized_to_the_run(eval_every, steps, given, expected):
    task = LMTrainingTask.__new__(LMTrainingTask)  # the sizing rule alone: no corpus needed
    task.config = TrainConfig(task="lm", data="x", batch_size=8, eval_batch_size=50, eval_every=eval_every, steps=steps,
                              eval_batches=given)
    task.world = 1
    assert task.eval_batches == expected
