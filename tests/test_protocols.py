"""Per-dataset evaluation protocols on hand-computed fixtures, their use by `evaluate`, and the
FID plumbing with an Inception weights file the test writes itself."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from fabricate import brats_tree, synthrad_tree
from scipy.ndimage import gaussian_filter

from dfbk.data.io import write_nifti
from dfbk.data.normalise import ct_to_hu
from dfbk.data.slices.prepare import prepare_dataset
from dfbk.data.slices.store import SliceStore, write_store
from dfbk.evaluation.evaluate import evaluate_predictions, load_prediction
from dfbk.evaluation.metrics import PSNR_CAP_DB, ssim_interior, ssim_map
from dfbk.evaluation.official import brasyn_official, synthrad_official
from dfbk.evaluation.protocols import (
    protocol_for,
    protocol_notes,
    reference_normalise,
    score_mr,
    score_synthrad_ct,
)

C1 = (0.01 * 4024) ** 2  # SSIM's luminance constant (K1 L)^2 for the HU data range L = 4024


def unit(hu) -> np.ndarray:
    """HU -> the store's [0, 1] units (the CT window [-1024, 3000])."""
    return (np.asarray(hu, dtype=np.float64) + 1024.0) / 4024.0


# ---------------------------------------------------------------- SynthRAD, by hand


def test_synthrad_constant_offset_by_hand():
    """Reference 0 HU, prediction 100 HU everywhere, mask = all.

    MAE = 100 HU; MSE = 100^2, PSNR = 10 log10(4024^2 / 100^2) = 32.0932 dB; after the +1024
    shift the images are constant a = 1024 and b = 1124, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    = (2 301 952 + 1 619.2576) / (2 311 952 + 1 619.2576) = 0.9956777.
    """
    ref, pred = unit(np.zeros((1, 20, 20))), unit(np.full((1, 20, 20), 100.0))
    mask = np.ones(ref.shape, dtype=bool)
    _, volume = score_synthrad_ct(pred, ref, mask)
    assert volume["mae_hu_fg"] == pytest.approx(100.0, abs=1e-2)
    assert volume["mae_fg"] == pytest.approx(100.0 / 4024, abs=1e-6)
    assert volume["psnr_fg"] == pytest.approx(32.0932, abs=1e-3)
    assert volume["ssim_fg"] == pytest.approx(0.9956777, abs=1e-6)
    a, b = 1024.0, 1124.0
    assert volume["ssim_fg"] == pytest.approx((2 * a * b + C1) / (a * a + b * b + C1), abs=1e-6)


def test_synthrad_half_the_mask_off_by_200_hu_by_hand():
    """200 HU error on half the voxels: MAE 100 HU, MSE 20 000, PSNR 10 log10(4024^2/2e4)."""
    ref_hu = np.full((1, 20, 20), 40.0)
    pred_hu = ref_hu.copy()
    pred_hu[:, :, :10] += 200.0
    _, volume = score_synthrad_ct(unit(pred_hu), unit(ref_hu), np.ones(ref_hu.shape, bool))
    assert volume["mae_hu_fg"] == pytest.approx(100.0, abs=1e-2)
    assert volume["psnr_fg"] == pytest.approx(10 * math.log10(4024**2 / 20_000), abs=1e-3)


def test_synthrad_ignores_everything_outside_the_mask():
    """Equal inside the mask, wildly different outside: MAE 0, PSNR capped, SSIM exactly 1
    (outside voxels are set to -1024 in both before SSIM)."""
    rng = np.random.default_rng(0)
    ref_hu = gaussian_filter(rng.normal(0, 400, (2, 24, 24)), 2)
    mask = np.zeros(ref_hu.shape, dtype=bool)
    mask[:, 4:20, 3:15] = True
    pred_hu = np.where(mask, ref_hu, 3000.0)
    ref_hu = np.where(mask, ref_hu, -500.0)
    frame, volume = score_synthrad_ct(unit(pred_hu), unit(ref_hu), mask)
    assert volume["mae_hu_fg"] == pytest.approx(0.0, abs=1e-2)
    assert volume["psnr_fg"] == PSNR_CAP_DB
    assert volume["ssim_fg"] == pytest.approx(1.0, abs=1e-9)
    assert list(frame.columns) == ["psnr_fg", "ssim_fg", "mae_hu_fg", "mae_fg"]
    # and a change outside the mask changes nothing
    noisy = unit(pred_hu + np.where(mask, 0.0, rng.normal(0, 900, pred_hu.shape)))
    assert score_synthrad_ct(noisy, unit(ref_hu), mask)[1] == volume


