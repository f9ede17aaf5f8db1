"""Per-slice visual knowledge: BiomedCLIP's frozen ViT-B/16 turns a source slice into tokens.

docs/method.md §4: the vision-language model's knowledge is fused with visual features — when
BiomedCLIP's weights are present, its image tower encodes each source slice (grey values
repeated to 3 channels, resized to the tower's 224×224, normalised with the model's mean/std)
into patch tokens + CLS (197 × 768 for ViT-B/16), which join the text token states as keys
and values of Knowledge Guidance. They differ from slice to slice, so what the denoiser
attends to depends on the image, not only on the target modality.

The tower is frozen and run under `no_grad`; it is never a submodule of a method, so it is not
in the state dict, the parameter count or the optimiser. `resolve_vision` decides whether it is
used (`visual_knowledge`: auto | on | off) and says why not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfbk.errors import ConfigError
from dfbk.knowledge import encoders

VISUAL_MODES = ("auto", "on", "off")


@dataclass
class VisionTower:
    """A frozen image trunk with its preprocessing; `encode` gives (B, N, width) tokens."""

    trunk: nn.Module
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    width: int
    version: str

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """(B, 1, H, W) slices in [0, 1] -> (B, N, width) float32 token states (CLS + patches)."""
        first = next(self.trunk.parameters(), None)
        if first is not None and first.device != images.device:
            self.trunk.to(images.device)
        x = images.float().clamp(0, 1).expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False, antialias=True)
        mean = x.new_tensor(self.mean)[None, :, None, None]
        std = x.new_tensor(self.std)[None, :, None, None]
        tokens = self.trunk.forward_features((x - mean) / std)
        if tokens.ndim != 3 or tokens.shape[-1] != self.width:
            raise ConfigError(
                f"vision tower {self.version} gave features {tuple(tokens.shape)}, expected "
                f"(B, N, {self.width}) tokens"
            )
        return tokens.float()


def tower_from_open_clip(model: nn.Module, version: str) -> VisionTower:
    """The timm trunk of an open_clip model whose image tower is a TimmModel (BiomedCLIP's)."""
    import open_clip

    trunk = getattr(model.visual, "trunk", None)
    if trunk is None or not hasattr(trunk, "forward_features"):
        raise ConfigError(
            f"{version}: the image tower is {type(model.visual).__name__}, not open_clip's "
            "TimmModel with a timm trunk (BiomedCLIP uses timm vit_base_patch16_224)"
        )
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", model.visual.image_size)
    size = (size, size) if isinstance(size, int) else tuple(size)
    trunk.eval().requires_grad_(False)
    return VisionTower(
        trunk=trunk,
        size=size,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        width=int(trunk.num_features),
        version=version,
    )


def load_biomedclip_vision(local_dir: Path | None = None) -> VisionTower:
    """BiomedCLIP's image tower from `local_dir` or the HF cache, never downloaded here.

    Raises EncoderUnavailable (a ConfigError) with a how-to when the weights are absent.
    """
    try:
        import open_clip  # noqa: F401
    except ImportError as err:
        raise encoders.EncoderUnavailable(f"BiomedCLIP: {err.name} is not installed") from err
    clip_dir, text_dir, source = encoders.locate_biomedclip(local_dir, download=False)
    try:
        model, _, version = encoders._biomedclip_model(clip_dir, text_dir)
    except Exception as err:  # corrupt or mismatched weights: name the folder and the cause
        raise encoders.EncoderUnavailable(
            f"BiomedCLIP: cannot load from {clip_dir} ({type(err).__name__}: {err})"
        ) from err
    return tower_from_open_clip(model, f"open_clip_torch=={version}; {source}")


def resolve_vision(mode: str, local_dir: Path | str | None) -> tuple[VisionTower | None, str]:
    """(tower or None, what was decided and why) for `visual_knowledge` = auto | on | off.

    `auto` uses BiomedCLIP's image tower when its weights are here, else text knowledge only
    (the reason is returned for describe()/run.json); `on` fails loudly when it cannot load.
    """
    if mode not in VISUAL_MODES:
        raise ConfigError(
            f"visual_knowledge: unknown value '{mode}'; known: {', '.join(VISUAL_MODES)}"
        )
    if mode == "off":
        return None, "off (visual_knowledge: off): text token states only"
    folder = Path(local_dir) if local_dir else None
    try:
        tower = load_biomedclip_vision(folder)
    except encoders.EncoderUnavailable as err:
        if mode == "on":
            raise ConfigError(f"visual_knowledge: on, but {err}") from err
        return None, f"off (auto: BiomedCLIP image tower not available: {err})"
    return tower, f"on: BiomedCLIP image tower, {tower.width}-d tokens ({tower.version})"
