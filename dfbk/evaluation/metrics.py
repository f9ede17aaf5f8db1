"""Image-similarity metrics on intensities in [0, 1], over the whole image or a region.

One protocol for every method, written next to the numbers (see `PROTOCOL`):
- PSNR = 10 log10(R^2 / MSE), R = data range (1), MSE over the region's pixels. Identical
  images give MSE 0 and an infinite PSNR, which would make a mean over subjects infinite, so
  PSNR is capped at `PSNR_CAP_DB` (100 dB, far above any real translation).
- SSIM (Wang et al. 2004): Gaussian window sigma 1.5 truncated at 3.5 sigma (11 taps),
  K1 0.01, K2 0.03, population covariance — computed by scikit-image's
  `structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)`. Like
  scikit-image's scalar SSIM, the `SSIM_BORDER` pixels along each image edge (the window
  radius) are left out of every mean, so `ssim(pred, ref)` equals scikit-image's number; a
  region mask is intersected with that interior. 3-D inputs (S, H, W) are S axial slices: the
  map is computed per slice (2-D windows) and averaged over the region pixels of all slices.
- MAE: mean absolute difference over the region's pixels.
An empty region gives NaN: "no lesion here" must not read as a perfect or a zero score.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

PSNR_CAP_DB = 100.0
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_TRUNCATE = 3.5  # scikit-image's value for gaussian_weights=True
SSIM_BORDER = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # window radius: 5 pixels

PROTOCOL = {
    "range": [0.0, 1.0],
    "ssim": "gaussian sigma 1.5, K1 0.01, K2 0.03, data range 1",
    "ssim_details": (
        "Wang et al. 2004 via skimage.metrics.structural_similarity (gaussian_weights, "
        f"truncate {SSIM_TRUNCATE}, population covariance); per axial slice; the "
        f"{SSIM_BORDER}-pixel border of each slice is excluded from every mean"
    ),
    "psnr": "data range 1, MSE over region",
    "psnr_cap_db": PSNR_CAP_DB,
    "mae": "mean absolute error over region, in [0, 1] units",
}


def _as_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 copies of two same-shaped 2-D or 3-D arrays (float32 sums lose digits)."""
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D image or a 3-D (S, H, W) stack, got shape {pred.shape}")
    return pred, ref


def _region(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean region of `shape`; None means every pixel."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {shape}")
    return mask


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """PSNR in dB from a mean squared error, capped at PSNR_CAP_DB; NaN stays NaN."""
    if np.isnan(mse):
        return float("nan")
    if mse <= 0:
        return PSNR_CAP_DB
    return float(min(10.0 * np.log10(data_range**2 / mse), PSNR_CAP_DB))


def psnr(
    pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0, mask: np.ndarray | None = None
) -> float:
    """Peak signal-to-noise ratio over the region (all pixels by default), capped at 100 dB."""
    pred, ref = _as_pair(pred, ref)
    region = _region(mask, pred.shape)
    if not region.any():
        return float("nan")
    return psnr_from_mse(float(np.mean((pred[region] - ref[region]) ** 2)), data_range)


def mae(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error over the region (all pixels by default); NaN for an empty region."""
    pred, ref = _as_pair(pred, ref)
    region = _region(mask, pred.shape)
    if not region.any():
        return float("nan")
    return float(np.mean(np.abs(pred[region] - ref[region])))


def ssim_map(pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Local SSIM at every pixel, same shape as the input; 3-D (S, H, W) is done per slice.

    Border pixels are filled by scikit-image with reflect padding; `ssim_interior` says
    which pixels the protocol averages.
    """
    pred, ref = _as_pair(pred, ref)
    if pred.ndim == 3:
        return np.stack([ssim_map(p, r, data_range) for p, r in zip(pred, ref, strict=True)])
    _, full = structural_similarity(
        pred,
        ref,
        data_range=data_range,
        gaussian_weights=True,
        sigma=SSIM_SIGMA,
        use_sample_covariance=False,
        K1=SSIM_K1,
        K2=SSIM_K2,
        full=True,
    )
    return full


def ssim_interior(shape: tuple[int, ...]) -> np.ndarray:
    """Pixels whose SSIM window lies inside the image (each slice's SSIM_BORDER strip off)."""
    inside = np.zeros(shape, dtype=bool)
    b = SSIM_BORDER
    inside[..., b : shape[-2] - b, b : shape[-1] - b] = True
    return inside


def ssim(
    pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0, mask: np.ndarray | None = None
) -> float:
    """Mean SSIM over the region's interior pixels (whole interior by default).

    Without a mask this is scikit-image's scalar `structural_similarity` with the protocol's
    settings; NaN when the region has no interior pixel.
    """
    pred, ref = _as_pair(pred, ref)
    region = _region(mask, pred.shape) & ssim_interior(pred.shape)
    if not region.any():
        return float("nan")
    return float(np.mean(ssim_map(pred, ref, data_range)[region]))
