"""translate: run a trained checkpoint over the test split, one volume per subject.

The checkpoint alone rebuilds the model (`rebuild_method`); its data contract must match the
slice store's (same modality, normalisation and slice size) or the job is refused. Slices are
translated in batches and stacked back into (H, W, S) volumes on the store's prepared grid.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dfbk.data.io import write_nifti, write_text
from dfbk.data.splits import read_split
from dfbk.data.store import SliceStore
from dfbk.errors import DataError
from dfbk.training.checkpoint import load_checkpoint, rebuild_method
from dfbk.training.trainer import parse_direction, pick_device


def check_contract(payload: dict, store: SliceStore, checkpoint: Path) -> tuple[str, str]:
    """Refuse a store whose modality, normalisation or size differs from the checkpoint's."""
    source, target = parse_direction(payload["direction"])
    for role, modality in (("source", source), ("target", target)):
        expected = payload[role]
        actual = store.contract(modality) if modality in store.modalities else None
        if actual != expected:
            raise DataError(
                f"{checkpoint}: {role} contract {expected} does not match slice store "
                f"{store.root} ({actual})"
            )
    return source, target


@torch.no_grad()
def translate_slices(method, slices: np.ndarray, batch_size: int, knowledge=None) -> np.ndarray:
    """(N, H, W) in [0, 1] -> (N, H, W) predictions in [0, 1]."""
    device = method.device
    out = np.empty(slices.shape, dtype=np.float32)
    for start in range(0, len(slices), batch_size):
        chunk = torch.from_numpy(np.asarray(slices[start : start + batch_size], dtype=np.float32))
        pred = method.translate(chunk.unsqueeze(1).to(device), knowledge)
        out[start : start + len(chunk)] = pred.squeeze(1).float().cpu().numpy()
    return out


def predict_test_set(
    checkpoint: Path,
    store_dir: Path,
    split_path: Path,
    out_dir: Path,
    batch_size: int = 32,
    device: str = "auto",
) -> dict:
    """Write `{subject}.nii.gz` (H, W, S) for each test subject into `out_dir`, atomically."""
    payload = load_checkpoint(checkpoint)
    store = SliceStore(store_dir)
    source, _ = check_contract(payload, store, Path(checkpoint))
    method = rebuild_method(payload).to(pick_device(device))
    knowledge = payload.get("knowledge_embedding")
    if knowledge is not None:
        knowledge = knowledge.to(method.device)
    images = store.images(source)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subjects = read_split(split_path)["test"]
    for subject in tqdm(subjects, desc=f"translate {payload['method']}", mininterval=5):
        start, stop = store.subject_range(subject)
        pred = translate_slices(method, images[start:stop], batch_size, knowledge)
        write_nifti(
            np.moveaxis(pred, 0, 2), store.subject_affine(subject), tmp / f"{subject}.nii.gz"
        )
    index = {
        "checkpoint": str(checkpoint),
        "method": payload["method"],
        "direction": payload["direction"],
        "subjects": subjects,
    }
    write_text(tmp / "predictions.json", json.dumps(index, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return index
