"""DFBK and its ablations: ResShift + Swin-UNet + Dynamic Frequency Balance + Knowledge Guidance.

One class, `DFBK`, whose network is the Swin-UNet of `resshift` (METHOD.md §2) with two
switches: `dfb` ("full" | "low" | "high" | "static" | None, METHOD.md §3) and `kg` (METHOD.md
§4, with `kg_gate` for the high-band gate and `kg_global` for the timestep-embedding MLP).
Each registry name is the same class with other switch values (`ABLATIONS`), so the ablation
table compares networks that differ only in those modules:

    dfbk             DFB full + KG          dfbk-dfb-low     DFB low band only + KG
    dfbk-no-kg       DFB full               dfbk-dfb-high    DFB high bands only + KG
    dfbk-no-dfb      KG on full maps        dfbk-dfb-static  DFB with w = 0.5/0.5 + KG
    resshift         neither (dfbk/methods/resshift.py)

Placement (`dfb_levels`, `dfb_bottleneck`): every skip tensor of the given levels (0 = full
resolution, negative = from the lowest) and the bottleneck; default the two lowest-resolution
skip levels plus the bottleneck, METHOD.md §3's cheapest useful set. KG without DFB sits at the
same places. `knowledge_dim` is the text encoder's width (512 BiomedCLIP, 384 MiniLM); the
trainer's caller sets it from the knowledge cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dfbk.errors import ConfigError
from dfbk.methods.base import Batch, Knowledge
from dfbk.methods.registry import register_method
from dfbk.methods.resshift import SWIN_UNET_PRESETS, ResShiftBase
from dfbk.networks.swin_unet import SwinUNet, SwinUNetConfig

# DFB/KG hyperparameters on top of the shared Swin-UNet presets (same in tiny and paper).
DFBK_DEFAULTS: dict[str, Any] = {
    "dfb": "full",
    "kg": True,
    "kg_gate": True,
    "kg_global": True,
    "knowledge_dim": 512,
    "dfb_levels": [-2, -1],
    "dfb_bottleneck": True,
    "dfb_global_max_tokens": 1024,
    "wavelet_backend": "conv",
}

# registry name -> the switches that make it; everything else is shared.
ABLATIONS: dict[str, dict[str, Any]] = {
    "dfbk": {"dfb": "full", "kg": True},
    "dfbk-no-kg": {"dfb": "full", "kg": False},
    "dfbk-no-dfb": {"dfb": None, "kg": True},
    "dfbk-dfb-low": {"dfb": "low", "kg": True},
    "dfbk-dfb-high": {"dfb": "high", "kg": True},
    "dfbk-dfb-static": {"dfb": "static", "kg": True},
}


def ablation_presets(switches: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """tiny/paper presets of one ablation: shared Swin-UNet + DFBK defaults + its switches."""
    return {name: {**base, **DFBK_DEFAULTS, **switches} for name, base in SWIN_UNET_PRESETS.items()}


class DFBK(ResShiftBase):
    """ResShift with the Swin-UNet, DFB and Knowledge Guidance switched by hyperparameters."""

    PRESETS = ablation_presets(ABLATIONS["dfbk"])

    def build_network(self) -> torch.nn.Module:
        return SwinUNet(SwinUNetConfig.from_hparams(self.hparams))

    def _require_knowledge(self, knowledge: Tensor | None) -> None:
        """KG without knowledge is a wiring error: say which input is missing and how to fix it."""
        if self.hparams["kg"] and knowledge is None:
            raise ConfigError(
                f"method '{self.name}' uses Knowledge Guidance (kg: true) but no knowledge "
                "embedding was given (batch.knowledge is None): run the knowledge rule for this "
                "dataset and target modality and pass its cached embedding, or use a method "
                "without KG (dfbk-no-kg, resshift)"
            )

    def training_step(self, batch: Batch, step: int) -> dict[str, float]:
        self._require_knowledge(batch.knowledge)
        return super().training_step(batch, step)

    @torch.no_grad()
    def translate(
        self, source: Tensor, knowledge: Knowledge | None = None, seeds: Tensor | None = None
    ) -> Tensor:
        self._require_knowledge(knowledge)
        return super().translate(source, knowledge, seeds)

    def describe(self) -> dict[str, Any]:
        h = self.hparams
        high_kg = "through sigmoid(Conv1x1(H))" if h["kg_gate"] else "ungated"
        return {
            "denoiser": "ResShift Swin-UNet (dfbk/networks/swin_unet.py)",
            "dfb": h["dfb"],
            "kg": h["kg"],
            "placement": f"skip levels {h['dfb_levels']} (0 = full resolution, negative = "
            f"from the lowest), bottleneck {h['dfb_bottleneck']}; KG-only at the same places",
            "dfb_choices": "LL': global MHSA (window attention past "
            f"{h['dfb_global_max_tokens']} tokens), no channel gate; H' = Conv1x1(sigmoid("
            "Conv3x3([H, LL'])) * H), no soft-threshold variant; balance MLP [mean-pool(F), "
            "t-emb] -> 2, hidden = width; gamma = 0 at init",
            "kg_choices": "cross-attention queries = LL' (or the full map without DFB), "
            "keys/values = LayerNorm(knowledge) projected to the feature width; added fully to "
            f"LL', to the high features {high_kg}; global MLP of mean-pooled tokens added to "
            f"the t-embedding: {h['kg_global']}; "
            "without DFB: F + gamma * Attn(F, k), gamma = 0 at init, no gate (no bands)",
            "knowledge_dim": h["knowledge_dim"],
            "wavelet": f"Haar, one level, orthonormal, backend {h['wavelet_backend']}",
            "swin_levels": "level indices; paper: 128/64/32 at 256x256 (METHOD.md's 32/16/8 "
            "do not exist in a 1,2,2,4 U-Net at 256x256)",
            "lr_schedule": "linear warm-up, then constant",
        }


def _register_ablations() -> None:
    """Register each ablation name as a thin DFBK subclass that only sets PRESETS (data)."""
    for name, switches in ABLATIONS.items():
        if name == "dfbk":
            register_method(name)(DFBK)
            continue
        class_name = "DFBK_" + name.removeprefix("dfbk-").replace("-", "_")
        register_method(name)(type(class_name, (DFBK,), {"PRESETS": ablation_presets(switches)}))


_register_ablations()
