"""Data path: normalisation, prepare (checks and store), splits and the batcher."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from dfbk.data.normalise import ct_to_hu, normalise_ct, normalise_mr
from dfbk.data.slices.loader import SliceBatcher
from dfbk.data.slices.prepare import prepare_dataset
from dfbk.data.slices.splits import compute_split, write_or_check_split
from dfbk.data.slices.store import SliceStore
from dfbk.errors import ConfigError, DataError


def test_mr_normalisation_uses_foreground_percentiles():
    rng = np.random.default_rng(0)
    volume = rng.uniform(100, 200, size=(20, 20, 20)).astype(np.float32)
    volume[:5] = 0.0  # background must not pull the lower percentile down
    volume[10, 10, 10] = 1e6  # an outlier above the 99.5th percentile is clipped
    foreground = volume > 0
    out = normalise_mr(volume, foreground)
    lo, hi = np.percentile(volume[foreground], [0.5, 99.5])
    assert out.min() == 0.0 and out.max() == 1.0
    inside = (volume > lo) & (volume < hi)
    np.testing.assert_allclose(out[inside], (volume[inside] - lo) / (hi - lo), rtol=1e-5)
    assert np.all(out[:5] == 0.0)


def test_ct_window_round_trip():
    hu = np.array([-2000.0, -1024.0, 0.0, 1000.0, 3000.0, 4000.0])
    unit = normalise_ct(hu)
    np.testing.assert_allclose(unit, [0.0, 0.0, 1024 / 4024, 2024 / 4024, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(ct_to_hu(unit[1:5]), hu[1:5], atol=1e-3)


def test_split_is_subject_disjoint_complete_and_stable():
    subjects = [f"s{i:02d}" for i in range(20)]
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    a = compute_split(subjects, fractions, seed=5)
    b = compute_split(list(reversed(subjects)), fractions, seed=5)
    assert a == b  # input order does not matter, the seed does
    assert compute_split(subjects, fractions, seed=6) != a
    sets = [set(a[k]) for k in ("train", "val", "test")]
    assert (
        sets[0].isdisjoint(sets[1]) and sets[0].isdisjoint(sets[2]) and sets[1].isdisjoint(sets[2])
    )
    assert set().union(*sets) == set(subjects)
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (12, 4, 4)


def test_split_file_is_written_once_and_never_recomputed(tmp_path):
    path = tmp_path / "splits.json"
    subjects = [f"s{i}" for i in range(6)]
    first = write_or_check_split(path, subjects, {"train": 0.5, "val": 0.25, "test": 0.25}, 0)
    assert (
        write_or_check_split(path, subjects, {"train": 0.5, "val": 0.25, "test": 0.25}, 0) == first
    )
    with pytest.raises(DataError, match="never recomputed silently"):
        write_or_check_split(path, subjects + ["s6"], {"train": 0.5, "val": 0.25, "test": 0.25}, 0)
    with pytest.raises(DataError, match="splits.json"):
        write_or_check_split(path, subjects, {"train": 0.5, "val": 0.25, "test": 0.25}, 1)


def test_prepare_writes_a_consistent_store(phantom_store):
    store, split_path = phantom_store
    assert store.size == (48, 48)
    manifest = store.manifest
    assert len(manifest) == store.n_slices
    for modality in ("t1n", "t2w", "ct"):
        images = store.images(modality)
        assert images.shape == (store.n_slices, 48, 48)
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    # every kept slice reaches the foreground threshold, and fractions match the mask
    assert (manifest.foreground_fraction >= 0.0).all()
    np.testing.assert_allclose(
        manifest.foreground_fraction, store.mask.reshape(store.n_slices, -1).mean(1)
    )
    assert manifest.lesion_fraction.max() > 0  # tumour and stroke subjects carry labels
    assert store.contract("ct")["norm"] == "ct-hu-1024-3000"
    split = json.loads(split_path.read_text())
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(store.subjects)


def test_prepared_affine_maps_slices_to_the_original_world(phantom_raw, phantom_store):
    store, _ = phantom_store
    subject = store.subjects[0]
    start, _ = store.subject_range(subject)
    row = store.manifest.iloc[start]
    original = nib.as_closest_canonical(nib.load(phantom_raw / subject / f"{subject}-t1n.nii.gz"))
    # the world position of prepared voxel (i, j, 0) must equal the original voxel it came from
    world = store.subject_affine(subject) @ np.array([24, 24, 0, 1.0])
    voxel = np.linalg.inv(original.affine) @ world
    assert voxel[2] == pytest.approx(row["slice"])


def test_missing_modality_is_named(phantom_copy, tmp_path):
    victim = sorted(p for p in phantom_copy.iterdir() if p.is_dir())[1]
    (victim / f"{victim.name}-t2w.nii.gz").unlink()
    with pytest.raises(DataError, match=rf"{victim.name}.*{victim.name}-t2w\.nii\.gz"):
        prepare_dataset("phantom", phantom_copy, tmp_path / "store", ["t1n", "t2w"], (48, 48))
    assert not (tmp_path / "store").exists()  # nothing half-written looks finished


def test_mismatched_shapes_are_refused(phantom_copy, tmp_path):
    victim = sorted(p for p in phantom_copy.iterdir() if p.is_dir())[0]
    path = victim / f"{victim.name}-t2w.nii.gz"
    image = nib.load(path)
    nib.save(nib.Nifti1Image(image.get_fdata()[:-2], image.affine), path)
    with pytest.raises(DataError, match=rf"{victim.name}.*shape"):
        prepare_dataset("phantom", phantom_copy, tmp_path / "store", ["t1n", "t2w"], (48, 48))


def test_mismatched_affine_is_refused(phantom_copy, tmp_path):
    victim = sorted(p for p in phantom_copy.iterdir() if p.is_dir())[0]
    path = victim / f"{victim.name}-ct.nii.gz"
    image = nib.load(path)
    shifted = image.affine.copy()
    shifted[0, 3] += 7.0
    nib.save(nib.Nifti1Image(image.get_fdata(), shifted), path)
    with pytest.raises(DataError, match=rf"{victim.name}-ct\.nii\.gz.*affine"):
        prepare_dataset("phantom", phantom_copy, tmp_path / "store", ["t1n", "ct"], (48, 48))


def test_truncated_volume_is_named(phantom_copy, tmp_path):
    victim = sorted(p for p in phantom_copy.iterdir() if p.is_dir())[2]
    path = victim / f"{victim.name}-t1n.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{victim.name}-t1n\.nii\.gz: cannot read"):
        prepare_dataset("phantom", phantom_copy, tmp_path / "store", ["t1n", "t2w"], (48, 48))


def test_nan_voxels_are_refused(phantom_copy, tmp_path):
    victim = sorted(p for p in phantom_copy.iterdir() if p.is_dir())[0]
    path = victim / f"{victim.name}-t2w.nii.gz"
    image = nib.load(path)
    data = image.get_fdata().astype(np.float32)
    data[5, 5, 5] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), path)
    with pytest.raises(DataError, match="NaN"):
        prepare_dataset("phantom", phantom_copy, tmp_path / "store", ["t1n", "t2w"], (48, 48))


def test_bad_case_can_be_skipped_and_listed(phantom_copy, tmp_path):
    victim = sorted(p for p in phantom_copy.iterdir() if p.is_dir())[1]
    (victim / f"{victim.name}-t2w.nii.gz").unlink()
    meta = prepare_dataset(
        "phantom",
        phantom_copy,
        tmp_path / "store",
        ["t1n", "t2w"],
        (48, 48),
        on_bad_case="skip",
        skipped_csv=tmp_path / "skipped.csv",
    )
    assert victim.name not in meta["subjects"] and meta["skipped"] == [victim.name]
    assert victim.name in (tmp_path / "skipped.csv").read_text()


def test_unknown_modality_and_dataset_are_config_errors(phantom_raw, tmp_path):
    with pytest.raises(ConfigError, match="has no modality 'flair'"):
        prepare_dataset("phantom", phantom_raw, tmp_path / "s", ["t1n", "flair"], (48, 48))
    with pytest.raises(ConfigError, match="unknown dataset 'phantomz'; known: phantom"):
        prepare_dataset("phantomz", phantom_raw, tmp_path / "s", ["t1n"], (48, 48))


def test_gzip_stream_is_really_gzip(phantom_raw):
    """Guards the truncation test: the phantom writes compressed NIfTI."""
    path = next(phantom_raw.glob("*/*-t1n.nii.gz"))
    with gzip.open(path) as f:
        assert len(f.read(348)) == 348


def test_batches_are_a_pure_function_of_seed_and_step(phantom_store):
    store, split_path = phantom_store
    train = json.loads(split_path.read_text())["train"]
    a = SliceBatcher(store, "t1n", "t2w", train, batch_size=4, seed=1)
    b = SliceBatcher(SliceStore(store.root), "t1n", "t2w", train, batch_size=4, seed=1)
    for step in (0, 3, a.batches_per_epoch + 1):
        x, y = a.batch(step), b.batch(step)
        assert torch_equal(x.source, y.source) and torch_equal(x.target, y.target)
    assert not torch_equal(a.batch(0).source, a.batch(1).source)
    allowed = set(store.indices(train).tolist())
    assert set(a.batch_indices(2).tolist()) <= allowed  # never a test slice


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_unpaired_batches_draw_targets_from_other_slices(phantom_store):
    store, split_path = phantom_store
    train = json.loads(split_path.read_text())["train"]
    paired = SliceBatcher(store, "t1n", "t2w", train, batch_size=4, seed=1, flip=False)
    unpaired = SliceBatcher(
        store, "t1n", "t2w", train, batch_size=4, seed=1, flip=False, paired=False
    )
    assert torch_equal(paired.batch(0).source, unpaired.batch(0).source)
    assert not torch_equal(paired.batch(0).target, unpaired.batch(0).target)
    assert set(unpaired.unpaired_indices(0).tolist()) <= set(store.indices(train).tolist())


def test_store_contract_records_the_in_plane_spacing_translate_resamples_to(tmp_path):
    """The training spacing travels with every checkpoint's contract (median over subjects)."""
    from dfbk.data.slices.store import write_store

    images = {"t1n": np.zeros((5, 16, 16), np.float32)}
    mask = np.ones((5, 16, 16), np.uint8)
    affines = {
        "a": np.diag([2.0, 2.0, 3.0, 1.0]),
        "b": np.array([[0, -1.5, 0, 0], [2.5, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float),
        "c": np.diag([2.0, 2.0, 1.0, 1.0]),
    }
    store = write_store(
        tmp_path / "s", images, mask, np.zeros_like(mask), {"a": 2, "b": 2, "c": 1},
        affines=affines,
    )  # fmt: skip
    # column norms: a (2, 2), b (2.5, 1.5), c (2, 2) -> medians (2, 2)
    assert store.contract("t1n")["spacing"] == [2.0, 2.0]
