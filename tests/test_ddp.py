"""Data-parallel training (`dfbk train --gpus 2`) on CPU with gloo.

pix2pix here uses instance norm and no dropout, so its step is a deterministic function of the
batch: two ranks each averaging gradients over half of every global batch must end where one
process on the whole batch ends, up to float rounding (checked in float64, where rounding
cannot hide a wrong average). Its G and D have one optimiser each, so this also checks that
every optimiser steps on averaged gradients. End to end, torchrun's two ranks write one run,
and a SIGKILL of the whole job followed by a rerun ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import train_command

from dfbk.data.slices.loader import SliceBatcher
from dfbk.errors import DataError
from dfbk.training.checkpoint import load_checkpoint

STEPS = 6
OVERRIDES = {
    "steps": STEPS,
    "batch_size": 4,
    "num_downs": 4,
    "ngf": 8,
    "ndf": 8,
    "norm": "instance",
    "dropout": 0.0,
}
# Float64 weights of 2 ranks vs 1 process after K_STEPS steps. Adam's update lr * m / (sqrt(v)
# + eps) turns rounding differences of near-zero gradients into weight differences (measured
# 5e-10; L1's gradient passes through float32 in pix2pix), while a wrong average (a rank
# stepping on its own half) moves weights by up to lr = 1e-3 per step: 1e-7 sits between.
TOLERANCE = 1e-7


def command(phantom_store, folder: Path, gpus: int, every: int = STEPS) -> list[str]:
    extra = ["--checkpoint-every", str(every), "--val-every", "0", "--val-slices", "2"]
    return train_command(phantom_store, folder, OVERRIDES, *extra, "--gpus", str(gpus), seed=5)


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=environment())
    assert result.returncode == 0, result.stderr[-3000:]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(folder / "out" / "model.pt")["state"]


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_rank_shares_make_up_the_single_process_batch(phantom_store):
    store, split = phantom_store
    train = json.loads(Path(split).read_text())["train"]
    settings = dict(batch_size=4, seed=1, flip=True, paired=False, patch_size=32)
    whole = SliceBatcher(store, "t1n", "t2w", train, **settings)
    halves = [SliceBatcher(store, "t1n", "t2w", train, **settings, rank=r, world=2) for r in (0, 1)]
    for step in (0, 7):
        full, parts = whole.batch(step), [h.batch(step) for h in halves]
        for name in ("source", "target", "mask"):
            joined = torch.cat([getattr(p, name) for p in parts])
            assert torch.equal(joined, getattr(full, name)), (step, name)
    with pytest.raises(DataError, match="does not split evenly over 3 processes"):
        SliceBatcher(store, "t1n", "t2w", train, **settings, rank=0, world=3)


def _train_in_float64(rank: int, world: int, init: str, out: str) -> None:
    """Rank `rank` of `world` (world 1: one process) takes K_STEPS pix2pix steps in float64."""
    import torch.distributed as dist

    from dfbk.methods.base import Batch
    from dfbk.methods.registry import build_method
    from dfbk.training import distributed as ddp

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    method = build_method("pix2pix", "tiny", OVERRIDES).double()
    ddp.average_gradients(method, ddp.World(rank, world))
    data = torch.Generator().manual_seed(1)
    share = slice(rank * 4 // world, (rank + 1) * 4 // world)
    for step in range(K_STEPS):
        src, tgt = torch.rand(2, 4, 1, 32, 32, generator=data, dtype=torch.float64)
        mask = torch.ones_like(src)
        method.training_step(Batch(src[share], tgt[share], mask[share]), step)
    if rank == 0:
        torch.save(method.state_dict(), out)
    if world > 1:
        dist.destroy_process_group()


K_STEPS = 3


def test_averaged_gradients_equal_the_global_batch_gradients_in_float64(tmp_path):
    """The mechanism alone, in float64, where rounding cannot hide a wrong average.

    In float32 Adam amplifies rounding differences of gradients near zero (its first update is
    about lr * sign(g)), so float32 runs agree only to ~lr per step; float64 pins it down.
    """
    import torch.multiprocessing as mp

    _train_in_float64(0, 1, "", str(tmp_path / "single.pt"))
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_train_in_float64, args=(2, init, str(tmp_path / "ddp.pt")), nprocs=2)
    single, ddp = (torch.load(tmp_path / n, weights_only=True) for n in ("single.pt", "ddp.pt"))
    diff = max_abs_diff(single, ddp)
    print(f"float64, {K_STEPS} steps, 2 ranks vs 1 process: max abs weight diff {diff:.3g}")
    assert diff < TOLERANCE


@pytest.fixture(scope="module")
def uninterrupted(phantom_store, tmp_path_factory) -> Path:
    """`dfbk train --gpus 2` on CPU: torchrun, two gloo ranks, halves of every batch."""
    folder = tmp_path_factory.mktemp("ddp")
    run(command(phantom_store, folder, gpus=2))
    return folder


def test_two_ranks_write_one_run_with_the_global_batch(uninterrupted):
    info = json.loads((uninterrupted / "out" / "run.json").read_text())
    assert info["processes"] == 2 and info["batch_size"] == OVERRIDES["batch_size"]
    logged = [json.loads(x) for x in (uninterrupted / "out" / "train_log.jsonl").open()]
    assert [x["step"] for x in logged] == list(range(STEPS))  # rank 0 alone writes the log
    assert "val_ssim" in logged[-1]
    assert not list((uninterrupted / "ckpt").glob(".*.tmp"))


@pytest.mark.slow  # three torchrun jobs of 2 ranks: ~60 s of CPU on 2 cores
def test_sigkill_and_resume_under_two_ranks_is_exact(uninterrupted, phantom_store, tmp_path):
    cmd = command(phantom_store, tmp_path, gpus=2, every=2)
    process = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment(), text=True
    )
    last = tmp_path / "ckpt" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    _kill_tree(process.pid)
    process.wait(timeout=30)
    if (tmp_path / "out" / "model.pt").exists():
        pytest.skip("the run finished before the kill (machine too fast for this check)")
    killed_at = load_checkpoint(last)["step"]
    assert 0 < killed_at < STEPS
    run(cmd)
    diff = max_abs_diff(weights(tmp_path), weights(uninterrupted))
    print(f"max abs weight diff, 2 ranks killed at step {killed_at} and resumed: {diff:.3g}")
    assert diff == 0.0


def _descendants(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [d for c in map(int, found.split()) for d in (c, *_descendants(c))]


def _kill_tree(pid: int) -> None:
    """SIGKILL torchrun and all its workers at once, as when a node is lost."""
    for victim in (pid, *_descendants(pid)):
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
