"""MaskGAN baseline: translation range, a real generator step, checkpoints, masks, attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from dfbk.baselines.maskgan_masks import batch_masks, extract_mask
from dfbk.methods.base import Batch, to_signed
from dfbk.methods.registry import build_method, get_method_class

MODULE = "dfbk.baselines.maskgan"
SMALL = {"ngf": 4, "n_blocks": 1, "n_content": 3, "ndf": 8, "batch_size": 2, "steps": 10}


def build(**overrides):
    return build_method("maskgan", "tiny", {**SMALL, **overrides}, module=MODULE)


def head_batch(seed: int = 0, size: int = 32, n: int = 2) -> Batch:
    """Noisy bright ellipses on a dark background: sources and (unpaired) targets."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    images = []
    for _ in range(2 * n):
        a, b = 0.5 + 0.3 * torch.rand(2, generator=g)
        inside = ((xx / a) ** 2 + (yy / b) ** 2 < 1).float()
        texture = 0.4 + 0.4 * torch.rand(size, size, generator=g)
        images.append((inside * texture + 0.02 * torch.rand(size, size, generator=g))[None])
    images = torch.stack(images).clamp(0, 1)
    source, target = images[:n], 1.0 - images[n:] * 0.5  # target: another contrast
    target = target * (images[n:] > 0.1)  # background stays dark
    return Batch(source=source, target=target, mask=(source > 0.1).float())


def test_registered_unpaired_and_described():
    cls = get_method_class("maskgan", module=MODULE)
    assert cls.PAIRED is False
    method = build()
    assert method.paired is False
    info = method.describe()
    assert info["training"].startswith("unpaired") and "relative position" in info["training"]
    assert info["augment"] == "none" == method.hparams["augment"]  # released: --no_flip
    assert info["deviations"]


def test_translate_shape_and_range():
    torch.manual_seed(0)
    method = build()
    batch = head_batch()
    method.training_step(batch, 0)
    method.eval()
    pred = method.translate(batch.source)
    assert pred.shape == batch.source.shape
    assert float(pred.min()) >= 0.0 and float(pred.max()) <= 1.0


def test_attention_maps_sum_to_one_and_compose_the_output():
    torch.manual_seed(0)
    method = build()
    x = to_signed(head_batch().source)
    out = method.gen_ab(x)
    n_content = SMALL["n_content"]
    assert out.content.shape[1] == n_content and out.attention.shape[1] == n_content + 1
    assert float(out.attention.detach().min()) >= 0.0
    torch.testing.assert_close(out.attention.sum(1), torch.ones_like(x[:, 0]))
    composed = (out.attention[:, :-1] * out.content).sum(1, keepdim=True)
    composed = composed + out.attention[:, -1:] * x  # the last map copies the input
    torch.testing.assert_close(out.image, composed)
    torch.testing.assert_close(out.foreground, 1.0 - out.attention[:, -1:])


def test_shape_weight_ramps_from_zero_to_its_value():
    method = build(steps=100, lambda_shape=0.5)
    weights = [method.shape_weight(s) for s in (0, 25, 50, 100, 200)]
    assert weights == pytest.approx([0.0, 0.125, 0.25, 0.5, 0.5])


def test_one_generator_update_decreases_the_generator_objective():
    torch.manual_seed(0)
    method = build(lr=1e-4)
    batch = head_batch()
    real_a, real_b = to_signed(batch.source), to_signed(batch.target)
    mask_a, mask_b = method.masks(batch.source), method.masks(batch.target)
    step = 5  # shape-consistency weight already ramped in
    disc_before = {k: v.clone() for k, v in method.disc_b.state_dict().items()}
    with torch.no_grad():
        before = method.generator_losses(real_a, real_b, mask_a, mask_b, step)[0]["total"]
    method.update_generators(real_a, real_b, mask_a, mask_b, step)
    with torch.no_grad():
        after = method.generator_losses(real_a, real_b, mask_a, mask_b, step)[0]["total"]
    for key, value in method.disc_b.state_dict().items():  # discriminators untouched
        assert torch.equal(value, disc_before[key])
    assert float(after) < float(before)


