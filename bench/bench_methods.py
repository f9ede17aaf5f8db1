"""Training step time of every method's `tiny` preset relative to pix2pix (a benchmark, not a test).

Usage: python bench/bench_methods.py [--size 64] [--steps 5] [--threads 1] [methods...]
Prints seconds per step (wall and CPU) and the ratio to pix2pix measured in the same process,
plus parameter counts of the tiny and paper presets.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from dfbk.methods import Batch, build_method, list_methods
from dfbk.methods.base import count_parameters


def time_steps(name: str, size: int, steps: int) -> tuple[float, float, int]:
    torch.manual_seed(0)
    method = build_method(name, "tiny")
    batch_size = int(method.hparams.get("batch_size", 16))
    g = torch.Generator().manual_seed(0)
    source = torch.rand(batch_size, 1, size, size, generator=g)
    batch = Batch(source, 1 - source, torch.ones_like(source))
    if method.hparams.get("kg"):
        batch.knowledge = torch.randn(1, method.hparams["knowledge_dim"])
    method.train()
    method.training_step(batch, 0)  # warm-up (allocations, first optimiser step)
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(1, steps + 1):
        method.training_step(batch, step)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps, batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", help="methods to time (default: all but identity)")
    parser.add_argument("--size", type=int, default=64, help="slice size (default 64)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.methods or [m for m in list_methods() if m != "identity"]
    if "pix2pix" not in names:
        names.insert(0, "pix2pix")
    print(
        f"# {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} thread(s), {args.size}x{args.size}, tiny presets"
    )
    print(
        f"{'method':18s} {'batch':>5s} {'s/step':>8s} {'cpu s':>8s} {'x pix2pix':>9s} "
        f"{'tiny params':>12s} {'paper params':>13s}"
    )
    reference = None
    rows = []
    for name in names:
        wall, cpu, batch = time_steps(name, args.size, args.steps)
        if name == "pix2pix":
            reference = cpu
        tiny = count_parameters(build_method(name, "tiny"))
        paper = count_parameters(build_method(name, "paper"))
        rows.append((name, batch, wall, cpu, tiny, paper))
    for name, batch, wall, cpu, tiny, paper in rows:
        print(
            f"{name:18s} {batch:5d} {wall:8.3f} {cpu:8.3f} {cpu / reference:9.2f} "
            f"{tiny:12,d} {paper:13,d}"
        )


if __name__ == "__main__":
    main()
