"""Dataset-shaped phantoms: read by the real adapters, skull-stripped where the data are, and
realistic by published facts rather than by eye (tissue order per sequence, CT numbers, and a
copy-the-input baseline that scores as poorly as it does on real BraTS).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the MNI template ships inside nilearn

import nibabel as nib
import numpy as np
import pytest

from dfbk.data.datasets import get_adapter
from dfbk.data.io import read_volume
from dfbk.data.phantom.anatomy import _template
from dfbk.data.phantom.layouts import (
    generate_layout_dataset,
    make_layout_subject,
    subject_folder,
    write_layout_subject,
)
from dfbk.data.slices.prepare import prepare_dataset
from dfbk.data.slices.store import SliceStore
from dfbk.evaluation.protocols import score_mr

PURE = 0.8  # a voxel counts as one tissue when that tissue fills >= 80% of it
DEMO_VOXEL_MM = 2.0  # the demo's grid (config/config.yaml)


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    """Two BraTS-like subjects on the demo's 2 mm grid, written in the layout; subject 0 too."""
    root = tmp_path_factory.mktemp("brats") / "raw"
    subjects = [make_layout_subject("brats2023", i, seed=0, voxel_mm=DEMO_VOXEL_MM) for i in (0, 1)]
    for subject in subjects:
        write_layout_subject("brats2023", subject, root)
    return root, subjects[0]


@pytest.fixture(scope="module")
def brats_raw(brats):
    return brats[0]


@pytest.fixture(scope="module")
def brats_subject(brats):
    return brats[1]


@pytest.fixture(scope="module")
def synthrad_subject():
    return make_layout_subject("synthrad2023", 0, seed=5, voxel_mm=3.0, lesion="none")


def pure_mean(subject, modality, tissue):
    mask = subject.tissues[tissue] >= PURE
    assert mask.sum() >= 20, f"too few pure {tissue} voxels"
    return float(subject.images[modality][mask].mean())


# Grey/white/CSF order on clinical 1.5-3 T brain images (T1-weighted spin echo, T2-weighted
# fast spin echo, FLAIR) is textbook; the ratio bounds are deliberately broad (they catch a
# wrong sign or a lost contrast, not a few percent).
@pytest.mark.parametrize(
    ("modality", "order", "ratio_bounds"),
    [
        ("t1n", ("wm", "gm", "csf"), {("wm", "gm"): (1.05, 1.6), ("csf", "wm"): (0.0, 0.6)}),
        ("t2w", ("csf", "gm", "wm"), {("gm", "wm"): (1.05, 2.0), ("csf", "gm"): (1.5, 20.0)}),
        ("t2f", ("gm", "wm", "csf"), {("gm", "wm"): (1.05, 1.6), ("csf", "wm"): (0.0, 0.5)}),
    ],
)
def test_tissue_order_and_contrast_per_sequence(brats_subject, modality, order, ratio_bounds):
    means = {t: pure_mean(brats_subject, modality, t) for t in ("gm", "wm", "csf")}
    assert [means[t] for t in order] == sorted(means.values(), reverse=True), means
    for (a, b), (lo, hi) in ratio_bounds.items():
        assert lo <= means[a] / means[b] <= hi, (modality, a, b, means)


def test_ct_numbers_bone_far_above_grey_above_white_above_csf_above_fat(synthrad_subject):
    hu = {t: pure_mean(synthrad_subject, "ct", t) for t in ("bone", "gm", "wm", "csf", "fat")}
    assert hu["bone"] > 500 > hu["gm"] > hu["wm"] > hu["csf"] > hu["fat"], hu
    assert 20 < hu["gm"] < 60 and 15 < hu["wm"] < 45 and -10 < hu["csf"] < 25, hu
    assert -150 < hu["fat"] < -50, hu


def test_texture_varies_tissue_beyond_noise():
    """Same subject with and without structure: pure white matter varies more with texture."""
    from dfbk.data.phantom.anatomy import make_phantom_subject

    plain = make_phantom_subject(1, seed=2, voxel_mm=4.0, head=False)
    textured = make_phantom_subject(1, seed=2, voxel_mm=4.0, head=False, structure=True)
    spread = []
    for s in (plain, textured):
        wm = s.images["t2w"][s.tissues["wm"] >= 0.95]
        spread.append(wm.std() / wm.mean())
    assert spread[1] > 1.2 * spread[0], spread


