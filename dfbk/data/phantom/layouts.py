"""Dataset-shaped phantoms: synthetic subjects written in the exact layout of a real dataset.

Why: the embedded benchmark should measure the paper's task, not an easier one. A phantom that
lives in its own layout takes a phantom-only path through prepare and evaluation; one that is
written like BraTS 2023, ISLES 2015 or SynthRAD 2023 goes through the real adapters
(`dfbk.data.datasets.challenges`), the real foreground rule (skull-stripped: non-zero voxels;
SynthRAD: the
body mask) and the real evaluation protocols. Each layout also takes the real data's traits:

- `brats2023`: skull-stripped brain (foreground = brain), t1n/t1c/t2w/t2f and a tumour
  `seg` (1 necrosis, 2 oedema, 3 enhancing), `BraTS-GLI-NNNNN-000/` folders, the BraTS field of
  view (240 x 240 x 155 mm; 1 mm gives its 240 x 240 x 155 grid) stored LPS like the released
  volumes, and each sequence blurred through-plane as acquired (Bakas et al., Sci Data 2017:
  T1 sagittal or axial 2-D, 1-6 mm; T1Gd 3-D 1 mm; T2 axial 2-D, 2-6 mm; FLAIR axial, coronal
  or sagittal 2-D, 2-6 mm), at 1.5 or 3 T with a protocol drawn per subject (`brats_protocol`).
- `isles2015`: skull-stripped, FLAIR/T1/T2/DWI and an acute stroke label (`OT`, 0/1) in SISS
  folders `N/VSD.Brain.XX.O.MR_<Seq>.<id>/VSD.Brain.XX.O.MR_<Seq>.<id>.mha` (every second
  subject as `.nii`, so both readers are used), 230 x 230 x 154 mm, DWI as 5 mm EPI slices.
- `synthrad2023`: the whole head with skull, `mr.nii.gz` (T1-weighted), `ct.nii.gz` in HU and a
  body `mask.nii.gz` dilated by 5 mm, in `Task1/brain/1B{A,B,C}NNN/`.

Every subject uses `make_phantom_subject(..., structure=True)`: sulci, per-tissue texture and
lobulated, heterogeneous lesions. The demo writes these layouts on a 2 mm grid.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from dfbk.data.outputs import claim_folder, mark
from dfbk.data.phantom.anatomy import PhantomSubject, make_phantom_subject
from dfbk.data.phantom.tissues import Sequence, draw_protocol

LAYOUTS: tuple[str, ...] = ("brats2023", "isles2015", "synthrad2023")
MANIFEST = "phantom.json"
SYNTHRAD_MASK_DILATION_MM = 5.0
ISLES_SEQUENCES: dict[str, str] = {"t2f": "Flair", "t1n": "T1", "t2w": "T2", "dwi": "DWI"}

Resolution = dict[str, tuple[float, float, float]]


def _slab(rng: np.random.Generator, orientations: tuple[str, ...], lo: float, hi: float):
    """FWHM per (x, y, z) axis of a 2-D acquisition: thick along its slice direction only."""
    thickness = float(rng.uniform(lo, hi))
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[rng.choice(orientations)]
    fwhm = [1.0, 1.0, 1.0]
    fwhm[axis] = thickness
    return tuple(fwhm)


# White-matter SNR of one sequence at 3 T, per 1 mm^3 voxel; a 1.5 T scan has about half (signal
# scales with the field). BraTS pools 1.5 T and 3 T scanners of many institutions (Bakas et al.
# 2017), so each BraTS-like subject is drawn at one of the two.
SNR_3T: tuple[float, float] = (20.0, 40.0)
SNR_15T: tuple[float, float] = (10.0, 20.0)


def brats_resolution(rng: np.random.Generator) -> Resolution:
    """Acquired resolution of each BraTS sequence (ranges of Bakas et al. 2017)."""
    return {
        "t1n": _slab(rng, ("sagittal", "axial"), 1.0, 6.0),
        "t1c": (1.0, 1.0, 1.0),
        "t2w": _slab(rng, ("axial",), 2.0, 6.0),
        "t2f": _slab(rng, ("axial", "coronal", "sagittal"), 2.0, 6.0),
    }


def isles_resolution(rng: np.random.Generator) -> Resolution:
    """A clinical stroke protocol: 3-D T1, axial 2-D T2/FLAIR, 2 mm EPI DWI with 5 mm slices."""
    return {
        "t1n": (1.0, 1.0, 1.0),
        "t2w": _slab(rng, ("axial",), 3.0, 6.0),
        "t2f": _slab(rng, ("axial",), 3.0, 6.0),
        "dwi": (2.0, 2.0, 5.0),
    }


def brats_protocol(rng: np.random.Generator, resolution: Resolution) -> dict[str, Sequence]:
    """One BraTS site's sequences (`draw_protocol`): the native T1 is the 3-D gradient echo when
    it was acquired at about 1 mm, a 2-D spin echo when in thicker slices."""
    return draw_protocol(rng, t1n_3d=max(resolution["t1n"]) <= 1.5)


def isles_protocol(rng: np.random.Generator, resolution: Resolution) -> dict[str, Sequence]:
    """A stroke protocol's sequences: the 3-D T1 is an inversion-prepared gradient echo."""
    return draw_protocol(rng, t1n_3d=True)


