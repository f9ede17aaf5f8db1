"""Sliding-window translation of whole slices with tiles of the training size.

A model trained on h x w slices (or patches) is run over overlapping h x w tiles of a larger
slice and the tiles are blended with a Gaussian importance map, as nnU-Net's
`predict_sliding_window_return_logits` does: tile starts evenly spaced with at most half a tile
between them (step 0.5), weights exp(-d^2 / 2 sigma^2) with sigma = 1/8 of the tile side, so a
voxel's value comes mostly from the tiles that see it near their centre and there is no seam
where one tile ends. MONAI's `sliding_window_inference` does the same but MONAI is not a
dependency of this project, so the few lines are written here.

A slice smaller than a tile is zero-padded (prepare's background) to the tile. Diffusion
samplers get per-slice noise drawn over the whole padded slice and cropped per tile
(dfbk/diffusion/noise.py), so overlapping tiles of a slice see the same noise and a tile's
prediction does not depend on the batch it lands in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dfbk.diffusion.noise import SliceNoise


class NonFiniteOutput(ValueError):
    """The model predicted NaN or infinite values (callers name the checkpoint)."""

    def __init__(self, bad: int, total: int) -> None:
        super().__init__(f"{bad} of {total} predicted values are NaN or infinite")
        self.bad, self.total = bad, total


STEP = 0.5  # tile stride as a fraction of the tile (nnU-Net's default)
SIGMA_SCALE = 1.0 / 8.0  # Gaussian sigma as a fraction of the tile side (nnU-Net's default)


def trained_tile(hparams: dict, slice_size) -> tuple[int, int]:
    """The in-plane size a model was trained on: its `patch_size`, else the whole slice; the
    tile that validation and test translation (tiling `patch`) slide over a slice."""
    patch = hparams.get("patch_size")
    if patch:
        return int(patch), int(patch)
    return tuple(int(n) for n in slice_size)


def tile_starts(length: int, tile: int, step: float = STEP) -> list[int]:
    """Evenly spaced starts covering [0, length) with tiles of `tile`, stride <= step * tile."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / (tile * step)) + 1
    span = length - tile
    return [round(i * span / (count - 1)) for i in range(count)]


def gaussian_weights(tile: tuple[int, int], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """(h, w) float64 Gaussian importance map, 1 at the centre, exp(-8) per axis at the edges."""
    axes = []
    for n in tile:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-3)
        axes.append(np.exp(-(x**2) / (2.0 * sigma**2)))
    return np.outer(axes[0], axes[1])


@dataclass(frozen=True)
class Tiling:
    """Where the tiles of one slice shape go: padding to the canvas, then tile corners."""

    shape: tuple[int, int]  # the slice
    tile: tuple[int, int]
    pad: tuple[int, int]  # rows/columns of zero padding before the slice in the canvas
    canvas: tuple[int, int]
    corners: tuple[tuple[int, int], ...]  # (row, column) of each tile in the canvas

    @staticmethod
    def plan(shape: tuple[int, int], tile: tuple[int, int], step: float = STEP) -> Tiling:
        canvas = tuple(max(s, t) for s, t in zip(shape, tile, strict=True))
        pad = tuple((c - s) // 2 for c, s in zip(canvas, shape, strict=True))
        rows, cols = (tile_starts(c, t, step) for c, t in zip(canvas, tile, strict=True))
        corners = tuple((r, c) for r in rows for c in cols)
        return Tiling(tuple(shape), tuple(tile), pad, canvas, corners)

    def to_canvas(self, slices: np.ndarray) -> np.ndarray:
        """(N, H, W) -> (N, *canvas), zero-padded."""
        (top, left), (h, w) = self.pad, self.shape
        out = np.zeros((len(slices), *self.canvas), dtype=slices.dtype)
        out[:, top : top + h, left : left + w] = slices
        return out

    def from_canvas(self, canvas: np.ndarray) -> np.ndarray:
        (top, left), (h, w) = self.pad, self.shape
        return canvas[:, top : top + h, left : left + w]


def translate_tiled(
    method,
    slices: np.ndarray,
    seeds: torch.Tensor,
    tile: tuple[int, int],
    batch_size: int,
    knowledge=None,
    foreground: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Translate (N, H, W) slices in [0, 1] with h x w tiles; returns (predictions, tiles run).

    Raises NonFiniteOutput at the first batch with a NaN or infinite prediction.
    seeds: (N,) int64 per-slice noise seeds. foreground: (N, H, W) bool; tiles without a
    foreground voxel are skipped and voxels no computed tile covers stay 0 (background).
    Tiles are batched in a fixed order (slice, row, column) and accumulated in that order, so
    the result does not depend on `batch_size` beyond float32 rounding inside the network.
    """
    slices = np.asarray(slices, dtype=np.float32)
    plan = Tiling.plan(slices.shape[1:], tuple(tile))
    canvas = plan.to_canvas(slices)
    keep = None if foreground is None else plan.to_canvas(np.asarray(foreground, dtype=bool))
    h, w = plan.tile
    jobs = [
        (n, r, c)
        for n in range(len(canvas))
        for r, c in plan.corners
        if keep is None or keep[n, r : r + h, c : c + w].any()
    ]
    weights = gaussian_weights(plan.tile)
    last_tile = {n: index for index, (n, _, _) in enumerate(jobs)}
    sums: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # slice -> (weighted sum, weight)
    out = np.zeros(slices.shape, dtype=np.float32)
    seeds = torch.as_tensor(seeds, dtype=torch.int64)
    sampler = bool(getattr(method, "SAMPLES_NOISE", False))
    step = max(1, batch_size)
    for begin in range(0, len(jobs), step):
        chunk = jobs[begin : begin + step]
        pred = _run_tiles(method, canvas, chunk, plan, seeds, knowledge, sampler)
        for index, ((n, r, c), values) in enumerate(zip(chunk, pred, strict=True), begin):
            total, weight = sums.setdefault(n, (np.zeros(plan.canvas), np.zeros(plan.canvas)))
            total[r : r + h, c : c + w] += values * weights
            weight[r : r + h, c : c + w] += weights
            if index == last_tile[n]:  # the slice is complete: normalise and crop
                blended = np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)
                out[n] = plan.from_canvas(blended[None])[0]
                del sums[n]
        if progress is not None:
            progress(len(chunk))
    return out, len(jobs)


def _run_tiles(method, canvas, chunk, plan: Tiling, seeds, knowledge, sampler: bool) -> np.ndarray:
    """One batch of tiles through the method: (B, h, w) float64 predictions."""
    h, w = plan.tile
    tiles = np.stack([canvas[n, r : r + h, c : c + w] for n, r, c in chunk])
    source = torch.from_numpy(tiles).unsqueeze(1).to(method.device)
    tile_seeds = seeds[[n for n, _, _ in chunk]]
    extra = {}
    if sampler:  # per-slice noise over the whole canvas, cropped at each tile
        offsets = torch.tensor([(r, c) for _, r, c in chunk], dtype=torch.int64)
        extra["noise"] = SliceNoise(tile_seeds, (1, h, w), method.device, offsets, plan.canvas)
    pred = method.translate(source, knowledge, tile_seeds.to(method.device), **extra)
    pred = pred.squeeze(1).double().cpu().numpy()
    if not np.isfinite(pred).all():  # stop at the first bad batch, not after the whole volume
        bad = int(pred.size - np.count_nonzero(np.isfinite(pred)))
        raise NonFiniteOutput(bad, int(pred.size))
    return pred
