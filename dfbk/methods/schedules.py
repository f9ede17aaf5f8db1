"""Learning-rate schedules shared by the GAN dfbk.baselines."""

from __future__ import annotations

from collections.abc import Callable


def linear_decay(total: int, decay_start: int) -> Callable[[int], float]:
    """pix2pix/CycleGAN schedule: constant lr, then linear decay to 0 over the remaining steps."""
    span = max(1, total - decay_start)
    return lambda step: 1.0 - max(0, step - decay_start) / span
