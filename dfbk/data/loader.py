"""Training batches from the slice store, a pure function of (seed, step).

The batch at step s is fixed by the seed and s alone (epoch = s // batches_per_epoch, a
seeded permutation per epoch), so a resumed run sees exactly the data an uninterrupted run
would have seen, with no loader state to checkpoint. Slices are read from memory maps in the
main process: at 256x256 a batch is a few MB of page-cache reads, far below a GPU step.
"""

from __future__ import annotations

import numpy as np
import torch

from dfbk.data.store import SliceStore
from dfbk.errors import DataError
from dfbk.methods.base import Batch


class SliceBatcher:
    """Yields `Batch`es of (source, target, mask) slices of the given subjects."""

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
    ) -> None:
        self.source = store.images(source)
        self.target = store.images(target)
        self.mask = store.mask
        self.indices = store.indices(subjects)
        if self.indices.size == 0:
            raise DataError(f"{store.root}: no slices for subjects {subjects}")
        self.batch_size = min(batch_size, self.indices.size)
        self.seed = seed
        self.flip = flip
        self.paired = paired
        self.batches_per_epoch = self.indices.size // self.batch_size

    def batch_indices(self, step: int) -> np.ndarray:
        """Store indices of the batch at `step` (sorted for sequential memmap reads)."""
        epoch, k = divmod(step, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.indices.size)
        chosen = self.indices[order[k * self.batch_size : (k + 1) * self.batch_size]]
        return chosen

    def unpaired_indices(self, step: int) -> np.ndarray:
        """Target indices drawn independently of the source (unpaired training, e.g. MaskGAN)."""
        epoch, k = divmod(step, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, epoch, 2]).permutation(self.indices.size)
        return self.indices[order[k * self.batch_size : (k + 1) * self.batch_size]]

    def _read(self, array: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        order = np.argsort(idx)  # sorted reads are sequential on the memmap
        data = np.asarray(array[idx[order]], dtype=np.float32)[np.argsort(order)]
        return torch.from_numpy(data).unsqueeze(1)

    def batch(self, step: int) -> Batch:
        """The batch at `step`; with paired=False the targets come from other random slices."""
        idx = self.batch_indices(step)
        target_idx = idx if self.paired else self.unpaired_indices(step)
        src, msk = self._read(self.source, idx), self._read(self.mask, idx)
        tgt = self._read(self.target, target_idx)
        if self.flip:  # left-right flips: the brain is near-symmetric, anatomy stays plausible
            flips = torch.from_numpy(
                np.random.default_rng([self.seed, step, 1]).random(len(idx)) < 0.5
            )
            for t in (src, tgt, msk):
                t[flips] = t[flips].flip(-1)
        return Batch(source=src, target=tgt, mask=msk)
