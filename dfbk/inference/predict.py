"""translate: run a trained checkpoint over the test split, one volume per subject.

The checkpoint alone rebuilds the model (`rebuild_method`); it must have been trained on this slice
store and split (its fingerprint), and its data contract must match the store's (same modality,
range and normalisation; the slice size may differ, as slices are covered by tiles of the training
size — `dfbk.inference.sliding_window`) or the job is refused; the test subjects' source slices must
match the digests the store records (`SliceStore.verify`). Each slice's noise seed comes from (the
run's seed, subject, axial slice index), so a diffusion method's volume does not depend on the batch
size, nor on which other slices share its batch: the test subjects' slices form one stream cut into
full batches across subject boundaries (`translate_volumes`). Methods sample under bf16 autocast on
CUDA (`Method.autocast`), in float32 on CPU. A prediction with a NaN or infinite voxel is refused,
naming the checkpoint, and nothing is written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dfbk.data.io import write_nifti, write_text
from dfbk.data.outputs import claim_folder, mark, publish, staging_folder
from dfbk.data.slices.splits import read_split
from dfbk.data.slices.store import SliceStore
from dfbk.diffusion.noise import slice_seeds
from dfbk.errors import DataError, TrainingError
from dfbk.inference.sliding_window import NonFiniteOutput, trained_tile, translate_tiled
from dfbk.methods.base import Knowledge
from dfbk.plan.schema import node
from dfbk.training.checkpoint import check_fingerprint, load_checkpoint, rebuild_method
from dfbk.training.trainer import parse_direction, pick_device

CONTRACT_KEYS = ("modality", "range", "norm")  # size: tiles; spacing: compared when recorded


def check_contract(payload: dict, store: SliceStore, checkpoint: Path) -> tuple[str, str]:
    """Refuse a store whose modality, range, normalisation (or recorded spacing) differ."""
    source, target = parse_direction(payload["direction"])
    for role, modality in (("source", source), ("target", target)):
        expected = payload[role]
        actual = store.contract(modality) if modality in store.modalities else None
        keys = CONTRACT_KEYS + (("spacing",) if "spacing" in expected else ())
        if actual is None or any(expected.get(k) != actual.get(k) for k in keys):
            raise DataError(
                f"{checkpoint}: {role} contract {expected} does not match slice store "
                f"{store.root} ({actual})"
            )
    return source, target


def checkpoint_knowledge(payload: dict[str, Any]) -> Knowledge | None:
    """The knowledge a checkpoint was trained with (`knowledge_tokens`/`knowledge_mask`, or the
    older single `knowledge_embedding` tensor)."""
    knowledge = Knowledge.from_payload(payload)
    if knowledge is None and payload.get("knowledge_embedding") is not None:
        knowledge = Knowledge(payload["knowledge_embedding"])
    return knowledge


def training_tile(payload: dict[str, Any]) -> tuple[int, int]:
    """The in-plane size the model was trained on: its patch size, else the slice size."""
    return trained_tile(payload.get("hparams") or {}, payload["source"]["size"])


def inference_tile(
    payload: dict[str, Any], method, slice_shape: tuple[int, int], tiling: str = "patch"
) -> tuple[int, int]:
    """The tile a test slice is translated in.

    patch: the training tile (`training_tile`), slid over the slice with Gaussian blending.
    slice: the whole slice at once, its sides rounded up to the network's size multiple (zero
    padding, prepare's background) and never below the training tile. Every built-in network
    is convolutional or attends in windows / over resampled positions, so it runs at any such
    size; one pass over a slice costs its area once instead of about 2.25 times (a 2 x 2 grid
    of half-overlapping tiles has 9 tiles of a quarter of the area each).
    """
    trained = training_tile(payload)
    if tiling == "patch":
        return trained
    if tiling != "slice":
        names = ", ".join(node("translate.tiling")["enum"])
        raise ValueError(f"tiling must be one of {names}; got {tiling!r}")
    from dfbk.methods.geometry import size_multiple

    multiple = size_multiple(type(method), method.hparams)
    return tuple(
        max(t, -(-int(s) // multiple) * multiple) for s, t in zip(slice_shape, trained, strict=True)
    )


def run_seed(payload: dict[str, Any]) -> int:
    """The training run's seed, from which every slice's noise seed is derived."""
    return int(payload.get("seed") or 0)


def check_finite(pred: np.ndarray, checkpoint: Path, what: str) -> None:
    """Refuse NaN/Inf predictions (a diverged model) before anything is written."""
    bad = int(np.size(pred) - np.count_nonzero(np.isfinite(pred)))
    if bad:
        raise non_finite_error(checkpoint, what, NonFiniteOutput(bad, int(np.size(pred))))


def non_finite_error(checkpoint: Path, what: str, err: NonFiniteOutput) -> TrainingError:
    """The one-line error for a diverged model's output, naming the checkpoint."""
    return TrainingError(
        f"{checkpoint}: {err.bad} of {err.total} predicted voxels of {what} are NaN or infinite "
        "(diverged model?); nothing written"
    )


