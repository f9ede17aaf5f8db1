"""Swin layer of the Swin-UNet: window attention, relative position bias (docs/method.md §2).

A layer is ResShift's `BasicLayer` with patch size 1: a 1×1 conv into the Swin width, `depth`
blocks alternating regular and shifted windows (shift = window/2), a 1×1 conv back. Blocks work
on channels-first maps with GroupNorm and a 1×1-conv MLP, as in ResShift (Liu et al. 2021 use
LayerNorm on tokens; ResShift swapped in GroupNorm32).

Why not timm's `SwinTransformerBlock`: it fixes `input_resolution` at construction (the window
is clipped and the shift mask built in `__init__`; `set_input_size` mutates the module), works
channels-last with LayerNorm, and its bias table serves one window size only. Here the window,
shift and mask follow the map size at run time, so one network serves 64×64 and 256×256 slices:
when a map side is ≤ the window, the window becomes the map and the shift is dropped (Swin's
rule), and its relative position bias is read from the sub-table of offsets that window spans
(tests/test_dfbk_networks.py checks the attention against timm's `WindowAttention`).
timm's small blocks (`Mlp`, `DropPath`, `trunc_normal_`) would fit, but importing timm pulls in
torchvision in every training and translation job (its cost: docs/training.md). So the 1×1-conv
MLP (timm's `Mlp(use_conv=True)`, same parameter names) is three lines here, `trunc_normal_`
comes from torch, and stochastic depth is left out (ResShift trains with drop_path 0).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfbk.networks.blocks import group_norm

SHIFT_MASK_VALUE = -100.0  # Swin's additive mask between regions that a cyclic shift made adjacent


@lru_cache(maxsize=32)
def relative_position_index(window: int, table_window: int) -> Tensor:
    """(n, n) indices into a (2*table_window-1)^2 bias table for a window of side `window`.

    A window smaller than the table's spans a subset of its offsets, so it reuses those entries.
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (table_window - 1)  # (2, n, n), >= 0
    return rel[0] * (2 * table_window - 1) + rel[1]


@lru_cache(maxsize=32)
def shift_mask(height: int, width: int, window: int, shift: int) -> Tensor:
    """(nW, n, n) additive mask for shifted windows: 0 within a region, -100 across regions."""
    regions = torch.zeros(height, width)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for label, (rows, cols) in enumerate((r, c) for r in bounds for c in bounds):
        regions[rows, cols] = label
    labels = window_partition(regions[None, None], window)[0, :, :, 0]  # (nW, n)
    differs = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differs.shape).masked_fill(differs, SHIFT_MASK_VALUE)


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, C, H, W) -> (B, nW, window*window, C) tokens of non-overlapping windows (H, W whole)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // window, window, w // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of `window_partition`: (B, nW, n, C) -> (B, C, H, W)."""
    b, _, _, c = windows.shape
    x = windows.view(b, height // window, width // window, window, window, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, height, width)


def window_geometry(height: int, width: int, window: int, shift: int) -> tuple[int, int]:
    """(window, shift) actually used on an H×W map: the whole map, unshifted, when it is small."""
    if min(height, width) <= window:
        return min(height, width), 0
    return window, shift


@lru_cache(maxsize=32)
def attention_mask(height: int, width: int, window: int, shift: int) -> Tensor | None:
    """(nW, n, n) additive mask on the map padded to whole windows, or None if none is needed.

    Shifted windows mask pairs from different regions (Swin); padding (a side that is not a
    multiple of the window, e.g. 12×12 maps of 48×48 slices) masks the padded keys.
    """
    padded_h, padded_w = -(-height // window) * window, -(-width // window) * window
    if not shift and (padded_h, padded_w) == (height, width):
        return None
    mask = shift_mask(padded_h, padded_w, window, shift) if shift else 0.0
    valid = torch.zeros(padded_h, padded_w)
    valid[:height, :width] = 1.0
    valid = torch.roll(valid, shifts=(-shift, -shift), dims=(0, 1))
    keys = window_partition(valid[None, None], window)[0, :, :, 0] > 0  # (nW, n)
    mask = torch.zeros(keys.shape[0], keys.shape[1], keys.shape[1]) + mask
    return mask.masked_fill(~keys[:, None, :], SHIFT_MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows plus a learned relative position bias per head."""

    def __init__(self, dim: int, num_heads: int, window: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.window = num_heads, window
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self, window: int) -> Tensor:
        """(heads, n, n) relative position bias for a window of side `window` <= self.window."""
        index = relative_position_index(window, self.window).to(self.bias_table.device)
        n = window * window
        return self.bias_table[index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, tokens: Tensor, window: int, mask: Tensor | None = None) -> Tensor:
        """tokens (B, nW, n, C), mask (nW, n, n) or None -> (B, nW, n, C)."""
        b, nw, n, c = tokens.shape
        heads, d = self.num_heads, c // self.num_heads
        qkv = self.qkv(tokens).view(b, nw, n, 3, heads, d).permute(3, 0, 1, 4, 2, 5)
        bias = self.position_bias(window).to(qkv.dtype)[None]  # (1, heads, n, n); autocast
        if mask is None:  # one bias for all windows: windows go to the batch axis
            q, k, v = (part.reshape(b * nw, heads, n, d) for part in qkv)
        else:  # per-window masks: windows go to the head axis, mask broadcast over B
            bias = (bias + mask.to(qkv)[:, None]).reshape(1, nw * heads, n, n)
            q, k, v = (part.reshape(b, nw * heads, n, d) for part in qkv)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.view(b, nw, heads, n, d).transpose(2, 3).reshape(b, nw, n, c)
        return self.proj(out)


class ConvMlp(nn.Module):
    """1×1 conv, GELU, 1×1 conv on channels-first maps (ResShift's Swin MLP)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = (
            nn.Conv2d(dim, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Norm -> (shifted) window attention -> residual; norm -> MLP -> residual (channels-first)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int = 8,
        shifted: bool = False,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.window, self.shift = window, (window // 2 if shifted else 0)
        self.norm1, self.norm2 = group_norm(dim), group_norm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W); sides that are not whole windows are padded and masked."""
        _, _, height, width = x.shape
        window, shift = window_geometry(height, width, self.window, self.shift)
        pad_h, pad_w = -height % window, -width % window
        h = F.pad(self.norm1(x), (0, pad_w, 0, pad_h))
        if shift:
            h = torch.roll(h, shifts=(-shift, -shift), dims=(2, 3))
        mask = attention_mask(height, width, window, shift)
        mask = None if mask is None else mask.to(x.device)
        tokens = self.attn(window_partition(h, window), window, mask)
        h = window_reverse(tokens, window, height + pad_h, width + pad_w)
        if shift:
            h = torch.roll(h, shifts=(shift, shift), dims=(2, 3))
        x = x + h[:, :, :height, :width]
        return x + self.mlp(self.norm2(x))


class SwinLayer(nn.Module):
    """ResShift's Swin layer: 1×1 conv in, blocks (regular, shifted, ...), 1×1 conv out.

    As in ResShift's `BasicLayer`, the layer has no outer residual: its blocks are residual
    and the 1×1 convs only change width.
    """

    def __init__(
        self,
        channels: int,
        embed_dim: int,
        num_heads: int,
        window: int = 8,
        depth: int = 2,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(channels, embed_dim, 1)
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dim, num_heads, window, shifted=i % 2 == 1, mlp_ratio=mlp_ratio)
            for i in range(depth)
        )
        self.proj_out = nn.Conv2d(embed_dim, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        h = self.proj_in(x)
        for block in self.blocks:
            h = block(h)
        return self.proj_out(h)
