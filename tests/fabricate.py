"""Small fake copies of the three datasets in their publishers' exact layouts (test helper).

Layouts, as published (see docs/data.md for the sources):
- BraTS 2023 GLI: `ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/BraTS-GLI-NNNNN-NNN/
  BraTS-GLI-NNNNN-NNN-{t1n,t1c,t2w,t2f,seg}.nii.gz`, int16 images, labels 1/2/3 (one case
  stores its seg as float, as some releases do), 1 mm voxels, LPS-flipped affine.
- ISLES 2015 SISS: `SISS2015_Training/<n>/VSD.Brain.XX.O.MR_{Flair,T1,T2,DWI}.<id>/
  VSD.Brain.XX.O.MR_<seq>.<id>.mha` and `VSD.Brain.XX.O.OT.<id>/…OT.<id>.mha` (binary label).
- SynthRAD 2023 Task 1: `Task1/brain/1B{A,B,C}NNN/{mr,ct,mask}.nii.gz` (CT in HU, mask the
  dilated body outline) plus `Task1/pelvis/1PANNN/…` and a non-case `overview/` folder.
Volumes are tiny (a head-like ellipsoid with a lesion) so tests run in seconds.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (28, 26, 12)
BRATS_TOP = "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
ISLES_SEQUENCES = ("Flair", "T1", "T2", "DWI")


def phantom_head(seed: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """(head mask, lesion mask) booleans: an ellipsoid with a small off-centre lesion."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.95) ** 2 < 1
    cx, cy = rng.uniform(-0.3, 0.3, 2)
    lesion = ((x - cx) ** 2 + (y - cy) ** 2 + z**2 < 0.08) & head
    return head, lesion


def contrast(head: np.ndarray, lesion: np.ndarray, level: float, lesion_level: float, seed: int):
    """An int16 MR-like volume: tissue at `level`, lesion at `lesion_level`, mild noise."""
    rng = np.random.default_rng(seed)
    volume = np.where(head, level, 0.0) + np.where(lesion, lesion_level - level, 0.0)
    volume = volume * (1 + 0.05 * rng.standard_normal(head.shape)) * head
    return volume.astype(np.int16)


def _save(data: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def brats_case(root: Path, number: int, float_seg: bool = False) -> Path:
    """One BraTS 2023 GLI case folder under `root`; returns it."""
    name = f"BraTS-GLI-{number:05d}-000"
    case = root / name
    head, lesion = phantom_head(number)
    levels = {"t1n": (400, 250), "t1c": (420, 900), "t2w": (300, 800), "t2f": (350, 700)}
    for k, (modality, (level, lesion_level)) in enumerate(levels.items()):
        _save(
            contrast(head, lesion, level, lesion_level, number * 10 + k),
            case / f"{name}-{modality}.nii.gz",
        )
    seg = np.zeros(SHAPE, dtype=np.float32 if float_seg else np.uint8)
    seg[lesion] = 2
    core = lesion & (np.indices(SHAPE)[2] == SHAPE[2] // 2)
    seg[core] = 1
    seg[core & (np.indices(SHAPE)[0] % 2 == 0)] = 3
    _save(seg, case / f"{name}-seg.nii.gz")
    return case


def brats_tree(root: Path, numbers=(0, 2, 5)) -> Path:
    """The extracted BraTS training zip (top folder kept); returns `root`."""
    for i, number in enumerate(numbers):
        brats_case(root / BRATS_TOP, number, float_seg=i == 1)
    return root


def _save_mha(data: np.ndarray, path: Path) -> Path:
    """Write (x, y, z) `data` as an ITK image (z, y, x array order), 1 mm, identity direction."""
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(image, str(path))
    return path


def isles_case(root: Path, number: int, suffix: str = ".mha") -> Path:
    """One ISLES 2015 SISS training case `<root>/<number>/`; returns it."""
    case = root / str(number)
    head, lesion = phantom_head(100 + number)
    levels = {"Flair": (300, 700), "T1": (400, 200), "T2": (300, 800), "DWI": (200, 900)}
    base_id = 70600 + 10 * number
    for k, (sequence, (level, lesion_level)) in enumerate(levels.items()):
        folder = f"VSD.Brain.XX.O.MR_{sequence}.{base_id + k}"
        data = contrast(head, lesion, level, lesion_level, number * 10 + k).astype(np.float32)
        write_isles(data, case / folder / f"{folder}{suffix}")
    folder = f"VSD.Brain.XX.O.OT.{base_id + 9}"
    write_isles(lesion.astype(np.uint8), case / folder / f"{folder}{suffix}")
    return case


def write_isles(data: np.ndarray, path: Path) -> Path:
    """Write in the format the suffix says (.mha via SimpleITK, .nii/.nii.gz via nibabel)."""
    if path.name.endswith(".mha"):
        return _save_mha(data, path)
    return _save(data, path, np.eye(4))


def isles_tree(root: Path, numbers=(1, 2, 3), suffixes=(".mha", ".mha", ".nii")) -> Path:
    """The extracted SISS 2015 training archive; returns `root`."""
    for number, suffix in zip(numbers, suffixes, strict=True):
        isles_case(root / "SISS2015_Training", number, suffix)
    return root


def synthrad_case(root: Path, name: str) -> Path:
    """One SynthRAD 2023 Task 1 case folder (mr, ct in HU, dilated body mask)."""
    from scipy.ndimage import binary_dilation, binary_erosion

    case = root / name
    head, lesion = phantom_head(sum(map(ord, name)))
    skull = head & ~binary_erosion(head)
    noise = np.random.default_rng(sum(map(ord, name))).normal(0, 8, SHAPE)  # scanner noise:
    ct = np.full(SHAPE, -1024, dtype=np.int16)  # no two cases' CTs are the same scan
    ct[head] = np.rint(35 + noise[head])
    ct[skull] = np.rint(1400 + noise[skull])
    mr = contrast(head, lesion, 500, 520, 7)
    _save(mr, case / "mr.nii.gz", np.eye(4))
    _save(ct, case / "ct.nii.gz", np.eye(4))
    _save(binary_dilation(head, iterations=2).astype(np.uint8), case / "mask.nii.gz", np.eye(4))
    return case


def synthrad_tree(root: Path, brain=("1BA001", "1BB002", "1BC003")) -> Path:
    """The extracted Task1.zip: brain cases, one pelvis case, an overview folder."""
    for name in brain:
        synthrad_case(root / "Task1" / "brain", name)
    synthrad_case(root / "Task1" / "pelvis", "1PA001")
    overview = root / "Task1" / "brain" / "overview"
    overview.mkdir(parents=True, exist_ok=True)
    (overview / "1_brain_train.xlsx").write_bytes(b"not a spreadsheet")
    return root


def zip_tree(root: Path, archive: Path) -> Path:
    """Zip everything under `root` with paths relative to it (as the publishers' zips)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(root.rglob("*")):
            out.write(path, path.relative_to(root).as_posix())
    return archive
