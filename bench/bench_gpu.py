"""Per-method training step and test-volume sampling cost at the `paper` scale, with MFU.

Usage (GPU, the real measurement):
    python bench/bench_gpu.py [--steps 10] [--warmup 3] [--peak-tflops 989] [methods...]
Usage (CPU smoke check, tiny presets at 64x64, one timed step, a 4-slice volume):
    python bench/bench_gpu.py --smoke

For every registered method (through the method interface only: `build_method`, `Batch`,
`training_step`, `translate` via `dfbk.inference.predict.translate_slices`, so a new method is
covered the day it is registered) it prints one table row:
- training step: wall seconds (median over timed steps, after warm-up steps that take the first
  allocations and cuDNN choices), images/s (batch / seconds), peak accelerator memory of a step;
- model FLOPs of one step, counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls and
  convolutions, forward and backward; what the trainer records as `flops`), and MFU: FLOPs per
  second over the device's dense bf16 peak (`--peak-tflops`, else looked up from the device name);
- sampling: seconds to translate one test volume of `--slices` slices at `--translate-batch`.
The trainer's AMP policy applies: bf16 autocast on CUDA (`method.amp`), float32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dfbk.inference.predict import translate_slices
from dfbk.methods import Batch, build_method, list_methods
from dfbk.methods.base import Knowledge, count_parameters

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets; the first
# name contained in the device name wins, so specific names come before their families.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("RTX 6000 Ada", 364.0),
    ("A6000", 155.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("A10", 125.0),
    ("L4", 121.0),
    ("V100", 125.0),  # fp16: V100 has no bf16 tensor cores
    ("T4", 65.0),  # fp16
]


def lookup_peak(device_name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a GPU from its CUDA name (None: not in the table)."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def device_peak(device: torch.device, given: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, device name) for MFU; `given` wins over the lookup."""
    if device.type != "cuda":
        return given, f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    name = torch.cuda.get_device_name(device)
    return (given if given is not None else lookup_peak(name)), name


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory since the last reset; on CPU the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def make_batch(method, size: int, device: torch.device, tokens: int, seed: int = 0) -> Batch:
    """A batch of the preset's size: smooth random slices in [0, 1], a full mask, knowledge."""
    g = torch.Generator().manual_seed(seed)
    n = int(method.hparams.get("batch_size", 1))
    source = torch.rand(n, 1, size, size, generator=g)
    target = (1.0 - source) * 0.8
    knowledge = make_knowledge(method, tokens)
    return Batch(source, target, torch.ones_like(source), knowledge).to(device)


