"""Does the slice batcher keep a GPU fed? Slices/s it delivers at 256x256 vs what training eats.

Usage: python bench/bench_loader.py [--seconds 3] [--slices 480] [--tflops 400] [--floor-ms 15]
                                    [--gpu-bench bench_gpu.json]

Supply: `dfbk.data.loader.SliceBatcher` (what the trainer uses: memory-mapped store, read in
the training process, no worker processes) on a fabricated 256x256 store of two modalities,
with each method's `paper` data settings (batch size, flips, paired or unpaired partners, patch
size) from the method catalog. Slices/s = samples (source, target and mask) per second of
`batch(step)` calls. The store is written just before and read from the page cache: this is
the loader's own cost, not the disk's (docs/scaling.md discusses a store larger than memory).

Demand: samples per second one `paper` training step consumes, batch / step time. Without a
GPU the step time is derived: max(F_step / R, floor), with F_step the FLOPs of one paper step
counted by PyTorch's flop counter (docs/scaling.md, "GPU-hours") and R the assumed sustained
throughput (`--tflops`, default 400 TFLOP/s: an H100/H200 at ~40 % of its 989 TFLOP/s bf16
peak); `floor` is the launch-bound minimum of a small step (`--floor-ms`, default 15 ms). With
`--gpu-bench` the step times measured by `bench/bench_gpu.py --json` replace the derivation.
A ratio supply/demand under 5 means the loader is a risk (it runs in the training loop, so
its time adds to every step); above it, loading is a small fraction of each step.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from dfbk.data.loader import SliceBatcher
from dfbk.data.store import write_store
from dfbk.methods.catalog import load_catalog

# FLOPs of one `paper` training step at 256x256 (TFLOP), counted with
# torch.utils.flop_counter on each preset (docs/scaling.md, table in "GPU-hours").
PAPER_STEP_TFLOP = {
    "dfbk": 67.4,
    "resshift": 65.2,
    "pix2pix": 0.086,
    "ea_gan": 0.515,
    "revgan": 0.510,
    "maskgan": 7.85,
    "resvit": 0.768,
    "syndiff": 5.51,
}
SAFE_RATIO = 5.0


def fabricate_store(root: Path, n_slices: int, size: int, per_subject: int = 40):
    """Smooth random 'heads': two modalities in [0, 1], a disc mask, no labels."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2).astype(np.uint8)
    t1 = rng.random((n_slices, size, size), dtype=np.float32) * disc
    images = {"t1n": t1, "t2w": (1.0 - t1) * disc}
    subjects = {f"s{i:03d}": per_subject for i in range(n_slices // per_subject)}
    n = sum(subjects.values())
    images = {m: a[:n] for m, a in images.items()}
    mask = np.broadcast_to(disc, (n, size, size))
    return write_store(root, images, mask, np.zeros_like(mask), subjects), list(subjects)


def supply(
    store, subjects: list[str], hparams: dict, paired: bool, seconds: float
) -> tuple[float, float]:
    """Samples per wall second and per CPU second that SliceBatcher.batch delivers.

    On a busy machine the wall figure is what this process got; the CPU figure is what one
    idle core would deliver (the loader is single-threaded).
    """
    batcher = SliceBatcher(
        store,
        "t1n",
        "t2w",
        subjects,
        int(hparams["batch_size"]),
        seed=0,
        flip=hparams["augment"] == "hflip",
        paired=paired,
        patch_size=hparams["patch_size"],
    )
    batcher.batch(0)  # first touch of the maps
    samples, step = 0, 1
    start, cpu_start = time.perf_counter(), time.thread_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        samples += batcher.batch(step).source.shape[0]
        step += 1
    return samples / elapsed, samples / (time.thread_time() - cpu_start)


def demand(name: str, batch: int, args: argparse.Namespace, measured: dict) -> tuple[float, str]:
    """(samples/s one paper step consumes, how the step time was obtained)."""
    if name in measured:
        return batch / measured[name], "measured"
    tflop = PAPER_STEP_TFLOP[name]
    seconds = max(tflop / args.tflops, args.floor_ms / 1000)
    how = "floor" if seconds == args.floor_ms / 1000 else "F/R"
    return batch / seconds, how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per method")
    parser.add_argument("--slices", type=int, default=480, help="slices in the fabricated store")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--tflops", type=float, default=400.0, help="assumed sustained TFLOP/s")
    parser.add_argument("--floor-ms", type=float, default=15.0, help="assumed minimum step")
    parser.add_argument("--gpu-bench", type=Path, help="JSON of bench_gpu.py (measured steps)")
    args = parser.parse_args()
    measured = {}
    if args.gpu_bench:
        rows = json.loads(args.gpu_bench.read_text())["rows"]
        measured = {r["method"]: r["step_s"] for r in rows if r.get("step_s")}
    catalog = load_catalog()
    print(
        f"# SliceBatcher at {args.size}x{args.size}, {args.slices} slices, page cache warm, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; demand from "
        + (
            "measured steps"
            if measured
            else f"R {args.tflops:g} TFLOP/s, floor {args.floor_ms:g} ms"
        )
    )
    print(
        "| method | batch | paired | patch | loader samples/s (wall) | per CPU s "
        "| step samples/s | step | ratio (wall) | ratio (CPU) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as folder:
        store, subjects = fabricate_store(Path(folder) / "store", args.slices, args.size)
        worst = best = None
        for name in PAPER_STEP_TFLOP:
            hparams = catalog[name].presets["paper"]
            batch = int(hparams["batch_size"])
            paired = bool(hparams.get("paired", catalog[name].paired))  # as Method.paired
            wall, cpu = supply(store, subjects, hparams, paired, args.seconds)
            need, how = demand(name, batch, args, measured)
            worst = min(worst or wall / need, wall / need)
            best = min(best or cpu / need, cpu / need)
            print(
                f"| {name} | {batch} | {paired} | {hparams['patch_size'] or '–'} | {wall:,.0f} "
                f"| {cpu:,.0f} | {need:,.0f} | {how} | {wall / need:.1f}x | {cpu / need:.1f}x |"
            )
    for label, ratio in (("wall", worst), ("CPU", best)):
        verdict = "under" if ratio < SAFE_RATIO else "at least"
        print(f"lowest ratio ({label}) {ratio:.1f}x: {verdict} {SAFE_RATIO:g}x")


if __name__ == "__main__":
    main()
