"""Data-parallel training within one job: N processes, one global batch split between them.

`dfbk train --gpus N` (N > 1) re-runs itself under `torchrun --standalone` with N workers on
one node; each worker builds the same method from the same seed, reads its own contiguous
1/N of every global batch (`SliceBatcher(rank=, world=)`) and takes the method's own training
step. Methods own their optimisers and call backward themselves (GANs alternate several), so
gradients are averaged by a hook on every parameter that fires when a gradient has been
accumulated into `.grad` (`register_post_accumulate_grad_hook`): the all-reduce happens before
anything in the step reads the gradient, including gradient clipping and every optimiser's step.
Averaging is linear, so a second backward into the same `.grad` (D's real and fake halves) is
averaged correctly too. As each rank's loss is the mean over an equal share, the averaged
gradient is the global batch's gradient up to float rounding.

BatchNorm: on CUDA its layers become `SyncBatchNorm` (batch statistics over the global batch);
torch's SyncBatchNorm has no CPU kernel, so on CPU each rank normalises with its own share's
statistics (documented deviation). Floating buffers (running means and variances) are averaged
after every step so all ranks hold the same state; rank 0 alone writes checkpoints and logs.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the job's workers (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The World torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK, or a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device: torch.device) -> None:
    """Join the process group: NCCL on CUDA (one GPU per local rank), gloo on CPU."""
    if not world.active or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))


def rank_device(device: torch.device, world: World) -> torch.device:
    """One GPU per local rank: cuda -> cuda:<local_rank> when distributed."""
    if world.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank)
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _average_grad(world_size: int):
    def hook(param: torch.Tensor) -> None:
        dist.all_reduce(param.grad)  # gloo has no AVG: sum, then divide
        param.grad.div_(world_size)

    return hook


def average_gradients(module: nn.Module, world: World) -> list[Any]:
    """Average every trainable parameter's gradient over the ranks as soon as it accumulates."""
    if not world.active:
        return []
    hook = _average_grad(world.size)
    return [
        p.register_post_accumulate_grad_hook(hook) for p in module.parameters() if p.requires_grad
    ]


def broadcast_state(module: nn.Module, world: World) -> None:
    """Give every rank rank 0's parameters and buffers (same seed should already agree)."""
    if not world.active:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_buffers(module: nn.Module, world: World) -> None:
    """Average floating buffers (BatchNorm running statistics) so every rank holds one state."""
    if not world.active:
        return
    with torch.no_grad():
        for buf in module.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(world.size)


def sync_batchnorm(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """BatchNorm -> SyncBatchNorm on CUDA (global-batch statistics); unchanged on CPU."""
    if not world.active or device.type != "cuda":
        return module
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def _reduce(values: torch.Tensor, op: Any = None) -> torch.Tensor:
    """All-reduce a small CPU tensor (moved to the GPU under NCCL, which reduces CUDA only)."""
    work = values.cuda() if dist.get_backend() == "nccl" else values.clone()
    dist.all_reduce(work, op=op or dist.ReduceOp.SUM)
    return work.cpu()


def mean_losses(losses: dict[str, float], world: World) -> dict[str, float]:
    """Each loss averaged over the ranks: the global batch's loss, the same on every rank."""
    if not world.active or not losses:
        return losses
    keys = sorted(losses)
    total = _reduce(torch.tensor([float(losses[k]) for k in keys], dtype=torch.float64))
    return {k: float(v) / world.size for k, v in zip(keys, total, strict=True)}


def any_signal(signal: int | None, world: World) -> int | None:
    """The largest stop signal any rank received, so every rank stops at the same step."""
    if not world.active:
        return signal
    value = int(_reduce(torch.tensor([signal or 0]), dist.ReduceOp.MAX)[0])
    return value or None


def gather(obj: Any, world: World) -> list[Any]:
    """Every rank's `obj` (e.g. RNG states), in rank order; [obj] when not distributed."""
    if not world.active:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def torchrun_command(argv: Iterable[str], processes: int) -> list[str]:
    """The command that runs `dfbk <argv>` as `processes` workers on this node."""
    import sys

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "dfbk.cli",
        *argv,
    ]
