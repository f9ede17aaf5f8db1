"""Dataset-shaped phantoms: read by the real adapters, skull-stripped where the data are, and
realistic by published facts rather than by eye (tissue order per sequence, contrast ratios and
lesion sizes in the ranges the cited literature gives, CT numbers, and a copy-the-input baseline
that scores as poorly as it does on real BraTS).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the MNI template ships inside nilearn

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, signal

from dfbk.data.datasets import get_adapter
from dfbk.data.io import read_volume
from dfbk.data.phantom.anatomy import _template, make_phantom_anatomy
from dfbk.data.phantom.layouts import (
    generate_layout_dataset,
    make_layout_subject,
    subject_folder,
    write_layout_subject,
)
from dfbk.data.phantom.tissues import lesion_literature_ratio_range, literature_ratio_range
from dfbk.data.slices.prepare import prepare_dataset
from dfbk.data.slices.store import SliceStore
from dfbk.evaluation.protocols import score_mr

PURE = 0.8  # a voxel counts as one tissue when that tissue fills >= 80% of it
DEMO_VOXEL_MM = 2.0  # the demo's grid (config/config.yaml)


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    """Two BraTS-like subjects on the demo's 2 mm grid, written in the layout; the subjects too."""
    root = tmp_path_factory.mktemp("brats") / "raw"
    subjects = [make_layout_subject("brats2023", i, seed=0, voxel_mm=DEMO_VOXEL_MM) for i in (0, 1)]
    for subject in subjects:
        write_layout_subject("brats2023", subject, root)
    return root, subjects


@pytest.fixture(scope="module")
def brats_raw(brats):
    return brats[0]


@pytest.fixture(scope="module")
def brats_subject(brats):
    return brats[1][0]


@pytest.fixture(scope="module")
def brats_subjects(brats):
    """Demo subjects 0-3 at 2 mm: 0 and 1 at 3 T with a 2-D spin-echo T1, 2 at 1.5 T, 3 with the
    3-D gradient-echo T1 (asserted where used), so every branch of the physics is measured."""
    more = [make_layout_subject("brats2023", i, seed=0, voxel_mm=DEMO_VOXEL_MM) for i in (2, 3)]
    return [*brats[1], *more]


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


def interior_mean(subject, modality, tissue):
    """Mean over the interior of a pure tissue: >= 80 % of the voxel and of its 6 neighbours, away
    from the lesion, so that blur and partial volume barely pull it towards other tissues."""
    near_lesion = ndimage.binary_dilation(subject.label > 0, iterations=3)
    mask = ndimage.binary_erosion(subject.tissues[tissue] >= PURE) & ~near_lesion
    assert mask.sum() >= 20, f"too few interior {tissue} voxels"
    return float(subject.images[modality][mask].mean())


def t1n_is_3d(subject):
    return subject.protocol["t1n"].kind == "irgre"


def test_fractions_sum_to_one_with_vessels_and_graded_oedema(brats_subjects):
    for s in brats_subjects:
        np.testing.assert_allclose(sum(s.tissues.values()), 1.0, atol=1e-5)
        assert s.tissues["vessel"].max() > 0.5 and s.tissues["oedema"].max() > 0.5


def test_demo_subjects_cover_both_fields_and_both_native_t1s(brats_subjects):
    assert [s.field_t for s in brats_subjects] == [3.0, 3.0, 1.5, 3.0]
    assert [t1n_is_3d(s) for s in brats_subjects] == [False, False, False, True]


# Pure-tissue contrast against the literature: the range `literature_ratio_range` computes from
# the relaxation times of Wansapura et al. (JMRI 1999) and Stanisz et al. (MRM 2005), CSF T1 of
# Lu et al. (JMRI 2005) and T2 of Piechnik et al. (MRM 2009), water content of Ernst et al.
# (JMR 1993), at 1.5 T scaled as Lu et al. report, through the sequences of the consensus brain
# tumour protocol (Ellingson et al., Neuro-Oncology 2015) with the TR/TE/TI ranges of Aalten et
# al. (BMC Neurology 2014). FLAIR nulls pure CSF (ratio 0 before noise and partial volume); on
# the T1c, CSF is as dark as the Rician noise floor, so its ratio is left to the T1's.
PURE_RATIOS = [
    ("t1n", "wm", "gm"),
    ("t1n", "csf", "wm"),
    ("t1c", "wm", "gm"),
    ("t2w", "gm", "wm"),
    ("t2w", "csf", "gm"),
    ("t2f", "gm", "wm"),
]


@pytest.mark.parametrize(("modality", "a", "b"), PURE_RATIOS)
def test_pure_tissue_ratios_fall_in_the_literature_range(brats_subjects, modality, a, b):
    for subject in brats_subjects:
        lo, hi = literature_ratio_range(modality, a, b, subject.field_t, t1n_is_3d(subject))
        ratio = interior_mean(subject, modality, a) / interior_mean(subject, modality, b)
        assert lo <= ratio <= hi, (subject.name, modality, a, b, ratio, (lo, hi))


def test_flair_suppresses_csf(brats_subjects):
    for s in brats_subjects:
        assert interior_mean(s, "t2f", "csf") < 0.4 * interior_mean(s, "t2f", "wm"), s.name


