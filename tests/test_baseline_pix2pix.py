"""pix2pix baseline: the released settings and train-mode (paper) inference, slice by slice."""

from __future__ import annotations

import copy

import pytest
import torch

from dfbk.errors import ConfigError
from dfbk.methods.base import Batch, to_signed
from dfbk.methods.gan import layer_mode
from dfbk.methods.registry import build_method, get_method_class

SIZE = 32
SMALL = {"ngf": 4, "ndf": 4, "num_downs": 5, "batch_size": 2, "steps": 10}


def build(**overrides):
    return build_method("pix2pix", "tiny", {**SMALL, **overrides})


def trained() -> torch.nn.Module:
    torch.manual_seed(0)
    method = build()
    source = torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    for step in range(2):  # moves the batch-norm running statistics away from (0, 1)
        method.training_step(Batch(source, 1 - source, torch.ones_like(source)), step)
    return method


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_presets_follow_the_released_code(preset):
    h = get_method_class("pix2pix").resolve_hparams(preset)
    assert h["augment"] == "hflip"
    # paper: as published (batch 1, train-mode test); tiny trains at batch 16 -> eval
    assert h["inference"] == ("train" if preset == "paper" else "eval")
    with pytest.raises(ConfigError, match="inference"):
        build(inference="sometimes")


def test_train_mode_inference_matches_the_generator_in_train_mode_on_each_slice():
    method = trained()
    method.hparams["inference"] = "train"
    method.eval()  # whatever mode the caller left it in
    state = {k: v.clone() for k, v in method.state_dict().items()}
    source = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    seeds = torch.tensor([11, 12, 13])
    pred = method.translate(source, seeds=seeds)
    for i in range(3):  # the paper's protocol: batch size 1, dropout on, batch statistics
        reference = copy.deepcopy(method.generator).train()
        torch.manual_seed(int(seeds[i]))
        with torch.no_grad():
            expected = ((reference(to_signed(source[i : i + 1])) + 1) / 2).clamp(0, 1)
        # the same arithmetic on the same slice (bitwise equal on CPU); 1e-6 ~ 8 ulps of [0, 1]
        torch.testing.assert_close(pred[i : i + 1], expected, rtol=0, atol=1e-6)
    assert torch.equal(method.translate(source[2:], seeds=seeds[2:]), pred[2:])
    assert all(torch.equal(v, state[k]) for k, v in method.state_dict().items())
    assert not any(m.training for m in method.modules())
    # the caller's random stream is untouched by the per-slice seeds
    torch.manual_seed(5)
    method.translate(source, seeds=seeds)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(1), after)


def test_eval_mode_inference_uses_running_statistics_without_dropout():
    method = trained()
    method.hparams["inference"] = "eval"
    method.train()
    source = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    pred = method.translate(source, seeds=torch.tensor([1, 2, 3]))
    assert torch.equal(method.translate(source), pred)  # no dropout: seeds do not matter
    with torch.no_grad():
        expected = ((copy.deepcopy(method.generator).eval()(to_signed(source)) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(pred, expected, rtol=0, atol=1e-6)
    assert all(m.training for m in method.modules())  # the training mode is restored


def test_layer_mode_restores_flags_even_after_an_error():
    method = trained()
    method.eval()
    norms = [m for m in method.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with pytest.raises(RuntimeError, match="boom"), layer_mode(method, "train"):
        assert all(m.training and not m.track_running_stats for m in norms)
        raise RuntimeError("boom")
    assert all(not m.training and m.track_running_stats for m in norms)