# ---------------------------------------------------------------- BraTS / ISLES


def _linear_fixture():
    """Reference values 0..1000 on 1001 mask voxels: p0.5 = 5 and p99.5 = 995 exactly."""
    ref = np.zeros((1, 33, 33))
    ref.flat[:1001] = np.arange(1001.0)
    mask = np.zeros(ref.shape, dtype=bool)
    mask.flat[:1001] = True
    return ref, mask


def test_brats_normalisation_uses_the_reference_percentiles_for_both():
    ref, mask = _linear_fixture()
    pred = 2.0 * ref  # normalised by its *own* percentiles it would equal the reference
    pred_n, ref_n = reference_normalise(pred, ref, mask)
    expected_ref = (np.clip(ref, 5, 995) - 5) / 990
    expected_pred = (np.clip(pred, 5, 995) - 5) / 990
    np.testing.assert_allclose(ref_n[mask], expected_ref[mask])
    np.testing.assert_allclose(pred_n[mask], expected_pred[mask])
    assert (pred_n[~mask] == 0).all() and (ref_n[~mask] == 0).all()
    _, volume = score_mr(pred, ref, mask, None)
    mae = np.abs(expected_pred - expected_ref)[mask].mean()
    assert volume["mae_fg"] == pytest.approx(mae)
    assert volume["psnr_fg"] == pytest.approx(
        10 * math.log10(1 / np.mean((expected_pred - expected_ref)[mask] ** 2))
    )
    assert volume["ssim_fg"] < 0.99


def test_brats_ssim_inside_and_outside_the_tumour():
    rng = np.random.default_rng(1)
    ref = gaussian_filter(rng.random((2, 48, 48)), (0, 2, 2)) * 1000
    yy, xx = np.mgrid[:48, :48]
    mask = np.broadcast_to(((yy - 24) ** 2 + (xx - 24) ** 2) < 20**2, ref.shape).copy()
    label = np.zeros(ref.shape, dtype=bool)
    label[:, 20:28, 20:28] = True
    pred = ref + np.where(label, rng.normal(0, 150, ref.shape), 0.0)
    frame, volume = score_mr(pred, ref, mask, label)
    assert set(frame.columns) == {"psnr_fg", "ssim_fg", "mae_fg", "ssim_lesion", "ssim_nonlesion"}
    assert volume["ssim_lesion"] < volume["ssim_nonlesion"] < 1.0
    pred_n, ref_n = reference_normalise(pred, ref, mask)
    smap = ssim_map(pred_n, ref_n, 1.0)
    inside = ssim_interior(ref.shape)
    assert volume["ssim_lesion"] == pytest.approx(smap[label & inside].mean())
    assert volume["ssim_nonlesion"] == pytest.approx(smap[mask & ~label & inside].mean())
    assert volume["ssim_fg"] == pytest.approx(smap[mask & inside].mean())


def test_protocol_choice_by_dataset_and_target():
    assert protocol_for("brats2023", "t2w").name == "brats2023-slice2d"
    assert protocol_for("brats2023", "t2w").official == "brasyn-official"
    assert protocol_for("isles2015", "dwi").official == "brasyn-official"
    assert protocol_for("synthrad2023", "ct").official == "synthrad2023-official"
    assert protocol_for("synthrad2023", "mr").official is None
    assert "stroke lesion" in protocol_for("isles2015", "dwi").caption
    assert protocol_for("synthrad2023", "ct").hu and not protocol_for("synthrad2023", "mr").hu
    assert protocol_for("phantom", "t2w") is None and protocol_for(None, "ct") is None


# ---------------------------------------------------------------- through evaluate


