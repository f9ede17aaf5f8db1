"""Adapters on fabricated copies of BraTS 2023, ISLES 2015 and SynthRAD 2023, and every kind of
bad case: a clear error naming the case and the file, or skipped and listed with `skip`."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fabricate import (
    BRATS_TOP,
    brats_tree,
    isles_case,
    isles_tree,
    synthrad_tree,
    write_isles,
)

from dfbk.data.datasets import get_adapter
from dfbk.data.slices.prepare import prepare_dataset
from dfbk.data.slices.store import SliceStore
from dfbk.errors import ConfigError, DataError

SIZE = (32, 32)
MODALITIES = {
    "brats2023": ["t1n", "t2w", "t2f"],
    "isles2015": ["t2f", "dwi", "t1n"],
    "synthrad2023": ["mr", "ct"],
}
BUILD = {"brats2023": brats_tree, "isles2015": isles_tree, "synthrad2023": synthrad_tree}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("raw")
    return {name: build(root / name) for name, build in BUILD.items()}


@pytest.fixture
def raw(pristine, tmp_path):
    """A private, breakable copy of one dataset: raw(name) -> folder."""

    def copy(name: str) -> Path:
        return Path(shutil.copytree(pristine[name], tmp_path / name))

    return copy


def test_brats_adapter_finds_cases_below_the_archive_top_folder(pristine):
    subjects = get_adapter("brats2023").find_subjects(pristine["brats2023"])
    assert [s.name for s in subjects] == [f"BraTS-GLI-{n:05d}-000" for n in (0, 2, 5)]
    first = subjects[0]
    assert first.images["t2f"] == pristine["brats2023"] / BRATS_TOP / first.name / (
        f"{first.name}-t2f.nii.gz"
    )
    assert first.label.name == f"{first.name}-seg.nii.gz" and first.mask is None
    assert not first.missing and not first.problems


def test_isles_adapter_matches_modalities_by_substring(pristine, tmp_path):
    subjects = get_adapter("isles2015").find_subjects(pristine["isles2015"])
    assert [s.name for s in subjects] == [
        "SISS2015_Training-1",
        "SISS2015_Training-2",
        "SISS2015_Training-3",
    ]
    one = subjects[0]
    assert one.images["t2f"].parent.name.startswith("VSD.Brain.XX.O.MR_Flair.")
    assert one.images["t1n"].parent.name.startswith("VSD.Brain.XX.O.MR_T1.")
    assert one.images["dwi"].name.endswith(".mha") and subjects[2].images["dwi"].name.endswith(
        ".nii"
    )
    assert ".OT." in one.label.name
    # another release's ids and a T1c sequence (SPES-style) do not confuse T1
    case = isles_case(tmp_path / "other", 9, ".nii.gz")
    write_isles(np.ones((4, 4, 4), np.float32), case / "VSD.Brain.XX.O.MR_T1c.1/x.nii.gz")
    (found,) = get_adapter("isles2015").find_subjects(tmp_path / "other")
    assert found.images["t1n"].parent.name.startswith("VSD.Brain.XX.O.MR_T1.")
    assert not found.problems


def test_synthrad_adapter_lists_brain_cases_only(pristine):
    subjects = get_adapter("synthrad2023").find_subjects(pristine["synthrad2023"])
    assert [s.name for s in subjects] == ["1BA001", "1BB002", "1BC003"]
    assert subjects[0].mask.name == "mask.nii.gz" and subjects[0].label is None


@pytest.mark.parametrize("dataset", sorted(BUILD))
def test_prepare_builds_a_store_for_each_dataset(pristine, tmp_path, dataset):
    meta = prepare_dataset(dataset, pristine[dataset], tmp_path / "s", MODALITIES[dataset], SIZE)
    store = SliceStore(tmp_path / "s")
    assert len(meta["subjects"]) == 3 and store.modalities == MODALITIES[dataset]
    for modality in MODALITIES[dataset]:
        images = np.asarray(store.images(modality))
        assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.5
    labels = set(np.unique(store.label))
    assert labels == {"brats2023": {0, 1, 2, 3}, "isles2015": {0, 1}, "synthrad2023": {0}}[dataset]


def test_synthrad_foreground_is_its_body_mask(pristine, tmp_path):
    prepare_dataset("synthrad2023", pristine["synthrad2023"], tmp_path / "s", ["mr", "ct"], SIZE)
    store = SliceStore(tmp_path / "s")
    ct = np.asarray(store.images("ct"))
    assert store.meta["normalisation"]["ct"] == "ct-hu-1024-3000"
    assert (ct[np.asarray(store.mask) == 0] == 0).all()  # air (-1024 HU) outside the mask


def test_impossible_direction_is_a_config_error():
    with pytest.raises(ConfigError, match="dataset 'brats2023' has no modality 'dwi'"):
        get_adapter("brats2023").check_modalities(["t1n", "dwi"])
    with pytest.raises(ConfigError, match="unknown dataset 'brats2021'; known: phantom, "):
        get_adapter("brats2021")


# ---------------------------------------------------------------- bad cases, one kind per test


def _case(root: Path, dataset: str, index: int = 1) -> tuple[str, Path]:
    subject = get_adapter(dataset).find_subjects(root)[index]
    return subject.name, subject.images[MODALITIES[dataset][1]]


def _rewrite(path: Path, change) -> None:
    if path.name.endswith(".mha"):
        import SimpleITK as sitk

        data = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)
        write_isles(change(data.astype(np.float32), None)[0], path)
        return
    image = nib.load(path)
    data, affine = change(np.asarray(image.get_fdata(), dtype=np.float32), image.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), str(path))


def truncate(root, dataset):
    name, path = _case(root, "brats2023")
    path.write_bytes(path.read_bytes()[:300])
    return name, path.name, "cannot read volume"


def drop_modality(root, dataset):
    name, path = _case(root, "isles2015")
    shutil.rmtree(path.parent)  # the whole VSD.Brain.XX.O.MR_DWI.<id>/ folder
    return name, "no file matching mr_dwi", "missing modality"


def other_shape(root, dataset):
    name, path = _case(root, "synthrad2023")
    _rewrite(path, lambda d, a: (d[:-2], a))
    return name, path.name, "shape"


def other_affine(root, dataset):
    name, path = _case(root, "brats2023")
    _rewrite(path, lambda d, a: (d, a + _shift()))
    return name, path.name, "affine differs"


def _shift() -> np.ndarray:
    shift = np.zeros((4, 4))
    shift[0, 3] = 5.0
    return shift


def bad_labels(root, dataset):
    subject = get_adapter("brats2023").find_subjects(root)[1]
    _rewrite(subject.label, lambda d, a: (np.where(d == 3, 4, d), a))  # BraTS 2021's "4"
    return subject.name, subject.label.name, r"unexpected label values \[4\]"


def fractional_labels(root, dataset):
    subject = get_adapter("isles2015").find_subjects(root)[1]
    _rewrite(subject.label, lambda d, a: (d * 0.5, a))
    return subject.name, subject.label.name, "non-integer"


def nan_voxels(root, dataset):
    name, path = _case(root, "isles2015")

    def poison(data, affine):
        data[3, 4, 5] = np.nan
        return data, affine

    _rewrite(path, poison)
    return name, path.name, "NaN"


def missing_label(root, dataset):
    subject = get_adapter("brats2023").find_subjects(root)[1]
    subject.label.unlink()
    return subject.name, subject.label.name, "missing label file"


def ambiguous_sequence(root, dataset):
    name, path = _case(root, "isles2015")
    twin = path.parent.with_name(path.parent.name + "0")
    shutil.copytree(path.parent, twin)
    return name, twin.name, "several files match dwi"


BAD_CASES = {
    truncate: "brats2023",
    drop_modality: "isles2015",
    other_shape: "synthrad2023",
    other_affine: "brats2023",
    bad_labels: "brats2023",
    fractional_labels: "isles2015",
    nan_voxels: "isles2015",
    missing_label: "brats2023",
    ambiguous_sequence: "isles2015",
}


@pytest.mark.parametrize("damage", list(BAD_CASES), ids=lambda f: f.__name__)
def test_bad_case_is_named_or_skipped_and_listed(raw, tmp_path, damage):
    dataset = BAD_CASES[damage]
    root = raw(dataset)
    subject, file_hint, what = damage(root, dataset)
    modalities = MODALITIES[dataset]
    with pytest.raises(DataError, match=rf"subject {subject}\b.*{what}") as err:
        prepare_dataset(dataset, root, tmp_path / "store", modalities, SIZE)
    assert file_hint in str(err.value)
    assert not (tmp_path / "store").exists()  # nothing half-written looks finished
    skipped_csv = tmp_path / "skipped.csv"
    meta = prepare_dataset(
        dataset, root, tmp_path / "store", modalities, SIZE, 0.05, "skip", skipped_csv
    )
    assert meta["skipped"] == [subject] and subject not in meta["subjects"]
    assert len(meta["subjects"]) == 2
    rows = list(csv.DictReader(skipped_csv.open()))
    assert [r["subject"] for r in rows] == [subject] and file_hint in rows[0]["reason"]
