"""GAN losses shared by the adversarial baselines (pix2pix, Ea-GAN, RevGAN, MaskGAN, ResViT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gan_loss(logits: Tensor, real: bool, mode: str = "vanilla") -> Tensor:
    """Adversarial loss on discriminator outputs.

    vanilla: binary cross-entropy on logits (pix2pix, RevGAN); lsgan: least squares to 1/0
    (Ea-GAN, MaskGAN, ResViT).
    """
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, target)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    raise ValueError(f"unknown GAN loss '{mode}' (vanilla, lsgan)")


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze the discriminator during the generator step (saves its gradient compute)."""
    for p in module.parameters():
        p.requires_grad_(flag)
