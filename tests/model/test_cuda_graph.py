"""mosaic-train --cuda-graph: the padding it needs changes nothing (CPU), and the replayed step trains
as the eager one does, with fresh dropout masks at every replay (GPU)."""
from __future__ import annotations

import functools
import json

import pytest
import torch

from mosaic_model.cli import train as train_mod
from mosaic_model.models.build import build_model
from mosaic_model.training import TrainConfig
from mosaic_model.training.tasks import ICLTrainingTask
from tests.conftest import rel_err

TASK = TrainConfig(num_train=40, num_test=8, max_string_len=9, task_seed=0, iid=False, seed=3)


@pytest.mark.parametrize("model", ["mosaic", "gpt"])
def test_padding_to_the_block_size_changes_neither_loss_nor_gradients(model):
    """The in-context batches a graph replays are padded to the block size: PAD inputs whose labels the
    loss ignores, after every real position of a causal model. Loss and gradients must not move."""
    task = ICLTrainingTask(TASK)
    x, y = next(b for b in (task.batch(d, 16, "cpu") for d in range(6)) if b[0].shape[1] < task.block_size)
    xp, yp = task.fixed_shape(x, y)
    assert xp.shape[1] == task.block_size > x.shape[1]
    config = dict(n_layer=2, n_head=2, n_embd=32, block_size=task.block_size, vocab_size=task.vocab_size,
                  dropout=0.0, bias=False)
    if model == "mosaic":
        config.update(kernels="reference", attn_dropout=0.0)
    torch.manual_seed(0)
    net = build_model(model, config)
    results = []
    for inputs, labels in ((x, y), (xp, yp)):
        net.zero_grad()
        _, loss = net(inputs, labels)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    (loss, grads), (loss_p, grads_p) = results
    # Float32, the same function on longer rows: only the blocking of sums over positions (weight
    # gradients sum over B*T rows, of which the padded ones contribute exact zeros) and of the
    # length-dependent kernels can change, a few float32 roundings (~1e-7) per value; 1e-5 leaves room
    # for the ~1e2-term sums, and a pad that leaked into a real position moves the loss at 1e-2.
    assert rel_err(loss_p, loss) <= 1e-5
    for g, gp in zip(grads, grads_p):
        assert rel_err(gp, g) <= 1e-5


def _train(tmp_path, name, extra):
    out = tmp_path / name
    argv = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--num-train", "40", "--num-test", "8",
            "--max-string-len", "9", "--batch-size", "16", "--eval-batch-size", "8", "--log-every", "1",
            "--eval-every", "12", "--steps", "24", "--warmup", "3", "--device", "cuda", "--dtype", "float32",
            "--quiet", "--out-dir", str(out)] + extra
    assert train_mod.main(argv) == 0
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return [l["loss"] for l in lines if l["split"] == "train"], [l["loss"] for l in lines if l["split"] == "val"]


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["mosaic", "gpt"])
def test_gpu_graph_trains_as_the_eager_step(tmp_path, model):
    """Without dropout, 24 steps replayed from graphs give the eager run's losses. 40 languages in
    batches of 16 make two batch shapes (16 and 8), so two graphs, each after its eager warm-up steps."""
    common = ["--model", model, "--dropout", "0", "--attn-dropout", "0"]
    eager_train, eager_val = _train(tmp_path, "eager", common)
    graph_train, graph_val = _train(tmp_path, "graph", common + ["--cuda-graph"])
    assert len(graph_train) == len(eager_train) == 24
    # The same float32 arithmetic, save the padding of the graph's batches (see the CPU test above:
    # ~1e-7 per value) and possibly other GEMM algorithms inside a recording; 24 AdamW steps of a small
    # model can grow that to ~1e-5. A stale batch, a lost update or a wrong learning rate moves the
    # loss by 1e-2 or more from the first replayed step on.
    for step, (e, g) in enumerate(zip(eager_train + eager_val, graph_train + graph_val)):
        assert abs(g - e) <= 1e-4 * abs(e), (step, e, g)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["mosaic", "gpt"])
def test_gpu_replays_draw_fresh_dropout_masks(model):
    """At learning rate 0 on one repeated batch, the replayed losses differ with dropout (every
    dropout, the fused kernels' seeds included, draws anew at each replay) and are all equal
    without it (the control: nothing else changes between replays)."""
    from mosaic_model.training.step import CudaGraphStep, make_capturable, optimizer_step

    task = ICLTrainingTask(TASK)
    x, y = task.fixed_shape(*task.batch(0, 16, "cuda"))
    losses = {}
    for p in (0.0, 0.1):
        config = dict(n_layer=2, n_head=2, n_embd=32, block_size=task.block_size, vocab_size=task.vocab_size,
                      dropout=p, bias=False)
        if model == "mosaic":
            config.update(kernels="fused", attn_dropout=p)
        torch.manual_seed(0)
        net = build_model(model, config).cuda().train()
        params = list(net.parameters())
        opt = torch.optim.AdamW(params, lr=0.0, fused=True)
        make_capturable(opt, 0.0)
        step = CudaGraphStep(functools.partial(optimizer_step, net, params, opt, micro_steps=1, grad_clip=1.0,
                                               device=torch.device("cuda"), dtype=torch.float32,
                                               autocast_cache=False), opt)
        runs = [float(step([(x, y)])[0]) for _ in range(CudaGraphStep.WARMUP + 5)]
        losses[p] = runs[CudaGraphStep.WARMUP:]  # the recorded step and four replays
    assert len(set(losses[0.0])) == 1, losses[0.0]
    assert len(set(losses[0.1])) == len(losses[0.1]), losses[0.1]


@pytest.mark.gpu
def test_gpu_fused_attention_dropout_draws_a_new_seed_at_each_replay():
    """The fused attention draws its Philox seed on the device, so a graph replays a new mask each time."""
    from mosaic_kernels import mosaic_attention

    k = torch.randn(1, 2, 64, 16, device="cuda")
    v = torch.randn(1, 2, 64, 16, device="cuda")
    mosaic_attention(k, v, dropout_p=0.5)  # compile outside the recording
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mosaic_attention(k, v, dropout_p=0.5)
    seen = []
    for _ in range(3):
        graph.replay()
        seen.append(out.clone())
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
