"""SynDiff's adversarial-diffusion networks (Özbey et al., IEEE TMI 2023), written for 2-D slices.

SynDiff takes its diffusive generator and time-conditioned discriminator from DDGAN (Xiao et
al., ICLR 2022), whose generator is an NCSN++ U-Net (Song et al., ICLR 2021):

- `DiffusiveGenerator`: (x_t, source condition, step, latent z) -> predicted x0 in [-1, 1].
  NCSN++-style: BigGAN residual blocks with FIR [1,3,3,1] resampling, skip rescaling by
  1/sqrt(2), self-attention at the configured resolutions and in the bottleneck, an input
  pyramid added residually at every downsampling, sinusoidal step embedding through a 2-layer
  MLP added after each block's first convolution, and adaptive group norm whose scale and shift
  come from z mapped by PixelNorm + an MLP (the StyleGAN-like latent that makes each reverse step
  a multimodal, implicit distribution).
- `TimeDiscriminator`: judges (x_{t-1}, x_t) at step t; DDGAN's "large" discriminator: stride-2
  FIR residual blocks with the step embedding added after the first convolution, minibatch
  standard deviation, then a spatial sum and a linear logit.

Simplifications against the published NCSN++ (recorded by the method's `describe()`): the
input pyramid blurs then applies a 3x3 convolution instead of a fused FIR convolution;
convolutions use PyTorch's default initialisation except the zero-initialised (DDGAN
`init_scale=0`) last layers of blocks and the head; the output is one channel instead of the
authors' two, of which only the first is used. Minibatch std uses the largest group size <= 4
that divides the batch (DDGAN's code needs the batch divisible by min(batch, 4)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfbk.networks.blocks import timestep_embedding

_FIR = torch.tensor([1.0, 3.0, 3.0, 1.0])
_SQRT2 = math.sqrt(2.0)


def _fir_kernel(x: Tensor, gain: float) -> Tensor:
    """The separable [1,3,3,1] kernel as a depthwise (C, 1, 4, 4) weight, sum = gain."""
    k = torch.outer(_FIR, _FIR)
    k = k / k.sum() * gain
    return k.to(x.device, x.dtype).expand(x.shape[1], 1, 4, 4)


def fir_downsample(x: Tensor) -> Tensor:
    """Blur with [1,3,3,1] and keep every second pixel: (B, C, H, W) -> (B, C, H/2, W/2)."""
    return F.conv2d(x, _fir_kernel(x, 1.0), stride=2, padding=1, groups=x.shape[1])


def fir_upsample(x: Tensor) -> Tensor:
    """Zero-insertion upsampling then [1,3,3,1] blur (gain 4): (B, C, H, W) -> (B, C, 2H, 2W)."""
    return F.conv_transpose2d(x, _fir_kernel(x, 4.0), stride=2, padding=1, groups=x.shape[1])


def _groups(channels: int) -> int:
    """NCSN++'s group count: min(C // 4, 32)."""
    return max(1, min(channels // 4, 32))


def _zero_init(module: nn.Module) -> nn.Module:
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine, then gamma(z) * h + beta(z) (gamma starts at 1, beta at 0)."""

    def __init__(self, channels: int, z_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, affine=False, eps=1e-6)
        self.style = nn.Linear(z_dim, 2 * channels)
        nn.init.zeros_(self.style.bias)
        self.style.bias.data[:channels] = 1.0

    def forward(self, x: Tensor, z_emb: Tensor) -> Tensor:
        gamma, beta = self.style(z_emb)[..., None, None].chunk(2, dim=1)
        return gamma * self.norm(x) + beta


class AdaResBlock(nn.Module):
    """BigGAN++ block: AdaGN-SiLU-(resample)-Conv, + Dense(t), AdaGN-SiLU-Conv; skip / sqrt(2)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        t_dim: int,
        z_dim: int,
        resample: str = "none",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.resample = resample  # "none", "up" or "down"
        self.norm0 = AdaptiveGroupNorm(in_ch, z_dim)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.dense = nn.Linear(t_dim, out_ch)
        nn.init.zeros_(self.dense.bias)
        self.norm1 = AdaptiveGroupNorm(out_ch, z_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        needs_skip = in_ch != out_ch or resample != "none"
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if needs_skip else nn.Identity()

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return fir_upsample(x)
        if self.resample == "down":
            return fir_downsample(x)
        return x

    def forward(self, x: Tensor, t_emb: Tensor, z_emb: Tensor) -> Tensor:
        h = F.silu(self.norm0(x, z_emb))
        h, x = self._resample(h), self._resample(x)
        h = self.conv0(h) + self.dense(F.silu(t_emb))[..., None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h, z_emb))))
        return (self.skip(x) + h) / _SQRT2


