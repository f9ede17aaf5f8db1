"""CycleGAN's ResNet generator (Zhu et al., ICCV 2017; Johnson et al. 2016), for 2-D slices.

c7s1-ngf, two stride-2 downsamplings, `n_blocks` residual blocks (reflection padding,
InstanceNorm), two transposed-convolution upsamplings, c7s1-out and tanh. Shared by the
baselines that build on it (MaskGAN, SynDiff's non-diffusive translators, RevGAN's encoder and
decoder use the same pieces), so the pieces are exposed separately.
"""

from __future__ import annotations

from torch import Tensor, nn

from dfbk.networks.unet import norm_layer


class ResnetBlock(nn.Module):
    """x + Conv-Norm-ReLU-(Dropout)-Conv-Norm(x), reflection padded.

    `bias=False` drops the convolutions' biases, which a following batch norm makes redundant
    (pix2pix/CycleGAN's `use_bias`; ResViT's blocks have none).
    """

    def __init__(
        self, channels: int, norm: str = "instance", dropout: float = 0.0, bias: bool = True
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            norm_layer(norm, channels),
            nn.ReLU(True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            norm_layer(norm, channels),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def resnet_encoder(
    in_channels: int, ngf: int = 64, n_down: int = 2, norm: str = "instance", bias: bool = True
) -> nn.Sequential:
    """c7s1-ngf then `n_down` stride-2 3x3 convolutions doubling the width: out ngf * 2**n_down.

    `bias=False`: no convolution biases (each convolution is followed by a norm).
    """
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(in_channels, ngf, 7, bias=bias),
        norm_layer(norm, ngf),
        nn.ReLU(True),
    ]
    for i in range(n_down):
        width = ngf * 2**i
        layers += [
            nn.Conv2d(width, width * 2, 3, 2, 1, bias=bias),
            norm_layer(norm, width * 2),
            nn.ReLU(True),
        ]
    return nn.Sequential(*layers)


def resnet_decoder(
    out_channels: int, ngf: int = 64, n_up: int = 2, norm: str = "instance", bias: bool = True
) -> nn.Sequential:
    """`n_up` transposed convolutions halving the width, then c7s1-out and tanh.

    `bias=False` drops the biases of the transposed convolutions (each followed by a norm); the
    output convolution always has one.
    """
    layers: list[nn.Module] = []
    for i in reversed(range(n_up)):
        width = ngf * 2 ** (i + 1)
        layers += [
            nn.ConvTranspose2d(width, width // 2, 3, 2, 1, output_padding=1, bias=bias),
            norm_layer(norm, width // 2),
            nn.ReLU(True),
        ]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
    return nn.Sequential(*layers)


class ResnetGenerator(nn.Module):
    """(B, in, H, W) -> (B, out, H, W) in [-1, 1]; H, W divisible by 4."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        width = ngf * 4
        self.encoder = resnet_encoder(in_channels, ngf, 2, norm)
        self.blocks = nn.Sequential(*[ResnetBlock(width, norm, dropout) for _ in range(n_blocks)])
        self.decoder = resnet_decoder(out_channels, ngf, 2, norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.blocks(self.encoder(x)))
