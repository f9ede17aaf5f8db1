"""dfbk translate: one whole volume through a trained checkpoint, in any stored orientation.

The model was trained on axial slices of canonical RAS+ volumes (`dfbk.data.io.read_volume`),
normalised and windowed by `dfbk prepare`. This module repeats exactly that on a single scan:
reorient to the closest canonical RAS+ (a lossless permutation/flip, nibabel `io_orientation`),
normalise as the checkpoint's `source` contract says (MR: 0.5/99.5 percentiles of foreground
voxels — nonzero, or `--mask`; CT: the [-1024, 3000] HU window), cut each axial slice to the
contract's in-plane `size` with the window centred on the foreground's bounding box (prepare's
rule), translate in batches, paste back, undo the reorientation and write float32 with the
input's affine and header — MR targets in [0, 1], CT targets in HU. Voxels outside the window,
and slices without foreground, are background (0, or -1024 HU) and are not run through the model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform
from tqdm import tqdm

from dfbk.data.io import load_image, write_nifti
from dfbk.data.normalise import ct_to_hu, is_ct, normalisation_name, normalise
from dfbk.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch is imported when a volume is translated, not to build the CLI
    import torch

RAS = axcodes2ornt("RAS")
NIFTI_OUT = (".nii", ".nii.gz")


# ----- geometry -----------------------------------------------------------------------------
def read_3d(path: Path, role: str = "volume") -> tuple[nib.Nifti1Image, np.ndarray]:
    """Load an image as float32 3-D data in its stored orientation; refuse 4-D and NaN/Inf."""
    image = load_image(Path(path))
    data = np.asarray(image.get_fdata(dtype=np.float32))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(
            f"{path}: {role} must be 3-D, got shape {data.shape} (split 4-D series first)"
        )
    if not np.isfinite(data).all():
        raise DataError(f"{path}: {int((~np.isfinite(data)).sum())} voxels are NaN or infinite")
    return image, data


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(data in closest-canonical RAS+, orientation transform that undoes it)."""
    stored = nib.io_orientation(affine)
    forward = ornt_transform(stored, RAS)
    return apply_orientation(data, forward), ornt_transform(RAS, stored)


