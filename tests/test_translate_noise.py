"""Per-slice noise: a diffusion method's prediction of a slice ignores how slices are batched.

The noise is identical bit for bit (each slice draws from its own stream); the networks are
not always: on CPU, batched convolutions and matrix products are blocked differently for
batch 1 and batch 32, which changes float32 summation order (measured max |diff| on the [0, 1]
output: ResShift tiny 3.6e-7 at 64x64; narrow SynDiff after a step 3.0e-8; untrained tiny
SynDiff 0). The tolerance is derived from float32: at most 15 network evaluations (ResShift's
T), each a few ulps (5 * 1.19e-7) off at values of order 1: 15 * 6e-7 ~= 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from dfbk.diffusion.noise import SliceNoise, slice_seeds, stable_seed
from dfbk.inference.predict import translate_slices
from dfbk.methods.base import Batch, Knowledge
from dfbk.methods.registry import build_method

TOLERANCE = 15 * 5 * 1.19e-7  # ~1e-5, see the module docstring
METHODS = ["resshift", "syndiff", "syndiff_paired"]
SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_seeds_are_stable_and_distinct():
    seeds = slice_seeds(0, "BraTS-GLI-00001-000", range(155))
    assert seeds.dtype == torch.int64 and len(set(seeds.tolist())) == 155
    assert torch.equal(seeds, slice_seeds(0, "BraTS-GLI-00001-000", range(155)))
    assert not torch.equal(seeds, slice_seeds(1, "BraTS-GLI-00001-000", range(155)))
    assert stable_seed("a", 1) == stable_seed("a", 1) != stable_seed("a", 2)
    assert all(0 <= s < 2**63 for s in seeds.tolist())


def test_tile_noise_is_the_crop_of_its_slice_canvas_whatever_the_batch():
    seeds = torch.tensor([11, 11, 22, 11])
    offsets = torch.tensor([[0, 0], [3, 5], [2, 2], [6, 1]])
    noise = SliceNoise(seeds, (1, 4, 6), offsets=offsets, canvas=(10, 11))
    first, second = noise.spatial(), noise.spatial()
    for draw, expected in ((first, 0), (second, 1)):
        for item, (seed, (row, col)) in enumerate(
            zip(seeds.tolist(), offsets.tolist(), strict=True)
        ):
            generator = torch.Generator().manual_seed(seed)
            canvases = [torch.randn((1, 10, 11), generator=generator) for _ in range(2)]
            crop = canvases[expected][:, row : row + 4, col : col + 6]
            assert torch.equal(draw[item], crop)
    alone = SliceNoise(seeds[3:], (1, 4, 6), offsets=offsets[3:], canvas=(10, 11))
    assert torch.equal(alone.spatial(), first[3:])
    z = SliceNoise(seeds, (1, 4, 6), offsets=offsets, canvas=(10, 11)).vector(5)
    assert torch.equal(z[0], z[1]) and torch.equal(z[0], z[3]) and not torch.equal(z[0], z[2])
    with pytest.raises(ValueError, match="leaves the canvas"):
        SliceNoise(seeds[:1], (1, 4, 6), offsets=torch.tensor([[7, 0]]), canvas=(10, 11))


# Narrow networks (the sampler, not the width, is under test): each test runs in seconds.
SMALL = {
    # 5 of ResShift's 15 steps: the per-slice streams are what is tested, not the schedule
    "resshift": {"channels": 8, "swin_embed_dim": 16, "head_channels": 8, "num_steps": 5},
    "syndiff": {"nf": 4, "ch_mult": [1, 2], "image_size": SIZE, "nz": 8, "z_emb_dim": 16,
                "n_mlp": 1, "ndf": 4, "disc_downs": 2, "t_emb_dim": 16, "batch_size": 2,
                "translator_ngf": 4, "translator_blocks": 1, "cycle_ndf": 4},
}  # fmt: skip


def small(name: str):
    """A narrow model after one training step (SynDiff's generator starts at x0_hat = 0)."""
    torch.manual_seed(0)
    method = build_method(name, "tiny", SMALL[name.removesuffix("_paired")])
    source = torch.rand(2, 1, SIZE, SIZE)
    method.training_step(Batch(source, 1 - source, torch.ones_like(source)), 0)
    return method.eval()


@pytest.mark.parametrize("name", METHODS)
def test_batch_size_1_and_32_give_the_same_slices(name):
    method = small(name)
    slices = torch.rand(32, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).numpy()
    seeds = slice_seeds(0, "sub-01", range(32))
    big = translate_slices(method, slices, 32, seeds=seeds)
    ones = translate_slices(method, slices, 1, seeds=seeds)
    assert abs(big - ones).max() <= TOLERANCE
    # reversed order inside the batch: each slice keeps its own noise
    backwards = translate_slices(method, slices[::-1].copy(), 32, seeds=seeds.flip(0))[::-1]
    assert abs(big - backwards).max() <= TOLERANCE
    # the noise matters: other seeds give other samples, far beyond the tolerance
    other = translate_slices(method, slices[:4], 4, seeds=slice_seeds(1, "sub-01", range(4)))
    assert abs(big[:4] - other).max() > 100 * TOLERANCE


def test_dfbk_tiles_take_their_noise_from_the_slice_canvas():
    """DFBK (KG on) passes `noise=` through to the sampler: a tile's noise is its canvas crop."""
    torch.manual_seed(0)
    method = build_method("dfbk", "tiny", {**SMALL["resshift"], "knowledge_dim": 16}).eval()
    knowledge = Knowledge(torch.randn(3, 16))
    canvas = torch.rand(1, 1, SIZE, SIZE + 8)
    seeds = slice_seeds(0, "sub-01", [7])
    # the same tile cut at column 8, alone and beside another tile of the same slice
    tile = canvas[..., 8 : 8 + SIZE]
    tiles = torch.cat([canvas[..., :SIZE], tile])
    offsets = torch.tensor([[0, 0], [0, 8]])
    both = SliceNoise(seeds.repeat(2), (1, SIZE, SIZE), offsets=offsets, canvas=(SIZE, SIZE + 8))
    alone = SliceNoise(seeds, (1, SIZE, SIZE), offsets=offsets[1:], canvas=(SIZE, SIZE + 8))
    pair = method.translate(tiles, knowledge, seeds.repeat(2), noise=both)
    single = method.translate(tile, knowledge, seeds, noise=alone)
    assert (pair[1:] - single).abs().max() <= TOLERANCE
    plain = method.translate(tile, knowledge, seeds)  # uncropped noise: another sample
    assert (plain - single).abs().max() > 100 * TOLERANCE
