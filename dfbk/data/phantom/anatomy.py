"""Synthetic multi-contrast head phantom: paired MR (t1n, t1c, t2w, t2f, pd, dwi) and CT.

Why: the embedded benchmark must run with no download and no login, yet translate between images
that look like heads, with real contrast relationships (CSF bright on T2, nulled on FLAIR; bone
dark on MR and bright on CT) and lesions that differ between contrasts. Anatomy comes from the
MNI152 (ICBM 2009a) template and grey/white-matter probability maps shipped inside nilearn; each
subject is a random smooth deformation of it, wrapped in a skull and a scalp of random smooth
thickness, with optional tumour or stroke. Images follow the MR signal equations of
`dfbk.data.phantom.tissues` at 3 T, then a smooth coil bias field and Rician noise; CT is in HU.
On disk each subject is a BraTS-like folder `phantom-{i:03d}/phantom-{i:03d}-{modality}.nii.gz`
plus `-seg` (labels 0-4) and `-mask` (head), read by `dfbk.data.datasets.base.PhantomAdapter`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from dfbk.data.outputs import claim_folder, mark
from dfbk.data.phantom import tissues as phantom_tissues
from dfbk.data.phantom.tissues import (
    LESION_LABELS,
    TISSUE_NAMES,
    render_images,
    smooth_noise,
    texture_fields,
)

PHANTOM_MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f", "pd", "dwi", "ct")
LABELS: dict[int, str] = {1: "necrosis", 2: "oedema", 3: "enhancing", 4: "stroke"}
LESION_TYPES: tuple[str, ...] = ("none", "tumour", "stroke")

_MARGIN_MM = 20.0  # air around the brain's bounding box: room for skull + scalp (<= 17 mm)


@dataclass
class PhantomSubject:
    """One synthetic subject; all arrays share the (X, Y, Z) grid of `affine` (RAS+, mm).

    `images`: modality -> float32 volume (MR in arbitrary units ~0-1000, CT in HU);
    `label`: uint8, 0 background, 1 necrosis, 2 oedema, 3 enhancing rim, 4 stroke;
    `head_mask`: uint8, 1 inside the head (brain + skull + scalp);
    `tissues`: tissue -> float32 partial-volume fraction in [0, 1] (ground truth for tests);
    `protocol`: modality -> the sequence it was rendered with; `field_t`: field strength (T).
    """

    name: str
    images: dict[str, np.ndarray]
    label: np.ndarray
    head_mask: np.ndarray
    affine: np.ndarray
    tissues: dict[str, np.ndarray] = field(default_factory=dict)
    protocol: dict[str, phantom_tissues.Sequence] = field(default_factory=dict)
    field_t: float = 3.0


@dataclass(frozen=True)
class _Template:
    """MNI grey matter, white matter and brain fractions resampled to the phantom grid."""

    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    affine: np.ndarray


@functools.lru_cache(maxsize=1)
def _mni_1mm() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GM, WM and brain-mask fractions of the 1 mm MNI152 (ICBM 2009a) maps, and their affine.

    These files ship inside the nilearn package, so loading them needs no network.
    """
    from nilearn import datasets  # slow import (~1 s), only needed once

    images = [
        datasets.load_mni152_gm_template(resolution=1),
        datasets.load_mni152_wm_template(resolution=1),
        datasets.load_mni152_brain_mask(resolution=1),
    ]
    gm, wm, mask = (np.clip(np.asarray(img.get_fdata(), np.float32), 0, 1) for img in images)
    for volume in (gm, wm, mask):
        volume.setflags(write=False)  # shared by the cache
    return gm, wm, mask, images[0].affine


TISSUE_SHARPENING = 3.0  # exponent that turns the template's probabilities into tissue fractions


