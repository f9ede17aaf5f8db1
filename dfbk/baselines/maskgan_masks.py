"""Coarse anatomical masks for MaskGAN (Phan et al., MICCAI 2023), by image processing alone.

MaskGAN needs no expert labels: its coarse masks come from standard (unsupervised) image
processing (the authors' README and `preprocess/main.py`): an intensity threshold, morphology to
remove noise and close holes, and the largest connected component. Here, per 2-D slice:

    threshold -> binary closing -> hole filling -> largest connected component -> dilation

Slices are in the slice store's [0, 1] range. One threshold serves both modalities: MR is
scaled by its foreground p99.5 (background ~0), CT maps [-1024, 3000] HU to [0, 1], so a
threshold of 0.1 is -622 HU on CT (above air at ~0.006, below fat at ~0.23) and 10% of the
p99.5 intensity on MR. The dilation adds a margin of `dilation` pixels so that partial-volume
rim pixels below the threshold still count as anatomy (the released script dilates only to
blank the image outside the anatomy; its mask itself is not dilated).

Computed with scipy.ndimage on CPU, per batch, on the fly (MaskGAN precomputes them once with
its preprocessing script); at 64x64 this costs under 1 ms per slice.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

# 4-connected cross: morphology and components without diagonal leaks.
_CROSS = ndimage.generate_binary_structure(2, 1)


def largest_component(binary: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a 2-D boolean image (all False stays all False)."""
    labels, count = ndimage.label(binary, structure=_CROSS)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def extract_mask(
    image: np.ndarray, threshold: float = 0.1, closing: int = 2, dilation: int = 1
) -> np.ndarray:
    """Coarse foreground mask of one slice.

    image: (H, W) float in [0, 1]. Returns (H, W) bool: one 4-connected component, no holes.
    `closing` and `dilation` are iteration counts of the 4-connected cross (pixels of radius).
    The closing is done on a padded copy so structures touching the border are not eroded.
    """
    if image.ndim != 2:
        raise ValueError(f"extract_mask expects a 2-D slice, got shape {image.shape}")
    binary = image > threshold
    if closing > 0:
        padded = np.pad(binary, closing)
        closed = ndimage.binary_closing(padded, _CROSS, iterations=closing)
        binary = closed[closing:-closing, closing:-closing]
    binary = largest_component(ndimage.binary_fill_holes(binary))
    if dilation > 0 and binary.any():
        binary = ndimage.binary_dilation(binary, _CROSS, iterations=dilation)
        binary = ndimage.binary_fill_holes(binary)  # dilation can close a bay into a hole
    return binary


def batch_masks(
    images: Tensor, threshold: float = 0.1, closing: int = 2, dilation: int = 1
) -> Tensor:
    """Masks of a batch (B, 1, H, W) in [0, 1] -> float {0, 1} on the images' device."""
    array = images.detach().float().cpu().numpy()
    masks = np.stack(
        [extract_mask(sl[0], threshold, closing, dilation)[None] for sl in array]
    ).astype(np.float32)
    return torch.from_numpy(masks).to(images.device)