def _store(tmp_path, dataset: str, modality: str, seed: int = 0):
    """Two subjects (3 + 2 slices) of 32x32 with a disk mask and a lesion in subject a."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    disk = ((yy - 16) ** 2 + (xx - 16) ** 2) < 13**2
    texture = gaussian_filter(rng.random((5, 32, 32)), (0, 1.5, 1.5))
    image = np.where(disk, 0.2 + texture, 0.0).clip(0, 1).astype(np.float32)
    label = np.zeros((5, 32, 32), np.uint8)
    label[:2, 12:18, 12:18] = 1
    mask = np.broadcast_to(disk, image.shape).astype(np.uint8)
    subjects = {"a": 3, "b": 2}
    store = write_store(
        tmp_path / "store", {modality: image}, mask, label, subjects, dataset=dataset
    )
    (tmp_path / "splits.json").write_text(json.dumps({"train": [], "val": [], "test": ["a", "b"]}))
    return store


def _predict(store, modality, folder, noise, seed=0):
    rng = np.random.default_rng(seed)
    for subject in store.subjects:
        start, stop = store.subject_range(subject)
        vol = np.asarray(store.images(modality)[start:stop], dtype=np.float64)
        vol = np.clip(vol + rng.normal(0, noise, vol.shape), 0, 1)
        data = np.moveaxis(vol, 0, -1).astype(np.float32)
        write_nifti(data, store.subject_affine(subject), folder / f"{subject}.nii.gz")


def _evaluate(tmp_path, store, direction, out="ev", fid=False):
    info = {"dataset": store.meta["dataset"], "direction": direction, "method": "m", "seed": 0}
    return evaluate_predictions(
        store.root,
        tmp_path / "pred",
        tmp_path / "splits.json",
        direction,
        tmp_path / out,
        info,
        fid,
    )


@pytest.mark.parametrize(
    ("dataset", "direction", "name", "columns"),
    [
        (
            "brats2023",
            "t1n-to-t2w",
            "brats2023-slice2d",
            {
                "ssim_lesion",
                "ssim_nonlesion",
                "official_ssim_fg",
                "official_psnr_fg",
                "official_ssim_lesion",
                "official_ssim_nonlesion",
            },
        ),
        (
            "isles2015",
            "t2f-to-dwi",
            "isles2015-slice2d",
            {"ssim_lesion", "ssim_nonlesion", "official_ssim_lesion"},
        ),
        (
            "synthrad2023",
            "mr-to-ct",
            "synthrad2023-slice2d",
            {"mae_hu_fg", "official_mae_hu_fg", "official_psnr_fg", "official_ssim_fg"},
        ),
        ("synthrad2023", "ct-to-mr", "synthrad2023-mr-slice2d", set()),
    ],
)
def test_evaluate_applies_the_dataset_protocol(tmp_path, dataset, direction, name, columns):
    target = direction.split("-to-")[1]
    store = _store(tmp_path, dataset, target)
    _predict(store, target, tmp_path / "pred", noise=0.05)
    result = _evaluate(tmp_path, store, direction)
    assert result["protocol"]["name"] == name and result["protocol"]["caption"]
    subjects = pd.read_csv(tmp_path / "ev" / "subjects.csv")
    structure = {"hfen_fg", "gmsd_fg", "hfen_lesion", "gmsd_lesion"}
    assert {"psnr_fg", "ssim_fg", "mae_fg"} | columns | structure <= set(subjects.columns)
    assert structure <= set(pd.read_csv(tmp_path / "ev" / "slices.csv").columns)
    assert "psnr_full" not in subjects.columns  # the protocol scores inside the mask only
    assert result["fid"] == {"value": None, "reason": "FID disabled for this run"}
    caption = protocol_notes([tmp_path / "ev" / "metrics.json"])
    assert caption.startswith(result["protocol"]["caption"]) and "HFEN" in caption
    official = result["protocol"]["official"]
    assert (official is None) == (not any(c.startswith("official_") for c in columns))
    if official:
        assert official["name"] in caption and "[official]" in caption


def test_phantom_keeps_the_generic_protocol(tmp_path):
    store = _store(tmp_path, "phantom", "t2w")
    _predict(store, "t2w", tmp_path / "pred", noise=0.05)
    result = _evaluate(tmp_path, store, "t1n-to-t2w")
    assert result["protocol"]["name"] == "slice2d" and result["protocol"]["range"] == [0.0, 1.0]
    assert {"psnr_full", "ssim_fg", "mae_lesion", "hfen_fg", "gmsd_lesion"} <= set(
        result["summary"]
    )
    assert not any(k.startswith("official_") for k in result["summary"])


# ---------------------------------------------------------------- FID plumbing


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME holding pt_inception-2015-12-05-6726825d.pth with random weights.

    Built exactly as pytorch_fid.inception.fid_inception_v3 builds its network before loading
    the file, so InceptionV3() loads it with a strict state-dict match, as it would the real one.
    """
    import torch
    from pytorch_fid import inception as fid_inception

    from dfbk.evaluation.fid import FID_WEIGHTS_NAME

    torch.manual_seed(0)
    net = fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
    net.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
    home = tmp_path_factory.mktemp("torch_home")
    path = home / "hub" / "checkpoints" / FID_WEIGHTS_NAME
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    return home


