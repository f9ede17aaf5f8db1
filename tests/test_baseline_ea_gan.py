"""Ea-GAN baselines (gEa-GAN `ea_gan`, dEa-GAN `dea_gan`) at a shrunken tiny scale."""

from __future__ import annotations

import pytest
import torch
from fakes import random_batch

from dfbk.errors import ConfigError
from dfbk.methods.base import to_signed
from dfbk.methods.registry import build_method, get_method_class

MODULE = "dfbk.baselines.ea_gan"
NAMES = ("ea_gan", "dea_gan")
SIZE = 32
SMALL = {"ngf": 4, "ndf": 4, "num_downs": 5, "batch_size": 2, "steps": 10, "edge_ramp_steps": 4}


def build(name: str, **overrides):
    return build_method(name, "tiny", {**SMALL, **overrides}, module=MODULE)


def test_two_names_one_class_variant_by_preset():
    gea, dea = get_method_class("ea_gan", MODULE), get_method_class("dea_gan", MODULE)
    assert issubclass(dea, gea)
    assert {p["variant"] for p in gea.PRESETS.values()} == {"g"}
    assert {p["variant"] for p in dea.PRESETS.values()} == {"d"}
    assert build("ea_gan").discriminator.model[0].in_channels == 2  # (source, image)
    assert build("dea_gan").discriminator.model[0].in_channels == 3  # + Sobel(image)
    with pytest.raises(ConfigError, match="variant"):
        build("ea_gan", variant="x")


@pytest.mark.parametrize("name", NAMES)
def test_translate_shape_and_range(name):
    torch.manual_seed(0)
    method = build(name)
    batch = random_batch(SIZE, shifted=True)
    method.training_step(batch, 0)
    method.eval()
    pred = method.translate(batch.source)
    assert pred.shape == batch.source.shape
    assert float(pred.min()) >= 0.0 and float(pred.max()) <= 1.0
    assert float(pred.std()) > 0.0


@pytest.mark.parametrize("name", NAMES)
def test_one_generator_update_decreases_the_generator_objective(name):
    torch.manual_seed(0)
    method = build(name, lr=1e-4)
    batch = random_batch(SIZE, shifted=True)
    step = 10  # past the ramp: the edge term is at full weight
    torch.manual_seed(1)  # same dropout masks before and after
    before = method.generator_objective(batch, step)
    method.opt_g.zero_grad(set_to_none=True)
    before.backward()
    method.opt_g.step()  # generator only; the discriminator stays fixed
    with torch.no_grad():
        torch.manual_seed(1)
        after = method.generator_objective(batch, step)
    assert float(after) < float(before.detach())


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name):
    torch.manual_seed(0)
    method = build(name)
    batch = random_batch(SIZE, shifted=True)
    method.training_step(batch, 0)
    method.eval()
    expected = method.translate(batch.source)
    torch.manual_seed(123)
    fresh = build(name).eval()
    assert not torch.equal(fresh.translate(batch.source), expected)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.translate(batch.source), expected)


def test_sobel_of_a_vertical_step_is_the_analytic_value_on_the_edge_columns_only():
    from dfbk.baselines.ea_gan import sobel_edges

    height = 0.7
    image = torch.zeros(1, 1, 8, 10, dtype=torch.float64)
    image[..., 5:] = height  # step between columns 4 and 5
    edges = sobel_edges(image)[0, 0]
    expected = torch.zeros(8, 10, dtype=torch.float64)
    expected[:, 4:6] = 4 * height  # (1 + 2 + 1) * h; Gy = 0
    torch.testing.assert_close(edges, expected, rtol=0, atol=1e-12)
    # rotated: the same response along the edge rows; a diagonal combination is the magnitude
    torch.testing.assert_close(sobel_edges(image.transpose(-1, -2))[0, 0], expected.t())
    ramp = torch.arange(10, dtype=torch.float64).repeat(8, 1)[None, None] * 0.1
    assert torch.allclose(sobel_edges(ramp)[0, 0, :, 1:-1], torch.tensor(0.8, dtype=torch.float64))


def test_sobel_gradient_is_finite_in_flat_regions():
    from dfbk.baselines.ea_gan import sobel_edges

    image = torch.zeros(1, 1, 6, 6, requires_grad=True)
    sobel_edges(image).sum().backward()
    assert torch.isfinite(image.grad).all()


def test_edge_weight_ramps_linearly_then_holds():
    from dfbk.baselines.ea_gan import edge_weight

    values = [edge_weight(s, 100.0, 20) for s in (0, 5, 10, 20, 40)]
    assert values == pytest.approx([0.0, 25.0, 50.0, 100.0, 100.0])
    assert edge_weight(3, 100.0, 0) == 100.0


def test_training_step_applies_the_ramped_edge_weight():
    torch.manual_seed(0)
    method = build("ea_gan", edge_ramp_steps=4)
    batch = random_batch(SIZE, shifted=True)
    for step, weight in ((0, 0.0), (2, 50.0), (6, 100.0)):
        losses = method.training_step(batch, step)
        assert losses["edge_weight"] == pytest.approx(weight)
        total = losses["loss_g_gan"] + 300.0 * losses["loss_l1"] + weight * losses["loss_edge"]
        # float32 sum of three non-negative terms: at most 4 roundings of eps/2 each
        assert losses["loss_g"] == pytest.approx(total, rel=4 * torch.finfo(torch.float32).eps)


@pytest.mark.parametrize("name", NAMES)
def test_released_settings_and_the_pool_holds_only_fakes(name):
    torch.manual_seed(0)
    method = build(name, pool_size=4)
    h = method.hparams
    assert (h["augment"], h["inference"], h["pool_size"]) == ("hflip", "eval", 4)
    batch = random_batch(SIZE, shifted=True)
    method.training_step(batch, 0)
    assert len(method.pool.images) == 2  # one step: the batch's two fake inputs of D
    source, target = to_signed(batch.source), to_signed(batch.target)
    channels = 3 if name == "dea_gan" else 2
    for i, stored in enumerate(method.pool.images):
        assert stored.shape == (channels, SIZE, SIZE) and not stored.requires_grad
        assert torch.equal(stored[0], source[i, 0])  # conditioned on the source
        assert not torch.allclose(stored[1], target[i, 0])  # a generated image, never the real
    # the generator's adversarial term reaches the generator (released dEa-GAN: it does not)
    method.opt_g.zero_grad(set_to_none=True)
    losses = method.generator_losses(source, target, method.generator(source), 10)
    losses["loss_g_gan"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.generator.parameters())
