"""DFBK and its ablations: ResShift + Swin-UNet + Dynamic Frequency Balance + Knowledge Guidance.

One class, `DFBK`, whose network is the Swin-UNet of `resshift` (docs/method.md §2) with two
switches: `dfb` ("full" | "low" | "high" | "static" | None, docs/method.md §3) and `kg`
(docs/method.md §4, with `kg_gate` for the high-band gate, `kg_global` for the t-embedding MLP).
Each registry name is the same class with other switch values (`ABLATIONS`), so the ablation
table compares networks that differ only in those modules:

    dfbk             DFB full + KG          dfbk-dfb-low     DFB low band only + KG
    dfbk-no-kg       DFB full               dfbk-dfb-high    DFB high bands only + KG
    dfbk-no-dfb      KG on full maps        dfbk-dfb-static  DFB with w = 0.5/0.5 + KG
    resshift         neither (dfbk/methods/resshift.py)

Placement (`dfb_levels`, `dfb_bottleneck`): every skip tensor of the given levels (0 = full
resolution, negative = from the lowest) and the bottleneck; default the two lowest-resolution
skip levels plus the bottleneck, docs/method.md §3's cheapest useful set. KG without DFB sits at the
same places. `knowledge_dim` is the width of the text encoder's token states (768 BiomedCLIP's
PubMedBERT, 384 MiniLM); the trainer sets it from the knowledge cache (`emb.dim`).

Knowledge is the token states of several prompts with their padding mask (`Knowledge`; a bare
(K, D) tensor is taken as all-real tokens), plus, with `visual_knowledge` on, BiomedCLIP's
image-tower tokens of each source slice, computed here under no_grad from the source the
denoiser is given (cached across the 15 sampling steps of one batch). The frozen tower is
held outside the module tree: not in the state dict, the parameter count or the optimiser.
`visual_knowledge`: auto (on when BiomedCLIP's weights are here, else off with the reason in
describe()), on (fail when absent), off. It is resolved once when the method is built and the
result ("on"/"off", `visual_dim`) is what the checkpoint stores.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

from dfbk.diffusion import resshift as rs
from dfbk.errors import ConfigError
from dfbk.methods.base import Batch, Knowledge, to_unit
from dfbk.methods.registry import register_method
from dfbk.methods.resshift import RELEASED_RECIPE, SWIN_UNET_PRESETS, ResShiftBase
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
    "dfb_inner_ratio": 0.25,
    "visual_knowledge": "auto",
    "biomedclip_dir": None,
    "visual_dim": 0,  # set when visual_knowledge resolves to "on"
    "wavelet_backend": "conv",
}
# A ViT-B/16 forward per slice per step is too slow for CPU demos: tiny uses text only.
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {"tiny": {"visual_knowledge": "off"}}

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
    return {
        name: {**base, **DFBK_DEFAULTS, **PRESET_DEFAULTS.get(name, {}), **switches}
        for name, base in SWIN_UNET_PRESETS.items()
    }


def knowledge_parts(knowledge: Knowledge | Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """(tokens, mask) of a Knowledge, of a bare (K, D) tensor (mask None: all real), or Nones."""
    if knowledge is None or isinstance(knowledge, Tensor):
        return knowledge, None
    return knowledge.tokens, knowledge.mask


class DFBK(ResShiftBase):
    """ResShift with the Swin-UNet, DFB and Knowledge Guidance switched by hyperparameters."""

    PRESETS = ablation_presets(ABLATIONS["dfbk"])

    def build_network(self) -> torch.nn.Module:
        self._resolve_visual()
        return SwinUNet(SwinUNetConfig.from_hparams(self.hparams))

    def _resolve_visual(self) -> None:
        """Decide whether BiomedCLIP's image tower adds per-slice tokens; record why."""
        from dfbk.knowledge.vision import resolve_vision

        h = self.hparams
        self._visual_cache: tuple[weakref.ref, int, Tensor] | None = None
        if not h["kg"]:
            tower, reason = None, "off (no Knowledge Guidance)"
        else:
            tower, reason = resolve_vision(h["visual_knowledge"], h.get("biomedclip_dir"))
        if tower is not None and h.get("visual_dim") not in (0, tower.width):
            raise ConfigError(
                f"method '{self.name}': visual_dim {h['visual_dim']} but the image tower gives "
                f"{tower.width}-d tokens ({tower.version})"
            )
        # a plain attribute, not a submodule: frozen, outside state dict and optimiser
        object.__setattr__(self, "_vision", tower)
        self.visual_reason = reason
        h["visual_knowledge"] = "on" if tower is not None else "off"
        h["visual_dim"] = tower.width if tower is not None else 0

    def visual_tokens(self, y: Tensor) -> Tensor | None:
        """(B, N, visual_dim) image tokens of the source y in [-1, 1], or None when off.

        The sampler calls the denoiser 15 times with the same source tensor: the tokens are
        computed once per source tensor (identity and in-place version checked).
        """
        if self._vision is None:
            return None
        cached = self._visual_cache
        if cached is not None and cached[0]() is y and cached[1] == y._version:
            return cached[2]
        tokens = self._vision.encode(to_unit(y.detach()))
        self._visual_cache = (weakref.ref(y), y._version, tokens)
        return tokens

    def denoise(
        self, x_t: Tensor, y: Tensor, t: Tensor, knowledge: Knowledge | Tensor | None = None
    ) -> Tensor:
        """f(x_t, y, t, k) -> x0 with text tokens + mask and, when on, the source's image tokens."""
        tokens, mask = knowledge_parts(knowledge)
        visual = self.visual_tokens(y) if self.hparams["kg"] else None
        inputs = torch.cat([rs.scale_input(x_t, t, self.schedule), y], dim=1)
        with self.autocast():
            return self.net(inputs, t, tokens, mask, visual).float()

    def diagnostics(self) -> dict[str, float]:
        """Per DFB/KG module: gain, mean w_low, KG's share of the output change, output-projection
        norm (last step)."""
        return self.net.diagnostics()

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
        self,
        source: Tensor,
        knowledge: Knowledge | None = None,
        seeds: Tensor | None = None,
        **noise: Any,
    ) -> Tensor:
        self._require_knowledge(knowledge)
        return super().translate(source, knowledge, seeds, **noise)

    def describe(self) -> dict[str, Any]:
        h = self.hparams
        high_kg = "through sigmoid(Conv1x1(H))" if h["kg_gate"] else "ungated"
        return {
            "denoiser": "ResShift Swin-UNet (dfbk/networks/swin_unet.py)",
            "dfb": h["dfb"],
            "kg": h["kg"],
            "placement": f"skip levels {h['dfb_levels']} (0 = full resolution, negative = "
            f"from the lowest), bottleneck {h['dfb_bottleneck']}; KG-only at the same places",
            "dfb_choices": "inner width r = ~"
            f"{h['dfb_inner_ratio']} x feature width (bottleneck); LL' = LL + Attn(Norm(LL)) "
            f"at width r (global MHSA, window attention past {h['dfb_global_max_tokens']} "
            "tokens), no channel gate; high bands: H = Conv1x1 (3C -> r), gate sigmoid("
            "DWConv3x3(Conv1x1([H, LL']))), no soft-threshold variant; balance MLP "
            "[mean-pool(F), t-emb] -> r -> 2; out = F + IDWT(2 w_L dL, 2 w_H dH) with "
            "zero-initialised 1x1 output projections (identity at init, no gamma scalar)",
            "kg_choices": "keys/values = LayerNorm of the text encoder's token states of "
            "several prompts (padding masked)"
            + (
                " + projected BiomedCLIP image tokens of each source slice"
                if h["visual_dim"]
                else ""
            )
            + "; cross-attention at width r, queries = LL' (or the full map without DFB); "
            f"added fully to LL', to the high bands {high_kg}; global MLP of the mean text "
            f"token (last layer zero-initialised) added to the t-embedding: {h['kg_global']}; "
            "without DFB: F + Out(Attn(F, k)), Out zero-initialised, no gate (no bands)",
            "visual_knowledge": self.visual_reason,
            "knowledge_dim": h["knowledge_dim"],
            "wavelet": f"Haar, one level, orthonormal, backend {h['wavelet_backend']}",
            "swin_levels": "level indices; paper: 128/64/32 at 256x256 (docs/method.md's 32/16/8 "
            "do not exist in a 1,2,2,4 U-Net at 256x256)",
            "lr_schedule": "linear warm-up, then constant",
            "released_recipe": dict(RELEASED_RECIPE),
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
