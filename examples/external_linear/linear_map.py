"""An external baseline: one linear intensity map source -> target, fitted by least squares.

A stand-in for an authors' repository run by the benchmark through `methods.<name>.external`
(README "Adding an external baseline", docs/external.md). It uses numpy and nibabel only and
imports nothing of dfbk: it reads the slice store as its files describe it
(`store.json`, `{modality}.f32`, `mask.u8`) and the split file, as any outside code would.

    train:     y ≈ a·x + b over the foreground voxels of the training subjects (2 parameters)
    translate: ŷ = clip(a·x + b, 0, 1) where x > 0, else 0; one (H, W, S) NIfTI per test subject

Usage (the workflow fills the placeholders):
    python linear_map.py train --store S --split F --direction t1n-to-t2w --checkpoint DIR
    python linear_map.py translate --store S --split F --direction t1n-to-t2w \
        --checkpoint DIR --predictions DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def read_store(store: Path, modality: str) -> tuple[dict, np.ndarray]:
    """store.json and the (N, H, W) float32 array of one modality, memory-mapped."""
    meta = json.loads((store / "store.json").read_text())
    shape = (int(meta["n_slices"]), *map(int, meta["size"]))
    return meta, np.memmap(store / f"{modality}.f32", dtype="<f4", mode="r", shape=shape)


def subject_slices(meta: dict, subjects: list[str]) -> np.ndarray:
    """Store indices of every slice of `subjects`."""
    ranges = [range(meta["subjects"][s]["start"], meta["subjects"][s]["stop"]) for s in subjects]
    return np.fromiter((i for r in ranges for i in r), dtype=np.int64)


def train(args: argparse.Namespace) -> None:
    source, target = args.direction.split("-to-")
    meta, x = read_store(args.store, source)
    _, y = read_store(args.store, target)
    mask = np.memmap(args.store / "mask.u8", dtype="u1", mode="r", shape=x.shape)
    train_subjects = json.loads(args.split.read_text())["train"]
    index = subject_slices(meta, train_subjects)
    fg = mask[index] > 0
    xs, ys = np.asarray(x[index])[fg], np.asarray(y[index])[fg]
    start = time.time()
    design = np.stack([xs, np.ones_like(xs)], axis=1).astype(np.float64)
    (a, b), *_ = np.linalg.lstsq(design, ys.astype(np.float64), rcond=None)
    mse = float(np.mean((a * xs + b - ys) ** 2))
    args.checkpoint.mkdir(parents=True, exist_ok=True)
    model = {"a": float(a), "b": float(b), "direction": args.direction, "seed": args.seed,
             "train_subjects": len(train_subjects), "voxels": int(xs.size),
             "params": json.loads(args.params)}  # fmt: skip
    (args.checkpoint / "linear_map.json").write_text(json.dumps(model, indent=2) + "\n")
    log = {"step": 1, "loss_mse": mse, "time": round(time.time() - start, 3)}
    (args.checkpoint / "train_log.jsonl").write_text(json.dumps(log) + "\n")
    print(f"fitted {target} = {a:.4f} * {source} + {b:.4f} on {xs.size} voxels (MSE {mse:.5f})")


def translate(args: argparse.Namespace) -> None:
    model = json.loads((args.checkpoint / "linear_map.json").read_text())
    source, _ = args.direction.split("-to-")
    meta, x = read_store(args.store, source)
    args.predictions.mkdir(parents=True, exist_ok=True)
    for subject in json.loads(args.split.read_text())["test"]:
        info = meta["subjects"][subject]
        volume = np.asarray(x[info["start"] : info["stop"]], dtype=np.float32)  # (S, H, W)
        pred = np.where(volume > 0, np.clip(model["a"] * volume + model["b"], 0, 1), 0)
        volume_hws = np.moveaxis(pred, 0, 2).astype(np.float32)  # (H, W, S): the store's grid
        image = nib.Nifti1Image(volume_hws, np.array(info["affine"]))
        nib.save(image, str(args.predictions / f"{subject}.nii.gz"))
    print(f"wrote predictions to {args.predictions}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("verb", choices=("train", "translate"))
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--direction", required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--predictions", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default="{}", help="the method's overrides as JSON")
    args = parser.parse_args()
    if args.verb == "train":
        train(args)
    else:
        if args.predictions is None:
            parser.error("translate needs --predictions")
        translate(args)


if __name__ == "__main__":
    main()
