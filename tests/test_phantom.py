"""Synthetic head phantom: contrasts follow MR/CT physics, files follow the BraTS-like layout."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the MNI template ships inside nilearn

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from dfbk.data.phantom import anatomy as phantom
from dfbk.data.phantom.anatomy import (
    LABELS,
    PHANTOM_MODALITIES,
    generate_phantom_dataset,
    make_phantom_subject,
    write_phantom_subject,
)
from dfbk.data.phantom.tissues import (
    FIELD_1P5T_SCALE,
    PROTOCOL_RANGES,
    RELAXATION_3T,
    SEQUENCES,
    TISSUE_NAMES,
    draw_protocol,
    ir_gradient_echo,
    mr_signal,
    signal_equation,
    subject_table,
    tissue_table,
)

VOXEL_MM = 3.5
PURE = 0.8  # a voxel counts as one tissue when that tissue fills >= 80% of it


@pytest.fixture(scope="module")
def subjects():
    return {
        lesion: make_phantom_subject(index, seed=7, voxel_mm=VOXEL_MM, lesion=lesion)
        for index, lesion in enumerate(("none", "tumour", "stroke"))
    }


def mean_in(subject, modality, tissue):
    mask = subject.tissues[tissue] >= PURE
    assert mask.sum() >= 10, f"too few pure {tissue} voxels to compare"
    return float(subject.images[modality][mask].mean())


def brain_mean(subject, modality):
    mask = (subject.tissues["gm"] + subject.tissues["wm"]) >= PURE
    return float(subject.images[modality][mask].mean())


def test_csf_bright_on_t2w_dark_on_t1n_and_nulled_on_flair(subjects):
    s = subjects["none"]
    assert mean_in(s, "t2w", "csf") > 1.5 * mean_in(s, "t2w", "wm")
    assert mean_in(s, "t1n", "csf") < 0.8 * mean_in(s, "t1n", "wm")
    assert mean_in(s, "t2f", "csf") < 0.5 * mean_in(s, "t2f", "wm")


def test_grey_white_contrast_inverts_between_t1_and_t2(subjects):
    s = subjects["none"]
    assert mean_in(s, "t1n", "wm") > mean_in(s, "t1n", "gm")
    assert mean_in(s, "t2w", "gm") > mean_in(s, "t2w", "wm")


def test_bone_bright_on_ct_dark_on_mr(subjects):
    s = subjects["none"]
    assert mean_in(s, "ct", "bone") > 500.0
    assert mean_in(s, "ct", "bone") > brain_mean(s, "ct") + 400.0
    for modality in ("t1n", "t2w", "t2f", "pd"):
        assert mean_in(s, modality, "bone") < 0.5 * brain_mean(s, modality), modality


def test_ct_hounsfield_units_by_tissue(subjects):
    s = subjects["none"]
    assert mean_in(s, "ct", "air") == pytest.approx(-1000.0, abs=15.0)
    assert -150.0 < mean_in(s, "ct", "fat") < -30.0
    assert 0.0 < mean_in(s, "ct", "csf") < mean_in(s, "ct", "wm") < mean_in(s, "ct", "gm") < 60.0
    assert s.images["ct"].min() >= -1024.0


def test_scalp_fat_bright_on_t1n(subjects):
    s = subjects["none"]
    assert mean_in(s, "t1n", "fat") > 1.5 * mean_in(s, "t1n", "wm")


def test_stroke_bright_on_dwi_t2w_and_flair(subjects):
    s = subjects["stroke"]
    lesion = s.label == 4
    assert lesion.sum() >= 3
    around = ndimage.binary_dilation(lesion, iterations=3) & ~lesion & (s.tissues["wm"] >= PURE)
    assert around.sum() >= 10
    for modality in ("dwi", "t2w", "t2f"):
        image = s.images[modality]
        assert image[lesion].mean() > 1.2 * image[around].mean(), modality


def test_enhancing_rim_bright_on_t1c_only(subjects):
    s = subjects["tumour"]
    rim = s.label == 3
    wm = (s.tissues["wm"] >= PURE) & (s.label == 0)
    assert rim.sum() >= 3
    assert s.images["t1c"][rim].mean() > 1.3 * s.images["t1c"][wm].mean()
    assert s.images["t1n"][rim].mean() < s.images["t1n"][wm].mean()


def test_tumour_compartments_differ_between_contrasts(subjects):
    s = subjects["tumour"]
    wm = (s.tissues["wm"] >= PURE) & (s.label == 0)
    oedema, necrosis = s.label == 2, s.label == 1
    assert oedema.sum() >= 3 and necrosis.sum() >= 1
    assert s.images["t2f"][oedema].mean() > 1.5 * s.images["t2f"][wm].mean()
    assert s.images["t2w"][oedema].mean() > 1.5 * s.images["t2w"][wm].mean()
    assert s.images["t1n"][necrosis].mean() < 0.8 * s.images["t1n"][wm].mean()


def test_labels_match_lesion_type(subjects):
    assert set(np.unique(subjects["none"].label)) == {0}
    assert set(np.unique(subjects["tumour"].label)) == {0, 1, 2, 3}
    assert set(np.unique(subjects["stroke"].label)) == {0, 4}
    assert set(LABELS) == {1, 2, 3, 4}


def test_types_and_tissue_fractions(subjects):
    s = subjects["tumour"]
    assert set(s.images) == set(PHANTOM_MODALITIES)
    for image in s.images.values():
        assert image.dtype == np.float32 and image.shape == s.label.shape
        assert np.isfinite(image).all()
    assert s.label.dtype == np.uint8 and s.head_mask.dtype == np.uint8
    assert set(s.tissues) == set(TISSUE_NAMES)
    total = sum(s.tissues.values())
    np.testing.assert_allclose(total, 1.0, atol=1e-4)
    assert all(t.min() >= -1e-6 for t in s.tissues.values())
    assert s.head_mask[s.tissues["gm"] >= 0.5].all()
    assert not s.head_mask[s.tissues["air"] >= 0.5].any()
    for modality in PHANTOM_MODALITIES[:-1]:  # MR: arbitrary units, 0 to about 1000
        assert 0.0 <= s.images[modality].min() and s.images[modality].max() < 1500.0


def test_affine_is_ras_at_voxel_size(subjects):
    affine = subjects["none"].affine
    np.testing.assert_allclose(affine[:3, :3], np.eye(3) * VOXEL_MM)
    # The grid holds the whole head: it does not reach the sides, front, back or top.
    mask = subjects["none"].head_mask
    assert not mask[[0, -1]].any() and not mask[:, [0, -1]].any() and not mask[:, :, -1].any()


def test_flair_inversion_time_nulls_csf():
    signal = mr_signal(tissue_table(), SEQUENCES["t2f"])
    csf, wm = TISSUE_NAMES.index("csf"), TISSUE_NAMES.index("wm")
    assert abs(signal[csf]) < 1e-3 * signal[wm]


def test_ir_gradient_echo_matches_a_pulse_by_pulse_simulation():
    """The closed-form MPRAGE steady state against Mz followed pulse by pulse over many cycles."""
    sequence = ir_gradient_echo(ti_ms=1000.0, flip_deg=10.0)
    t1 = np.array([300.0, 958.0, 1576.0, 3817.0])
    n, spacing = sequence.n_readout, sequence.echo_spacing_ms
    ta = sequence.ti_ms - n / 2 * spacing
    td = sequence.tr_ms - ta - n * spacing
    cos_a = np.cos(np.deg2rad(sequence.flip_deg))

    def relax(mz, t):
        return mz * np.exp(-t / t1) + 1.0 - np.exp(-t / t1)

    mz = np.ones_like(t1)
    for _ in range(30):  # the steady state is reached within a few cycles
        mz = relax(-mz, ta)
        for k in range(n):
            if k == n // 2:
                centre = mz.copy()
            mz = relax(mz * cos_a, spacing)
        mz = relax(mz, td)
    expected = np.abs(centre) * np.sin(np.deg2rad(sequence.flip_deg)) * np.exp(-3.0 / 45.0)
    got = signal_equation(t1, 1.0, 1.0, 0.0, 0.0, 45.0, sequence)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_drawn_flair_nulls_csf_with_an_inversion_time_of_the_clinical_range():
    """FLAIR TI follows from TR (8-12 s) and the CSF T1; Aalten et al. 2014 use TI 2200-2800 ms."""
    rng = np.random.default_rng(0)
    csf = TISSUE_NAMES.index("csf")
    for _ in range(20):
        flair = draw_protocol(rng)["t2f"]
        assert (
            PROTOCOL_RANGES["t2f"]["tr_ms"][0] <= flair.tr_ms <= PROTOCOL_RANGES["t2f"]["tr_ms"][1]
        )
        assert 2200.0 <= flair.ti_ms <= 2800.0
        assert abs(mr_signal(tissue_table(), flair)[csf]) < 1e-6


def test_subject_relaxation_lies_between_the_sources_and_scales_at_one_and_a_half_tesla():
    low, high = RELAXATION_3T.values()
    for seed in range(10):
        at_3t = subject_table(np.random.default_rng(seed), 3.0)
        at_15t = subject_table(np.random.default_rng(seed), 1.5)
        for tissue in ("gm", "wm"):
            k = TISSUE_NAMES.index(tissue)
            for column in (0, 1):
                bounds = sorted((low[tissue][column], high[tissue][column]))
                assert bounds[0] <= at_3t[k, column] <= bounds[1]
            np.testing.assert_allclose(at_15t[k, :2], at_3t[k, :2] * FIELD_1P5T_SCALE, rtol=1e-12)
        csf = TISSUE_NAMES.index("csf")
        assert at_15t[csf, 0] == at_3t[csf, 0]  # nearly free water: no field dependence here


def test_same_seed_same_arrays_other_seed_differs(subjects):
    again = make_phantom_subject(1, seed=7, voxel_mm=VOXEL_MM, lesion="tumour")
    first = subjects["tumour"]
    for modality in PHANTOM_MODALITIES:
        assert np.array_equal(again.images[modality], first.images[modality]), modality
    assert np.array_equal(again.label, first.label)
    assert np.array_equal(again.head_mask, first.head_mask)
    other = make_phantom_subject(1, seed=8, voxel_mm=VOXEL_MM, lesion="tumour")
    assert not np.array_equal(other.images["t1n"], first.images["t1n"])
    assert not np.array_equal(other.head_mask, first.head_mask)
    neighbour = make_phantom_subject(2, seed=7, voxel_mm=VOXEL_MM, lesion="tumour")
    assert not np.array_equal(neighbour.head_mask, first.head_mask)


def test_bad_lesion_name_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match="glioma"):
        make_phantom_subject(0, seed=0, voxel_mm=VOXEL_MM, lesion="glioma")
    with pytest.raises(ValueError, match="bogus"):
        generate_phantom_dataset(tmp_path, 2, seed=0, voxel_mm=VOXEL_MM, lesions=("none", "bogus"))
    assert list(tmp_path.iterdir()) == []


def test_written_files_follow_layout_and_share_geometry(subjects, tmp_path):
    s = subjects["tumour"]
    folder = write_phantom_subject(s, tmp_path)
    assert folder == tmp_path / s.name
    expected = {f"{s.name}-{m}.nii.gz" for m in (*PHANTOM_MODALITIES, "seg", "mask")}
    assert {p.name for p in folder.iterdir()} == expected
    assert [p.name for p in tmp_path.iterdir()] == [s.name]  # no temporary folder left behind
    for modality in PHANTOM_MODALITIES:
        image = nib.load(folder / f"{s.name}-{modality}.nii.gz")
        assert image.shape == s.label.shape
        np.testing.assert_allclose(image.affine, s.affine)
        assert np.array_equal(np.asarray(image.dataobj), s.images[modality])
        assert image.get_data_dtype() == np.float32
    seg = nib.load(folder / f"{s.name}-seg.nii.gz")
    mask = nib.load(folder / f"{s.name}-mask.nii.gz")
    assert seg.get_data_dtype() == np.uint8 and mask.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(seg.dataobj), s.label)
    assert np.array_equal(np.asarray(mask.dataobj), s.head_mask)
    np.testing.assert_allclose(seg.affine, s.affine)
    assert nib.aff2axcodes(seg.affine) == ("R", "A", "S")


def test_failed_write_leaves_no_subject(subjects, tmp_path, monkeypatch):
    calls = []

    def failing_save(data, affine, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        nib.save(nib.Nifti1Image(data, affine), path)

    monkeypatch.setattr(phantom, "_save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_phantom_subject(subjects["none"], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_generate_dataset_cycles_lesions_and_resumes(tmp_path):
    names = generate_phantom_dataset(
        tmp_path, 3, seed=3, voxel_mm=VOXEL_MM, lesions=("stroke", "none")
    )
    assert names == ["phantom-000", "phantom-001", "phantom-002"]
    manifest = json.loads((tmp_path / "subjects.json").read_text())
    assert manifest["seed"] == 3 and manifest["voxel_mm"] == VOXEL_MM
    assert [(e["name"], e["lesion"]) for e in manifest["subjects"]] == [
        ("phantom-000", "stroke"),
        ("phantom-001", "none"),
        ("phantom-002", "stroke"),
    ]
    seg = np.asarray(nib.load(tmp_path / "phantom-002" / "phantom-002-seg.nii.gz").dataobj)
    assert 4 in seg
    listed = sorted(p.name for p in tmp_path.iterdir())  # the marker: made by dfbk phantom
    assert listed == [".dfbk-output.json", *names, "subjects.json"]

    kept = tmp_path / "phantom-000" / "phantom-000-t1n.nii.gz"
    before = kept.stat().st_mtime_ns
    missing = tmp_path / "phantom-001" / "phantom-001-ct.nii.gz"
    missing.unlink()
    generate_phantom_dataset(tmp_path, 3, seed=3, voxel_mm=VOXEL_MM, lesions=("stroke", "none"))
    assert kept.stat().st_mtime_ns == before  # complete subject skipped
    assert missing.exists()  # incomplete subject rebuilt

    with pytest.raises(ValueError, match="seed=3"):
        generate_phantom_dataset(tmp_path, 3, seed=4, voxel_mm=VOXEL_MM)