@dataclass(frozen=True)
class Layout:
    """How one dataset's phantom is made and written."""

    name: str
    lesions: tuple[str, ...]  # allowed lesion types; the first is the default
    head: bool  # skull and scalp kept (SynthRAD) or stripped (BraTS, ISLES)
    extent_mm: tuple[float, float, float] | None
    resolution: Callable[[np.random.Generator], Resolution] | None
    subject_name: Callable[[int], str]
    field_strengths: tuple[str, ...] = ("3T",)  # drawn per subject: "1.5T" or "3T"
    protocol: Callable[[np.random.Generator, Resolution], dict[str, Sequence]] | None = None


def _synthrad_name(index: int) -> str:
    return f"1B{'ABC'[index % 3]}{index + 1:03d}"


LAYOUT_SPECS: dict[str, Layout] = {
    "brats2023": Layout(
        "brats2023",
        ("tumour",),
        False,
        (240.0, 240.0, 155.0),
        brats_resolution,
        lambda i: f"BraTS-GLI-{i:05d}-000",
        ("1.5T", "3T"),
        brats_protocol,
    ),
    "isles2015": Layout(
        "isles2015",
        ("stroke",),
        False,
        (230.0, 230.0, 154.0),
        isles_resolution,
        lambda i: str(i + 1),
        protocol=isles_protocol,
    ),
    "synthrad2023": Layout("synthrad2023", ("none", "tumour"), True, None, None, _synthrad_name),
}


def layout_spec(layout: str) -> Layout:
    """The spec of `layout`; unknown names list the known ones."""
    if layout not in LAYOUT_SPECS:
        raise ValueError(f"unknown phantom layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUT_SPECS[layout]


def make_layout_subject(
    layout: str, index: int, seed: int, voxel_mm: float = 2.0, lesion: str | None = None
) -> PhantomSubject:
    """Subject `index` of the `layout` phantom, in RAS arrays (written LPS where the data are).

    Skull-stripped layouts have every image set to 0 outside the brain, as the real data are;
    the acquisition geometry, field strength and sequence parameters are drawn from their own
    stream (`default_rng([seed, index, 1])`).
    """
    spec = layout_spec(layout)
    lesion = spec.lesions[0] if lesion is None else lesion
    if lesion not in spec.lesions:
        raise ValueError(f"{layout} phantom: lesion {lesion!r} not one of {spec.lesions}")
    geometry = np.random.default_rng([seed, index, 1])
    resolution = spec.resolution(geometry) if spec.resolution else None
    field = str(geometry.choice(spec.field_strengths))
    protocol = spec.protocol(geometry, resolution) if spec.protocol else None
    subject = make_phantom_subject(
        index,
        seed,
        voxel_mm,
        lesion,
        structure=True,
        head=spec.head,
        extent_mm=spec.extent_mm,
        resolution=resolution,
        snr=SNR_15T if field == "1.5T" else SNR_3T,
        protocol=protocol,
        field_t=1.5 if field == "1.5T" else 3.0,
    )
    subject.name = spec.subject_name(index)
    if not spec.head:
        brain = subject.tissues["air"] < 0.5
        for modality, image in subject.images.items():
            if modality != "ct":
                subject.images[modality] = np.where(brain, image, 0.0).astype(np.float32)
        subject.label = np.where(brain, subject.label, 0).astype(np.uint8)
        subject.head_mask = brain.astype(np.uint8)
    return subject


# ----- writing ----------------------------------------------------------------------------------
def _lps(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored with x and y reversed (LPS order), world coordinates unchanged."""
    flip = np.eye(4)
    for axis in (0, 1):
        flip[axis, axis] = -1.0
        flip[axis, 3] = data.shape[axis] - 1
    return np.ascontiguousarray(data[::-1, ::-1, :]), affine @ flip


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _save_itk(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """MetaImage (.mha) with ITK's LPS world: direction and spacing from the RAS `affine`."""
    import SimpleITK as sitk

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing[None, :]).ravel()])
    sitk.WriteImage(image, str(path))


