"""Test-set translation throughput per method: volumes (and slices) per minute on this machine.

Usage: python bench/bench_translate.py [--preset tiny] [--size 64] [--subjects 6]
                                       [--threads 1] [methods...]

For each method: a checkpoint from one training step of the shared trainer (the weights do not
change the cost of translating), then `dfbk.inference.predict.predict_test_set`, the function behind
`dfbk predict` and the translate_test_set rule, on the test split of a fabricated phantom store
(`dfbk.data.phantom.anatomy`, T1 -> T2, prepared at --size). Timed: the whole call (checkpoint load,
model rebuild, every test volume translated and written as NIfTI). Knowledge Guidance methods
get MiniLM prompt tokens (the offline encoder), as `dfbk knowledge --encoder minilm` writes.

The test subjects' slices are batched as one stream (`dfbk.inference.predict.translate_volumes`):
the header gives the batches of slices this takes against one subject at a time (tiled
slices multiply both). On a CPU a batch costs about its size, so only a GPU, where a partial
batch costs nearly a full one, gains from the fewer batches; these figures are CPU throughput
at reduced size.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from dfbk.data.phantom.anatomy import generate_phantom_dataset
from dfbk.data.slices.prepare import prepare_dataset
from dfbk.data.slices.splits import write_or_check_split
from dfbk.data.slices.store import SliceStore
from dfbk.inference.predict import predict_test_set
from dfbk.knowledge import DEFAULT_PROMPTS, encode_or_load
from dfbk.methods.registry import list_methods
from dfbk.training.trainer import TrainSpec, train


def fabricate(root: Path, subjects: int, size: int) -> tuple[Path, Path, list[str], int]:
    """Phantom store and split; (store, split, test subjects, test slices)."""
    raw = root / "raw"
    generate_phantom_dataset(raw, n_subjects=subjects, seed=3, voxel_mm=4.0)
    prepare_dataset("phantom", raw, root / "store", ["t1n", "t2w"], (size, size), 0.05)
    store = SliceStore(root / "store")
    test = max(1, subjects // 3)
    counts = {"train": subjects - test - 1, "val": 1, "test": test}
    split = write_or_check_split(root / "splits.json", store.subjects, counts, 0)
    counts = [b - a for a, b in map(store.subject_range, split["test"])]
    return root / "store", root / "splits.json", split["test"], counts


def checkpoint(name: str, preset: str, root: Path, store: Path, split: Path, knowledge: Path):
    """model.pt of one training step (no validation during it)."""
    out = root / "train" / name
    spec = TrainSpec(
        dataset="phantom",
        direction="t1n-to-t2w",
        method=name,
        seed=0,
        store_dir=store,
        split_path=split,
        out_dir=out,
        checkpoint_dir=out / "checkpoints",
        preset=preset,
        overrides={"steps": 1},
        device="cpu",
        knowledge_path=knowledge,
        val_every=0,
        val_slices=1,
    )
    train(spec)
    return out / "model.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", help="methods (default: every registered one)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--size", type=int, default=64, help="slice side of the store")
    parser.add_argument("--subjects", type=int, default=6, help="phantom subjects (1/3 test)")
    parser.add_argument("--batch-size", type=int, default=32, help="translate.batch_size")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-translate-") as folder:
        root = Path(folder)
        store, split, test, counts = fabricate(root, args.subjects, args.size)
        slices, batch = sum(counts), args.batch_size
        per_subject = sum(math.ceil(n / batch) for n in counts)
        knowledge = root / "knowledge.pt"
        encode_or_load(DEFAULT_PROMPTS["t2w"], "minilm", knowledge)
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
            f"{os.getloadavg()[0]:.1f}, {args.threads} thread(s); preset {args.preset}; phantom "
            f"T1->T2 at {args.size}x{args.size}: {len(test)} test volumes, {slices} slices; "
            f"batch {batch}: {math.ceil(slices / batch)} slice batches across subjects, "
            f"{per_subject} one subject at a time"
        )
        print("| method | s per test set | volumes/min | slices/s |")
        print("|---|---:|---:|---:|")
        for name in args.methods or list_methods():
            try:
                model = checkpoint(name, args.preset, root, store, split, knowledge)
                start = time.perf_counter()
                predict_test_set(model, store, split, root / "pred" / name, args.batch_size, "cpu")
                seconds = time.perf_counter() - start
            except Exception as err:  # a broken method gets its row; the others still run
                message = str(err).splitlines()[0][:100] if str(err) else ""
                print(f"| {name} | error: {type(err).__name__}: {message} | | |", flush=True)
                continue
            print(
                f"| {name} | {seconds:.2f} | {60 * len(test) / seconds:.1f} | "
                f"{slices / seconds:.3g} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
