"""dfbk translate: whole volumes through trained checkpoints, in any stored orientation.

The model was trained on axial slices of canonical RAS+ volumes (`dfbk.data.io.read_volume`),
normalised by `dfbk prepare`, at some in-plane size (slices or patches). This module repeats
that on a single scan and covers its whole field of view: reorient to the closest canonical
RAS+ (a lossless permutation/flip, nibabel `io_orientation`); normalise as the checkpoint's
`source` contract says (MR: 0.5/99.5 percentiles of foreground voxels — nonzero, or `--mask`;
CT: the [-1024, 3000] HU window); resample each axial plane to the training spacing when the
checkpoint records one and the input's differs by more than 1% (bilinear, antialiased), and
back afterwards; translate every axial slice that has foreground with overlapping tiles of the
training size blended by a Gaussian importance map (`dfbk.inference.sliding_window`); undo the
reorientation and write float32 with the input's affine and header — MR targets in [0, 1], CT
targets in HU. Slices without foreground, and voxels that no foreground-touching tile covers,
are background (0, or -1024 HU). Noise seeds of diffusion methods come from (the run's seed,
the source file's name, the RAS axial index), so the batch size does not change the output.

A folder of volumes (nnU-Net's `-i`/`-o`) is translated with the models loaded once, each
output under its input's file name. Several checkpoints (the seeds of one run) give the
voxel-wise mean of their predictions in the normalised range, before the CT target's HU
mapping, which is linear, so the mean is the same in HU.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.orientations import apply_orientation
from tqdm import tqdm

from dfbk.data.io import write_nifti
from dfbk.data.normalise import ct_to_hu, is_ct, normalisation_name, normalise
from dfbk.errors import ConfigError, DataError
from dfbk.inference.volume_grid import TrainingGrid, planned_spacing, ras_affine, read_3d, to_ras

if TYPE_CHECKING:  # torch is imported when a volume is translated, not to build the CLI
    import torch

    from dfbk.methods.base import Knowledge

NIFTI_OUT = (".nii", ".nii.gz")


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


def _knowledge(payload: dict, path: Path | None, checkpoint: Path) -> Knowledge | None:
    """The checkpoint's knowledge, or that of `path` when it fits the checkpoint."""
    from dfbk.inference.predict import checkpoint_knowledge

    stored = checkpoint_knowledge(payload)
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
    if stored is not None and (emb.tokens is None or emb.tokens.shape[-1] != stored.dim):
        raise DataError(f"{path}: token width {emb.dim} does not match the checkpoint's")
    if info.get("prompt_hash") and info["prompt_hash"] != emb.prompt_hash:
        print(f"dfbk translate: warning: {path} uses other prompts than training", file=sys.stderr)
    return emb.as_knowledge()


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


def _output_header(image: nib.Nifti1Image, payload: dict[str, Any]):
    """The input's header (orientation codes, units, pixdim) marked as a dfbk prediction."""
    header = image.header.copy()
    header["cal_min"], header["cal_max"] = 0.0, 0.0  # the input's display range no longer applies
    header["descrip"] = f"dfbk {payload['method']} {payload.get('direction', '')}"[:79].encode()
    return header


def _check_paths(
    source: Path, output: Path, mask: Path | None, checkpoints: list[Path] = ()
) -> None:
    """Refuse an output that is not a NIfTI file name, is a folder, or would overwrite an input."""
    if output.is_dir():
        raise DataError(f"{output}: is a folder; give the output volume's file name (.nii.gz)")
    if not output.name.endswith(NIFTI_OUT):
        raise DataError(f"{output}: output must end in .nii or .nii.gz")
    inputs = [("source volume", source), ("mask", mask)]
    for role, given in inputs + [("checkpoint", c) for c in checkpoints]:
        if given is not None and output.resolve() == Path(given).resolve():
            raise DataError(f"{output}: is the {role}; refusing to overwrite an input")


# An input plane may span at most this many training slices per side once resampled to the
# training spacing. A whole-body scan is a few head-sized slices across; a header whose voxel
# size is off by a unit (metres for millimetres) or garbage is thousands, and resampling it
# would allocate gigabytes before failing.
MAX_EXTENT = 8


def input_spacing(image: nib.Nifti1Image, shape: tuple[int, ...]) -> tuple[float, float]:
    """The in-plane (RAS x, y) voxel size of `image` in mm."""
    return tuple(float(v) for v in voxel_sizes(ras_affine(image.affine, shape))[:2])


