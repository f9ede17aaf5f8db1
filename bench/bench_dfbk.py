"""Benchmark: what DFB + KG cost on top of ResShift's Swin-UNet, and the Haar transform backends.

Measures, in one run on this machine (CUDA if available, else CPU):
- training steps/s and sampled slices/s (15 network evaluations each) for `resshift` vs `dfbk`
  at `tiny` (64×64, batch 16) and `paper` (256×256, batch 2 on CPU, 16 on GPU, a few steps;
  CPU --quick: the paper architecture at 64×64, see `plan`);
- forward+backward FLOPs per slice of both networks at tiny 64×64 and paper 256×256 (counted on
  the meta device, so the paper comparison is exact even where a CPU step is unaffordable);
- the Haar DWT+IDWT round trip of dfbk/networks/wavelets.py ("conv") vs pytorch_wavelets.
The two methods' steps are interleaved so that load from other processes hits both alike.
Prints a table with DFBK/ResShift ratios (aim: <= 1.3x per training step) and the machine.
Knowledge is 108 text-token slots of width 768 with a padding mask (BiomedCLIP's size).

`--capacity` prints instead, for every ablation row at `paper` (256x256, its batch of 16):
trainable parameters, + % over resshift, and forward+backward TFLOPs per training step, for
BiomedCLIP knowledge (768-d text + 197 image tokens) and the MiniLM fallback (384-d text), plus
the frozen image tower's forward FLOPs (bench/capacity.py; meta device, no weights).

    python bench/bench_dfbk.py --quick     # ~3 minutes on 1 CPU thread
    python bench/bench_dfbk.py --capacity  # ~2 minutes on 1 CPU thread
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import capacity
import torch

from dfbk.methods import Batch, build_method
from dfbk.methods.base import Knowledge, count_parameters

METHODS = ("resshift", "dfbk")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds of fn(). On a shared machine other processes inflate the wall time
    but hardly this process's CPU time, so the table shows both."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def make_batch(batch: int, size: int, knowledge_dim: int, device: torch.device) -> Batch:
    g = torch.Generator().manual_seed(0)
    source = torch.rand(batch, 1, size, size, generator=g)
    slots = capacity.TEXT_TOKENS  # 4 prompts x 27 token slots, the shorter ones padded
    mask = torch.arange(slots) % 27 < torch.tensor([27, 23, 22, 27]).repeat_interleave(27)
    knowledge = Knowledge(torch.randn(slots, knowledge_dim, generator=g), mask)
    return Batch(source, 1 - source, torch.ones_like(source), knowledge).to(device)


def build(name: str, preset: str, device: torch.device):
    torch.manual_seed(0)
    overrides = {"knowledge_dim": 768, "visual_knowledge": "off"} if name != "resshift" else {}
    method = build_method(name, preset, overrides).to(device)
    method.amp = device.type == "cuda"  # as the trainer does: bf16 autocast on GPU
    return method


def bench_training(
    preset: str, size: int, batch: int, steps: int, warmup: int, device: torch.device
) -> dict:
    """Median seconds per training step for each method, steps interleaved after warm-up."""
    methods = {name: build(name, preset, device) for name in METHODS}
    data = make_batch(batch, size, 768, device)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in METHODS}
    for step in range(warmup + steps):
        for name, method in methods.items():
            method.train()
            seconds = timed(lambda m=method, s=step: m.training_step(data, s), device)
            if step >= warmup:
                times[name].append(seconds)
    return {
        name: {
            "step_s": statistics.median(wall for wall, _ in times[name]),
            "cpu_s": statistics.median(cpu for _, cpu in times[name]),
            "params": count_parameters(methods[name].net),
        }
        for name in METHODS
    }


def bench_sampling(preset: str, size: int, batch: int, nfe: int | None, device: torch.device):
    """Seconds per sampled slice: a full `translate`, or `nfe` network evaluations scaled to T."""
    result = {}
    data = make_batch(batch, size, 768, device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    y = data.source * 2 - 1
    for name in METHODS:
        method = build(name, preset, device).eval()
        if nfe is None:
            method.translate(data.source[:1], data.knowledge)  # warm-up
            seconds = timed(lambda m=method: m.translate(data.source, data.knowledge), device)[0]
        else:
            evaluate = lambda m=method: m.denoise(y, y, t, data.knowledge)  # noqa: E731
            with torch.no_grad():
                per_nfe = statistics.median(timed(evaluate, device)[0] for _ in range(nfe))
            seconds = per_nfe * method.schedule.num_steps
        result[name] = seconds / batch
    return result


def bench_haar(shape: tuple[int, ...], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of one DWT+IDWT round trip per backend."""
    from dfbk.networks.wavelets import HaarWavelet

    x = torch.randn(*shape, device=device)
    out = {}
    for backend in ("conv", "pytorch_wavelets"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pytorch_wavelets imports pkg_resources
            wavelet = HaarWavelet(backend).to(device)
        round_trip = lambda w=wavelet: w.idwt(*w.dwt(x))  # noqa: E731
        round_trip()
        out[backend] = statistics.median(timed(round_trip, device)[0] for _ in range(repeats))
    return out


def training_flops(preset: str, size: int) -> dict[str, float]:
    """Forward+backward FLOPs per slice, counted on the meta device (bench/capacity.py).

    Costs nothing to run, so the 256x256 paper networks are compared even where a CPU cannot
    afford one of their steps.
    """
    return {
        name: capacity.training_flops(capacity.network_hparams(name, preset, 768), size, 1)
        for name in METHODS
    }


def print_capacity() -> None:
    """Parameters and training FLOPs per step of every ablation row at `paper`, 256x256."""
    from dfbk.methods.dfbk import ABLATIONS

    names = ["resshift", *ABLATIONS]
    for knowledge_dim, visual_dim, label in (
        (768, 768, "BiomedCLIP knowledge: 768-d text tokens + 197 image tokens per slice"),
        (384, 0, "MiniLM fallback: 384-d text tokens, no image tokens"),
    ):
        print(f"\n{label} (paper, 256x256, batch 16)")
        print(f"  {'method':16} {'parameters':>13} {'vs resshift':>11} {'TFLOP/step':>11} ratio")
        rows = capacity.ablation_capacity(names, "paper", 256, knowledge_dim, visual_dim)
        for row in rows:
            ratio = row["train_flops_per_step"] / rows[0]["train_flops_per_step"]
            print(
                f"  {row['method']:16} {row['n_parameters']:13,d} {100 * row['vs_first']:+10.1f}% "
                f"{row['train_flops_per_step'] / 1e12:11.2f} {ratio:6.3f}"
            )
    tower = capacity.vision_tower_flops(16)
    print(f"\nfrozen BiomedCLIP image tower (ViT-B/16, 224x224): {tower / 1e12:.2f} TFLOP/step")


def machine(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return (
        f"{platform.platform()} | {name or platform.machine()} | {torch.get_num_threads()} torch "
        f"thread(s), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} | "
        f"torch {torch.__version__} | {device}"
    )


def plan(quick: bool, gpu: bool, paper_size: int | None) -> list[tuple]:
    """(preset, size, batch, timed steps, warm-up steps, NFEs for sampling or None = translate).

    The paper network in pixel space costs ~1.6 TFLOP per 256x256 forward (one forward takes
    about a minute on one CPU thread), so on CPU --quick runs the same architecture at 64x64
    and estimates sampling from one network evaluation x 15.
    """
    tiny = ("tiny", 64, 16, 5 if quick else 20, 1, None)
    if gpu:
        return [tiny, ("paper", paper_size or 256, 16, 5, 1, None)]
    size = paper_size or (64 if quick else 256)
    return [tiny, ("paper", size, 2, 1 if quick else 3, 0, 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps; about 3 min on CPU")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--paper-size", type=int, help="slice size for `paper` (default 256)")
    parser.add_argument(
        "--capacity", action="store_true", help="only parameters and FLOPs of every ablation row"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.capacity:
        print_capacity()
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine(device)}")
    rows = []
    for preset, size, batch, steps, warmup, nfe in plan(
        args.quick, device.type == "cuda", args.paper_size
    ):
        train = bench_training(preset, size, batch, steps, warmup, device)
        sample = bench_sampling(preset, size, 4 if preset == "tiny" else 1, nfe, device)
        rows.append((preset, size, batch, steps, train, sample, nfe))
    print_table(rows)
    print("\nTraining FLOPs per slice (forward + backward, meta device)")
    for preset, size in (("tiny", 64), ("paper", 256)):
        flops = training_flops(preset, size)
        ratio = flops["dfbk"] / flops["resshift"]
        print(
            f"  {preset:6} {size:4}x{size:<4} resshift {flops['resshift'] / 1e9:9.1f} GFLOP  "
            f"dfbk {flops['dfbk'] / 1e9:9.1f} GFLOP  ratio {ratio:.3f}x"
        )
    print("\nHaar DWT+IDWT round trip (median ms)")
    for shape in ((16, 64, 128, 128), (16, 32, 64, 64)):
        haar = bench_haar(shape, 3 if args.quick else 10, device)
        ratio = haar["pytorch_wavelets"] / haar["conv"]
        print(
            f"  {'x'.join(map(str, shape)):>16}  conv {1e3 * haar['conv']:8.1f}  "
            f"pytorch_wavelets {1e3 * haar['pytorch_wavelets']:8.1f}  speed-up {ratio:4.1f}x"
        )


def print_table(rows: list) -> None:
    print(
        "\npreset  size batch method         params  s/step  cpu s/step  steps/s  slices/s  "
        "DFBK/ResShift (step, cpu step, sample)"
    )
    for preset, size, batch, steps, train, sample, nfe in rows:
        for name in METHODS:
            run, per_slice = train[name], sample[name]
            ratio = ""
            if name == "dfbk":
                base = train["resshift"]
                ratio = (
                    f"{run['step_s'] / base['step_s']:.2f}x, {run['cpu_s'] / base['cpu_s']:.2f}x, "
                    f"{per_slice / sample['resshift']:.2f}x"
                )
            print(
                f"{preset:6} {size:5} {batch:5} {name:9} {run['params']:12,d} "
                f"{run['step_s']:7.3f} {run['cpu_s']:11.3f} {1 / run['step_s']:8.2f} "
                f"{1 / per_slice:9.2f}  {ratio}"
            )
        note = f"{steps} timed step(s)" + (f"; sampling from {nfe} NFE(s) x 15" if nfe else "")
        print(f"{'':6} ({note})")


if __name__ == "__main__":
    main()
