"""ResShift schedule, forward process, posterior and sampler against their closed forms."""

from __future__ import annotations

import math

import torch

from dfbk.diffusion import resshift as rs


def test_schedule_matches_the_formula():
    sched = rs.make_schedule(
        num_steps=15, kappa=2.0, min_noise_level=0.04, sqrt_eta_max=0.99, power=0.3
    )
    sqrt_etas = sched.sqrt_etas
    assert sched.num_steps == 15
    assert math.isclose(sqrt_etas[0].item(), 0.02, rel_tol=1e-12)  # min(0.04 / 2, 0.04)
    assert math.isclose(sqrt_etas[-1].item(), 0.99, rel_tol=1e-12)
    assert bool((sqrt_etas[1:] > sqrt_etas[:-1]).all())
    b0 = math.exp(math.log(0.99 / 0.02) / 14)
    for t in range(1, 16):
        beta = ((t - 1) / 14) ** 0.3 * 14
        assert math.isclose(sqrt_etas[t - 1].item(), 0.02 * b0**beta, rel_tol=1e-10)
    assert torch.allclose(sched.alphas.sum(), sched.etas[-1])  # alphas telescope to eta_T


def test_forward_marginal_mean_and_std():
    sched = rs.make_schedule()
    torch.manual_seed(0)
    x0 = torch.full((20000, 1, 1, 1), -0.5)
    y = torch.full_like(x0, 0.7)
    t = torch.full((x0.shape[0],), 6, dtype=torch.long)
    x_t = rs.q_sample(x0, y, t, sched, torch.randn_like(x0))
    eta = sched.etas[6].item()
    assert abs(x_t.mean().item() - (-0.5 + eta * 1.2)) < 0.02
    assert abs(x_t.std().item() - 2.0 * math.sqrt(eta)) < 0.02


def test_prior_is_source_plus_scaled_noise():
    sched = rs.make_schedule()
    y = torch.randn(2, 1, 4, 4)
    noise = torch.randn_like(y)
    assert torch.allclose(rs.prior_sample(y, sched, noise), y + 2.0 * 0.99 * noise)


def test_posterior_matches_closed_form():
    sched = rs.make_schedule()
    x_t, x0 = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    t = torch.tensor([0, 7, 14])
    mean, var = rs.posterior_mean_variance(x_t, x0, t, sched)
    etas = sched.etas.tolist()
    for i, step in enumerate(t.tolist()):
        eta, prev = etas[step], (etas[step - 1] if step > 0 else 0.0)
        alpha = eta - prev
        expected = prev / eta * x_t[i] + alpha / eta * x0[i]
        assert torch.allclose(mean[i], expected.to(mean.dtype), atol=1e-6)
        assert math.isclose(
            var[i].flatten()[0].item(), 4.0 * prev / eta * alpha, rel_tol=1e-5, abs_tol=1e-12
        )
    # t = 1 is deterministic and returns x0
    assert torch.allclose(mean[0], x0[0], atol=1e-6) and var[0].abs().max() == 0


def test_sampler_with_a_perfect_predictor_returns_x0():
    sched = rs.make_schedule()
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    y = torch.rand(2, 1, 8, 8) * 2 - 1
    calls = []

    def oracle(x_t, y_, t):
        calls.append(int(t[0]))
        return x0

    generator = torch.Generator().manual_seed(0)
    out = rs.sample(oracle, y, sched, noise=lambda: torch.randn(y.shape, generator=generator))
    assert torch.allclose(out, x0, atol=1e-5)
    assert calls == list(range(14, -1, -1))  # 15 evaluations, t = T..1


def test_training_loss_is_zero_for_a_perfect_predictor_and_positive_otherwise():
    sched = rs.make_schedule()
    x0, y = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    assert rs.training_loss(lambda x_t, y_, t: x0, x0, y, sched).item() == 0.0
    assert rs.training_loss(lambda x_t, y_, t: y_, x0, y, sched).item() > 0.0
