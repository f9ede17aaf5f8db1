"""The knowledge a method is given: token states of the encoded prompts (what the cache holds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Knowledge:
    """Knowledge Guidance's text keys/values for one target modality, shared by every sample.

    tokens: (K, D) float32 token states of the encoded prompts (several prompts, their tokens
        concatenated); mask: (K,) bool, True for a real token, False for padding (None: all
        real). Per-sample visual tokens are not here: a method that uses them computes them from
        the source slices it is given.
    """

    tokens: Tensor
    mask: Tensor | None = None

    def to(self, device: torch.device) -> Knowledge:
        mask = None if self.mask is None else self.mask.to(device)
        return Knowledge(self.tokens.to(device), mask)

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[-1])

    def to_payload(self) -> dict[str, Tensor | None]:
        """Tensors only, so a checkpoint holding them loads with `weights_only=True`."""
        return {"knowledge_tokens": self.tokens.cpu(), "knowledge_mask": self.mask}

    @staticmethod
    def from_payload(payload: dict[str, Any]) -> Knowledge | None:
        tokens = payload.get("knowledge_tokens")
        return None if tokens is None else Knowledge(tokens, payload.get("knowledge_mask"))
