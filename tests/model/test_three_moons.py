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