def _files(layout: str, subject: PhantomSubject) -> dict[str, tuple[np.ndarray, str]]:
    """Relative path -> (array, kind) of every file of `subject` in `layout`."""
    images, name = subject.images, subject.name
    if layout == "brats2023":
        files = {f"{name}-{m}.nii.gz": (images[m], "f") for m in ("t1n", "t1c", "t2w", "t2f")}
        files[f"{name}-seg.nii.gz"] = (subject.label, "u")
        return files
    if layout == "isles2015":
        ext = ".mha" if int(name) % 2 else ".nii"
        index = int(name) - 1
        files = {}
        for k, (modality, sequence) in enumerate(ISLES_SEQUENCES.items()):
            stem = f"VSD.Brain.XX.O.MR_{sequence}.{70000 + 10 * index + k}"
            files[f"{stem}/{stem}{ext}"] = (images[modality], "f")
        stem = f"VSD.Brain.XX.O.OT.{70000 + 10 * index + 9}"
        files[f"{stem}/{stem}{ext}"] = ((subject.label == 4).astype(np.uint8), "u")
        return files
    voxel_mm = float(np.linalg.norm(subject.affine[:3, 0]))
    reach = int(np.ceil(SYNTHRAD_MASK_DILATION_MM / voxel_mm))
    mask = ndimage.binary_dilation(subject.head_mask > 0, iterations=reach)
    return {
        "mr.nii.gz": (images["t1n"], "f"),
        "ct.nii.gz": (np.maximum(images["ct"], -1024.0), "f"),
        "mask.nii.gz": (mask.astype(np.uint8), "u"),
    }


def subject_folder(layout: str, root: Path, name: str) -> Path:
    """Where a subject's case folder lives under the dataset root."""
    return root / "Task1" / "brain" / name if layout == "synthrad2023" else root / name


def write_layout_subject(layout: str, subject: PhantomSubject, root: Path) -> Path:
    """Write `subject` into its case folder under `root`, atomically (temporary folder, rename)."""
    final = subject_folder(layout, Path(root), subject.name)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{subject.name}.", suffix=".tmp", dir=final.parent))
    try:
        for relative, (array, kind) in _files(layout, subject).items():
            path = tmp / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            data, affine = array.astype(np.float32 if kind == "f" else np.uint8), subject.affine
            if layout != "synthrad2023":  # BraTS and ISLES are stored LPS
                data, affine = _lps(data, affine)
            if path.suffix == ".mha":
                _save_itk(data, affine, path)
            else:
                _save_nifti(data, affine, path)
        tmp.chmod(0o755)
        if final.exists():
            stale = final.rename(final.parent / f".{subject.name}.{os.getpid()}.old")
            shutil.rmtree(stale)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def generate_layout_dataset(
    layout: str,
    out_dir: Path,
    n_subjects: int,
    seed: int,
    voxel_mm: float = 2.0,
    lesions: tuple[str, ...] | None = None,
) -> list[str]:
    """Write `n_subjects` phantom subjects in `layout` under `out_dir`; list them in phantom.json.

    Resumable: a finished subject folder (they appear by rename only) is kept; a folder whose
    `phantom.json` records other settings is refused. `phantom.json` is written last, atomically.
    """
    spec = layout_spec(layout)
    lesions = tuple(lesions) if lesions else spec.lesions[:1]
    for lesion in lesions:
        if lesion not in spec.lesions:
            raise ValueError(f"{layout} phantom: lesion {lesion!r} not one of {spec.lesions}")
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    out_dir = claim_folder(out_dir, "phantom", legacy=lambda f: (f / MANIFEST).is_file())
    settings = {
        "layout": layout,
        "seed": seed,
        "voxel_mm": float(voxel_mm),
        "lesions": list(lesions),
    }
    manifest = out_dir / MANIFEST
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if {k: old.get(k) for k in settings} != settings:
            raise ValueError(
                f"{manifest}: made with {', '.join(f'{k}={old.get(k)}' for k in settings)}; "
                "refusing to mix settings (remove the folder to regenerate)"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    mark(out_dir, "phantom", layout=layout)
    names = []
    for index in range(n_subjects):
        name = spec.subject_name(index)
        if not subject_folder(layout, out_dir, name).is_dir():
            lesion = lesions[index % len(lesions)]
            subject = make_layout_subject(layout, index, seed, voxel_mm, lesion)
            write_layout_subject(layout, subject, out_dir)
        names.append(name)
    record = {**settings, "dataset": "phantom", "subjects": names}
    tmp = manifest.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, manifest)
    return names