def _sharpen(gm: np.ndarray, wm: np.ndarray, brain: np.ndarray):
    """Grey and white matter fractions of one brain from the population's probability maps.

    MNI152's maps average 152 registered brains, so over several millimetres around every
    boundary a voxel is "half grey, half white": rendered as fractions, its tissues blend into
    a continuum and the image histogram loses the separate grey- and white-matter peaks of a
    real scan. Raising the three probabilities (grey, white, CSF) to `TISSUE_SHARPENING` and
    renormalising keeps each voxel's most likely tissue and confines mixing to the boundary.
    """
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    powered = [np.power(p, TISSUE_SHARPENING) for p in (gm, wm, csf)]
    total = np.maximum(sum(powered), 1e-12)
    return (brain * powered[0] / total).astype(np.float32), (brain * powered[1] / total).astype(
        np.float32
    )


@functools.lru_cache(maxsize=8)
def _template(
    voxel_mm: float, extent_mm: tuple[float, float, float] | None = None, sharp: bool = False
) -> _Template:
    """The MNI152 maps resampled to an isotropic `voxel_mm` grid (cached per grid).

    By default the grid is the brain's bounding box plus `_MARGIN_MM` of air (not extended below
    the template, where the brainstem is cut); with `extent_mm` it is a field of view of that
    size (e.g. BraTS's 240 x 240 x 155 mm) centred on the brain. Maps are Gaussian-smoothed
    before linear resampling so coarse voxels hold partial-volume fractions rather than aliased
    samples. `sharp`: one brain's tissue fractions rather than the population's probabilities
    (`_sharpen`, at 1 mm before resampling).
    """
    gm, wm, mask, affine_1mm = _mni_1mm()
    brain = np.clip(np.maximum(mask, gm + wm), 0, 1)
    if sharp:
        gm, wm = _sharpen(gm, wm, brain)

    inside = np.argwhere(mask > 0.5)
    lo_mm = affine_1mm[:3, :3] @ inside.min(0) + affine_1mm[:3, 3] - _MARGIN_MM
    hi_mm = affine_1mm[:3, :3] @ inside.max(0) + affine_1mm[:3, 3] + _MARGIN_MM
    lo_mm[2] = max(lo_mm[2], affine_1mm[2, 3])
    if extent_mm is None:
        shape = tuple(int(n) for n in np.floor((hi_mm - lo_mm) / voxel_mm) + 1)
    else:
        shape = tuple(int(round(e / voxel_mm)) for e in extent_mm)
    start_mm = (lo_mm + hi_mm) / 2 - (np.array(shape) - 1) * voxel_mm / 2
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = start_mm

    sigma = np.sqrt(max(voxel_mm**2 - 1.0, 0.0)) / 2.355  # FWHM of the new voxel, in 1 mm voxels
    scale = np.diag(affine_1mm[:3, :3])
    offset = (start_mm - affine_1mm[:3, 3]) / scale

    def resample(volume: np.ndarray) -> np.ndarray:
        smooth = ndimage.gaussian_filter(volume, sigma) if sigma > 0 else volume
        out = ndimage.affine_transform(
            smooth, voxel_mm / scale, offset, output_shape=shape, order=1, cval=0.0
        )
        out = np.clip(out, 0, 1).astype(np.float32)
        out.setflags(write=False)  # shared by the cache
        return out

    return _Template(gm=resample(gm), wm=resample(wm), brain=resample(brain), affine=affine)


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation matrix from angles about x, y, z (radians)."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _deform_brain(
    template: _Template, rng: np.random.Generator, voxel_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp the template maps: size 0.90-1.01 per axis (MNI152 is larger than most brains),
    rotation +-4 deg and a smooth displacement of SD 1-2 mm (peaks of 3-6 mm).

    Returns (gm, wm, brain) float32 fractions; the warp is an inverse map (pull-back).
    """
    shape = template.gm.shape
    size = rng.uniform(0.90, 1.01, 3)
    matrix = _rotation(np.deg2rad(rng.uniform(-4, 4, 3))) / size[None, :]
    centre = (np.array(shape, np.float32) - 1) / 2
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None]
    coords = (matrix.astype(np.float32) @ grid) + centre[:, None]
    amplitude = rng.uniform(1.0, 2.0) / voxel_mm
    for axis in range(3):
        coords[axis] += amplitude * smooth_noise(rng, shape, 16.0 / voxel_mm).ravel()
    return tuple(
        ndimage.map_coordinates(m, coords, order=1, cval=0.0, output=np.float32).reshape(shape)
        for m in (template.gm, template.wm, template.brain)
    )


def _ramp(x_mm: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of a voxel whose centre lies `x_mm` inside a boundary."""
    return np.clip(x_mm / voxel_mm + 0.5, 0.0, 1.0)