def test_checkpoint_round_trip_gives_identical_translation():
    torch.manual_seed(0)
    method = build()
    batch = head_batch()
    for step in range(2):
        method.training_step(batch, step)
    method.eval()
    pred = method.translate(batch.source)
    clone = build()
    clone.load_state_dict(method.state_dict())
    clone.eval()
    assert torch.equal(clone.translate(batch.source), pred)
    assert len(clone.pool_b.images) == len(method.pool_b.images) > 0
    assert all(
        torch.equal(a, b) for a, b in zip(clone.pool_b.images, method.pool_b.images, strict=True)
    )


@pytest.fixture(scope="module")
def phantom_slices() -> dict[str, np.ndarray]:
    """Middle axial slice of phantom 0 at 4 mm: t1n and CT in [0, 1], and its head mask."""
    from dfbk.data.phantom.anatomy import make_phantom_subject

    subject = make_phantom_subject(0, seed=0, voxel_mm=4.0)
    z = subject.head_mask.shape[2] // 2
    t1 = subject.images["t1n"][:, :, z]
    ct = subject.images["ct"][:, :, z]
    return {
        "t1n": np.clip(t1 / np.percentile(t1, 99.5), 0.0, 1.0),
        "ct": np.clip((ct + 1024.0) / 4024.0, 0.0, 1.0),  # the store's CT mapping
        "head": subject.head_mask[:, :, z] > 0,
    }


@pytest.mark.parametrize("modality", ["t1n", "ct"])
def test_mask_extraction_covers_the_phantom_head(phantom_slices, modality):
    h = build().hparams
    mask = extract_mask(
        phantom_slices[modality], h["mask_threshold"], h["mask_closing"], h["mask_dilation"]
    )
    head = phantom_slices["head"]
    assert mask.shape == head.shape and mask.dtype == bool
    iou = (mask & head).sum() / (mask | head).sum()
    assert iou >= 0.9, f"IoU {iou:.3f}"
    assert (mask & head).sum() / head.sum() >= 0.98  # covers the head
    assert ndimage.label(mask)[1] == 1  # one connected component
    assert np.array_equal(ndimage.binary_fill_holes(mask), mask)  # no holes


def test_mask_extraction_fills_holes_and_keeps_the_largest_component():
    image = np.zeros((40, 40), np.float32)
    image[5:30, 5:30] = 0.8
    image[12:20, 12:20] = 0.0  # a dark ventricle inside the head
    image[34:37, 34:37] = 0.9  # a separate blob (e.g. the CT table)
    mask = extract_mask(image, threshold=0.1, closing=0, dilation=0)
    expected = np.zeros_like(mask)
    expected[5:30, 5:30] = True
    assert np.array_equal(mask, expected)
    dilated = extract_mask(image, threshold=0.1, closing=0, dilation=1)
    assert dilated.sum() == expected.sum() + 4 * 25  # a one-pixel ring (4-connected)
    batch = batch_masks(torch.from_numpy(image)[None, None].repeat(2, 1, 1, 1), 0.1, 0, 0)
    assert batch.shape == (2, 1, 40, 40) and torch.equal(
        batch[1, 0], torch.from_numpy(expected).float()
    )


def test_initialisation_follows_the_released_code():
    """N(0, 0.02) weights and zero biases in the residual blocks; PyTorch's default elsewhere."""
    torch.manual_seed(0)
    method = build(ngf=8, n_blocks=2)
    for generator in (method.gen_ab, method.gen_ba):
        block_convs = [m for m in generator.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
        weights = torch.cat([m.weight.detach().flatten() for m in block_convs])
        assert 0.018 < float(weights.std()) < 0.022  # 4 x 32*32*9 samples of N(0, 0.02)
        assert all(not m.bias.any() for m in block_convs)
        # default Kaiming-uniform elsewhere: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), nonzero biases
        first = generator.encoder[1]
        bound = 1.0 / first.weight[0].numel() ** 0.5
        weight = first.weight.detach()  # 1/7 / sqrt(3) ~ 0.08 standard deviation, not 0.02
        assert float(weight.abs().max()) <= bound and float(weight.std()) > 0.05
        assert first.bias.any()
    d_first = method.disc_a.model[0].weight.detach()
    assert float(d_first.std()) > 0.1  # fan-in 16: 1/4 / sqrt(3) ~ 0.14, not 0.02
