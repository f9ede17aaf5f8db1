"""HFEN and GMSD against independent loop-based computations and hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from dfbk.evaluation.structure import (
    GMSD_C,
    _ratio,
    _std,
    gms_maps,
    gmsd,
    hfen,
    hfen_sums,
    log_kernel,
    structure_scores,
)


# Per-slice reductions of the library's own per-slice sums and maps: what structure_scores
# computes in one pass, written the plain way.
def hfen_per_slice(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None):
    """HFEN of each slice over its region, (S,); NaN where the slice's region is empty."""
    num, den = hfen_sums(pred, ref, mask)
    return np.array([_ratio(n, d) for n, d in zip(num, den, strict=True)])


def gmsd_per_slice(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None):
    """GMSD of each slice over its region, (S,); NaN where the slice's region is empty."""
    maps, region = gms_maps(pred, ref, mask)
    return np.array([_std(m[r]) for m, r in zip(maps, region, strict=True)])


@pytest.fixture(scope="module")
def pair():
    """A smooth textured 2-slice stack in [0, 1] (odd width on purpose) and a noisy copy."""
    rng = np.random.default_rng(4)
    ref = gaussian_filter(rng.random((2, 24, 21)), (0, 1.5, 1.5))
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    pred = np.clip(ref + 0.05 * rng.standard_normal(ref.shape), 0, 1)
    return pred, ref