def check_extent(
    source: Path, shape: tuple[int, ...], input_mm: tuple[float, float], contract: dict
) -> None:
    """Refuse, before any allocation, an input whose planes resampled to the training spacing
    would exceed `MAX_EXTENT` training slices per side (a lying voxel size in its header)."""
    trained_mm, size = contract.get("spacing"), contract.get("size")
    target = planned_spacing(input_mm, trained_mm)
    if target is None or not size:
        return  # the model runs on the input's own grid: no larger than the input itself
    fov = [n * mm for n, mm in zip(shape, input_mm, strict=True)]
    limit = [MAX_EXTENT * s * t for s, t in zip(size, target, strict=True)]
    if any(f > lim for f, lim in zip(fov, limit, strict=True)):
        mm = "x".join(f"{v:g}" for v in input_mm)
        raise DataError(
            f"{source}: header voxel size {mm} mm makes a field of view of "
            f"{fov[0]:g}x{fov[1]:g} mm, over {MAX_EXTENT} times the training slices' "
            f"{size[0] * target[0]:g}x{size[1] * target[1]:g} mm; check the voxel size "
            "(pixdim, sform) in its header"
        )


@dataclass
class Member:
    """One loaded checkpoint of a translation: its payload, rebuilt model, knowledge and tile."""

    checkpoint: Path
    payload: dict[str, Any]
    method: Any
    knowledge: Knowledge | None
    tile: tuple[int, int]


ENSEMBLES = ("mean",)


def load_members(
    checkpoints: Path | list[Path],
    device: str = "auto",
    knowledge: Path | None = None,
    ensemble: str | None = None,
) -> list[Member]:
    """Rebuild each checkpoint's model once; several must agree on method, direction and data.

    Several checkpoints (seeds of one run) are averaged voxel-wise (`ensemble="mean"`); they
    must share method, direction and source/target contracts, or the mean would mix models
    trained on other data. The refusal names the first checkpoint that differs.
    """
    from dfbk.inference.predict import training_tile
    from dfbk.training.checkpoint import load_checkpoint, rebuild_method

    paths = [Path(checkpoints)] if isinstance(checkpoints, str | Path) else list(checkpoints)
    if not paths:
        raise ConfigError("--checkpoint: give at least one model.pt")
    if len(paths) > 1 and ensemble not in ENSEMBLES:
        raise ConfigError(
            f"--checkpoint: {len(paths)} checkpoints need --ensemble {'|'.join(ENSEMBLES)}"
        )
    payloads = [load_checkpoint(path) for path in paths]
    first = payloads[0]
    for path, payload in zip(paths, payloads, strict=True):
        _contracts(payload, path)
        for key in ("method", "direction", "source", "target"):
            if payload.get(key) != first.get(key):
                raise DataError(
                    f"{path}: {key} {payload.get(key)} differs from {paths[0]}'s "
                    f"{first.get(key)}; ensemble members must agree"
                )
    torch_device = _device(device)
    members = []
    for path, payload in zip(paths, payloads, strict=True):
        tokens = _knowledge(payload, knowledge, path)
        method = rebuild_method(payload, path).to(torch_device)
        method.amp = True  # Method.autocast: bf16 on CUDA as in training, float32 on CPU
        tokens = None if tokens is None else tokens.to(method.device)
        members.append(Member(path, payload, method, tokens, training_tile(payload)))
    return members


def translate_volume(
    checkpoint: Path | list[Path],
    source: Path,
    output: Path,
    batch_size: int = 32,
    device: str = "auto",
    knowledge: Path | None = None,
    mask: Path | None = None,
    ensemble: str | None = None,
) -> dict[str, Any]:
    """Translate `source` with `checkpoint` (or the mean of several) into `output` (same grid,
    affine and header)."""
    members = load_members(checkpoint, device, knowledge, ensemble)
    return translate_with(members, Path(source), Path(output), batch_size, mask)