def window_start(foreground: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the in-plane window centred on the foreground box (as prepare does)."""
    xs, ys = np.nonzero(foreground.any(axis=2))
    centre = ((xs.min() + xs.max() + 1) // 2, (ys.min() + ys.max() + 1) // 2)
    return int(centre[0] - size[0] // 2), int(centre[1] - size[1] // 2)


def _overlap(start: tuple[int, int], size: tuple[int, int], shape: tuple[int, ...]):
    """Matching (volume, window) index slices of the part of the window inside the volume."""
    vol, win = [], []
    for axis in range(2):
        lo, hi = start[axis], start[axis] + size[axis]
        v_lo, v_hi = max(lo, 0), min(hi, shape[axis])
        vol.append(slice(v_lo, v_hi))
        win.append(slice(v_lo - lo, v_hi - lo))
    return tuple(vol), tuple(win)


def cut_slices(volume: np.ndarray, start: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(X, Y, Z) -> (Z, H, W) axial windows, zero where the window leaves the volume."""
    out = np.zeros((volume.shape[2], size[0], size[1]), dtype=np.float32)
    vol, win = _overlap(start, size, volume.shape)
    out[:, win[0], win[1]] = np.moveaxis(volume[vol[0], vol[1], :], 2, 0)
    return out


def paste_slices(slices: np.ndarray, start: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `cut_slices`: (Z, H, W) windows back into a zero (X, Y, Z) volume."""
    out = np.zeros(shape, dtype=np.float32)
    vol, win = _overlap(start, slices.shape[1:], shape)
    out[vol[0], vol[1], :] = np.moveaxis(slices[:, win[0], win[1]], 0, 2)
    return out


# ----- checkpoint and knowledge -------------------------------------------------------------
def _contracts(payload: dict[str, Any], checkpoint: Path) -> tuple[dict, dict]:
    """The source/target data contracts, checked to be ones this module can reproduce."""
    if payload.get("kind") == "training-state":
        raise DataError(f"{checkpoint}: a training state (last.pt); use the model.pt of the run")
    source, target = payload.get("source"), payload.get("target")
    if not isinstance(source, dict) or not isinstance(target, dict):
        raise DataError(f"{checkpoint}: checkpoint has no source/target data contract")
    for role, contract in (("source", source), ("target", target)):
        if contract.get("norm") != normalisation_name(contract["modality"]):
            raise DataError(
                f"{checkpoint}: {role} normalisation '{contract.get('norm')}' is not "
                f"'{normalisation_name(contract['modality'])}', the one this version applies"
            )
    return source, target


def _knowledge(payload: dict, path: Path | None, checkpoint: Path) -> torch.Tensor | None:
    """The checkpoint's knowledge tokens, or those of `path` when they fit the checkpoint."""
    stored = payload.get("knowledge_embedding")
    if path is None:
        return stored
    from dfbk.knowledge import load_knowledge

    emb = load_knowledge(path)
    info = payload.get("knowledge") or {}
    if stored is None and not info:
        raise DataError(f"{checkpoint}: trained without knowledge; do not pass --knowledge {path}")
    if info.get("encoder") and info["encoder"] != emb.encoder:
        raise DataError(
            f"{path}: encoder {emb.encoder}, but {checkpoint} was trained with {info['encoder']}"
        )
    if stored is not None and (emb.tokens is None or emb.tokens.shape[-1] != stored.shape[-1]):
        raise DataError(f"{path}: token width {emb.dim} does not match the checkpoint's")
    if info.get("prompt_hash") and info["prompt_hash"] != emb.prompt_hash:
        print(f"dfbk translate: warning: {path} uses other prompts than training", file=sys.stderr)
    return emb.tokens


# ----- the whole volume ---------------------------------------------------------------------
def _foreground(data: np.ndarray, image: nib.Nifti1Image, mask: Path | None) -> np.ndarray:
    """Nonzero voxels (prepare's rule for skull-stripped data), or the mask's voxels > 0.5."""
    if mask is None:
        return np.abs(data) > 0
    mask_image, mask_data = read_3d(mask, "mask")
    if mask_data.shape != data.shape or not np.allclose(mask_image.affine, image.affine, atol=1e-3):
        raise DataError(f"{mask}: mask shape/affine differ from the source volume's")
    return mask_data > 0.5


def _device(name: str) -> torch.device:
    """`auto` picks the GPU when there is one; asking for an absent GPU is a ConfigError."""
    import torch

    from dfbk.training.trainer import pick_device

    chosen = pick_device(name)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is available here (use auto or cpu)")
    return chosen


def _translate_windows(method, slices, keep, batch_size, knowledge, desc) -> np.ndarray:
    """Run the model on the kept slices in batches, with a progress bar; others stay zero."""
    from dfbk.translation import translate_slices

    out = np.zeros_like(slices)
    todo = np.flatnonzero(keep)
    with tqdm(total=len(todo), desc=desc, unit="slice", file=sys.stderr, mininterval=2) as bar:
        for begin in range(0, len(todo), batch_size):
            index = todo[begin : begin + batch_size]
            out[index] = translate_slices(method, slices[index], batch_size, knowledge)
            bar.update(len(index))
    return out


def _output_header(image: nib.Nifti1Image, payload: dict[str, Any]):
    """The input's header (orientation codes, units, pixdim) marked as a dfbk prediction."""
    header = image.header.copy()
    header["cal_min"], header["cal_max"] = 0.0, 0.0  # the input's display range no longer applies
    header["descrip"] = f"dfbk {payload['method']} {payload.get('direction', '')}"[:79].encode()
    return header


def translate_volume(
    checkpoint: Path,
    source: Path,
    output: Path,
    batch_size: int = 16,
    device: str = "auto",
    knowledge: Path | None = None,
    mask: Path | None = None,
) -> dict[str, Any]:
    """Translate `source` with `checkpoint` into `output` (same grid, affine and header)."""
    from dfbk.training.checkpoint import load_checkpoint, rebuild_method

    checkpoint, source, output = Path(checkpoint), Path(source), Path(output)
    if not output.name.endswith(NIFTI_OUT):
        raise DataError(f"{output}: output must end in .nii or .nii.gz")
    payload = load_checkpoint(checkpoint)
    src_contract, tgt_contract = _contracts(payload, checkpoint)
    image, data = read_3d(source, "source")
    foreground = _foreground(data, image, mask)
    if not foreground.any():
        raise DataError(f"{mask or source}: empty foreground (no nonzero voxel)")
    try:
        unit = normalise(data, src_contract["modality"], foreground)
    except ValueError as err:  # constant foreground: no percentile range
        raise DataError(f"{source}: cannot normalise as {src_contract['modality']}: {err}") from err
    unit_ras, back = to_ras(unit, image.affine)
    fg_ras, _ = to_ras(foreground, image.affine)
    size = tuple(int(n) for n in src_contract["size"])
    start = window_start(fg_ras, size)
    windows = cut_slices(unit_ras, start, size)
    keep = cut_slices(fg_ras.astype(np.float32), start, size).any(axis=(1, 2))

    method = rebuild_method(payload).to(_device(device))
    tokens = _knowledge(payload, knowledge, checkpoint)
    tokens = None if tokens is None else tokens.to(method.device)
    desc = f"translate {payload['method']} {payload.get('direction', '')}".strip()
    pred = _translate_windows(method, windows, keep, max(1, batch_size), tokens, desc)
    volume = apply_orientation(paste_slices(pred, start, unit_ras.shape), back)
    if is_ct(tgt_contract["modality"]):
        volume = ct_to_hu(volume)
    header = _output_header(image, payload)
    write_nifti(np.ascontiguousarray(volume, dtype=np.float32), image.affine, output, header=header)
    return {
        "output": str(output),
        "method": payload["method"],
        "direction": payload.get("direction"),
        "source_modality": src_contract["modality"],
        "target_modality": tgt_contract["modality"],
        "orientation": "".join(nib.aff2axcodes(image.affine)),
        "slices": int(windows.shape[0]),
        "translated": int(keep.sum()),
        "device": str(method.device),
    }


# ----- CLI ----------------------------------------------------------------------------------
EPILOG = """\
The checkpoint alone rebuilds the model and says how to normalise the input (its data
contract). Any voxel orientation works (LPS, permuted axes...): slicing happens in RAS+ and the
result is written back on the input's grid with its affine and header. MR output is in [0, 1];
a CT target is written in Hounsfield units.

example:
  dfbk translate --checkpoint results/train/brats2023/t1n-to-t2w/dfbk/seed-0/model.pt \\
      --source sub-01_t1n.nii.gz --output sub-01_t2w_synth.nii.gz --batch-size 32
"""


def cmd_translate(args: argparse.Namespace) -> None:
    """Thin wrapper over `translate_volume` that prints a one-line summary."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = translate_volume(
        args.checkpoint,
        args.source,
        args.output,
        args.batch_size,
        args.device,
        args.knowledge,
        args.mask,
    )
    print(
        f"{info['output']}: {info['method']} {info['source_modality']}->{info['target_modality']}, "
        f"{info['translated']}/{info['slices']} axial slices on {info['device']} "
        f"(input orientation {info['orientation']})"
    )


def register(verbs: argparse._SubParsersAction) -> None:
    """Add the `translate` verb to the `dfbk` command's subparsers."""
    p = verbs.add_parser(
        "translate",
        help="translate one whole NIfTI volume with a checkpoint (affine and header kept)",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", type=Path, required=True, help="model.pt written by `dfbk train`"
    )
    p.add_argument("--source", type=Path, required=True, help="input volume (.nii/.nii.gz/.mha)")
    p.add_argument("--output", type=Path, required=True, help="volume to write (.nii or .nii.gz)")
    p.add_argument(
        "--mask", type=Path, help="foreground mask for MR percentiles (default: nonzero)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="slices per batch (default 16)")
    p.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1")
    p.add_argument("--knowledge", type=Path, help="knowledge file replacing the checkpoint's own")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.set_defaults(func=cmd_translate)
