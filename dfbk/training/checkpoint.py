"""Checkpoints that carry their recipe, written atomically.

Two kinds: the training state `last.pt` (method + optimisers + EMA + RNG + step; lives outside
the rule outputs so Snakemake never deletes it on failure) and the inference checkpoint
`model.pt` (EMA weights where used, the recipe and data contract), from which `dfbk translate`
rebuilds the model alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

import dfbk
from dfbk.data.io import atomic_path
from dfbk.errors import TrainingError
from dfbk.methods.registry import get_method_class

FORMAT = "dfbk-checkpoint"
FORMAT_VERSION = 1


def save_atomic(obj: Any, path: Path) -> Path:
    """torch.save to a temporary sibling, then rename: a crash never leaves a partial file."""
    tmp = atomic_path(Path(path))
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return Path(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on CPU; a corrupt or foreign file is a TrainingError naming it."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise TrainingError(
            f"{path}: cannot read checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise TrainingError(f"{path}: not a dfbk checkpoint")
    return payload


def recipe(method, spec) -> dict[str, Any]:
    """Everything needed to rebuild the model: method, preset, hparams, direction, versions."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dfbk_version": dfbk.__version__,
        "torch_version": torch.__version__,
        "method": method.name,
        "module": spec.module,
        "preset": spec.preset,
        "hparams": method.hparams,
        "dataset": spec.dataset,
        "direction": spec.direction,
        "seed": spec.seed,
        "stage": spec.stage,
        "init_from": str(spec.init_from) if spec.init_from else None,
    }


def rebuild_method(payload: dict[str, Any]):
    """Build the method a checkpoint describes and load its weights (no config needed)."""
    cls = get_method_class(payload["method"], payload.get("module"))
    method = cls(cls.inference_hparams(payload["hparams"]))  # stored hparams, not today's preset
    method.preset = payload["preset"]
    method.load_state_dict(payload["state"])
    method.eval()
    return method
