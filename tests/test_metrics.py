"""Metrics against independent computations, and the evaluate stage on a tiny slice store."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from dfbk.data.io import load_image, write_nifti
from dfbk.data.slices.store import write_store
from dfbk.errors import DataError
from dfbk.evaluation.evaluate import evaluate_predictions
from dfbk.evaluation.metrics import PSNR_CAP_DB, mae, psnr, ssim, ssim_map

C1, C2 = 0.01**2, 0.03**2


def wang_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSIM map of Wang et al. 2004 with an 11-tap Gaussian (sigma 1.5), written out here."""

    def blur(a):
        return gaussian_filter(a, sigma=1.5, truncate=3.5, mode="reflect")

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    return ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2))


def ssim_at(x: np.ndarray, y: np.ndarray, i: int, j: int) -> float:
    """SSIM at one interior pixel by explicit weighted sums over its 11x11 window."""
    r = np.arange(-5, 6)
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    px, py = x[i - 5 : i + 6, j - 5 : j + 6], y[i - 5 : i + 6, j - 5 : j + 6]
    mx, my = (w * px).sum(), (w * py).sum()
    vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
    cxy = (w * (px - mx) * (py - my)).sum()
    return ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2))


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    ref = gaussian_filter(rng.random((40, 48)), 2)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    pred = np.clip(ref + rng.normal(0, 0.08, ref.shape), 0, 1)
    return pred, ref


def test_psnr_matches_formula():
    ref = np.full((16, 16), 0.5)
    assert psnr(ref + 0.1, ref) == pytest.approx(20.0)  # MSE 0.01
    rng = np.random.default_rng(1)
    a, b = rng.random((20, 20)), rng.random((20, 20))
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / np.mean((a - b) ** 2)))
    assert psnr(a / 2, b / 2, data_range=0.5) == pytest.approx(psnr(a, b))


def test_psnr_masked_and_capped():
    ref = np.zeros((16, 16))
    pred = ref.copy()
    mask = np.zeros_like(ref, dtype=bool)
    mask[4:8, 4:8] = True
    pred[~mask] = 1.0  # error only outside the region
    assert psnr(pred, ref, mask=mask) == PSNR_CAP_DB
    pred[mask] = 0.1  # MSE 0.01 inside
    assert psnr(pred, ref, mask=mask) == pytest.approx(20.0)
    assert psnr(ref, ref) == PSNR_CAP_DB
    assert math.isnan(psnr(pred, ref, mask=np.zeros_like(mask)))


def test_mae_plain_and_masked():
    ref = np.zeros((8, 8))
    pred = np.zeros((8, 8))
    pred[:, :4] = 0.2
    mask = np.zeros((8, 8), dtype=bool)
    mask[:, 2:6] = True  # half of it has error 0.2
    assert mae(pred, ref) == pytest.approx(0.1)
    assert mae(pred, ref, mask=mask) == pytest.approx(0.1)
    mask[:, 2:4] = False
    assert mae(pred, ref, mask=mask) == 0.0
    assert math.isnan(mae(pred, ref, mask=np.zeros_like(mask)))


def test_ssim_map_matches_wang_et_al(pair):
    pred, ref = pair
    ours = ssim_map(pred, ref)
    np.testing.assert_allclose(ours, wang_map(pred, ref), atol=1e-10)
    for i, j in [(5, 5), (20, 24), (34, 42)]:
        assert ours[i, j] == pytest.approx(ssim_at(pred, ref, i, j), abs=1e-10)


def test_ssim_scalar_is_interior_mean_and_matches_skimage(pair):
    pred, ref = pair
    expected = wang_map(pred, ref)[5:-5, 5:-5].mean()
    assert ssim(pred, ref) == pytest.approx(expected, abs=1e-10)
    sk = structural_similarity(pred, ref, data_range=1.0, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False)  # fmt: skip
    assert ssim(pred, ref) == pytest.approx(sk, abs=1e-12)
    assert ssim(pred, ref) < 0.99


def test_ssim_masked_and_3d(pair):
    pred, ref = pair
    mask = np.zeros(ref.shape, dtype=bool)
    mask[2:30, 10:40] = True  # rows 2-4 lie in the excluded border strip
    full = wang_map(pred, ref)
    assert ssim(pred, ref, mask=mask) == pytest.approx(full[5:30, 10:40].mean(), abs=1e-10)
    # 3-D: 2-D maps per slice, averaged over the region pixels of the whole stack
    stack_p, stack_r = np.stack([pred, ref]), np.stack([ref, ref])
    masks = np.stack([mask, np.ones_like(mask)])
    maps = np.stack([full, np.ones_like(full)])
    region = np.zeros_like(masks)
    region[:, 5:-5, 5:-5] = masks[:, 5:-5, 5:-5]
    assert ssim(stack_p, stack_r, mask=masks) == pytest.approx(maps[region].mean(), abs=1e-10)


