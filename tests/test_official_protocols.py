"""synthrad2023-official and brasyn-official on hand-made 3-D fixtures, each checked against an
independent computation of the published formula (box sums in numpy; torch conv3d)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from dfbk.evaluation.metrics import PSNR_CAP_DB
from dfbk.evaluation.official import (
    brasyn_official,
    gaussian_ssim_map,
    masked_ssim,
    percentile_normalise,
    synthrad_official,
    synthrad_ssim,
)

# ---------------------------------------------------------------- fixtures


def _ct_pair(seed: int = 0, shape=(9, 16, 14)):
    """A CT-like head in HU (air -1024, tissue ~40, a bright rim up to ~1500) and a blurred,
    noisy prediction that overshoots 3000 HU in a few voxels; a body mask smaller than the
    volume."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = [(n - 1) / 2 for n in shape]
    r = np.sqrt(((z - c[0]) / 4.5) ** 2 + ((y - c[1]) / 6.5) ** 2 + ((x - c[2]) / 5.5) ** 2)
    ref = np.where(r < 1, 40.0 + 30 * rng.standard_normal(shape), -1024.0)
    ref[(r > 0.8) & (r < 1)] = 1500.0
    pred = gaussian_filter(ref, 0.7) + 40 * rng.standard_normal(shape)
    pred[4, 8, 7] = 3600.0  # above the clip range: counts in MAE, clipped for PSNR/SSIM
    mask = r < 1.1
    return pred, ref, mask


def _box_ssim_interior(a: np.ndarray, b: np.ndarray, data_range: float, w: int = 7):
    """Wang et al. SSIM with a w^3 uniform window and sample covariance at every voxel whose
    window lies inside the volume, from summed-area tables (independent of scikit-image)."""

    def box_sum(v):
        s = np.pad(v, [(1, 0)] * 3).cumsum(0).cumsum(1).cumsum(2)
        return (
            s[w:, w:, w:] - s[:-w, w:, w:] - s[w:, :-w, w:] - s[w:, w:, :-w]
            + s[:-w, :-w, w:] + s[:-w, w:, :-w] + s[w:, :-w, :-w] - s[:-w, :-w, :-w]
        )  # fmt: skip

    n = w**3
    mu_a, mu_b = box_sum(a) / n, box_sum(b) / n
    var_a = (box_sum(a * a) - n * mu_a**2) / (n - 1)
    var_b = (box_sum(b * b) - n * mu_b**2) / (n - 1)
    cov = (box_sum(a * b) - n * mu_a * mu_b) / (n - 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )


# ---------------------------------------------------------------- SynthRAD 2023


def test_synthrad_mae_and_psnr_by_hand():
    """ref 0 HU, pred 100 HU inside the mask, garbage outside; one voxel at 3500 HU."""
    shape = (8, 10, 10)
    mask = np.zeros(shape, bool)
    mask[2:6, 2:8, 2:8] = True  # 144 voxels
    ref = np.where(mask, 0.0, -1024.0)
    pred = np.where(mask, 100.0, 2000.0)
    pred[3, 4, 4] = 3500.0
    scores = synthrad_official(pred, ref, mask)
    n = mask.sum()
    assert scores["official_mae_hu_fg"] == pytest.approx((143 * 100 + 3500) / n, rel=1e-12)
    mse = (143 * 100**2 + 3000**2) / n  # PSNR on HU clipped to [-1024, 3000]
    assert scores["official_psnr_fg"] == pytest.approx(10 * math.log10(4024**2 / mse), rel=1e-12)


def test_synthrad_ssim_equals_skimage_with_the_official_arguments_and_box_sums():
    pred, ref, mask = _ct_pair()
    ours = synthrad_ssim(pred, ref, mask)
    # the official call: clip, outside mask -> -1024, shift by 1024, skimage defaults, crop 3
    lo, hi = -1024.0, 3000.0
    gt = np.where(mask, np.clip(ref, lo, hi), lo) - lo
    pr = np.where(mask, np.clip(pred, lo, hi), lo) - lo
    _, full = structural_similarity(gt, pr, data_range=4024.0, full=True)
    inner = (slice(3, -3),) * 3
    official = full[inner][mask[inner]].mean()
    assert ours == pytest.approx(official, rel=1e-12)
    independent = _box_ssim_interior(gt, pr, 4024.0)[mask[inner]].mean()
    assert ours == pytest.approx(independent, rel=1e-9)
    # and it is not the 2-D Gaussian slice SSIM the paper-style protocol reports
    assert abs(ours - structural_similarity(gt[4], pr[4], data_range=4024.0)) > 1e-3


def test_synthrad_identity_and_thin_stacks():
    pred, ref, mask = _ct_pair()
    same = synthrad_official(ref, ref, mask)
    assert same["official_mae_hu_fg"] == 0 and same["official_psnr_fg"] == PSNR_CAP_DB
    assert same["official_ssim_fg"] == pytest.approx(1.0, abs=1e-12)
    thin = synthrad_official(pred[:6], ref[:6], mask[:6])  # < 7 slices: no 7-voxel window
    assert math.isnan(thin["official_ssim_fg"]) and np.isfinite(thin["official_psnr_fg"])


# ---------------------------------------------------------------- BraSyn 2023