def _correlate_zero_padded(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """out[y, x] = sum_ij kernel[i, j] * image[y + i - r, x + j - r], zeros outside the image."""
    r = kernel.shape[0] // 2
    padded = np.pad(image, r)
    out = np.zeros_like(image)
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            out += kernel[i, j] * padded[i : i + image.shape[0], j : j + image.shape[1]]
    return out


def _continuous_log_kernel(sigma: float = 1.5, radius: int = 7) -> np.ndarray:
    """The Laplacian of a Gaussian, -(1/(pi s^4)) (1 - r^2/(2 s^2)) exp(-r^2/(2 s^2)),
    sampled on 15x15 and made zero-sum (fspecial's normalisation only rescales it, which the
    ratio HFEN does not see)."""
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(float)
    r2 = x * x + y * y
    k = -(1 / (math.pi * sigma**4)) * (1 - r2 / (2 * sigma**2)) * np.exp(-r2 / (2 * sigma**2))
    return k - k.mean()


def _hfen_independent(pred, ref, mask=None) -> float:
    kernel = _continuous_log_kernel()
    mask = np.ones(ref.shape, bool) if mask is None else mask
    num = den = 0.0
    for p, r, m in zip(pred, ref, mask, strict=True):
        num += float((_correlate_zero_padded(p - r, kernel)[m] ** 2).sum())
        den += float((_correlate_zero_padded(r, kernel)[m] ** 2).sum())
    return math.sqrt(num / den)


def test_log_kernel_is_fspecial_log():
    k = log_kernel()
    assert k.shape == (15, 15)
    assert abs(k.sum()) < 1e-15 and np.allclose(k, k.T) and np.allclose(k, k[::-1])
    assert k[7, 7] == k.min() < 0  # negative centre, as MATLAB's
    # fspecial's value at the centre: g(0)/sum(g) * (-2 s^2)/s^4 minus the mean of h1
    y, x = np.mgrid[-7:8, -7:8]
    g = np.exp(-(x**2 + y**2) / (2 * 1.5**2))
    h1 = g / g.sum() * (x**2 + y**2 - 2 * 1.5**2) / 1.5**4
    assert k[7, 7] == pytest.approx(h1[7, 7] - h1.mean(), rel=1e-12)


def test_hfen_matches_independent_computation(pair):
    pred, ref = pair
    assert hfen(pred, ref) == pytest.approx(_hfen_independent(pred, ref), rel=1e-10)
    mask = np.zeros(ref.shape, bool)
    mask[:, 5:18, 4:15] = True
    assert hfen(pred, ref, mask) == pytest.approx(_hfen_independent(pred, ref, mask), rel=1e-10)
    per_slice = hfen_per_slice(pred, ref, mask)
    for k in range(2):
        expected = _hfen_independent(pred[k : k + 1], ref[k : k + 1], mask[k : k + 1])
        assert per_slice[k] == pytest.approx(expected, rel=1e-10)


def test_hfen_hand_cases(pair):
    pred, ref = pair
    assert hfen(ref, ref) == 0.0
    assert hfen(np.zeros_like(ref), ref) == pytest.approx(1.0, rel=1e-12)  # ||-LoG r|| / ||LoG r||
    assert hfen(2 * ref, ref) == pytest.approx(1.0, rel=1e-12)
    # LoG is linear: scaling the error scales HFEN
    assert hfen(ref + 3 * (pred - ref), ref) == pytest.approx(3 * hfen(pred, ref), rel=1e-10)
    assert math.isnan(hfen(pred, ref, np.zeros(ref.shape, bool)))


def _gmsd_independent(pred2d: np.ndarray, ref2d: np.ndarray) -> float:
    """Xue et al.'s MATLAB GMSD written with loops: conv2(., ones(2)/4, 'same'), 1:2:end,
    conv2(., Prewitt/3, 'same'), GMS with T = 170 on [0, 255], std with 1/N (the paper)."""

    def block(y):
        h, w = y.shape
        out = np.zeros(((h + 1) // 2, (w + 1) // 2))
        for i in range(0, h, 2):
            for j in range(0, w, 2):
                total = sum(
                    y[a, b] for a in (i, i + 1) for b in (j, j + 1) if a < h and b < w
                )  # zeros beyond the edge
                out[i // 2, j // 2] = total / 4
        return out

    def conv_same(y, k):  # MATLAB conv2 'same' with a 3x3 kernel: flipped kernel, zero padding
        h, w = y.shape
        out = np.zeros_like(y)
        for i in range(h):
            for j in range(w):
                for a in range(3):
                    for b in range(3):
                        ii, jj = i - (a - 1), j - (b - 1)
                        if 0 <= ii < h and 0 <= jj < w:
                            out[i, j] += k[a, b] * y[ii, jj]
        return out

    dx = np.array([[1, 0, -1]] * 3) / 3
    y1, y2 = block(ref2d * 255), block(pred2d * 255)
    g1 = np.hypot(conv_same(y1, dx), conv_same(y1, dx.T))
    g2 = np.hypot(conv_same(y2, dx), conv_same(y2, dx.T))
    gms = (2 * g1 * g2 + 170) / (g1**2 + g2**2 + 170)
    return float(np.sqrt(np.mean((gms - gms.mean()) ** 2)))


def test_gmsd_matches_independent_computation(pair):
    pred, ref = pair
    assert GMSD_C == pytest.approx(0.0026, abs=2e-5)
    per_slice = gmsd_per_slice(pred, ref)
    for k in range(2):
        assert per_slice[k] == pytest.approx(_gmsd_independent(pred[k], ref[k]), rel=1e-10)
    assert gmsd(pred[0], ref[0]) == pytest.approx(per_slice[0], rel=1e-12)


def test_gmsd_hand_cases(pair):
    pred, ref = pair
    assert gmsd(ref, ref) == 0.0
    assert gmsd(0.5 * np.ones((8, 8)), 0.5 * np.ones((8, 8))) == 0.0
    # an edge map vs a blank prediction: GMS = c / (m^2 + c) on edge pixels, 1 elsewhere
    ref2d = np.zeros((8, 8))
    ref2d[:, 4:] = 1.0
    gms_values = []
    half = np.zeros((4, 4))
    half[:, 2:] = 1.0  # the 2x2 block means of ref2d
    dx = np.array([[1, 0, -1]] * 3) / 3
    padded = np.pad(half, 1)
    for i in range(4):
        for j in range(4):
            window = padded[i : i + 3, j : j + 3]
            m2 = (window * dx).sum() ** 2 + (window * dx.T).sum() ** 2
            gms_values.append(GMSD_C / (m2 + GMSD_C))
    assert gmsd(np.zeros((8, 8)), ref2d) == pytest.approx(np.std(gms_values), rel=1e-12)


def test_structure_scores_regions_pool_slices(pair):
    pred, ref = pair
    fg = np.zeros(ref.shape, bool)
    fg[:, 2:22, 2:19] = True
    lesion = np.zeros(ref.shape, bool)
    lesion[0, 8:14, 8:14] = True  # only in slice 0
    per_slice, volume = structure_scores(pred, ref, {"fg": fg, "lesion": lesion})
    assert volume["hfen_fg"] == pytest.approx(hfen(pred, ref, fg), rel=1e-12)
    assert volume["gmsd_fg"] == pytest.approx(gmsd(pred, ref, fg), rel=1e-12)
    assert volume["hfen_lesion"] == pytest.approx(hfen(pred[:1], ref[:1], lesion[:1]), rel=1e-12)
    assert np.isnan(per_slice["hfen_lesion"][1]) and np.isnan(per_slice["gmsd_lesion"][1])
    assert per_slice["gmsd_fg"] == pytest.approx(gmsd_per_slice(pred, ref, fg), rel=1e-12)
    # noisier predictions score worse on both
    worse = np.clip(ref + 4 * (pred - ref), 0, 1)
    assert hfen(worse, ref, fg) > volume["hfen_fg"] and gmsd(worse, ref, fg) > volume["gmsd_fg"]
