"""Three moons: the data generator, the complex projection, the analytic optimum, a short training run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments import three_moons as tm


def test_split_and_time_grid_follow_the_official_experiment():
    assert len(tm.TRAIN_TRIPLES) == 8 and tm.VAL_TRIPLE not in tm.TRAIN_TRIPLES
    lcms = [tm.lcm_of(t) for t in tm.TRAIN_TRIPLES + (tm.VAL_TRIPLE,)]
    assert lcms == sorted(lcms) and lcms[-1] == tm.MAX_PERIOD == 6.0  # the 9 smallest, held-out last
    assert tm.DT == pytest.approx(0.0225)
    assert tm.MAX_PERIOD / tm.DT == pytest.approx(266.67, abs=0.01)  # three full periods in a block


def test_observations_are_unit_circles_and_y_is_x_shifted():
    x, y = tm.sample_batch(np.random.default_rng(0), 5)
    assert x.shape == y.shape == (5, 800, 6)
    assert torch.allclose(x[..., 0::2] ** 2 + x[..., 1::2] ** 2, torch.ones(5, 800, 3), atol=1e-5)
    assert torch.equal(x[:, 1:], y[:, :-1])
    one = tm.observations((1, 2, 3), np.array([0]), 3)[0]
    assert one[0, 0] == pytest.approx(np.sin(0.3)) and one[1, 4] == pytest.approx(np.sin(2 * np.pi * 0.0225 / 3 + 0.3))


def test_complex_projection_is_idempotent_and_keeps_rotations():
    w = torch.randn(6, 6)
    p = tm.complex_project(w)
    assert torch.equal(tm.complex_project(p), p)
    assert p[0, 0] == p[1, 1] == (w[0, 0] + w[1, 1]) / 2 and p[0, 1] == -p[1, 0] == (w[0, 1] - w[1, 0]) / 2
    rot = torch.tensor([[np.cos(0.4), np.sin(0.4)], [-np.sin(0.4), np.cos(0.4)]], dtype=torch.float32)
    assert torch.allclose(tm.complex_project(torch.block_diag(rot, rot, rot)), torch.block_diag(rot, rot, rot))


def test_causality_row_zero_and_heads():
    torch.manual_seed(0)
    m = tm.MoonMemory(3)
    x = torch.randn(2, 30, 6)
    att = m.attention(x)
    assert att.shape == (2, 3, 30, 30) and torch.all(att[:, :, 0] == 0)
    assert torch.all(att.triu() == 0)  # strictly causal: j < t
    assert torch.allclose(att[:, :, 1:].sum(-1), torch.ones(2, 3, 29))
    x2 = x.clone()
    x2[:, 20:] += 1.0  # a change after position 18 cannot reach the prediction of x_19 at t = 18
    assert torch.allclose(m(x)[:, :19], m(x2)[:, :19])
    with pytest.raises(ValueError, match="heads of an even size"):
        tm.MoonMemory(2)


def test_identity_weights_predict_once_the_context_holds_a_full_period():
    """With W_k = W_v = W_z = I a single head reads the moment one full period (266.7 steps) back: the
    one-step error falls when the context first holds a full period; 25 generated steps, whose period
    is not a whole number of steps, stay well below the chance level of ~0.6."""
    m = tm.MoonMemory(1)
    with torch.no_grad():
        for lin in (m.W_k, m.W_v, m.W_z):
            lin.weight.copy_(torch.eye(6))
    seq = tm.observations(tm.VAL_TRIPLE, np.random.default_rng(0).integers(0, 8000, 32))
    before, after = (m.rollout_error(seq, c, horizon=1) for c in (200, 300))
    assert after < 0.3 * before and after < 0.02
    assert m.rollout_error(seq, 300) < 0.3 < m.rollout_error(seq, 200)


def test_short_training_lowers_the_loss():
    # Measured: 60 steps take the loss from 0.194 to 0.11-0.13; the batch-to-batch spread is ~1%.
    model, losses = tm.train(3, steps=40, batch=8, progress=False)
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])


def test_forward_equals_the_dense_strictly_causal_attention():
    """forward() runs SDPA's causal kernel on shifted queries; the dense form (the weights of
    attention(), times v_j = W_v x_{j+1}) must be the same function. In float64, logits of up to
    50 |k|^2 ~ 1e2 lose ~1e2 * u64 = 1e-14 in the exponent, so 1e-10 leaves a wide margin."""
    from tests.conftest import rel_err

    torch.manual_seed(0)
    m = tm.MoonMemory(3).double()
    x = torch.randn(3, 50, 6, dtype=torch.float64)
    v = m._heads(m.W_v(torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)))
    dense = m.W_z((m.attention(x) @ v).transpose(1, 2).reshape(x.shape))
    assert rel_err(m(x), dense) < 1e-10


def test_mlx_adamw_first_update_has_no_bias_correction():
    """MLX's default AdamW (the official optimizer): after one gradient g the update is
    lr (1 - b1) g / (sqrt((1 - b2) g^2) + eps), i.e. 0.1 / sqrt(0.001) = 3.162 lr per unit sign,
    where torch.optim.AdamW (bias-corrected) moves by lr. Float32 arithmetic on O(1) numbers: 1e-6."""
    g = torch.tensor([0.5, -2.0, 1e-3])
    lr = 1e-2
    updates = {}
    for name, cls in tm.OPTIMIZERS.items():
        p = torch.nn.Parameter(torch.zeros(3))
        opt = cls([p], lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
        p.grad = g.clone()
        opt.step()
        updates[name] = p.detach().clone()
    want = -lr * 0.1 * g / (torch.sqrt(0.001 * g * g) + 1e-8)
    torch.testing.assert_close(updates["mlx"], want, rtol=1e-6, atol=0)
    torch.testing.assert_close(updates["torch"], -lr * torch.sign(g), rtol=1e-4, atol=0)  # eps / |g| = 1e-5 at g=1e-3


def test_mlx_adamw_weight_decay_and_second_step():
    """The second step and the decoupled weight decay, against the recurrences written out."""
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = tm.MLXAdamW([p], lr=0.1, betas=(0.5, 0.75), eps=1e-8, weight_decay=0.2)
    grads = [torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 1.0])]
    m = v = torch.zeros(2)
    want = torch.tensor([1.0, -1.0])
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
        want = want * (1 - 0.1 * 0.2)
        m, v = 0.5 * m + 0.5 * grad, 0.75 * v + 0.25 * grad * grad
        want = want - 0.1 * m / (v.sqrt() + 1e-8)
    torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        tm.train(1, steps=1, optimizer="sgd")


def test_head_assignment_reads_one_moon_per_head():
    m = tm.MoonMemory(3)
    with torch.no_grad():
        perm = torch.zeros(6, 6)
        for head, moon in enumerate((2, 0, 1)):   # head h reads moon perm[h]
            perm[2 * head:2 * head + 2, 2 * moon:2 * moon + 2] = torch.eye(2)
        m.W_k.weight.copy_(perm)
    a = tm.head_assignment(m)
    assert a["moon"] == [2, 0, 1] and a["one_head_per_moon"] and min(a["share"]) == 1.0
    with torch.no_grad():
        m.W_k.weight[0:2].mul_(0.1)   # head 0's key nearly zero: it attends uniformly, takes no moon
    assert not tm.head_assignment(m)["one_head_per_moon"]


def test_runs_resume_from_their_records(tmp_path):
    args = dict(steps=2, eval_seqs=4, contexts=[5, 50], optimizer="mlx", threads=1, progress=False)
    first, model = tm.run_pair(7, 3, tmp_path, **args)
    assert (tmp_path / "3head.json").exists() and "assignment" in first and len(first["loss"]) == 2
    again, model2 = tm.run_pair(7, 3, tmp_path, **{**args, "steps": 99})   # read back, not retrained
    assert again == first and torch.equal(model2.W_k.weight, model.W_k.weight)
    summary = tm.summarize({7: {1: {**first, "n_head": 1}, 3: first}})
    assert summary["3 heads"]["error_at_slowest_period"]["per_seed"] == [first["error_at_slowest_period"]]
