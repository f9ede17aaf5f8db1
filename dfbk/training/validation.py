"""Validation during training: a fixed, seeded set of validation slices, the same for every method.

Every `val_every` steps (and at the last step) the trainer translates the same few validation
slices with the current inference weights (the EMA where the method keeps one), each slice with
its own fixed noise seed and in tiles of the training patch (as the test set is translated), and
logs SSIM, PSNR and MAE inside the foreground mask with the evaluation protocol's functions
(`dfbk.evaluation.metrics`). The best step by SSIM is kept as `best.pt`. Validation runs under
a forked RNG, so it never changes the training trajectory: a run with validation is
bit-identical to one without.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from dfbk.data.slices.store import SliceStore
from dfbk.errors import DataError
from dfbk.evaluation.metrics import mae, psnr, ssim
from dfbk.inference.sliding_window import NonFiniteOutput, trained_tile, translate_tiled
from dfbk.methods.base import Knowledge, Method

DEFAULT_SLICES = 8
DEFAULT_TIMES = 5  # validations per run when val_every is not given


def default_val_every(steps: int) -> int:
    """Validate about DEFAULT_TIMES times per run (at least every step of a very short one)."""
    return max(1, -(-steps // DEFAULT_TIMES))


def slice_seeds(seed: int, indices: np.ndarray) -> torch.Tensor:
    """(N,) int64 noise seeds, one per store slice, fixed by the run seed and the slice index."""
    return torch.tensor(
        [int(np.random.SeedSequence([seed, int(i)]).generate_state(1)[0]) for i in indices],
        dtype=torch.int64,
    )


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block without touching Python's, NumPy's or torch's global RNG streams."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


class Validator:
    """Translate a fixed seeded subset of validation slices and score them on the foreground."""

    def __init__(
        self,
        store: SliceStore,
        source: str,
        target: str,
        subjects: list[str],
        seed: int,
        n_slices: int = DEFAULT_SLICES,
        batch_size: int = 8,
    ) -> None:
        indices = store.indices(subjects)
        if indices.size == 0:
            raise DataError(f"{store.root}: no validation slices (validation subjects {subjects})")
        rng = np.random.default_rng([seed, 7])
        chosen = np.sort(rng.choice(indices, size=min(n_slices, indices.size), replace=False))
        self.indices = chosen
        self.source = np.asarray(store.images(source)[chosen], dtype=np.float32)
        self.target = np.asarray(store.images(target)[chosen], dtype=np.float64)
        self.mask = np.asarray(store.mask[chosen]) > 0
        self.seeds = slice_seeds(seed, chosen)
        self.batch_size = batch_size

    @torch.no_grad()
    def predict(self, method: Method, knowledge: Knowledge | None) -> np.ndarray:
        """(N, H, W) predictions in [0, 1]; the method is left in the mode it was in.

        A method trained on patches is run over the slices in tiles of its patch, as the test
        set is translated (dfbk.inference.predict.inference_tile, tiling `patch`), so the validation
        score that picks best.pt measures what the test will; whole slices otherwise. A
        non-finite prediction yields NaN (never a best step) instead of stopping training.
        """
        tile = trained_tile(method.hparams, self.source.shape[-2:])
        was_training = method.training
        method.eval()
        try:
            with isolated_rng():
                pred, _ = translate_tiled(
                    method, self.source, self.seeds, tile, self.batch_size, knowledge
                )
        except NonFiniteOutput:
            pred = np.full(self.source.shape, np.nan, dtype=np.float32)
        finally:
            method.train(was_training)
        return pred.astype(np.float64)

    def evaluate(self, method: Method, knowledge: Knowledge | None) -> dict[str, float]:
        """val_ssim, val_psnr, val_mae over the foreground of the validation slices."""
        pred = self.predict(method, knowledge)
        return {
            "val_ssim": ssim(pred, self.target, mask=self.mask),
            "val_psnr": psnr(pred, self.target, mask=self.mask),
            "val_mae": mae(pred, self.target, mask=self.mask),
        }
