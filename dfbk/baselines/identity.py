"""identity: the source slice as the prediction — one of the floors every method must beat
(dfbk.methods.registry.FLOOR_METHODS; the others: dfbk.baselines.floors)."""

from __future__ import annotations

from torch import Tensor, nn

from dfbk.methods.base import Batch, Knowledge, Method
from dfbk.methods.registry import register_method


@register_method("identity")
class Identity(Method):
    """No parameters, no training: predicts target = source."""

    PRESETS = {
        "tiny": {"steps": 0, "batch_size": 1, "ema_decay": None},
        "paper": {"steps": 0, "batch_size": 1, "ema_decay": None},
    }

    def __init__(self, hparams: dict) -> None:
        super().__init__(hparams)
        self.anchor = nn.Parameter(nn.init.zeros_(Tensor(1)), requires_grad=False)  # carries device

    def training_step(self, batch: Batch, step: int) -> dict[str, float]:
        return {}

    def translate(
        self, source: Tensor, knowledge: Knowledge | None = None, seeds: Tensor | None = None
    ) -> Tensor:
        return source.clamp(0.0, 1.0)
