"""Reading and writing volumes, with errors that name the file.

Everything downstream works on canonical RAS+ arrays (axial slices along the last axis):
`read_volume` reorients with nibabel, so an LPS or oblique-stored scan is sliced the same way
as the template. `.mha`/`.mhd`/`.nrrd` files (ISLES 2015) are read with SimpleITK.

A header's declared size is checked before any voxel is read: against `MAX_VOXELS`, and
against what the file can hold (an uncompressed file must be at least as long as its data;
deflate cannot expand more than `MAX_DEFLATE_RATIO` times), so a 4 KB file claiming 2 GB of
voxels is refused in one line instead of allocating memory first.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dfbk.errors import DataError

if TYPE_CHECKING:  # nibabel is imported where volumes are read, so planning a DAG stays light
    import nibabel as nib

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd")
MAX_VOXELS = 2**29  # 2 GiB as float32: a 1024 x 1024 x 512 CT; BraTS volumes are 9 M voxels
MAX_DEFLATE_RATIO = 1032  # deflate's largest possible expansion (zlib technical details)


@dataclass
class Volume:
    """A 3-D array in canonical RAS+ orientation with its voxel-to-world affine."""

    data: np.ndarray
    affine: np.ndarray
    path: Path


def check_declared_size(path: Path, shape: tuple[int, ...], itemsize: int, offset: int) -> None:
    """Refuse a header whose data cannot fit `MAX_VOXELS` or cannot be in the file.

    `offset` is where the voxels start in the file (-1 when they live in another file: only
    the limit applies). Uncompressed, the data must fit after `offset`; gzip- or
    deflate-compressed, it can be at most `MAX_DEFLATE_RATIO` times the file's length.
    """
    path = Path(path)
    voxels = math.prod(int(d) for d in shape)
    described = f"{' x '.join(str(int(d)) for d in shape)} voxels of {itemsize} bytes"
    if voxels <= 0:
        raise DataError(f"{path}: header declares an empty volume ({described})")
    if voxels > MAX_VOXELS:
        raise DataError(
            f"{path}: header declares {described}, over the limit of {MAX_VOXELS} voxels; "
            "refusing to read it"
        )
    if offset < 0:
        return  # data in a separate file (.mhd + .raw): only the limit applies
    nbytes, length = voxels * itemsize, path.stat().st_size
    compressed = path.name.endswith(".gz") or _itk_compressed(path)
    can_hold = length * MAX_DEFLATE_RATIO if compressed else length - offset
    if nbytes > can_hold:
        raise DataError(
            f"{path}: header declares {described} ({nbytes} bytes) but the file "
            f"({length} bytes, {'compressed' if compressed else f'data from byte {offset}'}) "
            "cannot hold them; truncated or corrupt header"
        )


def _itk_compressed(path: Path) -> bool:
    """Whether a MetaImage/NRRD header says its data is compressed."""
    if not path.name.endswith((".mha", ".nrrd")):
        return False
    with open(path, "rb") as f:
        head = f.read(4096).lower()
    return re.search(rb"compresseddata\s*=\s*true|encoding:\s*(gz|bz)", head) is not None


def _refuse_non_real(path: Path, dtype: str, kind: str) -> None:
    """Refuse complex (or other non-numeric) voxels: reading them as float would keep the
    real part and drop the rest without a word."""
    if kind not in "biuf":
        raise DataError(
            f"{path}: voxels of type {dtype} are not real numbers; dfbk reads real-valued "
            "volumes only (save the magnitude or the real part as a float or integer image)"
        )


def _check_nifti_header(path: Path, image) -> None:
    header = image.header
    _refuse_non_real(path, str(header.get_data_dtype()), header.get_data_dtype().kind)
    offset = int(getattr(image.dataobj, "offset", header.get_data_offset()))
    if not path.name.endswith(NIFTI_SUFFIXES):  # .hdr/.img pairs, MGH: the limit only
        offset = -1
    check_declared_size(path, header.get_data_shape(), header.get_data_dtype().itemsize, offset)


def _read_itk(path: Path) -> nib.Nifti1Image:
    """Read an ITK image (LPS world) into a NIfTI image (RAS world) without resampling."""
    import nibabel as nib
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()  # the header only
    if reader.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        _refuse_non_real(path, sitk.GetPixelIDValueAsString(reader.GetPixelID()), "c")
    components = reader.GetNumberOfComponents()
    try:
        probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), components)
        itemsize = probe.GetSizeOfPixelComponent() * components
    except RuntimeError:
        itemsize = components
    separate = path.name.endswith(".mhd")
    check_declared_size(path, reader.GetSize(), itemsize, -1 if separate else 0)
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # ITK z,y,x -> x,y,z
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(image.GetSpacing())[None, :]
    affine[:3, 3] = image.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    return nib.Nifti1Image(array, affine)


def load_image(path: Path) -> nib.Nifti1Image:
    """Load a NIfTI or ITK image, turning any reader failure into a DataError naming the file."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        if path.name.endswith(ITK_SUFFIXES):
            return _read_itk(path)
        image = nib.load(str(path))
        _check_nifti_header(path, image)
        image.get_fdata(dtype=np.float32)  # force a full read: truncated gzip fails here
        return image
    except DataError:
        raise
    except Exception as err:  # nibabel/gzip/ITK raise many types for corrupt files
        raise DataError(f"{path}: cannot read volume ({type(err).__name__}: {err})") from err


def read_volume(path: Path) -> Volume:
    """Read a 3-D volume reoriented to RAS+, as float32; refuse 4-D and non-finite data."""
    import nibabel as nib

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


def file_mode() -> int:
    """Permissions a plain `open()` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_torch_atomic(
    obj: object, path: Path, what: str = "file", error: type[Exception] = DataError
) -> Path:
    """torch.save to a temporary sibling, then rename: a crash never leaves a partial file.

    A failed write (disk full, permissions) is one `error` naming `path` and `what` it is; the
    temporary is removed. The file gets the umask's mode (mkstemp makes 0600; a group may read
    results).
    """
    import torch

    path = Path(path)
    tmp = atomic_path(path)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch reports a failed write as RuntimeError
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise error(f"{path}: cannot write {what} ({reason})") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_nifti(data: np.ndarray, affine: np.ndarray, path: Path, header=None) -> Path:
    """Write a NIfTI volume atomically (temporary name, then rename)."""
    import nibabel as nib

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
    """Write a text file atomically; on failure (disk full) no temporary file is left."""
    tmp = atomic_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        if err.filename:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err  # say which file
    finally:
        tmp.unlink(missing_ok=True)
    return Path(path)
