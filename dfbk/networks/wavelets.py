"""One-level orthonormal Haar wavelet transform for DFB (docs/method.md §3.1).

The Haar DWT of a feature map splits every non-overlapping 2×2 block [[a, b], [c, d]] into four
coefficients with the orthonormal filters

    LL = (a + b + c + d) / 2      low band (local mean)
    H0 = (a + b - c - d) / 2      differences along the height (horizontal edges)
    H1 = (a - b + c - d) / 2      differences along the width (vertical edges)
    H2 = (a - b - c + d) / 2      diagonal detail

Because the four filters form an orthonormal basis of each 2×2 block, the inverse is the
transposed convolution with the same weights and reconstructs exactly (float precision).

Two backends, same numbers (band order and signs follow pytorch_wavelets' `DWTForward(J=1,
wave='haar', mode='zero')` on even sizes, checked in tests/test_dfbk_networks.py):
- "conv": a grouped stride-2 convolution and its transpose — PyTorch-native, so it runs under
  autocast on GPU, and faster than pytorch_wavelets' separable filter bank (bench/bench_dfbk.py
  measures both; docs/training.md has the numbers);
- "pytorch_wavelets": the reference library, kept selectable for the benchmark comparison.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKENDS = ("conv", "pytorch_wavelets")

# (4, 2, 2): LL, H0, H1, H2 as described in the module docstring.
_HAAR = 0.5 * torch.tensor(
    [
        [[1.0, 1.0], [1.0, 1.0]],
        [[1.0, 1.0], [-1.0, -1.0]],
        [[1.0, -1.0], [1.0, -1.0]],
        [[1.0, -1.0], [-1.0, 1.0]],
    ]
)


def _check_even(x: Tensor) -> None:
    if x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(
            f"Haar DWT needs a (B, C, H, W) map with even H and W; got shape {tuple(x.shape)}"
        )


def _filters(channels: int, like: Tensor) -> Tensor:
    """(4C, 1, 2, 2) grouped-conv weight: the four Haar filters repeated per channel."""
    return _HAAR.to(device=like.device, dtype=like.dtype).repeat(channels, 1, 1).unsqueeze(1)


def haar_dwt(x: Tensor) -> tuple[Tensor, Tensor]:
    """Haar DWT as a grouped strided conv.

    (B, C, H, W) -> LL (B, C, H/2, W/2), highs (B, C, 3, H/2, W/2) in pytorch_wavelets' order.
    """
    _check_even(x)
    b, c, h, w = x.shape
    coeffs = F.conv2d(x, _filters(c, x), stride=2, groups=c).view(b, c, 4, h // 2, w // 2)
    return coeffs[:, :, 0], coeffs[:, :, 1:]


def haar_idwt(low: Tensor, highs: Tensor) -> Tensor:
    """Inverse Haar DWT as the transposed grouped conv (exact: the filters are orthonormal).

    LL (B, C, h, w), highs (B, C, 3, h, w) -> (B, C, 2h, 2w).
    """
    b, c, h, w = low.shape
    if highs.shape != (b, c, 3, h, w):
        raise ValueError(f"high bands {tuple(highs.shape)} do not match LL {tuple(low.shape)}")
    coeffs = torch.cat([low.unsqueeze(2), highs.to(low.dtype)], dim=2).view(b, 4 * c, h, w)
    return F.conv_transpose2d(coeffs, _filters(c, coeffs), stride=2, groups=c)


class HaarWavelet(nn.Module):
    """DWT/IDWT pair with a selectable backend ("conv" or "pytorch_wavelets"); no parameters."""

    def __init__(self, backend: str = "conv") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown wavelet backend '{backend}'; known: {', '.join(BACKENDS)}")
        self.backend = backend
        if backend == "pytorch_wavelets":
            # Imported lazily: the library pulls in pkg_resources and warns on import.
            from pytorch_wavelets import DWTForward, DWTInverse

            self._forward = DWTForward(J=1, wave="haar", mode="zero")
            self._inverse = DWTInverse(wave="haar", mode="zero")
            for module in (self._forward, self._inverse):  # filters are constants, not state:
                module._non_persistent_buffers_set.update(module._buffers)  # same checkpoints

    def dwt(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> LL (B, C, H/2, W/2), highs (B, C, 3, H/2, W/2)."""
        if self.backend == "conv":
            return haar_dwt(x)
        _check_even(x)
        low, highs = self._forward(x)
        return low, highs[0]

    def idwt(self, low: Tensor, highs: Tensor) -> Tensor:
        """LL, highs -> (B, C, 2h, 2w); the exact inverse of `dwt`."""
        if self.backend == "conv":
            return haar_idwt(low, highs)
        return self._inverse((low, [highs.to(low.dtype)]))
