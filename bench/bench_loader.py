"""Does the slice batcher keep a GPU fed? Slices/s it delivers at 256x256 vs what training eats.

Usage: python bench/bench_loader.py [--seconds 3] [--slices 480] [--tflops 400] [--floor-ms 15]
                                    [--prefetch 0,thread,2] [--gpu-bench bench_gpu.json]

Supply: `dfbk.data.slices.loader.SliceBatcher` (what the trainer uses: memory-mapped store) read
through `prefetched_batches` in each `--prefetch` mode: 0 reads in the training process when a
batch is asked for, `thread` reads two batches ahead in a background thread, N > 0 reads ahead
in N DataLoader worker processes (pinned memory when CUDA is present, as the trainer would), on
a fabricated 256x256 store of two modalities,
with each method's `paper` data settings (batch size, flips, paired or unpaired partners, patch
size) from the method catalog. Slices/s = samples (source, target and mask) per second of
`batch(step)` calls; "per CPU s" divides by the CPU time of the training process's own thread
(with a thread or workers: what receiving the batches costs it; the reading runs on other
cores). The
store is written just before and read from the page cache: this is the loader's own cost, not
the disk's (docs/scaling.md discusses a store larger than memory). With prefetch the wall
figure needs a free core per reader; on a busy machine it is what the processes got.

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
import torch

from dfbk.data.slices.loader import SliceBatcher, prefetched_batches
from dfbk.data.slices.store import write_store
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
    store, subjects: list[str], hparams: dict, paired: bool, seconds: float, prefetch: str = "0"
) -> tuple[float, float]:
    """Samples per wall second and per CPU second of this thread that the loader delivers.

    On a busy machine the wall figure is what the processes got; the CPU figure is what one
    idle core would deliver in-process, or what the training thread pays with prefetch.
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
    pin = torch.cuda.is_available()
    mode = {"thread": True} if prefetch == "thread" else {"workers": int(prefetch)}
    batches = prefetched_batches(batcher, 1, 10**9, pin_memory=pin, **mode)
    next(batches)  # the reader started and its first batches queued
    samples = 0
    start, cpu_start = time.perf_counter(), time.thread_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        samples += next(batches).source.shape[0]
    cpu = time.thread_time() - cpu_start
    batches.close()  # stops the thread or workers
    return samples / elapsed, samples / max(cpu, 1e-9)


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
    parser.add_argument(
        "--prefetch",
        default="0,thread,2",
        help="comma-separated modes: 0 in-process, thread, N worker processes",
    )
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
        "| method | batch | paired | patch | prefetch | loader samples/s (wall) | per CPU s "
        "| step samples/s | step | ratio (wall) | ratio (CPU) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|")
    modes = args.prefetch.split(",")
    worst: dict[str, float] = {}
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as folder:
        store, subjects = fabricate_store(Path(folder) / "store", args.slices, args.size)
        for name in PAPER_STEP_TFLOP:
            hparams = catalog[name].presets["paper"]
            batch = int(hparams["batch_size"])
            paired = bool(hparams.get("paired", catalog[name].paired))  # as Method.paired
            need, how = demand(name, batch, args, measured)
            for mode in modes:
                wall, cpu = supply(store, subjects, hparams, paired, args.seconds, mode)
                worst[mode] = min(worst.get(mode, wall / need), wall / need)
                best[mode] = min(best.get(mode, cpu / need), cpu / need)
                print(
                    f"| {name} | {batch} | {paired} | {hparams['patch_size'] or '–'} | {mode} "
                    f"| {wall:,.0f} | {cpu:,.0f} | {need:,.0f} | {how} | {wall / need:.1f}x "
                    f"| {cpu / need:.1f}x |"
                )
    for mode in modes:
        for label, ratio in (("wall", worst[mode]), ("CPU", best[mode])):
            verdict = "under" if ratio < SAFE_RATIO else "at least"
            print(
                f"prefetch {mode}: lowest ratio ({label}) {ratio:.1f}x: {verdict} {SAFE_RATIO:g}x"
            )


if __name__ == "__main__":
    main()
