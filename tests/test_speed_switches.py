"""Speed switches on CPU: a training step gives the eager fp32 step's losses and weights.

Each switch changes how the step runs (memory layout, compiled kernels, fused optimiser), not
what it computes, so the second step's losses (the first runs under the FLOP counter, where
torch.compile stays eager) must agree with the eager run's to float32 rounding, and so must
the weights after it. pix2pix without dropout makes the step a deterministic
function of the batch; batch norm (single process: exact statistics) rather than instance norm,
whose preceding convolution biases get a gradient that is zero in exact arithmetic, which
Adam's g / (|g| + eps) turns into rounding-noise updates of up to lr. TF32 acts on CUDA only:
on CPU the step must be bit-identical.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import train_spec

from dfbk.errors import ConfigError
from dfbk.training.speed import Speed
from dfbk.training.trainer import Trainer

OVERRIDES = {
    "steps": 2,
    "batch_size": 2,
    "num_downs": 3,
    "ngf": 4,
    "ndf": 4,
    "norm": "batch",
    "dropout": 0.0,
}
# Losses are means of O(1) float32 terms over 2 x 48 x 48 pixels: a changed summation order or
# kernel moves them by a few ulps of their size (1e-7 relative); 1e-5 leaves room for the
# losses computed after D's first update.
RTOL = 1e-5
# Adam's first update is lr * g / (|g| + eps): a relative gradient rounding error r moves a
# weight by about lr * r (lr = 1e-3, r ~ 1e-6 after a changed reduction order) -> 1e-9; a switch
# that computed another step would move weights by O(lr) = 1e-3. 1e-6 sits between.
WTOL = 1e-6


def one_step(phantom_store, tmp_path, speed: dict) -> tuple[dict, dict, Trainer]:
    trainer = Trainer(train_spec(phantom_store, tmp_path, seed=2, overrides=OVERRIDES, speed=speed))
    trainer.fused_skipped = trainer.speed.apply_fused(trainer.method)
    trainer.method.train()
    trainer._one_step()  # step 0 runs under the FLOP counter, where torch.compile stays eager
    trainer.step = 1
    losses = trainer._one_step()
    weights = {k: v.detach().clone() for k, v in trainer.method.state_dict().items()}
    shutil.rmtree(tmp_path, ignore_errors=True)
    return losses, weights, trainer


@pytest.fixture(scope="module")
def eager(phantom_store, tmp_path_factory):
    torch.set_num_threads(1)
    return one_step(phantom_store, tmp_path_factory.mktemp("eager"), {})


def compare(eager, switched, exact: bool = False) -> float:
    (ref_losses, ref_w, _), (losses, weights, _) = eager, switched
    assert losses.keys() == ref_losses.keys()
    for key in losses:
        if exact:
            assert losses[key] == ref_losses[key], key
        else:
            assert losses[key] == pytest.approx(ref_losses[key], rel=RTOL), key
    diff = max((weights[k].double() - ref_w[k].double()).abs().max().item() for k in ref_w)
    assert diff == 0.0 if exact else diff < WTOL
    return diff


def test_channels_last(eager, phantom_store, tmp_path):
    switched = one_step(phantom_store, tmp_path, {"channels_last": True})
    convs = [p for p in switched[2].method.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    print(f"channels_last: max abs weight diff after 2 steps {compare(eager, switched):.3g}")


def test_fused_adam_on_cpu(eager, phantom_store, tmp_path):
    switched = one_step(phantom_store, tmp_path, {"fused_adam": True})
    opts = switched[2].method.optimizers()
    assert opts and all(g["fused"] for o in opts.values() for g in o.param_groups)
    assert switched[2].fused_skipped == []
    print(f"fused_adam: max abs weight diff after 2 steps {compare(eager, switched):.3g}")


def test_tf32_is_a_no_op_on_cpu(eager, phantom_store, tmp_path):
    compare(eager, one_step(phantom_store, tmp_path, {"tf32": True}), exact=True)


def test_loader_workers_feed_the_same_batches(eager, phantom_store, tmp_path):
    """Read-ahead in 2 worker processes: the same batches, so a bit-identical step."""
    switched = one_step(phantom_store, tmp_path, {"loader_workers": 2})
    assert switched[2].speed.record()["loader_workers"] == 2
    compare(eager, switched, exact=True)


def test_loader_thread_feeds_the_same_batches(eager, phantom_store, tmp_path):
    """Read-ahead in a background thread: the same batches, so a bit-identical step."""
    switched = one_step(phantom_store, tmp_path, {"loader_thread": True})
    assert switched[2].speed.record()["loader_thread"] is True
    compare(eager, switched, exact=True)
    with pytest.raises(ConfigError, match="loader_thread: .* not both"):
        Speed.from_dict({"loader_thread": True, "loader_workers": 2})


@pytest.mark.slow  # inductor compiles G and D, forward and backward, with gcc: minutes on 2 cores
def test_torch_compile(eager, phantom_store, tmp_path):
    """Inductor on CPU compiles C++ with gcc: the tiniest pix2pix, one step."""
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler")
    import torch._dynamo.utils

    torch._dynamo.utils.counters.clear()
    switched = one_step(phantom_store, tmp_path, {"compile": "default"})
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # G and D compiled
    print(f"compile: max abs weight diff after 2 steps {compare(eager, switched):.3g}")


def test_switches_are_checked_and_recorded(phantom_store, tmp_path):
    with pytest.raises(ConfigError, match="train.speed: unknown switch 'channel_last'"):
        Speed.from_dict({"channel_last": True})
    with pytest.raises(ConfigError, match="compile 'fast' unknown"):
        Speed.from_dict({"compile": "fast"})
    speed = {"channels_last": True, "fused_adam": True}
    overrides = {**OVERRIDES, "steps": 1}
    Trainer(
        train_spec(phantom_store, tmp_path, seed=2, overrides=overrides, val_slices=1, speed=speed)
    ).run()
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["speed"] == {
        "channels_last": True,
        "compile": None,
        "tf32": False,
        "fused_adam": True,
        "loader_workers": 0,
        "loader_thread": False,
        "amp_bf16": False,
        "fused_adam_skipped": [],
    }
