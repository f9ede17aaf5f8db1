"""Method geometry: the multiple a method's network needs slice and patch sides to be.

Torch-free, so planning evaluates it on catalog data (dfbk.methods.catalog); the catalog
generator checks that every built-in method has a rule here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from dfbk.errors import ConfigError


def _unet_rule(h: dict[str, Any]) -> int:
    return 2 ** int(h["num_downs"])  # num_downs stride-2 convolutions, skips concatenated


def _swin_unet_rule(h: dict[str, Any]) -> int:
    # levels - 1 downsamplings; DFB's Haar DWT at the bottleneck halves that map once more
    levels = len(h["channel_mults"]) - 1
    return 2 ** (levels + (1 if h.get("dfb") else 0))


def _ncsnpp_rule(h: dict[str, Any]) -> int:
    diffusive = 2 ** (len(h["ch_mult"]) - 1)
    return diffusive if h.get("paired") else math.lcm(diffusive, 4)  # + ResNet translators


# Side multiples of the built-in networks, by the module that defines the class (torch-free, so
# planning evaluates them on catalog data). A user's method class may declare its own: a
# classmethod `size_multiple(hparams) -> int`, which takes precedence.
SIZE_RULES: dict[str, Callable[[dict[str, Any]], int]] = {
    "dfbk.baselines.identity": lambda h: 1,
    "dfbk.baselines.floors": lambda h: 1,  # per voxel (mean: centred on the slice grid)
    "dfbk.baselines.pix2pix": _unet_rule,
    "dfbk.baselines.ea_gan": _unet_rule,
    "dfbk.methods.resshift": _swin_unet_rule,
    "dfbk.methods.dfbk": _swin_unet_rule,
    "dfbk.baselines.revgan": lambda h: 4,  # CycleGAN ResNet encoder: two stride-2 convolutions
    "dfbk.baselines.maskgan": lambda h: 4,
    "dfbk.baselines.resvit": lambda h: 16 * int(h["vit_patch"]),  # 4x encoder, then ViT patches
    "dfbk.baselines.syndiff": _ncsnpp_rule,
}


def size_multiple(cls: type, hparams: dict[str, Any]) -> int:
    """The multiple that slice sides must be for `cls`'s network at `hparams` (1: any size)."""
    declared = getattr(cls, "size_multiple", None)
    if declared is not None:
        return int(declared(hparams))
    rule = SIZE_RULES.get(cls.__module__)
    return rule(hparams) if rule is not None else 1


def check_slice_size(
    size: tuple[int, int],
    patch: int | None,
    multiple: int,
    size_key: str,
    method: str,
    patch_key: str,
) -> None:
    """Refuse slices (or a patch size) the method's network cannot take, naming the key.

    Trained on whole slices, both sides must be multiples of the network's `multiple`
    (`size_multiple`); trained on patches, the patch must be one and fit in the slice. A
    method trained on patches only ever runs on tiles: patch-sized ones, or whole slices
    padded up to the multiple (dfbk.inference.predict.inference_tile). The planner checks the
    config with it, and the trainer the slice store it is given.
    """
    if patch is None and any(side % multiple for side in size):
        raise ConfigError(
            f"{size_key}: {size[0]}x{size[1]} does not suit {method}, whose network needs "
            f"sides divisible by {multiple}"
        )
    if patch is not None and (patch % multiple or patch > min(size)):
        raise ConfigError(
            f"{patch_key}: {patch} must be a multiple of {multiple} "
            f"and at most the slice side {min(size)} ({size_key})"
        )