def test_constant_images_and_identity():
    a, b = np.full((20, 20), 0.3), np.full((20, 20), 0.7)
    luminance = (2 * 0.3 * 0.7 + C1) / (0.3**2 + 0.7**2 + C1)
    assert ssim(a, b) == pytest.approx(luminance)
    rng = np.random.default_rng(2)
    x = rng.random((24, 24))
    assert ssim(x, x) == pytest.approx(1.0)
    assert mae(x, x) == 0.0


# ---------------------------------------------------------------- evaluate on a tiny store

SUBJECTS = {"sub-a": 4, "sub-b": 3, "sub-c": 3}


def _phantom(n: int, size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    radius = size / 2 - 4 - 3 * (np.arange(n) % 3)  # foreground area varies by slice
    disk = (xx**2 + yy**2)[None] < radius[:, None, None] ** 2
    texture = gaussian_filter(rng.random((n, size, size)), (0, 1.5, 1.5))
    t1n = np.where(disk, 0.3 + texture, 0.0).clip(0, 1).astype(np.float32)
    t2w = np.where(disk, 1.0 - t1n, 0.0).astype(np.float32)
    ct = np.where(disk, 0.25 + 0.5 * texture, 0.0).clip(0, 1).astype(np.float32)
    mask = disk.astype(np.uint8)
    return {"t1n": t1n, "t2w": t2w, "ct": ct}, mask


@pytest.fixture
def tiny(tmp_path):
    """A 3-subject store (lesion only in sub-a slices 1-2), a split, exact predictions."""
    n = sum(SUBJECTS.values())
    images, mask = _phantom(n)
    label = np.zeros_like(mask)
    label[1:3, 12:18, 12:18] = 1
    affines = {s: np.diag([1.0, 1.2, 2.0, 1.0]) for s in SUBJECTS}
    for i, s in enumerate(SUBJECTS):
        affines[s][:3, 3] = [-16.0, -19.2, 10.0 * i]
    store = write_store(tmp_path / "store", images, mask, label, SUBJECTS, affines=affines)
    split = tmp_path / "splits.json"
    split.write_text(json.dumps({"train": [], "val": [], "test": list(SUBJECTS)}))
    return store, split


def _write_preds(store, folder, modality, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for subject in store.subjects:
        start, stop = store.subject_range(subject)
        vol = np.asarray(store.images(modality)[start:stop], dtype=np.float64)
        vol = np.clip(vol + rng.normal(0, noise, vol.shape), 0, 1) if noise else vol
        out[subject] = vol
        data = np.moveaxis(vol, 0, -1).astype(np.float32)
        write_nifti(data, store.subject_affine(subject), folder / f"{subject}.nii.gz")
    return out


def _run(store, split, preds, direction, out):
    info = {"dataset": "phantom", "direction": direction, "method": "m", "seed": 0}
    return evaluate_predictions(store.root, preds, split, direction, out, info)


def test_evaluate_exact_beats_noisy(tiny, tmp_path):
    store, split = tiny
    _write_preds(store, tmp_path / "exact", "t2w")
    noisy = _write_preds(store, tmp_path / "noisy", "t2w", noise=0.05)
    good = _run(store, split, tmp_path / "exact", "t1n-to-t2w", tmp_path / "ev_exact")
    bad = _run(store, split, tmp_path / "noisy", "t1n-to-t2w", tmp_path / "ev_noisy")
    assert good["summary"]["psnr_fg"]["mean"] == PSNR_CAP_DB
    assert good["summary"]["ssim_fg"]["mean"] == pytest.approx(1.0)
    assert good["summary"]["mae_full"]["mean"] == 0.0
    for metric in ("psnr", "ssim"):
        assert bad["summary"][f"{metric}_fg"]["mean"] < good["summary"][f"{metric}_fg"]["mean"]
    assert bad["summary"]["mae_fg"]["mean"] > 0.01
    assert "mae_hu_fg" not in bad["summary"]
    assert bad["protocol"]["normalisation"] == "mr-p0.5-p99.5"
    # the written per-subject values are the public metrics on the whole volume
    subjects = pd.read_csv(tmp_path / "ev_noisy" / "subjects.csv").set_index("subject")
    start, stop = store.subject_range("sub-b")
    ref = np.asarray(store.images("t2w")[start:stop], dtype=np.float64)
    fg = np.asarray(store.mask[start:stop]) > 0
    row = subjects.loc["sub-b"]
    assert row["psnr_fg"] == pytest.approx(psnr(noisy["sub-b"], ref, mask=fg), abs=1e-4)
    assert row["ssim_fg"] == pytest.approx(ssim(noisy["sub-b"], ref, mask=fg), abs=1e-4)
    assert row["mae_fg"] == pytest.approx(mae(noisy["sub-b"], ref, mask=fg), abs=1e-5)
    summary = bad["summary"]["mae_fg"]
    assert summary["n"] == 3
    assert summary["std"] == pytest.approx(subjects["mae_fg"].std(ddof=1))
    on_disk = json.loads((tmp_path / "ev_noisy" / "metrics.json").read_text())
    assert on_disk["method"] == "m" and on_disk["summary"] == bad["summary"]


def test_evaluate_lesion_region_nan_without_lesion(tiny, tmp_path):
    store, split = tiny
    _write_preds(store, tmp_path / "p", "t2w", noise=0.05)
    _run(store, split, tmp_path / "p", "t1n-to-t2w", tmp_path / "ev")
    slices = pd.read_csv(tmp_path / "ev" / "slices.csv")
    subjects = pd.read_csv(tmp_path / "ev" / "subjects.csv").set_index("subject")
    assert len(slices) == sum(SUBJECTS.values())
    assert subjects["psnr_lesion"].isna().tolist() == [False, True, True]
    lesion = slices[(slices.subject == "sub-a") & slices.slice.isin([1, 2])]
    assert lesion[["psnr_lesion", "ssim_lesion", "mae_lesion"]].notna().all().all()
    others = slices.drop(lesion.index)
    assert others[["psnr_lesion", "ssim_lesion", "mae_lesion"]].isna().all().all()
    # a per-slice value equals the public metric on that slice
    k = 2
    ref = np.asarray(store.images("t2w")[k], dtype=np.float64)
    pred = np.asarray(load_image(tmp_path / "p" / "sub-a.nii.gz").get_fdata())[..., k]
    fg = np.asarray(store.mask[k]) > 0
    assert slices.loc[k, "psnr_fg"] == pytest.approx(psnr(pred, ref, mask=fg), abs=1e-4)
    assert slices.loc[k, "ssim_full"] == pytest.approx(ssim(pred, ref), abs=1e-4)


def test_evaluate_ct_has_mae_in_hu(tiny, tmp_path):
    store, split = tiny
    _write_preds(store, tmp_path / "p", "ct", noise=0.02)
    result = _run(store, split, tmp_path / "p", "t1n-to-ct", tmp_path / "ev")
    hu = result["summary"]["mae_hu_fg"]["mean"]
    assert hu == pytest.approx(result["summary"]["mae_fg"]["mean"] * 4024.0, rel=1e-4)
    assert "mae_hu_fg" in pd.read_csv(tmp_path / "ev" / "slices.csv").columns
    assert result["protocol"]["normalisation"] == "ct-hu-1024-3000"


def test_evaluate_missing_or_misshapen_prediction(tiny, tmp_path):
    store, split = tiny
    _write_preds(store, tmp_path / "p", "t2w")
    (tmp_path / "p" / "sub-b.nii.gz").unlink()
    with pytest.raises(DataError, match="sub-b.nii.gz"):
        _run(store, split, tmp_path / "p", "t1n-to-t2w", tmp_path / "ev")
    assert not (tmp_path / "ev" / "metrics.json").exists()
    write_nifti(np.zeros((32, 32, 2), np.float32), np.eye(4), tmp_path / "p" / "sub-b.nii.gz")
    with pytest.raises(DataError, match=r"sub-b.nii.gz: prediction shape"):
        _run(store, split, tmp_path / "p", "t1n-to-t2w", tmp_path / "ev")
    write_nifti(np.zeros((32, 32, 3), np.float32), np.eye(4), tmp_path / "p" / "sub-b.nii.gz")
    with pytest.raises(DataError, match=r"sub-b.nii.gz: affine differs"):
        _run(store, split, tmp_path / "p", "t1n-to-t2w", tmp_path / "ev")