def test_brats_layout_read_by_the_real_adapter_with_brain_only_foreground(brats_raw, brats_subject):
    subjects = get_adapter("brats2023").find_subjects(brats_raw)
    assert [s.name for s in subjects] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    files = subjects[0]
    assert not files.missing and not files.problems
    t1 = nib.load(files.images["t1n"])
    assert nib.aff2axcodes(t1.affine) == ("L", "P", "S")  # stored like the released volumes
    assert t1.shape == (120, 120, 78)  # the 240 x 240 x 155 mm BraTS field of view at 2 mm
    volume = read_volume(files.images["t2f"])  # canonical RAS, as prepare reads it
    brain = brats_subject.tissues["air"] < 0.5
    assert np.array_equal(volume.data != 0, brain)
    for tissue in ("bone", "fat", "skin"):
        assert brats_subject.tissues[tissue].max() == 0.0
    label = read_volume(files.label).data
    assert set(np.unique(label)) == {0, 1, 2, 3}
    assert not (label[~brain] > 0).any()


def test_brats_grid_at_one_mm_is_the_challenge_grid():
    assert _template(1.0, (240.0, 240.0, 155.0)).gm.shape == (240, 240, 155)


# Copy-the-input baseline, foreground SSIM under the BraTS protocol: on real skull-stripped BraTS
# 2023 it is well under 0.3 for T1->FLAIR and about 0 for T1->T2; the phantom must stay
# within <= 0.35 and <= 0.15. Measured on the demo's 8 subjects at 2 mm in docs/phantom.md.
COPY_SSIM_BOUNDS = {"t2w": 0.15, "t2f": 0.35}


def test_copy_baseline_scores_poorly_as_on_real_brats(brats_raw, tmp_path):
    """Identity (T1 copied as the prediction) through prepare and the BraTS scoring."""
    prepare_dataset("brats2023", brats_raw, tmp_path / "store", ["t1n", "t2w", "t2f"], (128, 128))
    store = SliceStore(tmp_path / "store")
    for target, bound in COPY_SSIM_BOUNDS.items():
        scores = []
        for subject in store.subjects:
            rows = slice(*store.subject_range(subject))
            _, volume = score_mr(
                store.images("t1n")[rows],
                store.images(target)[rows],
                store.mask[rows] > 0,
                store.label[rows] > 0,
            )
            scores.append(volume["ssim_fg"])
        assert np.mean(scores) <= bound, (target, scores)


def test_isles_layout_mha_and_nii_with_a_binary_stroke_label(tmp_path):
    root = tmp_path / "raw"
    generate_layout_dataset("isles2015", root, 2, seed=1, voxel_mm=4.0)
    subjects = get_adapter("isles2015").find_subjects(root)
    assert [s.name for s in subjects] == ["1", "2"]
    suffixes = [{p.suffix for p in s.images.values()} for s in subjects]
    assert suffixes == [{".mha"}, {".nii"}]
    for files in subjects:
        assert not files.missing and not files.problems
        flair = read_volume(files.images["t2f"]).data
        label = read_volume(files.label).data
        assert set(np.unique(label)) == {0, 1}
        assert (flair[label > 0] > 0).all()  # the lesion lies inside the stripped brain
    assert np.allclose(
        read_volume(subjects[0].images["dwi"]).affine[:3, :3], np.diag([4.0, 4.0, 4.0])
    )


def test_synthrad_layout_whole_head_with_a_dilated_body_mask(tmp_path, synthrad_subject):
    root = tmp_path / "raw"
    generate_layout_dataset("synthrad2023", root, 1, seed=5, voxel_mm=3.0)
    case = subject_folder("synthrad2023", root, "1BA001")
    (files,) = get_adapter("synthrad2023").find_subjects(root)
    assert files.name == "1BA001" and files.mask == case / "mask.nii.gz"
    mask = read_volume(files.mask).data > 0
    ct = read_volume(files.images["ct"]).data
    head = synthrad_subject.head_mask > 0
    assert mask[head].all() and mask.sum() > head.sum()  # dilated beyond the head
    assert (ct[synthrad_subject.tissues["bone"] >= PURE] > 500).all()  # skull kept
    assert ct.min() >= -1024.0


def test_layout_refuses_other_settings_and_wrong_lesions(tmp_path):
    with pytest.raises(ValueError, match="brats2023 phantom: lesion 'stroke'"):
        generate_layout_dataset("brats2023", tmp_path / "a", 1, 0, 4.0, ("stroke",))
    with pytest.raises(ValueError, match="unknown phantom layout 'brats'"):
        generate_layout_dataset("brats", tmp_path / "b", 1, 0, 4.0)
    generate_layout_dataset("synthrad2023", tmp_path / "c", 1, 0, 4.0)
    with pytest.raises(ValueError, match=r"phantom\.json: made with .*seed=0"):
        generate_layout_dataset("synthrad2023", tmp_path / "c", 1, 1, 4.0)