def make_knowledge(method, tokens: int) -> Knowledge | None:
    """Knowledge tokens shaped as the encoder gives them, for methods with Knowledge Guidance."""
    if not method.hparams.get("kg"):
        return None
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(tokens, int(method.hparams["knowledge_dim"]), generator=g)
    return Knowledge(emb / emb.norm(dim=-1, keepdim=True), torch.ones(tokens, dtype=torch.bool))


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker: totals only.

    The tracker's backward hooks fail inside `torch.autograd.grad` (SynDiff's R1 penalty on
    the discriminator: "A leaf node was passed to _will_engine_execute_node"); the total is
    all this benchmark needs, and it is counted by the same FLOP formulas.
    """

    parents = ("Global",)

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def flop_counter() -> FlopCounterMode:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    return counter


def time_training(method, batch: Batch, device: torch.device, warmup: int, steps: int):
    """(median s/step, FLOPs of one step, peak memory GB of the timed steps)."""
    method.train()
    with flop_counter() as counter:  # the first real step, counted
        method.training_step(batch, 0)
    flops = int(counter.get_total_flops())
    for step in range(1, warmup):
        method.training_step(batch, step)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(warmup, warmup + steps):
        start = time.perf_counter()
        method.training_step(batch, step)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), flops, peak_memory_gb(device)


def time_volume(method, size: int, slices: int, batch: int, device: torch.device, tokens: int):
    """Seconds to translate one volume of `slices` slices (as `dfbk predict` does per subject)."""
    method.eval()
    volume = np.random.default_rng(0).random((slices, size, size), dtype=np.float32)
    knowledge = make_knowledge(method, tokens)
    knowledge = None if knowledge is None else knowledge.to(device)
    synchronize(device)
    start = time.perf_counter()
    translate_slices(method, volume, batch, knowledge, torch.arange(slices))
    synchronize(device)
    return time.perf_counter() - start


def bench_method(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    method = build_method(name, args.preset).to(device)
    method.amp = device.type == "cuda" and not args.no_amp  # the trainer's policy
    row: dict[str, Any] = {
        "method": name,
        "batch": int(method.hparams.get("batch_size", 1)),
        "params_m": count_parameters(method) / 1e6,
    }
    if int(method.hparams.get("steps", 0)) > 0:
        batch = make_batch(method, args.size, device, args.knowledge_tokens)
        seconds, flops, memory = time_training(method, batch, device, args.warmup, args.steps)
        row.update(step_s=seconds, images_s=row["batch"] / seconds, peak_gb=memory)
        row.update(tflop_step=flops / 1e12, tflops=flops / seconds / 1e12)
    row["volume_s"] = time_volume(
        method, args.size, args.slices, args.translate_batch, device, args.knowledge_tokens
    )
    del method
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]], peak: float | None) -> None:
    print(
        "| method | batch | params (M) | s/step | images/s | peak mem (GB) | TFLOP/step "
        "| TFLOP/s | MFU | s/volume |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | error: {r['error']} |||||||||")
            continue
        tflops = r.get("tflops")
        mfu = None if peak is None or tflops is None else 100 * tflops / peak
        print(
            f"| {r['method']} | {r['batch']} | {r['params_m']:.1f} | {fmt(r.get('step_s'), '.3f')} "
            f"| {fmt(r.get('images_s'), '.1f')} | {fmt(r.get('peak_gb'), '.2f')} "
            f"| {fmt(r.get('tflop_step'), '.3g')} | {fmt(tflops, '.3g')} "
            f"| {fmt(mfu, '.1f')}{'' if mfu is None else ' %'} | {r['volume_s']:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", help="methods (default: every registered one)")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--size", type=int, default=256, help="slice side (default 256)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 1)")
    parser.add_argument("--slices", type=int, default=155, help="slices per test volume")
    parser.add_argument("--translate-batch", type=int, default=32, help="as translate.batch_size")
    parser.add_argument("--knowledge-tokens", type=int, default=256, help="KG tokens (K)")
    parser.add_argument("--peak-tflops", type=float, help="device bf16 dense peak for MFU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    parser.add_argument("--json", type=Path, help="also write the rows here (bench_loader.py)")
    parser.add_argument(
        "--smoke", action="store_true", help="CPU check: tiny presets, 64x64, 1 step, 4 slices"
    )
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.size, args.steps, args.warmup = "tiny", 64, 1, 1
        args.slices, args.translate_batch = 4, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak, device_name = device_peak(device, args.peak_tflops)
    print(
        f"# {device_name}; torch {torch.__version__}; preset {args.preset} at "
        f"{args.size}x{args.size}; median of {args.steps} step(s) after {args.warmup} warm-up; "
        f"volume {args.slices} slices in batches of {args.translate_batch}; "
        f"{'bf16 autocast' if device.type == 'cuda' and not args.no_amp else 'float32'}; "
        f"MFU against {fmt(peak, '.0f')} TFLOP/s"
        + ("" if device.type == "cuda" else "; peak mem = process peak RSS so far")
    )
    rows = []
    for name in args.methods or list_methods():
        try:
            rows.append(bench_method(name, args, device))
        except (RuntimeError, ValueError) as err:  # e.g. out of memory: keep the other rows
            rows.append({"method": name, "error": str(err).splitlines()[0][:120]})
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print_table(rows, peak)
    if args.json:
        meta = {"device": device_name, "peak_tflops": peak, "preset": args.preset}
        args.json.write_text(json.dumps({**meta, "size": args.size, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
