"""Per-slice noise for diffusion samplers, so a slice's prediction ignores how it was batched.

Each slice owns a noise stream: a CPU `torch.Generator` seeded with the slice's seed, from which
the sampler takes its draws in a fixed order (x_T, then one draw per reverse step). The k-th
draw of a slice therefore depends only on its seed and k — not on the batch size, its position
in the batch, or the device (noise is drawn on the CPU and then moved). Seeds come from
(run seed, subject, axial slice index) through `slice_seeds`, hashed with BLAKE2b so they are
stable across processes and Python versions (unlike `hash()`).

Tiled (sliding-window) inference: every spatial draw covers the whole (padded) slice, the
`canvas`, and each tile takes its crop at its `offset`, so overlapping tiles of one slice see
the same noise where they overlap. Tiles of one slice in a batch share one stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

SEED_BITS = 63  # torch.Generator accepts any non-negative int64


def stable_seed(*parts: object) -> int:
    """A non-negative 63-bit integer from `parts` (BLAKE2b of their `repr`), stable everywhere."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)


def slice_seeds(run_seed: int, subject: str, slice_indices: Iterable[int]) -> Tensor:
    """(N,) int64 noise seeds of a subject's slices: one per (run seed, subject, slice index)."""
    values = [stable_seed("dfbk-noise", int(run_seed), str(subject), int(i)) for i in slice_indices]
    return torch.tensor(values, dtype=torch.int64)


def batch_seeds(base_seed: int, count: int) -> Tensor:
    """Seeds for a caller that gave none: (base seed, position in the batch).

    Reproducible for the same call, but a slice's noise then depends on its position; callers
    that need batch-size independence pass seeds from `slice_seeds`.
    """
    return torch.tensor([stable_seed("dfbk-batch", int(base_seed), i) for i in range(count)])


class SliceNoise:
    """Noise streams for a batch of slices (or tiles of slices).

    seeds: (B,) int64, one per item; items with the same seed share a stream (tiles of a slice).
    shape: (C, h, w) of one item. offsets: (B, 2) top-left corner (row, column) of each item in
    its slice's canvas; canvas: (H, W) of the whole padded slice (default: the item itself).
    """

    def __init__(
        self,
        seeds: Tensor,
        shape: Sequence[int],
        device: torch.device | str = "cpu",
        offsets: Tensor | None = None,
        canvas: Sequence[int] | None = None,
    ) -> None:
        seeds = torch.as_tensor(seeds, dtype=torch.int64).flatten().cpu()
        self.channels, self.height, self.width = (int(n) for n in shape)
        self.canvas = tuple(int(n) for n in (canvas or (self.height, self.width)))
        if offsets is None:
            offsets = torch.zeros(len(seeds), 2, dtype=torch.int64)
        self.offsets = torch.as_tensor(offsets, dtype=torch.int64).cpu()
        if self.offsets.shape != (len(seeds), 2):
            raise ValueError(f"offsets must be ({len(seeds)}, 2), got {tuple(self.offsets.shape)}")
        low = self.offsets.min(dim=0).values if len(seeds) else torch.zeros(2)
        high = self.offsets.max(dim=0).values if len(seeds) else torch.zeros(2)
        if (
            (low < 0).any()
            or high[0] + self.height > self.canvas[0]
            or (high[1] + self.width > self.canvas[1])
        ):
            raise ValueError(f"a {self.height}x{self.width} tile leaves the canvas {self.canvas}")
        self.device = torch.device(device)
        unique, self.stream = torch.unique(seeds, return_inverse=True)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in unique.tolist()]

    def __len__(self) -> int:
        return len(self.stream)

    def spatial(self) -> Tensor:
        """The next (B, C, h, w) standard-normal draw: per stream one canvas, cropped per item."""
        shape = (self.channels, *self.canvas)
        canvases = [torch.randn(shape, generator=g) for g in self.generators]
        out = torch.empty(len(self), self.channels, self.height, self.width)
        for item, (stream, (row, col)) in enumerate(
            zip(self.stream.tolist(), self.offsets.tolist(), strict=True)
        ):
            out[item] = canvases[stream][:, row : row + self.height, col : col + self.width]
        return out.to(self.device)

    def vector(self, size: int) -> Tensor:
        """The next (B, size) standard-normal draw, one per stream (a latent z per slice)."""
        draws = torch.stack([torch.randn(size, generator=g) for g in self.generators])
        return draws[self.stream].to(self.device)


def noise_for(
    seeds: Tensor | None, fallback_seed: int, like: Tensor, noise: SliceNoise | None
) -> SliceNoise:
    """The sampler's noise: `noise` if given, else streams from `seeds` (or `batch_seeds`)."""
    if noise is not None:
        if len(noise) != like.shape[0]:
            raise ValueError(f"noise has {len(noise)} streams for a batch of {like.shape[0]}")
        return noise
    if seeds is None:
        seeds = batch_seeds(fallback_seed, like.shape[0])
    if len(seeds) != like.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for a batch of {like.shape[0]}")
    return SliceNoise(seeds, like.shape[1:], like.device)
