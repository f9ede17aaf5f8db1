"""The challenges' own scoring, recomputed from their published definitions (not their code).

Both act on a subject's whole 3-D stack (S, H, W) as the slice store holds it (the prepared
grid: in-plane crop/pad, the contiguous foreground slice range), which is the volume the
benchmark predicts; the challenges score the original scanner grid, so background-dependent
steps (BraSyn's whole-volume percentiles, SynthRAD's border crop) see slightly different
volumes than on the challenge server.

`synthrad2023-official` (SynthRAD 2023 Task 1 evaluation, `image_metrics.py` of the
SynthRAD2023/metrics repository; CT in HU):
- MAE: mean |ref - pred| over the body-mask voxels, on HU as given (not clipped);
- PSNR: both clipped to [-1024, 3000], data range 4024, MSE over the mask voxels;
- SSIM: both clipped, voxels outside the mask set to -1024, shifted by +1024, then scikit-
  image's 3-D `structural_similarity` with its defaults (7-voxel uniform window, sample
  covariance, K1 0.01, K2 0.03), data range 4024; the SSIM map is cropped by 3 voxels on every
  side (scikit-image's own crop for its mean) and averaged over the cropped mask.

`brasyn-official` (BraTS 2023 synthesis challenge, BraSyn, evaluation code):
- prediction and reference are each normalised by their *own* 0.5th/99.5th percentiles over
  the whole volume (lower bound raised to 0 when negative), clipped and scaled to [0, 1];
- SSIM: torchmetrics' `StructuralSimilarityIndexMeasure` on the 3-D volume with its defaults
  (Gaussian kernel 11, sigma 1.5, K1 0.01, K2 0.03, reflection padding, data range taken from
  the inputs as max(ptp(pred), ptp(ref)), variances clamped at 0), full-size SSIM map:
  tumour SSIM = both volumes multiplied by the tumour mask, map averaged over tumour voxels;
  non-tumour SSIM = both multiplied by (1 - tumour mask), map averaged over all other voxels
  of the volume (the official definition, background included); brain SSIM (the issue's
  "inside the mask") = both zeroed outside the brain mask, map averaged over the brain.
- PSNR: data range 1 on the normalised volumes, MSE over the brain-mask voxels (as the
  BraTS 2023 inpainting evaluation the BraSyn code derives from).
A constant prediction (99.5th = 0.5th percentile, a division by zero in the official code)
is normalised to zeros here. PSNR is capped at 100 dB like every PSNR of the project
(identical volumes would give infinity). Everything is computed in float64 (the challenges'
code runs in float32; the difference is of the order of 1e-6). A stack too thin for the window
(fewer than 7 slices for SynthRAD's 7-voxel window, fewer than 6 for BraSyn's reflection padding
of 5) scores NaN SSIM.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import correlate1d
from skimage.metrics import structural_similarity

from dfbk.evaluation.metrics import psnr_from_mse

SYNTHRAD_RANGE_HU = (-1024.0, 3000.0)
SYNTHRAD_WINDOW = 7  # scikit-image's default win_size
SYNTHRAD_CROP = (SYNTHRAD_WINDOW - 1) // 2
TM_KERNEL = 11  # torchmetrics' defaults
TM_SIGMA = 1.5
TM_K1, TM_K2 = 0.01, 0.03
BRASYN_PERCENTILES = (0.5, 99.5)

SYNTHRAD_CAPTION = (
    "synthrad2023-official (SynthRAD 2023 image_metrics.py, recomputed): MAE in HU over the "
    "body mask (unclipped); PSNR on HU clipped to [-1024, 3000], data range 4024, over the mask; "
    "3-D SSIM (scikit-image defaults: 7-voxel uniform window, sample covariance) on clipped HU "
    "with outside-mask voxels at -1024, shifted to [0, 4024], 3-voxel border cropped, averaged "
    "over the mask; per subject volume."
)
BRASYN_CAPTION = (
    "brasyn-official (BraSyn 2023 evaluation, recomputed): prediction and reference each "
    "normalised by its own 0.5/99.5 percentiles (lower bound 0); 3-D Gaussian SSIM "
    "(torchmetrics defaults: kernel 11, sigma 1.5, reflection padding) averaged inside the "
    "brain mask (volumes zeroed outside it), inside the {lesion} and outside it; PSNR data "
    "range 1 over the brain mask; per subject volume."
)


# ---------------------------------------------------------------- SynthRAD 2023


def synthrad_official(
    pred_hu: np.ndarray, ref_hu: np.ndarray, mask: np.ndarray
) -> dict[str, float]:
    """`official_{mae_hu,psnr,ssim}_fg` of one subject; pred/ref in HU, (S, H, W)."""
    pred_hu = np.asarray(pred_hu, dtype=np.float64)
    ref_hu = np.asarray(ref_hu, dtype=np.float64)
    mask = np.asarray(mask) > 0
    lo, hi = SYNTHRAD_RANGE_HU
    if not mask.any():
        return {"official_mae_hu_fg": math.nan, "official_psnr_fg": math.nan,
                "official_ssim_fg": math.nan}  # fmt: skip
    mae_hu = float(np.abs(ref_hu[mask] - pred_hu[mask]).mean())
    pred_c, ref_c = np.clip(pred_hu, lo, hi), np.clip(ref_hu, lo, hi)
    mse = float(((ref_c[mask] - pred_c[mask]) ** 2).mean())
    return {
        "official_mae_hu_fg": mae_hu,
        "official_psnr_fg": psnr_from_mse(mse, hi - lo),
        "official_ssim_fg": synthrad_ssim(pred_c, ref_c, mask),
    }


def synthrad_ssim(pred_hu: np.ndarray, ref_hu: np.ndarray, mask: np.ndarray) -> float:
    """SynthRAD's masked 3-D SSIM of HU volumes (clipped here again; idempotent)."""
    lo, hi = SYNTHRAD_RANGE_HU
    if min(mask.shape) < SYNTHRAD_WINDOW:
        return math.nan
    ref = np.where(mask, np.clip(ref_hu, lo, hi), lo) - lo
    pred = np.where(mask, np.clip(pred_hu, lo, hi), lo) - lo
    _, ssim_map = structural_similarity(ref, pred, data_range=hi - lo, full=True)
    c = SYNTHRAD_CROP
    inner = (slice(c, -c),) * ssim_map.ndim
    inside = mask[inner]
    return float(ssim_map[inner][inside].mean()) if inside.any() else math.nan


