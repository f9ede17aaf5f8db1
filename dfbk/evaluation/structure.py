"""Structure metrics: HFEN and GMSD, per axial slice and pooled over a region of a volume.

Both are computed on the store's [0, 1] intensities (data range 1) for every dataset, so they
compare across datasets and protocols; 3-D inputs (S, H, W) are S axial slices.

- HFEN, high-frequency error norm (Ravishankar & Bresler, IEEE TMI 2011):
  ||LoG * (pred - ref)||_2 / ||LoG * ref||_2 with the authors' Laplacian-of-Gaussian kernel,
  MATLAB's `fspecial('log', [15 15], 1.5)` (15x15 taps, sigma 1.5, made to sum to zero),
  applied as `imfilter` does (correlation, zero padding, same size). Over a region the norms
  are taken over the region's pixels. 0 for a perfect prediction; lower is better.
- GMSD, gradient magnitude similarity deviation (Xue, Zhang, Mou & Bovik, IEEE TIP 2014):
  both images are averaged over 2x2 blocks and downsampled by 2 (the paper's first step, as in
  the authors' code: `conv2(Y, ones(2)/4, 'same')` then every second row and column), Prewitt
  gradients [1 0 -1; 1 0 -1; 1 0 -1]/3 and its transpose (`conv2(..., 'same')`, zero padding)
  give magnitudes m_r, m_d; GMS = (2 m_r m_d + c) / (m_r^2 + m_d^2 + c) with c = 170 / 255^2
  (the paper's T = 170 for 8-bit images, i.e. 0.0026 for [0, 1]); GMSD is the standard
  deviation of GMS over the pixels (the paper's equation: 1/N, not the N - 1 of MATLAB's
  `std2`; the two differ by sqrt(N / (N - 1))). A region is downsampled like the image and a
  half-resolution pixel belongs to it when at least half of its 2x2 block does. 0 for a
  perfect prediction; lower is better.
An empty region (or a reference without high frequencies in it, for HFEN) gives NaN.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import correlate
from scipy.signal import fftconvolve

HFEN_SIGMA = 1.5
HFEN_SIZE = 15
GMSD_C = 170.0 / 255.0**2  # 0.0026143...: the paper's T = 170 on [0, 255], for [0, 1]
PREWITT_X = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0

PROTOCOL = {
    "hfen": (
        f"HFEN (Ravishankar & Bresler 2011): relative L2 norm of the LoG-filtered error, "
        f"LoG {HFEN_SIZE}x{HFEN_SIZE} sigma {HFEN_SIGMA} (fspecial('log')), zero padding, "
        "per axial slice, norms over the region's pixels; on [0, 1] store intensities"
    ),
    "gmsd": (
        "GMSD (Xue et al. 2014): 2x2 average and downsampling by 2, Prewitt gradients, "
        "c = 170/255^2 = 0.0026, population standard deviation of GMS over the region's "
        "half-resolution pixels; on [0, 1] store intensities"
    ),
}


def log_kernel(size: int = HFEN_SIZE, sigma: float = HFEN_SIGMA) -> np.ndarray:
    """MATLAB's fspecial('log', [size size], sigma): a zero-sum Laplacian-of-Gaussian kernel."""
    radius = (size - 1) / 2
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    r2 = x**2 + y**2
    gauss = np.exp(-r2 / (2 * sigma**2))
    gauss[gauss < np.finfo(float).eps * gauss.max()] = 0
    gauss /= gauss.sum()
    kernel = gauss * (r2 - 2 * sigma**2) / sigma**4
    return kernel - kernel.sum() / kernel.size


def _slices(volume: np.ndarray) -> np.ndarray:
    """A 2-D image as one slice, a 3-D (S, H, W) stack as is; float64."""
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D image or a 3-D (S, H, W) stack, got {volume.shape}")
    return volume[None] if volume.ndim == 2 else volume


