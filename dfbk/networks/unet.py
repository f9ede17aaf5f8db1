"""pix2pix's U-Net generator and 70x70 PatchGAN (Isola et al., CVPR 2017), written for 2-D slices.

Written here rather than imported: the reference lives in the authors' training repository, not
a library. U-Net: `num_downs` stride-2 4x4 convolutions (C64-C128-C256-C512-C512...), LeakyReLU
0.2 in the encoder, ReLU and transposed convolutions in the decoder with skip concatenation,
dropout 0.5 in the decoder's ngf*8 blocks below the innermost (three at 256x256),
tanh output in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{kind}' (batch, instance, none)")


class UNetGenerator(nn.Module):
    """(B, in_ch, H, W) -> (B, out_ch, H, W) in [-1, 1]; H and W divisible by 2**num_downs."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "batch",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        widths = [min(ngf * 2**i, ngf * 8) for i in range(num_downs)]
        self.down = nn.ModuleList()
        prev = in_channels
        for i, width in enumerate(widths):
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2, True)]
            layers.append(nn.Conv2d(prev, width, 4, 2, 1, bias=norm != "batch"))
            if 0 < i < num_downs - 1:  # no norm on the outermost and innermost encoder layers
                layers.append(norm_layer(norm, width))
            self.down.append(nn.Sequential(*layers))
            prev = width
        self.up = nn.ModuleList()
        for i in reversed(range(num_downs)):
            out = widths[i - 1] if i > 0 else out_channels
            in_ch = widths[i] if i == num_downs - 1 else widths[i] * 2
            layers = [
                nn.ReLU(True),
                nn.ConvTranspose2d(in_ch, out, 4, 2, 1, bias=i == 0 or norm != "batch"),
            ]
            if i > 0:
                layers.append(norm_layer(norm, out))
                if dropout > 0 and 4 <= i <= num_downs - 2:  # pix2pix: the ngf*8 middle blocks
                    layers.append(nn.Dropout(dropout))
            else:
                layers.append(nn.Tanh())
            self.up.append(nn.Sequential(*layers))

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()  # the innermost output feeds the decoder directly
        for i, block in enumerate(self.up):
            if i > 0:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x)
        return x


class PatchDiscriminator(nn.Module):
    """PatchGAN: n_layers=3 gives the 70x70 receptive field; outputs a logit map."""

    def __init__(
        self, in_channels: int = 2, ndf: int = 64, n_layers: int = 3, norm: str = "batch"
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = ndf
        for i in range(1, n_layers + 1):
            prev, width = width, ndf * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(prev, width, 4, stride, 1, bias=norm != "batch"),
                norm_layer(norm, width),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def init_weights(module: nn.Module, gain: float = 0.02, zero_bias: bool = True) -> None:
    """pix2pix initialisation: N(0, 0.02) convolutions, N(1, 0.02) norm scales.

    Convolution biases are zeroed (pix2pix's `init_weights`) unless `zero_bias=False`, which
    keeps PyTorch's default biases as older forks' `weights_init_normal` does (ResViT's D).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None and zero_bias:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