def _torchmetrics_ssim_map(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """torchmetrics' 3-D SSIM full map re-derived with torch: reflection pad 5, conv3d with the
    11^3 outer-product Gaussian (sigma 1.5), data range max(ptp), variances clamped at 0."""
    p = torch.tensor(pred, dtype=torch.float64)[None, None]
    t = torch.tensor(ref, dtype=torch.float64)[None, None]
    data_range = max(float(p.max() - p.min()), float(t.max() - t.min()))
    d = torch.arange(-5, 6, dtype=torch.float64)
    g = torch.exp(-((d / 1.5) ** 2) / 2)
    g = g / g.sum()
    kernel = (g[:, None, None] * g[None, :, None] * g[None, None, :])[None, None]
    pp, tt = F.pad(p, (5,) * 6, mode="reflect"), F.pad(t, (5,) * 6, mode="reflect")
    mu_p, mu_t, e_pp, e_tt, e_pt = F.conv3d(torch.cat([pp, tt, pp * pp, tt * tt, pp * tt]), kernel)
    var_p = (e_pp - mu_p**2).clamp(min=0)
    var_t = (e_tt - mu_t**2).clamp(min=0)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    num = (2 * mu_p * mu_t + c1) * (2 * (e_pt - mu_p * mu_t) + c2)
    return (num / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2)))[0].numpy()


def _mr_pair(seed: int = 1, shape=(8, 18, 16)):
    """An MR-like brain (zero background), a tumour blob, a prediction on another scale."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = [(n - 1) / 2 for n in shape]
    r = np.sqrt(((z - c[0]) / 4) ** 2 + ((y - c[1]) / 8) ** 2 + ((x - c[2]) / 7) ** 2)
    brain = r < 1
    tumour = brain & (((z - 4) ** 2 + (y - 7) ** 2 + (x - 9) ** 2) < 7)
    texture = gaussian_filter(rng.random(shape), 1.0)
    ref = np.where(brain, 300 + 400 * texture, 0.0) + np.where(tumour, 500.0, 0.0)
    pred = 2.5 * (gaussian_filter(ref, 0.6) + 20 * rng.standard_normal(shape) * brain)
    return pred, ref, brain, tumour


def test_gaussian_ssim_map_equals_torchmetrics_recipe():
    pred, ref, brain, _ = _mr_pair()
    ours = gaussian_ssim_map(pred, ref)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, _torchmetrics_ssim_map(pred, ref), rtol=0, atol=1e-12)


def test_percentile_normalise_by_hand():
    volume = np.arange(-10.0, 191.0)  # 201 values: percentiles 0.5 -> -9.0, 99.5 -> 189.0
    out = percentile_normalise(volume)
    lo, hi = 0.0, 189.0  # the negative lower bound is raised to 0
    np.testing.assert_allclose(out, (np.clip(volume, lo, hi) - lo) / (hi - lo), atol=1e-15)
    assert np.all(percentile_normalise(np.full(10, 3.0)) == 0)


def test_brasyn_scores_against_the_independent_recipe():
    pred, ref, brain, tumour = _mr_pair()
    scores = brasyn_official(pred, ref, brain, tumour)

    def normalise(v):  # BraSyn: own percentiles over the whole volume, lower bound >= 0
        lo, hi = np.percentile(v, [0.5, 99.5])
        lo = max(lo, 0.0)
        return (np.clip(v, lo, hi) - lo) / (hi - lo)

    p, r = normalise(pred), normalise(ref)
    for column, keep in (("fg", brain), ("lesion", tumour), ("nonlesion", ~tumour)):
        full = _torchmetrics_ssim_map(p * keep, r * keep)
        assert scores[f"official_ssim_{column}"] == pytest.approx(full[keep].mean(), abs=1e-12)
    mse = ((p[brain] - r[brain]) ** 2).mean()
    assert scores["official_psnr_fg"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)
    assert 0 < scores["official_ssim_lesion"] < 1 and 0 < scores["official_ssim_fg"] < 1


def test_brasyn_normalises_each_volume_by_its_own_percentiles():
    """A prediction on another intensity scale is perfect for BraSyn (not for a reference-
    percentile protocol)."""
    _, ref, brain, tumour = _mr_pair()
    scores = brasyn_official(3.0 * ref, ref, brain, tumour)
    assert scores["official_psnr_fg"] == PSNR_CAP_DB
    for column in ("fg", "lesion", "nonlesion"):
        assert scores[f"official_ssim_{column}"] == pytest.approx(1.0, abs=1e-12)
    no_label = brasyn_official(3.0 * ref, ref, brain, None)
    assert set(no_label) == {"official_psnr_fg", "official_ssim_fg"}
    assert math.isnan(
        brasyn_official(ref, ref, brain, np.zeros_like(brain))["official_ssim_lesion"]
    )


def test_brasyn_region_crop_is_exact():
    """The SSIM map is computed on the region's box only: equal to the whole-volume map there,
    for a region far from the edges and one touching them."""
    rng = np.random.default_rng(5)
    ref = gaussian_filter(rng.random((16, 34, 30)), 1.0)
    pred = ref + 0.05 * rng.standard_normal(ref.shape)
    for box in (
        (slice(6, 10), slice(12, 20), slice(10, 16)),
        (slice(0, 3), slice(0, 9), slice(25, 30)),
    ):
        keep = np.zeros(ref.shape, bool)
        keep[box] = True
        whole = _torchmetrics_ssim_map(pred * keep, ref * keep)[keep].mean()
        assert masked_ssim(pred, ref, keep) == pytest.approx(whole, abs=1e-12)
