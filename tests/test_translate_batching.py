"""Batches filled across subjects: each slice's prediction is the one-subject prediction.

Per-slice noise streams (dfbk.diffusion.noise) make a diffusion sample independent of its
batch neighbours; only float32 rounding inside the batched network differs (tolerance derived
in tests/test_translate_noise.py: 15 network evaluations of a few ulps each).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfbk.diffusion.noise import slice_seeds
from dfbk.inference.predict import NonFiniteVolumes, translate_slices, translate_volumes
from dfbk.methods.base import Batch
from dfbk.methods.registry import build_method

TOLERANCE = 15 * 5 * 1.19e-7
SIZE = 32
SMALL = {"channels": 8, "swin_embed_dim": 16, "head_channels": 8, "num_steps": 3}


@pytest.fixture(scope="module")
def resshift():
    """A narrow ResShift after one training step (the sampler is under test, not the width)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    method = build_method("resshift", "tiny", SMALL)
    source = torch.rand(2, 1, SIZE, SIZE)
    method.training_step(Batch(source, 1 - source, torch.ones_like(source)), 0)
    yield method.eval()
    torch.set_num_threads(threads)


def subjects(counts: dict[str, int]) -> list[tuple[str, np.ndarray, torch.Tensor]]:
    generator = torch.Generator().manual_seed(4)
    return [
        (
            name,
            torch.rand(n, SIZE, SIZE, generator=generator).numpy(),
            slice_seeds(0, name, range(n)),
        )
        for name, n in counts.items()
    ]


def recorded_batches(method) -> list[int]:
    """Wrap the instance's translate to record each batch size."""
    sizes, translate = [], method.translate

    def recording(source, *args, **kwargs):
        sizes.append(source.shape[0])
        return translate(source, *args, **kwargs)

    method.translate = recording
    return sizes


def test_slices_of_two_subjects_share_batches_and_match_one_subject_batching(resshift):
    volumes = subjects({"sub-01": 5, "sub-02": 4})
    sizes = recorded_batches(resshift)
    try:
        joint = list(translate_volumes(resshift, volumes, batch_size=4))
        assert sizes == [4, 4, 1]  # the middle batch holds sub-01's last slice and 3 of sub-02
        sizes.clear()
        alone = [translate_slices(resshift, s, 4, seeds=seeds) for _, s, seeds in volumes]
        assert sizes == [4, 1, 4]  # one subject at a time: a partial batch per subject
    finally:
        del resshift.translate  # the class's method again
    assert [name for name, _ in joint] == ["sub-01", "sub-02"]
    for (_, pred), single in zip(joint, alone, strict=True):
        assert pred.shape == single.shape
        assert np.abs(pred - single).max() <= TOLERANCE
    # the check has teeth: another subject's seeds give another sample
    other = translate_slices(resshift, volumes[1][1], 4, seeds=slice_seeds(0, "x", range(4)))
    assert np.abs(other - alone[1]).max() > 100 * TOLERANCE


def test_each_volume_is_yielded_once_its_last_slice_is_done():
    """A stand-in method (identity): order, empty volumes and streaming are the stream's own."""

    class Identity:
        SAMPLES_NOISE = False
        device = torch.device("cpu")

        def translate(self, source, knowledge=None, seeds=None, **_):
            return source

    volumes = subjects({"a": 3, "empty": 0, "b": 6, "c": 1})
    seen = []

    def produced():
        for volume in volumes:
            seen.append(volume[0])
            yield volume

    stream = translate_volumes(Identity(), produced(), batch_size=4)
    name, pred = next(stream)
    assert name == "a" and seen == ["a", "empty", "b"]  # a's batch needed one slice of b
    assert np.array_equal(pred, volumes[0][1])
    rest = dict(stream)
    assert list(rest) == ["empty", "b", "c"] and rest["empty"].shape == (0, SIZE, SIZE)
    for name, slices, _ in volumes[2:]:
        assert np.array_equal(rest[name], slices)


def test_a_non_finite_batch_names_the_subjects_in_it():
    class Diverged:
        SAMPLES_NOISE = False
        device = torch.device("cpu")

        def translate(self, source, knowledge=None, seeds=None, **_):
            return torch.full_like(source, float("nan"))

    with pytest.raises(NonFiniteVolumes) as info:
        list(translate_volumes(Diverged(), subjects({"s1": 1, "s2": 2}), batch_size=4))
    assert info.value.names == ["s1", "s2"] and info.value.bad == 3 * SIZE * SIZE