def _predict(members: list[Member], grid: TrainingGrid, source: Path, batch_size: int):
    """(mean prediction on the work grid in [0, 1], tiles run); members one after another."""
    from dfbk.diffusion.noise import slice_seeds
    from dfbk.inference.predict import check_finite, non_finite_error, run_seed
    from dfbk.inference.sliding_window import NonFiniteOutput, translate_tiled

    total, tiles = None, 0
    for member in members:
        payload = member.payload
        seeds = slice_seeds(run_seed(payload), _subject_name(source), grid.keep)
        desc = f"translate {payload['method']} {payload.get('direction', '')}".strip()
        with tqdm(desc=desc, unit="tile", file=sys.stderr, mininterval=2) as bar:
            try:
                pred, count = translate_tiled(
                    member.method, grid.work, seeds, member.tile, max(1, batch_size),
                    member.knowledge, grid.work_fg, bar.update,
                )  # fmt: skip
            except NonFiniteOutput as err:
                raise non_finite_error(member.checkpoint, str(source), err) from err
        check_finite(pred, member.checkpoint, str(source))
        total = pred.astype(np.float64) if total is None else total + pred
        tiles += int(count)
    return (total / len(members)).astype(np.float32), tiles


def translate_with(
    members: list[Member],
    source: Path,
    output: Path,
    batch_size: int = 32,
    mask: Path | None = None,
) -> dict[str, Any]:
    """Translate one volume with loaded members (the mean of their predictions when several)."""
    payload = members[0].payload
    mask = None if mask is None else Path(mask)
    _check_paths(source, output, mask, [m.checkpoint for m in members])
    src_contract, tgt_contract = _contracts(payload, members[0].checkpoint)
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
    input_mm = input_spacing(image, data.shape)
    check_extent(source, unit_ras.shape[:2], input_mm, src_contract)  # before resampling
    grid = TrainingGrid.plan(unit_ras, fg_ras, input_mm, src_contract.get("spacing"))
    pred, tiles = _predict(members, grid, source, batch_size)
    volume = apply_orientation(np.moveaxis(grid.back_to_input(pred), 0, 2), back)
    if is_ct(tgt_contract["modality"]):
        volume = ct_to_hu(volume)
    header = _output_header(image, payload)
    try:
        volume = np.ascontiguousarray(volume, dtype=np.float32)
        write_nifti(volume, image.affine, output, header=header)
    except OSError as err:  # disk full, read-only folder: nothing half-written is left
        raise DataError(f"{output}: cannot write ({err.strerror or err})") from None
    return {
        "output": str(output),
        "method": payload["method"],
        "direction": payload.get("direction"),
        "source_modality": src_contract["modality"],
        "target_modality": tgt_contract["modality"],
        "orientation": "".join(nib.aff2axcodes(image.affine)),
        **grid.describe(),
        "training_spacing_recorded": bool(src_contract.get("spacing")),
        "tile": [int(n) for n in members[0].tile],
        "tiles": tiles,
        "members": len(members),
        "device": str(members[0].method.device),
    }


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI volumes directly in `folder` (.nii, .nii.gz), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(NIFTI_OUT))


def _older_translation(folder: Path) -> bool:
    """A folder written by `dfbk translate -o` before output markers: NIfTI files only, each
    marked a dfbk prediction in its header (`_output_header`)."""
    entries = list(folder.iterdir())
    if not entries or any(not p.is_file() or not p.name.endswith(NIFTI_OUT) for p in entries):
        return False
    try:
        descriptions = [nib.load(str(p)).header["descrip"].tobytes() for p in entries]
    except (OSError, ValueError, nib.filebasedimages.ImageFileError):  # not ours, then
        return False
    return all(d.startswith(b"dfbk ") for d in descriptions)


def _request(
    members: list[Member], sources: list[Path], masks: list, knowledge: Path | None
) -> dict[str, Any]:
    """What a folder translation is made from: a resumed one must have been asked the same."""

    def stamp(path: Path) -> list:
        info = path.stat()
        return [str(path.resolve()), info.st_size, info.st_mtime_ns]

    return {
        "checkpoints": [stamp(m.checkpoint) for m in members],
        "sources": [stamp(s) for s in sources],
        "masks": [None if m is None else stamp(m) for m in masks],
        "knowledge": None if knowledge is None else stamp(Path(knowledge)),
    }


def _staging(staging: Path, request: dict[str, Any]) -> dict[str, Any]:
    """The volumes an interrupted run of the same request finished in `staging`; a staging
    folder of another request is cleared, one that dfbk did not make is refused."""
    from dfbk.data.outputs import made_by

    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()  # killed before its marker was written
    if staging.exists():
        marker = made_by(staging)
        if marker is None or marker["verb"] != "translate":
            raise DataError(f"{staging}: exists and was not made by `dfbk translate`; move it")
        if marker.get("request") == request:
            done = marker.get("volumes") or {}
            return {n: i for n, i in done.items() if (staging / n).is_file()}
        shutil.rmtree(staging)
    return {}