def _pair(pred, ref, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, ref = _slices(pred), _slices(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
    region = np.ones(ref.shape, bool) if mask is None else _slices(mask).astype(bool)
    if region.shape != ref.shape:
        raise ValueError(f"mask shape {region.shape} differs from image shape {ref.shape}")
    return pred, ref, region


def log_filter(volume: np.ndarray) -> np.ndarray:
    """Each slice correlated with the HFEN LoG kernel (zero padding, same size), (S, H, W).

    Done as an FFT convolution over the in-plane axes (4x faster than direct 15x15 sums on a
    256^2 stack): the kernel is symmetric, so convolution equals imfilter's correlation, and
    'same' mode with zero padding is imfilter's default boundary.
    """
    return fftconvolve(_slices(volume), log_kernel()[None], mode="same", axes=(1, 2))


def hfen_sums(
    pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: sum over the region of (LoG error)^2 and of (LoG ref)^2, each (S,)."""
    pred, ref, region = _pair(pred, ref, mask)
    err, base = log_filter(pred - ref), log_filter(ref)
    return (err**2 * region).sum(axis=(1, 2)), (base**2 * region).sum(axis=(1, 2))


def _ratio(num: float, den: float) -> float:
    return math.sqrt(num / den) if den > 0 else math.nan


def hfen(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """HFEN over the region (all pixels by default) of a 2-D image or a (S, H, W) stack."""
    num, den = hfen_sums(pred, ref, mask)
    return _ratio(float(num.sum()), float(den.sum()))


def _average_downsample(image: np.ndarray) -> np.ndarray:
    """conv2(image, ones(2)/4, 'same') then every second row/column (MATLAB, 1-based 1:2:end).

    MATLAB's 'same' for a 2x2 kernel averages pixel (i, j) with (i+1, j), (i, j+1), (i+1, j+1),
    zero beyond the last row/column.
    """
    padded = np.pad(image, ((0, 1), (0, 1)))
    mean = (padded[:-1, :-1] + padded[1:, :-1] + padded[:-1, 1:] + padded[1:, 1:]) / 4.0
    return mean[::2, ::2]


def _gradient_magnitude(image: np.ndarray) -> np.ndarray:
    # conv2 flips the kernel; only the sign of each derivative changes, not the magnitude
    gx = correlate(image, PREWITT_X, mode="constant", cval=0.0)
    gy = correlate(image, PREWITT_X.T, mode="constant", cval=0.0)
    return np.sqrt(gx**2 + gy**2)


def gms_maps(
    pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Half-resolution GMS maps (S, ceil(H/2), ceil(W/2)) and the downsampled region."""
    pred, ref, region = _pair(pred, ref, mask)
    maps, regions = [], []
    for p, r, m in zip(pred, ref, region, strict=True):
        m_r = _gradient_magnitude(_average_downsample(r))
        m_d = _gradient_magnitude(_average_downsample(p))
        maps.append((2 * m_r * m_d + GMSD_C) / (m_r**2 + m_d**2 + GMSD_C))
        regions.append(_average_downsample(m.astype(np.float64)) >= 0.5)
    return np.stack(maps), np.stack(regions)


def _std(values: np.ndarray) -> float:
    return float(values.std()) if values.size else math.nan


def gmsd(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """GMSD over the region (all pixels by default), pooled over all slices of a stack."""
    maps, region = gms_maps(pred, ref, mask)
    return _std(maps[region])


def structure_scores(
    pred: np.ndarray, ref: np.ndarray, regions: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """`hfen_{region}` and `gmsd_{region}`: per-slice arrays and whole-volume values.

    The filtering is done once per volume; each region only selects pixels.
    """
    pred, ref = _slices(pred), _slices(ref)
    err, base = log_filter(pred - ref), log_filter(ref)
    maps, _ = gms_maps(pred, ref)
    per_slice: dict[str, np.ndarray] = {}
    volume: dict[str, float] = {}
    for name, region in regions.items():
        region = _slices(region).astype(bool)
        num = (err**2 * region).sum(axis=(1, 2))
        den = (base**2 * region).sum(axis=(1, 2))
        per_slice[f"hfen_{name}"] = np.array([_ratio(n, d) for n, d in zip(num, den, strict=True)])
        volume[f"hfen_{name}"] = _ratio(float(num.sum()), float(den.sum()))
        half = np.stack([_average_downsample(m.astype(np.float64)) >= 0.5 for m in region])
        per_slice[f"gmsd_{name}"] = np.array([_std(m[r]) for m, r in zip(maps, half, strict=True)])
        volume[f"gmsd_{name}"] = _std(maps[half])
    return per_slice, volume
