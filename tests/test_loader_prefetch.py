"""Prefetching is a speed setting only: the same batches, in the same order, with or without it."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch

from dfbk.data.slices.loader import SliceBatcher, prefetched_batches
from dfbk.data.slices.store import write_store
from dfbk.errors import DataError

SIZE = 64
SUBJECTS = {"s0": 9, "s1": 7, "s2": 8}  # uneven subjects: relative positions differ


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two modalities of random 'slices' in [0, 1] with a disc mask; distinct per slice."""
    n = sum(SUBJECTS.values())
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (0.4 * SIZE) ** 2).astype(np.uint8)
    t1 = rng.random((n, SIZE, SIZE), dtype=np.float32)
    images = {"t1n": t1 * disc, "t2w": (1.0 - t1) * disc}
    mask = np.ascontiguousarray(np.broadcast_to(disc, (n, SIZE, SIZE)))
    root = tmp_path_factory.mktemp("prefetch") / "store"
    return write_store(root, images, mask, np.zeros_like(mask), SUBJECTS)


def batcher(store, **kw) -> SliceBatcher:
    return SliceBatcher(store, "t1n", "t2w", list(SUBJECTS), batch_size=4, seed=3, **kw)


def assert_same(a, b) -> None:
    for name in ("source", "target", "mask"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize(
    "settings",
    [{}, {"paired": False, "patch_size": 32}],  # paired + flips; unpaired partners + crops
    ids=["paired", "unpaired-patch"],
)
@pytest.mark.parametrize("ahead", [{"workers": 2}, {"thread": True, "prefetch_factor": 3}])
def test_prefetch_yields_the_in_process_batches_in_order(store, settings, ahead):
    plain = batcher(store, **settings)
    start, stop = 5, 13  # a resumed run: starts mid-epoch, crosses the epoch boundary at 6
    got = list(prefetched_batches(batcher(store, **settings), start, stop, **ahead))
    assert len(got) == stop - start
    for step, batch in zip(range(start, stop), got, strict=True):
        assert_same(batch, plain.batch(step))
    # consecutive batches differ, so the comparison above would catch a reordering
    assert not torch.equal(got[0].source, got[1].source)


def test_a_closed_thread_prefetch_stops_reading(store):
    """The trainer leaves the loop on a signal: the reader thread must not outlive the stream."""
    stream = prefetched_batches(batcher(store), 0, 1000, thread=True, prefetch_factor=2)
    assert_same(next(stream), batcher(store).batch(0))
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("dfbk-prefetch")]


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")  # a CPU-only machine
def test_in_process_and_pinned_paths_match(store):
    plain = batcher(store)
    direct = list(prefetched_batches(batcher(store), 0, 3))
    pinned = list(prefetched_batches(batcher(store), 0, 3, pin_memory=True))
    for step in range(3):
        assert_same(direct[step], plain.batch(step))
        assert_same(pinned[step], plain.batch(step))


def test_a_pickled_batcher_refers_to_the_store_files_instead_of_copying_them(store):
    original = batcher(store, paired=False)
    original.batch(0)  # fills the cached partner positions, which travel too
    data = pickle.dumps(original)
    assert len(data) < store.images("t1n").nbytes // 10  # references, not the 400 kB of slices
    copy = pickle.loads(data)
    assert isinstance(copy.source, np.memmap)
    for step in (0, 4):
        assert_same(copy.batch(step), original.batch(step))


def test_bad_prefetch_settings_are_refused(store):
    with pytest.raises(DataError, match="workers >= 0"):
        next(prefetched_batches(batcher(store), 0, 2, workers=-1))
    with pytest.raises(DataError, match="not both"):
        next(prefetched_batches(batcher(store), 0, 2, workers=1, thread=True))


@pytest.mark.parametrize("patch", [None, 32])
def test_a_batch_is_the_stored_slices_flipped_then_cropped(store, patch):
    """The single-copy reader against the plain recipe: index, flip with np.flip, crop."""
    b = batcher(store, patch_size=patch)
    drawn = []
    for step in (0, 7):
        idx = b.batch_indices(step)
        flips = np.random.default_rng([b.seed, step, 1]).random(len(idx)) < 0.5
        corners = b.crop_corners(step, len(idx)) if patch else [(0, 0)] * len(idx)
        drawn += flips.tolist()
        side = patch or SIZE
        got = b.batch(step)
        for array, tensor in ((store.images("t1n"), got.source), (store.mask, got.mask)):
            for i, index in enumerate(idx):
                image = np.asarray(array[index], dtype=np.float32)
                image = np.flip(image, -1) if flips[i] else image
                y, x = corners[i]
                expected = torch.from_numpy(image[y : y + side, x : x + side].copy())
                assert torch.equal(tensor[i, 0], expected)
    assert any(drawn) and not all(drawn)  # both branches were compared