@torch.no_grad()
def translate_slices(
    method,
    slices: np.ndarray,
    batch_size: int,
    knowledge: Knowledge | None = None,
    seeds: torch.Tensor | None = None,
    tile: tuple[int, int] | None = None,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """(N, H, W) in [0, 1] -> (N, H, W) predictions in [0, 1], tiled at `tile` (default: H, W).

    seeds: (N,) per-slice noise seeds (default: the slice's position, 0..N-1).
    """
    seeds = torch.arange(len(slices)) if seeds is None else seeds
    tile = tuple(slices.shape[1:]) if tile is None else tile
    pred, _ = translate_tiled(method, slices, seeds, tile, batch_size, knowledge, foreground)
    return pred


class NonFiniteVolumes(NonFiniteOutput):
    """A batch spanning these volumes predicted NaN or infinite values."""

    def __init__(self, names: list[str], err: NonFiniteOutput) -> None:
        super().__init__(err.bad, err.total)
        self.names = names


def translate_volumes(
    method,
    volumes: Iterable[tuple[str, np.ndarray, torch.Tensor]],
    batch_size: int,
    knowledge: Knowledge | None = None,
    tile: tuple[int, int] | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Translate several volumes with full batches: slices of consecutive volumes share them.

    volumes: (name, (n, H, W) slices in [0, 1], (n,) per-slice noise seeds), one slice size.
    Yields (name, (n, H, W) prediction) in the given order, each once its last slice is done.
    The slices form one stream cut into windows of `batch_size` consecutive slices, whichever
    volume they belong to, so only the job's last batch is partial; one volume at a time
    leaves a partial batch per volume (130 slices at batch 32: 4 full batches and one of 2,
    which on a GPU costs nearly a full batch's time). Each slice draws its noise from its own
    seed, so a prediction equals one-volume batching up to float32 rounding in the network.
    Raises NonFiniteVolumes (names of the window's volumes) at the first non-finite batch.
    """
    window = max(1, batch_size)
    pending: list[tuple[int, np.ndarray, torch.Tensor]] = []  # (volume, slices, seeds) pieces
    queued = 0
    names: list[str] = []
    shapes: list[tuple[int, ...]] = []
    parts: list[list[np.ndarray]] = []
    missing: list[int] = []  # slices of each volume not yet predicted
    emitted = 0

    def run() -> None:
        slices = np.concatenate([np.asarray(p[1], dtype=np.float32) for p in pending])
        seeds = torch.cat([torch.as_tensor(p[2], dtype=torch.int64) for p in pending])
        try:
            pred = translate_slices(method, slices, batch_size, knowledge, seeds, tile)
        except NonFiniteOutput as err:
            raise NonFiniteVolumes(list(dict.fromkeys(names[p[0]] for p in pending)), err) from err
        start = 0
        for volume, piece, _ in pending:
            parts[volume].append(pred[start : start + len(piece)])
            missing[volume] -= len(piece)
            start += len(piece)

    def finished() -> Iterator[tuple[str, np.ndarray]]:
        nonlocal emitted
        while emitted < len(names) and missing[emitted] == 0:
            done = parts[emitted]
            empty = np.zeros((0, *shapes[emitted]), dtype=np.float32)
            yield names[emitted], np.concatenate(done) if done else empty
            parts[emitted] = []  # free it
            emitted += 1

    for name, slices, seeds in volumes:
        volume = len(names)
        names.append(name)
        shapes.append(tuple(slices.shape[1:]))
        parts.append([])
        missing.append(len(slices))
        offset = 0
        while offset < len(slices):
            take = min(window - queued, len(slices) - offset)
            pending.append((volume, slices[offset : offset + take], seeds[offset : offset + take]))
            queued += take
            offset += take
            if queued == window:
                run()
                pending, queued = [], 0
                yield from finished()
        yield from finished()  # a volume without slices
    if pending:
        run()
    yield from finished()


def predict_test_set(
    checkpoint: Path,
    store_dir: Path,
    split_path: Path,
    out_dir: Path,
    batch_size: int = 32,
    device: str = "auto",
    amp: bool = True,
    tiling: str = "patch",
) -> dict:
    """Write `{subject}.nii.gz` (H, W, S) for each test subject into `out_dir`, atomically.

    amp: bf16 autocast of the networks on CUDA, as in training (ignored on CPU).
    tiling: patch (sliding training-size tiles) or slice (whole slices); `inference_tile`.
    """
    inputs = {"checkpoint": checkpoint, "slice store": store_dir, "split": split_path}
    out_dir = claim_folder(out_dir, "predict", inputs)
    payload = load_checkpoint(checkpoint)
    store = SliceStore(store_dir)
    source, _ = check_contract(payload, store, Path(checkpoint))
    check_fingerprint(payload, store_dir, split_path, Path(checkpoint))  # no training subject
    store.verify(read_split(split_path)["test"], [source])  # the slices translated, as recorded
    method = rebuild_method(payload, checkpoint).to(pick_device(device))
    method.amp = amp  # Method.autocast: bf16 on CUDA only
    knowledge = checkpoint_knowledge(payload)
    if knowledge is not None:
        knowledge = knowledge.to(method.device)
    tile = inference_tile(payload, method, tuple(store.size), tiling)
    images = store.images(source)
    axial = store.manifest["slice"].to_numpy()
    tmp = staging_folder(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subjects = read_split(split_path)["test"]

    def volumes() -> Iterator[tuple[str, np.ndarray, torch.Tensor]]:
        for subject in subjects:
            start, stop = store.subject_range(subject)
            seeds = slice_seeds(run_seed(payload), subject, axial[start:stop])
            yield subject, images[start:stop], seeds

    predictions = translate_volumes(method, volumes(), batch_size, knowledge, tile)
    try:
        for subject, pred in tqdm(
            predictions, total=len(subjects), desc=f"translate {payload['method']}", mininterval=5
        ):
            check_finite(pred, Path(checkpoint), f"subject {subject}")
            write_nifti(
                np.moveaxis(pred, 0, 2), store.subject_affine(subject), tmp / f"{subject}.nii.gz"
            )
    except NonFiniteVolumes as err:
        shutil.rmtree(tmp, ignore_errors=True)
        what = f"subject{'s' if len(err.names) > 1 else ''} {', '.join(err.names)}"
        raise non_finite_error(Path(checkpoint), what, err) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    index = {
        "checkpoint": str(checkpoint),
        "method": payload["method"],
        "direction": payload["direction"],
        "subjects": subjects,
        "tile": list(tile),
        "tiling": tiling,
        "slice_size": list(store.size),
        "noise_seeds": "blake2b(run seed, subject, axial slice index) per slice",
    }
    write_text(tmp / "predictions.json", json.dumps(index, indent=2) + "\n")
    mark(tmp, "predict")
    publish(tmp, out_dir, "predict")
    return index