def test_frechet_distance_equals_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance

    from dfbk.evaluation.fid import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 64))
    b = rng.normal(size=(400, 64)) @ rng.normal(size=(64, 64)) * 0.3 + 0.2
    stats = [a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy's sqrtm(disp=...)
        expected = calculate_frechet_distance(*stats)
    assert frechet_distance(*stats) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(*stats[:2], *stats[:2]) == pytest.approx(0.0, abs=1e-6)


def test_fid_is_computed_when_the_weights_file_is_present(tmp_path, torch_home, monkeypatch):
    from dfbk.evaluation.fid import fid_columns, fid_unavailable_reason

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    assert fid_unavailable_reason() is None
    store = _store(tmp_path, "brats2023", "t2w")
    _predict(store, "t2w", tmp_path / "pred", noise=0.2)
    result = _evaluate(tmp_path, store, "t1n-to-t2w", fid=None)
    fid = result["fid"]
    assert fid["n_real"] == fid["n_fake"] == 5 and math.isfinite(fid["value"]) and fid["value"] > 0
    frame, note = fid_columns([tmp_path / "ev" / "metrics.json"])
    assert frame.loc[0, "FID"] == pytest.approx(fid["value"]) and "pytorch-fid" in note


def test_fid_column_is_absent_and_the_caption_says_why(tmp_path, monkeypatch):
    from dfbk.evaluation.fid import fid_columns

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    store = _store(tmp_path, "isles2015", "dwi")
    _predict(store, "dwi", tmp_path / "pred", noise=0.05)
    result = _evaluate(tmp_path, store, "t2f-to-dwi", fid=None)
    assert result["fid"]["value"] is None
    assert str(tmp_path / "empty" / "hub" / "checkpoints") in result["fid"]["reason"]
    frame, note = fid_columns([tmp_path / "ev" / "metrics.json"])
    assert frame is None and note.startswith("FID not reported: pytorch-fid Inception weights")


# ---------------------------------------------------------------- fabricated datasets


@pytest.mark.parametrize(
    ("dataset", "direction"), [("brats2023", "t1n-to-t2w"), ("synthrad2023", "mr-to-ct")]
)
def test_official_columns_on_a_fabricated_dataset(tmp_path, dataset, direction):
    """Publisher-layout fixture -> prepare -> evaluate: the official columns are the official
    functions applied to the subject's stored volume, and SynthRAD's MAE/PSNR coincide with
    the 2-D protocol's volume values (only SSIM differs between the two)."""
    build = {"brats2023": brats_tree, "synthrad2023": synthrad_tree}[dataset]
    source, target = direction.split("-to-")
    prepare_dataset(dataset, build(tmp_path / "raw"), tmp_path / "s", [source, target], (32, 32))
    store = SliceStore(tmp_path / "s")
    subject = store.subjects[0]
    (tmp_path / "splits.json").write_text(json.dumps({"train": [], "val": [], "test": [subject]}))
    _predict(store, target, tmp_path / "pred", noise=0.03)
    result = _evaluate(tmp_path, store, direction)
    row = pd.read_csv(tmp_path / "ev" / "subjects.csv").iloc[0]
    start, stop = store.subject_range(subject)
    assert stop - start >= 7  # thick enough for both 3-D windows
    pred = load_prediction(store, tmp_path / "pred", subject)
    ref = np.asarray(store.images(target)[start:stop], dtype=np.float64)
    mask = np.asarray(store.mask[start:stop]) > 0
    if dataset == "synthrad2023":
        expected = synthrad_official(ct_to_hu(pred), ct_to_hu(ref), mask)
        assert row["official_mae_hu_fg"] == pytest.approx(row["mae_hu_fg"], rel=1e-9)
        assert row["official_psnr_fg"] == pytest.approx(row["psnr_fg"], rel=1e-9)
    else:
        expected = brasyn_official(pred, ref, mask, np.asarray(store.label[start:stop]) > 0)
    for column, value in expected.items():
        assert np.isfinite(value) and row[column] == pytest.approx(value, rel=1e-9)
    assert abs(row["official_ssim_fg"] - row["ssim_fg"]) > 1e-3  # 3-D vs 2-D SSIM
    assert result["protocol"]["official"]["name"] in {"brasyn-official", "synthrad2023-official"}