def _head_layers(brain: np.ndarray, rng: np.random.Generator, voxel_mm: float) -> dict:
    """Skull, scalp fat and skin/muscle shells around the brain, from its distance transform.

    Thicknesses vary smoothly over the head: bone 4-8 mm, fat 2-6 mm, skin/muscle 1.5-3 mm.
    Returns tissue -> fraction of the non-brain part (1 - brain) of each voxel, plus air.
    """
    solid = ndimage.binary_fill_holes(brain >= 0.5)
    distance = ndimage.distance_transform_edt(~solid, sampling=voxel_mm).astype(np.float32)
    distance = np.where(solid, -voxel_mm / 2, distance - voxel_mm / 2)  # mm outside the surface
    shape, spacing = brain.shape, 30.0 / voxel_mm
    bone = np.clip(rng.uniform(5.0, 6.5) + 1.0 * smooth_noise(rng, shape, spacing), 4.0, 8.0)
    fat = np.clip(rng.uniform(3.0, 4.5) + 1.0 * smooth_noise(rng, shape, spacing), 2.0, 6.0)
    skin = np.clip(rng.uniform(1.8, 2.5) + 0.4 * smooth_noise(rng, shape, spacing), 1.5, 3.0)
    outside = 1.0 - brain
    inner = _ramp(bone - distance, voxel_mm)
    middle = _ramp(bone + fat - distance, voxel_mm)
    outer = _ramp(bone + fat + skin - distance, voxel_mm)
    return {
        "bone": outside * inner,
        "fat": outside * (middle - inner),
        "skin": outside * (outer - middle),
        "air": outside * (1.0 - outer),
    }


def _brain_depth(tissues: dict, voxel_mm: float) -> np.ndarray:
    """Distance (mm) of each voxel inside the brain to its surface, computed once per subject."""
    if "_depth" not in tissues:
        brain = tissues["brain"] >= 0.5
        tissues["_depth"] = ndimage.distance_transform_edt(brain, sampling=voxel_mm)
    return tissues["_depth"]


def _lesion_site(tissues: dict, rng: np.random.Generator, voxel_mm: float, depth_mm: float):
    """A white-matter voxel at least `depth_mm` inside the brain (deepest WM if none is)."""
    depth = _brain_depth(tissues, voxel_mm)
    candidates = np.flatnonzero((tissues["wm"] >= 0.9).ravel() & (depth.ravel() >= depth_mm))
    if candidates.size == 0:
        candidates = np.array([np.argmax(tissues["wm"] * depth)])
    return np.array(np.unravel_index(rng.choice(candidates), depth.shape))


SULCUS_WIDTH_MM = (0.5, 1.0)  # CSF-filled sulcal gap between the grey-matter banks
SULCUS_SPACING_MM = 9.0  # correlation length of the field whose zero set draws the sulci
CORTEX_DEPTH_MM = 18.0  # sulci are cut into grey matter no deeper than this below the surface


