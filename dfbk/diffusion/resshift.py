"""ResShift residual-shifting diffusion (Yue et al., NeurIPS 2023), pixel space.

The chain moves from the target x0 (t=0) to the source y plus noise (t=T) by shifting the
residual y - x0: q(x_t | x0, y) = N(x0 + eta_t (y - x0), kappa^2 eta_t I). Sampling starts at
x_T = y + kappa sqrt(eta_T) eps, so 15 steps suffice. Arrays are indexed 0..T-1 for t = 1..T.
docs/method.md gives the equations this module implements one to one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ResShiftSchedule:
    """eta_t for t = 1..T (index t-1), with kappa; alpha_t = eta_t - eta_{t-1}, eta_0 = 0."""

    etas: Tensor  # (T,) float64
    kappa: float

    @property
    def num_steps(self) -> int:
        return int(self.etas.numel())

    @property
    def sqrt_etas(self) -> Tensor:
        return self.etas.sqrt()

    @property
    def etas_prev(self) -> Tensor:
        return torch.cat([self.etas.new_zeros(1), self.etas[:-1]])

    @property
    def alphas(self) -> Tensor:
        return self.etas - self.etas_prev


def make_schedule(
    num_steps: int = 15,
    kappa: float = 2.0,
    min_noise_level: float = 0.04,
    sqrt_eta_max: float = 0.99,
    power: float = 0.3,
) -> ResShiftSchedule:
    """ResShift's exponential schedule: sqrt(eta_t) = sqrt(eta_1) * b0^beta_t.

    sqrt(eta_1) = min(min_noise / kappa, min_noise), beta_t = ((t-1)/(T-1))^p (T-1),
    b0 = exp(log(sqrt(eta_T) / sqrt(eta_1)) / (T-1)).
    """
    sqrt_eta_1 = min(min_noise_level / kappa, min_noise_level)
    b0 = math.exp(math.log(sqrt_eta_max / sqrt_eta_1) / (num_steps - 1))
    t = torch.arange(num_steps, dtype=torch.float64)  # t - 1
    beta = (t / (num_steps - 1)) ** power * (num_steps - 1)
    sqrt_etas = sqrt_eta_1 * b0**beta
    return ResShiftSchedule(etas=sqrt_etas**2, kappa=float(kappa))


def _at(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] broadcast to `like`'s shape (t: (B,) long, 0-based)."""
    out = values.to(device=like.device)[t].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


def q_sample(x0: Tensor, y: Tensor, t: Tensor, sched: ResShiftSchedule, noise: Tensor) -> Tensor:
    """Forward marginal: x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) eps."""
    eta = _at(sched.etas, t, x0)
    return x0 + eta * (y - x0) + sched.kappa * eta.sqrt() * noise


def posterior_mean_variance(
    x_t: Tensor, x0: Tensor, t: Tensor, sched: ResShiftSchedule
) -> tuple[Tensor, Tensor]:
    """q(x_{t-1} | x_t, x0): mean (eta_{t-1}/eta_t) x_t + (alpha_t/eta_t) x0,
    variance kappa^2 (eta_{t-1}/eta_t) alpha_t."""
    eta = _at(sched.etas, t, x_t)
    eta_prev = _at(sched.etas_prev, t, x_t)
    alpha = _at(sched.alphas, t, x_t)
    mean = (eta_prev / eta) * x_t + (alpha / eta) * x0
    variance = sched.kappa**2 * (eta_prev / eta) * alpha
    return mean, variance


def scale_input(x_t: Tensor, t: Tensor, sched: ResShiftSchedule) -> Tensor:
    """ResShift's pixel-space input normalisation x_t / (3 kappa sqrt(eta_t) + 1)."""
    return x_t / (3.0 * sched.kappa * _at(sched.sqrt_etas, t, x_t) + 1.0)


def prior_sample(y: Tensor, sched: ResShiftSchedule, noise: Tensor) -> Tensor:
    """x_T = y + kappa sqrt(eta_T) eps."""
    return y + sched.kappa * sched.sqrt_etas[-1].item() * noise


Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x_t, y, t) -> predicted x0


def training_loss(denoiser: Denoiser, x0: Tensor, y: Tensor, sched: ResShiftSchedule) -> Tensor:
    """x0-prediction MSE at a uniformly drawn step (unweighted, as in ResShift)."""
    t = torch.randint(0, sched.num_steps, (x0.shape[0],), device=x0.device)
    x_t = q_sample(x0, y, t, sched, torch.randn_like(x0))
    return torch.mean((denoiser(x_t, y, t).float() - x0) ** 2)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    y: Tensor,
    sched: ResShiftSchedule,
    noise: Callable[[], Tensor] | None = None,
    clip: tuple[float, float] | None = (-1.0, 1.0),
) -> Tensor:
    """Ancestral sampling from x_T = y + kappa sqrt(eta_T) eps down to x0 (T evaluations).

    `noise()` returns the next standard-normal draw shaped like y (T draws in all: x_T, then
    one per step t = T..2); pass `SliceNoise(...).spatial` so each slice draws from its own
    stream (dfbk/diffusion/noise.py). Default: `torch.randn_like`. The predicted x0 is clamped
    to `clip` at each step; no noise is added at the last step.
    """
    draw = noise or (lambda: torch.randn_like(y))
    x = prior_sample(y, sched, draw().to(y))
    for index in reversed(range(sched.num_steps)):
        t = torch.full((y.shape[0],), index, device=y.device, dtype=torch.long)
        x0 = denoiser(x, y, t).to(y.dtype)
        if clip is not None:
            x0 = x0.clamp(*clip)
        mean, variance = posterior_mean_variance(x, x0, t, sched)
        x = mean + variance.sqrt() * draw().to(y) if index > 0 else mean
    return x
