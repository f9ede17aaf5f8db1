"""Training batches from the slice store, a pure function of (seed, step).

The batch at step s is fixed by the seed and s alone (epoch = s // batches_per_epoch, a
seeded permutation per epoch; flips, crop positions and unpaired partners drawn from
generators seeded with (seed, step)), so a resumed run sees exactly the data an uninterrupted
run would have seen, with no loader state to checkpoint. Slices are read from memory maps, in
the training process or, with `prefetched_batches`, ahead of time in a background thread or in
DataLoader worker processes; step s gets the same batch either way, so prefetching is a speed
setting only.

Per-method data settings (`augment`, `patch_size`, `paired`) come from the method's
hyperparameters, so every method is fed by the same code and differs only where its preset says.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dfbk.data.slices.store import SliceStore
from dfbk.errors import DataError

if TYPE_CHECKING:  # the type only: knowledge sits above the data layer
    from dfbk.knowledge.tokens import Knowledge

# Unpaired partners come from any training slice within this relative axial position of the
# source's (position = slice index / (slices - 1) in its subject), as MaskGAN's released loader
# draws them (positions rounded to 0.01, partners within +-0.03).
PARTNER_WINDOW = 0.03
# Arrays a SliceBatcher reads; pickled as file references, never as their contents.
_MAPPED = ("source", "target", "mask")


@dataclass
class Batch:
    """One training batch of aligned axial slices.

    source, target: (B, 1, H, W) float32 in [0, 1] (the slice store's range).
    mask: (B, 1, H, W) float32 in {0, 1}, the foreground (head/body) mask.
    knowledge: optional knowledge tokens of the target modality (`Knowledge`).
    """

    source: Tensor
    target: Tensor
    mask: Tensor
    knowledge: Knowledge | None = None

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        knowledge = None if self.knowledge is None else self.knowledge.to(device)
        return Batch(move(self.source), move(self.target), move(self.mask), knowledge)


class SliceBatcher:
    """Yields `Batch`es of (source, target, mask) slices of the given subjects.

    flip: random left-right flips (the same for source, target and mask of a sample);
    patch_size: None for whole slices, else random square crops at one position per sample;
    paired=False: each target comes from another subject, at a similar relative axial position
    (unpaired training, as MaskGAN and SynDiff do): same anatomy level, different head.
    """

    def __init__(
        self,
        store: SliceStore,
        source: str,
        target: str,
        subjects: list[str],
        batch_size: int,
        seed: int,
        flip: bool = True,
        paired: bool = True,
        patch_size: int | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.source = store.images(source)
        self.target = store.images(target)
        self.mask = store.mask
        self.indices = store.indices(subjects)
        if self.indices.size == 0:
            raise DataError(f"{store.root}: no slices for subjects {subjects}")
        if patch_size is not None and not 0 < patch_size <= min(store.size):
            raise DataError(
                f"{store.root}: patch_size {patch_size} does not fit slices of size "
                f"{store.size[0]}x{store.size[1]}"
            )
        self.batch_size = min(batch_size, self.indices.size)
        if self.batch_size % world:
            raise DataError(
                f"{store.root}: batch of {self.batch_size} slices does not split evenly over "
                f"{world} processes"
            )
        # data parallel: this rank's contiguous share of every global batch (all draws below
        # are made for the whole global batch, then sliced, so the union over ranks is the
        # single-process batch)
        share = self.batch_size // world
        self.share = slice(rank * share, (rank + 1) * share)
        self.seed = seed
        self.flip = flip
        self.paired = paired
        self.patch_size = patch_size
        self.size = tuple(store.size)
        self.batches_per_epoch = self.indices.size // self.batch_size
        self.ranges = [store.subject_range(s) for s in subjects]

    def batch_indices(self, step: int) -> np.ndarray:
        """Store indices of the batch at `step`."""
        epoch, k = divmod(step, self.batches_per_epoch)
        if getattr(self, "_epoch_order", (None,))[0] != epoch:  # one permutation per epoch,
            # not per step: O(training slices), ~1 ms for BraTS's ~100k, at every step before
            order = np.random.default_rng([self.seed, epoch]).permutation(self.indices.size)
            self._epoch_order = (epoch, order)
        order = self._epoch_order[1]
        return self.indices[order[k * self.batch_size : (k + 1) * self.batch_size]]

    def unpaired_indices(self, step: int) -> np.ndarray:
        """Partner (target) indices of the batch at `step` for unpaired training.

        For a source slice at relative position r in its subject, the partner is drawn
        uniformly among every training slice (any subject) whose relative position lies within
        r +- PARTNER_WINDOW: a similar level of the head, as MaskGAN's released loader does.
        """
        rng = np.random.default_rng([self.seed, step, 2])
        position_of, ordered, positions = self._relative_positions()
        partners = []
        for index in self.batch_indices(step):
            r = position_of[int(index)]
            lo = np.searchsorted(positions, r - PARTNER_WINDOW - 1e-9, "left")
            hi = np.searchsorted(positions, r + PARTNER_WINDOW + 1e-9, "right")
            partners.append(ordered[lo + int(rng.integers(hi - lo))])
        return np.asarray(partners, dtype=self.indices.dtype)

    def _relative_positions(self) -> tuple[dict[int, float], np.ndarray, np.ndarray]:
        """Each training index's relative axial position in its subject, and the indices with
        their positions sorted by position (stable, so draws are reproducible)."""
        if getattr(self, "_positions", None) is None:
            members, positions = [], []
            for start, stop in self.ranges:
                inside = self.indices[(self.indices >= start) & (self.indices < stop)]
                members.append(inside)
                positions.append((inside - start) / max(1, stop - start - 1))
            index, position = np.concatenate(members), np.concatenate(positions)
            order = np.argsort(position, kind="stable")
            lookup = dict(zip(index.tolist(), position.tolist(), strict=True))
            self._positions = (lookup, index[order], position[order])
        return self._positions

    def _read(
        self, array: np.ndarray, idx: np.ndarray, flips: np.ndarray, corners: np.ndarray | None
    ) -> torch.Tensor:
        """(B, 1, h, w) float32 of slices `idx`: flipped left-right where `flips`, then cropped
        at `corners` (top-left, p = patch_size) when given.

        Each slice is copied once, straight from the memory map into the batch (the flip and
        the crop are views of the map), in ascending store order so the reads are sequential.
        """
        side = self.size if corners is None else (self.patch_size, self.patch_size)
        out = np.empty((len(idx), 1, *side), dtype=np.float32)
        for i in np.argsort(idx, kind="stable"):
            view = array[idx[i]]
            if flips[i]:
                view = view[:, ::-1]
            if corners is not None:
                y, x = corners[i]
                view = view[y : y + side[0], x : x + side[1]]
            out[i, 0] = view
        return torch.from_numpy(out)

    def crop_corners(self, step: int, n: int) -> np.ndarray:
        """(n, 2) top-left corners of the step's patches, uniform over valid positions."""
        rng = np.random.default_rng([self.seed, step, 3])
        high = np.array(self.size) - self.patch_size + 1
        return rng.integers(0, high, size=(n, 2))

    def __getstate__(self) -> dict[str, Any]:
        """Memory maps travel as (file, dtype, shape, offset), not as data (a spawned worker
        would otherwise receive a copy of the whole store); a forked worker shares them."""
        state = dict(self.__dict__)
        for key in _MAPPED:
            array = state[key]
            if isinstance(array, np.memmap) and array.filename is not None:
                state[key] = ("memmap", array.filename, array.dtype.str, array.shape, array.offset)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key in _MAPPED:
            if isinstance(state[key], tuple) and state[key][0] == "memmap":
                _, filename, dtype, shape, offset = state[key]
                state[key] = np.memmap(filename, dtype=dtype, mode="r", shape=shape, offset=offset)
        self.__dict__.update(state)

    def split_batches(self) -> Iterator[Batch]:
        """Every slice of the subjects once, in store order, whole, unflipped and paired, in
        batches of `batch_size` (the last one shorter): a pass for methods fitted from the
        split's statistics rather than by steps. Not sharded: every rank sees the whole split."""
        ordered = np.sort(self.indices)
        for start in range(0, ordered.size, self.batch_size):
            idx = ordered[start : start + self.batch_size]
            flips = np.zeros(len(idx), dtype=bool)
            yield Batch(
                source=self._read(self.source, idx, flips, None),
                target=self._read(self.target, idx, flips, None),
                mask=self._read(self.mask, idx, flips, None),
            )

    def batch(self, step: int) -> Batch:
        """This rank's share of the batch at `step`; with paired=False targets are partners."""
        idx = self.batch_indices(step)
        target_idx = idx if self.paired else self.unpaired_indices(step)
        flips = np.random.default_rng([self.seed, step, 1]).random(len(idx)) < 0.5
        corners = self.crop_corners(step, len(idx)) if self.patch_size is not None else None
        idx, target_idx, flips = idx[self.share], target_idx[self.share], flips[self.share]
        if not self.flip:  # drawn either way, so the other draws do not depend on the setting
            flips = np.zeros_like(flips)  # (flips: the brain is near-symmetric left-right)
        corners = corners[self.share] if corners is not None else None
        src = self._read(self.source, idx, flips, corners)
        msk = self._read(self.mask, idx, flips, corners)
        tgt = self._read(self.target, target_idx, flips, corners)
        return Batch(source=src, target=tgt, mask=msk)


class _StepBatches(Dataset):
    """Map-style view of a SliceBatcher for DataLoader: item i is the batch at step start + i."""

    def __init__(self, batcher: SliceBatcher, start: int, stop: int) -> None:
        self.batcher, self.start, self.stop = batcher, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.batcher.batch(self.start + i)
        return batch.source, batch.target, batch.mask


def prefetched_batches(
    batcher: SliceBatcher,
    start: int,
    stop: int,
    workers: int = 0,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
    thread: bool = False,
) -> Iterator[Batch]:
    """The batches of steps start, ..., stop - 1, in order: `batcher.batch(step)` for each.

    By default each batch is read in this process when it is asked for. thread=True reads
    `prefetch_factor` batches ahead in one background thread of this process (NumPy's copies
    out of the memory map release the GIL, so they overlap the caller's waiting on the GPU,
    and nothing crosses a process boundary). workers = N > 0 reads ahead in N DataLoader worker
    processes, `prefetch_factor` batches each (each batch then travels through shared memory,
    which costs the caller about what reading it does; measured by bench/bench_loader.py).
    pin_memory puts the batches in page-locked memory (for CUDA, so `Batch.to(device)` copies
    asynchronously). Since a batch is a pure function of (seed, step), the sequence is the
    same for every setting: resuming at `start` and the data-parallel shares are unchanged.
    """
    if workers < 0 or prefetch_factor < 1 or (thread and workers):
        raise DataError(
            "prefetch needs workers >= 0, prefetch_factor >= 1 and a thread or workers, not "
            f"both; got workers {workers}, prefetch_factor {prefetch_factor}, thread {thread}"
        )
    if thread:
        yield from _thread_prefetched(batcher, range(start, stop), prefetch_factor, pin_memory)
        return
    if workers == 0 and not pin_memory:
        for step in range(start, stop):
            yield batcher.batch(step)
        return
    loader = DataLoader(
        _StepBatches(batcher, start, stop),
        batch_size=None,  # each item is already a batch
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if workers else None,
    )
    for source, target, mask in loader:
        yield Batch(source=source, target=target, mask=mask)


def _thread_prefetched(
    batcher: SliceBatcher, steps: range, ahead: int, pin_memory: bool
) -> Iterator[Batch]:
    """Batches of `steps` read `ahead` steps early by one thread, yielded in step order.

    One thread, so the batcher (its per-epoch permutation and partner caches) is only ever
    used by it; closing the generator cancels what is queued and waits for the running read.
    """

    def read(step: int) -> Batch:
        batch = batcher.batch(step)
        if pin_memory and torch.cuda.is_available():  # as DataLoader: no-op without CUDA
            batch = Batch(*(t.pin_memory() for t in (batch.source, batch.target, batch.mask)))
        return batch

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfbk-prefetch")
    queued: deque[Future[Batch]] = deque()
    upcoming = iter(steps)
    try:
        for step in itertools.islice(upcoming, ahead):
            queued.append(pool.submit(read, step))
        while queued:
            batch = queued.popleft().result()
            for step in itertools.islice(upcoming, 1):
                queued.append(pool.submit(read, step))
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