def _add_sulci(tissues: dict, rng: np.random.Generator, voxel_mm: float) -> None:
    """Cut thin CSF-filled sulci into the cortical grey matter (partial volume kept).

    The MNI152 maps are an average of 152 brains, so most sulci are blurred away. Here the zero
    set of a smooth random field (a maze of folded sheets about `SULCUS_SPACING_MM` apart)
    draws new ones: a voxel at distance d (mm) from it loses the fraction
    clip((w/2 - d)/voxel + 1/2, 0, 1) of its grey matter to CSF, within the outer
    `CORTEX_DEPTH_MM` of the brain only, so deep grey nuclei stay whole.
    """
    shape = tissues["gm"].shape
    sigma = SULCUS_SPACING_MM / voxel_mm / 2.0
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    gradient = np.sqrt(sum(g**2 for g in np.gradient(field))) / voxel_mm  # per mm
    distance = np.abs(field) / np.maximum(gradient, 1e-6)
    width = rng.uniform(*SULCUS_WIDTH_MM)
    gap = np.clip((width / 2 - distance) / voxel_mm + 0.5, 0.0, 1.0)
    depth = _brain_depth(tissues, voxel_mm)
    gap *= np.clip((CORTEX_DEPTH_MM - depth) / 4.0, 0.0, 1.0)  # fade out over 4 mm
    moved = (tissues["gm"] * gap).astype(np.float32)
    tissues["gm"] -= moved
    tissues["csf"] += moved
    tissues["_sulcus_distance"] = distance.astype(np.float32)  # mm to the nearest sulcal sheet


VESSEL_RADIUS_MM = (0.8, 1.5)  # pial arteries and cortical veins
SINUS_RADIUS_MM = (2.0, 3.0)  # superior sagittal sinus
VESSEL_DEPTH_MM = 1.5  # pial vessels run in the sulci at the brain surface
VESSEL_SHARE = 0.25  # share of the sulcal network at the surface that carries a visible vessel