def translate_folder(
    checkpoints: Path | list[Path],
    in_dir: Path,
    out_dir: Path,
    batch_size: int = 32,
    device: str = "auto",
    knowledge: Path | None = None,
    mask_dir: Path | None = None,
    ensemble: str | None = None,
) -> list[dict[str, Any]]:
    """nnU-Net style: every NIfTI in `in_dir` -> the same file name in `out_dir`.

    The models are loaded once for all volumes. Outputs are written into the hidden sibling
    `.{out_dir name}.partial`, whose marker lists each finished volume; the folder is renamed to
    `out_dir` only when every volume is in, so `out_dir` never holds an incomplete set. A rerun
    of the same request (checkpoints, volumes, masks, knowledge unchanged) keeps the volumes
    an interrupted run finished. `out_dir` follows `dfbk.data.outputs.claim_folder`: absent,
    empty or an earlier `dfbk translate` output, never an input's folder. `mask_dir`, when
    given, holds a mask of the same file name per volume.
    """
    from dfbk.data.outputs import claim_folder, mark, publish, staging_folder

    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise DataError(f"{in_dir}: not a folder of NIfTI volumes")
    sources = nifti_files(in_dir)
    if not sources:
        raise DataError(f"{in_dir}: no .nii or .nii.gz volume in this folder")
    single = isinstance(checkpoints, str | Path)
    inputs = [("input folder", in_dir), ("mask folder", mask_dir), ("knowledge", knowledge)]
    inputs += [("checkpoint", Path(c)) for c in ([checkpoints] if single else checkpoints)]
    out_dir = claim_folder(out_dir, "translate", inputs, legacy=_older_translation)
    masks = [None] * len(sources)
    if mask_dir is not None:
        masks = [Path(mask_dir) / s.name for s in sources]
        missing = [m for m in masks if not m.is_file()]
        if missing:
            raise DataError(f"{missing[0]}: no mask of this name for {in_dir / missing[0].name}")
    members = load_members(checkpoints, device, knowledge, ensemble)
    staging = staging_folder(out_dir, "partial")
    request = _request(members, sources, masks, knowledge)
    done = _staging(staging, request)
    if done:
        print(
            f"dfbk translate: {len(done)} of {len(sources)} volumes already in {staging} "
            "(an interrupted run); translating the rest",
            file=sys.stderr,
        )
    try:
        staging.mkdir(parents=True, exist_ok=True)
        mark(staging, "translate", complete=False, request=request, volumes=done)
        for src, mask in zip(sources, masks, strict=True):
            if src.name not in done:
                info = translate_with(members, src, staging / src.name, batch_size, mask)
                done[src.name] = {**info, "output": str(out_dir / src.name)}
                mark(staging, "translate", complete=False, request=request, volumes=done)
        mark(staging, "translate", complete=True, request=request, volumes=done)
        publish(staging, out_dir, "translate", legacy=_older_translation)
    except OSError as err:  # disk full, read-only: one line; finished volumes stay staged
        where = err.filename or staging
        raise DataError(f"{where}: cannot write ({err.strerror or err})") from None
    return [done[src.name] for src in sources]


def _subject_name(source: Path) -> str:
    """The noise key of a volume: its file name without the image extension."""
    name = source.name
    for ext in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def summary_line(info: dict[str, Any]) -> str:
    """The CLI's one-line report: what was covered, at which spacing, with how many tiles."""
    fov, mm, grid = info["field_of_view"], info["field_of_view_mm"], info["grid"]
    spacing = "x".join(f"{v:g}" for v in info["spacing_mm"])
    if info["resampled"]:
        how = f"resampled to {spacing} mm ({grid[0]}x{grid[1]}) and back"
    elif info["training_spacing_recorded"]:
        how = f"at {spacing} mm, the training spacing"
    else:
        how = f"at the input's {spacing} mm (the checkpoint records no training spacing)"
    members = info.get("members", 1)
    ensemble = f" (mean of {members} checkpoints)" if members > 1 else ""
    return (
        f"{info['output']}: {info['method']}{ensemble} {info['source_modality']}->"
        f"{info['target_modality']}, whole field of view {fov[0]}x{fov[1]} voxels "
        f"({mm[0]:g}x{mm[1]:g} mm) of {info['translated']}/{info['slices']} axial slices "
        f"(those with foreground), {how}, {info['tiles']} tiles of "
        f"{info['tile'][0]}x{info['tile'][1]} on {info['device']} "
        f"(input orientation {info['orientation']})"
    )
