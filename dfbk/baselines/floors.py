"""mean and linear: floors fitted on the training split's statistics, no network.

A trained method is worth reporting only where it beats what the training data give for free.
Identity (the source as prediction) is a weak floor: a source and a target modality differ in
contrast, so even a constant inside the head scores higher. These two floors are the cheapest
predictions that use the training split:

- `mean`: the training split's mean target intensity at each voxel position of the slice grid,
  over the training slices where that position is foreground (the store's mask); a position
  never foreground in training takes the mean over all foreground voxels. Predicted inside the
  source's foreground (source > 0), zero outside.
- `linear`: target ≈ a + b·source, fitted by least squares over every foreground voxel of the
  training split (one pair a, b per direction), applied voxel by voxel inside the source's
  foreground, clipped to [0, 1], zero outside.

"Inside the source's foreground" is the skull-stripped rule (BraTS, ISLES: the brain is where
the source is non-zero). A whole-head source (SynthRAD's MR) uses the same rule, so a few
background voxels with noise above zero get a prediction; the foreground scores are computed
inside the reference's mask, so they do not see those voxels either way.

Fitting is one pass over every training slice, whole slices in store order, with no flips:
the trainer calls `fit_split` before step 0 (`Method.FITS_SPLIT`), so the statistics are exactly
those of the training split, not of whichever random batches a step budget happened to draw.
Sums are accumulated in float64. The state (the mean image; the coefficients) is a buffer of the
module, saved in the checkpoint, so `dfbk predict` and `dfbk translate` reproduce it.

The mean image lives on the training slice grid. A slice of another size (a whole-slice pass
over a larger canvas) gets the mean image centre-cropped or zero-padded to its size, as
prepare centres slices on the grid; translated in training-size tiles, each tile of a larger
slice gets the whole mean image (the floor is positional, not convolutional).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from dfbk.errors import DataError
from dfbk.methods.base import Batch, Knowledge, Method
from dfbk.methods.registry import register_method

_PRESETS = {  # no optimisation steps: fitting is the trainer's one pass (`fit_split`)
    "tiny": {"steps": 0, "batch_size": 64, "ema_decay": None, "augment": "none"},
    "paper": {"steps": 0, "batch_size": 256, "ema_decay": None, "augment": "none"},
}


def source_foreground(source: Tensor) -> Tensor:
    """Where a floor predicts: the source's non-zero voxels (the skull-stripped brain)."""
    return source > 0


def centred(image: Tensor, shape: tuple[int, int]) -> Tensor:
    """`image` (H, W) centre-cropped and/or zero-padded to `shape`, as prepare centres slices."""
    out = image.new_zeros(shape)
    src, dst = [], []
    for have, want in zip(image.shape, shape, strict=True):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = image[tuple(src)]
    return out


class _Floor(Method):
    """Shared by the floors: no parameters, fitted by `fit_split`, never by a step."""

    PRESETS = _PRESETS
    FITS_SPLIT = True

    def training_step(self, batch: Batch, step: int) -> dict[str, float]:
        return {}


@register_method("mean")
class MeanFloor(_Floor):
    """The training split's mean target image (per foreground position), inside the source."""

    def __init__(self, hparams: dict[str, Any]) -> None:
        super().__init__(hparams)
        # (H, W) mean target over training slices where the position is foreground; its shape
        # is the store's slice size, known only when fitted or loaded (`_load_from_state_dict`)
        self.register_buffer("mean_image", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("overall_mean", torch.zeros((), dtype=torch.float64))

    def fit_split(self, batches: Iterable[Batch]) -> None:
        total = count = None
        all_sum = torch.zeros((), dtype=torch.float64)
        for batch in batches:
            fg = (batch.mask[:, 0] > 0).to(torch.float64)
            target = batch.target[:, 0].to(torch.float64) * fg
            if total is None:
                total = torch.zeros(fg.shape[1:], dtype=torch.float64, device=fg.device)
                count = torch.zeros_like(total)
                all_sum = all_sum.to(fg.device)
            total += target.sum(0)
            count += fg.sum(0)
            all_sum += target.sum()
        if total is None or count.sum() == 0:
            raise DataError("mean floor: the training split has no foreground voxel")
        overall = all_sum / count.sum()
        mean = torch.where(count > 0, total / count.clamp(min=1), overall)
        self.mean_image = mean.to(self.overall_mean.device)
        self.overall_mean = overall.to(self.overall_mean.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        image = state_dict.get(prefix + "mean_image")
        if image is not None:  # take the stored slice grid's shape before copying into it
            self.mean_image = torch.zeros_like(image, device=self.mean_image.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def translate(
        self, source: Tensor, knowledge: Knowledge | None = None, seeds: Tensor | None = None
    ) -> Tensor:
        image = centred(self.mean_image, tuple(source.shape[-2:])).to(source)
        return torch.where(source_foreground(source), image, 0.0).clamp(0.0, 1.0)

    def describe(self) -> dict[str, Any]:
        return {
            "floor": "mean target image over the training split's foreground, inside source > 0",
            "overall_mean": float(self.overall_mean),
            "grid": list(self.mean_image.shape),
        }


@register_method("linear")
class LinearFloor(_Floor):
    """target ≈ a + b·source, least squares over the training split's foreground voxels."""

    def __init__(self, hparams: dict[str, Any]) -> None:
        super().__init__(hparams)
        self.register_buffer("coefficients", torch.zeros(2, dtype=torch.float64))  # (a, b)

    def fit_split(self, batches: Iterable[Batch]) -> None:
        """Closed-form least squares from streamed moments.

        Each batch's count, means and centred second moments are merged into the running ones
        (Chan, Golub and LeVeque's pairwise update), so no raw sum of squares of ~10^9 voxels
        is ever formed and cancellation stays at float64 rounding of centred quantities.
        Written here because the fit streams over batches; numpy/torch have no streaming
        covariance.
        """
        n = mx = my = sxx = sxy = 0.0
        for batch in batches:
            fg = batch.mask > 0
            x = batch.source[fg].to(torch.float64)
            y = batch.target[fg].to(torch.float64)
            m = x.numel()
            if m == 0:
                continue
            bx, by = float(x.mean()), float(y.mean())
            dx, dy = x - bx, y - by
            bxx, bxy = float((dx * dx).sum()), float((dx * dy).sum())
            total = n + m
            delta_x, delta_y = bx - mx, by - my
            sxx += bxx + delta_x * delta_x * n * m / total
            sxy += bxy + delta_x * delta_y * n * m / total
            mx += delta_x * m / total
            my += delta_y * m / total
            n = total
        if n == 0:
            raise DataError("linear floor: the training split has no foreground voxel")
        slope = sxy / sxx if sxx > 0 else 0.0  # a constant source: predict the mean target
        self.coefficients = torch.tensor(
            [my - slope * mx, slope], dtype=torch.float64, device=self.coefficients.device
        )

    def translate(
        self, source: Tensor, knowledge: Knowledge | None = None, seeds: Tensor | None = None
    ) -> Tensor:
        a, b = (float(c) for c in self.coefficients)
        mapped = (a + b * source.to(torch.float64)).clamp(0.0, 1.0).to(source.dtype)
        return torch.where(source_foreground(source), mapped, 0.0)

    def describe(self) -> dict[str, Any]:
        a, b = (float(c) for c in self.coefficients)
        return {"floor": "target = a + b * source inside source > 0, clipped", "a": a, "b": b}