# Lesion / white matter, mean over the BraTS label against the interior of white matter: the
# range `lesion_literature_ratio_range` computes from the lesion relaxation times of de Blank et
# al. (MR fingerprinting, 2019: peritumoral white matter for oedema, high-grade tumour for the
# necrotic/non-enhancing core) relative to white matter, with the sources and protocol above.
LESION_RATIOS = [
    ("t1n", "necrosis", 1),
    ("t2w", "necrosis", 1),
    ("t2f", "necrosis", 1),
    ("t1n", "oedema", 2),
    ("t2w", "oedema", 2),
    ("t2f", "oedema", 2),
]


@pytest.mark.parametrize(("modality", "lesion", "label"), LESION_RATIOS)
def test_lesion_to_white_matter_ratios_fall_in_the_literature_range(
    brats_subjects, modality, lesion, label
):
    for s in brats_subjects:
        lo, hi = lesion_literature_ratio_range(modality, lesion, s.field_t, t1n_is_3d(s))
        ratio = float(s.images[modality][s.label == label].mean()) / interior_mean(
            s, modality, "wm"
        )
        assert lo <= ratio <= hi, (s.name, modality, lesion, ratio, (lo, hi))


def test_enhancing_rim_enhances_and_is_dark_before_contrast(brats_subjects):
    for s in brats_subjects:
        rim = s.label == 3
        assert s.images["t1c"][rim].mean() > 1.3 * interior_mean(s, "t1c", "wm"), s.name
        assert s.images["t1n"][rim].mean() < interior_mean(s, "t1n", "wm"), s.name


def test_oedema_fades_from_the_tumour_to_its_margin(brats_subjects):
    """Vasogenic oedema is wettest next to the tumour: the third of the oedema label nearest the
    core is brighter on FLAIR and T2 than the farthest third (a uniform oedema gives ~1)."""
    for s in brats_subjects:
        core = np.isin(s.label, (1, 3))
        distance = ndimage.distance_transform_edt(~core, sampling=DEMO_VOXEL_MM)
        oedema = s.label == 2
        near = oedema & (distance <= np.percentile(distance[oedema], 33))
        far = oedema & (distance >= np.percentile(distance[oedema], 67))
        for modality in ("t2f", "t2w"):
            image = s.images[modality]
            assert image[near].mean() > 1.1 * image[far].mean(), (s.name, modality)


def test_grey_and_white_matter_make_separate_histogram_peaks(brats_subjects):
    """Real T1 and T2 histograms show a grey- and a white-matter peak; texture, noise and
    partial volume must not merge them. Each peak within 6 % of its tissue's interior mean."""
    for s in brats_subjects:
        brain = (s.head_mask > 0) & ~ndimage.binary_dilation(s.label > 0, iterations=3)
        for modality in ("t1n", "t2w"):
            values = s.images[modality][brain]
            counts, edges = np.histogram(
                values, 128, range=tuple(np.percentile(values, (0.5, 99.5)))
            )
            counts = ndimage.gaussian_filter1d(counts.astype(float), 1.5)
            peaks, _ = signal.find_peaks(counts, prominence=0.05 * counts.max())
            centres = 0.5 * (edges[1:] + edges[:-1])[peaks]
            for tissue in ("gm", "wm"):
                target = interior_mean(s, modality, tissue)
                assert np.any(np.abs(centres / target - 1) < 0.06), (s.name, modality, tissue)


def test_vessels_enhance_on_t1c_and_are_dark_on_flair(brats_subjects):
    """Pial vessels, the sagittal sinus and the choroid plexus: bright on the gradient-echo T1c
    (gadolinium), dark on FLAIR (flow void), a few to tens of millilitres."""
    for s in brats_subjects:
        vessel = s.tissues["vessel"] >= 0.5
        volume_ml = s.tissues["vessel"].sum() * DEMO_VOXEL_MM**3 / 1000
        assert 2.0 < volume_ml < 40.0, (s.name, volume_ml)
        assert s.images["t1c"][vessel].mean() > 1.5 * interior_mean(s, "t1c", "wm"), s.name
        assert s.images["t2f"][vessel].mean() < 0.8 * interior_mean(s, "t2f", "wm"), s.name


def test_tumour_sizes_follow_the_glioblastoma_literature():
    """Eight demo subjects (anatomy only): median enhancing volume within the interquartile
    range of preoperative glioblastomas, 8.2-41.7 ml (median 18.2 ml; World Neurosurg 115:e448,
    2018), and oedema reaching both under and over 1 cm beyond the tumour, the two classes of
    Schoenegger et al. (Eur J Neurol 2009)."""
    enhancing, reach = [], []
    for index in range(8):
        _, label = make_phantom_anatomy(
            index,
            0,
            DEMO_VOXEL_MM,
            "tumour",
            structure=True,
            head=False,
            extent_mm=(240.0, 240.0, 155.0),
        )
        enhancing.append((label == 3).sum() * DEMO_VOXEL_MM**3 / 1000)
        core = np.isin(label, (1, 3))
        distance = ndimage.distance_transform_edt(~core, sampling=DEMO_VOXEL_MM)
        reach.append(np.percentile(distance[label == 2], 95))
    assert 8.2 <= np.median(enhancing) <= 41.7, enhancing
    assert min(reach) < 10.0 < max(reach), reach


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