# ---------------------------------------------------------------- BraSyn 2023


def percentile_normalise(volume: np.ndarray) -> np.ndarray:
    """BraSyn's `__percentile_clip`: own 0.5/99.5 percentiles of the whole volume, lower >= 0."""
    volume = np.asarray(volume, dtype=np.float64)
    lo, hi = np.percentile(volume, BRASYN_PERCENTILES)
    lo = 0.0 if lo < 0 else lo
    if hi <= lo:
        return np.zeros_like(volume)
    return (np.clip(volume, lo, hi) - lo) / (hi - lo)


def gaussian_taps(size: int = TM_KERNEL, sigma: float = TM_SIGMA) -> np.ndarray:
    """torchmetrics' 1-D Gaussian: exp(-(d / sigma)^2 / 2) at d = -(size-1)/2 .. (size-1)/2."""
    d = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-((d / sigma) ** 2) / 2)
    return taps / taps.sum()


def gaussian_ssim_map(
    pred: np.ndarray, ref: np.ndarray, data_range: float | None = None
) -> np.ndarray:
    """torchmetrics' full-size SSIM map of two N-D volumes (its `return_full_image` output).

    Reflection padding by 5 then a valid 11-tap Gaussian on every axis is a same-size
    Gaussian filter with mirror boundaries (scipy's mode 'mirror' = torch's 'reflect'); the
    separable 1-D passes equal torchmetrics' outer-product kernel.
    """
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if data_range is None:
        data_range = max(np.ptp(pred), np.ptp(ref))
    taps = gaussian_taps()

    def blur(x: np.ndarray) -> np.ndarray:
        for axis in range(x.ndim):
            x = correlate1d(x, taps, axis=axis, mode="mirror")
        return x

    mu_p, mu_r = blur(pred), blur(ref)
    var_p = np.clip(blur(pred * pred) - mu_p**2, 0.0, None)
    var_r = np.clip(blur(ref * ref) - mu_r**2, 0.0, None)
    cov = blur(pred * ref) - mu_p * mu_r
    c1, c2 = (TM_K1 * data_range) ** 2, (TM_K2 * data_range) ** 2
    return ((2 * mu_p * mu_r + c1) * (2 * cov + c2)) / (
        (mu_p**2 + mu_r**2 + c1) * (var_p + var_r + c2)
    )


def masked_ssim(pred_n: np.ndarray, ref_n: np.ndarray, keep: np.ndarray) -> float:
    """SSIM map of both volumes multiplied by `keep`, averaged over `keep` (BraSyn's recipe).

    The data range comes from the whole masked volumes; the map is then computed only on the
    bounding box of `keep` grown by the kernel radius (clipped to the volume), which gives the
    same values at every `keep` voxel: their windows stay inside the box, and where the box
    meets the volume's edge the reflection is the volume's own.
    """
    radius = (TM_KERNEL - 1) // 2
    if not keep.any() or min(keep.shape) <= radius:
        return math.nan
    pred_k, ref_k = pred_n * keep, ref_n * keep
    data_range = max(np.ptp(pred_k), np.ptp(ref_k))
    box = tuple(
        slice(max(int(idx.min()) - radius, 0), int(idx.max()) + radius + 1)
        for idx in np.nonzero(keep)
    )
    if min(s.stop - s.start for s in box) <= radius:  # too thin to reflect: use the volume
        box = (slice(None),) * keep.ndim
    ssim_map = gaussian_ssim_map(pred_k[box], ref_k[box], data_range)
    return float(ssim_map[keep[box]].mean())


def brasyn_official(
    pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, label: np.ndarray | None
) -> dict[str, float]:
    """`official_{psnr,ssim}_fg` and, with a label, `official_ssim_{lesion,nonlesion}`."""
    pred_n, ref_n = percentile_normalise(pred), percentile_normalise(ref)
    mask = np.asarray(mask) > 0
    scores = {
        "official_psnr_fg": (
            psnr_from_mse(float(((pred_n[mask] - ref_n[mask]) ** 2).mean()), 1.0)
            if mask.any()
            else math.nan
        ),
        "official_ssim_fg": masked_ssim(pred_n, ref_n, mask),
    }
    if label is not None:
        tumour = np.asarray(label) > 0
        scores["official_ssim_lesion"] = masked_ssim(pred_n, ref_n, tumour)
        scores["official_ssim_nonlesion"] = masked_ssim(pred_n, ref_n, ~tumour)
    return scores
