"""Parameters and training FLOPs of a Swin-UNet method, counted without data or weights.

The ablation table must show that a row's gain is not a size gain: each row's
trainable parameters and forward+backward FLOPs per training step. Both are counted on the
meta device (no memory, no arithmetic), so the 256×256 `paper` networks are measured exactly on
any machine. FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions
and attention; 2 FLOPs per multiply-add; norms and activations are not counted). The frozen
BiomedCLIP image tower (no_grad, forward only) is counted separately, since it is not trained.

Importing this module does not import torch (the CLI and Snakefile may import it cheaply).
"""

from __future__ import annotations

from typing import Any

# Knowledge sizes for counting: 4 default prompts of the T2 target encode to 108 token slots
# with MiniLM (27 tokens each after padding); BiomedCLIP's PubMedBERT gives 768-d states and
# its ViT-B/16 197 image tokens (CLS + 14×14 patches) of width 768.
TEXT_TOKENS = 108
VISUAL_TOKENS = 197


def _network(hparams: dict[str, Any]):
    from dfbk.networks.swin_unet import SwinUNet, SwinUNetConfig

    return SwinUNet(SwinUNetConfig.from_hparams(hparams))


def network_hparams(
    name: str, preset: str, knowledge_dim: int = 768, visual_dim: int = 0
) -> dict[str, Any]:
    """A registered method's preset with the knowledge widths set (they decide KG's size)."""
    from dfbk.methods.registry import get_method_class

    hparams = dict(get_method_class(name).PRESETS[preset])
    if hparams.get("kg"):
        hparams.update(knowledge_dim=knowledge_dim, visual_dim=visual_dim)
    return hparams


def count_parameters(hparams: dict[str, Any]) -> int:
    """Trainable parameters of the denoiser these hyperparameters build (meta device)."""
    import torch

    with torch.device("meta"):
        net = _network(hparams)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def training_flops(
    hparams: dict[str, Any], size: int, batch: int | None = None, text_tokens: int = TEXT_TOKENS
) -> float:
    """Forward + backward FLOPs of one training step (`batch` slices of size×size; default the
    preset's batch size), counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = int(batch or hparams["batch_size"])
    with torch.device("meta"):
        net = _network(hparams)
        x, t = torch.randn(batch, 2, size, size), torch.zeros(batch, dtype=torch.long)
        kwargs = {}
        if hparams.get("kg"):
            kwargs["knowledge"] = torch.randn(text_tokens, hparams["knowledge_dim"])
            if hparams.get("visual_dim"):
                kwargs["visual"] = torch.randn(batch, VISUAL_TOKENS, hparams["visual_dim"])
        with FlopCounterMode(display=False) as counter:
            net(x, t, **kwargs).sum().backward()
    return float(counter.get_total_flops())


def vision_tower_flops(batch: int, model_name: str = "vit_base_patch16_224") -> float:
    """Forward FLOPs of the frozen image tower (BiomedCLIP's timm ViT-B/16) for `batch` slices."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        trunk = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="")
        images = torch.randn(batch, 3, 224, 224)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            trunk.forward_features(images)
    return float(counter.get_total_flops())


def ablation_capacity(
    names: list[str], preset: str, size: int, knowledge_dim: int = 768, visual_dim: int = 0
) -> list[dict[str, Any]]:
    """One row per method: parameters, + % over the first row, training GFLOPs per step."""
    rows, base = [], None
    for name in names:
        hparams = network_hparams(name, preset, knowledge_dim, visual_dim)
        params = count_parameters(hparams)
        base = base or params
        rows.append(
            {
                "method": name,
                "n_parameters": params,
                "vs_first": params / base - 1.0,
                "train_flops_per_step": training_flops(hparams, size),
                "batch_size": int(hparams["batch_size"]),
            }
        )
    return rows