class AttentionBlock(nn.Module):
    """Single-head self-attention over pixels (NCSN++ AttnBlockpp), zero-init output, / sqrt(2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, eps=1e-6)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = _zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, *_: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        attended = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(C), as published
        return (x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))) / _SQRT2


class LatentMapping(nn.Sequential):
    """z (B, nz) -> PixelNorm -> Linear(nz, z_dim) -> SiLU -> n_mlp x (Linear, SiLU)."""

    def __init__(self, nz: int, z_dim: int, n_mlp: int) -> None:
        layers: list[nn.Module] = [nn.Linear(nz, z_dim), nn.SiLU()]
        for _ in range(n_mlp):
            layers += [nn.Linear(z_dim, z_dim), nn.SiLU()]
        super().__init__(*layers)

    def forward(self, z: Tensor) -> Tensor:
        z = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)  # PixelNorm
        return super().forward(z)


class _Unit(nn.Module):
    """A residual block, optionally followed by self-attention (one skip in or out)."""

    def __init__(self, block: AdaResBlock, attention: bool) -> None:
        super().__init__()
        self.block = block
        self.attention = AttentionBlock(block.conv1.out_channels) if attention else nn.Identity()

    def forward(self, x: Tensor, t_emb: Tensor, z_emb: Tensor) -> Tensor:
        return self.attention(self.block(x, t_emb, z_emb))


class DiffusiveGenerator(nn.Module):
    """NCSN++-style U-Net: (x_t, cond) (B, 1, H, W) each, step k (B,), z (B, nz) -> x0 (B, 1, H, W).

    `k` is the 0-based step index (t - 1 for t = 1..T). H, W divisible by 2**(len(ch_mult)-1).
    Attention is placed on the levels whose resolution at `image_size` is in `attn_resolutions`.
    Output in [-1, 1] (tanh).
    """

    def __init__(
        self,
        nf: int = 64,
        ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (16,),
        image_size: int = 256,
        nz: int = 100,
        z_dim: int = 256,
        n_mlp: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.nf, t_dim, levels = nf, 4 * nf, len(ch_mult)
        self.time_mlp = nn.Sequential(nn.Linear(nf, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.z_map = LatentMapping(nz, z_dim, n_mlp)
        block = lambda i, o, r="none": AdaResBlock(i, o, t_dim, z_dim, r, dropout)  # noqa: E731
        attn = [image_size // 2**i in attn_resolutions for i in range(levels)]
        self.stem = nn.Conv2d(2, nf, 3, padding=1)
        self.down = nn.ModuleList()  # per level: units, each leaving one skip
        self.downsample = nn.ModuleList()  # per level but the last: block, pyramid conv
        skips, width, pyramid_ch = [nf], nf, 2
        for level, mult in enumerate(ch_mult):
            units = nn.ModuleList()
            for _ in range(num_res_blocks):
                units.append(_Unit(block(width, nf * mult), attn[level]))
                width = nf * mult
                skips.append(width)
            self.down.append(units)
            if level < levels - 1:
                pyramid_conv = nn.Conv2d(pyramid_ch, width, 3, padding=1)
                self.downsample.append(nn.ModuleList([block(width, width, "down"), pyramid_conv]))
                pyramid_ch = width
                skips.append(width)
        self.middle = nn.ModuleList(
            [_Unit(block(width, width), True), _Unit(block(width, width), False)]
        )
        self.up = nn.ModuleList()  # per level (lowest first): units taking one skip each
        self.upsample = nn.ModuleList()
        for level in reversed(range(levels)):
            units = nn.ModuleList()
            for i in range(num_res_blocks + 1):
                last = i == num_res_blocks
                units.append(
                    _Unit(block(width + skips.pop(), nf * ch_mult[level]), last and attn[level])
                )
                width = nf * ch_mult[level]
            self.up.append(units)
            if level > 0:
                self.upsample.append(block(width, width, "up"))
        self.head = nn.Sequential(
            nn.GroupNorm(_groups(width), width, eps=1e-6),
            nn.SiLU(),
            _zero_init(nn.Conv2d(width, 1, 3, padding=1)),
        )

    def forward(self, x_t: Tensor, cond: Tensor, k: Tensor, z: Tensor) -> Tensor:
        t_emb = self.time_mlp(timestep_embedding(k, self.nf))
        z_emb = self.z_map(z)
        pyramid = torch.cat([x_t, cond], dim=1)
        h = self.stem(pyramid)
        hs = [h]
        for level, units in enumerate(self.down):
            for unit in units:
                h = unit(h, t_emb, z_emb)
                hs.append(h)
            if level < len(self.downsample):  # input pyramid joins with skip rescaling
                down_block, pyramid_conv = self.downsample[level]
                pyramid = pyramid_conv(fir_downsample(pyramid))
                h = pyramid = (pyramid + down_block(h, t_emb, z_emb)) / _SQRT2
                hs.append(h)
        for unit in self.middle:
            h = unit(h, t_emb, z_emb)
        for level, units in enumerate(self.up):
            for unit in units:
                h = unit(torch.cat([h, hs.pop()], dim=1), t_emb, z_emb)
            if level < len(self.upsample):
                h = self.upsample[level](h, t_emb, z_emb)
        return torch.tanh(self.head(h))


class TimeDownBlock(nn.Module):
    """DDGAN DownConvBlock: act-Conv, + Dense(t), act-(FIR down)-Conv (zero init); 1x1 skip."""

    def __init__(self, in_ch: int, out_ch: int, t_dim: int, downsample: bool = True) -> None:
        super().__init__()
        self.downsample = downsample
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.dense = nn.Linear(t_dim, out_ch)
        self.conv1 = _zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        h = self.conv0(F.leaky_relu(x, 0.2)) + self.dense(t_emb)[..., None, None]
        h = F.leaky_relu(h, 0.2)
        if self.downsample:
            h, x = fir_downsample(h), fir_downsample(x)
        return (self.conv1(h) + self.skip(x)) / _SQRT2


def minibatch_stddev(h: Tensor, group_size: int = 4) -> Tensor:
    """Append one channel: the feature std across groups of samples, averaged (StyleGAN)."""
    b, c, height, width = h.shape
    group = max(g for g in range(1, min(b, group_size) + 1) if b % g == 0)
    std = h.view(group, -1, c, height, width).var(0, unbiased=False).add(1e-8).sqrt()
    std = std.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1).repeat(group, 1, height, width)
    return torch.cat([h, std], dim=1)


class TimeDiscriminator(nn.Module):
    """D(x_{t-1}, x_t, k) -> (B, 1) logit; DDGAN's large discriminator (1x1 stem at 2*ndf).

    `n_down` stride-2 blocks of width ndf * min(2**(i+2), 8): six at 256x256 give 4x4 features
    of width 8*ndf before minibatch std, a 3x3 conv, a spatial sum and a linear layer.
    """

    def __init__(self, ndf: int = 64, n_down: int = 6, t_dim: int = 256) -> None:
        super().__init__()
        self.t_dim = t_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(t_dim, t_dim), nn.LeakyReLU(0.2), nn.Linear(t_dim, t_dim)
        )
        self.stem = nn.Conv2d(2, 2 * ndf, 1)
        widths = [2 * ndf] + [ndf * min(2 ** (i + 2), 8) for i in range(n_down)]
        self.blocks = nn.ModuleList(
            TimeDownBlock(widths[i], widths[i + 1], t_dim) for i in range(n_down)
        )
        self.final = nn.Conv2d(widths[-1] + 1, widths[-1], 3, padding=1)
        self.linear = nn.Linear(widths[-1], 1)

    def forward(self, x_prev: Tensor, x_t: Tensor, k: Tensor) -> Tensor:
        t_emb = F.leaky_relu(self.time_mlp(timestep_embedding(k, self.t_dim)), 0.2)
        h = self.stem(torch.cat([x_prev, x_t], dim=1))
        for block in self.blocks:
            h = block(h, t_emb)
        h = F.leaky_relu(self.final(minibatch_stddev(h)), 0.2)
        return self.linear(h.sum(dim=(2, 3)))
