"""Every registered method, at a shrunken tiny preset: a step, a translation, a checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from dfbk.errors import ConfigError
from dfbk.methods import Batch, build_method, list_methods
from dfbk.training.checkpoint import rebuild_method

SIZE = 64


def small_overrides(name: str) -> dict:
    method = build_method(name, "tiny")
    overrides = {}
    for key, value in {"batch_size": 2, "steps": 2}.items():
        if key in method.hparams:
            overrides[key] = value
    return overrides


def knowledge_for(method) -> torch.Tensor | None:
    dim = method.hparams.get("knowledge_dim")
    return torch.randn(3, dim) if dim and method.hparams.get("kg") else None


def make_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(2, 1, SIZE, SIZE, generator=g)
    return Batch(source=source, target=1 - source, mask=torch.ones_like(source))


@pytest.mark.parametrize("name", list_methods())
def test_tiny_step_translate_and_checkpoint_round_trip(name):
    torch.manual_seed(0)
    method = build_method(name, "tiny", small_overrides(name))
    batch = make_batch()
    batch.knowledge = knowledge_for(method)
    method.train()
    losses = method.training_step(batch, 0)
    assert all(math.isfinite(v) for v in losses.values())
    method.eval()
    pred = method.translate(batch.source, batch.knowledge)
    assert pred.shape == batch.source.shape
    assert float(pred.min()) >= 0.0 and float(pred.max()) <= 1.0
    payload = {
        "method": name,
        "preset": "tiny",
        "hparams": method.hparams,
        "module": None,
        "state": method.state_dict(),
    }
    clone = rebuild_method(payload)
    assert torch.equal(clone.translate(batch.source, batch.knowledge), pred)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown method 'pix2pixx'; known: .*pix2pix"):
        build_method("pix2pixx")


def test_unknown_override_is_named():
    with pytest.raises(ConfigError, match="unknown hyperparameter 'lr_g'"):
        build_method("pix2pix", "tiny", {"lr_g": 1.0})
    with pytest.raises(ConfigError, match="no preset 'huge'"):
        build_method("pix2pix", "huge")


def test_pix2pix_training_reduces_l1_on_a_fixed_batch():
    torch.manual_seed(0)
    method = build_method("pix2pix", "tiny", {"batch_size": 2})
    batch = make_batch()
    first = method.training_step(batch, 0)["loss_l1"]
    for step in range(1, 15):
        last = method.training_step(batch, step)["loss_l1"]
    assert last < first


def test_identity_predicts_the_source():
    method = build_method("identity")
    source = torch.rand(3, 1, 8, 8)
    assert torch.equal(method.translate(source), source)


def test_registered_stages_match_the_classes():
    from dfbk.methods.registry import BUILTIN_STAGES, get_method_class

    for name in list_methods():
        declared = tuple(getattr(get_method_class(name), "STAGES", {}))
        assert BUILTIN_STAGES.get(name, ()) == declared, name
