"""The interface every translation method implements; the shared trainer drives it.

A method owns its networks, losses, optimisers and the body of one training step (GANs
alternate several optimisers, so the step cannot be generic). Everything else — the loop,
seeding, EMA, checkpoints, logging, AMP policy, data — belongs to the shared trainer
(`dfbk.training.trainer`), so a baseline file holds only what is its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dfbk.data.slices.loader import Batch
from dfbk.errors import ConfigError
from dfbk.knowledge.tokens import Knowledge
from dfbk.methods.budget import check_budget


def to_signed(x: Tensor) -> Tensor:
    """Map [0, 1] images to [-1, 1], the range GANs and diffusion models are trained in."""
    return x * 2.0 - 1.0


def to_unit(x: Tensor) -> Tensor:
    """Map [-1, 1] network output back to [0, 1], clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


# Data settings every method has, read by the shared loader; a preset overrides them (MaskGAN's
# and SynDiff's released code train without flips, so their presets say `augment: none`).
# augment: "hflip" (random left-right flips of source, target and mask together) or "none";
# patch_size: None (whole slices) or the side of random square crops taken at one position.
COMMON_DEFAULTS: dict[str, Any] = {"augment": "hflip", "patch_size": None}
AUGMENTATIONS = ("hflip", "none")


def _check_common(name: str, hparams: dict[str, Any]) -> None:
    """Refuse a common data setting the loader cannot honour, naming the key."""
    if hparams["augment"] not in AUGMENTATIONS:
        raise ConfigError(
            f"method '{name}': augment '{hparams['augment']}' unknown; known: "
            f"{', '.join(AUGMENTATIONS)}"
        )
    size = hparams["patch_size"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ConfigError(f"method '{name}': patch_size must be a positive integer or null")


class Method(nn.Module):
    """Base class: build from hyperparameters, take a training step, translate a batch.

    Subclasses set `PRESETS` (name -> hyperparameters) and implement `training_step` and
    `translate`. Shared hyperparameters read by the trainer: `steps`, `batch_size`, and
    `ema_decay` (None: no EMA); the loader reads `augment` and `patch_size` (`COMMON_DEFAULTS`,
    which every preset inherits). `ema_network()` names the module whose EMA is used at
    inference.
    """

    name: ClassVar[str] = ""
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    # Keys the trainer reads; every preset must define them.
    TRAINER_KEYS: ClassVar[tuple[str, ...]] = ("steps", "batch_size", "ema_decay")
    # False: the trainer feeds targets from independently drawn slices (unpaired methods such
    # as MaskGAN and SynDiff train this way by design); override per instance via hparams.
    PAIRED: ClassVar[bool] = True
    # True: fitted from statistics, not by steps: the trainer calls `fit_split` once, before
    # step 0, with every training slice (the floors: dfbk.baselines.floors).
    FITS_SPLIT: ClassVar[bool] = False

    @property
    def paired(self) -> bool:
        return bool(self.hparams.get("paired", self.PAIRED))

    def __init__(self, hparams: dict[str, Any]) -> None:
        super().__init__()
        self.hparams = dict(hparams)
        self.amp = False  # set by the trainer: bf16 autocast on CUDA

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def resolve_hparams(
        cls, preset: str, overrides: dict[str, Any] | None = None, *, budget: bool = True
    ) -> dict[str, Any]:
        """Preset values updated by overrides; unknown preset or key is a ConfigError."""
        if preset not in cls.PRESETS:
            raise ConfigError(
                f"method '{cls.name}' has no preset '{preset}'; known: {', '.join(cls.PRESETS)}"
            )
        hparams = {**COMMON_DEFAULTS, **cls.PRESETS[preset]}
        for key, value in (overrides or {}).items():
            if key not in hparams:
                raise ConfigError(
                    f"method '{cls.name}': unknown hyperparameter '{key}' in overrides; "
                    f"known: {', '.join(sorted(hparams))}"
                )
            hparams[key] = value
        _check_common(cls.name, hparams)
        if budget:  # dfbk.plan.checks checks it itself, naming the config key
            check_budget(f"method '{cls.name}'", hparams, cls.PRESETS[preset].get("steps"))
        return hparams

    # ----- the interface ------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers, saved and restored by the trainer's checkpoints."""
        return {}

    def schedulers(self) -> dict[str, Any]:
        """Named learning-rate schedulers (stepped by the method), checkpointed by the trainer."""
        return {}

    def ema_network(self) -> nn.Module | None:
        """The module the trainer keeps an exponential moving average of (None: no EMA)."""
        return None

    def training_step(self, batch: Batch, step: int) -> dict[str, float]:
        """One optimisation step on `batch`; returns named scalar losses for the log."""
        raise NotImplementedError

    def fit_split(self, batches: Iterable[Batch]) -> None:
        """Fit from one pass over the whole training split (`FITS_SPLIT` methods only).

        `batches`: every training slice once, whole slices in store order, no augmentation,
        paired targets (`SliceBatcher.split_batches`), on the method's device.
        """
        raise NotImplementedError

    @torch.no_grad()
    def translate(
        self, source: Tensor, knowledge: Knowledge | None = None, seeds: Tensor | None = None
    ) -> Tensor:
        """Predict target slices (B, 1, H, W) in [0, 1] from source slices in [0, 1].

        `seeds` (B,) int64: one noise seed per slice, derived by the caller from (run seed,
        subject, slice index), so a stochastic sampler gives a slice the same prediction
        whatever batch it is in. Deterministic methods ignore it.
        """
        raise NotImplementedError

    def diagnostics(self) -> dict[str, float]:
        """Scalars the trainer logs beside the losses (e.g. module gates); default none."""
        return {}

    @classmethod
    def inference_hparams(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """Hyperparameters for rebuilding from a checkpoint (drop training-only inputs)."""
        return dict(hparams)

    def init_from_stage(self, state: dict[str, Tensor]) -> None:
        """Start from the weights of the previous training stage (default: matching keys)."""
        self.load_state_dict(state, strict=False)

    def describe(self) -> dict[str, Any]:
        """Facts recorded with the run (deviations from the paper, training mode...)."""
        return {}

    # ----- helpers for subclasses ---------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when the trainer enabled AMP; a no-op on CPU."""
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters, reported beside the published counts."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