def _tube(distance_mm: np.ndarray, radius_mm: float, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of a tube of `radius_mm` at `distance_mm` from its axis."""
    return np.clip((radius_mm - distance_mm) / voxel_mm + 0.5, 0.0, 1.0).astype(np.float32)


def _add_vessels(tissues: dict, rng: np.random.Generator, voxel_mm: float) -> None:
    """Blood vessels where a skull-stripped brain keeps them: pial vessels, sinus, choroid plexus.

    Pial arteries and cortical veins run in the sulci over the brain surface: tubes along the
    curves where the sulcal sheets (`tissues["_sulcus_distance"]`) meet the surface-parallel
    shell at `VESSEL_DEPTH_MM`, kept where a smooth selector field picks `VESSEL_SHARE` of them.
    The superior sagittal sinus follows the midline over the top of the brain; choroid plexus
    clumps lie in the deep CSF of the ventricles. All take blood's properties (`vessel`): dark
    on spin echoes (flow void), bright on the gradient-echo T1c. Vessels displace the tissue
    they lie in and avoid the lesion.
    """
    depth = _brain_depth(tissues, voxel_mm)
    shape = depth.shape
    brain = tissues["brain"]
    shell = np.abs(depth - VESSEL_DEPTH_MM)
    selector = smooth_noise(rng, shape, 20.0 / voxel_mm)
    keep = selector > np.quantile(selector, 1.0 - VESSEL_SHARE)
    sulcus = tissues.get("_sulcus_distance")
    vessel = np.zeros(shape, np.float32)
    if sulcus is not None:
        radius = rng.uniform(*VESSEL_RADIUS_MM)
        vessel = np.where(keep, _tube(np.hypot(sulcus, shell), radius, voxel_mm), 0.0)
    # Superior sagittal sinus: the midline (x) over the upper half of the brain.
    inside = np.argwhere(brain >= 0.5)
    centre = inside.mean(0)
    x = (np.arange(shape[0]) - centre[0])[:, None, None] * voxel_mm
    upper = (np.arange(shape[2]) > centre[2])[None, None, :]
    sinus_r = rng.uniform(*SINUS_RADIUS_MM)
    sinus = _tube(np.hypot(x, np.abs(depth - sinus_r)), sinus_r, voxel_mm) * upper
    vessel = np.maximum(vessel, sinus)
    # Choroid plexus: clumps in the ventricles' deep CSF.
    ventricles = (tissues["csf"] >= 0.5) & (depth >= 20.0)
    clumps = smooth_noise(rng, shape, 3.0 / voxel_mm) > 1.0
    vessel = np.maximum(vessel, (ventricles & clumps).astype(np.float32) * 0.8)
    lesion = sum(tissues[t] for t in LESION_LABELS)
    share = vessel * np.clip(1.0 - 4.0 * lesion, 0.0, 1.0)  # of the voxel's brain part
    for name in ("gm", "wm", "csf", *LESION_LABELS):
        tissues[name] *= 1.0 - share
    tissues["vessel"] = (share * brain).astype(np.float32)


def _lesion_radius(
    tissues: dict, rng, voxel_mm: float, centre, reach_mm: float, irregular: bool = False
):
    """Box around `centre` and the irregular ellipsoidal radius (mm) of its voxels.

    `irregular`: lobulated outline (bumps of +-25% at 6 mm and +-10% at 2.5 mm) instead of the
    gentle +-12% one.
    """
    shape = tissues["wm"].shape
    half = int(np.ceil(reach_mm / voxel_mm)) + 2
    box = tuple(
        slice(max(c - half, 0), min(c + half + 1, n)) for c, n in zip(centre, shape, strict=True)
    )
    axes = rng.uniform(0.8, 1.25, 3)
    offsets = np.ogrid[box]
    squared = sum(
        ((o - c) * voxel_mm / a) ** 2 for o, c, a in zip(offsets, centre, axes, strict=True)
    )
    local = tuple(s.stop - s.start for s in box)
    if irregular:
        bumps = 1.0 + 0.25 * smooth_noise(rng, local, 6.0 / voxel_mm)
        bumps += 0.10 * smooth_noise(rng, local, max(2.5 / voxel_mm, 1.0))
        bumps = np.maximum(bumps, 0.4)
    else:
        bumps = 1.0 + 0.12 * smooth_noise(rng, local, 6.0 / voxel_mm)
    return box, (np.sqrt(squared) / bumps).astype(np.float32)


TUMOUR_RADIUS_MM = (10.0, 26.0)  # outer radius of the enhancing rim
RIM_THICKNESS_MM = (3.0, 9.0)
OEDEMA_EXTENT_MM = (2.0, 16.0)  # beyond the enhancing rim: "minor" (< 1 cm) to "major" (> 1 cm)
OEDEMA_MARGIN_GRADE = (0.2, 0.4)  # share of full oedema left at its outer margin


def _add_tumour(
    tissues: dict, rng: np.random.Generator, voxel_mm: float, irregular: bool = False
) -> None:
    """Glioblastoma-like lesion: necrotic core, enhancing rim 3-9 mm, white-matter oedema.

    The core and rim displace all brain tissue; oedema replaces white matter only (vasogenic
    oedema spreads along fibre tracts and spares the cortex). Sizes: `TUMOUR_RADIUS_MM` and
    `RIM_THICKNESS_MM` give enhancing volumes around the preoperative glioblastomas' median of
    18.2 ml, interquartile range 8.2-41.7 ml (World Neurosurg 115:e448, 2018); the
    oedema reaches `OEDEMA_EXTENT_MM` beyond the rim (Schoenegger et al., Eur J Neurol 16:874,
    2009, class oedema as minor, < 1 cm, or major, > 1 cm). With `irregular` (the dataset-shaped
    phantoms) the oedema is graded: `tissues["_oedema_grade"]` falls from 1 at the rim to
    `OEDEMA_MARGIN_GRADE` at the margin, where it fades into white matter.
    """
    outer = rng.uniform(*TUMOUR_RADIUS_MM)  # outer radius of the enhancing rim
    core = outer - max(rng.uniform(*RIM_THICKNESS_MM), 1.5 * voxel_mm)
    oedema_reach = outer + rng.uniform(*OEDEMA_EXTENT_MM)
    margin_grade = rng.uniform(*OEDEMA_MARGIN_GRADE)
    centre = _lesion_site(tissues, rng, voxel_mm, outer + 4.0)
    box, radius = _lesion_radius(tissues, rng, voxel_mm, centre, 1.3 * oedema_reach, irregular)
    brain = tissues["brain"][box]
    mass = _ramp(outer - radius, voxel_mm)
    swelling = _ramp(oedema_reach - radius, voxel_mm)
    tissues["necrosis"][box] = brain * _ramp(core - radius, voxel_mm)
    tissues["enhancing"][box] = brain * mass - tissues["necrosis"][box]
    tissues["oedema"][box] = tissues["wm"][box] * (swelling - mass)
    tissues["wm"][box] *= 1.0 - swelling
    tissues["gm"][box] *= 1.0 - mass
    tissues["csf"][box] *= 1.0 - mass
    if irregular:
        depth = np.clip((radius - outer) / max(oedema_reach - outer, 1e-6), 0.0, 1.0)
        grade = np.zeros_like(tissues["wm"])
        grade[box] = 1.0 - (1.0 - margin_grade) * depth
        tissues["_oedema_grade"] = grade


def _add_stroke(
    tissues: dict, rng: np.random.Generator, voxel_mm: float, irregular: bool = False
) -> None:
    """Acute infarct of radius 8-16 mm: cytotoxic oedema replaces grey and white matter."""
    reach = rng.uniform(8.0, 16.0)
    centre = _lesion_site(tissues, rng, voxel_mm, reach + 2.0)
    box, radius = _lesion_radius(tissues, rng, voxel_mm, centre, 1.3 * reach, irregular)
    infarct = _ramp(reach - radius, voxel_mm)
    tissues["stroke"][box] = (tissues["gm"][box] + tissues["wm"][box]) * infarct
    tissues["gm"][box] *= 1.0 - infarct
    tissues["wm"][box] *= 1.0 - infarct


def _anatomy(
    template: _Template,
    rng: np.random.Generator,
    lesion_rng,
    voxel_mm,
    lesion,
    structure: bool = False,
    head: bool = True,
):
    """Tissue fractions (sum to 1 per voxel) of one subject, including the lesion, and the
    oedema grade (None unless `structure` and a tumour).

    `structure`: cut sulci into the cortex, add blood vessels and give lesions lobulated
    outlines and graded oedema. `head`: wrap the brain in skull, scalp fat and skin (without it,
    everything outside the brain is air).
    """
    gm, wm, brain = _deform_brain(template, rng, voxel_mm)
    scale = np.minimum(1.0, brain / np.maximum(gm + wm, 1e-6))  # GM + WM never exceed the brain
    tissues = {"gm": gm * scale, "wm": wm * scale, "brain": brain}
    tissues["csf"] = np.clip(brain - tissues["gm"] - tissues["wm"], 0, 1)  # sulci + ventricles
    if structure:
        _add_sulci(tissues, rng, voxel_mm)
    if head:
        tissues.update(_head_layers(brain, rng, voxel_mm))
    else:
        zero = np.zeros_like(brain)
        tissues.update(bone=zero, fat=zero.copy(), skin=zero.copy(), air=1.0 - brain)
    for name in (*LESION_LABELS, "vessel"):
        tissues[name] = np.zeros_like(brain)
    if lesion == "tumour":
        _add_tumour(tissues, lesion_rng, voxel_mm, structure)
    elif lesion == "stroke":
        _add_stroke(tissues, lesion_rng, voxel_mm, structure)
    if structure:
        _add_vessels(tissues, rng, voxel_mm)
    grade = tissues.get("_oedema_grade")
    return {name: tissues[name].astype(np.float32) for name in TISSUE_NAMES}, grade


def _labels(tissues: dict[str, np.ndarray]) -> np.ndarray:
    """BraTS-style labels: the dominant lesion tissue where lesions fill >= half the voxel."""
    names = list(LESION_LABELS)
    stack = np.stack([tissues[n] for n in names])
    values = np.array([LESION_LABELS[n] for n in names], dtype=np.uint8)
    return np.where(stack.sum(0) >= 0.5, values[stack.argmax(0)], 0).astype(np.uint8)


def _check_lesion(lesion: str) -> None:
    if lesion not in LESION_TYPES:
        raise ValueError(f"unknown lesion type {lesion!r}; known: {', '.join(LESION_TYPES)}")


def _checked(lesion: str, voxel_mm: float) -> float:
    _check_lesion(lesion)
    if not (np.isfinite(voxel_mm) and 0.5 <= voxel_mm <= 10.0):
        raise ValueError(f"voxel_mm must be in [0.5, 10] mm, got {voxel_mm!r}")
    return float(voxel_mm)


def make_phantom_anatomy(
    index: int,
    seed: int,
    voxel_mm: float = 2.0,
    lesion: str = "none",
    *,
    structure: bool = False,
    head: bool = True,
    extent_mm: tuple[float, float, float] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The tissue fractions and labels of `make_phantom_subject` (same arguments), not rendered.

    A third of the cost of a whole subject: enough to study lesion sizes over many subjects.
    """
    voxel_mm = _checked(lesion, voxel_mm)
    anatomy_rng, lesion_rng, _, _ = np.random.default_rng([seed, index]).spawn(4)
    extent = None if extent_mm is None else tuple(float(e) for e in extent_mm)
    template = _template(voxel_mm, extent, structure)
    tissues, _ = _anatomy(template, anatomy_rng, lesion_rng, voxel_mm, lesion, structure, head)
    return tissues, _labels(tissues)


def make_phantom_subject(
    index: int,
    seed: int,
    voxel_mm: float = 2.0,
    lesion: str = "none",
    *,
    structure: bool = False,
    head: bool = True,
    extent_mm: tuple[float, float, float] | None = None,
    resolution: dict[str, tuple[float, float, float]] | None = None,
    snr: tuple[float, float] = (20.0, 40.0),
    protocol: dict[str, phantom_tissues.Sequence] | None = None,
    field_t: float = 3.0,
) -> PhantomSubject:
    """Synthesise subject `index` of the phantom for `seed` at isotropic `voxel_mm` (mm).

    Deterministic: uses `np.random.default_rng([seed, index])`, split into independent streams for
    anatomy, lesion and acquisition, so the same subject with or without a lesion shares its
    anatomy and noise. `lesion` is "none", "tumour" (labels 1-3) or "stroke" (label 4).
    `structure` adds what real scans have and the smooth template lacks: one brain's sharp
    tissue boundaries, sulci, blood vessels, per-tissue texture and lobulated, heterogeneous
    lesions with graded oedema (the dataset-shaped phantoms of `dfbk.data.phantom.layouts` use
    it). `head=False` leaves out skull and scalp; `extent_mm` sets the field of view (default:
    the head plus a margin of air); `resolution` gives modalities acquired coarser than the grid
    (modality -> FWHM per axis in mm); `snr` the range of each sequence's white-matter
    signal-to-noise ratio (per 1 mm^3 voxel); `protocol` replaces sequences of
    `dfbk.data.phantom.tissues.SEQUENCES` (e.g. one drawn by `draw_protocol`); `field_t` is the
    field strength in tesla (3 or 1.5), which sets the tissues' relaxation times.
    """
    voxel_mm = _checked(lesion, voxel_mm)
    streams = np.random.default_rng([seed, index]).spawn(4)
    anatomy_rng, lesion_rng, acquisition_rng, texture_rng = streams
    extent = None if extent_mm is None else tuple(float(e) for e in extent_mm)
    template = _template(voxel_mm, extent, structure)
    tissues, grade = _anatomy(template, anatomy_rng, lesion_rng, voxel_mm, lesion, structure, head)
    texture = texture_fields(texture_rng, template.gm.shape, voxel_mm) if structure else None
    images = render_images(
        tissues,
        acquisition_rng,
        texture,
        resolution,
        voxel_mm,
        tuple(snr),
        protocol=protocol,
        field_t=field_t,
        oedema_grade=grade,
    )
    return PhantomSubject(
        name=f"phantom-{index:03d}",
        images={modality: images[modality] for modality in PHANTOM_MODALITIES},
        label=_labels(tissues),
        head_mask=(tissues["air"] < 0.5).astype(np.uint8),
        affine=template.affine.copy(),
        tissues=tissues,
        protocol={**phantom_tissues.SEQUENCES, **(protocol or {})},
        field_t=float(field_t),
    )


def _subject_files(folder: Path, name: str) -> list[Path]:
    return [folder / f"{name}-{suffix}.nii.gz" for suffix in (*PHANTOM_MODALITIES, "seg", "mask")]


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def write_phantom_subject(subject: PhantomSubject, out_dir: Path) -> Path:
    """Write `subject` to `out_dir/{name}/` atomically and return that folder.

    The folder is filled under a hidden temporary name in `out_dir` and renamed at the end, so a
    crash never leaves a complete-looking subject; an existing folder of that name is replaced.
    """
    out_dir = Path(out_dir)
    shape = subject.label.shape
    for modality in PHANTOM_MODALITIES:
        if subject.images[modality].shape != shape:
            raise ValueError(f"{subject.name}: {modality} shape differs from label shape {shape}")
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / subject.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{subject.name}.", suffix=".tmp", dir=out_dir))
    try:
        files = dict(
            zip(
                (*PHANTOM_MODALITIES, "seg", "mask"), _subject_files(tmp, subject.name), strict=True
            )
        )
        for modality in PHANTOM_MODALITIES:
            _save(subject.images[modality].astype(np.float32), subject.affine, files[modality])
        _save(subject.label.astype(np.uint8), subject.affine, files["seg"])
        _save(subject.head_mask.astype(np.uint8), subject.affine, files["mask"])
        tmp.chmod(0o755)
        if final.exists():
            stale = final.rename(out_dir / f".{subject.name}.{os.getpid()}.old")
            shutil.rmtree(stale)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _previous_lesions(path: Path, seed: int, voxel_mm: float) -> dict[str, str] | None:
    """Subject -> lesion of an existing `subjects.json`; refuse another seed or voxel size."""
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    if old.get("seed") != seed or old.get("voxel_mm") != voxel_mm:
        raise ValueError(
            f"{path}: dataset was generated with seed={old.get('seed')}, "
            f"voxel_mm={old.get('voxel_mm')}; refusing to add seed={seed}, voxel_mm={voxel_mm}"
        )
    return {entry["name"]: entry["lesion"] for entry in old.get("subjects", [])}


def generate_phantom_dataset(
    out_dir: Path,
    n_subjects: int,
    seed: int,
    voxel_mm: float = 2.0,
    lesions: Sequence[str] = ("tumour", "stroke", "none"),
) -> list[str]:
    """Write `n_subjects` phantom subjects to `out_dir` and list them in `subjects.json`.

    Subject i gets lesion `lesions[i % len(lesions)]`. Resumable: a subject whose folder already
    holds every file is kept, unless the previous `subjects.json` gave it another lesion type.
    `subjects.json` (seed, voxel size, names and lesion types) is written last, atomically; a
    folder made with another seed or voxel size is refused.
    """
    if isinstance(lesions, str) or len(lesions) == 0:
        raise ValueError(f"lesions must be a non-empty sequence of {LESION_TYPES}, got {lesions!r}")
    for lesion in lesions:
        _check_lesion(lesion)
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    out_dir = claim_folder(out_dir, "phantom")
    manifest_path = out_dir / "subjects.json"
    previous = _previous_lesions(manifest_path, seed, float(voxel_mm))
    out_dir.mkdir(parents=True, exist_ok=True)
    mark(out_dir, "phantom", layout="phantom")
    entries = []
    for index in range(n_subjects):
        name, lesion = f"phantom-{index:03d}", lesions[index % len(lesions)]
        complete = all(p.exists() for p in _subject_files(out_dir / name, name))
        if not complete or (previous is not None and previous.get(name) != lesion):
            write_phantom_subject(make_phantom_subject(index, seed, voxel_mm, lesion), out_dir)
        entries.append({"name": name, "lesion": lesion})
    manifest = {
        "dataset": "phantom",
        "seed": seed,
        "voxel_mm": float(voxel_mm),
        "subjects": entries,
    }
    tmp = manifest_path.with_name(f".subjects.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, manifest_path)
    return [entry["name"] for entry in entries]
