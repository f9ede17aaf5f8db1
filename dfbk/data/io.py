"""Reading and writing volumes, with errors that name the file.

Everything downstream works on canonical RAS+ arrays (axial slices along the last axis):
`read_volume` reorients with nibabel, so an LPS or oblique-stored scan is sliced the same way
as the template. `.mha`/`.mhd`/`.nrrd` files (ISLES 2015) are read with SimpleITK.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from dfbk.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd")


@dataclass
class Volume:
    """A 3-D array in canonical RAS+ orientation with its voxel-to-world affine."""

    data: np.ndarray
    affine: np.ndarray
    path: Path


def _read_itk(path: Path) -> nib.Nifti1Image:
    """Read an ITK image (LPS world) into a NIfTI image (RAS world) without resampling."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # ITK z,y,x -> x,y,z
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(image.GetSpacing())[None, :]
    affine[:3, 3] = image.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    return nib.Nifti1Image(array, affine)


def load_image(path: Path) -> nib.Nifti1Image:
    """Load a NIfTI or ITK image, turning any reader failure into a DataError naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        if path.name.endswith(ITK_SUFFIXES):
            return _read_itk(path)
        image = nib.load(str(path))
        image.get_fdata(dtype=np.float32)  # force a full read: truncated gzip fails here
        return image
    except DataError:
        raise
    except Exception as err:  # nibabel/gzip/ITK raise many types for corrupt files
        raise DataError(f"{path}: cannot read volume ({type(err).__name__}: {err})") from err


def read_volume(path: Path) -> Volume:
    """Read a 3-D volume reoriented to RAS+, as float32; refuse 4-D and non-finite data."""
    image = nib.as_closest_canonical(load_image(path))
    data = np.asarray(image.get_fdata(dtype=np.float32))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DataError(f"{path}: {bad} voxels are NaN or infinite")
    return Volume(data=data, affine=image.affine.copy(), path=Path(path))


def atomic_path(final: Path) -> Path:
    """A temporary sibling of `final` (same filesystem, so os.replace is atomic)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return Path(tmp)


def write_nifti(data: np.ndarray, affine: np.ndarray, path: Path, header=None) -> Path:
    """Write a NIfTI volume atomically (temporary name, then rename)."""
    path = Path(path)
    image = nib.Nifti1Image(np.asarray(data), affine, header=header)
    if header is not None:
        image.set_data_dtype(np.float32)
    tmp = atomic_path(path)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    tmp_named = tmp.with_name(tmp.name + suffix)
    try:
        nib.save(image, str(tmp_named))
        os.replace(tmp_named, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_named.unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically."""
    tmp = atomic_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return Path(path)
