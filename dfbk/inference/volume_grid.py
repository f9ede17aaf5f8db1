"""Geometry of whole-volume translation: stored orientation to RAS+ and back, and the grid the
model runs on (the axial planes with foreground, at the training spacing when it differs).

Split from `dfbk.inference.volume`, which normalises, runs the checkpoints and writes the
result; nothing here imports torch at module level (resampling imports it when called).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from dfbk.data.io import load_image
from dfbk.errors import DataError

RAS = axcodes2ornt("RAS")


def check_affine(path: Path, affine: np.ndarray | None) -> None:
    """Refuse a voxel-to-world affine that maps no 3-D grid: not finite, or singular (a zero
    or collinear axis in the sform/qform), which has no orientation to slice along."""
    matrix = None if affine is None else np.asarray(affine, dtype=np.float64)[:3, :3]
    if matrix is not None and np.isfinite(matrix).all():
        lengths = np.linalg.norm(matrix, axis=0)
        # |det| over the product of the axis lengths is the sine-volume of the axes: 1 for
        # orthogonal ones, 0 for a degenerate grid; 1e-6 leaves any real scanner's shear alone.
        if lengths.all() and abs(np.linalg.det(matrix)) > 1e-6 * lengths.prod():
            return
    raise DataError(
        f"{path}: its voxel-to-world affine (sform/qform) is singular or not finite, so the "
        "volume has no orientation; fix the header"
    )


def read_3d(path: Path, role: str = "volume") -> tuple[nib.Nifti1Image, np.ndarray]:
    """Load an image as float32 3-D data in its stored orientation; refuse 4-D, NaN/Inf and
    an affine with no orientation."""
    image = load_image(Path(path))
    check_affine(path, image.affine)
    data = np.asarray(image.get_fdata(dtype=np.float32))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(
            f"{path}: {role} must be 3-D, got shape {data.shape} (split 4-D series first)"
        )
    if not np.isfinite(data).all():
        raise DataError(f"{path}: {int((~np.isfinite(data)).sum())} voxels are NaN or infinite")
    return image, data


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(data in closest-canonical RAS+, orientation transform that undoes it)."""
    stored = nib.io_orientation(affine)
    forward = ornt_transform(stored, RAS)
    return apply_orientation(data, forward), ornt_transform(RAS, stored)


def ras_affine(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The affine of the data after `to_ras` (to read its in-plane spacing)."""
    forward = ornt_transform(nib.io_orientation(affine), RAS)
    return affine @ inv_ornt_aff(forward, shape)


def planned_spacing(
    input_mm: tuple[float, float], trained_mm: list[float] | None
) -> tuple[float, float] | None:
    """The in-plane spacing to resample to, or None when the input's already fits (<= 1%)."""
    if not trained_mm:
        return None
    target = (float(trained_mm[0]), float(trained_mm[1]))
    if all(abs(i - t) <= 0.01 * t for i, t in zip(input_mm, target, strict=True)):
        return None
    return target


def resample_planes(slices: np.ndarray, shape: tuple[int, int], mode: str) -> np.ndarray:
    """(Z, X, Y) -> (Z, *shape): each axial plane resampled (`bilinear` antialiased, or
    `nearest-exact` for masks), voxel areas aligned (align_corners False)."""
    import torch
    import torch.nn.functional as F

    if tuple(slices.shape[1:]) == tuple(shape):
        return slices
    planes = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32)).unsqueeze(1)
    if mode == "bilinear":
        out = F.interpolate(
            planes, size=shape, mode="bilinear", align_corners=False, antialias=True
        )
    else:
        out = F.interpolate(planes, size=shape, mode=mode)
    return out.squeeze(1).numpy()


@dataclass
class TrainingGrid:
    """The axial planes with foreground, on the training spacing when it differs from the input's.

    planes: (Z, X, Y) all RAS axial planes of the input; keep: indices of those with foreground;
    work/work_fg: the kept planes (and their foreground) on the grid the model runs on.
    """

    planes: np.ndarray
    keep: np.ndarray
    work: np.ndarray
    work_fg: np.ndarray
    input_mm: tuple[float, float]
    resampled: bool

    @staticmethod
    def plan(
        unit_ras: np.ndarray,
        fg_ras: np.ndarray,
        input_mm: tuple[float, float],
        trained_mm: list[float] | None,
    ) -> TrainingGrid:
        planes, fg_planes = np.moveaxis(unit_ras, 2, 0), np.moveaxis(fg_ras, 2, 0)
        keep = np.flatnonzero(fg_planes.any(axis=(1, 2)))
        target = planned_spacing(input_mm, trained_mm)
        shape = planes.shape[1:]
        if target is not None:  # same extent, the training spacing
            pairs = zip(shape, input_mm, target, strict=True)
            shape = tuple(max(1, round(n * i / t)) for n, i, t in pairs)
        work = resample_planes(planes[keep], shape, "bilinear")
        work_fg = resample_planes(fg_planes[keep].astype(np.float32), shape, "nearest-exact") > 0.5
        work_fg |= ~work_fg.any(axis=(1, 2), keepdims=True)  # a sliver lost by resampling
        return TrainingGrid(planes, keep, work, work_fg, input_mm, target is not None)

    def back_to_input(self, pred: np.ndarray) -> np.ndarray:
        """(len(keep), *work grid) predictions -> (Z, X, Y) on the input grid, 0 elsewhere."""
        out = np.zeros(self.planes.shape, dtype=np.float32)
        out[self.keep] = resample_planes(pred, self.planes.shape[1:], "bilinear")
        return out

    def describe(self) -> dict[str, Any]:
        fov, grid = self.planes.shape[1:], self.work.shape[1:]
        used = [i * n / g for i, n, g in zip(self.input_mm, fov, grid, strict=True)]
        return {
            "slices": int(self.planes.shape[0]),
            "translated": len(self.keep),
            "field_of_view": [int(n) for n in fov],
            "field_of_view_mm": [round(i * n, 1) for i, n in zip(self.input_mm, fov, strict=True)],
            "input_spacing_mm": [round(v, 3) for v in self.input_mm],
            "spacing_mm": [round(v, 3) for v in used],
            "resampled": self.resampled,
            "grid": [int(n) for n in grid],
        }
