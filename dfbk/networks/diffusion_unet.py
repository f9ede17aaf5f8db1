"""A small time-conditioned U-Net denoiser for ResShift (the Swin-UNet comes with DFBK).

ResBlocks with GroupNorm and timestep FiLM (scale-shift norm, as in ResShift/ADM), stride-2
convolutions down, nearest-neighbour upsampling, skip concatenation. Input: the scaled x_t
concatenated with the source y; output: the predicted x0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer steps t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def group_norm(channels: int) -> nn.GroupNorm:
    """Up to 32 groups, always a divisor of `channels` (ADM uses 32)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice; the second norm is modulated by (1 + scale, shift) of t."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            group_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.out_norm = group_norm(out_ch)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb(emb)[..., None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


class DiffusionUNet(nn.Module):
    """(B, in_ch, H, W), t (B,) -> (B, out_ch, H, W); H, W divisible by 2**(len(mults)-1)."""

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        emb_dim = channels * 4
        self.channels = channels
        self.time_embed = nn.Sequential(
            nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down_blocks, self.downsamples = nn.ModuleList(), nn.ModuleList()
        widths, prev = [], channels
        for level, mult in enumerate(channel_mults):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(prev, channels * mult, emb_dim, dropout))
                prev = channels * mult
            self.down_blocks.append(blocks)
            widths.append(prev)
            last = level == len(channel_mults) - 1
            self.downsamples.append(nn.Identity() if last else nn.Conv2d(prev, prev, 3, 2, 1))
        self.middle = nn.ModuleList(
            [ResBlock(prev, prev, emb_dim, dropout), ResBlock(prev, prev, emb_dim, dropout)]
        )
        self.up_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            blocks = nn.ModuleList()
            for i in range(num_res_blocks):
                blocks.append(
                    ResBlock(
                        prev + widths[level] if i == 0 else prev, channels * mult, emb_dim, dropout
                    )
                )
                prev = channels * mult
            self.up_blocks.append(blocks)
        self.head = nn.Sequential(
            group_norm(prev), nn.SiLU(), nn.Conv2d(prev, out_channels, 3, padding=1)
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_embed(timestep_embedding(t, self.channels))
        h = self.stem(x)
        skips = []
        for blocks, down in zip(self.down_blocks, self.downsamples, strict=True):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            h = down(h)
        for block in self.middle:
            h = block(h, emb)
        for i, blocks in enumerate(self.up_blocks):
            if i > 0:
                h = nn.functional.interpolate(h, scale_factor=2, mode="nearest")
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, emb)
        return self.head(h)
