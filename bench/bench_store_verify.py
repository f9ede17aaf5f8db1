"""What does checking a slice store's content cost? Seconds to verify a store of realistic size.

Usage: python bench/bench_store_verify.py [--gb 1.0] [--size 256] [--slices 155] [--repeat 3]

Fabricates a store of about `--gb` GB (two float32 modalities plus mask and label, `--size`
square slices, `--slices` per subject: a BraTS-like 256x256x155 head), written by
`dfbk.data.slices.store.write_store` as prepare writes it (per-subject digests), then times
`SliceStore.verify` as each command calls it, on a fresh `SliceStore` each time:

- evaluate: the test subjects (a quarter) x target, mask, label;
- predict: the test subjects x source;
- train: the train and val subjects (three quarters) x source, target, mask;
- everything: all subjects x all four arrays;
- older store: the whole-file fallback (store.json without per-subject digests), all arrays.

Each is timed warm (the files in the page cache, as right after prepare or a previous command)
and cold (the files dropped from the page cache with posix_fadvise(DONTNEED) first, so they are
read from the disk; what a node that did not write the store sees). GB/s = bytes hashed per
second, beside SHA-256 of bytes already in memory (the ceiling on this CPU). The lowest of
`--repeat` runs is printed; cold figures depend on the disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from dfbk.data.slices.store import SliceStore, array_file, write_store

ARRAYS = ("t1n", "t2w", "mask", "label")


def fabricate(root: Path, gb: float, size: int, slices: int) -> list[str]:
    """A store of about `gb` GB, subject by subject random images; returns the subjects."""
    per_slice = size * size * (4 * 2 + 2)
    n_subjects = max(4, round(gb * 1e9 / (per_slice * slices)))
    rng = np.random.default_rng(0)
    n = n_subjects * slices
    images = {m: rng.random((n, size, size), dtype=np.float32) for m in ARRAYS[:2]}
    mask = (images["t1n"] > 0.2).astype(np.uint8)
    label = (images["t2w"] > 0.95).astype(np.uint8)
    names = {f"subject-{k:04d}": slices for k in range(n_subjects)}
    write_store(root, images, mask, label, names)
    return list(names)


def drop_cache(root: Path) -> None:
    """Evict the store's files from the page cache (no privileges needed for one's own files)."""
    for name in map(array_file, ARRAYS):
        fd = os.open(root / name, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def nbytes(store: SliceStore, subjects: list[str], arrays: tuple[str, ...]) -> int:
    count = sum(stop - start for start, stop in map(store.subject_range, subjects))
    per_slice = store.size[0] * store.size[1]
    return sum(count * per_slice * (4 if a not in ("mask", "label") else 1) for a in arrays)


def timed(root: Path, subjects: list[str], arrays: tuple[str, ...], cold: bool) -> float:
    if cold:
        drop_cache(root)
    else:  # warm: read once so the cache holds them
        SliceStore(root).verify(subjects, arrays)
    store = SliceStore(root)
    start = time.perf_counter()
    store.verify(subjects, arrays)
    return time.perf_counter() - start


def _hash_seconds(buffer: bytes) -> float:
    start = time.perf_counter()
    hashlib.sha256(buffer).hexdigest()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="store size in GB (1e9 bytes)")
    parser.add_argument("--size", type=int, default=256, help="slice side (default 256)")
    parser.add_argument("--slices", type=int, default=155, help="slices per subject (155)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure, lowest kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dfbk-verify-") as tmp:
        root = Path(tmp) / "store"
        started = time.perf_counter()
        subjects = fabricate(root, args.gb, args.size, args.slices)
        made = time.perf_counter() - started
        store = SliceStore(root)
        total = sum((root / array_file(a)).stat().st_size for a in ARRAYS)
        quarter = max(1, len(subjects) // 4)
        test, rest = subjects[:quarter], subjects[quarter:]
        cases = {
            "evaluate (test x target, mask, label)": (test, ("t2w", "mask", "label")),
            "predict (test x source)": (test, ("t1n",)),
            "train (train+val x source, target, mask)": (rest, ("t1n", "t2w", "mask")),
            "everything (all x all arrays)": (subjects, ARRAYS),
        }
        print(
            f"store: {len(subjects)} subjects x {args.slices} slices of {args.size}x{args.size}, "
            f"{total / 1e9:.2f} GB in 4 arrays (fabricated and written in {made:.1f} s)"
        )
        print(
            f"{'what is verified':44} {'GB':>6} {'warm s':>8} {'GB/s':>6} {'cold s':>8} {'GB/s':>6}"
        )
        for label, (who, arrays) in cases.items():
            size = nbytes(store, who, arrays) / 1e9
            warm = min(timed(root, who, arrays, cold=False) for _ in range(args.repeat))
            cold = min(timed(root, who, arrays, cold=True) for _ in range(args.repeat))
            print(
                f"{label:44} {size:6.3g} {warm:8.2f} {size / warm:6.2f} {cold:8.2f} "
                f"{size / cold:6.2f}"
            )
        buffer = np.random.default_rng(1).bytes(256 << 20)
        best = min(_hash_seconds(buffer) for _ in range(args.repeat))
        label = "sha256 of 256 MiB in memory (the ceiling)"
        print(f"{label:44} {len(buffer) / 1e9:6.3g} {best:8.2f} {len(buffer) / 1e9 / best:6.2f}")
        meta = json.loads((root / "store.json").read_text())
        for info in meta["subjects"].values():
            del info["digests"]
        (root / "store.json").write_text(json.dumps(meta))
        warm = min(timed(root, subjects, ARRAYS, cold=False) for _ in range(args.repeat))
        cold = min(timed(root, subjects, ARRAYS, cold=True) for _ in range(args.repeat))
        label = "older store: whole files, all arrays"
        print(
            f"{label:44} {total / 1e9:6.3g} {warm:8.2f} {total / 1e9 / warm:6.2f} "
            f"{cold:8.2f} {total / 1e9 / cold:6.2f}"
        )


if __name__ == "__main__":
    main()
